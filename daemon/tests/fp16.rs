//! fp16 models on the CPU: an fp16 export of the sd1-tiny fixture (float16 weights and every
//! float input and output float16; `tools/make_fp16_fixture.py`) runs through easel's pipeline
//! — ONNX Runtime's CPU provider computes what lacks fp16 kernels in f32 — and matches its fp32
//! twin and diffusers' float32 picture from the same noise.
//!
//! Stated tolerance: mean abs diff ≤ 0.5 and max ≤ 4 on 0–255, against both. (Measured on
//! the fixture: mean ≤ 0.07, max 1; a full-size SD 1.5 fp16 export drifts more, as fp16 does
//! in diffusers too.)

mod common;

use common::{TextCase, fixtures, generate_one, load_fixture_model, prepare};
use easeld::generation::image::decode_rgb;
use easeld::generation::sampler::SeededNoise;
use easeld::model::onnx::Dtype;
use serde::Deserialize;

/// A case of `fp16/manifest.json`: a text-to-image case plus the fp32 twin's folder.
#[derive(Deserialize)]
struct Case {
    #[serde(flatten)]
    case: TextCase,
    fp32_model: String,
}

fn within_tolerance(name: &str, a: &[u8], b: &[u8]) -> Option<String> {
    assert_eq!(a.len(), b.len(), "{name}: sizes");
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    let mean = sum as f64 / a.len() as f64;
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    println!("{name:<40} mean {mean:.3} max {max}");
    (mean > 0.5 || max > 4).then(|| format!("{name}: mean {mean:.3}, max {max}"))
}

#[test]
fn an_fp16_export_matches_its_fp32_twin() {
    let cases: Vec<Case> = TextCase::read_manifest("fp16/manifest.json");
    assert!(cases.len() >= 3, "the fp16 manifest lost cases");
    let mut fp16 = load_fixture_model(&cases[0].case.model);
    let mut fp32 = load_fixture_model(&cases[0].fp32_model);
    // The export really is fp16 at every float boundary, so this cannot pass on f32 by accident.
    for (part, model) in [
        ("text encoder", &fp16.text_encoder),
        ("unet", &fp16.unet),
        ("vae decoder", &fp16.vae_decoder),
    ] {
        let floats: Vec<_> = model
            .inputs
            .iter()
            .chain(&model.outputs)
            .filter(|io| io.dtype != Dtype::I32 && io.dtype != Dtype::I64)
            .collect();
        assert!(
            !floats.is_empty() && floats.iter().all(|io| io.dtype == Dtype::F16),
            "{part}: {floats:?}"
        );
    }
    let mut failures = Vec::new();
    for Case { case, fp32_model } in &cases {
        assert_eq!((&case.model, fp32_model), (&cases[0].case.model, &cases[0].fp32_model));
        let run = |model: &mut easeld::model::LoadedModel| {
            let prepared = prepare(model, case.request(1));
            generate_one(model, &prepared, &mut SeededNoise::new(0), &mut |_| {}).pixels
        };
        let (half, full) = (run(&mut fp16), run(&mut fp32));
        let reference = decode_rgb(
            &std::fs::read(fixtures().join(&case.image)).unwrap(),
            "reference",
            1 << 20,
        )
        .unwrap()
        .pixels;
        failures.extend(within_tolerance(&format!("{} vs fp32 twin", case.name), &half, &full));
        failures.extend(within_tolerance(
            &format!("{} vs diffusers fp32", case.name),
            &half,
            &reference,
        ));
    }
    assert!(failures.is_empty(), "fp16 beyond tolerance:\n{}", failures.join("\n"));
}
