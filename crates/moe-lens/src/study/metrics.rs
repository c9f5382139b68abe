//! Numbers that describe a language's use of experts, from the counts of one layer.
//!
//! Everything here works on the **top-k selection distribution** of a layer and language: expert
//! `e`'s share `p_e = n_e / Σ n` of all top-k selections that tokens of the language made (each
//! token makes k selections).
//!
//! - **distinct**: experts chosen at least once.
//! - **entropy** `H = −Σ p_e ln p_e`, in nats; **effective number of experts** `exp(H)`: the number
//!   of equally used experts that would give the same entropy (between 1 and the number of experts;
//!   with top-k routing at least about k when each token's choices are distinct).
//! - **coverage** `experts_50` / `experts_90`: the fewest experts whose selections add up to at least
//!   50 % / 90 % of all selections (most used first).
//! - **Jensen–Shannon divergence** between two languages' distributions, base 2: 0 for identical,
//!   1 for disjoint distributions.
//! - **specialization**, two readings:
//!   - `specialization = N(E, L) / N(E)`: of all selections of expert E (at one layer), the share
//!     made by tokens of language L. This is the OLMoE paper's domain specialization (Muennighoff et
//!     al., 2024, §5.1) with languages for domains. Its uniform baseline is `1 / number of
//!     languages`; since languages contribute different numbers of tokens, the token-share baseline
//!     `tokens(L) / all tokens` is reported too (an expert indifferent to language sits there).
//!   - `usage = N(E, L) / tokens(L)` = `N(E, L) / (N(L) / k)` with `N(L)` all selections of L: the
//!     fraction of L's tokens that expert E processes. Its uniform-routing baseline is `k / E`.
//!
//! Plug-in estimates of entropy and distinct counts grow with the sample size, so do not compare
//! them between languages with different token counts: [`super::compare`] matches token counts.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::Axis;
use serde::{Deserialize, Serialize};

use super::compare::Comparison;
use super::counts::Counts;
use super::stats::total;
pub use super::stats::{coverage, distinct, effective_number, entropy, jensen_shannon};

/// One layer and language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerLang {
    /// Layer index, from 0.
    pub layer: usize,
    /// The language code.
    pub lang: String,
    /// Counted tokens.
    pub tokens: u64,
    /// Top-k selections (`tokens × k`).
    pub selections: u64,
    /// Experts chosen at least once (top-k).
    pub distinct: usize,
    /// Entropy of the top-k selection distribution, nats.
    pub entropy: f64,
    /// `exp(entropy)`.
    pub effective: f64,
    /// Fewest experts covering 50 % of the selections.
    pub experts_50: usize,
    /// Fewest experts covering 90 % of the selections.
    pub experts_90: usize,
    /// Experts that were ever the first choice.
    pub top1_distinct: usize,
    /// Effective number of the top-1 distribution.
    pub top1_effective: f64,
    /// The most selected expert and its share of the selections.
    pub top_expert: usize,
    /// The most selected expert's share of the selections, 0–1.
    pub top_expert_share: f64,
    /// The expert with the highest specialization N(E,L)/N(E) among experts with at least
    /// `min_selections` selections, and that value.
    pub most_specialized_expert: Option<usize>,
    /// That expert's specialization N(E,L)/N(E), 0–1 (`None` when no expert qualifies).
    pub most_specialized: Option<f64>,
}

/// Jensen–Shannon divergence of two languages at one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerJsd {
    /// Layer index, from 0.
    pub layer: usize,
    /// The first language code.
    pub a: String,
    /// The second language code.
    pub b: String,
    /// Jensen–Shannon divergence of their top-k selection distributions, base 2: 0 (identical) to 1 (disjoint).
    pub jsd: f64,
}

