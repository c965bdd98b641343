//! Image preprocessing, bit-for-bit as transformers' `Qwen2VLImageProcessorPil` does it.
//!
//! Owns decoding image bytes to RGB, `smart_resize` (both sides multiples of
//! `patch_size * merge_size`, area within `[min_pixels, max_pixels]`, Python's round-half-even),
//! the resize itself — a port of Pillow's `Image.resize(..., BICUBIC)` (`libImaging/Resample.c`:
//! separable, antialiased cubic with a = -0.5 whose support widens with the downscale factor,
//! coefficients in 22-bit fixed point, horizontal pass first, each pass rounded and clipped to
//! uint8) — then rescale (f64 multiply, cast to f32), normalisation by mean/std (f32), and the
//! patchify of `Qwen2VLImageProcessorPil.patchify`, the single frame repeated
//! `temporal_patch_size` times.

use crate::backend::ProcessedImage;
use crate::config::PreprocessorConfig;
use anyhow::{bail, Context, Result};
use image::RgbImage;

/// Decodes PNG/JPEG/WebP/GIF/BMP bytes to 8-bit RGB (alpha dropped, as PIL's `convert("RGB")`).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).context("cannot decode image")?;
    Ok(img.to_rgb8())
}

/// transformers' `smart_resize`: the (height, width) an image is resized to.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        bail!("image has no pixels ({width}x{height})");
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        bail!("absolute aspect ratio must be smaller than 200, got {ratio}");
    }
    // Python's round() rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    if h_bar * w_bar > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One axis' resampling plan: for each output pixel, the first input index, the number of taps
/// and the fixed-point coefficients (`ksize` slots each).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of Pillow, for the box (0, in_size).
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, kk }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes like Pillow's `Image.resize((width, height), Image.BICUBIC)` on an RGB image.
pub fn resize_bicubic(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let mut data: Vec<u8> = src.as_raw().clone();
    let mut cur_w = in_w;
    if width != in_w {
        let c = precompute_coeffs(in_w, width);
        let mut out = vec![0u8; width * in_h * 3];
        for y in 0..in_h {
            let row = &data[y * in_w * 3..(y + 1) * in_w * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.kk[xx * c.ksize..xx * c.ksize + n];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for (s, &v) in ss.iter_mut().zip(p) {
                        *s += v as i64 * kx as i64;
                    }
                }
                let o = (y * width + xx) * 3;
                for (d, &s) in out[o..o + 3].iter_mut().zip(&ss) {
                    *d = clip8(s);
                }
            }
        }
        data = out;
        cur_w = width;
    }
    if height != in_h {
        let c = precompute_coeffs(in_h, height);
        let mut out = vec![0u8; cur_w * height * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let k = &c.kk[yy * c.ksize..yy * c.ksize + n];
            for x in 0..cur_w {
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (y, &ky) in k.iter().enumerate() {
                    let i = ((ymin + y) * cur_w + x) * 3;
                    for (s, &v) in ss.iter_mut().zip(&data[i..i + 3]) {
                        *s += v as i64 * ky as i64;
                    }
                }
                let o = (yy * cur_w + x) * 3;
                for (d, &s) in out[o..o + 3].iter_mut().zip(&ss) {
                    *d = clip8(s);
                }
            }
        }
        data = out;
    }
    RgbImage::from_raw(width as u32, height as u32, data)
        .expect("resize output has width*height*3 bytes; this is a bug")
}

/// Resize, rescale, normalise and patchify one image for the vision tower.
pub fn preprocess(image: &RgbImage, cfg: &PreprocessorConfig) -> Result<ProcessedImage> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let factor = cfg.patch_size * cfg.merge_size;
    let resized;
    let img = if cfg.do_resize {
        let (rh, rw) = smart_resize(h, w, factor, cfg.min_pixels, cfg.max_pixels)?;
        if (rh, rw) == (h, w) {
            image
        } else {
            resized = resize_bicubic(image, rw, rh);
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
    for c in 0..3 {
        for i in 0..h * w {
            let v = raw[i * 3 + c];
            let mut x = if cfg.do_rescale {
                (v as f64 * cfg.rescale_factor) as f32
            } else {
                v as f32
            };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            chw[c * h * w + i] = x;
        }
    }
    Ok(patchify(&chw, h, w, cfg))
}

/// `Qwen2VLImageProcessorPil.patchify`: rows ordered (block row, block col, row in block, col in
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_half_to_even() {
        // 70 px -> 2.5 -> 2 (not 3) -> 56
        assert_eq!(smart_resize(70, 70, 28, 3136, 28224).expect("ok"), (56, 56));
        assert_eq!(
            smart_resize(200, 300, 28, 3136, 28224).expect("ok"),
            (112, 196)
        );
        assert_eq!(smart_resize(30, 20, 28, 3136, 28224).expect("ok"), (84, 56));
        assert_eq!(
            smart_resize(1080, 1920, 28, 3136, 12845056).expect("ok"),
            (1092, 1932)
        );
        assert!(smart_resize(1, 300, 28, 3136, 28224).is_err());
    }

    #[test]
    fn resize_to_same_size_is_identity_per_axis() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        let out = resize_bicubic(&img, 5, 4);
        assert_eq!(out.as_raw(), img.as_raw());
    }
}
