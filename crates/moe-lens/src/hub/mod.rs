//! Finding a model's files: a local directory, a llama.cpp `.gguf` file, or a Hugging Face Hub id
//! looked up in (and, when needed, downloaded into) the Hugging Face cache. What was found comes
//! back as a [`ModelFiles`] whose [`ModelSource`] says which kind of model it is.
//!
//! A model is given either as a directory in the Hub's layout (`config.json`, `tokenizer.json`, and
//! `model.safetensors` or `model.safetensors.index.json` plus the shards its `weight_map` names), or
//! as a Hub id `owner/name`, optionally `owner/name@revision` (a branch, tag or 40-hex commit).
//!
//! Hub ids are resolved through the cache that Python's `huggingface_hub` uses, with the same
//! location rules ([`HubSettings::from_env`]) and the same layout
//! (`<cache>/models--{owner}--{name}/{refs,snapshots,blobs}`), so a model that Python downloaded is
//! found here and never downloaded twice, and the other way round. The cache is always tried first:
//! a complete snapshot is used without touching the network. Only missing files are downloaded,
//! with `hf-hub`'s blocking client writing into that same cache; with `HF_HUB_OFFLINE` set, a
//! missing file is an [`Error::Offline`] instead.
//!
//! Environment variables read by [`HubSettings::from_env`]: `HF_HUB_CACHE`,
//! `HUGGINGFACE_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`, `HF_HUB_OFFLINE`,
//! `TRANSFORMERS_OFFLINE`, `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, `HF_TOKEN_PATH`, `HF_ENDPOINT` (a
//! Hub mirror) and `MOE_LENS_NO_PROGRESS`.
//!
//! An interrupted download is resumed, not restarted: bytes go to `blobs/<etag>.incomplete` (the
//! name Python's `huggingface_hub` uses, so either can continue the other's partial file), and the
//! next run asks the server for the rest with an HTTP `Range` request. The file becomes the blob
//! only once it has exactly the size the Hub announced.
//!
//! The parts: `settings.rs` (the environment), `id.rs` (Hub ids), `cache.rs` (the cache layout and
//! lookups), `download.rs` (the resumable downloader), `demo.rs` (the shipped demo model).

mod cache;
mod demo;
mod download;
mod id;
mod settings;

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

pub use cache::cached_snapshot;
pub use download::INCOMPLETE_SUFFIX;
pub use id::HubId;
use settings::expand_user;
pub use settings::HubSettings;

/// The model configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer file (the `tokenizers` library's JSON format).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The index of sharded safetensors weights; its `weight_map` maps tensor names to shard files.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Unsharded safetensors weights.
pub const SINGLE_WEIGHTS_FILE: &str = "model.safetensors";
/// The revision used when a Hub id has no `@revision`.
pub const DEFAULT_REVISION: &str = "main";
/// The Hub model this library is made for, used in examples and hints.
pub const OLMOE_HUB_ID: &str = "allenai/OLMoE-1B-7B-0924";

/// Where a model's files are, once resolved: what [`resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// What the user gave (a directory, a `.gguf` file or a Hub id, with `@revision` if any), for
    /// messages and exports.
    pub name: String,
    /// The directory holding the files: the local directory (made absolute), the cache snapshot
    /// `<cache>/models--{owner}--{name}/snapshots/{commit}`, or the directory of the GGUF file.
    pub dir: PathBuf,
    /// Which kind of model, and its files.
    pub source: ModelSource,
}

/// The kind of model [`resolve`] found, with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A checkpoint in the Hugging Face layout.
    Safetensors {
        /// `config.json`.
        config: PathBuf,
        /// `tokenizer.json`.
        tokenizer: PathBuf,
        /// The safetensors files: the shards named by the index (deduplicated, sorted by file
        /// name, which is their index order `model-0000i-of-0000n`), or the single
        /// `model.safetensors`.
        weights: Vec<PathBuf>,
    },
    /// A llama.cpp GGUF file, whose metadata holds the config (and maybe the tokenizer).
    Gguf {
        /// The `.gguf` file.
        path: PathBuf,
        /// The `tokenizer.json` beside the file; `None`: the tokenizer is rebuilt from the file's
        /// `tokenizer.ggml.*` metadata.
        tokenizer: Option<PathBuf>,
    },
    /// A shared model server's socket (`load("server:PATH")`, `MOE_LENS_SERVER`): the model and
    /// its files are the server's.
    Server {
        /// The server's Unix socket.
        socket: PathBuf,
    },
}

