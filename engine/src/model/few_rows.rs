//! `x · Wᵀ` on the CPU for an `x` of a few rows: the shape of every linear layer in a decode
//! step, where each sequence of the batch adds one row.
//!
//! Candle hands these products to gemm, which serves them badly on both sides of one row:
//! - one row is a matrix-vector product, and gemm's `gemv` runs on one thread, so a batch-1
//!   step used one core of two;
//! - two rows or more take gemm's blocked path, which packs `Wᵀ` into panels on every call:
//!   for a decode step that is every weight of the model read, written and read again, where
//!   the arithmetic on those weights is small (a 768-wide layer at batch 8 does 8 multiply-adds
//!   per weight it loads).
//!
//! This kernel streams `W` once instead. Each thread takes a band of `W`'s rows (output
//! features) and, for four rows at a time, walks them alongside up to three rows of `x`, with
//! twelve accumulators in registers, so each weight is loaded once per three rows of `x` and
//! each `x` value once per four weights (against a two-by-four tile, batch-16 steps are about
//! 10% faster: docs/BENCHMARKS.md). `x` is small (rows × inputs) and stays in cache. The SIMD
//! width is picked at run time (`pulp`: AVX2 and FMA where the CPU has them, scalar code
//! elsewhere), so the binary stays portable.
//!
//! Inputs of more than [`MAX_ROWS`] rows (a prefill) still go to gemm, whose blocking is what
//! a compute-bound product needs.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// The most rows of `x` this kernel takes; taller inputs go to gemm. Decode batches are up to
/// the scheduler's batch size (16 by default); past about 16 rows the weights are reused
/// enough for gemm's packing to pay.
pub(super) const MAX_ROWS: usize = 16;

/// The fewest rows of `W` one task takes: below this, handing work to a thread costs more
/// than the work.
const MIN_TASK_ROWS: usize = 32;

/// `x · wᵀ` for `x` `[m, k]` (m ≤ [`MAX_ROWS`]) and `w` `[n, k]`, both f32 on the CPU;
/// returns `[m, n]`.
pub(super) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(w, &FewRows)
}

struct FewRows;

impl CustomOp2 for FewRows {
    fn name(&self) -> &'static str {
        "few-rows-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if k != wk || m == 0 || m > MAX_ROWS {
            candle_core::bail!("few-rows matmul of [{m}, {k}] by [{n}, {wk}]ᵀ; this is a bug");
        }
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("few-rows matmul needs contiguous inputs; this is a bug");
        };
        let x = &xs.as_slice::<f32>()?[x0..x1];
        let w = &ws.as_slice::<f32>()?[w0..w1];
        Ok((CpuStorage::F32(product(x, w, m, n, k)), Shape::from((m, n))))
    }
}

/// `x · wᵀ` row-major `[m, n]`, from `x` `[m, k]` and `w` `[n, k]` row-major.
pub(super) fn product(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    // Each task writes its band of output features for every row of x: `yt` is `[n, m]`.
    let mut yt = vec![0f32; n * m];
    if k == 0 {
        return yt;
    }
    let band = n
        .div_ceil(4 * rayon::current_num_threads())
        .max(MIN_TASK_ROWS);
    yt.par_chunks_mut(band * m)
        .zip(w.par_chunks(band * k))
        .for_each(|(out, w)| {
            pulp::Arch::new().dispatch(Band { x, w, m, k, out });
        });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; n * m];
    for (o, col) in yt.chunks_exact(m).enumerate() {
        for (b, v) in col.iter().enumerate() {
            y[b * n + o] = *v;
        }
    }
    y
}

/// One band of `W`'s rows against every row of `x`, into `out` (`[rows, m]`), on the calling
/// thread: `x · bandᵀ`, transposed. Run it with `pulp::Arch::dispatch`, or from another
/// kernel's `with_simd`.
pub(super) struct Band<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub out: &'a mut [f32],
}

impl WithSimd for Band<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Band { x, w, m, k, out } = self;
        let mut xr: [&[f32]; MAX_ROWS] = [&[]; MAX_ROWS];
        for (slot, row) in xr.iter_mut().zip(x.chunks_exact(k)) {
            *slot = row;
        }
        let xr = &xr[..m];
        let mut quads = w.chunks_exact(4 * k);
        let mut outs = out.chunks_exact_mut(4 * m);
        for (wq, oq) in (&mut quads).zip(&mut outs) {
            weight_rows::<S, 4>(simd, split(wq, k), xr, oq);
        }
        let (w_last, o_last) = (quads.remainder(), outs.into_remainder());
        match w_last.len() / k {
            3 => weight_rows::<S, 3>(simd, split(w_last, k), xr, o_last),
            2 => weight_rows::<S, 2>(simd, split(w_last, k), xr, o_last),
            1 => weight_rows::<S, 1>(simd, split(w_last, k), xr, o_last),
            _ => {}
        }
    }
}

