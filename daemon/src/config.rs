//! Daemon settings: defaults, overridden by the config file, overridden by the environment; and
//! the setting types requests share (limits, keep-alive durations, sizes).
//!
//! Every setting and its default is listed in the README. The config file is TOML at
//! `$EASEL_CONFIG` or the platform's config folder (`~/.config/easel/config.toml`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Limits that keep one request from taking the machine down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width × height accepted.
    pub max_pixels: u64,
    pub max_steps: u32,
    /// Images per request.
    pub max_count: u32,
    /// Jobs waiting (not counting the running one) before Generate answers RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Pixels (width × height × images) one UNet batch may hold: a request for several images
    /// runs them together up to this, then in further batches.
    pub batch_pixels: u64,
    /// Characters in a prompt (and, separately, in a negative prompt): checked before parsing,
    /// so tokenizing costs at most this much.
    pub max_prompt_chars: usize,
    /// 75-token chunks a prompt may fill: each costs a text-encoder run and 77 embeddings in
    /// every UNet step.
    pub max_prompt_chunks: usize,
    /// Pictures of more pixels than this are decoded by the VAE in overlapping tiles (as
    /// diffusers' `enable_vae_tiling`): the decoder's attention grows with the square of the
    /// picture, tiles keep it to the tile's.
    pub vae_tile_above: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: 2048 * 2048,
            max_steps: 500,
            max_count: 16,
            max_queue: 16,
            batch_pixels: 4 * 512 * 512,
            max_prompt_chars: 16_384,
            max_prompt_chunks: 32,
            vae_tile_above: 1024 * 1024,
        }
    }
}

/// How long an idle model stays resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until unloaded by hand (a negative duration in requests).
    Forever,
    /// This long after its last job; zero unloads it as soon as it is idle.
    For(Duration),
}

impl KeepAlive {
    pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));
    /// The longest finite keep-alive: a hundred years. Longer is refused rather than wrapped
    /// (an `Instant` this far ahead still fits every platform's clock); `-1` means forever.
    pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// Parses Ollama-style durations: `5m`, `30s`, `1h30m`, `250ms`, a bare number of seconds,
    /// `0`, or anything negative (`-1`, `-1m`) for forever.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!("keep-alive `{text}` is not a duration; use e.g. 5m, 30s, 1h, 0 (unload when idle) or -1 (forever)")
        };
        if text.is_empty() {
            return Err(bad());
        }
        if let Some(rest) = text.strip_prefix('-') {
            return if rest.is_empty() {
                Err(bad())
            } else {
                Ok(KeepAlive::Forever)
            };
        }
        let too_long = || {
            format!(
                "keep-alive `{text}` is longer than the longest allowed (100 years); use -1 to keep the model forever"
            )
        };
        // Checked all the way: a huge number is an error for the user, never a panic.
        let checked = |seconds: f64| match Duration::try_from_secs_f64(seconds) {
            Ok(duration) if duration <= Self::MAX => Ok(duration),
            Ok(_) => Err(too_long()),
            Err(_) if seconds.is_finite() && seconds > 0.0 => Err(too_long()),
            Err(_) => Err(bad()),
        };
        if let Ok(seconds) = text.parse::<f64>() {
            return checked(seconds).map(KeepAlive::For);
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let seconds = match &rest[..unit_len] {
                "ms" => value / 1000.0,
                "s" => value,
                "m" => value * 60.0,
                "h" => value * 3600.0,
                _ => return Err(bad()),
            };
            total = total
                .checked_add(checked(seconds)?)
                .filter(|total| *total <= Self::MAX)
                .ok_or_else(too_long)?;
            rest = &rest[unit_len..];
        }
        Ok(KeepAlive::For(total))
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Forever => write!(f, "forever"),
            KeepAlive::For(d) => write!(f, "{}s", d.as_secs_f64()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub home: PathBuf,
    /// The ONNX Runtime library named in the config file (the lookup's second place).
    pub onnxruntime: Option<PathBuf>,
    /// Intra-op threads per ONNX session; 0: ONNX Runtime's default (one per core).
    pub threads: usize,
    pub limits: Limits,
    /// Jobs run at the same time.
    pub parallel: usize,
    /// Bytes of loaded models allowed at once (default: 75% of physical memory).
    pub memory_budget: u64,
    /// How long a model stays resident after its last job, unless a request says otherwise.
    pub keep_alive: KeepAlive,
    /// The most bytes an import may expand to (zip-bomb guard).
    pub max_import_bytes: u64,
    /// The most files and folders an import may hold.
    pub max_import_files: u64,
    /// Disk space imports leave free on the model store's file system (and the optimized-graph
    /// cache too).
    pub import_keep_free: u64,
    /// Keep ONNX Runtime's optimized graphs in `$EASEL_HOME/cache/optimized/` so later loads
    /// skip the optimization (about twice as fast; costs a copy of each model's weights on disk).
    pub optimized_cache: bool,
    /// A socket-activated daemon exits after this long with no request in flight and no job
    /// (`idle_exit` / `EASEL_IDLE_EXIT`); the service manager starts it again on the next
    /// connection. `None` (the default, or `0`): never.
    pub idle_exit: Option<Duration>,
    /// Which device runs the models (`device` / `EASEL_DEVICE`): `auto`, `cpu` or `cuda:N`.
    pub device: crate::model::device::DeviceSetting,
    /// The GPU memory models and jobs may take (`vram_budget` / `EASEL_VRAM_BUDGET`), as
    /// written (a size or a share of the device's memory): checked here, sized against the
    /// device once it is known ([`Config::vram_budget_of`]). `None`: [`DEFAULT_VRAM_SHARE`].
    pub vram_budget: Option<String>,
}

