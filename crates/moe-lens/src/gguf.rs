//! GGUF files (llama.cpp's format, also the moe-lens quantized cache): header checks that refuse a
//! damaged file by name instead of letting candle's reader panic, the tensors, the OLMoE config from
//! the metadata, llama.cpp's tensor and block-type names, and the Hugging Face tokenizer rebuilt
//! from the `tokenizer.ggml.*` metadata.
//!
//! This is the input floor: it reads files and returns values (`Content`, `QTensor`s, [`Config`],
//! [`Tokenizer`]); building a model from them is `quant`'s job.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use rayon::prelude::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokens::Tokenizer;

pub use candle_core::quantized::gguf_file::{Content, Value};

/// Opens a GGUF file and reads its header (metadata and tensor table), returning it with the file's
/// length. A damaged header is an [`Error::Weights`], never a panic: the fields candle's reader
/// would divide by or allocate from are checked first ([`check_gguf_header`]).
pub fn read_header(path: &Path) -> Result<(Content, u64)> {
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
    let content = Content::read(&mut r).map_err(|e| unreadable(e.to_string()))?;
    Ok((content, len))
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

/// Reads every tensor of the GGUF file `path` (whose header [`read_header`] returned as `content`
/// and `len`) onto the CPU, after checking that the file is complete: a tensor that would end past
/// the file's `len` bytes (a write that was cut off), has no elements or impossible sizes is an
/// [`Error::Weights`].
pub fn read_tensors(path: &Path, content: &Content, len: u64) -> Result<HashMap<String, QTensor>> {
    let bad = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
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
    // several readers at once (each its own file handle): one reader was the larger part of a
    // cached load
    let names: Vec<&String> = content.tensor_infos.keys().collect();
    let readers = rayon::current_num_threads().clamp(1, 8);
    let per = names.len().div_ceil(readers).max(1);
    let parts: Vec<Result<Vec<(String, QTensor)>>> = names
        .par_chunks(per)
        .map(|chunk| -> Result<Vec<(String, QTensor)>> {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            let mut r = BufReader::with_capacity(8 << 20, f);
            chunk
                .iter()
                .map(|name| {
                    let t = content.tensor(&mut r, name, &Device::Cpu).map_err(|e| bad(format!("{name}: {e}")))?;
                    Ok(((*name).clone(), t))
                })
                .collect()
        })
        .collect();
    let mut out = HashMap::new();
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// Reads the model config from a llama.cpp GGUF file's metadata (arch `olmoe`). The values pass the
/// same checks as a `config.json` ([`Config::from_json`]), so a damaged file is refused by name.
pub fn config_from_gguf(content: &Content, path: &Path) -> Result<Config> {
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

/// The config in a llama.cpp GGUF file's metadata (reads only the header).
pub fn gguf_config(path: &Path) -> Result<Config> {
    let (content, _) = read_header(path)?;
    config_from_gguf(&content, path)
}

/// The block types of the experts as the file stores them (`"Q4_K"`, `"Q8_0"`, `"BF16"`…; types
/// that differ between layers or projections are listed after the first, e.g. `"Q4_K, Q6_K"`).
pub fn expert_types(content: &Content, layers: usize) -> String {
    let mut experts: Vec<String> = Vec::new();
    for l in 0..layers {
        for p in ["gate", "up", "down"] {
            if let Some(info) = content.tensor_infos.get(&format!("blk.{l}.ffn_{p}_exps.weight")) {
                let name = ggml_name(info.ggml_dtype).to_string();
                if !experts.contains(&name) {
                    experts.push(name);
                }
            }
        }
    }
    experts.join(", ")
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

/// Rebuilds the Hugging Face tokenizer from a llama.cpp GGUF file's `tokenizer.ggml.*` metadata,
/// for a `.gguf` that has no `tokenizer.json` beside it.
///
/// llama.cpp's converter stores OLMoE's byte-level BPE as `tokenizer.ggml.model = "gpt2"` with
/// the pre-tokenizer `"olmo"` (GPT-2's split pattern), its tokens (byte-level strings, added
/// tokens as plain text), token types and merges. This puts back what the original
/// `tokenizer.json` says around them: NFC normalisation, byte-level pre-tokenizer, post-processor
/// and decoder without a prefix space, control tokens as special added tokens and user-defined
/// ones as normal added tokens; the `[PADn]` fillers llama.cpp writes for unused ids are left
/// out. Other tokenizer kinds are refused with [`Error::Tokenizer`], which says to put the
/// model's `tokenizer.json` next to the file.
pub fn tokenizer_from_metadata(metadata: &HashMap<String, Value>, path: &Path) -> Result<Tokenizer> {
    let fix = format!(
        "put the model's tokenizer.json next to {} (for OLMoE, \
         https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/tokenizer.json)",
        path.display()
    );
    let bad = |what: String| Error::Tokenizer(format!("{}: {what}; {fix}", path.display()));
    let string = |k: &str| metadata.get(k).and_then(|v| v.to_string().ok().cloned());
    let array = |k: &str| -> Result<&Vec<Value>> {
        match metadata.get(k) {
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(bad(format!("{k} is not a list"))),
            None => Err(bad(format!("the file has no {k}"))),
        }
    };
    match string("tokenizer.ggml.model").as_deref() {
        Some("gpt2") => {}
        Some(other) => {
            return Err(bad(format!("its tokenizer is of kind {other:?}, not OLMoE's byte-level BPE (\"gpt2\")")))
        }
        None => return Err(bad("the file holds no tokenizer (no tokenizer.ggml.model)".into())),
    }
    // the pre-tokenizers whose split pattern is GPT-2's, which OLMoE's tokenizer.json uses
    match string("tokenizer.ggml.pre").as_deref() {
        Some("olmo" | "gpt-2") => {}
        Some(other) => return Err(bad(format!("its pre-tokenizer is {other:?}, not OLMoE's \"olmo\""))),
        None => return Err(bad("the file does not name its pre-tokenizer (tokenizer.ggml.pre)".into())),
    }
    let tokens = array("tokenizer.ggml.tokens")?;
    let types = array("tokenizer.ggml.token_type")?;
    let merges = array("tokenizer.ggml.merges")?;
    if types.len() != tokens.len() {
        return Err(bad(format!("{} tokens but {} token types", tokens.len(), types.len())));
    }
    // llama.cpp's token types
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    const USER_DEFINED: i32 = 4;
    const UNUSED: i32 = 5;
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(types).enumerate() {
        let tok = tok.to_string().map_err(|_| bad(format!("token {id} is not a string")))?;
        let ty = ty.to_i32().map_err(|_| bad(format!("the type of token {id} is not an integer")))?;
        match ty {
            UNUSED => continue,
            NORMAL => {}
            CONTROL | USER_DEFINED => {
                let special = ty == CONTROL;
                added.push(serde_json::json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": !special, "special": special,
                }));
            }
            other => return Err(bad(format!("token {id} has type {other}, which a byte-level BPE does not use"))),
        }
        vocab.insert(tok.clone(), id.into());
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_string().cloned().map_err(|_| bad(format!("merge {i} is not a string"))))
        .collect::<Result<Vec<String>>>()?;
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let inner = tokenizers::Tokenizer::from_str(&json.to_string())
        .map_err(|e| bad(format!("its tokenizer could not be rebuilt ({e})")))?;
    let eos = metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
    Ok(Tokenizer::from_rebuilt(inner, path.to_path_buf(), eos))
}
