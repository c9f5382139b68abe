//! The shipped demo model (`data/demo`, made by `training/train_demo.py`):
//!
//! - `demo` resolves to it (any case), it is small, and it has OLMoE's routing shape: 16 router
//!   hooks × 64 experts, top-8, no renormalisation, tied embeddings;
//! - its model card's language-separation figure agrees with a fresh measurement by moe-lens's own
//!   forward pass (f32 on the CPU): the held-out sentences listed in eval.json are scanned, and per
//!   layer the Jensen–Shannon divergence between the languages' top-8 selection distributions must
//!   match eval.json (measured by transformers in float32) and the README table, and stand well above
//!   the same with shuffled language labels (recomputed here too).
//!
//! Needs OLMoE's tokenizer inside data/demo: run `tests/setup-data.sh` first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moe_lens::corpus::{self, Sentence};
use moe_lens::hub;
use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::study::{self, metrics, ScanOptions, SplitMix64, Study};
use moe_lens::DType;
use serde_json::Value;

const PAIRS: [(&str, &str); 3] = [("en", "ko"), ("en", "ja"), ("ko", "ja")];
/// How far a JSD measured here (candle, f32, CPU, batched) may be from transformers' (f32, GPU, one
/// sentence at a time): only near-ties in the 8th choice can flip, which moves a JSD by ~1e-4.
const JSD_TOLERANCE: f64 = 0.01;

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo")
}

fn require_tokenizer() {
    assert!(
        demo_dir().join("tokenizer.json").is_file(),
        "run tests/setup-data.sh first (it copies OLMoE's tokenizer into crates/moe-lens/data/demo)"
    );
}

