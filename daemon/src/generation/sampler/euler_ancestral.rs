//! Ancestral Euler sampling (k-diffusion's `sample_euler_ancestral`): each step goes down to
//! σ_down deterministically and adds fresh noise of size σ_up, with σ_down² + σ_up² = σ_next².
//! diffusers' `EulerAncestralDiscreteScheduler` with eta 1.

use super::schedule::{
    self, Ctx, DDPM_DEFAULTS, Prediction, Result, Spacing, ZeroSnr, add_noise_ve, scale_ve_input, ve_init_noise_sigma,
    ve_x0,
};
use super::{NoiseSource, Scheduler, StepOutput};

#[derive(Debug, Clone)]
pub(super) struct EulerAncestral {
    timesteps: Vec<f64>,
    /// σ per timestep, then 0: N + 1 entries.
    sigmas: Vec<f32>,
    prediction: Prediction,
    init_noise_sigma: f64,
}

impl EulerAncestral {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        // diffusers raises NotImplementedError for `sample` here.
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity])?;
        let alphas_cumprod = ctx.alphas_cumprod(&DDPM_DEFAULTS, ZeroSnr::Nudged)?;
        let spacing = ctx.spacing(Spacing::Linspace)?;
        let timesteps: Vec<f64> = schedule::spaced_timesteps(spacing, alphas_cumprod.len(), steps, ctx.steps_offset())
            .into_iter()
            .map(|t| t as f32 as f64)
            .collect();
        let table = schedule::sigmas_from_alphas_cumprod(&alphas_cumprod);
        let sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| schedule::interp(t, &table) as f32)
            .chain([0.0])
            .collect();
        Ok(Self {
            init_noise_sigma: ve_init_noise_sigma(&sigmas, spacing),
            timesteps,
            sigmas,
            prediction,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], index: usize) {
        scale_ve_input(sample, self.sigmas[index]);
    }

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> StepOutput {
        let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
        let x0 = ve_x0(self.prediction, sigma, model_output, sample);
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        // diffusers draws noise on every step, the last one included (where σ_up = 0).
        let fresh = noise.standard_normal(sample.len());
        let prev_sample = sample
            .iter()
            .zip(&x0)
            .zip(&fresh)
            .map(|((&x, &d), &n)| (x + (x - d) / sigma * dt) + n * sigma_up)
            .collect();
        StepOutput {
            prev_sample,
            pred_original_sample: x0,
        }
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        add_noise_ve(self.sigmas[index], original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SamplerKind, tests::replay_references};

    #[test]
    fn matches_diffusers() {
        replay_references(SamplerKind::EulerAncestral);
    }
}
