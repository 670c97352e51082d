//! One ONNX sub-model (text encoder, UNet, VAE decoder…) in an `ort` session, with its
//! inputs and outputs read from the session rather than assumed.
//!
//! Exports in the wild disagree on dtypes and ranks (int32 or int64 `input_ids`, `timestep` as
//! a 0-d float, an int64 `[B]` or a float `[B]`, fp16 everywhere in half-precision exports).
//! The pipeline hands this module plain f32/i64 tensors; [`OnnxModel::run`] converts each one
//! to whatever the graph declares, and every output back to f32.

use std::path::{Path, PathBuf};

use half::f16;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::optimized_cache::{self, OptimizedCache};
use super::runtime::OrtRuntime;

/// Element types easel knows how to feed and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    I64,
    I32,
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
        })
    }
}

/// An input or output of a session: name, element type and declared shape (-1 = dynamic).
#[derive(Debug, Clone)]
pub struct IoSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
}

impl IoSpec {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// A dense tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T> HostTensor<T> {
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?}");
        Self { shape, data }
    }
}

/// A value for one input: host numbers converted to the graph's declared dtype at run time, or
/// a [`Bound`] tensor converted once and fed by reference.
#[derive(Debug)]
pub enum Input<'a> {
    Float(HostTensor<f32>),
    Int(HostTensor<i64>),
    Bound(&'a Bound),
}

/// A tensor already in the graph's element type, fed by reference to every run that takes it
/// ([`OnnxModel::bind`]): a job's text embeddings are the same for all its UNet evaluations,
/// so they are converted (to fp16 for a half-precision UNet) and laid out once per job instead
/// of copied and converted on every step. On the CPU this is what binding an input once with
/// ONNX Runtime's IO binding does; ONNX Runtime reads the buffer in place.
#[derive(Debug)]
pub struct Bound {
    value: DynValue,
    shape: Vec<usize>,
}

impl Bound {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot load {path}: {source}. The file may be truncated or not an ONNX model; re-export the model")]
    Load {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error(
        "cannot decode {path} in float32 as its config's force_upcast asks (its float16 activations overflow): {message}"
    )]
    Upcast { path: PathBuf, message: String },
    #[error(
        "{model}: input or output `{name}` has element type {found:?}, which easel does not support (expected float32, float16, int64 or int32)"
    )]
    UnsupportedType { model: String, name: String, found: String },
    #[error("{model}: no input matching {wanted} (the model's inputs: {available})")]
    MissingInput {
        model: String,
        wanted: String,
        available: String,
    },
    #[error("{model}: {message}")]
    Incompatible { model: String, message: String },
    #[error("{model}: inference failed: {source}")]
    Run {
        model: String,
        #[source]
        source: ort::Error,
    },
}

