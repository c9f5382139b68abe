//! `moe-lens scan` (resumable, shardable corpus scan) and `moe-lens merge` (sum of shard outputs).
//! The work is done by `moe_lens::study::checkpoint`; see SCAN.md for the files and a Slurm example.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use moe_lens::corpus::{self, Sentence};
use moe_lens::study::analyses::{COACTIVATION_FILE, CONSECUTIVE_FILE};
use moe_lens::study::checkpoint::{self, DirResult, DirScan, RunInfo, ScanEvent};
use moe_lens::study::{
    CompareOptions, ScanOptions, Scanner, Shard, COUNTS_FILE, METRICS_CSV, METRICS_FILE, ROUTES_FILE,
};

use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Corpus file (.tsv, .csv, .jsonl or .txt), or `builtin` for the shipped en/ko/ja corpus.
    #[arg(long)]
    corpus: String,
    /// Output directory; running again with the same arguments continues an interrupted scan.
    #[arg(long)]
    out: PathBuf,
    /// Most sentences per forward pass (default: 8 on the CPU, no limit on a GPU).
    #[arg(long)]
    batch: Option<usize>,
    /// Most tokens per forward pass, padding included: what bounds its memory (default: 4096 on a
    /// GPU, no limit on the CPU).
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Scan only part i of n (0-based): the i-th of n nearly equal runs of the scan's batches (the
    /// corpus sorted longest first, cut into batches by --batch and --batch-tokens), so shards
    /// merged equal the unsharded scan exactly. Every shard of one scan needs the same batch limits.
    #[arg(long)]
    shard: Option<String>,
    /// The language of a .txt corpus (one sentence per line), e.g. ko.
    #[arg(long)]
    lang: Option<String>,
    /// Count each token under the language of its Unicode script (Hangul→ko, kana/Han→ja, Latin→en).
    #[arg(long)]
    by_script: bool,
    /// Leave out punctuation, digit and whitespace tokens (script Common).
    #[arg(long)]
    skip_common: bool,
    /// Print where the time went at the end: tokenizing, forward passes, routes, writing, the final
    /// save (totals and per-batch means in ms; see SCAN.md).
    #[arg(long)]
    timings: bool,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Language the others are compared with in metrics (default: en if present).
    #[arg(long)]
    reference: Option<String>,
    /// Bootstrap replicates of the token-matched comparisons.
    #[arg(long, default_value_t = 1000)]
    replicates: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ReportArgs {
    fn options(&self) -> CompareOptions {
        CompareOptions { replicates: self.replicates, seed: self.seed, ..CompareOptions::default() }
    }
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Directory for the merged counts.json, metrics.json and metrics.csv.
    #[arg(long)]
    out: PathBuf,
    /// Output directories of finished `moe-lens scan --shard i/n` runs (or of earlier merges).
    #[arg(required = true)]
    parts: Vec<PathBuf>,
    #[command(flatten)]
    report: ReportArgs,
}

fn load_sentences(corpus_arg: &str, lang: Option<&str>) -> anyhow::Result<Vec<Sentence>> {
    if corpus_arg == "builtin" && !Path::new(corpus_arg).exists() {
        if lang.is_some() {
            bail!("--lang is for .txt corpora; the built-in corpus names each sentence's language");
        }
        return Ok(corpus::builtin()?);
    }
    Ok(corpus::load_corpus(corpus_arg, lang)?)
}

