//! AUTOMATIC1111's web API (`/sdapi/v1/*`, as A1111 1.10 serves it), for the plugins and apps
//! written against it: Open WebUI, SillyTavern, the GIMP, Krita and Blender plugins, `webuiapi`.
//!
//! - `txt2img`/`img2img` (with inpainting) become one `Generate` call with
//!   `count = batch_size × n_iter`; the answer is `{images, parameters, info}` where `info` is
//!   a JSON *string*, as clients `json.loads` it.
//! - `options` reads and switches the current checkpoint (loading it, as A1111 does);
//!   `sd-models` lists the installed models; the other lists are what easel has (often none).
//! - `progress` and `interrupt` see the generations this gateway runs (see [`crate::jobs`]).
//! - `png-info` reads a picture's `parameters` back.
//!
//! Fields easel cannot honour and that change the picture (hires fix, face restoration,
//! tiling, variation seeds, scripts, styles) are refused with a message naming them, rather
//! than ignored: the picture would not be the one asked for. Layout-only choices with no easel
//! equivalent (`resize_mode`, `inpaint_full_res`, `inpainting_fill`) are accepted: easel
//! resizes the init image to the requested size and inpaints the whole picture.

pub mod infotext;
pub mod samplers;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use easel_proto::v1 as pb;
use serde_json::{Map, Value, json};

use crate::Peer;
use crate::error::{A1111Error, ApiError};
use crate::fields::{self, Fields};
use crate::images;
use crate::jobs::{Gateway, Outcome};

/// A1111's own default for `denoising_strength` in img2img.
const DEFAULT_DENOISING_STRENGTH: f64 = 0.75;

/// Options `GET /sdapi/v1/options` reports, with their values until a client sets them.
/// Clients may set these (and only these); `sd_model_checkpoint` and
/// `CLIP_stop_at_last_layers` change what the gateway does.
fn default_options() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "sd_model_checkpoint": "",
        "sd_checkpoint_hash": null,
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
        "sd_vae": "Automatic",
        "show_progress_every_n_steps": 1,
        "live_previews_enable": true,
        "live_preview_content": "Prompt",
        "eta_noise_seed_delta": 0,
        "img2img_fix_steps": false,
    }) else {
        unreachable!("a JSON object literal")
    };
    map
}

type Response = Result<Json<Value>, A1111Error>;
type Body = Result<Bytes, BytesRejection>;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/options", get(get_options).post(set_options))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(list_samplers))
        .route("/sdapi/v1/schedulers", get(list_schedulers))
        .route("/sdapi/v1/upscalers", get(empty_list))
        .route("/sdapi/v1/latent-upscale-modes", get(empty_list))
        .route("/sdapi/v1/sd-vae", get(empty_list))
        .route("/sdapi/v1/sd-modules", get(empty_list))
        .route("/sdapi/v1/loras", get(empty_list))
        .route("/sdapi/v1/hypernetworks", get(empty_list))
        .route("/sdapi/v1/face-restorers", get(empty_list))
        .route("/sdapi/v1/realesrgan-models", get(empty_list))
        .route("/sdapi/v1/prompt-styles", get(empty_list))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/scripts", get(scripts))
        .route("/sdapi/v1/cmd-flags", get(cmd_flags))
        .route("/sdapi/v1/refresh-checkpoints", post(nothing))
        .route("/sdapi/v1/refresh-vae", post(nothing))
        .route("/sdapi/v1/refresh-loras", post(nothing))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/png-info", post(png_info))
        .route("/internal/ping", get(nothing))
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

async fn nothing() -> Json<Value> {
    Json(json!({}))
}

async fn embeddings() -> Json<Value> {
    Json(json!({ "loaded": {}, "skipped": {} }))
}

async fn scripts() -> Json<Value> {
    Json(json!({ "txt2img": [], "img2img": [] }))
}

async fn cmd_flags(State(gateway): State<Arc<Gateway>>) -> Json<Value> {
    Json(json!({
        "api": true,
        "nowebui": true,
        "api_auth": gateway.config.token.as_ref().map(|_| "(set)"),
        "port": null,
    }))
}

