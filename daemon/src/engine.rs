//! Jobs: a bounded queue in front of one inference worker thread that owns the loaded model.
//!
//! The async side ([`Engine::submit`]) validates a request, gives it an id and puts it in the
//! queue; the worker thread takes jobs in arrival order, loads the model if it is not already
//! resident, runs the pipeline and sends [`JobEvent`]s back over a channel. Inference never
//! runs on the async runtime. Cancellation is a flag the pipeline checks before every step:
//! set by `Cancel`, by a client that goes away, or by shutdown.
//!
//! Invariant: the worker is the only owner of [`LoadedModel`]s, so ONNX sessions (which need
//! `&mut` to run) are never shared.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Limits;
use crate::image::RgbImage;
use crate::model::onnx::HostTensor;
use crate::model::{LoadedModel, ModelError, ModelFolder};
use crate::pipeline::{self, PipelineError, PreviewSettings, StepReport};
use crate::registry::{Registry, RegistryError};
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

struct Job {
    id: String,
    job: ValidJob,
    cancel: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<JobEvent>,
    enqueued: Instant,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Job>,
    running: Option<(String, Arc<AtomicBool>)>,
    shutting_down: bool,
    loaded: Vec<String>,
}

struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
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

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    limits: Limits,
    worker: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("limits", &self.limits).finish()
    }
}

