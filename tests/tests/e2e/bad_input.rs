//! Bad input: each gets a non-zero exit and a message naming the problem, and the daemon
//! stays up for the next request.

use std::path::{Path, PathBuf};

use easel_e2e::*;
use easel_proto::v1 as pb;

/// A copy of the sd1-tiny fixture that a test may break.
fn model_copy(dir: &Path) -> PathBuf {
    let target = dir.join("broken-model");
    copy_tree(&fixture_model("sd1-tiny"), &target);
    target
}

/// Writes an `.npy` float32 array of `shape` filled with zeros.
fn write_npy(path: &Path, shape: &[usize]) {
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}{}), }}",
        if shape.len() == 1 { "," } else { "" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, shape.iter().product::<usize>() * 4));
    std::fs::write(path, bytes).unwrap();
}

/// Writes an `.npy` float32 array of `shape` filled with `value`.
fn write_npy_filled(path: &Path, shape: &[usize], value: f32) {
    write_npy(path, shape);
    let mut bytes = std::fs::read(path).unwrap();
    let data = shape.iter().product::<usize>() * 4;
    let start = bytes.len() - data;
    for chunk in bytes[start..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// One row per kind of bad input through the CLI: the exit code (2 for a usage error the CLI
/// catches itself, 1 for everything else) and parts of the message; after each, the daemon
/// still generates.
#[test]
fn each_bad_request_fails_clearly_and_the_daemon_stays_up() {
    let daemon = Daemon::start_with(&[("EASEL_MAX_PIXELS", "262144")]);
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixture_model("sd1-tiny").display().to_string();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let encoded = |w: u32, h: u32, format| picture(w, h, format);
    let missing_unet = model_copy(&dir.path().join("a"));
    std::fs::remove_file(missing_unet.join("unet/model.onnx")).unwrap();
    let truncated = model_copy(&dir.path().join("b"));
    let unet = std::fs::read(truncated.join("unet/model.onnx")).unwrap();
    std::fs::write(truncated.join("unet/model.onnx"), &unet[..unet.len() / 2]).unwrap();
    let bad_scheduler = model_copy(&dir.path().join("c"));
    std::fs::write(bad_scheduler.join("scheduler/scheduler_config.json"), "{ not json").unwrap();
    let wrong_noise = dir.path().join("wrong.npy");
    write_npy(&wrong_noise, &[1, 4, 4, 4]);
    let nan_noise = dir.path().join("nan.npy");
    write_npy_filled(&nan_noise, &[1, 4, 8, 8], f32::NAN);
    let not_npy = file("noise.txt", b"these are not numbers");
    let init = file("init.png", &encoded(64, 64, image::ImageFormat::Png));
    let small = file("small.png", &encoded(4, 4, image::ImageFormat::Png));
    let big = file("big.png", &encoded(1100, 1000, image::ImageFormat::Png));
    let mask32 = file("mask32.png", &encoded(32, 32, image::ImageFormat::Png));
    let garbage = file("garbage.png", b"not a picture at all");
    let empty = file("empty.png", b"");
    let jpeg = encoded(256, 192, image::ImageFormat::Jpeg);
    let cut_jpeg = file("cut.jpg", &jpeg[..jpeg.len() / 2]);
    let folder = dir.path().display().to_string();
    let (wrong_noise, nan_noise) = (wrong_noise.display().to_string(), nan_noise.display().to_string());
    let long_prompt = "red ".repeat(5000);
    let many_chunks = "red ".repeat(3000);
    let long_negative = "blue ".repeat(4000);

    // (flags, model, exit code, needles); the prompt is "a cat" unless a flag gives another.
    let rows: Vec<(Vec<&str>, &str, i32, Vec<&str>)> = vec![
        (
            vec!["--width", "60"],
            &tiny,
            1,
            vec!["width", "multiple of 16", "try 48 or 64"],
        ),
        (vec!["--height", "100"], &tiny, 1, vec!["height", "multiple of 16"]),
        (vec!["--width", "72"], &tiny, 1, vec!["multiple of 16"]),
        (vec!["--width", "0"], &tiny, 1, vec!["positive multiple"]),
        (vec!["--steps", "0"], &tiny, 1, vec!["steps"]),
        (vec!["--steps", "100000"], &tiny, 1, vec!["steps", "500"]),
        (vec!["--steps=-1"], &tiny, 2, vec!["--steps"]),
        (vec!["--seed", "abc"], &tiny, 2, vec!["--seed"]),
        (
            vec!["--width", "1024", "--height", "1024"],
            &tiny,
            1,
            vec!["pixels", "max_pixels"],
        ),
        (
            vec!["--sampler", "warp_drive"],
            &tiny,
            1,
            vec!["unknown sampler", "warp_drive", "euler"],
        ),
        (vec!["--cfg=-2"], &tiny, 1, vec!["guidance"]),
        (vec!["--cfg", "NaN"], &tiny, 1, vec!["guidance"]),
        (vec!["--count", "0"], &tiny, 2, vec!["count"]),
        (vec!["--count", "17"], &tiny, 1, vec!["count must be between 1 and 16"]),
        (vec!["--clip-skip", "0"], &tiny, 2, vec!["--clip-skip counts from 1"]),
        (vec!["--clip-skip", "100"], &tiny, 1, vec!["clip skip"]),
        (
            vec!["--keep-alive", "soon"],
            &tiny,
            1,
            vec!["keep-alive", "not a duration"],
        ),
        (vec!["--keep-alive", "99999999999999999h"], &tiny, 1, vec!["100 years"]),
        (
            vec!["--init-noise", &wrong_noise],
            &tiny,
            1,
            vec!["init noise", "[1, 4, 8, 8]"],
        ),
        (vec!["--init-noise", &nan_noise], &tiny, 1, vec!["NaN"]),
        (vec!["--init-noise", &not_npy], &tiny, 1, vec!["npy"]),
        (
            vec!["--init-noise", "/nonexistent/noise.npy"],
            &tiny,
            1,
            vec!["/nonexistent/noise.npy"],
        ),
        (
            vec!["--init-noise", "/dev/zero"],
            &tiny,
            1,
            vec!["--init-noise", "a device"],
        ),
        (
            vec!["--init-image", "/dev/zero"],
            &tiny,
            1,
            vec!["--init-image", "a device"],
        ),
        (vec!["--init-image", &folder], &tiny, 1, vec!["a folder"]),
        (
            vec!["--init-image", "/nonexistent/init.png"],
            &tiny,
            1,
            vec!["cannot read --init-image"],
        ),
        (vec!["--init-image", &empty], &tiny, 1, vec!["empty"]),
        (
            vec!["--init-image", &garbage],
            &tiny,
            1,
            vec!["cannot read the init image"],
        ),
        (vec!["--init-image", &cut_jpeg], &tiny, 1, vec!["cut short"]),
        (vec!["--init-image", &small], &tiny, 1, vec!["at least 16x16"]),
        (vec!["--init-image", &big], &tiny, 1, vec!["scale it down"]),
        (
            vec!["--init-image", &init, "--strength", "0"],
            &tiny,
            1,
            vec!["strength must be in"],
        ),
        (
            vec!["--init-image", &init, "--strength", "1.5"],
            &tiny,
            1,
            vec!["strength must be in"],
        ),
        (vec!["--strength", "0.5"], &tiny, 2, vec!["required", "--init-image"]),
        (vec!["--mask", &init], &tiny, 2, vec!["required", "--init-image"]),
        (
            vec!["--init-image", &init, "--mask", &mask32],
            &tiny,
            1,
            vec!["the mask is 32x32"],
        ),
        (
            vec!["--init-image", &init, "--mask", &init, "--mask-blur=-1"],
            &tiny,
            1,
            vec!["mask blur must be"],
        ),
        (vec!["--prompt-override", "(red"], &tiny, 1, vec!["unclosed `(`"]),
        (
            vec!["--prompt-override", &long_prompt],
            &tiny,
            1,
            vec!["max_prompt_chars"],
        ),
        (
            vec!["--prompt-override", &many_chunks],
            &tiny,
            1,
            vec!["max_prompt_chunks"],
        ),
        (
            vec!["--negative", &long_negative],
            &tiny,
            1,
            vec!["negative prompt", "max_prompt_chars"],
        ),
        (
            vec![],
            "/nonexistent/model",
            1,
            vec!["/nonexistent/model", "does not exist"],
        ),
        (
            vec![],
            "../../etc-not-here",
            1,
            vec!["../../etc-not-here", "does not exist"],
        ),
        (vec![], "no-such-model", 1, vec!["no-such-model", "no model named"]),
        (
            vec![],
            missing_unet.to_str().unwrap(),
            1,
            vec!["unet/model.onnx", "missing"],
        ),
        (vec![], truncated.to_str().unwrap(), 1, vec!["unet", "model.onnx"]),
        (
            vec![],
            bad_scheduler.to_str().unwrap(),
            1,
            vec!["scheduler_config.json"],
        ),
    ];
    let out = dir.path().join("out.png");
    for (flags, model, code, needles) in &rows {
        let (prompt, flags): (&str, Vec<&str>) = match flags.as_slice() {
            ["--prompt-override", prompt] => (prompt, vec![]),
            _ => ("a cat", flags.clone()),
        };
        let output = daemon.generate_with(model, prompt, &flags, &out);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(*code), "{flags:?} {model}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{flags:?} {model}: `{needle}` not in: {message}"
            );
        }
        assert!(!out.exists(), "no picture from a failed request");
        // Still serving, and still generating.
        let output = daemon.generate_with(&tiny, "a cat", &["--steps", "1"], &out);
        assert!(output.status.success(), "after {flags:?}: {}", stderr(&output));
        std::fs::remove_file(&out).unwrap();
    }
    assert!(rows.len() >= 40, "{} kinds", rows.len());
}

