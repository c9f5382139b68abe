//! A quantized cache is written atomically: `moe-lens trace --quant q8_0` killed (SIGKILL) at many
//! points of its run (first runs killed at 1/11 … 10/11 of an uninterrupted run's time, moved earlier when a run ends first) — loading, quantizing, writing the cache — never leaves a cache that loads
//! wrong. After every kill, the next run's routing (the JSON export) is byte for byte that of an
//! uninterrupted run, whether it used a cache or rebuilt it; and no temporary file is mistaken for
//! the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const V: usize = 50304; // ≥ the tokenizer's ids
const H: usize = 256;
const I: usize = 256;
const L: usize = 4;
const E: usize = 16;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes a safetensors file by hand (header JSON + little-endian f32 data).
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, (shape, data)) in tensors {
        let end = at + data.len() * 4;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, end]}));
        at = end;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + at);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, data) in tensors.values() {
        for x in data {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, out).unwrap();
}

/// A random OLMoE checkpoint whose sizes allow Q8_0, with OLMoE's tokenizer.
fn checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |shape: &[usize], scale: f32, shift: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                shift + scale * (((seed >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0)
            })
            .collect();
        (shape.to_vec(), data)
    };
    let lin = 1.5 * (3.0f32 / H as f32).sqrt();
    let mut t = BTreeMap::new();
    t.insert("model.embed_tokens.weight".to_string(), rnd(&[V, H], 1.0, 0.0));
    t.insert("model.norm.weight".to_string(), rnd(&[H], 0.2, 1.0));
    for l in 0..L {
        let p = format!("model.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"] {
            t.insert(format!("{p}.{n}.weight"), rnd(&[H], 0.2, 1.0));
        }
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.insert(format!("{p}.self_attn.{n}.weight"), rnd(&[H, H], lin, 0.0));
        }
        t.insert(format!("{p}.mlp.gate.weight"), rnd(&[E, H], lin, 0.0));
        for e in 0..E {
            t.insert(format!("{p}.mlp.experts.{e}.gate_proj.weight"), rnd(&[I, H], lin, 0.0));
            t.insert(format!("{p}.mlp.experts.{e}.up_proj.weight"), rnd(&[I, H], lin, 0.0));
            t.insert(format!("{p}.mlp.experts.{e}.down_proj.weight"), rnd(&[H, I], lin, 0.0));
        }
    }
    write_safetensors(&dir.join("model.safetensors"), &t);
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type":"olmoe","vocab_size":{V},"hidden_size":{H},"intermediate_size":{I},"num_hidden_layers":{L},
            "num_attention_heads":4,"num_key_value_heads":4,"num_experts":{E},"num_experts_per_tok":4,
            "max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}}"#
        ),
    )
    .unwrap();
    let tok = root().join("tests/data/tokenizer/tokenizer.json");
    assert!(tok.exists(), "run tests/setup-data.sh first");
    std::fs::copy(tok, dir.join("tokenizer.json")).unwrap();
}

fn trace(model: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.args(["trace", "--model"])
        .arg(model)
        .args(["--text", "Hello 안녕하세요 こんにちは", "--device", "cpu", "--quant", "q8_0", "--format", "json"])
        .env("MOE_LENS_QUANT_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn killed_while_quantizing_or_writing_the_cache_never_leaves_a_cache_that_loads_wrong() {
    let w = std::env::temp_dir().join(format!("moe-lens-quant-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&w);
    let model = w.join("model");
    checkpoint(&model);

    // the reference: an uninterrupted first run (quantizes, writes the cache)
    let fresh = w.join("cache-fresh");
    let reference = run_ok(&mut trace(&model, &fresh));
    let cache_file = fresh.join("moe-lens.q8_0.gguf");
    assert!(cache_file.exists());
    assert_eq!(run_ok(&mut trace(&model, &fresh)), reference, "a cache hit routes as the fresh quantization");

    // an uninterrupted first run's duration: the fastest of three once the files are in the page
    // cache (the very first run reads them from disk and can take twice as long, which put half the
    // kills after the end on a CI machine)
    let mut full = Duration::MAX;
    for k in 0..3 {
        let dir = w.join(format!("cache-timing-{k}"));
        let start = Instant::now();
        let out = run_ok(&mut trace(&model, &dir));
        full = full.min(start.elapsed());
        assert!(out == reference, "a fresh quantization routes differently from the first one");
    }

    // kill first runs (empty cache directory) at points spread over that duration; after each
    // kill the cache file is absent or whole, and a complete run gives the reference routing.
    // A kill that comes after the run ended still checks all that, but does not count; the points
    // then move earlier (a loaded machine), until 10 kills landed inside a run or 25 tries.
    let cache = w.join("cache");
    let (mut killed_mid_run, mut mid_write, mut after_write, mut tries) = (0, 0, 0, 0);
    let mut scale = 1.0f64;
    while killed_mid_run < 10 && tries < 25 {
        tries += 1;
        let at = full.mul_f64(scale * f64::from(killed_mid_run + 1) / 11.0);
        let mut child = trace(&model, &cache).spawn().unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        } else {
            scale *= 0.8;
        }
        let _ = child.kill();
        child.wait().unwrap();
        // whatever the moment, the cache file is either absent or whole
        let left = cache.join("moe-lens.q8_0.gguf");
        let tmp_left = std::fs::read_dir(&cache)
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains(".tmp.")))
            .unwrap_or(false);
        mid_write += usize::from(tmp_left);
        let after_write_now = left.exists();
        after_write += usize::from(after_write_now);
        if left.exists() {
            assert!(
                std::fs::read(&left).unwrap() == std::fs::read(&cache_file).unwrap(),
                "a kill at {at:?} left a partial cache file"
            );
        }
        let again = run_ok(&mut trace(&model, &cache));
        assert!(again == reference, "after a kill at {at:?} the routing differs from an uninterrupted run");
        // a rebuild cleans up the temporary file a killed writer left (it can be gigabytes)
        if !after_write_now {
            let tmp_now = std::fs::read_dir(&cache)
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains(".tmp."));
            assert!(!tmp_now, "a temporary cache file was left behind after the rebuild");
        }
        let _ = std::fs::remove_dir_all(&cache);
    }
    eprintln!(
        "{killed_mid_run} of {tries} runs killed before they finished (uninterrupted run: {full:?}, last scale {scale:.2}); \
         {mid_write} left a temporary cache file (killed while writing it), {after_write} a complete cache"
    );
    assert!(killed_mid_run >= 7, "too few kills landed inside a run ({killed_mid_run} of {tries})");
    let _ = std::fs::remove_dir_all(&w);
}
