//! The OLMoE forward pass, top to bottom, with the router spy built in.
//!
//! Maths as transformers' `modeling_olmoe.py` (checked against 5.17): pre-norm decoder layers;
//! RMSNorm computed in float32 and cast back before the weight; attention with q/k RMSNorm over the
//! whole projection, then the optional clamp to ±clip_qkv, then NeoX (rotate-half) RoPE from float32
//! tables, causal softmax in float32, scale 1/sqrt(head_dim); a router that is a bias-free linear
//! layer whose logits go through a float32 softmax over all experts, top-k, and a renormalisation only
//! when `norm_topk_prob`; SwiGLU experts mixed with the top-k weights.
//!
//! Tensor names are those of the checkpoint on disk (`model.layers.N.mlp.experts.E.gate_proj.weight`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, D};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::spy::{LayerSelection, RouterEvent, RouterSpy, Step};

#[cfg(any(feature = "cuda", moe_lens_cuda))]
mod fused;

/// Whether CUDA bf16 models run the fused kernels of `kernels/fused.cu` (default on).
static FUSED: AtomicBool = AtomicBool::new(true);
/// Attention scores rounded to bf16 before the softmax, as transformers' eager attention does; off
/// (the default): kept in float32, as its default SDPA kernels do.
static EAGER_SCORES: AtomicBool = AtomicBool::new(false);
/// Session 1's bf16 rounding (candle's fused RMSNorm applying the weight before the cast; expert
/// weights applied before the down projection), kept only to measure the change.
static LEGACY_ROUNDING: AtomicBool = AtomicBool::new(false);

/// Turns the fused CUDA kernels on or off (for comparisons; on by default).
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}
/// Rounds attention scores to bf16 as transformers' eager attention does (default: float32 scores,
/// as its SDPA path). Only matters in bf16/f16.
pub fn set_eager_scores(on: bool) {
    EAGER_SCORES.store(on, Ordering::Relaxed);
}
/// Goes back to session 1's bf16 rounding (for measuring the change only; also turns fusion off).
pub fn set_legacy_rounding(on: bool) {
    LEGACY_ROUNDING.store(on, Ordering::Relaxed);
}
fn legacy() -> bool {
    LEGACY_ROUNDING.load(Ordering::Relaxed)
}

/// Expert `e` of a layer's stacked quantized experts, expanded by our kernels into `dtype` (bf16
/// as the fused path rounds its weights; f32 exactly as ggml dequantizes; f16 through f32):
/// `([2I, H]` gate rows then up rows, `[H, I]` down).
#[cfg(any(feature = "cuda", moe_lens_cuda))]
fn dequant_expert(dtype: DType, [gate, up, down]: [&Arc<QTensor>; 3], e: usize, i: usize) -> Result<(Tensor, Tensor)> {
    let via = if dtype == DType::BF16 { DType::BF16 } else { DType::F32 };
    let h = down.shape().dims3()?.1;
    let gu = fused::dequant_experts_as(&[(gate.as_ref(), 0), (up.as_ref(), i)], e, 1, 2 * i, via)?.squeeze(0)?; // [2I, H]
    let d = fused::dequant_experts_as(&[(down.as_ref(), 0)], e, 1, h, via)?.squeeze(0)?; // [H, I]
    Ok((gu.to_dtype(dtype)?, d.to_dtype(dtype)?))
}
#[cfg(not(any(feature = "cuda", moe_lens_cuda)))]
fn dequant_expert(_: DType, _: [&Arc<QTensor>; 3], _: usize, _: usize) -> Result<(Tensor, Tensor)> {
    Err(Error::Unsupported("stacked quantized experts run only in a CUDA build".into()))
}

/// `x @ w.T` for `x` of shape `[.., in]` and a weight `[out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, lead) = dims.split_last().ok_or_else(|| Error::Spy("linear on a scalar".into()))?;
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, *last))?.matmul(&w.t()?)?; // [rows, out]
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dim(0)?);
    Ok(y.reshape(out_dims)?)
}

/// RMSNorm as transformers: normalise in float32, cast back, then multiply by the weight.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cuda() {
            if legacy() {
                return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?);
            }
            // candle's kernel with a unit weight: f32 statistics, one cast back; then the weight in
            // the model dtype, as transformers rounds
            let ones = Tensor::ones(self.weight.dims1()?, x.dtype(), x.device())?;
            let normed = candle_nn::ops::rms_norm(&x.contiguous()?, &ones, self.eps as f32)?;
            return Ok(normed.broadcast_mul(&self.weight)?);
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?; // [.., 1]
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

/// cos/sin tables of NeoX RoPE, float32, `[max_positions, head_dim / 2]`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The same tables cast once to the model dtype (transformers casts them per call).
    cos_d: Tensor,
    sin_d: Tensor,
}

impl Rope {
    fn new(cfg: &Config, device: &Device, dtype: DType) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let d = cfg.head_dim as f32;
        let theta = cfg.rope_theta as f32;
        // inv_freq = 1 / theta^(2i / d), in float32 as transformers computes it
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / d)).collect();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?;
        Ok(Rope { cos_d: cos.to_dtype(dtype)?, sin_d: sin.to_dtype(dtype)?, cos, sin })
    }

    /// Rotates `x` `[B, heads, T, D]` for positions `offset..offset + T`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let (cos, sin) =
            if x.dtype() == self.cos_d.dtype() { (&self.cos_d, &self.sin_d) } else { (&self.cos, &self.sin) };
        let cos = cos.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        let sin = sin.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    /// `[q; k; v]` projection rows in one tensor (fused CUDA path); `q_proj`, `k_proj`, `v_proj`
    /// are then views of it.
    #[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
    qkv: Option<Tensor>,
    q_proj: Tensor,
    k_proj: Tensor,
    v_proj: Tensor,
    o_proj: Tensor,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    clip_qkv: Option<f64>,
}

