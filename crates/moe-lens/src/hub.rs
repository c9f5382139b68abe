//! Finding a model's files: a local directory, or a Hugging Face Hub id looked up in (and, when
//! needed, downloaded into) the Hugging Face cache.
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

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

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

/// Where a model's files are, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// What the user gave (a directory or a Hub id, with `@revision` if any), for messages and
    /// exports.
    pub name: String,
    /// The directory holding the files: the local directory (made absolute), or the cache snapshot
    /// `<cache>/models--{owner}--{name}/snapshots/{commit}`.
    pub dir: PathBuf,
    /// `config.json` (for a GGUF model, the GGUF file, whose metadata holds the config).
    pub config: PathBuf,
    /// `tokenizer.json` (for a GGUF model without one beside it, the GGUF file).
    pub tokenizer: PathBuf,
    /// The safetensors files: the shards named by the index (deduplicated, sorted by file name,
    /// which is their index order `model-0000i-of-0000n`), or the single `model.safetensors`.
    pub weights: Vec<PathBuf>,
}

impl ModelFiles {
    /// The GGUF file, when the model is a llama.cpp GGUF file rather than a safetensors checkpoint.
    pub fn gguf(&self) -> Option<&Path> {
        match self.weights.as_slice() {
            [one] if is_gguf_path(one) => Some(one),
            _ => None,
        }
    }
}

/// The Hugging Face settings read from the environment, kept in a struct so tests need not touch
/// environment variables.
///
/// `Debug` prints `token` redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The Hub cache (the directory that holds `models--{owner}--{name}` folders).
    pub cache_dir: PathBuf,
    /// Never use the network: a model that is not complete in the cache is an [`Error::Offline`].
    pub offline: bool,
    /// The access token for gated or private repositories. Never printed.
    pub token: Option<String>,
    /// Show progress bars while downloading.
    pub progress: bool,
    /// The Hub's address (`HF_ENDPOINT`, e.g. a mirror); `None` for <https://huggingface.co>.
    pub endpoint: Option<String>,
}

impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("progress", &self.progress)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl HubSettings {
    /// Reads the settings from the process environment, with Python `huggingface_hub`'s rules (see
    /// [`HubSettings::from_lookup`]).
    pub fn from_env() -> Self {
        Self::from_lookup(&|key: &str| std::env::var(key).ok())
    }

    /// Builds the settings from `get`, which returns an environment variable's value (or `None` when
    /// unset). Empty values count as unset.
    ///
    /// - `cache_dir`: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE` (legacy), else `$HF_HOME/hub`,
    ///   else `$XDG_CACHE_HOME/huggingface/hub`, else `$HOME/.cache/huggingface/hub` (`HOME`, else
    ///   `USERPROFILE`; without either, relative to the working directory). A leading `~` is
    ///   expanded, as Python does.
    /// - `offline`: `HF_HUB_OFFLINE` (or, when that is unset, `TRANSFORMERS_OFFLINE`) is one of `1`,
    ///   `true`, `yes`, `on`, case-insensitively.
    /// - `token`: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the contents of the token file
    ///   (`HF_TOKEN_PATH`, else `$HF_HOME/token`, whose default is
    ///   `~/.cache/huggingface/token`), with line breaks and surrounding whitespace removed; an empty
    ///   token counts as none.
    /// - `progress`: true unless `MOE_LENS_NO_PROGRESS` is set to something other than `0`,
    ///   `false`, `no` or `off`.
    /// - `endpoint`: `HF_ENDPOINT` without a trailing `/` (a Hub mirror), as Python reads it.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| get(key).filter(|v| !v.is_empty());
        let home = var("HOME").or_else(|| var("USERPROFILE")).map(PathBuf::from);
        let expand = |value: String| expand_user(&value, home.as_deref());

        let hf_home = match var("HF_HOME") {
            Some(dir) => expand(dir),
            None => {
                let xdg = match var("XDG_CACHE_HOME") {
                    Some(dir) => expand(dir),
                    None => home.clone().unwrap_or_default().join(".cache"),
                };
                xdg.join("huggingface")
            }
        };
        let cache_dir = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(dir) => expand(dir),
            None => hf_home.join("hub"),
        };

        let offline = var("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE")).is_some_and(|v| is_truthy(&v));

        let token = var("HF_TOKEN")
            .and_then(|t| clean_token(&t))
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN").and_then(|t| clean_token(&t)))
            .or_else(|| {
                let path = match var("HF_TOKEN_PATH") {
                    Some(p) => expand(p),
                    None => hf_home.join("token"),
                };
                std::fs::read_to_string(path).ok().and_then(|t| clean_token(&t))
            });

        let progress = match get("MOE_LENS_NO_PROGRESS") {
            None => true,
            Some(v) => is_falsy(&v),
        };
        let endpoint = var("HF_ENDPOINT").map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty());

        HubSettings { cache_dir, offline, token, progress, endpoint }
    }
}

