//! All layers at a glance.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::{text_px, visible};
use super::style::{colour_scale, font, font_bold, lang_colour, tip_rect, viridis, ColourBar};
use super::style::{Area, DrawResult, GREY, INK, MARGIN};
use super::text::{measure_caption, pct, short_data, short_tip, subtitle};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::error::{Error, Result};
use crate::study::shares::{ExpertShares, Measure};
use crate::study::Counts;

chart_output!(LayersOverview, "cell", "layers.svg");

/// Every layer at a glance: a grid (4 × 4 for 16 layers) of small language × expert heatmaps, all
/// on one colour scale, each headed by its layer and the languages' effective numbers of experts.
/// Hover a cell for its numbers (as in [`LanguageHeatmap`](super::LanguageHeatmap)).
#[derive(Debug, Clone)]
pub struct LayersOverview {
    data: ExpertShares,
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
            data: ExpertShares::new(counts)?,
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

    /// Checks the options and places everything.
    fn layout(&self, tooltips: bool) -> Result<Layout<'_>> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref())?;
        let cols = match self.columns {
            Some(0) => return Err(Error::invalid("columns", "0: give at least 1 panel per row")),
            Some(c) => c.min(d.layers()),
            None => ((d.layers() as f64).sqrt().ceil() as usize).max(1),
        };
        let grid_rows = d.layers().div_ceil(cols);
        let measure = self.measure;
        let (lo, hi) = colour_scale(
            self.range,
            measure,
            (0..d.layers()).flat_map(|l| {
                shown.iter().flat_map(move |&li| (0..d.experts()).map(move |e| d.value(measure, li, l, e)))
            }),
        )?;
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("All {} layers: which experts each language's tokens are sent to", d.layers()));
        let subtitle = subtitle(d, &shown, " · one colour scale for all panels", tooltips.then_some("cell"));

        // One panel: a header (layer, effective numbers), then the rows.
        let cw = (192 / d.experts() as i32).clamp(2, 12);
        let rh = if shown.len() <= 4 { 12 } else { 9 };
        let label_w =
            shown.iter().map(|&li| text_px(&visible(&d.languages()[li]), 10.0)).fold(0.0, f64::max).ceil() as i32 + 6;
        let heat_w = d.experts() as i32 * cw;
        let heat_h = shown.len() as i32 * rh;
        // the header's effective numbers may need more room than the cells (many languages)
        let header_w = (0..d.layers())
            .map(|l| shown.iter().map(|&li| text_px(&effective_tag(d, li, l), 10.0).ceil() as i32 + 8).sum::<i32>())
            .max()
            .unwrap_or(0);
        let panel = (label_w + heat_w.max(header_w), HEAD_H + heat_h);
        let grid_w = cols as i32 * panel.0 + (cols as i32 - 1) * GAP_X;
        let grid_bottom = TOP + grid_rows as i32 * (panel.1 + GAP_Y) - GAP_Y;
        let uniform = d.uniform(measure);
        let bar = ColourBar {
            x: MARGIN + label_w,
            y: grid_bottom + 40,
            w: (grid_w / 3).clamp(160, 360),
            lo,
            hi,
            caption: format!("{} (same scale in every panel)", measure_caption(measure, d.k())),
            uniform: Some((uniform, format!("uniform {}", pct(uniform, 1)))),
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
        Ok(Layout {
            d,
            measure,
            shown,
            frame: Frame { title, subtitle, size: (width, height) },
            lo,
            hi,
            cols,
            cw,
            rh,
            label_w,
            panel,
            bar,
        })
    }
}

/// Height of a panel's header.
const HEAD_H: i32 = 32;
/// Space between panels, across and down.
const GAP_X: i32 = 22;
const GAP_Y: i32 = 16;
/// Top of the first row of panels.
const TOP: i32 = 64;

/// "ko 7.3": a language's effective number at a layer, as a panel's header shows it.
fn effective_tag(d: &ExpertShares, li: usize, layer: usize) -> String {
    format!("{} {:.1}", visible(&d.languages()[li]), d.effective(li, layer))
}

/// A [`LayersOverview`] placed: `cols` panels of size `panel` per row, each a header of `HEAD_H`
/// above its cells (`cw` × `rh`), with the language tags in the `label_w` left of them.
struct Layout<'a> {
    d: &'a ExpertShares,
    measure: Measure,
    shown: Vec<usize>,
    frame: Frame,
    lo: f64,
    hi: f64,
    cols: usize,
    cw: i32,
    rh: i32,
    label_w: i32,
    panel: (i32, i32),
    bar: ColourBar,
}

