//! Flat bundles through the store with real graphs: the fixture models flattened (graphs side by
//! side, Apple's resource names for some, an external-data UNet), converted by
//! `bundle::Converter` on ONNX Runtime, validated by `describe`, and what was inferred; bad
//! bundles refused with errors that name the problem.

mod common;

use std::path::{Path, PathBuf};

use easeld::catalog::store::bundle::{BundleFlags, Converter, Overrides, REPORT_FILE};
use easeld::catalog::store::{ImportLimits, Installed, ModelDescription, Store, StoreError, describe};
use easeld::model::{ModelFolder, PredictionType};

/// `model` (a fixture under `models/`) as a flat bundle in `dir`: each part's graph under the
/// name `names` gives it, the tokenizer's two files beside them.
fn flatten(model: &str, dir: &Path, names: [&str; 4]) -> PathBuf {
    let source = common::fixtures().join("models").join(model);
    std::fs::create_dir_all(dir).unwrap();
    for (part, name) in ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
        .into_iter()
        .zip(names)
    {
        std::fs::copy(source.join(part).join("model.onnx"), dir.join(name)).unwrap();
    }
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(source.join("tokenizer").join(file), dir.join(file)).unwrap();
    }
    dir.to_path_buf()
}

/// Imports `source` with the bundle converter under `flags` and `describe` as validation.
fn import(source: &Path, flags: BundleFlags) -> (Result<(Installed, ModelDescription), StoreError>, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&home.path().join("models"), ImportLimits::default()).unwrap();
    let runtime = common::runtime();
    let converter = Overrides::parse(&flags).map(|overrides| Converter::new(&runtime, overrides));
    let converter = match converter {
        Ok(converter) => converter,
        Err(error) => {
            let source_path = source.to_path_buf();
            return (Err(StoreError::Bundle { source_path, error }), home);
        }
    };
    let mut description = None;
    let result = store.import_converting(
        source,
        None,
        false,
        Some(&converter),
        &mut |root| {
            description = Some(describe(&runtime, "candidate", root).map_err(|e| e.to_string())?);
            Ok(())
        },
        &mut |_| {},
        &|| false,
    );
    common::assert_no_staging_left(store.models_dir());
    (result.map(|installed| (installed, description.unwrap())), home)
}

fn family(name: &str) -> BundleFlags {
    BundleFlags {
        family: Some(name.into()),
        ..BundleFlags::default()
    }
}

#[test]
fn sd1_with_apple_names_and_an_external_data_unet_converts_to_what_the_fixture_says() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = flatten(
        "sd1-tiny",
        &dir.path().join("sd1-flat"),
        ["TextEncoder.onnx", "Unet.onnx", "VAEDecoder.onnx", "VAEEncoder.onnx"],
    );
    // The attention-fused UNet keeps its weights in `model.onnx.data`, beside the graph.
    let fused = common::fixtures().join("fused/sd1-tiny-unet");
    std::fs::copy(fused.join("model.onnx"), bundle.join("Unet.onnx")).unwrap();
    std::fs::copy(fused.join("model.onnx.data"), bundle.join("model.onnx.data")).unwrap();

    let (result, _home) = import(&bundle, family("sd1"));
    let (installed, description) = result.unwrap();
    let root = &installed.path;
    assert!(root.join("unet/model.onnx.data").is_file());
    assert!(bundle.join("Unet.onnx").is_file(), "the source is left as it was");
    assert_eq!(description.family, "sd1");
    assert_eq!(description.default_sampler, "pndm");
    assert_eq!(
        description.parts.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    );
    let converted = ModelFolder::open("flat", root).unwrap();
    let fixture = ModelFolder::open("fixture", &common::fixtures().join("models/sd1-tiny")).unwrap();
    assert_eq!(converted.scheduler, fixture.scheduler);
    assert_eq!(
        (
            converted.vae_factor,
            converted.scaling_factor,
            converted.prediction_type
        ),
        (fixture.vae_factor, fixture.scaling_factor, fixture.prediction_type)
    );
    assert_eq!(converted.tokenizer.pad_id(), fixture.tokenizer.pad_id());
    let lines = &description.inferred;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("family: sd1 (override: --family (the UNet's `encoder_hidden_states` is 32 wide")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"vae_factor: 8 (inferred: the VAE decoder drew 16×16 pixels from a 2×2 latent)".to_string()),
        "{lines:#?}"
    );
    assert!(lines[0].contains("Unet.onnx (+ model.onnx.data)"), "{lines:#?}");
    assert!(root.join(REPORT_FILE).is_file());
}

