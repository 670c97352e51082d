//! The tiny VAE decoder and the guidance cut-off through the daemon and the CLI: what each
//! request field and flag does to the picture, its previews and its metadata. Their parity with
//! diffusers is in `daemon/tests/tiny_decoder.rs` and `daemon/tests/parity.rs`.

use std::path::{Path, PathBuf};

use easel_e2e::*;

use crate::generate;
use easel_proto::v1 as pb;
use futures::StreamExt;
use serde::Deserialize;

/// sd1-tiny with the tiny-decoder fixture (`tests/fixtures/tiny-vae/`) as its
/// `vae_decoder_tiny/`, in `dir`.
fn sd1_tiny_with_tiny_decoder(dir: &Path) -> PathBuf {
    let root = dir.join("sd1-tiny-taesd");
    copy_tree(&fixture_model("sd1-tiny"), &root);
    copy_tree(
        &fixtures().join("tiny-vae/vae_decoder_tiny"),
        &root.join("vae_decoder_tiny"),
    );
    root
}

/// The final pictures and the last full preview of a 4-step Euler request.
async fn pictures_and_last_preview(
    client: &mut easel_proto::v1::easel_client::EaselClient<tonic::transport::Channel>,
    model: &Path,
    decoder: pb::Decoder,
) -> (pb::Image, Vec<u8>) {
    let mut request = GenerateRequestBuilder::new("a red circle on a blue background")
        .model(model.to_str().unwrap())
        .steps(4)
        .seed(11)
        .sampler("euler")
        .preview(pb::PreviewOptions {
            stream_latents: false,
            every_n_steps: 1,
            image: pb::PreviewImage::Full as i32,
        })
        .build();
    request.decoder = decoder as i32;
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let (mut image, mut preview) = (None, Vec::new());
    while let Some(event) = stream.next().await {
        match event.unwrap().event {
            Some(pb::generate_event::Event::Image(i)) => image = Some(i),
            Some(pb::generate_event::Event::Progress(p)) if !p.preview_png.is_empty() => preview = p.preview_png,
            _ => {}
        }
    }
    (image.expect("a picture"), preview)
}

