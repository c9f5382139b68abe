//! Expert cards: one page per (layer, expert) of a scan — its top tokens shown in context, its
//! languages and scripts, its co-activation partners, how often it stays the first choice from one
//! token to the next, and its ablation effect when a sweep is at hand — and a static,
//! self-contained, searchable HTML site of them (`moe-lens report SCAN_DIR --out DIR`).
//!
//! ```no_run
//! # use moe_lens::prelude::*;
//! use moe_lens::plot::cards::ExpertCards;
//! # fn demo(lens: &Lens) -> Result<()> {
//! let cards = ExpertCards::from_scan_dir("runs/trilingual", Some(lens.tokenizer()))?;
//! cards.card(7, 12)?;                  // in a notebook cell: the card, as HTML
//! cards.write_site("runs/trilingual/report")?; // index.html, layer-07.html, l07-e12.html, …
//! # Ok(()) }
//! ```
//!
//! Where the numbers come from: everything is computed from the scan's routes (`routes.bin`, read
//! one sentence at a time, twice: once for the sums, once to sample contexts), by the same
//! [`RoutingAnalyses`] that writes the scan's CSV files, so a card's picks, top tokens, languages
//! and partners are the rows of `coactivation.csv`, `specialisation_tokens.csv` and
//! `specialisation_langs.csv` for that expert. Two things are the cards' own:
//!
//! - **contexts**: a scan keeps every counted token's id and position (not the sentence text), so a
//!   top token's context is rebuilt from the ids of the counted tokens around it in the same
//!   sentence (`window` positions either side), decoded with the model's tokenizer; positions that
//!   were not counted (`--skip-common`) show as `…`. The first `contexts` occurrences in
//!   `routes.bin` order are shown. No corpus has to be read again, and nothing is added to a scan.
//! - **consecutive tokens of one expert** ([`ExpertConsecutive`]): over neighbouring token pairs
//!   (both counted, positions one apart, one sentence; the definition of
//!   [`RoutingAnalyses::consecutive`]), the pairs whose first token's top-1 is this expert, and the
//!   share whose second token's top-1 is this expert too; and the pairs whose first token has the
//!   expert among its top-k, with the share whose second token has it too. A uniform random router
//!   gives 1/E and k/E. Summed over the experts of a layer, the first counts are the layer's pairs
//!   and `top1_same` pairs of `consecutive.csv`, all languages together.
//!
//! A language's colour on the overview: the language whose tokens chose the expert most often
//! relative to their number (`picks(E, L) / tokens(L)`, the usage), drawn stronger the more of the
//! summed usage it holds (even use over `n` languages is `1/n`: white).
//!
//! Every text from the corpus, the tokenizer, sentence ids, tags and sweeps is HTML-escaped; the
//! search index is JSON inside a `<script>` with `<`, `>` and `&` written as `\u003c` etc.; the
//! pages load nothing from anywhere (no CDN, no external URL) and carry a Content-Security-Policy
//! that forbids it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::effects::Sweep;
use crate::error::{Error, Result};
use crate::study::analyses::{Partner, RoutingAnalyses};
use crate::study::routes::{RoutesReader, SentenceRoutes};
use crate::study::{Counts, Study, COUNTS_FILE, ROUTES_FILE};
use crate::tokens::Tokenizer;

mod site;

pub use site::{card_file, layer_file};

/// How much each card shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardOptions {
    /// Top token ids per expert (default 10, as `specialisation_tokens.csv`).
    pub top_tokens: usize,
    /// Contexts shown per top token (default 3).
    pub contexts: usize,
    /// Token positions shown on each side of a token in its context (default 6).
    pub window: usize,
    /// Co-activation partners per expert (default 8).
    pub partners: usize,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions { top_tokens: 10, contexts: 3, window: 6, partners: 8 }
    }
}

