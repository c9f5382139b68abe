//! Pictures of a [`Trace`]: a tokens × experts heatmap, a per-token top-k table, and a way to show
//! several of them in one notebook cell.
//!
//! If you know the Python lab: [`Heatmap`] is the `plt.imshow(probs)` figure (rows = tokens, columns
//! = experts, viridis colours, a colour bar), with the router's top-k choices outlined and a hover
//! tooltip on every cell; [`TopKTable`] is the pandas table of "which experts did each token pick,
//! with which weight".
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! # use moe_lens::plot::*;
//! # fn demo(trace: &Trace) -> Result<()> {
//! // In a notebook cell, the last expression is shown; `?` turns an error into a message.
//! trace.heatmap(14)?;                          // probabilities of layer 14
//! trace.heatmap("model.layers.14.mlp.gate")?;  // the same layer by its hook name
//! trace.heatmap(14)?.logits();                 // raw logits instead
//! trace.top_k_view(14)?;                       // the table of chosen experts
//! Figures::column_of([trace.heatmap(0)?, trace.heatmap(15)?]); // two figures in one cell
//! trace.heatmap(14)?.save("layer14.svg")?;     // a file for a report
//! # Ok(()) }
//! ```
//!
//! Everything here owns its data (a copy of one layer's numbers and the token labels), so a figure
//! can live in a notebook variable across cells without borrowing the trace.
//!
//! How a figure reaches the notebook: evcxr calls `.evcxr_display()` on a cell's last value. Each
//! figure prints two versions: `text/html` with the SVG inline (JupyterLab shows this one, and its
//! tooltips work), and `image/svg+xml` (a still picture, for front ends and exports that do not
//! take HTML). Tables print `text/html` and `text/plain`.

pub mod cards;
pub mod charts;
mod display;
mod explore;
mod export;
mod heatmap;
mod png;
mod raster;
mod table;
pub(crate) mod util;

pub use cards::{ExpertCard, ExpertCards};
pub use charts::{
    AnalysesPlots, CoactivationHeatmap, ConsecutivePlot, EffectiveExpertsPlot, ExpertTable, LanguageHeatmap,
    LayersOverview, Measure, RoutingChanges, StudyPlots, SweepBars, TopExpert, TopExperts,
};
pub use display::{evcxr_output, DisplayResult, Figure, Figures, Layout};
pub use explore::{expert_use_overlap, explore_pair, Explorer};
pub use export::PngOptions;
pub use heatmap::{Heatmap, Values, MAX_ROWS};
pub use table::{TopKRow, TopKTable};

use crate::error::Result;
use crate::spy::LayerRef;
use crate::trace::Trace;

/// Picture methods on [`Trace`], so that a notebook can write `trace.heatmap(14)?`.
///
/// It is a trait only because the pictures live in their own module; `use moe_lens::prelude::*;`
/// brings it into scope.
pub trait TracePlots {
    /// The tokens × experts heatmap of one layer (probabilities; call `.logits()` on it for logits).
    /// The layer is an index (`14`) or a hook name (`"model.layers.14.mlp.gate"`).
    ///
    /// ```
    /// use moe_lens::prelude::*;
    ///
    /// let trace = load("demo")?.trace("I usually wake up at six.")?;
    /// let svg = trace.heatmap(14)?.svg()?;
    /// assert!(svg.starts_with("<svg"));
    /// // every token's row carries a tooltip with its top-8 experts
    /// assert_eq!(svg.matches(r#"class="moe-lens-row""#).count(), trace.tokens.len());
    /// assert!(svg.contains("top-8 experts"));
    /// // the same layer by its hook name
    /// assert_eq!(trace.heatmap("model.layers.14.mlp.gate")?.svg()?, svg);
    /// # Ok::<(), moe_lens::Error>(())
    /// ```
    fn heatmap(&self, layer: impl Into<LayerRef>) -> Result<Heatmap>;

    /// The per-token table of chosen experts and their weights, for one layer.
    fn top_k_view(&self, layer: impl Into<LayerRef>) -> Result<TopKTable>;

    /// Every captured layer in one interactive, offline view (see [`Explorer`]): a layer slider,
    /// probability / logit toggle, tooltips, a token's path, an expert's tokens, search.
    fn explore(&self) -> Result<Explorer>;
}

impl TracePlots for Trace {
    fn heatmap(&self, layer: impl Into<LayerRef>) -> Result<Heatmap> {
        Heatmap::new(self, layer)
    }

    fn top_k_view(&self, layer: impl Into<LayerRef>) -> Result<TopKTable> {
        TopKTable::new(self, layer)
    }

    fn explore(&self) -> Result<Explorer> {
        Explorer::new(self)
    }
}
