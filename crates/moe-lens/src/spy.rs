//! The router spy: what the forward pass reports about every routing decision, and the ready
//! collector for it.
//!
//! A router event is one layer's decision for all tokens of one forward call. Its name is the
//! transformers module path of that router, `model.layers.{i}.mlp.gate`, so that hook names here
//! and in the Python lab are the same strings. Implement [`RouterSpy`] (one required callback), wrap
//! a closure with [`spy_fn`], or use the ready collector [`RoutingCache`], which keeps one entry per
//! forward call and layer: always a list, each tagged [`Step::Prefill`] or [`Step::Decode`].

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which forward call an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum Step {
    /// The pass over the whole prompt (or the whole text, for a plain trace).
    Prefill,
    /// The pass that produced generated token number `n` (0-based) from the cache.
    Decode(usize),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Prefill => write!(f, "prefill"),
            Step::Decode(n) => write!(f, "decode {n}"),
        }
    }
}

/// Which router layers a spy wants to see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LayerSelection {
    /// Every layer.
    #[default]
    All,
    /// Only these layer indices.
    Only(Vec<usize>),
}

impl LayerSelection {
    /// Whether `layer` is selected.
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            LayerSelection::All => true,
            LayerSelection::Only(v) => v.contains(&layer),
        }
    }

    /// Checks every selected layer exists in a model of `layers` layers.
    pub fn check(&self, layers: usize) -> Result<()> {
        if let LayerSelection::Only(v) = self {
            if let Some(&bad) = v.iter().find(|&&l| l >= layers) {
                return Err(Error::UnknownLayer { requested: bad.to_string(), layers });
            }
        }
        Ok(())
    }

    /// The selected layers of a model of `layers` layers, in order.
    pub fn layers(&self, layers: usize) -> Vec<usize> {
        (0..layers).filter(|&l| self.contains(l)).collect()
    }
}

/// One layer's routing decision for every token of one forward call.
///
/// Rows are tokens, batch-major: row `b * seq_len + t` is token `t` of sequence `b`, at position
/// `offset + t`. With a batch of padded sequences, `lengths[b]` says how many rows of sequence `b` are
/// real; the rest are padding and must not be counted.
#[derive(Debug)]
pub struct RouterEvent<'a> {
    /// Layer index.
    pub layer: usize,
    /// `model.layers.{layer}.mlp.gate`.
    pub name: &'a str,
    /// Which forward call this is (the prefill or a decode step).
    pub step: Step,
    /// Sequences in the batch.
    pub batch: usize,
    /// Rows per sequence (padded length); rows = `batch * seq_len`.
    pub seq_len: usize,
    /// Position of the first row's token in its sequence (the KV-cache length before this call).
    pub offset: usize,
    /// Real (unpadded) length of each sequence of the batch; `None` when nothing is padded.
    pub lengths: Option<&'a [usize]>,
    /// Raw router logits `[rows, experts]`, float32.
    pub logits: &'a Tensor,
    /// Softmax over all experts, computed in float32 `[rows, experts]`.
    pub probs: &'a Tensor,
    /// The chosen experts, best first `[rows, k]`, u32.
    pub top_k: &'a Tensor,
    /// The weights the chosen experts' outputs are mixed with `[rows, k]`, float32 (not renormalised
    /// unless the config's `norm_topk_prob` says so: OLMoE's sum to less than 1).
    pub weights: &'a Tensor,
}

impl RouterEvent<'_> {
    /// Whether row `row` is a real token (not padding).
    pub fn is_real(&self, row: usize) -> bool {
        match self.lengths {
            None => true,
            Some(l) => {
                let (b, t) = (row / self.seq_len.max(1), row % self.seq_len.max(1));
                l.get(b).is_some_and(|&n| t < n)
            }
        }
    }
}

