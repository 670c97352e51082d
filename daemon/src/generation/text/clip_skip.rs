//! Clip skip: conditioning on an earlier layer of the CLIP text encoder.
//!
//! AUTOMATIC1111's "Clip skip N" takes the hidden state N layers from the end (1 = the last
//! layer, the normal output) and passes it through the encoder's final layer norm; diffusers'
//! `clip_skip` is the same with N − 1. An ONNX text encoder that exports its hidden states
//! (`hidden_states.0` … `hidden_states.L`, as SDXL exports are made) gives the layers, but the
//! final layer norm is inside the graph, applied only to the last one.
//!
//! The norm's per-channel scale γ and shift β are recovered from the graph's own outputs:
//! `last_hidden_state = γ · norm(hidden_states.L) + β` holds at every token position, so for
//! each channel γ and β are the least-squares line through the 77 (normalized, output) pairs —
//! exact up to rounding, whatever the graph's opset or op fusion. Then the chosen layer gets the
//! same norm.

/// Which `hidden_states.K` output A1111's clip skip `n` (≥ 2) reads, out of `layers + 1`
/// hidden states (the embeddings are `hidden_states.0`). `None` when the encoder is too shallow.
pub fn hidden_state_index(n: usize, layers: usize) -> Option<usize> {
    (n >= 1 && n <= layers).then(|| layers + 1 - n)
}

/// `hidden` (`[1, T, D]` flat, the chosen layer) through the final layer norm that maps
/// `last_pre_norm` (the last hidden state) to `last` (the `last_hidden_state` output).
pub fn apply_final_norm(hidden: &[f32], last_pre_norm: &[f32], last: &[f32], dim: usize, eps: f64) -> Vec<f32> {
    assert!(dim > 0 && hidden.len() == last.len() && last_pre_norm.len() == last.len());
    let tokens = last.len() / dim;
    let normalized_last = normalize(last_pre_norm, dim, eps);
    let mut scale = vec![0.0f64; dim];
    let mut shift = vec![0.0f64; dim];
    for d in 0..dim {
        let xs = (0..tokens).map(|t| normalized_last[t * dim + d]);
        let ys = (0..tokens).map(|t| f64::from(last[t * dim + d]));
        let (mean_x, mean_y) = (
            xs.clone().sum::<f64>() / tokens as f64,
            ys.clone().sum::<f64>() / tokens as f64,
        );
        let (mut covariance, mut variance) = (0.0, 0.0);
        for (x, y) in xs.zip(ys) {
            covariance += (x - mean_x) * (y - mean_y);
            variance += (x - mean_x) * (x - mean_x);
        }
        scale[d] = if variance > 0.0 { covariance / variance } else { 0.0 };
        shift[d] = mean_y - scale[d] * mean_x;
    }
    normalize(hidden, dim, eps)
        .iter()
        .enumerate()
        .map(|(i, &x)| (scale[i % dim] * x + shift[i % dim]) as f32)
        .collect()
}

/// Layer norm without scale and shift, per token: `(x − mean) / √(var + eps)`.
fn normalize(values: &[f32], dim: usize, eps: f64) -> Vec<f64> {
    values
        .chunks(dim)
        .flat_map(|token| {
            let mean = token.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
            let var = token.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + eps).sqrt();
            token.iter().map(move |&v| (f64::from(v) - mean) * inv)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_norm(values: &[f32], dim: usize, scale: &[f64], shift: &[f64], eps: f64) -> Vec<f32> {
        normalize(values, dim, eps)
            .iter()
            .enumerate()
            .map(|(i, &x)| (scale[i % dim] * x + shift[i % dim]) as f32)
            .collect()
    }

    #[test]
    fn recovers_the_final_norm_from_the_last_layer() {
        let (tokens, dim, eps) = (77, 8, 1e-5);
        let wave = |seed: f32| -> Vec<f32> {
            (0..tokens * dim)
                .map(|i| (i as f32 * 0.37 + seed).sin() * 3.0 + (i % dim) as f32 * 0.1)
                .collect()
        };
        let (penultimate, last_pre) = (wave(1.0), wave(2.0));
        let scale: Vec<f64> = (0..dim).map(|d| 0.5 + d as f64 * 0.25).collect();
        let shift: Vec<f64> = (0..dim).map(|d| d as f64 * -0.1).collect();
        let last = layer_norm(&last_pre, dim, &scale, &shift, eps);
        let got = apply_final_norm(&penultimate, &last_pre, &last, dim, eps);
        let want = layer_norm(&penultimate, dim, &scale, &shift, eps);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "max error {worst}");
    }

    #[test]
    fn picks_the_layer_a1111_means() {
        // 12 layers: hidden_states.0 (embeddings) … hidden_states.12 (last, before the norm).
        assert_eq!(hidden_state_index(1, 12), Some(12));
        assert_eq!(hidden_state_index(2, 12), Some(11));
        assert_eq!(hidden_state_index(12, 12), Some(1));
        assert_eq!(hidden_state_index(13, 12), None);
        assert_eq!(hidden_state_index(0, 12), None);
    }
}
