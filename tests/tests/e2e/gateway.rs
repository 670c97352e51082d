//! The HTTP gateway (`easel gateway`) in front of the real daemon: the real `webuiapi` and
//! `openai` packages drive it unchanged; its guards (Host, Origin, token, listen address, body
//! size) hold; bad input gets each API's error shape with the daemon's words and the daemon keeps
//! serving; a client that hangs up cancels its job.

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;
use serde_json::{Value, json};

/// Runs a Python client script against `gateway`; returns its JSON line, checked `ok`.
fn run_client(script: &str, gateway: &Gateway, daemon: &Daemon, extra: &[&str]) -> Value {
    let mut command = python_script(script);
    command.arg(gateway.base_url()).args(extra);
    let result = script_json(command, daemon);
    assert_eq!(result["ok"], true, "{result}");
    result
}

#[test]
fn the_webuiapi_package_drives_the_gateway_unchanged() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &[]);
    let result = run_client("gateway_webuiapi.py", &gateway, &daemon, &[]);
    assert_eq!(result["models"], json!(["tiny-shapes"]));
    assert_eq!(result["txt2img_info"]["all_seeds"], json!([1234, 1235]));
    assert_eq!(result["interrupted"], true);
    // The daemon is still there for the next client.
    assert!(daemon.easel(&["status"]).status.success());
}

#[test]
fn the_openai_package_drives_the_gateway_unchanged() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &[]);
    let result = run_client("gateway_openai.py", &gateway, &daemon, &[]);
    assert_eq!(result["generate"], 2);
    assert!(
        result["bad_size"].as_str().unwrap().contains("try 96 or 128"),
        "the daemon's own message: {result}"
    );
}

