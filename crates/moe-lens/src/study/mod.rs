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
mod scan;
pub mod scan_compare;
pub mod shares;
pub mod stats;
pub mod timings;

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokens::Script;

pub use analyses::{AnalysisOptions, Consecutive, RoutingAnalyses};
pub use compare::{CompareOptions, Comparison, LayerComparison, SplitMix64, Verdict};
pub use counts::{Counts, CountsJson};
pub use metrics::{LayerJsd, LayerLang, Metrics};
pub use routes::SentenceRoutes;
pub(crate) use scan::{batch_top_k, forward_padded_edited, scan_device};
pub use scan::{
    cut_batches, format_secs, forward_padded, scan, ScanExt, ScanOptions, Scanner, CPU_BATCH_SIZE, GPU_BATCH_TOKENS,
};
pub use shares::{ExpertShares, Measure, TopExpert};
pub use timings::ScanTimings;

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
