//! Quantized experts: quantize in-process from the bf16/f32 safetensors, keep a GGUF cache next to
//! the model so the second load skips the work, and build the model from llama.cpp's OLMoE GGUF
//! files (read by [`crate::gguf`]).
//!
//! Only the experts (93% of OLMoE's parameters) are quantized. Router gates, norms, embeddings, the
//! output head and the attention projections stay in the checkpoint's precision: the routers decide
//! what this library reports, and the rest is small.
//!
//! The cache is a GGUF file with llama.cpp's tensor names (arch `olmoe`, experts stacked as
//! `blk.N.ffn_{gate,up,down}_exps`), so the same reader loads it and llama.cpp's files. It records a
//! fingerprint of the safetensors files (names, sizes, modification times) and the quantization; a
//! cache that does not match, cannot be parsed, or is shorter than its header says (a write that was
//! cut off) is rebuilt. It is written atomically ([`crate::fsutil::write_atomic_with`]).
//!
//! Where: a load reads the first valid cache in `MOE_LENS_QUANT_CACHE_DIR` (when set) or the model's
//! directory ([`cache_dirs`]), and writes a new one to the first; on a shared server the instructor
//! writes it once ([`prepare_cache`], `moe-lens prepare`) and students only read it. A load that
//! cannot write its cache still loads and says where it tried and what to do
//! ([`QuantReport::cache_write_error`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic_with;
use crate::gguf::{self, gguf_name};
use crate::olmoe::{check_expert_count, ExpertWeights, Olmoe, WeightSource, Weights};

/// How the experts are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Quant {
    /// The checkpoint's precision (or the dtype asked for).
    #[default]
    None,
    /// 8-bit blocks of 32 (8.5 bits per weight).
    Q8_0,
    /// llama.cpp's 4-bit k-quant, super-blocks of 256 (4.5 bits per weight); needs hidden and
    /// intermediate sizes that are multiples of 256.
    Q4K,
}

/// Which experts a load asks for: what `--quant`, the notebooks' `MOE_LENS_QUANT` and
/// [`crate::lab::load_with_quant`] name, parsed by one parser ([`QuantChoice::from_str`]) with one
/// default, `auto` (also the empty string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum QuantChoice {
    /// 4-bit experts (q4k) on a GPU when the model's sizes allow it (hidden and expert sizes
    /// multiples of 256, as OLMoE's are); on the CPU and for small models (the demo and test
    /// models) the checkpoint as is. A llama.cpp GGUF file keeps its experts as the file stores
    /// them. See [`QuantChoice::resolve`].
    #[default]
    Auto,
    /// These experts, whatever the device (for a GGUF file only `none` is possible).
    Fixed(Quant),
}

impl FromStr for QuantChoice {
    type Err = Error;
    /// `auto` (or empty), `none` (`off`), `q8_0` (`q8`), `q4k` (`q4_k`, `q4_k_m`), any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(QuantChoice::Auto),
            "none" | "off" => Ok(QuantChoice::Fixed(Quant::None)),
            "q8_0" | "q8" => Ok(QuantChoice::Fixed(Quant::Q8_0)),
            "q4k" | "q4_k" | "q4_k_m" => Ok(QuantChoice::Fixed(Quant::Q4K)),
            other => Err(Error::invalid(
                "quant",
                format!("{other:?}; use auto, none, q8_0 or q4k (--quant on the command line, MOE_LENS_QUANT in the notebooks)"),
            )),
        }
    }
}

impl fmt::Display for QuantChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantChoice::Auto => f.write_str("auto"),
            QuantChoice::Fixed(q) => f.write_str(q.name()),
        }
    }
}

impl From<Quant> for QuantChoice {
    fn from(q: Quant) -> Self {
        QuantChoice::Fixed(q)
    }
}