#[test]
fn with_a_token_every_request_needs_it_as_bearer_or_basic_auth() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &["--token", "s3cret-token"]);
    // The real clients, with their own ways of sending it.
    run_client("gateway_openai.py", &gateway, &daemon, &["s3cret-token"]);
    run_client("gateway_webuiapi.py", &gateway, &daemon, &["s3cret-token"]);

    let missing = gateway.get("/sdapi/v1/sd-models");
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").unwrap().starts_with("Basic"));
    assert!(missing.json()["detail"].as_str().unwrap().contains("token"));
    let wrong = gateway.request("GET", "/v1/models", &[("Authorization", "Bearer nope")], b"");
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["type"], "authentication_error");
    let bearer = gateway.request("GET", "/v1/models", &[("Authorization", "Bearer s3cret-token")], b"");
    assert_eq!(bearer.status, 200, "{}", bearer.text());
    // base64("anyone:s3cret-token")
    let basic = gateway.request(
        "GET",
        "/sdapi/v1/sd-models",
        &[("Authorization", "Basic YW55b25lOnMzY3JldC10b2tlbg==")],
        b"",
    );
    assert_eq!(basic.status, 200, "{}", basic.text());
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let daemon = Daemon::start();
    let refused = daemon.easel(&["gateway", "--listen", "0.0.0.0:0"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--token"), "{}", stderr(&refused));
    let with_env_token = daemon
        .easel_command(&["gateway", "--listen", "0.0.0.0:0", "--max-body", "nonsense"])
        .env("EASEL_GATEWAY_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(with_env_token.status.code(), Some(2), "a bad size is a usage error");
    assert!(stderr(&with_env_token).contains("nonsense"));

    // With a token it listens on every address, and wants the token there.
    let gateway = Gateway::start_on(&daemon, "0.0.0.0:0", &["--token", "t0k"]);
    assert!(gateway.address.ip().is_unspecified(), "{}", gateway.address);
    let reachable = std::net::SocketAddr::from(([127, 0, 0, 1], gateway.address.port()));
    assert_eq!(http(reachable, "GET", "/v1/models", &[], b"").status, 401);
    let with_token = http(reachable, "GET", "/v1/models", &[("Authorization", "Bearer t0k")], b"");
    assert_eq!(with_token.status, 200, "{}", with_token.text());
}

#[test]
fn foreign_hosts_and_origins_are_refused_and_configured_ones_get_exact_cors() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(
        &daemon,
        &["--allow-origin", "http://localhost:3000", "--allow-host", "studio.lan"],
    );
    let port = gateway.address.port();

    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own name as Host.
    let rebound = gateway.request(
        "GET",
        "/sdapi/v1/sd-models",
        &[("Host", &format!("evil.example:{port}"))],
        b"",
    );
    assert_eq!(rebound.status, 403);
    assert!(rebound.json()["detail"].as_str().unwrap().contains("DNS rebinding"));
    let rebound = gateway.request("GET", "/v1/models", &[("Host", "evil.example")], b"");
    assert_eq!(rebound.status, 403);
    assert_eq!(rebound.json()["error"]["code"], "forbidden_host");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "studio.lan".to_string(),
    ] {
        let ok = gateway.request("GET", "/sdapi/v1/sd-models", &[("Host", &host)], b"");
        assert_eq!(ok.status, 200, "Host {host}: {}", ok.text());
    }

    // CSRF: a page from another origin posting a job.
    let body = json!({"prompt": "x", "steps": 1, "width": 64, "height": 64}).to_string();
    let forged = gateway.request(
        "POST",
        "/sdapi/v1/txt2img",
        &[("Origin", "https://evil.example"), ("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!(forged.status, 403);
    assert!(forged.header("access-control-allow-origin").is_none());
    let preflight = gateway.request(
        "OPTIONS",
        "/v1/images/generations",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(preflight.status, 403);
    assert!(preflight.header("access-control-allow-origin").is_none());

    // A configured origin gets CORS for exactly itself, never `*`.
    let preflight = gateway.request(
        "OPTIONS",
        "/v1/images/generations",
        &[
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        b"",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    let allowed = gateway.request("GET", "/v1/models", &[("Origin", "http://localhost:3000")], b"");
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let plain = gateway.get("/v1/models");
    assert!(plain.header("access-control-allow-origin").is_none());
}

/// One bad request: where it goes, what it sends, the status and a piece of the message.
struct Bad {
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    says: &'static str,
}

fn png_base64(width: u32, height: u32) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.png");
    write_png(&path, width, height, &vec![128; (width * height * 3) as usize]);
    STANDARD.encode(std::fs::read(path).unwrap())
}

#[test]
fn bad_input_gets_each_apis_error_shape_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &["--max-body", "256KiB"]);
    let picture = png_base64(64, 64);
    let other_size = png_base64(32, 32);
    let table = [
        Bad {
            what: "a size the model cannot draw",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "width": 100, "height": 64, "steps": 1}),
            status: 422,
            says: "multiple of 32",
        },
        Bad {
            what: "an unknown sampler",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "sampler_name": "DPM++ SDE", "steps": 1}),
            status: 422,
            says: "no sampler named `DPM++ SDE`",
        },
        Bad {
            what: "an unknown schedule",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "sampler_name": "Euler", "scheduler": "Exponential"}),
            status: 422,
            says: "no `Exponential` schedule",
        },
        Bad {
            what: "hires fix",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "enable_hr": true}),
            status: 422,
            says: "hires fix",
        },
        Bad {
            what: "steps as text",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "steps": "many"}),
            status: 422,
            says: "steps must be a number",
        },
        Bad {
            what: "an unknown checkpoint",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}),
            status: 404,
            says: "installed: tiny-shapes",
        },
        Bad {
            what: "a batch beyond the daemon's limit",
            path: "/sdapi/v1/txt2img",
            body: json!({"prompt": "x", "batch_size": 10, "n_iter": 10, "steps": 1, "width": 64, "height": 64}),
            status: 422,
            says: "count",
        },
        Bad {
            what: "broken base64",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x", "init_images": ["data:image/png;base64,@@@@"]}),
            status: 400,
            says: "not valid base64",
        },
        Bad {
            what: "not a picture",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x", "init_images": [STANDARD.encode(b"hello, not a picture")], "steps": 1}),
            status: 422,
            says: "init",
        },
        Bad {
            what: "a mask of another size",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x", "init_images": [picture], "mask": other_size, "steps": 1}),
            status: 422,
            says: "mask",
        },
        Bad {
            what: "no init image",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x"}),
            status: 422,
            says: "init_images",
        },
        Bad {
            what: "a strength of 2",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x", "init_images": [picture], "denoising_strength": 2}),
            status: 422,
            says: "denoising_strength",
        },
        Bad {
            what: "a body over the limit",
            path: "/sdapi/v1/img2img",
            body: json!({"prompt": "x", "init_images": ["A".repeat(400 << 10)]}),
            status: 413,
            says: "--max-body",
        },
        Bad {
            what: "png-info of a non-picture",
            path: "/sdapi/v1/png-info",
            body: json!({"image": STANDARD.encode(b"plain text")}),
            status: 400,
            says: "not a PNG or JPEG",
        },
        Bad {
            what: "switching to an unknown checkpoint",
            path: "/sdapi/v1/options",
            body: json!({"sd_model_checkpoint": "nope"}),
            status: 404,
            says: "no model named `nope`",
        },
        Bad {
            what: "OpenAI: a bad size",
            path: "/v1/images/generations",
            body: json!({"prompt": "x", "size": "100x100"}),
            status: 400,
            says: "multiple of 32",
        },
        Bad {
            what: "OpenAI: a malformed size",
            path: "/v1/images/generations",
            body: json!({"prompt": "x", "size": "big"}),
            status: 400,
            says: "WIDTHxHEIGHT",
        },
        Bad {
            what: "OpenAI: an unknown model",
            path: "/v1/images/generations",
            body: json!({"prompt": "x", "model": "sd-xl-nope"}),
            status: 404,
            says: "installed: tiny-shapes",
        },
        Bad {
            what: "OpenAI: no prompt",
            path: "/v1/images/generations",
            body: json!({"n": 1}),
            status: 400,
            says: "prompt is required",
        },
        Bad {
            what: "OpenAI: too many images",
            path: "/v1/images/generations",
            body: json!({"prompt": "x", "n": 50}),
            status: 400,
            says: "between 1 and 10",
        },
        Bad {
            what: "OpenAI: an edit that is not a form",
            path: "/v1/images/edits",
            body: json!({"prompt": "x"}),
            status: 400,
            says: "multipart/form-data",
        },
    ];
    for bad in &table {
        let response = gateway.post_json(bad.path, &bad.body);
        assert_eq!(response.status, bad.status, "{}: {}", bad.what, response.text());
        let body = response.json();
        let message = if bad.path.starts_with("/v1/") {
            assert!(
                body["error"]["type"].is_string(),
                "{}: OpenAI's shape: {body}",
                bad.what
            );
            body["error"]["message"].as_str().unwrap_or_default().to_string()
        } else {
            assert!(
                body["error"].is_string() && body["errors"].is_string(),
                "{}: A1111's shape: {body}",
                bad.what
            );
            body["detail"].as_str().unwrap_or_default().to_string()
        };
        assert!(
            message.contains(bad.says),
            "{}: `{message}` should say `{}`",
            bad.what,
            bad.says
        );
    }
    // Not JSON at all, and an unknown endpoint.
    let garbage = gateway.request(
        "POST",
        "/sdapi/v1/txt2img",
        &[("Content-Type", "application/json")],
        b"{nope",
    );
    assert_eq!(garbage.status, 422);
    assert!(garbage.json()["detail"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(gateway.get("/sdapi/v1/nothing-here").status, 404);
    assert_eq!(
        gateway.get("/v1/nothing-here").json()["error"]["type"],
        "not_found_error"
    );

    // An OpenAI edit whose mask is another size than its image.
    let boundary = "easelboundary";
    let mut form = Vec::new();
    for (name, file, bytes) in [
        ("image", "i.png", STANDARD.decode(png_base64(64, 64)).unwrap()),
        ("mask", "m.png", STANDARD.decode(png_base64(32, 32)).unwrap()),
    ] {
        write!(
            form,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .unwrap();
        form.extend_from_slice(&bytes);
        form.extend_from_slice(b"\r\n");
    }
    write!(
        form,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n--{boundary}--\r\n"
    )
    .unwrap();
    let mismatched = gateway.request(
        "POST",
        "/v1/images/edits",
        &[("Content-Type", &format!("multipart/form-data; boundary={boundary}"))],
        &form,
    );
    assert_eq!(mismatched.status, 400, "{}", mismatched.text());
    assert!(
        mismatched.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same size")
    );

    // After all that, both APIs still generate.
    let ok = gateway.post_json(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a red circle", "steps": 1, "width": 64, "height": 64}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["images"].as_array().unwrap().len(), 1);
    let ok = gateway.post_json(
        "/v1/images/generations",
        &json!({"prompt": "a red circle", "size": "64x64"}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_job() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &[]);
    let mut client = daemon.client().await;
    let mut events = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();

    let body = json!({"prompt": "a slow picture", "steps": 400, "width": 256, "height": 256}).to_string();
    let mut connection = std::net::TcpStream::connect(gateway.address).unwrap();
    connection
        .write_all(&gateway::request_bytes(
            gateway.address,
            "POST",
            "/sdapi/v1/txt2img",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ))
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut job_id = None;
    let mut cancelled = false;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline.into(), events.next()).await {
        let Some(pb::daemon_event::Event::Job(job)) = event.unwrap().event else {
            continue;
        };
        match job.state.as_str() {
            "progress" if job_id.is_none() => {
                job_id = Some(job.job_id.clone());
                // The HTTP client goes away mid-job.
                connection.shutdown(std::net::Shutdown::Both).unwrap();
            }
            "cancelled" if job_id.as_deref() == Some(job.job_id.as_str()) => {
                cancelled = true;
                break;
            }
            "finished" => panic!("the job ran to its end although its client hung up"),
            _ => {}
        }
    }
    assert!(job_id.is_some(), "the job started; daemon log:\n{}", daemon.log_text());
    assert!(cancelled, "the job was cancelled; daemon log:\n{}", daemon.log_text());
    let progress = gateway.get("/sdapi/v1/progress").json();
    assert_eq!(progress["state"]["job_count"], 0, "{progress}");
}

#[test]
fn generations_beyond_the_gateways_limit_are_refused_before_their_bodies_are_read() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &["--max-generations", "1"]);
    let address = gateway.address;
    let slow = std::thread::spawn(move || {
        let body = json!({"prompt": "a slow picture", "steps": 400, "width": 256, "height": 256});
        http(
            address,
            "POST",
            "/sdapi/v1/txt2img",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0 {
        assert!(Instant::now() < deadline, "the slow job started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = gateway.post_json("/v1/images/generations", &json!({"prompt": "x", "size": "64x64"}));
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    // Reading progress and interrupting are not generations: they still get through.
    assert_eq!(gateway.request("POST", "/sdapi/v1/interrupt", &[], b"").status, 200);
    let interrupted = slow.join().unwrap();
    assert_eq!(interrupted.status, 200, "{}", interrupted.text());
    let info: Value = serde_json::from_str(interrupted.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    let ok = gateway.post_json("/v1/images/generations", &json!({"prompt": "x", "size": "64x64"}));
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn a1111_requests_can_name_their_checkpoint_and_leave_the_images_out() {
    let daemon = Daemon::start();
    let gateway = Gateway::start(&daemon, &[]);
    let body = json!({
        "prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "seed": 9,
        "send_images": false,
        "override_settings": {"sd_model_checkpoint": "tiny-shapes [0123456789]"},
    });
    let answer = gateway.post_json("/sdapi/v1/txt2img", &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(answer["images"], json!([]));
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([9]));
    assert_eq!(info["sd_model_name"], "tiny-shapes");
    assert_eq!(answer["parameters"]["send_images"], false, "the request is echoed");
}

/// An SDXL model through both HTTP APIs: listed by A1111's `sd-models`, drawn at its own size
/// when the request names no size, named in the answer; OpenAI's `model` picks it too; A1111's
/// second-stage refiner takes over an SDXL picture.
#[test]
fn sdxl_models_serve_through_both_http_apis() {
    let daemon = Daemon::start();
    let model = fixture_model("sdxl-tiny");
    let import = daemon.easel(&["models", "import", model.to_str().unwrap(), "--name", "xl"]);
    assert!(import.status.success(), "{}", stderr(&import));
    let gateway = Gateway::start(&daemon, &[]);
    let listed = gateway.request("GET", "/sdapi/v1/sd-models", &[], b"");
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(
        listed
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model_name"] == "xl"),
        "{}",
        listed.text()
    );
    let body = json!({
        "prompt": "a red circle", "steps": 2, "seed": 3,
        "override_settings": {"sd_model_checkpoint": "xl"},
    });
    let answer = gateway.post_json("/sdapi/v1/txt2img", &body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let info: Value = serde_json::from_str(answer["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "xl");
    let png = STANDARD.decode(answer["images"][0].as_str().unwrap()).unwrap();
    let (width, height, _) = read_png(&png);
    assert_eq!(
        (width, height),
        (64, 64),
        "sdxl-tiny's own size: UNet sample 8 × VAE factor 8"
    );

    let openai = gateway.post_json(
        "/v1/images/generations",
        &json!({"prompt": "a red circle", "model": "xl", "size": "64x64", "response_format": "b64_json"}),
    );
    assert_eq!(openai.status, 200, "{}", openai.text());

    // A1111's refiner: `refiner_checkpoint` takes over at `refiner_switch_at`; the infotext
    // names it. A switch of 1 is A1111's "never"; an unknown checkpoint is a 404.
    let refiner = fixture_model("sdxl-refiner-tiny");
    let import = daemon.easel(&["models", "import", refiner.to_str().unwrap(), "--name", "refiner"]);
    assert!(import.status.success(), "{}", stderr(&import));
    let refine = |extra: Value| {
        let mut body = json!({"prompt": "a lighthouse", "steps": 4, "seed": 3, "sampler_name": "Euler",
                              "override_settings": {"sd_model_checkpoint": "xl"}});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        gateway.post_json("/sdapi/v1/txt2img", &body)
    };
    let refined = refine(json!({"refiner_checkpoint": "refiner", "refiner_switch_at": 0.5}));
    assert_eq!(refined.status, 200, "{}", refined.text());
    let refined = refined.json();
    let info: Value = serde_json::from_str(refined["info"].as_str().unwrap()).unwrap();
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(
        infotext.contains("Refiner: refiner, Refiner switch at: 0.5"),
        "{infotext}"
    );
    let never = refine(json!({"refiner_checkpoint": "refiner", "refiner_switch_at": 1.0}));
    assert_eq!(never.status, 200, "{}", never.text());
    let plain = refine(json!({"refiner_checkpoint": "None"}));
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(
        never.json()["images"],
        plain.json()["images"],
        "a switch at 1 never refines"
    );
    assert_ne!(refined["images"], plain.json()["images"], "the refiner changed nothing");
    let unknown = refine(json!({"refiner_checkpoint": "nosuch", "refiner_switch_at": 0.8}));
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let bad = refine(json!({"refiner_checkpoint": "refiner", "refiner_switch_at": 0}));
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert!(bad.text().contains("refiner switch"), "{}", bad.text());
}
