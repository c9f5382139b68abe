//! Effective number of experts per layer, with the token-matched comparison.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::super::display::Figure;
use super::super::util::text_px;
use super::style::MARGIN;
use super::style::{axis, font, font_bold, lang_colour, tip_circle, tip_rect, Area, DrawResult, GREY, INK, LIGHT};
use super::text::{lang_name, minus, signed, subtitle, thousands};
use super::{chart_figure, chart_output, Chart, Frame};
use crate::corpus::language_name;
use crate::error::{Error, Result};
use crate::study::compare::{Comparison, Verdict};
use crate::study::shares::ExpertShares;
use crate::study::Counts;

chart_output!(EffectiveExpertsPlot, "marker", "effective-experts.svg");

/// The effective number of experts (exp of the entropy of the top-k selections) per layer, one line
/// per language, over all counted tokens. With [`with_comparison`](Self::with_comparison), a
/// second panel below shows the token-matched difference (e.g. Korean − English) per layer with its
/// bootstrap interval, a zero line, and filled markers where the interval excludes 0.
///
/// The top panel is descriptive: a language with more tokens tends to show a larger effective
/// number just because it has more tokens. The comparison panel is the fair one.
#[derive(Debug, Clone)]
pub struct EffectiveExpertsPlot {
    data: ExpertShares,
    comparisons: Vec<Comparison>,
    langs: Option<Vec<String>>,
    title: Option<String>,
}

impl EffectiveExpertsPlot {
    /// The plot of a study's counts.
    pub fn new(counts: &Counts) -> Result<EffectiveExpertsPlot> {
        Ok(EffectiveExpertsPlot { data: ExpertShares::new(counts)?, comparisons: Vec::new(), langs: None, title: None })
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
        let li = self.data.language_index(lang)?;
        Ok(self.data.effective_by_layer(li))
    }

    /// Each comparison is of two languages of this study, with their token counts here (so from
    /// this scan), at its layers, with finite numbers.
    fn check_comparisons(&self) -> Result<()> {
        let d = &self.data;
        let langs = d.languages();
        for c in &self.comparisons {
            for (lang, tokens) in [(&c.a, c.a_tokens), (&c.b, c.b_tokens)] {
                let Some(li) = langs.iter().position(|l| l == lang) else {
                    return Err(Error::invalid(
                        "comparison",
                        format!("{} − {}: {lang:?} is not a language of this study ({})", c.a, c.b, langs.join(", ")),
                    ));
                };
                if d.tokens(li) != tokens {
                    return Err(Error::invalid(
                        "comparison",
                        format!(
                            "{} − {} was computed from another scan ({lang} has {} tokens there, {} here): compare on \
                             this study",
                            c.a,
                            c.b,
                            thousands(tokens),
                            thousands(d.tokens(li))
                        ),
                    ));
                }
            }
            if let Some(l) = c.layers.iter().find(|l| l.layer >= d.layers()) {
                return Err(Error::UnknownLayer { requested: l.layer.to_string(), layers: d.layers() });
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

    /// Checks the options and the comparisons, and places everything.
    fn layout(&self, tooltips: bool) -> Result<Layout<'_>> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref())?;
        self.check_comparisons()?;
        let nl = d.layers();
        let eff: Vec<Vec<f64>> = shown.iter().map(|&li| d.effective_by_layer(li)).collect();
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| "How many experts does each language use, layer by layer?".to_string());
        let subtitle = subtitle(d, &shown, "", tooltips.then_some("point"));

        // x: layers
        let x1 = X0 + PAD * 2 + (nl as i32 - 1).max(0) * STEP;
        // top panel
        let (elo, ehi) =
            eff.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = (ehi - elo).max(1.0);
        let top = Panel::new(82, 270, (elo - span * 0.08).max(0.0), ehi + span * 0.08);
        // legend right of the plot
        let legend_x = x1 + 26;
        let legend: Vec<(usize, String)> = shown
            .iter()
            .map(|&li| (li, format!("{} · {} tokens", lang_name(d, li), thousands(d.tokens(li)))))
            .collect();
        let legend_w = legend.iter().map(|(_, t)| text_px(t, 12.0)).fold(0.0, f64::max).ceil() as i32 + 34;
        // comparison panel
        let cmps = &self.comparisons[..];
        let (dlo, dhi) = cmps
            .iter()
            .flat_map(|c| c.layers.iter())
            .fold((0.0f64, 0.0f64), |(a, b), l| (a.min(l.ci_low).min(l.diff), b.max(l.ci_high).max(l.diff)));
        let dspan = (dhi - dlo).max(0.5);
        let below = Panel::new(top.y1() + 78, 190, dlo - dspan * 0.06, dhi + dspan * 0.06);
        let cmp_legend: Vec<(usize, String)> = cmps.iter().map(|c| comparison_legend(d, c)).collect();
        let cmp_legend_w =
            cmp_legend.iter().map(|(_, t)| text_px(t, 12.0)).fold(text_px(CONTAINS_0, 12.0), f64::max).ceil() as i32
                + 34;
        let notes = notes(d, cmps);
        let notes_y = if cmps.is_empty() { top.y1() } else { below.y1() } + 48;
        let width = [
            legend_x + legend_w.max(if cmps.is_empty() { 0 } else { cmp_legend_w }) + MARGIN,
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
            cmps,
            shown,
            eff,
            frame: Frame { title, subtitle, size: (width, height) },
            x1,
            top,
            below,
            legend_x,
            legend,
            cmp_legend,
            notes,
            notes_y,
        })
    }
}

