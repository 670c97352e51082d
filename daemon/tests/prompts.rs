//! Prompt weighting and long prompts against the Python reference implementation
//! (`tools/prompt_reference.py` → `tests/fixtures/prompts/`): parsed segments, chunk ids and
//! weights, error positions, and the cond/uncond embeddings the sd1-tiny text encoder gives.

mod common;

use easeld::generation::text::{self, Piece, prompt};
use serde_json::Value;

fn npy(path: &str) -> (Vec<usize>, Vec<f32>) {
    let array = easel_client::npy::read(&common::fixtures().join(path)).unwrap();
    (array.shape, array.data)
}

fn segments(pieces: &[Piece]) -> Vec<(String, f64)> {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text { text, weight } => (text.clone(), *weight),
            Piece::Break => ("BREAK".to_string(), -1.0),
        })
        .collect()
}

fn expected_segments(value: &Value) -> Vec<(String, f64)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_f64().unwrap()))
        .collect()
}

fn same_segments(got: &[(String, f64)], want: &[(String, f64)]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() <= 1e-12 * b.1.abs().max(1.0))
}

fn assert_close(name: &str, what: &str, got: &easeld::model::onnx::HostTensor<f32>, path: &str) {
    let (shape, want) = npy(path);
    assert_eq!(got.shape, shape, "{name}: {what} shape");
    let worst = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{name}: {what} differs by {worst}");
}

#[test]
fn weighting_and_chunks_match_the_reference() {
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(common::fixtures().join("prompts/cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    let mut model = common::load_fixture_model("models/sd1-tiny");
    let (mut errors, mut encoded) = (0, 0);
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        let prompt = case["prompt"].as_str().unwrap();
        if let Some(error) = case.get("error").and_then(Value::as_str) {
            let message = prompt::parse(prompt).expect_err(name).to_string();
            assert!(message.contains(error), "{name}: `{error}` not in `{message}`");
            errors += 1;
            continue;
        }
        let pieces = prompt::parse(prompt).unwrap();
        let got = segments(&pieces);
        assert!(
            same_segments(&got, &expected_segments(&case["segments"])),
            "{name}: segments {got:?}"
        );
        let tokenizer = &model.folder.tokenizer;
        let chunks = text::tokenize(tokenizer, &pieces).unwrap();
        let want_chunks = case["chunks"].as_array().unwrap();
        // The reference lists cond's chunks after evening out with the negative prompt: any
        // beyond ours must be empty-prompt chunks.
        assert!(
            chunks.len() <= want_chunks.len(),
            "{name}: {} chunks, reference {}",
            chunks.len(),
            want_chunks.len()
        );
        let empty = tokenizer.wrap_chunk(&[]);
        for extra in &want_chunks[chunks.len()..] {
            let ids: Vec<i64> = extra["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(ids, empty, "{name}: padding chunk");
        }
        for ((ids, weights), want) in chunks.iter().zip(want_chunks) {
            let wrapped = tokenizer.wrap_chunk(ids);
            let want_ids: Vec<i64> = want["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(wrapped, want_ids, "{name}: chunk ids");
            let want_weights: Vec<f64> = want["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (i, w) in weights.iter().enumerate() {
                assert!(
                    (w - want_weights[i + 1]).abs() <= 1e-12,
                    "{name}: weight {i}: {w} vs {}",
                    want_weights[i + 1]
                );
            }
        }
        let negative = case["negative_prompt"].as_str().unwrap();
        let (cond, uncond) = common::encode_guided(&mut model, prompt, negative);
        assert_close(name, "cond", &cond, case["cond"].as_str().unwrap());
        assert_close(name, "uncond", &uncond, case["uncond"].as_str().unwrap());
        encoded += 1;
    }
    assert!(errors >= 6 && encoded >= 14, "{errors} error cases, {encoded} encoded");
}

/// A chunk encoded again comes from the model's embedding cache, keyed by its ids, weights and
/// clip skip: what the cache holds is what a fresh encoding gives, and the cache (not the text
/// encoder) is what answers a repeat.
#[test]
fn a_chunk_encoded_again_comes_from_the_cache() {
    use easeld::model::embedding_cache::ChunkKey;

    let mut model = common::load_fixture_model("models/sd1-tiny");
    let first = common::encode(&mut model, "a red circle", 1).unwrap();
    assert_eq!(model.text_cache.len(), 1);
    let again = common::encode(&mut model, "a red circle", 1).unwrap();
    assert_eq!(first, again);
    assert_eq!(model.text_cache.len(), 1, "a repeat adds nothing");
    // A weight or another prompt is another chunk.
    common::encode(&mut model, "a (red:1.2) circle", 1).unwrap();
    assert_eq!(model.text_cache.len(), 2);
    let fresh = common::encode(&mut common::load_fixture_model("models/sd1-tiny"), "a red circle", 1).unwrap();
    assert_eq!(first, fresh, "the cached embedding is a fresh one");

    // Plant a marker under the chunk's key: the next encoding returns it.
    let pieces = text::prompt::parse("a red circle").unwrap();
    let chunks = text::tokenize(&model.folder.tokenizer, &pieces).unwrap();
    let ids = model.folder.tokenizer.wrap_chunk(&chunks[0].0);
    let weights = vec![1.0; ids.len()];
    let mut marker = first[0].clone();
    marker.data.iter_mut().for_each(|v| *v = 42.0);
    let planted = easeld::model::embedding_cache::ChunkEmbedding {
        hidden: marker.clone(),
        pooled: None,
    };
    model.text_cache.insert(ChunkKey::new(&ids, &weights, 1), planted);
    assert_eq!(common::encode(&mut model, "a red circle", 1).unwrap()[0], marker);
}
