//! Model management as the daemon does it: listing and describing every model a name reaches,
//! importing into the store, pulling from a hub, and removing — keeping the registry's cache,
//! the residency manager and the event bus in step. Proto-free; `service.rs` maps it to gRPC.
//!
//! Descriptions (family, dtype, parts' inputs and outputs) need ONNX sessions, so they are
//! cached per folder: an import or pull describes the model while validating it, and a model
//! the daemon has not described yet is described on first `list` or `show`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::builtin;
use crate::engine::{Engine, residency_key};
use crate::events::{DaemonEvent, EventBus, ModelState};
use crate::registry::{Registry, RegistryError};
use crate::runtime::OrtRuntime;
use crate::store::{
    DescribeError, ImportProgress, ImportStage, Installed, ModelDescription, Staging, Store, StoreError, describe,
    summarize,
};

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
pub enum ModelsError {
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
    Hub(#[from] crate::hub::HubError),
    #[error("the install task failed: {0}")]
    Task(String),
    #[error("{repo} is already being pulled; wait for that pull to finish")]
    AlreadyPulling { repo: String },
}

pub struct Models {
    store: Store,
    registry: Arc<Registry>,
    runtime: OrtRuntime,
    events: EventBus,
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

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("models_dir", &self.store.models_dir())
            .finish()
    }
}

