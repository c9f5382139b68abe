//! Pictures of a language study: the SVGs are read back with a tiny XML reader and checked against
//! numbers computed here, independently, from the count tables (plain loops over `Counts::topk`).
//!
//! The study is a real scan of 36 sentences of the shipped corpus (12 EN/KO/JA triples) on the test
//! checkpoint `tests/fixtures/olmoe-narrow` (16 layers × 64 experts, top-8, random weights), plus
//! hand-made tables for edge cases. Example SVGs go to `target/plot-examples/` for a look in a
//! browser.

mod common;
use common::xml::{parse_xml, Elem};

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moe_lens::corpus;
use moe_lens::hub;
use moe_lens::lab::DeviceChoice;
use moe_lens::plot::{evcxr_output, EffectiveExpertsPlot, Figure, Figures, LanguageHeatmap, Measure, StudyPlots};
use moe_lens::prelude::*;
use moe_lens::study::{metrics, CompareOptions, Comparison, Counts, CountsJson, ScanExt, ScanOptions, Study, Verdict};
use moe_lens::DType;

const LAYERS: usize = 16;
const EXPERTS: usize = 64;
const K: usize = 8;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 12 EN/KO/JA triples of the shipped corpus, scanned once on the narrow test model.
fn study() -> &'static Study {
    static STUDY: OnceLock<Study> = OnceLock::new();
    STUDY.get_or_init(|| {
        let dir = root().join("tests/fixtures/olmoe-narrow");
        assert!(
            dir.join("tokenizer.json").exists(),
            "run tests/setup-data.sh first (it copies the tokenizer into the fixtures)"
        );
        let files = hub::local_dir(&dir, "olmoe-narrow").unwrap();
        let lens = Lens::from_files(
            files,
            &LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() },
        )
        .unwrap();
        let sentences = corpus::builtin().unwrap()[..36].to_vec();
        let s = lens
            .scan(&sentences, &ScanOptions { batch_size: Some(8), progress: false, ..ScanOptions::default() })
            .unwrap();
        assert_eq!(s.languages(), ["en", "ja", "ko"]);
        s
    })
}

fn comparison() -> &'static Comparison {
    static CMP: OnceLock<Comparison> = OnceLock::new();
    CMP.get_or_init(|| {
        study().compare_with("ko", "en", &CompareOptions { replicates: 200, ..CompareOptions::default() }).unwrap()
    })
}

/// `topk[lang][layer][expert]`, read out of the counts with plain loops.
fn table(c: &Counts) -> BTreeMap<String, Vec<Vec<u64>>> {
    let mut t = BTreeMap::new();
    for (i, lang) in c.languages.iter().enumerate() {
        let mut layers = Vec::new();
        for l in 0..c.layers {
            let mut row = Vec::new();
            for e in 0..c.experts {
                row.push(c.topk[[i, l, e]]);
            }
            layers.push(row);
        }
        t.insert(lang.clone(), layers);
    }
    t
}

fn example_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().map(|p| p.join("plot-examples")).unwrap_or(tmp);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn of_class<'a>(elems: &'a [Elem], class: &str) -> Vec<&'a Elem> {
    elems.iter().filter(|e| e.class() == class).collect()
}

