//! Replays the diffusers reference trajectories in `testdata/references.json` (made by
//! `tools/sampler_references.py`), plus tests of config parsing, names and errors.

use std::collections::HashMap;

use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
struct References {
    diffusers: String,
    configs: HashMap<String, serde_json::Value>,
    init_noise: Vec<f32>,
    clean: Vec<f32>,
    add_noise_noise: Vec<f32>,
    noise_pool: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    config: String,
    sampler: String,
    steps: usize,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    #[serde(rename = "final")]
    final_sample: Vec<f32>,
    pred_original: Option<Vec<f32>>,
    noise_used: usize,
    add_noise_index: Option<usize>,
    add_noise: Option<Vec<f32>>,
}

fn references() -> References {
    serde_json::from_str(include_str!("testdata/references.json")).expect("references.json")
}

/// Hands out consecutive slices of the recorded noise pool, like the patched `randn_tensor`.
struct Replay<'a> {
    pool: &'a [f32],
    used: usize,
}

impl NoiseSource for Replay<'_> {
    fn fill_standard_normal(&mut self, out: &mut [f32]) {
        out.copy_from_slice(&self.pool[self.used..self.used + out.len()]);
        self.used += out.len();
    }
}

/// The synthetic "UNet" of the reference script: f32(0.3·x + 0.05·sin(t/100 + 0.1·i)).
fn model(scaled: &[f32], t: f64) -> Vec<f32> {
    scaled
        .iter()
        .enumerate()
        .map(|(i, &x)| (0.3 * x as f64 + 0.05 * (t / 100.0 + i as f64 * 0.1).sin()) as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).abs()).fold(0.0, f64::max)
}

/// Absolute tolerance 1e-4, scaled up for trajectories whose values are far above 1 (the
/// cosine-schedule cases reach |x| ~ 1e4..1e7, where f32 itself only resolves ~1e-3..1).
fn tolerance(reference: &[f32]) -> f64 {
    1e-4 * max_abs(reference).max(1.0)
}

