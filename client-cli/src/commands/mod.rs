//! The command line's shape (clap) and its dispatch to one module per command group.
//!
//! - [`generate`]: `easel generate`, with [`progress`] for the terminal display.
//! - [`info`]: `easel status`, `cancel`, `tokenize`, `models list`.
//! - [`daemon`]: `easel serve`, `easel daemon start|stop`.
//! - [`residency`]: `easel ps`, `load`, `unload`, `events`.
//! - [`store`]: `easel models show|rm|import`, `easel pull`.
//! - [`gateway`]: `easel gateway`, the HTTP APIs for existing apps.
//! - [`shell`]: `easel completions SHELL` and the hidden `easel manpages DIR`.
//!
//! Commands return `anyhow::Result`; `main` turns errors into `easel: error: …` and an exit
//! code ([`UsageError`]: 2, [`Interrupted`]: 130, [`StdoutClosed`]: 141, anything else: 1).

/// `println!` that returns [`StdoutClosed`] from the enclosing function instead of panicking.
/// (Defined before the modules so that they see it.)
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::write_stdout(format_args!($($arg)*))?
    };
}

pub mod daemon;
pub mod gateway;
pub mod generate;
pub mod info;
pub mod progress;
pub mod residency;
pub mod shell;
pub mod store;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Generate images with Stable Diffusion models on your own machine, through the easeld daemon.
#[derive(Debug, Parser)]
#[command(name = "easel", version, propagate_version = true)]
pub struct Cli {
    /// The daemon's socket [default: $EASEL_SOCKET, else $XDG_RUNTIME_DIR/easel/easeld.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Do not start the daemon when none is running
    #[arg(long, global = true, env = "EASEL_NO_AUTOSTART", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_autostart: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images from a text prompt
    Generate(Box<generate::GenerateArgs>),
    /// Show the daemon's version, device, queue and loaded models
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job
    Cancel {
        /// The job id (printed by `easel generate`, and in its --json events)
        job: String,
    },
    /// Show how a model's tokenizer splits a prompt
    Tokenize(info::TokenizeArgs),
    /// Manage models
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Download an ONNX Stable Diffusion model from a Hugging Face-compatible hub and install it
    /// (uses HF_ENDPOINT and HF_TOKEN from this shell)
    Pull(PullArgs),
    /// Show the models in memory, how much they take and until when
    Ps {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Load a model now and keep it in memory
    Load {
        /// An installed model's name or a model folder
        model: String,
        /// How long it stays after its last use, e.g. 5m, 1h, -1 (forever) [default: the daemon's, 5m]
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        keep_alive: Option<String>,
    },
    /// Unload a model now (after the job using it, if any)
    Unload {
        /// An installed model's name or a model folder
        model: String,
    },
    /// Print the daemon's events (jobs, models, imports) as they happen, until Ctrl-C
    Events {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground
    Serve,
    /// Serve the AUTOMATIC1111 and OpenAI image APIs over HTTP, for the apps and plugins that
    /// speak them (default http://127.0.0.1:7860)
    Gateway(gateway::GatewayArgs),
    /// Start or stop the background daemon
    Daemon {
        #[command(subcommand)]
        command: DaemonCommand,
    },
    /// Print a shell completion script, e.g. `easel completions bash > ~/.local/share/bash-completion/completions/easel`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write the man pages (easel.1 and one per subcommand) into a folder (used by `cargo xtask dist`)
    #[command(hide = true)]
    Manpages {
        /// The folder to write them into (created if missing)
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the installed models
    #[command(visible_alias = "ls")]
    List {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Show a model in full: family, prediction type, dtype, size, every part's inputs and
    /// outputs, its files, and (for a model imported from a flat bundle) how its configs were
    /// inferred
    Show {
        /// An installed model's name or a model folder
        model: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Install a model folder or an archive of one (.zip, .tar, .tar.gz, .tar.zst), after
    /// validating it: optimum's layout, or a flat bundle (text_encoder.onnx, unet.onnx,
    /// vae_decoder.onnx, vocab.json, merges.txt side by side), converted into it
    Import {
        /// The folder or archive
        path: PathBuf,
        /// Install under this name [default: the folder's or archive's name]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Replace an installed model of that name
        #[arg(long)]
        replace: bool,
        /// Show no progress
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        bundle: BundleArgs,
    },
    /// The same as `easel pull`
    Pull(PullArgs),
    /// Delete an installed model (refused while a job uses it)
    #[command(visible_alias = "remove")]
    Rm {
        /// The installed model's name
        name: String,
    },
}

/// What a flat bundle's graphs cannot say (refused for a model in optimum's layout).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BundleArgs {
    /// Flat bundles: the model family, when the UNet's text width does not tell it [default:
    /// from the UNet: 768 wide sd1, 1024 sd2, 2048 with SDXL's inputs sdxl]
    #[arg(long, value_name = "FAMILY", value_parser = ["sd1", "sd2", "sdxl"])]
    pub family: Option<String>,
    /// Flat bundles: what the UNet predicts [default: the family's: v_prediction for sd2 (its
    /// 768-pixel models), epsilon otherwise]
    #[arg(long, value_name = "TYPE", value_parser = ["epsilon", "v_prediction", "sample"])]
    pub prediction: Option<String>,
    /// Flat bundles: the model's default sampler [default: the family's: sd1 pndm, sd2 ddim,
    /// sdxl euler]
    #[arg(long, value_name = "NAME")]
    pub sampler: Option<String>,
    /// Flat bundles: the VAE's latent scaling factor [default: 0.18215, sdxl 0.13025]
    #[arg(long, value_name = "X")]
    pub vae_scaling_factor: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// OWNER/REPO, optionally @REVISION (a branch, tag or commit)
    pub reference: String,
    /// Install under this name [default: REPO]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Replace an installed model of that name
    #[arg(long)]
    pub replace: bool,
    /// Show no progress
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the daemon in the background (nothing to do if one is running)
    Start,
    /// Ask the daemon to stop, and wait until it has
    Stop,
}

/// Settings every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub socket: PathBuf,
    pub autostart: bool,
}

impl Global {
    pub fn from_cli(cli: &Cli) -> Self {
        Self {
            socket: cli.socket.clone().unwrap_or_else(easel_proto::paths::socket_path),
            autostart: !cli.no_autostart,
        }
    }
}

/// A mistake in how the command was called: exit code 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The user pressed Ctrl-C: exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; the job is cancelled")]
pub struct Interrupted;

/// Standard output was closed (e.g. `easel models list | head -1`): exit quietly.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes one line to stdout; a closed pipe is [`StdoutClosed`] instead of a panic.
pub fn write_stdout(line: fmt::Arguments<'_>) -> Result<(), StdoutClosed> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|_| StdoutClosed)
}

/// Runs the parsed command. `easel serve` replaces this process and never returns on success.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let global = Global::from_cli(&cli);
    let command = match cli.command {
        Command::Serve => return daemon::serve(&global),
        Command::Gateway(args) => return gateway::run(&global, args),
        Command::Completions { shell } => return shell::completions(shell),
        Command::Manpages { dir } => return shell::man_pages(&dir),
        command => command,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        match command {
            Command::Generate(args) => generate::run(&global, *args).await,
            Command::Status { json } => info::status(&global, json).await,
            Command::Cancel { job } => info::cancel(&global, &job).await,
            Command::Tokenize(args) => info::tokenize(&global, args).await,
            Command::Models { command } => match command {
                ModelsCommand::List { json } => info::models_list(&global, json).await,
                ModelsCommand::Show { model, json } => store::show(&global, &model, json).await,
                ModelsCommand::Import {
                    path,
                    name,
                    replace,
                    quiet,
                    bundle,
                } => store::import(&global, &path, name, replace, quiet, bundle).await,
                ModelsCommand::Rm { name } => store::remove(&global, &name).await,
                ModelsCommand::Pull(args) => store::pull(&global, args).await,
            },
            Command::Pull(args) => store::pull(&global, args).await,
            Command::Daemon {
                command: DaemonCommand::Start,
            } => daemon::start(&global).await,
            Command::Daemon {
                command: DaemonCommand::Stop,
            } => daemon::stop(&global).await,
            Command::Ps { json } => residency::ps(&global, json).await,
            Command::Load { model, keep_alive } => residency::load(&global, &model, keep_alive).await,
            Command::Unload { model } => residency::unload(&global, &model).await,
            Command::Events { json } => residency::events(&global, json).await,
            // They run their own way (exec, a multi-threaded runtime) or need no daemon: handled above.
            Command::Serve | Command::Gateway(_) | Command::Completions { .. } | Command::Manpages { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}

/// Connects, starting the daemon first when none runs and autostart is on (and saying so on
/// stderr, with the log's path).
pub async fn client(global: &Global) -> anyhow::Result<easel_client::EaselClient<easel_client::Channel>> {
    match easel_client::connect(&global.socket).await {
        Err(error) if error.is_no_daemon() && global.autostart => {
            let (client, started) = easel_client::start_daemon(&global.socket).await?;
            eprintln!(
                "easel: started easeld (pid {}); its log is {}",
                started.pid,
                started.log.display()
            );
            Ok(client)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pull_is_a_command_and_a_models_subcommand() {
        for args in [
            &["easel", "pull", "o/r@v1", "--name", "n"][..],
            &["easel", "models", "pull", "o/r@v1", "--name", "n"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let pull = match cli.command {
                Command::Pull(pull)
                | Command::Models {
                    command: ModelsCommand::Pull(pull),
                } => pull,
                other => panic!("{other:?}"),
            };
            assert_eq!((pull.reference.as_str(), pull.name.as_deref()), ("o/r@v1", Some("n")));
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from(["easel", "status", "--socket", "/tmp/x.sock", "--no-autostart"]).unwrap();
        let global = Global::from_cli(&cli);
        assert_eq!(global.socket, PathBuf::from("/tmp/x.sock"));
        assert!(!global.autostart);
        let cli = Cli::try_parse_from(["easel", "--socket", "/tmp/y.sock", "models", "list", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Models {
                command: ModelsCommand::List { json: true }
            }
        ));
        assert_eq!(Global::from_cli(&cli).socket, PathBuf::from("/tmp/y.sock"));
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(
            Cli::try_parse_from(["easel", "daemon", "start"]).unwrap().command,
            Command::Daemon {
                command: DaemonCommand::Start
            }
        ));
        assert!(matches!(
            Cli::try_parse_from(["easel", "serve"]).unwrap().command,
            Command::Serve
        ));
        match Cli::try_parse_from(["easel", "cancel", "job-1"]).unwrap().command {
            Command::Cancel { job } => assert_eq!(job, "job-1"),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["easel", "daemon"]).is_err());
        assert!(Cli::try_parse_from(["easel", "generate"]).is_err());
    }
}
