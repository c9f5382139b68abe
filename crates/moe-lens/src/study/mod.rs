//! Language study: run a corpus through the model in batches, count which experts each language's
//! tokens are routed to, and compare languages honestly.
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! use moe_lens::corpus;
//! use moe_lens::study::{self, ScanExt, ScanOptions};
//! # fn main() -> moe_lens::Result<()> {
//! let lens = load("allenai/OLMoE-1B-7B-0924")?;
//! let study = lens.scan(&corpus::builtin()?, &ScanOptions::default())?;   // or study::scan(&lens, …)
//! println!("{}", study.counts.count("ko", 7, 12)?);   // how often expert 12 of layer 7 serves Korean
//! println!("{}", study.metrics());                    // distinct / effective experts per layer
//! println!("{}", study.compare("ko", "en")?);          // token-matched, bootstrap intervals, verdicts
//! # Ok(()) }
//! ```
//!
//! What is counted: every real token of every sentence (padding never), under its sentence's
//! language — or, with [`ScanOptions::by_script`], under the language of its Unicode script (Hangul
//! → `ko`; Hiragana, Katakana and Han → `ja`, so Chinese text would count as `ja`; Latin → `en`;
//! anything else under its script name lowercased: `common` for punctuation, digits and spaces,
//! `mixed`, `cyrillic`, …). [`ScanOptions::skip_common`] leaves out tokens whose script is Common
//! (punctuation, digits, whitespace). For every counted token the scan keeps its top-k experts at
//! every layer ([`SentenceRoutes`]), which the bootstrap of [`compare`] needs; the tables of
//! [`Counts`] are sums of those. [`scan`] keeps them in memory ([`Study::routes`]); the command
//! line's directory scan ([`checkpoint::scan_to_dir`]) writes them to `routes.bin` only and reads
//! them back one sentence at a time, so its memory does not grow with the corpus.
//!
//! Sentences are run longest first (so that a too-large batch fails at once, not after an hour),
//! right-padded to the longest of their batch, with the padded positions masked out of attention;
//! a sentence's routing in a batch equals its routing alone (up to float rounding).

pub mod analyses;
pub mod checkpoint;
pub mod compare;
pub mod counts;
pub mod metrics;
pub mod null;
pub mod routes;
pub mod scan_compare;
pub mod shares;
pub mod stats;
pub mod timings;

use std::fmt;
use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::corpus::Sentence;
use crate::error::{Error, Result};
use crate::lab::Lens;
use crate::spy::{RouterEvent, RouterSpy, Step};
use crate::tokens::{Script, Token};

/// What a scan keeps of a token until its batch runs: its id and script (8 bytes, not the
/// [`Token`]'s label and offsets), so the scan's memory grows little with the corpus.
#[derive(Debug, Clone, Copy)]
struct ScanToken {
    id: u32,
    script: Script,
}

impl From<&Token> for ScanToken {
    fn from(t: &Token) -> Self {
        ScanToken { id: t.id, script: t.script }
    }
}

pub use analyses::{AnalysisOptions, Consecutive, RoutingAnalyses};
pub use compare::{CompareOptions, Comparison, LayerComparison, SplitMix64, Verdict};
pub use counts::{Counts, CountsJson};
pub use metrics::{LayerJsd, LayerLang, Metrics};
pub use routes::SentenceRoutes;
pub use shares::{ExpertShares, Measure, TopExpert};
pub use timings::ScanTimings;

/// How to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most sentences per forward pass. `None` (the default): 8 on the CPU; on a GPU no limit, so
    /// that [`ScanOptions::batch_tokens`] alone decides.
    pub batch_size: Option<usize>,
    /// Most tokens per forward pass, counting the padding (sentences × the longest of them): what
    /// bounds a pass's memory. `None` (the default): 4,096 on a GPU (the H200 bench's batches:
    /// BENCHMARKS.md), no limit on the CPU. A sentence longer than this runs alone.
    pub batch_tokens: Option<usize>,
    /// Count each token under the language of its script instead of its sentence's language.
    pub by_script: bool,
    /// Leave out tokens whose script is Common (punctuation, digits, whitespace).
    pub skip_common: bool,
    /// Print a progress line now and then (`println!`, so it streams in a notebook).
    pub progress: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions { batch_size: None, batch_tokens: None, by_script: false, skip_common: false, progress: true }
    }
}

/// Sentences per batch on the CPU when [`ScanOptions::batch_size`] is not given.
pub const CPU_BATCH_SIZE: usize = 8;
/// Padded tokens per batch on a GPU when [`ScanOptions::batch_tokens`] is not given.
pub const GPU_BATCH_TOKENS: usize = 4096;

impl ScanOptions {
    /// The batch limits for a model on `device`: (most sentences, most padded tokens), each
    /// `usize::MAX` for none; an error for a limit of 0.
    pub fn limits(&self, device: &candle_core::Device) -> Result<(usize, usize)> {
        if self.batch_size == Some(0) {
            return Err(Error::invalid("batch size", "0: give at least 1 sentence per batch"));
        }
        if self.batch_tokens == Some(0) {
            return Err(Error::invalid("batch tokens", "0: give at least 1 token per batch"));
        }
        let gpu = !device.is_cpu();
        let sents = self.batch_size.unwrap_or(if gpu { usize::MAX } else { CPU_BATCH_SIZE });
        let tokens = self.batch_tokens.unwrap_or(if gpu { GPU_BATCH_TOKENS } else { usize::MAX });
        Ok((sents, tokens))
    }

