//! A Hugging Face-compatible hub for tests: a small HTTP/1.1 server on `127.0.0.1` that serves
//! repositories from local folders in the hub's URL layout, so `easel pull` and
//! `easeld::catalog::hub` can be tested without the internet.
//!
//! ```no_run
//! # use easel_e2e::hub::HubServer;
//! let hub = HubServer::start();
//! hub.add_repo("test/sd1-tiny", "main", &easel_e2e::fixture_model("sd1-tiny"));
//! // point the client at it: HF_ENDPOINT=hub.url()
//! ```
//!
//! What it answers (as huggingface.co does):
//! - `GET /api/models/{owner}/{name}/tree/{revision}[/{folder}][?recursive=true][&cursor=N]`:
//!   a JSON array of `{"type": "file" | "directory", "oid", "size", "path"}`, files with
//!   `"lfs": {"oid": sha256, "size", "pointerSize"}` when they are LFS files (see [`is_lfs`]).
//!   `oid` is the git blob sha1 of the content, or of the LFS pointer file for LFS files, as
//!   in git. Without `recursive=true` only the folder's direct children. With
//!   [`HubServer::page_size`] the list comes in pages linked by `Link: <url>; rel="next"`.
//! - `GET /{owner}/{name}/resolve/{revision}/{path}`: LFS files answer `302` to
//!   `/cdn/{sha256}` (on [`HubServer::cdn_host`]), other files `200` with the bytes.
//! - `GET /cdn/{sha256}`: the bytes of an LFS file. Like a real CDN's signed URLs it needs no
//!   token.
//! - Bodies honour `Range: bytes=N-` / `bytes=N-M` (`206`, or `416` past the end).
//! - `401` on the API and `resolve` routes without the token set by [`HubServer::require_token`];
//!   `404` (with the hub's `X-Error-Code`) for unknown repositories, revisions and paths
//!   ([`HubServer::hide_unknown_repos`]: `401 RepoNotFound` for unknown repositories, as the
//!   real hub answers anonymous callers).
//!   Revisions and paths are percent-decoded per segment (`refs%2Fpr%2F1` is `refs/pr/1`).
//!
//! Faults to test clients against: [`HubServer::cut_next_download`] (drop a connection
//! mid-body, once), [`HubServer::corrupt`] (serve altered bytes), [`HubServer::fail_next`]
//! (answer an error status), [`HubServer::ignore_ranges`] (a server without range support),
//! [`HubServer::chunk_delay`] (slow bodies, e.g. to cancel mid-download). Every request is
//! logged ([`HubServer::requests`]); [`HubServer::wait_for_parallel_downloads`] and
//! [`HubServer::max_concurrent_downloads`] show whether a client downloads in parallel.
//!
//! Each connection is served by its own thread and closed after one response
//! (`Connection: close`). The server stops when the `HubServer` is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Bytes written per `write` call when sending a body (and between two [`HubServer::chunk_delay`]s).
const CHUNK: usize = 16 * 1024;
/// How long [`HubServer::wait_for_parallel_downloads`] holds bodies back at most.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// The request target as sent: percent-encoded path and query.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The repository file a `resolve` or `/cdn/` request was for (decoded), if it named one.
    pub file: Option<String>,
}

/// A repository file as served.
#[derive(Debug, Clone)]
struct HubFile {
    path: String,
    data: Arc<Vec<u8>>,
    /// Git blob sha1 of the content (non-LFS) or of the LFS pointer file.
    git_oid: String,
    sha256: String,
    lfs: bool,
    pointer_size: usize,
}

