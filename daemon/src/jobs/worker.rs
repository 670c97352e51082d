//! The inference workers: threads that take the next job, lease its model from residency,
//! generate its images in UNet batches and send the job's events (PNGs encoded here, off the
//! async runtime).

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

    fn run_job(&self, job: &Job) -> Result<JobTimings, JobError> {
        let started = Instant::now();
        let mut timings = JobTimings {
            queue: started - job.enqueued,
            ..Default::default()
        };
        if job.cancel.load(Ordering::SeqCst) {
            return Err(JobError::Cancelled);
        }
        let folder = &job.valid.folder;
        let cancel = job.cancel.clone();
        let is_cancelled = move || cancel.load(Ordering::SeqCst);
        let key = residency_key(&folder.root);
        let lease = self.residency.acquire_for_job(
            &key,
            &folder.name,
            folder,
            job.valid.keep_alive,
            job.valid.working,
            Instant::now(),
            &is_cancelled,
        )?;
        timings.load = started.elapsed();
        // Measured from here (the model is loaded): the peak above this is the job's own.
        let measure = self.measures_alone.then(memory::PeakMeter::start).flatten();
        let _ = job.events.send(JobEvent::Started { load: timings.load });
        self.shared
            .events
            .publish(job_event(job, JobState::Started, String::new()));
        let result = {
            let mut model = lease.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.generate(job, &mut model, &is_cancelled, &mut timings)
        };
        self.residency.release(lease, Instant::now());
        if let (Some(meter), Ok(())) = (measure, &result) {
            let measured = meter.growth();
            let modelled = job.valid.modelled_working.peak();
            tracing::debug!(modelled, measured, "working memory");
            self.residency.record_working(&key, modelled, measured);
        }
        result?;
        timings.total = started.elapsed() + timings.queue;
        Ok(timings)
    }

    /// The job's images, `batch_size` at a time; image `i` draws from `seed + i`.
    fn generate(
        &self,
        job: &Job,
        model: &mut G::Model,
        is_cancelled: &dyn Fn() -> bool,
        timings: &mut JobTimings,
    ) -> Result<(), JobError> {
        let valid = &job.valid;
        let batch_size = valid.batch_size.max(1);
        let mut first = 0;
        let mut summarized = 0;
        while first < valid.count {
            let size = batch_size.min(valid.count - first);
            let seeds: Vec<u64> = (first..first + size)
                .map(|index| valid.seed.wrapping_add(u64::from(index)))
                .collect();
            let mut sources: Vec<SeededNoise> = seeds.iter().map(|&seed| SeededNoise::new(seed)).collect();
            let mut noises: Vec<&mut dyn NoiseSource> = sources.iter_mut().map(|s| s as &mut dyn NoiseSource).collect();
            let mut on_step = |image: usize, report: StepReport| {
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
            let output = self.residency.backend().generate_batch(
                model,
                &valid.prepared,
                &mut noises,
                is_cancelled,
                &mut on_step,
            )?;
            timings.encode += output.timings.encode;
            timings.denoise += output.timings.denoise;
            timings.decode += output.timings.decode;
            for ((offset, image), seed) in output.images.into_iter().enumerate().zip(seeds) {
                let parameters = metadata::a1111_parameters(&valid.prepared, seed);
                let easel = metadata::easel_json(&valid.prepared, seed);
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
