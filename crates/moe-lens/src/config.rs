//! `config.json` of an OLMoE checkpoint, read as the Hub ships it (top-level `rope_theta`,
//! `torch_dtype`, no `rms_norm_eps`) and as transformers 5.x writes it (`rope_parameters`, `dtype`).
//!
//! Never trust the config class's defaults: OLMoE's `intermediate_size` is 1024 per expert while the
//! transformers class defaults to 2048, so every size is required here. Only values that the Hub file
//! really omits get a default (`rms_norm_eps` = 1e-5, as transformers uses).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model hyper-parameters that the forward pass needs. (Its serde form is moe-lens' own, what
/// `moe-lens serve` sends a client, not `config.json`: read that with [`Config::from_file`].)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Tokens in the vocabulary (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream (OLMoE-1B-7B: 2048).
    pub hidden_size: usize,
    /// Per expert.
    pub intermediate_size: usize,
    /// Decoder layers, each with one router (OLMoE-1B-7B: 16).
    pub num_hidden_layers: usize,
    /// Query heads per attention layer.
    pub num_attention_heads: usize,
    /// Key/value heads per attention layer (fewer than query heads means grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one attention head: `hidden_size / num_attention_heads` (a config that says otherwise is refused).
    pub head_dim: usize,
    /// Experts per MoE layer (OLMoE-1B-7B: 64).
    pub num_experts: usize,
    /// Experts each token is routed to, the router's top-k (OLMoE-1B-7B: 8).
    pub num_experts_per_tok: usize,
    /// Whether the top-k routing weights are renormalised to sum to 1 (OLMoE-1B-7B: false).
    pub norm_topk_prob: bool,
    /// The longest text in tokens the model takes.
    pub max_position_embeddings: usize,
    /// Base of the rotary position embedding's frequencies.
    pub rope_theta: f64,
    /// Epsilon added inside every RMSNorm.
    pub rms_norm_eps: f64,
    /// If set, queries, keys and values are clamped to `[-clip_qkv, clip_qkv]`.
    pub clip_qkv: Option<f64>,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The end-of-sequence token (the first one where the config lists several).
    pub eos_token_id: Option<u32>,
    /// The padding token, if the config names one.
    pub pad_token_id: Option<u32>,
    /// The checkpoint's stored dtype as the config names it ("bfloat16", "float32", ...), if given.
    pub dtype: Option<String>,
}

/// `config.json` as written, both key styles.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    norm_topk_prob: bool,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    clip_qkv: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    hidden_act: Option<String>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                what: "config.json",
                hint: "a model directory needs the config.json that was saved with its weights".into(),
            },
            _ => Error::io(path, e),
        })?;
        Self::from_json(&text, path)
    }

    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| {
            Error::config(
                path,
                format!(
                    "not valid config JSON ({e}): the file is damaged or cut off; copy or download config.json again"
                ),
            )
        })?;
        raw.check(path)
    }

    /// Name under which transformers registers a layer's router (`model.layers.{i}.mlp.gate`).
    pub fn router_name(layer: usize) -> String {
        format!("model.layers.{layer}.mlp.gate")
    }
}

fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        // a list of eos ids: the first one is the one generation stops on
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

