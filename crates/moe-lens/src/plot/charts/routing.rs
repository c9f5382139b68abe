//! Pictures of the routing analyses ([`RoutingAnalyses`]): the co-activation heatmap of one layer
//! and the consecutive-token rates per layer, next to what a random router gives.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::{model_label, text_px, visible};
use super::style::{axis, font, font_bold, lang_colour, major_ticks, tip_circle, tip_rect, viridis, ColourBar};
use super::style::{Area, DrawResult, GREY, INK, LIGHT, MARGIN};
use super::text::{lang_label, pct, thousands};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::study::analyses::{Consecutive, RoutingAnalyses};
use crate::study::Study;

chart_output!(CoactivationHeatmap, "cell", "layer14-coactivation.svg");
chart_output!(ConsecutivePlot, "point", "consecutive.svg");

/// Picture methods on the routing analyses, so that a notebook can write
/// `analyses.coactivation_heatmap(14)?` (bring it into scope with `use moe_lens::plot::AnalysesPlots;`).
/// On a [`Study`], each call first computes the analyses of its scanned sentences
/// ([`Study::analyses`]); keep `let analyses = study.analyses()?;` to draw several.
pub trait AnalysesPlots {
    /// The co-activation heatmap of one layer (an index or a hook name): see [`CoactivationHeatmap`].
    fn coactivation_heatmap(&self, layer: impl Into<LayerRef>) -> Result<CoactivationHeatmap>;

    /// The consecutive-token rates per layer, one line per language, with the random router's values
    /// as dashed lines: see [`ConsecutivePlot`].
    fn consecutive_plot(&self) -> Result<ConsecutivePlot>;
}

impl AnalysesPlots for RoutingAnalyses {
    fn coactivation_heatmap(&self, layer: impl Into<LayerRef>) -> Result<CoactivationHeatmap> {
        CoactivationHeatmap::new(self, layer)
    }
    fn consecutive_plot(&self) -> Result<ConsecutivePlot> {
        ConsecutivePlot::new(self)
    }
}

impl AnalysesPlots for Study {
    fn coactivation_heatmap(&self, layer: impl Into<LayerRef>) -> Result<CoactivationHeatmap> {
        CoactivationHeatmap::new(&self.analyses()?, layer)
    }
    fn consecutive_plot(&self) -> Result<ConsecutivePlot> {
        ConsecutivePlot::new(&self.analyses()?)
    }
}

fn no_tokens() -> Error {
    Error::invalid("analyses", "no counted tokens: scan some sentences first (lens.scan(&sentences, …))")
}

// ------------------------------------------------------------------------------------------------
// Co-activation
// ------------------------------------------------------------------------------------------------

/// The co-activation of one layer in the OLMoE paper's normalised form: row `i`, column `j` is
/// coloured by the share of expert `i`'s tokens that also chose expert `j` (viridis; the colour bar
/// marks what a random router gives, (k−1)/(E−1)). The diagonal (the expert itself, 100 %) is drawn
/// dark. Hover a cell for the counts.
///
/// Make one with `analyses.coactivation_heatmap(14)?` ([`AnalysesPlots`]); [`top`](Self::top) keeps
/// only the busiest experts (so that it reads on a slide), [`title`](Self::title) replaces the title.
#[derive(Debug, Clone)]
pub struct CoactivationHeatmap {
    model: String,
    layer: usize,
    k: usize,
    tokens: u64,
    /// The E × E counts of the layer.
    counts: Vec<Vec<u64>>,
    top: Option<usize>,
    title: Option<String>,
}

impl CoactivationHeatmap {
    /// The heatmap of one layer of the analyses.
    pub fn new(a: &RoutingAnalyses, layer: impl Into<LayerRef>) -> Result<CoactivationHeatmap> {
        let layer = layer.into().index(a.layers)?;
        if a.tokens() == 0 {
            return Err(no_tokens());
        }
        let counts = a.coactivation(layer)?;
        Ok(CoactivationHeatmap {
            model: a.model.clone(),
            layer,
            k: a.k,
            tokens: a.tokens(),
            counts,
            top: None,
            title: None,
        })
    }

