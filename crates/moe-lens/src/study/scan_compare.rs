//! Two scans of the same corpus compared token by token: two models, two precisions (q4k against
//! bf16), or two checkpoints of one model. What `moe-lens compare-scans DIR_A DIR_B` prints.
//!
//! Both `routes.bin` files are read one sentence at a time, side by side (a saved scan keeps its
//! sentences in corpus order), so memory stays flat however large the corpus. Sentences are
//! matched by their corpus position; a matched sentence must have the same counted tokens in both
//! (the same token ids, when both files keep them), else the scans are not of the same corpus and
//! counting options and the comparison is refused. Per layer, over the matched tokens:
//!
//! - `set_agreement`: share of tokens whose top-k sets are equal (order aside);
//! - `mean_overlap`: mean of |A ∩ B| / k, the OLMoE paper's "router saturation" measure between
//!   checkpoints;
//! - `top1_agreement`: share of tokens with the same first-choice expert;
//! - `jsd`: the Jensen–Shannon divergence (base 2, 0–1) between the two scans' top-k count
//!   distributions over the experts (all languages together);
//! - for each language comparison present in both `metrics.json` (e.g. ko vs en), whether the
//!   study's verdict at this layer is the same.

use std::fmt;
use std::fmt::Write as _;
use std::path::Path;

use super::compare::Verdict;
use super::routes::{RoutesReader, SentenceRoutes};
use super::stats::jensen_shannon;
use super::{MetricsFile, METRICS_FILE, ROUTES_FILE};
use crate::error::{Error, Result};

/// One layer of a scan comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAgreement {
    /// Layer index, from 0.
    pub layer: usize,
    /// Share of tokens whose top-k sets agree.
    pub set_agreement: f64,
    /// Mean share of the k experts the two scans share.
    pub mean_overlap: f64,
    /// Share of tokens with the same top-1 expert.
    pub top1_agreement: f64,
    /// Jensen–Shannon divergence (base 2) of the two count distributions.
    pub jsd: f64,
}

/// A language comparison's verdict at one layer in both scans.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictPair {
    /// `a` vs `b`, e.g. `ko vs en`.
    pub comparison: String,
    /// Layer index, from 0.
    pub layer: usize,
    /// The verdict in the first scan (A).
    pub verdict_a: Verdict,
    /// The verdict in the second scan (B).
    pub verdict_b: Verdict,
}

impl VerdictPair {
    /// Whether the verdict differs between the two scans.
    pub fn changed(&self) -> bool {
        self.verdict_a != self.verdict_b
    }
}

/// Two scans compared (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanComparison {
    /// The model of the first scan (A), as its `metrics.json` names it.
    pub model_a: String,
    /// The model of the second scan (B), as its `metrics.json` names it.
    pub model_b: String,
    /// Sentences and counted tokens in both scans.
    pub sentences: u64,
    /// Counted tokens in both scans.
    pub tokens: u64,
    /// Sentences only in one of the two (e.g. a shard against the whole).
    pub only_a: u64,
    /// Sentences only in the second scan (B); `only_a` counts those only in A.
    pub only_b: u64,
    /// Agreement of the two scans' routing, one entry per layer in layer order.
    pub layers: Vec<LayerAgreement>,
    /// Verdicts per language comparison and layer (empty when the scans share no comparison).
    pub verdicts: Vec<VerdictPair>,
}

#[derive(Default, Clone, Copy)]
struct Sums {
    same_set: u64,
    overlap: u64,
    same_top1: u64,
}

