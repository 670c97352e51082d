//! The daemon as a process: socket rules, one daemon per socket, shutdown, standard gRPC
//! services, privacy, auto-start and a missing ONNX Runtime.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn socket_is_private_and_one_daemon_serves_it() {
    let daemon = Daemon::start();
    assert_eq!(mode(&daemon.socket), 0o600, "socket mode");
    assert_eq!(mode(daemon.socket.parent().unwrap()), 0o700, "socket folder mode");

    let second = Command::new(bin("easeld"))
        .envs(daemon.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second daemon on the same socket must fail");
    assert!(stderr(&second).contains("already serving"), "{}", stderr(&second));
    let status = daemon.easel(&["status", "--json"]);
    assert!(
        status.status.success(),
        "the first daemon keeps serving: {}",
        stderr(&status)
    );
    let json: serde_json::Value = serde_json::from_str(stdout(&status).trim()).unwrap();
    assert_eq!(json["pid"], daemon.child.as_ref().unwrap().id());
}

#[test]
fn a_stale_socket_is_cleaned_up() {
    let mut daemon = Daemon::start();
    daemon.terminate();
    // Leave a dead socket behind, as a crashed daemon would.
    let listener = std::os::unix::net::UnixListener::bind(&daemon.socket).unwrap();
    drop(listener);
    assert!(daemon.socket.exists());
    daemon.spawn(&[]);
    daemon.wait_ready();
}

