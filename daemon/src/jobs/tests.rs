//! The job queue in-process: the real queue, workers, residency and validation, with a fake
//! [`Generator`] instead of ONNX Runtime, on the configs of a real model folder
//! (`tests/fixtures/models/sd1-tiny`). A gate holds generations back so that tests can line
//! jobs up behind a running one.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::residency::Footprint;
use super::*;
use crate::generation::image::RgbImage;
use crate::generation::{Timings, image::decode_rgb};

/// Holds generations until opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    /// Waits until the gate opens; `false` when cancelled first.
    fn pass(&self, is_cancelled: &dyn Fn() -> bool) -> bool {
        let mut open = self.open.lock().unwrap();
        while !*open {
            if is_cancelled() {
                return false;
            }
            open = self.changed.wait_timeout(open, Duration::from_millis(5)).unwrap().0;
        }
        true
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

/// Draws a grey picture of the asked size after reporting every step of its run; records which
/// prompts it ran, in order. A stage that hands over returns latents instead: image `i`'s filled
/// with a draw from its noise source; a stage that takes over draws once more per image and
/// records what it was handed and drew.
#[derive(Default)]
struct FakeGenerator {
    gate: Arc<Gate>,
    started: Arc<Mutex<Vec<String>>>,
    loads: Arc<AtomicUsize>,
    stages: Arc<Mutex<Vec<StageSeen>>>,
}

/// What the fake saw of one batch of one stage.
#[derive(Debug, Clone, PartialEq)]
struct StageSeen {
    model: String,
    /// The first value of each image's handed-over latent.
    handed: Vec<f32>,
    /// Each image's draw.
    drawn: Vec<f32>,
}

impl Backend for FakeGenerator {
    type Spec = Arc<ModelFolder>;
    type Model = ();

    fn load(&self, _: &Arc<ModelFolder>) -> Result<((), Footprint), String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(((), Footprint::host(1)))
    }

    fn estimate(&self, _: &Arc<ModelFolder>) -> Footprint {
        Footprint::host(1)
    }
}

impl Generator for FakeGenerator {
    fn generate_batch(
        &self,
        _: &mut (),
        prepared: &Prepared,
        noises: &mut [&mut dyn NoiseSource],
        handed_over: Option<&[f32]>,
        is_cancelled: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(usize, StepReport),
    ) -> Result<BatchOutput, GenerationError> {
        self.started.lock().unwrap().push(prepared.prompt.clone());
        if !self.gate.pass(is_cancelled) {
            return Err(GenerationError::Cancelled);
        }
        let total = prepared.evaluations();
        for step in 1..=total {
            if is_cancelled() {
                return Err(GenerationError::Cancelled);
            }
            for image in 0..noises.len() {
                let report = StepReport {
                    step,
                    total,
                    elapsed: Duration::ZERO,
                    latent: None,
                    preview: None,
                };
                on_step(image, report);
            }
        }
        let plane: usize = prepared.latent_shape.iter().product();
        let drawn: Vec<f32> = noises.iter_mut().map(|n| n.standard_normal(1)[0]).collect();
        self.stages.lock().unwrap().push(StageSeen {
            model: prepared.model.clone(),
            handed: handed_over
                .map(|latents| latents.chunks(plane).map(|l| l[0]).collect())
                .unwrap_or_default(),
            drawn: drawn.clone(),
        });
        if let generation::Handover::Hands(_) = prepared.handover {
            let latents = drawn.iter().flat_map(|&v| vec![v; plane]).collect();
            return Ok(BatchOutput {
                images: Vec::new(),
                latents: Some(latents),
                timings: Timings::default(),
            });
        }
        let picture = RgbImage {
            width: prepared.width,
            height: prepared.height,
            pixels: vec![128; (prepared.width * prepared.height * 3) as usize],
        };
        Ok(BatchOutput {
            images: vec![picture; noises.len()],
            latents: None,
            timings: Timings::default(),
        })
    }
}

struct Fixture {
    queue: JobQueue<FakeGenerator>,
    gate: Arc<Gate>,
    started: Arc<Mutex<Vec<String>>>,
    loads: Arc<AtomicUsize>,
    stages: Arc<Mutex<Vec<StageSeen>>>,
    _home: tempfile::TempDir,
}

fn sd1_tiny() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/sd1-tiny");
    path.canonicalize().unwrap().display().to_string()
}

