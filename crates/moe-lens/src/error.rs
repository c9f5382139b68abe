//! The library's error type. Every input a user can get wrong maps to one of these kinds, and each
//! message says what was wrong and what to do about it. A notebook cell that gets one of these keeps
//! every variable of earlier cells (a panic would lose the cell, an abort the whole kernel).

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by kind. Match on the variant; print it for the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text to trace is empty or only whitespace.
    #[error("the text is empty{0}: give at least one visible character")]
    EmptyText(&'static str),

    /// The text has more tokens than the model's context.
    #[error(
        "the text is {tokens} tokens long but the model takes at most {max}: shorten it, or split it \
         into sentences and trace them one by one (a corpus scan does that for you)"
    )]
    TextTooLong {
        /// Tokens in the text, as the tokenizer counted them.
        tokens: usize,
        /// The most tokens the model takes (its `max_position_embeddings`).
        max: usize,
    },

    /// A layer index or hook name that the model does not have.
    #[error("unknown layer {requested:?}: this model has {layers} router layers, 0..={last}, named \
             model.layers.{{i}}.mlp.gate", last = layers.saturating_sub(1))]
    UnknownLayer {
        /// The layer index or hook name that was asked for, as given.
        requested: String,
        /// Router layers the model has (valid indices are `0..layers`).
        layers: usize,
    },

    /// `config.json` cannot be read as an OLMoE config, or its values contradict each other.
    #[error("config {}: {msg}", path.display())]
    Config {
        /// The `config.json` that was read.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// Something this library deliberately does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A file the model needs is not there.
    #[error("missing {what}: {} does not exist; {hint}", path.display())]
    MissingFile {
        /// Where the file was looked for.
        path: PathBuf,
        /// What the file is (`"config.json"`, `"model directory"`, `"GGUF file"`, ...).
        what: &'static str,
        /// How to get it.
        hint: String,
    },

    /// A weights file is truncated, corrupt or lacks a tensor.
    #[error("weights {}: {msg}", path.display())]
    Weights {
        /// The weights file (safetensors or GGUF).
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A tensor has a shape other than the config implies.
    #[error(
        "tensor {name} has shape {found:?} but the config implies {expected:?}: the weights and \
             config.json do not belong together"
    )]
    TensorShape {
        /// The tensor's name in the weights file.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// The tokenizer cannot be loaded or cannot encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The model is not in the local cache and the Hub must not (or cannot) be asked.
    #[error("{model} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE=1 forbids \
             downloading it. {hint}", cache.display())]
    Offline {
        /// The Hub model id that was asked for.
        model: String,
        /// The Hugging Face cache directory that was searched.
        cache: PathBuf,
        /// How to get the model here anyway.
        hint: String,
    },

    /// A download from the Hub failed.
    #[error("could not fetch {file} of {model} from the Hugging Face Hub: {msg}")]
    Hub {
        /// The Hub model id.
        model: String,
        /// The file of the model that failed to download.
        file: String,
        /// The Hub client's message.
        msg: String,
    },

    /// A file could not be read or written. The message adds what to do for the usual causes
    /// (missing, no permission, not a directory, disk full).
    #[error("{}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// The file or directory that was being read or written.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),

    /// An argument outside what is allowed (names the argument and the allowed values).
    #[error("invalid {what}: {msg}")]
    InvalidArgument {
        /// The argument's name.
        what: &'static str,
        /// What is wrong with it and which values are allowed.
        msg: String,
    },

    /// A spy asked for routing that the forward pass did not deliver, or refused an event.
    #[error("router spy: {0}")]
    Spy(String),

    /// A sentence file has a line that cannot be read.
    #[error("{}:{line}: {msg}", path.display())]
    Corpus {
        /// The sentence file.
        path: PathBuf,
        /// The line number, counted from 1.
        line: usize,
        /// What is wrong with the line.
        msg: String,
    },

    /// The device ran out of memory (a CUDA or Metal allocation failed), with what was being done,
    /// the numbers where they are known, and what will work. A model that was already loaded stays
    /// loaded; a smaller request usually works.
    #[error("out of memory on the {device} while {during}{}: {advice} [{cause}]", oom_numbers(*needed, *free, *total))]
    OutOfMemory {
        /// The kind of device that ran out ("GPU", "CPU", ...).
        device: String,
        /// What was being done: "loading the model", "running the model".
        during: String,
        /// Bytes the step needs, where estimated.
        needed: Option<u64>,
        /// Free bytes of the device when the error was made, where the driver says.
        free: Option<u64>,
        /// Total bytes of the device, where the driver says.
        total: Option<u64>,
        /// The one or two things that will work here.
        advice: String,
        /// The driver's or library's own words, one line, no backtrace.
        cause: String,
    },

    /// The shared model server (`moe-lens serve`, `MOE_LENS_SERVER`) could not be reached or
    /// refused a request; the message says which server and what to do.
    #[error("moe-lens server {}: {msg}", socket.display())]
    Server {
        /// The server's Unix socket.
        socket: std::path::PathBuf,
        /// What went wrong and what to do.
        msg: String,
    },

    /// An error inside the tensor library.
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
}

