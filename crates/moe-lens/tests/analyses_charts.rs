//! Pictures of the routing analyses (the co-activation heatmap and the consecutive-token plot): the
//! SVGs are read back with a tiny XML reader and the drawn numbers checked against the
//! [`RoutingAnalyses`] values (which `tests/analyses.rs` checks against the NumPy reference), the
//! random router's values against their formulas 1/E and k²/E, the busiest experts against a plain
//! sort of the diagonal done here, and the points' positions against a linear axis.
//!
//! The scan: 36 sentences of the shipped corpus (12 EN/KO/JA triples) on the test checkpoint
//! `tests/fixtures/olmoe-narrow` (16 layers × 64 experts, top-8, random weights).

mod common;
use common::xml::{parse_xml, Elem};

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::DType;
use moe_lens::corpus;
use moe_lens::hub;
use moe_lens::lab::{DeviceChoice, Lens, LoadOptions};
use moe_lens::plot::{evcxr_output, AnalysesPlots, Figure};
use moe_lens::study::analyses::RoutingAnalyses;
use moe_lens::study::{ScanExt, ScanOptions, Study};
use moe_lens::Error;

const LAYERS: usize = 16;
const EXPERTS: usize = 64;
const K: usize = 8;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn study() -> &'static Study {
    static STUDY: OnceLock<Study> = OnceLock::new();
    STUDY.get_or_init(|| {
        let dir = root().join("tests/fixtures/olmoe-narrow");
        assert!(dir.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
        let files = hub::local_dir(&dir, "olmoe-narrow").unwrap();
        let lens = Lens::from_files(
            files,
            &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
        )
        .unwrap();
        let sentences = corpus::builtin().unwrap()[..36].to_vec();
        lens.scan(&sentences, &ScanOptions { batch_size: Some(8), progress: false, ..ScanOptions::default() }).unwrap()
    })
}

fn analyses() -> &'static RoutingAnalyses {
    static A: OnceLock<RoutingAnalyses> = OnceLock::new();
    A.get_or_init(|| study().analyses().unwrap())
}

fn parse_svg(svg: &str, class: &str) -> Vec<Elem> {
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    let elems = parse_xml(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}"));
    assert_eq!(elems.iter().filter(|e| e.name == "svg").count(), 1);
    assert!(elems[0].class().split(' ').any(|c| c == class), "root class {:?}", elems[0].class());
    assert!(elems[0].num("width") > 100 && elems[0].num("height") > 100);
    assert!(!svg.contains('\u{fffd}'));
    elems
}

fn of_class<'a>(elems: &'a [Elem], class: &str) -> Vec<&'a Elem> {
    elems.iter().filter(|e| e.class() == class).collect()
}

/// The drawn (opaque, unstroked) rectangles, by position and size, with their fill.
fn drawn_rects(elems: &[Elem]) -> BTreeMap<(i64, i64, i64, i64), String> {
    elems
        .iter()
        .filter(|e| {
            e.name == "rect"
                && e.attr("class").is_none()
                && e.attr("stroke") == Some("none")
                && e.attr("fill") != Some("none")
        })
        .map(|e| {
            ((e.num("x"), e.num("y"), e.num("width"), e.num("height")), e.attr("fill").unwrap_or("").to_uppercase())
        })
        .collect()
}

fn texts(elems: &[Elem]) -> Vec<&str> {
    elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect()
}

/// Viridis at the top of the scale (plotters' table), and the chart's ink (the diagonal).
const VIRIDIS_TOP: &str = "#FEE825";
const INK: &str = "#222222";

fn key(e: &Elem) -> (i64, i64, i64, i64) {
    (e.num("x"), e.num("y"), e.num("width"), e.num("height"))
}

