//! What notebook cells and the command line call: load a model, report its router hooks, trace a
//! text, generate with routing recorded at every step.
//!
//! ```no_run
//! use moe_lens::prelude::*;
//! # fn main() -> moe_lens::Result<()> {
//! let lens = load("allenai/OLMoE-1B-7B-0924")?;        // Block 1
//! println!("{}", lens.hooks());                          // Block 2: 16 router hooks
//! let run = lens.generate("Hello, how are you?", 10)?;   // routing for prompt and every new token
//! let trace = lens.trace("The quick brown fox jumps. 안녕하세요. こんにちは.")?;
//! println!("{}", trace.top_k_table(14)?);                // Block 3
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf;
use crate::hub::{self, ModelFiles, ModelSource};
use crate::intervene::Interventions;
use crate::memory;
use crate::olmoe::{Olmoe, Tuning};
use crate::quant::{self, Quant, QuantChoice, QuantReport};
use crate::remote::client::Client;
use crate::remote::protocol::{RequestBody, RunReply};
use crate::remote::{self, SERVER_PREFIX};
use crate::spy::{LayerSelection, RouterSpy, RoutingCache, Step};
use crate::tokens::{Token, Tokenizer};
use crate::trace::Trace;

mod fit;
mod options;
mod runs;

use fit::LoadFit;
pub use options::{parse_dtype, DeviceChoice, LoadOptions, DEVICE_VAR};
pub(crate) use runs::{Generation, TraceRun};

/// A loaded model with its tokenizer: the object notebook cells work with. The model is in this
/// process, or held by a shared model server (`load("server:PATH")`, `MOE_LENS_SERVER`: see
/// [`crate::remote`]) that runs the forward passes of traces, generations and scans.
pub struct Lens {
    name: String,
    files: ModelFiles,
    backend: Backend,
    tokenizer: Tokenizer,
    quant: Option<QuantReport>,
    /// For a llama.cpp GGUF model: the experts' block types as the file stores them.
    gguf_experts: Option<String>,
    /// Why the demo model was loaded in place of the default one ([`load_with`] with nothing named
    /// and the Hub out of reach); `None` for a model that was asked for.
    fallback: Option<String>,
}

/// Where a [`Lens`]'s forward passes run. (One per `Lens`, never moved in a loop: the size
/// difference of the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
enum Backend {
    /// The model in this process.
    Local(Olmoe),
    /// A shared model server (`moe-lens serve`), with the model's dtype there.
    Remote(Box<Client>, DType),
}

/// The socket a model name or `MOE_LENS_SERVER` points at: `"server:PATH"` always; otherwise
/// `MOE_LENS_SERVER` when `env` says to read it and it is set.
fn server_socket(model: &str, env: bool) -> Option<PathBuf> {
    match model.strip_prefix(SERVER_PREFIX) {
        Some(p) => Some(PathBuf::from(p)),
        None if env => remote::server_from_env(),
        None => None,
    }
}

/// Loads a model by Hub id (`"allenai/OLMoE-1B-7B-0924"`), local directory or llama.cpp `.gguf`
/// file, with the default options (device from `MOE_LENS_DEVICE`, else `auto`; dtype by device;
/// quant `auto`). Reuses the Hugging Face cache; honours `HF_HUB_OFFLINE` and `HF_TOKEN`.
///
/// `"demo"` is the small random model shipped with the crate (OLMoE's shape: 16 router layers of
/// 64 experts, top-8, with OLMoE's tokenizer):
///
/// ```
/// use moe_lens::prelude::*;
///
/// let lens = load("demo")?;
/// let hooks = lens.hooks();
/// assert_eq!(hooks.len(), 16);
/// assert_eq!(hooks.names[14], "model.layers.14.mlp.gate");
/// assert_eq!((hooks.experts, hooks.k), (64, 8));
/// # Ok::<(), moe_lens::Error>(())
/// ```
///
/// `"server:PATH"` connects to a shared model server's socket instead (`moe-lens serve`; see
/// [`Lens::connect`]), and so does any name while `MOE_LENS_SERVER=PATH` is set: on a class's GPU
/// server the instructor sets it, and the same cells run on the one shared model.
pub fn load(model: &str) -> Result<Lens> {
    if let Some(socket) = server_socket(model, true) {
        return Lens::connect(socket);
    }
    Lens::load_with(model, &LoadOptions { device: DeviceChoice::from_env()?, ..LoadOptions::default() })
}

