//! Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn):
//! diffusers' `EulerDiscreteScheduler`.

use super::schedule::{
    self, Ctx, DDPM_DEFAULTS, Prediction, Result, VeSchedule, ZeroSnr, add_noise_ve, scale_ve_input,
    ve_init_noise_sigma, ve_x0,
};
use super::{NoiseSource, Scheduler, StepOutput};

#[derive(Debug, Clone)]
pub(super) struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// σ per timestep, then the final σ (0 or σ_min): N + 1 entries.
    sigmas: Vec<f32>,
    prediction: Prediction,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity, Prediction::Sample])?;
        match ctx.cfg.interpolation_type.as_deref() {
            None | Some("linear") => {}
            Some(other) => {
                return Err(ctx.unsupported("interpolation_type", format!("{other:?}"), "linear"));
            }
        }
        let continuous = match ctx.cfg.timestep_type.as_deref() {
            None | Some("discrete") => false,
            Some("continuous") => true,
            Some(other) => {
                return Err(ctx.unsupported("timestep_type", format!("{other:?}"), "discrete, continuous"));
            }
        };
        let alphas_cumprod = ctx.alphas_cumprod(&DDPM_DEFAULTS, ZeroSnr::Nudged)?;
        let ve = VeSchedule::new(ctx, &alphas_cumprod, steps)?;
        let final_sigma = final_sigma(ctx, &alphas_cumprod)?;
        let sigmas: Vec<f32> = ve.sigmas.iter().map(|&s| s as f32).chain([final_sigma]).collect();
        let timesteps = if continuous && prediction == Prediction::Velocity {
            // EDM-style model time c_noise = ¼ ln σ.
            sigmas[..steps].iter().map(|s| (0.25 * s.ln()) as f64).collect()
        } else {
            ve.timesteps
        };
        Ok(Self {
            init_noise_sigma: ve_init_noise_sigma(&sigmas, ve.spacing),
            timesteps,
            sigmas,
            prediction,
        })
    }
}

/// The σ after the last step: 0 (`zero`, the default) or the smallest training σ (`sigma_min`).
pub(super) fn final_sigma(ctx: &Ctx, alphas_cumprod: &[f32]) -> Result<f32> {
    match ctx.cfg.final_sigmas_type.as_deref() {
        None | Some("zero") => Ok(0.0),
        Some("sigma_min") => Ok(schedule::sigmas_from_alphas_cumprod(&alphas_cumprod[..1])[0]),
        Some(other) => Err(ctx.unsupported("final_sigmas_type", format!("{other:?}"), "zero, sigma_min")),
    }
}

impl Scheduler for EulerDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], index: usize) {
        scale_ve_input(sample, self.sigmas[index]);
    }

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> StepOutput {
        let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
        let x0 = ve_x0(self.prediction, sigma, model_output, sample);
        // dx/dσ = (x − x₀)/σ; one Euler step from σ to σ_next.
        let dt = sigma_next - sigma;
        let prev_sample = sample
            .iter()
            .zip(&x0)
            .map(|(&x, &d)| x + (x - d) / sigma * dt)
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
        replay_references(SamplerKind::Euler);
    }
}
