//! The process's and the machine's memory, as the kernel reports it: what the residency
//! manager measures models and jobs with and sizes its default budget from.

/// The process's resident set size (`VmRSS`), in bytes; 0 where /proc is missing.
pub fn resident_memory() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:").unwrap_or(0) * 1024
}

/// The growth of this process's peak resident memory over a stretch of work (a job): the
/// kernel's high-water mark (`VmHWM`), reset at the start through `/proc/self/clear_refs`.
#[derive(Debug)]
pub struct PeakMeter {
    baseline: u64,
}

impl PeakMeter {
    /// Resets the high-water mark; `None` where the kernel does not allow it.
    pub fn start() -> Option<Self> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        Some(Self {
            baseline: resident_memory(),
        })
    }

    /// How far the peak rose above the resident memory at the start.
    pub fn growth(&self) -> u64 {
        let peak = proc_kib("/proc/self/status", "VmHWM:").unwrap_or(0) * 1024;
        peak.saturating_sub(self.baseline)
    }
}

/// Physical memory, in bytes; `None` where /proc is missing.
pub fn total_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemTotal:").map(|kib| kib * 1024)
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Gives memory freed by an unloaded model back to the system, so the next load's growth is
/// measured from a true baseline (glibc otherwise keeps freed heap pages).
#[allow(unsafe_code)]
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_meter_sees_a_large_allocation_come_and_go() {
        let Some(meter) = PeakMeter::start() else {
            panic!("/proc/self/clear_refs is writable on Linux");
        };
        let block = vec![1u8; 256 << 20];
        std::hint::black_box(&block);
        drop(block);
        assert!(meter.growth() >= 200 << 20, "{}", meter.growth());
    }

    #[test]
    fn this_process_uses_some_of_the_machines_memory() {
        let (used, total) = (resident_memory(), total_memory().unwrap());
        assert!(used > 0 && used < total, "{used} of {total}");
    }
}
