//! Validation: a request checked against its model and the limits before it may queue.
//!
//! The job's own settings (how many images, how long the model stays) are checked here; every
//! check on the picture is `generation::prepare`'s, made once, in two phases around opening the
//! model, so a bad number fails before any model file is read.

use std::sync::Arc;

use super::residency::Footprint;
use crate::catalog::registry::Registry;
use crate::config::{KeepAlive, Limits};
use crate::generation::memory::{self, WorkingMemory};
use crate::generation::{Prepared, Request};
use crate::model::ModelFolder;

use super::{GenerateSpec, JobError, RefinerSpec};

/// Where the refiner takes over when the request does not say: AUTOMATIC1111's and diffusers'
/// examples' 0.8 (the base draws the first 80% of the noise schedule).
pub const DEFAULT_REFINER_SWITCH: f64 = 0.8;

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
    /// this model's jobs measured, in the memory the model runs in (set by the queue, which
    /// knows the measurements and the device).
    pub working: Footprint,
    /// A base + refiner request: the second stage, which takes over the base's latents.
    pub refiner: Option<RefinerStage>,
}

/// The refiner's stage of a base + refiner request, checked against the refiner model.
#[derive(Debug)]
pub struct RefinerStage {
    pub folder: Arc<ModelFolder>,
    /// The refiner's run: the same prompts, steps, sampler and guidance, from the switch on.
    pub prepared: Prepared,
    /// The fraction of the noise schedule at which it takes over.
    pub switch: f64,
    pub modelled_working: WorkingMemory,
    /// As [`ValidJob::working`], for the refiner.
    pub working: Footprint,
}

/// One stage of a job: a model and its run.
pub struct Stage<'a> {
    pub folder: &'a Arc<ModelFolder>,
    pub prepared: &'a Prepared,
    pub modelled_working: &'a WorkingMemory,
    pub working: Footprint,
}

impl ValidJob {
    /// The job's stages in order: the base, then the refiner if there is one.
    pub fn stages(&self) -> Vec<Stage<'_>> {
        let base = Stage {
            folder: &self.folder,
            prepared: &self.prepared,
            modelled_working: &self.modelled_working,
            working: self.working,
        };
        let refiner = self.refiner.as_ref().map(|r| Stage {
            folder: &r.folder,
            prepared: &r.prepared,
            modelled_working: &r.modelled_working,
            working: r.working,
        });
        std::iter::once(base).chain(refiner).collect()
    }

    /// UNet evaluations of one image from start to end, over both stages.
    pub fn evaluations(&self) -> usize {
        self.prepared.evaluations() + self.refiner.as_ref().map_or(0, |r| r.prepared.evaluations())
    }
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
    let (picture, refiner_picture) = match &spec.refiner {
        None => (spec.picture, None),
        Some(refiner) => {
            let (base, second) = split_stages(spec.picture, refiner)?;
            (base, Some(second))
        }
    };
    let checked = picture.check(limits)?;
    let refiner_checked = refiner_picture.map(|p| p.check(limits)).transpose()?;
    let folder = registry.open(&spec.model)?;
    let prepared = checked.prepare(&folder, limits)?;
    let batch_size = batch_size(limits, prepared.width, prepared.height, count);
    let modelled_working = memory::estimate(&folder, &prepared, batch_size);
    let refiner = match (spec.refiner, refiner_checked) {
        (Some(asked), Some(checked)) => {
            let refiner_folder = registry.open(&asked.model)?;
            check_refiner(&folder, &refiner_folder)?;
            // The base's size, whether asked for, the init picture's or the model's own.
            let refiner_prepared = checked
                .at_size(prepared.width, prepared.height)
                .prepare(&refiner_folder, limits)?;
            let modelled_working = memory::estimate(&refiner_folder, &refiner_prepared, batch_size);
            Some(RefinerStage {
                switch: asked.switch.unwrap_or(DEFAULT_REFINER_SWITCH),
                folder: refiner_folder,
                prepared: refiner_prepared,
                working: Footprint::host(modelled_working.peak()),
                modelled_working,
            })
        }
        _ => None,
    };
    Ok(ValidJob {
        batch_size,
        modelled_working,
        working: Footprint::host(modelled_working.peak()),
        folder,
        prepared,
        seed: spec.seed.unwrap_or_else(rand::random),
        count,
        keep_alive,
        refiner,
    })
}