/// Parses and checks the root: one `<svg>` with the figure's class and a positive size.
fn parse_svg(svg: &str, class: &str) -> Vec<Elem> {
    assert!(svg.starts_with("<svg "), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let elems = parse_xml(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}"));
    assert_eq!(elems[0].name, "svg");
    assert_eq!(elems.iter().filter(|e| e.name == "svg").count(), 1);
    assert!(elems[0].class().split(' ').any(|c| c == class), "root class {:?}", elems[0].class());
    assert!(elems[0].num("width") > 100 && elems[0].num("height") > 100);
    assert!(!svg.contains('\u{fffd}'));
    elems
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
        .map(|e| ((e.num("x"), e.num("y"), e.num("width"), e.num("height")), e.attr("fill").unwrap_or("").to_string()))
        .collect()
}

/// Checks every `moe-lens-cell` against the independently computed table: one per language ×
/// expert, the right count and share, a tooltip naming them, and a coloured cell under it.
fn check_cells(
    cells: &[&Elem],
    drawn: &BTreeMap<(i64, i64, i64, i64), String>,
    t: &BTreeMap<String, Vec<Vec<u64>>>,
    layer: usize,
    langs: &[&str],
) {
    assert_eq!(cells.len(), langs.len() * EXPERTS, "one cell per language × expert at layer {layer}");
    let mut seen = HashSet::new();
    for c in cells {
        let lang = c.data("lang").unwrap();
        let e: usize = c.data("expert").unwrap().parse().unwrap();
        // overview cells carry their layer on the panel, and their share only in the tooltip
        let full = c.data("layer").is_some();
        if full {
            assert_eq!(c.data("layer"), Some(layer.to_string().as_str()));
        }
        assert!(langs.contains(&lang));
        assert!(seen.insert((lang.to_string(), e)), "cell {lang} {e} twice");
        let row = &t[lang][layer];
        let sel: u64 = row.iter().sum();
        assert_eq!(c.data("count"), Some(row[e].to_string().as_str()), "{lang} layer {layer} expert {e}");
        let share = row[e] as f64 / sel as f64;
        if full {
            assert!((c.fd("share") - share).abs() < 1e-6, "{lang} {e}: share {} vs {share}", c.fd("share"));
        }
        let tip = c.title.as_deref().unwrap();
        assert!(tip.contains(&format!("layer {layer} · expert {e}\n")), "{tip}");
        assert!(tip.contains(&format!("chosen {} times", row[e])), "{tip}");
        assert!(tip.contains(&format!("{:.2}%", share * 100.0)), "{tip}");
        assert_eq!(c.attr("fill-opacity"), Some("0"));
        let key = (c.num("x"), c.num("y"), c.num("width"), c.num("height"));
        assert!(drawn.contains_key(&key), "no coloured cell under {lang} {e} {key:?}");
    }
}

/// Viridis at the top of the scale (plotters' table), as plotters writes it.
const VIRIDIS_TOP: &str = "#FEE825";

// ------------------------------------------------------------------------------------------------

#[test]
fn language_heatmap_has_one_cell_per_language_and_expert_with_the_right_numbers() {
    let s = study();
    let t = table(&s.counts);
    for layer in [0, 7, 14] {
        let h = s.language_heatmap(layer).unwrap();
        assert_eq!(h.layer(), layer);
        let svg = h.svg().unwrap();
        let elems = parse_svg(&svg, "moe-lens-lang-heatmap");
        let cells = of_class(&elems, "moe-lens-cell");
        check_cells(&cells, &drawn_rects(&elems), &t, layer, &["en", "ja", "ko"]);
        // one row per language, 64 equal columns, row-major
        let xs: HashSet<i64> = cells.iter().map(|c| c.num("x")).collect();
        let ys: HashSet<i64> = cells.iter().map(|c| c.num("y")).collect();
        assert_eq!((xs.len(), ys.len()), (EXPERTS, 3));
        // the largest share gets the top colour of the scale
        let drawn = drawn_rects(&elems);
        let best = cells.iter().max_by(|a, b| a.fd("share").total_cmp(&b.fd("share"))).unwrap();
        let key = (best.num("x"), best.num("y"), best.num("width"), best.num("height"));
        assert_eq!(drawn[&key].to_uppercase(), VIRIDIS_TOP);
        // a label per language with its tooltip, and the language names drawn
        assert_eq!(of_class(&elems, "moe-lens-label").len(), 3);
        let texts: Vec<&str> = elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
        for name in ["English (en)", "Korean (ko)", "Japanese (ja)", "effective", "tokens"] {
            assert!(texts.contains(&name), "{name} not drawn");
        }
        // the effective numbers on the right are those of the metrics
        let m = s.metrics();
        for lang in ["en", "ja", "ko"] {
            let v = format!("{:.1}", m.get(layer, lang).unwrap().effective);
            assert!(texts.contains(&v.as_str()), "effective {v} of {lang} not drawn");
        }
    }
    // by hook name, the same picture
    assert_eq!(
        s.language_heatmap("model.layers.14.mlp.gate").unwrap().svg().unwrap(),
        s.language_heatmap(14).unwrap().svg().unwrap()
    );
}

#[test]
fn language_heatmap_options() {
    let s = study();
    let t = table(&s.counts);
    // a subset of languages, in the order given
    let svg = s.language_heatmap(3).unwrap().languages(["ko", "en"]).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-lang-heatmap");
    let cells = of_class(&elems, "moe-lens-cell");
    check_cells(&cells, &drawn_rects(&elems), &t, 3, &["ko", "en"]);
    assert_eq!(cells[0].data("lang"), Some("ko"));
    assert_eq!(cells[EXPERTS].data("lang"), Some("en"));
    // a fixed scale: nothing reaches the top colour when the scale is far above the data
    let svg = s.language_heatmap(3).unwrap().range(0.0, 10.0).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-lang-heatmap");
    assert!(!drawn_rects(&elems).values().any(|f| f.to_uppercase() == VIRIDIS_TOP));
    // specialization: a cell of an expert nobody chose is grey; others by N(E,L)/N(E)
    let spec = s.language_heatmap(3).unwrap().measure(Measure::Specialization).svg().unwrap();
    let elems = parse_svg(&spec, "moe-lens-lang-heatmap");
    let drawn = drawn_rects(&elems);
    for c in of_class(&elems, "moe-lens-cell") {
        let e: usize = c.data("expert").unwrap().parse().unwrap();
        let total: u64 = t.values().map(|l| l[3][e]).sum();
        let fill = &drawn[&(c.num("x"), c.num("y"), c.num("width"), c.num("height"))];
        if total == 0 {
            assert_eq!(fill.to_uppercase(), "#D0D0D0");
            assert!(c.title.as_deref().unwrap().contains("never chosen"));
        } else {
            assert_ne!(fill.to_uppercase(), "#D0D0D0");
        }
    }
    // a custom title is escaped
    let svg = s.language_heatmap(3).unwrap().title("<Korean & co>").svg().unwrap();
    assert!(svg.contains("&lt;Korean &amp; co&gt;"));
    parse_svg(&svg, "moe-lens-lang-heatmap");
    // still version: same picture, no hover layer
    let still = s.language_heatmap(3).unwrap().svg_still().unwrap();
    let elems = parse_svg(&still, "moe-lens-lang-heatmap");
    assert!(of_class(&elems, "moe-lens-cell").is_empty());
    assert!(!still.contains("<title>"));
}

#[test]
fn overview_has_one_panel_per_layer_on_one_scale() {
    let s = study();
    let t = table(&s.counts);
    let svg = s.layers_overview().unwrap().svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-layers-overview");
    let panels: Vec<(usize, &Elem)> =
        elems.iter().enumerate().filter(|(_, e)| e.name == "g" && e.class() == "moe-lens-panel").collect();
    assert_eq!(panels.len(), LAYERS);
    let drawn = drawn_rects(&elems);
    let mut tops = 0;
    for (layer, (pi, p)) in panels.iter().enumerate() {
        assert_eq!(p.data("layer"), Some(layer.to_string().as_str()));
        let cells: Vec<&Elem> =
            elems.iter().filter(|e| e.parent == Some(*pi) && e.class() == "moe-lens-cell").collect();
        check_cells(&cells, &drawn, &t, layer, &["en", "ja", "ko"]);
        let texts: Vec<&str> = elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
        assert!(texts.contains(&format!("layer {layer}").as_str()));
        tops += cells
            .iter()
            .filter(|c| drawn[&(c.num("x"), c.num("y"), c.num("width"), c.num("height"))].to_uppercase() == VIRIDIS_TOP)
            .count();
    }
    // one scale for all panels: only the overall largest share(s) reach the top colour
    let max = t
        .values()
        .flat_map(|l| l.iter().map(|row| row.iter().copied().max().unwrap() as f64 / row.iter().sum::<u64>() as f64))
        .fold(0.0, f64::max);
    let at_max = t
        .values()
        .flat_map(|l| l.iter().flat_map(|row| row.iter().map(move |&n| n as f64 / row.iter().sum::<u64>() as f64)))
        .filter(|&v| (v - max).abs() < 1e-12)
        .count();
    assert_eq!(tops, at_max);
    // 4 columns × 4 rows of panels
    let label_rects: Vec<&Elem> = of_class(&elems, "moe-lens-label");
    assert_eq!(label_rects.len(), LAYERS);
    let xs: HashSet<i64> = label_rects.iter().map(|e| e.num("x")).collect();
    let ys: HashSet<i64> = label_rects.iter().map(|e| e.num("y")).collect();
    assert_eq!((xs.len(), ys.len()), (4, 4));
    // other column counts
    let svg = s.layers_overview().unwrap().columns(8).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-layers-overview");
    let ys: HashSet<i64> = of_class(&elems, "moe-lens-label").iter().map(|e| e.num("y")).collect();
    assert_eq!(ys.len(), 2);
}

#[test]
fn effective_points_are_the_metrics_values_on_a_linear_axis() {
    let s = study();
    let m = s.metrics();
    let t = table(&s.counts);
    let plot = s.effective_experts_plot().unwrap();
    let svg = plot.svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-effective");
    let points = of_class(&elems, "moe-lens-point");
    assert_eq!(points.len(), 3 * LAYERS);
    assert!(of_class(&elems, "moe-lens-diff").is_empty());
    // value ↔ pixel: one linear map for all points (fit on two, check the rest)
    let (a, b) = (
        points.iter().min_by(|a, b| a.fd("value").total_cmp(&b.fd("value"))).unwrap(),
        points.iter().max_by(|a, b| a.fd("value").total_cmp(&b.fd("value"))).unwrap(),
    );
    let slope = (b.f("cy") - a.f("cy")) / (b.fd("value") - a.fd("value"));
    assert!(slope < 0.0, "larger values are higher up");
    let mut xs_by_layer: BTreeMap<usize, HashSet<i64>> = BTreeMap::new();
    for p in &points {
        let lang = p.data("lang").unwrap();
        let layer: usize = p.data("layer").unwrap().parse().unwrap();
        let v = p.fd("value");
        assert!(
            (v - m.effective(lang)[layer]).abs() < 1e-6,
            "{lang} {layer}: {v} vs metrics {}",
            m.effective(lang)[layer]
        );
        // and the same number computed here from the counts: exp(−Σ p ln p)
        let row = &t[lang][layer];
        let n: u64 = row.iter().sum();
        let h: f64 = -row.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n as f64).map(|p| p * p.ln()).sum::<f64>();
        assert!((v - h.exp()).abs() < 1e-6);
        let expect_cy = a.f("cy") + slope * (v - a.fd("value"));
        assert!((p.f("cy") - expect_cy).abs() <= 1.0, "{lang} {layer}: cy {} vs {expect_cy}", p.f("cy"));
        xs_by_layer.entry(layer).or_default().insert(p.num("cx"));
        assert!(p.title.as_deref().unwrap().contains(&format!("effective number of experts {v:.2}")));
    }
    // x: one position per layer, increasing, equally spaced
    let xs: Vec<i64> = xs_by_layer
        .values()
        .map(|s| {
            assert_eq!(s.len(), 1);
            *s.iter().next().unwrap()
        })
        .collect();
    assert_eq!(xs.len(), LAYERS);
    assert!(xs.windows(3).all(|w| w[1] - w[0] == w[2] - w[1] && w[1] > w[0]));
    // values() gives the same numbers
    assert_eq!(plot.values("ko").unwrap(), m.effective("ko"));
    // x tick labels 0..15 are drawn
    let texts: HashSet<&str> = elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
    for l in 0..LAYERS {
        assert!(texts.contains(l.to_string().as_str()));
    }
}