/// A loaded sub-model.
pub struct OnnxModel {
    /// "text_encoder", "unet", "vae_decoder"…: used in errors.
    pub label: String,
    session: Session,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("label", &self.label)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl OnnxModel {
    /// Opens `path` in a session using `threads` intra-op threads (0: ONNX Runtime's default).
    pub fn load(runtime: &OrtRuntime, label: &str, path: &Path, threads: usize) -> Result<Self, OnnxError> {
        Self::open(runtime, label, path, threads, false)
    }

    /// Opens `path` with every float16 tensor, type and cast widened to float32 first
    /// ([`super::upcast`]): diffusers' `force_upcast` for a float16 VAE.
    pub fn load_upcast(runtime: &OrtRuntime, label: &str, path: &Path, threads: usize) -> Result<Self, OnnxError> {
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Upcast {
            path: path.to_path_buf(),
            message: source.to_string(),
        })?;
        let widened = super::upcast::to_float32(&bytes).map_err(|source| OnnxError::Upcast {
            path: path.to_path_buf(),
            message: source.to_string(),
        })?;
        drop(bytes);
        let load_error = |source: ort::Error| OnnxError::Load {
            path: path.to_path_buf(),
            source,
        };
        let mut builder =
            on_device(Session::builder(&runtime.environment).map_err(load_error)?, runtime).map_err(load_error)?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| load_error(e.into()))?;
        }
        builder = builder.with_memory_pattern(false).map_err(|e| load_error(e.into()))?;
        let session = builder.commit_from_memory(&widened).map_err(load_error)?;
        Self::from_session(label, session)
    }

    /// Opens `path` only to read and check its inputs and outputs: no graph optimization, which
    /// makes opening a full-size UNet several times faster (the session is not run).
    pub fn inspect(runtime: &OrtRuntime, label: &str, path: &Path) -> Result<Self, OnnxError> {
        Self::open(runtime, label, path, 1, true)
    }

    fn open(runtime: &OrtRuntime, label: &str, path: &Path, threads: usize, inspect: bool) -> Result<Self, OnnxError> {
        let load_error = |source: ort::Error| OnnxError::Load {
            path: path.to_path_buf(),
            source,
        };
        let mut builder = Session::builder(&runtime.environment).map_err(load_error)?;
        if !inspect {
            builder = on_device(builder, runtime).map_err(load_error)?;
        }
        if inspect {
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(|e| load_error(e.into()))?;
        }
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| load_error(e.into()))?;
        }
        if !inspect {
            // ONNX Runtime's memory pattern pre-plans one block per input shape for every
            // tensor a run makes. Off, the arena serves them as they come: the full-size UNet's
            // peak fell from 7.7 to 5.5 GiB at the same step time (BENCHMARKS.md, "Session
            // settings"), and a new picture size plans nothing.
            builder = builder.with_memory_pattern(false).map_err(|e| load_error(e.into()))?;
        }
        let session = match runtime.optimized_cache.as_ref().filter(|_| !inspect) {
            Some(cache) => open_through_cache(cache, builder, path).map_err(load_error)?,
            None => builder.commit_from_file(path).map_err(load_error)?,
        };
        Self::from_session(label, session)
    }

    fn from_session(label: &str, session: Session) -> Result<Self, OnnxError> {
        let inputs = session
            .inputs()
            .iter()
            .map(|o| io_spec(label, o.name(), o.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| io_spec(label, o.name(), o.dtype()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            label: label.to_string(),
            session,
            inputs,
            outputs,
        })
    }

    /// The input whose name is one of `names`, else the only input of `rank` not already
    /// claimed by name. Exports name things alike, but not always.
    pub fn find_input(&self, names: &[&str], rank: Option<&[usize]>) -> Result<IoSpec, OnnxError> {
        if let Some(spec) = self.inputs.iter().find(|i| names.contains(&i.name.as_str())) {
            return Ok(spec.clone());
        }
        if let Some(ranks) = rank {
            let mut by_rank = self.inputs.iter().filter(|i| ranks.contains(&i.rank()));
            if let (Some(spec), None) = (by_rank.next(), by_rank.next()) {
                return Ok(spec.clone());
            }
        }
        Err(OnnxError::MissingInput {
            model: self.label.clone(),
            wanted: names.join(" or "),
            available: self
                .inputs
                .iter()
                .map(|i| format!("{} {} {:?}", i.name, i.dtype, i.shape))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// `tensor` converted once to what `spec` declares, to be fed by reference
    /// ([`Input::Bound`]) to any number of runs.
    pub fn bind(&self, spec: &IoSpec, tensor: HostTensor<f32>) -> Result<Bound, OnnxError> {
        let shape = tensor.shape.clone();
        let value = owned_value(spec, Input::Float(tensor)).map_err(|source| OnnxError::Run {
            model: self.label.clone(),
            source,
        })?;
        Ok(Bound { value, shape })
    }

    /// Runs the graph on named inputs and returns every output as f32, in the graph's order.
    /// The session's memory arena keeps what the run needed, ready for the next run.
    pub fn run(&mut self, inputs: Vec<(&IoSpec, Input)>) -> Result<Vec<HostTensor<f32>>, OnnxError> {
        self.run_with(inputs, ArenaAfterRun::Keep)
    }

    /// [`OnnxModel::run`], then hands the arena's unused memory back (ONNX Runtime's
    /// `memory.enable_memory_arena_shrinkage`): for the last run of a job and for graphs that
    /// run once per job (text encoder, VAE), whose buffers would otherwise stay allocated at
    /// their peak for as long as the model is resident (gigabytes for a large VAE decode).
    pub fn run_releasing(&mut self, inputs: Vec<(&IoSpec, Input)>) -> Result<Vec<HostTensor<f32>>, OnnxError> {
        self.run_with(inputs, ArenaAfterRun::Release)
    }

    fn run_with(
        &mut self,
        inputs: Vec<(&IoSpec, Input)>,
        arena: ArenaAfterRun,
    ) -> Result<Vec<HostTensor<f32>>, OnnxError> {
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (spec, input) in inputs {
            let value = match input {
                Input::Bound(bound) => SessionInputValue::from(&bound.value),
                input => owned_value(spec, input)
                    .map_err(|source| OnnxError::Run {
                        model: self.label.clone(),
                        source,
                    })?
                    .into(),
            };
            values.push((spec.name.clone(), value));
        }
        let label = self.label.clone();
        let run_error = |source: ort::Error| OnnxError::Run {
            model: label.clone(),
            source,
        };
        let mut options = RunOptions::new().map_err(run_error)?;
        if arena == ArenaAfterRun::Release {
            options
                .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                .map_err(run_error)?;
        }
        let outputs = self.session.run_with_options(values, &options).map_err(run_error)?;
        let mut result = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            result.push(to_host_f32(&value).map_err(run_error)?);
        }
        Ok(result)
    }
}

/// Registers the daemon's device's execution provider on `builder` (nothing for the CPU). A GPU
/// that cannot take the session is an error, never a silent run on the CPU. Public for the
/// benchmark's bare sessions, which must run where the daemon's do.
pub fn on_device(builder: SessionBuilder, runtime: &OrtRuntime) -> ort::Result<SessionBuilder> {
    match runtime.device {
        super::device::Device::Cpu => Ok(builder),
        #[cfg(feature = "cuda")]
        super::device::Device::Cuda(index) => {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(index as i32)
                .build()
                .error_on_failure();
            builder.with_execution_providers([cuda]).map_err(Into::into)
        }
        #[cfg(not(feature = "cuda"))]
        super::device::Device::Cuda(_) => Err(ort::Error::new(
            "this easeld was built without the cuda feature, so it cannot run sessions on a GPU",
        )),
    }
}

/// A session for `path` through the optimized-graph cache: from the saved optimized graph when
/// there is one (optimizations off: they were applied when it was saved), else from `path`,
/// saving the optimized graph for the next load. A saved graph that fails to open is removed,
/// and a failure to save opens `path` as if there were no cache.
fn open_through_cache(cache: &OptimizedCache, mut builder: SessionBuilder, path: &Path) -> ort::Result<Session> {
    if let Some(optimized) = cache.lookup(path) {
        let from_cache = builder
            .clone()
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(ort::Error::from)
            .and_then(|mut b| b.commit_from_file(&optimized));
        match from_cache {
            Ok(session) => return Ok(session),
            Err(error) => {
                tracing::warn!(%error, graph = %optimized.display(), "the saved optimized graph did not open; optimizing again");
                cache.remove(path);
            }
        }
    }
    let Some(pending) = cache.begin(path) else {
        return builder.commit_from_file(path);
    };
    let saving = builder
        .clone()
        .with_optimized_model_path(pending.graph())
        .map_err(ort::Error::from)
        .and_then(|b| {
            b.with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                optimized_cache::WEIGHTS,
            )
            .map_err(ort::Error::from)
        })
        .and_then(|b| {
            b.with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )
            .map_err(ort::Error::from)
        });
    match saving.and_then(|mut b| b.commit_from_file(path)) {
        Ok(session) => {
            pending.commit();
            Ok(session)
        }
        Err(error) => {
            // Saving costs only the speed-up when it fails: open the source as without a cache.
            tracing::warn!(%error, source = %path.display(), "could not save the optimized graph; opening without");
            pending.abandon();
            builder.commit_from_file(path)
        }
    }
}

