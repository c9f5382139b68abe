//! Per-sentence routing kept by a scan, and its compact binary file (`routes.bin`).
//!
//! The bootstrap of [`super::compare`] resamples sentences and subsamples tokens, so a scan keeps,
//! for every counted token, its language and each layer's top-k experts (best first; the first is
//! the top-1 choice). That is `layers × k` small integers per token: about 250 bytes per token
//! for OLMoE, 1–2 MB for the shipped corpus.
//!
//! File layout (little-endian): the 8-byte magic `MOELRTS1`, then `layers`, `k`, `experts` as u32;
//! then records, one per sentence, appended in the order sentences were scanned:
//! `index` u32 (position in the whole corpus), id (u16 length + UTF-8), languages used (u8 count,
//! each u8 length + UTF-8), token count u32, one u8 per token (index into those languages), then
//! `layers × tokens × k` expert ids as u16, layer-major. A scan appends records and records the
//! file's valid length in its state file, so a torn record after a crash is cut off on resume.

use std::path::Path;

use crate::error::{Error, Result};

/// The magic bytes that start a routes file.
pub const MAGIC: &[u8; 8] = b"MOELRTS1";
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
    pub layers: usize,
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

/// Reads a whole routes file: `(layers, k, experts)` and the records.
pub fn read_file(path: &Path) -> Result<((usize, usize, usize), Vec<SentenceRoutes>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, path)
}

/// Decodes a routes file's bytes (header and records); `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<((usize, usize, usize), Vec<SentenceRoutes>)> {
    let bad = |msg: String| {
        Error::invalid("routes file", format!("{}: {msg}; the scan output is damaged: scan again", path.display()))
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(bad("not a moe-lens routes file (wrong header)".into()));
    }
    let mut r = Reader { bytes, pos: 8 };
    let layers = r.u32().ok_or_else(|| bad("short header".into()))? as usize;
    let k = r.u32().ok_or_else(|| bad("short header".into()))? as usize;
    let experts = r.u32().ok_or_else(|| bad("short header".into()))? as usize;
    let mut out = Vec::new();
    while r.pos < bytes.len() {
        let at = r.pos;
        let rec = r.record(layers, k).ok_or_else(|| bad(format!("record at byte {at} is cut off or malformed")))?;
        if rec.experts.iter().any(|&e| e as usize >= experts) {
            return Err(bad(format!("record at byte {at} names an expert ≥ {experts}")));
        }
        out.push(rec);
    }
    Ok(((layers, k, experts), out))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn record(&mut self, layers: usize, k: usize) -> Option<SentenceRoutes> {
        let index = self.u32()?;
        let id_len = self.u16()? as usize;
        let id = self.string(id_len)?;
        let nl = self.u8()? as usize;
        let mut langs = Vec::with_capacity(nl);
        for _ in 0..nl {
            let n = self.u8()? as usize;
            langs.push(self.string(n)?);
        }
        let tokens = self.u32()? as usize;
        let token_lang = self.take(tokens)?.to_vec();
        if token_lang.iter().any(|&i| i as usize >= nl) {
            return None;
        }
        let n = layers.checked_mul(tokens)?.checked_mul(k)?;
        let raw = self.take(n.checked_mul(2)?)?;
        let experts = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Some(SentenceRoutes { index, id, langs, token_lang, layers, k, experts })
    }
}
