//! `easeld`, the easel daemon: reads the config, loads ONNX Runtime, takes the socket and
//! serves until SIGTERM, SIGINT or a `Shutdown` call. All the work is in the library.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use easeld::config::Config;
use easeld::engine::{Engine, EngineSettings};
use easeld::events::EventBus;
use easeld::models::Models;
use easeld::registry::Registry;
use easeld::service::DaemonInfo;
use easeld::store::{ImportLimits, Store};
use std::sync::Arc;

/// The easel daemon: keeps Stable Diffusion models resident and serves gRPC on a Unix socket.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Socket to listen on (default: $EASEL_SOCKET, else $XDG_RUNTIME_DIR/easel/easeld.sock).
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
}

fn main() {
    if let Err(error) = real_main() {
        eprintln!("easeld: error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = Config::load()?;
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The listener registers with the runtime, so bind inside it. Taking the socket first means
    // a second daemon fails fast, before loading anything.
    let (bound, listener) = {
        let _inside = runtime.enter();
        easeld::socket::bind(&config.socket)?
    };
    serve(runtime, config, bound, listener)
}

fn serve(
    runtime: tokio::runtime::Runtime,
    config: Config,
    bound: easeld::socket::BoundSocket,
    listener: tokio::net::UnixListener,
) -> anyhow::Result<()> {
    let candidates = easeld::runtime::candidate_paths(config.onnxruntime.as_deref(), &config.home);
    let ort = easeld::runtime::load(&candidates)?;
    tracing::info!(library = %ort.library.display(), socket = %bound.path.display(), "easeld ready");
    let info = DaemonInfo {
        device: "cpu".to_string(),
        onnxruntime_library: ort.library.display().to_string(),
        socket: bound.path.display().to_string(),
    };
    let registry = Arc::new(Registry::new(&config.home));
    runtime.block_on(async move {
        tracing::info!(
            memory_budget = config.memory_budget,
            keep_alive = %config.keep_alive,
            parallel = config.parallel,
            "residency settings"
        );
        let settings = EngineSettings {
            threads: config.threads,
            parallel: config.parallel,
            memory_budget: config.memory_budget,
            keep_alive: config.keep_alive,
        };
        let events = EventBus::new();
        let limits = ImportLimits {
            max_bytes: config.max_import_bytes,
            max_files: config.max_import_files,
        };
        let store = Store::open(&config.home.join("models"), limits).context("opening the model store")?;
        let models = Arc::new(Models::new(store, registry.clone(), ort.clone(), events.clone()));
        let engine = Engine::start(ort, registry, config.limits, settings, events);
        easeld::run(listener, engine, models, info, shutdown_signal())
            .await
            .context("serving the API")
    })?;
    drop(bound);
    tracing::info!("easeld stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