/// Loads `model` on the default device (`MOE_LENS_DEVICE`, else `auto`: see
/// [`DeviceChoice::from_env`]) with the experts named by `quant`, as the notebooks'
/// `MOE_LENS_QUANT` names them: `"auto"` (also `""`), `"none"`, `"q8_0"` or `"q4k"`.
///
/// `"auto"` takes 4-bit experts (q4k) on a GPU when the model's sizes allow it (hidden and expert
/// sizes multiples of 256, as OLMoE's are): the full OLMoE needs about 16 GB of GPU memory in bf16
/// and about 6 GB with q4k experts, so a 12 GB GPU slice fits it, as the Python lab's 4-bit load
/// does. On the CPU, and for small models (the demo and test models), `"auto"` keeps the
/// checkpoint's weights. A llama.cpp `.gguf` file keeps its experts as the file stores them (`auto`
/// or `none`; asking it for `q8_0`/`q4k` is an error). The printed `Lens` says which was chosen.
/// (`Lens::load_with(model, &LoadOptions { device, quant, ..Default::default() })` with a device of
/// your choice: an explicit device there wins over `MOE_LENS_DEVICE`.)
///
/// With `MOE_LENS_SERVER` set (or a `"server:PATH"` model) this connects to the server as [`load`]
/// does; `quant` is then the server's.
pub fn load_with_quant(model: &str, quant: &str) -> Result<Lens> {
    if let Some(socket) = server_socket(model, true) {
        return Lens::connect(socket);
    }
    let quant = quant.parse::<QuantChoice>()?;
    Lens::load_with(model, &LoadOptions { device: DeviceChoice::from_env()?, quant, ..LoadOptions::default() })
}

/// The environment variable naming the notebooks' model ([`load_with`] with `""` for the model).
pub const MODEL_VAR: &str = "MOE_LENS_MODEL";
/// The environment variable naming the notebooks' experts' format ([`load_with`] with `""`).
pub const QUANT_VAR: &str = "MOE_LENS_QUANT";

/// The first words of a [`Lens`]'s Display (what the notebooks' load cell prints) when the demo
/// model stands in for a model nobody named ([`load_with`]); its figures then say "demo model …
/// not OLMoE", as every figure of the demo model does.
pub const DEMO_FALLBACK_NOTICE: &str = "⚠ DEMO MODEL, NOT OLMoE";