    /// "batches of ≤ 8 sentences", "batches of ≤ 4096 tokens", or both, for progress lines.
    pub fn describe(limits: (usize, usize)) -> String {
        let n = |v: usize| if v == 0 { "?".to_string() } else { v.to_string() }; // 0: not recorded
        match limits {
            (usize::MAX, usize::MAX) => "one batch".to_string(),
            (s, usize::MAX) => format!("batches of ≤ {} sentences", n(s)),
            (usize::MAX, t) => format!("batches of ≤ {} tokens", n(t)),
            (s, t) => format!("batches of ≤ {} sentences and ≤ {} tokens", n(s), n(t)),
        }
    }
}

/// The device whose batch defaults a scan takes ([`ScanOptions::limits`]): the model's; the CPU's
/// (8 sentences per batch) for a model on a shared server, whose own limits then apply.
pub(crate) fn scan_device(lens: &Lens) -> candle_core::Device {
    lens.model().map_or(candle_core::Device::Cpu, |m| m.device().clone())
}

/// Cuts sentences of `lengths` tokens (in scan order, longest first) into batches of at most
/// `max_sentences` sentences and `max_tokens` padded tokens (count × the first, longest, one); a
/// sentence longer than `max_tokens` runs alone. Returns the batch boundaries: `[0, .., n]`.
pub fn cut_batches(lengths: &[usize], max_sentences: usize, max_tokens: usize) -> Vec<usize> {
    let mut bounds = vec![0];
    let mut start = 0;
    while start < lengths.len() {
        start = batch_end(|i| lengths.get(i).copied(), start, max_sentences, max_tokens);
        bounds.push(start);
    }
    bounds
}

/// The end of the batch that starts at `start` (see [`cut_batches`]): greedy, so batches cut from
/// any boundary are those of the whole cut.
fn batch_end(length: impl Fn(usize) -> Option<usize>, start: usize, max_sentences: usize, max_tokens: usize) -> usize {
    let mut longest = length(start).unwrap_or(0);
    let mut end = start + 1;
    while let Some(len) = length(end) {
        longest = longest.max(len);
        let count = end - start + 1;
        if count > max_sentences || count.saturating_mul(longest) > max_tokens {
            break;
        }
        end += 1;
    }
    end
}

/// The counting settings a study was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Tokens counted under the language of their script ([`ScanOptions::by_script`]).
    pub by_script: bool,
    /// Tokens of the Common script left out ([`ScanOptions::skip_common`]).
    pub skip_common: bool,
}

/// The language a token counts under when counting by script.
pub fn script_language(script: Script) -> String {
    match script {
        Script::Hangul => "ko".into(),
        Script::Hiragana | Script::Katakana | Script::Han => "ja".into(),
        Script::Latin => "en".into(),
        other => other.name().to_ascii_lowercase(),
    }
}

/// A part of a corpus for one job of several: `--shard i/n` takes the `i`-th of `n` contiguous,
/// nearly equal chunks (sentences `⌊i·N/n⌋ .. ⌊(i+1)·N/n⌋` of N), 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which chunk, from 0 (`index < count`).
    pub index: usize,
    /// Chunks the corpus is split into, at least 1.
    pub count: usize,
}

impl Shard {
    /// The whole corpus.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n`, refusing `n = 0` and `i ≥ n`.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = |msg: String| Error::invalid("shard", msg);
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad(format!("{s:?}: write it as i/n, e.g. 0/4 for the first of 4 shards")))?;
        let i: usize = i.trim().parse().map_err(|_| bad(format!("{s:?}: {i:?} is not a shard number (0-based)")))?;
        let n: usize = n.trim().parse().map_err(|_| bad(format!("{s:?}: {n:?} is not a number of shards")))?;
        Shard::new(i, n)
    }

    /// Checks `i < n`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::invalid(
                "shard",
                "0 shards: the number of shards n in i/n must be at least 1".to_string(),
            ));
        }
        if index >= count {
            return Err(Error::invalid(
                "shard",
                format!("{index}/{count}: shards are numbered 0 to {} (0-based), so i must be less than n", count - 1),
            ));
        }
        Ok(Shard { index, count })
    }

    /// The corpus positions of the `i`-th of `n` contiguous chunks of a corpus of `total`
    /// sentences. (A scan's shard is a run of batches instead: see [`Shard::batches`].)
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let at = |i: usize| ((i as u128 * total as u128) / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }
}

impl Shard {
    /// The batches of this shard among `batches` batches: the `i`-th of `n` nearly equal runs.
    /// A sharded scan orders the whole corpus as an unsharded one does (longest first), cuts it
    /// into the same batches and gives each shard a run of them, so every sentence is run in the
    /// same batch, padded the same, as in the unsharded scan, and the shards merged equal it
    /// exactly (with the same batch limits).
    pub fn batches(&self, batches: usize) -> std::ops::Range<usize> {
        self.range(batches)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The result of a scan: the counts and every counted token's routing.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    /// Selection counts per language × layer × expert.
    pub counts: Counts,
    /// Per-sentence routing, in scan order (see [`Study::sort`]).
    pub routes: Vec<SentenceRoutes>,
    /// The counting settings the study was made with.
    pub settings: Settings,
}

/// `metrics.json`: the counting settings and the [`Metrics`] (with comparisons).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    /// The counting settings the study was made with.
    pub settings: Settings,
    #[serde(flatten)]
    /// The metrics and comparisons, flattened into the same JSON object.
    pub metrics: Metrics,
}

/// The file a saved study keeps its counts in ([`CountsJson`]).
pub const COUNTS_FILE: &str = "counts.json";
/// The file a saved study keeps its metrics in ([`MetricsFile`]).
pub const METRICS_FILE: &str = "metrics.json";
/// The file a saved study keeps its metrics in as a table, one row per layer × language.
pub const METRICS_CSV: &str = "metrics.csv";
/// The file a saved study keeps every counted token's routing in (binary; see [`routes`]).
pub const ROUTES_FILE: &str = "routes.bin";

