//! The layers the vision tower (`vision.rs`) and the text decoder (`text.rs`) share: linear
//! layers read from the checkpoint (a decode step's few rows through `few_rows.rs`), RMSNorm,
//! the activations, and softmax in f32.

use super::few_rows;
use super::weights::Weights;
use crate::config::Activation;
use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::Module;

/// A linear layer, `x · Wᵀ + b`, with `W` `[out, inp]`.
///
/// On the CPU in f32, an input of a few rows (every linear layer of a decode step) takes the
/// [`few_rows`](super::few_rows) kernel, which streams `W` once on every thread; taller inputs
/// (a prefill) and other devices or dtypes take Candle's `matmul`.
#[derive(Debug, Clone)]
pub(super) struct Linear {
    inner: candle_nn::Linear,
    /// Whether few-row inputs take the few-rows kernel (f32 weights on the CPU).
    few_rows: bool,
}

impl Linear {
    pub(super) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let few_rows =
            weight.device().is_cpu() && weight.dtype() == DType::F32 && weight.rank() == 2;
        Linear {
            inner: candle_nn::Linear::new(weight, bias),
            few_rows,
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.inner.weight();
        let (out, inp) = w.dims2()?;
        let rows = x.elem_count() / inp.max(1);
        if !self.few_rows || x.dtype() != DType::F32 || rows > few_rows::MAX_ROWS || rows == 0 {
            return self.inner.forward(x);
        }
        let mut y = few_rows::matmul_t(&x.reshape((rows, inp))?, w)?;
        if let Some(b) = self.inner.bias() {
            y = y.broadcast_add(b)?;
        }
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        y.reshape(shape)
    }
}

/// A linear layer `name.weight` `[out, inp]` (and `name.bias`) of the vision tower or decoder.
pub(super) fn linear(
    w: &Weights,
    vision: bool,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear> {
    let get = |suffix: &str, shape: &[usize]| {
        let n = format!("{name}.{suffix}");
        if vision {
            w.vision(&n, shape)
        } else {
            w.text(&n, shape)
        }
    };
    let weight = get("weight", &[out, inp])?;
    let bias = if bias {
        Some(get("bias", &[out])?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// RMSNorm over the last dim (Candle's fused kernel; composed of plain ops for f64, which the
/// kernel lacks).
pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if x.dtype() == DType::F64 {
        let var = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let inv = (var + eps as f64)?.sqrt()?.recip()?;
        return Ok(x.broadcast_mul(&inv)?.broadcast_mul(weight)?);
    }
    Ok(candle_nn::ops::rms_norm(x, weight, eps)?)
}

/// The activation `a` (`hidden_act` of the config).
pub(super) fn act(x: &Tensor, a: Activation) -> Result<Tensor> {
    Ok(match a {
        Activation::Silu => candle_nn::ops::silu(x)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
    })
}

/// Softmax over the last dim, computed in f32 as transformers does.
pub(super) fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    Ok(candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dt)?)
}
