//! How often each expert is chosen, per language and layer: the tables every metric starts from,
//! and their JSON file (`counts.json`).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{s, Array2, Array3, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::routes::SentenceRoutes;
use crate::error::{Error, Result};

/// Expert selection counts of a scan.
///
/// `topk[[lang, layer, expert]]` counts the tokens of `lang` for which `expert` was one of the
/// top-k at `layer`; `top1` counts those for which it was the first choice. Every layer of a
/// language sums to `tokens × k` (top-k) and `tokens` (top-1). Languages are sorted by tag and index
/// the first axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// The model as the scan named it.
    pub model: String,
    /// Experts chosen per token.
    pub k: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Router layers.
    pub layers: usize,
    /// Language tags, sorted; index of the first axis of `topk` and `top1`.
    pub languages: Vec<String>,
    /// Counted tokens per language.
    pub tokens: Vec<u64>,
    /// `[language, layer, expert]` top-k selections.
    pub topk: Array3<u64>,
    /// `[language, layer, expert]` top-1 selections.
    pub top1: Array3<u64>,
}

/// `counts.json`, exactly: `{"model", "k", "experts", "layers", "tokens": {lang: n},
/// "topk_counts": {lang: [[n; experts]; layers]}, "top1_counts": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountsJson {
    /// The model's name, as the scan recorded it.
    pub model: String,
    /// Experts chosen per token, the top-k.
    pub k: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Router layers of the model.
    pub layers: usize,
    /// Tokens counted per language code.
    pub tokens: BTreeMap<String, u64>,
    /// Per language, per layer, per expert: tokens that had the expert among their top-k.
    pub topk_counts: BTreeMap<String, Vec<Vec<u64>>>,
    /// Per language, per layer, per expert: tokens whose first choice was the expert.
    pub top1_counts: BTreeMap<String, Vec<Vec<u64>>>,
}

impl Counts {
    /// Empty tables for a model.
    pub fn new(model: impl Into<String>, layers: usize, experts: usize, k: usize) -> Self {
        Counts {
            model: model.into(),
            k,
            experts,
            layers,
            languages: Vec::new(),
            tokens: Vec::new(),
            topk: Array3::zeros((0, layers, experts)),
            top1: Array3::zeros((0, layers, experts)),
        }
    }

    /// Index of a language, if it has been counted.
    pub fn lang_index(&self, lang: &str) -> Option<usize> {
        self.languages.binary_search_by(|l| l.as_str().cmp(lang)).ok()
    }

    /// Index of a language, adding an empty one (keeping the order sorted) when new.
    pub fn ensure_lang(&mut self, lang: &str) -> usize {
        match self.languages.binary_search_by(|l| l.as_str().cmp(lang)) {
            Ok(i) => i,
            Err(i) => {
                self.languages.insert(i, lang.to_string());
                self.tokens.insert(i, 0);
                let insert = |a: &Array3<u64>| -> Array3<u64> {
                    let (n, l, e) = a.dim();
                    let mut b = Array3::zeros((n + 1, l, e));
                    b.slice_mut(s![..i, .., ..]).assign(&a.slice(s![..i, .., ..]));
                    b.slice_mut(s![i + 1.., .., ..]).assign(&a.slice(s![i.., .., ..]));
                    b
                };
                self.topk = insert(&self.topk);
                self.top1 = insert(&self.top1);
                i
            }
        }
    }

    fn unknown_lang(&self, lang: &str) -> Error {
        Error::invalid(
            "language",
            format!("{lang:?} has no counted tokens; counted languages: {}", self.languages.join(", ")),
        )
    }

    /// Counted tokens of a language (0 when absent).
    pub fn tokens_of(&self, lang: &str) -> u64 {
        self.lang_index(lang).map_or(0, |i| self.tokens[i])
    }

    /// Tokens per language, by tag.
    pub fn tokens_by_lang(&self) -> BTreeMap<String, u64> {
        self.languages.iter().cloned().zip(self.tokens.iter().copied()).collect()
    }

