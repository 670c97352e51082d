//! OpenAI's images API (`/v1/images/generations`, `/v1/images/edits`, `/v1/models`), for
//! the agent tools, chat front ends and proxies that speak it.
//!
//! - Model names: OpenAI's own (`dall-e-2`, `dall-e-3`, `gpt-image-*`), which clients send by
//!   default, mean the daemon's default model; an installed model's name means that model;
//!   anything else is a 404 that lists the installed models.
//! - `response_format: "url"` is answered with a `data:image/png;base64,…` URL: easel keeps
//!   no pictures to link to, and a data URL is what such clients can still display.
//! - Edits: OpenAI's mask is a PNG whose transparent pixels are repainted; without a mask, an
//!   image with transparency is repainted where it is transparent (as `dall-e-2` does), and an
//!   opaque one is redrawn as a whole (img2img).
//! - `stream: true` answers with server-sent events as OpenAI's image streaming does:
//!   `partial_images` (0–3) `image_generation.partial_image` events, full VAE decodes of the
//!   picture so far, then one `image_generation.completed` per picture.
//! - Beside OpenAI's fields, `negative_prompt`, `seed`, `steps`, `guidance_scale` and
//!   `sampler` (easel's names) are accepted, as other local OpenAI-compatible servers do.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use easel_proto::v1 as pb;
use serde_json::{Map, Value, json};

use crate::Peer;
use crate::error::{ApiError, OpenAiError};
use crate::fields::{self, Fields};
use crate::images;
use crate::jobs::{Gateway, Outcome};

type Response = Result<Json<Value>, OpenAiError>;

/// The most images one request may ask for (OpenAI's own limit is 10).
const MAX_N: u32 = 10;

/// The daemon's steps when a request sets none (for spacing partial images).
const DEFAULT_STEPS: u32 = 20;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(edits))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
}

/// Whether `name` is one of OpenAI's image models, which clients send by default.
fn is_openai_model(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("dall-e") || name.starts_with("gpt-image") || name.starts_with("chatgpt-image")
}

/// The daemon model for OpenAI's `model` field: "" (the daemon's default) for OpenAI's names
/// or none, an installed model's name, else a 404 listing the installed ones.
async fn resolve_model(gateway: &Gateway, model: Option<&str>) -> Result<String, ApiError> {
    let Some(model) = model.map(str::trim).filter(|m| !m.is_empty()) else {
        return Ok(String::new());
    };
    if is_openai_model(model) {
        return Ok(String::new());
    }
    let names = gateway.model_names().await?;
    if names.iter().any(|name| name == model) {
        return Ok(model.to_string());
    }
    Err(ApiError {
        param: Some("model".into()),
        ..ApiError::not_found(format!(
            "the model `{model}` does not exist here; installed: {} (or use dall-e-2, dall-e-3 or gpt-image-1 for the default model)",
            names.join(", ")
        ))
    })
}

async fn models(State(gateway): State<Arc<Gateway>>) -> Response {
    let reply = gateway
        .client()
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    let data: Vec<Value> = reply.models.iter().map(|m| model_object(&m.name)).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn model(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let names = gateway.model_names().await?;
    if names.contains(&name) || is_openai_model(&name) {
        return Ok(Json(model_object(&name)));
    }
    Err(ApiError::not_found(format!(
        "the model `{name}` does not exist here; installed: {}",
        names.join(", ")
    ))
    .into())
}

fn model_object(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "easel" })
}

/// A request in OpenAI's terms, whichever way it came (JSON or multipart form).
#[derive(Debug, Default)]
struct ImageRequest {
    prompt: String,
    model: Option<String>,
    n: Option<u32>,
    size: Option<(u32, u32)>,
    /// `url` answers with data URLs.
    as_url: bool,
    negative_prompt: String,
    seed: Option<u64>,
    steps: Option<u32>,
    guidance_scale: Option<f32>,
    sampler: String,
    /// Answer with server-sent events: `partial_images` previews, then each picture.
    stream: bool,
    partial_images: u32,
}