/// Keys and values of earlier positions, per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `layers` layers.
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![None; layers], len: 0 }
    }
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Attention {
    /// `x` `[B, T, hidden]` → `[B, T, hidden]`. `mask` is additive, float32 `[B, 1, T, S]`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let clip = |y: Tensor| -> Result<Tensor> {
            Ok(match self.clip_qkv {
                Some(c) => y.clamp(-c, c)?,
                None => y,
            })
        };
        // q/k norms span the whole projection (all heads at once), before the clamp
        let q = clip(self.q_norm.forward(&linear(x, &self.q_proj)?)?)?; // [B, T, heads*D]
        let k = clip(self.k_norm.forward(&linear(x, &self.k_proj)?)?)?; // [B, T, kv*D]
        let v = clip(linear(x, &self.v_proj)?)?; // [B, T, kv*D]
        self.attend(q, k, v, rope, offset, mask, cache)
    }

    /// The fused CUDA bf16 path: `x` `[B*T, hidden]` → `[B*T, hidden]` (no KV cache, no clamp).
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    #[allow(clippy::too_many_arguments)]
    fn forward_fused(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        rope: &Rope,
        lens: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = b * t;
        let Some(qkv_w) = &self.qkv else {
            return Err(Error::Device("fused attention without a fused q/k/v weight".into()));
        };
        let (hd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let width = hd + 2 * kvd;
        let qkv = x.matmul(&qkv_w.t()?)?; // [N, hd + 2 kvd]
                                          // q and k norms in one launch: [N, hd] and [N, kvd]
        let (q, _, k) = fused::rmsnorm(
            &qkv,
            n,
            hd,
            width,
            0,
            None,
            &self.q_norm.weight,
            self.q_norm.eps,
            Some((kvd, hd, &self.k_norm.weight)),
        )?;
        let k = k.ok_or_else(|| Error::Device("fused RMSNorm returned no k".into()))?;
        if t <= fused::ATT_MAX_T && self.heads == self.kv_heads && self.head_dim == fused::ATT_D {
            let eager = EAGER_SCORES.load(Ordering::Relaxed);
            let out = fused::attention(
                (&q, hd, 0),
                (&k, kvd, 0),
                (&qkv, width, hd + kvd),
                &rope.cos_d,
                &rope.sin_d,
                lens,
                b,
                t,
                self.heads,
                eager,
            )?;
            return linear(&out, &self.o_proj); // [N, hidden]
        }
        let v = qkv.narrow(1, hd + kvd, kvd)?.reshape((b, t, kvd))?;
        let out = self.attend(q.reshape((b, t, hd))?, k.reshape((b, t, kvd))?, v, rope, 0, mask, None)?;
        Ok(out.reshape((n, hd))?)
    }

    /// Attention from projected, normed q, k, v `[B, T, heads*D]` (not yet rotated).
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let q = q.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2)?; // [B, heads, T, D]
        let k = k.reshape((b, t, self.kv_heads, self.head_dim))?.transpose(1, 2)?; // [B, kv, T, D]
        let v = v.reshape((b, t, self.kv_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?;
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;

        let (k, v) = match cache {
            Some(slot) => {
                let kv = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?), // [B, kv, S, D]
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let s = k.dim(2)?;
        let rep = self.heads / self.kv_heads;
        let repeat = |y: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(y);
            }
            // [B, kv, S, D] -> [B, kv, rep, S, D] -> [B, heads, S, D]; head h reads kv head h / rep
            Ok(y.unsqueeze(2)?.expand((b, self.kv_heads, rep, s, self.head_dim))?.reshape((
                b,
                self.heads,
                s,
                self.head_dim,
            ))?)
        };
        let k = repeat(k)?;
        let v = repeat(v)?;

        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = if q.dtype() == DType::F32 || legacy() || EAGER_SCORES.load(Ordering::Relaxed) {
            // eager attention: q·k in the model dtype, scaled, then float32
            (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?
        } else {
            // SDPA keeps scores in float32
            let q32 = q.to_dtype(DType::F32)?.contiguous()?;
            (q32.matmul(&k.t()?.to_dtype(DType::F32)?.contiguous()?)? * scale)?
        }; // [B, heads, T, S] f32
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?; // [B, heads, T, D]
        let out = out.transpose(1, 2)?.reshape((b, t, self.heads * self.head_dim))?; // [B, T, hidden]
        linear(&out, &self.o_proj)
    }
}

/// Tokens (rows of one forward call) up to which the CUDA bf16/f16 path runs every expert densely
/// through cuBLAS (all weights are read once either way, and the dense pass has no sort); above it,
/// the chosen (token, expert) pairs are grouped by expert (fused path: batched matmuls; otherwise
/// one matmul per used expert). H200 sweep (BENCHMARKS.md): dense faster up to 256 rows, grouped
/// from 512; change it with [`set_dense_max_tokens`].
static DENSE_MAX_TOKENS: AtomicUsize = AtomicUsize::new(256);
/// Below this many rows the grouped path runs instead (a decode step touches only k experts).
/// Measured on an H200 (BENCHMARKS.md): even at 1 row the dense pass was faster (5.7 vs 6.6 ms per
/// forward); so 1.
static DENSE_MIN_TOKENS: AtomicUsize = AtomicUsize::new(1);
/// Rows from which the quantized CUDA path expands its experts to bf16 (a few experts at a time,
/// [`DEQUANT_EXPERTS`]) and runs the bf16 path's batched matmuls, instead of our matmul that reads
/// the blocks directly (`ml_qmm_*`): from a few dozen rows nearly every expert is read anyway, and
/// the matrix units then do the work (BENCHMARKS.md has the sweep).
static DEQUANT_MIN_TOKENS: AtomicUsize = AtomicUsize::new(40);
/// Experts expanded to bf16 at once on that path: 16 × (2·1024 + 1024) × 2048 × 2 bytes = 192 MiB
/// for OLMoE, on top of the 4-bit weights.
#[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
const DEQUANT_EXPERTS: usize = 16;
/// Rows per call of that path: the grouped activations and outputs (`[E, C, H]` each, C about
/// rows × k / E) stay near 2 × 4096 × 8 × 2048 × 2 bytes = 256 MiB however long the batch.
#[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
const DEQUANT_MAX_ROWS: usize = 4096;

