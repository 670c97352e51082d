//! The Linux tray: the D-Bus face ([`EaselTray`] on `ksni`) and freedesktop notifications,
//! driven by the shared main loop (`main_loop::drive`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::actions::{self, Settings};
use crate::notify::Notifier;
use crate::sni::EaselTray;
use crate::state::TrayState;

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

    let settings = Arc::new(settings);
    let (action_tx, clicks) = mpsc::unbounded_channel();
    let state = TrayState::new(actions::autostart_enabled(settings.autostart_file.as_deref()));
    // Starting before the panel (at login) is normal: the icon appears when a host registers.
    let handle = EaselTray::new(state.view(), action_tx)
        .assume_sni_available(true)
        .spawn()
        .await
        .map_err(AppError::Tray)?;
    let notifier = Notifier::connect().await;
    let shown = handle.clone();
    let show = move |view| {
        let handle = shown.clone();
        async move {
            handle.update(move |tray| tray.view = view).await;
        }
    };
    let notify = move |note| {
        let notifier = notifier.clone();
        async move { notifier.notify(&note).await }
    };
    crate::main_loop::drive(settings, state, clicks, show, notify)
        .await
        .map_err(AppError::Signals)?;
    handle.shutdown().await;
    Ok(())
}
