//! The built-in tiny-shapes model draws what the prompt asks: a grid of 48 prompts × seeds
//! (every colour as shape colour and as background, all three shapes) through the real daemon
//! with `euler`, `dpmpp_2m` and `ddim` at 20 steps, judged by `easel_e2e::shapes`. Colours must
//! be right in ≥ 90% of pictures and shapes in ≥ 80%. A broken text encoder, guidance or
//! sampler drops these towards chance (1/8 for colours, 1/3 for shapes).

use easel_e2e::shapes::{PALETTE, SHAPES, judge};
use easel_e2e::*;

/// (shape colour, shape, background) for 48 prompts: each colour with each shape twice, on
/// two different backgrounds, so every colour is a background six times too.
pub fn grid() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut prompts = Vec::new();
    for (c, (colour, _)) in PALETTE.iter().enumerate() {
        for (s, shape) in SHAPES.iter().enumerate() {
            for k in 0..2 {
                let background = PALETTE[(c + 1 + (s * 2 + k) % 7) % PALETTE.len()].0;
                assert_ne!(background, *colour);
                prompts.push((*colour, *shape, background));
            }
        }
    }
    prompts
}

/// The guidance the grid runs at. The tiny model is well conditioned; at 7.5 DPM++ 2M
/// overshoots its colours (in diffusers too: the same noise gives the same pictures there), so
/// the grid uses 5, where every sampler draws well.
const GUIDANCE: f32 = 5.0;

async fn generate(
    client: &mut easel_client::EaselClient<easel_client::Channel>,
    prompt: &str,
    negative: &str,
    sampler: &str,
    seed: u64,
    guidance: f32,
) -> Vec<u8> {
    generate_with(client, "", prompt, negative, sampler, seed, guidance).await
}

