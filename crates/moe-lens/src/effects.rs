//! What an intervention at the routers does: runs under interventions, their effect on the next
//! token and on a continuation side by side, and the importance sweep (ablate each expert a text
//! routes to, one at a time, and rank them by how much the continuation's log-probability moves).
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! # fn demo(lens: &Lens) -> Result<()> {
//! let knock_out = Interventions::new().ablate(14, [27, 35]);
//! let after = lens.intervene(&knock_out).trace("서울은 한국의 수도입니다.")?;   // routing as applied
//! let effect = lens.effect("서울은 한국의", " 수도입니다.", &knock_out)?;     // before / after
//! println!("{effect}");
//! let sweep = lens.sweep("The capital of France is", " Paris")?;           // importance ranking
//! println!("{sweep}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::intervene::Interventions;
use crate::lab::{GenerateOptions, Lens};
use crate::olmoe::Olmoe;
use crate::spy::{LayerSelection, RouterSpy, RoutingCache, Step};
use crate::tokens::Token;
use crate::trace::{LayerTrace, Trace};

/// A [`Lens`] with interventions at its routers: `lens.intervene(&iv).trace(text)`.
#[derive(Debug, Clone, Copy)]
pub struct Intervened<'a> {
    lens: &'a Lens,
    edits: &'a Interventions,
}

impl Intervened<'_> {
    /// Runs `text` once under the interventions and captures every router (`logits` the routers'
    /// own; `probs`, `top_k`, `weights` the routing applied).
    pub fn trace(&self, text: &str) -> Result<Trace> {
        self.lens.trace_edited(text, LayerSelection::All, self.edits)
    }

    /// Greedy generation of up to `max_new_tokens` under the interventions, which hold at every
    /// decode step (token ranges count the prompt's tokens first).
    pub fn generate(&self, text: &str, max_new_tokens: usize) -> Result<Trace> {
        self.lens.generate_edited(text, &GenerateOptions { max_new_tokens, stop_at_eos: true }, self.edits)
    }
}

/// Tokens generated greedily by [`Lens::effect`] before and after.
pub const EFFECT_GENERATE: usize = 10;

/// One of the most likely next tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextToken {
    /// The token's id in the vocabulary.
    pub id: u32,
    /// How a student reads it (`␣` for a leading space; split characters shown whole).
    pub label: String,
    /// Its probability under the model, 0..=1.
    pub prob: f64,
}

/// The effect of a set of interventions on a prompt and a continuation: the continuation's
/// log-probability, the next-token distribution after the prompt, the greedy generations and the
/// routing, before and after.
#[derive(Debug, Clone)]
pub struct Effect {
    /// The interventions whose effect this is.
    pub interventions: Interventions,
    /// The prompt, as given.
    pub prompt: String,
    /// The continuation whose log-probability is measured, as given (may be empty).
    pub continuation: String,
    /// The prompt + continuation without interventions (one teacher-forced pass).
    pub before: Trace,
    /// The same text under the interventions.
    pub after: Trace,
    /// Sum of the log-probabilities (natural log) of the continuation's tokens given what precedes
    /// each; 0 when the continuation is empty.
    pub logprob_before: f64,
    /// The same sum under the interventions (natural log).
    pub logprob_after: f64,
    /// KL(before ‖ after) of the next-token distribution after the prompt, in nats.
    pub kl: f64,
    /// The 5 most likely next tokens after the prompt.
    pub top_before: Vec<NextToken>,
    /// The 5 most likely next tokens after the prompt, under the interventions.
    pub top_after: Vec<NextToken>,
    /// The prompt's greedy continuation ([`EFFECT_GENERATE`] tokens at most); `▯` marks bytes that
    /// do not form a character (a model under ablation may write broken UTF-8).
    pub generated_before: String,
    /// The prompt's greedy continuation under the interventions (same limits and `▯` marks).
    pub generated_after: String,
}

impl Effect {
    /// Change of the continuation's log-probability (after − before).
    pub fn delta(&self) -> f64 {
        self.logprob_after - self.logprob_before
    }

