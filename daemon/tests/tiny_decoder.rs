//! The tiny VAE decoder (`vae_decoder_tiny/`, TAESD's architecture) against diffusers'
//! `AutoencoderTiny` in PyTorch (`tools/make_tiny_vae_fixture.py`): the same pictures from the
//! same latents, through the scaling diffusers' pipeline applies. And what a model folder's
//! tiny decoder must be to be accepted.

mod common;

use std::path::{Path, PathBuf};

use easeld::generation::image::RgbImage;
use easeld::generation::vae::{self, Decoder};
use easeld::model::onnx::HostTensor;
use easeld::model::{LoadedModel, ModelFolder};

fn read(name: &str) -> HostTensor<f32> {
    let path = common::fixtures().join("tiny-vae").join(name);
    let array = easel_client::npy::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    HostTensor::new(array.shape, array.data)
}

/// sd1-tiny with the fixture's tiny decoder added, in a temporary folder.
fn sd1_tiny_with_tiny_decoder(dir: &Path) -> PathBuf {
    let root = dir.join("sd1-tiny-taesd");
    copy_tree(&common::fixtures().join("models/sd1-tiny"), &root);
    copy_tree(
        &common::fixtures().join("tiny-vae/vae_decoder_tiny"),
        &root.join("vae_decoder_tiny"),
    );
    root
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn load(root: &Path) -> LoadedModel {
    let folder = ModelFolder::open("sd1-tiny-taesd", root).unwrap();
    LoadedModel::load(&common::runtime(), std::sync::Arc::new(folder), 1).unwrap()
}

/// Mean and max abs difference, on 0–255 after `(x + 1) · 127.5`.
fn diff(a: &[f32], b: &[f32]) -> (f64, f32) {
    assert_eq!(a.len(), b.len());
    let (sum, max) = a.iter().zip(b).fold((0.0f64, 0.0f32), |(sum, max), (x, y)| {
        (sum + f64::from((x - y).abs()), max.max((x - y).abs()))
    });
    (sum / a.len() as f64 * 127.5, max * 127.5)
}

/// The most levels (0–255) a decoded picture is from a reference `[1, 3, H, W]` in −1..1, once
/// that is turned into bytes the way easel turns its own decodes.
fn levels_apart(image: &RgbImage, reference: &HostTensor<f32>) -> u8 {
    let reference = RgbImage::from_nchw_signed(reference).expect("an RGB picture");
    image
        .pixels
        .iter()
        .zip(&reference.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .expect("pixels")
}

#[test]
fn tiny_decode_matches_diffusers_autoencoder_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load(&sd1_tiny_with_tiny_decoder(dir.path()));
    let latents = read("latents.npy");
    let expected = read("decoded.npy");
    let full = read("full.npy");

    let image = vae::decode_tiny(&mut model, &latents.data, &latents.shape)
        .unwrap()
        .expect("the folder has a tiny decoder");
    assert_eq!(
        (image.height as usize, image.width as usize),
        (expected.shape[2], expected.shape[3])
    );
    let worst = levels_apart(&image, &expected);
    assert!(worst <= 1, "tiny decode vs diffusers: {worst} levels apart");

    // The request path picks the tiny decoder when asked, the full one otherwise.
    let tiny = vae::decode_with(&mut model, Decoder::Tiny, &latents.data, &latents.shape, false).unwrap();
    assert_eq!(tiny.pixels, image.pixels);
    let whole = vae::decode_with(&mut model, Decoder::Full, &latents.data, &latents.shape, false).unwrap();
    let worst_full = levels_apart(&whole, &full);
    assert!(worst_full <= 1, "full decode vs the fixture's: {worst_full}");
    // The two decoders really differ, so the comparison above is of the tiny one.
    let (apart, _) = diff(&expected.data, &full.data);
    assert!(apart > 10.0, "tiny and full decoders differ by {apart:.2} on average");
    // Previews take the tiny decoder when there is one.
    let preview = vae::decode_preview(&mut model, &latents.data, &latents.shape, false).unwrap();
    assert_eq!(preview.pixels, image.pixels);
}

#[test]
fn a_model_without_a_tiny_decoder_says_so() {
    let mut model = common::load_fixture_model("models/sd1-tiny");
    let latents = read("latents.npy");
    assert!(model.folder.tiny_decoder.is_none());
    assert!(
        vae::decode_tiny(&mut model, &latents.data, &latents.shape)
            .unwrap()
            .is_none()
    );
    let error = vae::decode_with(&mut model, Decoder::Tiny, &latents.data, &latents.shape, false)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("vae_decoder_tiny/model.onnx is missing") && error.contains("full decoder"),
        "{error}"
    );
    // Previews fall back to the full decoder.
    let preview = vae::decode_preview(&mut model, &latents.data, &latents.shape, false).unwrap();
    let full = vae::decode(&mut model, &latents.data, &latents.shape, false).unwrap();
    assert_eq!(preview.pixels, full.pixels);
}

#[test]
fn a_tiny_decoder_for_another_latent_space_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = sd1_tiny_with_tiny_decoder(dir.path());
    let config_path = root.join("vae_decoder_tiny/config.json");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut config = config.clone();
        config[key] = value;
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        ModelFolder::open("sd1-tiny-taesd", &root)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let error = with("latent_channels", 16.into()).unwrap_err();
    assert!(
        error.contains("16-channel latents") && error.contains("TAESD"),
        "{error}"
    );
    let error = with("decoder_block_out_channels", serde_json::json!([8, 8, 8])).unwrap_err();
    assert!(error.contains("4× up") && error.contains("8× down"), "{error}");
    let error = with("scaling_factor", (-1.0).into()).unwrap_err();
    assert!(error.contains("scaling_factor"), "{error}");
    with("scaling_factor", 1.0.into()).unwrap();
    // Without a config, AutoencoderTiny's defaults (TAESD's) apply.
    std::fs::remove_file(&config_path).unwrap();
    let folder = ModelFolder::open("sd1-tiny-taesd", &root).unwrap();
    assert_eq!(folder.tiny_decoder.map(|t| t.scaling_factor), Some(1.0));
}