/// Compares two finished scan (or merge) directories of the same corpus.
pub fn compare_scan_dirs(dir_a: &Path, dir_b: &Path) -> Result<ScanComparison> {
    let mut ra = RoutesReader::open(&dir_a.join(ROUTES_FILE))?;
    let mut rb = RoutesReader::open(&dir_b.join(ROUTES_FILE))?;
    let (la, ka, ea) = ra.shape();
    if ra.shape() != rb.shape() {
        let (lb, kb, eb) = rb.shape();
        return Err(Error::invalid(
            "compare-scans",
            format!(
                "{} is of {la} layers × {ea} experts, top-{ka}, {} of {lb} × {eb}, top-{kb}: compare scans of models of one shape",
                dir_a.display(),
                dir_b.display()
            ),
        ));
    }
    let (layers, k, experts) = (la, ka, ea);
    let ma = read_metrics(dir_a)?;
    let mb = read_metrics(dir_b)?;
    if ma.settings != mb.settings {
        return Err(Error::invalid(
            "compare-scans",
            format!(
                "the scans were counted with different options ({:?} vs {:?}): compare scans made with the same --by-script and --skip-common",
                ma.settings, mb.settings
            ),
        ));
    }
    let mut sums = vec![Sums::default(); layers];
    let mut count_a = vec![0u64; layers * experts];
    let mut count_b = vec![0u64; layers * experts];
    let (mut sentences, mut tokens, mut only_a, mut only_b) = (0u64, 0u64, 0u64, 0u64);
    let mut next_a = ra.next().transpose()?;
    let mut next_b = rb.next().transpose()?;
    let mut last: Option<(u32, u32)> = None;
    while let (Some(a), Some(b)) = (&next_a, &next_b) {
        if let Some((pa, pb)) = last {
            if a.index < pa || b.index < pb {
                return Err(Error::invalid(
                    "compare-scans",
                    "a routes.bin is not in corpus order (an unfinished scan?): finish the scans first",
                ));
            }
        }
        last = Some((a.index, b.index));
        if a.index < b.index {
            only_a += 1;
            next_a = ra.next().transpose()?;
            continue;
        }
        if b.index < a.index {
            only_b += 1;
            next_b = rb.next().transpose()?;
            continue;
        }
        same_tokens(a, b)?;
        sentences += 1;
        tokens += a.tokens() as u64;
        for (layer, s) in sums.iter_mut().enumerate() {
            for t in 0..a.tokens() {
                let (x, y) = (a.top_k(layer, t), b.top_k(layer, t));
                let shared = x.iter().filter(|e| y.contains(e)).count();
                s.overlap += shared as u64;
                if shared == k {
                    s.same_set += 1;
                }
                if x.first() == y.first() {
                    s.same_top1 += 1;
                }
                for &e in x {
                    count_a[layer * experts + e as usize] += 1;
                }
                for &e in y {
                    count_b[layer * experts + e as usize] += 1;
                }
            }
        }
        next_a = ra.next().transpose()?;
        next_b = rb.next().transpose()?;
    }
    while next_a.is_some() {
        only_a += 1;
        next_a = ra.next().transpose()?;
    }
    while next_b.is_some() {
        only_b += 1;
        next_b = rb.next().transpose()?;
    }
    if tokens == 0 {
        return Err(Error::invalid(
            "compare-scans",
            format!("{} and {} share no scanned sentence: scan the same corpus", dir_a.display(), dir_b.display()),
        ));
    }
    let n = tokens as f64;
    let layers_out = sums
        .iter()
        .enumerate()
        .map(|(layer, s)| LayerAgreement {
            layer,
            set_agreement: s.same_set as f64 / n,
            mean_overlap: s.overlap as f64 / (n * k as f64),
            top1_agreement: s.same_top1 as f64 / n,
            jsd: jensen_shannon(
                &count_a[layer * experts..(layer + 1) * experts],
                &count_b[layer * experts..(layer + 1) * experts],
            )
            .unwrap_or(0.0),
        })
        .collect();
    let mut verdicts = Vec::new();
    for ca in &ma.metrics.comparisons {
        if let Some(cb) = mb.metrics.comparisons.iter().find(|c| c.a == ca.a && c.b == ca.b) {
            for (x, y) in ca.layers.iter().zip(&cb.layers) {
                verdicts.push(VerdictPair {
                    comparison: format!("{} vs {}", ca.a, ca.b),
                    layer: x.layer,
                    verdict_a: x.verdict,
                    verdict_b: y.verdict,
                });
            }
        }
    }
    Ok(ScanComparison {
        model_a: ma.model,
        model_b: mb.model,
        sentences,
        tokens,
        only_a,
        only_b,
        layers: layers_out,
        verdicts,
    })
}

struct Metrics {
    model: String,
    settings: super::Settings,
    metrics: super::Metrics,
}