/// One occurrence of a token in its sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenContext {
    /// The sentence's id (from the corpus).
    pub sentence: String,
    /// The language the token is counted under.
    pub lang: String,
    /// The text of the tokens before it (`…` where positions were not counted).
    pub before: String,
    /// The token itself (its label).
    pub token: String,
    /// The text of the tokens after it.
    pub after: String,
}

/// One of an expert's most frequent token ids, with contexts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardToken {
    /// The token's id in the vocabulary.
    pub token_id: u32,
    /// Its label (`#id` without a tokenizer).
    pub label: String,
    /// Times this token id chose the expert.
    pub count: u64,
    /// `count` / the expert's picks.
    pub share_of_expert: f64,
    /// `count` / the token id's occurrences.
    pub share_of_token: f64,
    /// Its first occurrences that chose the expert, in `routes.bin` order.
    pub contexts: Vec<TokenContext>,
}

/// An expert's picks by one group (language, script or domain).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupShare {
    /// The language tag, script name or domain.
    pub name: String,
    /// Picks of the expert by this group's tokens.
    pub picks: u64,
    /// `picks` / the expert's picks.
    pub share: f64,
    /// `picks` / this group's tokens (languages only; 0 for scripts and domains): the usage, whose
    /// even value is k/E.
    pub usage: f64,
}

/// How often an expert stays chosen from one token to the next (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ExpertConsecutive {
    /// Neighbouring pairs whose first token's top-1 is this expert.
    pub top1_pairs: u64,
    /// Of those, pairs whose second token's top-1 is this expert too.
    pub top1_same: u64,
    /// Of those, pairs whose second token's top-2 holds this expert.
    pub top1_in_next_top2: u64,
    /// Neighbouring pairs whose first token has this expert among its top-k.
    pub topk_pairs: u64,
    /// Of those, pairs whose second token has it among its top-k too.
    pub topk_next_also: u64,
}

impl ExpertConsecutive {
    fn rate(x: u64, n: u64) -> f64 {
        if n == 0 {
            0.0
        } else {
            x as f64 / n as f64
        }
    }
    /// `top1_same / top1_pairs` (0 without pairs); a random router gives 1/E.
    pub fn top1_same_rate(&self) -> f64 {
        Self::rate(self.top1_same, self.top1_pairs)
    }
    /// `top1_in_next_top2 / top1_pairs`; a random router gives 2/E.
    pub fn top1_in_next_top2_rate(&self) -> f64 {
        Self::rate(self.top1_in_next_top2, self.top1_pairs)
    }
    /// `topk_next_also / topk_pairs`; a random router gives k/E.
    pub fn topk_next_also_rate(&self) -> f64 {
        Self::rate(self.topk_next_also, self.topk_pairs)
    }
}

/// What ablating the expert did in one importance sweep (`moe-lens sweep`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardEffect {
    /// The sweep's text (prompt).
    pub text: String,
    /// The continuation whose log-probability was measured.
    pub continuation: String,
    /// Tokens of the text that chose the expert.
    pub tokens: usize,
    /// Change of the continuation's log-probability with the expert ablated.
    pub delta: f64,
    /// Whether `|delta|` is at or below the sweep's noise floor.
    pub below_noise: bool,
    /// Its rank in the sweep by `|delta|` (1 = largest).
    pub rank: usize,
    /// Experts the sweep ablated.
    pub of: usize,
}