#[derive(Debug, Default)]
struct State {
    /// (repo, revision) → files sorted by path.
    repos: BTreeMap<(String, String), Vec<HubFile>>,
    /// sha256 → an LFS file, for `/cdn/`.
    blobs: HashMap<String, HubFile>,
    token: Option<String>,
    page_size: Option<usize>,
    cdn_host: Option<String>,
    /// Per file, the cuts to apply to its next responses, in order.
    cuts: HashMap<String, std::collections::VecDeque<u64>>,
    corrupt: HashSet<String>,
    /// Decoded-path fragment → (status, how many more times).
    failures: Vec<(String, u16, u32)>,
    ignore_ranges: bool,
    chunk_delay: Duration,
    /// Bodies wait until this many have been in flight at once.
    parallel_gate: Option<usize>,
    /// Unknown repositories answer 401 `RepoNotFound` instead of 404.
    hide_unknown_repos: bool,
    log: Vec<LoggedRequest>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled (with `state` locked) when a body starts, for the parallel-download gate.
    body_started: Condvar,
    stopping: AtomicBool,
    sending: AtomicUsize,
    max_sending: AtomicUsize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the whole test down with a poisoned lock.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The test hub. See the module documentation for what it serves.
pub struct HubServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HubServer {
    /// Starts a server on a free port of 127.0.0.1, serving nothing yet.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test hub");
        let addr = listener.local_addr().expect("test hub address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            body_started: Condvar::new(),
            stopping: AtomicBool::new(false),
            sending: AtomicUsize::new(0),
            max_sending: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("test-hub".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accept_shared.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = accept_shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("test-hub-conn".into())
                        .spawn(move || serve_connection(&shared, stream, addr));
                }
            })
            .expect("spawn the test hub");
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`: the value for `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves every file under `folder` (dotfiles included) as `repo` ("owner/name") at
    /// `revision` (any string, e.g. "main" or "refs/pr/1"). The files are read now; later
    /// changes to the folder are not seen. Adding the same repository and revision again
    /// replaces its files (a branch that moved on).
    pub fn add_repo(&self, repo: &str, revision: &str, folder: &Path) {
        let files: Vec<HubFile> = crate::files_under(folder)
            .into_iter()
            .map(|(repo_path, path)| hub_file(repo_path, &path))
            .collect();
        let mut state = self.shared.state();
        for file in files.iter().filter(|file| file.lfs) {
            state.blobs.insert(file.sha256.clone(), file.clone());
        }
        state.repos.insert((repo.to_string(), revision.to_string()), files);
    }

    /// Refuses API and `resolve` requests (401) unless they carry `Authorization: Bearer TOKEN`.
    pub fn require_token(&self, token: &str) {
        self.shared.state().token = Some(token.to_string());
    }

    /// Answers 401 with `X-Error-Code: RepoNotFound` for unknown repositories, as huggingface.co
    /// does (a private repository and a missing one look the same to an outsider).
    pub fn hide_unknown_repos(&self) {
        self.shared.state().hide_unknown_repos = true;
    }

    /// Answers tree listings `n` entries at a time, linked by `Link: <…>; rel="next"`.
    pub fn page_size(&self, n: usize) {
        assert!(n > 0, "a page holds at least one entry");
        self.shared.state().page_size = Some(n);
    }

    /// Sends LFS redirects to `http://HOST:PORT/cdn/…` instead of 127.0.0.1, e.g. "localhost"
    /// to make the CDN another host, as the real one is (clients must not send it the token).
    pub fn cdn_host(&self, host: &str) {
        self.shared.state().cdn_host = Some(host.to_string());
    }

    /// The next response with the body of repository file `path` (a `resolve` or a `/cdn/`
    /// request, any repository) sends only `after_bytes` bytes of it and closes the connection.
    /// Once (after the cuts already queued for it).
    pub fn cut_next_download(&self, path: &str, after_bytes: u64) {
        self.cut_downloads(path, after_bytes, 1);
    }

    /// The next `times` responses with the body of `path` are each cut after `after_bytes`.
    pub fn cut_downloads(&self, path: &str, after_bytes: u64, times: usize) {
        let mut state = self.shared.state();
        let queue = state.cuts.entry(path.to_string()).or_default();
        queue.extend(std::iter::repeat_n(after_bytes, times));
    }

    /// From now on, the body of repository file `path` is served altered (see
    /// [`corrupt_bytes`]); the listing still gives the true size and hashes.
    pub fn corrupt(&self, path: &str) {
        self.shared.state().corrupt.insert(path.to_string());
    }

    /// The next `times` requests whose decoded path contains `fragment` (e.g.
    /// "/resolve/main/unet/config.json" or "/tree/") are answered with `status` and no body.
    pub fn fail_next(&self, fragment: &str, status: u16, times: u32) {
        self.shared.state().failures.push((fragment.to_string(), status, times));
    }

    /// Behaves like a server without range support: `Range` headers are ignored (full `200`).
    pub fn ignore_ranges(&self) {
        self.shared.state().ignore_ranges = true;
    }

    /// Waits this long after each 16 KiB of a body (slow downloads).
    pub fn chunk_delay(&self, delay: Duration) {
        self.shared.state().chunk_delay = delay;
    }

    /// Holds every file body back until `n` of them are in flight at once (or 5 s have
    /// passed), then lets them all go: a client that downloads in parallel shows it as
    /// [`HubServer::max_concurrent_downloads`] ≥ `n`, without any timing assumption.
    pub fn wait_for_parallel_downloads(&self, n: usize) {
        self.shared.state().parallel_gate = Some(n);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.state().log.clear();
    }

