//! `easel generate PROMPT …`: send one job, follow its events, write its images.
//!
//! Images are written as the daemon sends them (their PNG bytes already carry the metadata)
//! with an atomic rename, and each written path is printed on stdout as soon as it exists.
//! With `--json`, stdout carries one JSON object per event instead (see `easel_client::events`).
//! Ctrl-C ends the process; the daemon sees the stream drop and cancels the job.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use easel_client::events;
use easel_client::output::{self, OutputTarget};
use easel_client::pb::generate_event::Event;
use easel_client::{GenerateOptions, npy, resolve_model};

use super::progress::Display;
use super::{Global, Interrupted, UsageError};

/// `--decoder`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderArg {
    Full,
    Tiny,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to draw
    pub prompt: String,

    /// An installed model's name, or a model folder [default: the daemon's default model]
    #[arg(long, value_name = "NAME|DIR")]
    pub model: Option<String>,

    /// What to steer away from
    #[arg(long, value_name = "TEXT")]
    pub negative: Option<String>,

    /// Denoising steps [default: 20]
    #[arg(long, value_name = "N")]
    pub steps: Option<u32>,

    /// Classifier-free guidance scale; 1 or less turns guidance off [default: 7.5]
    // Negative values parse so the daemon can say why they are wrong.
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub cfg: Option<f32>,

    /// euler, euler_a, ddim, pndm, dpmpp_2m, dpmpp_2m_karras, lcm or heun [default: the model's]
    #[arg(long, value_name = "NAME")]
    pub sampler: Option<String>,

    /// Image width in pixels, a multiple of 8 [default: the model's]
    #[arg(long, value_name = "W")]
    pub width: Option<u32>,

    /// Image height in pixels, a multiple of 8 [default: the model's]
    #[arg(long, value_name = "H")]
    pub height: Option<u32>,

    /// Seed of the first image; image i uses seed + i [default: random]
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// Number of images [default: 1]
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,

    /// Initial noise from a NumPy .npy file: unit variance, shape [1, 4, H/8, W/8] for SD models
    #[arg(long, value_name = "FILE.npy")]
    pub init_noise: Option<PathBuf>,

    /// Start from this picture (img2img; PNG or JPEG). Without --width/--height the output
    /// keeps its size, rounded down to a multiple of 8
    #[arg(long, value_name = "FILE")]
    pub init_image: Option<PathBuf>,

    /// How much of --init-image to repaint, in (0, 1] [default: 0.8; 1.0 with --mask]
    #[arg(long, value_name = "X", allow_negative_numbers = true, requires = "init_image")]
    pub strength: Option<f64>,

    /// Inpainting: repaint only where this mask (PNG or JPEG, the size of --init-image) is
    /// white; black parts keep --init-image's pixels
    #[arg(long, value_name = "FILE", requires = "init_image")]
    pub mask: Option<PathBuf>,

    /// Blur the mask's edge by this many pixels, for a soft seam [default: 4]
    #[arg(long, value_name = "PX", allow_negative_numbers = true, requires = "mask")]
    pub mask_blur: Option<f32>,

    /// Stop the text encoder this many layers from the end, as AUTOMATIC1111's "Clip skip":
    /// 1 = last layer, 2 = the one before [default: 1]
    #[arg(long, value_name = "N")]
    pub clip_skip: Option<u32>,

    /// The VAE decoder of the final picture: `tiny` uses the model's vae_decoder_tiny/ (TAESD),
    /// several times faster and a little softer [default: full]
    #[arg(long, value_name = "full|tiny", value_enum)]
    pub decoder: Option<DecoderArg>,

    /// Stop classifier-free guidance after this fraction of the steps (0..1): the rest run
    /// one UNet pass instead of two, a little faster, the picture a little different
    /// [default: 1, guidance to the end]
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub guidance_cutoff: Option<f64>,

    /// Mix each guided prediction, by this fraction (0..1), with itself rescaled to the
    /// conditional prediction's spread (diffusers' guidance_rescale; 0.7 against washed-out
    /// pictures at high --cfg) [default: 0, off]
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub guidance_rescale: Option<f64>,

    /// SDXL: the size the picture is conditioned as coming from, WxH (diffusers'
    /// original_size) [default: the picture's size]
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub original_size: Option<(u32, u32)>,

    /// SDXL: where the picture is conditioned as cropped from, TOP,LEFT in pixels (diffusers'
    /// crops_coords_top_left) [default: 0,0]
    #[arg(long, value_name = "TOP,LEFT", value_parser = parse_crop)]
    pub crop_top_left: Option<(u32, u32)>,

    /// SDXL: the size the picture is conditioned as made for, WxH (diffusers' target_size)
    /// [default: the picture's size]
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub target_size: Option<(u32, u32)>,

    /// SDXL refiners: the aesthetic score the prompt is conditioned on (0..10) [default: 6]
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub aesthetic_score: Option<f64>,

    /// SDXL refiners: the aesthetic score the negative prompt is conditioned on (0..10)
    /// [default: 2.5]
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub negative_aesthetic_score: Option<f64>,

    /// Base + refiner: this model (a name or folder) takes over the base's latents at
    /// --refiner-switch and draws the rest of the picture (an SDXL refiner for an SDXL model)
    #[arg(long, value_name = "NAME|DIR")]
    pub refiner: Option<String>,

    /// Where --refiner takes over, as a fraction of the noise schedule (0..1) [default: 0.8]
    #[arg(long, value_name = "F", allow_negative_numbers = true, requires = "refiner")]
    pub refiner_switch: Option<f64>,

    /// A file (later images: NAME-1.png, NAME-2.png…) or a folder (easel-SEED.png)
    /// [default: ./easel-SEED.png]
    #[arg(short, long, value_name = "FILE.png|DIR")]
    pub output: Option<PathBuf>,

    /// Write a preview of every step to DIR/step-NNN.png (imageI-step-NNN.png for several images)
    #[arg(long, value_name = "DIR")]
    pub previews: Option<PathBuf>,

    /// How long the model stays loaded afterwards, e.g. 5m, 30s, 0, -1 (forever) [default: 5m]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub keep_alive: Option<String>,

    /// Print one JSON object per event on stdout (and nothing else)
    #[arg(long)]
    pub json: bool,

    /// Show no progress on stderr
    #[arg(long)]
    pub no_progress: bool,
}

