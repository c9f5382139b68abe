//! `moe-lens doctor` and `doctor()?` in a notebook cell: one line per check of the set-up a student
//! or an instructor has on a shared server, each with what to fix. It never downloads, never
//! allocates a model and never opens a GPU (nvidia-smi is asked, when present).
//!
//! ```no_run
//! # fn main() -> moe_lens::Result<()> {
//! let report = moe_lens::doctor::doctor()?;   // a cell's value: one line per check
//! println!("{report}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{gib, Result};
use crate::hub::{self, HubSettings, ModelSource, OLMOE_HUB_ID};
use crate::lab::{DeviceChoice, DEVICE_VAR};
use crate::memory;
use crate::quant::{self, Quant, QuantChoice, CACHE_DIR_VAR};
use crate::remote::client::Client;
use crate::remote::SERVER_VAR;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but something is worth fixing (slower, or not shared as meant).
    Warn,
    /// Will not work as set up: the fix says what to do.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`kernel`, `build`, `gpus`, `device`, `model`, `quant cache`, `tokenizer`,
    /// `lab`, `memory`).
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do about it (empty when nothing).
    pub fix: String,
}

/// The checks, in the order a set-up is built: kernel, build, GPUs, device, model, quantized cache,
/// tokenizer, lab, memory. Displays (and `Debug`-prints, as a notebook cell's value) one line per
/// check.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    /// One per line.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
    /// The check of this name, if it was made.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            write!(f, "{mark} {:<11} {}", c.name, c.found)?;
            if !c.fix.is_empty() {
                write!(f, " -> fix: {}", c.fix)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// A notebook cell's value prints with `Debug`: the same list.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs every check on this process's environment. The `Result` is for symmetry with the other
/// cell functions (`doctor()?`); a check that cannot be made is a line of the report, not an error.
pub fn doctor() -> Result<Report> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Ok(doctor_with(&env, &Probe::system()))
}

/// What the checks ask the machine (a seam for tests).
pub(crate) struct Probe {
    /// `nvidia-smi --query-gpu=index,name,memory.free,memory.total` lines, `None` without nvidia-smi.
    pub gpus: Option<std::result::Result<Vec<String>, String>>,
    /// Host `MemTotal` and `MemAvailable`.
    pub host: (Option<u64>, Option<u64>),
}

impl Probe {
    fn system() -> Probe {
        let gpus = std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=index,name,memory.free,memory.total", "--format=csv,noheader"])
            .output()
            .ok()
            .map(|o| {
                if o.status.success() {
                    Ok(String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).collect())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
                }
            });
        Probe { gpus, host: (meminfo("MemTotal:"), memory::host_available()) }
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every check, with the environment read through `env`.
pub(crate) fn doctor_with(env: &dyn Fn(&str) -> Option<String>, probe: &Probe) -> Report {
    let mut checks = vec![kernel(env), build(probe), gpus(env, probe), device(env)];
    if let Some(c) = server(env) {
        checks.push(c);
    }
    checks.extend(model_checks(env));
    checks.push(lab(env));
    checks.push(memory_check(env, probe));
    Report { checks }
}

fn check(name: &'static str, status: Status, found: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, status, found: found.into(), fix: fix.into() }
}

fn kernel(env: &dyn Fn(&str) -> Option<String>) -> Check {
    let base = kernel_install(env);
    // the build folder: no other user may be able to put a cargo config above it
    // (kernel-setup/build-dir.sh, whose rules these are)
    match env("EVCXR_TMPDIR").and_then(|d| cargo_config_risk(Path::new(&d))) {
        Some(why) if base.status != Status::Fail => check(
            "kernel",
            Status::Fail,
            format!("{}; {why}", base.found),
            "cargo reads .cargo/config.toml in every folder above its build folder, so another user could run \
             their program as you: restart the kernel (it checks and builds elsewhere), and ask the instructor \
             for root's guards: install -d -m 755 /var/tmp/.cargo /tmp/.cargo",
        ),
        _ => base,
    }
}

/// Why a cargo build in `dir` could read a config file that another user wrote (see
/// kernel-setup/build-dir.sh), or `None` when only root and this user can write one there: every
/// folder from `dir` up to `/` either has a `.cargo` folder (and config files) of root's or the
/// user's that no one else can write, or has none and no one else can write into the folder.
#[cfg(unix)]
pub(crate) fn cargo_config_risk(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = my_uid()?;
    let my_name = std::env::var("USER").ok();
    let group_name = |gid: u32| -> Option<String> {
        let groups = std::fs::read_to_string("/etc/group").ok()?;
        groups.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_string())
        })
    };
    let private = |m: &std::fs::Metadata| {
        let mode = m.mode();
        let group_ok = mode & 0o020 == 0 || m.gid() == 0 || (my_name.is_some() && group_name(m.gid()) == my_name);
        (m.uid() == 0 || m.uid() == me) && mode & 0o002 == 0 && group_ok
    };
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for a in real.ancestors() {
        let Ok(am) = std::fs::metadata(a) else { continue };
        let c = a.join(".cargo");
        match std::fs::symlink_metadata(&c) {
            Ok(cm) => {
                if cm.file_type().is_symlink() || !cm.is_dir() || !private(&cm) {
                    return Some(format!("{} is not a folder only root or you can write", c.display()));
                }
                for f in ["config", "config.toml"] {
                    if let Ok(fm) = std::fs::symlink_metadata(c.join(f)) {
                        if !private(&fm) {
                            return Some(format!("{} can be changed by another user", c.join(f).display()));
                        }
                    }
                }
            }
            Err(_) => {
                if !private(&am) {
                    return Some(format!(
                        "another user can write into {} and could add a .cargo/config.toml there",
                        a.display()
                    ));
                }
            }
        }
    }
    None
}

