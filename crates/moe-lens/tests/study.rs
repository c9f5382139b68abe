//! The language study, checked against independent references:
//!
//! - counts equal a brute-force recount, by plain loops over parsed JSON, of per-sentence
//!   `Trace` exports (`lens.trace(text)?.to_json()`), for every batch size and counting option;
//! - every layer's counts add up (top-k sums = tokens × k, top-1 sums = tokens);
//! - a sentence's routing in a padded batch equals its routing alone (top-k identical, logits within
//!   1e-4), seen through a spy that records every real row;
//! - metrics equal values computed by hand on small tables;
//! - the token-matched bootstrap says what it must on synthetic routes with a known answer, and is
//!   deterministic and independent of order;
//! - saving, loading and merging studies keep them intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moe_lens::corpus::{self, Sentence};
use moe_lens::hub;
use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::spy::RouterEvent;
use moe_lens::spy::RouterSpy;
use moe_lens::study::{
    self, metrics, CompareOptions, Counts, CountsJson, Metrics, ScanExt, ScanOptions, SentenceRoutes, Settings, Shard,
    Study, Verdict,
};
use moe_lens::DType;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn narrow() -> Lens {
    let dir = root().join("tests/fixtures/olmoe-narrow");
    assert!(
        dir.join("tokenizer.json").exists(),
        "run tests/setup-data.sh first (it copies the tokenizer into the fixtures)"
    );
    let files = hub::local_dir(&dir, "olmoe-narrow").unwrap();
    Lens::from_files(files, &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() })
        .unwrap()
}

/// Twelve sentences of mixed languages and lengths (1 token to a few dozen), with punctuation,
/// digits and a sentence mixing scripts.
fn sentences() -> Vec<Sentence> {
    let rows = [
        ("s01", "en", "I usually wake up at six."),
        ("s02", "ko", "저는 보통 여섯 시에 일어나요."),
        ("s03", "ja", "私はたいてい六時に起きます。"),
        ("s04", "en", "Hi"),
        ("s05", "ko", "안녕하세요, 만나서 반갑습니다! 오늘 날씨가 정말 좋네요. 산책하러 갈까요?"),
        ("s06", "ja", "カタカナとひらがなと漢字。"),
        ("s07", "en", "The quick brown fox jumps over the lazy dog, 3 times in 2024!"),
        ("s08", "ko", "서울"),
        ("s09", "ja", "東京は大きい都市です。電車がとても便利で、毎日たくさんの人が使っています。"),
        ("s10", "en", "OK."),
        ("s11", "ko", "BTS는 서울 출신이에요 (2013)."),
        ("s12", "en", "Could you pass me the salt, please?"),
    ];
    rows.iter().map(|(i, l, t)| Sentence::new(*i, l, *t).unwrap()).collect()
}

fn quiet(batch: usize) -> ScanOptions {
    ScanOptions { batch_size: Some(batch), progress: false, ..ScanOptions::default() }
}

/// The reference language of a token when counting by script, written out independently.
fn script_lang(script: &str) -> String {
    match script {
        "Hangul" => "ko".into(),
        "Hiragana" | "Katakana" | "Han" => "ja".into(),
        "Latin" => "en".into(),
        other => other.to_lowercase(),
    }
}

type Table = BTreeMap<String, Vec<Vec<u64>>>;

/// Brute-force recount from trace exports: (tokens, top-k, top-1) per language.
fn recount(
    lens: &Lens,
    sentences: &[Sentence],
    by_script: bool,
    skip_common: bool,
) -> (BTreeMap<String, u64>, Table, Table) {
    let (layers, experts) = (lens.config().num_hidden_layers, lens.config().num_experts);
    let mut tokens = BTreeMap::new();
    let mut topk: Table = BTreeMap::new();
    let mut top1: Table = BTreeMap::new();
    for s in sentences {
        let json: Value = serde_json::from_str(&lens.trace(&s.text).unwrap().to_json().unwrap()).unwrap();
        let toks = json["tokens"].as_array().unwrap();
        let layer_list = json["layers"].as_array().unwrap();
        assert_eq!(layer_list.len(), layers);
        for (t, tok) in toks.iter().enumerate() {
            let script = tok["script"].as_str().unwrap();
            if skip_common && script == "Common" {
                continue;
            }
            let lang = if by_script { script_lang(script) } else { s.lang.clone() };
            *tokens.entry(lang.clone()).or_insert(0u64) += 1;
            for layer in layer_list {
                let name = layer["name"].as_str().unwrap();
                let l: usize = name.trim_start_matches("model.layers.").trim_end_matches(".mlp.gate").parse().unwrap();
                let chosen = layer["top_k"][t].as_array().unwrap();
                for (slot, e) in chosen.iter().enumerate() {
                    let e = e.as_u64().unwrap() as usize;
                    topk.entry(lang.clone()).or_insert_with(|| vec![vec![0; experts]; layers])[l][e] += 1;
                    let t1 = top1.entry(lang.clone()).or_insert_with(|| vec![vec![0; experts]; layers]);
                    if slot == 0 {
                        t1[l][e] += 1;
                    }
                }
            }
        }
    }
    (tokens, topk, top1)
}

