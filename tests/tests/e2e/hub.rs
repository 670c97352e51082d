//! Pulling from a hub: `easeld::catalog::hub::pull` against the test hub server (`easel_e2e::hub`)
//! serving the `sd1-tiny` fixture as `test/sd1-tiny`, plus junk a real repository carries.
//! No daemon here: these tests call the library directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use easel_e2e::hub::{HubServer, LoggedRequest, corrupt_bytes, git_blob_sha1, sha256_hex};
use easel_e2e::*;
use easeld::catalog::hub::{self, Hub, HubError, PullProgress, PulledFiles, Retry};

const REPO: &str = "test/sd1-tiny";

// The parallel-download test below means something only if downloads may overlap.
const _: () = assert!(hub::PARALLEL_DOWNLOADS > 1, "downloads run in parallel");

/// Files a model repository carries that a pull must leave alone.
const JUNK: &[(&str, &[u8])] = &[
    ("README.md", b"# sd1-tiny\n"),
    (".gitattributes", b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"),
    ("unet/diffusion_pytorch_model.safetensors", &[7; 4096]),
    ("vae_decoder/diffusion_flax_model.msgpack", &[9; 100]),
    ("safety_checker/model.onnx", &[1; 64]),
];

/// Every file under `dir` by its repository path ('/'-separated), with its bytes.
fn files_with_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|(relative, path)| (relative, std::fs::read(path).unwrap()))
        .collect()
}

fn fixture_files() -> BTreeMap<String, Vec<u8>> {
    files_with_bytes(&fixture_model("sd1-tiny"))
}

/// A repository folder: the fixture plus [`JUNK`].
fn repo_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, data) in fixture_files()
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .chain(JUNK.iter().copied())
    {
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, data).unwrap();
    }
    dir
}

/// A hub serving the fixture as `test/sd1-tiny` at `main`.
fn serve() -> (HubServer, tempfile::TempDir) {
    let server = HubServer::start();
    let folder = repo_folder();
    server.add_repo(REPO, "main", folder.path());
    (server, folder)
}

/// The test server as the hub, resuming cut downloads after short pauses.
fn hub_at(server: &HubServer, token: &str) -> Hub {
    Hub {
        retry: FAST_RETRY,
        ..Hub::resolve_from(&server.url(), token, None, None)
    }
}

const FAST_RETRY: Retry = Retry {
    retries: 3,
    first_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(40),
};

/// A pull and every progress report it made.
async fn pull_with(
    hub: &Hub,
    repo: &str,
    revision: &str,
    dest: &Path,
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> (Result<PulledFiles, HubError>, Vec<PullProgress>) {
    let reports = Mutex::new(Vec::new());
    let progress = |report: PullProgress| reports.lock().unwrap().push(report);
    let result = hub::pull(hub, repo, revision, dest, &progress, cancelled).await;
    (result, reports.into_inner().unwrap())
}

async fn pull(
    hub: &Hub,
    repo: &str,
    revision: &str,
    dest: &Path,
) -> (Result<PulledFiles, HubError>, Vec<PullProgress>) {
    pull_with(hub, repo, revision, dest, &|| false).await
}

/// Requests for a repository file (its `resolve` or its `/cdn/` object).
fn requests_for<'r>(log: &'r [LoggedRequest], file: &str) -> Vec<&'r LoggedRequest> {
    log.iter()
        .filter(|request| request.file.as_deref() == Some(file))
        .collect()
}

/// The `Range` each download of `file` from the CDN asked for, in order.
fn cdn_ranges<'r>(log: &'r [LoggedRequest], file: &str) -> Vec<Option<&'r str>> {
    requests_for(log, file)
        .iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .map(|r| r.range.as_deref())
        .collect()
}

fn downloaded_files(log: &[LoggedRequest]) -> std::collections::BTreeSet<String> {
    log.iter().filter_map(|request| request.file.clone()).collect()
}

fn assert_pulled_exactly_the_fixture(dest: &Path) {
    let pulled = files_with_bytes(dest);
    let expected = fixture_files();
    assert_eq!(
        pulled.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "exactly the needed files (and no .partial leftovers)"
    );
    for (path, data) in &expected {
        assert!(pulled[path] == *data, "{path} is byte-identical to the fixture");
    }
    assert!(
        !dest.join(".partial").exists(),
        "a finished pull leaves no .partial folder"
    );
}