/// What a session's memory arena does with its free memory after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArenaAfterRun {
    Keep,
    Release,
}

fn io_spec(model: &str, name: &str, dtype: &ValueType) -> Result<IoSpec, OnnxError> {
    let unsupported = || OnnxError::UnsupportedType {
        model: model.to_string(),
        name: name.to_string(),
        found: format!("{dtype:?}"),
    };
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err(unsupported());
    };
    let dtype = match ty {
        TensorElementType::Float32 => Dtype::F32,
        TensorElementType::Float16 => Dtype::F16,
        TensorElementType::Int64 => Dtype::I64,
        TensorElementType::Int32 => Dtype::I32,
        _ => return Err(unsupported()),
    };
    Ok(IoSpec {
        name: name.to_string(),
        dtype,
        shape: shape.iter().copied().collect(),
    })
}

/// Host numbers → a value of the graph's element type. A bound value is one already: it is
/// fed by reference in `run_with`, never through here.
fn owned_value(spec: &IoSpec, input: Input<'_>) -> ort::Result<DynValue> {
    let (shape, floats): (Vec<usize>, Vec<f64>) = match input {
        // Fast paths keep the common case free of copies through f64.
        Input::Float(t) if spec.dtype == Dtype::F32 => return Ok(Tensor::from_array((t.shape, t.data))?.into_dyn()),
        Input::Int(t) if spec.dtype == Dtype::I64 => return Ok(Tensor::from_array((t.shape, t.data))?.into_dyn()),
        Input::Float(t) => (t.shape, t.data.into_iter().map(f64::from).collect()),
        Input::Int(t) => (t.shape, t.data.into_iter().map(|v| v as f64).collect()),
        Input::Bound(_) => {
            return Err(ort::Error::new(format!(
                "{}: a bound value is fed by reference, not converted again",
                spec.name
            )));
        }
    };
    Ok(match spec.dtype {
        Dtype::F32 => Tensor::from_array((shape, floats.into_iter().map(|v| v as f32).collect::<Vec<_>>()))?.into_dyn(),
        Dtype::F16 => {
            Tensor::from_array((shape, floats.into_iter().map(f16::from_f64).collect::<Vec<_>>()))?.into_dyn()
        }
        // Integer timesteps truncate like `torch.Tensor.long()` does in the pipelines that feed them.
        Dtype::I64 => Tensor::from_array((shape, floats.into_iter().map(|v| v as i64).collect::<Vec<_>>()))?.into_dyn(),
        Dtype::I32 => Tensor::from_array((shape, floats.into_iter().map(|v| v as i32).collect::<Vec<_>>()))?.into_dyn(),
    })
}

fn to_host_f32(value: &ort::value::DynValueRef<'_>) -> ort::Result<HostTensor<f32>> {
    if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        return Ok(HostTensor::new(
            shape.iter().map(|&d| d as usize).collect(),
            data.to_vec(),
        ));
    }
    let (shape, data) = value.try_extract_tensor::<f16>()?;
    Ok(HostTensor::new(
        shape.iter().map(|&d| d as usize).collect(),
        data.iter().map(|v| v.to_f32()).collect(),
    ))
}
