//! Being run by a service manager: socket activation, readiness, exit when idle.
//!
//! - [`inherited_listener`]: the listening socket that systemd (a `.socket` unit, or
//!   `systemd-socket-activate`) passes as fd 3 with `LISTEN_FDS`/`LISTEN_PID`. The daemon serves
//!   on it as it is: the socket file belongs to the manager, so it is neither replaced at start
//!   nor removed at exit (`socket::adopt`).
//! - [`notify_ready`] / [`notify_stopping`]: `READY=1` once serving and `STOPPING=1` when
//!   shutting down, for `Type=notify`; nothing at all when `$NOTIFY_SOCKET` is unset.
//! - [`Activity`] and [`ActivityLayer`]: the requests in flight (a streaming call counts until
//!   its response ends, so a watcher or a generation in progress keeps the daemon busy) and
//!   when the last one ended; [`idle_for`] resolves once nothing has happened for a period —
//!   `idle_exit`, after which a socket-activated daemon exits and the manager starts it again
//!   on the next connection.

use std::future::Future;
use std::os::unix::net::UnixListener;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error(
        "the socket passed by the service manager (LISTEN_FDS) is not a listening Unix stream socket: {source}; \
         give the .socket unit a `ListenStream=` path such as %t/easel/easeld.sock, or start easeld without LISTEN_FDS"
    )]
    NotUnixStream {
        #[source]
        source: std::io::Error,
    },
}

/// The listener the service manager passed, if it passed one. Reads and clears `LISTEN_FDS`
/// and `LISTEN_PID` (so nothing the daemon starts inherits them): call it before any thread
/// starts, since it changes the environment.
pub fn inherited_listener() -> Result<Option<UnixListener>, ActivationError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        tracing::warn!(
            count = fds.len(),
            "the service manager passed several sockets; serving on the first only"
        );
    }
    if fds.len() == 0 {
        return Ok(None);
    }
    fds.take_unix_listener(0)
        .map_err(|source| ActivationError::NotUnixStream { source })
}

/// Tells the service manager the daemon serves (`READY=1`, with a status line).
pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is stopping (`STOPPING=1`), so it does not count the
/// time spent finishing calls as a hang.
pub fn notify_stopping(reason: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(reason)]);
}

fn notify(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET, so STOPPING=1 can follow READY=1. A manager that cannot be
    // told is no reason to stop serving.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Requests in flight and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    /// A request began; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the daemon last had a request in flight; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        let last = *self.last.lock().expect("activity lock");
        (self.in_flight.load(Ordering::SeqCst) == 0).then_some(last)
    }

    /// Counts as activity now (a job still running after its call ended).
    fn touch(&self) {
        *self.last.lock().expect("activity lock") = Instant::now();
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: seen idle, the daemon must also see that it just was busy.
        *self.0.last.lock().expect("activity lock") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How often a busy daemon looks again whether it has gone idle.
const BUSY_POLL: Duration = Duration::from_secs(1);

/// Resolves once no request has been in flight, and `busy_elsewhere` (jobs still running) has
/// said no, for `period`.
pub async fn idle_for(activity: Arc<Activity>, period: Duration, busy_elsewhere: impl Fn() -> bool) {
    loop {
        if busy_elsewhere() {
            activity.touch();
        }
        let wait = match activity.idle_since() {
            Some(since) => match period.checked_sub(since.elapsed()) {
                None | Some(Duration::ZERO) => return,
                Some(left) => left,
            },
            None => BUSY_POLL,
        };
        // A job that starts meanwhile is seen at the next look: at most `BUSY_POLL` late.
        let wait = wait.min(BUSY_POLL);
        tokio::time::sleep(wait).await;
    }
}

/// Counts every request into an [`Activity`] until its response body is done with.
#[derive(Debug, Clone)]
pub struct ActivityLayer(pub Arc<Activity>);

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked {
            inner,
            activity: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Request, Body> tower::Service<http::Request<Request>> for Tracked<S>
where
    S: tower::Service<http::Request<Request>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<Body>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Request>) -> Self::Future {
        let busy = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _busy: busy }))
        })
    }
}

/// A response body that holds its request's [`Busy`] until it is dropped (sent in full, or
/// the client went away).
#[derive(Debug)]
pub struct TrackedBody<B> {
    body: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_requests_and_jobs_to_end() {
        let period = Duration::from_millis(300);
        let activity = Activity::new();
        let busy = activity.begin();
        let jobs = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = jobs.clone();
        let mut idle = tokio::spawn(idle_for(activity.clone(), period, move || {
            running.load(Ordering::SeqCst)
        }));
        tokio::time::sleep(period * 3).await;
        assert!(!idle.is_finished(), "a request in flight keeps the daemon busy");
        drop(busy);
        tokio::time::sleep(period * 3).await;
        assert!(!idle.is_finished(), "a running job keeps the daemon busy");
        jobs.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), &mut idle)
            .await
            .expect("idle once nothing runs")
            .unwrap();
    }

    #[test]
    fn no_listen_fds_means_no_inherited_listener() {
        // The test runner is not socket-activated (and LISTEN_PID would not be ours anyway).
        assert!(inherited_listener().unwrap().is_none());
    }
}