/// `"1024x1024"` → (1024, 1024); `"auto"` or none → the model's own size.
fn parse_size(size: Option<&str>) -> Result<Option<(u32, u32)>, ApiError> {
    let Some(size) = size.map(str::trim).filter(|s| !s.is_empty() && *s != "auto") else {
        return Ok(None);
    };
    let parsed = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0);
    parsed.map(Some).ok_or_else(|| {
        ApiError::invalid(
            "size",
            format!("size must be WIDTHxHEIGHT (e.g. 512x512) or auto, not `{size}`"),
        )
    })
}

impl ImageRequest {
    fn from_fields(fields: Fields<'_>) -> Result<Self, ApiError> {
        let prompt = fields.string("prompt")?.unwrap_or_default();
        if prompt.trim().is_empty() {
            return Err(ApiError::invalid("prompt", "prompt is required"));
        }
        match fields.string("response_format")? {
            None | Some("b64_json" | "url") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("response_format must be b64_json or url, not `{other}`"),
                ));
            }
        }
        match fields.string("output_format")? {
            None | Some("png") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "output_format",
                    format!("easel makes PNG pictures; output_format `{other}` is not available, use png"),
                ));
            }
        }
        if fields.string("background")? == Some("transparent") {
            return Err(ApiError::invalid(
                "background",
                "easel cannot make transparent backgrounds; use auto or opaque",
            ));
        }
        let stream = fields.boolean("stream")?.unwrap_or(false);
        Ok(Self {
            stream,
            partial_images: fields.u32_in("partial_images", 0, 3)?.unwrap_or(0),
            prompt: prompt.to_string(),
            model: fields.string("model")?.map(str::to_string),
            n: fields.u32_in("n", 1, MAX_N)?,
            size: parse_size(fields.string("size")?)?,
            as_url: fields.string("response_format")? == Some("url"),
            negative_prompt: fields.string("negative_prompt")?.unwrap_or_default().to_string(),
            seed: fields.integer("seed")?.and_then(|s| u64::try_from(s).ok()),
            steps: fields.u32_in("steps", 1, 10_000)?,
            guidance_scale: fields.number("guidance_scale")?.map(|v| v as f32),
            sampler: fields.string("sampler")?.unwrap_or_default().to_string(),
        })
    }

    async fn to_generate(&self, gateway: &Gateway) -> Result<pb::GenerateRequest, ApiError> {
        // Partial images are real VAE decodes of the predicted picture, spread over the run.
        let preview = (self.stream && self.partial_images > 0).then(|| pb::PreviewOptions {
            stream_latents: false,
            every_n_steps: (self.steps.unwrap_or(DEFAULT_STEPS) / (self.partial_images + 1)).max(1),
            image: pb::PreviewImage::Full as i32,
        });
        Ok(pb::GenerateRequest {
            preview,
            model: resolve_model(gateway, self.model.as_deref()).await?,
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: self.size.map(|s| s.0),
            height: self.size.map(|s| s.1),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            sampler: self.sampler.clone(),
            seed: self.seed,
            count: Some(self.n.unwrap_or(1)),
            ..Default::default()
        })
    }
}

/// OpenAI's `ImagesResponse`.
fn answer(request: &ImageRequest, outcome: &Outcome) -> Value {
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let data: Vec<Value> = outcome
        .images
        .iter()
        .map(|image| {
            let encoded = images::encode_base64(&image.png);
            if request.as_url {
                json!({ "url": format!("data:image/png;base64,{encoded}"), "revised_prompt": request.prompt })
            } else {
                json!({ "b64_json": encoded, "revised_prompt": request.prompt })
            }
        })
        .collect();
    let size = outcome
        .images
        .first()
        .map(|image| format!("{}x{}", image.width, image.height));
    json!({
        "created": created,
        "data": data,
        "background": "opaque",
        "output_format": "png",
        "size": size,
        "quality": "auto",
    })
}

