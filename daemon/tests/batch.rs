//! Batches: images denoised together through the UNet must equal the images made one at a
//! time with the same noise (image i of `--count N` is reproducible alone with seed + i).
//!
//! Covered: classifier-free guidance (the batch is [uncond × n; cond × n]), an ancestral
//! sampler (every step's noise is split per image), img2img (the picture is encoded once and
//! sampled per image), and an LCM UNet (its guidance embedding is repeated per image).

mod common;

use common::{fixtures, generate_one, load_fixture_model, prepare};
use easeld::generation::pipeline::run_batch;
use easeld::generation::sampler::{NoiseSource, SeededNoise};
use easeld::generation::{PreviewKind, PreviewSettings, Request};
use easeld::model::LoadedModel;

fn request(sampler: &str, guidance: f32) -> Request {
    Request {
        prompt: "a red circle on a blue background".into(),
        negative_prompt: "blurry".into(),
        width: Some(64),
        height: Some(64),
        steps: Some(6),
        guidance_scale: Some(guidance),
        sampler: Some(sampler.into()),
        preview: PreviewSettings {
            every_n_steps: 2,
            latents: true,
            image: PreviewKind::Approx,
        },
        ..Default::default()
    }
}

/// Runs `request` as one batch over `seeds` and one image at a time; returns the largest pixel
/// difference, after checking the per-image step reports of the batch.
fn batch_vs_single(model: &mut LoadedModel, request: &Request, seeds: &[u64]) -> u8 {
    let prepared = prepare(model, request.clone());
    let mut sources: Vec<SeededNoise> = seeds.iter().map(|&s| SeededNoise::new(s)).collect();
    let mut noises: Vec<&mut dyn NoiseSource> = sources.iter_mut().map(|s| s as &mut dyn NoiseSource).collect();
    let mut reports = vec![Vec::new(); seeds.len()];
    let batch = run_batch(model, &prepared, &mut noises, None, &|| false, &mut |image, report| {
        reports[image].push((report.step, report.latent.is_some(), report.preview.is_some()));
    })
    .unwrap();
    assert_eq!(batch.images.len(), seeds.len());
    for (image, steps) in reports.iter().enumerate() {
        let numbers: Vec<usize> = steps.iter().map(|s| s.0).collect();
        assert_eq!(
            numbers,
            (1..=numbers.len()).collect::<Vec<_>>(),
            "image {image}: one report per step"
        );
        let last = numbers.len();
        assert!(
            steps
                .iter()
                .all(|&(step, latent, preview)| latent == (step % 2 == 0 || step == last) && preview == latent),
            "image {image}: latents and previews every 2 steps and at the end: {steps:?}"
        );
    }
    let mut worst = 0;
    for (image, &seed) in batch.images.iter().zip(seeds) {
        let single = generate_one(model, &prepared, &mut SeededNoise::new(seed), &mut |_| {});
        let diff = image
            .pixels
            .iter()
            .zip(&single.pixels)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn a_batch_equals_its_images_made_alone() {
    let mut sd1 = load_fixture_model("models/sd1-tiny");
    let seeds = [7, 8, 9];
    let mut cases = vec![
        ("euler with guidance", request("euler", 7.5)),
        ("euler_a without guidance", request("euler_a", 1.0)),
        ("dpmpp_2m with guidance", request("dpmpp_2m", 5.0)),
    ];
    let mut img2img = request("euler_a", 7.5);
    img2img.init_image = Some(std::fs::read(fixtures().join("img2img/init-64.png")).unwrap());
    img2img.strength = Some(0.6);
    cases.push(("img2img euler_a", img2img));
    let mut failures = Vec::new();
    for (name, request) in &cases {
        let worst = batch_vs_single(&mut sd1, request, &seeds);
        if worst > 1 {
            failures.push(format!("{name}: max diff {worst}"));
        }
    }
    let mut lcm = load_fixture_model("fewstep/models/lcm-tiny");
    let worst = batch_vs_single(&mut lcm, &request("lcm", 4.0), &seeds);
    if worst > 1 {
        failures.push(format!("lcm: max diff {worst}"));
    }
    assert!(
        failures.is_empty(),
        "batched images differ from single ones:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_image_of_a_batch_differs() {
    let mut sd1 = load_fixture_model("models/sd1-tiny");
    let prepared = prepare(&sd1, request("euler", 7.5));
    let mut sources: Vec<SeededNoise> = [1, 2].iter().map(|&s| SeededNoise::new(s)).collect();
    let mut noises: Vec<&mut dyn NoiseSource> = sources.iter_mut().map(|s| s as &mut dyn NoiseSource).collect();
    let batch = run_batch(&mut sd1, &prepared, &mut noises, None, &|| false, &mut |_, _| {}).unwrap();
    assert_ne!(batch.images[0], batch.images[1], "two seeds gave the same picture");
}
