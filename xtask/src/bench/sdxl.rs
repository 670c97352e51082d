//! `cargo xtask bench --sdxl`: SDXL's real shape. A full-size SDXL-architecture model with
//! random weights (`tools/make_sdxl_bench_model.py`, cached under `<target>/bench/`), one UNet
//! evaluation of a guided step at 1024² (batch 2) through the real daemon against a bare ONNX
//! Runtime session with the same inputs (`tools/bench_sdxl.py`), and memory: the daemon's
//! resident and peak memory against the weights and against bare sessions of the same graphs.
//! Its section of BENCHMARKS.md (between [`BEGIN`] and [`END`]) is replaced; the rest is left
//! as it is (and the full bench keeps this section).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{field_of_each, machine, memory_of, numbers, parts_bytes, ratio, run_json, seconds, stat, tools_python};
use crate::{DemoDaemon, status, target_dir, test_python};

pub const BEGIN: &str = "<!-- bench --sdxl: begin -->";
pub const END: &str = "<!-- bench --sdxl: end -->";

/// The picture's side, the steps of each request and the timed runs.
const SIZE: u32 = 1024;
const STEPS: u32 = 2;
const RUNS: u32 = 2;

pub fn bench_sdxl(root: &Path, threads: usize) -> Result<()> {
    let target = target_dir(root)?;
    let tools = tools_python(root)?;
    let clients = test_python(root)?;
    let model_root = target.join("bench/sdxl-random");
    let mut make = Command::new(&tools);
    make.arg(root.join("tools/make_sdxl_bench_model.py")).arg(&model_root);
    status(
        make,
        "the SDXL benchmark model (SDXL 1.0 base's architecture, random weights; made once, cached)",
    )?;
    let model = model_root.join("onnx");
    let threads = threads.to_string();
    let mut warm = Command::new(&tools);
    warm.arg(root.join("tools/bench_baselines.py"))
        .arg(&model)
        .arg("--warm");
    status(warm, "reading the SDXL model into the page cache")?;

    let common = [
        "--size".to_string(),
        SIZE.to_string(),
        "--runs".to_string(),
        RUNS.to_string(),
    ];
    let mut bare = Command::new(&tools);
    bare.arg(root.join("tools/bench_sdxl.py"))
        .arg(&model)
        .args(["--threads", &threads])
        .args(&common);
    let bare = run_json(bare, "bare ONNX Runtime sessions of the SDXL model")?;

    let env = [
        ("EASEL_THREADS", threads.clone()),
        ("EASEL_KEEP_ALIVE", "-1".to_string()),
        ("EASEL_MEMORY_BUDGET", "95%".to_string()),
    ];
    let daemon = DemoDaemon::start_with(root, "bench/daemon-sdxl", &env)?;
    let mut easel = Command::new(&clients);
    easel
        .arg(root.join("tools/bench_easel.py"))
        .arg(daemon.socket())
        .arg(&model)
        .args(&common)
        .args(["--steps", &STEPS.to_string(), "--plain-only", "--sampler", "euler"]);
    let measured = run_json(easel, "easel: the SDXL model through a release daemon");
    let memory = memory_of(daemon.pid());
    daemon.stop()?;
    let section = report(&model, &threads, &bare, &measured?, memory);
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&old, &section)).with_context(|| format!("writing {}", path.display()))?;
    println!("{section}");
    eprintln!("xtask: wrote the SDXL section of {}", path.display());
    Ok(())
}

/// `document` with its SDXL section replaced by `section` (appended when it has none).
pub fn with_section(document: &str, section: &str) -> String {
    let section = format!("{BEGIN}\n{}\n{END}\n", section.trim_end());
    match (document.find(BEGIN), document.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{section}{}",
                &document[..begin],
                document[end + END.len()..].trim_start_matches('\n')
            )
        }
        _ if document.is_empty() => section,
        _ => format!("{}\n{section}", document.trim_end_matches('\n').to_string() + "\n"),
    }
}

/// The SDXL section of `document`, if it has one (the full bench keeps it).
pub fn section_of(document: &str) -> Option<&str> {
    let begin = document.find(BEGIN)?;
    let end = document.find(END)?;
    (end > begin).then(|| &document[begin + BEGIN.len()..end])
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / f64::from(1u32 << 30))
}

