//! `moe-lens report`: the expert cards of a finished scan as a static, self-contained HTML site
//! (`moe_lens::plot::cards`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use moe_lens::hub::{self, HubSettings};
use moe_lens::plot::cards::{CardOptions, ExpertCards};
use moe_lens::study::checkpoint::read_state;
use moe_lens::tokens::Tokenizer;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The --out directory of a finished `moe-lens scan` or `moe-lens merge`.
    scan_dir: PathBuf,
    /// Folder for the site (index.html, layer-LL.html, lLL-eEE.html); created if missing.
    #[arg(long)]
    out: PathBuf,
    /// The tokenizer.json for token labels and contexts (default: the scanned model's, found
    /// without network: a model directory, or a Hub id already in the cache).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The model whose tokenizer to use, instead of the one the scan recorded.
    #[arg(long)]
    model: Option<String>,
    /// An importance sweep (sweep.json of `moe-lens sweep --out`) whose ablation effects the cards
    /// show; repeatable.
    #[arg(long)]
    sweep: Vec<PathBuf>,
    /// Top tokens per expert.
    #[arg(long, default_value_t = 10)]
    top_tokens: usize,
    /// Contexts shown per top token.
    #[arg(long, default_value_t = 3)]
    contexts: usize,
    /// Token positions shown on each side of a token in its context.
    #[arg(long, default_value_t = 6)]
    window: usize,
}

/// The tokenizer: `--tokenizer`, else the model's (`--model` or the scan's), never downloaded.
fn tokenizer(a: &ReportArgs) -> anyhow::Result<Option<Tokenizer>> {
    if let Some(p) = &a.tokenizer {
        return Ok(Some(Tokenizer::from_file(p)?));
    }
    let model = match &a.model {
        Some(m) => m.clone(),
        None => match read_state(&a.scan_dir)? {
            Some(st) if !st.run.model.is_empty() => st.run.model,
            _ => {
                eprintln!("report: the scan names no model; tokens are shown as ids (give --tokenizer or --model)");
                return Ok(None);
            }
        },
    };
    let settings = HubSettings { offline: true, ..HubSettings::from_env() };
    let found = hub::resolve_with(&model, &settings).map(|f| f.tokenizer().map(Path::to_path_buf));
    match found {
        Ok(Some(p)) => Ok(Some(Tokenizer::from_file(&p).with_context(|| format!("the tokenizer of {model}"))?)),
        Ok(None) | Err(_) => {
            let why = match found {
                Err(e) => e.to_string(),
                _ => "it has no tokenizer.json".into(),
            };
            eprintln!(
                "report: no tokenizer for {model} without network ({why}); tokens are shown as ids: give --tokenizer FILE or --model DIR for labels and contexts"
            );
            Ok(None)
        }
    }
}

pub fn run_report(a: ReportArgs) -> anyhow::Result<()> {
    let tok = tokenizer(&a)?;
    let opts =
        CardOptions { top_tokens: a.top_tokens, contexts: a.contexts, window: a.window, ..CardOptions::default() };
    let mut cards = ExpertCards::from_scan_dir_with(&a.scan_dir, tok.as_ref(), &opts)
        .with_context(|| format!("reading the scan {}", a.scan_dir.display()))?;
    for s in &a.sweep {
        cards = cards.with_sweep_file(s)?;
    }
    let pages = cards.write_site(&a.out)?;
    eprintln!(
        "report: wrote {pages} pages in {} (open {} in a browser; nothing is loaded from the network)",
        a.out.display(),
        a.out.join("index.html").display()
    );
    Ok(())
}
