//! The gRPC face of the daemon: the one module that knows the proto types.
//!
//! It turns requests into engine calls and engine events into `GenerateEvent`s, and maps every
//! error to the status code DESIGN.md assigns it, with a message a person can act on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use easel_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::Notify;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError, GenerateSpec, JobEvent};
use crate::error_chain;
use crate::events::{DaemonEvent, Stamped};
use crate::image::RgbImage;
use crate::model::ModelError;
use crate::model::onnx::HostTensor;
use crate::models::{Listed, Models, ModelsError};
use crate::pipeline::{PreviewKind, PreviewSettings};
use crate::registry::RegistryError;
use crate::residency::{KeepAlive, Running};
use crate::store::ImportProgress;

/// Facts about the running daemon reported by `GetStatus`.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub device: String,
    pub onnxruntime_library: String,
    pub socket: String,
}

#[derive(Debug, Clone)]
pub struct EaselService {
    engine: Engine,
    models: Arc<Models>,
    info: DaemonInfo,
    shutdown: Arc<Notify>,
}

impl EaselService {
    /// `shutdown` is notified when a client asks the daemon to stop.
    pub fn new(engine: Engine, models: Arc<Models>, info: DaemonInfo, shutdown: Arc<Notify>) -> Self {
        Self {
            engine,
            models,
            info,
            shutdown,
        }
    }

    /// Paths of the models resident now.
    fn loaded_paths(&self) -> Vec<String> {
        self.engine
            .residency()
            .list(std::time::Instant::now())
            .into_iter()
            .map(|m| m.key)
            .collect()
    }
}

/// Runs blocking model-store work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ModelsError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| models_status(&e))
}

fn model_info(listed: &Listed, loaded: &[String]) -> pb::ModelInfo {
    let d = listed.description.as_ref().ok();
    pb::ModelInfo {
        name: listed.name.clone(),
        path: listed.path.display().to_string(),
        default_sampler: d.map(|d| d.default_sampler.clone()).unwrap_or_default(),
        prediction_type: d.map(|d| d.prediction_type.clone()).unwrap_or_default(),
        loaded: loaded.contains(&crate::engine::residency_key(&listed.path)),
        family: d.map(|d| d.family.clone()).unwrap_or_default(),
        dtype: d.map(|d| d.dtype.clone()).unwrap_or_default(),
        size_bytes: d.map(|d| d.size_bytes).unwrap_or_default(),
        source: listed.source.as_str().to_string(),
    }
}

fn tensor_spec(io: &crate::model::onnx::IoSpec) -> pb::TensorSpec {
    pb::TensorSpec {
        name: io.name.clone(),
        dtype: io.dtype.to_string(),
        shape: io.shape.clone(),
    }
}

fn models_status(error: &ModelsError) -> Status {
    use crate::hub::HubError as H;
    use crate::store::StoreError as S;
    let message = error_chain(error);
    match error {
        ModelsError::Store(S::AlreadyInstalled { .. }) => Status::already_exists(message),
        ModelsError::Store(S::NotInstalled { .. }) => Status::not_found(message),
        ModelsError::Store(S::Invalid { .. }) | ModelsError::Describe(_) | ModelsError::InUse { .. } => {
            Status::failed_precondition(message)
        }
        ModelsError::Store(S::Cancelled) | ModelsError::Hub(H::Cancelled) => Status::cancelled(message),
        ModelsError::Store(S::Io { .. }) | ModelsError::Task(_) => Status::internal(message),
        ModelsError::AlreadyPulling { .. } => Status::aborted(message),
        ModelsError::Store(_) | ModelsError::InvalidArgument(_) => Status::invalid_argument(message),
        ModelsError::Registry(e) => registry_status(e, message),
        ModelsError::Hub(H::InvalidReference { .. } | H::InvalidEndpoint { .. }) => Status::invalid_argument(message),
        ModelsError::Hub(H::Unauthorized { .. } | H::Gated { .. }) => Status::permission_denied(message),
        ModelsError::Hub(H::NotFound { .. } | H::NotFoundOrPrivate { .. } | H::FileNotFound { .. }) => {
            Status::not_found(message)
        }
        ModelsError::Hub(H::NotOnnxModel { .. }) => Status::failed_precondition(message),
        ModelsError::Hub(H::SizeMismatch { .. } | H::HashMismatch { .. }) => Status::data_loss(message),
        ModelsError::Hub(_) => Status::unavailable(message),
    }
}

