//! `cargo xtask bench [--quick] [--threads N]`: easel side by side with a bare ONNX Runtime
//! session and optimum's pipeline, in one run, on one model folder, one ONNX Runtime build and
//! one thread count; writes `BENCHMARKS.md` (with `--quick`, `<target>/bench/BENCHMARKS-quick.md`).
//!
//! The model is SD 1.5's architecture at full size with random weights
//! (`tools/make_bench_model.py`, cached under `<target>/bench/`): every kernel and shape is the
//! real model's, so are the timings. easel is driven through its Python client on a release
//! daemon (`tools/bench_easel.py`, in the test venv that has the client); the baselines run in
//! the tools venv (`tools/bench_baselines.py`: the `onnxruntime` wheel easel's library comes
//! from, and optimum). Figures are medians with min–max; ratios are what to read.
//!
//! Never part of `cargo xtask test`, and no test asserts a time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{DemoDaemon, cargo, fetch_ort, status, target_dir, test_python};

mod sdxl;

struct Settings {
    quick: bool,
    threads: usize,
    size: u32,
    steps: u32,
    runs: u32,
}

impl Settings {
    fn from_args(args: &[String]) -> Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let threads = match args.iter().position(|a| a == "--threads") {
            Some(i) => args
                .get(i + 1)
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
                .context("--threads needs a number of threads")?,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let (size, steps, runs) = if quick { (256, 2, 1) } else { (512, 4, 3) };
        Ok(Self {
            quick,
            threads,
            size,
            steps,
            runs,
        })
    }

    fn common_args(&self) -> Vec<String> {
        vec![
            "--size".into(),
            self.size.to_string(),
            "--steps".into(),
            self.steps.to_string(),
            "--runs".into(),
            self.runs.to_string(),
        ]
    }
}

/// The Python with the tools' requirements (torch, diffusers, optimum, onnxruntime):
/// `$EASEL_TOOLS_PYTHON`, else `<target>/py-tools` made from `tools/requirements.txt`.
fn tools_python(root: &Path) -> Result<PathBuf> {
    if let Some(python) = std::env::var_os("EASEL_TOOLS_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(python));
    }
    let venv = target_dir(root)?.join("py-tools");
    let python = venv.join("bin/python");
    let requirements = root.join("tools/requirements.txt");
    let wanted = std::fs::read(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("installed-requirements.txt");
    if python.is_file() && std::fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(python);
    }
    let mut create = Command::new(crate::system_python()?);
    create.args(["-m", "venv", "--clear"]).arg(&venv);
    status(create, "python3 -m venv (for the benchmark's tools)")?;
    let mut install = Command::new(&python);
    install
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements);
    status(
        install,
        "pip install -r tools/requirements.txt (torch, diffusers, optimum: a while)",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Runs a script that prints one JSON object on its last line.
fn run_json(mut command: Command, what: &str) -> Result<Value> {
    eprintln!("xtask: {what}");
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start: {what}"))?;
    if !output.status.success() {
        bail!("{what} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("{what} printed no JSON: {stdout}"))
}

/// The numbers of a JSON array (or a lone number) at `pointer`.
fn numbers(value: &Value, pointer: &str) -> Vec<f64> {
    match value.pointer(pointer) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_f64).collect(),
        Some(number) => number.as_f64().into_iter().collect(),
        None => Vec::new(),
    }
}

/// The same field of every object in the array at `pointer` (e.g. every run's `/wall_s`).
fn field_of_each(value: &Value, pointer: &str, field: &str) -> Vec<f64> {
    match value.pointer(pointer) {
        Some(Value::Array(runs)) => runs.iter().flat_map(|run| numbers(run, field)).collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    };
    Some(Stat {
        median,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    })
}

fn seconds(stat: Option<Stat>) -> String {
    match stat {
        Some(s) if (s.max - s.min) / s.median.max(1e-9) < 0.005 => format!("{:.3} s", s.median),
        Some(s) => format!("{:.3} s ({:.3}–{:.3})", s.median, s.min, s.max),
        None => "—".into(),
    }
}

fn ratio(ours: Option<Stat>, theirs: Option<Stat>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}", a.median / b.median),
        _ => "—".into(),
    }
}

