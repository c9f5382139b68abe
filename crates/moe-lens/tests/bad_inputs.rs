//! The table of bad inputs: every row is something a student can throw at moe-lens, the typed
//! error it must give (matched on the `Error` variant) and a fragment of the message that tells
//! them what to do. No row may panic (each runs under `catch_unwind`: in evcxr a panic loses the
//! cell, an abort loses the kernel). `cargo test --test bad_inputs -- --nocapture` prints the
//! table.
//!
//! The command-line rows (`--shard` out of range, output directory not writable, ...) are in
//! crates/moe-lens-cli/tests/bad_inputs.rs.

mod common;

use std::collections::HashMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use common::fixture::{copy_fixture_to, cpu, edit_config, load_dir, root, scratch, scratch_root};
use common::hubserver::HubServer;
use moe_lens::config::Config;
use moe_lens::hub::{self, HubSettings};
use moe_lens::lab::DeviceChoice;
use moe_lens::prelude::*;
use moe_lens::quant::{self, Quant};
use moe_lens::spy::spy_fn;
use moe_lens::spy::LayerSelection;
use moe_lens::study::{Shard, Study};
use moe_lens::DType;
use moe_lens::Device;
use moe_lens::Tensor;

/// Scratch space of this test process (removed when the table passes).
fn tmp(name: &str) -> PathBuf {
    scratch("bad", name)
}

/// A private copy of a fixture model directory with the tokenizer, to break in one way.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    copy_fixture_to(name, tmp(tag))
}

fn lens() -> &'static Lens {
    static L: OnceLock<Lens> = OnceLock::new();
    L.get_or_init(|| Lens::load_with(root().join("tests/fixtures/olmoe-gqa").to_str().unwrap(), &cpu()).unwrap())
}

/// A small scan (en + ko) of the fixture, for the language rows.
fn study() -> &'static Study {
    static S: OnceLock<Study> = OnceLock::new();
    S.get_or_init(|| {
        let s = vec![
            Sentence::new("1", "en", "The weather is nice today.").unwrap(),
            Sentence::new("2", "ko", "오늘은 날씨가 좋네요.").unwrap(),
            Sentence::new("3", "en", "I like green tea.").unwrap(),
            Sentence::new("4", "ko", "저는 녹차를 좋아해요.").unwrap(),
        ];
        moe_lens::study::scan(lens(), &s, &ScanOptions { progress: false, ..Default::default() }).unwrap()
    })
}

/// Writes `text` as a corpus file `name` and loads it (`lang` for .txt).
fn corpus_file(name: &str, bytes: &[u8], lang: Option<&str>) -> Result<Vec<Sentence>> {
    let d = tmp(&format!("corpus-{}", name.replace('.', "-")));
    let p = d.join(name);
    fs::write(&p, bytes).unwrap();
    corpus::load_corpus(&p, lang)
}

/// A random OLMoE checkpoint whose sizes allow Q8_0 (rows of 32): 1 layer, 4 experts, top-2.
fn q8_checkpoint(tag: &str) -> (PathBuf, Config, Vec<PathBuf>) {
    let dir = tmp(tag);
    let (v, h, i, e) = (64usize, 32usize, 32usize, 4usize);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut rnd = |shape: &[usize], shift: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                shift + ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    t.insert("model.embed_tokens.weight".into(), rnd(&[v, h], 0.0));
    t.insert("model.norm.weight".into(), rnd(&[h], 1.0));
    let p = "model.layers.0";
    for n in ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"] {
        t.insert(format!("{p}.{n}.weight"), rnd(&[h], 1.0));
    }
    for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        t.insert(format!("{p}.self_attn.{n}.weight"), rnd(&[h, h], 0.0));
    }
    t.insert(format!("{p}.mlp.gate.weight"), rnd(&[e, h], 0.0));
    for x in 0..e {
        t.insert(format!("{p}.mlp.experts.{x}.gate_proj.weight"), rnd(&[i, h], 0.0));
        t.insert(format!("{p}.mlp.experts.{x}.up_proj.weight"), rnd(&[i, h], 0.0));
        t.insert(format!("{p}.mlp.experts.{x}.down_proj.weight"), rnd(&[h, i], 0.0));
    }
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&t, &st).unwrap();
    let cfg = format!(
        r#"{{"model_type":"olmoe","vocab_size":{v},"hidden_size":{h},"intermediate_size":{i},"num_hidden_layers":1,
        "num_attention_heads":2,"num_key_value_heads":2,"num_experts":{e},"num_experts_per_tok":2,
        "max_position_embeddings":64,"rope_theta":10000.0,"tie_word_embeddings":true}}"#
    );
    fs::write(dir.join("config.json"), cfg).unwrap();
    let cfg = Config::from_file(dir.join("config.json")).unwrap();
    (dir, cfg, vec![st])
}