/// A model name or folder that does not resolve: NOT_FOUND when it is not there, else
/// FAILED_PRECONDITION (it is there but broken).
fn registry_status(error: &RegistryError, message: String) -> Status {
    match error {
        RegistryError::UnknownName { .. } | RegistryError::Model(ModelError::NotFound { .. }) => {
            Status::not_found(message)
        }
        RegistryError::Model(_) | RegistryError::Builtin(_) => Status::failed_precondition(message),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateEvent, Status>> + Send>>;

/// Cancels its job when dropped: tonic drops the response stream when the client goes away.
struct CancelOnDrop(Arc<AtomicBool>);

/// The stream of `rx` that sets the guard's flag when tonic drops it (the client went away).
fn cancel_on_drop<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<T, Status>>,
    guard: CancelOnDrop,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    Box::pin(UnboundedReceiverStream::new(rx).map(move |item| {
        let _cancel_when_the_client_goes = &guard;
        item
    }))
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl pb::easel_server::Easel for EaselService {
    type GenerateStream = EventStream;

    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<EventStream>, Status> {
        let client = client_of(&request);
        let mut spec = generate_spec(request.into_inner())?;
        spec.client = client;
        let handle = self.engine.submit(spec).await.map_err(status_of)?;
        tracing::info!(job = %handle.id, "job queued");
        let job_id = handle.id.clone();
        let guard = CancelOnDrop(handle.cancel.clone());
        let stream = UnboundedReceiverStream::new(handle.events).map(move |event| {
            let _keep_alive_until_stream_drops = &guard;
            event_to_proto(&job_id, event)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        let id = request.into_inner().job_id;
        if self.engine.cancel(&id) {
            Ok(Response::new(pb::CancelReply { cancelled: true }))
        } else {
            Err(Status::not_found(format!("no queued or running job has id `{id}`")))
        }
    }

    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeReply>, Status> {
        let request = request.into_inner();
        let registry = self.engine.registry().clone();
        let folder = tokio::task::spawn_blocking(move || registry.open(&request.model))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| status_of(EngineError::Registry(e)))?;
        let tokenizer = &folder.tokenizer;
        let tokens = tokenizer
            .encode(&request.prompt)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let pieces = crate::prompt::parse(&request.prompt).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let chunks = crate::prompt::chunk(&pieces, tokenizer.max_length() - 2, |text| tokenizer.token_ids(text))
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .into_iter()
            .map(|(ids, weights)| pb::TokenChunk {
                tokens: tokenizer.symbols(&ids),
                ids,
                weights,
            })
            .collect();
        Ok(Response::new(pb::TokenizeReply {
            ids: tokens.ids,
            tokens: tokens.symbols,
            truncated: tokens.truncated,
            chunks,
        }))
    }

    async fn list_models(&self, _: Request<pb::ListModelsRequest>) -> Result<Response<pb::ListModelsReply>, Status> {
        let models = self.models.clone();
        let loaded = self.loaded_paths();
        let listed = blocking(move || Ok(models.list())).await?;
        Ok(Response::new(pb::ListModelsReply {
            models: listed.iter().map(|l| model_info(l, &loaded)).collect(),
        }))
    }

    async fn get_status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let status = self.engine.status();
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: self.info.device.clone(),
            queued_jobs: status.queued as u32,
            running_jobs: status.running as u32,
            loaded_models: status.loaded_models,
            onnxruntime_library: self.info.onnxruntime_library.clone(),
            pid: std::process::id(),
            socket: self.info.socket.clone(),
            memory_used_bytes: self.engine.residency().used(),
            memory_budget_bytes: self.engine.residency().budget(),
        }))
    }

    type ImportModelStream = Pin<Box<dyn Stream<Item = Result<pb::ImportEvent, Status>> + Send>>;
    type PullModelStream = Pin<Box<dyn Stream<Item = Result<pb::PullEvent, Status>> + Send>>;
    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::DaemonEvent, Status>> + Send>>;

    async fn show_model(&self, request: Request<pb::ShowModelRequest>) -> Result<Response<pb::ShowModelReply>, Status> {
        let reference = request.into_inner().model;
        let models = self.models.clone();
        let loaded = self.loaded_paths();
        let listed = blocking(move || models.show(&reference)).await?;
        let description = listed.description.as_ref().expect("show describes or fails");
        Ok(Response::new(pb::ShowModelReply {
            info: Some(model_info(&listed, &loaded)),
            files: description
                .files
                .iter()
                .map(|(path, size)| pb::ModelFile {
                    path: path.clone(),
                    size_bytes: *size,
                })
                .collect(),
            parts: description
                .parts
                .iter()
                .map(|part| pb::SubModel {
                    name: part.name.clone(),
                    inputs: part.inputs.iter().map(tensor_spec).collect(),
                    outputs: part.outputs.iter().map(tensor_spec).collect(),
                })
                .collect(),
            native_width: description.native_size,
            native_height: description.native_size,
        }))
    }

    async fn import_model(
        &self,
        request: Request<pb::ImportModelRequest>,
    ) -> Result<Response<Self::ImportModelStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(cancel.clone());
        let (models, engine) = (self.models.clone(), self.engine.clone());
        tokio::task::spawn_blocking(move || {
            let progress_tx = tx.clone();
            let mut progress = |p: ImportProgress| {
                let event = match p {
                    ImportProgress::Stage(stage) => pb::import_event::Event::Stage(stage.as_str().to_string()),
                    ImportProgress::Bytes { done, total } => {
                        pb::import_event::Event::Bytes(pb::ByteProgress { done, total })
                    }
                };
                let _ = progress_tx.send(Ok(pb::ImportEvent { event: Some(event) }));
            };
            let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
            let result = models.import(
                &engine,
                std::path::Path::new(&request.path),
                name,
                request.replace,
                &mut progress,
                &|| cancel.load(Ordering::SeqCst),
            );
            let last = result.map_or_else(
                |e| Err(models_status(&e)),
                |listed| {
                    Ok(pb::ImportEvent {
                        event: Some(pb::import_event::Event::Done(model_info(&listed, &[]))),
                    })
                },
            );
            let _ = tx.send(last);
        });
        Ok(Response::new(cancel_on_drop(rx, guard)))
    }

    async fn pull_model(
        &self,
        request: Request<pb::PullModelRequest>,
    ) -> Result<Response<Self::PullModelStream>, Status> {
        let request = request.into_inner();
        let (repo, revision) = match request.repo.split_once('@') {
            Some(_) => crate::hub::parse_reference(&request.repo),
            None => crate::hub::parse_reference(&request.repo).map(|(repo, rev)| {
                let revision = if request.revision.is_empty() {
                    rev
                } else {
                    request.revision.clone()
                };
                (repo, revision)
            }),
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hub = crate::hub::Hub::resolve(&request.endpoint, &request.token);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(cancel.clone());
        let (models, engine) = (self.models.clone(), self.engine.clone());
        tokio::spawn(async move {
            let _ = tx.send(Ok(pb::PullEvent {
                event: Some(pb::pull_event::Event::Stage("downloading".into())),
            }));
            let progress_tx = tx.clone();
            let progress = move |p: crate::hub::PullProgress| {
                let _ = progress_tx.send(Ok(pb::PullEvent {
                    event: Some(pb::pull_event::Event::Progress(pb::PullProgress {
                        files_done: p.files_done,
                        files_total: p.files_total,
                        bytes_done: p.bytes_done,
                        bytes_total: p.bytes_total,
                        file: p.file,
                    })),
                }));
            };
            let name = Some(request.name.as_str()).filter(|n| !n.is_empty());
            let result = models
                .pull(
                    &engine,
                    &hub,
                    &repo,
                    &revision,
                    name,
                    request.replace,
                    &progress,
                    &|| cancel.load(Ordering::SeqCst),
                )
                .await;
            let last = result.map_or_else(
                |e| Err(models_status(&e)),
                |listed| {
                    Ok(pb::PullEvent {
                        event: Some(pb::pull_event::Event::Done(model_info(&listed, &[]))),
                    })
                },
            );
            let _ = tx.send(last);
        });
        Ok(Response::new(cancel_on_drop(rx, guard)))
    }

    async fn remove_model(
        &self,
        request: Request<pb::RemoveModelRequest>,
    ) -> Result<Response<pb::RemoveModelReply>, Status> {
        let name = request.into_inner().name;
        let (models, engine) = (self.models.clone(), self.engine.clone());
        blocking(move || models.remove(&engine, &name)).await?;
        Ok(Response::new(pb::RemoveModelReply {}))
    }

    async fn load_model(&self, request: Request<pb::LoadModelRequest>) -> Result<Response<pb::LoadModelReply>, Status> {
        let request = request.into_inner();
        let keep_alive = match request.keep_alive.trim() {
            "" => None,
            text => Some(KeepAlive::parse(text).map_err(Status::invalid_argument)?),
        };
        let engine = self.engine.clone();
        let running = tokio::task::spawn_blocking(move || engine.load_model(&request.model, keep_alive))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status_of)?;
        Ok(Response::new(pb::LoadModelReply {
            model: Some(running_to_proto(&running, &self.info.device)),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::UnloadModelReply>, Status> {
        let model = request.into_inner().model;
        let engine = self.engine.clone();
        let unloaded = tokio::task::spawn_blocking(move || engine.unload_model(&model))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status_of)?;
        Ok(Response::new(pb::UnloadModelReply { unloaded }))
    }

    async fn list_running(&self, _: Request<pb::ListRunningRequest>) -> Result<Response<pb::ListRunningReply>, Status> {
        let residency = self.engine.residency();
        let models = residency
            .list(std::time::Instant::now())
            .iter()
            .map(|m| running_to_proto(m, &self.info.device))
            .collect();
        Ok(Response::new(pb::ListRunningReply {
            models,
            budget_bytes: residency.budget(),
            used_bytes: residency.used(),
        }))
    }

    async fn watch_events(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        let receiver = self.engine.events().subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(receiver).filter_map(|item| async move {
            // A watcher that fell behind skips what it missed rather than failing.
            item.ok().map(|stamped| Ok(daemon_event_to_proto(stamped)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownReply>, Status> {
        tracing::info!("shutdown requested by a client");
        self.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownReply {}))
    }
}

/// Who sent a request, for fair queueing: the peer process on the socket.
fn client_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .and_then(|cred| cred.pid())
        .map_or_else(|| "unknown".to_string(), |pid| format!("pid {pid}"))
}

fn generate_spec(request: pb::GenerateRequest) -> Result<GenerateSpec, Status> {
    let init_noise = request.init_noise.map(tensor_from_proto).transpose()?;
    let preview = request.preview.unwrap_or_default();
    Ok(GenerateSpec {
        model: request.model,
        prompt: request.prompt,
        negative_prompt: request.negative_prompt,
        width: request.width,
        height: request.height,
        steps: request.steps,
        guidance_scale: request.guidance_scale,
        sampler: Some(request.sampler).filter(|s| !s.is_empty()),
        seed: request.seed,
        count: request.count,
        init_noise,
        init_image: Some(request.init_image).filter(|b| !b.is_empty()),
        strength: request.strength,
        mask_image: Some(request.mask_image).filter(|b| !b.is_empty()),
        mask_blur: request.mask_blur,
        clip_skip: request.clip_skip,
        keep_alive: Some(request.keep_alive).filter(|k| !k.trim().is_empty()),
        client: String::new(),
        preview: PreviewSettings {
            every_n_steps: preview.every_n_steps,
            latents: preview.stream_latents,
            image: match pb::PreviewImage::try_from(preview.image).unwrap_or(pb::PreviewImage::None) {
                pb::PreviewImage::None => PreviewKind::None,
                pb::PreviewImage::Approx => PreviewKind::Approx,
                pb::PreviewImage::Full => PreviewKind::Full,
            },
        },
    })
}

fn running_to_proto(running: &Running, device: &str) -> pb::RunningModel {
    pb::RunningModel {
        name: running.name.clone(),
        memory_bytes: running.memory,
        device: device.to_string(),
        expires_unix_ms: running.expires.map_or(0, crate::engine::unix_ms),
        in_use: running.in_use,
        path: running.key.clone(),
    }
}

fn daemon_event_to_proto(stamped: Stamped) -> pb::DaemonEvent {
    use pb::daemon_event::Event;
    let unix_ms = stamped
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let event = match stamped.event {
        DaemonEvent::Job {
            id,
            model,
            state,
            position,
            step,
            total,
            message,
        } => Event::Job(pb::JobEvent {
            job_id: id,
            model,
            state: state.as_str().to_string(),
            position,
            step,
            total,
            message,
        }),
        DaemonEvent::Model {
            model,
            state,
            memory,
            reason,
        } => Event::Model(pb::ModelEvent {
            model,
            state: state.as_str().to_string(),
            memory_bytes: memory,
            reason,
        }),
        DaemonEvent::Import {
            name,
            state,
            bytes_done,
            bytes_total,
            message,
        } => Event::Import(pb::ImportNotice {
            name,
            state,
            bytes_done,
            bytes_total,
            message,
        }),
    };
    pb::DaemonEvent {
        unix_ms,
        event: Some(event),
    }
}

fn tensor_from_proto(tensor: pb::Tensor) -> Result<HostTensor<f32>, Status> {
    let shape: Vec<usize> = tensor
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Status::invalid_argument(format!("tensor shape {:?} has a negative dimension", tensor.shape))
            })
        })
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let data: Vec<f32> = match pb::Dtype::try_from(tensor.dtype).unwrap_or(pb::Dtype::Unspecified) {
        pb::Dtype::F32 | pb::Dtype::Unspecified => {
            if tensor.data.len() != count * 4 {
                return Err(Status::invalid_argument(format!(
                    "f32 tensor of shape {shape:?} needs {} bytes, got {}",
                    count * 4,
                    tensor.data.len()
                )));
            }
            tensor
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        pb::Dtype::F16 => {
            if tensor.data.len() != count * 2 {
                return Err(Status::invalid_argument(format!(
                    "f16 tensor of shape {shape:?} needs {} bytes, got {}",
                    count * 2,
                    tensor.data.len()
                )));
            }
            tensor
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        }
    };
    Ok(HostTensor::new(shape, data))
}

fn tensor_to_proto(tensor: &HostTensor<f32>) -> pb::Tensor {
    pb::Tensor {
        shape: tensor.shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::Dtype::F32 as i32,
        data: tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

fn event_to_proto(job_id: &str, event: JobEvent) -> Result<pb::GenerateEvent, Status> {
    use pb::generate_event::Event;
    let event = match event {
        JobEvent::Queued { position } => Event::Queued(pb::Queued {
            job_id: job_id.to_string(),
            position,
        }),
        JobEvent::Started { load } => Event::Started(pb::Started {
            job_id: job_id.to_string(),
            load_ms: ms(load),
        }),
        JobEvent::Progress { image_index, report } => Event::Progress(pb::Progress {
            step: report.step as u32,
            total: report.total as u32,
            elapsed_ms: ms(report.elapsed),
            latent: report.latent.as_ref().map(tensor_to_proto),
            preview_png: report
                .preview
                .as_ref()
                .map(|p: &RgbImage| p.to_png(&[]))
                .unwrap_or_default(),
            image_index,
        }),
        JobEvent::Image {
            index,
            seed,
            image,
            parameters,
            metadata_json,
        } => Event::Image(pb::Image {
            index,
            png: image.to_png(&[("parameters", &parameters), ("easel", &metadata_json)]),
            seed,
            width: image.width,
            height: image.height,
            parameters,
        }),
        JobEvent::Finished { timings } => Event::Finished(pb::Finished {
            job_id: job_id.to_string(),
            timings: Some(pb::Timings {
                queue_ms: ms(timings.queue),
                load_ms: ms(timings.load),
                encode_ms: ms(timings.encode),
                denoise_ms: ms(timings.denoise),
                decode_ms: ms(timings.decode),
                total_ms: ms(timings.total),
            }),
        }),
        JobEvent::Failed(error) => return Err(status_of(error)),
    };
    Ok(pb::GenerateEvent { event: Some(event) })
}

fn status_of(error: EngineError) -> Status {
    let message = error_chain(&error);
    match &error {
        EngineError::InvalidArgument(_) => Status::invalid_argument(message),
        EngineError::Registry(e) => registry_status(e, message),
        EngineError::Model(ModelError::NotFound { .. }) => Status::not_found(message),
        EngineError::Model(_) => Status::failed_precondition(message),
        EngineError::QueueFull(_) => Status::resource_exhausted(message),
        EngineError::Cancelled => Status::cancelled(message),
        EngineError::ShuttingDown => Status::unavailable(message),
        EngineError::Pipeline(_) => Status::internal(message),
        EngineError::OutOfMemory(_) => Status::resource_exhausted(message),
        EngineError::LoadFailed(_) => Status::failed_precondition(message),
    }
}
