//! The tray's main loop, the same on every platform: inputs from the watcher and from finished
//! actions go through the state machine; each new view goes to the face (the D-Bus item on
//! Linux, the menu bar on macOS); clicks become actions run on their own tasks, so a slow
//! daemon call never holds the menu up. It ends on Quit, SIGINT or SIGTERM.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use crate::actions::{self, Settings};
use crate::state::{Action, Effect, Input, Notification, TrayState, View};
use crate::watch::watch;

/// Runs the loop. `state`'s view is what the face shows already; `show` shows a new one;
/// `notify` shows a notification (run on its own task).
pub async fn drive<S, SF, N, NF>(
    settings: Arc<Settings>,
    mut state: TrayState,
    mut clicks: mpsc::UnboundedReceiver<Action>,
    mut show: S,
    notify: N,
) -> std::io::Result<()>
where
    S: FnMut(View) -> SF,
    SF: Future<Output = ()>,
    N: Fn(Notification) -> NF + Clone + Send + Sync + 'static,
    NF: Future<Output = ()> + Send + 'static,
{
    use tokio::signal::unix::{SignalKind, signal};

    let (input_tx, mut inputs) = mpsc::unbounded_channel();
    let mut shown = state.view();
    let wake = Arc::new(Notify::new());
    let watcher = tokio::spawn(watch(settings.socket.clone(), input_tx.clone(), wake.clone()));
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tracing::info!("easel-tray is watching {}", settings.socket.display());

    loop {
        tokio::select! {
            Some(input) = inputs.recv() => {
                tracing::debug!("input: {input:?}");
                for effect in state.apply(input) {
                    let Effect::Notify(note) = effect;
                    tokio::spawn(notify(note));
                }
                let view = state.view();
                if view != shown {
                    shown = view.clone();
                    show(view).await;
                }
            }
            Some(action) = clicks.recv() => {
                tracing::info!("menu: {action:?}");
                if action == Action::Quit {
                    break;
                }
                if action == Action::StartDaemon {
                    let _ = input_tx.send(Input::Starting);
                }
                let (settings, inputs, wake, notify) =
                    (settings.clone(), input_tx.clone(), wake.clone(), notify.clone());
                tokio::spawn(async move {
                    if let Some(note) = actions::run_action(action, &settings, &inputs, &wake).await {
                        notify(note).await;
                    }
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    watcher.abort();
    Ok(())
}