    /// Per layer, how many (token, expert) choices differ: `[layer][token]` = number of experts in
    /// the token's top-k after that were not there before.
    pub fn changed(&self) -> Vec<Vec<usize>> {
        changed_choices(&self.before, &self.after)
    }
}

/// `[layer][token]`: experts chosen in `b` but not in `a`.
pub fn changed_choices(a: &Trace, b: &Trace) -> Vec<Vec<usize>> {
    a.layers
        .iter()
        .zip(&b.layers)
        .map(|(la, lb)| {
            la.top_k.iter().zip(&lb.top_k).map(|(ta, tb)| tb.iter().filter(|e| !ta.contains(e)).count()).collect()
        })
        .collect()
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "interventions: {}", self.interventions)?;
        if !self.continuation.is_empty() {
            writeln!(
                f,
                "log-probability of {:?} after {:?}: before {:.3}, after {:.3} (change {:+.3}: {} as likely)",
                self.continuation,
                self.prompt,
                self.logprob_before,
                self.logprob_after,
                self.delta(),
                ratio(self.delta().exp())
            )?;
        }
        writeln!(f, "next token after the prompt: KL(before ‖ after) = {:.4} nats", self.kl)?;
        let row =
            |v: &[NextToken]| v.iter().map(|t| format!("{} {:.3}", t.label, t.prob)).collect::<Vec<_>>().join(" · ");
        writeln!(f, "  top 5 before: {}", row(&self.top_before))?;
        writeln!(f, "  top 5 after:  {}", row(&self.top_after))?;
        writeln!(f, "greedy continuation before: {:?}", self.generated_before)?;
        writeln!(f, "greedy continuation after:  {:?}", self.generated_after)?;
        let changed = self.changed();
        let tokens = self.before.tokens.len();
        let per_layer: Vec<String> = changed
            .iter()
            .enumerate()
            .filter(|(_, v)| v.iter().any(|&c| c > 0))
            .map(|(l, v)| format!("{l}: {}/{tokens}", v.iter().filter(|&&c| c > 0).count()))
            .collect();
        if per_layer.is_empty() {
            write!(f, "routing: no token's choice changed in any layer")
        } else {
            write!(f, "routing changed (layer: tokens with another top-k): {}", per_layer.join(", "))
        }
    }
}

/// A probability ratio as a student reads it: `×0.37`, `×4.6e-10`, `×1,200`.
fn ratio(r: f64) -> String {
    if !r.is_finite() {
        format!("×{r}")
    } else if r != 0.0 && !(1e-3..1e4).contains(&r) {
        format!("×{r:.1e}")
    } else {
        format!("×{r:.3}")
    }
}

/// One row of an importance [`Sweep`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// The ablated expert's layer, from 0.
    pub layer: usize,
    /// The ablated expert, 0..num_experts.
    pub expert: usize,
    /// How many of the text's tokens chose this expert at this layer (unmodified run).
    pub tokens: usize,
    /// The continuation's log-probability with this expert ablated at this layer (every token).
    pub logprob: f64,
    /// `logprob` − the unmodified log-probability.
    pub delta: f64,
    /// Whether `|delta|` is at or below the noise floor.
    pub below_noise: bool,
}

/// Options of [`Lens::sweep_with`].
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Most tokens in one batched forward pass (sequences × length); at least one sequence.
    pub max_batch_tokens: usize,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions { max_batch_tokens: 4096 }
    }
}

/// An importance sweep: every (layer, expert) the text routes to, ablated one at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// The model's name, as [`Lens::name`] gives it.
    pub model: String,
    /// The text, the prompt before the continuation.
    pub text: String,
    /// The continuation whose log-probability is measured.
    pub continuation: String,
    /// The continuation's log-probability without intervention (the text alone, one sequence).
    pub base_logprob: f64,
    /// Effects with `|delta|` at or below this are numerical noise (see `noise`).
    pub noise_floor: f64,
    /// How the noise floor was measured.
    pub noise: String,
    /// Ranked by `|delta|`, largest first.
    pub rows: Vec<SweepRow>,
    /// Forward passes and wall time of the sweep.
    pub passes: usize,
    /// Wall time of the sweep, in seconds.
    pub seconds: f64,
}