/// Progress on stderr: a bar on a terminal, a plain line every 10 s otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Progress { bar: None, start: now, last: now }
    }

    fn start(&mut self, s: &Scanner<'_>) {
        if std::io::stderr().is_terminal() && !s.is_done() {
            let b = indicatif::ProgressBar::new(s.total() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {msg}") {
                b.set_style(style);
            }
            b.set_position(s.done() as u64);
            self.bar = Some(b);
        }
        self.start = Instant::now();
    }

    fn update(&mut self, s: &Scanner<'_>) {
        let line = s.progress_line(self.start.elapsed().as_secs_f64());
        match &self.bar {
            Some(b) => {
                b.set_position(s.done() as u64);
                b.set_message(line);
            }
            None => {
                if self.last.elapsed() >= Duration::from_secs(10) || s.is_done() {
                    self.last = Instant::now();
                    eprintln!("scan: {line}");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

pub fn run_scan(a: ScanArgs) -> anyhow::Result<()> {
    let shard = match &a.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let lang = a
        .lang
        .as_deref()
        .map(corpus::normalize_lang)
        .transpose()
        .map_err(|m| anyhow::anyhow!("invalid --lang: {m}"))?;
    let sentences =
        load_sentences(&a.corpus, lang.as_deref()).with_context(|| format!("loading the corpus {}", a.corpus))?;
    let opts = a.model.options()?;
    let run = RunInfo {
        model: a.model.model_name(),
        corpus: a.corpus.clone(),
        corpus_fingerprint: corpus::fingerprint(&sentences),
        corpus_sentences: sentences.len(),
        lang,
        dtype: opts.dtype.map(|d| format!("{d:?}").to_ascii_lowercase()).unwrap_or_default(),
        by_script: a.by_script,
        skip_common: a.skip_common,
        // 0: the defaults, known once the model's device is (checked again then)
        batch: a.batch.unwrap_or(0),
        batch_tokens: a.batch_tokens.unwrap_or(0),
    };
    // refuse a directory another scan is writing to, or another run's directory, before spending
    // time on loading the model
    let lock = checkpoint::lock_dir(&a.out)?;
    checkpoint::check_dir(&a.out, &run, shard)?;
    let lens = a.model.load()?;
    let scan_opts = ScanOptions {
        batch_size: a.batch,
        batch_tokens: a.batch_tokens,
        by_script: a.by_script,
        skip_common: a.skip_common,
        progress: false,
    };
    let throttle = std::env::var("MOE_LENS_SCAN_THROTTLE_MS").ok().and_then(|v| v.parse::<u64>().ok());
    let mut progress = Progress::new();
    let dir = a.out.clone();
    let mut on_event = |ev: ScanEvent<'_, '_>| match ev {
        ScanEvent::Start { scanner, resumed, complete } => {
            if complete {
                eprintln!(
                    "scan: {} is already complete ({} sentences); writing its outputs again",
                    dir.display(),
                    scanner.done()
                );
            } else if resumed {
                eprintln!("scan: continuing {} at {}/{} sentences", dir.display(), scanner.done(), scanner.total());
            } else {
                eprintln!(
                    "scan: {} · shard {shard}: {} batches ({} of {} sentences) · {} tokens · {} → {}",
                    a.model.model_name(),
                    scanner.batch_count(),
                    scanner.total(),
                    sentences.len(),
                    scanner.tokens_total(),
                    ScanOptions::describe(scanner.limits()),
                    dir.display()
                );
            }
            progress.start(scanner);
        }
        ScanEvent::Batch(scanner) => {
            progress.update(scanner);
            if let Some(ms) = throttle {
                // for the resumability tests: widens the window in which a kill lands mid-scan
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    };
    // the resumability tests (which set the throttle) kill the scan once state.json shows a number
    // of sentences done: commit it after every batch for them
    let commit_every = if throttle.is_some() { Duration::ZERO } else { checkpoint::COMMIT_INTERVAL };
    let job = DirScan {
        run,
        shard,
        options: scan_opts,
        reference: a.report.reference.clone(),
        compare: a.report.options(),
        commit_every,
    };
    let res = checkpoint::scan_to_dir_locked(&lens, &sentences, &job, &a.out, &lock, &mut on_event)?;
    progress.finish();
    print_summary(&a.out, &res, "scan");
    if a.timings {
        eprintln!("{}", res.timings);
    }
    Ok(())
}

fn print_summary(dir: &Path, res: &DirResult, what: &str) {
    let toks: Vec<String> = res.study.counts.tokens_by_lang().iter().map(|(l, n)| format!("{l} {n}")).collect();
    eprintln!(
        "{what}: wrote {COUNTS_FILE}, {METRICS_FILE}, {METRICS_CSV}, {ROUTES_FILE} and the routing analyses ({COACTIVATION_FILE}, {CONSECUTIVE_FILE} and their CSVs, see SCAN.md) in {} (tokens: {})",
        dir.display(),
        toks.join(", ")
    );
    for c in &res.report.comparisons {
        let (fewer, more, none) = c.tally();
        eprintln!(
            "{what}: {} vs {} (token-matched effective number of experts, {} layers): fewer in {fewer}, more in {more}, no clear difference in {none}",
            c.a,
            c.b,
            c.layers.len()
        );
    }
}

pub fn run_merge(a: MergeArgs) -> anyhow::Result<()> {
    let res = checkpoint::merge_dirs(&a.out, &a.parts, a.report.reference.as_deref(), &a.report.options())?;
    let covered = res.state.sentences;
    eprintln!("merge: {} parts, {covered} sentences", a.parts.len());
    if covered < res.state.run.corpus_sentences {
        eprintln!(
            "merge: note: the parts cover {covered} of the corpus' {} sentences; some shards are missing",
            res.state.run.corpus_sentences
        );
    }
    print_summary(&a.out, &res, "merge");
    Ok(())
}