    /// The most file bodies that were being sent at the same time.
    pub fn max_concurrent_downloads(&self) -> usize {
        self.shared.max_sending.load(Ordering::SeqCst)
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Whether the server serves `path` as an LFS file: the kinds the hub's default
/// `.gitattributes` stores in LFS, plus ONNX external data, as an optimum upload does.
pub fn is_lfs(path: &str) -> bool {
    const LFS: &[&str] = &[
        ".onnx",
        ".onnx_data",
        ".onnx.data",
        ".pb",
        ".safetensors",
        ".bin",
        ".ckpt",
        ".pt",
        ".pth",
        ".msgpack",
        ".h5",
    ];
    LFS.iter().any(|extension| path.ends_with(extension))
}

/// The bytes the server sends for a file marked with [`HubServer::corrupt`]: the middle byte
/// flipped (same size, so only a hash check can tell).
pub fn corrupt_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if !out.is_empty() {
        let middle = out.len() / 2;
        out[middle] ^= 0xff;
    }
    out
}

/// Git's blob id of `data`: sha1 of `"blob {len}\0" + data`.
pub fn git_blob_sha1(data: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", data.len()).as_bytes());
    hasher.update(data);
    hex(&hasher.finalize())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What the server needs to know of a file it serves at `repo_path`.
fn hub_file(repo_path: String, path: &Path) -> HubFile {
    let data = std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let sha256 = sha256_hex(&data);
    let lfs = is_lfs(&repo_path);
    // An LFS file's git blob is its pointer file, as in the hub's own git repositories.
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {}\n",
        data.len()
    );
    let git_oid = if lfs {
        git_blob_sha1(pointer.as_bytes())
    } else {
        git_blob_sha1(&data)
    };
    HubFile {
        path: repo_path,
        data: Arc::new(data),
        git_oid,
        sha256,
        lfs,
        pointer_size: pointer.len(),
    }
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one request head (and discards any body, so that closing never resets the
/// connection with unread data).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    let mut head_len = 0;
    reader.read_line(&mut line).ok()?;
    head_len += line.len();
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head_len += line.len();
        if head_len > MAX_HEAD {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let request = Request {
        method,
        target,
        headers,
    };
    let body_len: u64 = request
        .header("content-length")
        .and_then(|len| len.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut reader.by_ref().take(body_len), &mut std::io::sink()).ok()?;
    Some(request)
}

/// What to send back.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Empty,
    Text(Vec<u8>),
    /// Part of a file: `data[start..end]`, possibly cut short after `cut` bytes.
    File {
        data: Arc<Vec<u8>>,
        start: usize,
        end: usize,
        cut: Option<u64>,
    },
}

impl Response {
    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Text(value.to_string().into_bytes()),
        }
    }

    /// The hub's error form: a JSON message and an `X-Error-Code` clients may switch on.
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut response = Self::json(status, &serde_json::json!({ "error": message }));
        if !code.is_empty() {
            response.headers.push(("X-Error-Code".into(), code.into()));
        }
        response
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream, addr: SocketAddr) {
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    let (response, delay) = respond(shared, &request, addr);
    let _ = write_response(shared, stream, &request, response, delay);
}

