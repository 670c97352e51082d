//! Which device runs the models: the `device` setting (`auto` | `cpu` | `cuda:N`, or
//! `EASEL_DEVICE`), resolved once at startup against what this machine has.
//!
//! A GPU asked for by name must work or the daemon does not start: the error names every
//! missing piece (a daemon built without the `cuda` feature, an ONNX Runtime library without
//! its CUDA provider, each CUDA or cuDNN library that cannot be found) and how to get it. Only
//! `auto` falls back to the CPU, and the reason is kept for `easel status`.
//!
//! The CUDA libraries are looked for as the CUDA provider will look for them (the system's
//! library path), then in the layouts NVIDIA's Python wheels use beside the ONNX Runtime
//! library (`site-packages/nvidia/**/lib`, for a library inside a `site-packages/onnxruntime/
//! capi/` folder, or `nvidia/**/lib` next to it). One found there is loaded now, so that the
//! provider finds it already in the process.

use std::fmt;
use std::path::{Path, PathBuf};

/// The `device` setting as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSetting {
    /// The first CUDA device when one can be used, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(u32),
}

impl DeviceSetting {
    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(index)) => Ok(Self::Cuda(index)),
                _ => Err("expected auto, cpu or cuda:N (N the GPU's index, from 0)".into()),
            },
        }
    }
}

/// The device the daemon's models run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// The device chosen, and why `auto` did not choose a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedDevice {
    pub device: Device,
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "the device setting asks for {device}, but CUDA cannot be used here:\n{}\n(set device = \"cpu\" or EASEL_DEVICE=cpu to run on the CPU, or device = \"auto\" to use a GPU only when one works)",
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    CudaUnavailable { device: Device, problems: Vec<String> },
    #[error(
        "the device setting asks for {device}, but the GPU does not answer: {message}\n(set device = \"cpu\" or EASEL_DEVICE=cpu to run on the CPU, or device = \"auto\" to use a GPU only when one works)"
    )]
    NoGpu { device: Device, message: String },
}

/// The CUDA provider of the pinned onnxruntime-gpu build, beside its `libonnxruntime.so`.
pub const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";
pub const SHARED_PROVIDER: &str = "libonnxruntime_providers_shared.so";

/// What the pinned onnxruntime-gpu 1.31.1's CUDA provider needs (its ELF `NEEDED` entries
/// beyond the C/C++ runtime, and the libraries it and cuDNN open as they run), with how to get
/// each.
const CUDA_RUNTIME_HINT: &str = "install CUDA 13's runtime libraries: the CUDA 13 toolkit, or `pip install \
     nvidia-cuda-runtime~=13.0 nvidia-cublas~=13.0 nvidia-curand~=10.0 nvidia-cufft~=12.0 nvidia-cuda-nvrtc~=13.0` \
     (found in the system's library path, or in site-packages/nvidia/ beside an onnxruntime-gpu library)";
const CUDNN_HINT: &str = "install cuDNN 9 for CUDA 13: `pip install nvidia-cudnn-cu13~=9.0`, or NVIDIA's cuDNN \
     package";
const DRIVER_HINT: &str = "install the NVIDIA driver (libcuda.so.1 comes with it, not with CUDA's libraries)";

pub const NEEDED_LIBRARIES: &[(&str, &str)] = &[
    ("libcuda.so.1", DRIVER_HINT),
    ("libcudart.so.13", CUDA_RUNTIME_HINT),
    ("libcublasLt.so.13", CUDA_RUNTIME_HINT),
    ("libcublas.so.13", CUDA_RUNTIME_HINT),
    ("libcurand.so.10", CUDA_RUNTIME_HINT),
    ("libcufft.so.12", CUDA_RUNTIME_HINT),
    ("libnvrtc.so.13", CUDA_RUNTIME_HINT),
    ("libcudnn.so.9", CUDNN_HINT),
    ("libcudnn_graph.so.9", CUDNN_HINT),
    ("libcudnn_ops.so.9", CUDNN_HINT),
    ("libcudnn_cnn.so.9", CUDNN_HINT),
    ("libcudnn_adv.so.9", CUDNN_HINT),
    ("libcudnn_heuristic.so.9", CUDNN_HINT),
    ("libcudnn_engines_precompiled.so.9", CUDNN_HINT),
    ("libcudnn_engines_runtime_compiled.so.9", CUDNN_HINT),
];

/// How libraries are opened: by name (the system's search) or by path. The daemon's
/// [`SystemLoader`] keeps what it opens loaded; tests pass a fake.
pub trait LibraryLoader {
    fn open(&self, name_or_path: &Path) -> bool;
}

