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

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokenizers::{DecoderWrapper, PostProcessorWrapper};

use crate::{Error, Result};

// ------------------------------------------------------------------------------------------------
// Script
// ------------------------------------------------------------------------------------------------

/// The Unicode script of a character ([`script_of`]) or of a token ([`Token::script`]).
///
/// `Common` is for characters that several scripts share (digits, punctuation, spaces, emoji, the
/// long-vowel mark `ー`, `。`), `Inherited` for combining marks. For a token, `Mixed` means letters
/// of several scripts. `Unknown` means bytes that form no character, or a script this enum does not
/// name (Tamil, Ethiopic, …).
///
/// Displays, parses (case-insensitively) and serializes as its name, e.g. `"Hangul"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Script {
    Latin,
    Greek,
    Cyrillic,
    Armenian,
    Hebrew,
    Arabic,
    Devanagari,
    Bengali,
    Thai,
    Georgian,
    Hangul,
    Hiragana,
    Katakana,
    Han,
    Common,
    Inherited,
    Mixed,
    Unknown,
}

impl Script {
    /// Every script, in declaration order.
    pub const ALL: [Script; 18] = [
        Script::Latin,
        Script::Greek,
        Script::Cyrillic,
        Script::Armenian,
        Script::Hebrew,
        Script::Arabic,
        Script::Devanagari,
        Script::Bengali,
        Script::Thai,
        Script::Georgian,
        Script::Hangul,
        Script::Hiragana,
        Script::Katakana,
        Script::Han,
        Script::Common,
        Script::Inherited,
        Script::Mixed,
        Script::Unknown,
    ];

    /// The script's name as Unicode's Scripts.txt spells it (`"Hangul"`).
    pub fn name(&self) -> &'static str {
        match self {
            Script::Latin => "Latin",
            Script::Greek => "Greek",
            Script::Cyrillic => "Cyrillic",
            Script::Armenian => "Armenian",
            Script::Hebrew => "Hebrew",
            Script::Arabic => "Arabic",
            Script::Devanagari => "Devanagari",
            Script::Bengali => "Bengali",
            Script::Thai => "Thai",
            Script::Georgian => "Georgian",
            Script::Hangul => "Hangul",
            Script::Hiragana => "Hiragana",
            Script::Katakana => "Katakana",
            Script::Han => "Han",
            Script::Common => "Common",
            Script::Inherited => "Inherited",
            Script::Mixed => "Mixed",
            Script::Unknown => "Unknown",
        }
    }

    /// Common and Inherited characters belong to no particular script.
    fn is_neutral(self) -> bool {
        matches!(self, Script::Common | Script::Inherited)
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Script {
    type Err = Error;

    /// Parses a script name, ignoring ASCII case and surrounding spaces (`"hangul"` → Hangul).
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        Script::ALL.into_iter().find(|script| script.name().eq_ignore_ascii_case(wanted)).ok_or_else(|| {
            let names: Vec<&str> = Script::ALL.iter().map(Script::name).collect();
            Error::invalid("script", format!("{s:?} is not a script; valid names: {}", names.join(", ")))
        })
    }
}

impl Serialize for Script {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The Unicode script of one character, from a range table taken from Unicode's Scripts.txt.
///
/// Characters of scripts that [`Script`] does not name give [`Script::Unknown`]; so do unassigned
/// code points outside the ranges of the named scripts.
pub fn script_of(c: char) -> Script {
    let cp = u32::from(c);
    let i = SCRIPT_RANGES.partition_point(|&(_, last, _)| last < cp);
    match SCRIPT_RANGES.get(i) {
        Some(&(first, _, script)) if first <= cp => script,
        _ => Script::Unknown,
    }
}

/// The script of a token: the scripts of the characters it touches, Common and Inherited ignored.
/// None left gives Common (Unknown if the token touches bytes that form no character), one gives
/// that script, several give Mixed.
fn script_of_units(units: &[Unit]) -> Script {
    let mut found: Option<Script> = None;
    let mut invalid = false;
    for unit in units {
        let Some(c) = unit.ch else {
            invalid = true;
            continue;
        };
        let script = script_of(c);
        if script.is_neutral() {
            continue;
        }
        match found {
            None => found = Some(script),
            Some(seen) if seen != script => return Script::Mixed,
            Some(_) => {}
        }
    }
    found.unwrap_or(if invalid { Script::Unknown } else { Script::Common })
}

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

