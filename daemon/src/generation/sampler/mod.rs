//! Samplers (noise schedulers) for Stable Diffusion, matching diffusers 0.35.2.
//!
//! A sampler turns a UNet's noise prediction into the next, less noisy latent. easel offers
//! eight of them, each a twin of a diffusers scheduler class (see [`SamplerKind`]). The
//! correctness bar is parity with diffusers: [`build`] reads the model's
//! `scheduler/scheduler_config.json` ([`SchedulerConfig`], read by the model folder) the way
//! `Class.from_config(json.load(file))` does. A key the class knows carries over from the file;
//! a key the file lacks takes that class's default (so `timestep_spacing` is `"leading"` for
//! DDIM/PNDM/LCM but `"linspace"` for Euler/Heun/DPM-Solver); a key the class does not know is
//! ignored. On top of the file, a few settings are fixed by the sampler's name:
//!
//! * `pndm` is PLMS: `skip_prk_steps = true`.
//! * `ddim` runs with `eta = 0` (deterministic).
//! * `dpmpp_2m` is DPM-Solver++ of order 2 (`algorithm_type = "dpmsolver++"`,
//!   `solver_order = 2`) without Karras sigmas; `dpmpp_2m_karras` forces
//!   `use_karras_sigmas = true`.
//!
//! Settings diffusers supports but easel does not (dynamic thresholding, exponential or beta
//! sigmas, log-linear interpolation, ...) are refused by [`build`] with an error that names the
//! key, instead of being silently ignored.
//!
//! # Driving a scheduler
//!
//! Tensors are flat `f32` slices (NCHW latents; every operation is elementwise). The pipeline
//! loop mirrors diffusers':
//!
//! ```ignore
//! let mut s = sampler::build(kind, &config, steps)?;
//! let mut latents: Vec<f32> = noise.iter().map(|n| (*n as f64 * s.init_noise_sigma()) as f32).collect();
//! for i in 0..s.timesteps().len() {
//!     let mut input = latents.clone();
//!     s.scale_model_input(&mut input, i);
//!     let eps = unet(&input, s.timesteps()[i]);
//!     latents = s.step(&eps, i, &latents, &mut rng).prev_sample;
//! }
//! ```
//!
//! Entries must be stepped in order (multistep and second-order samplers keep state between
//! calls); img2img starts at a later entry (see [`Scheduler::order`]) and may begin there with a
//! fresh scheduler. Scalar schedule math follows diffusers' dtypes: schedules are built and kept
//! in `f32` where diffusers keeps `float32` tensors, and elementwise updates run in `f32` in
//! diffusers' operation order, so trajectories agree with diffusers to ~1e-6 relative (worst
//! case seen: 4e-5 with zero-terminal-SNR Euler, whose first σ is 4096).
//!
//! Randomness (ancestral and LCM steps) comes from a [`NoiseSource`]; [`SeededNoise`] is the
//! reproducible one (same seed, same numbers, on every run and platform).

mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod noise;
mod pndm;
mod schedule;

use std::fmt;
use std::str::FromStr;

pub use crate::model::SchedulerConfig;
pub use noise::{NoiseSource, SeededNoise};

/// Copies a boxed scheduler, state and all (derived for every sampler through `Clone`).
pub trait CloneScheduler {
    fn clone_box(&self) -> Box<dyn Scheduler>;
}

impl<T: Scheduler + Clone + 'static> CloneScheduler for T {
    fn clone_box(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Scheduler> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Result of one [`Scheduler::step`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The latent for the next entry of `timesteps()` (after the last entry: the final latent).
    pub prev_sample: Vec<f32>,
    /// The model's current estimate of the clean latent x₀, for previews. For LCM this is
    /// diffusers' `denoised`; for DPM-Solver++ the converted model output; for PLMS (which
    /// has no such output in diffusers) x₀ computed from this entry's raw model output.
    pub pred_original_sample: Vec<f32>,
}

/// A configured noise schedule plus the update rule that walks it.
///
/// Built once per request (which is how a config the sampler cannot use fails the request up
/// front); every batch of the request steps its own copy (`clone()` on the box).
pub trait Scheduler: Send + Sync + fmt::Debug + CloneScheduler {
    /// Model-time values fed to the UNet, in order; the pipeline runs one UNet evaluation per entry
    /// (Heun has 2N-1 entries and PNDM/PLMS N+1, exactly as diffusers' `scheduler.timesteps`).
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial latent noise: the pipeline multiplies unit noise by it.
    fn init_noise_sigma(&self) -> f64;

    /// diffusers' scale_model_input for the entry `index` of timesteps().
    fn scale_model_input(&self, sample: &mut [f32], index: usize);

    /// diffusers' step() for entry `index`; `model_output` is the (guidance-combined) raw UNet output in the
    /// model's prediction type. Ancestral/LCM draw fresh noise from `noise` with the sample's length.
    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> StepOutput;

    /// diffusers' add_noise for img2img (noise the clean `original` to the level of timesteps()[index]).
    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32>;

    /// How many entries of `timesteps()` make up one sampling step (diffusers' `order`): 2 for
    /// Heun, 1 otherwise. img2img with strength `s` over `n` steps starts at entry
    /// `(n - min(floor(n * s), n)) * order()`, as diffusers' img2img pipelines do.
    fn order(&self) -> usize {
        1
    }
}

/// The samplers easel offers, by their API/CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `euler`: EulerDiscreteScheduler.
    Euler,
    /// `euler_a`: EulerAncestralDiscreteScheduler.
    EulerAncestral,
    /// `ddim`: DDIMScheduler with eta 0.
    Ddim,
    /// `pndm`: PNDMScheduler with skip_prk_steps (PLMS).
    Pndm,
    /// `dpmpp_2m`: DPMSolverMultistepScheduler (DPM-Solver++ 2M).
    DpmPp2m,
    /// `dpmpp_2m_karras`: DPMSolverMultistepScheduler with Karras sigmas.
    DpmPp2mKarras,
    /// `lcm`: LCMScheduler (for latent-consistency models and LoRAs).
    Lcm,
    /// `heun`: HeunDiscreteScheduler (two UNet evaluations per step).
    Heun,
}

