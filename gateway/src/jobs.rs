//! The gateway's state: the daemon client, AUTOMATIC1111's current checkpoint and options, and
//! the jobs the gateway is running now.
//!
//! A1111 clients poll `/sdapi/v1/progress` and call `/sdapi/v1/interrupt` on a separate
//! connection from the one waiting for `txt2img`; so each generation registers itself here
//! ([`Gateway::generate`]) and keeps its step, its latest preview and its daemon job id up
//! to date from the gRPC stream, and `progress`/`interrupt` read that. The entry is removed
//! when the generation ends or its HTTP client hangs up (the guard drops with the handler).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use easel_proto::ON_BEHALF_OF;
use easel_proto::v1 as pb;
use easel_proto::v1::easel_client::EaselClient;
use easel_proto::v1::generate_event::Event;
use futures::StreamExt;
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::Config;

/// The gateway's shared state; one per [`crate::router`].
pub struct Gateway {
    pub daemon: EaselClient<Channel>,
    pub config: Config,
    /// A1111's `sd_model_checkpoint`; `None`: the daemon's default model.
    checkpoint: Mutex<Option<String>>,
    /// A1111 options a client set (only the keys [`crate::a1111`] knows).
    options: Mutex<Map<String, Value>>,
    jobs: Mutex<Jobs>,
    /// Generation requests open now, at most `config.max_generations`.
    pub generations: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Jobs {
    next: u64,
    running: BTreeMap<u64, Tracked>,
}

/// One generation the gateway runs, as the stream has told it so far.
#[derive(Debug, Clone)]
struct Tracked {
    /// "txt2img", "img2img", "openai".
    kind: &'static str,
    job_id: Option<String>,
    /// When the daemon started it (it may have queued first).
    started: Option<Instant>,
    /// A1111's `job_timestamp`, `YYYYMMDDhhmmss` (UTC).
    timestamp: String,
    count: u32,
    /// Denoising steps per image, from the first Progress event.
    steps: u32,
    /// The last step reported for each image.
    image_steps: Vec<u32>,
    preview: Option<Vec<u8>>,
    interrupted: bool,
}

/// What a finished (or interrupted) generation produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub images: Vec<pb::Image>,
    /// Cancelled through `/sdapi/v1/interrupt`: `images` holds those finished before.
    pub interrupted: bool,
}

/// `/sdapi/v1/progress` in the gateway's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Generations running or queued through this gateway.
    pub job_count: u32,
    pub kind: &'static str,
    pub timestamp: String,
    /// 0..=1 over all images of the reported generation.
    pub progress: f64,
    /// Seconds left, extrapolated from the time so far.
    pub eta_seconds: f64,
    pub step: u32,
    pub steps: u32,
    pub preview: Option<Vec<u8>>,
    pub interrupted: bool,
}

/// Removes a generation's entry when the generation ends, however it ends.
struct Registration<'a> {
    gateway: &'a Gateway,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.gateway.jobs.lock().expect("jobs lock").running.remove(&self.id);
    }
}

