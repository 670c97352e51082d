//! Pulling an ONNX Stable Diffusion model from a Hugging Face-compatible hub.
//!
//! This module downloads and verifies files; installing them (the atomic move into the store)
//! and the gRPC/CLI sides are elsewhere. [`pull`] lists a repository, keeps only the files an
//! ONNX model needs ([`is_needed`]), downloads them into a folder the caller provides and checks
//! each one against the hub's own size and hash before it lands at its repository path.
//!
//! # Hub protocol (what huggingface.co and its mirrors speak)
//! - List: `GET {endpoint}/api/models/{owner}/{name}/tree/{revision}?recursive=true` answers a
//!   JSON array of `{"type": "file" | "directory", "oid", "size", "path", "lfs"?}`. `oid` is the
//!   git blob id (sha1 of `"blob {size}\0" + content`); LFS files add
//!   `"lfs": {"oid": <sha256 of the content>, "size", "pointerSize"}`, and for them the git `oid`
//!   is that of the pointer file, so only `lfs.oid` says anything about the bytes. The listing may
//!   be paginated: a `Link: <url>; rel="next"` header names the next page, until there is none.
//! - Download: `GET {endpoint}/{owner}/{name}/resolve/{revision}/{path}`. LFS files answer `302`
//!   to a CDN, other files `200` with the bytes. `Range: bytes=N-` resumes (`206`).
//! - The revision is one URL path segment, so a branch such as `refs/pr/1` is sent as
//!   `refs%2Fpr%2F1`; each segment of a file path is percent-encoded on its own.
//!
//! # Verification
//! A file is accepted only when its length equals the listing's size and its hash equals the
//! listing's: sha256 == `lfs.oid` for LFS files, the git blob sha1 == `oid` for the others. A
//! mismatch deletes the download (it would only resume into the same wrong bytes) and the error
//! names the file and both hashes.
//!
//! # Resumption
//! Each file is written to `<dest>/.partial/<path>.part` and renamed into place once verified,
//! so a file at its final path is always a complete, verified one. After an interruption (network
//! error, cancellation, a crash) the next pull into the same folder hashes what the `.part`
//! holds and asks for the rest with `Range: bytes=<len>-`; a server that answers `200` instead
//! of `206` (no range support) restarts that file from zero, and a resumed file that fails
//! verification (the branch moved on since the part was written) is fetched once more from zero
//! before that counts as an error. Files already in place are hashed again and skipped.
//! `.partial/` is removed after a successful pull.
//!
//! # Parallelism and cancellation
//! At most [`PARALLEL_DOWNLOADS`] files download at once (largest first, so the small files fill
//! in around the big ones), as async streams on the caller's runtime: no thread per download,
//! and hashing of existing files runs on the blocking pool. The `cancelled` callback is polled
//! at least every 100 ms, even while a server is silent. When one file fails, the others stop
//! too (their partial files kept), so the error reaches the user at once and a rerun resumes all
//! of them.
//!
//! # Authentication and HTTP client
//! A token is sent as `Authorization: Bearer …` to the hub's own origin only. The client is
//! `reqwest` (rustls, no system OpenSSL): the daemon is already tokio/hyper based, its bodies
//! are async streams (many parallel downloads without a thread each), it follows redirects and
//! drops the `Authorization` header when one goes to another host (the hub sends LFS files to a
//! CDN that must not see the token), and it honours the usual proxy variables. A `5xx` (or
//! `429`) answer is retried once before it becomes an error. A `401`/`403` says to set
//! `HF_TOKEN`; the hub's `X-Error-Code` refines it (`RepoNotFound`: huggingface.co answers 401
//! for a missing repository as for a private one; `GatedRepo`: conditions to accept).

use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{StatusCode, Url, header};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// The hub used when neither the request nor the daemon's environment names one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files downloaded at once. Four keeps a fast link busy without looking like abuse to a hub.
pub const PARALLEL_DOWNLOADS: usize = 4;

/// The folder inside the destination that holds interrupted downloads.
pub const PARTIAL_DIR: &str = ".partial";

/// The sub-model folders of an ONNX Stable Diffusion export (optimum's layout; SDXL adds the
/// `_2` ones). Anything else in a repository (safety checker, feature extractor, PyTorch or
/// Flax weights) is not needed to run the model.
const COMPONENTS: &[&str] = &[
    "scheduler",
    "tokenizer",
    "tokenizer_2",
    "text_encoder",
    "text_encoder_2",
    "unet",
    "vae_decoder",
    "vae_encoder",
];

/// File kinds a component needs: configs, tokenizer files, graphs and their external weights
/// (`.onnx_data` from optimum, `.pb` from the old diffusers conversion script).
const NEEDED_EXTENSIONS: &[&str] = &[".json", ".txt", ".onnx", ".onnx_data", ".pb"];

/// At most this many progress calls per second per file (plus one at each file's end).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How often `cancelled` is polled while waiting on the network.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Pause before the one retry of a `5xx`/`429` answer.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// A server that sends nothing for this long is taken as gone (the pull can be resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Guards against a listing whose `next` links go round in a circle.
const MAX_PAGES: usize = 10_000;
/// Bytes buffered before a write to a `.part` file (fewer, larger writes on the blocking pool).
const WRITE_BUFFER: usize = 1 << 20;

/// Where to pull from and with which credentials.
#[derive(Clone)]
pub struct Hub {
    /// Base URL without a trailing '/', e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    pub token: Option<String>,
}

