//! Jobs: a bounded, fair queue in front of the inference worker threads, and the residency
//! manager that owns loaded models.
//!
//! The async side ([`Engine::submit`]) validates a request, gives it an id and puts it in the
//! queue; a worker thread takes the next job, leases its model from [`Residency`] (loading it,
//! and evicting idle ones, if needed), runs the pipeline and sends [`JobEvent`]s back over a
//! channel. Inference never runs on the async runtime. Cancellation is a flag the pipeline
//! checks before every step: set by `Cancel`, by a client that goes away, or by shutdown.
//!
//! Fairness: each client (a peer process) takes turns with the others ([`FairQueue`]): a client
//! that queues ten jobs does not make the next client wait for all ten. Queued events carry the
//! position and are sent again whenever it changes.
//!
//! Jobs run one at a time by default (`parallel = 1`): on a CPU one generation already uses
//! every core through ONNX Runtime's intra-op threads, so two at once would only split the cores
//! and add up their memory. With more workers, jobs for different models run side by side;
//! jobs for the same model take turns (a model's sessions are behind its own lock), so requests
//! never corrupt each other.
//!
//! Invariant: [`Residency`] is the only owner of [`LoadedModel`]s; a worker holds one only
//! through a lease, and ONNX sessions (which need `&mut` to run) sit behind a mutex per model.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::config::Limits;
use crate::events::{DaemonEvent, EventBus, JobState, ModelState};
use crate::image::RgbImage;
use crate::model::onnx::HostTensor;
use crate::model::{LoadedModel, ModelError, ModelFolder};
use crate::pipeline::{self, PipelineError, PreviewSettings, StepReport};
use crate::queue::FairQueue;
use crate::registry::{Registry, RegistryError};
use crate::residency::{Backend, KeepAlive, Residency, ResidencyError, ResidencyEvent, Running, UnloadReason};
use crate::runtime::OrtRuntime;
use crate::sampler::{SamplerKind, SeededNoise};

/// A generation request as the service hands it over (already free of proto types).
#[derive(Debug, Clone, Default)]
pub struct GenerateSpec {
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub sampler: Option<String>,
    pub seed: Option<u64>,
    pub count: Option<u32>,
    pub init_noise: Option<HostTensor<f32>>,
    /// img2img: an encoded PNG or JPEG.
    pub init_image: Option<Vec<u8>>,
    pub strength: Option<f64>,
    /// Inpainting: an encoded PNG or JPEG, white = repaint, the init image's size.
    pub mask_image: Option<Vec<u8>>,
    /// Gaussian blur of the mask in pixels. Unset: [`DEFAULT_MASK_BLUR`].
    pub mask_blur: Option<f32>,
    /// AUTOMATIC1111's clip skip (1 = the last layer). Unset: 1.
    pub clip_skip: Option<u32>,
    /// How long the model stays resident after this job (`5m`, `-1`, `0`…). Unset: the default.
    pub keep_alive: Option<String>,
    /// Who asked (for fair queueing): the peer process, or anything that tells clients apart.
    pub client: String,
    pub preview: PreviewSettings,
}

pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE: f32 = 7.5;
/// diffusers' default img2img strength.
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// diffusers' default inpainting strength: the masked part starts from pure noise.
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;
/// AUTOMATIC1111's default mask blur, in pixels.
pub const DEFAULT_MASK_BLUR: f32 = 4.0;
/// The deepest clip skip accepted (CLIP ViT-L has 12 layers, OpenCLIP ViT-H 24).
pub const MAX_CLIP_SKIP: u32 = 24;
/// The largest blur accepted (a wider one turns any mask into a smudge).
pub const MAX_MASK_BLUR: f32 = 64.0;

