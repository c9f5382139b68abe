//! `moe-lens bench`: times the pipeline on a model directory (config.json + safetensors; no tokenizer
//! needed) over given token-id sentences, and dumps routing for agreement checks. bench/run_gpu.sh
//! runs it next to the Python lab's pipeline on the same model and card.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_lens::config::Config;
use moe_lens::gguf;
use moe_lens::olmoe::{Olmoe, Tuning};
use moe_lens::quant::{self, Quant, QuantChoice};
use moe_lens::spy::{RouterEvent, RouterSpy, RoutingCache, Step};
use moe_lens::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// --model: a model directory (config.json and *.safetensors; no tokenizer needed) or a
    /// llama.cpp .gguf file.
    #[command(flatten)]
    model: ModelArgs,
    /// JSON file: a list of sentences, each a list of token ids.
    #[arg(long)]
    sents: PathBuf,
    /// Where to write the results (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the top-k experts of the first --routing-n sentences (JSON), traced one by one.
    #[arg(long)]
    routing_out: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    routing_n: usize,
    /// How many sentences to run (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens (batch × longest) per batched forward call.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    /// Delete an existing quantization cache first, so the first load quantizes.
    #[arg(long)]
    fresh: bool,
    /// Also time the dense and grouped expert paths at several input sizes.
    #[arg(long)]
    sweep: bool,
    /// Skip the one-by-one loop over all sentences (slow on CPU).
    #[arg(long)]
    no_loop: bool,
    /// Only load once and dump the routing of the first --routing-n sentences (no timings).
    #[arg(long)]
    only_routing: bool,
    /// Where to write the router logits of the dumped sentences (JSON: [sentence][layer][row * E]).
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// With --only-routing: append one more entry to the dumps, a greedy generation (the first
    /// sentence's first 12 tokens, then 8 decode steps with the KV cache), its steps' rows in order.
    #[arg(long)]
    gen_routing: bool,
    /// Also dump the routing of the bf16 variants (unfused, eager scores) next to --routing-out, as
    /// `<stem>_<variant>.json`.
    #[arg(long)]
    variants: bool,
    /// Only load once and time N single-sentence traces (25 tokens) and N batched passes over the
    /// sentences (for profilers: nothing else runs).
    #[arg(long)]
    single_only: Option<usize>,
}

impl BenchArgs {
    /// The model directory or .gguf file.
    fn path(&self) -> PathBuf {
        PathBuf::from(self.model.model_name())
    }
}