/// One expert's card (see the module docs). In a notebook cell it shows as HTML.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertCard {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Layer index, from 0.
    pub layer: usize,
    /// Expert index, in 0..experts.
    pub expert: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Counted tokens of the scan (all languages).
    pub tokens: u64,
    /// Tokens that chose the expert (top-k).
    pub picks: u64,
    /// Distinct token ids among them.
    pub distinct_tokens: usize,
    /// Its most frequent token ids, most frequent first.
    pub top_tokens: Vec<CardToken>,
    /// Share of its picks from its most frequent token ids (`top_tokens` of them).
    pub top_tokens_share: f64,
    /// Its picks per language (sorted by tag).
    pub langs: Vec<GroupShare>,
    /// Its picks per Unicode script of the token (most first; empty without a tokenizer).
    pub scripts: Vec<GroupShare>,
    /// Its picks per domain (sorted; empty when no sentence has one).
    pub domains: Vec<GroupShare>,
    /// The language it serves most relative to the language's tokens (see the module docs).
    pub dominant_lang: Option<String>,
    /// That language's part of the summed usage (`1/languages` = even).
    pub dominance: f64,
    /// Its most frequent co-activation partners.
    pub partners: Vec<Partner>,
    /// How often it stays chosen from one token to the next.
    pub consecutive: ExpertConsecutive,
    /// Its effects in the sweeps added with [`ExpertCards::with_sweep`] (empty: none, or the
    /// sweep's text never routed to it).
    pub effects: Vec<CardEffect>,
    /// The sweeps added, as `text → continuation` (so a card can say "not routed to" for the others).
    pub sweeps: Vec<String>,
}

/// Every expert card of a scan, and the site they make (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertCards {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Router layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Sentences scanned.
    pub sentences: u64,
    /// Counted tokens per language.
    pub lang_tokens: BTreeMap<String, u64>,
    /// Whether token labels and contexts come from a tokenizer (else token ids, `#id`).
    pub labelled: bool,
    cards: Vec<ExpertCard>,
}

/// Sums of one pass over the routes that the analyses do not keep.
struct PassSums {
    layers: usize,
    experts: usize,
    k: usize,
    consec: Vec<ExpertConsecutive>,
    lang_tokens: BTreeMap<String, u64>,
}

impl PassSums {
    fn new(layers: usize, experts: usize, k: usize) -> PassSums {
        PassSums {
            layers,
            experts,
            k,
            consec: vec![
                ExpertConsecutive {
                    top1_pairs: 0,
                    top1_same: 0,
                    top1_in_next_top2: 0,
                    topk_pairs: 0,
                    topk_next_also: 0
                };
                layers * experts
            ],
            lang_tokens: BTreeMap::new(),
        }
    }

    fn add(&mut self, r: &SentenceRoutes) {
        let n = r.tokens();
        for t in 0..n {
            *self.lang_tokens.entry(r.lang_of(t).to_string()).or_insert(0) += 1;
        }
        let adjacent = |t: usize| r.positions.len() != n || r.positions[t + 1] == r.positions[t].wrapping_add(1);
        for layer in 0..self.layers.min(r.layers) {
            for t in 0..n.saturating_sub(1) {
                if !adjacent(t) {
                    continue;
                }
                let (top, next) = (r.top_k(layer, t), r.top_k(layer, t + 1));
                if let Some(&first) = top.first() {
                    if let Some(c) = self.consec.get_mut(layer * self.experts + first as usize) {
                        c.top1_pairs += 1;
                        c.top1_same += u64::from(next.first() == Some(&first));
                        c.top1_in_next_top2 += u64::from(next.iter().take(2).any(|&e| e == first));
                    }
                }
                for &e in top.iter().take(self.k) {
                    if let Some(c) = self.consec.get_mut(layer * self.experts + e as usize) {
                        c.topk_pairs += 1;
                        c.topk_next_also += u64::from(next.contains(&e));
                    }
                }
            }
        }
    }
}

/// A context sampled in the second pass: token ids before (`None` = a gap), the token, after.
#[derive(Clone)]
struct RawContext {
    sentence: String,
    lang: String,
    before: Vec<Option<u32>>,
    token: u32,
    after: Vec<Option<u32>>,
}

/// The second pass: the first `contexts` occurrences of each expert's top tokens.
struct Sampler {
    experts: usize,
    opts: CardOptions,
    /// `[layer * experts + expert]` → its top token ids, in rank order.
    wanted: Vec<Vec<u32>>,
    /// `[layer * experts + expert]` → per rank, the contexts so far.
    got: Vec<Vec<Vec<RawContext>>>,
    /// Slots still missing contexts (to stop looking early).
    open: usize,
}

