//! `moe-lens serve`: one model, held once, answering many clients over a Unix socket (the class's
//! notebooks through `MOE_LENS_SERVER`, the command line through `--server`). Protocol:
//! [`crate::remote::protocol`].
//!
//! - **One worker** thread owns the model; one thread per connection reads and checks requests
//!   (size limits, versions) and queues them. How the worker schedules them: [`worker`].
//! - **Fair**: a connection has at most one request queued or running (the client waits for each
//!   answer), and the queue is first in, first out, so the worker takes the clients in turn (round
//!   robin). A scan arrives as one request per batch of its sentences (at most
//!   [`Limits::max_batch_tokens`] tokens), so another client's trace waits for at most one batch
//!   of it, not the whole scan; a generation runs one decode step at a time between other requests
//!   ([`worker::STEP_BUDGET`] of steps per round), so a trace never waits for a whole generation.
//! - **Batching, if asked**: with [`ServeOptions::batch_traces`] > 1, traces waiting together run
//!   as one padded forward pass; what that gains and changes in the numbers: [`worker`].
//! - **The same answers**: by default every request runs as a local `Lens` runs it, so a trace,
//!   generation, scan batch, score or teacher-forced run through the server equals a local one bit
//!   for bit on the CPU, and is the same computation on a GPU.
//! - **Costs nothing when the client leaves**: a queued request whose client disconnected is
//!   dropped before it runs, a generation in progress at its next step (a running pass finishes
//!   and its answer is discarded).
//! - **Safe to share**: the socket is created with a umask so that it is never wider than its
//!   `mode` (0600, or 0660 for a `group`), a path that is not a socket is never replaced, a stale
//!   socket (no server answering) is removed; a malformed or hostile frame gets an error response
//!   (or, for a frame over [`MAX_REQUEST_FRAME`], a closed connection), never a crash; a panic
//!   inside a run is caught and answered as an error.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Device;

mod worker;

use crate::error::{Error, Result};
use crate::lab::Lens;
use crate::memory;
use crate::remote::protocol::{
    read_frame_bytes, write_frame, FrameError, Hello, Limits, Request, RequestBody, Response, ResponseBody, Stats,
    MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

/// How to serve ([`start`]).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Unix socket to create (its folder must exist).
    pub socket: PathBuf,
    /// The socket's permission bits: 0o600 (only the server's user) or 0o660 (its group too).
    pub mode: u32,
    /// A Unix group to give the socket (the class's): its members may connect when `mode` is 0o660.
    pub group: Option<String>,
    /// What one request may ask.
    pub limits: Limits,
    /// Most open connections; more are refused with an error.
    pub max_clients: usize,
    /// Most traces of different clients run together in one padded forward pass. 1 (the default):
    /// each alone, so every trace equals a local one; more: lower waits under load, at the price
    /// of the batched kernels' rounding (see the `worker` module's notes).
    pub batch_traces: usize,
}

impl ServeOptions {
    /// Defaults: mode 0600, no group, [`Limits::default`], 1,024 connections, each trace alone.
    pub fn new(socket: impl Into<PathBuf>) -> ServeOptions {
        ServeOptions {
            socket: socket.into(),
            mode: 0o600,
            group: None,
            limits: Limits::default(),
            max_clients: 1024,
            batch_traces: 1,
        }
    }
}

