//! How much memory the GPU has and how much is in use: what VRAM residency measures models
//! with and sizes its default budget from, as `memory.rs` is for RAM.
//!
//! The CUDA runtime answers (`cudaMemGetInfo` for the device, through the `libcudart` that the
//! device check already found and loaded). It reports the whole device, not this process: a
//! model's VRAM is the growth of the device's used memory while it loads, which is this
//! process's own because loads run one at a time — another program allocating on the same GPU
//! at that moment would be counted too, as another process's pages are not in RSS growth.
//!
//! Asking also tells whether a GPU is really there: the libraries can all be installed on a
//! machine without one (or with a driver too old for CUDA 13). [`attach`] turns that into the
//! same startup rule as the rest of the device check: `cuda:N` must work, `auto` falls back to
//! the CPU and says why. Everything here goes through the [`DeviceMemory`] trait, so it is
//! tested with a fake device.

use std::sync::Arc;

use super::device::{Device, DeviceError, DeviceSetting, ResolvedDevice};

/// A device's memory, as its driver reports it.
pub trait DeviceMemory: Send + Sync + std::fmt::Debug {
    /// Bytes the device has in all.
    fn total(&self) -> u64;
    /// Bytes in use on the device now (by every process), or why that cannot be told.
    fn used(&self) -> Result<u64, String>;
}

/// Opens the memory probe of CUDA device `index`.
pub type MemoryOpener = dyn Fn(u32) -> Result<Arc<dyn DeviceMemory>, String>;

/// The device the daemon runs on with its memory probe: on a GPU, the probe must answer, or
/// `cuda:N` is a startup error and `auto` falls back to the CPU with a note.
pub fn attach(
    setting: DeviceSetting,
    resolved: ResolvedDevice,
    open: &MemoryOpener,
) -> Result<(ResolvedDevice, Option<Arc<dyn DeviceMemory>>), DeviceError> {
    let Device::Cuda(index) = resolved.device else {
        return Ok((resolved, None));
    };
    match open(index) {
        Ok(memory) => Ok((resolved, Some(memory))),
        Err(message) if setting == DeviceSetting::Auto => Ok((
            ResolvedDevice {
                device: Device::Cpu,
                note: Some(format!("auto: no usable GPU ({message})")),
            },
            None,
        )),
        Err(message) => Err(DeviceError::NoGpu {
            device: resolved.device,
            message,
        }),
    }
}

/// VRAM a load took: the growth of the device's used memory, or 0 when either reading failed
/// (the caller then counts the weights alone).
pub fn growth(before: &Result<u64, String>, after: &Result<u64, String>) -> u64 {
    match (before, after) {
        (Ok(before), Ok(after)) => after.saturating_sub(*before),
        _ => 0,
    }
}

/// The CUDA runtime's view of one device.
#[derive(Debug)]
pub struct CudaMemory {
    runtime: libloading::Library,
    index: i32,
    total: u64,
}

/// The CUDA runtime library the pinned CUDA provider links (see `device::NEEDED_LIBRARIES`).
const CUDART: &str = "libcudart.so.13";

type SetDevice = unsafe extern "C" fn(device: i32) -> i32;
type MemGetInfo = unsafe extern "C" fn(free: *mut usize, total: *mut usize) -> i32;
type GetErrorString = unsafe extern "C" fn(error: i32) -> *const std::ffi::c_char;

impl CudaMemory {
    /// Opens the CUDA runtime and asks device `index` for its memory once, which fails when
    /// there is no such GPU or its driver cannot run CUDA 13.
    // The CUDA runtime is a C library: dlopen and its functions are the only way in.
    #[allow(unsafe_code)]
    pub fn open(index: u32) -> Result<Arc<dyn DeviceMemory>, String> {
        // SAFETY: the CUDA runtime's initialisers; the device check already loaded it.
        let runtime = unsafe { libloading::Library::new(CUDART) }.map_err(|e| format!("{CUDART}: {e}"))?;
        let index = i32::try_from(index).map_err(|_| format!("there is no GPU number {index}"))?;
        let mut probe = CudaMemory {
            runtime,
            index,
            total: 0,
        };
        let (_, total) = probe.info()?;
        probe.total = total;
        Ok(Arc::new(probe))
    }

