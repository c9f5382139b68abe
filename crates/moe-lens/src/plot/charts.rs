//! Pictures of a language [`Study`]: which experts each language's tokens are sent to, how many
//! experts each language uses per layer, and the token-matched answer to "does Korean use fewer
//! experts than English?".
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! # use moe_lens::plot::*;
//! # use moe_lens::study::Study;
//! # fn demo(study: &Study) -> Result<()> {
//! study.language_heatmap(14)?;                       // languages × 64 experts at layer 14
//! study.layers_overview()?;                          // all 16 layers at a glance, one colour scale
//! study.top_experts(14, 10)?;                        // each language's 10 most used experts
//! study.expert_table(14, 12)?;                       // the counts behind them, as a table
//! let ko_en = study.compare("ko", "en")?;            // token-matched bootstrap
//! study.effective_experts_plot()?.with_comparison(&ko_en);
//! study.language_heatmap(14)?.save("layer14-languages.svg")?;
//! # Ok(()) }
//! ```
//!
//! Every figure owns a copy of the numbers it draws (a study's counts are a few kB), so it can be
//! kept in a notebook variable. Builder methods (`.range(…)`, `.languages(…)`, `.with_comparison(…)`)
//! never fail; what they were given is checked when the figure is drawn, and a problem then shows as
//! a message instead of the picture (or an `Err` from [`svg`](LanguageHeatmap::svg)).
//!
//! The numbers, for language L, layer l and expert E (N = top-k selections, counted over the
//! tokens of the scan):
//! - **share** = N(E, L) / N(L): of L's top-k selections at layer l, the fraction that went to E
//!   (a language's shares add up to 1; uniform routing gives 1/64 each);
//! - **usage** = N(E, L) / tokens(L): the fraction of L's tokens that had E among their top-k
//!   (uniform routing: k/64 = 12.5 % for top-8);
//! - **specialization** = N(E, L) / N(E): of all selections of E, the fraction made by L's tokens
//!   (the OLMoE paper's domain specialization, with languages for domains).

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::display::{show, Figure};
use super::util::{nice_ticks, text_px, visible, xml_escape, FONT_FAMILY};
use crate::corpus::language_name;
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::study::compare::{Comparison, Verdict};
use crate::study::metrics::{coverage, distinct, effective_number, entropy};
use crate::study::{Counts, Study};

// ------------------------------------------------------------------------------------------------
// The extension trait
// ------------------------------------------------------------------------------------------------

/// Picture methods on a [`Study`] (and on bare [`Counts`], e.g. read from a `counts.json`), so that
/// a notebook can write `study.language_heatmap(14)?`. `use moe_lens::prelude::*;` brings it into
/// scope (or `use moe_lens::plot::StudyPlots;`).
///
/// Errors, never panics: an unknown layer is [`Error::UnknownLayer`]; an empty study (no counted
/// tokens), `n = 0` or counts whose tables do not match their shape are `InvalidArgument`.
pub trait StudyPlots {
    /// Languages × experts of one layer, coloured by each language's share of its top-k selections
    /// (see [`LanguageHeatmap`]). The layer is an index (`14`) or a hook name.
    fn language_heatmap(&self, layer: impl Into<LayerRef>) -> Result<LanguageHeatmap>;

    /// Effective number of experts per layer, one line per language; add the token-matched
    /// comparison with [`EffectiveExpertsPlot::with_comparison`].
    fn effective_experts_plot(&self) -> Result<EffectiveExpertsPlot>;

    /// Each language's `n` most used experts of one layer, as bars side by side.
    fn top_experts(&self, layer: impl Into<LayerRef>, n: usize) -> Result<TopExperts>;

    /// A table of the `n` most used experts of one layer (largest average share over the languages)
    /// with each language's count and share: "how often is expert X chosen for language Y".
    fn expert_table(&self, layer: impl Into<LayerRef>, n: usize) -> Result<ExpertTable>;

    /// Every layer at a glance: a grid of small language × expert heatmaps on one colour scale.
    fn layers_overview(&self) -> Result<LayersOverview>;
}

impl StudyPlots for Counts {
    fn language_heatmap(&self, layer: impl Into<LayerRef>) -> Result<LanguageHeatmap> {
        LanguageHeatmap::new(self, layer)
    }
    fn effective_experts_plot(&self) -> Result<EffectiveExpertsPlot> {
        EffectiveExpertsPlot::new(self)
    }
    fn top_experts(&self, layer: impl Into<LayerRef>, n: usize) -> Result<TopExperts> {
        TopExperts::new(self, layer, n)
    }
    fn expert_table(&self, layer: impl Into<LayerRef>, n: usize) -> Result<ExpertTable> {
        ExpertTable::new(self, layer, n)
    }
    fn layers_overview(&self) -> Result<LayersOverview> {
        LayersOverview::new(self)
    }
}

impl StudyPlots for Study {
    fn language_heatmap(&self, layer: impl Into<LayerRef>) -> Result<LanguageHeatmap> {
        self.counts.language_heatmap(layer)
    }
    fn effective_experts_plot(&self) -> Result<EffectiveExpertsPlot> {
        self.counts.effective_experts_plot()
    }
    fn top_experts(&self, layer: impl Into<LayerRef>, n: usize) -> Result<TopExperts> {
        self.counts.top_experts(layer, n)
    }
    fn expert_table(&self, layer: impl Into<LayerRef>, n: usize) -> Result<ExpertTable> {
        self.counts.expert_table(layer, n)
    }
    fn layers_overview(&self) -> Result<LayersOverview> {
        self.counts.layers_overview()
    }
}

// ------------------------------------------------------------------------------------------------
// What the figures colour, and the numbers they share
// ------------------------------------------------------------------------------------------------

/// Which number a language × expert heatmap colours (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// N(E, L) / N(L): the expert's share of the language's top-k selections (default).
    #[default]
    Share,
    /// N(E, L) / tokens(L): the fraction of the language's tokens that had the expert in their top-k.
    Usage,
    /// N(E, L) / N(E): the language's share of the expert's selections (grey: expert never chosen).
    Specialization,
}

impl Measure {
    fn caption(self, k: usize) -> String {
        match self {
            Measure::Share => format!("share of the language's top-{k} selections"),
            Measure::Usage => "share of the language's tokens sent to the expert".to_string(),
            Measure::Specialization => "specialization: the language's share of the expert's selections".to_string(),
        }
    }
}

/// A copy of a study's counts, checked, with the sums the figures need.
#[derive(Debug, Clone)]
struct StudyData {
    model: String,
    layers: usize,
    experts: usize,
    k: usize,
    langs: Vec<String>,
    tokens: Vec<u64>,
    /// `[lang][layer][expert]`, flattened.
    topk: Vec<u64>,
    /// `[layer][expert]`: selections over all languages.
    totals: Vec<u64>,
}

impl StudyData {
    fn new(c: &Counts) -> Result<StudyData> {
        let nl = c.languages.len();
        if c.layers == 0 || c.experts == 0 {
            return Err(Error::invalid(
                "study",
                format!("the counts describe {} layers of {} experts: nothing to draw", c.layers, c.experts),
            ));
        }
        if c.topk.dim() != (nl, c.layers, c.experts) || c.tokens.len() != nl {
            return Err(Error::invalid(
                "study",
                format!(
                    "the count tables ({:?}, {} token counts) do not match {nl} languages × {} layers × {} experts",
                    c.topk.dim(),
                    c.tokens.len(),
                    c.layers,
                    c.experts
                ),
            ));
        }
        if nl == 0 || c.tokens.iter().all(|&t| t == 0) {
            return Err(Error::invalid(
                "study",
                "it has no counted tokens, so there is nothing to draw: scan some sentences first \
                 (lens.scan(&sentences, &ScanOptions::default())?)",
            ));
        }
        let topk: Vec<u64> = c.topk.iter().copied().collect();
        let mut totals = vec![0u64; c.layers * c.experts];
        for li in 0..nl {
            for (t, x) in totals.iter_mut().zip(&topk[li * c.layers * c.experts..(li + 1) * c.layers * c.experts]) {
                *t += x;
            }
        }
        Ok(StudyData {
            model: c.model.clone(),
            layers: c.layers,
            experts: c.experts,
            k: c.k,
            langs: c.languages.clone(),
            tokens: c.tokens.clone(),
            topk,
            totals,
        })
    }

    fn row(&self, li: usize, layer: usize) -> &[u64] {
        let at = (li * self.layers + layer) * self.experts;
        &self.topk[at..at + self.experts]
    }

    fn total(&self, layer: usize, e: usize) -> u64 {
        self.totals[layer * self.experts + e]
    }

    fn selections(&self, li: usize, layer: usize) -> u64 {
        self.row(li, layer).iter().sum()
    }

    fn all_tokens(&self) -> u64 {
        self.tokens.iter().sum()
    }

    /// The coloured number; `None` where it is undefined (no selections to divide by).
    fn value(&self, m: Measure, li: usize, layer: usize, e: usize) -> Option<f64> {
        let n = self.row(li, layer)[e] as f64;
        let d = match m {
            Measure::Share => self.selections(li, layer),
            Measure::Usage => self.tokens[li],
            Measure::Specialization => self.total(layer, e),
        };
        (d > 0).then(|| n / d as f64)
    }

    /// What uniform routing would give.
    fn uniform(&self, m: Measure) -> f64 {
        match m {
            Measure::Share => 1.0 / self.experts as f64,
            Measure::Usage => self.k as f64 / self.experts as f64,
            Measure::Specialization => 1.0 / self.langs.len() as f64,
        }
    }

    fn effective(&self, li: usize, layer: usize) -> f64 {
        effective_number(self.row(li, layer))
    }

    /// Indices of the languages to show: all (in the study's order) or those asked for, checked.
    fn pick(&self, wanted: &Option<Vec<String>>) -> Result<Vec<usize>> {
        let Some(wanted) = wanted else { return Ok((0..self.langs.len()).collect()) };
        if wanted.is_empty() {
            return Err(Error::invalid("languages", format!("none given; the study has {}", self.langs.join(", "))));
        }
        let mut out = Vec::new();
        for w in wanted {
            let i = self.langs.iter().position(|l| l == w).ok_or_else(|| {
                Error::invalid(
                    "language",
                    format!("{w:?} has no counted tokens; counted languages: {}", self.langs.join(", ")),
                )
            })?;
            if out.contains(&i) {
                return Err(Error::invalid("languages", format!("{w:?} is listed twice")));
            }
            out.push(i);
        }
        Ok(out)
    }