#[cfg(not(unix))]
pub(crate) fn cargo_config_risk(_dir: &Path) -> Option<String> {
    None
}

fn kernel_install(env: &dyn Fn(&str) -> Option<String>) -> Check {
    let build = env("EVCXR_TMPDIR").map(|d| format!("; build folder {d}")).unwrap_or_default();
    let Some(prefix) = env("MOE_LENS_SHARED") else {
        return check("kernel", Status::Ok, format!("a per-user install (MOE_LENS_SHARED unset){build}"), "");
    };
    let p = Path::new(&prefix);
    if !p.join("moe-lens-shared.env").is_file() {
        return check(
            "kernel",
            Status::Fail,
            format!("MOE_LENS_SHARED={prefix} holds no shared install (no moe-lens-shared.env){build}"),
            "ask the instructor for the right prefix (they ran kernel-setup/install.sh --shared PREFIX), or unset it",
        );
    }
    if writable(p) {
        check(
            "kernel",
            Status::Ok,
            format!("shared install {prefix} (writable by you: the instructor's account){build}"),
            "",
        )
    } else {
        check("kernel", Status::Ok, format!("shared install {prefix}, read-only to you{build}"), "")
    }
}

fn build(probe: &Probe) -> Check {
    let cuda = cfg!(any(feature = "cuda", moe_lens_cuda));
    let gpu_seen = matches!(&probe.gpus, Some(Ok(l)) if !l.is_empty());
    match (cuda, gpu_seen) {
        (true, _) => check("build", Status::Ok, "moe-lens built with CUDA", ""),
        (false, true) => check(
            "build",
            Status::Warn,
            "moe-lens built for the CPU only, but this machine has a GPU",
            "run kernel-setup/install.sh again where nvcc is found (`module load cuda`, or CUDA_HOME); \
             the command line: cargo build --release --features cuda",
        ),
        (false, false) => check("build", Status::Ok, "moe-lens built for the CPU (no GPU seen)", ""),
    }
}