/// counts.json of a study, parsed back as plain JSON.
fn counts_value(study: &Study) -> Value {
    serde_json::to_value(study.counts.to_json()).unwrap()
}

fn table_of(v: &Value) -> Table {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn counts_equal_a_brute_force_recount_of_trace_exports() {
    let lens = narrow();
    let s = sentences();
    for (by_script, skip_common) in [(false, false), (true, false), (false, true), (true, true)] {
        let (tokens, topk, top1) = recount(&lens, &s, by_script, skip_common);
        for batch in [1, 3, 8] {
            let opts = ScanOptions {
                batch_size: Some(batch),
                by_script,
                skip_common,
                progress: false,
                ..ScanOptions::default()
            };
            let study = study::scan(&lens, &s, &opts).unwrap();
            let v = counts_value(&study);
            let what = format!("batch {batch}, by_script {by_script}, skip_common {skip_common}");
            assert_eq!(v["model"].as_str().unwrap(), lens.name());
            assert_eq!(v["k"], 8);
            assert_eq!(v["experts"], 64);
            assert_eq!(v["layers"], 16);
            let got_tokens: BTreeMap<String, u64> = serde_json::from_value(v["tokens"].clone()).unwrap();
            assert_eq!(got_tokens, tokens, "{what}: tokens");
            assert_eq!(table_of(&v["topk_counts"]), topk, "{what}: top-k counts");
            assert_eq!(table_of(&v["top1_counts"]), top1, "{what}: top-1 counts");
            // exactly the documented keys
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["experts", "k", "layers", "model", "tokens", "top1_counts", "topk_counts"]);
        }
        if by_script {
            // the mixed sentence s11 puts Latin tokens under en and Hangul tokens under ko
            assert!(
                tokens.contains_key("common") != skip_common,
                "Common tokens are {}",
                if skip_common { "left out" } else { "counted" }
            );
        }
    }
}

#[test]
fn counts_add_up_on_every_layer() {
    let lens = narrow();
    let study = lens.scan(&sentences(), &quiet(4)).unwrap();
    let v = counts_value(&study);
    let k = v["k"].as_u64().unwrap();
    let tokens = v["tokens"].as_object().unwrap();
    assert_eq!(tokens.len(), 3);
    let mut all = 0;
    for (lang, n) in tokens {
        let n = n.as_u64().unwrap();
        all += n;
        for (which, per_token) in [("topk_counts", k), ("top1_counts", 1)] {
            let layers = v[which][lang].as_array().unwrap();
            assert_eq!(layers.len(), 16);
            for (l, row) in layers.iter().enumerate() {
                let row = row.as_array().unwrap();
                assert_eq!(row.len(), 64);
                let sum: u64 = row.iter().map(|x| x.as_u64().unwrap()).sum();
                assert_eq!(sum, n * per_token, "{which} {lang} layer {l}");
            }
        }
    }
    // every token of every sentence, nothing from padding
    let want: usize = sentences().iter().map(|s| lens.tokenize(&s.text).unwrap().len()).sum();
    assert_eq!(all as usize, want);
    study.counts.check_sums().unwrap();
}

/// (top-k, logits) of a row, by (layer, sequence, position).
type Rows = BTreeMap<(usize, usize, usize), (Vec<u32>, Vec<f32>)>;

/// Records every real row of every layer.
struct RowRecorder {
    rows: Rows,
    padding_rows: usize,
}