/// Top-k of every row for a fixed input: to see that a rebuilt cache gives the same model.
fn q8_routes(m: &moe_lens::olmoe::Olmoe) -> Vec<Vec<u32>> {
    let ids = Tensor::new(&[[3u32, 17, 42, 5, 60, 9]], &Device::Cpu).unwrap();
    let mut out = Vec::new();
    let mut spy = spy_fn(|ev| {
        out.extend(ev.top_k.to_vec2::<u32>()?);
        Ok(())
    });
    m.forward(&ids, None, None, Step::Prefill, Some(&mut spy)).unwrap();
    out
}

/// Loads the Q8_0 checkpoint after `damage` was done to its cache. The load must succeed with a
/// rebuilt cache that gives the routing of a fresh quantization; the reason the old cache was
/// refused comes back as the row's error (`Error::Weights` naming the cache file).
fn damaged_cache(tag: &str, damage: impl FnOnce(&Path)) -> Result<()> {
    let (dir, cfg, files) = q8_checkpoint(tag);
    let (fresh, rep) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0)?;
    assert!(!rep.cache_hit && rep.cache_write_error.is_none(), "{rep:?}");
    let want = q8_routes(&fresh);
    let good = fs::read(&rep.cache).unwrap();
    damage(&rep.cache);
    let (again, rep2) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0)?;
    assert!(!rep2.cache_hit, "a damaged cache must not be used: {rep2:?}");
    assert_eq!(q8_routes(&again), want, "the rebuilt model routes as a fresh one");
    assert_eq!(fs::read(&rep2.cache).unwrap(), good, "the cache was rewritten whole");
    let (_, rep3) = quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0)?;
    assert!(rep3.cache_hit, "and is used from then on: {rep3:?}");
    let why = rep2.cache_rejected.unwrap_or_default();
    let why = why.strip_prefix(&format!("weights {}: ", rep2.cache.display())).unwrap_or(&why).to_string();
    Err(Error::Weights { path: rep2.cache, msg: why })
}

/// A GGUF file holding `meta` and no tensors.
fn gguf_with(meta: &[(&str, gguf_file::Value)]) -> Vec<u8> {
    let refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[]).unwrap();
    buf.into_inner()
}

fn load_gguf_bytes(dir: PathBuf, bytes: &[u8]) -> Result<()> {
    let p = dir.join("model.gguf");
    fs::write(&p, bytes).unwrap();
    quant::load_gguf(&p, &Device::Cpu, DType::F32).map(drop)
}

fn hub_settings(cache: &Path, offline: bool, endpoint: Option<String>) -> HubSettings {
    HubSettings { cache_dir: cache.to_path_buf(), offline, token: None, progress: false, endpoint }
}

/// One row of the table.
struct Row {
    input: &'static str,
    kind: &'static str,
    is_kind: fn(&Error) -> bool,
    says: &'static str,
    run: Box<dyn Fn() -> Result<()>>,
}

macro_rules! row {
    ($input:expr, $kind:pat, $says:expr, $run:expr) => {
        Row {
            input: $input,
            kind: stringify!($kind),
            is_kind: |e| matches!(e, $kind),
            says: $says,
            run: Box::new($run),
        }
    };
}

