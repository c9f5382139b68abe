//! Pictures: heatmap SVG, top-k table, evcxr output. A trace is built by hand with known numbers.

mod common;
use common::xml::{notebook_payloads, parse_xml, Elem};

use std::collections::HashSet;
use std::path::PathBuf;

use moe_lens::plot::{evcxr_output, DisplayResult, Figure, Figures, Heatmap, TopKTable, TracePlots, Values};
use moe_lens::prelude::*;
use moe_lens::trace::LayerTrace;

const EXPERTS: usize = 64;
const K: usize = 8;

fn tok(id: u32, label: &str, script: Script) -> Token {
    Token { id, label: label.to_string(), start: 0, end: 0, script }
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// A layer with deterministic pseudo-random logits; token `i`'s favourite expert is `(i * 5 + layer) % 64`
/// with a clearly larger logit.
fn layer(index: usize, n: usize) -> LayerTrace {
    let mut logits = Vec::new();
    let mut probs = Vec::new();
    let mut top_k = Vec::new();
    let mut weights = Vec::new();
    for i in 0..n {
        let mut row: Vec<f32> = (0..EXPERTS)
            .map(|e| {
                let h = (i as u64 * 7919 + e as u64 * 104729 + index as u64 * 1299709) % 1000;
                h as f32 / 150.0 - 3.5
            })
            .collect();
        row[(i * 5 + index) % EXPERTS] = 6.0;
        let p = softmax(&row);
        let mut order: Vec<usize> = (0..EXPERTS).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        let chosen: Vec<u32> = order[..K].iter().map(|&e| e as u32).collect();
        let w: Vec<f32> = order[..K].iter().map(|&e| p[e]).collect();
        logits.push(row);
        probs.push(p);
        top_k.push(chosen);
        weights.push(w);
    }
    LayerTrace { name: format!("model.layers.{index}.mlp.gate"), logits, probs, top_k, weights }
}

/// English, Korean (split syllables), Japanese, XML specials, and two generated tokens.
fn trace() -> Trace {
    let tokens = vec![
        tok(510, "␣The", Script::Latin),
        tok(21831, "␣fox", Script::Latin),
        tok(6000, "␣안…", Script::Hangul),
        tok(6001, "…안", Script::Hangul),
        tok(6002, "녕하세요", Script::Hangul),
        tok(7000, "こんにちは", Script::Hiragana),
        tok(7001, "世界", Script::Han),
        tok(42, "<&>\"'", Script::Common),
        tok(13, ".", Script::Common),
        tok(50279, "<|endoftext|>", Script::Common),
        tok(8000, "␣jumps", Script::Latin),
    ];
    let n = tokens.len();
    let text = "The fox 안녕하세요 こんにちは世界<&>\"'. jumps".to_string();
    Trace {
        model: "allenai/OLMoE-1B-7B-0924".into(),
        text,
        tokens,
        prompt_len: 9,
        steps: vec![],
        layers: vec![layer(3, n), layer(14, n)],
        cache: Default::default(),
        model_layers: 16,
        interventions: Default::default(),
    }
}

fn cells(elems: &[Elem]) -> Vec<&Elem> {
    elems.iter().filter(|e| e.name == "rect" && e.attr("class") == Some("moe-lens-cell")).collect()
}

fn example_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().map(|p| p.join("plot-examples")).unwrap_or(tmp);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ------------------------------------------------------------------------------------------------

#[test]
fn svg_is_well_formed_xml_with_one_svg_root() {
    let t = trace();
    for values in [Values::Probs, Values::Logits] {
        let svg = t.heatmap(14).unwrap().values(values).svg().unwrap();
        assert!(svg.starts_with("<svg "), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let elems = parse_xml(&svg).unwrap();
        assert_eq!(elems[0].name, "svg");
        assert_eq!(elems.iter().filter(|e| e.name == "svg").count(), 1);
    }
}

#[test]
fn one_tooltip_rect_per_token_and_expert() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let c = cells(&elems);
    assert_eq!(c.len(), t.tokens.len() * EXPERTS);
    assert!(c.iter().all(|e| e.title.is_some() && e.attr("fill-opacity") == Some("0")));
    // distinct positions, laid out row-major: same row → same y, x grows with the expert
    let pos: HashSet<(i64, i64)> = c.iter().map(|e| (e.num("x"), e.num("y"))).collect();
    assert_eq!(pos.len(), c.len());
    let (w, h) = (c[0].num("width"), c[0].num("height"));
    for (n, e) in c.iter().enumerate() {
        let (i, x) = (n / EXPERTS, n % EXPERTS);
        assert_eq!(e.num("x"), c[0].num("x") + x as i64 * w);
        assert_eq!(e.num("y"), c[0].num("y") + i as i64 * h);
    }
    // rows stay readable: 16–22 px per token, ~12 px per expert, width ~900–1100 for 64 experts
    assert!((16..=22).contains(&h), "row height {h}");
    assert_eq!(w, 12);
    let width = elems[0].num("width");
    assert!((900..=1100).contains(&width), "width {width}");
}

#[test]
fn tooltip_rects_sit_exactly_on_the_drawn_cells() {
    let t = trace();
    let svg = t.heatmap(3).unwrap().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let drawn: HashSet<(i64, i64, i64, i64)> = elems
        .iter()
        .filter(|e| {
            e.name == "rect"
                && e.attr("class").is_none()
                && e.attr("stroke") == Some("none")
                && e.attr("fill") != Some("none")
        })
        .map(|e| (e.num("x"), e.num("y"), e.num("width"), e.num("height")))
        .collect();
    for c in cells(&elems) {
        let key = (c.num("x"), c.num("y"), c.num("width"), c.num("height"));
        assert!(drawn.contains(&key), "no coloured cell under tooltip rect {key:?}");
    }
}

#[test]
fn tooltips_name_token_expert_probability_logit_and_rank() {
    let t = trace();
    let lt = t.layer(14).unwrap();
    let svg = t.heatmap(14).unwrap().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let c = cells(&elems);
    for (i, e) in [(0usize, 0usize), (1, 63), (2, 17), (4, 40), (5, 5 * 5 + 14), (7, 8), (10, 33)] {
        let title = c[i * EXPERTS + e].title.as_deref().unwrap();
        let tok = &t.tokens[i];
        assert!(title.contains(&format!("token {i} \"{}\"", tok.label)), "{title}");
        assert!(title.contains(&format!("id {}", tok.id)), "{title}");
        assert!(title.contains(&format!("\nexpert {e}\n")), "{title}");
        assert!(title.contains(&format!("probability {:.4}", lt.probs[i][e])), "{title}");
        assert!(title.contains(&format!("logit {:.3}", lt.logits[i][e])), "{title}");
        match lt.top_k[i].iter().position(|&x| x as usize == e) {
            Some(j) => assert!(title.contains(&format!("chosen: rank {} of top-8", j + 1)), "{title}"),
            None => assert!(title.contains("not chosen"), "{title}"),
        }
        if i >= t.prompt_len {
            assert!(title.contains("generated"), "{title}");
        }
    }
    // the planted favourite of token 5 is its first choice
    let fav = 5 * 5 + 14;
    assert!(c[5 * EXPERTS + fav].title.as_deref().unwrap().contains("chosen: rank 1 of top-8"));
}

#[test]
fn one_top_k_marker_per_chosen_cell() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let c = cells(&elems);
    let chosen: HashSet<(i64, i64)> = c
        .iter()
        .filter(|e| e.title.as_deref().unwrap_or("").contains("chosen: rank"))
        .map(|e| (e.num("x"), e.num("y")))
        .collect();
    assert_eq!(chosen.len(), t.tokens.len() * K);
    let (w, h) = (c[0].num("width"), c[0].num("height"));
    // markers: hollow rectangles inset by one pixel in a cell
    let markers: Vec<(i64, i64)> = elems
        .iter()
        .filter(|e| {
            e.name == "rect" && e.attr("fill") == Some("none") && e.num("width") == w - 2 && e.num("height") == h - 2
        })
        .map(|e| (e.num("x") - 1, e.num("y") - 1))
        .filter(|p| chosen.contains(p) || c.iter().any(|e| (e.num("x"), e.num("y")) == *p))
        .collect();
    assert_eq!(markers.len(), t.tokens.len() * K);
    assert_eq!(markers.iter().copied().collect::<HashSet<_>>(), chosen);
    // every marker is white or black
    assert!(elems
        .iter()
        .filter(|e| e.name == "rect" && e.attr("fill") == Some("none") && e.num("width") == w - 2)
        .all(|e| matches!(e.attr("stroke"), Some("#FFFFFF") | Some("#000000"))));
}