impl Sampler {
    fn add(&mut self, r: &SentenceRoutes) {
        let n = r.tokens();
        if r.token_ids.len() != n || r.positions.len() != n || self.open == 0 {
            return;
        }
        let w = self.opts.window as i64;
        for layer in 0..r.layers {
            for t in 0..n {
                for &e in r.top_k(layer, t) {
                    let slot = layer * self.experts + e as usize;
                    let Some(rank) = self.wanted.get(slot).and_then(|v| v.iter().position(|&id| id == r.token_ids[t]))
                    else {
                        continue;
                    };
                    let list = &mut self.got[slot][rank];
                    if list.len() >= self.opts.contexts {
                        continue;
                    }
                    list.push(context_of(r, t, w));
                    if list.len() == self.opts.contexts {
                        self.open = self.open.saturating_sub(1);
                    }
                }
            }
        }
    }
}

/// The ids around counted token `t` within `w` positions, with `None` for positions not counted.
fn context_of(r: &SentenceRoutes, t: usize, w: i64) -> RawContext {
    let pos = r.positions[t] as i64;
    let by_pos: HashMap<i64, u32> = r
        .positions
        .iter()
        .zip(&r.token_ids)
        .filter(|(&p, _)| (p as i64 - pos).abs() <= w)
        .map(|(&p, &id)| (p as i64, id))
        .collect();
    let side = |range: Vec<i64>| -> Vec<Option<u32>> {
        let mut v: Vec<Option<u32>> = Vec::new();
        for p in range {
            if p < 0 {
                continue;
            }
            let x = by_pos.get(&p).copied();
            if x.is_none() && v.last() == Some(&None) {
                continue;
            }
            v.push(x);
        }
        v
    };
    let last = r.positions.iter().copied().max().unwrap_or(0) as i64;
    let before = side((pos - w..pos).collect());
    let after = side((pos + 1..=(pos + w).min(last)).collect());
    RawContext {
        sentence: r.id.clone(),
        lang: r.lang_of(t).to_string(),
        before: trim_gaps(before),
        token: r.token_ids[t],
        after: trim_gaps(after),
    }
}

/// Leading and trailing gaps say nothing: drop them.
fn trim_gaps(mut v: Vec<Option<u32>>) -> Vec<Option<u32>> {
    while v.last() == Some(&None) {
        v.pop();
    }
    let lead = v.iter().take_while(|x| x.is_none()).count();
    v.drain(..lead);
    v
}

/// Token text for ids: labels and decoding with a tokenizer, `#id` without one.
struct Texts<'a> {
    tok: Option<&'a Tokenizer>,
}

impl Texts<'_> {
    fn label(&self, id: u32) -> String {
        match self.tok.and_then(|t| t.labels(&[id]).ok()).and_then(|v| v.into_iter().next()) {
            Some(l) => l,
            None => format!("#{id}"),
        }
    }

    /// The token's label among its neighbours (a character split across tokens shown whole, with
    /// `…` on the missing side, as in the trace tables).
    fn label_in(&self, c: &RawContext) -> String {
        let before: Vec<u32> = c.before.iter().rev().map_while(|x| *x).collect::<Vec<_>>().into_iter().rev().collect();
        let after: Vec<u32> = c.after.iter().map_while(|x| *x).collect();
        let ids: Vec<u32> = before.iter().copied().chain([c.token]).chain(after.iter().copied()).collect();
        match self.tok.and_then(|t| t.labels(&ids).ok()).and_then(|v| v.into_iter().nth(before.len())) {
            Some(l) => l,
            None => self.label(c.token),
        }
    }

    /// A run of ids (gaps as ` … `) as text.
    fn run(&self, ids: &[Option<u32>]) -> String {
        let mut out = String::new();
        let mut chunk: Vec<u32> = Vec::new();
        let flush = |chunk: &mut Vec<u32>, out: &mut String| {
            if chunk.is_empty() {
                return;
            }
            let text = match self.tok.and_then(|t| t.decode(chunk).ok()) {
                Some(s) => s.trim_matches('\u{FFFD}').to_string(),
                None => chunk.iter().map(|id| format!("#{id} ")).collect(),
            };
            out.push_str(&text);
            chunk.clear();
        };
        for x in ids {
            match x {
                Some(id) => chunk.push(*id),
                None => {
                    flush(&mut chunk, &mut out);
                    out.push_str(" … ");
                }
            }
        }
        flush(&mut chunk, &mut out);
        out
    }
}

