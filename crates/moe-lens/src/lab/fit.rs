//! What a load will take on its device ([`LoadFit`]): checked before anything is allocated, and
//! used to explain an out-of-memory error during the load with numbers and advice that works.

use candle_core::{DType, Device};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory;
use crate::quant::Quant;

/// What a safetensors load will take on its device, checked before anything is allocated and
/// used to explain an out-of-memory error during the load.
pub(super) struct LoadFit<'a> {
    device: &'a Device,
    quant: Quant,
    /// Weights on the device, bytes.
    need: u64,
    /// The same model with 4-bit experts, for the advice.
    need_q4k: u64,
    /// Whether the model's sizes allow q4k (multiples of 256).
    q4k_ok: bool,
}

impl<'a> LoadFit<'a> {
    pub(super) fn new(cfg: &Config, device: &'a Device, dtype: DType, quant: Quant) -> Self {
        let per_value = |q: Quant| match q {
            Quant::None => dtype.size_in_bytes() as f64,
            Quant::Q8_0 => 34.0 / 32.0,
            Quant::Q4K => 144.0 / 256.0,
        };
        // the non-expert weights stay in the model dtype (bf16 on a GPU)
        let need = memory::weight_bytes(cfg, dtype, per_value(quant));
        let need_q4k = memory::weight_bytes(cfg, dtype, per_value(Quant::Q4K));
        let q4k_ok = cfg.hidden_size.is_multiple_of(256) && cfg.intermediate_size.is_multiple_of(256);
        LoadFit { device, quant, need, need_q4k, q4k_ok }
    }

    /// What will work when this load does not fit.
    fn advice(&self, free: Option<u64>) -> String {
        let fits = |b: u64| free.is_none_or(|f| b + memory::GPU_LOAD_MARGIN <= f);
        let other = if self.device.is_cpu() {
            "use a GPU (--device cuda), a machine with more memory, or the demo model (MOE_LENS_MODEL=demo)"
        } else {
            "free the GPU of other work (nvidia-smi shows what holds it), choose another GPU \
             (--device cuda:N, or CUDA_VISIBLE_DEVICES for a MIG slice), or run on the CPU (--device cpu)"
        };
        if self.quant != Quant::Q4K && self.q4k_ok && fits(self.need_q4k) {
            format!(
                "load it with 4-bit experts, which need about {}: --quant q4k on the command line, \
                 MOE_LENS_QUANT=q4k or load_with_quant(model, \"q4k\") in a notebook",
                crate::error::gib(self.need_q4k)
            )
        } else if self.quant != Quant::Q4K && self.q4k_ok {
            format!(
                "even 4-bit experts (--quant q4k, about {}) would not fit: {other}",
                crate::error::gib(self.need_q4k)
            )
        } else {
            other.to_string()
        }
    }

    /// Refuses a load whose weights alone exceed what it may take, before allocating: the device's
    /// free memory (a GPU's, as its driver reports it; on the CPU the host's `MemAvailable`) and the
    /// cap `MOE_LENS_MEMORY_LIMIT`, whichever is smaller.
    pub(super) fn check(&self) -> Result<()> {
        let limit = memory::memory_limit()?;
        let (free, total) = match memory::device_memory(self.device) {
            Some((f, t)) => (Some(f), Some(t)),
            None if self.device.is_cpu() => (memory::host_available(), None),
            None => (None, None),
        };
        self.check_with(limit, free, total)
    }

    /// [`Self::check`] with the numbers given.
    fn check_with(&self, limit: Option<u64>, free: Option<u64>, total: Option<u64>) -> Result<()> {
        let room = match (limit, free) {
            (Some(l), Some(f)) => l.min(f),
            (Some(l), None) => l,
            (None, Some(f)) => f,
            (None, None) => return Ok(()),
        };
        let need = self.need + memory::GPU_LOAD_MARGIN;
        if need <= room {
            return Ok(());
        }
        let capped = limit.is_some_and(|l| free.is_none_or(|f| l < f));
        let mut advice = self.advice(Some(room));
        if capped {
            advice = format!(
                "MOE_LENS_MEMORY_LIMIT caps a load at {} on this machine; {advice}, or ask whoever set the \
                 limit (the instructor) before raising it",
                crate::error::gib(limit.unwrap_or(0))
            );
        }
        Err(Error::OutOfMemory {
            device: if self.device.is_cpu() { "CPU".into() } else { "GPU".into() },
            during: format!("loading the model with {} experts", self.quant_label()),
            needed: Some(need),
            free,
            total,
            advice,
            cause: "checked before loading; nothing was allocated".into(),
        })
    }