#[test]
fn korean_and_japanese_labels_are_verbatim_text() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().svg().unwrap();
    assert!(!svg.contains('\u{FFFD}'));
    let elems = parse_xml(&svg).unwrap();
    let texts: Vec<String> = elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim().to_string()).collect();
    for label in ["␣안…", "…안", "녕하세요", "こんにちは", "世界", "␣fox"] {
        assert!(texts.iter().any(|s| s == label), "{label} not among {texts:?}");
    }
    // the text asks for CJK fonts
    let fam = elems.iter().find(|e| e.name == "text").and_then(|e| e.attr("font-family")).unwrap();
    assert!(
        fam.contains("Noto Sans CJK KR") && fam.contains("Noto Sans CJK JP") && fam.ends_with("sans-serif"),
        "{fam}"
    );
}

#[test]
fn xml_special_characters_in_labels_are_escaped() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().svg().unwrap();
    assert!(!svg.contains("<&>"));
    assert!(!svg.contains("<|endoftext|>"));
    assert!(svg.contains("&lt;&amp;&gt;&quot;&apos;"));
    let elems = parse_xml(&svg).unwrap();
    // the unescaped label is there, as text and in the tooltips
    assert!(elems.iter().any(|e| e.name == "text" && e.text.trim() == "<&>\"'"));
    assert!(elems.iter().any(|e| e.name == "text" && e.text.trim() == "<|endoftext|>"));
    let c = cells(&elems);
    assert!(c[7 * EXPERTS].title.as_deref().unwrap().starts_with("token 7 \"<&>\"'\""));
    // a control character becomes visible instead of breaking XML 1.0
    let mut t2 = trace();
    t2.tokens[0].label = "a\u{1}b\u{0}".into();
    let svg2 = t2.heatmap(14).unwrap().svg().unwrap();
    assert!(!svg2.contains('\u{1}') && !svg2.contains('\u{0}'));
    parse_xml(&svg2).unwrap();
}