/// A request checked against the model and the limits: everything the worker needs.
#[derive(Debug, Clone)]
pub struct ValidJob {
    pub folder: Arc<ModelFolder>,
    pub request: pipeline::Request,
    pub seed: u64,
    pub count: u32,
    /// Images denoised together in one UNet batch (the last batch may be smaller).
    pub batch_size: u32,
    /// Inpainting: the init picture at the output size, composited back outside the mask.
    pub inpaint_original: Option<RgbImage>,
    /// The mask blur used (for the metadata), when inpainting.
    pub mask_blur: Option<f32>,
    /// `None`: the daemon's default.
    pub keep_alive: Option<KeepAlive>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
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
    #[error("generation failed: {0}")]
    Pipeline(PipelineError),
    /// The model does not fit in the memory budget.
    #[error("{0}")]
    OutOfMemory(String),
    /// The model's files could not be loaded.
    #[error("{0}")]
    LoadFailed(String),
}

impl From<ResidencyError> for EngineError {
    fn from(error: ResidencyError) -> Self {
        match error {
            ResidencyError::TooLarge { .. } => EngineError::OutOfMemory(error.to_string()),
            ResidencyError::Load { .. } => EngineError::LoadFailed(error.to_string()),
            ResidencyError::Cancelled => EngineError::Cancelled,
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
        report: StepReport,
    },
    Image {
        index: u32,
        seed: u64,
        image: RgbImage,
        parameters: String,
        metadata_json: String,
    },
    Finished {
        timings: JobTimings,
    },
    Failed(EngineError),
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

/// How the engine runs jobs and keeps models.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Intra-op threads per ONNX session (0: ONNX Runtime's default).
    pub threads: usize,
    /// Jobs that run at the same time.
    pub parallel: usize,
    /// Bytes of loaded models allowed at once.
    pub memory_budget: u64,
    pub keep_alive: KeepAlive,
}

struct Job {
    id: String,
    job: ValidJob,
    cancel: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<JobEvent>,
    enqueued: Instant,
    /// The position last announced to the client.
    position: u32,
}

#[derive(Default)]
struct QueueState {
    /// Waiting jobs, fair across clients (see [`FairQueue`]).
    pending: FairQueue<Job>,
    /// Running jobs: id, cancel flag, model root.
    running: Vec<(String, Arc<AtomicBool>, std::path::PathBuf)>,
    shutting_down: bool,
}

impl QueueState {
    /// Tells every waiting job whose place changed where it now stands.
    fn announce_positions(&mut self) {
        let ahead = self.running.len() as u32;
        for (i, job) in self.pending.iter_mut().enumerate() {
            let position = i as u32 + ahead;
            if position != job.position {
                job.position = position;
                let _ = job.events.send(JobEvent::Queued { position });
            }
        }
    }
}

struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
    events: EventBus,
}

/// A handle on a submitted job.
#[derive(Debug)]
pub struct JobHandle {
    pub id: String,
    pub events: mpsc::UnboundedReceiver<JobEvent>,
    /// Setting this cancels the job at its next step (the service does so when the client goes).
    pub cancel: Arc<AtomicBool>,
}

/// A snapshot for `GetStatus`.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    pub queued: usize,
    pub running: usize,
    pub loaded_models: Vec<String>,
}

/// The real [`Backend`]: ONNX sessions, measured as the growth of the daemon's resident memory
/// while loading (loads run one at a time, so the growth is the model's), and never less than
/// the weights' size on disk. The first load also carries ONNX Runtime's one-time set-up.
pub struct OrtBackend {
    runtime: OrtRuntime,
    threads: usize,
}

impl Backend for OrtBackend {
    type Spec = Arc<ModelFolder>;
    type Model = LoadedModel;

    fn load(&self, folder: &Arc<ModelFolder>) -> Result<(LoadedModel, u64), String> {
        let before = resident_memory();
        let model =
            LoadedModel::load(&self.runtime, folder.clone(), self.threads).map_err(|e| crate::error_chain(&e))?;
        let grown = resident_memory().saturating_sub(before);
        // The heap may hand a load pages an earlier one freed, so the growth can undercount;
        // the weights themselves are always in memory.
        Ok((model, grown.max(weights_size(&folder.root))))
    }