fn read_metrics(dir: &Path) -> Result<Metrics> {
    let p = dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        Error::invalid(
            "compare-scans",
            format!("{}: {e}; give the --out directories of two finished `moe-lens scan` runs", p.display()),
        )
    })?;
    let mf: MetricsFile = serde_json::from_str(&text)
        .map_err(|e| Error::invalid("metrics.json", format!("{}: {e}; scan again", p.display())))?;
    Ok(Metrics { model: mf.metrics.model.clone(), settings: mf.settings, metrics: mf.metrics })
}

fn same_tokens(a: &SentenceRoutes, b: &SentenceRoutes) -> Result<()> {
    let ids_differ = !a.token_ids.is_empty() && !b.token_ids.is_empty() && a.token_ids != b.token_ids;
    if a.id != b.id || a.tokens() != b.tokens() || ids_differ || a.token_lang.len() != b.token_lang.len() {
        return Err(Error::invalid(
            "compare-scans",
            format!(
                "sentence #{} is {:?} with {} counted tokens in one scan and {:?} with {} in the other: the scans are not \
                 of the same corpus, tokenizer and counting options",
                a.index,
                a.id,
                a.tokens(),
                b.id,
                b.tokens()
            ),
        ));
    }
    Ok(())
}

impl ScanComparison {
    /// Layers where some language comparison's verdict differs between the scans.
    pub fn changed_layers(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.verdicts.iter().filter(|p| p.changed()).map(|p| p.layer).collect();
        v.dedup();
        v
    }

    /// `compare_scans.csv`: `layer,tokens,set_agreement,mean_overlap,top1_agreement,jsd` and, per
    /// language comparison, its verdict in A and in B.
    pub fn to_csv(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        for p in &self.verdicts {
            if !names.contains(&p.comparison) {
                names.push(p.comparison.clone());
            }
        }
        let mut s = String::from("layer,tokens,set_agreement,mean_overlap,top1_agreement,jsd");
        for n in &names {
            let c = n.replace(' ', "_");
            let _ = write!(s, ",{c}_verdict_a,{c}_verdict_b");
        }
        s.push('\n');
        for l in &self.layers {
            let _ = write!(
                s,
                "{},{},{},{},{},{}",
                l.layer, self.tokens, l.set_agreement, l.mean_overlap, l.top1_agreement, l.jsd
            );
            for n in &names {
                match self.verdicts.iter().find(|p| &p.comparison == n && p.layer == l.layer) {
                    Some(p) => {
                        let _ = write!(s, ",{},{}", p.verdict_a.as_str(), p.verdict_b.as_str());
                    }
                    None => s.push_str(",,"),
                }
            }
            s.push('\n');
        }
        s
    }
}

impl fmt::Display for ScanComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "A = {}, B = {}: {} sentences, {} tokens in both{}",
            self.model_a,
            self.model_b,
            self.sentences,
            self.tokens,
            if self.only_a + self.only_b > 0 {
                format!(" ({} only in A, {} only in B, left out)", self.only_a, self.only_b)
            } else {
                String::new()
            }
        )?;
        writeln!(f, "layer  top-k sets agree  mean overlap  top-1 agrees  JSD (base 2)  study verdict")?;
        for l in &self.layers {
            let mine: Vec<&VerdictPair> = self.verdicts.iter().filter(|p| p.layer == l.layer).collect();
            let verdict = if mine.is_empty() {
                "-".to_string()
            } else if mine.iter().any(|p| p.changed()) {
                let v: Vec<String> = mine
                    .iter()
                    .filter(|p| p.changed())
                    .map(|p| format!("{}: {} → {}", p.comparison, p.verdict_a.as_str(), p.verdict_b.as_str()))
                    .collect();
                format!("changes ({})", v.join("; "))
            } else {
                "same".to_string()
            };
            writeln!(
                f,
                "{:>5}  {:>16.1}%  {:>11.1}%  {:>11.1}%  {:>12.4}  {verdict}",
                l.layer,
                100.0 * l.set_agreement,
                100.0 * l.mean_overlap,
                100.0 * l.top1_agreement,
                l.jsd
            )?;
        }
        let changed = self.changed_layers();
        if !self.verdicts.is_empty() {
            write!(
                f,
                "The language study's verdict changes in {} of {} layers{}",
                changed.len(),
                self.layers.len(),
                if changed.is_empty() {
                    String::from(".")
                } else {
                    format!(": {}.", changed.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
                }
            )?;
        }
        Ok(())
    }
}
