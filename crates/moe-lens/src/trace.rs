//! A captured run: the tokens of a text and every router's decision for each of them, with the
//! JSON export that the `moe-lens trace --format json` command prints.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::intervene::Interventions;
use crate::spy::{router_name, LayerRef, Routing, RoutingCache, Step};
use crate::tokens::Token;

/// One router layer over all tokens of a trace: row `i` is token `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerTrace {
    /// `model.layers.{i}.mlp.gate`
    pub name: String,
    /// Raw router logits `[tokens][experts]`.
    pub logits: Vec<Vec<f32>>,
    /// Softmax over all experts `[tokens][experts]`.
    pub probs: Vec<Vec<f32>>,
    /// Chosen experts, best first `[tokens][k]`.
    pub top_k: Vec<Vec<u32>>,
    /// Their mixing weights `[tokens][k]`.
    pub weights: Vec<Vec<f32>>,
}

impl LayerTrace {
    /// Layer index parsed from the name.
    pub fn index(&self) -> Option<usize> {
        LayerRef::Name(self.name.clone()).index(usize::MAX).ok()
    }
    /// Number of experts (columns).
    pub fn experts(&self) -> usize {
        self.logits.first().map_or(0, Vec::len)
    }
    /// Experts chosen per token (k).
    pub fn k(&self) -> usize {
        self.top_k.first().map_or(0, Vec::len)
    }
}

/// The export schema, exactly: what `--format json` prints and [`Trace::to_json`] writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceExport {
    /// The model as the user named it (directory or Hub id).
    pub model: String,
    /// The whole text: prompt plus any generated continuation.
    pub text: String,
    /// The text's tokens, in order.
    pub tokens: Vec<Token>,
    /// One entry per captured router layer, in layer order; row `i` is token `i`.
    pub layers: Vec<LayerTrace>,
    /// The interventions of the run, in their text form (`"ablate 14:27,35"`); absent for a plain run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interventions: Option<String>,
}

/// A text (or a prompt plus generated tokens) and how every captured router routed each token.
#[derive(Clone)]
pub struct Trace {
    /// The model as the user named it (directory or Hub id).
    pub model: String,
    /// The whole text: the prompt plus, after generation, the generated continuation.
    pub text: String,
    /// The text's tokens, in order; row `i` of every layer is token `i`.
    pub tokens: Vec<Token>,
    /// Number of prompt tokens (all tokens for a plain trace).
    pub prompt_len: usize,
    /// Which forward call produced which token rows.
    pub steps: Vec<(Step, Range<usize>)>,
    /// Captured layers in order, each over all tokens.
    pub layers: Vec<LayerTrace>,
    /// The raw per-step cache the trace was assembled from (one entry per forward call and layer).
    /// The same numbers as `layers`, laid out by forward call instead of by token: both are public
    /// fields that notebooks and programs read and build (`run.cache.get(…)`, `trace.layers[i]`),
    /// so neither is derived from the other.
    pub cache: RoutingCache,
    /// Total router layers in the model (captured or not).
    pub model_layers: usize,
    /// The interventions the run was made under (none for a plain run): `logits` are then the
    /// routers' own, `probs`, `top_k` and `weights` the routing applied (see [`crate::intervene`]).
    pub interventions: Interventions,
}

/// A summary: a cell that ends in a trace should not print thousands of numbers.
impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self.steps.iter().map(|(s, r)| format!("{s} {}..{}", r.start, r.end)).collect();
        f.debug_struct("Trace")
            .field("model", &self.model)
            .field("text", &self.text)
            .field("tokens", &self.tokens.len())
            .field("prompt_len", &self.prompt_len)
            .field("layers", &self.captured())
            .field("steps", &steps)
            .finish()
    }
}

