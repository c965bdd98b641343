//! The Qwen2.5-VL vision tower: patches in, merged image embeddings (in the text model's
//! hidden size) out.
//!
//! Owns the patch embedding (the Conv3d with kernel = stride is one matmul over flattened
//! patches), the window index (`get_window_index`: merged 2x2 units grouped into
//! `window_size`-pixel windows, partial windows at the right/bottom edges, the order undone
//! after the merger), the 2-D rotary table, the blocks (RMSNorm, attention over each window —
//! or over each whole image for `fullatt_block_indexes` — and a gated MLP with biases), and the
//! PatchMerger (RMSNorm, 2x2 concat, Linear-GELU-Linear). Attention never builds a mask: it
//! runs per window, batching runs of consecutive windows of equal length into one matmul.

use super::layers::{act, linear, rms_norm, softmax_f32, Linear};
use super::rope;
use super::weights::Weights;
use crate::config::{Activation, VisionConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::Module;

struct Block {
    norm1: Tensor,
    norm2: Tensor,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The vision tower's weights and configuration.
pub(crate) struct VisionTower {
    cfg: VisionConfig,
    patch_embed: Tensor,
    blocks: Vec<Block>,
    ln_q: Tensor,
    mlp0: Linear,
    mlp2: Linear,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

/// Where each window / image starts and ends in the (window-ordered) patch sequence.
pub(crate) struct Layout {
    /// Merged-unit indices in window order.
    pub window_index: Vec<usize>,
    /// Boundaries of windows, in patches (strictly increasing, starts at 0).
    pub cu_window_seqlens: Vec<usize>,
    /// Boundaries of frames (whole images), in patches.
    pub cu_seqlens: Vec<usize>,
    /// (row, col) of every patch in window order, for the rotary table.
    pub positions: Vec<(usize, usize)>,
}

/// `get_vision_window_index`, `get_vision_cu_seqlens` and `get_vision_position_ids`.
pub(crate) fn layout(grids: &[[usize; 3]], cfg: &VisionConfig) -> Layout {
    let m = cfg.spatial_merge_size;
    let unit = m * m;
    let win = cfg.window_size / m / cfg.patch_size;
    let mut window_index = Vec::new();
    let mut cu_window = vec![0usize];
    let mut cu = vec![0usize];
    let mut unit_pos = Vec::new(); // (row, col) of each merged unit's top-left patch, natural order
    let mut offset = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / m, w / m);
        for _ in 0..t {
            for bh in 0..lh {
                for bw in 0..lw {
                    unit_pos.push((bh * m, bw * m));
                }
            }
            cu.push(cu.last().copied().unwrap_or(0) + h * w);
        }
        let (nwh, nww) = (lh.div_ceil(win), lw.div_ceil(win));
        for ti in 0..t {
            for wh in 0..nwh {
                for ww in 0..nww {
                    let mut n = 0;
                    for r in wh * win..((wh + 1) * win).min(lh) {
                        for c in ww * win..((ww + 1) * win).min(lw) {
                            window_index.push(offset + ti * lh * lw + r * lw + c);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        cu_window.push(cu_window.last().copied().unwrap_or(0) + n * unit);
                    }
                }
            }
        }
        offset += t * lh * lw;
    }
    let mut positions = Vec::with_capacity(window_index.len() * unit);
    for &u in &window_index {
        let (r, c) = unit_pos[u];
        for mh in 0..m {
            for mw in 0..m {
                positions.push((r + mh, c + mw));
            }
        }
    }
    Layout {
        window_index,
        cu_window_seqlens: cu_window,
        cu_seqlens: cu,
        positions,
    }
}

impl VisionTower {
    pub(crate) fn load(
        w: &Weights,
        cfg: &VisionConfig,
        out_dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        if cfg.out_hidden_size != out_dim {
            bail!("config.json: vision out_hidden_size {} differs from the text hidden_size {out_dim}", cfg.out_hidden_size);
        }
        let c = cfg.hidden_size;
        let (p, t, inter) = (
            cfg.patch_size,
            cfg.temporal_patch_size,
            cfg.intermediate_size,
        );
        let patch_dim = cfg.in_channels * t * p * p;
        let patch_embed = w
            .vision("patch_embed.proj.weight", &[c, cfg.in_channels, t, p, p])?
            .reshape((c, patch_dim))?;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let b = format!("blocks.{i}.");
            blocks.push(Block {
                norm1: w.vision(&format!("{b}norm1.weight"), &[c])?,
                norm2: w.vision(&format!("{b}norm2.weight"), &[c])?,
                qkv: linear(w, true, &format!("{b}attn.qkv"), 3 * c, c, true)?,
                proj: linear(w, true, &format!("{b}attn.proj"), c, c, true)?,
                gate: linear(w, true, &format!("{b}mlp.gate_proj"), inter, c, true)?,
                up: linear(w, true, &format!("{b}mlp.up_proj"), inter, c, true)?,
                down: linear(w, true, &format!("{b}mlp.down_proj"), c, inter, true)?,
            });
        }
        let merged = c * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(VisionTower {
            patch_embed,
            blocks,
            ln_q: w.vision("merger.ln_q.weight", &[c])?,
            mlp0: linear(w, true, "merger.mlp.0", merged, merged, true)?,
            mlp2: linear(w, true, "merger.mlp.2", out_dim, merged, true)?,
            inv_freq: rope::inv_freq(cfg.rope_theta, c / cfg.num_heads / 2),
            cfg: cfg.clone(),
            device: device.clone(),
            dtype,
        })
    }

    /// Floats in one row of pixel values.
    pub(crate) fn patch_dim(&self) -> usize {
        self.patch_embed.dim(1).unwrap_or(0)
    }

    /// pixel_values `[patches, patch_dim]` of the images with `grids` -> embeddings
    /// `[patches / merge^2, out_hidden_size]`, images in order.
    pub(crate) fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let m2 = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        if pixel_values.dims() != [n, self.patch_dim()] {
            bail!(
                "pixel_values have shape {:?}, expected [{n}, {}] for grids {grids:?}",
                pixel_values.dims(),
                self.patch_dim()
            );
        }
        for g in grids {
            if !g[1].is_multiple_of(self.cfg.spatial_merge_size)
                || !g[2].is_multiple_of(self.cfg.spatial_merge_size)
            {
                bail!("image grid {g:?} is not a multiple of the spatial merge size");
            }
        }
        let lay = layout(grids, &self.cfg);
        let c = self.cfg.hidden_size;
        let x = pixel_values
            .to_dtype(self.dtype)?
            .matmul(&self.patch_embed.t()?)?;
        let idx = Tensor::from_vec(
            lay.window_index
                .iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>(),
            n / m2,
            &self.device,
        )?;
        let mut x = x
            .reshape((n / m2, m2 * c))?
            .index_select(&idx, 0)?
            .reshape((n, c))?;
        let (cos, sin) = rope::vision_tables(&lay.positions, &self.inv_freq, &self.device)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let cu = if self.cfg.fullatt_block_indexes.contains(&i) {
                &lay.cu_seqlens
            } else {
                &lay.cu_window_seqlens
            };
            let h = rms_norm(&x, &b.norm1, 1e-6)?;
            x = (x + self.attention(b, &h, cu, &cos, &sin)?)?;
            let h = rms_norm(&x, &b.norm2, 1e-6)?;
            let h = (act(&b.gate.forward(&h)?, self.cfg.hidden_act)? * b.up.forward(&h)?)?;
            x = (x + b.down.forward(&h)?)?;
        }
        let x = rms_norm(&x, &self.ln_q, 1e-6)?.reshape((n / m2, m2 * c))?;
        let x = self
            .mlp2
            .forward(&act(&self.mlp0.forward(&x)?, Activation::Gelu)?)?;
        let mut reverse = vec![0u32; lay.window_index.len()];
        for (pos, &u) in lay.window_index.iter().enumerate() {
            reverse[u] = pos as u32;
        }
        let reverse = Tensor::from_vec(reverse, n / m2, &self.device)?;
        Ok(x.index_select(&reverse, 0)?)
    }

    /// Attention within each segment of `cu` (window or whole image).
    fn attention(
        &self,
        b: &Block,
        x: &Tensor,
        cu: &[usize],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let heads = self.cfg.num_heads;
        let hd = self.cfg.hidden_size / heads;
        let qkv = b.qkv.forward(x)?.reshape((n, 3, heads, hd))?;
        let rot = |i: usize| -> Result<Tensor> {
            let t = qkv.narrow(1, i, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
            Ok(rope::apply(&t, cos, sin)?.to_dtype(self.dtype)?)
        };
        let (q, k) = (rot(0)?, rot(1)?);
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?;
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::new();
        let mut s = 0;
        while s + 1 < cu.len() {
            // a run of consecutive segments of the same length, batched
            let len = cu[s + 1] - cu[s];
            let mut e = s + 1;
            while e + 1 < cu.len() && cu[e + 1] - cu[e] == len {
                e += 1;
            }
            let (start, nw) = (cu[s], e - s);
            let part = |t: &Tensor| -> Result<Tensor> {
                Ok(t.narrow(0, start, nw * len)?
                    .reshape((nw, len, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (qs, ks, vs) = (part(&q)?, part(&k)?, part(&v)?);
            let att = (qs.matmul(&ks.t()?)? * scale)?;
            let att = softmax_f32(&att)?;
            let o = att
                .matmul(&vs)?
                .transpose(1, 2)?
                .reshape((nw * len, heads * hd))?;
            outs.push(o);
            s = e;
        }
        let o = Tensor::cat(&outs, 0)?;
        Ok(b.proj.forward(&o)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window_size: usize) -> VisionConfig {
        VisionConfig {
            depth: 1,
            hidden_size: 8,
            intermediate_size: 8,
            num_heads: 1,
            patch_size: 14,
            spatial_merge_size: 2,
            temporal_patch_size: 2,
            window_size,
            fullatt_block_indexes: vec![],
            out_hidden_size: 8,
            in_channels: 3,
            hidden_act: Activation::Silu,
            rope_theta: 10000.0,
        }
    }

    #[test]
    fn window_index_pads_partial_windows() {
        // merged grid 3x5 (patches 6x10), windows of 2x2 merged units
        let lay = layout(&[[1, 6, 10]], &cfg(56));
        assert_eq!(&lay.window_index[..4], &[0, 1, 5, 6]);
        assert_eq!(lay.cu_window_seqlens, vec![0, 16, 32, 40, 48, 56, 60]);
        assert_eq!(lay.cu_seqlens, vec![0, 60]);
        assert_eq!(lay.positions[..5], [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]);
    }
}
