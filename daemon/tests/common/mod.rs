//! Shared by the daemon's integration tests: the fixtures folder, the ONNX Runtime, fixture
//! models.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The ONNX Runtime the tests run on: `ORT_DYLIB_PATH`, else the one `cargo xtask fetch-ort`
/// unpacks. Missing is a failure, not a skip: a suite that silently runs nothing proves nothing.
/// ONNX Runtime allows one environment per process, so the tests of a binary share it.
pub fn runtime() -> easeld::runtime::OrtRuntime {
    static RUNTIME: std::sync::OnceLock<easeld::runtime::OrtRuntime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(load).clone()
}

fn load() -> easeld::runtime::OrtRuntime {
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/onnxruntime/libonnxruntime.so.1.31.1");
    let mut candidates: Vec<PathBuf> = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(fetched);
    easeld::runtime::load(&candidates).expect("ONNX Runtime for the tests (run `cargo xtask fetch-ort`)")
}

/// A fixture model (a folder under `tests/fixtures/`), with its sessions open.
pub fn load_fixture_model(relative: &str) -> easeld::model::LoadedModel {
    let folder = easeld::model::ModelFolder::open(relative, &fixtures().join(relative)).unwrap();
    easeld::model::LoadedModel::load(&runtime(), std::sync::Arc::new(folder), 1).unwrap()
}
