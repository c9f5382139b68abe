//! The explorer (issue 16) on the olmoe-narrow fixture (16 layers × 64 experts, top-8): output size
//! for 25 and 256 tokens, the payload against the trace's own numbers within the stated quantisation
//! error, the still picture for untrusted notebooks, unique ids, saving by extension, pairs.

mod common;
use common::fixture::{load_dir, root};

use moe_lens::plot::{evcxr_output, expert_use_overlap, explore_pair, Explorer, Figure, TracePlots};
use moe_lens::prelude::*;
use moe_lens::spy::LayerSelection;

fn lens() -> Lens {
    load_dir(&root().join("tests/fixtures/olmoe-narrow")).expect("the olmoe-narrow fixture loads")
}

/// A text of exactly `n` tokens or a little more (words added until the tokenizer gives >= n).
fn text_of(lens: &Lens, n: usize) -> String {
    let words =
        ["The", "quick", "brown", "fox", "안녕하세요", "こんにちは", "jumps", "世界", "over", "a", "lazy", "dog."];
    let mut text = String::new();
    let mut i = 0;
    while lens.tokenize(&text).map(|t| t.len()).unwrap_or(0) < n {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(words[i % words.len()]);
        i += 1;
    }
    text
}

/// Base64 (RFC 4648) decoding, written here independently of the library's encoder.
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// The payload object of an explorer's HTML (`var P=…;`).
fn payload(html: &str) -> serde_json::Value {
    let start = html.find("var P=").expect("payload") + "var P=".len();
    let end = start + html[start..].find(";\n").expect("end of payload");
    serde_json::from_str(&html[start..end]).expect("the payload is JSON")
}

#[test]
fn size_of_25_and_256_tokens() {
    let lens = lens();
    for (n, limit) in [(25usize, 250_000usize), (256, 2_000_000)] {
        let text = text_of(&lens, n);
        let trace = lens.trace(&text).unwrap();
        assert!(trace.tokens.len() >= n && trace.tokens.len() <= n + 4, "{} tokens", trace.tokens.len());
        assert_eq!(trace.layers.len(), 16);
        let ex = trace.explore().unwrap();
        let page = ex.html_page().unwrap();
        let cell = evcxr_output(&ex);
        println!("{} tokens: page {} bytes, notebook output {} bytes", trace.tokens.len(), page.len(), cell.len());
        assert!(page.len() <= limit, "{} tokens: the page is {} bytes (limit {limit})", trace.tokens.len(), page.len());
        assert!(cell.len() <= limit, "{} tokens: the notebook output is {} bytes", trace.tokens.len(), cell.len());
    }
}

#[test]
fn payload_holds_the_trace_within_the_quantisation_error() {
    let lens = lens();
    let trace = lens.trace("The quick brown fox jumps. 안녕하세요. こんにちは.").unwrap();
    let html = trace.explore().unwrap().html().unwrap();
    let p = payload(&html);
    let run = &p["runs"][0];
    let (n, e, k) = (trace.tokens.len(), 64usize, 8usize);
    assert_eq!(run["experts"], 64);
    assert_eq!(run["k"], 8);
    assert_eq!(run["tokens"].as_array().unwrap().len(), n);
    for (i, t) in trace.tokens.iter().enumerate() {
        assert_eq!(run["tokens"][i]["l"], t.label.as_str());
        assert_eq!(run["tokens"][i]["s"], t.script.name());
        assert_eq!(run["tokens"][i]["id"], t.id);
        assert!(run["tokens"][i]["g"].is_null());
    }
    let probs = u16s(&unbase64(run["probs"].as_str().unwrap()));
    let logits = u16s(&unbase64(run["logits"].as_str().unwrap()));
    let top = unbase64(run["topk"].as_str().unwrap());
    let weights = u16s(&unbase64(run["weights"].as_str().unwrap()));
    assert_eq!(probs.len(), 16 * n * e);
    assert_eq!(top.len(), 16 * n * k);
    for (l, lt) in trace.layers.iter().enumerate() {
        let (lo, hi) = (run["lmin"][l].as_f64().unwrap(), run["lmax"][l].as_f64().unwrap());
        for t in 0..n {
            for x in 0..e {
                let at = (l * n + t) * e + x;
                let p = probs[at] as f64 / 65535.0;
                assert!((p - lt.probs[t][x] as f64).abs() <= 0.5 / 65535.0 + 1e-9, "prob {l} {t} {x}");
                let g = lo + (hi - lo) * logits[at] as f64 / 65535.0;
                assert!((g - lt.logits[t][x] as f64).abs() <= (hi - lo) / 131070.0 + 1e-6, "logit {l} {t} {x}");
            }
            for j in 0..k {
                let at = (l * n + t) * k + j;
                assert_eq!(top[at] as u32, lt.top_k[t][j]);
                assert!((weights[at] as f64 / 65535.0 - lt.weights[t][j] as f64).abs() <= 0.5 / 65535.0 + 1e-9);
            }
        }
    }
}

#[test]
fn generated_tokens_carry_their_step() {
    let lens = lens();
    let run = lens.generate("Hello, how are you?", 4).unwrap();
    let html = run.explore().unwrap().html().unwrap();
    let p = payload(&html);
    let toks = p["runs"][0]["tokens"].as_array().unwrap();
    assert_eq!(p["runs"][0]["prompt_len"], run.prompt_len);
    for (i, t) in toks.iter().enumerate() {
        if i < run.prompt_len {
            assert!(t["g"].is_null());
        } else {
            assert_eq!(t["g"], i - run.prompt_len, "token {i} is decode step {}", i - run.prompt_len);
        }
    }
}