/// A running server; [`ServerHandle::stop`] (or dropping it) stops it and removes its socket.
pub struct ServerHandle {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

/// A request waiting for the model.
struct Job {
    body: RequestBody,
    reply: mpsc::Sender<ResponseBody>,
    cancelled: Arc<AtomicBool>,
}

#[derive(Default)]
struct Counters {
    served: std::collections::BTreeMap<String, u64>,
    errors: u64,
    dropped: u64,
    trace_batches: u64,
    batched_traces: u64,
}

struct Shared {
    socket: PathBuf,
    hello: Hello,
    limits: Limits,
    max_clients: usize,
    batch_traces: usize,
    /// Generations in progress (the worker's count, for [`Stats`]).
    generating: AtomicUsize,
    device: Device,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stop: AtomicBool,
    counters: Mutex<Counters>,
    conns: Mutex<HashMap<u64, UnixStream>>,
    next_conn: AtomicU64,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn server_err(socket: &Path, msg: impl Into<String>) -> Error {
    Error::Server { socket: socket.to_path_buf(), msg: msg.into() }
}

/// Starts a server: checks the socket path, loads the model with `load` on the worker thread (which
/// keeps it: GPU contexts stay on one thread), then creates the socket and answers. Returns once
/// the socket is ready.
pub fn start(load: impl FnOnce() -> Result<Lens> + Send + 'static, opts: ServeOptions) -> Result<ServerHandle> {
    let socket = opts.socket.clone();
    if opts.mode & !0o660 != 0 {
        return Err(Error::invalid(
            "mode",
            format!("{:o}: the socket may be 600 (only you) or 660 (your group too), never wider", opts.mode),
        ));
    }
    let gid = opts.group.as_deref().map(group_id).transpose()?;
    clear_socket_path(&socket)?;

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(Hello, Device)>>();
    let (shared_tx, shared_rx) = mpsc::channel::<Arc<Shared>>();
    let limits = opts.limits;
    let worker = std::thread::Builder::new()
        .name("moe-lens-worker".into())
        .spawn(move || {
            let lens = match load() {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(hello_of(&lens, limits));
            if let Ok(shared) = shared_rx.recv() {
                worker::work(&lens, &shared);
            }
        })
        .map_err(|e| server_err(&socket, format!("cannot start the worker thread: {e}")))?;
    let (hello, device) = match ready_rx.recv() {
        Ok(r) => r?,
        Err(_) => return Err(server_err(&socket, "the worker thread stopped while loading the model")),
    };
    let listener = bind(&socket, opts.mode, gid)?;
    listener.set_nonblocking(true).map_err(|e| Error::io(&socket, e))?;
    let shared = Arc::new(Shared {
        socket: socket.clone(),
        hello,
        limits,
        max_clients: opts.max_clients,
        batch_traces: opts.batch_traces.max(1),
        generating: AtomicUsize::new(0),
        device,
        queue: Mutex::new(VecDeque::new()),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
        counters: Mutex::new(Counters::default()),
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        started: Instant::now(),
    });
    let _ = shared_tx.send(shared.clone());
    let s2 = shared.clone();
    let accept = std::thread::Builder::new()
        .name("moe-lens-accept".into())
        .spawn(move || accept_loop(&s2, listener))
        .map_err(|e| server_err(&socket, format!("cannot start the accept thread: {e}")))?;
    Ok(ServerHandle { shared, accept: Some(accept), worker: Some(worker) })
}

impl ServerHandle {
    /// The socket the server answers on.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// What the server tells a client about its model.
    pub fn hello(&self) -> &Hello {
        &self.shared.hello
    }

    /// The server's counters and memory.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops accepting, closes every connection (their clients get a clear error and connect again
    /// to the next server), lets the worker finish the run in progress, and removes the socket.
    pub fn stop(mut self) {
        self.halt();
    }

    /// Blocks until the server stops (it only stops through [`ServerHandle::stop`] from another
    /// thread, or with the process).
    pub fn wait(mut self) {
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        self.halt();
    }

    fn halt(&mut self) {
        let s = &self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.wake.notify_all();
        // the listener first: a client whose connection is closed below and who connects again
        // is then refused ("is not running"), never accepted by a server about to go
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for (_, c) in lock(&s.conns).drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        if std::fs::symlink_metadata(&s.socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&s.socket);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.worker.is_some() || self.accept.is_some() {
            self.halt();
        }
    }
}

impl Shared {
    fn stats(&self) -> Stats {
        let c = lock(&self.counters);
        let (rss, peak) = process_memory();
        Stats {
            clients: lock(&self.conns).len(),
            queued: lock(&self.queue).len(),
            generating: self.generating.load(Ordering::SeqCst),
            served: c.served.clone(),
            errors: c.errors,
            dropped: c.dropped,
            trace_batches: c.trace_batches,
            batched_traces: c.batched_traces,
            batch_traces: self.batch_traces,
            uptime_s: self.started.elapsed().as_secs_f64(),
            rss_bytes: rss,
            peak_rss_bytes: peak,
            gpu_memory: memory::device_memory(&self.device),
        }
    }

    fn count(&self, kind: &str, body: &ResponseBody) {
        let mut c = lock(&self.counters);
        if matches!(body, ResponseBody::Error { .. }) {
            c.errors += 1;
        } else {
            *c.served.entry(kind.to_string()).or_default() += 1;
        }
    }
}

/// The socket's path is free: nothing there, or a stale socket no server answers on (removed).
fn clear_socket_path(socket: &Path) -> Result<()> {
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(socket).is_ok() {
                return Err(server_err(
                    socket,
                    "another server is answering on this socket: stop it first (or choose another --socket)",
                ));
            }
            std::fs::remove_file(socket).map_err(|e| Error::io(socket, e))
        }
        Ok(_) => Err(server_err(
            socket,
            "exists and is not a socket: refusing to replace it; choose another --socket path (or remove the file \
             yourself if it is yours)",
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => match socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => Err(server_err(
                socket,
                format!("its folder {} does not exist: create it (mode 0750 for a class's group) first", dir.display()),
            )),
            _ => Ok(()),
        },
        Err(e) => Err(Error::io(socket, e)),
    }
}

/// The group's id, from its name.
fn group_id(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::invalid("group", format!("{name:?} has a NUL byte")))?;
    // SAFETY: getgrnam reads the NUL-terminated name and returns a pointer into static storage (or
    // null); gr_gid is read at once, before any other call could overwrite that storage.
    let gid = unsafe {
        let g = libc::getgrnam(c.as_ptr());
        if g.is_null() {
            None
        } else {
            Some((*g).gr_gid)
        }
    };
    gid.ok_or_else(|| {
        Error::invalid("group", format!("{name:?} is not a group on this machine (`getent group {name}` lists it)"))
    })
}

/// Creates the socket never wider than `mode`: the umask is narrowed around `bind`, then the mode and
/// group are set explicitly.
fn bind(socket: &Path, mode: u32, gid: Option<u32>) -> Result<UnixListener> {
    // SAFETY: umask only swaps the process's file-creation mask; it is restored right after.
    let old = unsafe { libc::umask((!mode & 0o777) as libc::mode_t) };
    let bound = UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| server_err(socket, format!("cannot create the socket: {e}")))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(socket, None, Some(gid)).map_err(|e| {
            server_err(socket, format!("cannot give the socket group {gid}: {e} (you must be a member of the group)"))
        })?;
    }
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(socket, e))?;
    Ok(listener)
}