/// A base + refiner request as two runs, as diffusers' ensemble of expert denoisers: the base
/// stops at the switch and hands its latents over (`denoising_end`); the refiner takes them over
/// (`denoising_start`) with the same prompts, steps, sampler and guidance. SDXL's target size
/// conditions the base alone, the aesthetic scores the refiner alone; the requested decoder
/// makes the refiner's pictures (the base decodes none).
fn split_stages(mut picture: Request, refiner: &RefinerSpec) -> Result<(Request, Request), JobError> {
    if refiner.model.trim().is_empty() {
        return Err(JobError::InvalidArgument(
            "a refiner switch needs a refiner: name the refiner model too".into(),
        ));
    }
    let switch = refiner.switch.unwrap_or(DEFAULT_REFINER_SWITCH);
    if !(switch > 0.0 && switch < 1.0) {
        return Err(JobError::InvalidArgument(format!(
            "the refiner switch is the fraction of the noise schedule after which the refiner takes over, \
             between 0 and 1, both excluded (got {switch}); {DEFAULT_REFINER_SWITCH} hands it the last fifth"
        )));
    }
    if picture.mask_image.is_some() {
        return Err(JobError::InvalidArgument(
            "inpainting with a refiner is not supported: inpaint with the base model, then refine the result as \
             img2img with the refiner"
                .into(),
        ));
    }
    // The pictures and the noise are the base's alone: set aside so as not to copy them.
    let (init_image, init_noise) = (picture.init_image.take(), picture.init_noise.take());
    let second = Request {
        strength: None,
        width: None,
        height: None,
        xl_sizes: crate::generation::XlSizeRequest {
            target_size: None,
            ..picture.xl_sizes
        },
        denoising_start: Some(switch),
        ..picture.clone()
    };
    let first = Request {
        init_image,
        init_noise,
        xl_sizes: crate::generation::XlSizeRequest {
            aesthetic_score: None,
            negative_aesthetic_score: None,
            ..picture.xl_sizes
        },
        decoder: crate::generation::vae::Decoder::Full,
        denoising_end: Some(switch),
        ..picture
    };
    Ok((first, second))
}