#[test]
fn still_picture_unique_ids_and_the_notebook_bundle() {
    let lens = lens();
    let trace = lens.trace("The quick brown fox jumps. 안녕하세요. こんにちは.").unwrap();
    let ex = trace.explore().unwrap().layer(14).unwrap();
    assert_eq!(ex.start_layer(), "model.layers.14.mlp.gate");
    let a = ex.html().unwrap();
    let b = ex.html().unwrap();
    let id = |h: &str| h.split("id=\"mlx-").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert_ne!(id(&a), id(&b), "two outputs of one view get different ids");
    assert!(a.contains(&format!("getElementById(\"mlx-{}\")", id(&a))), "the script finds its own element");
    // before the script: an <img> of the still SVG and the line about the interactive view
    let before = &a[..a.find("<script>").unwrap()];
    assert!(!before.contains("<svg"), "no inline <svg>: an untrusted notebook's sanitiser strips it");
    let img = before.split("src=\"data:image/svg+xml;base64,").nth(1).unwrap().split('"').next().unwrap();
    let still = String::from_utf8(unbase64(img)).unwrap();
    assert_eq!(still, ex.svg().unwrap());
    assert!(still.contains("model.layers.14.mlp.gate") && still.contains("안") && still.contains("こ"));
    assert!(before.contains("run this cell, or trust the notebook"));
    // the script is there once, with no network address in it
    assert_eq!(a.matches("<script>").count(), 1);
    for bad in ["http://", "https://", "//cdn", "fetch(", "XMLHttpRequest", "import("] {
        assert!(!a.contains(bad), "the output mentions {bad}");
    }
    let out = evcxr_output(&ex);
    assert!(out.contains("EVCXR_BEGIN_CONTENT text/html\n") && out.contains("EVCXR_BEGIN_CONTENT image/svg+xml\n"));
    assert_eq!(ex.to_still_svg().unwrap().unwrap(), still);
    // layers not captured / not in the model are errors
    assert!(trace.explore().unwrap().layer(16).is_err());
}

#[test]
fn save_picks_the_format_by_extension() {
    let lens = lens();
    let trace = lens.trace("The quick brown fox. 안녕하세요.").unwrap();
    let ex = trace.explore().unwrap();
    let dir = std::env::temp_dir().join(format!("moe-lens-explore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ex.save(dir.join("view.html")).unwrap();
    let page = std::fs::read_to_string(dir.join("view.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<script>"));
    ex.save(dir.join("view.svg")).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("view.svg")).unwrap(), ex.svg().unwrap());
    let err = ex.save(dir.join("view.txt")).unwrap_err().to_string();
    assert!(err.contains(".txt") && err.contains(".html") && err.contains(".png"), "{err}");
    // heatmap and table: .svg is a clean picture (no hover layer), .html the interactive one
    let h = trace.heatmap(3).unwrap();
    h.save(dir.join("h.svg")).unwrap();
    let svg = std::fs::read_to_string(dir.join("h.svg")).unwrap();
    assert!(svg.starts_with("<svg") && !svg.contains("moe-lens-tooltips"));
    h.save(dir.join("h.html")).unwrap();
    assert!(std::fs::read_to_string(dir.join("h.html")).unwrap().contains("moe-lens-tooltips"));
    let t = trace.top_k_view(3).unwrap();
    t.save(dir.join("t.svg")).unwrap();
    assert!(std::fs::read_to_string(dir.join("t.svg")).unwrap().starts_with("<svg"));
    t.save(dir.join("t.html")).unwrap();
    assert!(std::fs::read_to_string(dir.join("t.html")).unwrap().contains("<table"));
    assert!(t.save(dir.join("t")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pairs_share_one_slider_and_state_their_overlap() {
    let lens = lens();
    let en = lens.trace("The quick brown fox jumps.").unwrap();
    let ko = lens.trace("빠른 갈색 여우가 점프한다.").unwrap();
    let pair = explore_pair(&en, &ko).unwrap();
    let ov = pair.overlaps();
    assert_eq!(ov.len(), 16);
    for (l, o) in ov.iter().enumerate() {
        let want = expert_use_overlap(&en.layers[l].top_k, &ko.layers[l].top_k, 64).unwrap();
        assert_eq!(*o, want);
        assert!((0.0..=1.0).contains(o));
    }
    // a run with itself overlaps fully
    assert!(explore_pair(&en, &en).unwrap().overlaps().iter().all(|&o| (o - 1.0).abs() < 1e-12));
    let html = pair.html().unwrap();
    let p = payload(&html);
    assert_eq!(p["runs"].as_array().unwrap().len(), 2);
    assert_eq!(p["overlap"].as_array().unwrap().len(), 16);
    assert_eq!(html.matches("<script>").count(), 1, "one renderer for both views");
    // the still picture shows both runs
    let still = pair.svg().unwrap();
    assert!(still.contains("run 1") && still.contains("run 2") && still.contains("overlap"));
    // a trace of other layers cannot be paired
    let few = lens.trace_layers("The fox.", LayerSelection::Only(vec![0, 1])).unwrap();
    assert!(explore_pair(&en, &few).is_err());
    let _: Explorer = Explorer::new(&en).unwrap();
}