impl Study {
    /// An empty study for a model.
    pub fn new(model: &str, layers: usize, experts: usize, k: usize, settings: Settings) -> Study {
        Study { counts: Counts::new(model, layers, experts, k), routes: Vec::new(), settings }
    }

    /// Adds one scanned sentence.
    pub fn add(&mut self, r: SentenceRoutes) -> Result<()> {
        self.counts.add(&r)?;
        self.routes.push(r);
        Ok(())
    }

    /// Language tags with counted tokens, sorted.
    pub fn languages(&self) -> &[String] {
        &self.counts.languages
    }

    /// Sorts the routes by corpus position.
    pub fn sort(&mut self) {
        self.routes.sort_by_key(|r| r.index);
    }

    /// Descriptive metrics per layer and language (no bootstrap; fast).
    pub fn metrics(&self) -> Metrics {
        Metrics::from_counts(&self.counts)
    }

    /// Does `a` use fewer experts than `b`? Token-matched bootstrap with default options
    /// (1000 replicates, 95 % intervals, seed 0); see [`compare`].
    pub fn compare(&self, a: &str, b: &str) -> Result<Comparison> {
        self.compare_with(a, b, &CompareOptions::default())
    }

    /// [`Study::compare`] with options.
    pub fn compare_with(&self, a: &str, b: &str, opts: &CompareOptions) -> Result<Comparison> {
        let c = &self.counts;
        compare::compare(&self.routes, c.layers, c.experts, c.k, a, b, opts)
    }

    /// [`Study::compare`] next to the same comparison under a token-identity null (each distinct
    /// token id one fixed random top-k), with the verdict on the difference: see [`null`].
    pub fn compare_null(&self, a: &str, b: &str) -> Result<null::NullComparison> {
        let c = &self.counts;
        null::compare_with_null(&self.routes, c.layers, c.experts, c.k, a, b, &CompareOptions::default())
    }

    /// [`Study::compare_null`] with options.
    pub fn compare_null_with(&self, a: &str, b: &str, opts: &CompareOptions) -> Result<null::NullComparison> {
        let c = &self.counts;
        null::compare_with_null(&self.routes, c.layers, c.experts, c.k, a, b, opts)
    }

    /// The reference language of a report: `en` when counted, else the first language.
    pub fn default_reference(&self) -> Option<String> {
        default_reference_of(&self.counts)
    }

    /// Metrics plus a comparison of every other language with `reference` (default: see
    /// [`Study::default_reference`]).
    pub fn report(&self, reference: Option<&str>, opts: &CompareOptions) -> Result<Metrics> {
        report_of(&self.counts, reference, |a, b| self.compare_with(a, b, opts))
    }

    /// Adds another study of the same model and settings, refusing sentences present in both.
    pub fn merge(&mut self, other: Study) -> Result<()> {
        self.counts.check_compatible(&other.counts)?;
        if self.settings != other.settings {
            return Err(Error::invalid(
                "merge",
                format!(
                    "the studies were counted with different settings ({:?} vs {:?})",
                    self.settings, other.settings
                ),
            ));
        }
        let mine: std::collections::HashMap<u32, &str> = self.routes.iter().map(|r| (r.index, r.id.as_str())).collect();
        if let Some(r) = other.routes.iter().find(|r| mine.contains_key(&r.index)) {
            return Err(Error::invalid(
                "merge",
                format!("sentence {} (#{}) is in both: the parts overlap; merge each shard once", r.id, r.index),
            ));
        }
        self.counts.merge(&other.counts)?;
        self.routes.extend(other.routes);
        Ok(())
    }

    /// The routing analyses of the scanned sentences: co-activation, token specialisation,
    /// consecutive tokens, expert profiles (see [`analyses`]).
    pub fn analyses(&self) -> Result<RoutingAnalyses> {
        let c = &self.counts;
        RoutingAnalyses::from_routes(&c.model, c.layers, c.experts, c.k, &self.routes)
    }

    /// Writes `counts.json`, `metrics.json` (with `report`'s comparisons), `metrics.csv`, the
    /// routes (`routes.bin`) and the routing analyses' files (`coactivation.json`,
    /// `consecutive.json` and their CSVs, see SCAN.md) into `dir`, each atomically.
    pub fn save(&self, dir: impl AsRef<Path>, report: &Metrics) -> Result<()> {
        self.save_labelled(dir.as_ref(), report, None)
    }

    /// [`Study::save`], with token labels for `specialisation_tokens.csv`.
    pub(crate) fn save_labelled(
        &self,
        dir: &Path,
        report: &Metrics,
        labels: Option<&analyses::TokenLabels<'_>>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let c = &self.counts;
        let mut bytes = routes::header(c.layers, c.k, c.experts);
        let mut sorted: Vec<&SentenceRoutes> = self.routes.iter().collect();
        sorted.sort_by_key(|r| r.index);
        for r in sorted {
            r.encode_into(&mut bytes)?;
        }
        write_atomic(&dir.join(ROUTES_FILE), &bytes)?;
        save_tables(dir, c, self.settings, report)?;
        self.analyses()?.save(dir, &AnalysisOptions::default(), labels)
    }

