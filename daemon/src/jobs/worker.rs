//! The inference workers: threads that take the next job, lease its model from residency,
//! generate its images in UNet batches and send the job's events (PNGs encoded here, off the
//! async runtime). A base + refiner job runs as two stages, each with its own model lease: the
//! base's latents for every image, then the refiner's pictures from them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::generation::StepReport;
use crate::generation::image::RgbImage;
use crate::generation::metadata;
use crate::generation::sampler::{NoiseSource, SeededNoise};
use crate::memory;

use super::events::{DaemonEvent, JobState};
use super::residency::Residency;
use super::validate::Stage;
use super::{
    Generator, Job, JobError, JobEvent, JobTimings, RunningJob, Shared, announce_positions, job_event, residency_key,
};

/// Starts worker `index`.
/// `measures_alone`: this is the only worker, so the process's peak memory during a job is
/// that job's, and worth recording.
pub(super) fn spawn<G: Generator>(
    index: usize,
    shared: Arc<Shared>,
    residency: Arc<Residency<G>>,
    measures_alone: bool,
) -> std::thread::JoinHandle<()> {
    let worker = Worker {
        shared,
        residency,
        measures_alone,
    };
    std::thread::Builder::new()
        .name(format!("easeld-worker-{index}"))
        .spawn(move || worker.run())
        .expect("spawn an inference worker thread")
}

/// What carries from one stage of a job to the next.
struct StageRun {
    /// The latents the last stage handed over, every image's in order.
    handed_over: Option<Vec<f32>>,
    /// UNet evaluations of the stages before this one (progress continues across stages).
    done_before: usize,
    /// UNet evaluations of all stages.
    total: usize,
}

struct Worker<G: Generator> {
    shared: Arc<Shared>,
    residency: Arc<Residency<G>>,
    measures_alone: bool,
}

impl<G: Generator> Worker<G> {
    fn run(self) {
        while let Some(job) = self.next_job() {
            let span = tracing::info_span!("job", id = %job.id, model = %job.valid.folder.name, steps = job.valid.prepared.steps);
            let _entered = span.enter();
            let result = self.run_job(&job);
            match &result {
                Ok(timings) => tracing::info!(total_ms = timings.total.as_millis() as u64, "job finished"),
                Err(error) => tracing::info!(%error, "job ended without finishing"),
            }
            self.finish(&job, result);
            drop(job);
            // A job's pictures, latents and ONNX Runtime's scratch buffers are freed by now;
            // hand the pages back so the daemon's footprint returns to its resident models.
            crate::memory::release_freed_memory();
        }
    }

