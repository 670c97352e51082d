//! The small request/reply commands: `status`, `cancel`, `tokenize`, `models list`.
//!
//! `status` and `cancel` never start a daemon (a fresh one has nothing to report or cancel);
//! `tokenize` and `models list` start one like `generate` does.

use anyhow::Context;
use clap::Args;
use easel_client::{ClientError, pb, resolve_model};
use serde_json::json;

use super::Global;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The prompt to tokenize
    pub prompt: String,

    /// An installed model's name, or a model folder [default: the daemon's default model]
    #[arg(long, value_name = "NAME|DIR")]
    pub model: Option<String>,

    /// Print {"ids":[…],"count":N,"tokens":[…],"truncated":bool}
    #[arg(long)]
    pub json: bool,
}

/// Connects without starting a daemon; "not running" gets a message fit for `command`.
pub(super) async fn connect_existing(
    global: &Global,
    what: &str,
) -> anyhow::Result<easel_client::EaselClient<easel_client::Channel>> {
    match easel_client::connect(&global.socket).await {
        Ok(client) => Ok(client),
        Err(ClientError::NoDaemon { socket, .. }) => {
            anyhow::bail!(
                "easeld is not running on {}{what}; start it with `easel daemon start`",
                socket.display()
            )
        }
        Err(error) => Err(error.into()),
    }
}

pub async fn status(global: &Global, json: bool) -> anyhow::Result<()> {
    let mut client = connect_existing(global, "").await?;
    let status = client.get_status(pb::StatusRequest {}).await?.into_inner();
    if json {
        outln!("{}", status_json(&status));
        return Ok(());
    }
    for line in status_lines(&status) {
        outln!("{line}");
    }
    Ok(())
}

fn status_json(status: &pb::StatusReply) -> serde_json::Value {
    json!({
        "version": status.version,
        "pid": status.pid,
        "socket": status.socket,
        "device": status.device,
        "device_note": status.device_note,
        "onnxruntime_library": status.onnxruntime_library,
        "queued_jobs": status.queued_jobs,
        "running_jobs": status.running_jobs,
        "loaded_models": status.loaded_models,
        "memory_used_bytes": status.memory_used_bytes,
        "memory_budget_bytes": status.memory_budget_bytes,
        "working_memory_bytes": status.working_memory_bytes,
        "vram_used_bytes": status.vram_used_bytes,
        "vram_budget_bytes": status.vram_budget_bytes,
        "default_model": status.default_model,
    })
}

fn status_lines(status: &pb::StatusReply) -> Vec<String> {
    let models = if status.loaded_models.is_empty() {
        "none loaded".to_string()
    } else {
        status.loaded_models.join(", ")
    };
    let mut lines = vec![
        format!("easeld {} (pid {})", status.version, status.pid),
        format!("socket       {}", status.socket),
        if status.device_note.is_empty() {
            format!("device       {}", status.device)
        } else {
            format!("device       {} ({})", status.device, status.device_note)
        },
        format!("onnxruntime  {}", status.onnxruntime_library),
        format!(
            "jobs         {} running, {} queued",
            status.running_jobs, status.queued_jobs
        ),
        format!("models       {models}; the default is {}", status.default_model),
        format!(
            "memory       {} of a {} budget ({} of it working memory of running jobs)",
            human_bytes(status.memory_used_bytes),
            human_bytes(status.memory_budget_bytes),
            human_bytes(status.working_memory_bytes)
        ),
    ];
    if status.vram_budget_bytes > 0 {
        lines.push(format!(
            "vram         {} of a {} budget on {}",
            human_bytes(status.vram_used_bytes),
            human_bytes(status.vram_budget_bytes),
            status.device
        ));
    }
    lines
}

pub async fn cancel(global: &Global, job: &str) -> anyhow::Result<()> {
    let mut client = connect_existing(global, ", so there is no job to cancel").await?;
    client
        .cancel(pb::CancelRequest {
            job_id: job.to_string(),
        })
        .await?;
    outln!("cancelled job {job}");
    Ok(())
}

pub async fn tokenize(global: &Global, args: TokenizeArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .as_deref()
        .map(resolve_model)
        .transpose()
        .context("invalid --model")?;
    let mut client = super::client(global).await?;
    let reply = client
        .tokenize(pb::TokenizeRequest {
            model: model.unwrap_or_default(),
            prompt: args.prompt,
        })
        .await?
        .into_inner();
    if args.json {
        outln!("{}", tokenize_json(&reply));
    } else {
        for line in tokenize_table(&reply) {
            outln!("{line}");
        }
    }
    Ok(())
}