/// Sets the dense/grouped switch of the CUDA bf16 path (see `DENSE_MAX_TOKENS`); 0 always groups.
pub fn set_dense_max_tokens(n: usize) {
    DENSE_MAX_TOKENS.store(n, Ordering::Relaxed);
}
/// Sets the rows below which the CUDA bf16 path groups even short inputs (decode steps).
pub fn set_dense_min_tokens(n: usize) {
    DENSE_MIN_TOKENS.store(n, Ordering::Relaxed);
}
/// The current dense/grouped switch.
pub fn dense_max_tokens() -> usize {
    DENSE_MAX_TOKENS.load(Ordering::Relaxed)
}
/// Sets the rows from which the quantized CUDA path expands experts to bf16 (`usize::MAX`: never).
pub fn set_dequant_min_tokens(n: usize) {
    DEQUANT_MIN_TOKENS.store(n, Ordering::Relaxed);
}
/// The current rows from which the quantized CUDA path expands experts to bf16.
pub fn dequant_min_tokens() -> usize {
    DEQUANT_MIN_TOKENS.load(Ordering::Relaxed)
}

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

#[derive(Debug, Clone)]
struct SparseMoe {
    /// Router weight `[experts, hidden]`.
    gate: Tensor,
    /// Fused CUDA path: `[E*2I + E, hidden]`, every expert's gate and up rows, then the router's;
    /// `gate` and the experts' `gate_up` are then views of it.
    #[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
    gate_gu: Option<Tensor>,
    experts: ExpertWeights,
    num_experts: usize,
    intermediate: usize,
    k: usize,
    norm_topk_prob: bool,
}

/// One layer's routing, on the device.
struct RouterOut {
    logits: Tensor,  // [N, E] f32
    probs: Tensor,   // [N, E] f32
    top_k: Tensor,   // [N, k] u32
    weights: Tensor, // [N, k] f32
}

impl RouterOut {
    /// Planar f32 `[logits (N*E) | probs (N*E) | weights (N*k) | ids (N*k)]`, the fused router's layout.
    fn packed(&self) -> Result<Tensor> {
        let f = |t: &Tensor| t.flatten_all();
        Ok(Tensor::cat(
            &[f(&self.logits)?, f(&self.probs)?, f(&self.weights)?, f(&self.top_k.to_dtype(DType::F32)?)?],
            0,
        )?)
    }

    /// Views of one layer's planar routing (see [`RouterOut::packed`]); `top_k` back to u32.
    #[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
    fn from_packed(p: &Tensor, n: usize, e: usize, k: usize) -> Result<Self> {
        Ok(RouterOut {
            logits: p.narrow(0, 0, n * e)?.reshape((n, e))?,
            probs: p.narrow(0, n * e, n * e)?.reshape((n, e))?,
            // a fresh buffer: candle's grouped kernels read raw pointers and ignore a view's offset
            // (`copy` would keep the offset)
            weights: p.narrow(0, 2 * n * e, n * k)?.reshape((n, k))?.force_contiguous()?,
            top_k: p.narrow(0, 2 * n * e + n * k, n * k)?.reshape((n, k))?.to_dtype(DType::U32)?,
        })
    }
}

impl SparseMoe {
    fn route(&self, x: &Tensor) -> Result<RouterOut> {
        let logits = linear(x, &self.gate)?.to_dtype(DType::F32)?; // [N, E]
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let top_k = probs.arg_sort_last_dim(false)?.narrow(1, 0, self.k)?.contiguous()?; // [N, k]
        let mut weights = probs.gather(&top_k, 1)?; // [N, k]
        if self.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        Ok(RouterOut { logits, probs, top_k, weights })
    }