#[test]
fn custom_title_is_escaped_and_used() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().title("Layer 14 <probs> & friends").svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    assert!(elems.iter().any(|e| e.name == "text" && e.text.trim() == "Layer 14 <probs> & friends"));
    let default = t.heatmap(14).unwrap().svg().unwrap();
    assert!(default.contains("model.layers.14.mlp.gate — router probabilities (softmax over 64 experts)"));
    let logits = t.heatmap(14).unwrap().logits().svg().unwrap();
    assert!(logits.contains("router logits"));
}

#[test]
fn layer_by_name_and_by_index_give_the_same_svg() {
    let t = trace();
    let a = t.heatmap(14).unwrap().svg().unwrap();
    let b = t.heatmap("model.layers.14.mlp.gate").unwrap().svg().unwrap();
    let c = Heatmap::new(&t, 14usize).unwrap().svg().unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_ne!(a, t.heatmap(3).unwrap().svg().unwrap());
}

#[test]
fn unknown_or_uncaptured_layer_is_an_error() {
    let t = trace();
    assert!(matches!(t.heatmap(99), Err(Error::UnknownLayer { .. })));
    assert!(matches!(t.heatmap("model.layers.x.mlp.gate"), Err(Error::UnknownLayer { .. })));
    assert!(matches!(t.heatmap(5), Err(Error::InvalidArgument { .. })));
    assert!(matches!(t.top_k_view(99), Err(Error::UnknownLayer { .. })));
    // shown as a message, not a panic
    t.heatmap(99).evcxr_display();
}