/// Loads a model with the settings chosen in a cell, without restarting JupyterLab:
/// `load_with("demo", "", "cpu")?`. Each argument is text; `""` takes the instructor's setting from
/// the environment:
///
/// - `model`: a Hub id, a local directory, a `.gguf` file or `"demo"` (as [`load`]); `""` is
///   `MOE_LENS_MODEL`, or, when that is unset too, [`hub::OLMOE_HUB_ID`] from the Hugging Face
///   cache (downloaded once).
/// - `quant`: `"auto"`, `"none"`, `"q8_0"` or `"q4k"` (as [`load_with_quant`]); `""` is
///   `MOE_LENS_QUANT`, else `auto`.
/// - `device`: `"auto"`, `"cpu"`, `"cuda"`, `"cuda:N"` (as [`DeviceChoice`]); `""` is
///   `MOE_LENS_DEVICE`, else `auto`.
///
/// **Nothing named, no Hub:** when no model is named at all (`""` and `MOE_LENS_MODEL` unset) and
/// OLMoE is neither in the cache nor reachable (no network, or `HF_HUB_OFFLINE=1`), the shipped demo
/// model is loaded instead, so that a newcomer's notebook runs; the loaded [`Lens`] says so in its
/// first line ([`Lens::fallback`]) and every figure names the demo model. A model named in
/// `MOE_LENS_MODEL` or in `model` never falls back: its error says what to do.
pub fn load_with(model: &str, quant: &str, device: &str) -> Result<Lens> {
    if let Some(socket) = server_socket(model.trim(), true) {
        return Lens::connect(socket); // a shared server's settings are its own (as `load`)
    }
    let env = |var: &str| std::env::var(var).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let quant = match quant.trim() {
        "" => match env(QUANT_VAR) {
            Some(v) => v.parse::<QuantChoice>().map_err(|e| Error::invalid(QUANT_VAR, format!("{e}; or unset it")))?,
            None => QuantChoice::default(),
        },
        q => q.parse::<QuantChoice>()?,
    };
    let device = match device.trim() {
        "" => DeviceChoice::from_env()?,
        d => d.parse::<DeviceChoice>()?,
    };
    let opts = LoadOptions { device, quant, ..LoadOptions::default() };
    let named = match model.trim() {
        "" => env(MODEL_VAR),
        m => Some(m.to_string()),
    };
    match named {
        Some(model) => Lens::load_with(&model, &opts),
        None => Lens::load_default(&opts, &hub::HubSettings::from_env()),
    }
}

impl Lens {
    /// [`hub::OLMOE_HUB_ID`], or the demo model when OLMoE is not cached and the Hub is out of reach
    /// ([`hub::unreachable`]): what [`load_with`] loads when no model is named. When the demo model
    /// cannot be loaded either, the error is OLMoE's.
    pub(crate) fn load_default(opts: &LoadOptions, hub_settings: &hub::HubSettings) -> Result<Lens> {
        let first = match hub::resolve_with(hub::OLMOE_HUB_ID, hub_settings) {
            Ok(files) => return Self::from_files(files, opts),
            Err(e) => e,
        };
        if !hub::unreachable(&first) {
            return Err(first);
        }
        let Ok(mut demo) = hub::resolve_with("demo", hub_settings).and_then(|f| Self::from_files(f, opts)) else {
            return Err(first);
        };
        let why = if hub_settings.offline {
            format!("{} is not in the Hugging Face cache and HF_HUB_OFFLINE is set", hub::OLMOE_HUB_ID)
        } else {
            format!("{} is not in the Hugging Face cache and the Hub cannot be reached", hub::OLMOE_HUB_ID)
        };
        demo.fallback = Some(why);
        Ok(demo)
    }

    /// Loads `model` (a Hub id, directory or `.gguf` file: [`hub::resolve`]) with `opts`, in this
    /// process whatever `MOE_LENS_SERVER` says; `"server:PATH"` connects to that server (whose
    /// options are its own).
    pub fn load_with(model: &str, opts: &LoadOptions) -> Result<Lens> {
        if let Some(socket) = server_socket(model, false) {
            return Self::connect(socket);
        }
        Self::from_files(hub::resolve(model)?, opts)
    }

