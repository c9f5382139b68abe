//! Top experts per language.

use std::fmt::Write as _;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::{nice_ticks, text_px};
use super::style::{axis, font, font_bold, lang_colour, tip_rect, Area, DrawResult, GREY, INK, LIGHT, MARGIN};
use super::text::{lang_name, pct, subtitle, thousands};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::corpus::language_name;
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::study::shares::{ExpertShares, Measure, TopExpert};
use crate::study::Counts;

chart_output!(TopExperts, "bar", "top-experts.svg");

/// Each language's `n` most used experts of one layer, as horizontal bars side by side (one panel
/// per language, one scale): the bar is the fraction of the language's tokens that had the expert
/// among their top-k; the dashed line is what uniform routing gives (k/64). Experts in bold are
/// among the top `n` of every language shown. Hover a bar for the counts.
#[derive(Debug, Clone)]
pub struct TopExperts {
    data: ExpertShares,
    layer: usize,
    n: usize,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

impl TopExperts {
    /// The bars of one layer; `n` experts per language (1 to the number of experts).
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>, n: usize) -> Result<TopExperts> {
        let data = ExpertShares::new(counts)?;
        let layer = layer.into().index(data.layers())?;
        if n == 0 || n > data.experts() {
            return Err(Error::invalid(
                "n",
                format!("{n}: show between 1 and {} experts per language", data.experts()),
            ));
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
        for li in d.select(self.langs.as_deref())? {
            out.extend(d.top_experts(li, self.layer, self.n));
        }
        Ok(out)
    }

    /// Checks the options and places everything.
    fn layout(&self, tooltips: bool) -> Result<Layout<'_>> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref())?;
        let layer = self.layer;
        let bars: Vec<Vec<TopExpert>> = shown.iter().map(|&li| d.top_experts(li, layer, self.n)).collect();
        let uniform = d.uniform(Measure::Usage);
        let max = bars.iter().flatten().map(|b| b.usage).fold(uniform, f64::max);
        let (_, xmax, _, _) = axis(0.0, max * 100.0, 4);
        let xmax = xmax / 100.0;
        // experts in every shown language's list
        let common = if shown.len() > 1 { d.common_experts(&bars) } else { Vec::new() };
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("Layer {layer}: each language's {} most used experts", self.n));
        let subtitle = subtitle(d, &shown, "", tooltips.then_some("bar"));

        // One panel per language.
        let label_w = text_px(&format!("#{}", d.experts() - 1), 12.0).ceil() as i32 + 8;
        let panel_w = label_w + BAR_W + text_px("100.0%", 11.0).ceil() as i32 + 6;
        let y1 = Y0 + self.n as i32 * ROW_H;
        let mut notes = vec![format!(
            "Bar: share of the language's tokens that had the expert among their top {} at layer {layer}. Dashed line: \
             uniform routing ({} = {}/{}).",
            d.k(),
            pct(uniform, 1),
            d.k(),
            d.experts()
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
            MARGIN + shown.len() as i32 * (panel_w + GAP) - GAP + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .chain(notes.iter().map(|n| MARGIN * 2 + text_px(n, 11.0).ceil() as i32))
        .max()
        .unwrap_or(900);
        let height = notes_y + notes.len() as i32 * 16 + MARGIN;
        Ok(Layout {
            d,
            layer,
            n: self.n,
            shown,
            bars,
            uniform,
            xmax,
            common,
            frame: Frame { title, subtitle, size: (width, height) },
            label_w,
            panel_w,
            y1,
            notes,
            notes_y,
        })
    }
}

/// Height of a row, and of the bar in it.
const ROW_H: i32 = 20;
const BAR_H: i32 = 14;
/// Length of a full bar (the end of the scale).
const BAR_W: i32 = 190;
/// Space between panels.
const GAP: i32 = 26;
/// Top of the bars.
const Y0: i32 = 96;

/// A [`TopExperts`] placed: one panel of `panel_w` per language shown (expert labels in `label_w`,
/// then the bars on a scale `0..xmax`), rows from `Y0` to `y1`.
struct Layout<'a> {
    d: &'a ExpertShares,
    layer: usize,
    n: usize,
    shown: Vec<usize>,
    /// The bars of each language shown.
    bars: Vec<Vec<TopExpert>>,
    uniform: f64,
    xmax: f64,
    /// Experts among the bars of every language shown (drawn bold).
    common: Vec<usize>,
    frame: Frame,
    label_w: i32,
    panel_w: i32,
    y1: i32,
    notes: Vec<String>,
    notes_y: i32,
}

