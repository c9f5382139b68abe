//! Sentences to scan: the shipped trilingual corpus and loaders for your own files.
//!
//! A corpus is a list of [`Sentence`]s, each with an id, a language tag and a text. Files:
//!
//! - **`.tsv`** (tab-separated) and **`.csv`** (comma-separated, RFC 4180 quoting with `"`): a
//!   header line names the columns; one needs to be the language (`lang` or `language`), one the
//!   text (`text` or `sentence`), and `id` is optional (without it, or where a row leaves it empty,
//!   a sentence's id is `<file-stem>:<line>`); an optional `domain` column gives each sentence a
//!   domain (empty = none). Column names are case-insensitive; other columns are allowed and ignored. TSV fields are taken literally (no quoting); in CSV a quoted field may
//!   hold commas and doubled quotes `""`, but not line breaks.
//! - **`.jsonl`**: one JSON object per line, `{"id": "s1", "lang": "ko", "text": "…"}`; `id` is
//!   optional (a string or an integer), so is `domain` (a string), other keys are ignored.
//! - **`.txt`**: one sentence per line, all in the language you give (`load_corpus(path, Some("ko"))`,
//!   `--lang ko` on the command line); ids are `<file-stem>:<line>`.
//!
//! Lines are numbered from 1 (a TSV/CSV header is line 1). Blank lines, a trailing newline, a UTF-8
//! byte-order mark and Windows line ends are fine. Texts are trimmed of surrounding whitespace.
//! Everything else that is wrong is an [`Error::Corpus`] naming the file and line — nothing is
//! skipped silently: a row with the wrong number of columns, bad JSON, an empty text, bytes that are
//! not UTF-8, an id used twice, or a language tag that is not a BCP 47 primary language subtag
//! (`en`, `ko`, `ja`, `yue`: two or three letters) optionally followed by a script subtag
//! (`ja-Hira`, `sr-Latn`). Tags are case-insensitive and normalised (`EN` → `en`, `ja-hira` →
//! `ja-Hira`).
//!
//! ```no_run
//! use moe_lens::corpus;
//! # fn main() -> moe_lens::Result<()> {
//! let shipped = corpus::builtin()?;                              // en / ko / ja, parallel sentences
//! let mine = corpus::load_corpus("my_sentences.tsv", None)?;
//! let korean = corpus::load_corpus("korean.txt", Some("ko"))?;
//! println!("{}", corpus::summary(&shipped));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use crate::corpus_set::Corpus;

/// One sentence of a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sentence {
    /// Unique within its corpus.
    pub id: String,
    /// Normalised language tag (`en`, `ko`, `ja`, `ja-Hira`).
    pub lang: String,
    /// The text, trimmed.
    pub text: String,
    /// The sentence's domain (news, code, chat, …) when the corpus names one: a `domain` column of
    /// a TSV/CSV file or a `"domain"` field of a JSONL line. A scan keeps it per sentence, and the
    /// analyses count each expert's picks per domain (`specialisation_domains.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Sentence {
    /// A sentence with a checked, normalised language tag.
    pub fn new(id: impl Into<String>, lang: &str, text: impl Into<String>) -> Result<Self> {
        let lang = normalize_lang(lang).map_err(|msg| Error::invalid("language tag", msg))?;
        let text: String = text.into();
        let text = text.trim().to_string();
        if text.is_empty() {
            return Err(Error::EmptyText(" (a corpus sentence)"));
        }
        Ok(Sentence { id: id.into(), lang, text, domain: None })
    }

    /// The sentence with a domain (trimmed; empty = none). A domain longer than
    /// [`MAX_DOMAIN_BYTES`] is refused.
    pub fn with_domain(mut self, domain: &str) -> Result<Self> {
        self.domain = check_domain(domain).map_err(|m| Error::invalid("domain", m))?;
        Ok(self)
    }
}

/// The longest domain a sentence may have, in UTF-8 bytes (a scan's routes file keeps its length in
/// one byte).
pub const MAX_DOMAIN_BYTES: usize = 255;

