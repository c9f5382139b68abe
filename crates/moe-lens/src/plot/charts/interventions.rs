//! Pictures of what an intervention did: the routing cells that changed (tokens × layers), and the
//! importance sweep's ranking (bars, with the noise floor).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::{model_label, text_px};
use super::style::{font, tip_rect, Area, DrawResult, GREY, INK, LIGHT, MARGIN};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::effects::{Effect, Sweep};
use crate::error::{Error, Result};

chart_output!(RoutingChanges, "cell", "routing-changes.svg");
chart_output!(SweepBars, "bar", "sweep.svg");

const CELL: i32 = 18;
const TOP: i32 = 78;

/// Which routing choices an intervention changed: one row per token, one column per layer; the
/// colour is how many of the token's k experts at that layer differ from the unmodified run.
/// Hover a cell for the experts removed and added.
#[derive(Debug, Clone)]
pub struct RoutingChanges {
    labels: Vec<String>,
    before: Vec<Vec<Vec<u32>>>, // [layer][token][k]
    after: Vec<Vec<Vec<u32>>>,
    k: usize,
    title: String,
    /// The model, as figures name it.
    model: String,
}

impl RoutingChanges {
    /// The changes of an [`Effect`] (prompt + continuation, teacher-forced).
    pub fn new(effect: &Effect) -> Result<RoutingChanges> {
        let (b, a) = (&effect.before, &effect.after);
        if b.layers.len() != a.layers.len() || b.tokens.len() != a.tokens.len() {
            return Err(Error::invalid("effect", "the runs before and after do not have the same shape"));
        }
        Ok(RoutingChanges {
            labels: b.tokens.iter().map(|t| t.label.clone()).collect(),
            before: b.layers.iter().map(|l| l.top_k.clone()).collect(),
            after: a.layers.iter().map(|l| l.top_k.clone()).collect(),
            k: b.layers.first().map_or(0, |l| l.k()),
            title: format!("Routing changed by: {}", effect.interventions),
            model: model_label(&b.model),
        })
    }

    fn layout(&self, tooltips: bool) -> Result<ChangesLayout<'_>> {
        let label_w = self.labels.iter().map(|l| text_px(l, 12.0).ceil() as i32).max().unwrap_or(20) + 10;
        let layers = self.before.len() as i32;
        let rows = self.labels.len() as i32;
        let subtitle = format!(
            "{} · colour: how many of a token's {} chosen experts differ from the run without intervention{}",
            self.model,
            self.k,
            if tooltips { " · hover a cell for the experts removed and added" } else { "" }
        );
        let grid_w = layers * CELL;
        let width = [
            MARGIN * 2 + label_w + grid_w + 140,
            MARGIN * 2 + text_px(&self.title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(600);
        let height = TOP + rows * CELL + MARGIN * 2;
        Ok(ChangesLayout {
            c: self,
            label_w,
            frame: Frame { title: self.title.clone(), subtitle, size: (width, height) },
        })
    }
}

struct ChangesLayout<'a> {
    c: &'a RoutingChanges,
    label_w: i32,
    frame: Frame,
}

fn change_colour(n: usize, k: usize) -> RGBColor {
    if n == 0 {
        return RGBColor(0xF4, 0xF4, 0xF4);
    }
    // white → vermillion (Okabe–Ito) by the share of the k experts changed
    let t = (n as f64 / k.max(1) as f64).clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * (0.25 + 0.75 * t)) as u8;
    RGBColor(mix(0xFF, 0xD5), mix(0xFF, 0x5E), mix(0xFF, 0x00))
}

impl ChangesLayout<'_> {
    fn changed(&self, l: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
        let (b, a) = (&self.c.before[l][t], &self.c.after[l][t]);
        (b.iter().filter(|e| !a.contains(e)).copied().collect(), a.iter().filter(|e| !b.contains(e)).copied().collect())
    }
}