impl RouterSpy for RowRecorder {
    fn on_route(&mut self, ev: &RouterEvent<'_>) -> moe_lens::Result<()> {
        let top_k: Vec<Vec<u32>> = ev.top_k.to_vec2()?;
        let logits: Vec<Vec<f32>> = ev.logits.to_vec2()?;
        for row in 0..top_k.len() {
            let (b, t) = (row / ev.seq_len, row % ev.seq_len);
            if ev.is_real(row) {
                self.rows.insert((ev.layer, b, t), (top_k[row].clone(), logits[row].clone()));
            } else {
                self.padding_rows += 1;
            }
        }
        Ok(())
    }
}

#[test]
fn a_sentence_routes_the_same_in_a_padded_batch_as_alone() {
    let lens = narrow();
    let s = sentences();
    let traces: Vec<Trace> = s.iter().map(|x| lens.trace(&x.text).unwrap()).collect();
    let ids: Vec<Vec<u32>> = traces.iter().map(|t| t.tokens.iter().map(|x| x.id).collect()).collect();
    let mut worst = 0f32;
    for batch in [1, 3, 8] {
        let mut padding = 0;
        for (c, chunk) in ids.chunks(batch).enumerate() {
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let mut rec = RowRecorder { rows: BTreeMap::new(), padding_rows: 0 };
            study::forward_padded(&lens, &refs, &mut rec).unwrap();
            padding += rec.padding_rows;
            for (b, _) in chunk.iter().enumerate() {
                let trace = &traces[c * batch + b];
                for (l, lt) in trace.layers.iter().enumerate() {
                    for t in 0..trace.tokens.len() {
                        let (top_k, logits) = rec.rows.get(&(l, b, t)).unwrap();
                        assert_eq!(
                            top_k,
                            &lt.top_k[t],
                            "batch {batch}: sentence {} layer {l} token {t}",
                            c * batch + b
                        );
                        for (x, y) in logits.iter().zip(&lt.logits[t]) {
                            worst = worst.max((x - y).abs());
                        }
                    }
                }
                // no rows beyond the real ones were reported as real
                let real = rec.rows.keys().filter(|(l, bb, _)| *l == 0 && *bb == b).count();
                assert_eq!(real, trace.tokens.len());
            }
        }
        if batch > 1 {
            assert!(padding > 0, "batch {batch}: the sentences differ in length, so some rows are padding");
        }
    }
    assert!(worst < 1e-4, "router logits differ by {worst} between batched and single runs");
}

#[test]
fn batch_size_does_not_change_the_study() {
    let lens = narrow();
    let s = sentences();
    let mut one = study::scan(&lens, &s, &quiet(1)).unwrap();
    for batch in [3, 8, 100] {
        let mut other = study::scan(&lens, &s, &quiet(batch)).unwrap();
        one.sort();
        other.sort();
        assert_eq!(one, other, "batch {batch}");
    }
}

#[test]
fn batches_cut_by_tokens_do_not_change_the_study() {
    let lens = narrow();
    let s = sentences();
    let mut one = study::scan(&lens, &s, &quiet(1)).unwrap();
    one.sort();
    for tokens in [1, 40, 100, 10_000] {
        let opts =
            ScanOptions { batch_size: None, batch_tokens: Some(tokens), progress: false, ..ScanOptions::default() };
        let mut other = study::scan(&lens, &s, &opts).unwrap();
        other.sort();
        assert_eq!(one, other, "batches of at most {tokens} tokens");
    }
    let zero = ScanOptions { batch_tokens: Some(0), progress: false, ..ScanOptions::default() };
    let e = study::scan(&lens, &s, &zero).unwrap_err().to_string();
    assert!(e.contains("at least 1 token"), "{e}");
}

