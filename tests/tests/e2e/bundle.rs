//! Flat bundles through the daemon and the CLI: the fixture models flattened the way Odyssey,
//! Apple's ml-stable-diffusion and Mochi Diffusion ship models (graphs side by side, no
//! configs), as a folder, a .tar.gz (inside a top folder) and a .zip (at its root, with an
//! external-data UNet), imported with `easel models import`, then drawing diffusers' DDIM and
//! PNDM reference pictures by name; `easel models show` says what was inferred; bad bundles and
//! misplaced flags are refused with messages that name the problem. The conversion itself is
//! unit-tested in `daemon/src/catalog/store/bundle.rs` and `daemon/tests/bundle.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use easel_e2e::*;

use crate::generate::{Case, generate_case, manifest};

/// The fixture `model` (under `models/`) as a flat bundle in `dir`: each part's graph under
/// the name `names` gives it (text encoder, UNet, VAE decoder, VAE encoder), the tokenizer's
/// `vocab.json` and `merges.txt` beside them.
fn flatten(model: &str, dir: &Path, names: [&str; 4]) -> PathBuf {
    let source = fixture_model(model);
    std::fs::create_dir_all(dir).unwrap();
    for (part, name) in ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
        .into_iter()
        .zip(names)
    {
        std::fs::copy(source.join(part).join("model.onnx"), dir.join(name)).unwrap();
    }
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(source.join("tokenizer").join(file), dir.join(file)).unwrap();
    }
    dir.to_path_buf()
}

