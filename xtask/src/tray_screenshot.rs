//! `cargo xtask tray-screenshot`: `docs/tray.png`, the tray icon and its open menu as a real
//! desktop shows them, for the README.
//!
//! Everything runs privately: an `Xvfb` screen, a `dbus-daemon` session bus, `xfce4-panel`
//! (its systray plugin hosts StatusNotifierItems) configured with only a spacer and the tray,
//! a debug `easeld` on a socket under `<target>/tray-screenshot/`, `easel-tray`, and a long
//! job from the CLI. When the job is about half done the pointer hovers over the icon (its
//! tooltip) and then right-clicks it (its menu) with `xdotool`; ImageMagick's `import` saves
//! the screen each time and `convert` sets the two side by side. Debian packages: `xvfb xfce4-panel
//! xdotool imagemagick dbus-daemon`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, fetch_ort, status, target_dir};

const WIDTH: u32 = 560;
const HEIGHT: u32 = 440;
const PANEL_SIZE: u32 = 36;

/// The panel: one row at the top, a spacer pushing the tray to the right end.
const PANEL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="PANEL_SIZE"/>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/>
        <value type="int" value="2"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="separator">
      <property name="expand" type="bool" value="true"/>
      <property name="style" type="uint" value="0"/>
    </property>
    <property name="plugin-2" type="string" value="systray">
      <property name="square-icons" type="bool" value="true"/>
    </property>
  </property>
</channel>
"#;

const TOOLS: [(&str, &str); 6] = [
    ("Xvfb", "xvfb"),
    ("xfce4-panel", "xfce4-panel"),
    ("dbus-daemon", "dbus-daemon"),
    ("xdotool", "xdotool"),
    ("import", "imagemagick"),
    ("convert", "imagemagick"),
];

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(program).is_file())
}