impl Sweep {
    /// Raises the noise floor to the spread between this model and `reference` (the same model
    /// loaded in another precision, e.g. float32 beside bf16) on the unmodified run, and marks the
    /// effects below it again.
    pub fn with_reference(mut self, reference: &Lens) -> Result<Sweep> {
        let split = Split::new(reference, &self.text, &self.continuation)?;
        let lp = split
            .score(reference, &[])?
            .first()
            .copied()
            .ok_or_else(|| Error::Spy("no score for the reference".into()))?;
        let spread = (lp - self.base_logprob).abs();
        self.noise = format!(
            "{}; against {} in {:?}: |{:.6} − {:.6}| = {spread:.3e}",
            self.noise,
            reference.name(),
            reference.dtype(),
            lp,
            self.base_logprob
        );
        self.noise_floor = self.noise_floor.max(spread);
        for r in &mut self.rows {
            r.below_noise = r.delta.abs() <= self.noise_floor;
        }
        Ok(self)
    }

    /// The ranked table as CSV (`layer,expert,tokens,logprob,delta,below_noise`).
    pub fn to_csv(&self) -> String {
        let mut s = String::from("rank,layer,expert,tokens,logprob,delta,below_noise\n");
        for (i, r) in self.rows.iter().enumerate() {
            s.push_str(&format!(
                "{},{},{},{},{:.9},{:.9},{}\n",
                i + 1,
                r.layer,
                r.expert,
                r.tokens,
                r.logprob,
                r.delta,
                r.below_noise
            ));
        }
        s
    }

    /// The sweep as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::invalid("sweep", format!("cannot serialise: {e}")))
    }
}

impl fmt::Display for Sweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let above = self.rows.iter().filter(|r| !r.below_noise).count();
        writeln!(
            f,
            "importance sweep of {} (layer, expert) pairs in {} passes, {:.2} s: log P({:?} | {:?}) = {:.4}",
            self.rows.len(),
            self.passes,
            self.seconds,
            self.continuation,
            self.text,
            self.base_logprob
        )?;
        writeln!(f, "noise floor {:.3e} ({}); {above} effects above it", self.noise_floor, self.noise)?;
        writeln!(f, "{:>4} {:>5} {:>6} {:>6} {:>10}", "rank", "layer", "expert", "tokens", "Δ log P")?;
        for (i, r) in self.rows.iter().take(15).enumerate() {
            let mark = if r.below_noise { "  (noise)" } else { "" };
            writeln!(f, "{:>4} {:>5} {:>6} {:>6} {:>+10.4}{mark}", i + 1, r.layer, r.expert, r.tokens, r.delta)?;
        }
        if self.rows.len() > 15 {
            write!(f, "… {} more (sweep.rows, or .to_csv())", self.rows.len() - 15)?;
        }
        Ok(())
    }
}

/// A prompt followed by a continuation, tokenized once: the whole text, its tokens, and how many of
/// them are the prompt's.
struct Split {
    full: String,
    tokens: Vec<Token>,
    prompt_len: usize,
}

impl Split {
    /// Checks that the prompt's tokens are a prefix of the whole text's (so that the continuation
    /// starts at a token boundary).
    fn new(lens: &Lens, prompt: &str, continuation: &str) -> Result<Split> {
        let full = format!("{prompt}{continuation}");
        let p = lens.tokenize(prompt)?;
        let tokens = lens.tokenize(&full)?;
        if p.is_empty() {
            return Err(Error::EmptyText(" (the prompt has no tokens: give the text the continuation follows)"));
        }
        let same = tokens.len() >= p.len() && tokens.iter().zip(&p).all(|(a, b)| a.id == b.id);
        if !same {
            return Err(Error::invalid(
                "continuation",
                format!(
                    "{continuation:?} merges with the end of {prompt:?} into other tokens; start the continuation at a \
                     word boundary (usually with a space, e.g. \" Paris\") or move the split"
                ),
            ));
        }
        Ok(Split { full, tokens, prompt_len: p.len() })
    }