const SNAKE_NAMES: [&str; 4] = ["text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "vae_encoder.onnx"];
const APPLE_NAMES: [&str; 4] = ["TextEncoder.onnx", "Unet.onnx", "VAEDecoder.onnx", "VAEEncoder.onnx"];

/// `easel models import PATH ARGS…`, which must succeed.
fn import(daemon: &Daemon, path: &Path, args: &[&str]) -> String {
    let output = daemon.easel(&[&["models", "import", path.to_str().unwrap()][..], args].concat());
    assert!(output.status.success(), "{}: {}", path.display(), stderr(&output));
    stdout(&output)
}

/// The deterministic DDIM and PNDM reference cases of `fixture` (`models/sd1-tiny`), pointed at
/// the installed model `name`.
fn ddim_and_pndm_cases(fixture: &str, name: &str) -> Vec<Case> {
    manifest("references/manifest.json")
        .into_iter()
        .filter(|c| c.model == fixture && ["ddim", "pndm"].contains(&c.sampler.as_str()))
        .map(|mut case| {
            case.model = name.to_string();
            case
        })
        .collect()
}

/// Draws each case with the installed model and compares with diffusers' picture, as
/// `generate.rs`'s reference tests do (mean ≤ 1.0, max ≤ 8 on 0–255).
fn draws_the_references(daemon: &Daemon, cases: &[Case], out_dir: &Path) {
    for case in cases {
        let out = out_dir.join(format!("{}-{}.png", case.model, case.name));
        let output = generate_case(daemon, case, &out, &[]);
        assert!(
            output.status.success(),
            "{}/{}: {}",
            case.model,
            case.name,
            stderr(&output)
        );
        let (w, h, pixels) = read_png(&std::fs::read(&out).unwrap());
        let (ew, eh, expected) = read_png(&std::fs::read(fixtures().join(&case.image)).unwrap());
        assert_eq!((w, h), (ew, eh), "{}", case.name);
        let (mean, max) = diff(&pixels, &expected);
        assert!(
            mean <= 1.0 && max <= 8,
            "{}/{}: mean {mean:.3} max {max}",
            case.model,
            case.name
        );
    }
}

fn show_json(daemon: &Daemon, name: &str) -> serde_json::Value {
    let output = daemon.easel(&["models", "show", name, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[test]
fn flat_bundles_import_as_folders_and_archives_and_draw_diffusers_references() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();

    // sd1-tiny as a folder with Apple's resource names. Its text width (32) names no family.
    let sd1 = flatten("sd1-tiny", &dir.path().join("sd1-flat"), APPLE_NAMES);
    let line = import(&daemon, &sd1, &["--family", "sd1"]);
    assert!(
        line.starts_with("installed sd1-flat (sd1, epsilon, float32, "),
        "{line}"
    );

    // sd2-tiny-v as a .tar.gz of a top folder. v_prediction is sd2's default; the fixture's VAE
    // was made with SDXL's scaling factor, so that one is given.
    let sd2 = flatten("sd2-tiny-v", &dir.path().join("sd2-src/sd2-flat"), SNAKE_NAMES);
    let sd2_archive = dir.path().join("sd2-flat.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&sd2_archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("sd2-flat", &sd2).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let line = import(
        &daemon,
        &sd2_archive,
        &["--family", "sd2", "--vae-scaling-factor", "0.13025"],
    );
    assert!(
        line.starts_with("installed sd2-flat (sd2, v_prediction, float32, "),
        "{line}"
    );

    // sd1-tiny with its attention-fused UNet, whose weights sit in `model.onnx.data` beside
    // the graph, as a .zip with the files at its root.
    let fused = flatten("sd1-tiny", &dir.path().join("fused-src"), SNAKE_NAMES);
    let fused_unet = fixtures().join("fused/sd1-tiny-unet");
    std::fs::copy(fused_unet.join("model.onnx"), fused.join("unet.onnx")).unwrap();
    std::fs::copy(fused_unet.join("model.onnx.data"), fused.join("model.onnx.data")).unwrap();
    let zip_path = dir.path().join("sd1-fused.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for (relative, absolute) in files_under(&fused) {
            zip.start_file(relative, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(&std::fs::read(absolute).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    }
    import(&daemon, &zip_path, &["--family", "sd1", "--quiet"]);
    let installed = daemon.home.join("models/sd1-fused");
    assert!(installed.join("unet/model.onnx.data").is_file());
    assert!(installed.join("tokenizer/vocab.json").is_file() && !installed.join("vocab.json").exists());

    // Each draws diffusers' DDIM and PNDM pictures of the model it was made from.
    let mut cases = ddim_and_pndm_cases("models/sd1-tiny", "sd1-flat");
    assert!(cases.len() >= 4, "{} sd1 cases", cases.len());
    cases.extend(ddim_and_pndm_cases("models/sd1-tiny", "sd1-fused").into_iter().take(2));
    let sd2_cases = ddim_and_pndm_cases("models/sd2-tiny-v", "sd2-flat");
    assert!(sd2_cases.len() >= 3, "{} sd2 cases", sd2_cases.len());
    cases.extend(sd2_cases);
    draws_the_references(&daemon, &cases, dir.path());

    // `show` says what was inferred and what was given or defaulted.
    let shown = show_json(&daemon, "sd2-flat");
    let inferred: Vec<&str> = shown["inferred"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for expected in [
        "source: flat bundle (",
        "family: sd2 (override: --family (the UNet's `encoder_hidden_states` is 32 wide",
        "vae_factor: 4 (inferred: the VAE decoder drew 8×8 pixels from a 2×2 latent)",
        "prediction_type: v_prediction (default: SD 2.1's",
        "sampler: ddim (default: SD 2.1's scheduler (DDIMScheduler))",
        "vae_scaling_factor: 0.13025 (override: --vae-scaling-factor)",
        "pad_token: `!` (default: SD 2.1's)",
    ] {
        assert!(
            inferred.iter().any(|l| l.starts_with(expected)),
            "`{expected}` not in {inferred:#?}"
        );
    }
    assert_eq!(
        shown["native_width"], 384,
        "sd2 768-v's sample size 96 × the measured factor 4"
    );
    let text = stdout(&daemon.easel(&["models", "show", "sd1-flat"]));
    assert!(
        text.contains("\ninferred:\n  source: flat bundle (")
            && text.contains("\n  vae_factor: 8 (inferred: the VAE decoder drew 16×16 pixels from a 2×2 latent)\n"),
        "{text}"
    );
    // A model imported in optimum's layout has nothing inferred.
    import(&daemon, &fixture_model("sd1-tiny"), &["--name", "optimum"]);
    assert_eq!(show_json(&daemon, "optimum")["inferred"], serde_json::json!([]));
}

/// An SDXL bundle (two text encoders, Apple's names) as a .tar at its root: SDXL base's configs
/// around the graphs draw diffusers' SDXL pictures.
#[test]
fn an_sdxl_flat_bundle_draws_diffusers_references() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let bundle = flatten("sdxl-tiny", &dir.path().join("src"), APPLE_NAMES);
    std::fs::copy(
        fixture_model("sdxl-tiny").join("text_encoder_2/model.onnx"),
        bundle.join("TextEncoder2.onnx"),
    )
    .unwrap();
    let archive = dir.path().join("xl-flat.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        tar.append_dir_all(".", &bundle).unwrap();
        tar.finish().unwrap();
    }
    // The tiny model's text width (32 + 48) names no family.
    let line = import(&daemon, &archive, &["--family", "sdxl"]);
    assert!(
        line.starts_with("installed xl-flat (sdxl, epsilon, float32, "),
        "{line}"
    );
    let cases: Vec<Case> = manifest("sdxl/manifest.json")
        .into_iter()
        .filter(|c| c.model == "models/sdxl-tiny" && ["ddim", "pndm"].contains(&c.sampler.as_str()))
        .map(|mut case| {
            case.model = "xl-flat".to_string();
            case
        })
        .collect();
    assert_eq!(cases.len(), 2);
    draws_the_references(&daemon, &cases, dir.path());
    let shown = show_json(&daemon, "xl-flat");
    let inferred = shown["inferred"].to_string();
    assert!(
        inferred.contains("pad_token: `<|endoftext|>` (tokenizer/), `!` (tokenizer_2/)"),
        "{inferred}"
    );
}

#[test]
fn bad_flat_bundles_and_misplaced_flags_are_refused_and_leave_nothing() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let sd1 = |name: &str| flatten("sd1-tiny", &dir.path().join(name), SNAKE_NAMES);

    let no_unet = sd1("no-unet");
    std::fs::remove_file(no_unet.join("unet.onnx")).unwrap();
    let no_vocab = sd1("no-vocab");
    std::fs::remove_file(no_vocab.join("vocab.json")).unwrap();
    let two_unets = sd1("two-unets");
    std::fs::copy(two_unets.join("unet.onnx"), two_unets.join("Unet.onnx")).unwrap();
    let no_data = sd1("no-data");
    std::fs::copy(
        fixtures().join("fused/sd1-tiny-unet/model.onnx"),
        no_data.join("unet.onnx"),
    )
    .unwrap();
    let plain = sd1("plain");
    let optimum = fixture_model("sd1-tiny");
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        (&*no_unet, vec!["--family", "sd1"], "has no unet.onnx (or Unet.onnx);"),
        (&*no_vocab, vec!["--family", "sd1"], "has no vocab.json;"),
        (
            &*two_unets,
            vec!["--family", "sd1"],
            "two unet graphs, `Unet.onnx` and `unet.onnx`",
        ),
        (
            &*no_data,
            vec!["--family", "sd1"],
            "`unet.onnx` keeps its weights in `model.onnx.data`, which is not a file beside it",
        ),
        (
            &*plain,
            vec![],
            "is 32 wide, which is none of SD 1.x's 768, SD 2.x's 1024 or SDXL's 2048",
        ),
        (&*plain, vec![], "pass --family sd1|sd2|sdxl"),
        (
            &*plain,
            vec!["--family", "sdxl"],
            "the flat bundle has no text_encoder_2.onnx",
        ),
        (
            &*plain,
            vec!["--family", "sd1", "--sampler", "unipc"],
            "`--sampler unipc` is not allowed",
        ),
        (
            &*plain,
            vec!["--family", "sd1", "--vae-scaling-factor", "0"],
            "`--vae-scaling-factor 0` is not allowed",
        ),
        (
            &*optimum,
            vec!["--prediction", "epsilon"],
            "--prediction only applies to flat bundles",
        ),
        (
            &*optimum,
            vec!["--family", "sd1", "--sampler", "ddim"],
            "import it without --family and --sampler",
        ),
    ];
    for (path, flags, expected) in &cases {
        let args = [
            &["models", "import", path.to_str().unwrap(), "--name", "x"][..],
            &flags[..],
        ]
        .concat();
        let output = daemon.easel(&args);
        assert!(!output.status.success(), "{} {flags:?} should fail", path.display());
        assert!(
            stderr(&output).contains(expected),
            "{} {flags:?}: `{expected}` not in {}",
            path.display(),
            stderr(&output)
        );
    }
    let store: Vec<String> = std::fs::read_dir(daemon.home.join("models"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(store.is_empty(), "{store:?}");
    assert!(plain.join("unet.onnx").is_file(), "the source is left as it was");
    // The daemon is still fine, and the good bundle imports with its family.
    import(&daemon, &plain, &["--family", "sd1"]);
}
