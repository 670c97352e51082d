//! Pseudo linear multistep (PLMS; Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
//! Models"): DDIM's transfer function driven by an Adams–Bashforth combination of the last four
//! noise predictions. diffusers' `PNDMScheduler` with `skip_prk_steps = true`: the warm-up is
//! one Heun-like step (the second timestep repeats the second-to-last training point) and then
//! Adams–Bashforth of rising order, so N steps take N + 1 UNet evaluations.

use super::schedule::{
    self, Ctx, DDPM_DEFAULTS, Defaults, Prediction, Result, Spacing, ZeroSnr, add_noise_vp, predict_x0,
};
use super::{NoiseSource, Scheduler, StepOutput};

/// PNDM's class defaults: `leading` spacing, ᾱ_prev at the end is ᾱ₀.
const PNDM_DEFAULTS: Defaults = Defaults {
    spacing: Spacing::Leading,
    ..DDPM_DEFAULTS
};

/// 1/24 as torch applies it to a `float32` tensor.
const ONE_24TH: f32 = (1.0f64 / 24.0) as f32;

#[derive(Debug, Clone)]
pub(super) struct Plms {
    timesteps: Vec<f64>,
    discrete: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    stride: i64,
    prediction: Prediction,
    /// Steps taken so far.
    counter: usize,
    /// Past model outputs, oldest first (at most four are used).
    ets: Vec<Vec<f32>>,
    /// The sample at the start of the warm-up step, for its second half.
    warmup_sample: Option<Vec<f32>>,
}

impl Plms {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity])?;
        let alphas_cumprod = ctx.alphas_cumprod(&PNDM_DEFAULTS, ZeroSnr::NotAKey)?;
        let num_train = alphas_cumprod.len();
        let spacing = ctx.spacing(PNDM_DEFAULTS.spacing)?;
        // Descending training points t_{N−1} > … > t₀.
        let spaced = schedule::spaced_timesteps(spacing, num_train, steps, ctx.steps_offset());
        let points = schedule::discrete_timesteps(ctx, &spaced, num_train)?;
        // PLMS order: [t_{N−1}, t_{N−2}, t_{N−2}, t_{N−3}, …, t₀] (the repeat is the warm-up).
        let mut discrete = points.clone();
        if points.len() >= 2 {
            discrete.insert(1, points[1]);
        }
        let set_alpha_to_one = ctx.cfg.set_alpha_to_one.unwrap_or(PNDM_DEFAULTS.set_alpha_to_one);
        Ok(Self {
            timesteps: discrete.iter().map(|&t| t as f64).collect(),
            discrete,
            final_alpha_cumprod: if set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            stride: (num_train / steps) as i64,
            prediction,
            counter: 0,
            ets: Vec::new(),
            warmup_sample: None,
        })
    }

    fn alpha_prod(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_alpha_cumprod
        } else {
            // Only a nonsensical steps_offset can push the warm-up past the table.
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        }
    }

    /// DDIM's transfer x_t → x_{t_prev} for noise estimate `eps` (PNDM paper, eq. 9).
    fn transfer(&self, sample: &[f32], t: i64, t_prev: i64, model_output: &[f32]) -> Vec<f32> {
        let alpha_prod_t = self.alpha_prod(t);
        let alpha_prod_prev = self.alpha_prod(t_prev);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_prev = 1.0 - alpha_prod_prev;
        let eps: Vec<f32> = match self.prediction {
            Prediction::Velocity => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| alpha_prod_t.sqrt() * v + beta_prod_t.sqrt() * x)
                .collect(),
            _ => model_output.to_vec(),
        };
        let sample_coeff = (alpha_prod_prev / alpha_prod_t).sqrt();
        let eps_denominator =
            alpha_prod_t * beta_prod_prev.sqrt() + (alpha_prod_t * beta_prod_t * alpha_prod_prev).sqrt();
        let eps_coeff = alpha_prod_prev - alpha_prod_t;
        sample
            .iter()
            .zip(&eps)
            .map(|(&x, &e)| sample_coeff * x - eps_coeff * e / eps_denominator)
            .collect()
    }
}

impl Scheduler for Plms {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> StepOutput {
        let timestep = self.discrete[index];
        let pred_original_sample = predict_x0(self.prediction, self.alpha_prod(timestep), model_output, sample);
        let (mut t, mut t_prev) = (timestep, timestep - self.stride);
        if self.counter == 1 {
            // Second half of the warm-up: re-take the first step from its start with the
            // average of both slopes.
            t_prev = timestep;
            t = timestep + self.stride;
        } else {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.to_vec());
        }
        // Warm-up: remember where the first step started; its second half restarts there.
        let warmup_start = match self.counter {
            0 => {
                self.warmup_sample = Some(sample.to_vec());
                None
            }
            1 => self.warmup_sample.take(),
            _ => None,
        };
        let from = warmup_start.as_deref().unwrap_or(sample);
        // Adams–Bashforth combination of the stored noise estimates, newest last.
        let e = &self.ets;
        let n = e.len();
        let eps: Vec<f32> = (0..sample.len())
            .map(|i| match (n, self.counter) {
                (1, 0) => model_output[i],
                (1, _) => (model_output[i] + e[0][i]) / 2.0,
                (2, _) => (3.0 * e[1][i] - e[0][i]) / 2.0,
                (3, _) => (23.0 * e[2][i] - 16.0 * e[1][i] + 5.0 * e[0][i]) / 12.0,
                _ => ONE_24TH * (55.0 * e[n - 1][i] - 59.0 * e[n - 2][i] + 37.0 * e[n - 3][i] - 9.0 * e[n - 4][i]),
            })
            .collect();
        let prev_sample = self.transfer(from, t, t_prev, &eps);
        self.counter += 1;
        StepOutput {
            prev_sample,
            pred_original_sample,
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
        replay_references(SamplerKind::Pndm);
    }
}