    /// "Korean (ko)", or the tag alone for languages without an English name here.
    fn lang_name(&self, li: usize) -> String {
        lang_label(&self.langs[li])
    }

    fn tokens_line(&self, shown: &[usize]) -> String {
        let parts: Vec<String> =
            shown.iter().map(|&i| format!("{} {}", visible(&self.langs[i]), thousands(self.tokens[i]))).collect();
        format!("tokens: {}", parts.join(", "))
    }
}

fn lang_label(tag: &str) -> String {
    let name = language_name(tag);
    if name == tag {
        visible(tag).into_owned()
    } else {
        format!("{name} ({tag})")
    }
}

/// Okabe–Ito colours (safe for colour-blind readers): English blue, Korean vermillion, Japanese
/// green; other languages get the remaining ones in turn.
fn lang_colour(langs: &[String], li: usize) -> RGBColor {
    let fixed = |tag: &str| match tag {
        "en" => Some(RGBColor(0x00, 0x72, 0xB2)),
        "ko" => Some(RGBColor(0xD5, 0x5E, 0x00)),
        "ja" => Some(RGBColor(0x00, 0x9E, 0x73)),
        _ => None,
    };
    if let Some(c) = fixed(&langs[li]) {
        return c;
    }
    const OTHERS: [RGBColor; 6] = [
        RGBColor(0xCC, 0x79, 0xA7),
        RGBColor(0xE6, 0x9F, 0x00),
        RGBColor(0x56, 0xB4, 0xE9),
        RGBColor(0x66, 0x66, 0x66),
        RGBColor(0x8C, 0x56, 0x4B),
        RGBColor(0x22, 0x22, 0x22),
    ];
    let nth = langs[..li].iter().filter(|l| fixed(l).is_none()).count();
    OTHERS[nth % OTHERS.len()]
}

/// `1234567` → `"1,234,567"`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fraction as a percentage with `d` decimals.
fn pct(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{:.d$}%", x * 100.0)
    } else {
        "–".to_string()
    }
}

/// A signed number with a real minus sign.
fn signed(x: f64, d: usize) -> String {
    let s = format!("{x:+.d$}");
    s.replace('-', "\u{2212}")
}

/// A number with a real minus sign.
fn minus(s: String) -> String {
    s.replace('-', "\u{2212}")
}

// ------------------------------------------------------------------------------------------------
// Drawing helpers (the pixel conventions of heatmap.rs)
// ------------------------------------------------------------------------------------------------

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

const MARGIN: i32 = 12;
const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
const GREY: RGBColor = RGBColor(0x66, 0x66, 0x66);
const LIGHT: RGBColor = RGBColor(0xE4, 0xE4, 0xE4);
const MISSING: RGBColor = RGBColor(0xD0, 0xD0, 0xD0);

/// A text style in our font list, `px` pixels high (plotters writes `font-size = size / 1.24`).
fn font(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Normal),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

fn font_bold(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Bold),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Viridis colour of `v` on `lo..hi` (clamped); grey for a missing value.
fn viridis(v: Option<f64>, lo: f64, hi: f64) -> RGBColor {
    match v {
        Some(v) if v.is_finite() && hi > lo => ViridisRGB::get_color(((v - lo) / (hi - lo)).clamp(0.0, 1.0)),
        _ => MISSING,
    }
}

/// Draws with plotters into an SVG string of `width × height`, marks the root element with
/// `class`, and inserts `overlay` (the hover layer) before the end.
fn render(
    width: i32,
    height: i32,
    class: &str,
    crisp: bool,
    overlay: Option<String>,
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(1) as u32, height.max(1) as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| Error::invalid("figure", format!("plotters could not draw the figure: {e}")))?;
        draw(&root).map_err(|e| Error::invalid("figure", format!("plotters could not draw the figure: {e}")))?;
        root.present().map_err(|e| Error::invalid("figure", format!("plotters could not finish the figure: {e}")))?;
    }
    let crisp = if crisp { " shape-rendering=\"crispEdges\"" } else { "" };
    if let Some(rest) = svg.strip_prefix("<svg ") {
        svg = format!("<svg class=\"moe-lens-figure {class}\"{crisp} {rest}");
    }
    if !crisp.is_empty() {
        svg = svg.replace("<circle ", "<circle shape-rendering=\"geometricPrecision\" ");
    }
    if let Some(overlay) = overlay {
        match svg.rfind("</svg>") {
            Some(at) => svg.insert_str(at, &overlay),
            None => return Err(Error::invalid("figure", "plotters wrote an SVG without </svg>")),
        }
    }
    Ok(svg)
}

/// The hover styles of the overlays.
const HOVER_STYLE: &str = "<style>.moe-lens-cell:hover,.moe-lens-bar:hover{stroke:#FF2D55;stroke-width:2px}\
     .moe-lens-point:hover,.moe-lens-diff:hover{stroke:#FF2D55;stroke-width:2px}\
     .moe-lens-label:hover{fill:#FF2D55;fill-opacity:0.08}</style>\n";

/// A transparent rectangle with a tooltip, and `data-*` attributes for programs reading the SVG.
fn tip_rect(s: &mut String, class: &str, (x, y, w, h): (i32, i32, i32, i32), data: &[(&str, String)], tip: &str) {
    let _ = write!(s, "<rect class=\"{class}\" x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\"");
    for (k, v) in data {
        let _ = write!(s, " data-{k}=\"{}\"", xml_escape(v));
    }
    let _ = writeln!(s, " fill-opacity=\"0\"><title>{}</title></rect>", xml_escape(tip));
}

/// A transparent circle with a tooltip and `data-*` attributes.
fn tip_circle(s: &mut String, class: &str, (cx, cy, r): (i32, i32, i32), data: &[(&str, String)], tip: &str) {
    let _ = write!(s, "<circle class=\"{class}\" cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\"");
    for (k, v) in data {
        let _ = write!(s, " data-{k}=\"{}\"", xml_escape(v));
    }
    let _ = writeln!(s, " fill-opacity=\"0\"><title>{}</title></circle>", xml_escape(tip));
}

/// Tick values covering `lo..hi`, the axis extended to the outer ticks, and their decimals.
fn axis(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<f64>, usize) {
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let (t, d) = nice_ticks(lo, hi, target);
    let step = if t.len() >= 2 { t[1] - t[0] } else { (hi - lo) / 4.0 };
    let a = (lo / step - 1e-9).floor() * step;
    let b = (hi / step + 1e-9).ceil() * step;
    let n = ((b - a) / step).round() as i64;
    let ticks = (0..=n).map(|i| a + i as f64 * step).collect();
    (a, b, ticks, d)
}

/// A horizontal viridis colour bar for fractions on `lo..hi`, with percentage ticks below, a caption
/// to its right and, when inside the scale, a mark at the uniform-routing value.
struct ColourBar {
    x: i32,
    y: i32,
    w: i32,
    lo: f64,
    hi: f64,
    caption: String,
    uniform: Option<(f64, String)>,
}

const BAR_H: i32 = 12;

impl ColourBar {
    fn ticks(&self) -> Vec<(i32, String)> {
        let (t, d) = nice_ticks(self.lo * 100.0, self.hi * 100.0, ((self.w / 70) as usize).clamp(3, 7));
        t.into_iter().map(|v| (self.px(v / 100.0), format!("{:.d$}%", if v.abs() < 1e-12 { 0.0 } else { v }))).collect()
    }

    fn px(&self, v: f64) -> i32 {
        self.x + (((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) * self.w as f64).round() as i32
    }

    /// Width taken right of the bar by the caption.
    fn caption_w(&self) -> i32 {
        16 + text_px(&self.caption, 12.0).ceil() as i32
    }

    fn height() -> i32 {
        BAR_H + 28
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let slices = self.w.clamp(1, 160);
        for s in 0..slices {
            let xa = self.x + s * self.w / slices;
            let xb = self.x + (s + 1) * self.w / slices;
            let t = (s as f64 + 0.5) / slices as f64;
            root.draw(&Rectangle::new([(xa, self.y), (xb, self.y + BAR_H)], ViridisRGB::get_color(t).filled()))?;
        }
        root.draw(&Rectangle::new([(self.x, self.y), (self.x + self.w, self.y + BAR_H)], GREY.stroke_width(1)))?;
        let style = font(11.0, INK, HPos::Center, VPos::Top);
        for (x, label) in self.ticks() {
            root.draw(&PathElement::new(vec![(x, self.y + BAR_H), (x, self.y + BAR_H + 4)], INK.stroke_width(1)))?;
            root.draw_text(&label, &style, (x, self.y + BAR_H + 6))?;
        }
        if let Some((u, label)) = &self.uniform {
            if *u > self.lo && *u < self.hi {
                let x = self.px(*u);
                root.draw(&Polygon::new(
                    vec![(x - 4, self.y - 6), (x + 4, self.y - 6), (x, self.y - 1)],
                    INK.filled(),
                ))?;
                root.draw_text(label, &font(10.0, GREY, HPos::Left, VPos::Bottom), (x + 6, self.y - 1))?;
            }
        }
        root.draw_text(
            &self.caption,
            &font(12.0, INK, HPos::Left, VPos::Center),
            (self.x + self.w + 16, self.y + BAR_H / 2),
        )?;
        Ok(())
    }
}

/// The colour scale of a heatmap: the given range (checked) or 0 to the largest value shown.
fn colour_scale(
    range: Option<(f64, f64)>,
    measure: Measure,
    values: impl Iterator<Item = Option<f64>>,
) -> Result<(f64, f64)> {
    if let Some((lo, hi)) = range {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid(
                "range",
                format!("({lo}, {hi}): give two finite numbers, the first smaller (fractions, e.g. 0.0, 0.1)"),
            ));
        }
        return Ok((lo, hi));
    }
    if measure == Measure::Specialization {
        return Ok((0.0, 1.0));
    }
    let hi = values.flatten().filter(|v| v.is_finite()).fold(0.0, f64::max);
    Ok((0.0, if hi > 0.0 { hi } else { 1.0 }))
}

