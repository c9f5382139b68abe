//! Drawing helpers shared by the study charts (the pixel conventions of `heatmap.rs`): fonts,
//! colours, axes, the colour bar and the hover marks.

use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::super::util::{nice_ticks, text_px, xml_escape, FONT_FAMILY};
use crate::error::{Error, Result};
use crate::study::shares::Measure;

pub(super) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
pub(super) type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

pub(super) const MARGIN: i32 = 12;
pub(super) const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
pub(super) const GREY: RGBColor = RGBColor(0x66, 0x66, 0x66);
pub(super) const LIGHT: RGBColor = RGBColor(0xE4, 0xE4, 0xE4);
const MISSING: RGBColor = RGBColor(0xD0, 0xD0, 0xD0);

/// A text style in our font list, `px` pixels high (plotters writes `font-size = size / 1.24`).
pub(super) fn font(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Normal),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

pub(super) fn font_bold(px: f64, c: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: FontDesc::new(FontFamily::Name(FONT_FAMILY), px * 1.24, FontStyle::Bold),
        color: c.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Viridis colour of `v` on `lo..hi` (clamped); grey for a missing value.
pub(super) fn viridis(v: Option<f64>, lo: f64, hi: f64) -> RGBColor {
    match v {
        Some(v) if v.is_finite() && hi > lo => ViridisRGB::get_color(((v - lo) / (hi - lo)).clamp(0.0, 1.0)),
        _ => MISSING,
    }
}

/// Okabe–Ito colours (safe for colour-blind readers): English blue, Korean vermillion, Japanese
/// green; other languages get the remaining ones in turn.
pub(super) fn lang_colour(langs: &[String], li: usize) -> RGBColor {
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

/// The hover styles of the overlays.
pub(super) const HOVER_STYLE: &str = "<style>.moe-lens-cell:hover,.moe-lens-bar:hover{stroke:#FF2D55;stroke-width:2px}\
     .moe-lens-point:hover,.moe-lens-diff:hover{stroke:#FF2D55;stroke-width:2px}\
     .moe-lens-label:hover{fill:#FF2D55;fill-opacity:0.08}</style>\n";

/// A transparent rectangle with a tooltip, and `data-*` attributes for programs reading the SVG.
pub(super) fn tip_rect(
    s: &mut String,
    class: &str,
    (x, y, w, h): (i32, i32, i32, i32),
    data: &[(&str, String)],
    tip: &str,
) {
    let _ = write!(s, "<rect class=\"{class}\" x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\"");
    for (k, v) in data {
        let _ = write!(s, " data-{k}=\"{}\"", xml_escape(v));
    }
    let _ = writeln!(s, " fill-opacity=\"0\"><title>{}</title></rect>", xml_escape(tip));
}

/// A transparent circle with a tooltip and `data-*` attributes.
pub(super) fn tip_circle(
    s: &mut String,
    class: &str,
    (cx, cy, r): (i32, i32, i32),
    data: &[(&str, String)],
    tip: &str,
) {
    let _ = write!(s, "<circle class=\"{class}\" cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\"");
    for (k, v) in data {
        let _ = write!(s, " data-{k}=\"{}\"", xml_escape(v));
    }
    let _ = writeln!(s, " fill-opacity=\"0\"><title>{}</title></circle>", xml_escape(tip));
}

/// Tick values covering `lo..hi`, the axis extended to the outer ticks, and their decimals.
pub(super) fn axis(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<f64>, usize) {
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let (t, d) = nice_ticks(lo, hi, target);
    let step = if t.len() >= 2 { t[1] - t[0] } else { (hi - lo) / 4.0 };
    let a = (lo / step - 1e-9).floor() * step;
    let b = (hi / step + 1e-9).ceil() * step;
    let n = ((b - a) / step).round() as i64;
    let ticks = (0..=n).map(|i| a + i as f64 * step).collect();
    (a, b, ticks, d)
}

/// Experts with a labelled tick: every 8th, and the last.
pub(super) fn major_ticks(experts: usize) -> Vec<usize> {
    let step = if experts > 16 { 8 } else { 1 };
    let mut t: Vec<usize> = (0..experts).step_by(step).collect();
    if let Some(&last) = t.last() {
        if last != experts - 1 && experts - 1 - last >= step / 2 {
            t.push(experts - 1);
        }
    }
    t
}

/// The colour scale of a heatmap: the given range (checked) or 0 to the largest value shown.
pub(super) fn colour_scale(
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

/// A horizontal viridis colour bar for fractions on `lo..hi`, with percentage ticks below, a caption
/// to its right and, when inside the scale, a mark at the uniform-routing value.
pub(super) struct ColourBar {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub lo: f64,
    pub hi: f64,
    pub caption: String,
    pub uniform: Option<(f64, String)>,
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
    pub fn caption_w(&self) -> i32 {
        16 + text_px(&self.caption, 12.0).ceil() as i32
    }

    pub fn height() -> i32 {
        BAR_H + 28
    }

    pub fn draw(&self, root: &Area<'_>) -> DrawResult {
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

#[cfg(test)]
mod tests {
    use super::*;

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