impl QuantChoice {
    /// The experts a safetensors model of `cfg` gets on `device` in `dtype`: `Auto` is
    /// [`Quant::Q4K`] when the hidden and expert sizes are multiples of 256 and either the device is
    /// a GPU (the full OLMoE needs about 16 GB of GPU memory in bf16 and about 6 GB with q4k experts,
    /// so a 12 GB GPU slice fits it, as the Python lab's 4-bit load does) or the full-precision
    /// experts would take more than [`AUTO_CPU_MAX_EXPERT_BYTES`] on the CPU (OLMoE in float32: 27.7
    /// GB; with q4k experts about 5 GB, and faster on the CPU too: BENCHMARKS.md); else
    /// [`Quant::None`] (the demo and test models).
    pub fn resolve(self, cfg: &Config, device: &Device, dtype: DType) -> Quant {
        match self {
            QuantChoice::Fixed(q) => q,
            QuantChoice::Auto => {
                let fits = cfg.hidden_size.is_multiple_of(256) && cfg.intermediate_size.is_multiple_of(256);
                let (experts, _) = crate::memory::param_counts(cfg);
                let big = experts.saturating_mul(dtype.size_in_bytes() as u64) > AUTO_CPU_MAX_EXPERT_BYTES;
                if fits && (!device.is_cpu() || big) {
                    Quant::Q4K
                } else {
                    Quant::None
                }
            }
        }
    }
}

/// Full-precision expert weights above which `auto` quantizes on the CPU too (8 GiB).
pub const AUTO_CPU_MAX_EXPERT_BYTES: u64 = 8 << 30;

/// A concrete storage type by name (`none`, `q8_0`, `q4k`, with [`QuantChoice`]'s spellings);
/// `auto` is not one (it is decided at load time: parse a [`QuantChoice`]).
impl FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.parse::<QuantChoice>()? {
            QuantChoice::Fixed(q) => Ok(q),
            QuantChoice::Auto => Err(Error::invalid(
                "quant",
                format!("{:?} is chosen when the model loads, not a storage type; use none, q8_0 or q4k", s.trim()),
            )),
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Quant {
    /// `none`, `q8_0`, `q4k`.
    pub fn name(self) -> &'static str {
        match self {
            Quant::None => "none",
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4k",
        }
    }
    /// The GGML block type, `None` for no quantization.
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quant::None => None,
            Quant::Q8_0 => Some(GgmlDType::Q8_0),
            Quant::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

/// What a quantized load did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantReport {
    /// The quantization that was applied.
    pub quant: Quant,
    /// The cache file.
    pub cache: PathBuf,
    /// Whether the model came from the cache.
    pub cache_hit: bool,
    /// Why an existing cache was not used (stale, truncated, unreadable), if one was there.
    pub cache_rejected: Option<String>,
    /// Why the cache could not be written, if it could not (the model still loads).
    pub cache_write_error: Option<String>,
}

/// The environment variable naming a folder for quantized caches (read before the model's folder,
/// and where a new cache is written when set).
pub const CACHE_DIR_VAR: &str = "MOE_LENS_QUANT_CACHE_DIR";

/// Where a new cache of `quant` for the model in `model_dir` is written: in `MOE_LENS_QUANT_CACHE_DIR`
/// if set, else in the model directory itself (what `moe-lens prepare` does by default).
pub fn cache_path(model_dir: &Path, quant: Quant) -> PathBuf {
    cache_dirs(model_dir)[0].join(cache_file_name(quant))
}

/// The cache file's name: `moe-lens.q4k.gguf`, `moe-lens.q8_0.gguf`.
pub fn cache_file_name(quant: Quant) -> String {
    format!("moe-lens.{}.gguf", quant.name())
}

/// The folders a load looks in for a cache, in order: `MOE_LENS_QUANT_CACHE_DIR` when set (a
/// folder of one's own, or the one the instructor prepared), then the model's directory (where
/// `moe-lens prepare` writes by default, e.g. the snapshot in a shared Hugging Face cache). The first
/// is where a new cache is written. Reading needs no write access to either.
pub fn cache_dirs(model_dir: &Path) -> Vec<PathBuf> {
    cache_dirs_with(model_dir, std::env::var_os(CACHE_DIR_VAR).filter(|v| !v.is_empty()).map(PathBuf::from))
}

pub(crate) fn cache_dirs_with(model_dir: &Path, env_dir: Option<PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env_dir.into_iter().collect();
    if !dirs.iter().any(|d| d == model_dir) {
        dirs.push(model_dir.to_path_buf());
    }
    dirs
}

