//! `GenerateRequest`s for the gRPC-level tests: one builder instead of a struct literal per
//! test, and [`generate`], which runs one and collects what came back.

use easel_proto::v1 as pb;
use easel_proto::v1::easel_client::EaselClient;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::fixture_model;

/// A `GenerateRequest` built step by step; unset fields keep the daemon's defaults.
///
/// ```text
/// let request = GenerateRequestBuilder::new("a tree").fixture("sd1-tiny").steps(2).seed(3).build();
/// ```
#[derive(Debug, Clone)]
pub struct GenerateRequestBuilder(pb::GenerateRequest);

impl GenerateRequestBuilder {
    pub fn new(prompt: &str) -> Self {
        Self(pb::GenerateRequest {
            prompt: prompt.to_string(),
            ..Default::default()
        })
    }

    /// A model by name (or folder path).
    pub fn model(mut self, model: &str) -> Self {
        self.0.model = model.to_string();
        self
    }

    /// A fixture model under `tests/fixtures/models/`, by its folder.
    pub fn fixture(self, name: &str) -> Self {
        self.model(&fixture_model(name).display().to_string())
    }

    pub fn negative(mut self, negative: &str) -> Self {
        self.0.negative_prompt = negative.to_string();
        self
    }

    pub fn steps(mut self, steps: u32) -> Self {
        self.0.steps = Some(steps);
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.0.width = Some(width);
        self.0.height = Some(height);
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = Some(seed);
        self
    }

    pub fn sampler(mut self, sampler: &str) -> Self {
        self.0.sampler = sampler.to_string();
        self
    }

    pub fn guidance(mut self, scale: f32) -> Self {
        self.0.guidance_scale = Some(scale);
        self
    }

    pub fn preview(mut self, preview: pb::PreviewOptions) -> Self {
        self.0.preview = Some(preview);
        self
    }

    /// Inpainting: the picture, its mask (white = repaint) and the mask blur.
    pub fn inpaint(mut self, picture_png: Vec<u8>, mask_png: Vec<u8>, blur: f32) -> Self {
        self.0.init_image = picture_png;
        self.0.mask_image = mask_png;
        self.0.mask_blur = Some(blur);
        self
    }

    pub fn build(self) -> pb::GenerateRequest {
        self.0
    }
}

/// Runs `request` to its end: its images' PNGs in order, or the status it failed with.
pub async fn generate(
    client: &mut EaselClient<Channel>,
    request: impl Into<pb::GenerateRequest>,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut stream = client.generate(request.into()).await?.into_inner();
    let mut images = Vec::new();
    while let Some(event) = stream.next().await {
        if let Some(pb::generate_event::Event::Image(image)) = event?.event {
            images.push(image.png);
        }
    }
    Ok(images)
}

impl From<GenerateRequestBuilder> for pb::GenerateRequest {
    fn from(builder: GenerateRequestBuilder) -> Self {
        builder.build()
    }
}
