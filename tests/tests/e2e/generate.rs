//! Generation through the daemon: parity with diffusers' references, metadata, seeds.

use std::path::Path;

use easel_e2e::*;
use serde::Deserialize;

#[derive(Deserialize)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) model: String,
    pub(crate) prompt: String,
    pub(crate) negative_prompt: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) steps: u32,
    pub(crate) guidance_scale: f32,
    pub(crate) sampler: String,
    pub(crate) init_noise: String,
    pub(crate) step_noise: Option<String>,
    pub(crate) image: String,
}

fn cases() -> Vec<Case> {
    manifest("references/manifest.json")
}

pub(crate) fn manifest(path: &str) -> Vec<Case> {
    serde_json::from_slice(&std::fs::read(fixtures().join(path)).unwrap()).unwrap()
}

/// `easel generate` with a reference case's settings and initial noise, writing `out`. The
/// case's model is a folder under `tests/fixtures/` (`models/sd1-tiny`), an absolute folder, or
/// the name of an installed model (no `/`).
pub(crate) fn generate_case(daemon: &Daemon, case: &Case, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = if case.model.contains('/') {
        fixtures().join(&case.model)
    } else {
        std::path::PathBuf::from(&case.model)
    };
    let noise = fixtures().join(&case.init_noise);
    let (steps, cfg, width, height) = (
        case.steps.to_string(),
        case.guidance_scale.to_string(),
        case.width.to_string(),
        case.height.to_string(),
    );
    let args = [
        "generate",
        &case.prompt,
        "--model",
        model.to_str().unwrap(),
        "--negative",
        &case.negative_prompt,
        "--steps",
        &steps,
        "--cfg",
        &cfg,
        "--sampler",
        &case.sampler,
        "--width",
        &width,
        "--height",
        &height,
        "--init-noise",
        noise.to_str().unwrap(),
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ];
    daemon.easel(&[&args[..], extra].concat())
}

/// An fp16 export (float16 weights, inputs and outputs) through the daemon: within the stated
/// fp16 tolerance (mean ≤ 0.5, max ≤ 4 on 0–255) of diffusers' float32 picture.
#[test]
fn an_fp16_model_draws_its_fp32_twins_picture() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    for case in manifest("fp16/manifest.json").iter().take(2) {
        let out = dir.path().join(format!("{}.png", case.name));
        let output = generate_case(&daemon, case, &out, &[]);
        assert!(output.status.success(), "{}: {}", case.name, stderr(&output));
        let got = read_png(&std::fs::read(&out).unwrap()).2;
        let want = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap()).2;
        let (mean, max) = diff(&got, &want);
        assert!(mean <= 0.5 && max <= 4, "{}: mean {mean:.3}, max {max}", case.name);
    }
}

