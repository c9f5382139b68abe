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
}

impl Rope {
    fn new(cfg: &Config, device: &Device) -> Result<Self> {
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
        Ok(Rope {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
        })
    }

    /// Rotates `x` `[B, heads, T, D]` for positions `offset..offset + T`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, offset, t)?.to_dtype(x.dtype())?;
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

#[derive(Debug, Clone)]
struct Expert {
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
}

impl Expert {
    /// SwiGLU: `down(silu(gate(x)) * up(x))`, `x` `[n, hidden]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&linear(x, &self.gate_proj)?)?;
        linear(&(g * linear(x, &self.up_proj)?)?, &self.down_proj)
    }
}

#[derive(Debug, Clone)]
struct SparseMoe {
    /// Router weight `[experts, hidden]`.
    gate: Tensor,
    experts: Vec<Expert>,
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
        let ids: Vec<u32> = r.top_k.flatten_all()?.to_vec1()?;
        // rows and flat (row * k + slot) positions routed to each expert
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        for (pos, &e) in ids.iter().enumerate() {
            let e = e as usize;
            if let (Some(rs), Some(ss)) = (rows.get_mut(e), slots.get_mut(e)) {
                rs.push((pos / self.k) as u32);
                ss.push(pos as u32);
            }
        }
        let weights = r.weights.to_dtype(x.dtype())?.flatten_all()?; // [N * k]
        let mut out = x.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), x.device())?;
            let w = weights.index_select(&Tensor::new(slots[e].as_slice(), x.device())?, 0)?; // [m]
            let y = expert.forward(&x.index_select(&idx, 0)?)?; // [m, hidden]
            let y = y.broadcast_mul(&w.unsqueeze(1)?)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        debug_assert_eq!(out.dim(0).ok(), Some(n));
        Ok(out)
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
struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    device: Device,
    dtype: DType,
}

impl Weights {
    fn open(paths: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
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

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Loads `name`, checks its shape and converts it to the model's dtype and device.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
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
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}

impl Olmoe {
    /// Loads a model from its safetensors files (one, or all shards of an index).
    pub fn load(cfg: &Config, weight_files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::invalid("dtype", format!("{dtype:?}; use f32, bf16 or f16")));
        }
        let w = Weights::open(weight_files, device, dtype)?;
        let (h, i, e) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts);
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let norm = |name: &str, size: usize| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: w.get(name, &[size])?, eps: cfg.rms_norm_eps })
        };
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            // a checkpoint with more experts than the config says would silently lose them
            if w.has(&format!("{p}.mlp.experts.{e}.gate_proj.weight")) {
                return Err(Error::Config {
                    path: PathBuf::from("config.json"),
                    msg: format!("num_experts is {e} but the weights have an expert {e} in layer {l}"),
                });
            }
            let experts = (0..e)
                .map(|x| {
                    let q = format!("{p}.mlp.experts.{x}");
                    Ok(Expert {
                        gate_proj: w.get(&format!("{q}.gate_proj.weight"), &[i, h])?,
                        up_proj: w.get(&format!("{q}.up_proj.weight"), &[i, h])?,
                        down_proj: w.get(&format!("{q}.down_proj.weight"), &[h, i])?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
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
                path: weight_files.first().cloned().unwrap_or_default(),
                msg: "lm_head.weight is missing and tie_word_embeddings is false".into(),
            });
        };
        Ok(Olmoe {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: norm("model.norm.weight", h)?,
            lm_head,
            rope: Rope::new(cfg, device)?,
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
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, hidden]
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
