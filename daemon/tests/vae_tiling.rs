//! The tiled VAE decode against diffusers' own `AutoencoderKL.tiled_decode` on the same ONNX
//! decoder (`tools/make_vae_tiling_fixture.py`): same tiles, same blends, same crops.

mod common;

use easeld::generation::vae::{Tiling, decode_tiled};
use easeld::model::onnx::HostTensor;

fn read(name: &str) -> HostTensor<f32> {
    let path = common::fixtures().join("vae-tiling").join(name);
    let array = easel_client::npy::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    HostTensor::new(array.shape, array.data)
}

#[test]
fn tiled_decode_matches_diffusers_tiled_decode() {
    let mut model = common::load_fixture_model("models/sd1-tiny");
    let latents = read("latents.npy");
    let expected = read("decoded.npy");
    let whole = read("whole.npy");
    let tiling = Tiling::of(&model);
    assert_eq!(
        (tiling.latent_tile, tiling.sample_tile),
        (8, 64),
        "sd1-tiny's VAE tiles"
    );

    let decoded = decode_tiled(&mut model, &latents, tiling).unwrap();
    assert_eq!(decoded.shape, expected.shape);
    let diff = |a: &[f32], b: &[f32]| {
        let (sum, max) = a.iter().zip(b).fold((0.0f64, 0.0f32), |(sum, max), (x, y)| {
            (sum + f64::from((x - y).abs()), max.max((x - y).abs()))
        });
        (sum / a.len() as f64, max)
    };
    let (mean, max) = diff(&decoded.data, &expected.data);
    // On 0–255 after (x + 1) · 127.5: well under one level.
    assert!(mean * 127.5 < 0.05 && max * 127.5 < 0.5, "mean {mean}, max {max}");
    // The reference is not the whole decode: tiling is really being compared.
    let (apart, _) = diff(&whole.data, &expected.data);
    assert!(
        apart > 0.01,
        "the tiled reference differs from a whole decode ({apart})"
    );
}
