//! A verdict beyond the tokenizer: each language comparison next to the same statistic under a
//! token-identity null.
//!
//! An untrained router's choice follows the token id, and Korean text has far fewer distinct token
//! ids than English, so "Korean uses fewer experts" can be the tokenizer talking. The null routing
//! gives each distinct token id one fixed random top-k per layer (k distinct experts drawn
//! uniformly, seeded by the seed, the layer and the id: the same for every occurrence), keeping
//! every sentence and token where it is. [`compare_with_null`] runs the token-matched bootstrap of
//! [`super::compare`] on the observed and on the null routing with the very same draws (the
//! resampled sentences and tokens depend only on the token counts, which the two share), so each
//! replicate gives `observed (A − B) − null (A − B)`: the estimate is their mean over the
//! subsamples, the interval the centred percentile interval of the bootstrap replicates, as in
//! [`super::compare`]. "Fewer beyond what the tokenizer explains" when the whole interval is below
//! 0. The observed column equals [`super::compare`]'s estimate exactly (same seed, same draws).

use std::fmt;

use super::compare::{draw, percentile, units, CompareOptions, Experts, Scratch, SplitMix64, Verdict};
use super::routes::SentenceRoutes;
use super::stats::effective_number_u32;
use crate::corpus::{language_name, Fnv64};
use crate::error::{Error, Result};

/// One layer of a comparison against the token-identity null.
#[derive(Debug, Clone, PartialEq)]
pub struct NullLayer {
    /// Layer index, from 0.
    pub layer: usize,
    /// The observed estimate of A − B (effective number of experts; as [`super::compare`]).
    pub observed: f64,
    /// The same under the token-identity null.
    pub null: f64,
    /// `observed − null`: what the routing adds beyond the token ids.
    pub excess: f64,
    /// Interval of `excess`.
    pub ci_low: f64,
    /// Upper end of the interval of `excess` (`ci_low` is the lower end).
    pub ci_high: f64,
    /// The verdict on `excess` (fewer: A uses fewer experts beyond what the tokenizer explains).
    pub verdict: Verdict,
}

/// A language comparison next to its token-identity null, per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct NullComparison {
    /// The language asked about (e.g. `ko`).
    pub a: String,
    /// The reference language (e.g. `en`).
    pub b: String,
    /// Tokens per language per replicate.
    pub matched_tokens: usize,
    /// Distinct token ids of each language.
    pub a_distinct_ids: usize,
    /// Distinct token ids of B (`a_distinct_ids` is A's).
    pub b_distinct_ids: usize,
    /// The bootstrap's replicates, level, seed and token cap.
    pub options: CompareOptions,
    /// One entry per layer, in layer order.
    pub layers: Vec<NullLayer>,
}

impl NullComparison {
    /// Layers by verdict on the excess: (fewer, more, no clear difference).
    pub fn tally(&self) -> (usize, usize, usize) {
        let n = |v: Verdict| self.layers.iter().filter(|l| l.verdict == v).count();
        (n(Verdict::Fewer), n(Verdict::More), n(Verdict::NoClearDifference))
    }
}

