//! The release layout and `install.sh`: `cargo xtask dist --stage` lays the tarball's folder
//! out from the debug binaries, install.sh installs it into a temporary home (the default
//! prefix) and into a `--prefix`, the installed programs run and the daemon finds the ONNX
//! Runtime it installed, `systemd-analyze verify` passes the installed units, and `--uninstall`
//! leaves nothing behind. Also the LaunchAgent plist, parsed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use easel_e2e::*;

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A home, config and runtime folder of their own, so nothing reaches the real user's, and no
/// user service manager (install.sh only talks to one that answers).
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.path().join("run"))
            .unwrap();
        Self { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("TMPDIR", self.path("tmp"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }
}

fn stage(sandbox: &Sandbox) -> PathBuf {
    let stage = sandbox.path("stage");
    let output = Command::new(bin("xtask"))
        .args(["dist", "--bins"])
        .arg(bin_dir())
        .arg("--ort")
        .arg(ort_library())
        .arg("--stage")
        .arg(&stage)
        .output()
        .unwrap();
    assert!(output.status.success(), "cargo xtask dist --stage: {}", text(&output));
    stage
}

/// `systemd-analyze verify --user` on the installed units, as the sandbox's user.
fn verify_units(sandbox: &Sandbox, units: &Path) {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.is_file(),
        "systemd-analyze is missing: install systemd (`apt-get install systemd`; .ci/run does)"
    );
    let output = sandbox
        .command(analyze)
        .args(["verify", "--user"])
        .args(["easeld.socket", "easeld.service", "easel-gateway.service"].map(|unit| units.join(unit)))
        .output()
        .unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&output)
    );
}