/// `dlopen`, and what it opened stays open for the process's life (so that the CUDA provider,
/// opened later, finds the libraries by name).
pub struct SystemLoader;

impl LibraryLoader for SystemLoader {
    // The one way to load a shared library is `dlopen`, which runs its initialisers.
    #[allow(unsafe_code)]
    fn open(&self, name_or_path: &Path) -> bool {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA and
        // cuDNN libraries, which the CUDA provider would load into this process anyway.
        match unsafe { libloading::Library::new(name_or_path) } {
            Ok(library) => {
                std::mem::forget(library);
                true
            }
            Err(_) => false,
        }
    }
}

/// Resolves the setting against the ONNX Runtime `library` the daemon loaded.
pub fn resolve(
    setting: DeviceSetting,
    library: &Path,
    loader: &dyn LibraryLoader,
) -> Result<ResolvedDevice, DeviceError> {
    match setting {
        DeviceSetting::Cpu => Ok(ResolvedDevice::default()),
        DeviceSetting::Cuda(index) => {
            let problems = cuda_problems(library, loader);
            if problems.is_empty() {
                Ok(ResolvedDevice {
                    device: Device::Cuda(index),
                    note: None,
                })
            } else {
                Err(DeviceError::CudaUnavailable {
                    device: Device::Cuda(index),
                    problems,
                })
            }
        }
        DeviceSetting::Auto => {
            let problems = cuda_problems(library, loader);
            Ok(match problems.first() {
                None => ResolvedDevice {
                    device: Device::Cuda(0),
                    note: None,
                },
                Some(first) => ResolvedDevice {
                    device: Device::Cpu,
                    note: Some(format!(
                        "auto: no usable GPU ({first}{})",
                        match problems.len() {
                            1 => String::new(),
                            n => format!("; and {} more", n - 1),
                        }
                    )),
                },
            })
        }
    }
}

/// Everything that stops the CUDA provider from running with `library`; empty when nothing
/// does.
pub fn cuda_problems(library: &Path, loader: &dyn LibraryLoader) -> Vec<String> {
    if !cfg!(feature = "cuda") {
        return vec![
            "this easeld was built without GPU support: build it with `cargo build --release -p easeld --features cuda`"
                .into(),
        ];
    }
    let mut problems = Vec::new();
    let folder = library.parent().unwrap_or(Path::new("."));
    for provider in [SHARED_PROVIDER, CUDA_PROVIDER] {
        if !folder.join(provider).is_file() {
            problems.push(format!(
                "{} is not beside {}: that is a CPU build of ONNX Runtime; run `cargo xtask fetch-ort --gpu --install` \
                 (onnxruntime-gpu {}) or point ORT_DYLIB_PATH at an onnxruntime-gpu library",
                provider,
                library.display(),
                super::runtime::PINNED_ORT_VERSION
            ));
        }
    }
    let wheels = wheel_library_folders(library);
    for (name, hint) in NEEDED_LIBRARIES {
        let found = loader.open(Path::new(name))
            || wheels
                .iter()
                .map(|folder| folder.join(name))
                .any(|path| path.is_file() && loader.open(&path));
        if !found {
            problems.push(format!("{name} was not found: {hint}"));
        }
    }
    problems
}

/// The `lib` folders of NVIDIA's Python wheels where they would sit for this ONNX Runtime
/// library: `site-packages/nvidia/**/lib` (the library inside `site-packages/onnxruntime/capi/`)
/// and `nvidia/**/lib` next to it, at most three levels down.
pub fn wheel_library_folders(library: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(folder) = library.parent() {
        roots.push(folder.join("nvidia"));
        if let Some(site_packages) = folder.parent().and_then(Path::parent) {
            roots.push(site_packages.join("nvidia"));
        }
    }
    let mut found = Vec::new();
    for root in roots {
        collect_lib_folders(&root, 3, &mut found);
    }
    found
}