    /// Rebuilds the Hugging Face tokenizer from a llama.cpp GGUF file's `tokenizer.ggml.*` metadata,
    /// for a `.gguf` that has no `tokenizer.json` beside it.
    ///
    /// llama.cpp's converter stores OLMoE's byte-level BPE as `tokenizer.ggml.model = "gpt2"` with
    /// the pre-tokenizer `"olmo"` (GPT-2's split pattern), its tokens (byte-level strings, added
    /// tokens as plain text), token types and merges. This puts back what the original
    /// `tokenizer.json` says around them: NFC normalisation, byte-level pre-tokenizer, post-processor
    /// and decoder without a prefix space, control tokens as special added tokens and user-defined
    /// ones as normal added tokens; the `[PADn]` fillers llama.cpp writes for unused ids are left
    /// out. Other tokenizer kinds are refused with [`Error::Tokenizer`], which says to put the
    /// model's `tokenizer.json` next to the file.
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, candle_core::quantized::gguf_file::Value>,
        path: &Path,
    ) -> Result<Self> {
        use candle_core::quantized::gguf_file::Value;
        let fix = format!(
            "put the model's tokenizer.json next to {} (for OLMoE, \
             https://huggingface.co/allenai/OLMoE-1B-7B-0924/blob/main/tokenizer.json)",
            path.display()
        );
        let bad = |what: String| Error::Tokenizer(format!("{}: {what}; {fix}", path.display()));
        let string = |k: &str| metadata.get(k).and_then(|v| v.to_string().ok().cloned());
        let array = |k: &str| -> Result<&Vec<Value>> {
            match metadata.get(k) {
                Some(Value::Array(a)) => Ok(a),
                Some(_) => Err(bad(format!("{k} is not a list"))),
                None => Err(bad(format!("the file has no {k}"))),
            }
        };
        match string("tokenizer.ggml.model").as_deref() {
            Some("gpt2") => {}
            Some(other) => {
                return Err(bad(format!("its tokenizer is of kind {other:?}, not OLMoE's byte-level BPE (\"gpt2\")")))
            }
            None => return Err(bad("the file holds no tokenizer (no tokenizer.ggml.model)".into())),
        }
        // the pre-tokenizers whose split pattern is GPT-2's, which OLMoE's tokenizer.json uses
        match string("tokenizer.ggml.pre").as_deref() {
            Some("olmo" | "gpt-2") => {}
            Some(other) => return Err(bad(format!("its pre-tokenizer is {other:?}, not OLMoE's \"olmo\""))),
            None => return Err(bad("the file does not name its pre-tokenizer (tokenizer.ggml.pre)".into())),
        }
        let tokens = array("tokenizer.ggml.tokens")?;
        let types = array("tokenizer.ggml.token_type")?;
        let merges = array("tokenizer.ggml.merges")?;
        if types.len() != tokens.len() {
            return Err(bad(format!("{} tokens but {} token types", tokens.len(), types.len())));
        }
        // llama.cpp's token types
        const NORMAL: i32 = 1;
        const CONTROL: i32 = 3;
        const USER_DEFINED: i32 = 4;
        const UNUSED: i32 = 5;
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (id, (tok, ty)) in tokens.iter().zip(types).enumerate() {
            let tok = tok.to_string().map_err(|_| bad(format!("token {id} is not a string")))?;
            let ty = ty.to_i32().map_err(|_| bad(format!("the type of token {id} is not an integer")))?;
            match ty {
                UNUSED => continue,
                NORMAL => {}
                CONTROL | USER_DEFINED => {
                    let special = ty == CONTROL;
                    added.push(serde_json::json!({
                        "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                        "normalized": !special, "special": special,
                    }));
                }
                other => return Err(bad(format!("token {id} has type {other}, which a byte-level BPE does not use"))),
            }
            vocab.insert(tok.clone(), id.into());
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| m.to_string().cloned().map_err(|_| bad(format!("merge {i} is not a string"))))
            .collect::<Result<Vec<String>>>()?;
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": byte_level,
            "post_processor": byte_level,
            "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner = tokenizers::Tokenizer::from_str(&json.to_string())
            .map_err(|e| bad(format!("its tokenizer could not be rebuilt ({e})")))?;
        let mut t = Self::from_inner(inner, path.to_path_buf());
        if let Some(eos) = metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok()) {
            t.eos = Some(eos);
        }
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

// ------------------------------------------------------------------------------------------------
// Byte-level alphabet
// ------------------------------------------------------------------------------------------------

/// The byte-level alphabet's stand-in for the space byte (`Ġ`).
const BYTE_LEVEL_SPACE: char = '\u{120}';

/// GPT-2's byte-level alphabet, reversed: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes (controls, space, 0x7F–0xA0, 0xAD) for U+0100, U+0101, … in byte order.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let mut shifted = 0u32;
    (0..=255u8)
        .filter_map(|b| {
            if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                Some((char::from(b), b))
            } else {
                let c = char::from_u32(0x100 + shifted);
                shifted += 1;
                c.map(|c| (c, b))
            }
        })
        .collect()
}