impl Gateway {
    pub fn new(daemon: EaselClient<Channel>, config: Config) -> Self {
        Self {
            daemon,
            generations: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_generations)),
            config,
            checkpoint: Mutex::new(None),
            options: Mutex::new(Map::new()),
            jobs: Mutex::new(Jobs::default()),
        }
    }

    /// A1111's current checkpoint (`None`: the daemon's default).
    pub fn checkpoint(&self) -> Option<String> {
        self.checkpoint.lock().expect("checkpoint lock").clone()
    }

    pub fn set_checkpoint(&self, model: Option<String>) {
        *self.checkpoint.lock().expect("checkpoint lock") = model;
    }

    /// The A1111 options clients have set.
    pub fn options(&self) -> Map<String, Value> {
        self.options.lock().expect("options lock").clone()
    }

    pub fn set_option(&self, key: &str, value: Value) {
        self.options
            .lock()
            .expect("options lock")
            .insert(key.to_string(), value);
    }

    /// A daemon client; cheap (the channel is shared).
    pub fn client(&self) -> EaselClient<Channel> {
        self.daemon.clone()
    }

    /// The names of the installed models, for matching and for error messages.
    pub async fn model_names(&self) -> Result<Vec<String>, tonic::Status> {
        let reply = self.client().list_models(pb::ListModelsRequest {}).await?.into_inner();
        Ok(reply.models.into_iter().map(|m| m.name).collect())
    }

    /// Runs `request` in the daemon for `peer`, keeping its progress visible to
    /// [`Self::snapshot`] and [`Self::interrupt`]; collects its images. `on_progress` sees every
    /// Progress event (for streaming clients).
    pub async fn generate(
        &self,
        kind: &'static str,
        request: pb::GenerateRequest,
        peer: Option<SocketAddr>,
        mut on_progress: impl FnMut(&pb::Progress),
    ) -> Result<Outcome, tonic::Status> {
        let count = request.count.unwrap_or(1).max(1);
        let registration = self.register(kind, count);
        let mut call = tonic::Request::new(request);
        if let Some(peer) = peer
            && let Ok(value) = format!("http {peer}").parse()
        {
            call.metadata_mut().insert(ON_BEHALF_OF, value);
        }
        let mut stream = self.client().generate(call).await?.into_inner();
        let mut outcome = Outcome::default();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(status) if status.code() == tonic::Code::Cancelled && self.was_interrupted(registration.id) => {
                    outcome.interrupted = true;
                    return Ok(outcome);
                }
                Err(status) => return Err(status),
            };
            match event.event {
                Some(Event::Queued(queued)) => self.update(registration.id, |job| job.job_id = Some(queued.job_id)),
                Some(Event::Started(_)) => self.update(registration.id, |job| job.started = Some(Instant::now())),
                Some(Event::Progress(progress)) => {
                    on_progress(&progress);
                    self.update(registration.id, |job| {
                        job.started.get_or_insert_with(Instant::now);
                        job.steps = progress.total;
                        if let Some(step) = job.image_steps.get_mut(progress.image_index as usize) {
                            *step = progress.step;
                        }
                        if !progress.preview_png.is_empty() {
                            job.preview = Some(progress.preview_png);
                        }
                    });
                }
                Some(Event::Image(image)) => {
                    self.update(registration.id, |job| {
                        if let Some(step) = job.image_steps.get_mut(image.index as usize) {
                            *step = job.steps;
                        }
                    });
                    outcome.images.push(image);
                }
                Some(Event::Finished(_)) => break,
                None => {}
            }
        }
        Ok(outcome)
    }

    fn register(&self, kind: &'static str, count: u32) -> Registration<'_> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let id = jobs.next;
        jobs.next += 1;
        jobs.running.insert(
            id,
            Tracked {
                kind,
                job_id: None,
                started: None,
                timestamp: timestamp(SystemTime::now()),
                count,
                steps: 0,
                image_steps: vec![0; count as usize],
                preview: None,
                interrupted: false,
            },
        );
        Registration { gateway: self, id }
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Tracked)) {
        if let Some(job) = self.jobs.lock().expect("jobs lock").running.get_mut(&id) {
            change(job);
        }
    }

    fn was_interrupted(&self, id: u64) -> bool {
        self.jobs
            .lock()
            .expect("jobs lock")
            .running
            .get(&id)
            .is_some_and(|job| job.interrupted)
    }

    /// Cancels the generations that have started in the daemon (A1111's interrupt stops the
    /// current job, not the queue behind it); their requests answer with the images finished
    /// so far. Returns how many were cancelled.
    pub async fn interrupt(&self) -> Result<usize, tonic::Status> {
        let job_ids: Vec<String> = {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.running
                .values_mut()
                .filter(|job| job.started.is_some())
                .filter_map(|job| {
                    job.interrupted = true;
                    job.job_id.clone()
                })
                .collect()
        };
        let mut cancelled = 0;
        for job_id in job_ids {
            let reply = self.client().cancel(pb::CancelRequest { job_id }).await;
            match reply {
                Ok(reply) if reply.get_ref().cancelled => cancelled += 1,
                Ok(_) => {}
                // It ended between the snapshot and the call.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Ok(cancelled)
    }

    /// The oldest running generation (else the oldest queued one) and how many there are.
    pub fn snapshot(&self) -> Snapshot {
        let jobs = self.jobs.lock().expect("jobs lock");
        let job_count = u32::try_from(jobs.running.len()).unwrap_or(u32::MAX);
        let current = jobs
            .running
            .values()
            .find(|job| job.started.is_some())
            .or_else(|| jobs.running.values().next());
        let Some(job) = current else {
            return Snapshot::default();
        };
        let total = f64::from(job.steps) * f64::from(job.count);
        let done: f64 = job.image_steps.iter().map(|&s| f64::from(s)).sum();
        let progress = if total > 0.0 {
            (done / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let eta_seconds = match job.started {
            Some(started) if progress > 0.0 => {
                let elapsed = started.elapsed().as_secs_f64();
                (elapsed / progress - elapsed).max(0.0)
            }
            _ => 0.0,
        };
        // The step of the image being drawn: the first that has not finished.
        let step = job
            .image_steps
            .iter()
            .copied()
            .find(|&s| s < job.steps)
            .unwrap_or(job.steps);
        Snapshot {
            job_count,
            kind: job.kind,
            timestamp: job.timestamp.clone(),
            progress,
            eta_seconds,
            step,
            steps: job.steps,
            preview: job.preview.clone(),
            interrupted: job.interrupted,
        }
    }
}

/// `YYYYMMDDhhmmss` in UTC, A1111's `job_timestamp` format.
pub fn timestamp(time: SystemTime) -> String {
    let seconds = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_time() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "19700101000000");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_263_262);
        assert_eq!(timestamp(time), "20261203020102");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "20000229000000");
    }
}
