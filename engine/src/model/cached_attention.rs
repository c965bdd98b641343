//! Attention for a decode step on the CPU: one new token per sequence against that sequence's
//! whole KV cache, every sequence and key/value head at once.
//!
//! Run as tensor operations, each sequence's attention was some twenty Candle ops per layer
//! (narrow, transpose, copy, two matmuls, scale, softmax, reshapes), each allocating its
//! result, and every Candle matmul on the CPU also asks how many cores there are, which
//! without `RAYON_NUM_THREADS` set reads `/proc/cpuinfo`. At batch 16 that was thousands of
//! ops per step for a few hundred kilobytes of keys. Here one pass reads the cache buffers in
//! place: for each (sequence, key/value head), the scores of its query heads against the keys
//! ([`few_rows::Band`](super::few_rows::Band)), softmax in f32, then the weighted sum of the
//! values, with the (sequence, head) pairs spread over rayon's threads.
//!
//! The arithmetic is transformers' eager attention: `softmax(q·kᵀ·scale)` in f32, then times
//! `v`; only the order of the additions differs from a matmul's.

use super::few_rows::{Band, MAX_ROWS};
use candle_core::{Device, Storage, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// One sequence's cache for one layer: the key and value buffers (`[kv_heads, capacity,
/// head_dim]`, f32, on the CPU) and how many positions are in use.
pub(super) struct Cached<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub len: usize,
}

/// Whether [`one_token`] can serve a step with `groups` query heads per key/value head.
pub(super) fn supports(device: &Device, groups: usize) -> bool {
    device.is_cpu() && (1..=MAX_ROWS).contains(&groups)
}

