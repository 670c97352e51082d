//! What each menu item does.
//!
//! Daemon actions go through the `easel_client` library like any client: Cancel the running
//! job by id, Shutdown, UnloadModel for every resident model, and [`start_daemon`] (detached,
//! logging beside the socket). Desktop actions hand files to the desktop's opener (`xdg-open`;
//! `open` on macOS), copy a path with `wl-copy` (Wayland) or `xclip` (X11) (`pbcopy` on macOS),
//! and switch start at login by writing or removing an XDG autostart entry
//! (`$XDG_CONFIG_HOME/autostart/easel-tray.desktop`; on macOS a LaunchAgent,
//! `~/Library/LaunchAgents/org.easel.easel-tray.plist`). [`run_action`] is what both faces call
//! for a click: the action, and what the state machine or the user must hear of it.
//!
//! Every failure is an [`ActionError`] whose message says what to do; the app shows it as a
//! notification. Nothing here blocks the runtime: file system scans run on blocking threads and
//! child processes are awaited asynchronously.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use easel_client::{ClientError, connect, log_path, pb, start_daemon};
use tokio::io::AsyncWriteExt;

use crate::state::{Action, Input, Notification};

/// The name of the autostart entry, in `autostart/` of the user's config folder.
pub const AUTOSTART_FILE: &str = "easel-tray.desktop";
/// The LaunchAgent's label (and file name, with `.plist`) that starts the tray at login on macOS.
pub const LAUNCH_AGENT_LABEL: &str = "org.easel.easel-tray";

/// How long a clipboard helper may take to take the text.
const CLIPBOARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the actions act.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The folder Open images folder opens and Show last image searches.
    pub images_dir: PathBuf,
    /// The XDG autostart entry Start at login writes (None: no config folder is known).
    pub autostart_file: Option<PathBuf>,
    /// The program that opens files and folders (`xdg-open`).
    pub opener: OsString,
    /// What the autostart entry runs: this executable.
    pub exe: PathBuf,
}

/// A menu action that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the daemon refused to {what}: {}", source.message())]
    Rpc {
        what: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("no images in {} yet; generate with `easel generate PROMPT -o {}/` or point the tray elsewhere with --images-dir", dir.display(), dir.display())]
    NoImages { dir: PathBuf },
    #[error("cannot read the images folder {}", dir.display())]
    ReadImages {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no clipboard tool found: install wl-clipboard (Wayland) or xclip (X11); the path is {}",
        path.display()
    )]
    NoClipboardTool { path: PathBuf },
    #[error("cannot run {}; is it installed and on PATH?", program.to_string_lossy())]
    Spawn {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("{} failed ({status})", program.to_string_lossy())]
    Failed {
        program: OsString,
        status: std::process::ExitStatus,
    },
    #[error("{} did not finish within {} s", program.to_string_lossy(), CLIPBOARD_TIMEOUT.as_secs())]
    TimedOut { program: OsString },
    #[error("cannot change the autostart entry {}; check that the folder is writable", path.display())]
    Autostart {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no config folder for the autostart entry: set XDG_CONFIG_HOME or HOME")]
    NoConfigFolder,
}

/// Does a clicked `action` (all but Quit, which the faces handle) for the main loop: a
/// state-machine input it brings goes to `inputs`; a daemon just asked to start is looked for
/// at once (`wake`); a failure comes back as the notification to show (a failed start goes to
/// the state machine instead, which shows it in the menu).
pub async fn run_action(
    action: Action,
    settings: &Settings,
    inputs: &tokio::sync::mpsc::UnboundedSender<Input>,
    wake: &tokio::sync::Notify,
) -> Option<Notification> {
    match perform(&action, settings).await {
        Ok(Some(input)) => {
            let _ = inputs.send(input);
            None
        }
        // The watcher sleeps between attempts: have it look now.
        Ok(None) if action == Action::StartDaemon => {
            wake.notify_one();
            None
        }
        Ok(None) => None,
        Err(error) => {
            let message = crate::error_chain(&error);
            tracing::warn!("{action:?} failed: {message}");
            if action == Action::StartDaemon {
                let _ = inputs.send(Input::StartFailed(message));
                None
            } else {
                Some(Notification {
                    summary: "easel tray".into(),
                    body: message,
                    critical: true,
                })
            }
        }
    }
}

