//! One-line helpers for the lab's cells: what a cell would otherwise loop over (generation steps,
//! cache entries, tokens, sentences, languages) printed in one method call, so that a student's
//! cell needs only `let`, `?`, `&` and a method — no closures, `match`, `format!` or `{ … };`.
//!
//! Every helper prints (to stdout) and returns `Result<()>` or `()`: write it as the cell's last
//! line with a `;` (`run.print_steps(14)?;`). They read what the library already computed; none
//! runs the model except where it says so (tokenizing).

use std::collections::{BTreeMap, BTreeSet};

use crate::corpus::Sentence;
use crate::error::Result;
use crate::lab::{load_with, Lens};
use crate::spy::{router_name, LayerRef, RoutingCache, Step};
use crate::study::{Comparison, Study, Verdict};
use crate::tokens::Script;
use crate::trace::Trace;

/// The model the lab's notebooks load when `MOE_LENS_MODEL` is not set.
pub const DEFAULT_MODEL: &str = crate::hub::OLMOE_HUB_ID;

impl Lens {
    /// Loads the model an instructor chose through the environment: `MOE_LENS_MODEL` (default
    /// [`DEFAULT_MODEL`]) with the experts' format `MOE_LENS_QUANT` (default `auto`) on the device
    /// `MOE_LENS_DEVICE` (default `auto`): [`load_with`]`("", "", "")`, so when nothing is named and
    /// OLMoE is neither cached nor reachable, the demo model, announced in the first line printed.
    /// Prints the loaded model and how long the load took.
    pub fn from_env() -> Result<Lens> {
        let started = std::time::Instant::now();
        let lens = load_with("", "", "")?;
        println!("{lens}");
        println!("loaded in {:.1} s from {}", started.elapsed().as_secs_f32(), lens.files().dir.display());
        Ok(lens)
    }

    /// Prints the UTF-8 bytes of every token of `trace` that is not Latin or common (punctuation,
    /// digits, spaces): where a character was split over several tokens, each piece's bytes.
    pub fn print_token_bytes(&self, trace: &Trace) -> Result<()> {
        println!("{:>6}  {:<8} {:<9} UTF-8 bytes of the token", "id", "label", "script");
        for t in trace.tokens.iter().filter(|t| !matches!(t.script, Script::Latin | Script::Common)) {
            let bytes = self.tokenizer().token_bytes(t.id)?;
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
            println!("{:>6}  {:<8} {:<9} {}", t.id, t.label, t.script.to_string(), hex.join(" "));
        }
        Ok(())
    }

    /// Tokenizes every sentence and prints, per language, the sentences, tokens and tokens per
    /// sentence.
    pub fn print_token_counts(&self, sentences: &[Sentence]) -> Result<()> {
        let mut per_lang: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for s in sentences {
            let n = self.tokenize(&s.text)?.len();
            let e = per_lang.entry(s.lang.as_str()).or_default();
            e.0 += 1;
            e.1 += n;
        }
        println!("{:<5} {:>9} {:>8} {:>18}", "lang", "sentences", "tokens", "tokens / sentence");
        for (lang, (n, t)) in &per_lang {
            println!("{:<5} {:>9} {:>8} {:>18.1}", lang, n, t, *t as f64 / (*n).max(1) as f64);
        }
        Ok(())
    }

    /// Prints, per language, how many different token ids there are among the first `m` tokens of
    /// that language (in corpus order), where `m` is the smallest language's token count: a fair
    /// count of how many different inputs each language gives the routers.
    pub fn print_distinct_tokens(&self, sentences: &[Sentence]) -> Result<()> {
        let mut ids: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for s in sentences {
            ids.entry(s.lang.as_str()).or_default().extend(self.tokenize(&s.text)?.iter().map(|t| t.id));
        }
        let m = ids.values().map(Vec::len).min().unwrap_or(0);
        println!("different token ids among the first {m} tokens of each language:");
        for (lang, v) in &ids {
            let distinct: BTreeSet<u32> = v[..m].iter().copied().collect();
            println!(
                "  {lang}: {:>5}  ({:.1} per 100 tokens)",
                distinct.len(),
                100.0 * distinct.len() as f64 / m.max(1) as f64
            );
        }
        Ok(())
    }
}

impl Trace {
    /// Prints the text, then each forward call: the prompt tokens of the prefill, and for every
    /// decode step the generated token and where `layer`'s router sent it (expert:weight, best
    /// first).
    pub fn print_steps(&self, layer: impl Into<LayerRef>) -> Result<()> {
        let lt = self.layer(layer)?;
        let idx = lt.index().unwrap_or(0);
        println!("prompt + generated: {:?}", self.text);
        for (step, rows) in &self.steps {
            match step {
                Step::Prefill => {
                    let labels: Vec<&str> = self.tokens[rows.clone()].iter().map(|t| t.label.as_str()).collect();
                    println!("{:<9} {} prompt tokens {:?}", step.to_string(), rows.len(), labels);
                }
                Step::Decode(_) => {
                    let i = rows.start;
                    let (Some(top), Some(weights), Some(tok)) =
                        (lt.top_k.get(i), lt.weights.get(i), self.tokens.get(i))
                    else {
                        continue;
                    };
                    let top: Vec<String> = top.iter().zip(weights).map(|(e, w)| format!("{e:>2}:{w:.2}")).collect();
                    println!(
                        "{:<9} {:<14} layer {idx} → {}",
                        step.to_string(),
                        format!("{:?}", tok.label),
                        top.join(" ")
                    );
                }
            }
        }
        Ok(())
    }

