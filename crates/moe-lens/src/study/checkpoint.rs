//! Resumable scans into a directory, and merging of shard directories: what `moe-lens scan` and
//! `moe-lens merge` do, usable from code too.
//!
//! A scan directory holds `state.json` (what the scan is of, how far it got, the counts so far),
//! `routes.bin` (every scanned sentence's routing, appended batch by batch) and, once finished,
//! `counts.json`, `metrics.json` and `metrics.csv`.
//!
//! Crash safety: each batch's routes are appended to `routes.bin` by a writer thread, in order,
//! while the next batch runs. At most every [`DirScan::commit_every`] (2 s by default), after the
//! last batch and before an error is returned, the writer flushes `routes.bin` to disk and then
//! replaces `state.json` atomically (temporary file, fsync, rename, directory fsync) with the number
//! of sentences done, the valid length of `routes.bin` and the counts, so the state never claims
//! routes that are not on disk. A process killed at any moment leaves the old or the new state; a
//! routes tail past the recorded length is cut off on the next run, which continues after the last
//! committed batch (redoing at most the batches of the last `commit_every`). Nothing is lost or
//! counted twice. The state records the model, the corpus' fingerprint, the shard, the dtype and
//! the counting options, and a run with other values is refused (the batch size and device may
//! change between runs).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::analyses::{AnalysisOptions, RoutingAnalyses, TokenLabels};
use super::counts::{Counts, CountsJson};
use super::metrics::Metrics;
use super::routes::{self, RoutesReader};
use super::{
    write_atomic, CompareOptions, ScanOptions, ScanTimings, Scanner, Settings, Shard, Study, COUNTS_FILE, ROUTES_FILE,
};
use crate::corpus::Sentence;
use crate::error::{Error, Result};
use crate::lab::Lens;

/// The lock file of a scan or merge directory: held (an exclusive `flock`, released by the system
/// when the process ends, however it ends) while a scan or merge writes there.
pub const LOCK_FILE: &str = "scan.lock";

/// A held lock on an output directory (see [`lock_dir`]); released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _lock: crate::fsutil::FileLock,
    dir: PathBuf,
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// Creates `dir` if needed and takes its lock, refusing at once when another scan or merge holds
/// it (two writers would interleave their batches and state files).
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(LOCK_FILE);
    match crate::fsutil::FileLock::acquire(&path, 1).map_err(|e| Error::io(&path, e))? {
        Some(l) => Ok(DirLock { _lock: l, dir: dir.to_path_buf() }),
        None => Err(dir_err(
            dir,
            format!(
                "another `moe-lens scan` or `moe-lens merge` is writing to it now (it holds {LOCK_FILE}): wait for \
                 it to finish (then run this command again to continue or rewrite its outputs), or use another \
                 output directory"
            ),
        )),
    }
}

/// The state file of a scan or merge directory.
pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// What a scan directory was made from; a rerun must match it to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The model as named on the command line.
    pub model: String,
    /// The corpus as given (for messages; the fingerprint decides).
    pub corpus: String,
    /// [`crate::corpus::fingerprint`] of the whole corpus.
    pub corpus_fingerprint: String,
    /// Sentences in the whole corpus (all shards).
    pub corpus_sentences: usize,
    /// `--lang` of a .txt corpus.
    pub lang: Option<String>,
    /// The model's dtype (`f32`, `bf16`, `f16`); empty before the model is loaded.
    pub dtype: String,
    /// Whether tokens count under the language of their script (see
    /// [`ScanOptions::by_script`](super::ScanOptions::by_script)).
    pub by_script: bool,
    /// Whether tokens of the Common script are left out (see
    /// [`ScanOptions::skip_common`](super::ScanOptions::skip_common)).
    pub skip_common: bool,
    /// Most sentences per batch. A shard is a run of batches, so a sharded scan continues only with
    /// the same batch limits (0: not known yet, or a state file written before this was recorded;
    /// `usize::MAX`: no limit).
    #[serde(default)]
    pub batch: usize,
    /// Most padded tokens per batch (as `batch`; `usize::MAX`: no limit, 0: not known yet or not
    /// recorded).
    #[serde(default)]
    pub batch_tokens: usize,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanState {
    /// Version of the state file's format.
    pub version: u32,
    /// `scan` or `merge`.
    pub kind: String,
    /// The run the directory belongs to.
    pub run: RunInfo,
    /// Shards covered (one for a scan).
    pub shards: Vec<Shard>,
    /// Sentences of the scan, and how many are done (in scan order).
    pub sentences: usize,
    /// Sentences done so far, in scan order (a prefix of the scan).
    pub done: usize,
    /// Valid length of routes.bin.
    pub routes_bytes: u64,
    /// Whether every sentence of the scan is done.
    pub complete: bool,
    /// The routing counts of the sentences done so far.
    pub counts: CountsJson,
}