    /// Blocks until a job is queued; `None` once shutting down.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.shared.state.lock().expect("queue lock");
        loop {
            if state.shutting_down {
                return None;
            }
            if let Some(job) = state.pending.pop() {
                state.running.push(RunningJob::of(&job));
                announce_positions(&mut state);
                return Some(job);
            }
            state = self.shared.wake.wait(state).expect("queue lock");
        }
    }

    /// Tells the client and the watchers how the job ended. The job stops counting as running
    /// first, so a client that acts on the end (removing the model, reading the status) sees it
    /// gone.
    fn finish(&self, job: &Job, result: Result<JobTimings, JobError>) {
        let shutting_down = {
            let mut state = self.shared.state.lock().expect("queue lock");
            state.running.retain(|running| running.id != job.id);
            announce_positions(&mut state);
            state.shutting_down
        };
        let bus = &self.shared.events;
        match result {
            Ok(timings) => {
                let _ = job.events.send(JobEvent::Finished { timings });
                bus.publish(job_event(job, JobState::Finished, String::new()));
            }
            Err(error) => {
                let error = match error {
                    JobError::Cancelled if shutting_down => JobError::ShuttingDown,
                    other => other,
                };
                let state = match error {
                    JobError::Cancelled | JobError::ShuttingDown => JobState::Cancelled,
                    _ => JobState::Failed,
                };
                bus.publish(job_event(job, state, error.to_string()));
                let _ = job.events.send(JobEvent::Failed(error));
            }
        }
    }

    /// Runs the job's stages one after the other (the base alone, or the base then its
    /// refiner), each on its own model lease: a refiner that does not fit beside the base
    /// evicts it between the stages rather than waiting for it forever.
    fn run_job(&self, job: &Job) -> Result<JobTimings, JobError> {
        let started = Instant::now();
        let mut timings = JobTimings {
            queue: started - job.enqueued,
            ..Default::default()
        };
        if job.cancel.load(Ordering::SeqCst) {
            return Err(JobError::Cancelled);
        }
        let cancel = job.cancel.clone();
        let is_cancelled = move || cancel.load(Ordering::SeqCst);
        let valid = &job.valid;
        // One noise stream per image across both stages, as one generator per image would be
        // passed to both of diffusers' pipelines.
        let mut sources: Vec<SeededNoise> = (0..valid.count)
            .map(|index| SeededNoise::new(valid.seed.wrapping_add(u64::from(index))))
            .collect();
        let mut run = StageRun {
            handed_over: None,
            done_before: 0,
            total: valid.evaluations(),
        };
        for (index, stage) in valid.stages().into_iter().enumerate() {
            let load_started = Instant::now();
            let key = residency_key(&stage.folder.root);
            let lease = self.residency.acquire_for_job(
                &key,
                &stage.folder.name,
                stage.folder,
                valid.keep_alive,
                stage.working,
                Instant::now(),
                &is_cancelled,
            )?;
            timings.load += load_started.elapsed();
            if index == 0 {
                let _ = job.events.send(JobEvent::Started { load: timings.load });
                self.shared
                    .events
                    .publish(job_event(job, JobState::Started, String::new()));
            }
            // Measured from here (the model is loaded): the peak above this is the stage's own.
            let measure = self.measures_alone.then(memory::PeakMeter::start).flatten();
            let result = {
                let mut model = lease.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.generate(
                    job,
                    &stage,
                    &mut run,
                    &mut model,
                    &mut sources,
                    &is_cancelled,
                    &mut timings,
                )
            };
            self.residency.release(lease, Instant::now());
            if let (Some(meter), Ok(())) = (measure, &result) {
                let measured = meter.growth();
                let modelled = stage.modelled_working.peak();
                tracing::debug!(modelled, measured, "working memory");
                self.residency.record_working(&key, modelled, measured);
            }
            result?;
            run.done_before += stage.prepared.evaluations();
        }
        timings.total = started.elapsed() + timings.queue;
        Ok(timings)
    }

    /// One stage's images, `batch_size` at a time; image `i` draws from `sources[i]`. A stage
    /// that hands over keeps its latents in `run` for the next; the last one sends the pictures.
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        job: &Job,
        stage: &Stage<'_>,
        run: &mut StageRun,
        model: &mut G::Model,
        sources: &mut [SeededNoise],
        is_cancelled: &dyn Fn() -> bool,
        timings: &mut JobTimings,
    ) -> Result<(), JobError> {
        let valid = &job.valid;
        let prepared = stage.prepared;
        let plane: usize = prepared.latent_shape.iter().product();
        let batch_size = valid.batch_size.max(1);
        let taken_over = run.handed_over.take();
        let mut handing_over = Vec::new();
        let mut first = 0;
        let mut summarized = 0;
        while first < valid.count {
            let size = batch_size.min(valid.count - first);
            let range = first as usize..(first + size) as usize;
            let seeds: Vec<u64> = (first..first + size)
                .map(|index| valid.seed.wrapping_add(u64::from(index)))
                .collect();
            let mut noises: Vec<&mut dyn NoiseSource> = sources[range.clone()]
                .iter_mut()
                .map(|s| s as &mut dyn NoiseSource)
                .collect();
            let (done_before, total) = (run.done_before, run.total);
            let mut on_step = |image: usize, report: StepReport| {
                let report = StepReport {
                    step: done_before + report.step,
                    total,
                    ..report
                };
                // WatchEvents gets a summary: the first image of each batch, about every 10%.
                let decile = report.step * 10 / report.total.max(1);
                if image == 0 && (decile != summarized || report.step == report.total) {
                    summarized = decile;
                    self.publish_progress(job, &report);
                }
                let _ = job.events.send(JobEvent::Progress {
                    image_index: first + image as u32,
                    step: report.step as u32,
                    total: report.total as u32,
                    elapsed: report.elapsed,
                    preview_png: report.preview.as_ref().map(|p: &RgbImage| p.to_png(&[])),
                    latent: report.latent,
                });
            };
            let handed = taken_over
                .as_ref()
                .map(|latents: &Vec<f32>| &latents[range.start * plane..range.end * plane]);
            let output = self.residency.backend().generate_batch(
                model,
                prepared,
                &mut noises,
                handed,
                is_cancelled,
                &mut on_step,
            )?;
            timings.encode += output.timings.encode;
            timings.denoise += output.timings.denoise;
            timings.decode += output.timings.decode;
            if let Some(latents) = output.latents {
                handing_over.extend(latents);
            }
            let refined = valid.refiner.as_ref().map(|r| metadata::Refined {
                prepared: &r.prepared,
                switch: r.switch,
            });
            for ((offset, image), seed) in output.images.into_iter().enumerate().zip(seeds) {
                let parameters = metadata::a1111_parameters(&valid.prepared, seed, refined);
                let easel = metadata::easel_json(&valid.prepared, seed, refined);
                let _ = job.events.send(JobEvent::Image {
                    index: first + offset as u32,
                    seed,
                    png: image.to_png(&[("parameters", &parameters), ("easel", &easel)]),
                    width: image.width,
                    height: image.height,
                    parameters,
                });
            }
            first += size;
        }
        if !handing_over.is_empty() {
            run.handed_over = Some(handing_over);
        }
        Ok(())
    }

    fn publish_progress(&self, job: &Job, report: &StepReport) {
        self.shared.events.publish(DaemonEvent::Job {
            id: job.id.clone(),
            model: job.valid.folder.name.clone(),
            state: JobState::Progress,
            position: 0,
            step: report.step as u32,
            total: report.total as u32,
            message: String::new(),
        });
    }
}
