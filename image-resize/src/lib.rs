//! Qwen2.5-VL's image geometry and resampling, shared by the gateway (resize to the pixel budget
//! at the edge) and the in-process engine (its image processor), so that both resize the same
//! image to the same pixels as the worker they stand in front of or beside.
//!
//! - [`smart_resize`]: the (height, width) the model sees, as transformers computes it.
//! - [`resize`]: antialiased bicubic on 8-bit RGB, bit-exact with one of two references:
//!   [`Resample::Torchvision`] (the default): `torch.nn.functional.interpolate(mode="bicubic",
//!   antialias=True)` on a uint8 CPU tensor, which transformers 5's default (fast) Qwen2-VL image
//!   processor calls and so vLLM does; [`Resample::Pil`]: Pillow's `Image.resize(BICUBIC)`, what
//!   the slow `Qwen2VLImageProcessorPil` calls.
//!
//! Both are separable (horizontal pass first, then vertical; Pillow 13 turns the order round
//! when the height shrinks much more than the width), with the cubic kernel a = -0.5
//! whose support widens by the downscale factor; they differ in the fixed-point arithmetic:
//! torch rounds the weights to int16 at a precision chosen per axis from the largest weight,
//! Pillow to 22-bit fixed point; and torch computes the scale as `in / out` in double, Pillow
//! from a float box. Each pass rounds and clips to uint8.

use image::RgbImage;
use std::fmt;
use std::str::FromStr;

mod pil;
mod torchvision;

/// transformers' `MAX_RATIO`: `smart_resize` refuses images more elongated than this.
pub const MAX_RATIO: f64 = 200.0;

/// Which reference [`resize`] reproduces bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Resample {
    /// torch's antialiased bicubic on uint8 (transformers' default processor, vLLM).
    #[default]
    Torchvision,
    /// Pillow's `Image.resize(..., BICUBIC)` (transformers' `Qwen2VLImageProcessorPil`).
    Pil,
}

impl Resample {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Pil => "pil",
        }
    }
}

impl fmt::Display for Resample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resample {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "torchvision" => Ok(Self::Torchvision),
            "pil" | "pillow" => Ok(Self::Pil),
            other => Err(format!(
                "unknown image resize `{other}`; expected torchvision or pil"
            )),
        }
    }
}

/// Why [`smart_resize`] refuses an image.
#[derive(Clone, Debug, PartialEq)]
pub enum GeometryError {
    NoPixels { width: usize, height: usize },
    TooElongated { ratio: f64 },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPixels { width, height } => write!(f, "image has no pixels ({width}x{height})"),
            Self::TooElongated { ratio } => write!(
                f,
                "absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}"
            ),
        }
    }
}

impl std::error::Error for GeometryError {}

/// transformers' `smart_resize` for Qwen2-VL: the (height, width) an image is resized to, both
/// multiples of `factor` (`patch_size * merge_size`, 28), the area within
/// `[min_pixels, max_pixels]`, the aspect ratio kept as well as it can be. Python's arithmetic:
/// `round` rounds halves to even, then floor or ceil in float.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), GeometryError> {
    if height == 0 || width == 0 {
        return Err(GeometryError::NoPixels { width, height });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_RATIO {
        return Err(GeometryError::TooElongated { ratio });
    }
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

/// Decoded RGB pixels, and whether they are known to be the ones Pillow decodes from the same
/// bytes (`Image.open(...).convert("RGB")`, what vLLM and transformers see).
#[derive(Debug)]
pub struct Decoded {
    pub rgb: RgbImage,
    pub as_pillow: bool,
}

/// Why bytes did not decode.
#[derive(Debug)]
pub struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes PNG/JPEG/WebP/GIF/BMP bytes to 8-bit RGB, alpha dropped (as `convert("RGB")`).
///
/// JPEG goes through libjpeg-turbo's decoder (mozjpeg), Pillow's own: the same pixels, where
/// image's decoder differs by up to 4 levels. 8-bit PNG, WebP (lossy and lossless), GIF and
/// BMP decode to Pillow's pixels with image's decoders. Not known to match, and so marked
/// `as_pillow: false`: JPEGs libjpeg cannot give as RGB (CMYK; decoded by image instead) and
/// 16-bit PNGs (Pillow keeps the high byte of each sample, image rounds).
pub fn decode_rgb(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
    if let Some(rgb) = jpeg.then(|| decode_jpeg(bytes)).flatten() {
        return Ok(Decoded {
            rgb,
            as_pillow: true,
        });
    }
    let img = image::load_from_memory(bytes).map_err(|e| DecodeError(e.to_string()))?;
    // A JPEG here is one libjpeg refused (CMYK): image's decoder is not Pillow's.
    let as_pillow = !jpeg && img.color().bytes_per_pixel() == img.color().channel_count();
    Ok(Decoded {
        rgb: img.to_rgb8(),
        as_pillow,
    })
}

/// libjpeg-turbo's RGB output (its defaults, Pillow's: accurate integer IDCT, fancy chroma
/// upsampling); `None` where libjpeg refuses (CMYK, a corrupt stream).
fn decode_jpeg(bytes: &[u8]) -> Option<RgbImage> {
    let started = mozjpeg::Decompress::new_mem(bytes).ok()?.rgb().ok()?;
    let (width, height) = (started.width() as u32, started.height() as u32);
    let mut started = started;
    let rows: Vec<[u8; 3]> = started.read_scanlines().ok()?;
    started.finish().ok()?;
    RgbImage::from_raw(width, height, rows.into_iter().flatten().collect())
}

/// Lossless PNG of `rgb`, fast to make (zlib's fastest level, adaptive filters): what the
/// gateway sends a worker in place of an image it resized.
pub fn encode_png(rgb: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut png = Vec::with_capacity(rgb.as_raw().len() / 2);
    let encoder =
        PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive);
    image::ImageEncoder::write_image(
        encoder,
        rgb.as_raw(),
        rgb.width(),
        rgb.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(png)
}

/// Resizes `src` to `width` × `height` as `how`'s reference does; a side that keeps its size is
/// not resampled (both references skip that pass, and it would be the identity anyway).
pub fn resize(src: &RgbImage, width: usize, height: usize, how: Resample) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let plan = |in_size, out_size| match how {
        Resample::Torchvision => torchvision::taps(in_size, out_size),
        Resample::Pil => pil::taps(in_size, out_size),
    };
    let src = src.as_raw().as_slice();
    let data = match (width != in_w, height != in_h) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal(src, in_w, in_h, &plan(in_w, width)),
        (false, true) => vertical(src, in_w, &plan(in_h, height)),
        (true, true) if how == Resample::Pil && pil::vertical_first(in_w, in_h, width, height) => {
            let tall = vertical(src, in_w, &plan(in_h, height));
            horizontal(&tall, in_w, height, &plan(in_w, width))
        }
        (true, true) => {
            let wide = horizontal(src, in_w, in_h, &plan(in_w, width));
            vertical(&wide, width, &plan(in_h, height))
        }
    };
    RgbImage::from_raw(width as u32, height as u32, data)
        .expect("resize output has width*height*3 bytes; this is a bug")
}

