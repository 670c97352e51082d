//! Text conditioning: from a prompt to the text encoder's embeddings the UNet attends to.
//!
//! - [`prompt`]: AUTOMATIC1111's weighting syntax, `BREAK`, and 75-token chunks.
//! - [`clip_skip`]: an earlier encoder layer through the final layer norm recovered from the
//!   graph's own outputs.
//!
//! [`tokenize`] runs while a request is prepared (so the `Tokenize` call shows exactly what
//! generation feeds); [`encode_chunks`] and [`encode_guided`] run the text encoder on the worker.

pub mod clip_skip;
pub mod prompt;

use crate::model::LoadedModel;
use crate::model::embedding_cache::ChunkKey;
use crate::model::onnx::{HostTensor, Input};
use crate::model::tokenizer::{ClipTokenizer, TokenizerError};

pub use prompt::{Chunk, Piece};

use super::GenerationError;

/// A parsed prompt's chunks of at most 75 tokens (the tokenizer's length without BOS/EOS),
/// each token with its weight.
pub fn tokenize(tokenizer: &ClipTokenizer, pieces: &[Piece]) -> Result<Vec<Chunk>, TokenizerError> {
    prompt::chunk(pieces, tokenizer.max_length() - 2, |text| tokenizer.token_ids(text))
}

/// A prompt longer than the limits allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptTooLong {
    #[error(
        "the {what} is {chars} characters, more than the limit of {max} (shorten it, or raise max_prompt_chars in the config)"
    )]
    Characters {
        what: &'static str,
        chars: usize,
        max: usize,
    },
    #[error(
        "the {what} fills {chunks} chunks of 75 tokens, more than the limit of {max} (shorten it, or raise max_prompt_chunks in the config)"
    )]
    Chunks {
        what: &'static str,
        chunks: usize,
        max: usize,
    },
}

/// Checks a prompt's length in characters before anything parses it. Counting stops at the
/// limit, so a huge prompt costs no more than a long one.
pub fn check_chars(what: &'static str, text: &str, max: usize) -> Result<(), PromptTooLong> {
    // A char is at most 4 bytes: a short text in bytes is short in characters too.
    if text.len() <= max || text.chars().take(max + 1).count() <= max {
        return Ok(());
    }
    Err(PromptTooLong::Characters {
        what,
        chars: text.chars().count(),
        max,
    })
}

/// Checks how many 75-token chunks a tokenized prompt fills.
pub fn check_chunks(what: &'static str, chunks: &[Chunk], max: usize) -> Result<(), PromptTooLong> {
    if chunks.len() <= max {
        Ok(())
    } else {
        Err(PromptTooLong::Chunks {
            what,
            chunks: chunks.len(),
            max,
        })
    }
}

/// A prompt's chunks → their weighted embeddings, each `[1, 77, D]`, from the layer `clip_skip`
/// names.
pub fn encode_chunks(
    model: &mut LoadedModel,
    chunks: &[Chunk],
    clip_skip: usize,
) -> Result<Vec<HostTensor<f32>>, GenerationError> {
    chunks
        .iter()
        .map(|(ids, weights)| encode_chunk(model, ids, weights, clip_skip))
        .collect()
}

/// Prompt and negative prompt chunks → (cond, uncond), each `[1, 77·k, D]` with the same k: the
/// one with fewer chunks is evened out with empty-prompt chunks, as AUTOMATIC1111 does.
pub fn encode_guided(
    model: &mut LoadedModel,
    prompt: &[Chunk],
    negative: &[Chunk],
    clip_skip: usize,
) -> Result<(HostTensor<f32>, HostTensor<f32>), GenerationError> {
    let (mut cond, mut uncond) = (
        encode_chunks(model, prompt, clip_skip)?,
        encode_chunks(model, negative, clip_skip)?,
    );
    while cond.len() != uncond.len() {
        let shorter = if cond.len() < uncond.len() {
            &mut cond
        } else {
            &mut uncond
        };
        shorter.push(encode_chunk(model, &[], &[], clip_skip)?);
    }
    Ok((concat_sequence(&cond), concat_sequence(&uncond)))
}

