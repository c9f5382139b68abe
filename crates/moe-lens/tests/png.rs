//! PNG export (the `png` feature, issue 16): figures rendered in Rust by resvg with the system's
//! fonts, read back with the `png` crate: size and DPI as asked, not blank, and Hangul and kana
//! drawn as glyphs where the labels are (not as empty "tofu" boxes). Needs a CJK font
//! (Debian: fonts-noto-cjk; `fc-list :lang=ko`).
#![cfg(feature = "png")]

mod common;
use common::xml::parse_xml;

use moe_lens::plot::{explore_pair, PngOptions, TracePlots};
use moe_lens::prelude::*;
use moe_lens::spy::RoutingCache;
use moe_lens::trace::LayerTrace;

fn tok(id: u32, label: &str, script: Script) -> Token {
    Token { id, label: label.to_string(), start: 0, end: 0, script }
}

/// Four tokens; the labels under test: "안녕" (Hangul), "こんにちは" (kana), and a private-use
/// character no font has (drawn as the missing-glyph box), for comparison.
fn trace() -> Trace {
    let tokens = vec![
        tok(1, "␣The", Script::Latin),
        tok(2, "안녕", Script::Hangul),
        tok(3, "こんにちは", Script::Hiragana),
        tok(4, "\u{E000}\u{E000}", Script::Unknown),
    ];
    let n = tokens.len();
    let layers = (0..16)
        .map(|l| {
            let logits: Vec<Vec<f32>> =
                (0..n).map(|t| (0..64).map(|e| ((e * 7 + t * 13 + l) % 17) as f32 / 4.0 - 2.0).collect()).collect();
            let probs: Vec<Vec<f32>> = logits
                .iter()
                .map(|r| {
                    let s: f32 = r.iter().map(|x| x.exp()).sum();
                    r.iter().map(|x| x.exp() / s).collect()
                })
                .collect();
            let top_k: Vec<Vec<u32>> = probs
                .iter()
                .map(|r| {
                    let mut o: Vec<u32> = (0..64).collect();
                    o.sort_by(|&a, &b| r[b as usize].total_cmp(&r[a as usize]).then(a.cmp(&b)));
                    o[..8].to_vec()
                })
                .collect();
            let weights = top_k.iter().zip(&probs).map(|(k, p)| k.iter().map(|&e| p[e as usize]).collect()).collect();
            LayerTrace { name: format!("model.layers.{l}.mlp.gate"), logits, probs, top_k, weights }
        })
        .collect();
    Trace {
        model: "synthetic".into(),
        text: "The 안녕 こんにちは".into(),
        tokens,
        prompt_len: n,
        steps: vec![(Step::Prefill, 0..n)],
        layers,
        cache: RoutingCache::new(),
        model_layers: 16,
        interventions: Default::default(),
    }
}

struct Image {
    w: usize,
    h: usize,
    rgba: Vec<u8>,
    ppm: Option<u32>,
}

fn read_png(path: &std::path::Path) -> Image {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => buf[..info.buffer_size()].chunks(3).flat_map(|c| [c[0], c[1], c[2], 255]).collect(),
        other => panic!("unexpected colour type {other:?}"),
    };
    let ppm = reader.info().pixel_dims.map(|d| d.xppu);
    Image { w: info.width as usize, h: info.height as usize, rgba, ppm }
}

