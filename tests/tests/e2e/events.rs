//! The event stream: order, JSON lines, previews and latents.

use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;

#[test]
fn json_events_come_in_order_with_the_job_id() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model("sd1-tiny");
    let out = dir.path().join("j.png");
    let output = daemon.easel(&[
        "generate",
        "a boat",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "5",
        "--sampler",
        "ddim",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let events: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "queued", "started", "progress", "progress", "progress", "progress", "progress", "image", "finished"
        ]
    );
    let job_id = events[0]["job_id"].as_str().unwrap();
    assert!(!job_id.is_empty());
    assert!(
        events.iter().all(|e| e["job_id"] == job_id),
        "every event carries the job id"
    );
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "progress")
            .all(|e| e["total"] == 5)
    );
    assert_eq!(
        events[7]["path"].as_str().map(std::path::Path::new),
        Some(out.as_path())
    );
    assert!(out.is_file());
}

#[test]
fn previews_dir_gets_one_png_per_step() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let previews = dir.path().join("previews");
    let model = fixture_model("sd1-tiny");
    let out = dir.path().join("p.png");
    let output = daemon.easel(&[
        "generate",
        "a boat",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "4",
        "--sampler",
        "euler",
        "--previews",
        previews.to_str().unwrap(),
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut files: Vec<_> = std::fs::read_dir(&previews)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let (w, h, _) = read_png(&std::fs::read(&file).unwrap());
        assert!(w > 0 && h > 0);
    }
}

async fn progress_events(daemon: &Daemon, preview: pb::PreviewOptions, steps: u32) -> Vec<pb::Progress> {
    let mut client = daemon.client().await;
    let request = GenerateRequestBuilder::new("a tree")
        .fixture("sd1-tiny")
        .sampler("euler")
        .steps(steps)
        .seed(3)
        .preview(preview)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let mut progress = Vec::new();
    while let Some(event) = stream.next().await {
        if let Some(pb::generate_event::Event::Progress(p)) = event.unwrap().event {
            progress.push(p);
        }
    }
    progress
}

#[tokio::test(flavor = "multi_thread")]
async fn latents_and_previews_stream_when_asked() {
    let daemon = Daemon::start();
    // Latents and full VAE previews every 2 steps (and always the last).
    let full = progress_events(
        &daemon,
        pb::PreviewOptions {
            stream_latents: true,
            every_n_steps: 2,
            image: pb::PreviewImage::Full as i32,
        },
        5,
    )
    .await;
    assert_eq!(full.len(), 5);
    for p in &full {
        let due = p.step % 2 == 0 || p.step == 5;
        assert_eq!(p.latent.is_some(), due, "latent at step {}", p.step);
        assert_eq!(!p.preview_png.is_empty(), due, "preview at step {}", p.step);
        if let Some(latent) = &p.latent {
            assert_eq!(latent.shape, [1, 4, 8, 8]);
            assert_eq!(latent.data.len(), 4 * 4 * 8 * 8);
            assert_eq!(latent.dtype, pb::Dtype::F32 as i32);
        }
        if due {
            let (w, h, _) = read_png(&p.preview_png);
            assert_eq!((w, h), (64, 64), "a full preview is a VAE decode at full size");
        }
    }
    // Approximate previews are the latent→RGB map at latent resolution; no latents unless asked.
    let approx = progress_events(
        &daemon,
        pb::PreviewOptions {
            stream_latents: false,
            every_n_steps: 1,
            image: pb::PreviewImage::Approx as i32,
        },
        3,
    )
    .await;
    assert_eq!(approx.len(), 3);
    for p in &approx {
        assert!(p.latent.is_none());
        assert_eq!(read_png(&p.preview_png).0, 8);
    }
    // Nothing asked, nothing sent.
    let none = progress_events(&daemon, pb::PreviewOptions::default(), 2).await;
    assert!(none.iter().all(|p| p.latent.is_none() && p.preview_png.is_empty()));
}

/// `--count 3` with room for two 64×64 images per batch: images 0 and 1 are denoised together
/// (both reported at every step), then image 2 alone; each is its own seed's picture.
#[test]
fn a_count_runs_in_batches_and_reports_every_image() {
    let daemon = Daemon::start_with(&[("EASEL_BATCH_PIXELS", "8192")]);
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model("sd1-tiny");
    let model = model.to_str().unwrap();
    let generate = |seed: &str, count: &str, out: &std::path::Path| {
        let args = [
            "generate",
            "a boat",
            "--model",
            model,
            "--steps",
            "3",
            "--sampler",
            "euler_a",
            "--seed",
            seed,
            "--count",
            count,
            "--json",
            "-o",
        ];
        let output = daemon.easel(&[&args[..], &[out.to_str().unwrap()]].concat());
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    let events = generate("40", "3", &dir.path().join("batch.png"));
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| (e["image_index"].as_u64().unwrap(), e["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        progress,
        [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 1), (2, 2), (2, 3)]
    );
    let images: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "image").collect();
    assert_eq!(images.len(), 3);
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["seed"], 40 + i as u64);
        let alone_path = dir.path().join(format!("alone{i}.png"));
        generate(&(40 + i).to_string(), "1", &alone_path);
        let batched = std::fs::read(image["path"].as_str().unwrap()).unwrap();
        assert_eq!(
            read_png(&batched).2,
            read_png(&std::fs::read(&alone_path).unwrap()).2,
            "image {i} of the batch is seed {} alone",
            40 + i
        );
    }
}

/// A client that does not read its stream while the job runs: the daemon keeps only the latest
/// progress for it (not one event per step, each with a latent), yet the image and the end
/// always arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_its_image_and_the_end_but_not_every_step() {
    const STEPS: u32 = 300;
    let daemon = Daemon::start();
    let mut watcher = daemon
        .client()
        .await
        .watch_events(pb::WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    // HTTP/2's smallest windows: once 64 KiB is in flight the daemon must hold the rest itself.
    let channel = daemon
        .channel_with(|endpoint| {
            endpoint
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
        })
        .await;
    let mut client = easel_proto::v1::easel_client::EaselClient::new(channel);
    // 256²: each event carries a 16 KiB latent and a preview, so a few fill the window.
    let request = GenerateRequestBuilder::new("a slow boat")
        .fixture("sd1-tiny")
        .size(256, 256)
        .steps(STEPS)
        .sampler("euler")
        .preview(pb::PreviewOptions {
            stream_latents: true,
            every_n_steps: 1,
            image: pb::PreviewImage::Approx as i32,
        })
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    // Wait, unread, until the daemon says the job finished.
    loop {
        let event = watcher.next().await.expect("the watch stream stays open").unwrap();
        if let Some(pb::daemon_event::Event::Job(job)) = event.event
            && job.state == "finished"
        {
            break;
        }
    }
    let mut progress = 0;
    let mut kinds = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap().event.unwrap() {
            pb::generate_event::Event::Progress(_) => progress += 1,
            other => kinds.push(match other {
                pb::generate_event::Event::Image(_) => "image",
                pb::generate_event::Event::Finished(_) => "finished",
                _ => "other",
            }),
        }
    }
    assert!(kinds.ends_with(&["image", "finished"]), "{kinds:?}");
    assert!(
        progress < STEPS,
        "old progress was dropped for a client that did not read: {progress} of {STEPS} arrived"
    );
}
