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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, D};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::spy::{LayerSelection, RouterEvent, RouterSpy, Step};

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
            // one fused kernel (f32 statistics; the weight is applied before the cast back, one
            // rounding fewer than transformers: within bf16 rounding of it)
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?);
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
        let (cos, sin) = if x.dtype() == self.cos_d.dtype() { (&self.cos_d, &self.sin_d) } else { (&self.cos, &self.sin) };
        let cos = cos.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        let sin = sin.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
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
        let (b, t, _) = x.dims3()?;
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
            Ok(y.unsqueeze(2)?
                .expand((b, self.kv_heads, rep, s, self.head_dim))?
                .reshape((b, self.heads, s, self.head_dim))?)
        };
        let k = repeat(k)?;
        let v = repeat(v)?;

        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?; // [B, heads, T, S]
        let scores = scores.to_dtype(DType::F32)?;
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
/// candle's grouped expert kernel runs only the chosen (token, expert) pairs. H200 sweep
/// (BENCHMARKS.md): dense faster up to 256 rows, grouped from 512; change it with
/// [`set_dense_max_tokens`].
static DENSE_MAX_TOKENS: AtomicUsize = AtomicUsize::new(256);
/// Below this many rows the grouped kernel runs instead (a decode step touches only k experts).
/// Measured on an H200 (BENCHMARKS.md): even at 1 row the dense pass was faster (5.7 vs 6.6 ms per
/// forward), because candle's grouped kernel is slow at small m; so 1.
static DENSE_MIN_TOKENS: AtomicUsize = AtomicUsize::new(1);
/// Rows from which the quantized CUDA path uses the grouped kernel's prefill variant (tiles of
/// dequantized weights on the matrix units) instead of its per-pair dot-product variant. H200 sweep:
/// the dot-product variant wins up to 128 rows (Q4K 12.0 vs 21.4 ms at 25), the prefill from 256.
static GGUF_PREFILL_MIN_TOKENS: AtomicUsize = AtomicUsize::new(160);
/// Rows per call of the grouped kernels: candle's CUDA sort keeps a row in shared memory (4 bytes per
/// element, padded to a power of two), so rows × k must stay at or below 8192.
const GROUPED_MAX_PAIRS: usize = 8192;

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
/// Sets the rows from which the quantized CUDA path uses the prefill kernel.
pub fn set_gguf_prefill_min_tokens(n: usize) {
    GGUF_PREFILL_MIN_TOKENS.store(n, Ordering::Relaxed);
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

    /// Mixes the chosen experts' outputs for `x` `[N, hidden]`.
    fn experts(&self, x: &Tensor, r: &RouterOut) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        let on_gpu = x.device().is_cuda();
        match &self.experts {
            ExpertWeights::Dense { gate_up, down } if on_gpu => {
                if n <= dense_max_tokens() && n >= DENSE_MIN_TOKENS.load(Ordering::Relaxed) {
                    self.dense_all(x, r, gate_up, down)
                } else {
                    self.chunked(x, r, |x, top_k, w| self.grouped(x, top_k, w, gate_up, down))
                }
            }
            ExpertWeights::QStacked { gate, up, down } => {
                self.chunked(x, r, |x, top_k, w| self.grouped_q(x, top_k, w, gate, up, down))
            }
            ExpertWeights::Dense { gate_up, down } => self.per_expert(x, r, |e, xs| {
                let w = gate_up.get(e)?; // [2I, H]
                let g = candle_nn::ops::silu(&linear(xs, &w.narrow(0, 0, self.intermediate)?)?)?;
                let u = linear(xs, &w.narrow(0, self.intermediate, self.intermediate)?)?;
                linear(&(g * u)?, &down.get(e)?)
            }),
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
        let mut out = x.zeros_like()?;
        for e in 0..self.num_experts {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), x.device())?;
            let w = weights.index_select(&Tensor::new(slots[e].as_slice(), x.device())?, 0)?; // [m]
            let y = f(e, &x.index_select(&idx, 0)?)?; // [m, hidden]
            let y = y.broadcast_mul(&w.unsqueeze(1)?)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }

    /// Runs `f` over row chunks small enough for candle's CUDA sort, and concatenates.
    fn chunked(
        &self,
        x: &Tensor,
        r: &RouterOut,
        f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let step = (GROUPED_MAX_PAIRS / self.k.max(1)).max(1);
        if n <= step {
            return f(x, &r.top_k, &r.weights);
        }
        let mut parts = Vec::new();
        let mut s = 0;
        while s < n {
            let m = step.min(n - s);
            // fresh copies: the grouped kernels read raw device pointers and ignore a view's offset
            parts.push(f(&x.narrow(0, s, m)?.copy()?, &r.top_k.narrow(0, s, m)?.copy()?, &r.weights.narrow(0, s, m)?.copy()?)?);
            s += m;
        }
        Ok(Tensor::cat(&parts, 0)?)
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
        let hid = hid.broadcast_mul(&dense_w.to_dtype(x.dtype())?.reshape((n, e, 1, 1))?)?;
        let hid = hid.reshape((n, e, i))?.transpose(0, 1)?.contiguous()?; // [E, N, I]
        let y = hid.matmul(&down.t()?)?; // [E, N, H]
        Ok(y.to_dtype(DType::F32)?.sum(0)?.to_dtype(x.dtype())?)
    }

    /// CUDA, longer inputs: candle's grouped kernel on (token, expert) pairs sorted by expert.
    fn grouped(&self, x: &Tensor, top_k: &Tensor, w: &Tensor, gate_up: &Tensor, down: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let i = self.intermediate;
        let (expert_ids, sorted) = top_k.flatten_all()?.sort_last_dim(true)?;
        let gu = candle_nn::moe::moe_gemm(x, gate_up, &None, &sorted, &expert_ids, self.k, true)?; // [N*k, 2I]
        let g = candle_nn::ops::silu(&gu.narrow(1, 0, i)?)?;
        let hid = (g * gu.narrow(1, i, i)?)?.contiguous()?; // [N*k, I]
        let w = w.flatten_all()?.contiguous()?;
        let y = candle_nn::moe::moe_gemm(&hid, down, &Some(w), &sorted, &expert_ids, self.k, true)?; // [N*k, H]
        Ok(y.reshape((n, self.k, h))?.to_dtype(DType::F32)?.sum(1)?.to_dtype(x.dtype())?)
    }

    /// CUDA, quantized experts: candle's grouped GGUF kernels.
    fn grouped_q(
        &self,
        x: &Tensor,
        top_k: &Tensor,
        w: &Tensor,
        gate: &QTensor,
        up: &QTensor,
        down: &QTensor,
    ) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let prefill = n >= GGUF_PREFILL_MIN_TOKENS.load(Ordering::Relaxed);
        // the prefill kernel takes bf16/f16 activations, the other f32
        let act = if x.dtype() == DType::F16 { DType::F16 } else { DType::BF16 };
        let xs = x.to_dtype(DType::F32)?;
        let (expert_ids, sorted) = top_k.flatten_all()?.sort_last_dim(true)?;
        let g = candle_nn::moe::moe_gemm_gguf(&xs, gate, &None, &sorted, &expert_ids, self.k, prefill, act)?;
        let u = candle_nn::moe::moe_gemm_gguf(&xs, up, &None, &sorted, &expert_ids, self.k, prefill, act)?;
        let hid = (candle_nn::ops::silu(&g)? * u)?; // [N*k, I] f32
        let w = w.flatten_all()?.contiguous()?;
        let y = candle_nn::moe::moe_gemm_gguf(&hid, down, &Some(w), &sorted, &expert_ids, self.k, prefill, act)?;
        Ok(y.reshape((n, self.k, h))?.sum(1)?.to_dtype(x.dtype())?)
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

    /// Loads `name` on the CPU in `dtype`, checking its shape.
    pub(crate) fn get_cpu(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let Some(&i) = self.index.get(name) else {
            let dir = self.files.first().and_then(|(p, _)| p.parent()).unwrap_or(Path::new("."));
            return Err(Error::Weights {
                path: dir.to_path_buf(),
                msg: format!("tensor {name} is in none of the {} weights files; is this an OLMoE checkpoint in the Hub's layout?", self.files.len()),
            });
        };
        let (path, st) = &self.files[i];
        let view = st.get(name).map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: {e}") })?;
        if view.shape() != shape {
            return Err(Error::TensorShape { name: name.into(), expected: shape.to_vec(), found: view.shape().to_vec() });
        }
        let t = st
            .load(name, &Device::Cpu)
            .map_err(|e| Error::Weights { path: path.clone(), msg: format!("{name}: {e}") })?;
        Ok(t.to_dtype(dtype)?)
    }
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
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut gate_up = Vec::with_capacity(cfg.num_experts);
        let mut down = Vec::with_capacity(cfg.num_experts);
        for x in 0..cfg.num_experts {
            let q = format!("model.layers.{l}.mlp.experts.{x}");
            let g = self.w.get_cpu(&format!("{q}.gate_proj.weight"), &[i, h], self.w.dtype)?;
            let u = self.w.get_cpu(&format!("{q}.up_proj.weight"), &[i, h], self.w.dtype)?;
            gate_up.push(Tensor::cat(&[&g, &u], 0)?);
            down.push(self.w.get_cpu(&format!("{q}.down_proj.weight"), &[h, i], self.w.dtype)?);
        }
        Ok(ExpertWeights::Dense {
            gate_up: Tensor::stack(&gate_up, 0)?.to_device(&self.w.device)?,
            down: Tensor::stack(&down, 0)?.to_device(&self.w.device)?,
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
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let experts = w.experts(l)?;
            layers.push(DecoderLayer {
                name: Config::router_name(l),
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                self_attn: Attention {
                    q_proj: w.get(&format!("{p}.self_attn.q_proj.weight"), &[h, h])?,
                    k_proj: w.get(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                    v_proj: w.get(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
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
                    gate: w.get(&format!("{p}.mlp.gate.weight"), &[e, h])?,
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
            return Err(Error::invalid("token id", format!("{max_id} is outside the vocabulary (size {})", self.cfg.vocab_size)));
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

        let mask = self.mask(b, t, offset, lengths)?;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?; // [B, T, hidden]
        let mut reported = 0usize;
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().and_then(|c| c.layers.get_mut(l));
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, &self.rope, offset, mask.as_ref(), slot)?;
            x = (x + h)?;

            let h = layer.post_attention_layernorm.forward(&x)?;
            let flat = h.reshape((b * t, self.cfg.hidden_size))?; // [N, hidden]
            let r = layer.mlp.route(&flat)?;
            if let Some(s) = spy.as_mut() {
                if selection.contains(l) {
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