impl Image {
    /// Dark pixels (luminance < 128) inside the rectangle.
    fn ink(&self, x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<bool> {
        let mut out = Vec::new();
        for y in (y0.max(0.0) as usize)..(y1.min(self.h as f64) as usize) {
            for x in (x0.max(0.0) as usize)..(x1.min(self.w as f64) as usize) {
                let p = &self.rgba[(y * self.w + x) * 4..][..3];
                out.push((0.2126 * p[0] as f64 + 0.7152 * p[1] as f64 + 0.0722 * p[2] as f64) < 128.0);
            }
        }
        out
    }
}

fn scratch() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-png-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The (x, y) of the `<text>` element whose text is `label` (the table's label cells start there;
/// y is the baseline).
fn text_at(svg: &str, label: &str) -> (f64, f64) {
    let elems = parse_xml(svg).unwrap();
    let e = elems.iter().find(|e| e.name == "text" && e.text == label).unwrap_or_else(|| panic!("no text {label}"));
    (e.f("x"), e.f("y"))
}

#[test]
fn table_png_has_the_size_dpi_and_cjk_glyphs() {
    let t = trace();
    let table = t.top_k_view(3).unwrap();
    let svg = table.svg();
    let svg_w: f64 = parse_xml(&svg).unwrap()[0].f("width");
    let svg_h: f64 = parse_xml(&svg).unwrap()[0].f("height");
    let path = scratch().join("table.png");
    table.save_png(&path, &PngOptions { width: Some(1500), dpi: 150.0 }).unwrap();
    let img = read_png(&path);
    assert_eq!(img.w, 1500);
    assert_eq!(img.h, (svg_h * 1500.0 / svg_w).ceil() as usize);
    assert_eq!(img.ppm, Some((150.0f64 / 0.0254).round() as u32), "150 dpi in the pHYs chunk");
    let all = img.ink(0.0, 0.0, img.w as f64, img.h as f64);
    let dark = all.iter().filter(|&&d| d).count();
    assert!(dark > 2000, "the picture is not blank ({dark} dark pixels)");
    // each label: a box 2 em wide (5 em for the kana), from the baseline up one em
    let s = 1500.0 / svg_w;
    let region = |label: &str, ems: f64| {
        let (x, y) = text_at(&svg, label);
        img.ink(x * s, (y - 13.0) * s, (x + ems * 13.0) * s, (y + 3.0) * s)
    };
    let hangul = region("안녕", 2.0);
    let kana = region("こんにちは", 5.0);
    let tofu = region("\u{E000}\u{E000}", 2.0);
    let count = |v: &[bool]| v.iter().filter(|&&d| d).count();
    println!("ink: Hangul {}, kana {}, missing glyphs {}", count(&hangul), count(&kana), count(&tofu));
    assert!(count(&hangul) > 60, "Hangul drawn ({} dark pixels)", count(&hangul));
    assert!(count(&kana) > 100, "kana drawn ({} dark pixels)", count(&kana));
    // glyphs, not the missing-glyph box: the Hangul pixels differ from those of two missing glyphs
    let differ = hangul.iter().zip(&tofu).filter(|(a, b)| a != b).count();
    assert!(differ > 40, "the Hangul label looks like two missing-glyph boxes ({differ} pixels differ)");
}

#[test]
fn every_figure_saves_as_png() {
    let t = trace();
    let dir = scratch();
    let default = PngOptions::default();
    assert_eq!(default.dpi, 192.0);
    let h = t.heatmap(5).unwrap();
    h.save(dir.join("heatmap.png")).unwrap();
    let img = read_png(&dir.join("heatmap.png"));
    let w: f64 = parse_xml(&h.svg_still().unwrap()).unwrap()[0].f("width");
    assert_eq!(img.w, (w * 2.0).ceil() as usize, "192 dpi = twice the SVG's pixel size");
    let ex = t.explore().unwrap().layer(5).unwrap();
    ex.save(dir.join("explore.png")).unwrap();
    let img = read_png(&dir.join("explore.png"));
    assert!(img.ink(0.0, 0.0, img.w as f64, img.h as f64).iter().filter(|&&d| d).count() > 1000);
    explore_pair(&t, &t).unwrap().save(dir.join("pair.png")).unwrap();
    Figures::column_of([t.heatmap(0).unwrap(), t.heatmap(15).unwrap()]).save(dir.join("figs.png")).unwrap();
    // a bad size is an error, not a panic
    assert!(h.save_png(dir.join("x.png"), &PngOptions { width: Some(0), dpi: 96.0 }).is_err());
    assert!(h.save_png(dir.join("x.png"), &PngOptions { width: None, dpi: f32::NAN }).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