/// Every cell's count and share are the analyses', the diagonal is dark, the largest off-diagonal
/// share gets the top colour; one cell per pair of the experts shown.
fn check_heatmap(svg: &str, a: &RoutingAnalyses, layer: usize, shown: &[usize]) {
    let elems = parse_svg(svg, "moe-lens-coactivation");
    let cells = of_class(&elems, "moe-lens-cell");
    assert_eq!(cells.len(), shown.len() * shown.len());
    let counts = a.coactivation(layer).unwrap();
    let shares = a.coactivation_shares(layer).unwrap();
    let drawn = drawn_rects(&elems);
    let mut seen = HashSet::new();
    for c in &cells {
        let i: usize = c.data("i").unwrap().parse().unwrap();
        let j: usize = c.data("j").unwrap().parse().unwrap();
        assert!(shown.contains(&i) && shown.contains(&j));
        assert!(seen.insert((i, j)));
        assert_eq!(c.data("layer"), Some(layer.to_string().as_str()));
        assert_eq!(c.data("count"), Some(counts[i][j].to_string().as_str()), "layer {layer} {i},{j}");
        assert!((c.fd("share") - shares[i][j]).abs() < 1e-6, "{i},{j}: {} vs {}", c.fd("share"), shares[i][j]);
        let tip = c.title.as_deref().unwrap();
        if i == j {
            assert!(tip.contains(&format!("chosen by {} of", counts[i][i])), "{tip}");
            assert_eq!(drawn[&key(c)], INK, "the diagonal is marked dark");
        } else {
            assert!(tip.contains(&format!("{} of expert {i}'s {} tokens", counts[i][j], counts[i][i])), "{tip}");
            assert!(tip.contains(&format!("{:.2}%", shares[i][j] * 100.0)), "{tip}");
            assert!(drawn.contains_key(&key(c)), "no coloured cell under {i},{j}");
        }
    }
    // the rows are the experts shown, in order, on a square grid
    let xs: HashSet<i64> = cells.iter().map(|c| c.num("x")).collect();
    let ys: HashSet<i64> = cells.iter().map(|c| c.num("y")).collect();
    assert_eq!((xs.len(), ys.len()), (shown.len(), shown.len()));
    let best = cells
        .iter()
        .filter(|c| c.data("i") != c.data("j"))
        .max_by(|x, y| x.fd("share").total_cmp(&y.fd("share")))
        .unwrap();
    assert_eq!(drawn[&key(best)], VIRIDIS_TOP);
    // the random router's share (k-1)/(E-1) is marked on the colour bar when inside it
    let t = texts(&elems);
    let random = format!("random router {:.1}%", (K - 1) as f64 / (EXPERTS - 1) as f64 * 100.0);
    if best.fd("share") > (K - 1) as f64 / (EXPERTS - 1) as f64 {
        assert!(t.contains(&random.as_str()), "{random} not drawn");
    }
}

#[test]
fn coactivation_heatmap_draws_the_analyses_counts_and_shares() {
    let a = analyses();
    assert_eq!((a.layers, a.experts, a.k), (LAYERS, EXPERTS, K));
    for layer in [0, 14] {
        let h = a.coactivation_heatmap(layer).unwrap();
        assert_eq!(h.layer(), layer);
        let all: Vec<usize> = (0..EXPERTS).collect();
        check_heatmap(&h.svg().unwrap(), a, layer, &all);
    }
    // by hook name, and from the study, the same picture
    let by_name = a.coactivation_heatmap("model.layers.14.mlp.gate").unwrap().svg().unwrap();
    assert_eq!(by_name, a.coactivation_heatmap(14).unwrap().svg().unwrap());
    assert_eq!(study().coactivation_heatmap(14).unwrap().svg().unwrap(), by_name);
}

#[test]
fn coactivation_heatmap_top_keeps_the_busiest_experts() {
    let a = analyses();
    let layer = 14;
    // the busiest experts by their own count (the diagonal), ties to the smaller id: a plain sort
    let counts = a.coactivation(layer).unwrap();
    let mut by: Vec<(u64, usize)> = (0..EXPERTS).map(|e| (counts[e][e], e)).collect();
    by.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut want: Vec<usize> = by.iter().take(12).map(|x| x.1).collect();
    want.sort_unstable();
    let h = a.coactivation_heatmap(layer).unwrap().top(12);
    assert_eq!(h.experts_shown().unwrap(), want);
    let svg = h.svg().unwrap();
    check_heatmap(&svg, a, layer, &want);
    // every expert shown is labelled (cells are wide enough for all labels), twice: row and column
    let elems = parse_svg(&svg, "moe-lens-coactivation");
    let t = texts(&elems);
    for e in &want {
        assert_eq!(t.iter().filter(|x| **x == e.to_string()).count(), 2, "label of expert {e}");
    }
    assert!(t.iter().any(|x| x.contains("the 12 busiest of 64 experts")));
    // more than there are: all of them
    assert_eq!(a.coactivation_heatmap(layer).unwrap().top(500).experts_shown().unwrap().len(), EXPERTS);
    // the still picture has no hover layer; a title is kept
    let still = a.coactivation_heatmap(layer).unwrap().top(12).title("Who works with whom").svg_still().unwrap();
    assert!(!still.contains("<title>") && still.contains("Who works with whom"));
}