fn start(limits: Limits) -> Fixture {
    let home = tempfile::tempdir().unwrap();
    let generator = FakeGenerator::default();
    let (gate, started, loads, stages) = (
        generator.gate.clone(),
        generator.started.clone(),
        generator.loads.clone(),
        generator.stages.clone(),
    );
    let settings = JobSettings {
        parallel: 1,
        memory_budget: 1 << 30,
        vram_budget: 0,
        keep_alive: KeepAlive::DEFAULT,
    };
    let registry = Arc::new(Registry::new(home.path()));
    let queue = JobQueue::start(generator, registry, limits, settings, EventBus::new());
    Fixture {
        queue,
        gate,
        started,
        loads,
        stages,
        _home: home,
    }
}

/// A 2-step request on sd1-tiny from `client`, named by its prompt.
fn spec(prompt: &str, client: &str) -> GenerateSpec {
    GenerateSpec {
        model: sd1_tiny(),
        picture: generation::Request {
            prompt: prompt.into(),
            steps: Some(2),
            ..Default::default()
        },
        client: client.into(),
        ..Default::default()
    }
}

async fn next(handle: &mut JobHandle) -> JobEvent {
    tokio::time::timeout(Duration::from_secs(20), handle.events.recv())
        .await
        .expect("an event within 20 s")
        .expect("the job's channel stays open until its last event")
}

/// Reads events until the job has started (skipping Queued ones).
async fn until_started(handle: &mut JobHandle) {
    loop {
        match next(handle).await {
            JobEvent::Queued { .. } => continue,
            JobEvent::Started { .. } => return,
            other => panic!("expected Started, got {other:?}"),
        }
    }
}

/// Reads events to the end; returns the last one.
async fn until_end(handle: &mut JobHandle) -> JobEvent {
    loop {
        match next(handle).await {
            event @ (JobEvent::Finished { .. } | JobEvent::Failed(_)) => return event,
            _ => continue,
        }
    }
}

