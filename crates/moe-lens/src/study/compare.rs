//! "Does Korean use fewer experts than English?" — answered on token-matched samples with
//! bootstrap confidence intervals.
//!
//! Why matching: the effective number of experts (and the count of distinct experts) of a sample
//! grows with the number of tokens in it, and a Korean sentence has more tokens than its English
//! translation. Comparing whole-corpus numbers would credit Korean with more experts partly because
//! it has more tokens.
//!
//! The procedure, per layer, for languages A and B:
//!
//! 1. `m` = the smaller of the two languages' token counts (and at most
//!    [`CompareOptions::max_tokens`]).
//! 2. **Estimate.** Each replicate takes, for each language, sentences in random order **without
//!    replacement** until it has `m` tokens (of the last sentence, a random subset of just enough
//!    tokens), and computes the effective number of experts, `exp(entropy)` of the top-k selection
//!    distribution of those `m` tokens. The estimate of A − B is the mean over replicates. For the
//!    language with fewer tokens this is simply all of its tokens; the other is subsampled to the
//!    same count, so neither is credited with more experts for having more tokens.
//! 3. **Interval.** Each replicate also draws, for each language, sentences uniformly **with
//!    replacement** (the sentence bootstrap; sentences, not tokens, are resampled because tokens of
//!    one sentence are not independent) until it has `m` tokens, and computes the same difference.
//!    Resampling with replacement repeats sentences, and repeats by themselves lower a sample's
//!    effective number — more for the language whose whole sample is resampled than for the one
//!    drawn from many more tokens. So the bootstrap replicates serve for the spread only: the
//!    interval is their percentile interval (default 95 %) shifted by the difference between the
//!    estimate and the replicates' mean (centred on the estimate).
//! 4. **Verdict.** "A uses fewer experts (CI excludes 0)" when the whole interval is below 0,
//!    "more" when above, else "no clear difference".
//!
//! The same resampled sentences serve every layer of a replicate. The generator is SplitMix64,
//! seeded from [`CompareOptions::seed`] and the two language tags, so results are reproducible and
//! independent of scan order, batch size and sharding (sentences are taken in corpus order).
//!
//! What matching by tokens means: the question is asked per token. Because a Korean sentence has
//! more tokens than its English translation (OLMoE's tokenizer splits most Hangul syllables into
//! two or three byte-level pieces), a matched Korean sample spans fewer sentences than the English
//! one, and the pieces of one syllable tend to go to related experts; both are part of how the
//! model sees Korean, and part of the answer.
//!
//! A caution worth printing: with 16 layers and 95 % intervals, about one layer in twenty shows a
//! "clear" difference by chance alone when there is none.
//!
//! With [`super::ScanOptions::by_script`], a sentence's tokens count under their script's language;
//! the resampled unit is then a sentence's tokens of that language.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::routes::{RoutesReader, SentenceRoutes};
use super::stats::effective_number_u32;
use crate::corpus::{language_name, Fnv64};
use crate::error::{Error, Result};

/// Settings of the bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareOptions {
    /// Bootstrap replicates (default 1000).
    pub replicates: usize,
    /// Confidence level of the intervals (default 0.95).
    pub level: f64,
    /// Seed of the generator (default 0).
    pub seed: u64,
    /// Cap on the matched token count per language and replicate (default 20,000), to bound the
    /// time on huge corpora; below it every token of the smaller language is used.
    pub max_tokens: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions { replicates: 1000, level: 0.95, seed: 0, max_tokens: 20_000 }
    }
}

/// The verdict for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval of A − B lies below 0.
    Fewer,
    /// The interval lies above 0.
    More,
    /// The interval contains 0.
    NoClearDifference,
}

impl Verdict {
    /// `fewer`, `more`, `no_clear_difference`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Fewer => "fewer",
            Verdict::More => "more",
            Verdict::NoClearDifference => "no_clear_difference",
        }
    }

    /// The sentence for language A: "Korean uses fewer experts (CI excludes 0)".
    pub fn sentence(&self, a: &str) -> String {
        let name = language_name(a);
        match self {
            Verdict::Fewer => format!("{name} uses fewer experts (CI excludes 0)"),
            Verdict::More => format!("{name} uses more experts (CI excludes 0)"),
            Verdict::NoClearDifference => "no clear difference".to_string(),
        }
    }
}

