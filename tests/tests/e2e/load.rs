//! Load and faults: many clients at once that cancel and vanish, a daemon killed mid-job and
//! mid-import, model files that change under a loaded model. Bounded (a few hundred tiny jobs)
//! and on the socket only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;
use tonic::Code;

/// A small deterministic generator, so a failing run can be replayed from its printed seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What a client does with its job.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Reads every event to the end.
    Reads,
    /// Cancels its job (the Cancel RPC) once it has an id.
    Cancels,
    /// Drops the stream after the first event (a client that goes away mid-job).
    Disconnects,
    /// Drops the whole connection right after asking.
    Vanishes,
}

/// Terminal job states per job id, as a watcher saw them.
type Terminals = Arc<Mutex<HashMap<String, Vec<String>>>>;

async fn one_client(daemon_socket: std::path::PathBuf, behaviour: Behaviour, seed: u64) -> Result<(), tonic::Status> {
    let mut client = easel_client::connect(&daemon_socket).await.expect("connect");
    let request = GenerateRequestBuilder::new("a busy day")
        .fixture("sd1-tiny")
        .steps(3)
        .seed(seed)
        .build();
    let mut stream = client.generate(request).await?.into_inner();
    match behaviour {
        Behaviour::Vanishes => {
            drop(stream);
            drop(client);
        }
        Behaviour::Disconnects => {
            let _ = stream.next().await;
            drop(stream);
        }
        Behaviour::Cancels => {
            let job_id = match stream.next().await {
                Some(Ok(pb::GenerateEvent {
                    event: Some(pb::generate_event::Event::Queued(pb::Queued { job_id, .. })),
                })) => job_id,
                Some(Ok(pb::GenerateEvent {
                    event: Some(pb::generate_event::Event::Started(pb::Started { job_id, .. })),
                })) => job_id,
                other => panic!("a job's first event names it: {other:?}"),
            };
            let _ = client.cancel(pb::CancelRequest { job_id }).await;
            while let Some(event) = stream.next().await {
                if let Err(status) = event {
                    assert_eq!(status.code(), Code::Cancelled, "{status}");
                }
            }
        }
        Behaviour::Reads => {
            let mut finished = 0;
            while let Some(event) = stream.next().await {
                if let Some(pb::generate_event::Event::Finished(_)) = event?.event {
                    finished += 1;
                }
            }
            assert_eq!(finished, 1, "a client that reads sees its job finish once");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_three_rounds_every_job_ends_once_and_memory_comes_back() {
    let seed = std::env::var("EASEL_LOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("load test seed: {seed} (EASEL_LOAD_SEED replays it)");
    let mut rng = Lcg(seed);
    let daemon = Daemon::start_with(&[("EASEL_MAX_QUEUE", "16"), ("EASEL_KEEP_ALIVE", "-1")]);
    let mut client = daemon.client().await;

    // Watch every job's end, and sample the queue while the rounds run.
    let terminals: Terminals = Arc::default();
    let mut watch = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    let seen = terminals.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            if let Some(pb::daemon_event::Event::Job(job)) = event.event {
                let mut seen = seen.lock().unwrap();
                let states = seen.entry(job.job_id.clone()).or_default();
                if matches!(job.state.as_str(), "finished" | "cancelled" | "failed") {
                    states.push(job.state);
                }
            }
        }
    });
    let most_queued = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (most_queued, sampling, mut client) = (most_queued.clone(), sampling.clone(), client.clone());
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(status) = client.get_status(pb::StatusRequest {}).await {
                    most_queued.fetch_max(status.into_inner().queued_jobs, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Warm up (the model loads, the allocator settles), then measure.
    generate(
        &mut client,
        GenerateRequestBuilder::new("warm").fixture("sd1-tiny").steps(3),
    )
    .await
    .unwrap();
    let rss_before = daemon.rss();

    let mut refused = 0;
    for round in 0..3 {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let behaviour = match rng.below(4) {
                    0 => Behaviour::Reads,
                    1 => Behaviour::Cancels,
                    2 => Behaviour::Disconnects,
                    _ => Behaviour::Vanishes,
                };
                tokio::spawn(one_client(daemon.socket.clone(), behaviour, round * 100 + i))
            })
            .collect();
        for task in tasks {
            match task.await.expect("a client task panicked") {
                Ok(()) => {}
                Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
                Err(status) => panic!("unexpected error: {status}"),
            }
        }
    }

    // Everything drains: nothing queued or running, and every job ended exactly once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = client.get_status(pb::StatusRequest {}).await.unwrap().into_inner();
        let all_ended = terminals.lock().unwrap().values().all(|states| !states.is_empty());
        if status.queued_jobs == 0 && status.running_jobs == 0 && all_ended {
            break;
        }
        assert!(Instant::now() < deadline, "the queue did not drain: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();
    let terminals = terminals.lock().unwrap().clone();
    assert!(terminals.len() > 50, "jobs were seen: {}", terminals.len());
    for (job, states) in &terminals {
        assert_eq!(states.len(), 1, "job {job} ended {states:?}");
    }
    assert!(
        most_queued.load(std::sync::atomic::Ordering::SeqCst) <= 16,
        "the queue bound holds"
    );
    eprintln!(
        "{} jobs, {refused} refused with RESOURCE_EXHAUSTED, at most {} queued",
        terminals.len(),
        most_queued.load(std::sync::atomic::Ordering::SeqCst)
    );

    // Memory comes back: within 10% of before the rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = daemon.rss();
    eprintln!("RSS before {rss_before} B, after {rss_after} B");
    assert!(
        (rss_after as f64) <= rss_before as f64 * 1.10,
        "RSS grew from {rss_before} to {rss_after} bytes"
    );
    generate(
        &mut client,
        GenerateRequestBuilder::new("after").fixture("sd1-tiny").steps(2),
    )
    .await
    .expect("the daemon still generates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_generation_restarts_cleanly() {
    let mut daemon = Daemon::start();
    let mut client = daemon.client().await;
    let request = GenerateRequestBuilder::new("a long job")
        .fixture("sd1-tiny")
        .size(256, 256)
        .steps(400)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    wait_for_progress(&mut stream).await;
    daemon.kill();
    let next = stream.next().await;
    assert!(
        !matches!(next, Some(Ok(_))),
        "a killed daemon sends nothing more: {next:?}"
    );

    // A fresh daemon on the same socket and home: no stale socket or lock in its way.
    daemon.spawn(&[]);
    daemon.wait_ready();
    let mut client = daemon.client().await;
    let images = generate(
        &mut client,
        GenerateRequestBuilder::new("again").fixture("sd1-tiny").steps(2),
    )
    .await
    .unwrap();
    assert_eq!(images.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_import_leaves_a_consistent_store() {
    let mut daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // A model folder with a large extra file, so the import takes long enough to be killed.
    let source = dir.path().join("big-model");
    copy_tree(&fixture_model("sd1-tiny"), &source);
    let filler: Vec<u8> = (0..(256u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    std::fs::write(source.join("unet/filler.bin"), filler).unwrap();

    let mut client = daemon.client().await;
    let mut watch = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    let import = {
        let mut client = client.clone();
        let path = source.display().to_string();
        tokio::spawn(async move {
            let mut stream = client
                .import_model(pb::ImportModelRequest {
                    path,
                    name: "half-done".into(),
                    replace: false,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.next().await.transpose()?.is_some() {}
            Ok::<_, tonic::Status>(())
        })
    };
    // Kill once bytes are being written.
    loop {
        let event = watch.next().await.expect("events").unwrap();
        if let Some(pb::daemon_event::Event::Import(notice)) = event.event
            && notice.state == "extracting"
            && notice.bytes_done > 0
        {
            break;
        }
    }
    daemon.kill();
    assert!(import.await.unwrap().is_err(), "the import did not complete");

    daemon.spawn(&[]);
    daemon.wait_ready();
    let list = daemon.easel(&["models", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        !stdout(&list).contains("half-done"),
        "a half-imported model is not listed: {}",
        stdout(&list)
    );
    // The same import, now to the end: the leftovers do not get in its way.
    let again = daemon.easel(&["models", "import", source.to_str().unwrap(), "--name", "half-done"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let out = dir.path().join("out.png");
    let generated = daemon.generate_with("half-done", "a cat", &["--steps", "1"], &out);
    assert!(generated.status.success(), "{}", stderr(&generated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_deleted_or_truncated_while_loaded_give_clear_errors() {
    let daemon = Daemon::start_with(&[("EASEL_KEEP_ALIVE", "-1")]);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("fragile");
    copy_tree(&fixture_model("sd1-tiny"), &model);
    let reference = model.display().to_string();
    let mut client = daemon.client().await;
    let request = || GenerateRequestBuilder::new("a cat").model(&reference).steps(1);
    generate(&mut client, request()).await.unwrap();

    // The VAE encoder loads on first img2img: truncated under a loaded model, it fails clearly.
    let encoder = model.join("vae_encoder/model.onnx");
    let bytes = std::fs::read(&encoder).unwrap();
    std::fs::write(&encoder, &bytes[..bytes.len() / 3]).unwrap();
    let mut init = Vec::new();
    image::RgbImage::from_pixel(64, 64, image::Rgb([90, 120, 200]))
        .write_to(&mut std::io::Cursor::new(&mut init), image::ImageFormat::Png)
        .unwrap();
    let mut img2img = request().steps(4).build();
    img2img.init_image = init;
    let status = generate(&mut client, img2img).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("vae_encoder"), "{}", status.message());

    // The loaded sessions keep working after their files are deleted; once the model is
    // unloaded, the missing part is named.
    std::fs::remove_file(model.join("unet/model.onnx")).unwrap();
    generate(&mut client, request())
        .await
        .expect("the resident model still runs");
    client
        .unload_model(pb::UnloadModelRequest {
            model: reference.clone(),
        })
        .await
        .unwrap();
    let status = generate(&mut client, request()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("unet/model.onnx"), "{}", status.message());

    // And the daemon serves everything else.
    generate(
        &mut client,
        GenerateRequestBuilder::new("fine").fixture("sd1-tiny").steps(1),
    )
    .await
    .expect("the daemon still generates");
}
