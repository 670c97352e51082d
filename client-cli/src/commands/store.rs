//! The model store from the command line: `easel models show | rm | import` and `easel pull`.
//!
//! Imports and pulls run in the daemon (it validates with ONNX Runtime and installs atomically);
//! this side sends the request, shows progress on stderr and prints the installed model.
//! `easel pull` forwards this process's `HF_ENDPOINT` and `HF_TOKEN`, so the hub and token of
//! the shell that asks are the ones used.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use easel_client::pb;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::info::{dash, human_bytes};
use super::{Global, UsageError};

pub async fn show(global: &Global, model: &str, json: bool) -> anyhow::Result<()> {
    let mut client = super::client(global).await?;
    let model = easel_client::resolve_model(model)?;
    let reply = client.show_model(pb::ShowModelRequest { model }).await?.into_inner();
    if json {
        outln!("{}", show_json(&reply));
    } else {
        for line in show_lines(&reply) {
            outln!("{line}");
        }
    }
    Ok(())
}

fn info_json(info: &pb::ModelInfo) -> serde_json::Value {
    json!({
        "name": info.name, "path": info.path, "family": info.family, "prediction_type": info.prediction_type,
        "dtype": info.dtype, "size_bytes": info.size_bytes, "default_sampler": info.default_sampler,
        "source": info.source, "loaded": info.loaded,
    })
}

