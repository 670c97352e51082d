//! Pictures: decoded tensors to 8-bit RGB, cheap latent previews, and PNG files that carry
//! their generation parameters the way AUTOMATIC1111 writes them (a `parameters` text chunk
//! other tools read) plus easel's own JSON chunk.

use crate::model::onnx::HostTensor;

/// Stable Diffusion 1.x latent → RGB factors (rows: latent channels, columns: R, G, B).
pub const SD1_LATENT_RGB_FACTORS: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// An 8-bit RGB picture, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// From a `[1, 3, H, W]` tensor in −1..1, as diffusers' `(x / 2 + 0.5).clamp(0, 1)` then
    /// `(x * 255).round()`.
    pub fn from_nchw_signed(tensor: &HostTensor<f32>) -> Option<Self> {
        let [1, 3, h, w] = tensor.shape[..] else { return None };
        Some(Self::from_planes(&tensor.data, w, h, |v| v / 2.0 + 0.5))
    }

    fn from_planes(data: &[f32], w: usize, h: usize, to_unit: impl Fn(f32) -> f32) -> Self {
        let plane = w * h;
        let mut pixels = Vec::with_capacity(plane * 3);
        for i in 0..plane {
            for c in 0..3 {
                let v = to_unit(data[c * plane + i]).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round() as u8);
            }
        }
        Self {
            width: w as u32,
            height: h as u32,
            pixels,
        }
    }

    /// PNG bytes with tEXt (or iTXt for non-Latin-1 text) chunks.
    pub fn to_png(&self, text: &[(&str, &str)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            for (key, value) in text {
                let latin1 = value.chars().all(|c| (c as u32) < 256);
                // Writing to a Vec cannot fail; a bad keyword is a programming error.
                if latin1 {
                    encoder
                        .add_text_chunk(key.to_string(), value.to_string())
                        .expect("valid PNG text keyword");
                } else {
                    encoder
                        .add_itxt_chunk(key.to_string(), value.to_string())
                        .expect("valid PNG text keyword");
                }
            }
            let mut writer = encoder.write_header().expect("PNG header to memory");
            writer.write_image_data(&self.pixels).expect("PNG data to memory");
        }
        bytes
    }
}

/// The cheap preview: the latent → RGB linear map applied to a latent `[1, 4, h, w]`, at latent
/// resolution. `None` for latents that do not have SD's 4 channels.
pub fn approx_preview(latent: &[f32], shape: &[usize]) -> Option<RgbImage> {
    let [1, 4, h, w] = shape[..] else { return None };
    let plane = h * w;
    let mut rgb = vec![0.0f32; 3 * plane];
    for (channel, factors) in SD1_LATENT_RGB_FACTORS.iter().enumerate() {
        let source = &latent[channel * plane..(channel + 1) * plane];
        for (c, factor) in factors.iter().enumerate() {
            for (out, v) in rgb[c * plane..(c + 1) * plane].iter_mut().zip(source) {
                *out += factor * v;
            }
        }
    }
    Some(RgbImage::from_planes(&rgb, w, h, |v| (v + 1.0) / 2.0))
}

impl RgbImage {
    /// Resized with a Lanczos filter (like diffusers' PIL `lanczos`); unchanged when the size
    /// already matches.
    pub fn resized(self, width: u32, height: u32) -> Self {
        if (self.width, self.height) == (width, height) {
            return self;
        }
        let buffer = image::RgbImage::from_raw(self.width, self.height, self.pixels).expect("pixels match the size");
        let resized = image::imageops::resize(&buffer, width, height, image::imageops::FilterType::Lanczos3);
        Self {
            width,
            height,
            pixels: resized.into_raw(),
        }
    }

    /// `[1, 3, H, W]` in −1..1, as diffusers' image processor normalises a picture.
    pub fn to_nchw_signed(&self) -> HostTensor<f32> {
        let plane = (self.width * self.height) as usize;
        let mut data = vec![0.0; 3 * plane];
        for (i, rgb) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + i] = f32::from(rgb[c]) / 255.0 * 2.0 - 1.0;
            }
        }
        HostTensor::new(vec![1, 3, self.height as usize, self.width as usize], data)
    }
}