/// The null top-k of token `id` at `layer`: k distinct experts, uniformly, seeded.
pub fn null_top_k(seed: u64, layer: usize, id: u32, experts: usize, k: usize) -> Vec<u16> {
    let mut h = Fnv64::new();
    h.write(b"token-identity null\x1f");
    h.write(&(layer as u64).to_le_bytes());
    h.write(&id.to_le_bytes());
    let mut rng = SplitMix64::new(seed ^ h.0);
    let mut all: Vec<u16> = (0..experts as u32).map(|e| e as u16).collect();
    let k = k.min(experts);
    for i in 0..k {
        let j = i + rng.below(experts - i);
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

/// The routes with every token's experts replaced by its token id's null top-k.
pub fn null_routes(routes: &[SentenceRoutes], experts: usize, seed: u64) -> Result<Vec<SentenceRoutes>> {
    let mut cache: std::collections::HashMap<(usize, u32), Vec<u16>> = std::collections::HashMap::new();
    routes
        .iter()
        .map(|r| {
            let n = r.tokens();
            if r.token_ids.len() != n {
                return Err(Error::invalid(
                    "token-identity null",
                    format!(
                        "sentence {} has no token ids (a routes.bin of an older moe-lens): scan again to compare with the null",
                        r.id
                    ),
                ));
            }
            let mut out = r.clone();
            for layer in 0..r.layers {
                for t in 0..n {
                    let ks = cache
                        .entry((layer, r.token_ids[t]))
                        .or_insert_with(|| null_top_k(seed, layer, r.token_ids[t], experts, r.k));
                    let start = (layer * n + t) * r.k;
                    out.experts[start..start + r.k].copy_from_slice(ks);
                }
            }
            Ok(out)
        })
        .collect()
}

/// Compares `a` with `b` (see [`super::compare`]) and against the token-identity null (see the
/// module docs).
pub fn compare_with_null(
    routes: &[SentenceRoutes],
    layers: usize,
    experts: usize,
    k: usize,
    a: &str,
    b: &str,
    opts: &CompareOptions,
) -> Result<NullComparison> {
    // the checks and the matched count of the ordinary comparison (errors said the same way)
    let plain =
        super::compare::compare(routes, layers, experts, k, a, b, &CompareOptions { replicates: 2, ..opts.clone() })?;
    let m = plain.matched_tokens;
    let null = null_routes(routes, experts, opts.seed)?;
    let mut sorted: Vec<&SentenceRoutes> = routes.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let mut sorted_null: Vec<&SentenceRoutes> = null.iter().collect();
    sorted_null.sort_by_key(|r| r.index);
    let (ua, ub) = (units(&sorted, a, layers, experts, k), units(&sorted, b, layers, experts, k));
    let (na, nb) = (units(&sorted_null, a, layers, experts, k), units(&sorted_null, b, layers, experts, k));
    let distinct = |lang: &str| -> usize {
        let mut ids = std::collections::HashSet::new();
        for r in routes {
            for t in 0..r.tokens() {
                if r.lang_of(t) == lang {
                    ids.insert(r.token_ids[t]);
                }
            }
        }
        ids.len()
    };

    let mut h = Fnv64::new();
    h.write(a.as_bytes());
    h.write(b"\x1f");
    h.write(b.as_bytes());
    let mut rng = SplitMix64::new(opts.seed ^ h.0);
    let (mut ca, mut cb) = (vec![0u32; layers * experts], vec![0u32; layers * experts]);
    let mut scratch = Scratch::default();
    let mut ex = Experts::in_memory();
    let dims = (layers, experts, k);
    let eff = |c: &[u32], l: usize| effective_number_u32(&c[l * experts..(l + 1) * experts]);
    // sums of A's and B's effective numbers, observed and null, summed as super::compare does
    let mut sums = vec![[0f64; 4]; layers];
    let mut boot: Vec<Vec<f64>> = vec![Vec::with_capacity(opts.replicates); layers];
    // one draw of A then B on the observed units, and the same draw (same generator state) on the
    // null units; gives per layer [A observed, B observed, A null, B null]
    let mut paired = |replace: bool, rng: &mut SplitMix64, out: &mut Vec<[f64; 4]>| -> Result<()> {
        let start = rng.clone();
        draw(&ua, m, replace, dims, rng, &mut ca, &mut scratch, &mut ex)?;
        draw(&ub, m, replace, dims, rng, &mut cb, &mut scratch, &mut ex)?;
        out.clear();
        out.extend((0..layers).map(|l| [eff(&ca, l), eff(&cb, l), 0.0, 0.0]));
        let mut again = start;
        draw(&na, m, replace, dims, &mut again, &mut ca, &mut scratch, &mut ex)?;
        draw(&nb, m, replace, dims, &mut again, &mut cb, &mut scratch, &mut ex)?;
        for (l, x) in out.iter_mut().enumerate() {
            x[2] = eff(&ca, l);
            x[3] = eff(&cb, l);
        }
        Ok(())
    };
    let mut o = Vec::new();
    for _ in 0..opts.replicates {
        paired(false, &mut rng, &mut o)?;
        for (s, x) in sums.iter_mut().zip(&o) {
            for i in 0..4 {
                s[i] += x[i];
            }
        }
        paired(true, &mut rng, &mut o)?;
        for (b, x) in boot.iter_mut().zip(&o) {
            b.push((x[0] - x[1]) - (x[2] - x[3]));
        }
    }
    let r = opts.replicates as f64;
    let alpha = 1.0 - opts.level;
    let layers_out = (0..layers)
        .map(|l| {
            let s = sums[l];
            let (observed, null) = (s[0] / r - s[1] / r, s[2] / r - s[3] / r);
            let excess = observed - null;
            let d = &mut boot[l];
            let shift = excess - d.iter().sum::<f64>() / r;
            d.sort_by(f64::total_cmp);
            let lo = percentile(d, alpha / 2.0) + shift;
            let hi = percentile(d, 1.0 - alpha / 2.0) + shift;
            let verdict = if hi < 0.0 {
                Verdict::Fewer
            } else if lo > 0.0 {
                Verdict::More
            } else {
                Verdict::NoClearDifference
            };
            NullLayer { layer: l, observed, null, excess, ci_low: lo, ci_high: hi, verdict }
        })
        .collect();
    Ok(NullComparison {
        a: a.to_string(),
        b: b.to_string(),
        matched_tokens: m,
        a_distinct_ids: distinct(a),
        b_distinct_ids: distinct(b),
        options: opts.clone(),
        layers: layers_out,
    })
}

impl fmt::Display for NullComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (an, bn) = (language_name(&self.a), language_name(&self.b));
        writeln!(
            f,
            "{an} vs {bn}: effective number of experts, {an} − {bn}, on {} matched tokens, observed and under a \
             token-identity null (each distinct token id one fixed random top-k; {} distinct ids in {an}, {} in {bn})",
            self.matched_tokens, self.a_distinct_ids, self.b_distinct_ids
        )?;
        let pct = 100.0 * self.options.level;
        writeln!(
            f,
            "layer  observed     null   observed−null  {pct:.0}% interval        verdict beyond the tokenizer"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:>5}  {:>8.2}  {:>7.2}  {:>13.2}  [{:>7.2}, {:>7.2}]  {}",
                l.layer,
                l.observed,
                l.null,
                l.excess,
                l.ci_low,
                l.ci_high,
                match l.verdict {
                    Verdict::Fewer => "fewer",
                    Verdict::More => "more",
                    Verdict::NoClearDifference => "no clear difference",
                }
            )?;
        }
        let (fewer, more, none) = self.tally();
        write!(
            f,
            "{an} uses fewer experts beyond what the tokenizer explains in {fewer} of {} layers, more in {more}, no clear \
             difference in {none}.",
            self.layers.len()
        )
    }
}

impl NullComparison {
    /// Notebook display: the table.
    pub fn evcxr_display(&self) {
        super::evcxr_text(&self.to_string());
    }
}
