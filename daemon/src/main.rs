//! `easeld`, the easel daemon: reads the config, loads ONNX Runtime, takes the socket (or the
//! one systemd passed: socket activation) and serves until SIGTERM, SIGINT, a `Shutdown` call
//! or, socket-activated, `idle_exit` with nothing to do. All the work is in the library.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use easeld::Daemon;
use easeld::config::Config;
use easeld::serve::DaemonInfo;

/// The easel daemon: keeps Stable Diffusion models resident and serves gRPC on a Unix socket.
#[derive(Parser)]
#[command(
    version,
    after_long_help = "Settings come from ~/.config/easel/config.toml ($EASEL_CONFIG) and EASEL_* environment \
                       variables; the README lists them all. Started through systemd's easeld.socket, easeld \
                       serves on the socket it is passed (LISTEN_FDS), tells systemd when it is ready \
                       (NOTIFY_SOCKET) and exits after EASEL_IDLE_EXIT with nothing to do."
)]
struct Args {
    /// Socket to listen on (default: $EASEL_SOCKET, else $XDG_RUNTIME_DIR/easel/easeld.sock;
    /// a socket passed by systemd, LISTEN_FDS, comes first).
    #[arg(long)]
    socket: Option<std::path::PathBuf>,

    /// Print a shell completion script for easeld (bash, zsh, fish, …) and exit.
    #[arg(long, value_name = "SHELL", hide = true)]
    completions: Option<clap_complete::Shell>,

    /// Print the man page easeld.1 and exit.
    #[arg(long, hide = true)]
    manpage: bool,
}

/// What `--completions` and `--manpage` print (`cargo xtask dist` packs them).
fn generated_docs(args: &Args) -> anyhow::Result<Option<Vec<u8>>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "easeld", &mut out);
    } else if args.manpage {
        clap_mangen::Man::new(Args::command()).render(&mut out)?;
    } else {
        return Ok(None);
    }
    Ok(Some(out))
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
    if let Some(text) = generated_docs(&args)? {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        return out
            .write_all(&text)
            .and_then(|_| out.flush())
            .context("writing to standard output");
    }
    // First, while this is the only thread: both change the environment.
    // SAFETY: no thread has been started yet (the runtime and the logger come below).
    #[allow(unsafe_code)]
    unsafe {
        easeld::model::runtime::switch_off_telemetry()
    };
    let inherited = easeld::serve::activation::inherited_listener()?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = Config::load()?;
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if inherited.is_none() && config.idle_exit.take().is_some() {
        // A daemon nobody starts again on the next connection must not go away by itself.
        tracing::info!("idle_exit applies only to a socket-activated daemon; this one stays up");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The listener registers with the runtime, so bind inside it. Taking the socket first means
    // a second daemon fails fast, before loading anything.
    let (bound, listener) = {
        let _inside = runtime.enter();
        match inherited {
            Some(listener) => {
                let adopted = easeld::serve::socket::adopt(listener)?;
                tracing::info!(socket = %adopted.0.path.display(), "socket-activated: serving on the socket passed by the service manager");
                adopted
            }
            None => easeld::serve::socket::bind(&config.socket)?,
        }
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
    let options = easeld::serve::ServeOptions {
        idle_exit: config.idle_exit,
    };
    runtime.block_on(async move {
        // Before anything can answer a client: a SIGTERM sent as soon as the socket answers
        // must find the handler in place, not the default action (death).
        let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
        let daemon = Daemon::start(&config, ort).context("opening the model store")?;
        easeld::serve::run_with(listener, daemon, info, shutdown, options)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(flags: &[&str]) -> String {
        let args = Args::try_parse_from([&["easeld"][..], flags].concat()).unwrap();
        String::from_utf8(generated_docs(&args).unwrap().expect("something to print")).unwrap()
    }

    #[test]
    fn completions_and_the_man_page_describe_the_real_options() {
        for (shell, option) in [("bash", "--socket"), ("zsh", "--socket"), ("fish", "-l socket")] {
            let script = generated(&["--completions", shell]);
            assert!(script.contains(option), "{shell}: {script}");
        }
        let page = generated(&["--manpage"]);
        assert!(page.contains(".TH easeld 1") && page.contains("\\-\\-socket"), "{page}");
        assert!(
            !page.contains("manpage"),
            "the hidden flags stay out of the page: {page}"
        );
        assert!(
            generated_docs(&Args::try_parse_from(["easeld"]).unwrap())
                .unwrap()
                .is_none()
        );
    }
}
