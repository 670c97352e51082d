//! ONNX Runtime's optimized graphs, kept on disk so that a model's next load skips the graph
//! optimization (opt-in: the `optimized_cache` setting).
//!
//! Creating a session at ONNX Runtime's full optimization level rewrites the graph (fusions,
//! the NCHWc layout for convolutions) before it can run: about 5 s of a full-size SD 1.5 UNet's
//! 6.5 s session creation on two cores. ONNX Runtime can save the result
//! (`optimized_model_filepath`); a session created from the saved graph with optimizations off
//! runs the same kernels on the same weights (the same outputs, bit for bit, in our
//! measurements) and is ready in about 1.4 s. The price is disk: the saved graph holds its own
//! copy of the weights (reordered for the layout), as large as the model's.
//!
//! An entry is keyed by everything that decides the optimized graph: the source file (path,
//! size and modification time of every file in its folder, external weights included), the
//! ONNX Runtime library and the CPU (the layout is chosen for its vector width). It is written
//! into a temporary folder and renamed into place once the session that wrote it opened, so a
//! crash leaves no half-written entry that could be used; entries whose source is gone or has
//! changed are swept when a new one is written. Any failure only costs the speed-up: the
//! caller falls back to the source file.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Bumped when what an entry holds changes (so old entries stop matching).
const FORMAT: &str = "easel-optimized-v1";
/// The graph's file inside an entry; its weights go to `model.onnx.data` beside it.
pub const GRAPH: &str = "model.onnx";
pub const WEIGHTS: &str = "model.onnx.data";
/// What an entry records about its source, for the sweep.
const SOURCE: &str = "source.txt";

/// The cache folder and how much disk it must leave free.
#[derive(Debug, Clone)]
pub struct OptimizedCache {
    dir: PathBuf,
    keep_free: u64,
    /// Identifies the ONNX Runtime library and the CPU (part of every key).
    platform: String,
}

/// An entry being written: the session that optimizes the graph saves it here.
#[derive(Debug)]
pub struct PendingEntry {
    partial: PathBuf,
    entry: PathBuf,
    cache: OptimizedCache,
}

impl OptimizedCache {
    /// A cache in `dir` (made when first written), leaving `keep_free` bytes free, for graphs
    /// optimized by the ONNX Runtime library at `library`.
    pub fn new(dir: PathBuf, keep_free: u64, library: &Path) -> Self {
        let library_id = std::fs::metadata(library)
            .map(|meta| format!("{} {} {:?}", library.display(), meta.len(), meta.modified().ok()))
            .unwrap_or_else(|_| library.display().to_string());
        Self {
            dir,
            keep_free,
            platform: format!("{library_id}\n{}", cpu_identity()),
        }
    }

    /// The saved, optimized graph of `source`, when an entry for the file as it is now exists.
    pub fn lookup(&self, source: &Path) -> Option<PathBuf> {
        let graph = self.dir.join(self.key(source).ok()?).join(GRAPH);
        graph.is_file().then_some(graph)
    }

    /// Forgets the entry of `source` (it failed to open).
    pub fn remove(&self, source: &Path) {
        if let Ok(key) = self.key(source) {
            let _ = std::fs::remove_dir_all(self.dir.join(key));
        }
    }

