//! The tray as a desktop uses it: the real `easel-tray` on a private session bus registers its
//! StatusNotifierItem with our watcher; we read its properties and drive its menu through
//! `com.canonical.dbusmenu` against a real daemon — a job from the CLI shows as progress,
//! Cancel in the menu cancels it, Stop daemon stops the daemon and the icon goes back to
//! stopped. A finished job is announced through `org.freedesktop.Notifications`.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use easel_e2e::desktop::{Desktop, MenuNode, SessionBus};
use easel_e2e::*;
use easel_proto::v1 as pb;

/// The real tray binary, killed on drop; its log is printed when a check fails.
struct Tray {
    child: Child,
    log: std::path::PathBuf,
}

impl Tray {
    fn start(daemon: &Daemon, bus: &SessionBus) -> Self {
        let log = daemon.dir.path().join("tray.log");
        let file = std::fs::File::create(&log).expect("tray log");
        let child = Command::new(bin("easel-tray"))
            .envs(daemon.env())
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("EASEL_IMAGES_DIR", daemon.dir.path().join("images"))
            .env("XDG_CONFIG_HOME", daemon.dir.path().join("config"))
            .env("RUST_LOG", "easel_tray=debug,info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("start easel-tray (built by `cargo build --workspace --bins`)");
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it returns Some, or fails with `what` and the tray's log.
async fn wait_for<T, F, Fut>(tray: &Tray, what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}; tray log:\n{}",
            tray.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn item<'a>(menu: &'a MenuNode, label: &str) -> &'a MenuNode {
    menu.find(label)
        .unwrap_or_else(|| panic!("no menu item {label:?} in {:?}", menu.labels()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_follows_a_job_cancels_it_from_its_menu_and_stops_the_daemon() {
    let bus = SessionBus::start();
    let desktop = Desktop::serve(&bus).await;
    let mut daemon = Daemon::start_with(&[("EASEL_MAX_STEPS", "100000")]);
    let tray = Tray::start(&daemon, &bus);
    let limit = Duration::from_secs(60);

    let sni = desktop.wait_for_item(limit).await;
    let title = wait_for(&tray, "the tray reaching the daemon", limit, || async {
        let title = desktop.title(&sni).await;
        (title == "easel: idle").then_some(title)
    })
    .await;
    assert_eq!(title, "easel: idle");
    assert_eq!(desktop.status(&sni).await, "Active");
    let (tip_title, tip_body) = desktop.tooltip(&sni).await;
    assert_eq!(tip_title, "easel: idle");
    assert!(tip_body.starts_with("easeld "), "{tip_body}");
    let idle_icons = desktop.icon_pixmaps(&sni).await;
    assert!(!idle_icons.is_empty());
    for (w, h, data) in &idle_icons {
        assert_eq!(data.len(), (w * h * 4) as usize, "ARGB32 of {w}x{h}");
    }
    let menu = desktop.menu(&sni).await;
    assert!(!item(&menu, "Cancel job").enabled, "nothing to cancel yet");
    assert!(item(&menu, "Stop daemon").enabled);
    assert!(!item(&menu, "Start daemon").enabled);
    assert_eq!(item(&menu, "Start at login").toggle_state, Some(0));

    // A short job: when it finishes, the desktop is told.
    let out = daemon.dir.path().join("images").join("short.png");
    let cli = daemon.easel_command(&[
        "generate",
        "a red circle",
        "--model",
        fixture_model("sd1-tiny").to_str().unwrap(),
        "--steps",
        "2",
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ]);
    let output = tokio::task::spawn_blocking(move || {
        let mut cli = cli;
        cli.output().expect("run easel")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = wait_for(&tray, "the finished job's notification", limit, || async {
        let shown = desktop.notifications_shown();
        shown
            .iter()
            .any(|(summary, _)| summary == "Image ready")
            .then_some(shown)
    })
    .await;
    assert!(shown.iter().any(|(_, body)| body.contains("finished")), "{shown:?}");
    // The model the job loaded is listed with its memory.
    let menu = desktop.menu(&sni).await;
    assert!(
        menu.labels().iter().any(|l| l.contains("sd1-tiny") && l.contains("iB")),
        "{:?}",
        menu.labels()
    );
    assert!(item(&menu, "Unload models").enabled);

    // A long job from the CLI: the tray shows its progress.
    let mut long = daemon
        .easel_command(&[
            "generate",
            "a very long job",
            "--model",
            fixture_model("sd1-tiny").to_str().unwrap(),
            "--steps",
            "2000",
            "--width",
            "256",
            "--height",
            "256",
            "--no-progress",
            "-o",
            daemon.dir.path().join("long.png").to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run easel generate");
    let title = wait_for(&tray, "progress in the title", limit, || async {
        let title = desktop.title(&sni).await;
        (title.starts_with("easel: generating ") && title.contains('%')).then_some(title)
    })
    .await;
    // "easel: generating 10% (201/2001)": the daemon's own step count.
    assert!(title.contains("% (") && title.ends_with(')'), "{title}");
    let (tip_title, tip_body) = desktop.tooltip(&sni).await;
    assert!(tip_title.contains('%'), "{tip_title}");
    assert!(tip_body.contains("step "), "{tip_body}");
    let busy_icons = desktop.icon_pixmaps(&sni).await;
    assert_ne!(busy_icons, idle_icons, "the icon shows the job");

    // Cancel from the menu: the CLI's job ends cancelled.
    let menu = desktop.menu(&sni).await;
    let cancel = item(&menu, "Cancel job");
    assert!(cancel.enabled, "{:?}", menu.labels());
    desktop.click(&sni, cancel.id).await;
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while long.try_wait().expect("wait for easel").is_none() {
            if Instant::now() > deadline {
                let _ = long.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        long.wait_with_output().expect("easel's output")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "the job was cancelled, not finished");
    assert!(stderr(&output).to_lowercase().contains("cancel"), "{}", stderr(&output));
    wait_for(&tray, "the tray back to idle", limit, || async {
        (desktop.title(&sni).await == "easel: idle").then_some(())
    })
    .await;
    assert!(!item(&desktop.menu(&sni).await, "Cancel job").enabled);

    // Stop daemon from the menu: the daemon exits, the icon shows it stopped.
    let menu = desktop.menu(&sni).await;
    desktop.click(&sni, item(&menu, "Stop daemon").id).await;
    let mut child = daemon.child.take().expect("the daemon runs");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for easeld") {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "Stop daemon shuts the daemon down cleanly: {status:?}; log:\n{}",
        daemon.log_text()
    );
    wait_for(&tray, "the tray showing the daemon stopped", limit, || async {
        (desktop.title(&sni).await == "easel: stopped").then_some(())
    })
    .await;
    assert_eq!(desktop.status(&sni).await, "Passive");
    let menu = desktop.menu(&sni).await;
    assert!(item(&menu, "Start daemon").enabled);
    assert!(!item(&menu, "Stop daemon").enabled);

    // Start daemon from the menu: a detached easeld on the same socket; the tray sees it.
    desktop.click(&sni, item(&menu, "Start daemon").id).await;
    wait_for(&tray, "the tray showing the started daemon", limit, || async {
        (desktop.title(&sni).await == "easel: idle").then_some(())
    })
    .await;
    // It runs in its own process group, outside the harness: make sure it ends with the test.
    let pid = daemon
        .client()
        .await
        .get_status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .pid;
    let _started = KillOnDrop(pid);
    let menu = desktop.menu(&sni).await;
    desktop.click(&sni, item(&menu, "Stop daemon").id).await;
    wait_for(&tray, "the started daemon stopping", limit, || async {
        (desktop.title(&sni).await == "easel: stopped").then_some(())
    })
    .await;
}

/// Kills a process we did not spawn ourselves (SIGKILL; it may be gone already).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}
