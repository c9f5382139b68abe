//! The `moe-lens` command.

mod bench;
mod export;
mod prepare;
mod report;
mod scan;
mod serve;
mod sweep;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use moe_lens::lab::{DeviceChoice, Lens, LoadOptions};
use moe_lens::plot::TracePlots;
use moe_lens::quant::{Quant, QuantChoice};
use moe_lens::spy::LayerRef;

#[derive(Parser)]
#[command(name = "moe-lens", version, about = "Spy on the routers of an OLMoE mixture-of-experts model")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Html,
}

/// The model and how to load it: the same four options, with the same defaults as the library's
/// `LoadOptions::default()`, in every subcommand that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (Hugging Face layout), llama.cpp .gguf file, Hub id (e.g.
    /// allenai/OLMoE-1B-7B-0924) or demo.
    #[arg(long = "model", value_name = "MODEL", required_unless_present = "server")]
    pub name: Option<String>,
    /// Run on a shared model server (`moe-lens serve --socket PATH`) instead of loading a model:
    /// only the forward passes go there; the model and its options are the server's.
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["name", "device", "dtype"])]
    pub server: Option<std::path::PathBuf>,
    /// auto (GPU if built with one and present, else CPU), cpu, cuda, cuda:N, metal (default:
    /// $MOE_LENS_DEVICE, else auto; a MIG slice: CUDA_VISIBLE_DEVICES=MIG-<uuid> and cuda).
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16 or f16 (default: f32 on CPU, bf16 on GPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Experts: auto (4-bit q4k on a GPU when the model's sizes allow it, else as stored), none, q8_0
    /// or q4k (quantized on first use, cached next to the model). A .gguf file keeps its own.
    #[arg(long, default_value = "auto")]
    pub quant: String,
}

impl ModelArgs {
    /// The load options these arguments name (one parser per option, in the library).
    pub fn options(&self) -> moe_lens::Result<LoadOptions> {
        let mut opts =
            LoadOptions::parse(self.device.as_deref().unwrap_or(""), self.dtype.as_deref().unwrap_or(""), &self.quant)?;
        if self.device.is_none() {
            // as the notebooks' load does: MOE_LENS_DEVICE when no --device is given
            opts.device = DeviceChoice::from_env()?;
        }
        Ok(opts)
    }

    /// The model as `Lens::load_with` takes it: `--model`, or `server:PATH` for `--server PATH`.
    pub fn model_name(&self) -> String {
        match (&self.server, &self.name) {
            (Some(s), _) => format!("{}{}", moe_lens::remote::SERVER_PREFIX, s.display()),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        }
    }

    /// Loads the model (or connects to the server).
    pub fn load(&self) -> anyhow::Result<Lens> {
        let opts = self.options()?;
        let model = &self.model_name();
        let lens = Lens::load_with(model, &opts).with_context(|| match opts.quant {
            QuantChoice::Fixed(q) if q != Quant::None => format!("loading {model} with {q} experts"),
            _ => format!("loading {model}"),
        })?;
        if let Some(e) = lens.quant_report().and_then(|r| r.cache_write_error.as_ref()) {
            // the load worked, but the next one will quantize again: say where and what to do
            eprintln!("warning: {e}");
        }
        Ok(lens)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one text and show, per token, the experts each router chose.
    Trace {
        #[command(flatten)]
        model: ModelArgs,
        /// The text to trace.
        #[arg(long)]
        text: String,
        /// Layer for the table: index or hook name (default: the last layer).
        #[arg(long)]
        layer: Option<String>,
        /// table (one layer, readable), json (every layer, the export schema) or html (every layer in
        /// one self-contained interactive page: `> view.html`, open it in a browser; --layer is the
        /// layer it starts on).
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        #[command(flatten)]
        edits: sweep::InterventionArgs,
    },
    /// Run a corpus through the model in batches and count, per layer and language, how often each
    /// expert is chosen; resumable (run it again to continue) and shardable (--shard i/n).
    Scan(scan::ScanArgs),
    /// Sum the outputs of `scan --shard i/n` runs into one directory.
    Merge(scan::MergeArgs),
    /// For an instructor, once: download a model into the (shared) Hugging Face cache and write its
    /// quantized experts' cache, readable by everyone, so that students' loads only read.
    Prepare(prepare::PrepareArgs),
    /// Check the set-up, one line per check with what to fix: kernel and shared install, CUDA build,
    /// GPUs, MOE_LENS_DEVICE, the model and its caches, the tokenizer, the lab's folder, memory.
    /// Exits 1 when a check fails.
    Doctor,
    /// Compare two finished scans of the same corpus token by token (two models, precisions or
    /// checkpoints): per layer, top-k set agreement, mean overlap, top-1 agreement, the
    /// Jensen–Shannon divergence of the expert counts, and whether the language study's verdict
    /// changes.
    CompareScans {
        /// The first scan's --out directory.
        dir_a: std::path::PathBuf,
        /// The second scan's --out directory.
        dir_b: std::path::PathBuf,
        /// Also write the table as CSV to this file.
        #[arg(long)]
        csv: Option<std::path::PathBuf>,
    },
    /// Time loading, single-sentence traces, a sentence loop, batched counting and generation on a
    /// model directory and token-id sentences (see bench/run_gpu.sh).
    Bench(bench::BenchArgs),
    /// Ablate each expert one text routes to, one at a time, and rank them by the change in a
    /// continuation's log-probability (JSON and CSV in --out).
    Sweep(sweep::SweepArgs),
    /// Hold one model and answer many clients over a Unix socket: the class's notebooks with
    /// MOE_LENS_SERVER=SOCKET, the command line with --server SOCKET (see INSTRUCTORS.md).
    Serve(serve::ServeArgs),
    /// N simulated students (traces, a generation, a small scan, with think time) against a running
    /// server: latency percentiles per request type, throughput, errors, the server's memory.
    Loadtest(serve::LoadtestArgs),
    /// Write a finished scan's expert cards as a static, searchable HTML site (offline, one file
    /// per page): per (layer, expert) its top tokens in context, languages and scripts,
    /// co-activation partners, consecutive-token rate and, with --sweep, its ablation effect; an
    /// overview per layer.
    Report(report::ReportArgs),
    /// Write a finished scan's tidy CSV tables (metrics.csv and the routing analyses' CSVs) as
    /// Parquet files with the same columns (metrics.parquet, coactivation.parquet, …).
    Export(export::ExportArgs),
}

fn main() -> ExitCode {
    // candle's CPU thread pool spins this many rounds before parking a worker (default 25,000). On a
    // machine of few cores, shared with other work, or when the GPU does the work, spinning only takes
    // cores from others: spin briefly there. An explicit setting always wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none()
        && std::thread::available_parallelism().map_or(1, |n| n.get()) <= 4
    {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000");
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, but without a cause that the
/// message before it already quotes (moe-lens errors include their I/O cause's text).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Trace { model, text, layer, format, edits } => {
            let lens = model.load()?;
            let layers = lens.config().num_hidden_layers;
            let layer = match layer {
                Some(l) => LayerRef::Name(l).index(layers)?,
                None => layers.saturating_sub(1),
            };
            let trace = lens.intervene(&edits.interventions()?).trace(&text)?;
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{}", trace.to_json()?)?,
                Format::Html => write!(out, "{}", trace.explore()?.layer(layer)?.html_page()?)?,
                Format::Table => {
                    writeln!(out, "{} · {} · {} tokens", lens.name(), lens.hooks(), trace.tokens.len())?;
                    if !trace.interventions.is_empty() {
                        writeln!(out, "interventions: {}", trace.interventions)?;
                    }
                    write!(out, "{}", trace.top_k_table(layer)?)?;
                }
            }
        }
        Cmd::Scan(args) => scan::run_scan(args)?,
        Cmd::Merge(args) => scan::run_merge(args)?,
        Cmd::Bench(args) => bench::run_bench(args)?,
        Cmd::Sweep(args) => sweep::run_sweep(args)?,
        Cmd::Serve(args) => serve::run_serve(args)?,
        Cmd::Loadtest(args) => serve::run_loadtest(args)?,
        Cmd::Report(args) => report::run_report(args)?,
        Cmd::Export(args) => export::run_export(args)?,
        Cmd::Prepare(args) => prepare::run_prepare(args)?,
        Cmd::Doctor => {
            let report = moe_lens::doctor::doctor()?;
            print!("{report}");
            if report.failed() {
                anyhow::bail!("a check failed: see the FAIL lines above and what they say to fix");
            }
        }
        Cmd::CompareScans { dir_a, dir_b, csv } => {
            let c = moe_lens::study::scan_compare::compare_scan_dirs(&dir_a, &dir_b)?;
            println!("{c}");
            if let Some(p) = csv {
                std::fs::write(&p, c.to_csv()).with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    Ok(())
}
