//! The Hugging Face cache (`<cache>/models--{owner}--{name}/{refs,snapshots,blobs}`): lookups
//! without network, and the cache-first resolution of a Hub id.

use std::path::{Path, PathBuf};

use super::download::download;
use super::id::is_commit_hash;
use super::settings::HubSettings;
use super::{absolute, inspect_dir, is_safe_relative, HubId, Inspection, ModelFiles, DEFAULT_REVISION};
use crate::error::{Error, Result};

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
pub(super) fn resolve_hub(id: &HubId, given: &str, s: &HubSettings) -> Result<ModelFiles> {
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
