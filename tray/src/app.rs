//! The tray's main loop: inputs from the watcher and from finished actions go through the state
//! machine; its view is copied onto the D-Bus face; clicks become actions run on their own
//! tasks, so a slow daemon call never holds the menu up.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};

use crate::actions::{self, Settings};
use crate::notify::Notifier;
use crate::sni::EaselTray;
use crate::state::{Action, Effect, Input, Notification, TrayState};
use crate::watch::watch;

/// Why the tray could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "cannot put the icon on the session bus: {0}; easel-tray needs a desktop session (DBUS_SESSION_BUS_ADDRESS) with a StatusNotifierItem tray host"
    )]
    Tray(#[source] ksni::Error),
    #[error("cannot listen for termination signals")]
    Signals(#[source] std::io::Error),
}

/// Runs the tray until Quit, SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    use ksni::TrayMethods;
    use tokio::signal::unix::{SignalKind, signal};

    let settings = Arc::new(settings);
    let (input_tx, mut inputs) = mpsc::unbounded_channel();
    let (action_tx, mut clicks) = mpsc::unbounded_channel();
    let mut state = TrayState::new(actions::autostart_enabled(settings.autostart_file.as_deref()));
    let mut shown = state.view();
    // Starting before the panel (at login) is normal: the icon appears when a host registers.
    let handle = EaselTray::new(shown.clone(), action_tx)
        .assume_sni_available(true)
        .spawn()
        .await
        .map_err(AppError::Tray)?;
    let notifier = Notifier::connect().await;
    let wake = Arc::new(Notify::new());
    let watcher = tokio::spawn(watch(settings.socket.clone(), input_tx.clone(), wake.clone()));
    let mut terminate = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    tracing::info!("easel-tray is watching {}", settings.socket.display());

    loop {
        tokio::select! {
            Some(input) = inputs.recv() => {
                tracing::debug!("input: {input:?}");
                for effect in state.apply(input) {
                    let Effect::Notify(note) = effect;
                    let notifier = notifier.clone();
                    tokio::spawn(async move { notifier.notify(&note).await });
                }
                let view = state.view();
                if view != shown {
                    shown = view.clone();
                    handle.update(move |tray| tray.view = view).await;
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
                let (settings, inputs, wake, notifier) =
                    (settings.clone(), input_tx.clone(), wake.clone(), notifier.clone());
                tokio::spawn(async move {
                    match actions::perform(&action, &settings).await {
                        Ok(Some(input)) => {
                            let _ = inputs.send(input);
                        }
                        // The watcher sleeps between attempts: have it look now.
                        Ok(None) if action == Action::StartDaemon => wake.notify_one(),
                        Ok(None) => {}
                        Err(error) => {
                            let message = crate::error_chain(&error);
                            tracing::warn!("{action:?} failed: {message}");
                            if action == Action::StartDaemon {
                                let _ = inputs.send(Input::StartFailed(message));
                            } else {
                                let note = Notification {
                                    summary: "easel tray".into(),
                                    body: message,
                                    critical: true,
                                };
                                notifier.notify(&note).await;
                            }
                        }
                    }
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    watcher.abort();
    handle.shutdown().await;
    Ok(())
}
