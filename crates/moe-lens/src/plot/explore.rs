//! The explorer: every captured layer of a trace in one self-contained HTML view (no CDN, no server,
//! no kernel round trip once drawn), and two traces side by side with one slider.
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! # use moe_lens::plot::*;
//! # fn demo(trace: &Trace, ko: &Trace) -> Result<()> {
//! trace.explore()?;                 // a cell's last value: the interactive view
//! trace.explore()?.layer(14)?;      // start on layer 14
//! explore_pair(trace, ko)?;         // two runs, one slider, the overlap per layer
//! trace.explore()?.save("view.html")?;
//! # Ok(()) }
//! ```
//!
//! What the browser gets: one compact JSON payload per output (tokens with label, script, id and
//! the generation step; per layer the top-k ids (u8) and weights (u16), and the probabilities and
//! logits of every expert quantised to u16, base64) and one small hand-written renderer
//! (`explore.js`, vanilla JavaScript on a canvas). Quantisation: a probability or weight `p` is
//! stored as `round(p * 65535)` (error ≤ 7.7e-6); a logit as `round((x - lo) / (hi - lo) * 65535)`
//! with the layer's own `lo`/`hi` (error ≤ (hi - lo) / 131070, about 1e-4 for OLMoE's routers).
//!
//! Before the script runs (an untrusted notebook, a viewer without JavaScript) the output shows a
//! still picture of the starting layer (an `<img>` of an SVG whose grid is one small PNG) and one
//! line saying how to get the interactive view; the script replaces both.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
use serde::Serialize;

use super::raster::png_rgb;
use super::util::{base64, model_label, text_px, truncate_cols, visible, xml_escape, FONT_FAMILY};
use super::Values;
use crate::error::{Error, Result};
use crate::spy::{LayerRef, Step};
use crate::trace::Trace;

/// The renderer, embedded once in every output.
const SCRIPT: &str = include_str!("explore.js");

/// The line an untrusted notebook shows under the still picture.
pub(crate) const UNTRUSTED_NOTE: &str = "Still picture of one layer. For the interactive explorer (all layers, \
     slider, tooltips, click a token or an expert), run this cell, or trust the notebook (JupyterLab: File ▸ \
     Trust Notebook) and reload it.";

/// One trace, copied out for the explorer.
#[derive(Debug, Clone)]
struct Run {
    model: String,
    text: String,
    tokens: Vec<Tok>,
    prompt_len: usize,
    /// Hook names of the captured layers, in order.
    layers: Vec<String>,
    experts: usize,
    k: usize,
    /// `[layer][token][expert]`
    probs: Vec<Vec<Vec<f32>>>,
    logits: Vec<Vec<Vec<f32>>>,
    /// `[layer][token][k]`
    top_k: Vec<Vec<Vec<u32>>>,
    weights: Vec<Vec<Vec<f32>>>,
}

#[derive(Debug, Clone, Serialize)]
struct Tok {
    /// label
    l: String,
    /// script name
    s: &'static str,
    /// vocabulary id
    id: u32,
    /// generation step (`Step::Decode(n)` → n) for generated tokens, else null
    g: Option<usize>,
}

/// Every captured layer of one trace (or two, see [`explore_pair`]) in one interactive, offline
/// view: a layer slider (and the ← → keys), a probability / logit toggle, hover tooltips (token,
/// expert, probability, logit, rank), a token's path through all layers (click a token), the tokens
/// that chose an expert and where it is busiest (click an expert), tokens coloured by script with a
/// key, a search box, and generated tokens marked with their step.
///
/// Make it a cell's last value to show it; [`save`](Explorer::save) writes it to a file (`.html`:
/// the interactive page; `.svg` / `.png`: the still picture of the starting layer).
#[derive(Debug, Clone)]
pub struct Explorer {
    runs: Vec<Run>,
    /// Position in the captured layers to start on.
    start: usize,
    values: Values,
    title: Option<String>,
}