impl ModelFiles {
    /// `config.json`; `None` for a GGUF file (its metadata holds the config).
    pub fn config(&self) -> Option<&Path> {
        match &self.source {
            ModelSource::Safetensors { config, .. } => Some(config),
            ModelSource::Gguf { .. } | ModelSource::Server { .. } => None,
        }
    }

    /// `tokenizer.json`; `None` for a GGUF file without one beside it.
    pub fn tokenizer(&self) -> Option<&Path> {
        match &self.source {
            ModelSource::Safetensors { tokenizer, .. } => Some(tokenizer),
            ModelSource::Gguf { tokenizer, .. } => tokenizer.as_deref(),
            ModelSource::Server { .. } => None,
        }
    }

    /// The files holding the weights: the safetensors files, or the GGUF file.
    pub fn weights(&self) -> &[PathBuf] {
        match &self.source {
            ModelSource::Safetensors { weights, .. } => weights,
            ModelSource::Gguf { path, .. } => std::slice::from_ref(path),
            ModelSource::Server { .. } => &[],
        }
    }

    /// The GGUF file, when the model is a llama.cpp GGUF file rather than a safetensors checkpoint.
    pub fn gguf(&self) -> Option<&Path> {
        match &self.source {
            ModelSource::Gguf { path, .. } => Some(path),
            ModelSource::Safetensors { .. } | ModelSource::Server { .. } => None,
        }
    }
}

/// `path` made absolute against the working directory (without resolving symlinks); unchanged if
/// that fails.
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The example appended to every "not a model" message.
pub(super) fn model_example() -> String {
    format!(
        "give a directory holding config.json, tokenizer.json and the safetensors weights, or a \
         Hub id such as {OLMOE_HUB_ID} (optionally with @revision, e.g. {OLMOE_HUB_ID}@main)"
    )
}

/// Resolves `model` (a local directory, a `.gguf` file or a Hub id) with the settings of the
/// environment:
/// `resolve_with(model, &HubSettings::from_env())`.
pub fn resolve(model: &str) -> Result<ModelFiles> {
    resolve_with(model, &HubSettings::from_env())
}

/// Resolves `model` to its files, and says what it found ([`ModelFiles::source`]).
///
/// - `demo` (any case) is the small demo model shipped in this crate's `data/demo` (an
///   [`Error::MissingFile`] until `tests/setup-data.sh` or `kernel-setup/install.sh` has copied
///   OLMoE's tokenizer.json there); a directory named `demo` needs `./demo`.
/// - An existing directory (a leading `~` is expanded) is read with [`local_dir`]; a directory wins
///   over a Hub id of the same spelling.
/// - An existing `.gguf` file (any case) is a [`ModelSource::Gguf`], with the `tokenizer.json`
///   beside it if there is one.
/// - A Hub id (`owner/name[@revision]`, see [`HubId::parse`]) is looked up in `s.cache_dir`; a
///   complete snapshot is used without network. Otherwise the missing files are downloaded into
///   that cache (config.json, tokenizer.json, the index, then each shard; files already present as
///   blobs, e.g. from an older snapshot, are linked instead of downloaded), or, with `s.offline`,
///   [`Error::Offline`] says what is missing.
/// - Anything else is [`Error::InvalidArgument`]; a path-like string whose directory does not
///   exist is [`Error::MissingFile`].
pub fn resolve_with(model: &str, s: &HubSettings) -> Result<ModelFiles> {
    let given = model.trim();
    if given.is_empty() {
        return Err(Error::InvalidArgument { what: "model", msg: format!("the model is empty: {}", model_example()) });
    }
    if given.eq_ignore_ascii_case("demo") {
        return demo::files(given);
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).map(PathBuf::from);
    let path = expand_user(given, home.as_deref());
    if path.is_dir() {
        return local_dir(&path, given);
    }
    if is_gguf_path(&path) {
        if path.is_file() {
            return Ok(gguf_files(&path, given));
        }
        if !path.exists() {
            return Err(Error::MissingFile {
                path: absolute(&path),
                what: "GGUF file",
                hint: format!(
                    "there is no such file (relative paths start from the working directory {}); \
                     pass the path of a llama.cpp .gguf file of OLMoE",
                    std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
                ),
            });
        }
    }
    if path.exists() {
        return Err(Error::InvalidArgument {
            what: "model",
            msg: format!(
                "{} is a file, not a directory: pass the directory that holds config.json, \
                 tokenizer.json and the weights, or a llama.cpp .gguf file",
                path.display()
            ),
        });
    }
    match HubId::parse(given) {
        Ok(id) => cache::resolve_hub(&id, given, s),
        Err(_) if id::looks_like_path(given) => Err(Error::MissingFile {
            path: absolute(&path),
            what: "model directory",
            hint: format!(
                "the directory does not exist (relative paths start from the working directory \
                 {}); {}",
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                model_example()
            ),
        }),
        Err(e) => Err(e),
    }
}

