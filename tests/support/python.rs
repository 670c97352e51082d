//! The real Python clients the tests drive (stock grpcio today), from the virtual environment
//! `cargo xtask test` makes with `tests/python/requirements.txt`.

use std::path::PathBuf;
use std::process::Command;

use crate::{Daemon, bin_dir, repo_root};

/// The Python with the test requirements: `$EASEL_TEST_PYTHON` (set by `cargo xtask test`),
/// else the environment xtask left in the target folder. Panics with what to run when neither
/// exists: these tests are part of the suite, not optional.
pub fn test_python() -> PathBuf {
    if let Some(path) = std::env::var_os("EASEL_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    // bin_dir() is <target>/debug.
    let made = bin_dir().parent().map(|target| target.join("py-test/bin/python"));
    match made {
        Some(python) if python.is_file() => python,
        _ => panic!(
            "the real-client tests need Python with tests/python/requirements.txt: run `cargo xtask test` once \
             (it makes <target>/py-test), or set EASEL_TEST_PYTHON to a Python that has them"
        ),
    }
}

/// `python tests/python/SCRIPT args…`, ready to run.
pub fn python_script(script: &str) -> Command {
    let mut command = Command::new(test_python());
    command.arg(repo_root().join("tests/python").join(script));
    command
}

/// Runs a client script that prints one JSON object as its last line, and returns it; a
/// script that fails panics with its output and `daemon`'s log.
pub fn script_json(mut command: Command, daemon: &Daemon) -> serde_json::Value {
    let output = command.output().expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log_text()
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("a JSON line last from {command:?}: {stdout}"))
}