/// `R` consecutive rows of length `k`.
#[inline(always)]
fn split<const R: usize>(w: &[f32], k: usize) -> [&[f32]; R] {
    std::array::from_fn(|r| &w[r * k..(r + 1) * k])
}

/// `R` rows of `W` against every row of `x`, three rows of `x` at a time; `out` is `[R, m]`.
/// Four weight rows by three input rows is twelve accumulators, one weight and three inputs in
/// registers: the sixteen vector registers of AVX2, seven loads for twelve multiply-adds.
#[inline(always)]
fn weight_rows<S: Simd, const R: usize>(simd: S, w: [&[f32]; R], x: &[&[f32]], out: &mut [f32]) {
    let m = x.len();
    let mut b = 0;
    while b < m {
        let take = match m - b {
            4 => 2, // 2 + 2 rather than 3 + 1
            left => left.min(3),
        };
        match take {
            3 => store(out, m, b, dots::<S, R, 3>(simd, w, rows(x, b))),
            2 => store(out, m, b, dots::<S, R, 2>(simd, w, rows(x, b))),
            _ => store(out, m, b, dots::<S, R, 1>(simd, w, rows(x, b))),
        }
        b += take;
    }
}

#[inline(always)]
fn rows<'a, const B: usize>(x: &[&'a [f32]], from: usize) -> [&'a [f32]; B] {
    std::array::from_fn(|j| x[from + j])
}

#[inline(always)]
fn store<const R: usize, const B: usize>(out: &mut [f32], m: usize, b: usize, d: [[f32; B]; R]) {
    for (r, row) in d.iter().enumerate() {
        out[r * m + b..r * m + b + B].copy_from_slice(row);
    }
}

/// The `R × B` dot products of `R` weight rows with `B` input rows, all of one length.
#[inline(always)]
fn dots<S: Simd, const R: usize, const B: usize>(
    simd: S,
    w: [&[f32]; R],
    x: [&[f32]; B],
) -> [[f32; B]; R] {
    let wv = w.map(|r| S::as_simd_f32s(r));
    let xv = x.map(|r| S::as_simd_f32s(r));
    let lanes = wv[0].0.len();
    let wh: [&[S::f32s]; R] = std::array::from_fn(|r| &wv[r].0[..lanes]);
    let xh: [&[S::f32s]; B] = std::array::from_fn(|j| &xv[j].0[..lanes]);
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; B]; R];
    for i in 0..lanes {
        let xi: [S::f32s; B] = std::array::from_fn(|j| xh[j][i]);
        for r in 0..R {
            let wi = wh[r][i];
            for j in 0..B {
                acc[r][j] = simd.mul_add_e_f32s(wi, xi[j], acc[r][j]);
            }
        }
    }
    let mut d = [[0f32; B]; R];
    for r in 0..R {
        for j in 0..B {
            let tail: f32 = wv[r].1.iter().zip(xv[j].1).map(|(a, b)| a * b).sum();
            d[r][j] = simd.reduce_sum_f32s(acc[r][j]) + tail;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers, so every product and sum is exact in f32 and any summation order gives
    /// the same answer.
    fn ints(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0)
            .collect()
    }

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for b in 0..m {
            for o in 0..n {
                y[b * n + o] = (0..k).map(|i| x[b * k + i] * w[o * k + i]).sum();
            }
        }
        y
    }

    #[test]
    fn equals_the_naive_product_at_every_row_count_and_ragged_sizes() {
        // k: below one SIMD vector, a vector's multiple, and ragged; n: odd (a lone last row),
        // and more than one task's band.
        for &k in &[3usize, 16, 37, 768] {
            for &n in &[1usize, 7, 65, 301] {
                for m in 1..=MAX_ROWS {
                    let (x, w) = (ints(m * k, m), ints(n * k, n + 1));
                    assert_eq!(
                        product(&x, &w, m, n, k),
                        naive(&x, &w, m, n, k),
                        "m={m} n={n} k={k}"
                    );
                }
            }
        }
    }

    #[test]
    fn agrees_with_candle_matmul_on_random_values() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        for &(m, n, k) in &[
            (1usize, 2112usize, 768usize),
            (8, 768, 2112),
            (16, 129, 100),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let ours = matmul_t(&x, &w)?;
            let gemm = x.matmul(&w.t()?)?;
            let diff = (ours - &gemm)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = gemm.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= 1e-5 * scale, "m={m} n={n} k={k}: {diff} of {scale}");
        }
        Ok(())
    }

    #[test]
    fn takes_a_strided_input() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &dev)?.t()?; // [2, 3]
        let w = Tensor::new(&[[1f32, 0.0, 1.0]], &dev)?;
        let y = matmul_t(&x, &w)?.to_vec2::<f32>()?;
        assert_eq!(y, vec![vec![6.0], vec![8.0]]);
        Ok(())
    }
}