    /// (free, total) bytes of the device.
    #[allow(unsafe_code)]
    fn info(&self) -> Result<(u64, u64), String> {
        // SAFETY: the signatures are the CUDA runtime API's (cuda_runtime_api.h); the
        // out-pointers point at locals that outlive the call.
        unsafe {
            let set_device = self
                .runtime
                .get::<SetDevice>(b"cudaSetDevice\0")
                .map_err(|e| e.to_string())?;
            let mem_get_info = self
                .runtime
                .get::<MemGetInfo>(b"cudaMemGetInfo\0")
                .map_err(|e| e.to_string())?;
            // The runtime's device is per thread: every worker thread asks for its own.
            self.check(set_device(self.index), "cudaSetDevice")?;
            let (mut free, mut total) = (0usize, 0usize);
            self.check(mem_get_info(&mut free, &mut total), "cudaMemGetInfo")?;
            Ok((free as u64, total as u64))
        }
    }

    #[allow(unsafe_code)]
    fn check(&self, code: i32, call: &str) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString returns a static C string for any code.
        let text = unsafe {
            self.runtime
                .get::<GetErrorString>(b"cudaGetErrorString\0")
                .ok()
                .map(|f| f(code))
                .filter(|p| !p.is_null())
                .map(|p| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        Err(format!(
            "{call} on GPU {} failed: {} (error {code}); check that `nvidia-smi` lists it and its driver supports CUDA 13",
            self.index,
            text.unwrap_or_else(|| "unknown error".into())
        ))
    }
}

impl DeviceMemory for CudaMemory {
    fn total(&self) -> u64 {
        self.total
    }

    fn used(&self) -> Result<u64, String> {
        let (free, total) = self.info()?;
        Ok(total.saturating_sub(free))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A GPU whose used memory the test sets.
    #[derive(Debug)]
    pub struct FakeGpu {
        pub total: u64,
        pub used: Mutex<u64>,
    }

    impl DeviceMemory for FakeGpu {
        fn total(&self) -> u64 {
            self.total
        }
        fn used(&self) -> Result<u64, String> {
            Ok(*self.used.lock().unwrap())
        }
    }

    fn gpu(index: u32) -> Result<Arc<dyn DeviceMemory>, String> {
        assert_eq!(index, 1);
        Ok(Arc::new(FakeGpu {
            total: 80 << 30,
            used: Mutex::new(0),
        }))
    }

    fn none(_: u32) -> Result<Arc<dyn DeviceMemory>, String> {
        Err("cudaSetDevice on GPU 0 failed: no CUDA-capable device is detected (error 100)".into())
    }

    fn on(device: Device) -> ResolvedDevice {
        ResolvedDevice { device, note: None }
    }

    #[test]
    fn a_gpu_that_answers_comes_with_its_memory() {
        let (resolved, memory) = attach(DeviceSetting::Cuda(1), on(Device::Cuda(1)), &gpu).unwrap();
        assert_eq!(resolved.device, Device::Cuda(1));
        assert_eq!(memory.unwrap().total(), 80 << 30);
    }

    #[test]
    fn the_cpu_needs_no_probe() {
        let (resolved, memory) = attach(DeviceSetting::Cpu, on(Device::Cpu), &none).unwrap();
        assert_eq!((resolved.device, memory.is_none()), (Device::Cpu, true));
    }

    #[test]
    fn libraries_without_a_gpu_are_an_error_for_cuda_and_a_note_for_auto() {
        let error = attach(DeviceSetting::Cuda(0), on(Device::Cuda(0)), &none).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("cuda:0") && message.contains("no CUDA-capable device") && message.contains("cpu"),
            "{message}"
        );
        let (resolved, memory) = attach(DeviceSetting::Auto, on(Device::Cuda(0)), &none).unwrap();
        assert_eq!(resolved.device, Device::Cpu);
        assert!(memory.is_none());
        let note = resolved.note.unwrap();
        assert!(
            note.starts_with("auto: no usable GPU (") && note.contains("error 100"),
            "{note}"
        );
    }

    #[test]
    fn growth_is_the_rise_in_used_memory_or_nothing_when_unknown() {
        assert_eq!(growth(&Ok(10), &Ok(25)), 15);
        assert_eq!(growth(&Ok(25), &Ok(10)), 0);
        assert_eq!(growth(&Err("x".into()), &Ok(10)), 0);
    }

    #[test]
    fn without_a_cuda_runtime_opening_says_which_library_is_missing() {
        // This machine has no CUDA runtime; where one exists the call must still not panic.
        match CudaMemory::open(0) {
            Ok(memory) => assert!(memory.total() > 0),
            Err(message) => assert!(
                message.contains("libcudart.so.13") || message.contains("GPU 0"),
                "{message}"
            ),
        }
    }
}