    fn estimate(&self, folder: &Arc<ModelFolder>) -> u64 {
        weights_size(&folder.root)
    }

    fn unloaded(&self) {
        release_freed_memory();
    }
}

/// Bytes of ONNX weights under a model folder (the estimate before a first load): the graphs
/// and their external data. 0 when the folder cannot be read (loading will say why).
pub fn weights_size(root: &Path) -> u64 {
    crate::store::list_files(root)
        .unwrap_or_default()
        .iter()
        .filter(|(path, _)| path.rsplit('/').next().is_some_and(|name| name.contains(".onnx")))
        .map(|(_, size)| size)
        .sum()
}

/// The process's resident set size (`VmRSS`), in bytes; 0 where /proc is missing.
pub fn resident_memory() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:").unwrap_or(0) * 1024
}

/// Physical memory, in bytes; `None` where /proc is missing.
pub fn total_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemTotal:").map(|kib| kib * 1024)
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Gives memory freed by an unloaded model back to the system, so the next load's growth is
/// measured from a true baseline (glibc otherwise keeps freed heap pages).
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The keep-alive timer thread and the sender that stops it.
type Reaper = (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>);

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    residency: Arc<Residency<OrtBackend>>,
    limits: Limits,
    workers: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    reaper: Arc<Mutex<Option<Reaper>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("limits", &self.limits).finish()
    }
}