impl Engine {
    /// Starts the worker thread.
    pub fn start(runtime: OrtRuntime, registry: Arc<Registry>, limits: Limits, threads: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("easeld-worker".into())
            .spawn(move || {
                Worker {
                    shared: worker_shared,
                    runtime,
                    threads,
                    resident: None,
                }
                .run()
            })
            .expect("spawn the inference worker thread");
        Self {
            shared,
            registry,
            limits,
            worker: Arc::new(Mutex::new(Some(worker))),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Validates `spec` (off the async runtime: it reads model configs) and queues it.
    pub async fn submit(&self, spec: GenerateSpec) -> Result<JobHandle, EngineError> {
        let registry = self.registry.clone();
        let limits = self.limits;
        let job = tokio::task::spawn_blocking(move || validate(&registry, &limits, spec))
            .await
            .map_err(|e| EngineError::InvalidArgument(format!("validation task failed: {e}")))??;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        {
            let mut state = self.shared.state.lock().expect("queue lock");
            if state.shutting_down {
                return Err(EngineError::ShuttingDown);
            }
            if state.pending.len() >= self.limits.max_queue {
                return Err(EngineError::QueueFull(state.pending.len()));
            }
            let position = state.pending.len() as u32 + u32::from(state.running.is_some());
            let _ = tx.send(JobEvent::Queued { position });
            state.pending.push_back(Job {
                id: id.clone(),
                job,
                cancel: cancel.clone(),
                events: tx,
                enqueued: Instant::now(),
            });
        }
        self.shared.wake.notify_all();
        Ok(JobHandle { id, events: rx, cancel })
    }

    /// Cancels a queued or running job. Returns whether a job had that id.
    pub fn cancel(&self, job_id: &str) -> bool {
        let mut state = self.shared.state.lock().expect("queue lock");
        if let Some((id, flag)) = &state.running
            && id == job_id
        {
            flag.store(true, Ordering::SeqCst);
            return true;
        }
        if let Some(index) = state.pending.iter().position(|j| j.id == job_id) {
            let job = state.pending.remove(index).expect("index from position");
            let _ = job.events.send(JobEvent::Failed(EngineError::Cancelled));
            announce_positions(&state);
            return true;
        }
        false
    }

    pub fn status(&self) -> EngineStatus {
        let state = self.shared.state.lock().expect("queue lock");
        EngineStatus {
            queued: state.pending.len(),
            running: usize::from(state.running.is_some()),
            loaded_models: state.loaded.clone(),
        }
    }

    /// Refuses new jobs, fails queued ones, cancels the running one and waits for the worker.
    pub async fn shutdown(&self) {
        {
            let mut state = self.shared.state.lock().expect("queue lock");
            state.shutting_down = true;
            for job in state.pending.drain(..) {
                let _ = job.events.send(JobEvent::Failed(EngineError::ShuttingDown));
            }
            if let Some((_, flag)) = &state.running {
                flag.store(true, Ordering::SeqCst);
            }
        }
        self.shared.wake.notify_all();
        let worker = self.worker.lock().expect("worker lock").take();
        if let Some(worker) = worker {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
    }
}

fn announce_positions(state: &QueueState) {
    let offset = u32::from(state.running.is_some());
    for (i, job) in state.pending.iter().enumerate() {
        let _ = job.events.send(JobEvent::Queued {
            position: i as u32 + offset,
        });
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
    runtime: OrtRuntime,
    threads: usize,
    resident: Option<(PathBuf, LoadedModel)>,
}

impl Worker {
    fn run(mut self) {
        while let Some(job) = self.next_job() {
            let events = job.events.clone();
            let span =
                tracing::info_span!("job", id = %job.id, model = %job.job.folder.name, steps = job.job.request.steps);
            let _entered = span.enter();
            let result = self.run_job(&job);
            match result {
                Ok(timings) => {
                    tracing::info!(total_ms = timings.total.as_millis() as u64, "job finished");
                    let _ = events.send(JobEvent::Finished { timings });
                }
                Err(error) => {
                    tracing::info!(%error, "job ended without finishing");
                    let shutting_down = self.shared.state.lock().expect("queue lock").shutting_down;
                    let error = match error {
                        EngineError::Cancelled if shutting_down => EngineError::ShuttingDown,
                        other => other,
                    };
                    let _ = events.send(JobEvent::Failed(error));
                }
            }
            self.shared.state.lock().expect("queue lock").running = None;
        }
    }

    /// Blocks until a job is queued; `None` once shutting down.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.shared.state.lock().expect("queue lock");
        loop {
            if state.shutting_down {
                return None;
            }
            if let Some(job) = state.pending.pop_front() {
                state.running = Some((job.id.clone(), job.cancel.clone()));
                announce_positions(&state);
                return Some(job);
            }
            state = self.shared.wake.wait(state).expect("queue lock");
        }
    }

    fn run_job(&mut self, job: &Job) -> Result<JobTimings, EngineError> {
        let started = Instant::now();
        let mut timings = JobTimings {
            queue: started - job.enqueued,
            ..Default::default()
        };
        if job.cancel.load(Ordering::SeqCst) {
            return Err(EngineError::Cancelled);
        }
        let model = self.ensure_loaded(&job.job.folder)?;
        timings.load = started.elapsed();
        let _ = job.events.send(JobEvent::Started { load: timings.load });
        let cancel = job.cancel.clone();
        let is_cancelled = move || cancel.load(Ordering::SeqCst);
        let batch_size = job.job.batch_size.max(1);
        let mut first = 0;
        while first < job.job.count {
            let size = batch_size.min(job.job.count - first);
            let seeds: Vec<u64> = (first..first + size)
                .map(|index| job.job.seed.wrapping_add(u64::from(index)))
                .collect();
            let mut sources: Vec<SeededNoise> = seeds.iter().map(|&seed| SeededNoise::new(seed)).collect();
            let mut noises: Vec<&mut dyn crate::sampler::NoiseSource> = sources
                .iter_mut()
                .map(|s| s as &mut dyn crate::sampler::NoiseSource)
                .collect();
            let mut on_step = |image: usize, report: StepReport| {
                let _ = job.events.send(JobEvent::Progress {
                    image_index: first + image as u32,
                    report,
                });
            };
            let output = pipeline::generate_batch(model, &job.job.request, &mut noises, &is_cancelled, &mut on_step)
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
        timings.total = started.elapsed() + timings.queue;
        Ok(timings)
    }

    /// The job's model, loading it (and dropping the previous one) if it is not resident.
    fn ensure_loaded(&mut self, folder: &Arc<ModelFolder>) -> Result<&mut LoadedModel, EngineError> {
        let resident = matches!(&self.resident, Some((root, _)) if *root == folder.root);
        if !resident {
            self.resident = None;
            self.shared.state.lock().expect("queue lock").loaded.clear();
            let started = Instant::now();
            let model = LoadedModel::load(&self.runtime, folder.clone(), self.threads)?;
            tracing::info!(model = %folder.name, load_ms = started.elapsed().as_millis() as u64, "model loaded");
            self.shared.state.lock().expect("queue lock").loaded = vec![folder.name.clone()];
            self.resident = Some((folder.root.clone(), model));
        }
        Ok(&mut self.resident.as_mut().expect("just loaded").1)
    }
}
