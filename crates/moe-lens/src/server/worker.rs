//! The worker: the one thread that owns the model, and how it schedules the class's requests.
//!
//! Each round the worker takes the oldest queued request and runs it, then gives the generations
//! in progress up to [`STEP_BUDGET`] of decode steps, in turn. So a trace waits behind at most one
//! other request and one budget of generation steps, never behind a whole generation, and each
//! generation still advances every round.
//!
//! - **Traces may ride together** (`batch_traces` > 1, `moe-lens serve --batch-traces N`; off by
//!   default): the traces waiting
//!   in the queue, up to `batch_traces` of them and [`Limits::max_batch_tokens`] tokens with
//!   padding, run as one padded forward pass. On a GPU a pass of several short sequences costs
//!   about what one does (the weights are read once), so the queue drains many times faster. What
//!   it changes: each trace goes through the batched kernels, whose sums round differently from the
//!   single-sequence ones (router logits to the bf16 rounding of the hidden states; a top-k choice
//!   between two experts of near-equal logits can flip). It never mixes sequences: padding is masked
//!   out and each student's interventions hold on their own sequence only. Measured on an H200
//!   (BENCHMARKS.md): with 40 students the trace p95 fell from 568 to 327 ms, but on the random
//!   full-size OLMoE 12 % of the top-8 sets of a batched trace differ from the same trace run alone,
//!   and which traces share a pass depends on who else is waiting, so a student's trace would no
//!   longer be reproducible nor equal a classmate's. Hence the default, 1: every trace runs alone
//!   and equals a local trace of the same model and settings (bit for bit on the CPU).
//! - **Generations are interleaved**: a generation runs its prompt when its turn comes, then one
//!   decode step at a time between other requests, with its own KV cache: exactly the computation
//!   of a local generation, so its answer is bit for bit a local one's, on any device.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{error_body, lock, Job, Shared};
use crate::error::{Error, Result};
use crate::intervene::Interventions;
use crate::lab::{GenerateOptions, Generation, Lens, TraceRun};
use crate::remote::protocol::{
    f32s_to_b64, u32s_to_b64, RequestBody, ResponseBody, RunReply, TeacherReply, TopKReply, WireRouting, WireTopK,
};
use crate::spy::LayerSelection;
use crate::trace::Trace;

/// Decode steps the generations in progress get each round, at most (at least one step each
/// round when any is in progress): what a trace may wait for them.
pub(super) const STEP_BUDGET: Duration = Duration::from_millis(25);

/// A generation in progress and the request it answers.
struct Active<'a> {
    job: Job,
    run: Generation<'a>,
}

/// The worker's loop: until the server stops.
pub(super) fn work(lens: &Lens, shared: &Shared) {
    let mut active: VecDeque<Active<'_>> = VecDeque::new();
    loop {
        let jobs = {
            let mut q = lock(&shared.queue);
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let jobs = take_next(shared, &mut q);
                if !jobs.is_empty() || !active.is_empty() {
                    break jobs;
                }
                q = match shared.wake.wait(q) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
        };
        run_jobs(lens, shared, jobs, &mut active);
        shared.generating.store(active.len(), Ordering::SeqCst);
        advance(shared, &mut active);
        shared.generating.store(active.len(), Ordering::SeqCst);
    }
}

/// The oldest live request, or when it is a trace, it and the other traces waiting (up to
/// `batch_traces`), in queue order. Requests whose client left are dropped here, unrun.
fn take_next(shared: &Shared, q: &mut VecDeque<Job>) -> Vec<Job> {
    let first = loop {
        match q.pop_front() {
            None => return Vec::new(),
            Some(j) if j.cancelled.load(Ordering::SeqCst) => lock(&shared.counters).dropped += 1,
            Some(j) => break j,
        }
    };
    let is_trace = |j: &Job| matches!(j.body, RequestBody::Trace { .. });
    if !is_trace(&first) || shared.batch_traces <= 1 {
        return vec![first];
    }
    let mut jobs = vec![first];
    let mut i = 0;
    while i < q.len() && jobs.len() < shared.batch_traces {
        if is_trace(&q[i]) && !q[i].cancelled.load(Ordering::SeqCst) {
            if let Some(j) = q.remove(i) {
                jobs.push(j);
            }
        } else {
            i += 1;
        }
    }
    jobs
}