#[test]
fn comparison_panel_shows_each_layers_difference_and_interval() {
    let s = study();
    let c = comparison();
    let svg = s.effective_experts_plot().unwrap().with_comparison(c).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-effective");
    let diffs = of_class(&elems, "moe-lens-diff");
    assert_eq!(diffs.len(), LAYERS);
    for d in &diffs {
        let layer: usize = d.data("layer").unwrap().parse().unwrap();
        let lc = c.layer(layer).unwrap();
        assert_eq!((d.data("lang"), d.data("vs")), (Some("ko"), Some("en")));
        assert!(
            (d.fd("diff") - lc.diff).abs() < 1e-6
                && (d.fd("low") - lc.ci_low).abs() < 1e-6
                && (d.fd("high") - lc.ci_high).abs() < 1e-6
        );
        assert!(lc.ci_low <= lc.diff + 1e-9 && lc.diff <= lc.ci_high + 1e-9);
        assert_eq!(d.data("verdict"), Some(lc.verdict.as_str()));
        let tip = d.title.as_deref().unwrap();
        assert!(tip.contains(&lc.verdict.sentence("ko")), "{tip}");
        assert!(tip.contains("token-matched"));
        // the hover target spans the interval: taller for wider intervals
        assert!(d.num("height") >= 8);
    }
    let widest =
        diffs.iter().max_by(|a, b| (a.fd("high") - a.fd("low")).total_cmp(&(b.fd("high") - b.fd("low")))).unwrap();
    let narrowest =
        diffs.iter().min_by(|a, b| (a.fd("high") - a.fd("low")).total_cmp(&(b.fd("high") - b.fd("low")))).unwrap();
    assert!(widest.num("height") >= narrowest.num("height"));
    // the zero line and both panels' titles
    let texts: Vec<&str> = elems.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
    assert!(texts.iter().any(|t| t.starts_with("Token-matched difference Korean − English")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("below 0: fewer experts than English")));
    let (f, m, n) = c.tally();
    assert!(texts.iter().any(|t| t.contains(&format!("fewer {f}, more {m}, unclear {n}"))), "{texts:?}");
    // two comparisons side by side
    let ja = s.compare_with("ja", "en", &CompareOptions { replicates: 50, ..CompareOptions::default() }).unwrap();
    let svg = s.effective_experts_plot().unwrap().with_comparison(c).with_comparison(&ja).svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-effective");
    let diffs = of_class(&elems, "moe-lens-diff");
    assert_eq!(diffs.len(), 2 * LAYERS);
    let ko3 = diffs.iter().find(|d| d.data("lang") == Some("ko") && d.data("layer") == Some("3")).unwrap();
    let ja3 = diffs.iter().find(|d| d.data("lang") == Some("ja") && d.data("layer") == Some("3")).unwrap();
    assert_ne!(ko3.num("x"), ja3.num("x"), "the two comparisons sit side by side, not on top of each other");
}