    /// Show only the `n` experts chosen most often at this layer (ties: smaller id), in id order.
    /// `n` larger than the number of experts shows them all; `0` is an error when drawing.
    pub fn top(mut self, n: usize) -> Self {
        self.top = Some(n);
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

    /// The experts shown, in the order of the rows (and columns).
    pub fn experts_shown(&self) -> Result<Vec<usize>> {
        let e = self.counts.len();
        match self.top {
            None => Ok((0..e).collect()),
            Some(0) => Err(Error::invalid("top", "0: show at least one expert (e.g. .top(16))")),
            Some(n) => {
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| self.counts[b][b].cmp(&self.counts[a][a]).then(a.cmp(&b)));
                order.truncate(n.min(e));
                order.sort_unstable();
                Ok(order)
            }
        }
    }

    /// The share of expert `i`'s tokens that also chose `j` (0 when `i` was never chosen).
    fn share(&self, i: usize, j: usize) -> f64 {
        let own = self.counts[i][i];
        if own == 0 {
            0.0
        } else {
            self.counts[i][j] as f64 / own as f64
        }
    }

    /// What a random router gives off the diagonal: each of the other k−1 picks is one of E−1.
    fn random_share(&self) -> f64 {
        let e = self.counts.len();
        if e <= 1 {
            0.0
        } else {
            (self.k.saturating_sub(1)) as f64 / (e - 1) as f64
        }
    }

    fn layout(&self, tooltips: bool) -> Result<CoactLayout<'_>> {
        let shown = self.experts_shown()?;
        let n = shown.len();
        let hi = shown
            .iter()
            .flat_map(|&i| shown.iter().filter(move |&&j| j != i).map(move |&j| (i, j)))
            .map(|(i, j)| self.share(i, j))
            .fold(0.0, f64::max);
        let hi = if hi > 0.0 { hi } else { 1.0 };
        let title = self.title.clone().unwrap_or_else(|| {
            format!("Layer {}: which experts are chosen together (share of the row expert's tokens)", self.layer)
        });
        let subset = if n < self.counts.len() {
            format!(" · the {n} busiest of {} experts", self.counts.len())
        } else {
            String::new()
        };
        let subtitle = format!(
            "{} · top-{} of {} experts · {} tokens{subset}{}",
            model_label(&self.model),
            self.k,
            self.counts.len(),
            thousands(self.tokens),
            if tooltips { " · hover a cell for its counts" } else { "" }
        );
        let cw = (640 / n.max(1) as i32).clamp(6, 32);
        let label_w = text_px("63", 11.0).ceil() as i32 + 8;
        let x0 = MARGIN + text_px("expert i", 12.0).ceil() as i32 + label_w;
        let y0 = 104;
        let x1 = x0 + n as i32 * cw;
        let y1 = y0 + n as i32 * cw;
        let random = self.random_share();
        let bar = ColourBar {
            x: x0,
            y: y1 + 30,
            w: (n as i32 * cw / 2).clamp(200, 360),
            lo: 0.0,
            hi,
            caption: "share of the row expert's tokens that also chose the column expert".to_string(),
            uniform: Some((random, format!("random router {}", pct(random, 1)))),
        };
        let note_y = bar.y + ColourBar::height() + 6;
        let note = format!(
            "Row i, column j: of the tokens that chose expert i, the share that also chose expert j. Dark diagonal: \
             the expert itself. A random top-{} router gives (k−1)/(E−1) = {} everywhere.",
            self.k,
            pct(random, 1)
        );
        let width = [
            x1 + MARGIN,
            bar.x + bar.w + bar.caption_w() + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
            MARGIN * 2 + text_px(&note, 11.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(800);
        Ok(CoactLayout {
            h: self,
            shown,
            frame: Frame { title, subtitle, size: (width, note_y + 14 + MARGIN) },
            hi,
            cw,
            x0,
            y0,
            x1,
            y1,
            bar,
            note,
            note_y,
        })
    }
}

struct CoactLayout<'a> {
    h: &'a CoactivationHeatmap,
    shown: Vec<usize>,
    frame: Frame,
    hi: f64,
    cw: i32,
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
    bar: ColourBar,
    note: String,
    note_y: i32,
}

