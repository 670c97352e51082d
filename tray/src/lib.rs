//! `easel_tray`: the system-tray launcher for `easeld`.
//!
//! The icon follows the daemon through `WatchEvents` — stopped, idle, loading a model,
//! generating (progress in the title, tooltip and icon), error — and its menu starts and stops
//! the daemon, cancels the running job, unloads models, opens the images folder and the log,
//! and switches start at login.
//!
//! - [`state`]: the pure state machine (inputs in, the view and notifications out), where all
//!   the tray's decisions are made and unit-tested.
//! - [`icon`]: the pixmaps, drawn in code.
//! - [`actions`]: what each menu item does.
//! - [`watch`]: the connection to the daemon, with reconnection and backoff.
//! - [`main_loop`]: the main loop every face shares (state machine in, views and actions out).
//! - `sni`, `notify`, `app` (Linux only): the StatusNotifierItem/dbusmenu face on `ksni`,
//!   freedesktop notifications, and their start.
//! - `macos` (macOS only): the menu-bar face on `tray-icon` and `tao`, notifications through
//!   `osascript`.
//!
//! Platforms: Linux, through the StatusNotifierItem D-Bus protocol (KDE, GNOME with the
//! AppIndicator extension, XFCE, and any panel that hosts SNI items; no GTK needed), and macOS's
//! menu bar. Elsewhere the binary says it is not supported and exits.

pub mod actions;
pub mod icon;
pub mod main_loop;
pub mod state;
pub mod watch;

#[cfg(target_os = "linux")]
pub mod app;
#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(target_os = "linux")]
pub mod notify;
#[cfg(target_os = "linux")]
pub mod sni;

pub use easel_proto::errors::error_chain;
