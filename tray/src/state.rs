//! The tray's state machine: what the daemon is doing, as far as the tray has been told.
//!
//! [`TrayState`] is pure: it is fed [`Input`]s (a status snapshot when the watcher connects,
//! each `DaemonEvent` from `WatchEvents`, a lost connection, the outcome of a menu action) and
//! answers with [`Effect`]s (a notification to show). Everything the desktop sees — title,
//! tooltip, icon status, which pixmap, the menu — is read from [`TrayState::view`] as plain
//! data, so the D-Bus face only copies it and the tests need no desktop.
//!
//! Phases, most urgent first: a running job (generating, with progress), a model loading, the
//! last job's failure (an error, until the next job or a reconnection), idle; without a
//! connection: starting (the menu asked for a daemon), unreachable (an error that is not "no
//! daemon"), stopped.

use std::collections::BTreeMap;

use easel_proto::units::human_bytes;
use easel_proto::v1 as pb;

/// Something that happened, as the tray learns it.
#[derive(Debug, Clone)]
pub enum Input {
    /// The watcher connected: the daemon's status and its resident models.
    Connected {
        status: pb::StatusReply,
        running: pb::ListRunningReply,
    },
    /// One event from `WatchEvents`.
    Event(pb::DaemonEvent),
    /// No daemon listens (or the one we watched went away).
    Disconnected,
    /// The daemon could not be reached for another reason than "not running" (a socket of
    /// another user, a broken connection); the message says what to do.
    Unreachable(String),
    /// The menu's Start daemon was chosen: a daemon is on its way.
    Starting,
    /// Starting the daemon failed; the message says why.
    StartFailed(String),
    /// Start at login was switched on or off.
    Autostart(bool),
}

/// What the tray should do besides redrawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Show a desktop notification.
    Notify(Notification),
}

/// A desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
    /// Errors are shown as critical (they stay until dismissed on most desktops).
    pub critical: bool,
}

/// The broad state the icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glyph {
    Stopped,
    Idle,
    Loading,
    Generating,
    Error,
}

/// Which pixmap to draw: the glyph, and for a job the progress in tenths (0–10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IconChoice {
    pub glyph: Glyph,
    pub progress_tenths: Option<u8>,
}

/// The StatusNotifierItem `Status` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconStatus {
    /// Nothing to see (no daemon): hosts may tuck the icon away.
    Passive,
    /// The daemon is up.
    Active,
    /// Something failed and wants a look.
    NeedsAttention,
}

/// What a menu item does when clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cancel the running job with this id.
    Cancel {
        job_id: String,
    },
    StartDaemon,
    StopDaemon,
    OpenImagesFolder,
    ShowLastImage,
    CopyLastImagePath,
    UnloadModels,
    ViewLog,
    /// Switch start at login on (true) or off (false).
    SetAutostart(bool),
    Quit,
}

/// One entry of the menu, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuEntry {
    Item(MenuItem),
    Separator,
}

/// A menu item: a label, whether it can be clicked, a checkmark if it has one, and what it
/// does (none for status lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuItem {
    pub label: String,
    pub enabled: bool,
    pub checked: Option<bool>,
    pub action: Option<Action>,
}

/// The menu's labels, shared with the tests that look items up by them.
pub mod labels {
    pub const CANCEL: &str = "Cancel job";
    pub const START: &str = "Start daemon";
    pub const STOP: &str = "Stop daemon";
    pub const OPEN_IMAGES: &str = "Open images folder";
    pub const SHOW_LAST: &str = "Show last image";
    pub const COPY_LAST: &str = "Copy last image path";
    pub const UNLOAD: &str = "Unload models";
    pub const VIEW_LOG: &str = "View log";
    pub const AUTOSTART: &str = "Start at login";
    pub const QUIT: &str = "Quit";
}

/// Everything the desktop shows, derived from the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub title: String,
    pub tooltip_title: String,
    pub tooltip_body: String,
    pub status: IconStatus,
    pub icon: IconChoice,
    pub menu: Vec<MenuEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Daemon {
    version: String,
    device: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    memory_bytes: u64,
    /// On a GPU: what it takes there (memory_bytes is then its share of RAM).
    vram_bytes: u64,
    loading: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    id: String,
    model: String,
    running: bool,
    step: u32,
    total: u32,
}