fn dir_err(dir: &Path, msg: impl Into<String>) -> Error {
    Error::invalid("output directory", format!("{}: {}", dir.display(), msg.into()))
}

/// Reads `dir/state.json`, if there is one.
pub fn read_state(dir: &Path) -> Result<Option<ScanState>> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let st: ScanState = serde_json::from_str(&text).map_err(|e| {
        dir_err(dir, format!("{STATE_FILE} is not a moe-lens scan state ({e}); use another output directory"))
    })?;
    if st.version != STATE_VERSION {
        return Err(dir_err(
            dir,
            format!(
                "written by another version of moe-lens (state version {}); use another output directory",
                st.version
            ),
        ));
    }
    Ok(Some(st))
}

fn write_state(dir: &Path, st: &ScanState) -> Result<()> {
    let text = serde_json::to_string(st).map_err(|e| Error::invalid("state", format!("cannot serialise: {e}")))?;
    write_atomic(&dir.join(STATE_FILE), text.as_bytes())
}

/// The differences between what a directory was scanned with and what is asked now.
fn run_diffs(old: &RunInfo, old_shards: &[Shard], new: &RunInfo, new_shard: Shard) -> Vec<String> {
    let mut d = Vec::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
    if old.model != new.model {
        d.push(format!("model {} (now {})", old.model, new.model));
    }
    if old.corpus_fingerprint != new.corpus_fingerprint {
        d.push(format!(
            "corpus {} with fingerprint {} of {} sentences (now {}: {} of {})",
            old.corpus,
            old.corpus_fingerprint,
            old.corpus_sentences,
            new.corpus,
            new.corpus_fingerprint,
            new.corpus_sentences
        ));
    }
    if old.lang != new.lang {
        d.push(format!("lang {} (now {})", opt(&old.lang), opt(&new.lang)));
    }
    if old.by_script != new.by_script {
        d.push(format!("by-script {} (now {})", old.by_script, new.by_script));
    }
    if old.skip_common != new.skip_common {
        d.push(format!("skip-common {} (now {})", old.skip_common, new.skip_common));
    }
    // 0 on either side: not known (yet): the model's device decides a default
    let differ = |a: usize, b: usize| a != 0 && b != 0 && a != b;
    if new_shard.count > 1 && (differ(old.batch, new.batch) || differ(old.batch_tokens, new.batch_tokens)) {
        let n = |v: usize| match v {
            0 => "?".to_string(),
            usize::MAX => "no limit".to_string(),
            v => v.to_string(),
        };
        d.push(format!(
            "batch {} (now {}), batch tokens {} (now {}); a shard is a run of batches, so a sharded scan \
             continues only with its --batch and --batch-tokens",
            n(old.batch),
            n(new.batch),
            n(old.batch_tokens),
            n(new.batch_tokens)
        ));
    }
    if old_shards != [new_shard] {
        let s: Vec<String> = old_shards.iter().map(Shard::to_string).collect();
        d.push(format!("shard {} (now {new_shard})", s.join(",")));
    }
    if !new.dtype.is_empty() && old.dtype != new.dtype {
        d.push(format!("dtype {} (now {}; pass that dtype to continue)", old.dtype, new.dtype));
    }
    d
}