/// Pixels between layers on the x axis, and before the first and after the last.
const STEP: i32 = 42;
const PAD: i32 = 18;
/// Left end of the plots (after the y tick labels).
const X0: i32 = MARGIN + 56;

const CONTAINS_0: &str = "interval contains 0: no clear difference";

/// A comparison's line in the legend, in the colour of its first language.
fn comparison_legend(d: &ExpertShares, c: &Comparison) -> (usize, String) {
    let li = d.languages().iter().position(|l| *l == c.a).unwrap_or(0);
    let (f, m, n) = c.tally();
    let line = format!(
        "{} − {} · {} tokens each · fewer {f}, more {m}, unclear {n}",
        c.a,
        c.b,
        thousands(c.matched_tokens as u64)
    );
    (li, line)
}

/// The notes under the plot: what the number is, and how to read the panels.
fn notes(d: &ExpertShares, cmps: &[Comparison]) -> Vec<String> {
    let mut notes: Vec<String> = vec![format!(
        "Effective number = exp(entropy) of the top-{} selections: 1 = every token sent to the same experts, {} = all \
         experts equally used.",
        d.k(),
        d.experts()
    )];
    if let Some(first) = cmps.first() {
        let level = first.options.level;
        notes.push(
            "Top panel: all counted tokens of each language; more tokens alone push the number up, so compare \
             languages with the panel below."
                .into(),
        );
        let n = first.layers.len();
        notes.push(format!(
            "Below 0: the first language uses fewer experts than the second at equal token counts. Each interval is \
             {:.0}% on its own: of {n} layers, about {:.1} may exclude 0 by chance.",
            level * 100.0,
            n as f64 * (1.0 - level)
        ));
    } else {
        notes.push(
            "All counted tokens of each language; more tokens alone push the number up. To compare languages at equal \
             token counts, add .with_comparison(&study.compare(\"ko\", \"en\")?)"
                .into(),
        );
    }
    notes
}

/// One panel: `y0..y0 + h` in pixels for the values `a..b`, with its ticks and their decimals.
struct Panel {
    y0: i32,
    h: i32,
    a: f64,
    b: f64,
    ticks: Vec<f64>,
    dec: usize,
}

impl Panel {
    /// A panel for the values `lo..hi`, its axis extended to nice ticks.
    fn new(y0: i32, h: i32, lo: f64, hi: f64) -> Panel {
        let (a, b, ticks, dec) = axis(lo, hi, 6);
        Panel { y0, h, a, b, ticks, dec }
    }

    fn y1(&self) -> i32 {
        self.y0 + self.h
    }

    /// The pixel row of value `v`.
    fn y(&self, v: f64) -> i32 {
        self.y1() - ((v - self.a) / (self.b - self.a) * self.h as f64).round() as i32
    }