    /// Connects to a shared model server (`moe-lens serve --socket PATH`): the `Lens` tokenizes,
    /// checks and assembles its results here and sends the forward passes of `trace`, `generate`,
    /// `intervene(…)`, `effect`, `sweep` and `scan` to the server, which returns exactly the numbers
    /// a local run of its model computes. What needs the model's tensors in this process (`model()`,
    /// `run_with` and custom spies) is an error that says so. A server that went away is an
    /// error naming the socket; the next call connects again.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Lens> {
        let socket = socket.as_ref();
        let client = Client::connect(socket)?;
        let h = client.hello();
        let tokenizer = Tokenizer::from_wire(&h.tokenizer, h.eos, socket.to_path_buf())?;
        let dtype = parse_dtype(&h.dtype)?;
        let name = h.model.clone();
        let files = ModelFiles {
            name: name.clone(),
            dir: socket.to_path_buf(),
            source: ModelSource::Server { socket: socket.to_path_buf() },
        };
        Ok(Lens {
            name,
            files,
            backend: Backend::Remote(Box::new(client), dtype),
            tokenizer,
            quant: None,
            gguf_experts: None,
            fallback: None,
        })
    }

    /// The shared model server's socket, when this `Lens` runs there.
    pub fn server(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Remote(c, _) => Some(c.socket()),
        }
    }

    /// The server's counters, queue and memory (its GPU's too), when this `Lens` runs on a server.
    pub fn server_stats(&self) -> Result<remote::protocol::Stats> {
        match &self.backend {
            Backend::Local(_) => {
                Err(Error::invalid("server_stats", "this Lens holds its model itself, not a server's"))
            }
            Backend::Remote(c, _) => c.stats(),
        }
    }

    /// The connection to the shared model server, when this `Lens` runs there.
    pub(crate) fn client(&self) -> Option<&Client> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Remote(c, _) => Some(c),
        }
    }

    /// The model's dtype (in this process or on the server).
    pub(crate) fn dtype(&self) -> DType {
        match &self.backend {
            Backend::Local(m) => m.dtype(),
            Backend::Remote(_, d) => *d,
        }
    }

    /// Loads from already resolved files (what [`hub::resolve`] found, or files named by hand):
    /// reads the config once, opens the device once, then chooses the experts ([`QuantChoice`]).
    /// Quantized experts are quantized from the safetensors on the first load and cached next to
    /// them ([`crate::quant`]).
    pub fn from_files(files: ModelFiles, opts: &LoadOptions) -> Result<Lens> {
        match files.source.clone() {
            ModelSource::Safetensors { config, tokenizer, weights } => {
                Self::from_safetensors(files, &config, &tokenizer, &weights, opts)
            }
            ModelSource::Gguf { path, tokenizer } => Self::from_gguf(files, path, tokenizer, opts),
            ModelSource::Server { socket } => Self::connect(socket),
        }
    }

    fn from_safetensors(
        files: ModelFiles,
        config: &Path,
        tokenizer: &Path,
        weights: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<Lens> {
        let cfg = Config::from_file(config)?;
        let tokenizer = Tokenizer::from_file(tokenizer)?;
        if tokenizer.vocab_size() > cfg.vocab_size {
            return Err(Error::config(
                config,
                format!("vocab_size {} is smaller than the tokenizer's {} ids: tokenizer.json and config.json do not belong together", cfg.vocab_size, tokenizer.vocab_size()),
            ));
        }
        let device = opts.device.open()?;
        let dtype = opts.dtype.unwrap_or(if device.is_cpu() { DType::F32 } else { DType::BF16 });
        let quant = opts.quant.resolve(&cfg, &device, dtype);
        // the model builder reports a config that contradicts the weights under the placeholder
        // path "config.json": name the real file and say what to do
        let mismatch = |e: Error| {
            match e {
            Error::Config { path, msg } if path.as_os_str() == "config.json" => Error::Config {
                path: config.to_path_buf(),
                msg: format!("{msg}: the weights and config.json do not belong together; use the config.json saved with these weights"),
            },
            e => e,
        }
        };
        let fit = LoadFit::new(&cfg, &device, dtype, quant);
        fit.check()?;
        let (model, quant) = match quant {
            Quant::None => {
                (Olmoe::load(&cfg, weights, &device, dtype).map_err(mismatch).map_err(|e| fit.explain(e))?, None)
            }
            q => {
                let (m, r) = quant::load_quantized(&cfg, weights, &files.dir, &device, dtype, q)
                    .map_err(mismatch)
                    .map_err(|e| fit.explain(e))?;
                (m, Some(r))
            }
        };
        let model = model.with_tuning(opts.tuning.clone());
        Ok(Lens {
            name: files.name.clone(),
            files,
            backend: Backend::Local(model),
            tokenizer,
            quant,
            gguf_experts: None,
            fallback: None,
        })
    }

    /// Loads a llama.cpp OLMoE GGUF file (see [`quant::open_gguf`]): config from its metadata,
    /// experts in the file's block types, the tokenizer from `tokenizer.json` beside the file or
    /// else rebuilt from the file's metadata ([`gguf::tokenizer_from_metadata`]).
    fn from_gguf(files: ModelFiles, path: PathBuf, beside: Option<PathBuf>, opts: &LoadOptions) -> Result<Lens> {
        if let QuantChoice::Fixed(quant @ (Quant::Q8_0 | Quant::Q4K)) = opts.quant {
            return Err(Error::invalid(
                "quant",
                format!(
                    "{quant} for {}: a GGUF file's experts are already quantized as the file stores them; \
                     load it with quant none (or auto)",
                    path.display()
                ),
            ));
        }
        let device = opts.device.open()?;
        let dtype = opts.dtype.unwrap_or(if device.is_cpu() { DType::F32 } else { DType::BF16 });
        let g = quant::open_gguf(&path, &device, dtype).map_err(|e| match e {
            Error::OutOfMemory { device: d, needed, cause, .. } => {
                let (free, total) = memory::device_memory(&device).unzip();
                Error::OutOfMemory {
                    device: d,
                    during: format!("loading {}", path.display()),
                    needed,
                    free,
                    total,
                    advice:
                        "use a file with smaller experts (Q4_K_M rather than Q8_0 or bf16), free the GPU of other work \
                             (nvidia-smi shows what holds it), or choose another GPU (--device cuda:N)"
                            .into(),
                    cause,
                }
            }
            e => e,
        })?;
        let tokenizer = match &beside {
            Some(t) => Tokenizer::from_file(t)?,
            None => gguf::tokenizer_from_metadata(&g.metadata, &path)?,
        };
        if tokenizer.vocab_size() > g.config.vocab_size {
            return Err(Error::config(
                beside.as_deref().unwrap_or(&path),
                format!(
                    "the tokenizer has {} ids but {} embeds only {}: the tokenizer.json beside the file belongs to another model; remove it or use the model's own",
                    tokenizer.vocab_size(),
                    path.display(),
                    g.config.vocab_size
                ),
            ));
        }
        Ok(Lens {
            name: files.name.clone(),
            files,
            backend: Backend::Local(g.model.with_tuning(opts.tuning.clone())),
            tokenizer,
            quant: None,
            gguf_experts: Some(g.experts),
            fallback: None,
        })
    }

    /// The model as the user named it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Why the demo model was loaded in place of OLMoE, when [`load_with`] fell back to it (no
    /// model named, OLMoE not cached, the Hub out of reach); `None` for a model that was asked for.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
    /// What the model was loaded from: its directory ([`ModelFiles::dir`]) and files
    /// ([`ModelFiles::source`]: a safetensors checkpoint or a llama.cpp GGUF file).
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }
    /// The model's hyper-parameters (layers, experts, top-k, ...).
    pub fn config(&self) -> &Config {
        match &self.backend {
            Backend::Local(m) => m.config(),
            Backend::Remote(c, _) => &c.hello().config,
        }
    }
    /// The loaded OLMoE model itself, for custom forward passes and spies; an error for a `Lens`
    /// connected to a shared model server (the model is in the server's process).
    pub fn model(&self) -> Result<&Olmoe> {
        match &self.backend {
            Backend::Local(m) => Ok(m),
            Backend::Remote(c, _) => Err(Error::Unsupported(format!(
                "this needs the model's tensors in this process, but this Lens runs on the moe-lens server at {} \
                 (MOE_LENS_SERVER or load(\"server:…\")), which does traces, generations, interventions, effects, \
                 sweeps and scans only; for custom spies or the model's tensors load the model here: \
                 Lens::load_with(model, &LoadOptions::default()) (it needs a GPU or memory of its own)",
                c.socket().display()
            ))),
        }
    }
    /// Changes how the model runs on a GPU (see [`Tuning`]); a `Lens` on a shared server keeps the
    /// server's settings.
    pub fn set_tuning(&mut self, tuning: Tuning) {
        if let Backend::Local(m) = &mut self.backend {
            m.set_tuning(tuning);
        }
    }
    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The experts' block types as a llama.cpp GGUF file stores them (`"Q4_K, Q6_K"`), when the
    /// model came from one.
    pub fn gguf_experts(&self) -> Option<&str> {
        self.gguf_experts.as_deref()
    }
    /// What the quantized load did (cache hit, cache path), when the experts are quantized.
    pub fn quant_report(&self) -> Option<&QuantReport> {
        self.quant.as_ref()
    }

    /// The router hooks this model has: one per layer, named as transformers names the modules.
    pub fn hooks(&self) -> Hooks {
        let c = self.config();
        Hooks {
            names: (0..c.num_hidden_layers).map(Config::router_name).collect(),
            experts: c.num_experts,
            k: c.num_experts_per_tok,
            norm_topk_prob: c.norm_topk_prob,
        }
    }

    /// Tokens of `text` with labels, offsets and scripts (no model run).
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>> {
        self.tokenizer.encode(text)
    }

    fn encode_checked(&self, text: &str, extra: usize) -> Result<(Vec<Token>, Tensor)> {
        let tokens = self.tokens_checked(text, extra)?;
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        let input = Tensor::new(ids.as_slice(), self.model()?.device())?.unsqueeze(0)?; // [1, T]
        Ok((tokens, input))
    }

    /// The tokens of `text`, checked to fit the model's context with `extra` tokens more.
    fn tokens_checked(&self, text: &str, extra: usize) -> Result<Vec<Token>> {
        let tokens = self.tokenizer.encode(text)?;
        let max = self.config().max_position_embeddings;
        let Some(total) = tokens.len().checked_add(extra) else {
            return Err(Error::invalid(
                "max_new_tokens",
                format!("{extra}: the model's context holds {max} tokens in all, the prompt included; ask for fewer new tokens"),
            ));
        };
        if total > max {
            return Err(Error::TextTooLong { tokens: total, max });
        }
        Ok(tokens)
    }

    /// A trace or generation run on the server, assembled here as [`Trace::assemble`] assembles a
    /// local one (the same checks, the same layout).
    fn remote_run(
        &self,
        client: &Client,
        body: RequestBody,
        layers: &LayerSelection,
        edits: &Interventions,
    ) -> Result<Trace> {
        let c = self.config();
        layers.check(c.num_hidden_layers)?;
        if !edits.is_empty() {
            edits.check(c.num_hidden_layers, c.num_experts, c.num_experts_per_tok)?;
        }
        let RunReply { text, tokens, prompt_len, routing } = client.run(body)?;
        let mut cache = match layers {
            LayerSelection::All => RoutingCache::new(),
            LayerSelection::Only(v) => RoutingCache::for_layers(v),
        };
        for r in &routing {
            cache.push(r.to_routing()?);
        }
        let mut trace = Trace::assemble(&self.name, &text, tokens, prompt_len, cache, c.num_hidden_layers)?;
        trace.interventions = edits.clone();
        Ok(trace)
    }

    /// Runs `text` once and captures every router.
    ///
    /// ```
    /// use moe_lens::prelude::*;
    ///
    /// let lens = load("demo")?;
    /// let trace = lens.trace("저는 보통 여섯 시에 일어나요.")?;
    /// assert_eq!(trace.layers.len(), 16); // one per router layer
    /// let layer = trace.layer(14)?;
    /// for (probs, chosen) in layer.probs.iter().zip(&layer.top_k) {
    ///     assert_eq!(probs.len(), 64); // a probability for every expert…
    ///     assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-3); // …summing to 1
    ///     assert_eq!(chosen.len(), 8); // and the 8 experts the token was routed to
    /// }
    /// assert_eq!(layer.probs.len(), trace.tokens.len()); // one row per token
    /// # Ok::<(), moe_lens::Error>(())
    /// ```
    pub fn trace(&self, text: &str) -> Result<Trace> {
        self.trace_layers(text, LayerSelection::All)
    }

    /// Runs `text` once and captures the chosen routers only.
    pub fn trace_layers(&self, text: &str, layers: LayerSelection) -> Result<Trace> {
        self.trace_edited(text, layers, &Interventions::new())
    }

    /// [`Lens::trace_layers`] under interventions at the routers (see [`crate::intervene`]).
    pub(crate) fn trace_edited(&self, text: &str, layers: LayerSelection, edits: &Interventions) -> Result<Trace> {
        if let Backend::Remote(client, _) = &self.backend {
            self.tokens_checked(text, 0)?;
            let only = match &layers {
                LayerSelection::All => None,
                LayerSelection::Only(v) => Some(v.clone()),
            };
            let body = RequestBody::Trace { text: text.to_string(), layers: only, interventions: edits.clone() };
            return self.remote_run(client, body, &layers, edits);
        }
        let (tokens, input) = self.encode_checked(text, 0)?;
        let mut cache = match &layers {
            LayerSelection::All => RoutingCache::new(),
            LayerSelection::Only(v) => RoutingCache::for_layers(v),
        };
        let sets = if edits.is_empty() { &[][..] } else { std::slice::from_ref(edits) };
        self.model()?.forward_edited(&input, None, None, Step::Prefill, Some(&mut cache), sets)?;
        let n = tokens.len();
        let mut trace = Trace::assemble(&self.name, text, tokens, n, cache, self.config().num_hidden_layers)?;
        trace.interventions = edits.clone();
        Ok(trace)
    }

    /// Runs `text` with any spy attached (see [`crate::spy`]); returns its tokens.
    pub fn run_with(&self, text: &str, spy: &mut dyn RouterSpy) -> Result<Vec<Token>> {
        let (tokens, input) = self.encode_checked(text, 0)?;
        self.model()?.forward(&input, None, None, Step::Prefill, Some(spy))?;
        Ok(tokens)
    }

    /// Greedy generation of up to `max_new_tokens` (stops early at end-of-text), with the routing
    /// of the prompt (prefill) and of every generated token (one decode step each) recorded.
    pub fn generate(&self, text: &str, max_new_tokens: usize) -> Result<Trace> {
        self.generate_with(text, &GenerateOptions { max_new_tokens, stop_at_eos: true })
    }

    /// Greedy generation with options.
    pub fn generate_with(&self, text: &str, opts: &GenerateOptions) -> Result<Trace> {
        self.generate_edited(text, opts, &Interventions::new())
    }

    /// [`Lens::generate_with`] under interventions at the routers, which hold at every step.
    pub(crate) fn generate_edited(&self, text: &str, opts: &GenerateOptions, edits: &Interventions) -> Result<Trace> {
        if let Backend::Remote(client, _) = &self.backend {
            self.tokens_checked(text, opts.max_new_tokens)?;
            let body = RequestBody::Generate {
                text: text.to_string(),
                max_new_tokens: opts.max_new_tokens,
                stop_at_eos: opts.stop_at_eos,
                interventions: edits.clone(),
            };
            return self.remote_run(client, body, &LayerSelection::All, edits);
        }
        let mut run = Generation::start(self, text, opts, edits)?;
        while !run.step()? {}
        run.finish()
    }
}