impl Config {
    /// The VRAM budget on a device of `total` bytes.
    pub fn vram_budget_of(&self, total: u64) -> u64 {
        vram_budget(self.vram_budget.as_deref(), total)
    }
}

fn vram_budget(setting: Option<&str>, total: u64) -> u64 {
    match setting {
        // Checked when the config was read.
        Some(text) => parse_size(text, total).unwrap_or(0),
        None => (total as f64 * DEFAULT_VRAM_SHARE) as u64,
    }
}

/// The share of a GPU's memory models and jobs may take by default: the rest is for the CUDA
/// context, cuDNN's workspaces and the desktop, which often shares the GPU.
pub const DEFAULT_VRAM_SHARE: f64 = 0.9;

/// The share of physical memory models may take by default; the rest is for activations
/// (the VAE decoder at full size needs several GiB) and everything else on the machine.
pub const DEFAULT_MEMORY_SHARE: f64 = 0.75;
/// Used when physical memory cannot be read.
pub const FALLBACK_MEMORY_BUDGET: u64 = 8 << 30;
pub const DEFAULT_MAX_IMPORT_BYTES: u64 = 64 << 30;
pub const DEFAULT_MAX_IMPORT_FILES: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("setting {name} = `{value}` is not valid: {message}")]
    Setting {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("environment variable {name}={value} is not valid: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    home: Option<PathBuf>,
    onnxruntime: Option<PathBuf>,
    threads: Option<usize>,
    max_pixels: Option<u64>,
    max_steps: Option<u32>,
    max_count: Option<u32>,
    max_queue: Option<usize>,
    batch_pixels: Option<u64>,
    max_prompt_chars: Option<usize>,
    max_prompt_chunks: Option<usize>,
    vae_tile_above: Option<u64>,
    parallel: Option<usize>,
    /// A size (`8GiB`, `75%`, bytes).
    memory_budget: Option<String>,
    keep_alive: Option<String>,
    /// A size.
    max_import_bytes: Option<String>,
    max_import_files: Option<u64>,
    /// A size.
    import_keep_free: Option<String>,
    optimized_cache: Option<bool>,
    /// A duration (`15m`); `0`: never.
    idle_exit: Option<String>,
    device: Option<String>,
    /// A size or a share of the GPU's memory.
    vram_budget: Option<String>,
}

impl Config {
    /// Reads the config file (if any) and the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = match easel_proto::paths::config_file() {
            Some(path) if path.is_file() => read_file(&path)?,
            _ => FileConfig::default(),
        };
        let env_socket = std::env::var_os("EASEL_SOCKET").filter(|v| !v.is_empty());
        let env_home = std::env::var_os("EASEL_HOME").filter(|v| !v.is_empty());
        let mut limits = Limits::default();
        limits.max_pixels = env_number("EASEL_MAX_PIXELS")?
            .or(file.max_pixels)
            .unwrap_or(limits.max_pixels);
        limits.max_steps = env_number("EASEL_MAX_STEPS")?
            .or(file.max_steps)
            .unwrap_or(limits.max_steps);
        limits.max_count = env_number("EASEL_MAX_COUNT")?
            .or(file.max_count)
            .unwrap_or(limits.max_count);
        limits.max_queue = env_number("EASEL_MAX_QUEUE")?
            .or(file.max_queue)
            .unwrap_or(limits.max_queue);
        limits.batch_pixels = env_number("EASEL_BATCH_PIXELS")?
            .or(file.batch_pixels)
            .unwrap_or(limits.batch_pixels);
        limits.max_prompt_chars = env_number("EASEL_MAX_PROMPT_CHARS")?
            .or(file.max_prompt_chars)
            .unwrap_or(limits.max_prompt_chars);
        limits.max_prompt_chunks = env_number("EASEL_MAX_PROMPT_CHUNKS")?
            .or(file.max_prompt_chunks)
            .unwrap_or(limits.max_prompt_chunks)
            .max(1);
        limits.vae_tile_above = env_number("EASEL_VAE_TILE_ABOVE")?
            .or(file.vae_tile_above)
            .unwrap_or(limits.vae_tile_above);
        let total = crate::memory::total_memory();
        let memory_budget = match env_text("EASEL_MEMORY_BUDGET").or(file.memory_budget) {
            Some(text) => size_setting("EASEL_MEMORY_BUDGET / memory_budget", &text, total.unwrap_or(0))?,
            None => total.map_or(FALLBACK_MEMORY_BUDGET, |t| (t as f64 * DEFAULT_MEMORY_SHARE) as u64),
        };
        let max_import_bytes = match env_text("EASEL_MAX_IMPORT_BYTES").or(file.max_import_bytes) {
            Some(text) => size_setting("EASEL_MAX_IMPORT_BYTES / max_import_bytes", &text, total.unwrap_or(0))?,
            None => DEFAULT_MAX_IMPORT_BYTES,
        };
        let import_keep_free = match env_text("EASEL_IMPORT_KEEP_FREE").or(file.import_keep_free) {
            Some(text) => size_setting("EASEL_IMPORT_KEEP_FREE / import_keep_free", &text, 0)?,
            None => crate::catalog::store::DEFAULT_KEEP_FREE,
        };
        let keep_alive = match env_text("EASEL_KEEP_ALIVE").or(file.keep_alive) {
            Some(text) => KeepAlive::parse(&text).map_err(|message| ConfigError::Setting {
                name: "EASEL_KEEP_ALIVE / keep_alive",
                value: text.clone(),
                message,
            })?,
            None => KeepAlive::DEFAULT,
        };
        let idle_exit = match env_text("EASEL_IDLE_EXIT").or(file.idle_exit) {
            Some(text) => idle_exit(&text).map_err(|message| ConfigError::Setting {
                name: "EASEL_IDLE_EXIT / idle_exit",
                value: text.clone(),
                message,
            })?,
            None => None,
        };
        let optimized_cache = match env_text("EASEL_OPTIMIZED_CACHE") {
            Some(text) => match text.trim() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => {
                    return Err(ConfigError::Env {
                        name: "EASEL_OPTIMIZED_CACHE",
                        value: text,
                        message: "expected 1 or 0 (true or false)".into(),
                    });
                }
            },
            None => file.optimized_cache.unwrap_or(false),
        };
        let device = match env_text("EASEL_DEVICE") {
            Some(text) => crate::model::device::DeviceSetting::parse(&text).map_err(|message| ConfigError::Env {
                name: "EASEL_DEVICE",
                value: text.clone(),
                message,
            })?,
            None => match file.device {
                Some(text) => {
                    crate::model::device::DeviceSetting::parse(&text).map_err(|message| ConfigError::Setting {
                        name: "device",
                        value: text.clone(),
                        message,
                    })?
                }
                None => Default::default(),
            },
        };
        let vram_budget = env_text("EASEL_VRAM_BUDGET").or(file.vram_budget);
        if let Some(text) = &vram_budget {
            // Sized later, against the device; a mistake is still a startup error now.
            size_setting("EASEL_VRAM_BUDGET / vram_budget", text, 0)?;
        }
        let parallel = env_number("EASEL_PARALLEL")?.or(file.parallel).unwrap_or(1).max(1);
        let max_import_files = env_number("EASEL_MAX_IMPORT_FILES")?
            .or(file.max_import_files)
            .unwrap_or(DEFAULT_MAX_IMPORT_FILES);
        Ok(Self {
            device,
            vram_budget,
            parallel,
            memory_budget,
            keep_alive,
            max_import_bytes,
            max_import_files,
            import_keep_free,
            optimized_cache,
            idle_exit,
            socket: match (env_socket, file.socket) {
                (Some(env), _) => PathBuf::from(env),
                (None, Some(file)) => file,
                (None, None) => easel_proto::paths::socket_path(),
            },
            home: match (env_home, file.home) {
                (Some(env), _) => PathBuf::from(env),
                (None, Some(file)) => file,
                (None, None) => easel_proto::paths::easel_home(),
            },
            onnxruntime: file.onnxruntime,
            threads: env_number("EASEL_THREADS")?.or(file.threads).unwrap_or(0),
            limits,
        })
    }
}

