//! The fuzzers' committed corpora (fuzz/corpus/<target>/, minimised: every input there reached new
//! code) replayed through the same entry points in the ordinary test run, so `cargo test` keeps
//! them as regression tests without cargo-fuzz. Each input must give a value or an error, never a
//! panic; the file that panics is named.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use moe_lens::config::Config;
use moe_lens::corpus::{parse_delimited, parse_jsonl, parse_lines};
use moe_lens::tokens::Tokenizer;
use moe_lens::DType;
use moe_lens::Device;
use moe_lens::{gguf, quant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "{} is empty", dir.display());
    v
}

fn replay(target: &str, f: impl Fn(&[u8])) {
    let mut panicked = Vec::new();
    let all = inputs(target);
    for (path, bytes) in &all {
        if catch_unwind(AssertUnwindSafe(|| f(bytes))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    eprintln!("{target}: {} inputs replayed", all.len());
    assert!(panicked.is_empty(), "{target}: these inputs panic:\n{}", panicked.join("\n"));
}

fn scratch(ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("moe-lens-fuzz-replay-{}.{ext}", std::process::id()))
}

/// The fuzz targets' tiny model (fuzz/src/lib.rs): 1 layer, 2 experts, hidden 4.
const TINY_CONFIG: &str = r#"{"model_type":"olmoe","vocab_size":8,"hidden_size":4,"intermediate_size":4,
 "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":2,"num_experts":2,
 "num_experts_per_tok":1,"norm_topk_prob":false,"max_position_embeddings":16,"rope_theta":10000.0,
 "rms_norm_eps":1e-5,"clip_qkv":null,"tie_word_embeddings":true,"hidden_act":"silu"}"#;

#[test]
fn tokens_corpus() {
    let tok = Tokenizer::from_file(root().join("tests/data/tokenizer/tokenizer.json"))
        .expect("run tests/setup-data.sh first");
    replay("tokens", |data| {
        let (ids_len, data) = match data {
            [a, rest @ ..] => ((*a as usize % 16) * 4, rest),
            [] => (0, data),
        };
        let (text, id_bytes) = data.split_at(data.len().saturating_sub(ids_len));
        let ids: Vec<u32> =
            id_bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 60000).collect();
        let _ = tok.labels(&ids);
        let text = String::from_utf8_lossy(text);
        if let Ok(tokens) = tok.encode(&text) {
            // the bytes spell the NFC-normalised text (the tokenizer normalises first), which is
            // what decode gives back
            let bytes: Vec<u8> = tokens.iter().flat_map(|t| tok.token_bytes(t.id).unwrap()).collect();
            let ids_of: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(bytes, tok.decode(&ids_of).unwrap().as_bytes());
            let _ = tok.extend(&text, &tokens, &ids);
        }
    });
}

#[test]
fn config_corpus() {
    replay("config", |data| {
        let _ = Config::from_json(&String::from_utf8_lossy(data), Path::new("config.json"));
    });
}

#[test]
fn corpus_corpus() {
    replay("corpus", |data| {
        let Some((&which, bytes)) = data.split_first() else { return };
        let p = Path::new("fuzz.corpus");
        let _ = match which % 5 {
            0 => parse_delimited(bytes, b'\t', p, "fuzz"),
            1 => parse_delimited(bytes, b',', p, "fuzz"),
            2 => parse_jsonl(bytes, p, "fuzz"),
            3 => parse_lines(bytes, "ko", p, "fuzz"),
            _ => {
                let (tag, rest) = bytes.split_at(bytes.len().min(6));
                parse_lines(rest, &String::from_utf8_lossy(tag), p, "fuzz")
            }
        };
    });
}

#[test]
fn safetensors_corpus() {
    let cfg = Config::from_json(TINY_CONFIG, Path::new("tiny")).unwrap();
    let path = scratch("safetensors");
    replay("safetensors_header", |data| {
        std::fs::write(&path, data).unwrap();
        let _ = moe_lens::olmoe::Olmoe::load(&cfg, std::slice::from_ref(&path), &Device::Cpu, DType::F32);
    });
    let _ = std::fs::remove_file(path);
}

#[test]
fn gguf_corpus() {
    let path = scratch("gguf");
    replay("gguf_header", |data| {
        let _ = gguf::check_gguf_header(data, data.len() as u64);
        std::fs::write(&path, data).unwrap();
        let _ = quant::load_gguf(&path, &Device::Cpu, DType::F32);
    });
    let _ = std::fs::remove_file(path);
}
