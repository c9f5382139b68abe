//! `MOE_LENS_MEMORY_LIMIT` (issue #14: an instructor caps what one student's load may take): below
//! what the test checkpoint needs, the load is refused before anything is allocated, with the
//! numbers and the cap named; above it, the same load goes ahead. One test in its own binary: it
//! sets a process-wide variable.

use std::path::{Path, PathBuf};

use moe_lens::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

#[test]
fn a_load_above_the_memory_limit_is_refused_and_one_below_it_runs() {
    let model = fixture("olmoe-narrow");
    let model = model.to_str().expect("the fixture path is UTF-8");
    std::env::set_var("MOE_LENS_MEMORY_LIMIT", "64K");
    let refused = match load_with_quant(model, "none") {
        Ok(_) => panic!("a 64 KiB cap must refuse the test checkpoint"),
        Err(e) => e,
    };
    let text = refused.to_string();
    assert!(matches!(refused, Error::OutOfMemory { .. }), "{refused:?}");
    assert!(text.contains("MOE_LENS_MEMORY_LIMIT caps a load at 0.0 GiB") && text.contains("it needs about"), "{text}");
    assert!(text.contains("nothing was allocated"), "{text}");
    std::env::set_var("MOE_LENS_MEMORY_LIMIT", "4G");
    let lens = load_with_quant(model, "none").expect("under a 4 GiB cap the test checkpoint loads");
    assert!(lens.trace("Hello").is_ok());
    std::env::set_var("MOE_LENS_MEMORY_LIMIT", "lots");
    let bad = load_with_quant(model, "none").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(bad.contains("write it as 8G"), "{bad}");
    std::env::remove_var("MOE_LENS_MEMORY_LIMIT");
}