    fn ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    /// The continuation's log-probability under each set of `edits` (one sequence each, one batch),
    /// here or on the model server.
    fn score(&self, lens: &Lens, edits: &[Interventions]) -> Result<Vec<f64>> {
        let ids = self.ids();
        if let Some(client) = lens.client() {
            return client.score(ids, self.prompt_len, edits.to_vec());
        }
        score_on(lens.model()?, &ids, self.prompt_len, edits)
    }

    /// A teacher-forced run under `edits`: its trace, the continuation's log-probability and the
    /// next-token log-probabilities after the prompt (`[vocab]`), here or on the model server.
    fn traced(&self, lens: &Lens, edits: &Interventions) -> Result<(Trace, f64, Vec<f32>)> {
        let ids = self.ids();
        let (cache, lp, next) = match lens.client() {
            Some(client) => client.teacher(ids, self.prompt_len, edits.clone())?,
            None => teacher_on(lens.model()?, &ids, self.prompt_len, edits)?,
        };
        let n = self.tokens.len();
        let mut trace =
            Trace::assemble(lens.name(), &self.full, self.tokens.clone(), n, cache, lens.config().num_hidden_layers)?;
        trace.interventions = edits.clone();
        Ok((trace, lp, next))
    }
}

/// One teacher-forced pass of `ids` (the prompt's `prompt_len` tokens, then the continuation), once
/// per set of `edits` (one sequence each, in one batch; no set: the model as it is): the
/// log-probabilities `[B, m, vocab]` of the positions that predict the continuation (`m` = its
/// length, at least 1: the position after the prompt).
fn log_probs_on(
    model: &Olmoe,
    ids: &[u32],
    prompt_len: usize,
    edits: &[Interventions],
    spy: Option<&mut dyn RouterSpy>,
) -> Result<Tensor> {
    if prompt_len == 0 || prompt_len > ids.len() {
        return Err(Error::invalid("prompt", format!("{prompt_len} prompt tokens of {}", ids.len())));
    }
    let b = edits.len().max(1);
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?.repeat((b, 1))?; // [B, T]
    let hidden = model.forward_edited(&input, None, None, Step::Prefill, spy, edits)?; // [B, T, hidden]
    let m = (ids.len() - prompt_len).max(1);
    let logits = model.logits_at(&hidden, prompt_len - 1, m)?; // [B, m, vocab] f32
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
}

/// The continuation's log-probability (the sum over its tokens) under each set of `edits` (one
/// sequence each, one batch; no set: one value, the model as it is). What [`Lens::sweep`] scores,
/// in this process or on a model server.
pub(crate) fn score_on(model: &Olmoe, ids: &[u32], prompt_len: usize, edits: &[Interventions]) -> Result<Vec<f64>> {
    let c = ids.len().saturating_sub(prompt_len);
    if c == 0 {
        return Ok(vec![0.0; edits.len().max(1)]);
    }
    let logp = log_probs_on(model, ids, prompt_len, edits, None)?; // [B, c, vocab]
    let b = logp.dim(0)?;
    let target = Tensor::new(&ids[prompt_len..], logp.device())?.unsqueeze(0)?.repeat((b, 1))?.unsqueeze(2)?; // [B, c, 1]
    let picked: Vec<Vec<f32>> = logp.gather(&target, 2)?.squeeze(2)?.to_vec2()?; // [B, c]
    Ok(picked.iter().map(|r| r.iter().map(|&v| v as f64).sum()).collect())
}

/// A teacher-forced run of `ids` under `edits` with every router captured: the routing, the
/// continuation's log-probability and the next-token log-probabilities after the prompt
/// (`[vocab]`). What [`Lens::effect`] compares, in this process or on a model server.
pub(crate) fn teacher_on(
    model: &Olmoe,
    ids: &[u32],
    prompt_len: usize,
    edits: &Interventions,
) -> Result<(RoutingCache, f64, Vec<f32>)> {
    let mut cache = RoutingCache::new();
    let sets = if edits.is_empty() { &[][..] } else { std::slice::from_ref(edits) };
    let logp = log_probs_on(model, ids, prompt_len, sets, Some(&mut cache))?.squeeze(0)?.to_device(&Device::Cpu)?; // [m, vocab]
    let rows: Vec<Vec<f32>> = logp.to_vec2()?;
    let next = rows.first().cloned().unwrap_or_default();
    let lp: f64 =
        ids[prompt_len..].iter().zip(&rows).map(|(&t, r)| r.get(t as usize).copied().unwrap_or(f32::NAN) as f64).sum();
    Ok((cache, lp, next))
}