impl RawConfig {
    fn check(self, path: &Path) -> Result<Config> {
        match self.model_type.as_deref() {
            Some("olmoe") => {}
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type is {other:?}; moe-lens runs OLMoE checkpoints (model_type \"olmoe\") only",
                    path.display()
                )))
            }
            None => return Err(Error::config(path, "has no model_type; expected \"olmoe\"")),
        }
        let need = |v: Option<usize>, key: &str| -> Result<usize> {
            match v {
                Some(0) => Err(Error::config(path, format!("{key} is 0: use the config.json that was saved with the weights"))),
                Some(x) => Ok(x),
                None => Err(Error::config(path, format!("{key} is missing: use the config.json that was saved with the weights (every size is required)"))),
            }
        };
        // Sizes far beyond any real model come from a damaged file; refusing them here keeps a
        // later allocation of that size from aborting the process (a notebook kernel would die).
        for (key, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("num_experts", self.num_experts, 1 << 16),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 22),
        ] {
            if let Some(x) = v.filter(|&x| x > max) {
                return Err(Error::config(
                    path,
                    format!("{key} is {x}, far above any real model (at most {max} here): the file is damaged; copy or download config.json again"),
                ));
            }
        }
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let heads = need(self.num_attention_heads, "num_attention_heads")?;
        let kv_heads = need(self.num_key_value_heads.or(self.num_attention_heads), "num_key_value_heads")?;
        let num_experts = need(self.num_experts, "num_experts")?;
        let k = need(self.num_experts_per_tok, "num_experts_per_tok")?;
        if hidden_size % heads != 0 {
            return Err(Error::config(
                path,
                format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        if heads % kv_heads != 0 {
            return Err(Error::config(
                path,
                format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"),
            ));
        }
        let head_dim = hidden_size / heads;
        if let Some(hd) = self.head_dim {
            if hd != head_dim {
                return Err(Error::Unsupported(format!(
                    "{}: head_dim {hd} differs from hidden_size / num_attention_heads = {head_dim}; OLMoE's q_norm spans hidden_size",
                    path.display()
                )));
            }
        }
        if head_dim % 2 != 0 {
            return Err(Error::config(path, format!("head_dim {head_dim} is odd; rotary embeddings need it even")));
        }
        if k > num_experts {
            return Err(Error::config(path, format!("num_experts_per_tok {k} exceeds num_experts {num_experts}")));
        }
        if self.attention_bias {
            return Err(Error::Unsupported(format!("{}: attention_bias = true (OLMoE has none)", path.display())));
        }
        if let Some(act) = self.hidden_act.as_deref() {
            if act != "silu" {
                return Err(Error::Unsupported(format!(
                    "{}: hidden_act {act:?}; OLMoE experts use silu",
                    path.display()
                )));
            }
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return Err(Error::Unsupported(format!(
                    "{}: rope_scaling {s} (only plain RoPE is implemented)",
                    path.display()
                )));
            }
        }
        let mut rope_theta = self.rope_theta;
        if let Some(rp) = &self.rope_parameters {
            match rp.rope_type.as_deref() {
                None | Some("default") => {}
                Some(t) => {
                    return Err(Error::Unsupported(format!(
                        "{}: rope_type {t:?}; only the default (unscaled) RoPE is implemented",
                        path.display()
                    )))
                }
            }
            if let Some(t) = rp.rope_theta {
                rope_theta = Some(t);
            }
        }
        let rope_theta =
            rope_theta.ok_or_else(|| Error::config(path, "no rope_theta (top-level or in rope_parameters)"))?;
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(Error::config(path, format!("rope_theta {rope_theta} must be a finite number above 1")));
        }
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-5);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(Error::config(path, format!("rms_norm_eps {rms_norm_eps} is not a non-negative number")));
        }
        if let Some(c) = self.clip_qkv {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config(path, format!("clip_qkv {c} must be positive")));
            }
        }
        Ok(Config {
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            num_experts,
            num_experts_per_tok: k,
            norm_topk_prob: self.norm_topk_prob,
            max_position_embeddings: need(self.max_position_embeddings, "max_position_embeddings")?,
            rope_theta,
            rms_norm_eps,
            clip_qkv: self.clip_qkv,
            tie_word_embeddings: self.tie_word_embeddings,
            eos_token_id: token_id(&self.eos_token_id),
            pad_token_id: token_id(&self.pad_token_id),
            dtype: self.dtype.or(self.torch_dtype),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::from_json(s, Path::new("config.json"))
    }

    // The Hub's config.json of allenai/OLMoE-1B-7B-0924, as published.
    const HUB: &str = r#"{"architectures":["OlmoeForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
      "clip_qkv":null,"eos_token_id":50279,"hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,
      "intermediate_size":1024,"max_position_embeddings":4096,"model_type":"olmoe","norm_topk_prob":false,
      "num_attention_heads":16,"num_experts":64,"num_experts_per_tok":8,"num_hidden_layers":16,
      "num_key_value_heads":16,"output_router_logits":false,"pad_token_id":1,"rope_scaling":null,
      "rope_theta":10000.0,"router_aux_loss_coef":0.01,"tie_word_embeddings":false,"torch_dtype":"bfloat16",
      "transformers_version":"4.43.0.dev0","use_cache":true,"vocab_size":50304}"#;

    #[test]
    fn reads_the_hub_config_with_its_real_sizes() -> Result<()> {
        let c = parse(HUB)?;
        assert_eq!((c.num_hidden_layers, c.num_experts, c.num_experts_per_tok), (16, 64, 8));
        assert_eq!((c.hidden_size, c.intermediate_size, c.head_dim), (2048, 1024, 128));
        assert_eq!(c.rms_norm_eps, 1e-5, "absent from the Hub file: transformers' default applies");
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        assert!(!c.norm_topk_prob && !c.tie_word_embeddings && c.clip_qkv.is_none());
        assert_eq!(c.eos_token_id, Some(50279));
        Ok(())
    }

    #[test]
    fn reads_transformers5_keys() -> Result<()> {
        let s = HUB
            .replace(
                "\"rope_theta\":10000.0,",
                "\"rope_parameters\":{\"rope_theta\":500000.0,\"rope_type\":\"default\"},",
            )
            .replace("\"torch_dtype\"", "\"dtype\"");
        let c = parse(&s)?;
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        Ok(())
    }

    #[test]
    fn refuses_what_it_does_not_run() {
        let e = parse(&HUB.replace("\"olmoe\"", "\"mixtral\"")).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("mixtral"), "{e}");
        let s =
            HUB.replace("\"rope_theta\":10000.0,", "\"rope_parameters\":{\"rope_theta\":1e4,\"rope_type\":\"yarn\"},");
        let e = parse(&s).unwrap_err();
        assert!(e.to_string().contains("yarn"), "{e}");
        let e = parse(&HUB.replace("\"intermediate_size\":1024,", "")).unwrap_err();
        assert!(e.to_string().contains("intermediate_size is missing"), "{e}");
        let e = parse("{not json").unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        let e = parse(&HUB.replace("\"num_key_value_heads\":16", "\"num_key_value_heads\":5")).unwrap_err();
        assert!(e.to_string().contains("multiple"), "{e}");
    }
}
