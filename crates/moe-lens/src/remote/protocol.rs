//! The wire protocol of `moe-lens serve`: frames of a 4-byte big-endian length followed by that
//! many bytes of one JSON document (a [`Request`] from the client, a [`Response`] from the server),
//! over a Unix socket. Every message carries the protocol version; a request is answered by exactly
//! one response with the same `id`.
//!
//! Floating-point arrays travel as base64 of their little-endian IEEE bytes (and expert ids as
//! base64 of little-endian u32s), so a client rebuilds exactly the numbers the server computed: no
//! decimal round trip, and NaN or infinities survive.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::intervene::Interventions;
use crate::spy::{Routing, Step};
use crate::tokens::Token;

/// The protocol version this build speaks; a server refuses requests of another.
pub const PROTOCOL_VERSION: u32 = 2;
/// The largest request frame a server reads (16 MiB); a longer one is refused and the connection closed.
pub const MAX_REQUEST_FRAME: usize = 16 << 20;
/// The largest response frame a client reads (1 GiB: a trace of 4,096 tokens is about 50 MB).
pub const MAX_RESPONSE_FRAME: usize = 1 << 30;

/// What a server accepts in one request; each too-large request gets an error saying which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest text of a trace or generation, bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Most new tokens of one generation (a generation holds the model for all its steps).
    pub max_new_tokens: usize,
    /// Most sentences in one scan batch.
    pub max_batch_sequences: usize,
    /// Most tokens in one scan batch, padding included (sentences × the longest one's tokens).
    pub max_batch_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_text_bytes: 64 << 10, max_new_tokens: 256, max_batch_sequences: 256, max_batch_tokens: 32_768 }
    }
}

/// One request: the version, the client's id for it, and what is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Chosen by the client; the response carries it back.
    pub id: u64,
    /// What is asked.
    pub body: RequestBody,
}

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestBody {
    /// The model the server holds: name, config, tokenizer, limits ([`Hello`]).
    Hello,
    /// One text run once with every router (or `layers`) captured, under `interventions`.
    Trace {
        /// The text.
        text: String,
        /// Only these router layers (all when absent).
        #[serde(default)]
        layers: Option<Vec<usize>>,
        /// Interventions at the routers (none when absent).
        #[serde(default)]
        interventions: Interventions,
    },
    /// Greedy generation with routing recorded at every step, under `interventions`.
    Generate {
        /// The prompt.
        text: String,
        /// The most new tokens.
        max_new_tokens: usize,
        /// Stop after the end-of-text token.
        stop_at_eos: bool,
        /// Interventions at the routers (none when absent).
        #[serde(default)]
        interventions: Interventions,
    },
    /// One scan batch: token-id sequences run as one right-padded batch, each layer's top-k back.
    TopK {
        /// The sentences' token ids, as the client's scan orders and batches them.
        sequences: Vec<Vec<u32>>,
    },
    /// The server's counters and memory ([`Stats`]).
    Stats,
    /// A teacher-forced pass of a prompt and its continuation, once per set of interventions (one
    /// sequence each, one batch): the continuation's log-probability under each ([`Lens::sweep`]).
    ///
    /// [`Lens::sweep`]: crate::lab::Lens::sweep
    Score {
        /// The prompt's tokens, then the continuation's.
        ids: Vec<u32>,
        /// How many of `ids` are the prompt's (at least 1).
        prompt_len: usize,
        /// One set per sequence of the batch; none: the model as it is.
        #[serde(default)]
        edits: Vec<Interventions>,
    },
    /// A teacher-forced pass under `interventions` with every router captured: the routing, the
    /// continuation's log-probability and the next-token distribution ([`Lens::effect`]).
    ///
    /// [`Lens::effect`]: crate::lab::Lens::effect
    Teacher {
        /// The prompt's tokens, then the continuation's.
        ids: Vec<u32>,
        /// How many of `ids` are the prompt's (at least 1).
        prompt_len: usize,
        /// Interventions at the routers (none when absent).
        #[serde(default)]
        interventions: Interventions,
    },
}

impl RequestBody {
    /// The request's kind, for the server's counters and the load test.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestBody::Hello => "hello",
            RequestBody::Trace { .. } => "trace",
            RequestBody::Generate { .. } => "generate",
            RequestBody::TopK { .. } => "scan",
            RequestBody::Stats => "stats",
            RequestBody::Score { .. } => "score",
            RequestBody::Teacher { .. } => "teacher",
        }
    }
}

/// One response: the version, the request's id, and the answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The id of the request answered (0 when the request could not be read).
    pub id: u64,
    /// The answer.
    pub body: ResponseBody,
}

