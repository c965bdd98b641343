//! Rotary position embeddings: the text decoder's M-RoPE and the vision tower's 2-D RoPE.
//!
//! Owns `get_rope_index` (3-D position ids of a prompt: text tokens count up on all three axes,
//! an image's tokens get (t, h, w) = start + (frame, row, col) in merged units, and the text
//! after it resumes at start + max(rows, cols)), the rope delta used while decoding, the
//! cos/sin tables (computed on the host in f32 exactly as transformers does: `f32(pos) *
//! inv_freq` then cos/sin), and applying a table to q/k (`rotate_half` convention).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

/// `1 / base^(2i/dim)` for i in 0..dim/2, in f32 like torch.
pub(crate) fn inv_freq(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| {
            let exp = (2 * i) as f32 / dim as f32;
            1.0f32 / (base as f32).powf(exp)
        })
        .collect()
}

/// 3-D position ids of a prompt, `[t, h, w]` per token, and the rope delta
/// (`max position + 1 - prompt length`) that continues them while decoding.
pub fn rope_index(
    input_ids: &[u32],
    image_token_id: u32,
    grids: &[[usize; 3]],
    spatial_merge_size: usize,
) -> Result<(Vec<[i64; 3]>, i64)> {
    let mut pos = Vec::with_capacity(input_ids.len());
    let mut next_image = grids.iter();
    let mut current: i64 = 0;
    let mut i = 0;
    while i < input_ids.len() {
        if input_ids[i] != image_token_id {
            pos.push([current; 3]);
            current += 1;
            i += 1;
            continue;
        }
        let Some(&[t, h, w]) = next_image.next() else {
            bail!(
                "the prompt has more image tokens than its {} image(s) fill",
                grids.len()
            );
        };
        let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
        let n = t * lh * lw;
        if i + n > input_ids.len() || input_ids[i..i + n].iter().any(|&x| x != image_token_id) {
            bail!(
                "an image of grid {t}x{h}x{w} needs {n} consecutive image tokens at position {i}"
            );
        }
        for ti in 0..t {
            for hi in 0..lh {
                for wi in 0..lw {
                    pos.push([
                        current + ti as i64,
                        current + hi as i64,
                        current + wi as i64,
                    ]);
                }
            }
        }
        current += (h.max(w) / spatial_merge_size) as i64;
        i += n;
    }
    if next_image.next().is_some() {
        bail!(
            "the prompt has fewer image tokens than its {} image(s) need",
            grids.len()
        );
    }
    let max = pos
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok((pos, max + 1 - input_ids.len() as i64))
}

/// cos and sin tables `[n, head_dim]` for 3-D positions: rotary frequency j uses the axis
/// (t, h, w) whose `mrope_section` it falls in, and the half-table is repeated twice.
pub(crate) fn mrope_tables(
    positions: &[[i64; 3]],
    inv_freq: &[f32],
    mrope_section: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut axis = Vec::with_capacity(half);
    for (s, &len) in mrope_section.iter().enumerate() {
        axis.extend(std::iter::repeat_n(s % 3, len));
    }
    let mut cos = Vec::with_capacity(positions.len() * half * 2);
    let mut sin = Vec::with_capacity(positions.len() * half * 2);
    for p in positions {
        let freqs: Vec<f32> = (0..half).map(|j| p[axis[j]] as f32 * inv_freq[j]).collect();
        for _ in 0..2 {
            cos.extend(freqs.iter().map(|f| f.cos()));
            sin.extend(freqs.iter().map(|f| f.sin()));
        }
    }
    tables(cos, sin, positions.len(), half * 2, device, dtype)
}

/// The vision tower's cos/sin `[n, head_dim]` for patch (row, col) positions: the quarter-table
/// of rows, then of cols, the half repeated twice.
pub(crate) fn vision_tables(
    positions: &[(usize, usize)],
    inv_freq: &[f32],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let q = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * q * 4);
    let mut sin = Vec::with_capacity(positions.len() * q * 4);
    for &(h, w) in positions {
        let freqs: Vec<f32> = inv_freq
            .iter()
            .map(|f| h as f32 * f)
            .chain(inv_freq.iter().map(|f| w as f32 * f))
            .collect();
        for _ in 0..2 {
            cos.extend(freqs.iter().map(|f| f.cos()));
            sin.extend(freqs.iter().map(|f| f.sin()));
        }
    }
    tables(cos, sin, positions.len(), q * 4, device, DType::F32)
}

fn tables(
    cos: Vec<f32>,
    sin: Vec<f32>,
    n: usize,
    dim: usize,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let cos = Tensor::from_vec(cos, (n, dim), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, dim), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// `x * cos + rotate_half(x) * sin` for x `[n, heads, head_dim]` and tables `[n, head_dim]`.
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.unsqueeze(1)?;
    let sin = sin.unsqueeze(1)?;
    Ok((x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_of_one_image() {
        // text, vision_start, 2x3 merged image (grid 1x4x6), vision_end, text
        let img = 9;
        let mut ids = vec![1, 2];
        ids.extend(std::iter::repeat_n(img, 6));
        ids.extend([3, 4]);
        let (pos, delta) = rope_index(&ids, img, &[[1, 4, 6]], 2).expect("valid prompt");
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[7], [2, 3, 4]);
        assert_eq!(pos[8], [5, 5, 5]);
        assert_eq!(delta, 7 - 10);
        assert!(rope_index(&ids, img, &[], 2).is_err());
    }
}
