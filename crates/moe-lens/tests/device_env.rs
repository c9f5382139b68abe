//! `MOE_LENS_DEVICE` (issue #14: a GPU slice each): the default device of `load` and
//! `load_with_quant`, which the notebooks' load cell calls, set like `MOE_LENS_MODEL`. A bad value is
//! an error naming the variable; an explicit `LoadOptions` device wins over it. The reference for
//! `cuda` is what an explicit `DeviceChoice::Cuda(0)` does on this build (an error naming the missing
//! CUDA support on a CPU build, a load on cuda:0 on a GPU build). One test in its own binary: it
//! sets a process-wide variable.

use std::path::{Path, PathBuf};

use moe_lens::lab::{DeviceChoice, Lens, LoadOptions};
use moe_lens::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

#[test]
fn moe_lens_device_is_the_default_device_and_an_explicit_one_wins() {
    let model = fixture("olmoe-narrow");
    let model = model.to_str().expect("the fixture path is UTF-8");

    std::env::set_var("MOE_LENS_DEVICE", "cpu");
    let lens = load_with_quant(model, "none").expect("MOE_LENS_DEVICE=cpu loads on the CPU");
    assert!(lens.to_string().contains(" on cpu "), "{lens}");
    let lens = load(model).expect("load reads MOE_LENS_DEVICE too");
    assert!(lens.to_string().contains(" on cpu "), "{lens}");

    // cuda through the variable does exactly what an explicit cuda device does on this build
    std::env::set_var("MOE_LENS_DEVICE", "cuda");
    let explicit = Lens::load_with(model, &LoadOptions { device: DeviceChoice::Cuda(0), ..LoadOptions::default() });
    let from_env = load_with_quant(model, "none");
    match (explicit, from_env) {
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(b.to_string().contains("no CUDA support"), "{b}");
        }
        (Ok(a), Ok(b)) => {
            assert!(a.to_string().contains(" on cuda:0 ") && b.to_string().contains(" on cuda:0 "), "{a} / {b}")
        }
        (a, b) => panic!("explicit cuda and MOE_LENS_DEVICE=cuda differ: {:?} / {:?}", a.err(), b.err()),
    }

    // a bad value: a clear error naming the variable and the values it takes, from both entry points
    std::env::set_var("MOE_LENS_DEVICE", "gpu0");
    for e in [load_with_quant(model, "none").err(), load(model).err()] {
        let text = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("MOE_LENS_DEVICE") && text.contains("\"gpu0\""), "{text}");
        assert!(text.contains("auto, cpu, cuda or cuda:N") && text.contains("CUDA_VISIBLE_DEVICES"), "{text}");
    }
    // an explicit device wins: the variable is not even read
    let lens = Lens::load_with(model, &LoadOptions { device: DeviceChoice::Cpu, ..LoadOptions::default() })
        .expect("an explicit cpu device ignores MOE_LENS_DEVICE");
    assert!(lens.to_string().contains(" on cpu "), "{lens}");

    // empty or unset: auto (the CPU on a CPU build, as DeviceChoice::Auto)
    for v in [Some(""), None] {
        match v {
            Some(v) => std::env::set_var("MOE_LENS_DEVICE", v),
            None => std::env::remove_var("MOE_LENS_DEVICE"),
        }
        assert_eq!(DeviceChoice::from_env().ok(), Some(DeviceChoice::Auto));
        let auto = Lens::load_with(model, &LoadOptions::default()).map(|l| l.to_string()).unwrap_or_default();
        let got = load_with_quant(model, "none").map(|l| l.to_string()).unwrap_or_default();
        assert!(!got.is_empty() && got == auto, "{got} / {auto}");
    }
}
