//! Jobs: a bounded, fair queue in front of the inference worker threads, and the residency
//! manager that owns loaded models.
//!
//! The async side ([`JobQueue::submit`]) validates a request ([`validate`]: the job's own
//! settings, then `generation::prepare` for the picture), gives it an id and puts it in the
//! queue; a worker thread ([`worker`]) takes the next job, leases its model from [`Residency`]
//! (loading it, and evicting idle ones, if needed), generates through the [`Generator`] and
//! sends [`JobEvent`]s back over a channel, PNGs already encoded. Inference and encoding never
//! run on the async runtime. Cancellation is a flag checked before every step: set by `Cancel`,
//! by a client that goes away, or by shutdown.
//!
//! Fairness: each client (a peer process) takes turns with the others ([`queue::FairQueue`]): a
//! client that queues ten jobs does not make the next client wait for all ten. Queued events
//! carry the position and are sent again whenever it changes.
//!
//! Jobs run one at a time by default (`parallel = 1`): on a CPU one generation already uses
//! every core through ONNX Runtime's intra-op threads, so two at once would only split the cores
//! and add up their memory. With more workers, jobs for different models run side by side;
//! jobs for the same model take turns (a model's sessions are behind its own lock), so requests
//! never corrupt each other.
//!
//! The queue is generic over its [`Generator`] (the real one, [`OrtBackend`], runs ONNX
//! sessions), so queueing, fairness, cancellation and validation are unit-tested in-process
//! with a fake one.
//!
//! Invariant: [`Residency`] is the only owner of loaded models; a worker holds one only
//! through a lease, and ONNX sessions (which need `&mut` to run) sit behind a mutex per model.

pub mod events;
pub mod queue;
pub mod residency;
mod validate;
mod worker;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::ModelUsers;
use crate::catalog::registry::{Registry, RegistryError};
use crate::config::{KeepAlive, Limits};
use crate::generation::sampler::NoiseSource;
use crate::generation::{self, BatchOutput, GenerationError, Prepared, StepReport};
use crate::model::onnx::HostTensor;
use crate::model::{ModelError, ModelFolder};
use crate::outbox;
use events::{DaemonEvent, EventBus, JobState};
use queue::{QueueState, RunningJob};
pub use residency::ort::OrtBackend;
use residency::{Backend, Footprint, Residency, ResidencyError, ResidencyEvent, Running};
use validate::ValidJob;

/// A generation request as the service hands it over (already free of proto types).
#[derive(Debug, Clone, Default)]
pub struct GenerateSpec {
    /// A model name or folder; empty: the default model.
    pub model: String,
    /// What to draw.
    pub picture: generation::Request,
    /// Image `i` uses `seed + i`. Unset: random.
    pub seed: Option<u64>,
    /// Images to make. Unset: 1.
    pub count: Option<u32>,
    /// How long the model stays resident after this job (`5m`, `-1`, `0`…). Unset: the default.
    pub keep_alive: Option<String>,
    /// Who asked (for fair queueing): the peer process, or anything that tells clients apart.
    pub client: String,
    /// A second model that takes over the last part of the noise schedule.
    pub refiner: Option<RefinerSpec>,
}

/// A base + refiner request's refiner, as the client names it.
#[derive(Debug, Clone, Default)]
pub struct RefinerSpec {
    /// A model name or folder.
    pub model: String,
    /// The fraction of the noise schedule after which the refiner takes over. Unset: 0.8.
    pub switch: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the queue is full ({0} jobs waiting); try again when some have finished")]
    QueueFull(usize),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// Generation failed for a reason that is neither the request's nor the model's.
    #[error("generation failed: {0}")]
    Generation(GenerationError),
    /// The model does not fit in the memory budget.
    #[error("{0}")]
    OutOfMemory(String),
    /// The model's files could not be loaded.
    #[error("{0}")]
    LoadFailed(String),
}