pub fn tray_screenshot(root: &Path) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools for the screenshot; install them with `apt-get install {}`",
            missing.join(" ")
        );
    }
    let library = fetch_ort(root)?;
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "-p", "easeld", "-p", "easel", "-p", "easel-tray"]);
    status(build, "cargo build (easeld, easel, easel-tray)")?;
    let target = target_dir(root)?;
    let bin = target.join("debug");
    let work = target.join("tray-screenshot");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let config = work.join("config");
    let channel = config.join("xfce4/xfconf/xfce-perchannel-xml");
    std::fs::create_dir_all(&channel)?;
    std::fs::write(
        channel.join("xfce4-panel.xml"),
        PANEL_XML.replace("PANEL_SIZE", &PANEL_SIZE.to_string()),
    )?;

    let (display, _xvfb) = start_xvfb()?;
    // Services the bus activates (xfconfd, which serves the panel its settings) inherit the
    // bus's environment: our config folder, not the user's.
    let desktop_env: Vec<(&str, std::ffi::OsString)> = vec![
        ("DISPLAY", display.clone().into()),
        ("XDG_CONFIG_HOME", config.clone().into_os_string()),
        ("XDG_CACHE_HOME", work.join("cache").into_os_string()),
        ("XDG_DATA_HOME", work.join("data").into_os_string()),
    ];
    let mut bus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
        .arg(format!("--address=unix:path={}", work.join("bus").display()))
        .envs(desktop_env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dbus-daemon")?;
    let mut address = String::new();
    BufReader::new(bus.stdout.take().expect("piped"))
        .read_line(&mut address)
        .context("reading the bus address")?;
    let _bus = Guard(bus);
    let address = address.trim().to_string();

    let mut env = desktop_env;
    env.push(("DBUS_SESSION_BUS_ADDRESS", address.into()));
    env.push(("ORT_DYLIB_PATH", library.into_os_string()));
    env.push(("EASEL_SOCKET", work.join("run/easeld.sock").into_os_string()));
    env.push(("EASEL_HOME", work.join("home").into_os_string()));
    env.push(("EASEL_CONFIG", work.join("config.toml").into_os_string()));
    env.push(("EASEL_MAX_STEPS", "100000".into()));
    env.push(("EASEL_IMAGES_DIR", work.join("images").into_os_string()));
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    // Each program logs to `logs/NAME.log`, for when the picture is not what it should be.
    let command = |program: &Path| -> Result<Command> {
        let name = program
            .file_name()
            .expect("a program name")
            .to_string_lossy()
            .into_owned();
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let mut command = Command::new(program);
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    };

    eprintln!("xtask: starting xfce4-panel on {display}");
    let _panel = Guard(
        command(Path::new("xfce4-panel"))?
            .arg("--disable-wm-check")
            .spawn()
            .context("starting xfce4-panel")?,
    );
    let socket = work.join("run/easeld.sock");
    let _daemon = Guard(command(&bin.join("easeld"))?.spawn().context("starting easeld")?);
    wait_for(|| socket.exists(), Duration::from_secs(30), "easeld's socket")?;
    let _tray = Guard(
        command(&bin.join("easel-tray"))?
            .env("RUST_LOG", "info,easel_tray=debug")
            .spawn()
            .context("starting easel-tray")?,
    );
    // The panel needs a moment to draw and to take the tray's registration.
    std::thread::sleep(Duration::from_secs(4));

    // A long job (the test fixture model, which allows thousands of steps); its --json
    // progress tells when it is about half done.
    let mut job = command(&bin.join("easel"))?;
    job.args([
        "--no-autostart",
        "generate",
        "a red circle on a blue background",
        "--model",
    ])
    .arg(root.join("tests/fixtures/models/sd1-tiny"))
    .args(["--steps", "3000", "--width", "256", "--height", "256", "--json", "-o"])
    .arg(work.join("images/long.png"))
    .stdout(Stdio::piped());
    let mut job = job.spawn().context("starting easel generate")?;
    let lines = BufReader::new(job.stdout.take().expect("piped"));
    let _job = Guard(job);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut half_done = false;
    let mut lines = lines.lines();
    for line in lines.by_ref() {
        let event: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        let (step, total) = (event["step"].as_u64(), event["total"].as_u64());
        if let (Some(step), Some(total)) = (step, total)
            && total > 0
            && step * 100 / total >= 45
        {
            half_done = true;
            break;
        }
        if Instant::now() > deadline {
            bail!("the job did not reach half way within 300 s");
        }
    }
    if !half_done {
        bail!(
            "the job ended before it was half done; see {}",
            logs.join("easel.log").display()
        );
    }
    // Keep reading: a CLI whose output is closed stops, and its job is cancelled with it.
    std::thread::spawn(move || lines.for_each(drop));
    // The tray hears of progress each 10%: let the 40% event land, then open the menu.
    std::thread::sleep(Duration::from_millis(700));
    // Two pictures side by side: the tooltip on hover, then the open menu.
    let icon = [(WIDTH - PANEL_SIZE / 2).to_string(), (PANEL_SIZE / 2).to_string()];
    let xdotool = |args: &[&str], what: &str| -> Result<()> {
        let mut xdotool = command(Path::new("xdotool"))?;
        xdotool.args(args);
        status(xdotool, what)
    };
    let shot = |file: &Path| -> Result<()> {
        let mut shot = command(Path::new("import"))?;
        shot.args(["-window", "root", "-strip"]).arg(file);
        status(shot, "import: save the screen")
    };
    xdotool(&["mousemove", &icon[0], &icon[1]], "xdotool: hover over the tray icon")?;
    std::thread::sleep(Duration::from_millis(2000));
    let hover = work.join("hover.png");
    shot(&hover)?;
    xdotool(&["click", "3"], "xdotool: right-click the tray icon")?;
    // Away from the icon, so its tooltip does not cover the menu (which stays open).
    std::thread::sleep(Duration::from_millis(300));
    xdotool(&["mousemove", "10", &(HEIGHT - 10).to_string()], "xdotool: move away")?;
    std::thread::sleep(Duration::from_millis(1500));
    let menu = work.join("menu.png");
    shot(&menu)?;
    let out = root.join("docs/tray.png");
    std::fs::create_dir_all(out.parent().expect("docs folder"))?;
    let mut append = command(Path::new("convert"))?;
    // A grey bar between the two, so the black screens do not run together.
    append
        .arg(&hover)
        .arg("(")
        .arg(&menu)
        .args(["-background", "#888888", "-splice", "4x0", ")", "+append", "-strip"])
        .arg(format!("png:{}", out.display()));
    status(append, "convert: the two pictures side by side")?;
    println!("{}", out.display());
    Ok(())
}

/// An Xvfb server, killed on drop; the lock and socket it leaves in /tmp are removed with it.
struct Xvfb {
    child: Child,
    number: u32,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.number));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.number));
    }
}

/// Starts Xvfb on the first free display from :90; returns its name and the server.
fn start_xvfb() -> Result<(String, Xvfb)> {
    for number in 90..120 {
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        if socket.exists() || Path::new(&format!("/tmp/.X{number}-lock")).exists() {
            continue;
        }
        let display = format!(":{number}");
        let child = Command::new("Xvfb")
            .arg(&display)
            .args(["-screen", "0", &format!("{WIDTH}x{HEIGHT}x24"), "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb")?;
        let server = Xvfb { child, number };
        wait_for(|| socket.exists(), Duration::from_secs(10), "Xvfb's socket")?;
        return Ok((display, server));
    }
    bail!("no free X display between :90 and :119")
}

fn wait_for(mut ready: impl FnMut() -> bool, limit: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not appear within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