/// Does `action` (all but Quit, which the app handles). Returns an input for the state machine
/// when the action changes what the tray shows by itself (start at login).
pub async fn perform(action: &Action, settings: &Settings) -> Result<Option<Input>, ActionError> {
    match action {
        Action::Cancel { job_id } => {
            let mut client = connect(&settings.socket).await?;
            client
                .cancel(pb::CancelRequest { job_id: job_id.clone() })
                .await
                .map_err(|source| ActionError::Rpc {
                    what: "cancel the job",
                    source,
                })?;
            Ok(None)
        }
        Action::StartDaemon => {
            start_daemon(&settings.socket).await?;
            Ok(None)
        }
        Action::StopDaemon => {
            let mut client = connect(&settings.socket).await?;
            client
                .shutdown(pb::ShutdownRequest {})
                .await
                .map_err(|source| ActionError::Rpc {
                    what: "shut down",
                    source,
                })?;
            Ok(None)
        }
        Action::UnloadModels => {
            let mut client = connect(&settings.socket).await?;
            let running = client
                .list_running(pb::ListRunningRequest {})
                .await
                .map_err(|source| ActionError::Rpc {
                    what: "list the loaded models",
                    source,
                })?
                .into_inner();
            for model in running.models {
                client
                    .unload_model(pb::UnloadModelRequest { model: model.name })
                    .await
                    .map_err(|source| ActionError::Rpc {
                        what: "unload a model",
                        source,
                    })?;
            }
            Ok(None)
        }
        Action::OpenImagesFolder => {
            let dir = settings.images_dir.clone();
            let created = dir.clone();
            tokio::task::spawn_blocking(move || std::fs::create_dir_all(&created))
                .await
                .expect("create_dir_all does not panic")
                .map_err(|source| ActionError::ReadImages {
                    dir: dir.clone(),
                    source,
                })?;
            open(&settings.opener, &dir).await?;
            Ok(None)
        }
        Action::ShowLastImage => {
            let image = last_image(&settings.images_dir).await?;
            open(&settings.opener, &image).await?;
            Ok(None)
        }
        Action::CopyLastImagePath => {
            let image = last_image(&settings.images_dir).await?;
            copy_to_clipboard(&image).await?;
            Ok(None)
        }
        Action::ViewLog => {
            open(&settings.opener, &log_path(&settings.socket)).await?;
            Ok(None)
        }
        Action::SetAutostart(on) => {
            let path = settings.autostart_file.clone().ok_or(ActionError::NoConfigFolder)?;
            let exe = settings.exe.clone();
            let on = *on;
            tokio::task::spawn_blocking(move || set_autostart(&path, &exe, on))
                .await
                .expect("set_autostart does not panic")?;
            Ok(Some(Input::Autostart(on)))
        }
        // The app ends its loop itself; nothing to do here.
        Action::Quit => Ok(None),
    }
}

/// The user's config folder: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn config_home(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if let Some(dir) = xdg_config_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(dir);
    }
    home.map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|home| home.join(".config"))
}

/// The autostart entry's path, from the environment: under the user's config folder, or on
/// macOS the user's LaunchAgents folder.
pub fn autostart_file_from_env() -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        return std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|home| home.is_absolute())
            .map(|home| launch_agent_file(&home));
    }
    config_home(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
        .map(|config| config.join("autostart").join(AUTOSTART_FILE))
}

/// `~/Library/LaunchAgents/org.easel.easel-tray.plist` under `home`.
pub fn launch_agent_file(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
        .join(format!("{LAUNCH_AGENT_LABEL}.plist"))
}

/// The LaunchAgent that starts `exe` at login (macOS's autostart entry).
pub fn launch_agent(exe: &Path) -> String {
    let escaped = exe
        .to_string_lossy()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \t<key>Label</key>\n\t<string>{LAUNCH_AGENT_LABEL}</string>\n\
         \t<key>ProgramArguments</key>\n\t<array>\n\t\t<string>{escaped}</string>\n\t</array>\n\
         \t<key>RunAtLoad</key>\n\t<true/>\n\
         \t<key>ProcessType</key>\n\t<string>Interactive</string>\n\
         </dict>\n\
         </plist>\n"
    )
}

