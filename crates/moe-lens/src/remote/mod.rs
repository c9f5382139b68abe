//! The client side of the shared model server (`moe-lens serve`): one model on one GPU answering a
//! whole class over a Unix socket. A [`crate::lab::Lens`] loaded with `load("server:PATH")`, or with
//! `MOE_LENS_SERVER=PATH` set, tokenizes, checks and draws in the student's process and sends only
//! the forward passes to the server; its traces, generations and scans are the same values a local
//! load returns ([`protocol`] carries every number bit for bit). The server itself is
//! [`crate::server`].

pub(crate) mod client;
pub mod protocol;

/// The environment variable that points the notebooks' loads (`load`, `load_with_quant`,
/// `Lens::from_env`) at a shared model server's socket. When it is set (and not empty) it wins over
/// `MOE_LENS_MODEL`, `MOE_LENS_QUANT` and `MOE_LENS_DEVICE`: the model is the server's.
pub const SERVER_VAR: &str = "MOE_LENS_SERVER";

/// The prefix of a model name that means a server's socket: `load("server:/srv/moe-lens/olmoe.sock")`.
pub const SERVER_PREFIX: &str = "server:";

/// The socket `MOE_LENS_SERVER` names, when it is set and not empty.
pub fn server_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os(SERVER_VAR).filter(|v| !v.is_empty()).map(std::path::PathBuf::from)
}