/// Maps a byte-level token string back to bytes; a string with characters outside the alphabet is
/// taken as its own UTF-8, as the tokenizers crate's ByteLevel decoder does.
fn byte_level_bytes(token: &str, alphabet: &HashMap<char, u8>) -> Vec<u8> {
    token
        .chars()
        .map(|c| alphabet.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

// ------------------------------------------------------------------------------------------------
// The one label rule
// ------------------------------------------------------------------------------------------------

/// What one token puts into the byte stream.
#[derive(Debug, Clone)]
struct Piece {
    bytes: Vec<u8>,
    /// The content of a special token, which is its label.
    special: Option<String>,
}

/// One character of the byte stream (`ch: Some`), or bytes that form none (`ch: None`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    start: usize,
    end: usize,
    ch: Option<char>,
}

/// The bytes of a token sequence, each token's byte span, and the stream split into units.
#[derive(Debug)]
struct Stream {
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
    units: Vec<Unit>,
}

/// Where the units of a continuation land in the full text.
#[derive(Debug)]
struct Continuation {
    /// Bytes of the stream that the text before the continuation shows.
    shown: usize,
    /// Character position in the full text of each unit of the stream that the continuation adds.
    of_unit: Vec<Option<usize>>,
    /// The characters the continuation adds.
    chars: Vec<char>,
    /// Characters of the text before the continuation.
    base: usize,
}

impl Continuation {
    /// Character position in the full text of the byte `at` of the stream (after the text).
    fn char_at(&self, stream: &Stream, at: usize) -> usize {
        let before =
            stream.units.iter().zip(&self.of_unit).filter(|(unit, pos)| pos.is_some() && unit.end <= at).count();
        self.base + before
    }
}

impl Stream {
    fn new(pieces: &[Piece]) -> Self {
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let start = bytes.len();
            bytes.extend_from_slice(&piece.bytes);
            spans.push(start..bytes.len());
        }
        let units = split_units(&bytes);
        Self { bytes, spans, units }
    }

    /// Indices of the units that share bytes with `span`.
    fn units_of(&self, span: &Range<usize>) -> Range<usize> {
        let first = self.units.partition_point(|u| u.end <= span.start);
        let last = self.units.partition_point(|u| u.start < span.end);
        first..last.max(first)
    }

    /// Label and script of every token.
    fn describe(&self, pieces: &[Piece]) -> Vec<(String, Script)> {
        pieces
            .iter()
            .zip(&self.spans)
            .map(|(piece, span)| match &piece.special {
                Some(content) => (content.clone(), Script::Common),
                None => {
                    let units = self.units.get(self.units_of(span)).unwrap_or_default();
                    (self.label(span, units), script_of_units(units))
                }
            })
            .collect()
    }

    /// The label of the token at `span`, which touches `units`.
    fn label(&self, span: &Range<usize>, units: &[Unit]) -> String {
        if units.is_empty() {
            return "∅".to_string();
        }
        let mut label = String::new();
        for unit in units {
            match unit.ch {
                Some(c) => {
                    if unit.start < span.start {
                        label.push('…');
                    }
                    push_visible(&mut label, c);
                    if unit.end > span.end {
                        label.push('…');
                    }
                }
                None => {
                    let inside = unit.start.max(span.start)..unit.end.min(span.end);
                    push_hex(&mut label, self.bytes.get(inside).unwrap_or_default());
                }
            }
        }
        label
    }

    /// How many bytes of the first `len` the text shows: all but an incomplete character at the
    /// very end of those bytes.
    fn prefix(&self, len: usize) -> usize {
        len - incomplete_tail(self.bytes.get(..len).unwrap_or_default())
    }

    /// Places the units after the first `shown` bytes as characters after `base` characters of
    /// text: a character as itself, bytes that form none as U+FFFD, and an incomplete character
    /// at the very end not at all (yet).
    fn place_continuation(&self, shown: usize, base: usize) -> Continuation {
        let pending = (self.bytes.len() - incomplete_tail(&self.bytes)).max(shown);
        let mut chars = Vec::new();
        let of_unit = self
            .units
            .iter()
            .map(|unit| {
                if unit.end <= shown || unit.start >= pending {
                    return None;
                }
                chars.push(unit.ch.unwrap_or(char::REPLACEMENT_CHARACTER));
                Some(base + chars.len() - 1)
            })
            .collect();
        Continuation { shown, of_unit, chars, base }
    }
}

