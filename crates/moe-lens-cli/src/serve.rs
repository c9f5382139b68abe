//! `moe-lens serve` (one model for a whole class, over a Unix socket; see `moe_lens::server`) and
//! `moe-lens loadtest` (N simulated students against a running server).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use moe_lens::corpus::{self, Sentence};
use moe_lens::lab::Lens;
use moe_lens::remote::protocol::Limits;
use moe_lens::server::{self, ServeOptions};
use moe_lens::study::{ScanExt, ScanOptions};

use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The Unix socket to answer on (its folder must exist; a stale socket there is replaced, any
    /// other file is not). Students set MOE_LENS_SERVER to this path.
    #[arg(long)]
    socket: PathBuf,
    /// Give the socket this Unix group (the class's) and mode 0660, so that its members may
    /// connect; without it the socket is 0600 (only you).
    #[arg(long)]
    group: Option<String>,
    /// The socket's mode, 600 or 660 (default: 660 with --group, else 600).
    #[arg(long)]
    mode: Option<String>,
    /// Most new tokens one generation may ask for (a generation holds the model for all its steps).
    #[arg(long, default_value_t = Limits::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Most tokens in one scan batch, padding included.
    #[arg(long, default_value_t = Limits::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Longest text of a trace or generation, in bytes.
    #[arg(long, default_value_t = Limits::default().max_text_bytes)]
    max_text_bytes: usize,
    /// Most open connections (students' kernels).
    #[arg(long, default_value_t = 1024)]
    max_clients: usize,
    /// Most traces of different students run together in one padded forward pass. 1 (default):
    /// each alone, so a trace equals a local one. More (e.g. 16 for a big class on a GPU): shorter
    /// waits under load, but a trace's routing then depends on which others shared its pass (the
    /// batched kernels round differently; INSTRUCTORS.md has the measured sizes).
    #[arg(long, default_value_t = 1)]
    batch_traces: usize,
}

pub fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    if a.model.server.is_some() {
        bail!("serve loads the model itself: give --model, not --server");
    }
    let mode = match (a.mode.as_deref(), &a.group) {
        (Some(m), _) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .with_context(|| format!("--mode {m}: give 600 or 660"))?,
        (None, Some(_)) => 0o660,
        (None, None) => 0o600,
    };
    let limits = Limits {
        max_new_tokens: a.max_new_tokens,
        max_batch_tokens: a.max_batch_tokens,
        max_text_bytes: a.max_text_bytes,
        ..Limits::default()
    };
    if a.batch_traces == 0 {
        bail!("--batch-traces 0: give 1 (each trace alone) or more");
    }
    let opts = ServeOptions {
        socket: a.socket.clone(),
        mode,
        group: a.group.clone(),
        limits,
        max_clients: a.max_clients,
        batch_traces: a.batch_traces,
    };
    let model = a.model.clone();
    let t0 = Instant::now();
    eprintln!("serve: loading {} …", a.model.model_name());
    let load = move || {
        let lens = Lens::load_with(&model.model_name(), &model.options()?)?;
        if let Some(e) = lens.quant_report().and_then(|r| r.cache_write_error.as_ref()) {
            eprintln!("warning: {e}");
        }
        Ok(lens)
    };
    let handle = server::start(load, opts).with_context(|| format!("serving {}", a.model.model_name()))?;
    eprintln!(
        "serve: {} · loaded in {:.1} s · answering on {} (mode {mode:o}{}) · pid {}",
        handle.hello().summary,
        t0.elapsed().as_secs_f64(),
        a.socket.display(),
        a.group.as_deref().map(|g| format!(", group {g}")).unwrap_or_default(),
        std::process::id()
    );
    eprintln!("serve: students set MOE_LENS_SERVER={} (stop with Ctrl-C or SIGTERM)", a.socket.display());
    handle.wait();
    Ok(())
}

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// The server's socket.
    #[arg(long)]
    server: PathBuf,
    /// Simulated students, each with its own connection (as each notebook kernel has).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Mean think time between a student's requests, milliseconds (each waits 0.5–1.5 × this).
    #[arg(long, default_value_t = 500)]
    think_ms: u64,
    /// Sentences in each student's scan (notebook 02's kind of request, made small).
    #[arg(long, default_value_t = 24)]
    scan_sentences: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one simulated student does, in turn: notebook 01's traces and generation, notebook 02's
/// trace and scan.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Trace,
    Generate,
    Scan,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Trace => "trace",
            Kind::Generate => "generate",
            Kind::Scan => "scan",
        }
    }
}

const SCRIPT: [Kind; 6] = [Kind::Trace, Kind::Trace, Kind::Generate, Kind::Trace, Kind::Trace, Kind::Scan];

struct Outcome {
    latencies: BTreeMap<Kind, Vec<f64>>,
    errors: Vec<String>,
}