fn table() -> Vec<Row> {
    vec![
        // ---- text and layers
        row!("empty text", Error::EmptyText(_), "give at least one visible character", || lens().trace("").map(drop)),
        row!("whitespace-only text", Error::EmptyText(_), "give at least one visible character", || lens()
            .trace(" \n\t\u{3000} ")
            .map(drop)),
        row!(
            "text over the context length (400 words, context 256)",
            Error::TextTooLong { max: 256, .. },
            "split it",
            || lens().trace(&"word ".repeat(400)).map(drop)
        ),
        row!("generation that would run past the context", Error::TextTooLong { .. }, "shorten it", || lens()
            .generate("Hello", 300)
            .map(drop)),
        row!(
            "generation of usize::MAX new tokens",
            Error::InvalidArgument { what: "max_new_tokens", .. },
            "ask for fewer new tokens",
            || lens().generate("Hello", usize::MAX).map(drop)
        ),
        row!(
            "bootstrap with usize::MAX replicates",
            Error::InvalidArgument { what: "replicates", .. },
            "use 2 to 1,000,000",
            || {
                study()
                    .compare_with("ko", "en", &CompareOptions { replicates: usize::MAX, ..Default::default() })
                    .map(drop)
            }
        ),
        row!("unknown layer index 3 (of 3)", Error::UnknownLayer { layers: 3, .. }, "0..=2", || lens()
            .trace("Hi")?
            .layer(3)
            .map(drop)),
        row!(
            "unknown layer name model.layers.7.mlp.gate",
            Error::UnknownLayer { .. },
            "model.layers.{i}.mlp.gate",
            || lens().trace("Hi")?.layer("model.layers.7.mlp.gate").map(drop)
        ),
        row!("not a layer name (\"gate\")", Error::UnknownLayer { .. }, "router layers", || lens()
            .trace("Hi")?
            .layer("gate")
            .map(drop)),
        row!("capture of an unknown layer", Error::UnknownLayer { .. }, "0..=2", || lens()
            .trace_layers("Hi", LayerSelection::Only(vec![1, 5]))
            .map(drop)),
        row!(
            "a layer that exists but was not captured",
            Error::InvalidArgument { what: "layer", .. },
            "not captured",
            || lens().trace_layers("Hi", LayerSelection::Only(vec![1]))?.layer(0).map(drop)
        ),
        row!("top-k table of layer 99", Error::UnknownLayer { .. }, "router layers", || lens()
            .trace("Hi")?
            .top_k_table(99)
            .map(drop)),
        row!(
            "token id outside the vocabulary",
            Error::InvalidArgument { what: "token id", .. },
            "not in the vocabulary",
            || lens().tokenizer().decode(&[u32::MAX]).map(drop)
        ),
        // ---- corpus files
        row!("invalid UTF-8 in a TSV corpus (line 3)", Error::Corpus { line: 3, .. }, "save the file as UTF-8", || {
            corpus_file("c.tsv", b"lang\ttext\nen\tfine\nko\t\xed\x95\n", None).map(drop)
        }),
        row!("invalid UTF-8 in a .txt corpus", Error::Corpus { line: 2, .. }, "save the file as UTF-8", || {
            corpus_file("c.txt", b"ok\n\xff\xfe bad\n", Some("ko")).map(drop)
        }),
        row!(
            "unknown language tag in a corpus (\"english\")",
            Error::Corpus { line: 2, .. },
            "2- or 3-letter ISO 639 code",
            || corpus_file("c.tsv", "lang\ttext\nenglish\tHello\n".as_bytes(), None).map(drop)
        ),
        row!(
            "unknown language tag for a .txt corpus (\"Korean\")",
            Error::InvalidArgument { what: "language", .. },
            "such as en, ko or ja",
            || corpus_file("c.txt", b"hello\n", Some("Korean")).map(drop)
        ),
        row!(
            "a language the scan has no tokens of (compare ko with xx)",
            Error::InvalidArgument { what: "language", .. },
            "it has: en, ko",
            || study().compare("ko", "xx").map(drop)
        ),
        row!(
            "malformed TSV line (2 columns under a 3-column header)",
            Error::Corpus { line: 3, .. },
            "separate columns with tabs",
            || corpus_file("c.tsv", b"id\tlang\ttext\n1\ten\tok\n2\tjust text\n", None).map(drop)
        ),
        row!("malformed JSONL line", Error::Corpus { line: 2, .. }, "not a JSON object of the form", || corpus_file(
            "c.jsonl",
            b"{\"lang\":\"en\",\"text\":\"ok\"}\n{\"lang\":\"en\", text}\n",
            None
        )
        .map(drop)),
        row!("unclosed quote in a CSV line", Error::Corpus { line: 2, .. }, "close the quote", || corpus_file(
            "c.csv",
            b"lang,text\nen,\"open\n",
            None
        )
        .map(drop)),
        row!("the same id twice", Error::Corpus { line: 3, .. }, "was already used on line 2", || corpus_file(
            "c.tsv",
            b"id\tlang\ttext\na\ten\tone\na\ten\ttwo\n",
            None
        )
        .map(drop)),
        row!(
            "corpus header without a language column",
            Error::Corpus { line: 1, .. },
            "needs a language column",
            || corpus_file("c.tsv", b"id\ttext\n1\thello\n", None).map(drop)
        ),
        row!("empty corpus file", Error::Corpus { .. }, "starts with a header line", || corpus_file(
            "c.csv", b"", None
        )
        .map(drop)),
        row!(
            "corpus row with an empty text",
            Error::Corpus { line: 1, .. },
            "remove the row or give it a sentence",
            || corpus_file("c.jsonl", b"{\"lang\":\"en\",\"text\":\"  \"}\n", None).map(drop)
        ),
        row!(
            "corpus file of an unknown format (.xlsx)",
            Error::InvalidArgument { what: "corpus file", .. },
            "use .tsv or .csv",
            || corpus_file("c.xlsx", b"PK..", None).map(drop)
        ),
        row!(".txt corpus without a language", Error::InvalidArgument { what: "language", .. }, "--lang ko", || {
            corpus_file("c.txt", b"hello\n", None).map(drop)
        }),
        row!("corpus file that does not exist", Error::Io { .. }, "check the path", || corpus::load_corpus(
            tmp("nocorpus").join("missing.tsv"),
            None
        )
        .map(drop)),
        // ---- model directories and config.json
        row!(
            "a config of another architecture (mixtral)",
            Error::Unsupported(_),
            "OLMoE checkpoints (model_type \"olmoe\") only",
            || {
                let d = copy_fixture("olmoe-gqa", "arch");
                edit_config(&d, |c| c["model_type"] = "mixtral".into());
                load_dir(&d).map(drop)
            }
        ),
        row!("broken config.json (cut off)", Error::Config { .. }, "not valid config JSON", || {
            let d = copy_fixture("olmoe-gqa", "brokencfg");
            fs::write(d.join("config.json"), "{\"model_type\": \"olmoe\",").unwrap();
            load_dir(&d).map(drop)
        }),
        row!(
            "config.json without a size (intermediate_size)",
            Error::Config { .. },
            "intermediate_size is missing",
            || {
                let d = copy_fixture("olmoe-gqa", "nosize");
                edit_config(&d, |c| drop(c.as_object_mut().unwrap().remove("intermediate_size")));
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "config.json with an absurd size (num_experts 10^15)",
            Error::Config { .. },
            "the file is damaged",
            || {
                let d = copy_fixture("olmoe-gqa", "hugecfg");
                edit_config(&d, |c| c["num_experts"] = 1_000_000_000_000_000u64.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "config.json with an absurd context (max_position_embeddings 10^12)",
            Error::Config { .. },
            "the file is damaged",
            || {
                let d = copy_fixture("olmoe-gqa", "hugectx");
                edit_config(&d, |c| c["max_position_embeddings"] = 1_000_000_000_000u64.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "missing config.json",
            Error::MissingFile { what: "config.json", .. },
            "model directory in the Hugging Face layout",
            || {
                let d = copy_fixture("olmoe-gqa", "nocfg");
                fs::remove_file(d.join("config.json")).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "missing tokenizer.json",
            Error::MissingFile { what: "tokenizer.json", .. },
            "copy it next to config.json",
            || {
                let d = copy_fixture("olmoe-gqa", "notok");
                fs::remove_file(d.join("tokenizer.json")).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "tokenizer.json that is not a tokenizer",
            Error::Tokenizer(_),
            "use the tokenizer.json that came with the model",
            || {
                let d = copy_fixture("olmoe-gqa", "badtok");
                fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!("vocab_size smaller than the tokenizer's", Error::Config { .. }, "do not belong together", || {
            let d = copy_fixture("olmoe-gqa", "vocab");
            edit_config(&d, |c| c["vocab_size"] = 1000.into());
            load_dir(&d).map(drop)
        }),
        row!(
            "missing shard (deleted)",
            Error::MissingFile { what: "weight shard", .. },
            "copy every shard the index lists",
            || {
                let d = copy_fixture("olmoe-narrow", "noshard");
                fs::remove_file(d.join("model-00003-of-00004.safetensors")).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "index file naming a shard that is not there",
            Error::MissingFile { what: "weight shard", .. },
            "names model-00009-of-00009.safetensors",
            || {
                let d = copy_fixture("olmoe-narrow", "idxmissing");
                let p = d.join("model.safetensors.index.json");
                let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
                v["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors".into();
                fs::write(&p, v.to_string()).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "index file naming a shard outside the directory (../x)",
            Error::Weights { .. },
            "not a file inside the model directory",
            || {
                let d = copy_fixture("olmoe-narrow", "idxescape");
                let p = d.join("model.safetensors.index.json");
                let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
                v["weight_map"]["model.norm.weight"] = "../model.safetensors".into();
                fs::write(&p, v.to_string()).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!("index file that is not JSON", Error::Weights { .. }, "download or copy it again", || {
            let d = copy_fixture("olmoe-narrow", "idxjson");
            fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": {").unwrap();
            load_dir(&d).map(drop)
        }),
        row!("truncated shard (an interrupted copy)", Error::Weights { .. }, "delete it and download it again", || {
            let d = copy_fixture("olmoe-narrow", "cutshard");
            let s = d.join("model-00002-of-00004.safetensors");
            let b = fs::read(&s).unwrap();
            fs::write(&s, &b[..b.len() / 2]).unwrap();
            load_dir(&d).map(drop)
        }),
        row!("garbage shard", Error::Weights { .. }, "delete it and download it again", || {
            let d = copy_fixture("olmoe-narrow", "junkshard");
            fs::write(d.join("model-00001-of-00004.safetensors"), [0xffu8; 64]).unwrap();
            load_dir(&d).map(drop)
        }),
        row!("empty weights file", Error::Weights { .. }, "delete it and download it again", || {
            let d = copy_fixture("olmoe-gqa", "emptyweights");
            fs::write(d.join("model.safetensors"), b"").unwrap();
            load_dir(&d).map(drop)
        }),
        row!(
            "no weights at all",
            Error::MissingFile { what: "weights", .. },
            "copy the safetensors weights there",
            || {
                let d = copy_fixture("olmoe-gqa", "noweights");
                fs::remove_file(d.join("model.safetensors")).unwrap();
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "tensor of the wrong shape (config's intermediate_size from another model)",
            Error::TensorShape { .. },
            "do not belong together",
            || {
                let d = copy_fixture("olmoe-narrow", "shape");
                edit_config(&d, |c| c["intermediate_size"] = 8.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "wrong expert count: config says fewer than the weights have",
            Error::Config { .. },
            "the weights have an expert 32 in layer 0: the weights and config.json do not belong together",
            || {
                let d = copy_fixture("olmoe-narrow", "fewexperts");
                edit_config(&d, |c| c["num_experts"] = 32.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "wrong expert count: config says more than the weights have",
            Error::Weights { .. },
            "is in none of the",
            || {
                let d = copy_fixture("olmoe-narrow", "moreexperts");
                edit_config(&d, |c| c["num_experts"] = 65.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "wrong layer count: config says fewer than the weights have",
            Error::Config { .. },
            "use the config.json saved with these weights",
            || {
                let d = copy_fixture("olmoe-narrow", "fewlayers");
                edit_config(&d, |c| c["num_hidden_layers"] = 8.into());
                load_dir(&d).map(drop)
            }
        ),
        row!(
            "a model path that is a file",
            Error::InvalidArgument { what: "model", .. },
            "pass the directory that holds config.json",
            || {
                Lens::load_with(root().join("tests/fixtures/olmoe-gqa/config.json").to_str().unwrap(), &cpu()).map(drop)
            }
        ),
        row!(
            "a model directory that does not exist",
            Error::MissingFile { what: "model directory", .. },
            "Hub id such as",
            || load_dir(Path::new("/no/such/model/dir")).map(drop)
        ),
        // ---- quantized caches and GGUF files
        row!(
            "garbage quantized cache (the load rebuilds it)",
            Error::Weights { .. },
            "not a readable GGUF file",
            || damaged_cache("q-garbage", |p| fs::write(p, b"GGUF garbage garbage garbage").unwrap())
        ),
        row!("truncated quantized cache (the load rebuilds it)", Error::Weights { .. }, "truncated", || damaged_cache(
            "q-cut",
            |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
            }
        )),
        row!(
            "quantized cache with general.alignment 0 (the load rebuilds it)",
            Error::Weights { .. },
            "general.alignment is 0",
            || damaged_cache("q-align", |p| {
                fs::write(p, gguf_with(&[("general.alignment", gguf_file::Value::U32(0))])).unwrap()
            })
        ),
        row!(
            "quantized cache of other weights (the load rebuilds it)",
            Error::Weights { .. },
            "made from other weight files",
            || damaged_cache("q-other", |p| {
                // a valid cache, but for another checkpoint (its fingerprint differs)
                let (dir, cfg, files) = q8_checkpoint("q-other-src");
                let (_, rep) =
                    quant::load_quantized(&cfg, &files, &dir, &Device::Cpu, DType::F32, Quant::Q8_0).unwrap();
                let mut b = fs::read(&rep.cache).unwrap();
                // same tensors, another source fingerprint
                let fp = format!("model.safetensors:{}:", fs::metadata(&files[0]).unwrap().len());
                if let Some(at) = b.windows(fp.len()).position(|w| w == fp.as_bytes()) {
                    b[at] = b'M';
                }
                fs::write(p, b).unwrap();
            })
        ),
        row!("GGUF file with general.alignment 0", Error::Weights { .. }, "delete it", || load_gguf_bytes(
            tmp("g-align"),
            &gguf_with(&[("general.alignment", gguf_file::Value::U8(0))])
        )),
        row!(
            "GGUF with a tensor of no elements (found by fuzzing: candle aborted on it)",
            Error::Weights { .. },
            "has no elements",
            || {
                load_gguf_bytes(
                    tmp("g-empty"),
                    &fs::read(root().join("fuzz/corpus/gguf_header/regression-zero-element-tensor")).unwrap(),
                )
            }
        ),
        row!("GGUF file that is not GGUF", Error::Weights { .. }, "not a readable GGUF file", || load_gguf_bytes(
            tmp("g-junk"),
            b"PK\x03\x04 a zip file, say"
        )),
        row!("GGUF of another architecture", Error::Config { .. }, "not \"olmoe\"", || load_gguf_bytes(
            tmp("g-arch"),
            &gguf_with(&[("general.architecture", gguf_file::Value::String("llama".into()))])
        )),
        row!("GGUF with impossible sizes (head count 0)", Error::Config { .. }, "num_attention_heads is 0", || {
            let u = gguf_file::Value::U32;
            let meta = [
                ("general.architecture", gguf_file::Value::String("olmoe".into())),
                ("olmoe.embedding_length", u(32)),
                ("olmoe.attention.head_count", u(0)),
                ("olmoe.expert_feed_forward_length", u(32)),
                ("olmoe.block_count", u(1)),
                ("olmoe.expert_count", u(4)),
                ("olmoe.expert_used_count", u(2)),
            ];
            let refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
            let t = candle_core::quantized::QTensor::quantize(
                &Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap(),
                candle_core::quantized::GgmlDType::F32,
            )
            .unwrap();
            let mut buf = std::io::Cursor::new(Vec::new());
            gguf_file::write(&mut buf, &refs, &[("token_embd.weight", &t)]).unwrap();
            load_gguf_bytes(tmp("g-heads"), &buf.into_inner())
        }),
        row!(
            "GGUF in a block type candle cannot read (llama.cpp's IQ4_XS)",
            Error::Weights { .. },
            "use a Q4_K_M, Q5_K_M, Q6_K or Q8_0 file",
            || {
                let t = candle_core::quantized::QTensor::quantize(
                    &Tensor::zeros((4, 256), DType::F32, &Device::Cpu).unwrap(),
                    candle_core::quantized::GgmlDType::F32,
                )
                .unwrap();
                let arch = gguf_file::Value::String("olmoe".into());
                let mut buf = std::io::Cursor::new(Vec::new());
                gguf_file::write(&mut buf, &[("general.architecture", &arch)], &[("blk.0.ffn_gate_exps.weight", &t)])
                    .unwrap();
                let mut b = buf.into_inner();
                // the tensor info: name, 2 dims (u32 count, u64 each), then the type (0 = F32): make it 23
                let name = b"blk.0.ffn_gate_exps.weight";
                let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 2 * 8;
                assert_eq!(b[at..at + 4], [0, 0, 0, 0]);
                b[at] = 23;
                load_gguf_bytes(tmp("g-iq4"), &b)
            }
        ),
        row!("a quantization asked of a GGUF file", Error::InvalidArgument { .. }, "already quantized", || {
            moe_lens::lab::load_with_quant(
                root().join("tests/fixtures/llamacpp/olmoe-narrow-bf16.gguf").to_str().unwrap(),
                "q4k",
            )
            .map(drop)
        }),
        row!("a .gguf path that does not exist", Error::MissingFile { .. }, "no such file", || {
            hub::resolve_with(
                tmp("g-none").join("olmoe-q4_k_m.gguf").to_str().unwrap(),
                &hub_settings(&tmp("g-none-cache"), true, None),
            )
            .map(drop)
        }),
        row!("a directory holding only a .gguf file", Error::MissingFile { .. }, "pass that file's path", || {
            let d = tmp("g-dir");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("olmoe-q4_k_m.gguf"), b"GGUF").unwrap();
            hub::resolve_with(d.to_str().unwrap(), &hub_settings(&tmp("g-dir-cache"), true, None)).map(drop)
        }),
        row!("unknown quantization name", Error::InvalidArgument { .. }, "q8_0", || "q9".parse::<Quant>().map(drop)),
        // ---- the Hub and its cache
        row!("offline without the model cached", Error::Offline { .. }, "download it once with network access", || {
            hub::resolve_with("allenai/OLMoE-1B-7B-0924", &hub_settings(&tmp("emptycache"), true, None)).map(drop)
        }),
        row!(
            "a bad Hub id (a/b/c)",
            Error::MissingFile { what: "model directory", .. },
            "Hub id such as allenai/OLMoE-1B-7B-0924",
            || { hub::resolve_with("a/b/c", &hub_settings(&tmp("badid"), true, None)).map(drop) }
        ),
        row!(
            "a bad Hub id (space in the name)",
            Error::InvalidArgument { what: "model", .. },
            "only letters, digits",
            || { hub::resolve_with("allenai/OLMoE 1B", &hub_settings(&tmp("badid2"), true, None)).map(drop) }
        ),
        row!(
            "a bad Hub revision (owner/name@)",
            Error::InvalidArgument { what: "model", .. },
            "revision after '@' is empty",
            || { hub::resolve_with("allenai/OLMoE-1B-7B-0924@", &hub_settings(&tmp("badrev"), true, None)).map(drop) }
        ),
        row!("an empty model name", Error::InvalidArgument { what: "model", .. }, "the model is empty", || {
            hub::resolve_with("  ", &hub_settings(&tmp("emptyname"), true, None)).map(drop)
        }),
        row!("a well-formed Hub id the Hub does not have", Error::Hub { .. }, "check the id", || {
            let server = HubServer::start("someone/else", vec![]);
            hub::resolve_with("tiny-org/not-there", &hub_settings(&tmp("hub404"), false, Some(server.endpoint.clone())))
                .map(drop)
        }),
        row!("a download cut off half-way", Error::Hub { .. }, "continues where it stopped", || {
            let w = fs::read(root().join("tests/fixtures/olmoe-gqa/model.safetensors")).unwrap();
            let n = w.len();
            let files = vec![
                ("config.json".to_string(), fs::read(root().join("tests/fixtures/olmoe-gqa/config.json")).unwrap()),
                ("tokenizer.json".to_string(), fs::read(root().join("tests/data/tokenizer/tokenizer.json")).unwrap()),
                ("model.safetensors".to_string(), w),
            ];
            let server = HubServer::start("tiny-org/cut", files);
            server.set_mode("model.safetensors", common::hubserver::Mode::CutAfter(n / 2));
            hub::resolve_with("tiny-org/cut", &hub_settings(&tmp("hubcut"), false, Some(server.endpoint.clone())))
                .map(drop)
        }),
        // ---- devices, dtypes, memory
        row!(
            "unknown device string (\"tpu\")",
            Error::InvalidArgument { what: "device", .. },
            "use auto, cpu, cuda, cuda:N or metal",
            || "tpu".parse::<DeviceChoice>().map(drop)
        ),
        row!("unknown dtype (\"int4\")", Error::InvalidArgument { what: "dtype", .. }, "use f32, bf16 or f16", || {
            moe_lens::lab::parse_dtype("int4").map(drop)
        }),
        row!("CUDA asked of a CPU-only build", Error::Device(_), "--features cuda", || {
            if candle_core::utils::cuda_is_available() {
                // a CUDA build: an index past the last GPU instead
                return DeviceChoice::Cuda(4096).open().map(drop);
            }
            DeviceChoice::Cuda(0).open().map(drop)
        }),
        row!(
            "GPU out of memory (CUDA's error as candle reports it; no GPU in CI)",
            Error::OutOfMemory { .. },
            "smaller batch",
            || {
                Err(candle_core::Error::Cuda(Box::new(std::io::Error::other(
                    "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
                )))
                .into())
            }
        ),
        row!("GPU out of memory inside cuBLAS", Error::OutOfMemory { .. }, "free the GPU of other work", || {
            Err(candle_core::Error::Msg("cublas error: CUBLAS_STATUS_ALLOC_FAILED".into()).into())
        }),
        row!(
            "GPU out of memory with candle's backtrace attached (RUST_BACKTRACE set)",
            Error::OutOfMemory { .. },
            "[CUDA_ERROR_OUT_OF_MEMORY]",
            || {
                let e = candle_core::Error::WithBacktrace {
                    inner: Box::new(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into())),
                    backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
                };
                Err(e.into())
            }
        ),
        // ---- scans
        row!(
            "--shard out of range (3/3)",
            Error::InvalidArgument { what: "shard", .. },
            "i must be less than n",
            || Shard::parse("3/3").map(drop)
        ),
        row!("--shard with 0 shards (1/0)", Error::InvalidArgument { what: "shard", .. }, "at least 1", || {
            Shard::parse("1/0").map(drop)
        }),
        row!(
            "--shard not of the form i/n (\"half\")",
            Error::InvalidArgument { what: "shard", .. },
            "write it as i/n",
            || Shard::parse("half").map(drop)
        ),
        row!(
            "a scan directory that is not one (load a study from an empty directory)",
            Error::InvalidArgument { what: "study", .. },
            "give the --out directory of a `moe-lens scan`",
            || Study::load(tmp("notascan")).map(drop)
        ),
        row!(
            "output directory not writable (a file where the directory should be)",
            Error::Io { .. },
            "choose another path",
            || {
                let d = tmp("outfile");
                fs::write(d.join("taken"), b"a file").unwrap();
                study().save(d.join("taken").join("scan"), &study().metrics())
            }
        ),
        row!("scan batch size 0", Error::InvalidArgument { .. }, "batch", || {
            let s = vec![Sentence::new("1", "en", "Hello").unwrap()];
            moe_lens::study::scan(
                lens(),
                &s,
                &ScanOptions { batch_size: Some(0), progress: false, ..Default::default() },
            )
            .map(drop)
        }),
    ]
}

/// A stack trace in a message: `<unknown>` frames, or numbered frame lines (`  12: candle_core::…`).
fn looks_like_backtrace(text: &str) -> bool {
    text.contains("<unknown>")
        || text.contains("stack backtrace")
        || text.lines().any(|l| {
            l.trim_start().split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

#[test]
fn every_bad_input_gives_its_typed_error_and_says_what_to_do() {
    let rows = table();
    assert!(rows.len() >= 25);
    let mut failures = Vec::new();
    let mut md = String::from("| input | error kind | message (what to do) |\n| --- | --- | --- |\n");
    for r in &rows {
        let got = catch_unwind(AssertUnwindSafe(|| (r.run)()));
        match got {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: PANICKED: {msg}", r.input));
            }
            Ok(Ok(())) => failures.push(format!("{}: accepted; expected {}", r.input, r.kind)),
            Ok(Err(e)) => {
                let text = e.to_string();
                if !(r.is_kind)(&e) {
                    failures.push(format!("{}: expected {}, got {e:?}", r.input, r.kind));
                } else if !text.contains(r.says) {
                    failures.push(format!("{}: message lacks {:?}: {text}", r.input, r.says));
                } else if looks_like_backtrace(&text) {
                    failures.push(format!("{}: the message carries a backtrace: {text}", r.input));
                }
                md.push_str(&format!(
                    "| {} | `{}` | {} |\n",
                    r.input,
                    r.kind.split(['(', ' ', '{']).next().unwrap_or(r.kind),
                    text.replace('|', "\\|").replace('\n', " ")
                ));
            }
        }
    }
    eprintln!("{md}");
    eprintln!("{} rows", rows.len());
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    // the broken copies are ~150 MB a run: keep them only when a row failed, for inspection
    let _ = fs::remove_dir_all(scratch_root("bad"));
}

/// The fuzz targets' regressions: inputs that once made a reader panic.
#[test]
fn gguf_alignment_zero_panics_in_candle_but_not_here() {
    let bytes = gguf_with(&[("general.alignment", gguf_file::Value::U32(0))]);
    // the reference: candle's reader divides by the alignment
    let candle = catch_unwind(|| gguf_file::Content::read(&mut std::io::Cursor::new(bytes.clone())).map(drop));
    assert!(candle.is_err(), "candle 0.11.1 panics on alignment 0 (if this fails, candle fixed it)");
    assert!(moe_lens::gguf::check_gguf_header(&bytes, bytes.len() as u64).is_err());
    assert!(matches!(load_gguf_bytes(scratch("bad-regression", "align"), &bytes), Err(Error::Weights { .. })));
    let _ = fs::remove_dir_all(scratch_root("bad-regression"));
}