/// A refiner continues the base's latents as they are, so both must share a latent space: the
/// same channels, VAE factor and scaling (an SDXL refiner for an SDXL model, an SD 1.x model for
/// an SD 1.x one).
fn check_refiner(base: &ModelFolder, refiner: &ModelFolder) -> Result<(), JobError> {
    if refiner.is_inpainting() {
        return Err(JobError::InvalidArgument(format!(
            "{} is an inpainting model, which cannot refine: pick an SDXL refiner or another model of {}'s family",
            refiner.name, base.name
        )));
    }
    let space = |f: &ModelFolder| (f.latent_channels, f.vae_factor, f.scaling_factor);
    if space(base) != space(refiner) {
        let describe = |f: &ModelFolder| {
            format!(
                "{} ({} latent channels, 1/{} scale, VAE scaling factor {})",
                f.name, f.latent_channels, f.vae_factor, f.scaling_factor
            )
        };
        return Err(JobError::InvalidArgument(format!(
            "the refiner takes over the base's latents, so both must share a latent space, but {} and {} do not: \
             pick a refiner of the base's family (an SDXL refiner for an SDXL model)",
            describe(base),
            describe(refiner)
        )));
    }
    Ok(())
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

    /// The split of a base + refiner request: the base's timesteps at or above the switch, the
    /// refiner's below it, the refiner at the base's size with the aesthetic scores, the base
    /// with the target size; an SD 1.x refiner for an SDXL base refused.
    #[test]
    fn a_refiner_request_splits_the_schedule_at_the_switch() {
        let home = tempfile::tempdir().unwrap();
        let registry = Registry::new(home.path());
        let limits = Limits::default();
        let spec = |refiner: &str| GenerateSpec {
            model: fixture_model("sdxl-tiny"),
            picture: generation::Request {
                prompt: "a lighthouse".into(),
                steps: Some(10),
                sampler: Some("euler".into()),
                width: Some(96),
                xl_sizes: generation::XlSizeRequest {
                    target_size: Some((48, 32)),
                    aesthetic_score: Some(7.0),
                    ..Default::default()
                },
                ..Default::default()
            },
            refiner: Some(RefinerSpec {
                model: fixture_model(refiner),
                switch: None,
            }),
            ..Default::default()
        };
        let job = validate(&registry, &limits, spec("sdxl-refiner-tiny")).unwrap();
        let refiner = job.refiner.as_ref().unwrap();
        assert_eq!(refiner.switch, DEFAULT_REFINER_SWITCH);
        let ran = |p: &Prepared| p.scheduler.timesteps()[p.first_step..p.end_step].to_vec();
        assert_eq!(
            ran(&job.prepared),
            [901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0]
        );
        assert_eq!(ran(&refiner.prepared), [101.0, 1.0]);
        assert_eq!(job.evaluations(), 10);
        assert_eq!((refiner.prepared.width, refiner.prepared.height), (96, 64));
        let (base_xl, refiner_xl) = (job.prepared.xl_sizes.unwrap(), refiner.prepared.xl_sizes.unwrap());
        assert_eq!((base_xl.target_size, base_xl.aesthetic_scores), ((48, 32), None));
        assert_eq!(refiner_xl.aesthetic_scores, Some((7.0, 2.5)));
        match validate(&registry, &limits, spec("sd1-tiny")) {
            Err(JobError::InvalidArgument(message)) => assert!(message.contains("latent space"), "{message}"),
            other => panic!("an SD 1.x refiner for an SDXL base: {other:?}"),
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

        /// Base + refiner requests with any switch, on the SDXL base with its refiner (or an
        /// SD 1.x model, another latent space): two stages that each run at least one step and
        /// meet at the switch, or a clear error.
        #[test]
        fn any_refiner_request_validates_or_fails_cleanly(
            picture in request(),
            switch in maybe(0.0f64..=1.0, any::<f64>()),
            refiner in prop_oneof![3 => Just("sdxl-refiner-tiny"), 1 => Just("sd1-tiny")],
        ) {
            let home = tempfile::tempdir().unwrap();
            let registry = Registry::new(home.path());
            let limits = Limits { max_pixels: 256 * 256, max_steps: 30, ..Limits::default() };
            let had_init_image = picture.init_image.is_some();
            let spec = GenerateSpec {
                model: fixture_model("sdxl-tiny"),
                picture,
                refiner: Some(RefinerSpec { model: fixture_model(refiner), switch }),
                ..Default::default()
            };
            match validate(&registry, &limits, spec) {
                Ok(job) => {
                    prop_assert_eq!(refiner, "sdxl-refiner-tiny");
                    let second = job.refiner.as_ref().expect("a refiner stage");
                    let (base, refined) = (&job.prepared, &second.prepared);
                    prop_assert!(second.switch > 0.0 && second.switch < 1.0);
                    prop_assert!(base.first_step < base.end_step);
                    prop_assert!(refined.first_step < refined.end_step);
                    prop_assert_eq!(refined.end_step, refined.scheduler.timesteps().len());
                    prop_assert_eq!((refined.width, refined.height), (base.width, base.height));
                    prop_assert!(refined.init_image.is_none() && base.inpaint().is_none());
                    prop_assert_eq!(base.init_image.is_some(), had_init_image, "img2img stays the base's");
                    prop_assert_eq!(job.evaluations(), (base.end_step - base.first_step) + (refined.end_step - refined.first_step));
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