/// A panic inside a run, caught: answered as an error, and the server goes on.
fn internal() -> ResponseBody {
    error_body(
        "internal",
        "the run failed inside the server (a bug: the server's log has the details; please report it); the server \
         goes on",
    )
}

fn answer(shared: &Shared, job: &Job, body: ResponseBody) {
    shared.count(job.body.kind(), &body);
    let _ = job.reply.send(body);
}

fn body_of(r: std::thread::Result<Result<ResponseBody>>) -> ResponseBody {
    match r {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => error_body("model", e.to_string()),
        Err(_) => internal(),
    }
}

fn run_jobs<'a>(lens: &'a Lens, shared: &Shared, jobs: Vec<Job>, active: &mut VecDeque<Active<'a>>) {
    if jobs.len() > 1 {
        return run_traces(lens, shared, jobs);
    }
    for job in jobs {
        if let RequestBody::Generate { text, max_new_tokens, stop_at_eos, interventions } = &job.body {
            let opts = GenerateOptions { max_new_tokens: *max_new_tokens, stop_at_eos: *stop_at_eos };
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Generation::start(lens, text, &opts, interventions)
            }));
            match started {
                Ok(Ok(run)) => active.push_back(Active { job, run }),
                Ok(Err(e)) => answer(shared, &job, error_body("model", e.to_string())),
                Err(_) => answer(shared, &job, internal()),
            }
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(lens, &job.body)));
        answer(shared, &job, body_of(ran));
    }
}

/// Several traces in padded passes ([`Lens::trace_batch`]), each answered on its own.
fn run_traces(lens: &Lens, shared: &Shared, jobs: Vec<Job>) {
    let parts: Option<Vec<(&str, LayerSelection, &Interventions)>> = jobs
        .iter()
        .map(|j| match &j.body {
            RequestBody::Trace { text, layers, interventions } => {
                Some((text.as_str(), selection(layers), interventions))
            }
            _ => None,
        })
        .collect();
    let Some(parts) = parts else {
        // only traces are taken together (take_next); anything else is a bug, answered as one
        for job in &jobs {
            answer(shared, job, internal());
        }
        return;
    };
    let runs: Vec<TraceRun<'_>> = parts.iter().map(|(text, layers, edits)| TraceRun { text, layers, edits }).collect();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lens.trace_batch(&runs, shared.limits.max_batch_tokens)
    }));
    match ran {
        Ok(results) => {
            {
                let mut c = lock(&shared.counters);
                c.trace_batches += 1;
                c.batched_traces += jobs.len() as u64;
            }
            for (job, r) in jobs.iter().zip(results) {
                answer(shared, job, body_of(Ok(r.map(run_reply))));
            }
        }
        Err(_) => {
            for job in &jobs {
                answer(shared, job, internal());
            }
        }
    }
}

/// The generations in progress, one decode step each in turn, for up to [`STEP_BUDGET`] (at least
/// one step); finished ones are answered, those whose client left are dropped.
fn advance(shared: &Shared, active: &mut VecDeque<Active<'_>>) {
    let start = Instant::now();
    let mut first = true;
    while let Some(mut a) = active.pop_front() {
        if a.job.cancelled.load(Ordering::SeqCst) {
            lock(&shared.counters).dropped += 1;
            continue;
        }
        if !first && start.elapsed() >= STEP_BUDGET {
            active.push_front(a);
            return;
        }
        first = false;
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.run.step()));
        match stepped {
            Ok(Ok(false)) => active.push_back(a),
            Ok(Ok(true)) => {
                let Active { job, run } = a;
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.finish().map(run_reply)));
                answer(shared, &job, body_of(done));
            }
            Ok(Err(e)) => answer(shared, &a.job, error_body("model", e.to_string())),
            Err(_) => answer(shared, &a.job, internal()),
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn selection(layers: &Option<Vec<usize>>) -> LayerSelection {
    match layers {
        None => LayerSelection::All,
        Some(v) => LayerSelection::Only(v.clone()),
    }
}