    fn quant_label(&self) -> &'static str {
        match self.quant {
            Quant::None => "unquantized",
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4k",
        }
    }

    /// An out-of-memory error during the load, with the numbers and the advice of this load.
    pub(super) fn explain(&self, e: Error) -> Error {
        match e {
            Error::OutOfMemory { device, cause, .. } => {
                let (free, total) = memory::device_memory(self.device).unzip();
                Error::OutOfMemory {
                    device,
                    during: format!("loading the model with {} experts", self.quant_label()),
                    needed: Some(self.need + memory::GPU_LOAD_MARGIN),
                    free,
                    total,
                    advice: self.advice(free),
                    cause,
                }
            }
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::quant::QuantChoice;

    fn olmoe() -> Config {
        Config::from_json(
            r#"{"model_type":"olmoe","vocab_size":50304,"hidden_size":2048,"intermediate_size":1024,
            "num_hidden_layers":16,"num_attention_heads":16,"num_key_value_heads":16,"num_experts":64,
            "num_experts_per_tok":8,"norm_topk_prob":false,"max_position_embeddings":4096,"rope_theta":10000.0,
            "clip_qkv":null,"tie_word_embeddings":false,"torch_dtype":"bfloat16"}"#,
            Path::new("config.json"),
        )
        .expect("OLMoE's config")
    }

    /// The driver's out-of-memory error during a bf16 load of OLMoE on a 12 GB slice (a CPU-side
    /// stand-in for the driver's error): the numbers, 4-bit experts first, no advice that cannot
    /// work here (q8_0 is larger than q4k, `trace` has no --batch, the model already is bf16).
    #[test]
    fn a_bf16_load_that_does_not_fit_says_q4k_with_numbers() {
        let cfg = olmoe();
        let fit = LoadFit::new(&cfg, &Device::Cpu, DType::BF16, Quant::None);
        let driver = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        let e = fit.explain(Error::from(driver));
        let Error::OutOfMemory { needed, advice, .. } = &e else { panic!("not an out-of-memory error: {e:?}") };
        assert_eq!(*needed, Some(2 * 6_919_161_856 + memory::GPU_LOAD_MARGIN));
        assert!(advice.contains("--quant q4k") && advice.contains("MOE_LENS_QUANT=q4k"), "{advice}");
        let text = e.to_string();
        assert!(text.contains("while loading the model with unquantized experts (it needs about 13.4 GiB)"), "{text}");
        assert!(text.contains("about 4.3 GiB"), "{text}");
        for wrong in ["q8_0", "--batch", "smaller dtype"] {
            assert!(!text.contains(wrong), "{wrong:?} in: {text}");
        }
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        // with the driver's free memory known: 11.5 GiB free, q4k fits; 3 GiB free, nothing does
        let free = |g: f64| Some((g * (1u64 << 30) as f64) as u64);
        assert!(fit.advice(free(11.5)).starts_with("load it with 4-bit experts"));
        let none_fits = fit.advice(free(3.0));
        assert!(none_fits.starts_with("even 4-bit experts") && none_fits.contains("--device"), "{none_fits}");
        // a q4k load that does not fit does not suggest q4k again
        let q = LoadFit::new(&cfg, &Device::Cpu, DType::BF16, Quant::Q4K).advice(free(3.0));
        assert!(!q.contains("--quant") && q.contains("--device cuda"), "{q}");
    }

    /// MOE_LENS_MEMORY_LIMIT (here given as a number) caps a load below the memory that is free:
    /// the refusal names the cap and who sets it; under the cap the load goes ahead.
    #[test]
    fn a_memory_limit_refuses_a_load_above_it_and_says_so() {
        let cfg = olmoe();
        let g = |x: f64| Some((x * (1u64 << 30) as f64) as u64);
        let q4k = LoadFit::new(&cfg, &Device::Cpu, DType::F32, Quant::Q4K); // about 5.6 GiB
        assert!(q4k.check_with(g(8.0), g(20.0), None).is_ok());
        let e = q4k.check_with(g(4.0), g(20.0), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("MOE_LENS_MEMORY_LIMIT caps a load at 4.0 GiB") && e.contains("it needs about"), "{e}");
        // the host's free memory binds when it is lower than the cap
        let e = q4k.check_with(g(64.0), g(3.0), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("out of memory on the CPU") && !e.contains("MOE_LENS_MEMORY_LIMIT"), "{e}");
        // float32 OLMoE on the CPU: 27.7 GB; the advice is q4k
        let f32_load = LoadFit::new(&cfg, &Device::Cpu, DType::F32, Quant::None);
        let e = f32_load.check_with(None, g(16.0), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("it needs about 26.3 GiB") && e.contains("--quant q4k"), "{e}");
    }

    /// `auto` never loads OLMoE's experts in full precision on the CPU (27.7 GB in float32); small
    /// models keep their weights.
    #[test]
    fn auto_quantizes_a_large_model_on_the_cpu_too() {
        let cfg = olmoe();
        assert_eq!(QuantChoice::Auto.resolve(&cfg, &Device::Cpu, DType::F32), Quant::Q4K);
        assert_eq!(QuantChoice::Auto.resolve(&cfg, &Device::Cpu, DType::BF16), Quant::Q4K);
        let mut small = cfg.clone();
        small.num_hidden_layers = 2;
        small.num_experts = 16;
        assert_eq!(QuantChoice::Auto.resolve(&small, &Device::Cpu, DType::F32), Quant::None);
        assert_eq!(QuantChoice::Fixed(Quant::None).resolve(&cfg, &Device::Cpu, DType::F32), Quant::None);
    }
}
