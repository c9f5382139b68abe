//! The routing analyses of the OLMoE paper (arXiv 2409.02060, section 5) and the Mixtral paper, on
//! any scanned corpus: co-activation, token (vocabulary) specialisation, consecutive tokens and
//! per-language expert profiles.
//!
//! [`RoutingAnalyses`] is an accumulator: [`RoutingAnalyses::add`] takes one sentence's routes at a
//! time (so it can be fed while streaming `routes.bin`), and the getters turn the sums into the
//! tables. What each one counts:
//!
//! - **co-activation** ([`RoutingAnalyses::coactivation`]): per layer an E × E matrix whose entry
//!   `[i][j]` counts the counted tokens whose top-k holds both `i` and `j`; `[i][i]` is expert `i`'s
//!   own count. The paper's normalised form is `[i][j] / [i][i]`: the share of expert `i`'s tokens
//!   that also chose `j` ([`RoutingAnalyses::partners`] ranks them).
//! - **token specialisation** ([`RoutingAnalyses::specialisation`]): per layer and expert, the share
//!   of its picks (top-k selections) that come from its most frequent token ids, and from each
//!   language (the tag a token is counted under: the sentence's language, or its script's with
//!   `by_script`) and each domain (an optional per-sentence tag).
//! - **consecutive tokens** ([`RoutingAnalyses::consecutive`]): over every pair of neighbouring
//!   tokens of one sentence (both counted; counted under the first token's language), the share
//!   whose first token's top-1 expert is also the second's top-1 (`top1_same`), is among the
//!   second's top-2 (`top1_in_next_top2`), and the mean number of experts the two top-k sets share
//!   (`mean_shared`). A router that picks k distinct experts uniformly at random, independently for
//!   each token, gives exactly 1/E, 2/E and k²/E ([`random_router`]).
//! - **expert profiles** ([`RoutingAnalyses::profiles`]): for each language and layer, the experts
//!   ranked by their share of the language's picks, with the cumulative share.
//!
//! Ties are broken by the smaller id everywhere (experts, token ids), so every ranking is
//! deterministic; `tests/routing_analyses_ref.py` computes all of it independently with NumPy.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::routes::SentenceRoutes;
use super::write_atomic;
use crate::error::{Error, Result};

/// `coactivation.json`.
pub const COACTIVATION_FILE: &str = "coactivation.json";
/// `coactivation.csv`: layer, expert, partner, count, share.
pub const COACTIVATION_CSV: &str = "coactivation.csv";
/// `coactivation_partners.csv`: each expert's top partners.
pub const PARTNERS_CSV: &str = "coactivation_partners.csv";
/// `consecutive.json`.
pub const CONSECUTIVE_FILE: &str = "consecutive.json";
/// `consecutive.csv`: the same with the random router's values.
pub const CONSECUTIVE_CSV: &str = "consecutive.csv";
/// `specialisation.csv`: per layer and expert, the share of its top token ids.
pub const SPECIALISATION_CSV: &str = "specialisation.csv";
/// `specialisation_tokens.csv`: each expert's top token ids.
pub const SPECIALISATION_TOKENS_CSV: &str = "specialisation_tokens.csv";
/// `specialisation_langs.csv`: each expert's picks by language.
pub const SPECIALISATION_LANGS_CSV: &str = "specialisation_langs.csv";
/// `specialisation_domains.csv`: each expert's picks by domain (only when sentences have one).
pub const SPECIALISATION_DOMAINS_CSV: &str = "specialisation_domains.csv";
/// `expert_profiles.csv`: per language and layer, the experts by share of the language's picks.
pub const PROFILES_CSV: &str = "expert_profiles.csv";

/// Turns token ids into readable labels (e.g. `|ids| tokenizer.labels(ids).unwrap_or_default()`).
pub type TokenLabels<'a> = dyn Fn(&[u32]) -> Vec<String> + 'a;

