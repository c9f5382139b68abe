//! Interventions at the routers: values that say how a forward pass should change a layer's routing.
//!
//! Three kinds, each at one router layer, for every token or for a range of token positions:
//!
//! - **ablate** `(layer, experts)`: the router cannot choose these experts. Their logits are set to
//!   −∞ before the softmax; the softmax, the top k and the weights are then computed over the other
//!   experts exactly as the model does (renormalised only if the config's `norm_topk_prob` says so).
//! - **force** `(layer, experts)`: the chosen set is exactly these k experts, each weighted by its
//!   softmax probability from the router's own logits (renormalised only as the config says), best
//!   first (ties: the lower expert id first).
//! - **bias** `(layer, expert, delta)`: `delta` is added to that expert's logit before the softmax.
//!
//! The router spy still reports the router's own `logits` (unmodified); `probs`, `top_k` and
//! `weights` are the routing actually applied. A set of interventions is a value: it prints in the
//! command line's syntax (`ablate 14:27,35@0..5`), parses back from it, and saves as JSON.
//!
//! ```
//! use moe_lens::intervene::Interventions;
//! let iv = Interventions::new().ablate(14, [27, 35]).bias(7, 27, 2.0).at(0..5);
//! assert_eq!(iv.to_string(), "ablate 14:27,35; bias 7:27:2@0..5");
//! let back: Interventions = "ablate 14:27,35; bias 7:27:2@0..5".parse().unwrap();
//! assert_eq!(back, iv);
//! ```

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One change to one router layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intervention {
    /// The router cannot choose `experts` (logits −∞ before the softmax).
    Ablate {
        /// The router layer, from 0.
        layer: usize,
        /// The experts the router may not choose, each in 0..num_experts.
        experts: Vec<usize>,
        /// Token positions `start..end` it applies to (`None`: every token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Range<usize>>,
    },
    /// The chosen set is exactly `experts` (k of them), weighted by the router's own probabilities.
    Force {
        /// The router layer, from 0.
        layer: usize,
        /// The experts chosen instead of the router's top-k: exactly k, each in 0..num_experts.
        experts: Vec<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Token positions `start..end` it applies to (`None`: every token).
        at: Option<Range<usize>>,
    },
    /// `delta` is added to `expert`'s logit before the softmax.
    Bias {
        /// The router layer, from 0.
        layer: usize,
        /// The expert whose logit is shifted, in 0..num_experts.
        expert: usize,
        /// Added to the expert's router logit (before the softmax); negative makes it less likely.
        delta: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Token positions `start..end` it applies to (`None`: every token).
        at: Option<Range<usize>>,
    },
}

impl Intervention {
    /// The router layer it changes.
    pub fn layer(&self) -> usize {
        match self {
            Intervention::Ablate { layer, .. }
            | Intervention::Force { layer, .. }
            | Intervention::Bias { layer, .. } => *layer,
        }
    }

    /// The token positions it applies to (`None`: all).
    pub fn positions(&self) -> Option<&Range<usize>> {
        match self {
            Intervention::Ablate { at, .. } | Intervention::Force { at, .. } | Intervention::Bias { at, .. } => {
                at.as_ref()
            }
        }
    }

    fn at_mut(&mut self) -> &mut Option<Range<usize>> {
        match self {
            Intervention::Ablate { at, .. } | Intervention::Force { at, .. } | Intervention::Bias { at, .. } => at,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Intervention::Ablate { .. } => "ablate",
            Intervention::Force { .. } => "force",
            Intervention::Bias { .. } => "bias",
        }
    }

    fn applies_to(&self, position: usize) -> bool {
        self.positions().is_none_or(|r| r.contains(&position))
    }

    /// Parses the command line's form of one kind: `LAYER:EXPERTS` (ablate, force) or
    /// `LAYER:EXPERT:DELTA` (bias), each with an optional `@START..END` token range; `EXPERTS` is a
    /// comma-separated list (`27,35`).
    pub fn parse(kind: &str, spec: &str) -> Result<Intervention> {
        let bad = |msg: String| Error::invalid("intervention", format!("{kind} {spec:?}: {msg}"));
        let (body, at) = match spec.split_once('@') {
            Some((b, r)) => (b, Some(parse_range(r).map_err(&bad)?)),
            None => (spec, None),
        };
        let parts: Vec<&str> = body.split(':').map(str::trim).collect();
        let layer = |s: &str| s.parse::<usize>().map_err(|_| bad(format!("{s:?} is not a layer number")));
        let expert = |s: &str| s.parse::<usize>().map_err(|_| bad(format!("{s:?} is not an expert number")));
        let list = |s: &str| -> Result<Vec<usize>> {
            s.split(',').filter(|p| !p.trim().is_empty()).map(|p| expert(p.trim())).collect()
        };
        match (kind, parts.as_slice()) {
            ("ablate", [l, e]) => Ok(Intervention::Ablate { layer: layer(l)?, experts: list(e)?, at }),
            ("force", [l, e]) => Ok(Intervention::Force { layer: layer(l)?, experts: list(e)?, at }),
            ("bias", [l, e, d]) => {
                let delta = d.parse::<f32>().map_err(|_| bad(format!("{d:?} is not a number")))?;
                Ok(Intervention::Bias { layer: layer(l)?, expert: expert(e)?, delta, at })
            }
            ("ablate" | "force", _) => {
                Err(bad("write LAYER:EXPERTS[@START..END], e.g. 14:27,35 or 14:27,35@0..5".into()))
            }
            ("bias", _) => Err(bad("write LAYER:EXPERT:DELTA[@START..END], e.g. 7:27:2.0".into())),
            _ => Err(bad("the kinds are ablate, force and bias".into())),
        }
    }
}