#[test]
fn inconsistent_trace_and_bad_arguments_are_errors() {
    let mut t = trace();
    t.layers[1].probs.pop();
    assert!(matches!(t.heatmap(14), Err(Error::InvalidArgument { .. })));
    let mut t = trace();
    t.layers[1].top_k[0][0] = 64;
    assert!(matches!(t.heatmap(14), Err(Error::InvalidArgument { .. })));
    let mut t = trace();
    t.tokens.clear();
    for l in &mut t.layers {
        *l = layer(14, 0);
    }
    assert!(t.heatmap(14).is_err());
    let t = trace();
    assert!(matches!(t.heatmap(14).unwrap().range(1.0, 0.0).svg(), Err(Error::InvalidArgument { .. })));
    assert!(matches!(t.heatmap(14).unwrap().range(f32::NAN, 1.0).svg(), Err(Error::InvalidArgument { .. })));
    assert!(matches!(t.heatmap(14).unwrap().tokens(3..99).svg(), Err(Error::InvalidArgument { .. })));
    assert!(matches!(t.heatmap(14).unwrap().tokens(3..3).svg(), Err(Error::InvalidArgument { .. })));
    // the error reaches the notebook as text
    let out = evcxr_output(&t.heatmap(14).unwrap().range(1.0, 0.0));
    assert!(out.starts_with("EVCXR_BEGIN_CONTENT text/plain\nerror:"), "{out}");
}

#[test]
fn non_finite_values_do_not_break_the_picture() {
    let mut t = trace();
    t.layers[1].logits[0][1] = f32::NAN;
    t.layers[1].probs[0][1] = f32::NAN;
    t.layers[1].logits[1][2] = f32::INFINITY;
    let svg = t.heatmap(14).unwrap().logits().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    assert!(cells(&elems)[1].title.as_deref().unwrap().contains("probability NaN"));
}

#[test]
fn a_token_range_draws_only_those_rows() {
    let t = trace();
    let svg = t.heatmap(14).unwrap().tokens(2..7).svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let c = cells(&elems);
    assert_eq!(c.len(), 5 * EXPERTS);
    assert!(c[0].title.as_deref().unwrap().starts_with("token 2 "));
}

#[test]
fn a_long_trace_shows_its_first_rows_unless_asked() {
    let mut big = trace();
    let n = 300;
    big.tokens = (0..n).map(|i| tok(i as u32, &format!("w{i}"), Script::Latin)).collect();
    big.prompt_len = n;
    big.layers = vec![layer(14, n)];
    let svg = big.heatmap(14).unwrap().svg().unwrap();
    assert_eq!(cells(&parse_xml(&svg).unwrap()).len(), moe_lens::plot::MAX_ROWS * EXPERTS);
    assert!(svg.contains("showing tokens 0–255"));
    let svg = big.heatmap(14).unwrap().tokens(250..300).svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    assert_eq!(cells(&elems).len(), 50 * EXPERTS);
    assert!(cells(&elems)[0].title.as_deref().unwrap().starts_with("token 250 \"w250\""));
}

#[test]
fn height_grows_with_the_number_of_tokens() {
    let mut big = trace();
    let n = 60;
    big.tokens = (0..n).map(|i| tok(i as u32, &format!("␣w{i}"), Script::Latin)).collect();
    big.prompt_len = 50;
    big.layers = vec![layer(14, n)];
    let svg = big.heatmap(14).unwrap().svg().unwrap();
    let elems = parse_xml(&svg).unwrap();
    let c = cells(&elems);
    assert_eq!(c.len(), n * EXPERTS);
    let h = c[0].num("height");
    assert!((16..=22).contains(&h));
    assert!(elems[0].num("height") >= (n as i64) * h);
}

