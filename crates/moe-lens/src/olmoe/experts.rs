//! The experts of one layer: how they are stored ([`ExpertWeights`]) and the strategies that run
//! them. The reference maths is `Experts::forward` in `mod.rs`; every strategy
//! here computes the same SwiGLU mix, `sum_k w_k · down(silu(gate(x)) * up(x))`, and differs only
//! in how the work is laid out on the device:
//!
//! - `per_expert`: each used expert on its rows (the CPU, and the GPU above
//!   `Tuning::dense_max_tokens` without the fused kernels);
//! - `dense_all`: every expert on every row through cuBLAS, unchosen ones weighted by 0 (GPU, short
//!   inputs);
//! - quantized experts on CUDA: `short_quantized` (our matmul reading the ggml blocks), `expanded`
//!   (16 experts at a time expanded to bf16 for cuBLAS), `quantized_rows` choosing between them;
//! - `moe_fused`: router and experts of the fused CUDA bf16 forward.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Tensor};

#[cfg(any(feature = "cuda", moe_lens_cuda))]
use super::fused;
use super::{Experts, RouterOut};
#[cfg(any(feature = "cuda", moe_lens_cuda))]
use super::{SparseMoe, Tuning};
#[cfg(not(any(feature = "cuda", moe_lens_cuda)))]
use crate::error::Error;
use crate::error::Result;
#[cfg(any(feature = "cuda", moe_lens_cuda))]
use crate::intervene::RoutePlan;

/// The experts of one layer, in one of three storage forms.
#[derive(Clone)]
pub(crate) enum ExpertWeights {
    /// Full precision, stacked: `gate_up` `[E, 2I, H]` (each expert's gate rows, then its up rows),
    /// `down` `[E, H, I]` — the `[E, N, K]` layout of candle's grouped kernel.
    Dense { gate_up: Tensor, down: Tensor },
    /// Quantized and stacked (CUDA): `gate`, `up` `[E, I, H]`, `down` `[E, H, I]`.
    QStacked { gate: Arc<QTensor>, up: Arc<QTensor>, down: Arc<QTensor> },
    /// Quantized, one matmul per expert (CPU): `[gate, up, down]`.
    QPerExpert(Vec<[QMatMul; 3]>),
}

impl std::fmt::Debug for ExpertWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpertWeights::Dense { gate_up, down } => write!(f, "Dense({:?}, {:?})", gate_up.shape(), down.shape()),
            ExpertWeights::QStacked { gate, .. } => write!(f, "QStacked({:?})", gate),
            ExpertWeights::QPerExpert(v) => write!(f, "QPerExpert({} experts)", v.len()),
        }
    }
}

/// Experts expanded to bf16 at once by `Experts::expanded` (quantized experts on CUDA, batches):
/// 16 × (2·1024 + 1024) × 2048 × 2 bytes = 192 MiB for OLMoE, on top of the 4-bit weights.
#[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
const DEQUANT_EXPERTS: usize = 16;
/// Rows per call of that path: the grouped activations and outputs (`[E, C, H]` each, C about
/// rows × k / E) stay near 2 × 4096 × 8 × 2048 × 2 bytes = 256 MiB however long the batch.
#[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
const DEQUANT_MAX_ROWS: usize = 4096;

/// Expert `e` of a layer's stacked quantized experts, expanded by our kernels into `dtype` (bf16
/// as the fused path rounds its weights; f32 exactly as ggml dequantizes; f16 through f32):
/// `([2I, H]` gate rows then up rows, `[H, I]` down).
#[cfg(any(feature = "cuda", moe_lens_cuda))]
pub(super) fn dequant_expert(
    dtype: DType,
    [gate, up, down]: [&Arc<QTensor>; 3],
    e: usize,
    i: usize,
) -> Result<(Tensor, Tensor)> {
    let via = if dtype == DType::BF16 { DType::BF16 } else { DType::F32 };
    let h = down.shape().dims3()?.1;
    let gu = fused::dequant_experts_as(&[(gate.as_ref(), 0), (up.as_ref(), i)], e, 1, 2 * i, via)?.squeeze(0)?; // [2I, H]
    let d = fused::dequant_experts_as(&[(down.as_ref(), 0)], e, 1, h, via)?.squeeze(0)?; // [H, I]
    Ok((gu.to_dtype(dtype)?, d.to_dtype(dtype)?))
}
#[cfg(not(any(feature = "cuda", moe_lens_cuda)))]
pub(super) fn dequant_expert(_: DType, _: [&Arc<QTensor>; 3], _: usize, _: usize) -> Result<(Tensor, Tensor)> {
    Err(Error::Unsupported("stacked quantized experts run only in a CUDA build".into()))
}