/// The batch cut's stated properties: contiguous, in order, covering every sentence; each batch
/// within both limits (count × its longest sentence for tokens) unless it is one sentence; and
/// greedy: the next sentence would have broken a limit.
#[test]
fn cut_batches_keeps_both_limits_and_is_greedy() {
    let mut seed = 7u64;
    for case in 0..300 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = (seed >> 33) as usize % 60;
        let mut lengths: Vec<usize> =
            (0..n).map(|i| 1 + ((seed >> (i % 40)) as usize ^ (i * 2654435761)) % 90).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a)); // scan order: longest first
        let max_s = 1 + (seed >> 20) as usize % 12;
        let max_t = if case % 3 == 0 { usize::MAX } else { 1 + (seed >> 10) as usize % 400 };
        let b = study::cut_batches(&lengths, max_s, max_t);
        assert_eq!(b.first(), Some(&0));
        assert_eq!(*b.last().unwrap(), n, "case {case}");
        for w in b.windows(2) {
            let (start, end) = (w[0], w[1]);
            assert!(end > start, "case {case}: empty batch");
            let count = end - start;
            let longest = lengths[start..end].iter().copied().max().unwrap();
            if count > 1 {
                assert!(count <= max_s && count * longest <= max_t, "case {case}: batch {start}..{end} too big");
            }
            if end < n {
                let longer = lengths[start..=end].iter().copied().max().unwrap();
                assert!(count + 1 > max_s || (count + 1) * longer > max_t, "case {case}: {start}..{end} not greedy");
            }
        }
    }
}

#[test]
fn routes_keep_each_real_token_in_order() {
    let lens = narrow();
    let s = sentences();
    let mut study = study::scan(&lens, &s, &quiet(5)).unwrap();
    study.sort();
    assert_eq!(study.routes.len(), s.len());
    for (r, sent) in study.routes.iter().zip(&s) {
        assert_eq!(r.id, sent.id);
        let trace = lens.trace(&sent.text).unwrap();
        assert_eq!(r.tokens(), trace.tokens.len());
        for (l, lt) in trace.layers.iter().enumerate() {
            for t in 0..r.tokens() {
                let want: Vec<u16> = lt.top_k[t].iter().map(|&e| e as u16).collect();
                assert_eq!(r.top_k(l, t), want.as_slice());
                assert_eq!(r.lang_of(t), sent.lang);
            }
        }
        // per-sentence counts: each layer's row holds every token's k choices
        let c = r.counts(64);
        for l in 0..16 {
            assert_eq!(c.row(l).sum() as usize, r.tokens() * 8);
            for e in 0..64 {
                let want = trace.layers[l].top_k.iter().filter(|ks| ks.contains(&(e as u32))).count();
                assert_eq!(c[[l, e]] as usize, want);
            }
        }
    }
    let shown = study.to_string();
    assert!(shown.contains("12 sentences") && shown.contains("sentence's language"), "{shown}");
}