    /// Mixes the chosen experts' outputs for `x` `[N, hidden]` (the path without the fused kernels:
    /// the CPU, float32 and float16 models, and `set_fused(false)`).
    fn experts(&self, x: &Tensor, r: &RouterOut) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        let on_gpu = x.device().is_cuda();
        match &self.experts {
            ExpertWeights::Dense { gate_up, down }
                if on_gpu && n <= dense_max_tokens() && n >= DENSE_MIN_TOKENS.load(Ordering::Relaxed) =>
            {
                self.dense_all(x, r, gate_up, down)
            }
            ExpertWeights::Dense { gate_up, down } => self.per_expert(x, r, |e, xs| {
                let w = gate_up.get(e)?; // [2I, H]
                let g = candle_nn::ops::silu(&linear(xs, &w.narrow(0, 0, self.intermediate)?)?)?;
                let u = linear(xs, &w.narrow(0, self.intermediate, self.intermediate)?)?;
                linear(&(g * u)?, &down.get(e)?)
            }),
            ExpertWeights::QStacked { gate, up, down } => {
                // bf16 (generation with a KV cache, `set_fused(false)`): the fused path's expert kernels
                #[cfg(any(feature = "cuda", moe_lens_cuda))]
                if x.dtype() == DType::BF16 {
                    return self.quantized_rows(&x.contiguous()?, &r.packed()?, n, [gate, up, down]);
                }
                self.per_expert(x, r, |e, xs| {
                    // this expert's three matrices expanded by our kernels, in the model's dtype
                    let (gu, d) = dequant_expert(x.dtype(), [gate, up, down], e, self.intermediate)?;
                    let g = candle_nn::ops::silu(&linear(xs, &gu.narrow(0, 0, self.intermediate)?)?)?;
                    let u = linear(xs, &gu.narrow(0, self.intermediate, self.intermediate)?)?;
                    linear(&(g * u)?, &d)
                })
            }
            ExpertWeights::QPerExpert(v) => self.per_expert(x, r, |e, xs| {
                let [gq, uq, dq] = v.get(e).ok_or_else(|| Error::Spy(format!("no expert {e}")))?;
                let g = candle_nn::ops::silu(&xs.apply(gq)?)?;
                Ok((g * xs.apply(uq)?)?.apply(dq)?)
            }),
        }
    }

    /// CPU path: one host copy of the chosen ids per layer, then each used expert on its rows.
    fn per_expert(&self, x: &Tensor, r: &RouterOut, f: impl Fn(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
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
            let y = y.broadcast_mul(&w.unsqueeze(1)?)?.to_dtype(DType::F32)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out.to_dtype(x.dtype())?)
    }

    /// CUDA, short inputs: every expert on every row with cuBLAS (the weights are read once, as the
    /// grouped kernel would read nearly all of them anyway), unchosen experts weighted by exactly 0.
    fn dense_all(&self, x: &Tensor, r: &RouterOut, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let (e, i) = (self.num_experts, self.intermediate);
        let gu = x.matmul(&gate_up.reshape((e * 2 * i, h))?.t()?)?; // [N, E*2I]
        let gu = gu.reshape((n, e, 2, i))?;
        let g = candle_nn::ops::silu(&gu.narrow(2, 0, 1)?)?;
        let hid = (g * gu.narrow(2, 1, 1)?)?; // [N, E, 1, I]
        let dense_w = Tensor::zeros((n, e), DType::F32, x.device())?.scatter_add(&r.top_k, &r.weights, 1)?; // [N, E]
        let dense_w = dense_w.to_dtype(x.dtype())?;
        if legacy() {
            let hid = hid.broadcast_mul(&dense_w.reshape((n, e, 1, 1))?)?;
            let hid = hid.reshape((n, e, i))?.transpose(0, 1)?.contiguous()?; // [E, N, I]
            let y = hid.matmul(&down.t()?)?; // [E, N, H]
            return Ok(y.to_dtype(DType::F32)?.sum(0)?.to_dtype(x.dtype())?);
        }
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
    /// ([`Self::expanded`]), long batches in row chunks of the latter.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    fn quantized_rows(&self, x: &Tensor, packed: &Tensor, n: usize, w: [&Arc<QTensor>; 3]) -> Result<Tensor> {
        let (e, k) = (self.num_experts, self.k);
        if n < DEQUANT_MIN_TOKENS.load(Ordering::Relaxed) {
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

    /// The fused CUDA bf16 path: router and experts for `x` `[N, hidden]`; the routing is written
    /// into `packed` (one layer's planar buffer). Short inputs run every expert densely (router
    /// logits from the same matmul as gate/up); longer ones group the pairs by expert and run one
    /// batched matmul per projection over the busiest expert's row count.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    fn moe_fused(&self, x: &Tensor, packed: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let (e, i, k) = (self.num_experts, self.intermediate, self.k);
        let dense = n <= dense_max_tokens() && n >= DENSE_MIN_TOKENS.load(Ordering::Relaxed);
        match (&self.experts, &self.gate_gu) {
            (ExpertWeights::Dense { down, .. }, Some(ggu)) if dense => {
                let w = e * 2 * i + e;
                // (the transposed product W·xᵀ was tried: 13.1 ms per forward against 4.7, H200)
                let out = x.matmul(&ggu.t()?)?; // [N, E*2I + E]: gate/up of every expert, then the router
                fused::route(&out, w, 1, e * 2 * i, n, e, packed, k, self.norm_topk_prob)?;
                let hid = fused::swiglu(&out, n, e, i, w, 0, 1)?; // [E, N, I]
                let y = hid.matmul(&down.t()?)?; // [E, N, H]
                fused::combine(&y, packed, None, n, e, h, k)
            }
            (ExpertWeights::Dense { gate_up, down }, _) => {
                let logits = x.matmul(&self.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, self.norm_topk_prob)?;
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
                let logits = x.matmul(&self.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, self.norm_topk_prob)?;
                self.quantized_rows(x, packed, n, [gate, up, down])
            }
            (ExpertWeights::QPerExpert(_), _) => {
                let logits = x.matmul(&self.gate.t()?)?; // [N, E]
                fused::route(&logits, e, 1, 0, n, e, packed, k, self.norm_topk_prob)?;
                self.experts(x, &RouterOut::from_packed(packed, n, e, k)?)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    name: String,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: SparseMoe,
}

/// An OLMoE model on one device.
#[derive(Debug, Clone)]
pub struct Olmoe {
    cfg: Config,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    device: Device,
    dtype: DType,
    /// Whether the fused CUDA bf16 kernels can run this model.
    #[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
    fused: bool,
}

/// Memory-mapped safetensors files with a name → file map, for errors that name the file.
pub(crate) struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
}

impl Weights {
    pub(crate) fn open(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::invalid("weights", "no safetensors files given"));
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in paths {
            if !p.exists() {
                return Err(Error::MissingFile {
                    path: p.clone(),
                    what: "weights shard",
                    hint: "the download is incomplete: fetch the model again".into(),
                });
            }
            // SAFETY: the file is memory-mapped read-only; moe-lens never writes model files, and a
            // user who rewrites a checkpoint while it is loaded gets garbage values, not unsafety in
            // our code (candle copies each tensor out of the map when loading).
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| Error::Weights {
                path: p.clone(),
                msg: format!("not a readable safetensors file ({e}); it may be truncated or corrupt: delete it and download it again"),
            })?;
            let i = files.len();
            for (name, _) in st.tensors() {
                index.insert(name, i);
            }
            files.push((p.clone(), st));
        }
        Ok(Weights { files, index, device: device.clone(), dtype })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Loads `name`, checks its shape and converts it to the model's dtype and device.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.get_cpu(name, shape, self.dtype)?.to_device(&self.device)?)
    }

    /// The stored dtype of `name`, if present.
    pub(crate) fn stored_dtype(&self, name: &str) -> Option<DType> {
        let &i = self.index.get(name)?;
        let (_, st) = &self.files[i];
        st.get(name).ok().and_then(|v| DType::try_from(v.dtype()).ok())
    }

    /// The files, for fingerprints and messages.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }

    /// The stored dtype and raw little-endian bytes of `name`, checking its shape.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(DType, &[u8])> {
        let Some(&i) = self.index.get(name) else {
            return Err(self.missing(name));
        };
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: {e}") })?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let dtype = DType::try_from(view.dtype())
            .map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: unsupported dtype ({e})") })?;
        let n: usize = shape.iter().product();
        if view.data().len() != n * dtype.size_in_bytes() {
            return Err(Error::Weights {
                path: path.clone(),
                msg: format!("{name}: {} bytes for {n} values", view.data().len()),
            });
        }
        Ok((dtype, view.data()))
    }

    fn describe_dir(&self) -> PathBuf {
        self.files.first().and_then(|(p, _)| p.parent()).unwrap_or(Path::new(".")).to_path_buf()
    }

    /// The error for a tensor that no weights file holds.
    fn missing(&self, name: &str) -> Error {
        Error::Weights {
            path: self.describe_dir(),
            msg: format!(
                "tensor {name} is in none of the {} weights files; is this an OLMoE checkpoint in the Hub's layout?",
                self.files.len()
            ),
        }
    }

    /// Stacks `names` (all of `part` shape and one stored dtype) into one tensor `[names.len() *
    /// part[0], part[1]]` on the model device in the model dtype: the raw bytes are copied once,
    /// in parallel, into one host buffer, uploaded in one transfer and converted on the device.
    pub(crate) fn stack(&self, names: &[String], part: &[usize]) -> Result<Tensor> {
        let parts = names.iter().map(|n| self.raw(n, part)).collect::<Result<Vec<_>>>()?;
        let Some(&(dtype, _)) = parts.first() else {
            return Err(Error::invalid("weights", "nothing to stack"));
        };
        if parts.iter().any(|(d, _)| *d != dtype) {
            // mixed stored dtypes: one by one
            let ts = names.iter().map(|n| self.get_cpu(n, part, self.dtype)).collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&ts, 0)?.to_device(&self.device)?);
        }
        let shape = (names.len() * part[0], part.iter().skip(1).product::<usize>());
        let t = match dtype {
            DType::BF16 => stack_raw::<half::bf16>(&parts, shape, &self.device)?,
            DType::F16 => stack_raw::<half::f16>(&parts, shape, &self.device)?,
            DType::F32 => stack_raw::<f32>(&parts, shape, &self.device)?,
            _ => {
                let ts = names.iter().map(|n| self.get_cpu(n, part, self.dtype)).collect::<Result<Vec<_>>>()?;
                return Ok(Tensor::cat(&ts, 0)?.to_device(&self.device)?);
            }
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    /// Loads `name` on the CPU in `dtype`, checking its shape.
    pub(crate) fn get_cpu(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let Some(&i) = self.index.get(name) else {
            return Err(self.missing(name));
        };
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: {e}") })?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let t = st
            .load(name, &Device::Cpu)
            .map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: {e}") })?;
        Ok(t.to_dtype(dtype)?)
    }
}

