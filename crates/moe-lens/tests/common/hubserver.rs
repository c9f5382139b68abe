//! A tiny stand-in for the Hugging Face Hub on 127.0.0.1 (std only), enough for `hf-hub`'s metadata
//! request and moe-lens's downloads: `GET /{owner}/{name}/resolve/{revision}/{file}` with or without
//! `Range`. It can cut a transfer short or ignore ranges, and logs every request so a test can check
//! which bytes were asked for and sent.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// How the server answers a download (not a metadata request) of one file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// As the Hub: 206 with the requested range, 200 without one.
    Normal,
    /// Announces the full length but closes the connection after this many body bytes.
    CutAfter(usize),
    /// Ignores `Range` and always sends the whole file with 200.
    IgnoreRange,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub file: String,
    /// The `Range` header's first byte, if any.
    pub range_start: Option<u64>,
    /// Whether it was hf-hub's metadata probe (`bytes=0-0`).
    pub probe: bool,
    /// Body bytes written.
    pub sent: usize,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    modes: HashMap<String, Mode>,
    log: Vec<Hit>,
    /// HTTP status for every request of a repository that is not `repo` (404 by default).
    unknown_status: u16,
}

pub struct HubServer {
    pub endpoint: String,
    pub repo: String,
    pub commit: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    /// Serves `files` (name → bytes) as repository `repo` at revision `main`.
    pub fn start(repo: &str, files: Vec<(String, Vec<u8>)>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            files: files.into_iter().collect(),
            unknown_status: 404,
            ..Default::default()
        }));
        let commit = "0123456789abcdef0123456789abcdef01234567".to_string();
        let (st, repo_s, commit_s) = (state.clone(), repo.to_string(), commit.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (st, repo_s, commit_s) = (st.clone(), repo_s.clone(), commit_s.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, &repo_s, &commit_s);
                });
            }
        });
        HubServer { endpoint, repo: repo.to_string(), commit, state }
    }

    pub fn set_mode(&self, file: &str, mode: Mode) {
        self.state.lock().unwrap().modes.insert(file.to_string(), mode);
    }
    pub fn set_unknown_status(&self, status: u16) {
        self.state.lock().unwrap().unknown_status = status;
    }
    pub fn log(&self) -> Vec<Hit> {
        self.state.lock().unwrap().log.clone()
    }
    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
    /// Body bytes sent for `file` by downloads (metadata probes excluded).
    pub fn sent(&self, file: &str) -> usize {
        self.log().iter().filter(|h| h.file == file && !h.probe).map(|h| h.sent).sum()
    }
}

/// A stand-in ETag: 64 hex digits derived from the bytes (FNV-1a, repeated), like an LFS sha256.
pub fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

fn serve(mut conn: TcpStream, st: &Arc<Mutex<State>>, repo: &str, commit: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                let v = v.trim().trim_start_matches("bytes=");
                let (a, b) = v.split_once('-').unwrap_or((v, ""));
                range = Some((a.trim().parse().unwrap_or(0), b.trim().parse().ok()));
            }
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let prefix = format!("/{repo}/resolve/main/");
    let (status, body_all, file) = {
        let s = st.lock().unwrap();
        match path.strip_prefix(&prefix) {
            Some(file) => match s.files.get(file) {
                Some(b) => (200, Some(b.clone()), file.to_string()),
                None => (404, None, file.to_string()),
            },
            None => (s.unknown_status, None, path.clone()),
        }
    };
    let Some(all) = body_all else {
        st.lock().unwrap().log.push(Hit { file, range_start: range.map(|r| r.0), probe: false, sent: 0 });
        write!(conn, "HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    };
    let size = all.len();
    let probe = range == Some((0, Some(0)));
    let mode = if probe { Mode::Normal } else { st.lock().unwrap().modes.get(&file).copied().unwrap_or(Mode::Normal) };
    let tag = etag(&all);
    let (code, start, end) = match (range, mode) {
        (Some((a, b)), Mode::Normal | Mode::CutAfter(_)) => {
            (206, a as usize, b.map_or(size, |b| (b as usize + 1).min(size)))
        }
        _ => (200, 0, size),
    };
    let start = start.min(size);
    let mut head = format!(
        "HTTP/1.1 {code} OK\r\nContent-Length: {}\r\nETag: \"{tag}\"\r\nX-Linked-Etag: \"{tag}\"\r\nX-Repo-Commit: {commit}\r\nConnection: close\r\n",
        end - start
    );
    if code == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{size}\r\n", end.saturating_sub(1)));
    }
    head.push_str("\r\n");
    let body = &all[start..end];
    let n = match mode {
        Mode::CutAfter(n) if !probe => n.min(body.len()),
        _ => body.len(),
    };
    // logged before anything is sent, so the client cannot be done before the log has the request
    st.lock().unwrap().log.push(Hit { file, range_start: range.map(|r| r.0), probe, sent: n });
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body[..n])?;
    conn.flush()?;
    // drain nothing more; closing the socket ends the (possibly cut) transfer
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = reader.read(&mut [0u8; 1]);
    Ok(())
}