/// Two runs in one explorer with one shared slider, e.g. an English sentence and its Korean
/// translation, or a run before and after an intervention. Per layer, the view shows the
/// **overlap** of the two runs' expert use: with `a_e` the share of run A's top-k selections (all
/// tokens) that went to expert `e`, and `b_e` the same for run B, overlap = Σ_e min(a_e, b_e)
/// (1 = both runs spread their selections over the experts in the same proportions, 0 = no expert in
/// common); see [`expert_use_overlap`].
///
/// Both traces must have captured the same layers of models with the same number of experts.
pub fn explore_pair(a: &Trace, b: &Trace) -> Result<Explorer> {
    let ra = Run::new(a)?;
    let rb = Run::new(b)?;
    if ra.layers != rb.layers {
        return Err(Error::invalid(
            "traces",
            format!(
                "the two traces captured different layers ({} vs {}): trace both with the same layers",
                ra.layers.len(),
                rb.layers.len()
            ),
        ));
    }
    if ra.experts != rb.experts {
        return Err(Error::invalid(
            "traces",
            format!("one trace has {} experts and the other {}: compare runs of one model", ra.experts, rb.experts),
        ));
    }
    let start = ra.layers.len().saturating_sub(1);
    Ok(Explorer { runs: vec![ra, rb], start, values: Values::Probs, title: None })
}

/// The overlap of two runs' expert use in one layer: Σ_e min(a_e, b_e), where `a_e` is the share of
/// the top-k selections of `a` (all its tokens) that chose expert `e` (and `b_e` the same for `b`).
/// It is 1 minus the total variation distance between the two expert-use distributions: 1 when both
/// use the experts in the same proportions, 0 when they share no expert. `experts` is the number of
/// experts; ids outside `0..experts` are ignored. `None` if a run has no selections.
pub fn expert_use_overlap(a: &[Vec<u32>], b: &[Vec<u32>], experts: usize) -> Option<f64> {
    let share = |rows: &[Vec<u32>]| -> Option<Vec<f64>> {
        let mut c = vec![0f64; experts];
        let mut total = 0f64;
        for &e in rows.iter().flatten() {
            if let Some(x) = c.get_mut(e as usize) {
                *x += 1.0;
                total += 1.0;
            }
        }
        (total > 0.0).then(|| c.into_iter().map(|x| x / total).collect())
    };
    let (sa, sb) = (share(a)?, share(b)?);
    Some(sa.iter().zip(&sb).map(|(x, y)| x.min(*y)).sum())
}

impl Run {
    fn new(trace: &Trace) -> Result<Run> {
        let n = trace.tokens.len();
        if n == 0 {
            return Err(Error::invalid("trace", "it has no tokens, so there is nothing to explore"));
        }
        if trace.layers.is_empty() {
            return Err(Error::invalid("trace", "it captured no layers: trace with at least one layer"));
        }
        let experts = trace.layers[0].experts();
        let k = trace.layers.iter().map(|l| l.k()).max().unwrap_or(0);
        if experts == 0 || experts > 256 {
            return Err(Error::invalid(
                "trace",
                format!("{} has {experts} experts; the explorer draws 1 to 256", trace.layers[0].name),
            ));
        }
        for lt in &trace.layers {
            let rows_ok = [lt.logits.len(), lt.probs.len(), lt.top_k.len(), lt.weights.len()].iter().all(|&r| r == n);
            if !rows_ok {
                return Err(Error::invalid(
                    "trace",
                    format!("{} does not have one row per token ({n} tokens)", lt.name),
                ));
            }
            for i in 0..n {
                if lt.logits[i].len() != experts || lt.probs[i].len() != experts {
                    return Err(Error::invalid(
                        "trace",
                        format!("{} row {i} does not have {experts} logits and probabilities", lt.name),
                    ));
                }
                if lt.top_k[i].len() != k || lt.weights[i].len() != k {
                    return Err(Error::invalid(
                        "trace",
                        format!("{} row {i} does not have {k} chosen experts and weights", lt.name),
                    ));
                }
                if let Some(bad) = lt.top_k[i].iter().find(|&&e| e as usize >= experts) {
                    return Err(Error::invalid(
                        "trace",
                        format!("{} row {i} chose expert {bad}, but there are only {experts}", lt.name),
                    ));
                }
            }
        }
        let prompt_len = trace.prompt_len.min(n);
        let step_of = |i: usize| -> Option<usize> {
            if i < prompt_len {
                return None;
            }
            trace.steps.iter().find_map(|(s, r)| match s {
                Step::Decode(d) if r.contains(&i) => Some(*d),
                _ => None,
            })
        };
        let tokens = trace
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| Tok { l: t.label.clone(), s: t.script.name(), id: t.id, g: step_of(i) })
            .collect();
        Ok(Run {
            model: model_label(&trace.model),
            text: trace.text.clone(),
            tokens,
            prompt_len,
            layers: trace.layers.iter().map(|l| l.name.clone()).collect(),
            experts,
            k,
            probs: trace.layers.iter().map(|l| l.probs.clone()).collect(),
            logits: trace.layers.iter().map(|l| l.logits.clone()).collect(),
            top_k: trace.layers.iter().map(|l| l.top_k.clone()).collect(),
            weights: trace.layers.iter().map(|l| l.weights.clone()).collect(),
        })
    }

    /// The run as the renderer reads it.
    fn payload(&self) -> serde_json::Value {
        let mut probs = Vec::new();
        let mut logits = Vec::new();
        let mut top = Vec::new();
        let mut weights = Vec::new();
        let mut lmin = Vec::new();
        let mut lmax = Vec::new();
        for l in 0..self.layers.len() {
            let (lo, hi) = finite_range(self.logits[l].iter().flatten().copied());
            lmin.push(lo);
            lmax.push(hi);
            for t in 0..self.tokens.len() {
                for e in 0..self.experts {
                    probs.extend_from_slice(&unit_u16(self.probs[l][t][e]).to_le_bytes());
                    let x = self.logits[l][t][e];
                    let q = if x.is_finite() && hi > lo {
                        (((x as f64 - lo) / (hi - lo)) * 65535.0).round().clamp(0.0, 65535.0) as u16
                    } else {
                        0
                    };
                    logits.extend_from_slice(&q.to_le_bytes());
                }
                for j in 0..self.k {
                    top.push(self.top_k[l][t][j].min(255) as u8);
                    weights.extend_from_slice(&unit_u16(self.weights[l][t][j]).to_le_bytes());
                }
            }
        }
        serde_json::json!({
            "model": self.model,
            "text": self.text,
            "tokens": self.tokens,
            "prompt_len": self.prompt_len,
            "layers": self.layers,
            "experts": self.experts,
            "k": self.k,
            "probs": base64(&probs),
            "logits": base64(&logits),
            "lmin": lmin,
            "lmax": lmax,
            "topk": base64(&top),
            "weights": base64(&weights),
        })
    }
}