impl From<ResidencyError> for JobError {
    fn from(error: ResidencyError) -> Self {
        match error {
            ResidencyError::TooLarge { .. } | ResidencyError::WorkingTooLarge { .. } => {
                JobError::OutOfMemory(error.to_string())
            }
            ResidencyError::Load { .. } => JobError::LoadFailed(error.to_string()),
            ResidencyError::Cancelled => JobError::Cancelled,
        }
    }
}

impl From<GenerationError> for JobError {
    fn from(error: GenerationError) -> Self {
        match error {
            GenerationError::InvalidRequest(message) => JobError::InvalidArgument(message),
            GenerationError::Model(error) => JobError::Model(error),
            GenerationError::Cancelled => JobError::Cancelled,
            other => JobError::Generation(other),
        }
    }
}

/// What a job reports, in order: Queued, Started, Progress*, Image+, Finished (or Failed).
#[derive(Debug)]
pub enum JobEvent {
    Queued {
        position: u32,
    },
    Started {
        load: Duration,
    },
    Progress {
        image_index: u32,
        step: u32,
        total: u32,
        elapsed: Duration,
        latent: Option<HostTensor<f32>>,
        preview_png: Option<Vec<u8>>,
    },
    Image {
        index: u32,
        seed: u64,
        /// With AUTOMATIC1111's `parameters` and easel's own metadata.
        png: Vec<u8>,
        width: u32,
        height: u32,
        parameters: String,
    },
    Finished {
        timings: JobTimings,
    },
    Failed(JobError),
}

/// Progress and queue positions are superseded by the next ones; the rest is the answer.
impl outbox::Droppable for JobEvent {
    fn droppable(&self) -> bool {
        matches!(self, JobEvent::Progress { .. } | JobEvent::Queued { .. })
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct JobTimings {
    pub queue: Duration,
    pub load: Duration,
    pub encode: Duration,
    pub denoise: Duration,
    pub decode: Duration,
    pub total: Duration,
}

/// How jobs run and models are kept.
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// Jobs that run at the same time.
    pub parallel: usize,
    /// Bytes of loaded models (and running jobs' working memory) allowed at once in RAM.
    pub memory_budget: u64,
    /// The same in the GPU's memory (0 on the CPU).
    pub vram_budget: u64,
    pub keep_alive: KeepAlive,
}

/// What the workers generate with: loads models (through residency) and runs a prepared
/// request on one. The real one is [`OrtBackend`]; the queue's unit tests use a fake.
pub trait Generator: Backend<Spec = Arc<ModelFolder>> + 'static {
    /// Generates one picture per noise source (see `generation::generate_batch`), or for a
    /// stage that hands over, their latents; a stage that takes over starts from `handed_over`.
    fn generate_batch(
        &self,
        model: &mut Self::Model,
        prepared: &Prepared,
        noises: &mut [&mut dyn NoiseSource],
        handed_over: Option<&[f32]>,
        is_cancelled: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(usize, StepReport),
    ) -> Result<BatchOutput, GenerationError>;
}

/// A job in the queue or running: its validated request and how to reach its client.
struct Job {
    id: String,
    valid: ValidJob,
    cancel: Arc<AtomicBool>,
    events: outbox::Sender<JobEvent>,
    enqueued: Instant,
    /// The position last announced to the client.
    position: u32,
}

/// What the async side and the workers share.
struct Shared {
    state: Mutex<QueueState<Job>>,
    wake: Condvar,
    events: EventBus,
}

/// A handle on a submitted job.
#[derive(Debug)]
pub struct JobHandle {
    pub id: String,
    /// Bounded: a client that stops reading loses old progress, never an image or the end.
    pub events: outbox::Receiver<JobEvent>,
    /// Setting this cancels the job at its next step (the service does so when the client goes).
    pub cancel: Arc<AtomicBool>,
}

/// A snapshot for `GetStatus`.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    pub queued: usize,
    pub running: usize,
    pub loaded_models: Vec<String>,
}

/// The keep-alive timer thread and the sender that stops it.
type Reaper = (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>);

/// The job queue: submit, cancel, watch; it owns the workers and the resident models.
pub struct JobQueue<G: Generator = OrtBackend> {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    residency: Arc<Residency<G>>,
    limits: Limits,
    workers: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    reaper: Arc<Mutex<Option<Reaper>>>,
}

