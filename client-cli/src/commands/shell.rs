//! `easel completions SHELL` and the hidden `easel manpages DIR`: shell completions and man
//! pages generated from the clap definitions, so they can never drift from the command line
//! they describe. `cargo xtask dist` runs both for the release tarball; a source install can
//! run them by hand.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, StdoutClosed};

/// The completion script for `shell`, for `easel` (the name it completes).
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "easel", &mut script);
    script
}

/// Prints the completion script; a closed pipe is [`StdoutClosed`], not a panic.
pub fn completions(shell: Shell) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(&completion_script(shell))
        .and_then(|_| out.flush())
        .map_err(|_| StdoutClosed)?;
    Ok(())
}

/// Writes `easel.1` and one page per visible subcommand (`easel-generate.1`, …) into `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_real_subcommands_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            for word in ["generate", "status", "models", "gateway", "socket"] {
                assert!(script.contains(word), "{shell} completions lack `{word}`");
            }
        }
    }

    #[test]
    fn man_pages_cover_the_command_and_its_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        let main = std::fs::read_to_string(dir.path().join("easel.1")).unwrap();
        assert!(main.contains(".TH easel 1") && main.contains("generate"), "{main}");
        let generate = std::fs::read_to_string(dir.path().join("easel-generate.1")).unwrap();
        assert!(generate.contains("\\-\\-model"), "{generate}");
        // The hidden generator itself gets no page.
        assert!(!dir.path().join("easel-manpages.1").exists());
    }
}