/// Splits bytes into characters and runs of bytes that form none (as `String::from_utf8_lossy`
/// would replace them, one run per U+FFFD).
fn split_units(bytes: &[u8]) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            let end = at + ch.len_utf8();
            units.push(Unit { start: at, end, ch: Some(ch) });
            at = end;
        }
        let invalid = chunk.invalid().len();
        if invalid > 0 {
            units.push(Unit { start: at, end: at + invalid, ch: None });
            at += invalid;
        }
    }
    units
}

/// Length of the incomplete character that `bytes` end with (the head of a character whose
/// remaining bytes may still come), or 0.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let Some(last) = bytes.utf8_chunks().last() else {
        return 0;
    };
    let invalid = last.invalid();
    match std::str::from_utf8(invalid) {
        Err(e) if e.error_len().is_none() => invalid.len(),
        _ => 0,
    }
}

/// Pushes a character that is shown whole or in part, with invisible ones made visible.
fn push_visible(label: &mut String, c: char) {
    match c {
        ' ' => label.push('␣'),
        '\n' => label.push('↵'),
        '\r' => label.push('␍'),
        '\t' => label.push('⇥'),
        c if is_invisible(c) => label.extend(c.escape_unicode()),
        c => label.push(c),
    }
}

/// Controls, whitespace other than the plain space, and zero-width format characters.
fn is_invisible(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Pushes bytes that form no character as hex in angle brackets: `<EC 95>`.
fn push_hex(label: &mut String, bytes: &[u8]) {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    label.push('<');
    label.push_str(&hex.join(" "));
    label.push('>');
}

// ------------------------------------------------------------------------------------------------
// Script table
// ------------------------------------------------------------------------------------------------

/// `(first, last, script)` code point ranges, sorted and disjoint, from Unicode's Scripts.txt
/// (Unicode 14.0, as Perl's Unicode::UCD reports it) for the scripts [`Script`] names; adjacent
/// ranges of one script are merged across unassigned code points, and the Han range of planes 2–3
/// is extended through CJK Extension J. Code points in no range have a script [`Script`] does not
/// name, or none.
#[rustfmt::skip]
static SCRIPT_RANGES: &[(u32, u32, Script)] = {
    use Script::*;
    &[
        (0x0000, 0x0040, Common), (0x0041, 0x005A, Latin), (0x005B, 0x0060, Common),
        (0x0061, 0x007A, Latin), (0x007B, 0x00A9, Common), (0x00AA, 0x00AA, Latin),
        (0x00AB, 0x00B9, Common), (0x00BA, 0x00BA, Latin), (0x00BB, 0x00BF, Common),
        (0x00C0, 0x00D6, Latin), (0x00D7, 0x00D7, Common), (0x00D8, 0x00F6, Latin),
        (0x00F7, 0x00F7, Common), (0x00F8, 0x02B8, Latin), (0x02B9, 0x02DF, Common),
        (0x02E0, 0x02E4, Latin), (0x02E5, 0x02E9, Common), (0x02EC, 0x02FF, Common),
        (0x0300, 0x036F, Inherited), (0x0370, 0x0373, Greek), (0x0374, 0x0374, Common),
        (0x0375, 0x037D, Greek), (0x037E, 0x037E, Common), (0x037F, 0x0384, Greek),
        (0x0385, 0x0385, Common), (0x0386, 0x0386, Greek), (0x0387, 0x0387, Common),
        (0x0388, 0x03E1, Greek), (0x03F0, 0x03FF, Greek), (0x0400, 0x0484, Cyrillic),
        (0x0485, 0x0486, Inherited), (0x0487, 0x052F, Cyrillic), (0x0531, 0x058F, Armenian),
        (0x0591, 0x05F4, Hebrew), (0x0600, 0x0604, Arabic), (0x0605, 0x0605, Common),
        (0x0606, 0x060B, Arabic), (0x060C, 0x060C, Common), (0x060D, 0x061A, Arabic),
        (0x061B, 0x061B, Common), (0x061C, 0x061E, Arabic), (0x061F, 0x061F, Common),
        (0x0620, 0x063F, Arabic), (0x0640, 0x0640, Common), (0x0641, 0x064A, Arabic),
        (0x064B, 0x0655, Inherited), (0x0656, 0x066F, Arabic), (0x0670, 0x0670, Inherited),
        (0x0671, 0x06DC, Arabic), (0x06DD, 0x06DD, Common), (0x06DE, 0x06FF, Arabic),
        (0x0750, 0x077F, Arabic), (0x0870, 0x08E1, Arabic), (0x08E2, 0x08E2, Common),
        (0x08E3, 0x08FF, Arabic), (0x0900, 0x0950, Devanagari), (0x0951, 0x0954, Inherited),
        (0x0955, 0x0963, Devanagari), (0x0964, 0x0965, Common), (0x0966, 0x097F, Devanagari),
        (0x0980, 0x09FE, Bengali), (0x0E01, 0x0E3A, Thai), (0x0E3F, 0x0E3F, Common),
        (0x0E40, 0x0E5B, Thai), (0x0FD5, 0x0FD8, Common), (0x10A0, 0x10FA, Georgian),
        (0x10FB, 0x10FB, Common), (0x10FC, 0x10FF, Georgian), (0x1100, 0x11FF, Hangul),
        (0x16EB, 0x16ED, Common), (0x1735, 0x1736, Common), (0x1802, 0x1803, Common),
        (0x1805, 0x1805, Common), (0x1AB0, 0x1ACE, Inherited), (0x1C80, 0x1C88, Cyrillic),
        (0x1C90, 0x1CBF, Georgian), (0x1CD0, 0x1CD2, Inherited), (0x1CD3, 0x1CD3, Common),
        (0x1CD4, 0x1CE0, Inherited), (0x1CE1, 0x1CE1, Common), (0x1CE2, 0x1CE8, Inherited),
        (0x1CE9, 0x1CEC, Common), (0x1CED, 0x1CED, Inherited), (0x1CEE, 0x1CF3, Common),
        (0x1CF4, 0x1CF4, Inherited), (0x1CF5, 0x1CF7, Common), (0x1CF8, 0x1CF9, Inherited),
        (0x1CFA, 0x1CFA, Common), (0x1D00, 0x1D25, Latin), (0x1D26, 0x1D2A, Greek),
        (0x1D2B, 0x1D2B, Cyrillic), (0x1D2C, 0x1D5C, Latin), (0x1D5D, 0x1D61, Greek),
        (0x1D62, 0x1D65, Latin), (0x1D66, 0x1D6A, Greek), (0x1D6B, 0x1D77, Latin),
        (0x1D78, 0x1D78, Cyrillic), (0x1D79, 0x1DBE, Latin), (0x1DBF, 0x1DBF, Greek),
        (0x1DC0, 0x1DFF, Inherited), (0x1E00, 0x1EFF, Latin), (0x1F00, 0x1FFE, Greek),
        (0x2000, 0x200B, Common), (0x200C, 0x200D, Inherited), (0x200E, 0x2070, Common),
        (0x2071, 0x2071, Latin), (0x2074, 0x207E, Common), (0x207F, 0x207F, Latin),
        (0x2080, 0x208E, Common), (0x2090, 0x209C, Latin), (0x20A0, 0x20C0, Common),
        (0x20D0, 0x20F0, Inherited), (0x2100, 0x2125, Common), (0x2126, 0x2126, Greek),
        (0x2127, 0x2129, Common), (0x212A, 0x212B, Latin), (0x212C, 0x2131, Common),
        (0x2132, 0x2132, Latin), (0x2133, 0x214D, Common), (0x214E, 0x214E, Latin),
        (0x214F, 0x215F, Common), (0x2160, 0x2188, Latin), (0x2189, 0x27FF, Common),
        (0x2900, 0x2BFF, Common), (0x2C60, 0x2C7F, Latin), (0x2D00, 0x2D2D, Georgian),
        (0x2DE0, 0x2DFF, Cyrillic), (0x2E00, 0x2E5D, Common), (0x2E80, 0x2FD5, Han),
        (0x2FF0, 0x3004, Common), (0x3005, 0x3005, Han), (0x3006, 0x3006, Common),
        (0x3007, 0x3007, Han), (0x3008, 0x3020, Common), (0x3021, 0x3029, Han),
        (0x302A, 0x302D, Inherited), (0x302E, 0x302F, Hangul), (0x3030, 0x3037, Common),
        (0x3038, 0x303B, Han), (0x303C, 0x303F, Common), (0x3041, 0x3096, Hiragana),
        (0x3099, 0x309A, Inherited), (0x309B, 0x309C, Common), (0x309D, 0x309F, Hiragana),
        (0x30A0, 0x30A0, Common), (0x30A1, 0x30FA, Katakana), (0x30FB, 0x30FC, Common),
        (0x30FD, 0x30FF, Katakana), (0x3131, 0x318E, Hangul), (0x3190, 0x319F, Common),
        (0x31C0, 0x31E3, Common), (0x31F0, 0x31FF, Katakana), (0x3200, 0x321E, Hangul),
        (0x3220, 0x325F, Common), (0x3260, 0x327E, Hangul), (0x327F, 0x32CF, Common),
        (0x32D0, 0x32FE, Katakana), (0x32FF, 0x32FF, Common), (0x3300, 0x3357, Katakana),
        (0x3358, 0x33FF, Common), (0x3400, 0x4DBF, Han), (0x4DC0, 0x4DFF, Common),
        (0x4E00, 0x9FFF, Han), (0xA640, 0xA69F, Cyrillic), (0xA700, 0xA721, Common),
        (0xA722, 0xA787, Latin), (0xA788, 0xA78A, Common), (0xA78B, 0xA7FF, Latin),
        (0xA830, 0xA839, Common), (0xA8E0, 0xA8FF, Devanagari), (0xA92E, 0xA92E, Common),
        (0xA960, 0xA97C, Hangul), (0xA9CF, 0xA9CF, Common), (0xAB30, 0xAB5A, Latin),
        (0xAB5B, 0xAB5B, Common), (0xAB5C, 0xAB64, Latin), (0xAB65, 0xAB65, Greek),
        (0xAB66, 0xAB69, Latin), (0xAB6A, 0xAB6B, Common), (0xAC00, 0xD7FB, Hangul),
        (0xF900, 0xFAD9, Han), (0xFB00, 0xFB06, Latin), (0xFB13, 0xFB17, Armenian),
        (0xFB1D, 0xFB4F, Hebrew), (0xFB50, 0xFD3D, Arabic), (0xFD3E, 0xFD3F, Common),
        (0xFD40, 0xFDFF, Arabic), (0xFE00, 0xFE0F, Inherited), (0xFE10, 0xFE19, Common),
        (0xFE20, 0xFE2D, Inherited), (0xFE2E, 0xFE2F, Cyrillic), (0xFE30, 0xFE6B, Common),
        (0xFE70, 0xFEFC, Arabic), (0xFEFF, 0xFF20, Common), (0xFF21, 0xFF3A, Latin),
        (0xFF3B, 0xFF40, Common), (0xFF41, 0xFF5A, Latin), (0xFF5B, 0xFF65, Common),
        (0xFF66, 0xFF6F, Katakana), (0xFF70, 0xFF70, Common), (0xFF71, 0xFF9D, Katakana),
        (0xFF9E, 0xFF9F, Common), (0xFFA0, 0xFFDC, Hangul), (0xFFE0, 0xFFFD, Common),
        (0x10100, 0x1013F, Common), (0x10140, 0x1018E, Greek), (0x10190, 0x1019C, Common),
        (0x101A0, 0x101A0, Greek), (0x101D0, 0x101FC, Common), (0x101FD, 0x101FD, Inherited),
        (0x102E0, 0x102E0, Inherited), (0x102E1, 0x102FB, Common), (0x10780, 0x107BA, Latin),
        (0x10E60, 0x10E7E, Arabic), (0x1133B, 0x1133B, Inherited), (0x16FE2, 0x16FE3, Han),
        (0x16FF0, 0x16FF1, Han), (0x1AFF0, 0x1B000, Katakana), (0x1B001, 0x1B11F, Hiragana),
        (0x1B120, 0x1B122, Katakana), (0x1B150, 0x1B152, Hiragana), (0x1B164, 0x1B167, Katakana),
        (0x1BCA0, 0x1BCA3, Common), (0x1CF00, 0x1CF46, Inherited), (0x1CF50, 0x1D166, Common),
        (0x1D167, 0x1D169, Inherited), (0x1D16A, 0x1D17A, Common), (0x1D17B, 0x1D182, Inherited),
        (0x1D183, 0x1D184, Common), (0x1D185, 0x1D18B, Inherited), (0x1D18C, 0x1D1A9, Common),
        (0x1D1AA, 0x1D1AD, Inherited), (0x1D1AE, 0x1D1EA, Common), (0x1D200, 0x1D245, Greek),
        (0x1D2E0, 0x1D7FF, Common), (0x1DF00, 0x1DF1E, Latin), (0x1EC71, 0x1ED3D, Common),
        (0x1EE00, 0x1EEF1, Arabic), (0x1F000, 0x1F1FF, Common), (0x1F200, 0x1F200, Hiragana),
        (0x1F201, 0x1FBF9, Common), (0x20000, 0x3347F, Han), (0xE0001, 0xE007F, Common),
        (0xE0100, 0xE01EF, Inherited),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of plain (non-special) tokens with the given bytes.
    fn pieces(parts: &[&[u8]]) -> Vec<Piece> {
        parts.iter().map(|b| Piece { bytes: b.to_vec(), special: None }).collect()
    }

    fn labels(parts: &[&[u8]]) -> Vec<String> {
        let pieces = pieces(parts);
        Stream::new(&pieces).describe(&pieces).into_iter().map(|(l, _)| l).collect()
    }

    fn scripts(parts: &[&[u8]]) -> Vec<Script> {
        let pieces = pieces(parts);
        Stream::new(&pieces).describe(&pieces).into_iter().map(|(_, s)| s).collect()
    }

    // UTF-8 of the characters used below (from the Unicode code points, by hand):
    // 안 U+C548 = EC 95 88, 녕 U+B155 = EB 85 95, 국 U+AD6D = EA B5 AD, ー U+30FC = E3 83 BC,
    // タ U+30BF = E3 82 BF.

    #[test]
    fn whole_characters_show_as_themselves() {
        assert_eq!(labels(&[b"The", b" fox", "안".as_bytes()]), ["The", "␣fox", "안"]);
    }

    #[test]
    fn invisible_characters_are_made_visible() {
        assert_eq!(labels(&[b" ", b"\n", b"\r", b"\t", b"\x1b", b"  "]), ["␣", "↵", "␍", "⇥", "\\u{1b}", "␣␣"]);
        assert_eq!(labels(&["\u{3000}".as_bytes(), "\u{200B}".as_bytes()]), ["\\u{3000}", "\\u{200b}"]);
    }

    #[test]
    fn a_character_split_in_two_shows_whole_in_both() {
        assert_eq!(labels(&[&[0xEC, 0x95], &[0x88]]), ["안…", "…안"]);
        assert_eq!(labels(&[&[0x20, 0xEC, 0x95], &[0x88]]), ["␣안…", "…안"]);
    }

    #[test]
    fn a_character_split_in_three_has_a_middle_part() {
        assert_eq!(labels(&[&[0xEA], &[0xB5], &[0xAD]]), ["국…", "…국…", "…국"]);
    }

    #[test]
    fn a_token_can_hold_a_tail_and_a_head() {
        assert_eq!(labels(&[&[0xEC, 0x95], &[0x88, 0xEB, 0x85], &[0x95]]), ["안…", "…안녕…", "…녕"]);
    }

    #[test]
    fn bytes_that_form_no_character_show_as_hex() {
        // An incomplete character at the very end.
        assert_eq!(labels(&[&[0x20, 0xEC, 0x95]]), ["␣<EC 95>"]);
        assert_eq!(labels(&[&[0xEC], &[0x95]]), ["<EC>", "<95>"]);
        // Bytes that can never start a character, and a lead byte followed by ASCII.
        assert_eq!(labels(&[&[0xFF], b"A", &[0xEC, b'B']]), ["<FF>", "A", "<EC>B"]);
    }

    #[test]
    fn empty_and_special_tokens() {
        let pieces = vec![
            Piece { bytes: b"Hi".to_vec(), special: None },
            Piece { bytes: Vec::new(), special: None },
            Piece { bytes: b"<|endoftext|>".to_vec(), special: Some("<|endoftext|>".into()) },
        ];
        let described = Stream::new(&pieces).describe(&pieces);
        let labels: Vec<&str> = described.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["Hi", "∅", "<|endoftext|>"]);
        assert_eq!(described[2].1, Script::Common);
    }

    #[test]
    fn no_label_shows_mojibake_or_replacement_characters() {
        let all = labels(&[&[0xE3], &[0x83, 0xBC, 0xE3, 0x82], &[0xBF], &[0xC0, 0xAF], &[0xF0, 0x9F]]);
        assert_eq!(all, ["ー…", "…ータ…", "…タ", "<C0><AF>", "<F0 9F>"]);
        for label in &all {
            assert!(!label.contains('\u{FFFD}'), "{label}");
            assert!(!label.chars().any(|c| ('\u{80}'..='\u{17F}').contains(&c)), "{label}");
        }
    }

    #[test]
    fn token_scripts() {
        assert_eq!(scripts(&[&[0xEC, 0x95], &[0x88]]), [Script::Hangul, Script::Hangul]);
        assert_eq!(scripts(&[b" ", b"42", "。".as_bytes()]), [Script::Common; 3]);
        assert_eq!(scripts(&["ター".as_bytes(), "a안".as_bytes()]), [Script::Katakana, Script::Mixed]);
        assert_eq!(scripts(&["\u{301}".as_bytes(), b"e\xCC\x81"]), [Script::Common, Script::Latin]);
        assert_eq!(scripts(&[&[0xEC, 0x95], b"", &[0xFF, b' ']]), [Script::Unknown, Script::Common, Script::Unknown]);
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b""), 0);
        assert_eq!(incomplete_tail(b"ab"), 0);
        assert_eq!(incomplete_tail(&[b'a', 0xEC, 0x95]), 2);
        assert_eq!(incomplete_tail(&[b'a', 0xF0]), 1);
        assert_eq!(incomplete_tail(&[b'a', 0x95]), 0); // a stray continuation byte is just invalid
        assert_eq!(incomplete_tail(&[0xEC, 0x95, 0x88]), 0);
    }

    #[test]
    fn continuation_places_characters_after_the_text() {
        // Text "x" shown by the first token [x, EC]; then [95 88] completes 안, then [EB] is pending.
        let pieces = pieces(&[&[b'x', 0xEC], &[0x95, 0x88], &[0xEB]]);
        let stream = Stream::new(&pieces);
        let shown = stream.prefix(2);
        assert_eq!(shown, 1);
        let cont = stream.place_continuation(shown, 1);
        assert_eq!(cont.chars, ['안']);
        assert_eq!(cont.of_unit, [None, Some(1), None]);
        assert_eq!(cont.char_at(&stream, 5), 2);
    }

    #[test]
    fn byte_level_alphabet_matches_gpt2() {
        let alphabet = byte_level_alphabet();
        assert_eq!(alphabet.len(), 256);
        let mut bytes: Vec<u8> = alphabet.values().copied().collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
        // GPT-2 facts: Ġ is the space, Ċ the newline, ĉ the tab; " 안" is written "Ġìķ" + "Ī".
        let facts =
            [('Ġ', 0x20), ('Ċ', 0x0A), ('ĉ', 0x09), ('ì', 0xEC), ('ķ', 0x95), ('Ī', 0x88), ('A', b'A'), ('Ń', 0xAD)];
        for (c, b) in facts {
            assert_eq!(alphabet.get(&c), Some(&b), "{c}");
        }
        assert_eq!(byte_level_bytes("Ġìķ", &alphabet), [0x20, 0xEC, 0x95]);
        assert_eq!(byte_level_bytes("  ", &alphabet), b"  ");
    }

    #[test]
    fn script_examples() {
        let cases = [
            ('a', Script::Latin),
            ('Z', Script::Latin),
            ('é', Script::Latin),
            ('ï', Script::Latin),
            ('ß', Script::Latin),
            ('Ā', Script::Latin),
            ('ǅ', Script::Latin),
            ('Ａ', Script::Latin),
            ('ｚ', Script::Latin),
            ('안', Script::Hangul),
            ('ㄱ', Script::Hangul),
            ('ᄀ', Script::Hangul),
            ('こ', Script::Hiragana),
            ('ゝ', Script::Hiragana),
            ('コ', Script::Katakana),
            ('ｦ', Script::Katakana),
            ('ｱ', Script::Katakana),
            ('ﾝ', Script::Katakana),
            ('ｰ', Script::Common),
            ('ﾞ', Script::Common),
            ('東', Script::Han),
            ('々', Script::Han),
            ('㐀', Script::Han),
            ('豈', Script::Han),
            ('𠀀', Script::Han),
            ('ー', Script::Common),
            ('。', Script::Common),
            ('、', Script::Common),
            ('！', Script::Common),
            ('０', Script::Common),
            ('🦊', Script::Common),
            ('🚀', Script::Common),
            ('7', Script::Common),
            (' ', Script::Common),
            ('—', Script::Common),
            ('\u{301}', Script::Inherited),
            ('\u{3099}', Script::Inherited),
            ('α', Script::Greek),
            ('ж', Script::Cyrillic),
            ('ա', Script::Armenian),
            ('א', Script::Hebrew),
            ('ب', Script::Arabic),
            ('क', Script::Devanagari),
            ('অ', Script::Bengali),
            ('ก', Script::Thai),
            ('ა', Script::Georgian),
            ('த', Script::Unknown),
            ('\u{E000}', Script::Unknown),
        ];
        for (c, script) in cases {
            assert_eq!(script_of(c), script, "{c:?} U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn script_table_is_sorted_and_disjoint() {
        for pair in SCRIPT_RANGES.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn script_names_parse_display_and_serialize() {
        for script in Script::ALL {
            assert_eq!(script.to_string(), script.name());
            assert_eq!(script.name().to_lowercase().parse::<Script>().ok(), Some(script));
            let json = serde_json::to_string(&script).ok();
            assert_eq!(json, Some(format!("\"{}\"", script.name())));
            assert_eq!(serde_json::from_str::<Script>(&format!("\"{}\"", script.name())).ok(), Some(script));
        }
        assert_eq!(" HANGUL ".parse::<Script>().ok(), Some(Script::Hangul));
        let err = "Klingon".parse::<Script>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Klingon") && err.contains("Hangul") && err.contains("Katakana"), "{err}");
        assert!(serde_json::from_str::<Script>("\"Klingon\"").is_err());
    }

    #[test]
    fn token_serializes_script_as_its_name() {
        let token = Token { id: 7, label: "안…".into(), start: 1, end: 2, script: Script::Hangul };
        let json = serde_json::to_value(&token).ok();
        assert_eq!(json, Some(serde_json::json!({"id": 7, "label": "안…", "start": 1, "end": 2, "script": "Hangul"})));
    }
}
