//! Quantized experts on the CPU against our own f32 path (itself checked against transformers in
//! parity.rs), on a random OLMoE-shaped checkpoint whose sizes allow k-quants (multiples of 256).
//! Also: the GGUF cache round-trips, a truncated cache is detected and rebuilt, and the GGUF reader
//! loads the cache file as a llama.cpp-style OLMoE GGUF.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use moe_lens::olmoe::Olmoe;
use moe_lens::quant::{self, Quant};
use moe_lens::spy::{spy_fn, Step};

mod kquant_model;
use kquant_model::{make_checkpoint, overlap, Rng, E, H, K, L, V};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-quant-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Top-k rows of every layer for a few random sequences, plus the layer-0 router logits.
fn routing(m: &Olmoe) -> (Vec<Vec<Vec<u32>>>, Vec<f32>) {
    let mut r = Rng(7);
    let mut all = Vec::new();
    let mut logits0 = Vec::new();
    for s in 0..4 {
        let n = 12 + 5 * s;
        let ids: Vec<u32> = (0..n).map(|_| 2 + (r.uniform() * (V - 2) as f64) as u32).collect();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut rows = Vec::new();
        let mut spy = spy_fn(|ev| {
            rows.push(ev.top_k.to_vec2::<u32>()?);
            if ev.layer == 0 {
                logits0.extend(ev.logits.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(())
        });
        m.forward(&input, None, None, Step::Prefill, Some(&mut spy)).unwrap();
        all.extend(rows);
    }
    (all, logits0)
}

#[test]
fn quantized_routing_keeps_the_f32_experts_and_the_cache_round_trips() {
    let dir = tmpdir("main");
    let (cfg, files) = make_checkpoint(&dir);
    let reference = Olmoe::load(&cfg, &files, &Device::Cpu, DType::F32).unwrap();
    let (ref_routes, ref_logits) = routing(&reference);

    // Q8_0: first load quantizes and writes the cache
    let (q8, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0).unwrap();
    assert!(!rep.cache_hit && rep.cache_rejected.is_none() && rep.cache_write_error.is_none(), "{rep:?}");
    assert!(rep.cache.exists());
    let (q8_routes, q8_logits) = routing(&q8);
    let (mean, top1) = overlap(&ref_routes, &q8_routes);
    eprintln!("q8_0 vs f32: mean top-{K} overlap {mean:.4}, top-1 agreement {top1:.4}");
    assert!(mean >= 0.9, "Q8_0 mean top-{K} overlap {mean}");
    // layer 0's router runs before any expert and everything but the experts is stored exactly, so
    // its logits must not move at all
    let d0 = ref_logits.iter().zip(&q8_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d0 <= 1e-5, "layer-0 router logits differ by {d0} though no expert ran before them");

    // second load: from the cache, and exactly the same model
    let (q8b, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0).unwrap();
    assert!(rep.cache_hit, "{rep:?}");
    let (q8b_routes, q8b_logits) = routing(&q8b);
    assert_eq!(q8_routes, q8b_routes);
    assert_eq!(q8_logits, q8b_logits);

    // a cut-off cache is detected and rebuilt
    let full = std::fs::metadata(&rep.cache).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&rep.cache).unwrap();
    f.set_len(full / 2).unwrap();
    drop(f);
    let (q8c, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0).unwrap();
    assert!(!rep.cache_hit, "{rep:?}");
    let why = rep.cache_rejected.clone().unwrap_or_default();
    assert!(why.contains("truncated"), "{why}");
    assert_eq!(std::fs::metadata(&rep.cache).unwrap().len(), full, "rebuilt cache has the full size");
    assert_eq!(routing(&q8c).0, q8_routes);

    // a header-only fragment (cut inside the header) is rejected too
    let f = std::fs::OpenOptions::new().write(true).open(&rep.cache).unwrap();
    f.set_len(20).unwrap();
    drop(f);
    let (_, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0).unwrap();
    assert!(!rep.cache_hit && rep.cache_rejected.is_some(), "{rep:?}");

    // the cache is a llama.cpp-named OLMoE GGUF: the GGUF reader loads it with its own config
    let (gcfg, g) = quant::load_gguf(&rep.cache, &Device::Cpu, DType::F32).unwrap();
    assert_eq!((gcfg.hidden_size, gcfg.num_experts, gcfg.num_experts_per_tok, gcfg.num_hidden_layers), (H, E, K, L));
    assert_eq!(routing(&g).0, q8_routes);

    // Q4K: coarser, still mostly the same experts
    let (q4, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q4K).unwrap();
    assert!(!rep.cache_hit);
    let (mean4, top14) = overlap(&ref_routes, &routing(&q4).0);
    eprintln!("q4k vs f32: mean top-{K} overlap {mean4:.4}, top-1 agreement {top14:.4}");
    assert!(mean4 >= 0.8, "Q4K mean top-{K} overlap {mean4}");
    assert!(mean4 <= mean + 1e-9 || mean4 - mean < 0.02, "4-bit should not beat 8-bit by much");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn k_quants_refuse_rows_that_are_not_multiples_of_256() {
    let dir = tmpdir("dims");
    let (mut cfg, files) = make_checkpoint(&dir);
    cfg.intermediate_size = 128; // the files say 256: the dimension check comes first
    let err =
        quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q4K).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("intermediate_size is 128")), "{err:?}");
    assert!("q9".parse::<Quant>().is_err());
    assert_eq!("Q4_K".parse::<Quant>().unwrap(), Quant::Q4K);
    let _ = std::fs::remove_dir_all(&dir);
}
