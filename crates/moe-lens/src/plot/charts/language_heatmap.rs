//! Languages × experts of one layer.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::text_px;
use super::style::{colour_scale, font, font_bold, lang_colour, major_ticks, tip_rect, viridis, ColourBar};
use super::style::{Area, DrawResult, GREY, INK, MARGIN};
use super::text::{cell_data, cell_tip, lang_name, measure_caption, pct, subtitle, thousands};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::error::Result;
use crate::spy::LayerRef;
use crate::study::shares::{ExpertShares, Measure};
use crate::study::Counts;

chart_output!(LanguageHeatmap, "cell", "layer14-languages.svg");

/// Languages × experts of one layer: each row is a language, each column an expert, the colour is
/// the expert's share of that language's top-k selections (viridis, with a colour bar marking the
/// uniform-routing share 1/64). To the right: each language's tokens and effective number of
/// experts at this layer. Hover a cell for the language, expert, count, share, usage and
/// specialization.
///
/// Make one with `study.language_heatmap(14)?` ([`StudyPlots`](super::StudyPlots)); adjust with
/// [`measure`](Self::measure), [`range`](Self::range) (a fixed colour scale, to compare layers),
/// [`languages`](Self::languages) and [`title`](Self::title).
#[derive(Debug, Clone)]
pub struct LanguageHeatmap {
    data: ExpertShares,
    layer: usize,
    measure: Measure,
    range: Option<(f64, f64)>,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

impl LanguageHeatmap {
    /// The heatmap of one layer (an index or a hook name) of a study's counts.
    pub fn new(counts: &Counts, layer: impl Into<LayerRef>) -> Result<LanguageHeatmap> {
        let data = ExpertShares::new(counts)?;
        let layer = layer.into().index(data.layers())?;
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

    /// Checks the options and places everything.
    fn layout(&self, tooltips: bool) -> Result<Layout<'_>> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref())?;
        let (layer, measure) = (self.layer, self.measure);
        let (lo, hi) = colour_scale(
            self.range,
            measure,
            shown.iter().flat_map(|&li| (0..d.experts()).map(move |e| d.value(measure, li, layer, e))),
        )?;
        let title = self.title.clone().unwrap_or_else(|| self.default_title());
        let subtitle = subtitle(d, &shown, "", tooltips.then_some("cell"));

        let cw = (768 / d.experts() as i32).clamp(4, 28);
        let rh = 26;
        let label_w = shown.iter().map(|&li| text_px(&lang_name(d, li), 13.0)).fold(0.0, f64::max).ceil() as i32;
        let label_x = MARGIN + label_w;
        let x0 = label_x + 10;
        let y0 = 80;
        let x1 = x0 + d.experts() as i32 * cw;
        let y1 = y0 + shown.len() as i32 * rh;
        let tok_x = x1 + 14 + text_px("999,999", 12.0).max(text_px("tokens", 11.0)).ceil() as i32;
        let eff_x = tok_x + 14 + text_px("effective", 11.0).ceil() as i32;
        let uniform = d.uniform(measure);
        let bar = ColourBar {
            x: x0,
            y: y1 + 62,
            w: (d.experts() as i32 * cw / 2).clamp(160, 360),
            lo,
            hi,
            caption: measure_caption(measure, d.k()),
            uniform: Some((uniform, format!("uniform {}", pct(uniform, 1)))),
        };
        let note_y = bar.y + ColourBar::height() + 6;
        let width = [
            eff_x + MARGIN,
            bar.x + bar.w + bar.caption_w() + MARGIN,
            MARGIN * 2 + text_px(&title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
            MARGIN * 2 + text_px(NOTE, 11.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(800);
        let height = note_y + 14 + MARGIN;
        Ok(Layout {
            d,
            layer,
            measure,
            shown,
            frame: Frame { title, subtitle, size: (width, height) },
            lo,
            hi,
            cw,
            rh,
            label_x,
            x0,
            y0,
            x1,
            y1,
            tok_x,
            eff_x,
            bar,
            note_y,
        })
    }
}

const NOTE: &str = "effective = exp(entropy) of the language's selections at this layer: the number of equally used \
                    experts that would spread them as evenly";

/// A [`LanguageHeatmap`] placed: the cells span `x0..x1` × `y0..y1`, one row of height `rh` per
/// language shown, one column of width `cw` per expert.
struct Layout<'a> {
    d: &'a ExpertShares,
    layer: usize,
    measure: Measure,
    shown: Vec<usize>,
    frame: Frame,
    lo: f64,
    hi: f64,
    cw: i32,
    rh: i32,
    label_x: i32,
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
    tok_x: i32,
    eff_x: i32,
    bar: ColourBar,
    note_y: i32,
}

impl Chart for Layout<'_> {
    const CLASS: &'static str = "moe-lens-lang-heatmap";

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        self.draw_expert_ticks(root)?;
        self.draw_cells(root)?;
        self.draw_row_labels(root)?;
        self.bar.draw(root)?;
        root.draw_text(NOTE, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, self.note_y))?;
        Ok(())
    }

