//! Running a scan: the batches (cut by sentences and padded tokens, [`ScanOptions`]), the batched
//! forward pass with each layer's top-k kept ([`forward_padded`], `batch_top_k`, here or on a model
//! server), and the [`Scanner`] that runs one batch at a time and counts each real token's routing
//! (what [`scan`] and the command line's resumable directory scan drive).

use std::time::Instant;

use candle_core::Tensor;

use super::{script_language, Counts, ScanTimings, SentenceRoutes, Settings, Shard, Study};
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

// ------------------------------------------------------------------------------------------------
// Batched forward passes
// ------------------------------------------------------------------------------------------------

/// Runs several token sequences as one right-padded batch (padding masked out of attention, the
/// forward pass told each real length) with `spy` attached. Rows of the events are batch-major;
/// [`RouterEvent::is_real`] tells padding apart.
pub fn forward_padded(lens: &Lens, ids: &[&[u32]], spy: &mut dyn RouterSpy) -> Result<()> {
    forward_padded_edited(lens, ids, spy, &[])
}

/// [`forward_padded`] under interventions: `edits` is empty, one set for every sequence, or one
/// per sequence (as [`crate::olmoe::Olmoe::forward_edited`] takes them).
pub(crate) fn forward_padded_edited(
    lens: &Lens,
    ids: &[&[u32]],
    spy: &mut dyn RouterSpy,
    edits: &[crate::intervene::Interventions],
) -> Result<()> {
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
    let input = Tensor::from_vec(flat, (ids.len(), t), model.device())?; // [B, T]
    model.forward_edited(&input, None, padded.then_some(lengths.as_slice()), Step::Prefill, Some(spy), edits)?;
    Ok(())
}

/// Keeps each layer's top-k choices of one batch on the host.
pub(crate) struct TopKSpy {
    pub(crate) layers: Vec<Option<(usize, usize, Vec<u32>)>>, // (seq_len, k, [rows * k])
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
    // the model hands spies its routing on the host (one copy per forward pass, on any device),
    // so taking each layer's choices here is a host copy, not a synchronisation
    let mut spy = TopKSpy { layers: vec![None; layers] };
    forward_padded(lens, ids, &mut spy)?;
    Ok(spy)
}

impl RouterSpy for TopKSpy {
    fn on_route(&mut self, ev: &RouterEvent<'_>) -> Result<()> {
        let (_, k) = ev.top_k.dims2()?;
        let v: Vec<u32> = ev.top_k.flatten_all()?.to_vec1()?;
        let n = self.layers.len();
        let slot = self
            .layers
            .get_mut(ev.layer)
            .ok_or_else(|| Error::Spy(format!("layer {} reported but the model has {n}", ev.layer)))?;
        *slot = Some((ev.seq_len, k, v));
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
        // failing position is the one reported, as one by one. Each sentence's tokens shrink to
        // `ScanToken`s at once: holding every `Token` (label and offsets) until the end took 1 GB
        // at 10 million tokens.
        let positions: Vec<usize> = positions.into_iter().collect();
        let tokenizer = lens.tokenizer();
        let tokenized: Vec<Option<Result<Vec<ScanToken>>>> = {
            use rayon::prelude::*;
            positions
                .par_iter()
                .map(|&p| {
                    sentences.get(p).map(|s| tokenizer.encode(&s.text).map(|t| t.iter().map(ScanToken::from).collect()))
                })
                .collect()
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
            items.push((p, toks));
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