    /// Reads a saved study (`counts.json`, `routes.bin`, settings from `metrics.json`), checking
    /// that the counts are the sum of the routes.
    pub fn load(dir: impl AsRef<Path>) -> Result<Study> {
        let dir = dir.as_ref();
        let counts = read_counts(dir)?;
        let ((layers, k, experts), routes) = routes::read_file(&dir.join(ROUTES_FILE))?;
        if (layers, k, experts) != (counts.layers, counts.k, counts.experts) {
            return Err(different_models(dir));
        }
        let recount = Counts::from_routes(&counts.model, layers, experts, k, &routes)?;
        if recount != counts {
            return Err(not_the_sum(dir));
        }
        let settings = read_settings(dir)?;
        Ok(Study { counts, routes, settings })
    }
}

/// A saved study's counts, settings and the corpus positions of its sentences (in the file's
/// order), checked as [`Study::load`] checks them but reading `routes.bin` one sentence at a time.
pub(crate) fn load_counts(dir: &Path) -> Result<(Counts, Settings, Vec<u32>)> {
    let counts = read_counts(dir)?;
    let reader = routes::RoutesReader::open(&dir.join(ROUTES_FILE))?;
    let (layers, k, experts) = reader.shape();
    if (layers, k, experts) != (counts.layers, counts.k, counts.experts) {
        return Err(different_models(dir));
    }
    let mut recount = Counts::new(&counts.model, layers, experts, k);
    let mut indices = Vec::new();
    for r in reader {
        let r = r?;
        recount.add(&r)?;
        indices.push(r.index);
    }
    if recount != counts {
        return Err(not_the_sum(dir));
    }
    Ok((counts, read_settings(dir)?, indices))
}

fn read_counts(dir: &Path) -> Result<Counts> {
    if !dir.join(COUNTS_FILE).is_file() {
        let what = if dir.is_dir() { "has no" } else { "does not exist, so it has no" };
        return Err(Error::invalid(
            "study",
            format!(
                "{} {what} {COUNTS_FILE}: give the --out directory of a `moe-lens scan` or `moe-lens merge` (or a folder that Study::save wrote)",
                dir.display()
            ),
        ));
    }
    Counts::load_json(dir.join(COUNTS_FILE))
}

fn different_models(dir: &Path) -> Error {
    Error::invalid(
        "study",
        format!("{}: routes.bin and counts.json describe different models; scan again", dir.display()),
    )
}

fn not_the_sum(dir: &Path) -> Error {
    Error::invalid(
        "study",
        format!("{}: counts.json is not the sum of routes.bin (edited or damaged); scan again", dir.display()),
    )
}

fn read_settings(dir: &Path) -> Result<Settings> {
    let mpath = dir.join(METRICS_FILE);
    match std::fs::read_to_string(&mpath) {
        Ok(t) => Ok(serde_json::from_str::<MetricsFile>(&t)
            .map_err(|e| Error::invalid("metrics.json", format!("{}: {e}", mpath.display())))?
            .settings),
        Err(e) => Err(Error::io(mpath, e)),
    }
}

/// The reference language of a report: `en` when counted, else the first language.
fn default_reference_of(counts: &Counts) -> Option<String> {
    let langs = &counts.languages;
    if langs.iter().any(|l| l == "en") {
        Some("en".into())
    } else {
        langs.first().cloned()
    }
}

/// The reference language of a report: `reference` if counted (else an error), or the default.
pub(crate) fn resolve_reference(counts: &Counts, reference: Option<&str>) -> Result<Option<String>> {
    match reference {
        Some(r) => {
            if counts.lang_index(r).is_none() {
                return Err(Error::invalid(
                    "reference language",
                    format!("{r:?} has no counted tokens; counted: {}", counts.languages.join(", ")),
                ));
            }
            Ok(Some(r.to_string()))
        }
        None => Ok(default_reference_of(counts)),
    }
}

/// [`Study::report`] of counts, comparing languages with `compare(a, reference)` (in memory or
/// from a routes file).
pub(crate) fn report_of(
    counts: &Counts,
    reference: Option<&str>,
    mut compare: impl FnMut(&str, &str) -> Result<Comparison>,
) -> Result<Metrics> {
    let mut m = Metrics::from_counts(counts);
    let reference = resolve_reference(counts, reference)?;
    if let Some(r) = reference {
        for a in &counts.languages {
            if *a != r {
                m.comparisons.push(compare(a, &r)?);
            }
        }
    }
    Ok(m)
}

/// Writes `counts.json`, `metrics.json` (with `report`'s comparisons) and `metrics.csv` into `dir`.
pub(crate) fn save_tables(dir: &Path, counts: &Counts, settings: Settings, report: &Metrics) -> Result<()> {
    counts.save_json(dir.join(COUNTS_FILE))?;
    let mf = MetricsFile { settings, metrics: report.clone() };
    let json =
        serde_json::to_string_pretty(&mf).map_err(|e| Error::invalid("metrics", format!("cannot serialise: {e}")))?;
    write_atomic(&dir.join(METRICS_FILE), json.as_bytes())?;
    write_atomic(&dir.join(METRICS_CSV), report.to_csv().as_bytes())
}

impl fmt::Display for Study {
    /// One paragraph: the model, sentences and tokens per language, and what to call next.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let toks: Vec<String> = c.tokens_by_lang().iter().map(|(l, n)| format!("{l} {n}")).collect();
        let how = match (self.settings.by_script, self.settings.skip_common) {
            (false, false) => "each token under its sentence's language",
            (true, false) => "each token under its script's language",
            (false, true) => "each token under its sentence's language, punctuation/space/digit tokens left out",
            (true, true) => "each token under its script's language, punctuation/space/digit tokens left out",
        };
        writeln!(f, "Study of {}: {} sentences; tokens: {} ({how}).", c.model, self.routes.len(), toks.join(", "))?;
        write!(
            f,
            "{} layers × {} experts, top-{}. Next: study.metrics(), study.compare(\"ko\", \"en\")?, study.counts.count(lang, layer, expert)?",
            c.layers, c.experts, c.k
        )
    }
}

