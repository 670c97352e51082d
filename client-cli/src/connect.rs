//! Reaching the daemon: connecting to its Unix socket, and starting it when nobody listens.
//!
//! - [`connect`] dials the socket once. A missing socket file or a refused connection is
//!   [`ClientError::NoDaemon`], so callers can tell "not running" from real failures.
//! - [`start_daemon`] launches `easeld` detached (its own process group, stdin from
//!   `/dev/null`, stdout and stderr appended to `easeld.log` beside the socket) and waits until
//!   it answers a `GetStatus` call, up to [`START_TIMEOUT`].
//! - [`connect_or_start`] is what most commands use: connect, and start the daemon on first use
//!   unless the user opted out.
//!
//! The daemon binary is `$EASEL_DAEMON_BIN`, else `easeld` next to the running executable,
//! else `easeld` on `PATH` ([`daemon_binary`]).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use easel_proto::v1 as pb;
use easel_proto::v1::easel_client::EaselClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// How long [`start_daemon`] waits for a freshly started daemon to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that names the daemon binary to start.
pub const DAEMON_BIN_ENV: &str = "EASEL_DAEMON_BIN";

/// How many lines of the daemon's log an early-exit error quotes.
const LOG_TAIL_LINES: usize = 15;

/// Why the client could not reach (or start) the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the file is missing or the connection was refused.
    #[error(
        "no daemon is listening on {}; start one with `easel daemon start` or let easel start it (omit --no-autostart)",
        socket.display()
    )]
    NoDaemon {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket belongs to another user, or its folder does not let us in: the daemon serves
    /// only the user it runs as.
    #[error(
        "permission denied: the daemon socket {} {reason}; a daemon serves only the user it runs as, so run easel as that user or start your own daemon (set EASEL_SOCKET to a socket of yours)",
        socket.display()
    )]
    PermissionDenied { socket: PathBuf, reason: String },
    /// The socket exists and accepts, but the gRPC connection failed for another reason.
    #[error("cannot connect to the daemon on {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// No daemon binary was found to start.
    #[error(
        "cannot find the daemon binary `easeld` (looked next to {} and on PATH); install it beside `easel` or set {DAEMON_BIN_ENV}=/path/to/easeld",
        exe_dir.display()
    )]
    DaemonBinaryNotFound { exe_dir: PathBuf },
    /// `$EASEL_DAEMON_BIN` points at something that is not a file.
    #[error("{DAEMON_BIN_ENV} is set to {}, which is not a file; point it at the easeld binary or unset it", path.display())]
    DaemonBinaryMissing { path: PathBuf },
    /// The socket's folder or the log file could not be prepared.
    #[error("cannot prepare {} for the daemon", path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon binary could not be executed.
    #[error("cannot run the daemon binary {}; check that it is an executable easeld", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon started but exited before it answered.
    #[error(
        "easeld exited before it was ready ({status}); its log is {}{}",
        log.display(),
        if log_tail.is_empty() { String::new() } else { format!(", ending with:\n{log_tail}") }
    )]
    DaemonExited {
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    /// The daemon started but did not answer in time.
    #[error(
        "easeld (pid {pid}) did not answer on {} within {} s; see its log {} (stop it with `kill {pid}`)",
        socket.display(),
        waited.as_secs(),
        log.display()
    )]
    StartTimeout {
        pid: u32,
        socket: PathBuf,
        log: PathBuf,
        waited: Duration,
    },
}

impl ClientError {
    /// True when the error means "no daemon runs on this socket".
    pub fn is_no_daemon(&self) -> bool {
        matches!(self, ClientError::NoDaemon { .. })
    }
}

/// A daemon that [`start_daemon`] launched.
#[derive(Debug, Clone)]
pub struct StartedDaemon {
    /// The daemon's process id.
    pub pid: u32,
    /// The binary that was run.
    pub binary: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// The log file a started daemon writes to: `easeld.log` beside the socket.
pub fn log_path(socket: &Path) -> PathBuf {
    socket_folder(socket).join("easeld.log")
}

fn socket_folder(socket: &Path) -> &Path {
    socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Connects to the daemon on `socket` (one attempt, no autostart).
pub async fn connect(socket: &Path) -> Result<EaselClient<Channel>, ClientError> {
    check_owner(socket, nix::unistd::geteuid().as_raw())?;
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://[::]:50051");
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok(EaselClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)),
        Err(source) => match io_error_in(&source) {
            Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => Err(ClientError::PermissionDenied {
                socket: socket.to_path_buf(),
                reason: format!("cannot be opened ({io})"),
            }),
            Some(io) if is_not_listening(io) => Err(ClientError::NoDaemon {
                socket: socket.to_path_buf(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            }),
            _ => Err(ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            }),
        },
    }
}

