//! The catalog: which models exist and where, and everything that changes that — importing
//! into the store, pulling from a hub, removing — keeping cached descriptions, the registry
//! and resident models in step. Proto-free and job-free: `serve/` maps it to gRPC, and it asks
//! whoever runs models ([`ModelUsers`], the job queue) whether one is in use before replacing or
//! removing it.
//!
//! - [`registry`]: model names and paths → folders (with a cache of opened folders);
//!   [`builtin`]: the embedded default model.
//! - [`store`]: installed models — safe extraction, atomic install and removal, and what a model
//!   is ([`store::describe`]).
//! - [`hub`]: pulling from a Hugging Face-compatible hub.
//!
//! Descriptions (family, dtype, parts' inputs and outputs) need ONNX sessions, so they are
//! cached per folder: an import or pull describes the model while validating it, and `show`
//! describes a model the daemon has not described yet; `list` reads configs only.

pub mod builtin;
pub mod hub;
pub mod registry;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::runtime::OrtRuntime;
use registry::{Registry, RegistryError};
use store::{
    BundleFlags, DescribeError, ImportProgress, ImportStage, Installed, ModelDescription, Staging, Store, StoreError,
    bundle, describe, summarize,
};

/// Whoever runs models (the job queue): asked before a model's files are replaced or removed.
pub trait ModelUsers: Send + Sync {
    /// Whether a queued or running job, or a resident model in use, needs the folder at `root`.
    fn in_use(&self, root: &Path) -> bool;
    /// Drops the folder's resident sessions (after its files changed).
    fn unload(&self, root: &Path);
}

/// What the catalog reports as it changes (the daemon forwards these to WatchEvents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogEvent {
    Installed { name: String },
    Removed { name: String },
    Import(ImportNotice),
}

/// An import or pull as it goes: a stage (`downloading`, `extracting`, `validating`,
/// `installing`), then `done` or `failed` (with the reason in `message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportNotice {
    pub name: String,
    pub state: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: String,
}

impl CatalogEvent {
    fn import(name: &str, state: &str, bytes_done: u64, bytes_total: u64) -> Self {
        CatalogEvent::Import(ImportNotice {
            name: name.to_string(),
            state: state.to_string(),
            bytes_done,
            bytes_total,
            message: String::new(),
        })
    }
}

/// Where a listed model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Builtin,
    Installed,
    Path,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Builtin => "builtin",
            Source::Installed => "installed",
            Source::Path => "path",
        }
    }
}

/// One model as `list` and `show` report it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub path: PathBuf,
    pub source: Source,
    /// `Err`: why the model cannot be described (it is still listed, so it can be removed).
    pub description: Result<Arc<ModelDescription>, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Describe(#[from] DescribeError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("model `{name}` is in use by a queued or running job; wait for it to finish or cancel it, then retry")]
    InUse { name: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    #[error("the install task failed: {0}")]
    Task(String),
    #[error("{repo} is already being pulled; wait for that pull to finish")]
    AlreadyPulling { repo: String },
}

pub struct Catalog {
    store: Store,
    registry: Arc<Registry>,
    runtime: OrtRuntime,
    users: Arc<dyn ModelUsers>,
    on_event: Box<dyn Fn(CatalogEvent) + Send + Sync>,
    descriptions: Mutex<HashMap<PathBuf, Arc<ModelDescription>>>,
    /// Download folders a pull is writing into (two pulls must not share one).
    pulling: Mutex<std::collections::HashSet<PathBuf>>,
}

/// Marks a download folder busy until dropped.
struct PullGuard<'a> {
    pulling: &'a Mutex<std::collections::HashSet<PathBuf>>,
    folder: PathBuf,
}

impl Drop for PullGuard<'_> {
    fn drop(&mut self) {
        self.pulling.lock().expect("pulling lock").remove(&self.folder);
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("models_dir", &self.store.models_dir())
            .finish()
    }
}