fn gpus(env: &dyn Fn(&str) -> Option<String>, probe: &Probe) -> Check {
    let visible = env("CUDA_VISIBLE_DEVICES").map(|v| format!("; CUDA_VISIBLE_DEVICES={v}")).unwrap_or_default();
    match &probe.gpus {
        None => check("gpus", Status::Ok, format!("no nvidia-smi: no NVIDIA GPU to check{visible}"), ""),
        Some(Err(e)) => check(
            "gpus",
            Status::Warn,
            format!("nvidia-smi failed: {e}{visible}"),
            "ask the administrator to check the NVIDIA driver (`nvidia-smi` should list the GPUs)",
        ),
        Some(Ok(lines)) if lines.is_empty() => {
            check("gpus", Status::Warn, format!("nvidia-smi lists no GPU{visible}"), "")
        }
        Some(Ok(lines)) => {
            // "0, NVIDIA A30, 11520 MiB, 24576 MiB"
            let list: Vec<String> = lines
                .iter()
                .map(|l| {
                    let f: Vec<&str> = l.split(',').map(str::trim).collect();
                    match f.as_slice() {
                        [i, name, free, total] => format!("{i}: {name}, {free} free of {total}"),
                        _ => l.clone(),
                    }
                })
                .collect();
            let fix = if visible.is_empty() && lines.len() > 1 {
                "every kernel takes GPU 0 by default: set CUDA_VISIBLE_DEVICES (a GPU or a MIG-<uuid> from \
                 `nvidia-smi -L`) or MOE_LENS_DEVICE=cuda:N per student (INSTRUCTORS.md)"
            } else {
                ""
            };
            let status = if fix.is_empty() { Status::Ok } else { Status::Warn };
            check(
                "gpus",
                status,
                format!("{}{visible} (nvidia-smi lists whole GPUs, not MIG slices)", list.join("; ")),
                fix,
            )
        }
    }
}

fn device(env: &dyn Fn(&str) -> Option<String>) -> Check {
    match env(DEVICE_VAR) {
        None => check(
            "device",
            Status::Ok,
            format!("{DEVICE_VAR} unset: auto (a GPU if the build has CUDA and one is seen, else the CPU)"),
            "",
        ),
        Some(v) => match DeviceChoice::from_env_value(&v) {
            Ok(DeviceChoice::Cuda(_)) if !cfg!(any(feature = "cuda", moe_lens_cuda)) => check(
                "device",
                Status::Fail,
                format!("{DEVICE_VAR}={v}, but this build of moe-lens has no CUDA"),
                "use MOE_LENS_DEVICE=cpu (or auto), or a CUDA build (kernel-setup/install.sh with nvcc found)",
            ),
            Ok(d) => check("device", Status::Ok, format!("{DEVICE_VAR}={v} ({d:?})"), ""),
            Err(e) => check(
                "device",
                Status::Fail,
                e.to_string(),
                format!("unset {DEVICE_VAR} or give auto, cpu, cuda or cuda:N"),
            ),
        },
    }
}

/// The shared model server `MOE_LENS_SERVER` names, when it is set: whether it answers, what it
/// holds and how busy it is (connecting is local and quick; nothing is run on the model).
fn server(env: &dyn Fn(&str) -> Option<String>) -> Option<Check> {
    let path = PathBuf::from(env(SERVER_VAR)?);
    let fix_down =
        "ask your instructor whether the class's server runs (systemctl status moe-lens-serve, or squeue for \
                    its Slurm job), or unset MOE_LENS_SERVER to load a model in your own kernel";
    Some(match Client::connect(&path) {
        Err(e) => check("server", Status::Fail, format!("{SERVER_VAR}={}: {e}", path.display()), fix_down),
        Ok(c) => {
            let h = c.hello();
            let busy = match c.stats() {
                Ok(st) => format!("; {} client(s) connected, {} request(s) waiting", st.clients, st.queued),
                Err(_) => String::new(),
            };
            check(
                "server",
                Status::Ok,
                format!(
                    "{SERVER_VAR}={}: {} ({}), protocol {}{busy}; every load in the notebooks uses it (MOE_LENS_MODEL, \
                     MOE_LENS_QUANT and MOE_LENS_DEVICE are not used)",
                    path.display(),
                    h.model,
                    h.summary,
                    h.protocol
                ),
                "",
            )
        }
    })
}

