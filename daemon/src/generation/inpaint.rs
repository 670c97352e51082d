//! Inpainting masks: from the picture a user drew (white = repaint) to what the pipeline needs,
//! and the final composite that puts the untouched pixels back.
//!
//! The mask is prepared the way diffusers' `StableDiffusionInpaintPipeline` prepares it, so
//! results match it: the picture is read as 8-bit luminance (PIL's `convert("L")` weights),
//! optionally blurred, scaled to 0..1 and binarized at 0.5; the latent-resolution mask takes
//! the top-left pixel of every VAE cell (PyTorch's `nearest` interpolation); the masked
//! picture is the init picture with the repainted part set to 0 (grey, in −1..1).
//!
//! After decoding, [`composite`] blends the generated picture into the original through the
//! (blurred) mask, as AUTOMATIC1111 does: pixels where the mask is black come back exactly as
//! they were, instead of through a lossy VAE round trip, and a blurred mask gives a soft seam.

use super::image::RgbImage;
use crate::model::onnx::HostTensor;

/// An inpainting mask ready for the pipeline.
#[derive(Debug, Clone)]
pub struct Mask {
    /// `[1, 1, h, w]` at latent resolution: 1 = repaint, 0 = keep.
    pub latent: HostTensor<f32>,
    /// The init picture with the repainted part blanked, `[1, 3, H, W]` in −1..1 (what a
    /// dedicated inpainting UNet sees, through the VAE).
    pub masked_pixels: HostTensor<f32>,
    /// The (blurred) mask at picture resolution in 0..1, for [`composite`].
    pub soft: Vec<f32>,
}

/// The mask's luminance, as PIL's `convert("L")` computes it from RGB (ITU-R 601-2, rounded).
pub fn luminance(picture: &RgbImage) -> Vec<u8> {
    picture
        .pixels
        .chunks_exact(3)
        .map(|p| ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8)
        .collect()
}

impl Mask {
    /// `luma` (`width × height`, row-major, the size of `pixels`), blurred with a Gaussian of
    /// `blur` pixels (0: none), against the init picture `pixels` (`[1, 3, H, W]`, −1..1).
    /// `factor` is the VAE's downsampling factor.
    pub fn new(luma: &[u8], width: usize, height: usize, blur: f32, pixels: &HostTensor<f32>, factor: usize) -> Self {
        assert_eq!(luma.len(), width * height, "mask size");
        assert_eq!(pixels.shape, [1, 3, height, width], "init picture size");
        let mut soft: Vec<f32> = luma.iter().map(|&v| f32::from(v) / 255.0).collect();
        if blur > 0.0 {
            soft = gaussian_blur(&soft, width, height, blur);
        }
        let repaint: Vec<bool> = soft.iter().map(|&v| v >= 0.5).collect();
        let plane = width * height;
        let masked = pixels
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| if repaint[i % plane] { 0.0 } else { v })
            .collect();
        let (h, w) = (height / factor, width / factor);
        let latent = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(y, x)| f32::from(u8::from(repaint[y * factor * width + x * factor])))
            .collect();
        Self {
            latent: HostTensor::new(vec![1, 1, h, w], latent),
            masked_pixels: HostTensor::new(vec![1, 3, height, width], masked),
            soft,
        }
    }
}

/// One latent of a 4-channel inpainting run: `(1 − m) · proper + m · current` per cell, with the
/// `[h · w]` mask `m` shared by every channel (diffusers' order of operations).
pub fn blend(current: &mut [f32], proper: &[f32], mask: &[f32]) {
    for (channel, proper) in current.chunks_mut(mask.len()).zip(proper.chunks(mask.len())) {
        for ((c, p), m) in channel.iter_mut().zip(proper).zip(mask) {
            *c = (1.0 - m) * p + m * *c;
        }
    }
}

/// The generated picture over the original through the soft mask: `original · (1 − m) +
/// generated · m`, rounded. Where the mask is 0 the original comes back byte for byte.
pub fn composite(original: &RgbImage, generated: &RgbImage, soft: &[f32]) -> RgbImage {
    assert_eq!((original.width, original.height), (generated.width, generated.height));
    let pixels = original
        .pixels
        .iter()
        .zip(&generated.pixels)
        .enumerate()
        .map(|(i, (&o, &g))| {
            let m = soft[i / 3];
            if m <= 0.0 {
                o
            } else if m >= 1.0 {
                g
            } else {
                (f32::from(o) * (1.0 - m) + f32::from(g) * m).round().clamp(0.0, 255.0) as u8
            }
        })
        .collect();
    RgbImage {
        width: original.width,
        height: original.height,
        pixels,
    }
}