    /// Horizontal grid lines, y ticks and their labels, from `x0` to `x1`.
    fn draw_y_ticks(&self, root: &Area<'_>, x0: i32, x1: i32) -> DrawResult {
        let yt = font(11.0, INK, HPos::Right, VPos::Center);
        let dec = self.dec;
        for v in &self.ticks {
            let y = self.y(*v);
            root.draw(&PathElement::new(vec![(x0, y), (x1, y)], LIGHT.stroke_width(1)))?;
            root.draw(&PathElement::new(vec![(x0 - 4, y), (x0, y)], INK.stroke_width(1)))?;
            root.draw_text(&minus(format!("{v:.dec$}")), &yt, (x0 - 6, y))?;
        }
        Ok(())
    }
}

/// An [`EffectiveExpertsPlot`] placed: layers along x from `X0` to `x1`, the effective numbers in
/// the `top` panel, the comparisons (if any) in the one `below`, legends right of them.
struct Layout<'a> {
    d: &'a ExpertShares,
    cmps: &'a [Comparison],
    shown: Vec<usize>,
    /// `eff[j][layer]` of the `j`th language shown.
    eff: Vec<Vec<f64>>,
    frame: Frame,
    x1: i32,
    top: Panel,
    below: Panel,
    legend_x: i32,
    legend: Vec<(usize, String)>,
    cmp_legend: Vec<(usize, String)>,
    notes: Vec<String>,
    notes_y: i32,
}

