//! `cargo xtask`: the project's automation, in Rust so it needs nothing but cargo (and pip to
//! fetch the ONNX Runtime wheel).
//!
//! - `cargo xtask demo`: build, fetch the pinned ONNX Runtime, start a daemon on a private
//!   socket, generate one picture, print its path, stop the daemon.
//! - `cargo xtask test`: everything CI runs: fetch ONNX Runtime, make the Python environment
//!   the real-client tests use (`tests/python/requirements.txt`), fmt check, clippy, the whole
//!   test suite (unit, parity and end-to-end).
//! - `cargo xtask fetch-ort [--gpu] [--install]`: download the pinned `onnxruntime` wheel
//!   (`--gpu`: `onnxruntime-gpu`, with its CUDA provider libraries) with pip, verify its sha256,
//!   unpack the library into `<target>/onnxruntime/` (`onnxruntime-gpu/`), and with `--install`
//!   into `$EASEL_HOME/runtime/`, where the daemon finds it.
//! - `cargo xtask bench --sdxl`: SDXL at its real shape (see `bench/sdxl.rs`).
//! - `cargo xtask bench [--quick] [--threads N]`: easel beside a bare ONNX Runtime session and
//!   optimum's pipeline on a full-size SD 1.5-architecture model, into `BENCHMARKS.md` (see
//!   `bench.rs`).
//! - `cargo xtask dist [--bins DIR] [--ort PATH] [--stage DIR]`: the release tarball
//!   (`<target>/dist/easel-<version>-<arch>-<os>.tar.gz`): release binaries, the pinned ONNX
//!   Runtime, completions and man pages generated from the clap definitions, the systemd
//!   units, the LaunchAgent, install.sh, README and licences (see `dist.rs`).
//! - `cargo xtask samples`: regenerate `docs/tiny-shapes-samples.png`, the README's grid of
//!   pictures drawn by easel with the built-in model.
//! - `cargo xtask tray-screenshot`: regenerate `docs/tray.png`, the tray icon and its open menu
//!   in a real tray host under Xvfb (see `tray_screenshot.rs`).
//!
//! `<target>` is cargo's target folder as `cargo metadata` reports it, so `CARGO_TARGET_DIR`
//! and `build.target-dir` are respected.

mod bench;
mod dist;
mod tray_screenshot;

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

/// The README's sample grid: captions drawn by the built-in model, one seed each.
const SAMPLE_PROMPTS: [&str; 8] = [
    "a red circle on a blue background",
    "a yellow triangle on a purple background",
    "a white square on a black background",
    "a green circle on an orange background",
    "a blue square on a yellow background",
    "a purple triangle on a green background",
    "an orange circle on a white background",
    "a black triangle on a red background",
];

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
        Some("samples") => samples(&root),
        Some("test") => test(&root),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("dist") => dist::dist(&root, &args[1..]),
        Some("tray-screenshot") => tray_screenshot::tray_screenshot(&root),
        Some("fetch-ort") => {
            let gpu = args.iter().any(|a| a == "--gpu");
            let files = fetch_wheel(&root, if gpu { &ORT_GPU } else { &ORT_CPU })?;
            if args.iter().any(|a| a == "--install") {
                // The GPU build's providers go beside its library, where it loads them from.
                let dir = easel_home().join("runtime");
                std::fs::create_dir_all(&dir)?;
                for file in &files {
                    let target = dir.join(file.file_name().expect("library file name"));
                    std::fs::copy(file, &target).with_context(|| format!("copying to {}", target.display()))?;
                }
                println!(
                    "{}",
                    dir.join(files[0].file_name().expect("library file name")).display()
                );
            } else {
                println!("{}", files[0].display());
            }
            if gpu {
                eprintln!(
                    "xtask: the CUDA provider also needs CUDA 13 and cuDNN 9 (the system's, or `pip install \
                     nvidia-cuda-runtime~=13.0 nvidia-cublas~=13.0 nvidia-curand~=10.0 nvidia-cufft~=12.0 \
                     nvidia-cuda-nvrtc~=13.0 nvidia-cudnn-cu13~=9.0`) and an easeld built with `--features cuda`"
                );
            }
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <demo | test | bench [--quick | --sdxl] [--threads N] | samples | fetch-ort [--gpu] [--install] | dist [--bins DIR] [--ort PATH] [--stage DIR] | tray-screenshot>"
            );
            std::process::exit(2);
        }
    }
}

