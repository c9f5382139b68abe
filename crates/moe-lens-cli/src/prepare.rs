//! `moe-lens prepare`: what an instructor runs once on a shared server so that students only read.
//! Downloads the model into the Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`) if it is not there,
//! writes the quantized experts' cache (`moe_lens::quant::prepare_cache`) next to the model or in
//! `--cache-dir`, makes both readable by everyone, and prints the settings to give the students.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use moe_lens::config::Config;
use moe_lens::hub::{self, ModelSource};
use moe_lens::quant::{self, Quant, QuantChoice};

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// Model directory, Hub id (e.g. allenai/OLMoE-1B-7B-0924; downloaded into the Hugging Face
    /// cache if missing) or llama.cpp .gguf file (nothing to quantize).
    #[arg(long)]
    model: String,
    /// Experts to prepare: q4k (what `auto` takes on a GPU and for OLMoE on a CPU), q8_0, auto (q4k
    /// when the model's sizes allow it) or none (download only).
    #[arg(long, default_value = "q4k")]
    quant: String,
    /// Folder for the quantized cache (students then set MOE_LENS_QUANT_CACHE_DIR to it); default:
    /// $MOE_LENS_QUANT_CACHE_DIR if set, else the model's own folder, where every load looks.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn run_prepare(a: PrepareArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let files = hub::resolve(&a.model).with_context(|| format!("finding {}", a.model))?;
    println!("model: {} in {}", a.model, files.dir.display());
    let mut shared: Vec<PathBuf> = files.weights().to_vec();
    shared.extend(files.config().map(Path::to_path_buf));
    shared.extend(files.tokenizer().map(Path::to_path_buf));
    let (config, weights) = match &files.source {
        ModelSource::Safetensors { config, weights, .. } => (config.clone(), weights.clone()),
        ModelSource::Gguf { path, .. } => {
            println!(
                "{} is a llama.cpp GGUF file: its experts are quantized already, nothing to prepare",
                path.display()
            );
            report_access(&shared);
            return Ok(());
        }
        ModelSource::Server { socket } => {
            anyhow::bail!("{} is a model server's socket: prepare the model the server loads", socket.display())
        }
    };
    let cfg = Config::from_file(&config)?;
    let q4k_ok = cfg.hidden_size.is_multiple_of(256) && cfg.intermediate_size.is_multiple_of(256);
    let quant = match a.quant.parse::<QuantChoice>()? {
        QuantChoice::Fixed(q) => q,
        QuantChoice::Auto if q4k_ok => Quant::Q4K,
        QuantChoice::Auto => Quant::None,
    };
    if quant == Quant::None {
        println!("experts: none to quantize (--quant {}); the model is in place", a.quant);
        report_access(&shared);
        return Ok(());
    }
    if let Some(d) = &a.cache_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating --cache-dir {}", d.display()))?;
    }
    println!(
        "experts: {quant}, quantizing if no valid cache is there (OLMoE: a minute or more, ~20 GB of host memory)"
    );
    let report = quant::prepare_cache(&cfg, &weights, &files.dir, a.cache_dir.as_deref(), quant)
        .with_context(|| format!("preparing {quant} experts for {}", a.model))?;
    if let Some(why) = &report.cache_rejected {
        println!("(an older cache was replaced: {why})");
    }
    make_readable(&report.cache);
    let size = std::fs::metadata(&report.cache).map(|m| m.len()).unwrap_or(0);
    println!(
        "cache: {} ({:.2} GiB, {}) in {:.0} s",
        report.cache.display(),
        size as f64 / (1u64 << 30) as f64,
        if report.cache_hit { "already prepared, kept" } else { "written now" },
        t0.elapsed().as_secs_f64()
    );
    shared.push(report.cache.clone());
    report_access(&shared);
    let dir = report.cache.parent().unwrap_or(Path::new("."));
    println!("\nFor the students (e.g. in /etc/environment, the spawner's environment or the lab's start line):");
    if let Ok(h) = std::env::var("HF_HOME") {
        println!("  export HF_HOME={h}");
    }
    if let Ok(h) = std::env::var("HF_HUB_CACHE") {
        println!("  export HF_HUB_CACHE={h}");
    }
    println!("  export HF_HUB_OFFLINE=1        # nobody downloads 14 GB again");
    println!("  export MOE_LENS_MODEL={}", a.model);
    println!("  export MOE_LENS_QUANT={quant}");
    if dir != files.dir {
        println!("  export MOE_LENS_QUANT_CACHE_DIR={}", dir.display());
    }
    Ok(())
}

/// A cache file the instructor wrote is meant for everyone: 0644 (folders are left as they are).
fn make_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode();
            if mode & 0o444 != 0o444 {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o444));
            }
        }
    }
}

/// Says which of `paths` other users cannot read (the file, or a folder on its way without `x`).
fn report_access(paths: &[PathBuf]) {
    let mut bad: Vec<String> = Vec::new();
    for p in paths {
        if let Some(why) = moe_lens::doctor::unreadable_by_others(p) {
            bad.push(why);
        }
    }
    bad.sort();
    bad.dedup();
    if bad.is_empty() {
        println!("access: every file above is readable by all users");
    } else {
        for b in &bad {
            println!("access: WARNING: {b}");
        }
        println!("        students cannot load it: chmod -R a+rX the folders named (or use a group they share)");
    }
}