/// The installed daemon, with no ORT_DYLIB_PATH, finds the library the install put beside it.
fn installed_daemon_finds_its_runtime(sandbox: &Sandbox, prefix: &Path) {
    let socket = sandbox.path("run/test.sock");
    let env = [
        ("EASEL_SOCKET", socket.clone()),
        ("EASEL_HOME", sandbox.path("easel-home")),
        ("EASEL_CONFIG", sandbox.path("no-config.toml")),
    ];
    let log = std::fs::File::create(sandbox.path("easeld.log")).unwrap();
    let mut daemon = sandbox
        .command(prefix.join("bin/easeld"))
        .envs(env.clone())
        .env_remove("ORT_DYLIB_PATH")
        .env("EASEL_THREADS", "1")
        // ONNX Runtime keeps a telemetry id under ~/.cache: not in the home the install checks.
        .env("HOME", sandbox.path("daemon-home"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let easel = prefix.join("bin/easel");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(exit) = daemon.try_wait().unwrap() {
            panic!(
                "the installed easeld exited ({exit}): {}",
                std::fs::read_to_string(sandbox.path("easeld.log")).unwrap_or_default()
            );
        }
        let output = sandbox
            .command(&easel)
            .envs(env.clone())
            .args(["--no-autostart", "status", "--json"])
            .output()
            .unwrap();
        if output.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "the installed easeld never answered");
        std::thread::sleep(Duration::from_millis(50));
    };
    let library = status["onnxruntime_library"].as_str().unwrap().to_string();
    assert!(
        Path::new(&library).starts_with(prefix.join("lib/easel")),
        "{library} is not the installed library"
    );
    let stop = sandbox
        .command(&easel)
        .envs(env)
        .args(["--no-autostart", "daemon", "stop"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", text(&stop));
    daemon.wait().unwrap();
    std::fs::remove_file(sandbox.path("easeld.log")).unwrap();
}

fn check_installed(sandbox: &Sandbox, prefix: &Path) {
    for (file, executable) in [
        ("bin/easel", true),
        ("bin/easeld", true),
        ("lib/easel/libonnxruntime.so.1.31.1", false),
        ("share/bash-completion/completions/easel", false),
        ("share/bash-completion/completions/easeld", false),
        ("share/zsh/site-functions/_easel", false),
        ("share/fish/vendor_completions.d/easel.fish", false),
        ("share/man/man1/easel.1", false),
        ("share/man/man1/easel-generate.1", false),
        ("share/man/man1/easeld.1", false),
        ("share/doc/easel/README.md", false),
        ("share/doc/easel/LICENSE-MIT", false),
        ("share/easel/install.sh", true),
        ("share/easel/install-manifest", false),
    ] {
        let path = prefix.join(file);
        let metadata = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(metadata.len() > 0, "{} is empty", path.display());
        assert_eq!(
            metadata.permissions().mode() & 0o111 != 0,
            executable,
            "{} mode {:o}",
            path.display(),
            metadata.permissions().mode()
        );
    }
    for binary in ["easel", "easeld"] {
        let output = sandbox.run(prefix.join("bin").join(binary), &["--version"]);
        assert!(output.status.success(), "{binary} --version: {}", text(&output));
        assert!(text(&output).contains(env!("CARGO_PKG_VERSION")), "{}", text(&output));
    }
}

#[test]
fn install_sh_installs_and_uninstalls_without_a_trace() {
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.path("tmp")).unwrap();
    let stage = stage(&sandbox);
    let script = stage.join("install.sh");
    // What an install touches: the home, the config folder, the other prefix, the temp folder.
    let nothing_left = || {
        assert_eq!(tree(&sandbox.path("home")), Vec::<String>::new(), "left in the home");
        // Only install.sh's own temporary files count (other programs the test runs use TMPDIR).
        let temporary = tree(&sandbox.path("tmp"));
        assert!(
            !temporary.iter().any(|f| f.starts_with("easel-")),
            "left in TMPDIR: {temporary:?}"
        );
        assert!(!sandbox.path("config").exists(), "the config folder it created is gone");
        assert!(!sandbox.path("opt").exists(), "the prefix it created is gone");
    };

    // The default prefix: ~/.local, the units as shipped (%h/.local/bin/easeld).
    let output = sandbox.run("sh", &[script.to_str().unwrap()]);
    assert!(output.status.success(), "install.sh: {}", text(&output));
    let prefix = sandbox.path("home/.local");
    check_installed(&sandbox, &prefix);
    let units = sandbox.path("config/systemd/user");
    let service = std::fs::read_to_string(units.join("easeld.service")).unwrap();
    assert!(service.contains("ExecStart=%h/.local/bin/easeld"), "{service}");
    verify_units(&sandbox, &units);
    installed_daemon_finds_its_runtime(&sandbox, &prefix);
    let uninstall = prefix.join("share/easel/install.sh");
    let output = sandbox.run("sh", &[uninstall.to_str().unwrap(), "--uninstall"]);
    assert!(output.status.success(), "install.sh --uninstall: {}", text(&output));
    nothing_left();

    // Another prefix: the units name it instead.
    let other = sandbox.path("opt/easel");
    let output = sandbox.run("sh", &[script.to_str().unwrap(), "--prefix", other.to_str().unwrap()]);
    assert!(output.status.success(), "install.sh --prefix: {}", text(&output));
    check_installed(&sandbox, &other);
    let service = std::fs::read_to_string(units.join("easeld.service")).unwrap();
    assert!(
        service.contains(&format!("ExecStart={}/bin/easeld", other.display())),
        "{service}"
    );
    verify_units(&sandbox, &units);
    // Installing again replaces the first install rather than piling up.
    let output = sandbox.run("sh", &[script.to_str().unwrap(), "--prefix", other.to_str().unwrap()]);
    assert!(output.status.success(), "install.sh again: {}", text(&output));
    let output = sandbox.run(
        "sh",
        &[
            script.to_str().unwrap(),
            "--uninstall",
            "--prefix",
            other.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "install.sh --uninstall --prefix: {}",
        text(&output)
    );
    nothing_left();

    // Nothing to uninstall is an error that says which prefix to give.
    let output = sandbox.run("sh", &[script.to_str().unwrap(), "--uninstall"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--prefix"), "{}", text(&output));
}

#[test]
fn a_truncated_install_script_does_nothing() {
    let sandbox = Sandbox::new();
    let script = std::fs::read(repo_root().join("packaging/install.sh")).unwrap();
    let prefix = sandbox.path("prefix");
    // Cut anywhere, even right before the last line's `main "$@"` runs.
    for cut in [script.len() / 3, script.len() / 2, script.len() - 10] {
        let partial = sandbox.path("partial.sh");
        std::fs::write(&partial, &script[..cut]).unwrap();
        let _ = sandbox.run("sh", &[partial.to_str().unwrap(), "--prefix", prefix.to_str().unwrap()]);
        assert!(!prefix.exists(), "a script cut at byte {cut} installed something");
        assert!(tree(&sandbox.path("home")).is_empty() && !sandbox.path("config").exists());
    }
}

#[test]
fn the_launch_agent_runs_the_installed_daemon() {
    let path = repo_root().join("packaging/macos/org.easel.easeld.plist");
    let agent: plist::Dictionary = plist::from_file(&path).unwrap();
    assert_eq!(agent["Label"].as_string(), Some("org.easel.easeld"));
    let arguments: Vec<&str> = agent["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(arguments[..2], ["/bin/sh", "-c"]);
    // install.sh rewrites this path for another prefix: keep them in step.
    assert!(
        arguments[2].contains("exec \"$HOME/.local/bin/easeld\""),
        "{arguments:?}"
    );
    assert_eq!(agent["RunAtLoad"].as_boolean(), Some(true));
    let keep_alive = agent["KeepAlive"].as_dictionary().unwrap();
    assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
}
