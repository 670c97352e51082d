//! Finding and loading the ONNX Runtime shared library.
//!
//! easel links ONNX Runtime dynamically (`ort`'s `load-dynamic`), so the daemon binary works
//! with whichever official build the user has: CPU, CUDA, … The library is looked up in the
//! order DESIGN.md fixes — `ORT_DYLIB_PATH`, the config file, `$EASEL_HOME/runtime/`, next to
//! the executable, then `../lib/easel/` from it (where `install.sh` and the release tarball put
//! it) — and a missing or too-old library is a startup error that says how to get
//! one, never a panic deep inside the first request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version of ONNX Runtime easel is pinned to (the `onnxruntime` wheel the xtask fetches).
pub const PINNED_ORT_VERSION: &str = "1.31.1";

/// What to do when the library is missing: printed as part of every lookup error.
pub const FETCH_HINT: &str = "run `cargo xtask fetch-ort --install` in the easel source tree (it installs the pinned \
     library into $EASEL_HOME/runtime/), or set ORT_DYLIB_PATH to an existing libonnxruntime.so \
     (for example the one inside a `pip download onnxruntime==1.31.1` wheel, under onnxruntime/capi/)";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked in: {searched}); {FETCH_HINT}")]
    NotFound { searched: String },
    #[error("could not load ONNX Runtime from {path}: {source}; {FETCH_HINT}")]
    Load {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error("could not initialise ONNX Runtime from {path}: {source}")]
    Init {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

/// The variable that keeps ONNX Runtime's telemetry from starting. Microsoft's official builds
/// (the pinned wheels among them) carry its 1DS telemetry on Linux too: loaded, the library
/// writes a device id and an event queue under `~/.cache/Microsoft/DeveloperTools/.onnxruntime/`
/// and tries to send them. The environment builder's `with_telemetry(false)` comes too late
/// for that (it is set up when the library loads); this variable, read at load, stops it all.
pub const TELEMETRY_SWITCH: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_SWITCH`] for this process and what it starts: easel is private and
/// offline, whatever the environment said.
///
/// # Safety
///
/// Changes the environment: call it first thing in `main`, while the process has one thread
/// (no other thread may read or write the environment meanwhile).
#[allow(unsafe_code)]
pub unsafe fn switch_off_telemetry() {
    // SAFETY: the caller guarantees no other thread touches the environment.
    unsafe { std::env::set_var(TELEMETRY_SWITCH, "1") };
}

/// Where the library may be, in lookup order. `configured` is the config file's setting.
pub fn candidate_paths(configured: Option<&Path>, easel_home: &Path) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(path));
    }
    if let Some(path) = configured {
        candidates.push(path.to_path_buf());
    }
    let runtime_dir = easel_home.join("runtime");
    candidates.extend(library_files_in(&runtime_dir));
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.extend(library_files_in(&exe_dir));
        candidates.extend(library_files_in(&installed_library_dir(&exe_dir)));
    }
    candidates
}

/// `PREFIX/lib/easel` for a daemon in `PREFIX/bin`: the installed layout.
fn installed_library_dir(exe_dir: &Path) -> PathBuf {
    exe_dir.parent().unwrap_or(exe_dir).join("lib").join("easel")
}

/// `libonnxruntime.so*` (or the platform's equivalent) in `dir`, the plain name first.
fn library_files_in(dir: &Path) -> Vec<PathBuf> {
    let plain = dir.join(library_file_name());
    let mut found = vec![plain];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut versioned: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(library_file_name()) && n != library_file_name())
            })
            .collect();
        versioned.sort();
        found.extend(versioned.into_iter().rev());
    }
    found
}

fn library_file_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libonnxruntime.dylib"
    } else if cfg!(windows) {
        "onnxruntime.dll"
    } else {
        "libonnxruntime.so"
    }
}

/// A loaded ONNX Runtime: the one `ort` environment of this process and where it came from.
#[derive(Clone)]
pub struct OrtRuntime {
    pub environment: Arc<ort::environment::Environment>,
    pub library: PathBuf,
    /// Where optimized graphs are kept between loads, when the `optimized_cache` setting is on.
    pub optimized_cache: Option<super::optimized_cache::OptimizedCache>,
    /// Where sessions run (resolved at startup, see `device`): every session opened registers
    /// this device's execution provider.
    pub device: super::device::Device,
    /// The GPU's memory, on a GPU (what VRAM residency measures loads with).
    pub device_memory: Option<Arc<dyn super::device_memory::DeviceMemory>>,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime").field("library", &self.library).finish()
    }
}

/// Loads the first library that exists among `candidates`. `ort` allows one environment per
/// process, so this is called once, at daemon start.
pub fn load(candidates: &[PathBuf]) -> Result<OrtRuntime, RuntimeError> {
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        let searched = candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RuntimeError::NotFound { searched });
    };
    let builder = ort::init_from(path).map_err(|source| RuntimeError::Load {
        path: path.clone(),
        source,
    })?;
    let environment = builder
        .with_name("easeld")
        // easel is private and offline: Microsoft's builds have ONNX Runtime's telemetry on.
        .with_telemetry(false)
        .build()
        .map_err(|source| RuntimeError::Init {
            path: path.clone(),
            source,
        })?;
    Ok(OrtRuntime {
        environment: Arc::new(environment),
        library: path.clone(),
        optimized_cache: None,
        device: super::device::Device::Cpu,
        device_memory: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&[dir.path().join("nope/libonnxruntime.so")]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("not found"), "{message}");
        assert!(message.contains("cargo xtask fetch-ort"), "{message}");
        assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    }

    #[test]
    fn the_installed_layout_is_searched_beside_bin() {
        let prefix = tempfile::tempdir().unwrap();
        let bin = prefix.path().join("bin");
        let lib = prefix.path().join("lib/easel");
        assert_eq!(installed_library_dir(&bin), lib);
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        let found = library_files_in(&installed_library_dir(&bin));
        assert!(found.contains(&lib.join("libonnxruntime.so.1.31.1")), "{found:?}");
    }

    #[test]
    fn runtime_folder_is_searched_with_versioned_names() {
        let home = tempfile::tempdir().unwrap();
        let runtime = home.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::write(runtime.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        let candidates = candidate_paths(None, home.path());
        assert!(
            candidates.contains(&runtime.join("libonnxruntime.so.1.31.1")),
            "{candidates:?}"
        );
    }
}
