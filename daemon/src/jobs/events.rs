//! The daemon's own events, for tray apps and plugins (`WatchEvents`, `easel events`): jobs
//! queued, started, progressing (a summary), finished, cancelled or failed; models loading,
//! loaded, unloaded, evicted, installed or removed; imports and pulls as they go.
//!
//! The bus is a broadcast channel: publishing never blocks (worker threads publish too), and a
//! watcher that falls behind loses the oldest events rather than slowing the daemon down.

use std::time::SystemTime;

use tokio::sync::broadcast;

use super::residency::{ResidencyEvent, UnloadReason};
use crate::catalog::{CatalogEvent, ImportNotice};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonEvent {
    Job {
        id: String,
        model: String,
        state: JobState,
        /// Queued: jobs ahead of it.
        position: u32,
        /// Progress: step of total (a summary: about every 10%).
        step: u32,
        total: u32,
        /// Failed: why.
        message: String,
    },
    Model {
        model: String,
        state: ModelState,
        memory: u64,
        /// Unloaded: why (expired, requested, evicted, shutdown).
        reason: String,
    },
    /// An import or pull as it goes.
    Import(ImportNotice),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Started,
    Progress,
    Finished,
    Cancelled,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Started => "started",
            JobState::Progress => "progress",
            JobState::Finished => "finished",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Loading,
    Loaded,
    Unloaded,
    Evicted,
    Installed,
    Removed,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Loaded => "loaded",
            ModelState::Unloaded => "unloaded",
            ModelState::Evicted => "evicted",
            ModelState::Installed => "installed",
            ModelState::Removed => "removed",
        }
    }
}

/// An event with the time it happened.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: DaemonEvent,
}

/// Where events go; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Stamped>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// Holds the last 1024 events for slow watchers.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(1024).0,
        }
    }

    /// Sends to every watcher (none is fine). Never blocks.
    pub fn publish(&self, event: DaemonEvent) {
        let _ = self.sender.send(Stamped {
            at: SystemTime::now(),
            event,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.sender.subscribe()
    }
}

impl From<ResidencyEvent> for DaemonEvent {
    fn from(event: ResidencyEvent) -> Self {
        let (model, state, memory, reason) = match event {
            ResidencyEvent::Loading { model } => (model, ModelState::Loading, 0, ""),
            ResidencyEvent::Loaded { model, memory, .. } => (model, ModelState::Loaded, memory, ""),
            ResidencyEvent::Unloaded { model, memory, reason } => {
                let state = if reason == UnloadReason::Evicted {
                    ModelState::Evicted
                } else {
                    ModelState::Unloaded
                };
                (model, state, memory, reason.as_str())
            }
        };
        DaemonEvent::Model {
            model,
            state,
            memory,
            reason: reason.to_string(),
        }
    }
}

impl From<CatalogEvent> for DaemonEvent {
    fn from(event: CatalogEvent) -> Self {
        let installed_or_removed = |model: String, state: ModelState| DaemonEvent::Model {
            model,
            state,
            memory: 0,
            reason: String::new(),
        };
        match event {
            CatalogEvent::Installed { name } => installed_or_removed(name, ModelState::Installed),
            CatalogEvent::Removed { name } => installed_or_removed(name, ModelState::Removed),
            CatalogEvent::Import(notice) => DaemonEvent::Import(notice),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_get_what_is_published_after_they_subscribe() {
        let bus = EventBus::new();
        bus.publish(DaemonEvent::Model {
            model: "before".into(),
            state: ModelState::Loaded,
            memory: 1,
            reason: String::new(),
        });
        let mut watcher = bus.subscribe();
        let event = DaemonEvent::Job {
            id: "j".into(),
            model: "m".into(),
            state: JobState::Queued,
            position: 0,
            step: 0,
            total: 0,
            message: String::new(),
        };
        bus.publish(event.clone());
        assert_eq!(watcher.try_recv().unwrap().event, event);
        assert!(watcher.try_recv().is_err(), "nothing from before subscribing");
    }
}
