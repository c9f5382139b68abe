//! Hub model ids: `owner/name`, optionally `@revision`, checked by the Hub's rules.

use std::fmt;

use super::{model_example, DEFAULT_REVISION};
use crate::error::{Error, Result};

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

pub(super) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
pub(super) fn looks_like_path(s: &str) -> bool {
    s.starts_with(['/', '~', '\\'])
        || s.starts_with("./")
        || s.starts_with("../")
        || s == "."
        || s == ".."
        || s.contains('\\')
        || s.matches('/').count() > 1
        || (s.len() >= 2 && s.as_bytes()[1] == b':' && s.as_bytes()[0].is_ascii_alphabetic())
}