impl ExpertCards {
    /// The cards of a study in memory (e.g. `lens.scan(…)`'s), with token labels and contexts from
    /// `tokenizer` (`lens.tokenizer()`; without one, token ids).
    pub fn from_study(study: &Study, tokenizer: Option<&Tokenizer>) -> Result<ExpertCards> {
        Self::from_study_with(study, tokenizer, &CardOptions::default())
    }

    /// [`ExpertCards::from_study`] with options.
    pub fn from_study_with(study: &Study, tokenizer: Option<&Tokenizer>, opts: &CardOptions) -> Result<ExpertCards> {
        let c = &study.counts;
        let mut routes = || -> Result<Box<dyn Iterator<Item = Result<std::borrow::Cow<'_, SentenceRoutes>>> + '_>> {
            Ok(Box::new(study.routes.iter().map(|r| Ok(std::borrow::Cow::Borrowed(r)))))
        };
        Self::build(&c.model, (c.layers, c.k, c.experts), &mut routes, tokenizer, opts)
    }

    /// The cards of a saved scan (the `--out` of `moe-lens scan` or `merge`): `routes.bin` is read
    /// one sentence at a time, twice, so memory does not grow with the corpus (only with the
    /// distinct token ids per expert, as for the analyses).
    pub fn from_scan_dir(dir: impl AsRef<Path>, tokenizer: Option<&Tokenizer>) -> Result<ExpertCards> {
        Self::from_scan_dir_with(dir, tokenizer, &CardOptions::default())
    }

