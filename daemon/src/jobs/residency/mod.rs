//! Residency: the one owner of loaded models, like Ollama's scheduler.
//!
//! A model loads on first use and stays resident for its `keep_alive` after the last job that
//! used it (per request, else the daemon's default; negative = forever, 0 = unload as soon as it
//! is idle). Models live inside a memory budget: loading one that does not fit first evicts idle
//! models, least recently used first — never one a job is using. When the budget is taken by
//! models in use, the load waits for one of them to be released; when the model alone is larger
//! than the budget it fails at once with [`ResidencyError::TooLarge`] (RESOURCE_EXHAUSTED).
//!
//! How much memory a model takes is measured by the [`Backend`] (the real one: the daemon's
//! resident-memory growth while loading it, and on a GPU the device memory it took). Before the
//! first load only an estimate exists (the size of its weights on disk), used to make room up
//! front. Memory is a [`Footprint`]: RAM and VRAM, each with its own budget; a model or a job
//! fits only when it fits in both, and eviction makes room in whichever is short.
//!
//! The logic is generic over a [`Backend`] (the real one, [`ort::OrtBackend`], opens ONNX
//! sessions), so eviction order, timers and reference counts are
//! unit-tested with a fake one and an explicit clock: every method takes `now`.

pub mod footprint;
pub mod ort;

pub use footprint::{Footprint, Memory};

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use easel_proto::units::human_bytes;

use crate::config::KeepAlive;

/// What loads and measures models. The real one opens ONNX sessions; tests use a fake.
pub trait Backend: Send + Sync {
    /// What loading needs (the real backend: the opened model folder).
    type Spec: Send + Sync;
    type Model: Send;
    /// Loads a model; returns it with the memory it takes, measured.
    fn load(&self, spec: &Self::Spec) -> Result<(Self::Model, Footprint), String>;
    /// The memory a model is expected to take before it was ever loaded (its weights' size).
    fn estimate(&self, spec: &Self::Spec) -> Footprint;
    /// Where a job's working memory of `bytes` lives: beside the weights, so in host memory
    /// for a CPU backend and on the device for a GPU one.
    fn working(&self, bytes: u64) -> Footprint {
        Footprint::host(bytes)
    }
    /// Called after a model was dropped (the real backend returns freed memory to the system).
    fn unloaded(&self) {}
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResidencyError {
    #[error(
        "model `{model}` needs about {} but the {} is {}; raise {} or use a smaller model",
        human_bytes(*needed),
        memory.budget_name(),
        human_bytes(*budget),
        memory.setting()
    )]
    TooLarge {
        model: String,
        memory: Memory,
        needed: u64,
        budget: u64,
    },
    #[error(
        "this request needs about {} of working memory while it runs, and model `{model}` {} more; the {} is {}: use a smaller size or fewer images at once, or raise {}",
        human_bytes(*working),
        human_bytes(*weights),
        memory.budget_name(),
        human_bytes(*budget),
        memory.setting()
    )]
    WorkingTooLarge {
        model: String,
        memory: Memory,
        working: u64,
        weights: u64,
        budget: u64,
    },
    #[error("loading model `{model}` failed: {message}")]
    Load { model: String, message: String },
    #[error("cancelled while waiting for memory")]
    Cancelled,
}

/// Why a model left memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadReason {
    /// Its keep-alive ran out.
    Expired,
    /// Someone asked (`easel unload`, or keep-alive 0 after its job).
    Requested,
    /// Another model needed the memory.
    Evicted,
    /// The daemon is stopping.
    Shutdown,
}

impl UnloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnloadReason::Expired => "expired",
            UnloadReason::Requested => "requested",
            UnloadReason::Evicted => "evicted",
            UnloadReason::Shutdown => "shutdown",
        }
    }
}

/// What residency reports as it happens (the daemon forwards these to WatchEvents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencyEvent {
    Loading {
        model: String,
    },
    Loaded {
        model: String,
        memory: Footprint,
        took: Duration,
    },
    Unloaded {
        model: String,
        memory: Footprint,
        reason: UnloadReason,
    },
}

impl ResidencyEvent {
    /// Logs loads and unloads (the model's name and sizes only).
    pub fn log(&self) {
        match self {
            ResidencyEvent::Loading { .. } => {}
            ResidencyEvent::Loaded { model, memory, took } => {
                tracing::info!(
                    %model,
                    load_ms = took.as_millis() as u64,
                    memory = memory.host,
                    vram = memory.device,
                    "model loaded"
                );
            }
            ResidencyEvent::Unloaded { model, reason, .. } => {
                tracing::info!(%model, reason = reason.as_str(), "model unloaded");
            }
        }
    }
}

/// A resident model for `easel ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub key: String,
    pub name: String,
    pub memory: Footprint,
    /// Working memory of the jobs running on it now (estimated).
    pub working: Footprint,
    pub in_use: u32,
    /// `None`: never expires (keep-alive forever). While in use: counted from now.
    pub expires: Option<Instant>,
}