/// How many of a layer's tokens chose each expert (`[experts]`).
fn expert_counts(lt: &LayerTrace) -> Vec<usize> {
    let mut count = vec![0usize; lt.experts()];
    for row in &lt.top_k {
        for &e in row {
            if let Some(c) = count.get_mut(e as usize) {
                *c += 1;
            }
        }
    }
    count
}

fn top5(lens: &Lens, logp: &[f32]) -> Result<Vec<NextToken>> {
    let mut idx: Vec<usize> = (0..logp.len()).collect();
    idx.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
    idx.truncate(5);
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let labels = lens.tokenizer().labels(&ids)?;
    Ok(ids
        .iter()
        .zip(labels)
        .map(|(&id, label)| NextToken { id, label, prob: (logp[id as usize] as f64).exp() })
        .collect())
}

impl Trace {
    /// The `n` experts of `layer` chosen by most of this trace's tokens (most first; ties: the lower
    /// expert first).
    pub fn most_used_experts(&self, layer: usize, n: usize) -> Result<Vec<usize>> {
        let count = expert_counts(self.layer(layer)?);
        let mut order: Vec<usize> = (0..count.len()).filter(|&e| count[e] > 0).collect();
        order.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
        order.truncate(n);
        Ok(order)
    }

    /// Interventions that ablate, in each of `layers`, the `n` experts this trace's tokens chose
    /// most: "switch off the experts this text uses".
    pub fn ablate_most_used(&self, layers: impl IntoIterator<Item = usize>, n: usize) -> Result<Interventions> {
        let mut iv = Interventions::new();
        for l in layers {
            iv = iv.ablate(l, self.most_used_experts(l, n)?);
        }
        Ok(iv)
    }
}

impl Lens {
    /// The model with interventions at its routers (see [`crate::intervene`]):
    /// `lens.intervene(&iv).trace(text)?`, `lens.intervene(&iv).generate(text, 10)?`.
    pub fn intervene<'a>(&'a self, interventions: &'a Interventions) -> Intervened<'a> {
        Intervened { lens: self, edits: interventions }
    }

    /// The effect of `interventions` on `prompt` followed by `continuation` (which may be empty):
    /// the continuation's log-probability, the next-token distribution after the prompt (KL and
    /// top 5), the greedy generations and the routing, before and after, side by side.
    pub fn effect(&self, prompt: &str, continuation: &str, interventions: &Interventions) -> Result<Effect> {
        let c = self.config();
        interventions.check(c.num_hidden_layers, c.num_experts, c.num_experts_per_tok)?;
        let split = Split::new(self, prompt, continuation)?;
        let (before, lp_b, next_b) = split.traced(self, &Interventions::new())?;
        let (after, lp_a, next_a) = split.traced(self, interventions)?;
        let kl: f64 = next_b
            .iter()
            .zip(&next_a)
            .map(|(&b, &a)| {
                let pb = (b as f64).exp();
                if pb == 0.0 {
                    0.0
                } else {
                    pb * (b as f64 - a as f64)
                }
            })
            .sum();
        let opts = GenerateOptions { max_new_tokens: EFFECT_GENERATE, stop_at_eos: true };
        let gen_b = self.generate_edited(prompt, &opts, &Interventions::new())?;
        let gen_a = self.generate_edited(prompt, &opts, interventions)?;
        // the generated text; bytes that can never form a character (an ablated model may write
        // them) shown as ▯ rather than U+FFFD
        let tail = |t: &Trace| -> Result<String> {
            let text = t.text.strip_prefix(prompt).unwrap_or(&t.text);
            Ok(text.replace('\u{FFFD}', "▯"))
        };
        Ok(Effect {
            interventions: interventions.clone(),
            prompt: prompt.into(),
            continuation: continuation.into(),
            before,
            after,
            logprob_before: lp_b,
            logprob_after: lp_a,
            kl,
            top_before: top5(self, &next_b)?,
            top_after: top5(self, &next_a)?,
            generated_before: tail(&gen_b)?,
            generated_after: tail(&gen_a)?,
        })
    }