impl GenerateArgs {
    /// Checks what needs no daemon and builds the options (reads --init-noise).
    pub fn options(&self) -> anyhow::Result<GenerateOptions> {
        let init_image = self
            .init_image
            .as_deref()
            .map(|p| read_picture("--init-image", p))
            .transpose()?;
        let mask_image = self.mask.as_deref().map(|p| read_picture("--mask", p)).transpose()?;
        if self.count == Some(0) {
            return Err(UsageError("--count must be at least 1".into()).into());
        }
        if self.clip_skip == Some(0) {
            return Err(UsageError("--clip-skip counts from 1 (the last layer)".into()).into());
        }
        let model = self
            .model
            .as_deref()
            .map(resolve_model)
            .transpose()
            .context("invalid --model")?;
        let refiner = self
            .refiner
            .as_deref()
            .map(resolve_model)
            .transpose()
            .context("invalid --refiner")?;
        let init_noise = self
            .init_noise
            .as_deref()
            .map(npy::read)
            .transpose()
            .context("cannot use --init-noise")?;
        Ok(GenerateOptions {
            prompt: self.prompt.clone(),
            model,
            negative_prompt: self.negative.clone(),
            steps: self.steps,
            guidance_scale: self.cfg,
            init_image,
            strength: self.strength,
            mask_image,
            mask_blur: self.mask_blur,
            clip_skip: self.clip_skip,
            decoder: match self.decoder {
                Some(DecoderArg::Tiny) => easel_client::pb::Decoder::Tiny,
                Some(DecoderArg::Full) | None => easel_client::pb::Decoder::Full,
            },
            guidance_cutoff: self.guidance_cutoff,
            guidance_rescale: self.guidance_rescale,
            aesthetic_score: self.aesthetic_score,
            negative_aesthetic_score: self.negative_aesthetic_score,
            refiner,
            refiner_switch: self.refiner_switch,
            original_size: self.original_size,
            crop_top_left: self.crop_top_left,
            target_size: self.target_size,
            sampler: self.sampler.clone(),
            width: self.width,
            height: self.height,
            seed: self.seed,
            count: self.count,
            init_noise,
            previews: self.previews.is_some(),
            keep_alive: self.keep_alive.clone(),
        })
    }
}

/// `WxH` (e.g. `1024x768`) → (width, height).
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    parse_pair(text, 'x').ok_or_else(|| format!("`{text}` is not a size; write it WIDTHxHEIGHT, e.g. 1024x768"))
}