impl Chart for CoactLayout<'_> {
    const CLASS: &'static str = "moe-lens-coactivation";

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let (h, cw, x0, y0) = (self.h, self.cw, self.x0, self.y0);
        for (r, &i) in self.shown.iter().enumerate() {
            for (c, &j) in self.shown.iter().enumerate() {
                let (x, y) = (x0 + c as i32 * cw, y0 + r as i32 * cw);
                let colour = if i == j { INK } else { viridis(Some(h.share(i, j)), 0.0, self.hi) };
                root.draw(&Rectangle::new([(x, y), (x + cw, y + cw)], colour.filled()))?;
            }
        }
        root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (self.x1, self.y1)], GREY.stroke_width(1)))?;
        // expert ids: every one when the cells are wide enough, else the usual ticks
        let n = self.shown.len();
        let ticks: Vec<usize> = if cw >= 14 { (0..n).collect() } else { major_ticks(n) };
        let top = font(11.0, INK, HPos::Center, VPos::Bottom);
        let left = font(11.0, INK, HPos::Right, VPos::Center);
        for t in ticks {
            let id = self.shown[t].to_string();
            root.draw_text(&id, &top, (x0 + t as i32 * cw + cw / 2, y0 - 4))?;
            root.draw_text(&id, &left, (x0 - 5, y0 + t as i32 * cw + cw / 2))?;
        }
        root.draw_text(
            "column j: the expert also chosen →",
            &font(12.0, INK, HPos::Left, VPos::Bottom),
            (x0, y0 - 22),
        )?;
        root.draw_text("expert i ↓", &font(12.0, INK, HPos::Left, VPos::Bottom), (MARGIN, y0 - 4))?;
        self.bar.draw(root)?;
        root.draw_text(&self.note, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, self.note_y))
    }

    fn tooltips(&self, s: &mut String) {
        let (h, cw, x0, y0, layer) = (self.h, self.cw, self.x0, self.y0, self.h.layer);
        for (r, &i) in self.shown.iter().enumerate() {
            let own = h.counts[i][i];
            for (c, &j) in self.shown.iter().enumerate() {
                let count = h.counts[i][j];
                let share = h.share(i, j);
                let tip = if i == j {
                    format!(
                        "layer {layer} · expert {i}\nchosen by {} of {} tokens ({})",
                        thousands(own),
                        thousands(h.tokens),
                        pct(own as f64 / h.tokens.max(1) as f64, 1)
                    )
                } else {
                    format!(
                        "layer {layer} · expert {i} with expert {j}\n{} of expert {i}'s {} tokens also chose expert \
                         {j}: {}\n(random router: {}; expert {j} was chosen by {} tokens)",
                        thousands(count),
                        thousands(own),
                        pct(share, 2),
                        pct(h.random_share(), 1),
                        thousands(h.counts[j][j])
                    )
                };
                let data = [
                    ("layer", layer.to_string()),
                    ("i", i.to_string()),
                    ("j", j.to_string()),
                    ("count", count.to_string()),
                    ("share", format!("{share:.6}")),
                ];
                let rect = (x0 + c as i32 * cw, y0 + r as i32 * cw, cw, cw);
                tip_rect(s, "moe-lens-cell", rect, &data, &tip);
            }
        }
    }
}

impl Figure for CoactivationHeatmap {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let shown = self.experts_shown().ok()?;
        let mut busiest = shown.clone();
        busiest.sort_by(|&a, &b| self.counts[b][b].cmp(&self.counts[a][a]).then(a.cmp(&b)));
        let mut s = format!(
            "Layer {}: co-activation, each busy expert's top partners (share of its tokens; random router {})\n",
            self.layer,
            pct(self.random_share(), 1)
        );
        for &i in busiest.iter().take(8) {
            let mut partners: Vec<usize> = shown.iter().copied().filter(|&j| j != i).collect();
            partners.sort_by(|&a, &b| self.counts[i][b].cmp(&self.counts[i][a]).then(a.cmp(&b)));
            let top: Vec<String> =
                partners.iter().take(3).map(|&j| format!("{j} {}", pct(self.share(i, j), 1))).collect();
            let _ = writeln!(s, "  expert {i:>3} ({} tokens): {}", thousands(self.counts[i][i]), top.join(", "));
        }
        Some(s.trim_end().to_string())
    }
}

// ------------------------------------------------------------------------------------------------
// Consecutive tokens
// ------------------------------------------------------------------------------------------------