/// The tooltip of one language × expert cell.
fn cell_tip(d: &StudyData, li: usize, layer: usize, e: usize) -> String {
    let name = d.lang_name(li);
    let short = language_name(&d.langs[li]).to_string();
    let n = d.row(li, layer)[e];
    let sel = d.selections(li, layer);
    let mut s = format!("{name} · layer {layer} · expert {e}\n");
    let _ = writeln!(s, "chosen {} times (top-{}) by {} {short} tokens", thousands(n), d.k, thousands(d.tokens[li]));
    match d.value(Measure::Share, li, layer, e) {
        Some(v) => {
            let _ = writeln!(
                s,
                "share of {short}'s {} selections: {} (uniform {})",
                thousands(sel),
                pct(v, 2),
                pct(d.uniform(Measure::Share), 2)
            );
        }
        None => s.push_str("no selections of this language at this layer\n"),
    }
    if let Some(v) = d.value(Measure::Usage, li, layer, e) {
        let _ = writeln!(s, "{short} tokens sent to it: {} (uniform {})", pct(v, 1), pct(d.uniform(Measure::Usage), 1));
    }
    match d.value(Measure::Specialization, li, layer, e) {
        Some(v) => {
            let all = d.all_tokens();
            let token_share = if all > 0 { d.tokens[li] as f64 / all as f64 } else { 0.0 };
            let _ = write!(
                s,
                "specialization {}: {} of expert {e}'s {} selections are {short} ({short} has {} of all tokens)",
                format_args!("{v:.3}"),
                pct(v, 1),
                thousands(d.total(layer, e)),
                pct(token_share, 1)
            );
        }
        None => {
            let _ = write!(s, "specialization undefined: expert {e} was never chosen at layer {layer}");
        }
    }
    s
}

/// A shorter tooltip, for the many small cells of the overview.
fn short_tip(d: &StudyData, li: usize, layer: usize, e: usize) -> String {
    let short = language_name(&d.langs[li]);
    let n = d.row(li, layer)[e];
    let share = d.value(Measure::Share, li, layer, e).map_or("–".to_string(), |v| pct(v, 2));
    let spec = d.value(Measure::Specialization, li, layer, e).map_or("–".to_string(), |v| format!("{v:.2}"));
    format!(
        "{} · layer {layer} · expert {e}\nchosen {} times ({share} of {short}'s selections) · specialization {spec}",
        d.lang_name(li),
        thousands(n)
    )
}

/// The `data-*` attributes of an overview cell (its layer is on the panel).
fn short_data(d: &StudyData, li: usize, layer: usize, e: usize) -> Vec<(&'static str, String)> {
    vec![("lang", d.langs[li].clone()), ("expert", e.to_string()), ("count", d.row(li, layer)[e].to_string())]
}

fn cell_data(d: &StudyData, li: usize, layer: usize, e: usize) -> Vec<(&'static str, String)> {
    vec![
        ("lang", d.langs[li].clone()),
        ("layer", layer.to_string()),
        ("expert", e.to_string()),
        ("count", d.row(li, layer)[e].to_string()),
        ("share", d.value(Measure::Share, li, layer, e).map_or(String::new(), |v| format!("{v:.6}"))),
    ]
}

// ------------------------------------------------------------------------------------------------
// Language × expert heatmap of one layer
// ------------------------------------------------------------------------------------------------

/// What every study chart has besides its own builder methods and `render(tooltips)`: `svg` (with a
/// tooltip on every mark), `svg_still` (without), `save`, `evcxr_display`.
macro_rules! chart_output {
    ($ty:ty, $mark:literal, $file:literal) => {
        impl $ty {
            #[doc = concat!("The SVG document, with a tooltip on every ", $mark, ".")]
            pub fn svg(&self) -> Result<String> {
                self.render(true)
            }

            /// The same picture without the hover layer.
            pub fn svg_still(&self) -> Result<String> {
                self.render(false)
            }

            #[doc = concat!("Writes the SVG (with tooltips) to `path`, e.g. `", $file, "`.")]
            pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
                save_svg(path.as_ref(), &self.svg()?)
            }

            /// Shows the figure in an evcxr notebook cell. Never panics.
            pub fn evcxr_display(&self) {
                show(self);
            }
        }
    };
}

/// The picture half of a chart's [`Figure`] impl: the interactive and the still SVG.
macro_rules! chart_figure {
    () => {
        fn to_html(&self) -> Result<String> {
            Ok(html_of(self.svg()?))
        }
        fn to_still_svg(&self) -> Option<Result<String>> {
            Some(self.svg_still())
        }
    };
}

chart_output!(LanguageHeatmap, "cell", "layer14-languages.svg");
chart_output!(LayersOverview, "cell", "layers.svg");
chart_output!(EffectiveExpertsPlot, "marker", "effective-experts.svg");
chart_output!(TopExperts, "bar", "top-experts.svg");

/// Languages × experts of one layer: each row is a language, each column an expert, the colour is
/// the expert's share of that language's top-k selections (viridis, with a colour bar marking the
/// uniform-routing share 1/64). To the right: each language's tokens and effective number of
/// experts at this layer. Hover a cell for the language, expert, count, share, usage and
/// specialization.
///
/// Make one with `study.language_heatmap(14)?` ([`StudyPlots`]); adjust with [`measure`](Self::measure),
/// [`range`](Self::range) (a fixed colour scale, to compare layers), [`languages`](Self::languages)
/// and [`title`](Self::title).
#[derive(Debug, Clone)]
pub struct LanguageHeatmap {
    data: StudyData,
    layer: usize,
    measure: Measure,
    range: Option<(f64, f64)>,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

impl LanguageHeatmap {
    /// The heatmap of one layer (an index or a hook name) of a study's counts.
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>) -> Result<LanguageHeatmap> {
        let data = StudyData::new(counts)?;
        let layer = layer.into().index(data.layers)?;
        Ok(LanguageHeatmap { data, layer, measure: Measure::Share, range: None, langs: None, title: None })
    }

    /// Colour another number: [`Measure::Usage`] or [`Measure::Specialization`].
    pub fn measure(mut self, measure: Measure) -> Self {
        self.measure = measure;
        self
    }

    /// Fix the colour scale to `lo..=hi` (fractions: `.range(0.0, 0.1)` = 0–10 %), e.g. to compare
    /// layers on the same colours. Checked when drawing.
    pub fn range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }

    /// Show these languages, in this order (default: all, sorted by tag). Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Replace the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The layer drawn.
    pub fn layer(&self) -> usize {
        self.layer
    }

    fn default_title(&self) -> String {
        format!("Layer {}: which experts each language's tokens are sent to", self.layer)
    }

    fn render(&self, tooltips: bool) -> Result<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs)?;
        let layer = self.layer;
        let (lo, hi) = colour_scale(
            self.range,
            self.measure,
            shown.iter().flat_map(|&li| (0..d.experts).map(move |e| d.value(self.measure, li, layer, e))),
        )?;
        let title = self.title.clone().unwrap_or_else(|| self.default_title());
        let subtitle = format!(
            "{} · top-{} of {} experts · {}{}",
            visible(&d.model),
            d.k,
            d.experts,
            d.tokens_line(&shown),
            if tooltips { " · hover a cell for its numbers" } else { "" }
        );

        // Layout.
        let cw = (768 / d.experts as i32).clamp(4, 28);
        let rh = 26;
        let label_w = shown.iter().map(|&li| text_px(&d.lang_name(li), 13.0)).fold(0.0, f64::max).ceil() as i32;
        let label_x = MARGIN + label_w;
        let x0 = label_x + 10;
        let y0 = 80;
        let x1 = x0 + d.experts as i32 * cw;
        let y1 = y0 + shown.len() as i32 * rh;
        let tok_x = x1 + 14 + text_px("999,999", 12.0).max(text_px("tokens", 11.0)).ceil() as i32;
        let eff_x = tok_x + 14 + text_px("effective", 11.0).ceil() as i32;
        let bar = ColourBar {
            x: x0,
            y: y1 + 62,
            w: (d.experts as i32 * cw / 2).clamp(160, 360),
            lo,
            hi,
            caption: self.measure.caption(d.k),
            uniform: Some((d.uniform(self.measure), format!("uniform {}", pct(d.uniform(self.measure), 1)))),
        };
        let note =
            "effective = exp(entropy) of the language's selections at this layer: the number of equally used experts \
                    that would spread them as evenly";
        let note_y = bar.y + ColourBar::height() + 6;
        let width = [
            eff_x + MARGIN,
            bar.x + bar.w + bar.caption_w() + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
            MARGIN * 2 + text_px(note, 11.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(800);
        let height = note_y + 14 + MARGIN;

        let overlay = tooltips.then(|| {
            let mut s = String::from(HOVER_STYLE);
            s.push_str("<g class=\"moe-lens-tooltips\">\n");
            for (r, &li) in shown.iter().enumerate() {
                for e in 0..d.experts {
                    let rect = (x0 + e as i32 * cw, y0 + r as i32 * rh, cw, rh);
                    tip_rect(&mut s, "moe-lens-cell", rect, &cell_data(d, li, layer, e), &cell_tip(d, li, layer, e));
                }
                let row = d.row(li, layer);
                let (top, top_n) = row.iter().enumerate().fold((0, 0), |b, (e, &n)| if n > b.1 { (e, n) } else { b });
                let sel = d.selections(li, layer);
                let tip = format!(
                    "{}: {} tokens, {} selections at layer {layer}\neffective number of experts {:.2}; {} of {} experts chosen at least once\n\
                     most used: expert {top} ({} of the selections); half of the selections go to {} experts",
                    d.lang_name(li),
                    thousands(d.tokens[li]),
                    thousands(sel),
                    d.effective(li, layer),
                    distinct(row),
                    d.experts,
                    pct(if sel > 0 { top_n as f64 / sel as f64 } else { 0.0 }, 1),
                    coverage(row, 0.5)
                );
                tip_rect(&mut s, "moe-lens-label", (MARGIN, y0 + r as i32 * rh, x0 - 2 - MARGIN, rh), &[("lang", d.langs[li].clone())], &tip);
            }
            s.push_str("</g>\n");
            s
        });

        render(width, height, "moe-lens-lang-heatmap", true, overlay, |root| {
            root.draw_text(&visible(&title), &font_bold(16.0, INK, HPos::Left, VPos::Top), (MARGIN, 10))?;
            root.draw_text(&subtitle, &font(12.0, GREY, HPos::Left, VPos::Top), (MARGIN, 34))?;
            // expert ticks above and below
            let tick_top = font(11.0, INK, HPos::Center, VPos::Bottom);
            let tick_bottom = font(11.0, INK, HPos::Center, VPos::Top);
            for e in major_ticks(d.experts) {
                let x = x0 + e as i32 * cw + cw / 2;
                root.draw(&PathElement::new(vec![(x, y0 - 4), (x, y0)], INK.stroke_width(1)))?;
                root.draw_text(&e.to_string(), &tick_top, (x, y0 - 5))?;
                root.draw(&PathElement::new(vec![(x, y1), (x, y1 + 5)], INK.stroke_width(1)))?;
                root.draw_text(&e.to_string(), &tick_bottom, (x, y1 + 7))?;
            }
            root.draw_text(
                &format!("expert (0–{})", d.experts - 1),
                &font(12.0, INK, HPos::Center, VPos::Top),
                ((x0 + x1) / 2, y1 + 24),
            )?;
            // cells
            for (r, &li) in shown.iter().enumerate() {
                for e in 0..d.experts {
                    let (x, y) = (x0 + e as i32 * cw, y0 + r as i32 * rh);
                    let c = viridis(d.value(self.measure, li, layer, e), lo, hi);
                    root.draw(&Rectangle::new([(x, y), (x + cw, y + rh)], c.filled()))?;
                }
                // a thin white line between languages
                if r > 0 {
                    let y = y0 + r as i32 * rh;
                    root.draw(&PathElement::new(vec![(x0, y), (x1, y)], WHITE.stroke_width(1)))?;
                }
            }
            root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x1, y1)], GREY.stroke_width(1)))?;
            // row labels and the numbers on the right
            let head = font(11.0, GREY, HPos::Right, VPos::Bottom);
            root.draw_text("tokens", &head, (tok_x, y0 - 5))?;
            root.draw_text("effective", &head, (eff_x, y0 - 5))?;
            for (r, &li) in shown.iter().enumerate() {
                let cy = y0 + r as i32 * rh + rh / 2;
                let c = lang_colour(&d.langs, li);
                root.draw_text(&d.lang_name(li), &font_bold(13.0, c, HPos::Right, VPos::Center), (label_x, cy))?;
                root.draw_text(&thousands(d.tokens[li]), &font(12.0, INK, HPos::Right, VPos::Center), (tok_x, cy))?;
                root.draw_text(
                    &format!("{:.1}", d.effective(li, layer)),
                    &font(12.0, INK, HPos::Right, VPos::Center),
                    (eff_x, cy),
                )?;
            }
            bar.draw(root)?;
            root.draw_text(note, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, note_y))?;
            Ok(())
        })
    }
}

