//! The gRPC handlers: each turns a request into a job-queue or catalog call and its answer back
//! into proto messages (through [`super::convert`]), mapping errors through [`super::status`].
//!
//! Nothing here blocks the async runtime: work that reads files or runs models goes through
//! [`off_runtime`]; streams whose client goes away cancel their work ([`cancel_on_drop`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use easel_proto::ON_BEHALF_OF;
use easel_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use super::DaemonInfo;
use super::convert::{
    daemon_event_to_proto, generate_spec, import_progress_to_proto, job_event_to_proto, model_info,
    pull_progress_to_proto, running_to_proto, show_reply,
};
use super::status::{catalog_status, job_status};
use crate::catalog::Catalog;
use crate::catalog::hub::{self, Hub};
use crate::catalog::store::{BundleFlags, ImportProgress};
use crate::config::KeepAlive;
use crate::generation::text;
use crate::jobs::{JobError, JobQueue};
use crate::outbox::{self, Droppable};

#[derive(Debug, Clone)]
pub struct EaselService {
    jobs: JobQueue,
    catalog: Arc<Catalog>,
    info: DaemonInfo,
    shutdown: Arc<Notify>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Byte counts of an import or a pull are superseded by the next ones.
impl Droppable for Result<pb::ImportEvent, Status> {
    fn droppable(&self) -> bool {
        matches!(
            self,
            Ok(pb::ImportEvent {
                event: Some(pb::import_event::Event::Bytes(_))
            })
        )
    }
}

impl Droppable for Result<pb::PullEvent, Status> {
    fn droppable(&self) -> bool {
        matches!(
            self,
            Ok(pb::PullEvent {
                event: Some(pb::pull_event::Event::Progress(_))
            })
        )
    }
}

/// Runs blocking work (file I/O, ONNX sessions) on the blocking pool; its error becomes a
/// status through `to_status`.
async fn off_runtime<T: Send + 'static, E: Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    to_status: impl FnOnce(&E) -> Status,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("a blocking task failed: {e}")))?
        .map_err(|e| to_status(&e))
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `stream`, setting `cancel` when tonic drops it — which it does when the client goes away —
/// so the job, import or pull behind it stops.
fn cancel_on_drop<T: Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    cancel: Arc<AtomicBool>,
) -> BoxStream<T> {
    let guard = CancelOnDrop(cancel);
    Box::pin(stream.map(move |item| {
        let _cancel_when_the_client_goes = &guard;
        item
    }))
}

impl EaselService {
    /// `shutdown` is notified when a client asks the daemon to stop.
    pub fn new(jobs: JobQueue, catalog: Arc<Catalog>, info: DaemonInfo, shutdown: Arc<Notify>) -> Self {
        Self {
            jobs,
            catalog,
            info,
            shutdown,
        }
    }

    /// Residency keys of the models resident now.
    fn loaded_keys(&self) -> Vec<String> {
        self.jobs
            .residency()
            .list(std::time::Instant::now())
            .into_iter()
            .map(|m| m.key)
            .collect()
    }
}