impl Experts {
    /// CPU path: one host copy of the chosen ids per layer, then each used expert on its rows.
    pub(super) fn per_expert(
        &self,
        x: &Tensor,
        r: &RouterOut,
        f: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let ids: Vec<u32> = r.top_k.flatten_all()?.to_vec1()?;
        // rows and flat (row * k + slot) positions routed to each expert
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.num_experts];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.num_experts];
        for (pos, &e) in ids.iter().enumerate() {
            let e = e as usize;
            if let (Some(rs), Some(ss)) = (rows.get_mut(e), slots.get_mut(e)) {
                rs.push((pos / self.k) as u32);
                ss.push(pos as u32);
            }
        }
        let weights = r.weights.to_dtype(x.dtype())?.flatten_all()?; // [N * k]

        // as transformers: each output times its weight in the model dtype, summed in f32
        let mut out = Tensor::zeros(x.shape(), DType::F32, x.device())?;
        for e in 0..self.num_experts {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), x.device())?;
            let w = weights.index_select(&Tensor::new(slots[e].as_slice(), x.device())?, 0)?; // [m]
            let y = f(e, &x.index_select(&idx, 0)?)?; // [m, hidden]
            let y = y.broadcast_mul(&w.unsqueeze(1)?)?.to_dtype(DType::F32)?; // [m, hidden]
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out.to_dtype(x.dtype())?)
    }

    /// CUDA, short inputs: every expert on every row with cuBLAS (the weights are read once, as the
    /// grouped kernel would read nearly all of them anyway), unchosen experts weighted by exactly 0.
    pub(super) fn dense_all(&self, x: &Tensor, r: &RouterOut, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let (e, i) = (self.num_experts, self.intermediate);
        let gu = x.matmul(&gate_up.reshape((e * 2 * i, h))?.t()?)?; // [N, E*2I]
        let gu = gu.reshape((n, e, 2, i))?; // [N, E, gate|up, I]
        let g = candle_nn::ops::silu(&gu.narrow(2, 0, 1)?)?;
        let hid = (g * gu.narrow(2, 1, 1)?)?; // [N, E, 1, I]
        let dense_w = Tensor::zeros((n, e), DType::F32, x.device())?.scatter_add(&r.top_k, &r.weights, 1)?; // [N, E]
        let dense_w = dense_w.to_dtype(x.dtype())?;
        let hid = hid.reshape((n, e, i))?.transpose(0, 1)?.contiguous()?; // [E, N, I]
        let y = hid.matmul(&down.t()?)?; // [E, N, H]

        // as transformers: each expert's output times its weight in the model dtype, summed in f32
        let y = y.broadcast_mul(&dense_w.t()?.reshape((e, n, 1))?)?;
        Ok(y.to_dtype(DType::F32)?.sum(0)?.to_dtype(x.dtype())?)
    }

    /// Quantized experts for a batch (CUDA): the rows grouped by expert, then 16 experts at a time
    /// expanded to bf16 and run as batched matmuls, as the bf16 path does; `packed` holds the
    /// routing of `x`'s `n` rows.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    fn expanded(&self, x: &Tensor, packed: &Tensor, n: usize, [gate, up, down]: [&Arc<QTensor>; 3]) -> Result<Tensor> {
        let (e, i, k, h) = (self.num_experts, self.intermediate, self.k, x.dim(1)?);
        let fused::Grouped { xg, pos, cap, .. } = fused::group(x, packed, n, e, k)?; // xg [E, C, H]
        let y = Tensor::zeros((e, cap, h), x.dtype(), x.device())?; // [E, C, H], filled in place
        for e0 in (0..e).step_by(DEQUANT_EXPERTS) {
            let ne = DEQUANT_EXPERTS.min(e - e0);
            let gate_up = fused::dequant_experts(&[(gate.as_ref(), 0), (up.as_ref(), i)], e0, ne, 2 * i)?; // [ne, 2I, H]
            let gu = xg.narrow(0, e0, ne)?.matmul(&gate_up.t()?)?; // [ne, C, 2I]
            drop(gate_up);
            let hid = fused::swiglu(&gu, ne * cap, 1, i, 2 * i, 0, 1)?.reshape((ne, cap, i))?;
            drop(gu);
            let down = fused::dequant_experts(&[(down.as_ref(), 0)], e0, ne, h)?; // [ne, H, I]
            y.slice_set(&hid.matmul(&down.t()?)?, 0, e0)?; // [ne, C, H] into experts e0..
        }
        fused::combine(&y.reshape((e * cap, h))?, packed, Some(&pos), n, e, h, k)
    }

    /// Quantized experts on bf16 rows (CUDA), routed in `packed`: short inputs through our matmul
    /// that reads the blocks ([`Self::short_quantized`]), batches expanded to bf16
    /// ([`Self::expanded`]), long batches in row chunks of the latter; the switch is
    /// [`Tuning::dequant_min_tokens`].
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    pub(super) fn quantized_rows(
        &self,
        x: &Tensor,
        packed: &Tensor,
        n: usize,
        w: [&Arc<QTensor>; 3],
        tuning: &Tuning,
    ) -> Result<Tensor> {
        let (e, k) = (self.num_experts, self.k);
        if n < tuning.dequant_min_tokens {
            return self.short_quantized(x, packed, n, w);
        }
        if n <= DEQUANT_MAX_ROWS {
            return self.expanded(x, packed, n, w);
        }
        // long batches in row chunks, so the grouped activations stay bounded
        let mut outs = Vec::new();
        for s in (0..n).step_by(DEQUANT_MAX_ROWS) {
            let m = DEQUANT_MAX_ROWS.min(n - s);
            let part = |start: usize, width: usize| packed.narrow(0, start + s * width, m * width);
            // this chunk's planar routing: logits | probs | weights | ids of rows s..s+m
            let sub =
                Tensor::cat(&[part(0, e)?, part(n * e, e)?, part(2 * n * e, k)?, part(2 * n * e + n * k, k)?], 0)?;
            outs.push(self.expanded(&x.narrow(0, s, m)?, &sub, m, w)?);
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// Quantized experts for short inputs (CUDA): the rows grouped by expert, then our matmul that
    /// reads the quantized blocks directly (`ml_qmm_*`), so each used expert is read once at its
    /// packed size and unused experts not at all; `packed` holds the routing of `x`'s `n` rows.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    fn short_quantized(
        &self,
        x: &Tensor,
        packed: &Tensor,
        n: usize,
        [gate, up, down]: [&Arc<QTensor>; 3],
    ) -> Result<Tensor> {
        let (e, i, k, h) = (self.num_experts, self.intermediate, self.k, x.dim(1)?);
        let g = fused::group(x, packed, n, e, k)?; // xg [E, C, H]
        let gu = fused::qmm(&[(gate.as_ref(), 0), (up.as_ref(), i)], &g.xg, &g.counts, 2 * i)?; // [E, C, 2I]
        let hid = fused::swiglu(&gu, e * g.cap, 1, i, 2 * i, 0, 1)?.reshape((e, g.cap, i))?; // [E, C, I]
        drop(gu);
        let y = fused::qmm(&[(down.as_ref(), 0)], &hid, &g.counts, h)?; // [E, C, H]
        fused::combine(&y.reshape((e * g.cap, h))?, packed, Some(&g.pos), n, e, h, k)
    }
}