    /// The importance sweep with default options (see [`Lens::sweep_with`]).
    pub fn sweep(&self, text: &str, continuation: &str) -> Result<Sweep> {
        self.sweep_with(text, continuation, &SweepOptions::default())
    }

    /// Ablates each (layer, expert) that `text + continuation` routes to, one at a time (all tokens),
    /// in batches of sequences that each carry their own ablation, and ranks them by the change of
    /// the continuation's log-probability. Every batch also carries the unmodified text: the spread
    /// of its log-probability over batches (and against the text run alone) is the noise floor;
    /// [`Sweep::with_reference`] adds the spread against another precision.
    pub fn sweep_with(&self, text: &str, continuation: &str, opts: &SweepOptions) -> Result<Sweep> {
        if continuation.is_empty() {
            return Err(Error::invalid(
                "continuation",
                "the sweep ranks experts by the continuation's log-probability: give one (e.g. \" Paris\")",
            ));
        }
        let started = Instant::now();
        let split = Split::new(self, text, continuation)?;
        let tokens = split.tokens.len();
        let c = self.config();
        let (experts, k) = (c.num_experts, c.num_experts_per_tok);
        if experts <= k {
            return Err(Error::invalid(
                "sweep",
                format!("the model chooses {k} of {experts} experts: nothing to ablate"),
            ));
        }
        // the unmodified run, one pass: which experts the text routes to, and the baseline
        let (base, base_lp, _) = split.traced(self, &Interventions::new())?;
        let mut pairs: Vec<(usize, usize, usize)> = Vec::new(); // (layer, expert, tokens)
        for (l, lt) in base.layers.iter().enumerate() {
            let count = expert_counts(lt);
            pairs.extend(count.iter().enumerate().filter(|(_, &n)| n > 0).map(|(e, &n)| (l, e, n)));
        }
        let mut per_batch = opts.max_batch_tokens / tokens.max(1);
        if let Some(l) = self.client().map(|c| c.limits()) {
            // a model server takes at most its own limits per pass
            per_batch = per_batch.min(l.max_batch_sequences).min(l.max_batch_tokens / tokens.max(1));
        }
        let per_batch = per_batch.max(2); // one slot is the unmodified text
        let mut rows = Vec::with_capacity(pairs.len());
        let mut noise: f64 = 0.0;
        let mut passes = 1;
        for chunk in pairs.chunks(per_batch - 1) {
            let mut sets = vec![Interventions::new()];
            sets.extend(chunk.iter().map(|&(l, e, _)| Interventions::new().ablate(l, [e])));
            let lps = split.score(self, &sets)?;
            passes += 1;
            noise = noise.max((lps[0] - base_lp).abs());
            for (&(layer, expert, n), &lp) in chunk.iter().zip(&lps[1..]) {
                rows.push(SweepRow { layer, expert, tokens: n, logprob: lp, delta: lp - base_lp, below_noise: false });
            }
        }
        for r in &mut rows {
            r.below_noise = r.delta.abs() <= noise;
        }
        rows.sort_by(|a, b| {
            b.delta.abs().total_cmp(&a.delta.abs()).then((a.layer, a.expert).cmp(&(b.layer, b.expert)))
        });
        Ok(Sweep {
            model: self.name().into(),
            text: text.into(),
            continuation: continuation.into(),
            base_logprob: base_lp,
            noise_floor: noise,
            noise: format!(
                "{:?} on {}: the unmodified text in each batch of {per_batch} against it alone",
                self.dtype(),
                match self.model() {
                    Ok(m) if m.device().is_cpu() => "the CPU",
                    Ok(_) => "the GPU",
                    Err(_) => "the model server",
                }
            ),
            rows,
            passes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