/// Resident and peak memory of a process, from /proc (bytes).
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn folder_bytes(folder: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += folder_bytes(&path);
        } else if let Ok(meta) = entry.metadata() {
            total += meta.len();
        }
    }
    total
}

/// The weights a picture needs: the text encoder, UNet and VAE decoder folders.
fn weights_bytes(model: &Path) -> u64 {
    parts_bytes(model, &["text_encoder", "unet", "vae_decoder"])
}

/// Bytes of the named part folders of a model folder.
fn parts_bytes(model: &Path, parts: &[&str]) -> u64 {
    parts.iter().map(|part| folder_bytes(&model.join(part))).sum()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("flags"))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
        .into_iter()
        .filter(|flag| flags.contains(flag))
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib >> 20);
    format!("{model}, {cores} cores available, {memory} GiB RAM, {}", simd.join(" "))
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let settings = Settings::from_args(args)?;
    if args.iter().any(|a| a == "--sdxl") {
        return sdxl::bench_sdxl(root, settings.threads);
    }
    let target = target_dir(root)?;
    let tools = tools_python(root)?;
    let clients = test_python(root)?;
    let model_root = target.join("bench/sd15-random");
    let mut make = Command::new(&tools);
    make.arg(root.join("tools/make_bench_model.py")).arg(&model_root);
    status(
        make,
        "the benchmark model (SD 1.5 architecture, random weights; made once, cached)",
    )?;
    let model = model_root.join("onnx");
    let threads = settings.threads.to_string();
    let page_cache = |action: &str, what: &str| {
        let mut command = Command::new(&tools);
        command
            .arg(root.join("tools/bench_baselines.py"))
            .arg(&model)
            .arg(action);
        status(command, what)
    };
    page_cache("--warm", "reading the model into the page cache (the warm figures)")?;

    let mut baselines = Command::new(&tools);
    baselines
        .arg(root.join("tools/bench_baselines.py"))
        .arg(&model)
        .args(["--threads", &threads])
        .args(settings.common_args());
    let baselines = run_json(
        baselines,
        "baselines: bare ONNX Runtime sessions and optimum's pipeline",
    )?;

    let env = [
        ("EASEL_THREADS", threads.clone()),
        ("EASEL_KEEP_ALIVE", "-1".to_string()),
        ("EASEL_MEMORY_BUDGET", "95%".to_string()),
    ];
    // easel through its Python client on a release daemon in `work` (under the target dir):
    // the whole series, or only the first (loading) request. Returns the figures and the
    // daemon's resident and peak memory at the end.
    let drive = |work: &str, env: &[(&str, String)], first_only: bool, what: &str| -> Result<(Value, (u64, u64))> {
        let daemon = DemoDaemon::start_with(root, work, env)?;
        let mut easel = Command::new(&clients);
        easel
            .arg(root.join("tools/bench_easel.py"))
            .arg(daemon.socket())
            .arg(&model)
            .args(settings.common_args());
        if first_only {
            easel.arg("--first-only");
        }
        let measured = run_json(easel, what);
        let memory = memory_of(daemon.pid());
        daemon.stop()?;
        Ok((measured?, memory))
    };
    let (easel, (resident, peak)) = drive(
        "bench/daemon",
        &env,
        false,
        "easel: a release daemon through its Python client",
    )?;

    // The optimized-graph cache (opt-in): a fresh daemon whose first load saves the graphs,
    // then another loading them. The cache is removed afterwards (a copy of the weights).
    let mut cache_loads = Vec::new();
    if !settings.quick {
        let cache_work = target.join("bench/daemon-cache");
        let _ = std::fs::remove_dir_all(cache_work.join("home/cache"));
        let mut env_cache = env.to_vec();
        env_cache.push(("EASEL_OPTIMIZED_CACHE", "1".to_string()));
        for pass in ["saving the optimized graphs", "from the saved graphs"] {
            let what = format!("easel's first load, {pass}");
            cache_loads.push(drive("bench/daemon-cache", &env_cache, true, &what)?.0);
        }
        let _ = std::fs::remove_dir_all(cache_work.join("home/cache"));
    }

    // Bare probes, each setting or variant in its own process: ONNX Runtime's session settings
    // one at a time, and the attention-fused and int8 UNets against the float32 one.
    let probe = |script: &str, what: &str| -> Result<Option<Value>> {
        if settings.quick {
            return Ok(None);
        }
        let mut probe = Command::new(&tools);
        probe.arg(root.join("tools").join(script)).arg(&model).args([
            "--threads",
            &threads,
            "--size",
            &settings.size.to_string(),
            "--runs",
            "2",
        ]);
        run_json(probe, what).map(Some)
    };
    let settings_probe = probe("bench_settings.py", "ONNX Runtime session settings, one by one")?;
    let unet_variants = probe(
        "bench_unet_variants.py",
        "the attention-fused and int8 UNets against the float32 one",
    )?;

    // The VAE decode of a large picture, whole and in tiles (what the daemon does above
    // `vae_tile_above`), each in a process of its own for its peak memory.
    let vae_large = vae_decode_probe(root, &target, &model, &settings)?;

    // From a cold disk: the model's files dropped from the page cache before each load.
    let mut cold = None;
    if !settings.quick {
        let evict = || page_cache("--evict", "dropping the model from the page cache");
        evict()?;
        let mut bare = Command::new(&tools);
        bare.arg(root.join("tools/bench_baselines.py"))
            .arg(&model)
            .args(["--threads", &threads, "--load-only"]);
        let bare = run_json(bare, "bare sessions, cold")?;
        evict()?;
        cold = Some((bare, drive("bench/daemon", &env, true, "easel, cold")?.0));
    }

    let measured = Measured {
        baselines,
        easel,
        memory: (resident, peak),
        cold,
        cache_loads,
        settings_probe,
        unet_variants,
        vae_large,
    };
    let mut report = report(&settings, &model, &measured);
    // The SDXL section (`--sdxl`, measured on its own) stays.
    let kept = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap_or_default();
    if let (false, Some(section)) = (settings.quick, sdxl::section_of(&kept)) {
        report = sdxl::with_section(&report, section);
    }
    let out = if settings.quick {
        target.join("bench/BENCHMARKS-quick.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("{report}");
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// Everything one bench run measured (each script's JSON), for the report.
struct Measured {
    baselines: Value,
    easel: Value,
    /// The main daemon's resident and peak RSS after its jobs (bytes).
    memory: (u64, u64),
    /// (bare sessions, easel) from a cold page cache.
    cold: Option<(Value, Value)>,
    /// The first loads of two daemons with the optimized-graph cache: saving, then from it.
    cache_loads: Vec<Value>,
    settings_probe: Option<Value>,
    /// The float32, attention-fused and int8 UNets' evaluations, bare.
    unet_variants: Option<Value>,
    /// The VAE decode of a large picture: (whole, in tiles).
    vae_large: (Value, Value),
}

/// The side of the large picture for the tiled-decode rows: 2×2 tiles in `--quick` mode, 3×3
/// otherwise (SD's VAE tiles are 512 pixels, every 384).
fn large_size(settings: &Settings) -> u32 {
    if settings.quick { 768 } else { 1024 }
}

/// `daemon/examples/vae_decode.rs` (easel's own decode, whole and tiled), one process each.
fn vae_decode_probe(root: &Path, target: &Path, model: &Path, settings: &Settings) -> Result<(Value, Value)> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "easeld", "--example", "vae_decode"]);
    status(build, "cargo build --release --example vae_decode")?;
    let library = fetch_ort(root)?;
    let size = large_size(settings).to_string();
    let threads = settings.threads.to_string();
    let run = |mode: &str| {
        let mut probe = Command::new(target.join("release/examples/vae_decode"));
        probe
            .arg(&library)
            .arg(model)
            .args([size.as_str(), mode, threads.as_str()]);
        run_json(probe, &format!("the VAE decode at {size}², {mode}"))
    };
    Ok((run("whole")?, run("tiled")?))
}

