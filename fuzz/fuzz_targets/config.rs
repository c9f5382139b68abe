//! config.json parsing: any text gives a Config or an error, never a panic; an accepted config is
//! one the forward pass can be built for (sizes positive and bounded, heads divide the hidden size,
//! kv heads divide the heads, an even head size, top-k within the experts, a usable rope_theta).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moe_lens::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Config::from_json(&text, Path::new("fuzz/config.json")) {
        for v in [c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.num_experts, c.num_experts_per_tok, c.max_position_embeddings] {
            assert!(v > 0, "{c:?}");
        }
        assert!(c.num_experts <= 1 << 16 && c.max_position_embeddings <= 1 << 22 && c.hidden_size <= 1 << 20, "{c:?}");
        assert_eq!(c.head_dim * c.num_attention_heads, c.hidden_size, "{c:?}");
        assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0, "{c:?}");
        assert_eq!(c.head_dim % 2, 0, "{c:?}");
        assert!(c.num_experts_per_tok <= c.num_experts, "{c:?}");
        assert!(c.rope_theta.is_finite() && c.rope_theta > 1.0, "{c:?}");
        assert!(c.rms_norm_eps.is_finite() && c.rms_norm_eps >= 0.0, "{c:?}");
    }
});