/// A model handed to a job; give it back with [`Residency::release`].
#[derive(Debug)]
pub struct Lease<M> {
    pub key: String,
    pub model: Arc<Mutex<M>>,
    /// The working memory this lease holds in the budget.
    pub working: Footprint,
}

struct Resident<M> {
    key: String,
    name: String,
    model: Arc<Mutex<M>>,
    memory: Footprint,
    /// Working memory of the jobs using it now.
    working: Footprint,
    in_use: u32,
    last_used: Instant,
    keep_alive: KeepAlive,
    /// Unload as soon as it is idle (asked while in use).
    unload_when_idle: bool,
}

impl<M> Resident<M> {
    fn expires(&self, now: Instant) -> Option<Instant> {
        let from = if self.in_use > 0 { now } else { self.last_used };
        match self.keep_alive {
            KeepAlive::Forever => None,
            // Parsing caps durations, but a far deadline must never overflow the clock.
            KeepAlive::For(d) => from.checked_add(d),
        }
    }
}

struct State<M> {
    models: Vec<Resident<M>>,
    /// Measured sizes of models loaded before, by key: a better estimate than the file size.
    measured: HashMap<String, Footprint>,
    /// A load is in progress (loads run one at a time, so each is measured alone).
    loading: bool,
    /// Per model key: the largest ratio of measured to modelled working memory its jobs showed
    /// (the model of `generation::memory` is right in shape, this makes it right in size).
    calibration: HashMap<String, f64>,
}

pub struct Residency<B: Backend> {
    backend: B,
    budget: Footprint,
    default_keep_alive: KeepAlive,
    state: Mutex<State<B::Model>>,
    changed: Condvar,
    on_event: Box<dyn Fn(ResidencyEvent) + Send + Sync>,
}

impl<B: Backend> fmt::Debug for Residency<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Residency")
            .field("budget", &self.budget)
            .field("default_keep_alive", &self.default_keep_alive)
            .finish()
    }
}