/// One layer of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerComparison {
    /// Layer index, from 0.
    pub layer: usize,
    /// Effective number of A's matched samples (mean over subsamples without replacement).
    pub a_effective: f64,
    /// The same for B.
    pub b_effective: f64,
    /// The estimate of A − B: `a_effective − b_effective`.
    pub diff: f64,
    /// The interval of A − B (see the module docs).
    pub ci_low: f64,
    /// Upper end of the interval of A − B (`ci_low` is the lower end).
    pub ci_high: f64,
    /// What the interval says: A has fewer effective experts than B, more, or no clear difference.
    pub verdict: Verdict,
    /// The verdict as a sentence.
    pub answer: String,
}

/// A token-matched comparison of two languages' effective number of experts, per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The language asked about (e.g. `ko`).
    pub a: String,
    /// The reference (e.g. `en`).
    pub b: String,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Sentences (units) of each language.
    pub a_sentences: usize,
    /// Sentences (units) of B.
    pub b_sentences: usize,
    /// Tokens of each language in the whole scan.
    pub a_tokens: u64,
    /// Tokens of B in the whole scan.
    pub b_tokens: u64,
    /// Tokens per language per replicate.
    pub matched_tokens: usize,
    /// The bootstrap's replicates, level, seed and token cap.
    pub options: CompareOptions,
    /// One comparison per layer, in layer order.
    pub layers: Vec<LayerComparison>,
}

impl Comparison {
    /// Layers by verdict: (fewer, more, no clear difference).
    pub fn tally(&self) -> (usize, usize, usize) {
        let n = |v: Verdict| self.layers.iter().filter(|l| l.verdict == v).count();
        (n(Verdict::Fewer), n(Verdict::More), n(Verdict::NoClearDifference))
    }

    /// One layer's row.
    pub fn layer(&self, layer: usize) -> Option<&LayerComparison> {
        self.layers.iter().find(|l| l.layer == layer)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (an, bn) = (language_name(&self.a), language_name(&self.b));
        let pct = self.options.level * 100.0;
        writeln!(
            f,
            "Does {an} ({}) use fewer experts than {bn} ({})? Effective number of experts = exp(entropy) of the \
             top-{} selections, per layer.",
            self.a, self.b, self.k
        )?;
        writeln!(
            f,
            "Token-matched: {} tokens of each language per sample ({} has {} tokens in {} sentences, {} has {} in {}); \
             {} replicates; {pct:.0}% sentence-bootstrap intervals centred on the estimate, seed {}.",
            self.matched_tokens,
            self.a,
            self.a_tokens,
            self.a_sentences,
            self.b,
            self.b_tokens,
            self.b_sentences,
            self.options.replicates,
            self.options.seed
        )?;
        let diff = format!("{}−{}", self.a, self.b);
        writeln!(
            f,
            "{:>5} {:>8} {:>8} {:>8}  {:<20} verdict",
            "layer",
            self.a,
            self.b,
            diff,
            format!("{pct:.0}% interval")
        )?;
        for l in &self.layers {
            let ci = format!("[{:+.2}, {:+.2}]", l.ci_low, l.ci_high);
            writeln!(
                f,
                "{:>5} {:>8.2} {:>8.2} {:>+8.2}  {:<20} {}",
                l.layer, l.a_effective, l.b_effective, l.diff, ci, l.answer
            )?;
        }
        let (fewer, more, none) = self.tally();
        writeln!(
            f,
            "{an} uses fewer experts in {fewer} of {} layers, more in {more}, no clear difference in {none}. Each \
             interval is {pct:.0}% on its own: across {} layers about {:.1} could exclude 0 by chance alone.",
            self.layers.len(),
            self.layers.len(),
            self.layers.len() as f64 * (1.0 - self.options.level)
        )
    }
}

/// SplitMix64: a small, fast, well-mixed generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed` (the same seed gives the same sequence).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The next 64-bit value of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift with rejection (unbiased).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as usize;
            }
        }
    }
}

/// Where a unit's routes are: in memory, or in a routes file (the offset of the record's expert
/// block and the record's counted tokens), read when the unit is drawn.
#[derive(Clone, Copy)]
enum Src<'a> {
    Mem(&'a SentenceRoutes),
    File { at: u64, tokens: u32 },
}

/// A unit's tokens of its language: all of the sentence's counted tokens (the usual case, kept as
/// a count), or a list of them (counting by script).
enum Toks {
    All(u32),
    List(Vec<u32>),
}