/// A domain trimmed, `None` when empty; too long is an error message.
fn check_domain(domain: &str) -> std::result::Result<Option<String>, String> {
    let d = domain.trim();
    if d.len() > MAX_DOMAIN_BYTES {
        return Err(format!(
            "the domain is {} bytes long, at most {MAX_DOMAIN_BYTES} are kept: shorten it (it is a tag such as news or chat)",
            d.len()
        ));
    }
    Ok((!d.is_empty()).then(|| d.to_string()))
}

impl fmt::Display for Sentence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} {}] {}", self.id, self.lang, self.text)
    }
}

/// The corpus that ships with moe-lens: parallel everyday sentences in English, Korean and
/// Japanese (`data/corpus/trilingual.tsv`, ids like `0001-en`, `0001-ko`, `0001-ja`).
pub fn builtin() -> Result<Vec<Sentence>> {
    parse_delimited(BUILTIN_TSV.as_bytes(), b'\t', Path::new(BUILTIN_PATH), "trilingual")
}

/// The shipped corpus file's text.
pub const BUILTIN_TSV: &str = include_str!("../data/corpus/trilingual.tsv");
/// How errors and scan records name the shipped corpus.
pub const BUILTIN_PATH: &str = "<builtin>/data/corpus/trilingual.tsv";

/// Loads a corpus file, choosing the format by extension: `.tsv`, `.csv`, `.jsonl` or `.txt`.
/// `lang` is required for `.txt` (every line is in that language) and refused for the others
/// (their rows carry their own language).
pub fn load_corpus(path: impl AsRef<Path>, lang: Option<&str>) -> Result<Vec<Sentence>> {
    let path = path.as_ref();
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("corpus").to_string();
    if !matches!(ext.as_str(), "tsv" | "csv" | "jsonl" | "txt") {
        return Err(Error::invalid(
            "corpus file",
            format!(
                "{}: unknown extension {:?}; use .tsv or .csv (with a header naming lang and text columns), \
                 .jsonl (one {{\"lang\", \"text\"}} object per line) or .txt (one sentence per line, with a language given)",
                path.display(),
                ext
            ),
        ));
    }
    if ext != "txt" {
        if let Some(l) = lang {
            return Err(Error::invalid(
                "language",
                format!(
                    "{l:?} was given for {}, but only .txt corpora take a language: a .{ext} file names the \
                     language of every row itself; leave the language out",
                    path.display()
                ),
            ));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match ext.as_str() {
        "tsv" => parse_delimited(&bytes, b'\t', path, &stem),
        "csv" => parse_delimited(&bytes, b',', path, &stem),
        "jsonl" => parse_jsonl(&bytes, path, &stem),
        _ => {
            let lang = lang.ok_or_else(|| {
                Error::invalid(
                    "language",
                    format!(
                        "{} is plain text, one sentence per line, and says nothing about its language: give it \
                         (load_corpus(path, Some(\"ko\")), or --lang ko on the command line)",
                        path.display()
                    ),
                )
            })?;
            parse_lines(&bytes, lang, path, &stem)
        }
    }
}

/// Loads a `.tsv` file (see the module docs for the format).
pub fn load_tsv(path: impl AsRef<Path>) -> Result<Vec<Sentence>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_delimited(&bytes, b'\t', path, &stem_of(path))
}

/// Loads a `.csv` file (see the module docs for the format).
pub fn load_csv(path: impl AsRef<Path>) -> Result<Vec<Sentence>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_delimited(&bytes, b',', path, &stem_of(path))
}

/// Loads a `.jsonl` file (see the module docs for the format).
pub fn load_jsonl(path: impl AsRef<Path>) -> Result<Vec<Sentence>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_jsonl(&bytes, path, &stem_of(path))
}

/// Loads a plain text file, one sentence per line, all in language `lang`.
pub fn load_txt(path: impl AsRef<Path>, lang: &str) -> Result<Vec<Sentence>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_lines(&bytes, lang, path, &stem_of(path))
}

fn stem_of(path: &Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or("corpus").to_string()
}