/// Consecutive tokens per layer, as the Mixtral paper reports them: top panel, the share of
/// neighbouring token pairs whose first token's top-1 expert is also the next token's top-1;
/// bottom panel, the mean number of the k experts the two tokens share. One line per language; the
/// dashed line is what a router picking at random gives (1/E and k²/E). Hover a point for the
/// numbers (with the top-1-in-next-top-2 rate).
///
/// Make one with `analyses.consecutive_plot()?` ([`AnalysesPlots`]); adjust with
/// [`languages`](Self::languages) and [`title`](Self::title).
#[derive(Debug, Clone)]
pub struct ConsecutivePlot {
    model: String,
    experts: usize,
    k: usize,
    layers: usize,
    series: Vec<(String, Vec<Consecutive>)>,
    random: Consecutive,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

/// The two panels: what they plot and how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Panel {
    Top1Same,
    MeanShared,
}

impl Panel {
    const ALL: [Panel; 2] = [Panel::Top1Same, Panel::MeanShared];

    /// The plotted number (percent for the rate).
    fn value(self, c: &Consecutive) -> f64 {
        match self {
            Panel::Top1Same => c.top1_same * 100.0,
            Panel::MeanShared => c.mean_shared,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Panel::Top1Same => "top1_same",
            Panel::MeanShared => "mean_shared",
        }
    }
}

impl ConsecutivePlot {
    /// The plot of every language of the analyses (English, Korean, Japanese first).
    pub fn new(a: &RoutingAnalyses) -> Result<ConsecutivePlot> {
        let mut langs = a.languages();
        if langs.is_empty() || a.tokens() == 0 {
            return Err(no_tokens());
        }
        let rank = |l: &str| ["en", "ko", "ja"].iter().position(|x| *x == l).unwrap_or(3);
        langs.sort_by(|x, y| rank(x).cmp(&rank(y)).then(x.cmp(y)));
        let series = langs.into_iter().map(|l| Ok((l.clone(), a.consecutive(&l)?))).collect::<Result<Vec<_>>>()?;
        Ok(ConsecutivePlot {
            model: a.model.clone(),
            experts: a.experts,
            k: a.k,
            layers: a.layers,
            series,
            random: a.random_router(),
            langs: None,
            title: None,
        })
    }

    /// Show these languages, in this order (default: all). Checked when drawing.
    pub fn languages<S: AsRef<str>>(mut self, langs: impl IntoIterator<Item = S>) -> Self {
        self.langs = Some(langs.into_iter().map(|s| s.as_ref().to_string()).collect());
        self
    }

    /// Replace the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The series drawn: the languages shown, each with its rates per layer.
    fn shown(&self) -> Result<Vec<&(String, Vec<Consecutive>)>> {
        let Some(want) = &self.langs else {
            return Ok(self.series.iter().filter(|(_, v)| v.iter().any(|c| c.pairs > 0)).collect());
        };
        if want.is_empty() {
            return Err(Error::invalid("languages", "an empty list: give at least one, e.g. [\"en\", \"ko\"]"));
        }
        let known: Vec<&str> = self.series.iter().map(|(l, _)| l.as_str()).collect();
        want.iter()
            .map(|l| {
                self.series.iter().find(|(x, _)| x == l).ok_or_else(|| {
                    Error::invalid("language", format!("{l:?} has no counted tokens; counted: {}", known.join(", ")))
                })
            })
            .collect()
    }

    fn layout(&self, tooltips: bool) -> Result<ConsLayout<'_>> {
        let shown = self.shown()?;
        let all: Vec<String> = self.series.iter().map(|(l, _)| l.clone()).collect();
        let colours =
            shown.iter().map(|(l, _)| lang_colour(&all, all.iter().position(|x| x == l).unwrap_or(0))).collect();
        let panels = Panel::ALL.map(|p| {
            let hi = shown.iter().flat_map(|(_, v)| v.iter().map(|c| p.value(c))).fold(p.value(&self.random), f64::max);
            Scale::new(hi)
        });
        let title = self.title.clone().unwrap_or_else(|| {
            "Consecutive tokens: does the next token go to the same experts? (dashed: a random router)".to_string()
        });
        let pairs: Vec<String> = shown
            .iter()
            .map(|(l, v)| format!("{} {}", visible(l), thousands(v.first().map_or(0, |c| c.pairs))))
            .collect();
        let subtitle = format!(
            "{} · top-{} of {} experts · token pairs: {}{}",
            model_label(&self.model),
            self.k,
            self.experts,
            pairs.join(", "),
            if tooltips { " · hover a point for its numbers" } else { "" }
        );
        let x1 = X0 + 2 * PAD + (self.layers.saturating_sub(1) as i32) * STEP;
        let legend_x = x1 + 24;
        let legend_w = shown.iter().map(|(l, _)| text_px(&lang_label(l), 12.0).ceil() as i32).max().unwrap_or(0);
        let legend_w = legend_w.max(text_px("random router", 12.0).ceil() as i32) + 40;
        let width = [
            legend_x + legend_w + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(800);
        let height = PANEL_Y[1] + PANEL_H + 44 + MARGIN;
        Ok(ConsLayout {
            p: self,
            shown,
            colours,
            panels,
            frame: Frame { title, subtitle, size: (width, height) },
            x1,
            legend_x,
        })
    }
}

