//! Weights: memory-mapped safetensors files ([`Weights`]), the [`WeightSource`] trait the model
//! builder reads any checkpoint through (safetensors here, quantized and GGUF in `quant.rs`), and
//! the builder itself, [`Olmoe::load`] / [`Olmoe::build`], which checks every shape against the
//! config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::{Attention, DecoderLayer, ExpertWeights, Experts, Olmoe, RmsNorm, Rope, Router, SparseMoe, Tuning};
use crate::config::Config;
use crate::error::{Error, Result};

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
    if parts.iter().any(|(_, b)| b.len() != per)
        || !per.is_multiple_of(size)
        || parts.len() * per != shape.0 * shape.1 * size
    {
        return Err(Error::invalid("weights", "parts to stack differ in size"));
    }
    // not zeroed first (that alone was a second pass over the model's bytes): every byte is
    // written by the copies below, which cover exactly parts.len() * per = n * size bytes (checked)
    let n = shape.0 * shape.1;
    let mut buf: Vec<T> = Vec::with_capacity(n);
    let base = buf.as_mut_ptr().cast::<u8>() as usize; // as an address, to hand to the threads
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let per_thread = parts.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (t, src) in parts.chunks(per_thread).enumerate() {
            sc.spawn(move || {
                for (i, (_, s)) in src.iter().enumerate() {
                    let at = (t * per_thread + i) * per;
                    // SAFETY: bytes at..at + per of the buffer's n * size allocated bytes (at + per <=
                    // parts.len() * per = n * size); each part goes to its own range, so no two
                    // threads write the same byte; the source is a live slice of `per` bytes.
                    unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), (base + at) as *mut u8, per) };
                }
            });
        }
    });
    // SAFETY: all n elements were written above (T is bf16, f16 or f32: any bytes are a valid value)
    unsafe { buf.set_len(n) };
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

    /// Assembles a model from any weight source (safetensors, quantized, GGUF), with the default
    /// [`Tuning`].
    pub(crate) fn build(cfg: &Config, w: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        check_dtype(dtype)?;
        let (h, e) = (cfg.hidden_size, cfg.num_experts);
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let norm = |name: &str, size: usize| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: w.get(name, &[size])?, eps: cfg.rms_norm_eps })
        };
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let can_fuse = cfg!(any(feature = "cuda", moe_lens_cuda))
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
                ExpertWeights::Dense { gate_up, down } if can_fuse => {
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
            let (qkv, q_proj, k_proj, v_proj) = if can_fuse {
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
                    router: Router { gate, k: cfg.num_experts_per_tok, norm_topk_prob: cfg.norm_topk_prob },
                    experts: Experts {
                        weights: experts,
                        num_experts: e,
                        intermediate: cfg.intermediate_size,
                        k: cfg.num_experts_per_tok,
                    },
                    gate_gu,
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
            can_fuse,
            tuning: Tuning::default(),
        })
    }
}