/// What start at login writes at `path`: a LaunchAgent for a `.plist`, else a desktop entry.
pub fn autostart_entry(path: &Path, exe: &Path) -> String {
    if path.extension().is_some_and(|e| e == "plist") {
        launch_agent(exe)
    } else {
        desktop_entry(exe)
    }
}

/// The autostart entry for `exe`.
pub fn desktop_entry(exe: &Path) -> String {
    // Exec= quoting (Desktop Entry spec): quote the path, escaping `"`, `` ` ``, `$` and `\`.
    let mut quoted = String::from("\"");
    for c in exe.to_string_lossy().chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name=easel tray\n\
         Comment=Shows what the local Stable Diffusion daemon easeld is doing\n\
         Exec={quoted}\n\
         Terminal=false\n\
         Categories=Graphics;\n\
         X-GNOME-Autostart-enabled=true\n"
    )
}

/// Writes (on) or removes (off) the autostart entry.
pub fn set_autostart(path: &Path, exe: &Path, on: bool) -> Result<(), ActionError> {
    let error = |source| ActionError::Autostart {
        path: path.to_path_buf(),
        source,
    };
    if on {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        easel_client::output::write_atomic(path, autostart_entry(path, exe).as_bytes()).map_err(|e| match e {
            easel_client::output::OutputError::Write { source, .. }
            | easel_client::output::OutputError::CreateDir { source, .. } => error(source),
        })
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(error(e)),
            _ => Ok(()),
        }
    }
}

/// Whether start at login is on: the entry exists.
pub fn autostart_enabled(path: Option<&Path>) -> bool {
    path.is_some_and(Path::is_file)
}

/// The newest picture directly in `dir` (PNG, JPEG, WebP; hidden files, such as the CLI's
/// half-written temp files, skipped).
pub fn newest_image(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp"));
        if name.starts_with('.') || !is_image {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified()?;
        if newest.as_ref().is_none_or(|(t, p)| (modified, &path) > (*t, p)) {
            newest = Some((modified, path));
        }
    }
    Ok(newest.map(|(_, p)| p))
}

async fn last_image(dir: &Path) -> Result<PathBuf, ActionError> {
    let scanned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || newest_image(&scanned))
        .await
        .expect("newest_image does not panic")
        .map_err(|source| ActionError::ReadImages {
            dir: dir.to_path_buf(),
            source,
        })?
        .ok_or_else(|| ActionError::NoImages { dir: dir.to_path_buf() })
}

/// Hands `target` to the opener and leaves it running; its exit is reaped in the background.
async fn open(opener: &OsString, target: &Path) -> Result<(), ActionError> {
    let mut child = tokio::process::Command::new(opener)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ActionError::Spawn {
            program: opener.clone(),
            source,
        })?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

/// A clipboard helper: the program and its arguments; the text goes to its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipboardTool {
    pub program: PathBuf,
    pub args: Vec<&'static str>,
}

