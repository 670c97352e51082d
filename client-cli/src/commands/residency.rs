//! What is loaded and what happens: `easel ps`, `easel load`, `easel unload`, `easel events`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use easel_client::pb;
use futures::StreamExt;
use serde_json::json;

use super::Global;
use super::info::{human_bytes, table};

pub async fn ps(global: &Global, json: bool) -> anyhow::Result<()> {
    let mut client = super::client(global).await?;
    let reply = client.list_running(pb::ListRunningRequest {}).await?.into_inner();
    if json {
        outln!("{}", ps_json(&reply));
        return Ok(());
    }
    for line in ps_table(&reply, SystemTime::now()) {
        outln!("{line}");
    }
    Ok(())
}

fn ps_json(reply: &pb::ListRunningReply) -> serde_json::Value {
    let models: Vec<_> = reply
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "path": m.path,
                "memory_bytes": m.memory_bytes,
                "working_memory_bytes": m.working_memory_bytes,
                "vram_bytes": m.vram_bytes,
                "working_vram_bytes": m.working_vram_bytes,
                "device": m.device,
                "in_use": m.in_use,
                "expires_unix_ms": (m.expires_unix_ms != 0).then_some(m.expires_unix_ms),
            })
        })
        .collect();
    json!({
        "models": models,
        "budget_bytes": reply.budget_bytes,
        "used_bytes": reply.used_bytes,
        "vram_budget_bytes": reply.vram_budget_bytes,
        "vram_used_bytes": reply.vram_used_bytes,
    })
}

/// The table; a daemon on a GPU (a VRAM budget) adds the VRAM column and line, and its jobs'
/// working memory is VRAM.
fn ps_table(reply: &pb::ListRunningReply, now: SystemTime) -> Vec<String> {
    let gpu = reply.vram_budget_bytes > 0;
    let rows = reply
        .models
        .iter()
        .map(|m| {
            let working = m.working_memory_bytes + m.working_vram_bytes;
            let mut row = vec![m.name.clone(), human_bytes(m.memory_bytes)];
            if gpu {
                row.push(human_bytes(m.vram_bytes));
            }
            row.extend([
                if working > 0 { human_bytes(working) } else { "-".into() },
                m.device.clone(),
                until(m, now),
            ]);
            row
        })
        .collect();
    let headers: &[&str] = if gpu {
        &["NAME", "MEMORY", "VRAM", "WORKING", "DEVICE", "UNTIL"]
    } else {
        &["NAME", "MEMORY", "WORKING", "DEVICE", "UNTIL"]
    };
    let mut lines = table(headers, rows);
    lines.push(format!(
        "{} of the {} memory budget in use",
        human_bytes(reply.used_bytes),
        human_bytes(reply.budget_bytes)
    ));
    if gpu {
        lines.push(format!(
            "{} of the {} VRAM budget in use",
            human_bytes(reply.vram_used_bytes),
            human_bytes(reply.vram_budget_bytes)
        ));
    }
    lines
}

/// `in use`, `forever`, `4 minutes from now`, `12 seconds from now`.
fn until(model: &pb::RunningModel, now: SystemTime) -> String {
    if model.in_use > 0 {
        return format!(
            "in use ({} job{})",
            model.in_use,
            if model.in_use == 1 { "" } else { "s" }
        );
    }
    if model.expires_unix_ms == 0 {
        return "forever".to_string();
    }
    let at = UNIX_EPOCH + Duration::from_millis(model.expires_unix_ms.max(0) as u64);
    let left = at.duration_since(now).unwrap_or_default().as_secs();
    match left {
        0 => "now".to_string(),
        s if s < 120 => format!("{s} seconds from now"),
        s if s < 7200 => format!("{} minutes from now", s / 60),
        s => format!("{} hours from now", s / 3600),
    }
}