fn tokenize_json(reply: &pb::TokenizeReply) -> serde_json::Value {
    let chunks: Vec<_> = reply
        .chunks
        .iter()
        .map(|c| json!({"ids": c.ids, "tokens": c.tokens, "weights": c.weights}))
        .collect();
    json!({"ids": reply.ids, "count": reply.ids.len(), "tokens": reply.tokens, "truncated": reply.truncated,
           "chunks": chunks})
}

fn tokenize_table(reply: &pb::TokenizeReply) -> Vec<String> {
    let mut lines = vec![format!("{:>5}  {:>7}  token", "#", "id")];
    for (i, id) in reply.ids.iter().enumerate() {
        let token = reply.tokens.get(i).map(String::as_str).unwrap_or("");
        lines.push(format!("{i:>5}  {id:>7}  {token}"));
    }
    let mut summary = format!(
        "{} token{}",
        reply.ids.len(),
        if reply.ids.len() == 1 { "" } else { "s" }
    );
    let weighted = reply.chunks.len() > 1 || reply.chunks.iter().any(|c| c.weights.iter().any(|&w| w != 1.0));
    if reply.truncated && !weighted {
        summary.push_str(" (the prompt was truncated to the text encoder's length; the rest is ignored)");
    }
    lines.push(summary);
    if weighted {
        // What easel actually encodes: chunks of up to 75 tokens, each token with its weight.
        for (k, chunk) in reply.chunks.iter().enumerate() {
            let tokens: Vec<String> = chunk
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let token = chunk.tokens.get(i).cloned().unwrap_or_else(|| id.to_string());
                    match chunk.weights.get(i) {
                        Some(&w) if w != 1.0 => format!("{token}×{w:.3}"),
                        _ => token,
                    }
                })
                .collect();
            lines.push(format!(
                "chunk {} ({} tokens): {}",
                k + 1,
                chunk.ids.len(),
                tokens.join(" ")
            ));
        }
    }
    lines
}

pub async fn models_list(global: &Global, json: bool) -> anyhow::Result<()> {
    let mut client = super::client(global).await?;
    let reply = client.list_models(pb::ListModelsRequest {}).await?.into_inner();
    if json {
        outln!("{}", models_json(&reply));
        return Ok(());
    }
    if reply.models.is_empty() {
        outln!(
            "no models installed (looked in {}); put a model folder there, or run one directly with `easel generate --model DIR`",
            easel_proto::paths::easel_home().join("models").display()
        );
        return Ok(());
    }
    for line in models_table(&reply) {
        outln!("{line}");
    }
    Ok(())
}

fn models_json(reply: &pb::ListModelsReply) -> serde_json::Value {
    let models: Vec<_> = reply
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "path": m.path,
                "default_sampler": m.default_sampler,
                "prediction_type": m.prediction_type,
                "loaded": m.loaded,
                "family": m.family,
                "dtype": m.dtype,
                "size_bytes": m.size_bytes,
                "source": m.source,
            })
        })
        .collect();
    json!({ "models": models })
}

fn models_table(reply: &pb::ListModelsReply) -> Vec<String> {
    let rows = reply
        .models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                dash(&m.family),
                dash(&m.default_sampler),
                dash(&m.prediction_type),
                if m.size_bytes > 0 {
                    human_bytes(m.size_bytes)
                } else {
                    "-".to_string()
                },
                if m.loaded { "yes" } else { "no" }.to_string(),
                m.path.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "FAMILY", "SAMPLER", "PREDICTION", "SIZE", "LOADED", "PATH"],
        rows,
    )
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| {
                    if i + 1 == row.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            cells.join("  ")
        })
        .collect()
}

pub(super) use easel_proto::units::human_bytes;

