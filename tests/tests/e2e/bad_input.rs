//! Bad input: each gets a non-zero exit and a message naming the problem, and the daemon
//! stays up for the next request.

use std::path::{Path, PathBuf};

use easel_e2e::*;

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

#[test]
fn each_bad_request_fails_clearly_and_the_daemon_stays_up() {
    let daemon = Daemon::start_with(&[("EASEL_MAX_PIXELS", "262144")]);
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_model("sd1-tiny");
    let model = model.to_str().unwrap();

    let missing_unet = model_copy(&dir.path().join("a"));
    std::fs::remove_file(missing_unet.join("unet/model.onnx")).unwrap();
    let truncated = model_copy(&dir.path().join("b"));
    let unet = std::fs::read(truncated.join("unet/model.onnx")).unwrap();
    std::fs::write(truncated.join("unet/model.onnx"), &unet[..unet.len() / 2]).unwrap();
    let wrong_noise = dir.path().join("wrong.npy");
    write_npy(&wrong_noise, &[1, 4, 4, 4]);
    let not_npy = dir.path().join("noise.txt");
    std::fs::write(&not_npy, "these are not numbers").unwrap();
    let out = dir.path().join("out.png");
    let out = out.to_str().unwrap();

    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--width", "60"], &["width", "multiple of 16", "try 48 or 64"]),
        (vec!["--height", "100"], &["height", "multiple of 16"]),
        (vec!["--steps", "0"], &["steps"]),
        (vec!["--steps", "100000"], &["steps", "500"]),
        (vec!["--width", "1024", "--height", "1024"], &["pixels", "limit"]),
        (
            vec!["--sampler", "warp_drive"],
            &["unknown sampler", "warp_drive", "euler"],
        ),
        (vec!["--cfg", "-2"], &["guidance"]),
        (vec!["--count", "0"], &["count"]),
        (vec!["--count", "17"], &["count must be between 1 and 16"]),
        (
            vec!["--init-noise", wrong_noise.to_str().unwrap()],
            &["init noise", "[1, 4, 8, 8]"],
        ),
        (vec!["--init-noise", not_npy.to_str().unwrap()], &["npy"]),
        (
            vec!["--init-noise", "/nonexistent/noise.npy"],
            &["/nonexistent/noise.npy"],
        ),
    ];
    for (flags, expected) in &cases {
        let output = daemon.generate_with(model, "a cat", flags, Path::new(out));
        let message = stderr(&output);
        assert!(!output.status.success(), "{flags:?} should fail");
        for needle in *expected {
            assert!(message.contains(needle), "{flags:?}: `{needle}` not in: {message}");
        }
    }

    let model_cases: Vec<(String, &[&str])> = vec![
        ("/nonexistent/model".into(), &["/nonexistent/model", "does not exist"]),
        ("no-such-model".into(), &["no-such-model", "no model named"]),
        (missing_unet.display().to_string(), &["unet/model.onnx", "missing"]),
        (truncated.display().to_string(), &["unet", "model.onnx"]),
    ];
    for (model, expected) in &model_cases {
        let output = daemon.generate_with(model, "a cat", &[], Path::new(out));
        let message = stderr(&output);
        assert!(!output.status.success(), "{model} should fail");
        for needle in *expected {
            assert!(message.contains(needle), "{model}: `{needle}` not in: {message}");
        }
    }

    assert!(!Path::new(out).exists(), "no picture from a failed request");
    // Still serving, and still generating.
    let output = daemon.generate_with(model, "a cat", &["--steps", "2"], Path::new(out));
    assert!(output.status.success(), "{}", stderr(&output));
}