impl Chart for ChangesLayout<'_> {
    const CLASS: &'static str = "moe-lens-routing-changes";
    fn frame(&self) -> &Frame {
        &self.frame
    }
    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let x0 = MARGIN + self.label_w;
        for l in 0..self.c.before.len() {
            let x = x0 + l as i32 * CELL;
            root.draw_text(&l.to_string(), &font(10.0, GREY, HPos::Center, VPos::Bottom), (x + CELL / 2, TOP - 4))?;
        }
        root.draw_text("layer", &font(11.0, GREY, HPos::Left, VPos::Bottom), (x0, TOP - 18))?;
        for (t, label) in self.c.labels.iter().enumerate() {
            let y = TOP + t as i32 * CELL;
            root.draw_text(label, &font(12.0, INK, HPos::Right, VPos::Center), (x0 - 6, y + CELL / 2))?;
            for l in 0..self.c.before.len() {
                let x = x0 + l as i32 * CELL;
                let (_, added) = self.changed(l, t);
                root.draw(&Rectangle::new(
                    [(x, y), (x + CELL - 1, y + CELL - 1)],
                    change_colour(added.len(), self.c.k).filled(),
                ))?;
            }
        }
        // the key
        let kx = x0 + self.c.before.len() as i32 * CELL + 20;
        root.draw_text("experts changed", &font(11.0, GREY, HPos::Left, VPos::Top), (kx, TOP))?;
        for n in 0..=self.c.k {
            let y = TOP + 18 + n as i32 * 14;
            root.draw(&Rectangle::new([(kx, y), (kx + 12, y + 12)], change_colour(n, self.c.k).filled()))?;
            root.draw(&Rectangle::new([(kx, y), (kx + 12, y + 12)], LIGHT.stroke_width(1)))?;
            root.draw_text(
                &format!("{n} of {}", self.c.k),
                &font(11.0, INK, HPos::Left, VPos::Center),
                (kx + 18, y + 6),
            )?;
        }
        Ok(())
    }
    fn tooltips(&self, s: &mut String) {
        let x0 = MARGIN + self.label_w;
        for (t, label) in self.c.labels.iter().enumerate() {
            for l in 0..self.c.before.len() {
                let (removed, added) = self.changed(l, t);
                let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                let tip = if added.is_empty() {
                    format!("token {t} {label:?}, layer {l}: same {} experts", self.c.k)
                } else {
                    format!("token {t} {label:?}, layer {l}: removed {}; added {}", ids(&removed), ids(&added))
                };
                let data = [("token", t.to_string()), ("layer", l.to_string()), ("changed", added.len().to_string())];
                tip_rect(s, "moe-lens-cell", (x0 + l as i32 * CELL, TOP + t as i32 * CELL, CELL, CELL), &data, &tip);
            }
        }
    }
}

impl Figure for RoutingChanges {
    chart_figure!();
}

/// The importance sweep's `n` largest effects as horizontal bars (Δ log-probability of the
/// continuation when one expert of one layer is ablated), the noise floor shaded.
#[derive(Debug, Clone)]
pub struct SweepBars {
    rows: Vec<(String, f64, bool, usize)>, // label, delta, below noise, tokens
    noise: f64,
    title: String,
    subtitle: String,
}

impl SweepBars {
    /// The `n` largest effects of `sweep` (1 or more).
    pub fn new(sweep: &Sweep, n: usize) -> Result<SweepBars> {
        if n == 0 {
            return Err(Error::invalid("n", "show at least one (layer, expert)"));
        }
        let rows = sweep
            .rows
            .iter()
            .take(n)
            .map(|r| (format!("layer {} · expert {}", r.layer, r.expert), r.delta, r.below_noise, r.tokens))
            .collect();
        Ok(SweepBars {
            rows,
            noise: sweep.noise_floor,
            title: format!("Which experts matter for {:?} after {:?}", sweep.continuation, sweep.text),
            subtitle: format!(
                "{} · change in the continuation's log-probability when one expert is ablated (all tokens); {} of {} \
                 pairs shown; grey: within the noise floor ({:.1e})",
                model_label(&sweep.model),
                n.min(sweep.rows.len()),
                sweep.rows.len(),
                sweep.noise_floor
            ),
        })
    }