#[cfg(any(feature = "cuda", moe_lens_cuda))]
impl SparseMoe {
    /// The fused CUDA bf16 path: router and experts for `x` `[N, hidden]`; the routing is written
    /// into `packed` (one layer's planar buffer). Short inputs run every expert densely (router
    /// logits from the same matmul as gate/up); longer ones group the pairs by expert and run one
    /// batched matmul per projection over the busiest expert's row count.
    pub(super) fn moe_fused(
        &self,
        x: &Tensor,
        packed: &Tensor,
        tuning: &Tuning,
        plan: Option<&RoutePlan>,
    ) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let (e, i, k) = (self.experts.num_experts, self.experts.intermediate, self.experts.k);
        let norm_topk_prob = self.router.norm_topk_prob;
        let dense = n <= tuning.dense_max_tokens;
        match (&self.experts.weights, &self.gate_gu) {
            (ExpertWeights::Dense { down, .. }, Some(ggu)) if dense => {
                let w = e * 2 * i + e;
                // (the transposed product W·xᵀ was tried: 13.1 ms per forward against 4.7, H200)
                let out = x.matmul(&ggu.t()?)?; // [N, E*2I + E]: gate/up of every expert, then the router
                fused::route(&out, w, 1, e * 2 * i, n, e, packed, k, norm_topk_prob, plan)?;
                let hid = fused::swiglu(&out, n, e, i, w, 0, 1)?; // [E, N, I]
                let y = hid.matmul(&down.t()?)?; // [E, N, H]
                fused::combine(&y, packed, None, n, e, h, k)
            }
            (ExpertWeights::Dense { gate_up, down }, _) => {
                let logits = x.matmul(&self.router.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, norm_topk_prob, plan)?;
                if dense {
                    let gu = x.matmul(&gate_up.reshape((e * 2 * i, h))?.t()?)?; // [N, E*2I]
                    let hid = fused::swiglu(&gu, n, e, i, e * 2 * i, 0, 1)?;
                    let y = hid.matmul(&down.t()?)?;
                    return fused::combine(&y, packed, None, n, e, h, k);
                }
                let fused::Grouped { xg, pos, cap, .. } = fused::group(x, packed, n, e, k)?; // xg [E, C, H]
                let gu = xg.matmul(&gate_up.t()?)?; // [E, C, 2I]
                let hid = fused::swiglu(&gu, e * cap, 1, i, 2 * i, 0, 1)?.reshape((e, cap, i))?;
                let y = hid.matmul(&down.t()?)?; // [E, C, H]
                fused::combine(&y.reshape((e * cap, h))?, packed, Some(&pos), n, e, h, k)
            }
            (ExpertWeights::QStacked { gate, up, down }, _) => {
                let logits = x.matmul(&self.router.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, norm_topk_prob, plan)?;
                self.experts.quantized_rows(x, packed, n, [gate, up, down], tuning)
            }
            (ExpertWeights::QPerExpert(_), _) => {
                let logits = x.matmul(&self.router.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, norm_topk_prob, plan)?;
                self.experts.forward(x, &RouterOut::from_packed(packed, n, e, k)?, tuning)
            }
        }
    }
}