impl<G: Generator> Clone for JobQueue<G> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            residency: self.residency.clone(),
            limits: self.limits,
            workers: self.workers.clone(),
            reaper: self.reaper.clone(),
        }
    }
}

impl<G: Generator> std::fmt::Debug for JobQueue<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue").field("limits", &self.limits).finish()
    }
}

impl<G: Generator> JobQueue<G> {
    /// Starts the worker threads and the keep-alive timer.
    pub fn start(
        generator: G,
        registry: Arc<Registry>,
        limits: Limits,
        settings: JobSettings,
        events: EventBus,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            events: events.clone(),
        });
        let residency = Arc::new(Residency::new(
            generator,
            Footprint {
                host: settings.memory_budget,
                device: settings.vram_budget,
            },
            settings.keep_alive,
            move |event: ResidencyEvent| {
                event.log();
                events.publish(event.into());
            },
        ));
        let workers = (0..settings.parallel.max(1))
            .map(|i| worker::spawn(i, shared.clone(), residency.clone(), settings.parallel <= 1))
            .collect();
        Self {
            shared,
            registry,
            reaper: Arc::new(Mutex::new(Some(spawn_reaper(residency.clone())))),
            residency,
            limits,
            workers: Arc::new(Mutex::new(workers)),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    pub fn residency(&self) -> &Arc<Residency<G>> {
        &self.residency
    }

    /// Validates `spec` (off the async runtime: it reads model configs and decodes pictures)
    /// and queues it.
    pub async fn submit(&self, spec: GenerateSpec) -> Result<JobHandle, JobError> {
        let registry = self.registry.clone();
        let limits = self.limits;
        let client = spec.client.clone();
        let valid = tokio::task::spawn_blocking(move || validate::validate(&registry, &limits, spec))
            .await
            .map_err(|e| JobError::InvalidArgument(format!("validation task failed: {e}")))??;
        // Working memory: modelled, scaled by what this model's jobs measured; a request that
        // could never fit beside its model is refused now rather than failing when it runs.
        let mut valid = valid;
        let key = residency_key(&valid.folder.root);
        valid.working =
            self.residency
                .job_working(&key, &valid.folder.name, &valid.folder, valid.modelled_working.peak())?;
        if let Some(refiner) = &mut valid.refiner {
            // The stages run one after the other, each model leased on its own.
            let key = residency_key(&refiner.folder.root);
            refiner.working = self.residency.job_working(
                &key,
                &refiner.folder.name,
                &refiner.folder,
                refiner.modelled_working.peak(),
            )?;
        }
        let (tx, rx) = outbox::channel(outbox::DEFAULT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let model = valid.folder.name.clone();
        let position = {
            let mut state = self.shared.state.lock().expect("queue lock");
            if state.shutting_down {
                return Err(JobError::ShuttingDown);
            }
            if state.pending.len() >= self.limits.max_queue {
                return Err(JobError::QueueFull(state.pending.len()));
            }
            let job = Job {
                id: id.clone(),
                valid,
                cancel: cancel.clone(),
                events: tx,
                enqueued: Instant::now(),
                // Not announced yet: announce_positions sends it.
                position: u32::MAX,
            };
            let at = state.pending.push(&client, job);
            announce_positions(&mut state);
            at as u32 + state.running.len() as u32
        };
        self.shared.events.publish(DaemonEvent::Job {
            id: id.clone(),
            model,
            state: JobState::Queued,
            position,
            step: 0,
            total: 0,
            message: String::new(),
        });
        self.shared.wake.notify_all();
        Ok(JobHandle { id, events: rx, cancel })
    }

    /// Cancels a queued or running job. Returns whether a job had that id.
    pub fn cancel(&self, job_id: &str) -> bool {
        let mut state = self.shared.state.lock().expect("queue lock");
        if let Some(running) = state.running.iter().find(|r| r.id == job_id) {
            running.cancel.store(true, Ordering::SeqCst);
            return true;
        }
        if let Some(job) = state.pending.remove_first(|j| j.id == job_id) {
            let _ = job.events.send(JobEvent::Failed(JobError::Cancelled));
            self.shared
                .events
                .publish(job_event(&job, JobState::Cancelled, String::new()));
            announce_positions(&mut state);
            return true;
        }
        false
    }

    pub fn status(&self) -> QueueStatus {
        let state = self.shared.state.lock().expect("queue lock");
        QueueStatus {
            queued: state.pending.len(),
            running: state.running.len(),
            loaded_models: self
                .residency
                .list(Instant::now())
                .into_iter()
                .map(|m| m.name)
                .collect(),
        }
    }

    /// Loads a model now and keeps it for `keep_alive` (None: the default). Blocking: call it
    /// off the async runtime.
    pub fn load_model(&self, reference: &str, keep_alive: Option<KeepAlive>) -> Result<Running, JobError> {
        let folder = self.registry.open(reference)?;
        Ok(self.residency.load(
            &residency_key(&folder.root),
            &folder.name,
            &folder,
            keep_alive,
            Instant::now(),
        )?)
    }

    /// Unloads a model (after its running job, if any). Returns whether it was resident.
    pub fn unload_model(&self, reference: &str) -> Result<bool, JobError> {
        let (_, root) = self.registry.resolve(reference)?;
        Ok(self.residency.unload(&residency_key(&root)))
    }

    /// Refuses new jobs, fails queued ones, cancels running ones and waits for the workers;
    /// then unloads every model.
    pub async fn shutdown(&self) {
        {
            let mut state = self.shared.state.lock().expect("queue lock");
            state.shutting_down = true;
            for job in state.pending.drain() {
                let _ = job.events.send(JobEvent::Failed(JobError::ShuttingDown));
            }
            for running in &state.running {
                running.cancel.store(true, Ordering::SeqCst);
            }
        }
        self.shared.wake.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        let reaper = self.reaper.lock().expect("reaper lock").take();
        let residency = self.residency.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
            if let Some((stop, thread)) = reaper {
                let _ = stop.send(());
                let _ = thread.join();
            }
            residency.unload_all();
        })
        .await;
    }
}