impl Catalog {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        runtime: OrtRuntime,
        users: Arc<dyn ModelUsers>,
        on_event: impl Fn(CatalogEvent) + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            registry,
            runtime,
            users,
            on_event: Box::new(on_event),
            descriptions: Mutex::new(HashMap::new()),
            pulling: Mutex::new(Default::default()),
        }
    }

    /// Every model a name reaches (built-in, then installed): the full description when the
    /// daemon has one, else a summary read without opening ONNX sessions. Blocking.
    pub fn list(&self) -> Vec<Listed> {
        self.registry
            .list()
            .into_iter()
            .map(|(name, path)| {
                let source = if builtin::is_builtin(&name) {
                    Source::Builtin
                } else {
                    Source::Installed
                };
                let cached = self.descriptions.lock().expect("descriptions lock").get(&path).cloned();
                let description = match cached {
                    Some(described) => Ok(described),
                    None => summarize(&name, &path).map(Arc::new).map_err(|e| e.to_string()),
                };
                Listed {
                    name,
                    path,
                    source,
                    description,
                }
            })
            .collect()
    }

    /// One model by name or path, described. Blocking.
    pub fn show(&self, reference: &str) -> Result<Listed, CatalogError> {
        let (name, path) = self.registry.resolve(reference)?;
        if !path.is_dir() {
            // Let the registry say it the way generation would.
            self.registry.open(reference)?;
        }
        let source = if builtin::is_builtin(&name) && !reference.contains('/') {
            Source::Builtin
        } else if path.starts_with(self.store.models_dir()) {
            Source::Installed
        } else {
            Source::Path
        };
        let description = self.describe_at(&name, &path)?;
        Ok(Listed {
            name,
            path,
            source,
            description: Ok(description),
        })
    }

    fn describe_at(&self, name: &str, path: &Path) -> Result<Arc<ModelDescription>, DescribeError> {
        if let Some(found) = self.descriptions.lock().expect("descriptions lock").get(path) {
            return Ok(found.clone());
        }
        let described = Arc::new(describe(&self.runtime, name, path)?);
        self.descriptions
            .lock()
            .expect("descriptions lock")
            .insert(path.to_path_buf(), described.clone());
        Ok(described)
    }

    /// Imports a folder or archive into the store: in optimum's layout, or a flat bundle
    /// converted under `flags` (which are refused for optimum's layout). Blocking.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        replace: bool,
        flags: &BundleFlags,
        progress: &mut dyn FnMut(ImportProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Listed, CatalogError> {
        if !source.is_absolute() {
            return Err(CatalogError::InvalidArgument(format!(
                "{} is a relative path; send an absolute one (the daemon does not share your working directory)",
                source.display()
            )));
        }
        let overrides = bundle::Overrides::parse(flags).map_err(|error| StoreError::Bundle {
            source_path: source.to_path_buf(),
            error,
        })?;
        let converter = bundle::Converter::new(&self.runtime, overrides);
        let target = name.map(str::to_string);
        self.before_install(target.as_deref(), replace)?;
        let mut described = None;
        let announced = target.clone().unwrap_or_else(|| source.display().to_string());
        let installed = {
            let mut validate = self.validator(&mut described);
            let mut report = |p: ImportProgress| {
                self.publish_progress(&announced, p);
                progress(p);
            };
            self.store
                .import_converting(
                    source,
                    name,
                    replace,
                    Some(&converter),
                    &mut validate,
                    &mut report,
                    cancelled,
                )
                .inspect_err(|e| self.publish_failure(&announced, e))?
        };
        Ok(self.after_install(installed, described))
    }

    /// Installs a staging folder someone filled (a pull). Blocking.
    fn install(&self, staging: Staging, name: &str, replace: bool) -> Result<Listed, CatalogError> {
        self.before_install(Some(name), replace)?;
        let mut described = None;
        self.publish_progress(name, ImportProgress::Stage(ImportStage::Validating));
        let installed = {
            let mut validate = self.validator(&mut described);
            self.store
                .install(staging, name, replace, &mut validate)
                .inspect_err(|e| self.publish_failure(name, e))?
        };
        Ok(self.after_install(installed, described))
    }

    /// A model being replaced must not be in use.
    fn before_install(&self, name: Option<&str>, replace: bool) -> Result<(), CatalogError> {
        if let (Some(name), true) = (name, replace)
            && let Ok(path) = self.store.path(name)
            && self.users.in_use(&path)
        {
            return Err(CatalogError::InUse { name: name.to_string() });
        }
        Ok(())
    }

    /// Validation = a full description: a model that passes it loads.
    fn validator<'a>(
        &'a self,
        described: &'a mut Option<ModelDescription>,
    ) -> impl FnMut(&Path) -> Result<(), String> + 'a {
        move |root: &Path| {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let description = describe(&self.runtime, &name, root).map_err(|e| e.to_string())?;
            *described = Some(description);
            Ok(())
        }
    }

    fn after_install(&self, installed: Installed, described: Option<ModelDescription>) -> Listed {
        // A replaced model's sessions and cached configs are stale.
        self.users.unload(&installed.path);
        self.registry.forget(&installed.path);
        let mut cache = self.descriptions.lock().expect("descriptions lock");
        cache.remove(&installed.path);
        let description = described.map(|mut d| {
            // Validation ran in the staging folder; the files are the same.
            d.files.retain(|(path, _)| !path.starts_with('.'));
            Arc::new(d)
        });
        if let Some(d) = &description {
            cache.insert(installed.path.clone(), d.clone());
        }
        drop(cache);
        tracing::info!(model = %installed.name, "model installed");
        (self.on_event)(CatalogEvent::Installed {
            name: installed.name.clone(),
        });
        (self.on_event)(CatalogEvent::import(&installed.name, "done", 0, 0));
        Listed {
            description: description.ok_or_else(|| "not described".to_string()),
            name: installed.name,
            path: installed.path,
            source: Source::Installed,
        }
    }

    /// Removes an installed model; refused while a job needs it. Blocking.
    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        let path = self.store.path(name)?;
        if self.users.in_use(&path) {
            return Err(CatalogError::InUse { name: name.to_string() });
        }
        self.users.unload(&path);
        self.store.remove(name)?;
        self.registry.forget(&path);
        self.descriptions.lock().expect("descriptions lock").remove(&path);
        tracing::info!(model = %name, "model removed");
        (self.on_event)(CatalogEvent::Removed { name: name.to_string() });
        Ok(())
    }

    fn publish_progress(&self, name: &str, progress: ImportProgress) {
        (self.on_event)(match progress {
            ImportProgress::Stage(stage) => CatalogEvent::import(name, stage.as_str(), 0, 0),
            ImportProgress::Bytes { done, total } => CatalogEvent::import(name, "extracting", done, total),
        });
    }

    fn publish_failure(&self, name: &str, error: &dyn std::fmt::Display) {
        (self.on_event)(CatalogEvent::Import(ImportNotice {
            name: name.to_string(),
            state: "failed".into(),
            bytes_done: 0,
            bytes_total: 0,
            message: error.to_string(),
        }));
    }

    /// Downloads `repo` at `revision` from `hub` and installs it as `name` (default: the
    /// repository's name). Downloads go to `$EASEL_HOME/downloads/OWNER--REPO@REV/` and stay
    /// there until installed, so an interrupted pull resumes where it stopped.
    #[allow(clippy::too_many_arguments)]
    pub async fn pull(
        self: &Arc<Self>,
        hub: &hub::Hub,
        repo: &str,
        revision: &str,
        name: Option<&str>,
        replace: bool,
        progress: &(dyn Fn(hub::PullProgress) + Send + Sync),
        cancelled: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Listed, CatalogError> {
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).to_string());
        store::validate_name(&name)?;
        if !replace && self.store.path(&name).is_ok() {
            return Err(StoreError::AlreadyInstalled { name }.into());
        }
        let downloads = self
            .store
            .models_dir()
            .parent()
            .unwrap_or(self.store.models_dir())
            .join("downloads")
            .join(format!("{}@{}", repo.replace('/', "--"), revision.replace('/', "--")));
        if !self.pulling.lock().expect("pulling lock").insert(downloads.clone()) {
            return Err(CatalogError::AlreadyPulling {
                repo: format!("{repo}@{revision}"),
            });
        }
        let _guard = PullGuard {
            pulling: &self.pulling,
            folder: downloads.clone(),
        };
        (self.on_event)(CatalogEvent::import(&name, "downloading", 0, 0));
        let report = |p: hub::PullProgress| {
            (self.on_event)(CatalogEvent::import(&name, "downloading", p.bytes_done, p.bytes_total));
            progress(p);
        };
        hub::pull(hub, repo, revision, &downloads, &report, cancelled)
            .await
            .inspect_err(|e| self.publish_failure(&name, e))?;
        let catalog = self.clone();
        tokio::task::spawn_blocking(move || {
            let staging = catalog.store.staging()?;
            move_tree(&downloads, staging.path()).map_err(|source| StoreError::Io {
                action: "move the downloaded files of",
                path: downloads.clone(),
                source,
            })?;
            let listed = catalog.install(staging, &name, replace)?;
            let _ = std::fs::remove_dir_all(&downloads);
            Ok(listed)
        })
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
    }
}

/// Moves every file under `from` (but its `.partial/` folder) to the same place under `to`.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == hub::PARTIAL_DIR {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            move_tree(&entry.path(), &target)?;
        } else {
            std::fs::rename(entry.path(), &target)?;
        }
    }
    Ok(())
}
