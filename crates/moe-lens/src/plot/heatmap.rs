//! The tokens × experts heatmap of one router layer.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::util::{model_label, nice_ticks, text_px, truncate_cols, visible, xml_escape, FONT_FAMILY};
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::tokens::Script;
use crate::trace::Trace;

/// Which numbers a [`Heatmap`] colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Values {
    /// Raw router logits (before the softmax): one score per expert, any real number.
    Logits,
    /// Router probabilities: the softmax of the logits over all experts (each row sums to 1).
    #[default]
    Probs,
}

impl Values {
    fn noun(self) -> &'static str {
        match self {
            Values::Logits => "router logit",
            Values::Probs => "router probability",
        }
    }
}

/// One token's row, copied out of the trace.
#[derive(Debug, Clone)]
struct Row {
    id: u32,
    label: String,
    script: Script,
    logits: Vec<f32>,
    probs: Vec<f32>,
    top_k: Vec<u32>,
    weights: Vec<f32>,
}

/// A tokens × experts heatmap of one router layer: the Python lab's `plt.imshow(probs)` figure.
///
/// - rows are the tokens, top to bottom in text order, labelled with their index and readable label
///   (generated tokens, index ≥ `trace.prompt_len`, are orange and sit below an orange line);
/// - columns are the experts `0..64`;
/// - the colour is the router probability (default) or logit of that token for that expert, on the
///   viridis scale shown by the colour bar (dark purple = low, yellow = high);
/// - the experts the router chose for each token (its top-k) are outlined, the first choice also
///   has a dot;
/// - hovering a cell (in JupyterLab, or a browser showing the `.svg`) shows the token, the expert,
///   logit, probability and the expert's rank.
///
/// Build one with [`Heatmap::new`] or `trace.heatmap(layer)` ([`TracePlots`](super::TracePlots)),
/// adjust it with the builder methods, then let the notebook show it (make it the last expression of
/// a cell), or call [`svg`](Heatmap::svg) / [`save`](Heatmap::save).
///
/// The heatmap owns a copy of the layer's numbers, so it can be kept in a variable across cells.
#[derive(Debug, Clone)]
pub struct Heatmap {
    layer: String,
    model: String,
    rows: Vec<Row>,
    prompt_len: usize,
    experts: usize,
    values: Values,
    title: Option<String>,
    range: Option<(f32, f32)>,
    tokens: Option<Range<usize>>,
}

impl Heatmap {
    /// The heatmap of one captured layer of `trace`, by index (`14`) or hook name
    /// (`"model.layers.14.mlp.gate"`). Shows probabilities; call [`logits`](Heatmap::logits) for
    /// logits.
    ///
    /// Errors: [`Error::UnknownLayer`] for a layer the model does not have, `InvalidArgument` for a
    /// layer that was not captured, an empty trace, or a layer whose rows do not match the tokens.
    pub fn new(trace: &Trace, layer: impl Into<LayerRef>) -> Result<Heatmap> {
        let lt = trace.layer(layer)?;
        let n = trace.tokens.len();
        if n == 0 {
            return Err(Error::invalid("trace", "it has no tokens, so there is nothing to draw"));
        }
        let experts = lt.experts();
        if experts == 0 {
            return Err(Error::invalid("trace", format!("{} has no experts (empty logit rows)", lt.name)));
        }
        for (what, len) in [
            ("logits", lt.logits.len()),
            ("probs", lt.probs.len()),
            ("top_k", lt.top_k.len()),
            ("weights", lt.weights.len()),
        ] {
            if len != n {
                return Err(Error::invalid(
                    "trace",
                    format!("{}.{what} has {len} rows but the trace has {n} tokens", lt.name),
                ));
            }
        }
        let mut rows = Vec::with_capacity(n);
        for (i, tok) in trace.tokens.iter().enumerate() {
            let (logits, probs, top_k, weights) = (&lt.logits[i], &lt.probs[i], &lt.top_k[i], &lt.weights[i]);
            if logits.len() != experts || probs.len() != experts {
                return Err(Error::invalid(
                    "trace",
                    format!(
                        "{} row {i} has {} logits and {} probabilities, expected {experts} of each",
                        lt.name,
                        logits.len(),
                        probs.len()
                    ),
                ));
            }
            if weights.len() != top_k.len() {
                return Err(Error::invalid(
                    "trace",
                    format!("{} row {i} has {} experts but {} weights", lt.name, top_k.len(), weights.len()),
                ));
            }
            if let Some(bad) = top_k.iter().find(|&&e| e as usize >= experts) {
                return Err(Error::invalid(
                    "trace",
                    format!("{} row {i} chose expert {bad}, but there are only {experts}", lt.name),
                ));
            }
            rows.push(Row {
                id: tok.id,
                label: tok.label.clone(),
                script: tok.script,
                logits: logits.clone(),
                probs: probs.clone(),
                top_k: top_k.clone(),
                weights: weights.clone(),
            });
        }
        Ok(Heatmap {
            layer: lt.name.clone(),
            model: trace.model.clone(),
            rows,
            prompt_len: trace.prompt_len.min(n),
            experts,
            values: Values::Probs,
            title: None,
            range: None,
            tokens: None,
        })
    }