/// `TOP,LEFT` (e.g. `0,256`) → (top, left).
fn parse_crop(text: &str) -> Result<(u32, u32), String> {
    parse_pair(text, ',').ok_or_else(|| format!("`{text}` is not a crop position; write it TOP,LEFT, e.g. 0,256"))
}

fn parse_pair(text: &str, separator: char) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once(|c: char| c.eq_ignore_ascii_case(&separator))?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// A picture file's bytes; a missing, empty, special or oversized file is an error that names
/// the option.
fn read_picture(option: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(easel_client::input::read_input(option, path)?)
}

pub async fn run(global: &Global, args: GenerateArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let request = options.to_request()?;
    let count = options.image_count();
    let target = OutputTarget::from_arg(args.output.as_deref());
    output::ensure_dir(target.dir())?;
    if let Some(dir) = &args.previews {
        output::ensure_dir(dir)?;
    }

    let mut client = super::client(global).await?;
    let mut display = Display::new(args.json || args.no_progress, count);
    let mut stream = match client.generate(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            display.abandon();
            return Err(status.into());
        }
    };

    let mut job = Job {
        json: args.json,
        target,
        previews: args.previews.clone(),
        count,
        job_id: String::new(),
    };
    let mut written = 0usize;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let message = tokio::select! {
            _ = &mut ctrl_c => {
                display.abandon();
                return Err(Interrupted.into());
            }
            message = stream.message() => message,
        };
        let event = match message {
            Ok(Some(message)) => match message.event {
                Some(event) => event,
                None => continue,
            },
            Ok(None) => {
                display.abandon();
                anyhow::bail!(
                    "the daemon ended job {} before it finished; its log ({}) may say why",
                    if job.job_id.is_empty() { "?" } else { &job.job_id },
                    easel_client::log_path(&global.socket).display()
                );
            }
            Err(status) => {
                display.abandon();
                return Err(status.into());
            }
        };
        match job.handle(&event, &mut display) {
            Ok(Handled::Image) => written += 1,
            Ok(Handled::Finished) => {
                if let Event::Finished(finished) = &event {
                    display.finished(finished.timings.as_ref(), written);
                }
                return Ok(());
            }
            Ok(Handled::Other) => {}
            Err(error) => {
                display.abandon();
                return Err(error);
            }
        }
    }
}

/// What one event did.
#[derive(Debug)]
enum Handled {
    Image,
    Finished,
    Other,
}

/// The state of a job being followed.
struct Job {
    json: bool,
    target: OutputTarget,
    previews: Option<PathBuf>,
    count: u32,
    job_id: String,
}

impl Job {
    fn handle(&mut self, event: &Event, display: &mut Display) -> anyhow::Result<Handled> {
        if let Some(id) = events::job_id_of(event).filter(|id| !id.is_empty()) {
            self.job_id = id.to_string();
        }
        let mut path: Option<PathBuf> = None;
        let handled = match event {
            Event::Queued(queued) => {
                display.queued(&self.job_id, queued.position);
                Handled::Other
            }
            Event::Started(started) => {
                display.started(started.load_ms);
                Handled::Other
            }
            Event::Progress(progress) => {
                if let (Some(dir), false) = (&self.previews, progress.preview_png.is_empty()) {
                    let file = output::preview_path(dir, progress.image_index, progress.step, self.count);
                    output::write_atomic(&file, &progress.preview_png)?;
                    path = Some(file);
                }
                display.progress(progress);
                Handled::Other
            }
            Event::Image(image) => {
                let file = self.target.image_path(image.index, image.seed);
                output::write_atomic(&file, &image.png)?;
                if !self.json {
                    display.suspend(|| print_path(&file))?;
                }
                path = Some(file);
                Handled::Image
            }
            Event::Finished(_) => Handled::Finished,
        };
        if self.json {
            let line = events::event_json(event, &self.job_id, path.as_deref());
            outln!("{line}");
        }
        Ok(handled)
    }
}