#[test]
fn sigterm_and_shutdown_are_graceful() {
    let mut daemon = Daemon::start();
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    assert!(!daemon.socket.exists(), "the socket is removed");

    daemon.spawn(&[]);
    daemon.wait_ready();
    let output = daemon.easel(&["daemon", "stop"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let exit = daemon.child.take().unwrap().wait().unwrap();
    assert!(exit.success(), "Shutdown exits cleanly: {exit}");
    assert!(!daemon.socket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_running_jobs_with_unavailable() {
    let mut daemon = Daemon::start_with(&[("EASEL_MAX_STEPS", "100000")]);
    let mut client = daemon.client().await;
    let request = GenerateRequestBuilder::new("long")
        .fixture("sd1-tiny")
        .steps(50_000)
        .size(256, 256)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    while let Some(event) = stream.next().await {
        if matches!(event.unwrap().event, Some(pb::generate_event::Event::Progress(_))) {
            break;
        }
    }
    let child = daemon.child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ended = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(daemon.terminate().success());
}

#[test]
fn another_user_is_refused_even_with_open_modes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching to another uid needs root");
        return;
    }
    let daemon = Daemon::start();
    let folder = daemon.socket.parent().unwrap();
    // Open every door on the way: the peer-uid check must still say no.
    for path in [daemon.dir.path(), folder, daemon.socket.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let output = daemon
        .easel_command(&["status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!output.status.success(), "uid 65534 got an answer: {}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("permission denied") && message.contains("belongs to uid 0"),
        "the CLI says why, not that the connection was lost: {message}"
    );
    // A client that does not look first (any gRPC library) is closed on by the daemon itself.
    // The daemon may close before the preface is even sent: a reset or a broken pipe is a no too.
    let probe = "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.connect(sys.argv[1])\n\
                 s.settimeout(20)\n\
                 try:\n    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n    data = s.recv(100)\n\
                 except (BrokenPipeError, ConnectionResetError):\n    data = b''\n\
                 print('closed' if data == b'' else 'answered')\n";
    let output = Command::new("python3")
        .args(["-c", probe])
        .arg(&daemon.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(stdout(&output).trim(), "closed", "{}", stderr(&output));
    assert!(
        daemon.log_text().contains("refused a connection from another user"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.easel(&["status"]).status.success(), "the owner is still served");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer() {
    let daemon = Daemon::start();
    let channel = daemon.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "easel.v1.Easel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"easel.v1.Easel".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

/// ONNX Runtime's official builds write a device id and a telemetry queue under
/// `~/.cache/Microsoft/` when the library loads, unless `ORT_DISABLE_TELEMETRY=1` is set before;
/// the daemon sets it itself, whatever its environment says.
#[test]
fn onnx_runtime_telemetry_writes_nothing_into_the_home() {
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().display().to_string();
    let cache = home.path().join(".cache").display().to_string();
    let daemon = Daemon::start_with(&[
        ("HOME", &home_text),
        ("XDG_CACHE_HOME", &cache),
        ("ORT_DISABLE_TELEMETRY", "0"),
    ]);
    let out = daemon.dir.path().join("t.png");
    let output = daemon.generate_tiny("a boat", &["--steps", "2"], &out);
    assert!(output.status.success(), "{}", stderr(&output));
    drop(daemon);
    let written: Vec<String> = files_under(home.path())
        .into_iter()
        .map(|(relative, _)| relative)
        .collect();
    assert!(written.is_empty(), "the daemon wrote into its home: {written:?}");
}

#[test]
fn prompts_stay_out_of_the_log() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let output = daemon.generate_tiny(
        "zanzibar-privacy-canary",
        &["--negative", "quokka-negative-canary", "--steps", "2"],
        &out,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let log = daemon.log_text();
    assert!(log.contains("job finished"), "the job is logged: {log}");
    assert!(!log.contains("canary"), "the prompt leaked into the log:\n{log}");
}

#[test]
fn the_cli_starts_a_daemon_when_none_runs() {
    let mut daemon = Daemon::start();
    daemon.terminate();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("auto.png");
    let model = fixture_model("sd1-tiny");
    let output = Command::new(bin("easel"))
        .envs(daemon.env())
        .args([
            "generate",
            "a cat",
            "--model",
            model.to_str().unwrap(),
            "--steps",
            "2",
            "--no-progress",
            "-o",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(out.is_file());
    // Opting out: with no daemon running, a clear error instead of a start.
    let stop = daemon.easel(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    let refused = daemon.easel(&["status"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("not running"), "{}", stderr(&refused));
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin("easeld"))
        .env("EASEL_SOCKET", dir.path().join("s/easeld.sock"))
        .env("EASEL_HOME", dir.path().join("home"))
        .env("EASEL_CONFIG", dir.path().join("none.toml"))
        .env("ORT_DYLIB_PATH", dir.path().join("missing/libonnxruntime.so"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("ONNX Runtime library not found"), "{message}");
    assert!(message.contains("cargo xtask fetch-ort"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    assert!(!dir.path().join("s/easeld.sock").exists(), "no socket is left behind");
}

/// The `device` setting: a GPU asked for by name that cannot be used is a startup error naming
/// what is missing and how to fix it (never a silent CPU run); `auto` falls back to the CPU and
/// `easel status` says why; a bad value names the choices.
#[test]
fn a_gpu_that_cannot_be_used_is_a_startup_error_and_auto_says_why_it_runs_on_the_cpu() {
    let start_with = |device: &str, vram_budget: &str| {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(bin("easeld"))
            .env("EASEL_SOCKET", dir.path().join("s/easeld.sock"))
            .env("EASEL_HOME", dir.path().join("home"))
            .env("EASEL_CONFIG", dir.path().join("none.toml"))
            .env("ORT_DYLIB_PATH", ort_library())
            .env("EASEL_DEVICE", device)
            .env("EASEL_VRAM_BUDGET", vram_budget)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "easeld started with EASEL_DEVICE={device}");
        assert!(!dir.path().join("s/easeld.sock").exists(), "no socket is left behind");
        stderr(&output)
    };
    let start = |device: &str| start_with(device, "");
    let message = start("cuda:0");
    assert!(message.contains("asks for cuda:0"), "{message}");
    // This machine has no GPU: whatever the build, something is named with its fix.
    assert!(
        message.contains("--features cuda") || message.contains("was not found") || message.contains("fetch-ort --gpu"),
        "{message}"
    );
    assert!(message.contains("EASEL_DEVICE=cpu"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    let message = start("tpu");
    assert!(
        message.contains("EASEL_DEVICE=tpu") && message.contains("auto, cpu or cuda:N"),
        "{message}"
    );

    // A VRAM budget that is not a size is a startup error before any device is looked at.
    let message = start_with("cpu", "lots");
    assert!(
        message.contains("EASEL_VRAM_BUDGET") && message.contains("`lots` is not a size"),
        "{message}"
    );

    let daemon = Daemon::start_with(&[("EASEL_DEVICE", "auto"), ("EASEL_VRAM_BUDGET", "8GiB")]);
    let status = stdout(&daemon.easel(&["status"]));
    assert!(status.contains("device       cpu (auto: no usable GPU ("), "{status}");
    assert!(!status.contains("vram"), "no VRAM budget on the CPU: {status}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&daemon.easel(&["status", "--json"]))).unwrap();
    assert_eq!(json["device"], "cpu");
    assert!(json["device_note"].as_str().unwrap().starts_with("auto: "), "{json}");
    assert_eq!(json["vram_budget_bytes"], 0, "{json}");
    let ps: serde_json::Value = serde_json::from_str(&stdout(&daemon.easel(&["ps", "--json"]))).unwrap();
    assert_eq!(
        (ps["vram_budget_bytes"].as_u64(), ps["vram_used_bytes"].as_u64()),
        (Some(0), Some(0)),
        "{ps}"
    );
    let plain = Daemon::start_with(&[("EASEL_DEVICE", "cpu")]);
    let status = stdout(&plain.easel(&["status"]));
    assert!(status.lines().any(|line| line == "device       cpu"), "{status}");
}

/// The inodes of the internet (TCP/UDP/raw) sockets in the daemon's network namespace.
#[cfg(target_os = "linux")]
fn internet_socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(inode.to_string());
            }
        }
    }
    inodes
}

#[cfg(target_os = "linux")]
#[test]
fn the_daemon_opens_no_network_sockets() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n.png");
    let output = daemon.generate_tiny("a cat", &["--steps", "2"], &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let pid = daemon.child.as_ref().unwrap().id();
    let internet = internet_socket_inodes(pid);
    let mut sockets = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let Ok(target) = std::fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            sockets += 1;
            assert!(!internet.contains(inode), "easeld holds an internet socket ({target})");
        }
    }
    assert!(sockets >= 1, "the daemon's Unix socket should be visible");
}

#[test]
fn daemon_start_and_serve_run_the_daemon() {
    let mut daemon = Daemon::start();
    daemon.terminate();

    // `easel daemon start`: in the background; a second start finds it running.
    let started = daemon.easel(&["daemon", "start"]);
    assert!(started.status.success(), "{}", stderr(&started));
    assert!(daemon.easel(&["status"]).status.success(), "the started daemon answers");
    let again = daemon.easel(&["daemon", "start"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        format!("{}{}", stdout(&again), stderr(&again)).contains("already"),
        "{}",
        stderr(&again)
    );
    let stopped = daemon.easel(&["daemon", "stop"]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    assert!(!daemon.socket.exists());

    // `easel serve`: in the foreground, until SIGTERM.
    let mut serve = daemon
        .easel_command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !daemon.easel(&["status"]).status.success() {
        assert!(serve.try_wait().unwrap().is_none(), "easel serve exited early");
        assert!(std::time::Instant::now() < deadline, "easel serve never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(serve.wait().unwrap().success(), "serve stops cleanly on SIGTERM");
    assert!(!daemon.socket.exists());
}

/// A watcher that never hangs up (a tray app) does not hold the daemon up when it is told to
/// stop: its watch ends, and the daemon exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_ends_when_the_daemon_stops() {
    let mut daemon = Daemon::start();
    let mut client = daemon.client().await;
    let mut watch = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    // `terminate` fails the test if the daemon is still running 30 s after SIGTERM.
    let status = tokio::task::block_in_place(|| daemon.terminate());
    assert!(status.success(), "{status}");
    // The watch ends (cleanly, or with the connection) rather than hanging.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch stream is still open");
}

/// `EASEL_OPTIMIZED_CACHE=1`: the first load keeps ONNX Runtime's optimized graphs under
/// `$EASEL_HOME/cache/optimized/`, a restarted daemon loads from them and draws the same
/// picture. Off (the default), nothing is written there.
#[test]
fn the_optimized_graph_cache_is_opt_in_and_survives_a_restart() {
    let graphs = |home: &std::path::Path| {
        files_under(&home.join("cache/optimized"))
            .into_iter()
            .filter(|(name, _)| name.ends_with("/model.onnx"))
            .count()
    };
    let mut daemon = Daemon::start_with(&[("EASEL_OPTIMIZED_CACHE", "1")]);
    let first = daemon.dir.path().join("first.png");
    let output = daemon.generate_tiny("a red circle", &["--steps", "2", "--seed", "3"], &first);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(graphs(&daemon.home), 3, "text encoder, UNet, VAE decoder");
    assert!(daemon.terminate().success());
    daemon.spawn(&[("EASEL_OPTIMIZED_CACHE", "1")]);
    daemon.wait_ready();
    let second = daemon.dir.path().join("second.png");
    let output = daemon.generate_tiny("a red circle", &["--steps", "2", "--seed", "3"], &second);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(graphs(&daemon.home), 3);
    assert_eq!(
        read_png(&std::fs::read(&first).unwrap()).2,
        read_png(&std::fs::read(&second).unwrap()).2
    );

    let plain = Daemon::start();
    let out = plain.dir.path().join("plain.png");
    assert!(
        plain
            .generate_tiny("a red circle", &["--steps", "2"], &out)
            .status
            .success()
    );
    assert_eq!(graphs(&plain.home), 0);
}
