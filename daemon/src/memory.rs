//! The process's and the machine's memory, as the kernel reports it: what the residency
//! manager measures models with and sizes its default budget from.

/// The process's resident set size (`VmRSS`), in bytes; 0 where /proc is missing.
pub fn resident_memory() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:").unwrap_or(0) * 1024
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
    fn this_process_uses_some_of_the_machines_memory() {
        let (used, total) = (resident_memory(), total_memory().unwrap());
        assert!(used > 0 && used < total, "{used} of {total}");
    }
}