fn print_path(path: &Path) -> Result<(), super::StdoutClosed> {
    outln!("{}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use easel_client::pb;

    fn parse(args: &[&str]) -> Result<GenerateArgs, clap::Error> {
        let mut argv = vec!["easel", "generate"];
        argv.extend(args);
        match super::super::Cli::try_parse_from(argv)?.command {
            super::super::Command::Generate(args) => Ok(*args),
            other => panic!("{other:?}"),
        }
    }

    fn usage_message(error: anyhow::Error) -> String {
        error.downcast::<UsageError>().expect("a usage error").0
    }

    #[test]
    fn sdxl_size_conditioning_parses_and_reaches_the_request() {
        let args = parse(&[
            "a fox",
            "--original-size",
            "1024x768",
            "--crop-top-left",
            "16,32",
            "--target-size",
            "512X384",
        ])
        .unwrap();
        let request = args.options().unwrap().to_request().unwrap();
        assert_eq!(
            request.original_size,
            Some(pb::PictureSize {
                width: 1024,
                height: 768
            })
        );
        assert_eq!(request.crop_top_left, Some(pb::CropOrigin { top: 16, left: 32 }));
        assert_eq!(
            request.target_size,
            Some(pb::PictureSize {
                width: 512,
                height: 384
            })
        );
        let unset = parse(&["a fox"]).unwrap().options().unwrap().to_request().unwrap();
        assert_eq!(
            (unset.original_size, unset.crop_top_left, unset.target_size),
            (None, None, None)
        );
        for bad in [
            ["--original-size", "1024"],
            ["--target-size", "ax2"],
            ["--crop-top-left", "3x4"],
        ] {
            let error = parse(&["a fox", bad[0], bad[1]]).unwrap_err().to_string();
            assert!(error.contains("write it"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn only_given_options_are_set() {
        let request = parse(&["a fox"]).unwrap().options().unwrap().to_request().unwrap();
        assert_eq!(request.prompt, "a fox");
        assert_eq!(
            (request.steps, request.seed, request.count, request.guidance_scale),
            (None, None, None, None)
        );
        let args = parse(&[
            "a fox",
            "--steps",
            "4",
            "--cfg",
            "1.5",
            "--seed",
            "9",
            "--count",
            "2",
            "--sampler",
            "ddim",
            "--width",
            "64",
            "--height",
            "32",
            "--negative",
            "blur",
            "--keep-alive",
            "-1",
        ])
        .unwrap();
        let request = args.options().unwrap().to_request().unwrap();
        assert_eq!(
            (request.steps, request.seed, request.count),
            (Some(4), Some(9), Some(2))
        );
        assert_eq!(request.guidance_scale, Some(1.5));
        assert_eq!((request.width, request.height), (Some(64), Some(32)));
        assert_eq!(
            (request.sampler.as_str(), request.negative_prompt.as_str()),
            ("ddim", "blur")
        );
        assert_eq!(request.keep_alive, "-1");
    }

    #[test]
    fn count_zero_is_a_usage_error() {
        let error = parse(&["p", "--count", "0"]).unwrap().options().unwrap_err();
        assert_eq!(usage_message(error), "--count must be at least 1");
    }

    #[test]
    fn strength_and_mask_need_an_image_and_blur_needs_a_mask() {
        assert!(parse(&["p", "--mask", "m.png"]).is_err(), "--mask without --init-image");
        assert!(
            parse(&["p", "--strength", "0.5"]).is_err(),
            "--strength without --init-image"
        );
        assert!(
            parse(&["p", "--init-image", "i.png", "--mask-blur", "2"]).is_err(),
            "--mask-blur without --mask"
        );
    }

    #[test]
    fn masks_are_read_and_sent_with_their_blur() {
        let dir = tempfile::tempdir().unwrap();
        let (picture, mask, empty) = (
            dir.path().join("p.png"),
            dir.path().join("m.png"),
            dir.path().join("e.png"),
        );
        std::fs::write(&picture, b"picture").unwrap();
        std::fs::write(&mask, b"mask").unwrap();
        std::fs::write(&empty, b"").unwrap();
        let (picture, mask, empty) = (
            picture.to_str().unwrap(),
            mask.to_str().unwrap(),
            empty.to_str().unwrap(),
        );
        let args = ["p", "--init-image", picture, "--mask", mask, "--mask-blur", "0"];
        let request = parse(&args).unwrap().options().unwrap().to_request().unwrap();
        assert_eq!(request.mask_image, b"mask");
        assert_eq!(request.mask_blur, Some(0.0));
        let error = parse(&["p", "--init-image", picture, "--mask", empty])
            .unwrap()
            .options()
            .unwrap_err();
        assert!(format!("{error:#}").contains("--mask"), "{error:#}");
    }

    #[test]
    fn clip_skip_counts_from_one() {
        let request = parse(&["p", "--clip-skip", "2"])
            .unwrap()
            .options()
            .unwrap()
            .to_request()
            .unwrap();
        assert_eq!(request.clip_skip, Some(2));
        let error = parse(&["p", "--clip-skip", "0"]).unwrap().options().unwrap_err();
        assert!(usage_message(error).contains("counts from 1"));
    }

    #[test]
    fn init_images_are_read_and_empty_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        let error = parse(&["p", "--init-image", empty.to_str().unwrap()])
            .unwrap()
            .options()
            .unwrap_err();
        assert!(format!("{error:#}").contains("empty"), "{error:#}");
        let missing = dir.path().join("missing.png");
        let error = parse(&["p", "--init-image", missing.to_str().unwrap()])
            .unwrap()
            .options()
            .unwrap_err();
        assert!(format!("{error:#}").contains("missing.png"), "{error:#}");
        let picture = dir.path().join("p.png");
        std::fs::write(&picture, b"not really a png").unwrap();
        let options = parse(&["p", "--init-image", picture.to_str().unwrap(), "--strength", "0.4"])
            .unwrap()
            .options()
            .unwrap();
        let request = options.to_request().unwrap();
        assert_eq!(request.init_image, b"not really a png");
        assert_eq!(request.strength, Some(0.4));
    }

    #[test]
    fn bad_numbers_are_clap_errors() {
        assert!(parse(&["p", "--steps", "-3"]).is_err());
        assert!(parse(&["p", "--seed", "many"]).is_err());
        assert!(parse(&["p", "--cfg", "x"]).is_err());
    }

    #[test]
    fn a_bad_init_noise_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let noise = dir.path().join("noise.npy");
        std::fs::write(&noise, b"garbage").unwrap();
        let error = parse(&["p", "--init-noise", noise.to_str().unwrap()])
            .unwrap()
            .options()
            .unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("--init-noise") && message.contains("not an .npy file"),
            "{message}"
        );
    }

    #[test]
    fn a_model_folder_is_sent_as_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let options = parse(&["p", "--model", dir.path().to_str().unwrap()])
            .unwrap()
            .options()
            .unwrap();
        assert_eq!(
            options.model.as_deref().map(Path::new),
            Some(dir.path().canonicalize().unwrap().as_path())
        );
        let error = parse(&["p", "--model", "./no/such/model"])
            .unwrap()
            .options()
            .unwrap_err();
        assert!(format!("{error:#}").contains("does not exist"));
    }

    fn job(dir: &Path, json: bool, previews: bool, count: u32) -> Job {
        Job {
            json,
            target: OutputTarget::from_arg(Some(&dir.join("out.png"))),
            previews: previews.then(|| dir.join("previews")),
            count,
            job_id: String::new(),
        }
    }

    #[test]
    fn events_write_images_and_previews() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("previews")).unwrap();
        let mut job = job(dir.path(), true, true, 2);
        let mut display = Display::Quiet;
        let queued = Event::Queued(pb::Queued {
            job_id: "j7".into(),
            position: 0,
        });
        assert!(matches!(job.handle(&queued, &mut display).unwrap(), Handled::Other));
        assert_eq!(job.job_id, "j7");
        let progress = Event::Progress(pb::Progress {
            step: 2,
            total: 4,
            elapsed_ms: 10,
            preview_png: b"preview".to_vec(),
            image_index: 1,
            latent: None,
        });
        job.handle(&progress, &mut display).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("previews/image1-step-002.png")).unwrap(),
            b"preview"
        );
        for (index, seed) in [(0u32, 5u64), (1, 6)] {
            let image = Event::Image(pb::Image {
                index,
                png: format!("png {index}").into_bytes(),
                seed,
                width: 8,
                height: 8,
                parameters: String::new(),
            });
            assert!(matches!(job.handle(&image, &mut display).unwrap(), Handled::Image));
        }
        assert_eq!(std::fs::read(dir.path().join("out.png")).unwrap(), b"png 0");
        assert_eq!(std::fs::read(dir.path().join("out-1.png")).unwrap(), b"png 1");
        let finished = Event::Finished(pb::Finished {
            job_id: "j7".into(),
            timings: None,
        });
        assert!(matches!(
            job.handle(&finished, &mut display).unwrap(),
            Handled::Finished
        ));
    }

    #[test]
    fn an_unwritable_output_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = Job {
            json: false,
            target: OutputTarget::File(dir.path().join("missing-folder").join("x.png")),
            previews: None,
            count: 1,
            job_id: String::new(),
        };
        let image = Event::Image(pb::Image {
            index: 0,
            png: vec![1],
            seed: 1,
            width: 1,
            height: 1,
            parameters: "".into(),
        });
        let error = job.handle(&image, &mut Display::Quiet).unwrap_err();
        assert!(format!("{error:#}").contains("missing-folder/x.png"));
    }
}