/// Experts with a labelled tick: every 8th, and the last.
fn major_ticks(experts: usize) -> Vec<usize> {
    let step = if experts > 16 { 8 } else { 1 };
    let mut t: Vec<usize> = (0..experts).step_by(step).collect();
    if let Some(&last) = t.last() {
        if last != experts - 1 && experts - 1 - last >= step / 2 {
            t.push(experts - 1);
        }
    }
    t
}

fn save_svg(path: &Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

fn html_of(svg: String) -> String {
    format!("<div class=\"moe-lens\" style=\"overflow-x:auto\">\n{svg}</div>")
}

impl Figure for LanguageHeatmap {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs).ok()?;
        let mut s = format!(
            "Layer {}: share of each language's top-{} selections per expert (most used first)\n",
            self.layer, d.k
        );
        for li in shown {
            let mut order: Vec<usize> = (0..d.experts).collect();
            let row = d.row(li, self.layer);
            order.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
            let top: Vec<String> = order
                .iter()
                .take(5)
                .map(|&e| format!("{e} {}", pct(d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0), 1)))
                .collect();
            let _ =
                writeln!(s, "  {:<4} effective {:>5.1} · {}", d.langs[li], d.effective(li, self.layer), top.join(", "));
        }
        Some(s.trim_end().to_string())
    }
}

// ------------------------------------------------------------------------------------------------
// All layers at a glance
// ------------------------------------------------------------------------------------------------

/// Every layer at a glance: a grid (4 × 4 for 16 layers) of small language × expert heatmaps, all
/// on one colour scale, each headed by its layer and the languages' effective numbers of experts.
/// Hover a cell for its numbers (as in [`LanguageHeatmap`]).
#[derive(Debug, Clone)]
pub struct LayersOverview {
    data: StudyData,
    measure: Measure,
    range: Option<(f64, f64)>,
    langs: Option<Vec<String>>,
    columns: Option<usize>,
    title: Option<String>,
}

impl LayersOverview {
    /// The overview of a study's counts.
    pub fn new(counts: &Counts) -> Result<LayersOverview> {
        Ok(LayersOverview {
            data: StudyData::new(counts)?,
            measure: Measure::Share,
            range: None,
            langs: None,
            columns: None,
            title: None,
        })
    }

    /// Colour another number (see [`Measure`]).
    pub fn measure(mut self, measure: Measure) -> Self {
        self.measure = measure;
        self
    }

    /// Fix the colour scale to `lo..=hi` (fractions). Checked when drawing.
    pub fn range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }

    /// Show these languages, in this order. Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Panels per row (default: 4 for 16 layers, about the square root of the layer count).
    /// Checked when drawing (1 or more).
    pub fn columns(mut self, columns: usize) -> Self {
        self.columns = Some(columns);
        self
    }

    /// Replace the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    fn render(&self, tooltips: bool) -> Result<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs)?;
        let cols = match self.columns {
            Some(0) => return Err(Error::invalid("columns", "0: give at least 1 panel per row")),
            Some(c) => c.min(d.layers),
            None => ((d.layers as f64).sqrt().ceil() as usize).max(1),
        };
        let grid_rows = d.layers.div_ceil(cols);
        let (lo, hi) = colour_scale(
            self.range,
            self.measure,
            (0..d.layers).flat_map(|l| {
                shown.iter().flat_map(move |&li| (0..d.experts).map(move |e| d.value(self.measure, li, l, e)))
            }),
        )?;
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("All {} layers: which experts each language's tokens are sent to", d.layers));
        let subtitle = format!(
            "{} · top-{} of {} experts · {} · one colour scale for all panels{}",
            visible(&d.model),
            d.k,
            d.experts,
            d.tokens_line(&shown),
            if tooltips { " · hover a cell for its numbers" } else { "" }
        );

        // Layout of one panel: header (layer, effective numbers), then the rows.
        let cw = (192 / d.experts as i32).clamp(2, 12);
        let rh = if shown.len() <= 4 { 12 } else { 9 };
        let label_w =
            shown.iter().map(|&li| text_px(&visible(&d.langs[li]), 10.0)).fold(0.0, f64::max).ceil() as i32 + 6;
        let heat_w = d.experts as i32 * cw;
        let heat_h = shown.len() as i32 * rh;
        let head_h = 32;
        // the header's effective numbers may need more room than the cells (many languages)
        let header_w = (0..d.layers)
            .map(|l| {
                shown
                    .iter()
                    .map(|&li| {
                        text_px(&format!("{} {:.1}", visible(&d.langs[li]), d.effective(li, l)), 10.0).ceil() as i32 + 8
                    })
                    .sum::<i32>()
            })
            .max()
            .unwrap_or(0);
        let panel_w = label_w + heat_w.max(header_w);
        let panel_h = head_h + heat_h;
        let gap_x = 22;
        let gap_y = 16;
        let top = 64;
        let panel_xy = |l: usize| -> (i32, i32) {
            let (r, c) = ((l / cols) as i32, (l % cols) as i32);
            (MARGIN + c * (panel_w + gap_x), top + r * (panel_h + gap_y))
        };
        let grid_w = cols as i32 * panel_w + (cols as i32 - 1) * gap_x;
        let grid_bottom = top + grid_rows as i32 * (panel_h + gap_y) - gap_y;
        let bar = ColourBar {
            x: MARGIN + label_w,
            y: grid_bottom + 40,
            w: (grid_w / 3).clamp(160, 360),
            lo,
            hi,
            caption: format!("{} (same scale in every panel)", self.measure.caption(d.k)),
            uniform: Some((d.uniform(self.measure), format!("uniform {}", pct(d.uniform(self.measure), 1)))),
        };
        let width = [
            MARGIN * 2 + grid_w,
            bar.x + bar.w + bar.caption_w() + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(900);
        let height = bar.y + ColourBar::height() + MARGIN;

        let overlay = tooltips.then(|| {
            let mut s = String::from(HOVER_STYLE);
            s.push_str("<g class=\"moe-lens-tooltips\">\n");
            for l in 0..d.layers {
                let (px, py) = panel_xy(l);
                let _ = writeln!(s, "<g class=\"moe-lens-panel\" data-layer=\"{l}\">");
                let eff: Vec<String> = shown
                    .iter()
                    .map(|&li| {
                        format!("{} {:.2} ({} distinct)", d.langs[li], d.effective(li, l), distinct(d.row(li, l)))
                    })
                    .collect();
                let tip = format!("layer {l}: effective number of experts\n{}", eff.join("\n"));
                tip_rect(&mut s, "moe-lens-label", (px, py, panel_w, head_h - 2), &[("layer", l.to_string())], &tip);
                for (r, &li) in shown.iter().enumerate() {
                    for e in 0..d.experts {
                        let rect = (px + label_w + e as i32 * cw, py + head_h + r as i32 * rh, cw, rh);
                        tip_rect(&mut s, "moe-lens-cell", rect, &short_data(d, li, l, e), &short_tip(d, li, l, e));
                    }
                }
                s.push_str("</g>\n");
            }
            s.push_str("</g>\n");
            s
        });

        render(width, height, "moe-lens-layers-overview", true, overlay, |root| {
            root.draw_text(&visible(&title), &font_bold(16.0, INK, HPos::Left, VPos::Top), (MARGIN, 10))?;
            root.draw_text(&subtitle, &font(12.0, GREY, HPos::Left, VPos::Top), (MARGIN, 34))?;
            for l in 0..d.layers {
                let (px, py) = panel_xy(l);
                let hx = px + label_w;
                root.draw_text(&format!("layer {l}"), &font_bold(12.0, INK, HPos::Left, VPos::Top), (hx, py))?;
                // effective numbers, each in its language's colour
                let mut x = hx;
                let style_tag = |li: usize| font(10.0, lang_colour(&d.langs, li), HPos::Left, VPos::Top);
                for &li in &shown {
                    let t = format!("{} {:.1}", visible(&d.langs[li]), d.effective(li, l));
                    root.draw_text(&t, &style_tag(li), (x, py + 16))?;
                    x += text_px(&t, 10.0).ceil() as i32 + 8;
                }
                let y0 = py + head_h;
                for (r, &li) in shown.iter().enumerate() {
                    let y = y0 + r as i32 * rh;
                    root.draw_text(
                        &visible(&d.langs[li]),
                        &font(10.0, INK, HPos::Right, VPos::Center),
                        (hx - 4, y + rh / 2),
                    )?;
                    for e in 0..d.experts {
                        let x = hx + e as i32 * cw;
                        let c = viridis(d.value(self.measure, li, l, e), lo, hi);
                        root.draw(&Rectangle::new([(x, y), (x + cw, y + rh)], c.filled()))?;
                    }
                }
                root.draw(&Rectangle::new([(hx - 1, y0 - 1), (hx + heat_w, y0 + heat_h)], GREY.stroke_width(1)))?;
                // expert numbers under the panels of the last row
                if l + cols >= d.layers {
                    let st = font(9.0, GREY, HPos::Center, VPos::Top);
                    for e in [0, d.experts / 2, d.experts - 1] {
                        let x = hx + e as i32 * cw + cw / 2;
                        root.draw(&PathElement::new(
                            vec![(x, y0 + heat_h), (x, y0 + heat_h + 3)],
                            GREY.stroke_width(1),
                        ))?;
                        root.draw_text(&e.to_string(), &st, (x, y0 + heat_h + 4))?;
                    }
                    root.draw_text(
                        "expert",
                        &font(9.0, GREY, HPos::Center, VPos::Top),
                        (hx + heat_w * 3 / 4, y0 + heat_h + 4),
                    )?;
                }
            }
            bar.draw(root)?;
            Ok(())
        })
    }
}