#[tonic::async_trait]
impl pb::easel_server::Easel for EaselService {
    type GenerateStream = BoxStream<pb::GenerateEvent>;
    type ImportModelStream = BoxStream<pb::ImportEvent>;
    type PullModelStream = BoxStream<pb::PullEvent>;
    type WatchEventsStream = BoxStream<pb::DaemonEvent>;

    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let client = client_of(&request);
        let mut spec = generate_spec(request.into_inner())?;
        spec.client = client;
        let handle = self.jobs.submit(spec).await.map_err(|e| job_status(&e))?;
        tracing::info!(job = %handle.id, "job queued");
        let job_id = handle.id.clone();
        let events = handle
            .events
            .into_stream()
            .map(move |event| job_event_to_proto(&job_id, event));
        Ok(Response::new(cancel_on_drop(events, handle.cancel)))
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        let id = request.into_inner().job_id;
        if self.jobs.cancel(&id) {
            Ok(Response::new(pb::CancelReply { cancelled: true }))
        } else {
            Err(Status::not_found(format!("no queued or running job has id `{id}`")))
        }
    }

    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeReply>, Status> {
        let request = request.into_inner();
        let limits = *self.jobs.limits();
        let invalid = |e: &dyn std::fmt::Display| Status::invalid_argument(e.to_string());
        text::check_chars("prompt", &request.prompt, limits.max_prompt_chars).map_err(|e| invalid(&e))?;
        let registry = self.jobs.registry().clone();
        // Opening the folder reads files and tokenizing costs time: both off the runtime.
        let reply = off_runtime(
            move || {
                let folder = registry
                    .open(&request.model)
                    .map_err(|e| job_status(&JobError::Registry(e)))?;
                let tokenizer = &folder.tokenizer;
                let tokens = tokenizer.encode(&request.prompt).map_err(|e| invalid(&e))?;
                let pieces = text::prompt::parse(&request.prompt).map_err(|e| invalid(&e))?;
                let chunks = text::tokenize(tokenizer, &pieces).map_err(|e| invalid(&e))?;
                text::check_chunks("prompt", &chunks, limits.max_prompt_chunks).map_err(|e| invalid(&e))?;
                Ok(pb::TokenizeReply {
                    ids: tokens.ids,
                    tokens: tokens.symbols,
                    truncated: tokens.truncated,
                    chunks: chunks
                        .into_iter()
                        .map(|(ids, weights)| pb::TokenChunk {
                            tokens: tokenizer.symbols(&ids),
                            ids,
                            weights,
                        })
                        .collect(),
                })
            },
            |status: &Status| status.clone(),
        )
        .await?;
        Ok(Response::new(reply))
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsReply>, Status> {
        let catalog = self.catalog.clone();
        let loaded = self.loaded_keys();
        let listed = off_runtime(move || Ok(catalog.list()), catalog_status).await?;
        Ok(Response::new(pb::ListModelsReply {
            models: listed.iter().map(|l| model_info(l, &loaded)).collect(),
        }))
    }

    async fn get_status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let status = self.jobs.status();
        let residency = self.jobs.residency();
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: self.info.device.clone(),
            device_note: self.info.device_note.clone(),
            queued_jobs: status.queued as u32,
            running_jobs: status.running as u32,
            loaded_models: status.loaded_models,
            onnxruntime_library: self.info.onnxruntime_library.clone(),
            pid: std::process::id(),
            socket: self.info.socket.clone(),
            memory_used_bytes: residency.used().host,
            memory_budget_bytes: residency.budget().host,
            working_memory_bytes: residency.working().host,
            vram_used_bytes: residency.used().device,
            vram_budget_bytes: residency.budget().device,
            default_model: crate::catalog::builtin::DEFAULT_MODEL.to_string(),
        }))
    }

    async fn show_model(&self, request: Request<pb::ShowModelRequest>) -> Result<Response<pb::ShowModelReply>, Status> {
        let reference = request.into_inner().model;
        let catalog = self.catalog.clone();
        let loaded = self.loaded_keys();
        let listed = off_runtime(move || catalog.show(&reference), catalog_status).await?;
        Ok(Response::new(show_reply(&listed, &loaded)))
    }

    async fn import_model(
        &self,
        request: Request<pb::ImportModelRequest>,
    ) -> Result<Response<Self::ImportModelStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = outbox::channel(outbox::DEFAULT_CAPACITY);
        let cancel = Arc::new(AtomicBool::new(false));
        let catalog = self.catalog.clone();
        let cancelled = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let mut progress = |p: ImportProgress| {
                let _ = tx.send(Ok(import_progress_to_proto(p)));
            };
            let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
            let flags = BundleFlags {
                family: request.family.clone(),
                prediction_type: request.prediction_type.clone(),
                sampler: request.sampler.clone(),
                vae_scaling_factor: request.vae_scaling_factor,
            };
            let result = catalog.import(
                std::path::Path::new(&request.path),
                name,
                request.replace,
                &flags,
                &mut progress,
                &|| cancelled.load(Ordering::SeqCst),
            );
            let done = result.map(|listed| pb::ImportEvent {
                event: Some(pb::import_event::Event::Done(model_info(&listed, &[]))),
            });
            let _ = tx.send(done.map_err(|e| catalog_status(&e)));
        });
        Ok(Response::new(cancel_on_drop(rx.into_stream(), cancel)))
    }

    async fn pull_model(
        &self,
        request: Request<pb::PullModelRequest>,
    ) -> Result<Response<Self::PullModelStream>, Status> {
        let request = request.into_inner();
        let (repo, revision) =
            hub::parse_reference(&request.repo).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A revision in the reference (`OWNER/REPO@REV`) wins over the request's field.
        let revision = if request.repo.contains('@') || request.revision.is_empty() {
            revision
        } else {
            request.revision.clone()
        };
        let hub = Hub::resolve(&request.endpoint, &request.token);
        let (tx, rx) = outbox::channel(outbox::DEFAULT_CAPACITY);
        let tx = Arc::new(tx);
        let cancel = Arc::new(AtomicBool::new(false));
        let catalog = self.catalog.clone();
        let cancelled = cancel.clone();
        tokio::spawn(async move {
            let stage = pb::pull_event::Event::Stage("downloading".into());
            let _ = tx.send(Ok(pb::PullEvent { event: Some(stage) }));
            let progress_tx = tx.clone();
            let progress = move |p: hub::PullProgress| {
                let _ = progress_tx.send(Ok(pull_progress_to_proto(p)));
            };
            let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
            let is_cancelled = || cancelled.load(Ordering::SeqCst);
            let result = catalog
                .pull(&hub, &repo, &revision, name, request.replace, &progress, &is_cancelled)
                .await;
            let done = result.map(|listed| pb::PullEvent {
                event: Some(pb::pull_event::Event::Done(model_info(&listed, &[]))),
            });
            let _ = tx.send(done.map_err(|e| catalog_status(&e)));
        });
        Ok(Response::new(cancel_on_drop(rx.into_stream(), cancel)))
    }

    async fn remove_model(
        &self,
        request: Request<pb::RemoveModelRequest>,
    ) -> Result<Response<pb::RemoveModelReply>, Status> {
        let name = request.into_inner().name;
        let catalog = self.catalog.clone();
        off_runtime(move || catalog.remove(&name), catalog_status).await?;
        Ok(Response::new(pb::RemoveModelReply {}))
    }

    async fn load_model(&self, request: Request<pb::LoadModelRequest>) -> Result<Response<pb::LoadModelReply>, Status> {
        let request = request.into_inner();
        let keep_alive = match request.keep_alive.trim() {
            "" => None,
            text => Some(KeepAlive::parse(text).map_err(Status::invalid_argument)?),
        };
        let jobs = self.jobs.clone();
        let running = off_runtime(move || jobs.load_model(&request.model, keep_alive), job_status).await?;
        Ok(Response::new(pb::LoadModelReply {
            model: Some(running_to_proto(&running, &self.info.device)),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::UnloadModelReply>, Status> {
        let model = request.into_inner().model;
        let jobs = self.jobs.clone();
        let unloaded = off_runtime(move || jobs.unload_model(&model), job_status).await?;
        Ok(Response::new(pb::UnloadModelReply { unloaded }))
    }

    async fn list_running(&self, _: Request<pb::ListRunningRequest>) -> Result<Response<pb::ListRunningReply>, Status> {
        let residency = self.jobs.residency();
        let models = residency
            .list(std::time::Instant::now())
            .iter()
            .map(|m| running_to_proto(m, &self.info.device))
            .collect();
        Ok(Response::new(pb::ListRunningReply {
            models,
            budget_bytes: residency.budget().host,
            used_bytes: residency.used().host,
            vram_budget_bytes: residency.budget().device,
            vram_used_bytes: residency.used().device,
        }))
    }

    async fn watch_events(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        // A watcher that falls behind loses old progress, never a change of state.
        let stream = self
            .jobs
            .events()
            .subscribe()
            .into_stream()
            .map(|stamped| Ok(daemon_event_to_proto(stamped)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownReply>, Status> {
        tracing::info!("shutdown requested by a client");
        self.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownReply {}))
    }
}

/// The longest on-behalf-of name kept (longer ones are cut: they only tell clients apart).
const MAX_ON_BEHALF_OF: usize = 128;

/// Who sent a request, for fair queueing: the peer process on the socket, and within it the
/// client it says it acts for. A process can only split its own share this way: every key it
/// makes starts with its pid.
fn client_of<T>(request: &Request<T>) -> String {
    let process = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .and_then(|cred| cred.pid())
        .map_or_else(|| "unknown".to_string(), |pid| format!("pid {pid}"));
    match request.metadata().get(ON_BEHALF_OF).and_then(|v| v.to_str().ok()) {
        Some(client) if !client.is_empty() => {
            let client: String = client.chars().take(MAX_ON_BEHALF_OF).collect();
            format!("{process} for {client}")
        }
        _ => process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_acting_for_others_splits_only_its_own_share() {
        let plain = Request::new(());
        assert_eq!(client_of(&plain), "unknown");
        let mut for_http = Request::new(());
        for_http
            .metadata_mut()
            .insert(ON_BEHALF_OF, "http 127.0.0.1:5000".parse().unwrap());
        assert_eq!(client_of(&for_http), "unknown for http 127.0.0.1:5000");
        let mut long = Request::new(());
        long.metadata_mut()
            .insert(ON_BEHALF_OF, "x".repeat(1000).parse().unwrap());
        assert_eq!(client_of(&long).len(), "unknown for ".len() + MAX_ON_BEHALF_OF);
    }
}