impl Models {
    pub fn new(store: Store, registry: Arc<Registry>, runtime: OrtRuntime, events: EventBus) -> Self {
        Self {
            store,
            registry,
            runtime,
            events,
            descriptions: Mutex::new(HashMap::new()),
            pulling: Mutex::new(Default::default()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
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
    pub fn show(&self, reference: &str) -> Result<Listed, ModelsError> {
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

    /// Imports a folder or archive into the store. Blocking.
    pub fn import(
        &self,
        engine: &Engine,
        source: &Path,
        name: Option<&str>,
        replace: bool,
        progress: &mut dyn FnMut(ImportProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Listed, ModelsError> {
        if !source.is_absolute() {
            return Err(ModelsError::InvalidArgument(format!(
                "{} is a relative path; send an absolute one (the daemon does not share your working directory)",
                source.display()
            )));
        }
        let target = name.map(str::to_string);
        self.before_install(engine, target.as_deref(), replace)?;
        let mut described = None;
        let announced = target.clone().unwrap_or_else(|| source.display().to_string());
        let installed = {
            let mut validate = self.validator(&mut described);
            let mut report = |p: ImportProgress| {
                self.publish_progress(&announced, p);
                progress(p);
            };
            self.store
                .import(source, name, replace, &mut validate, &mut report, cancelled)
                .inspect_err(|e| self.publish_failure(&announced, e))?
        };
        Ok(self.after_install(engine, installed, described))
    }

    /// Installs a staging folder someone filled (a pull). Blocking.
    pub fn install(&self, engine: &Engine, staging: Staging, name: &str, replace: bool) -> Result<Listed, ModelsError> {
        self.before_install(engine, Some(name), replace)?;
        let mut described = None;
        self.publish_progress(name, ImportProgress::Stage(ImportStage::Validating));
        let installed = {
            let mut validate = self.validator(&mut described);
            self.store
                .install(staging, name, replace, &mut validate)
                .inspect_err(|e| self.publish_failure(name, e))?
        };
        Ok(self.after_install(engine, installed, described))
    }

    /// A model being replaced must not be in use.
    fn before_install(&self, engine: &Engine, name: Option<&str>, replace: bool) -> Result<(), ModelsError> {
        if let (Some(name), true) = (name, replace)
            && let Ok(path) = self.store.path(name)
            && engine.model_in_use(&path)
        {
            return Err(ModelsError::InUse { name: name.to_string() });
        }
        Ok(())
    }

    /// Validation = a full description; models easel cannot run (SDXL for now) are refused.
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
            if let Some(why) = &description.unsupported {
                return Err(why.clone());
            }
            *described = Some(description);
            Ok(())
        }
    }

    fn after_install(&self, engine: &Engine, installed: Installed, described: Option<ModelDescription>) -> Listed {
        // A replaced model's sessions and cached configs are stale.
        let _ = engine.residency().unload(&residency_key(&installed.path));
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
        self.events.publish(DaemonEvent::Model {
            model: installed.name.clone(),
            state: ModelState::Installed,
            memory: 0,
            reason: String::new(),
        });
        self.events.publish(DaemonEvent::Import {
            name: installed.name.clone(),
            state: "done".into(),
            bytes_done: 0,
            bytes_total: 0,
            message: String::new(),
        });
        Listed {
            description: description.ok_or_else(|| "not described".to_string()),
            name: installed.name,
            path: installed.path,
            source: Source::Installed,
        }
    }

    /// Removes an installed model; refused while a job needs it. Blocking.
    pub fn remove(&self, engine: &Engine, name: &str) -> Result<(), ModelsError> {
        let path = self.store.path(name)?;
        if engine.model_in_use(&path) {
            return Err(ModelsError::InUse { name: name.to_string() });
        }
        engine.residency().unload(&residency_key(&path));
        self.store.remove(name)?;
        self.registry.forget(&path);
        self.descriptions.lock().expect("descriptions lock").remove(&path);
        tracing::info!(model = %name, "model removed");
        self.events.publish(DaemonEvent::Model {
            model: name.to_string(),
            state: ModelState::Removed,
            memory: 0,
            reason: String::new(),
        });
        Ok(())
    }

    pub fn publish_progress(&self, name: &str, progress: ImportProgress) {
        let (state, bytes_done, bytes_total) = match progress {
            ImportProgress::Stage(stage) => (stage.as_str().to_string(), 0, 0),
            ImportProgress::Bytes { done, total } => ("extracting".to_string(), done, total),
        };
        self.events.publish(DaemonEvent::Import {
            name: name.to_string(),
            state,
            bytes_done,
            bytes_total,
            message: String::new(),
        });
    }

    pub fn publish_failure(&self, name: &str, error: &dyn std::fmt::Display) {
        self.events.publish(DaemonEvent::Import {
            name: name.to_string(),
            state: "failed".into(),
            bytes_done: 0,
            bytes_total: 0,
            message: error.to_string(),
        });
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Downloads `repo` at `revision` from `hub` and installs it as `name` (default: the
    /// repository's name). Downloads go to `$EASEL_HOME/downloads/OWNER--REPO@REV/` and stay
    /// there until installed, so an interrupted pull resumes where it stopped.
    #[allow(clippy::too_many_arguments)]
    pub async fn pull(
        self: &Arc<Self>,
        engine: &Engine,
        hub: &crate::hub::Hub,
        repo: &str,
        revision: &str,
        name: Option<&str>,
        replace: bool,
        progress: &(dyn Fn(crate::hub::PullProgress) + Send + Sync),
        cancelled: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Listed, ModelsError> {
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).to_string());
        crate::store::validate_name(&name)?;
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
            return Err(ModelsError::AlreadyPulling {
                repo: format!("{repo}@{revision}"),
            });
        }
        let _guard = PullGuard {
            pulling: &self.pulling,
            folder: downloads.clone(),
        };
        self.events.publish(DaemonEvent::Import {
            name: name.clone(),
            state: "downloading".into(),
            bytes_done: 0,
            bytes_total: 0,
            message: String::new(),
        });
        let announced = name.clone();
        let bus = self.events.clone();
        let report = move |p: crate::hub::PullProgress| {
            bus.publish(DaemonEvent::Import {
                name: announced.clone(),
                state: "downloading".into(),
                bytes_done: p.bytes_done,
                bytes_total: p.bytes_total,
                message: String::new(),
            });
            progress(p);
        };
        crate::hub::pull(hub, repo, revision, &downloads, &report, cancelled)
            .await
            .inspect_err(|e| self.publish_failure(&name, e))?;
        let models = self.clone();
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || {
            let staging = models.store.staging()?;
            move_tree(&downloads, staging.path()).map_err(|source| StoreError::Io {
                action: "move the downloaded files of",
                path: downloads.clone(),
                source,
            })?;
            let listed = models.install(&engine, staging, &name, replace)?;
            let _ = std::fs::remove_dir_all(&downloads);
            Ok(listed)
        })
        .await
        .map_err(|e| ModelsError::Task(e.to_string()))?
    }
}

/// Moves every file under `from` (but its `.partial/` folder) to the same place under `to`.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == crate::hub::PARTIAL_DIR {
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
