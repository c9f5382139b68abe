//! text → tokens → labels and scripts, with the real OLMoE tokenizer. Properties checked on every
//! input: no panic; whitespace-only text is EmptyText and anything else tokenizes; the tokens'
//! bytes spell the text exactly — after Unicode NFC, which OLMoE's tokenizer.json applies first
//! (U+2000 EN QUAD becomes U+2002 EN SPACE, as in Python) — and decode gives that back; offsets lie inside the text; no label
//! shows U+FFFD unless the text has one; arbitrary ids (also unknown ones) give labels or an
//! error, never a panic; extending with arbitrary generated ids never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moe_lens::tokens::{script_of, Tokenizer};
use moe_lens::Error;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::{NormalizedString, Normalizer};

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(moe_lens_fuzz::tokenizer_path()).expect("run tests/setup-data.sh first"))
}

fuzz_target!(|data: &[u8]| {
    let tok = tok();
    // the first two bytes choose how many trailing bytes are read as ids for labels()/extend()
    let (ids_len, data) = match data {
        [a, rest @ ..] => ((*a as usize % 16) * 4, rest),
        [] => (0, data),
    };
    let split = data.len().saturating_sub(ids_len);
    let (text_bytes, id_bytes) = data.split_at(split);
    let ids: Vec<u32> = id_bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 60000).collect();

    let _ = tok.labels(&ids);
    let _ = tok.decode(&ids);
    for &id in &ids {
        let _ = tok.token_bytes(id);
    }

    let text = String::from_utf8_lossy(text_bytes);
    for c in text.chars() {
        let _ = script_of(c);
    }
    match tok.encode(&text) {
        Err(Error::EmptyText(_)) => assert!(text.trim().is_empty() || text.chars().all(char::is_whitespace), "{text:?} called empty"),
        Err(e) => panic!("{text:?}: {e}"),
        Ok(tokens) => {
            assert!(!text.trim().is_empty());
            let n = text.chars().count();
            let mut bytes = Vec::new();
            for t in &tokens {
                assert!(t.start <= t.end && t.end <= n, "{t:?} outside {n} chars of {text:?}");
                if !text.contains('\u{FFFD}') {
                    assert!(!t.label.contains('\u{FFFD}'), "{:?} labelled {:?}", text, t.label);
                }
                bytes.extend(tok.token_bytes(t.id).expect("an id from encode is in the vocabulary"));
            }
            let mut nfc = NormalizedString::from(text.as_ref());
            NFC.normalize(&mut nfc).expect("NFC");
            let nfc = nfc.get();
            assert_eq!(bytes, nfc.as_bytes(), "token bytes do not spell NFC({text:?})");
            let ids_of: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(tok.decode(&ids_of).expect("decode"), nfc, "decode");
            let labels = tok.labels(&ids_of).expect("labels");
            assert_eq!(labels.len(), tokens.len());
            let _ = tok.extend(&text, &tokens, &ids);
        }
    }
});
