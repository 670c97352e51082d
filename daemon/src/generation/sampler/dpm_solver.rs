//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
//! diffusion ODE in data-prediction form, stepping in λ = ln(α/σ). diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"`, `solver_order = 2`;
//! optionally with Karras et al. (2022) σ spacing.

use super::schedule::{self, Ctx, DDPM_DEFAULTS, Prediction, Result, Spacing, ZeroSnr, linspace};
use super::{NoiseSource, Scheduler, StepOutput};

/// Second-order correction variant (`solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Debug, Clone)]
pub(super) struct DpmSolverPp2m {
    timesteps: Vec<f64>,
    /// σ per timestep, then the final σ: N + 1 entries (VE σ = √((1−ᾱ)/ᾱ)).
    sigmas: Vec<f32>,
    prediction: Prediction,
    solver_type: SolverType,
    /// Use first order on the last step (diffusers' lower_order_final / euler_at_final /
    /// final_sigmas_type = "zero" rule, resolved for this schedule length).
    first_order_last: bool,
    /// The x₀ estimates of the previous and the current step.
    previous_x0: Option<Vec<f32>>,
    /// Steps taken so far (diffusers' lower_order_nums, capped at the order).
    lower_order_nums: usize,
}

/// (α_t, σ_t) of the VP process at VE noise level σ: α = 1/√(σ²+1), σ_t = σ·α.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = ln α − ln σ_t (half the log-SNR), +∞ at σ = 0.
fn lambda(alpha: f32, sigma: f32) -> f64 {
    (alpha as f64).ln() - (sigma as f64).ln()
}

impl DpmSolverPp2m {
    pub fn new(ctx: &Ctx, steps: usize, karras: bool) -> Result<Self> {
        let prediction = ctx.prediction(&[Prediction::Epsilon, Prediction::Velocity, Prediction::Sample])?;
        ctx.reject_true("thresholding", ctx.cfg.thresholding)?;
        ctx.reject_true("use_exponential_sigmas", ctx.cfg.use_exponential_sigmas)?;
        ctx.reject_true("use_beta_sigmas", ctx.cfg.use_beta_sigmas)?;
        ctx.reject_true("use_lu_lambdas", ctx.cfg.use_lu_lambdas)?;
        ctx.reject_true("use_flow_sigmas", ctx.cfg.use_flow_sigmas)?;
        if let Some(v @ ("learned" | "learned_range")) = ctx.cfg.variance_type.as_deref() {
            return Err(ctx.unsupported("variance_type", format!("{v:?}"), "null"));
        }
        let solver_type = match ctx.cfg.solver_type.as_deref() {
            // diffusers maps the UniPC/DEIS names onto midpoint.
            None | Some("midpoint" | "logrho" | "bh1" | "bh2") => SolverType::Midpoint,
            Some("heun") => SolverType::Heun,
            Some(other) => {
                return Err(ctx.unsupported("solver_type", format!("{other:?}"), "midpoint, heun"));
            }
        };
        let final_zero = match ctx.cfg.final_sigmas_type.as_deref() {
            None | Some("zero") => true,
            Some("sigma_min") => false,
            Some(other) => {
                return Err(ctx.unsupported("final_sigmas_type", format!("{other:?}"), "zero, sigma_min"));
            }
        };

        let alphas_cumprod = ctx.alphas_cumprod(&DDPM_DEFAULTS, ZeroSnr::Nudged)?;
        let num_train = alphas_cumprod.len();
        let table = schedule::sigmas_from_alphas_cumprod(&alphas_cumprod);

        // Timesteps whose λ falls below lambda_min_clipped are never visited.
        let clipped = match ctx.cfg.lambda_min_clipped {
            Some(min) if min > f64::NEG_INFINITY => alphas_cumprod
                .iter()
                .rev()
                .map(|&a| lambda(a.sqrt(), (1.0 - a).sqrt()))
                .take_while(|&l| l < min)
                .count(),
            _ => 0,
        };
        let last_timestep = num_train - clipped;
        let spacing = ctx.spacing(Spacing::Linspace)?;
        let mut timesteps: Vec<f64> = match spacing {
            // N + 1 points including 0, which is then dropped.
            Spacing::Linspace => linspace(0.0, last_timestep as f64 - 1.0, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(f64::round_ties_even)
                .collect(),
            Spacing::Leading => {
                let ratio = last_timestep / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio) as f64 + ctx.steps_offset() as f64)
                    .collect()
            }
            Spacing::Trailing => schedule::arange_down(last_timestep as f64, num_train as f64 / steps as f64)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect(),
        };