async fn list_samplers() -> Json<Value> {
    let list: Vec<Value> = samplers::SAMPLERS
        .iter()
        .map(|s| json!({ "name": s.name, "aliases": s.aliases, "options": {} }))
        .collect();
    Json(Value::Array(list))
}

async fn list_schedulers() -> Json<Value> {
    let list: Vec<Value> = samplers::SCHEDULERS
        .iter()
        .map(|(name, label)| {
            json!({ "name": name, "label": label, "aliases": null, "default_rho": -1.0, "need_inner_model": false })
        })
        .collect();
    Json(Value::Array(list))
}

async fn sd_models(State(gateway): State<Arc<Gateway>>) -> Response {
    let reply = gateway
        .client()
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    let list: Vec<Value> = reply
        .models
        .iter()
        .map(|model| {
            json!({
                "title": model.name,
                "model_name": model.name,
                "hash": null,
                "sha256": null,
                "filename": model.path,
                "config": null,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// The checkpoint A1111 clients see as current: the one set, else the daemon's default.
async fn current_checkpoint(gateway: &Gateway) -> Result<String, tonic::Status> {
    if let Some(model) = gateway.checkpoint() {
        return Ok(model);
    }
    let status = gateway.client().get_status(pb::StatusRequest {}).await?.into_inner();
    Ok(status.default_model)
}

async fn get_options(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut options = default_options();
    options.extend(gateway.options());
    options.insert("sd_model_checkpoint".into(), current_checkpoint(&gateway).await?.into());
    Ok(Json(Value::Object(options)))
}

async fn set_options(State(gateway): State<Arc<Gateway>>, body: Body) -> Response {
    let map = fields::object(body, gateway.config.max_body_bytes)?;
    let fields = Fields(&map);
    let clip_skip = fields.u32_in("CLIP_stop_at_last_layers", 1, 12)?;
    if let Some(title) = fields.string("sd_model_checkpoint")? {
        let name = resolve_checkpoint(&gateway, title).await?;
        // A1111 loads the checkpoint when it is switched; so does easel, so that the first
        // generation does not pay for it.
        gateway
            .client()
            .load_model(pb::LoadModelRequest {
                model: name.clone(),
                keep_alive: String::new(),
            })
            .await?;
        gateway.set_checkpoint(Some(name));
    }
    if let Some(clip_skip) = clip_skip {
        gateway.set_option("CLIP_stop_at_last_layers", clip_skip.into());
    }
    let known = default_options();
    for (key, value) in &map {
        if known.contains_key(key) && !matches!(key.as_str(), "sd_model_checkpoint" | "CLIP_stop_at_last_layers") {
            gateway.set_option(key, value.clone());
        }
    }
    Ok(Json(Value::Null))
}

/// An installed model's name from what an A1111 client sends: its title (`name`, or
/// `name [hash]` as A1111 titles read), in any case. Paths are not accepted over HTTP: a
/// client of the gateway picks among installed models.
async fn resolve_checkpoint(gateway: &Gateway, title: &str) -> Result<String, A1111Error> {
    let names = gateway.model_names().await?;
    let wanted = title.trim();
    let bare = match wanted.rsplit_once(" [") {
        Some((name, hash)) if hash.ends_with(']') => name.trim(),
        _ => wanted,
    };
    names
        .iter()
        .find(|name| name.as_str() == bare)
        .or_else(|| names.iter().find(|name| name.eq_ignore_ascii_case(bare)))
        .cloned()
        .ok_or_else(|| {
            A1111Error(ApiError::not_found(format!(
                "no model named `{title}`; installed: {} (install more with `easel models import` or `easel pull`)",
                names.join(", ")
            )))
        })
}

/// The parts of a txt2img or img2img request both share, as a `GenerateRequest`.
struct Plan {
    request: pb::GenerateRequest,
    batch_size: u32,
}

/// Fields easel cannot honour that change the picture: refused when a client asks for them.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("enable_hr", "hires fix"),
    ("restore_faces", "face restoration"),
    ("tiling", "tiling"),
    ("subseed_strength", "variation seeds"),
    ("script_name", "scripts"),
    ("styles", "prompt styles"),
];

async fn plan(gateway: &Gateway, fields: Fields<'_>) -> Result<Plan, A1111Error> {
    for (key, feature) in UNSUPPORTED {
        if fields.is_set(key) {
            return Err(
                ApiError::invalid(key, format!("easel has no {feature} (`{key}`); leave it unset or off")).into(),
            );
        }
    }
    let overrides = fields.object("override_settings")?;
    let model = match overrides.string("sd_model_checkpoint")? {
        Some(title) => resolve_checkpoint(gateway, title).await?,
        None => gateway.checkpoint().unwrap_or_default(),
    };
    let clip_skip = match overrides.u32_in("CLIP_stop_at_last_layers", 1, 12)? {
        Some(value) => Some(value),
        None => gateway
            .options()
            .get("CLIP_stop_at_last_layers")
            .and_then(Value::as_u64)
            .map(|v| v as u32),
    };
    let sampler = samplers::resolve(
        fields.string("sampler_name")?.or(fields.string("sampler_index")?),
        fields.string("scheduler")?,
    )?;
    let (refiner, refiner_switch) = refiner(gateway, fields).await?;
    let batch_size = fields.u32_in("batch_size", 1, 1000)?.unwrap_or(1);
    let n_iter = fields.u32_in("n_iter", 1, 1000)?.unwrap_or(1);
    // A1111's seed is -1 (or any negative) for a random one, drawn below 2^32 as A1111 draws
    // it: seeds go back to clients in JSON, and JavaScript ones lose digits beyond 2^53.
    let seed = match fields.integer("seed")?.and_then(|s| u64::try_from(s).ok()) {
        Some(seed) => seed,
        None => u64::from(rand::random::<u32>()),
    };
    let request = pb::GenerateRequest {
        model,
        prompt: fields.string("prompt")?.unwrap_or_default().to_string(),
        negative_prompt: fields.string("negative_prompt")?.unwrap_or_default().to_string(),
        width: fields.u32_in("width", 1, 65_535)?,
        height: fields.u32_in("height", 1, 65_535)?,
        steps: fields.u32_in("steps", 1, 10_000)?,
        guidance_scale: fields.number("cfg_scale")?.map(|v| v as f32),
        sampler: sampler.unwrap_or_default().to_string(),
        seed: Some(seed),
        count: Some(batch_size * n_iter),
        clip_skip: clip_skip.filter(|&c| c > 1),
        refiner,
        refiner_switch,
        // Cheap previews, for `progress`'s current_image.
        preview: Some(pb::PreviewOptions {
            stream_latents: false,
            every_n_steps: 1,
            image: pb::PreviewImage::Approx as i32,
        }),
        ..Default::default()
    };
    Ok(Plan { request, batch_size })
}

/// A1111's second-stage refiner: `refiner_checkpoint` (a title; none, empty or "None": no
/// refiner) takes over at `refiner_switch_at` (a fraction; 1 or more: never, as A1111 reads it;
/// unset: 0.8). easel switches on the noise schedule's timesteps, as diffusers does; A1111 at
/// that fraction of the sampling steps, which is the same point for evenly spaced schedules.
async fn refiner(gateway: &Gateway, fields: Fields<'_>) -> Result<(String, Option<f64>), A1111Error> {
    let title = fields
        .string("refiner_checkpoint")?
        .map(str::trim)
        .filter(|title| !title.is_empty() && !title.eq_ignore_ascii_case("none"));
    let Some(title) = title else {
        return Ok((String::new(), None));
    };
    let switch = fields.number("refiner_switch_at")?;
    if switch.is_some_and(|s| s >= 1.0) {
        return Ok((String::new(), None));
    }
    Ok((resolve_checkpoint(gateway, title).await?, switch))
}

async fn txt2img(State(gateway): State<Arc<Gateway>>, peer: Option<Extension<Peer>>, body: Body) -> Response {
    let map = fields::object(body, gateway.config.max_body_bytes)?;
    let fields = Fields(&map);
    let plan = plan(&gateway, fields).await?;
    let outcome = gateway
        .generate("txt2img", plan.request.clone(), peer.map(|p| p.0.0), |_| {})
        .await?;
    let parameters = echo(&map, false);
    Ok(Json(answer(fields, &plan, &outcome, parameters, None)?))
}

async fn img2img(State(gateway): State<Arc<Gateway>>, peer: Option<Extension<Peer>>, body: Body) -> Response {
    let map = fields::object(body, gateway.config.max_body_bytes)?;
    let fields = Fields(&map);
    let mut plan = plan(&gateway, fields).await?;
    let init_images = fields.strings("init_images")?;
    let init = match init_images.as_slice() {
        [] => return Err(ApiError::invalid("init_images", "img2img needs init_images: one base64 picture").into()),
        [one] => one.to_string(),
        more => {
            return Err(ApiError::invalid(
                "init_images",
                format!("easel takes one init image per request, not {}", more.len()),
            )
            .into());
        }
    };
    let mask = fields.string("mask")?.map(str::to_string);
    let invert = match fields.integer("inpainting_mask_invert") {
        Ok(value) => value.unwrap_or(0) != 0,
        Err(_) => fields.boolean("inpainting_mask_invert")?.unwrap_or(false),
    };
    let strength = fields
        .number("denoising_strength")?
        .unwrap_or(DEFAULT_DENOISING_STRENGTH);
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ApiError::invalid(
            "denoising_strength",
            format!("denoising_strength must be above 0 and at most 1 (got {strength})"),
        )
        .into());
    }
    let mask_blur = fields.number("mask_blur")?;
    let limits = gateway.config.image_limits;
    // Base64 and mask decoding are CPU work on pictures of many megapixels: off the runtime.
    let (init_png, mask_png) = images::off_runtime(move || -> Result<_, ApiError> {
        let init = images::decode_base64("init_images", &init)?;
        let mask = match mask {
            Some(mask) => Some(images::a1111_mask(
                &images::decode_base64("mask", &mask)?,
                invert,
                limits,
            )?),
            None => None,
        };
        Ok((init, mask))
    })
    .await?;
    plan.request.init_image = init_png;
    plan.request.strength = Some(strength);
    if let Some(mask) = mask_png {
        plan.request.mask_image = mask;
        plan.request.mask_blur = mask_blur.map(|b| b as f32);
    }
    let outcome = gateway
        .generate("img2img", plan.request.clone(), peer.map(|p| p.0.0), |_| {})
        .await?;
    let include = fields.boolean("include_init_images")?.unwrap_or(false);
    let parameters = echo(&map, include);
    Ok(Json(answer(fields, &plan, &outcome, parameters, Some(strength))?))
}

/// The request as A1111 echoes it in `parameters`: pictures left out unless asked for.
fn echo(map: &Map<String, Value>, include_pictures: bool) -> Value {
    let mut echoed = map.clone();
    if !include_pictures {
        for key in ["init_images", "mask"] {
            if echoed.contains_key(key) {
                echoed.insert(key.into(), Value::Null);
            }
        }
    }
    Value::Object(echoed)
}

/// `{images, parameters, info}`, `info` being A1111's JSON string.
fn answer(
    fields: Fields<'_>,
    plan: &Plan,
    outcome: &Outcome,
    parameters: Value,
    denoising_strength: Option<f64>,
) -> Result<Value, ApiError> {
    let request = &plan.request;
    // What the daemon actually used (its defaults filled in) is in each picture's infotext.
    let used = outcome
        .images
        .first()
        .map(|image| infotext::parse(&image.parameters))
        .unwrap_or_default();
    let used_str = |key: &str| used.get(key).and_then(Value::as_str).map(str::to_string);
    let used_num = |key: &str| used_str(key).and_then(|v| v.parse::<f64>().ok());
    let seeds: Vec<u64> = outcome.images.iter().map(|image| image.seed).collect();
    let first_seed = seeds.first().copied().or(request.seed).map_or(json!(-1), |s| json!(s));
    let count = outcome.images.len();
    let (width, height) = outcome
        .images
        .first()
        .map_or((request.width.unwrap_or(0), request.height.unwrap_or(0)), |image| {
            (image.width, image.height)
        });
    let sampler = used_str("Sampler").unwrap_or_else(|| {
        fields
            .string("sampler_name")
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_string()
    });
    let (sampler_name, scheduler) = match sampler.strip_suffix(" Karras") {
        Some(base) => (base.to_string(), "Karras"),
        None => (sampler, "Automatic"),
    };
    let clip_skip = request.clip_skip.unwrap_or(1);
    let info = json!({
        "prompt": request.prompt,
        "all_prompts": vec![&request.prompt; count],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": vec![&request.negative_prompt; count],
        "seed": first_seed,
        "all_seeds": seeds,
        "subseed": first_seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": sampler_name,
        "scheduler": scheduler,
        "cfg_scale": used_num("CFG scale").or(request.guidance_scale.map(f64::from)),
        "steps": used_num("Steps").map(|s| s as u64).or(request.steps.map(u64::from)),
        "batch_size": plan.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": used_str("Model").unwrap_or_else(|| request.model.clone()),
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": denoising_strength.unwrap_or(0.0),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": outcome.images.iter().map(|image| image.parameters.as_str()).collect::<Vec<_>>(),
        "styles": [],
        "job_timestamp": crate::jobs::timestamp(std::time::SystemTime::now()),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": !request.mask_image.is_empty(),
        "version": format!("easel {}", env!("CARGO_PKG_VERSION")),
        "interrupted": outcome.interrupted,
    });
    let send_images = fields.boolean("send_images")?.unwrap_or(true);
    let images: Vec<String> = if send_images {
        outcome
            .images
            .iter()
            .map(|image| images::encode_base64(&image.png))
            .collect()
    } else {
        Vec::new()
    };
    Ok(json!({
        "images": images,
        "parameters": parameters,
        "info": info.to_string(),
    }))
}

async fn progress(State(gateway): State<Arc<Gateway>>, Query(query): Query<HashMap<String, String>>) -> Json<Value> {
    let skip_image = query
        .get("skip_current_image")
        .is_some_and(|v| matches!(v.as_str(), "true" | "True" | "1"));
    let snapshot = gateway.snapshot();
    let current_image = snapshot
        .preview
        .as_deref()
        .filter(|_| !skip_image)
        .map(images::encode_base64);
    Json(json!({
        "progress": snapshot.progress,
        "eta_relative": snapshot.eta_seconds,
        "state": {
            "skipped": false,
            "interrupted": snapshot.interrupted,
            "stopping_generation": false,
            "job": snapshot.kind,
            "job_count": snapshot.job_count,
            "job_timestamp": if snapshot.timestamp.is_empty() { "0".to_string() } else { snapshot.timestamp },
            "job_no": 0,
            "sampling_step": snapshot.step,
            "sampling_steps": snapshot.steps,
        },
        "current_image": current_image,
        "textinfo": null,
    }))
}

async fn interrupt(State(gateway): State<Arc<Gateway>>) -> Response {
    gateway.interrupt().await?;
    Ok(Json(json!({})))
}

async fn png_info(State(gateway): State<Arc<Gateway>>, body: Body) -> Response {
    let map = fields::object(body, gateway.config.max_body_bytes)?;
    let Some(image) = Fields(&map).string("image")?.map(str::to_string) else {
        return Err(ApiError::invalid("image", "png-info needs image: a base64 picture").into());
    };
    let limits = gateway.config.image_limits;
    let texts =
        images::off_runtime(move || images::png_text("image", &images::decode_base64("image", &image)?, limits))
            .await?;
    let info = texts
        .iter()
        .find(|(key, _)| key == "parameters")
        .map_or(String::new(), |(_, text)| text.clone());
    let items: Map<String, Value> = texts
        .into_iter()
        .filter(|(key, _)| key != "parameters")
        .map(|(key, text)| (key, Value::String(text)))
        .collect();
    let parameters = infotext::parse(&info);
    Ok(Json(json!({ "info": info, "items": items, "parameters": parameters })))
}