impl Engine {
    /// Starts the worker threads and the keep-alive timer.
    pub fn start(
        runtime: OrtRuntime,
        registry: Arc<Registry>,
        limits: Limits,
        settings: EngineSettings,
        events: EventBus,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            events: events.clone(),
        });
        let bus = events.clone();
        let residency = Arc::new(Residency::new(
            OrtBackend {
                runtime,
                threads: settings.threads,
            },
            settings.memory_budget,
            settings.keep_alive,
            move |event| publish_residency(&bus, event),
        ));
        let workers = (0..settings.parallel.max(1))
            .map(|i| {
                let worker = Worker {
                    shared: shared.clone(),
                    residency: residency.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("easeld-worker-{i}"))
                    .spawn(move || worker.run())
                    .expect("spawn an inference worker thread")
            })
            .collect();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let reaper_residency = residency.clone();
        let reaper = std::thread::Builder::new()
            .name("easeld-keep-alive".into())
            .spawn(move || {
                // Wakes at the next expiry (at least once a second, so a new model's timer
                // is seen) until the engine stops.
                loop {
                    let next = reaper_residency.expire(Instant::now());
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
        Self {
            shared,
            registry,
            residency,
            limits,
            workers: Arc::new(Mutex::new(workers)),
            reaper: Arc::new(Mutex::new(Some((stop, reaper)))),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    pub fn residency(&self) -> &Arc<Residency<OrtBackend>> {
        &self.residency
    }

    /// Validates `spec` (off the async runtime: it reads model configs) and queues it.
    pub async fn submit(&self, spec: GenerateSpec) -> Result<JobHandle, EngineError> {
        let registry = self.registry.clone();
        let limits = self.limits;
        let client = spec.client.clone();
        let job = tokio::task::spawn_blocking(move || validate(&registry, &limits, spec))
            .await
            .map_err(|e| EngineError::InvalidArgument(format!("validation task failed: {e}")))??;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let model = job.folder.name.clone();
        let position = {
            let mut state = self.shared.state.lock().expect("queue lock");
            if state.shutting_down {
                return Err(EngineError::ShuttingDown);
            }
            if state.pending.len() >= self.limits.max_queue {
                return Err(EngineError::QueueFull(state.pending.len()));
            }
            let at = state.pending.push(
                &client,
                Job {
                    id: id.clone(),
                    job,
                    cancel: cancel.clone(),
                    events: tx,
                    enqueued: Instant::now(),
                    // Not announced yet: announce_positions sends it.
                    position: u32::MAX,
                },
            );
            state.announce_positions();
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
        if let Some((_, flag, _)) = state.running.iter().find(|(id, _, _)| id == job_id) {
            flag.store(true, Ordering::SeqCst);
            return true;
        }
        if let Some(job) = state.pending.remove_first(|j| j.id == job_id) {
            let _ = job.events.send(JobEvent::Failed(EngineError::Cancelled));
            self.shared
                .events
                .publish(job_event(&job, JobState::Cancelled, String::new()));
            state.announce_positions();
            return true;
        }
        false
    }

    pub fn status(&self) -> EngineStatus {
        let state = self.shared.state.lock().expect("queue lock");
        EngineStatus {
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

    /// Whether a queued or running job, or a resident model in use, needs the folder at `root`.
    pub fn model_in_use(&self, root: &Path) -> bool {
        let state = self.shared.state.lock().expect("queue lock");
        state.pending.iter().any(|j| j.job.folder.root == root)
            || state.running.iter().any(|(_, _, r)| r == root)
            || self.residency.in_use(&residency_key(root))
    }

    /// Loads a model now and keeps it for `keep_alive` (None: the default). Blocking: call it
    /// off the async runtime.
    pub fn load_model(&self, reference: &str, keep_alive: Option<KeepAlive>) -> Result<Running, EngineError> {
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
    pub fn unload_model(&self, reference: &str) -> Result<bool, EngineError> {
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
                let _ = job.events.send(JobEvent::Failed(EngineError::ShuttingDown));
            }
            for (_, flag, _) in &state.running {
                flag.store(true, Ordering::SeqCst);
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

/// Residency identifies a model by its folder.
pub fn residency_key(root: &Path) -> String {
    root.display().to_string()
}

fn publish_residency(bus: &EventBus, event: ResidencyEvent) {
    let (model, state, memory, reason) = match event {
        ResidencyEvent::Loading { model } => (model, ModelState::Loading, 0, ""),
        ResidencyEvent::Loaded { model, memory, took } => {
            tracing::info!(%model, load_ms = took.as_millis() as u64, memory, "model loaded");
            (model, ModelState::Loaded, memory, "")
        }
        ResidencyEvent::Unloaded { model, memory, reason } => {
            tracing::info!(%model, reason = reason.as_str(), "model unloaded");
            let state = if reason == UnloadReason::Evicted {
                ModelState::Evicted
            } else {
                ModelState::Unloaded
            };
            (model, state, memory, reason.as_str())
        }
    };
    bus.publish(DaemonEvent::Model {
        model,
        state,
        memory,
        reason: reason.to_string(),
    });
}

fn job_event(job: &Job, state: JobState, message: String) -> DaemonEvent {
    DaemonEvent::Job {
        id: job.id.clone(),
        model: job.job.folder.name.clone(),
        state,
        position: 0,
        step: 0,
        total: 0,
        message,
    }
}

/// Checks a request against its model and the limits; fills in defaults.
pub fn validate(registry: &Registry, limits: &Limits, spec: GenerateSpec) -> Result<ValidJob, EngineError> {
    let invalid = |m: String| Err(EngineError::InvalidArgument(m));
    let steps = spec.steps.unwrap_or(DEFAULT_STEPS);
    if steps == 0 || steps > limits.max_steps {
        return invalid(format!(
            "steps must be between 1 and {} (got {steps})",
            limits.max_steps
        ));
    }
    let count = spec.count.unwrap_or(1);
    if count == 0 || count > limits.max_count {
        return invalid(format!(
            "count must be between 1 and {} (got {count})",
            limits.max_count
        ));
    }
    let keep_alive = match spec.keep_alive.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        Some(text) => Some(KeepAlive::parse(text).map_err(EngineError::InvalidArgument)?),
        None => None,
    };
    let clip_skip = spec.clip_skip.unwrap_or(1);
    if clip_skip == 0 || clip_skip > MAX_CLIP_SKIP {
        return invalid(format!(
            "clip skip counts text encoder layers from the end: 1 (the last) to {MAX_CLIP_SKIP} (got {clip_skip})"
        ));
    }
    let guidance_scale = spec.guidance_scale.unwrap_or(DEFAULT_GUIDANCE);
    if !guidance_scale.is_finite() || guidance_scale < 0.0 {
        return invalid(format!(
            "guidance scale must be 0 or more (got {guidance_scale}); values <= 1 turn guidance off"
        ));
    }
    let sampler = match spec.sampler.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => match name.parse::<SamplerKind>() {
            Ok(kind) => Some(kind),
            Err(_) => {
                let known = SamplerKind::ALL
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return invalid(format!("unknown sampler `{name}`; choose one of {known}"));
            }
        },
    };
    for (what, text) in [("prompt", &spec.prompt), ("negative prompt", &spec.negative_prompt)] {
        if let Err(e) = crate::prompt::parse(text) {
            return invalid(format!("{what}: {e}"));
        }
    }
    if spec.strength.is_some() && spec.init_image.is_none() {
        return invalid("strength only applies to img2img: send an init image with it".into());
    }
    if spec.mask_image.is_some() && spec.init_image.is_none() {
        return invalid("a mask needs the picture it applies to: send an init image with it".into());
    }
    if spec.mask_blur.is_some() && spec.mask_image.is_none() {
        return invalid("mask blur only applies to inpainting: send a mask with it".into());
    }
    let mask_blur = spec.mask_blur.unwrap_or(DEFAULT_MASK_BLUR);
    if !(0.0..=MAX_MASK_BLUR).contains(&mask_blur) {
        return invalid(format!(
            "mask blur must be between 0 and {MAX_MASK_BLUR} pixels (got {mask_blur})"
        ));
    }
    let default_strength = if spec.mask_image.is_some() {
        DEFAULT_INPAINT_STRENGTH
    } else {
        DEFAULT_STRENGTH
    };
    let strength = spec.strength.unwrap_or(default_strength);
    if spec.init_image.is_some() && !(strength > 0.0 && strength <= 1.0) {
        return invalid(format!("strength must be in (0, 1] (got {strength})"));
    }
    let folder = registry.open(&spec.model)?;
    let multiple = folder.vae_factor as u32;
    let picture = match &spec.init_image {
        Some(bytes) => Some(crate::image::decode_rgb(bytes, "init image").map_err(EngineError::InvalidArgument)?),
        None => None,
    };
    let mask = match &spec.mask_image {
        Some(bytes) => {
            let mask = crate::image::decode_rgb(bytes, "mask").map_err(EngineError::InvalidArgument)?;
            let picture = picture
                .as_ref()
                .expect("checked above: a mask comes with an init image");
            if (mask.width, mask.height) != (picture.width, picture.height) {
                return invalid(format!(
                    "the mask is {}x{} but the init image is {}x{}; draw the mask at the picture's size",
                    mask.width, mask.height, picture.width, picture.height
                ));
            }
            Some(mask)
        }
        None => None,
    };
    if folder.is_inpainting() && mask.is_none() {
        return invalid(format!(
            "{} is an inpainting model: it needs an init image and a mask (white = repaint)",
            folder.name
        ));
    }
    // Without a size, img2img keeps the picture's own, rounded down to the VAE's multiple.
    let native = folder.native_size();
    let (width, height) = match &picture {
        Some(p) => (
            spec.width.unwrap_or(p.width / multiple * multiple),
            spec.height.unwrap_or(p.height / multiple * multiple),
        ),
        None => (spec.width.unwrap_or(native), spec.height.unwrap_or(native)),
    };
    for (what, value) in [("width", width), ("height", height)] {
        if value == 0 || value % multiple != 0 {
            return invalid(format!(
                "{what} must be a positive multiple of {multiple} for this model (got {value})"
            ));
        }
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return invalid(format!(
            "{width}x{height} is {} pixels, more than the limit of {} (raise max_pixels in the config to allow it)",
            u64::from(width) * u64::from(height),
            limits.max_pixels
        ));
    }
    if let Some(noise) = &spec.init_noise {
        let expected = [
            1,
            folder.latent_channels,
            (height / multiple) as usize,
            (width / multiple) as usize,
        ];
        if noise.shape != expected {
            return invalid(format!(
                "init noise has shape {:?}, but {width}x{height} on this model needs {expected:?}",
                noise.shape
            ));
        }
        if noise.data.iter().any(|v| !v.is_finite()) {
            return invalid("init noise contains NaN or infinite values".into());
        }
    }
    let mut inpaint_original = None;
    let init_image = match picture {
        Some(picture) => {
            if pipeline::img2img_start(steps as usize, strength).is_none() {
                return invalid(format!(
                    "strength {strength} with {steps} steps runs no step; raise the strength or the steps"
                ));
            }
            let picture = picture.resized(width, height);
            let pixels = picture.to_nchw_signed();
            let mask = mask.map(|mask| {
                let luma = crate::inpaint::luminance(&mask.resized(width, height));
                let (w, h) = (width as usize, height as usize);
                crate::inpaint::Mask::new(&luma, w, h, mask_blur, &pixels, folder.vae_factor)
            });
            if mask.is_some() {
                inpaint_original = Some(picture);
            }
            Some(pipeline::InitImage { pixels, strength, mask })
        }
        None => None,
    };
    let sampler = sampler.unwrap_or(folder.default_sampler);
    // Build the sampler once here so a config it cannot use fails the request up front.
    crate::sampler::build(sampler, &folder.scheduler, steps as usize).map_err(|e| {
        EngineError::Model(ModelError::Incompatible {
            model: folder.name.clone(),
            message: e.to_string(),
        })
    })?;
    let seed = spec.seed.unwrap_or_else(rand::random);
    Ok(ValidJob {
        request: pipeline::Request {
            prompt: spec.prompt,
            negative_prompt: spec.negative_prompt,
            width,
            height,
            steps: steps as usize,
            guidance_scale,
            sampler,
            init_noise: spec.init_noise,
            init_image,
            clip_skip: clip_skip as usize,
            preview: spec.preview,
        },
        batch_size: batch_size(limits, width, height, count),
        folder,
        seed,
        count,
        mask_blur: inpaint_original.as_ref().map(|_| mask_blur),
        inpaint_original,
        keep_alive,
    })
}

/// How many images go through the UNet together: as many as fit in `batch_pixels`, at least
/// one.
fn batch_size(limits: &Limits, width: u32, height: u32, count: u32) -> u32 {
    let per_image = u64::from(width) * u64::from(height);
    (limits.batch_pixels / per_image).clamp(1, u64::from(count)) as u32
}

/// AUTOMATIC1111's `parameters` text, which other tools parse.
pub fn a1111_parameters(job: &ValidJob, seed: u64) -> String {
    let r = &job.request;
    let mut text = r.prompt.clone();
    if !r.negative_prompt.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", r.negative_prompt));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        r.steps,
        r.sampler.a1111_name(),
        r.guidance_scale,
        seed,
        r.width,
        r.height,
        job.folder.name,
    ));
    if let Some(init) = &r.init_image {
        text.push_str(&format!(", Denoising strength: {}", init.strength));
    }
    if let Some(blur) = job.mask_blur {
        text.push_str(&format!(", Mask blur: {blur}"));
    }
    if r.clip_skip > 1 {
        text.push_str(&format!(", Clip skip: {}", r.clip_skip));
    }
    text.push_str(&format!(", Version: easel {}", env!("CARGO_PKG_VERSION")));
    text
}

fn metadata_json(job: &ValidJob, seed: u64) -> String {
    let r = &job.request;
    serde_json::json!({
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "width": r.width,
        "height": r.height,
        "steps": r.steps,
        "guidance_scale": r.guidance_scale,
        "sampler": r.sampler.to_string(),
        "seed": seed,
        "model": job.folder.name,
        "init_noise": r.init_noise.is_some(),
        "strength": r.init_image.as_ref().map(|i| i.strength),
        "clip_skip": r.clip_skip,
        "inpaint": job.mask_blur.map(|blur| serde_json::json!({ "mask_blur": blur })),
        "easel_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

struct Worker {
    shared: Arc<Shared>,
    residency: Arc<Residency<OrtBackend>>,
}

impl Worker {
    fn run(self) {
        while let Some(job) = self.next_job() {
            let events = job.events.clone();
            let span =
                tracing::info_span!("job", id = %job.id, model = %job.job.folder.name, steps = job.job.request.steps);
            let _entered = span.enter();
            let result = self.run_job(&job);
            match &result {
                Ok(timings) => tracing::info!(total_ms = timings.total.as_millis() as u64, "job finished"),
                Err(error) => tracing::info!(%error, "job ended without finishing"),
            }
            // The job stops counting as running before its client hears the end, so a client
            // that acts on the end (removing the model, reading the status) sees it gone.
            let shutting_down = {
                let mut state = self.shared.state.lock().expect("queue lock");
                state.running.retain(|(id, _, _)| *id != job.id);
                state.announce_positions();
                state.shutting_down
            };
            let bus = &self.shared.events;
            match result {
                Ok(timings) => {
                    let _ = events.send(JobEvent::Finished { timings });
                    bus.publish(job_event(&job, JobState::Finished, String::new()));
                }
                Err(error) => {
                    let error = match error {
                        EngineError::Cancelled if shutting_down => EngineError::ShuttingDown,
                        other => other,
                    };
                    let state = match error {
                        EngineError::Cancelled | EngineError::ShuttingDown => JobState::Cancelled,
                        _ => JobState::Failed,
                    };
                    bus.publish(job_event(&job, state, error.to_string()));
                    let _ = events.send(JobEvent::Failed(error));
                }
            }
        }
    }

    /// Blocks until a job is queued; `None` once shutting down.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.shared.state.lock().expect("queue lock");
        loop {
            if state.shutting_down {
                return None;
            }
            if let Some(job) = state.pending.pop() {
                state
                    .running
                    .push((job.id.clone(), job.cancel.clone(), job.job.folder.root.clone()));
                state.announce_positions();
                return Some(job);
            }
            state = self.shared.wake.wait(state).expect("queue lock");
        }
    }

    fn run_job(&self, job: &Job) -> Result<JobTimings, EngineError> {
        let started = Instant::now();
        let mut timings = JobTimings {
            queue: started - job.enqueued,
            ..Default::default()
        };
        if job.cancel.load(Ordering::SeqCst) {
            return Err(EngineError::Cancelled);
        }
        let folder = &job.job.folder;
        let cancel = job.cancel.clone();
        let is_cancelled = move || cancel.load(Ordering::SeqCst);
        let lease = self.residency.acquire(
            &residency_key(&folder.root),
            &folder.name,
            folder,
            job.job.keep_alive,
            Instant::now(),
            &is_cancelled,
        )?;
        timings.load = started.elapsed();
        let _ = job.events.send(JobEvent::Started { load: timings.load });
        self.shared
            .events
            .publish(job_event(job, JobState::Started, String::new()));
        let result = {
            let mut model = lease.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.generate(job, &mut model, &is_cancelled, &mut timings)
        };
        self.residency.release(lease, Instant::now());
        result?;
        timings.total = started.elapsed() + timings.queue;
        Ok(timings)
    }

    fn generate(
        &self,
        job: &Job,
        model: &mut LoadedModel,
        is_cancelled: &dyn Fn() -> bool,
        timings: &mut JobTimings,
    ) -> Result<(), EngineError> {
        let batch_size = job.job.batch_size.max(1);
        let count = job.job.count;
        let mut first = 0;
        let mut summarized = 0;
        while first < count {
            let size = batch_size.min(count - first);
            let seeds: Vec<u64> = (first..first + size)
                .map(|index| job.job.seed.wrapping_add(u64::from(index)))
                .collect();
            let mut sources: Vec<SeededNoise> = seeds.iter().map(|&seed| SeededNoise::new(seed)).collect();
            let mut noises: Vec<&mut dyn crate::sampler::NoiseSource> = sources
                .iter_mut()
                .map(|s| s as &mut dyn crate::sampler::NoiseSource)
                .collect();
            let mut on_step = |image: usize, report: StepReport| {
                // WatchEvents gets a summary: the first image of each batch, about every 10%.
                let decile = report.step * 10 / report.total.max(1);
                if image == 0 && (decile != summarized || report.step == report.total) {
                    summarized = decile;
                    self.shared.events.publish(DaemonEvent::Job {
                        id: job.id.clone(),
                        model: job.job.folder.name.clone(),
                        state: JobState::Progress,
                        position: 0,
                        step: report.step as u32,
                        total: report.total as u32,
                        message: String::new(),
                    });
                }
                let _ = job.events.send(JobEvent::Progress {
                    image_index: first + image as u32,
                    report,
                });
            };
            let output = pipeline::generate_batch(model, &job.job.request, &mut noises, is_cancelled, &mut on_step)
                .map_err(|e| match e {
                    PipelineError::Cancelled => EngineError::Cancelled,
                    PipelineError::Model(m) => EngineError::Model(m),
                    PipelineError::InvalidRequest(m) => EngineError::InvalidArgument(m),
                    other => EngineError::Pipeline(other),
                })?;
            timings.encode += output.timings.encode;
            timings.denoise += output.timings.denoise;
            timings.decode += output.timings.decode;
            for ((offset, image), seed) in output.images.into_iter().enumerate().zip(seeds) {
                let image = match (&job.job.inpaint_original, &job.job.request.init_image) {
                    (Some(original), Some(init)) => {
                        let soft = &init.mask.as_ref().expect("inpainting has a mask").soft;
                        crate::inpaint::composite(original, &image, soft)
                    }
                    _ => image,
                };
                let _ = job.events.send(JobEvent::Image {
                    index: first + offset as u32,
                    seed,
                    image,
                    parameters: a1111_parameters(&job.job, seed),
                    metadata_json: metadata_json(&job.job, seed),
                });
            }
            first += size;
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch, in milliseconds, of an `Instant` (for `easel ps`).
pub fn unix_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let wall = SystemTime::now();
    let wall_at = if at >= now {
        wall + (at - now)
    } else {
        wall - (now - at)
    };
    wall_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_the_graphs_and_their_external_data_only() {
        let dir = tempfile::tempdir().unwrap();
        for (path, size) in [
            ("unet/model.onnx", 10),
            ("unet/model.onnx_data", 20),
            ("unet/config.json", 5),
            ("tokenizer/vocab.json", 7),
            ("model_index.json", 3),
        ] {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, vec![0u8; size]).unwrap();
        }
        assert_eq!(weights_size(dir.path()), 30);
        assert_eq!(weights_size(&dir.path().join("missing")), 0);
    }

    #[test]
    fn unix_ms_places_instants_on_the_wall_clock() {
        let now = unix_ms(Instant::now());
        let later = unix_ms(Instant::now() + Duration::from_secs(60));
        assert!((59_900..=60_100).contains(&(later - now)), "{}", later - now);
    }
}