/// The attention output `[n, heads * head_dim]` of `q` (`[n, heads, head_dim]`, f32: sequence
/// i's one new token) against `caches[i]`, which already hold that token's key and value.
pub(super) fn one_token(q: &Tensor, caches: &[Cached<'_>], scale: f32) -> anyhow::Result<Tensor> {
    let (n, heads, hd) = q.dims3()?;
    anyhow::ensure!(caches.len() == n, "{n} queries, {} caches", caches.len());
    let q = q.contiguous()?;
    let q_guard = q.storage_and_layout();
    let q_all = cpu_f32(&q_guard.0, q_guard.1)?;
    // Hold every buffer's read guard for the pass, then borrow their slices.
    let guards = caches
        .iter()
        .map(|c| {
            Ok((
                c.k.storage_and_layout(),
                c.v.storage_and_layout(),
                c.k.dims3()?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seqs = Vec::with_capacity(n);
    for ((kg, vg, (kvh, cap, khd)), c) in guards.iter().zip(caches) {
        anyhow::ensure!(
            *khd == hd && heads % kvh == 0 && c.len <= *cap && c.len > 0,
            "cache [{kvh}, {cap}, {khd}] holding {} for {heads} heads of {hd}",
            c.len
        );
        seqs.push((
            cpu_f32(&kg.0, kg.1)?,
            cpu_f32(&vg.0, vg.1)?,
            c.len,
            *cap,
            *kvh,
        ));
    }
    let kvh = seqs.first().map_or(1, |s| s.4);
    anyhow::ensure!(
        seqs.iter().all(|s| s.4 == kvh),
        "caches of different widths"
    );
    let groups = heads / kvh;
    anyhow::ensure!(
        groups <= MAX_ROWS,
        "{groups} query heads per key/value head"
    );
    let mut out = vec![0f32; n * heads * hd];
    out.par_chunks_mut(groups * hd)
        .enumerate()
        .for_each(|(task, out)| {
            let (i, h) = (task / kvh, task % kvh);
            let (k, v, len, cap, _) = seqs[i];
            let span = h * cap * hd..(h * cap + len) * hd;
            let first = (i * heads + h * groups) * hd;
            pulp::Arch::new().dispatch(Head {
                q: &q_all[first..first + groups * hd],
                k: &k[span.clone()],
                v: &v[span],
                groups,
                hd,
                scale,
                out,
            });
        });
    drop(guards);
    Ok(Tensor::from_vec(out, (n, heads * hd), q.device())?)
}

fn cpu_f32<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> anyhow::Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        anyhow::bail!("cached attention runs on the CPU");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| anyhow::anyhow!("cached attention needs contiguous buffers"))?;
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

/// One key/value head of one sequence: its `groups` query heads against its `len` keys.
struct Head<'a> {
    /// `[groups, hd]`.
    q: &'a [f32],
    /// `[len, hd]`, each.
    k: &'a [f32],
    v: &'a [f32],
    groups: usize,
    hd: usize,
    scale: f32,
    /// `[groups, hd]`, zeroed.
    out: &'a mut [f32],
}

impl WithSimd for Head<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Head {
            q,
            k,
            v,
            groups,
            hd,
            scale,
            out,
        } = self;
        let len = k.len() / hd;
        // Scores `[len, groups]`: every key against every query head of the group.
        let mut p = vec![0f32; len * groups];
        Band {
            x: q,
            w: k,
            m: groups,
            k: hd,
            out: &mut p,
        }
        .with_simd(simd);
        for g in 0..groups {
            let column = p.iter_mut().skip(g).step_by(groups);
            let max = column.fold(f32::NEG_INFINITY, |m, s| m.max(*s * scale));
            let mut sum = 0f32;
            for s in p.iter_mut().skip(g).step_by(groups) {
                *s = (*s * scale - max).exp();
                sum += *s;
            }
            for s in p.iter_mut().skip(g).step_by(groups) {
                *s /= sum;
            }
        }
        // out[g] = Σ_t p[t, g] · v[t]
        for (pt, vt) in p.chunks_exact(groups).zip(v.chunks_exact(hd)) {
            let (vh, vtail) = S::as_simd_f32s(vt);
            for (og, &w) in out.chunks_exact_mut(hd).zip(pt) {
                let wv = simd.splat_f32s(w);
                let (oh, otail) = S::as_mut_simd_f32s(og);
                for (o, x) in oh.iter_mut().zip(vh) {
                    *o = simd.mul_add_e_f32s(wv, *x, *o);
                }
                for (o, x) in otail.iter_mut().zip(vtail) {
                    *o += w * x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    /// The same attention as tensor ops: `softmax(q·kᵀ·scale)·v` per sequence, keys and values
    /// repeated for the query heads of a group (transformers' `repeat_kv`).
    fn reference(q: &Tensor, caches: &[Cached<'_>], scale: f64) -> candle_core::Result<Tensor> {
        let (_, heads, hd) = q.dims3()?;
        let mut outs = Vec::new();
        for (i, c) in caches.iter().enumerate() {
            let kvh = c.k.dim(0)?;
            let rep = |t: &Tensor| -> candle_core::Result<Tensor> {
                let t = t.narrow(1, 0, c.len)?;
                let t = t.unsqueeze(1)?.repeat((1, heads / kvh, 1, 1))?;
                t.reshape((heads, c.len, hd))
            };
            let (k, v) = (rep(c.k)?, rep(c.v)?);
            let qi = q.narrow(0, i, 1)?.transpose(0, 1)?.contiguous()?; // [heads, 1, hd]
            let att = (qi.matmul(&k.t()?)? * scale)?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            outs.push(att.matmul(&v)?.reshape((1, heads * hd))?);
        }
        Tensor::cat(&outs, 0)
    }

    #[test]
    fn equals_tensor_attention_for_sequences_of_different_lengths() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        // hd 72: one SIMD tail; 3 query heads per key/value head; lengths 1 to 37 in a
        // capacity of 40 (the unused positions hold noise that must not be read).
        let (heads, kvh, hd, cap) = (6, 2, 72, 40);
        let lens = [1usize, 5, 37, 16];
        let bufs = lens
            .iter()
            .map(|_| {
                Ok((
                    Tensor::randn(0f32, 1.0, (kvh, cap, hd), &dev)?,
                    Tensor::randn(0f32, 1.0, (kvh, cap, hd), &dev)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let caches: Vec<Cached> = bufs
            .iter()
            .zip(lens)
            .map(|((k, v), len)| Cached { k, v, len })
            .collect();
        let q = Tensor::randn(0f32, 1.0, (lens.len(), heads, hd), &dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let ours = one_token(&q, &caches, scale as f32)?;
        let want = reference(&q, &caches, scale)?;
        let diff = (ours - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max difference {diff}");
        Ok(())
    }

    #[test]
    fn refuses_a_cache_shorter_than_claimed() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let k = Tensor::zeros((1, 4, 8), candle_core::DType::F32, &dev)?;
        let q = Tensor::zeros((1, 2, 8), candle_core::DType::F32, &dev)?;
        let caches = [Cached {
            k: &k,
            v: &k,
            len: 5,
        }];
        assert!(one_token(&q, &caches, 1.0).is_err());
        Ok(())
    }
}