/// Checks and normalises a language tag: a BCP 47 primary language subtag (2–3 letters, lowercased)
/// optionally followed by `-` and a 4-letter script subtag (title-cased). The error says what is
/// wrong with it.
pub fn normalize_lang(tag: &str) -> std::result::Result<String, String> {
    let t = tag.trim();
    if t.is_empty() {
        return Err("the language tag is empty: give a tag such as en, ko or ja".into());
    }
    let (primary, script) = match t.split_once(['-', '_']) {
        Some((p, s)) => (p, Some(s)),
        None => (t, None),
    };
    let ok_primary = (2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic());
    let ok_script = script.is_none_or(|s| s.len() == 4 && s.bytes().all(|b| b.is_ascii_alphabetic()));
    if !ok_primary || !ok_script {
        return Err(format!(
            "{t:?} is not a language tag: use a 2- or 3-letter ISO 639 code such as en, ko or ja (not a \
             language name like \"english\"), optionally with a 4-letter script such as ja-Hira"
        ));
    }
    let mut out = primary.to_ascii_lowercase();
    if let Some(s) = script {
        out.push('-');
        let mut chars = s.chars();
        if let Some(c) = chars.next() {
            out.push(c.to_ascii_uppercase());
        }
        out.extend(chars.map(|c| c.to_ascii_lowercase()));
    }
    Ok(out)
}

/// English name of the languages the lab talks about most (for printed answers); other tags
/// come back unchanged.
pub fn language_name(tag: &str) -> &str {
    match tag {
        "en" => "English",
        "ko" => "Korean",
        "ja" => "Japanese",
        "zh" => "Chinese",
        "de" => "German",
        "fr" => "French",
        "es" => "Spanish",
        _ => tag,
    }
}

/// The languages of a corpus, sorted, with their sentence counts.
pub fn languages(sentences: &[Sentence]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in sentences {
        *m.entry(s.lang.clone()).or_insert(0) += 1;
    }
    m
}

/// One line: how many sentences, in which languages.
pub fn summary(sentences: &[Sentence]) -> String {
    let langs: Vec<String> = languages(sentences).into_iter().map(|(l, n)| format!("{l} {n}")).collect();
    format!("{} sentences ({})", sentences.len(), langs.join(", "))
}

/// A stable 64-bit fingerprint (FNV-1a) of the sentences' ids, languages and texts in order: what
/// a resumable scan records to refuse continuing over a different corpus. Hex, 16 digits.
pub fn fingerprint(sentences: &[Sentence]) -> String {
    let mut h = Fnv64::new();
    for s in sentences {
        h.write(s.id.as_bytes());
        h.write(&[0x1f]);
        h.write(s.lang.as_bytes());
        h.write(&[0x1f]);
        h.write(s.text.as_bytes());
        if let Some(d) = &s.domain {
            // only when present: corpora without domains keep their fingerprints
            h.write(&[0x1d]);
            h.write(d.as_bytes());
        }
        h.write(&[0x1e]);
    }
    format!("{:016x}", h.0)
}

/// FNV-1a, 64 bit.
pub(crate) struct Fnv64(pub(crate) u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Parsers
// ------------------------------------------------------------------------------------------------

fn corpus_err(path: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Corpus { path: path.to_path_buf(), line, msg: msg.into() }
}

/// Splits bytes into (line number, text) pairs, checking UTF-8 line by line so that an error can
/// name the line. Strips a leading byte-order mark and a trailing `\r`.
fn lines<'a>(bytes: &'a [u8], path: &'a Path) -> impl Iterator<Item = Result<(usize, &'a str)>> + 'a {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if ends_with_newline || bytes.is_empty() {
        parts.pop();
    }
    parts.into_iter().enumerate().map(move |(i, raw)| {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(s) => Ok((n, s)),
            Err(e) => Err(corpus_err(
                path,
                n,
                format!("not valid UTF-8 (bad byte at column {}): save the file as UTF-8", e.valid_up_to() + 1),
            )),
        }
    })
}

/// Collects sentences, refusing duplicate ids (naming the line of the first use).
struct Collector<'a> {
    path: &'a Path,
    out: Vec<Sentence>,
    seen: HashMap<String, usize>,
}

impl<'a> Collector<'a> {
    fn new(path: &'a Path) -> Self {
        Collector { path, out: Vec::new(), seen: HashMap::new() }
    }