    /// Colour the raw router logits (before the softmax).
    pub fn logits(self) -> Self {
        self.values(Values::Logits)
    }

    /// Colour the router probabilities (the softmax over all experts). This is the default.
    pub fn probs(self) -> Self {
        self.values(Values::Probs)
    }

    /// Colour the given kind of numbers.
    pub fn values(mut self, values: Values) -> Self {
        self.values = values;
        self
    }

    /// Replace the title (default: `"<layer> — router probabilities (softmax over 64 experts)"`).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Fix the colour scale to `lo..=hi` instead of the data's own range, so that heatmaps of
    /// different layers or texts use the same colours for the same numbers (e.g. `.range(0.0, 0.5)`
    /// for probabilities). Values outside are drawn at the end colours. Checked when drawing.
    pub fn range(mut self, lo: f32, hi: f32) -> Self {
        self.range = Some((lo, hi));
        self
    }

    /// Show only the tokens with these indices (e.g. `.tokens(0..40)` for the first 40 of a long
    /// text). Indices stay those of the trace. Checked when drawing. Without it, a heatmap shows
    /// all tokens, but at most the first [`MAX_ROWS`] (256).
    pub fn tokens(mut self, tokens: Range<usize>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The hook name of the layer drawn, e.g. `"model.layers.14.mlp.gate"`.
    pub fn layer_name(&self) -> &str {
        &self.layer
    }

    /// Which numbers are coloured.
    pub fn kind(&self) -> Values {
        self.values
    }

    /// The figure as a standalone SVG document (UTF-8), with a hover tooltip on every cell.
    pub fn svg(&self) -> Result<String> {
        self.render(true)
    }

    /// The same picture without the hover layer (about half the size): what a viewer that shows SVG
    /// as a still image gets.
    pub fn svg_still(&self) -> Result<String> {
        self.render(false)
    }

    /// Writes the figure to `path`, by its extension: `.svg` the clean picture (no hover layer),
    /// `.png` the same picture as PNG (192 dpi; the `png` feature), `.html` a page with the
    /// interactive SVG (tooltips). Any other extension is an error.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_png(path, &super::PngOptions::default())
    }

    /// Like [`save`](Heatmap::save), with the PNG's width and DPI (used only for a `.png` path).
    pub fn save_png(&self, path: impl AsRef<Path>, png: &super::PngOptions) -> Result<()> {
        let page = || Ok(super::export::page(self.layer_name(), &super::Figure::to_html(self)?));
        super::export::save_by_extension_with(path.as_ref(), page, Some(&|| self.svg_still()), png)
    }

    /// Shows the heatmap in an evcxr notebook cell (evcxr calls this on a cell's last value):
    /// inline SVG with tooltips as `text/html`, plus a still `image/svg+xml`. Never panics; a
    /// problem is shown as a text message instead.
    pub fn evcxr_display(&self) {
        super::display::show(self);
    }

    fn default_title(&self) -> String {
        match self.values {
            Values::Probs => format!("{} — router probabilities (softmax over {} experts)", self.layer, self.experts),
            Values::Logits => {
                format!("{} — router logits (before the softmax over {} experts)", self.layer, self.experts)
            }
        }
    }

    fn value(&self, row: &Row, e: usize) -> f32 {
        match self.values {
            Values::Logits => row.logits[e],
            Values::Probs => row.probs[e],
        }
    }