/// `1`, `true`, `yes`, `on` (any case, surrounding spaces ignored), as Python's `_is_true`.
fn is_truthy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// Empty, `0`, `false`, `no`, `off` (any case).
fn is_falsy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off")
}

/// A token with line breaks and surrounding whitespace removed; `None` when nothing is left.
fn clean_token(raw: &str) -> Option<String> {
    let token: String = raw.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Expands a leading `~` (alone or followed by a separator) to `home`, like Python's `expanduser`.
fn expand_user(value: &str, home: Option<&Path>) -> PathBuf {
    if let Some(home) = home {
        if value == "~" {
            return home.to_path_buf();
        }
        if let Some(rest) = value.strip_prefix("~/").or_else(|| value.strip_prefix("~\\")) {
            return home.join(rest);
        }
    }
    PathBuf::from(value)
}

/// `path` made absolute against the working directory (without resolving symlinks); unchanged if
/// that fails.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// Hub ids
// ---------------------------------------------------------------------------------------------

/// A parsed Hub model id: `owner/name`, optionally `@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// The account or organisation, e.g. `allenai`.
    pub owner: String,
    /// The repository name, e.g. `OLMoE-1B-7B-0924`.
    pub name: String,
    /// The branch, tag or commit; [`DEFAULT_REVISION`] when none was given.
    pub revision: String,
}

impl HubId {
    /// Parses `owner/name` or `owner/name@revision`.
    ///
    /// `owner` and `name` are each 1 to 96 characters of `A-Z a-z 0-9 . _ -`, neither starting nor
    /// ending with `-` or `.`, and without `--` or `..` (the Hub's rules). A revision is up to 256
    /// characters of `A-Z a-z 0-9 . _ - + /`, without `..`, `//` or a leading/trailing `/` (so it
    /// can name a path in the cache safely; `refs/pr/1` is allowed).
    pub fn parse(id: &str) -> Result<HubId> {
        let (repo, revision) = match id.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (id, None),
        };
        let mut parts = repo.split('/');
        let (owner, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(owner), Some(name), None) => (owner, name),
            _ => return Err(invalid_id(id, "a Hub id has the form owner/name (exactly one '/')".to_string())),
        };
        check_id_part(id, "owner", owner)?;
        check_id_part(id, "name", name)?;
        let revision = match revision {
            None => DEFAULT_REVISION.to_string(),
            Some(rev) => {
                check_revision(id, rev)?;
                rev.to_string()
            }
        };
        Ok(HubId { owner: owner.to_string(), name: name.to_string(), revision })
    }

    /// `owner/name`, without the revision.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The repository's folder in the cache: `models--{owner}--{name}`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }

    /// Whether the revision is a full commit hash (40 lowercase hex digits), which names a snapshot
    /// directly instead of through `refs/`.
    pub fn revision_is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            write!(f, "{}/{}", self.owner, self.name)
        } else {
            write!(f, "{}/{}@{}", self.owner, self.name, self.revision)
        }
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The example appended to every "not a model" message.
fn model_example() -> String {
    format!(
        "give a directory holding config.json, tokenizer.json and the safetensors weights, or a \
         Hub id such as {OLMOE_HUB_ID} (optionally with @revision, e.g. {OLMOE_HUB_ID}@main)"
    )
}

fn invalid_id(id: &str, reason: String) -> Error {
    Error::InvalidArgument {
        what: "model",
        msg: format!(
            "{id:?} is neither an existing directory nor a Hugging Face Hub id ({reason}): {}",
            model_example()
        ),
    }
}

fn check_id_part(id: &str, which: &str, part: &str) -> Result<()> {
    let reason = if part.is_empty() {
        Some(format!("the {which} is empty"))
    } else if part.chars().count() > 96 {
        Some(format!("the {which} is longer than 96 characters"))
    } else if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(format!("the {which} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"))
    } else if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        Some(format!("the {which} starts or ends with '-' or '.'"))
    } else if part.contains("--") || part.contains("..") {
        Some(format!("the {which} contains \"--\" or \"..\""))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(invalid_id(id, reason)),
        None => Ok(()),
    }
}