fn eval_json() -> Value {
    let text = std::fs::read_to_string(demo_dir().join("eval.json")).expect("data/demo/eval.json");
    serde_json::from_str(&text).expect("eval.json is JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn jsd_table(ev: &Value, key: &str) -> BTreeMap<String, Vec<f64>> {
    PAIRS
        .iter()
        .map(|(a, b)| {
            let k = format!("{a}-{b}");
            let v = f64s(&ev[key][&k]);
            (k, v)
        })
        .collect()
}

/// The held-out sentences, by the ids eval.json lists, from the shipped corpus.
fn held_out(ev: &Value) -> Vec<Sentence> {
    let all: BTreeMap<String, Sentence> = corpus::builtin().unwrap().into_iter().map(|s| (s.id.clone(), s)).collect();
    ev["held_out_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| all.get(id.as_str().unwrap()).unwrap_or_else(|| panic!("{id} is not in the corpus")).clone())
        .collect()
}

/// One scan of the held-out sentences, shared by the tests.
fn scanned() -> &'static (Value, Study) {
    static CELL: OnceLock<(Value, Study)> = OnceLock::new();
    CELL.get_or_init(|| {
        require_tokenizer();
        let ev = eval_json();
        let lens = Lens::load_with(
            "demo",
            &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
        )
        .unwrap();
        let sentences = held_out(&ev);
        let mut study = study::scan(
            &lens,
            &sentences,
            &ScanOptions { batch_size: Some(16), progress: false, ..ScanOptions::default() },
        )
        .unwrap();
        study.sort();
        (ev, study)
    })
}

#[test]
fn demo_resolves_to_the_shipped_model_with_olmoe_routing_shape() {
    require_tokenizer();
    let files = hub::resolve("demo").unwrap();
    assert_eq!(files.dir, demo_dir());
    assert_eq!(files.name, "demo");
    assert_eq!(files.weights(), vec![demo_dir().join("model.safetensors")]);
    assert_eq!(hub::resolve("  DeMo ").unwrap().dir, demo_dir());
    let bytes = std::fs::metadata(&files.weights()[0]).unwrap().len();
    assert!(bytes <= 15_000_000, "the demo weights grew to {bytes} bytes");

    let lens = load("demo").unwrap();
    let hooks = lens.hooks();
    assert_eq!(hooks.len(), 16);
    assert_eq!(hooks.names[0], "model.layers.0.mlp.gate");
    assert_eq!(hooks.names[15], "model.layers.15.mlp.gate");
    assert_eq!((hooks.experts, hooks.k, hooks.norm_topk_prob), (64, 8, false));
    let c = lens.config();
    assert!(c.tie_word_embeddings);
    assert_eq!((c.vocab_size, c.num_hidden_layers, c.num_experts, c.num_experts_per_tok), (50304, 16, 64, 8));
    assert_eq!(c.dtype.as_deref(), Some("bfloat16"));

    // It runs: every router reports 8 distinct experts for every token.
    let trace = lens.trace("저는 보통 여섯 시에 일어나요. I usually wake up at six.").unwrap();
    for layer in 0..16 {
        let lt = trace.layer(layer).unwrap();
        assert_eq!(lt.experts(), 64);
        assert_eq!(lt.k(), 8);
    }
}

#[test]
fn eval_json_describes_this_model_and_split() {
    let ev = eval_json();
    assert_eq!(ev["config"]["num_hidden_layers"], 16);
    assert_eq!(ev["config"]["num_experts"], 64);
    assert_eq!(ev["config"]["num_experts_per_tok"], 8);
    assert_eq!(ev["eval"]["dtype"], "float32");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(demo_dir().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(config.get("rope_theta").is_some() && config.get("rms_norm_eps").is_none());
    // Held out: whole triples (every 10th), never trained on; ids exist in the corpus.
    let sentences = held_out(&ev);
    assert!(sentences.len() >= 90, "{} held-out sentences", sentences.len());
    for s in &sentences {
        let n: u32 = s.id[..4].parse().unwrap();
        assert_eq!(n % 10, 0, "{} is not in a held-out triple", s.id);
    }
    for lang in ["en", "ko", "ja"] {
        assert_eq!(sentences.iter().filter(|s| s.lang == lang).count(), sentences.len() / 3);
    }
    assert!(ev["training"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(ev["card"].as_str().is_some_and(|c| !c.is_empty()));
}

#[test]
fn fresh_measurement_matches_the_model_card() {
    let (ev, study) = scanned();
    let m = study.metrics();
    let layers = 16;

    // Same tokens as transformers saw (one tokenizer, no BOS).
    for lang in ["en", "ko", "ja"] {
        let want = ev["held_out_tokens"][lang]["tokens"].as_u64().unwrap();
        assert_eq!(m.tokens[lang], want, "{lang} tokens");
    }

    // Each language's top-8 selection distribution per layer: nearly the same counts.
    let mut moved_most = 0u64;
    for (li, lang) in study.counts.languages.iter().enumerate() {
        for layer in 0..layers {
            let want: Vec<u64> =
                ev["counts"][lang][layer].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            let got: Vec<u64> = (0..64).map(|e| study.counts.topk[[li, layer, e]]).collect();
            let total: u64 = want.iter().sum();
            assert_eq!(got.iter().sum::<u64>(), total);
            let moved: u64 = want.iter().zip(&got).map(|(a, b)| a.abs_diff(*b)).sum::<u64>() / 2;
            moved_most = moved_most.max(moved);
            assert!(moved * 100 <= total, "layer {layer} {lang}: {moved} of {total} selections differ from eval.json");
        }
    }

    // The JSD table, three ways: fresh (here), eval.json (transformers), README (rounded).
    let card = readme_table();
    let want = jsd_table(ev, "jsd");
    let mut worst = 0.0f64;
    for layer in 0..layers {
        for (i, (a, b)) in PAIRS.iter().enumerate() {
            let fresh = m.jsd(layer, a, b).unwrap();
            let py = want[&format!("{a}-{b}")][layer];
            worst = worst.max((fresh - py).abs());
            assert!(
                (fresh - py).abs() <= JSD_TOLERANCE,
                "layer {layer} {a}-{b}: moe-lens {fresh:.4}, eval.json {py:.4}"
            );
            assert!(
                (card[layer][i] - py).abs() <= 0.0006,
                "README layer {layer} {a}-{b}: {} vs {py:.4}",
                card[layer][i]
            );
        }
    }
    eprintln!("demo: JSD moe-lens vs eval.json differ by at most {worst:.2e}; at most {moved_most} selections of a layer's table moved");
}

#[test]
fn languages_separate_far_above_shuffled_labels() {
    let (ev, study) = scanned();
    let m = study.metrics();
    let layers = 16;
    let fresh_max = |layer: usize| PAIRS.iter().map(|(a, b)| m.jsd(layer, a, b).unwrap()).fold(0.0, f64::max);
    let (best_layer, best) =
        (0..layers).map(|l| (l, fresh_max(l))).fold((0, 0.0), |x, y| if y.1 > x.1 { y } else { x });

    // The shuffled-label baseline, recomputed here from the per-sentence routes (20 permutations).
    let per_sentence: Vec<(String, ndarray::Array2<u32>)> =
        study.routes.iter().map(|r| (r.langs[0].clone(), r.counts(64))).collect();
    let mut rng = SplitMix64::new(7);
    let mut shuffled = vec![0.0f64; layers];
    let shuffles = 20;
    for _ in 0..shuffles {
        let mut labels: Vec<&str> = per_sentence.iter().map(|(l, _)| l.as_str()).collect();
        for i in (1..labels.len()).rev() {
            let j = rng.below(i + 1);
            labels.swap(i, j);
        }
        for (layer, s) in shuffled.iter_mut().enumerate() {
            let table = |lang: &str| -> Vec<u64> {
                let mut t = vec![0u64; 64];
                for ((_, c), l) in per_sentence.iter().zip(&labels) {
                    if *l == lang {
                        for (e, x) in t.iter_mut().enumerate() {
                            *x += u64::from(c[[layer, e]]);
                        }
                    }
                }
                t
            };
            let worst =
                PAIRS.iter().map(|(a, b)| metrics::jensen_shannon(&table(a), &table(b)).unwrap()).fold(0.0, f64::max);
            *s += worst / shuffles as f64;
        }
    }
    let shuffled_max = shuffled.iter().cloned().fold(0.0, f64::max);
    let card_shuffled = jsd_table(ev, "jsd_shuffled");
    let card_shuffled_max = card_shuffled.values().flatten().cloned().fold(0.0, f64::max);
    eprintln!("demo: largest JSD {best:.3} at layer {best_layer}; shuffled labels at most {shuffled_max:.3} here, {card_shuffled_max:.3} in eval.json");

    assert!(best >= 0.2, "largest language JSD is only {best:.3}");
    assert!(
        best >= 5.0 * shuffled_max,
        "largest JSD {best:.3} is not well above the shuffled baseline {shuffled_max:.3}"
    );
    assert!(best >= 5.0 * card_shuffled_max);
    // Both baselines are of the same size (both are small-sample noise of the same tables).
    assert!((shuffled_max - card_shuffled_max).abs() <= 0.05, "{shuffled_max} vs {card_shuffled_max}");
    // Not only one layer: most layers separate the languages beyond any shuffle.
    let separated = (0..layers).filter(|&l| fresh_max(l) > 2.0 * shuffled[l].max(card_shuffled_max)).count();
    assert!(separated >= 8, "only {separated} layers separate the languages");
}

/// The README's table: per layer, en-ko, en-ja, ko-ja.
fn readme_table() -> Vec<[f64; 3]> {
    let text = std::fs::read_to_string(demo_dir().join("README.md")).expect("data/demo/README.md");
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() == 6 {
            if let Ok(layer) = cells[0].parse::<usize>() {
                assert_eq!(layer, rows.len(), "README rows out of order");
                let v: Vec<f64> = cells[1..4].iter().map(|c| c.parse().unwrap()).collect();
                rows.push([v[0], v[1], v[2]]);
            }
        }
    }
    assert_eq!(rows.len(), 16, "the README's JSD table should have 16 layers");
    rows
}