fn hello_of(lens: &Lens, limits: Limits) -> Result<(Hello, Device)> {
    let (tokenizer, eos) = lens.tokenizer().to_wire()?;
    let device = lens.model()?.device().clone();
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        model: lens.name().to_string(),
        summary: lens.to_string(),
        config: lens.config().clone(),
        dtype: format!("{:?}", lens.dtype()).to_ascii_lowercase(),
        tokenizer,
        eos,
        limits,
        pid: std::process::id(),
    };
    Ok((hello, device))
}

fn error_body(class: &str, message: impl Into<String>) -> ResponseBody {
    ResponseBody::Error { class: class.into(), message: message.into() }
}

fn check_sizes(limits: &Limits, body: &RequestBody) -> std::result::Result<(), String> {
    let text_ok = |t: &str| {
        if t.len() > limits.max_text_bytes {
            Err(format!(
                "the text is {} bytes; this server takes at most {} per trace or generation: trace a shorter text",
                t.len(),
                limits.max_text_bytes
            ))
        } else {
            Ok(())
        }
    };
    match body {
        RequestBody::Trace { text, .. } => text_ok(text),
        RequestBody::Generate { text, max_new_tokens, .. } => {
            text_ok(text)?;
            if *max_new_tokens > limits.max_new_tokens {
                return Err(format!(
                    "{max_new_tokens} new tokens asked; this server generates at most {} per request (the model is \
                     shared): ask for fewer",
                    limits.max_new_tokens
                ));
            }
            Ok(())
        }
        RequestBody::TopK { sequences } => {
            let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
            let padded = longest.saturating_mul(sequences.len());
            if sequences.is_empty() {
                return Err("an empty scan batch".into());
            }
            if sequences.len() > limits.max_batch_sequences || padded > limits.max_batch_tokens {
                return Err(format!(
                    "a scan batch of {} sentences ({padded} tokens with padding); this server takes at most {} \
                     sentences and {} tokens per batch: scan with a smaller batch_size",
                    sequences.len(),
                    limits.max_batch_sequences,
                    limits.max_batch_tokens
                ));
            }
            Ok(())
        }
        RequestBody::Score { ids, edits, .. } => {
            let rows = ids.len().saturating_mul(edits.len().max(1));
            if edits.len() > limits.max_batch_sequences || rows > limits.max_batch_tokens {
                return Err(format!(
                    "{} sequences of {} tokens ({rows} tokens); this server takes at most {} sequences and {} tokens \
                     per pass: sweep with a smaller max_batch_tokens (SweepOptions)",
                    edits.len().max(1),
                    ids.len(),
                    limits.max_batch_sequences,
                    limits.max_batch_tokens
                ));
            }
            Ok(())
        }
        RequestBody::Teacher { ids, .. } => {
            if ids.len() > limits.max_batch_tokens {
                return Err(format!(
                    "{} tokens; this server takes at most {} per pass: use a shorter prompt and continuation",
                    ids.len(),
                    limits.max_batch_tokens
                ));
            }
            Ok(())
        }
        RequestBody::Hello | RequestBody::Stats => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// Connections
// ------------------------------------------------------------------------------------------------

fn accept_loop(shared: &Arc<Shared>, listener: UnixListener) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let mut stream = stream;
                if lock(&shared.conns).len() >= shared.max_clients {
                    let msg = format!(
                        "the server has its {} connections already: try again in a minute, or ask your instructor",
                        shared.max_clients
                    );
                    let _ = write_frame(&mut stream, &response(0, error_body("busy", msg)));
                    continue;
                }
                let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                let Ok(clone) = stream.try_clone() else { continue };
                lock(&shared.conns).insert(id, clone);
                let s = shared.clone();
                let spawned = std::thread::Builder::new().name(format!("moe-lens-conn-{id}")).spawn(move || {
                    connection(&s, stream);
                    lock(&s.conns).remove(&id);
                });
                if spawned.is_err() {
                    lock(&shared.conns).remove(&id);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn kind_of(body: &ResponseBody) -> &'static str {
    match body {
        ResponseBody::Hello(_) => "hello",
        ResponseBody::Stats(_) => "stats",
        _ => "other",
    }
}

fn response(id: u64, body: ResponseBody) -> Response {
    Response { v: PROTOCOL_VERSION, id, body }
}

/// Whether the peer has closed its end (checked while its request waits).
fn peer_gone(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv writes at most 1 byte into `byte`, which lives across the call; MSG_PEEK leaves
    // it in the socket and MSG_DONTWAIT makes the call return at once.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast::<libc::c_void>(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(std::io::Error::last_os_error().kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    }
}

fn connection(shared: &Shared, mut stream: UnixStream) {
    loop {
        let bytes = match read_frame_bytes(&mut stream, MAX_REQUEST_FRAME) {
            Ok(b) => b,
            Err(FrameError::TooLarge(n)) => {
                let msg = format!(
                    "a request of {n} bytes is over the server's limit of {MAX_REQUEST_FRAME} bytes; the connection \
                     is closed (the next call connects again)"
                );
                let _ = write_frame(&mut stream, &response(0, error_body("limit", msg)));
                return;
            }
            Err(_) => return,
        };
        let req: Request = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                // answer with the id when the frame has one, so a client can match it
                let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0);
                let msg = format!("the request is not a moe-lens request ({e})");
                if write_frame(&mut stream, &response(id, error_body("invalid", msg))).is_err() {
                    return;
                }
                lock(&shared.counters).errors += 1;
                continue;
            }
        };
        let mut counted = false; // the worker counts what it answers
        let body = if req.v != PROTOCOL_VERSION {
            error_body(
                "invalid",
                format!(
                    "protocol {} asked; this server speaks {PROTOCOL_VERSION}: the notebook's moe-lens and the \
                     server's are different versions (ask your instructor)",
                    req.v
                ),
            )
        } else {
            match req.body {
                RequestBody::Hello => ResponseBody::Hello(Box::new(shared.hello.clone())),
                RequestBody::Stats => ResponseBody::Stats(shared.stats()),
                work => match check_sizes(&shared.limits, &work) {
                    Err(msg) => error_body("limit", msg),
                    Ok(()) => match submit_and_wait(shared, &stream, work) {
                        Some(b) => {
                            counted = true;
                            b
                        }
                        None => return, // the client left, or the server stops
                    },
                },
            }
        };
        if !counted {
            shared.count(kind_of(&body), &body);
        }
        if write_frame(&mut stream, &response(req.id, body)).is_err() {
            return;
        }
    }
}

/// Queues `body` for the worker and waits for its answer; `None` when the client went away first
/// (its request is then dropped unrun, or its answer discarded) or the server stops.
fn submit_and_wait(shared: &Shared, stream: &UnixStream, body: RequestBody) -> Option<ResponseBody> {
    let kind = body.kind();
    let (tx, rx) = mpsc::channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let mut q = lock(&shared.queue);
        q.push_back(Job { body, reply: tx, cancelled: cancelled.clone() });
    }
    shared.wake.notify_one();
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(b) => return Some(b),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) || peer_gone(stream) {
                    cancelled.store(true, Ordering::SeqCst);
                    return None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let b = error_body("internal", format!("the model's worker stopped before answering the {kind}"));
                return Some(b);
            }
        }
    }
}

/// The process's resident and peak resident memory, bytes (Linux's /proc/self/status).
fn process_memory() -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return (None, None) };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
