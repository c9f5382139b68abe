//! `load_with_quant`, what the notebooks call with `MOE_LENS_QUANT`: the quantization it picks and
//! the errors it gives. (CPU only here: on the CPU "auto" must keep the checkpoint's weights.)

use std::path::Path;

use moe_lens::prelude::*;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name).display().to_string()
}

#[test]
fn auto_keeps_full_precision_on_the_cpu() {
    for q in ["auto", "", " AUTO "] {
        let lens = load_with_quant(&fixture("olmoe-narrow"), q).unwrap();
        assert!(lens.quant_report().is_none(), "{q:?}: no quantization on the CPU");
        let shown = lens.to_string();
        assert!(shown.contains("on cpu") && !shown.contains("experts in"), "{shown}");
    }
    let lens = load_with_quant(&fixture("olmoe-narrow"), "none").unwrap();
    assert!(lens.quant_report().is_none());
}

#[test]
fn a_named_quantization_is_used_not_overridden() {
    // "q8_0" is taken as asked (auto would have kept f32): on this checkpoint, whose expert size
    // (16) is not a multiple of q8_0's 32-weight blocks, that is an error that says what works.
    // (Quantized loads themselves are tested in tests/quant.rs on a 256-wide checkpoint.)
    for q in ["q8_0", "Q8", "q4k"] {
        let err = match load_with_quant(&fixture("olmoe-narrow"), q) {
            Ok(_) => panic!("cannot quantize 16-wide experts"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidArgument { what: "quant", .. }), "{err:?}");
        // (hidden 32, experts 16: neither k-quants nor q8_0 fit, so the only advice is none)
        assert!(
            msg.contains("packs blocks of") && msg.contains("can only be loaded without quantization (none)"),
            "{q}: {msg}"
        );
    }
}

#[test]
fn an_unknown_quantization_is_an_error_naming_the_choices() {
    let err = match load_with_quant(&fixture("olmoe-narrow"), "nf4") {
        Ok(_) => panic!("nf4 is not ours"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(
        msg.contains("\"nf4\"") && msg.contains("auto, none, q8_0 or q4k") && msg.contains("MOE_LENS_QUANT"),
        "{msg}"
    );
}
