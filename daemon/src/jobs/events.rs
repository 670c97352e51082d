//! The daemon's own events, for tray apps and plugins (`WatchEvents`, `easel events`): jobs
//! queued, started, progressing (a summary), finished, cancelled or failed; models loading,
//! loaded, unloaded, evicted, installed or removed; imports and pulls as they go.
//!
//! Each watcher has its own bounded [`outbox`]: publishing never blocks (worker threads publish
//! too), and a watcher that falls behind loses the oldest progress — never a job's or model's
//! change of state — rather than slowing the daemon down or growing without bound.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::residency::{Footprint, ResidencyEvent, UnloadReason};
use crate::catalog::{CatalogEvent, ImportNotice};
use crate::outbox;

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
        /// Loaded, unloaded: what it takes (RAM, and VRAM on a GPU).
        memory: Footprint,
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

/// Progress (a job's step, an import's bytes) is superseded by the next; states are not.
impl outbox::Droppable for Stamped {
    fn droppable(&self) -> bool {
        match &self.event {
            DaemonEvent::Job { state, .. } => matches!(state, JobState::Progress | JobState::Queued),
            DaemonEvent::Model { .. } => false,
            DaemonEvent::Import(notice) => matches!(notice.state.as_str(), "extracting" | "downloading"),
        }
    }
}

/// Events one watcher has not read yet before its oldest progress gives way.
pub const WATCHER_CAPACITY: usize = 1024;

/// Where events go; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    /// `None` once closed: the daemon is stopping and every watch has ended.
    watchers: Arc<Mutex<Option<Vec<outbox::Sender<Stamped>>>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            watchers: Arc::new(Mutex::new(Some(Vec::new()))),
        }
    }
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends to every watcher (none is fine); forgets watchers that went away. Never blocks.
    pub fn publish(&self, event: DaemonEvent) {
        let stamped = Stamped {
            at: SystemTime::now(),
            event,
        };
        if let Some(watchers) = self.watchers.lock().expect("event bus lock").as_mut() {
            watchers.retain(|watcher| watcher.send(stamped.clone()).is_ok());
        }
    }

    /// A new watcher: it sees what is published from now on, until the bus closes.
    pub fn subscribe(&self) -> outbox::Receiver<Stamped> {
        let (sender, receiver) = outbox::channel(WATCHER_CAPACITY);
        if let Some(watchers) = self.watchers.lock().expect("event bus lock").as_mut() {
            watchers.push(sender);
        }
        // Closed: the sender is dropped here and the watch ends at once.
        receiver
    }

    /// Ends every watch after the events it holds (the daemon is stopping: a watcher that
    /// never hangs up, such as a tray app, must not hold the shutdown).
    pub fn close(&self) {
        self.watchers.lock().expect("event bus lock").take();
    }
}

impl From<ResidencyEvent> for DaemonEvent {
    fn from(event: ResidencyEvent) -> Self {
        let (model, state, memory, reason) = match event {
            ResidencyEvent::Loading { model } => (model, ModelState::Loading, Footprint::ZERO, ""),
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
            memory: Footprint::ZERO,
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
            memory: Footprint::host(1),
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
        assert_eq!(watcher.len(), 1, "nothing from before subscribing");
        let received = futures::executor::block_on(watcher.recv()).unwrap();
        assert_eq!(received.event, event);
    }

    #[test]
    fn a_watcher_that_never_reads_keeps_every_state_change_and_bounded_progress() {
        let bus = EventBus::new();
        let mut watcher = bus.subscribe();
        let job = |state, step| DaemonEvent::Job {
            id: "j".into(),
            model: "m".into(),
            state,
            position: 0,
            step,
            total: 100_000,
            message: String::new(),
        };
        bus.publish(job(JobState::Started, 0));
        for step in 0..100_000 {
            bus.publish(job(JobState::Progress, step));
        }
        bus.publish(job(JobState::Finished, 0));
        assert!(watcher.len() <= WATCHER_CAPACITY + 1, "bounded: {}", watcher.len());
        let mut states = Vec::new();
        while !watcher.is_empty() {
            let stamped = futures::executor::block_on(watcher.recv()).unwrap();
            if let DaemonEvent::Job { state, .. } = stamped.event {
                states.push(state);
            }
        }
        assert_eq!(states.first(), Some(&JobState::Started));
        assert_eq!(states.last(), Some(&JobState::Finished));
        drop(watcher);
        bus.publish(job(JobState::Started, 0));
        assert!(
            bus.watchers.lock().unwrap().as_ref().unwrap().is_empty(),
            "a watcher that left is forgotten"
        );
    }

    #[test]
    fn closing_ends_every_watch_after_what_it_holds() {
        let bus = EventBus::new();
        let mut watcher = bus.subscribe();
        let loaded = DaemonEvent::Model {
            model: "m".into(),
            state: ModelState::Loaded,
            memory: Footprint::host(1),
            reason: String::new(),
        };
        bus.publish(loaded.clone());
        bus.close();
        let next = futures::executor::block_on(watcher.recv());
        assert_eq!(next.map(|s| s.event), Some(loaded));
        assert!(
            futures::executor::block_on(watcher.recv()).is_none(),
            "then the watch ends"
        );
        let mut late = bus.subscribe();
        assert!(
            futures::executor::block_on(late.recv()).is_none(),
            "a watch after closing ends at once"
        );
    }
}