fn report(model: &Path, threads: &str, bare: &Value, easel: &Value, (resident, peak): (u64, u64)) -> String {
    let weights = parts_bytes(model, &["text_encoder", "text_encoder_2", "unet", "vae_decoder"]);
    let unet = parts_bytes(model, &["unet"]);
    let ours = stat(&field_of_each(easel, "/plain", "/step_s"));
    let theirs = stat(&numbers(bare, "/step_s"));
    let first_load = stat(&numbers(easel, "/first/load_s"));
    let bare_load = stat(&numbers(bare, "/load_s"));
    let request = stat(&field_of_each(easel, "/plain", "/wall_s"));
    let decode = stat(&field_of_each(easel, "/plain", "/timings_s/decode_s"));
    let bare_resident = bare.pointer("/resident_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    let bare_peak = bare.pointer("/peak_rss_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    let per_weights = |bytes: f64| format!("{:.2}×", bytes / weights.max(1) as f64);
    let version = bare.pointer("/onnxruntime").and_then(Value::as_str).unwrap_or("?");
    format!(
        "## SDXL at its real shape (`cargo xtask bench --sdxl`)\n\n\
         - Model: SDXL 1.0 base's architecture at full size with random weights \
         (`tools/make_sdxl_bench_model.py`: both text encoders, the {unet_gib} float32 UNet, the VAE), \
         {weights_gib} of weights for a picture.\n\
         - Machine: {machine}; ONNX Runtime {version}, {threads} intra-op threads.\n\
         - {SIZE}², guided (the UNet runs batch 2), Euler, {STEPS} steps per request, {RUNS} requests \
         after a first one that loads the model; medians (min–max).\n\n\
         | figure | easel | bare ONNX Runtime | ratio |\n|---|---|---|---|\n\
         | one UNet evaluation at {SIZE}², batch 2 | {ours} | {theirs} | {step_ratio} |\n\
         | load (the first request's; bare: the four sessions) | {first_load} | {bare_load} | {load_ratio} |\n\
         | resident memory, models loaded | {resident} ({resident_w} the weights) | {bare_resident} ({bare_resident_w}) | {resident_ratio:.2} |\n\
         | peak memory | {peak} ({peak_w} the weights) | {bare_peak} ({bare_peak_w}, one UNet evaluation) | {peak_ratio:.2} |\n\
         | request to PNG ({STEPS} steps) | {request} | — | — |\n\
         | of which the VAE decode at {SIZE}² | {decode} | — | — |\n\n\
         The daemon's memory is its whole process at the end of the series (the models resident, \
         kept with `EASEL_KEEP_ALIVE=-1`) and its peak over the series (text encoders, denoising, \
         the VAE decode, whole or in tiles above `vae_tile_above`); bare sessions' are the growth of a Python process that opened the \
         same four graphs and ran one UNet evaluation.\n\n\
         Reading it: the UNet evaluation is the same kernels in easel as in a bare session (the ratio \
         is noise around 1). The load row is the first request's whole time to its first step (four \
         sessions opened side by side, then the prompt through both text encoders) against opening the \
         four bare sessions. Easel's peak is below bare sessions' because ONNX Runtime's memory pattern \
         is off in easel (see \"Session settings\"); with it, SDXL at 1024² runs on a 24 GiB machine (the \
         memory target is a peak within 1.3× the weights).\n",
        unet_gib = gib(unet as f64),
        weights_gib = gib(weights as f64),
        machine = machine(),
        ours = seconds(ours),
        theirs = seconds(theirs),
        step_ratio = ratio(ours, theirs),
        first_load = seconds(first_load),
        bare_load = seconds(bare_load),
        load_ratio = ratio(first_load, bare_load),
        resident = gib(resident as f64),
        resident_w = per_weights(resident as f64),
        bare_resident = gib(bare_resident),
        bare_resident_w = per_weights(bare_resident),
        resident_ratio = resident as f64 / bare_resident.max(1.0),
        peak = gib(peak as f64),
        peak_w = per_weights(peak as f64),
        bare_peak = gib(bare_peak),
        bare_peak_w = per_weights(bare_peak),
        peak_ratio = peak as f64 / bare_peak.max(1.0),
        request = seconds(request),
        decode = seconds(decode),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let first = with_section("# Benchmarks\n\nfigures\n", "## SDXL\nold\n");
        assert_eq!(
            first,
            format!("# Benchmarks\n\nfigures\n\n{BEGIN}\n## SDXL\nold\n{END}\n")
        );
        let second = with_section(&format!("{first}after\n"), "## SDXL\nnew");
        assert_eq!(
            second,
            format!("# Benchmarks\n\nfigures\n\n{BEGIN}\n## SDXL\nnew\n{END}\nafter\n")
        );
        assert_eq!(section_of(&second).map(str::trim), Some("## SDXL\nnew"));
        assert_eq!(section_of("no section"), None);
    }
}
