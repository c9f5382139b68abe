//! The Hugging Face settings of the environment (cache location, offline mode, token, mirror), read
//! with Python `huggingface_hub`'s rules.

use std::fmt;
use std::path::{Path, PathBuf};

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
pub(super) fn expand_user(value: &str, home: Option<&Path>) -> PathBuf {
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