/// Shows a value as plain text in an evcxr notebook (instead of its `Debug` dump).
pub(crate) fn evcxr_text(text: &str) {
    println!("EVCXR_BEGIN_CONTENT text/plain\n{text}\nEVCXR_END_CONTENT");
}

impl Study {
    /// Notebook display: the summary.
    pub fn evcxr_display(&self) {
        evcxr_text(&self.to_string());
    }
}

impl Metrics {
    /// Notebook display: the table.
    pub fn evcxr_display(&self) {
        evcxr_text(&self.to_string());
    }
}

impl Comparison {
    /// Notebook display: the answer, layer by layer.
    pub fn evcxr_display(&self) {
        evcxr_text(&self.to_string());
    }
}

// one write_atomic for the crate (temporary file, fsync, rename, directory fsync)
pub(crate) use crate::fsutil::write_atomic;

// ------------------------------------------------------------------------------------------------
// Batched forward passes
// ------------------------------------------------------------------------------------------------

/// Runs several token sequences as one right-padded batch (padding masked out of attention, the
/// forward pass told each real length) with `spy` attached. Rows of the events are batch-major;
/// [`RouterEvent::is_real`] tells padding apart.
pub fn forward_padded(lens: &Lens, ids: &[&[u32]], spy: &mut dyn RouterSpy) -> Result<()> {
    let t = ids.iter().map(|s| s.len()).max().unwrap_or(0);
    if ids.is_empty() || t == 0 || ids.iter().any(|s| s.is_empty()) {
        return Err(Error::EmptyText(" (a batch with an empty sequence)"));
    }
    let cfg = lens.config();
    let pad = cfg.pad_token_id.filter(|&p| (p as usize) < cfg.vocab_size).unwrap_or(0);
    let mut flat = Vec::with_capacity(ids.len() * t);
    for s in ids {
        flat.extend_from_slice(s);
        flat.extend(std::iter::repeat_n(pad, t - s.len()));
    }
    let lengths: Vec<usize> = ids.iter().map(|s| s.len()).collect();
    let padded = lengths.iter().any(|&n| n < t);
    let model = lens.model()?;
    let input = Tensor::from_vec(flat, (ids.len(), t), model.device())?;
    model.forward(&input, None, padded.then_some(lengths.as_slice()), Step::Prefill, Some(spy))?;
    Ok(())
}

/// Keeps each layer's top-k choices of one batch on the host.
pub(crate) struct TopKSpy {
    pub(crate) layers: Vec<Option<(usize, usize, Vec<u32>)>>, // (seq_len, k, [rows * k])
}

/// Collects each layer's top-k tensor during a forward pass (a cheap clone, wherever it lives) and
/// copies them all to the host afterwards ([`KeepTopK::into_host`]): one transfer and one
/// synchronisation per batch when a model reports its routing as device tensors.
struct KeepTopK {
    layers: Vec<Option<(usize, Tensor)>>, // (seq_len, [rows, k] u32)
}

impl KeepTopK {
    /// The choices on the host, layer by layer, as [`TopKSpy`] keeps them.
    fn into_host(self) -> Result<TopKSpy> {
        let kept: Vec<&Tensor> = self.layers.iter().flatten().map(|(_, t)| t).collect();
        let on_device = kept.iter().any(|t| !t.device().is_cpu());
        let same_k = kept.windows(2).all(|w| w[0].dims().get(1) == w[1].dims().get(1));
        let mut layers = Vec::with_capacity(self.layers.len());
        if on_device && same_k && !kept.is_empty() {
            // one copy of every layer's [rows, k] choices, then split
            let flat: Vec<Tensor> = kept.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
            let host: Vec<u32> = Tensor::cat(&flat, 0)?.to_vec1()?;
            let mut at = 0;
            for slot in self.layers {
                layers.push(match slot {
                    None => None,
                    Some((seq_len, t)) => {
                        let (rows, k) = t.dims2()?;
                        let v = host
                            .get(at..at + rows * k)
                            .ok_or_else(|| Error::Spy("the top-k copy is shorter than the layers' choices".into()))?;
                        at += rows * k;
                        Some((seq_len, k, v.to_vec()))
                    }
                });
            }
        } else {
            for slot in self.layers {
                layers.push(match slot {
                    None => None,
                    Some((seq_len, t)) => {
                        let (_, k) = t.dims2()?;
                        Some((seq_len, k, t.flatten_all()?.to_vec1()?))
                    }
                });
            }
        }
        Ok(TopKSpy { layers })
    }
}

/// Each layer's top-k choices of one scan batch ([`forward_padded`] with a [`TopKSpy`]), run here
/// or, for a `Lens` on a shared model server, there (the same batch, the same numbers).
pub(crate) fn batch_top_k(lens: &Lens, ids: &[&[u32]]) -> Result<TopKSpy> {
    let layers = lens.config().num_hidden_layers;
    if let Some(client) = lens.client() {
        let mut spy = TopKSpy { layers: vec![None; layers] };
        let reply = client.top_k(ids.iter().map(|s| s.to_vec()).collect())?;
        if reply.layers.len() != layers {
            return Err(Error::Spy(format!("the server sent {} layers for a model of {layers}", reply.layers.len())));
        }
        for (slot, l) in spy.layers.iter_mut().zip(reply.layers) {
            if let Some(l) = l {
                *slot = Some((l.seq_len, l.k, crate::remote::protocol::b64_to_u32s(&l.top_k)?));
            }
        }
        return Ok(spy);
    }
    let mut keep = KeepTopK { layers: vec![None; layers] };
    forward_padded(lens, ids, &mut keep)?;
    keep.into_host()
}

