//! Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1):
//! an Euler predictor to σ_next, then a corrector that averages the slopes at both ends.
//! diffusers' `HeunDiscreteScheduler`, which interleaves the two evaluations as separate
//! timesteps: [t₀, t₁, t₁, t₂, t₂, …, t_{N−1}, t_{N−1}] (2N − 1 entries; the last step has no
//! corrector because σ_next = 0).

use super::schedule::{
    Ctx, Defaults, Prediction, Result, Spacing, VeSchedule, ZeroSnr, add_noise_ve, scale_ve_input, ve_init_noise_sigma,
    ve_x0,
};
use super::{NoiseSource, Scheduler, StepOutput};

/// Heun's class defaults: SD's β range, but with a `linear` schedule.
const HEUN_DEFAULTS: Defaults = Defaults {
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: "linear",
    spacing: Spacing::Linspace,
    clip_sample: false,
    set_alpha_to_one: false,
};

/// The predictor's slope and step, kept for the corrector.
#[derive(Debug, Clone)]
struct Predictor {
    derivative: Vec<f32>,
    dt: f32,
    sample: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(super) struct HeunDiscrete {
    timesteps: Vec<f64>,
    /// [σ₀, σ₁, σ₁, …, σ_{N−1}, σ_{N−1}, 0]: 2N entries, one per timestep plus the final 0.
    sigmas: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    init_noise_sigma: f64,
    predictor: Option<Predictor>,
}

impl HeunDiscrete {
    pub fn new(ctx: &Ctx, steps: usize) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity, Prediction::Sample])?;
        // HeunDiscreteScheduler has no rescale_betas_zero_snr: from_config ignores the key.
        let alphas_cumprod = ctx.alphas_cumprod(&HEUN_DEFAULTS, ZeroSnr::NotAKey)?;
        let ve = VeSchedule::new(ctx, &alphas_cumprod, steps)?;
        let base: Vec<f32> = ve.sigmas.iter().map(|&s| s as f32).chain([0.0]).collect();
        let sigmas: Vec<f32> = std::iter::once(base[0])
            .chain(base[1..steps].iter().flat_map(|&s| [s, s]))
            .chain([0.0])
            .collect();
        let timesteps: Vec<f64> = std::iter::once(ve.timesteps[0])
            .chain(ve.timesteps[1..].iter().flat_map(|&t| [t, t]))
            .collect();
        Ok(Self {
            init_noise_sigma: ve_init_noise_sigma(&sigmas, ve.spacing),
            timesteps,
            sigmas,
            prediction,
            clip: ctx.clip_range(&HEUN_DEFAULTS),
            predictor: None,
        })
    }
}

impl Scheduler for HeunDiscrete {
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
        // Both stages evaluate the model at σ = sigmas[index]: the predictor at the step's start,
        // the corrector at its end (the predicted point at σ_next).
        let sigma = self.sigmas[index];
        let mut x0 = ve_x0(self.prediction, sigma, model_output, sample);
        if let Some(range) = self.clip {
            x0.iter_mut().for_each(|v| *v = v.clamp(-range, range));
        }
        let slope: Vec<f32> = sample.iter().zip(&x0).map(|(&x, &d)| (x - d) / sigma).collect();
        let prev_sample = match self.predictor.take() {
            None => {
                let dt = self.sigmas[index + 1] - sigma;
                let prev = sample.iter().zip(&slope).map(|(&x, &d)| x + d * dt).collect();
                self.predictor = Some(Predictor {
                    derivative: slope,
                    dt,
                    sample: sample.to_vec(),
                });
                prev
            }
            Some(start) => start
                .sample
                .iter()
                .zip(&start.derivative)
                .zip(&slope)
                .map(|((&x, &d_start), &d_end)| x + (d_start + d_end) / 2.0 * start.dt)
                .collect(),
        };
        StepOutput {
            prev_sample,
            pred_original_sample: x0,
        }
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        add_noise_ve(self.sigmas[index], original, noise)
    }

    fn order(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SamplerKind, tests::replay_references};

    #[test]
    fn matches_diffusers() {
        replay_references(SamplerKind::Heun);
    }
}