fn check_revision(id: &str, rev: &str) -> Result<()> {
    let reason = if rev.is_empty() {
        Some("the revision after '@' is empty".to_string())
    } else if rev.len() > 256 {
        Some("the revision is longer than 256 characters".to_string())
    } else if let Some(c) =
        rev.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/')))
    {
        Some(format!(
            "the revision contains {c:?}; a branch, tag or commit uses letters, digits, '.', '_', \
             '-', '+' and '/'"
        ))
    } else if rev.contains("..")
        || rev.contains("//")
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.split('/').any(|c| c == ".")
    {
        Some("the revision contains \"..\", \"//\", a \".\" part or a leading/trailing '/'".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(invalid_id(id, reason)),
        None => Ok(()),
    }
}

/// Whether `s` is clearly meant as a filesystem path rather than a Hub id.
fn looks_like_path(s: &str) -> bool {
    s.starts_with(['/', '~', '\\'])
        || s.starts_with("./")
        || s.starts_with("../")
        || s == "."
        || s == ".."
        || s.contains('\\')
        || s.matches('/').count() > 1
        || (s.len() >= 2 && s.as_bytes()[1] == b':' && s.as_bytes()[0].is_ascii_alphabetic())
}

// ---------------------------------------------------------------------------------------------
// Resolving
// ---------------------------------------------------------------------------------------------

/// Resolves `model` (a local directory or a Hub id) with the settings of the environment:
/// `resolve_with(model, &HubSettings::from_env())`.
pub fn resolve(model: &str) -> Result<ModelFiles> {
    resolve_with(model, &HubSettings::from_env())
}

/// Resolves `model` to its files.
///
/// - `demo` (any case) is the small demo model shipped in this crate's `data/demo` (an
///   [`Error::MissingFile`] until `tests/setup-data.sh` or `kernel-setup/install.sh` has copied
///   OLMoE's tokenizer.json there); a directory named `demo` needs `./demo`.
/// - An existing directory (a leading `~` is expanded) is read with [`local_dir`]; a directory wins
///   over a Hub id of the same spelling.
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
    // `demo`: the small model shipped in this crate's data/demo (see its README.md).
    if given.eq_ignore_ascii_case("demo") {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo"));
        if !dir.join(TOKENIZER_FILE).is_file() {
            return Err(Error::MissingFile {
                path: dir.join(TOKENIZER_FILE),
                what: "tokenizer.json",
                hint: "the demo model uses OLMoE's tokenizer, which is not shipped with it: run \
                       kernel-setup/install.sh or tests/setup-data.sh once (they copy it there)"
                    .to_string(),
            });
        }
        return local_dir(dir, given);
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
        Ok(id) => resolve_hub(&id, given, s),
        Err(_) if looks_like_path(given) => Err(Error::MissingFile {
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

/// Whether `path` names a GGUF file (by its extension, any case).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The files of a llama.cpp GGUF model: the file itself holds the config (in its metadata) and the
/// weights; the tokenizer is the `tokenizer.json` beside it if there is one, else the file's own
/// `tokenizer.ggml.*` metadata (then [`ModelFiles::tokenizer`] is the GGUF file too).
fn gguf_files(path: &Path, given: &str) -> ModelFiles {
    let path = absolute(path);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let beside = dir.join(TOKENIZER_FILE);
    let tokenizer = if beside.is_file() { beside } else { path.clone() };
    ModelFiles { name: given.to_string(), dir, config: path.clone(), tokenizer, weights: vec![path] }
}

/// Returns the cache snapshot directory of `repo` (`owner/name`) at `revision` (a branch, tag or
/// commit; empty means `main`) if the cache in `s.cache_dir` holds everything the model needs
/// (config.json, tokenizer.json and all weights), i.e. when [`resolve_with`] would succeed without
/// network. Never touches the network; `None` for anything else, including invalid ids.
pub fn cached_snapshot(repo: &str, revision: &str, s: &HubSettings) -> Option<PathBuf> {
    let revision = if revision.is_empty() { DEFAULT_REVISION } else { revision };
    if repo.contains('@') {
        return None;
    }
    let id = HubId::parse(&format!("{repo}@{revision}")).ok()?;
    let cache = absolute(&s.cache_dir);
    match lookup_cache(&cache.join(id.cache_folder()), &id.revision) {
        Ok(CacheLookup::Complete(files)) => Some(files.dir),
        _ => None,
    }
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
enum MissingPart {
    Config,
    Tokenizer,
    /// Neither the index nor `model.safetensors`.
    Weights,
    /// A shard the index names.
    Shard(String),
}

impl MissingPart {
    /// The file name, for messages and downloads.
    fn file(&self) -> String {
        match self {
            MissingPart::Config => CONFIG_FILE.to_string(),
            MissingPart::Tokenizer => TOKENIZER_FILE.to_string(),
            MissingPart::Weights => format!("{INDEX_FILE} (or {SINGLE_WEIGHTS_FILE})"),
            MissingPart::Shard(shard) => format!("{shard} (named by {INDEX_FILE})"),
        }
    }
}

enum Inspection {
    Complete(ModelFiles),
    Missing(MissingPart),
}

/// Checks that `dir` holds a whole model; errors only for an index that cannot be used.
fn inspect_dir(dir: &Path, name: &str) -> Result<Inspection> {
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
    Ok(Inspection::Complete(ModelFiles { name: name.to_string(), dir: dir.to_path_buf(), config, tokenizer, weights }))
}

/// The shard files that a `model.safetensors.index.json` names, deduplicated and sorted by name.
fn read_index(index: &Path) -> Result<Vec<String>> {
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
fn is_safe_relative(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && !file.contains('\0')
        && Path::new(file).components().all(|c| matches!(c, Component::Normal(_)))
}

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

enum CacheLookup {
    Complete(ModelFiles),
    /// What is missing, in words, for [`Error::Offline`].
    Missing {
        what: String,
    },
}

/// Looks `revision` of the repository folder `repo_dir` up in the cache, without network.
fn lookup_cache(repo_dir: &Path, revision: &str) -> Result<CacheLookup> {
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(text) => {
                let commit = text.trim();
                if commit.is_empty() || !is_safe_relative(commit) || commit.contains('/') {
                    return Ok(CacheLookup::Missing {
                        what: format!("{} does not hold a commit hash", ref_path.display()),
                    });
                }
                commit.to_string()
            }
            Err(e) => {
                let what = if !repo_dir.is_dir() {
                    format!("the whole model: there is no {}", repo_dir.display())
                } else if e.kind() == std::io::ErrorKind::NotFound {
                    format!("revision {revision}: the cache has {} but no refs/{revision}", repo_dir.display())
                } else {
                    format!("revision {revision}: {} cannot be read ({e})", ref_path.display())
                };
                return Ok(CacheLookup::Missing { what });
            }
        }
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Ok(CacheLookup::Missing { what: format!("snapshot {commit}: there is no {}", snapshot.display()) });
    }
    Ok(match inspect_dir(&snapshot, "")? {
        Inspection::Complete(files) => CacheLookup::Complete(files),
        Inspection::Missing(part) => {
            CacheLookup::Missing { what: format!("{} in {}", part.file(), snapshot.display()) }
        }
    })
}

/// The cache first; then, if allowed, a download of what is missing.
fn resolve_hub(id: &HubId, given: &str, s: &HubSettings) -> Result<ModelFiles> {
    let cache = absolute(&s.cache_dir);
    let repo_dir = cache.join(id.cache_folder());
    let missing = match lookup_cache(&repo_dir, &id.revision)? {
        CacheLookup::Complete(mut files) => {
            files.name = given.to_string();
            return Ok(files);
        }
        CacheLookup::Missing { what } => what,
    };
    if s.offline {
        let revision =
            if id.revision == DEFAULT_REVISION { String::new() } else { format!(" --revision {}", id.revision) };
        return Err(Error::Offline {
            model: given.to_string(),
            cache: cache.clone(),
            hint: format!(
                "Missing: {missing}. To fix: download it once with network access (e.g. \
                 `huggingface-cli download {}{revision}` or run this again without HF_HUB_OFFLINE), \
                 point HF_HUB_CACHE at a cache that has it, or pass a local directory; for a quick \
                 offline try use the demo model: --model demo / load(\"demo\")",
                id.repo_id()
            ),
        });
    }
    // hf-hub should not panic, but a panic here would take a notebook kernel's cell with it.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| download(id, given, &cache, s))) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::Hub {
                model: given.to_string(),
                file: "(download)".to_string(),
                msg: format!("the download client failed unexpectedly ({msg}); run again"),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Downloading
// ---------------------------------------------------------------------------------------------

/// Downloads what the snapshot of `id` lacks into `cache`, then reads the snapshot.
fn download(id: &HubId, given: &str, cache: &Path, s: &HubSettings) -> Result<ModelFiles> {
    let ctx = Ctx { id, given, cache, s };
    let hub_repo = Repo::with_revision(id.repo_id(), RepoType::Model, id.revision.clone());
    let mut builder =
        ApiBuilder::from_cache(Cache::new(cache.to_path_buf())).with_token(s.token.clone()).with_progress(s.progress);
    if let Some(endpoint) = &s.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| ctx.error("(client)", e))?;
    let fetcher = Fetcher { ctx, repo: api.repo(hub_repo.clone()), api, hub_repo };

    let config = fetcher.fetch(CONFIG_FILE)?;
    fetcher.fetch(TOKENIZER_FILE)?;
    match fetcher.fetch_raw(INDEX_FILE) {
        Ok(index) => {
            for shard in read_index(&index)? {
                fetcher.fetch(&shard)?;
            }
        }
        Err(e) if http_status(&e) == Some(404) => {
            fetcher.fetch(SINGLE_WEIGHTS_FILE)?;
        }
        Err(e) => return Err(ctx.error(INDEX_FILE, e)),
    }

    let snapshot = config.parent().map(Path::to_path_buf).unwrap_or_default();
    match inspect_dir(&snapshot, given)? {
        Inspection::Complete(files) => Ok(files),
        Inspection::Missing(part) => Err(Error::Hub {
            model: given.to_string(),
            file: part.file(),
            msg: format!(
                "it is still missing from {} after the download (the repository may have changed \
                 meanwhile); run again",
                snapshot.display()
            ),
        }),
    }
}

/// What a download is about, for messages.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    id: &'a HubId,
    given: &'a str,
    cache: &'a Path,
    s: &'a HubSettings,
}

impl Ctx<'_> {
    /// Maps a download error to [`Error::Hub`] with a hint for what to do.
    fn error(&self, file: &str, e: ApiError) -> Error {
        let repo = self.id.repo_id();
        let hint = match (http_status(&e), &e) {
            (Some(401 | 403), _) if self.s.token.is_none() => format!(
                "the repository is gated or private, or does not exist: check the id, accept its \
                 terms on https://huggingface.co/{repo} and set HF_TOKEN to an access token (or \
                 run `huggingface-cli login`)"
            ),
            (Some(401 | 403), _) => format!(
                "the Hub refused the access token (HF_TOKEN or the token file): check the id, \
                 that the token is valid, and that its account accepted the terms on \
                 https://huggingface.co/{repo}"
            ),
            (Some(404), _) => format!(
                "the Hub has no such file, repository or revision: check the id and the revision \
                 ({}); if {:?} was meant as a local directory, it does not exist",
                self.id.revision, self.given
            ),
            (Some(429), _) | (Some(500..=599), _) => {
                "the Hub is busy or unavailable: try again later, or set HF_HUB_OFFLINE=1 to use \
                 only what is cached"
                    .to_string()
            }
            (_, ApiError::LockAcquisition(_)) => {
                "another process is downloading the same file: let it finish and run again".to_string()
            }
            (_, ApiError::IoError(io)) if is_disk_error(io) => format!(
                "writing into the cache at {} failed: check free disk space (OLMoE-1B-7B needs \
                 about 14 GB) and permissions, or point HF_HUB_CACHE elsewhere",
                self.cache.display()
            ),
            (_, ApiError::IoError(_)) => format!(
                "the download was interrupted: run the same command again and it continues where \
                 it stopped (the bytes so far are kept in {}/blobs/*{INCOMPLETE_SUFFIX})",
                self.cache.join(self.id.cache_folder()).display()
            ),
            _ => "check the network connection; without network, set HF_HUB_OFFLINE=1 to use only \
                  what is cached, or pass a local directory"
                .to_string(),
        };
        Error::Hub { model: self.given.to_string(), file: file.to_string(), msg: format!("{e}; {hint}") }
    }
}

/// Fetches single files of one repository into the cache.
struct Fetcher<'a> {
    ctx: Ctx<'a>,
    api: Api,
    repo: ApiRepo,
    hub_repo: Repo,
}

impl Fetcher<'_> {
    /// [`Fetcher::fetch_raw`] with errors mapped to [`Error::Hub`].
    fn fetch(&self, file: &str) -> Result<PathBuf> {
        self.fetch_raw(file).map_err(|e| self.ctx.error(file, e))
    }

    /// Returns the snapshot path of `file` at the revision's current commit: the file already
    /// there, a link to a blob already in the cache, or a fresh download.
    fn fetch_raw(&self, file: &str) -> std::result::Result<PathBuf, ApiError> {
        let meta = self.api.metadata(&self.repo.url(file))?;
        // both name paths in the cache: refuse anything but a plain file name
        for (what, v) in [("etag", meta.etag()), ("commit", meta.commit_hash())] {
            if v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') || !is_safe_relative(v) {
                return Err(ApiError::IoError(std::io::Error::other(format!(
                    "the Hub answered with an unusable {what} {v:?}"
                ))));
            }
        }
        let cache_repo = Cache::new(self.ctx.cache.to_path_buf()).repo(self.hub_repo.clone());
        let pointer = cache_repo.pointer_path(meta.commit_hash()).join(file);
        let update_ref = || -> std::io::Result<()> {
            if !self.ctx.id.revision_is_commit() {
                cache_repo.create_ref(meta.commit_hash())?;
            }
            Ok(())
        };
        if pointer.is_file() {
            let len = std::fs::metadata(&pointer)?.len();
            if len == meta.size() as u64 {
                update_ref()?;
                return Ok(pointer);
            }
            // A snapshot file of the wrong size: a download that an older client cut off and
            // still renamed into place. Continue it instead of trusting it (or starting over).
            let blob = cache_repo.blob_path(meta.etag());
            let same = std::fs::canonicalize(&pointer).ok() == std::fs::canonicalize(&blob).ok();
            if same && len < meta.size() as u64 {
                let mut part = blob.clone().into_os_string();
                part.push(INCOMPLETE_SUFFIX);
                std::fs::rename(&blob, part)?;
            } else if same {
                std::fs::remove_file(&blob)?;
            }
            std::fs::remove_file(&pointer)?;
        }
        // A dangling link (its blob was deleted) would make hf-hub's own symlink fail.
        if pointer.symlink_metadata().is_ok() {
            std::fs::remove_file(&pointer)?;
        }
        let blob = cache_repo.blob_path(meta.etag());
        let blob_complete =
            std::fs::metadata(&blob).map(|m| m.is_file() && m.len() == meta.size() as u64).unwrap_or(false);
        if blob_complete && link_blob(&blob, &pointer, file)? {
            update_ref()?;
            return Ok(pointer);
        }
        if self.ctx.s.progress {
            eprintln!("moe-lens: downloading {file} of {} into {}", self.ctx.id, self.ctx.cache.display());
        }
        let url = self.repo.url(file);
        download_resumable(
            &url,
            self.ctx.s.token.as_deref(),
            &blob,
            meta.size() as u64,
            self.ctx.s.progress.then_some(file),
        )?;
        if pointer.symlink_metadata().is_ok() {
            std::fs::remove_file(&pointer)?;
        }
        if !link_blob(&blob, &pointer, file)? {
            // no symlinks here: the snapshot holds a copy
            if let Some(parent) = pointer.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&blob, &pointer)?;
        }
        update_ref()?;
        Ok(pointer)
    }
}

