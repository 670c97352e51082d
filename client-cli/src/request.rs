//! Building requests: generation options → `GenerateRequest`, and `--model` arguments.
//!
//! Options the user did not give stay unset (proto3 `optional` / empty strings), so the daemon
//! applies its own defaults (20 steps, guidance 7.5, the model's sampler and size, a random
//! seed). The client never guesses those defaults itself.

use std::path::{Path, PathBuf};

use easel_proto::v1 as pb;

use crate::npy;

/// A request the client refuses to send.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("the model folder {} does not exist; pass an existing model folder or an installed model's name", path.display())]
    ModelFolderMissing { path: PathBuf },
    #[error("cannot resolve the model folder {}", path.display())]
    ModelFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the model folder path {} is not valid UTF-8; rename or move the folder", path.display())]
    NonUtf8Path { path: PathBuf },
}

/// Turns a `--model NAME|DIR` argument into what the daemon expects.
///
/// An existing folder is sent as its absolute canonical path (the daemon may run in another
/// folder). Something that looks like a path (absolute, starting with `.`, or containing `/`)
/// but is not a folder is an error here, rather than a confusing one from the daemon. Anything
/// else is a model name.
pub fn resolve_model(arg: &str) -> Result<String, RequestError> {
    let path = Path::new(arg);
    if !arg.is_empty() && path.is_dir() {
        let canonical = path.canonicalize().map_err(|source| RequestError::ModelFolder {
            path: path.to_path_buf(),
            source,
        })?;
        return canonical
            .into_os_string()
            .into_string()
            .map_err(|p| RequestError::NonUtf8Path { path: p.into() });
    }
    if path.is_absolute() || arg.starts_with('.') || arg.contains('/') {
        return Err(RequestError::ModelFolderMissing {
            path: path.to_path_buf(),
        });
    }
    Ok(arg.to_string())
}

/// Everything a text-to-image request can say. `None` leaves the daemon's default.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub prompt: String,
    /// Already resolved with [`resolve_model`]; `None`: the daemon's default model.
    pub model: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub sampler: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seed: Option<u64>,
    pub count: Option<u32>,
    /// Unit-variance initial noise, e.g. read with [`npy::read`].
    pub init_noise: Option<npy::Array>,
    /// img2img: the encoded picture (PNG or JPEG) and how much of it to repaint.
    pub init_image: Option<Vec<u8>>,
    pub strength: Option<f64>,
    /// Inpainting: the encoded mask (white = repaint) and its blur in pixels.
    pub mask_image: Option<Vec<u8>>,
    pub mask_blur: Option<f32>,
    /// AUTOMATIC1111's clip skip (1 = the last layer).
    pub clip_skip: Option<u32>,
    /// Ask for an approximate preview PNG with every step.
    pub previews: bool,
    /// The VAE decoder of the final pictures (`Full` unless asked).
    pub decoder: pb::Decoder,
    /// Guidance stops after this fraction of the steps (0..1).
    pub guidance_cutoff: Option<f64>,
    /// SDXL's size conditioning: original size (width, height), crop (top, left), target size
    /// (width, height).
    pub original_size: Option<(u32, u32)>,
    pub crop_top_left: Option<(u32, u32)>,
    pub target_size: Option<(u32, u32)>,
    /// diffusers' guidance_rescale (0..1).
    pub guidance_rescale: Option<f64>,
    /// SDXL refiners: the aesthetic scores of the prompt and of the negative prompt.
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
    /// Base + refiner: the refiner (resolved with [`resolve_model`]) and where it takes over.
    pub refiner: Option<String>,
    pub refiner_switch: Option<f64>,
    /// How long the model stays loaded afterwards (`"5m"`, `"-1"`, `"0"`…).
    pub keep_alive: Option<String>,
}

impl GenerateOptions {
    /// A request with only a prompt set.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// The number of images the request makes (the daemon's default is 1).
    pub fn image_count(&self) -> u32 {
        self.count.unwrap_or(1)
    }

