//! Files that are either whole or absent: [`write_atomic`] (temporary file in the same directory,
//! fsync, rename, fsync of the directory) and [`FileLock`] (an exclusive `flock` that the system
//! releases when its process dies).
//!
//! Used by the quantized cache (`quant`), the scan outputs (`study`) and the Hub downloads (`hub`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // no buffer: the bytes go to the file in one write
    write_through(path, 0, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Writes `path` atomically: `fill` writes the content into a temporary file next to it
/// (`.<name>.tmp.<pid>`, buffered), which is then flushed to disk and renamed over `path`, and the
/// directory is synced; a crash leaves either the old file or the new one, never a torn one. The
/// temporary file is removed when `fill` or the write fails. Temporary files of the same name left
/// behind by processes that no longer run are deleted first (for a quantized cache one is
/// gigabytes).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    write_through(path, 8 << 20, fill)
}

/// [`write_atomic_with`] with a write buffer of `buffer` bytes.
fn write_through(path: &Path, buffer: usize, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale_temps(path);
    let tmp = temp_path(path);
    let res = (|| -> Result<()> {
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(buffer, f);
        fill(&mut w)?;
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir);
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The temporary file [`write_atomic_with`] writes `path` through: `.<name>.tmp.<pid>`.
fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!("{}{}", temp_prefix(path), std::process::id()))
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    format!(".{name}.tmp.")
}

/// Deletes temporary files of `path` (`.<name>.tmp.<pid>`) that a killed process left behind. Only
/// those of processes that no longer run are touched (Linux: `/proc/<pid>`; elsewhere none are, as
/// liveness cannot be told).
fn remove_stale_temps(path: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Syncs a directory's entries (a rename is durable only then). Best effort: not every platform
/// can open a directory.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// An exclusive `flock` on a lock file, released when dropped, and by the system when the process
/// dies, so a killed process never leaves a stale lock. (Without `flock`, on non-Unix systems, the
/// lock is always granted.)
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if needed), trying `attempts` times one second apart;
    /// `Ok(None)` when another process still holds it.
    pub fn acquire(path: &Path, attempts: usize) -> std::io::Result<Option<FileLock>> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        for attempt in 0..attempts {
            if try_lock(&file) {
                return Ok(Some(FileLock { _file: file }));
            }
            if attempt + 1 < attempts {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Ok(None)
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moe-lens-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_whole_files_and_leaves_no_temporary_file() {
        let d = scratch("write");
        let p = d.join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["state.json".to_string()]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary_one() {
        let d = scratch("fail");
        let p = d.join("cache.gguf");
        write_atomic(&p, b"old").unwrap();
        let e = write_atomic_with(&p, |w| {
            w.write_all(b"half").map_err(|e| Error::io(&p, e))?;
            Err(Error::invalid("test", "stopped"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temporary_files_of_dead_processes_are_removed() {
        let d = scratch("stale");
        let p = d.join("moe-lens.q8_0.gguf");
        // pid 4194304 is above Linux's largest pid (2^22): never a running process
        let stale = d.join(".moe-lens.q8_0.gguf.tmp.4194304");
        let live = d.join(format!(".moe-lens.q8_0.gguf.tmp.{}", std::process::id()));
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        remove_stale_temps(&p);
        assert!(!stale.exists() && live.exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_held_lock_is_refused_until_released() {
        let d = scratch("lock");
        let p = d.join("blob.lock");
        let held = FileLock::acquire(&p, 1).unwrap().expect("a free lock");
        assert!(FileLock::acquire(&p, 1).unwrap().is_none());
        drop(held);
        assert!(FileLock::acquire(&p, 1).unwrap().is_some());
    }
}