/// What a server answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResponseBody {
    /// To [`RequestBody::Hello`].
    Hello(Box<Hello>),
    /// To a trace or a generation.
    Trace(RunReply),
    /// To a scan batch.
    TopK(TopKReply),
    /// To [`RequestBody::Stats`].
    Stats(Stats),
    /// To [`RequestBody::Score`]: one log-probability per set of interventions (one when none).
    Score {
        /// The continuation's log-probability, in the sets' order.
        logprobs: Vec<f64>,
    },
    /// To [`RequestBody::Teacher`].
    Teacher(TeacherReply),
    /// The request was refused or failed; the message says why and what to do.
    Error {
        /// A short class: `invalid` (the request), `limit`, `model` (the run failed), `busy`, `internal`.
        class: String,
        /// What was wrong and what to do.
        message: String,
    },
}

/// The model a server holds: everything a client needs to tokenize, check and print locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The model as the server's `--model` named it.
    pub model: String,
    /// The server's one-line description of its model (device, dtype, quantization).
    pub summary: String,
    /// The model's hyper-parameters.
    pub config: Config,
    /// The model's dtype, `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// The tokenizer as one `tokenizer.json` document.
    pub tokenizer: String,
    /// The tokenizer's end-of-text id.
    pub eos: Option<u32>,
    /// The server's limits.
    pub limits: Limits,
    /// The server's process id.
    pub pid: u32,
}

/// What a server has done and holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Open connections.
    pub clients: usize,
    /// Requests waiting for the model.
    pub queued: usize,
    /// Generations in progress (each advances one step at a time between other requests).
    #[serde(default)]
    pub generating: usize,
    /// Requests answered, by kind (`trace`, `generate`, `scan`, ...).
    pub served: std::collections::BTreeMap<String, u64>,
    /// Requests answered with an error.
    pub errors: u64,
    /// Queued requests dropped because their client went away.
    pub dropped: u64,
    /// Padded passes that ran several clients' traces together.
    #[serde(default)]
    pub trace_batches: u64,
    /// Traces answered from those passes.
    #[serde(default)]
    pub batched_traces: u64,
    /// Most traces the server runs together (1: no batching).
    #[serde(default)]
    pub batch_traces: usize,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// The server process's resident memory, bytes (Linux).
    pub rss_bytes: Option<u64>,
    /// The server process's peak resident memory, bytes (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// The GPU's free and total memory, bytes, when the model is on a GPU.
    pub gpu_memory: Option<(u64, u64)>,
}

/// One layer's routing for one forward call, as it travels ([`Routing`] with base64 arrays).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRouting {
    /// Which forward call.
    pub step: Step,
    /// Layer index.
    pub layer: usize,
    /// Position of the first row's token.
    pub offset: usize,
    /// Token rows.
    pub rows: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token.
    pub k: usize,
    /// `[rows * experts]` f32, base64.
    pub logits: String,
    /// `[rows * experts]` f32, base64.
    pub probs: String,
    /// `[rows * k]` u32, base64.
    pub top_k: String,
    /// `[rows * k]` f32, base64.
    pub weights: String,
}

impl WireRouting {
    /// The wire form of one cache entry.
    pub fn from_routing(r: &Routing) -> WireRouting {
        WireRouting {
            step: r.step,
            layer: r.layer,
            offset: r.offset,
            rows: r.rows,
            experts: r.experts,
            k: r.k,
            logits: f32s_to_b64(&r.logits),
            probs: f32s_to_b64(&r.probs),
            top_k: u32s_to_b64(&r.top_k),
            weights: f32s_to_b64(&r.weights),
        }
    }

    /// The cache entry, with every array's length checked against `rows`, `experts` and `k`.
    pub fn to_routing(&self) -> Result<Routing> {
        let bad =
            |what: &str| Error::invalid("server reply", format!("layer {}: {what} has the wrong length", self.layer));
        let re = self.rows.checked_mul(self.experts).ok_or_else(|| bad("rows × experts"))?;
        let rk = self.rows.checked_mul(self.k).ok_or_else(|| bad("rows × k"))?;
        let r = Routing {
            step: self.step,
            layer: self.layer,
            offset: self.offset,
            rows: self.rows,
            experts: self.experts,
            k: self.k,
            logits: b64_to_f32s(&self.logits)?,
            probs: b64_to_f32s(&self.probs)?,
            top_k: b64_to_u32s(&self.top_k)?,
            weights: b64_to_f32s(&self.weights)?,
        };
        if r.logits.len() != re || r.probs.len() != re {
            return Err(bad("logits or probs"));
        }
        if r.top_k.len() != rk || r.weights.len() != rk {
            return Err(bad("top_k or weights"));
        }
        Ok(r)
    }
}

