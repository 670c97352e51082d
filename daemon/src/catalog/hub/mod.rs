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

mod download;
mod listing;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use reqwest::Url;

use download::Puller;
use listing::RemoteFile;
pub use listing::is_needed;

/// The hub used when neither the request nor the daemon's environment names one.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files downloaded at once. Four keeps a fast link busy without looking like abuse to a hub.
pub const PARALLEL_DOWNLOADS: usize = 4;

/// The folder inside the destination that holds interrupted downloads.
pub const PARTIAL_DIR: &str = ".partial";

/// Where to pull from and with which credentials.
#[derive(Clone)]
pub struct Hub {
    /// Base URL without a trailing '/', e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    pub token: Option<String>,
    /// How a download cut short is resumed within the same pull.
    pub retry: Retry,
}

/// Resuming a download that was cut short (a reset connection, a stalled read, a hub that
/// went away), as `huggingface_hub` and Ollama do: from the byte where it stopped, after a
/// pause that doubles each time, until the retries are spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Further tries per file after the first.
    pub retries: u32,
    /// The pause before the first retry; each next one doubles, up to `max_delay`.
    pub first_delay: std::time::Duration,
    pub max_delay: std::time::Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            retries: 5,
            first_delay: std::time::Duration::from_secs(1),
            max_delay: std::time::Duration::from_secs(16),
        }
    }
}

impl Retry {
    /// The pause before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> std::time::Duration {
        let doubled = self
            .first_delay
            .checked_mul(1 << retry.saturating_sub(1).min(20))
            .unwrap_or(self.max_delay);
        doubled.min(self.max_delay)
    }
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
            retry: Retry::default(),
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
    #[error(
        "downloading {path} was interrupted ({cause}){}; pull again to resume where it stopped",
        if *retries > 0 { format!(", and {retries} retries did not get further") } else { String::new() }
    )]
    Interrupted { path: String, cause: String, retries: u32 },
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
    let puller = Puller {
        client: download::client(&endpoint)?,
        hub,
        endpoint,
        repo,
        revision,
        dest,
        progress,
        cancelled,
        stop: Default::default(),
        totals: Default::default(),
    };
    let files = listing::select_files(repo, puller.list().await?)?;
    let bytes_total = files.iter().map(|file| file.size).sum();
    tracing::info!(
        repo,
        revision,
        files = files.len(),
        bytes = bytes_total,
        "pulling from {}",
        hub.endpoint
    );
    puller.start(files.len(), bytes_total);

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
    fn a_pull_can_run_on_a_spawned_task() {
        fn assert_send<T: Send>(_: &T) {}
        let hub = Hub::resolve_from("http://127.0.0.1:9", "", None, None);
        let future = pull(&hub, "a/b", "main", Path::new("/nonexistent"), &|_| {}, &|| true);
        assert_send(&future);
    }
}