    /// Checks what the client can check and builds the request.
    pub fn to_request(&self) -> Result<pb::GenerateRequest, RequestError> {
        if self.count == Some(0) {
            return Err(RequestError::ZeroCount);
        }
        Ok(pb::GenerateRequest {
            model: self.model.clone().unwrap_or_default(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            sampler: self.sampler.clone().unwrap_or_default(),
            seed: self.seed,
            count: self.count,
            init_noise: self.init_noise.as_ref().map(npy::Array::to_tensor),
            init_image: self.init_image.clone().unwrap_or_default(),
            strength: self.strength,
            mask_image: self.mask_image.clone().unwrap_or_default(),
            mask_blur: self.mask_blur,
            clip_skip: self.clip_skip,
            preview: self.previews.then_some(pb::PreviewOptions {
                stream_latents: false,
                every_n_steps: 1,
                image: pb::PreviewImage::Approx as i32,
            }),
            keep_alive: self.keep_alive.clone().unwrap_or_default(),
            decoder: self.decoder as i32,
            guidance_cutoff: self.guidance_cutoff,
            original_size: self
                .original_size
                .map(|(width, height)| pb::PictureSize { width, height }),
            crop_top_left: self.crop_top_left.map(|(top, left)| pb::CropOrigin { top, left }),
            target_size: self
                .target_size
                .map(|(width, height)| pb::PictureSize { width, height }),
            guidance_rescale: self.guidance_rescale,
            aesthetic_score: self.aesthetic_score,
            negative_aesthetic_score: self.negative_aesthetic_score,
            refiner: self.refiner.clone().unwrap_or_default(),
            refiner_switch: self.refiner_switch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_options_stay_unset() {
        let request = GenerateOptions::new("a red fox").to_request().unwrap();
        assert_eq!(request.prompt, "a red fox");
        assert_eq!(request.model, "");
        assert_eq!(request.negative_prompt, "");
        assert_eq!(request.sampler, "");
        assert_eq!(request.keep_alive, "");
        assert_eq!(
            (request.width, request.height, request.steps, request.count),
            (None, None, None, None)
        );
        assert_eq!(request.guidance_scale, None);
        assert_eq!(request.seed, None);
        assert!(request.init_noise.is_none());
        assert!(request.preview.is_none());
    }

    #[test]
    fn given_options_are_sent() {
        let options = GenerateOptions {
            model: Some("tiny".into()),
            negative_prompt: Some("blurry".into()),
            steps: Some(4),
            guidance_scale: Some(1.0),
            sampler: Some("euler_a".into()),
            width: Some(64),
            height: Some(32),
            seed: Some(7),
            count: Some(2),
            init_noise: Some(npy::Array {
                shape: vec![1, 1],
                data: vec![0.5],
            }),
            previews: true,
            keep_alive: Some("0".into()),
            decoder: pb::Decoder::Tiny,
            guidance_cutoff: Some(0.5),
            ..GenerateOptions::new("p")
        };
        let request = options.to_request().unwrap();
        assert_eq!(request.decoder, pb::Decoder::Tiny as i32);
        assert_eq!(request.guidance_cutoff, Some(0.5));
        assert_eq!(request.model, "tiny");
        assert_eq!(request.negative_prompt, "blurry");
        assert_eq!(request.steps, Some(4));
        assert_eq!(request.guidance_scale, Some(1.0));
        assert_eq!(request.sampler, "euler_a");
        assert_eq!((request.width, request.height), (Some(64), Some(32)));
        assert_eq!((request.seed, request.count), (Some(7), Some(2)));
        assert_eq!(request.init_noise.unwrap().data, 0.5f32.to_le_bytes());
        let preview = request.preview.unwrap();
        assert_eq!(preview.image, pb::PreviewImage::Approx as i32);
        assert_eq!(preview.every_n_steps, 1);
        assert_eq!(request.keep_alive, "0");
        assert_eq!(options.image_count(), 2);
    }

    #[test]
    fn zero_count_is_refused() {
        let options = GenerateOptions {
            count: Some(0),
            ..GenerateOptions::new("p")
        };
        assert!(matches!(options.to_request(), Err(RequestError::ZeroCount)));
        assert_eq!(GenerateOptions::new("p").image_count(), 1);
    }

    #[test]
    fn an_existing_folder_is_sent_as_its_canonical_path() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("my-model");
        std::fs::create_dir(&model).unwrap();
        let with_dots = dir.path().join("my-model").join("..").join("my-model");
        let resolved = resolve_model(with_dots.to_str().unwrap()).unwrap();
        assert_eq!(Path::new(&resolved), model.canonicalize().unwrap());
        assert!(Path::new(&resolved).is_absolute());
    }

    #[test]
    fn names_stay_names_and_missing_folders_are_errors() {
        assert_eq!(
            resolve_model("sd-tiny-unlikely-to-exist-here").unwrap(),
            "sd-tiny-unlikely-to-exist-here"
        );
        for missing in ["/definitely/not/here", "./not-here", "models/not-here"] {
            let error = resolve_model(missing).unwrap_err();
            assert!(
                matches!(error, RequestError::ModelFolderMissing { .. }),
                "{missing}: {error:?}"
            );
            assert!(error.to_string().contains(missing));
        }
        assert_eq!(resolve_model("").unwrap(), "");
    }
}
