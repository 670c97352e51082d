//! Validation: a request checked against its model and the limits before it may queue.
//!
//! The job's own settings (how many images, how long the model stays) are checked here; every
//! check on the picture is `generation::prepare`'s, made once, in two phases around opening the
//! model, so a bad number fails before any model file is read.

use std::sync::Arc;

use crate::catalog::registry::Registry;
use crate::config::{KeepAlive, Limits};
use crate::generation::Prepared;
use crate::model::ModelFolder;

use super::{GenerateSpec, JobError};

/// A request checked against its model and the limits: everything a worker needs.
#[derive(Debug)]
pub struct ValidJob {
    pub folder: Arc<ModelFolder>,
    pub prepared: Prepared,
    pub seed: u64,
    pub count: u32,
    /// Images denoised together in one UNet batch (the last batch may be smaller).
    pub batch_size: u32,
    /// `None`: the daemon's default.
    pub keep_alive: Option<KeepAlive>,
}

/// Checks a request against its model and the limits; fills in defaults.
pub fn validate(registry: &Registry, limits: &Limits, spec: GenerateSpec) -> Result<ValidJob, JobError> {
    let count = spec.count.unwrap_or(1);
    if count == 0 || count > limits.max_count {
        return Err(JobError::InvalidArgument(format!(
            "count must be between 1 and {} (got {count})",
            limits.max_count
        )));
    }
    let keep_alive = match spec.keep_alive.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        Some(text) => Some(KeepAlive::parse(text).map_err(JobError::InvalidArgument)?),
        None => None,
    };
    let checked = spec.picture.check(limits)?;
    let folder = registry.open(&spec.model)?;
    let prepared = checked.prepare(&folder, limits)?;
    Ok(ValidJob {
        batch_size: batch_size(limits, prepared.width, prepared.height, count),
        folder,
        prepared,
        seed: spec.seed.unwrap_or_else(rand::random),
        count,
        keep_alive,
    })
}

/// How many images go through the UNet together: as many as fit in `batch_pixels`, at least
/// one.
fn batch_size(limits: &Limits, width: u32, height: u32, count: u32) -> u32 {
    let per_image = u64::from(width) * u64::from(height);
    (limits.batch_pixels / per_image).clamp(1, u64::from(count)) as u32
}