fn parse_range(s: &str) -> std::result::Result<Range<usize>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?} is not a token range START..END (e.g. 0..5)"))?;
    let start = if a.trim().is_empty() { Ok(0) } else { a.trim().parse::<usize>() }
        .map_err(|_| format!("{a:?} is not a token position"))?;
    let end = b.trim().parse::<usize>().map_err(|_| format!("{b:?} is not a token position (END is needed)"))?;
    Ok(start..end)
}

impl fmt::Display for Intervention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        match self {
            Intervention::Ablate { layer, experts, .. } | Intervention::Force { layer, experts, .. } => {
                write!(f, "{} {layer}:{}", self.kind(), ids(experts))?
            }
            Intervention::Bias { layer, expert, delta, .. } => write!(f, "bias {layer}:{expert}:{delta}")?,
        }
        if let Some(r) = self.positions() {
            write!(f, "@{}..{}", r.start, r.end)?;
        }
        Ok(())
    }
}

/// A set of interventions, applied together in one forward pass (or at every step of a generation).
///
/// Build it with [`Interventions::ablate`], [`force`](Interventions::force), [`bias`](Interventions::bias)
/// and [`at`](Interventions::at), or parse it from text (`"ablate 14:27,35; force 3:0,1,2,3,4,5,6,7"`).
/// It is checked against the model when used: a layer or expert the model does not have, a `force`
/// list whose length is not k, an empty token range, or an ablation that leaves fewer than k experts
/// is an error naming the intervention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Interventions {
    items: Vec<Intervention>,
}

impl Interventions {
    /// No intervention: the model as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds: the router of `layer` cannot choose `experts`.
    pub fn ablate(mut self, layer: usize, experts: impl IntoIterator<Item = usize>) -> Self {
        self.items.push(Intervention::Ablate { layer, experts: experts.into_iter().collect(), at: None });
        self
    }

    /// Adds: the router of `layer` chooses exactly `experts` (k of them).
    pub fn force(mut self, layer: usize, experts: impl IntoIterator<Item = usize>) -> Self {
        self.items.push(Intervention::Force { layer, experts: experts.into_iter().collect(), at: None });
        self
    }

    /// Adds: `delta` is added to `expert`'s logit at `layer` before the softmax.
    pub fn bias(mut self, layer: usize, expert: usize, delta: f32) -> Self {
        self.items.push(Intervention::Bias { layer, expert, delta, at: None });
        self
    }

    /// Limits the intervention added last to the token positions `range` (0-based, end excluded;
    /// in a generation, positions count the prompt's tokens first).
    pub fn at(mut self, range: Range<usize>) -> Self {
        if let Some(last) = self.items.last_mut() {
            *last.at_mut() = Some(range);
        }
        self
    }

    /// Adds one intervention.
    pub fn with(mut self, item: Intervention) -> Self {
        self.items.push(item);
        self
    }

