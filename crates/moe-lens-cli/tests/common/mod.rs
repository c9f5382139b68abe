//! A random OLMoE-shaped checkpoint for the command's tests (quant_crash.rs, prepare.rs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const V: usize = 50304; // ≥ the tokenizer's ids
pub const H: usize = 256;
pub const I: usize = 256;
pub const L: usize = 4;
pub const E: usize = 16;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes a safetensors file by hand (header JSON + little-endian f32 data).
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, (shape, data)) in tensors {
        let end = at + data.len() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, end]}));
        at = end;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + at);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, data) in tensors.values() {
        for x in data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, out).unwrap();
}

/// A random OLMoE checkpoint whose sizes allow Q8_0, with OLMoE's tokenizer.
pub fn checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |shape: &[usize], scale: f32, shift: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                shift + scale * (((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0)
            })
            .collect();
        (shape.to_vec(), data)
    };
    let lin = 1.5 * (3.0f32 / H as f32).sqrt();
    let mut t = BTreeMap::new();
    t.insert("model.embed_tokens.weight".to_string(), rnd(&[V, H], 1.0, 0.0));
    t.insert("model.norm.weight".to_string(), rnd(&[H], 0.2, 1.0));
    for l in 0..L {
        let p = format!("model.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"] {
            t.insert(format!("{p}.{n}.weight"), rnd(&[H], 0.2, 1.0));
        }
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.insert(format!("{p}.self_attn.{n}.weight"), rnd(&[H, H], lin, 0.0));
        }
        t.insert(format!("{p}.mlp.gate.weight"), rnd(&[E, H], lin, 0.0));
        for e in 0..E {
            t.insert(format!("{p}.mlp.experts.{e}.gate_proj.weight"), rnd(&[I, H], lin, 0.0));
            t.insert(format!("{p}.mlp.experts.{e}.up_proj.weight"), rnd(&[I, H], lin, 0.0));
            t.insert(format!("{p}.mlp.experts.{e}.down_proj.weight"), rnd(&[H, I], lin, 0.0));
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &t);
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type":"olmoe","vocab_size":{V},"hidden_size":{H},"intermediate_size":{I},"num_hidden_layers":{L},
            "num_attention_heads":4,"num_key_value_heads":4,"num_experts":{E},"num_experts_per_tok":4,
            "max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}}"#
        ),
    )
    .unwrap();
    let tok = root().join("tests/data/tokenizer/tokenizer.json");
    assert!(tok.exists(), "run tests/setup-data.sh first");
    std::fs::copy(tok, dir.join("tokenizer.json")).unwrap();
}
