//! Inpainting through the daemon: only the white part of the mask changes, the rest comes back
//! byte for byte (the final composite), with a dedicated 9-channel inpainting UNet and with an
//! ordinary model (latent blending); batches keep seed + i; the built-in model paints what the
//! prompt asks inside the mask. Parity of the raw pictures with diffusers is in
//! `daemon/tests/parity.rs`.

use easel_e2e::shapes::{PALETTE, judge};
use easel_e2e::*;

fn init() -> String {
    fixtures().join("img2img/init-64.png").to_str().unwrap().to_string()
}

fn mask() -> String {
    fixtures().join("inpaint/mask-64.png").to_str().unwrap().to_string()
}

/// Pixel i is repainted: the mask is 0/255 greyscale.
fn repainted() -> Vec<bool> {
    let (w, h, luma) = read_png(&std::fs::read(mask()).unwrap());
    assert_eq!(luma.len(), (w * h) as usize, "a greyscale mask");
    luma.iter().map(|&v| v >= 128).collect()
}

/// (mean difference inside the mask, max difference outside it) against the init picture.
fn inside_and_outside(out: &[u8], keep_distance: usize) -> (f64, u8) {
    let original = read_png(&std::fs::read(init()).unwrap()).2;
    let repaint = repainted();
    let near_mask = |i: usize| {
        let (x, y) = ((i % 64) as isize, (i / 64) as isize);
        let d = keep_distance as isize;
        (-d..=d).any(|dy| {
            (-d..=d).any(|dx| {
                let (nx, ny) = (x + dx, y + dy);
                (0..64).contains(&nx) && (0..64).contains(&ny) && repaint[(ny * 64 + nx) as usize]
            })
        })
    };
    let (mut inside, mut n_inside, mut outside) = (0u64, 0u64, 0u8);
    for i in 0..64 * 64 {
        for c in 0..3 {
            let d = out[i * 3 + c].abs_diff(original[i * 3 + c]);
            if repaint[i] {
                inside += u64::from(d);
                n_inside += 1;
            } else if !near_mask(i) {
                outside = outside.max(d);
            }
        }
    }
    (inside as f64 / n_inside as f64, outside)
}

/// Inpaints the fixture picture with seed 5 unless `extra` names another.
fn run(daemon: &Daemon, model: &str, extra: &[&str], out: &std::path::Path) -> std::process::Output {
    let (init, mask) = (init(), mask());
    let mut args = vec!["generate", "a stone fountain", "--model", model, "--steps", "6"];
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "5"]);
    }
    args.extend_from_slice(&[
        "--init-image",
        &init,
        "--mask",
        &mask,
        "--no-progress",
        "-o",
        out.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    daemon.easel(&args)
}

#[test]
fn only_the_masked_part_changes_with_either_kind_of_model() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let dedicated = fixtures().join("inpaint/models/sd1-tiny-inpaint");
    let ordinary = fixture_model("sd1-tiny");
    for model in [&dedicated, &ordinary] {
        let model = model.to_str().unwrap();
        // A sharp mask: everything outside it is the original, exactly.
        let out = dir.path().join("sharp.png");
        let output = run(&daemon, model, &["--mask-blur", "0"], &out);
        assert!(output.status.success(), "{model}: {}", stderr(&output));
        let png = std::fs::read(&out).unwrap();
        let (inside, outside) = inside_and_outside(&read_png(&png).2, 0);
        assert_eq!(outside, 0, "{model}: pixels outside the mask changed");
        assert!(
            inside > 10.0,
            "{model}: the masked part was not repainted (mean diff {inside:.1})"
        );
        let parameters = &png_text(&png).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
        assert!(
            parameters.contains("Denoising strength: 1") && parameters.contains("Mask blur: 0"),
            "{parameters}"
        );

        // The default blur (4 px) softens the seam: pixels more than 3σ away stay exact.
        let out = dir.path().join("soft.png");
        let output = run(&daemon, model, &[], &out);
        assert!(output.status.success(), "{model}: {}", stderr(&output));
        let (inside, outside) = inside_and_outside(&read_png(&std::fs::read(&out).unwrap()).2, 12);
        assert_eq!(outside, 0, "{model}: pixels far from the blurred mask changed");
        assert!(inside > 10.0, "{model}: mean diff inside {inside:.1}");
    }
}