impl Toks {
    fn len(&self) -> usize {
        match self {
            Toks::All(n) => *n as usize,
            Toks::List(v) => v.len(),
        }
    }
    fn fill(&self, out: &mut Vec<u32>) {
        out.clear();
        match self {
            Toks::All(n) => out.extend(0..*n),
            Toks::List(v) => out.extend_from_slice(v),
        }
    }
}

/// A resampling unit: one sentence's tokens of one language.
pub(super) struct Unit<'a> {
    src: Src<'a>,
    tokens: Toks,
    /// Counts of all its tokens' selections `[layer * experts + expert]`, kept for sentences long
    /// enough that adding them is cheaper than counting token by token.
    totals: Option<Vec<u32>>,
}

impl Unit<'_> {
    fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// Memory the per-sentence totals may take (of in-memory routes).
const TOTALS_BUDGET_BYTES: usize = 256 << 20;
/// Memory the per-sentence totals of one language may take when the routes are read from a file:
/// small, so that a comparison's memory does not grow with the corpus (the totals only save time).
const FILE_TOTALS_BUDGET_BYTES: usize = 4 << 20;

/// The unit of `r`'s tokens of `lang`, if it has any; totals kept while `budget` lasts.
fn unit_of<'a>(
    r: &SentenceRoutes,
    src: Src<'a>,
    lang: &str,
    dims: (usize, usize, usize),
    budget: &mut usize,
) -> Option<Unit<'a>> {
    let (layers, experts, k) = dims;
    let li = r.langs.iter().position(|l| l == lang)?;
    let n = r.tokens();
    let tokens = if r.token_lang.iter().all(|&l| l as usize == li) {
        Toks::All(n as u32)
    } else {
        Toks::List((0..n).filter(|&t| r.token_lang[t] as usize == li).map(|t| t as u32).collect())
    };
    if tokens.len() == 0 {
        return None;
    }
    let mut totals = None;
    if tokens.len() * k > experts && *budget > 0 {
        *budget -= 1;
        let mut t = vec![0u32; layers * experts];
        let mut idx = Vec::new();
        tokens.fill(&mut idx);
        count_mem(r, &idx, layers, experts, &mut t);
        totals = Some(t);
    }
    Some(Unit { src, tokens, totals })
}

pub(super) fn units<'a>(
    routes: &[&'a SentenceRoutes],
    lang: &str,
    layers: usize,
    experts: usize,
    k: usize,
) -> Vec<Unit<'a>> {
    let mut budget = TOTALS_BUDGET_BYTES / (4 * (layers * experts).max(1));
    routes.iter().filter_map(|&r| unit_of(r, Src::Mem(r), lang, (layers, experts, k), &mut budget)).collect()
}

/// The units of languages `a` and `b` of a routes file, in corpus order, read one record at a
/// time; and the languages seen.
fn file_units(
    path: &Path,
    a: &str,
    b: &str,
    dims: (usize, usize, usize),
    budget_bytes: usize,
) -> Result<(Vec<Unit<'static>>, Vec<Unit<'static>>, BTreeSet<String>)> {
    let (layers, experts, k) = dims;
    let mut reader = RoutesReader::open(path)?;
    if reader.shape() != (layers, k, experts) {
        return Err(Error::invalid(
            "routes file",
            format!("{}: its routes are not of this study's model; scan again", path.display()),
        ));
    }
    let mut budget_a = budget_bytes / (4 * (layers * experts).max(1));
    let mut budget_b = budget_a;
    let (mut ua, mut ub) = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    while let Some(r) = reader.next() {
        let r = r?;
        let at = reader.position() - 2 * r.experts.len() as u64;
        let src = Src::File { at, tokens: r.tokens() as u32 };
        for l in &r.langs {
            if !seen.contains(l) {
                seen.insert(l.clone());
            }
        }
        for (lang, out, bud) in [(a, &mut ua, &mut budget_a), (b, &mut ub, &mut budget_b)] {
            if let Some(u) = unit_of(&r, src, lang, dims, bud) {
                out.push((r.index, u));
            }
        }
    }
    // corpus order, whatever order the file is in
    ua.sort_by_key(|x| x.0);
    ub.sort_by_key(|x| x.0);
    Ok((ua.into_iter().map(|x| x.1).collect(), ub.into_iter().map(|x| x.1).collect(), seen))
}