/// The tray's picture of the daemon.
#[derive(Debug, Clone, Default)]
pub struct TrayState {
    daemon: Option<Daemon>,
    starting: bool,
    unreachable: Option<String>,
    models: BTreeMap<String, Model>,
    /// Known jobs in the order the tray heard of them.
    jobs: Vec<Job>,
    /// Jobs the status snapshot counted but whose ids no event has named yet.
    unnamed_running: u32,
    error: Option<String>,
    autostart: bool,
}

impl TrayState {
    /// A tray that has not reached a daemon yet; `autostart` is whether start at login is on.
    pub fn new(autostart: bool) -> Self {
        Self {
            autostart,
            ..Self::default()
        }
    }

    /// Takes one input in; returns what to do besides redrawing.
    pub fn apply(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::Connected { status, running } => {
                self.daemon = Some(Daemon {
                    version: status.version,
                    device: status.device,
                });
                self.starting = false;
                self.unreachable = None;
                self.error = None;
                self.models = running
                    .models
                    .into_iter()
                    .map(|m| {
                        (
                            m.name,
                            Model {
                                memory_bytes: m.memory_bytes,
                                vram_bytes: m.vram_bytes,
                                loading: false,
                            },
                        )
                    })
                    .collect();
                // The snapshot has counts, not ids: jobs are named by their next event.
                self.jobs.clear();
                self.unnamed_running = status.running_jobs;
                Vec::new()
            }
            Input::Event(event) => self.apply_event(event),
            Input::Disconnected => {
                self.forget_daemon();
                self.unreachable = None;
                Vec::new()
            }
            Input::Unreachable(message) => {
                self.forget_daemon();
                self.unreachable = Some(message);
                Vec::new()
            }
            Input::Starting => {
                if self.daemon.is_none() {
                    self.starting = true;
                }
                Vec::new()
            }
            Input::StartFailed(message) => {
                self.starting = false;
                vec![notify_error("Cannot start easeld", &message)]
            }
            Input::Autostart(on) => {
                self.autostart = on;
                Vec::new()
            }
        }
    }

    fn forget_daemon(&mut self) {
        self.daemon = None;
        self.starting = false;
        self.models.clear();
        self.jobs.clear();
        self.unnamed_running = 0;
        self.error = None;
    }

    fn apply_event(&mut self, event: pb::DaemonEvent) -> Vec<Effect> {
        match event.event {
            Some(pb::daemon_event::Event::Job(job)) => self.apply_job(job),
            Some(pb::daemon_event::Event::Model(model)) => {
                self.apply_model(model);
                Vec::new()
            }
            // Imports and pulls are the CLI's to show; the tray keeps to jobs and models.
            Some(pb::daemon_event::Event::Import(_)) | None => Vec::new(),
        }
    }

    fn apply_job(&mut self, event: pb::JobEvent) -> Vec<Effect> {
        self.unnamed_running = 0;
        let index = self.jobs.iter().position(|j| j.id == event.job_id);
        match event.state.as_str() {
            "queued" | "started" | "progress" => {
                let job = match index {
                    Some(i) => &mut self.jobs[i],
                    None => {
                        self.jobs.push(Job {
                            id: event.job_id.clone(),
                            model: event.model.clone(),
                            running: false,
                            step: 0,
                            total: 0,
                        });
                        self.jobs.last_mut().expect("just pushed")
                    }
                };
                if event.state != "queued" {
                    job.running = true;
                }
                if event.state == "progress" {
                    job.step = event.step;
                    job.total = event.total;
                }
                // A new job is a fresh start: the last one's failure is old news.
                self.error = None;
                Vec::new()
            }
            "finished" => {
                let model = index.map(|i| self.jobs.remove(i).model).unwrap_or(event.model);
                vec![Effect::Notify(Notification {
                    summary: "Image ready".into(),
                    body: format!("Job {} on {model} finished.", event.job_id),
                    critical: false,
                })]
            }
            "cancelled" => {
                if let Some(i) = index {
                    self.jobs.remove(i);
                }
                Vec::new()
            }
            "failed" => {
                if let Some(i) = index {
                    self.jobs.remove(i);
                }
                let message = format!("job {} failed: {}", event.job_id, event.message);
                self.error = Some(message.clone());
                vec![notify_error("Generation failed", &message)]
            }
            // A state this tray does not know yet (a newer daemon): nothing to show for it.
            _ => Vec::new(),
        }
    }

    fn apply_model(&mut self, event: pb::ModelEvent) {
        match event.state.as_str() {
            "loading" => {
                self.models.insert(
                    event.model,
                    Model {
                        memory_bytes: 0,
                        vram_bytes: 0,
                        loading: true,
                    },
                );
            }
            "loaded" => {
                self.models.insert(
                    event.model,
                    Model {
                        memory_bytes: event.memory_bytes,
                        vram_bytes: event.vram_bytes,
                        loading: false,
                    },
                );
            }
            "unloaded" | "evicted" | "removed" => {
                self.models.remove(&event.model);
            }
            _ => {}
        }
    }

    /// The running job (the first one the tray heard of), if any.
    fn running_job(&self) -> Option<&Job> {
        self.jobs.iter().find(|j| j.running)
    }

    fn glyph(&self) -> Glyph {
        if self.daemon.is_none() {
            return if self.unreachable.is_some() {
                Glyph::Error
            } else if self.starting {
                Glyph::Loading
            } else {
                Glyph::Stopped
            };
        }
        if self.running_job().is_some() || self.unnamed_running > 0 {
            Glyph::Generating
        } else if self.models.values().any(|m| m.loading) {
            Glyph::Loading
        } else if self.error.is_some() {
            Glyph::Error
        } else {
            Glyph::Idle
        }
    }

    /// One line saying what the daemon is doing.
    fn headline(&self) -> String {
        match self.glyph() {
            Glyph::Stopped => "stopped".into(),
            Glyph::Loading if self.daemon.is_none() => "starting the daemon".into(),
            Glyph::Loading => {
                let loading: Vec<&str> = self
                    .models
                    .iter()
                    .filter(|(_, m)| m.loading)
                    .map(|(name, _)| name.as_str())
                    .collect();
                format!("loading {}", loading.join(", "))
            }
            Glyph::Generating => match self.running_job() {
                Some(job) if job.total > 0 => {
                    format!("generating {}% ({}/{})", percent(job), job.step, job.total)
                }
                Some(_) => "generating".into(),
                None => format!("{} job(s) running", self.unnamed_running),
            },
            Glyph::Error => "error".into(),
            Glyph::Idle => "idle".into(),
        }
    }

    /// What the desktop shows now.
    pub fn view(&self) -> View {
        let glyph = self.glyph();
        let title = format!("easel: {}", self.headline());
        let status = match glyph {
            Glyph::Stopped => IconStatus::Passive,
            Glyph::Error => IconStatus::NeedsAttention,
            _ => IconStatus::Active,
        };
        let progress_tenths = match (glyph, self.running_job()) {
            (Glyph::Generating, Some(job)) if job.total > 0 => {
                Some((job.step.min(job.total) as u64 * 10 / job.total as u64) as u8)
            }
            (Glyph::Generating, _) => Some(0),
            _ => None,
        };
        let mut body = vec![self.status_line()];
        body.extend(self.model_lines());
        if let Some(line) = self.job_line() {
            body.push(line);
        }
        if let Some(error) = self.error.as_ref().or(self.unreachable.as_ref()) {
            body.push(format!("Error: {error}"));
        }
        View {
            tooltip_title: title.clone(),
            title,
            tooltip_body: body.join("\n"),
            status,
            icon: IconChoice { glyph, progress_tenths },
            menu: self.menu(),
        }
    }

    fn status_line(&self) -> String {
        match &self.daemon {
            Some(d) => format!("easeld {} on {}", d.version, d.device),
            None if self.starting => "Starting easeld…".into(),
            None => "easeld is not running".into(),
        }
    }

    fn model_lines(&self) -> Vec<String> {
        if self.daemon.is_none() {
            return Vec::new();
        }
        if self.models.is_empty() {
            return vec!["No models loaded".into()];
        }
        self.models
            .iter()
            .map(|(name, m)| {
                if m.loading {
                    format!("{name}: loading…")
                } else if m.vram_bytes > 0 {
                    format!(
                        "{name}: {} VRAM + {} RAM",
                        human_bytes(m.vram_bytes),
                        human_bytes(m.memory_bytes)
                    )
                } else {
                    format!("{name}: {}", human_bytes(m.memory_bytes))
                }
            })
            .collect()
    }

    fn job_line(&self) -> Option<String> {
        let job = self.running_job()?;
        let queued = self.jobs.iter().filter(|j| !j.running).count();
        let mut line = if job.total > 0 {
            format!(
                "Job {} on {}: step {}/{} ({}%)",
                job.id,
                job.model,
                job.step,
                job.total,
                percent(job)
            )
        } else {
            format!("Job {} on {}: starting", job.id, job.model)
        };
        if queued > 0 {
            line.push_str(&format!(", {queued} queued"));
        }
        Some(line)
    }

    fn menu(&self) -> Vec<MenuEntry> {
        let up = self.daemon.is_some();
        let mut menu = vec![info(self.status_line())];
        menu.extend(self.model_lines().into_iter().map(info));
        if let Some(line) = self.job_line() {
            menu.push(info(line));
        }
        let running = self.running_job();
        menu.push(item(
            labels::CANCEL,
            running.is_some(),
            running.map(|job| Action::Cancel { job_id: job.id.clone() }),
        ));
        menu.push(MenuEntry::Separator);
        menu.push(item(labels::START, !up && !self.starting, Some(Action::StartDaemon)));
        menu.push(item(labels::STOP, up, Some(Action::StopDaemon)));
        menu.push(item(
            labels::UNLOAD,
            up && self.models.values().any(|m| !m.loading),
            Some(Action::UnloadModels),
        ));
        menu.push(MenuEntry::Separator);
        menu.push(item(labels::OPEN_IMAGES, true, Some(Action::OpenImagesFolder)));
        menu.push(item(labels::SHOW_LAST, true, Some(Action::ShowLastImage)));
        menu.push(item(labels::COPY_LAST, true, Some(Action::CopyLastImagePath)));
        menu.push(item(labels::VIEW_LOG, true, Some(Action::ViewLog)));
        menu.push(MenuEntry::Separator);
        menu.push(MenuEntry::Item(MenuItem {
            label: labels::AUTOSTART.into(),
            enabled: true,
            checked: Some(self.autostart),
            action: Some(Action::SetAutostart(!self.autostart)),
        }));
        menu.push(item(labels::QUIT, true, Some(Action::Quit)));
        menu
    }
}