// By hand, so that logging a `Hub` never prints the token.
impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Hub {
    /// The request's endpoint/token when non-empty (forwarded from the `easel` command's
    /// environment), else the daemon's `HF_ENDPOINT` / `HF_TOKEN`, else [`DEFAULT_ENDPOINT`] /
    /// none. Trailing '/' trimmed.
    pub fn resolve(request_endpoint: &str, request_token: &str) -> Self {
        Self::resolve_from(
            request_endpoint,
            request_token,
            std::env::var("HF_ENDPOINT").ok(),
            std::env::var("HF_TOKEN").ok(),
        )
    }

    /// [`Hub::resolve`] with the daemon's environment passed in (so it can be tested without
    /// touching the process environment). Each value is chosen on its own — a request may bring
    /// a token for the daemon's hub — except that the daemon's own token only ever goes to the
    /// daemon's own hub: a request naming another endpoint without a token sends none.
    pub fn resolve_from(
        request_endpoint: &str,
        request_token: &str,
        env_endpoint: Option<String>,
        env_token: Option<String>,
    ) -> Self {
        fn pick(request: &str, env: Option<String>) -> Option<String> {
            let request = request.trim();
            if !request.is_empty() {
                return Some(request.to_string());
            }
            env.map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        }
        let normalize = |endpoint: String| endpoint.trim_end_matches('/').to_string();
        let daemon_endpoint = pick("", env_endpoint.clone())
            .map(normalize)
            .filter(|endpoint| !endpoint.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = pick(request_endpoint, env_endpoint)
            .map(normalize)
            .filter(|endpoint| !endpoint.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let env_token = if endpoint == daemon_endpoint { env_token } else { None };
        Self {
            endpoint,
            token: pick(request_token, env_token),
        }
    }
}

/// `OWNER/REPO[@REV]` → (repo, revision; `main` when absent). The repository id must be two
/// non-empty parts of `[A-Za-z0-9._-]`.
pub fn parse_reference(reference: &str) -> Result<(String, String), HubError> {
    let reference = reference.trim();
    let invalid = |reason: String| HubError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    let (repo, revision) = match reference.split_once('@') {
        Some((repo, revision)) => (repo, Some(revision)),
        None => (reference, None),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|part| part.is_empty()) {
        return Err(invalid("a repository is named OWNER/REPO".to_string()));
    }
    for part in parts {
        if let Some(bad) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(invalid(format!(
                "`{part}` contains `{bad}`; names use only letters, digits, '.', '_' and '-'"
            )));
        }
        // `..` would walk up the hub's URL space (and the hub forbids it anyway).
        if part == "." || part.contains("..") {
            return Err(invalid(format!("`{part}` is not a valid name")));
        }
    }
    let revision = match revision {
        None => "main",
        Some("") => return Err(invalid("nothing follows '@'; name a branch, tag or commit".to_string())),
        Some(revision) if revision.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(invalid(format!(
                "the revision `{revision}` contains spaces or control characters"
            )));
        }
        Some(revision) => revision,
    };
    Ok((repo.to_string(), revision.to_string()))
}

/// Whether a repository file is part of an ONNX Stable Diffusion model: `model_index.json`,
/// and inside the component folders (`scheduler/`, `tokenizer/`, `unet/`, …) configs (`.json`),
/// tokenizer files (`.txt`), graphs (`.onnx`) and their external weights (`.onnx_data`, `.pb`,
/// or a name that starts with the graph's, such as `model.onnx.data`). Not READMEs,
/// `.gitattributes`, safetensors/bin/ckpt weights, images, Flax files or nested folders.
pub fn is_needed(path: &str) -> bool {
    if path == "model_index.json" {
        return true;
    }
    let Some((folder, name)) = path.split_once('/') else {
        return false;
    };
    if !COMPONENTS.contains(&folder) || name.contains('/') {
        return false;
    }
    // A bare extension (`unet/.json`) is a hidden file, not a config.
    NEEDED_EXTENSIONS
        .iter()
        .any(|extension| name.len() > extension.len() && name.ends_with(extension))
        || is_external_data_name(name)
}

/// `model.onnx.data`, `model.onnx_data_0`, …: external weights named after their graph.
fn is_external_data_name(name: &str) -> bool {
    match name.find(".onnx") {
        Some(at) if at > 0 => {
            let rest = &name[at + ".onnx".len()..];
            rest.len() > 1 && (rest.starts_with('.') || rest.starts_with('_'))
        }
        _ => false,
    }
}

/// Where a pull stands; passed to the `progress` callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub files_done: u32,
    pub files_total: u32,
    /// Bytes verified or received so far, including those found on disk from an earlier try.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The file this call is about (empty for the first call, made once the listing is known).
    pub file: String,
}

