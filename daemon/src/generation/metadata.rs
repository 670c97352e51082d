//! What a generated PNG says about its making: AUTOMATIC1111's `parameters` text (which other
//! tools parse) and easel's own JSON.

use super::prepare::Prepared;
use super::vae::Decoder;

/// The refiner's stage of a base + refiner request, for the metadata: its run, and the
/// fraction of the schedule where it took over.
#[derive(Debug, Clone, Copy)]
pub struct Refined<'a> {
    pub prepared: &'a Prepared,
    pub switch: f64,
}

impl Refined<'_> {
    /// The refiner's aesthetic scores, when it conditions on them.
    fn aesthetic_scores(refined: Option<Self>) -> Option<(f32, f32)> {
        refined
            .and_then(|r| r.prepared.xl_sizes)
            .and_then(|xl| xl.aesthetic_scores)
    }
}

/// AUTOMATIC1111's `parameters` text for the image drawn with `seed` (by `prepared`'s run, then
/// `refined`'s when a refiner took over).
pub fn a1111_parameters(prepared: &Prepared, seed: u64, refined: Option<Refined<'_>>) -> String {
    let p = prepared;
    let mut text = p.prompt.clone();
    if !p.negative_prompt.is_empty() {
        text.push_str(&format!("\nNegative prompt: {}", p.negative_prompt));
    }
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        p.steps,
        p.sampler.a1111_name(),
        p.guidance_scale,
        seed,
        p.width,
        p.height,
        p.model,
    ));
    if let Some(init) = &p.init_image {
        text.push_str(&format!(", Denoising strength: {}", init.strength));
    }
    if let Some(inpaint) = p.inpaint() {
        text.push_str(&format!(", Mask blur: {}", inpaint.blur));
    }
    if p.clip_skip > 1 {
        text.push_str(&format!(", Clip skip: {}", p.clip_skip));
    }
    if let Some(r) = refined {
        text.push_str(&format!(
            ", Refiner: {}, Refiner switch at: {}",
            r.prepared.model, r.switch
        ));
    }
    let decoder = refined.map_or(p.decoder, |r| r.prepared.decoder);
    // easel's own keys, only when they change the picture (AUTOMATIC1111 keeps unknown keys).
    if let Some(cutoff) = p.guidance_cutoff {
        text.push_str(&format!(", Guidance cutoff: {cutoff}"));
    }
    if p.guidance_rescale > 0.0 {
        text.push_str(&format!(", Guidance rescale: {}", p.guidance_rescale));
    }
    if decoder == Decoder::Tiny {
        text.push_str(", VAE Decoder: tiny");
    }
    if let Some(xl) = &p.xl_sizes {
        let aesthetic_scores = xl.aesthetic_scores.or(Refined::aesthetic_scores(refined));
        let picture = (p.width, p.height);
        if xl.original_size != picture {
            text.push_str(&format!(
                ", Original size: {}x{}",
                xl.original_size.0, xl.original_size.1
            ));
        }
        if xl.crop_top_left != (0, 0) {
            text.push_str(&format!(
                ", Crop top-left: {},{}",
                xl.crop_top_left.0, xl.crop_top_left.1
            ));
        }
        if let Some((score, negative)) = aesthetic_scores {
            text.push_str(&format!(
                ", Aesthetic score: {score}, Negative aesthetic score: {negative}"
            ));
        }
        // A refiner alone conditions on the scores in place of a target size.
        if xl.aesthetic_scores.is_none() && xl.target_size != picture {
            text.push_str(&format!(", Target size: {}x{}", xl.target_size.0, xl.target_size.1));
        }
    }
    text.push_str(&format!(", Version: easel {}", env!("CARGO_PKG_VERSION")));
    text
}

/// easel's own metadata (the `easel` text chunk) for the image drawn with `seed`.
pub fn easel_json(prepared: &Prepared, seed: u64, refined: Option<Refined<'_>>) -> String {
    let p = prepared;
    let aesthetic_scores = p
        .xl_sizes
        .and_then(|xl| xl.aesthetic_scores)
        .or(Refined::aesthetic_scores(refined));
    serde_json::json!({
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt,
        "width": p.width,
        "height": p.height,
        "steps": p.steps,
        "guidance_scale": p.guidance_scale,
        "sampler": p.sampler.to_string(),
        "seed": seed,
        "model": p.model,
        "init_noise": p.init_noise.is_some(),
        "strength": p.init_image.as_ref().map(|i| i.strength),
        "clip_skip": p.clip_skip,
        "guidance_cutoff": p.guidance_cutoff,
        "guidance_rescale": p.guidance_rescale,
        "decoder": refined.map_or(p.decoder, |r| r.prepared.decoder).as_str(),
        "refiner": refined.map(|r| serde_json::json!({ "model": r.prepared.model, "switch": r.switch })),
        "inpaint": p.inpaint().map(|i| serde_json::json!({ "mask_blur": i.blur })),
        "sdxl": p.xl_sizes.map(|xl| serde_json::json!({
            "original_size": [xl.original_size.0, xl.original_size.1],
            "crop_top_left": [xl.crop_top_left.0, xl.crop_top_left.1],
            "target_size": [xl.target_size.0, xl.target_size.1],
            "aesthetic_score": aesthetic_scores.map(|s| s.0),
            "negative_aesthetic_score": aesthetic_scores.map(|s| s.1),
        })),
        "easel_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}