/// The model, its quantized cache and its tokenizer.
fn model_checks(env: &dyn Fn(&str) -> Option<String>) -> Vec<Check> {
    let name = env("MOE_LENS_MODEL").unwrap_or_else(|| OLMOE_HUB_ID.to_string());
    let named = if env("MOE_LENS_MODEL").is_some() {
        format!("MOE_LENS_MODEL={name}")
    } else {
        format!("{name} (MOE_LENS_MODEL unset)")
    };
    // offline: a check never downloads
    let mut s = HubSettings::from_lookup(env);
    let online = !s.offline;
    s.offline = true;
    let files = match hub::resolve_with(&name, &s) {
        Ok(f) => f,
        Err(crate::Error::Offline { cache, .. }) => {
            let (status, fix) = if online {
                (Status::Warn, format!("the first load downloads it into {} (13.8 GB for OLMoE); on a shared server the instructor runs `moe-lens prepare --model {name}` once and students set HF_HOME to that cache", cache.display()))
            } else {
                (Status::Fail, format!("HF_HUB_OFFLINE is set and the cache {} lacks it: point HF_HOME / HF_HUB_CACHE at the instructor's cache, or ask them to run `moe-lens prepare --model {name}`", cache.display()))
            };
            return vec![check(
                "model",
                status,
                format!("{named}: not in the Hugging Face cache {}", cache.display()),
                fix,
            )];
        }
        Err(e) => {
            return vec![check(
                "model",
                Status::Fail,
                format!("{named}: {e}"),
                "set MOE_LENS_MODEL to a Hub id, a model folder, a .gguf file or demo",
            )]
        }
    };
    let mut out = vec![check("model", Status::Ok, format!("{named}: {}", files.dir.display()), "")];
    out.extend(quant_cache(env, &files));
    out.push(match files.tokenizer() {
        None => check("tokenizer", Status::Ok, "from the GGUF file's metadata", ""),
        Some(t) => match crate::tokens::Tokenizer::from_file(t) {
            Ok(tok) => check("tokenizer", Status::Ok, format!("{} ({} ids)", t.display(), tok.vocab_size()), ""),
            Err(e) => check(
                "tokenizer",
                Status::Fail,
                e.to_string(),
                "the model's tokenizer.json is damaged or unreadable: download it again or ask the instructor",
            ),
        },
    });
    out
}

fn quant_cache(env: &dyn Fn(&str) -> Option<String>, files: &hub::ModelFiles) -> Option<Check> {
    let ModelSource::Safetensors { config, .. } = &files.source else {
        return Some(check("quant cache", Status::Ok, "a GGUF file: experts quantized in the file, no cache", ""));
    };
    let choice = env("MOE_LENS_QUANT").unwrap_or_default();
    let choice = match choice.parse::<QuantChoice>() {
        Ok(c) => c,
        Err(e) => {
            return Some(check(
                "quant cache",
                Status::Fail,
                e.to_string(),
                "set MOE_LENS_QUANT to auto, none, q8_0 or q4k",
            ))
        }
    };
    let cfg = match crate::config::Config::from_file(config) {
        Ok(c) => c,
        Err(e) => {
            return Some(check("quant cache", Status::Fail, e.to_string(), "the model's config.json cannot be read"))
        }
    };
    let q4k_ok = cfg.hidden_size.is_multiple_of(256) && cfg.intermediate_size.is_multiple_of(256);
    let quant = match choice {
        QuantChoice::Fixed(q) => q,
        QuantChoice::Auto if q4k_ok => Quant::Q4K,
        QuantChoice::Auto => Quant::None,
    };
    if quant == Quant::None {
        return Some(check("quant cache", Status::Ok, "not used (the experts load as stored)", ""));
    }
    let dirs = quant::cache_dirs_with(&files.dir, env(CACHE_DIR_VAR).map(PathBuf::from));
    let name = quant::cache_file_name(quant);
    let found = dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file());
    let target = &dirs[0];
    let can_write = writable_or_creatable(target);
    let how = format!(
        "ask the instructor to run `moe-lens prepare --model {} --quant {quant}` once, or set {CACHE_DIR_VAR} to a folder of your own (about 4 GB for OLMoE)",
        files.name
    );
    Some(match (found, can_write) {
        (Some(p), _) => {
            check("quant cache", Status::Ok, format!("{quant} cache {} (read-only use is fine)", p.display()), "")
        }
        (None, true) => check(
            "quant cache",
            Status::Ok,
            format!("no {quant} cache yet: the first load quantizes and writes {}", target.join(&name).display()),
            "",
        ),
        (None, false) => check(
            "quant cache",
            Status::Fail,
            format!("no {quant} cache, and {} is not writable: every load would quantize again", target.display()),
            how,
        ),
    })
}