    /// `[layer, expert]` top-k counts of a language.
    pub fn topk_of(&self, lang: &str) -> Result<ArrayView2<'_, u64>> {
        let i = self.lang_index(lang).ok_or_else(|| self.unknown_lang(lang))?;
        Ok(self.topk.index_axis(Axis(0), i))
    }

    /// `[layer, expert]` top-1 counts of a language.
    pub fn top1_of(&self, lang: &str) -> Result<ArrayView2<'_, u64>> {
        let i = self.lang_index(lang).ok_or_else(|| self.unknown_lang(lang))?;
        Ok(self.top1.index_axis(Axis(0), i))
    }

    /// How often `expert` was among the top-k at `layer` for tokens of `lang`.
    pub fn count(&self, lang: &str, layer: usize, expert: usize) -> Result<u64> {
        let i = self.lang_index(lang).ok_or_else(|| self.unknown_lang(lang))?;
        self.topk.get([i, layer, expert]).copied().ok_or_else(|| {
            Error::invalid(
                "expert",
                format!(
                    "layer {layer}, expert {expert}: the model has {} layers of {} experts",
                    self.layers, self.experts
                ),
            )
        })
    }

    /// `[layer, expert]` top-k counts summed over all languages.
    pub fn topk_total(&self) -> Array2<u64> {
        self.topk.sum_axis(Axis(0))
    }

    /// Adds one scanned sentence.
    pub fn add(&mut self, r: &SentenceRoutes) -> Result<()> {
        if r.layers != self.layers || r.k != self.k {
            return Err(Error::invalid(
                "routes",
                format!(
                    "sentence {} has {} layers × top-{} but the counts are {} × top-{}",
                    r.id, r.layers, r.k, self.layers, self.k
                ),
            ));
        }
        // add new languages first: an insertion shifts the indices of those after it
        for l in &r.langs {
            self.ensure_lang(l);
        }
        let idx: Vec<usize> = r.langs.iter().filter_map(|l| self.lang_index(l)).collect();
        let n = r.tokens();
        for t in 0..n {
            let li = idx[r.token_lang[t] as usize];
            self.tokens[li] += 1;
            for layer in 0..self.layers {
                let chosen = r.top_k(layer, t);
                for (slot, &e) in chosen.iter().enumerate() {
                    let e = e as usize;
                    if e >= self.experts {
                        return Err(Error::invalid(
                            "routes",
                            format!("sentence {}: expert {e} ≥ {}", r.id, self.experts),
                        ));
                    }
                    self.topk[[li, layer, e]] += 1;
                    if slot == 0 {
                        self.top1[[li, layer, e]] += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts of many sentences.
    pub fn from_routes<'a>(
        model: &str,
        layers: usize,
        experts: usize,
        k: usize,
        routes: impl IntoIterator<Item = &'a SentenceRoutes>,
    ) -> Result<Self> {
        let mut c = Counts::new(model, layers, experts, k);
        for r in routes {
            c.add(r)?;
        }
        Ok(c)
    }

    /// Whether two tables describe the same model shape (model name, k, experts, layers); the
    /// error says which differs.
    pub fn check_compatible(&self, other: &Counts) -> Result<()> {
        let mut diffs = Vec::new();
        if self.model != other.model {
            diffs.push(format!("model {:?} vs {:?}", self.model, other.model));
        }
        if self.k != other.k {
            diffs.push(format!("k {} vs {}", self.k, other.k));
        }
        if self.experts != other.experts {
            diffs.push(format!("experts {} vs {}", self.experts, other.experts));
        }
        if self.layers != other.layers {
            diffs.push(format!("layers {} vs {}", self.layers, other.layers));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(
                "counts",
                format!("the tables come from different models or settings ({})", diffs.join(", ")),
            ))
        }
    }

    /// Adds another table of the same model.
    pub fn merge(&mut self, other: &Counts) -> Result<()> {
        self.check_compatible(other)?;
        for (j, lang) in other.languages.iter().enumerate() {
            let i = self.ensure_lang(lang);
            self.tokens[i] += other.tokens[j];
            let mut a = self.topk.index_axis_mut(Axis(0), i);
            a += &other.topk.index_axis(Axis(0), j);
            let mut b = self.top1.index_axis_mut(Axis(0), i);
            b += &other.top1.index_axis(Axis(0), j);
        }
        Ok(())
    }

    /// Checks that every layer of every language sums to `tokens × k` (top-k) and `tokens` (top-1).
    pub fn check_sums(&self) -> Result<()> {
        for (i, lang) in self.languages.iter().enumerate() {
            for layer in 0..self.layers {
                let sk: u64 = self.topk.slice(s![i, layer, ..]).sum();
                let s1: u64 = self.top1.slice(s![i, layer, ..]).sum();
                if sk != self.tokens[i] * self.k as u64 || s1 != self.tokens[i] {
                    return Err(Error::invalid(
                        "counts",
                        format!(
                            "{lang} layer {layer}: top-k sum {sk}, top-1 sum {s1}, but {} tokens × k={}",
                            self.tokens[i], self.k
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `counts.json` document.
    pub fn to_json(&self) -> CountsJson {
        let table = |a: &Array3<u64>, i: usize| -> Vec<Vec<u64>> {
            a.index_axis(Axis(0), i).outer_iter().map(|row| row.to_vec()).collect()
        };
        CountsJson {
            model: self.model.clone(),
            k: self.k,
            experts: self.experts,
            layers: self.layers,
            tokens: self.tokens_by_lang(),
            topk_counts: self.languages.iter().enumerate().map(|(i, l)| (l.clone(), table(&self.topk, i))).collect(),
            top1_counts: self.languages.iter().enumerate().map(|(i, l)| (l.clone(), table(&self.top1, i))).collect(),
        }
    }

    /// Tables from a `counts.json` document, checking its shapes.
    pub fn from_json(j: &CountsJson) -> Result<Self> {
        let mut c = Counts::new(j.model.clone(), j.layers, j.experts, j.k);
        let bad = |msg: String| Error::invalid("counts.json", msg);
        let keys = |m: &BTreeMap<String, Vec<Vec<u64>>>| m.keys().cloned().collect::<Vec<_>>();
        let langs: Vec<String> = j.tokens.keys().cloned().collect();
        if keys(&j.topk_counts) != langs || keys(&j.top1_counts) != langs {
            return Err(bad("tokens, topk_counts and top1_counts name different languages".into()));
        }
        for lang in &langs {
            let i = c.ensure_lang(lang);
            c.tokens[i] = j.tokens[lang];
            for (name, src, dst) in
                [("topk_counts", &j.topk_counts, &mut c.topk), ("top1_counts", &j.top1_counts, &mut c.top1)]
            {
                let t = &src[lang];
                if t.len() != j.layers || t.iter().any(|r| r.len() != j.experts) {
                    return Err(bad(format!("{name}[{lang:?}] is not {} layers × {} experts", j.layers, j.experts)));
                }
                for (l, row) in t.iter().enumerate() {
                    for (e, &x) in row.iter().enumerate() {
                        dst[[i, l, e]] = x;
                    }
                }
            }
        }
        Ok(c)
    }

    /// Writes `counts.json` (atomically: a temporary file, synced, then renamed).
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string(&self.to_json())
            .map_err(|e| Error::invalid("counts", format!("cannot serialise: {e}")))?;
        super::write_atomic(path, text.as_bytes())
    }

    /// Reads `counts.json`.
    pub fn load_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let j: CountsJson = serde_json::from_str(&text).map_err(|e| {
            Error::invalid("counts.json", format!("{}: not a moe-lens counts file ({e})", path.display()))
        })?;
        Self::from_json(&j)
    }
}
