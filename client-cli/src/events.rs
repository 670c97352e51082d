//! `easel generate --json`: one JSON object per line for each event of a job.
//!
//! Every object has `"event"` (`queued`, `started`, `progress`, `image`, `finished`) and
//! `"job_id"` (which the daemon sends with `Queued` and `Finished`; the client carries it to
//! the events in between):
//! ```text
//! {"event":"queued","job_id":"…","position":0}
//! {"event":"started","job_id":"…","load_ms":812}
//! {"event":"progress","job_id":"…","step":3,"total":20,"elapsed_ms":410,"image_index":0}
//! {"event":"image","job_id":"…","index":0,"seed":42,"width":512,"height":512,"path":"easel-42.png"}
//! {"event":"finished","job_id":"…","timings":{"queue_ms":0,"load_ms":812,…,"total_ms":9000}}
//! ```
//! A progress event gains `"preview"` (the file written) when `--previews` is on. Binary
//! payloads (PNG bytes, latents) are never printed.

use std::path::Path;

use easel_proto::v1 as pb;
use easel_proto::v1::generate_event::Event;
use serde_json::{Value, json};

/// The job id an event carries itself, if any.
pub fn job_id_of(event: &Event) -> Option<&str> {
    match event {
        Event::Queued(q) => Some(&q.job_id),
        Event::Started(s) => Some(&s.job_id),
        Event::Finished(f) => Some(&f.job_id),
        Event::Progress(_) | Event::Image(_) => None,
    }
}

/// The JSON line for `event`. `job_id` is the id carried from earlier events (an id in the
/// event itself wins); `path` is the file written for it (the image, or the preview).
pub fn event_json(event: &Event, job_id: &str, path: Option<&Path>) -> Value {
    let job_id = job_id_of(event).filter(|id| !id.is_empty()).unwrap_or(job_id);
    let path = path.map(|p| p.display().to_string());
    match event {
        Event::Queued(q) => json!({"event": "queued", "job_id": job_id, "position": q.position}),
        Event::Started(s) => json!({"event": "started", "job_id": job_id, "load_ms": s.load_ms}),
        Event::Progress(p) => {
            let mut value = json!({
                "event": "progress",
                "job_id": job_id,
                "step": p.step,
                "total": p.total,
                "elapsed_ms": p.elapsed_ms,
                "image_index": p.image_index,
            });
            if let (Some(path), Some(object)) = (path, value.as_object_mut()) {
                object.insert("preview".into(), Value::String(path));
            }
            value
        }
        Event::Image(i) => json!({
            "event": "image",
            "job_id": job_id,
            "index": i.index,
            "seed": i.seed,
            "width": i.width,
            "height": i.height,
            "path": path,
        }),
        Event::Finished(f) => json!({
            "event": "finished",
            "job_id": job_id,
            "timings": timings_json(f.timings.as_ref()),
        }),
    }
}

fn timings_json(timings: Option<&pb::Timings>) -> Value {
    let t = timings.cloned().unwrap_or_default();
    json!({
        "queue_ms": t.queue_ms,
        "load_ms": t.load_ms,
        "encode_ms": t.encode_ms,
        "denoise_ms": t.denoise_ms,
        "decode_ms": t.decode_ms,
        "total_ms": t.total_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_and_started_carry_their_own_id() {
        let queued = Event::Queued(pb::Queued {
            job_id: "j1".into(),
            position: 2,
        });
        assert_eq!(
            event_json(&queued, "", None),
            json!({"event": "queued", "job_id": "j1", "position": 2})
        );
        let started = Event::Started(pb::Started {
            job_id: "j1".into(),
            load_ms: 30,
        });
        assert_eq!(
            event_json(&started, "other", None),
            json!({"event": "started", "job_id": "j1", "load_ms": 30})
        );
        assert_eq!(job_id_of(&queued), Some("j1"));
    }

    #[test]
    fn progress_gets_the_carried_id_and_no_bytes() {
        let progress = Event::Progress(pb::Progress {
            step: 3,
            total: 20,
            elapsed_ms: 400,
            latent: Some(pb::Tensor {
                shape: vec![1],
                dtype: 1,
                data: vec![0; 4],
            }),
            preview_png: vec![1, 2, 3],
            image_index: 1,
        });
        assert_eq!(job_id_of(&progress), None);
        assert_eq!(
            event_json(&progress, "j1", None),
            json!({"event": "progress", "job_id": "j1", "step": 3, "total": 20, "elapsed_ms": 400, "image_index": 1})
        );
        let with_preview = event_json(&progress, "j1", Some(Path::new("p/image1-step-003.png")));
        assert_eq!(with_preview["preview"], "p/image1-step-003.png");
    }

    #[test]
    fn image_names_its_file() {
        let image = Event::Image(pb::Image {
            index: 0,
            png: vec![0x89, b'P'],
            seed: 42,
            width: 64,
            height: 32,
            parameters: "a fox\nSteps: 4".into(),
        });
        assert_eq!(
            event_json(&image, "j1", Some(Path::new("out/easel-42.png"))),
            json!({"event": "image", "job_id": "j1", "index": 0, "seed": 42, "width": 64, "height": 32,
                   "path": "out/easel-42.png"})
        );
    }

    #[test]
    fn finished_has_all_timings() {
        let finished = Event::Finished(pb::Finished {
            job_id: "j1".into(),
            timings: Some(pb::Timings {
                queue_ms: 1,
                load_ms: 2,
                encode_ms: 3,
                denoise_ms: 4,
                decode_ms: 5,
                total_ms: 15,
            }),
        });
        let value = event_json(&finished, "", None);
        assert_eq!(
            value,
            json!({"event": "finished", "job_id": "j1", "timings": {"queue_ms": 1, "load_ms": 2, "encode_ms": 3,
                   "denoise_ms": 4, "decode_ms": 5, "total_ms": 15}})
        );
        // A line is one compact object.
        assert!(!value.to_string().contains('\n'));
        let empty = event_json(
            &Event::Finished(pb::Finished {
                job_id: String::new(),
                timings: None,
            }),
            "j2",
            None,
        );
        assert_eq!(empty["job_id"], "j2");
        assert_eq!(empty["timings"]["total_ms"], 0);
    }
}