impl Layout<'_> {
    /// The top left corner of layer `l`'s panel.
    fn panel_xy(&self, l: usize) -> (i32, i32) {
        let (r, c) = ((l / self.cols) as i32, (l % self.cols) as i32);
        (MARGIN + c * (self.panel.0 + GAP_X), TOP + r * (self.panel.1 + GAP_Y))
    }

    /// One layer's panel: its header, the rows of cells, and (last row of panels) expert numbers.
    fn draw_panel(&self, root: &Area<'_>, l: usize) -> DrawResult {
        let d = self.d;
        let (px, py) = self.panel_xy(l);
        let hx = px + self.label_w;
        root.draw_text(&format!("layer {l}"), &font_bold(12.0, INK, HPos::Left, VPos::Top), (hx, py))?;
        // effective numbers, each in its language's colour
        let mut x = hx;
        for &li in &self.shown {
            let t = effective_tag(d, li, l);
            root.draw_text(&t, &font(10.0, lang_colour(d.languages(), li), HPos::Left, VPos::Top), (x, py + 16))?;
            x += text_px(&t, 10.0).ceil() as i32 + 8;
        }
        let (y0, rh, cw) = (py + HEAD_H, self.rh, self.cw);
        let (heat_w, heat_h) = (d.experts() as i32 * cw, self.shown.len() as i32 * rh);
        for (r, &li) in self.shown.iter().enumerate() {
            let y = y0 + r as i32 * rh;
            let tag = visible(&d.languages()[li]);
            root.draw_text(&tag, &font(10.0, INK, HPos::Right, VPos::Center), (hx - 4, y + rh / 2))?;
            for e in 0..d.experts() {
                let x = hx + e as i32 * cw;
                let c = viridis(d.value(self.measure, li, l, e), self.lo, self.hi);
                root.draw(&Rectangle::new([(x, y), (x + cw, y + rh)], c.filled()))?;
            }
        }
        root.draw(&Rectangle::new([(hx - 1, y0 - 1), (hx + heat_w, y0 + heat_h)], GREY.stroke_width(1)))?;
        // expert numbers under the panels of the last row
        if l + self.cols >= d.layers() {
            let st = font(9.0, GREY, HPos::Center, VPos::Top);
            for e in [0, d.experts() / 2, d.experts() - 1] {
                let x = hx + e as i32 * cw + cw / 2;
                root.draw(&PathElement::new(vec![(x, y0 + heat_h), (x, y0 + heat_h + 3)], GREY.stroke_width(1)))?;
                root.draw_text(&e.to_string(), &st, (x, y0 + heat_h + 4))?;
            }
            let at = (hx + heat_w * 3 / 4, y0 + heat_h + 4);
            root.draw_text("expert", &font(9.0, GREY, HPos::Center, VPos::Top), at)?;
        }
        Ok(())
    }
}

impl Chart for Layout<'_> {
    const CLASS: &'static str = "moe-lens-layers-overview";

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        for l in 0..self.d.layers() {
            self.draw_panel(root, l)?;
        }
        self.bar.draw(root)
    }

    fn tooltips(&self, s: &mut String) {
        let d = self.d;
        for l in 0..d.layers() {
            let (px, py) = self.panel_xy(l);
            let _ = writeln!(s, "<g class=\"moe-lens-panel\" data-layer=\"{l}\">");
            let eff: Vec<String> = self
                .shown
                .iter()
                .map(|&li| format!("{} {:.2} ({} distinct)", d.languages()[li], d.effective(li, l), d.distinct(li, l)))
                .collect();
            let tip = format!("layer {l}: effective number of experts\n{}", eff.join("\n"));
            tip_rect(s, "moe-lens-label", (px, py, self.panel.0, HEAD_H - 2), &[("layer", l.to_string())], &tip);
            for (r, &li) in self.shown.iter().enumerate() {
                for e in 0..d.experts() {
                    let rect =
                        (px + self.label_w + e as i32 * self.cw, py + HEAD_H + r as i32 * self.rh, self.cw, self.rh);
                    tip_rect(s, "moe-lens-cell", rect, &short_data(d, li, l, e), &short_tip(d, li, l, e));
                }
            }
            s.push_str("</g>\n");
        }
    }
}

impl Figure for LayersOverview {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref()).ok()?;
        let mut s = format!(
            "Effective number of experts per layer ({}):\nlayer",
            shown.iter().map(|&i| d.languages()[i].as_str()).collect::<Vec<_>>().join(", ")
        );
        for &li in &shown {
            let _ = write!(s, " {:>7}", d.languages()[li]);
        }
        for l in 0..d.layers() {
            let _ = write!(s, "\n{l:>5}");
            for &li in &shown {
                let _ = write!(s, " {:>7.2}", d.effective(li, l));
            }
        }
        Some(s)
    }
}