fn run_reply(t: Trace) -> ResponseBody {
    let routing = t.cache.entries().map(WireRouting::from_routing).collect();
    ResponseBody::Trace(RunReply { text: t.text, tokens: t.tokens, prompt_len: t.prompt_len, routing })
}

fn execute(lens: &Lens, body: &RequestBody) -> Result<ResponseBody> {
    Ok(match body {
        RequestBody::Trace { text, layers, interventions } => {
            run_reply(lens.trace_edited(text, selection(layers), interventions)?)
        }
        RequestBody::TopK { sequences } => {
            check_batch(lens, sequences)?;
            let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
            let spy = crate::study::batch_top_k(lens, &refs)?;
            let layers = spy
                .layers
                .into_iter()
                .map(|l| l.map(|(seq_len, k, v)| WireTopK { seq_len, k, top_k: u32s_to_b64(&v) }))
                .collect();
            ResponseBody::TopK(TopKReply { layers })
        }
        RequestBody::Score { ids, prompt_len, edits } => {
            check_teacher(lens, ids, *prompt_len, edits)?;
            ResponseBody::Score { logprobs: crate::effects::score_on(lens.model()?, ids, *prompt_len, edits)? }
        }
        RequestBody::Teacher { ids, prompt_len, interventions } => {
            check_teacher(lens, ids, *prompt_len, std::slice::from_ref(interventions))?;
            let (cache, logprob, next) = crate::effects::teacher_on(lens.model()?, ids, *prompt_len, interventions)?;
            let routing = cache.entries().map(WireRouting::from_routing).collect();
            ResponseBody::Teacher(TeacherReply { logprob, next: f32s_to_b64(&next), routing })
        }
        // generations are stepped by `run_jobs` and `advance`; hello and stats by the connection
        RequestBody::Generate { .. } | RequestBody::Hello | RequestBody::Stats => {
            error_body("internal", "not a request the worker runs in one go")
        }
    })
}

/// A teacher-forced request's ids, prompt length and interventions, checked against the model.
fn check_teacher(lens: &Lens, ids: &[u32], prompt_len: usize, edits: &[Interventions]) -> Result<()> {
    check_batch(lens, &[ids])?;
    if prompt_len == 0 || prompt_len > ids.len() {
        return Err(Error::invalid(
            "prompt",
            format!(
                "{prompt_len} prompt tokens of {}: the prompt has at least one token and is part of the text",
                ids.len()
            ),
        ));
    }
    let c = lens.config();
    for iv in edits {
        iv.check(c.num_hidden_layers, c.num_experts, c.num_experts_per_tok)?;
    }
    Ok(())
}

/// A scan batch's ids and sizes, checked against the model (the sizes were checked on arrival).
fn check_batch<S: AsRef<[u32]>>(lens: &Lens, sequences: &[S]) -> Result<()> {
    let c = lens.config();
    for (i, s) in sequences.iter().map(AsRef::as_ref).enumerate() {
        if s.is_empty() {
            return Err(Error::invalid("scan batch", format!("sentence {i} has no tokens")));
        }
        if s.len() > c.max_position_embeddings {
            return Err(Error::TextTooLong { tokens: s.len(), max: c.max_position_embeddings });
        }
        if let Some(bad) = s.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::invalid(
                "scan batch",
                format!("sentence {i} has token id {bad}, past the vocabulary's {}", c.vocab_size),
            ));
        }
    }
    Ok(())
}
