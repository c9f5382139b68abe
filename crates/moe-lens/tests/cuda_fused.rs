//! The fused CUDA bf16 kernels (src/kernels/fused.cu) against transformers' float32 routing of the
//! narrow test checkpoint (tests/fixtures/olmoe-narrow.ref.json, made by make_fixtures.py), and the
//! batched (grouped-expert) path against the same reference. Needs a GPU: built only with
//! `--features cuda`, and skipped when no CUDA device opens. The full-size comparison against
//! transformers on a GPU is in bench/ (BENCHMARKS.md).
#![cfg(any(feature = "cuda", moe_lens_cuda))]

use std::path::{Path, PathBuf};

use moe_lens::config::Config;
use moe_lens::olmoe::{Olmoe, Tuning};
use moe_lens::spy::{RouterEvent, RouterSpy, RoutingCache, Step};
use moe_lens::{DType, Device, Tensor};
use serde_json::Value;

mod kquant_model;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(device: &Device, dtype: DType) -> (Olmoe, Value) {
    let dir = root().join("tests/fixtures/olmoe-narrow");
    let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    let cfg = Config::from_file(dir.join("config.json")).unwrap();
    let m = Olmoe::load(&cfg, &weights, device, dtype).unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/olmoe-narrow.ref.json")).unwrap())
            .unwrap();
    (m, r)
}