/// A trace or a generation: what the client needs to assemble the same [`crate::trace::Trace`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReply {
    /// The whole text (prompt plus generated continuation).
    pub text: String,
    /// Its tokens.
    pub tokens: Vec<Token>,
    /// Number of prompt tokens.
    pub prompt_len: usize,
    /// The routing cache's entries, layer by layer, each layer's in forward-call order.
    pub routing: Vec<WireRouting>,
}

/// A teacher-forced run ([`RequestBody::Teacher`]): what [`crate::lab::Lens::effect`] compares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherReply {
    /// The continuation's log-probability.
    pub logprob: f64,
    /// The next-token log-probabilities after the prompt, `[vocab]` f32, base64.
    pub next: String,
    /// The routing cache's entries, layer by layer.
    pub routing: Vec<WireRouting>,
}

/// One scan batch's routing: per layer, the padded length, k and the `[rows * k]` top-k ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopKReply {
    /// One entry per layer (absent when a layer did not report).
    pub layers: Vec<Option<WireTopK>>,
}

/// One layer's top-k of a scan batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireTopK {
    /// Rows per sequence (the padded length).
    pub seq_len: usize,
    /// Experts per token.
    pub k: usize,
    /// `[batch * seq_len * k]` u32, base64.
    pub top_k: String,
}

// ------------------------------------------------------------------------------------------------
// Frames
// ------------------------------------------------------------------------------------------------

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection before a new frame began.
    Closed,
    /// The connection failed (or closed inside a frame).
    Io(io::Error),
    /// The length prefix is over the limit; the connection cannot be resynchronised.
    TooLarge(usize),
    /// The frame is not the JSON expected.
    Json(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "the connection was closed"),
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge(n) => write!(f, "a frame of {n} bytes is over the limit"),
            FrameError::Json(e) => write!(f, "not a valid message: {e}"),
        }
    }
}

/// Writes one message as a frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("message over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame's bytes (at most `max`).
pub fn read_frame_bytes(r: &mut impl Read, max: usize) -> std::result::Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(FrameError::Io)?;
    Ok(body)
}

/// Reads one frame and parses it.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read, max: usize) -> std::result::Result<T, FrameError> {
    let body = read_frame_bytes(r, max)?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Json(e.to_string()))
}

// ------------------------------------------------------------------------------------------------
// base64 (RFC 4648, with padding) of little-endian arrays
// ------------------------------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(s: &str) -> Result<Vec<u8>> {
    let bad = || Error::invalid("server reply", "an array is not valid base64");
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return Err(bad());
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (qi, q) in s.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return Err(bad());
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c).ok_or_else(bad)?;
        }
        n <<= 6 * pad as u32;
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Ok(out)
}

/// base64 of the little-endian bytes of `v`.
pub fn f32s_to_b64(v: &[f32]) -> String {
    b64_encode(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// base64 of the little-endian bytes of `v`.
pub fn u32s_to_b64(v: &[u32]) -> String {
    b64_encode(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// [`f32s_to_b64`] back.
pub fn b64_to_f32s(s: &str) -> Result<Vec<f32>> {
    Ok(words(&b64_decode(s)?)?.into_iter().map(f32::from_bits).collect())
}

/// [`u32s_to_b64`] back.
pub fn b64_to_u32s(s: &str) -> Result<Vec<u32>> {
    words(&b64_decode(s)?)
}

fn words(bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::invalid("server reply", "an array's bytes are not whole 4-byte values"));
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors_and_round_trips() {
        // RFC 4648 section 10
        for (plain, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(b64_encode(plain.as_bytes()), enc);
            assert_eq!(b64_decode(enc).ok().as_deref(), Some(plain.as_bytes()));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*"] {
            assert!(b64_decode(bad).is_err(), "{bad}");
        }
        let v = [0.0f32, -0.0, 1.5, f32::NAN, f32::NEG_INFINITY, f32::MIN_POSITIVE / 2.0, 0.1];
        let back = b64_to_f32s(&f32s_to_b64(&v)).unwrap_or_default();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn frames_refuse_what_is_over_the_limit() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request { v: 1, id: 7, body: RequestBody::Stats }).unwrap_or(());
        let r: std::result::Result<Request, _> = read_frame(&mut buf.as_slice(), 1 << 10);
        assert!(matches!(r, Ok(Request { id: 7, body: RequestBody::Stats, .. })));
        assert!(matches!(read_frame_bytes(&mut buf.as_slice(), 4), Err(FrameError::TooLarge(_))));
        assert!(matches!(read_frame_bytes(&mut &[][..], 4), Err(FrameError::Closed)));
        assert!(matches!(read_frame_bytes(&mut &[0u8, 0][..], 4), Err(FrameError::Io(_))));
    }
}