pub async fn load(global: &Global, model: &str, keep_alive: Option<String>) -> anyhow::Result<()> {
    let mut client = super::client(global).await?;
    let model = easel_client::resolve_model(model)?;
    let reply = client
        .load_model(pb::LoadModelRequest {
            model,
            keep_alive: keep_alive.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if let Some(m) = reply.model {
        outln!(
            "loaded {} ({}), {}",
            m.name,
            human_bytes(m.memory_bytes),
            until(&m, SystemTime::now())
        );
    }
    Ok(())
}

pub async fn unload(global: &Global, model: &str) -> anyhow::Result<()> {
    let mut client = super::info::connect_existing(global, "").await?;
    let model = easel_client::resolve_model(model)?;
    let reply = client
        .unload_model(pb::UnloadModelRequest { model: model.clone() })
        .await?
        .into_inner();
    if reply.unloaded {
        outln!("unloaded {model}");
    } else {
        outln!("{model} was not loaded");
    }
    Ok(())
}

/// Prints the daemon's events until interrupted: one line each, or one JSON object each.
pub async fn events(global: &Global, json: bool) -> anyhow::Result<()> {
    let mut client = super::client(global).await?;
    let mut stream = client.watch_events(pb::WatchRequest {}).await?.into_inner();
    while let Some(event) = stream.next().await {
        let event = event?;
        if json {
            outln!("{}", event_json(&event));
        } else {
            outln!("{}", event_line(&event));
        }
    }
    Ok(())
}

pub fn event_json(event: &pb::DaemonEvent) -> serde_json::Value {
    use pb::daemon_event::Event;
    let mut value = match &event.event {
        Some(Event::Job(j)) => json!({
            "kind": "job", "job_id": j.job_id, "model": j.model, "state": j.state,
            "position": j.position, "step": j.step, "total": j.total, "message": j.message,
        }),
        Some(Event::Model(m)) => json!({
            "kind": "model", "model": m.model, "state": m.state, "memory_bytes": m.memory_bytes,
            "vram_bytes": m.vram_bytes, "reason": m.reason,
        }),
        Some(Event::Import(i)) => json!({
            "kind": "import", "name": i.name, "state": i.state, "bytes_done": i.bytes_done,
            "bytes_total": i.bytes_total, "message": i.message,
        }),
        None => json!({ "kind": "unknown" }),
    };
    value["unix_ms"] = json!(event.unix_ms);
    value
}

pub fn event_line(event: &pb::DaemonEvent) -> String {
    use pb::daemon_event::Event;
    match &event.event {
        Some(Event::Job(j)) => match j.state.as_str() {
            "queued" => format!("job {} queued for {} (position {})", j.job_id, j.model, j.position),
            "progress" => format!("job {} step {}/{}", j.job_id, j.step, j.total),
            "failed" => format!("job {} failed: {}", j.job_id, j.message),
            state => format!("job {} {state} ({})", j.job_id, j.model),
        },
        Some(Event::Model(m)) => match m.state.as_str() {
            "loaded" if m.vram_bytes > 0 => format!(
                "model {} loaded ({} VRAM, {} RAM)",
                m.model,
                human_bytes(m.vram_bytes),
                human_bytes(m.memory_bytes)
            ),
            "loaded" => format!("model {} loaded ({})", m.model, human_bytes(m.memory_bytes)),
            "unloaded" | "evicted" if !m.reason.is_empty() => format!("model {} {} ({})", m.model, m.state, m.reason),
            state => format!("model {} {state}", m.model),
        },
        Some(Event::Import(i)) if i.state == "failed" => format!("import {} failed: {}", i.name, i.message),
        Some(Event::Import(i)) if i.bytes_total > 0 => format!(
            "import {} {} {}/{}",
            i.name,
            i.state,
            human_bytes(i.bytes_done),
            human_bytes(i.bytes_total)
        ),
        Some(Event::Import(i)) => format!("import {} {}", i.name, i.state),
        None => "unknown event".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, in_use: u32, expires_unix_ms: i64) -> pb::RunningModel {
        pb::RunningModel {
            name: name.into(),
            memory_bytes: 3 << 29,
            device: "cpu".into(),
            expires_unix_ms,
            in_use,
            path: format!("/m/{name}"),
            working_memory_bytes: if in_use > 0 { 256 << 20 } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn ps_says_how_much_and_until_when() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let reply = pb::ListRunningReply {
            models: vec![
                model("busy", 1, 0),
                model("kept", 0, 0),
                model("idle", 0, 1_000_000_000 + 240_000),
            ],
            budget_bytes: 8 << 30,
            used_bytes: 9 << 29,
            ..Default::default()
        };
        let lines = ps_table(&reply, now);
        assert_eq!(lines[0], "NAME  MEMORY   WORKING    DEVICE  UNTIL");
        assert_eq!(lines[1], "busy  1.5 GiB  256.0 MiB  cpu     in use (1 job)");
        assert_eq!(lines[2], "kept  1.5 GiB  -          cpu     forever");
        assert_eq!(lines[3], "idle  1.5 GiB  -          cpu     4 minutes from now");
        assert_eq!(lines[4], "4.5 GiB of the 8.0 GiB memory budget in use");
        assert_eq!(ps_json(&reply)["models"][1]["expires_unix_ms"], serde_json::Value::Null);
    }

    #[test]
    fn on_a_gpu_ps_shows_vram_per_model_and_its_budget() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let on_gpu = |name: &str, in_use: u32| pb::RunningModel {
            device: "cuda:0".into(),
            memory_bytes: 1 << 29,
            vram_bytes: 2 << 30,
            working_memory_bytes: 0,
            working_vram_bytes: if in_use > 0 { 1 << 30 } else { 0 },
            ..model(name, in_use, 0)
        };
        let reply = pb::ListRunningReply {
            models: vec![on_gpu("sdxl", 1), on_gpu("sd15", 0)],
            budget_bytes: 8 << 30,
            used_bytes: 1 << 30,
            vram_budget_bytes: 72 << 30,
            vram_used_bytes: 5 << 30,
        };
        let lines = ps_table(&reply, now);
        assert_eq!(lines[0], "NAME  MEMORY     VRAM     WORKING  DEVICE  UNTIL");
        assert_eq!(lines[1], "sdxl  512.0 MiB  2.0 GiB  1.0 GiB  cuda:0  in use (1 job)");
        assert_eq!(lines[2], "sd15  512.0 MiB  2.0 GiB  -        cuda:0  forever");
        assert_eq!(lines[4], "5.0 GiB of the 72.0 GiB VRAM budget in use");
        let json = ps_json(&reply);
        assert_eq!(json["vram_budget_bytes"], 72u64 << 30);
        assert_eq!(json["models"][0]["vram_bytes"], 2u64 << 30);
        assert_eq!(json["models"][0]["working_vram_bytes"], 1u64 << 30);
    }

    #[test]
    fn events_read_as_sentences_and_json() {
        let event = pb::DaemonEvent {
            unix_ms: 5,
            event: Some(pb::daemon_event::Event::Model(pb::ModelEvent {
                model: "tiny".into(),
                state: "evicted".into(),
                memory_bytes: 1024,
                reason: "evicted".into(),
                vram_bytes: 0,
            })),
        };
        assert_eq!(event_line(&event), "model tiny evicted (evicted)");
        assert_eq!(event_json(&event)["kind"], "model");
        assert_eq!(event_json(&event)["unix_ms"], 5);
    }
}
