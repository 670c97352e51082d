//! Shared by the daemon's integration tests: the fixtures folder, the ONNX Runtime, fixture
//! models, and requests prepared and run the way the daemon runs them.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use easeld::generation::image::RgbImage;
use easeld::generation::sampler::NoiseSource;
use easeld::generation::{Prepared, StepReport, text};
use easeld::model::onnx::HostTensor;

/// `tests/fixtures`, or `EASEL_TEST_FIXTURES` when the test binary runs away from its source
/// tree (a GPU machine it was carried to, see DEVELOPERS.md).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("EASEL_TEST_FIXTURES").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

/// The ONNX Runtime the tests run on: `ORT_DYLIB_PATH`, else the one `cargo xtask fetch-ort`
/// unpacks. Missing is a failure, not a skip: a suite that silently runs nothing proves nothing.
/// ONNX Runtime allows one environment per process, so the tests of a binary share it.
///
/// `EASEL_TEST_DEVICE=cuda:N` runs every session on that GPU, checked as the daemon checks it
/// (a GPU that cannot be used fails the tests, never a quiet run on the CPU): the same parity
/// cases then hold the GPU to the same tolerances.
pub fn runtime() -> easeld::model::runtime::OrtRuntime {
    static RUNTIME: std::sync::OnceLock<easeld::model::runtime::OrtRuntime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(load).clone()
}

fn load() -> easeld::model::runtime::OrtRuntime {
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/onnxruntime/libonnxruntime.so.1.31.1");
    let mut candidates: Vec<PathBuf> = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(fetched);
    let mut runtime =
        easeld::model::runtime::load(&candidates).expect("ONNX Runtime for the tests (run `cargo xtask fetch-ort`)");
    if let Some(text) = std::env::var("EASEL_TEST_DEVICE").ok().filter(|t| !t.is_empty()) {
        use easeld::model::{device, device_memory};
        let setting = device::DeviceSetting::parse(&text).unwrap_or_else(|e| panic!("EASEL_TEST_DEVICE={text}: {e}"));
        let resolved = device::resolve(setting, &runtime.library, &device::SystemLoader)
            .and_then(|resolved| device_memory::attach(setting, resolved, &device_memory::CudaMemory::open))
            .unwrap_or_else(|e| panic!("EASEL_TEST_DEVICE={text}: {e}"));
        let (resolved, memory) = resolved;
        eprintln!("tests run on {}", resolved.device);
        runtime.device = resolved.device;
        runtime.device_memory = memory;
    }
    runtime
}

/// A fixture model (a folder under `tests/fixtures/`), with its sessions open.
pub fn load_fixture_model(relative: &str) -> easeld::model::LoadedModel {
    let folder = easeld::model::ModelFolder::open(relative, &fixtures().join(relative)).unwrap();
    easeld::model::LoadedModel::load(&runtime(), std::sync::Arc::new(folder), 1).unwrap()
}

/// Fails if an import left a staging folder (a hidden entry) in the store's models folder.
pub fn assert_no_staging_left(models_dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(models_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
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

    /// The request: the case's settings, its initial noise, no previews.
    pub fn request(&self, clip_skip: u32) -> easeld::generation::Request {
        let noise = easel_client::npy::read(&fixtures().join(&self.init_noise))
            .unwrap_or_else(|e| panic!("{}: {e}", self.init_noise));
        easeld::generation::Request {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: Some(self.width),
            height: Some(self.height),
            steps: Some(self.steps as u32),
            guidance_scale: Some(self.guidance_scale),
            sampler: Some(self.sampler.clone()),
            init_noise: Some(easeld::model::onnx::HostTensor::new(noise.shape, noise.data)),
            clip_skip: Some(clip_skip),
            ..Default::default()
        }
    }
}

/// `request` prepared for `model` as the daemon prepares it (default limits).
pub fn prepare(model: &easeld::model::LoadedModel, request: easeld::generation::Request) -> Prepared {
    let limits = easeld::config::Limits::default();
    request
        .check(&limits)
        .and_then(|checked| checked.prepare(&model.folder, &limits))
        .unwrap_or_else(|e| panic!("preparing the request: {e}"))
}

/// One picture as the pipeline decodes it (before inpainting's composite), its randomness from
/// `noise`; `on_step` sees every step's report.
pub fn generate_one(
    model: &mut easeld::model::LoadedModel,
    prepared: &Prepared,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(StepReport),
) -> RgbImage {
    let mut on_batch_step = |_: usize, report: StepReport| on_step(report);
    let output =
        easeld::generation::pipeline::run_batch(model, prepared, &mut [noise], None, &|| false, &mut on_batch_step)
            .unwrap_or_else(|e| panic!("generating: {e}"));
    output.images.into_iter().next().expect("one picture")
}

/// A prompt's chunk embeddings, each `[1, 77, D]`, as generation encodes them.
pub fn encode(
    model: &mut easeld::model::LoadedModel,
    prompt: &str,
    clip_skip: usize,
) -> Result<Vec<HostTensor<f32>>, String> {
    let pieces = text::prompt::parse(prompt).map_err(|e| e.to_string())?;
    let chunks = text::tokenize(&model.folder.tokenizer, &pieces).map_err(|e| e.to_string())?;
    let embeddings = text::encode_chunks(model, &chunks, clip_skip).map_err(|e| e.to_string())?;
    Ok(embeddings.into_iter().map(|e| e.hidden).collect())
}

/// Prompt and negative prompt → (cond, uncond), evened out as generation does.
pub fn encode_guided(
    model: &mut easeld::model::LoadedModel,
    prompt: &str,
    negative: &str,
) -> (HostTensor<f32>, HostTensor<f32>) {
    let chunks = |text: &str| {
        let pieces = text::prompt::parse(text).unwrap();
        text::tokenize(&model.folder.tokenizer, &pieces).unwrap()
    };
    let (cond, uncond) = (chunks(prompt), chunks(negative));
    let (cond, uncond) = text::encode_guided(model, &cond, &uncond, 1).unwrap();
    (cond.hidden, uncond.hidden)
}