/// Builds `kind` for every reference case and checks it against diffusers.
pub(super) fn replay_references(kind: SamplerKind) {
    let refs = references();
    assert_eq!(refs.diffusers, "0.35.2");
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in refs.cases.iter().filter(|c| c.sampler == kind.name()) {
        let label = format!("{}/{}/{} steps", case.config, case.sampler, case.steps);
        let json = serde_json::to_string(&refs.configs[&case.config]).unwrap();
        let config = SchedulerConfig::from_json_str(&json).unwrap();
        let mut s = build(kind, &config, case.steps).unwrap_or_else(|e| panic!("{label}: {e}"));

        let ts = s.timesteps();
        assert_eq!(
            ts.len(),
            case.timesteps.len(),
            "{label}: timesteps {ts:?} vs {:?}",
            case.timesteps
        );
        for (a, b) in ts.iter().zip(&case.timesteps) {
            assert!(
                (a - b).abs() <= 1e-3,
                "{label}: timesteps {ts:?} vs {:?}",
                case.timesteps
            );
        }
        let sigma = s.init_noise_sigma();
        let rel = (sigma - case.init_noise_sigma).abs() / case.init_noise_sigma;
        assert!(
            rel <= 1e-5,
            "{label}: init_noise_sigma {sigma} vs {}",
            case.init_noise_sigma
        );

        let mut latents: Vec<f32> = refs.init_noise.iter().map(|&n| (n as f64 * sigma) as f32).collect();
        let mut noise = Replay {
            pool: &refs.noise_pool,
            used: 0,
        };
        let mut pred = Vec::new();
        for i in 0..s.timesteps().len() {
            let mut input = latents.clone();
            s.scale_model_input(&mut input, i);
            let out = s.step(&model(&input, s.timesteps()[i]), i, &latents, &mut noise);
            latents = out.prev_sample;
            pred = out.pred_original_sample;
        }
        assert_eq!(noise.used, case.noise_used, "{label}: noise drawn");
        let diff = max_abs_diff(&latents, &case.final_sample);
        if diff > tolerance(&case.final_sample) {
            failures.push(format!(
                "{label}: final sample differs by {diff:e} (max |x| {})",
                max_abs(&case.final_sample)
            ));
        }
        if let Some(want) = &case.pred_original {
            let diff = max_abs_diff(&pred, want);
            if diff > tolerance(want) {
                failures.push(format!("{label}: pred_original_sample differs by {diff:e}"));
            }
        }
        if let (Some(index), Some(want)) = (case.add_noise_index, &case.add_noise) {
            let got = s.add_noise(&refs.clean, &refs.add_noise_noise, index);
            let diff = max_abs_diff(&got, want);
            if diff > tolerance(want) {
                failures.push(format!("{label}: add_noise differs by {diff:e}"));
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} reference cases for {kind}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Prints the worst deviation per sampler (`cargo test -- --ignored --nocapture report`).
#[test]
#[ignore]
fn report_worst_diffs() {
    let refs = references();
    for kind in SamplerKind::ALL {
        let mut worst = (0.0f64, 0.0f64, String::new());
        for case in refs.cases.iter().filter(|c| c.sampler == kind.name()) {
            let json = serde_json::to_string(&refs.configs[&case.config]).unwrap();
            let config = SchedulerConfig::from_json_str(&json).unwrap();
            let mut s = build(kind, &config, case.steps).unwrap();
            let sigma = s.init_noise_sigma();
            let mut latents: Vec<f32> = refs.init_noise.iter().map(|&n| (n as f64 * sigma) as f32).collect();
            let mut noise = Replay {
                pool: &refs.noise_pool,
                used: 0,
            };
            for i in 0..s.timesteps().len() {
                let mut input = latents.clone();
                s.scale_model_input(&mut input, i);
                latents = s
                    .step(&model(&input, s.timesteps()[i]), i, &latents, &mut noise)
                    .prev_sample;
            }
            let diff = max_abs_diff(&latents, &case.final_sample);
            let scaled = diff / max_abs(&case.final_sample).max(1.0);
            if scaled > worst.1 {
                worst = (diff, scaled, format!("{}/{}", case.config, case.steps));
            }
        }
        println!(
            "{kind:16} worst abs diff {:.3e} (relative to max(1,|x|): {:.3e}) at {}",
            worst.0, worst.1, worst.2
        );
    }
}

#[test]
fn every_sampler_has_reference_cases_for_every_config() {
    let refs = references();
    for kind in SamplerKind::ALL {
        for config in refs.configs.keys() {
            for steps in [1, 4, 20] {
                assert!(
                    refs.cases
                        .iter()
                        .any(|c| c.sampler == kind.name() && &c.config == config && c.steps == steps),
                    "missing {kind}/{config}/{steps}"
                );
            }
        }
    }
}

/// SD 1.5's scheduler file, the one copy the scripts use too.
const SD15: &str = include_str!("../../../../tools/configs/sd15-scheduler.json");

#[test]
fn parses_sd15_config() {
    let c = SchedulerConfig::from_json_str(SD15).unwrap();
    assert_eq!(c.class_name.as_deref(), Some("PNDMScheduler"));
    assert_eq!(c.beta_schedule.as_deref(), Some("scaled_linear"));
    assert_eq!(c.beta_start, Some(0.00085));
    assert_eq!(c.steps_offset, Some(1));
    assert_eq!(c.set_alpha_to_one, Some(false));
    assert_eq!(c.trained_betas, None);
    assert_eq!(c.prediction_type, None);
    assert_eq!(c.timestep_spacing, None);
    assert_eq!(default_for(&c), SamplerKind::Pndm);
}

#[test]
fn default_sampler_follows_class_name() {
    let with = |class: &str| SchedulerConfig {
        class_name: Some(class.to_owned()),
        ..Default::default()
    };
    let cases = [
        ("EulerDiscreteScheduler", SamplerKind::Euler),
        ("EulerAncestralDiscreteScheduler", SamplerKind::EulerAncestral),
        ("DDIMScheduler", SamplerKind::Ddim),
        ("PNDMScheduler", SamplerKind::Pndm),
        ("DPMSolverMultistepScheduler", SamplerKind::DpmPp2m),
        ("LCMScheduler", SamplerKind::Lcm),
        ("HeunDiscreteScheduler", SamplerKind::Heun),
        ("UniPCMultistepScheduler", SamplerKind::Euler),
    ];
    for (class, kind) in cases {
        assert_eq!(default_for(&with(class)), kind, "{class}");
    }
    assert_eq!(default_for(&SchedulerConfig::default()), SamplerKind::Euler);
    let karras = SchedulerConfig {
        use_karras_sigmas: Some(true),
        ..with("DPMSolverMultistepScheduler")
    };
    assert_eq!(default_for(&karras), SamplerKind::DpmPp2mKarras);
}

#[test]
fn sampler_names_round_trip() {
    let names: Vec<String> = SamplerKind::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        names,
        [
            "euler",
            "euler_a",
            "ddim",
            "pndm",
            "dpmpp_2m",
            "dpmpp_2m_karras",
            "lcm",
            "heun"
        ]
    );
    let a1111: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.a1111_name()).collect();
    assert_eq!(
        a1111,
        [
            "Euler",
            "Euler a",
            "DDIM",
            "PLMS",
            "DPM++ 2M",
            "DPM++ 2M Karras",
            "LCM",
            "Heun"
        ]
    );
    for kind in SamplerKind::ALL {
        assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
        assert_eq!(kind.a1111_name().parse::<SamplerKind>().unwrap(), kind);
        assert_eq!(kind.name().to_uppercase().parse::<SamplerKind>().unwrap(), kind);
        assert!(kind.diffusers_class().ends_with("Scheduler"));
    }
    let err = "dpm++".parse::<SamplerKind>().unwrap_err();
    assert_eq!(err, SamplerError::UnknownSampler("dpm++".into()));
    assert!(err.to_string().contains("dpmpp_2m_karras"), "{err}");
}

fn sd15() -> SchedulerConfig {
    SchedulerConfig::from_json_str(SD15).unwrap()
}

#[test]
fn class_defaults_apply_to_absent_keys() {
    let c = sd15();
    // timestep_spacing is absent: DDIM/PNDM/LCM default to "leading", the others to "linspace".
    let first = |kind| build(kind, &c, 10).unwrap().timesteps()[0];
    assert_eq!(first(SamplerKind::Ddim), 901.0);
    assert_eq!(first(SamplerKind::Pndm), 901.0);
    assert_eq!(first(SamplerKind::Euler), 999.0);
    assert_eq!(first(SamplerKind::EulerAncestral), 999.0);
    assert_eq!(first(SamplerKind::Heun), 999.0);
    assert_eq!(first(SamplerKind::DpmPp2m), 999.0);
    assert_eq!(first(SamplerKind::Lcm), 999.0);
    // Heun runs 2N−1 evaluations, PLMS N+1.
    assert_eq!(build(SamplerKind::Heun, &c, 10).unwrap().timesteps().len(), 19);
    assert_eq!(build(SamplerKind::Heun, &c, 10).unwrap().order(), 2);
    assert_eq!(build(SamplerKind::Pndm, &c, 10).unwrap().timesteps().len(), 11);
    // Euler with linspace: init sigma is σ_max; with leading: √(σ_max²+1).
    let euler = build(SamplerKind::Euler, &c, 10).unwrap();
    assert!((euler.init_noise_sigma() - 14.614642).abs() < 1e-4);
    let leading = SchedulerConfig {
        timestep_spacing: Some("leading".into()),
        ..sd15()
    };
    let euler = build(SamplerKind::Euler, &leading, 10).unwrap();
    assert_eq!(euler.timesteps()[0], 901.0);
    assert!(euler.init_noise_sigma() > 1.0 && euler.init_noise_sigma() < 14.0);
}

#[test]
fn ddim_clips_by_default_and_honours_clip_sample_false() {
    // An x-prediction far outside [-1, 1]: DDIM's default clip_sample = true clamps x₀.
    let base = SchedulerConfig {
        prediction_type: Some("sample".into()),
        ..Default::default()
    };
    let x0 = |config: &SchedulerConfig| {
        let mut s = build(SamplerKind::Ddim, config, 4).unwrap();
        s.step(&[5.0, -5.0], 0, &[0.0, 0.0], &mut SeededNoise::new(0))
            .pred_original_sample
    };
    assert_eq!(x0(&base), [1.0, -1.0]);
    let off = SchedulerConfig {
        clip_sample: Some(false),
        ..base.clone()
    };
    assert_eq!(x0(&off), [5.0, -5.0]);
    let range = SchedulerConfig {
        clip_sample_range: Some(2.0),
        ..base
    };
    assert_eq!(x0(&range), [2.0, -2.0]);
}

#[test]
fn dpmpp_2m_ignores_karras_request_but_karras_variant_forces_it() {
    let c = SchedulerConfig {
        use_karras_sigmas: Some(true),
        ..sd15()
    };
    let plain = build(SamplerKind::DpmPp2m, &c, 4).unwrap();
    assert_eq!(plain.timesteps(), [999.0, 749.0, 500.0, 250.0]);
    let karras = build(SamplerKind::DpmPp2mKarras, &sd15(), 4).unwrap();
    assert_eq!(karras.timesteps(), [999.0, 687.0, 146.0, 0.0]);
}

#[test]
fn errors_name_the_problem() {
    let c = sd15();
    assert_eq!(build(SamplerKind::Euler, &c, 0).err(), Some(SamplerError::ZeroSteps));
    assert!(SamplerError::ZeroSteps.to_string().contains("at least 1"));

    let bad_beta = SchedulerConfig {
        beta_schedule: Some("sigmoid".into()),
        ..sd15()
    };
    for kind in SamplerKind::ALL {
        let err = build(kind, &bad_beta, 10).expect_err("sigmoid betas must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("beta_schedule") && msg.contains("sigmoid") && msg.contains("scaled_linear"),
            "{msg}"
        );
        assert!(msg.contains(kind.name()), "{msg}");
    }

    let bad_pred = SchedulerConfig {
        prediction_type: Some("flow_prediction".into()),
        ..sd15()
    };
    for kind in SamplerKind::ALL {
        let msg = build(kind, &bad_pred, 10).unwrap_err().to_string();
        assert!(
            msg.contains("prediction_type") && msg.contains("flow_prediction"),
            "{msg}"
        );
    }
    // diffusers has no x₀-prediction in Euler a or PLMS.
    let sample = SchedulerConfig {
        prediction_type: Some("sample".into()),
        ..sd15()
    };
    assert!(build(SamplerKind::EulerAncestral, &sample, 10).is_err());
    assert!(build(SamplerKind::Pndm, &sample, 10).is_err());
    assert!(build(SamplerKind::Euler, &sample, 10).is_ok());

    let spacing = SchedulerConfig {
        timestep_spacing: Some("uniform".into()),
        ..sd15()
    };
    assert!(
        build(SamplerKind::Ddim, &spacing, 10)
            .err()
            .unwrap()
            .to_string()
            .contains("timestep_spacing")
    );

    let log_linear = SchedulerConfig {
        interpolation_type: Some("log_linear".into()),
        ..sd15()
    };
    assert!(matches!(
        build(SamplerKind::Euler, &log_linear, 10).err(),
        Some(SamplerError::Unsupported {
            key: "interpolation_type",
            ..
        })
    ));

    let thresholding = SchedulerConfig {
        thresholding: Some(true),
        ..sd15()
    };
    assert!(matches!(
        build(SamplerKind::Ddim, &thresholding, 10).err(),
        Some(SamplerError::Unsupported {
            key: "thresholding",
            ..
        })
    ));

    let final_sigmas = SchedulerConfig {
        final_sigmas_type: Some("one".into()),
        ..sd15()
    };
    assert!(build(SamplerKind::DpmPp2m, &final_sigmas, 10).is_err());
    assert!(build(SamplerKind::Euler, &final_sigmas, 10).is_err());

    assert!(matches!(
        build(SamplerKind::Ddim, &c, 1001).err(),
        Some(SamplerError::InvalidSteps { steps: 1001, .. })
    ));
    let lcm = build(SamplerKind::Lcm, &c, 51).unwrap_err();
    assert!(lcm.to_string().contains("original_inference_steps"), "{lcm}");
    assert!(build(SamplerKind::Lcm, &c, 50).is_ok());

    let offset = SchedulerConfig {
        steps_offset: Some(5),
        ..sd15()
    };
    let msg = build(SamplerKind::Ddim, &offset, 1000).unwrap_err().to_string();
    assert!(msg.contains("steps_offset"), "{msg}");

    let betas = SchedulerConfig {
        trained_betas: Some(vec![0.1; 10]),
        ..sd15()
    };
    assert!(
        build(SamplerKind::Euler, &betas, 4)
            .err()
            .unwrap()
            .to_string()
            .contains("trained_betas")
    );
}

#[test]
fn trained_betas_replace_the_schedule() {
    let linear = SchedulerConfig {
        beta_schedule: Some("linear".into()),
        beta_start: Some(0.001),
        beta_end: Some(0.01),
        num_train_timesteps: Some(100),
        ..Default::default()
    };
    let explicit = SchedulerConfig {
        trained_betas: Some((0..100).map(|i| 0.001 + 0.009 * i as f64 / 99.0).collect()),
        beta_schedule: Some("ignored-when-trained_betas-is-set".into()),
        ..linear.clone()
    };
    let a = build(SamplerKind::Euler, &linear, 5).unwrap();
    let b = build(SamplerKind::Euler, &explicit, 5).unwrap();
    assert!((a.init_noise_sigma() - b.init_noise_sigma()).abs() < 1e-5);
}

#[test]
fn zero_snr_is_honoured_where_diffusers_has_it() {
    let zsnr = SchedulerConfig {
        rescale_betas_zero_snr: Some(true),
        timestep_spacing: Some("trailing".into()),
        ..sd15()
    };
    // Euler nudges ᾱ_T to 2⁻²⁴, so σ_max = √(2²⁴ − 1) ≈ 4096.
    let euler = build(SamplerKind::Euler, &zsnr, 4).unwrap();
    assert!((euler.init_noise_sigma() - 4096.0).abs() < 0.01);
    // HeunDiscreteScheduler has no such option; from_config drops the key.
    let heun = build(SamplerKind::Heun, &zsnr, 4).unwrap();
    assert!((heun.init_noise_sigma() - 14.614642).abs() < 1e-4);
}

#[test]
fn img2img_can_start_mid_schedule() {
    // A fresh scheduler stepped from entry k onwards (what img2img does) must not panic and
    // must produce finite latents for every sampler.
    let c = sd15();
    for kind in SamplerKind::ALL {
        let mut s = build(kind, &c, 8).unwrap();
        let start = 3 * s.order();
        let clean = vec![0.25f32; 16];
        let noise = SeededNoise::new(3).standard_normal(16);
        let mut x = s.add_noise(&clean, &noise, start);
        let mut rng = SeededNoise::new(4);
        for i in start..s.timesteps().len() {
            let mut input = x.clone();
            s.scale_model_input(&mut input, i);
            x = s.step(&model(&input, s.timesteps()[i]), i, &x, &mut rng).prev_sample;
        }
        assert!(x.iter().all(|v| v.is_finite()), "{kind}: {x:?}");
    }
}