        let sigmas: Vec<f64> = if karras {
            let log_table = schedule::log_sigmas(&table);
            let sigmas = ctx.karras_sigmas(table[0] as f64, table[num_train - 1] as f64, steps);
            let cosine = ctx.cfg.beta_schedule.as_deref() == Some("squaredcos_cap_v2");
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = schedule::sigma_to_t(s, &log_table);
                    // Rounded, except on cosine schedules; stored as int64 (truncating).
                    if cosine { t.trunc() } else { t.round_ties_even() }
                })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| schedule::interp(t, &table)).collect()
        };
        let final_sigma = if final_zero { 0.0 } else { table[0] };
        let sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).chain([final_sigma]).collect();

        let n = timesteps.len();
        let lower_order_final = ctx.cfg.lower_order_final.unwrap_or(true);
        let euler_at_final = ctx.cfg.euler_at_final.unwrap_or(false);
        Ok(Self {
            timesteps,
            sigmas,
            prediction,
            solver_type,
            first_order_last: euler_at_final || (lower_order_final && n < 15) || final_zero,
            previous_x0: None,
            lower_order_nums: 0,
        })
    }

    /// The data prediction x₀ from the raw model output at σ (diffusers' convert_model_output).
    fn x0(&self, sigma: f32, model_output: &[f32], sample: &[f32]) -> Vec<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.prediction {
            Prediction::Epsilon => model_output
                .iter()
                .zip(sample)
                .map(|(&e, &x)| (x - sigma_t * e) / alpha_t)
                .collect(),
            Prediction::Velocity => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| alpha_t * x - sigma_t * v)
                .collect(),
            Prediction::Sample => model_output.to_vec(),
        }
    }
}

impl Scheduler for DpmSolverPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], _index: usize) {}

    fn step(&mut self, model_output: &[f32], index: usize, sample: &[f32], _noise: &mut dyn NoiseSource) -> StepOutput {
        let x0 = self.x0(self.sigmas[index], model_output, sample);
        let previous_x0 = self.previous_x0.take();

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[index]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        // x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D  (DPM-Solver++ first-order update).
        let ratio = sigma_t / sigma_s0;
        let phi = (alpha_t as f64 * ((-h).exp() - 1.0)) as f32;

        let last = index + 1 == self.timesteps.len();
        let first_order = self.lower_order_nums < 1 || (last && self.first_order_last);
        let prev_sample = match (first_order, &previous_x0) {
            // σ_next = σ (Karras σ ending at σ_min with final_sigmas_type "sigma_min"): the
            // step is the identity. diffusers' heun variant computes 0/0 = NaN here.
            _ if h == 0.0 => sample.to_vec(),
            (false, Some(m1)) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[index - 1]);
                let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                let r0 = h_0 / h;
                let inv_r0 = (1.0 / r0) as f32;
                // D1 = (m0 − m1)/r0 estimates h·dx₀/dλ.
                let d1_coeff = match self.solver_type {
                    SolverType::Midpoint => 0.5 * phi,
                    SolverType::Heun => -((alpha_t as f64) * (((-h).exp() - 1.0) / h + 1.0)) as f32,
                };
                sample
                    .iter()
                    .zip(&x0)
                    .zip(m1)
                    .map(|((&x, &m0), &m1)| {
                        let d1 = inv_r0 * (m0 - m1);
                        ratio * x - phi * m0 - d1_coeff * d1
                    })
                    .collect()
            }
            _ => sample.iter().zip(&x0).map(|(&x, &d)| ratio * x - phi * d).collect(),
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(2);
        self.previous_x0 = Some(x0.clone());
        StepOutput {
            prev_sample,
            pred_original_sample: x0,
        }
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], index: usize) -> Vec<f32> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        original
            .iter()
            .zip(noise)
            .map(|(&x, &n)| alpha * x + sigma * n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SamplerKind, tests::replay_references};

    #[test]
    fn matches_diffusers_2m() {
        replay_references(SamplerKind::DpmPp2m);
    }

    #[test]
    fn matches_diffusers_2m_karras() {
        replay_references(SamplerKind::DpmPp2mKarras);
    }
}
