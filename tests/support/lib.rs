//! Harness for the end-to-end tests: a real `easeld` on a temp socket with a temp
//! `EASEL_HOME`, and the real `easel` CLI pointed at it.
//!
//! The binaries come from the same target folder as the test executable (`cargo xtask test`
//! builds them first). ONNX Runtime comes from `ORT_DYLIB_PATH` or `cargo xtask fetch-ort`'s
//! folder; missing, the tests fail with a message saying how to get it.

pub mod desktop;
pub mod gateway;
pub mod hub;
pub mod python;
pub mod request;
pub mod shapes;

pub use gateway::{Gateway, HttpResponse, http};
pub use python::{python_script, script_json, test_python};
pub use request::{GenerateRequestBuilder, generate};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use easel_proto::v1::easel_client::EaselClient;
use tonic::transport::Channel;

/// `target/debug` (or whichever profile built the tests).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-HASH → target/debug
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, done by `cargo xtask test`)",
        path.display()
    );
    path
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

pub fn fixture_model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// The ONNX Runtime library for the daemon under test.
pub fn ort_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let fetched = repo_root().join("target/onnxruntime/libonnxruntime.so.1.31.1");
    assert!(
        fetched.is_file(),
        "ONNX Runtime is missing: run `cargo xtask fetch-ort` (or set ORT_DYLIB_PATH)"
    );
    fetched
}

/// A daemon under test. Dropping it stops the daemon (SIGTERM, then SIGKILL).
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub home: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `easeld` and waits until it answers `GetStatus`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/easeld.sock");
        let home = dir.path().join("home");
        let log = dir.path().join("easeld.log");
        let mut daemon = Self {
            dir,
            socket,
            home,
            child: None,
            log,
        };
        daemon.spawn(env);
        daemon.wait_ready();
        daemon
    }

    /// Environment for a process that talks to (or is) this daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("EASEL_SOCKET".into(), self.socket.display().to_string()),
            ("EASEL_HOME".into(), self.home.display().to_string()),
            ("ORT_DYLIB_PATH".into(), ort_library().display().to_string()),
            (
                "EASEL_CONFIG".into(),
                self.dir.path().join("config.toml").display().to_string(),
            ),
            ("EASEL_DAEMON_BIN".into(), bin("easeld").display().to_string()),
            ("RUST_LOG".into(), "info".into()),
            // Tests run side by side on few cores: one ONNX thread per session each.
            ("EASEL_THREADS".into(), "1".into()),
        ]
    }

    pub fn spawn(&mut self, extra: &[(&str, &str)]) {
        let log = std::fs::File::create(&self.log).expect("daemon log");
        let child = Command::new(bin("easeld"))
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start easeld");
        self.child = Some(child);
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("easeld exited early ({status}); log:\n{}", self.log_text());
            }
            if self.socket.exists() && self.easel(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "easeld was not ready within 60 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the CLI against this daemon (never auto-starting another).
    pub fn easel(&self, args: &[&str]) -> Output {
        self.easel_command(args).output().expect("run easel")
    }

    /// `easel generate PROMPT` on the sd1-tiny fixture, quietly, into `out`, with `extra` flags.
    pub fn generate_tiny(&self, prompt: &str, extra: &[&str], out: &Path) -> Output {
        let model = fixture_model("sd1-tiny");
        self.generate_with(model.to_str().expect("UTF-8 path"), prompt, extra, out)
    }

    /// `easel generate PROMPT --model MODEL`, quietly, into `out`, with `extra` flags.
    pub fn generate_with(&self, model: &str, prompt: &str, extra: &[&str], out: &Path) -> Output {
        let mut args = vec!["generate", prompt, "--model", model, "--no-progress"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out.to_str().expect("UTF-8 path")]);
        self.easel(&args)
    }

    pub fn easel_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("easel"));
        command
            .envs(self.env())
            .arg("--no-autostart")
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// A gRPC client on the daemon's socket.
    pub async fn client(&self) -> EaselClient<Channel> {
        easel_client::connect(&self.socket)
            .await
            .expect("connect to the daemon")
    }

    /// A raw channel on the daemon's socket, for the standard services (health, reflection).
    pub async fn channel(&self) -> Channel {
        self.channel_with(|endpoint| endpoint).await
    }

    /// A raw channel with the endpoint's settings changed by `configure` (e.g. HTTP/2 windows).
    pub async fn channel_with(
        &self,
        configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    ) -> Channel {
        let path = self.socket.clone();
        configure(tonic::transport::Endpoint::from_static("http://[::]:50051"))
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .expect("connect to the daemon")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon is running").id()
    }

    /// Kills the daemon with SIGKILL (no shutdown, no cleanup) and waits until it is gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon is running");
        child.kill().expect("SIGKILL easeld");
        child.wait().expect("wait for easeld");
    }

    /// The daemon's resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for easeld") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("easeld did not stop within 30 s of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

/// Decodes an RGB PNG: (width, height, pixels).
pub fn read_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Reads a Generate stream until the job's first step; returns the job id. The job is then
/// running (and, for a very long one, will be until it is cancelled).
pub async fn wait_for_progress(stream: &mut tonic::Streaming<easel_proto::v1::GenerateEvent>) -> String {
    use easel_proto::v1::generate_event::Event;
    use futures::StreamExt;
    let mut job_id = String::new();
    while let Some(event) = stream.next().await {
        match event.expect("no error before the first step").event {
            Some(Event::Queued(q)) => job_id = q.job_id,
            Some(Event::Progress(_)) => return job_id,
            _ => {}
        }
    }
    panic!("the stream ended before any progress");
}

/// Writes an 8-bit PNG: RGB (3 bytes a pixel) or greyscale (1 byte), row-major.
pub fn write_png(path: &Path, width: u32, height: u32, pixels: &[u8]) {
    let colour = if pixels.len() == (width * height * 3) as usize {
        png::ColorType::Rgb
    } else {
        assert_eq!(pixels.len(), (width * height) as usize, "RGB or greyscale pixels");
        png::ColorType::Grayscale
    };
    let file = std::io::BufWriter::new(std::fs::File::create(path).expect("create the PNG"));
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(pixels).expect("PNG data");
}

/// The text chunks of a PNG (tEXt and iTXt), as (keyword, text).
pub fn png_text(bytes: &[u8]) -> Vec<(String, String)> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    reader.next_frame(&mut buf).expect("PNG data");
    let info = reader.info();
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    text.extend(
        info.utf8_text
            .iter()
            .map(|t| (t.keyword.clone(), t.get_text().unwrap_or_default())),
    );
    text
}

/// Mean and max absolute difference of two byte images.
pub fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len(), "images differ in size");
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    (sum as f64 / a.len() as f64, max)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every file under `root` as its '/'-separated path relative to `root` and its full path,
/// sorted by the relative path; empty when `root` does not exist. Links are not followed.
pub fn files_under(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("a folder entry");
            if entry.file_type().expect("its type").is_dir() {
                folders.push(entry.path());
                continue;
            }
            let relative = entry
                .path()
                .strip_prefix(root)
                .expect("inside the root")
                .components()
                .map(|part| part.as_os_str().to_str().expect("UTF-8 file names").to_string())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, entry.path()));
        }
    }
    out.sort();
    out
}

/// Copies every file under `from` to the same place under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for (relative, source) in files_under(from) {
        let target = to.join(&relative);
        std::fs::create_dir_all(target.parent().expect("a parent")).unwrap();
        std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    }
}