/// The descriptive metrics of a scan (and, from [`super::Study::report`], its comparisons).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Router layers of the model.
    pub layers: usize,
    /// The language codes of the scan.
    pub languages: Vec<String>,
    /// Counted tokens per language code.
    pub tokens: BTreeMap<String, u64>,
    /// One row per layer × language, layer-major.
    pub rows: Vec<LayerLang>,
    /// Every pair of languages at every layer.
    pub jsd: Vec<LayerJsd>,
    /// `specialization[lang][layer][expert]` = N(E,L)/N(E) (`None`: expert never chosen).
    pub specialization: BTreeMap<String, Vec<Vec<Option<f64>>>>,
    /// Baselines of `specialization`: uniform `1 / languages`, and each language's token share.
    pub specialization_uniform: f64,
    /// Each language's share of all counted tokens, the token-share baseline of `specialization`.
    pub token_share: BTreeMap<String, f64>,
    /// `usage[lang][layer][expert]` = N(E,L)/tokens(L): fraction of L's tokens routed to E.
    pub usage: BTreeMap<String, Vec<Vec<f64>>>,
    /// Baseline of `usage` under uniform routing: k / E.
    pub usage_uniform: f64,
    /// Token-matched bootstrap comparisons (empty from [`Metrics::from_counts`]).
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
}

/// Experts with fewer selections than this are left out of "most specialized" (a share of 2
/// selections says little).
pub const MIN_SELECTIONS_FOR_SPECIALIZATION: u64 = 20;