impl<G: Generator> ModelUsers for JobQueue<G> {
    fn in_use(&self, root: &Path) -> bool {
        let state = self.shared.state.lock().expect("queue lock");
        state.pending.iter().any(|j| j.valid.folder.root == root)
            || state.running.iter().any(|r| r.root == root)
            || self.residency.in_use(&residency_key(root))
    }

    fn unload(&self, root: &Path) {
        self.residency.unload(&residency_key(root));
    }
}

/// Residency identifies a model by its folder.
pub fn residency_key(root: &Path) -> String {
    root.display().to_string()
}

/// The keep-alive timer: wakes at the next expiry (at least once a second, so a new model's
/// timer is seen) until the queue stops.
fn spawn_reaper<G: Generator>(residency: Arc<Residency<G>>) -> Reaper {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("easeld-keep-alive".into())
        .spawn(move || {
            loop {
                let next = residency.expire(Instant::now());
                let wait = next
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1));
                match stopped.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        })
        .expect("spawn the keep-alive thread");
    (stop, thread)
}

/// Tells every waiting job whose place changed where it now stands (the running jobs count as
/// ahead of it).
fn announce_positions(state: &mut QueueState<Job>) {
    let ahead = state.running.len() as u32;
    for (i, job) in state.pending.iter_mut().enumerate() {
        let position = i as u32 + ahead;
        if position != job.position {
            job.position = position;
            let _ = job.events.send(JobEvent::Queued { position });
        }
    }
}

fn job_event(job: &Job, state: JobState, message: String) -> DaemonEvent {
    DaemonEvent::Job {
        id: job.id.clone(),
        model: job.valid.folder.name.clone(),
        state,
        position: 0,
        step: 0,
        total: 0,
        message,
    }
}

impl RunningJob {
    fn of(job: &Job) -> Self {
        Self {
            id: job.id.clone(),
            cancel: job.cancel.clone(),
            root: job.valid.folder.root.clone(),
        }
    }
}