/// Connects to the daemon; when none listens and `autostart` is true, starts one first.
///
/// Prints nothing; callers that want to tell the user use [`start_daemon`] themselves.
pub async fn connect_or_start(socket: &Path, autostart: bool) -> Result<EaselClient<Channel>, ClientError> {
    match connect(socket).await {
        Err(error) if error.is_no_daemon() && autostart => start_daemon(socket).await.map(|(client, _)| client),
        other => other,
    }
}

/// Finds the daemon binary: `$EASEL_DAEMON_BIN`, else `easeld` next to the current executable,
/// else `easeld` on `PATH`.
pub fn daemon_binary() -> Result<PathBuf, ClientError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    find_daemon_binary(std::env::var_os(DAEMON_BIN_ENV), &exe_dir, std::env::var_os("PATH"))
}

fn find_daemon_binary(
    from_env: Option<OsString>,
    exe_dir: &Path,
    path_var: Option<OsString>,
) -> Result<PathBuf, ClientError> {
    if let Some(path) = from_env.filter(|p| !p.is_empty()).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ClientError::DaemonBinaryMissing { path })
        };
    }
    let beside = exe_dir.join("easeld");
    if beside.is_file() {
        return Ok(beside);
    }
    path_var
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("easeld"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ClientError::DaemonBinaryNotFound {
            exe_dir: exe_dir.to_path_buf(),
        })
}

/// Starts the daemon in the background on `socket` and waits until it answers.
///
/// The daemon runs in its own process group (so the terminal's Ctrl-C does not reach it),
/// with stdin from `/dev/null` and stdout/stderr appended to [`log_path`]. If it exits before
/// it answers, the error carries its exit status and the end of its log. If another daemon
/// won the race for the socket, that one is used (and its pid reported).
pub async fn start_daemon(socket: &Path) -> Result<(EaselClient<Channel>, StartedDaemon), ClientError> {
    let socket = std::path::absolute(socket).map_err(|source| ClientError::Prepare {
        path: socket.to_path_buf(),
        source,
    })?;
    let binary = daemon_binary()?;
    let folder = socket_folder(&socket);
    if !folder.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|source| ClientError::Prepare {
                path: folder.to_path_buf(),
                source,
            })?;
    }
    let log = log_path(&socket);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| ClientError::Prepare {
            path: log.clone(),
            source,
        })?;
    let log_start = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log_file.try_clone().map_err(|source| ClientError::Prepare {
        path: log.clone(),
        source,
    })?;
    let mut child = Command::new(&binary)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|source| ClientError::Spawn {
            binary: binary.clone(),
            source,
        })?;
    let mut started = StartedDaemon {
        pid: child.id(),
        binary,
        log,
    };
    let (client, status) = wait_until_ready(&socket, &mut child, &started, log_start).await?;
    // When another client's daemon won the race for the socket, report that one.
    started.pid = status.pid;
    Ok((client, started))
}