/// `decoder: TINY` decodes the final picture with `vae_decoder_tiny/`, and full previews use it
/// whatever the final decoder: Euler's last step predicts exactly the final latent, so the last
/// preview is the tiny-decoded picture.
#[tokio::test(flavor = "multi_thread")]
async fn the_tiny_decoder_draws_the_picture_when_asked_and_every_full_preview() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let model = sd1_tiny_with_tiny_decoder(dir.path());
    let mut client = daemon.client().await;

    let (tiny, tiny_preview) = pictures_and_last_preview(&mut client, &model, pb::Decoder::Tiny).await;
    let (full, full_preview) = pictures_and_last_preview(&mut client, &model, pb::Decoder::Full).await;
    let pixels = |png: &[u8]| read_png(png).2;
    let (mean, max) = diff(&pixels(&tiny_preview), &pixels(&tiny.png));
    assert!(
        max <= 1,
        "the last full preview is the tiny picture: mean {mean:.3}, max {max}"
    );
    assert_eq!(
        pixels(&tiny_preview),
        pixels(&full_preview),
        "previews do not depend on the final decoder"
    );
    let (apart, _) = diff(&pixels(&tiny.png), &pixels(&full.png));
    assert!(apart > 5.0, "the tiny and full decoders' pictures differ ({apart:.2})");
    assert!(tiny.parameters.contains("VAE Decoder: tiny"), "{}", tiny.parameters);
    assert!(!full.parameters.contains("VAE Decoder"), "{}", full.parameters);
    let easel_json = png_text(&tiny.png).into_iter().find(|(k, _)| k == "easel").unwrap().1;
    assert!(easel_json.contains(r#""decoder":"tiny""#), "{easel_json}");

    // Through the CLI too; a model without a tiny decoder says how to get one.
    let out = dir.path().join("tiny.png");
    let output = daemon.generate_with(
        model.to_str().unwrap(),
        "a red circle on a blue background",
        &[
            "--steps",
            "4",
            "--seed",
            "11",
            "--sampler",
            "euler",
            "--decoder",
            "tiny",
        ],
        &out,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(pixels(&std::fs::read(&out).unwrap()), pixels(&tiny.png));
    let plain = fixture_model("sd1-tiny");
    let output = daemon.generate_with(
        plain.to_str().unwrap(),
        "a cat",
        &["--steps", "1", "--decoder", "tiny"],
        &out,
    );
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("vae_decoder_tiny/model.onnx is missing"), "{error}");
}

/// `--guidance-cutoff F` from the CLI: diffusers' dynamic-CFG picture, and the cut-off in the
/// PNG's parameters; without the flag the picture is another one.
#[test]
fn guidance_cutoff_from_the_cli_draws_diffusers_dynamic_cfg_picture() {
    #[derive(Deserialize)]
    struct Cutoff {
        name: String,
        guidance_cutoff: f64,
    }
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let manifest = "guidance-cutoff/manifest.json";
    let cutoffs: Vec<Cutoff> = serde_json::from_slice(&std::fs::read(fixtures().join(manifest)).unwrap()).unwrap();
    let case = generate::manifest(manifest)
        .into_iter()
        .zip(&cutoffs)
        .find(|(c, cut)| c.step_noise.is_none() && cut.guidance_cutoff == 0.0 && cut.name == c.name)
        .map(|(case, _)| case)
        .expect("a deterministic case with cut-off 0");
    let want = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap()).2;
    let cut = dir.path().join("cut.png");
    let output = generate::generate_case(&daemon, &case, &cut, &["--guidance-cutoff", "0"]);
    assert!(output.status.success(), "{}: {}", case.name, stderr(&output));
    let png = std::fs::read(&cut).unwrap();
    let (mean, max) = diff(&read_png(&png).2, &want);
    assert!(mean <= 1.0 && max <= 8, "{}: mean {mean:.3}, max {max}", case.name);
    let parameters = png_text(&png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(parameters.contains("Guidance cutoff: 0"), "{parameters}");

    let uncut = dir.path().join("uncut.png");
    assert!(generate::generate_case(&daemon, &case, &uncut, &[]).status.success());
    let (mean, _) = diff(&read_png(&std::fs::read(&uncut).unwrap()).2, &want);
    assert!(
        mean > 1.0,
        "without the cut-off the picture is diffusers' uncut one ({mean:.3} from the cut one)"
    );

    let output = generate::generate_case(&daemon, &case, &cut, &["--guidance-cutoff", "2"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("guidance cutoff"), "{}", stderr(&output));
}

/// A model folder carrying a tiny decoder imports with it: `models show` lists the part, and the
/// installed model draws with `--decoder tiny` by name. One whose tiny decoder was made for
/// another latent space is refused at import, naming the fix.
#[test]
fn an_imported_model_keeps_its_tiny_decoder() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let model = sd1_tiny_with_tiny_decoder(dir.path());
    let output = daemon.easel(&["models", "import", model.to_str().unwrap(), "--name", "with-taesd"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = daemon.easel(&["models", "show", "with-taesd", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let parts: Vec<&str> = shown["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(parts.contains(&"vae_decoder_tiny"), "{parts:?}");
    let out = dir.path().join("by-name.png");
    let output = daemon.generate_with("with-taesd", "a cat", &["--steps", "2", "--decoder", "tiny"], &out);
    assert!(output.status.success(), "{}", stderr(&output));

    let config = model.join("vae_decoder_tiny/config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["latent_channels"] = 16.into();
    std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    let output = daemon.easel(&["models", "import", model.to_str().unwrap(), "--name", "wrong-taesd"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("vae_decoder_tiny/") && error.contains("TAESD"),
        "{error}"
    );
}
