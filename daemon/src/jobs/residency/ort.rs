//! The real [`Backend`] and [`Generator`]: ONNX Runtime sessions.
//!
//! A model's memory is measured as the growth of the daemon's resident memory while loading it
//! (loads run one at a time, so the growth is the model's), and never less than its weights'
//! size on disk. The first load also carries ONNX Runtime's one-time set-up.
//!
//! On a GPU the weights live in VRAM: the model's device memory is the growth of the GPU's used
//! memory while loading (never less than the weights), its RAM the resident growth alone (what
//! ONNX Runtime keeps on the host beside it), and its jobs' working memory is VRAM too.

use std::path::Path;
use std::sync::Arc;

use crate::generation::sampler::NoiseSource;
use crate::generation::{self, BatchOutput, GenerationError, Prepared, StepReport};
use crate::jobs::Generator;
use crate::memory;
use crate::model::runtime::OrtRuntime;
use crate::model::{LoadedModel, ModelFolder};

use super::{Backend, Footprint};

pub struct OrtBackend {
    runtime: OrtRuntime,
    /// Intra-op threads per session (0: ONNX Runtime's default, one per core).
    threads: usize,
}

impl OrtBackend {
    pub fn new(runtime: OrtRuntime, threads: usize) -> Self {
        Self { runtime, threads }
    }

    fn on_gpu(&self) -> bool {
        self.runtime.device_memory.is_some()
    }
}

/// What a load took: `host_grown` of resident memory and, on a GPU, `device_grown` of VRAM.
/// The weights are counted where they live even when the growth undercounts them (the heap
/// may hand a load pages an earlier one freed; the GPU's reading may have failed).
fn loaded_footprint(host_grown: u64, device_grown: Option<u64>, weights: u64) -> Footprint {
    match device_grown {
        None => Footprint::host(host_grown.max(weights)),
        Some(device) => Footprint {
            host: host_grown,
            device: device.max(weights),
        },
    }
}

impl Backend for OrtBackend {
    type Spec = Arc<ModelFolder>;
    type Model = LoadedModel;

    fn load(&self, folder: &Arc<ModelFolder>) -> Result<(LoadedModel, Footprint), String> {
        let gpu = self.runtime.device_memory.as_deref();
        let before = memory::resident_memory();
        let device_before = gpu.map(|g| g.used());
        let model =
            LoadedModel::load(&self.runtime, folder.clone(), self.threads).map_err(|e| crate::error_chain(&e))?;
        let grown = memory::resident_memory().saturating_sub(before);
        let device_grown = gpu
            .zip(device_before)
            .map(|(g, before)| crate::model::device_memory::growth(&before, &g.used()));
        Ok((model, loaded_footprint(grown, device_grown, weights_size(&folder.root))))
    }

    fn estimate(&self, folder: &Arc<ModelFolder>) -> Footprint {
        // The weights live where jobs work: on the device the sessions run on.
        self.working(weights_size(&folder.root))
    }

    fn working(&self, bytes: u64) -> Footprint {
        if self.on_gpu() {
            Footprint::device(bytes)
        } else {
            Footprint::host(bytes)
        }
    }

    fn unloaded(&self) {
        memory::release_freed_memory();
    }
}

impl Generator for OrtBackend {
    fn generate_batch(
        &self,
        model: &mut LoadedModel,
        prepared: &Prepared,
        noises: &mut [&mut dyn NoiseSource],
        handed_over: Option<&[f32]>,
        is_cancelled: &dyn Fn() -> bool,
        on_step: &mut dyn FnMut(usize, StepReport),
    ) -> Result<BatchOutput, GenerationError> {
        generation::generate_batch(model, prepared, noises, handed_over, is_cancelled, on_step)
    }
}

/// Bytes of ONNX weights under a model folder (the estimate before a first load): the graphs
/// and their external data. 0 when the folder cannot be read (loading will say why).
pub fn weights_size(root: &Path) -> u64 {
    crate::catalog::store::list_files(root)
        .unwrap_or_default()
        .iter()
        .filter(|(path, _)| path.rsplit('/').next().is_some_and(|name| name.contains(".onnx")))
        .map(|(_, size)| size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_count_where_they_live() {
        assert_eq!(
            loaded_footprint(5, None, 10),
            Footprint::host(10),
            "the CPU: RAM, at least the weights"
        );
        assert_eq!(loaded_footprint(50, None, 10), Footprint::host(50));
        assert_eq!(
            loaded_footprint(3, Some(4), 10),
            Footprint { host: 3, device: 10 },
            "a GPU: VRAM at least the weights, RAM as grown"
        );
        assert_eq!(loaded_footprint(3, Some(40), 10), Footprint { host: 3, device: 40 });
    }

    #[test]
    fn weights_are_the_graphs_and_their_external_data_only() {
        let dir = tempfile::tempdir().unwrap();
        for (path, size) in [
            ("unet/model.onnx", 10),
            ("unet/model.onnx_data", 20),
            ("unet/config.json", 5),
            ("tokenizer/vocab.json", 7),
            ("model_index.json", 3),
        ] {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, vec![0u8; size]).unwrap();
        }
        assert_eq!(weights_size(dir.path()), 30);
        assert_eq!(weights_size(&dir.path().join("missing")), 0);
    }
}