/// Receives router events during a forward pass.
pub trait RouterSpy {
    /// Called once per selected layer per forward call, in layer order. An error stops the forward
    /// pass and is returned from it.
    fn on_route(&mut self, event: &RouterEvent<'_>) -> Result<()>;

    /// Which layers to report (default: all). Unselected layers cost nothing extra.
    fn layers(&self) -> LayerSelection {
        LayerSelection::All
    }

    /// Called after the last layer of a forward call.
    fn on_step_end(&mut self, _step: Step) -> Result<()> {
        Ok(())
    }
}

impl<S: RouterSpy + ?Sized> RouterSpy for &mut S {
    fn on_route(&mut self, event: &RouterEvent<'_>) -> Result<()> {
        (**self).on_route(event)
    }
    fn layers(&self) -> LayerSelection {
        (**self).layers()
    }
    fn on_step_end(&mut self, step: Step) -> Result<()> {
        (**self).on_step_end(step)
    }
}

/// A spy made from a closure; see [`spy_fn`].
pub struct FnSpy<F> {
    f: F,
    layers: LayerSelection,
}

/// Wraps a closure as a spy of every layer: `spy_fn(|ev| { println!("{}", ev.name); Ok(()) })`.
pub fn spy_fn<F: FnMut(&RouterEvent<'_>) -> Result<()>>(f: F) -> FnSpy<F> {
    FnSpy { f, layers: LayerSelection::All }
}

impl<F> FnSpy<F> {
    /// Restricts the closure to some layers.
    pub fn on_layers(mut self, layers: &[usize]) -> Self {
        self.layers = LayerSelection::Only(layers.to_vec());
        self
    }
}

impl<F: FnMut(&RouterEvent<'_>) -> Result<()>> RouterSpy for FnSpy<F> {
    fn on_route(&mut self, event: &RouterEvent<'_>) -> Result<()> {
        (self.f)(event)
    }
    fn layers(&self) -> LayerSelection {
        self.layers.clone()
    }
}

/// One layer's routing for one forward call, copied to the host (row-major `Vec`s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// Which forward call this is (the prefill or a decode step).
    pub step: Step,
    /// Layer index, from 0.
    pub layer: usize,
    /// Position of the first row's token.
    pub offset: usize,
    /// Token rows of the call (batch-major, as in [`RouterEvent`]).
    pub rows: usize,
    /// Experts per layer (columns of `logits`).
    pub experts: usize,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// `[rows * experts]`
    pub logits: Vec<f32>,
    /// `[rows * experts]`
    pub probs: Vec<f32>,
    /// `[rows * k]`
    pub top_k: Vec<u32>,
    /// `[rows * k]`
    pub weights: Vec<f32>,
}

impl Routing {
    fn from_event(ev: &RouterEvent<'_>) -> Result<Self> {
        if ev.batch != 1 {
            return Err(Error::Spy(format!(
                "RoutingCache keeps single sequences, but this forward call had a batch of {}: use a \
                 counting spy (study) for batches, or trace the texts one by one",
                ev.batch
            )));
        }
        let (rows, experts) = ev.logits.dims2()?;
        let (_, k) = ev.top_k.dims2()?;
        Ok(Routing {
            step: ev.step,
            layer: ev.layer,
            offset: ev.offset,
            rows,
            experts,
            k,
            logits: ev.logits.flatten_all()?.to_vec1()?,
            probs: ev.probs.flatten_all()?.to_vec1()?,
            top_k: ev.top_k.flatten_all()?.to_vec1()?,
            weights: ev.weights.flatten_all()?.to_vec1()?,
        })
    }

    /// Logits of row `r`, or an empty slice past the end.
    pub fn logits_row(&self, r: usize) -> &[f32] {
        self.logits.get(r * self.experts..(r + 1) * self.experts).unwrap_or(&[])
    }
    /// Probabilities of row `r`.
    pub fn probs_row(&self, r: usize) -> &[f32] {
        self.probs.get(r * self.experts..(r + 1) * self.experts).unwrap_or(&[])
    }
    /// Chosen experts of row `r`, best first.
    pub fn top_k_row(&self, r: usize) -> &[u32] {
        self.top_k.get(r * self.k..(r + 1) * self.k).unwrap_or(&[])
    }
    /// Mixing weights of row `r`.
    pub fn weights_row(&self, r: usize) -> &[f32] {
        self.weights.get(r * self.k..(r + 1) * self.k).unwrap_or(&[])
    }
}

/// The ready collector: every router event, by hook name, one entry per forward call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoutingCache {
    #[serde(skip)]
    selection: LayerSelection,
    entries: BTreeMap<usize, Vec<Routing>>,
}

impl RoutingCache {
    /// Collects every layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collects only these layers.
    pub fn for_layers(layers: &[usize]) -> Self {
        RoutingCache { selection: LayerSelection::Only(layers.to_vec()), entries: BTreeMap::new() }
    }

