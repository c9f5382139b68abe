//! Which experts each language's tokens are sent to, per layer: the numbers the study charts draw
//! (`plot::charts`), for anyone who wants them without a picture.
//!
//! For language L, layer l and expert E (N = top-k selections, counted over the tokens of the scan):
//! - **share** = N(E, L) / N(L): of L's top-k selections at layer l, the fraction that went to E
//!   (a language's shares add up to 1; uniform routing gives 1/64 each);
//! - **usage** = N(E, L) / tokens(L): the fraction of L's tokens that had E among their top-k
//!   (uniform routing: k/64 = 12.5 % for top-8);
//! - **specialization** = N(E, L) / N(E): of all selections of E, the fraction made by L's tokens
//!   (the OLMoE paper's domain specialization, with languages for domains).
//!
//! ```no_run
//! # use moe_lens::study::{shares::{ExpertShares, Measure}, Study};
//! # fn demo(study: &Study) -> moe_lens::Result<()> {
//! let shares = ExpertShares::new(&study.counts)?;
//! let ko = shares.language_index("ko")?;
//! println!("{:?}", shares.value(Measure::Share, ko, 14, 12));   // expert 12's share of Korean's selections
//! println!("{:?}", shares.top_experts(ko, 14, 5));              // Korean's 5 most used experts at layer 14
//! # Ok(()) }
//! ```
//!
//! Languages are addressed by their index in [`ExpertShares::languages`] (the study's order, sorted
//! by tag); [`ExpertShares::select`] checks a list of tags and gives their indices.

use super::counts::Counts;
use super::stats::{coverage, distinct, effective_number, entropy};
use crate::error::{Error, Result};

/// Which number of a language × expert table to read (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// N(E, L) / N(L): the expert's share of the language's top-k selections (default).
    #[default]
    Share,
    /// N(E, L) / tokens(L): the fraction of the language's tokens that had the expert in their top-k.
    Usage,
    /// N(E, L) / N(E): the language's share of the expert's selections (grey: expert never chosen).
    Specialization,
}

/// One of a language's most used experts at one layer (see [`ExpertShares::top_experts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TopExpert {
    /// The language code.
    pub lang: String,
    /// 1 = most used.
    pub rank: usize,
    /// Expert index, in 0..experts.
    pub expert: usize,
    /// Top-k selections of the expert by the language's tokens at this layer.
    pub count: u64,
    /// `count / tokens(lang)`: the fraction of the language's tokens sent to the expert.
    pub usage: f64,
    /// `count / selections(lang)`.
    pub share: f64,
}

/// A copy of a study's counts, checked (shapes match, some tokens counted), with the sums every
/// share needs.
#[derive(Debug, Clone)]
pub struct ExpertShares {
    model: String,
    layers: usize,
    experts: usize,
    k: usize,
    langs: Vec<String>,
    tokens: Vec<u64>,
    /// `[lang][layer][expert]`, flattened.
    topk: Vec<u64>,
    /// `[layer][expert]`: selections over all languages.
    totals: Vec<u64>,
}

impl ExpertShares {
    /// Checks and copies a study's counts. Errors (`InvalidArgument`, never a panic): no layers or
    /// experts, tables that do not match their shape, no counted tokens.
    pub fn new(c: &Counts) -> Result<ExpertShares> {
        let nl = c.languages.len();
        if c.layers == 0 || c.experts == 0 {
            return Err(Error::invalid(
                "study",
                format!("the counts describe {} layers of {} experts: nothing to draw", c.layers, c.experts),
            ));
        }
        if c.topk.dim() != (nl, c.layers, c.experts) || c.tokens.len() != nl {
            return Err(Error::invalid(
                "study",
                format!(
                    "the count tables ({:?}, {} token counts) do not match {nl} languages × {} layers × {} experts",
                    c.topk.dim(),
                    c.tokens.len(),
                    c.layers,
                    c.experts
                ),
            ));
        }
        if nl == 0 || c.tokens.iter().all(|&t| t == 0) {
            return Err(Error::invalid(
                "study",
                "it has no counted tokens, so there is nothing to draw: scan some sentences first \
                 (lens.scan(&sentences, &ScanOptions::default())?)",
            ));
        }
        let topk: Vec<u64> = c.topk.iter().copied().collect();
        let mut totals = vec![0u64; c.layers * c.experts];
        for li in 0..nl {
            for (t, x) in totals.iter_mut().zip(&topk[li * c.layers * c.experts..(li + 1) * c.layers * c.experts]) {
                *t += x;
            }
        }
        Ok(ExpertShares {
            model: c.model.clone(),
            layers: c.layers,
            experts: c.experts,
            k: c.k,
            langs: c.languages.clone(),
            tokens: c.tokens.clone(),
            topk,
            totals,
        })
    }

    /// The model as the scan named it.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Router layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Experts per layer.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Experts chosen per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Language tags, in the study's order (sorted); their positions are the language indices.
    pub fn languages(&self) -> &[String] {
        &self.langs
    }

    /// Counted tokens of language `li`.
    pub fn tokens(&self, li: usize) -> u64 {
        self.tokens[li]
    }

    /// Counted tokens of all languages.
    pub fn all_tokens(&self) -> u64 {
        self.tokens.iter().sum()
    }

    /// Language `li`'s fraction of all counted tokens (the baseline of specialization for an expert
    /// indifferent to language).
    pub fn token_share(&self, li: usize) -> f64 {
        let all = self.all_tokens();
        if all > 0 {
            self.tokens[li] as f64 / all as f64
        } else {
            0.0
        }
    }

    /// Selections of every expert by language `li` at `layer`.
    pub fn row(&self, li: usize, layer: usize) -> &[u64] {
        let at = (li * self.layers + layer) * self.experts;
        &self.topk[at..at + self.experts]
    }

