//! Following the daemon: connect, read its status and resident models, then stream
//! `WatchEvents`; when it goes away, say so and try again with backoff.
//!
//! The watch stream is opened *before* the snapshot is read, so nothing that happens between
//! the two is lost (an event the snapshot already reflects applies again harmlessly). A
//! [`Notify`] wakes the loop early, so a daemon started from the menu shows up at once instead
//! of after the current backoff.

use std::path::PathBuf;
use std::time::Duration;

use easel_client::{connect, pb};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;

use crate::state::Input;

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between attempts to reach a stopped daemon.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The next wait after `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Watches the daemon on `socket` until `inputs` is closed, sending what it learns.
pub async fn watch(socket: PathBuf, inputs: mpsc::UnboundedSender<Input>, wake: std::sync::Arc<Notify>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let input = match connect(&socket).await {
            Ok(client) => {
                let outcome = session(client, &inputs).await;
                if let Err(status) = outcome {
                    tracing::debug!("the watch ended: {status}");
                }
                // We were connected: the next attempt starts quickly again.
                backoff = MIN_BACKOFF;
                Input::Disconnected
            }
            Err(error) if error.is_no_daemon() => Input::Disconnected,
            Err(error) => Input::Unreachable(crate::error_chain(&error)),
        };
        if inputs.send(input).is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wake.notified() => {}
        }
        backoff = next_backoff(backoff);
    }
}

/// One connection's life: returns when the stream ends (the daemon stopped) or fails.
async fn session(
    mut client: easel_client::EaselClient<easel_client::Channel>,
    inputs: &mpsc::UnboundedSender<Input>,
) -> Result<(), tonic::Status> {
    let mut events = client.watch_events(pb::WatchRequest {}).await?.into_inner();
    let status = client.get_status(pb::StatusRequest {}).await?.into_inner();
    let running = client.list_running(pb::ListRunningRequest {}).await?.into_inner();
    if inputs.send(Input::Connected { status, running }).is_err() {
        return Ok(());
    }
    while let Some(event) = events.next().await {
        if inputs.send(Input::Event(event?)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut wait = MIN_BACKOFF;
        let mut seen = vec![wait];
        for _ in 0..8 {
            wait = next_backoff(wait);
            seen.push(wait);
        }
        assert_eq!(seen[1], Duration::from_millis(500));
        assert_eq!(*seen.last().unwrap(), MAX_BACKOFF);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn no_daemon_reads_as_stopped_and_wake_retries_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let wake = std::sync::Arc::new(Notify::new());
        let task = tokio::spawn(watch(dir.path().join("none.sock"), tx, wake.clone()));
        assert!(matches!(rx.recv().await, Some(Input::Disconnected)));
        // Let the backoff grow, then wake: the next attempt comes well before it would.
        for _ in 0..3 {
            assert!(matches!(rx.recv().await, Some(Input::Disconnected)));
        }
        let start = std::time::Instant::now();
        wake.notify_one();
        assert!(matches!(rx.recv().await, Some(Input::Disconnected)));
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        drop(rx);
        task.abort();
    }
}
