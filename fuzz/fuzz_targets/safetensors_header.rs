//! Safetensors weight files: the input is the file. Loading it as the tiny model's weights gives
//! the model or an error (not readable, missing tensor, wrong shape), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_lens::olmoe::Olmoe;

fuzz_target!(|data: &[u8]| {
    let path = moe_lens_fuzz::scratch("safetensors");
    std::fs::write(&path, data).expect("scratch file");
    let cfg = moe_lens_fuzz::tiny_config();
    let _ = Olmoe::load(&cfg, std::slice::from_ref(&path), &candle_core::Device::Cpu, candle_core::DType::F32);
});