impl<B: Backend> Residency<B> {
    /// `budget`: host memory and device memory (0 on a CPU daemon) that models and jobs share.
    pub fn new(
        backend: B,
        budget: Footprint,
        default_keep_alive: KeepAlive,
        on_event: impl Fn(ResidencyEvent) + Send + Sync + 'static,
    ) -> Self {
        Self {
            backend,
            budget,
            default_keep_alive,
            state: Mutex::new(State {
                models: Vec::new(),
                measured: HashMap::new(),
                loading: false,
                calibration: HashMap::new(),
            }),
            changed: Condvar::new(),
            on_event: Box::new(on_event),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn budget(&self) -> Footprint {
        self.budget
    }

    fn lock(&self) -> MutexGuard<'_, State<B::Model>> {
        self.state.lock().expect("residency lock")
    }

    /// The model `key` (named `name` in reports), loading it if it is not resident — after
    /// making room by evicting idle models, least recently used first. Blocks while the
    /// budget is held by models in use. `keep_alive` (None: the default) replaces the model's.
    pub fn acquire(
        &self,
        key: &str,
        name: &str,
        spec: &B::Spec,
        keep_alive: Option<KeepAlive>,
        now: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Lease<B::Model>, ResidencyError> {
        self.acquire_for_job(key, name, spec, keep_alive, Footprint::ZERO, now, cancelled)
    }

    /// [`Residency::acquire`] for a job that needs `working` bytes beyond the weights while it
    /// runs: they count in the budget until the lease is released, so idle models make room
    /// for them and other jobs wait for them as for weights.
    #[allow(clippy::too_many_arguments)]
    pub fn acquire_for_job(
        &self,
        key: &str,
        name: &str,
        spec: &B::Spec,
        keep_alive: Option<KeepAlive>,
        working: Footprint,
        now: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Lease<B::Model>, ResidencyError> {
        let keep_alive = keep_alive.unwrap_or(self.default_keep_alive);
        let mut state = self.lock();
        loop {
            if let Some(index) = state.models.iter().position(|m| m.key == key) {
                // Pinned first, so making room for the working memory never evicts it.
                state.models[index].in_use += 1;
                self.evict_until_fits(&mut state, working);
                let others_busy = state.models.iter().any(|m| m.key != key && m.in_use > 0)
                    || state.models.iter().any(|m| m.key == key && !m.working.is_zero());
                if !(used(&state) + working).fits_in(self.budget) && others_busy {
                    // Jobs running now hold the memory: wait for one to end.
                    if let Some(resident) = state.models.iter_mut().find(|m| m.key == key) {
                        resident.in_use -= 1;
                    }
                    if cancelled() {
                        return Err(ResidencyError::Cancelled);
                    }
                    state = self.wait(state);
                    continue;
                }
                let resident = state.models.iter_mut().find(|m| m.key == key).expect("pinned");
                resident.working += working;
                resident.keep_alive = keep_alive;
                resident.unload_when_idle = false;
                return Ok(Lease {
                    key: key.to_string(),
                    model: resident.model.clone(),
                    working,
                });
            }
            if cancelled() {
                return Err(ResidencyError::Cancelled);
            }
            if state.loading {
                state = self.wait(state);
                continue;
            }
            let needed = state
                .measured
                .get(key)
                .copied()
                .unwrap_or_else(|| self.backend.estimate(spec));
            if let Some(memory) = needed.exceeds(self.budget) {
                return Err(ResidencyError::TooLarge {
                    model: name.to_string(),
                    memory,
                    needed: needed.get(memory),
                    budget: self.budget.get(memory),
                });
            }
            self.evict_until_fits(&mut state, needed + working);
            if !(used(&state) + needed + working).fits_in(self.budget) && state.models.iter().any(|m| m.in_use > 0) {
                // Everything left is in use: wait for a release (or a cancel).
                state = self.wait(state);
                continue;
            }
            state.loading = true;
            drop(state);
            (self.on_event)(ResidencyEvent::Loading {
                model: name.to_string(),
            });
            let started = Instant::now();
            let loaded = self.backend.load(spec);
            let took = started.elapsed();
            state = self.lock();
            state.loading = false;
            self.changed.notify_all();
            let (model, memory) = loaded.map_err(|message| ResidencyError::Load {
                model: name.to_string(),
                message,
            })?;
            state.measured.insert(key.to_string(), memory);
            let model = Arc::new(Mutex::new(model));
            state.models.push(Resident {
                key: key.to_string(),
                name: name.to_string(),
                model: model.clone(),
                memory,
                working,
                in_use: 1,
                last_used: now,
                keep_alive,
                unload_when_idle: false,
            });
            // The measurement may exceed the estimate: make room after the fact too.
            self.evict_until_fits(&mut state, Footprint::ZERO);
            drop(state);
            (self.on_event)(ResidencyEvent::Loaded {
                model: name.to_string(),
                memory,
                took,
            });
            return Ok(Lease {
                key: key.to_string(),
                model,
                working,
            });
        }
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State<B::Model>>) -> MutexGuard<'a, State<B::Model>> {
        // Timed, so a cancelled waiter notices without a release.
        self.changed
            .wait_timeout(state, Duration::from_millis(200))
            .expect("residency lock")
            .0
    }

    /// Gives a lease back; the model's keep-alive starts now (keep-alive 0 unloads it now).
    pub fn release(&self, lease: Lease<B::Model>, now: Instant) {
        let mut state = self.lock();
        let mut unload = None;
        if let Some(index) = state.models.iter().position(|m| m.key == lease.key) {
            let resident = &mut state.models[index];
            resident.in_use = resident.in_use.saturating_sub(1);
            resident.working = resident.working.saturating_sub(lease.working);
            resident.last_used = now;
            let idle_now = resident.keep_alive == KeepAlive::For(Duration::ZERO) || resident.unload_when_idle;
            if resident.in_use == 0 && idle_now {
                unload = Some(index);
            }
        }
        drop(lease);
        let removed = unload.map(|index| state.models.remove(index));
        self.changed.notify_all();
        drop(state);
        if let Some(resident) = removed {
            self.dropped(resident, UnloadReason::Requested);
        }
    }

    /// Unloads idle models whose keep-alive has run out; returns when the next one expires.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let mut expired = Vec::new();
        let mut index = 0;
        while index < state.models.len() {
            let resident = &state.models[index];
            if resident.in_use == 0 && resident.expires(now).is_some_and(|at| at <= now) {
                expired.push(state.models.remove(index));
            } else {
                index += 1;
            }
        }
        let next = state
            .models
            .iter()
            .filter(|m| m.in_use == 0)
            .filter_map(|m| m.expires(now))
            .min();
        if !expired.is_empty() {
            self.changed.notify_all();
        }
        drop(state);
        for resident in expired {
            self.dropped(resident, UnloadReason::Expired);
        }
        next
    }

    /// Loads a model now (or refreshes its keep-alive) without running anything.
    pub fn load(
        &self,
        key: &str,
        name: &str,
        spec: &B::Spec,
        keep_alive: Option<KeepAlive>,
        now: Instant,
    ) -> Result<Running, ResidencyError> {
        let lease = self.acquire(key, name, spec, keep_alive, now, &|| false)?;
        let mut state = self.lock();
        if let Some(resident) = state.models.iter_mut().find(|m| m.key == key) {
            resident.in_use -= 1;
            resident.last_used = now;
        }
        drop(lease);
        let running = state
            .models
            .iter()
            .find(|m| m.key == key)
            .map(|m| running(m, now))
            .expect("just loaded");
        self.changed.notify_all();
        Ok(running)
    }

    /// Unloads `key` now, or after its running jobs when in use. Returns whether it was
    /// resident.
    pub fn unload(&self, key: &str) -> bool {
        let mut state = self.lock();
        let Some(index) = state.models.iter().position(|m| m.key == key) else {
            return false;
        };
        if state.models[index].in_use > 0 {
            state.models[index].unload_when_idle = true;
            return true;
        }
        let resident = state.models.remove(index);
        self.changed.notify_all();
        drop(state);
        self.dropped(resident, UnloadReason::Requested);
        true
    }

    /// Unloads every idle model (shutdown).
    pub fn unload_all(&self) {
        let idle: Vec<_> = {
            let mut state = self.lock();
            let (idle, busy) = std::mem::take(&mut state.models)
                .into_iter()
                .partition(|m| m.in_use == 0);
            state.models = busy;
            idle
        };
        for resident in idle {
            self.dropped(resident, UnloadReason::Shutdown);
        }
    }

    /// Whether a job is using `key` now.
    pub fn in_use(&self, key: &str) -> bool {
        self.lock().models.iter().any(|m| m.key == key && m.in_use > 0)
    }

    /// What is resident, least recently used first.
    pub fn list(&self, now: Instant) -> Vec<Running> {
        let state = self.lock();
        let mut models: Vec<&Resident<B::Model>> = state.models.iter().collect();
        models.sort_by_key(|m| m.last_used);
        models.into_iter().map(|m| running(m, now)).collect()
    }

    pub fn used(&self) -> Footprint {
        used(&self.lock())
    }

    /// Working memory of the jobs running now.
    pub fn working(&self) -> Footprint {
        self.lock().models.iter().map(|m| m.working).sum()
    }

    /// `modelled` working memory for a job on `key`, scaled by what its jobs measured; twice
    /// the model until a job of this model was measured (ONNX Runtime's arena can hold about
    /// that much more than the tensors themselves).
    pub fn working_estimate(&self, key: &str, modelled: u64) -> u64 {
        let factor = self
            .lock()
            .calibration
            .get(key)
            .copied()
            .unwrap_or(UNMEASURED_WORKING_FACTOR);
        (modelled as f64 * factor) as u64
    }

    /// Records what a job on `key` used (`measured`) against what was modelled for it.
    /// Measurements only ever raise the estimate above the model: a job measured below it is
    /// more likely a measurement disturbed by the rest of the machine (reclaimed pages) than
    /// a model that overestimates, and an estimate too low lets a job past the budget.
    /// The measurement is of the process's resident memory: a backend whose jobs work in VRAM
    /// is not measured by it (a GPU job's RAM barely grows), so its margin stays.
    pub fn record_working(&self, key: &str, modelled: u64, measured: u64) {
        if modelled == 0 || measured == 0 || self.backend.working(1).host == 0 {
            return;
        }
        let ratio = (measured as f64 / modelled as f64).clamp(1.0, 20.0);
        let mut state = self.lock();
        let factor = state.calibration.entry(key.to_string()).or_insert(ratio);
        *factor = factor.max(ratio);
    }

    /// What a job of `key` holds in the budget while it runs (its modelled working memory
    /// scaled by what the model's jobs measured), or why it can never run. A model never
    /// measured gets a precautionary margin ([`UNMEASURED_WORKING_FACTOR`]) that shrinks to
    /// what the budget leaves beside the model: such a job is refused only when the model of
    /// its memory says it cannot fit (a full-size SDXL at 1024² on a 24 GiB machine fits by
    /// the model, not by twice it), and measured once, it is held to what was measured.
    /// The working memory lives where the backend puts it ([`Backend::working`]): in RAM for
    /// the CPU, in VRAM for a GPU, and is checked against that memory's budget.
    pub fn job_working(
        &self,
        key: &str,
        name: &str,
        spec: &B::Spec,
        modelled: u64,
    ) -> Result<Footprint, ResidencyError> {
        let measured = self.lock().calibration.contains_key(key);
        let estimate = self.backend.working(self.working_estimate(key, modelled));
        let floor = if measured {
            estimate
        } else {
            self.backend.working(modelled)
        };
        // Once: for a model never loaded, the estimate lists its folder.
        let weights = self.weights_of(key, spec);
        self.refuse_unless_fits(name, weights, floor)?;
        Ok(estimate.min(self.budget.saturating_sub(weights)).max(floor))
    }

    /// A model's weights: measured when it was loaded, else the backend's estimate.
    fn weights_of(&self, key: &str, spec: &B::Spec) -> Footprint {
        let measured = self.lock().measured.get(key).copied();
        measured.unwrap_or_else(|| self.backend.estimate(spec))
    }

    /// Refuses a job whose working memory and model together exceed the whole budget (of
    /// either memory): it could never run, so it is better refused before it queues.
    pub fn check_fits(&self, key: &str, name: &str, spec: &B::Spec, working: Footprint) -> Result<(), ResidencyError> {
        self.refuse_unless_fits(name, self.weights_of(key, spec), working)
    }

    fn refuse_unless_fits(&self, name: &str, weights: Footprint, working: Footprint) -> Result<(), ResidencyError> {
        if let Some(memory) = (weights + working).exceeds(self.budget) {
            return Err(ResidencyError::WorkingTooLarge {
                model: name.to_string(),
                memory,
                working: working.get(memory),
                weights: weights.get(memory),
                budget: self.budget.get(memory),
            });
        }
        Ok(())
    }

    /// Evicts idle models, least recently used first, until `needed` more fits in both
    /// memories. Only models holding some of the memory that is short are candidates: a
    /// model in RAM alone frees no VRAM.
    fn evict_until_fits(&self, state: &mut State<B::Model>, needed: Footprint) {
        let mut evicted = Vec::new();
        while let Some(short) = (used(state) + needed).exceeds(self.budget) {
            let Some(index) = state
                .models
                .iter()
                .enumerate()
                .filter(|(_, m)| m.in_use == 0 && (m.memory + m.working).get(short) > 0)
                .min_by_key(|(_, m)| m.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            evicted.push(state.models.remove(index));
        }
        for resident in evicted {
            // Dropping happens under the lock here so the memory is free before the load.
            self.dropped(resident, UnloadReason::Evicted);
        }
    }

    fn dropped(&self, resident: Resident<B::Model>, reason: UnloadReason) {
        let Resident {
            name, memory, model, ..
        } = resident;
        drop(model);
        self.backend.unloaded();
        (self.on_event)(ResidencyEvent::Unloaded {
            model: name,
            memory,
            reason,
        });
    }
}

/// The working-memory factor of a model none of whose jobs was measured yet.
pub const UNMEASURED_WORKING_FACTOR: f64 = 2.0;

/// Weights of every resident model plus the working memory of the jobs running.
fn used<M>(state: &State<M>) -> Footprint {
    state.models.iter().map(|m| m.memory + m.working).sum()
}

fn running<M>(m: &Resident<M>, now: Instant) -> Running {
    Running {
        key: m.key.clone(),
        name: m.name.clone(),
        memory: m.memory,
        working: m.working,
        in_use: m.in_use,
        expires: m.expires(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake backend: a model's spec is its size; loads are counted. On a fake GPU the size
    /// is on the device, with a tenth of it in host memory beside it, and jobs work there.
    #[derive(Default)]
    struct Fake {
        loads: AtomicUsize,
        /// Measured size = spec × this (to model a measurement above the estimate).
        measured_factor: u64,
        gpu: bool,
    }

    impl Fake {
        fn footprint(&self, size: u64) -> Footprint {
            if self.gpu {
                Footprint {
                    host: size / 10,
                    device: size,
                }
            } else {
                Footprint::host(size)
            }
        }
    }

    impl Backend for Fake {
        type Spec = u64;
        type Model = u64;
        fn load(&self, spec: &u64) -> Result<(u64, Footprint), String> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            if *spec == 0 {
                return Err("broken weights".into());
            }
            Ok((*spec, self.footprint(spec * self.measured_factor.max(1))))
        }
        fn estimate(&self, spec: &u64) -> Footprint {
            self.footprint(*spec)
        }
        fn working(&self, bytes: u64) -> Footprint {
            if self.gpu {
                Footprint::device(bytes)
            } else {
                Footprint::host(bytes)
            }
        }
    }

    type Events = Arc<Mutex<Vec<ResidencyEvent>>>;

    fn residency(budget: u64, keep_alive: KeepAlive) -> (Arc<Residency<Fake>>, Events) {
        let events: Events = Arc::default();
        let sink = events.clone();
        let r = Residency::new(Fake::default(), Footprint::host(budget), keep_alive, move |e| {
            sink.lock().unwrap().push(e)
        });
        (Arc::new(r), events)
    }

    fn acquire(r: &Residency<Fake>, key: &str, size: u64, now: Instant) -> Lease<u64> {
        r.acquire(key, key, &size, None, now, &|| false).unwrap()
    }

    fn resident(r: &Residency<Fake>, now: Instant) -> Vec<String> {
        r.list(now).into_iter().map(|m| m.key).collect()
    }

    fn unloads(events: &Events) -> Vec<(String, UnloadReason)> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ResidencyEvent::Unloaded { model, reason, .. } => Some((model.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_model_loads_once_and_is_shared() {
        let (r, events) = residency(100, KeepAlive::DEFAULT);
        let t = Instant::now();
        let a = acquire(&r, "a", 10, t);
        assert!(matches!(
            events.lock().unwrap()[..],
            [
                ResidencyEvent::Loading { .. },
                ResidencyEvent::Loaded {
                    memory: Footprint { host: 10, device: 0 },
                    ..
                }
            ]
        ));
        let b = acquire(&r, "a", 10, t);
        assert_eq!(r.backend.loads.load(Ordering::SeqCst), 1);
        assert_eq!(r.list(t)[0].in_use, 2);
        r.release(a, t);
        r.release(b, t);
        assert_eq!(r.list(t)[0].in_use, 0);
    }

    #[test]
    fn keep_alive_runs_from_the_last_release() {
        let (r, events) = residency(100, KeepAlive::For(Duration::from_secs(300)));
        let t = Instant::now();
        let lease = acquire(&r, "a", 10, t);
        // In use: never expires, whatever the clock says.
        assert_eq!(r.expire(t + Duration::from_secs(1000)), None);
        assert_eq!(resident(&r, t), ["a"]);
        let released = t + Duration::from_secs(10);
        r.release(lease, released);
        assert_eq!(
            r.expire(released + Duration::from_secs(299)),
            Some(released + Duration::from_secs(300))
        );
        assert_eq!(resident(&r, t), ["a"]);
        assert_eq!(r.expire(released + Duration::from_secs(300)), None);
        assert!(resident(&r, t).is_empty());
        assert_eq!(unloads(&events), [("a".to_string(), UnloadReason::Expired)]);
    }

    #[test]
    fn keep_alive_zero_unloads_when_idle_and_forever_never_expires() {
        let (r, events) = residency(100, KeepAlive::DEFAULT);
        let t = Instant::now();
        let zero = r
            .acquire("z", "z", &10, Some(KeepAlive::For(Duration::ZERO)), t, &|| false)
            .unwrap();
        let forever = r
            .acquire("f", "f", &10, Some(KeepAlive::Forever), t, &|| false)
            .unwrap();
        r.release(zero, t);
        assert_eq!(unloads(&events), [("z".to_string(), UnloadReason::Requested)]);
        r.release(forever, t);
        assert_eq!(r.expire(t + Duration::from_secs(10 * 365 * 86400)), None);
        assert_eq!(resident(&r, t), ["f"]);
        assert_eq!(r.list(t)[0].expires, None);
    }

    #[test]
    fn a_new_request_replaces_the_keep_alive() {
        let (r, _) = residency(100, KeepAlive::DEFAULT);
        let t = Instant::now();
        let lease = r
            .acquire("a", "a", &10, Some(KeepAlive::Forever), t, &|| false)
            .unwrap();
        r.release(lease, t);
        let lease = r
            .acquire("a", "a", &10, Some(KeepAlive::For(Duration::from_secs(5))), t, &|| {
                false
            })
            .unwrap();
        r.release(lease, t);
        assert_eq!(r.list(t)[0].expires, Some(t + Duration::from_secs(5)));
    }

    #[test]
    fn loading_past_the_budget_evicts_idle_models_least_recently_used_first() {
        let (r, events) = residency(30, KeepAlive::Forever);
        let t = Instant::now();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let lease = acquire(&r, key, 10, t + Duration::from_secs(i as u64));
            r.release(lease, t + Duration::from_secs(i as u64));
        }
        // Use `a` again: now `b` is the least recently used.
        let lease = acquire(&r, "a", 10, t + Duration::from_secs(5));
        r.release(lease, t + Duration::from_secs(5));
        let d = acquire(&r, "d", 15, t + Duration::from_secs(6));
        assert_eq!(
            unloads(&events),
            [
                ("b".to_string(), UnloadReason::Evicted),
                ("c".to_string(), UnloadReason::Evicted)
            ]
        );
        assert_eq!(resident(&r, t + Duration::from_secs(6)), ["a", "d"]);
        assert_eq!(r.used(), Footprint::host(25));
        r.release(d, t);
    }

    #[test]
    fn a_model_in_use_is_never_evicted_and_the_load_waits_for_its_release() {
        let (r, events) = residency(20, KeepAlive::Forever);
        let t = Instant::now();
        let busy = acquire(&r, "busy", 15, t);
        let waiter = {
            let r = r.clone();
            std::thread::spawn(move || {
                let lease = r.acquire("next", "next", &10, None, Instant::now(), &|| false).unwrap();
                r.release(lease, Instant::now());
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the load must wait while `busy` is in use");
        assert_eq!(resident(&r, t), ["busy"]);
        r.release(busy, t);
        waiter.join().unwrap();
        assert_eq!(unloads(&events), [("busy".to_string(), UnloadReason::Evicted)]);
        assert!(resident(&r, t).contains(&"next".to_string()));
    }

    #[test]
    fn a_waiting_load_can_be_cancelled() {
        let (r, _) = residency(20, KeepAlive::Forever);
        let t = Instant::now();
        let _busy = acquire(&r, "busy", 15, t);
        let error = r.acquire("next", "next", &10, None, t, &|| true).unwrap_err();
        assert_eq!(error, ResidencyError::Cancelled);
    }

    #[test]
    fn a_model_larger_than_the_budget_fails_at_once() {
        let (r, _) = residency(20, KeepAlive::Forever);
        let error = r
            .acquire("huge", "huge", &21, None, Instant::now(), &|| false)
            .unwrap_err();
        assert!(matches!(
            error,
            ResidencyError::TooLarge {
                needed: 21,
                budget: 20,
                ..
            }
        ));
        assert!(error.to_string().contains("raise memory_budget"), "{error}");
        assert_eq!(r.backend.loads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn measured_memory_counts_and_makes_room_after_the_load() {
        let events: Events = Arc::default();
        let sink = events.clone();
        let fake = Fake {
            measured_factor: 2,
            ..Default::default()
        };
        let r = Residency::new(fake, Footprint::host(30), KeepAlive::Forever, move |e| {
            sink.lock().unwrap().push(e)
        });
        let t = Instant::now();
        let a = r.acquire("a", "a", &5, None, t, &|| false).unwrap();
        r.release(a, t);
        assert_eq!(
            r.list(t)[0].memory,
            Footprint::host(10),
            "the measured size, not the estimate"
        );
        // `b` is estimated at 12 (fits beside `a`) but measures 24: `a` is evicted afterwards.
        let b = r
            .acquire("b", "b", &12, None, t + Duration::from_secs(1), &|| false)
            .unwrap();
        assert_eq!(resident(&r, t), ["b"]);
        r.release(b, t);
        // The next load of `a` uses its measured size as the estimate.
        let a = r
            .acquire("a", "a", &5, None, t + Duration::from_secs(2), &|| false)
            .unwrap();
        assert_eq!(resident(&r, t), ["a"]);
        r.release(a, t);
    }

    #[test]
    fn working_memory_counts_in_the_budget_while_the_job_runs() {
        let (r, events) = residency(100, KeepAlive::Forever);
        let t = Instant::now();
        let idle = acquire(&r, "idle", 30, t);
        r.release(idle, t);
        // 40 of weights and 50 of working memory: the idle model must go to make room.
        let job = r
            .acquire_for_job(
                "a",
                "a",
                &40,
                None,
                Footprint::host(50),
                t + Duration::from_secs(1),
                &|| false,
            )
            .unwrap();
        assert_eq!(unloads(&events), [("idle".to_string(), UnloadReason::Evicted)]);
        assert_eq!((r.used(), r.working()), (Footprint::host(90), Footprint::host(50)));
        assert_eq!(r.list(t)[0].working, Footprint::host(50));
        r.release(job, t + Duration::from_secs(2));
        assert_eq!(
            (r.used(), r.working()),
            (Footprint::host(40), Footprint::ZERO),
            "the working memory is given back"
        );
        let error = r.check_fits("a", "a", &40, Footprint::host(61)).unwrap_err();
        assert!(
            matches!(
                error,
                ResidencyError::WorkingTooLarge {
                    working: 61,
                    weights: 40,
                    ..
                }
            ),
            "{error}"
        );
        assert!(r.check_fits("a", "a", &40, Footprint::host(60)).is_ok());
    }

    #[test]
    fn the_working_estimate_follows_what_jobs_measured() {
        let (r, _) = residency(100, KeepAlive::Forever);
        assert_eq!(r.working_estimate("a", 1000), 2000, "unmeasured: twice the model");
        r.record_working("a", 1000, 1500);
        assert_eq!(r.working_estimate("a", 1000), 1500);
        r.record_working("a", 1000, 500);
        assert_eq!(r.working_estimate("a", 1000), 1500, "the largest ratio seen");
        r.record_working("c", 1000, 20);
        assert_eq!(r.working_estimate("c", 1000), 1000, "never below the model");
        assert_eq!(r.working_estimate("b", 10), 20, "per model");
    }

    #[test]
    fn an_unmeasured_models_margin_shrinks_to_the_budget_a_measured_one_does_not() {
        let (r, _) = residency(100, KeepAlive::Forever);
        // 40 of weights: 30 modelled fits, twice it would not; the margin is what is left.
        assert_eq!(r.job_working("a", "a", &40, 30).unwrap(), Footprint::host(60));
        assert_eq!(
            r.job_working("a", "a", &40, 20).unwrap(),
            Footprint::host(40),
            "the whole margin fits"
        );
        assert!(
            r.job_working("a", "a", &40, 61).is_err(),
            "the model alone does not fit"
        );
        // Measured at twice the model: held to that.
        r.record_working("a", 30, 60);
        assert_eq!(r.job_working("a", "a", &40, 30).unwrap(), Footprint::host(60));
        let error = r.job_working("a", "a", &40, 31).unwrap_err();
        assert!(
            matches!(error, ResidencyError::WorkingTooLarge { working: 62, .. }),
            "{error}"
        );
    }

    #[test]
    fn unload_waits_for_running_jobs_and_load_pins_nothing() {
        let (r, events) = residency(100, KeepAlive::Forever);
        let t = Instant::now();
        let running = r
            .load("a", "a", &10, Some(KeepAlive::For(Duration::from_secs(60))), t)
            .unwrap();
        assert_eq!(
            (running.in_use, running.expires),
            (0, Some(t + Duration::from_secs(60)))
        );
        let lease = acquire(&r, "a", 10, t);
        assert!(r.unload("a"));
        assert_eq!(resident(&r, t), ["a"], "still running a job");
        r.release(lease, t);
        assert!(resident(&r, t).is_empty());
        assert_eq!(unloads(&events), [("a".to_string(), UnloadReason::Requested)]);
        assert!(!r.unload("a"));
    }

    #[test]
    fn a_failed_load_is_an_error_and_leaves_nothing() {
        let (r, _) = residency(100, KeepAlive::Forever);
        let error = r
            .acquire("bad", "bad", &0, None, Instant::now(), &|| false)
            .unwrap_err();
        assert!(matches!(error, ResidencyError::Load { ref message, .. } if message == "broken weights"));
        assert!(r.list(Instant::now()).is_empty());
    }

    fn gpu_residency(host: u64, device: u64) -> (Arc<Residency<Fake>>, Events) {
        let events: Events = Arc::default();
        let sink = events.clone();
        let fake = Fake {
            gpu: true,
            ..Default::default()
        };
        let budget = Footprint { host, device };
        let r = Residency::new(fake, budget, KeepAlive::Forever, move |e| sink.lock().unwrap().push(e));
        (Arc::new(r), events)
    }

    #[test]
    fn on_a_gpu_vram_has_its_own_budget_and_a_full_one_evicts_idle_models() {
        // Plenty of RAM, VRAM for two 40s: loading a third evicts the least recently used.
        let (r, events) = gpu_residency(1000, 100);
        let t = Instant::now();
        for (i, key) in ["a", "b"].into_iter().enumerate() {
            let lease = acquire(&r, key, 40, t + Duration::from_secs(i as u64));
            r.release(lease, t + Duration::from_secs(i as u64));
        }
        assert_eq!(r.used(), Footprint { host: 8, device: 80 });
        let c = acquire(&r, "c", 40, t + Duration::from_secs(5));
        assert_eq!(resident(&r, t), ["b", "c"]);
        assert_eq!(unloads(&events), [("a".to_string(), UnloadReason::Evicted)]);
        assert_eq!(r.list(t)[1].memory, Footprint { host: 4, device: 40 });
        assert!(matches!(
            events.lock().unwrap().last(),
            Some(ResidencyEvent::Loaded {
                memory: Footprint { host: 4, device: 40 },
                ..
            })
        ));
        r.release(c, t);
    }

    #[test]
    fn on_a_gpu_a_model_larger_than_the_vram_budget_fails_at_once_and_says_vram() {
        let (r, _) = gpu_residency(1000, 100);
        let error = r
            .acquire("huge", "huge", &101, None, Instant::now(), &|| false)
            .unwrap_err();
        assert!(
            matches!(
                error,
                ResidencyError::TooLarge {
                    memory: Memory::Device,
                    needed: 101,
                    budget: 100,
                    ..
                }
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("VRAM") && message.contains("EASEL_VRAM_BUDGET"),
            "{message}"
        );
        assert_eq!(r.backend.loads.load(Ordering::SeqCst), 0);
        // The host budget is checked too: a model whose RAM share does not fit is refused by it.
        let (r, _) = gpu_residency(5, 1000);
        let error = r
            .acquire("wide", "wide", &60, None, Instant::now(), &|| false)
            .unwrap_err();
        assert!(
            matches!(
                error,
                ResidencyError::TooLarge {
                    memory: Memory::Host,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn on_a_gpu_working_memory_is_vram_and_waits_for_vram_held_by_a_running_job() {
        let (r, _) = gpu_residency(1000, 100);
        let t = Instant::now();
        // Unmeasured: twice the modelled 25 would be 50, and it fits beside the 40 of weights.
        let working = r.job_working("a", "a", &40, 25).unwrap();
        assert_eq!(working, Footprint::device(50));
        let first = r.acquire_for_job("a", "a", &40, None, working, t, &|| false).unwrap();
        assert_eq!(r.used(), Footprint { host: 4, device: 90 });
        assert_eq!(r.working(), Footprint::device(50));
        // A second job of 50 does not fit in VRAM beside the first: it waits, then is cancelled.
        let cancel_after = std::sync::atomic::AtomicUsize::new(0);
        let error = r
            .acquire_for_job("a", "a", &40, None, working, t, &|| {
                cancel_after.fetch_add(1, Ordering::SeqCst) >= 1
            })
            .unwrap_err();
        assert_eq!(error, ResidencyError::Cancelled);
        r.release(first, t);
        assert_eq!(r.used(), Footprint { host: 4, device: 40 });
        // A job that could never fit in VRAM is refused before it queues, naming VRAM.
        let error = r.job_working("a", "a", &40, 61).unwrap_err();
        assert!(
            matches!(
                error,
                ResidencyError::WorkingTooLarge {
                    memory: Memory::Device,
                    working: 61,
                    weights: 40,
                    budget: 100,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn on_a_gpu_a_jobs_ram_says_nothing_about_its_vram() {
        let (r, _) = gpu_residency(1000, 100);
        // A GPU job's RAM grows little: recorded, it would drop the margin to the model.
        r.record_working("a", 25, 1);
        assert_eq!(r.job_working("a", "a", &40, 25).unwrap(), Footprint::device(50));
    }

    #[test]
    fn eviction_for_vram_passes_over_models_that_hold_none() {
        // A CPU-only footprint (no device memory) is never evicted to make room in VRAM.
        let (r, events) = gpu_residency(1000, 100);
        let t = Instant::now();
        {
            let mut state = r.lock();
            state.models.push(Resident {
                key: "ram-only".into(),
                name: "ram-only".into(),
                model: Arc::new(Mutex::new(0)),
                memory: Footprint::host(10),
                working: Footprint::ZERO,
                in_use: 0,
                last_used: t,
                keep_alive: KeepAlive::Forever,
                unload_when_idle: false,
            });
        }
        let a = acquire(&r, "a", 60, t + Duration::from_secs(1));
        r.release(a, t + Duration::from_secs(1));
        let b = acquire(&r, "b", 60, t + Duration::from_secs(2));
        assert_eq!(resident(&r, t), ["ram-only", "b"]);
        assert_eq!(unloads(&events), [("a".to_string(), UnloadReason::Evicted)]);
        r.release(b, t);
    }
}