fn ids_of(s: &Value) -> Vec<u32> {
    s["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn want_top_k(s: &Value, l: usize) -> Vec<Vec<u32>> {
    s["layers"][l]["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

fn cuda() -> Option<Device> {
    Device::new_cuda(0).ok()
}

/// Mean top-k overlap of one-by-one traces with the float32 reference.
fn overlap_one_by_one(m: &Olmoe, r: &Value, device: &Device) -> f64 {
    let k = m.config().num_experts_per_tok;
    let (mut hit, mut rows) = (0usize, 0usize);
    for s in r["sentences"].as_array().unwrap() {
        let ids = ids_of(s);
        let mut cache = RoutingCache::new();
        m.forward(
            &Tensor::new(ids.as_slice(), device).unwrap().unsqueeze(0).unwrap(),
            None,
            None,
            Step::Prefill,
            Some(&mut cache),
        )
        .unwrap();
        for l in 0..m.config().num_hidden_layers {
            let ours = &cache.get(l).unwrap()[0];
            for (t, want) in want_top_k(s, l).iter().enumerate() {
                hit += ours.top_k_row(t).iter().filter(|e| want.contains(e)).count();
                rows += 1;
            }
        }
    }
    hit as f64 / (rows * k) as f64
}

#[test]
fn fused_bf16_routing_stays_close_to_f32_reference() {
    let Some(dev) = cuda() else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let (mut m, r) = load(&dev, DType::BF16);
    m.set_tuning(Tuning { fused: true, ..m.tuning().clone() });
    let fused = overlap_one_by_one(&m, &r, &dev);
    m.set_tuning(Tuning { fused: false, ..m.tuning().clone() });
    let unfused = overlap_one_by_one(&m, &r, &dev);
    eprintln!("bf16 vs transformers f32: fused {fused:.3}, candle ops {unfused:.3}");
    // the CPU bf16 test in parity.rs asks for > 0.8
    assert!(fused > 0.8, "fused bf16 mean top-k overlap {fused}");
    assert!(unfused > 0.8, "unfused bf16 mean top-k overlap {unfused}");
}

#[test]
fn fused_f32_path_is_exact() {
    let Some(dev) = cuda() else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    // float32 on the GPU runs candle's ops with the one host copy of the routing per call
    let (m, r) = load(&dev, DType::F32);
    let o = overlap_one_by_one(&m, &r, &dev);
    assert!(o > 0.999, "f32 on CUDA: mean top-k overlap {o}");
}

/// Collects (row, top-k) of real rows per layer from a padded batch.
struct Rows {
    per_layer: Vec<Vec<Vec<u32>>>,
}

impl RouterSpy for Rows {
    fn on_route(&mut self, ev: &RouterEvent<'_>) -> moe_lens::Result<()> {
        let (_, k) = ev.top_k.dims2()?;
        let ids: Vec<u32> = ev.top_k.flatten_all()?.to_vec1()?;
        let rows = ids.chunks(k).enumerate().filter(|(i, _)| ev.is_real(*i)).map(|(_, c)| c.to_vec()).collect();
        self.per_layer[ev.layer] = rows;
        Ok(())
    }
}

#[test]
fn batched_grouped_path_matches_reference() {
    let Some(dev) = cuda() else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let (mut m, r) = load(&dev, DType::BF16);
    let sents: Vec<&Value> = r["sentences"].as_array().unwrap().iter().collect();
    let ids: Vec<Vec<u32>> = sents.iter().map(|s| ids_of(s)).collect();
    let t = ids.iter().map(Vec::len).max().unwrap();
    let mut flat = Vec::new();
    for s in &ids {
        flat.extend_from_slice(s);
        flat.extend(std::iter::repeat_n(1u32, t - s.len()));
    }
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let input = Tensor::from_vec(flat, (ids.len(), t), &dev).unwrap();
    let layers = m.config().num_hidden_layers;
    let k = m.config().num_experts_per_tok;
    // both expert paths: every expert densely, and grouped by expert (batched matmuls)
    for dense_max in [usize::MAX, 0] {
        m.set_tuning(Tuning { dense_max_tokens: dense_max, ..m.tuning().clone() });
        let mut spy = Rows { per_layer: vec![Vec::new(); layers] };
        m.forward(&input, None, Some(&lens), Step::Prefill, Some(&mut spy)).unwrap();
        let (mut hit, mut rows) = (0usize, 0usize);
        for l in 0..layers {
            let want: Vec<Vec<u32>> = sents.iter().flat_map(|s| want_top_k(s, l)).collect();
            assert_eq!(spy.per_layer[l].len(), want.len(), "layer {l}: real rows");
            for (ours, want) in spy.per_layer[l].iter().zip(&want) {
                hit += ours.iter().filter(|e| want.contains(e)).count();
                rows += 1;
            }
        }
        let o = hit as f64 / (rows * k) as f64;
        eprintln!("batched, dense_max {dense_max}: mean top-k overlap {o:.3}");
        assert!(o > 0.8, "batched bf16 (dense_max {dense_max}) mean top-k overlap {o}");
    }
}

/// The two quantized CUDA paths — experts expanded to bf16 for cuBLAS (batches) and our matmul
/// reading the blocks directly (short inputs, `ml_qmm_*`) — against each other and against the f32
/// model on the CPU (our f32 path is checked against transformers in parity.rs), on a random
/// checkpoint with k-quant sizes, Q4K and Q8_0: a padded batch (both paths forced) and one-by-one
/// sentences (the default switch). Both paths multiply the same bf16-rounded weights, so they may
/// differ only by the order of their sums.
#[test]
fn quantized_paths_keep_the_f32_experts() {
    use kquant_model::{make_checkpoint, Rng, K, L, V};
    use moe_lens::quant::{self, Quant};
    let Some(dev) = cuda() else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let dir = std::env::temp_dir().join(format!("moe-lens-cuda-deq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (cfg, files) = make_checkpoint(&dir);
    // 130 sequences of 12..35 tokens, padded: 4,550 rows, past the threshold and past the 4,096
    // rows the expanded path takes per call (so it runs in two row chunks)
    let mut r = Rng(11);
    let ids: Vec<Vec<u32>> =
        (0..130).map(|s| (0..12 + s % 24).map(|_| 2 + (r.uniform() * (V - 2) as f64) as u32).collect()).collect();
    let t = ids.iter().map(Vec::len).max().unwrap();
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let flat: Vec<u32> =
        ids.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(1u32, t - s.len()))).collect();
    let run = |m: &Olmoe, d: &Device| {
        let input = Tensor::from_vec(flat.clone(), (ids.len(), t), d).unwrap();
        let mut spy = Rows { per_layer: vec![Vec::new(); L] };
        m.forward(&input, None, Some(&lens), Step::Prefill, Some(&mut spy)).unwrap();
        spy.per_layer
    };
    // the first 20 sentences one at a time (12..31 tokens: the short-input path by default)
    let one_by_one = |m: &Olmoe, d: &Device| {
        let mut per_layer = vec![Vec::new(); L];
        for s in &ids[..20] {
            let input = Tensor::new(s.as_slice(), d).unwrap().unsqueeze(0).unwrap();
            let mut spy = Rows { per_layer: vec![Vec::new(); L] };
            m.forward(&input, None, None, Step::Prefill, Some(&mut spy)).unwrap();
            for (all, l) in per_layer.iter_mut().zip(spy.per_layer) {
                all.extend(l);
            }
        }
        per_layer
    };
    let overlap = |a: &[Vec<Vec<u32>>], b: &[Vec<Vec<u32>>]| kquant_model::overlap(a, b).0;
    let f32_model = Olmoe::load(&cfg, &files, &Device::Cpu, DType::F32).unwrap();
    let (reference, reference_one) = (run(&f32_model, &Device::Cpu), one_by_one(&f32_model, &Device::Cpu));
    let keep = Tuning::default();
    assert!(keep.dequant_min_tokens > 31, "the default switch sends these sentences to the short-input path");
    for (q, floor) in [(Quant::Q8_0, 0.9), (Quant::Q4K, 0.8)] {
        let (mut m, _) = quant::load_quantized(&cfg, &files, &dir, &dev, DType::BF16, q).unwrap();
        m.set_tuning(Tuning { dequant_min_tokens: 0, ..keep.clone() });
        let deq = run(&m, &dev);
        m.set_tuning(Tuning { dequant_min_tokens: usize::MAX, ..keep.clone() });
        let direct = run(&m, &dev);
        m.set_tuning(keep.clone());
        let one = one_by_one(&m, &dev);
        let (od, oq, o1) = (overlap(&deq, &reference), overlap(&direct, &reference), overlap(&one, &reference_one));
        eprintln!(
            "{q:?} bf16 vs f32 CPU: batch expanded to bf16 {od:.4}, batch through qmm {oq:.4}, one by one {o1:.4}; expanded vs qmm {:.4}",
            overlap(&deq, &direct)
        );
        assert!(od >= floor && oq >= floor && o1 >= floor, "{q:?}: mean top-{K} overlap {od} / {oq} / {o1}");
        // the same products summed in another order: near-ties only
        assert!(overlap(&deq, &direct) >= 0.99, "{q:?}: the two quantized paths disagree");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
