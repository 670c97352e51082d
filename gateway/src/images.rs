//! Pictures across the boundary: base64 in and out, masks translated to easel's convention,
//! and the text chunks of a PNG (for `png-info`).
//!
//! easel's mask is a picture read as luminance, white = repaint. AUTOMATIC1111 sends the same,
//! except that an RGBA mask with transparency means its alpha (opaque = repaint) and
//! `inpainting_mask_invert` swaps the two; OpenAI sends a PNG whose *transparent* pixels are
//! repainted. Both are turned into a grayscale PNG here, so the daemon sees one convention.
//!
//! Every decode is bounded: the header's size is checked against [`ImageLimits`] before any
//! pixel buffer is allocated.

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use image::{DynamicImage, GenericImageView, GrayImage, ImageFormat, Luma};

use crate::error::ApiError;

/// Runs picture work (base64, decoding, masks: CPU time on many megapixels) off the async
/// runtime, as the daemon does with its own.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the gateway's picture work failed ({error})"),
        )
    })?
}

/// Standard base64, padding optional (Python's `b64encode` pads, hand-rolled clients may not).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 as AUTOMATIC1111 and OpenAI return pictures: standard alphabet, padded.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of a base64 picture as A1111 clients send it: bare, or as a `data:` URL
/// (`data:image/png;base64,…`); line breaks and spaces are ignored, as Python's decoder does.
pub fn decode_base64(param: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let trimmed = text.trim();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(ApiError::bad_image(
            param,
            format!(
                "{param} is a URL; easel does not fetch pictures from the network, send the picture itself as base64"
            ),
        ));
    }
    let payload = match trimmed.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((header, data)) if header.ends_with(";base64") => data,
            _ => {
                return Err(ApiError::bad_image(
                    param,
                    format!("{param} is a data: URL without base64 data; send data:image/png;base64,…"),
                ));
            }
        },
        None => trimmed,
    };
    let compact: Vec<u8> = payload.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(ApiError::bad_image(
            param,
            format!("{param} is empty; send a base64 PNG or JPEG"),
        ));
    }
    LENIENT
        .decode(&compact)
        .map_err(|error| ApiError::bad_image(param, format!("{param} is not valid base64 ({error})")))
}

/// How large a picture the gateway decodes itself (masks, OpenAI's alpha).
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        // Four times the daemon's default max_pixels (2048²): the daemon refuses anything
        // larger from its header too, so nothing a daemon would take is refused here.
        Self {
            max_pixels: 4 * 2048 * 2048,
        }
    }
}

/// Decodes a PNG or JPEG after checking its header's size.
pub fn decode(param: &str, bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, ApiError> {
    let not_a_picture =
        |detail: String| ApiError::bad_image(param, format!("{param} is not a PNG or JPEG picture ({detail})"));
    let format = image::guess_format(bytes).map_err(|e| not_a_picture(e.to_string()))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(not_a_picture(format!("it is {format:?}")));
    }
    let reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = reader.into_dimensions().map_err(|e| not_a_picture(e.to_string()))?;
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ApiError::bad_image(
            param,
            format!(
                "{param} is {width}x{height}, more than the {} pixels the gateway decodes; send a smaller picture",
                limits.max_pixels
            ),
        ));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(image_limits);
    reader.decode().map_err(|e| not_a_picture(e.to_string()))
}

/// A grayscale PNG, as the daemon reads masks.
pub fn encode_gray_png(mask: &GrayImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, mask.width(), mask.height());
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("writing to a Vec cannot fail");
    writer
        .write_image_data(mask.as_raw())
        .expect("a buffer of the stated size");
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// Whether a picture has an alpha channel with at least one pixel that is not fully opaque.
fn has_transparency(image: &DynamicImage) -> bool {
    image.color().has_alpha() && image.pixels().any(|(_, _, pixel)| pixel.0[3] < 255)
}

/// AUTOMATIC1111's mask (its `create_binary_mask`): an RGBA mask with transparency is its
/// alpha, thresholded at 128 (opaque = repaint); anything else is its luminance. `invert`
/// is `inpainting_mask_invert` (repaint the black part instead).
pub fn a1111_mask(bytes: &[u8], invert: bool, limits: ImageLimits) -> Result<Vec<u8>, ApiError> {
    let image = decode("mask", bytes, limits)?;
    let mut mask = if has_transparency(&image) {
        let rgba = image.to_rgba8();
        GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            Luma([if rgba.get_pixel(x, y).0[3] > 128 { 255 } else { 0 }])
        })
    } else {
        image.to_luma8()
    };
    if invert {
        image::imageops::invert(&mut mask);
    }
    Ok(encode_gray_png(&mask))
}

/// OpenAI's mask semantics (transparent = repaint) as an easel mask (white = repaint), from the
/// alpha channel of `bytes`. `None` when the picture has no transparent pixel at all (OpenAI
/// then has nothing to repaint; the caller says so).
pub fn mask_from_alpha(param: &str, bytes: &[u8], limits: ImageLimits) -> Result<Option<Vec<u8>>, ApiError> {
    let image = decode(param, bytes, limits)?;
    if !has_transparency(&image) {
        return Ok(None);
    }
    let rgba = image.to_rgba8();
    let mask = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        Luma([if rgba.get_pixel(x, y).0[3] == 255 { 0 } else { 255 }])
    });
    Ok(Some(encode_gray_png(&mask)))
}

/// The size of a PNG or JPEG from its header, without decoding it.
pub fn dimensions(param: &str, bytes: &[u8]) -> Result<(u32, u32), ApiError> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .ok_or_else(|| ApiError::bad_image(param, format!("{param} is not a PNG or JPEG picture")))
}