/// How many top token ids and partners the tables list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisOptions {
    /// Top token ids listed per expert (and the `topN_share` of `specialisation.csv`). Default 10.
    pub top_tokens: usize,
    /// Co-activation partners listed per expert. Default 5.
    pub top_partners: usize,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions { top_tokens: 10, top_partners: 5 }
    }
}

/// Sums of one language × layer over neighbouring token pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PairSums {
    pairs: u64,
    top1_same: u64,
    top1_in_next_top2: u64,
    shared: u64,
}

/// The consecutive-token rates of one language at one layer (one entry of `consecutive.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Consecutive {
    /// Neighbouring token pairs (both tokens counted, one sentence).
    pub pairs: u64,
    /// Share of pairs whose first token's top-1 expert is the second's top-1.
    pub top1_same: f64,
    /// Share of pairs whose first token's top-1 expert is among the second's top-2.
    pub top1_in_next_top2: f64,
    /// Mean number of experts the two tokens' top-k sets share.
    pub mean_shared: f64,
}

/// What a router choosing k of E experts uniformly at random, independently per token, gives:
/// `top1_same` = 1/E, `top1_in_next_top2` = 2/E (the next token's top-2 is a uniform pair),
/// `mean_shared` = k·k/E (each of the k experts is in the other set with probability k/E).
pub fn random_router(experts: usize, k: usize) -> Consecutive {
    let e = experts.max(1) as f64;
    Consecutive {
        pairs: 0,
        top1_same: 1.0 / e,
        top1_in_next_top2: 2.0_f64.min(k as f64) / e,
        mean_shared: (k * k) as f64 / e,
    }
}

/// `coactivation.json`: `{"model", "k", "experts", "layers": [[[int]]]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoactivationJson {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Experts per layer (each matrix is `experts` × `experts`).
    pub experts: usize,
    /// Per layer, the E × E matrix (see the module docs).
    pub layers: Vec<Vec<Vec<u64>>>,
}

/// `consecutive.json`: `{"model", "langs": {LANG: [Consecutive, … one per layer]}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsecutiveJson {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Per language code, one [`Consecutive`] per layer, in layer order.
    pub langs: BTreeMap<String, Vec<Consecutive>>,
}

/// One co-activation partner of an expert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partner {
    /// The partner expert, in 0..experts.
    pub expert: usize,
    /// Tokens that chose both.
    pub count: u64,
    /// `count` / the expert's own count: the share of its tokens that also chose this partner.
    pub share: f64,
}

/// One of an expert's most frequent token ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopToken {
    /// The token's id in the vocabulary.
    pub token_id: u32,
    /// Times the expert picked this token id (in its top-k).
    pub count: u64,
    /// `count` / the expert's picks.
    pub share_of_expert: f64,
    /// `count` / the token id's occurrences: how much of this token the expert serves (the paper's
    /// vocabulary specialisation of the expert to the token).
    pub share_of_token: f64,
}

/// Token specialisation of one expert at one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertSpecialisation {
    /// Layer index, from 0.
    pub layer: usize,
    /// Expert index, in 0..experts.
    pub expert: usize,
    /// Top-k selections of this expert.
    pub picks: u64,
    /// Distinct token ids among them.
    pub distinct_tokens: usize,
    /// Its most frequent token ids (at most `top_tokens`), most frequent first.
    pub top: Vec<TopToken>,
    /// Share of its picks from its single most frequent token id.
    pub top1_share: f64,
    /// Share of its picks from its `top_tokens` most frequent token ids.
    pub top_n_share: f64,
    /// Its picks per language (sorted by language), with their share of the picks.
    pub langs: Vec<(String, u64, f64)>,
    /// Its picks per domain (sorted; empty when no sentence has a domain).
    pub domains: Vec<(String, u64, f64)>,
}

/// One row of an expert profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileEntry {
    /// Expert index, in 0..experts.
    pub expert: usize,
    /// Tokens of the language at this layer that chose this expert (in their top-k).
    pub picks: u64,
    /// Share of the language's picks at this layer.
    pub share: f64,
    /// Sum of the shares of this expert and those ranked before it.
    pub cumulative: f64,
}