impl RouterSpy for KeepTopK {
    fn on_route(&mut self, ev: &RouterEvent<'_>) -> Result<()> {
        ev.top_k.dims2()?; // [rows, k]
        let n = self.layers.len();
        let slot = self
            .layers
            .get_mut(ev.layer)
            .ok_or_else(|| Error::Spy(format!("layer {} reported but the model has {n}", ev.layer)))?;
        *slot = Some((ev.seq_len, ev.top_k.clone()));
        Ok(())
    }
}

/// Scans a corpus: every sentence in batches, counting each real token's experts. Prints progress
/// lines when `opts.progress` is set.
pub fn scan(lens: &Lens, sentences: &[Sentence], opts: &ScanOptions) -> Result<Study> {
    let mut s = Scanner::new(lens, sentences, opts)?;
    let start = Instant::now();
    let mut last = start;
    if opts.progress {
        println!(
            "scan: {} sentences, {} tokens, {} · {}",
            s.total(),
            s.tokens_total(),
            ScanOptions::describe(s.limits()),
            crate::corpus::summary(sentences)
        );
    }
    while s.step()?.is_some() {
        if opts.progress && (last.elapsed().as_secs_f64() >= 2.0 || s.is_done()) {
            last = Instant::now();
            println!("scan: {}", s.progress_line(start.elapsed().as_secs_f64()));
        }
    }
    Ok(s.into_study())
}

/// [`scan`] as a method of [`Lens`]: `lens.scan(&corpus::builtin()?, &ScanOptions::default())?`.
pub trait ScanExt {
    /// Scans `sentences` (see [`scan`]): runs every sentence through the model and counts each token's
    /// routing under its language.
    ///
    /// ```
    /// use moe_lens::prelude::*;
    ///
    /// let lens = load("demo")?;
    /// let sentences: Vec<Sentence> = corpus::builtin()?.into_iter().take(3).collect(); // en, ko, ja
    /// let study = lens.scan(&sentences, &ScanOptions { progress: false, ..ScanOptions::default() })?;
    /// assert_eq!(study.languages(), ["en", "ja", "ko"]); // sorted
    /// assert_eq!(study.routes.len(), 3); // one per sentence
    /// // each counted token picks k = 8 experts at every layer
    /// let c = &study.counts;
    /// for (i, lang) in c.languages.iter().enumerate() {
    ///     assert!(c.tokens_of(lang) > 0);
    ///     for layer in 0..c.layers {
    ///         let picks: u64 = (0..c.experts).map(|e| c.topk[[i, layer, e]]).sum();
    ///         assert_eq!(picks, c.tokens_of(lang) * 8);
    ///     }
    /// }
    /// # Ok::<(), moe_lens::Error>(())
    /// ```
    fn scan(&self, sentences: &[Sentence], opts: &ScanOptions) -> Result<Study>;
}

impl ScanExt for Lens {
    fn scan(&self, sentences: &[Sentence], opts: &ScanOptions) -> Result<Study> {
        scan(self, sentences, opts)
    }
}

/// A scan that runs one batch at a time, for callers that save state between batches (the
/// command line's resumable `scan`) or draw their own progress.
pub struct Scanner<'a> {
    lens: &'a Lens,
    sentences: &'a [Sentence],
    /// Corpus positions in scan order (longest first).
    order: Vec<usize>,
    /// Tokens of `order[i]`.
    tokens: Vec<Vec<ScanToken>>,
    pos: usize,
    /// Batch boundaries in `order` as first cut: `[0, .., order.len()]` (see [`cut_batches`]).
    bounds: Vec<usize>,
    /// (most sentences, most padded tokens) per batch.
    limits: (usize, usize),
    study: Study,
    /// Whether the study keeps every sentence's routes (see [`Scanner::keep_routes`]).
    keep_routes: bool,
    /// The last batch's routes, when the study does not keep them.
    batch: Vec<SentenceRoutes>,
    tokens_total: u64,
    tokens_done: u64,
    tokens_at_start: u64,
    timings: ScanTimings,
}

impl<'a> Scanner<'a> {
    /// A scan of the whole corpus.
    pub fn new(lens: &'a Lens, sentences: &'a [Sentence], opts: &ScanOptions) -> Result<Self> {
        Self::for_positions(lens, sentences, 0..sentences.len(), opts)
    }

    /// A scan of one shard of the corpus: the corpus ordered and cut into batches as by
    /// [`Scanner::new`], and the shard's run of those batches ([`Shard::batches`]). The routes
    /// keep the positions in the whole corpus.
    pub fn for_shard(lens: &'a Lens, sentences: &'a [Sentence], shard: Shard, opts: &ScanOptions) -> Result<Self> {
        let mut s = Self::new(lens, sentences, opts)?;
        let r = shard.batches(s.batch_count());
        let (start, end) = (s.bounds[r.start], s.bounds[r.end]);
        s.bounds = s.bounds[r.start..=r.end].iter().map(|b| b - start).collect();
        s.order = s.order[start..end].to_vec();
        s.tokens = s.tokens.drain(start..end).collect();
        s.tokens_total = s.tokens.iter().map(|t| t.len() as u64).sum();
        Ok(s)
    }

