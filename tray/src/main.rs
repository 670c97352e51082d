//! `easel-tray`: the system-tray icon for the easel daemon (see the library's docs).

use std::path::PathBuf;

use clap::Parser;

/// A system-tray icon that shows what easeld is doing and starts, stops and steers it.
#[derive(Debug, Parser)]
#[command(name = "easel-tray", version)]
struct Args {
    /// The daemon's socket (default: $EASEL_SOCKET, else $XDG_RUNTIME_DIR/easel/easeld.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The folder "Open images folder" opens and "Show last image" searches
    /// (default: the Pictures folder's `easel/`).
    #[arg(long, env = "EASEL_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
}

#[cfg(target_os = "linux")]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = start("xdg-open")?;
    easel_tray::app::run(settings).await?;
    Ok(())
}

#[cfg(target_os = "macos")]
fn main() -> anyhow::Result<()> {
    use anyhow::Context;

    let settings = start("open")?;
    // AppKit's event loop takes the main thread; the rest runs on the runtime beside it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    easel_tray::macos::run(settings, runtime)
}

/// Parses the arguments, starts logging and says where the actions act (`opener`: the
/// platform's program that opens files and folders).
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn start(opener: &str) -> anyhow::Result<easel_tray::actions::Settings> {
    use anyhow::Context;
    use easel_tray::actions::{Settings, autostart_file_from_env};

    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let images_dir = match args.images_dir {
        Some(dir) => dir,
        None => default_images_dir().context("no Pictures or home folder is known; pass --images-dir DIR")?,
    };
    Ok(Settings {
        socket: args.socket.unwrap_or_else(easel_proto::paths::socket_path),
        images_dir,
        autostart_file: autostart_file_from_env(),
        opener: opener.into(),
        exe: std::env::current_exe().context("cannot tell where easel-tray itself is")?,
    })
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn default_images_dir() -> Option<PathBuf> {
    let dirs = directories::UserDirs::new()?;
    let pictures = dirs
        .picture_dir()
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs.home_dir().join("Pictures"));
    Some(pictures.join("easel"))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    eprintln!(
        "easel-tray: error: this platform is not supported yet (the tray runs on Linux and macOS); use `easel status` and `easel daemon` from a terminal instead"
    );
    std::process::ExitCode::FAILURE
}