/// Cargo's target folder for this workspace (`CARGO_TARGET_DIR`, `build.target-dir` or
/// `./target`), as `cargo metadata` reports it.
fn target_dir(root: &Path) -> Result<PathBuf> {
    let output = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed ({})", output.status);
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata reports no target_directory")?;
    Ok(PathBuf::from(target))
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
/// A pinned wheel and the files easel takes from it.
struct Wheel {
    package: &'static str,
    file: &'static str,
    sha256: &'static str,
    /// Paths inside the wheel; the first is the ONNX Runtime library.
    members: &'static [&'static str],
    /// Under the target folder.
    out: &'static str,
}

const ORT_CPU: Wheel = Wheel {
    package: "onnxruntime",
    file: ORT_WHEEL,
    sha256: ORT_WHEEL_SHA256,
    members: &[ORT_LIBRARY_IN_WHEEL],
    out: "onnxruntime",
};

/// onnxruntime-gpu: the same library built with the CUDA provider (CUDA 13, cuDNN 9), which
/// it loads from the two provider libraries beside it.
const ORT_GPU: Wheel = Wheel {
    package: "onnxruntime-gpu",
    file: "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6",
    members: &[
        ORT_LIBRARY_IN_WHEEL,
        "onnxruntime/capi/libonnxruntime_providers_shared.so",
        "onnxruntime/capi/libonnxruntime_providers_cuda.so",
    ],
    out: "onnxruntime-gpu",
};

/// The pinned CPU library, fetched once into `<target>/onnxruntime/`.
fn fetch_ort(root: &Path) -> Result<PathBuf> {
    Ok(fetch_wheel(root, &ORT_CPU)?.remove(0))
}

/// Downloads `wheel` with pip (unless cached with the right sha256), checks it and unpacks its
/// members into `<target>/<out>/`; returns their paths, the library first.
fn fetch_wheel(root: &Path, wheel: &Wheel) -> Result<Vec<PathBuf>> {
    let target = target_dir(root)?;
    let out_dir = target.join(wheel.out);
    let outputs: Vec<PathBuf> = wheel
        .members
        .iter()
        .map(|member| out_dir.join(Path::new(member).file_name().expect("a file name")))
        .collect();
    if outputs.iter().all(|p| p.is_file()) {
        return Ok(outputs);
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!(
            "the pinned wheel is for Linux x86_64; on this platform install ONNX Runtime {ORT_VERSION} yourself and set ORT_DYLIB_PATH to its library"
        );
    }
    let cache = target.join("ort-wheel");
    std::fs::create_dir_all(&cache)?;
    let path = cache.join(wheel.file);
    if !path.is_file() || sha256_of(&path)? != wheel.sha256 {
        let mut pip = Command::new(system_python()?);
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
        .arg(format!("{}=={ORT_VERSION}", wheel.package));
        status(pip, &format!("pip download {}=={ORT_VERSION}", wheel.package))?;
    }
    let digest = sha256_of(&path)?;
    if digest != wheel.sha256 {
        std::fs::remove_file(&path).ok();
        bail!(
            "{} has sha256 {digest}, expected {}; the download was corrupted or tampered with, run again",
            path.display(),
            wheel.sha256
        );
    }
    unpack(&path, wheel.members, &out_dir)?;
    eprintln!(
        "xtask: ONNX Runtime {ORT_VERSION} ({}) is at {}",
        wheel.package,
        outputs[0].display()
    );
    Ok(outputs)
}

/// Unpacks `members` of the zip at `archive` into `out_dir` by their file names, each through a
/// temporary name and a rename (a cut-off run leaves no half-written library).
fn unpack(archive: &Path, members: &[&str], out_dir: &Path) -> Result<()> {
    let file = std::fs::File::open(archive)?;
    let mut zip = zip::ZipArchive::new(file).context("reading the wheel")?;
    std::fs::create_dir_all(out_dir)?;
    for member in members {
        let mut entry = zip
            .by_name(member)
            .with_context(|| format!("{member} is not in the wheel"))?;
        let name = Path::new(member).file_name().expect("a file name");
        let partial = out_dir.join(".partial");
        let mut out = std::fs::File::create(&partial)?;
        std::io::copy(&mut entry, &mut out)?;
        drop(out);
        std::fs::rename(&partial, out_dir.join(name))?;
    }
    Ok(())
}

/// The system's Python 3.
fn system_python() -> Result<&'static str> {
    ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("Python 3 with pip is needed (for the ONNX Runtime wheel and the real-client tests); install python3 and pip")
}

