//! Desktop notifications through `org.freedesktop.Notifications.Notify` on the session bus.
//!
//! A desktop without a notification server is normal (a bare panel, a test bus): a failed call
//! is logged at debug level and otherwise ignored, and each call is bounded by a timeout so a
//! stuck server never holds the tray up.

use std::collections::HashMap;
use std::time::Duration;

use zbus::zvariant::Value;

use crate::state::Notification;

const DESTINATION: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a normal notification stays (ms); errors use the server's default.
const EXPIRE_MS: i32 = 5_000;

/// Sends notifications on a session-bus connection of its own.
#[derive(Debug, Clone)]
pub struct Notifier {
    connection: Option<zbus::Connection>,
}

impl Notifier {
    /// Connects to the session bus; without one, notifications are silently dropped.
    pub async fn connect() -> Self {
        let connection = match zbus::Connection::session().await {
            Ok(connection) => Some(connection),
            Err(error) => {
                tracing::debug!("no session bus for notifications: {error}");
                None
            }
        };
        Self { connection }
    }

    /// Shows `note`; failures are logged, never returned.
    pub async fn notify(&self, note: &Notification) {
        let Some(connection) = &self.connection else {
            return;
        };
        let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
        // Urgency: 1 normal, 2 critical.
        hints.insert("urgency", Value::U8(if note.critical { 2 } else { 1 }));
        let expire = if note.critical { -1 } else { EXPIRE_MS };
        let body = (
            "easel",
            0u32,
            "",
            note.summary.as_str(),
            note.body.as_str(),
            Vec::<&str>::new(),
            hints,
            expire,
        );
        let call = connection.call_method(Some(DESTINATION), PATH, Some(DESTINATION), "Notify", &body);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::debug!("notification not shown: {error}"),
            Err(_) => tracing::debug!("the notification server did not answer within {CALL_TIMEOUT:?}"),
        }
    }
}