fn collect_lib_folders(folder: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    children.sort();
    for child in children {
        if child.file_name().is_some_and(|n| n == "lib") {
            found.push(child);
        } else if depth > 1 {
            collect_lib_folders(&child, depth - 1, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Opens the files that exist (by path) and the names it was told the system has.
    struct FakeLoader {
        system: Vec<&'static str>,
        opened: RefCell<Vec<PathBuf>>,
    }

    impl LibraryLoader for FakeLoader {
        fn open(&self, name_or_path: &Path) -> bool {
            let ok = if name_or_path.is_absolute() {
                name_or_path.is_file()
            } else {
                self.system.iter().any(|n| Path::new(n) == name_or_path)
            };
            if ok {
                self.opened.borrow_mut().push(name_or_path.to_path_buf());
            }
            ok
        }
    }

    #[test]
    fn settings_parse_and_a_bad_one_says_what_is_expected() {
        assert_eq!(DeviceSetting::parse("auto"), Ok(DeviceSetting::Auto));
        assert_eq!(DeviceSetting::parse(" CPU "), Ok(DeviceSetting::Cpu));
        assert_eq!(DeviceSetting::parse("cuda"), Ok(DeviceSetting::Cuda(0)));
        assert_eq!(DeviceSetting::parse("cuda:3"), Ok(DeviceSetting::Cuda(3)));
        for bad in ["cuda:", "cuda:-1", "rocm", "", "cuda:x"] {
            let message = DeviceSetting::parse(bad).unwrap_err();
            assert!(message.contains("auto, cpu or cuda:N"), "{bad}: {message}");
        }
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        assert_eq!(Device::Cpu.to_string(), "cpu");
    }

    #[test]
    fn the_cpu_needs_nothing_and_auto_falls_back_with_the_reason() {
        let loader = FakeLoader {
            system: vec![],
            opened: RefCell::default(),
        };
        let library = Path::new("/nowhere/libonnxruntime.so");
        assert_eq!(
            resolve(DeviceSetting::Cpu, library, &loader).unwrap(),
            ResolvedDevice::default()
        );
        let auto = resolve(DeviceSetting::Auto, library, &loader).unwrap();
        assert_eq!(auto.device, Device::Cpu);
        assert!(auto.note.unwrap().starts_with("auto: no usable GPU ("));
        let error = resolve(DeviceSetting::Cuda(1), library, &loader)
            .unwrap_err()
            .to_string();
        assert!(error.contains("asks for cuda:1"), "{error}");
        assert!(error.contains("EASEL_DEVICE=cpu"), "{error}");
    }

    /// A GPU build in a wheel layout: the libraries the system lacks are found in NVIDIA's
    /// wheels beside it and loaded from there; each one missing anywhere is named with its fix.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_libraries_are_found_in_the_wheels_and_each_missing_one_is_named() {
        let site = tempfile::tempdir().unwrap();
        let capi = site.path().join("onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        for file in ["libonnxruntime.so.1.31.1", SHARED_PROVIDER, CUDA_PROVIDER] {
            std::fs::write(capi.join(file), b"").unwrap();
        }
        let runtime = site.path().join("nvidia/cu13/lib");
        let cudnn = site.path().join("nvidia/cudnn/lib");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::create_dir_all(&cudnn).unwrap();
        for (name, hint) in NEEDED_LIBRARIES {
            let folder = if *hint == CUDNN_HINT { &cudnn } else { &runtime };
            if !["libcuda.so.1", "libcufft.so.12", "libcudnn_adv.so.9"].contains(name) {
                std::fs::write(folder.join(name), b"").unwrap();
            }
        }
        let loader = FakeLoader {
            system: vec!["libcuda.so.1"],
            opened: RefCell::default(),
        };
        let library = capi.join("libonnxruntime.so.1.31.1");
        assert_eq!(wheel_library_folders(&library), [runtime.clone(), cudnn.clone()]);
        let problems = cuda_problems(&library, &loader);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("libcufft.so.12 was not found: install CUDA 13"));
        assert!(problems[1].starts_with("libcudnn_adv.so.9 was not found: install cuDNN 9"));
        assert!(loader.opened.borrow().contains(&runtime.join("libcudart.so.13")));

        std::fs::write(runtime.join("libcufft.so.12"), b"").unwrap();
        std::fs::write(cudnn.join("libcudnn_adv.so.9"), b"").unwrap();
        let resolved = resolve(DeviceSetting::Auto, &library, &loader).unwrap();
        assert_eq!(resolved.device, Device::Cuda(0));
        std::fs::remove_file(capi.join(CUDA_PROVIDER)).unwrap();
        let error = resolve(DeviceSetting::Cuda(0), &library, &loader)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("libonnxruntime_providers_cuda.so is not beside") && error.contains("fetch-ort --gpu"),
            "{error}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_the_cuda_feature_says_how_to_get_one() {
        let loader = FakeLoader {
            system: vec![],
            opened: RefCell::default(),
        };
        let problems = cuda_problems(Path::new("/x/libonnxruntime.so"), &loader);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("--features cuda"), "{problems:?}");
    }
}
