//! SDXL through the daemon: import into the store, what `models show` and `models list` say,
//! and a picture with SDXL's size conditioning from the CLI flags that equals diffusers'. Parity
//! for every sampler and for SDXL-Turbo is in `daemon/tests/parity.rs`.

use easel_e2e::*;
use serde::Deserialize;

use crate::generate;

/// A case of `tests/fixtures/sdxl/manifest.json` (`tools/make_sdxl_fixtures.py`).
#[derive(Deserialize)]
struct XlCase {
    #[serde(flatten)]
    case: generate::Case,
    /// (height, width), as diffusers takes it.
    original_size: [u32; 2],
    /// (top, left).
    crops_coords_top_left: [u32; 2],
    /// (height, width).
    target_size: [u32; 2],
}

#[test]
fn an_sdxl_model_imports_and_draws_diffusers_picture_with_size_conditioning() {
    let daemon = Daemon::start();
    let model = fixture_model("sdxl-tiny");
    let import = daemon.easel(&["models", "import", model.to_str().unwrap(), "--name", "xl"]);
    assert!(import.status.success(), "{}", stderr(&import));

    let show = daemon.easel(&["models", "show", "xl"]);
    assert!(show.status.success(), "{}", stderr(&show));
    let shown = stdout(&show);
    assert!(shown.contains("sdxl"), "{shown}");
    assert!(shown.contains("text_encoder_2"), "{shown}");
    let list = stdout(&daemon.easel(&["models", "list"]));
    assert!(
        list.lines().any(|line| line.contains("xl") && line.contains("sdxl")),
        "{list}"
    );

    let cases: Vec<XlCase> =
        serde_json::from_slice(&std::fs::read(fixtures().join("sdxl/manifest.json")).unwrap()).unwrap();
    let sized = cases
        .iter()
        .find(|c| c.case.name == "euler-sizes")
        .expect("the size-conditioning case");
    let [oh, ow] = sized.original_size;
    let [top, left] = sized.crops_coords_top_left;
    let [th, tw] = sized.target_size;
    let (original, crop, target) = (format!("{ow}x{oh}"), format!("{top},{left}"), format!("{tw}x{th}"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sized.png");
    let output = generate::generate_case(
        &daemon,
        &sized.case,
        &out,
        &[
            "--original-size",
            &original,
            "--crop-top-left",
            &crop,
            "--target-size",
            &target,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let png = std::fs::read(&out).unwrap();
    let want = read_png(&std::fs::read(fixtures().join(&sized.case.image)).unwrap()).2;
    let (mean, max) = diff(&read_png(&png).2, &want);
    assert!(mean <= 1.0 && max <= 8, "mean {mean:.3}, max {max}");
    let parameters = png_text(&png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.contains(&format!("Original size: {original}"))
            && parameters.contains(&format!("Crop top-left: {crop}"))
            && parameters.contains(&format!("Target size: {target}")),
        "{parameters}"
    );

    // Without the flags: the default conditioning, another picture.
    let plain = dir.path().join("plain.png");
    assert!(
        generate::generate_case(&daemon, &sized.case, &plain, &[])
            .status
            .success()
    );
    assert_ne!(read_png(&std::fs::read(&plain).unwrap()).2, read_png(&png).2);

    // The flags on a model that is not SDXL: refused, with the reason.
    let sd1 = generate::manifest("references/manifest.json").remove(0);
    let refused = generate::generate_case(
        &daemon,
        &sd1,
        &dir.path().join("no.png"),
        &["--original-size", "512x512"],
    );
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("SDXL models only"), "{}", stderr(&refused));
}

/// Broken SDXL folders are refused at import with what is wrong and how to fix it: each half
/// without the other, a second tokenizer missing, a base UNet under a refiner's
/// `model_index.json`, and a size the UNet cannot take at generation.
#[test]
fn broken_sdxl_folders_are_refused_with_the_fix() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let xl = fixture_model("sdxl-tiny");
    let variant = |name: &str, edit: &dyn Fn(&std::path::Path)| {
        let root = dir.path().join(name);
        copy_tree(&xl, &root);
        edit(&root);
        root
    };
    let cases: Vec<(&str, std::path::PathBuf, &[&str])> = vec![
        (
            "no tokenizer_2",
            variant("no-tokenizer-2", &|root| {
                std::fs::remove_dir_all(root.join("tokenizer_2")).unwrap()
            }),
            &["tokenizer_2", "copy the model's tokenizer_2/"],
        ),
        (
            "an SDXL UNet without text_encoder_2",
            variant("no-text-encoder-2", &|root| {
                std::fs::remove_dir_all(root.join("text_encoder_2")).unwrap();
                std::fs::remove_dir_all(root.join("tokenizer_2")).unwrap();
            }),
            &["text_encoder_2/ is missing", "text_embeds"],
        ),
        (
            "text_encoder_2 beside an SD 1.x UNet",
            variant("sd1-unet", &|root| {
                copy_tree(&fixture_model("sd1-tiny").join("unet"), &root.join("unet"));
            }),
            &["text_encoder_2/", "not SDXL's"],
        ),
        (
            "a base UNet said to be a refiner's",
            variant("refiner", &|root| {
                let path = root.join("model_index.json");
                let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                index["requires_aesthetics_score"] = true.into();
                std::fs::write(&path, index.to_string()).unwrap();
            }),
            &["6 time ids", "a refiner", "requires_aesthetics_score"],
        ),
    ];
    for (what, root, expected) in cases {
        let output = daemon.easel(&["models", "import", root.to_str().unwrap(), "--name", "broken"]);
        assert!(!output.status.success(), "{what}: imported");
        let message = stderr(&output);
        for part in expected {
            assert!(message.contains(part), "{what}: {message}");
        }
    }
    // Nothing half-installed, and the daemon still serves.
    assert!(!stdout(&daemon.easel(&["models", "list"])).contains("broken"));

    // A size that is not a multiple of the UNet's: refused with the nearest ones.
    let out = dir.path().join("odd.png");
    let model = xl.to_str().unwrap();
    let output = daemon.easel(&[
        "generate",
        "a cat",
        "--model",
        model,
        "--width",
        "72",
        "--height",
        "64",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("72"), "{}", stderr(&output));
}

/// The SDXL refiner as an img2img model of its own: installed and reported as `sdxl-refiner`,
/// its aesthetic scores from the CLI reach the picture and its metadata, and the settings that
/// do not apply are refused on each side.
#[test]
fn the_sdxl_refiner_refines_a_picture_with_its_aesthetic_scores() {
    let daemon = Daemon::start();
    let refiner = fixture_model("sdxl-refiner-tiny");
    let import = daemon.easel(&["models", "import", refiner.to_str().unwrap(), "--name", "refiner"]);
    assert!(import.status.success(), "{}", stderr(&import));
    let shown = stdout(&daemon.easel(&["models", "show", "refiner"]));
    assert!(
        shown.contains("sdxl-refiner") && shown.contains("text_encoder_2"),
        "{shown}"
    );

    let dir = tempfile::tempdir().unwrap();
    let init = fixtures().join("img2img/init-64.png");
    let refine = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args = [
            "generate",
            "a watercolor of a sunny garden",
            "--model",
            "refiner",
            "--init-image",
            init.to_str().unwrap(),
            "--strength",
            "0.5",
            "--steps",
            "6",
            "--seed",
            "4",
            "--no-progress",
            "-o",
            out.to_str().unwrap(),
        ];
        (daemon.easel(&[&args[..], extra].concat()), out)
    };
    let (output, default_scores) = refine("default.png", &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (output, scored) = refine(
        "scored.png",
        &["--aesthetic-score", "9", "--negative-aesthetic-score", "1"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let (default_png, scored_png) = (std::fs::read(&default_scores).unwrap(), std::fs::read(&scored).unwrap());
    assert_ne!(
        read_png(&default_png).2,
        read_png(&scored_png).2,
        "the scores changed nothing"
    );
    let parameters = |png: &[u8]| png_text(png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters(&default_png).contains("Aesthetic score: 6, Negative aesthetic score: 2.5"),
        "{}",
        parameters(&default_png)
    );
    assert!(parameters(&scored_png).contains("Aesthetic score: 9, Negative aesthetic score: 1"));

    let (output, _) = refine("target.png", &["--target-size", "64x64"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("instead of a target size"),
        "{}",
        stderr(&output)
    );
    let (output, _) = refine("range.png", &["--aesthetic-score", "11"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("between 0 and 10"), "{}", stderr(&output));
    let base = fixture_model("sdxl-tiny");
    let output = daemon.easel(&[
        "generate",
        "a cat",
        "--model",
        base.to_str().unwrap(),
        "--aesthetic-score",
        "6",
        "-o",
        dir.path().join("base.png").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("SDXL refiners only"), "{}", stderr(&output));
}

/// Base + refiner in one request from the CLI (`--refiner NAME --refiner-switch F`): diffusers'
/// ensemble picture (the base to the switch, the refiner from there), progress counting both
/// stages' UNet evaluations, the refiner named in the metadata, both models resident after; and
/// the requests that cannot work refused with what to do instead.
#[test]
fn base_and_refiner_in_one_request_draw_diffusers_ensemble_picture() {
    let daemon = Daemon::start();
    let refiner = fixture_model("sdxl-refiner-tiny");
    let import = daemon.easel(&["models", "import", refiner.to_str().unwrap(), "--name", "refiner"]);
    assert!(import.status.success(), "{}", stderr(&import));
    let cases = generate::manifest("sdxl/ensemble-manifest.json");
    // Euler: deterministic, so the CLI's own seed draws nothing the reference did not.
    let case = cases
        .iter()
        .find(|c| c.name == "ensemble-euler-0.8")
        .expect("the Euler case");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("refined.png");
    let output = generate::generate_case(
        &daemon,
        case,
        &out,
        &["--refiner", "refiner", "--refiner-switch", "0.8", "--json"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let png = std::fs::read(&out).unwrap();
    let want = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap()).2;
    let (mean, max) = diff(&read_png(&png).2, &want);
    assert!(mean <= 1.0 && max <= 8, "mean {mean:.3}, max {max}");
    let progress: Vec<(u64, u64)> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"] == "progress")
        .map(|event| (event["step"].as_u64().unwrap(), event["total"].as_u64().unwrap()))
        .collect();
    // Euler's 10 timesteps: 8 at or above 200 for the base, 2 for the refiner.
    assert_eq!(progress, (1..=10).map(|step| (step, 10)).collect::<Vec<_>>());
    let parameters = png_text(&png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.contains("Refiner: refiner, Refiner switch at: 0.8"),
        "{parameters}"
    );
    let ps = stdout(&daemon.easel(&["ps"]));
    assert!(
        ps.contains("refiner") && ps.contains("sdxl-tiny"),
        "both stages' models stay resident: {ps}"
    );

    let refused = |extra: &[&str], expected: &str| {
        let output = generate::generate_case(&daemon, case, &dir.path().join("no.png"), extra);
        assert!(!output.status.success(), "{extra:?} was accepted");
        assert!(stderr(&output).contains(expected), "{extra:?}: {}", stderr(&output));
    };
    refused(&["--refiner", "refiner", "--refiner-switch", "1"], "between 0 and 1");
    refused(&["--refiner", "nosuch"], "nosuch");
    let sd1 = fixture_model("sd1-tiny");
    refused(&["--refiner", sd1.to_str().unwrap()], "share a latent space");
    let inpaint = fixture_model("sdxl-inpaint-tiny");
    refused(&["--refiner", inpaint.to_str().unwrap()], "inpainting model");
    // At 0.05 the base's first timestep is already past the switch.
    refused(
        &["--refiner", "refiner", "--refiner-switch", "0.05"],
        "runs no step before the switch",
    );
    let init = fixtures().join("img2img/init-64.png");
    let mask = fixtures().join("inpaint/mask-64.png");
    refused(
        &[
            "--refiner",
            "refiner",
            "--init-image",
            init.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
        ],
        "inpainting with a refiner",
    );
    let switch_alone = daemon.easel(&["generate", "x", "--refiner-switch", "0.5"]);
    assert!(!switch_alone.status.success());
    assert!(stderr(&switch_alone).contains("--refiner"), "{}", stderr(&switch_alone));
}