#[test]
fn top_experts_are_each_languages_most_counted() {
    let s = study();
    let t = table(&s.counts);
    let n = 10;
    let top = s.top_experts(14, n).unwrap();
    let svg = top.svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-top-experts");
    let bars = of_class(&elems, "moe-lens-bar");
    let bars_api = top.bars().unwrap();
    assert_eq!(bars.len(), bars_api.len());
    for lang in ["en", "ja", "ko"] {
        let row = &t[lang][14];
        let tokens = s.counts.tokens_of(lang);
        // independently: sort experts by count, ties by number, drop the unused
        let mut want: Vec<usize> = (0..EXPERTS).filter(|&e| row[e] > 0).collect();
        want.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        want.truncate(n);
        let got: Vec<&&Elem> = bars.iter().filter(|b| b.data("lang") == Some(lang)).collect();
        let experts: Vec<usize> = got.iter().map(|b| b.data("expert").unwrap().parse().unwrap()).collect();
        assert_eq!(experts, want, "{lang}");
        for (r, b) in got.iter().enumerate() {
            let e = want[r];
            assert_eq!(b.data("rank"), Some((r + 1).to_string().as_str()));
            assert_eq!(b.data("count"), Some(row[e].to_string().as_str()));
            assert!((b.fd("usage") - row[e] as f64 / tokens as f64).abs() < 1e-6);
            assert!(b.title.as_deref().unwrap().contains(&format!("expert {e} (rank {})", r + 1)));
        }
        // bars are drawn longer for larger counts: the drawn rect widths follow the usage
        let api: Vec<_> = bars_api.iter().filter(|b| b.lang == lang).collect();
        assert_eq!(api.iter().map(|b| b.expert).collect::<Vec<_>>(), want);
    }
    // a bar per row is drawn in the language's colour (Korean vermillion)
    let drawn = drawn_rects(&elems);
    assert!(
        drawn.values().filter(|f| f.to_uppercase() == "#D55E00").count()
            >= bars_api.iter().filter(|b| b.lang == "ko").count()
    );
}