/// Suffix of a partial download next to its blob (Python `huggingface_hub`'s name).
pub const INCOMPLETE_SUFFIX: &str = ".incomplete";

/// Downloads `url` into `blob` (`size` bytes), resuming `<blob>.incomplete` if an earlier run left
/// one: only the missing bytes are requested (`Range: bytes=N-`). A server that ignores the range
/// (status 200) is read from the start instead; a transfer that ends early keeps what arrived for
/// the next run. The partial file is renamed to `blob` only when it has exactly `size` bytes. A
/// lock file (`<blob>.lock`, `flock`) keeps two processes from writing the same partial file.
/// `progress`: the file's name in the repository, to print progress lines under (`None`: quiet).
fn download_resumable(
    url: &str,
    token: Option<&str>,
    blob: &Path,
    size: u64,
    progress: Option<&str>,
) -> std::result::Result<(), ApiError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let name = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = blob.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let _lock = DownloadLock::acquire(&dir.join(format!("{name}.lock")))?;
    let part = dir.join(format!("{name}{INCOMPLETE_SUFFIX}"));
    let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&part)?;
    let mut have = f.metadata()?.len();
    if have > size {
        // longer than the file on the Hub: not a prefix of it
        f.set_len(0)?;
        have = 0;
    }
    if have < size {
        let mut req =
            ureq::get(url).header("User-Agent", concat!("moe-lens/", env!("CARGO_PKG_VERSION"), "; rust/unknown"));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let response = req.call().map_err(Box::new)?;
        let status = response.status().as_u16();
        let start = match status {
            206 => {
                let range = response
                    .headers()
                    .get("Content-Range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                match content_range_start(&range) {
                    Some(start) if start == have => start,
                    _ => {
                        return Err(ApiError::IoError(std::io::Error::other(format!(
                            "the server answered the request for bytes {have}- with Content-Range {range:?}"
                        ))))
                    }
                }
            }
            // the whole file: start over (what we have is replaced, not appended to)
            _ => 0,
        };
        if start == 0 && have > 0 {
            if let Some(file) = progress {
                eprintln!("moe-lens: the server does not resume downloads; fetching {file} from the start");
            }
            f.set_len(0)?;
        } else if let (true, Some(file)) = (have > 0, progress) {
            eprintln!("moe-lens: resuming {file} at byte {have} of {size}");
        }
        f.seek(SeekFrom::Start(start))?;
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = start;
        let step = (size / 20).max(1 << 20); // a progress line every 5 % (at least every MiB)
        let mut next_report = written + step;
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            written += n as u64;
            if written > size {
                break;
            }
            if let (true, Some(file)) = (written >= next_report, progress) {
                next_report = written + step;
                eprintln!(
                    "moe-lens: {file}: {:.0} % ({} of {} MB)",
                    written as f64 * 100.0 / size.max(1) as f64,
                    written >> 20,
                    size >> 20
                );
            }
        }
        f.flush()?;
        f.sync_all()?;
        have = f.metadata()?.len();
    }
    if have != size {
        return Err(ApiError::IoError(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the transfer ended at byte {have} of {size}"),
        )));
    }
    drop(f);
    std::fs::rename(&part, blob)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The first byte of a `Content-Range: bytes START-END/SIZE` header.
fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// An exclusive `flock` on a lock file, held while a blob is written (released when dropped, and by
/// the system when the process dies, so a killed download never leaves a stale lock).
struct DownloadLock {
    _file: std::fs::File,
}

impl DownloadLock {
    fn acquire(path: &Path) -> std::result::Result<Self, ApiError> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        for attempt in 0..10 {
            if try_lock(&file) {
                return Ok(DownloadLock { _file: file });
            }
            if attempt < 9 {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Err(ApiError::LockAcquisition(path.to_path_buf()))
    }
}

#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> bool {
    true
}

/// Whether an I/O error is about the local disk (rather than the network).
fn is_disk_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull
            | K::QuotaExceeded
            | K::PermissionDenied
            | K::ReadOnlyFilesystem
            | K::NotADirectory
            | K::IsADirectory
            | K::AlreadyExists
            | K::FileTooLarge
    )
}

/// The HTTP status in a download error, if it is one.
fn http_status(e: &ApiError) -> Option<u16> {
    let inner = match e {
        ApiError::TooManyRetries(inner) => inner.as_ref(),
        other => other,
    };
    match inner {
        ApiError::RequestError(err) => {
            let text = err.to_string();
            let code = text.strip_prefix("http status: ")?;
            code.trim().parse().ok()
        }
        _ => None,
    }
}

/// Links the snapshot entry `pointer` (for repository file `file`) to `blob` with a relative
/// symlink, as Python's `huggingface_hub` does. Returns false where symlinks are not used.
#[cfg(unix)]
fn link_blob(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<bool> {
    let Some(parent) = pointer.parent() else {
        return Ok(false);
    };
    let Some(blob_name) = blob.file_name() else {
        return Ok(false);
    };
    std::fs::create_dir_all(parent)?;
    // snapshots/{commit}/{file}: one `..` per component of `file`, plus one for the commit folder.
    let mut target = PathBuf::new();
    for _ in 0..=Path::new(file).components().count() {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob_name);
    std::os::unix::fs::symlink(target, pointer)?;
    Ok(pointer.is_file())
}

#[cfg(not(unix))]
fn link_blob(_blob: &Path, _pointer: &Path, _file: &str) -> std::io::Result<bool> {
    Ok(false)
}