const X0: i32 = 70;
const PAD: i32 = 14;
const STEP: i32 = 40;
const PANEL_H: i32 = 190;
const PANEL_Y: [i32; 2] = [84, 84 + PANEL_H + 70];

/// A panel's value axis.
struct Scale {
    a: f64,
    b: f64,
    ticks: Vec<f64>,
    dec: usize,
}

impl Scale {
    /// An axis from 0 (rates and counts are never negative) to a nice tick at or above `hi`.
    fn new(hi: f64) -> Scale {
        let (a, b, mut ticks, dec) = axis(0.0, hi, 5);
        ticks.retain(|&t| t >= -1e-9);
        let a = a.max(0.0);
        Scale { a, b, ticks, dec }
    }
}

struct ConsLayout<'a> {
    p: &'a ConsecutivePlot,
    shown: Vec<&'a (String, Vec<Consecutive>)>,
    colours: Vec<RGBColor>,
    panels: [Scale; 2],
    frame: Frame,
    x1: i32,
    legend_x: i32,
}

impl ConsLayout<'_> {
    fn lx(&self, l: usize) -> i32 {
        X0 + PAD + l as i32 * STEP
    }

    /// The pixel row of value `v` in panel `k`.
    fn y(&self, k: usize, v: f64) -> i32 {
        let s = &self.panels[k];
        PANEL_Y[k] + PANEL_H - ((v - s.a) / (s.b - s.a) * PANEL_H as f64).round() as i32
    }

    fn caption(&self, panel: Panel) -> String {
        match panel {
            Panel::Top1Same => "top-1 expert the same as the next token's (% of token pairs)".to_string(),
            Panel::MeanShared => format!("experts the next token shares (mean, of {})", self.p.k),
        }
    }

    fn draw_panel(&self, root: &Area<'_>, k: usize, panel: Panel) -> DrawResult {
        let (y0, y1) = (PANEL_Y[k], PANEL_Y[k] + PANEL_H);
        root.draw_text(&self.caption(panel), &font_bold(13.0, INK, HPos::Left, VPos::Bottom), (X0, y0 - 6))?;
        let yt = font(11.0, INK, HPos::Right, VPos::Center);
        let s = &self.panels[k];
        for v in &s.ticks {
            let y = self.y(k, *v);
            root.draw(&PathElement::new(vec![(X0, y), (self.x1, y)], LIGHT.stroke_width(1)))?;
            root.draw(&PathElement::new(vec![(X0 - 4, y), (X0, y)], INK.stroke_width(1)))?;
            let dec = s.dec;
            let label = if panel == Panel::Top1Same { format!("{v:.dec$}%") } else { format!("{v:.dec$}") };
            root.draw_text(&label, &yt, (X0 - 6, y))?;
        }
        let xt = font(11.0, INK, HPos::Center, VPos::Top);
        for l in 0..self.p.layers {
            let x = self.lx(l);
            root.draw(&PathElement::new(vec![(x, y1), (x, y1 + 4)], INK.stroke_width(1)))?;
            root.draw_text(&l.to_string(), &xt, (x, y1 + 6))?;
        }
        root.draw_text("layer", &font(12.0, INK, HPos::Center, VPos::Top), ((X0 + self.x1) / 2, y1 + 22))?;
        // the random router: a dashed line
        let y = self.y(k, panel.value(&self.p.random));
        let mut x = X0;
        while x < self.x1 {
            let xe = (x + 8).min(self.x1);
            root.draw(&PathElement::new(vec![(x, y), (xe, y)], GREY.stroke_width(2)))?;
            x += 14;
        }
        for (j, (_, v)) in self.shown.iter().enumerate() {
            let c = self.colours[j];
            let pts: Vec<(i32, i32)> =
                v.iter().enumerate().map(|(l, r)| (self.lx(l), self.y(k, panel.value(r)))).collect();
            root.draw(&PathElement::new(pts.clone(), c.stroke_width(2)))?;
            for &p in &pts {
                root.draw(&Circle::new(p, 4, c.filled()))?;
                root.draw(&Circle::new(p, 4, WHITE.stroke_width(1)))?;
            }
        }
        root.draw(&Rectangle::new([(X0, y0), (self.x1, y1)], GREY.stroke_width(1)))
    }

    fn draw_legend(&self, root: &Area<'_>) -> DrawResult {
        let (lx, mut y) = (self.legend_x, PANEL_Y[0] + 8);
        let label = font(12.0, INK, HPos::Left, VPos::Center);
        for (j, (l, _)) in self.shown.iter().enumerate() {
            let c = self.colours[j];
            root.draw(&PathElement::new(vec![(lx, y), (lx + 24, y)], c.stroke_width(2)))?;
            root.draw(&Circle::new((lx + 12, y), 4, c.filled()))?;
            root.draw_text(&lang_label(l), &label, (lx + 32, y))?;
            y += 20;
        }
        root.draw(&PathElement::new(vec![(lx, y), (lx + 8, y)], GREY.stroke_width(2)))?;
        root.draw(&PathElement::new(vec![(lx + 14, y), (lx + 22, y)], GREY.stroke_width(2)))?;
        root.draw_text("random router", &label, (lx + 32, y))
    }
}