#[test]
fn expert_table_counts_how_often_each_expert_serves_each_language() {
    let s = study();
    let t = table(&s.counts);
    let tab = s.expert_table(14, 12).unwrap();
    let html = tab.to_html().unwrap();
    assert!(html.contains("moe-lens-expert-table"));
    assert_eq!(html.matches("<tr>").count(), 1 + 12);
    let experts = tab.experts().unwrap();
    // ordered by the average over the languages of the expert's share of the language's selections
    let mean =
        |e: usize| -> f64 { t.values().map(|l| l[14][e] as f64 / l[14].iter().sum::<u64>() as f64).sum::<f64>() / 3.0 };
    assert!(experts.windows(2).all(|w| mean(w[0]) >= mean(w[1]) - 1e-12));
    let mut want: Vec<usize> = (0..EXPERTS).collect();
    want.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)).then(a.cmp(&b)));
    assert_eq!(experts, want[..12]);
    for &e in &experts {
        for lang in ["en", "ja", "ko"] {
            let needle = format!("data-lang=\"{lang}\" data-expert=\"{e}\" data-count=\"{}\"", t[lang][14][e]);
            assert!(html.contains(&needle), "{needle}");
        }
    }
    let text = tab.to_string();
    assert_eq!(text.lines().count(), 1 + 1 + 12 + 1, "{text}");
    assert_eq!(tab.to_text().unwrap(), text);
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    let s = study();
    // unknown layers
    assert!(matches!(s.language_heatmap(16), Err(Error::UnknownLayer { layers: 16, .. })));
    assert!(matches!(s.language_heatmap("model.layers.99.mlp.gate"), Err(Error::UnknownLayer { .. })));
    assert!(matches!(s.top_experts(40, 5), Err(Error::UnknownLayer { .. })));
    assert!(matches!(s.expert_table(-1, 5), Err(Error::UnknownLayer { .. })));
    // n out of range
    assert!(matches!(s.top_experts(3, 0), Err(Error::InvalidArgument { what: "n", .. })));
    assert!(matches!(s.top_experts(3, 65), Err(Error::InvalidArgument { what: "n", .. })));
    assert!(matches!(s.expert_table(3, 0), Err(Error::InvalidArgument { what: "n", .. })));
    // unknown or repeated languages, bad ranges, zero columns: errors when drawing
    let e = s.language_heatmap(3).unwrap().languages(["ko", "zh"]).svg().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { what: "language", .. }));
    assert!(e.to_string().contains("\"zh\"") && e.to_string().contains("en, ja, ko"), "{e}");
    assert!(s.language_heatmap(3).unwrap().languages(["ko", "ko"]).svg().is_err());
    assert!(s.language_heatmap(3).unwrap().languages(Vec::<String>::new()).svg().is_err());
    assert!(s.top_experts(3, 5).unwrap().languages(["xx"]).bars().is_err());
    assert!(s.effective_experts_plot().unwrap().values("xx").is_err());
    for (lo, hi) in [(0.5, 0.1), (f64::NAN, 1.0), (0.0, f64::INFINITY), (0.2, 0.2)] {
        assert!(matches!(
            s.language_heatmap(3).unwrap().range(lo, hi).svg(),
            Err(Error::InvalidArgument { what: "range", .. })
        ));
        assert!(s.layers_overview().unwrap().range(lo, hi).svg().is_err());
    }
    assert!(matches!(
        s.layers_overview().unwrap().columns(0).svg(),
        Err(Error::InvalidArgument { what: "columns", .. })
    ));
    // a comparison of another study, or of languages it does not have
    let mut other = s.clone();
    other.routes.truncate(30);
    other.counts = Counts::from_routes(&other.counts.model, LAYERS, EXPERTS, K, &other.routes).unwrap();
    let foreign =
        other.compare_with("ko", "en", &CompareOptions { replicates: 20, ..CompareOptions::default() }).unwrap();
    let e = s.effective_experts_plot().unwrap().with_comparison(&foreign).svg().unwrap_err();
    assert!(e.to_string().contains("another scan"), "{e}");
    let mut renamed = comparison().clone();
    renamed.a = "zh".into();
    assert!(s.effective_experts_plot().unwrap().with_comparison(&renamed).svg().is_err());
    let mut deep = comparison().clone();
    deep.layers[0].layer = 99;
    assert!(matches!(
        s.effective_experts_plot().unwrap().with_comparison(&deep).svg(),
        Err(Error::UnknownLayer { .. })
    ));
    let mut nan = comparison().clone();
    nan.layers[2].ci_high = f64::NAN;
    assert!(s.effective_experts_plot().unwrap().with_comparison(&nan).svg().is_err());
    // a failing figure shows a message in the notebook, no panic
    let out = evcxr_output(&s.language_heatmap(3).unwrap().languages(["zh"]));
    assert!(
        out.starts_with("EVCXR_BEGIN_CONTENT text/plain\nerror: cannot draw this figure: invalid language"),
        "{out}"
    );
}