/// Copies equal-sized raw parts (stored as `T`) into one `T` buffer, several threads at once, and
/// makes one tensor of it on `device`.
fn stack_raw<T: candle_core::WithDType>(
    parts: &[(DType, &[u8])],
    shape: (usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let size = std::mem::size_of::<T>();
    let per = parts.first().map_or(0, |(_, b)| b.len());
    if parts.iter().any(|(_, b)| b.len() != per) || per % size != 0 || parts.len() * per != shape.0 * shape.1 * size {
        return Err(Error::invalid("weights", "parts to stack differ in size"));
    }
    let mut buf: Vec<T> = vec![T::zero(); shape.0 * shape.1];
    {
        // SAFETY: T is a plain numeric type (bf16, f16 or f32) of `size` bytes with no invalid bit
        // patterns; the byte view covers exactly the vector's initialised elements and is dropped
        // before the vector is used again.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * size) };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let per_thread = parts.len().div_ceil(threads).max(1);
        std::thread::scope(|sc| {
            for (dst, src) in bytes.chunks_mut(per * per_thread).zip(parts.chunks(per_thread)) {
                sc.spawn(move || {
                    for (d, (_, s)) in dst.chunks_mut(per).zip(src) {
                        d.copy_from_slice(s);
                    }
                });
            }
        });
    }
    Ok(Tensor::from_vec(buf, shape, device)?)
}

fn check_dtype(dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::invalid("dtype", format!("{dtype:?}; use f32, bf16 or f16")));
    }
    Ok(())
}

/// Where a model's tensors come from: names are the checkpoint's (transformers) names.
pub(crate) trait WeightSource {
    /// `name`, checked against `shape`, in the model dtype on the model device.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn has(&self, name: &str) -> bool;
    /// The experts of layer `layer`.
    fn experts(&self, layer: usize) -> Result<ExpertWeights>;
    /// A path for messages.
    fn describe(&self) -> PathBuf;
}

/// Safetensors in full precision, experts stacked for the grouped kernels.
pub(crate) struct DenseSource<'a> {
    pub(crate) w: &'a Weights,
    pub(crate) cfg: &'a Config,
}