/// `p` in 0..=1 as `round(p * 65535)`; NaN as 0.
fn unit_u16(p: f32) -> u16 {
    if p.is_nan() {
        0
    } else {
        (p as f64 * 65535.0).round().clamp(0.0, 65535.0) as u16
    }
}

/// Smallest and largest finite value (0, 1 when there is none).
fn finite_range(values: impl Iterator<Item = f32>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v as f64);
        hi = hi.max(v as f64);
    }
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

impl Explorer {
    /// The explorer of one trace, starting on its last captured layer. Errors: a trace without
    /// tokens or layers, or whose rows do not match its tokens.
    pub fn new(trace: &Trace) -> Result<Explorer> {
        let run = Run::new(trace)?;
        let start = run.layers.len().saturating_sub(1);
        Ok(Explorer { runs: vec![run], start, values: Values::Probs, title: None })
    }

    /// Start on this layer (index `14` or hook name `"model.layers.14.mlp.gate"`) instead of the last
    /// captured one. Errors: a layer the model does not have, or one this trace did not capture.
    pub fn layer(mut self, layer: impl Into<LayerRef>) -> Result<Explorer> {
        self.start = self.position(layer.into())?;
        Ok(self)
    }

    fn position(&self, layer: LayerRef) -> Result<usize> {
        let names = &self.runs[0].layers;
        let idx = layer.index(usize::MAX)?;
        let name = crate::spy::router_name(idx);
        names.iter().position(|n| *n == name).ok_or_else(|| {
            Error::invalid("layer", format!("layer {idx} was not captured (captured: {})", names.join(", ")))
        })
    }

    /// Start showing logits instead of probabilities (the view has a toggle either way).
    pub fn logits(mut self) -> Explorer {
        self.values = Values::Logits;
        self
    }

    /// A heading over the view (default: the model and the text).
    pub fn title(mut self, title: impl Into<String>) -> Explorer {
        self.title = Some(title.into());
        self
    }

    /// Hook name of the layer the view starts on.
    pub fn start_layer(&self) -> &str {
        &self.runs[0].layers[self.start]
    }