/// What a successful pull left in the destination folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledFiles {
    /// Repository path and size of every file, sorted by path.
    pub files: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{reference}` is not a model reference: {reason} (write OWNER/REPO or OWNER/REPO@REVISION)")]
    InvalidReference { reference: String, reason: String },
    #[error("the hub endpoint `{endpoint}` is not a URL ({reason}); check HF_ENDPOINT")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot reach {endpoint} ({cause}); check HF_ENDPOINT or your network")]
    Unreachable { endpoint: String, cause: String },
    #[error("the hub refused access to {repo} (HTTP {status}): set HF_TOKEN to a token that can read it")]
    Unauthorized { repo: String, status: u16 },
    #[error(
        "no repository {repo} on {endpoint}, or it is private or gated: check the name (OWNER/REPO), or set \
         HF_TOKEN to a token that can read it"
    )]
    NotFoundOrPrivate { repo: String, endpoint: String },
    #[error(
        "{repo} is gated (HTTP {status}): accept its conditions on its page on the hub, and set HF_TOKEN to a \
         token of that account"
    )]
    Gated { repo: String, status: u16 },
    #[error("no repository {repo} at revision {revision} on {endpoint}; check the name (OWNER/REPO) and revision")]
    NotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("{repo} at revision {revision} lists {path} but the hub has no such file (HTTP 404); pull again")]
    FileNotFound {
        repo: String,
        revision: String,
        path: String,
    },
    #[error(
        "{repo} is not an ONNX Stable Diffusion repository (no {missing}); pick an ONNX export \
         (e.g. from optimum) or export one with optimum-cli export onnx"
    )]
    NotOnnxModel { repo: String, missing: String },
    #[error("the hub answered HTTP {status} for {url}, also when asked again; try again later")]
    Server { status: u16, url: String },
    #[error("the hub answered HTTP {status} for {url}")]
    UnexpectedStatus { status: u16, url: String },
    #[error("the hub's file list for {repo} could not be used: {reason}")]
    BadListing { repo: String, reason: String },
    #[error("the request for {url} failed ({cause})")]
    Request { url: String, cause: String },
    #[error("downloading {path} was interrupted ({cause}); pull again to resume where it stopped")]
    Interrupted { path: String, cause: String },
    #[error("{path}: the hub lists {expected} bytes but sent {actual}; the download was deleted, pull again")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error(
        "{path} is corrupt: the hub lists {algorithm} {expected} but the download has {actual}; \
         the download was deleted, pull again"
    )]
    HashMismatch {
        path: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("cannot read or write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the pull was cancelled; pull again to resume")]
    Cancelled,
}

/// Lists `repo` at `revision` and downloads the files it needs into `dest` (created if
/// missing; files land at their repository paths), at most [`PARALLEL_DOWNLOADS`] at once.
/// Each file goes to `<dest>/.partial/<path>.part` first and is verified before it moves into
/// place. A rerun after an interruption resumes partial files with a `Range` request and skips
/// files already complete and verified. `progress` is called as bytes arrive (at most about ten
/// times a second per file, and once at each file's end); `cancelled` is polled, and a cancelled
/// pull keeps its partial files and returns [`HubError::Cancelled`].
///
/// Only one pull may write into a given `dest` at a time.
pub async fn pull(
    hub: &Hub,
    repo: &str,
    revision: &str,
    dest: &Path,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<PulledFiles, HubError> {
    let endpoint = Url::parse(&hub.endpoint).map_err(|err| HubError::InvalidEndpoint {
        endpoint: hub.endpoint.clone(),
        reason: err.to_string(),
    })?;
    if !matches!(endpoint.scheme(), "http" | "https") {
        return Err(HubError::InvalidEndpoint {
            endpoint: hub.endpoint.clone(),
            reason: "not http or https".to_string(),
        });
    }
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT);
    // A hub on this machine (a mirror, the tests' server) is never reached through a proxy.
    if matches!(endpoint.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(HubError::Client)?;
    let puller = Puller {
        client,
        hub,
        endpoint,
        repo,
        revision,
        dest,
        progress,
        cancelled,
        stop: AtomicBool::new(false),
        files_total: AtomicU32::new(0),
        bytes_total: AtomicU64::new(0),
        files_done: AtomicU32::new(0),
        bytes_done: AtomicU64::new(0),
    };

    let files = select_files(repo, puller.list().await?)?;
    let bytes_total = files.iter().map(|file| file.size).sum();
    tracing::info!(
        repo,
        revision,
        files = files.len(),
        bytes = bytes_total,
        "pulling from {}",
        hub.endpoint
    );
    puller
        .files_total
        .store(u32::try_from(files.len()).unwrap_or(u32::MAX), Ordering::Relaxed);
    puller.bytes_total.store(bytes_total, Ordering::Relaxed);
    puller.report("");

    let partial = dest.join(PARTIAL_DIR);
    tokio::fs::create_dir_all(&partial)
        .await
        .map_err(|source| HubError::Io {
            path: partial.clone(),
            source,
        })?;

    let mut order: Vec<&RemoteFile> = files.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    // The futures are built up front (they start only when polled): a closure in the stream
    // would make the pull future lose `Send` to a higher-ranked lifetime error.
    let downloads: Vec<_> = order.into_iter().map(|file| puller.fetch_or_stop(file)).collect();
    let results: Vec<Result<(), HubError>> = futures::stream::iter(downloads)
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    // Files stopped because another one failed report `Cancelled`; the real cause wins.
    let mut first_error: Option<HubError> = None;
    for error in results.into_iter().filter_map(Result::err) {
        let better = match &first_error {
            None => true,
            Some(HubError::Cancelled) => !matches!(error, HubError::Cancelled),
            Some(_) => false,
        };
        if better {
            first_error = Some(error);
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    // Only our own leftovers live here (e.g. parts of files an earlier revision listed).
    if let Err(source) = tokio::fs::remove_dir_all(&partial).await
        && source.kind() != std::io::ErrorKind::NotFound
    {
        return Err(HubError::Io { path: partial, source });
    }
    let mut pulled: Vec<(String, u64)> = files.into_iter().map(|file| (file.path, file.size)).collect();
    pulled.sort();
    Ok(PulledFiles { files: pulled })
}

/// One entry of the hub's tree listing.
#[derive(Debug, serde::Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    size: u64,
    path: String,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, serde::Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

/// A file to download and what it must hash to.
#[derive(Debug, Clone)]
struct RemoteFile {
    path: String,
    size: u64,
    check: Check,
}

#[derive(Debug, Clone)]
enum Check {
    /// LFS files: sha256 of the content.
    Sha256(String),
    /// Other files: the git blob id, sha1 of `"blob {size}\0" + content`.
    GitSha1(String),
}

impl Check {
    fn algorithm(&self) -> &'static str {
        match self {
            Check::Sha256(_) => "sha256",
            Check::GitSha1(_) => "git blob sha1",
        }
    }

    fn expected(&self) -> &str {
        match self {
            Check::Sha256(hex) | Check::GitSha1(hex) => hex,
        }
    }

    fn hasher(&self, size: u64) -> Hasher {
        match self {
            Check::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Check::GitSha1(_) => {
                let mut sha1 = Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(sha1)
            }
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::GitSha1(hasher) => hasher.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(hasher) => hex(&hasher.finalize()),
            Hasher::GitSha1(hasher) => hex(&hasher.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The needed files of a listing, checked: safe paths, usable hashes, and the two files that
/// make it an ONNX Stable Diffusion model at all.
fn select_files(repo: &str, entries: Vec<TreeEntry>) -> Result<Vec<RemoteFile>, HubError> {
    let bad = |reason: String| HubError::BadListing {
        repo: repo.to_string(),
        reason,
    };
    let mut files: Vec<RemoteFile> = Vec::new();
    for entry in entries {
        if entry.kind != "file" || !is_needed(&entry.path) {
            continue;
        }
        // The path comes from the network and becomes a local path: no way out of `dest`.
        if !is_safe_relative(&entry.path) {
            return Err(bad(format!("unsafe path `{}`", entry.path)));
        }
        let (size, check) = match entry.lfs {
            Some(lfs) => {
                let oid = lfs.oid.strip_prefix("sha256:").unwrap_or(&lfs.oid).to_ascii_lowercase();
                if !is_hex(&oid, 64) {
                    return Err(bad(format!("`{}` has no sha256 (lfs.oid `{}`)", entry.path, lfs.oid)));
                }
                (lfs.size, Check::Sha256(oid))
            }
            None => {
                if !is_hex(&entry.oid, 40) {
                    return Err(bad(format!("`{}` has no git oid (`{}`)", entry.path, entry.oid)));
                }
                (entry.size, Check::GitSha1(entry.oid.to_ascii_lowercase()))
            }
        };
        // Pages of a listing could overlap; a file is fetched once.
        if files.iter().any(|file| file.path == entry.path) {
            continue;
        }
        files.push(RemoteFile {
            path: entry.path,
            size,
            check,
        });
    }
    for required in ["unet/model.onnx", "model_index.json"] {
        if !files.iter().any(|file| file.path == required) {
            return Err(HubError::NotOnnxModel {
                repo: repo.to_string(),
                missing: required.to_string(),
            });
        }
    }
    Ok(files)
}

fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && part != PARTIAL_DIR)
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters), so
/// that `refs/pr/1` stays one segment.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A path whose segments are encoded one by one, keeping the '/' between them.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// The target of a `Link: <url>; rel="next"` header, if any.
fn next_link(headers: &header::HeaderMap) -> Option<String> {
    for value in headers.get_all(header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut pieces = link.split(';');
            let target = pieces.next().unwrap_or_default().trim();
            let is_next = pieces.any(|param| {
                let param = param.trim().replace(' ', "");
                param.eq_ignore_ascii_case("rel=\"next\"") || param.eq_ignore_ascii_case("rel=next")
            });
            if is_next && let Some(url) = target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
                return Some(url.to_string());
            }
        }
    }
    None
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(headers: &header::HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// The innermost cause of an error: for a refused connection "Connection refused (os error
/// 111)" says more than reqwest's "error sending request for url (…)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Which request an answer belongs to, for its error message.
enum Asked<'a> {
    Listing,
    File(&'a str),
}

/// What one try at a file did, so that a retry can undo its progress.
#[derive(Default)]
struct Attempt {
    /// It went on from bytes a `.part` already held.
    resumed: bool,
    /// Bytes it added to the pull's `bytes_done`.
    counted: u64,
}

/// One pull's shared state: the client, the callbacks and the running totals.
struct Puller<'a> {
    client: reqwest::Client,
    hub: &'a Hub,
    endpoint: Url,
    repo: &'a str,
    revision: &'a str,
    dest: &'a Path,
    progress: &'a (dyn Fn(PullProgress) + Send + Sync),
    cancelled: &'a (dyn Fn() -> bool + Send + Sync),
    /// Set by a cancellation or a failed file: every download stops at its next chunk.
    stop: AtomicBool,
    files_total: AtomicU32,
    bytes_total: AtomicU64,
    files_done: AtomicU32,
    bytes_done: AtomicU64,
}

impl Puller<'_> {
    fn check_stop(&self) -> Result<(), HubError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(HubError::Cancelled);
        }
        if (self.cancelled)() {
            self.stop.store(true, Ordering::Relaxed);
            return Err(HubError::Cancelled);
        }
        Ok(())
    }

    /// Awaits `future`, polling for cancellation meanwhile (a silent server must not make a
    /// pull uncancellable). Dropping the future on cancellation is safe for the ones used here.
    async fn unless_stopped<F: Future>(&self, future: F) -> Result<F::Output, HubError> {
        let mut future = std::pin::pin!(future);
        loop {
            self.check_stop()?;
            if let Ok(output) = tokio::time::timeout(CANCEL_POLL, &mut future).await {
                return Ok(output);
            }
        }
    }

    fn report(&self, file: &str) {
        (self.progress)(PullProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            file: file.to_string(),
        });
    }

    /// `{endpoint}/{segments…}` with each segment encoded (a mirror's endpoint may carry a path).
    fn url(&self, path: &str) -> Result<Url, HubError> {
        let text = format!("{}/{path}", self.hub.endpoint);
        Url::parse(&text).map_err(|err| HubError::InvalidEndpoint {
            endpoint: self.hub.endpoint.clone(),
            reason: err.to_string(),
        })
    }

    fn repo_path(&self) -> String {
        encode_path(self.repo)
    }

    /// GET `url` (from byte `range_from` on), retrying once on `5xx`/`429`.
    async fn get(&self, url: &Url, range_from: Option<u64>) -> Result<reqwest::Response, HubError> {
        let mut retried = false;
        loop {
            let mut request = self.client.get(url.clone());
            if let Some(token) = &self.hub.token
                && same_origin(url, &self.endpoint)
            {
                request = request.bearer_auth(token);
            }
            if let Some(from) = range_from {
                request = request.header(header::RANGE, format!("bytes={from}-"));
            }
            let response = self
                .unless_stopped(request.send())
                .await?
                .map_err(|err| self.request_error(url, &err))?;
            let status = response.status();
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) && !retried {
                tracing::debug!(%url, %status, "retrying once");
                retried = true;
                self.unless_stopped(tokio::time::sleep(RETRY_DELAY)).await?;
                continue;
            }
            return Ok(response);
        }
    }

    fn request_error(&self, url: &Url, error: &reqwest::Error) -> HubError {
        if error.is_connect() || error.is_timeout() {
            // The host that failed may be a CDN the hub redirected to; name that one.
            let failed = error.url().unwrap_or(url);
            let endpoint = if same_origin(failed, &self.endpoint) {
                self.hub.endpoint.clone()
            } else {
                failed.origin().ascii_serialization()
            };
            return HubError::Unreachable {
                endpoint,
                cause: root_cause(error),
            };
        }
        HubError::Request {
            url: url.to_string(),
            cause: root_cause(error),
        }
    }

    /// The error for an answer that is not the one asked for. The hub's `X-Error-Code` refines
    /// the status: huggingface.co answers 401 `RepoNotFound` for a repository that does not
    /// exist *or* that the caller may not see (so private names do not leak), and `GatedRepo`
    /// for one whose conditions were not accepted.
    fn status_error(&self, response: &reqwest::Response, url: &Url, asked: Asked<'_>) -> HubError {
        let status = response.status();
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        match (status, asked) {
            _ if refused && code == "GatedRepo" => HubError::Gated {
                repo: self.repo.to_string(),
                status: status.as_u16(),
            },
            _ if refused && code == "RepoNotFound" => HubError::NotFoundOrPrivate {
                repo: self.repo.to_string(),
                endpoint: self.hub.endpoint.clone(),
            },
            _ if refused => HubError::Unauthorized {
                repo: self.repo.to_string(),
                status: status.as_u16(),
            },
            (StatusCode::NOT_FOUND, Asked::Listing) => HubError::NotFound {
                repo: self.repo.to_string(),
                revision: self.revision.to_string(),
                endpoint: self.hub.endpoint.clone(),
            },
            (StatusCode::NOT_FOUND, Asked::File(path)) => HubError::FileNotFound {
                repo: self.repo.to_string(),
                revision: self.revision.to_string(),
                path: path.to_string(),
            },
            (status, _) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => HubError::Server {
                status: status.as_u16(),
                url: url.to_string(),
            },
            (status, _) => HubError::UnexpectedStatus {
                status: status.as_u16(),
                url: url.to_string(),
            },
        }
    }

    /// Every entry of the repository's tree at the revision, following `Link: rel="next"`.
    async fn list(&self) -> Result<Vec<TreeEntry>, HubError> {
        let mut url = self.url(&format!(
            "api/models/{}/tree/{}?recursive=true",
            self.repo_path(),
            encode_segment(self.revision)
        ))?;
        let mut entries = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self.get(&url, None).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(self.status_error(&response, &url, Asked::Listing));
            }
            let next = next_link(response.headers());
            let body = self
                .unless_stopped(response.bytes())
                .await?
                .map_err(|err| self.request_error(&url, &err))?;
            let page: Vec<TreeEntry> = serde_json::from_slice(&body).map_err(|err| HubError::BadListing {
                repo: self.repo.to_string(),
                reason: format!("{url} did not answer a JSON list of files ({err})"),
            })?;
            entries.extend(page);
            match next {
                None => return Ok(entries),
                Some(next) => {
                    url = url.join(&next).map_err(|err| HubError::BadListing {
                        repo: self.repo.to_string(),
                        reason: format!("bad next-page link `{next}` ({err})"),
                    })?;
                }
            }
        }
        Err(HubError::BadListing {
            repo: self.repo.to_string(),
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }

    fn local_path(&self, path: &str) -> PathBuf {
        path.split('/')
            .fold(self.dest.to_path_buf(), |out, part| out.join(part))
    }

    fn partial_path(&self, path: &str) -> PathBuf {
        let mut out = self.dest.join(PARTIAL_DIR);
        out.extend(path.split('/'));
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(".part");
        out.set_file_name(name);
        out
    }

    /// Adds bytes of this file to the pull's progress.
    fn count(&self, attempt: &mut Attempt, bytes: u64) {
        attempt.counted += bytes;
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn file_done(&self, file: &RemoteFile) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.report(&file.path);
    }

    /// [`Puller::fetch`]; a failure stops the other downloads at their next chunk (their
    /// parts are kept).
    async fn fetch_or_stop(&self, file: &RemoteFile) -> Result<(), HubError> {
        let result = self.fetch(file).await;
        if result.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Brings one file into place: skipped when already there and verified, else resumed or
    /// downloaded into its `.part` and moved into place once verified.
    async fn fetch(&self, file: &RemoteFile) -> Result<(), HubError> {
        self.check_stop()?;
        let target = self.local_path(&file.path);
        let part = self.partial_path(&file.path);

        if let Ok(meta) = tokio::fs::metadata(&target).await {
            if meta.is_file() && meta.len() == file.size {
                let hasher = hash_prefix(&target, file.size, file.check.hasher(file.size)).await?;
                if hasher.finish() == file.check.expected() {
                    tracing::debug!(path = file.path, "already in place");
                    self.bytes_done.fetch_add(file.size, Ordering::Relaxed);
                    self.file_done(file);
                    return Ok(());
                }
            }
            // Not the file the hub lists (an older revision, or damaged): fetch it again.
            remove_if_present(&target).await?;
        }
        if let Some(parent) = part.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|source| HubError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }

        let mut attempt = Attempt::default();
        let result = self.download(file, &part, &target, &mut attempt).await;
        // A resumed file that fails verification may have changed on the hub since the part
        // was written (a branch moved on): the bad part is gone, so try once from zero.
        let retry = attempt.resumed
            && matches!(
                result,
                Err(HubError::HashMismatch { .. } | HubError::SizeMismatch { .. })
            );
        if !retry {
            return result;
        }
        tracing::info!(
            path = file.path,
            "a resumed download failed verification; starting it over"
        );
        self.bytes_done.fetch_sub(attempt.counted, Ordering::Relaxed);
        self.download(file, &part, &target, &mut Attempt::default()).await
    }

    /// One try at a file: resumes its `.part` if there is one, then verifies and moves it.
    async fn download(
        &self,
        file: &RemoteFile,
        part: &Path,
        target: &Path,
        attempt: &mut Attempt,
    ) -> Result<(), HubError> {
        let mut offset = match tokio::fs::metadata(part).await {
            Ok(meta) if meta.len() <= file.size => meta.len(),
            Ok(_) => {
                remove_if_present(part).await?;
                0
            }
            Err(_) => 0,
        };
        // A part that is already whole (interrupted between download and rename) needs no
        // request at all; asking for `bytes=SIZE-` would only earn a 416.
        if offset == file.size && offset > 0 {
            let hasher = hash_prefix(part, offset, file.check.hasher(file.size)).await?;
            attempt.resumed = true;
            self.count(attempt, offset);
            return self.finish(file, part, target, hasher, offset).await;
        }

        let url = self.url(&format!(
            "{}/resolve/{}/{}",
            self.repo_path(),
            encode_segment(self.revision),
            encode_path(&file.path)
        ))?;
        let mut hasher = file.check.hasher(file.size);
        if offset > 0 {
            hasher = hash_prefix(part, offset, hasher).await?;
        }
        self.count(attempt, offset);

        let mut response = self.get(&url, (offset > 0).then_some(offset)).await?;
        if offset > 0 {
            let status = response.status();
            let resumed =
                status == StatusCode::PARTIAL_CONTENT && content_range_start(response.headers()) == Some(offset);
            let restart = !resumed
                && matches!(
                    status,
                    StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE
                );
            if restart {
                // No range support (200), or the part is not a prefix the server agrees with
                // (416, another range): start this file over.
                tracing::debug!(path = file.path, %status, "cannot resume; starting over");
                self.bytes_done.fetch_sub(offset, Ordering::Relaxed);
                attempt.counted -= offset;
                offset = 0;
                hasher = file.check.hasher(file.size);
                if status != StatusCode::OK {
                    response = self.get(&url, None).await?;
                }
            }
        }
        attempt.resumed = offset > 0;
        let status = response.status();
        let expected = if offset > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status != expected {
            return Err(self.status_error(&response, &url, Asked::File(&file.path)));
        }

        let io_error = |source| HubError::Io {
            path: part.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(part)
            .await
            .map_err(io_error)?;
        out.set_len(offset).await.map_err(io_error)?;
        out.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_error)?;
        let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, out);

        let mut written = offset;
        let mut last_report: Option<Instant> = None;
        let mut body = response.bytes_stream();
        let received = loop {
            let chunk = match self.unless_stopped(body.next()).await {
                Err(stopped) => break Err(stopped),
                Ok(None) => break Ok(()),
                Ok(Some(Err(err))) => {
                    break Err(HubError::Interrupted {
                        path: file.path.clone(),
                        cause: root_cause(&err),
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let len = chunk.len() as u64;
            if written + len > file.size {
                break Err(HubError::SizeMismatch {
                    path: file.path.clone(),
                    expected: file.size,
                    actual: written + len,
                });
            }
            if let Err(source) = out.write_all(&chunk).await {
                break Err(io_error(source));
            }
            hasher.update(&chunk);
            written += len;
            self.count(attempt, len);
            if last_report.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL) {
                last_report = Some(Instant::now());
                self.report(&file.path);
            }
        };
        // Whatever arrived is kept (flushed) so that the next pull resumes from it.
        let flushed = out.flush().await;
        let synced = match &flushed {
            Ok(()) if received.is_ok() => out.get_ref().sync_all().await,
            _ => Ok(()),
        };
        drop(out);
        match received {
            Err(error @ HubError::SizeMismatch { .. }) => {
                remove_if_present(part).await?;
                return Err(error);
            }
            Err(error) => return Err(error),
            Ok(()) => {}
        }
        flushed.and(synced).map_err(io_error)?;
        self.finish(file, part, target, hasher, written).await
    }

    /// Verifies a complete `.part` and moves it into place; a bad one is deleted.
    async fn finish(
        &self,
        file: &RemoteFile,
        part: &Path,
        target: &Path,
        hasher: Hasher,
        written: u64,
    ) -> Result<(), HubError> {
        if written != file.size {
            remove_if_present(part).await?;
            return Err(HubError::SizeMismatch {
                path: file.path.clone(),
                expected: file.size,
                actual: written,
            });
        }
        let actual = hasher.finish();
        if actual != file.check.expected() {
            remove_if_present(part).await?;
            return Err(HubError::HashMismatch {
                path: file.path.clone(),
                algorithm: file.check.algorithm(),
                expected: file.check.expected().to_string(),
                actual,
            });
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|source| HubError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        tokio::fs::rename(part, target).await.map_err(|source| HubError::Io {
            path: target.to_path_buf(),
            source,
        })?;
        tracing::debug!(path = file.path, bytes = file.size, "verified");
        self.file_done(file);
        Ok(())
    }
}

/// Feeds the first `len` bytes of a file to `hasher`, on the blocking pool (a multi-GB UNet
/// takes seconds to hash).
async fn hash_prefix(path: &Path, len: u64, mut hasher: Hasher) -> Result<Hasher, HubError> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Hasher> {
        let mut file = std::fs::File::open(&owned)?;
        let mut buffer = vec![0; 1 << 20];
        let mut remaining = len;
        while remaining > 0 {
            let want = buffer.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let read = file.read(&mut buffer[..want])?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            hasher.update(&buffer[..read]);
            remaining -= read as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|hashed| hashed);
    hashed.map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })
}

async fn remove_if_present(path: &Path) -> Result<(), HubError> {
    match tokio::fs::remove_file(path).await {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(HubError::Io {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_and_without_revision() {
        assert_eq!(
            parse_reference("test/sd1-tiny").unwrap(),
            ("test/sd1-tiny".into(), "main".into())
        );
        assert_eq!(
            parse_reference(" Org_1/model.v2-x@refs/pr/1 ").unwrap(),
            ("Org_1/model.v2-x".into(), "refs/pr/1".into())
        );
        assert_eq!(
            parse_reference("a/b@0123abcd").unwrap(),
            ("a/b".into(), "0123abcd".into())
        );
    }

    #[test]
    fn bad_references_are_refused_with_the_expected_form() {
        for bad in [
            "", "sd1", "a/b/c", "/b", "a/", "a b/c", "a/b c", "a/b@", "a/b@x y", "../b", "a/..", "a/x..y", "ä/b",
            "a/b?c",
        ] {
            let error = parse_reference(bad).expect_err(bad).to_string();
            assert!(error.contains("OWNER/REPO"), "{bad}: {error}");
        }
        let error = parse_reference("a b/c").unwrap_err().to_string();
        assert!(error.contains("`a b` contains ` `"), "{error}");
    }

    #[test]
    fn needed_files_are_those_of_an_onnx_export() {
        for needed in [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer_2/special_tokens_map.json",
            "text_encoder/model.onnx",
            "text_encoder_2/model.onnx_data",
            "unet/model.onnx",
            "unet/model.onnx_data",
            "unet/weights.pb",
            "unet/model.onnx.data",
            "unet/config.json",
            "vae_decoder/model.onnx",
            "vae_encoder/config.json",
        ] {
            assert!(is_needed(needed), "{needed} is needed");
        }
        for junk in [
            "README.md",
            ".gitattributes",
            "model_index.json.bak",
            "sd.ckpt",
            "v1-5-pruned.safetensors",
            "logo.png",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_flax_model.msgpack",
            "unet/.gitattributes",
            "unet/.json",
            "unet/sample.png",
            "unet/nested/model.onnx",
            "safety_checker/model.onnx",
            "feature_extractor/preprocessor_config.json",
            "onnx/unet/model.onnx",
            "text_encoder/model.onnx_",
            "vae_decoder/.onnx.data",
            "unet",
        ] {
            assert!(!is_needed(junk), "{junk} is not needed");
        }
    }

    #[test]
    fn the_request_wins_over_the_daemon_env_over_the_defaults() {
        let env = || (Some("http://env-hub/".to_string()), Some("env-token".to_string()));
        let (endpoint, token) = env();
        let hub = Hub::resolve_from("http://request-hub//", "request-token", endpoint, token);
        assert_eq!(hub.endpoint, "http://request-hub");
        assert_eq!(hub.token.as_deref(), Some("request-token"));

        let (endpoint, token) = env();
        let hub = Hub::resolve_from("", " ", endpoint, token);
        assert_eq!(hub.endpoint, "http://env-hub");
        assert_eq!(hub.token.as_deref(), Some("env-token"));

        // The daemon's token never goes to another hub than the daemon's own…
        let (endpoint, token) = env();
        let hub = Hub::resolve_from("http://request-hub", "", endpoint, token);
        assert_eq!(hub.endpoint, "http://request-hub");
        assert_eq!(hub.token, None);
        // …but does go with a request that names the daemon's hub itself.
        let (endpoint, token) = env();
        let hub = Hub::resolve_from("http://env-hub", "", endpoint, token);
        assert_eq!(hub.token.as_deref(), Some("env-token"));
        // Without HF_ENDPOINT anywhere, the daemon's token is for the default hub.
        let hub = Hub::resolve_from("", "", None, Some("env-token".into()));
        assert_eq!(
            (hub.endpoint.as_str(), hub.token.as_deref()),
            (DEFAULT_ENDPOINT, Some("env-token"))
        );

        let hub = Hub::resolve_from("", "", Some(String::new()), Some(String::new()));
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(hub.token, None);

        let hub = Hub::resolve_from("", "", None, None);
        assert_eq!(hub.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(hub.token, None);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let hub = Hub::resolve_from("", "hf_secret", None, None);
        let shown = format!("{hub:?}");
        assert!(!shown.contains("hf_secret"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("v1.0_a-b~c"), "v1.0_a-b~c");
        assert_eq!(encode_segment("a b?#%"), "a%20b%3F%23%25");
        assert_eq!(encode_path("unet/model 1.onnx"), "unet/model%201.onnx");
    }

    #[test]
    fn link_headers_give_the_next_page() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(next_link(&headers), None);
        headers.insert(
            header::LINK,
            "<https://hub/api/models/a/b/tree/main?cursor=x1>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://hub/api/models/a/b/tree/main?cursor=x1")
        );
        headers.insert(
            header::LINK,
            "</first>; rel=\"first\", </page2>; rel=next".parse().unwrap(),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("/page2"));
        headers.insert(header::LINK, "</first>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn content_range_start_is_read() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(content_range_start(&headers), None);
        headers.insert(header::CONTENT_RANGE, "bytes 100-999/1000".parse().unwrap());
        assert_eq!(content_range_start(&headers), Some(100));
        headers.insert(header::CONTENT_RANGE, "bytes */1000".parse().unwrap());
        assert_eq!(content_range_start(&headers), None);
    }

    #[test]
    fn git_blob_ids_match_git() {
        // `git hash-object` of an empty file and of "hello\n".
        let empty = Check::GitSha1(String::new()).hasher(0);
        assert_eq!(empty.finish(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        let mut hello = Check::GitSha1(String::new()).hasher(6);
        hello.update(b"hello\n");
        assert_eq!(hello.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }

    #[test]
    fn listings_keep_needed_files_and_refuse_unsafe_or_non_onnx_ones() {
        let entry = |path: &str, lfs: bool| TreeEntry {
            kind: "file".into(),
            oid: "a".repeat(40),
            size: 3,
            path: path.into(),
            lfs: lfs.then(|| LfsInfo {
                oid: "B".repeat(64),
                size: 5,
            }),
        };
        let files = select_files(
            "a/b",
            vec![
                entry("model_index.json", false),
                entry("unet/model.onnx", true),
                entry("unet/model.onnx", true),
                entry("README.md", false),
                TreeEntry {
                    kind: "directory".into(),
                    oid: String::new(),
                    size: 0,
                    path: "unet".into(),
                    lfs: None,
                },
            ],
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        let unet = files.iter().find(|file| file.path == "unet/model.onnx").unwrap();
        assert_eq!(unet.size, 5, "an LFS file's size is the LFS size");
        assert!(matches!(&unet.check, Check::Sha256(hex) if *hex == "b".repeat(64)));

        let error = select_files("a/b", vec![entry("model_index.json", false)]).unwrap_err();
        assert!(error.to_string().contains("no unet/model.onnx"), "{error}");
        let error = select_files("a/b", vec![entry("unet/model.onnx", true)]).unwrap_err();
        assert!(error.to_string().contains("no model_index.json"), "{error}");
        assert!(!is_safe_relative("unet/../x.json"));
        assert!(!is_safe_relative("/unet/x.json"));
        assert!(!is_safe_relative("unet//x.json"));
        assert!(is_safe_relative("unet/x.json"));
    }

    #[test]
    fn a_pull_can_run_on_a_spawned_task() {
        fn assert_send<T: Send>(_: &T) {}
        let hub = Hub::resolve_from("http://127.0.0.1:9", "", None, None);
        let future = pull(&hub, "a/b", "main", Path::new("/nonexistent"), &|_| {}, &|| true);
        assert_send(&future);
    }
}