/// Whether `e` says that the Hub could not be asked for a model that is not in the cache: offline
/// ([`Error::Offline`]: `HF_HUB_OFFLINE` set) or a download that failed because the Hub was out of
/// reach (no network, or the Hub answered that it is down). A model that does not exist, a gated
/// one, a full disk or an interrupted download are not "out of reach".
pub(crate) fn unreachable(e: &Error) -> bool {
    match e {
        Error::Offline { .. } => true,
        Error::Hub { msg, .. } => msg.ends_with(download::NO_NETWORK) || msg.ends_with(download::HUB_BUSY),
        _ => false,
    }
}

/// Whether `path` names a GGUF file (by its extension, any case).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The files of a llama.cpp GGUF model: the file itself holds the config (in its metadata) and the
/// weights; the tokenizer is the `tokenizer.json` beside it if there is one, else (`None`) the
/// file's own `tokenizer.ggml.*` metadata.
fn gguf_files(path: &Path, given: &str) -> ModelFiles {
    let path = absolute(path);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let beside = dir.join(TOKENIZER_FILE);
    let tokenizer = beside.is_file().then_some(beside);
    ModelFiles { name: given.to_string(), dir, source: ModelSource::Gguf { path, tokenizer } }
}

/// Reads a model directory in the Hub's layout: `config.json`, `tokenizer.json`, and either
/// `model.safetensors.index.json` plus every shard its `weight_map` names, or `model.safetensors`.
/// `name` is kept in [`ModelFiles::name`]. `dir` is made absolute (symlinks are not resolved).
///
/// Errors: [`Error::MissingFile`] for the directory or any missing file (a missing shard names the
/// index that lists it), [`Error::Weights`] for an index that is not valid JSON, has no
/// `weight_map` object, or names a shard outside the directory, [`Error::Io`] when the index cannot
/// be read.
pub fn local_dir(dir: &Path, name: &str) -> Result<ModelFiles> {
    let dir = absolute(dir);
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir,
            what: "model directory",
            hint: format!("the directory does not exist; {}", model_example()),
        });
    }
    match inspect_dir(&dir, name)? {
        Inspection::Complete(files) => Ok(files),
        Inspection::Missing(part) => Err(local_missing(&dir, part)),
    }
}