#[test]
fn evcxr_output_has_html_and_svg_blocks() {
    let t = trace();
    let h = t.heatmap(14).unwrap();
    let out = evcxr_output(&h);
    assert!(out.contains("EVCXR_BEGIN_CONTENT text/html\n<div"));
    assert!(out.contains("EVCXR_BEGIN_CONTENT image/svg+xml\n<svg "));
    assert_eq!(out.matches("EVCXR_BEGIN_CONTENT text/html\n").count(), 1);
    assert_eq!(out.matches("EVCXR_BEGIN_CONTENT image/svg+xml\n").count(), 1);
    assert_eq!(out.matches("EVCXR_BEGIN_CONTENT").count(), out.matches("\nEVCXR_END_CONTENT\n").count());
    // the html block shows the still picture as an <img> (survives an untrusted notebook's
    // sanitiser) and carries the interactive one in a script that swaps it in when trusted
    let html_block =
        out.split("EVCXR_BEGIN_CONTENT text/html\n").nth(1).unwrap().split("\nEVCXR_END_CONTENT").next().unwrap();
    let svg_block =
        out.split("EVCXR_BEGIN_CONTENT image/svg+xml\n").nth(1).unwrap().split("\nEVCXR_END_CONTENT").next().unwrap();
    assert!(!svg_block.contains("moe-lens-cell"));
    parse_xml(svg_block).unwrap();
    let (img, swapped) = notebook_payloads(html_block);
    assert_eq!(img, svg_block, "the <img> is the still picture");
    assert_eq!(swapped, h.to_html().unwrap(), "the script swaps in the interactive picture");
    assert!(swapped.contains("moe-lens-cell") && swapped.chars().any(|c| ('\u{ac00}'..='\u{d7a3}').contains(&c)));
    assert!(!html_block.contains("<svg"), "no inline <svg> for the sanitiser to strip");
    // no content line could be mistaken for the end marker
    assert!(!out.lines().any(|l| l.starts_with("EVCXR_END_CONTENT") && l != "EVCXR_END_CONTENT"));
    // and printing (what a cell's last expression does) does not panic; a table, to keep the
    // test log short (the heatmap's bundle is half a megabyte)
    let small = t.top_k_view(14).unwrap();
    small.evcxr_display();
    Ok::<_, Error>(small).evcxr_display();
}

#[test]
fn top_k_table_html_and_text() {
    let t = trace();
    let table = t.top_k_view("model.layers.14.mlp.gate").unwrap();
    assert_eq!(table.rows().len(), t.tokens.len());
    assert_eq!(table.k(), K);
    let lt = t.layer(14).unwrap();
    assert_eq!(table.rows()[3].experts, lt.top_k[3]);
    assert!(table.rows()[9].generated && !table.rows()[8].generated);
    let html = table.html();
    let elems = parse_xml(&html).unwrap();
    assert_eq!(elems.iter().filter(|e| e.name == "tr").count(), t.tokens.len() + 1);
    assert!(elems.iter().any(|e| e.name == "td" && e.text == "<&>\"'"));
    assert!(elems.iter().any(|e| e.name == "td" && e.text == "こんにちは"));
    // expert cells: one per chosen expert, shaded
    let shaded =
        elems.iter().filter(|e| e.name == "td" && e.attr("style").unwrap_or("").contains("background:rgb(")).count();
    assert_eq!(shaded, t.tokens.len() * K);
    let text = table.to_string();
    assert!(text.contains("녕하세요") && text.contains("Hangul"));
    assert!(text.lines().any(|l| l.trim_start().starts_with("9*")));
    let out = evcxr_output(&table);
    assert!(out.contains("EVCXR_BEGIN_CONTENT text/html\n") && out.contains("EVCXR_BEGIN_CONTENT text/plain\n"));
    assert!(!out.contains("image/svg+xml"));
    let path = example_dir().join("topk.html");
    table.save(&path).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("<meta charset=\"utf-8\">"));
    let t2 = TopKTable::new(&t, 3usize).unwrap();
    assert_eq!(t2.layer_name(), "model.layers.3.mlp.gate");
}