/// `wl-copy` under Wayland, else `xclip` under X11, whichever is on `path_var`.
pub fn find_clipboard_tool(path_var: Option<OsString>, wayland: bool, x11: bool) -> Option<ClipboardTool> {
    let find = |name: &str| {
        path_var
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    let wl = wayland
        .then(|| find("wl-copy"))
        .flatten()
        .map(|program| ClipboardTool { program, args: vec![] });
    wl.or_else(|| {
        x11.then(|| find("xclip")).flatten().map(|program| ClipboardTool {
            program,
            args: vec!["-selection", "clipboard"],
        })
    })
}

async fn copy_to_clipboard(path: &Path) -> Result<(), ActionError> {
    let non_empty = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let tool = if cfg!(target_os = "macos") {
        // Part of every macOS.
        Some(ClipboardTool {
            program: PathBuf::from("/usr/bin/pbcopy"),
            args: vec![],
        })
    } else {
        find_clipboard_tool(
            std::env::var_os("PATH"),
            non_empty("WAYLAND_DISPLAY"),
            non_empty("DISPLAY"),
        )
    }
    .ok_or_else(|| ActionError::NoClipboardTool {
        path: path.to_path_buf(),
    })?;
    let program = tool.program.clone().into_os_string();
    let mut child = tokio::process::Command::new(&tool.program)
        .args(&tool.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ActionError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let text = path.to_string_lossy().into_owned();
    let written = async {
        stdin.write_all(text.as_bytes()).await?;
        drop(stdin);
        child.wait().await
    };
    // Both tools fork a helper that serves the selection, so the first process exits soon.
    match tokio::time::timeout(CLIPBOARD_TIMEOUT, written).await {
        Err(_) => Err(ActionError::TimedOut { program }),
        Ok(Err(source)) => Err(ActionError::Spawn { program, source }),
        Ok(Ok(status)) if !status.success() => Err(ActionError::Failed { program, status }),
        Ok(Ok(_)) => Ok(()),
    }
}

/// AppleScript's `display notification BODY with title SUMMARY`, both quoted as AppleScript
/// strings (backslashes and double quotes escaped; line breaks become spaces).
pub fn applescript_notification(note: &Notification) -> String {
    let quote = |text: &str| {
        let mut quoted = String::from("\"");
        for c in text.chars() {
            match c {
                '"' | '\\' => {
                    quoted.push('\\');
                    quoted.push(c);
                }
                '\n' | '\r' => quoted.push(' '),
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    };
    format!(
        "display notification {} with title {}",
        quote(&note.body),
        quote(&note.summary)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_folder_follows_xdg_then_home() {
        assert_eq!(
            config_home(Some("/x/cfg".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/cfg"))
        );
        assert_eq!(
            config_home(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config"))
        );
        assert_eq!(
            config_home(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config"))
        );
        assert_eq!(config_home(None, None), None);
    }

    #[test]
    fn start_at_login_writes_and_removes_the_autostart_entry() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_home(Some(dir.path().into()), None).unwrap();
        let path = config.join("autostart").join(AUTOSTART_FILE);
        assert!(!autostart_enabled(Some(&path)));
        let exe = Path::new("/opt/my tools/easel-tray");
        set_autostart(&path, exe, true).unwrap();
        assert!(autostart_enabled(Some(&path)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[Desktop Entry]\n"), "{text}");
        assert!(text.contains("Type=Application\n"), "{text}");
        assert!(text.contains("Exec=\"/opt/my tools/easel-tray\"\n"), "{text}");
        // Switching on twice is fine, and so is switching off twice.
        set_autostart(&path, exe, true).unwrap();
        set_autostart(&path, exe, false).unwrap();
        assert!(!path.exists());
        set_autostart(&path, exe, false).unwrap();
        assert!(!autostart_enabled(None));
    }

    #[test]
    fn exec_quoting_escapes_what_the_spec_says() {
        let entry = desktop_entry(Path::new("/a/$b\"c`d\\e"));
        assert!(entry.contains(r#"Exec="/a/\$b\"c\`d\\e""#), "{entry}");
    }

    #[test]
    fn a_macos_notification_is_one_applescript_line_with_its_text_quoted() {
        let note = Notification {
            summary: "easel \"tray\"".into(),
            body: "C:\\x failed\nsee the log".into(),
            critical: true,
        };
        assert_eq!(
            applescript_notification(&note),
            r#"display notification "C:\\x failed see the log" with title "easel \"tray\"""#
        );
    }

    #[test]
    fn on_macos_start_at_login_is_a_launch_agent_that_runs_the_tray() {
        let home = tempfile::tempdir().unwrap();
        let path = launch_agent_file(home.path());
        assert!(
            path.ends_with("Library/LaunchAgents/org.easel.easel-tray.plist"),
            "{path:?}"
        );
        let exe = Path::new("/Applications/easel & co/easel-tray");
        set_autostart(&path, exe, true).unwrap();
        let agent: plist::Dictionary = plist::from_file(&path).unwrap();
        assert_eq!(agent["Label"].as_string(), Some(LAUNCH_AGENT_LABEL));
        let arguments = agent["ProgramArguments"].as_array().unwrap();
        assert_eq!(arguments[0].as_string(), Some("/Applications/easel & co/easel-tray"));
        assert_eq!(agent["RunAtLoad"].as_boolean(), Some(true));
        assert!(autostart_enabled(Some(&path)));
        set_autostart(&path, exe, false).unwrap();
        assert!(!autostart_enabled(Some(&path)));
        // Elsewhere the same switch writes a desktop entry.
        assert!(autostart_entry(Path::new("/x/easel-tray.desktop"), exe).starts_with("[Desktop Entry]"));
    }

    #[tokio::test]
    async fn set_autostart_action_reports_the_new_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autostart").join(AUTOSTART_FILE);
        let settings = Settings {
            socket: dir.path().join("s.sock"),
            images_dir: dir.path().join("images"),
            autostart_file: Some(path.clone()),
            opener: "true".into(),
            exe: "/usr/bin/easel-tray".into(),
        };
        let input = perform(&Action::SetAutostart(true), &settings).await.unwrap();
        assert!(matches!(input, Some(Input::Autostart(true))));
        assert!(path.is_file());
        let input = perform(&Action::SetAutostart(false), &settings).await.unwrap();
        assert!(matches!(input, Some(Input::Autostart(false))));
        assert!(!path.exists());

        let without = Settings {
            autostart_file: None,
            ..settings
        };
        let error = perform(&Action::SetAutostart(true), &without).await.unwrap_err();
        assert!(error.to_string().contains("XDG_CONFIG_HOME"), "{error}");
    }

    #[test]
    fn the_newest_picture_wins_and_temp_files_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_image(&dir.path().join("missing")).unwrap(), None);
        assert_eq!(newest_image(dir.path()).unwrap(), None);
        let old = dir.path().join("easel-1.png");
        std::fs::write(&old, b"x").unwrap();
        let new = dir.path().join("easel-2.PNG");
        std::fs::write(&new, b"x").unwrap();
        let past = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        std::fs::write(dir.path().join(".easel-3.png.tmp-1"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("folder.png")).unwrap();
        assert_eq!(newest_image(dir.path()).unwrap(), Some(new));
    }

    #[tokio::test]
    async fn show_last_image_in_an_empty_folder_says_how_to_fill_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = last_image(dir.path()).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("no images in"), "{message}");
        assert!(message.contains("--images-dir"), "{message}");
    }

    #[tokio::test]
    async fn open_hands_the_path_to_the_opener() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("opened");
        let opener = dir.path().join("opener.sh");
        std::fs::write(&opener, format!("#!/bin/sh\necho \"$1\" > '{}'\n", record.display())).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&opener)
            .status()
            .unwrap();
        let settings = Settings {
            socket: dir.path().join("run/easeld.sock"),
            images_dir: dir.path().join("images"),
            autostart_file: None,
            opener: opener.into_os_string(),
            exe: "/usr/bin/easel-tray".into(),
        };
        perform(&Action::ViewLog, &settings).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !record.exists() {
            assert!(std::time::Instant::now() < deadline, "the opener never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let opened = std::fs::read_to_string(&record).unwrap();
        assert_eq!(opened.trim(), dir.path().join("run/easeld.log").display().to_string());

        // Open images folder creates the folder first.
        perform(&Action::OpenImagesFolder, &settings).await.unwrap();
        assert!(settings.images_dir.is_dir());

        let missing = Settings {
            opener: "/nonexistent/xdg-open".into(),
            ..settings
        };
        let error = perform(&Action::ViewLog, &missing).await.unwrap_err();
        assert!(error.to_string().contains("is it installed"), "{error}");
    }

    #[test]
    fn the_clipboard_tool_follows_the_session_type() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["wl-copy", "xclip"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let path = Some(dir.path().as_os_str().to_owned());
        let wayland = find_clipboard_tool(path.clone(), true, true).unwrap();
        assert_eq!(wayland.program, dir.path().join("wl-copy"));
        let x11 = find_clipboard_tool(path.clone(), false, true).unwrap();
        assert_eq!(x11.program, dir.path().join("xclip"));
        assert_eq!(x11.args, ["-selection", "clipboard"]);
        assert_eq!(find_clipboard_tool(path, false, false), None);
        let error = ActionError::NoClipboardTool {
            path: "/p/i.png".into(),
        };
        assert!(error.to_string().contains("install wl-clipboard"), "{error}");
    }

    #[tokio::test]
    async fn daemon_actions_without_a_daemon_say_none_is_running() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            socket: dir.path().join("none.sock"),
            images_dir: dir.path().join("images"),
            autostart_file: None,
            opener: "true".into(),
            exe: "/usr/bin/easel-tray".into(),
        };
        for action in [
            Action::StopDaemon,
            Action::UnloadModels,
            Action::Cancel { job_id: "j".into() },
        ] {
            let error = perform(&action, &settings).await.unwrap_err();
            assert!(
                matches!(&error, ActionError::Client(c) if c.is_no_daemon()),
                "{action:?}: {error:?}"
            );
        }
    }
}