impl Figure for LayersOverview {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs).ok()?;
        let mut s = format!(
            "Effective number of experts per layer ({}):\nlayer",
            shown.iter().map(|&i| d.langs[i].as_str()).collect::<Vec<_>>().join(", ")
        );
        for &li in &shown {
            let _ = write!(s, " {:>7}", d.langs[li]);
        }
        for l in 0..d.layers {
            let _ = write!(s, "\n{l:>5}");
            for &li in &shown {
                let _ = write!(s, " {:>7.2}", d.effective(li, l));
            }
        }
        Some(s)
    }
}

// ------------------------------------------------------------------------------------------------
// Effective number of experts per layer, with the token-matched comparison
// ------------------------------------------------------------------------------------------------

/// The effective number of experts (exp of the entropy of the top-k selections) per layer, one line
/// per language, over all counted tokens. With [`with_comparison`](Self::with_comparison), a
/// second panel below shows the token-matched difference (e.g. Korean − English) per layer with its
/// bootstrap interval, a zero line, and filled markers where the interval excludes 0.
///
/// The top panel is descriptive: a language with more tokens tends to show a larger effective
/// number just because it has more tokens. The comparison panel is the fair one.
#[derive(Debug, Clone)]
pub struct EffectiveExpertsPlot {
    data: StudyData,
    comparisons: Vec<Comparison>,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

impl EffectiveExpertsPlot {
    /// The plot of a study's counts.
    pub fn new(counts: &Counts) -> Result<EffectiveExpertsPlot> {
        Ok(EffectiveExpertsPlot { data: StudyData::new(counts)?, comparisons: Vec::new(), langs: None, title: None })
    }

    /// Adds a token-matched comparison (`study.compare("ko", "en")?`) as a difference with its
    /// interval per layer, in a panel below. Several may be added (`ko − en`, `ja − en`). It must
    /// come from the same study: checked when drawing.
    pub fn with_comparison(mut self, comparison: &Comparison) -> Self {
        self.comparisons.push(comparison.clone());
        self
    }

    /// Show these languages' lines, in this order. Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Replace the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The values drawn for one language: its effective number at every layer (what
    /// `study.metrics().effective(lang)` gives).
    pub fn values(&self, lang: &str) -> Result<Vec<f64>> {
        let li = self.data.pick(&Some(vec![lang.to_string()]))?[0];
        Ok((0..self.data.layers).map(|l| self.data.effective(li, l)).collect())
    }

    fn check_comparisons(&self) -> Result<()> {
        let d = &self.data;
        for c in &self.comparisons {
            for (lang, tokens) in [(&c.a, c.a_tokens), (&c.b, c.b_tokens)] {
                let Some(li) = d.langs.iter().position(|l| l == lang) else {
                    return Err(Error::invalid(
                        "comparison",
                        format!("{} − {}: {lang:?} is not a language of this study ({})", c.a, c.b, d.langs.join(", ")),
                    ));
                };
                if d.tokens[li] != tokens {
                    return Err(Error::invalid(
                        "comparison",
                        format!(
                            "{} − {} was computed from another scan ({lang} has {} tokens there, {} here): compare on this study",
                            c.a,
                            c.b,
                            thousands(tokens),
                            thousands(d.tokens[li])
                        ),
                    ));
                }
            }
            if let Some(l) = c.layers.iter().find(|l| l.layer >= d.layers) {
                return Err(Error::UnknownLayer { requested: l.layer.to_string(), layers: d.layers });
            }
            if c.layers.iter().any(|l| !(l.diff.is_finite() && l.ci_low.is_finite() && l.ci_high.is_finite())) {
                return Err(Error::invalid(
                    "comparison",
                    format!("{} − {} has a non-finite difference or interval", c.a, c.b),
                ));
            }
        }
        Ok(())
    }