/// Decodes a PNG or JPEG into RGB (alpha dropped, as PIL's `convert("RGB")` does). `what`
/// names the picture in errors ("init image", "mask").
pub fn decode_rgb(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, String> {
    use std::io::Cursor;
    if bytes.is_empty() {
        return Err(format!("the {what} is empty (0 bytes)"));
    }
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read the {what} ({e}); send a PNG or JPEG file");
    let reader = || {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| unreadable(&e))
    };
    let format = reader()?.format();
    // The header first: a picture's size is known before a byte of it is decoded.
    let (width, height) = reader()?.into_dimensions().map_err(|e| unreadable(&e))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("the {what} has no pixels"));
    }
    let most = max_pixels.saturating_mul(MAX_INPUT_PIXELS_FACTOR);
    if pixels > most {
        return Err(format!(
            "the {what} is {width}x{height} ({pixels} pixels); easel reads pictures of up to {most} pixels \
             ({MAX_INPUT_PIXELS_FACTOR} × max_pixels): scale it down first"
        ));
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(format!(
            "the {what} is a JPEG file cut short (it has no end-of-image marker); send the whole file"
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // 16-bit RGBA at most, plus the decoders' own buffers.
    limits.max_alloc = Some(pixels * 16 + (64 << 20));
    let mut decoder = reader()?;
    decoder.limits(limits);
    let rgb = decoder.decode().map_err(|e| unreadable(&e))?.into_rgb8();
    Ok(RgbImage {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
}

/// How many times `max_pixels` an init image or mask may have: a photo larger than the output
/// is scaled to it, but past this the decoding alone would cost more memory than the request.
pub const MAX_INPUT_PIXELS_FACTOR: u64 = 4;

/// Whether a JPEG runs to its end-of-image marker. Decoders fill the missing part of a file cut
/// short with grey rather than fail, so this walks the segments: headers by their lengths
/// (an EXIF thumbnail inside APP1 is skipped whole), scan data to the next marker that is
/// neither a stuffed `FF 00` nor a restart marker. Linear in the file's size.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let len = bytes.len();
    let mut i = 2;
    loop {
        if i >= len || bytes[i] != 0xFF {
            return false;
        }
        while i < len && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(length) = bytes.get(i..i + 2) else {
                    return false;
                };
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                if length < 2 {
                    return false;
                }
                i += length;
                if i > len {
                    return false;
                }
                if marker == 0xDA {
                    // Entropy-coded data runs to the next real marker.
                    loop {
                        if i + 1 >= len {
                            return false;
                        }
                        if bytes[i] == 0xFF && bytes[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&bytes[i + 1]) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tensor_maps_to_bytes_like_diffusers() {
        // One pixel per channel value: -1 → 0, 0 → 128 (127.5 rounds up), 1 → 255, beyond clamps.
        let t = HostTensor::new(vec![1, 3, 1, 2], vec![-1.0, 0.0, 1.0, 2.0, -3.0, 0.5]);
        let img = RgbImage::from_nchw_signed(&t).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.pixels, vec![0, 255, 0, 128, 255, 191]);
    }

    fn gradient(width: u32, height: u32) -> image::RgbImage {
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]))
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        gradient(width, height)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        bytes
    }

    #[test]
    fn a_jpeg_cut_short_is_refused_not_filled_with_grey() {
        let whole = jpeg(256, 192);
        let decoded = decode_rgb(&whole, "init image", 1 << 20).unwrap();
        assert_eq!((decoded.width, decoded.height), (256, 192));
        // Trailing bytes after the end marker are tolerated, as every viewer does.
        let mut padded = whole.clone();
        padded.extend_from_slice(b"trailing");
        assert!(decode_rgb(&padded, "init image", 1 << 20).is_ok());
        for cut in [whole.len() - 2, whole.len() / 2, 200] {
            let error = decode_rgb(&whole[..cut], "init image", 1 << 20).unwrap_err();
            assert!(
                error.contains("cut short") || error.contains("cannot read"),
                "{cut}: {error}"
            );
        }
        let half = decode_rgb(&whole[..whole.len() / 2], "init image", 1 << 20).unwrap_err();
        assert!(half.contains("cut short"), "{half}");
    }

    #[test]
    fn a_picture_far_over_max_pixels_is_refused_before_decoding() {
        let mut png = Vec::new();
        gradient(64, 64)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_rgb(&png, "mask", 1024).is_ok(), "4096 pixels is 4 × 1024");
        let error = decode_rgb(&png, "mask", 1023).unwrap_err();
        assert!(error.contains("64x64") && error.contains("scale it down"), "{error}");
        let truncated = decode_rgb(&png[..png.len() / 2], "mask", 1 << 20).unwrap_err();
        assert!(truncated.contains("cannot read the mask"), "{truncated}");
        assert!(
            decode_rgb(b"not a picture", "mask", 1 << 20)
                .unwrap_err()
                .contains("PNG or JPEG")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn encoded(format: image::ImageFormat) -> Vec<u8> {
            let mut bytes = Vec::new();
            gradient(48, 32)
                .write_to(&mut std::io::Cursor::new(&mut bytes), format)
                .unwrap();
            bytes
        }

        proptest! {
            /// Any bytes as an init image or mask: a picture or an error, never a panic.
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = decode_rgb(&bytes, "mask", 1 << 20);
            }

            /// Real PNGs and JPEGs with bytes changed and tails cut: what decodes has the size
            /// its header says and within the limit; nothing panics.
            #[test]
            fn damaged_pictures_decode_or_fail_cleanly(
                jpeg in any::<bool>(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                keep in 0.0f64..=1.0,
            ) {
                let mut bytes = encoded(if jpeg { image::ImageFormat::Jpeg } else { image::ImageFormat::Png });
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                bytes.truncate((bytes.len() as f64 * keep) as usize);
                if let Ok(picture) = decode_rgb(&bytes, "init image", 4096) {
                    prop_assert!(u64::from(picture.width) * u64::from(picture.height) <= 4 * 4096);
                    prop_assert_eq!(picture.pixels.len(), (picture.width * picture.height * 3) as usize);
                }
            }
        }
    }

    #[test]
    fn png_round_trips_with_text() {
        let img = RgbImage {
            width: 2,
            height: 2,
            pixels: (0..12).collect(),
        };
        let bytes = img.to_png(&[
            ("parameters", "a cat\nSteps: 20"),
            ("easel", "{\"prompt\":\"café ☕\"}"),
        ]);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..12], &img.pixels[..]);
        let info = reader.info();
        assert_eq!(info.uncompressed_latin1_text[0].text, "a cat\nSteps: 20");
        assert_eq!(info.utf8_text[0].get_text().unwrap(), "{\"prompt\":\"café ☕\"}");
    }

    #[test]
    fn approx_preview_applies_the_factors() {
        // A latent that is 1 in channel 0 only gives the first row of factors.
        let mut latent = vec![0.0; 4];
        latent[0] = 1.0;
        let img = approx_preview(&latent, &[1, 4, 1, 1]).unwrap();
        let expect = |f: f32| (((f + 1.0) / 2.0) * 255.0).round() as u8;
        assert_eq!(img.pixels, vec![expect(0.3512), expect(0.2297), expect(0.3227)]);
        assert!(approx_preview(&[0.0; 3], &[1, 3, 1, 1]).is_none());
    }
}
