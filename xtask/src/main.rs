//! `cargo xtask`: the project's automation, in Rust so it needs nothing but cargo (and pip to
//! fetch the ONNX Runtime wheel).
//!
//! - `cargo xtask demo`: build, fetch the pinned ONNX Runtime, start a daemon on a private
//!   socket, generate one picture, print its path, stop the daemon.
//! - `cargo xtask test`: everything CI runs: fetch ONNX Runtime, fmt check, clippy, the whole
//!   test suite (unit, parity and end-to-end).
//! - `cargo xtask fetch-ort [--install]`: download the pinned `onnxruntime` wheel with pip,
//!   verify its sha256, unpack the library into `target/onnxruntime/` (and with `--install`
//!   into `$EASEL_HOME/runtime/`, where the daemon finds it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The pinned ONNX Runtime: the official CPU wheel on the Python package index.
const ORT_VERSION: &str = "1.31.1";
const ORT_WHEEL: &str = "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
const ORT_WHEEL_SHA256: &str = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
const ORT_LIBRARY_IN_WHEEL: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The model the demo draws with until the embedded default model lands.
const DEMO_MODEL: &str = "tests/fixtures/models/sd1-tiny";

fn main() {
    if let Err(error) = run() {
        eprintln!("xtask: error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("demo") => demo(&root),
        Some("test") => test(&root),
        Some("fetch-ort") => {
            let library = fetch_ort(&root)?;
            if args.iter().any(|a| a == "--install") {
                let dir = easel_home().join("runtime");
                std::fs::create_dir_all(&dir)?;
                let target = dir.join(library.file_name().expect("library file name"));
                std::fs::copy(&library, &target).with_context(|| format!("copying to {}", target.display()))?;
                println!("{}", target.display());
            } else {
                println!("{}", library.display());
            }
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask <demo | test | fetch-ort [--install]>");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn easel_home() -> PathBuf {
    if let Some(home) = std::env::var_os("EASEL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share"));
    base.join("easel")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn status(mut command: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = command.status().with_context(|| format!("could not start: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Makes sure `target/onnxruntime/libonnxruntime.so.X` exists, fetching the wheel if needed.
fn fetch_ort(root: &Path) -> Result<PathBuf> {
    let out_dir = root.join("target/onnxruntime");
    let library = out_dir.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if library.is_file() {
        return Ok(library);
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "the pinned wheel is for Linux x86_64; on this platform install ONNX Runtime {ORT_VERSION} yourself and set ORT_DYLIB_PATH to its library"
        );
    }
    let cache = root.join("target/ort-wheel");
    std::fs::create_dir_all(&cache)?;
    let wheel = cache.join(ORT_WHEEL);
    if !wheel.is_file() || sha256_of(&wheel)? != ORT_WHEEL_SHA256 {
        let python = ["python3", "python"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .context("Python 3 with pip is needed to fetch the ONNX Runtime wheel; install python3 and pip")?;
        let mut pip = Command::new(python);
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
        ])
        .args([
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--dest",
        ])
        .arg(&cache)
        .arg(format!("onnxruntime=={ORT_VERSION}"));
        status(pip, &format!("pip download onnxruntime=={ORT_VERSION}"))?;
    }
    let digest = sha256_of(&wheel)?;
    if digest != ORT_WHEEL_SHA256 {
        std::fs::remove_file(&wheel).ok();
        bail!(
            "{} has sha256 {digest}, expected {ORT_WHEEL_SHA256}; the download was corrupted or tampered with, run again",
            wheel.display()
        );
    }
    let file = std::fs::File::open(&wheel)?;
    let mut archive = zip::ZipArchive::new(file).context("reading the wheel")?;
    let mut entry = archive
        .by_name(ORT_LIBRARY_IN_WHEEL)
        .with_context(|| format!("{ORT_LIBRARY_IN_WHEEL} is not in the wheel"))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    std::fs::create_dir_all(&out_dir)?;
    let partial = out_dir.join(".partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, &library)?;
    eprintln!("xtask: ONNX Runtime {ORT_VERSION} is at {}", library.display());
    Ok(library)
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn test(root: &Path) -> Result<()> {
    let library = fetch_ort(root)?;
    let mut fmt = cargo();
    fmt.current_dir(root).args(["fmt", "--all", "--check"]);
    status(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy
        .current_dir(root)
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    status(clippy, "cargo clippy")?;
    // The end-to-end tests run the real binaries: build them first.
    let mut build = cargo();
    build.current_dir(root).args(["build", "--workspace", "--bins"]);
    status(build, "cargo build --bins")?;
    let mut tests = cargo();
    tests
        .current_dir(root)
        .args(["test", "--workspace"])
        .env("ORT_DYLIB_PATH", &library);
    status(tests, "cargo test --workspace")
}

fn demo(root: &Path) -> Result<()> {
    let library = fetch_ort(root)?;
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--release", "-p", "easeld", "-p", "easel"]);
    status(build, "cargo build --release")?;
    let bin = root.join("target/release");
    let work = root.join("target/demo");
    std::fs::create_dir_all(&work)?;
    let socket = work.join("easeld.sock");
    let output = work.join("demo.png");
    let envs = [
        ("ORT_DYLIB_PATH", library.as_os_str()),
        ("EASEL_SOCKET", socket.as_os_str()),
    ];

    let mut daemon = Command::new(bin.join("easeld"));
    daemon.envs(envs).stdin(Stdio::null());
    eprintln!("xtask: starting easeld on {}", socket.display());
    let mut daemon = daemon.spawn().context("starting easeld")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(exit) = daemon.try_wait()? {
            bail!("easeld exited before it was ready ({exit})");
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            bail!("easeld did not create its socket within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut generate = Command::new(bin.join("easel"));
    generate
        .envs(envs)
        .args([
            "--no-autostart",
            "generate",
            "a red circle on a blue background",
            "--model",
        ])
        .arg(root.join(DEMO_MODEL))
        .args(["--steps", "20", "--seed", "42", "--output"])
        .arg(&output);
    let generated = status(generate, "easel generate");
    let mut stop = Command::new(bin.join("easel"));
    stop.envs(envs).args(["--no-autostart", "daemon", "stop"]);
    let stopped = status(stop, "easel daemon stop");
    let _ = daemon.wait();
    generated?;
    stopped?;
    println!("{}", output.display());
    Ok(())
}