/// [`generate`] on `model` (a name or folder; empty: the default model).
async fn generate_with(
    client: &mut easel_client::EaselClient<easel_client::Channel>,
    model: &str,
    prompt: &str,
    negative: &str,
    sampler: &str,
    seed: u64,
    guidance: f32,
) -> Vec<u8> {
    let request = GenerateRequestBuilder::new(prompt)
        .model(model)
        .negative(negative)
        .sampler(sampler)
        .steps(20)
        .seed(seed)
        .guidance(guidance);
    let mut images = easel_e2e::generate(client, request).await.unwrap();
    images.pop().unwrap_or_else(|| panic!("no image for {prompt:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_model_draws_what_the_prompt_asks() {
    let daemon = Daemon::start_with(&[("EASEL_THREADS", "2")]);
    let mut client = daemon.client().await;
    let prompts = grid();
    assert!(prompts.len() >= 48);
    let mut report = Vec::new();
    let mut all_ok = true;
    for sampler in ["euler", "dpmpp_2m", "ddim"] {
        let (mut colours, mut backgrounds, mut shapes) = (0, 0, 0);
        let mut misses = Vec::new();
        for (i, (colour, shape, background)) in prompts.iter().enumerate() {
            let prompt = format!("a {colour} {shape} on a {background} background");
            let png = generate(&mut client, &prompt, "", sampler, 1000 + i as u64, GUIDANCE).await;
            if let Some(dir) = std::env::var_os("EASEL_QUALITY_DUMP") {
                let name = format!("{sampler}-{i:02}-{}.png", prompt.replace(' ', "_"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(std::path::Path::new(&dir).join(name), &png).unwrap();
            }
            let (w, h, pixels) = read_png(&png);
            let judged = judge(w as usize, h as usize, &pixels);
            colours += usize::from(judged.colour == *colour);
            backgrounds += usize::from(judged.background == *background);
            shapes += usize::from(judged.shape == *shape);
            if judged.colour != *colour || judged.background != *background || judged.shape != *shape {
                misses.push(format!(
                    "{prompt} → {} {} on {}",
                    judged.colour, judged.shape, judged.background
                ));
            }
        }
        let n = prompts.len() as f64;
        let (colour_rate, background_rate, shape_rate) =
            (colours as f64 / n, backgrounds as f64 / n, shapes as f64 / n);
        report.push(format!(
            "{sampler:<9} shape colour {colours}/{n} ({:.0}%), background {backgrounds}/{n} ({:.0}%), shape {shapes}/{n} ({:.0}%)\n    misses: {misses:?}",
            colour_rate * 100.0,
            background_rate * 100.0,
            shape_rate * 100.0
        ));
        all_ok &= colour_rate >= 0.9 && background_rate >= 0.9 && shape_rate >= 0.8;
    }
    // Guidance and negative prompts must change the picture: the same seed at guidance 1 (off)
    // and at GUIDANCE, and with and without a negative prompt, give clearly different images.
    // (Guidance that is ignored or a negative prompt that is dropped gives identical ones; a
    // wrong guidance formula already fails the accuracies above.)
    let (mut guidance_diff, mut negative_diff) = (0.0, 0.0);
    let probes: Vec<_> = prompts.iter().step_by(6).collect();
    for (i, (colour, shape, background)) in probes.iter().enumerate() {
        let prompt = format!("a {colour} {shape} on a {background} background");
        let seed = 2000 + i as u64;
        let guided = read_png(&generate(&mut client, &prompt, "", "euler", seed, GUIDANCE).await).2;
        let unguided = read_png(&generate(&mut client, &prompt, "", "euler", seed, 1.0).await).2;
        let negated = read_png(&generate(&mut client, &prompt, colour, "euler", seed, GUIDANCE).await).2;
        guidance_diff += diff(&guided, &unguided).0 / probes.len() as f64;
        negative_diff += diff(&guided, &negated).0 / probes.len() as f64;
    }
    report.push(format!(
        "mean |guidance {GUIDANCE} - guidance 1| = {guidance_diff:.1}, mean |with - without negative prompt| = {negative_diff:.1} (of 255)"
    ));
    all_ok &= guidance_diff > 2.0 && negative_diff > 2.0;
    let report = report.join("\n");
    println!("tiny-shapes quality (48 prompts, 20 steps, guidance {GUIDANCE}, 128x128):\n{report}");
    assert!(
        all_ok,
        "below the bar (colours ≥ 90%, shapes ≥ 80%, guidance and negative prompts in effect):\n{report}"
    );
}

/// The built-in model with its UNet quantized to int8 (ONNX Runtime's dynamic quantization,
/// `tools/quantize_unet.py`; the fixture is `tests/fixtures/int8/tiny-shapes-unet/`, made by
/// `tools/make_int8_fixture.py`) still draws what the prompt asks, at the same bar, with Euler;
/// how far its pictures are from the float32 UNet's is printed.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_model_with_an_int8_unet_still_draws_what_the_prompt_asks() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-shapes-int8");
    copy_tree(&repo_root().join("models/tiny-shapes"), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    copy_tree(&fixtures().join("int8/tiny-shapes-unet"), &model.join("unet"));
    let graph = std::fs::read(model.join("unet/model.onnx")).unwrap();
    assert!(
        graph.windows(b"MatMulInteger".len()).any(|w| w == b"MatMulInteger"),
        "the fixture is a quantized graph"
    );
    let model = model.to_str().unwrap().to_string();

    let daemon = Daemon::start_with(&[("EASEL_THREADS", "2")]);
    let mut client = daemon.client().await;
    let prompts = grid();
    let (mut colours, mut backgrounds, mut shapes, mut apart) = (0, 0, 0, 0.0);
    let compared = 12;
    for (i, (colour, shape, background)) in prompts.iter().enumerate() {
        let prompt = format!("a {colour} {shape} on a {background} background");
        let seed = 1000 + i as u64;
        let png = generate_with(&mut client, &model, &prompt, "", "euler", seed, GUIDANCE).await;
        let (w, h, pixels) = read_png(&png);
        let judged = judge(w as usize, h as usize, &pixels);
        colours += usize::from(judged.colour == *colour);
        backgrounds += usize::from(judged.background == *background);
        shapes += usize::from(judged.shape == *shape);
        if i < compared {
            let fp32 = read_png(&generate(&mut client, &prompt, "", "euler", seed, GUIDANCE).await).2;
            apart += diff(&pixels, &fp32).0 / compared as f64;
        }
    }
    let n = prompts.len() as f64;
    let report = format!(
        "int8 UNet, euler: shape colour {colours}/{n}, background {backgrounds}/{n}, shape {shapes}/{n}; \
         mean |int8 - fp32| over {compared} pictures = {apart:.1} (of 255)"
    );
    println!("{report}");
    assert!(
        colours as f64 / n >= 0.9 && backgrounds as f64 / n >= 0.9 && shapes as f64 / n >= 0.8,
        "below the bar: {report}"
    );
    assert!(apart > 0.0, "the int8 UNet drew the float32 pictures exactly: {report}");
}