async fn generations(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<Extension<Peer>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, OpenAiError> {
    let map = fields::object(body, gateway.config.max_body_bytes)?;
    let request = ImageRequest::from_fields(Fields(&map))?;
    let generate = request.to_generate(&gateway).await?;
    let peer = peer.map(|p| p.0.0);
    if request.stream {
        return Ok(stream(gateway, request, generate, peer).into_response());
    }
    let outcome = gateway.generate("openai", generate, peer, |_| {}).await?;
    Ok(Json(answer(&request, &outcome)).into_response())
}

/// One server-sent event of OpenAI's image stream: `partial_image` or `completed`.
fn stream_event(kind: &str, png: &[u8], size: &str, partial_index: Option<u32>) -> Event {
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut data = json!({
        "type": format!("image_generation.{kind}"),
        "b64_json": images::encode_base64(png),
        "created_at": created_at,
        "size": size,
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    });
    match partial_index {
        Some(index) => data["partial_image_index"] = json!(index),
        None => {
            data["usage"] = json!({
                "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            });
        }
    }
    Event::default()
        .event(format!("image_generation.{kind}"))
        .data(data.to_string())
}

/// `stream: true`: the generation runs in a task that sends its events; when the client
/// hangs up, the response stream is dropped, which aborts the task, which drops the gRPC
/// stream, which cancels the job.
fn stream(
    gateway: Arc<Gateway>,
    request: ImageRequest,
    generate: pb::GenerateRequest,
    peer: Option<std::net::SocketAddr>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Event>(8);
    let size = request
        .size
        .map_or_else(|| "auto".to_string(), |(w, h)| format!("{w}x{h}"));
    let task = tokio::spawn(async move {
        let mut partials = 0;
        let progress_sender = sender.clone();
        let progress_size = size.clone();
        let result = gateway
            .generate("openai", generate, peer, |progress| {
                if partials < request.partial_images && !progress.preview_png.is_empty() {
                    let event = stream_event("partial_image", &progress.preview_png, &progress_size, Some(partials));
                    // A slow reader loses a partial image rather than stalling the job.
                    if progress_sender.try_send(event).is_ok() {
                        partials += 1;
                    }
                }
            })
            .await;
        match result {
            Ok(outcome) => {
                for image in &outcome.images {
                    let size = format!("{}x{}", image.width, image.height);
                    if sender
                        .send(stream_event("completed", &image.png, &size, None))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(status) => {
                let error = ApiError::from_status(&status);
                let data = json!({ "error": { "message": error.message, "type": "invalid_request_error", "code": error.code } });
                let _ = sender
                    .send(Event::default().event("error").data(data.to_string()))
                    .await;
            }
        }
    });
    let abort = AbortOnDrop(task);
    let events = futures::stream::poll_fn(move |cx| {
        let _ = &abort;
        receiver.poll_recv(cx).map(|event| event.map(Ok))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Aborts a task when dropped (with the response stream that owns it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The most form fields an edit may carry (OpenAI's have about a dozen).
const MAX_FORM_FIELDS: usize = 64;

/// The longest text field of a form (a prompt of the daemon's largest size, in UTF-8).
const MAX_TEXT_FIELD: usize = 16_384 * 4;

async fn edits(
    State(gateway): State<Arc<Gateway>>,
    peer: Option<Extension<Peer>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<axum::response::Response, OpenAiError> {
    let max_body = gateway.config.max_body_bytes;
    let mut form = form.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "images/edits takes a multipart/form-data body ({})",
                rejection.body_text()
            ),
        )
    })?;
    let multipart_error = |error: axum::extract::multipart::MultipartError| {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(max_body)
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the form is malformed ({})", error.body_text()),
            )
        }
    };
    let mut text = Map::new();
    let mut pictures: Vec<Vec<u8>> = Vec::new();
    let mut mask: Option<Vec<u8>> = None;
    let mut seen = 0;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        seen += 1;
        if seen > MAX_FORM_FIELDS {
            return Err(ApiError::invalid("form", format!("the form has more than {MAX_FORM_FIELDS} fields")).into());
        }
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => pictures.push(field.bytes().await.map_err(multipart_error)?.to_vec()),
            "mask" => mask = Some(field.bytes().await.map_err(multipart_error)?.to_vec()),
            _ => {
                let value = field.bytes().await.map_err(multipart_error)?;
                if value.len() > MAX_TEXT_FIELD {
                    return Err(
                        ApiError::invalid(&name, format!("{name} is longer than {MAX_TEXT_FIELD} bytes")).into(),
                    );
                }
                text.insert(name, Value::String(String::from_utf8_lossy(&value).into_owned()));
            }
        }
    }
    let request = ImageRequest::from_fields(Fields(&text))?;
    let image = match pictures.len() {
        0 => return Err(ApiError::invalid("image", "images/edits needs an image (a PNG or JPEG file)").into()),
        1 => pictures.pop().expect("one picture"),
        more => {
            return Err(ApiError::invalid("image", format!("easel edits one image per request, not {more}")).into());
        }
    };
    let limits = gateway.config.image_limits;
    let (image, mask) = images::off_runtime(move || -> Result<_, ApiError> {
        let size = images::dimensions("image", &image)?;
        let mask = match mask {
            Some(mask) => {
                let (w, h) = images::dimensions("mask", &mask)?;
                if (w, h) != size {
                    return Err(ApiError::bad_image(
                        "mask",
                        format!("the mask is {w}x{h} but the image is {}x{}; they must be the same size", size.0, size.1),
                    ));
                }
                Some(images::mask_from_alpha("mask", &mask, limits)?.ok_or_else(|| {
                    ApiError::bad_image(
                        "mask",
                        "the mask has no transparent pixels, so nothing would be repainted; make the area to edit transparent",
                    )
                })?)
            }
            None => images::mask_from_alpha("image", &image, limits)?,
        };
        Ok((image, mask))
    })
    .await?;
    let mut generate = request.to_generate(&gateway).await?;
    generate.init_image = image;
    if let Some(mask) = mask {
        generate.mask_image = mask;
    }
    let peer = peer.map(|p| p.0.0);
    if request.stream {
        return Ok(stream(gateway, request, generate, peer).into_response());
    }
    let outcome = gateway.generate("openai", generate, peer, |_| {}).await?;
    Ok(Json(answer(&request, &outcome)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_names_mean_the_default_model() {
        for name in [
            "dall-e-2",
            "dall-e-3",
            "gpt-image-1",
            "GPT-Image-1-mini",
            "chatgpt-image-latest",
        ] {
            assert!(is_openai_model(name), "{name}");
        }
        assert!(!is_openai_model("tiny-shapes"));
    }

    #[test]
    fn sizes_are_width_by_height_or_auto() {
        assert_eq!(parse_size(Some("512x768")).unwrap(), Some((512, 768)));
        assert_eq!(parse_size(Some("auto")).unwrap(), None);
        assert_eq!(parse_size(None).unwrap(), None);
        for bad in ["512", "0x512", "axb", "512x-1"] {
            let error = parse_size(Some(bad)).unwrap_err();
            assert!(error.message.contains("WIDTHxHEIGHT"), "{bad}: {}", error.message);
        }
    }

    #[test]
    fn a_request_needs_a_prompt_and_known_formats() {
        let body = json!({"prompt": "a cat", "n": 2, "size": "64x64", "response_format": "url"});
        let request = ImageRequest::from_fields(Fields(body.as_object().unwrap())).unwrap();
        assert_eq!(
            (request.n, request.size, request.as_url),
            (Some(2), Some((64, 64)), true)
        );
        for body in [
            json!({}),
            json!({"prompt": "x", "n": 0}),
            json!({"prompt": "x", "n": 11}),
            json!({"prompt": "x", "response_format": "jpeg"}),
            json!({"prompt": "x", "output_format": "webp"}),
            json!({"prompt": "x", "background": "transparent"}),
        ] {
            assert!(
                ImageRequest::from_fields(Fields(body.as_object().unwrap())).is_err(),
                "{body}"
            );
        }
    }
}