impl Chart for ConsLayout<'_> {
    const CLASS: &'static str = "moe-lens-consecutive";
    const CRISP: bool = false;

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        for (k, panel) in Panel::ALL.into_iter().enumerate() {
            self.draw_panel(root, k, panel)?;
        }
        self.draw_legend(root)
    }

    fn tooltips(&self, s: &mut String) {
        let r = &self.p.random;
        let random = format!(
            "random router: {} the same, {} in the next top-2, {:.2} of {} shared",
            pct(r.top1_same, 1),
            pct(r.top1_in_next_top2, 1),
            r.mean_shared,
            self.p.k
        );
        for (k, panel) in Panel::ALL.into_iter().enumerate() {
            for (l, v) in self.shown.iter() {
                for (layer, c) in v.iter().enumerate() {
                    let tip = format!(
                        "{} · layer {layer}\n{} neighbouring token pairs\ntop-1 the same: {}; top-1 in the next \
                         token's top-2: {}\nexperts shared: {:.2} of {}\n{random}",
                        lang_label(l),
                        thousands(c.pairs),
                        pct(c.top1_same, 2),
                        pct(c.top1_in_next_top2, 2),
                        c.mean_shared,
                        self.p.k
                    );
                    let data = [
                        ("lang", l.clone()),
                        ("layer", layer.to_string()),
                        ("measure", panel.key().to_string()),
                        ("value", format!("{:.6}", panel.value(c))),
                    ];
                    tip_circle(s, "moe-lens-point", (self.lx(layer), self.y(k, panel.value(c)), 7), &data, &tip);
                }
            }
            let v = panel.value(r);
            let y = self.y(k, v);
            let data = [("measure", panel.key().to_string()), ("value", format!("{v:.6}"))];
            tip_rect(s, "moe-lens-random", (X0, y - 3, self.x1 - X0, 6), &data, &random);
        }
    }
}

impl Figure for ConsecutivePlot {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let shown = self.shown().ok()?;
        let r = &self.random;
        let mut s = format!(
            "Consecutive tokens per layer (random router: top-1 the same {}, {:.2} of {} experts shared)\n",
            pct(r.top1_same, 1),
            r.mean_shared,
            self.k
        );
        for (l, v) in shown {
            let range = |f: &dyn Fn(&Consecutive) -> f64| {
                let lo = v.iter().map(f).fold(f64::INFINITY, f64::min);
                let hi = v.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
                (lo, hi)
            };
            let (a, b) = range(&|c| c.top1_same);
            let (x, y) = range(&|c| c.mean_shared);
            let _ = writeln!(
                s,
                "  {:<4} top-1 the same {}–{} · shared {x:.2}–{y:.2} of {}",
                visible(l),
                pct(a, 1),
                pct(b, 1),
                self.k
            );
        }
        Some(s.trim_end().to_string())
    }
}