    fn render(&self, tooltips: bool) -> Result<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs)?;
        self.check_comparisons()?;
        let nl = d.layers;
        let eff: Vec<Vec<f64>> = shown.iter().map(|&li| (0..nl).map(|l| d.effective(li, l)).collect()).collect();
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| "How many experts does each language use, layer by layer?".to_string());
        let subtitle = format!(
            "{} · top-{} of {} experts · {}{}",
            visible(&d.model),
            d.k,
            d.experts,
            d.tokens_line(&shown),
            if tooltips { " · hover a point for its numbers" } else { "" }
        );

        // x: layers
        let step = 42;
        let pad = 18;
        let y_label_w = 56;
        let x0 = MARGIN + y_label_w;
        let x1 = x0 + pad * 2 + (nl as i32 - 1).max(0) * step;
        let lx = |l: f64| x0 + pad + (l * step as f64).round() as i32;

        // top panel
        let ty0 = 82;
        let th = 270;
        let ty1 = ty0 + th;
        let (elo, ehi) =
            eff.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = (ehi - elo).max(1.0);
        let (ya, yb, yticks, ydec) = axis((elo - span * 0.08).max(0.0), ehi + span * 0.08, 6);
        let ty = |v: f64| ty1 - ((v - ya) / (yb - ya) * th as f64).round() as i32;

        // legend right of the plot
        let legend_x = x1 + 26;
        let legend_items: Vec<(usize, String)> =
            shown.iter().map(|&li| (li, format!("{} · {} tokens", d.lang_name(li), thousands(d.tokens[li])))).collect();
        let legend_w = legend_items.iter().map(|(_, t)| text_px(t, 12.0)).fold(0.0, f64::max).ceil() as i32 + 34;

        // comparison panel
        let has_cmp = !self.comparisons.is_empty();
        let by0 = ty1 + 78;
        let bh = 190;
        let by1 = by0 + bh;
        let (dlo, dhi) = self
            .comparisons
            .iter()
            .flat_map(|c| c.layers.iter())
            .fold((0.0f64, 0.0f64), |(a, b), l| (a.min(l.ci_low).min(l.diff), b.max(l.ci_high).max(l.diff)));
        let dspan = (dhi - dlo).max(0.5);
        let (da, db, dticks, ddec) = axis(dlo - dspan * 0.06, dhi + dspan * 0.06, 6);
        let by = |v: f64| by1 - ((v - da) / (db - da) * bh as f64).round() as i32;
        let nc = self.comparisons.len();
        let offset =
            |j: usize| if nc <= 1 { 0.0 } else { (j as f64 - (nc - 1) as f64 / 2.0) * (0.5 / nc as f64).min(0.18) };
        let level = self.comparisons.first().map_or(0.95, |c| c.options.level);
        let cmp_title = match self.comparisons.as_slice() {
            [c] => format!(
                "Token-matched difference {} − {} in effective experts, with {:.0}% bootstrap intervals",
                language_name(&c.a),
                language_name(&c.b),
                c.options.level * 100.0
            ),
            _ => format!(
                "Token-matched differences in effective experts, with {:.0}% bootstrap intervals",
                level * 100.0
            ),
        };
        let cmp_legend: Vec<(usize, String)> = self
            .comparisons
            .iter()
            .map(|c| {
                let li = d.langs.iter().position(|l| *l == c.a).unwrap_or(0);
                let (f, m, n) = c.tally();
                (
                    li,
                    format!(
                        "{} − {} · {} tokens each · fewer {f}, more {m}, unclear {n}",
                        c.a,
                        c.b,
                        thousands(c.matched_tokens as u64)
                    ),
                )
            })
            .collect();
        let cmp_legend_w = cmp_legend
            .iter()
            .map(|(_, t)| text_px(t, 12.0))
            .fold(text_px("interval contains 0: no clear difference", 12.0), f64::max)
            .ceil() as i32
            + 34;
        let mut notes: Vec<String> = vec![format!(
            "Effective number = exp(entropy) of the top-{} selections: 1 = every token sent to the same experts, {} = all experts equally used.",
            d.k, d.experts
        )];
        if has_cmp {
            notes.push("Top panel: all counted tokens of each language; more tokens alone push the number up, so compare languages with the panel below.".into());
            let n = self.comparisons[0].layers.len();
            notes.push(format!(
                "Below 0: the first language uses fewer experts than the second at equal token counts. Each interval is {:.0}% on its own: \
                 of {n} layers, about {:.1} may exclude 0 by chance.",
                level * 100.0,
                n as f64 * (1.0 - level)
            ));
        } else {
            notes.push(
                "All counted tokens of each language; more tokens alone push the number up. To compare languages at equal token counts, \
                 add .with_comparison(&study.compare(\"ko\", \"en\")?)"
                    .into(),
            );
        }
        let bottom = if has_cmp { by1 } else { ty1 };
        let notes_y = bottom + 48;
        let width = [
            legend_x + legend_w.max(if has_cmp { cmp_legend_w } else { 0 }) + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .chain(notes.iter().map(|n| MARGIN * 2 + text_px(n, 11.0).ceil() as i32))
        .max()
        .unwrap_or(900);
        let height = notes_y + notes.len() as i32 * 16 + MARGIN;

        let overlay = tooltips.then(|| {
            let mut s = String::from(HOVER_STYLE);
            s.push_str("<g class=\"moe-lens-tooltips\">\n");
            for (j, &li) in shown.iter().enumerate() {
                for (l, &v) in eff[j].iter().enumerate() {
                    let row = d.row(li, l);
                    let tip = format!(
                        "{} · layer {l}\neffective number of experts {v:.2} (entropy {:.3} nats)\n{} of {} experts chosen at least once; \
                         half of the selections go to {} experts\nall {} tokens of {} (not token-matched)",
                        d.lang_name(li),
                        entropy(row),
                        distinct(row),
                        d.experts,
                        coverage(row, 0.5),
                        thousands(d.tokens[li]),
                        language_name(&d.langs[li])
                    );
                    let data = [("lang", d.langs[li].clone()), ("layer", l.to_string()), ("value", format!("{v:.6}"))];
                    tip_circle(&mut s, "moe-lens-point", (lx(l as f64), ty(v), 7), &data, &tip);
                }
            }
            for (j, c) in self.comparisons.iter().enumerate() {
                let (an, bn) = (language_name(&c.a), language_name(&c.b));
                for lc in &c.layers {
                    let tip = format!(
                        "layer {}: {an} − {bn} = {} experts (token-matched)\n{:.0}% interval [{}, {}]\n{}\n\
                         {} {:.2} vs {} {:.2}, {} tokens each",
                        lc.layer,
                        signed(lc.diff, 2),
                        c.options.level * 100.0,
                        signed(lc.ci_low, 2),
                        signed(lc.ci_high, 2),
                        lc.verdict.sentence(&c.a),
                        c.a,
                        lc.a_effective,
                        c.b,
                        lc.b_effective,
                        thousands(c.matched_tokens as u64)
                    );
                    let data = [
                        ("lang", c.a.clone()),
                        ("vs", c.b.clone()),
                        ("layer", lc.layer.to_string()),
                        ("diff", format!("{:.6}", lc.diff)),
                        ("low", format!("{:.6}", lc.ci_low)),
                        ("high", format!("{:.6}", lc.ci_high)),
                        ("verdict", lc.verdict.as_str().to_string()),
                    ];
                    let x = lx(lc.layer as f64 + offset(j));
                    let (ya, yb) = (by(lc.ci_high), by(lc.ci_low));
                    // the whole interval is the hover target
                    tip_rect(&mut s, "moe-lens-diff", (x - 6, ya - 4, 12, yb - ya + 8), &data, &tip);
                }
            }
            s.push_str("</g>\n");
            s
        });

        render(width, height, "moe-lens-effective", false, overlay, |root| {
            root.draw_text(&visible(&title), &font_bold(16.0, INK, HPos::Left, VPos::Top), (MARGIN, 10))?;
            root.draw_text(&subtitle, &font(12.0, GREY, HPos::Left, VPos::Top), (MARGIN, 34))?;
            root.draw_text(
                "effective number of experts, all tokens",
                &font_bold(12.0, INK, HPos::Left, VPos::Bottom),
                (x0, ty0 - 8),
            )?;

            // x ticks and grid, both panels
            let xt = font(11.0, INK, HPos::Center, VPos::Top);
            let panels: Vec<(i32, i32)> = if has_cmp { vec![(ty0, ty1), (by0, by1)] } else { vec![(ty0, ty1)] };
            for &(pa, pb) in &panels {
                for l in 0..nl {
                    let x = lx(l as f64);
                    root.draw(&PathElement::new(vec![(x, pa), (x, pb)], LIGHT.stroke_width(1)))?;
                    root.draw(&PathElement::new(vec![(x, pb), (x, pb + 4)], INK.stroke_width(1)))?;
                    root.draw_text(&l.to_string(), &xt, (x, pb + 6))?;
                }
                root.draw_text("layer", &font(12.0, INK, HPos::Center, VPos::Top), ((x0 + x1) / 2, pb + 22))?;
            }
            // y ticks and grid, top panel
            let yt = font(11.0, INK, HPos::Right, VPos::Center);
            for v in &yticks {
                let y = ty(*v);
                root.draw(&PathElement::new(vec![(x0, y), (x1, y)], LIGHT.stroke_width(1)))?;
                root.draw(&PathElement::new(vec![(x0 - 4, y), (x0, y)], INK.stroke_width(1)))?;
                root.draw_text(&minus(format!("{v:.ydec$}")), &yt, (x0 - 6, y))?;
            }
            root.draw(&Rectangle::new([(x0, ty0), (x1, ty1)], GREY.stroke_width(1)))?;
            // lines and markers
            for (j, &li) in shown.iter().enumerate() {
                let c = lang_colour(&d.langs, li);
                let pts: Vec<(i32, i32)> = (0..nl).map(|l| (lx(l as f64), ty(eff[j][l]))).collect();
                root.draw(&PathElement::new(pts.clone(), c.stroke_width(2)))?;
                for &p in &pts {
                    root.draw(&Circle::new(p, 4, c.filled()))?;
                    root.draw(&Circle::new(p, 4, WHITE.stroke_width(1)))?;
                }
            }
            // legend
            let mut y = ty0 + 8;
            for (li, t) in &legend_items {
                let c = lang_colour(&d.langs, *li);
                root.draw(&PathElement::new(vec![(legend_x, y), (legend_x + 24, y)], c.stroke_width(2)))?;
                root.draw(&Circle::new((legend_x + 12, y), 4, c.filled()))?;
                root.draw_text(t, &font(12.0, INK, HPos::Left, VPos::Center), (legend_x + 32, y))?;
                y += 20;
            }

            if has_cmp {
                root.draw_text(&cmp_title, &font_bold(12.0, INK, HPos::Left, VPos::Bottom), (x0, by0 - 8))?;
                for v in &dticks {
                    let y = by(*v);
                    root.draw(&PathElement::new(vec![(x0, y), (x1, y)], LIGHT.stroke_width(1)))?;
                    root.draw(&PathElement::new(vec![(x0 - 4, y), (x0, y)], INK.stroke_width(1)))?;
                    root.draw_text(&minus(format!("{v:.ddec$}")), &yt, (x0 - 6, y))?;
                }
                // the zero line
                let y = by(0.0);
                root.draw(&PathElement::new(vec![(x0, y), (x1, y)], INK.stroke_width(1)))?;
                root.draw(&Rectangle::new([(x0, by0), (x1, by1)], GREY.stroke_width(1)))?;
                let hint = font(10.0, GREY, HPos::Right, VPos::Top);
                let same_b = self.comparisons.iter().all(|c| c.b == self.comparisons[0].b);
                let b = language_name(&self.comparisons[0].b).to_string();
                let (above, below) = if same_b {
                    (format!("above 0: more experts than {b}"), format!("below 0: fewer experts than {b}"))
                } else {
                    ("above 0: the first uses more".to_string(), "below 0: the first uses fewer".to_string())
                };
                root.draw_text(&above, &hint, (x1 - 4, by0 + 3))?;
                root.draw_text(&below, &font(10.0, GREY, HPos::Right, VPos::Bottom), (x1 - 4, by1 - 3))?;
                for (j, c) in self.comparisons.iter().enumerate() {
                    let li = d.langs.iter().position(|l| *l == c.a).unwrap_or(0);
                    let col = lang_colour(&d.langs, li);
                    // the band of the intervals
                    let mut band: Vec<(i32, i32)> =
                        c.layers.iter().map(|l| (lx(l.layer as f64 + offset(j)), by(l.ci_high))).collect();
                    band.extend(c.layers.iter().rev().map(|l| (lx(l.layer as f64 + offset(j)), by(l.ci_low))));
                    if nc == 1 && band.len() >= 4 {
                        root.draw(&Polygon::new(band, col.mix(0.12).filled()))?;
                    }
                    let pts: Vec<(i32, i32)> =
                        c.layers.iter().map(|l| (lx(l.layer as f64 + offset(j)), by(l.diff))).collect();
                    root.draw(&PathElement::new(pts.clone(), col.mix(0.55).stroke_width(1)))?;
                    for (lc, &(x, y)) in c.layers.iter().zip(&pts) {
                        let (ya, yb) = (by(lc.ci_high), by(lc.ci_low));
                        root.draw(&PathElement::new(vec![(x, ya), (x, yb)], col.stroke_width(2)))?;
                        root.draw(&PathElement::new(vec![(x - 4, ya), (x + 4, ya)], col.stroke_width(2)))?;
                        root.draw(&PathElement::new(vec![(x - 4, yb), (x + 4, yb)], col.stroke_width(2)))?;
                        if lc.verdict == Verdict::NoClearDifference {
                            root.draw(&Circle::new((x, y), 4, WHITE.filled()))?;
                            root.draw(&Circle::new((x, y), 4, col.stroke_width(2)))?;
                        } else {
                            root.draw(&Circle::new((x, y), 5, col.filled()))?;
                        }
                    }
                }
                // legend of the comparison panel
                let mut y = by0 + 8;
                for (li, t) in &cmp_legend {
                    let c = lang_colour(&d.langs, *li);
                    root.draw(&PathElement::new(
                        vec![(legend_x + 12, y - 7), (legend_x + 12, y + 7)],
                        c.stroke_width(2),
                    ))?;
                    root.draw(&Circle::new((legend_x + 12, y), 4, c.filled()))?;
                    root.draw_text(t, &font(12.0, INK, HPos::Left, VPos::Center), (legend_x + 32, y))?;
                    y += 20;
                }
                y += 6;
                root.draw(&Circle::new((legend_x + 12, y), 5, GREY.filled()))?;
                root.draw_text("interval excludes 0", &font(12.0, INK, HPos::Left, VPos::Center), (legend_x + 32, y))?;
                y += 20;
                root.draw(&Circle::new((legend_x + 12, y), 4, WHITE.filled()))?;
                root.draw(&Circle::new((legend_x + 12, y), 4, GREY.stroke_width(2)))?;
                root.draw_text(
                    "interval contains 0: no clear difference",
                    &font(12.0, INK, HPos::Left, VPos::Center),
                    (legend_x + 32, y),
                )?;
            }
            for (i, n) in notes.iter().enumerate() {
                root.draw_text(n, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, notes_y + i as i32 * 16))?;
            }
            Ok(())
        })
    }
}