    fn tooltips(&self, s: &mut String) {
        let (d, layer, (x0, y0, cw, rh)) = (self.d, self.layer, (self.x0, self.y0, self.cw, self.rh));
        for (r, &li) in self.shown.iter().enumerate() {
            for e in 0..d.experts() {
                let rect = (x0 + e as i32 * cw, y0 + r as i32 * rh, cw, rh);
                tip_rect(s, "moe-lens-cell", rect, &cell_data(d, li, layer, e), &cell_tip(d, li, layer, e));
            }
            let (top, top_n) = d.most_used(li, layer);
            let sel = d.selections(li, layer);
            let tip = format!(
                "{}: {} tokens, {} selections at layer {layer}\neffective number of experts {:.2}; {} of {} experts \
                 chosen at least once\nmost used: expert {top} ({} of the selections); half of the selections go to \
                 {} experts",
                lang_name(d, li),
                thousands(d.tokens(li)),
                thousands(sel),
                d.effective(li, layer),
                d.distinct(li, layer),
                d.experts(),
                pct(if sel > 0 { top_n as f64 / sel as f64 } else { 0.0 }, 1),
                d.coverage(li, layer, 0.5)
            );
            let label = (MARGIN, y0 + r as i32 * rh, x0 - 2 - MARGIN, rh);
            tip_rect(s, "moe-lens-label", label, &[("lang", d.languages()[li].clone())], &tip);
        }
    }
}

impl Layout<'_> {
    /// Expert numbers above and below the cells, and the axis caption.
    fn draw_expert_ticks(&self, root: &Area<'_>) -> DrawResult {
        let (x0, y0, x1, y1, cw) = (self.x0, self.y0, self.x1, self.y1, self.cw);
        let tick_top = font(11.0, INK, HPos::Center, VPos::Bottom);
        let tick_bottom = font(11.0, INK, HPos::Center, VPos::Top);
        for e in major_ticks(self.d.experts()) {
            let x = x0 + e as i32 * cw + cw / 2;
            root.draw(&PathElement::new(vec![(x, y0 - 4), (x, y0)], INK.stroke_width(1)))?;
            root.draw_text(&e.to_string(), &tick_top, (x, y0 - 5))?;
            root.draw(&PathElement::new(vec![(x, y1), (x, y1 + 5)], INK.stroke_width(1)))?;
            root.draw_text(&e.to_string(), &tick_bottom, (x, y1 + 7))?;
        }
        root.draw_text(
            &format!("expert (0–{})", self.d.experts() - 1),
            &font(12.0, INK, HPos::Center, VPos::Top),
            ((x0 + x1) / 2, y1 + 24),
        )
    }

    /// The coloured cells, a thin white line between languages, and the frame.
    fn draw_cells(&self, root: &Area<'_>) -> DrawResult {
        let (d, x0, y0, x1, cw, rh) = (self.d, self.x0, self.y0, self.x1, self.cw, self.rh);
        for (r, &li) in self.shown.iter().enumerate() {
            for e in 0..d.experts() {
                let (x, y) = (x0 + e as i32 * cw, y0 + r as i32 * rh);
                let c = viridis(d.value(self.measure, li, self.layer, e), self.lo, self.hi);
                root.draw(&Rectangle::new([(x, y), (x + cw, y + rh)], c.filled()))?;
            }
            if r > 0 {
                let y = y0 + r as i32 * rh;
                root.draw(&PathElement::new(vec![(x0, y), (x1, y)], WHITE.stroke_width(1)))?;
            }
        }
        root.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x1, self.y1)], GREY.stroke_width(1)))
    }

    /// Language names left of the rows; tokens and effective number right of them.
    fn draw_row_labels(&self, root: &Area<'_>) -> DrawResult {
        let (d, y0, rh) = (self.d, self.y0, self.rh);
        let head = font(11.0, GREY, HPos::Right, VPos::Bottom);
        root.draw_text("tokens", &head, (self.tok_x, y0 - 5))?;
        root.draw_text("effective", &head, (self.eff_x, y0 - 5))?;
        for (r, &li) in self.shown.iter().enumerate() {
            let cy = y0 + r as i32 * rh + rh / 2;
            let c = lang_colour(d.languages(), li);
            root.draw_text(&lang_name(d, li), &font_bold(13.0, c, HPos::Right, VPos::Center), (self.label_x, cy))?;
            root.draw_text(&thousands(d.tokens(li)), &font(12.0, INK, HPos::Right, VPos::Center), (self.tok_x, cy))?;
            root.draw_text(
                &format!("{:.1}", d.effective(li, self.layer)),
                &font(12.0, INK, HPos::Right, VPos::Center),
                (self.eff_x, cy),
            )?;
        }
        Ok(())
    }
}

impl Figure for LanguageHeatmap {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref()).ok()?;
        let mut s = format!(
            "Layer {}: share of each language's top-{} selections per expert (most used first)\n",
            self.layer,
            d.k()
        );
        for li in shown {
            let top: Vec<String> = d
                .ranked(li, self.layer)
                .iter()
                .take(5)
                .map(|&e| format!("{e} {}", pct(d.value(Measure::Share, li, self.layer, e).unwrap_or(0.0), 1)))
                .collect();
            let _ = writeln!(
                s,
                "  {:<4} effective {:>5.1} · {}",
                d.languages()[li],
                d.effective(li, self.layer),
                top.join(", ")
            );
        }
        Some(s.trim_end().to_string())
    }
}
