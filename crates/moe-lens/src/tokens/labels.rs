//! The one label rule (see the [`crate::tokens`] docs): the byte stream of a token sequence split
//! into characters, each token's label and script, the continuation of a generated text, and
//! GPT-2's byte-level alphabet.

use std::collections::HashMap;
use std::ops::Range;

use super::scripts::{script_of, Script};

/// What one token puts into the byte stream.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    pub(super) bytes: Vec<u8>,
    /// The content of a special token, which is its label.
    pub(super) special: Option<String>,
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
pub(super) struct Stream {
    bytes: Vec<u8>,
    pub(super) spans: Vec<Range<usize>>,
    units: Vec<Unit>,
}

/// Where the units of a continuation land in the full text.
#[derive(Debug)]
pub(super) struct Continuation {
    /// Bytes of the stream that the text before the continuation shows.
    pub(super) shown: usize,
    /// Character position in the full text of each unit of the stream that the continuation adds.
    pub(super) of_unit: Vec<Option<usize>>,
    /// The characters the continuation adds.
    pub(super) chars: Vec<char>,
    /// Characters of the text before the continuation.
    base: usize,
}

impl Continuation {
    /// Character position in the full text of the byte `at` of the stream (after the text).
    pub(super) fn char_at(&self, stream: &Stream, at: usize) -> usize {
        let before =
            stream.units.iter().zip(&self.of_unit).filter(|(unit, pos)| pos.is_some() && unit.end <= at).count();
        self.base + before
    }
}

impl Stream {
    pub(super) fn new(pieces: &[Piece]) -> Self {
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
    pub(super) fn units_of(&self, span: &Range<usize>) -> Range<usize> {
        let first = self.units.partition_point(|u| u.end <= span.start);
        let last = self.units.partition_point(|u| u.start < span.end);
        first..last.max(first)
    }

    /// Label and script of every token.
    pub(super) fn describe(&self, pieces: &[Piece]) -> Vec<(String, Script)> {
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
    pub(super) fn prefix(&self, len: usize) -> usize {
        len - incomplete_tail(self.bytes.get(..len).unwrap_or_default())
    }

    /// Places the units after the first `shown` bytes as characters after `base` characters of
    /// text: a character as itself, bytes that form none as U+FFFD, and an incomplete character
    /// at the very end not at all (yet).
    pub(super) fn place_continuation(&self, shown: usize, base: usize) -> Continuation {
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
// Byte-level alphabet
// ------------------------------------------------------------------------------------------------

/// The byte-level alphabet's stand-in for the space byte (`Ġ`).
pub(super) const BYTE_LEVEL_SPACE: char = '\u{120}';

/// GPT-2's byte-level alphabet, reversed: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes (controls, space, 0x7F–0xA0, 0xAD) for U+0100, U+0101, … in byte order.
pub(super) fn byte_level_alphabet() -> HashMap<char, u8> {
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
pub(super) fn byte_level_bytes(token: &str, alphabet: &HashMap<char, u8>) -> Vec<u8> {
    token
        .chars()
        .map(|c| alphabet.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

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
}
