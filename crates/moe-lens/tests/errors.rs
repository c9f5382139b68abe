//! Every bad input of the core gives a typed error with a message that says what to do, never a
//! panic: the difference between a notebook cell that fails and a kernel that loses its model.

mod common;

use std::fs;
use std::path::PathBuf;

use common::fixture::{copy_fixture_to, edit_config, load_dir, scratch};

use moe_lens::hub::{self, HubSettings};
use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::spy::LayerRef;
use moe_lens::spy::LayerSelection;

/// A private copy of a fixture model directory (with the tokenizer), to break in one way.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    copy_fixture_to(name, scratch("errors", tag))
}

#[test]
fn bad_text_and_layers() {
    let dir = copy_fixture("olmoe-gqa", "text");
    let lens = load_dir(&dir).unwrap();
    for t in ["", "   \n\t "] {
        let e = lens.trace(t).unwrap_err();
        assert!(matches!(e, Error::EmptyText(_)), "{e}");
    }
    // the gqa fixture's context is 256 positions
    let long = "word ".repeat(400);
    let e = lens.trace(&long).unwrap_err();
    assert!(matches!(e, Error::TextTooLong { max: 256, .. }), "{e}");
    assert!(e.to_string().contains("split it into sentences"), "{e}");
    let e = lens.generate("Hello", 300).unwrap_err();
    assert!(matches!(e, Error::TextTooLong { .. }), "{e}");

    let trace = lens.trace("Hello, how are you?").unwrap();
    for bad in [LayerRef::from(3usize), LayerRef::from("model.layers.7.mlp.gate"), LayerRef::from("gate")] {
        let e = trace.layer(bad.clone()).unwrap_err();
        assert!(matches!(e, Error::UnknownLayer { layers: 3, .. }), "{bad}: {e}");
    }
    assert!(trace.top_k_table(99).is_err());
    let e = lens.trace_layers("Hello", LayerSelection::Only(vec![1, 5])).unwrap_err();
    assert!(matches!(e, Error::UnknownLayer { .. }), "{e}");
    // a layer that exists but was not captured
    let part = lens.trace_layers("Hello", LayerSelection::Only(vec![1])).unwrap();
    assert_eq!(part.layers.len(), 1);
    assert!(part.layer(1).is_ok());
    assert!(part.layer(0).unwrap_err().to_string().contains("not captured"));
    fs::remove_dir_all(dir).ok();
}

#[test]
fn broken_weights() {
    // a shard named by the index is missing
    let dir = copy_fixture("olmoe-narrow", "missing");
    fs::remove_file(dir.join("model-00003-of-00004.safetensors")).unwrap();
    let e = load_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("model-00003-of-00004.safetensors"), "{e}");
    fs::remove_dir_all(dir).ok();

    // truncated (an interrupted copy) and garbage shards
    for (tag, damage) in [("truncated", 0usize), ("garbage", 1)] {
        let dir = copy_fixture("olmoe-narrow", tag);
        let shard = dir.join("model-00003-of-00004.safetensors");
        let bytes = fs::read(&shard).unwrap();
        if damage == 0 {
            fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
        } else {
            fs::write(&shard, b"this is not a safetensors file at all").unwrap();
        }
        let e = load_dir(&dir).unwrap_err();
        assert!(matches!(e, Error::Weights { .. }), "{tag}: {e}");
        assert!(e.to_string().contains("model-00003-of-00004.safetensors"), "{tag}: {e}");
        fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn config_that_does_not_fit_the_weights() {
    // wrong expert width: the first expert tensor has another shape
    let dir = copy_fixture("olmoe-narrow", "shape");
    edit_config(&dir, |c| c["intermediate_size"] = 8.into());
    let e = load_dir(&dir).unwrap_err();
    match &e {
        Error::TensorShape { name, expected, found } => {
            assert!(name.contains("experts.0.gate_proj"), "{name}");
            assert_eq!((expected.clone(), found.clone()), (vec![8, 32], vec![16, 32]));
        }
        _ => panic!("expected a shape error, got {e}"),
    }
    fs::remove_dir_all(dir).ok();

    // fewer experts or layers than the weights have
    for (tag, key, val, needle) in
        [("experts", "num_experts", 32, "expert 32"), ("layers", "num_hidden_layers", 8, "more layers")]
    {
        let dir = copy_fixture("olmoe-narrow", tag);
        edit_config(&dir, |c| c[key] = val.into());
        let e = load_dir(&dir).unwrap_err();
        assert!(e.to_string().contains(needle), "{tag}: {e}");
        fs::remove_dir_all(dir).ok();
    }

    // more experts than the weights have
    let dir = copy_fixture("olmoe-narrow", "more-experts");
    edit_config(&dir, |c| c["num_experts"] = 65.into());
    let e = load_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("experts.64"), "{e}");
    fs::remove_dir_all(dir).ok();

    // another architecture, broken JSON, a vocabulary smaller than the tokenizer
    let dir = copy_fixture("olmoe-narrow", "arch");
    edit_config(&dir, |c| c["model_type"] = "mixtral".into());
    let e = load_dir(&dir).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("mixtral"), "{e}");
    fs::write(dir.join("config.json"), "{\"model_type\": \"olmoe\",").unwrap();
    let e = load_dir(&dir).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    fs::remove_dir_all(dir).ok();

    let dir = copy_fixture("olmoe-gqa", "vocab");
    edit_config(&dir, |c| c["vocab_size"] = 1000.into());
    let e = load_dir(&dir).unwrap_err();
    assert!(e.to_string().contains("tokenizer"), "{e}");
    fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_tokenizer_and_offline_without_cache() {
    let dir = copy_fixture("olmoe-gqa", "notok");
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_dir(&dir).unwrap_err();
    assert!(matches!(e, Error::MissingFile { .. }) && e.to_string().contains("tokenizer.json"), "{e}");
    fs::remove_dir_all(dir).ok();

    let cache = std::env::temp_dir().join(format!("moe-lens-errors-emptycache-{}", std::process::id()));
    fs::create_dir_all(&cache).unwrap();
    let s = HubSettings { cache_dir: cache.clone(), offline: true, token: None, progress: false, endpoint: None };
    let e = hub::resolve_with("allenai/OLMoE-1B-7B-0924", &s).unwrap_err();
    assert!(matches!(e, Error::Offline { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("allenai/OLMoE-1B-7B-0924") && msg.contains(cache.to_str().unwrap()) && msg.contains("demo"),
        "{msg}"
    );
    fs::remove_dir_all(cache).ok();

    for bad in ["not a model", "a/b/c/", "/no/such/dir"] {
        let e = hub::resolve_with(bad, &s).unwrap_err();
        assert!(!e.to_string().is_empty(), "{bad}");
    }
}

#[test]
fn bad_device_and_dtype_strings() {
    assert!("tpu".parse::<DeviceChoice>().is_err());
    assert_eq!("cuda:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
    assert!(moe_lens::lab::parse_dtype("int4").is_err());
    #[cfg(not(any(feature = "cuda", moe_lens_cuda)))]
    {
        let e = DeviceChoice::Cuda(0).open().unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