fn dest_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model");
    (dir, dest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_downloads_exactly_the_needed_files_and_reports_progress() {
    let (server, _folder) = serve();
    server.wait_for_parallel_downloads(hub::PARALLEL_DOWNLOADS);
    let (_dir, dest) = dest_dir();

    let (result, reports) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    let pulled = result.unwrap();

    assert_pulled_exactly_the_fixture(&dest);
    let expected = fixture_files();
    assert_eq!(
        pulled.files,
        expected
            .iter()
            .map(|(path, data)| (path.clone(), data.len() as u64))
            .collect::<Vec<_>>()
    );

    let log = server.requests();
    let downloaded = downloaded_files(&log);
    assert_eq!(
        downloaded,
        expected.keys().cloned().collect(),
        "one download per needed file"
    );
    for (junk, _) in JUNK {
        assert!(
            !log.iter()
                .any(|request| request.path.contains(junk) || request.file.as_deref() == Some(*junk)),
            "{junk} is not downloaded: {log:#?}"
        );
    }
    // LFS files go through the hub's redirect to the CDN; small files come straight from it.
    for request in requests_for(&log, "unet/model.onnx") {
        assert!(request.range.is_none(), "a fresh pull asks for whole files");
    }
    assert!(
        log.iter()
            .any(|r| r.path.starts_with("/cdn/") && r.file.as_deref() == Some("unet/model.onnx")),
        "the 302 to the CDN was followed: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|r| r.path == "/test/sd1-tiny/resolve/main/unet/config.json")
    );
    assert!(
        log.iter()
            .any(|r| r.path == "/api/models/test/sd1-tiny/tree/main?recursive=true"),
        "{log:#?}"
    );

    let last = reports.last().expect("progress was reported");
    assert_eq!(last.files_done, last.files_total);
    assert_eq!(last.files_total as usize, expected.len());
    assert_eq!(last.bytes_done, last.bytes_total);
    assert_eq!(last.bytes_total, expected.values().map(|d| d.len() as u64).sum::<u64>());
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done && w[0].files_done <= w[1].files_done),
        "progress only moves forward"
    );
    for path in expected.keys() {
        assert!(
            reports.iter().any(|r| r.file == *path && r.files_done > 0),
            "a report at the end of {path}"
        );
    }
    // The server held the bodies back until the limit was in flight (no timing involved): the
    // downloads overlap, and never more than the limit at once.
    assert_eq!(server.max_concurrent_downloads(), hub::PARALLEL_DOWNLOADS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paginated_listing_is_followed_to_its_end() {
    let (server, _folder) = serve();
    server.page_size(3);
    let (_dir, dest) = dest_dir();

    let (result, _) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);

    let log = server.requests();
    let pages: Vec<&LoggedRequest> = log.iter().filter(|r| r.path.contains("/tree/")).collect();
    // 16 files and 6 folders in the repository, 3 entries a page.
    assert!(pages.len() >= 7, "every page was fetched: {pages:#?}");
    assert!(pages[1].path.contains("cursor=3"), "{pages:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_with_slashes_is_one_url_segment() {
    let server = HubServer::start();
    let folder = repo_folder();
    server.add_repo(REPO, "refs/pr/1", folder.path());
    let (_dir, dest) = dest_dir();

    let (repo, revision) = hub::parse_reference("test/sd1-tiny@refs/pr/1").unwrap();
    let (result, _) = pull(&hub_at(&server, ""), &repo, &revision, &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    let log = server.requests();
    assert!(
        log.iter()
            .any(|r| r.path.starts_with("/api/models/test/sd1-tiny/tree/refs%2Fpr%2F1?"))
    );
    assert!(
        log.iter()
            .any(|r| r.path == "/test/sd1-tiny/resolve/refs%2Fpr%2F1/unet/config.json")
    );

    let (result, _) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("no repository test/sd1-tiny at revision main"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_needs_the_token_and_the_cdn_never_sees_it() {
    let (server, _folder) = serve();
    server.require_token("hf_secret");
    // The real CDN is another host; reqwest must drop the header on the way there. Only when
    // "localhost" reaches this server (it is IPv4 127.0.0.1 here, maybe not everywhere).
    let localhost_works = std::net::TcpStream::connect(("localhost", server.port())).is_ok();
    if localhost_works {
        server.cdn_host("localhost");
    }
    let (_dir, dest) = dest_dir();

    let (result, _) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    let error = result.unwrap_err();
    assert!(matches!(error, HubError::Unauthorized { status: 401, .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("the hub refused access to test/sd1-tiny")
            && message.contains("set HF_TOKEN to a token that can read it"),
        "{message}"
    );

    let (result, _) = pull(&hub_at(&server, "wrong"), REPO, "main", &dest).await;
    assert!(matches!(result, Err(HubError::Unauthorized { .. })), "{result:?}");

    server.clear_requests();
    let (result, _) = pull(&hub_at(&server, "hf_secret"), REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    let log = server.requests();
    for request in log.iter().filter(|r| !r.path.starts_with("/cdn/")) {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer hf_secret"),
            "the hub gets the token: {request:?}"
        );
    }
    let cdn: Vec<&LoggedRequest> = log.iter().filter(|r| r.path.starts_with("/cdn/")).collect();
    assert!(!cdn.is_empty());
    if localhost_works {
        for request in cdn {
            assert_eq!(
                request.authorization, None,
                "the CDN (another host) gets no token: {request:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_resumes_by_itself_within_the_pull() {
    let (server, _folder) = serve();
    // Cut twice: the pull resumes from 100 000, then from 200 000, and finishes.
    server.cut_downloads("unet/model.onnx", 100_000, 2);
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");

    let (result, reports) = pull(&hub, REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    let log = server.requests();
    assert_eq!(
        cdn_ranges(&log, "unet/model.onnx"),
        [None, Some("bytes=100000-"), Some("bytes=200000-")],
        "each retry goes on from the byte where the last one stopped"
    );
    let last = reports.last().unwrap();
    assert_eq!(last.bytes_done, last.bytes_total, "resumed bytes are not counted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_retries_are_spent_the_pull_fails_and_a_new_pull_resumes() {
    const CUT: u64 = 100_000;
    let (server, _folder) = serve();
    // The first response is cut after 100 000 bytes, every retry (3) before a byte arrives.
    server.cut_next_download("unet/model.onnx", CUT);
    server.cut_downloads("unet/model.onnx", 0, FAST_RETRY.retries as usize);
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");

    let (result, _) = pull(&hub, REPO, "main", &dest).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error, HubError::Interrupted { ref path, retries: 3, .. } if path == "unet/model.onnx"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("3 retries") && message.contains("pull again to resume"),
        "{message}"
    );
    let part = dest.join(".partial/unet/model.onnx.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), CUT, "what arrived is kept");
    assert!(
        !dest.join("unet/model.onnx").exists(),
        "an unverified file is never in place"
    );
    // Files the first try finished (others may have been stopped half-way: they resume too).
    let finished: Vec<String> = files_with_bytes(&dest)
        .into_keys()
        .filter(|path| !path.starts_with(".partial/"))
        .collect();

    server.clear_requests();
    let (result, reports) = pull(&hub, REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);

    let log = server.requests();
    let unet = requests_for(&log, "unet/model.onnx");
    assert!(!unet.is_empty());
    for request in &unet {
        assert_eq!(request.range.as_deref(), Some("bytes=100000-"), "{request:?}");
    }
    for path in &finished {
        assert!(
            requests_for(&log, path).is_empty(),
            "{path} was complete and is not fetched again"
        );
    }
    let first = reports.first().unwrap();
    let last = reports.last().unwrap();
    assert_eq!((first.files_done, first.bytes_done), (0, 0));
    assert_eq!(last.bytes_done, last.bytes_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_range_support_restarts_the_file() {
    let (server, _folder) = serve();
    server.ignore_ranges();
    server.cut_next_download("unet/model.onnx", 50_000);
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");
    let (result, reports) = pull(&hub, REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    let log = server.requests();
    assert!(
        requests_for(&log, "unet/model.onnx")
            .iter()
            .any(|r| r.range.as_deref() == Some("bytes=50000-")),
        "it asked to resume: {log:#?}"
    );
    let last = reports.last().unwrap();
    assert_eq!(
        last.bytes_done, last.bytes_total,
        "restarted bytes are not counted twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changed_on_the_hub_since_the_interruption_starts_over() {
    let server = HubServer::start();
    let folder = repo_folder();
    server.add_repo(REPO, "main", folder.path());
    server.cut_next_download("unet/model.onnx", 100_000);
    server.cut_downloads("unet/model.onnx", 0, FAST_RETRY.retries as usize);
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");
    let (result, _) = pull(&hub, REPO, "main", &dest).await;
    assert!(matches!(result, Err(HubError::Interrupted { .. })), "{result:?}");

    // `main` moves on: a byte the kept part holds changes, so the part plus the new rest is
    // neither file.
    let unet = folder.path().join("unet/model.onnx");
    let mut changed = std::fs::read(&unet).unwrap();
    changed[1000] ^= 0x55;
    std::fs::write(&unet, &changed).unwrap();
    server.add_repo(REPO, "main", folder.path());

    server.clear_requests();
    let (result, reports) = pull(&hub, REPO, "main", &dest).await;
    result.unwrap();
    assert!(
        std::fs::read(dest.join("unet/model.onnx")).unwrap() == changed,
        "the new UNet"
    );
    let log = server.requests();
    assert_eq!(
        cdn_ranges(&log, "unet/model.onnx"),
        [Some("bytes=100000-"), None],
        "resumed, failed verification, started over"
    );
    let last = reports.last().unwrap();
    assert_eq!(last.bytes_done, last.bytes_total, "the failed try is not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_model_is_verified_and_not_downloaded_again() {
    let (server, _folder) = serve();
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");
    pull(&hub, REPO, "main", &dest).await.0.unwrap();

    // A file damaged on disk since is fetched again; the intact ones are not.
    let damaged = dest.join("unet/config.json");
    std::fs::write(&damaged, b"{}").unwrap();
    server.clear_requests();
    let (result, reports) = pull(&hub, REPO, "main", &dest).await;
    result.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    assert_eq!(
        downloaded_files(&server.requests()),
        ["unet/config.json".to_string()].into(),
        "only the damaged file is downloaded"
    );
    let last = reports.last().unwrap();
    assert_eq!((last.files_done, last.bytes_done), (last.files_total, last.bytes_total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_lfs_file_is_refused_and_deleted() {
    let (server, _folder) = serve();
    server.corrupt("unet/model.onnx");
    let (_dir, dest) = dest_dir();

    let (result, _) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    let error = result.unwrap_err();
    let message = error.to_string();
    let original = std::fs::read(fixture_model("sd1-tiny").join("unet/model.onnx")).unwrap();
    assert!(matches!(error, HubError::HashMismatch { .. }), "{error:?}");
    assert!(message.contains("unet/model.onnx"), "{message}");
    assert!(
        message.contains(&sha256_hex(&original)),
        "names the expected hash: {message}"
    );
    assert!(
        message.contains(&sha256_hex(&corrupt_bytes(&original))),
        "names the actual hash: {message}"
    );
    assert!(!dest.join("unet/model.onnx").exists(), "the bad file is not in place");
    assert!(
        !dest.join(".partial/unet/model.onnx.part").exists(),
        "nor kept to resume from"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_small_file_fails_its_git_blob_id() {
    let (server, _folder) = serve();
    server.corrupt("unet/config.json");
    let (_dir, dest) = dest_dir();

    let (result, _) = pull(&hub_at(&server, ""), REPO, "main", &dest).await;
    let message = result.unwrap_err().to_string();
    let original = std::fs::read(fixture_model("sd1-tiny").join("unet/config.json")).unwrap();
    assert!(message.contains("unet/config.json"), "{message}");
    assert!(message.contains(&git_blob_sha1(&original)), "{message}");
    assert!(message.contains(&git_blob_sha1(&corrupt_bytes(&original))), "{message}");
    assert!(!dest.join("unet/config.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_repositories_and_non_onnx_ones_are_explained() {
    let (server, _folder) = serve();
    let pytorch = tempfile::tempdir().unwrap();
    for (path, data) in [
        ("model_index.json", &b"{}"[..]),
        ("unet/config.json", b"{}"),
        ("unet/diffusion_pytorch_model.safetensors", &[0; 256]),
    ] {
        let target = pytorch.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, data).unwrap();
    }
    server.add_repo("test/pytorch-only", "main", pytorch.path());
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");

    let (result, _) = pull(&hub, "test/nope", "main", &dest).await;
    let message = result.unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "no repository test/nope at revision main on {}; check the name (OWNER/REPO) and revision",
            server.url()
        )
    );
    let (result, _) = pull(&hub, REPO, "no-such-branch", &dest).await;
    let message = result.unwrap_err().to_string();
    assert!(message.contains("at revision no-such-branch"), "{message}");

    // huggingface.co answers strangers 401 RepoNotFound: the message covers both causes.
    server.hide_unknown_repos();
    let (result, _) = pull(&hub, "test/nope", "main", &dest).await;
    let error = result.unwrap_err();
    assert!(matches!(error, HubError::NotFoundOrPrivate { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("no repository test/nope on") && message.contains("or set HF_TOKEN"),
        "{message}"
    );

    server.clear_requests();
    let (result, _) = pull(&hub, "test/pytorch-only", "main", &dest).await;
    let error = result.unwrap_err();
    assert!(matches!(error, HubError::NotOnnxModel { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "test/pytorch-only is not an ONNX Stable Diffusion repository (no unet/model.onnx); pick an ONNX export \
         (e.g. from optimum) or export one with optimum-cli export onnx"
    );
    assert!(
        downloaded_files(&server.requests()).is_empty(),
        "nothing was downloaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_says_so() {
    // A port that was free a moment ago: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let hub = Hub::resolve_from(&endpoint, "", None, None);
    let (_dir, dest) = dest_dir();
    let (result, _) = pull(&hub, REPO, "main", &dest).await;
    let error = result.unwrap_err();
    assert!(matches!(error, HubError::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot reach {endpoint} ("))
            && message.ends_with("check HF_ENDPOINT or your network"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_retried_once() {
    let (server, _folder) = serve();
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");

    server.fail_next("/resolve/main/unet/config.json", 503, 1);
    server.fail_next("/tree/", 502, 1);
    pull(&hub, REPO, "main", &dest).await.0.unwrap();
    assert_pulled_exactly_the_fixture(&dest);

    let (_dir, dest) = dest_dir();
    server.fail_next("/resolve/main/unet/config.json", 503, 2);
    let (result, _) = pull(&hub, REPO, "main", &dest).await;
    let error = result.unwrap_err();
    assert!(matches!(error, HubError::Server { status: 503, .. }), "{error:?}");
    assert!(error.to_string().contains("try again later"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pull_keeps_its_partial_files_and_resumes() {
    let (server, _folder) = serve();
    server.chunk_delay(Duration::from_millis(20));
    let (_dir, dest) = dest_dir();
    let hub = hub_at(&server, "");

    // Cancel as soon as some bytes have arrived.
    let started = AtomicBool::new(false);
    let reports = Mutex::new(Vec::new());
    let progress = |report: PullProgress| {
        if report.bytes_done > 0 {
            started.store(true, Ordering::SeqCst);
        }
        reports.lock().unwrap().push(report);
    };
    let cancelled = || started.load(Ordering::SeqCst);
    let result = hub::pull(&hub, REPO, "main", &dest, &progress, &cancelled).await;
    assert!(matches!(result, Err(HubError::Cancelled)), "{result:?}");
    let parts: Vec<String> = files_under(&dest.join(".partial"))
        .into_iter()
        .map(|(relative, _)| relative)
        .collect();
    assert!(!parts.is_empty(), "partial files are kept");

    server.chunk_delay(Duration::ZERO);
    server.clear_requests();
    pull(&hub, REPO, "main", &dest).await.0.unwrap();
    assert_pulled_exactly_the_fixture(&dest);
    assert!(
        server.requests().iter().any(|r| r.range.is_some()),
        "at least one file resumed: {:#?}",
        server.requests()
    );
}
