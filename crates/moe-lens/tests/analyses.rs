//! The routing analyses (co-activation, consecutive tokens, token specialisation, expert profiles)
//! against the independent NumPy reference `tests/analyses/reference.py`, whose committed output
//! was computed from `moe-lens trace --format json` exports of `tests/analyses/corpus.tsv` on the
//! narrow test checkpoint: counts equal exactly, rates within 1e-9.

use std::path::{Path, PathBuf};

use candle_core::DType;
use moe_lens::corpus;
use moe_lens::hub;
use moe_lens::lab::{DeviceChoice, Lens, LoadOptions};
use moe_lens::study::analyses::{self, RoutingAnalyses};
use moe_lens::study::scan_compare::compare_scan_dirs;
use moe_lens::study::{self, ScanOptions, SentenceRoutes, Study};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn narrow() -> Lens {
    let dir = root().join("tests/fixtures/olmoe-narrow");
    assert!(dir.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
    let files = hub::local_dir(&dir, "olmoe-narrow").unwrap();
    Lens::from_files(files, &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() })
        .unwrap()
}

fn expected(name: &str) -> Value {
    let p = root().join("tests/analyses").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9, "{what}: ours {a}, reference {b}");
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn check_against_reference(a: &RoutingAnalyses, want: &Value) {
    let top_n = want["top_tokens"].as_u64().unwrap() as usize;
    assert_eq!(a.tokens(), u(&want["tokens"]));
    // co-activation: exact counts
    for (layer, m) in want["coactivation"].as_array().unwrap().iter().enumerate() {
        let ours = a.coactivation(layer).unwrap();
        let theirs: Vec<Vec<u64>> = serde_json::from_value(m.clone()).unwrap();
        assert_eq!(ours, theirs, "co-activation of layer {layer}");
    }
    // the random router's values
    let r = a.random_router();
    close(r.top1_same, f(&want["random"]["top1_same"]), "random top1_same");
    close(r.top1_in_next_top2, f(&want["random"]["top1_in_next_top2"]), "random top1_in_next_top2");
    close(r.mean_shared, f(&want["random"]["mean_shared"]), "random mean_shared");
    // consecutive tokens
    let langs: Vec<String> = want["consecutive"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(a.languages(), langs);
    for lang in &langs {
        let ours = a.consecutive(lang).unwrap();
        for (layer, w) in want["consecutive"][lang].as_array().unwrap().iter().enumerate() {
            let o = &ours[layer];
            let what = format!("consecutive {lang} layer {layer}");
            assert_eq!(o.pairs, u(&w["pairs"]), "{what}: pairs");
            close(o.top1_same, f(&w["top1_same"]), &format!("{what}: top1_same"));
            close(o.top1_in_next_top2, f(&w["top1_in_next_top2"]), &format!("{what}: top1_in_next_top2"));
            close(o.mean_shared, f(&w["mean_shared"]), &format!("{what}: mean_shared"));
        }
        // expert profiles
        for (layer, w) in want["profiles"][lang].as_array().unwrap().iter().enumerate() {
            let p = a.profile(lang, layer).unwrap();
            let experts: Vec<usize> = p.experts.iter().map(|e| e.expert).collect();
            let picks: Vec<u64> = p.experts.iter().map(|e| e.picks).collect();
            assert_eq!(experts, serde_json::from_value::<Vec<usize>>(w["experts"].clone()).unwrap());
            assert_eq!(picks, serde_json::from_value::<Vec<u64>>(w["picks"].clone()).unwrap());
            for (e, c) in p.experts.iter().zip(w["cumulative"].as_array().unwrap()) {
                close(e.cumulative, f(c), &format!("profile {lang} layer {layer} cumulative"));
            }
        }
    }
    // token specialisation
    assert!(a.has_token_ids());
    for w in want["specialisation"].as_array().unwrap() {
        let (layer, expert) = (u(&w["layer"]) as usize, u(&w["expert"]) as usize);
        let what = format!("specialisation of layer {layer} expert {expert}");
        let s = a.specialisation(layer, expert, top_n).unwrap();
        assert_eq!(s.picks, u(&w["picks"]), "{what}");
        assert_eq!(s.distinct_tokens as u64, u(&w["distinct_tokens"]), "{what}");
        close(s.top1_share, f(&w["top1_share"]), &what);
        close(s.top_n_share, f(&w["top_n_share"]), &what);
        let top = w["top"].as_array().unwrap();
        assert_eq!(s.top.len(), top.len(), "{what}");
        for (t, x) in s.top.iter().zip(top) {
            assert_eq!(t.token_id as u64, u(&x[0]), "{what}");
            assert_eq!(t.count, u(&x[1]), "{what}");
            close(t.share_of_expert, f(&x[2]), &what);
            close(t.share_of_token, f(&x[3]), &what);
        }
        for (l, picks, _) in &s.langs {
            assert_eq!(*picks, u(&w["langs"][l.as_str()]), "{what}: {l}");
        }
    }
}

fn scan(lens: &Lens, batch: usize, by_script: bool, skip_common: bool) -> Study {
    let s = corpus::load_corpus(root().join("tests/analyses/corpus.tsv"), None).unwrap();
    let opts =
        ScanOptions { batch_size: Some(batch), by_script, skip_common, progress: false, ..ScanOptions::default() };
    study::scan(lens, &s, &opts).unwrap()
}

#[test]
fn analyses_equal_the_numpy_reference() {
    let lens = narrow();
    for (by_script, skip_common, file) in
        [(false, false, "expected-narrow.json"), (true, true, "expected-narrow-script-skip.json")]
    {
        let want = expected(file);
        assert_eq!(want["by_script"], by_script);
        assert_eq!(want["skip_common"], skip_common);
        for batch in [1, 5] {
            let study = scan(&lens, batch, by_script, skip_common);
            check_against_reference(&study.analyses().unwrap(), &want);
        }
    }
}

#[test]
fn saved_files_have_the_fixed_formats_and_reload() {
    let lens = narrow();
    let study = scan(&lens, 4, false, false);
    let dir = std::env::temp_dir().join(format!("moe-lens-analyses-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = study.metrics();
    study.save(&dir, &report).unwrap();
    let want = expected("expected-narrow.json");

    // coactivation.json = {"model", "k", "experts", "layers": [[[int]]]}
    let co: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(analyses::COACTIVATION_FILE)).unwrap()).unwrap();
    let keys: Vec<&str> = co.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["experts", "k", "layers", "model"]);
    assert_eq!(co["k"], 8);
    assert_eq!(co["experts"], 64);
    assert_eq!(co["model"], lens.name());
    assert_eq!(co["layers"], want["coactivation"]);

    // consecutive.json = {"model", "langs": {LANG: [{"pairs", "top1_same", "top1_in_next_top2", "mean_shared"}]}}
    let cj: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(analyses::CONSECUTIVE_FILE)).unwrap()).unwrap();
    let keys: Vec<&str> = cj.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["langs", "model"]);
    for (lang, layers) in cj["langs"].as_object().unwrap() {
        let w = want["consecutive"][lang].as_array().unwrap();
        assert_eq!(layers.as_array().unwrap().len(), 16);
        for (o, w) in layers.as_array().unwrap().iter().zip(w) {
            let keys: Vec<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["mean_shared", "pairs", "top1_in_next_top2", "top1_same"]);
            assert_eq!(o["pairs"], w["pairs"]);
            close(f(&o["top1_same"]), f(&w["top1_same"]), lang);
            close(f(&o["mean_shared"]), f(&w["mean_shared"]), lang);
        }
    }
    // one tidy CSV per analysis, each with its header
    for (file, header) in [
        (analyses::COACTIVATION_CSV, "layer,expert,partner,count,share"),
        (analyses::PARTNERS_CSV, "layer,expert,rank,partner,count,share"),
        (analyses::CONSECUTIVE_CSV, "lang,layer,pairs,top1_same,top1_in_next_top2,mean_shared,random_top1_same,random_top1_in_next_top2,random_mean_shared"),
        (analyses::SPECIALISATION_CSV, "layer,expert,picks,distinct_tokens,top1_share,top10_share"),
        (analyses::SPECIALISATION_TOKENS_CSV, "layer,expert,rank,token_id,token,count,share_of_expert,share_of_token"),
        (analyses::SPECIALISATION_LANGS_CSV, "layer,expert,lang,picks,share"),
        (analyses::PROFILES_CSV, "lang,layer,rank,expert,picks,share,cumulative_share"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(text.lines().next().unwrap(), header, "{file}");
        let cols = header.split(',').count();
        assert!(text.lines().skip(1).all(|l| l.split(',').count() == cols || l.contains('"')), "{file}");
    }
    let rows = std::fs::read_to_string(dir.join(analyses::COACTIVATION_CSV)).unwrap().lines().count();
    assert_eq!(rows, 1 + 16 * 64 * 64);

    // streamed from routes.bin, and from a loaded study: the same analyses
    let streamed = RoutingAnalyses::from_routes_file(lens.name(), &dir.join("routes.bin")).unwrap();
    check_against_reference(&streamed, &want);
    // a loaded study gives the same analyses
    let loaded = Study::load(&dir).unwrap();
    check_against_reference(&loaded.analyses().unwrap(), &want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory scan (`moe-lens scan`) keeps no routes in memory: they go to routes.bin, and the
/// comparisons and analyses read them back one sentence at a time. Its files are byte for byte
/// those of the in-memory scan saved (whose analyses the NumPy reference checks), and its
/// analyses equal the NumPy reference; with sentences cut into languages by script too.
#[test]
fn a_directory_scan_streams_and_writes_what_the_in_memory_scan_saves() {
    use moe_lens::study::checkpoint::{scan_to_dir, DirScan, RunInfo};
    use moe_lens::study::{CompareOptions, Shard};
    let lens = narrow();
    let sentences = corpus::load_corpus(root().join("tests/analyses/corpus.tsv"), None).unwrap();
    for (by_script, skip_common, file) in
        [(false, false, "expected-narrow.json"), (true, true, "expected-narrow-script-skip.json")]
    {
        let base = std::env::temp_dir().join(format!("moe-lens-stream-{by_script}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let options =
            ScanOptions { batch_size: Some(3), by_script, skip_common, progress: false, ..ScanOptions::default() };
        let compare = CompareOptions { replicates: 40, ..CompareOptions::default() };
        let run = RunInfo {
            model: "olmoe-narrow".into(),
            corpus: "corpus.tsv".into(),
            corpus_fingerprint: corpus::fingerprint(&sentences),
            corpus_sentences: sentences.len(),
            lang: None,
            dtype: String::new(),
            by_script,
            skip_common,
            batch: 0,
            batch_tokens: 0,
        };
        let job = DirScan {
            run,
            shard: Shard::ALL,
            options: options.clone(),
            reference: None,
            compare: compare.clone(),
            commit_every: moe_lens::study::checkpoint::COMMIT_INTERVAL,
        };
        let streamed = base.join("dir");
        let res = scan_to_dir(&lens, &sentences, &job, &streamed, &mut |_| {}).unwrap();
        assert!(res.study.routes.is_empty(), "a directory scan keeps no routes in memory");

        let mut study = study::scan(&lens, &sentences, &options).unwrap();
        study.sort();
        assert_eq!(res.study.counts, study.counts);
        let report = study.report(None, &compare).unwrap();
        assert_eq!(res.report, report);
        let saved = base.join("saved");
        study.save(&saved, &report).unwrap();
        for f in [
            "counts.json",
            "metrics.json",
            "metrics.csv",
            "routes.bin",
            "coactivation.json",
            "consecutive.json",
            "coactivation.csv",
            "coactivation_partners.csv",
            "consecutive.csv",
            "specialisation.csv",
            "specialisation_langs.csv",
            "expert_profiles.csv",
        ] {
            let (a, b) = (std::fs::read(streamed.join(f)).unwrap(), std::fs::read(saved.join(f)).unwrap());
            assert!(a == b, "{f} differs between the directory scan and the saved in-memory scan");
        }
        let want = expected(file);
        check_against_reference(
            &RoutingAnalyses::from_routes_file(lens.name(), &streamed.join("routes.bin")).unwrap(),
            &want,
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}

/// Hand-made routes: neighbours only where positions are adjacent, pairs under the first token's
/// language, the random router's values from their formulas.
#[test]
fn consecutive_pairs_by_hand() {
    // one layer, 4 experts, top-2; tokens at positions 0, 1, 3 (2 left out), languages en, ko, ko
    let r = SentenceRoutes {
        index: 0,
        id: "x".into(),
        langs: vec!["en".into(), "ko".into()],
        token_lang: vec![0, 1, 1],
        domain: Some("news".into()),
        token_ids: vec![7, 7, 9],
        positions: vec![0, 1, 3],
        layers: 1,
        k: 2,
        experts: vec![1, 2, /**/ 2, 1, /**/ 1, 3],
    };
    let a = RoutingAnalyses::from_routes("m", 1, 4, 2, [&r]).unwrap();
    let en = a.consecutive("en").unwrap()[0];
    assert_eq!(en.pairs, 1); // (0,1) only: 1 and 3 are not neighbours
    assert_eq!(en.top1_same, 0.0); // 1 vs 2
    assert_eq!(en.top1_in_next_top2, 1.0); // 1 ∈ {2, 1}
    assert_eq!(en.mean_shared, 2.0);
    assert_eq!(a.consecutive("ko").unwrap()[0].pairs, 0);
    assert_eq!(
        a.coactivation(0).unwrap(),
        vec![vec![0, 0, 0, 0], vec![0, 3, 2, 1], vec![0, 2, 2, 0], vec![0, 1, 0, 1]]
    );
    let p = a.partners(0, 1, 5).unwrap();
    assert_eq!(p.iter().map(|p| (p.expert, p.count)).collect::<Vec<_>>(), [(2, 2), (3, 1)]);
    let s = a.specialisation(0, 1, 1).unwrap();
    assert_eq!((s.picks, s.distinct_tokens), (3, 2));
    assert_eq!(s.top[0].token_id, 7);
    assert!((s.top1_share - 2.0 / 3.0).abs() < 1e-15);
    assert_eq!(s.top[0].share_of_token, 1.0); // both occurrences of 7 chose expert 1
    assert_eq!(s.domains, [("news".to_string(), 3, 1.0)]);
    let rr = analyses::random_router(64, 8);
    assert_eq!((rr.top1_same, rr.top1_in_next_top2, rr.mean_shared), (1.0 / 64.0, 2.0 / 64.0, 1.0));
    assert!(a.consecutive("xx").is_err());
    assert!(a.coactivation(1).is_err());
    // a routes record of another shape is refused, not a panic
    let mut bad = r.clone();
    bad.k = 3;
    assert!(RoutingAnalyses::from_routes("m", 1, 4, 2, [&bad]).is_err());
}

// ------------------------------------------------------------------------------------------------
// compare-scans
// ------------------------------------------------------------------------------------------------

fn saved_scan(lens: &Lens, name: &str) -> PathBuf {
    let study = scan(lens, 1, false, false);
    let dir = std::env::temp_dir().join(format!("moe-lens-cmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = study.report(None, &moe_lens::study::CompareOptions { replicates: 50, ..Default::default() }).unwrap();
    study.save(&dir, &report).unwrap();
    dir
}

#[test]
fn a_scan_compared_with_itself_agrees_everywhere() {
    let lens = narrow();
    let dir = saved_scan(&lens, "self");
    let c = compare_scan_dirs(&dir, &dir).unwrap();
    assert_eq!(c.layers.len(), 16);
    assert_eq!((c.sentences, c.only_a, c.only_b), (13, 0, 0));
    for l in &c.layers {
        assert_eq!((l.set_agreement, l.mean_overlap, l.top1_agreement, l.jsd), (1.0, 1.0, 1.0, 0.0));
    }
    assert!(!c.verdicts.is_empty());
    assert!(c.changed_layers().is_empty());
    assert!(c.to_string().contains("verdict changes in 0 of 16 layers"), "{c}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The narrow checkpoint in float32 against llama.cpp's Q4_K_M of it: the agreement equals what
/// the two models' traces give sentence by sentence (computed here from the trace exports).
#[test]
fn compare_scans_equals_the_trace_level_agreement() {
    let f32_lens = narrow();
    let q_path = root().join("tests/fixtures/llamacpp/olmoe-narrow-Q4_K_M.gguf");
    let q_lens =
        Lens::load_with(q_path.to_str().unwrap(), &LoadOptions { device: DeviceChoice::Cpu, ..Default::default() })
            .unwrap();
    let (a, b) = (saved_scan(&f32_lens, "f32"), saved_scan(&q_lens, "q4km"));
    let c = compare_scan_dirs(&a, &b).unwrap();
    let sentences = corpus::load_corpus(root().join("tests/analyses/corpus.tsv"), None).unwrap();
    let (mut same, mut overlap, mut top1, mut n) = ([0u64; 16], [0u64; 16], [0u64; 16], 0u64);
    for s in &sentences {
        let ta: Value = serde_json::from_str(&f32_lens.trace(&s.text).unwrap().to_json().unwrap()).unwrap();
        let tb: Value = serde_json::from_str(&q_lens.trace(&s.text).unwrap().to_json().unwrap()).unwrap();
        assert_eq!(ta["tokens"].as_array().unwrap().len(), tb["tokens"].as_array().unwrap().len());
        n += ta["tokens"].as_array().unwrap().len() as u64;
        for l in 0..16 {
            for (x, y) in
                ta["layers"][l]["top_k"].as_array().unwrap().iter().zip(tb["layers"][l]["top_k"].as_array().unwrap())
            {
                let x: Vec<u64> = x.as_array().unwrap().iter().map(u).collect();
                let y: Vec<u64> = y.as_array().unwrap().iter().map(u).collect();
                let shared = x.iter().filter(|e| y.contains(e)).count() as u64;
                overlap[l] += shared;
                same[l] += u64::from(shared == 8);
                top1[l] += u64::from(x[0] == y[0]);
            }
        }
    }
    assert_eq!(c.tokens, n);
    let mut differs = false;
    for (l, got) in c.layers.iter().enumerate() {
        close(got.set_agreement, same[l] as f64 / n as f64, "set agreement");
        close(got.mean_overlap, overlap[l] as f64 / (8 * n) as f64, "mean overlap");
        close(got.top1_agreement, top1[l] as f64 / n as f64, "top-1 agreement");
        differs |= got.set_agreement < 1.0;
        assert!(got.jsd >= 0.0 && got.jsd < 0.2, "layer {l}: JSD {}", got.jsd);
    }
    assert!(differs, "the 4/5-bit model routes some token differently");
    eprintln!("{c}");
    // a scan of another corpus is refused
    let other = std::env::temp_dir().join(format!("moe-lens-cmp-other-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&other);
    let s2 = vec![moe_lens::corpus::Sentence::new("x", "en", "Something else entirely.").unwrap()];
    let st = study::scan(&f32_lens, &s2, &ScanOptions { progress: false, ..Default::default() }).unwrap();
    st.save(&other, &st.metrics()).unwrap();
    let e = compare_scan_dirs(&a, &other).unwrap_err().to_string();
    assert!(e.contains("not of the same corpus"), "{e}");
    for d in [a, b, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

// ------------------------------------------------------------------------------------------------
// the token-identity null
// ------------------------------------------------------------------------------------------------

#[test]
fn null_top_k_is_k_distinct_experts_fixed_per_token_id() {
    use moe_lens::study::null::null_top_k;
    for id in [0u32, 1, 50_000] {
        for layer in [0, 15] {
            let v = null_top_k(7, layer, id, 64, 8);
            assert_eq!(v.len(), 8);
            let mut s = v.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 8, "distinct");
            assert!(v.iter().all(|&e| e < 64));
            assert_eq!(v, null_top_k(7, layer, id, 64, 8), "fixed");
        }
    }
    assert_ne!(null_top_k(7, 0, 1, 64, 8), null_top_k(7, 0, 2, 64, 8));
}

#[test]
fn the_null_comparison_matches_the_plain_one_and_is_zero_on_null_routing() {
    use moe_lens::study::null::{compare_with_null, null_routes};
    use moe_lens::study::{CompareOptions, Verdict};
    let lens = narrow();
    let study = scan(&lens, 4, false, false);
    let opts = CompareOptions { replicates: 60, ..Default::default() };
    let plain = study.compare_with("ko", "en", &opts).unwrap();
    let n = study.compare_null_with("ko", "en", &opts).unwrap();
    assert_eq!(n.layers.len(), 16);
    assert_eq!(n.matched_tokens, plain.matched_tokens);
    for (x, p) in n.layers.iter().zip(&plain.layers) {
        // the same draws: the observed column is the plain comparison's estimate, exactly
        assert_eq!(x.observed, p.diff, "layer {}", x.layer);
        assert_eq!(x.excess, x.observed - x.null);
        assert!(x.ci_low <= x.excess && x.excess <= x.ci_high);
    }
    // distinct ids counted independently
    let sentences = corpus::load_corpus(root().join("tests/analyses/corpus.tsv"), None).unwrap();
    let mut ko = std::collections::HashSet::new();
    for s in sentences.iter().filter(|s| s.lang == "ko") {
        for t in lens.tokenize(&s.text).unwrap() {
            ko.insert(t.id);
        }
    }
    assert_eq!(n.a_distinct_ids, ko.len());
    // routing that is the null itself: nothing beyond the tokenizer, in every layer
    let c = &study.counts;
    let routes = null_routes(&study.routes, c.experts, opts.seed).unwrap();
    let z = compare_with_null(&routes, c.layers, c.experts, c.k, "ko", "en", &opts).unwrap();
    for l in &z.layers {
        assert_eq!((l.excess, l.ci_low, l.ci_high, l.verdict), (0.0, 0.0, 0.0, Verdict::NoClearDifference));
    }
    assert!(n.to_string().contains("beyond what the tokenizer explains"), "{n}");
    eprintln!("{n}");
}