/// Checks, before a model is loaded, that `dir` is empty, new, or an unfinished or finished scan of
/// exactly this run; returns its state when there is one. `run.dtype` may be empty (checked later).
pub fn check_dir(dir: &Path, run: &RunInfo, shard: Shard) -> Result<Option<ScanState>> {
    let previous = read_state(dir)?;
    match &previous {
        Some(st) => {
            let d = run_diffs(&st.run, &st.shards, run, shard);
            if st.kind != "scan" {
                return Err(dir_err(
                    dir,
                    format!("it holds the output of a `moe-lens {}`; scan into another directory", st.kind),
                ));
            }
            if !d.is_empty() {
                return Err(dir_err(
                    dir,
                    format!(
                        "it holds a scan with other arguments: {}. To continue that scan, run it with its arguments; to start \
                         a new one, use another output directory (or delete this one)",
                        d.join("; ")
                    ),
                ));
            }
        }
        None => {
            if dir.join(ROUTES_FILE).exists() || dir.join(COUNTS_FILE).exists() {
                return Err(dir_err(dir, format!("it holds scan outputs but no {STATE_FILE}, so it cannot be continued; use another output directory")));
            }
        }
    }
    Ok(previous)
}

/// Reads the committed part of routes.bin (cutting off a torn tail) one sentence at a time:
/// returns the corpus positions of the sentences done and their counts (checked against the
/// state file's).
fn resume_counts(dir: &Path, st: &ScanState) -> Result<(Vec<usize>, Counts)> {
    let path = dir.join(ROUTES_FILE);
    let damaged = |msg: String| dir_err(dir, format!("{msg}: the directory is damaged; delete it to start over"));
    let f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(&path, e))?;
    let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    if len < st.routes_bytes {
        return Err(damaged(format!(
            "{ROUTES_FILE} is shorter ({len} bytes) than {STATE_FILE} records ({})",
            st.routes_bytes
        )));
    }
    if !routes::is_current_layout(&path)? {
        return Err(dir_err(
            dir,
            format!(
                "its {ROUTES_FILE} was written by an older moe-lens (without token ids), so this scan cannot continue \
                 it: start over in another output directory"
            ),
        ));
    }
    f.set_len(st.routes_bytes).map_err(|e| Error::io(&path, e))?;
    f.sync_all().map_err(|e| Error::io(&path, e))?;
    drop(f);
    let counts = Counts::from_json(&st.counts)?;
    let reader = RoutesReader::open(&path)?;
    let (layers, k, experts) = reader.shape();
    let mut recount = Counts::new(&counts.model, layers, experts, k);
    let mut have = Vec::new();
    let shape_ok = (layers, k, experts) == (counts.layers, counts.k, counts.experts);
    for r in reader {
        let r = r?;
        if shape_ok {
            recount.add(&r)?;
        }
        have.push(r.index as usize);
    }
    if !shape_ok || have.len() != st.done {
        return Err(damaged(format!("{ROUTES_FILE} holds {} sentences but {STATE_FILE} says {}", have.len(), st.done)));
    }
    if recount != counts {
        return Err(damaged(format!("the counts in {STATE_FILE} are not the sum of {ROUTES_FILE}")));
    }
    Ok((have, counts))
}

/// Writes a finished scan's (or merge's) outputs from its counts and its routes.bin, reading the
/// routes file one sentence at a time (memory does not grow with the corpus): sorts routes.bin by
/// corpus position, compares every language with the reference (the bootstrap reads the sentences
/// it draws from the file), writes `counts.json`, `metrics.json`, `metrics.csv` and the routing
/// analyses. The same files as [`Study::save`] of the same routes.
fn finish_dir(
    dir: &Path,
    counts: &Counts,
    settings: Settings,
    reference: Option<&str>,
    opts: &CompareOptions,
    labels: Option<&TokenLabels<'_>>,
) -> Result<(Metrics, std::time::Duration)> {
    let started = Instant::now();
    let path = dir.join(ROUTES_FILE);
    routes::sort_file(&path)?;
    let (layers, experts, k) = (counts.layers, counts.experts, counts.k);
    let report = super::report_of(counts, reference, |a, b| {
        super::compare::compare_file(&path, layers, experts, k, a, b, opts)
    })?;
    let report_time = started.elapsed();
    super::save_tables(dir, counts, settings, &report)?;
    RoutingAnalyses::from_routes_file(&counts.model, &path)?.save(dir, &AnalysisOptions::default(), labels)?;
    Ok((report, report_time))
}