    /// A temporary folder for the entry of `source`, when the disk has room for a copy of the
    /// source's folder and still `keep_free` bytes; `None` (and no entry) otherwise.
    pub fn begin(&self, source: &Path) -> Option<PendingEntry> {
        let key = self.key(source).ok()?;
        std::fs::create_dir_all(&self.dir).ok()?;
        let needed = folder_bytes(source.parent()?);
        let free = available_bytes(&self.dir).ok()?;
        if free < needed.saturating_add(self.keep_free) {
            tracing::info!(
                source = %source.display(),
                needed,
                free,
                "not caching the optimized graph: too little free disk"
            );
            return None;
        }
        let partial = self.dir.join(format!(".{key}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).ok()?;
        std::fs::write(partial.join(SOURCE), source_record(source).ok()?).ok()?;
        Some(PendingEntry {
            entry: self.dir.join(key),
            partial,
            cache: self.clone(),
        })
    }

    fn key(&self, source: &Path) -> io::Result<String> {
        let mut hash = Sha256::new();
        hash.update(FORMAT);
        hash.update(&self.platform);
        hash.update(source_record(source)?);
        Ok(hex(&hash.finalize()))
    }

    /// Removes entries whose source is gone or changed, and partial ones of dead writers.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = if let Some(rest) = name.strip_prefix('.') {
                // `.KEY.partial-PID`: stale when its writer is gone.
                rest.rsplit_once("partial-")
                    .and_then(|(_, pid)| pid.parse::<i32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            } else {
                let recorded = std::fs::read_to_string(path.join(SOURCE)).unwrap_or_default();
                let source = recorded.lines().next().map(PathBuf::from);
                match source {
                    Some(source) => source_record(&source).map_or(true, |now| now != recorded),
                    None => true,
                }
            };
            if stale {
                tracing::debug!(entry = %path.display(), "removing a stale optimized graph");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

impl PendingEntry {
    /// Where the optimizing session saves the graph.
    pub fn graph(&self) -> PathBuf {
        self.partial.join(GRAPH)
    }

    /// The session opened: the entry is complete, move it into place (and sweep stale ones).
    pub fn commit(self) {
        let _ = std::fs::remove_dir_all(&self.entry);
        match std::fs::rename(&self.partial, &self.entry) {
            Ok(()) => self.cache.sweep(),
            Err(error) => {
                tracing::warn!(%error, entry = %self.entry.display(), "could not keep the optimized graph");
                let _ = std::fs::remove_dir_all(&self.partial);
            }
        }
    }

    /// The session failed: drop what was written.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.partial);
    }
}

/// The source's canonical path, then one line per file in its folder (name, size, modification
/// time): any change to the graph or its external weights changes the record.
fn source_record(source: &Path) -> io::Result<String> {
    let source = source.canonicalize()?;
    let folder = source.parent().ok_or_else(|| io::Error::other("a file has a folder"))?;
    let mut files: Vec<String> = std::fs::read_dir(folder)?
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{} {} {modified}", entry.file_name().to_string_lossy(), meta.len())
            })
        })
        .collect();
    files.sort();
    Ok(format!("{}\n{}\n", source.display(), files.join("\n")))
}

/// Bytes free for an unprivileged user on the file system holding `path`.
// `fsblkcnt_t` and the fragment size are narrower than u64 on some platforms.
#[allow(clippy::useless_conversion)]
fn available_bytes(path: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size())))
}

fn folder_bytes(folder: &Path) -> u64 {
    std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// The CPU's model and feature flags: the optimized layout depends on the vector width.
fn cpu_identity() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|line| line.starts_with(name))
            .map(str::to_string)
            .unwrap_or_default()
    };
    format!("{}\n{}", field("model name"), field("flags"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path) -> PathBuf {
        let folder = dir.join("unet");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("model.onnx"), b"graph").unwrap();
        std::fs::write(folder.join("model.onnx_data"), b"weights").unwrap();
        folder.join("model.onnx")
    }

    fn cache(dir: &Path) -> OptimizedCache {
        OptimizedCache::new(dir.join("cache"), 0, Path::new("/nonexistent/libonnxruntime.so"))
    }

    #[test]
    fn an_entry_is_used_once_committed_and_only_for_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let (source, cache) = (source(dir.path()), cache(dir.path()));
        assert!(cache.lookup(&source).is_none());
        let pending = cache.begin(&source).unwrap();
        std::fs::write(pending.graph(), b"optimized").unwrap();
        assert!(cache.lookup(&source).is_none(), "not before the commit");
        pending.commit();
        let graph = cache.lookup(&source).expect("committed");
        assert_eq!(std::fs::read(&graph).unwrap(), b"optimized");

        // Changing the external weights changes the key; the old entry is swept on the next write.
        std::fs::write(source.with_file_name("model.onnx_data"), b"other weights").unwrap();
        assert!(cache.lookup(&source).is_none());
        let pending = cache.begin(&source).unwrap();
        std::fs::write(pending.graph(), b"optimized again").unwrap();
        pending.commit();
        assert!(!graph.exists(), "the stale entry was swept");
        assert_eq!(
            std::fs::read(cache.lookup(&source).unwrap()).unwrap(),
            b"optimized again"
        );
    }

    #[test]
    fn an_abandoned_or_removed_entry_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (source, cache) = (source(dir.path()), cache(dir.path()));
        let pending = cache.begin(&source).unwrap();
        std::fs::write(pending.graph(), b"half").unwrap();
        pending.abandon();
        assert!(cache.lookup(&source).is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().count(), 0);
        let pending = cache.begin(&source).unwrap();
        std::fs::write(pending.graph(), b"optimized").unwrap();
        pending.commit();
        cache.remove(&source);
        assert!(cache.lookup(&source).is_none());
    }

    #[test]
    fn no_entry_without_room_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let greedy = OptimizedCache::new(dir.path().join("cache"), u64::MAX / 2, Path::new("/x"));
        assert!(greedy.begin(&source).is_none());
    }
}