    /// The interventions, in the order they were added.
    pub fn items(&self) -> &[Intervention] {
        &self.items
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of interventions.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether any intervention changes `layer`.
    pub fn touches(&self, layer: usize) -> bool {
        self.items.iter().any(|i| i.layer() == layer)
    }

    /// Checks the set against a model of `layers` router layers of `experts` experts, top-`k`.
    pub fn check(&self, layers: usize, experts: usize, k: usize) -> Result<()> {
        let bad = |i: &Intervention, msg: String| Error::invalid("intervention", format!("{i}: {msg}"));
        for i in &self.items {
            if i.layer() >= layers {
                return Err(bad(i, format!("the model has layers 0 to {}", layers.saturating_sub(1))));
            }
            if let Some(r) = i.positions() {
                if r.start >= r.end {
                    return Err(bad(i, format!("the token range {}..{} is empty", r.start, r.end)));
                }
            }
            let ids: &[usize] = match i {
                Intervention::Ablate { experts, .. } | Intervention::Force { experts, .. } => experts,
                Intervention::Bias { expert, .. } => std::slice::from_ref(expert),
            };
            if ids.is_empty() {
                return Err(bad(i, "name at least one expert".into()));
            }
            if let Some(&e) = ids.iter().find(|&&e| e >= experts) {
                return Err(bad(i, format!("expert {e}: the model has experts 0 to {}", experts - 1)));
            }
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(bad(i, format!("expert {} is named twice", w[0])));
            }
            match i {
                Intervention::Force { experts: f, .. } if f.len() != k => {
                    return Err(bad(i, format!("force names exactly k = {k} experts, not {}", f.len())));
                }
                Intervention::Bias { delta, .. } if !delta.is_finite() => {
                    return Err(bad(i, "delta must be a finite number (use ablate to switch an expert off)".into()));
                }
                _ => {}
            }
        }
        // per layer: a forced range must not overlap another intervention of the same layer, and
        // ablations must leave at least k experts at every position
        for (n, a) in self.items.iter().enumerate() {
            for b in &self.items[n + 1..] {
                let both_force_or_one =
                    matches!(a, Intervention::Force { .. }) || matches!(b, Intervention::Force { .. });
                if a.layer() == b.layer() && both_force_or_one && overlap(a.positions(), b.positions()) {
                    return Err(bad(
                        b,
                        format!(
                            "{a} already fixes layer {}'s choice at these tokens; give them separate ranges",
                            a.layer()
                        ),
                    ));
                }
            }
        }
        for l in 0..layers {
            // all ablations of a layer together (conservative when their ranges do not overlap)
            let mut gone: Vec<usize> = self
                .items
                .iter()
                .filter(|i| i.layer() == l)
                .flat_map(|i| match i {
                    Intervention::Ablate { experts, .. } => experts.clone(),
                    _ => vec![],
                })
                .collect();
            gone.sort_unstable();
            gone.dedup();
            if experts - gone.len() < k {
                let last = self.items.iter().rfind(|i| i.layer() == l && matches!(i, Intervention::Ablate { .. }));
                let what = last.map_or_else(|| format!("layer {l}"), |i| i.to_string());
                return Err(Error::invalid(
                    "intervention",
                    format!(
                        "{what}: layer {l} would keep {} of {experts} experts, fewer than the k = {k} it must choose",
                        experts - gone.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The edits of router `layer` for `rows` tokens at positions `positions(row)`: `None` when no
    /// intervention touches these tokens. Call [`Interventions::check`] first.
    pub(crate) fn plan(
        sets: &[Interventions],
        layer: usize,
        b: usize,
        t: usize,
        offset: usize,
        experts: usize,
        k: usize,
    ) -> Option<RoutePlan> {
        if sets.iter().all(|s| !s.touches(layer)) {
            return None;
        }
        let n = b * t;
        let mut plan =
            RoutePlan { add: vec![0.0; n * experts], forced: vec![-1; n * k], any_add: false, any_force: false };
        for bi in 0..b {
            // one set for the whole batch, or one per sequence
            let set = if sets.len() == 1 {
                &sets[0]
            } else if let Some(s) = sets.get(bi) {
                s
            } else {
                continue;
            };
            for ti in 0..t {
                let row = bi * t + ti;
                for i in set.items.iter().filter(|i| i.layer() == layer && i.applies_to(offset + ti)) {
                    let add = &mut plan.add[row * experts..(row + 1) * experts];
                    match i {
                        Intervention::Ablate { experts: ids, .. } => {
                            for &e in ids {
                                add[e] = f32::NEG_INFINITY;
                            }
                            plan.any_add = true;
                        }
                        Intervention::Bias { expert, delta, .. } => {
                            add[*expert] += *delta;
                            plan.any_add = true;
                        }
                        Intervention::Force { experts: ids, .. } => {
                            // ascending ids: ties in probability go to the lower id
                            let mut ids = ids.clone();
                            ids.sort_unstable();
                            for (j, &e) in ids.iter().enumerate().take(k) {
                                plan.forced[row * k + j] = e as i32;
                            }
                            plan.any_force = true;
                        }
                    }
                }
            }
        }
        (plan.any_add || plan.any_force).then_some(plan)
    }
}

fn overlap(a: Option<&Range<usize>>, b: Option<&Range<usize>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.start < b.end && b.start < a.end,
        _ => true,
    }
}

/// One layer's edits for the rows of one forward call (see [`Interventions::plan`]).
#[derive(Debug, Clone)]
pub(crate) struct RoutePlan {
    /// `[N, E]` added to the logits before the softmax: 0, a bias, or −∞ (ablated).
    pub add: Vec<f32>,
    /// `[N, k]` forced expert ids (ascending), or −1 in every entry of a row that is not forced.
    pub forced: Vec<i32>,
    pub any_add: bool,
    pub any_force: bool,
}

impl fmt::Display for Interventions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.items.iter().map(|i| i.to_string()).collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl FromStr for Interventions {
    type Err = Error;
    /// `"ablate 14:27,35; force 3:0,1,2,3,4,5,6,7@2..6; bias 7:27:2.0"` (or `none`).
    fn from_str(s: &str) -> Result<Self> {
        let mut out = Interventions::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty() && *p != "none") {
            let (kind, spec) = part.split_once(char::is_whitespace).ok_or_else(|| {
                Error::invalid("intervention", format!("{part:?}: write KIND SPEC, e.g. \"ablate 14:27,35\""))
            })?;
            out.items.push(Intervention::parse(kind.trim(), spec.trim())?);
        }
        Ok(out)
    }
}

impl From<Intervention> for Interventions {
    fn from(i: Intervention) -> Self {
        Interventions { items: vec![i] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() -> Result<()> {
        let iv = Interventions::new()
            .ablate(14, [27, 35])
            .force(3, 0..8)
            .at(2..6)
            .bias(7, 27, -1.5)
            .with(Intervention::parse("ablate", "0:1@..4")?);
        let text = iv.to_string();
        assert_eq!(text, "ablate 14:27,35; force 3:0,1,2,3,4,5,6,7@2..6; bias 7:27:-1.5; ablate 0:1@0..4");
        assert_eq!(text.parse::<Interventions>()?, iv);
        let json = serde_json::to_string(&iv).map_err(|e| Error::invalid("json", e.to_string()))?;
        let back: Interventions = serde_json::from_str(&json).map_err(|e| Error::invalid("json", e.to_string()))?;
        assert_eq!(back, iv);
        Ok(())
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let check = |iv: Interventions, needle: &str| {
            let msg = iv.check(16, 64, 8).map(|_| String::new()).unwrap_or_else(|e| e.to_string());
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        };
        check(Interventions::new().ablate(16, [1]), "layers 0 to 15");
        check(Interventions::new().ablate(3, [64]), "experts 0 to 63");
        check(Interventions::new().force(3, [1, 2, 3]), "exactly k = 8");
        check(Interventions::new().ablate(3, [1]).at(5..5), "empty");
        check(Interventions::new().ablate(3, 0..57), "fewer than the k = 8");
        check(Interventions::new().ablate(3, [2, 2]), "named twice");
        check(Interventions::new().force(3, 0..8).ablate(3, [9]), "already fixes");
        check(Interventions::new().bias(3, 1, f32::INFINITY), "finite");
        assert!(Interventions::new().ablate(3, 0..56).check(16, 64, 8).is_ok());
        assert!(Interventions::new().force(3, 0..8).at(0..2).ablate(3, [9]).at(2..4).check(16, 64, 8).is_ok());
        for (kind, spec) in
            [("ablate", "14"), ("ablate", "x:1"), ("bias", "1:2"), ("bias", "1:2:x"), ("force", "1:2@3")]
        {
            assert!(Intervention::parse(kind, spec).is_err(), "{kind} {spec}");
        }
    }

    #[test]
    fn plans_cover_the_right_rows() {
        let iv = Interventions::new().ablate(2, [5]).at(1..3).bias(2, 6, 1.0).force(4, 0..2);
        iv.check(8, 8, 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(Interventions::plan(std::slice::from_ref(&iv), 0, 1, 4, 0, 8, 2).is_none());
        let p = Interventions::plan(std::slice::from_ref(&iv), 2, 1, 4, 0, 8, 2).unwrap_or_else(|| panic!("no plan"));
        let row = |r: usize| &p.add[r * 8..(r + 1) * 8];
        assert_eq!(row(0)[5], 0.0);
        assert_eq!(row(1)[5], f32::NEG_INFINITY);
        assert_eq!(row(2)[5], f32::NEG_INFINITY);
        assert_eq!(row(3)[5], 0.0);
        assert!(row(3)[6] == 1.0 && !p.any_force);
        // with a KV cache: the new token at position 2 is ablated
        let p = Interventions::plan(std::slice::from_ref(&iv), 2, 1, 1, 2, 8, 2).unwrap_or_else(|| panic!("no plan"));
        assert_eq!(p.add[5], f32::NEG_INFINITY);
        // one set per sequence of a batch
        let sets = [Interventions::new(), iv.clone()];
        let p = Interventions::plan(&sets, 4, 2, 1, 0, 8, 2).unwrap_or_else(|| panic!("no plan"));
        assert_eq!(p.forced, vec![-1, -1, 0, 1]);
    }
}
