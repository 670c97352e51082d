//! Pieces every sampler shares: reading the config with per-class defaults, the training
//! noise schedule (betas → ᾱ), timestep spacing, σ interpolation and Karras σ.
//!
//! Dtypes follow diffusers: betas and ᾱ are `float32` tensors there (torch's `linspace` in
//! `float32`, `cumprod` accumulated in double and stored as `float32`), σ tables are `float32`,
//! and the timestep arithmetic is numpy `float64`.

use std::fmt::Display;

use super::{SamplerError, SamplerKind, SchedulerConfig};

pub(super) type Result<T> = std::result::Result<T, SamplerError>;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prediction {
    /// The added noise ε.
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768 models).
    Velocity,
    /// The clean sample x₀.
    Sample,
}

/// How inference timesteps are spread over the training range (Table 2 of "Common Diffusion
/// Noise Schedules and Sample Steps are Flawed", arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// The class defaults that differ between diffusers schedulers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults {
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: &'static str,
    pub spacing: Spacing,
    pub clip_sample: bool,
    pub set_alpha_to_one: bool,
}

/// DDPM's defaults, which most classes share (`beta_start` 1e-4, `beta_end` 0.02, `linear`).
pub(super) const DDPM_DEFAULTS: Defaults = Defaults {
    beta_start: 0.0001,
    beta_end: 0.02,
    beta_schedule: "linear",
    spacing: Spacing::Linspace,
    clip_sample: false,
    set_alpha_to_one: false,
};

/// What a class does with `rescale_betas_zero_snr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ZeroSnr {
    /// The class has no such key (PNDM, Heun): diffusers ignores it, so do we.
    NotAKey,
    /// Rescale; ᾱ_T becomes exactly 0 (DDIM, LCM).
    Exact,
    /// Rescale, then nudge ᾱ_T to 2⁻²⁴ so σ_max stays finite (Euler, Euler a, DPM-Solver).
    Nudged,
}

/// A sampler's view of the config: the file's values, falling back to the class defaults.
pub(super) struct Ctx<'a> {
    pub kind: SamplerKind,
    pub cfg: &'a SchedulerConfig,
}

impl Ctx<'_> {
    pub fn unsupported(&self, key: &'static str, value: impl Display, supported: &'static str) -> SamplerError {
        SamplerError::Unsupported {
            sampler: self.kind,
            key,
            value: value.to_string(),
            supported,
        }
    }

    pub fn invalid(&self, reason: impl Into<String>) -> SamplerError {
        SamplerError::InvalidSchedule {
            sampler: self.kind,
            reason: reason.into(),
        }
    }

    pub fn invalid_steps(&self, steps: usize, reason: impl Into<String>) -> SamplerError {
        SamplerError::InvalidSteps {
            sampler: self.kind,
            steps,
            reason: reason.into(),
        }
    }

    /// Refuses a feature flag easel does not implement when the file turns it on.
    pub fn reject_true(&self, key: &'static str, value: Option<bool>) -> Result<()> {
        match value {
            Some(true) => Err(self.unsupported(key, true, "false")),
            _ => Ok(()),
        }
    }

    pub fn num_train_timesteps(&self) -> Result<usize> {
        match self.cfg.num_train_timesteps.unwrap_or(1000) {
            n if n < 2 => Err(self.invalid(format!(
                "num_train_timesteps must be at least 2 (got {n}); SD models use 1000"
            ))),
            n => Ok(n),
        }
    }

    pub fn steps_offset(&self) -> i64 {
        self.cfg.steps_offset.unwrap_or(0)
    }

    pub fn spacing(&self, default: Spacing) -> Result<Spacing> {
        match self.cfg.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("linspace") => Ok(Spacing::Linspace),
            Some("leading") => Ok(Spacing::Leading),
            Some("trailing") => Ok(Spacing::Trailing),
            Some(other) => {
                Err(self.unsupported("timestep_spacing", format!("{other:?}"), "linspace, leading, trailing"))
            }
        }
    }

    /// The prediction type, refused unless this class supports it.
    pub fn prediction(&self, supported: &[Prediction]) -> Result<Prediction> {
        let parsed = match self.cfg.prediction_type.as_deref() {
            None | Some("epsilon") => Some(Prediction::Epsilon),
            Some("v_prediction") => Some(Prediction::Velocity),
            // diffusers still accepts the old spelling in Euler.
            Some("sample") | Some("original_sample") => Some(Prediction::Sample),
            Some(_) => None,
        };
        match parsed {
            Some(p) if supported.contains(&p) => Ok(p),
            _ => Err(SamplerError::Unsupported {
                sampler: self.kind,
                key: "prediction_type",
                value: format!("{:?}", self.cfg.prediction_type.as_deref().unwrap_or("")),
                supported: match supported.len() {
                    2 => "epsilon, v_prediction",
                    _ => "epsilon, v_prediction, sample",
                },
            }),
        }
    }

    /// `clip_sample` / `clip_sample_range` for the classes that have them.
    pub fn clip_range(&self, defaults: &Defaults) -> Option<f32> {
        self.cfg
            .clip_sample
            .unwrap_or(defaults.clip_sample)
            .then(|| self.cfg.clip_sample_range.unwrap_or(1.0) as f32)
    }

    /// ᾱ_t = ∏_{s≤t} (1 − β_s) for t = 0..num_train_timesteps, in `float32`.
    pub fn alphas_cumprod(&self, defaults: &Defaults, zero_snr: ZeroSnr) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps()?;
        let mut betas = match &self.cfg.trained_betas {
            Some(b) if b.len() != n => {
                return Err(self.invalid(format!(
                    "trained_betas has {} values but num_train_timesteps is {n}",
                    b.len()
                )));
            }
            Some(b) => b.iter().map(|&b| b as f32).collect(),
            None => {
                let start = self.cfg.beta_start.unwrap_or(defaults.beta_start);
                let end = self.cfg.beta_end.unwrap_or(defaults.beta_end);
                let schedule = self.cfg.beta_schedule.as_deref().unwrap_or(defaults.beta_schedule);
                match schedule {
                    "linear" => linspace_f32(start, end, n),
                    "scaled_linear" => linspace_f32(start.sqrt(), end.sqrt(), n)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                    "squaredcos_cap_v2" => {
                        betas_for_alpha_bar(n, |t| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2))
                    }
                    "exp" if self.kind == SamplerKind::Heun => betas_for_alpha_bar(n, |t| (t * -12.0).exp()),
                    other => {
                        return Err(self.unsupported(
                            "beta_schedule",
                            format!("{other:?}"),
                            "linear, scaled_linear, squaredcos_cap_v2",
                        ));
                    }
                }
            }
        };
        let rescale = zero_snr != ZeroSnr::NotAKey && self.cfg.rescale_betas_zero_snr == Some(true);
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
        if rescale && zero_snr == ZeroSnr::Nudged {
            // Close to 0 without being 0, so the first σ is finite (fp16's smallest subnormal).
            *alphas_cumprod.last_mut().expect("n >= 2") = 2f32.powi(-24);
        }
        Ok(alphas_cumprod)
    }

    /// Karras et al. (2022) σ schedule between the config's `sigma_min`/`sigma_max` (when the
    /// file has them) or the given ends.
    pub fn karras_sigmas(&self, sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
        karras_sigmas(
            self.cfg.sigma_min.unwrap_or(sigma_min),
            self.cfg.sigma_max.unwrap_or(sigma_max),
            steps,
        )
    }
}