/// Hand-made tables: an empty study, broken tables, one expert only, a language without tokens.
fn counts_json(tokens: &[(&str, u64)], fill: impl Fn(&str, usize, usize) -> u64, layers: usize) -> Counts {
    let mut j = CountsJson {
        model: "hand-made".into(),
        k: K,
        experts: EXPERTS,
        layers,
        tokens: BTreeMap::new(),
        topk_counts: BTreeMap::new(),
        top1_counts: BTreeMap::new(),
    };
    for &(l, n) in tokens {
        j.tokens.insert(l.into(), n);
        let t: Vec<Vec<u64>> = (0..layers).map(|layer| (0..EXPERTS).map(|e| fill(l, layer, e)).collect()).collect();
        j.topk_counts.insert(l.into(), t.clone());
        j.top1_counts.insert(l.into(), t);
    }
    Counts::from_json(&j).unwrap()
}

#[test]
fn edge_cases_of_hand_made_tables() {
    // empty
    let empty = Study::new("empty", LAYERS, EXPERTS, K, Default::default());
    for r in [
        empty.language_heatmap(0).map(|_| ()),
        empty.effective_experts_plot().map(|_| ()),
        empty.top_experts(0, 5).map(|_| ()),
        empty.expert_table(0, 5).map(|_| ()),
        empty.layers_overview().map(|_| ()),
    ] {
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { what: "study", .. }) && e.to_string().contains("no counted tokens"),
            "{e}"
        );
    }
    // tables that do not match their shape
    let mut broken = counts_json(&[("en", 1)], |_, _, e| u64::from(e < K), 2);
    broken.layers = 3;
    assert!(LanguageHeatmap::new(&broken, 0).is_err());
    let mut broken = counts_json(&[("en", 1)], |_, _, e| u64::from(e < K), 2);
    broken.tokens.push(5);
    assert!(EffectiveExpertsPlot::new(&broken).is_err());
    // every token of "aa" sent to experts 0..8, "bb" to 8..16, "zz" counted but without tokens:
    // shares 1/8, effective number 8, specialization 1; zz's row is grey (no selections)
    let c = counts_json(
        &[("aa", 10), ("bb", 5), ("zz", 0)],
        |l, _, e| match l {
            "aa" if e < 8 => 10,
            "bb" if (8..16).contains(&e) => 5,
            _ => 0,
        },
        2,
    );
    let h = c.language_heatmap(1).unwrap();
    let svg = h.svg().unwrap();
    let elems = parse_svg(&svg, "moe-lens-lang-heatmap");
    let cells = of_class(&elems, "moe-lens-cell");
    assert_eq!(cells.len(), 3 * EXPERTS);
    for cell in &cells {
        let e: usize = cell.data("expert").unwrap().parse().unwrap();
        match cell.data("lang").unwrap() {
            "aa" => assert_eq!(cell.fd("share"), if e < 8 { 0.125 } else { 0.0 }),
            "bb" => assert_eq!(cell.fd("share"), if (8..16).contains(&e) { 0.125 } else { 0.0 }),
            "zz" => assert_eq!(cell.data("share"), Some("")),
            other => panic!("{other}"),
        }
    }
    let plot = c.effective_experts_plot().unwrap();
    assert!((plot.values("aa").unwrap()[1] - 8.0).abs() < 1e-9);
    assert_eq!(plot.values("zz").unwrap()[0], 0.0);
    parse_svg(&plot.svg().unwrap(), "moe-lens-effective");
    let spec = c.language_heatmap(0).unwrap().measure(Measure::Specialization).languages(["aa"]).svg().unwrap();
    assert!(spec.contains("specialization 1.000"));
    let top = c.top_experts(0, 10).unwrap();
    let bars = top.bars().unwrap();
    assert_eq!(bars.iter().filter(|b| b.lang == "aa").count(), 8, "only the 8 chosen experts");
    assert!(bars.iter().all(|b| b.lang != "zz"));
    assert!(top.svg().unwrap().contains("(only 8 experts chosen)"));
    parse_svg(&c.layers_overview().unwrap().svg().unwrap(), "moe-lens-layers-overview");
    // five languages: the panels of the overview grow to fit their headers and never overlap
    let five = counts_json(
        &[("common", 9), ("en", 9), ("ja", 9), ("ko", 9), ("mixed", 9)],
        |_, l, e| if (e + l) % 8 == 0 { 9 } else { 0 },
        4,
    );
    let elems = parse_svg(&five.layers_overview().unwrap().svg().unwrap(), "moe-lens-layers-overview");
    let heads = of_class(&elems, "moe-lens-label");
    assert_eq!(heads.len(), 4);
    for pair in heads.windows(2) {
        if pair[0].num("y") == pair[1].num("y") {
            assert!(pair[0].num("x") + pair[0].num("width") < pair[1].num("x"), "panels overlap");
        }
    }
    let texts: Vec<&Elem> = elems.iter().filter(|e| e.name == "text" && e.text.trim().starts_with("mixed ")).collect();
    assert_eq!(texts.len(), 4, "each panel's header has every language's number");
    for (t, head) in texts.iter().zip(&heads) {
        // the last number of a header ends inside its panel (text ≈ 0.62 em per Latin character)
        let end = t.num("x") + (t.text.trim().chars().count() as f64 * 0.62 * 10.0).ceil() as i64;
        assert!(
            end <= head.num("x") + head.num("width"),
            "header runs out of its panel: {end} > {}",
            head.num("x") + head.num("width")
        );
    }
    // a language tag with XML specials (not a valid tag, but counts.json could say so)
    let odd = counts_json(&[("<b>&", 3)], |_, _, e| if e < K { 3 } else { 0 }, 1);
    for svg in [
        odd.language_heatmap(0).unwrap().svg().unwrap(),
        odd.layers_overview().unwrap().svg().unwrap(),
        odd.effective_experts_plot().unwrap().svg().unwrap(),
        odd.top_experts(0, 3).unwrap().svg().unwrap(),
    ] {
        parse_xml(&svg).unwrap();
        assert!(svg.contains("&lt;b&gt;&amp;"));
    }
    parse_xml(&format!("<div>{}</div>", odd.expert_table(0, 3).unwrap().to_html().unwrap())).unwrap();
}

