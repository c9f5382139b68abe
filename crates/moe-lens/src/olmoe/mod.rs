//! The OLMoE forward pass, top to bottom, with the router spy built in.
//!
//! Maths as transformers' `modeling_olmoe.py` (checked against 5.17): pre-norm decoder layers;
//! RMSNorm computed in float32 and cast back before the weight; attention with q/k RMSNorm over the
//! whole projection, then the optional clamp to ±clip_qkv, then NeoX (rotate-half) RoPE from float32
//! tables, causal softmax in float32, scale 1/sqrt(head_dim); a router that is a bias-free linear
//! layer whose logits go through a float32 softmax over all experts, top-k, and a renormalisation only
//! when `norm_topk_prob`; SwiGLU experts mixed with the top-k weights.
//!
//! This file is the reference, in the order a reader holds it next to `modeling_olmoe.py`:
//! `RmsNorm`, `Rope`, `Attention`, `Router`, `Experts`, `DecoderLayer`, [`Olmoe`].
//! Beside it: `experts.rs` (how the experts are stored and the strategies that run them on each
//! device), `weights.rs` (safetensors files and the model builder, [`Olmoe::load`]), `cuda.rs`
//! (routing handed over from the GPU, and the fused CUDA bf16 forward) and `fused/` (the
//! launchers of our CUDA kernels). How the fast paths are chosen is one [`Tuning`] value owned by
//! the model.
//!
//! Tensor names are those of the checkpoint on disk (`model.layers.N.mlp.experts.E.gate_proj.weight`).

use candle_core::{DType, Device, Tensor, D};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::intervene::{Interventions, RoutePlan};
use crate::spy::{LayerSelection, RouterEvent, RouterSpy, Step};

mod cuda;
mod experts;
#[cfg(any(feature = "cuda", moe_lens_cuda))]
mod fused;
mod weights;

use experts::dequant_expert;
pub(crate) use experts::ExpertWeights;
pub(crate) use weights::{check_expert_count, WeightSource, Weights};

/// How the model runs on a GPU: which fast paths are taken, and where the switches between them
/// sit. None of it changes the maths; the paths differ in rounding order only (bf16/f16), and on
/// the CPU only `eager_scores` has an effect. Set it with [`Olmoe::set_tuning`] /
/// [`Olmoe::with_tuning`] or `LoadOptions::tuning`; the defaults follow the H200 sweeps in
/// BENCHMARKS.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Whether CUDA bf16 models run the fused kernels of `kernels/fused.cu` (default on; off runs
    /// candle's own ops, for comparisons). Calls with a KV cache always run candle's ops.
    pub fused: bool,
    /// Attention scores rounded to bf16 before the softmax, as transformers' eager attention does;
    /// off (the default): kept in float32, as its default SDPA kernels do. Only matters in
    /// bf16/f16. On an H200 it raised top-8 agreement with transformers' eager bf16 path to 97.4%
    /// of rows (93.6% against its default SDPA path; BENCHMARKS.md).
    pub eager_scores: bool,
    /// Tokens (rows of one forward call) up to which the CUDA bf16/f16 path runs every expert
    /// densely through cuBLAS (all weights are read once either way, and the dense pass has no
    /// sort); above it, the chosen (token, expert) pairs are grouped by expert (fused path: batched
    /// matmuls; otherwise one matmul per used expert); 0 always groups. H200 sweep (BENCHMARKS.md):
    /// dense faster up to 256 rows, grouped from 512; even at 1 row (a decode step, which touches
    /// only k experts) the dense pass was faster (5.7 vs 6.6 ms per forward). Default 256.
    pub dense_max_tokens: usize,
    /// Rows from which the quantized CUDA path expands its experts to bf16 (16 experts at a time)
    /// and runs the bf16 path's batched matmuls, instead of our matmul that reads the blocks
    /// directly (`ml_qmm_*`): from a few dozen rows nearly every expert is read anyway, and the
    /// matrix units then do the work. H200 sweep (BENCHMARKS.md): the block-reading matmul is
    /// faster up to about 35 tokens, the expansion from 40 (1.6× at 64 tokens, 4.4× at 2,048).
    /// Default 40; `usize::MAX` never expands.
    pub dequant_min_tokens: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { fused: true, eager_scores: false, dense_max_tokens: 256, dequant_min_tokens: 40 }
    }
}

