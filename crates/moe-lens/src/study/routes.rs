//! Per-sentence routing kept by a scan, and its compact binary file (`routes.bin`).
//!
//! The bootstrap of [`super::compare`] resamples sentences and subsamples tokens, and the routing
//! analyses ([`super::analyses`]) need each token's id and place in its sentence, so a scan keeps,
//! for every counted token, its language, token id, position and each layer's top-k experts (best
//! first; the first is the top-1 choice). That is `layers × k` small integers per token: about 260
//! bytes per token for OLMoE, 1–2 MB for the shipped corpus.
//!
//! File layout (little-endian): the 8-byte magic `MOELRTS2`, then `layers`, `k`, `experts` as u32;
//! then records, one per sentence, appended in the order sentences were scanned:
//! `index` u32 (position in the whole corpus), id (u16 length + UTF-8), languages used (u8 count,
//! each u8 length + UTF-8), token count u32, one u8 per token (index into those languages), the
//! domain (u8 length + UTF-8, empty for none), one u32 token id per token, one u32 position per
//! token (its index among all the sentence's tokens, counted or not), then `layers × tokens × k`
//! expert ids as u16, layer-major. A scan appends records and records the file's valid length in
//! its state file, so a torn record after a crash is cut off on resume.
//!
//! Files of the first layout (`MOELRTS1`, moe-lens before the routing analyses) are still read:
//! their records have no domain, token ids or positions (empty), which the analyses say.
//! [`RoutesReader`] reads a file one record at a time, so memory stays flat however long it is.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The magic bytes that start a routes file.
pub const MAGIC: &[u8; 8] = b"MOELRTS2";
/// The magic of the first layout (no domain, token ids or positions), still read.
pub const MAGIC_V1: &[u8; 8] = b"MOELRTS1";
/// Length of the file header (magic and three u32).
pub const HEADER_LEN: usize = 8 + 12;

/// One scanned sentence: its counted tokens' languages and top-k experts per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentenceRoutes {
    /// Position of the sentence in the whole corpus (before sharding).
    pub index: u32,
    /// The sentence's id.
    pub id: String,
    /// The languages its counted tokens are counted under (one, unless counting by script).
    pub langs: Vec<String>,
    /// For each counted token, the index of its language in `langs`.
    pub token_lang: Vec<u8>,
    /// The sentence's domain (an optional corpus column), if any.
    pub domain: Option<String>,
    /// For each counted token, its id in the vocabulary (empty in files of the first layout).
    pub token_ids: Vec<u32>,
    /// For each counted token, its position among all the sentence's tokens (empty in files of
    /// the first layout); two counted tokens are neighbours when their positions differ by one.
    pub positions: Vec<u32>,
    /// Router layers recorded per token.
    pub layers: usize,
    /// Experts recorded per token and layer, the top-k.
    pub k: usize,
    /// `[layer][token][k]`, best first.
    pub experts: Vec<u16>,
}

impl SentenceRoutes {
    /// Counted tokens (tokens left out by `skip_common` are not here).
    pub fn tokens(&self) -> usize {
        self.token_lang.len()
    }

    /// The top-k experts of counted token `token` at `layer`, best first (empty when out of range).
    pub fn top_k(&self, layer: usize, token: usize) -> &[u16] {
        let n = self.tokens();
        if layer >= self.layers || token >= n {
            return &[];
        }
        let start = (layer * n + token) * self.k;
        self.experts.get(start..start + self.k).unwrap_or(&[])
    }

    /// The language counted token `token` is counted under.
    pub fn lang_of(&self, token: usize) -> &str {
        self.token_lang.get(token).and_then(|&i| self.langs.get(i as usize)).map(String::as_str).unwrap_or("")
    }

    /// This sentence's top-k counts `[layer][expert]` (of a model with `experts` experts).
    pub fn counts(&self, experts: usize) -> ndarray::Array2<u32> {
        let mut c = ndarray::Array2::zeros((self.layers, experts));
        for layer in 0..self.layers {
            for t in 0..self.tokens() {
                for &e in self.top_k(layer, t) {
                    if let Some(x) = c.get_mut([layer, e as usize]) {
                        *x += 1;
                    }
                }
            }
        }
        c
    }