#[test]
fn the_scan_rejects_bad_options() {
    let lens = narrow();
    let e = study::scan(&lens, &sentences(), &quiet(0)).unwrap_err();
    assert!(e.to_string().contains("batch size"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Metrics on hand-made tables
// ------------------------------------------------------------------------------------------------

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn entropy_effective_number_and_coverage_by_hand() {
    // uniform over 4
    let u = [1, 1, 1, 1];
    assert!(close(metrics::entropy(&u), 4f64.ln()));
    assert!(close(metrics::effective_number(&u), 4.0));
    assert_eq!(metrics::distinct(&u), 4);
    assert_eq!(metrics::coverage(&u, 0.5), 2);
    assert_eq!(metrics::coverage(&u, 0.9), 4);
    // (1/2, 1/4, 1/4, 0): H = 1.5 ln 2, exp(H) = 2^1.5
    let c = [2, 1, 1, 0];
    assert!(close(metrics::entropy(&c), 1.5 * 2f64.ln()));
    assert!(close(metrics::effective_number(&c), 2f64.powf(1.5)));
    assert_eq!(metrics::distinct(&c), 3);
    assert_eq!(metrics::coverage(&c, 0.5), 1); // 2 of 4 is exactly half
    assert_eq!(metrics::coverage(&c, 0.9), 3); // 3 of 4 is 75 %
                                               // one expert
    let one = [0, 7, 0];
    assert!(close(metrics::entropy(&one), 0.0));
    assert!(close(metrics::effective_number(&one), 1.0));
    assert_eq!(metrics::coverage(&one, 0.9), 1);
    // unordered input: (10, 0, 30, 60) → 60 covers 50 %, 60+30 covers 90 %
    let v = [10, 0, 30, 60];
    assert_eq!(metrics::coverage(&v, 0.5), 1);
    assert_eq!(metrics::coverage(&v, 0.9), 2);
    let h = -(0.1f64 * 0.1f64.ln() + 0.3 * 0.3f64.ln() + 0.6 * 0.6f64.ln());
    assert!(close(metrics::entropy(&v), h));
    // empty
    assert_eq!(metrics::effective_number(&[0, 0]), 0.0);
    assert_eq!(metrics::coverage(&[0, 0], 0.5), 0);
}

#[test]
fn jensen_shannon_by_hand() {
    assert!(close(metrics::jensen_shannon(&[3, 1, 0], &[6, 2, 0]).unwrap(), 0.0), "identical distributions");
    assert!(close(metrics::jensen_shannon(&[3, 1, 0, 0], &[0, 0, 5, 5]).unwrap(), 1.0), "disjoint supports");
    // (1/2, 1/2) vs (1, 0): m = (3/4, 1/4)
    let want = 0.5 * (0.5 * (0.5f64 / 0.75).log2() + 0.5 * (0.5f64 / 0.25).log2()) + 0.5 * (1.0f64 / 0.75).log2();
    assert!(close(metrics::jensen_shannon(&[1, 1], &[1, 0]).unwrap(), want));
    assert!((want - 0.311278).abs() < 1e-6);
    // symmetric
    assert!(close(metrics::jensen_shannon(&[1, 0], &[1, 1]).unwrap(), want));
    assert!(metrics::jensen_shannon(&[0, 0], &[1, 1]).is_none());
}

/// en: 2 tokens, top-2 of 4 experts; ko: 3 tokens; one layer.
fn small_counts() -> Counts {
    let j = CountsJson {
        model: "hand".into(),
        k: 2,
        experts: 4,
        layers: 1,
        tokens: [("en".to_string(), 2), ("ko".to_string(), 3)].into(),
        topk_counts: [("en".to_string(), vec![vec![2, 2, 0, 0]]), ("ko".to_string(), vec![vec![0, 2, 3, 1]])].into(),
        top1_counts: [("en".to_string(), vec![vec![2, 0, 0, 0]]), ("ko".to_string(), vec![vec![0, 0, 3, 0]])].into(),
    };
    Counts::from_json(&j).unwrap()
}

#[test]
fn specialization_and_usage_by_hand() {
    let c = small_counts();
    c.check_sums().unwrap();
    let m = Metrics::from_counts(&c);
    // N(E,L)/N(E): expert 1 is chosen 2 times by en and 2 by ko
    let en = &m.specialization["en"][0];
    let ko = &m.specialization["ko"][0];
    assert_eq!(en, &vec![Some(1.0), Some(0.5), Some(0.0), Some(0.0)]);
    assert_eq!(ko, &vec![Some(0.0), Some(0.5), Some(1.0), Some(1.0)]);
    assert!(close(m.specialization_uniform, 0.5));
    assert!(close(m.token_share["en"], 0.4));
    // N(E,L)/tokens(L), against k/E = 0.5
    assert_eq!(m.usage["en"][0], vec![1.0, 1.0, 0.0, 0.0]);
    assert_eq!(m.usage["ko"][0], vec![0.0, 2.0 / 3.0, 1.0, 1.0 / 3.0]);
    assert!(close(m.usage_uniform, 0.5));
    // rows
    let r = m.get(0, "ko").unwrap();
    assert_eq!((r.tokens, r.selections, r.distinct, r.experts_50, r.experts_90), (3, 6, 3, 1, 3));
    let h = -(2.0 / 6.0 * (2.0f64 / 6.0).ln() + 0.5 * 0.5f64.ln() + 1.0 / 6.0 * (1.0f64 / 6.0).ln());
    assert!(close(r.entropy, h));
    assert!(close(r.effective, h.exp()));
    assert_eq!((r.top1_distinct, r.top_expert), (1, 2));
    assert!(close(r.top_expert_share, 0.5));
    let r = m.get(0, "en").unwrap();
    assert!(close(r.effective, 2.0));
    // en (1/2, 1/2, 0, 0) vs ko (0, 1/3, 1/2, 1/6)
    let (p, q) = ([0.5, 0.5, 0.0, 0.0], [0.0, 1.0 / 3.0, 0.5, 1.0 / 6.0]);
    let mut want = 0.0;
    for i in 0..4 {
        let mid: f64 = (p[i] + q[i]) / 2.0;
        if p[i] > 0.0 {
            want += 0.5 * p[i] * (p[i] / mid).log2();
        }
        if q[i] > 0.0 {
            want += 0.5 * q[i] * (q[i] / mid).log2();
        }
    }
    assert!(close(m.jsd(0, "ko", "en").unwrap(), want));
    // the CSV has one row per layer × language
    let csv = m.to_csv();
    assert_eq!(csv.lines().count(), 1 + 2);
    assert!(csv.lines().nth(2).unwrap().starts_with("0,ko,3,6,3,"));
}

#[test]
fn counts_merge_and_languages_stay_sorted() {
    let mut a = Counts::new("m", 1, 4, 2);
    let mut b = small_counts();
    b.model = "m".into();
    a.merge(&b).unwrap();
    a.merge(&b).unwrap();
    assert_eq!(a.languages, ["en", "ko"]);
    assert_eq!(a.tokens_of("ko"), 6);
    assert_eq!(a.count("ko", 0, 2).unwrap(), 6);
    let i = a.ensure_lang("ja");
    assert_eq!(i, 1);
    assert_eq!(a.languages, ["en", "ja", "ko"]);
    assert_eq!(a.count("ko", 0, 2).unwrap(), 6, "inserting a language keeps the others' counts");
    assert!(a.count("xx", 0, 0).is_err());
    let mut other = Counts::new("another model", 1, 4, 2);
    assert!(other.merge(&a).is_err());
}

// ------------------------------------------------------------------------------------------------
// The bootstrap comparison on synthetic routes
// ------------------------------------------------------------------------------------------------

/// A sentence of `n` tokens of `lang`, one layer, k = 1, experts drawn by `pick`.
fn synthetic(index: u32, lang: &str, n: usize, mut pick: impl FnMut() -> u16) -> SentenceRoutes {
    SentenceRoutes {
        index,
        id: format!("{lang}{index}"),
        langs: vec![lang.into()],
        token_lang: vec![0; n],
        domain: None,
        token_ids: vec![0; n],
        positions: (0..n as u32).collect(),
        layers: 1,
        k: 1,
        experts: (0..n).map(|_| pick()).collect(),
    }
}

fn study_of(routes: Vec<SentenceRoutes>, experts: usize) -> Study {
    let mut s = Study::new("synthetic", 1, experts, 1, Settings::default());
    for r in routes {
        s.add(r).unwrap();
    }
    s
}

fn opts(replicates: usize) -> CompareOptions {
    CompareOptions { replicates, ..CompareOptions::default() }
}

#[test]
fn bootstrap_finds_a_clear_difference_in_both_directions() {
    let mut rng = study::SplitMix64::new(1);
    let mut routes = Vec::new();
    for i in 0..60 {
        // ko: experts 0..4; en: experts 0..32
        routes.push(synthetic(2 * i, "ko", 12, || rng.below(4) as u16));
        routes.push(synthetic(2 * i + 1, "en", 6, || rng.below(32) as u16));
    }
    let s = study_of(routes, 32);
    let c = s.compare_with("ko", "en", &opts(300)).unwrap();
    let l = &c.layers[0];
    assert_eq!(l.verdict, Verdict::Fewer);
    assert!(l.ci_high < 0.0 && l.ci_low <= l.diff && l.diff <= l.ci_high);
    assert!(l.answer.contains("Korean uses fewer experts (CI excludes 0)"), "{}", l.answer);
    assert_eq!(c.matched_tokens, 360, "en has 60 × 6 tokens, the smaller count");
    assert!((l.a_effective - 4.0).abs() < 0.2 && l.b_effective > 20.0, "{l:?}");
    let r = s.compare_with("en", "ko", &opts(300)).unwrap();
    assert_eq!(r.layers[0].verdict, Verdict::More);
    assert!(r.layers[0].answer.starts_with("English uses more experts"));
    let text = c.to_string();
    assert!(
        text.contains("Token-matched: 360 tokens") && text.contains("uses fewer experts in 1 of 1 layers"),
        "{text}"
    );
}

#[test]
fn token_matching_removes_the_sample_size_effect() {
    // Same routing distribution for both languages (a skewed one over 64 experts), but ko sentences
    // are ten times longer. Unmatched plug-in effective numbers differ a lot; matched ones do not.
    let weights: Vec<f64> = (1..=64).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = study::SplitMix64::new(42);
    let mut draw = move || {
        let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        for (e, w) in weights.iter().enumerate() {
            if u < *w {
                return e as u16;
            }
            u -= w;
        }
        63
    };
    let mut routes = Vec::new();
    for i in 0..80 {
        routes.push(synthetic(2 * i, "ko", 30, &mut draw));
        routes.push(synthetic(2 * i + 1, "en", 3, &mut draw));
    }
    let s = study_of(routes, 64);
    let m = s.metrics();
    let unmatched = m.get(0, "ko").unwrap().effective - m.get(0, "en").unwrap().effective;
    assert!(unmatched > 3.0, "2400 vs 240 tokens: plug-in effective numbers differ by {unmatched}");
    let c = s.compare_with("ko", "en", &opts(400)).unwrap();
    let l = &c.layers[0];
    assert_eq!(c.matched_tokens, 240);
    assert!(l.ci_low < 0.0 && l.ci_high > 0.0, "{l:?}");
    assert_eq!(l.verdict, Verdict::NoClearDifference);
    assert_eq!(l.answer, "no clear difference");
    assert!(l.diff.abs() < unmatched / 2.0, "{l:?} vs unmatched {unmatched}");
}

#[test]
fn bootstrap_is_deterministic_and_independent_of_order() {
    let mut rng = study::SplitMix64::new(9);
    let mut routes = Vec::new();
    for i in 0..30 {
        routes.push(synthetic(2 * i, "ko", 5 + (i as usize % 7), || rng.below(16) as u16));
        routes.push(synthetic(2 * i + 1, "en", 3 + (i as usize % 4), || rng.below(16) as u16));
    }
    let a = study_of(routes.clone(), 16).compare_with("ko", "en", &opts(100)).unwrap();
    let b = study_of(routes.clone(), 16).compare_with("ko", "en", &opts(100)).unwrap();
    assert_eq!(a, b);
    routes.reverse();
    let c = study_of(routes.clone(), 16).compare_with("ko", "en", &opts(100)).unwrap();
    assert_eq!(a, c, "the scan order does not matter");
    let d = study_of(routes, 16).compare_with("ko", "en", &CompareOptions { seed: 1, ..opts(100) }).unwrap();
    assert_ne!(a.layers, d.layers, "another seed, other replicates");
}

#[test]
fn comparison_errors_name_the_problem() {
    let s = study_of(vec![synthetic(0, "en", 3, || 0)], 4);
    let e = s.compare("ko", "en").unwrap_err().to_string();
    assert!(e.contains("\"ko\" has no counted tokens") && e.contains("en"), "{e}");
    assert!(s.compare("en", "en").is_err());
    assert!(s.compare_with("en", "ko", &opts(1)).is_err());
}

#[test]
fn comparison_on_the_narrow_model_runs_every_layer() {
    let lens = narrow();
    let study = lens.scan(&sentences(), &quiet(4)).unwrap();
    let c = study.compare_with("ko", "en", &opts(50)).unwrap();
    assert_eq!(c.layers.len(), 16);
    assert_eq!(c.matched_tokens as u64, study.counts.tokens_of("en").min(study.counts.tokens_of("ko")));
    for l in &c.layers {
        assert!(l.ci_low <= l.ci_high);
        let want = if l.ci_high < 0.0 {
            Verdict::Fewer
        } else if l.ci_low > 0.0 {
            Verdict::More
        } else {
            Verdict::NoClearDifference
        };
        assert_eq!(l.verdict, want);
    }
    let report = study.report(None, &opts(20)).unwrap();
    let pairs: Vec<(&str, &str)> = report.comparisons.iter().map(|c| (c.a.as_str(), c.b.as_str())).collect();
    assert_eq!(pairs, [("ja", "en"), ("ko", "en")]);
    assert!(study.report(Some("xx"), &opts(20)).is_err());
    let shown = report.to_string();
    assert!(
        shown.contains("layer") && shown.contains("Does Korean (ko) use fewer experts than English (en)?"),
        "{shown}"
    );
}

// ------------------------------------------------------------------------------------------------
// Saving, loading, merging, shards
// ------------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-study-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn save_load_and_merge_round_trip() {
    let lens = narrow();
    let s = sentences();
    let whole = study::scan(&lens, &s, &quiet(4)).unwrap();
    let dir = temp_dir("roundtrip");
    let report = whole.report(None, &opts(20)).unwrap();
    whole.save(&dir, &report).unwrap();
    let mut back = Study::load(&dir).unwrap();
    let mut sorted = whole.clone();
    sorted.sort();
    back.sort();
    assert_eq!(back, sorted);
    assert_eq!(Counts::load_json(dir.join("counts.json")).unwrap(), whole.counts);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 16 * 3);
    let mj: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(mj["comparisons"].as_array().unwrap().len(), 2);

    // two halves merged = the whole
    let opts4 = quiet(4);
    let mut a = study::Scanner::for_positions(&lens, &s, 0..5, &opts4).unwrap();
    while a.step().unwrap().is_some() {}
    let mut b = study::Scanner::for_positions(&lens, &s, 5..12, &opts4).unwrap();
    while b.step().unwrap().is_some() {}
    let mut merged = a.into_study();
    let b = b.into_study();
    merged.merge(b.clone()).unwrap();
    merged.sort();
    assert_eq!(merged, sorted);
    let e = merged.merge(b).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");

    // a damaged counts.json is noticed
    let mut c = whole.counts.to_json();
    c.tokens.insert("en".into(), 1);
    std::fs::write(dir.join("counts.json"), serde_json::to_string(&c).unwrap()).unwrap();
    assert!(Study::load(&dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sharded scan runs every sentence in the same batch as the unsharded scan: the shards' scan
/// orders, one after the other, are the unsharded scan order, each cut on a batch boundary; so
/// the shards' routes merged equal the whole exactly (here with batches that do not divide the
/// corpus, and more shards than some runs have batches).
#[test]
fn shards_are_runs_of_the_unsharded_batches() {
    let lens = narrow();
    let s = sentences();
    for (batch, n) in [(5, 2), (4, 3), (1, 5), (3, 7)] {
        let o = quiet(batch);
        let whole = study::Scanner::new(&lens, &s, &o).unwrap();
        let mut whole_study = study::scan(&lens, &s, &o).unwrap();
        let order: Vec<u32> = whole_study.routes.iter().map(|r| r.index).collect();
        let mut got = Vec::new();
        let mut merged: Option<Study> = None;
        for i in 0..n {
            let mut sc = study::Scanner::for_shard(&lens, &s, Shard::new(i, n).unwrap(), &o).unwrap();
            while sc.step().unwrap().is_some() {}
            let part = sc.into_study();
            assert!(got.len() % batch == 0, "batch {batch}, shard {i}/{n} starts on a batch boundary");
            got.extend(part.routes.iter().map(|r| r.index));
            match &mut merged {
                None => merged = Some(part),
                Some(m) => m.merge(part).unwrap(),
            }
        }
        assert_eq!(got, order, "batch {batch}, {n} shards");
        assert_eq!(whole.total(), s.len());
        let mut merged = merged.unwrap();
        merged.sort();
        whole_study.sort();
        assert_eq!(merged, whole_study, "batch {batch}, {n} shards: merged = whole");
    }
}

#[test]
fn shards_partition_the_corpus() {
    for n in 1..=7 {
        for total in [0, 1, 5, 12, 1200] {
            let mut seen = vec![0; total];
            for i in 0..n {
                for p in Shard::new(i, n).unwrap().range(total) {
                    seen[p] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{n} shards of {total}");
        }
    }
    assert_eq!(Shard::parse("2/3").unwrap(), Shard { index: 2, count: 3 });
    for bad in ["3/3", "1/0", "x/2", "1", "-1/2"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
    assert!(Shard::parse("3/3").unwrap_err().to_string().contains("less than n"));
}

#[test]
fn builtin_corpus_scans_in_a_notebook_one_liner() {
    let lens = narrow();
    let corpus: Vec<Sentence> = corpus::builtin().unwrap().into_iter().filter(|s| s.id.starts_with("000")).collect();
    let study = lens.scan(&corpus, &quiet(8)).unwrap();
    assert_eq!(study.languages(), ["en", "ja", "ko"]);
    assert!(study.counts.tokens_of("ko") > study.counts.tokens_of("en"), "Korean needs more tokens per sentence");
    let shown = study.metrics().to_string();
    assert!(shown.lines().count() > 16 * 3);
}
