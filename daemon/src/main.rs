//! `easeld`, the easel daemon: reads the config, loads ONNX Runtime, takes the socket and
//! serves until SIGTERM, SIGINT or a `Shutdown` call. All the work is in the library.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use easeld::Daemon;
use easeld::config::Config;
use easeld::serve::DaemonInfo;

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
        easeld::serve::socket::bind(&config.socket)?
    };
    serve(runtime, config, bound, listener)
}

fn serve(
    runtime: tokio::runtime::Runtime,
    config: Config,
    bound: easeld::serve::socket::BoundSocket,
    listener: tokio::net::UnixListener,
) -> anyhow::Result<()> {
    let candidates = easeld::model::runtime::candidate_paths(config.onnxruntime.as_deref(), &config.home);
    let mut ort = easeld::model::runtime::load(&candidates)?;
    let device = easeld::model::device::resolve(config.device, &ort.library, &easeld::model::device::SystemLoader)?;
    // The libraries are there; the GPU itself must answer too (its memory is what VRAM
    // residency measures).
    let (device, device_memory) =
        easeld::model::device_memory::attach(config.device, device, &easeld::model::device_memory::CudaMemory::open)?;
    if let Some(note) = &device.note {
        tracing::info!(device = %device.device, note, "running on the CPU");
    }
    ort.device = device.device;
    ort.device_memory = device_memory;
    if config.optimized_cache {
        let dir = config.home.join("cache").join("optimized");
        tracing::info!(dir = %dir.display(), "keeping optimized graphs between loads");
        ort.optimized_cache = Some(easeld::model::optimized_cache::OptimizedCache::new(
            dir,
            config.import_keep_free,
            &ort.library,
        ));
    }
    tracing::info!(library = %ort.library.display(), socket = %bound.path.display(), "easeld ready");
    let info = DaemonInfo {
        device: device.device.to_string(),
        device_note: device.note.clone().unwrap_or_default(),
        onnxruntime_library: ort.library.display().to_string(),
        socket: bound.path.display().to_string(),
    };
    tracing::info!(
        memory_budget = config.memory_budget,
        keep_alive = %config.keep_alive,
        parallel = config.parallel,
        "residency settings"
    );
    runtime.block_on(async move {
        // Before anything can answer a client: a SIGTERM sent as soon as the socket answers
        // must find the handler in place, not the default action (death).
        let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
        let daemon = Daemon::start(&config, ort).context("opening the model store")?;
        easeld::run(listener, daemon, info, shutdown)
            .await
            .context("serving the API")
    })?;
    drop(bound);
    tracing::info!("easeld stopped");
    Ok(())
}

/// Installs the handlers now; the future resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