/// What a resumable scan reports as it goes.
pub enum ScanEvent<'s, 'a> {
    /// Starting (fresh or continuing); the scanner tells how far it is.
    Start {
        /// The scanner, which tells how far the scan is.
        scanner: &'s Scanner<'a>,
        /// Whether an earlier, interrupted scan of this directory is being continued.
        resumed: bool,
        /// Whether the scan was already complete (nothing left to do).
        complete: bool,
    },
    /// A batch was run and handed to the writer thread, which appends its routes to `routes.bin`
    /// and commits them in `state.json` (in order, at most [`DirScan::commit_every`] later).
    Batch(&'s Scanner<'a>),
}

/// The result of [`scan_to_dir`] and [`merge_dirs`].
pub struct DirResult {
    /// The counts of the whole scan. Its `routes` are empty: they are in the directory's
    /// `routes.bin`, which the analyses read one sentence at a time ([`Study::load`] reads them
    /// all into memory).
    pub study: Study,
    /// Metrics with the comparisons against the reference language.
    pub report: Metrics,
    /// The state file as written at the end.
    pub state: ScanState,
    /// Where the time went ([`ScanTimings`]; all zero for a merge).
    pub timings: ScanTimings,
}

/// What [`scan_to_dir`] scans and reports.
#[derive(Debug, Clone)]
pub struct DirScan {
    /// Describes the run for the state file (its `dtype` is filled in from the model).
    pub run: RunInfo,
    /// Which shard of the corpus this process scans.
    pub shard: Shard,
    /// How to scan (batch size, counting by script, ...).
    pub options: ScanOptions,
    /// The language the others are compared with in `metrics.json` (default `en`).
    pub reference: Option<String>,
    /// How `metrics.json` compares languages.
    pub compare: CompareOptions,
    /// The longest time between two commits of `state.json` while scanning
    /// ([`COMMIT_INTERVAL`] by default; zero: after every batch). An interrupted scan redoes the
    /// batches after the last commit.
    pub commit_every: std::time::Duration,
}