/// The [`Error::MissingFile`] for a part that a local directory lacks.
fn local_missing(dir: &Path, part: MissingPart) -> Error {
    match part {
        MissingPart::Config => {
            let mut hint = format!(
                "{} should be a model directory in the Hugging Face layout: config.json, \
                 tokenizer.json and {SINGLE_WEIGHTS_FILE} (or {INDEX_FILE} with its shards)",
                dir.display()
            );
            let ggufs: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_gguf_path(p))
                        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(first) = ggufs.first() {
                hint.push_str(&format!(
                    "; it holds the llama.cpp file {first}{}: pass that file's path instead",
                    if ggufs.len() > 1 { format!(" and {} more", ggufs.len() - 1) } else { String::new() }
                ));
            } else if dir.join("snapshots").is_dir() {
                hint.push_str(
                    "; this looks like a Hub cache folder (models--owner--name): pass the Hub id \
                     instead, or its snapshots/<commit> directory",
                );
            } else {
                hint.push_str(&format!("; or pass a Hub id such as {OLMOE_HUB_ID} to download the model"));
            }
            Error::MissingFile { path: dir.join(CONFIG_FILE), what: "config.json", hint }
        }
        MissingPart::Tokenizer => Error::MissingFile {
            path: dir.join(TOKENIZER_FILE),
            what: "tokenizer.json",
            hint: format!(
                "OLMoE's tokenizer.json is in the Hub repo {OLMOE_HUB_ID} \
                 (https://huggingface.co/{OLMOE_HUB_ID}/blob/main/tokenizer.json); copy it next to \
                 config.json in {}",
                dir.display()
            ),
        },
        MissingPart::Weights => Error::MissingFile {
            path: dir.join(SINGLE_WEIGHTS_FILE),
            what: "weights",
            hint: format!(
                "looked for {INDEX_FILE} (sharded weights) and {SINGLE_WEIGHTS_FILE} (one file) in \
                 {} and found neither; copy the safetensors weights there (other formats such as \
                 pytorch_model.bin are not read)",
                dir.display()
            ),
        },
        MissingPart::Shard(shard) => Error::MissingFile {
            path: dir.join(&shard),
            what: "weight shard",
            hint: format!(
                "{} names {shard} in its weight_map; copy every shard the index lists next to it \
                 (an interrupted download or copy leaves some out)",
                dir.join(INDEX_FILE).display()
            ),
        },
    }
}

/// What a model directory lacks, first missing part first.
#[derive(Debug)]
pub(super) enum MissingPart {
    Config,
    Tokenizer,
    /// Neither the index nor `model.safetensors`.
    Weights,
    /// A shard the index names.
    Shard(String),
}

impl MissingPart {
    /// The file name, for messages and downloads.
    pub(super) fn file(&self) -> String {
        match self {
            MissingPart::Config => CONFIG_FILE.to_string(),
            MissingPart::Tokenizer => TOKENIZER_FILE.to_string(),
            MissingPart::Weights => format!("{INDEX_FILE} (or {SINGLE_WEIGHTS_FILE})"),
            MissingPart::Shard(shard) => format!("{shard} (named by {INDEX_FILE})"),
        }
    }
}

pub(super) enum Inspection {
    Complete(ModelFiles),
    Missing(MissingPart),
}

/// Checks that `dir` holds a whole model; errors only for an index that cannot be used.
pub(super) fn inspect_dir(dir: &Path, name: &str) -> Result<Inspection> {
    let config = dir.join(CONFIG_FILE);
    if !config.is_file() {
        return Ok(Inspection::Missing(MissingPart::Config));
    }
    let tokenizer = dir.join(TOKENIZER_FILE);
    if !tokenizer.is_file() {
        return Ok(Inspection::Missing(MissingPart::Tokenizer));
    }
    let index = dir.join(INDEX_FILE);
    let weights = if index.is_file() {
        let mut weights = Vec::new();
        for shard in read_index(&index)? {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Ok(Inspection::Missing(MissingPart::Shard(shard)));
            }
            weights.push(path);
        }
        weights
    } else {
        let single = dir.join(SINGLE_WEIGHTS_FILE);
        if !single.is_file() {
            return Ok(Inspection::Missing(MissingPart::Weights));
        }
        vec![single]
    };
    Ok(Inspection::Complete(ModelFiles {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        source: ModelSource::Safetensors { config, tokenizer, weights },
    }))
}

/// The shard files that a `model.safetensors.index.json` names, deduplicated and sorted by name.
pub(super) fn read_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let weights_err = |msg: String| Error::Weights { path: index.to_path_buf(), msg };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        weights_err(format!("not valid JSON ({e}); the file is damaged or truncated: download or copy it again"))
    })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        weights_err(
            "has no \"weight_map\" object (tensor name -> shard file): it is not a safetensors \
             index"
                .to_string(),
        )
    })?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| weights_err(format!("weight_map maps {tensor:?} to {file}, not to a file name")))?;
        if !is_safe_relative(file) {
            return Err(weights_err(format!(
                "weight_map maps {tensor:?} to {file:?}, which is not a file inside the model \
                 directory"
            )));
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(weights_err("weight_map is empty: it names no shard files".to_string()));
    }
    Ok(shards.into_iter().collect())
}

/// A relative path of normal components only (no `..`, no root, no drive, no backslash).
pub(super) fn is_safe_relative(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && !file.contains('\0')
        && Path::new(file).components().all(|c| matches!(c, Component::Normal(_)))
}
