//! The Qwen2 text decoder with M-RoPE, and the per-sequence KV cache.
//!
//! Owns the decoder layers (RMSNorm, q/k/v projections with bias, o without, grouped-query
//! attention, gated MLP), the final norm and the LM head (tied to the embeddings or not). One
//! forward pass takes the tokens of several sequences stacked as `[tokens, hidden]`: every
//! linear layer runs once over the whole stack (this is what makes batched decoding cheap),
//! and attention runs per sequence against that sequence's own [`KvCache`], causal within the
//! new tokens. Grouped-query attention reshapes the queries of a key/value head's group into
//! one matrix instead of repeating keys and values. A decode step on the CPU (one new token
//! per sequence) attends in one pass over all the caches instead (`cached_attention.rs`).

use super::cached_attention::{self, Cached};
use super::layers::{act, linear, rms_norm, softmax_f32, Linear};
use super::rope;
use super::weights::Weights;
use crate::config::TextConfig;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::Module;

/// One layer's keys and values for one sequence: buffers `[kv_heads, capacity, head_dim]`
/// that double when full, the first `len` positions in use. Not `Clone`: appending writes into
/// the buffers in place, so a shallow copy would share them; use [`KvCache::fork`].
#[derive(Debug, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A deep copy (its own buffers).
    pub fn fork(&self) -> Result<KvCache> {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy()).transpose();
        Ok(KvCache {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
        })
    }

    /// Appends `k`, `v` (`[kv_heads, new, head_dim]`); returns all keys and values so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kvh, s, hd) = k.dims3()?;
        let cap = self.k.as_ref().map(|t| t.dim(1)).transpose()?.unwrap_or(0);
        if self.len + s > cap {
            let new_cap = (cap * 2).max(self.len + s).max(16);
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((kvh, new_cap, hd), k.dtype(), k.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => bail!("KV cache buffers missing after growth; this is a bug"),
        };
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len += s;
        Ok((kb.narrow(1, 0, self.len)?, vb.narrow(1, 0, self.len)?))
    }

    /// The whole buffers and the positions in use, for kernels that read them in place.
    fn cached(&self) -> Option<Cached<'_>> {
        Some(Cached {
            k: self.k.as_ref()?,
            v: self.v.as_ref()?,
            len: self.len,
        })
    }
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The text decoder's weights and configuration.
pub(crate) struct TextModel {
    cfg: TextConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    device: Device,
    dtype: DType,
}

impl TextModel {
    pub(crate) fn load(
        w: &Weights,
        cfg: &TextConfig,
        tie: Option<bool>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let embed = w.text("embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("layers.{l}.");
            layers.push(Layer {
                input_norm: w.text(&format!("{p}input_layernorm.weight"), &[h])?,
                post_norm: w.text(&format!("{p}post_attention_layernorm.weight"), &[h])?,
                q: linear(w, false, &format!("{p}self_attn.q_proj"), qd, h, true)?,
                k: linear(w, false, &format!("{p}self_attn.k_proj"), kvd, h, true)?,
                v: linear(w, false, &format!("{p}self_attn.v_proj"), kvd, h, true)?,
                o: linear(w, false, &format!("{p}self_attn.o_proj"), h, qd, false)?,
                gate: linear(w, false, &format!("{p}mlp.gate_proj"), i, h, false)?,
                up: linear(w, false, &format!("{p}mlp.up_proj"), i, h, false)?,
                down: linear(w, false, &format!("{p}mlp.down_proj"), h, i, false)?,
            });
        }
        let tied = tie.unwrap_or(!w.contains("lm_head.weight"));
        let lm_head = if tied {
            embed.clone()
        } else {
            w.get("lm_head.weight", &[cfg.vocab_size, h])?
        };
        Ok(TextModel {
            norm: w.text("norm.weight", &[h])?,
            lm_head: Linear::new(lm_head, None),
            embed,
            layers,
            inv_freq: rope::inv_freq(cfg.rope_theta, cfg.head_dim),
            cfg: cfg.clone(),
            device: device.clone(),
            dtype,
        })
    }

