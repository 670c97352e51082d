//! Validation: a request checked against its model and the limits before it may queue.
//!
//! The job's own settings (how many images, how long the model stays) are checked here; every
//! check on the picture is `generation::prepare`'s, made once, in two phases around opening the
//! model, so a bad number fails before any model file is read.

use std::sync::Arc;

use crate::catalog::registry::Registry;
use crate::config::{KeepAlive, Limits};
use crate::generation::Prepared;
use crate::generation::memory::{self, WorkingMemory};
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
    /// The working memory modelled from the graphs (`generation::memory`).
    pub modelled_working: WorkingMemory,
    /// What the job holds in the memory budget while it runs: the modelled peak scaled by what
    /// this model's jobs measured (set by the queue, which knows the measurements).
    pub working: u64,
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
    let batch_size = batch_size(limits, prepared.width, prepared.height, count);
    let modelled_working = memory::estimate(&folder, &prepared, batch_size);
    Ok(ValidJob {
        batch_size,
        modelled_working,
        working: modelled_working.peak(),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::generation::{self, image::RgbImage};
    use crate::model::onnx::HostTensor;

    fn sd1_tiny() -> String {
        fixture_model("sd1-tiny")
    }

    fn fixture_model(name: &str) -> String {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models")
            .join(name)
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    }

    /// SDXL's conditioning settings: usually sensible, sometimes anything.
    fn xl_settings() -> impl Strategy<Value = (generation::XlSizeRequest, Option<f64>)> {
        let size = || maybe((1u32..4096, 1u32..4096), (any::<u32>(), any::<u32>()));
        let score = || maybe(0.0f64..=10.0, any::<f64>());
        (
            size(),
            size(),
            size(),
            score(),
            score(),
            maybe(0.0f64..=1.0, any::<f64>()),
        )
            .prop_map(
                |(original_size, crop_top_left, target_size, aesthetic_score, negative_aesthetic_score, rescale)| {
                    let sizes = generation::XlSizeRequest {
                        original_size,
                        crop_top_left,
                        target_size,
                        aesthetic_score,
                        negative_aesthetic_score,
                    };
                    (sizes, rescale)
                },
            )
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let pixels = vec![200; (width * height * 3) as usize];
        RgbImage { width, height, pixels }.to_png(&[])
    }

    // Each setting is usually valid and sometimes anything: so that most requests get far
    // enough for the later checks (against the model, the pictures, the noise) to run too.

    /// Sizes around the model's multiple (16 for sd1-tiny), zero and the extremes.
    fn side() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![
            4 => Just(None),
            4 => (1u32..=8).prop_map(|k| Some(k * 16)),
            1 => (0u32..200).prop_map(Some),
            1 => any::<u32>().prop_map(Some),
        ]
    }

    fn picture() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            3 => Just(None),
            2 => (1u32..80, 1u32..80).prop_map(|(w, h)| Some(png(w, h))),
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        ]
    }

    fn noise() -> impl Strategy<Value = Option<HostTensor<f32>>> {
        prop_oneof![
            4 => Just(None),
            // Any shape (a tensor's length always matches it: the gRPC layer checks that).
            1 => (proptest::collection::vec(0usize..10, 0..5), any::<f32>()).prop_map(|(shape, value)| {
                let len = shape.iter().product::<usize>();
                Some(HostTensor::new(shape, vec![value; len]))
            }),
            1 => any::<f32>().prop_map(|value| Some(HostTensor::new(vec![1, 4, 8, 8], vec![value; 256]))),
        ]
    }

    fn maybe<T: std::fmt::Debug + Clone + 'static>(
        usual: impl Strategy<Value = T> + 'static,
        unusual: impl Strategy<Value = T> + 'static,
    ) -> impl Strategy<Value = Option<T>> {
        prop_oneof![3 => Just(None), 6 => usual.prop_map(Some), 1 => unusual.prop_map(Some)]
    }

    prop_compose! {
        fn request()(
            prompt in prop_oneof![4 => "[a-z ]{0,60}", 1 => "[a-z (),:.0-9\\[\\]]{0,60}"],
            negative in "[a-z ]{0,20}",
            (width, height) in (side(), side()),
            steps in maybe(1u32..30, any::<u32>()),
            guidance in maybe(0.0f32..20.0, any::<f32>()),
            sampler in maybe(prop_oneof![Just("euler".to_string()), Just("Euler a".to_string()), Just("ddim".to_string())], "[a-z_ ]{0,12}"),
            (init_image, mask_image) in (picture(), picture()),
            strength in maybe(0.01f64..=1.0, any::<f64>()),
            mask_blur in maybe(0.0f32..8.0, any::<f32>()),
            clip_skip in maybe(1u32..3, 0u32..20),
            guidance_cutoff in maybe(0.0f64..=1.0, any::<f64>()),
            tiny in prop::bool::weighted(0.1),
            init_noise in noise(),
            consistent in prop::bool::weighted(0.8),
        ) -> generation::Request {
            // Mostly, settings that only go with an init image or a mask come with one, and a
            // mask has its picture's size.
            let (mut strength, mut mask_image, mut mask_blur) = (strength, mask_image, mask_blur);
            if consistent {
                if init_image.is_none() {
                    (strength, mask_image) = (None, None);
                }
                if let (Some(picture), Some(_)) = (&init_image, &mask_image)
                    && let Ok(size) = image::load_from_memory(picture)
                {
                    mask_image = Some(png(size.width(), size.height()));
                }
                if mask_image.is_none() {
                    mask_blur = None;
                }
            }
            generation::Request {
                prompt,
                negative_prompt: negative,
                width,
                height,
                steps,
                guidance_scale: guidance,
                sampler,
                init_noise,
                init_image,
                strength,
                mask_image,
                mask_blur,
                clip_skip,
                guidance_cutoff,
                decoder: if tiny { generation::vae::Decoder::Tiny } else { generation::vae::Decoder::Full },
                ..Default::default()
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any combination of settings: a job that fits every limit, or a typed error — never
        /// a panic.
        #[test]
        fn any_request_validates_or_fails_cleanly(
            picture in request(),
            count in maybe(1u32..4, 0u32..20),
            keep_alive in prop_oneof![Just(None), "[-0-9a-z.]{0,12}".prop_map(Some)],
        ) {
            let home = tempfile::tempdir().unwrap();
            let registry = Registry::new(home.path());
            let limits = Limits { max_pixels: 256 * 256, max_steps: 30, ..Limits::default() };
            let spec = GenerateSpec { model: sd1_tiny(), picture, count, keep_alive, ..Default::default() };
            match validate(&registry, &limits, spec) {
                Ok(job) => {
                    let p = &job.prepared;
                    prop_assert!(p.width > 0 && p.width % 16 == 0 && p.height % 16 == 0);
                    prop_assert!(u64::from(p.width) * u64::from(p.height) <= limits.max_pixels);
                    prop_assert!(p.steps >= 1 && p.steps <= 30);
                    prop_assert!(p.guidance_scale.is_finite());
                    prop_assert!(p.guidance_cutoff.is_none_or(|c| (0.0..1.0).contains(&c)));
                    prop_assert_eq!(p.decoder, generation::vae::Decoder::Full, "sd1-tiny has no tiny decoder");
                    prop_assert!((1..=limits.max_count).contains(&job.count));
                    prop_assert!(job.batch_size >= 1 && job.batch_size <= job.count);
                }
                Err(JobError::InvalidArgument(message)) => prop_assert!(!message.is_empty()),
                Err(JobError::Model(_) | JobError::Registry(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
            }
        }

        /// SDXL's conditioning on the SDXL base and refiner fixtures, and on an SD 1.x model
        /// (where it is refused): resolved within bounds, or a clear error.
        #[test]
        fn any_sdxl_conditioning_validates_or_fails_cleanly(
            picture in request(),
            (xl_sizes, guidance_rescale) in xl_settings(),
            model in prop_oneof![Just("sdxl-tiny"), Just("sdxl-refiner-tiny"), Just("sd1-tiny")],
        ) {
            let home = tempfile::tempdir().unwrap();
            let registry = Registry::new(home.path());
            let limits = Limits { max_pixels: 256 * 256, max_steps: 30, ..Limits::default() };
            let picture = generation::Request { xl_sizes, guidance_rescale, ..picture };
            let spec = GenerateSpec { model: fixture_model(model), picture, ..Default::default() };
            match validate(&registry, &limits, spec) {
                Ok(job) => {
                    let p = &job.prepared;
                    prop_assert!((0.0..=1.0).contains(&p.guidance_rescale));
                    prop_assert_eq!(p.xl_sizes.is_some(), model != "sd1-tiny");
                    if let Some(xl) = p.xl_sizes {
                        let ids = xl.time_ids(false);
                        prop_assert_eq!(ids.len(), if model == "sdxl-refiner-tiny" { 5 } else { 6 });
                        prop_assert!(ids.iter().all(|v| v.is_finite() && *v >= 0.0 && *v <= 16_384.0));
                    }
                }
                Err(JobError::InvalidArgument(message)) => prop_assert!(!message.is_empty()),
                Err(JobError::Model(_) | JobError::Registry(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
            }
        }
    }
}