    /// A scan of some corpus positions; the routes keep the positions in the whole corpus.
    pub fn for_positions(
        lens: &'a Lens,
        sentences: &'a [Sentence],
        positions: impl IntoIterator<Item = usize>,
        opts: &ScanOptions,
    ) -> Result<Self> {
        let started = Instant::now();
        let limits = opts.limits(&scan_device(lens))?;
        let cfg = lens.config();
        let max = cfg.max_position_embeddings;
        if cfg.num_experts > usize::from(u16::MAX) + 1 {
            return Err(Error::Unsupported(format!(
                "a study of {} experts per layer (at most 65,536)",
                cfg.num_experts
            )));
        }
        // tokenized in parallel (the tokenizer is shared read-only), checked in order: the first
        // failing position is the one reported, as one by one
        let positions: Vec<usize> = positions.into_iter().collect();
        let tokenizer = lens.tokenizer();
        let tokenized: Vec<Option<Result<Vec<Token>>>> = {
            use rayon::prelude::*;
            positions.par_iter().map(|&p| sentences.get(p).map(|s| tokenizer.encode(&s.text))).collect()
        };
        let mut items = Vec::with_capacity(positions.len());
        for (p, toks) in positions.into_iter().zip(tokenized) {
            let s = sentences.get(p).ok_or_else(|| {
                Error::invalid("corpus position", format!("{p} is past the corpus' {} sentences", sentences.len()))
            })?;
            if p > u32::MAX as usize {
                return Err(Error::invalid("corpus", "more than 4 billion sentences"));
            }
            let toks = toks.ok_or_else(|| Error::invalid("corpus position", format!("{p} has no sentence")))??;
            if toks.is_empty() {
                return Err(Error::invalid("sentence", format!("{} ({:?}) has no tokens", s.id, s.text)));
            }
            if toks.len() > max {
                return Err(Error::invalid(
                    "sentence",
                    format!(
                        "{} is {} tokens long but the model takes at most {max}: split it into shorter sentences",
                        s.id,
                        toks.len()
                    ),
                ));
            }
            items.push((p, toks.iter().map(ScanToken::from).collect::<Vec<_>>()));
        }
        // longest first; ties in corpus order
        items.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let tokens_total = items.iter().map(|(_, t)| t.len() as u64).sum();
        let (order, tokens): (Vec<usize>, Vec<Vec<ScanToken>>) = items.into_iter().unzip();
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let bounds = cut_batches(&lengths, limits.0, limits.1);
        let settings = Settings { by_script: opts.by_script, skip_common: opts.skip_common };
        Ok(Scanner {
            lens,
            sentences,
            order,
            tokens,
            pos: 0,
            bounds,
            limits,
            study: Study::new(lens.name(), cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok, settings),
            keep_routes: true,
            batch: Vec::new(),
            tokens_total,
            tokens_done: 0,
            tokens_at_start: 0,
            timings: ScanTimings { tokenize: started.elapsed(), ..ScanTimings::default() },
        })
    }

    /// Whether the study keeps every scanned sentence's routes in [`Study::routes`] (the default:
    /// what the bootstrap of [`Study::compare`] and the notebooks use). With `false` it keeps only
    /// the counts, and [`Scanner::step`] hands each batch's routes to the caller (who writes them
    /// to a routes file, as [`checkpoint::scan_to_dir`] does): memory then stays flat however
    /// long the corpus. Set it before the first step.
    pub fn keep_routes(&mut self, keep: bool) {
        self.keep_routes = keep;
    }

    /// Continues from a saved study holding the first `study.routes.len()` sentences of the scan
    /// order (as an interrupted scan of the same corpus and options left them).
    pub fn resume(&mut self, study: Study) -> Result<()> {
        let have: Vec<usize> = study.routes.iter().map(|r| r.index as usize).collect();
        self.resume_from(have, study.counts, study.settings, study.routes)
    }

    /// [`Scanner::resume`] from the counts of the sentences done and their corpus positions (the
    /// routes being in a file), for a scanner that does not keep routes.
    pub(crate) fn resume_counts(&mut self, have: Vec<usize>, counts: Counts, settings: Settings) -> Result<()> {
        self.resume_from(have, counts, settings, Vec::new())
    }

    fn resume_from(
        &mut self,
        mut have: Vec<usize>,
        counts: Counts,
        settings: Settings,
        routes: Vec<SentenceRoutes>,
    ) -> Result<()> {
        let done = have.len();
        if done > self.order.len() {
            return Err(Error::invalid(
                "resume",
                format!("the saved scan has {done} sentences but this scan only {}", self.order.len()),
            ));
        }
        let mut want: Vec<usize> = self.order[..done].to_vec();
        want.sort_unstable();
        have.sort_unstable();
        if want != have || settings != self.study.settings {
            return Err(Error::invalid(
                "resume",
                "the saved scan covers other sentences or settings than this one (a different corpus, shard or counting \
                 option): start over in an empty directory",
            ));
        }
        self.study.counts.check_compatible(&counts)?;
        // batches are cut greedily from here: with the same limits, those of the first run
        self.pos = done;
        self.tokens_done = self.tokens[..done].iter().map(|t| t.len() as u64).sum();
        self.tokens_at_start = self.tokens_done;
        self.study = Study { counts, routes: if self.keep_routes { routes } else { Vec::new() }, settings };
        Ok(())
    }