/// A GPU allocation failure as candle reports it (cudarc's `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's
/// `CUBLAS_STATUS_ALLOC_FAILED`, Metal's failed buffer allocation) becomes [`Error::OutOfMemory`];
/// everything else stays [`Error::Candle`].
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        let e = without_backtrace(e);
        match oom_device(&e) {
            Some(device) => Error::OutOfMemory {
                device: device.to_string(),
                during: "running the model".into(),
                needed: None,
                free: None,
                total: None,
                advice: "trace a shorter text, scan with a smaller batch (--batch), or free the GPU of other work; \
                         the loaded model is kept"
                    .into(),
                cause: one_line(&e.to_string()),
            },
            None => Error::Candle(e),
        }
    }
}

/// `e` without the backtraces candle attaches when `RUST_BACKTRACE` is set: a message a student
/// reads never carries a stack of `<unknown>` frames.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    use candle_core::Error as C;
    match e {
        C::WithBacktrace { inner, .. } => without_backtrace(*inner),
        C::Context { inner, context } => C::Context { inner: Box::new(without_backtrace(*inner)), context },
        C::WithPath { inner, path } => C::WithPath { inner: Box::new(without_backtrace(*inner)), path },
        e => e,
    }
}

/// The first line of a library's message, trimmed (the rest is context a user does not need).
fn one_line(s: &str) -> String {
    let first = s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut out: String = first.chars().take(200).collect();
    if out.len() < first.len() {
        out.push('…');
    }
    out
}

/// Formats a byte count as GiB with one decimal (`13.9 GiB`).
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `": it needs about X, Y of Z are free"`, with whatever is known.
fn oom_numbers(needed: Option<u64>, free: Option<u64>, total: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = needed {
        parts.push(format!("it needs about {}", gib(n)));
    }
    match (free, total) {
        (Some(f), Some(t)) => parts.push(format!("{} of {} are free", gib(f), gib(t))),
        (Some(f), None) => parts.push(format!("{} are free", gib(f))),
        _ => {}
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// `Some("GPU")` (or `"Metal GPU"`) when `e` is an out-of-memory error of a device.
fn oom_device(e: &candle_core::Error) -> Option<&'static str> {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let cuda = text.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
        || (lower.contains("cuda") && lower.contains("out of memory"));
    let metal = lower.contains("metal") && (lower.contains("out of memory") || lower.contains("failed to allocate"));
    if cuda {
        Some("GPU")
    } else if metal {
        Some("Metal GPU")
    } else {
        None
    }
}

/// What to do about the usual I/O failures, appended to [`Error::Io`]'s message.
fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => ": check the path (relative paths start from the working directory)",
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            ": no permission to use it: check its permissions, or choose a location you can write to"
        }
        K::NotADirectory => ": a part of the path is a file, not a directory: choose another path",
        K::IsADirectory => ": it is a directory, where a file was expected: give a file",
        K::StorageFull | K::QuotaExceeded => ": the disk is full: free space or choose another location",
        K::AlreadyExists => ": something is already there: remove it or choose another path",
        _ => "",
    }
}

impl Error {
    /// Whether this is an out-of-memory error of a device.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn invalid(what: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { what, msg: msg.into() }
    }
}