    /// Embeddings `[n, hidden]` of token ids.
    pub(crate) fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&ids, 0)?)
    }

    /// Runs the decoder over `x` `[tokens, hidden]` holding `lens[i]` new tokens of sequence
    /// i in turn, at 3-D `positions`; appends to each sequence's caches (one per layer).
    /// Returns the final-norm hidden states `[tokens, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor,
        positions: &[[i64; 3]],
        caches: &mut [&mut Vec<KvCache>],
        lens: &[usize],
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        if positions.len() != n || lens.iter().sum::<usize>() != n || caches.len() != lens.len() {
            bail!(
                "decoder input: {n} tokens, {} positions, lengths {lens:?}; this is a bug",
                positions.len()
            );
        }
        for c in caches.iter_mut() {
            c.resize_with(self.layers.len(), KvCache::default);
        }
        let (cos, sin) = rope::mrope_tables(
            positions,
            &self.inv_freq,
            &self.cfg.mrope_section,
            &self.device,
            DType::F32,
        )?;
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = x;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps)?;
            let a = self.attention(l, layer, &h, &cos, &sin, caches, lens)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.post_norm, eps)?;
            let h =
                (act(&layer.gate.forward(&h)?, self.cfg.hidden_act)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&h)?)?;
        }
        rms_norm(&x, &self.norm, eps)
    }

    /// Logits `[n, vocab]` (f32) of final hidden states.
    pub(crate) fn logits(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(h)?.to_dtype(DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut Vec<KvCache>],
        lens: &[usize],
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (heads, kvh, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let groups = heads / kvh;
        let rot = |t: Tensor, nh: usize| -> Result<Tensor> {
            let t = t.reshape((n, nh, hd))?.to_dtype(DType::F32)?;
            Ok(rope::apply(&t, cos, sin)?.to_dtype(self.dtype)?)
        };
        let q = rot(layer.q.forward(x)?, heads)?;
        let k = rot(layer.k.forward(x)?, kvh)?;
        let v = layer.v.forward(x)?.reshape((n, kvh, hd))?;
        let scale = (hd as f64).powf(-0.5);
        if self.dtype == DType::F32
            && lens.iter().all(|&s| s == 1)
            && cached_attention::supports(&self.device, groups)
        {
            // A decode step: append each sequence's key and value, then attend in one pass.
            for (i, cache) in caches.iter_mut().enumerate() {
                let one = |t: &Tensor| t.narrow(0, i, 1).and_then(|t| t.transpose(0, 1));
                cache[l].append(&one(&k)?, &one(&v)?)?;
            }
            let cached = caches
                .iter()
                .map(|c| c[l].cached())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow::anyhow!("KV cache empty after append; this is a bug"))?;
            let o = cached_attention::one_token(&q, &cached, scale as f32)?;
            return Ok(layer.o.forward(&o)?);
        }
        let mut outs = Vec::with_capacity(lens.len());
        let mut off = 0;
        for (cache, &s) in caches.iter_mut().zip(lens) {
            let seg = |t: &Tensor| -> Result<Tensor> {
                Ok(t.narrow(0, off, s)?.transpose(0, 1)?.contiguous()?)
            };
            let (qs, ks, vs) = (seg(&q)?, seg(&k)?, seg(&v)?);
            let (kall, vall) = cache[l].append(&ks, &vs)?;
            let total = kall.dim(1)?;
            // [kvh, groups * s, hd] x [kvh, hd, total]
            let qs = qs.reshape((kvh, groups * s, hd))?;
            let mut att = (qs.matmul(&kall.t()?)? * scale)?;
            if s > 1 {
                let past = total - s;
                let mask: Vec<f32> = (0..s)
                    .flat_map(|i| {
                        (0..total).map(move |j| {
                            if j <= past + i {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                let mask =
                    Tensor::from_vec(mask, (s, total), &self.device)?.to_dtype(att.dtype())?;
                att = att
                    .reshape((kvh, groups, s, total))?
                    .broadcast_add(&mask)?
                    .reshape((kvh, groups * s, total))?;
            }
            let att = softmax_f32(&att)?;
            let o = att
                .matmul(&vall)?
                .reshape((heads, s, hd))?
                .transpose(0, 1)?
                .reshape((s, heads * hd))?;
            outs.push(o);
            off += s;
        }
        let o = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        Ok(layer.o.forward(&o)?)
    }
}