    /// Per captured layer, the overlap of the two runs' expert use (see [`explore_pair`]); empty
    /// for the explorer of one trace.
    pub fn overlaps(&self) -> Vec<f64> {
        match self.runs.as_slice() {
            [a, b] => (0..a.layers.len())
                .map(|l| expert_use_overlap(&a.top_k[l], &b.top_k[l], a.experts).unwrap_or(0.0))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn payload_json(&self) -> Result<String> {
        let doc = serde_json::json!({
            "v": 1,
            "title": self.title,
            "start": self.start,
            "mode": match self.values { Values::Probs => "probs", Values::Logits => "logits" },
            "runs": self.runs.iter().map(Run::payload).collect::<Vec<_>>(),
            "overlap": self.overlaps(),
        });
        let s = serde_json::to_string(&doc)
            .map_err(|e| Error::invalid("explorer", format!("cannot serialise the view: {e}")))?;
        // Inside a <script>: no "</script>" or "<!--" may appear; '<' occurs only in strings.
        Ok(s.replace('<', "\\u003c"))
    }

    /// The view as an HTML fragment: the still picture and the untrusted-notebook line inside a
    /// `<div>`, and one `<script>` (the renderer and the data) that replaces them by the
    /// interactive view. Every output gets its own element id, so several views in one notebook do
    /// not clash.
    pub fn html(&self) -> Result<String> {
        let uid = unique_id(self);
        let still = self.svg()?;
        let mut s = String::with_capacity(still.len() * 4 / 3 + SCRIPT.len() + 200_000);
        let _ = write!(
            s,
            "<div class=\"moe-lens-explore\" id=\"mlx-{uid}\" style=\"background:#fff;color:#222\">\
             <div class=\"mlx-still\" style=\"overflow-x:auto\"><img alt=\"moe-lens explorer: still picture of {}\" \
             style=\"max-width:none\" src=\"data:image/svg+xml;base64,{}\"/>\
             <div class=\"mlx-note\" style=\"font:13px sans-serif;color:#555;padding:4px 0\">{}</div></div></div>",
            xml_escape(self.start_layer()),
            base64(still.as_bytes()),
            xml_escape(UNTRUSTED_NOTE)
        );
        let _ = write!(
            s,
            "<script>(function(){{var root=document.getElementById(\"mlx-{uid}\");var P={};\n{SCRIPT}\n}})();</script>",
            self.payload_json()?
        );
        Ok(s)
    }

    /// The view as a standalone HTML page (UTF-8): what `moe-lens trace --format html` prints.
    pub fn html_page(&self) -> Result<String> {
        let title = match &self.title {
            Some(t) => t.clone(),
            None => format!("moe-lens explorer: {}", self.runs[0].model),
        };
        Ok(format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; \
             style-src 'unsafe-inline'; img-src data:\">\
             <title>{}</title></head>\n<body style=\"margin:12px;background:#fff\">\n{}\n</body></html>\n",
            xml_escape(&title),
            self.html()?
        ))
    }

    /// The still picture (SVG) of the starting layer: what an untrusted notebook shows, and what
    /// `save("x.svg")` writes. Pairs are stacked, one run below the other.
    pub fn svg(&self) -> Result<String> {
        let parts: Vec<String> =
            self.runs.iter().enumerate().map(|(i, r)| self.still_svg(r, i)).collect::<Result<_>>()?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        let title = self.overlaps().get(self.start).map(|o| {
            format!("{} · overlap of the two runs' expert use: {o:.2} (Σ min of the top-k shares)", self.start_layer())
        });
        Ok(super::display::stack_svgs(&parts, super::Layout::Column, title.as_deref()))
    }

    /// Writes the view to `path`, by its extension: `.html` the interactive page, `.svg` the still
    /// picture of the starting layer, `.png` the same picture as PNG (needs the `png` feature).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        super::export::save_by_extension(path, || self.html_page(), Some(&|| self.svg()))
    }

    /// Shows the view in an evcxr notebook cell. Never panics.
    pub fn evcxr_display(&self) {
        super::display::show(self);
    }