#[test]
fn inpainting_batches_keep_seed_plus_i_and_models_check_their_inputs() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model("sd1-tiny");
    let model = model.to_str().unwrap();
    let output = run(
        &daemon,
        model,
        &["--count", "2", "--sampler", "euler_a"],
        &dir.path().join("b.png"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let paths: Vec<&str> = printed.lines().map(str::trim).filter(|l| l.ends_with(".png")).collect();
    assert_eq!(paths.len(), 2, "{printed}");
    let alone = dir.path().join("alone.png");
    let output = run(&daemon, model, &["--seed", "6", "--sampler", "euler_a"], &alone);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        read_png(&std::fs::read(paths[1]).unwrap()).2,
        read_png(&std::fs::read(&alone).unwrap()).2,
        "image 2 of a batch from seed 5 is seed 6's picture"
    );

    // A 9-channel inpainting UNet cannot run without a mask.
    let dedicated = fixtures().join("inpaint/models/sd1-tiny-inpaint");
    let output = daemon.easel(&[
        "generate",
        "a fountain",
        "--model",
        dedicated.to_str().unwrap(),
        "--steps",
        "2",
        "--no-progress",
        "-o",
        dir.path().join("x.png").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is an inpainting model"),
        "{}",
        stderr(&output)
    );
}

/// The built-in model (an ordinary 4-channel UNet) paints a shape of the asked colour into a
/// square hole in a plain picture, and leaves the rest alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_model_paints_the_asked_colour_into_the_hole() {
    let daemon = Daemon::start_with(&[("EASEL_THREADS", "2")]);
    let mut client = daemon.client().await;
    let (size, hole) = (128usize, 32..96usize);
    let background = PALETTE.iter().find(|(name, _)| *name == "white").unwrap().1;
    let picture: Vec<u8> = (0..size * size).flat_map(|_| background).collect();
    let mask: Vec<u8> = (0..size * size)
        .map(|i| {
            if hole.contains(&(i % size)) && hole.contains(&(i / size)) {
                255
            } else {
                0
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (picture_png, mask_png) = (dir.path().join("picture.png"), dir.path().join("mask.png"));
    write_png(&picture_png, size as u32, size as u32, &picture);
    write_png(&mask_png, size as u32, size as u32, &mask);
    let (picture_png, mask_png) = (std::fs::read(picture_png).unwrap(), std::fs::read(mask_png).unwrap());

    let (mut right, mut total, mut misses) = (0, 0, Vec::new());
    for (i, (colour, _)) in PALETTE.iter().filter(|(name, _)| *name != "white").enumerate() {
        for (k, shape) in ["circle", "square"].iter().enumerate() {
            let request = GenerateRequestBuilder::new(&format!("a {colour} {shape} on a white background"))
                .steps(20)
                .seed(300 + (i * 2 + k) as u64)
                .guidance(5.0)
                .sampler("euler")
                .inpaint(picture_png.clone(), mask_png.clone(), 0.0);
            let images = generate(&mut client, request).await.unwrap();
            let (_, _, pixels) = read_png(&images[0]);
            for (p, m) in pixels.chunks(3).zip(&mask) {
                if *m == 0 {
                    assert_eq!(p, background, "a pixel outside the hole changed");
                }
            }
            let verdict = judge(size, size, &pixels);
            total += 1;
            if verdict.colour == *colour {
                right += 1;
            } else {
                misses.push(format!("{colour} {shape}: got {verdict:?}"));
            }
        }
    }
    eprintln!("inpainting colours right: {right}/{total}");
    assert!(
        right * 10 >= total * 8,
        "colours right in {right}/{total}:\n{}",
        misses.join("\n")
    );
}