/// The default [`DirScan::commit_every`]: 2 s. A commit is three fsyncs (the routes, the state
/// file, its directory), as long as a batch's forward pass on a GPU.
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A batch for the writer thread: its encoded routes, and the state to commit once they (and every
/// batch before them) are on disk.
struct WriteJob {
    bytes: Vec<u8>,
    commit: Option<ScanState>,
}

/// Batches the scan loop may run ahead of the writer thread.
const WRITE_QUEUE: usize = 4;

/// The writer thread of [`run_batches`]: appends each batch's routes to `routes.bin` in order and,
/// when a job carries a state, flushes `routes.bin` to disk and then commits the state. Returns
/// (time appending and flushing, time writing states, commits).
fn write_batches(
    dir: &Path,
    rx: std::sync::mpsc::Receiver<WriteJob>,
) -> Result<(std::time::Duration, std::time::Duration, usize)> {
    let path = dir.join(ROUTES_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    let (mut append, mut state_write, mut commits) = (std::time::Duration::ZERO, std::time::Duration::ZERO, 0);
    let mut unsynced = false;
    for job in rx {
        let t0 = Instant::now();
        if !job.bytes.is_empty() {
            f.write_all(&job.bytes).map_err(|e| Error::io(&path, e))?;
            unsynced = true;
        }
        if let Some(st) = job.commit {
            // the routes the state claims are on disk before the state is
            if unsynced {
                f.sync_all().map_err(|e| Error::io(&path, e))?;
                unsynced = false;
            }
            let t1 = Instant::now();
            write_state(dir, &st)?;
            append += t1 - t0;
            state_write += t1.elapsed();
            commits += 1;
        } else {
            append += t0.elapsed();
        }
    }
    Ok((append, state_write, commits))
}

/// Runs the scan's remaining batches, handing each batch's routes to a writer thread
/// ([`write_batches`]) so that the next forward pass runs while they are written. The state is
/// committed at most every `commit_every` (a commit is three fsyncs), after the last batch, and
/// before an error from the scan is returned; an error from the writer (with the file it was
/// writing) is returned at the next batch or at the end.
fn run_batches(
    scanner: &mut Scanner<'_>,
    state: &mut ScanState,
    dir: &Path,
    commit_every: std::time::Duration,
    t: &mut ScanTimings,
    on_event: &mut dyn FnMut(ScanEvent<'_, '_>),
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(WRITE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("moe-lens scan writer".into())
            .spawn_scoped(scope, move || write_batches(dir, rx))
            .map_err(|e| Error::io(dir.join(ROUTES_FILE), e))?;
        let mut last_commit = Instant::now();
        let (mut writer_gone, mut sent_any) = (false, false);
        let scanned = (|| -> Result<()> {
            loop {
                let mut bytes = Vec::new();
                match scanner.step()? {
                    None => return Ok(()),
                    Some(new) => {
                        let t0 = Instant::now();
                        for r in new {
                            r.encode_into(&mut bytes)?;
                        }
                        t.encode += t0.elapsed();
                    }
                }
                state.routes_bytes += bytes.len() as u64;
                state.done = scanner.done();
                let commit = if last_commit.elapsed() >= commit_every {
                    last_commit = Instant::now();
                    state.counts = scanner.study().counts.to_json();
                    t.state_json += last_commit.elapsed();
                    Some(state.clone())
                } else {
                    None
                };
                let t0 = Instant::now();
                let sent = tx.send(WriteJob { bytes, commit });
                t.writer_wait += t0.elapsed();
                if sent.is_err() {
                    // the writer stopped on an error, which it returns below
                    writer_gone = true;
                    return Ok(());
                }
                sent_any = true;
                on_event(ScanEvent::Batch(scanner));
            }
        })();
        // commit what was handed over (all of it after the last batch; after an error too, so
        // that a rerun continues from there)
        if sent_any && !writer_gone {
            let t0 = Instant::now();
            state.counts = scanner.study().counts.to_json();
            t.state_json += t0.elapsed();
            let _ = tx.send(WriteJob { bytes: Vec::new(), commit: Some(state.clone()) });
        }
        drop(tx);
        let t0 = Instant::now();
        let written = writer.join().map_err(|_| {
            Error::io(dir.join(ROUTES_FILE), std::io::Error::other("the scan's writer thread panicked"))
        })?;
        t.writer_wait += t0.elapsed();
        match written {
            Ok((append, state_write, commits)) => {
                t.append += append;
                t.state_write += state_write;
                t.commits += commits;
                scanned
            }
            // the scan's own error first: it came before the writer's, or caused it
            Err(e) => scanned.and(Err(e)),
        }
    })
}

/// A resumable scan of a shard of `sentences` into `dir` (see the module docs). Continues an
/// interrupted scan of the same run; refuses a directory of another run. Writes `counts.json`,
/// `metrics.json`, `metrics.csv` and `routes.bin` at the end.
pub fn scan_to_dir(
    lens: &Lens,
    sentences: &[Sentence],
    job: &DirScan,
    dir: &Path,
    on_event: &mut dyn FnMut(ScanEvent<'_, '_>),
) -> Result<DirResult> {
    let lock = lock_dir(dir)?;
    scan_to_dir_locked(lens, sentences, job, dir, &lock, on_event)
}

/// [`scan_to_dir`] under a lock the caller took with [`lock_dir`] (e.g. before loading the model).
pub fn scan_to_dir_locked(
    lens: &Lens,
    sentences: &[Sentence],
    job: &DirScan,
    dir: &Path,
    lock: &DirLock,
    on_event: &mut dyn FnMut(ScanEvent<'_, '_>),
) -> Result<DirResult> {
    if !same_dir(&lock.dir, dir) {
        return Err(dir_err(dir, format!("the lock given is of {}, not of this directory", lock.dir.display())));
    }
    let (shard, opts) = (job.shard, &job.options);
    let mut run = job.run.clone();
    run.dtype = format!("{:?}", lens.dtype()).to_ascii_lowercase();
    let previous = check_dir(dir, &run, shard)?;
    let settings = Settings { by_script: opts.by_script, skip_common: opts.skip_common };
    (run.batch, run.batch_tokens) = opts.limits(&super::scan_device(lens))?;
    let mut scanner = Scanner::for_shard(lens, sentences, shard, opts)?;
    // the routes go to routes.bin only: memory stays flat however long the corpus
    scanner.keep_routes(false);
    let cfg = lens.config();
    let (layers, k, experts) = (cfg.num_hidden_layers, cfg.num_experts_per_tok, cfg.num_experts);
    let routes_path = dir.join(ROUTES_FILE);

    let (mut state, resumed) = match previous {
        Some(st) => {
            if st.sentences != scanner.total() {
                return Err(dir_err(
                    dir,
                    format!(
                        "{STATE_FILE} records {} sentences for this shard but it has {}; delete it to start over",
                        st.sentences,
                        scanner.total()
                    ),
                ));
            }
            let (have, counts) = resume_counts(dir, &st)?;
            scanner.resume_counts(have, counts, settings)?;
            (st, true)
        }
        None => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let header = routes::header(layers, k, experts);
            write_atomic(&routes_path, &header)?;
            let st = ScanState {
                version: STATE_VERSION,
                kind: "scan".into(),
                run,
                shards: vec![shard],
                sentences: scanner.total(),
                done: 0,
                routes_bytes: header.len() as u64,
                complete: false,
                counts: scanner.study().counts.to_json(),
            };
            write_state(dir, &st)?;
            (st, false)
        }
    };
    on_event(ScanEvent::Start { scanner: &scanner, resumed, complete: state.complete });

    let mut t = ScanTimings::default();
    let loop_start = Instant::now();
    run_batches(&mut scanner, &mut state, dir, job.commit_every, &mut t, on_event)?;
    t.loop_wall = loop_start.elapsed();
    let finish_start = Instant::now();
    let s = scanner.timings();
    (t.batches, t.tokens, t.tokenize, t.forward, t.forward_first, t.routes) =
        (s.batches, s.tokens, s.tokenize, s.forward, s.forward_first, s.routes);

    let study = scanner.into_study();
    let tokenizer = lens.tokenizer();
    let labels = |ids: &[u32]| tokenizer.labels(ids).unwrap_or_default();
    let (report, report_time) =
        finish_dir(dir, &study.counts, settings, job.reference.as_deref(), &job.compare, Some(&labels))?;
    t.report = report_time;
    let save_start = finish_start + report_time;
    state.complete = true;
    state.routes_bytes = std::fs::metadata(&routes_path).map_err(|e| Error::io(&routes_path, e))?.len();
    state.counts = study.counts.to_json();
    write_state(dir, &state)?;
    t.save = save_start.elapsed();
    Ok(DirResult { study, report, state, timings: t })
}