impl Figure for EffectiveExpertsPlot {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs).ok()?;
        let mut s =
            String::from("Effective number of experts per layer (all tokens; compare languages token-matched)\nlayer");
        for &li in &shown {
            let _ = write!(s, " {:>7}", d.langs[li]);
        }
        for c in &self.comparisons {
            let _ = write!(s, "  {:>22}", format!("{}−{} [{:.0}% CI]", c.a, c.b, c.options.level * 100.0));
        }
        for l in 0..d.layers {
            let _ = write!(s, "\n{l:>5}");
            for &li in &shown {
                let _ = write!(s, " {:>7.2}", d.effective(li, l));
            }
            for c in &self.comparisons {
                match c.layer(l) {
                    Some(x) => {
                        let _ = write!(s, "  {:>22}", format!("{:+.2} [{:+.2}, {:+.2}]", x.diff, x.ci_low, x.ci_high));
                    }
                    None => {
                        let _ = write!(s, "  {:>22}", "");
                    }
                }
            }
        }
        Some(s)
    }
}

// ------------------------------------------------------------------------------------------------
// Top experts per language
// ------------------------------------------------------------------------------------------------

/// Each language's `n` most used experts of one layer, as horizontal bars side by side (one panel
/// per language, one scale): the bar is the fraction of the language's tokens that had the expert
/// among their top-k; the dashed line is what uniform routing gives (k/64). Experts in bold are
/// among the top `n` of every language shown. Hover a bar for the counts.
#[derive(Debug, Clone)]
pub struct TopExperts {
    data: StudyData,
    layer: usize,
    n: usize,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

/// One bar of [`TopExperts`].
#[derive(Debug, Clone, PartialEq)]
pub struct TopExpert {
    pub lang: String,
    /// 1 = most used.
    pub rank: usize,
    pub expert: usize,
    /// Top-k selections of the expert by the language's tokens at this layer.
    pub count: u64,
    /// `count / tokens(lang)`: the fraction of the language's tokens sent to the expert.
    pub usage: f64,
    /// `count / selections(lang)`.
    pub share: f64,
}

impl TopExperts {
    /// The bars of one layer; `n` experts per language (1 to the number of experts).
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>, n: usize) -> Result<TopExperts> {
        let data = StudyData::new(counts)?;
        let layer = layer.into().index(data.layers)?;
        if n == 0 || n > data.experts {
            return Err(Error::invalid("n", format!("{n}: show between 1 and {} experts per language", data.experts)));
        }
        Ok(TopExperts { data, layer, n, langs: None, title: None })
    }

    /// Show these languages, in this order. Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Replace the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The bars: for each language shown, its most used experts, most used first (ties: lower
    /// expert first); experts never chosen are left out.
    pub fn bars(&self) -> Result<Vec<TopExpert>> {
        let d = &self.data;
        let mut out = Vec::new();
        for li in d.pick(&self.langs)? {
            out.extend(self.bars_of(li));
        }
        Ok(out)
    }

    fn bars_of(&self, li: usize) -> Vec<TopExpert> {
        let d = &self.data;
        let row = d.row(li, self.layer);
        let sel = d.selections(li, self.layer);
        let mut order: Vec<usize> = (0..d.experts).filter(|&e| row[e] > 0).collect();
        order.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(self.n)
            .enumerate()
            .map(|(r, e)| TopExpert {
                lang: d.langs[li].clone(),
                rank: r + 1,
                expert: e,
                count: row[e],
                usage: if d.tokens[li] > 0 { row[e] as f64 / d.tokens[li] as f64 } else { 0.0 },
                share: if sel > 0 { row[e] as f64 / sel as f64 } else { 0.0 },
            })
            .collect()
    }

    fn render(&self, tooltips: bool) -> Result<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs)?;
        let layer = self.layer;
        let bars: Vec<Vec<TopExpert>> = shown.iter().map(|&li| self.bars_of(li)).collect();
        let uniform = d.uniform(Measure::Usage);
        let max = bars.iter().flatten().map(|b| b.usage).fold(uniform, f64::max);
        let (_, xmax, _, _) = axis(0.0, max * 100.0, 4);
        let xmax = xmax / 100.0;
        // experts in every shown language's list
        let common: Vec<usize> = if shown.len() > 1 {
            (0..d.experts).filter(|e| bars.iter().all(|bs| bs.iter().any(|b| b.expert == *e))).collect()
        } else {
            Vec::new()
        };
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("Layer {layer}: each language's {} most used experts", self.n));
        let subtitle = format!(
            "{} · top-{} of {} experts · {}{}",
            visible(&d.model),
            d.k,
            d.experts,
            d.tokens_line(&shown),
            if tooltips { " · hover a bar for its numbers" } else { "" }
        );

        // Layout: one panel per language.
        let rh = 20;
        let bar_h = 14;
        let label_w = text_px(&format!("#{}", d.experts - 1), 12.0).ceil() as i32 + 8;
        let bar_w = 190;
        let value_w = text_px("100.0%", 11.0).ceil() as i32 + 6;
        let panel_w = label_w + bar_w + value_w;
        let gap = 26;
        let y0 = 96;
        let rows = self.n as i32;
        let y1 = y0 + rows * rh;
        let px = |j: usize| MARGIN + j as i32 * (panel_w + gap);
        let bx = |j: usize, v: f64| px(j) + label_w + ((v / xmax).clamp(0.0, 1.0) * bar_w as f64).round() as i32;
        let mut notes = vec![format!(
            "Bar: share of the language's tokens that had the expert among their top {} at layer {layer}. Dashed line: uniform routing ({} = {}/{}).",
            d.k,
            pct(uniform, 1),
            d.k,
            d.experts
        )];
        if !common.is_empty() {
            notes.push(format!(
                "Bold numbers: experts among the top {} of every language shown ({}).",
                self.n,
                common.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        let notes_y = y1 + 46;
        let width = [
            px(shown.len()) - gap + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .chain(notes.iter().map(|n| MARGIN * 2 + text_px(n, 11.0).ceil() as i32))
        .max()
        .unwrap_or(900);
        let height = notes_y + notes.len() as i32 * 16 + MARGIN;

        let overlay = tooltips.then(|| {
            let mut s = String::from(HOVER_STYLE);
            s.push_str("<g class=\"moe-lens-tooltips\">\n");
            for (j, (&li, bs)) in shown.iter().zip(&bars).enumerate() {
                let short = language_name(&d.langs[li]);
                for b in bs {
                    let y = y0 + (b.rank as i32 - 1) * rh;
                    let spec = d.value(Measure::Specialization, li, layer, b.expert).unwrap_or(0.0);
                    let tip = format!(
                        "{} · layer {layer} · expert {} (rank {})\n{} of {} {short} tokens had it among their top {}: {}\n\
                         share of {short}'s selections: {}\nspecialization: {} of expert {}'s {} selections are {short}",
                        d.lang_name(li),
                        b.expert,
                        b.rank,
                        thousands(b.count),
                        thousands(d.tokens[li]),
                        d.k,
                        pct(b.usage, 1),
                        pct(b.share, 2),
                        pct(spec, 1),
                        b.expert,
                        thousands(d.total(layer, b.expert))
                    );
                    let data = [
                        ("lang", b.lang.clone()),
                        ("layer", layer.to_string()),
                        ("rank", b.rank.to_string()),
                        ("expert", b.expert.to_string()),
                        ("count", b.count.to_string()),
                        ("usage", format!("{:.6}", b.usage)),
                    ];
                    tip_rect(&mut s, "moe-lens-bar", (px(j), y, panel_w, rh), &data, &tip);
                }
            }
            s.push_str("</g>\n");
            s
        });

        render(width, height, "moe-lens-top-experts", true, overlay, |root| {
            root.draw_text(&visible(&title), &font_bold(16.0, INK, HPos::Left, VPos::Top), (MARGIN, 10))?;
            root.draw_text(&subtitle, &font(12.0, GREY, HPos::Left, VPos::Top), (MARGIN, 34))?;
            let (xt, _) = nice_ticks(0.0, xmax * 100.0, 4);
            for (j, (&li, bs)) in shown.iter().zip(&bars).enumerate() {
                let c = lang_colour(&d.langs, li);
                let x = px(j);
                root.draw_text(&d.lang_name(li), &font_bold(13.0, c, HPos::Left, VPos::Bottom), (x, y0 - 24))?;
                root.draw_text(
                    &format!("{} tokens", thousands(d.tokens[li])),
                    &font(11.0, GREY, HPos::Left, VPos::Bottom),
                    (x, y0 - 10),
                )?;
                // grid and axis
                for v in &xt {
                    let gx = bx(j, v / 100.0);
                    root.draw(&PathElement::new(vec![(gx, y0 - 4), (gx, y1)], LIGHT.stroke_width(1)))?;
                    root.draw(&PathElement::new(vec![(gx, y1), (gx, y1 + 4)], INK.stroke_width(1)))?;
                    root.draw_text(&format!("{v:.0}%"), &font(11.0, INK, HPos::Center, VPos::Top), (gx, y1 + 6))?;
                }
                root.draw(&PathElement::new(vec![(x + label_w, y0 - 4), (x + label_w, y1)], GREY.stroke_width(1)))?;
                root.draw(&PathElement::new(vec![(x + label_w, y1), (x + label_w + bar_w, y1)], GREY.stroke_width(1)))?;
                for b in bs {
                    let y = y0 + (b.rank as i32 - 1) * rh + (rh - bar_h) / 2;
                    let end = bx(j, b.usage);
                    root.draw(&Rectangle::new([(x + label_w, y), (end.max(x + label_w + 1), y + bar_h)], c.filled()))?;
                    let label = format!("#{}", b.expert);
                    let st = if common.contains(&b.expert) {
                        font_bold(12.0, INK, HPos::Right, VPos::Center)
                    } else {
                        font(12.0, GREY, HPos::Right, VPos::Center)
                    };
                    root.draw_text(&label, &st, (x + label_w - 5, y + bar_h / 2))?;
                    root.draw_text(
                        &pct(b.usage, 1),
                        &font(11.0, INK, HPos::Left, VPos::Center),
                        (end + 4, y + bar_h / 2),
                    )?;
                }
                if bs.len() < self.n {
                    let y = y0 + bs.len() as i32 * rh + rh / 2;
                    root.draw_text(
                        &format!("(only {} experts chosen)", bs.len()),
                        &font(11.0, GREY, HPos::Left, VPos::Center),
                        (x + label_w + 6, y),
                    )?;
                }
                let ux = bx(j, uniform);
                root.draw(&DashedPathElement::new(vec![(ux, y0 - 4), (ux, y1)], 4, 3, INK.stroke_width(1)))?;
            }
            root.draw_text(
                "share of the language's tokens sent to the expert",
                &font(12.0, INK, HPos::Left, VPos::Top),
                (MARGIN + label_w, y1 + 24),
            )?;
            for (i, n) in notes.iter().enumerate() {
                root.draw_text(n, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, notes_y + i as i32 * 16))?;
            }
            Ok(())
        })
    }
}

impl Figure for TopExperts {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let mut s = format!("Layer {}: most used experts (share of the language's tokens)", self.layer);
        for li in d.pick(&self.langs).ok()? {
            let parts: Vec<String> =
                self.bars_of(li).iter().map(|b| format!("{} {}", b.expert, pct(b.usage, 1))).collect();
            let _ = write!(s, "\n  {:<4} {}", d.langs[li], parts.join(", "));
        }
        Some(s)
    }
}

