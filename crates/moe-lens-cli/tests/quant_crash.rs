//! A quantized cache is written atomically: `moe-lens trace --quant q8_0` killed (SIGKILL) at many
//! points of its run (first runs killed at 1/11 … 10/11 of an uninterrupted run's time, moved earlier when a run ends first) — loading, quantizing, writing the cache — never leaves a cache that loads
//! wrong. After every kill, the next run's routing (the JSON export) is byte for byte that of an
//! uninterrupted run, whether it used a cache or rebuilt it; and no temporary file is mistaken for
//! the cache.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::checkpoint;

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
