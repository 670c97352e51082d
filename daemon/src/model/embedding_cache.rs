//! The text encoder's recent results, kept with the loaded model: a prompt chunk seen again
//! (the same negative prompt on every request, a prompt re-run with another seed or sampler)
//! costs nothing instead of a text encoder run, which is most of the time between a warm
//! request's arrival and its first UNet call.
//!
//! A chunk is keyed by everything that decides its embedding (token ids, per-token weights as
//! bits, clip skip), so a hit returns exactly what encoding it again would. Least recently used
//! entries go first; a model's cache holds [`EmbeddingCache::CAPACITY`] chunks (about 4 MB for
//! SD 1.5's 77 × 768 floats each, about 9 MB for SDXL's 77 × 2048).

use std::collections::VecDeque;

use super::onnx::HostTensor;

/// What decides a chunk's embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkKey {
    pub ids: Vec<i64>,
    /// Per-token weights, as `f64::to_bits` (exact equality, no float comparison).
    pub weights: Vec<u64>,
    pub clip_skip: usize,
}

impl ChunkKey {
    pub fn new(ids: &[i64], weights: &[f64], clip_skip: usize) -> Self {
        Self {
            ids: ids.to_vec(),
            weights: weights.iter().map(|w| w.to_bits()).collect(),
            clip_skip,
        }
    }
}

/// What the text encoders make of one 75-token chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkEmbedding {
    /// The hidden states the UNet attends to, `[1, 77, D]` (SDXL: both encoders' side by side).
    pub hidden: HostTensor<f32>,
    /// SDXL: the second encoder's pooled projection `[1, P]`.
    pub pooled: Option<HostTensor<f32>>,
}

/// A small least-recently-used map from chunks to their embeddings.
#[derive(Debug, Default)]
pub struct EmbeddingCache {
    /// Most recently used last.
    entries: VecDeque<(ChunkKey, ChunkEmbedding)>,
}

impl EmbeddingCache {
    pub const CAPACITY: usize = 16;

    /// The embedding of `key`, if it is kept (it becomes the most recently used).
    pub fn get(&mut self, key: &ChunkKey) -> Option<ChunkEmbedding> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(at)?;
        let embedding = entry.1.clone();
        self.entries.push_back(entry);
        Some(embedding)
    }

    /// Keeps `embedding` for `key`, dropping the least recently used entry when full.
    pub fn insert(&mut self, key: ChunkKey, embedding: ChunkEmbedding) {
        self.entries.retain(|(k, _)| k != &key);
        if self.entries.len() >= Self::CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back((key, embedding));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64, weight: f64, clip_skip: usize) -> ChunkKey {
        ChunkKey::new(&[49406, id, 49407], &[1.0, weight, 1.0], clip_skip)
    }

    fn tensor(value: f32) -> ChunkEmbedding {
        ChunkEmbedding {
            hidden: HostTensor::new(vec![1, 1], vec![value]),
            pooled: None,
        }
    }

    #[test]
    fn a_chunk_comes_back_only_for_the_same_ids_weights_and_clip_skip() {
        let mut cache = EmbeddingCache::default();
        cache.insert(key(1, 1.0, 1), tensor(1.0));
        assert_eq!(cache.get(&key(1, 1.0, 1)), Some(tensor(1.0)));
        assert_eq!(cache.get(&key(2, 1.0, 1)), None);
        assert_eq!(cache.get(&key(1, 1.1, 1)), None);
        assert_eq!(cache.get(&key(1, 1.0, 2)), None);
        // Inserting the same key again replaces it.
        cache.insert(key(1, 1.0, 1), tensor(2.0));
        assert_eq!((cache.len(), cache.get(&key(1, 1.0, 1))), (1, Some(tensor(2.0))));
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first() {
        let mut cache = EmbeddingCache::default();
        for id in 0..EmbeddingCache::CAPACITY as i64 {
            cache.insert(key(id, 1.0, 1), tensor(id as f32));
        }
        // Touch the oldest: the second oldest is then the one to go.
        assert!(cache.get(&key(0, 1.0, 1)).is_some());
        cache.insert(key(100, 1.0, 1), tensor(100.0));
        assert_eq!(cache.len(), EmbeddingCache::CAPACITY);
        assert!(cache.get(&key(0, 1.0, 1)).is_some());
        assert!(cache.get(&key(1, 1.0, 1)).is_none());
        assert!(cache.get(&key(100, 1.0, 1)).is_some());
    }
}