/// `--clip-skip 2` (AUTOMATIC1111's numbering) on a text encoder that exports hidden states:
/// diffusers' picture with the penultimate layer for both prompts, and "Clip skip: 2" in the
/// PNG's parameters.
#[test]
fn clip_skip_two_draws_diffusers_penultimate_layer_picture() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = manifest("clipskip/manifest.json");
    let case = cases
        .iter()
        .find(|c| c.name == "cs-euler-cfg-a1111")
        .expect("the A1111-style case");
    let out = dir.path().join("skip.png");
    let output = generate_case(&daemon, case, &out, &["--clip-skip", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let png = std::fs::read(&out).unwrap();
    let (mean, max) = diff(
        &read_png(&png).2,
        &read_png(&std::fs::read(fixtures().join(&case.image)).unwrap()).2,
    );
    assert!(mean <= 1.0 && max <= 8, "mean {mean:.3}, max {max}");
    let parameters = png_text(&png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(parameters.contains("Clip skip: 2"), "{parameters}");
    // Without the flag the same request draws a different picture.
    let plain = dir.path().join("plain.png");
    assert!(generate_case(&daemon, case, &plain, &[]).status.success());
    assert_ne!(read_png(&std::fs::read(&plain).unwrap()).2, read_png(&png).2);
}

/// Every deterministic reference case (the stochastic samplers are covered with replayed noise
/// in `daemon/tests/parity.rs`), from the CLI through the socket: the picture diffusers draws.
#[test]
fn deterministic_cases_match_diffusers_through_the_daemon() {
    let daemon = Daemon::start();
    let out_dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in cases()
        .iter()
        .filter(|c| c.step_noise.is_none() && c.sampler != "euler_a")
    {
        let out = out_dir.path().join(format!("{}.png", case.name));
        let output = generate_case(&daemon, case, &out, &[]);
        assert!(output.status.success(), "{}: {}", case.name, stderr(&output));
        let bytes = std::fs::read(&out).unwrap();
        let (w, h, pixels) = read_png(&bytes);
        let (ew, eh, expected) = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap());
        assert_eq!((w, h), (ew, eh), "{}", case.name);
        let (mean, max) = diff(&pixels, &expected);
        assert!(mean <= 1.0 && max <= 8, "{}: mean {mean:.3} max {max}", case.name);
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} cases ran");
}

#[test]
fn pngs_carry_a1111_parameters_and_easel_metadata() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("meta.png");
    let model = fixture_model("sd1-tiny");
    let output = daemon.easel(&[
        "generate",
        "a lighthouse at dusk",
        "--model",
        model.to_str().unwrap(),
        "--negative",
        "fog",
        "--steps",
        "3",
        "--cfg",
        "6.5",
        "--sampler",
        "dpmpp_2m_karras",
        "--seed",
        "1234",
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("meta.png"),
        "the CLI prints the written path: {}",
        stdout(&output)
    );
    let text = png_text(&std::fs::read(&out).unwrap());
    let parameters = &text
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("a parameters chunk")
        .1;
    assert_eq!(
        parameters,
        &format!(
            "a lighthouse at dusk\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, Model: sd1-tiny, Version: easel {}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let easel: serde_json::Value =
        serde_json::from_str(&text.iter().find(|(k, _)| k == "easel").expect("an easel chunk").1).unwrap();
    assert_eq!(easel["seed"], 1234);
    assert_eq!(easel["sampler"], "dpmpp_2m_karras");
}

fn generate_seeded(daemon: &Daemon, seed: &str, out: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["--steps", "4", "--seed", seed];
    args.extend_from_slice(extra);
    let output = daemon.generate_tiny("a cat", &args, out);
    assert!(output.status.success(), "{}", stderr(&output));
    read_png(&std::fs::read(out).unwrap()).2
}

#[test]
fn same_seed_same_image_across_restarts_and_count_uses_seed_plus_i() {
    let mut daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let first = generate_seeded(&daemon, "77", &dir.path().join("a.png"), &["--sampler", "euler_a"]);
    assert!(daemon.terminate().success());
    daemon.spawn(&[]);
    daemon.wait_ready();
    let again = generate_seeded(&daemon, "77", &dir.path().join("b.png"), &["--sampler", "euler_a"]);
    assert_eq!(first, again, "same seed after a restart must give the same image");
    let other = generate_seeded(&daemon, "78", &dir.path().join("c.png"), &["--sampler", "euler_a"]);
    assert_ne!(first, other, "another seed must give another image");

    // --count 2 from seed 77: the second image is exactly what seed 78 alone gives.
    let batch_out = dir.path().join("batch.png");
    let model = fixture_model("sd1-tiny");
    let output = daemon.easel(&[
        "generate",
        "a cat",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "4",
        "--seed",
        "77",
        "--sampler",
        "euler_a",
        "--count",
        "2",
        "--no-progress",
        "-o",
        batch_out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let paths: Vec<&str> = printed.lines().map(str::trim).filter(|l| l.ends_with(".png")).collect();
    assert_eq!(paths.len(), 2, "two paths expected: {printed}");
    assert_eq!(read_png(&std::fs::read(paths[0]).unwrap()).2, first);
    assert_eq!(read_png(&std::fs::read(paths[1]).unwrap()).2, other);
}

#[test]
fn tokenize_prints_ids_and_count() {
    let daemon = Daemon::start();
    let model = fixture_model("sd1-tiny");
    let output = daemon.easel(&[
        "tokenize",
        "a photograph of an astronaut riding a horse",
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let expected = [
        1512, 320, 1153, 782, 79, 327, 539, 550, 64, 807, 521, 627, 339, 553, 796, 320, 1407, 611, 1513,
    ];
    let ids: Vec<i64> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(json["count"], expected.len());
}

#[test]
fn the_built_in_model_is_listed_and_is_the_default() {
    let daemon = Daemon::start();
    let output = daemon.easel(&["models", "list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let models = json["models"].as_array().unwrap();
    let builtin = models
        .iter()
        .find(|m| m["name"] == "tiny-shapes")
        .expect("tiny-shapes is listed");
    assert_eq!(builtin["default_sampler"], "ddim");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("default.png");
    let output = daemon.easel(&[
        "generate",
        "a red circle on a blue background",
        "--steps",
        "8",
        "--seed",
        "5",
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(read_png(&bytes).0, 128, "the built-in model draws 128x128 by default");
    assert!(
        png_text(&bytes)
            .iter()
            .any(|(k, v)| k == "parameters" && v.contains("Model: tiny-shapes"))
    );
}

#[test]
fn weighted_and_long_prompts_are_chunked_and_syntax_errors_name_their_position() {
    let daemon = Daemon::start();
    let model = fixture_model("sd1-tiny");
    let model = model.to_str().unwrap();
    let output = daemon.easel(&[
        "tokenize",
        "a (red:1.5) cat BREAK [blue] dog",
        "--model",
        model,
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let chunks = json["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2, "BREAK starts a new chunk: {json}");
    let weights: Vec<f64> = chunks
        .iter()
        .flat_map(|c| c["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()))
        .collect();
    assert!(weights.iter().any(|&w| (w - 1.5).abs() < 1e-9), "{weights:?}");
    assert!(weights.iter().any(|&w| (w - 1.0 / 1.1).abs() < 1e-9), "{weights:?}");

    let long = "a very long prompt about a cat ".repeat(20);
    let output = daemon.easel(&["tokenize", &long, "--model", model, "--json"]);
    let json: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert!(
        json["chunks"].as_array().unwrap().len() >= 2,
        "a long prompt makes several chunks"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("long.png");
    let output = daemon.generate_with(model, &long, &["--negative", "(blurry:1.3)", "--steps", "2"], &out);
    assert!(
        output.status.success(),
        "a long prompt with a short weighted negative generates: {}",
        stderr(&output)
    );

    for (prompt, expected) in [
        ("a (cat", "unclosed `(` at position 2"),
        ("a cat)", "unmatched `)` at position 5"),
        ("(a:1.2.3)", "invalid weight `1.2.3` at position 3"),
    ] {
        let output = daemon.generate_with(model, prompt, &["--steps", "2"], &out);
        assert!(!output.status.success(), "{prompt}");
        assert!(stderr(&output).contains(expected), "{prompt}: {}", stderr(&output));
    }
}

/// sd1-tiny with its UNet through ONNX Runtime's CPU attention fusion (`tools/optimize_unet.py`:
/// `Attention`, `MultiHeadAttention` and `SkipLayerNormalization` operators in place of the
/// exported ones) still draws diffusers' pictures: the fused operators are the same maths.
#[test]
fn an_attention_fused_unet_draws_diffusers_pictures() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("sd1-tiny-fused");
    copy_tree(&fixture_model("sd1-tiny"), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    copy_tree(&fixtures().join("fused/sd1-tiny-unet"), &model.join("unet"));
    let graph = std::fs::read(model.join("unet/model.onnx")).unwrap();
    assert!(
        graph
            .windows(b"MultiHeadAttention".len())
            .any(|w| w == b"MultiHeadAttention"),
        "the fixture is a fused graph"
    );
    let mut checked = 0;
    for mut case in cases()
        .into_iter()
        .filter(|c| c.model == "models/sd1-tiny" && c.step_noise.is_none() && c.sampler != "euler_a")
        .take(6)
    {
        case.model = model.display().to_string();
        let out = dir.path().join(format!("{}.png", case.name));
        let output = generate_case(&daemon, &case, &out, &[]);
        assert!(output.status.success(), "{}: {}", case.name, stderr(&output));
        let got = read_png(&std::fs::read(&out).unwrap()).2;
        let want = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap()).2;
        let (mean, max) = diff(&got, &want);
        assert!(mean <= 1.0 && max <= 8, "{}: mean {mean:.3}, max {max}", case.name);
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} cases ran");
}