    /// Selections of expert `e` at `layer`, over all languages: N(E).
    pub fn total(&self, layer: usize, e: usize) -> u64 {
        self.totals[layer * self.experts + e]
    }

    /// All top-k selections of language `li` at `layer`: N(L).
    pub fn selections(&self, li: usize, layer: usize) -> u64 {
        self.row(li, layer).iter().sum()
    }

    /// The number `m` of one language × expert cell; `None` where it is undefined (no selections to
    /// divide by).
    pub fn value(&self, m: Measure, li: usize, layer: usize, e: usize) -> Option<f64> {
        let n = self.row(li, layer)[e] as f64;
        let d = match m {
            Measure::Share => self.selections(li, layer),
            Measure::Usage => self.tokens[li],
            Measure::Specialization => self.total(layer, e),
        };
        (d > 0).then(|| n / d as f64)
    }

    /// What uniform routing would give for `m`.
    pub fn uniform(&self, m: Measure) -> f64 {
        match m {
            Measure::Share => 1.0 / self.experts as f64,
            Measure::Usage => self.k as f64 / self.experts as f64,
            Measure::Specialization => 1.0 / self.langs.len() as f64,
        }
    }

    /// Effective number of experts (exp of the entropy of the selections) of language `li` at `layer`.
    pub fn effective(&self, li: usize, layer: usize) -> f64 {
        effective_number(self.row(li, layer))
    }

    /// Effective number of experts of language `li` at every layer (what `Metrics::effective` gives).
    pub fn effective_by_layer(&self, li: usize) -> Vec<f64> {
        (0..self.layers).map(|l| self.effective(li, l)).collect()
    }

    /// Entropy, in nats, of language `li`'s selections at `layer`.
    pub fn entropy(&self, li: usize, layer: usize) -> f64 {
        entropy(self.row(li, layer))
    }

    /// Experts language `li` chose at least once at `layer`.
    pub fn distinct(&self, li: usize, layer: usize) -> usize {
        distinct(self.row(li, layer))
    }

    /// The fewest experts covering `share` (0–1) of language `li`'s selections at `layer`.
    pub fn coverage(&self, li: usize, layer: usize, share: f64) -> usize {
        coverage(self.row(li, layer), share)
    }

    /// Language `li`'s most used expert at `layer` and its count (the lowest expert on a tie; expert
    /// 0 and 0 when nothing was selected).
    pub fn most_used(&self, li: usize, layer: usize) -> (usize, u64) {
        self.row(li, layer).iter().enumerate().fold((0, 0), |b, (e, &n)| if n > b.1 { (e, n) } else { b })
    }

    /// Every expert, most used by language `li` at `layer` first (ties: lower expert first).
    pub fn ranked(&self, li: usize, layer: usize) -> Vec<usize> {
        let row = self.row(li, layer);
        let mut order: Vec<usize> = (0..self.experts).collect();
        order.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        order
    }

    /// Language `li`'s `n` most used experts at `layer`, most used first (ties: lower expert first);
    /// experts never chosen are left out.
    pub fn top_experts(&self, li: usize, layer: usize, n: usize) -> Vec<TopExpert> {
        let row = self.row(li, layer);
        let sel = self.selections(li, layer);
        let mut order: Vec<usize> = (0..self.experts).filter(|&e| row[e] > 0).collect();
        order.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(n)
            .enumerate()
            .map(|(r, e)| TopExpert {
                lang: self.langs[li].clone(),
                rank: r + 1,
                expert: e,
                count: row[e],
                usage: if self.tokens[li] > 0 { row[e] as f64 / self.tokens[li] as f64 } else { 0.0 },
                share: if sel > 0 { row[e] as f64 / sel as f64 } else { 0.0 },
            })
            .collect()
    }

    /// The experts found in every one of `lists` (e.g. each language's [`top_experts`](Self::top_experts)),
    /// in expert order.
    pub fn common_experts(&self, lists: &[Vec<TopExpert>]) -> Vec<usize> {
        (0..self.experts).filter(|e| lists.iter().all(|bs| bs.iter().any(|b| b.expert == *e))).collect()
    }

    /// The `n` experts with the largest share of the selections at `layer` summed over the languages
    /// `langs` (so each language counts equally, whatever its number of tokens); ties: lower expert
    /// first.
    pub fn by_mean_share(&self, langs: &[usize], layer: usize, n: usize) -> Vec<usize> {
        let mean =
            |e: usize| -> f64 { langs.iter().map(|&li| self.value(Measure::Share, li, layer, e).unwrap_or(0.0)).sum() };
        let mut order: Vec<usize> = (0..self.experts).collect();
        order.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)).then(a.cmp(&b)));
        order.truncate(n);
        order
    }

    /// The index of one language.
    pub fn language_index(&self, lang: &str) -> Result<usize> {
        self.langs.iter().position(|l| l == lang).ok_or_else(|| {
            Error::invalid(
                "language",
                format!("{lang:?} has no counted tokens; counted languages: {}", self.langs.join(", ")),
            )
        })
    }

    /// Indices of the languages to show: all (in the study's order) or those asked for, checked (known,
    /// not listed twice, not an empty list).
    pub fn select(&self, wanted: Option<&[String]>) -> Result<Vec<usize>> {
        let Some(wanted) = wanted else { return Ok((0..self.langs.len()).collect()) };
        if wanted.is_empty() {
            return Err(Error::invalid("languages", format!("none given; the study has {}", self.langs.join(", "))));
        }
        let mut out = Vec::new();
        for w in wanted {
            let i = self.language_index(w)?;
            if out.contains(&i) {
                return Err(Error::invalid("languages", format!("{w:?} is listed twice")));
            }
            out.push(i);
        }
        Ok(out)
    }
}
