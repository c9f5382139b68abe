//! Interventions at the routers against transformers: `tests/fixtures/make_interventions.py` patched
//! transformers' OLMoE routers (float32, eager attention) on the two test checkpoints and recorded,
//! for ablate, force, bias, ranges and a combination, every layer's router logits (the routers'
//! own), top-k and weights, next-token logits and a greedy generation with the interventions held at
//! every step. Ours, on the CPU in float32: logits within 1e-4 in every layer (the layers after an
//! intervention change), top-k identical, weights within 1e-5, next-token logits within 1e-4, the
//! same generated ids. The CUDA paths are checked against this CPU path in `cuda_fused.rs`.

use std::path::{Path, PathBuf};

use moe_lens::intervene::Interventions;
use moe_lens::prelude::*;
use moe_lens::spy::spy_fn;
use moe_lens::spy::{RoutingCache, Step};
use moe_lens::Device;
use moe_lens::Tensor;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference(name: &str) -> Value {
    let path = root().join(format!("tests/fixtures/{name}.interventions.json.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_reader(flate2::read::GzDecoder::new(file)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lens(name: &str) -> Lens {
    let dir = root().join("tests/fixtures").join(name);
    let opts = LoadOptions::parse("cpu", "f32", "none").unwrap_or_else(|e| panic!("{e}"));
    Lens::load_with(dir.to_str().unwrap_or_default(), &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap_or(u64::MAX) as u32)
        .collect()
}

fn check_model(name: &str) {
    let r = reference(name);
    let lens = lens(name);
    let probe: Vec<usize> = ids(&r["logit_ids"]).iter().map(|&i| i as usize).collect();
    let cases = r["cases"].as_array().unwrap_or_else(|| panic!("no cases"));
    assert!(cases.len() >= 6);
    for case in cases {
        let spec = case["spec"].as_str().unwrap_or_default();
        let iv: Interventions = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
        let mut changed = 0usize;
        for s in case["sentences"].as_array().unwrap_or_else(|| panic!("no sentences")) {
            let text = s["text"].as_str().unwrap_or_default();
            let trace = lens.intervene(&iv).trace(text).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let plain = lens.trace(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(trace.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), ids(&s["ids"]), "{name} {spec}");
            for (l, want) in s["layers"].as_array().unwrap_or_else(|| panic!("no layers")).iter().enumerate() {
                let ours = &trace.layers[l];
                for (t, row) in want["logits"].as_array().unwrap_or_else(|| panic!("no logits")).iter().enumerate() {
                    let d = floats(row).iter().zip(&ours.logits[t]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(d <= 1e-4, "{name} [{spec}] layer {l} token {t}: logits differ by {d}");
                }
                for (t, row) in want["top_k"].as_array().unwrap_or_else(|| panic!("no top_k")).iter().enumerate() {
                    assert_eq!(ours.top_k[t], ids(row), "{name} [{spec}] layer {l} token {t}: top-k");
                    changed += usize::from(ours.top_k[t] != plain.layers[l].top_k[t]);
                }
                for (t, row) in want["weights"].as_array().unwrap_or_else(|| panic!("no weights")).iter().enumerate() {
                    let d = floats(row).iter().zip(&ours.weights[t]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(d <= 1e-5, "{name} [{spec}] layer {l} token {t}: weights differ by {d}");
                }
                // the spy reports the router's own logits and the applied probabilities
                for t in 0..ours.top_k.len() {
                    let sum: f32 = ours.probs[t].iter().sum();
                    assert!((sum - 1.0).abs() < 1e-4, "probs of a row sum to {sum}");
                }
            }
            // next-token logits at the last position, for the probed ids
            let input = Tensor::new(ids(&s["ids"]).as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut cache = RoutingCache::new();
            let hidden = lens
                .model()
                .unwrap()
                .forward_edited(&input, None, None, Step::Prefill, Some(&mut cache), std::slice::from_ref(&iv))
                .unwrap_or_else(|e| panic!("{e}"));
            let logits: Vec<f32> = lens
                .model()
                .unwrap()
                .next_token_logits(&hidden)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
                .unwrap_or_else(|e| panic!("{e}"));
            for (&i, want) in probe.iter().zip(floats(&s["next_logits"])) {
                assert!(
                    (logits[i] - want).abs() <= 1e-4,
                    "{name} [{spec}] next-token logit {i}: {} vs {want}",
                    logits[i]
                );
            }
        }
        assert!(changed > 0, "{name} [{spec}] changed no routing: the case tests nothing");
        // generation: the interventions hold at every decode step
        let g = &case["generate"];
        let run = lens
            .intervene(&iv)
            .generate(g["prompt"].as_str().unwrap_or_default(), 6)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(
            run.generated().iter().map(|t| t.id).collect::<Vec<_>>(),
            ids(&g["ids"]),
            "{name} [{spec}] generation"
        );
        assert_eq!(run.interventions, iv);
    }
}

#[test]
fn narrow_checkpoint_matches_transformers_under_interventions() {
    check_model("olmoe-narrow");
}

#[test]
fn gqa_checkpoint_matches_transformers_under_interventions() {
    // 8 experts, top-2, norm_topk_prob: the renormalised weights after ablate and force
    check_model("olmoe-gqa");
}

#[test]
fn batched_sequences_carry_their_own_interventions() {
    // one forward of B sequences with one set each equals B single runs (the sweep's batching)
    let lens = lens("olmoe-narrow");
    let text = "Students watch how a mixture-of-experts model routes every single token.";
    let tokens = lens.tokenize(text).unwrap_or_else(|e| panic!("{e}"));
    let row: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let sets = vec![
        Interventions::new(),
        Interventions::new().ablate(3, [0, 1, 2]),
        Interventions::new().force(9, 8..16).at(2..5),
    ];
    let input = Tensor::new(row.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0)?.repeat((sets.len(), 1)))
        .unwrap_or_else(|e| panic!("{e}"));
    // every layer's top-k rows of the batched call
    let mut batched: Vec<Vec<Vec<u32>>> = vec![vec![]; 16];
    {
        let mut spy = spy_fn(|e| {
            let rows: Vec<Vec<u32>> = e.top_k.to_vec2()?;
            batched[e.layer] = rows;
            Ok(())
        });
        lens.model()
            .unwrap()
            .forward_edited(&input, None, None, Step::Prefill, Some(&mut spy), &sets)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for (b, set) in sets.iter().enumerate() {
        let one = lens.intervene(set).trace(text).unwrap_or_else(|e| panic!("{e}"));
        for (l, rows) in batched.iter().enumerate() {
            for t in 0..row.len() {
                assert_eq!(rows[b * row.len() + t], one.layers[l].top_k[t], "sequence {b} layer {l} token {t}");
            }
        }
    }
    // a wrong number of sets is an error, not a panic
    let two = &sets[..2];
    assert!(lens.model().unwrap().forward_edited(&input, None, None, Step::Prefill, None, two).is_err());
}

#[test]
fn bad_interventions_are_errors_naming_the_problem() {
    let lens = lens("olmoe-narrow");
    for (iv, needle) in [
        (Interventions::new().ablate(16, [1]), "layers 0 to 15"),
        (Interventions::new().ablate(2, [64]), "experts 0 to 63"),
        (Interventions::new().force(2, [1, 2]), "exactly k = 8"),
        (Interventions::new().bias(2, 1, 1.0).at(3..3), "empty"),
    ] {
        let msg = lens.intervene(&iv).trace("Hello").map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        let msg = lens.effect("Hello", " there", &iv).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
}

#[test]
fn the_batched_sweep_equals_one_ablation_at_a_time() {
    // each row of the sweep (many ablations per batched pass) against the effect of that ablation
    // alone (its own teacher-forced pass); and the effect of no intervention is nothing at all
    let lens = lens("olmoe-narrow");
    let (text, cont) = ("Hello, how are", " you?");
    let sweep = lens
        .sweep_with(text, cont, &moe_lens::effects::SweepOptions { max_batch_tokens: 64 })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sweep.passes > 2, "small batches: several passes");
    let base = lens.trace(&format!("{text}{cont}")).unwrap_or_else(|e| panic!("{e}"));
    let routed: usize =
        base.layers.iter().map(|l| l.top_k.iter().flatten().collect::<std::collections::BTreeSet<_>>().len()).sum();
    assert_eq!(sweep.rows.len(), routed, "one row per (layer, expert) the text routes to");
    for w in sweep.rows.windows(2) {
        assert!(w[0].delta.abs() >= w[1].delta.abs(), "ranked by |delta|");
    }
    for r in sweep.rows.iter().step_by(97).take(6) {
        let e = lens
            .effect(text, cont, &Interventions::new().ablate(r.layer, [r.expert]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((e.logprob_before - sweep.base_logprob).abs() < 1e-5, "{} vs {}", e.logprob_before, sweep.base_logprob);
        assert!(
            (e.delta() - r.delta).abs() < 1e-4,
            "layer {} expert {}: {} vs {}",
            r.layer,
            r.expert,
            e.delta(),
            r.delta
        );
        assert!(e.kl >= -1e-9);
    }
    let none = lens.effect(text, cont, &Interventions::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(none.delta(), 0.0);
    assert!(none.kl.abs() < 1e-9 && none.changed().iter().flatten().all(|&c| c == 0));
    assert_eq!(none.generated_before, none.generated_after);
    // a continuation that merges with the prompt's last token is refused with advice
    let msg = lens
        .effect("Hello, how are yo", "u?", &Interventions::new())
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string());
    assert!(msg.contains("word boundary") || msg.is_empty(), "{msg}");
    let csv = sweep.to_csv();
    assert_eq!(csv.lines().count(), sweep.rows.len() + 1);
}