/// One axis' resampling plan: for each output pixel, the first input index and the number of
/// taps, with `ksize` fixed-point weights each at `precision` fractional bits.
struct Taps {
    ksize: usize,
    precision: u32,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Taps {
    fn of(&self, out: usize) -> (usize, &[i32]) {
        let (first, n) = self.bounds[out];
        (first, &self.weights[out * self.ksize..out * self.ksize + n])
    }

    /// Sum of `pixels[i] · weight[i]` with the references' rounding: start at one half, shift
    /// right, clip to uint8. The products fit i64 whatever the precision.
    fn apply(&self, acc: [i64; 3]) -> [u8; 3] {
        acc.map(|s| (s >> self.precision).clamp(0, 255) as u8)
    }

    fn half(&self) -> i64 {
        (1i64 << self.precision) >> 1
    }
}

fn horizontal(src: &[u8], in_w: usize, rows: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.bounds.len();
    let mut out = Vec::with_capacity(out_w * rows * 3);
    for row in src.chunks_exact(in_w * 3).take(rows) {
        for xx in 0..out_w {
            let (first, k) = taps.of(xx);
            let mut acc = [taps.half(); 3];
            for (p, &w) in row[first * 3..].chunks_exact(3).zip(k) {
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a += i64::from(v) * i64::from(w);
                }
            }
            out.extend_from_slice(&taps.apply(acc));
        }
    }
    out
}

fn vertical(src: &[u8], width: usize, taps: &Taps) -> Vec<u8> {
    let stride = width * 3;
    let out_h = taps.bounds.len();
    let mut out = Vec::with_capacity(stride * out_h);
    let mut acc = vec![0i64; stride];
    for yy in 0..out_h {
        let (first, k) = taps.of(yy);
        acc.fill(taps.half());
        for (y, &w) in k.iter().enumerate() {
            let row = &src[(first + y) * stride..(first + y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i64::from(v) * i64::from(w);
            }
        }
        for px in acc.chunks_exact(3) {
            out.extend_from_slice(&taps.apply([px[0], px[1], px[2]]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_half_to_even_and_keeps_the_budget() {
        // 70 px -> 2.5 -> 2 (not 3) -> 56
        assert_eq!(smart_resize(70, 70, 28, 3136, 28224), Ok((56, 56)));
        assert_eq!(smart_resize(200, 300, 28, 3136, 28224), Ok((112, 196)));
        assert_eq!(smart_resize(30, 20, 28, 3136, 28224), Ok((84, 56)));
        assert_eq!(
            smart_resize(1080, 1920, 28, 3136, 12_845_056),
            Ok((1092, 1932))
        );
        assert_eq!(
            smart_resize(4000, 6000, 28, 3136, 12_845_056),
            Ok((2912, 4368))
        );
        assert!(matches!(
            smart_resize(1, 300, 28, 3136, 28224),
            Err(GeometryError::TooElongated { .. })
        ));
        assert!(matches!(
            smart_resize(0, 3, 28, 3136, 28224),
            Err(GeometryError::NoPixels { .. })
        ));
    }

    #[test]
    fn a_side_that_keeps_its_size_is_untouched() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        for how in [Resample::Torchvision, Resample::Pil] {
            assert_eq!(resize(&img, 5, 4, how).as_raw(), img.as_raw());
            let wide = resize(&img, 9, 4, how);
            assert_eq!((wide.width(), wide.height()), (9, 4));
        }
    }

    #[test]
    fn a_flat_image_stays_flat_at_any_scale() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 255]));
        for how in [Resample::Torchvision, Resample::Pil] {
            for (w, h) in [(56, 28), (28, 84), (11, 7), (300, 2)] {
                let out = resize(&img, w, h, how);
                assert!(out.pixels().all(|p| p.0 == [200, 13, 255]), "{how} {w}x{h}");
            }
        }
    }

    #[test]
    fn resample_names_round_trip() {
        for how in [Resample::Torchvision, Resample::Pil] {
            assert_eq!(how.as_str().parse::<Resample>(), Ok(how));
        }
        assert!("lanczos".parse::<Resample>().is_err());
    }
}