/// The virtual environment the real-client tests run (stock grpcio, the `openai` and
/// `webuiapi` packages, easel's own Python client): `<target>/py-test`, with
/// `tests/python/requirements.txt` installed (again when that file changes) and
/// `clients/python` reinstalled on every run, so it never lags the code or the proto.
/// Returns its Python.
fn test_python(root: &Path) -> Result<PathBuf> {
    let venv = target_dir(root)?.join("py-test");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/python/requirements.txt");
    let wanted = std::fs::read(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("installed-requirements.txt");
    if !(python.is_file() && std::fs::read(&stamp).is_ok_and(|installed| installed == wanted)) {
        let mut create = Command::new(system_python()?);
        create.args(["-m", "venv", "--clear"]).arg(&venv);
        status(create, "python3 -m venv (for the real-client tests)")?;
        let mut install = Command::new(&python);
        install
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements);
        status(install, "pip install -r tests/python/requirements.txt")?;
        std::fs::write(&stamp, wanted)?;
    }
    // Its dependencies are pinned above (--no-deps keeps pip from choosing others); its build
    // generates the gRPC stubs from proto/.
    let mut client = Command::new(&python);
    client
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--force-reinstall",
        ])
        .arg(root.join("clients/python"));
    status(client, "pip install clients/python (easel's Python client)")?;
    Ok(python)
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn test(root: &Path) -> Result<()> {
    let library = fetch_ort(root)?;
    let python = test_python(root)?;
    let mut fmt = cargo();
    fmt.current_dir(root).args(["fmt", "--all", "--check"]);
    status(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy
        .current_dir(root)
        .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    status(clippy, "cargo clippy")?;
    // The GPU build compiles and its device checks hold here too (no GPU needed: the CUDA
    // libraries' lookup runs on a fake wheel layout).
    let mut clippy_cuda = cargo();
    clippy_cuda.current_dir(root).args([
        "clippy",
        "-p",
        "easeld",
        "--features",
        "cuda",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]);
    status(clippy_cuda, "cargo clippy -p easeld --features cuda")?;
    let mut device_tests = cargo();
    device_tests
        .current_dir(root)
        .args(["test", "-p", "easeld", "--features", "cuda", "--lib", "model::device"]);
    status(device_tests, "cargo test -p easeld --features cuda (the device checks)")?;
    macos_check(root)?;
    // The end-to-end tests run the real binaries: build them first.
    let mut build = cargo();
    build.current_dir(root).args(["build", "--workspace", "--bins"]);
    status(build, "cargo build --bins")?;
    let mut tests = cargo();
    tests
        .current_dir(root)
        .args(["test", "--workspace"])
        .env("ORT_DYLIB_PATH", &library)
        .env("EASEL_TEST_PYTHON", &python);
    status(tests, "cargo test --workspace")
}

/// The tray's macOS face compiles and is clippy-clean for macOS (no Mac needed: `cargo
/// clippy` type-checks without linking). The target's standard library comes from rustup;
/// where it cannot be installed (no rustup, no network), the check says so and is skipped,
/// since the Linux build and every test do not depend on it.
fn macos_check(root: &Path) -> Result<()> {
    const TARGET: &str = "x86_64-apple-darwin";
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !added.is_ok_and(|s| s.success()) {
        eprintln!("xtask: skipping the tray's macOS check: `rustup target add {TARGET}` failed");
        return Ok(());
    }
    let mut clippy = cargo();
    clippy.current_dir(root).args([
        "clippy",
        "-p",
        "easel-tray",
        "--target",
        TARGET,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(
        clippy,
        "cargo clippy -p easel-tray --target x86_64-apple-darwin (the macOS menu bar)",
    )
}

/// A release daemon on a private socket under `<target>/`, stopped when dropped.
struct DemoDaemon {
    child: std::process::Child,
    bin: PathBuf,
    envs: Vec<(&'static str, std::ffi::OsString)>,
    socket: PathBuf,
}

impl DemoDaemon {
    fn start(root: &Path, name: &str) -> Result<Self> {
        Self::start_with(root, name, &[])
    }

    /// Like `start`, with more environment for the daemon (threads, keep-alive, …).
    fn start_with(root: &Path, name: &str, extra: &[(&str, String)]) -> Result<Self> {
        let library = fetch_ort(root)?;
        let mut build = cargo();
        build
            .current_dir(root)
            .args(["build", "--release", "-p", "easeld", "-p", "easel"]);
        status(build, "cargo build --release")?;
        let target = target_dir(root)?;
        let bin = target.join("release");
        let work = target.join(name);
        std::fs::create_dir_all(&work)?;
        let socket = work.join("easeld.sock");
        let envs = vec![
            ("ORT_DYLIB_PATH", library.into_os_string()),
            ("EASEL_SOCKET", socket.clone().into_os_string()),
            // A data folder of its own: the built-in model unpacks here, nothing touches ~/.
            ("EASEL_HOME", work.join("home").into_os_string()),
        ];
        eprintln!("xtask: starting easeld on {}", socket.display());
        let mut child = Command::new(bin.join("easeld"))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting easeld")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(exit) = child.try_wait()? {
                bail!("easeld exited before it was ready ({exit})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("easeld did not create its socket within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            bin,
            envs,
            socket,
        })
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn easel(&self) -> Command {
        let mut command = Command::new(self.bin.join("easel"));
        command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("--no-autostart");
        command
    }

    fn stop(mut self) -> Result<()> {
        let mut stop = self.easel();
        stop.args(["daemon", "stop"]);
        let stopped = status(stop, "easel daemon stop");
        let _ = self.child.wait();
        stopped
    }
}

fn demo(root: &Path) -> Result<()> {
    let daemon = DemoDaemon::start(root, "demo")?;
    let output = target_dir(root)?.join("demo/demo.png");
    let mut generate = daemon.easel();
    // No --model: the built-in tiny-shapes model is the default.
    generate
        .args([
            "generate",
            "a red circle on a blue background",
            "--seed",
            "42",
            "--output",
        ])
        .arg(&output);
    let generated = status(generate, "easel generate");
    let stopped = daemon.stop();
    generated?;
    stopped?;
    println!("{}", output.display());
    Ok(())
}

fn samples(root: &Path) -> Result<()> {
    let daemon = DemoDaemon::start(root, "samples")?;
    let work = target_dir(root)?.join("samples");
    let mut tiles = Vec::new();
    let mut result = Ok(());
    for (i, prompt) in SAMPLE_PROMPTS.iter().enumerate() {
        let path = work.join(format!("{i}.png"));
        let mut generate = daemon.easel();
        generate
            .args([
                "generate",
                prompt,
                "--seed",
                &(i + 1).to_string(),
                "--no-progress",
                "--output",
            ])
            .arg(&path);
        if let Err(e) = status(generate, &format!("easel generate {prompt:?}")) {
            result = Err(e);
            break;
        }
        tiles.push(path);
    }
    daemon.stop()?;
    result?;
    let out = root.join("docs/tiny-shapes-samples.png");
    std::fs::create_dir_all(out.parent().expect("docs folder"))?;
    write_grid(&tiles, 4, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// Lays equally sized RGB PNGs out in rows of `columns`.
fn write_grid(tiles: &[PathBuf], columns: usize, out: &Path) -> Result<()> {
    let mut images = Vec::new();
    for tile in tiles {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(tile)?));
        let mut reader = decoder.read_info()?;
        let mut buf = vec![0; reader.output_buffer_size().context("PNG size")?];
        let info = reader.next_frame(&mut buf)?;
        if info.color_type != png::ColorType::Rgb {
            bail!("{} is not an RGB PNG", tile.display());
        }
        buf.truncate(info.buffer_size());
        images.push((info.width as usize, info.height as usize, buf));
    }
    let (w, h) = (images[0].0, images[0].1);
    let rows = images.len().div_ceil(columns);
    let (width, height) = (w * columns, h * rows);
    let mut canvas = vec![255u8; width * height * 3];
    for (i, (tw, th, pixels)) in images.iter().enumerate() {
        if (*tw, *th) != (w, h) {
            bail!("sample tiles differ in size");
        }
        let (x0, y0) = ((i % columns) * w, (i / columns) * h);
        for y in 0..h {
            let src = &pixels[y * w * 3..(y + 1) * w * 3];
            let start = ((y0 + y) * width + x0) * 3;
            canvas[start..start + w * 3].copy_from_slice(src);
        }
    }
    let file = std::fs::File::create(out)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.add_text_chunk("Software".into(), "easel (cargo xtask samples)".into())?;
    encoder.write_header()?.write_image_data(&canvas)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_wheels_members_are_unpacked_by_file_name_and_a_missing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("easel-xtask-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("w.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        for (name, body) in [("pkg/capi/liba.so", b"a"), ("pkg/capi/libb.so", b"b")] {
            zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap();
        let out = dir.join("out");
        unpack(&wheel, &["pkg/capi/liba.so", "pkg/capi/libb.so"], &out).unwrap();
        assert_eq!(std::fs::read(out.join("liba.so")).unwrap(), b"a");
        assert_eq!(std::fs::read(out.join("libb.so")).unwrap(), b"b");
        assert!(!out.join(".partial").exists());
        let error = unpack(&wheel, &["pkg/capi/libc.so"], &out).unwrap_err();
        assert!(error.to_string().contains("libc.so is not in the wheel"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_gpu_wheel_brings_its_providers_beside_the_library() {
        assert_eq!(ORT_GPU.members[0], ORT_CPU.members[0], "the same library file name");
        for provider in ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"] {
            assert!(ORT_GPU.members.iter().any(|m| m.ends_with(provider)), "{provider}");
        }
    }
}
