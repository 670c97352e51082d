//! Text conditioning: from a prompt to the text encoder's embeddings the UNet attends to.
//!
//! - [`prompt`]: AUTOMATIC1111's weighting syntax, `BREAK`, and 75-token chunks.
//! - [`clip_skip`]: an earlier encoder layer through the final layer norm recovered from the
//!   graph's own outputs.
//!
//! [`tokenize`] runs while a request is prepared (so the `Tokenize` call shows exactly what
//! generation feeds); [`encode_chunks`] and [`encode_guided`] run the text encoder on the worker.
//!
//! SDXL has two text encoders. Each chunk goes through both, as AUTOMATIC1111 does: each
//! encoder's penultimate hidden state (diffusers' `hidden_states[-2]`, no final norm; clip skip
//! N reads one layer further back per step, diffusers' `clip_skip = N − 1`), weighted on its
//! own, then the two side by side per token; the pooled embedding the UNet also takes is the
//! second encoder's projection of the first chunk. A single chunk is exactly diffusers'
//! `StableDiffusionXLPipeline.encode_prompt`. The refiner has the second encoder alone.

pub mod clip_skip;
pub mod prompt;

use crate::model::LoadedModel;
use crate::model::embedding_cache::{ChunkEmbedding, ChunkKey};
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
) -> Result<Vec<ChunkEmbedding>, GenerationError> {
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
) -> Result<(ChunkEmbedding, ChunkEmbedding), GenerationError> {
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
/// `[1, 77, D]` (the last layer's, or the one `clip_skip` names), with the weights applied; for
/// SDXL, both encoders' and the pooled embedding.
fn encode_chunk(
    model: &mut LoadedModel,
    body: &[i64],
    weights: &[f64],
    clip_skip: usize,
) -> Result<ChunkEmbedding, GenerationError> {
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
    let embedding = if model.folder.is_refiner() {
        // The refiner's one encoder is SDXL's second: its penultimate state and its projection.
        let pooled = model.refiner_pooled.and_then(|i| outputs.get(i).cloned());
        let names: Vec<String> = model.text_encoder.outputs.iter().map(|o| o.name.clone()).collect();
        let mut hidden = xl_layer(&model.folder.name, "text_encoder_2", &names, outputs, clip_skip)?;
        prompt::apply_weights(&mut hidden.data, &token_weights);
        ChunkEmbedding { hidden, pooled }
    } else if model.folder.is_xl() {
        encode_chunk_xl(model, outputs, body, &token_weights, clip_skip)?
    } else {
        let mut hidden = select_layer(model, outputs, clip_skip)?;
        prompt::apply_weights(&mut hidden.data, &token_weights);
        ChunkEmbedding { hidden, pooled: None }
    };
    model.text_cache.insert(key, embedding.clone());
    Ok(embedding)
}

/// SDXL: the first encoder's `outputs` and a run of the second on the same chunk (padded with
/// its own pad token) → both penultimate (or clip-skipped) hidden states, each weighted, side by
/// side per token, and the second encoder's pooled projection.
fn encode_chunk_xl(
    model: &mut LoadedModel,
    outputs: Vec<HostTensor<f32>>,
    body: &[i64],
    token_weights: &[f64],
    clip_skip: usize,
) -> Result<ChunkEmbedding, GenerationError> {
    let names = |encoder: &crate::model::onnx::OnnxModel| -> Vec<String> {
        encoder.outputs.iter().map(|o| o.name.clone()).collect()
    };
    let mut first = xl_layer(
        &model.folder.name,
        "text_encoder",
        &names(&model.text_encoder),
        outputs,
        clip_skip,
    )?;
    prompt::apply_weights(&mut first.data, token_weights);

    let folder = model.folder.clone();
    let (Some(xl), Some(second_encoder)) = (folder.xl.as_ref(), model.text_encoder_2.as_mut()) else {
        // LoadedModel::load refuses an SDXL folder without its second encoder.
        return Err(GenerationError::Model(crate::model::ModelError::Incompatible {
            model: folder.name.clone(),
            message: "the second text encoder is not loaded".to_string(),
        }));
    };
    let ids = xl.tokenizer_2.wrap_chunk(body);
    let spec = second_encoder.input_ids.clone();
    let input = Input::Int(HostTensor::new(vec![1, ids.len()], ids));
    let outputs = second_encoder.model.run_releasing(vec![(&spec, input)])?;
    let pooled = outputs[second_encoder.pooled].clone();
    let second_names = names(&second_encoder.model);
    let mut second = xl_layer(&folder.name, "text_encoder_2", &second_names, outputs, clip_skip)?;
    prompt::apply_weights(&mut second.data, token_weights);
    Ok(ChunkEmbedding {
        hidden: side_by_side(&first, &second),
        pooled: Some(pooled),
    })
}

/// SDXL's layer of one encoder: `hidden_states` `clip_skip` + 1 from the end (the penultimate
/// for clip skip 1), as it is: SDXL's pipelines skip the final layer norm.
fn xl_layer(
    model: &str,
    part: &str,
    names: &[String],
    mut outputs: Vec<HostTensor<f32>>,
    clip_skip: usize,
) -> Result<HostTensor<f32>, GenerationError> {
    let layers = HiddenStates::of(names.iter().map(String::as_str));
    let depth = layers.depth();
    let chosen = clip_skip::hidden_state_index(clip_skip + 1, depth).and_then(|k| layers.output_of(k));
    match chosen {
        Some(index) if index < outputs.len() => Ok(outputs.swap_remove(index)),
        _ if layers.is_empty() => Err(GenerationError::Model(crate::model::ModelError::Incompatible {
            model: model.to_string(),
            message: format!(
                "{part} exports no hidden states, and SDXL conditions on the penultimate one; re-export the model \
                 with optimum, which exports them"
            ),
        })),
        _ => Err(GenerationError::InvalidRequest(format!(
            "clip skip {clip_skip} is deeper than {model}'s {part}, which has {depth} layers"
        ))),
    }
}

/// A text encoder's `hidden_states.K` outputs: (K, output index) for each.
struct HiddenStates(Vec<(usize, usize)>);

impl HiddenStates {
    fn of<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        Self(
            names
                .enumerate()
                .filter_map(|(i, n)| Some((n.strip_prefix("hidden_states.")?.parse().ok()?, i)))
                .collect(),
        )
    }

    /// The deepest K (the number of layers: `hidden_states.0` is the embeddings).
    fn depth(&self) -> usize {
        self.0.iter().map(|&(k, _)| k).max().unwrap_or(0)
    }

    /// The output index of `hidden_states.K`.
    fn output_of(&self, k: usize) -> Option<usize> {
        self.0.iter().find(|&&(layer, _)| layer == k).map(|&(_, i)| i)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `[1, T, A]` and `[1, T, B]` → `[1, T, A + B]`: each token's two vectors one after the other
/// (`torch.concat(…, dim=-1)`).
fn side_by_side(a: &HostTensor<f32>, b: &HostTensor<f32>) -> HostTensor<f32> {
    let (wa, wb) = (*a.shape.last().unwrap_or(&1), *b.shape.last().unwrap_or(&1));
    let mut data = Vec::with_capacity(a.data.len() + b.data.len());
    for (row_a, row_b) in a.data.chunks_exact(wa).zip(b.data.chunks_exact(wb)) {
        data.extend_from_slice(row_a);
        data.extend_from_slice(row_b);
    }
    let mut shape = a.shape.clone();
    *shape.last_mut().expect("a rank-3 hidden state") = wa + wb;
    HostTensor::new(shape, data)
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
    let layers = HiddenStates::of(names.iter().copied());
    let depth = layers.depth();
    let skipped = clip_skip::hidden_state_index(clip_skip, depth).and_then(|k| layers.output_of(k));
    let (Some(chosen), Some(deepest)) = (skipped, layers.output_of(depth)) else {
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

/// Chunks `[1, 77, D]` → `[1, 77·k, D]`; the pooled embedding is the first chunk's (as
/// AUTOMATIC1111 takes it for SDXL).
pub fn concat_sequence(chunks: &[ChunkEmbedding]) -> ChunkEmbedding {
    let mut shape = chunks[0].hidden.shape.clone();
    shape[1] = chunks.iter().map(|c| c.hidden.shape[1]).sum();
    ChunkEmbedding {
        hidden: HostTensor::new(
            shape,
            chunks.iter().flat_map(|c| c.hidden.data.iter().copied()).collect(),
        ),
        pooled: chunks[0].pooled.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_puts_each_tokens_two_vectors_together() {
        let a = HostTensor::new(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let b = HostTensor::new(vec![1, 2, 3], vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        let both = side_by_side(&a, &b);
        assert_eq!(both.shape, [1, 2, 5]);
        assert_eq!(both.data, [1.0, 2.0, 10.0, 20.0, 30.0, 3.0, 4.0, 40.0, 50.0, 60.0]);
    }

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