    /// Appends the record to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) -> Result<()> {
        let too_long = |what: &str| Error::invalid("routes", format!("sentence {}: {what} too long to store", self.id));
        buf.extend_from_slice(&self.index.to_le_bytes());
        let id = self.id.as_bytes();
        buf.extend_from_slice(&u16::try_from(id.len()).map_err(|_| too_long("id"))?.to_le_bytes());
        buf.extend_from_slice(id);
        buf.push(u8::try_from(self.langs.len()).map_err(|_| too_long("language list"))?);
        for l in &self.langs {
            buf.push(u8::try_from(l.len()).map_err(|_| too_long("language tag"))?);
            buf.extend_from_slice(l.as_bytes());
        }
        buf.extend_from_slice(&u32::try_from(self.tokens()).map_err(|_| too_long("token list"))?.to_le_bytes());
        buf.extend_from_slice(&self.token_lang);
        let domain = self.domain.as_deref().unwrap_or("");
        buf.push(u8::try_from(domain.len()).map_err(|_| too_long("domain"))?);
        buf.extend_from_slice(domain.as_bytes());
        let n = self.tokens();
        if self.token_ids.len() != n || self.positions.len() != n {
            return Err(Error::invalid(
                "routes",
                format!(
                    "sentence {}: token ids or positions missing (routes of an older file cannot be rewritten)",
                    self.id
                ),
            ));
        }
        for x in self.token_ids.iter().chain(&self.positions) {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        for e in &self.experts {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        Ok(())
    }
}

/// The header of a routes file.
pub fn header(layers: usize, k: usize, experts: usize) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    for x in [layers, k, experts] {
        v.extend_from_slice(&(x as u32).to_le_bytes());
    }
    v
}

/// Whether the file at `path` starts with the current layout's magic (`Ok(false)` for the first
/// layout or another file).
pub fn is_current_layout(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut m = [0u8; 8];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(&m == MAGIC),
        Err(_) => Ok(false),
    }
}

/// Reads a whole routes file: `(layers, k, experts)` and the records.
pub fn read_file(path: &Path) -> Result<((usize, usize, usize), Vec<SentenceRoutes>)> {
    let r = RoutesReader::open(path)?;
    let shape = r.shape();
    let records = r.collect::<Result<Vec<_>>>()?;
    Ok((shape, records))
}

/// Decodes a routes file's bytes (header and records); `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<((usize, usize, usize), Vec<SentenceRoutes>)> {
    let r = RoutesReader::new(bytes, path)?;
    let shape = r.shape();
    let records = r.collect::<Result<Vec<_>>>()?;
    Ok((shape, records))
}

/// Reads a routes file one sentence at a time (an iterator of records), checking each.
pub struct RoutesReader<R: Read> {
    src: R,
    path: PathBuf,
    pos: u64,
    v1: bool,
    layers: usize,
    k: usize,
    experts: usize,
    failed: bool,
}

impl RoutesReader<BufReader<File>> {
    /// Opens a routes file and reads its header.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        RoutesReader::new(BufReader::with_capacity(1 << 20, f), path)
    }
}