fn percent(job: &Job) -> u32 {
    (job.step.min(job.total) as u64 * 100 / job.total.max(1) as u64) as u32
}

fn info(label: String) -> MenuEntry {
    MenuEntry::Item(MenuItem {
        label,
        enabled: false,
        checked: None,
        action: None,
    })
}

fn item(label: &str, enabled: bool, action: Option<Action>) -> MenuEntry {
    MenuEntry::Item(MenuItem {
        label: label.into(),
        enabled,
        checked: None,
        action,
    })
}

fn notify_error(summary: &str, message: &str) -> Effect {
    Effect::Notify(Notification {
        summary: summary.into(),
        body: message.into(),
        critical: true,
    })
}

impl View {
    /// The menu item with this label, if the menu has one.
    pub fn item(&self, label: &str) -> Option<&MenuItem> {
        self.menu.iter().find_map(|entry| match entry {
            MenuEntry::Item(item) if item.label == label => Some(item),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(running_jobs: u32, models: &[(&str, u64)]) -> Input {
        Input::Connected {
            status: pb::StatusReply {
                version: "0.1.0".into(),
                device: "cpu".into(),
                running_jobs,
                ..Default::default()
            },
            running: pb::ListRunningReply {
                models: models
                    .iter()
                    .map(|(name, memory)| pb::RunningModel {
                        name: (*name).into(),
                        memory_bytes: *memory,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn job(id: &str, state: &str, step: u32, total: u32) -> Input {
        Input::Event(pb::DaemonEvent {
            unix_ms: 0,
            event: Some(pb::daemon_event::Event::Job(pb::JobEvent {
                job_id: id.into(),
                model: "tiny-shapes".into(),
                state: state.into(),
                step,
                total,
                message: if state == "failed" {
                    "out of memory".into()
                } else {
                    String::new()
                },
                ..Default::default()
            })),
        })
    }

    fn model(name: &str, state: &str, memory: u64) -> Input {
        Input::Event(pb::DaemonEvent {
            unix_ms: 0,
            event: Some(pb::daemon_event::Event::Model(pb::ModelEvent {
                model: name.into(),
                state: state.into(),
                memory_bytes: memory,
                ..Default::default()
            })),
        })
    }

    fn cancel(view: &View) -> &MenuItem {
        view.item(labels::CANCEL).expect("the menu always has Cancel")
    }

    #[test]
    fn a_model_on_a_gpu_shows_its_vram_and_its_ram() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(Input::Event(pb::DaemonEvent {
            unix_ms: 0,
            event: Some(pb::daemon_event::Event::Model(pb::ModelEvent {
                model: "sdxl".into(),
                state: "loaded".into(),
                memory_bytes: 1 << 29,
                vram_bytes: 7 << 30,
                ..Default::default()
            })),
        }));
        let view = state.view();
        assert!(
            view.item("sdxl: 7.0 GiB VRAM + 512.0 MiB RAM").is_some(),
            "{:?}",
            view.menu
        );
    }

    #[test]
    fn a_new_tray_shows_a_stopped_daemon() {
        let view = TrayState::new(false).view();
        assert_eq!(view.title, "easel: stopped");
        assert_eq!(view.status, IconStatus::Passive);
        assert_eq!(
            view.icon,
            IconChoice {
                glyph: Glyph::Stopped,
                progress_tenths: None
            }
        );
        assert!(view.tooltip_body.contains("not running"), "{}", view.tooltip_body);
        assert!(view.item(labels::START).unwrap().enabled);
        assert!(!view.item(labels::STOP).unwrap().enabled);
        assert!(!view.item(labels::UNLOAD).unwrap().enabled);
        assert!(!cancel(&view).enabled);
        assert_eq!(cancel(&view).action, None);
    }

    #[test]
    fn connecting_shows_idle_with_version_device_and_models_with_memory() {
        let mut state = TrayState::new(false);
        assert!(state.apply(connected(0, &[("tiny-shapes", 3 << 20)])).is_empty());
        let view = state.view();
        assert_eq!(view.title, "easel: idle");
        assert_eq!(view.status, IconStatus::Active);
        assert_eq!(view.icon.glyph, Glyph::Idle);
        let MenuEntry::Item(first) = &view.menu[0] else {
            panic!("the menu starts with the status line")
        };
        assert_eq!(first.label, "easeld 0.1.0 on cpu");
        assert!(!first.enabled);
        let memory_line = format!("tiny-shapes: {}", human_bytes(3 << 20));
        assert_eq!(memory_line, "tiny-shapes: 3.0 MiB");
        assert!(view.item(&memory_line).is_some(), "{:?}", view.menu);
        assert!(view.tooltip_body.contains(&memory_line), "{}", view.tooltip_body);
        assert!(!view.item(labels::START).unwrap().enabled);
        assert!(view.item(labels::STOP).unwrap().enabled);
        assert!(view.item(labels::UNLOAD).unwrap().enabled);
        assert!(!cancel(&view).enabled);
    }

    #[test]
    fn no_models_loaded_says_so_and_unload_is_disabled() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        let view = state.view();
        assert!(view.item("No models loaded").is_some());
        assert!(!view.item(labels::UNLOAD).unwrap().enabled);
    }

    #[test]
    fn a_loading_model_shows_loading_then_its_memory() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(model("sd15", "loading", 0));
        let view = state.view();
        assert_eq!(view.title, "easel: loading sd15");
        assert_eq!(view.icon.glyph, Glyph::Loading);
        assert_eq!(view.status, IconStatus::Active);
        assert!(view.item("sd15: loading…").is_some());
        assert!(!view.item(labels::UNLOAD).unwrap().enabled, "nothing loaded yet");

        state.apply(model("sd15", "loaded", 2 << 30));
        let view = state.view();
        assert_eq!(view.title, "easel: idle");
        assert!(view.item("sd15: 2.0 GiB").is_some(), "{:?}", view.menu);
        assert!(view.item(labels::UNLOAD).unwrap().enabled);

        state.apply(model("sd15", "unloaded", 0));
        assert!(state.view().item("No models loaded").is_some());
        state.apply(model("sd15", "loaded", 1));
        state.apply(model("sd15", "evicted", 0));
        assert!(state.view().item("No models loaded").is_some());
    }

    #[test]
    fn a_job_goes_from_queued_to_generating_with_progress_to_finished_with_a_notification() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(job("j1", "queued", 0, 0));
        let view = state.view();
        assert_eq!(view.icon.glyph, Glyph::Idle, "queued is not running yet");
        assert!(!cancel(&view).enabled);

        state.apply(job("j1", "started", 0, 0));
        let view = state.view();
        assert_eq!(view.title, "easel: generating");
        assert_eq!(
            view.icon,
            IconChoice {
                glyph: Glyph::Generating,
                progress_tenths: Some(0)
            }
        );
        assert!(cancel(&view).enabled);
        assert_eq!(cancel(&view).action, Some(Action::Cancel { job_id: "j1".into() }));

        state.apply(job("j1", "progress", 8, 20));
        let view = state.view();
        assert_eq!(view.title, "easel: generating 40% (8/20)");
        assert_eq!(view.tooltip_title, view.title);
        assert_eq!(view.icon.progress_tenths, Some(4));
        assert!(
            view.tooltip_body.contains("Job j1 on tiny-shapes: step 8/20 (40%)"),
            "{}",
            view.tooltip_body
        );
        assert!(view.item("Job j1 on tiny-shapes: step 8/20 (40%)").is_some());

        let effects = state.apply(job("j1", "finished", 0, 0));
        assert_eq!(
            effects,
            [Effect::Notify(Notification {
                summary: "Image ready".into(),
                body: "Job j1 on tiny-shapes finished.".into(),
                critical: false,
            })]
        );
        let view = state.view();
        assert_eq!(view.title, "easel: idle");
        assert_eq!(view.icon.progress_tenths, None);
        assert!(!cancel(&view).enabled);
    }

    #[test]
    fn progress_is_drawn_in_tenths_and_never_past_full() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        for (step, tenths) in [(1, 0), (99, 0), (100, 1), (999, 9), (1000, 10), (1200, 10)] {
            state.apply(job("j", "progress", step, 1000));
            assert_eq!(state.view().icon.progress_tenths, Some(tenths), "step {step}");
        }
    }

    #[test]
    fn cancel_targets_the_running_job_not_a_queued_one() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(job("queued-first", "queued", 0, 0));
        state.apply(job("runs", "started", 0, 0));
        let view = state.view();
        assert_eq!(cancel(&view).action, Some(Action::Cancel { job_id: "runs".into() }));
        state.apply(job("runs", "cancelled", 0, 0));
        let view = state.view();
        assert!(!cancel(&view).enabled, "the other job only waits");
        state.apply(job("queued-first", "started", 0, 0));
        assert_eq!(
            cancel(&state.view()).action,
            Some(Action::Cancel {
                job_id: "queued-first".into()
            })
        );
    }

    #[test]
    fn a_cancelled_job_makes_no_notification() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(job("j", "progress", 1, 10));
        assert!(state.apply(job("j", "cancelled", 0, 0)).is_empty());
        assert_eq!(state.view().title, "easel: idle");
    }

    #[test]
    fn a_failed_job_is_an_error_until_the_next_job() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        state.apply(job("j", "progress", 1, 10));
        let effects = state.apply(job("j", "failed", 0, 0));
        assert_eq!(effects.len(), 1);
        let Effect::Notify(note) = &effects[0];
        assert!(note.critical);
        assert!(note.body.contains("out of memory"), "{note:?}");
        let view = state.view();
        assert_eq!(view.title, "easel: error");
        assert_eq!(view.status, IconStatus::NeedsAttention);
        assert_eq!(view.icon.glyph, Glyph::Error);
        assert!(
            view.tooltip_body.contains("job j failed: out of memory"),
            "{}",
            view.tooltip_body
        );

        state.apply(job("k", "queued", 0, 0));
        assert_eq!(state.view().title, "easel: idle");
    }

