//! Writes the seed corpora under fuzz/corpus/<target>/ (small, committed): valid inputs of every
//! kind, from which the fuzzer mutates. Run from fuzz/: `cargo run --release --example make_seeds`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use moe_lens::gguf::gguf_name;
use moe_lens_fuzz::{tiny_tensors, TINY_CONFIG};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn tensor(shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 8.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn main() {
    // tokens: [id-count byte] text [ids]
    for (i, t) in [
        "The quick brown fox jumps over the lazy dog.",
        "안녕하세요. 오늘 날씨가 좋네요.",
        "こんにちは。東京は晴れです。",
        "Hello 🌍👋🏽 naïve café — “quotes” ½",
        "  leading and trailing spaces  \n\ttabs\r\n",
        "<|endoftext|>Ends<|endoftext|>",
        "mixed: 한국어 English 日本語 123 +-*/",
    ]
    .iter()
    .enumerate()
    {
        let mut b = vec![(i % 3) as u8];
        b.extend_from_slice(t.as_bytes());
        b.extend_from_slice(&[0x10, 0x27, 0, 0, 0xb6, 0xc3, 0, 0].repeat(i % 3));
        put("tokens", &format!("seed-{i}"), &b);
    }

    // config.json: the Hub's, transformers 5.x style, the tiny one
    let hub = r#"{"architectures":["OlmoeForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"clip_qkv":null,"eos_token_id":50279,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,"intermediate_size":1024,"max_position_embeddings":4096,"model_type":"olmoe","norm_topk_prob":false,"num_attention_heads":16,"num_experts":64,"num_experts_per_tok":8,"num_hidden_layers":16,"num_key_value_heads":16,"output_router_logits":false,"pad_token_id":1,"rope_scaling":null,"rope_theta":10000.0,"router_aux_loss_coef":0.01,"tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.43.0.dev0","use_cache":true,"vocab_size":50304}"#;
    put("config", "hub", hub.as_bytes());
    put("config", "tf5", hub.replace("\"rope_theta\":10000.0,", "\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"default\"},").replace("torch_dtype", "dtype").as_bytes());
    put("config", "tiny", TINY_CONFIG.as_bytes());
    let gqa = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/olmoe-gqa/config.json");
    put("config", "gqa", &std::fs::read(gqa).unwrap());

    // corpus: [format byte] file
    let with = |f: u8, s: &str| {
        let mut b = vec![f];
        b.extend_from_slice(s.as_bytes());
        b
    };
    put("corpus", "tsv", &with(0, "id\tlang\ttext\n1\ten\tHello there.\n2\tko\t안녕하세요.\n3\tja-hira\tこんにちは。\n"));
    put("corpus", "csv", &with(1, "\u{feff}lang,text,id\r\nen,\"Hello, \"\"world\"\"\",a\r\nja,東京,b\r\n"));
    put("corpus", "jsonl", &with(2, "{\"id\": \"s1\", \"lang\": \"ko\", \"text\": \"안녕\"}\n{\"id\": 7, \"lang\": \"EN\", \"text\": \"Hi\"}\n\n"));
    put("corpus", "txt", &with(3, "첫 문장입니다.\n\n두 번째 문장.\r\n"));
    put("corpus", "txt-tag", &with(4, "sr-Latnline one\nline two\n"));

    // safetensors: the tiny model, whole and cut
    let mut st = HashMap::new();
    for (i, (name, shape)) in tiny_tensors().into_iter().enumerate() {
        st.insert(name, tensor(&shape, i));
    }
    let tmp = std::env::temp_dir().join("moe-lens-seed.safetensors");
    candle_core::safetensors::save(&st, &tmp).unwrap();
    let bytes = std::fs::read(&tmp).unwrap();
    put("safetensors_header", "tiny", &bytes);
    put("safetensors_header", "tiny-cut", &bytes[..bytes.len() / 2]);

    // GGUF: the tiny model in llama.cpp's names, float32, with OLMoE metadata
    let mut qs: Vec<(String, QTensor)> = Vec::new();
    let mut experts: HashMap<&str, Vec<Tensor>> = HashMap::new();
    for (i, (name, shape)) in tiny_tensors().into_iter().enumerate() {
        let t = tensor(&shape, i);
        if let Some(g) = gguf_name(&name) {
            qs.push((g, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        } else {
            let kind = ["gate_proj", "up_proj", "down_proj"].into_iter().find(|k| name.contains(k)).unwrap();
            experts.entry(kind).or_default().push(t);
        }
    }
    for (kind, g) in [("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")] {
        let stacked = Tensor::stack(&experts[kind], 0).unwrap();
        qs.push((format!("blk.0.{g}.weight"), QTensor::quantize(&stacked, GgmlDType::F32).unwrap()));
    }
    let u = |v: u32| gguf_file::Value::U32(v);
    let meta: Vec<(&str, gguf_file::Value)> = vec![
        ("general.architecture", gguf_file::Value::String("olmoe".into())),
        ("general.alignment", u(32)),
        ("olmoe.block_count", u(1)),
        ("olmoe.embedding_length", u(4)),
        ("olmoe.expert_feed_forward_length", u(4)),
        ("olmoe.attention.head_count", u(2)),
        ("olmoe.attention.head_count_kv", u(2)),
        ("olmoe.expert_count", u(2)),
        ("olmoe.expert_used_count", u(1)),
        ("olmoe.context_length", u(16)),
        ("olmoe.rope.freq_base", gguf_file::Value::F32(10000.0)),
        ("olmoe.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(1e-5)),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(vec![gguf_file::Value::String("a".into()), gguf_file::Value::String("b".into())])),
    ];
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &meta_refs, &t_refs).unwrap();
    let bytes = buf.into_inner();
    let tmp = std::env::temp_dir().join("moe-lens-seed.gguf");
    std::fs::write(&tmp, &bytes).unwrap();
    let (cfg, _) = moe_lens::quant::load_gguf(&tmp, &Device::Cpu, candle_core::DType::F32).expect("the GGUF seed loads");
    assert_eq!(cfg.num_experts, 2);
    put("gguf_header", "tiny", &bytes);
    put("gguf_header", "tiny-cut", &bytes[..bytes.len() / 2]);
    let st = moe_lens::olmoe::Olmoe::load(&moe_lens_fuzz::tiny_config(), &[std::env::temp_dir().join("moe-lens-seed.safetensors")], &Device::Cpu, candle_core::DType::F32);
    assert!(st.is_ok(), "the safetensors seed loads: {:?}", st.err());
    println!("seeds written");
}
