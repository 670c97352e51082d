//! img2img through the CLI: sizes, metadata, seeds and bad input. (Pixel parity with
//! diffusers, which needs every random draw replayed, is `daemon/tests/parity.rs`.)

use easel_e2e::*;

fn run(daemon: &Daemon, extra: &[&str], out: &std::path::Path) -> std::process::Output {
    let mut args = vec!["--steps", "6"];
    args.extend_from_slice(extra);
    daemon.generate_tiny("a garden", &args, out)
}

#[test]
fn img2img_keeps_the_picture_size_and_records_the_strength() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let init = fixtures().join("img2img/init-80x48.png");
    let init = init.to_str().unwrap();

    let out = dir.path().join("own-size.png");
    let output = run(
        &daemon,
        &["--init-image", init, "--strength", "0.6", "--seed", "9"],
        &out,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let bytes = std::fs::read(&out).unwrap();
    let (w, h, first) = read_png(&bytes);
    assert_eq!((w, h), (80, 48), "without --width/--height the picture keeps its size");
    let parameters = png_text(&bytes).into_iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(parameters.contains("Denoising strength: 0.6"), "{parameters}");

    let again = dir.path().join("again.png");
    let output = run(
        &daemon,
        &["--init-image", init, "--strength", "0.6", "--seed", "9"],
        &again,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        read_png(&std::fs::read(&again).unwrap()).2,
        first,
        "same seed, same picture"
    );

    let weaker = dir.path().join("weaker.png");
    let output = run(
        &daemon,
        &["--init-image", init, "--strength", "0.3", "--seed", "9"],
        &weaker,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_ne!(
        read_png(&std::fs::read(&weaker).unwrap()).2,
        first,
        "strength changes the picture"
    );

    let resized = dir.path().join("resized.png");
    let output = run(
        &daemon,
        &["--init-image", init, "--width", "64", "--height", "64"],
        &resized,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        read_png(&std::fs::read(&resized).unwrap()).0,
        64,
        "resized to the requested size"
    );
}

#[test]
fn bad_img2img_inpainting_and_clip_skip_input_fails_clearly() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let init = fixtures().join("img2img/init-64.png");
    let init = init.to_str().unwrap();
    let other_size = fixtures().join("img2img/init-80x48.png");
    let other_size = other_size.to_str().unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("text.png");
    std::fs::write(&text, b"this is not a picture").unwrap();
    let out = dir.path().join("out.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--init-image", empty.to_str().unwrap()], "empty"),
        (
            vec!["--init-image", text.to_str().unwrap()],
            "cannot read the init image",
        ),
        (
            vec!["--init-image", "/nonexistent/picture.png"],
            "/nonexistent/picture.png",
        ),
        (
            vec!["--init-image", init, "--strength", "0"],
            "strength must be in (0, 1]",
        ),
        (
            vec!["--init-image", init, "--strength", "1.5"],
            "strength must be in (0, 1]",
        ),
        (vec!["--init-image", init, "--strength", "0.1"], "runs no step"),
        (
            vec!["--init-image", init, "--mask", other_size],
            "the mask is 80x48 but the init image is 64x64",
        ),
        (
            vec!["--init-image", init, "--mask", text.to_str().unwrap()],
            "cannot read the mask",
        ),
        (vec!["--init-image", init, "--mask", empty.to_str().unwrap()], "--mask"),
        (
            vec!["--init-image", init, "--mask", init, "--mask-blur", "100"],
            "mask blur must be between 0 and 64",
        ),
        (vec!["--clip-skip", "2"], "does not"),
    ];
    for (flags, expected) in &cases {
        let output = run(&daemon, flags, &out);
        assert!(!output.status.success(), "{flags:?} should fail");
        assert!(
            stderr(&output).contains(expected),
            "{flags:?}: `{expected}` not in {}",
            stderr(&output)
        );
    }
    assert!(!out.exists());
    assert!(daemon.easel(&["status"]).status.success(), "the daemon is still up");
}

/// A 1200×1200 picture of noise is a PNG over gRPC's default 4 MiB message limit, yet well
/// within `max_pixels`: the daemon accepts what its limits allow.
#[test]
fn an_init_image_over_four_mib_within_max_pixels_is_accepted() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let side = 1200;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let pixels: Vec<u8> = (0..side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let init = dir.path().join("noise.png");
    write_png(&init, side as u32, side as u32, &pixels);
    let size = std::fs::metadata(&init).unwrap().len();
    assert!(
        size > 4 << 20,
        "the picture must exceed 4 MiB to test the limit: {size}"
    );
    let out = dir.path().join("out.png");
    let output = run(
        &daemon,
        &[
            "--init-image",
            init.to_str().unwrap(),
            "--width",
            "64",
            "--height",
            "64",
        ],
        &out,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(read_png(&std::fs::read(&out).unwrap()).0, 64);
}
