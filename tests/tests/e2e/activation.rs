//! The daemon under a service manager: socket activation through `systemd-socket-activate`
//! (the first `easel status` starts the daemon through the socket, `idle_exit` ends it once
//! nothing runs, the next connection starts it again) and readiness notification on a fake
//! `NOTIFY_SOCKET`.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use easel_e2e::*;

/// systemd's stand-in for a `.socket` unit: binds the socket, execs the program with it as fd
/// 3 (`LISTEN_FDS=1`) on the first connection.
fn socket_activate() -> PathBuf {
    let path = PathBuf::from("/usr/bin/systemd-socket-activate");
    assert!(
        path.is_file(),
        "{} is missing: install systemd (`apt-get install systemd`; .ci/run does)",
        path.display()
    );
    path
}

/// A daemon's folders and environment, with nothing started yet.
fn unstarted() -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::DirBuilder::new().mode(0o700).create(&run).unwrap();
    Daemon {
        socket: run.join("easeld.sock"),
        home: dir.path().join("home"),
        log: dir.path().join("easeld.log"),
        child: None,
        dir,
    }
}

/// `systemd-socket-activate -l SOCKET easeld`, once its socket listens.
fn activate(daemon: &mut Daemon, idle_exit: &str) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&daemon.log)
        .unwrap();
    let _ = std::fs::remove_file(&daemon.socket);
    // It hands the daemon only the variables named with -E (and a few basics), as systemd
    // hands a service only its unit's Environment=.
    let mut env = daemon.env();
    env.push(("EASEL_IDLE_EXIT".into(), idle_exit.into()));
    let child = Command::new(socket_activate())
        .arg("-l")
        .arg(&daemon.socket)
        .args(env.iter().map(|(name, value)| format!("--setenv={name}={value}")))
        .arg(bin("easeld"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start systemd-socket-activate");
    daemon.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_exit(child: &mut Child, limit: Duration, log: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit within {limit:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_pid(daemon: &Daemon) -> u64 {
    let output = daemon.easel(&["status", "--json"]);
    assert!(
        output.status.success(),
        "easel status through the socket: {}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log_text()
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["pid"].as_u64().expect("a pid")
}

#[test]
fn the_first_connection_starts_the_daemon_and_idle_exit_ends_it() {
    let mut daemon = unstarted();
    activate(&mut daemon, "1s");
    // Nothing runs yet but the socket: a watcher's connection starts easeld (the CLI may not
    // start one itself), which serves on the socket it was given; `easel status` is answered.
    let mut events = daemon
        .easel_command(&["events", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = status_pid(&daemon);
    assert_eq!(pid, u64::from(daemon.pid()), "systemd-socket-activate execs the daemon");
    assert!(daemon.log_text().contains("socket-activated"), "{}", daemon.log_text());

    // The watcher keeps it up well past the idle period…
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon must not exit while a client watches; log:\n{}",
        daemon.log_text()
    );
    // …and once it leaves, the daemon exits by itself, cleanly, leaving the socket file to
    // its manager.
    events.kill().unwrap();
    events.wait().unwrap();
    let mut child = daemon.child.take().unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(30), &daemon.log_text());
    assert!(
        status.success(),
        "idle exit is a clean exit: {status}\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("shutting down (idle)"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.socket.exists(), "the manager's socket file stays");

    // The manager listens again (systemd never stopped); the next command starts a new daemon.
    activate(&mut daemon, "10m");
    let second = status_pid(&daemon);
    assert_eq!(second, u64::from(daemon.pid()));
    // `easel daemon stop` waits for the process, since the socket file stays.
    let output = daemon.easel(&["daemon", "stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut child = daemon.child.take().unwrap();
    let status = wait_for_exit(&mut child, Duration::from_secs(30), &daemon.log_text());
    assert!(status.success(), "a requested stop is a clean exit too: {status}");
    assert!(daemon.socket.exists(), "an adopted socket is never removed");
}

#[test]
fn readiness_and_stopping_are_notified() {
    let mut daemon = unstarted();
    let notify_path = daemon.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    daemon.spawn(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let ready = receive(&notify, &daemon);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving on"), "{ready}");
    // READY=1 means serving: the first call after it is answered, no retrying.
    let output = daemon.easel(&["status"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    assert!(daemon.terminate().success());
    let stopping = receive(&notify, &daemon);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(
        !Path::new(&daemon.socket).exists(),
        "a socket the daemon bound is its to remove"
    );
}

fn receive(socket: &UnixDatagram, daemon: &Daemon) -> String {
    let mut buffer = [0u8; 4096];
    let n = socket
        .recv(&mut buffer)
        .unwrap_or_else(|e| panic!("no notification ({e}); log:\n{}", daemon.log_text()));
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn idle_exit_is_ignored_without_socket_activation() {
    let daemon = Daemon::start_with(&[("EASEL_IDLE_EXIT", "1s")]);
    std::thread::sleep(Duration::from_secs(3));
    let output = daemon.easel(&["status"]);
    assert!(
        output.status.success(),
        "a daemon nobody restarts stays up: {}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("idle_exit applies only"),
        "{}",
        daemon.log_text()
    );
}
