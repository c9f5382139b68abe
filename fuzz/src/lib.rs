//! Shared by the fuzz targets: the tiny model whose weight files the header targets mutate, and a
//! scratch file per process (the loaders read files, so each input is written to one first).

use std::path::PathBuf;

use moe_lens::config::Config;

/// `config.json` of a 1-layer, 2-expert OLMoE with hidden size 4: small enough that a whole load
/// takes microseconds, so the fuzzer spends its time in the header handling.
pub const TINY_CONFIG: &str = r#"{"model_type":"olmoe","vocab_size":8,"hidden_size":4,"intermediate_size":4,
 "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":2,"num_experts":2,
 "num_experts_per_tok":1,"norm_topk_prob":false,"max_position_embeddings":16,"rope_theta":10000.0,
 "rms_norm_eps":1e-5,"clip_qkv":null,"tie_word_embeddings":true,"hidden_act":"silu"}"#;

pub fn tiny_config() -> Config {
    Config::from_json(TINY_CONFIG, std::path::Path::new("tiny/config.json")).expect("the tiny config is valid")
}

/// Tensor names and shapes of the tiny model, in the checkpoint's (transformers) naming.
pub fn tiny_tensors() -> Vec<(String, Vec<usize>)> {
    let (v, h, i, e) = (8, 4, 4, 2);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    let p = "model.layers.0";
    for n in ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"] {
        t.push((format!("{p}.{n}.weight"), vec![h]));
    }
    for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        t.push((format!("{p}.self_attn.{n}.weight"), vec![h, h]));
    }
    t.push((format!("{p}.mlp.gate.weight"), vec![e, h]));
    for x in 0..e {
        t.push((format!("{p}.mlp.experts.{x}.gate_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.experts.{x}.up_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.experts.{x}.down_proj.weight"), vec![h, i]));
    }
    t
}

/// A scratch file for this process (in /dev/shm when there is one: no disk writes per input).
pub fn scratch(ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("moe-lens-fuzz-{}.{ext}", std::process::id()))
}

/// The real OLMoE tokenizer (tests/setup-data.sh puts it there), or `MOE_LENS_FUZZ_TOKENIZER`.
pub fn tokenizer_path() -> PathBuf {
    std::env::var_os("MOE_LENS_FUZZ_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tokenizer/tokenizer.json")))
}