/// `x @ w.T` for `x` of shape `[.., in]` and a weight `[out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, lead) = dims.split_last().ok_or_else(|| Error::Spy("linear on a scalar".into()))?;
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, *last))?.matmul(&w.t()?)?; // [rows, out]
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dim(0)?);
    Ok(y.reshape(out_dims)?) // [.., out]
}

/// RMSNorm as transformers: normalise in float32, cast back, then multiply by the weight.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `x` `[.., size]` → `[.., size]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cuda() {
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
        let cos = Tensor::from_vec(cos, (n, half), device)?; // [max_positions, D/2]
        let sin = Tensor::from_vec(sin, (n, half), device)?; // [max_positions, D/2]
        Ok(Rope { cos_d: cos.to_dtype(dtype)?, sin_d: sin.to_dtype(dtype)?, cos, sin })
    }

    /// Rotates `x` `[B, heads, T, D]` for positions `offset..offset + T`. On a GPU in bf16 with the
    /// fused kernels on, our kernel (`fused::rope`: each product and the sum rounded once, as the
    /// fused attention and transformers' bf16 ops round, and the same in every build); otherwise
    /// candle's.
    fn apply(&self, x: &Tensor, offset: usize, fused: bool) -> Result<Tensor> {
        #[cfg(any(feature = "cuda", moe_lens_cuda))]
        if fused && x.device().is_cuda() && x.dtype() == DType::BF16 && self.cos_d.dtype() == DType::BF16 {
            return fused::rope(x, &self.cos_d, &self.sin_d, offset);
        }
        let _ = fused;
        let t = x.dim(2)?;
        let (cos, sin) =
            if x.dtype() == self.cos_d.dtype() { (&self.cos_d, &self.sin_d) } else { (&self.cos, &self.sin) };
        let cos = cos.narrow(0, offset, t)?.to_dtype(x.dtype())?; // [T, D/2]
        let sin = sin.narrow(0, offset, t)?.to_dtype(x.dtype())?; // [T, D/2]
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
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

/// Self-attention (transformers' `OlmoeAttention`).
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

impl Attention {
    /// `x` `[B, T, hidden]` → `[B, T, hidden]`. `mask` is additive, float32 `[B, 1, T, S]`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        tuning: &Tuning,
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
        self.attend(q, k, v, rope, offset, mask, cache, tuning.eager_scores, tuning.fused)
    }

    /// Attention from projected, normed q, k, v `[B, T, heads*D]` (not yet rotated); `eager`:
    /// scores rounded to the model dtype as transformers' eager attention ([`Tuning::eager_scores`]);
    /// `fused_rope`: our rope kernel on a GPU in bf16 (see [`Rope::apply`]).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        eager: bool,
        fused_rope: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let q = q.reshape((b, t, self.heads, self.head_dim))?.transpose(1, 2)?; // [B, heads, T, D]
        let k = k.reshape((b, t, self.kv_heads, self.head_dim))?.transpose(1, 2)?; // [B, kv, T, D]
        let v = v.reshape((b, t, self.kv_heads, self.head_dim))?.transpose(1, 2)?.contiguous()?; // [B, kv, T, D]
        let q = rope.apply(&q, offset, fused_rope)?;
        let k = rope.apply(&k, offset, fused_rope)?;

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
        let scores = if q.dtype() == DType::F32 || eager {
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

/// The router (transformers' `mlp.gate`): a bias-free linear layer, a float32 softmax over all
/// experts, the top k, and their probabilities as mixing weights, renormalised to sum to 1 only
/// when `norm_topk_prob` (false for OLMoE).
#[derive(Debug, Clone)]
struct Router {
    /// Router weight `[experts, hidden]`.
    gate: Tensor,
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

impl Router {
    /// `x` `[N, hidden]` → the routing of its `N` rows, changed by `plan` where an intervention
    /// applies (see [`crate::intervene`]): `logits` stay the router's own.
    fn forward(&self, x: &Tensor, plan: Option<&RoutePlan>) -> Result<RouterOut> {
        let logits = linear(x, &self.gate)?.to_dtype(DType::F32)?; // [N, E]
        let Some(plan) = plan else {
            let probs = candle_nn::ops::softmax_last_dim(&logits)?; // [N, E]
            let top_k = probs.arg_sort_last_dim(false)?.narrow(1, 0, self.k)?.contiguous()?; // [N, k]
            return self.mix(logits, probs, top_k);
        };
        let (n, e) = logits.dims2()?;
        let (k, dev) = (self.k, logits.device());
        let z = if plan.any_add { logits.add(&Tensor::from_slice(&plan.add, (n, e), dev)?)? } else { logits.clone() };
        let probs = candle_nn::ops::softmax_last_dim(&z)?; // [N, E]: 0 for ablated experts
                                                           // ablated experts rank below every other, even one whose probability underflowed to 0
        let key = if plan.any_add {
            let block: Vec<f32> = plan.add.iter().map(|&a| if a == f32::NEG_INFINITY { a } else { 0.0 }).collect();
            probs.add(&Tensor::from_vec(block, (n, e), dev)?)?
        } else {
            probs.clone()
        };
        let mut top_k = key.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?; // [N, k]
        if plan.any_force {
            // forced rows: their k experts (ascending ids), best first by probability (a stable sort)
            let ids: Vec<u32> =
                plan.forced.iter().enumerate().map(|(j, &v)| if v >= 0 { v as u32 } else { (j % k) as u32 }).collect();
            let ids = Tensor::from_vec(ids, (n, k), dev)?; // [N, k]
            let order = probs.gather(&ids, 1)?.arg_sort_last_dim(false)?; // [N, k]
            let forced = ids.gather(&order, 1)?; // [N, k]
            let rows: Vec<u8> =
                plan.forced.iter().enumerate().map(|(j, _)| u8::from(plan.forced[j - j % k] >= 0)).collect();
            top_k = Tensor::from_vec(rows, (n, k), dev)?.where_cond(&forced, &top_k)?.contiguous()?;
        }
        self.mix(logits, probs, top_k)
    }

    /// The chosen experts' probabilities as mixing weights (renormalised when `norm_topk_prob`).
    fn mix(&self, logits: Tensor, probs: Tensor, top_k: Tensor) -> Result<RouterOut> {
        let mut weights = probs.gather(&top_k, 1)?; // [N, k]
        if self.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        Ok(RouterOut { logits, probs, top_k, weights })
    }
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

/// The experts of one layer (transformers' `mlp.experts`): SwiGLU feed-forward networks,
/// `down(silu(gate(x)) * up(x))`, of which each row runs its router's top k, mixed with their
/// weights. The storage forms and the strategies that run them are in `experts.rs`.
#[derive(Debug, Clone)]
struct Experts {
    weights: ExpertWeights,
    num_experts: usize,
    /// Each expert's hidden size, `I`.
    intermediate: usize,
    k: usize,
}

impl Experts {
    /// Mixes the chosen experts' outputs for `x` `[N, hidden]` routed by `r` → `[N, hidden]` (the
    /// path without the fused kernels: the CPU, float32 and float16 models, generation with a KV
    /// cache, and `Tuning::fused` off).
    fn forward(&self, x: &Tensor, r: &RouterOut, tuning: &Tuning) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        let on_gpu = x.device().is_cuda();
        match &self.weights {
            ExpertWeights::Dense { gate_up, down } if on_gpu && n <= tuning.dense_max_tokens => {
                self.dense_all(x, r, gate_up, down)
            }
            ExpertWeights::Dense { gate_up, down } => self.per_expert(x, r, |e, xs| {
                // the reference: expert e on its rows xs [m, hidden]
                let w = gate_up.get(e)?; // [2I, H]
                let g = candle_nn::ops::silu(&linear(xs, &w.narrow(0, 0, self.intermediate)?)?)?; // [m, I]
                let u = linear(xs, &w.narrow(0, self.intermediate, self.intermediate)?)?; // [m, I]
                linear(&(g * u)?, &down.get(e)?) // [m, hidden]
            }),
            ExpertWeights::QStacked { gate, up, down } => {
                // bf16 (generation with a KV cache, `Tuning::fused` off): the fused path's expert kernels
                #[cfg(any(feature = "cuda", moe_lens_cuda))]
                if x.dtype() == DType::BF16 {
                    return self.quantized_rows(&x.contiguous()?, &r.packed()?, n, [gate, up, down], tuning);
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
}

/// The mixture-of-experts block (transformers' `OlmoeSparseMoeBlock`): router, then experts.
#[derive(Debug, Clone)]
struct SparseMoe {
    router: Router,
    experts: Experts,
    /// Fused CUDA path: `[E*2I + E, hidden]`, every expert's gate and up rows, then the router's;
    /// the router's `gate` and the experts' `gate_up` are then views of it.
    #[cfg_attr(not(any(feature = "cuda", moe_lens_cuda)), allow(dead_code))]
    gate_gu: Option<Tensor>,
}

/// One decoder layer (transformers' `OlmoeDecoderLayer`).
#[derive(Debug, Clone)]
struct DecoderLayer {
    /// The router's hook name, `model.layers.{i}.mlp.gate`.
    name: String,
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: SparseMoe,
}

impl DecoderLayer {
    /// `x` `[B, T, hidden]` → `[B, T, hidden]`, with the routing of its `B*T` rows (row `b * T + t`),
    /// changed by `plan` where interventions apply.
    // the inputs of transformers' decoder layer (positions, mask, cache) plus ours (tuning, plan)
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        tuning: &Tuning,
        plan: Option<&RoutePlan>,
    ) -> Result<(Tensor, RouterOut)> {
        let (b, t, hidden) = x.dims3()?;
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, rope, offset, mask, cache, tuning)?; // [B, T, hidden]
        let x = (x + h)?;

        let h = self.post_attention_layernorm.forward(&x)?;
        let flat = h.reshape((b * t, hidden))?; // [N, hidden]
        let r = self.mlp.router.forward(&flat, plan)?;
        let m = self.mlp.experts.forward(&flat, &r, tuning)?; // [N, hidden]
        let x = (x + m.reshape((b, t, hidden))?)?; // [B, T, hidden]
        Ok((x, r))
    }
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
    can_fuse: bool,
    tuning: Tuning,
}

impl Olmoe {
    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The float dtype of the weights and activations (quantized experts excepted).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How this model runs on a GPU (see [`Tuning`]).
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }
    /// Changes how this model runs on a GPU (see [`Tuning`]); takes effect at the next call.
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
    }
    /// The model with `tuning` (see [`Tuning`]).
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
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
        cache: Option<&mut KvCache>,
        lengths: Option<&[usize]>,
        step: Step,
        spy: Option<&mut dyn RouterSpy>,
    ) -> Result<Tensor> {
        self.forward_edited(input_ids, cache, lengths, step, spy, &[])
    }

    /// [`Olmoe::forward`] with interventions at the routers (see [`crate::intervene`]): `edits` is
    /// empty (none), one set for every sequence of the batch, or one set per sequence (`B` of them).
    /// With a KV cache, positions continue the cached ones, so an intervention over a token range
    /// holds at every decode step that reaches it.
    pub fn forward_edited(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        lengths: Option<&[usize]>,
        step: Step,
        mut spy: Option<&mut dyn RouterSpy>,
        edits: &[Interventions],
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
        let (e, k) = (self.cfg.num_experts, self.cfg.num_experts_per_tok);
        if edits.len() > 1 && edits.len() != b {
            return Err(Error::invalid(
                "interventions",
                format!("{} sets for a batch of {b}: give one set for all sequences or one per sequence", edits.len()),
            ));
        }
        for set in edits {
            set.check(self.layers.len(), e, k)?;
        }
        let plans: Vec<Option<RoutePlan>> =
            (0..self.layers.len()).map(|l| Interventions::plan(edits, l, b, t, offset, e, k)).collect();

        #[cfg(any(feature = "cuda", moe_lens_cuda))]
        if self.can_fuse && cache.is_none() && self.tuning.fused {
            return self.forward_fused(input_ids, b, t, lengths, step, spy, &selection, &plans);
        }
        let mask = self.mask(b, t, offset, lengths)?; // [B, 1, T, S]
        let mut x =
            self.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?; // [B, T, hidden]
        let mut reported = 0usize;
        // off the CPU, routing is kept on the device and copied to the host once, after the last layer
        let on_host = self.device.is_cpu();
        let mut routed: Vec<Tensor> = Vec::new();
        let mut routed_layers: Vec<usize> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().and_then(|c| c.layers.get_mut(l));
            let plan = plans.get(l).and_then(Option::as_ref);
            let (y, r) = layer.forward(&x, &self.rope, offset, mask.as_ref(), slot, &self.tuning, plan)?;
            x = y;
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
        self.norm.forward(&x) // [B, T, hidden]
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

    /// Next-token logits (float32) `[B, len, vocab]` from final hidden states `[B, T, hidden]`, for
    /// positions `start..start + len`.
    pub fn logits_at(&self, hidden: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        if len == 0 || start + len > t {
            return Err(Error::invalid("positions", format!("{start}..{} of {t} positions", start + len)));
        }
        let h = hidden.narrow(1, start, len)?; // [B, len, hidden]
        Ok(linear(&h, &self.lm_head)?.to_dtype(DType::F32)?) // [B, len, vocab]
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