/// The first error a Generate call ends with: refused up front, or failed in its stream.
async fn generate_outcome(
    client: &mut easel_proto::v1::easel_client::EaselClient<tonic::transport::Channel>,
    request: pb::GenerateRequest,
) -> Result<(), tonic::Status> {
    generate(client, request).await.map(|_| ())
}

/// An encoded picture of `width` × `height`, grey.
fn picture(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb([120, 130, 140]))
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn tensor(shape: &[i64], dtype: i32, data: Vec<u8>) -> pb::Tensor {
    pb::Tensor {
        shape: shape.to_vec(),
        dtype,
        data,
    }
}

type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

/// One row per kind of bad input at the gRPC level: the status code and a part of the message
/// each must get, and after each, the daemon still generates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_grpc_request_gets_its_code_and_the_daemon_still_generates() {
    use tonic::Code::{FailedPrecondition, InvalidArgument, NotFound};
    let daemon = Daemon::start_with(&[("EASEL_MAX_PIXELS", "262144")]);
    let dir = tempfile::tempdir().unwrap();
    let tiny = fixture_model("sd1-tiny").display().to_string();
    let missing_unet = model_copy(&dir.path().join("a"));
    std::fs::remove_file(missing_unet.join("unet/model.onnx")).unwrap();
    let truncated = model_copy(&dir.path().join("b"));
    let unet = std::fs::read(truncated.join("unet/model.onnx")).unwrap();
    std::fs::write(truncated.join("unet/model.onnx"), &unet[..unet.len() / 2]).unwrap();
    let bad_scheduler = model_copy(&dir.path().join("c"));
    std::fs::write(bad_scheduler.join("scheduler/scheduler_config.json"), "{ not json").unwrap();
    let png = |w, h| picture(w, h, image::ImageFormat::Png);
    let jpeg = picture(256, 192, image::ImageFormat::Jpeg);
    let f32_bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let good_noise = || tensor(&[1, 4, 8, 8], pb::Dtype::F32 as i32, f32_bytes(&[0.5; 256]));

    let base = || {
        GenerateRequestBuilder::new("a red circle")
            .fixture("sd1-tiny")
            .steps(1)
            .build()
    };
    let with = |change: &dyn Fn(&mut pb::GenerateRequest)| {
        let mut request = base();
        change(&mut request);
        request
    };
    let generate_rows: Vec<(&str, pb::GenerateRequest, tonic::Code, &str)> = vec![
        (
            "zero steps",
            with(&|r| r.steps = Some(0)),
            InvalidArgument,
            "steps must be between",
        ),
        (
            "too many steps",
            with(&|r| r.steps = Some(100_000)),
            InvalidArgument,
            "steps must be between",
        ),
        (
            "width not a multiple",
            with(&|r| r.width = Some(60)),
            InvalidArgument,
            "multiple of 16",
        ),
        (
            "height a multiple of 8 only",
            with(&|r| r.height = Some(72)),
            InvalidArgument,
            "multiple of 16",
        ),
        (
            "zero width",
            with(&|r| r.width = Some(0)),
            InvalidArgument,
            "positive multiple",
        ),
        (
            "over max_pixels",
            with(&|r| {
                r.width = Some(1024);
                r.height = Some(1024)
            }),
            InvalidArgument,
            "max_pixels",
        ),
        (
            "huge size",
            with(&|r| {
                r.width = Some(u32::MAX - 15);
                r.height = Some(u32::MAX - 15)
            }),
            InvalidArgument,
            "max_pixels",
        ),
        (
            "unknown sampler",
            with(&|r| r.sampler = "warp_drive".into()),
            InvalidArgument,
            "unknown sampler",
        ),
        (
            "negative guidance",
            with(&|r| r.guidance_scale = Some(-1.0)),
            InvalidArgument,
            "guidance scale",
        ),
        (
            "NaN guidance",
            with(&|r| r.guidance_scale = Some(f32::NAN)),
            InvalidArgument,
            "guidance scale",
        ),
        (
            "zero count",
            with(&|r| r.count = Some(0)),
            InvalidArgument,
            "count must be between",
        ),
        (
            "too many images",
            with(&|r| r.count = Some(17)),
            InvalidArgument,
            "count must be between",
        ),
        (
            "noise of the wrong shape",
            with(&|r| r.init_noise = Some(tensor(&[1, 4, 4, 4], 1, f32_bytes(&[0.0; 64])))),
            InvalidArgument,
            "init noise has shape",
        ),
        (
            "noise with NaN",
            with(&|r| r.init_noise = Some(tensor(&[1, 4, 8, 8], 1, f32_bytes(&[f32::NAN; 256])))),
            InvalidArgument,
            "NaN",
        ),
        (
            "noise of an unknown dtype",
            with(&|r| r.init_noise = Some(tensor(&[1, 4, 8, 8], 99, f32_bytes(&[0.0; 256])))),
            InvalidArgument,
            "dtype 99",
        ),
        (
            "noise shape that overflows",
            with(&|r| r.init_noise = Some(tensor(&[1 << 31, 1 << 31, 1 << 31, 4], 1, vec![]))),
            InvalidArgument,
            "too large",
        ),
        (
            "noise with a negative dimension",
            with(&|r| r.init_noise = Some(tensor(&[1, -4, 8, 8], 1, vec![]))),
            InvalidArgument,
            "negative",
        ),
        (
            "noise shorter than its shape",
            with(&|r| r.init_noise = Some(tensor(&[1, 4, 8, 8], 1, vec![0; 100]))),
            InvalidArgument,
            "needs 1024 bytes",
        ),
        (
            "init image that is no picture",
            with(&|r| r.init_image = b"not a picture".to_vec()),
            InvalidArgument,
            "cannot read the init image",
        ),
        (
            "JPEG cut short",
            with(&|r| r.init_image = jpeg[..jpeg.len() / 2].to_vec()),
            InvalidArgument,
            "cut short",
        ),
        (
            "PNG cut short",
            with(&|r| {
                let p = png(64, 64);
                r.init_image = p[..p.len() / 2].to_vec()
            }),
            InvalidArgument,
            "cannot read the init image",
        ),
        (
            "init image smaller than the multiple",
            with(&|r| r.init_image = png(4, 4)),
            InvalidArgument,
            "at least 16x16",
        ),
        (
            "init image of too many pixels",
            with(&|r| r.init_image = png(1100, 1000)),
            InvalidArgument,
            "scale it down",
        ),
        (
            "mask without a picture",
            with(&|r| r.mask_image = png(64, 64)),
            InvalidArgument,
            "needs the picture",
        ),
        (
            "mask of another size",
            with(&|r| {
                r.init_image = png(64, 64);
                r.mask_image = png(32, 32)
            }),
            InvalidArgument,
            "the mask is 32x32",
        ),
        (
            "zero strength",
            with(&|r| {
                r.init_image = png(64, 64);
                r.strength = Some(0.0)
            }),
            InvalidArgument,
            "strength must be in",
        ),
        (
            "strength over one",
            with(&|r| {
                r.init_image = png(64, 64);
                r.strength = Some(1.5)
            }),
            InvalidArgument,
            "strength must be in",
        ),
        (
            "NaN strength",
            with(&|r| {
                r.init_image = png(64, 64);
                r.strength = Some(f64::NAN)
            }),
            InvalidArgument,
            "strength must be in",
        ),
        (
            "strength without a picture",
            with(&|r| r.strength = Some(0.5)),
            InvalidArgument,
            "strength only applies",
        ),
        (
            "negative mask blur",
            with(&|r| {
                r.init_image = png(64, 64);
                r.mask_image = png(64, 64);
                r.mask_blur = Some(-1.0)
            }),
            InvalidArgument,
            "mask blur must be",
        ),
        (
            "mask blur without a mask",
            with(&|r| r.mask_blur = Some(2.0)),
            InvalidArgument,
            "mask blur only applies",
        ),
        (
            "unknown decoder",
            with(&|r| r.decoder = 7),
            InvalidArgument,
            "unknown decoder 7",
        ),
        (
            "tiny decoder on a model without one",
            with(&|r| r.decoder = pb::Decoder::Tiny as i32),
            FailedPrecondition,
            "vae_decoder_tiny/model.onnx is missing",
        ),
        (
            "guidance cutoff beyond 1",
            with(&|r| r.guidance_cutoff = Some(1.5)),
            InvalidArgument,
            "guidance cutoff",
        ),
        (
            "NaN guidance cutoff",
            with(&|r| r.guidance_cutoff = Some(f64::NAN)),
            InvalidArgument,
            "guidance cutoff",
        ),
        (
            "negative guidance rescale",
            with(&|r| r.guidance_rescale = Some(-0.1)),
            InvalidArgument,
            "guidance rescale",
        ),
        (
            "NaN guidance rescale",
            with(&|r| r.guidance_rescale = Some(f64::NAN)),
            InvalidArgument,
            "guidance rescale",
        ),
        (
            "SDXL size conditioning on an SD 1.x model",
            with(&|r| {
                r.original_size = Some(pb::PictureSize {
                    width: 1024,
                    height: 1024,
                })
            }),
            InvalidArgument,
            "SDXL models only",
        ),
        (
            "clip skip too deep",
            with(&|r| r.clip_skip = Some(100)),
            InvalidArgument,
            "clip skip",
        ),
        (
            "unclosed bracket",
            with(&|r| r.prompt = "a (red circle".into()),
            InvalidArgument,
            "unclosed `(`",
        ),
        (
            "unmatched bracket",
            with(&|r| r.prompt = "a red] circle".into()),
            InvalidArgument,
            "unmatched `]`",
        ),
        (
            "infinite weight",
            with(&|r| r.prompt = format!("(red:{})", "9".repeat(400))),
            InvalidArgument,
            "infinity",
        ),
        (
            "prompt too long",
            with(&|r| r.prompt = "red ".repeat(1_000_000)),
            InvalidArgument,
            "max_prompt_chars",
        ),
        (
            "negative prompt too long",
            with(&|r| r.negative_prompt = "blue ".repeat(4000)),
            InvalidArgument,
            "negative prompt is 20000 characters",
        ),
        (
            "prompt of too many chunks",
            with(&|r| r.prompt = "red ".repeat(3000)),
            InvalidArgument,
            "max_prompt_chunks",
        ),
        (
            "keep-alive that is no duration",
            with(&|r| r.keep_alive = "soon".into()),
            InvalidArgument,
            "not a duration",
        ),
        (
            "keep-alive beyond a century",
            with(&|r| r.keep_alive = "99999999999999999h".into()),
            InvalidArgument,
            "100 years",
        ),
        (
            "relative model path",
            with(&|r| r.model = "../../etc".into()),
            InvalidArgument,
            "absolute path",
        ),
        (
            "unknown model name",
            with(&|r| r.model = "no-such-model".into()),
            NotFound,
            "no model named",
        ),
        (
            "missing model folder",
            with(&|r| r.model = "/nonexistent/model".into()),
            NotFound,
            "/nonexistent/model",
        ),
        (
            "model without a UNet",
            with(&|r| r.model = missing_unet.display().to_string()),
            FailedPrecondition,
            "unet/model.onnx",
        ),
        (
            "model with a broken scheduler config",
            with(&|r| r.model = bad_scheduler.display().to_string()),
            FailedPrecondition,
            "scheduler_config.json",
        ),
        (
            "model with a truncated UNet",
            with(&|r| r.model = truncated.display().to_string()),
            FailedPrecondition,
            "unet",
        ),
        (
            "request over the message limit",
            with(&|r| r.init_image = vec![7; 10 << 20]),
            tonic::Code::OutOfRange,
            "raise max_pixels",
        ),
        (
            "good noise on a picture of another size",
            with(&|r| {
                r.init_noise = Some(good_noise());
                r.width = Some(128)
            }),
            InvalidArgument,
            "init noise has shape",
        ),
    ];

    let mut client = daemon.client().await;
    let other_rows: Vec<(&str, Call, tonic::Code, &str)> = {
        let c = || daemon_client(&daemon);
        vec![
            (
                "tokenize a prompt too long",
                Box::pin({
                    let tiny = tiny.clone();
                    async move {
                        c().await
                            .tokenize(pb::TokenizeRequest {
                                model: tiny,
                                prompt: "red ".repeat(10_000),
                            })
                            .await
                            .map(|_| ())
                    }
                }),
                InvalidArgument,
                "max_prompt_chars",
            ),
            (
                "tokenize on a relative path",
                Box::pin(async move {
                    c().await
                        .tokenize(pb::TokenizeRequest {
                            model: "../x".into(),
                            prompt: "a".into(),
                        })
                        .await
                        .map(|_| ())
                }),
                InvalidArgument,
                "absolute path",
            ),
            (
                "load with a keep-alive beyond a century",
                Box::pin({
                    let tiny = tiny.clone();
                    async move {
                        c().await
                            .load_model(pb::LoadModelRequest {
                                model: tiny,
                                keep_alive: "99999999999999999h".into(),
                            })
                            .await
                            .map(|_| ())
                    }
                }),
                InvalidArgument,
                "100 years",
            ),
            (
                "load a relative path",
                Box::pin(async move {
                    c().await
                        .load_model(pb::LoadModelRequest {
                            model: "models/x".into(),
                            keep_alive: String::new(),
                        })
                        .await
                        .map(|_| ())
                }),
                InvalidArgument,
                "absolute path",
            ),
            (
                "unload a relative path",
                Box::pin(async move {
                    c().await
                        .unload_model(pb::UnloadModelRequest {
                            model: "../../etc".into(),
                        })
                        .await
                        .map(|_| ())
                }),
                InvalidArgument,
                "absolute path",
            ),
            (
                "cancel an unknown job",
                Box::pin(async move {
                    c().await
                        .cancel(pb::CancelRequest { job_id: "nope".into() })
                        .await
                        .map(|_| ())
                }),
                NotFound,
                "no queued or running job",
            ),
            (
                "show an unknown model",
                Box::pin(async move {
                    c().await
                        .show_model(pb::ShowModelRequest {
                            model: "no-such-model".into(),
                        })
                        .await
                        .map(|_| ())
                }),
                NotFound,
                "no model named",
            ),
            (
                "remove an invalid name",
                Box::pin(async move {
                    c().await
                        .remove_model(pb::RemoveModelRequest {
                            name: "../models".into(),
                        })
                        .await
                        .map(|_| ())
                }),
                InvalidArgument,
                "not a valid model name",
            ),
            (
                "import a relative path",
                Box::pin(async move { import(c().await, "relative/dir").await }),
                InvalidArgument,
                "absolute",
            ),
            (
                "import a missing path",
                Box::pin(async move { import(c().await, "/nonexistent/model.zip").await }),
                InvalidArgument,
                "does not exist",
            ),
            (
                "import a device",
                Box::pin(async move { import(c().await, "/dev/zero").await }),
                InvalidArgument,
                "is a device",
            ),
            (
                "import a pipe",
                Box::pin({
                    let fifo = dir.path().join("pipe");
                    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
                    let fifo = fifo.display().to_string();
                    async move { import(c().await, &fifo).await }
                }),
                InvalidArgument,
                "is a pipe",
            ),
            (
                "pull a malformed reference",
                Box::pin(async move {
                    c().await
                        .pull_model(pb::PullModelRequest {
                            repo: "not a repo".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                }),
                InvalidArgument,
                "not a repo",
            ),
        ]
    };

    let mut kinds = 0;
    let still_generates = |client: &mut easel_proto::v1::easel_client::EaselClient<tonic::transport::Channel>| {
        let request = base();
        let mut client = client.clone();
        async move {
            let images = generate(&mut client, request).await;
            assert_eq!(images.map(|i| i.len()).ok(), Some(1), "the daemon still generates");
        }
    };
    for (kind, request, code, needle) in generate_rows {
        let status = generate_outcome(&mut client, request).await.expect_err(kind);
        assert_eq!(status.code(), code, "{kind}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{kind}: `{needle}` not in: {}",
            status.message()
        );
        still_generates(&mut client).await;
        kinds += 1;
    }
    for (kind, call, code, needle) in other_rows {
        let status = call.await.expect_err(kind);
        assert_eq!(status.code(), code, "{kind}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{kind}: `{needle}` not in: {}",
            status.message()
        );
        still_generates(&mut client).await;
        kinds += 1;
    }
    assert!(kinds >= 40, "{kinds} kinds");
}

async fn daemon_client(daemon: &Daemon) -> easel_proto::v1::easel_client::EaselClient<tonic::transport::Channel> {
    daemon.client().await
}

/// An import, to its end.
async fn import(
    mut client: easel_proto::v1::easel_client::EaselClient<tonic::transport::Channel>,
    path: &str,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .import_model(pb::ImportModelRequest {
            path: path.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(event) = futures::StreamExt::next(&mut stream).await {
        event?;
    }
    Ok(())
}
