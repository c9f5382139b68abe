//! Corpus parsing (TSV, CSV, JSONL, plain text): any bytes give sentences or an error naming a
//! line, never a panic; accepted sentences have unique ids, normalised language tags and trimmed,
//! non-empty texts.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moe_lens::corpus::{normalize_lang, parse_delimited, parse_jsonl, parse_lines};
use moe_lens::Error;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let path = Path::new("fuzz.corpus");
    let res = match which % 5 {
        0 => parse_delimited(bytes, b'\t', path, "fuzz"),
        1 => parse_delimited(bytes, b',', path, "fuzz"),
        2 => parse_jsonl(bytes, path, "fuzz"),
        3 => parse_lines(bytes, "ko", path, "fuzz"),
        _ => {
            // the language tag itself comes from the input
            let (tag, rest) = bytes.split_at(bytes.len().min(6));
            parse_lines(rest, &String::from_utf8_lossy(tag), path, "fuzz")
        }
    };
    match res {
        Ok(sentences) => {
            assert!(!sentences.is_empty());
            let mut ids = HashSet::new();
            for s in &sentences {
                assert!(ids.insert(s.id.clone()), "duplicate id {:?}", s.id);
                assert_eq!(normalize_lang(&s.lang).as_deref(), Ok(s.lang.as_str()));
                assert!(!s.text.is_empty() && s.text.trim() == s.text, "{s:?}");
                assert!(!s.text.contains('\n'), "{s:?}");
            }
        }
        Err(Error::Corpus { line, .. }) => {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
            assert!(line <= lines, "line {line} of {lines}");
        }
        Err(Error::InvalidArgument { .. }) => {}
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