impl Layout<'_> {
    /// The pixel column of layer `l` (fractional: comparisons sit side by side).
    fn lx(&self, l: f64) -> i32 {
        X0 + PAD + (l * STEP as f64).round() as i32
    }

    /// How far comparison `j`'s markers sit beside their layer, so that several do not overlap.
    fn offset(&self, j: usize) -> f64 {
        let nc = self.cmps.len();
        if nc <= 1 {
            0.0
        } else {
            (j as f64 - (nc - 1) as f64 / 2.0) * (0.5 / nc as f64).min(0.18)
        }
    }

    /// The light grid, layer ticks and labels of both panels; the y ticks and frame of the top one.
    fn draw_axes(&self, root: &Area<'_>) -> DrawResult {
        let xt = font(11.0, INK, HPos::Center, VPos::Top);
        let mut panels = vec![(self.top.y0, self.top.y1())];
        if !self.cmps.is_empty() {
            panels.push((self.below.y0, self.below.y1()));
        }
        for &(pa, pb) in &panels {
            for l in 0..self.d.layers() {
                let x = self.lx(l as f64);
                root.draw(&PathElement::new(vec![(x, pa), (x, pb)], LIGHT.stroke_width(1)))?;
                root.draw(&PathElement::new(vec![(x, pb), (x, pb + 4)], INK.stroke_width(1)))?;
                root.draw_text(&l.to_string(), &xt, (x, pb + 6))?;
            }
            root.draw_text("layer", &font(12.0, INK, HPos::Center, VPos::Top), ((X0 + self.x1) / 2, pb + 22))?;
        }
        self.top.draw_y_ticks(root, X0, self.x1)?;
        root.draw(&Rectangle::new([(X0, self.top.y0), (self.x1, self.top.y1())], GREY.stroke_width(1)))
    }

    /// One line with markers per language, and the legend.
    fn draw_lines(&self, root: &Area<'_>) -> DrawResult {
        let langs = self.d.languages();
        for (j, &li) in self.shown.iter().enumerate() {
            let c = lang_colour(langs, li);
            let pts: Vec<(i32, i32)> =
                self.eff[j].iter().enumerate().map(|(l, &v)| (self.lx(l as f64), self.top.y(v))).collect();
            root.draw(&PathElement::new(pts.clone(), c.stroke_width(2)))?;
            for &p in &pts {
                root.draw(&Circle::new(p, 4, c.filled()))?;
                root.draw(&Circle::new(p, 4, WHITE.stroke_width(1)))?;
            }
        }
        let (lx, mut y) = (self.legend_x, self.top.y0 + 8);
        for (li, t) in &self.legend {
            let c = lang_colour(langs, *li);
            root.draw(&PathElement::new(vec![(lx, y), (lx + 24, y)], c.stroke_width(2)))?;
            root.draw(&Circle::new((lx + 12, y), 4, c.filled()))?;
            root.draw_text(t, &font(12.0, INK, HPos::Left, VPos::Center), (lx + 32, y))?;
            y += 20;
        }
        Ok(())
    }

    /// The comparison panel's title, y ticks, zero line, frame and the hints what above and below 0
    /// mean.
    fn draw_comparison_axes(&self, root: &Area<'_>) -> DrawResult {
        let (b, x1) = (&self.below, self.x1);
        let title = match self.cmps {
            [c] => format!(
                "Token-matched difference {} − {} in effective experts, with {:.0}% bootstrap intervals",
                language_name(&c.a),
                language_name(&c.b),
                c.options.level * 100.0
            ),
            _ => format!(
                "Token-matched differences in effective experts, with {:.0}% bootstrap intervals",
                self.cmps.first().map_or(0.95, |c| c.options.level) * 100.0
            ),
        };
        root.draw_text(&title, &font_bold(12.0, INK, HPos::Left, VPos::Bottom), (X0, b.y0 - 8))?;
        b.draw_y_ticks(root, X0, x1)?;
        let y = b.y(0.0);
        root.draw(&PathElement::new(vec![(X0, y), (x1, y)], INK.stroke_width(1)))?;
        root.draw(&Rectangle::new([(X0, b.y0), (x1, b.y1())], GREY.stroke_width(1)))?;
        let hint = font(10.0, GREY, HPos::Right, VPos::Top);
        let first_b = self.cmps.first().map_or("", |c| c.b.as_str());
        let same_b = self.cmps.iter().all(|c| c.b == first_b);
        let name = language_name(first_b).to_string();
        let (above, under) = if same_b {
            (format!("above 0: more experts than {name}"), format!("below 0: fewer experts than {name}"))
        } else {
            ("above 0: the first uses more".to_string(), "below 0: the first uses fewer".to_string())
        };
        root.draw_text(&above, &hint, (x1 - 4, b.y0 + 3))?;
        root.draw_text(&under, &font(10.0, GREY, HPos::Right, VPos::Bottom), (x1 - 4, b.y1() - 3))
    }

    /// Comparison `j`: its band of intervals (when alone), the line through its differences, and
    /// per layer the interval with a marker (filled when the interval excludes 0).
    fn draw_comparison(&self, root: &Area<'_>, j: usize, c: &Comparison) -> DrawResult {
        let b = &self.below;
        let li = self.d.languages().iter().position(|l| *l == c.a).unwrap_or(0);
        let col = lang_colour(self.d.languages(), li);
        let x = |l: usize| self.lx(l as f64 + self.offset(j));
        let mut band: Vec<(i32, i32)> = c.layers.iter().map(|l| (x(l.layer), b.y(l.ci_high))).collect();
        band.extend(c.layers.iter().rev().map(|l| (x(l.layer), b.y(l.ci_low))));
        if self.cmps.len() == 1 && band.len() >= 4 {
            root.draw(&Polygon::new(band, col.mix(0.12).filled()))?;
        }
        let pts: Vec<(i32, i32)> = c.layers.iter().map(|l| (x(l.layer), b.y(l.diff))).collect();
        root.draw(&PathElement::new(pts.clone(), col.mix(0.55).stroke_width(1)))?;
        for (lc, &(x, y)) in c.layers.iter().zip(&pts) {
            let (ya, yb) = (b.y(lc.ci_high), b.y(lc.ci_low));
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
        Ok(())
    }

    /// The comparison panel's legend: one line per comparison, then the two kinds of marker.
    fn draw_comparison_legend(&self, root: &Area<'_>) -> DrawResult {
        let (lx, mut y) = (self.legend_x, self.below.y0 + 8);
        let label = font(12.0, INK, HPos::Left, VPos::Center);
        for (li, t) in &self.cmp_legend {
            let c = lang_colour(self.d.languages(), *li);
            root.draw(&PathElement::new(vec![(lx + 12, y - 7), (lx + 12, y + 7)], c.stroke_width(2)))?;
            root.draw(&Circle::new((lx + 12, y), 4, c.filled()))?;
            root.draw_text(t, &label, (lx + 32, y))?;
            y += 20;
        }
        y += 6;
        root.draw(&Circle::new((lx + 12, y), 5, GREY.filled()))?;
        root.draw_text("interval excludes 0", &label, (lx + 32, y))?;
        y += 20;
        root.draw(&Circle::new((lx + 12, y), 4, WHITE.filled()))?;
        root.draw(&Circle::new((lx + 12, y), 4, GREY.stroke_width(2)))?;
        root.draw_text(CONTAINS_0, &label, (lx + 32, y))
    }

    /// The hover marks of the top panel: one circle per language and layer.
    fn point_tips(&self, s: &mut String) {
        let d = self.d;
        for (j, &li) in self.shown.iter().enumerate() {
            for (l, &v) in self.eff[j].iter().enumerate() {
                let tip = format!(
                    "{} · layer {l}\neffective number of experts {v:.2} (entropy {:.3} nats)\n{} of {} experts chosen \
                     at least once; half of the selections go to {} experts\nall {} tokens of {} (not token-matched)",
                    lang_name(d, li),
                    d.entropy(li, l),
                    d.distinct(li, l),
                    d.experts(),
                    d.coverage(li, l, 0.5),
                    thousands(d.tokens(li)),
                    language_name(&d.languages()[li])
                );
                let lang = d.languages()[li].clone();
                let data = [("lang", lang), ("layer", l.to_string()), ("value", format!("{v:.6}"))];
                tip_circle(s, "moe-lens-point", (self.lx(l as f64), self.top.y(v), 7), &data, &tip);
            }
        }
    }

    /// The hover marks of the comparison panel: one rectangle per comparison and layer, over the
    /// whole interval.
    fn difference_tips(&self, s: &mut String) {
        for (j, c) in self.cmps.iter().enumerate() {
            let (an, bn) = (language_name(&c.a), language_name(&c.b));
            for lc in &c.layers {
                let tip = format!(
                    "layer {}: {an} − {bn} = {} experts (token-matched)\n{:.0}% interval [{}, {}]\n{}\n{} {:.2} vs {} \
                     {:.2}, {} tokens each",
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
                let x = self.lx(lc.layer as f64 + self.offset(j));
                let (ya, yb) = (self.below.y(lc.ci_high), self.below.y(lc.ci_low));
                tip_rect(s, "moe-lens-diff", (x - 6, ya - 4, 12, yb - ya + 8), &data, &tip);
            }
        }
    }
}

impl Chart for Layout<'_> {
    const CLASS: &'static str = "moe-lens-effective";
    const CRISP: bool = false;

    fn frame(&self) -> &Frame {
        &self.frame
    }

    fn draw(&self, root: &Area<'_>) -> DrawResult {
        let heading = font_bold(12.0, INK, HPos::Left, VPos::Bottom);
        root.draw_text("effective number of experts, all tokens", &heading, (X0, self.top.y0 - 8))?;
        self.draw_axes(root)?;
        self.draw_lines(root)?;
        if !self.cmps.is_empty() {
            self.draw_comparison_axes(root)?;
            for (j, c) in self.cmps.iter().enumerate() {
                self.draw_comparison(root, j, c)?;
            }
            self.draw_comparison_legend(root)?;
        }
        for (i, n) in self.notes.iter().enumerate() {
            root.draw_text(n, &font(11.0, GREY, HPos::Left, VPos::Top), (MARGIN, self.notes_y + i as i32 * 16))?;
        }
        Ok(())
    }

    fn tooltips(&self, s: &mut String) {
        self.point_tips(s);
        self.difference_tips(s);
    }
}

impl Figure for EffectiveExpertsPlot {
    chart_figure!();
    fn to_text(&self) -> Option<String> {
        let d = &self.data;
        let shown = d.select(self.langs.as_deref()).ok()?;
        let mut s =
            String::from("Effective number of experts per layer (all tokens; compare languages token-matched)\nlayer");
        for &li in &shown {
            let _ = write!(s, " {:>7}", d.languages()[li]);
        }
        for c in &self.comparisons {
            let _ = write!(s, "  {:>22}", format!("{}−{} [{:.0}% CI]", c.a, c.b, c.options.level * 100.0));
        }
        for l in 0..d.layers() {
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
