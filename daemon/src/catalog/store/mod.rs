//! The model store: installed models under `$EASEL_HOME/models/NAME/`, and how they get there.
//!
//! Layout: every non-dot sub-folder of `models_dir` is an installed model (a folder in optimum's
//! layout, see DESIGN.md "Model format"). An import also takes a flat bundle (graphs side by
//! side, no configs): [`bundle`] converts it into that layout in the staging folder, before
//! validation. Dot-prefixed folders are the store's own work in
//! progress: `.import-*` (an import or pull being filled and validated) and `.removing-*` (a
//! model on its way out).
//!
//! Invariants:
//! - **A model appears whole or not at all.** Imports are unpacked or copied into a
//!   `.import-*` folder inside `models_dir` (so on the same file system), validated there, then
//!   renamed to `NAME` in one `rename(2)`. A replacement swaps the two folders in one
//!   `renameat2(RENAME_EXCHANGE)` where the file system has it (else: old renamed aside, new
//!   renamed in), then deletes the old one. A removal renames `NAME` to `.removing-*` before
//!   deleting, so a half-deleted model is never visible under its name.
//! - **Interruptions leave only dot folders**, which [`Store::open`] deletes at the next start:
//!   a daemon killed mid-import (even by SIGKILL) leaves no half model and, after a restart, no
//!   garbage. A failed or cancelled import deletes its folder at once ([`Staging`]'s drop).
//! - **Nothing from an archive is trusted** (see [`archive`]): paths, links, special files and
//!   sizes are checked before anything is written.
//! - **One store per folder.** `open` deletes the dot folders it finds, so two daemons must not
//!   share a `models_dir`; the daemon's socket lock guarantees it.
//!
//! All of this is blocking file I/O; callers run it off the async runtime.

pub mod archive;
pub mod bundle;
pub mod describe;

use std::io;
use std::path::{Path, PathBuf};

pub use archive::ArchiveError;
pub use bundle::{BundleError, BundleFlags, Layout, Layouts};
pub use describe::{DescribeError, ModelDescription, PartIo, describe, list_files, summarize};

/// Folders being imported (or pulled): deleted by [`Store::open`] if an import was interrupted.
const IMPORT_PREFIX: &str = ".import-";
/// Models being removed or replaced: deleted by [`Store::open`] if a removal was interrupted.
const REMOVING_PREFIX: &str = ".removing-";
/// What a model folder holds at its top level.
const MODEL_INDEX: &str = "model_index.json";
const NAME_RULE: &str = "use 1 to 100 characters among letters, digits, `.`, `_` and `-`, not starting with `.` or `-`";

/// How much an import may unpack: a guard against archives that expand without end (zip bombs).
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// Bytes written, counted as they are written.
    pub max_bytes: u64,
    /// Entries (files, folders and links).
    pub max_files: u64,
    /// Bytes an import leaves free on the store's disk: it is refused before it starts when
    /// its known size does not fit, and stopped while writing when the disk fills up.
    pub keep_free: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024 * 1024,
            max_files: 10_000,
            keep_free: DEFAULT_KEEP_FREE,
        }
    }
}

/// A phase of an import, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStage {
    Extracting,
    /// A flat bundle being turned into optimum's layout (only for those).
    Converting,
    Validating,
    Installing,
}

