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
pub mod spy;
pub mod study;
pub mod teach;
pub mod tokens;
pub mod trace;

pub use error::{Error, Result};
pub use teach::check;

/// Everything a notebook cell or a small program needs, in one import.
pub mod prelude {
    pub use crate::config::Config;
    pub use crate::corpus::{self, Sentence};
    pub use crate::error::{Error, Result};
    pub use crate::intervene::Interventions;
    pub use crate::lab::{load, load_with_quant, DeviceChoice, GenerateOptions, Hooks, Lens, LoadOptions};
    pub use crate::plot::{
        DisplayResult, Figure, Figures, Heatmap, Measure, StudyPlots, TopKTable, TracePlots, Values,
    };
    pub use crate::quant::Quant;
    pub use crate::spy::{spy_fn, LayerRef, LayerSelection, RouterEvent, RouterSpy, Routing, RoutingCache, Step};
    pub use crate::study::{CompareOptions, Comparison, ScanExt, ScanOptions, Study, Verdict};
    pub use crate::tokens::{Script, Token, Tokenizer};
    pub use crate::trace::{LayerTrace, Trace, TraceExport};
    pub use candle_core::{DType, Device, Tensor};
}
