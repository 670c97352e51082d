//! The model store with real models: fixture exports imported as folders and archives and
//! described through ONNX Runtime, and broken copies refused with errors that name the part.

mod common;

use std::path::{Path, PathBuf};

use easeld::catalog::store::{ImportLimits, Installed, ModelDescription, Store, StoreError, describe};

/// Imports `source` into a fresh store with `describe` as the validation; returns the
/// description made during validation, the installed model and the store's folder.
fn import_described(
    source: &Path,
    name: Option<&str>,
) -> (Result<(Installed, ModelDescription), StoreError>, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&home.path().join("models"), ImportLimits::default()).unwrap();
    let runtime = common::runtime();
    let mut description = None;
    let result = store.import(
        source,
        name,
        false,
        &mut |root| {
            let found = describe(&runtime, "candidate", root).map_err(|e| e.to_string())?;
            description = Some(found);
            Ok(())
        },
        &mut |_| {},
        &|| false,
    );
    common::assert_no_staging_left(store.models_dir());
    (result.map(|installed| (installed, description.unwrap())), home)
}

fn fixture(relative: &str) -> PathBuf {
    common::fixtures().join(relative)
}

fn part_names(description: &ModelDescription) -> Vec<&str> {
    description.parts.iter().map(|p| p.name.as_str()).collect()
}

/// A copy of a fixture model that a test may break.
fn copy_of(relative: &str, into: &Path) -> PathBuf {
    let target = into.join(Path::new(relative).file_name().unwrap());
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path(), ImportLimits::default()).unwrap();
    let copied = store
        .import(
            &fixture(relative),
            Some("copy"),
            false,
            &mut |_| Ok(()),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    std::fs::rename(copied.path, &target).unwrap();
    target
}

#[test]
fn sd1_imports_as_a_folder_and_as_a_tar_gz_alike() {
    let source = fixture("models/sd1-tiny");
    let (folder, _home) = import_described(&source, None);
    let (installed, description) = folder.unwrap();
    assert_eq!(installed.name, "sd1-tiny");
    assert_eq!(description.family, "sd1");
    assert_eq!(description.prediction_type, "epsilon");
    assert_eq!(description.dtype, "float32");
    assert_eq!(
        part_names(&description),
        ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    );
    let unet = &description.parts[1];
    assert!(
        unet.inputs.iter().any(|i| i.name == "sample" && i.rank() == 4),
        "{unet:?}"
    );
    assert!(!unet.outputs.is_empty());
    assert!(
        description
            .files
            .iter()
            .any(|(path, size)| path == "unet/model.onnx" && *size > 0),
        "{:?}",
        description.files
    );
    assert_eq!(
        description.size_bytes,
        description.files.iter().map(|(_, size)| size).sum::<u64>()
    );
    // The installed copy describes the same as the candidate did.
    let again = describe(&common::runtime(), "sd1-tiny", &installed.path).unwrap();
    assert_eq!(again.files, description.files);

    // The same folder as a .tar.gz of its top folder, built here.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("sd1-packed.tar.gz");
    let encoder = flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.append_dir_all("sd1-tiny", &source).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let (packed, _home) = import_described(&archive, None);
    let (installed, packed) = packed.unwrap();
    assert_eq!(installed.name, "sd1-packed");
    assert_eq!(packed.family, "sd1");
    assert_eq!(packed.prediction_type, "epsilon");
    assert_eq!(packed.dtype, "float32");
    assert_eq!(part_names(&packed), part_names(&description));
    assert_eq!(packed.files, description.files);
}

#[test]
fn families_prediction_types_and_dtypes_are_recognised() {
    for (relative, family, prediction_type, dtype) in [
        ("models/sd2-tiny-v", "sd2", "v_prediction", "float32"),
        ("inpaint/models/sd1-tiny-inpaint", "sd1-inpaint", "epsilon", "float32"),
        ("fewstep/models/lcm-tiny", "sd1-lcm", "epsilon", "float32"),
        ("fp16/models/sd1-tiny-fp16", "sd1", "epsilon", "float16"),
    ] {
        let (result, _home) = import_described(&fixture(relative), None);
        let (_, description) = result.unwrap_or_else(|e| panic!("{relative}: {e}"));
        assert_eq!(description.family, family, "{relative}");
        assert_eq!(description.prediction_type, prediction_type, "{relative}");
        assert_eq!(description.dtype, dtype, "{relative}");
        assert_eq!(description.native_size, 64, "{relative}");
    }
}

#[test]
fn a_garbage_unet_is_refused_naming_its_file() {
    let work = tempfile::tempdir().unwrap();
    let broken = copy_of("models/sd1-tiny", work.path());
    std::fs::write(broken.join("unet/model.onnx"), b"this is not an ONNX graph").unwrap();
    let (result, _home) = import_described(&broken, None);
    let err = result.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("unet/model.onnx"), "{message}");
    assert!(message.contains("the unet"), "{message}");
}

#[test]
fn a_missing_vocabulary_is_refused_naming_the_tokenizer() {
    let work = tempfile::tempdir().unwrap();
    let broken = copy_of("models/sd1-tiny", work.path());
    std::fs::remove_file(broken.join("tokenizer/vocab.json")).unwrap();
    let (result, _home) = import_described(&broken, None);
    let message = result.unwrap_err().to_string();
    assert!(message.contains("tokenizer"), "{message}");
    assert!(message.contains("vocab.json"), "{message}");
}

/// `models list` summarizes without ONNX sessions; the summary must agree with the full
/// description on every fixture kind (family, prediction type, sampler, size, files).
#[test]
fn the_session_free_summary_agrees_with_the_description() {
    for relative in [
        "models/sd1-tiny",
        "models/sd2-tiny-v",
        "inpaint/models/sd1-tiny-inpaint",
        "fewstep/models/lcm-tiny",
        "fp16/models/sd1-tiny-fp16",
        "clipskip/models/sd1-tiny-hidden",
    ] {
        let root = fixture(relative);
        let full = describe(&common::runtime(), relative, &root).unwrap();
        let summary = easeld::catalog::store::summarize(relative, &root).unwrap();
        assert_eq!(
            (&summary.family, &summary.prediction_type, &summary.default_sampler),
            (&full.family, &full.prediction_type, &full.default_sampler),
            "{relative}"
        );
        assert_eq!(
            (summary.size_bytes, &summary.files),
            (full.size_bytes, &full.files),
            "{relative}"
        );
        assert!(
            summary.parts.is_empty() && summary.dtype.is_empty(),
            "{relative}: no sessions were opened"
        );
    }
}