/// Sums finished scan (or merge) directories into `out`: refuses parts of different models,
/// corpora, dtypes or counting options, unfinished parts, and parts that share a shard or a
/// sentence. Writes the same files as a scan. The result's `state.sentences` says how many
/// sentences the parts cover (fewer than the corpus when shards are missing).
pub fn merge_dirs(
    out: &Path,
    parts: &[PathBuf],
    reference: Option<&str>,
    compare: &CompareOptions,
) -> Result<DirResult> {
    for part in parts {
        if same_dir(part, out) {
            return Err(dir_err(part, "it is both a part and the output: merge into another directory"));
        }
    }
    let _lock = lock_dir(out)?;
    if let Some(st) = read_state(out)? {
        if st.kind != "merge" {
            return Err(dir_err(
                out,
                format!("it holds the output of a `moe-lens {}`; merge into another directory", st.kind),
            ));
        }
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // the counts (a study without routes), the corpus positions seen, and the parts in order
    let mut merged: Option<(RunInfo, Vec<Shard>, Study)> = None;
    let mut seen: std::collections::HashSet<u32> = std::collections::HashSet::new();
    for part in parts {
        if canon(part) == canon(out) {
            return Err(dir_err(part, "it is both a part and the output: merge into another directory"));
        }
        let st = read_state(part)?.ok_or_else(|| {
            dir_err(part, format!("no {STATE_FILE}: is it the output directory of a `moe-lens scan`?"))
        })?;
        if !st.complete {
            return Err(dir_err(
                part,
                format!("the scan is not finished ({} of {} sentences): run the same `moe-lens scan` command again to complete it", st.done, st.sentences),
            ));
        }
        let (counts, settings, indices) = super::load_counts(part)?;
        if !routes::is_current_layout(&part.join(ROUTES_FILE))? {
            return Err(dir_err(
                part,
                format!(
                    "its {ROUTES_FILE} was written by an older moe-lens (without token ids): scan it again to merge it"
                ),
            ));
        }
        let s = Study { counts, routes: Vec::new(), settings };
        match &mut merged {
            None => {
                seen.extend(&indices);
                merged = Some((st.run.clone(), st.shards.clone(), s));
            }
            Some((run, shards, study)) => {
                let mut d = Vec::new();
                if st.run.model != run.model || s.counts.check_compatible(&study.counts).is_err() {
                    d.push(format!(
                        "model {} ({} layers × {} experts, top-{}) vs {} ({} × {}, top-{})",
                        st.run.model,
                        s.counts.layers,
                        s.counts.experts,
                        s.counts.k,
                        run.model,
                        study.counts.layers,
                        study.counts.experts,
                        study.counts.k
                    ));
                }
                if st.run.corpus_fingerprint != run.corpus_fingerprint || st.run.lang != run.lang {
                    d.push(format!(
                        "corpus {} (fingerprint {}) vs {} ({})",
                        st.run.corpus, st.run.corpus_fingerprint, run.corpus, run.corpus_fingerprint
                    ));
                }
                if st.run.dtype != run.dtype {
                    d.push(format!("dtype {} vs {}", st.run.dtype, run.dtype));
                }
                let known = |a: usize, b: usize| a != 0 && b != 0 && a != b;
                if st.shards.iter().any(|x| x.count > 1)
                    && (known(st.run.batch, run.batch) || known(st.run.batch_tokens, run.batch_tokens))
                {
                    let lim = |s: usize, t: usize| super::ScanOptions::describe((s, t));
                    d.push(format!(
                        "{} vs {} (shards are runs of batches)",
                        lim(st.run.batch, st.run.batch_tokens),
                        lim(run.batch, run.batch_tokens)
                    ));
                }
                if st.run.by_script != run.by_script || st.run.skip_common != run.skip_common {
                    d.push("the counting options (by-script, skip-common) differ".into());
                }
                if !d.is_empty() {
                    return Err(dir_err(
                        part,
                        format!(
                            "it does not match the parts before it: {}; merge only shards of one scan",
                            d.join("; ")
                        ),
                    ));
                }
                if let Some(sh) = st.shards.iter().find(|sh| shards.contains(sh)) {
                    return Err(dir_err(
                        part,
                        format!("shard {sh} is in more than one part (overlapping shards); give each shard once"),
                    ));
                }
                shards.extend(st.shards.iter().copied());
                study.merge(s).map_err(|e| dir_err(part, e.to_string()))?;
                if let Some(&dup) = indices.iter().find(|i| seen.contains(i)) {
                    let id = sentence_id(&part.join(ROUTES_FILE), dup)?;
                    return Err(dir_err(
                        part,
                        format!("sentence {id} (#{dup}) is in both: the parts overlap; merge each shard once"),
                    ));
                }
                seen.extend(&indices);
            }
        }
    }
    let Some((run, shards, study)) = merged else {
        return Err(Error::invalid("merge", "no parts to merge: give the shard directories"));
    };
    let covered = seen.len();
    // an unknown reference language is refused before anything is written
    super::resolve_reference(&study.counts, reference)?;
    // the parts' routes one after the other (each part checked above); finish_dir sorts them
    let rpath = out.join(ROUTES_FILE);
    let c = &study.counts;
    crate::fsutil::write_atomic_with(&rpath, |w| {
        w.write_all(&routes::header(c.layers, c.k, c.experts)).map_err(|e| Error::io(&rpath, e))?;
        for part in parts {
            let p = part.join(ROUTES_FILE);
            let mut f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            std::io::copy(&mut (&mut f).take(routes::HEADER_LEN as u64), &mut std::io::sink())
                .map_err(|e| Error::io(&p, e))?;
            std::io::copy(&mut f, w).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    })?;
    let (report, _) = finish_dir(out, &study.counts, study.settings, reference, compare, None)?;
    let routes_bytes = std::fs::metadata(&rpath).map_err(|e| Error::io(&rpath, e))?.len();
    let state = ScanState {
        version: STATE_VERSION,
        kind: "merge".into(),
        run,
        shards,
        sentences: covered,
        done: covered,
        routes_bytes,
        complete: true,
        counts: study.counts.to_json(),
    };
    write_state(out, &state)?;
    Ok(DirResult { study, report, state, timings: ScanTimings::default() })
}

/// The id of the sentence at corpus position `index` in a routes file (for messages).
fn sentence_id(path: &Path, index: u32) -> Result<String> {
    for r in RoutesReader::open(path)? {
        let r = r?;
        if r.index == index {
            return Ok(r.id);
        }
    }
    Ok(String::new())
}