/// A separable Gaussian blur with standard deviation `sigma` pixels (kernel radius ⌈3σ⌉,
/// edges clamped). Weights below f32 resolution are cut, so a pixel far from any white pixel
/// stays exactly 0.
fn gaussian_blur(values: &[f32], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let pass = |input: &[f32], along_rows: bool| -> Vec<f32> {
        let mut out = vec![0.0; input.len()];
        for y in 0..height {
            for x in 0..width {
                let mut acc = 0.0;
                for (k, weight) in kernel.iter().enumerate() {
                    let d = k as isize - radius;
                    let (sx, sy) = if along_rows {
                        ((x as isize + d).clamp(0, width as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, height as isize - 1) as usize)
                    };
                    acc += weight * input[sy * width + sx];
                }
                out[y * width + x] = acc;
            }
        }
        out
    };
    pass(&pass(values, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(width: usize, height: usize) -> HostTensor<f32> {
        let data = (0..3 * width * height).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
        HostTensor::new(vec![1, 3, height, width], data)
    }

    #[test]
    fn binarizes_at_one_half_like_diffusers() {
        // 127/255 < 0.5 keeps, 128/255 ≥ 0.5 repaints.
        let luma = [0, 127, 128, 255];
        let mask = Mask::new(&luma, 4, 1, 0.0, &picture(4, 1), 1);
        assert_eq!(mask.latent.data, vec![0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn masked_picture_blanks_the_repainted_part_in_every_channel() {
        let pixels = picture(2, 1);
        let mask = Mask::new(&[255, 0], 2, 1, 0.0, &pixels, 1);
        let d = &pixels.data;
        assert_eq!(mask.masked_pixels.data, vec![0.0, d[1], 0.0, d[3], 0.0, d[5]]);
    }

    #[test]
    fn latent_mask_takes_each_cells_top_left_pixel() {
        // 16×8 picture, factor 8: two cells; only pixel (0, 8) (top-left of cell 1) is white in
        // cell 1, and cell 0 is white everywhere except its top-left pixel.
        let mut luma = vec![0u8; 16 * 8];
        for y in 0..8 {
            for x in 0..8 {
                luma[y * 16 + x] = 255;
            }
        }
        luma[0] = 0;
        luma[8] = 255;
        let mask = Mask::new(&luma, 16, 8, 0.0, &picture(16, 8), 8);
        assert_eq!(mask.latent.shape, vec![1, 1, 1, 2]);
        assert_eq!(mask.latent.data, vec![0.0, 1.0]);
    }

    #[test]
    fn luminance_uses_pil_weights() {
        let img = RgbImage {
            width: 3,
            height: 1,
            pixels: vec![255, 0, 0, 0, 255, 0, 77, 77, 77],
        };
        // PIL: red → 76, green → 150, grey stays itself.
        assert_eq!(luminance(&img), vec![76, 150, 77]);
    }

    #[test]
    fn blend_keeps_unmasked_cells_on_the_pictures_trajectory() {
        let mut current = vec![1.0, 2.0, 3.0, 4.0];
        blend(&mut current, &[10.0, 20.0, 30.0, 40.0], &[1.0, 0.0]);
        assert_eq!(current, vec![1.0, 20.0, 3.0, 40.0]);
    }

    #[test]
    fn composite_restores_the_original_outside_the_mask() {
        let original = RgbImage {
            width: 3,
            height: 1,
            pixels: vec![10; 9],
        };
        let generated = RgbImage {
            width: 3,
            height: 1,
            pixels: vec![200; 9],
        };
        let out = composite(&original, &generated, &[0.0, 0.5, 1.0]);
        assert_eq!(out.pixels, vec![10, 10, 10, 105, 105, 105, 200, 200, 200]);
    }

    #[test]
    fn blur_softens_edges_and_leaves_far_pixels_alone() {
        let mut luma = vec![0u8; 40];
        luma[20..].iter_mut().for_each(|v| *v = 255);
        let mask = Mask::new(&luma, 40, 1, 2.0, &picture(40, 1), 1);
        assert_eq!(mask.soft[0], 0.0, "far from white stays 0");
        assert!((mask.soft[39] - 1.0).abs() < 1e-6, "far from black stays 1");
        assert!(mask.soft[19] > 0.0 && mask.soft[19] < 0.5, "{}", mask.soft[19]);
        assert!(mask.soft[20] > 0.5 && mask.soft[20] < 1.0, "{}", mask.soft[20]);
    }
}
