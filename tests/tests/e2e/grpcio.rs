//! Stock grpcio, as plugins and scripts use it: a default channel on the socket, no options.
//! grpcio sends the socket path, percent-encoded, as `:authority`; the daemon must serve it
//! (see vendor/h2/PATCH.md), including a streamed Generate.

use easel_e2e::*;
use easel_proto::v1 as pb;
use prost::Message;

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn a_default_grpcio_channel_calls_status_health_and_a_streamed_generate() {
    let daemon = Daemon::start();
    let request = GenerateRequestBuilder::new("a red circle")
        .fixture("sd1-tiny")
        .steps(2)
        .seed(5)
        .build();
    let mut command = python_script("grpcio_default_channel.py");
    command.arg(&daemon.socket).arg(
        request
            .encode_to_vec()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    );
    let result = script_json(command, &daemon);
    assert!(
        result.get("error").is_none(),
        "a call failed: {result}\ndaemon log:\n{}",
        daemon.log_text()
    );
    assert!(
        result["grpcio"].as_str().unwrap().starts_with("1.85."),
        "the pinned grpcio: {result}"
    );

    let health = tonic_health::pb::HealthCheckResponse::decode(&unhex(result["health"].as_str().unwrap())[..]).unwrap();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let status = pb::StatusReply::decode(&unhex(result["status"].as_str().unwrap())[..]).unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));

    let events: Vec<pb::GenerateEvent> = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| pb::GenerateEvent::decode(&unhex(e.as_str().unwrap())[..]).unwrap())
        .collect();
    let image = events
        .iter()
        .find_map(|e| match &e.event {
            Some(pb::generate_event::Event::Image(image)) => Some(image),
            _ => None,
        })
        .expect("an image event");
    let (width, height, _) = read_png(&image.png);
    assert_eq!((width, height), (64, 64));
    assert!(
        matches!(
            events.last().and_then(|e| e.event.as_ref()),
            Some(pb::generate_event::Event::Finished(_))
        ),
        "the stream ends with Finished: {events:?}"
    );
}
