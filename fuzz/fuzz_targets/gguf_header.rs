//! GGUF files (llama.cpp models and moe-lens's quantized caches): the input is the file. The header
//! check and a full load give a model or an error, never a panic or an allocation sized by a
//! corrupt length field (libFuzzer's -rss_limit_mb / -malloc_limit_mb catch those).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_lens::{gguf, quant};

fuzz_target!(|data: &[u8]| {
    let _ = gguf::check_gguf_header(data, data.len() as u64);
    let path = moe_lens_fuzz::scratch("gguf");
    std::fs::write(&path, data).expect("scratch file");
    let _ = quant::load_gguf(&path, &candle_core::Device::Cpu, candle_core::DType::F32);
});