/// torch.linspace(start, end, n, dtype=float32): `float32` math, each half anchored at its end,
/// with a fused multiply-add (what torch's vectorised CPU kernel computes).
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// Betas that discretise a continuous ᾱ(t), t ∈ [0, 1], capped at 0.999 (Nichol & Dhariwal).
fn betas_for_alpha_bar(n: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// torch.cumprod on `float32`: accumulates in double, stores `float32`.
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .map(|v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// Rescale betas to zero terminal SNR (Lin et al. 2023, arXiv:2305.08891, Algorithm 1).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
    let mut sqrt_ab: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let first = sqrt_ab[0];
    let last = *sqrt_ab.last().expect("non-empty");
    // Shift so the last timestep is zero, then scale so the first is back to its old value.
    let scale = first / (first - last);
    for s in &mut sqrt_ab {
        *s = (*s - last) * scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|s| s * s).collect();
    std::iter::once(ab[0])
        .chain(ab.windows(2).map(|w| w[1] / w[0]))
        .map(|alpha| 1.0 - alpha)
        .collect()
}

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep (ascending in t), in `float32`.
pub(super) fn sigmas_from_alphas_cumprod(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.log` of a `float32` σ table.
pub(super) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// `np.interp(t, arange(len), table)`: piecewise-linear lookup at a fractional timestep.
pub(super) fn interp(t: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if t <= 0.0 {
        return table[0] as f64;
    }
    if t >= last as f64 {
        return table[last] as f64;
    }
    let j = t.floor() as usize;
    let (lo, hi) = (table[j] as f64, table[j + 1] as f64);
    (hi - lo) * (t - j as f64) + lo
}

/// Inverse of σ(t): the fractional timestep whose log-σ matches, interpolating in log σ
/// between the two nearest training timesteps (diffusers' `_sigma_to_t`).
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&ls| log_sigma - ls as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al. (2022), eq. 5 with ρ = 7: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
pub(super) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// `np.linspace(start, stop, n)` (endpoint included, in `float64`).
pub(super) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { stop } else { i as f64 * step + start })
        .collect()
}

/// `np.arange(start, 0, -step)` for a positive float `step`, in numpy's arithmetic.
pub(super) fn arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let delta = (start - step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// Inference timesteps for `steps` steps over `num_train` training steps, descending, as the
/// Euler/DDIM family spaces them (`linspace` values are not rounded here).
pub(super) fn spaced_timesteps(spacing: Spacing, num_train: usize, steps: usize, steps_offset: i64) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut t = linspace(0.0, (num_train - 1) as f64, steps);
            t.reverse();
            t
        }
        Spacing::Leading => {
            let ratio = num_train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        Spacing::Trailing => arange_down(num_train as f64, num_train as f64 / steps as f64)
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Integer timesteps for the ᾱ-indexed samplers (DDIM, PLMS), checked against the table.
pub(super) fn discrete_timesteps(ctx: &Ctx, spaced: &[f64], num_train: usize) -> Result<Vec<i64>> {
    let timesteps: Vec<i64> = spaced.iter().map(|t| t.round_ties_even() as i64).collect();
    match timesteps.iter().find(|&&t| t < 0 || t >= num_train as i64) {
        Some(t) => Err(ctx.invalid(format!(
            "timestep {t} is outside the training range 0..{num_train}; lower steps_offset or the number of steps"
        ))),
        None => Ok(timesteps),
    }
}

/// x₀ from a model output at a point with ᾱ = `alpha_prod` (DDIM's parametrisation).
pub(super) fn predict_x0(prediction: Prediction, alpha_prod: f32, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
    let sqrt_a = alpha_prod.sqrt();
    let sqrt_b = (1.0 - alpha_prod).sqrt();
    match prediction {
        Prediction::Epsilon => model_output
            .iter()
            .zip(sample)
            .map(|(&e, &x)| (x - sqrt_b * e) / sqrt_a)
            .collect(),
        Prediction::Velocity => model_output
            .iter()
            .zip(sample)
            .map(|(&v, &x)| sqrt_a * x - sqrt_b * v)
            .collect(),
        Prediction::Sample => model_output.to_vec(),
    }
}

/// q(x_t | x₀) with ᾱ = `alpha_prod`: √ᾱ·x₀ + √(1−ᾱ)·ε.
pub(super) fn add_noise_vp(alpha_prod: f32, original: &[f32], noise: &[f32]) -> Vec<f32> {
    let sqrt_a = alpha_prod.sqrt();
    let sqrt_b = (1.0 - alpha_prod).sqrt();
    original
        .iter()
        .zip(noise)
        .map(|(&x, &n)| sqrt_a * x + sqrt_b * n)
        .collect()
}

/// x₀ from a model output at noise level σ in the variance-exploding parametrisation
/// x = x₀ + σ·ε that the Euler/Heun samplers walk (Karras et al. 2022, Table 1).
pub(super) fn ve_x0(prediction: Prediction, sigma: f32, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
    match prediction {
        Prediction::Epsilon => model_output.iter().zip(sample).map(|(&e, &x)| x - sigma * e).collect(),
        Prediction::Velocity => {
            // denoised = c_out · v + c_skip · x with c_out = −σ/√(σ²+1), c_skip = 1/(σ²+1).
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let skip_denominator = sigma * sigma + 1.0;
            model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| v * c_out + x / skip_denominator)
                .collect()
        }
        Prediction::Sample => model_output.to_vec(),
    }
}

/// Divides a VE sample by √(σ²+1) so the UNet sees unit-variance input.
pub(super) fn scale_ve_input(sample: &mut [f32], sigma: f32) {
    let scale = (sigma * sigma + 1.0).sqrt();
    for x in sample {
        *x /= scale;
    }
}

/// x₀ + σ·ε (VE forward process).
pub(super) fn add_noise_ve(sigma: f32, original: &[f32], noise: &[f32]) -> Vec<f32> {
    original.iter().zip(noise).map(|(&x, &n)| x + n * sigma).collect()
}

/// diffusers' `init_noise_sigma` for the VE samplers: σ_max, or √(σ_max²+1) with `leading`
/// spacing (whose first timestep is not the noisiest training one).
pub(super) fn ve_init_noise_sigma(sigmas: &[f32], spacing: Spacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Linspace | Spacing::Trailing => max as f64,
        Spacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

/// The σ-schedule shared by Euler and Heun: timesteps (as `float32`), their σ (`float64`, not
/// yet rounded) and the log-σ table, with Karras σ when the config asks for them.
pub(super) struct VeSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub spacing: Spacing,
}

impl VeSchedule {
    pub fn new(ctx: &Ctx, alphas_cumprod: &[f32], steps: usize) -> Result<Self> {
        let num_train = alphas_cumprod.len();
        let spacing = ctx.spacing(Spacing::Linspace)?;
        ctx.reject_true("use_exponential_sigmas", ctx.cfg.use_exponential_sigmas)?;
        ctx.reject_true("use_beta_sigmas", ctx.cfg.use_beta_sigmas)?;
        let mut timesteps: Vec<f64> = spaced_timesteps(spacing, num_train, steps, ctx.steps_offset())
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect();
        let table = sigmas_from_alphas_cumprod(alphas_cumprod);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
        if ctx.cfg.use_karras_sigmas == Some(true) {
            let log_table = log_sigmas(&table);
            sigmas = ctx.karras_sigmas(sigmas[sigmas.len() - 1], sigmas[0], steps);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_table) as f32 as f64)
                .collect();
        }
        Ok(Self {
            timesteps,
            sigmas,
            spacing,
        })
    }
}
