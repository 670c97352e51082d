//! Model names → model folders, and a cache of opened folders.
//!
//! A request names a model either by path (a folder in optimum's layout, run without
//! installing it) or by name: a built-in model (see [`crate::catalog::builtin`]; the default when the
//! name is empty) or a folder under `$EASEL_HOME/models/`. Opening a folder reads
//! its configs and builds its tokenizer; that is cached per path so a warm request costs no
//! file I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::builtin::{self, BuiltinError};
use crate::model::{ModelError, ModelFolder};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model named `{name}` (looked in {models_dir}); pass a model folder with --model DIR or install one")]
    UnknownName { name: String, models_dir: PathBuf },
    #[error(transparent)]
    Builtin(#[from] BuiltinError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Debug)]
pub struct Registry {
    home: PathBuf,
    models_dir: PathBuf,
    opened: Mutex<HashMap<PathBuf, Arc<ModelFolder>>>,
}

impl Registry {
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            models_dir: home.join("models"),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The folder a model reference points at.
    pub fn resolve(&self, reference: &str) -> Result<(String, PathBuf), RegistryError> {
        let reference = if reference.is_empty() {
            builtin::DEFAULT_MODEL
        } else {
            reference
        };
        let as_path = Path::new(reference);
        if as_path.is_absolute() || reference.starts_with('.') || reference.contains('/') {
            let name = as_path
                .file_name()
                .map_or_else(|| reference.to_string(), |n| n.to_string_lossy().into_owned());
            return Ok((name, as_path.to_path_buf()));
        }
        if builtin::is_builtin(reference) {
            return Ok((reference.to_string(), builtin::ensure_unpacked(&self.home, reference)?));
        }
        let path = self.models_dir.join(reference);
        if !path.is_dir() {
            return Err(RegistryError::UnknownName {
                name: reference.to_string(),
                models_dir: self.models_dir.clone(),
            });
        }
        Ok((reference.to_string(), path))
    }

    /// Opens (or returns the cached) folder for a reference. Does blocking file I/O.
    pub fn open(&self, reference: &str) -> Result<Arc<ModelFolder>, RegistryError> {
        let (name, path) = self.resolve(reference)?;
        if let Some(folder) = self.opened.lock().expect("registry lock").get(&path) {
            return Ok(folder.clone());
        }
        let folder = Arc::new(ModelFolder::open(&name, &path)?);
        self.opened.lock().expect("registry lock").insert(path, folder.clone());
        Ok(folder)
    }

    /// Drops the cached folder at `path` (after it was removed or replaced).
    pub fn forget(&self, path: &Path) {
        self.opened.lock().expect("registry lock").remove(path);
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// Every model a name reaches: the built-in ones, then the folders under
    /// `$EASEL_HOME/models/`. Unpacks built-in models on first call.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let mut found: Vec<_> = builtin::names()
            .iter()
            .filter_map(|name| {
                builtin::ensure_unpacked(&self.home, name)
                    .ok()
                    .map(|path| (name.to_string(), path))
            })
            .collect();
        found.extend(self.installed());
        found
    }

    /// Installed models (folders under `$EASEL_HOME/models/`).
    pub fn installed(&self) -> Vec<(String, PathBuf)> {
        let mut found: Vec<_> = std::fs::read_dir(&self.models_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            // Dot folders are the store's own (imports in progress, removals).
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        found.sort();
        found
    }
}