fn show_json(reply: &pb::ShowModelReply) -> serde_json::Value {
    let tensor = |t: &pb::TensorSpec| json!({ "name": t.name, "dtype": t.dtype, "shape": t.shape });
    json!({
        "model": reply.info.as_ref().map(info_json),
        "native_width": reply.native_width,
        "native_height": reply.native_height,
        "files": reply.files.iter().map(|f| json!({ "path": f.path, "size_bytes": f.size_bytes })).collect::<Vec<_>>(),
        "parts": reply.parts.iter().map(|p| json!({
            "name": p.name,
            "inputs": p.inputs.iter().map(tensor).collect::<Vec<_>>(),
            "outputs": p.outputs.iter().map(tensor).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "inferred": reply.inferred,
    })
}

fn show_lines(reply: &pb::ShowModelReply) -> Vec<String> {
    let info = reply.info.clone().unwrap_or_default();
    let mut lines = vec![
        format!("name        {}", info.name),
        format!("path        {}", info.path),
        format!("source      {}", dash(&info.source)),
        format!("family      {}", dash(&info.family)),
        format!("prediction  {}", dash(&info.prediction_type)),
        format!("dtype       {}", dash(&info.dtype)),
        format!("size        {}", human_bytes(info.size_bytes)),
        format!("sampler     {}", dash(&info.default_sampler)),
        format!("native      {}x{}", reply.native_width, reply.native_height),
        format!("loaded      {}", if info.loaded { "yes" } else { "no" }),
    ];
    let shape = |t: &pb::TensorSpec| {
        let dims: Vec<String> = t
            .shape
            .iter()
            .map(|d| if *d < 0 { "?".to_string() } else { d.to_string() })
            .collect();
        format!("{} {} [{}]", t.name, t.dtype, dims.join(", "))
    };
    for part in &reply.parts {
        lines.push(format!("{}:", part.name));
        lines.extend(part.inputs.iter().map(|t| format!("  in   {}", shape(t))));
        lines.extend(part.outputs.iter().map(|t| format!("  out  {}", shape(t))));
    }
    if !reply.inferred.is_empty() {
        // A model converted from a flat bundle: what its generated configs are based on.
        lines.push("inferred:".to_string());
        lines.extend(reply.inferred.iter().map(|line| format!("  {line}")));
    }
    lines.push("files:".to_string());
    lines.extend(
        reply
            .files
            .iter()
            .map(|f| format!("  {:>10}  {}", human_bytes(f.size_bytes), f.path)),
    );
    lines
}

pub async fn remove(global: &Global, name: &str) -> anyhow::Result<()> {
    let mut client = super::info::connect_existing(global, "").await?;
    client
        .remove_model(pb::RemoveModelRequest { name: name.to_string() })
        .await?;
    outln!("removed {name}");
    Ok(())
}

/// A bar for bytes on a terminal, nothing otherwise (or with `--quiet`).
fn byte_bar(quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// The event, or its error after clearing the bar (so the message is not drawn over).
fn clear_on_error<T>(bar: &Option<ProgressBar>, item: Result<T, tonic::Status>) -> anyhow::Result<T> {
    item.map_err(|status| {
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        status.into()
    })
}

fn say(bar: &Option<ProgressBar>, quiet: bool, text: &str) {
    match bar {
        Some(bar) => bar.set_message(text.to_string()),
        None if !quiet => eprintln!("{text}"),
        None => {}
    }
}

pub async fn import(
    global: &Global,
    path: &Path,
    name: Option<String>,
    replace: bool,
    quiet: bool,
    bundle: super::BundleArgs,
) -> anyhow::Result<()> {
    let absolute = std::path::absolute(path).with_context(|| format!("cannot use {}", path.display()))?;
    if !absolute.exists() {
        return Err(UsageError(format!(
            "{} does not exist; pass a model folder, or a .zip, .tar, .tar.gz or .tar.zst of one",
            path.display()
        ))
        .into());
    }
    let mut client = super::client(global).await?;
    let mut stream = client
        .import_model(pb::ImportModelRequest {
            path: absolute.display().to_string(),
            name: name.unwrap_or_default(),
            replace,
            family: bundle.family,
            prediction_type: bundle.prediction,
            sampler: bundle.sampler,
            vae_scaling_factor: bundle.vae_scaling_factor,
        })
        .await?
        .into_inner();
    let bar = byte_bar(quiet);
    let mut installed = None;
    while let Some(event) = stream.next().await {
        let event = clear_on_error(&bar, event)?;
        match event.event {
            Some(pb::import_event::Event::Stage(stage)) => say(&bar, quiet, &stage),
            Some(pb::import_event::Event::Bytes(b)) => {
                if let Some(bar) = &bar {
                    bar.set_length(b.total);
                    bar.set_position(b.done);
                }
            }
            Some(pb::import_event::Event::Done(info)) => installed = Some(info),
            None => {}
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let info = installed.context("the daemon ended the import without saying it was done")?;
    outln!("{}", installed_line(&info));
    Ok(())
}

fn installed_line(info: &pb::ModelInfo) -> String {
    format!(
        "installed {} ({}, {}, {}, {})",
        info.name,
        dash(&info.family),
        dash(&info.prediction_type),
        dash(&info.dtype),
        human_bytes(info.size_bytes)
    )
}

pub async fn pull(global: &Global, args: super::PullArgs) -> anyhow::Result<()> {
    let super::PullArgs {
        reference,
        name,
        replace,
        quiet,
    } = args;
    let env = |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_default()
    };
    let mut client = super::client(global).await?;
    let mut stream = client
        .pull_model(pb::PullModelRequest {
            repo: reference,
            revision: String::new(),
            name: name.unwrap_or_default(),
            endpoint: env("HF_ENDPOINT"),
            token: env("HF_TOKEN"),
            replace,
        })
        .await?
        .into_inner();
    let bar = byte_bar(quiet);
    let mut installed = None;
    let mut last_line = std::time::Instant::now();
    while let Some(event) = stream.next().await {
        let event = clear_on_error(&bar, event)?;
        match event.event {
            Some(pb::pull_event::Event::Stage(stage)) => say(&bar, quiet, &stage),
            Some(pb::pull_event::Event::Progress(p)) => match &bar {
                Some(bar) => {
                    bar.set_length(p.bytes_total);
                    bar.set_position(p.bytes_done);
                    bar.set_message(format!("downloading {}/{} files", p.files_done, p.files_total));
                }
                // Without a terminal: a line every few seconds, and at the end.
                None if !quiet && (last_line.elapsed() > Duration::from_secs(5) || p.files_done == p.files_total) => {
                    last_line = std::time::Instant::now();
                    eprintln!(
                        "downloaded {}/{} files, {} of {}",
                        p.files_done,
                        p.files_total,
                        human_bytes(p.bytes_done),
                        human_bytes(p.bytes_total)
                    );
                }
                None => {}
            },
            Some(pb::pull_event::Event::Done(info)) => installed = Some(info),
            None => {}
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let info = installed.context("the daemon ended the pull without saying it was done")?;
    outln!("{}", installed_line(&info));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_lists_parts_and_files() {
        let reply = pb::ShowModelReply {
            info: Some(pb::ModelInfo {
                name: "tiny".into(),
                family: "sd1".into(),
                dtype: "float32".into(),
                size_bytes: 2048,
                ..Default::default()
            }),
            files: vec![pb::ModelFile {
                path: "unet/model.onnx".into(),
                size_bytes: 2048,
            }],
            parts: vec![pb::SubModel {
                name: "unet".into(),
                inputs: vec![pb::TensorSpec {
                    name: "sample".into(),
                    dtype: "float32".into(),
                    shape: vec![-1, 4, -1, -1],
                }],
                outputs: vec![],
            }],
            native_width: 512,
            native_height: 512,
            inferred: vec!["family: sd1 (inferred: the UNet's `encoder_hidden_states` is 768 wide)".into()],
        };
        let lines = show_lines(&reply);
        let inferred = lines
            .iter()
            .position(|l| l == "inferred:")
            .expect("an inferred section");
        assert_eq!(
            lines[inferred + 1],
            "  family: sd1 (inferred: the UNet's `encoder_hidden_states` is 768 wide)"
        );
        assert!(lines[inferred + 2] == "files:", "{lines:?}");
        assert_eq!(show_json(&reply)["inferred"][0], reply.inferred[0]);
        assert!(lines.contains(&"family      sd1".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"  in   sample float32 [?, 4, ?, ?]".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"     2.0 KiB  unet/model.onnx".to_string()),
            "{lines:?}"
        );
        assert_eq!(
            show_json(&reply)["parts"][0]["inputs"][0]["shape"],
            json!([-1, 4, -1, -1])
        );
        assert_eq!(
            installed_line(reply.info.as_ref().unwrap()),
            "installed tiny (sd1, -, float32, 2.0 KiB)"
        );
    }
}
