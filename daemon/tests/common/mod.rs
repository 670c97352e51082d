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

/// A text-to-image reference case as the fixture manifests write it (`references/`, `fewstep/`,
/// `fp16/`, `clipskip/`; fields a manifest adds are read by the test that needs them).
#[derive(Debug, serde::Deserialize)]
pub struct TextCase {
    pub name: String,
    pub model: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub guidance_scale: f32,
    pub sampler: String,
    /// `.npy`, unit-variance `[1, C, h, w]`.
    pub init_noise: String,
    /// The stochastic samplers' per-step noise, in draw order.
    #[serde(default)]
    pub step_noise: Option<String>,
    /// diffusers' picture.
    pub image: String,
}

impl TextCase {
    /// The cases of a manifest (a path under `tests/fixtures/`).
    pub fn read_manifest<T: for<'de> serde::Deserialize<'de>>(manifest: &str) -> Vec<T> {
        serde_json::from_slice(&std::fs::read(fixtures().join(manifest)).unwrap()).unwrap()
    }

    /// The pipeline request: the case's settings, its initial noise, no previews.
    pub fn request(&self, clip_skip: usize) -> easeld::pipeline::Request {
        let noise = easel_client::npy::read(&fixtures().join(&self.init_noise))
            .unwrap_or_else(|e| panic!("{}: {e}", self.init_noise));
        easeld::pipeline::Request {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            sampler: self.sampler.parse().unwrap(),
            init_noise: Some(easeld::model::onnx::HostTensor::new(noise.shape, noise.data)),
            init_image: None,
            clip_skip,
            preview: easeld::pipeline::PreviewSettings::default(),
        }
    }
}
