//! Downloads from the Hub into its cache: metadata and links through `hf-hub`, the bytes through
//! our resumable downloader (HTTP `Range` requests continuing `blobs/<etag>.incomplete`, the
//! name Python's `huggingface_hub` uses).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::settings::HubSettings;
use super::{
    inspect_dir, is_safe_relative, read_index, HubId, Inspection, ModelFiles, CONFIG_FILE, INDEX_FILE,
    SINGLE_WEIGHTS_FILE, TOKENIZER_FILE,
};
use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, FileLock};

/// Downloads what the snapshot of `id` lacks into `cache`, then reads the snapshot.
pub(super) fn download(id: &HubId, given: &str, cache: &Path, s: &HubSettings) -> Result<ModelFiles> {
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
/// The end of an [`Error::Hub`] message when the Hub could not be reached at all (no network, no
/// name resolution, a refused connection): what [`super::unreachable`] recognises.
pub(super) const NO_NETWORK: &str = "check the network connection; without network, set HF_HUB_OFFLINE=1 to use \
                                     only what is cached, or pass a local directory";

/// The end of an [`Error::Hub`] message when the Hub answered that it is busy or down (429, 5xx).
pub(super) const HUB_BUSY: &str =
    "the Hub is busy or unavailable: try again later, or set HF_HUB_OFFLINE=1 to use only what is cached";

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
            (Some(429), _) | (Some(500..=599), _) => HUB_BUSY.to_string(),
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
            _ => NO_NETWORK.to_string(),
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
    // one writer per partial file (the lock is released when the process dies)
    let lock_path = dir.join(format!("{name}.lock"));
    let Some(_lock) = FileLock::acquire(&lock_path, 10)? else {
        return Err(ApiError::LockAcquisition(lock_path));
    };
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
    sync_dir(&dir);
    Ok(())
}

/// The first byte of a `Content-Range: bytes START-END/SIZE` header.
fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
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
