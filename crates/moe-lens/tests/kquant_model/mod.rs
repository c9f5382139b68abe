//! A random OLMoE-shaped checkpoint whose sizes allow k-quants (multiples of 256), with decisive
//! routers; shared by quant.rs and cuda_fused.rs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moe_lens::config::Config;

pub const H: usize = 256;
pub const I: usize = 256;
pub const L: usize = 3;
pub const E: usize = 16;
pub const K: usize = 8;
pub const V: usize = 512;
pub const HEADS: usize = 4;

/// Deterministic normal numbers (xorshift + Box-Muller), so the checkpoint is the same every run.
pub struct Rng(pub u64);
impl Rng {
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f32 {
        let (a, b) = (self.uniform(), self.uniform());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }
    pub fn tensor(&mut self, shape: &[usize], scale: f32, shift: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| shift + scale * self.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// Writes config.json and model.safetensors of a random OLMoE with decisive routers (weights
/// ~ N(0, 1.5²/fan_in), as tests/fixtures/make_fixtures.py's `init_weights`).
pub fn make_checkpoint(dir: &Path) -> (Config, Vec<PathBuf>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let lin = |r: &mut Rng, out: usize, inp: usize| r.tensor(&[out, inp], 1.5 / (inp as f32).sqrt(), 0.0);
    t.insert("model.embed_tokens.weight".into(), r.tensor(&[V, H], 1.0, 0.0));
    t.insert("model.norm.weight".into(), r.tensor(&[H], 0.2, 1.0));
    t.insert("lm_head.weight".into(), lin(&mut r, V, H));
    for l in 0..L {
        let p = format!("model.layers.{l}");
        t.insert(format!("{p}.input_layernorm.weight"), r.tensor(&[H], 0.2, 1.0));
        t.insert(format!("{p}.post_attention_layernorm.weight"), r.tensor(&[H], 0.2, 1.0));
        t.insert(format!("{p}.self_attn.q_norm.weight"), r.tensor(&[H], 0.2, 1.0));
        t.insert(format!("{p}.self_attn.k_norm.weight"), r.tensor(&[H], 0.2, 1.0));
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.insert(format!("{p}.self_attn.{n}.weight"), lin(&mut r, H, H));
        }
        t.insert(format!("{p}.mlp.gate.weight"), lin(&mut r, E, H));
        for e in 0..E {
            t.insert(format!("{p}.mlp.experts.{e}.gate_proj.weight"), lin(&mut r, I, H));
            t.insert(format!("{p}.mlp.experts.{e}.up_proj.weight"), lin(&mut r, I, H));
            t.insert(format!("{p}.mlp.experts.{e}.down_proj.weight"), lin(&mut r, H, I));
        }
    }
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&t, &st).unwrap();
    let cfg_json = format!(
        r#"{{"model_type":"olmoe","vocab_size":{V},"hidden_size":{H},"intermediate_size":{I},
        "num_hidden_layers":{L},"num_attention_heads":{HEADS},"num_key_value_heads":{HEADS},
        "num_experts":{E},"num_experts_per_tok":{K},"norm_topk_prob":false,"max_position_embeddings":256,
        "rope_theta":10000.0,"rms_norm_eps":1e-5,"clip_qkv":null,"tie_word_embeddings":false,
        "hidden_act":"silu","eos_token_id":2,"pad_token_id":1,"torch_dtype":"float32"}}"#
    );
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg_json).unwrap();
    (Config::from_file(&cfg_path).unwrap(), vec![st])
}

/// Mean |A ∩ B| / k over rows, and the share of rows with the same top-1.
pub fn overlap(a: &[Vec<Vec<u32>>], b: &[Vec<Vec<u32>>]) -> (f64, f64) {
    let (mut sum, mut top1, mut n) = (0.0, 0.0, 0.0);
    assert_eq!(a.len(), b.len(), "different numbers of routing events");
    for (la, lb) in a.iter().zip(b) {
        assert_eq!(la.len(), lb.len(), "different numbers of rows");
        for (ra, rb) in la.iter().zip(lb) {
            let common = ra.iter().filter(|e| rb.contains(e)).count();
            sum += common as f64 / ra.len() as f64;
            top1 += f64::from(u8::from(ra[0] == rb[0]));
            n += 1.0;
        }
    }
    (sum / n, top1 / n)
}