impl ImportStage {
    /// The name the API uses (`ImportEvent.stage`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImportStage::Extracting => "extracting",
            ImportStage::Converting => "converting",
            ImportStage::Validating => "validating",
            ImportStage::Installing => "installing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportProgress {
    /// A phase begins.
    Stage(ImportStage),
    /// While extracting: for an archive, bytes of the (compressed) file read out of its size;
    /// for a folder, bytes copied out of the files' total. `total` is 0 when unknown.
    Bytes { done: u64, total: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{name}` is not a valid model name: {NAME_RULE}")]
    InvalidName { name: String },
    #[error(
        "cannot name the model after {source_path}: `{name}` is not a valid model name ({NAME_RULE}); pass --name to choose one"
    )]
    DerivedName { name: String, source_path: PathBuf },
    #[error("`{name}` is the name of a built-in model; pass --name to pick another")]
    BuiltinName { name: String },
    #[error("a model named `{name}` is already installed; pass --replace to overwrite it or --name to pick another")]
    AlreadyInstalled { name: String },
    #[error("no model named `{name}` is installed (in {models_dir}); `easel models list` shows the installed models")]
    NotInstalled { name: String, models_dir: PathBuf },
    #[error("{path} does not exist; pass a model folder, or a .zip, .tar, .tar.gz or .tar.zst of one")]
    SourceMissing { path: PathBuf },
    #[error(
        "{path} is a {kind}, not a model folder or an archive; pass the folder optimum exported, or a .zip, .tar, .tar.gz or .tar.zst of it"
    )]
    SpecialSource { path: PathBuf, kind: &'static str },
    #[error(
        "{source_path} is not a model folder: no {MODEL_INDEX} (optimum's layout) nor unet.onnx (a flat bundle) at its top level or in a single top-level folder; pass the folder optimum exported, a folder of text_encoder.onnx, unet.onnx, vae_decoder.onnx, vocab.json and merges.txt, or an archive of either"
    )]
    NotAModel { source_path: PathBuf },
    #[error(transparent)]
    Archive(ArchiveError),
    #[error("{source_path} cannot be imported: {error}")]
    Bundle {
        source_path: PathBuf,
        #[source]
        error: BundleError,
    },
    #[error("model `{name}` was not installed: {message}")]
    Invalid { name: String, message: String },
    #[error("the import was cancelled; nothing was installed")]
    Cancelled,
    #[error("cannot {action} {path}: {source}; check the permissions and free space of the model store")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<ArchiveError> for StoreError {
    fn from(error: ArchiveError) -> Self {
        match error {
            ArchiveError::Cancelled => StoreError::Cancelled,
            other => StoreError::Archive(other),
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { action, path, source }
}

/// What an import leaves free on the store's disk by default.
pub const DEFAULT_KEEP_FREE: u64 = 1 << 30;

/// Bytes free for an unprivileged user on the file system holding `path`.
// `fsblkcnt_t` and the fragment size are narrower than u64 on some platforms.
#[allow(clippy::useless_conversion)]
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size())))
}

/// An installed model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub path: PathBuf,
}

/// Checks a model name: 1–100 characters of `[A-Za-z0-9._-]`, not starting with `.` (the
/// store's own folders) or `-` (it would read as a flag).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let valid = (1..=100).contains(&name.len()) && name.chars().all(allowed) && !name.starts_with(['.', '-']);
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName { name: name.to_string() })
    }
}

/// The model folders under `models_dir`.
#[derive(Debug)]
pub struct Store {
    models_dir: PathBuf,
    limits: ImportLimits,
}

/// A fresh `.import-*` folder inside the store, deleted on drop (whatever it then holds: a
/// failed import, or the old model a replacement swapped out). Once its content is installed
/// the folder is gone or left with what was not part of the model.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// Where to put the model's files (or a single folder holding them).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Store::open deletes it at the next start.
            Err(e) => tracing::warn!(path = %self.path.display(), "cannot delete a staging folder: {e}"),
        }
    }
}

impl Store {
    /// Creates `models_dir` if needed and deletes what interrupted imports and removals left
    /// (its `.import-*` and `.removing-*` entries).
    pub fn open(models_dir: &Path, limits: ImportLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(models_dir).map_err(io_error("create", models_dir))?;
        let mut removed = 0;
        for item in std::fs::read_dir(models_dir).map_err(io_error("read", models_dir))? {
            let item = item.map_err(io_error("read", models_dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with(IMPORT_PREFIX) || name.starts_with(REMOVING_PREFIX)) {
                continue;
            }
            let path = item.path();
            let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
            let result = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                // Not fatal: the daemon can serve; the next start tries again.
                Err(e) => tracing::warn!(path = %path.display(), "cannot delete what an interrupted import left: {e}"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "deleted the leftovers of interrupted imports and removals");
        }
        Ok(Self {
            models_dir: models_dir.to_path_buf(),
            limits,
        })
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// Imports a model folder (copied, never moved) or an archive of one (told by its first
    /// bytes), validates it with `validate` and installs it as `name` (else a name derived from
    /// the source: the folder's name, or the archive's without `.zip`, `.tar`, `.tar.gz`, `.tgz`,
    /// `.tar.zst` or `.tzst`). An installed model of that name is refused unless `replace`.
    /// `cancelled` is polled between entries and chunks; a cancelled or failed import leaves
    /// nothing behind. Only optimum's layout: [`Store::import_converting`] also takes flat
    /// bundles.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        replace: bool,
        validate: &mut dyn FnMut(&Path) -> Result<(), String>,
        progress: &mut dyn FnMut(ImportProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Installed, StoreError> {
        self.import_converting(source, name, replace, None, validate, progress, cancelled)
    }

    /// [`Store::import`], where `layouts` (when given) decides on each layout found and converts
    /// a flat bundle into optimum's layout in the staging folder, before `validate` sees it.
    #[allow(clippy::too_many_arguments)]
    pub fn import_converting(
        &self,
        source: &Path,
        name: Option<&str>,
        replace: bool,
        layouts: Option<&dyn Layouts>,
        validate: &mut dyn FnMut(&Path) -> Result<(), String>,
        progress: &mut dyn FnMut(ImportProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Installed, StoreError> {
        let metadata = std::fs::metadata(source).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::SourceMissing {
                path: source.to_path_buf(),
            },
            _ => io_error("read", source)(e),
        })?;
        // A device or a pipe would be read forever, or block the import in `open`.
        if !metadata.is_dir() && !metadata.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let kind = metadata.file_type();
            let kind = if kind.is_fifo() {
                "pipe"
            } else if kind.is_socket() {
                "socket"
            } else {
                "device"
            };
            return Err(StoreError::SpecialSource {
                path: source.to_path_buf(),
                kind,
            });
        }
        let name = match name {
            Some(name) => {
                validate_name(name)?;
                name.to_string()
            }
            None => derive_name(source, metadata.is_dir())?,
        };
        refuse_builtin(&name)?;
        // Checked again, atomically, by the final rename; this spares a long unpacking.
        if !replace && self.is_installed(&name) {
            return Err(StoreError::AlreadyInstalled { name });
        }
        let staging = self.staging()?;
        progress(ImportProgress::Stage(ImportStage::Extracting));
        if metadata.is_dir() {
            // Find the model first, so a wrong folder is refused before anything is copied.
            let (root, layout) = locate(source, layouts.is_some())
                .map_err(io_error("read", source))?
                .ok_or_else(|| StoreError::NotAModel {
                    source_path: source.to_path_buf(),
                })?;
            if let Some(layouts) = layouts {
                layouts.check(layout).map_err(bundle_error(source))?;
            }
            archive::copy_folder(&root, staging.path(), self.limits, progress, cancelled)?;
        } else {
            archive::extract(source, staging.path(), self.limits, progress, cancelled)?;
        }
        self.install_checked(staging, &name, replace, source, layouts, validate, progress, cancelled)
    }

    /// A fresh folder inside the store for a caller that fills it itself (hub pulls download
    /// into it). It is deleted on drop unless [`Store::install`]ed.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        let path = self
            .models_dir
            .join(format!("{IMPORT_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).map_err(io_error("create", &path))?;
        Ok(Staging { path })
    }

    /// Validates and installs a filled staging folder under the same rules as [`Store::import`]
    /// (its links are checked too: a caller may have written any).
    pub fn install(
        &self,
        staging: Staging,
        name: &str,
        replace: bool,
        validate: &mut dyn FnMut(&Path) -> Result<(), String>,
    ) -> Result<Installed, StoreError> {
        validate_name(name)?;
        refuse_builtin(name)?;
        let source = staging.path().to_path_buf();
        archive::verify_links(&source)?;
        self.install_checked(staging, name, replace, &source, None, validate, &mut |_| {}, &|| false)
    }

    /// Finds the model root in `staging` (converting a flat bundle when `layouts` allows),
    /// validates it and renames it into place.
    #[allow(clippy::too_many_arguments)]
    fn install_checked(
        &self,
        staging: Staging,
        name: &str,
        replace: bool,
        source: &Path,
        layouts: Option<&dyn Layouts>,
        validate: &mut dyn FnMut(&Path) -> Result<(), String>,
        progress: &mut dyn FnMut(ImportProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Installed, StoreError> {
        if cancelled() {
            return Err(StoreError::Cancelled);
        }
        let (root, layout) = locate(staging.path(), layouts.is_some())
            .map_err(io_error("read", staging.path()))?
            .ok_or_else(|| StoreError::NotAModel {
                source_path: source.to_path_buf(),
            })?;
        if let Some(layouts) = layouts {
            layouts.check(layout).map_err(bundle_error(source))?;
            if layout == Layout::Flat {
                progress(ImportProgress::Stage(ImportStage::Converting));
                layouts.convert(&root).map_err(bundle_error(source))?;
                if cancelled() {
                    return Err(StoreError::Cancelled);
                }
            }
        }
        if root != staging.path() {
            // Links checked against the whole extraction may leave a sub-folder root.
            archive::verify_links(&root)?;
        }
        progress(ImportProgress::Stage(ImportStage::Validating));
        validate(&root).map_err(|message| StoreError::Invalid {
            name: name.to_string(),
            message,
        })?;
        if cancelled() {
            return Err(StoreError::Cancelled);
        }
        progress(ImportProgress::Stage(ImportStage::Installing));
        let target = self.models_dir.join(name);
        if replace && std::fs::symlink_metadata(&target).is_ok() {
            self.swap_in(&root, &target)?;
            tracing::info!(model = name, "replaced an installed model");
        } else {
            rename_no_replace(&root, &target).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty => {
                    StoreError::AlreadyInstalled { name: name.to_string() }
                }
                _ => io_error("install the model as", &target)(e),
            })?;
            tracing::info!(model = name, "installed a model");
        }
        // `staging` drops here, deleting what is left in it (the old model after a swap).
        drop(staging);
        Ok(Installed {
            name: name.to_string(),
            path: target,
        })
    }

    /// Puts `new` at `target` in place of the model there; the old one ends up at `new`'s path
    /// (inside the staging folder, deleted with it).
    fn swap_in(&self, new: &Path, target: &Path) -> Result<(), StoreError> {
        match exchange(new, target) {
            Ok(()) => return Ok(()),
            Err(e) if !is_unsupported(&e) => return Err(io_error("replace", target)(e)),
            Err(_) => {}
        }
        // No atomic exchange on this file system: the name is briefly absent, never half there.
        let aside = self.aside_path();
        std::fs::rename(target, &aside).map_err(io_error("move aside", target))?;
        if let Err(e) = std::fs::rename(new, target) {
            let _ = std::fs::rename(&aside, target);
            return Err(io_error("install the model as", target)(e));
        }
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(path = %aside.display(), "cannot delete the replaced model yet: {e}");
        }
        Ok(())
    }

    fn aside_path(&self) -> PathBuf {
        self.models_dir
            .join(format!("{REMOVING_PREFIX}{}", uuid::Uuid::new_v4().simple()))
    }

    fn is_installed(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.models_dir.join(name)).is_ok()
    }

    /// Installed models (the non-dot sub-folders, links to folders included), sorted by name.
    pub fn list(&self) -> Result<Vec<Installed>, StoreError> {
        let mut found = Vec::new();
        for item in std::fs::read_dir(&self.models_dir).map_err(io_error("read", &self.models_dir))? {
            let item = item.map_err(io_error("read", &self.models_dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if !name.starts_with('.') && path.is_dir() {
                found.push(Installed { name, path });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The folder of the installed model `name`.
    pub fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let path = self.models_dir.join(name);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(self.not_installed(name))
        }
    }

    fn not_installed(&self, name: &str) -> StoreError {
        StoreError::NotInstalled {
            name: name.to_string(),
            models_dir: self.models_dir.clone(),
        }
    }

    /// Removes the model `name`: renamed to a `.removing-*` folder first (so it vanishes at
    /// once and whole), then deleted. Whether it is in use is the caller's concern.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let path = self.models_dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(self.not_installed(name));
        }
        let aside = self.aside_path();
        std::fs::rename(&path, &aside).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.not_installed(name),
            _ => io_error("remove", &path)(e),
        })?;
        // A link (a model folder linked in by hand) goes, not what it points at.
        let deleted = if aside.is_symlink() || aside.is_file() {
            std::fs::remove_file(&aside)
        } else {
            std::fs::remove_dir_all(&aside)
        };
        if let Err(e) = deleted {
            // It is already out of sight; Store::open finishes the job.
            tracing::warn!(path = %aside.display(), "cannot delete a removed model yet: {e}");
        }
        tracing::info!(model = name, "removed a model");
        Ok(())
    }
}

fn refuse_builtin(name: &str) -> Result<(), StoreError> {
    if crate::catalog::builtin::is_builtin(name) {
        return Err(StoreError::BuiltinName { name: name.to_string() });
    }
    Ok(())
}

/// The name an import gets when none is given: the folder's name, or the archive's without its
/// archive extension.
fn derive_name(source: &Path, is_dir: bool) -> Result<String, StoreError> {
    let file_name = match source.file_name() {
        Some(name) => Some(name.to_os_string()),
        // `.`, `..`, `/`: name it after the folder it resolves to.
        None => std::fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string())),
    };
    let file_name = file_name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = if is_dir {
        file_name
    } else {
        let lower = file_name.to_ascii_lowercase();
        [".tar.gz", ".tar.zst", ".tgz", ".tzst", ".zip", ".tar"]
            .iter()
            .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
            .map_or(file_name.clone(), |ext| {
                file_name[..file_name.len() - ext.len()].to_string()
            })
    };
    match validate_name(&name) {
        Ok(()) => Ok(name),
        Err(_) => Err(StoreError::DerivedName {
            name,
            source_path: source.to_path_buf(),
        }),
    }
}

/// Where the model is in an unpacked folder: the folder itself when it holds
/// `model_index.json`, else its single top-level folder if that one does (archives are often
/// made of the folder rather than its content). Hidden entries and macOS's `__MACOSX` do not
/// count.
pub fn find_model_root(dir: &Path) -> io::Result<Option<PathBuf>> {
    if dir.join(MODEL_INDEX).is_file() {
        return Ok(Some(dir.to_path_buf()));
    }
    Ok(single_visible_folder(dir)?.filter(|folder| folder.join(MODEL_INDEX).is_file()))
}

/// The one visible entry of `dir` when it is a folder (hidden entries and macOS's `__MACOSX`
/// do not count).
fn single_visible_folder(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut visible = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name != "__MACOSX" {
            visible.push(item);
        }
    }
    match visible.as_slice() {
        [single] if single.file_type()?.is_dir() => Ok(Some(single.path())),
        _ => Ok(None),
    }
}

/// The model in `dir` and its layout: optimum's first ([`find_model_root`]), then, when
/// `flat_too`, a flat bundle ([`bundle::find_bundle_root`]).
fn locate(dir: &Path, flat_too: bool) -> io::Result<Option<(PathBuf, Layout)>> {
    if let Some(root) = find_model_root(dir)? {
        return Ok(Some((root, Layout::Optimum)));
    }
    if !flat_too {
        return Ok(None);
    }
    Ok(bundle::find_bundle_root(dir)?.map(|root| (root, Layout::Flat)))
}

fn bundle_error(source: &Path) -> impl FnOnce(BundleError) -> StoreError {
    let source_path = source.to_path_buf();
    move |error| StoreError::Bundle { source_path, error }
}

/// `rename(2)` that fails if `to` exists (even as an empty folder, which a plain rename would
/// replace).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(errno) => {
                let error = io::Error::from(errno);
                if !is_unsupported(&error) {
                    return Err(error);
                }
            }
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

/// Swaps two paths in one step, where the platform can.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (a, b);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// The errors of a file system (or kernel) without `renameat2`'s flags.
fn is_unsupported(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Unsupported
        || matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}

#[cfg(test)]
mod tests {
    use super::archive::tests::{Item, gzip, tar_bytes, zip_bytes, zstd_frame};
    use super::*;
    use std::cell::Cell;

    fn accept(_: &Path) -> Result<(), String> {
        Ok(())
    }

    fn store(dir: &Path) -> Store {
        Store::open(&dir.join("models"), ImportLimits::default()).unwrap()
    }

    /// A stand-in model folder: validation here is the caller's closure, so any files do.
    fn fake_model(dir: &Path, weights: &str) -> PathBuf {
        fs_write(&dir.join("model_index.json"), "{}");
        fs_write(&dir.join("unet/model.onnx"), weights);
        dir.to_path_buf()
    }

    fn fs_write(path: &Path, content: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Everything in the models folder, dot entries included.
    fn entries(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.models_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn import(store: &Store, source: &Path, name: Option<&str>, replace: bool) -> Result<Installed, StoreError> {
        store.import(source, name, replace, &mut accept, &mut |_| {}, &|| false)
    }

    #[test]
    fn a_folder_is_copied_validated_out_of_sight_then_installed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let source = fake_model(&dir.path().join("my-model"), "v1");
        let mut validated_at = None;
        let mut stages = Vec::new();
        let installed = store
            .import(
                &source,
                None,
                false,
                &mut |root| {
                    // While validating, the model is in a dot folder and not listed.
                    assert!(store.list().unwrap().is_empty());
                    validated_at = Some(root.to_path_buf());
                    Ok(())
                },
                &mut |p| stages.push(p),
                &|| false,
            )
            .unwrap();
        assert_eq!(installed.name, "my-model");
        assert_eq!(installed.path, store.models_dir().join("my-model"));
        let validated_at = validated_at.unwrap();
        assert_eq!(validated_at.parent().unwrap(), store.models_dir());
        assert!(
            validated_at
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".import-")
        );
        assert_eq!(
            std::fs::read_to_string(installed.path.join("unet/model.onnx")).unwrap(),
            "v1"
        );
        // The source is copied, not moved.
        assert!(source.join("unet/model.onnx").is_file());
        assert_eq!(entries(&store), ["my-model"], "no staging left");
        assert_eq!(store.list().unwrap(), vec![installed.clone()]);
        assert_eq!(store.path("my-model").unwrap(), installed.path);
        let only_stages: Vec<_> = stages
            .iter()
            .filter(|p| matches!(p, ImportProgress::Stage(_)))
            .collect();
        assert_eq!(
            only_stages,
            [
                &ImportProgress::Stage(ImportStage::Extracting),
                &ImportProgress::Stage(ImportStage::Validating),
                &ImportProgress::Stage(ImportStage::Installing)
            ]
        );
        assert!(
            stages.contains(&ImportProgress::Bytes { done: 4, total: 4 }),
            "{stages:?}"
        );
    }

    #[test]
    fn an_existing_name_is_refused_unless_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let v1 = fake_model(&dir.path().join("v1"), "one");
        let v2 = fake_model(&dir.path().join("v2"), "two");
        import(&store, &v1, Some("sd"), false).unwrap();

        let err = import(&store, &v2, Some("sd"), false).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyInstalled { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("`sd`") && message.contains("--replace") && message.contains("--name"));
        assert_eq!(
            std::fs::read_to_string(store.path("sd").unwrap().join("unet/model.onnx")).unwrap(),
            "one"
        );

        import(&store, &v2, Some("sd"), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(store.path("sd").unwrap().join("unet/model.onnx")).unwrap(),
            "two"
        );
        assert_eq!(entries(&store), ["sd"], "the old model is deleted, no staging left");

        // Replacing a name that is not installed just installs it.
        import(&store, &v1, Some("fresh"), true).unwrap();
        assert_eq!(entries(&store), ["fresh", "sd"]);
    }

    #[test]
    fn the_final_rename_never_overwrites_even_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let from = fake_model(&dir.path().join("from"), "x");
        let to = dir.path().join("to");
        std::fs::create_dir(&to).unwrap();
        let err = rename_no_replace(&from, &to).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
            ),
            "{err}"
        );
        assert!(from.join("unet/model.onnx").is_file());
    }

    #[test]
    fn names_are_checked() {
        for good in ["sd15", "a", "my_model-v1.5", &"x".repeat(100)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "../x",
            "has space",
            "é",
            &"x".repeat(101),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("letters, digits"), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let source = fake_model(&dir.path().join("src"), "x");
        let err = import(&store, &source, Some("../escape"), false).unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
        let err = import(&store, &source, Some(crate::catalog::builtin::DEFAULT_MODEL), false).unwrap_err();
        assert!(matches!(err, StoreError::BuiltinName { .. }), "{err}");
        assert!(matches!(store.path("../models"), Err(StoreError::InvalidName { .. })));
        assert!(matches!(store.remove("../models"), Err(StoreError::InvalidName { .. })));
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    #[test]
    fn names_are_derived_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        for (file, expected) in [
            ("a.tar.gz", "a"),
            ("b.TGZ", "b"),
            ("c.tar.zst", "c"),
            ("d.tzst", "d"),
            ("e.zip", "e"),
            ("f.tar", "f"),
            ("g.v2.zip", "g.v2"),
        ] {
            assert_eq!(derive_name(&dir.path().join(file), false).unwrap(), expected);
        }
        assert_eq!(derive_name(&dir.path().join("sd-1.5"), true).unwrap(), "sd-1.5");
        let err = derive_name(&dir.path().join("My Model.zip"), false).unwrap_err();
        assert!(
            matches!(err, StoreError::DerivedName { ref name, .. } if name == "My Model"),
            "{err}"
        );
        assert!(err.to_string().contains("--name"), "{err}");
    }

    #[test]
    fn remove_takes_the_model_away_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let source = fake_model(&dir.path().join("m"), "x");
        import(&store, &source, None, false).unwrap();
        store.remove("m").unwrap();
        assert_eq!(entries(&store), Vec::<String>::new());
        let err = store.remove("m").unwrap_err();
        assert!(matches!(err, StoreError::NotInstalled { .. }), "{err}");
        assert!(err.to_string().contains("easel models list"), "{err}");
        assert!(matches!(store.path("m"), Err(StoreError::NotInstalled { .. })));
    }

    #[test]
    fn open_deletes_what_interrupted_imports_and_removals_left() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        fake_model(&models.join(".import-0123"), "half");
        fake_model(&models.join(".removing-4567"), "old");
        std::fs::write(models.join(".import-file"), "x").unwrap();
        fake_model(&models.join("keep"), "x");
        std::fs::create_dir(models.join(".not-ours")).unwrap();
        let store = Store::open(&models, ImportLimits::default()).unwrap();
        assert_eq!(entries(&store), [".not-ours", "keep"]);
    }

    #[test]
    fn list_shows_only_model_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        for name in ["b", "a", ".hidden"] {
            std::fs::create_dir(store.models_dir().join(name)).unwrap();
        }
        std::fs::write(store.models_dir().join("notes.txt"), "x").unwrap();
        let _staging = store.staging().unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_cancelled_or_rejected_import_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let source = fake_model(&dir.path().join("m"), "x");
        // Cancelled mid-copy, after a few polls.
        let polls = Cell::new(0);
        let cancelled = || {
            polls.set(polls.get() + 1);
            polls.get() > 2
        };
        let err = store
            .import(&source, None, false, &mut accept, &mut |_| {}, &cancelled)
            .unwrap_err();
        assert!(matches!(err, StoreError::Cancelled), "{err}");
        assert_eq!(entries(&store), Vec::<String>::new());
        // Cancelled while validating: not installed.
        let cancel = Cell::new(false);
        let err = store
            .import(
                &source,
                None,
                false,
                &mut |_| {
                    cancel.set(true);
                    Ok(())
                },
                &mut |_| {},
                &|| cancel.get(),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Cancelled), "{err}");
        assert_eq!(entries(&store), Vec::<String>::new());
        let err = store
            .import(
                &source,
                None,
                false,
                &mut |_| Err("the unet is broken".into()),
                &mut |_| {},
                &|| false,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "model `m` was not installed: the unet is broken");
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    #[test]
    fn archives_install_from_a_single_top_folder_or_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let top = [
            Item::File("sd/model_index.json", b"{}"),
            Item::File("sd/unet/model.onnx", b"w"),
            Item::File("__MACOSX/sd/._model_index.json", b"junk"),
        ];
        let root = [
            Item::File("model_index.json", b"{}"),
            Item::File("unet/model.onnx", b"w"),
        ];
        let cases = [
            ("top-zip.zip", zip_bytes(&top)),
            ("top-gz.tar.gz", gzip(&tar_bytes(&top))),
            ("root-zst.tar.zst", zstd_frame(&tar_bytes(&root))),
            ("root-tar.tar", tar_bytes(&root)),
        ];
        for (file, bytes) in cases {
            let archive = dir.path().join(file);
            std::fs::write(&archive, bytes).unwrap();
            let installed = import(&store, &archive, None, false).unwrap();
            assert!(installed.path.join("unet/model.onnx").is_file(), "{file}");
            assert!(!installed.path.join("__MACOSX").exists(), "{file}");
        }
        assert_eq!(entries(&store), ["root-tar", "root-zst", "top-gz", "top-zip"]);
    }

    #[test]
    fn sources_that_are_not_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let two_tops = [
            Item::File("a/model_index.json", b"{}"),
            Item::File("b/model_index.json", b"{}"),
        ];
        let archive = dir.path().join("two.tar");
        std::fs::write(&archive, tar_bytes(&two_tops)).unwrap();
        let err = import(&store, &archive, None, false).unwrap_err();
        assert!(matches!(err, StoreError::NotAModel { .. }), "{err}");
        assert!(err.to_string().contains("no model_index.json"), "{err}");

        let folder = dir.path().join("empty-folder");
        std::fs::create_dir(&folder).unwrap();
        assert!(matches!(
            import(&store, &folder, None, false),
            Err(StoreError::NotAModel { .. })
        ));
        let missing = dir.path().join("missing.zip");
        assert!(matches!(
            import(&store, &missing, None, false),
            Err(StoreError::SourceMissing { .. })
        ));
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    #[test]
    fn a_zip_bomb_leaves_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ImportLimits {
            max_bytes: 1024 * 1024,
            max_files: 100,
            ..ImportLimits::default()
        };
        let store = Store::open(&dir.path().join("models"), limits).unwrap();
        let zeros = vec![0u8; 50 * 1024 * 1024];
        let bomb = zip_bytes(&[
            Item::File("model_index.json", b"{}"),
            Item::File("unet/model.onnx", &zeros),
        ]);
        let archive = dir.path().join("bomb.zip");
        std::fs::write(&archive, bomb).unwrap();
        let err = import(&store, &archive, None, false).unwrap_err();
        assert!(err.to_string().contains("expands beyond 1.0 MiB"), "{err}");
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    #[test]
    fn links_leaving_a_sub_folder_root_are_refused() {
        // Inside the extraction, but outside the model folder that gets installed.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Hidden top-level entries do not count, so `sd` is the single top folder.
        let items = [
            Item::File(".shared.onnx", b"w"),
            Item::File("sd/model_index.json", b"{}"),
            Item::Symlink("sd/unet.onnx", "../.shared.onnx"),
        ];
        let archive = dir.path().join("m.tar");
        std::fs::write(&archive, tar_bytes(&items)).unwrap();
        let err = import(&store, &archive, None, false).unwrap_err();
        assert!(
            matches!(err, StoreError::Archive(ArchiveError::LinkEscapes { .. })),
            "{err}"
        );
        assert_eq!(entries(&store), Vec::<String>::new());
    }

    /// Converts a "flat bundle" by writing `model_index.json` and moving `unet.onnx` into
    /// `unet/`; refuses optimum folders when `refuse_optimum`.
    struct FakeLayouts {
        refuse_optimum: bool,
        converted: Cell<u32>,
    }

    impl Layouts for FakeLayouts {
        fn check(&self, layout: Layout) -> Result<(), BundleError> {
            if self.refuse_optimum && layout == Layout::Optimum {
                return Err(BundleError::FlagsOnOptimum {
                    flags: "--family".into(),
                });
            }
            Ok(())
        }

        fn convert(&self, root: &Path) -> Result<(), BundleError> {
            self.converted.set(self.converted.get() + 1);
            assert!(!root.join(MODEL_INDEX).exists());
            std::fs::create_dir(root.join("unet")).unwrap();
            std::fs::rename(root.join("Unet.onnx"), root.join("unet/model.onnx")).unwrap();
            std::fs::write(root.join(MODEL_INDEX), "{}").unwrap();
            Ok(())
        }
    }

    fn fake_layouts(refuse_optimum: bool) -> FakeLayouts {
        FakeLayouts {
            refuse_optimum,
            converted: Cell::new(0),
        }
    }

    #[test]
    fn flat_bundles_are_converted_in_staging_from_folders_and_archives() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let layouts = fake_layouts(false);
        let import_flat = |source: &Path, layouts: Option<&dyn Layouts>| {
            let mut stages = Vec::new();
            let result = store.import_converting(
                source,
                None,
                false,
                layouts,
                &mut |root| {
                    // Validation sees the converted folder.
                    assert!(root.join("unet/model.onnx").is_file());
                    Ok(())
                },
                &mut |p| stages.push(p),
                &|| false,
            );
            (result, stages)
        };
        let folder = dir.path().join("flat-folder");
        fs_write(&folder.join("Unet.onnx"), "w");
        fs_write(&folder.join("vocab.json"), "{}");
        let (installed, stages) = import_flat(&folder, Some(&layouts));
        let installed = installed.unwrap();
        assert!(installed.path.join("unet/model.onnx").is_file());
        assert!(stages.contains(&ImportProgress::Stage(ImportStage::Converting)));
        // The user's folder is untouched.
        assert!(folder.join("Unet.onnx").is_file() && !folder.join(MODEL_INDEX).exists());

        let items = [Item::File("Unet.onnx", b"w"), Item::File("merges.txt", b"#")];
        let top = [
            Item::File("bundle/Unet.onnx", b"w"),
            Item::File("bundle/vocab.json", b"{}"),
        ];
        for (file, bytes) in [
            ("flat-root.tar.gz", gzip(&tar_bytes(&items))),
            ("flat-top.zip", zip_bytes(&top)),
        ] {
            let archive = dir.path().join(file);
            std::fs::write(&archive, bytes).unwrap();
            let (installed, _) = import_flat(&archive, Some(&layouts));
            assert!(installed.unwrap().path.join("unet/model.onnx").is_file(), "{file}");
        }
        assert_eq!(layouts.converted.get(), 3);
        assert_eq!(entries(&store), ["flat-folder", "flat-root", "flat-top"]);

        // Without a converter a flat bundle is not a model.
        let other = dir.path().join("other-flat");
        fs_write(&other.join("unet.onnx"), "w");
        let (result, _) = import_flat(&other, None);
        assert!(matches!(result, Err(StoreError::NotAModel { .. })));
        // An optimum folder the converter refuses is refused before it is copied.
        let refusing = fake_layouts(true);
        let optimum = fake_model(&dir.path().join("optimum"), "w");
        let err = store
            .import_converting(
                &optimum,
                None,
                false,
                Some(&refusing),
                &mut accept,
                &mut |p| assert!(!matches!(p, ImportProgress::Bytes { .. }), "nothing is copied"),
                &|| false,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Bundle { .. }), "{err}");
        assert!(err.to_string().contains("only applies to flat bundles"), "{err}");
        assert_eq!(entries(&store), ["flat-folder", "flat-root", "flat-top"]);
    }

    #[test]
    fn staging_folders_are_installed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let staging = store.staging().unwrap();
        let abandoned = staging.path().to_path_buf();
        drop(staging);
        assert!(!abandoned.exists());

        let staging = store.staging().unwrap();
        fake_model(staging.path(), "pulled");
        let installed = store.install(staging, "pulled", false, &mut accept).unwrap();
        assert_eq!(
            std::fs::read_to_string(installed.path.join("unet/model.onnx")).unwrap(),
            "pulled"
        );
        assert_eq!(entries(&store), ["pulled"]);

        let staging = store.staging().unwrap();
        fake_model(staging.path(), "again");
        let err = store.install(staging, "pulled", false, &mut accept).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyInstalled { .. }), "{err}");
        assert_eq!(entries(&store), ["pulled"]);
    }
}
