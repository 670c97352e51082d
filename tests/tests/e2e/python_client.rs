//! The Python client library (clients/python, installed into the test venv by `cargo xtask test`)
//! against the real daemon: tests/python/easel_client_check.py drives status, models, a streamed
//! generate with latents and previews, cancel by id and by dropping the stream, WatchEvents,
//! and the errors (a bad request, a missing socket), asserting as it goes.

use easel_e2e::*;

#[test]
fn the_python_client_library_generates_cancels_watches_and_reports_errors() {
    let daemon = Daemon::start();
    let mut command = python_script("easel_client_check.py");
    command.arg(&daemon.socket);
    let result = script_json(command, &daemon);
    assert_eq!(
        result["ok"],
        serde_json::Value::Bool(true),
        "{result}\ndaemon log:\n{}",
        daemon.log_text()
    );
}
