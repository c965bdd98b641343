//! torch's resampling plan for antialiased bicubic on uint8 (`aten/src/ATen/native/cpu/
//! UpSampleKernel.cpp`: `_compute_indices_min_size_weights_aa` and
//! `_compute_index_ranges_int16_weights`, shared by its AVX2 and generic kernels): double
//! weights normalised per output pixel, then int16 at the largest precision (at most 22 bits)
//! for which twice the largest weight of the whole axis still fits 15 bits.

use crate::Taps;

/// torch's `aa_filter` for bicubic (a = -0.5, as Pillow), in its own evaluation order
/// (`cubic_convolution1` and `cubic_convolution2`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

pub(crate) fn taps(in_size: usize, out_size: usize) -> Taps {
    // `area_pixel_compute_scale` with no scale given and align_corners off: in / out, double.
    let scale = in_size as f64 / out_size as f64;
    // Bicubic's `interp_size` is 4: a support of 2, widened by the downscale factor.
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let ksize = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut bounds = Vec::with_capacity(out_size);
    let mut wf = vec![0f64; out_size * ksize];
    let mut wt_max = 0f64;
    for (i, w) in wf.chunks_exact_mut(ksize).enumerate() {
        let center = scale * (i as f64 + 0.5);
        // C++ casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xsize.clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let mut total = 0.0;
        for (j, wj) in w.iter_mut().enumerate().take(n) {
            *wj = bicubic((j as f64 + xmin as f64 - center + 0.5) * invscale);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut().take(n) {
                *wj /= total;
                wt_max = wt_max.max(*wj);
            }
        }
        bounds.push((xmin, n));
    }
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * f64::from(1u32 << (precision + 1))) as i32;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let weights = wf
        .iter()
        .map(|&w| {
            let v = w * f64::from(1u32 << precision);
            // Rounded half away from zero, then stored as int16.
            (if v < 0.0 { -0.5 + v } else { 0.5 + v }) as i32 as i16 as i32
        })
        .collect();
    Taps {
        ksize,
        precision,
        bounds,
        weights,
    }
}