fn report(settings: &Settings, model: &Path, measured: &Measured) -> String {
    let Measured {
        baselines,
        easel,
        memory: (resident, peak),
        cold,
        cache_loads,
        settings_probe,
        unet_variants,
        vae_large: (whole, tiled),
    } = measured;
    let (resident, peak) = (*resident, *peak);
    let (cold, settings_probe, variants) = (cold.as_ref(), settings_probe.as_ref(), unet_variants.as_ref());
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let weights = weights_bytes(model);
    let step = stat(&field_of_each(easel, "/plain", "/step_s"));
    let bare_step = stat(&numbers(baselines, "/bare/unet_step_s"));
    let wall = stat(&field_of_each(easel, "/plain", "/wall_s"));
    let optimum = stat(&numbers(baselines, "/optimum_pipeline/total_s"));
    let streaming = stat(&field_of_each(easel, "/streaming", "/wall_s"));
    let first_step = stat(&field_of_each(easel, "/plain", "/to_first_step_s"));
    let bare_encode = stat(&numbers(baselines, "/bare/text_encode_s"));
    let decode = stat(&field_of_each(easel, "/plain", "/timings_s/decode_s"));
    let bare_decode = stat(&numbers(baselines, "/bare/vae_decode_s"));
    let load = stat(&numbers(easel, "/first/load_s"));
    let bare_load = stat(&numbers(baselines, "/bare/load_s"));
    let optimum_load = stat(&numbers(baselines, "/optimum_pipeline/load_s"));
    let tiny_wall = stat(&field_of_each(easel, "/tiny", "/wall_s"));
    let first_step_repeat = stat(&field_of_each(easel, "/tiny", "/to_first_step_s"));
    let tiny_decode = stat(&field_of_each(easel, "/tiny", "/timings_s/decode_s"));
    let cutoff_wall = stat(&field_of_each(easel, "/cutoff", "/wall_s"));
    let one_step = stat(&field_of_each(easel, "/one_step", "/wall_s"));
    let mut rows = vec![
        format!(
            "| one UNet evaluation (batch 2, guided) | {} | bare ORT session {} | {} | ≤ 1.02 |",
            seconds(step),
            seconds(bare_step),
            ratio(step, bare_step)
        ),
        format!(
            "| request → PNG ({}², {} PNDM steps, guided) | {} | optimum {} | {} | ≤ 0.95 |",
            settings.size,
            settings.steps,
            seconds(wall),
            seconds(optimum),
            ratio(wall, optimum)
        ),
        format!(
            "| the same, streaming latents + approx previews every step | {} | easel without {} | {} | ≤ 1.02 |",
            seconds(streaming),
            seconds(wall),
            ratio(streaming, wall)
        ),
        format!(
            "| warm request → first UNet call, a new prompt (queue + prompt encoding) | {} | the text encoder alone, one prompt, bare {} | {} | ≤ 0.050 s |",
            seconds(first_step),
            seconds(bare_encode),
            ratio(first_step, bare_encode)
        ),
        format!(
            "| warm request → first UNet call, a prompt seen before (embedding cache) | {} | — | — | ≤ 0.050 s |",
            seconds(first_step_repeat)
        ),
        format!(
            "| VAE decode | {} | bare ORT session {} | {} | — |",
            seconds(decode),
            seconds(bare_decode),
            ratio(decode, bare_decode)
        ),
        format!(
            "| request → PNG with the tiny decoder (`--decoder tiny`) | {} | optimum {} | {} | ≤ 0.6 |",
            seconds(tiny_wall),
            seconds(optimum),
            ratio(tiny_wall, optimum)
        ),
        format!(
            "| tiny VAE decode (TAESD architecture) | {} | easel's full VAE decode {} | {} | — |",
            seconds(tiny_decode),
            seconds(decode),
            ratio(tiny_decode, decode)
        ),
        format!(
            "| request → PNG, guidance cut off after half the steps (`--guidance-cutoff 0.5`) | {} | easel without {} | {} | — |",
            seconds(cutoff_wall),
            seconds(wall),
            ratio(cutoff_wall, wall)
        ),
        format!(
            "| one step, no guidance, tiny decoder (a one-step model's request → PNG) | {} | — | — | < 8 s |",
            seconds(one_step),
        ),
        format!(
            "| load, page cache warm (first request on a fresh daemon) | {} | 3 bare sessions {}, optimum {} | {} | ≤ 1.0 |",
            seconds(load),
            seconds(bare_load),
            seconds(optimum_load),
            ratio(load, bare_load)
        ),
    ];
    if let Some((bare, first)) = cold {
        let cold_load = stat(&numbers(first, "/first/load_s"));
        let cold_bare = stat(&numbers(bare, "/bare_load_s"));
        rows.push(format!(
            "| load, page cache cold | {} | 3 bare sessions {} | {} | ≤ 1.0 |",
            seconds(cold_load),
            seconds(cold_bare),
            ratio(cold_load, cold_bare)
        ));
    }
    if let [saving, cached] = cache_loads.as_slice() {
        let saving = stat(&numbers(saving, "/first/load_s"));
        let cached = stat(&numbers(cached, "/first/load_s"));
        rows.push(format!(
            "| load, page cache warm, optimized-graph cache on (`optimized_cache`, opt-in): once saved | {} (the saving load: {}) | 3 bare sessions {} | {} | ≤ 1.0 |",
            seconds(cached),
            seconds(saving),
            seconds(bare_load),
            ratio(cached, bare_load)
        ));
    }
    if let Some(variants) = variants {
        let fp32_step = stat(&numbers(variants, "/fp32/step_s"));
        let int8_step = stat(&numbers(variants, "/int8/step_s"));
        let disk = |which: &str| {
            variants
                .pointer(&format!("/{which}/disk_bytes"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        let fused_step = stat(&numbers(variants, "/fused/step_s"));
        rows.push(format!(
            "| one UNet evaluation, attention-fused UNet (`tools/optimize_unet.py`) | {} | float32 UNet {}, bare sessions | {} | — |",
            seconds(fused_step),
            seconds(fp32_step),
            ratio(fused_step, fp32_step)
        ));
        rows.push(format!(
            "| one UNet evaluation, int8 UNet (`tools/quantize_unet.py`, {:.2} GiB on disk) | {} | float32 UNet {} ({:.2} GiB), bare sessions | {} | — |",
            disk("int8") / f64::from(1u32 << 30),
            seconds(int8_step),
            seconds(fp32_step),
            disk("fp32") / f64::from(1u32 << 30),
            ratio(int8_step, fp32_step)
        ));
    }
    let large = large_size(settings);
    let decode_of = |probe: &Value| stat(&numbers(probe, "/decode_s"));
    let growth = |probe: &Value| {
        let field = |name: &str| probe[name].as_f64().unwrap_or(0.0);
        field("peak_rss_bytes") - field("rss_before_bytes")
    };
    let (whole_decode, tiled_decode) = (decode_of(whole), decode_of(tiled));
    rows.push(format!(
        "| VAE decode at {large}², in tiles (diffusers' tiling; the daemon tiles above `vae_tile_above`) | {} | whole {} | {} | — |",
        seconds(tiled_decode),
        seconds(whole_decode),
        ratio(tiled_decode, whole_decode)
    ));
    rows.push(format!(
        "| memory the VAE decode at {large}² adds (peak RSS over RSS before it), in tiles | {:.2} GiB | whole {:.2} GiB | {:.2} | — |",
        growth(tiled) / f64::from(1u32 << 30),
        growth(whole) / f64::from(1u32 << 30),
        growth(tiled) / growth(whole).max(1.0)
    ));
    rows.push(format!(
        "| daemon RSS with the model resident, after the jobs | {:.2} GiB | weights {:.2} GiB | {:.2} | ≤ 1.3 |",
        gib(resident),
        gib(weights),
        resident as f64 / weights.max(1) as f64
    ));
    rows.push(format!(
        "| daemon peak RSS | {:.2} GiB | weights {:.2} GiB | {:.2} | ≤ 1.3 |",
        gib(peak),
        gib(weights),
        peak as f64 / weights.max(1) as f64
    ));
    let gflop = baselines
        .pointer("/profile/gflop")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let peak = baselines["matmul_peak_gflops"].as_f64().unwrap_or(0.0);
    let achieved = step.map_or(0.0, |s| gflop / s.median);
    let mut by_op: Vec<(String, f64)> = baselines
        .pointer("/profile/by_op_s")
        .and_then(Value::as_object)
        .map(|ops| {
            ops.iter()
                .filter_map(|(op, seconds)| Some((op.clone(), seconds.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let profiled: f64 = by_op.iter().map(|(_, seconds)| seconds).sum();
    let top: Vec<String> = by_op
        .iter()
        .take(6)
        .map(|(op, seconds)| format!("{op} {:.0}%", 100.0 * seconds / profiled.max(1e-9)))
        .collect();
    let limits = format!(
        "## How far from the machine's limit\n\n\
         One UNet evaluation at {size}² (batch 2) is {gflop:.0} GFLOP of convolutions and matrix \
         products (counted from the shapes in ONNX Runtime's profile of the bare session). easel's \
         step runs it at {achieved:.0} GFLOP/s; a 2048³ fp32 MatMul through the same ONNX Runtime \
         and threads reaches {peak:.0} GFLOP/s, so the step is at {share:.0}% of what these cores \
         do in fp32. Where a step's time goes (operator types, share of the profiled step): {top}.\n",
        size = settings.size,
        share = 100.0 * achieved / peak.max(1e-9),
        top = top.join(", "),
    );
    // What bounds the end-to-end ratios: the UNet's evaluations alone (PNDM runs steps + 1).
    let evaluations = f64::from(settings.steps + 1);
    let share_of_optimum = |seconds: f64| match optimum {
        Some(optimum) if optimum.median > 0.0 => seconds / optimum.median,
        _ => f64::NAN,
    };
    let median = |stat: Option<Stat>| stat.map_or(f64::NAN, |s| s.median);
    let unet_share = share_of_optimum(median(step) * evaluations);
    let with_decode = share_of_optimum(median(step) * evaluations + median(decode));
    let bounds = format!(
        "## What bounds the end-to-end figures\n\n\
         easel and optimum run the same ONNX Runtime kernels on the same graphs, and easel's UNet \
         evaluation is the bare session's. The {evaluations:.0} UNet evaluations of a request alone \
         take {share:.2} of optimum's whole request, so no glue and no decoder can bring request → \
         PNG below that ratio (the tiny decoder's target is under it); with easel's full VAE decode \
         they take {with_decode:.2}, so the glue left to win with the full decoder is the difference \
         between that and the request's ratio. A new prompt's first UNet call waits for the text \
         encoder, whose run alone takes {encode} here. Halving the UNet's evaluations (the guidance \
         cut-off) or their cost (the attention-fused UNet's row) is what moves these figures.\n",
        share = unet_share,
        encode = seconds(bare_encode),
    );
    let cutoff = &easel["cutoff_difference"];
    let cutoff_note = format!(
        "## What the guidance cut-off changes\n\n\
         The benchmark model's weights are random, so its pictures say nothing; on the built-in \
         model (20 Euler steps, guidance 7.5, {pictures} seeds), cutting guidance off after half the \
         steps changes a picture by {mean:.2} on average and at most {max:.0} (0–255). Guidance \
         settles the composition early; the last steps refine detail, where it matters least.\n",
        pictures = cutoff["pictures"].as_u64().unwrap_or(0),
        mean = cutoff["mean"].as_f64().unwrap_or(f64::NAN),
        max = cutoff["max"].as_f64().unwrap_or(f64::NAN),
    );
    let settings_table = settings_probe.map(settings_section).unwrap_or_default();
    let versions = format!(
        "easel {}, ONNX Runtime {} (the same library for every column), optimum {}, {}",
        env!("CARGO_PKG_VERSION"),
        baselines["onnxruntime"].as_str().unwrap_or("?"),
        baselines["optimum"].as_str().unwrap_or("?"),
        command_line("rustc", &["--version"]),
    );
    format!(
        "# Benchmarks\n\n\
         Made by `cargo xtask bench{quick}` (see the README); every column in one run, on one machine.\n\n\
         - Machine: {machine}; {threads} ONNX Runtime threads for everyone.\n\
         - Versions: {versions}.\n\
         - Model: SD 1.5's architecture at full size with random weights (`tools/make_bench_model.py`,\n  \
           fp32, {weights:.2} GiB for text encoder + UNet + VAE decoder): the real model's kernels and shapes.\n\
         - Figures: median of {runs} run(s) (min–max when they differ); the ratio is easel ÷ the baseline.\n\n\
         | measure | easel | baseline | ratio | target |\n\
         |---|---|---|---|---|\n\
         {rows}\n\n\
         {limits}\n\
         {bounds}\n\
         {cutoff_note}\n\
         {settings_table}",
        quick = if settings.quick { " --quick" } else { "" },
        machine = machine(),
        threads = settings.threads,
        weights = gib(weights),
        runs = settings.runs,
        rows = rows.join("\n"),
        limits = limits,
    )
}

/// The "Session settings" section: each ONNX Runtime setting on the UNet alone (load, one
/// evaluation at batch 2, the process's peak RSS), against ONNX Runtime's defaults.
fn settings_section(probe: &Value) -> String {
    let Some(settings) = probe.as_object() else {
        return String::new();
    };
    let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
    let default_step = stat(&numbers(probe, "/default/step_s"));
    let default_peak = probe.pointer("/default/peak_rss_bytes").and_then(Value::as_f64);
    let rows: Vec<String> = settings
        .iter()
        .map(|(name, figures)| {
            let step = stat(&numbers(figures, "/step_s"));
            let peak = figures["peak_rss_bytes"].as_f64().unwrap_or(0.0);
            format!(
                "| `{name}` | {meaning} | {load} | {step} ({ratio}) | {peak:.2} GiB ({peak_ratio}) |",
                meaning = figures["meaning"].as_str().unwrap_or(""),
                load = seconds(stat(&numbers(figures, "/load_s"))),
                step = seconds(step),
                ratio = ratio(step, default_step),
                peak = gib(peak),
                peak_ratio = default_peak.map_or("—".into(), |d| format!("{:.2}", peak / d.max(1.0))),
            )
        })
        .collect();
    format!(
        "## Session settings\n\n\
         Each ONNX Runtime setting alone on the UNet (a fresh process each: create the session, one \
         warm-up evaluation, then two timed ones at batch 2); ratios against ONNX Runtime's defaults. \
         easel keeps a setting only when it wins here without losing elsewhere.\n\n\
         | setting | what it changes | session load | one UNet evaluation | process peak RSS |\n\
         |---|---|---|---|---|\n\
         {}\n",
        rows.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let s = stat(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(stat(&[1.0, 2.0, 3.0, 4.0]).unwrap().median, 2.5);
        assert!(stat(&[]).is_none());
        assert_eq!(ratio(Some(s), stat(&[4.0])), "0.50");
        assert_eq!(seconds(stat(&[1.0])), "1.000 s");
        assert_eq!(seconds(Some(s)), "2.000 s (1.000–3.000)");
    }

    #[test]
    fn figures_are_read_from_each_run() {
        let value = serde_json::json!({"plain": [{"step_s": [1.0, 2.0]}, {"step_s": [3.0]}], "first": {"load_s": 5.0}});
        assert_eq!(field_of_each(&value, "/plain", "/step_s"), vec![1.0, 2.0, 3.0]);
        assert_eq!(numbers(&value, "/first/load_s"), vec![5.0]);
    }
}
