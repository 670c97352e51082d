//! The model store through the daemon and the CLI: `easel models import` (a folder, .zip, .tar,
//! .tar.gz), `list`, `show`, `rm` (refused while in use), `--replace`, unsafe and oversized
//! archives refused with nothing left behind, leftovers of an interrupted import cleaned at
//! start, and `easel pull` from a local hub (`easel_e2e::hub`) with the CLI's HF_ENDPOINT and
//! HF_TOKEN. Archive safety in depth is unit-tested in `daemon/src/store/archive.rs`, the hub
//! protocol in `hub.rs`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use easel_e2e::hub::HubServer;
use easel_e2e::*;
use easel_proto::v1 as pb;
use futures::StreamExt;

/// sd1-tiny as a .tar.gz, .tar or .zip, under a top folder `sd1-tiny/`.
fn archive(dir: &Path, kind: &str) -> PathBuf {
    let model = fixture_model("sd1-tiny");
    let path = dir.join(format!("tiny-{kind}.{kind}"));
    let file = std::fs::File::create(&path).unwrap();
    match kind {
        "zip" => {
            let mut zip = zip::ZipWriter::new(file);
            for (relative, absolute) in files_under(&model) {
                zip.start_file(format!("sd1-tiny/{relative}"), zip::write::SimpleFileOptions::default())
                    .unwrap();
                zip.write_all(&std::fs::read(absolute).unwrap()).unwrap();
            }
            zip.finish().unwrap();
        }
        "tar" => {
            let mut tar = tar::Builder::new(file);
            tar.append_dir_all("sd1-tiny", &model).unwrap();
            tar.finish().unwrap();
        }
        "tar.gz" => {
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            tar.append_dir_all("sd1-tiny", &model).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        other => panic!("{other}"),
    }
    path
}

fn models_list(daemon: &Daemon) -> serde_json::Value {
    let output = daemon.easel(&["models", "list", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn installed(daemon: &Daemon) -> Vec<String> {
    models_list(daemon)["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["source"] == "installed")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// Nothing but installed models in the store: no temp folders left.
fn store_entries(daemon: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(daemon.home.join("models"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn import_folders_and_archives_then_list_show_generate_and_remove() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture_model("sd1-tiny");
    let output = daemon.easel(&["models", "import", folder.to_str().unwrap(), "--name", "tiny-folder"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("installed tiny-folder (sd1, epsilon, float32, "),
        "{}",
        stdout(&output)
    );
    for kind in ["zip", "tar", "tar.gz"] {
        let path = archive(dir.path(), kind);
        let output = daemon.easel(&["models", "import", path.to_str().unwrap()]);
        assert!(output.status.success(), "{kind}: {}", stderr(&output));
        assert!(
            stdout(&output).contains(&format!("installed tiny-{kind} ")),
            "{}",
            stdout(&output)
        );
    }
    assert_eq!(
        installed(&daemon),
        ["tiny-folder", "tiny-tar", "tiny-tar.gz", "tiny-zip"]
    );
    assert_eq!(
        store_entries(&daemon),
        ["tiny-folder", "tiny-tar", "tiny-tar.gz", "tiny-zip"]
    );
    let listed = models_list(&daemon);
    let zip = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tiny-zip")
        .unwrap();
    assert_eq!(
        (&zip["family"], &zip["dtype"], &zip["default_sampler"]),
        (&"sd1".into(), &"float32".into(), &"pndm".into())
    );
    assert!(zip["size_bytes"].as_u64().unwrap() > 1_000_000);
    // The table has the family and size too.
    let table = stdout(&daemon.easel(&["models", "list"]));
    assert!(
        table.lines().next().unwrap().contains("FAMILY") && table.contains("tiny-zip"),
        "{table}"
    );

    let output = daemon.easel(&["models", "show", "tiny-zip", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let parts: Vec<&str> = shown["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["text_encoder", "unet", "vae_decoder", "vae_encoder"]);
    let files: Vec<&str> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"unet/model.onnx") && files.contains(&"tokenizer/vocab.json"),
        "{files:?}"
    );

    // An installed model generates by name.
    let out = dir.path().join("by-name.png");
    let output = daemon.generate_with("tiny-tar.gz", "a boat", &["--steps", "2"], &out);
    assert!(output.status.success(), "{}", stderr(&output));

    // Same name again: refused unless --replace.
    let output = daemon.easel(&["models", "import", folder.to_str().unwrap(), "--name", "tiny-zip"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("already installed"), "{}", stderr(&output));
    let output = daemon.easel(&[
        "models",
        "import",
        folder.to_str().unwrap(),
        "--name",
        "tiny-zip",
        "--replace",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    for name in ["tiny-folder", "tiny-tar", "tiny-tar.gz", "tiny-zip"] {
        let output = daemon.easel(&["models", "rm", name]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    assert!(installed(&daemon).is_empty());
    assert!(store_entries(&daemon).is_empty(), "{:?}", store_entries(&daemon));
    let output = daemon.easel(&["models", "rm", "tiny-zip"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no model named `tiny-zip` is installed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unsafe_oversized_and_broken_imports_are_refused_and_leave_nothing() {
    let daemon = Daemon::start_with(&[("EASEL_MAX_IMPORT_BYTES", "4MiB")]);
    let dir = tempfile::tempdir().unwrap();

    // Path traversal.
    let evil = dir.path().join("evil.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let data = b"owned";
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // `append_data` refuses `..`; write the raw name the way a hostile tool would.
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil.t");
        header.set_cksum();
        tar.append(&header, &data[..]).unwrap();
        tar.finish().unwrap();
    }
    // A zip bomb: 64 MiB of zeros, compressed to almost nothing, against a 4 MiB limit.
    let bomb = dir.path().join("bomb.zip");
    {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&bomb).unwrap());
        zip.start_file("model_index.json", zip::write::SimpleFileOptions::default())
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
    }
    // A model whose UNet is garbage.
    let broken = dir.path().join("broken");
    copy_tree(&fixture_model("sd1-tiny"), &broken);
    std::fs::write(broken.join("unet/model.onnx"), b"not an onnx graph").unwrap();

    let cases: [(&Path, &str); 4] = [
        (&evil, "escapes the model folder"),
        (&bomb, "expands beyond 4.0 MiB"),
        (&broken, "unet/model.onnx"),
        (&dir.path().join("missing"), "does not exist"),
    ];
    for (path, expected) in cases {
        let output = daemon.easel(&["models", "import", path.to_str().unwrap(), "--name", "x"]);
        assert!(!output.status.success(), "{} should fail", path.display());
        assert!(
            stderr(&output).contains(expected),
            "{}: `{expected}` not in {}",
            path.display(),
            stderr(&output)
        );
    }
    assert!(!dir.path().join("evil.t").exists() && !daemon.home.join("evil.t").exists());
    assert!(store_entries(&daemon).is_empty(), "{:?}", store_entries(&daemon));
    assert!(daemon.easel(&["status"]).status.success());
}

#[test]
fn an_interrupted_import_is_invisible_and_cleaned_at_the_next_start() {
    let mut daemon = Daemon::start();
    // What a SIGKILL mid-import leaves: a half-written temp folder inside the store.
    let leftover = daemon.home.join("models/.import-0123456789abcdef");
    std::fs::create_dir_all(leftover.join("unet")).unwrap();
    std::fs::write(leftover.join("model_index.json"), b"{}").unwrap();
    assert!(installed(&daemon).is_empty(), "a half model must never be listed");
    assert!(daemon.terminate().success());
    daemon.spawn(&[]);
    daemon.wait_ready();
    assert!(
        !leftover.exists(),
        "the next start removes what an interrupted import left"
    );
}

/// SIGKILL in the middle of a real import: nothing becomes visible, and the next start clears
/// the half-written folder.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_import_leaves_nothing_after_its_next_start() {
    let mut daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    // sd1-tiny plus 1 GiB of zeros: a few MiB as .tar.gz, slow enough to extract that the kill
    // lands while it is being written.
    let path = dir.path().join("big.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("big", fixture_model("sd1-tiny")).unwrap();
        let size = 1u64 << 30;
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "big/unet/padding.bin", std::io::repeat(0).take(size))
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let mut client = daemon.client().await;
    let mut stream = client
        .import_model(pb::ImportModelRequest {
            path: path.display().to_string(),
            name: "big".into(),
            replace: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until bytes are being written, then kill the daemon outright.
    loop {
        let event = stream
            .next()
            .await
            .expect("import events")
            .expect("no error before the kill");
        if let Some(pb::import_event::Event::Bytes(b)) = event.event
            && b.done > 0
        {
            break;
        }
    }
    let mut child = daemon.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let store = store_entries(&daemon);
    assert!(
        !store.contains(&"big".to_string()),
        "a half model is visible: {store:?}"
    );
    assert!(
        store.iter().any(|e| e.starts_with('.')),
        "the kill should have left a temp folder: {store:?}"
    );
    daemon.spawn(&[]);
    daemon.wait_ready();
    assert!(store_entries(&daemon).is_empty(), "{:?}", store_entries(&daemon));
    assert!(installed(&daemon).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_in_use_cannot_be_removed() {
    let daemon = Daemon::start_with(&[("EASEL_MAX_STEPS", "100000")]);
    let mut client = daemon.client().await;
    let mut events = client.watch_events(pb::WatchRequest {}).await.unwrap().into_inner();
    let folder = fixture_model("sd1-tiny");
    let output = daemon.easel(&["models", "import", folder.to_str().unwrap(), "--name", "busy"]);
    assert!(output.status.success(), "{}", stderr(&output));
    // WatchEvents told watchers how the import went.
    let mut seen = Vec::new();
    while !seen.contains(&"model installed".to_string()) {
        match events.next().await.unwrap().unwrap().event.unwrap() {
            pb::daemon_event::Event::Import(i) => seen.push(format!("import {}", i.state)),
            pb::daemon_event::Event::Model(m) => seen.push(format!("model {}", m.state)),
            pb::daemon_event::Event::Job(_) => {}
        }
    }
    seen.dedup();
    assert_eq!(
        seen,
        [
            "import extracting",
            "import validating",
            "import installing",
            "model installed"
        ],
        "{seen:?}"
    );
    let request = GenerateRequestBuilder::new("a long job")
        .model("busy")
        .steps(50_000)
        .build();
    let mut stream = client.generate(request).await.unwrap().into_inner();
    let job = wait_for_progress(&mut stream).await;
    let output = daemon.easel(&["models", "rm", "busy"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("in use"), "{}", stderr(&output));
    client.cancel(pb::CancelRequest { job_id: job }).await.unwrap();
    while stream.next().await.is_some() {}
    let output = daemon.easel(&["models", "rm", "busy"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // Unknown models are NOT_FOUND for show and rm alike, by name or by folder.
    for model in ["busy", "/nonexistent/model-folder"] {
        let status = client
            .show_model(pb::ShowModelRequest { model: model.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{model}: {status:?}");
    }
    let status = client
        .remove_model(pb::RemoveModelRequest { name: "busy".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[test]
fn pull_installs_from_a_hub_with_the_callers_endpoint_and_token() {
    let daemon = Daemon::start();
    let server = HubServer::start();
    server.add_repo("test/tiny", "main", &fixture_model("sd1-tiny"));
    server.require_token("secret");
    let pull = |args: &[&str], token: &str| {
        let mut command = daemon.easel_command(&[&["pull"][..], args].concat());
        command.env("HF_ENDPOINT", server.url()).env("HF_TOKEN", token);
        command.output().unwrap()
    };
    let output = pull(&["test/tiny"], "wrong");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("HF_TOKEN"), "{}", stderr(&output));

    let output = pull(&["test/tiny@main"], "secret");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("installed tiny (sd1, epsilon, float32"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("downloaded"),
        "progress on stderr: {}",
        stderr(&output)
    );
    // The files are the hub's, byte for byte, and the download folder is gone.
    let installed_root = daemon.home.join("models/tiny");
    for (relative, absolute) in files_under(&fixture_model("sd1-tiny")) {
        assert_eq!(
            std::fs::read(installed_root.join(&relative)).unwrap(),
            std::fs::read(absolute).unwrap(),
            "{relative}"
        );
    }
    assert!(!daemon.home.join("downloads/test--tiny@main").exists());
    let out = daemon.dir.path().join("pulled.png");
    let output = daemon.generate_with("tiny", "a boat", &["--steps", "2"], &out);
    assert!(output.status.success(), "{}", stderr(&output));

    let output = pull(&["test/tiny"], "secret");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("already installed"), "{}", stderr(&output));
    let output = pull(&["test/absent"], "secret");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no repository test/absent"),
        "{}",
        stderr(&output)
    );
}

/// Two pulls of the same repository at once would write into one download folder: the second
/// is refused (ABORTED) while the first runs; dropping the first's stream cancels it.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_is_pulled_once_at_a_time() {
    let daemon = Daemon::start();
    let server = HubServer::start();
    server.add_repo("test/slow", "main", &fixture_model("sd1-tiny"));
    server.chunk_delay(std::time::Duration::from_millis(50));
    let mut client = daemon.client().await;
    let request = || pb::PullModelRequest {
        repo: "test/slow".into(),
        endpoint: server.url(),
        ..Default::default()
    };
    let mut first = client.pull_model(request()).await.unwrap().into_inner();
    loop {
        let event = first.next().await.expect("pull events").expect("the first pull runs");
        if matches!(event.event, Some(pb::pull_event::Event::Progress(ref p)) if p.bytes_done > 0) {
            break;
        }
    }
    let mut second = client.pull_model(request()).await.unwrap().into_inner();
    let status = loop {
        match second.next().await.expect("an answer") {
            Err(status) => break status,
            Ok(_) => continue,
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("already being pulled"),
        "{}",
        status.message()
    );

    // Hanging up cancels the first pull (it installs nothing), so a new one can run and install.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut again = client.pull_model(request()).await.unwrap().into_inner();
        let mut last = None;
        while let Some(event) = again.next().await {
            last = Some(event);
        }
        match last.expect("an answer") {
            Ok(event) => {
                assert!(matches!(event.event, Some(pb::pull_event::Event::Done(_))), "{event:?}");
                break;
            }
            Err(status) if status.code() == tonic::Code::Aborted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the first pull was never cancelled"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the dropped pull must not have installed the model: {status:?}"),
        }
    }
}
