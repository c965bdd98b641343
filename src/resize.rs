//! Images shrunk to the model's pixel budget at the edge (opt-in per pool: `resize =
//! "max-pixels"` under `[pools.NAME]`, or `--resize-images max-pixels` for every pool).
//!
//! Qwen2.5-VL's processor resizes every image to its smart_resize target (both sides multiples
//! of 28, at most `max_pixels`); a 12-megapixel photo crosses the network whole only to be
//! shrunk inside the worker. Here an image with more pixels than its target is decoded,
//! resized to exactly that target with the resampling vLLM's processor applies
//! (`caprl_image`'s torchvision-exact path, the engine's own code) and sent as PNG (lossless).
//! The worker then finds the image at its target already, so its resize is the identity and
//! its pixels, prompt and answer are what they would have been without the gateway.
//!
//! That holds only where the gateway's pixels are the worker's: images whose decoder is known
//! to give Pillow's pixels (`caprl_image::decode_rgb`: JPEG through libjpeg-turbo's decoder,
//! 8-bit PNG, WebP, GIF, BMP), and `--min-pixels`/`--max-pixels` equal to the workers'. Any
//! other image goes on as the client sent it, as does one whose PNG would be larger than the
//! original (the worker's resize gives the same pixels either way).
//!
//! Where it sits: [`crate::state::AppState::validate_as`] validates (and fetches), then asks
//! [`Resizer::shrink`] for the new image URLs and validates the body with them again; the
//! images keep the hash of what the client sent, so affinity and the caption cache see the
//! same image with or without the resize. The work runs on the blocking pool, at most one
//! request per core at a time. A client opts out with `x-caprl-resize: off`.

use crate::metrics::{Metrics, ResizeOutcome};
use crate::validate::images::data_url;
use crate::validate::{ImageFormat, ImageInfo, ImageLimits, ValidRequest};
use bytes::Bytes;
use http::HeaderMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// The request header a client sets to `off` to have its images forwarded as it sent them.
pub const OPT_OUT_HEADER: &str = "x-caprl-resize";

/// Whether a request's images may be resized: as its pool says, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeChoice {
    AsPool,
    Off,
}

impl ResizeChoice {
    /// `x-caprl-resize: off` (any case) opts out; anything else leaves it to the pool.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        match headers.get(OPT_OUT_HEADER) {
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"off") => ResizeChoice::Off,
            _ => ResizeChoice::AsPool,
        }
    }
}

/// New image URLs for a body: `(message, part, data URL)`, as `validate::replace_image_urls`
/// takes them.
pub type Replacements = Vec<(usize, usize, String)>;

/// Resizes the images of requests to resizing pools, a bounded number of requests at a time.
pub struct Resizer {
    limits: ImageLimits,
    /// One per core: the work is CPU-bound and runs on the blocking pool.
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

impl std::fmt::Debug for Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resizer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One image to shrink: where it is, its bytes as received, its target (width, height).
struct Job {
    part: (usize, usize),
    data: Bytes,
    target: (usize, usize),
}

impl Resizer {
    pub fn new(limits: ImageLimits, metrics: Metrics) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Resizer {
            limits,
            slots: Arc::new(Semaphore::new(cores)),
            metrics,
        }
    }

    /// The target (width, height) of an image with more pixels than it, or `None`.
    fn target(&self, info: &ImageInfo) -> Option<(usize, usize)> {
        let (w, h) = (u64::from(info.width), u64::from(info.height));
        let (th, tw) = crate::validate::images::smart_resize(
            h,
            w,
            self.limits.min_pixels,
            self.limits.max_pixels,
        )?;
        (th * tw < w * h).then_some((tw as usize, th as usize))
    }

    /// The data URLs that replace `req`'s images above the budget (validated with their bytes
    /// kept); empty when none is worth replacing. Counts every request's bytes in and out.
    pub async fn shrink(&self, req: &ValidRequest) -> Replacements {
        let received: u64 = req.images.iter().map(|i| i.bytes as u64).sum();
        let jobs: Vec<Job> = req
            .images
            .iter()
            .filter_map(|info| {
                let target = self.target(info)?;
                Some(Job {
                    part: info.part,
                    data: info.data.clone()?,
                    target,
                })
            })
            .collect();
        if jobs.is_empty() {
            self.metrics.images_forwarded(received, received, None);
            return Vec::new();
        }
        let started = Instant::now();
        let done = match self.slots.clone().acquire_owned().await {
            Ok(slot) => tokio::task::spawn_blocking(move || {
                let _slot = slot;
                jobs.into_iter()
                    .map(|job| (shrink_one(&job), job))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "an image resize panicked; the images go on as sent");
                Vec::new()
            }),
            // The semaphore is never closed.
            Err(_) => Vec::new(),
        };
        let mut forwarded = received;
        let mut urls = Vec::new();
        for (result, job) in done {
            let outcome = match result {
                Ok(png) if png.len() < job.data.len() => {
                    forwarded -= (job.data.len() - png.len()) as u64;
                    urls.push((job.part.0, job.part.1, data_url(ImageFormat::Png, &png)));
                    ResizeOutcome::Resized
                }
                Ok(_) => ResizeOutcome::Larger,
                Err(outcome) => outcome,
            };
            self.metrics.image_resized(outcome);
        }
        self.metrics
            .images_forwarded(received, forwarded, Some(started.elapsed()));
        urls
    }
}

/// Decode, resize to the target, encode as PNG; or why not.
fn shrink_one(job: &Job) -> Result<Vec<u8>, ResizeOutcome> {
    let decoded = caprl_image::decode_rgb(&job.data).map_err(|_| ResizeOutcome::Undecodable)?;
    if !decoded.as_pillow {
        return Err(ResizeOutcome::NotExact);
    }
    let (w, h) = job.target;
    let resized = caprl_image::resize(&decoded.rgb, w, h, caprl_image::Resample::Torchvision);
    caprl_image::encode_png(&resized).map_err(|_| ResizeOutcome::Undecodable)
}
