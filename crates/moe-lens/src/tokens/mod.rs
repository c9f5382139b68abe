//! Tokens of a traced text: OLMoE's tokenizer, labels a student can read, and each token's script.
//!
//! OLMoE uses byte-level BPE: a token stands for bytes, not characters. A Hangul syllable or a kanji
//! is three UTF-8 bytes and is often split over two or three tokens. Decoding such a fragment on its
//! own gives U+FFFD, and printing the token's vocabulary string gives mojibake like `ìķ`; neither
//! ever shows here. Every label follows one rule:
//!
//! 1. Concatenate the bytes of all tokens of the sequence into one stream and split the stream into
//!    characters.
//! 2. A character wholly inside a token shows as itself; spaces, line breaks, tabs and other
//!    invisible characters are made visible (`␣`, `↵`, `␍`, `⇥`, `\u{1b}`).
//! 3. A character split across tokens shows whole in every token that holds part of it, with `…` on
//!    the side(s) whose bytes other tokens hold: `안…`, `…안…`, `…안`. A token can hold the tail of
//!    one character and the head of the next: `…안녕…`.
//! 4. Bytes that form no character (invalid UTF-8, or a character still incomplete at the end of a
//!    generated sequence) show as hex: `<EC 95>`.
//!
//! Special tokens (`<|endoftext|>`, `<|padding|>`) show their content as is; a token without bytes
//! shows `∅`. A token's [`Script`] comes from the characters it touches, split ones included.

mod labels;
mod scripts;

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::{DecoderWrapper, PostProcessorWrapper};

use crate::error::{Error, Result};
use labels::{byte_level_alphabet, byte_level_bytes, Continuation, Piece, Stream, BYTE_LEVEL_SPACE};
pub use scripts::{script_of, Script};

// ------------------------------------------------------------------------------------------------
// Token
// ------------------------------------------------------------------------------------------------

/// One token of a traced text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The token's id in the vocabulary.
    pub id: u32,
    /// What the token shows a student (see the module docs for the rule); never mojibake.
    pub label: String,
    /// Start of the token in the text, in characters (not bytes).
    pub start: usize,
    /// End (exclusive) of the token in the text, in characters. Tokens holding parts of one
    /// character share that character's offsets; like Python's `tokenizers`, leading and trailing
    /// spaces are trimmed off, so a token of spaces alone can have `start == end`.
    pub end: usize,
    /// The script of the characters the token touches.
    pub script: Script,
}

// ------------------------------------------------------------------------------------------------
// Tokenizer
// ------------------------------------------------------------------------------------------------

/// Where the hint of a missing tokenizer file points.
const MISSING_TOKENIZER_HINT: &str = "every OLMoE checkpoint has a tokenizer.json next to its \
     config.json; pass that path (for this repository's tests, run tests/setup-data.sh)";

/// An added token (one the tokenizer file lists under `added_tokens`).
#[derive(Debug, Clone)]
struct Added {
    content: String,
    special: bool,
}