    /// The visible token range, checked.
    fn visible_rows(&self) -> Result<Range<usize>> {
        let n = self.rows.len();
        match &self.tokens {
            None => Ok(0..n.min(MAX_ROWS)),
            Some(r) if r.start < r.end && r.end <= n => Ok(r.clone()),
            Some(r) => Err(Error::invalid(
                "tokens",
                format!("{r:?} is not a non-empty range inside 0..{n} (the trace has {n} tokens)"),
            )),
        }
    }

    /// The colour scale, checked.
    fn scale(&self, rows: Range<usize>) -> Result<(f64, f64)> {
        if let Some((lo, hi)) = self.range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(Error::invalid(
                    "range",
                    format!("({lo}, {hi}): give two finite numbers, the first smaller"),
                ));
            }
            return Ok((lo as f64, hi as f64));
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for row in &self.rows[rows] {
            for e in 0..self.experts {
                let v = self.value(row, e) as f64;
                if v.is_finite() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
            }
        }
        if self.values == Values::Probs {
            lo = 0.0;
        }
        if !(lo.is_finite() && hi.is_finite()) {
            return Ok((0.0, 1.0));
        }
        if hi - lo < 1e-9 {
            return Ok(if self.values == Values::Probs { (0.0, hi.max(1e-3)) } else { (lo - 0.5, hi + 0.5) });
        }
        Ok((lo, hi))
    }

    fn render(&self, tooltips: bool) -> Result<String> {
        let rows = self.visible_rows()?;
        let (lo, hi) = self.scale(rows.clone())?;
        let g = Geometry::new(self, rows.clone(), lo, hi, tooltips);
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (g.width, g.height)).into_drawing_area();
            self.draw(&root, &g, lo, hi)
                .map_err(|e| Error::invalid("figure", format!("plotters could not draw the heatmap: {e}")))?;
            root.present()
                .map_err(|e| Error::invalid("figure", format!("plotters could not finish the heatmap: {e}")))?;
        }
        // Mark the root element, so a page holding several figures can style them; draw cells and
        // outlines on whole pixels (no blurred 1 px outlines, no hairline seams between cells), but
        // keep the dots round.
        if let Some(rest) = svg.strip_prefix("<svg ") {
            svg = format!("<svg class=\"moe-lens-figure moe-lens-heatmap\" shape-rendering=\"crispEdges\" {rest}");
        }
        svg = svg.replace("<circle ", "<circle shape-rendering=\"geometricPrecision\" ");
        if tooltips {
            let overlay = self.overlay(&g);
            match svg.rfind("</svg>") {
                Some(at) => svg.insert_str(at, &overlay),
                None => return Err(Error::invalid("figure", "plotters wrote an SVG without </svg>")),
            }
        }
        Ok(svg)
    }

    fn draw(
        &self,
        root: &DrawingArea<SVGBackend, Shift>,
        g: &Geometry,
        lo: f64,
        hi: f64,
    ) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>> {
        let ink = RGBColor(0x22, 0x22, 0x22);
        let grey = RGBColor(0x66, 0x66, 0x66);
        let gen_ink = RGBColor(0xC2, 0x41, 0x0C);
        root.fill(&WHITE)?;

        // Title and subtitle.
        let title = self.title.clone().unwrap_or_else(|| self.default_title());
        root.draw_text(&visible(&title), &bold(16.0, ink, HPos::Left, VPos::Top), (MARGIN, 10))?;
        root.draw_text(&self.subtitle(&g.rows, g.tooltips), &text(12.0, grey, HPos::Left, VPos::Top), (MARGIN, 34))?;

        // Column headers over the row labels, and expert numbers over the columns.
        let head = text(11.0, grey, HPos::Right, VPos::Bottom);
        root.draw_text("#", &head, (g.idx_x, g.y0 - 5))?;
        root.draw_text("token", &head, (g.label_x, g.y0 - 5))?;
        let tick_top = text(11.0, ink, HPos::Center, VPos::Bottom);
        let tick_bottom = text(11.0, ink, HPos::Center, VPos::Top);
        for e in g.major_ticks() {
            let x = g.x0 + e as i32 * g.cw + g.cw / 2;
            root.draw(&PathElement::new(vec![(x, g.y0 - 4), (x, g.y0)], ink.stroke_width(1)))?;
            root.draw_text(&e.to_string(), &tick_top, (x, g.y0 - 5))?;
            root.draw(&PathElement::new(vec![(x, g.y1), (x, g.y1 + 5)], ink.stroke_width(1)))?;
            root.draw_text(&e.to_string(), &tick_bottom, (x, g.y1 + 7))?;
        }
        for e in 0..self.experts {
            let x = g.x0 + e as i32 * g.cw + g.cw / 2;
            root.draw(&PathElement::new(vec![(x, g.y1), (x, g.y1 + 2)], grey.stroke_width(1)))?;
        }
        root.draw_text(
            &format!("expert (0–{})", self.experts - 1),
            &text(12.0, ink, HPos::Center, VPos::Top),
            (g.x0 + (self.experts as i32 * g.cw) / 2, g.y1 + 24),
        )?;

        // Cells.
        for (r, row) in self.rows[g.rows.clone()].iter().enumerate() {
            for e in 0..self.experts {
                let (x, y, w, h) = g.cell(r, e);
                let c = colour(self.value(row, e) as f64, lo, hi);
                root.draw(&Rectangle::new([(x, y), (x + w, y + h)], c.filled()))?;
            }
        }
        // Top-k markers: an outline inside each chosen cell, a dot in the first choice, in black or
        // white, whichever stands out against the cell's colour.
        for (r, row) in self.rows[g.rows.clone()].iter().enumerate() {
            for (rank, &e) in row.top_k.iter().enumerate() {
                let e = e as usize;
                let (x, y, w, h) = g.cell(r, e);
                let c = colour(self.value(row, e) as f64, lo, hi);
                let m = contrast(c);
                root.draw(&Rectangle::new([(x + 1, y + 1), (x + w - 1, y + h - 1)], m.stroke_width(1)))?;
                if rank == 0 {
                    root.draw(&Circle::new((x + w / 2, y + h / 2), g.dot, m.filled()))?;
                }
            }
        }
        // Frame.
        root.draw(&Rectangle::new([(g.x0 - 1, g.y0 - 1), (g.x1, g.y1)], grey.stroke_width(1)))?;

        // Row labels: index, then the token's label; generated tokens in orange.
        for (r, i) in g.rows.clone().enumerate() {
            let row = &self.rows[i];
            let cy = g.y0 + r as i32 * g.rh + g.rh / 2;
            let c = if i >= self.prompt_len { gen_ink } else { ink };
            root.draw_text(
                &i.to_string(),
                &text(g.font - 1.0, if i >= self.prompt_len { gen_ink } else { grey }, HPos::Right, VPos::Center),
                (g.idx_x, cy),
            )?;
            root.draw_text(
                &truncate_cols(&visible(&row.label), LABEL_COLS),
                &text(g.font, c, HPos::Right, VPos::Center),
                (g.label_x, cy),
            )?;
        }
        // The line between prompt and generated tokens.
        if self.prompt_len > g.rows.start && self.prompt_len < g.rows.end {
            let y = g.y0 + (self.prompt_len - g.rows.start) as i32 * g.rh;
            root.draw(&PathElement::new(vec![(MARGIN, y), (g.x1 + 6, y)], gen_ink.stroke_width(2)))?;
        }

        // Colour bar with ticks and its caption.
        let slices = g.bar_h.clamp(1, 128);
        for s in 0..slices {
            let ya = g.bar_y0 + s * g.bar_h / slices;
            let yb = g.bar_y0 + (s + 1) * g.bar_h / slices;
            let t = 1.0 - (s as f64 + 0.5) / slices as f64;
            let c = ViridisRGB::get_color(t.clamp(0.0, 1.0));
            root.draw(&Rectangle::new([(g.bar_x, ya), (g.bar_x + BAR_W, yb)], c.filled()))?;
        }
        root.draw(&Rectangle::new([(g.bar_x, g.bar_y0), (g.bar_x + BAR_W, g.bar_y0 + g.bar_h)], grey.stroke_width(1)))?;
        let tick_style = text(11.0, ink, HPos::Left, VPos::Center);
        for (y, label) in &g.bar_ticks {
            root.draw(&PathElement::new(vec![(g.bar_x + BAR_W, *y), (g.bar_x + BAR_W + 4, *y)], ink.stroke_width(1)))?;
            root.draw_text(label, &tick_style, (g.bar_x + BAR_W + 6, *y))?;
        }
        root.draw_text(
            self.values.noun(),
            &text(12.0, ink, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
            (g.caption_x, g.bar_y0 + g.bar_h / 2),
        )?;

        // Legend.
        let legend = text(12.0, ink, HPos::Left, VPos::Center);
        let legend_gen = text(12.0, gen_ink, HPos::Left, VPos::Center);
        for item in &g.legend {
            let (x, y) = (item.x, item.y);
            match item.kind {
                LegendKind::Chosen => {
                    let c = ViridisRGB::get_color(0.25);
                    root.draw(&Rectangle::new([(x, y - g.rh / 2), (x + g.cw, y - g.rh / 2 + g.rh)], c.filled()))?;
                    root.draw(&Rectangle::new(
                        [(x + 1, y - g.rh / 2 + 1), (x + g.cw - 1, y - g.rh / 2 + g.rh - 1)],
                        WHITE.stroke_width(1),
                    ))?;
                }
                LegendKind::First => {
                    let c = ViridisRGB::get_color(0.9);
                    root.draw(&Rectangle::new([(x, y - g.rh / 2), (x + g.cw, y - g.rh / 2 + g.rh)], c.filled()))?;
                    root.draw(&Rectangle::new(
                        [(x + 1, y - g.rh / 2 + 1), (x + g.cw - 1, y - g.rh / 2 + g.rh - 1)],
                        BLACK.stroke_width(1),
                    ))?;
                    root.draw(&Circle::new((x + g.cw / 2, y), g.dot, BLACK.filled()))?;
                }
                LegendKind::Generated => {
                    root.draw(&PathElement::new(vec![(x, y), (x + g.cw, y)], gen_ink.stroke_width(2)))?;
                }
            }
            let style = if item.kind == LegendKind::Generated { &legend_gen } else { &legend };
            root.draw_text(&item.text, style, (x + item.sample_w, y))?;
        }
        Ok(())
    }

    fn subtitle(&self, rows: &Range<usize>, tooltips: bool) -> String {
        let n = self.rows.len();
        let generated = n - self.prompt_len;
        let mut s = model_label(&self.model);
        if generated > 0 {
            let _ = write!(s, " · {n} tokens: {} of the prompt, {generated} generated", self.prompt_len);
        } else {
            let _ = write!(s, " · {n} tokens");
        }
        if rows.len() < n {
            let _ = write!(s, " · showing tokens {}–{} (pick others with .tokens(a..b))", rows.start, rows.end - 1);
        }
        if tooltips {
            s.push_str(" · hover a cell for its numbers");
        }
        s
    }

    /// The hover layer: one transparent rectangle with a `<title>` over every cell (row-major, in
    /// the order tokens × experts), and one over every row label.
    fn overlay(&self, g: &Geometry) -> String {
        let mut s = String::with_capacity(g.rows.len() * (self.experts + 1) * 150 + 512);
        s.push_str(
            "<style>.moe-lens-cell:hover{stroke:#FF2D55;stroke-width:2px}\
             .moe-lens-row:hover{fill:#FF2D55;fill-opacity:0.08}</style>\n<g class=\"moe-lens-tooltips\">\n",
        );
        let mut order: Vec<usize> = Vec::with_capacity(self.experts);
        let mut rank_of = vec![0usize; self.experts];
        for (r, i) in g.rows.clone().enumerate() {
            let row = &self.rows[i];
            let who = format!(
                "token {i} \"{}\" (id {}, {}{})",
                visible(&row.label),
                row.id,
                row.script.name(),
                if i >= self.prompt_len { ", generated" } else { "" }
            );
            // Rank of every expert by logit, best first (ties: lower expert first).
            order.clear();
            order.extend(0..self.experts);
            // (NaN counts as lowest; total_cmp keeps the order total, which sort_by requires.)
            let key = |e: usize| if row.logits[e].is_nan() { f32::NEG_INFINITY } else { row.logits[e] };
            order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            for (rank, &e) in order.iter().enumerate() {
                rank_of[e] = rank + 1;
            }
            for (e, rank) in rank_of.iter().enumerate() {
                let (x, y, w, h) = g.cell(r, e);
                let choice = match row.top_k.iter().position(|&c| c as usize == e) {
                    Some(j) => {
                        format!("chosen: rank {} of top-{} (weight {})", j + 1, row.top_k.len(), num(row.weights[j], 4))
                    }
                    None => format!("not chosen (rank {rank} of {} by logit)", self.experts),
                };
                let tip = format!(
                    "{who}\nexpert {e}\nprobability {}\nlogit {}\n{choice}",
                    num(row.probs[e], 4),
                    num(row.logits[e], 3),
                );
                let _ = writeln!(
                    s,
                    "<rect class=\"moe-lens-cell\" x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill-opacity=\"0\"><title>{}</title></rect>",
                    xml_escape(&tip)
                );
            }
            let top: Vec<String> =
                row.top_k.iter().zip(&row.weights).map(|(e, w)| format!("{e} ({})", num(*w, 3))).collect();
            let tip = format!("{who}\ntop-{} experts: {}", row.top_k.len(), top.join(", "));
            let _ = writeln!(
                s,
                "<rect class=\"moe-lens-row\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill-opacity=\"0\"><title>{}</title></rect>",
                MARGIN,
                g.y0 + r as i32 * g.rh,
                g.x0 - 2 - MARGIN,
                g.rh,
                xml_escape(&tip)
            );
        }
        s.push_str("</g>\n");
        s
    }
}

