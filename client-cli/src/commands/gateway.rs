//! `easel gateway`: serves AUTOMATIC1111's and OpenAI's image APIs over HTTP for the apps that
//! speak them (see the `easel-gateway` crate), as a client of the daemon on the usual socket.
//!
//! It connects first (starting the daemon unless told not to), then binds, prints the address
//! it serves on, and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

use super::{Global, UsageError};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address and port to listen on; beyond loopback a token is required
    #[arg(long, env = "EASEL_GATEWAY_LISTEN", default_value = easel_gateway::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Token every request must carry (`Authorization: Bearer TOKEN`, or HTTP Basic auth with it
    /// as the password)
    #[arg(long, env = "EASEL_GATEWAY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// A `Host` name to accept besides localhost and IP addresses (repeatable), e.g. a LAN name
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,

    /// A web page origin allowed to call the gateway from a browser (repeatable), e.g.
    /// http://localhost:3000
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// The largest request body, e.g. 100MiB [default: what an img2img at the daemon's default
    /// largest size needs, as base64]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_body: Option<usize>,

    /// Generation requests open at once; more are answered 429 (Too Many Requests)
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_generations: u16,
}

/// `123`, `64KiB`, `100MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 100MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use B, KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a usable size"))
}

pub fn run(global: &Global, args: GatewayArgs) -> anyhow::Result<()> {
    let token = args.token.filter(|t| !t.is_empty());
    let mut config = easel_gateway::Config {
        token,
        allowed_hosts: args.allowed_hosts,
        allowed_origins: args.allowed_origins,
        max_generations: usize::from(args.max_generations),
        ..Default::default()
    };
    if let Some(max_body) = args.max_body {
        config.max_body_bytes = max_body;
    }
    if !easel_gateway::is_loopback(args.listen.ip()) && config.token.is_none() {
        return Err(UsageError(format!(
            "refusing to listen on {} without a token: anyone who can reach it could use your models; \
             pass --token (or set EASEL_GATEWAY_TOKEN), or listen on 127.0.0.1",
            args.listen
        ))
        .into());
    }
    // Many HTTP clients at once: a runtime with worker threads, unlike the other commands.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal().context("installing the SIGTERM handler")?;
        let client = super::client(global).await?;
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (is another program using that port? pick another with --listen)",
                args.listen
            )
        })?;
        let address = listener.local_addr()?;
        outln!(
            "easel gateway: listening on http://{address} (AUTOMATIC1111 API at /sdapi/v1, OpenAI images API at /v1){}",
            if config.token.is_some() {
                "; requests need the token"
            } else {
                ""
            }
        );
        easel_gateway::run(listener, client, config, shutdown).await?;
        Ok(())
    })
}

/// Ctrl-C or SIGTERM (how service managers stop it); the handlers are installed at once, so
/// a signal that comes before the gateway serves still stops it cleanly.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn by_default_it_listens_on_loopback_at_a1111s_port_without_a_token() {
        let cli = super::super::Cli::try_parse_from(["easel", "gateway"]).unwrap();
        let super::super::Command::Gateway(args) = cli.command else {
            panic!("parsed as another command");
        };
        if std::env::var_os("EASEL_GATEWAY_LISTEN").is_none() {
            assert_eq!(args.listen, "127.0.0.1:7860".parse().unwrap());
            assert!(easel_gateway::is_loopback(args.listen.ip()));
        }
        assert_eq!(args.max_generations, 32);
        assert!(super::super::Cli::try_parse_from(["easel", "gateway", "--max-generations", "0"]).is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("5000"), Ok(5000));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1PiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