    fn push(&mut self, line: usize, id: String, lang: &str, text: &str, domain: Option<&str>) -> Result<()> {
        let lang = normalize_lang(lang).map_err(|m| corpus_err(self.path, line, m))?;
        let domain = match domain {
            Some(d) => check_domain(d).map_err(|m| corpus_err(self.path, line, m))?,
            None => None,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(corpus_err(self.path, line, "the text is empty: remove the row or give it a sentence"));
        }
        if let Some(&first) = self.seen.get(&id) {
            return Err(corpus_err(
                self.path,
                line,
                format!("id {id:?} was already used on line {first}: every sentence needs its own id"),
            ));
        }
        self.seen.insert(id.clone(), line);
        self.out.push(Sentence { id, lang, text: text.to_string(), domain });
        Ok(())
    }

    fn finish(self) -> Result<Vec<Sentence>> {
        if self.out.is_empty() {
            return Err(corpus_err(self.path, 0, "the corpus has no sentences"));
        }
        Ok(self.out)
    }
}

/// Splits one CSV record (RFC 4180, on one line). Errors on an unterminated quote.
fn split_csv(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut at_start = true;
    loop {
        if at_start && chars.peek() == Some(&'"') {
            chars.next();
            // quoted field
            loop {
                match chars.next() {
                    Some('"') => {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            cur.push('"');
                        } else {
                            break;
                        }
                    }
                    Some(c) => cur.push(c),
                    None => {
                        return Err("a quoted field is not closed on this line (fields with line breaks are not \
                                    supported): close the quote, or double any \" inside the field as \"\""
                            .into())
                    }
                }
            }
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut cur));
                    return Ok(fields);
                }
                Some(',') => {
                    fields.push(std::mem::take(&mut cur));
                    at_start = true;
                }
                Some(c) => {
                    return Err(format!(
                        "unexpected {c:?} after a closing quote: a quoted field must end right before a comma \
                         (write \"\" for a quote inside it)"
                    ))
                }
            }
        } else {
            at_start = false;
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut cur));
                    return Ok(fields);
                }
                Some(',') => {
                    fields.push(std::mem::take(&mut cur));
                    at_start = true;
                }
                Some(c) => cur.push(c),
            }
        }
    }
}