#[test]
fn consecutive_plot_draws_each_languages_rates_and_the_random_router() {
    let a = analyses();
    let p = a.consecutive_plot().unwrap();
    let svg = p.svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-consecutive");
    let points = of_class(&elems, "moe-lens-point");
    assert_eq!(points.len(), 3 * LAYERS * 2, "one point per language, layer and panel");
    // the random router: 1/E (as %) and k²/E, one dashed line per panel
    let random = of_class(&elems, "moe-lens-random");
    assert_eq!(random.len(), 2);
    let want_random = [("top1_same", 100.0 / EXPERTS as f64), ("mean_shared", (K * K) as f64 / EXPERTS as f64)];
    for (measure, v) in want_random {
        let r = random.iter().find(|r| r.data("measure") == Some(measure)).unwrap();
        assert!((r.fd("value") - v).abs() < 1e-6, "{measure}: {} vs {v}", r.fd("value"));
    }
    for lang in ["en", "ko", "ja"] {
        let rates = a.consecutive(lang).unwrap();
        for (layer, c) in rates.iter().enumerate() {
            for (measure, v) in [("top1_same", c.top1_same * 100.0), ("mean_shared", c.mean_shared)] {
                let pt = points
                    .iter()
                    .find(|p| {
                        p.data("lang") == Some(lang)
                            && p.data("layer") == Some(layer.to_string().as_str())
                            && p.data("measure") == Some(measure)
                    })
                    .unwrap_or_else(|| panic!("no point {lang} {layer} {measure}"));
                assert!((pt.fd("value") - v).abs() < 1e-6, "{lang} {layer} {measure}: {} vs {v}", pt.fd("value"));
                let tip = pt.title.as_deref().unwrap();
                assert!(tip.contains(&format!("{} neighbouring token pairs", c.pairs)), "{tip}");
                assert!(tip.contains(&format!("{:.2}%", c.top1_in_next_top2 * 100.0)), "{tip}");
            }
        }
    }
    // each panel's axis is linear: every point (and the random line) sits on y = a + b·value
    for (measure, rv) in want_random {
        let pts: Vec<(f64, f64)> =
            points.iter().filter(|p| p.data("measure") == Some(measure)).map(|p| (p.fd("value"), p.f("cy"))).collect();
        let (lo, hi) = (
            pts.iter().copied().min_by(|x, y| x.0.total_cmp(&y.0)).unwrap(),
            pts.iter().copied().max_by(|x, y| x.0.total_cmp(&y.0)).unwrap(),
        );
        assert!(hi.0 > lo.0, "{measure}: the values differ");
        let slope = (hi.1 - lo.1) / (hi.0 - lo.0);
        assert!(slope < 0.0, "larger values are higher up");
        for &(v, y) in &pts {
            assert!((lo.1 + slope * (v - lo.0) - y).abs() <= 1.5, "{measure}: {v} at y {y}");
        }
        let r = random.iter().find(|r| r.data("measure") == Some(measure)).unwrap();
        let ry = r.f("y") + r.f("height") / 2.0;
        assert!((lo.1 + slope * (rv - lo.0) - ry).abs() <= 1.5, "{measure}: random router at y {ry}");
    }
    // the x position is the layer
    let xs: Vec<f64> = (0..LAYERS)
        .map(|l| points.iter().find(|p| p.data("layer") == Some(l.to_string().as_str())).unwrap().f("cx"))
        .collect();
    assert!(xs.windows(2).all(|w| w[1] > w[0]));
    let t = texts(&elems);
    for name in ["English (en)", "Korean (ko)", "Japanese (ja)", "random router", "layer"] {
        assert!(t.contains(&name), "{name} not drawn");
    }
    // from the study, the same picture
    assert_eq!(study().consecutive_plot().unwrap().svg().unwrap(), svg);
}

#[test]
fn consecutive_plot_options_and_errors() {
    let a = analyses();
    let svg = a.consecutive_plot().unwrap().languages(["ko"]).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-consecutive");
    let points = of_class(&elems, "moe-lens-point");
    assert_eq!(points.len(), LAYERS * 2);
    assert!(points.iter().all(|p| p.data("lang") == Some("ko")));
    let err = a.consecutive_plot().unwrap().languages(["xx"]).svg().unwrap_err().to_string();
    assert!(err.contains("\"xx\"") && err.contains("en"), "{err}");
    assert!(a.consecutive_plot().unwrap().languages(Vec::<String>::new()).svg().is_err());
    // heatmap errors: an unknown layer, top(0), an empty analyses
    assert!(matches!(a.coactivation_heatmap(16), Err(Error::UnknownLayer { .. })));
    assert!(a.coactivation_heatmap(0).unwrap().top(0).svg().is_err());
    let empty = RoutingAnalyses::new("empty", 2, 4, 2);
    assert!(empty.coactivation_heatmap(0).is_err());
    assert!(empty.consecutive_plot().is_err());
}

#[test]
fn analyses_figures_display_in_a_notebook_and_save() {
    let a = analyses();
    let dir = {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let d = tmp.parent().map(|p| p.join("plot-examples")).unwrap_or(tmp);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    for (name, fig) in [
        ("coactivation.svg", Box::new(a.coactivation_heatmap(14).unwrap()) as Box<dyn Figure>),
        ("coactivation-top16.svg", Box::new(a.coactivation_heatmap(14).unwrap().top(16))),
        ("consecutive.svg", Box::new(a.consecutive_plot().unwrap())),
    ] {
        let out = evcxr_output(&fig);
        assert!(out.contains("EVCXR_BEGIN_CONTENT text/html\n"), "{name}");
        assert!(out.contains("EVCXR_BEGIN_CONTENT image/svg+xml\n<svg "), "{name}");
        assert!(out.contains("EVCXR_BEGIN_CONTENT text/plain\n"), "{name}");
        assert!(!fig.to_still_svg().unwrap().unwrap().contains("<title>"), "{name}");
        std::fs::write(dir.join(name), fig.to_still_svg().unwrap().unwrap()).unwrap();
    }
    let text = a.consecutive_plot().unwrap().to_text().unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("random router"));
    let text = a.coactivation_heatmap(14).unwrap().to_text().unwrap();
    assert!(text.starts_with("Layer 14: co-activation"), "{text}");
    a.consecutive_plot().unwrap().save(dir.join("consecutive-saved.svg")).unwrap();
}