fn lab(env: &dyn Fn(&str) -> Option<String>) -> Check {
    let home = match env("MOE_LENS_HOME") {
        Some(h) => PathBuf::from(h),
        None => match (env("XDG_DATA_HOME"), env("HOME")) {
            (Some(x), _) => Path::new(&x).join("moe-lens"),
            (None, Some(h)) => Path::new(&h).join(".local/share/moe-lens"),
            (None, None) => return check("lab", Status::Warn, "no HOME: cannot find the lab's folder", "set HOME"),
        },
    };
    let run = home.join("run");
    let Ok(meta) = std::fs::symlink_metadata(&run) else {
        return check("lab", Status::Ok, format!("no lab started yet ({} does not exist)", run.display()), "");
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        if meta.file_type().is_symlink() || !meta.is_dir() {
            return check(
                "lab",
                Status::Fail,
                format!("{} is not a folder", run.display()),
                "move it away; start-lab.sh makes it again",
            );
        }
        let me = my_uid();
        if me.is_some_and(|u| u != meta.uid()) {
            return check(
                "lab",
                Status::Fail,
                format!("{} belongs to another user", run.display()),
                "move it away; start-lab.sh makes it again",
            );
        }
        let mode = meta.permissions().mode() & 0o777;
        let mut open: Vec<String> = Vec::new();
        let mut where_ = Vec::new();
        for e in walk(&run) {
            if let Ok(m) = std::fs::symlink_metadata(&e) {
                let bits = m.permissions().mode() & 0o777;
                if m.file_type().is_socket() || m.is_file() {
                    if bits & 0o077 != 0 {
                        open.push(format!("{} ({bits:o})", e.display()));
                    }
                    if let Some(n) = e.file_name().and_then(|n| n.to_str()) {
                        if n.ends_with(".sock") {
                            where_.push(format!("socket {}", e.display()));
                        } else if let Some(p) = n.strip_prefix("lab-").and_then(|r| r.strip_suffix(".token")) {
                            if p.chars().all(|c| c.is_ascii_digit()) {
                                where_.push(format!("port {p}"));
                            }
                        }
                    }
                }
            }
        }
        let labs =
            if where_.is_empty() { "no lab token files".to_string() } else { format!("labs on {}", where_.join(", ")) };
        if mode != 0o700 {
            return check(
                "lab",
                Status::Fail,
                format!("{} has mode {mode:o}: other users can look in ({labs})", run.display()),
                format!("chmod 700 {}", run.display()),
            );
        }
        if !open.is_empty() {
            return check(
                "lab",
                Status::Fail,
                format!("files others can read: {}", open.join(", ")),
                format!("chmod 600 those files (start-lab.sh makes them 0600 inside {})", run.display()),
            );
        }
        check("lab", Status::Ok, format!("{} is 0700, its files 0600; {labs}", run.display()), "")
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        check("lab", Status::Ok, format!("{}", run.display()), "")
    }
}

/// This process's user id, from /proc (no libc call needed).
#[cfg(unix)]
fn my_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn memory_check(env: &dyn Fn(&str) -> Option<String>, probe: &Probe) -> Check {
    let (total, avail) = probe.host;
    let host = match (total, avail) {
        (Some(t), Some(a)) => format!("host memory {} available of {}", gib(a), gib(t)),
        _ => "host memory unknown".to_string(),
    };
    match env("MOE_LENS_MEMORY_LIMIT") {
        None => check(
            "memory",
            Status::Ok,
            format!("{host}; MOE_LENS_MEMORY_LIMIT unset (a load may take what is free)"),
            "",
        ),
        Some(v) => match memory::parse_size(&v) {
            Ok(b) => check(
                "memory",
                Status::Ok,
                format!("{host}; MOE_LENS_MEMORY_LIMIT={v}: a load may take at most {}", gib(b)),
                "",
            ),
            Err(e) => check("memory", Status::Fail, e.to_string(), "write it as 8G or 512M, or unset it"),
        },
    }
}