/// The text chunks of a PNG (`tEXt`, `zTXt`, `iTXt`, wherever they sit), in file order.
/// Empty for a JPEG; an error for something that is not a picture.
pub fn png_text(param: &str, bytes: &[u8], limits: ImageLimits) -> Result<Vec<(String, String)>, ApiError> {
    let format = image::guess_format(bytes)
        .map_err(|_| ApiError::bad_image(param, format!("{param} is not a PNG or JPEG picture")))?;
    if format != ImageFormat::Png {
        return Ok(Vec::new());
    }
    let broken = |error: png::DecodingError| ApiError::bad_image(param, format!("{param} is a broken PNG ({error})"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(limits.max_pixels.saturating_mul(8)).unwrap_or(usize::MAX),
    });
    let mut reader = decoder.read_info().map_err(broken)?;
    // Chunks after the pixels are read only once the pixels are: decode them (bounded by the
    // limit above), then finish.
    let mut pixels = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut pixels).map_err(broken)?;
    reader.finish().map_err(broken)?;
    let info = reader.info();
    let mut texts = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        texts.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    for chunk in &info.compressed_latin1_text {
        if let Ok(text) = chunk.get_text() {
            texts.push((chunk.keyword.clone(), text));
        }
    }
    for chunk in &info.utf8_text {
        if let Ok(text) = chunk.get_text() {
            texts.push((chunk.keyword.clone(), text));
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn png_of(image: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn base64_comes_bare_or_as_a_data_url_padded_or_not() {
        assert_eq!(decode_base64("x", "aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("x", "aGVsbG8").unwrap(), b"hello");
        assert_eq!(
            decode_base64("x", "data:image/png;base64,aGVs\nbG8=").unwrap(),
            b"hello"
        );
        let broken = decode_base64("init_images", "not base64!").unwrap_err();
        assert!(
            broken.message.contains("init_images is not valid base64"),
            "{}",
            broken.message
        );
        assert!(decode_base64("x", "").unwrap_err().message.contains("empty"));
        assert!(
            decode_base64("x", "https://example.invalid/a.png")
                .unwrap_err()
                .message
                .contains("URL")
        );
        assert!(decode_base64("x", "data:text/plain,hello").is_err());
    }

    #[test]
    fn an_a1111_mask_is_luminance_or_its_alpha_and_can_be_inverted() {
        let limits = ImageLimits::default();
        let mut rgba = RgbaImage::from_pixel(4, 2, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([0, 0, 0, 255]));
        let mask = image::load_from_memory(&a1111_mask(&png_of(rgba.into()), false, limits).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!(mask.get_pixel(1, 0).0[0], 255, "opaque = repaint");
        assert_eq!(mask.get_pixel(0, 0).0[0], 0);

        let gray = GrayImage::from_fn(4, 2, |x, _| Luma([if x < 2 { 255 } else { 0 }]));
        let bytes = png_of(gray.into());
        let plain = image::load_from_memory(&a1111_mask(&bytes, false, limits).unwrap())
            .unwrap()
            .to_luma8();
        let inverted = image::load_from_memory(&a1111_mask(&bytes, true, limits).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!((plain.get_pixel(0, 0).0[0], plain.get_pixel(3, 0).0[0]), (255, 0));
        assert_eq!((inverted.get_pixel(0, 0).0[0], inverted.get_pixel(3, 0).0[0]), (0, 255));
    }

    #[test]
    fn an_openai_mask_repaints_where_it_is_transparent() {
        let limits = ImageLimits::default();
        let mut rgba = RgbaImage::from_pixel(2, 1, Rgba([9, 9, 9, 255]));
        rgba.put_pixel(0, 0, Rgba([9, 9, 9, 0]));
        let mask = mask_from_alpha("mask", &png_of(rgba.into()), limits).unwrap().unwrap();
        let mask = image::load_from_memory(&mask).unwrap().to_luma8();
        assert_eq!((mask.get_pixel(0, 0).0[0], mask.get_pixel(1, 0).0[0]), (255, 0));
        let opaque = png_of(RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 255])).into());
        assert_eq!(mask_from_alpha("mask", &opaque, limits).unwrap(), None);
    }

    #[test]
    fn pictures_over_the_limit_are_refused_from_their_header() {
        let bytes = png_of(GrayImage::new(64, 64).into());
        let error = decode("mask", &bytes, ImageLimits { max_pixels: 1000 }).unwrap_err();
        assert!(error.message.contains("64x64"), "{}", error.message);
        let error = decode("mask", b"GIF89a....", ImageLimits::default()).unwrap_err();
        assert!(error.message.contains("not a PNG or JPEG"), "{}", error.message);
    }

    #[test]
    fn png_text_is_read_before_and_after_the_pixels() {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Grayscale);
        encoder
            .add_text_chunk("parameters".into(), "a cat\nSteps: 20".into())
            .unwrap();
        encoder.add_itxt_chunk("easel".into(), "{\"seed\":1}".into()).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0]).unwrap();
        writer.finish().unwrap();
        let texts = png_text("image", &out, ImageLimits::default()).unwrap();
        assert!(
            texts.contains(&("parameters".into(), "a cat\nSteps: 20".into())),
            "{texts:?}"
        );
        assert!(texts.contains(&("easel".into(), "{\"seed\":1}".into())), "{texts:?}");
        assert!(png_text("image", b"nothing", ImageLimits::default()).is_err());
    }
}