impl Layout<'_> {
    /// Left edge of panel `j`.
    fn px(&self, j: usize) -> i32 {
        MARGIN + j as i32 * (self.panel_w + GAP)
    }

    /// The pixel column of value `v` in panel `j`.
    fn bx(&self, j: usize, v: f64) -> i32 {
        self.px(j) + self.label_w + ((v / self.xmax).clamp(0.0, 1.0) * BAR_W as f64).round() as i32
    }

    /// Language `li`'s panel `j`: its name and tokens, the grid and axis, the bars with their expert
    /// and value, and the uniform-routing line.
    fn draw_panel(&self, root: &Area<'_>, j: usize, li: usize, bs: &[TopExpert], xt: &[f64]) -> DrawResult {
        let (d, x, label_w, y1) = (self.d, self.px(j), self.label_w, self.y1);
        let c = lang_colour(d.languages(), li);
        root.draw_text(&lang_name(d, li), &font_bold(13.0, c, HPos::Left, VPos::Bottom), (x, Y0 - 24))?;
        let tokens = format!("{} tokens", thousands(d.tokens(li)));
        root.draw_text(&tokens, &font(11.0, GREY, HPos::Left, VPos::Bottom), (x, Y0 - 10))?;
        for v in xt {
            let gx = self.bx(j, v / 100.0);
            root.draw(&PathElement::new(vec![(gx, Y0 - 4), (gx, y1)], LIGHT.stroke_width(1)))?;
            root.draw(&PathElement::new(vec![(gx, y1), (gx, y1 + 4)], INK.stroke_width(1)))?;
            root.draw_text(&format!("{v:.0}%"), &font(11.0, INK, HPos::Center, VPos::Top), (gx, y1 + 6))?;
        }
        root.draw(&PathElement::new(vec![(x + label_w, Y0 - 4), (x + label_w, y1)], GREY.stroke_width(1)))?;
        root.draw(&PathElement::new(vec![(x + label_w, y1), (x + label_w + BAR_W, y1)], GREY.stroke_width(1)))?;
        for b in bs {
            let y = Y0 + (b.rank as i32 - 1) * ROW_H + (ROW_H - BAR_H) / 2;
            let end = self.bx(j, b.usage);
            root.draw(&Rectangle::new([(x + label_w, y), (end.max(x + label_w + 1), y + BAR_H)], c.filled()))?;
            let st = if self.common.contains(&b.expert) {
                font_bold(12.0, INK, HPos::Right, VPos::Center)
            } else {
                font(12.0, GREY, HPos::Right, VPos::Center)
            };
            root.draw_text(&format!("#{}", b.expert), &st, (x + label_w - 5, y + BAR_H / 2))?;
            root.draw_text(&pct(b.usage, 1), &font(11.0, INK, HPos::Left, VPos::Center), (end + 4, y + BAR_H / 2))?;
        }
        if bs.len() < self.n {
            let y = Y0 + bs.len() as i32 * ROW_H + ROW_H / 2;
            let note = format!("(only {} experts chosen)", bs.len());
            root.draw_text(&note, &font(11.0, GREY, HPos::Left, VPos::Center), (x + label_w + 6, y))?;
        }
        let ux = self.bx(j, self.uniform);
        root.draw(&DashedPathElement::new(vec![(ux, Y0 - 4), (ux, y1)], 4, 3, INK.stroke_width(1)))
    }
}

impl Chart for Layout<'_> {
    const CLASS: &'static str = "moe-lens-top-experts";

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let (xt, _) = nice_ticks(0.0, self.xmax * 100.0, 4);
        for (j, (&li, bs)) in self.shown.iter().zip(&self.bars).enumerate() {
            self.draw_panel(root, j, li, bs, &xt)?;
        }
        root.draw_text(
            "share of the language's tokens sent to the expert",
            &font(12.0, INK, HPos::Left, VPos::Top),
            (MARGIN + self.label_w, self.y1 + 24),
        )?;
        for (i, n) in self.notes.iter().enumerate() {
            root.draw_text(n, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, self.notes_y + i as i32 * 16))?;
        }
        Ok(())
    }

    fn tooltips(&self, s: &mut String) {
        let (d, layer) = (self.d, self.layer);
        for (j, (&li, bs)) in self.shown.iter().zip(&self.bars).enumerate() {
            let short = language_name(&d.languages()[li]);
            for b in bs {
                let y = Y0 + (b.rank as i32 - 1) * ROW_H;
                let spec = d.value(Measure::Specialization, li, layer, b.expert).unwrap_or(0.0);
                let tip = format!(
                    "{} · layer {layer} · expert {} (rank {})\n{} of {} {short} tokens had it among their top {}: {}\n\
                     share of {short}'s selections: {}\nspecialization: {} of expert {}'s {} selections are {short}",
                    lang_name(d, li),
                    b.expert,
                    b.rank,
                    thousands(b.count),
                    thousands(d.tokens(li)),
                    d.k(),
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
                tip_rect(s, "moe-lens-bar", (self.px(j), y, self.panel_w, ROW_H), &data, &tip);
            }
        }
    }
}

impl Figure for TopExperts {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let mut s = format!("Layer {}: most used experts (share of the language's tokens)", self.layer);
        for li in d.select(self.langs.as_deref()).ok()? {
            let parts: Vec<String> = d
                .top_experts(li, self.layer, self.n)
                .iter()
                .map(|b| format!("{} {}", b.expert, pct(b.usage, 1)))
                .collect();
            let _ = write!(s, "\n  {:<4} {}", d.languages()[li], parts.join(", "));
        }
        Some(s)
    }
}