    /// Batches in this scan.
    pub fn batch_count(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }
    /// (most sentences, most padded tokens) per batch, `usize::MAX` for no limit.
    pub fn limits(&self) -> (usize, usize) {
        self.limits
    }
    /// Sentences in this scan.
    pub fn total(&self) -> usize {
        self.order.len()
    }
    /// Sentences done.
    pub fn done(&self) -> usize {
        self.pos
    }
    /// Whether every sentence has been scanned.
    pub fn is_done(&self) -> bool {
        self.pos >= self.order.len()
    }
    /// Tokens in this scan (counted or not).
    pub fn tokens_total(&self) -> u64 {
        self.tokens_total
    }
    /// Tokens run so far.
    pub fn tokens_done(&self) -> u64 {
        self.tokens_done
    }
    /// Tokens run by this process (not counting those of a resumed earlier run).
    pub fn tokens_this_run(&self) -> u64 {
        self.tokens_done - self.tokens_at_start
    }
    /// The counts and routes so far (no routes when the scanner does not keep them:
    /// [`Scanner::keep_routes`]).
    pub fn study(&self) -> &Study {
        &self.study
    }
    /// Where this scanner's time went so far: tokenizing, forward passes, routes (the writing
    /// phases are filled in by [`checkpoint::scan_to_dir`], in its result).
    pub fn timings(&self) -> &ScanTimings {
        &self.timings
    }
    /// The counts and routes so far, taking the scanner apart.
    pub fn into_study(self) -> Study {
        self.study
    }

    /// "480/1200 sentences (40%) · 5,210 tokens/s · ETA 12 s", given the seconds this run took.
    pub fn progress_line(&self, elapsed: f64) -> String {
        let rate = if elapsed > 0.0 { self.tokens_this_run() as f64 / elapsed } else { 0.0 };
        let left = self.tokens_total - self.tokens_done;
        let eta = if rate > 0.0 { format_secs(left as f64 / rate) } else { "?".into() };
        let pct = if self.total() == 0 { 100.0 } else { 100.0 * self.done() as f64 / self.total() as f64 };
        format!("{}/{} sentences ({pct:.0}%) · {rate:.0} tokens/s · ETA {eta}", self.done(), self.total())
    }

    /// Runs the next batch; returns its sentences' routes (already counted, and added to the study
    /// when it keeps routes), or `None` when every sentence is done.
    pub fn step(&mut self) -> Result<Option<&[SentenceRoutes]>> {
        if self.is_done() {
            return Ok(None);
        }
        let end = batch_end(|i| self.tokens.get(i).map(Vec::len), self.pos, self.limits.0, self.limits.1);
        let ids: Vec<Vec<u32>> = self.tokens[self.pos..end].iter().map(|t| t.iter().map(|x| x.id).collect()).collect();
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        if self.study.counts.layers != self.lens.config().num_hidden_layers {
            return Err(Error::Spy("the study's layers are not the model's".into()));
        }
        let t0 = Instant::now();
        let spy = batch_top_k(self.lens, &refs)?;
        let t1 = Instant::now();
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for (b, i) in (self.pos..end).enumerate() {
            let p = self.order[i];
            let r = self.routes_of(p, &self.tokens[i], b, &spy)?;
            self.study.counts.add(&r)?;
            batch.push(r);
        }
        let tokens = ids.iter().map(|v| v.len() as u64).sum::<u64>();
        self.tokens_done += tokens;
        self.pos = end;
        let t = &mut self.timings;
        t.forward += t1 - t0;
        if t.batches == 0 {
            t.forward_first = t1 - t0;
        }
        t.routes += t1.elapsed();
        t.batches += 1;
        t.tokens += tokens;
        if self.keep_routes {
            let first_new = self.study.routes.len();
            self.study.routes.append(&mut batch);
            self.batch = batch;
            return Ok(Some(&self.study.routes[first_new..]));
        }
        self.batch = batch;
        Ok(Some(&self.batch))
    }

    /// Extracts sentence `b` of the batch (real tokens only) from the spy.
    fn routes_of(&self, p: usize, tokens: &[ScanToken], b: usize, spy: &TopKSpy) -> Result<SentenceRoutes> {
        let s = &self.sentences[p];
        let settings = self.study.settings;
        let layers = self.study.counts.layers;
        let k = self.study.counts.k;
        let mut langs: Vec<String> = Vec::new();
        let mut token_lang = Vec::new();
        let mut kept = Vec::new();
        for (t, tok) in tokens.iter().enumerate() {
            if settings.skip_common && tok.script == Script::Common {
                continue;
            }
            let lang = if settings.by_script { script_language(tok.script) } else { s.lang.clone() };
            let li = match langs.iter().position(|l| *l == lang) {
                Some(i) => i,
                None => {
                    langs.push(lang);
                    langs.len() - 1
                }
            };
            token_lang
                .push(u8::try_from(li).map_err(|_| Error::invalid("sentence", format!("{}: too many scripts", s.id)))?);
            kept.push(t);
        }
        let mut experts = Vec::with_capacity(layers * kept.len() * k);
        for layer in 0..layers {
            let (seq_len, kk, v) = spy.layers[layer]
                .as_ref()
                .ok_or_else(|| Error::Spy(format!("layer {layer} did not report its routing")))?;
            if *kk != k {
                return Err(Error::Spy(format!("layer {layer} chose {kk} experts per token, the config says {k}")));
            }
            for &t in &kept {
                let row = b * seq_len + t;
                let chosen = v
                    .get(row * k..(row + 1) * k)
                    .ok_or_else(|| Error::Spy(format!("layer {layer} has no row {row}")))?;
                experts.extend(chosen.iter().map(|&e| e as u16));
            }
        }
        let token_ids = kept.iter().map(|&t| tokens[t].id).collect();
        let positions = kept.iter().map(|&t| t as u32).collect();
        Ok(SentenceRoutes {
            index: p as u32,
            id: s.id.clone(),
            langs,
            token_lang,
            domain: s.domain.clone(),
            token_ids,
            positions,
            layers,
            k,
            experts,
        })
    }
}

/// "1 h 02 min", "3 min 20 s", "12 s".
pub fn format_secs(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}