/// Parses a TSV (`delim` = tab, fields literal) or CSV (`delim` = comma, quoted fields allowed)
/// text with a header line. `stem` names sentences without an id.
pub fn parse_delimited(bytes: &[u8], delim: u8, path: &Path, stem: &str) -> Result<Vec<Sentence>> {
    let kind = if delim == b'\t' { "TSV" } else { "CSV" };
    let split = |line: &str| -> std::result::Result<Vec<String>, String> {
        if delim == b'\t' {
            Ok(line.split('\t').map(str::to_string).collect())
        } else {
            split_csv(line)
        }
    };
    let mut header: Option<Header> = None;
    let mut c = Collector::new(path);
    for item in lines(bytes, path) {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split(line).map_err(|m| corpus_err(path, n, m))?;
        let Some(Header { lang: lang_col, text: text_col, id: id_col, domain: domain_col, columns: ncols }) = header
        else {
            header = Some(parse_header(&fields, path, n, kind)?);
            continue;
        };
        if fields.len() != ncols {
            let sep = if delim == b'\t' { "tabs" } else { "commas" };
            let hint = if delim == b'\t' && fields.len() > ncols {
                " (a tab inside the text splits it: replace it with a space)"
            } else if delim == b',' && fields.len() > ncols {
                " (a comma inside the text splits it: put the text in double quotes)"
            } else {
                ""
            };
            return Err(corpus_err(
                path,
                n,
                format!("{} columns, but the header has {ncols}: separate columns with {sep}{hint}", fields.len()),
            ));
        }
        let id = id_col
            .map(|i| fields[i].trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{stem}:{n}"));
        c.push(n, id, &fields[lang_col], &fields[text_col], domain_col.map(|i| fields[i].as_str()))?;
    }
    if header.is_none() {
        return Err(corpus_err(
            path,
            0,
            format!(
                "the file is empty: a {kind} corpus starts with a header line such as id{}lang{}text",
                delim as char, delim as char
            ),
        ));
    }
    c.finish()
}

/// Where a TSV/CSV header puts each column, and how many there are.
#[derive(Clone, Copy)]
struct Header {
    lang: usize,
    text: usize,
    id: Option<usize>,
    domain: Option<usize>,
    columns: usize,
}

fn parse_header(fields: &[String], path: &Path, n: usize, kind: &str) -> Result<Header> {
    let mut lang = None;
    let mut text = None;
    let mut id = None;
    let mut domain = None;
    for (i, f) in fields.iter().enumerate() {
        let name = f.trim().to_ascii_lowercase();
        let slot = match name.as_str() {
            "lang" | "language" => &mut lang,
            "text" | "sentence" => &mut text,
            "id" => &mut id,
            "domain" => &mut domain,
            _ => continue,
        };
        if slot.is_some() {
            return Err(corpus_err(
                path,
                n,
                format!(
                    "the header names the {name:?} column twice (or both of lang/language or text/sentence): keep one"
                ),
            ));
        }
        *slot = Some(i);
    }
    let cols: Vec<&str> = fields.iter().map(|s| s.trim()).collect();
    match (lang, text) {
        (Some(lang), Some(text)) => Ok(Header { lang, text, id, domain, columns: fields.len() }),
        _ => Err(corpus_err(
            path,
            n,
            format!(
                "the {kind} header {cols:?} needs a language column (lang or language) and a text column (text or \
                 sentence); an id column is optional. Is the first line a header?"
            ),
        )),
    }
}

#[derive(Deserialize)]
struct JsonRow {
    #[serde(default)]
    id: Option<serde_json::Value>,
    lang: Option<String>,
    text: Option<String>,
    #[serde(default)]
    domain: Option<String>,
}

/// Parses JSON Lines: one `{"id"?, "lang", "text"}` object per line.
pub fn parse_jsonl(bytes: &[u8], path: &Path, stem: &str) -> Result<Vec<Sentence>> {
    let mut c = Collector::new(path);
    for item in lines(bytes, path) {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let row: JsonRow = serde_json::from_str(line).map_err(|e| {
            corpus_err(
                path,
                n,
                format!("not a JSON object of the form {{\"id\": \"s1\", \"lang\": \"ko\", \"text\": \"…\"}} ({e})"),
            )
        })?;
        let lang = row.lang.ok_or_else(|| {
            corpus_err(path, n, "the object has no \"lang\": add the language tag, e.g. \"lang\": \"ko\"")
        })?;
        let text =
            row.text.ok_or_else(|| corpus_err(path, n, "the object has no \"text\": add the sentence as \"text\""))?;
        let id = match row.id {
            None | Some(serde_json::Value::Null) => format!("{stem}:{n}"),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => format!("{stem}:{n}"),
            Some(serde_json::Value::String(s)) => s.trim().to_string(),
            Some(serde_json::Value::Number(x)) if x.is_u64() || x.is_i64() => x.to_string(),
            Some(other) => {
                return Err(corpus_err(
                    path,
                    n,
                    format!("\"id\" is {other}: give a string or an integer, or leave it out"),
                ))
            }
        };
        c.push(n, id, &lang, &text, row.domain.as_deref())?;
    }
    c.finish()
}

/// Parses plain text, one sentence per line, all in `lang`.
pub fn parse_lines(bytes: &[u8], lang: &str, path: &Path, stem: &str) -> Result<Vec<Sentence>> {
    let lang = normalize_lang(lang).map_err(|m| Error::invalid("language", m))?;
    let mut c = Collector::new(path);
    for item in lines(bytes, path) {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        c.push(n, format!("{stem}:{n}"), &lang, line, None)?;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() -> std::result::Result<(), String> {
        assert_eq!(normalize_lang("EN")?, "en");
        assert_eq!(normalize_lang("ja-hira")?, "ja-Hira");
        assert_eq!(normalize_lang("yue")?, "yue");
        for bad in ["", "e", "english", "en-US", "k1", "ko-", "??"] {
            assert!(normalize_lang(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn csv_split() -> std::result::Result<(), String> {
        assert_eq!(split_csv("a,\"b, c\",\"d \"\"e\"\"\"")?, vec!["a", "b, c", "d \"e\""]);
        assert_eq!(split_csv("a,,")?, vec!["a", "", ""]);
        assert!(split_csv("a,\"b").is_err());
        assert!(split_csv("a,\"b\"x").is_err());
        Ok(())
    }
}