/// A valid cache's path and tensors.
type FoundCache = (PathBuf, HashMap<String, QTensor>);

/// The first valid cache of `quant` for weights `fp` among `dirs`; the reason the first invalid one
/// was rejected otherwise.
fn find_cache(dirs: &[PathBuf], fp: &str, quant: Quant) -> (Option<FoundCache>, Option<String>) {
    let mut rejected = None;
    for dir in dirs {
        let path = dir.join(cache_file_name(quant));
        if !path.exists() {
            continue;
        }
        match read_cache(&path, fp, quant) {
            Ok(t) => return (Some((path, t)), None),
            Err(e) => {
                rejected.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (None, rejected)
}

/// What a load says when it could not write its cache: where it tried and how to fix it (each
/// load quantizes again until a cache exists).
fn write_failure(path: &Path, model_dir: &Path, quant: Quant, e: &Error) -> String {
    format!(
        "could not write the quantized cache {} ({e}), so every load of this model quantizes its experts \
         again (a minute or more for OLMoE). To fix: ask the instructor to run `moe-lens prepare --model {} \
         --quant {quant}` once (it writes the cache where every student reads it), or set {CACHE_DIR_VAR} \
         to a folder of your own with room for it (about 4 GB for OLMoE in q4k) before starting the lab",
        path.display(),
        model_dir.display()
    )
}

/// Names, sizes and modification times of the weight files: a changed checkpoint invalidates caches.
fn fingerprint(files: &[PathBuf]) -> String {
    let mut parts = Vec::new();
    for p in files {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (len, mtime) = std::fs::metadata(p)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                (m.len(), t)
            })
            .unwrap_or((0, 0));
        parts.push(format!("{name}:{len}:{mtime}"));
    }
    parts.join(";")
}

const FMT_VERSION: u32 = 1;

/// Loads `cfg`'s model with quantized experts: from the cache when it is valid, else by quantizing
/// the safetensors (then writing the cache).
pub fn load_quantized(
    cfg: &Config,
    weight_files: &[PathBuf],
    model_dir: &Path,
    device: &Device,
    dtype: DType,
    quant: Quant,
) -> Result<(Olmoe, QuantReport)> {
    let Some(qtype) = quant.ggml() else {
        return Err(Error::invalid("quant", "load_quantized needs q8_0 or q4k"));
    };
    check_quantizable(cfg, qtype)?;
    let dirs = cache_dirs(model_dir);
    let cache = dirs[0].join(cache_file_name(quant));
    let fp = fingerprint(weight_files);
    let (found, rejected) = find_cache(&dirs, &fp, quant);
    let mut report = QuantReport {
        quant,
        cache: cache.clone(),
        cache_hit: false,
        cache_rejected: rejected,
        cache_write_error: None,
    };
    if let Some((path, tensors)) = found {
        report.cache_hit = true;
        report.cache = path.clone();
        let src = GgufSource::new(tensors, cfg, device, dtype, path);
        return Ok((Olmoe::build(cfg, &src, device, dtype)?, report));
    }
    let tensors = quantize_checkpoint(cfg, weight_files, qtype)?;
    if let Err(e) = write_cache(&cache, cfg, &fp, quant, &tensors) {
        report.cache_write_error = Some(write_failure(&cache, model_dir, quant, &e));
    }
    let src = GgufSource::new(tensors.into_iter().collect(), cfg, device, dtype, cache);
    Ok((Olmoe::build(cfg, &src, device, dtype)?, report))
}

/// Writes the cache of `quant` for a checkpoint without loading a model (`moe-lens prepare`, run
/// once by an instructor): into `out_dir`, else where a load would write it ([`cache_path`]). A
/// valid cache already there is kept (`cache_hit`). Unlike a load, a cache that cannot be written is
/// an error. Takes about the host memory of the quantized experts (about 4 GB for OLMoE in q4k).
pub fn prepare_cache(
    cfg: &Config,
    weight_files: &[PathBuf],
    model_dir: &Path,
    out_dir: Option<&Path>,
    quant: Quant,
) -> Result<QuantReport> {
    let Some(qtype) = quant.ggml() else {
        return Err(Error::invalid("quant", "a cache is made for q8_0 or q4k; none needs no preparing"));
    };
    check_quantizable(cfg, qtype)?;
    let dir = out_dir.map_or_else(|| cache_dirs(model_dir).remove(0), Path::to_path_buf);
    let cache = dir.join(cache_file_name(quant));
    let fp = fingerprint(weight_files);
    let (found, rejected) = find_cache(std::slice::from_ref(&dir), &fp, quant);
    let cache_hit = found.is_some();
    drop(found);
    if !cache_hit {
        let tensors = quantize_checkpoint(cfg, weight_files, qtype)?;
        write_cache(&cache, cfg, &fp, quant, &tensors)?;
    }
    Ok(QuantReport { quant, cache, cache_hit, cache_rejected: rejected, cache_write_error: None })
}

fn check_quantizable(cfg: &Config, qtype: GgmlDType) -> Result<()> {
    let b = qtype.block_size();
    for (what, v) in [("hidden_size", cfg.hidden_size), ("intermediate_size", cfg.intermediate_size)] {
        if v % b != 0 {
            return Err(Error::invalid(
                "quant",
                format!(
                    "{qtype:?} packs blocks of {b} weights along each row, but {what} is {v}: {}",
                    if cfg.hidden_size.is_multiple_of(32) && cfg.intermediate_size.is_multiple_of(32) {
                        "use q8_0 (blocks of 32) or no quantization (none)"
                    } else {
                        "this model can only be loaded without quantization (none)"
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// The non-expert tensors of a checkpoint with their shapes.
fn dense_names(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, e) = (cfg.hidden_size, cfg.num_experts);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let mut v =
        vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h]), ("model.norm.weight".into(), vec![h])];
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        v.push((format!("{p}.self_attn.q_norm.weight"), vec![q]));
        v.push((format!("{p}.self_attn.k_norm.weight"), vec![kv]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}.mlp.gate.weight"), vec![e, h]));
    }
    v
}

/// A QTensor holding `t` without loss: f32, f16 or bf16 as stored.
fn exact_qtensor(t: &Tensor) -> Result<QTensor> {
    let (qt, t) = match t.dtype() {
        DType::BF16 => (GgmlDType::BF16, t.clone()),
        DType::F16 => (GgmlDType::F16, t.clone()),
        _ => (GgmlDType::F32, t.to_dtype(DType::F32)?),
    };
    let bytes: Vec<u8> = match qt {
        GgmlDType::BF16 => t.flatten_all()?.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlDType::F16 => t.flatten_all()?.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    Ok(QTensor::new(QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, qt)?, t.shape().clone())?)
}

/// Quantizes `ts` (each `[n, k]`, f32 on the CPU) in parallel and stacks them into one `[len, n, k]`.
fn quantize_stack(ts: &[Tensor], qtype: GgmlDType) -> Result<QTensor> {
    let (n, k) = ts.first().ok_or_else(|| Error::invalid("quant", "no experts"))?.dims2()?;
    // one expert per task, in order (quantizing is independent per expert)
    let parts: Vec<Vec<u8>> = ts
        .par_iter()
        .map(|t| -> Result<Vec<u8>> { Ok(QTensor::quantize(t, qtype)?.data()?.into_owned()) })
        .collect::<Result<_>>()?;
    let mut bytes = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for b in &parts {
        bytes.extend_from_slice(b);
    }
    Ok(QTensor::new(QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, qtype)?, (ts.len(), n, k))?)
}

/// Quantizes a checkpoint: every tensor under its GGUF name, on the CPU.
fn quantize_checkpoint(cfg: &Config, weight_files: &[PathBuf], qtype: GgmlDType) -> Result<Vec<(String, QTensor)>> {
    // dtype F32 only matters for `get`; `get_cpu` is given each tensor's own dtype
    let w = Weights::open(weight_files, &Device::Cpu, DType::F32)?;
    let mut out = Vec::new();
    for (name, shape) in dense_names(cfg) {
        let stored = w.stored_dtype(&name).unwrap_or(DType::F32);
        let keep = if matches!(stored, DType::BF16 | DType::F16) { stored } else { DType::F32 };
        let t = w.get_cpu(&name, &shape, keep)?;
        let g = gguf_name(&name).ok_or_else(|| Error::invalid("tensor", name.clone()))?;
        out.push((g, exact_qtensor(&t)?));
    }
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    for l in 0..cfg.num_hidden_layers {
        check_expert_count(&w, cfg, l)?;
        for (proj, short, shape) in [
            ("gate_proj", "ffn_gate_exps", [i, h]),
            ("up_proj", "ffn_up_exps", [i, h]),
            ("down_proj", "ffn_down_exps", [h, i]),
        ] {
            let ts = (0..cfg.num_experts)
                .map(|x| w.get_cpu(&format!("model.layers.{l}.mlp.experts.{x}.{proj}.weight"), &shape, DType::F32))
                .collect::<Result<Vec<_>>>()?;
            out.push((format!("blk.{l}.{short}.weight"), quantize_stack(&ts, qtype)?));
        }
    }
    Ok(out)
}

/// Writes the cache atomically ([`write_atomic_with`]: a temporary file, synced, then renamed).
fn write_cache(path: &Path, cfg: &Config, fp: &str, quant: Quant, tensors: &[(String, QTensor)]) -> Result<()> {
    write_atomic_with(path, |w| {
        let u = |v: usize| gguf_file::Value::U32(v as u32);
        let meta: Vec<(&str, gguf_file::Value)> = vec![
            ("general.architecture", gguf_file::Value::String("olmoe".into())),
            ("general.name", gguf_file::Value::String("moe-lens quantized OLMoE".into())),
            ("olmoe.block_count", u(cfg.num_hidden_layers)),
            ("olmoe.embedding_length", u(cfg.hidden_size)),
            ("olmoe.expert_feed_forward_length", u(cfg.intermediate_size)),
            ("olmoe.feed_forward_length", u(cfg.intermediate_size)),
            ("olmoe.attention.head_count", u(cfg.num_attention_heads)),
            ("olmoe.attention.head_count_kv", u(cfg.num_key_value_heads)),
            ("olmoe.attention.key_length", u(cfg.head_dim)),
            ("olmoe.expert_count", u(cfg.num_experts)),
            ("olmoe.expert_used_count", u(cfg.num_experts_per_tok)),
            ("olmoe.context_length", u(cfg.max_position_embeddings)),
            ("olmoe.rope.freq_base", gguf_file::Value::F32(cfg.rope_theta as f32)),
            ("olmoe.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(cfg.rms_norm_eps as f32)),
            ("moe_lens.format", gguf_file::Value::U32(FMT_VERSION)),
            ("moe_lens.quant", gguf_file::Value::String(quant.name().into())),
            ("moe_lens.source", gguf_file::Value::String(fp.into())),
        ];
        let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(w, &meta_refs, &t_refs)?;
        Ok(())
    })
}

/// Reads a cache after checking that it belongs to `fp` (the weight files' fingerprint) and
/// `quant`, and that it is complete.
fn read_cache(path: &Path, fp: &str, quant: Quant) -> Result<HashMap<String, QTensor>> {
    let bad = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
    let (content, len) = gguf::read_header(path)?;
    let s = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok().cloned());
    if content.metadata.get("moe_lens.format").and_then(|v| v.to_u32().ok()) != Some(FMT_VERSION) {
        return Err(bad("written by another version of moe-lens".into()));
    }
    if s("moe_lens.quant").as_deref() != Some(quant.name()) {
        return Err(bad(format!("holds {:?}, not {}", s("moe_lens.quant"), quant.name())));
    }
    if s("moe_lens.source").as_deref() != Some(fp) {
        return Err(bad("made from other weight files (the checkpoint changed)".into()));
    }
    gguf::read_tensors(path, &content, len)
}

/// Builds the model from GGUF tensors on the CPU.
struct GgufSource {
    tensors: Mutex<HashMap<String, QTensor>>,
    cfg: Config,
    device: Device,
    dtype: DType,
    path: PathBuf,
}

impl GgufSource {
    fn new(tensors: HashMap<String, QTensor>, cfg: &Config, device: &Device, dtype: DType, path: PathBuf) -> Self {
        GgufSource { tensors: Mutex::new(tensors), cfg: cfg.clone(), device: device.clone(), dtype, path }
    }

    fn take(&self, gguf: &str, shape: &[usize]) -> Result<QTensor> {
        let t = self
            .tensors
            .lock()
            .map_err(|_| Error::Spy("weights lock poisoned".into()))?
            .remove(gguf)
            .ok_or_else(|| Error::Weights { path: self.path.clone(), msg: format!("tensor {gguf} is missing") })?;
        if t.shape().dims() != shape {
            return Err(Error::TensorShape {
                name: gguf.into(),
                expected: shape.to_vec(),
                found: t.shape().dims().to_vec(),
            });
        }
        Ok(t)
    }
}

/// Whether our CUDA kernels read this block type (`ml_qmm_*`, `ml_dequant_*` in `kernels/fused.cu`;
/// the list `olmoe::fused::kernel_type` keeps). Other block types are expanded to the model dtype
/// at load. (candle's own grouped GGUF kernels are not used: they live in a library compiled to
/// machine code for one GPU architecture only, and on any other GPU they returned garbage or
/// aborted the process — BENCHMARKS.md, "A30 build".)
fn our_kernels_read(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q8_0 | GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q4_0 | GgmlDType::Q5K)
}

/// Whether candle's CPU matmul can take rows of `k` values in block type `t`. Its Q4_1, Q5_0 and
/// Q5_1 dot products assert (in debug builds, which is what a notebook cell runs) an even number of
/// blocks per row: rows of 32 in Q5_0, which llama-quantize writes for narrow models, would panic.
/// OLMoE's own rows (2,048 and 1,024) are even; others are dequantized instead.
fn cpu_matmul_takes(t: GgmlDType, k: usize) -> bool {
    match t {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => (k / t.block_size()).is_multiple_of(2),
        _ => true,
    }
}

/// Splits a stacked `[E, n, k]` quantized tensor into E CPU matmuls.
fn split_experts(t: &QTensor) -> Result<Vec<QMatMul>> {
    let (e, n, k) = t.shape().dims3()?;
    if !cpu_matmul_takes(t.dtype(), k) {
        let all = t.dequantize(&Device::Cpu)?; // [E, n, k] f32
        return (0..e).map(|x| Ok(QMatMul::Tensor(all.get(x)?))).collect();
    }
    let data = t.data()?;
    let per = data.len() / e.max(1);
    (0..e)
        .map(|x| {
            let bytes = Cow::Owned(data[x * per..(x + 1) * per].to_vec());
            Ok(QMatMul::from_qtensor(QTensor::new(QStorage::from_data(bytes, &Device::Cpu, t.dtype())?, (n, k))?)?)
        })
        .collect()
}

impl GgufSource {
    /// A tensor of the file on the model's device in the model dtype. Float tensors (bf16, f16,
    /// f32: norms, router, and everything in a float GGUF) go to the device as their bytes and are
    /// converted there; expanding a bf16 GGUF's experts to f32 on the host first took 34 s and
    /// twice the file's size in RAM. Quantized ones are dequantized on the CPU.
    fn float_or_dequantized(&self, t: &QTensor, shape: &[usize]) -> Result<Tensor> {
        let raw = match t.dtype() {
            GgmlDType::BF16 => Some(DType::BF16),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::F32 => Some(DType::F32),
            _ => None,
        };
        if let Some(dt) = raw {
            let data = t.data()?;
            return Ok(Tensor::from_raw_buffer(&data, dt, shape, &self.device)?.to_dtype(self.dtype)?);
        }
        Ok(t.dequantize(&Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}

impl WeightSource for GgufSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let g = gguf_name(name)
            .ok_or_else(|| Error::Weights { path: self.path.clone(), msg: format!("no GGUF name for {name}") })?;
        let t = self.take(&g, shape)?;
        self.float_or_dequantized(&t, shape)
    }
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.tensors.lock().map(|m| m.contains_key(&g)).unwrap_or(false))
    }
    fn describe(&self) -> PathBuf {
        self.path.clone()
    }
    fn experts(&self, l: usize) -> Result<ExpertWeights> {
        let (e, h, i) = (self.cfg.num_experts, self.cfg.hidden_size, self.cfg.intermediate_size);
        let gate = self.take(&format!("blk.{l}.ffn_gate_exps.weight"), &[e, i, h])?;
        let up = self.take(&format!("blk.{l}.ffn_up_exps.weight"), &[e, i, h])?;
        let down = self.take(&format!("blk.{l}.ffn_down_exps.weight"), &[e, h, i])?;
        let qt = gate.dtype();
        let quantized = !matches!(qt, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        match &self.device {
            Device::Cpu if quantized => Ok(ExpertWeights::QPerExpert(
                split_experts(&gate)?
                    .into_iter()
                    .zip(split_experts(&up)?)
                    .zip(split_experts(&down)?)
                    .map(|((g, u), d)| [g, u, d])
                    .collect(),
            )),
            // llama.cpp's mixed files (Q4_K_M keeps some layers' down projection in Q6_K) are fine:
            // each projection is its own grouped matmul
            Device::Cuda(_) if [&gate, &up, &down].iter().all(|t| our_kernels_read(t.dtype())) => {
                let up_dev = |t: QTensor| -> Result<Arc<QTensor>> {
                    let shape = t.shape().clone();
                    Ok(Arc::new(QTensor::new(QStorage::from_data(t.data()?, &self.device, t.dtype())?, shape)?))
                };
                Ok(ExpertWeights::QStacked { gate: up_dev(gate)?, up: up_dev(up)?, down: up_dev(down)? })
            }
            // anything else (float GGUFs, block types our kernels do not read, Metal): the model dtype
            _ => {
                let gate_up = Tensor::cat(
                    &[&self.float_or_dequantized(&gate, &[e, i, h])?, &self.float_or_dequantized(&up, &[e, i, h])?],
                    1,
                )?; // [E, 2I, H]
                Ok(ExpertWeights::Dense { gate_up, down: self.float_or_dequantized(&down, &[e, h, i])? })
            }
        }
    }
}

/// Loads a llama.cpp OLMoE GGUF file (or a moe-lens cache) with its config. Experts in a block type
/// that candle's grouped CUDA kernels take (Q8_0, Q2K…Q6K) stay quantized on CUDA; others (Q4_0,
/// float) are dequantized to `dtype` there. On the CPU every quantized type stays quantized.
pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<(Config, Olmoe)> {
    let g = open_gguf(path, device, dtype)?;
    Ok((g.config, g.model))
}

/// A llama.cpp GGUF model as [`open_gguf`] loads it.
pub struct GgufModel {
    /// The model's hyper-parameters, read from the GGUF metadata.
    pub config: Config,
    /// The loaded model.
    pub model: Olmoe,
    /// The block type of the experts as the file stores them (`"Q4_K"`, `"Q8_0"`, `"BF16"`…; layers
    /// that differ are listed after the first, e.g. `"Q4_K, Q6_K"`).
    pub experts: String,
    /// The file's metadata (its `tokenizer.ggml.*` entries rebuild the tokenizer).
    pub metadata: HashMap<String, gguf_file::Value>,
}

/// Loads a llama.cpp OLMoE GGUF file like [`load_gguf`], keeping its metadata and the experts'
/// block types.
pub fn open_gguf(path: &Path, device: &Device, dtype: DType) -> Result<GgufModel> {
    let (content, len) = gguf::read_header(path)?;
    let cfg = gguf::config_from_gguf(&content, path)?;
    let experts = gguf::expert_types(&content, cfg.num_hidden_layers);
    let tensors = gguf::read_tensors(path, &content, len)?;
    let src = GgufSource::new(tensors, &cfg, device, dtype, path.to_path_buf());
    let model = Olmoe::build(&cfg, &src, device, dtype)?;
    Ok(GgufModel { config: cfg, model, experts, metadata: content.metadata })
}
