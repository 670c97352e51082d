//! Denoising diffusion implicit models (Song et al. 2021, eq. 12) with η = 0: predict x₀, then
//! move deterministically to the previous timestep along the predicted noise direction.
//! diffusers' `DDIMScheduler` with `eta = 0`.

use super::schedule::{
    self, Ctx, DDPM_DEFAULTS, Defaults, Prediction, Result, Spacing, ZeroSnr, add_noise_vp, predict_x0,
};
use super::{NoiseSource, Scheduler, StepOutput};

/// DDIM's class defaults: `leading` spacing, clipping on, ᾱ_prev fixed to 1 at the end.
const DDIM_DEFAULTS: Defaults = Defaults {
    spacing: Spacing::Leading,
    clip_sample: true,
    set_alpha_to_one: true,
    ..DDPM_DEFAULTS
};

#[derive(Debug, Clone)]
pub(super) struct Ddim {
    timesteps: Vec<f64>,
    discrete: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used after the last timestep.
    final_alpha_cumprod: f32,
    /// How far back each step jumps: num_train_timesteps / steps (integer division, as diffusers).
    stride: i64,
    prediction: Prediction,
    clip: Option<f32>,
}

impl Ddim {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity, Prediction::Sample])?;
        ctx.reject_true("thresholding", ctx.cfg.thresholding)?;
        let alphas_cumprod = ctx.alphas_cumprod(&DDIM_DEFAULTS, ZeroSnr::Exact)?;
        let num_train = alphas_cumprod.len();
        if steps > num_train {
            return Err(ctx.invalid_steps(
                steps,
                format!("at most num_train_timesteps ({num_train}) steps are possible"),
            ));
        }
        let spacing = ctx.spacing(DDIM_DEFAULTS.spacing)?;
        let spaced = schedule::spaced_timesteps(spacing, num_train, steps, ctx.steps_offset());
        let discrete = schedule::discrete_timesteps(ctx, &spaced, num_train)?;
        let set_alpha_to_one = ctx.cfg.set_alpha_to_one.unwrap_or(DDIM_DEFAULTS.set_alpha_to_one);
        Ok(Self {
            timesteps: discrete.iter().map(|&t| t as f64).collect(),
            discrete,
            final_alpha_cumprod: if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            stride: (num_train / steps) as i64,
            prediction,
            clip: ctx.clip_range(&DDIM_DEFAULTS),
        })
    }

    fn alpha_prod(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> StepOutput {
        let t = self.discrete[index];
        let alpha_prod_t = self.alpha_prod(t);
        let alpha_prod_prev = self.alpha_prod(t - self.stride);
        let beta_prod_t = 1.0 - alpha_prod_t;

        let mut x0 = predict_x0(self.prediction, alpha_prod_t, model_output, sample);
        // ε implied by the model output (recomputed from x₀ before clipping, as diffusers does
        // with use_clipped_model_output = false).
        let eps: Vec<f32> = match self.prediction {
            Prediction::Epsilon => model_output.to_vec(),
            Prediction::Sample => sample
                .iter()
                .zip(&x0)
                .map(|(&x, &d)| (x - alpha_prod_t.sqrt() * d) / beta_prod_t.sqrt())
                .collect(),
            Prediction::Velocity => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| alpha_prod_t.sqrt() * v + beta_prod_t.sqrt() * x)
                .collect(),
        };
        if let Some(range) = self.clip {
            x0.iter_mut().for_each(|v| *v = v.clamp(-range, range));
        }
        // x_{t−1} = √ᾱ_{t−1}·x₀ + √(1 − ᾱ_{t−1})·ε  (η = 0, so σ_t = 0).
        let direction = (1.0 - alpha_prod_prev).sqrt();
        let keep = alpha_prod_prev.sqrt();
        let prev_sample = x0.iter().zip(&eps).map(|(&d, &e)| keep * d + direction * e).collect();
        StepOutput {
            prev_sample,
            pred_original_sample: x0,
        }
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        add_noise_vp(self.alpha_prod(self.discrete[index]), original, noise)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SamplerKind, tests::replay_references};

    #[test]
    fn matches_diffusers() {
        replay_references(SamplerKind::Ddim);
    }
}