/// OLMoE's tokenizer (any Hugging Face `tokenizer.json`, in fact) with labels that never show
/// mojibake.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Added tokens by id.
    added: HashMap<u32, Added>,
    /// Byte-level alphabet character → the byte it stands for; `None` if the decoder is not
    /// byte-level (then a token's bytes are its string's UTF-8).
    byte_level: Option<HashMap<char, u8>>,
    /// `Some(add_prefix_space)` when a ByteLevel post-processor trims spaces off offsets.
    trim_offsets: Option<bool>,
    vocab_size: usize,
    eos: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size)
            .field("byte_level", &self.byte_level.is_some())
            .field("eos_id", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// A missing file gives [`Error::MissingFile`], an unreadable one [`Error::Io`], one that is not
    /// a tokenizer [`Error::Tokenizer`] naming the path.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingFile {
                path: path.to_path_buf(),
                what: "tokenizer",
                hint: MISSING_TOKENIZER_HINT.to_string(),
            },
            _ => Error::io(path, e),
        })?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&json).map_err(|e| {
            Error::Tokenizer(format!(
                "{} is not a tokenizer file ({e}): use the tokenizer.json that came with the model (for OLMoE, \
                     https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/tokenizer.json)",
                path.display()
            ))
        })?;
        // A traced text is encoded whole, whatever the file says about truncation or padding.
        inner.with_truncation(None).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        Ok(Self::from_inner(inner, path.to_path_buf()))
    }

    /// A tokenizer rebuilt from other metadata than a `tokenizer.json` (a llama.cpp GGUF file's, see
    /// [`crate::gguf::tokenizer_from_metadata`]); `eos`, when given, is its end-of-text id.
    pub(crate) fn from_rebuilt(inner: tokenizers::Tokenizer, path: PathBuf, eos: Option<u32>) -> Self {
        let mut t = Self::from_inner(inner, path);
        if eos.is_some() {
            t.eos = eos;
        }
        t
    }

    /// The tokenizer as one JSON document, as `tokenizer.json` holds it, with its end-of-text id
    /// (what `moe-lens serve` sends a client, which rebuilds it with [`Tokenizer::from_wire`]).
    pub(crate) fn to_wire(&self) -> Result<(String, Option<u32>)> {
        let json = self.inner.to_string(false).map_err(|e| Error::Tokenizer(format!("cannot serialise: {e}")))?;
        Ok((json, self.eos))
    }

    /// The tokenizer a server sent ([`Tokenizer::to_wire`]); `label` stands for its path in messages.
    pub(crate) fn from_wire(json: &str, eos: Option<u32>, label: PathBuf) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| {
            Error::Tokenizer(format!("the server's tokenizer ({}) cannot be read: {e}", label.display()))
        })?;
        inner.with_truncation(None).map_err(|e| Error::Tokenizer(format!("{}: {e}", label.display())))?;
        inner.with_padding(None);
        let mut t = Self::from_inner(inner, label);
        t.eos = eos;
        Ok(t)
    }

    /// Gathers what the labels and offsets need from a loaded tokenizer.
    fn from_inner(inner: tokenizers::Tokenizer, path: PathBuf) -> Self {
        let added = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, token)| (id, Added { content: token.content, special: token.special }))
            .collect();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))).then(byte_level_alphabet);
        let trim_offsets = match inner.get_post_processor() {
            Some(PostProcessorWrapper::ByteLevel(bl)) if bl.trim_offsets => Some(bl.add_prefix_space),
            _ => None,
        };
        let vocab_size = inner.get_vocab_size(true);
        let eos = inner.token_to_id("<|endoftext|>");
        Self { inner, path, added, byte_level, trim_offsets, vocab_size, eos }
    }

    /// Tokenizes `text`: ids and character offsets exactly as Python's `tokenizers` gives them
    /// (`Tokenizer.encode(text)`), with labels and scripts.
    ///
    /// Empty or whitespace-only text gives [`Error::EmptyText`].
    pub fn encode(&self, text: &str) -> Result<Vec<Token>> {
        if text.is_empty() {
            return Err(Error::EmptyText(""));
        }
        if text.trim().is_empty() {
            return Err(Error::EmptyText(" (it is only whitespace)"));
        }
        let encoding = self
            .inner
            .encode_char_offsets(text, true)
            .map_err(|e| Error::Tokenizer(format!("cannot encode the text: {e}")))?;
        let ids = encoding.get_ids();
        if ids.is_empty() {
            return Err(Error::EmptyText(" (it gives no tokens)"));
        }
        let described = self.describe(ids)?;
        let tokens = ids
            .iter()
            .zip(encoding.get_offsets())
            .zip(described)
            .map(|((&id, &(start, end)), (label, script))| Token { id, label, start, end, script })
            .collect();
        Ok(tokens)
    }

    /// Appends generated ids to a traced text.
    ///
    /// `text` and `tokens` are what [`encode`](Self::encode) (or an earlier `extend`) returned.
    /// Returns the full text (`text` followed by the decoded continuation) and all tokens: the
    /// earlier ones keep their offsets, the new ones get character offsets into the full text
    /// (widened to the whole characters a token touches and trimmed of spaces, like `encode`).
    /// Labels and scripts are recomputed over the whole sequence, so a character split between the
    /// last earlier token and a new one is labelled consistently in both.
    ///
    /// Bytes that do not form a character yet at the very end (the head of a character that the
    /// next generated token may complete) stay out of the text until a later `extend` completes
    /// them; the tokens holding them sit at the end of the text with `start == end` meanwhile.
    /// Bytes that can never form a character appear in the text as U+FFFD (as in
    /// [`decode`](Self::decode)), though never in a label.
    pub fn extend(&self, text: &str, tokens: &[Token], new_ids: &[u32]) -> Result<(String, Vec<Token>)> {
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).chain(new_ids.iter().copied()).collect();
        let pieces = self.pieces(&ids)?;
        let stream = Stream::new(&pieces);
        let prompt_end = tokens.len().checked_sub(1).and_then(|i| stream.spans.get(i)).map_or(0, |s| s.end);
        let continuation = stream.place_continuation(stream.prefix(prompt_end), text.chars().count());
        let mut full = text.to_string();
        full.extend(continuation.chars.iter());

        let mut out = Vec::with_capacity(ids.len());
        for (i, ((&id, span), (label, script))) in
            ids.iter().zip(&stream.spans).zip(stream.describe(&pieces)).enumerate()
        {
            let old = tokens.get(i);
            let (start, end) = match old {
                Some(old) if span.end <= continuation.shown => (old.start, old.end),
                _ => self.new_offsets(id, i, old, &stream, &continuation),
            };
            out.push(Token { id, label, start, end, script });
        }
        Ok((full, out))
    }

    /// Offsets of token `index` (`old` if it was among the earlier tokens), which holds bytes that
    /// the earlier text did not show: the characters of the continuation it touches, trimmed.
    fn new_offsets(
        &self,
        id: u32,
        index: usize,
        old: Option<&Token>,
        stream: &Stream,
        continuation: &Continuation,
    ) -> (usize, usize) {
        let span = stream.spans.get(index).cloned().unwrap_or_default();
        let units = stream.units_of(&span);
        let placed = || units.clone().filter_map(|u| continuation.of_unit.get(u).copied().flatten());
        match (placed().min(), placed().max(), old) {
            (Some(first), Some(last), old) => {
                let (start, end) = self.trim(id, index, (first, last + 1));
                match old {
                    // An earlier token that now completes: its start was already set (and trimmed).
                    Some(old) if span.start < continuation.shown => (old.start, end),
                    _ => (start, end),
                }
            }
            // Only bytes still waiting to form a character: nothing new to point at.
            (_, _, Some(old)) => (old.start, old.end),
            _ => {
                let at = continuation.char_at(stream, span.start);
                (at, at)
            }
        }
    }

    /// Trims spaces off a token's offsets as the ByteLevel post-processor does (`trim_offsets`).
    fn trim(&self, id: u32, index: usize, (mut start, mut end): (usize, usize)) -> (usize, usize) {
        let (Some(add_prefix_space), Some(token)) = (self.trim_offsets, self.inner.id_to_token(id)) else {
            return (start, end);
        };
        let is_space = |c: &char| *c == BYTE_LEVEL_SPACE || c.is_whitespace();
        let mut leading = token.chars().take_while(is_space).count();
        let trailing = token.chars().rev().take_while(is_space).count();
        if leading > 0 {
            if (index == 0 || start == 0) && add_prefix_space && leading == 1 {
                leading = 0;
            }
            start = (start + leading).min(end);
        }
        if trailing > 0 && end >= trailing {
            end = (end - trailing).max(start);
        }
        (start, end)
    }

    /// Labels for an id sequence on its own (split characters judged within this sequence).
    pub fn labels(&self, ids: &[u32]) -> Result<Vec<String>> {
        Ok(self.describe(ids)?.into_iter().map(|(label, _)| label).collect())
    }

    /// Labels and scripts for an id sequence on its own (split characters judged within this
    /// sequence): [`labels`](Self::labels) with each token's [`Script`].
    pub fn labels_and_scripts(&self, ids: &[u32]) -> Result<Vec<(String, Script)>> {
        self.describe(ids)
    }

    /// Decodes ids to text as Python's `tokenizer.decode(ids)` does (special tokens kept; bytes that
    /// form no character become U+FFFD). Unknown ids give [`Error::InvalidArgument`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(format!("cannot decode the ids: {e}")))
    }

    /// The raw bytes a token stands for: its vocabulary string with the byte-level alphabet mapped
    /// back (`Ġ` → 0x20), or for an added token its content's bytes. Unknown ids give
    /// [`Error::InvalidArgument`].
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        if let Some(added) = self.added.get(&id) {
            return Ok(added.content.as_bytes().to_vec());
        }
        let token = self.check_id(id)?;
        Ok(match &self.byte_level {
            Some(alphabet) => byte_level_bytes(&token, alphabet),
            None => token.into_bytes(),
        })
    }

    /// Number of ids, added tokens included (50,280 for OLMoE).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token given as its vocabulary string (`"Ġfox"`) or added content
    /// (`"<|endoftext|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `<|endoftext|>`, if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The vocabulary string of `id`, or [`Error::InvalidArgument`] if there is no such id.
    fn check_id(&self, id: u32) -> Result<String> {
        self.inner.id_to_token(id).ok_or_else(|| {
            Error::invalid("token id", format!("{id} is not in the vocabulary, which has {} ids", self.vocab_size))
        })
    }

    /// Each id's bytes, and content if it is a special token.
    fn pieces(&self, ids: &[u32]) -> Result<Vec<Piece>> {
        ids.iter()
            .map(|&id| {
                let special = self.added.get(&id).filter(|a| a.special).map(|a| a.content.clone());
                Ok(Piece { bytes: self.token_bytes(id)?, special })
            })
            .collect()
    }

    /// Label and script of every id, by the one label rule.
    fn describe(&self, ids: &[u32]) -> Result<Vec<(String, Script)>> {
        let pieces = self.pieces(ids)?;
        Ok(Stream::new(&pieces).describe(&pieces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_serializes_script_as_its_name() {
        let token = Token { id: 7, label: "안…".into(), start: 1, end: 2, script: Script::Hangul };
        let json = serde_json::to_value(&token).ok();
        assert_eq!(json, Some(serde_json::json!({"id": 7, "label": "안…", "start": 1, "end": 2, "script": "Hangul"})));
    }
}
