//! The `moe-lens trace` command: its JSON is exactly the export schema and carries what
//! transformers computed; its table shows one layer; bad input exits non-zero with the message.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    let d = root().join("tests/fixtures/olmoe-narrow");
    assert!(d.join("tokenizer.json").exists(), "run tests/setup-data.sh first");
    d
}

fn moe_lens(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-lens")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[test]
fn json_is_the_export_schema_with_transformers_routing() {
    let model = fixture();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/olmoe-narrow.ref.json")).unwrap())
            .unwrap();
    let s = &reference["sentences"][0];
    let text = s["text"].as_str().unwrap();
    let (ok, out, err) =
        moe_lens(&["trace", "--model", model.to_str().unwrap(), "--text", text, "--device", "cpu", "--format", "json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON document on stdout");
    assert_eq!(keys(&v), ["layers", "model", "text", "tokens"]);
    assert_eq!(v["text"], text);
    assert_eq!(v["model"], model.to_str().unwrap());
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), s["ids"].as_array().unwrap().len());
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(keys(t), ["end", "id", "label", "script", "start"]);
        assert_eq!(t["id"], s["ids"][i]);
        assert_eq!(t["start"], s["offsets"][i][0]);
        assert_eq!(t["end"], s["offsets"][i][1]);
        assert!(!t["label"].as_str().unwrap().contains('\u{FFFD}'));
    }
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 16);
    for (l, layer) in layers.iter().enumerate() {
        assert_eq!(keys(layer), ["logits", "name", "probs", "top_k", "weights"]);
        assert_eq!(layer["name"], format!("model.layers.{l}.mlp.gate"));
        assert_eq!(layer["top_k"], s["layers"][l]["top_k"], "layer {l}: top-k as transformers");
        assert_eq!(layer["logits"][0].as_array().unwrap().len(), 64);
        let a = layer["logits"][3][5].as_f64().unwrap();
        let b = s["layers"][l]["logits"][3][5].as_f64().unwrap();
        assert!((a - b).abs() < 1e-4);
    }
}

#[test]
fn table_shows_one_layer_default_last() {
    let model = fixture();
    let m = model.to_str().unwrap();
    let (ok, out, err) = moe_lens(&["trace", "--model", m, "--text", "Hello 안녕하세요", "--device", "cpu"]);
    assert!(ok, "{err}");
    assert!(out.contains("16 router hooks"), "{out}");
    assert!(out.contains("model.layers.15.mlp.gate"), "{out}");
    assert!(out.contains("Hello"), "{out}");
    let (ok, out, _) =
        moe_lens(&["trace", "--model", m, "--text", "Hello", "--device", "cpu", "--layer", "model.layers.14.mlp.gate"]);
    assert!(ok && out.contains("model.layers.14.mlp.gate"), "{out}");
}

#[test]
fn bad_input_exits_nonzero_with_the_message() {
    let model = fixture();
    let m = model.to_str().unwrap();
    for (args, needle) in [
        (vec!["trace", "--model", m, "--text", "  ", "--device", "cpu"], "empty"),
        (vec!["trace", "--model", m, "--text", "hi", "--device", "cpu", "--layer", "16"], "unknown layer"),
        (vec!["trace", "--model", m, "--text", "hi", "--device", "cpu", "--dtype", "int3"], "dtype"),
        (vec!["trace", "--model", m, "--text", "hi", "--device", "tpu"], "device"),
        (vec!["trace", "--model", "/no/such/model", "--text", "hi"], "does not exist"),
    ] {
        let (ok, _, err) = moe_lens(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.to_lowercase().contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `--device` defaults to `MOE_LENS_DEVICE` as the notebooks' load does; `--device` wins over it.
#[test]
fn device_defaults_to_moe_lens_device_and_the_flag_wins() {
    let model = fixture();
    let m = model.to_str().unwrap();
    let run = |env: &str, extra: &[&str]| {
        let mut args = vec!["trace", "--model", m, "--text", "Hello", "--format", "json"];
        args.extend_from_slice(extra);
        let out =
            Command::new(env!("CARGO_BIN_EXE_moe-lens")).args(&args).env("MOE_LENS_DEVICE", env).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (ok, out_env, err) = run("cpu", &[]);
    assert!(ok, "{err}");
    let (ok, out_flag, err) = run("gpu0", &["--device", "cpu"]);
    assert!(ok, "--device cpu must win over a bad MOE_LENS_DEVICE: {err}");
    assert_eq!(out_env, out_flag);
    let (ok, _, err) = run("gpu0", &[]);
    assert!(!ok && err.contains("MOE_LENS_DEVICE") && err.contains("\"gpu0\""), "{err}");
}