    /// Prints the number of tokens and every token's label, `|`-separated.
    pub fn print_tokens(&self) {
        let labels: Vec<&str> = self.tokens.iter().map(|t| t.label.as_str()).collect();
        println!("{} tokens: {}", self.tokens.len(), labels.join(" | "));
    }

    /// Prints the smallest and largest sum of a token's top-k weights at `layer`.
    pub fn print_weight_sums(&self, layer: impl Into<LayerRef>) -> Result<()> {
        let lt = self.layer(layer)?;
        let sums: Vec<f32> = lt.weights.iter().map(|w| w.iter().sum::<f32>()).collect();
        let lo = sums.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = sums.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        println!(
            "layer {}: the top-{} weights of a token sum to between {lo:.3} and {hi:.3} (never 1)",
            lt.index().unwrap_or(0),
            lt.k()
        );
        Ok(())
    }
}

impl RoutingCache {
    /// Prints the entries of one layer: one per forward call, with its step, rows and shapes.
    pub fn print(&self, layer: impl Into<LayerRef>) -> Result<()> {
        let layer = layer.into();
        let entries = self.get(layer.clone())?;
        let name = entries.first().map_or_else(|| format!("{layer:?}"), |r| router_name(r.layer));
        println!("{} entries for {name} (one per forward call):", entries.len());
        for r in entries {
            println!(
                "  {:<9} {} token(s) at position {}: logits [{}, {}], top-{}",
                r.step.to_string(),
                r.rows,
                r.offset,
                r.rows,
                r.experts,
                r.k
            );
        }
        Ok(())
    }
}

impl Study {
    /// Prints, for every language, how many of its tokens had `expert` among their top-k at `layer`.
    pub fn print_expert_counts(&self, layer: usize, expert: usize) -> Result<()> {
        for lang in self.languages() {
            println!(
                "layer {layer}, expert {expert}: chosen for {:>5} {lang} tokens (of {})",
                self.counts.count(lang, layer, expert)?,
                self.counts.tokens_of(lang)
            );
        }
        Ok(())
    }
}

impl Comparison {
    /// Prints the evidence of the comparison without concluding: how many layers have their
    /// interval below 0, above 0, or containing 0 (counts, not which layers), and how many
    /// layers would exclude 0 by chance alone. What it means is the reader's to say.
    pub fn print_evidence(&self, model: &str) {
        let layers = self.layers.len();
        let pct = self.options.level * 100.0;
        println!("Model: {model}");
        println!(
            "{}−{} effective experts, token-matched: {} tokens per language per sample; {} replicates; {pct:.0}% intervals.",
            self.a, self.b, self.matched_tokens, self.options.replicates
        );
        let n = |v: Verdict| self.layers.iter().filter(|l| l.verdict == v).count();
        println!(
            "interval below 0 in {} of {layers} layers, above 0 in {}, containing 0 in {}.",
            n(Verdict::Fewer),
            n(Verdict::More),
            n(Verdict::NoClearDifference)
        );
        println!(
            "By chance alone, about {:.1} of {layers} layers could exclude 0.",
            layers as f64 * (1.0 - self.options.level)
        );
        if !model.starts_with("allenai/OLMoE") {
            println!("NOTE: {model} is not the released OLMoE model: this evidence says nothing about OLMoE.");
        }
    }

    /// Prints the comparison's numbers per layer — both languages' effective experts, the difference
    /// and its interval — without a verdict column or a conclusion (`println!("{ko_en}")` prints
    /// those too).
    pub fn print_table(&self) {
        let pct = self.options.level * 100.0;
        println!(
            "Effective number of experts, token-matched ({} tokens of each language per sample), {} replicates:",
            self.matched_tokens, self.options.replicates
        );
        let diff = format!("{}−{}", self.a, self.b);
        println!("{:>5} {:>8} {:>8} {:>8}  {pct:.0}% interval of {diff}", "layer", self.a, self.b, diff);
        for l in &self.layers {
            println!(
                "{:>5} {:>8.2} {:>8.2} {:>+8.2}  [{:+.2}, {:+.2}]",
                l.layer, l.a_effective, l.b_effective, l.diff, l.ci_low, l.ci_high
            );
        }
    }

    /// The layers whose interval excludes 0 (a difference either way), in order.
    pub fn layers_with_difference(&self) -> Vec<usize> {
        self.layers.iter().filter(|l| l.verdict != Verdict::NoClearDifference).map(|l| l.layer).collect()
    }
}
