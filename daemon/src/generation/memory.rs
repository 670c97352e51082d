//! How much memory a request needs while it runs, beyond the model's weights: modelled from
//! the graphs' shapes, before the request queues, so one that cannot fit is refused instead
//! of taking the machine down.
//!
//! The phases of a job run one after another and each hands its buffers back when it ends
//! (see `OnnxModel::run_releasing`), so the peak is the largest phase, not their sum:
//!
//! - **UNet**, per step: the attention scores of the largest attending level — batch × heads ×
//!   T² floats for T latent cells at that level, and as many again for the softmax — plus the
//!   activations every level keeps for its skip connection.
//! - **VAE decoder**, per image: its middle block attends over every latent cell (T² floats,
//!   three buffers), and its last levels hold full-resolution activations; a tiled decode needs
//!   only a tile's worth.
//! - **VAE encoder** (img2img, inpainting): the same at the input picture's size.
//!
//! The model is deliberately simple; the job queue scales it by what jobs actually measured
//! (`jobs::residency` keeps the factor per model), so an estimate only has to be right in shape.

use crate::model::ModelFolder;

use super::Prepared;

const FLOAT: u64 = 4;

/// A request's modelled working memory, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkingMemory {
    pub unet: u64,
    pub vae_decode: u64,
    pub vae_encode: u64,
    /// Pictures, latents and PNGs held by the job itself.
    pub host: u64,
}

impl WorkingMemory {
    /// The peak: the largest phase, plus what the job holds throughout.
    pub fn peak(&self) -> u64 {
        self.unet
            .max(self.vae_decode)
            .max(self.vae_encode)
            .saturating_add(self.host)
    }
}

/// The working memory of `prepared` on `folder`, with `batch` images per UNet batch.
pub fn estimate(folder: &ModelFolder, prepared: &Prepared, batch: u32) -> WorkingMemory {
    let arch = &folder.architecture;
    let (lh, lw) = (prepared.latent_shape[2] as u64, prepared.latent_shape[3] as u64);
    let guided = u64::from(prepared.guidance_scale > 1.0) + 1;
    let rows = u64::from(batch) * guided;
    let cells_at = |level: usize| lh.div_ceil(1 << level) * lw.div_ceil(1 << level);

    let mut attention = 0u64;
    let mut activations = 0u64;
    for (level, &(channels, heads)) in arch.unet_levels.iter().enumerate() {
        let cells = cells_at(level);
        if let Some(heads) = heads {
            attention = attention.max(scores(rows * heads as u64, cells, 2));
        }
        // Down and up paths, resnets and skip connections: a few buffers per level.
        activations = activations.saturating_add(rows * channels as u64 * cells * FLOAT * 6);
    }
    if let Some(heads) = arch.unet_mid_heads {
        attention = attention.max(scores(
            rows * heads as u64,
            cells_at(arch.unet_levels.len().saturating_sub(1)),
            2,
        ));
    }
    let unet = attention.saturating_add(activations);

    let vae = |latent_cells: u64| -> u64 {
        let mid = if arch.vae_attention {
            scores(1, latent_cells, 3)
        } else {
            0
        };
        // From the latent's resolution up to the picture's, each level 4× the cells.
        let levels = arch.vae_channels.len();
        let convs = arch
            .vae_channels
            .iter()
            .enumerate()
            .map(|(level, &channels)| {
                let upscale = 1u64 << (2 * (levels - 1 - level));
                channels as u64 * latent_cells * upscale * FLOAT * 4
            })
            .fold(0u64, u64::saturating_add);
        mid.saturating_add(convs)
    };
    let decode_cells = if prepared.vae_tiled {
        let tile = (folder.vae_sample_size / folder.vae_factor) as u64;
        lh.min(tile) * lw.min(tile)
    } else {
        lh * lw
    };
    let pixels = u64::from(prepared.width) * u64::from(prepared.height);
    WorkingMemory {
        unet,
        vae_decode: vae(decode_cells),
        vae_encode: if prepared.init_image.is_some() { vae(lh * lw) } else { 0 },
        // Decoded pictures (f32 and 8-bit) and PNGs of a batch, the init image and its mask.
        host: pixels * u64::from(batch) * 3 * (FLOAT + 2) + pixels * 3 * FLOAT * 3,
    }
}

/// Attention scores for `rows` (batch × heads) over `cells` tokens: `copies` buffers of T².
fn scores(rows: u64, cells: u64, copies: u64) -> u64 {
    rows.saturating_mul(cells.saturating_mul(cells))
        .saturating_mul(FLOAT * copies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::generation::Request;

    fn prepared(folder: &ModelFolder, width: u32, height: u32, limits: &Limits) -> Prepared {
        Request {
            prompt: "a cat".into(),
            width: Some(width),
            height: Some(height),
            steps: Some(2),
            ..Default::default()
        }
        .check(limits)
        .unwrap()
        .prepare(folder, limits)
        .unwrap()
    }

    fn tiny_shapes() -> ModelFolder {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-shapes");
        ModelFolder::open("tiny-shapes", &root).unwrap()
    }

    #[test]
    fn memory_grows_with_the_square_of_the_cells_where_attention_is() {
        let folder = tiny_shapes();
        let limits = Limits::default();
        let small = estimate(&folder, &prepared(&folder, 256, 256, &limits), 1);
        let large = estimate(&folder, &prepared(&folder, 512, 512, &limits), 1);
        // 4× the cells: the attention-bound UNet needs about 16× (plus linear activations).
        let ratio = large.unet as f64 / small.unet as f64;
        assert!((10.0..=16.5).contains(&ratio), "{ratio}");
        assert!(large.peak() > small.peak());
        assert_eq!(small.vae_encode, 0, "no init image, no encoder");
        let two = estimate(&folder, &prepared(&folder, 512, 512, &limits), 2);
        assert!(
            two.unet > large.unet * 3 / 2,
            "a batch of two needs about twice the UNet memory"
        );
    }

    #[test]
    fn a_tiled_decode_needs_a_tiles_worth() {
        let folder = tiny_shapes();
        let whole = Limits::default();
        let tiled = Limits {
            vae_tile_above: 0,
            ..Limits::default()
        };
        let untiled = estimate(&folder, &prepared(&folder, 1024, 1024, &whole), 1).vae_decode;
        let in_tiles = estimate(&folder, &prepared(&folder, 1024, 1024, &tiled), 1).vae_decode;
        assert!(in_tiles * 20 < untiled, "{in_tiles} vs {untiled}");
    }

    #[test]
    fn the_1024_by_768_case_of_the_issue_is_gigabytes() {
        // Measured on this model before the fix: 6.4 GB resident for one 1024×768 step.
        let folder = tiny_shapes();
        let limits = Limits::default();
        let peak = estimate(&folder, &prepared(&folder, 1024, 768, &limits), 1).peak();
        assert!((2u64 << 30..=16u64 << 30).contains(&peak), "{peak}");
    }
}