async fn wait_until_ready(
    socket: &Path,
    child: &mut Child,
    started: &StartedDaemon,
    log_start: u64,
) -> Result<(EaselClient<Channel>, pb::StatusReply), ClientError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // Another client may have started a daemon at the same moment; ours then exits
            // because the socket is taken, and the other one is just as good.
            if let Some(ready) = answering(socket, Duration::from_secs(2)).await {
                return Ok(ready);
            }
            return Err(ClientError::DaemonExited {
                status,
                log: started.log.clone(),
                log_tail: log_tail(&started.log, log_start, LOG_TAIL_LINES),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::StartTimeout {
                pid: started.pid,
                socket: socket.to_path_buf(),
                log: started.log.clone(),
                waited: START_TIMEOUT,
            });
        }
        if let Some(ready) = answering(socket, left.min(Duration::from_secs(5))).await {
            return Ok(ready);
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A client whose daemon answered `GetStatus` within `limit`, and its answer, if any.
async fn answering(socket: &Path, limit: Duration) -> Option<(EaselClient<Channel>, pb::StatusReply)> {
    let attempt = async {
        let mut client = connect(socket).await.ok()?;
        let status = client.get_status(pb::StatusRequest {}).await.ok()?.into_inner();
        Some((client, status))
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// The last `lines` lines the log gained after byte `from`.
fn log_tail(log: &Path, from: u64, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(log)?;
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let text = read().unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first `std::io::Error` in an error's source chain.
fn io_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// The daemon closes connections from other users without a word (a peer-uid check); say
/// why before dialing rather than report a lost connection. Root is no exception: the daemon
/// refuses it too.
fn check_owner(socket: &Path, our_uid: u32) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(socket) {
        Ok(meta) if meta.uid() != our_uid => Err(ClientError::PermissionDenied {
            socket: socket.to_path_buf(),
            reason: format!("belongs to uid {} and easel runs as uid {our_uid}", meta.uid()),
        }),
        _ => Ok(()),
    }
}

fn is_not_listening(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nobody.sock");
        let error = connect(&socket).await.unwrap_err();
        assert!(error.is_no_daemon(), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&socket.display().to_string()), "{message}");
        assert!(message.contains("easel daemon start"), "{message}");
    }

    #[tokio::test]
    async fn a_stale_socket_file_means_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let error = connect(&socket).await.unwrap_err();
        assert!(error.is_no_daemon(), "{error:?}");
    }

    #[test]
    fn another_users_socket_is_permission_denied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("theirs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let owner = std::fs::metadata(&socket).unwrap().uid();
        assert!(check_owner(&socket, owner).is_ok());
        let error = check_owner(&socket, owner + 1).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ClientError::PermissionDenied { .. }), "{error:?}");
        assert!(
            message.starts_with("permission denied") && message.contains(&format!("uid {owner}")),
            "{message}"
        );
        // A missing socket is for the connection to report (no daemon).
        assert!(check_owner(&dir.path().join("missing.sock"), owner + 1).is_ok());
    }

    #[tokio::test]
    async fn no_autostart_leaves_no_daemon_alone() {
        let dir = tempfile::tempdir().unwrap();
        let error = connect_or_start(&dir.path().join("s.sock"), false).await.unwrap_err();
        assert!(error.is_no_daemon());
    }

    #[test]
    fn daemon_binary_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let exe_dir = dir.path().join("bin");
        let path_dir = dir.path().join("path");
        std::fs::create_dir_all(&exe_dir).unwrap();
        std::fs::create_dir_all(&path_dir).unwrap();
        let on_path = path_dir.join("easeld");
        std::fs::write(&on_path, b"").unwrap();
        let path_var = Some(std::env::join_paths([&path_dir]).unwrap());

        assert_eq!(find_daemon_binary(None, &exe_dir, path_var.clone()).unwrap(), on_path);

        let beside = exe_dir.join("easeld");
        std::fs::write(&beside, b"").unwrap();
        assert_eq!(find_daemon_binary(None, &exe_dir, path_var.clone()).unwrap(), beside);

        let explicit = dir.path().join("my-easeld");
        std::fs::write(&explicit, b"").unwrap();
        assert_eq!(
            find_daemon_binary(Some(explicit.clone().into()), &exe_dir, path_var.clone()).unwrap(),
            explicit
        );
        // An empty variable counts as unset.
        assert_eq!(
            find_daemon_binary(Some(OsString::new()), &exe_dir, path_var.clone()).unwrap(),
            beside
        );

        let missing = dir.path().join("nope");
        let error = find_daemon_binary(Some(missing.into()), &exe_dir, path_var).unwrap_err();
        assert!(matches!(error, ClientError::DaemonBinaryMissing { .. }), "{error:?}");

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let error = find_daemon_binary(None, &empty, None).unwrap_err();
        assert!(matches!(error, ClientError::DaemonBinaryNotFound { .. }), "{error:?}");
        assert!(error.to_string().contains(DAEMON_BIN_ENV));
    }

    #[test]
    fn the_log_lives_beside_the_socket() {
        assert_eq!(
            log_path(Path::new("/run/user/1/easel/easeld.sock")),
            Path::new("/run/user/1/easel/easeld.log")
        );
        assert_eq!(log_path(Path::new("easeld.sock")), Path::new("./easeld.log"));
    }

    #[test]
    fn log_tail_reads_only_what_this_start_added() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("easeld.log");
        std::fs::write(&log, "old run\n").unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        let mut text = String::from("old run\n");
        for i in 0..20 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, from, 3);
        assert_eq!(tail, "  line 17\n  line 18\n  line 19");
        assert_eq!(log_tail(&dir.path().join("absent.log"), 0, 3), "");
    }

    #[tokio::test]
    async fn a_daemon_that_dies_at_once_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("easeld.sock");
        let log = log_path(&socket);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        std::fs::write(&log, "").unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo 'easeld: error: no onnxruntime' >> '{}'; exit 3",
                log.display()
            ))
            .spawn()
            .unwrap();
        let started = StartedDaemon {
            pid: child.id(),
            binary: PathBuf::from("sh"),
            log: log.clone(),
        };
        let error = wait_until_ready(&socket, &mut child, &started, 0).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ClientError::DaemonExited { .. }), "{error:?}");
        assert!(message.contains("no onnxruntime"), "{message}");
        assert!(message.contains("exit status: 3"), "{message}");
        assert!(message.contains(&log.display().to_string()), "{message}");
    }
}