    fn still_svg(&self, run: &Run, which: usize) -> Result<String> {
        const CW: usize = 10;
        let l = self.start;
        let n = run.tokens.len();
        let rh = if n <= 40 { 16 } else { 12 };
        let font = (rh as f64 - 4.0).min(12.0);
        let labels: Vec<String> =
            run.tokens.iter().enumerate().map(|(i, t)| format!("{i} {}", truncate_cols(&visible(&t.l), 16))).collect();
        let label_w = labels.iter().map(|s| text_px(s, font)).fold(40.0, f64::max).ceil() as usize;
        let (x0, y0) = (12 + label_w + 8, 74usize);
        let grid_w = run.experts * CW;
        let width = x0 + grid_w + 80;
        let height = y0 + n * rh + 54;
        let logits = self.values == Values::Logits;
        let (lo, hi) = if logits {
            finite_range(run.logits[l].iter().flatten().copied())
        } else {
            (0.0, finite_range(run.probs[l].iter().flatten().copied()).1.max(1e-3))
        };
        let mut rgb = Vec::with_capacity(n * run.experts * 3);
        for t in 0..n {
            for e in 0..run.experts {
                let v = if logits { run.logits[l][t][e] } else { run.probs[l][t][e] } as f64;
                let c = if v.is_finite() && hi > lo {
                    ViridisRGB.get_color_normalized(v, lo, hi)
                } else {
                    plotters::style::RGBColor(0xBB, 0xBB, 0xBB)
                };
                rgb.extend_from_slice(&[c.0, c.1, c.2]);
            }
        }
        let png = png_rgb(run.experts as u32, n as u32, &rgb)
            .ok_or_else(|| Error::invalid("explorer", "the still picture's raster has no pixels"))?;
        let font_attr = xml_escape(FONT_FAMILY);
        let what = if logits { "router logits" } else { "router probabilities" };
        let title = match (&self.title, which) {
            (Some(t), 0) => t.clone(),
            _ => format!("{} — {what}, {} tokens (run {})", run.layers[l], n, which + 1),
        };
        let mut s = String::with_capacity(png.len() * 4 / 3 + n * run.k * 24 + 4096);
        let _ = write!(
            s,
            "<svg class=\"moe-lens-figure moe-lens-explore-still\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"{font_attr}\">\n\
             <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>\n\
             <text x=\"12\" y=\"24\" font-size=\"15\" font-weight=\"bold\" fill=\"#222\">{}</text>\n\
             <text x=\"12\" y=\"44\" font-size=\"12\" fill=\"#666\">{}</text>\n",
            xml_escape(&visible(&title)),
            xml_escape(&visible(&truncate_cols(&format!("{} · {}", run.model, run.text), 110)))
        );
        for e in (0..run.experts).step_by(8) {
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#222\">{e}</text>",
                x0 + e * CW + CW / 2,
                y0 - 4
            );
        }
        let _ = write!(
            s,
            "\n<image x=\"{x0}\" y=\"{y0}\" width=\"{grid_w}\" height=\"{}\" preserveAspectRatio=\"none\" \
             image-rendering=\"optimizeSpeed\" style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n",
            n * rh,
            base64(&png)
        );
        // Top-k outlines (one path) and first choices (another).
        let (mut chosen, mut first) = (String::new(), String::new());
        for t in 0..n {
            for (j, &e) in run.top_k[l][t].iter().enumerate() {
                let (x, y) = (x0 + e as usize * CW, y0 + t * rh);
                let _ = write!(chosen, "M{} {}h{}v{}h-{}z", x + 1, y + 1, CW - 2, rh - 2, CW - 2);
                if j == 0 {
                    let _ = write!(first, "M{} {}h3v3h-3z", x + CW / 2 - 1, y + rh / 2 - 1);
                }
            }
        }
        let _ = writeln!(s, "<path d=\"{chosen}\" fill=\"none\" stroke=\"#fff\" stroke-width=\"1\"/>");
        let _ = writeln!(s, "<path d=\"{first}\" fill=\"#fff\"/>");
        for (t, label) in labels.iter().enumerate() {
            let tok = &run.tokens[t];
            let colour = if t >= run.prompt_len { "#C2410C" } else { script_colour(tok.s) };
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"{font}\" text-anchor=\"end\" dominant-baseline=\"central\" fill=\"{colour}\">{}</text>",
                x0 - 6,
                y0 + t * rh + rh / 2,
                xml_escape(label)
            );
        }
        if run.prompt_len < n {
            let y = y0 + run.prompt_len * rh;
            let _ = write!(s, "<path d=\"M12 {y}H{}\" stroke=\"#C2410C\" stroke-width=\"2\"/>", x0 + grid_w);
        }
        let _ = write!(
            s,
            "\n<rect x=\"{}\" y=\"{}\" width=\"{grid_w}\" height=\"{}\" fill=\"none\" stroke=\"#666\"/>\n",
            x0,
            y0,
            n * rh
        );
        // Colour scale: five stops.
        let bx = x0 + grid_w + 12;
        for i in 0..5 {
            let t = 1.0 - i as f64 / 4.0;
            let c = ViridisRGB.get_color_normalized(t, 0.0, 1.0);
            let v = lo + (hi - lo) * t;
            let _ = write!(
                s,
                "<rect x=\"{bx}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"rgb({},{},{})\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#222\">{}</text>",
                y0 + i * 16,
                c.0,
                c.1,
                c.2,
                bx + 16,
                y0 + i * 16 + 10,
                format!("{v:.2}").replace('-', "\u{2212}")
            );
        }
        let key_y = y0 + n * rh + 24;
        let mut present: Vec<&'static str> = Vec::new();
        for t in &run.tokens {
            if !present.contains(&t.s) {
                present.push(t.s);
            }
        }
        let mut x = 12usize;
        let _ = write!(s, "<text x=\"{x}\" y=\"{key_y}\" font-size=\"11\" fill=\"#444\">expert (0–{}); outlined: the top-{} chosen; square: first choice · token colours:</text>", run.experts - 1, run.k);
        x += text_px("expert (0–63); outlined: the top-8 chosen; square: first choice · token colours:", 11.0) as usize
            + 8;
        for name in present {
            let _ = write!(
                s,
                "<text x=\"{x}\" y=\"{key_y}\" font-size=\"11\" font-weight=\"bold\" fill=\"{}\">{name}</text>",
                script_colour(name)
            );
            x += text_px(name, 11.0) as usize + 10;
        }
        if run.prompt_len < n {
            let _ = write!(s, "<text x=\"{x}\" y=\"{key_y}\" font-size=\"11\" fill=\"#C2410C\">generated</text>");
        }
        s.push_str("\n</svg>\n");
        Ok(s)
    }
}