    /// The entries of one router, by index or by name (`"model.layers.14.mlp.gate"`): one per
    /// forward call, prefill first.
    pub fn get(&self, layer: impl Into<LayerRef>) -> Result<&[Routing]> {
        let layer = layer.into();
        let known = self.entries.keys().next_back().map_or(0, |l| l + 1);
        let idx = layer.index(known)?;
        self.entries
            .get(&idx)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::UnknownLayer { requested: layer.to_string(), layers: known })
    }

    /// Hook names that have entries, in layer order.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().map(|&l| router_name(l)).collect()
    }

    /// Layer indices that have entries.
    pub fn layers(&self) -> Vec<usize> {
        self.entries.keys().copied().collect()
    }

    /// Number of forward calls seen (entries per layer).
    pub fn steps(&self) -> usize {
        self.entries.values().map(Vec::len).max().unwrap_or(0)
    }

    /// Every entry, layer by layer, each layer's in forward-call order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Routing> {
        self.entries.values().flatten()
    }

    /// Adds one entry after those of its layer (how a client rebuilds a server's cache).
    pub(crate) fn push(&mut self, r: Routing) {
        self.entries.entry(r.layer).or_default().push(r);
    }

    /// Forgets everything collected.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl RouterSpy for RoutingCache {
    fn on_route(&mut self, event: &RouterEvent<'_>) -> Result<()> {
        let r = Routing::from_event(event)?;
        self.entries.entry(event.layer).or_default().push(r);
        Ok(())
    }
    fn layers(&self) -> LayerSelection {
        self.selection.clone()
    }
}

/// The hook name of router `layer`: transformers' module path, `model.layers.{layer}.mlp.gate` (what
/// [`LayerRef`] parses back).
pub fn router_name(layer: usize) -> String {
    format!("{ROUTER_PREFIX}{layer}{ROUTER_SUFFIX}")
}

const ROUTER_PREFIX: &str = "model.layers.";
const ROUTER_SUFFIX: &str = ".mlp.gate";

/// A layer given by index (`14`) or by hook name (`"model.layers.14.mlp.gate"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRef {
    /// A layer by index, from 0 (`14`).
    Index(usize),
    /// A layer by hook name (`"model.layers.14.mlp.gate"`).
    Name(String),
}

impl LayerRef {
    /// The index, checked against a model of `layers` router layers. Accepts a bare number in a
    /// string too ("14"), and negative-free names only.
    pub fn index(&self, layers: usize) -> Result<usize> {
        let unknown = || Error::UnknownLayer { requested: self.to_string(), layers };
        let i = match self {
            LayerRef::Index(i) => *i,
            LayerRef::Name(s) => {
                let s = s.trim();
                let num = s.strip_prefix(ROUTER_PREFIX).and_then(|r| r.strip_suffix(ROUTER_SUFFIX)).unwrap_or(s);
                num.parse::<usize>().map_err(|_| unknown())?
            }
        };
        if i < layers {
            Ok(i)
        } else {
            Err(unknown())
        }
    }
}

impl std::fmt::Display for LayerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerRef::Index(i) => write!(f, "{i}"),
            LayerRef::Name(s) => write!(f, "{s}"),
        }
    }
}

impl From<usize> for LayerRef {
    fn from(i: usize) -> Self {
        LayerRef::Index(i)
    }
}
impl From<i32> for LayerRef {
    fn from(i: i32) -> Self {
        match usize::try_from(i) {
            Ok(u) => LayerRef::Index(u),
            Err(_) => LayerRef::Name(i.to_string()),
        }
    }
}
impl From<&str> for LayerRef {
    fn from(s: &str) -> Self {
        LayerRef::Name(s.to_string())
    }
}
impl From<String> for LayerRef {
    fn from(s: String) -> Self {
        LayerRef::Name(s)
    }
}
impl From<&String> for LayerRef {
    fn from(s: &String) -> Self {
        LayerRef::Name(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_refs_by_index_and_name() -> Result<()> {
        assert_eq!(LayerRef::from(14usize).index(16)?, 14);
        assert_eq!(LayerRef::from("model.layers.14.mlp.gate").index(16)?, 14);
        assert_eq!(LayerRef::from("3").index(16)?, 3);
        assert_eq!(LayerRef::from(router_name(7)).index(16)?, 7);
        assert_eq!(router_name(14), "model.layers.14.mlp.gate");
        for bad in [
            LayerRef::from(16usize),
            LayerRef::from(-1),
            LayerRef::from("model.layers.x.mlp.gate"),
            LayerRef::from("model.layers.32.mlp.gate"),
            LayerRef::from(""),
        ] {
            let e = bad.index(16).unwrap_err();
            assert!(matches!(e, Error::UnknownLayer { layers: 16, .. }), "{e}");
            assert!(e.to_string().contains("0..=15"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn selection_checks_range() {
        assert!(LayerSelection::Only(vec![0, 15]).check(16).is_ok());
        assert!(LayerSelection::Only(vec![16]).check(16).is_err());
        assert_eq!(LayerSelection::Only(vec![15, 2]).layers(16), vec![2, 15]);
    }
}
