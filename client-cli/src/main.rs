//! `easel`: the command line of the easel image generator. Parses arguments, runs the
//! command (see `commands`) and turns errors into `easel: error: …` and an exit code.

mod commands;

use std::process::ExitCode;

use clap::Parser;

use commands::{Cli, Interrupted, StdoutClosed, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<StdoutClosed>() => ExitCode::from(141),
        Err(error) => {
            eprintln!("easel: error: {}", describe(&error));
            if error.is::<UsageError>() {
                ExitCode::from(2)
            } else if error.is::<Interrupted>() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The daemon's own message for gRPC errors; the cause chain for local ones.
fn describe(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return describe_status(status);
    }
    format!("{error:#}")
}

fn describe_status(status: &tonic::Status) -> String {
    use std::error::Error;
    // A status built from a broken connection carries the transport error as its source; one
    // the daemon sent does not.
    if let Some(cause) = status.source() {
        return format!(
            "lost the connection to the daemon ({}: {cause}); if it stopped, its log (easeld.log beside the socket) may say why",
            status.message()
        );
    }
    if status.message().is_empty() {
        return format!("the daemon answered with {:?} and no message", status.code());
    }
    // The daemon explains its own limit; a message straight from tonic (an older daemon) does not.
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
        && !status.message().contains("max_pixels")
    {
        return format!(
            "the request is larger than the daemon accepts ({}); its limit follows from max_pixels \
             (an init image and a mask at that size): send smaller pictures, or raise max_pixels in the daemon's config",
            status.message()
        );
    }
    status.message().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_print_their_message() {
        let error = anyhow::Error::from(tonic::Status::not_found("no model named `x`; install one"));
        assert_eq!(describe(&error), "no model named `x`; install one");
        let empty = anyhow::Error::from(tonic::Status::internal(""));
        assert!(describe(&empty).contains("Internal"));
    }

    #[test]
    fn an_oversized_request_names_the_limit_and_the_fix() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 90000000 bytes, the limit is: 71303168 bytes",
        );
        let message = describe(&anyhow::Error::from(status));
        assert!(
            message.contains("71303168") && message.contains("max_pixels"),
            "{message}"
        );
    }

    #[test]
    fn local_errors_print_their_causes() {
        let error = anyhow::Error::from(std::io::Error::other("disk full")).context("cannot write out.png");
        assert_eq!(describe(&error), "cannot write out.png: disk full");
    }
}