impl SamplerKind {
    /// Every sampler, in the order the docs list them.
    pub const ALL: [SamplerKind; 8] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Ddim,
        SamplerKind::Pndm,
        SamplerKind::DpmPp2m,
        SamplerKind::DpmPp2mKarras,
        SamplerKind::Lcm,
        SamplerKind::Heun,
    ];

    /// The API/CLI name (`euler_a`, `dpmpp_2m_karras`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::DpmPp2m => "dpmpp_2m",
            SamplerKind::DpmPp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Lcm => "lcm",
            SamplerKind::Heun => "heun",
        }
    }

    /// The AUTOMATIC1111 name, as written to PNG `parameters` metadata.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerAncestral => "Euler a",
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Pndm => "PLMS",
            SamplerKind::DpmPp2m => "DPM++ 2M",
            SamplerKind::DpmPp2mKarras => "DPM++ 2M Karras",
            SamplerKind::Lcm => "LCM",
            SamplerKind::Heun => "Heun",
        }
    }

    /// The diffusers class this sampler reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Pndm => "PNDMScheduler",
            SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => "DPMSolverMultistepScheduler",
            SamplerKind::Lcm => "LCMScheduler",
            SamplerKind::Heun => "HeunDiscreteScheduler",
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;

    /// Accepts the API names (`euler_a`) and, for convenience, the A1111 names (`Euler a`),
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(wanted) || k.a1111_name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| SamplerError::UnknownSampler(s.to_owned()))
    }
}

/// The sampler a model asks for: its scheduler config's `_class_name`. A
/// DPMSolverMultistepScheduler with `use_karras_sigmas: true` maps to `dpmpp_2m_karras`.
/// A missing or unknown class (e.g. UniPC, DDPM) falls back to `euler`: it is fast, deterministic,
/// works with every prediction type, and is what most front-ends default to.
pub fn default_for(config: &SchedulerConfig) -> SamplerKind {
    match config.class_name.as_deref() {
        Some("EulerDiscreteScheduler") => SamplerKind::Euler,
        Some("EulerAncestralDiscreteScheduler") => SamplerKind::EulerAncestral,
        Some("DDIMScheduler") => SamplerKind::Ddim,
        Some("PNDMScheduler") => SamplerKind::Pndm,
        Some("DPMSolverMultistepScheduler") if config.use_karras_sigmas == Some(true) => SamplerKind::DpmPp2mKarras,
        Some("DPMSolverMultistepScheduler") => SamplerKind::DpmPp2m,
        Some("LCMScheduler") => SamplerKind::Lcm,
        Some("HeunDiscreteScheduler") => SamplerKind::Heun,
        _ => SamplerKind::Euler,
    }
}

/// Builds `kind` for a model with scheduler config `config`, set up for `steps` sampling steps
/// (diffusers' `from_config` + `set_timesteps(steps)`).
pub fn build(kind: SamplerKind, config: &SchedulerConfig, steps: usize) -> Result<Box<dyn Scheduler>, SamplerError> {
    if steps == 0 {
        return Err(SamplerError::ZeroSteps);
    }
    let ctx = schedule::Ctx { kind, cfg: config };
    Ok(match kind {
        SamplerKind::Euler => Box::new(euler::EulerDiscrete::new(&ctx, steps)?),
        SamplerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(&ctx, steps)?),
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(&ctx, steps)?),
        SamplerKind::Pndm => Box::new(pndm::Plms::new(&ctx, steps)?),
        SamplerKind::DpmPp2m => Box::new(dpm_solver::DpmSolverPp2m::new(&ctx, steps, false)?),
        SamplerKind::DpmPp2mKarras => Box::new(dpm_solver::DpmSolverPp2m::new(&ctx, steps, true)?),
        SamplerKind::Lcm => Box::new(lcm::Lcm::new(&ctx, steps)?),
        SamplerKind::Heun => Box::new(heun::HeunDiscrete::new(&ctx, steps)?),
    })
}

/// Why a sampler could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler `{0}`; choose one of: euler, euler_a, ddim, pndm, dpmpp_2m, dpmpp_2m_karras, lcm, heun")]
    UnknownSampler(String),

    #[error("the number of sampling steps must be at least 1 (got 0); ask for 1 or more steps")]
    ZeroSteps,

    #[error("sampler `{sampler}` cannot run {steps} steps: {reason}")]
    InvalidSteps {
        sampler: SamplerKind,
        steps: usize,
        reason: String,
    },

    #[error(
        "sampler `{sampler}` does not support {key} = {value} from scheduler_config.json (supported: {supported}); fix the model's scheduler config or choose another sampler"
    )]
    Unsupported {
        sampler: SamplerKind,
        key: &'static str,
        value: String,
        supported: &'static str,
    },

    #[error("sampler `{sampler}`: invalid scheduler_config.json: {reason}")]
    InvalidSchedule { sampler: SamplerKind, reason: String },
}

#[cfg(test)]
mod tests;