/// One chunk (ids without BOS/EOS, and their weights) → the text encoder's hidden state
/// `[1, 77, D]` (the last layer's, or the one `clip_skip` names), with the weights applied.
fn encode_chunk(
    model: &mut LoadedModel,
    body: &[i64],
    weights: &[f64],
    clip_skip: usize,
) -> Result<HostTensor<f32>, GenerationError> {
    let ids = model.folder.tokenizer.wrap_chunk(body);
    let mut token_weights = vec![1.0; ids.len()];
    token_weights[1..1 + weights.len()].copy_from_slice(weights);
    let key = ChunkKey::new(&ids, &token_weights, clip_skip);
    if let Some(embedding) = model.text_cache.get(&key) {
        return Ok(embedding);
    }
    let input = Input::Int(HostTensor::new(vec![1, ids.len()], ids));
    let spec = model.text_input_ids.clone();
    let outputs = model.text_encoder.run_releasing(vec![(&spec, input)])?;
    let mut embedding = select_layer(model, outputs, clip_skip)?;
    prompt::apply_weights(&mut embedding.data, &token_weights);
    model.text_cache.insert(key, embedding.clone());
    Ok(embedding)
}

/// The text encoder's `last_hidden_state`, or for clip skip N ≥ 2 the `hidden_states.K` output
/// N layers from the end, through the final layer norm (see [`clip_skip`]).
fn select_layer(
    model: &LoadedModel,
    mut outputs: Vec<HostTensor<f32>>,
    clip_skip: usize,
) -> Result<HostTensor<f32>, GenerationError> {
    let names: Vec<&str> = model.text_encoder.outputs.iter().map(|o| o.name.as_str()).collect();
    let last = names.iter().position(|&n| n == "last_hidden_state").unwrap_or(0);
    if clip_skip <= 1 {
        return Ok(outputs.swap_remove(last));
    }
    // `hidden_states.K` outputs, by K.
    let layers: Vec<(usize, usize)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((n.strip_prefix("hidden_states.")?.parse().ok()?, i)))
        .collect();
    let depth = layers.iter().map(|&(k, _)| k).max().unwrap_or(0);
    let output_of = |k: usize| layers.iter().find(|&&(layer, _)| layer == k).map(|&(_, i)| i);
    let skipped = clip_skip::hidden_state_index(clip_skip, depth).and_then(output_of);
    let (Some(chosen), Some(deepest)) = (skipped, output_of(depth)) else {
        let name = &model.folder.name;
        return Err(GenerationError::InvalidRequest(if layers.is_empty() {
            format!(
                "clip skip {clip_skip} needs a text encoder that exports its hidden states, and {name}'s does not; \
                 leave clip skip at 1 or re-export the model with hidden states"
            )
        } else {
            format!("clip skip {clip_skip} is deeper than {name}'s text encoder, which has {depth} layers")
        }));
    };
    let dim = *outputs[last].shape.last().unwrap_or(&1);
    let data = clip_skip::apply_final_norm(
        &outputs[chosen].data,
        &outputs[deepest].data,
        &outputs[last].data,
        dim,
        model.folder.text_layer_norm_eps,
    );
    Ok(HostTensor::new(outputs[last].shape.clone(), data))
}

/// Chunks `[1, 77, D]` → `[1, 77·k, D]`.
pub fn concat_sequence(chunks: &[HostTensor<f32>]) -> HostTensor<f32> {
    let mut shape = chunks[0].shape.clone();
    shape[1] = chunks.iter().map(|c| c.shape[1]).sum();
    HostTensor::new(shape, chunks.iter().flat_map(|c| c.data.iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_length_counts_characters_not_bytes() {
        assert_eq!(check_chars("prompt", "abc", 3), Ok(()));
        // Four 3-byte characters: 12 bytes, 4 characters.
        assert_eq!(check_chars("prompt", "日本語日", 4), Ok(()));
        let err = check_chars("negative prompt", "日本語日本", 4).unwrap_err();
        assert_eq!(
            err,
            PromptTooLong::Characters {
                what: "negative prompt",
                chars: 5,
                max: 4
            }
        );
        assert!(err.to_string().contains("max_prompt_chars"), "{err}");
        let chunks: Vec<Chunk> = vec![(vec![1], vec![1.0]); 3];
        assert_eq!(check_chunks("prompt", &chunks, 3), Ok(()));
        let err = check_chunks("prompt", &chunks, 2).unwrap_err();
        assert!(err.to_string().contains("3 chunks") && err.to_string().contains("max_prompt_chunks"));
    }
}
