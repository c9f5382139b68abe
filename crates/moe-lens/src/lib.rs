//! moe-lens: load OLMoE on candle, spy on every router, and see where each token goes.
//!
//! The map of the code is in ARCHITECTURE.md at the repository root. Notebook cells need one line:
//! `use moe_lens::prelude::*;`.

pub mod config;
pub mod corpus;
pub mod corpus_set;
pub mod doctor;
pub mod effects;
pub mod error;
pub mod fsutil;
pub mod gguf;
pub mod hub;
pub mod intervene;
pub mod lab;
pub mod lessons;
pub mod memory;
pub mod olmoe;
pub mod plot;
pub mod quant;
pub mod remote;
pub mod server;
pub mod spy;
pub mod study;
pub mod teach;
pub mod tokens;
pub mod trace;

/// candle's tensor types, for spies and programs that read a [`spy::RouterEvent`]'s tensors.
pub use candle_core::{DType, Device, Tensor};
pub use error::{Error, Result};
pub use teach::check;

/// What notebook cells use, in one import: `use moe_lens::prelude::*;` (25 names).
///
/// Loading ([`load`](crate::lab::load), [`Lens`](crate::lab::Lens)), a run's record
/// ([`Trace`](crate::trace::Trace), [`Step`](crate::spy::Step), [`Token`](crate::tokens::Token),
/// [`Script`](crate::tokens::Script)), the language study ([`Study`](crate::study::Study) and its
/// options), interventions ([`Interventions`](crate::intervene::Interventions)), and the picture
/// traits that put `.heatmap(…)`, `.explore()` and the study charts on those values. Everything else
/// (spies, the model, tensors, quantization) is in its module: `moe_lens::spy::RoutingCache`,
/// `moe_lens::olmoe::Olmoe`, `moe_lens::quant::Quant`, ….
pub mod prelude {
    pub use crate::corpus::{self, Corpus, Sentence};
    pub use crate::error::{Error, Result};
    pub use crate::intervene::Interventions;
    pub use crate::lab::{load, load_with_quant, Lens, LoadOptions};
    pub use crate::plot::{explore_pair, DisplayResult, Figures, Measure, StudyPlots, TracePlots};
    pub use crate::spy::Step;
    pub use crate::study::{CompareOptions, ScanExt, ScanOptions, Study};
    pub use crate::teach::check;
    pub use crate::tokens::{Script, Token};
    pub use crate::trace::Trace;
}