    #[test]
    fn losing_the_daemon_goes_back_to_stopped_and_forgets_jobs_and_models() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[("m", 10)]));
        state.apply(job("j", "failed", 0, 0));
        assert_eq!(state.view().icon.glyph, Glyph::Error);
        state.apply(job("k", "progress", 1, 10));
        state.apply(Input::Disconnected);
        let view = state.view();
        assert_eq!(view.title, "easel: stopped");
        assert_eq!(view.status, IconStatus::Passive);
        assert!(!cancel(&view).enabled);
        assert!(view.item("m: 10 B").is_none());
        assert!(view.item(labels::START).unwrap().enabled);
    }

    #[test]
    fn an_unreachable_daemon_is_an_error_with_the_reason() {
        let mut state = TrayState::new(false);
        state.apply(Input::Unreachable("permission denied: run as the owner".into()));
        let view = state.view();
        assert_eq!(view.status, IconStatus::NeedsAttention);
        assert!(view.tooltip_body.contains("permission denied"), "{}", view.tooltip_body);
        state.apply(Input::Disconnected);
        assert_eq!(state.view().title, "easel: stopped");
    }

    #[test]
    fn starting_disables_start_until_connected_or_failed() {
        let mut state = TrayState::new(false);
        state.apply(Input::Starting);
        let view = state.view();
        assert_eq!(view.title, "easel: starting the daemon");
        assert!(!view.item(labels::START).unwrap().enabled);
        let effects = state.apply(Input::StartFailed("easeld exited".into()));
        assert!(matches!(&effects[..], [Effect::Notify(n)] if n.critical && n.body == "easeld exited"));
        assert!(state.view().item(labels::START).unwrap().enabled);
        state.apply(Input::Starting);
        state.apply(connected(0, &[]));
        assert_eq!(state.view().title, "easel: idle");
    }

    #[test]
    fn a_snapshot_with_running_jobs_shows_generating_until_an_event_names_them() {
        let mut state = TrayState::new(false);
        state.apply(connected(2, &[]));
        let view = state.view();
        assert_eq!(view.title, "easel: 2 job(s) running");
        assert_eq!(view.icon.glyph, Glyph::Generating);
        assert!(!cancel(&view).enabled, "no id to cancel yet");
        state.apply(job("j", "progress", 5, 10));
        let view = state.view();
        assert!(cancel(&view).enabled);
        assert_eq!(view.title, "easel: generating 50% (5/10)");
    }

    #[test]
    fn start_at_login_is_a_checkmark_that_toggles() {
        let mut state = TrayState::new(false);
        let item = state.view().item(labels::AUTOSTART).cloned().unwrap();
        assert_eq!(item.checked, Some(false));
        assert_eq!(item.action, Some(Action::SetAutostart(true)));
        state.apply(Input::Autostart(true));
        let item = state.view().item(labels::AUTOSTART).cloned().unwrap();
        assert_eq!(item.checked, Some(true));
        assert_eq!(item.action, Some(Action::SetAutostart(false)));
    }

    #[test]
    fn unknown_states_change_nothing() {
        let mut state = TrayState::new(false);
        state.apply(connected(0, &[]));
        let before = state.view();
        assert!(state.apply(job("j", "teleported", 0, 0)).is_empty());
        state.apply(model("m", "installed", 0));
        assert_eq!(state.view(), before);
    }
}
