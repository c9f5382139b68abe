//! Quantized experts: quantize in-process from the bf16/f32 safetensors, keep a GGUF cache next to
//! the model so the second load skips the work, and read llama.cpp's OLMoE GGUF files.
//!
//! Only the experts (93% of OLMoE's parameters) are quantized. Router gates, norms, embeddings, the
//! output head and the attention projections stay in the checkpoint's precision: the routers decide
//! what this library reports, and the rest is small.
//!
//! The cache is a GGUF file with llama.cpp's tensor names (arch `olmoe`, experts stacked as
//! `blk.N.ffn_{gate,up,down}_exps`), so the same reader loads it and llama.cpp's files. It records a
//! fingerprint of the safetensors files (names, sizes, modification times) and the quantization; a
//! cache that does not match, cannot be parsed, or is shorter than its header says (a write that was
//! cut off) is rebuilt. It is written to a temporary file, synced, then renamed into place.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
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

impl FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "off" => Ok(Quant::None),
            "q8_0" | "q8" => Ok(Quant::Q8_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(Quant::Q4K),
            other => Err(Error::invalid("quant", format!("{other:?}; use none, q8_0 or q4k"))),
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

/// Where the cache of `quant` for the model in `model_dir` lives: `MOE_LENS_QUANT_CACHE_DIR` if set,
/// else the model directory itself.
pub fn cache_path(model_dir: &Path, quant: Quant) -> PathBuf {
    let dir =
        std::env::var_os("MOE_LENS_QUANT_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| model_dir.to_path_buf());
    dir.join(format!("moe-lens.{}.gguf", quant.name()))
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
    let cache = cache_path(model_dir, quant);
    let fp = fingerprint(weight_files);
    let mut report =
        QuantReport { quant, cache: cache.clone(), cache_hit: false, cache_rejected: None, cache_write_error: None };
    if cache.exists() {
        match read_gguf(&cache, Some((&fp, quant))) {
            Ok(tensors) => {
                report.cache_hit = true;
                let src = GgufSource::new(tensors, cfg, device, dtype, cache.clone());
                return Ok((Olmoe::build(cfg, &src, device, dtype)?, report));
            }
            Err(e) => report.cache_rejected = Some(e.to_string()),
        }
    }
    let tensors = quantize_checkpoint(cfg, weight_files, qtype)?;
    if let Err(e) = write_gguf_atomic(&cache, cfg, &fp, quant, &tensors) {
        report.cache_write_error = Some(e.to_string());
    }
    let src = GgufSource::new(tensors.into_iter().collect(), cfg, device, dtype, cache);
    Ok((Olmoe::build(cfg, &src, device, dtype)?, report))
}

fn check_quantizable(cfg: &Config, qtype: GgmlDType) -> Result<()> {
    let b = qtype.block_size();
    for (what, v) in [("hidden_size", cfg.hidden_size), ("intermediate_size", cfg.intermediate_size)] {
        if v % b != 0 {
            return Err(Error::invalid(
                "quant",
                format!(
                    "{qtype:?} packs blocks of {b} weights along each row, but {what} is {v}: {}",
                    if cfg.hidden_size % 32 == 0 && cfg.intermediate_size % 32 == 0 {
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

/// llama.cpp's name of a checkpoint (transformers) tensor, for the non-expert tensors.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let short = match rest {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "self_attn.q_norm.weight" => "attn_q_norm",
        "self_attn.k_norm.weight" => "attn_k_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate.weight" => "ffn_gate_inp",
        _ => return None,
    };
    Some(format!("blk.{l}.{short}.weight"))
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
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(ts.len()).max(1);
    let chunk = ts.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ts
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || -> Result<Vec<Vec<u8>>> {
                    c.iter().map(|t| Ok(QTensor::quantize(t, qtype)?.data()?.into_owned())).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Spy("quantization thread panicked".into()))))
            .collect()
    });
    let mut bytes = Vec::new();
    for p in parts {
        for b in p? {
            bytes.extend_from_slice(&b);
        }
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

/// Writes the cache: temporary file in the same directory, fsync, rename, fsync of the directory.
fn write_gguf_atomic(path: &Path, cfg: &Config, fp: &str, quant: Quant, tensors: &[(String, QTensor)]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale_temps(dir, path);
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let res = (|| -> Result<()> {
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(8 << 20, f);
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
        gguf_file::write(&mut w, &meta_refs, &t_refs)?;
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Deletes temporary cache files (`.<cache name>.tmp.<pid>`) that a killed process left behind: for
/// the full model one is gigabytes. Only those of processes that no longer run are touched (Linux:
/// `/proc/<pid>`; elsewhere none are, as liveness cannot be told).
fn remove_stale_temps(dir: &Path, cache: &Path) {
    let Some(name) = cache.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        let gone =
            cfg!(target_os = "linux") && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Opens a GGUF file and reads its header (metadata and tensor table), returning it with the file's
/// length and the open reader. A damaged header is an [`Error::Weights`], never a panic: the fields
/// candle's reader would divide by or allocate from are checked first ([`check_gguf_header`]).
fn read_header(path: &Path) -> Result<(gguf_file::Content, u64, BufReader<File>)> {
    let bad = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
    let unreadable = |why: String| {
        bad(format!("not a readable GGUF file ({why}); it is truncated or corrupt: delete it (a moe-lens cache is rebuilt on the next load)"))
    };
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    // The metadata is at the start; 16 MiB holds any real header (the walker says if it needs more).
    let mut head = Vec::new();
    (&mut f).take(16 << 20).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    walk_gguf_header(&head, len).map_err(|e| match e {
        HeaderProblem::Corrupt(m) => unreadable(m),
        HeaderProblem::Unsupported(m) => bad(m),
    })?;
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::with_capacity(8 << 20, f);
    let content = gguf_file::Content::read(&mut r).map_err(|e| unreadable(e.to_string()))?;
    Ok((content, len, r))
}

/// Checks a GGUF header (`head`: the first bytes of a file of `file_len` bytes) for what would make
/// candle's reader panic instead of failing: a `general.alignment` of 0. Also refuses a wrong magic
/// or version and lengths that run past the end, with a reason. Does not allocate from the file's
/// numbers. Public for the fuzz targets.
pub fn check_gguf_header(head: &[u8], file_len: u64) -> std::result::Result<(), String> {
    walk_gguf_header(head, file_len).map_err(|e| match e {
        HeaderProblem::Corrupt(m) | HeaderProblem::Unsupported(m) => m,
    })
}

/// What is wrong with a GGUF header.
enum HeaderProblem {
    /// Cut off or corrupt.
    Corrupt(String),
    /// Sound, but a tensor's block type is one candle cannot read (llama.cpp's i-quants, say).
    Unsupported(String),
}

/// llama.cpp's names of the block types candle cannot read, by id.
fn unsupported_block_type(id: u32) -> Option<&'static str> {
    Some(match id {
        4 | 5 => "Q4_2/Q4_3 (removed from llama.cpp)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        0..=3 | 6..=15 | 30 => return None,
        _ => "an unknown type",
    })
}

fn walk_gguf_header(head: &[u8], file_len: u64) -> std::result::Result<(), HeaderProblem> {
    struct Cur<'a> {
        b: &'a [u8],
        at: usize,
        v1: bool,
    }
    impl Cur<'_> {
        fn take(&mut self, n: u64) -> std::result::Result<&[u8], String> {
            let end = usize::try_from(n).ok().and_then(|n| self.at.checked_add(n)).filter(|&e| e <= self.b.len());
            match end {
                Some(e) => {
                    let s = &self.b[self.at..e];
                    self.at = e;
                    Ok(s)
                }
                None => {
                    Err(format!("the header runs past byte {} (cut off, or a length field is corrupt)", self.b.len()))
                }
            }
        }
        fn u32(&mut self) -> std::result::Result<u32, String> {
            let s = self.take(4)?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        fn u64(&mut self) -> std::result::Result<u64, String> {
            let s = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            Ok(u64::from_le_bytes(a))
        }
        fn len(&mut self) -> std::result::Result<u64, String> {
            if self.v1 {
                self.u32().map(u64::from)
            } else {
                self.u64()
            }
        }
        fn string(&mut self) -> std::result::Result<&[u8], String> {
            let n = self.len()?;
            self.take(n)
        }
        /// Skips a value of type `t`; returns it as an integer when it is a scalar integer.
        fn value(&mut self, t: u32, depth: usize) -> std::result::Result<Option<i128>, String> {
            let fixed = |c: &mut Self, n: u64| -> std::result::Result<Option<i128>, String> {
                let s = c.take(n)?;
                let mut a = [0u8; 8];
                a[..s.len()].copy_from_slice(s);
                Ok(Some(match (t, n) {
                    (1, 1) => i128::from(s[0] as i8),
                    (3, 2) => i128::from(i16::from_le_bytes([s[0], s[1]])),
                    (5, 4) => i128::from(i32::from_le_bytes([s[0], s[1], s[2], s[3]])),
                    (11, 8) => i128::from(i64::from_le_bytes(a)),
                    _ => i128::from(u64::from_le_bytes(a)),
                }))
            };
            match t {
                0 | 1 | 7 => fixed(self, 1),
                2 | 3 => fixed(self, 2),
                4 | 5 => fixed(self, 4),
                6 => self.take(4).map(|_| None),
                10 | 11 => fixed(self, 8),
                12 => self.take(8).map(|_| None),
                8 => self.string().map(|_| None),
                9 => {
                    if depth > 4 {
                        return Err("arrays nested too deeply".into());
                    }
                    let inner = self.u32()?;
                    let n = self.len()?;
                    for _ in 0..n {
                        self.value(inner, depth + 1)?;
                    }
                    Ok(None)
                }
                other => Err(format!("unknown metadata value type {other}")),
            }
        }
    }
    let corrupt = HeaderProblem::Corrupt;
    let mut c = Cur { b: head, at: 0, v1: false };
    if c.take(4).map_err(corrupt)? != b"GGUF" {
        return Err(corrupt("it does not start with the GGUF magic bytes".into()));
    }
    match c.u32().map_err(corrupt)? {
        1 => c.v1 = true,
        2 | 3 => {}
        v => return Err(corrupt(format!("GGUF version {v} is not 1, 2 or 3"))),
    }
    let tensors = c.len().map_err(corrupt)?;
    let kvs = c.len().map_err(corrupt)?;
    // every entry takes at least 5 bytes: more than the file holds is corrupt
    if kvs > file_len / 5 {
        return Err(corrupt(format!("the header claims {kvs} metadata entries, more than the file can hold")));
    }
    for _ in 0..kvs {
        let key = c.string().map_err(corrupt)?.to_vec();
        let t = c.u32().map_err(corrupt)?;
        let v = c.value(t, 0).map_err(corrupt)?;
        if key == b"general.alignment" && t <= 5 && v == Some(0) {
            return Err(corrupt("general.alignment is 0".into()));
        }
    }
    // the tensor infos: name, dimensions, block type, offset. Walked only while they lie in `head`
    // (candle reads them itself); what matters here is a block type candle cannot read, which it
    // would report as an unknown dtype, as if the file were damaged.
    if tensors > file_len / 20 {
        return Err(corrupt(format!("the header claims {tensors} tensors, more than the file can hold")));
    }
    for _ in 0..tensors {
        let Ok(name) = c.string().map(|n| String::from_utf8_lossy(n).into_owned()) else { return Ok(()) };
        let Ok(n_dims) = c.u32() else { return Ok(()) };
        if n_dims > 8 {
            return Err(corrupt(format!("tensor {name} claims {n_dims} dimensions")));
        }
        for _ in 0..n_dims {
            if c.len().is_err() {
                return Ok(());
            }
        }
        let Ok(t) = c.u32() else { return Ok(()) };
        if let Some(kind) = unsupported_block_type(t) {
            return Err(HeaderProblem::Unsupported(format!(
                "tensor {name} is stored in block type {kind} (GGML type {t}), which moe-lens cannot \
                 read (candle reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K…Q6_K): use a \
                 Q4_K_M, Q5_K_M, Q6_K or Q8_0 file of the model, or load its safetensors checkpoint"
            )));
        }
        if c.u64().is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads every tensor of a GGUF file onto the CPU after checking that the file is complete (and,
/// for a cache, that it belongs to `expect`'s fingerprint and quantization).
fn read_gguf(path: &Path, expect: Option<(&str, Quant)>) -> Result<HashMap<String, QTensor>> {
    let bad = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
    let (content, len, r) = read_header(path)?;
    if let Some((fp, quant)) = expect {
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
    }
    let mut end = content.tensor_data_offset;
    for (name, info) in &content.tensor_infos {
        // checked: the sizes come from the file, and an overflow must be an error, not a panic
        let size = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .map(|n| n / info.ggml_dtype.block_size())
            .and_then(|blocks| blocks.checked_mul(info.ggml_dtype.type_size()))
            .and_then(|s| u64::try_from(s).ok());
        // a tensor without elements makes candle build a slice from a dangling, unaligned pointer
        // (undefined behaviour; an abort in debug builds such as evcxr's)
        if size == Some(0) || info.shape.dims().contains(&0) {
            return Err(bad(format!(
                "tensor {name} has no elements (shape {:?}); the file is corrupt: delete it",
                info.shape.dims()
            )));
        }
        let tensor_end = size.and_then(|s| content.tensor_data_offset.checked_add(info.offset)?.checked_add(s));
        match tensor_end {
            Some(e) => end = end.max(e),
            None => {
                return Err(bad(format!(
                    "tensor {name}: its shape {:?} or offset is impossibly large; the file is corrupt: delete it",
                    info.shape.dims()
                )))
            }
        }
    }
    if len < end {
        return Err(bad(format!("truncated: {len} bytes, the header describes {end}")));
    }
    drop(r);
    // several readers at once (each its own file handle): one reader was the larger part of a
    // cached load
    let names: Vec<&String> = content.tensor_infos.keys().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let per = names.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<(String, QTensor)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(per)
            .map(|chunk| {
                let content = &content;
                s.spawn(move || -> Result<Vec<(String, QTensor)>> {
                    let f = File::open(path).map_err(|e| Error::io(path, e))?;
                    let mut r = BufReader::with_capacity(8 << 20, f);
                    chunk
                        .iter()
                        .map(|name| {
                            let t =
                                content.tensor(&mut r, name, &Device::Cpu).map_err(|e| bad(format!("{name}: {e}")))?;
                            Ok(((*name).clone(), t))
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(bad("a reader thread panicked".into())))).collect()
    });
    let mut out = HashMap::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
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

/// Reads the model config from a llama.cpp GGUF file's metadata (arch `olmoe`). The values pass the
/// same checks as a `config.json` ([`Config::from_json`]), so a damaged file is refused by name.
pub fn config_from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Config> {
    let arch =
        content.metadata.get("general.architecture").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
    if arch != "olmoe" {
        return Err(Error::config(path, format!("GGUF architecture is {arch:?}, not \"olmoe\"")));
    }
    let get = |k: &str| content.metadata.get(&format!("olmoe.{k}"));
    let opt_u = |k: &str| -> Result<Option<u64>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .to_u32()
                .map(u64::from)
                .or_else(|_| v.to_u64())
                .map(Some)
                .map_err(|e| Error::config(path, format!("olmoe.{k}: {e}"))),
        }
    };
    let u = |k: &str| -> Result<u64> {
        opt_u(k)?.ok_or_else(|| Error::config(path, format!("GGUF metadata olmoe.{k} is missing")))
    };
    let f = |k: &str, d: f64| get(k).and_then(|v| v.to_f32().ok()).map_or(d, f64::from);
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .ok_or_else(|| Error::config(path, "token_embd.weight is missing"))?;
    let inter = match opt_u("expert_feed_forward_length")? {
        Some(x) => x,
        None => u("feed_forward_length")?,
    };
    let heads = u("attention.head_count")?;
    let mut json = serde_json::json!({
        "model_type": "olmoe",
        "vocab_size": vocab,
        "hidden_size": u("embedding_length")?,
        "intermediate_size": inter,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": opt_u("attention.head_count_kv")?.unwrap_or(heads),
        "num_experts": u("expert_count")?,
        "num_experts_per_tok": u("expert_used_count")?,
        "norm_topk_prob": false,
        "max_position_embeddings": opt_u("context_length")?.unwrap_or(4096),
        "rope_theta": f("rope.freq_base", 10000.0),
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon", 1e-5),
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
    });
    if let Some(hd) = opt_u("attention.key_length")? {
        json["head_dim"] = hd.into();
    }
    let mut cfg = Config::from_json(&json.to_string(), path)?;
    cfg.eos_token_id = content.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
    cfg.pad_token_id = content.metadata.get("tokenizer.ggml.padding_token_id").and_then(|v| v.to_u32().ok());
    Ok(cfg)
}

/// Loads a llama.cpp OLMoE GGUF file (or a moe-lens cache) with its config. Experts in a block type
/// that candle's grouped CUDA kernels take (Q8_0, Q2K…Q6K) stay quantized on CUDA; others (Q4_0,
/// float) are dequantized to `dtype` there. On the CPU every quantized type stays quantized.
pub fn load_gguf(path: &Path, device: &Device, dtype: DType) -> Result<(Config, Olmoe)> {
    let g = open_gguf(path, device, dtype)?;
    Ok((g.config, g.model))
}

/// The config in a llama.cpp GGUF file's metadata (reads only the header).
pub fn gguf_config(path: &Path) -> Result<Config> {
    let (content, _, _) = read_header(path)?;
    config_from_gguf(&content, path)
}

/// A llama.cpp GGUF model as [`open_gguf`] loads it.
pub struct GgufModel {
    pub config: Config,
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
    let (content, _, r) = read_header(path)?;
    let cfg = config_from_gguf(&content, path)?;
    drop(r);
    let mut experts: Vec<String> = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for p in ["gate", "up", "down"] {
            if let Some(info) = content.tensor_infos.get(&format!("blk.{l}.ffn_{p}_exps.weight")) {
                let name = ggml_name(info.ggml_dtype).to_string();
                if !experts.contains(&name) {
                    experts.push(name);
                }
            }
        }
    }
    let tensors = read_gguf(path, None)?;
    let src = GgufSource::new(tensors, &cfg, device, dtype, path.to_path_buf());
    let model = Olmoe::build(&cfg, &src, device, dtype)?;
    Ok(GgufModel { config: cfg, model, experts: experts.join(", "), metadata: content.metadata })
}

/// llama.cpp's name of a block type.
pub fn ggml_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}