/// The experts carrying one language's picks at one layer, most first.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The language code.
    pub lang: String,
    /// Layer index, from 0.
    pub layer: usize,
    /// Every expert, by share (ties: smaller id first).
    pub experts: Vec<ProfileEntry>,
}

impl Profile {
    /// How many of the top experts carry at least `share` (0–1) of the language's picks.
    pub fn experts_for(&self, share: f64) -> usize {
        self.experts.iter().position(|e| e.cumulative >= share - 1e-12).map_or(self.experts.len(), |i| i + 1)
    }
}

/// The accumulated analyses of a scan (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingAnalyses {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Router layers of the model.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// `[layer][i][j]`, flattened.
    coact: Vec<u64>,
    consec: BTreeMap<String, Vec<PairSums>>,
    /// `[layer * experts + expert]` → token id → picks.
    token_picks: Vec<HashMap<u32, u64>>,
    /// token id → counted occurrences.
    token_occurrences: HashMap<u32, u64>,
    /// language → `[layer * experts + expert]` picks.
    lang_picks: BTreeMap<String, Vec<u64>>,
    /// domain → `[layer * experts + expert]` picks.
    domain_picks: BTreeMap<String, Vec<u64>>,
    sentences: u64,
    tokens: u64,
    /// Sentences read without token ids (files of the first routes layout).
    sentences_without_ids: u64,
}

impl RoutingAnalyses {
    /// Empty sums for a model.
    pub fn new(model: &str, layers: usize, experts: usize, k: usize) -> RoutingAnalyses {
        RoutingAnalyses {
            model: model.to_string(),
            layers,
            experts,
            k,
            coact: vec![0; layers * experts * experts],
            consec: BTreeMap::new(),
            token_picks: vec![HashMap::new(); layers * experts],
            token_occurrences: HashMap::new(),
            lang_picks: BTreeMap::new(),
            domain_picks: BTreeMap::new(),
            sentences: 0,
            tokens: 0,
            sentences_without_ids: 0,
        }
    }