pub(super) fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_json_shape() {
        let reply = pb::TokenizeReply {
            ids: vec![49406, 320, 49407],
            tokens: vec!["<|startoftext|>".into(), "a</w>".into(), "<|endoftext|>".into()],
            truncated: false,
            chunks: vec![pb::TokenChunk {
                ids: vec![320],
                tokens: vec!["a</w>".into()],
                weights: vec![1.0],
            }],
        };
        assert_eq!(
            tokenize_json(&reply),
            json!({"ids": [49406, 320, 49407], "count": 3,
                   "tokens": ["<|startoftext|>", "a</w>", "<|endoftext|>"], "truncated": false,
                   "chunks": [{"ids": [320], "tokens": ["a</w>"], "weights": [1.0]}]})
        );
        let table = tokenize_table(&reply);
        assert_eq!(table.len(), 5);
        assert_eq!(table[2], "    1      320  a</w>");
        assert_eq!(table[4], "3 tokens");
    }

    #[test]
    fn tokenize_table_survives_missing_tokens() {
        let reply = pb::TokenizeReply {
            ids: vec![1, 2],
            tokens: vec![],
            truncated: true,
            chunks: vec![],
        };
        let table = tokenize_table(&reply);
        assert!(table[3].starts_with("2 tokens (the prompt was truncated"));
    }

    #[test]
    fn tokenize_table_shows_weighted_chunks() {
        let chunk = |ids: Vec<i64>, w: f64| pb::TokenChunk {
            tokens: vec![],
            weights: vec![w; ids.len()],
            ids,
        };
        let reply = pb::TokenizeReply {
            ids: vec![1, 5, 2],
            tokens: vec![],
            truncated: false,
            chunks: vec![chunk(vec![5], 1.1), chunk(vec![6, 7], 1.0)],
        };
        let table = tokenize_table(&reply);
        assert_eq!(table[table.len() - 2], "chunk 1 (1 tokens): 5×1.100");
        assert_eq!(table[table.len() - 1], "chunk 2 (2 tokens): 6 7");
    }

    #[test]
    fn models_table_aligns() {
        let reply = pb::ListModelsReply {
            models: vec![
                pb::ModelInfo {
                    name: "tiny".into(),
                    path: "/m/tiny".into(),
                    default_sampler: "pndm".into(),
                    prediction_type: "epsilon".into(),
                    loaded: true,
                    family: "sd1".into(),
                    size_bytes: 3 << 29,
                    ..Default::default()
                },
                pb::ModelInfo {
                    name: "a-longer-name".into(),
                    path: "/m/x".into(),
                    ..Default::default()
                },
            ],
        };
        let table = models_table(&reply);
        assert_eq!(
            table[0],
            "NAME           FAMILY  SAMPLER  PREDICTION  SIZE     LOADED  PATH"
        );
        assert_eq!(
            table[1],
            "tiny           sd1     pndm     epsilon     1.5 GiB  yes     /m/tiny"
        );
        assert_eq!(
            table[2],
            "a-longer-name  -       -        -           -        no      /m/x"
        );
        assert_eq!(models_json(&reply)["models"][0]["loaded"], true);
    }

    #[test]
    fn status_shapes() {
        let status = pb::StatusReply {
            version: "0.1.0".into(),
            device: "cpu".into(),
            queued_jobs: 1,
            running_jobs: 0,
            loaded_models: vec![],
            onnxruntime_library: "/lib/libonnxruntime.so".into(),
            pid: 42,
            socket: "/run/easel.sock".into(),
            memory_used_bytes: 0,
            memory_budget_bytes: 8 << 30,
            working_memory_bytes: 0,
            default_model: "tiny-shapes".into(),
            device_note: String::new(),
            ..Default::default()
        };
        let value = status_json(&status);
        assert_eq!(value["pid"], 42);
        assert_eq!(value["loaded_models"], json!([]));
        let lines = status_lines(&status);
        assert_eq!(lines[0], "easeld 0.1.0 (pid 42)");
        assert_eq!(lines[5], "models       none loaded; the default is tiny-shapes");
        assert_eq!(
            lines[6],
            "memory       0 B of a 8.0 GiB budget (0 B of it working memory of running jobs)"
        );
        assert_eq!(lines[2], "device       cpu");
        let fell_back = pb::StatusReply {
            device_note: "auto: no usable GPU (libcuda.so.1 was not found)".into(),
            ..status
        };
        assert_eq!(
            status_lines(&fell_back)[2],
            "device       cpu (auto: no usable GPU (libcuda.so.1 was not found))"
        );
        assert_eq!(status_json(&fell_back)["device_note"], fell_back.device_note);
        assert_eq!(status_lines(&fell_back).len(), 7, "no VRAM line on the CPU");
        let on_gpu = pb::StatusReply {
            device: "cuda:0".into(),
            vram_used_bytes: 3 << 30,
            vram_budget_bytes: 72 << 30,
            ..fell_back
        };
        assert_eq!(
            status_lines(&on_gpu)[7],
            "vram         3.0 GiB of a 72.0 GiB budget on cuda:0"
        );
        assert_eq!(status_json(&on_gpu)["vram_budget_bytes"], 72u64 << 30);
    }
}