fn student(i: usize, a: &LoadtestArgs, sentences: &[Sentence], deadline: Instant) -> Outcome {
    let mut out = Outcome { latencies: BTreeMap::new(), errors: Vec::new() };
    let lens = match Lens::connect(&a.server) {
        Ok(l) => l,
        Err(e) => {
            out.errors.push(format!("student {i}: connect: {e}"));
            return out;
        }
    };
    let scan_opts = ScanOptions { progress: false, ..ScanOptions::default() };
    let n = sentences.len().max(1);
    let mut step = i; // students start at different places of the script
                      // a small deterministic generator for think times (xorshift), different per student
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    while Instant::now() < deadline {
        let kind = SCRIPT[step % SCRIPT.len()];
        let t = Instant::now();
        let r = match kind {
            Kind::Trace => lens.trace(&sentences[step % n].text).map(drop),
            Kind::Generate => lens.generate("The capital of France is", 10).map(drop),
            Kind::Scan => {
                let start = (step * 7) % n;
                let part: Vec<Sentence> =
                    sentences.iter().cycle().skip(start).take(a.scan_sentences).cloned().collect();
                lens.scan(&part, &scan_opts).map(drop)
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(()) => out.latencies.entry(kind).or_default().push(ms),
            Err(e) => out.errors.push(format!("student {i}: {}: {e}", kind.name())),
        }
        step += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let think = a.think_ms as f64 * (0.5 + (x % 1000) as f64 / 1000.0);
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(Duration::from_secs_f64(think / 1e3).min(left));
    }
    out
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run_loadtest(a: LoadtestArgs) -> anyhow::Result<()> {
    if a.clients == 0 || !a.duration.is_finite() || a.duration <= 0.0 {
        bail!("--clients and --duration must be positive");
    }
    let sentences = corpus::builtin()?;
    let probe = Lens::connect(&a.server)?;
    println!("loadtest: {} · {} students · {:.0} s · think {} ms", probe, a.clients, a.duration, a.think_ms);
    let before = probe.server_stats()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.duration);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.clients)
            .map(|i| {
                s.spawn({
                    let (a, sentences) = (&a, &sentences);
                    move || student(i, a, sentences, deadline)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Outcome {
                    latencies: BTreeMap::new(),
                    errors: vec!["a student thread panicked".into()],
                })
            })
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let after = probe.server_stats()?;
    let mut all: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    let mut errors = Vec::new();
    for o in outcomes {
        for (k, v) in o.latencies {
            all.entry(k).or_default().extend(v);
        }
        errors.extend(o.errors);
    }
    let total: usize = all.values().map(Vec::len).sum();
    println!("{:<9} {:>7} {:>9} {:>9} {:>9} {:>9}", "request", "count", "p50 ms", "p95 ms", "p99 ms", "max ms");
    let mut per_kind = serde_json::Map::new();
    for (k, v) in &mut all {
        v.sort_by(f64::total_cmp);
        let (p50, p95, p99, max) =
            (percentile(v, 50.0), percentile(v, 95.0), percentile(v, 99.0), percentile(v, 100.0));
        println!("{:<9} {:>7} {p50:>9.1} {p95:>9.1} {p99:>9.1} {max:>9.1}", k.name(), v.len());
        per_kind.insert(
            k.name().into(),
            serde_json::json!({"count": v.len(), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max}),
        );
    }
    println!("throughput: {:.1} requests/s ({total} in {wall:.1} s) · errors: {}", total as f64 / wall, errors.len());
    let rss = after.rss_bytes.map(gib).unwrap_or_else(|| "?".into());
    let peak = after.peak_rss_bytes.map(gib).unwrap_or_else(|| "?".into());
    print!("server: resident memory {rss} (peak {peak})");
    if let Some((free, totalm)) = after.gpu_memory {
        print!(" · GPU memory used {} of {}", gib(totalm.saturating_sub(free)), gib(totalm));
    }
    println!(" · requests dropped (client gone) {} · server errors {}", after.dropped, after.errors - before.errors);
    let (batches, batched) = (after.trace_batches - before.trace_batches, after.batched_traces - before.batched_traces);
    let mean = if batches > 0 { batched as f64 / batches as f64 } else { 0.0 };
    println!(
        "batching: at most {} traces per pass · {batched} traces ran in {batches} shared passes (mean {mean:.1})",
        after.batch_traces
    );
    for e in errors.iter().take(10) {
        println!("error: {e}");
    }
    if let Some(p) = &a.json {
        let doc = serde_json::json!({
            "server": probe.to_string(),
            "clients": a.clients,
            "duration_s": wall,
            "think_ms": a.think_ms,
            "requests": total,
            "throughput_rps": total as f64 / wall,
            "per_kind": per_kind,
            "errors": errors,
            "server_rss_bytes": after.rss_bytes,
            "server_peak_rss_bytes": after.peak_rss_bytes,
            "gpu_memory_free_total": after.gpu_memory,
            "batch_traces": after.batch_traces,
            "trace_batches": batches,
            "batched_traces": batched,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if !errors.is_empty() {
        bail!("{} requests failed (the first ones are above)", errors.len());
    }
    Ok(())
}