fn write_response(
    shared: &Shared,
    mut stream: TcpStream,
    request: &Request,
    response: Response,
    delay: Duration,
) -> std::io::Result<()> {
    let length = match &response.body {
        Body::Empty => 0,
        Body::Text(text) => text.len(),
        Body::File { start, end, .. } => end - start,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\nConnection: close\r\n\r\n"));
    stream.write_all(head.as_bytes())?;
    if request.method == "HEAD" {
        return stream.flush();
    }
    match response.body {
        Body::Empty => {}
        Body::Text(text) => stream.write_all(&text)?,
        Body::File { data, start, end, cut } => {
            body_gate(shared);
            let sent = send_file(&mut stream, &data[start..end], cut, delay);
            shared.sending.fetch_sub(1, Ordering::SeqCst);
            sent?;
            if cut.is_some() {
                // Everything written is delivered before the FIN; the client sees a body
                // shorter than its Content-Length.
                stream.flush()?;
                return stream.shutdown(Shutdown::Both);
            }
        }
    }
    stream.flush()
}

/// Counts a body as in flight and, with a parallel gate set, waits until enough are.
fn body_gate(shared: &Shared) {
    let mut state = shared.state();
    let now = shared.sending.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_sending.fetch_max(now, Ordering::SeqCst);
    shared.body_started.notify_all();
    let Some(needed) = state.parallel_gate else { return };
    let deadline = Instant::now() + GATE_TIMEOUT;
    while shared.max_sending.load(Ordering::SeqCst) < needed {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        state = shared
            .body_started
            .wait_timeout(state, left)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

fn send_file(stream: &mut TcpStream, body: &[u8], cut: Option<u64>, delay: Duration) -> std::io::Result<()> {
    let limit = cut.map_or(body.len(), |cut| {
        body.len().min(usize::try_from(cut).unwrap_or(usize::MAX))
    });
    for chunk in body[..limit].chunks(CHUNK) {
        stream.write_all(chunk)?;
        stream.flush()?;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    Ok(())
}

/// Percent-decodes one path segment or query value.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let digit = |byte: u8| (byte as char).to_digit(16).unwrap_or(0) as u8;
            out.push(digit(bytes[i + 1]) * 16 + digit(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Routes a request; returns the response and the delay between body chunks.
fn respond(shared: &Shared, request: &Request, addr: SocketAddr) -> (Response, Duration) {
    let mut state = shared.state();
    let (raw_path, query) = request.target.split_once('?').unwrap_or((&request.target, ""));
    let segments: Vec<String> = raw_path.trim_start_matches('/').split('/').map(decode).collect();
    let decoded_path = format!("/{}", segments.join("/"));
    let mut logged = LoggedRequest {
        method: request.method.clone(),
        path: request.target.clone(),
        range: request.header("range").map(str::to_string),
        authorization: request.header("authorization").map(str::to_string),
        file: None,
    };
    let delay = state.chunk_delay;

    let response = (|| {
        if request.method != "GET" && request.method != "HEAD" {
            return Response::error(405, "", "only GET and HEAD");
        }
        if let Some(failure) = state
            .failures
            .iter_mut()
            .find(|(fragment, _, times)| *times > 0 && decoded_path.contains(fragment.as_str()))
        {
            failure.2 -= 1;
            return Response::empty(failure.1);
        }
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        match seg.as_slice() {
            ["cdn", sha256] => {
                let Some(file) = state.blobs.get(*sha256).cloned() else {
                    return Response::error(404, "EntryNotFound", "no such object");
                };
                logged.file = Some(file.path.clone());
                file_response(&mut state, &file, request)
            }
            ["api", "models", owner, name, "tree", revision, folder @ ..] => {
                if let Some(refused) = check_token(&state, request) {
                    return refused;
                }
                let repo = format!("{owner}/{name}");
                tree_response(&state, &repo, revision, &folder.join("/"), raw_path, query, addr)
            }
            [owner, name, "resolve", revision, path @ ..] if !path.is_empty() => {
                if let Some(refused) = check_token(&state, request) {
                    return refused;
                }
                let repo = format!("{owner}/{name}");
                let path = path.join("/");
                let files = match find_repo(&state, &repo, revision) {
                    Ok(files) => files,
                    Err(not_found) => return not_found,
                };
                let Some(file) = files.iter().find(|file| file.path == path).cloned() else {
                    return Response::error(
                        404,
                        "EntryNotFound",
                        &format!("{path} does not exist on \"{revision}\""),
                    );
                };
                logged.file = Some(file.path.clone());
                if file.lfs {
                    let host = state.cdn_host.clone().unwrap_or_else(|| addr.ip().to_string());
                    let location = format!("http://{host}:{}/cdn/{}", addr.port(), file.sha256);
                    return Response::empty(302)
                        .header("Location", location)
                        .header("X-Linked-Size", file.data.len().to_string())
                        .header("X-Linked-Etag", format!("\"{}\"", file.sha256))
                        .header("ETag", format!("\"{}\"", file.git_oid));
                }
                file_response(&mut state, &file, request).header("ETag", format!("\"{}\"", file.git_oid))
            }
            _ => Response::error(404, "", "not found"),
        }
    })();
    state.log.push(logged);
    (response, delay)
}

fn check_token(state: &State, request: &Request) -> Option<Response> {
    let token = state.token.as_ref()?;
    let expected = format!("Bearer {token}");
    if request.header("authorization") == Some(expected.as_str()) {
        return None;
    }
    Some(Response::error(401, "", "Invalid credentials in Authorization header"))
}

fn find_repo<'s>(state: &'s State, repo: &str, revision: &str) -> Result<&'s Vec<HubFile>, Response> {
    if let Some(files) = state.repos.get(&(repo.to_string(), revision.to_string())) {
        return Ok(files);
    }
    if state.repos.keys().any(|(known, _)| known == repo) {
        return Err(Response::error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        ));
    }
    let status = if state.hide_unknown_repos { 401 } else { 404 };
    Err(Response::error(status, "RepoNotFound", "Repository not found"))
}

fn tree_response(
    state: &State,
    repo: &str,
    revision: &str,
    folder: &str,
    raw_path: &str,
    query: &str,
    addr: SocketAddr,
) -> Response {
    let files = match find_repo(state, repo, revision) {
        Ok(files) => files,
        Err(not_found) => return not_found,
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect();
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let recursive = matches!(param("recursive"), Some("true" | "1" | "True"));
    let cursor: usize = param("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);

    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let mut directories = BTreeSet::new();
    for file in files {
        let parts: Vec<&str> = file.path.split('/').collect();
        for depth in 1..parts.len() {
            directories.insert(parts[..depth].join("/"));
        }
    }
    let in_scope = |path: &str| {
        path.strip_prefix(prefix.as_str())
            .is_some_and(|rest| !rest.is_empty() && (recursive || !rest.contains('/')))
    };
    if !folder.is_empty() && !directories.contains(folder) {
        return Response::error(
            404,
            "EntryNotFound",
            &format!("{folder} does not exist on \"{revision}\""),
        );
    }
    let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
    for directory in directories.iter().filter(|d| in_scope(d)) {
        let oid = hex(&Sha1::digest(directory.as_bytes()));
        let entry = serde_json::json!({ "type": "directory", "oid": oid, "size": 0, "path": directory });
        entries.push((directory.clone(), entry));
    }
    for file in files.iter().filter(|f| in_scope(&f.path)) {
        let mut entry = serde_json::json!({
            "type": "file",
            "oid": file.git_oid,
            "size": file.data.len(),
            "path": file.path,
        });
        if file.lfs {
            entry["lfs"] = serde_json::json!({
                "oid": file.sha256,
                "size": file.data.len(),
                "pointerSize": file.pointer_size,
            });
        }
        entries.push((file.path.clone(), entry));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut page: Vec<serde_json::Value> = entries.into_iter().map(|(_, entry)| entry).collect();
    let mut next = None;
    if let Some(size) = state.page_size {
        let end = (cursor + size).min(page.len());
        if end < page.len() {
            next = Some(end);
        }
        page = page.get(cursor..end).map(<[_]>::to_vec).unwrap_or_default();
    }
    let mut response = Response::json(200, &serde_json::Value::Array(page));
    if let Some(next) = next {
        // Absolute, like the hub's own links; the other parameters carried over.
        let mut query: Vec<String> = params
            .iter()
            .filter(|(key, _)| key != "cursor")
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        query.push(format!("cursor={next}"));
        response = response.header(
            "Link",
            format!("<http://{addr}{raw_path}?{}>; rel=\"next\"", query.join("&")),
        );
    }
    response
}

/// A file body with range support and the configured faults applied.
fn file_response(state: &mut State, file: &HubFile, request: &Request) -> Response {
    let data = if state.corrupt.contains(&file.path) {
        Arc::new(corrupt_bytes(&file.data))
    } else {
        file.data.clone()
    };
    let len = data.len();
    let range = if state.ignore_ranges {
        None
    } else {
        request.header("range").and_then(parse_range)
    };
    let (status, start, end) = match range {
        None => (200, 0, len),
        Some((start, _)) if start >= len as u64 => {
            return Response::empty(416).header("Content-Range", format!("bytes */{len}"));
        }
        Some((start, last)) => {
            let start = start as usize;
            let end = last.map_or(len, |last| (last as usize).saturating_add(1).min(len));
            if end <= start {
                return Response::empty(416).header("Content-Range", format!("bytes */{len}"));
            }
            (206, start, end)
        }
    };
    let cut = state.cuts.get_mut(&file.path).and_then(|queue| queue.pop_front());
    let mut response = Response {
        status,
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("Accept-Ranges".into(), "bytes".into()),
        ],
        body: Body::File { data, start, end, cut },
    };
    if status == 206 {
        response = response.header("Content-Range", format!("bytes {start}-{}/{len}", end - 1));
    }
    response
}

/// `bytes=N-` or `bytes=N-M` → (N, M); other forms (suffixes, several ranges) are ignored, as
/// HTTP allows.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = end.trim();
    if end.is_empty() {
        return Some((start, None));
    }
    Some((start, Some(end.parse().ok()?)))
}