impl fmt::Display for Lens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.fallback {
            // loud, first, and on lines of its own: a newcomer must not take the demo for OLMoE
            writeln!(
                f,
                "{DEMO_FALLBACK_NOTICE}: no model was named (MOE_LENS_MODEL is not set) and {why}, so the \
                 notebook runs on the small demo model shipped with moe-lens (trained for this course; its \
                 routing says nothing about OLMoE). Every figure says \"demo\"."
            )?;
            writeln!(
                f,
                "  For OLMoE: download it once where there is network, or set MOE_LENS_MODEL before starting \
                 the lab, or in a cell: let lens = moe_lens::lab::load_with(\"{}\", \"\", \"\")?;",
                hub::OLMOE_HUB_ID
            )?;
        }
        let c = self.config();
        let model = match &self.backend {
            Backend::Local(m) => m,
            Backend::Remote(client, _) => {
                let h = client.hello();
                return write!(
                    f,
                    "{} on the moe-lens server at {} ({})",
                    self.name,
                    client.socket().display(),
                    h.summary
                );
            }
        };
        let device = match model.device() {
            Device::Cpu => "cpu".to_string(),
            // the ordinal among the GPUs this process sees (CUDA_VISIBLE_DEVICES renumbers them)
            d @ Device::Cuda(_) => match d.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                _ => "cuda".to_string(),
            },
            Device::Metal(_) => "metal".to_string(),
        };
        write!(
            f,
            "{} on {device} in {:?}: {} layers × {} experts (top-{}), hidden {}, vocabulary {}",
            self.name,
            model.dtype(),
            c.num_hidden_layers,
            c.num_experts,
            c.num_experts_per_tok,
            c.hidden_size,
            c.vocab_size
        )?;
        if let Some((free, total)) = memory::device_memory(model.device()) {
            // the device's memory after the load, so a student on a shared GPU or a MIG slice
            // sees at once how much room is left
            write!(f, "; GPU memory {} free of {}", crate::error::gib(free), crate::error::gib(total))?;
        }
        if let Some(q) = &self.quant {
            let how = match (q.cache_hit, &q.cache_write_error) {
                (true, _) => "from the cache".to_string(),
                (false, None) => "quantized now and cached".to_string(),
                // where it tried and what to do: otherwise every load quantizes again unnoticed
                (false, Some(e)) => format!("quantized now; {e}"),
            };
            write!(f, "; experts in {} ({how})", q.quant)?;
        }
        if let Some(t) = &self.gguf_experts {
            let tok = if self.files.tokenizer().is_none() { "its own metadata" } else { "tokenizer.json beside it" };
            write!(f, "; llama.cpp GGUF file, experts in {t}, tokenizer from {tok}")?;
        }
        Ok(())
    }
}