impl Trace {
    /// Assembles a trace from the tokens and what a [`RoutingCache`] collected over one or more
    /// forward calls (prefill, then decode steps), checking that every token has a row in every layer.
    pub fn assemble(
        model: &str,
        text: &str,
        tokens: Vec<Token>,
        prompt_len: usize,
        cache: RoutingCache,
        model_layers: usize,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        let mut steps: Vec<(Step, Range<usize>)> = Vec::new();
        for (n, l) in cache.layers().into_iter().enumerate() {
            let entries: &[Routing] = cache.get(l)?;
            let mut lt =
                LayerTrace { name: router_name(l), logits: vec![], probs: vec![], top_k: vec![], weights: vec![] };
            for r in entries {
                if r.offset != lt.logits.len() {
                    return Err(Error::Spy(format!(
                        "{}: {} starts at position {} but {} rows came before",
                        lt.name,
                        r.step,
                        r.offset,
                        lt.logits.len()
                    )));
                }
                if n == 0 {
                    steps.push((r.step, r.offset..r.offset + r.rows));
                }
                for row in 0..r.rows {
                    lt.logits.push(r.logits_row(row).to_vec());
                    lt.probs.push(r.probs_row(row).to_vec());
                    lt.top_k.push(r.top_k_row(row).to_vec());
                    lt.weights.push(r.weights_row(row).to_vec());
                }
            }
            if lt.logits.len() != tokens.len() {
                return Err(Error::Spy(format!(
                    "{} has {} rows for {} tokens",
                    lt.name,
                    lt.logits.len(),
                    tokens.len()
                )));
            }
            layers.push(lt);
        }
        Ok(Trace {
            model: model.into(),
            text: text.into(),
            tokens,
            prompt_len,
            steps,
            layers,
            cache,
            model_layers,
            interventions: Interventions::new(),
        })
    }

    /// One captured layer, by index (`14`) or hook name (`"model.layers.14.mlp.gate"`).
    pub fn layer(&self, layer: impl Into<LayerRef>) -> Result<&LayerTrace> {
        let layer = layer.into();
        let idx = layer.index(self.model_layers)?;
        let name = router_name(idx);
        self.layers.iter().find(|l| l.name == name).ok_or_else(|| {
            Error::invalid(
                "layer",
                format!("layer {idx} exists but was not captured in this trace (captured: {})", self.captured()),
            )
        })
    }

    fn captured(&self) -> String {
        let v: Vec<String> = self.layers.iter().filter_map(LayerTrace::index).map(|i| i.to_string()).collect();
        v.join(", ")
    }

    /// Tokens produced by generation (empty for a plain trace).
    pub fn generated(&self) -> &[Token] {
        self.tokens.get(self.prompt_len..).unwrap_or(&[])
    }

    /// The export document (exact schema).
    pub fn export(&self) -> TraceExport {
        TraceExport {
            model: self.model.clone(),
            text: self.text.clone(),
            tokens: self.tokens.clone(),
            layers: self.layers.clone(),
            interventions: (!self.interventions.is_empty()).then(|| self.interventions.to_string()),
        }
    }

    /// The export as one JSON document.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(&self.export()).map_err(|e| Error::invalid("trace", format!("cannot serialise: {e}")))
    }

    /// Writes the export to a file.
    pub fn save_json(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()?).map_err(|e| Error::io(path, e))
    }

    /// Per-token top-k table of one layer, as plain text (label, script, experts, weights).
    pub fn top_k_table(&self, layer: impl Into<LayerRef>) -> Result<String> {
        use std::fmt::Write;
        let lt = self.layer(layer)?;
        let width = self.tokens.iter().map(|t| display_width(&t.label)).max().unwrap_or(5).clamp(5, 24);
        let mut s = String::new();
        let _ = writeln!(s, "{} — top-{} experts per token (weight)", lt.name, lt.k());
        let _ = writeln!(s, "{:>4}  {}  {:<8}  experts", "#", pad_label("token", width), "script");
        for (i, (tok, (ids, ws))) in self.tokens.iter().zip(lt.top_k.iter().zip(&lt.weights)).enumerate() {
            let cells: Vec<String> = ids.iter().zip(ws).map(|(e, w)| format!("{e:>2} ({w:.3})")).collect();
            let mark = if i >= self.prompt_len { "*" } else { " " };
            let _ = writeln!(
                s,
                "{i:>3}{mark}  {}  {:<8}  {}",
                pad_label(&tok.label, width),
                tok.script.name(),
                cells.join("  ")
            );
        }
        if self.prompt_len < self.tokens.len() {
            let _ = writeln!(s, "* generated");
        }
        Ok(s)
    }
}

/// Columns a terminal gives `s`: East Asian wide characters (Hangul, kana, CJK, full-width forms,
/// most emoji) take two.
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x1F300..=0x1F64F
            | 0x1F900..=0x1F9FF
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// Fits a label into `width` terminal columns: padded with spaces, or cut with '…'.
fn pad_label(label: &str, width: usize) -> String {
    let mut s = String::new();
    let mut used = 0;
    let fits = display_width(label) <= width;
    for c in label.chars() {
        let w = display_width(c.encode_utf8(&mut [0; 4]));
        if used + w > width.saturating_sub(usize::from(!fits)) {
            break;
        }
        s.push(c);
        used += w;
    }
    if !fits {
        s.push('…');
        used += 1;
    }
    s.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    s
}
