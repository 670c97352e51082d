//! Latent consistency model sampling (Luo et al. 2023, "Latent Consistency Models",
//! Algorithm 1): at each step the consistency function maps the sample straight to x₀, which
//! is then re-noised to the next timestep of a subsequence of the distillation schedule.
//! diffusers' `LCMScheduler`.

use super::schedule::{Ctx, Defaults, Prediction, Result, Spacing, ZeroSnr, add_noise_vp, linspace, predict_x0};
use super::{NoiseSource, Scheduler, StepOutput};

/// LCM's class defaults: SD's scaled-linear betas, no clipping, ᾱ_prev = 1 at the end.
const LCM_DEFAULTS: Defaults = Defaults {
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    spacing: Spacing::Leading,
    clip_sample: false,
    set_alpha_to_one: true,
};

/// σ_data of the consistency-model boundary condition.
const SIGMA_DATA: f32 = 0.5;

#[derive(Debug, Clone)]
pub(super) struct Lcm {
    timesteps: Vec<f64>,
    discrete: Vec<usize>,
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    timestep_scaling: f64,
}

impl Lcm {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity, Prediction::Sample])?;
        ctx.reject_true("thresholding", ctx.cfg.thresholding)?;
        // timestep_spacing and steps_offset exist in LCMScheduler's config but its schedule
        // ignores them; so do we.
        let alphas_cumprod = ctx.alphas_cumprod(&LCM_DEFAULTS, ZeroSnr::Exact)?;
        let num_train = alphas_cumprod.len();
        let original_steps = ctx.cfg.original_inference_steps.unwrap_or(50);
        if original_steps == 0 || original_steps > num_train {
            return Err(ctx.invalid(format!(
                "original_inference_steps must be between 1 and num_train_timesteps ({num_train}), got {original_steps}"
            )));
        }
        if steps > original_steps {
            return Err(ctx.invalid_steps(
                steps,
                format!("LCM can take at most original_inference_steps ({original_steps}) steps; use 2-8 steps"),
            ));
        }
        // The distillation schedule: every k-th training step, k = T / original_steps.
        let k = num_train / original_steps;
        let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
        // Evenly spaced picks (flooring) from the distillation schedule, noisiest first.
        let discrete: Vec<usize> = linspace(0.0, origin.len() as f64, steps + 1)[..steps]
            .iter()
            .map(|&i| origin[i.floor() as usize])
            .collect();
        Ok(Self {
            timesteps: discrete.iter().map(|&t| t as f64).collect(),
            discrete,
            alphas_cumprod,
            prediction,
            clip: ctx.clip_range(&LCM_DEFAULTS),
            timestep_scaling: ctx.cfg.timestep_scaling.unwrap_or(10.0),
        })
    }

    /// c_skip(t), c_out(t) of the consistency parametrisation f(x, t) = c_skip·x + c_out·x₀.
    fn boundary_scalings(&self, t: usize) -> (f32, f32) {
        let scaled = (t as f64 * self.timestep_scaling) as f32;
        let denominator = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
        (SIGMA_DATA * SIGMA_DATA / denominator, scaled / denominator.sqrt())
    }
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], noise: &mut dyn NoiseSource) -> StepOutput {
        let t = self.discrete[index];
        let alpha_prod_t = self.alphas_cumprod[t];
        let mut x0 = predict_x0(self.prediction, alpha_prod_t, model_output, sample);
        if let Some(range) = self.clip {
            x0.iter_mut().for_each(|v| *v = v.clamp(-range, range));
        }
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised: Vec<f32> = x0.iter().zip(sample).map(|(&d, &x)| c_out * d + c_skip * x).collect();
        let prev_sample = match self.discrete.get(index + 1) {
            // Re-noise the consistency estimate to the next timestep.
            Some(&t_prev) => {
                let fresh = noise.standard_normal(sample.len());
                add_noise_vp(self.alphas_cumprod[t_prev], &denoised, &fresh)
            }
            None => denoised.clone(),
        };
        StepOutput {
            prev_sample,
            pred_original_sample: denoised,
        }
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        add_noise_vp(self.alphas_cumprod[self.discrete[index]], original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SamplerKind, tests::replay_references};

    #[test]
    fn matches_diffusers() {
        replay_references(SamplerKind::Lcm);
    }
}