    /// [`ExpertCards::from_scan_dir`] with options.
    pub fn from_scan_dir_with(
        dir: impl AsRef<Path>,
        tokenizer: Option<&Tokenizer>,
        opts: &CardOptions,
    ) -> Result<ExpertCards> {
        let dir = dir.as_ref();
        if !dir.join(COUNTS_FILE).is_file() || !dir.join(ROUTES_FILE).is_file() {
            return Err(Error::invalid(
                "scan directory",
                format!(
                    "{} has no {COUNTS_FILE} and {ROUTES_FILE}: give the --out directory of a finished `moe-lens scan` or `moe-lens merge`",
                    dir.display()
                ),
            ));
        }
        let counts = Counts::load_json(dir.join(COUNTS_FILE))?;
        let path = dir.join(ROUTES_FILE);
        let shape = RoutesReader::open(&path)?.shape();
        if shape != (counts.layers, counts.k, counts.experts) {
            return Err(Error::invalid(
                "scan directory",
                format!("{}: routes.bin and counts.json describe different models; scan again", dir.display()),
            ));
        }
        let mut routes = || -> Result<Box<dyn Iterator<Item = Result<std::borrow::Cow<'_, SentenceRoutes>>>>> {
            Ok(Box::new(RoutesReader::open(&path)?.map(|r| r.map(std::borrow::Cow::Owned))))
        };
        Self::build(&counts.model, shape, &mut routes, tokenizer, opts)
    }

    #[allow(clippy::type_complexity)] // one pass factory, over a study or a file
    fn build<'a>(
        model: &str,
        (layers, k, experts): (usize, usize, usize),
        routes: &mut dyn FnMut() -> Result<Box<dyn Iterator<Item = Result<std::borrow::Cow<'a, SentenceRoutes>>> + 'a>>,
        tokenizer: Option<&Tokenizer>,
        opts: &CardOptions,
    ) -> Result<ExpertCards> {
        if experts == 0 || layers == 0 {
            return Err(Error::invalid("scan", "the scan has no layers or experts: scan again".to_string()));
        }
        let mut analyses = RoutingAnalyses::new(model, layers, experts, k);
        let mut sums = PassSums::new(layers, experts, k);
        for r in routes()? {
            let r = r?;
            analyses.add(&r)?;
            sums.add(&r);
        }
        let specs = (0..layers * experts)
            .map(|s| analyses.specialisation(s / experts, s % experts, opts.top_tokens))
            .collect::<Result<Vec<_>>>()?;
        let wanted: Vec<Vec<u32>> = specs.iter().map(|x| x.top.iter().map(|t| t.token_id).collect()).collect();
        let got = wanted.iter().map(|v| vec![Vec::new(); v.len()]).collect();
        let open = if opts.contexts == 0 { 0 } else { wanted.iter().map(Vec::len).sum() };
        let mut sampler = Sampler { experts, opts: *opts, wanted, got, open };
        if sampler.open > 0 {
            for r in routes()? {
                sampler.add(&*r?);
                if sampler.open == 0 {
                    break;
                }
            }
        }
        let texts = Texts { tok: tokenizer };
        // scripts of every token id seen (labelled on its own)
        let mut script_of: HashMap<u32, String> = HashMap::new();
        if let Some(tok) = tokenizer {
            for s in 0..layers * experts {
                for &id in analyses.token_picks_of(s / experts, s % experts).into_iter().flat_map(|m| m.keys()) {
                    script_of.entry(id).or_insert_with(|| {
                        tok.labels_and_scripts(&[id])
                            .ok()
                            .and_then(|v| v.into_iter().next())
                            .map_or_else(|| "Unknown".to_string(), |(_, s)| s.name().to_string())
                    });
                }
            }
        }
        let lang_tokens = sums.lang_tokens.clone();
        let total: u64 = lang_tokens.values().sum();
        let mut cards = Vec::with_capacity(layers * experts);
        for (slot, (spec, raw)) in specs.into_iter().zip(sampler.got).enumerate() {
            let (layer, expert) = (slot / experts, slot % experts);
            let share = |p: u64| if spec.picks == 0 { 0.0 } else { p as f64 / spec.picks as f64 };
            let top_tokens = spec
                .top
                .iter()
                .zip(raw)
                .map(|(t, ctx)| CardToken {
                    token_id: t.token_id,
                    label: texts.label(t.token_id),
                    count: t.count,
                    share_of_expert: t.share_of_expert,
                    share_of_token: t.share_of_token,
                    contexts: ctx
                        .into_iter()
                        .map(|c| TokenContext {
                            token: texts.label_in(&c),
                            before: texts.run(&c.before),
                            after: texts.run(&c.after),
                            sentence: c.sentence,
                            lang: c.lang,
                        })
                        .collect(),
                })
                .collect();
            let langs: Vec<GroupShare> = spec
                .langs
                .iter()
                .map(|(l, p, sh)| GroupShare {
                    name: l.clone(),
                    picks: *p,
                    share: *sh,
                    usage: lang_tokens.get(l).map_or(0.0, |&n| if n == 0 { 0.0 } else { *p as f64 / n as f64 }),
                })
                .collect();
            let usage_sum: f64 = langs.iter().map(|g| g.usage).sum();
            let best = langs.iter().filter(|g| g.picks > 0).max_by(|a, b| {
                a.usage.partial_cmp(&b.usage).unwrap_or(std::cmp::Ordering::Equal).then(b.name.cmp(&a.name))
            });
            let (dominant_lang, dominance) = match best {
                Some(g) if usage_sum > 0.0 => (Some(g.name.clone()), g.usage / usage_sum),
                _ => (None, 0.0),
            };
            let mut by_script: BTreeMap<String, u64> = BTreeMap::new();
            if tokenizer.is_some() {
                for (id, &c) in analyses.token_picks_of(layer, expert).into_iter().flatten() {
                    let s = script_of.get(id).cloned().unwrap_or_else(|| "Unknown".into());
                    *by_script.entry(s).or_insert(0) += c;
                }
            }
            let mut scripts: Vec<GroupShare> = by_script
                .into_iter()
                .map(|(name, picks)| GroupShare { name, picks, share: share(picks), usage: 0.0 })
                .collect();
            scripts.sort_by(|a, b| b.picks.cmp(&a.picks).then(a.name.cmp(&b.name)));
            let domains = spec
                .domains
                .iter()
                .map(|(d, p, sh)| GroupShare { name: d.clone(), picks: *p, share: *sh, usage: 0.0 })
                .collect();
            cards.push(ExpertCard {
                model: model.to_string(),
                layer,
                expert,
                experts,
                k,
                tokens: total,
                picks: spec.picks,
                distinct_tokens: spec.distinct_tokens,
                top_tokens,
                top_tokens_share: spec.top_n_share,
                langs,
                scripts,
                domains,
                dominant_lang,
                dominance,
                partners: analyses.partners(layer, expert, opts.partners)?,
                consecutive: sums.consec[slot],
                effects: Vec::new(),
                sweeps: Vec::new(),
            });
        }
        Ok(ExpertCards {
            model: model.to_string(),
            layers,
            experts,
            k,
            sentences: analyses.sentences(),
            lang_tokens,
            labelled: tokenizer.is_some(),
            cards,
        })
    }

    /// Adds an importance sweep's effects (`moe-lens sweep --out`'s `sweep.json`, or
    /// `lens.sweep(…)`) to the cards of the experts it ablated. A sweep of another shape is refused.
    pub fn with_sweep(mut self, sweep: &Sweep) -> Result<ExpertCards> {
        if let Some(r) = sweep.rows.iter().find(|r| r.layer >= self.layers || r.expert >= self.experts) {
            return Err(Error::invalid(
                "sweep",
                format!(
                    "the sweep ablated layer {} expert {}, the scan has {} layers × {} experts: give a sweep of the scan's model",
                    r.layer, r.expert, self.layers, self.experts
                ),
            ));
        }
        let name = format!("{:?} → {:?}", sweep.text, sweep.continuation);
        for c in &mut self.cards {
            c.sweeps.push(name.clone());
        }
        for (i, r) in sweep.rows.iter().enumerate() {
            if let Some(c) = self.cards.get_mut(r.layer * self.experts + r.expert) {
                c.effects.push(CardEffect {
                    text: sweep.text.clone(),
                    continuation: sweep.continuation.clone(),
                    tokens: r.tokens,
                    delta: r.delta,
                    below_noise: r.below_noise,
                    rank: i + 1,
                    of: sweep.rows.len(),
                });
            }
        }
        Ok(self)
    }

    /// Reads a sweep's JSON (`sweep.json` of `moe-lens sweep --out`) and adds it
    /// ([`ExpertCards::with_sweep`]).
    pub fn with_sweep_file(self, path: impl AsRef<Path>) -> Result<ExpertCards> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let sweep: Sweep = serde_json::from_str(&text).map_err(|e| {
            Error::invalid("sweep", format!("{}: not a sweep.json of `moe-lens sweep --out` ({e})", path.display()))
        })?;
        self.with_sweep(&sweep)
    }

    /// Every card, layer by layer (`cards()[layer * experts + expert]`).
    pub fn cards(&self) -> &[ExpertCard] {
        &self.cards
    }

    /// The card of one expert (a copy, to show in a notebook cell).
    pub fn card(&self, layer: usize, expert: usize) -> Result<ExpertCard> {
        if layer >= self.layers {
            return Err(Error::invalid(
                "layer",
                format!("{layer}: the scan has layers 0 to {}", self.layers.saturating_sub(1)),
            ));
        }
        if expert >= self.experts {
            return Err(Error::invalid(
                "expert",
                format!("{expert}: the scan has experts 0 to {}", self.experts.saturating_sub(1)),
            ));
        }
        Ok(self.cards[layer * self.experts + expert].clone())
    }

    fn langs(&self) -> Vec<String> {
        self.lang_tokens.keys().cloned().collect()
    }
}
