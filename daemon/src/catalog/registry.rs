//! Model names → model folders, and a cache of opened folders.
//!
//! A request names a model either by absolute path (a folder in optimum's layout, run without
//! installing it) or by name: a built-in model (see [`crate::catalog::builtin`]; the default when the
//! name is empty) or a folder under `$EASEL_HOME/models/`. Opening a folder reads
//! its configs and builds its tokenizer; that is cached per path so a warm request costs no
//! file I/O.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::builtin::{self, BuiltinError};
use super::store::validate_name;
use crate::model::{Fingerprint, ModelError, ModelFolder};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model named `{name}` (looked in {models_dir}); pass a model folder with --model DIR or install one")]
    UnknownName { name: String, models_dir: PathBuf },
    #[error(
        "model `{reference}` is neither a model name nor an absolute path; pass a name from `easel models list` or the folder's absolute path (the CLI makes --model DIR absolute)"
    )]
    RelativePath { reference: String },
    #[error(transparent)]
    Builtin(#[from] BuiltinError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Debug)]
pub struct Registry {
    home: PathBuf,
    models_dir: PathBuf,
    /// Opened folders, with what their files looked like when read.
    opened: Mutex<HashMap<PathBuf, (Fingerprint, Arc<ModelFolder>)>>,
}

impl Registry {
    pub fn new(home: &Path) -> Self {
        Self {
            home: home.to_path_buf(),
            models_dir: home.join("models"),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The folder a model reference points at: an absolute path, or a name. A relative path
    /// is refused: it would resolve against the daemon's working folder, which the client
    /// neither knows nor controls (`../../etc` would read `/etc`).
    pub fn resolve(&self, reference: &str) -> Result<(String, PathBuf), RegistryError> {
        let reference = if reference.is_empty() {
            builtin::DEFAULT_MODEL
        } else {
            reference
        };
        let as_path = Path::new(reference);
        if as_path.is_absolute() {
            let name = as_path
                .file_name()
                .map_or_else(|| reference.to_string(), |n| n.to_string_lossy().into_owned());
            return Ok((name, as_path.to_path_buf()));
        }
        if validate_name(reference).is_err() {
            return Err(RegistryError::RelativePath {
                reference: reference.to_string(),
            });
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

    /// Opens (or returns the cached) folder for a reference. Does blocking file I/O: a few
    /// `stat` calls when cached and unchanged, reading the configs when not.
    pub fn open(&self, reference: &str) -> Result<Arc<ModelFolder>, RegistryError> {
        let (name, path) = self.resolve(reference)?;
        let fingerprint = Fingerprint::of(&path);
        if let Some((seen, folder)) = self.opened.lock().expect("registry lock").get(&path)
            && *seen == fingerprint
        {
            return Ok(folder.clone());
        }
        let opened = ModelFolder::open(&name, &path);
        let mut cache = self.opened.lock().expect("registry lock");
        match opened {
            Ok(folder) => {
                let folder = Arc::new(folder);
                cache.insert(path, (fingerprint, folder.clone()));
                Ok(folder)
            }
            Err(error) => {
                cache.remove(&path);
                Err(error.into())
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::folder::SCHEDULER_CONFIG as SCHEDULER_CONFIG_PATH;

    #[test]
    fn only_names_and_absolute_paths_resolve() {
        let home = tempfile::tempdir().unwrap();
        let registry = Registry::new(home.path());
        for relative in ["../../etc", "./model", "models/x", "..", ".hidden", "a/b", "-rf"] {
            let err = registry.resolve(relative).unwrap_err();
            assert!(matches!(err, RegistryError::RelativePath { .. }), "{relative}: {err}");
            assert!(err.to_string().contains("absolute path"), "{err}");
        }
        let (name, path) = registry.resolve("/srv/models/my-model").unwrap();
        assert_eq!(
            (name.as_str(), path.as_path()),
            ("my-model", Path::new("/srv/models/my-model"))
        );
        let err = registry.resolve("not-installed").unwrap_err();
        assert!(matches!(err, RegistryError::UnknownName { .. }), "{err}");
    }

    #[test]
    fn an_edited_config_is_read_again_not_served_from_the_cache() {
        let home = tempfile::tempdir().unwrap();
        let model = home.path().join("copy");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/sd1-tiny");
        for part in ["scheduler", "unet", "vae_decoder", "text_encoder", "tokenizer"] {
            std::fs::create_dir_all(model.join(part)).unwrap();
            for entry in std::fs::read_dir(fixture.join(part)).unwrap() {
                let entry = entry.unwrap();
                let to = model.join(part).join(entry.file_name());
                // The big ONNX files are only checked for existence when a folder opens.
                if entry.file_name().to_string_lossy().ends_with(".onnx") {
                    std::fs::write(to, b"").unwrap();
                } else {
                    std::fs::copy(entry.path(), to).unwrap();
                }
            }
        }
        let registry = Registry::new(home.path());
        let reference = model.to_str().unwrap();
        let first = registry.open(reference).unwrap();
        assert!(
            Arc::ptr_eq(&first, &registry.open(reference).unwrap()),
            "unchanged: cached"
        );
        std::fs::write(model.join(SCHEDULER_CONFIG_PATH), "{ not json").unwrap();
        let err = registry.open(reference).unwrap_err();
        assert!(err.to_string().contains("scheduler_config.json"), "{err}");
    }
}