/// `idle_exit`: a duration as keep-alive writes them (`30s`, `15m`, `1h`); `0` turns it off.
fn idle_exit(text: &str) -> Result<Option<Duration>, String> {
    match KeepAlive::parse(text) {
        Ok(KeepAlive::For(duration)) if duration.is_zero() => Ok(None),
        Ok(KeepAlive::For(duration)) => Ok(Some(duration)),
        _ => Err(format!(
            "`{text}` is not a duration; use e.g. 15m, 30s or 1h, or 0 to never exit when idle"
        )),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let bad = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    toml::from_str(&text).map_err(|e| bad(e.to_string()))
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn size_setting(name: &'static str, text: &str, total: u64) -> Result<u64, ConfigError> {
    parse_size(text, total).map_err(|message| ConfigError::Setting {
        name,
        value: text.to_string(),
        message,
    })
}

fn env_number<T: std::str::FromStr>(name: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
            name,
            value,
            message: e.to_string(),
        }),
        _ => Ok(None),
    }
}

/// Parses a memory size: bytes (`1048576`), with a unit (`512MiB`, `8GB`, `1.5 GiB`), or a share
/// of `total` (`75%`).
pub fn parse_size(text: &str, total: u64) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a size; use e.g. 8GiB, 512MiB, 75% or a number of bytes");
    if let Some(percent) = text.strip_suffix('%') {
        let p: f64 = percent.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) {
            return Err(bad());
        }
        return Ok((total as f64 * p / 100.0) as u64);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let value: f64 = text[..split].parse().map_err(|_| bad())?;
    let factor: f64 = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = value * factor;
    // `as` would saturate silently; a size past 16 EiB is a typo, and the user should hear so.
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is larger than any memory or disk; use e.g. 8GiB"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_parses_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "max_steps = 50\nthreads = 2\n").unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(parsed.max_steps, Some(50));
        assert_eq!(parsed.threads, Some(2));
        std::fs::write(&path, "max_stepz = 50\n").unwrap();
        let err = read_file(&path).err().unwrap().to_string();
        assert!(err.contains("max_stepz"), "{err}");
    }

    #[test]
    fn residency_and_store_keys_parse_and_bad_values_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "parallel = 2\nmemory_budget = \"8GiB\"\nkeep_alive = \"10m\"\nbatch_pixels = 262144\n\
                    max_import_bytes = \"1GiB\"\nmax_import_files = 50\n";
        std::fs::write(&path, text).unwrap();
        let parsed = read_file(&path).unwrap();
        assert_eq!(parsed.parallel, Some(2));
        assert_eq!(parsed.memory_budget.as_deref(), Some("8GiB"));
        assert_eq!(parsed.keep_alive.as_deref(), Some("10m"));
        assert_eq!((parsed.batch_pixels, parsed.max_import_files), (Some(262144), Some(50)));
        assert_eq!(size_setting("memory_budget", "8GiB", 0).unwrap(), 8 << 30);
        assert_eq!(size_setting("memory_budget", "50%", 1000).unwrap(), 500);
        assert_eq!(vram_budget(Some("50%"), 1000), 500, "a share of the GPU's memory");
        assert_eq!(vram_budget(Some("1KiB"), 1 << 20), 1024);
        assert_eq!(vram_budget(None, 1000), 900, "90% by default");
        let err = size_setting("memory_budget", "lots", 0).unwrap_err().to_string();
        assert!(err.contains("memory_budget") && err.contains("lots"), "{err}");
    }

    #[test]
    fn idle_exit_is_a_positive_duration_or_off() {
        assert_eq!(idle_exit("15m"), Ok(Some(Duration::from_secs(900))));
        assert_eq!(idle_exit("0"), Ok(None));
        for bad in ["-1", "soon", ""] {
            let message = idle_exit(bad).unwrap_err();
            assert!(message.contains("15m"), "{message}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "idle_exit = \"10m\"\n").unwrap();
        assert_eq!(read_file(&path).unwrap().idle_exit.as_deref(), Some("10m"));
    }

    #[test]
    fn keep_alive_parses_like_ollama() {
        let secs = |s| KeepAlive::For(Duration::from_secs(s));
        assert_eq!(KeepAlive::parse("5m"), Ok(secs(300)));
        assert_eq!(KeepAlive::parse("30s"), Ok(secs(30)));
        assert_eq!(KeepAlive::parse("1h30m"), Ok(secs(5400)));
        assert_eq!(
            KeepAlive::parse("250ms"),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(KeepAlive::parse("90"), Ok(secs(90)));
        assert_eq!(KeepAlive::parse("0"), Ok(secs(0)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        for bad in ["", "soon", "5x", "-", "m5", "NaN", "inf", "1e400"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_alive_out_of_range_is_an_error_not_a_panic() {
        for huge in [
            "99999999999999999h",
            "1e30",
            "876001h",
            "876000h1s",
            "18446744073709551616s",
        ] {
            let err = KeepAlive::parse(huge).unwrap_err();
            assert!(err.contains("100 years") && err.contains("-1"), "{huge}: {err}");
        }
        assert_eq!(KeepAlive::parse("876000h"), Ok(KeepAlive::For(KeepAlive::MAX)));
    }

    #[test]
    fn sizes_parse_with_units_and_shares() {
        assert_eq!(parse_size("1048576", 0), Ok(1 << 20));
        assert_eq!(parse_size("512MiB", 0), Ok(512 << 20));
        assert_eq!(parse_size("8 GB", 0), Ok(8_000_000_000));
        assert_eq!(parse_size("1.5GiB", 0), Ok(3 << 29));
        assert_eq!(parse_size("75%", 1000), Ok(750));
        assert!(parse_size("lots", 0).is_err());
        assert!(parse_size("150%", 10).is_err());
        assert!(parse_size("99999999999999999999 TiB", 0).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any text: a duration within the limit, forever, or an error — never a panic.
            #[test]
            fn any_keep_alive_parses_or_fails_cleanly(text in any::<String>()) {
                if let Ok(KeepAlive::For(duration)) = KeepAlive::parse(&text) {
                    prop_assert!(duration <= KeepAlive::MAX);
                }
            }

            #[test]
            fn keep_alive_numbers_and_units_in_any_size(text in "-?[0-9]{0,30}(\\.[0-9]{0,5})?(ms|s|m|h|x)?([0-9]{1,25}(ms|s|m|h))*") {
                let _ = KeepAlive::parse(&text);
            }

            /// What is written as hours, minutes and seconds comes back as that many seconds.
            #[test]
            fn hours_minutes_seconds_round_trip(h in 0u64..1000, m in 0u64..600, s in 0u64..600) {
                let parsed = KeepAlive::parse(&format!("{h}h{m}m{s}s")).unwrap();
                prop_assert_eq!(parsed, KeepAlive::For(Duration::from_secs(h * 3600 + m * 60 + s)));
            }

            #[test]
            fn any_size_parses_or_fails_cleanly(text in any::<String>(), total in any::<u64>()) {
                let _ = parse_size(&text, total);
            }

            #[test]
            fn sizes_with_units_scale_exactly(n in 0u64..1_000_000) {
                prop_assert_eq!(parse_size(&format!("{n}MiB"), 0), Ok(n << 20));
                prop_assert_eq!(parse_size(&format!("{n} KiB"), 0), Ok(n << 10));
            }
        }
    }
}
