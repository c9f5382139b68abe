//! The committed fixture checkpoints as scratch copies, for tests that break a model on purpose.

use std::fs;
use std::path::{Path, PathBuf};

use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::DType;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An empty scratch folder `name` of this test process, under `moe-lens-<prefix>-<pid>`.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let d = scratch_root(prefix).join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Where `scratch(prefix, …)` folders live (for removing them all at the end).
pub fn scratch_root(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("moe-lens-{prefix}-{}", std::process::id()))
}

/// A copy of the fixture model `name` (with OLMoE's tokenizer) in `dst`, to break in one way.
pub fn copy_fixture_to(name: &str, dst: PathBuf) -> PathBuf {
    let src = root().join("tests/fixtures").join(name);
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let tok = root().join("tests/data/tokenizer/tokenizer.json");
    assert!(tok.exists(), "run tests/setup-data.sh first");
    fs::copy(tok, dst.join("tokenizer.json")).unwrap();
    dst
}

/// CPU, float32: the options every reference comparison uses.
pub fn cpu() -> LoadOptions {
    LoadOptions { device: DeviceChoice::Cpu, dtype: Some(DType::F32), ..Default::default() }
}

pub fn load_dir(dir: &Path) -> Result<Lens> {
    Lens::load_with(dir.to_str().unwrap(), &cpu())
}

/// Rewrites `dir/config.json` through `f`.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}