#[test]
fn sd2_factor_four_converts_with_its_v_prediction_default() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = flatten(
        "sd2-tiny-v",
        &dir.path().join("sd2-flat"),
        ["text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "vae_encoder.onnx"],
    );
    let (result, _home) = import(&bundle, family("sd2"));
    let (installed, description) = result.unwrap();
    assert_eq!(
        (description.family.as_str(), description.prediction_type.as_str()),
        ("sd2", "v_prediction")
    );
    let converted = ModelFolder::open("flat", &installed.path).unwrap();
    assert_eq!(converted.vae_factor, 4, "measured by running the VAE decoder");
    assert_eq!(converted.prediction_type, PredictionType::VPrediction);
    assert_eq!(converted.tokenizer.pad_id(), 0, "sd2 pads with `!`");
    assert_eq!(converted.scaling_factor, 0.18215, "SD 2.1's, not the fixture's own");
}

#[test]
fn bad_bundles_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "vae_encoder.onnx"];
    // What each case does to a good bundle.
    type Spoil = fn(&Path);
    let cases: Vec<(&str, Spoil, BundleFlags, &str)> = vec![
        (
            "no-family",
            |_: &Path| {},
            BundleFlags::default(),
            "is 32 wide, which is none of SD 1.x's 768",
        ),
        (
            "no-unet",
            |b: &Path| std::fs::remove_file(b.join("unet.onnx")).unwrap(),
            family("sd1"),
            "the flat bundle has no unet.onnx (or Unet.onnx);",
        ),
        (
            "no-merges",
            |b: &Path| std::fs::remove_file(b.join("merges.txt")).unwrap(),
            family("sd1"),
            "the flat bundle has no merges.txt;",
        ),
        (
            "two-unets",
            |b: &Path| {
                std::fs::copy(b.join("unet.onnx"), b.join("Unet.onnx")).unwrap();
            },
            family("sd1"),
            "two unet graphs, `Unet.onnx` and `unet.onnx`",
        ),
        (
            "sdxl-without-second-encoder",
            |_: &Path| {},
            family("sdxl"),
            "no text_encoder_2.onnx",
        ),
        (
            "not-a-graph",
            |b: &Path| std::fs::write(b.join("vae_decoder.onnx"), b"\x08\x07garbage").unwrap(),
            family("sd1"),
            "cannot read `vae_decoder.onnx` as an ONNX graph",
        ),
        (
            "bad-flag",
            |_: &Path| {},
            family("sd3"),
            "`--family sd3` is not allowed: use sd1, sd2 or sdxl",
        ),
    ];
    for (name, spoil, flags, expected) in cases {
        let bundle = flatten("sd1-tiny", &dir.path().join(name), names);
        spoil(&bundle);
        let (result, _home) = import(&bundle, flags);
        let err = result.err().unwrap_or_else(|| panic!("{name}: imported"));
        let message = easeld::error_chain(&err);
        assert!(matches!(err, StoreError::Bundle { .. }), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message}");
    }
    // The flags on a model in optimum's layout.
    let (result, _home) = import(&common::fixtures().join("models/sd1-tiny"), family("sd1"));
    let message = easeld::error_chain(&result.err().unwrap());
    assert!(message.contains("--family only applies to flat bundles"), "{message}");
}

#[test]
fn sdxl_with_both_text_encoders_converts_into_an_sdxl_folder() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = flatten(
        "sdxl-tiny",
        &dir.path().join("sdxl-flat"),
        ["TextEncoder.onnx", "Unet.onnx", "VAEDecoder.onnx", "VAEEncoder.onnx"],
    );
    let source = common::fixtures().join("models/sdxl-tiny");
    std::fs::copy(
        source.join("text_encoder_2/model.onnx"),
        bundle.join("TextEncoder2.onnx"),
    )
    .unwrap();
    // The tiny model's widths (32 + 48) name no family.
    let (result, _home) = import(&bundle, BundleFlags::default());
    let message = easeld::error_chain(&result.err().unwrap());
    assert!(
        message.contains("is 80 wide and the UNet takes `text_embeds` and `time_ids`"),
        "{message}"
    );

    let (result, _home) = import(&bundle, family("sdxl"));
    let (installed, description) = result.unwrap();
    assert_eq!(description.family, "sdxl");
    assert_eq!(description.default_sampler, "euler");
    let converted = ModelFolder::open("flat", &installed.path).unwrap();
    let fixture = ModelFolder::open("fixture", &source).unwrap();
    assert_eq!(converted.scheduler, fixture.scheduler, "SDXL base's scheduler config");
    assert_eq!(
        (converted.vae_factor, converted.scaling_factor),
        (fixture.vae_factor, fixture.scaling_factor)
    );
    let (xl, fixture_xl) = (converted.xl.as_ref().unwrap(), fixture.xl.as_ref().unwrap());
    assert_eq!(
        xl.tokenizer_2.pad_id(),
        fixture_xl.tokenizer_2.pad_id(),
        "tokenizer_2 pads with `!`"
    );
    assert_eq!(converted.tokenizer.pad_id(), fixture.tokenizer.pad_id());
    assert!(xl.force_zeros_for_empty_prompt);
}