/// Waits until the fake has started `n` generations (the gate holds them there).
async fn wait_started(fixture: &Fixture, n: usize) {
    for _ in 0..2000 {
        if fixture.started.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} generations did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reports_queued_started_progress_images_and_finished_in_order() {
    let fixture = start(Limits::default());
    fixture.gate.open();
    let mut request = spec("a red circle", "a");
    request.count = Some(2);
    request.seed = Some(40);
    let mut handle = fixture.queue.submit(request).await.unwrap();
    assert!(matches!(next(&mut handle).await, JobEvent::Queued { position: 0 }));
    assert!(matches!(next(&mut handle).await, JobEvent::Started { .. }));
    let mut steps = Vec::new();
    let mut images = Vec::new();
    loop {
        match next(&mut handle).await {
            JobEvent::Progress {
                image_index,
                step,
                total,
                ..
            } => steps.push((image_index, step, total)),
            JobEvent::Image {
                index,
                seed,
                png,
                width,
                height,
                parameters,
            } => {
                let decoded = decode_rgb(&png, "png", 1 << 20).unwrap();
                assert_eq!((decoded.width, decoded.height), (width, height));
                assert_eq!((width, height), (64, 64), "sd1-tiny's native size");
                assert!(parameters.contains(&format!("Seed: {seed}")), "{parameters}");
                images.push((index, seed));
            }
            JobEvent::Finished { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Both images fit in one batch: each reports every UNet evaluation (sd1-tiny's PLMS runs
    // 3 for 2 steps).
    assert_eq!(
        steps,
        [(0, 1, 3), (1, 1, 3), (0, 2, 3), (1, 2, 3), (0, 3, 3), (1, 3, 3)]
    );
    assert_eq!(images, [(0, 40), (1, 41)], "image i uses seed + i");
    assert_eq!(fixture.loads.load(Ordering::SeqCst), 1);
    let status = fixture.queue.status();
    assert_eq!((status.queued, status.running), (0, 0));
}

/// A base + refiner job: the base's stage for every image (in batches), then the refiner's from
/// the latents it handed over; progress counts on across both; each image's noise stream goes on
/// from one stage to the next; only the refiner's pictures are sent, and they name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refiner_takes_over_each_images_latents_and_progress_counts_on() {
    let fixture = start(Limits {
        batch_pixels: 64 * 64 * 2,
        ..Limits::default()
    });
    fixture.gate.open();
    let mut request = spec("a lighthouse", "a");
    request.picture.steps = Some(10);
    request.picture.sampler = Some("euler".into());
    request.count = Some(3);
    request.seed = Some(7);
    request.refiner = Some(RefinerSpec {
        model: sd1_tiny(),
        switch: Some(0.5),
    });
    let mut handle = fixture.queue.submit(request).await.unwrap();
    let mut steps = Vec::new();
    let mut images = Vec::new();
    let mut started = 0;
    let mut progress_before_images = None;
    loop {
        match next(&mut handle).await {
            JobEvent::Queued { .. } => {}
            JobEvent::Started { .. } => started += 1,
            JobEvent::Progress {
                image_index,
                step,
                total,
                ..
            } => steps.push((image_index, step, total)),
            JobEvent::Image {
                index,
                seed,
                parameters,
                ..
            } => {
                progress_before_images.get_or_insert(steps.len());
                assert!(
                    parameters.contains("Refiner: sd1-tiny, Refiner switch at: 0.5"),
                    "{parameters}"
                );
                images.push((index, seed));
            }
            JobEvent::Finished { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1);
    assert_eq!(images, [(0, 7), (1, 8), (2, 9)]);
    // Euler's 10 timesteps from 901 down: 5 at or above 500 for the base, 5 below for the refiner.
    let first_image: Vec<_> = steps.iter().filter(|s| s.0 == 0).map(|s| (s.1, s.2)).collect();
    assert_eq!(first_image, (1..=10).map(|step| (step, 10)).collect::<Vec<_>>());
    // Every image's base stage runs before the first picture.
    let before = progress_before_images.unwrap();
    assert!(steps[before..].iter().all(|s| s.1 > 5), "{steps:?}");
    let seen = fixture.stages.lock().unwrap().clone();
    let draws = |seed: u64| {
        let mut noise = crate::generation::sampler::SeededNoise::new(seed);
        let first = noise.standard_normal(1)[0];
        (first, noise.standard_normal(1)[0])
    };
    let (d7, d8, d9) = (draws(7), draws(8), draws(9));
    let stage = |handed: Vec<f32>, drawn: Vec<f32>| StageSeen {
        model: "sd1-tiny".into(),
        handed,
        drawn,
    };
    assert_eq!(
        seen,
        [
            stage(vec![], vec![d7.0, d8.0]),
            stage(vec![], vec![d9.0]),
            stage(vec![d7.0, d8.0], vec![d7.1, d8.1]),
            stage(vec![d9.0], vec![d9.1]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_more_jobs_and_counts_only_waiting_ones() {
    let fixture = start(Limits {
        max_queue: 2,
        ..Limits::default()
    });
    let mut running = fixture.queue.submit(spec("r", "a")).await.unwrap();
    until_started(&mut running).await;
    let _waiting = [
        fixture.queue.submit(spec("w1", "a")).await.unwrap(),
        fixture.queue.submit(spec("w2", "a")).await.unwrap(),
    ];
    let error = fixture.queue.submit(spec("w3", "a")).await.unwrap_err();
    assert!(matches!(error, JobError::QueueFull(2)), "{error}");
    let status = fixture.queue.status();
    assert_eq!((status.queued, status.running), (2, 1));
    fixture.gate.open();
    assert!(matches!(until_end(&mut running).await, JobEvent::Finished { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_take_turns_and_positions_count_the_running_job() {
    let fixture = start(Limits::default());
    let mut a1 = fixture.queue.submit(spec("a1", "a")).await.unwrap();
    until_started(&mut a1).await;
    wait_started(&fixture, 1).await;
    let mut a2 = fixture.queue.submit(spec("a2", "a")).await.unwrap();
    let mut a3 = fixture.queue.submit(spec("a3", "a")).await.unwrap();
    let mut b1 = fixture.queue.submit(spec("b1", "b")).await.unwrap();
    // b's first job goes ahead of a's later ones; a1 runs ahead of everyone.
    assert!(matches!(next(&mut b1).await, JobEvent::Queued { position: 1 }));
    assert!(matches!(next(&mut a2).await, JobEvent::Queued { position: 1 }));
    assert!(
        matches!(next(&mut a2).await, JobEvent::Queued { position: 2 }),
        "a2 moves back behind b1"
    );
    fixture.gate.open();
    for handle in [&mut a1, &mut a2, &mut a3, &mut b1] {
        assert!(matches!(until_end(handle).await, JobEvent::Finished { .. }));
    }
    assert_eq!(*fixture.started.lock().unwrap(), ["a1", "b1", "a2", "a3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_ends_a_queued_or_running_job_and_moves_the_line_up() {
    let fixture = start(Limits::default());
    let mut running = fixture.queue.submit(spec("running", "a")).await.unwrap();
    until_started(&mut running).await;
    let mut first = fixture.queue.submit(spec("first", "b")).await.unwrap();
    let mut second = fixture.queue.submit(spec("second", "c")).await.unwrap();
    assert!(matches!(next(&mut first).await, JobEvent::Queued { position: 1 }));
    assert!(matches!(next(&mut second).await, JobEvent::Queued { position: 2 }));

    assert!(fixture.queue.cancel(&first.id));
    assert!(matches!(next(&mut first).await, JobEvent::Failed(JobError::Cancelled)));
    assert!(matches!(next(&mut second).await, JobEvent::Queued { position: 1 }));

    // A running job stops at its next check (the fake waits at its gate, checking).
    assert!(fixture.queue.cancel(&running.id));
    assert!(matches!(
        until_end(&mut running).await,
        JobEvent::Failed(JobError::Cancelled)
    ));
    assert!(!fixture.queue.cancel("no-such-job"));

    // A client that goes away sets its handle's flag: the job ends the same way.
    until_started(&mut second).await;
    second.cancel.store(true, Ordering::SeqCst);
    assert!(matches!(
        until_end(&mut second).await,
        JobEvent::Failed(JobError::Cancelled)
    ));
    assert_eq!(*fixture.started.lock().unwrap(), ["running", "second"]);
}

/// A grey PNG of this size.
fn tiny_png(width: u32, height: u32) -> Vec<u8> {
    let pixels = vec![128; (width * height * 3) as usize];
    crate::generation::image::RgbImage { width, height, pixels }.to_png(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_validation_before_they_queue() {
    let fixture = start(Limits::default());
    let invalid = |mutate: fn(&mut GenerateSpec)| {
        let mut request = spec("x", "a");
        mutate(&mut request);
        request
    };
    let cases: Vec<(&str, GenerateSpec)> = vec![
        ("steps must be between", invalid(|r| r.picture.steps = Some(0))),
        ("count must be between", invalid(|r| r.count = Some(0))),
        ("keep-alive", invalid(|r| r.keep_alive = Some("soon".into()))),
        ("multiple of 16", invalid(|r| r.picture.width = Some(60))),
        // A multiple of the VAE factor (8) that the UNet's down-sampling cannot halve evenly.
        ("multiple of 16", invalid(|r| r.picture.height = Some(72))),
        (
            "100 years",
            invalid(|r| r.keep_alive = Some("99999999999999999h".into())),
        ),
        (
            "at least 16x16",
            invalid(|r| r.picture.init_image = Some(tiny_png(4, 4))),
        ),
        ("unknown sampler", invalid(|r| r.picture.sampler = Some("warp".into()))),
        ("unclosed", invalid(|r| r.picture.prompt = "(red".into())),
        ("init image", invalid(|r| r.picture.mask_image = Some(vec![1, 2, 3]))),
        ("init noise has shape", {
            let mut request = spec("x", "a");
            request.picture.init_noise = Some(HostTensor::new(vec![1, 4, 2, 2], vec![0.0; 16]));
            request
        }),
    ];
    for (expected, request) in cases {
        match fixture.queue.submit(request).await {
            Err(JobError::InvalidArgument(message)) => assert!(message.contains(expected), "{expected}: {message}"),
            other => panic!("{expected}: {other:?}"),
        }
    }
    let mut relative = spec("x", "a");
    relative.model = "../../etc".into();
    let error = fixture.queue.submit(relative).await.unwrap_err();
    assert!(
        matches!(error, JobError::Registry(RegistryError::RelativePath { .. })),
        "{error}"
    );
    let mut unknown = spec("x", "a");
    unknown.model = "no-such-model".into();
    let error = fixture.queue.submit(unknown).await.unwrap_err();
    assert!(
        matches!(error, JobError::Registry(RegistryError::UnknownName { .. })),
        "{error}"
    );
    assert_eq!(fixture.queue.status().queued, 0);
    assert!(fixture.started.lock().unwrap().is_empty(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_waiting_jobs_and_stops_the_running_one() {
    let fixture = start(Limits::default());
    let mut running = fixture.queue.submit(spec("running", "a")).await.unwrap();
    until_started(&mut running).await;
    let mut waiting = fixture.queue.submit(spec("waiting", "a")).await.unwrap();
    fixture.queue.shutdown().await;
    assert!(matches!(
        until_end(&mut waiting).await,
        JobEvent::Failed(JobError::ShuttingDown)
    ));
    assert!(matches!(
        until_end(&mut running).await,
        JobEvent::Failed(JobError::ShuttingDown)
    ));
    let error = fixture.queue.submit(spec("late", "a")).await.unwrap_err();
    assert!(matches!(error, JobError::ShuttingDown), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_in_use_while_a_job_needs_it() {
    let fixture = start(Limits::default());
    let root = PathBuf::from(sd1_tiny());
    assert!(!fixture.queue.in_use(&root));
    let mut running = fixture.queue.submit(spec("running", "a")).await.unwrap();
    until_started(&mut running).await;
    assert!(fixture.queue.in_use(&root));
    fixture.gate.open();
    assert!(matches!(until_end(&mut running).await, JobEvent::Finished { .. }));
    assert!(!fixture.queue.in_use(&root), "a finished job releases its model");
}
