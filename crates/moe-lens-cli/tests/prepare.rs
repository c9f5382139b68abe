//! `moe-lens prepare` (issue #14: a shared, read-only model): the instructor writes the quantized
//! cache once; a student's load then reads it, from the model's folder or from
//! MOE_LENS_QUANT_CACHE_DIR, without writing anything; a load that cannot write its cache still
//! routes exactly as a cached one (the reference: an uninterrupted run with a writable cache) and
//! says where it tried and what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::checkpoint;

fn moe_lens(args: &[&str], cache_dir: Option<&Path>) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-lens"));
    c.args(args).env_remove("MOE_LENS_QUANT_CACHE_DIR").env_remove("MOE_LENS_DEVICE");
    if let Some(d) = cache_dir {
        c.env("MOE_LENS_QUANT_CACHE_DIR", d);
    }
    let o = c.output().unwrap();
    (o.status.success(), String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
}

fn trace(model: &Path, cache_dir: Option<&Path>) -> (bool, String, String) {
    let m = model.to_str().unwrap();
    let args =
        ["trace", "--model", m, "--text", "Hello 안녕하세요", "--device", "cpu", "--quant", "q8_0", "--format", "json"];
    moe_lens(&args, cache_dir)
}

/// Every file under `dir` with its modification time and size: "nothing was written".
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (e.path(), m.len(), m.modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn prepared_caches_are_read_without_writing_and_an_unwritable_cache_is_explained() {
    let w = std::env::temp_dir().join(format!("moe-lens-prepare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&w);
    let model = w.join("model");
    checkpoint(&model);
    let m = model.to_str().unwrap();

    // the reference: a load that quantizes and caches in a folder of its own
    let own = w.join("own");
    let (ok, reference, err) = trace(&model, Some(&own));
    assert!(ok && !err.contains("warning"), "{err}");

    // 1. prepare into a shared folder; a student reading it writes nothing and routes the same
    let shared = w.join("shared");
    let (ok, out, err) =
        moe_lens(&["prepare", "--model", m, "--quant", "q8_0", "--cache-dir", shared.to_str().unwrap()], None);
    assert!(ok, "{err}");
    let cache = shared.join("moe-lens.q8_0.gguf");
    assert!(out.contains("written now") && out.contains(&cache.display().to_string()), "{out}");
    assert!(out.contains(&format!("export MOE_LENS_QUANT_CACHE_DIR={}", shared.display())), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o444, 0o444, "the prepared cache is readable by all: {mode:o}");
        // students have no write access (as root this cannot be enforced; the listing below checks
        // that nothing was written either way)
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let before = listing(&shared);
    let (ok, got, err) = trace(&model, Some(&shared));
    assert!(ok && !err.contains("warning"), "{err}");
    assert_eq!(got, reference);
    assert_eq!(listing(&shared), before, "a load from the prepared cache writes nothing");
    let (ok, out, err) =
        moe_lens(&["prepare", "--model", m, "--quant", "q8_0", "--cache-dir", shared.to_str().unwrap()], None);
    assert!(ok && out.contains("already prepared, kept"), "{out}{err}");

    // 2. prepare into the model's folder (the default); a student with a cache folder of their own
    // set still reads the model's, and writes nothing in theirs
    let (ok, out, err) = moe_lens(&["prepare", "--model", m, "--quant", "q8_0"], None);
    assert!(ok && model.join("moe-lens.q8_0.gguf").is_file(), "{out}{err}");
    assert!(!out.contains("MOE_LENS_QUANT_CACHE_DIR="), "{out}");
    let empty = w.join("student");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, got, err) = trace(&model, Some(&empty));
    assert!(ok && !err.contains("warning"), "{err}");
    assert_eq!(got, reference);
    assert!(listing(&empty).is_empty(), "the model folder's cache was read: {:?}", listing(&empty));
    std::fs::remove_file(model.join("moe-lens.q8_0.gguf")).unwrap();

    // 3. no cache anywhere and none can be written (a folder that cannot be created, even by root):
    // the load works, routes as the reference, and says where it tried and how to fix it
    let blocked = model.join("config.json").join("cache");
    let (ok, got, err) = trace(&model, Some(&blocked));
    assert!(ok, "{err}");
    assert_eq!(got, reference);
    for want in [
        "warning: could not write the quantized cache",
        &blocked.display().to_string(),
        "moe-lens prepare --model",
        "MOE_LENS_QUANT_CACHE_DIR",
    ] {
        assert!(err.contains(want), "{want:?} missing in: {err}");
    }

    // 4. the same through permissions, where they apply (not as root)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = w.join("readonly");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), b"x").is_ok() {
            eprintln!("note: running as root, a 0555 folder is writable: the permission case is skipped (case 3 covers the message)");
        } else {
            let (ok, got, err) = trace(&model, Some(&ro));
            assert!(ok && got == reference, "{err}");
            assert!(
                err.contains("could not write the quantized cache") && err.contains(&ro.display().to_string()),
                "{err}"
            );
        }
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _ = std::fs::remove_dir_all(&w);
}
