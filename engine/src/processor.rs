//! Image preprocessing for the vision tower, bit-for-bit as transformers' Qwen2-VL image
//! processors do it: smart_resize and the resize itself come from `caprl-image` (the same code
//! the gateway resizes with), in one of two references chosen by
//! [`PreprocessorConfig::resample`]:
//! - torchvision (the default; transformers 5's default processor, and so vLLM): antialiased
//!   bicubic on uint8, then rescale and normalise fused into one step in float32, as
//!   `_fuse_mean_std_and_rescale_factor` does: `(v - mean·(1/rescale)) / (std·(1/rescale))`;
//! - Pillow (`Qwen2VLImageProcessorPil`): Pillow's bicubic, then rescale (a double multiply,
//!   cast to float32) and normalise by the float32 mean and std.
//!
//! Then the patchify of `Qwen2VLImageProcessor`, the single frame repeated
//! `temporal_patch_size` times.

use crate::backend::ProcessedImage;
use crate::config::PreprocessorConfig;
use anyhow::{bail, Context, Result};
use caprl_image::Resample;
use image::RgbImage;

/// Decodes PNG/JPEG/WebP/GIF/BMP bytes to 8-bit RGB (alpha dropped, as PIL's `convert("RGB")`).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    Ok(caprl_image::decode_rgb(bytes)
        .context("cannot decode image")?
        .rgb)
}

/// Rescale and normalise, per channel, in the arithmetic of the path's processor: fused on the
/// torchvision path (`(v - mean') / std'` with mean and std divided by the rescale factor, in
/// float32), rescale first (a double multiply, cast to float32) on the Pillow path.
struct Normalise {
    fused: bool,
    rescale: Option<f64>,
    mean: [f32; 3],
    std: [f32; 3],
    normalise: bool,
}

impl Normalise {
    fn new(cfg: &PreprocessorConfig) -> Self {
        let fused = cfg.resample == Resample::Torchvision && cfg.do_rescale && cfg.do_normalize;
        // `torch.tensor(mean) * (1.0 / rescale_factor)`: a float32 tensor times a Python float,
        // so the product is taken in float32.
        let inverse = (1.0 / cfg.rescale_factor) as f32;
        let f = |v: f64| if fused { v as f32 * inverse } else { v as f32 };
        Normalise {
            fused,
            rescale: cfg.do_rescale.then_some(cfg.rescale_factor),
            mean: cfg.image_mean.map(f),
            std: cfg.image_std.map(f),
            normalise: cfg.do_normalize,
        }
    }

    fn apply(&self, c: usize, v: u8) -> f32 {
        if self.fused {
            return (f32::from(v) - self.mean[c]) / self.std[c];
        }
        let x = match self.rescale {
            Some(r) => (f64::from(v) * r) as f32,
            None => f32::from(v),
        };
        if self.normalise {
            (x - self.mean[c]) / self.std[c]
        } else {
            x
        }
    }
}

/// Resize, rescale, normalise and patchify one image for the vision tower.
pub fn preprocess(image: &RgbImage, cfg: &PreprocessorConfig) -> Result<ProcessedImage> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let factor = cfg.patch_size * cfg.merge_size;
    let resized;
    let img = if cfg.do_resize {
        let (rh, rw) = caprl_image::smart_resize(h, w, factor, cfg.min_pixels, cfg.max_pixels)?;
        if (rh, rw) == (h, w) {
            image
        } else {
            resized = caprl_image::resize(image, rw, rh, cfg.resample);
            &resized
        }
    } else {
        if !h.is_multiple_of(factor) || !w.is_multiple_of(factor) {
            bail!("do_resize is off but the image ({w}x{h}) is not a multiple of {factor}");
        }
        image
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    // (C, H, W) f32, as the processor's numpy arrays.
    let mut chw = vec![0f32; 3 * h * w];
    let raw = img.as_raw();
    let norm = Normalise::new(cfg);
    for c in 0..3 {
        for i in 0..h * w {
            chw[c * h * w + i] = norm.apply(c, raw[i * 3 + c]);
        }
    }
    Ok(patchify(&chw, h, w, cfg))
}

/// `Qwen2VLImageProcessor`'s patchify: rows ordered (block row, block col, row in block, col in
/// block) over `merge_size` blocks, columns (channel, temporal copy, patch row, patch col).
fn patchify(chw: &[f32], h: usize, w: usize, cfg: &PreprocessorConfig) -> ProcessedImage {
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (h / p, w / p);
    let dim = 3 * t * p * p;
    let mut out = Vec::with_capacity(gh * gw * dim);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (row, col) = (bh * m + mh, bw * m + mw);
                    for c in 0..3 {
                        for _ in 0..t {
                            for py in 0..p {
                                let start = c * h * w + (row * p + py) * w + col * p;
                                out.extend_from_slice(&chw[start..start + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    ProcessedImage {
        pixel_values: out,
        grid_thw: [1, gh, gw],
    }
}
