//! Downloading: one pull's HTTP client, its running totals and the life of each file — listed,
//! resumed or fetched into its `.part`, verified, moved into place — with cancellation polled
//! throughout.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{StatusCode, Url, header};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::listing::{RemoteFile, TreeEntry, content_range_start, encode_path, encode_segment, next_link, same_origin};
use super::verify::{Hasher, hash_prefix};
use super::{Hub, HubError, PARTIAL_DIR, PullProgress};

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

/// Failures worth resuming from: the connection, not the hub's answer (a 404 or a corrupt
/// file would only fail again; a 5xx is already asked again once, by `get`).
fn is_transient(error: &HubError) -> bool {
    matches!(
        error,
        HubError::Interrupted { .. } | HubError::Unreachable { .. } | HubError::Request { .. }
    )
}

/// The HTTP client of one pull. A hub on this machine (a mirror, the tests' server) is never
/// reached through a proxy.
pub(super) fn client(endpoint: &Url) -> Result<reqwest::Client, HubError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("easel/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT);
    if matches!(endpoint.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
        builder = builder.no_proxy();
    }
    builder.build().map_err(HubError::Client)
}

/// A pull's running totals, for progress reports.
#[derive(Default)]
pub(super) struct Totals {
    files_total: AtomicU32,
    bytes_total: AtomicU64,
    files_done: AtomicU32,
    bytes_done: AtomicU64,
}

/// One pull's shared state: the client, the callbacks and the running totals.
pub(super) struct Puller<'a> {
    pub client: reqwest::Client,
    pub hub: &'a Hub,
    pub endpoint: Url,
    pub repo: &'a str,
    pub revision: &'a str,
    pub dest: &'a Path,
    pub progress: &'a (dyn Fn(PullProgress) + Send + Sync),
    pub cancelled: &'a (dyn Fn() -> bool + Send + Sync),
    /// Set by a cancellation or a failed file: every download stops at its next chunk.
    pub stop: AtomicBool,
    pub totals: Totals,
}

impl Puller<'_> {
    /// Sets the totals once the listing is known, and reports them.
    pub fn start(&self, files: usize, bytes: u64) {
        self.totals
            .files_total
            .store(u32::try_from(files).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.totals.bytes_total.store(bytes, Ordering::Relaxed);
        self.report("");
    }

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
            files_done: self.totals.files_done.load(Ordering::Relaxed),
            files_total: self.totals.files_total.load(Ordering::Relaxed),
            bytes_done: self.totals.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.totals.bytes_total.load(Ordering::Relaxed),
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
    pub async fn list(&self) -> Result<Vec<TreeEntry>, HubError> {
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
        self.totals.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn file_done(&self, file: &RemoteFile) {
        self.totals.files_done.fetch_add(1, Ordering::Relaxed);
        self.report(&file.path);
    }

    /// [`Puller::fetch`]; a failure stops the other downloads at their next chunk (their
    /// parts are kept).
    pub async fn fetch_or_stop(&self, file: &RemoteFile) -> Result<(), HubError> {
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
                    self.totals.bytes_done.fetch_add(file.size, Ordering::Relaxed);
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

        let (mut retries, mut started_over) = (0, false);
        loop {
            let mut attempt = Attempt::default();
            let error = match self.download(file, &part, &target, &mut attempt).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            // A resumed file that fails verification may have changed on the hub since the
            // part was written (a branch moved on): the bad part is gone, so try once from zero.
            let verification = matches!(error, HubError::HashMismatch { .. } | HubError::SizeMismatch { .. });
            if attempt.resumed && verification && !started_over {
                tracing::info!(
                    path = file.path,
                    "a resumed download failed verification; starting it over"
                );
                started_over = true;
            } else if is_transient(&error) && retries < self.hub.retry.retries {
                retries += 1;
                let delay = self.hub.retry.delay(retries);
                tracing::info!(path = file.path, retry = retries, ?delay, cause = %error, "download cut short; resuming");
                self.totals.bytes_done.fetch_sub(attempt.counted, Ordering::Relaxed);
                self.unless_stopped(tokio::time::sleep(delay)).await?;
                continue;
            } else {
                return Err(match error {
                    HubError::Interrupted { path, cause, .. } => HubError::Interrupted { path, cause, retries },
                    other => other,
                });
            }
            self.totals.bytes_done.fetch_sub(attempt.counted, Ordering::Relaxed);
        }
    }

    /// One try at a file: resumes its `.part` if there is one, then verifies and moves it.
    async fn download(
        &self,
        file: &RemoteFile,
        part: &Path,
        target: &Path,
        attempt: &mut Attempt,
    ) -> Result<(), HubError> {
        let offset = match tokio::fs::metadata(part).await {
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
        let (response, offset, hasher) = self.request_file(file, part, offset, attempt).await?;
        let (hasher, written) = self.receive(file, part, response, offset, hasher, attempt).await?;
        self.finish(file, part, target, hasher, written).await
    }

    /// Asks for the file from byte `offset` on (what its `.part` holds); a server that cannot
    /// continue from there (no range support, or another range) restarts it from zero. Returns
    /// the answer, the offset it starts at and the hash of the bytes before it.
    async fn request_file(
        &self,
        file: &RemoteFile,
        part: &Path,
        mut offset: u64,
        attempt: &mut Attempt,
    ) -> Result<(reqwest::Response, u64, Hasher), HubError> {
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
                self.totals.bytes_done.fetch_sub(offset, Ordering::Relaxed);
                attempt.counted -= offset;
                offset = 0;
                hasher = file.check.hasher(file.size);
                if status != StatusCode::OK {
                    response = self.get(&url, None).await?;
                }
            }
        }
        attempt.resumed = offset > 0;
        let expected = if offset > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if response.status() != expected {
            return Err(self.status_error(&response, &url, Asked::File(&file.path)));
        }
        Ok((response, offset, hasher))
    }

    /// Writes the answer's body into the `.part` from `offset` on, hashing as it goes. Whatever
    /// arrived is kept (flushed), so the next pull resumes from it; a body longer than the
    /// listing says deletes the part. Returns the hash and the part's length.
    async fn receive(
        &self,
        file: &RemoteFile,
        part: &Path,
        response: reqwest::Response,
        offset: u64,
        mut hasher: Hasher,
        attempt: &mut Attempt,
    ) -> Result<(Hasher, u64), HubError> {
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
                        retries: 0,
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
        Ok((hasher, written))
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

async fn remove_if_present(path: &Path) -> Result<(), HubError> {
    match tokio::fs::remove_file(path).await {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(HubError::Io {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}