#[test]
fn figures_combine_several_outputs() {
    let t = trace();
    let figs = Figures::column_of([t.heatmap(3).unwrap(), t.heatmap(14).unwrap()]).title("layers 3 & 14");
    assert_eq!(figs.len(), 2);
    let html = figs.html().unwrap();
    assert_eq!(html.matches("<svg ").count(), 2);
    let svg = figs.svg().unwrap().unwrap();
    let elems = parse_xml(&svg).unwrap();
    assert_eq!(elems.iter().filter(|e| e.name == "svg").count(), 3);
    assert!(elems.iter().any(|e| e.name == "text" && e.text == "layers 3 & 14"));
    let out = evcxr_output(&figs);
    assert!(out.contains("EVCXR_BEGIN_CONTENT text/html\n") && out.contains("EVCXR_BEGIN_CONTENT image/svg+xml\n"));
    // mixed with a table: html only
    let mixed = Figures::row().with(t.heatmap(14).unwrap()).with(t.top_k_view(14).unwrap());
    assert!(mixed.svg().is_none());
    let out = evcxr_output(&mixed);
    assert!(out.contains("text/html") && !out.contains("EVCXR_BEGIN_CONTENT image/svg+xml"));
    // in the notebook form, the heatmap is an <img> + swap script, the table plain HTML
    let html_block = out.split("EVCXR_BEGIN_CONTENT text/html\n").nth(1).unwrap();
    assert_eq!(html_block.matches("<img ").count(), 1);
    assert!(html_block.contains("moe-lens-topk"));
    let (_, swapped) = notebook_payloads(html_block);
    assert_eq!(swapped, t.heatmap(14).unwrap().to_html().unwrap());
    let boxed: Box<dyn Figure> = Box::new(t.heatmap(3).unwrap());
    assert!(boxed.to_html().unwrap().contains("<svg "));
    mixed.save(example_dir().join("figures.html")).unwrap();
}

#[test]
fn save_writes_example_svgs() {
    let t = trace();
    let dir = example_dir();
    let h = t.heatmap(14).unwrap();
    h.save(dir.join("heatmap-small.svg")).unwrap();
    let back = std::fs::read_to_string(dir.join("heatmap-small.svg")).unwrap();
    // `.svg` is the clean picture, without the hover layer (issue 16)
    assert_eq!(back, h.svg_still().unwrap());
    // a realistic size: 40 tokens of three languages, 8 of them generated
    let words = [
        "␣The",
        "␣quick",
        "␣brown",
        "␣fox",
        "␣jumps",
        "␣over",
        "␣the",
        "␣lazy",
        "␣dog",
        ".",
        "␣안",
        "녕",
        "하세요",
        "…안…",
        "␣세",
        "계",
        "␣여러분",
        "!",
        "␣こんにちは",
        "世界",
        "。",
        "今日",
        "は",
        "良い",
        "天気",
        "です",
        "ね",
        "↵",
        "␣Mixture",
        "-of",
        "-",
        "Experts",
        "␣route",
        "s",
        "␣tokens",
        "<|endoftext|>",
        "␣to",
        "␣8",
        "␣of",
        "␣64",
    ];
    let scripts = |w: &str| {
        if w.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)) {
            Script::Hangul
        } else if w.chars().any(|c| ('\u{3040}'..='\u{30FF}').contains(&c)) {
            Script::Hiragana
        } else if w.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c)) {
            Script::Han
        } else {
            Script::Latin
        }
    };
    let mut big = trace();
    big.tokens = words.iter().enumerate().map(|(i, w)| tok(1000 + i as u32, w, scripts(w))).collect();
    big.prompt_len = 32;
    big.layers = vec![layer(14, words.len())];
    big.heatmap(14).unwrap().save(dir.join("heatmap.svg")).unwrap();
    big.heatmap(14).unwrap().logits().save(dir.join("heatmap-logits.svg")).unwrap();
    big.top_k_view(14).unwrap().save(dir.join("topk-big.html")).unwrap();
    // a bad path is an Io error, not a panic
    assert!(matches!(h.save(dir.join("no/such/dir/x.svg")), Err(Error::Io { .. })));
}
