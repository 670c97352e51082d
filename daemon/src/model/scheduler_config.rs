//! diffusers' `scheduler/scheduler_config.json`, read the way `json.load` + `from_config` see it.
//!
//! It belongs to the model folder; the samplers (`generation::sampler`) build themselves from
//! it exactly as diffusers' `Class.from_config` does: keys the file has carry over, keys it
//! lacks take the class default.

use std::borrow::Cow;

use serde::Deserialize;

/// diffusers' `scheduler_config.json`. Every field is optional (absent and `null` mean "use the
/// class default"); unknown keys are ignored. Field names are diffusers' own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The diffusers class the model ships with, e.g. `"PNDMScheduler"`.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// `linear` | `scaled_linear` | `squaredcos_cap_v2` (Heun also: `exp`).
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon` | `v_prediction` | `sample`.
    pub prediction_type: Option<String>,
    /// `linspace` | `leading` | `trailing`.
    pub timestep_spacing: Option<String>,
    pub steps_offset: Option<i64>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    pub thresholding: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    /// Euler: `linear` (the only one easel supports) | `log_linear`.
    pub interpolation_type: Option<String>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler: `discrete` | `continuous`.
    pub timestep_type: Option<String>,
    /// Euler/DPM-Solver: `zero` | `sigma_min`.
    pub final_sigmas_type: Option<String>,
    /// Ignored by easel (PLMS always skips the PRK warm-up); kept for completeness.
    pub skip_prk_steps: Option<bool>,
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    /// DPM-Solver: `midpoint` | `heun`.
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    pub variance_type: Option<String>,
    /// LCM: the distillation schedule length.
    pub original_inference_steps: Option<usize>,
    /// LCM: scale of the consistency-model boundary condition.
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// Parse `scheduler_config.json` text. Python's bare `NaN`/`Infinity`/`-Infinity` (which
    /// diffusers writes for e.g. `lambda_min_clipped`) read as `null`, i.e. the class default.
    pub fn from_json_str(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&replace_non_finite(json))
    }
}

/// Replaces Python's bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) by `null`.
fn replace_non_finite(json: &str) -> Cow<'_, str> {
    if !json.contains("NaN") && !json.contains("Infinity") {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = json;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_python_infinities_are_accepted() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
                "brand_new_option": [1, 2], "note": "Infinity is a string here", "sigma_max": NaN,
                "use_karras_sigmas": true}"#,
        )
        .unwrap();
        assert_eq!(c.lambda_min_clipped, None);
        assert_eq!(c.sigma_max, None);
        assert_eq!(c.use_karras_sigmas, Some(true));
        assert_eq!(
            replace_non_finite(r#"{"a": "x\"NaN", "b": -Infinity}"#),
            r#"{"a": "x\"NaN", "b": null}"#
        );
    }

    #[test]
    fn malformed_config_is_an_error() {
        for bad in ["", "[1, 2]", r#"{"steps_offset": "one"}"#, "{"] {
            assert!(SchedulerConfig::from_json_str(bad).is_err(), "{bad}");
        }
    }
}
