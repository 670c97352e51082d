//! Residency through the daemon: keep-alive (per request and by hand: `easel load`, `unload`,
//! `ps`), the memory budget (eviction of idle models, RESOURCE_EXHAUSTED for a model larger
//! than the budget), WatchEvents, and the fair queue between clients. The residency logic
//! itself is unit-tested with a fake backend in `daemon/src/residency.rs`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;

fn ps(daemon: &Daemon) -> serde_json::Value {
    let output = daemon.easel(&["ps", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn resident_names(daemon: &Daemon) -> Vec<String> {
    ps(daemon)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn keep_alive_decides_how_long_a_model_stays() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let model = fixture_model("sd1-tiny");
    let model = model.to_str().unwrap();

    // keep-alive 0: unloaded as soon as the job is done.
    let output = daemon.generate_tiny("a boat", &["--steps", "2", "--keep-alive", "0"], &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(resident_names(&daemon).is_empty(), "{}", ps(&daemon));

    // The default: five minutes from the end of the job, with its memory measured.
    let output = daemon.generate_tiny("a boat", &["--steps", "2"], &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let listed = ps(&daemon);
    let resident = &listed["models"][0];
    assert_eq!(resident["name"], "sd1-tiny");
    assert_eq!(resident["in_use"], 0);
    assert!(resident["memory_bytes"].as_u64().unwrap() > 0, "{listed}");
    let left = resident["expires_unix_ms"].as_i64().unwrap() - now_ms();
    assert!((240_000..=300_000).contains(&left), "expires in {left} ms");
    assert_eq!(listed["used_bytes"], resident["memory_bytes"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&daemon.easel(&["status", "--json"]))).unwrap();
    assert_eq!(status["memory_used_bytes"], listed["used_bytes"]);
    assert_eq!(status["memory_budget_bytes"], listed["budget_bytes"]);
    assert!(status["memory_budget_bytes"].as_u64().unwrap() > 0);

    // By hand: forever, then gone.
    let output = daemon.easel(&["load", model, "--keep-alive", "-1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("forever"), "{}", stdout(&output));
    assert!(ps(&daemon)["models"][0]["expires_unix_ms"].is_null());
    let output = daemon.easel(&["unload", model]);
    assert!(
        output.status.success() && stdout(&output).contains("unloaded"),
        "{}",
        stdout(&output)
    );
    assert!(resident_names(&daemon).is_empty());

    // A short keep-alive runs out on its own.
    let output = daemon.generate_tiny("a boat", &["--steps", "2", "--keep-alive", "1s"], &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !resident_names(&daemon).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the model outlived its keep-alive: {}",
            ps(&daemon)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let output = daemon.generate_tiny("a boat", &["--keep-alive", "soon"], &out);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not a duration"), "{}", stderr(&output));
}

async fn next_model_event(events: &mut tonic::Streaming<pb::DaemonEvent>, state: &str) -> pb::ModelEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no model {state} event"))
            .expect("the event stream ended")
            .unwrap();
        if let Some(pb::daemon_event::Event::Model(m)) = event.event
            && m.state == state
        {
            return m;
        }
    }
}

/// Loads fixture models in order with `easel load`; returns each one's measured memory.
fn load_all(daemon: &Daemon, names: &[&str]) -> Vec<u64> {
    for name in names {
        let model = fixture_model(name);
        let output = daemon.easel(&["load", model.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let listed = ps(daemon);
    names
        .iter()
        .map(|name| {
            listed["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == *name)
                .unwrap_or_else(|| panic!("{name} not resident: {listed}"))["memory_bytes"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_budget_evicts_idle_models_least_recently_used_first() {
    let names = ["sd1-tiny", "sd1-tiny-ids-int32", "sd1-tiny-t-int64"];
    // Measure the three models (same order, so the one-time costs land on the same model).
    let sizes = load_all(&Daemon::start(), &names);
    // Room for two of them but not all three.
    let budget = (sizes[0] + sizes[1] + sizes[2] / 2).to_string();
    let daemon = Daemon::start_with(&[("EASEL_MEMORY_BUDGET", budget.as_str())]);
    let mut client = daemon.client().await;
    let mut events = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    load_all(&daemon, &names[..2]);
    // Use the first again: now the second is the least recently used.
    load_all(&daemon, &names[..1]);
    let model = fixture_model(names[2]);
    let output = daemon.easel(&["load", model.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let evicted = next_model_event(&mut events, "evicted").await;
    assert_eq!(evicted.model, names[1], "the least recently used goes first");
    assert_eq!(evicted.reason, "evicted");
    let listed = ps(&daemon);
    let mut resident = resident_names(&daemon);
    resident.sort();
    assert_eq!(resident, [names[0], names[2]], "{listed}");
    assert!(
        listed["used_bytes"].as_u64().unwrap() <= listed["budget_bytes"].as_u64().unwrap(),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_larger_than_the_budget_is_resource_exhausted() {
    let daemon = Daemon::start_with(&[("EASEL_MEMORY_BUDGET", "1KiB")]);
    let mut client = daemon.client().await;
    let request = GenerateRequestBuilder::new("a boat").fixture("sd1-tiny").steps(2);
    let status = generate(&mut client, request).await.expect_err("the job must fail");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("raise memory_budget"), "{}", status.message());
    // The CLI says so too, and the daemon is still up.
    let dir = tempfile::tempdir().unwrap();
    let output = daemon.generate_tiny("a boat", &["--steps", "2"], &dir.path().join("x.png"));
    assert!(!output.status.success());
    assert!(stderr(&output).contains("memory budget"), "{}", stderr(&output));
    assert!(daemon.easel(&["status"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_events_reports_jobs_and_models() {
    let daemon = Daemon::start();
    let mut client = daemon.client().await;
    let mut events = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    let dir = tempfile::tempdir().unwrap();
    let output = daemon.generate_tiny(
        "a boat",
        &["--steps", "10", "--sampler", "euler"],
        &dir.path().join("x.png"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains(&"job finished".to_string()) {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        assert!(event.unix_ms > 0);
        match event.event.unwrap() {
            pb::daemon_event::Event::Job(j) => {
                if j.state == "progress" {
                    assert!(j.step >= 1 && j.step <= j.total && j.total == 10, "{j:?}");
                }
                seen.push(format!("job {}", j.state));
            }
            pb::daemon_event::Event::Model(m) => seen.push(format!("model {}", m.state)),
            pb::daemon_event::Event::Import(_) => {}
        }
    }
    seen.dedup();
    assert_eq!(
        seen,
        [
            "job queued",
            "model loading",
            "model loaded",
            "job started",
            "job progress",
            "job finished"
        ]
    );
}

/// This test process queues three jobs (one that runs until cancelled, then two more); another
/// process (`easel generate`) queues one while the first runs: it starts before this process's
/// second and third, although it came last.
#[tokio::test(flavor = "multi_thread")]
async fn another_client_goes_between_a_busy_clients_jobs() {
    let daemon = Daemon::start_with(&[("EASEL_MAX_STEPS", "100000")]);
    let mut client = daemon.client().await;
    let mut events = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    let request = |prompt: &str, steps: u32| {
        GenerateRequestBuilder::new(prompt)
            .fixture("sd1-tiny")
            .steps(steps)
            .size(128, 128)
            .seed(1)
            .build()
    };
    let mut long = client.generate(request("long", 50_000)).await.unwrap().into_inner();
    let long_id = wait_for_progress(&mut long).await;
    let mut second = client.generate(request("second", 2)).await.unwrap().into_inner();
    let mut third = client.generate(request("third", 2)).await.unwrap().into_inner();
    let other = {
        let dir = tempfile::tempdir().unwrap();
        let mut command = daemon.easel_command(&[
            "generate",
            "other",
            "--model",
            fixture_model("sd2-tiny-v").to_str().unwrap(),
            "--steps",
            "2",
            "--no-progress",
            "-o",
            dir.path().join("o.png").to_str().unwrap(),
        ]);
        let child = command.stdout(std::process::Stdio::null()).spawn().unwrap();
        (dir, child)
    };
    // Wait until the other process's job is queued, then let the long job go.
    let mut queued = 0;
    while queued < 4 {
        if let Some(pb::daemon_event::Event::Job(j)) = events.next().await.unwrap().unwrap().event
            && j.state == "queued"
        {
            queued += 1;
        }
    }
    client.cancel(pb::CancelRequest { job_id: long_id }).await.unwrap();
    let mut started = Vec::new();
    while started.len() < 3 {
        if let Some(pb::daemon_event::Event::Job(j)) = events.next().await.unwrap().unwrap().event
            && j.state == "started"
        {
            started.push(j.model);
        }
    }
    assert_eq!(
        started,
        ["sd2-tiny-v", "sd1-tiny", "sd1-tiny"],
        "the other client's job goes before this one's second"
    );
    let (_dir, mut child) = other;
    assert!(child.wait().unwrap().success());
    while second.next().await.is_some() {}
    while third.next().await.is_some() {}
}

/// With `parallel = 2`, a job for another model runs while a long one is still going (with
/// one worker it would wait), and draws exactly what it draws alone.
#[tokio::test(flavor = "multi_thread")]
async fn with_two_workers_another_models_job_runs_alongside_unharmed() {
    let daemon = Daemon::start_with(&[("EASEL_PARALLEL", "2"), ("EASEL_MAX_STEPS", "100000")]);
    let mut client = daemon.client().await;
    let request = |model: &str, steps: u32| {
        GenerateRequestBuilder::new("a lighthouse")
            .fixture(model)
            .steps(steps)
            .seed(9)
            .sampler("euler_a")
            .build()
    };
    async fn image(client: &mut easel_client::EaselClient<easel_client::Channel>, r: pb::GenerateRequest) -> Vec<u8> {
        read_png(&generate(client, r).await.unwrap()[0]).2
    }
    let alone = image(&mut client, request("sd2-tiny-v", 8)).await;

    let mut long = client.generate(request("sd1-tiny", 50_000)).await.unwrap().into_inner();
    let long_id = wait_for_progress(&mut long).await;
    let beside = tokio::time::timeout(Duration::from_secs(60), image(&mut client, request("sd2-tiny-v", 8)))
        .await
        .expect("the second worker runs the other model's job while the first is busy");
    assert_eq!(beside, alone, "a job running beside another draws the same picture");
    let status = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.running_jobs, 1, "the long job is still running");
    client.cancel(pb::CancelRequest { job_id: long_id }).await.unwrap();
}

/// `easel events --json` prints the daemon's events as they happen.
#[test]
fn easel_events_prints_what_happens() {
    use std::io::BufRead;
    let daemon = Daemon::start();
    let mut watcher = daemon
        .easel_command(&["events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let reader = std::thread::spawn(move || {
        let mut states = Vec::new();
        for line in lines {
            let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            states.push(format!(
                "{} {}",
                event["kind"].as_str().unwrap(),
                event["state"].as_str().unwrap()
            ));
            if event["kind"] == "job" && event["state"] == "finished" {
                break;
            }
        }
        states
    });
    // Generate until the watcher (which needs a moment to subscribe) has seen a whole job.
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "easel events printed no finished job");
        let output = daemon.generate_tiny("a boat", &["--steps", "2"], &dir.path().join("x.png"));
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let states = reader.join().unwrap();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        states.contains(&"job started".to_string()) && states.contains(&"job finished".to_string()),
        "{states:?}"
    );
}