/// Checks that layer `l` has no expert beyond the config's count (they would be silently lost).
pub(crate) fn check_expert_count(w: &Weights, cfg: &Config, l: usize) -> Result<()> {
    let e = cfg.num_experts;
    if w.has(&format!("model.layers.{l}.mlp.experts.{e}.gate_proj.weight")) {
        return Err(Error::Config {
            path: PathBuf::from("config.json"),
            msg: format!("num_experts is {e} but the weights have an expert {e} in layer {l}"),
        });
    }
    Ok(())
}

impl WeightSource for DenseSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.w.get(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.w.has(name)
    }
    fn describe(&self) -> PathBuf {
        self.w.paths().first().cloned().unwrap_or_default()
    }
    fn experts(&self, l: usize) -> Result<ExpertWeights> {
        let cfg = self.cfg;
        check_expert_count(self.w, cfg, l)?;
        let (h, i, e) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts);
        let q = |x: usize, p: &str| format!("model.layers.{l}.mlp.experts.{x}.{p}.weight");
        // gate_up [E, 2I, H]: each expert's gate rows, then its up rows; down [E, H, I]
        let gu_names: Vec<String> = (0..e).flat_map(|x| [q(x, "gate_proj"), q(x, "up_proj")]).collect();
        let down_names: Vec<String> = (0..e).map(|x| q(x, "down_proj")).collect();
        Ok(ExpertWeights::Dense {
            gate_up: self.w.stack(&gu_names, &[i, h])?.reshape((e, 2 * i, h))?,
            down: self.w.stack(&down_names, &[h, i])?.reshape((e, h, i))?,
        })
    }
}

impl Olmoe {
    /// Loads a model from its safetensors files (one, or all shards of an index).
    pub fn load(cfg: &Config, weight_files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
        let w = Weights::open(weight_files, device, dtype)?;
        Self::build(cfg, &DenseSource { w: &w, cfg }, device, dtype)
    }