impl<R: Read> RoutesReader<R> {
    /// Reads the header from `src`; `path` names the file in errors.
    pub fn new(mut src: R, path: &Path) -> Result<Self> {
        let mut head = [0u8; HEADER_LEN];
        let ok = read_full(&mut src, &mut head).map_err(|e| Error::io(path, e))?;
        let bad = |msg: &str| {
            Error::invalid("routes file", format!("{}: {msg}; the scan output is damaged: scan again", path.display()))
        };
        if ok < HEADER_LEN {
            return Err(bad("not a moe-lens routes file (wrong header)"));
        }
        let v1 = &head[..8] == MAGIC_V1;
        if !v1 && &head[..8] != MAGIC {
            return Err(bad("not a moe-lens routes file (wrong header)"));
        }
        let u = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]) as usize;
        Ok(RoutesReader {
            src,
            path: path.to_path_buf(),
            pos: HEADER_LEN as u64,
            v1,
            layers: u(8),
            k: u(12),
            experts: u(16),
            failed: false,
        })
    }

    /// `(layers, k, experts)` from the header.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.layers, self.k, self.experts)
    }

    /// Bytes read so far (the header and the records returned): after a record, where it ends.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn bad(&self, msg: String) -> Error {
        Error::invalid("routes file", format!("{}: {msg}; the scan output is damaged: scan again", self.path.display()))
    }

    fn take(&mut self, n: usize) -> std::result::Result<Vec<u8>, String> {
        let mut v = Vec::new();
        let got = (&mut self.src).take(n as u64).read_to_end(&mut v).map_err(|e| e.to_string())?;
        self.pos += got as u64;
        if got < n {
            return Err("cut off".into());
        }
        Ok(v)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, n: usize) -> std::result::Result<String, String> {
        String::from_utf8(self.take(n)?).map_err(|_| "not UTF-8".to_string())
    }
    fn u32s(&mut self, n: usize) -> std::result::Result<Vec<u32>, String> {
        let raw = self.take(n.checked_mul(4).ok_or("too long")?)?;
        Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn record(&mut self, index: u32) -> std::result::Result<SentenceRoutes, String> {
        let id_len = self.u16()? as usize;
        let id = self.string(id_len)?;
        let nl = self.u8()? as usize;
        let mut langs = Vec::with_capacity(nl);
        for _ in 0..nl {
            let n = self.u8()? as usize;
            langs.push(self.string(n)?);
        }
        let tokens = self.u32()? as usize;
        let token_lang = self.take(tokens)?;
        if token_lang.iter().any(|&i| i as usize >= nl) {
            return Err("a token's language is not in the record's list".into());
        }
        let (domain, token_ids, positions) = if self.v1 {
            (None, Vec::new(), Vec::new())
        } else {
            let n = self.u8()? as usize;
            let d = self.string(n)?;
            let ids = self.u32s(tokens)?;
            let pos = self.u32s(tokens)?;
            ((!d.is_empty()).then_some(d), ids, pos)
        };
        let n = self.layers.checked_mul(tokens).and_then(|x| x.checked_mul(self.k)).ok_or("too long")?;
        let raw = self.take(n.checked_mul(2).ok_or("too long")?)?;
        let experts: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        if experts.iter().any(|&e| e as usize >= self.experts) {
            return Err(format!("it names an expert ≥ {}", self.experts));
        }
        Ok(SentenceRoutes {
            index,
            id,
            langs,
            token_lang,
            domain,
            token_ids,
            positions,
            layers: self.layers,
            k: self.k,
            experts,
        })
    }
}

/// Rewrites a routes file with its records sorted by corpus position (a scan appends them in scan
/// order, longest sentence first), atomically, holding only each record's position and place in
/// memory (16 bytes per sentence), not the routes. Does nothing to a file already in order.
pub fn sort_file(path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut reader = RoutesReader::open(path)?;
    let mut at = reader.position();
    let mut places: Vec<(u32, u64, u64)> = Vec::new(); // (index, start, length)
    while let Some(r) = reader.next() {
        let r = r?;
        let end = reader.position();
        places.push((r.index, at, end - at));
        at = end;
    }
    if places.windows(2).all(|w| w[0].0 <= w[1].0) {
        return Ok(());
    }
    places.sort_by_key(|p| p.0);
    let mut src = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = vec![0u8; HEADER_LEN];
    src.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::new();
    crate::fsutil::write_atomic_with(path, |w| {
        use std::io::Write;
        w.write_all(&head).map_err(|e| Error::io(path, e))?;
        for &(_, start, len) in &places {
            buf.resize(len as usize, 0);
            src.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
            src.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
            w.write_all(&buf).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    })
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> Iterator for RoutesReader<R> {
    type Item = Result<SentenceRoutes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let at = self.pos;
        let mut first = [0u8; 4];
        let got = match read_full(&mut self.src, &mut first) {
            Ok(n) => n,
            Err(e) => {
                self.failed = true;
                return Some(Err(Error::io(&self.path, e)));
            }
        };
        self.pos += got as u64;
        if got == 0 {
            return None;
        }
        let res = if got < 4 { Err("cut off".to_string()) } else { self.record(u32::from_le_bytes(first)) };
        Some(res.map_err(|m| {
            self.failed = true;
            self.bad(format!("record at byte {at} is cut off or malformed ({m})"))
        }))
    }
}
