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
//! The numbers (share, usage, specialization, effective number, rankings) are computed in
//! [`crate::study::shares`]; the charts only lay them out and draw them. Each chart is a builder
//! (options) that lays itself out into a [`Chart`], and [`Chart::to_svg`] does what every chart has
//! in common: the SVG backend, the white ground, title and subtitle, the hover layer, and turning
//! plotters' errors into ours.

mod effective;
mod expert_table;
mod interventions;
mod language_heatmap;
mod layers_overview;
mod routing;
mod style;
mod text;
mod top_experts;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::util::visible;
use crate::error::{Error, Result};
use crate::spy::LayerRef;
use crate::study::{Counts, Study};
use style::{font, font_bold, Area, DrawResult, GREY, HOVER_STYLE, INK, MARGIN};

pub use crate::study::shares::{Measure, TopExpert};
pub use effective::EffectiveExpertsPlot;
pub use expert_table::ExpertTable;
pub use interventions::{RoutingChanges, SweepBars};
pub use language_heatmap::LanguageHeatmap;
pub use layers_overview::LayersOverview;
pub use routing::{AnalysesPlots, CoactivationHeatmap, ConsecutivePlot};
pub use top_experts::TopExperts;

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
// The chart trait
// ------------------------------------------------------------------------------------------------

/// A study chart, laid out: its size, its title lines, what it draws below them, and its hover
/// marks. [`Chart::to_svg`] puts these together the same way for every chart.
/// What every chart has around its drawing: the title (as given; made visible when drawn), the
/// grey line under it, and the width and height in pixels.
pub(crate) struct Frame {
    pub(crate) title: String,
    pub(crate) subtitle: String,
    pub(crate) size: (i32, i32),
}

pub(crate) trait Chart {
    /// The class of the root `<svg>` element, after `moe-lens-figure`.
    const CLASS: &'static str;
    /// Crisp edges for rectangles (heatmaps, bars); circles are drawn smooth all the same.
    const CRISP: bool = true;

    /// Title, subtitle and size.
    fn frame(&self) -> &Frame;
    /// Everything below the title and subtitle.
    fn draw(&self, root: &Area<'_>) -> DrawResult;
    /// The hover layer's marks: a transparent shape with a tooltip per cell, bar or point.
    fn tooltips(&self, s: &mut String);

    /// The SVG document, with the hover layer when `tooltips`: plotters' SVG of the chart, its root
    /// marked with the chart's class, and the hover layer inserted before the end.
    fn to_svg(&self, tooltips: bool) -> Result<String> {
        let drawing = |e: DrawingAreaErrorKind<std::io::Error>| {
            Error::invalid("figure", format!("plotters could not draw the figure: {e}"))
        };
        let Frame { title, subtitle, size: (width, height) } = self.frame();
        let (width, height) = (*width, *height);
        let mut svg = String::new();
        {
            let root =
                SVGBackend::with_string(&mut svg, (width.max(1) as u32, height.max(1) as u32)).into_drawing_area();
            root.fill(&WHITE).map_err(drawing)?;
            let heading = |root: &Area<'_>| -> DrawResult {
                root.draw_text(&visible(title), &font_bold(16.0, INK, HPos::Left, VPos::Top), (MARGIN, 10))?;
                root.draw_text(subtitle, &font(12.0, GREY, HPos::Left, VPos::Top), (MARGIN, 34))
            };
            heading(&root).and_then(|()| self.draw(&root)).map_err(drawing)?;
            root.present()
                .map_err(|e| Error::invalid("figure", format!("plotters could not finish the figure: {e}")))?;
        }
        let crisp = if Self::CRISP { " shape-rendering=\"crispEdges\"" } else { "" };
        if let Some(rest) = svg.strip_prefix("<svg ") {
            svg = format!("<svg class=\"moe-lens-figure {}\"{crisp} {rest}", Self::CLASS);
        }
        if Self::CRISP {
            svg = svg.replace("<circle ", "<circle shape-rendering=\"geometricPrecision\" ");
        }
        if tooltips {
            let mut overlay = String::from(HOVER_STYLE);
            overlay.push_str("<g class=\"moe-lens-tooltips\">\n");
            self.tooltips(&mut overlay);
            overlay.push_str("</g>\n");
            match svg.rfind("</svg>") {
                Some(at) => svg.insert_str(at, &overlay),
                None => return Err(Error::invalid("figure", "plotters wrote an SVG without </svg>")),
            }
        }
        Ok(svg)
    }
}

/// What every study chart has besides its own builder methods and `layout(tooltips)`: `svg` (with a
/// tooltip on every mark), `svg_still` (without), `save`, `evcxr_display`, and the picture half of
/// its [`Figure`](super::Figure) impl.
macro_rules! chart_output {
    ($ty:ty, $mark:literal, $file:literal) => {
        impl $ty {
            #[doc = concat!("The SVG document, with a tooltip on every ", $mark, ".")]
            pub fn svg(&self) -> $crate::error::Result<String> {
                $crate::plot::charts::Chart::to_svg(&self.layout(true)?, true)
            }

            /// The same picture without the hover layer.
            pub fn svg_still(&self) -> $crate::error::Result<String> {
                $crate::plot::charts::Chart::to_svg(&self.layout(false)?, false)
            }

            #[doc = concat!("Writes the figure to `path` by its extension, e.g. `", $file, "`: `.svg` the clean picture (no hover layer), `.png` the same as PNG (192 dpi; the `png` feature), `.html` a page with the interactive SVG. Any other extension is an error.")]
            pub fn save(&self, path: impl AsRef<std::path::Path>) -> $crate::error::Result<()> {
                self.save_png(path, &$crate::plot::PngOptions::default())
            }

            /// Like `save`, with the PNG's width and DPI (used only for a `.png` path).
            pub fn save_png(
                &self,
                path: impl AsRef<std::path::Path>,
                png: &$crate::plot::PngOptions,
            ) -> $crate::error::Result<()> {
                let page = || Ok($crate::plot::export::page($file, &$crate::plot::charts::html_of(self.svg()?)));
                $crate::plot::export::save_by_extension_with(path.as_ref(), page, Some(&|| self.svg_still()), png)
            }

            /// Shows the figure in an evcxr notebook cell. Never panics.
            pub fn evcxr_display(&self) {
                $crate::plot::display::show(self);
            }
        }
    };
}

/// The picture half of a chart's [`Figure`](super::Figure) impl: the interactive and the still SVG.
macro_rules! chart_figure {
    () => {
        fn to_html(&self) -> $crate::error::Result<String> {
            Ok($crate::plot::charts::html_of(self.svg()?))
        }
        fn to_still_svg(&self) -> Option<$crate::error::Result<String>> {
            Some(self.svg_still())
        }
    };
}

use {chart_figure, chart_output};

fn html_of(svg: String) -> String {
    format!("<div class=\"moe-lens\" style=\"overflow-x:auto\">\n{svg}</div>")
}