// ------------------------------------------------------------------------------------------------
// The counts as a table
// ------------------------------------------------------------------------------------------------

/// How often each expert is chosen for each language at one layer: the `n` experts with the largest
/// share of the selections averaged over the languages (so a language with many tokens does not
/// decide alone), one row each, with every language's count and its share of that language's
/// selections. Shows as an HTML table in a notebook; `println!("{table}")` prints text.
#[derive(Debug, Clone)]
pub struct ExpertTable {
    data: StudyData,
    layer: usize,
    n: usize,
    langs: Option<Vec<String>>,
}

impl ExpertTable {
    /// The table of one layer with `n` experts (1 to the number of experts).
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>, n: usize) -> Result<ExpertTable> {
        let data = StudyData::new(counts)?;
        let layer = layer.into().index(data.layers)?;
        if n == 0 || n > data.experts {
            return Err(Error::invalid("n", format!("{n}: show between 1 and {} experts", data.experts)));
        }
        Ok(ExpertTable { data, layer, n, langs: None })
    }

    /// Show these languages' columns, in this order. Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// The experts of the table: largest average share first (each language shown counts equally,
    /// whatever its number of tokens; ties: lower expert first).
    pub fn experts(&self) -> Result<Vec<usize>> {
        let shown = self.data.pick(&self.langs)?;
        Ok(self.order(&shown))
    }

    fn order(&self, shown: &[usize]) -> Vec<usize> {
        let d = &self.data;
        let mean = |e: usize| -> f64 {
            shown.iter().map(|&li| d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0)).sum()
        };
        let mut order: Vec<usize> = (0..d.experts).collect();
        order.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)).then(a.cmp(&b)));
        order.truncate(self.n);
        order
    }

    fn caption(&self) -> String {
        format!(
            "Layer {}: how often each expert is chosen (top-{}) for each language — the {} experts with the largest share, \
             averaged over the languages",
            self.layer, self.data.k, self.n
        )
    }

    /// The table as an HTML fragment.
    pub fn html(&self) -> Result<String> {
        let d = &self.data;
        let shown = d.pick(&self.langs)?;
        let order = self.order(&shown);
        let max_share = order
            .iter()
            .flat_map(|&e| shown.iter().filter_map(move |&li| d.value(Measure::Share, li, self.layer, e)))
            .fold(0.0, f64::max);
        let fontf = xml_escape(FONT_FAMILY);
        let th = "style=\"padding:3px 8px;text-align:center;border-bottom:1px solid #888;background:#fff;color:#222\"";
        let mut s = format!(
            "<div class=\"moe-lens-expert-table\" style=\"overflow-x:auto;background:#fff;color:#222;padding:6px;font-family:{fontf}\">\n\
             <table style=\"border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums\">\n\
             <caption style=\"caption-side:top;text-align:left;font-weight:bold;padding:0 0 6px 0;color:#222\">{}</caption>\n<thead><tr><th {th}>expert</th>",
            xml_escape(&self.caption())
        );
        for &li in &shown {
            let _ = write!(
                s,
                "<th {th} title=\"{} tokens\">{}</th>",
                thousands(d.tokens[li]),
                xml_escape(&d.lang_name(li))
            );
        }
        let _ = write!(s, "<th {th}>all</th></tr></thead>\n<tbody>\n");
        for &e in &order {
            let _ = write!(s, "<tr><td style=\"padding:2px 8px;text-align:right;font-weight:bold\">{e}</td>");
            let mut all = 0;
            for &li in &shown {
                let n = d.row(li, self.layer)[e];
                all += n;
                let share = d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0);
                let t = if max_share > 0.0 { (share / max_share).clamp(0.0, 1.0) } else { 0.0 };
                let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
                let (r, g, b) = (mix(255.0, 49.0), mix(255.0, 104.0), mix(255.0, 142.0));
                let fg = if t > 0.55 { "#fff" } else { "#111" };
                let _ = write!(
                    s,
                    "<td class=\"moe-lens-count\" data-lang=\"{}\" data-expert=\"{e}\" data-count=\"{n}\" \
                     style=\"padding:2px 8px;text-align:right;background:rgb({r},{g},{b});color:{fg}\" title=\"{}\">{} \
                     <span style=\"font-size:11px\">({})</span></td>",
                    xml_escape(&d.langs[li]),
                    xml_escape(&cell_tip(d, li, self.layer, e)),
                    thousands(n),
                    pct(share, 1)
                );
            }
            let _ =
                writeln!(s, "<td style=\"padding:2px 8px;text-align:right;color:#555\">{}</td></tr>", thousands(all));
        }
        s.push_str("</tbody></table>\n");
        let note = format!(
            "Each cell: how many tokens of the language had the expert among their top {} at layer {}, and (in brackets) its share of \
             the language's selections (uniform routing: {}). Darker = larger share. Hover a cell for more.",
            d.k,
            self.layer,
            pct(d.uniform(Measure::Share), 2)
        );
        let _ =
            write!(s, "<div style=\"font-size:12px;color:#555;padding-top:4px\">{}</div>\n</div>", xml_escape(&note));
        Ok(s)
    }

    /// Shows the table in an evcxr notebook cell. Never panics.
    pub fn evcxr_display(&self) {
        show(self);
    }
}

impl std::fmt::Display for ExpertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.data;
        let shown = match d.pick(&self.langs) {
            Ok(s) => s,
            Err(e) => return write!(f, "error: {e}"),
        };
        writeln!(f, "{}", self.caption())?;
        write!(f, "{:>6}", "expert")?;
        for &li in &shown {
            write!(f, "  {:>16}", visible(&d.langs[li]))?;
        }
        writeln!(f, "  {:>8}", "all")?;
        for e in self.order(&shown) {
            write!(f, "{e:>6}")?;
            let mut all = 0;
            for &li in &shown {
                let n = d.row(li, self.layer)[e];
                all += n;
                let cell =
                    format!("{} ({})", thousands(n), pct(d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0), 1));
                write!(f, "  {cell:>16}")?;
            }
            writeln!(f, "  {:>8}", thousands(all))?;
        }
        write!(f, "(count of top-{} selections, and the share of the language's selections)", d.k)
    }
}

impl Figure for ExpertTable {
    fn to_html(&self) -> Result<String> {
        self.html()
    }
    fn to_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(pct(0.125, 1), "12.5%");
        assert_eq!(signed(-1.234, 2), "\u{2212}1.23");
        assert_eq!(signed(0.5, 1), "+0.5");
    }

    #[test]
    fn axes_cover_the_data_with_nice_ends() {
        let (a, b, t, _) = axis(17.3, 42.9, 6);
        assert!(a <= 17.3 && b >= 42.9);
        assert_eq!(t.first().copied(), Some(a));
        assert_eq!(t.last().copied(), Some(b));
        let (a, b, t, _) = axis(3.0, 3.0, 5);
        assert!(a < 3.0 && b > 3.0 && t.len() >= 2);
    }

    #[test]
    fn languages_get_distinct_colours() {
        let langs: Vec<String> = ["common", "en", "ja", "ko", "mixed"].iter().map(|s| s.to_string()).collect();
        let cs: Vec<RGBColor> = (0..langs.len()).map(|i| lang_colour(&langs, i)).collect();
        for i in 0..cs.len() {
            for j in i + 1..cs.len() {
                assert_ne!(cs[i], cs[j]);
            }
        }
    }
}