impl Metrics {
    /// The descriptive metrics of a table.
    pub fn from_counts(c: &Counts) -> Metrics {
        let total_topk = c.topk_total(); // [layer, expert]
        let all_tokens: u64 = c.tokens.iter().sum();
        let nl = c.languages.len();
        let mut rows = Vec::new();
        let mut specialization = BTreeMap::new();
        let mut usage = BTreeMap::new();
        for (i, lang) in c.languages.iter().enumerate() {
            let mut spec_l = Vec::with_capacity(c.layers);
            let mut use_l = Vec::with_capacity(c.layers);
            for layer in 0..c.layers {
                let row: Vec<u64> = c.topk.index_axis(Axis(0), i).index_axis(Axis(0), layer).to_vec();
                let spec: Vec<Option<f64>> = row
                    .iter()
                    .zip(total_topk.index_axis(Axis(0), layer))
                    .map(|(&n, &all)| if all == 0 { None } else { Some(n as f64 / all as f64) })
                    .collect();
                let tokens = c.tokens[i];
                use_l.push(row.iter().map(|&n| if tokens == 0 { 0.0 } else { n as f64 / tokens as f64 }).collect());
                spec_l.push(spec);
            }
            specialization.insert(lang.clone(), spec_l);
            usage.insert(lang.clone(), use_l);
        }
        for layer in 0..c.layers {
            for (i, lang) in c.languages.iter().enumerate() {
                let row: Vec<u64> = c.topk.index_axis(Axis(0), i).index_axis(Axis(0), layer).to_vec();
                let top1: Vec<u64> = c.top1.index_axis(Axis(0), i).index_axis(Axis(0), layer).to_vec();
                let sel = total(&row);
                let (top_expert, top_n) =
                    row.iter().enumerate().fold((0, 0), |best, (e, &n)| if n > best.1 { (e, n) } else { best });
                let totals = total_topk.index_axis(Axis(0), layer);
                let mut best: Option<(usize, f64)> = None;
                for e in 0..c.experts {
                    if totals[e] >= MIN_SELECTIONS_FOR_SPECIALIZATION {
                        let v = row[e] as f64 / totals[e] as f64;
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((e, v));
                        }
                    }
                }
                rows.push(LayerLang {
                    layer,
                    lang: lang.clone(),
                    tokens: c.tokens[i],
                    selections: sel,
                    distinct: distinct(&row),
                    entropy: entropy(&row),
                    effective: effective_number(&row),
                    experts_50: coverage(&row, 0.5),
                    experts_90: coverage(&row, 0.9),
                    top1_distinct: distinct(&top1),
                    top1_effective: effective_number(&top1),
                    top_expert,
                    top_expert_share: if sel == 0 { 0.0 } else { top_n as f64 / sel as f64 },
                    most_specialized_expert: best.map(|b| b.0),
                    most_specialized: best.map(|b| b.1),
                });
            }
        }
        let mut jsd = Vec::new();
        for layer in 0..c.layers {
            for i in 0..nl {
                for j in i + 1..nl {
                    let a = c.topk.index_axis(Axis(0), i).index_axis(Axis(0), layer).to_vec();
                    let b = c.topk.index_axis(Axis(0), j).index_axis(Axis(0), layer).to_vec();
                    if let Some(v) = jensen_shannon(&a, &b) {
                        jsd.push(LayerJsd { layer, a: c.languages[i].clone(), b: c.languages[j].clone(), jsd: v });
                    }
                }
            }
        }
        Metrics {
            model: c.model.clone(),
            k: c.k,
            experts: c.experts,
            layers: c.layers,
            languages: c.languages.clone(),
            tokens: c.tokens_by_lang(),
            rows,
            jsd,
            specialization,
            specialization_uniform: if nl == 0 { 0.0 } else { 1.0 / nl as f64 },
            token_share: c
                .languages
                .iter()
                .zip(&c.tokens)
                .map(|(l, &t)| (l.clone(), if all_tokens == 0 { 0.0 } else { t as f64 / all_tokens as f64 }))
                .collect(),
            usage,
            usage_uniform: if c.experts == 0 { 0.0 } else { c.k as f64 / c.experts as f64 },
            comparisons: Vec::new(),
        }
    }

    /// The row of one layer and language.
    pub fn get(&self, layer: usize, lang: &str) -> Option<&LayerLang> {
        self.rows.iter().find(|r| r.layer == layer && r.lang == lang)
    }

    /// Jensen–Shannon divergence of two languages at a layer (either order).
    pub fn jsd(&self, layer: usize, a: &str, b: &str) -> Option<f64> {
        self.jsd.iter().find(|j| j.layer == layer && ((j.a == a && j.b == b) || (j.a == b && j.b == a))).map(|j| j.jsd)
    }

    /// Effective number of experts per layer for one language.
    pub fn effective(&self, lang: &str) -> Vec<f64> {
        self.rows.iter().filter(|r| r.lang == lang).map(|r| r.effective).collect()
    }

    /// `metrics.csv`: one row per layer × language; for languages compared with a reference, the
    /// token-matched difference of the effective number, its interval and the verdict.
    pub fn to_csv(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from(
            "layer,lang,tokens,selections,distinct,entropy_nats,effective_experts,experts_50,experts_90,top1_distinct,\
             top1_effective,top_expert,top_expert_share,most_specialized_expert,most_specialized,\
             vs,matched_tokens,effective_diff,ci_low,ci_high,verdict\n",
        );
        let opt_u = |x: Option<usize>| x.map(|v| v.to_string()).unwrap_or_default();
        let opt_f = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.rows {
            let cmp = self
                .comparisons
                .iter()
                .find(|c| c.a == r.lang)
                .and_then(|c| c.layers.iter().find(|l| l.layer == r.layer).map(|l| (c, l)));
            let tail = match cmp {
                Some((c, l)) => format!(
                    "{},{},{:.6},{:.6},{:.6},{}",
                    c.b,
                    c.matched_tokens,
                    l.diff,
                    l.ci_low,
                    l.ci_high,
                    l.verdict.as_str()
                ),
                None => ",,,,,".to_string(),
            };
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.6},{:.6},{},{},{},{:.6},{},{:.6},{},{},{}",
                r.layer,
                r.lang,
                r.tokens,
                r.selections,
                r.distinct,
                r.entropy,
                r.effective,
                r.experts_50,
                r.experts_90,
                r.top1_distinct,
                r.top1_effective,
                r.top_expert,
                r.top_expert_share,
                opt_u(r.most_specialized_expert),
                opt_f(r.most_specialized),
                tail
            );
        }
        s
    }
}

impl fmt::Display for Metrics {
    /// A table per layer: tokens, distinct experts, effective number, coverage, per language.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let toks: Vec<String> = self.tokens.iter().map(|(l, n)| format!("{l} {n}")).collect();
        writeln!(
            f,
            "{} · {} layers × {} experts · top-{} · tokens: {}",
            self.model,
            self.layers,
            self.experts,
            self.k,
            toks.join(", ")
        )?;
        writeln!(
            f,
            "(effective = exp(entropy) of the top-{} selections; 50%/90% = fewest experts covering that share. \
             Not token-matched: use compare() to compare languages.)",
            self.k
        )?;
        writeln!(
            f,
            "{:>5}  {:<8} {:>8} {:>8} {:>9} {:>5} {:>5}",
            "layer", "lang", "tokens", "distinct", "effective", "50%", "90%"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:>5}  {:<8} {:>8} {:>8} {:>9.2} {:>5} {:>5}",
                r.layer, r.lang, r.tokens, r.distinct, r.effective, r.experts_50, r.experts_90
            )?;
        }
        for c in &self.comparisons {
            writeln!(f)?;
            write!(f, "{c}")?;
        }
        Ok(())
    }
}
