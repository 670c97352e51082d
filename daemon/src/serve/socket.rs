//! The daemon's Unix socket: a private folder, one daemon per socket, only our own user.
//!
//! - The socket's folder is created 0700 and the socket chmod 0600.
//! - A lock file beside the socket (`easeld.sock.lock`, holding the pid) is `flock`ed for the
//!   daemon's lifetime: a second daemon fails to take it and exits with an error, and a socket
//!   file left by a crashed daemon is known to be stale (nobody holds the lock) and removed.
//! - Every accepted connection's peer uid is checked against ours, so loosening the file modes
//!   does not let another user in.
//! - A socket passed by a service manager ([`adopt`]) is served as it is: the manager made it
//!   and keeps it, so it is neither replaced nor removed; the lock is still taken, so a daemon
//!   started by hand on the same path fails instead of taking the socket away from it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another easeld is already serving on {socket}{pid}; stop it with `easel daemon stop` or choose another socket with EASEL_SOCKET"
    )]
    AlreadyRunning { socket: PathBuf, pid: String },
    #[error("cannot prepare the socket folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound socket and the lock that makes it ours. Dropping it removes the socket file (unless
/// a service manager owns it) and the lock file.
#[derive(Debug)]
pub struct BoundSocket {
    pub path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
    /// False for an adopted socket: the service manager keeps listening on it.
    owns_socket: bool,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.owns_socket {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Takes the lock, cleans a stale socket and binds `path`.
pub fn bind(path: &Path) -> Result<(BoundSocket, UnixListener), SocketError> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|source| SocketError::Folder {
                path: folder.to_path_buf(),
                source,
            })?;
    }
    let (lock_path, lock) = take_lock(path)?;
    // We hold the lock, so any socket file here belongs to a daemon that died.
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| SocketError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((
        BoundSocket {
            path: path.to_path_buf(),
            lock_path,
            _lock: lock,
            owns_socket: true,
        },
        listener,
    ))
}

/// Serves on a listener a service manager bound and passed (socket activation). Its path comes
/// from the socket itself; its folder and modes are the manager's (the units set 0700/0600).
/// Call it inside the runtime.
pub fn adopt(listener: std::os::unix::net::UnixListener) -> Result<(BoundSocket, UnixListener), SocketError> {
    let unnamed = || SocketError::Bind {
        path: PathBuf::from("(the inherited socket)"),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it has no path (an abstract or unnamed socket); give the .socket unit a ListenStream= file path",
        ),
    };
    let path = listener
        .local_addr()
        .ok()
        .and_then(|address| address.as_pathname().map(Path::to_path_buf))
        .ok_or_else(unnamed)?;
    let (lock_path, lock) = take_lock(&path)?;
    let bind_error = |source| SocketError::Bind {
        path: path.clone(),
        source,
    };
    // tokio needs a non-blocking socket; the manager hands over a blocking one.
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = UnixListener::from_std(listener).map_err(bind_error)?;
    Ok((
        BoundSocket {
            path,
            lock_path,
            _lock: lock,
            owns_socket: false,
        },
        listener,
    ))
}

/// Takes `PATH.lock` (holding our pid) for the daemon's lifetime, or says who holds it.
fn take_lock(path: &Path) -> Result<(PathBuf, Flock<File>), SocketError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| SocketError::Folder {
            path: lock_path.clone(),
            source,
        })?;
    let mut lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, _)) => {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty());
            return Err(SocketError::AlreadyRunning {
                socket: path.to_path_buf(),
                pid: pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            });
        }
    };
    lock.set_len(0)
        .and_then(|_| write!(lock, "{}", std::process::id()))
        .map_err(|source| SocketError::Folder {
            path: lock_path.clone(),
            source,
        })?;
    Ok((lock_path, lock))
}

/// Accepted connections from our own uid; others are closed and logged.
pub struct OwnerOnly {
    listener: UnixListener,
    uid: u32,
}

impl OwnerOnly {
    pub fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

impl Stream for OwnerOnly {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok((stream, _))) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == this.uid => return Poll::Ready(Some(Ok(stream))),
                    Ok(cred) => tracing::warn!(peer_uid = cred.uid(), "refused a connection from another user"),
                    Err(e) => tracing::warn!(error = %e, "refused a connection whose peer could not be identified"),
                },
            }
        }
    }
}