/// Formats a number with `d` decimals, or says what non-finite value it is.
fn num(v: f32, d: usize) -> String {
    if v.is_finite() {
        format!("{v:.d$}")
    } else {
        format!("{v}")
    }
}

/// Rows drawn when no [`Heatmap::tokens`] range is given: more would make a picture of many
/// megabytes that slows the notebook down (each row is ~15 kB of SVG with its tooltips).
pub const MAX_ROWS: usize = 256;
/// Maximum label width in display columns (longer labels end in `…`; the tooltip has it whole).
const LABEL_COLS: usize = 16;
const MARGIN: i32 = 12;
const BAR_W: i32 = 14;

/// A text style in our font list, `px` pixels high (plotters writes `font-size = size / 1.24`).
fn text(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Normal),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Like [`text`], bold.
fn bold(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Bold),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Viridis colour of `v` on the scale `lo..hi` (clamped); grey for NaN/infinite values.
fn colour(v: f64, lo: f64, hi: f64) -> RGBColor {
    if !v.is_finite() || hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return RGBColor(0xBB, 0xBB, 0xBB);
    }
    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    ViridisRGB::get_color(t)
}

/// Black or white, whichever contrasts more with `c`.
fn contrast(c: RGBColor) -> RGBColor {
    let lum = 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
    if lum > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegendKind {
    Chosen,
    First,
    Generated,
}

struct LegendItem {
    kind: LegendKind,
    text: String,
    x: i32,
    y: i32,
    sample_w: i32,
}

/// Pixel layout of one heatmap. Cell (r, e) — visible row r, expert e — covers
/// `x0 + e*cw .. x0 + (e+1)*cw` × `y0 + r*rh .. y0 + (r+1)*rh`.
struct Geometry {
    width: u32,
    height: u32,
    rows: Range<usize>,
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
    cw: i32,
    rh: i32,
    dot: i32,
    font: f64,
    idx_x: i32,
    label_x: i32,
    bar_x: i32,
    bar_y0: i32,
    bar_h: i32,
    bar_ticks: Vec<(i32, String)>,
    caption_x: i32,
    legend: Vec<LegendItem>,
    experts: usize,
    tooltips: bool,
}

impl Geometry {
    fn new(h: &Heatmap, rows: Range<usize>, lo: f64, hi: f64, tooltips: bool) -> Geometry {
        let n = rows.len();
        let experts = h.experts;
        let cw = (768 / experts as i32).clamp(6, 28);
        let rh = match n {
            0..=20 => 22,
            21..=40 => 20,
            41..=60 => 18,
            _ => 16,
        };
        let font = (rh as f64 - 5.0).min(13.0);
        let dot = (cw.min(rh) / 6).max(2);

        let idx_w = text_px(&rows.end.saturating_sub(1).to_string(), font).max(text_px("#", 11.0)).ceil() as i32;
        let label_w = h.rows[rows.clone()]
            .iter()
            .map(|r| text_px(&truncate_cols(&visible(&r.label), LABEL_COLS), font))
            .fold(text_px("token", 11.0), f64::max)
            .ceil() as i32;
        let idx_x = MARGIN + idx_w;
        let label_x = idx_x + 10 + label_w;
        let x0 = label_x + 8;
        let y0 = 76;
        let x1 = x0 + experts as i32 * cw;
        let y1 = y0 + n as i32 * rh;

        // Colour bar: as tall as the heatmap, at least 140 px.
        let bar_x = x1 + 22;
        let bar_y0 = y0;
        let bar_h = (y1 - y0).max(140);
        let (ticks, decimals) = nice_ticks(lo, hi, ((bar_h / 60) as usize).clamp(3, 8));
        let bar_ticks: Vec<(i32, String)> = ticks
            .iter()
            .map(|v| {
                let y = bar_y0 + bar_h - ((v - lo) / (hi - lo) * bar_h as f64).round() as i32;
                let v = if v.abs() < 1e-12 { 0.0 } else { *v };
                // a real minus sign, as in matplotlib
                (y, format!("{v:.decimals$}").replace('-', "\u{2212}"))
            })
            .collect();
        let tick_w = bar_ticks.iter().map(|(_, s)| text_px(s, 11.0)).fold(0.0, f64::max).ceil() as i32;
        let caption_x = bar_x + BAR_W + 6 + tick_w + 14;
        let mut width = caption_x + 14;

        // Legend, flowing over as many lines as needed.
        let k = h.rows.iter().map(|r| r.top_k.len()).max().unwrap_or(0);
        let mut items = vec![
            (LegendKind::Chosen, format!("the top-{k} experts the router chose for the token")),
            (LegendKind::First, "the router's first choice (dot)".to_string()),
        ];
        if h.prompt_len < h.rows.len() {
            items.push((
                LegendKind::Generated,
                format!("generated tokens (index ≥ {}) are orange, below the line", h.prompt_len),
            ));
        }
        let title = h.title.clone().unwrap_or_else(|| h.default_title());
        width = width
            .max(MARGIN * 2 + text_px(&title, 16.0) as i32)
            .max(MARGIN * 2 + text_px(&h.subtitle(&rows, tooltips), 12.0) as i32);
        let mut legend = Vec::new();
        let (mut x, mut y) = (MARGIN, y1.max(bar_y0 + bar_h) + 54);
        for (kind, text) in items {
            let sample_w = cw + 6;
            let w = sample_w + (text_px(&text, 12.0) * 0.9).ceil() as i32 + 28;
            if x > MARGIN && x + w > width - MARGIN {
                x = MARGIN;
                y += rh.max(20) + 2;
            }
            legend.push(LegendItem { kind, text, x, y, sample_w });
            x += w;
        }
        let height = y + rh / 2 + 12;

        Geometry {
            width: width.max(1) as u32,
            height: height.max(1) as u32,
            rows,
            x0,
            y0,
            x1,
            y1,
            cw,
            rh,
            dot,
            font,
            idx_x,
            label_x,
            bar_x,
            bar_y0,
            bar_h,
            bar_ticks,
            caption_x,
            legend,
            experts,
            tooltips,
        }
    }

    /// Pixel rectangle `(x, y, width, height)` of visible row `r`, expert `e`.
    fn cell(&self, r: usize, e: usize) -> (i32, i32, i32, i32) {
        (self.x0 + e as i32 * self.cw, self.y0 + r as i32 * self.rh, self.cw, self.rh)
    }

    /// Experts with a labelled tick: every 8th, and the last.
    fn major_ticks(&self) -> Vec<usize> {
        let step = if self.experts > 16 { 8 } else { 1 };
        let mut t: Vec<usize> = (0..self.experts).step_by(step).collect();
        if let Some(&last) = t.last() {
            if last != self.experts - 1 && self.experts - 1 - last >= step / 2 {
                t.push(self.experts - 1);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours() {
        assert_eq!(colour(f64::NAN, 0.0, 1.0), RGBColor(0xBB, 0xBB, 0xBB));
        assert_eq!(colour(0.5, 1.0, 1.0), RGBColor(0xBB, 0xBB, 0xBB));
        assert_eq!(colour(-5.0, 0.0, 1.0), ViridisRGB::get_color(0.0));
        assert_eq!(colour(5.0, 0.0, 1.0), ViridisRGB::get_color(1.0));
        // dark purple gets a white outline, yellow a black one
        assert_eq!(contrast(ViridisRGB::get_color(0.0)), WHITE);
        assert_eq!(contrast(ViridisRGB::get_color(1.0)), BLACK);
    }

    #[test]
    fn numbers() {
        assert_eq!(num(0.12345, 4), "0.1235");
        assert_eq!(num(f32::NAN, 4), "NaN");
        assert_eq!(num(f32::NEG_INFINITY, 3), "-inf");
    }
}
