//! easel's time per denoising step on a device: the GPU check's probe (DEVELOPERS.md), which
//! runs where no Python client or daemon socket is wanted, and on the CPU alike.
//!
//!     unet_step ORT_LIBRARY MODEL_FOLDER DEVICE SIZE STEPS THREADS
//!
//! DEVICE is `cpu` or `cuda:N` (a GPU needs the `cuda` feature: `cargo build --release
//! --features cuda --example unet_step -p easeld`), checked as the daemon checks it. Loads the
//! model on the device, runs one guided picture (batch 2 through the UNet) of STEPS Euler steps
//! at SIZE² through easel's pipeline twice (the first run sets the device up), and prints one
//! JSON object: the load's seconds, each step's milliseconds of the second run (the time
//! between consecutive step reports: UNet, guidance and sampler, as a picture spends them), and
//! the whole picture's seconds. No test asserts a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use easeld::generation::Request;
use easeld::generation::sampler::SeededNoise;
use easeld::model::{LoadedModel, ModelFolder, device, device_memory, runtime};

fn main() -> Result<()> {
    // SAFETY: the first thing the process does, on its one thread.
    #[allow(unsafe_code)]
    unsafe {
        easeld::model::runtime::switch_off_telemetry()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [library, folder, device_name, size, steps, threads] = &args[..] else {
        bail!("usage: unet_step ORT_LIBRARY MODEL_FOLDER cpu|cuda:N SIZE STEPS THREADS");
    };
    let size: u32 = size.parse().context("SIZE")?;
    let steps: u32 = steps.parse().context("STEPS")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let setting = device::DeviceSetting::parse(device_name).map_err(anyhow::Error::msg)?;
    let mut runtime = runtime::load(&[PathBuf::from(library)]).context("loading ONNX Runtime")?;
    let resolved = device::resolve(setting, &runtime.library, &device::SystemLoader)?;
    let (resolved, memory) = device_memory::attach(setting, resolved, &device_memory::CudaMemory::open)?;
    runtime.device = resolved.device;
    runtime.device_memory = memory;

    let folder = ModelFolder::open("bench", Path::new(folder)).context("opening the model")?;
    let loading = Instant::now();
    let mut model = LoadedModel::load(&runtime, Arc::new(folder), threads).context("loading the model")?;
    let load_s = loading.elapsed().as_secs_f64();
    let limits = easeld::config::Limits::default();
    let request = Request {
        prompt: "a lighthouse on a cliff at dusk, oil painting".into(),
        width: Some(size),
        height: Some(size),
        steps: Some(steps),
        guidance_scale: Some(7.5),
        sampler: Some("euler".into()),
        ..Default::default()
    };
    let prepared = request.check(&limits)?.prepare(&model.folder, &limits)?;

    let picture = |model: &mut LoadedModel| -> Result<(Vec<f64>, f64)> {
        let mut noise = SeededNoise::new(1);
        let mut marks = Vec::new();
        let started = Instant::now();
        let mut on_step = |_: usize, _: easeld::generation::StepReport| marks.push(Instant::now());
        easeld::generation::generate_batch(model, &prepared, &mut [&mut noise], None, &|| false, &mut on_step)?;
        let total = started.elapsed().as_secs_f64();
        // Step i's time: from the report before it (the first step: from the start).
        let mut previous = started;
        let step_ms = marks
            .iter()
            .map(|&mark| {
                let ms = mark.duration_since(previous).as_secs_f64() * 1000.0;
                previous = mark;
                ms
            })
            .collect();
        Ok((step_ms, total))
    };
    picture(&mut model).context("the first run")?;
    let (step_ms, picture_s) = picture(&mut model).context("the timed run")?;
    println!(
        "{}",
        serde_json::json!({
            "device": resolved.device.to_string(),
            "size": size,
            "steps": steps,
            "load_s": load_s,
            "step_ms": step_ms,
            "picture_s": picture_s,
        })
    );
    Ok(())
}