/// Reads the expert blocks of units in a routes file (none for in-memory routes).
pub(super) struct Experts {
    file: Option<(File, PathBuf)>,
    raw: Vec<u8>,
    block: Vec<u16>,
}

impl Experts {
    /// For in-memory units.
    pub(super) fn in_memory() -> Experts {
        Experts { file: None, raw: Vec::new(), block: Vec::new() }
    }

    fn of_file(path: &Path) -> Result<Experts> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Experts { file: Some((f, path.to_path_buf())), raw: Vec::new(), block: Vec::new() })
    }
}

fn count_mem(r: &SentenceRoutes, toks: &[u32], layers: usize, experts: usize, counts: &mut [u32]) {
    for &t in toks {
        for layer in 0..layers {
            for &e in r.top_k(layer, t as usize) {
                counts[layer * experts + e as usize] += 1;
            }
        }
    }
}

/// Counts the top-k selections of `toks` of unit `u` into `counts` (`[layer * experts + expert]`).
fn count_tokens(
    u: &Unit<'_>,
    toks: &[u32],
    dims: (usize, usize, usize),
    counts: &mut [u32],
    ex: &mut Experts,
) -> Result<()> {
    let (layers, experts, k) = dims;
    match u.src {
        Src::Mem(r) => count_mem(r, toks, layers, experts, counts),
        Src::File { at, tokens } => {
            let Some((f, path)) = &mut ex.file else {
                return Err(Error::invalid("comparison", "a unit of a routes file without the file"));
            };
            let n = tokens as usize;
            ex.raw.resize(2 * layers * n * k, 0);
            f.seek(SeekFrom::Start(at)).map_err(|e| Error::io(&*path, e))?;
            f.read_exact(&mut ex.raw).map_err(|e| Error::io(&*path, e))?;
            ex.block.clear();
            ex.block.extend(ex.raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
            for &t in toks {
                for layer in 0..layers {
                    let start = (layer * n + t as usize) * k;
                    for &e in &ex.block[start..start + k] {
                        counts[layer * experts + e as usize] += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The first `need` tokens of `u` after a random partial shuffle (a uniformly random subset).
fn random_subset<'s>(u: &Unit<'_>, need: usize, rng: &mut SplitMix64, scratch: &'s mut Vec<u32>) -> &'s [u32] {
    u.tokens.fill(scratch);
    for i in 0..need {
        let j = i + rng.below(scratch.len() - i);
        scratch.swap(i, j);
    }
    &scratch[..need]
}

/// Reusable buffers of [`draw`].
#[derive(Default)]
pub(super) struct Scratch {
    subset: Vec<u32>,
    all: Vec<u32>,
    order: Vec<usize>,
}

/// Draws sentences until `m` tokens — with replacement (bootstrap) or without (subsample) —
/// taking a random subset of the last one's tokens, and counts their top-k selections per layer
/// into `counts`.
#[allow(clippy::too_many_arguments)]
pub(super) fn draw(
    units: &[Unit<'_>],
    m: usize,
    replace: bool,
    dims: (usize, usize, usize),
    rng: &mut SplitMix64,
    counts: &mut [u32],
    scratch: &mut Scratch,
    ex: &mut Experts,
) -> Result<()> {
    counts.iter_mut().for_each(|c| *c = 0);
    let order = &mut scratch.order;
    if !replace {
        order.clear();
        order.extend(0..units.len());
    }
    let mut have = 0usize;
    let mut next = 0usize;
    while have < m {
        let u = if replace {
            &units[rng.below(units.len())]
        } else {
            // partial Fisher–Yates over the sentences; m never exceeds the language's tokens
            if next >= order.len() {
                break;
            }
            let j = next + rng.below(order.len() - next);
            order.swap(next, j);
            next += 1;
            &units[order[next - 1]]
        };
        let need = m - have;
        if u.len() <= need {
            match &u.totals {
                Some(t) => counts.iter_mut().zip(t).for_each(|(c, x)| *c += x),
                None => {
                    u.tokens.fill(&mut scratch.all);
                    count_tokens(u, &scratch.all, dims, counts, ex)?;
                }
            }
            have += u.len();
        } else {
            let toks = random_subset(u, need, rng, &mut scratch.subset);
            count_tokens(u, toks, dims, counts, ex)?;
            have += need;
        }
    }
    Ok(())
}

/// Percentile (linear interpolation between order statistics) of sorted values.
pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

/// Compares languages `a` and `b` on per-sentence routes (see the module docs).
pub fn compare(
    routes: &[SentenceRoutes],
    layers: usize,
    experts: usize,
    k: usize,
    a: &str,
    b: &str,
    opts: &CompareOptions,
) -> Result<Comparison> {
    check_options(a, b, opts)?;
    // corpus order, whatever order the scan or the shards produced
    let mut sorted: Vec<&SentenceRoutes> = routes.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let ua = units(&sorted, a, layers, experts, k);
    let ub = units(&sorted, b, layers, experts, k);
    let seen: BTreeSet<String> = sorted.iter().flat_map(|r| r.langs.iter().cloned()).collect();
    compare_units(&ua, &ub, &seen, (layers, experts, k), a, b, opts, &mut Experts::in_memory())
}

/// [`compare`] of the routes in a routes file (`routes.bin`), read from the file as the bootstrap
/// draws them: memory holds a few numbers per sentence, not the routes. The same result as
/// [`compare`] of the file's routes.
pub fn compare_file(
    path: &Path,
    layers: usize,
    experts: usize,
    k: usize,
    a: &str,
    b: &str,
    opts: &CompareOptions,
) -> Result<Comparison> {
    check_options(a, b, opts)?;
    let dims = (layers, experts, k);
    let (ua, ub, seen) = file_units(path, a, b, dims, FILE_TOTALS_BUDGET_BYTES)?;
    compare_units(&ua, &ub, &seen, dims, a, b, opts, &mut Experts::of_file(path)?)
}

fn check_options(a: &str, b: &str, opts: &CompareOptions) -> Result<()> {
    if a == b {
        return Err(Error::invalid(
            "comparison",
            format!("both languages are {a:?}: compare two different languages, e.g. (\"ko\", \"en\")"),
        ));
    }
    if opts.replicates < 2 || opts.replicates > 1_000_000 {
        return Err(Error::invalid("replicates", format!("{}: use 2 to 1,000,000 (1000 is usual)", opts.replicates)));
    }
    if !(opts.level > 0.0 && opts.level < 1.0) {
        return Err(Error::invalid(
            "level",
            format!("{}: give a confidence level between 0 and 1, e.g. 0.95", opts.level),
        ));
    }
    if opts.max_tokens == 0 {
        return Err(Error::invalid("max_tokens", "0: give a positive cap on the matched token count"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn compare_units(
    ua: &[Unit<'_>],
    ub: &[Unit<'_>],
    seen: &BTreeSet<String>,
    dims: (usize, usize, usize),
    a: &str,
    b: &str,
    opts: &CompareOptions,
    ex: &mut Experts,
) -> Result<Comparison> {
    let (layers, experts, k) = dims;
    for (lang, u) in [(a, ua), (b, ub)] {
        if u.is_empty() {
            let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
            return Err(Error::invalid(
                "language",
                format!("{lang:?} has no counted tokens in this scan; it has: {}", seen.join(", ")),
            ));
        }
    }
    let ta: usize = ua.iter().map(Unit::len).sum();
    let tb: usize = ub.iter().map(Unit::len).sum();
    let m = ta.min(tb).min(opts.max_tokens);

    let mut h = Fnv64::new();
    h.write(a.as_bytes());
    h.write(b"\x1f");
    h.write(b.as_bytes());
    let mut rng = SplitMix64::new(opts.seed ^ h.0);
    let mut ca = vec![0u32; layers * experts];
    let mut cb = vec![0u32; layers * experts];
    let mut scratch = Scratch::default();
    let mut boot: Vec<Vec<f64>> = vec![Vec::with_capacity(opts.replicates); layers];
    let mut sum_a = vec![0f64; layers];
    let mut sum_b = vec![0f64; layers];
    for _ in 0..opts.replicates {
        // the estimate: matched subsamples without replacement
        draw(ua, m, false, dims, &mut rng, &mut ca, &mut scratch, ex)?;
        draw(ub, m, false, dims, &mut rng, &mut cb, &mut scratch, ex)?;
        for l in 0..layers {
            sum_a[l] += effective_number_u32(&ca[l * experts..(l + 1) * experts]);
            sum_b[l] += effective_number_u32(&cb[l * experts..(l + 1) * experts]);
        }
        // the spread: matched sentence-bootstrap samples
        draw(ua, m, true, dims, &mut rng, &mut ca, &mut scratch, ex)?;
        draw(ub, m, true, dims, &mut rng, &mut cb, &mut scratch, ex)?;
        for l in 0..layers {
            let ea = effective_number_u32(&ca[l * experts..(l + 1) * experts]);
            let eb = effective_number_u32(&cb[l * experts..(l + 1) * experts]);
            boot[l].push(ea - eb);
        }
    }
    let r = opts.replicates as f64;
    let alpha = 1.0 - opts.level;
    let layers_out = (0..layers)
        .map(|l| {
            let (a_eff, b_eff) = (sum_a[l] / r, sum_b[l] / r);
            let estimate = a_eff - b_eff;
            let d = &mut boot[l];
            let shift = estimate - d.iter().sum::<f64>() / r;
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
            LayerComparison {
                layer: l,
                a_effective: a_eff,
                b_effective: b_eff,
                diff: estimate,
                ci_low: lo,
                ci_high: hi,
                verdict,
                answer: verdict.sentence(a),
            }
        })
        .collect();
    Ok(Comparison {
        a: a.to_string(),
        b: b.to_string(),
        k,
        a_sentences: ua.len(),
        b_sentences: ub.len(),
        a_tokens: ta as u64,
        b_tokens: tb as u64,
        matched_tokens: m,
        options: opts.clone(),
        layers: layers_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random routes of 3 layers × 16 experts, top-4: sentences of `en`, `ko` and both (by script).
    fn synthetic() -> Vec<SentenceRoutes> {
        let (layers, experts, k) = (3, 16, 4);
        let mut rng = SplitMix64::new(7);
        (0..60u32)
            .map(|i| {
                let n = 1 + rng.below(12);
                let (langs, token_lang): (Vec<String>, Vec<u8>) = match i % 3 {
                    0 => (vec!["en".into()], vec![0; n]),
                    1 => (vec!["ko".into()], vec![0; n]),
                    _ => (vec!["ko".into(), "en".into()], (0..n).map(|_| rng.below(2) as u8).collect()),
                };
                let mut experts_v = Vec::new();
                for _ in 0..layers * n {
                    let mut all: Vec<u16> = (0..experts as u16).collect();
                    for j in 0..k {
                        let x = j + rng.below(experts - j);
                        all.swap(j, x);
                    }
                    experts_v.extend_from_slice(&all[..k]);
                }
                SentenceRoutes {
                    // scan order is not corpus order
                    index: (i * 37) % 60,
                    id: format!("s{i}"),
                    langs,
                    token_lang,
                    domain: None,
                    token_ids: (0..n as u32).collect(),
                    positions: (0..n as u32).collect(),
                    layers,
                    k,
                    experts: experts_v,
                }
            })
            .collect()
    }

    #[test]
    fn a_routes_file_compares_as_the_routes_in_memory() {
        let routes = synthetic();
        let dir = std::env::temp_dir().join(format!("moe-lens-compare-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.bin");
        let mut bytes = super::super::routes::header(3, 4, 16);
        for r in &routes {
            r.encode_into(&mut bytes).unwrap();
        }
        std::fs::write(&path, &bytes).unwrap();
        let opts = CompareOptions { replicates: 30, max_tokens: 50, ..CompareOptions::default() };
        for (a, b) in [("ko", "en"), ("en", "ko")] {
            let want = compare(&routes, 3, 16, 4, a, b, &opts).unwrap();
            assert_eq!(compare_file(&path, 3, 16, 4, a, b, &opts).unwrap(), want);
            // every unit read from the file as it is drawn (no totals kept)
            let dims = (3, 16, 4);
            let (ua, ub, seen) = file_units(&path, a, b, dims, 0).unwrap();
            assert!(ua.iter().chain(&ub).all(|u| u.totals.is_none()));
            let got = compare_units(&ua, &ub, &seen, dims, a, b, &opts, &mut Experts::of_file(&path).unwrap()).unwrap();
            assert_eq!(got, want);
        }
        // and sorting the file by corpus position keeps every record
        super::super::routes::sort_file(&path).unwrap();
        let (_, sorted) = super::super::routes::read_file(&path).unwrap();
        let mut want = routes.clone();
        want.sort_by_key(|r| r.index);
        assert_eq!(sorted, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            seen[r.below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
    }

    #[test]
    fn splitmix_reference_values() {
        // first outputs for seed 1234567 (the reference implementation's test vector)
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.25), 2.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
    }
}
