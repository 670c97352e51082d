//! `cargo xtask bench`'s probe of the VAE decode at a large size: whole, or in diffusers'
//! overlapping tiles (`generation::vae::decode_tiled`, what the daemon does above
//! `vae_tile_above` pixels). One process per mode, so each peak RSS is its own.
//!
//!     vae_decode ORT_LIBRARY MODEL_FOLDER SIZE whole|tiled THREADS
//!
//! Loads the model, decodes a `[1, 4, SIZE/8, SIZE/8]` latent of fixed pseudo-random values
//! once, and prints one JSON object: the decode's seconds, the resident memory before it and
//! the process's peak after it (bytes). No test runs this; numbers come from the bench.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use easeld::model::{LoadedModel, ModelFolder, runtime};

fn main() -> Result<()> {
    // SAFETY: the first thing the process does, on its one thread.
    #[allow(unsafe_code)]
    unsafe {
        easeld::model::runtime::switch_off_telemetry()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [library, folder, size, mode, threads] = &args[..] else {
        bail!("usage: vae_decode ORT_LIBRARY MODEL_FOLDER SIZE whole|tiled THREADS");
    };
    let size: usize = size.parse().context("SIZE")?;
    let threads: usize = threads.parse().context("THREADS")?;
    let tiled = match mode.as_str() {
        "whole" => false,
        "tiled" => true,
        other => bail!("mode {other:?}: expected whole or tiled"),
    };
    let runtime = runtime::load(&[PathBuf::from(library)]).context("loading ONNX Runtime")?;
    let folder = ModelFolder::open("bench", std::path::Path::new(folder)).context("opening the model")?;
    let mut model = LoadedModel::load(&runtime, Arc::new(folder), threads).context("loading the model")?;

    let cells = size / model.folder.vae_factor;
    let shape = [1, model.folder.latent_channels, cells, cells];
    // A fixed, roughly unit-variance latent (a decoder's time does not depend on its values).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let latents: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4
        })
        .collect();

    let (before, _) = memory();
    let started = Instant::now();
    let image = easeld::generation::vae::decode(&mut model, &latents, &shape, tiled).context("decoding")?;
    let seconds = started.elapsed().as_secs_f64();
    let (_, peak) = memory();
    if (image.width as usize, image.height as usize) != (size, size) {
        bail!("decoded {}×{}, expected {size}²", image.width, image.height);
    }
    println!(
        "{{\"mode\": \"{mode}\", \"size\": {size}, \"decode_s\": {seconds}, \"rss_before_bytes\": {before}, \"peak_rss_bytes\": {peak}}}"
    );
    Ok(())
}

/// This process's resident and peak resident memory (bytes), from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