    /// The analyses of routes (in any order).
    pub fn from_routes<'a>(
        model: &str,
        layers: usize,
        experts: usize,
        k: usize,
        routes: impl IntoIterator<Item = &'a SentenceRoutes>,
    ) -> Result<RoutingAnalyses> {
        let mut a = RoutingAnalyses::new(model, layers, experts, k);
        for r in routes {
            a.add(r)?;
        }
        Ok(a)
    }

    /// The analyses of a saved scan's `routes.bin`, read one sentence at a time (memory does not
    /// grow with the number of sentences; only with the distinct token ids per expert).
    pub fn from_routes_file(model: &str, path: &Path) -> Result<RoutingAnalyses> {
        let reader = super::routes::RoutesReader::open(path)?;
        let (layers, k, experts) = reader.shape();
        let mut a = RoutingAnalyses::new(model, layers, experts, k);
        for r in reader {
            a.add(&r?)?;
        }
        Ok(a)
    }

    /// Adds one sentence's routes.
    pub fn add(&mut self, r: &SentenceRoutes) -> Result<()> {
        let (layers, experts, k) = (self.layers, self.experts, self.k);
        if r.layers != layers || r.k != k || r.experts.len() != layers * r.tokens() * k {
            return Err(Error::invalid(
                "routing analyses",
                format!(
                    "sentence {} has {} layers × top-{} routes, the analyses are of {layers} × top-{k}",
                    r.id, r.layers, r.k
                ),
            ));
        }
        if r.experts.iter().any(|&e| e as usize >= experts) {
            return Err(Error::invalid("routing analyses", format!("sentence {} names an expert ≥ {experts}", r.id)));
        }
        let n = r.tokens();
        let has_ids = r.token_ids.len() == n;
        if !has_ids {
            self.sentences_without_ids += 1;
        }
        self.sentences += 1;
        self.tokens += n as u64;
        if has_ids {
            for &id in &r.token_ids {
                *self.token_occurrences.entry(id).or_insert(0) += 1;
            }
        }
        let mut lang_slots = Vec::with_capacity(r.langs.len());
        for l in &r.langs {
            if !self.lang_picks.contains_key(l) {
                self.lang_picks.insert(l.clone(), vec![0; layers * experts]);
                self.consec.insert(l.clone(), vec![PairSums::default(); layers]);
            }
            lang_slots.push(l.clone());
        }
        if let Some(d) = &r.domain {
            self.domain_picks.entry(d.clone()).or_insert_with(|| vec![0; layers * experts]);
        }
        // neighbours: positions one apart (files without positions: counted tokens in order)
        let adjacent = |t: usize| -> bool {
            if r.positions.len() == n {
                r.positions[t + 1] == r.positions[t].wrapping_add(1)
            } else {
                true
            }
        };
        for layer in 0..layers {
            let base = layer * experts * experts;
            for t in 0..n {
                let top = r.top_k(layer, t);
                for &i in top {
                    let i = i as usize;
                    for &j in top {
                        self.coact[base + i * experts + j as usize] += 1;
                    }
                    let lang = &lang_slots[r.token_lang[t] as usize];
                    if let Some(v) = self.lang_picks.get_mut(lang) {
                        v[layer * experts + i] += 1;
                    }
                    if let Some(d) = &r.domain {
                        if let Some(v) = self.domain_picks.get_mut(d) {
                            v[layer * experts + i] += 1;
                        }
                    }
                    if has_ids {
                        *self.token_picks[layer * experts + i].entry(r.token_ids[t]).or_insert(0) += 1;
                    }
                }
                if t + 1 < n && adjacent(t) {
                    let next = r.top_k(layer, t + 1);
                    let lang = &lang_slots[r.token_lang[t] as usize];
                    if let (Some(sums), Some(&first)) = (self.consec.get_mut(lang), top.first()) {
                        let s = &mut sums[layer];
                        s.pairs += 1;
                        if next.first() == Some(&first) {
                            s.top1_same += 1;
                        }
                        if next.iter().take(2).any(|&e| e == first) {
                            s.top1_in_next_top2 += 1;
                        }
                        s.shared += top.iter().filter(|e| next.contains(e)).count() as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sentences added.
    pub fn sentences(&self) -> u64 {
        self.sentences
    }

    /// Counted tokens added.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Whether every sentence came with token ids (routes files of the first layout have none, so
    /// their token specialisation is empty).
    pub fn has_token_ids(&self) -> bool {
        self.sentences_without_ids == 0
    }

    /// Languages seen, sorted.
    pub fn languages(&self) -> Vec<String> {
        self.lang_picks.keys().cloned().collect()
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.layers {
            return Err(Error::invalid(
                "layer",
                format!("{layer}: the model has layers 0 to {}", self.layers.saturating_sub(1)),
            ));
        }
        Ok(())
    }

    /// The co-activation count of experts `i` and `j` at `layer` (`i == j`: expert `i`'s count).
    pub fn coactivation_count(&self, layer: usize, i: usize, j: usize) -> Result<u64> {
        self.check_layer(layer)?;
        if i >= self.experts || j >= self.experts {
            return Err(Error::invalid("expert", format!("the model has experts 0 to {}", self.experts - 1)));
        }
        Ok(self.coact[(layer * self.experts + i) * self.experts + j])
    }

    /// The E × E co-activation matrix of one layer.
    pub fn coactivation(&self, layer: usize) -> Result<Vec<Vec<u64>>> {
        self.check_layer(layer)?;
        let e = self.experts;
        Ok((0..e).map(|i| self.coact[(layer * e + i) * e..(layer * e + i + 1) * e].to_vec()).collect())
    }

    /// The normalised co-activation of one layer: `[i][j]` = share of expert `i`'s tokens that also
    /// chose `j` (0 for an expert never chosen; the diagonal is 1 for the others).
    pub fn coactivation_shares(&self, layer: usize) -> Result<Vec<Vec<f64>>> {
        let m = self.coactivation(layer)?;
        Ok(m.iter()
            .enumerate()
            .map(|(i, row)| row.iter().map(|&c| if row[i] == 0 { 0.0 } else { c as f64 / row[i] as f64 }).collect())
            .collect())
    }

    /// Expert `expert`'s top `n` partners at `layer` (most shared first; partners never chosen
    /// together are left out).
    pub fn partners(&self, layer: usize, expert: usize, n: usize) -> Result<Vec<Partner>> {
        let own = self.coactivation_count(layer, expert, expert)?;
        let e = self.experts;
        let row = &self.coact[(layer * e + expert) * e..(layer * e + expert + 1) * e];
        let mut v: Vec<Partner> = row
            .iter()
            .enumerate()
            .filter(|&(j, &c)| j != expert && c > 0)
            .map(|(j, &c)| Partner { expert: j, count: c, share: c as f64 / own as f64 })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.expert.cmp(&b.expert)));
        v.truncate(n);
        Ok(v)
    }

    /// The consecutive-token rates of `lang`, one per layer.
    pub fn consecutive(&self, lang: &str) -> Result<Vec<Consecutive>> {
        let sums = self.consec.get(lang).ok_or_else(|| {
            Error::invalid(
                "language",
                format!("{lang:?} has no counted tokens; counted: {}", self.languages().join(", ")),
            )
        })?;
        Ok(sums
            .iter()
            .map(|s| {
                let rate = |x: u64| if s.pairs == 0 { 0.0 } else { x as f64 / s.pairs as f64 };
                Consecutive {
                    pairs: s.pairs,
                    top1_same: rate(s.top1_same),
                    top1_in_next_top2: rate(s.top1_in_next_top2),
                    mean_shared: rate(s.shared),
                }
            })
            .collect())
    }

    /// What a uniform random top-k router gives (see [`random_router`]).
    pub fn random_router(&self) -> Consecutive {
        random_router(self.experts, self.k)
    }

    /// Token specialisation of one expert, listing `top_tokens` token ids.
    pub fn specialisation(&self, layer: usize, expert: usize, top_tokens: usize) -> Result<ExpertSpecialisation> {
        let picks = self.coactivation_count(layer, expert, expert)?;
        let slot = layer * self.experts + expert;
        let map = &self.token_picks[slot];
        let mut v: Vec<(u32, u64)> = map.iter().map(|(&t, &c)| (t, c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let share = |c: u64| if picks == 0 { 0.0 } else { c as f64 / picks as f64 };
        let top: Vec<TopToken> = v
            .iter()
            .take(top_tokens)
            .map(|&(t, c)| TopToken {
                token_id: t,
                count: c,
                share_of_expert: share(c),
                share_of_token: c as f64 / self.token_occurrences.get(&t).copied().unwrap_or(c).max(1) as f64,
            })
            .collect();
        let top1_share = share(v.first().map_or(0, |x| x.1));
        let top_n_share = share(v.iter().take(top_tokens).map(|x| x.1).sum());
        let by = |m: &BTreeMap<String, Vec<u64>>| -> Vec<(String, u64, f64)> {
            m.iter().map(|(l, p)| (l.clone(), p[slot], share(p[slot]))).collect()
        };
        Ok(ExpertSpecialisation {
            layer,
            expert,
            picks,
            distinct_tokens: v.len(),
            top,
            top1_share,
            top_n_share,
            langs: by(&self.lang_picks),
            domains: by(&self.domain_picks),
        })
    }

    /// Every token id that picked expert `expert` at `layer`, with its picks (empty for ids out of
    /// range): what the expert cards sum scripts over.
    pub(crate) fn token_picks_of(&self, layer: usize, expert: usize) -> Option<&HashMap<u32, u64>> {
        if layer >= self.layers || expert >= self.experts {
            return None;
        }
        self.token_picks.get(layer * self.experts + expert)
    }

    /// The expert profile of `lang` at `layer`.
    pub fn profile(&self, lang: &str, layer: usize) -> Result<Profile> {
        self.check_layer(layer)?;
        let p = self.lang_picks.get(lang).ok_or_else(|| {
            Error::invalid(
                "language",
                format!("{lang:?} has no counted tokens; counted: {}", self.languages().join(", ")),
            )
        })?;
        let row = &p[layer * self.experts..(layer + 1) * self.experts];
        let total: u64 = row.iter().sum();
        let mut order: Vec<usize> = (0..self.experts).collect();
        order.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        let mut cum = 0u64;
        let experts = order
            .into_iter()
            .map(|e| {
                cum += row[e];
                let f = |x: u64| if total == 0 { 0.0 } else { x as f64 / total as f64 };
                ProfileEntry { expert: e, picks: row[e], share: f(row[e]), cumulative: f(cum) }
            })
            .collect();
        Ok(Profile { lang: lang.to_string(), layer, experts })
    }

    /// `coactivation.json`'s document.
    pub fn coactivation_json(&self) -> CoactivationJson {
        let layers = (0..self.layers).map(|l| self.coactivation(l).unwrap_or_default()).collect();
        CoactivationJson { model: self.model.clone(), k: self.k, experts: self.experts, layers }
    }

    /// `consecutive.json`'s document.
    pub fn consecutive_json(&self) -> ConsecutiveJson {
        let langs =
            self.languages().into_iter().filter_map(|l| Some((l.clone(), self.consecutive(&l).ok()?))).collect();
        ConsecutiveJson { model: self.model.clone(), langs }
    }

    /// Writes every analysis file into `dir` (see SCAN.md), each atomically. `labels` turns token
    /// ids into readable labels for `specialisation_tokens.csv` (its `token` column is empty
    /// without it).
    pub fn save(&self, dir: &Path, opts: &AnalysisOptions, labels: Option<&TokenLabels<'_>>) -> Result<()> {
        write_atomic(&dir.join(COACTIVATION_FILE), to_json(&self.coactivation_json())?.as_bytes())?;
        write_atomic(&dir.join(CONSECUTIVE_FILE), to_json(&self.consecutive_json())?.as_bytes())?;
        write_atomic(&dir.join(COACTIVATION_CSV), self.coactivation_csv().as_bytes())?;
        write_atomic(&dir.join(PARTNERS_CSV), self.partners_csv(opts.top_partners).as_bytes())?;
        write_atomic(&dir.join(CONSECUTIVE_CSV), self.consecutive_csv().as_bytes())?;
        let (spec, toks, langs, domains) = self.specialisation_csvs(opts.top_tokens, labels)?;
        write_atomic(&dir.join(SPECIALISATION_CSV), spec.as_bytes())?;
        write_atomic(&dir.join(SPECIALISATION_TOKENS_CSV), toks.as_bytes())?;
        write_atomic(&dir.join(SPECIALISATION_LANGS_CSV), langs.as_bytes())?;
        if !self.domain_picks.is_empty() {
            write_atomic(&dir.join(SPECIALISATION_DOMAINS_CSV), domains.as_bytes())?;
        }
        write_atomic(&dir.join(PROFILES_CSV), self.profiles_csv().as_bytes())
    }

    /// `coactivation.csv`: `layer,expert,partner,count,share` for every pair (share = count / the
    /// expert's own count).
    pub fn coactivation_csv(&self) -> String {
        let mut s = String::from("layer,expert,partner,count,share\n");
        for layer in 0..self.layers {
            let shares = self.coactivation_shares(layer).unwrap_or_default();
            let m = self.coactivation(layer).unwrap_or_default();
            for (i, row) in m.iter().enumerate() {
                for (j, c) in row.iter().enumerate() {
                    let _ = writeln!(s, "{layer},{i},{j},{c},{}", shares[i][j]);
                }
            }
        }
        s
    }

    /// `coactivation_partners.csv`: `layer,expert,rank,partner,count,share`.
    pub fn partners_csv(&self, n: usize) -> String {
        let mut s = String::from("layer,expert,rank,partner,count,share\n");
        for layer in 0..self.layers {
            for e in 0..self.experts {
                for (r, p) in self.partners(layer, e, n).unwrap_or_default().iter().enumerate() {
                    let _ = writeln!(s, "{layer},{e},{},{},{},{}", r + 1, p.expert, p.count, p.share);
                }
            }
        }
        s
    }

    /// `consecutive.csv`: `lang,layer,pairs,top1_same,top1_in_next_top2,mean_shared` and the random
    /// router's three values.
    pub fn consecutive_csv(&self) -> String {
        let mut s = String::from(
            "lang,layer,pairs,top1_same,top1_in_next_top2,mean_shared,random_top1_same,random_top1_in_next_top2,random_mean_shared\n",
        );
        let r = self.random_router();
        for lang in self.languages() {
            for (layer, c) in self.consecutive(&lang).unwrap_or_default().iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{layer},{},{},{},{},{},{},{}",
                    csv_field(&lang),
                    c.pairs,
                    c.top1_same,
                    c.top1_in_next_top2,
                    c.mean_shared,
                    r.top1_same,
                    r.top1_in_next_top2,
                    r.mean_shared
                );
            }
        }
        s
    }

    #[allow(clippy::type_complexity)] // four CSV texts
    fn specialisation_csvs(
        &self,
        n: usize,
        labels: Option<&TokenLabels<'_>>,
    ) -> Result<(String, String, String, String)> {
        let mut spec = format!("layer,expert,picks,distinct_tokens,top1_share,top{n}_share\n");
        let mut toks = String::from("layer,expert,rank,token_id,token,count,share_of_expert,share_of_token\n");
        let mut langs = String::from("layer,expert,lang,picks,share\n");
        let mut domains = String::from("layer,expert,domain,picks,share\n");
        for layer in 0..self.layers {
            for e in 0..self.experts {
                let x = self.specialisation(layer, e, n)?;
                let _ =
                    writeln!(spec, "{layer},{e},{},{},{},{}", x.picks, x.distinct_tokens, x.top1_share, x.top_n_share);
                // each id labelled on its own: the top ids are not a text, and labelling them as one
                // sequence joined byte tokens of different characters into characters no token is
                let names: Vec<String> = match labels {
                    Some(f) => x.top.iter().map(|t| f(&[t.token_id]).into_iter().next().unwrap_or_default()).collect(),
                    None => Vec::new(),
                };
                for (r, t) in x.top.iter().enumerate() {
                    let name = names.get(r).map(String::as_str).unwrap_or("");
                    let _ = writeln!(
                        toks,
                        "{layer},{e},{},{},{},{},{},{}",
                        r + 1,
                        t.token_id,
                        csv_field(name),
                        t.count,
                        t.share_of_expert,
                        t.share_of_token
                    );
                }
                for (l, p, sh) in &x.langs {
                    let _ = writeln!(langs, "{layer},{e},{},{p},{sh}", csv_field(l));
                }
                for (d, p, sh) in &x.domains {
                    let _ = writeln!(domains, "{layer},{e},{},{p},{sh}", csv_field(d));
                }
            }
        }
        Ok((spec, toks, langs, domains))
    }

    /// `expert_profiles.csv`: `lang,layer,rank,expert,picks,share,cumulative_share`.
    pub fn profiles_csv(&self) -> String {
        let mut s = String::from("lang,layer,rank,expert,picks,share,cumulative_share\n");
        for lang in self.languages() {
            for layer in 0..self.layers {
                if let Ok(p) = self.profile(&lang, layer) {
                    for (r, e) in p.experts.iter().enumerate() {
                        let _ = writeln!(
                            s,
                            "{},{layer},{},{},{},{},{}",
                            csv_field(&lang),
                            r + 1,
                            e.expert,
                            e.picks,
                            e.share,
                            e.cumulative
                        );
                    }
                }
            }
        }
        s
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::invalid("analyses", format!("cannot serialise: {e}")))
}