/// Short, so that a notebook cell ending in `lens` does not print every tensor.
impl fmt::Debug for Lens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lens({self})")
    }
}

/// Options of [`Lens::generate_with`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The most tokens to generate after the prompt.
    pub max_new_tokens: usize,
    /// Stop after the end-of-text token (as transformers' `generate` does).
    pub stop_at_eos: bool,
}

/// The router hooks of a model: what the Python lab registers on every `mlp.gate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hooks {
    /// Hook name of each router layer, `model.layers.{i}.mlp.gate`, in layer order.
    pub names: Vec<String>,
    /// Experts per layer (OLMoE-1B-7B: 64).
    pub experts: usize,
    /// Experts chosen per token, the top-k (OLMoE-1B-7B: 8).
    pub k: usize,
    /// Whether the chosen experts' weights are renormalised to sum to 1.
    pub norm_topk_prob: bool,
}

impl Hooks {
    /// Number of router hooks (one per layer).
    pub fn len(&self) -> usize {
        self.names.len()
    }
    /// Whether there are no hooks.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl fmt::Display for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.names.first().map(String::as_str).unwrap_or("-");
        let last = self.names.last().map(String::as_str).unwrap_or("-");
        write!(
            f,
            "{} router hooks ({first} … {last}) · {} experts · top-{} · top-k weights {}",
            self.names.len(),
            self.experts,
            self.k,
            if self.norm_topk_prob { "renormalised to sum 1" } else { "not renormalised" }
        )
    }
}
