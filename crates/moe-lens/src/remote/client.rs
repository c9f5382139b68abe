//! A connection to `moe-lens serve`: what a [`crate::lab::Lens`] loaded with `"server:PATH"` (or
//! `MOE_LENS_SERVER`) runs its forward passes through. One request at a time per `Lens`; a broken
//! connection is dropped and the next call connects again.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::protocol::{
    b64_to_f32s, read_frame, write_frame, FrameError, Hello, Limits, Request, RequestBody, Response, ResponseBody,
    RunReply, Stats, TopKReply, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
use crate::error::{Error, Result};
use crate::intervene::Interventions;
use crate::spy::RoutingCache;

/// A connection to one server, with the model it answered for first.
pub(crate) struct Client {
    socket: PathBuf,
    conn: Mutex<Option<UnixStream>>,
    next_id: AtomicU64,
    hello: Hello,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.socket.display())
    }
}

impl Client {
    /// Connects and asks which model the server holds.
    pub(crate) fn connect(socket: &Path) -> Result<Client> {
        let mut stream = open(socket)?;
        let hello = hello(socket, &mut stream, 1)?;
        Ok(Client { socket: socket.to_path_buf(), conn: Mutex::new(Some(stream)), next_id: AtomicU64::new(2), hello })
    }

    /// What the server said when this client first connected.
    pub(crate) fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The server's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Server { socket: self.socket.clone(), msg: msg.into() }
    }

    /// A fresh connection to a server that holds the same model as the first one did.
    fn reconnect(&self) -> Result<UnixStream> {
        let mut stream = open(&self.socket)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let h = hello(&self.socket, &mut stream, id)?;
        if h.model != self.hello.model || h.config != self.hello.config || h.tokenizer != self.hello.tokenizer {
            return Err(self.err(format!(
                "it was restarted with another model ({}, this Lens was loaded from {}): load again \
                 (`let lens = load(...)?;`) to use the new one",
                h.model, self.hello.model
            )));
        }
        Ok(stream)
    }

    /// Sends one request and waits for its answer. A connection that fails is dropped; when it was
    /// an old one (the server may have restarted since), the request is sent once more on a new one
    /// (every request is a pure computation, so repeating it is safe).
    pub(crate) fn call(&self, body: RequestBody) -> Result<ResponseBody> {
        let mut guard = match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut fresh = false;
        if guard.is_none() {
            *guard = Some(self.reconnect()?);
            fresh = true;
        }
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let req = Request { v: PROTOCOL_VERSION, id, body: body.clone() };
            let Some(stream) = guard.as_mut() else { return Err(self.err("no connection")) };
            match exchange(stream, &req) {
                Ok(resp) => {
                    if resp.v != PROTOCOL_VERSION || resp.id != id {
                        *guard = None;
                        return Err(self.err(format!(
                            "answered with protocol {} to request {} (this moe-lens speaks {PROTOCOL_VERSION}, request {id}): \
                             the server and the notebook's moe-lens are different versions; ask your instructor",
                            resp.v, resp.id
                        )));
                    }
                    return match resp.body {
                        ResponseBody::Error { message, .. } => Err(self.err(message)),
                        body => Ok(body),
                    };
                }
                Err(e) => {
                    *guard = None;
                    if fresh {
                        return Err(self.err(format!(
                            "the connection broke during the request ({e}): the server stopped or restarted. \
                             Run the cell again; if this repeats, ask your instructor (the server's log says why)"
                        )));
                    }
                    // an old connection: the server may have restarted since; try once on a new one
                    *guard = Some(self.reconnect()?);
                    fresh = true;
                }
            }
        }
    }

    /// A trace or a generation.
    pub(crate) fn run(&self, body: RequestBody) -> Result<RunReply> {
        match self.call(body)? {
            ResponseBody::Trace(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The continuation's log-probability under each set of `edits` ([`RequestBody::Score`]).
    pub(crate) fn score(&self, ids: Vec<u32>, prompt_len: usize, edits: Vec<Interventions>) -> Result<Vec<f64>> {
        let want = edits.len().max(1);
        match self.call(RequestBody::Score { ids, prompt_len, edits })? {
            ResponseBody::Score { logprobs } if logprobs.len() == want => Ok(logprobs),
            ResponseBody::Score { logprobs } => {
                Err(self.err(format!("answered {} scores for {want} sequences", logprobs.len())))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// A teacher-forced run with every router captured ([`RequestBody::Teacher`]): the routing, the
    /// continuation's log-probability and the next-token log-probabilities.
    pub(crate) fn teacher(
        &self,
        ids: Vec<u32>,
        prompt_len: usize,
        interventions: Interventions,
    ) -> Result<(RoutingCache, f64, Vec<f32>)> {
        match self.call(RequestBody::Teacher { ids, prompt_len, interventions })? {
            ResponseBody::Teacher(r) => {
                let mut cache = RoutingCache::new();
                for w in &r.routing {
                    cache.push(w.to_routing()?);
                }
                Ok((cache, r.logprob, b64_to_f32s(&r.next)?))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// The server's limits, as its hello gave them.
    pub(crate) fn limits(&self) -> &Limits {
        &self.hello.limits
    }

    /// One scan batch.
    pub(crate) fn top_k(&self, sequences: Vec<Vec<u32>>) -> Result<TopKReply> {
        match self.call(RequestBody::TopK { sequences })? {
            ResponseBody::TopK(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The server's counters and memory.
    pub(crate) fn stats(&self) -> Result<Stats> {
        match self.call(RequestBody::Stats)? {
            ResponseBody::Stats(s) => Ok(s),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, body: &ResponseBody) -> Error {
        let kind = match body {
            ResponseBody::Hello(_) => "hello",
            ResponseBody::Trace(_) => "trace",
            ResponseBody::TopK(_) => "top_k",
            ResponseBody::Stats(_) => "stats",
            ResponseBody::Score { .. } => "score",
            ResponseBody::Teacher(_) => "teacher",
            ResponseBody::Error { .. } => "error",
        };
        self.err(format!("answered with a {kind} message to another request: a server of another moe-lens version?"))
    }
}

fn exchange(stream: &mut UnixStream, req: &Request) -> std::result::Result<Response, FrameError> {
    write_frame(stream, req).map_err(FrameError::Io)?;
    read_frame(stream, MAX_RESPONSE_FRAME)
}

/// Opens the socket, with an error that says what to do.
fn open(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        let msg = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "is not running ({e}): ask your instructor to start it, or start one yourself with \
                 `moe-lens serve --model MODEL --socket {}`; the next call connects again",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "may not be opened by you ({e}): the socket belongs to the class's group (`ls -l {}` shows it); \
                 ask your instructor to add you to that group, then log in again",
                socket.display()
            ),
            _ => format!("cannot be reached ({e}): check the path in MOE_LENS_SERVER or load(\"server:PATH\")"),
        };
        Error::Server { socket: socket.to_path_buf(), msg }
    })
}

/// How long a hello may take: the server answers it from the connection's own thread, at once
/// even while the model is busy, so a longer wait means a server that is stuck (a notebook cell, or
/// `doctor()`, must not hang on it).
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn hello(socket: &Path, stream: &mut UnixStream, id: u64) -> Result<Hello> {
    let err = |msg: String| Error::Server { socket: socket.to_path_buf(), msg };
    let req = Request { v: PROTOCOL_VERSION, id, body: RequestBody::Hello };
    // the timeout covers the hello only: a generation's answer may take longer
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let resp = exchange(stream, &req);
    let _ = stream.set_read_timeout(None);
    let resp = resp.map_err(|e| {
        err(format!(
            "did not answer ({e}): it may be starting (loading the model) or stopping; try again in a minute, \
             or ask your instructor"
        ))
    })?;
    match resp.body {
        ResponseBody::Hello(h) if h.protocol == PROTOCOL_VERSION => Ok(*h),
        ResponseBody::Hello(h) => Err(err(format!(
            "speaks protocol {} and this moe-lens {PROTOCOL_VERSION}: the server and the notebook's moe-lens \
             are different versions; ask your instructor",
            h.protocol
        ))),
        ResponseBody::Error { message, .. } => Err(err(message)),
        _ => Err(err("answered hello with another message: a server of another moe-lens version?".into())),
    }
}