    /// Assembles a model from any weight source (safetensors, quantized, GGUF).
    pub(crate) fn build(cfg: &Config, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
        let (h, e) = (cfg.hidden_size, cfg.num_experts);
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let norm = |name: &str, size: usize| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: w.get(name, &[size])?, eps: cfg.rms_norm_eps })
        };
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let fused = cfg!(any(feature = "cuda", moe_lens_cuda))
            && device.is_cuda()
            && dtype == DType::BF16
            && cfg.clip_qkv.is_none()
            && cfg.num_experts <= 256
            && cfg.num_experts_per_tok <= cfg.num_experts.min(32);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let experts = w.experts(l)?;
            let gate = w.get(&format!("{p}.mlp.gate.weight"), &[e, h])?;
            let (gate, gate_gu, experts) = match experts {
                ExpertWeights::Dense { gate_up, down } if fused => {
                    // one [gate/up of every expert; router] tensor: one matmul for short inputs
                    let (ne, two_i, hh) = gate_up.dims3()?;
                    let ggu = Tensor::cat(&[&gate_up.reshape((ne * two_i, hh))?, &gate], 0)?;
                    drop(gate_up);
                    let gate_up = ggu.narrow(0, 0, ne * two_i)?.reshape((ne, two_i, hh))?;
                    let gate = ggu.narrow(0, ne * two_i, e)?;
                    (gate, Some(ggu), ExpertWeights::Dense { gate_up, down })
                }
                other => (gate, None, other),
            };
            let q_proj = w.get(&format!("{p}.self_attn.q_proj.weight"), &[h, h])?;
            let k_proj = w.get(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?;
            let v_proj = w.get(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?;
            let (qkv, q_proj, k_proj, v_proj) = if fused {
                // one [q; k; v] tensor, the three projections as views of it
                let qkv = Tensor::cat(&[&q_proj, &k_proj, &v_proj], 0)?;
                let (q, k, v) = (qkv.narrow(0, 0, h)?, qkv.narrow(0, h, kv)?, qkv.narrow(0, h + kv, kv)?);
                (Some(qkv), q, k, v)
            } else {
                (None, q_proj, k_proj, v_proj)
            };
            layers.push(DecoderLayer {
                name: Config::router_name(l),
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                self_attn: Attention {
                    qkv,
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj: w.get(&format!("{p}.self_attn.o_proj.weight"), &[h, h])?,
                    q_norm: norm(&format!("{p}.self_attn.q_norm.weight"), h)?,
                    k_norm: norm(&format!("{p}.self_attn.k_norm.weight"), kv)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    clip_qkv: cfg.clip_qkv,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                mlp: SparseMoe {
                    gate,
                    gate_gu,
                    experts,
                    num_experts: e,
                    intermediate: cfg.intermediate_size,
                    k: cfg.num_experts_per_tok,
                    norm_topk_prob: cfg.norm_topk_prob,
                },
            });
        }
        if w.has(&format!("model.layers.{}.input_layernorm.weight", cfg.num_hidden_layers)) {
            return Err(Error::Config {
                path: PathBuf::from("config.json"),
                msg: format!("num_hidden_layers is {} but the weights have more layers", cfg.num_hidden_layers),
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else if w.has("lm_head.weight") {
            w.get("lm_head.weight", &[cfg.vocab_size, h])?
        } else {
            return Err(Error::Weights {
                path: w.describe(),
                msg: "lm_head.weight is missing and tie_word_embeddings is false".into(),
            });
        };
        Ok(Olmoe {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: norm("model.norm.weight", h)?,
            lm_head,
            rope: Rope::new(cfg, device, dtype)?,
            device: device.clone(),
            dtype,
            fused,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A fresh KV cache for [`Olmoe::forward`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Runs the decoder over `input_ids` `[B, T]` (u32) and returns the final normed hidden states
    /// `[B, T, hidden]`.
    ///
    /// - `cache`: keys/values of earlier positions; the new tokens continue them.
    /// - `lengths`: real length of each row when the batch is right-padded (no cache then).
    /// - `spy`: receives each selected layer's routing, tagged `step`.
    ///
    /// On the CPU each event is delivered as its layer runs. On a GPU the routing stays on the device
    /// until the last layer and is then copied to the host in one transfer (one synchronisation per
    /// call), so events arrive after the forward pass, in layer order, with CPU tensors; in batched
    /// calls (`B > 1`) of the fused bf16 path only `top_k` and `weights` are copied, and `logits` and
    /// `probs` are device tensors (read them with `to_vec*` only if you need them).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        lengths: Option<&[usize]>,
        step: Step,
        mut spy: Option<&mut dyn RouterSpy>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t == 0 || b == 0 {
            return Err(Error::EmptyText(" (no tokens to run)"));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if offset + t > self.cfg.max_position_embeddings {
            return Err(Error::TextTooLong { tokens: offset + t, max: self.cfg.max_position_embeddings });
        }
        let max_id = input_ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= self.cfg.vocab_size {
            return Err(Error::invalid(
                "token id",
                format!("{max_id} is outside the vocabulary (size {})", self.cfg.vocab_size),
            ));
        }
        if let Some(l) = lengths {
            if cache.is_some() {
                return Err(Error::invalid("lengths", "padded batches run without a KV cache"));
            }
            if l.len() != b || l.iter().any(|&n| n == 0 || n > t) {
                return Err(Error::invalid("lengths", format!("need {b} lengths in 1..={t}, got {l:?}")));
            }
        }
        let selection = spy.as_ref().map(|s| s.layers()).unwrap_or(LayerSelection::Only(vec![]));
        selection.check(self.layers.len())?;

        #[cfg(any(feature = "cuda", moe_lens_cuda))]
        if self.fused && cache.is_none() && FUSED.load(Ordering::Relaxed) && !legacy() {
            return self.forward_fused(input_ids, b, t, lengths, step, spy, &selection);
        }
        let mask = self.mask(b, t, offset, lengths)?;
        let mut x =
            self.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?; // [B, T, hidden]
        let mut reported = 0usize;
        // off the CPU, routing is kept on the device and copied to the host once, after the last layer
        let on_host = self.device.is_cpu();
        let mut routed: Vec<Tensor> = Vec::new();
        let mut routed_layers: Vec<usize> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().and_then(|c| c.layers.get_mut(l));
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, &self.rope, offset, mask.as_ref(), slot)?;
            x = (x + h)?;

            let h = layer.post_attention_layernorm.forward(&x)?;
            let flat = h.reshape((b * t, self.cfg.hidden_size))?; // [N, hidden]
            let r = layer.mlp.route(&flat)?;
            if let Some(s) = spy.as_mut() {
                if selection.contains(l) && !on_host {
                    routed.push(r.packed()?.flatten_all()?);
                    routed_layers.push(l);
                } else if selection.contains(l) {
                    s.on_route(&RouterEvent {
                        layer: l,
                        name: &layer.name,
                        step,
                        batch: b,
                        seq_len: t,
                        offset,
                        lengths,
                        logits: &r.logits,
                        probs: &r.probs,
                        top_k: &r.top_k,
                        weights: &r.weights,
                    })?;
                    reported += 1;
                }
            }
            let m = layer.mlp.experts(&flat, &r)?;
            x = (x + m.reshape((b, t, self.cfg.hidden_size))?)?;
        }
        if let Some(s) = spy.as_mut() {
            if !routed.is_empty() {
                let host: Vec<f32> = Tensor::cat(&routed, 0)?.to_vec1()?; // the one copy to the host
                reported += self.deliver(&mut **s, &host, &routed_layers, step, b, t, offset, lengths)?;
            }
            let wanted = selection.layers(self.layers.len()).len();
            if reported != wanted {
                return Err(Error::Spy(format!("{wanted} layers were requested but {reported} reported")));
            }
            s.on_step_end(step)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(&x)
    }

    /// Hands routing copied to the host to `spy`: `host` holds, for each of `layers` in turn, the
    /// planar routing of `[logits | probs | weights | ids]` (f32). Events carry CPU tensors.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        spy: &mut dyn RouterSpy,
        host: &[f32],
        layers: &[usize],
        step: Step,
        b: usize,
        t: usize,
        offset: usize,
        lengths: Option<&[usize]>,
    ) -> Result<usize> {
        let (e, k, n) = (self.cfg.num_experts, self.cfg.num_experts_per_tok, b * t);
        let p = 2 * e + 2 * k;
        for (j, &l) in layers.iter().enumerate() {
            let block = host
                .get(j * n * p..(j + 1) * n * p)
                .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing from the host copy")))?;
            // planar: logits, probs, weights, ids
            let (logits, rest) = block.split_at(n * e);
            let (probs, rest) = rest.split_at(n * e);
            let (weights, ids) = rest.split_at(n * k);
            let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
            let cpu = Device::Cpu;
            let layer = self.layers.get(l).ok_or_else(|| Error::Spy(format!("no layer {l}")))?;
            spy.on_route(&RouterEvent {
                layer: l,
                name: &layer.name,
                step,
                batch: b,
                seq_len: t,
                offset,
                lengths,
                logits: &Tensor::from_slice(logits, (n, e), &cpu)?,
                probs: &Tensor::from_slice(probs, (n, e), &cpu)?,
                top_k: &Tensor::from_vec(ids, (n, k), &cpu)?,
                weights: &Tensor::from_slice(weights, (n, k), &cpu)?,
            })?;
        }
        Ok(layers.len())
    }

    /// The fused CUDA bf16 forward (no KV cache): RMSNorm with the residual add, one q/k/v matmul,
    /// one attention kernel for short inputs, one router kernel writing every layer's routing into
    /// one buffer, SwiGLU and the expert mix as single kernels; one host copy of the routing at the end.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    #[allow(clippy::too_many_arguments)]
    fn forward_fused(
        &self,
        input_ids: &Tensor,
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        step: Step,
        mut spy: Option<&mut dyn RouterSpy>,
        selection: &LayerSelection,
    ) -> Result<Tensor> {
        let (hs, e, k) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.num_experts_per_tok);
        let n = b * t;
        let p = 2 * e + 2 * k;
        let mut x = self.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?; // [N, hidden]
        let lens = match lengths {
            Some(l) => Some(Tensor::from_vec(l.iter().map(|&v| v as u32).collect::<Vec<_>>(), l.len(), &self.device)?),
            None => None,
        };
        // the attention kernel takes heads of 128, no grouped kv heads, up to ATT_MAX_T positions;
        // otherwise candle's ops run, and they need the mask
        let cfg = &self.cfg;
        let fused_attention =
            t <= fused::ATT_MAX_T && cfg.num_attention_heads == cfg.num_key_value_heads && cfg.head_dim == fused::ATT_D;
        let mask = if fused_attention { None } else { self.mask(b, t, 0, lengths)? };
        let routing = fused::alloc_f32(&x, &[self.layers.len(), n * p])?; // every layer's routing
        let mut pending: Option<Tensor> = None; // the last expert output, not yet added
        for (l, layer) in self.layers.iter().enumerate() {
            let ln = &layer.input_layernorm;
            let (h, sum, _) = fused::rmsnorm(&x, n, hs, hs, 0, pending.as_ref(), &ln.weight, ln.eps, None)?;
            if let Some(s) = sum {
                x = s;
            }
            let att = layer.self_attn.forward_fused(&h, b, t, &self.rope, lens.as_ref(), mask.as_ref())?; // [N, hidden]
            let ln = &layer.post_attention_layernorm;
            let (h, sum, _) = fused::rmsnorm(&x, n, hs, hs, 0, Some(&att), &ln.weight, ln.eps, None)?;
            x = sum.ok_or_else(|| Error::Device("fused RMSNorm returned no sum".into()))?;
            let packed = routing.get(l)?; // this layer's routing, a view
            pending = Some(layer.mlp.moe_fused(&h, &packed)?);
        }
        let (out, _, _) = fused::rmsnorm(&x, n, hs, hs, 0, pending.as_ref(), &self.norm.weight, self.norm.eps, None)?;
        if let Some(s) = spy.as_mut() {
            let wanted = selection.layers(self.layers.len());
            if b > 1 && !wanted.is_empty() {
                // batches: only the choices and weights come to the host (one copy); logits and
                // probabilities stay on the device as views, read only by spies that ask for them
                let l_all = self.layers.len();
                let choices = routing.narrow(1, 2 * n * e, 2 * n * k)?.contiguous()?; // [L, 2Nk]
                let host: Vec<f32> = choices.flatten_all()?.to_vec1()?;
                let cpu = Device::Cpu;
                for &l in &wanted {
                    let block = host
                        .get(l * 2 * n * k..(l + 1) * 2 * n * k)
                        .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing")))?;
                    let (weights, ids) = block.split_at(n * k);
                    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
                    let dev_rows = routing.get(l)?;
                    let layer = self.layers.get(l).ok_or_else(|| Error::Spy(format!("no layer {l} of {l_all}")))?;
                    s.on_route(&RouterEvent {
                        layer: l,
                        name: &layer.name,
                        step,
                        batch: b,
                        seq_len: t,
                        offset: 0,
                        lengths,
                        logits: &dev_rows.narrow(0, 0, n * e)?.reshape((n, e))?,
                        probs: &dev_rows.narrow(0, n * e, n * e)?.reshape((n, e))?,
                        top_k: &Tensor::from_vec(ids, (n, k), &cpu)?,
                        weights: &Tensor::from_slice(weights, (n, k), &cpu)?,
                    })?;
                }
            } else if wanted.len() == self.layers.len() {
                // the one copy to the host: all layers' routing at once
                let host: Vec<f32> = routing.flatten_all()?.to_vec1()?;
                self.deliver(&mut **s, &host, &wanted, step, b, t, 0, lengths)?;
            } else if !wanted.is_empty() {
                let host: Vec<f32> = routing.flatten_all()?.to_vec1()?;
                let mut picked = Vec::with_capacity(wanted.len() * n * p);
                for &l in &wanted {
                    let block = host
                        .get(l * n * p..(l + 1) * n * p)
                        .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing")))?;
                    picked.extend_from_slice(block);
                }
                self.deliver(&mut **s, &picked, &wanted, step, b, t, 0, lengths)?;
            }
            s.on_step_end(step)?;
        }
        Ok(out.reshape((b, t, hs))?)
    }

    /// Next-token logits (float32) from final hidden states `[B, T, hidden]`, for the last position.
    pub fn next_token_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        let Some(last_pos) = t.checked_sub(1) else {
            return Err(Error::EmptyText(" (no positions to predict from)"));
        };
        let last = hidden.narrow(1, last_pos, 1)?.squeeze(1)?; // [B, hidden]
        Ok(linear(&last, &self.lm_head)?.to_dtype(DType::F32)?) // [B, vocab]
    }

    /// Additive float32 mask `[B, 1, T, S]`: causal, plus padded keys when `lengths` is given.
    /// `None` when nothing needs masking (a single new token with no padding).
    fn mask(&self, b: usize, t: usize, offset: usize, lengths: Option<&[usize]>) -> Result<Option<Tensor>> {
        if t == 1 && lengths.is_none() {
            return Ok(None);
        }
        let s = offset + t;
        let mut m = vec![0f32; b * t * s];
        for bi in 0..b {
            let len = lengths.and_then(|l| l.get(bi).copied()).unwrap_or(s);
            for i in 0..t {
                for j in 0..s {
                    if j > offset + i || j >= len {
                        m[(bi * t + i) * s + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, t, s), &self.device)?))
    }
}