/// Whether this process can create files in `dir` (tried, then removed: permissions, read-only
/// mounts and root's powers all count as they really are).
pub(crate) fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".moe-lens-doctor-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// [`writable`], or, when `dir` does not exist yet, whether its first existing ancestor is (what
/// `create_dir_all` would need).
fn writable_or_creatable(dir: &Path) -> bool {
    let mut d = dir;
    loop {
        if d.exists() {
            return d.is_dir() && writable(d);
        }
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => return false,
        }
    }
}

/// Why other users could not read `path` (the file without `r` for others, or a folder on its way
/// without `x` for others), or `None` when they can. For `moe-lens prepare`.
pub fn unreadable_by_others(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = std::fs::canonicalize(path).ok()?;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        if mode & 0o004 == 0 {
            return Some(format!("{} is not readable by others (mode {:o})", path.display(), mode & 0o777));
        }
        for a in path.ancestors().skip(1) {
            let m = std::fs::metadata(a).ok()?.permissions().mode();
            if m & 0o001 == 0 {
                return Some(format!("the folder {} cannot be entered by others (mode {:o})", a.display(), m & 0o777));
            }
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moe-lens-doctor-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a temporary folder");
        d
    }

    fn run(vars: &[(&str, &str)], probe: &Probe) -> Report {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        doctor_with(&|k: &str| m.get(k).cloned(), probe)
    }

    #[cfg(unix)]
    #[test]
    fn a_build_folder_below_a_folder_all_can_write_fails_until_it_has_a_private_cargo_folder() {
        use std::os::unix::fs::PermissionsExt;
        // not in /tmp, which has no guard on a fresh machine: in the checkout's target folder
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../target/doctor-cargo-guard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let open = d.join("open");
        std::fs::create_dir_all(open.join("me/0")).expect("folders");
        let set =
            |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        set(&d, 0o755);
        set(&open, 0o1777); // as /var/tmp
        let build = open.join("me/0");
        let r = run(&[("EVCXR_TMPDIR", build.to_str().unwrap_or_default())], &no_gpu());
        let c = line(&r, "kernel");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.found.contains("another user can write into") && c.fix.contains("install -d -m 755"), "{c:?}");
        // a .cargo folder of the user's that only they can write: nobody else can plant a config
        std::fs::create_dir(open.join(".cargo")).expect(".cargo");
        set(&open.join(".cargo"), 0o755);
        match cargo_config_risk(&d) {
            None => {
                assert!(cargo_config_risk(&build).is_none(), "{:?}", cargo_config_risk(&build));
                let r = run(&[("EVCXR_TMPDIR", build.to_str().unwrap_or_default())], &no_gpu());
                assert_eq!(line(&r, "kernel").status, Status::Ok);
            }
            Some(why) => eprintln!("the checkout itself is not private ({why}): the safe case is not checked"),
        }
        // a config file in it that others can write
        std::fs::write(open.join(".cargo/config.toml"), "").expect("config");
        set(&open.join(".cargo/config.toml"), 0o666);
        assert!(cargo_config_risk(&build).is_some_and(|w| w.contains("config.toml")));
        std::fs::remove_file(open.join(".cargo/config.toml")).expect("rm");
        // the .cargo folder all can write
        set(&open.join(".cargo"), 0o1777);
        assert!(cargo_config_risk(&build).is_some_and(|w| w.contains("not a folder only root or you")));
        set(&open.join(".cargo"), 0o755);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_server_that_is_not_running_fails_with_what_to_do() {
        let d = tmp("server");
        let sock = d.join("gone.sock");
        let r = run(&[("MOE_LENS_SERVER", sock.to_str().unwrap_or_default())], &no_gpu());
        let c = line(&r, "server");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.found.contains("is not running") && c.fix.contains("unset MOE_LENS_SERVER"), "{c:?}");
        // without the variable there is no server line
        assert!(run(&[], &no_gpu()).checks.iter().all(|c| c.name != "server"));
    }

    fn no_gpu() -> Probe {
        Probe { gpus: None, host: (Some(16 << 30), Some(8 << 30)) }
    }

    fn line<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.get(name).unwrap_or_else(|| panic!("no {name} line in\n{r}"))
    }

    /// A model folder the hub accepts (the checks only read config.json and the tokenizer).
    fn model_dir(tag: &str, hidden: usize) -> PathBuf {
        let d = tmp(tag);
        std::fs::write(
            d.join("config.json"),
            format!(
                r#"{{"model_type":"olmoe","vocab_size":50304,"hidden_size":{hidden},"intermediate_size":{hidden},
                "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":4,"num_experts":8,
                "num_experts_per_tok":2,"max_position_embeddings":256,"rope_theta":10000.0,"tie_word_embeddings":true}}"#
            ),
        )
        .expect("config.json");
        let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tokenizer/tokenizer.json");
        assert!(tok.is_file(), "run tests/setup-data.sh first");
        std::fs::copy(tok, d.join("tokenizer.json")).expect("tokenizer.json");
        std::fs::write(d.join("model.safetensors"), b"").expect("weights");
        d
    }

    #[test]
    fn one_line_per_check_in_order_each_fail_with_a_fix() {
        let r = run(&[("MOE_LENS_MODEL", "demo")], &no_gpu());
        let names: Vec<&str> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["kernel", "build", "gpus", "device", "model", "quant cache", "tokenizer", "lab", "memory"],
            "{r}"
        );
        assert_eq!(r.to_string().lines().count(), names.len());
        assert_eq!(format!("{r:?}"), r.to_string(), "a notebook cell shows the same list");
        let bad = run(
            &[("MOE_LENS_MODEL", "/nonexistent/model"), ("MOE_LENS_DEVICE", "tpu"), ("MOE_LENS_MEMORY_LIMIT", "lots")],
            &no_gpu(),
        );
        assert!(bad.failed());
        for c in &bad.checks {
            if c.status == Status::Fail {
                assert!(!c.fix.is_empty(), "{c:?}");
            }
        }
        assert!(line(&bad, "device").found.contains("MOE_LENS_DEVICE"), "{bad}");
        assert!(line(&bad, "memory").found.contains("write it as 8G"), "{bad}");
        assert!(line(&bad, "model").found.contains("/nonexistent/model"), "{bad}");
        let ok = run(&[("MOE_LENS_MODEL", "demo"), ("MOE_LENS_MEMORY_LIMIT", "8G")], &no_gpu());
        assert!(
            line(&ok, "memory").found.contains("at most 8.0 GiB")
                && line(&ok, "memory").found.contains("8.0 GiB available of 16.0 GiB"),
            "{ok}"
        );
        assert!(line(&ok, "tokenizer").status == Status::Ok, "{ok}");
    }

    #[test]
    fn gpus_as_nvidia_smi_lists_them_and_several_without_a_choice_warn() {
        let two = || Probe {
            gpus: Some(Ok(vec![
                "0, NVIDIA A30, 11520 MiB, 24576 MiB".into(),
                "1, NVIDIA A30, 24000 MiB, 24576 MiB".into(),
            ])),
            host: (None, None),
        };
        let r = run(&[], &two());
        let g = line(&r, "gpus");
        assert!(g.found.contains("0: NVIDIA A30, 11520 MiB free of 24576 MiB"), "{r}");
        assert_eq!(g.status, Status::Warn, "{r}");
        assert!(g.fix.contains("CUDA_VISIBLE_DEVICES"), "{r}");
        let r = run(&[("CUDA_VISIBLE_DEVICES", "MIG-abc")], &two());
        assert_eq!(line(&r, "gpus").status, Status::Ok, "{r}");
        assert!(line(&r, "gpus").found.contains("CUDA_VISIBLE_DEVICES=MIG-abc"), "{r}");
        if !cfg!(any(feature = "cuda", moe_lens_cuda)) {
            assert_eq!(line(&r, "build").status, Status::Warn, "a CPU build on a GPU machine: {r}");
        }
        let r = run(&[], &Probe { gpus: Some(Err("driver mismatch".into())), host: (None, None) });
        assert!(line(&r, "gpus").found.contains("driver mismatch"), "{r}");
    }

    #[test]
    fn a_hub_model_not_in_the_cache_warns_and_fails_offline() {
        let cache = tmp("hub");
        let c = cache.to_string_lossy().to_string();
        let r = run(&[("HF_HUB_CACHE", &c)], &no_gpu());
        let m = line(&r, "model");
        assert_eq!(m.status, Status::Warn, "{r}");
        assert!(m.found.contains("not in the Hugging Face cache") && m.fix.contains("moe-lens prepare"), "{r}");
        let r = run(&[("HF_HUB_CACHE", &c), ("HF_HUB_OFFLINE", "1")], &no_gpu());
        assert_eq!(line(&r, "model").status, Status::Fail, "{r}");
        assert!(r.get("tokenizer").is_none(), "no model, no tokenizer line: {r}");
    }

    #[test]
    fn the_quantized_cache_found_writable_or_neither() {
        let dir = model_dir("quant", 256);
        let m = dir.to_string_lossy().to_string();
        // where a new cache would go cannot be created, not even by root: under a regular file
        let blocked = dir.join("model.safetensors").join("cache").to_string_lossy().to_string();
        let r = run(
            &[("MOE_LENS_MODEL", &m), ("MOE_LENS_QUANT", "q4k"), ("MOE_LENS_QUANT_CACHE_DIR", &blocked)],
            &no_gpu(),
        );
        let q = line(&r, "quant cache");
        assert_eq!(q.status, Status::Fail, "{r}");
        assert!(
            q.found.contains(&blocked) && q.fix.contains("moe-lens prepare") && q.fix.contains(CACHE_DIR_VAR),
            "{r}"
        );
        // auto on a model of OLMoE's block sizes means q4k too; the model folder is writable
        let r = run(&[("MOE_LENS_MODEL", &m)], &no_gpu());
        assert!(line(&r, "quant cache").found.contains("first load quantizes"), "{r}");
        // a prepared cache in the model folder is found, even with an unwritable cache dir set
        std::fs::write(dir.join("moe-lens.q4k.gguf"), b"GGUF").expect("a cache file");
        let r = run(&[("MOE_LENS_MODEL", &m), ("MOE_LENS_QUANT_CACHE_DIR", &blocked)], &no_gpu());
        assert_eq!(line(&r, "quant cache").status, Status::Ok, "{r}");
        assert!(line(&r, "quant cache").found.contains("moe-lens.q4k.gguf"), "{r}");
        // a model too small for q4k blocks: auto keeps it as stored
        let small = model_dir("small", 64).to_string_lossy().to_string();
        let r = run(&[("MOE_LENS_MODEL", &small)], &no_gpu());
        assert!(line(&r, "quant cache").found.contains("not used"), "{r}");
    }

    #[cfg(unix)]
    #[test]
    fn the_lab_folder_must_be_0700_with_0600_files() {
        use std::os::unix::fs::PermissionsExt;
        let home = tmp("lab");
        let run_dir = home.join("run");
        std::fs::create_dir_all(&run_dir).expect("run folder");
        let h = home.to_string_lossy().to_string();
        let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
        mode(&run_dir, 0o755);
        let r = run(&[("MOE_LENS_HOME", &h)], &no_gpu());
        assert_eq!(line(&r, "lab").status, Status::Fail, "{r}");
        assert!(line(&r, "lab").fix.contains("chmod 700"), "{r}");
        mode(&run_dir, 0o700);
        let tok = run_dir.join("lab-8888.token");
        std::fs::write(&tok, "secret").expect("token file");
        mode(&tok, 0o644);
        let r = run(&[("MOE_LENS_HOME", &h)], &no_gpu());
        assert_eq!(line(&r, "lab").status, Status::Fail, "{r}");
        assert!(
            line(&r, "lab").found.contains("lab-8888.token (644)") && line(&r, "lab").fix.contains("chmod 600"),
            "{r}"
        );
        mode(&tok, 0o600);
        let r = run(&[("MOE_LENS_HOME", &h)], &no_gpu());
        assert_eq!(line(&r, "lab").status, Status::Ok, "{r}");
        assert!(line(&r, "lab").found.contains("port 8888"), "{r}");
        assert!(!r.to_string().contains("secret"));
    }
}