#[test]
fn figures_display_in_a_notebook_and_save() {
    let s = study();
    let dir = example_dir();
    let c = comparison();
    for (name, fig) in [
        ("lang-heatmap.svg", Box::new(s.language_heatmap(14).unwrap()) as Box<dyn Figure>),
        ("layers-overview.svg", Box::new(s.layers_overview().unwrap())),
        ("effective.svg", Box::new(s.effective_experts_plot().unwrap())),
        ("effective-compare.svg", Box::new(s.effective_experts_plot().unwrap().with_comparison(c))),
        ("top-experts.svg", Box::new(s.top_experts(14, 10).unwrap())),
    ] {
        let out = evcxr_output(&fig);
        assert!(out.starts_with("EVCXR_BEGIN_CONTENT text/html\n<div class=\"moe-lens-fig\""), "{name}");
        assert!(
            out.contains("<img alt=\"moe-lens figure\"") && out.contains("<script>"),
            "{name}: still <img> plus swap script"
        );
        assert!(out.contains("EVCXR_BEGIN_CONTENT image/svg+xml\n<svg "), "{name}");
        assert!(out.contains("EVCXR_BEGIN_CONTENT text/plain\n"), "{name}");
        let still = fig.to_still_svg().unwrap().unwrap();
        assert!(!still.contains("<title>"), "{name}: the still picture has no hover layer");
        assert!(fig.to_html().unwrap().contains("<title>"), "{name}: the inline picture has tooltips");
    }
    // save("….svg") writes the clean picture, without the hover layer (issue 16)
    let h = s.language_heatmap(14).unwrap();
    h.save(dir.join("lang-heatmap.svg")).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("lang-heatmap.svg")).unwrap(), h.svg_still().unwrap());
    assert!(matches!(h.save(dir.join("no/such/dir/x.svg")), Err(Error::Io { .. })));
    s.effective_experts_plot().unwrap().save(dir.join("effective.svg")).unwrap();
    s.effective_experts_plot().unwrap().with_comparison(c).save(dir.join("effective-compare.svg")).unwrap();
    s.layers_overview().unwrap().save(dir.join("layers-overview.svg")).unwrap();
    s.top_experts(14, 10).unwrap().save(dir.join("top-experts.svg")).unwrap();
    // a table shows as HTML and text only
    let out = evcxr_output(&s.expert_table(14, 8).unwrap());
    assert!(out.contains("text/html") && !out.contains("image/svg+xml") && out.contains("text/plain"));
    // combined with Figures
    let both = Figures::column().with(s.language_heatmap(0).unwrap()).with(s.language_heatmap(15).unwrap());
    let svg = both.svg().unwrap().unwrap();
    assert_eq!(
        parse_xml(&svg).unwrap().iter().filter(|e| e.class() == "moe-lens-cell").count(),
        0,
        "the combined still SVG has no hover layer"
    );
    both.save(dir.join("lang-heatmaps.html")).unwrap();
    // text versions
    let text = s.effective_experts_plot().unwrap().with_comparison(c).to_text().unwrap();
    assert_eq!(text.lines().count(), 2 + LAYERS, "{text}");
    assert!(s.top_experts(14, 3).unwrap().to_text().unwrap().lines().count() == 4);
    // the verdicts are one of the three kinds
    assert!(c.layers.iter().all(|l| matches!(l.verdict, Verdict::Fewer | Verdict::More | Verdict::NoClearDifference)));
    // metrics still agree with the counts' sums
    s.counts.check_sums().unwrap();
    let _ = metrics::effective_number(&[1, 1]);
}