/// Routing dumps of the forward-pass variants (see `--variants`).
fn dump_variants(
    a: &BenchArgs,
    m: &mut Olmoe,
    sents: &[Vec<u32>],
    device: &Device,
    k: usize,
    layers: usize,
) -> Result<()> {
    let Some(base) = &a.routing_out else { return Ok(()) };
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("route").to_string();
    let n = a.routing_n.min(sents.len());
    let keep = m.tuning().clone();
    for (name, fused, eager) in [("unfused", false, false), ("eager", true, true)] {
        m.set_tuning(Tuning { fused, eager_scores: eager, ..keep.clone() });
        let (dump, _) = dump_routing(m, &sents[..n], device, k, layers, false)?;
        std::fs::write(base.with_file_name(format!("{stem}_{name}.json")), serde_json::to_string(&dump)?)?;
    }
    m.set_tuning(keep);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn sync(d: &Device) -> Result<()> {
    d.synchronize()?;
    Ok(())
}

/// Counts, per layer, how often each expert is chosen; padding rows excluded. On a GPU the forward
/// pass hands over routing already copied to the host (one copy per call), so counting is on the host.
struct CountSpy {
    experts: usize,
    counts: Vec<u64>, // [layer * experts + e]
}

impl RouterSpy for CountSpy {
    fn on_route(&mut self, ev: &RouterEvent<'_>) -> moe_lens::Result<()> {
        let (_, k) = ev.top_k.dims2()?;
        let ids: Vec<u32> = ev.top_k.flatten_all()?.to_vec1()?;
        let base = ev.layer * self.experts;
        for (row, chosen) in ids.chunks(k.max(1)).enumerate() {
            if !ev.is_real(row) {
                continue;
            }
            for &e in chosen {
                if let Some(c) = self.counts.get_mut(base + e as usize) {
                    *c += 1;
                }
            }
        }
        Ok(())
    }
}

/// Per sentence, per layer: the top-k of each row; and the router logits (`[row * E]`) per layer.
type RoutingDump = (Vec<Vec<Vec<Vec<u32>>>>, Vec<Vec<Vec<f32>>>);

/// Top-k rows (and optionally logits) of the first sentences, traced one by one.
fn dump_routing(
    m: &Olmoe,
    sents: &[Vec<u32>],
    device: &Device,
    k: usize,
    layers: usize,
    logits: bool,
) -> Result<RoutingDump> {
    let mut dump = Vec::new();
    let mut lg = Vec::new();
    for s in sents {
        let mut cache = RoutingCache::new();
        m.forward(&Tensor::new(s.as_slice(), device)?.unsqueeze(0)?, None, None, Step::Prefill, Some(&mut cache))?;
        let mut per_layer = Vec::new();
        let mut per_layer_logits = Vec::new();
        for l in 0..layers {
            let r = &cache.get(l)?[0];
            per_layer.push(r.top_k.chunks(k).map(<[u32]>::to_vec).collect::<Vec<_>>());
            if logits {
                per_layer_logits.push(r.logits.clone());
            }
        }
        dump.push(per_layer);
        lg.push(per_layer_logits);
    }
    Ok((dump, lg))
}

/// The routing (top-k per row, router logits) of a greedy generation of 8 tokens after `prompt`,
/// every layer's rows of the prefill and of each decode step in order.
#[allow(clippy::type_complexity)]
fn generation_routing(
    m: &Olmoe,
    prompt: &[u32],
    device: &Device,
    k: usize,
    layers: usize,
) -> Result<(Vec<Vec<Vec<u32>>>, Vec<Vec<f32>>)> {
    if prompt.is_empty() {
        anyhow::bail!("--gen-routing needs at least one sentence");
    }
    let mut cache = RoutingCache::new();
    let mut kv = m.new_cache();
    let mut hidden =
        m.forward(&Tensor::new(prompt, device)?.unsqueeze(0)?, Some(&mut kv), None, Step::Prefill, Some(&mut cache))?;
    for n in 0..8 {
        let next = m.next_token_logits(&hidden)?.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        hidden = m.forward(&input, Some(&mut kv), None, Step::Decode(n), Some(&mut cache))?;
    }
    let (mut dump, mut lg) = (Vec::new(), Vec::new());
    for l in 0..layers {
        let (mut rows, mut logits) = (Vec::new(), Vec::new());
        for r in cache.get(l)? {
            rows.extend(r.top_k.chunks(k).map(<[u32]>::to_vec));
            logits.extend_from_slice(&r.logits);
        }
        dump.push(rows);
        lg.push(logits);
    }
    Ok((dump, lg))
}

/// The fused CUDA kernels against candle's own ops on the same model: relative difference of the
/// final hidden states (one sentence; one padded batch) and top-k agreement on 50 sentences; plus
/// the unfused single-sentence timings.
fn fused_check(
    m: &mut Olmoe,
    sents: &[Vec<u32>],
    input: &Tensor,
    device: &Device,
    k: usize,
    layers: usize,
) -> Result<Value> {
    let rel = |a: &Tensor, b: &Tensor| -> Result<f64> {
        let a = a.to_dtype(DType::F32)?;
        let b = b.to_dtype(DType::F32)?;
        let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let den = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
        Ok(f64::from(num / den.max(f32::MIN_POSITIVE)).sqrt())
    };
    let batch: Vec<&Vec<u32>> = sents.iter().take(8).collect();
    let tmax = batch.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut ids = vec![1u32; batch.len() * tmax];
    for (r, s) in batch.iter().enumerate() {
        ids[r * tmax..r * tmax + s.len()].copy_from_slice(s);
    }
    let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
    let binput = Tensor::from_vec(ids, (batch.len(), tmax), device)?;
    let n = 50.min(sents.len());
    let mut outs = Vec::new();
    let mut timings = Vec::new();
    let keep = m.tuning().clone();
    for on in [true, false] {
        m.set_tuning(Tuning { fused: on, ..keep.clone() });
        let single = m.forward(input, None, None, Step::Prefill, None)?;
        let padded = m.forward(&binput, None, Some(&lens), Step::Prefill, None)?;
        let (dump, _) = dump_routing(m, &sents[..n], device, k, layers, false)?;
        let mut ts = Vec::new();
        for _ in 0..12 {
            sync(device)?;
            let t = Instant::now();
            m.forward(input, None, None, Step::Prefill, None)?;
            sync(device)?;
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        timings.push(median(ts));
        outs.push((single, padded, dump));
    }
    m.set_tuning(keep);
    let (rows, same) = outs[0].2.iter().flatten().flatten().zip(outs[1].2.iter().flatten().flatten()).fold(
        (0usize, 0usize),
        |(r, s), (a, b)| {
            let mut a = a.clone();
            let mut b = b.clone();
            a.sort_unstable();
            b.sort_unstable();
            (r + 1, s + usize::from(a == b))
        },
    );
    Ok(json!({
        "single_hidden_rel_diff": rel(&outs[0].0, &outs[1].0)?,
        "padded_batch_hidden_rel_diff": rel(&outs[0].1, &outs[1].1)?,
        "top_k_rows": rows,
        "top_k_sets_equal_share": same as f64 / rows.max(1) as f64,
        "single_forward_ms_fused": timings[0],
        "single_forward_ms_unfused": timings[1],
    }))
}

/// A whole number from the environment, if set and valid.
fn env_usize(k: &str) -> Option<usize> {
    std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok())
}

/// The forward-pass switches from the environment (for comparisons in one run): `MOE_LENS_FUSED`,
/// `MOE_LENS_EAGER_SCORES` (1/true or 0/false), `MOE_LENS_DENSE_MAX`, `MOE_LENS_DEQUANT_MIN` (rows);
/// unset ones keep [`Tuning`]'s defaults. Every model the bench loads runs with it.
fn env_tuning() -> Tuning {
    let flag = |k: &str| std::env::var(k).ok().map(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let mut t = Tuning::default();
    if let Some(on) = flag("MOE_LENS_FUSED") {
        t.fused = on;
    }
    if let Some(on) = flag("MOE_LENS_EAGER_SCORES") {
        t.eager_scores = on;
    }
    if let Some(n) = env_usize("MOE_LENS_DENSE_MAX") {
        t.dense_max_tokens = n;
    }
    if let Some(n) = env_usize("MOE_LENS_DEQUANT_MIN") {
        t.dequant_min_tokens = n;
    }
    t
}

fn load(
    a: &BenchArgs,
    cfg: &Config,
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
    q: Quant,
) -> Result<(Olmoe, Value)> {
    let t = Instant::now();
    if moe_lens::hub::is_gguf_path(&a.path()) {
        let g = quant::open_gguf(&a.path(), device, dtype)?;
        sync(device)?;
        return Ok((
            g.model.with_tuning(env_tuning()),
            json!({"s": t.elapsed().as_secs_f64(), "report": {"gguf": a.path(), "experts": g.experts}}),
        ));
    }
    let (m, rep) = match q {
        Quant::None => (Olmoe::load(cfg, files, device, dtype)?, Value::Null),
        q => {
            let (m, r) = quant::load_quantized(cfg, files, &a.path(), device, dtype, q)?;
            (
                m,
                json!({"cache": r.cache, "cache_hit": r.cache_hit, "cache_rejected": r.cache_rejected, "cache_write_error": r.cache_write_error}),
            )
        }
    };
    sync(device)?;
    Ok((m.with_tuning(env_tuning()), json!({"s": t.elapsed().as_secs_f64(), "report": rep})))
}

pub fn run_bench(a: BenchArgs) -> Result<()> {
    let opts = a.model.options()?;
    let device = opts.device.open()?;
    let dtype = opts.dtype.unwrap_or(if device.is_cpu() { DType::F32 } else { DType::BF16 });
    let path = a.path();
    if moe_lens::hub::is_gguf_path(&path) {
        // a llama.cpp GGUF file: its own config and block types
        if let QuantChoice::Fixed(q @ (Quant::Q8_0 | Quant::Q4K)) = opts.quant {
            bail!("--quant {q} with a GGUF file: its experts are already quantized; leave --quant out");
        }
        let cfg = gguf::gguf_config(&path)?;
        return run_bench_with(a, cfg, vec![], Quant::None, device, dtype);
    }
    let cfg = Config::from_file(path.join("config.json"))?;
    let q = opts.quant.resolve(&cfg, &device, dtype);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .safetensors files in {}", path.display());
    }
    run_bench_with(a, cfg, files, q, device, dtype)
}

fn run_bench_with(
    a: BenchArgs,
    cfg: Config,
    files: Vec<PathBuf>,
    q: Quant,
    device: Device,
    dtype: DType,
) -> Result<()> {
    let text = std::fs::read_to_string(&a.sents).with_context(|| format!("reading {}", a.sents.display()))?;
    let mut sents: Vec<Vec<u32>> =
        serde_json::from_str(&text).context("sentences: a JSON list of lists of token ids")?;
    if let Some(n) = a.limit {
        sents.truncate(n);
    }
    if sents.is_empty() || sents.iter().any(|s| s.is_empty()) {
        bail!("need at least one sentence, none empty");
    }
    let mut res = serde_json::Map::new();
    res.insert("quant".into(), json!(q.name()));
    res.insert("dtype".into(), json!(format!("{dtype:?}")));
    res.insert("device".into(), json!(format!("{device:?}")));
    res.insert("sentences".into(), json!(sents.len()));
    let total_tokens: usize = sents.iter().map(Vec::len).sum();
    res.insert("tokens".into(), json!(total_tokens));
    res.insert("spin_limit".into(), json!(std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").ok()));
    for k in ["MOE_LENS_FUSED", "MOE_LENS_EAGER_SCORES", "MOE_LENS_DENSE_MAX", "MOE_LENS_DEQUANT_MIN"] {
        res.insert(k.to_lowercase(), json!(std::env::var(k).ok()));
    }
    res.insert("tuning".into(), json!(format!("{:?}", env_tuning())));
    let layers = cfg.num_hidden_layers;
    let e = cfg.num_experts;
    let k = cfg.num_experts_per_tok;

    if a.only_routing {
        let t = Instant::now();
        let (mut m, _) = load(&a, &cfg, &files, &device, dtype, q)?;
        res.insert("load_s".into(), json!(t.elapsed().as_secs_f64()));
        let n = a.routing_n.min(sents.len());
        let (mut dump, mut lg) = dump_routing(&m, &sents[..n], &device, k, layers, a.logits_out.is_some())?;
        if a.gen_routing {
            let (d, l) =
                generation_routing(&m, sents.first().map_or(&[][..], |s| &s[..s.len().min(12)]), &device, k, layers)?;
            dump.push(d);
            lg.push(l);
        }
        if let Some(p) = &a.routing_out {
            std::fs::write(p, serde_json::to_string(&dump)?)?;
        }
        if let Some(p) = &a.logits_out {
            std::fs::write(p, serde_json::to_string(&lg)?)?;
        }
        if a.variants {
            dump_variants(&a, &mut m, &sents, &device, k, layers)?;
        }
        let out = Value::Object(res);
        std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
        println!("{out}");
        return Ok(());
    }

    if let Some(reps) = a.single_only {
        let (m, first) = load(&a, &cfg, &files, &device, dtype, q)?;
        res.insert("load".into(), first);
        let single: Vec<u32> =
            sents.iter().find(|s| s.len() >= 25).map(|s| s[..25].to_vec()).unwrap_or_else(|| sents[0].clone());
        let input = Tensor::new(single.as_slice(), &device)?.unsqueeze(0)?;
        let mut ms = Vec::new();
        for i in 0..reps + 3 {
            sync(&device)?;
            let t = Instant::now();
            let mut cache = RoutingCache::new();
            m.forward(&input, None, None, Step::Prefill, Some(&mut cache))?;
            sync(&device)?;
            if i >= 3 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        res.insert("single_trace_ms_median".into(), json!(median(ms.clone())));
        res.insert("single_trace_ms_all".into(), json!(ms));
        let out = Value::Object(res);
        std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
        println!("{out}");
        return Ok(());
    }
    if a.fresh && q != Quant::None {
        let _ = std::fs::remove_file(quant::cache_path(&a.path(), q));
    }
    let (m, first) = load(&a, &cfg, &files, &device, dtype, q)?;
    eprintln!("load (first): {first}");
    res.insert("load_first".into(), first);
    drop(m);
    let (mut m, cached) = load(&a, &cfg, &files, &device, dtype, q)?;
    eprintln!("load (again/cached): {cached}");
    res.insert("load_cached".into(), cached);

    let ids_of = |s: &[u32]| -> Result<Tensor> { Ok(Tensor::new(s, &device)?.unsqueeze(0)?) };
    // single sentence of 25 tokens, as the Python lab
    let single: Vec<u32> =
        sents.iter().find(|s| s.len() >= 25).map(|s| s[..25].to_vec()).unwrap_or_else(|| sents[0].clone());
    let input = ids_of(&single)?;
    let mut trace_ms = Vec::new();
    let mut fwd_ms = Vec::new();
    for i in 0..23 {
        let t = Instant::now();
        let mut cache = RoutingCache::new();
        m.forward(&input, None, None, Step::Prefill, Some(&mut cache))?;
        sync(&device)?;
        if i >= 3 {
            trace_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let t = Instant::now();
        m.forward(&input, None, None, Step::Prefill, None)?;
        sync(&device)?;
        if i >= 3 {
            fwd_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if !device.is_cpu() && dtype == DType::BF16 && std::env::var("MOE_LENS_FUSED").is_err() {
        res.insert("fused_check".into(), fused_check(&mut m, &sents, &input, &device, k, layers)?);
    }
    res.insert("single_trace_ms_median".into(), json!(median(trace_ms.clone())));
    res.insert("single_forward_ms_median".into(), json!(median(fwd_ms)));
    res.insert("single_trace_ms_all".into(), json!(trace_ms));
    eprintln!("single: trace {:.2} ms", median(trace_ms));

    // one by one, routing copied to the host (what a trace keeps); keep top-k for the dump
    let mut dump: Vec<Vec<Vec<Vec<u32>>>> = Vec::new();
    let mut loop_counts = vec![0u64; layers * e];
    let loop_n = if a.no_loop { a.routing_n.min(sents.len()) } else { sents.len() };
    sync(&device)?;
    let t = Instant::now();
    for (si, s) in sents.iter().take(loop_n).enumerate() {
        let mut cache = RoutingCache::new();
        m.forward(&ids_of(s)?, None, None, Step::Prefill, Some(&mut cache))?;
        for l in 0..layers {
            let r = &cache.get(l)?[0];
            for &x in &r.top_k {
                loop_counts[l * e + x as usize] += 1;
            }
        }
        if si < a.routing_n {
            let mut per_layer = Vec::new();
            for l in 0..layers {
                let r = &cache.get(l)?[0];
                per_layer.push(r.top_k.chunks(k).map(<[u32]>::to_vec).collect::<Vec<_>>());
            }
            dump.push(per_layer);
        }
    }
    sync(&device)?;
    let loop_s = t.elapsed().as_secs_f64();
    res.insert("loop_sentences".into(), json!(loop_n));
    res.insert("loop_s".into(), json!(loop_s));
    eprintln!("loop over {loop_n}: {loop_s:.2} s");
    if let Some(p) = &a.routing_out {
        std::fs::write(p, serde_json::to_string(&dump)?)?;
    }

    // batched with counting on the device: sentences sorted by length, right-padded
    let mut order: Vec<usize> = (0..sents.len()).collect();
    order.sort_by_key(|&i| sents[i].len());
    let make_batches = |limit: usize| -> Vec<Vec<usize>> {
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        for &i in &order {
            let longest = sents[i].len(); // sorted: this one is the longest so far
            if !cur.is_empty() && (cur.len() + 1) * longest > limit {
                batches.push(std::mem::take(&mut cur));
            }
            cur.push(i);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        batches
    };
    let batches = make_batches(a.batch_tokens);
    let run_batched_with = |m: &Olmoe, batches: &[Vec<usize>], count: bool| -> Result<(f64, Vec<f32>)> {
        let mut spy = CountSpy { experts: e, counts: vec![0; layers * e] };
        sync(&device)?;
        let t = Instant::now();
        for b in batches {
            let tmax = b.iter().map(|&i| sents[i].len()).max().unwrap_or(1);
            let mut ids = vec![1u32; b.len() * tmax];
            let mut lens = Vec::with_capacity(b.len());
            for (r, &i) in b.iter().enumerate() {
                let s = &sents[i];
                ids[r * tmax..r * tmax + s.len()].copy_from_slice(s);
                lens.push(s.len());
            }
            let input = Tensor::from_vec(ids, (b.len(), tmax), &device)?;
            let lengths = if lens.iter().all(|&l| l == tmax) { None } else { Some(lens.as_slice()) };
            if count {
                m.forward(&input, None, lengths, Step::Prefill, Some(&mut spy))?;
            } else {
                m.forward(&input, None, lengths, Step::Prefill, None)?;
            }
        }
        sync(&device)?;
        let counts = spy.counts.iter().map(|&c| c as f32).collect();
        Ok((t.elapsed().as_secs_f64(), counts))
    };
    let run_batched = |m: &Olmoe| run_batched_with(m, &batches, true);
    run_batched(&m)?; // warm-up (kernels of new shapes)
    let (batch_s, counts) = run_batched(&m)?;
    if !device.is_cpu() && q == Quant::None {
        // where the time goes: the same batches without the spy (no routing copied to the host),
        // and other batch sizes
        let (nospy_s, _) = run_batched_with(&m, &batches, false)?;
        res.insert("batched_forward_only_s".into(), json!(nospy_s));
        let mut by_size = serde_json::Map::new();
        for limit in [2048usize, 8192, 16384] {
            let bs = make_batches(limit);
            run_batched_with(&m, &bs, true)?;
            let (s, _) = run_batched_with(&m, &bs, true)?;
            by_size.insert(limit.to_string(), json!({"calls": bs.len(), "s": s}));
        }
        res.insert("batched_by_batch_tokens".into(), Value::Object(by_size));
    }
    res.insert("batched_s".into(), json!(batch_s));
    res.insert("batched_calls".into(), json!(batches.len()));
    res.insert("batch_tokens".into(), json!(a.batch_tokens));
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    res.insert("batched_count_total".into(), json!(total));
    res.insert("batched_count_expected".into(), json!(total_tokens * k * layers));
    if !a.no_loop {
        // same counts as the one-by-one loop? (padding and batch shapes may flip near-ties)
        let diff: f64 = counts.iter().zip(&loop_counts).map(|(&c, &l)| (f64::from(c) - l as f64).abs()).sum();
        res.insert("batched_vs_loop_count_l1_share".into(), json!(diff / (2.0 * total.max(1.0))));
    }
    eprintln!("batched: {batch_s:.3} s in {} calls", batches.len());

    // greedy generation of 10 tokens after the 25-token prompt, routing of every step kept
    let gen = |m: &Olmoe| -> Result<(f64, Vec<u32>)> {
        sync(&device)?;
        let t = Instant::now();
        let mut cache = RoutingCache::new();
        let mut kv = m.new_cache();
        let mut hidden = m.forward(&input, Some(&mut kv), None, Step::Prefill, Some(&mut cache))?;
        let mut out = Vec::new();
        for n in 0..10 {
            let logits = m.next_token_logits(&hidden)?.flatten_all()?;
            let next = logits.argmax(0)?.to_scalar::<u32>()?;
            out.push(next);
            hidden = m.forward(
                &Tensor::new(&[next], &device)?.unsqueeze(0)?,
                Some(&mut kv),
                None,
                Step::Decode(n),
                Some(&mut cache),
            )?;
        }
        sync(&device)?;
        Ok((t.elapsed().as_secs_f64(), out))
    };
    gen(&m)?;
    let (gen_s, gen_ids) = gen(&m)?;
    res.insert("generate10_s".into(), json!(gen_s));
    res.insert("generate10_ids".into(), json!(gen_ids));
    eprintln!("generate 10: {gen_s:.3} s");

    if a.sweep && !device.is_cpu() {
        let mut rows = Vec::new();
        let keep = m.tuning().clone();
        for n in [1usize, 4, 8, 25, 64, 128, 256, 512, 1024, 2048] {
            let ids: Vec<u32> = (0..n).map(|i| 2 + ((i * 7919 + 13) % 50000) as u32).collect();
            let x = ids_of(&ids)?;
            let mut row = serde_json::Map::new();
            row.insert("tokens".into(), json!(n));
            // (name, dense_max, dequant_min): bf16 every expert densely or grouped; quantized
            // through our block-reading matmul (qmm) or expanded to bf16 for cuBLAS
            let modes: &[(&str, usize, usize)] = if q == Quant::None {
                &[("dense", usize::MAX, usize::MAX), ("grouped", 0, usize::MAX)]
            } else {
                &[("qmm", 0, usize::MAX), ("dequant_bf16", 0, 0)]
            };
            for &(name, dense, deq) in modes {
                m.set_tuning(Tuning { dense_max_tokens: dense, dequant_min_tokens: deq, ..keep.clone() });
                let mut ts = Vec::new();
                for i in 0..6 {
                    let t = Instant::now();
                    m.forward(&x, None, None, Step::Prefill, None)?;
                    sync(&device)?;
                    if i > 0 {
                        ts.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                row.insert(format!("{name}_ms"), json!(median(ts)));
            }
            eprintln!("sweep {row:?}");
            rows.push(Value::Object(row));
        }
        m.set_tuning(keep);
        res.insert("sweep".into(), json!(rows));
    }
    if a.variants {
        dump_variants(&a, &mut m, &sents, &device, k, layers)?;
    }
    let out = Value::Object(res);
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
    println!("{out}");
    Ok(())
}