/// The colour of a script's tokens (the same table as in explore.js).
fn script_colour(name: &str) -> &'static str {
    match name {
        "Latin" => "#1D4ED8",
        "Hangul" => "#B91C1C",
        "Hiragana" => "#047857",
        "Katakana" => "#0F766E",
        "Han" => "#7E22CE",
        "Common" => "#57534E",
        "Mixed" => "#A16207",
        _ => "#374151",
    }
}

/// An id no other output of this process has, and unlikely to equal one of another process (time).
fn unique_id(e: &Explorer) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in e.runs.iter().flat_map(|r| r.text.bytes()).chain(nanos.to_le_bytes()).chain(n.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

impl super::Figure for Explorer {
    fn to_html(&self) -> Result<String> {
        self.html()
    }
    fn to_still_svg(&self) -> Option<Result<String>> {
        Some(self.svg())
    }
    fn to_notebook_html(&self) -> Result<String> {
        // already carries its still picture for untrusted notebooks
        self.html()
    }
    fn to_text(&self) -> Option<String> {
        let r = &self.runs[0];
        Some(format!(
            "Explorer of {} tokens × {} layers × {} experts{}; shown interactively in a notebook, or .save(\"view.html\")",
            r.tokens.len(),
            r.layers.len(),
            r.experts,
            if self.runs.len() == 2 { " (two runs)" } else { "" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_by_hand() {
        // a: experts 0,1 twice each (shares 0.5, 0.5); b: 1,2 → shares 0.5, 0.5: in common 0.5
        let a = vec![vec![0, 1], vec![0, 1]];
        let b = vec![vec![1, 2], vec![2, 1]];
        assert_eq!(expert_use_overlap(&a, &b, 4), Some(0.5));
        assert_eq!(expert_use_overlap(&a, &a, 4), Some(1.0));
        assert_eq!(expert_use_overlap(&a, &[vec![3, 2]], 4), Some(0.0));
        // a: 0 ×3, 1 ×1 (0.75, 0.25); b: 0 ×1, 1 ×3 (0.25, 0.75): min = 0.25 + 0.25
        assert_eq!(expert_use_overlap(&[vec![0, 0, 0, 1]], &[vec![0, 1, 1, 1]], 2), Some(0.5));
        assert_eq!(expert_use_overlap(&[], &a, 4), None);
    }

    #[test]
    fn quantisation() {
        assert_eq!(unit_u16(0.0), 0);
        assert_eq!(unit_u16(1.0), 65535);
        assert_eq!(unit_u16(0.5), 32768);
        assert_eq!(unit_u16(f32::NAN), 0);
        assert_eq!(unit_u16(2.0), 65535);
    }
}
