//! `easel serve` and `easel daemon start|stop`.
//!
//! - `serve` replaces this process with the daemon (`exec`), in the foreground.
//! - `daemon start` uses the same launcher as autostart; a running daemon is not an error.
//! - `daemon stop` calls `Shutdown` and waits until the daemon has removed its socket or its
//!   process has ended (a socket-activated daemon leaves systemd's socket in place); no daemon
//!   is not an error either.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use easel_client::pb;

use super::Global;

/// How long `easel daemon stop` waits for the daemon to go away.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn serve(global: &Global) -> anyhow::Result<()> {
    let binary = easel_client::daemon_binary()?;
    let error = std::process::Command::new(&binary)
        .arg("--socket")
        .arg(&global.socket)
        .exec();
    Err(error).with_context(|| format!("cannot run the daemon binary {}", binary.display()))
}

pub async fn start(global: &Global) -> anyhow::Result<()> {
    match easel_client::connect(&global.socket).await {
        Ok(mut client) => {
            let status = client.get_status(pb::StatusRequest {}).await?.into_inner();
            outln!(
                "easeld is already running (pid {}) on {}",
                status.pid,
                global.socket.display()
            );
        }
        Err(error) if error.is_no_daemon() => {
            let (_client, started) = easel_client::start_daemon(&global.socket).await?;
            outln!(
                "started easeld (pid {}) on {}; its log is {}",
                started.pid,
                global.socket.display(),
                started.log.display()
            );
        }
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

pub async fn stop(global: &Global) -> anyhow::Result<()> {
    let mut client = match easel_client::connect(&global.socket).await {
        Ok(client) => client,
        Err(error) if error.is_no_daemon() => {
            outln!("no easeld is running on {}", global.socket.display());
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let pid = client
        .get_status(pb::StatusRequest {})
        .await
        .ok()
        .map(|s| s.into_inner().pid);
    client.shutdown(pb::ShutdownRequest {}).await?;
    drop(client);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while global.socket.exists() && !pid.is_some_and(has_exited) {
        if Instant::now() >= deadline {
            let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            anyhow::bail!(
                "easeld{pid} was asked to stop but still serves {} after {} s; it may be finishing a job (see {}), or stop it with `kill`",
                global.socket.display(),
                STOP_TIMEOUT.as_secs(),
                easel_client::log_path(&global.socket).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match pid {
        Some(pid) => outln!("stopped easeld (pid {pid})"),
        None => outln!("stopped easeld"),
    }
    Ok(())
}

/// Whether process `pid` has ended: gone, or a zombie its parent has not yet reaped (as a
/// daemon started by a test or a shell is until then).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        // No /proc (macOS), or no such process: ask the kernel.
        Err(_) => {
            let Ok(raw) = i32::try_from(pid) else { return true };
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
                Err(nix::errno::Errno::ESRCH)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::has_exited;

    #[test]
    fn a_live_process_has_not_exited_and_a_reaped_one_has() {
        assert!(!has_exited(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Ended but not yet reaped: a zombie counts as gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "`true` never ended");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(has_exited(pid));
    }
}
