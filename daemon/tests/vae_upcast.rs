//! diffusers' `force_upcast` for a float16 VAE (`model/upcast.rs`): with the config's flag the
//! VAE decoder's graph is widened to float32 before ONNX Runtime opens it, and decodes what
//! diffusers decodes in float32; without it the float16 graph runs as exported. The fixture
//! (`tools/make_sdxl_fixtures.py`, `sdxl/fp16-vae/`) is sdxl-tiny's VAE decoder in float16 with
//! activations beyond float16's range.

mod common;

use std::path::Path;

use easeld::model::onnx::Dtype;

fn sdxl_with_fp16_vae(dir: &Path, force_upcast: bool) -> std::path::PathBuf {
    let root = dir.join(if force_upcast { "upcast" } else { "as-is" });
    let copy = |from: &Path, to: &Path| {
        for entry in walk(from) {
            let target = to.join(entry.strip_prefix(from).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&entry, &target).unwrap();
        }
    };
    copy(&common::fixtures().join("models/sdxl-tiny"), &root);
    std::fs::remove_dir_all(root.join("vae_decoder")).unwrap();
    copy(
        &common::fixtures().join("sdxl/fp16-vae/vae_decoder"),
        &root.join("vae_decoder"),
    );
    let config_path = root.join("vae_decoder/config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["force_upcast"] = force_upcast.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    root
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn decode_and_compare(root: &Path) -> (Dtype, f64, u8) {
    let folder = easeld::model::ModelFolder::open("fp16-vae", root).unwrap();
    let mut model = easeld::model::LoadedModel::load(&common::runtime(), std::sync::Arc::new(folder), 1).unwrap();
    let latent = easel_client::npy::read(&common::fixtures().join("sdxl/fp16-vae/latent.npy")).unwrap();
    let image = easeld::generation::vae::decode(&mut model, &latent.data, &latent.shape, false).unwrap();
    let png = std::fs::read(common::fixtures().join("sdxl/fp16-vae/decoded.png")).unwrap();
    let reference = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!((image.width, image.height), reference.dimensions());
    let diffs: Vec<u8> = image
        .pixels
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    (model.vae_latent.dtype, mean, diffs.into_iter().max().unwrap_or(0))
}

#[test]
fn a_float16_vae_with_force_upcast_decodes_in_float32_as_diffusers_does() {
    let dir = tempfile::tempdir().unwrap();
    let (dtype, mean, max) = decode_and_compare(&sdxl_with_fp16_vae(dir.path(), true));
    assert_eq!(
        dtype,
        Dtype::F32,
        "force_upcast: the decoder's graph is widened to float32"
    );
    assert!(
        mean <= 1.0 && max <= 8,
        "upcast decode vs diffusers' float32: mean {mean:.3}, max {max}"
    );

    let (dtype, mean, max) = decode_and_compare(&sdxl_with_fp16_vae(dir.path(), false));
    assert_eq!(
        dtype,
        Dtype::F16,
        "without force_upcast the float16 graph runs as exported"
    );
    // ONNX Runtime's CPU kernels compute this graph in float32 behind casts: within rounding here.
    assert!(mean <= 1.0 && max <= 8, "as-is decode: mean {mean:.3}, max {max}");
}