    fn layout(&self, _tooltips: bool) -> Result<SweepLayout<'_>> {
        let label_w = self.rows.iter().map(|r| text_px(&r.0, 12.0).ceil() as i32).max().unwrap_or(60) + 10;
        let width = [
            MARGIN * 2 + label_w + 2 * HALF + 80,
            MARGIN * 2 + text_px(&self.title, 16.0).ceil() as i32,
            MARGIN * 2 + text_px(&self.subtitle, 12.0).ceil() as i32,
        ]
        .into_iter()
        .max()
        .unwrap_or(700);
        let height = TOP + self.rows.len() as i32 * 20 + 40;
        let max = self.rows.iter().map(|r| r.1.abs()).fold(self.noise, f64::max).max(1e-12);
        Ok(SweepLayout {
            b: self,
            label_w,
            max,
            frame: Frame { title: self.title.clone(), subtitle: self.subtitle.clone(), size: (width, height) },
        })
    }
}

const HALF: i32 = 220;

struct SweepLayout<'a> {
    b: &'a SweepBars,
    label_w: i32,
    max: f64,
    frame: Frame,
}

impl SweepLayout<'_> {
    fn x(&self, v: f64) -> i32 {
        MARGIN + self.label_w + HALF + (v / self.max * HALF as f64).round() as i32
    }
}

impl Chart for SweepLayout<'_> {
    const CLASS: &'static str = "moe-lens-sweep";
    fn frame(&self) -> &Frame {
        &self.frame
    }
    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let y1 = TOP + self.b.rows.len() as i32 * 20;
        let (lo, hi) = (self.x(-self.b.noise), self.x(self.b.noise));
        root.draw(&Rectangle::new([(lo, TOP - 4), (hi.max(lo + 1), y1)], RGBColor(0xEE, 0xEE, 0xEE).filled()))?;
        let zero = self.x(0.0);
        root.draw(&PathElement::new(vec![(zero, TOP - 8), (zero, y1 + 4)], GREY.stroke_width(1)))?;
        root.draw_text("Δ log P", &font(11.0, GREY, HPos::Center, VPos::Bottom), (zero, TOP - 10))?;
        for (i, (label, d, noise, _)) in self.b.rows.iter().enumerate() {
            let y = TOP + i as i32 * 20;
            root.draw_text(label, &font(12.0, INK, HPos::Right, VPos::Center), (MARGIN + self.label_w - 6, y + 9))?;
            let x = self.x(*d);
            let c = if *noise {
                RGBColor(0xBB, 0xBB, 0xBB)
            } else if *d < 0.0 {
                RGBColor(0xD5, 0x5E, 0x00)
            } else {
                RGBColor(0x00, 0x72, 0xB2)
            };
            root.draw(&Rectangle::new([(zero.min(x), y + 2), (zero.max(x).max(zero.min(x) + 1), y + 16)], c.filled()))?;
            let (h, tx) = if *d < 0.0 { (HPos::Right, x - 4) } else { (HPos::Left, x + 4) };
            root.draw_text(&format!("{d:+.3}"), &font(11.0, INK, h, VPos::Center), (tx, y + 9))?;
        }
        root.draw_text(
            "orange: the continuation becomes less likely without the expert; blue: more likely",
            &font(11.0, GREY, HPos::Left, VPos::Top),
            (MARGIN, y1 + 12),
        )
    }
    fn tooltips(&self, s: &mut String) {
        for (i, (label, d, noise, tokens)) in self.b.rows.iter().enumerate() {
            let tip = format!(
                "{label}: Δ log P = {d:+.5} ({}); {tokens} of the text's tokens chose it",
                if *noise { "within the noise floor" } else { "above the noise floor" }
            );
            let y = TOP + i as i32 * 20;
            tip_rect(s, "moe-lens-bar", (MARGIN, y, self.label_w + 2 * HALF, 18), &[("delta", format!("{d}"))], &tip);
        }
    }
}

impl Figure for SweepBars {
    chart_figure!();
}

impl Effect {
    /// The routing cells the interventions changed, tokens × layers (see [`RoutingChanges`]).
    pub fn routing_changes(&self) -> Result<RoutingChanges> {
        RoutingChanges::new(self)
    }
}

impl Sweep {
    /// The `n` largest effects as bars (see [`SweepBars`]).
    pub fn bars(&self, n: usize) -> Result<SweepBars> {
        SweepBars::new(self, n)
    }
}
