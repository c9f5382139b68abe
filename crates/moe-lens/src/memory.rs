//! What a load needs on a device and what the device has free: the numbers behind the check before
//! a load and behind the out-of-memory message.

use candle_core::{DType, Device};

use crate::config::Config;

/// Parameters of the experts, and of everything else (attention, routers, norms, embeddings).
pub fn param_counts(cfg: &Config) -> (u64, u64) {
    let u = |x: usize| x as u64;
    let (h, i, e, l, v) =
        (u(cfg.hidden_size), u(cfg.intermediate_size), u(cfg.num_experts), u(cfg.num_hidden_layers), u(cfg.vocab_size));
    let q = u(cfg.num_attention_heads * cfg.head_dim);
    let kv = u(cfg.num_key_value_heads * cfg.head_dim);
    let experts = l * e * 3 * h * i;
    // q, k, v, o projections, q/k norms, the router, two layer norms
    let per_layer = h * q + 2 * h * kv + q * h + q + kv + e * h + 2 * h;
    let embeddings = v * h * if cfg.tie_word_embeddings { 1 } else { 2 };
    (experts, l * per_layer + embeddings + h)
}

/// Bytes of the weights on the device: the experts at `expert_bytes_per_value` (2 in bf16, 34/32 in
/// q8_0, 144/256 in q4k), the rest in `dtype`.
pub fn weight_bytes(cfg: &Config, dtype: DType, expert_bytes_per_value: f64) -> u64 {
    let (experts, other) = param_counts(cfg);
    (experts as f64 * expert_bytes_per_value) as u64 + other * dtype.size_in_bytes() as u64
}

/// Working memory a load adds on a GPU beyond its weights (the CUDA context is not counted: the
/// driver's free figure is taken after it exists): cuBLAS workspaces, the rope tables, the first
/// forward's activations. Measured on an H200 for OLMoE (BENCHMARKS.md): well under this.
pub const GPU_LOAD_MARGIN: u64 = 512 << 20;

/// The cap on what one load may take, from `MOE_LENS_MEMORY_LIMIT` (`8G`, `8GiB`, `512M`, `2048MB`,
/// or bytes; G/M/K are powers of 1024), which an instructor can set for every student of a shared
/// server; `None` when unset or empty.
pub fn memory_limit() -> crate::Result<Option<u64>> {
    match std::env::var("MOE_LENS_MEMORY_LIMIT") {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).map(Some),
        _ => Ok(None),
    }
}

/// `8G`, `8 GiB`, `512M`, `2048MB`, `1.5G` or a byte count.
pub fn parse_size(text: &str) -> crate::Result<u64> {
    let t = text.trim();
    let bad = || {
        crate::Error::invalid(
            "MOE_LENS_MEMORY_LIMIT",
            format!("{t:?} is not a size; write it as 8G, 512M or a number of bytes"),
        )
    };
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The host memory the kernel says is available for new allocations (`MemAvailable` in
/// /proc/meminfo); `None` where it cannot be read.
pub fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Free and total bytes of a CUDA device, as its driver reports them; `None` for other devices.
pub fn device_memory(dev: &Device) -> Option<(u64, u64)> {
    match dev {
        #[cfg(any(feature = "cuda", moe_lens_cuda))]
        Device::Cuda(d) => d.cuda_stream().context().mem_get_info().ok().map(|(f, t)| (f as u64, t as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OLMoE-1B-7B's published size: 6,919,161,856 parameters, 13.84 GB in bf16 (the Hub files).
    #[test]
    fn sizes_parse_as_written_and_bad_ones_say_how_to_write_them() {
        assert_eq!(parse_size("8G").ok(), Some(8 << 30));
        assert_eq!(parse_size(" 512 MiB ").ok(), Some(512 << 20));
        assert_eq!(parse_size("1.5g").ok(), Some(3 << 29));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        for bad in ["", "G", "eight", "8X", "-1G", "0"] {
            let e = parse_size(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("write it as 8G"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn olmoe_parameter_count_matches_the_checkpoint() {
        let cfg = Config::from_json(
            r#"{"model_type":"olmoe","vocab_size":50304,"hidden_size":2048,"intermediate_size":1024,
            "num_hidden_layers":16,"num_attention_heads":16,"num_key_value_heads":16,"num_experts":64,
            "num_experts_per_tok":8,"norm_topk_prob":false,"max_position_embeddings":4096,"rope_theta":10000.0,
            "clip_qkv":null,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
            std::path::Path::new("config.json"),
        )
        .expect("OLMoE's config");
        let (experts, other) = param_counts(&cfg);
        assert_eq!(experts + other, 6_919_161_856);
        assert_eq!(weight_bytes(&cfg, DType::BF16, 2.0), 2 * 6_919_161_856);
    }
}
