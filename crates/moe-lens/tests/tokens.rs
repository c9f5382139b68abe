//! Integration tests of `moe_lens::tokens` with OLMoE's real tokenizer.
//!
//! References are independent of the code under test: ids, character offsets and token strings that
//! Python's `tokenizers` reported (tests/fixtures/*.ref.json), the texts themselves, and facts derived
//! by hand (UTF-8 encodings, Unicode's Scripts.txt).

use std::path::PathBuf;

use moe_lens::tokens::{script_of, Script, Token, Tokenizer};
use moe_lens::Error;
use serde_json::Value;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::{NormalizedString, Normalizer};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// OLMoE's tokenizer from tests/data; fails with what to do if it is not there.
fn tokenizer() -> Tokenizer {
    let path = repo_root().join("tests/data/tokenizer/tokenizer.json");
    assert!(path.exists(), "{} is missing: run tests/setup-data.sh to fetch the test data", path.display());
    match Tokenizer::from_file(&path) {
        Ok(tokenizer) => tokenizer,
        Err(e) => panic!("cannot load {}: {e}", path.display()),
    }
}

/// One sentence as Python's `tokenizers` encoded it.
#[derive(Debug)]
struct Reference {
    fixture: &'static str,
    lang: String,
    text: String,
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    tokens: Vec<String>,
}

impl Reference {
    fn chars(&self, start: usize, end: usize) -> String {
        self.text.chars().skip(start).take(end.saturating_sub(start)).collect()
    }

    /// Whether NFC leaves the text as it is (then the tokens' bytes spell the text exactly).
    fn is_nfc(&self) -> bool {
        let mut normalized = NormalizedString::from(self.text.as_str());
        NFC.normalize(&mut normalized).is_ok() && normalized.get() == self.text
    }
}

/// Every sentence of the reference fixtures.
fn references() -> Vec<Reference> {
    let mut all = Vec::new();
    for fixture in ["olmoe-narrow.ref.json", "olmoe-gqa.ref.json"] {
        let path = repo_root().join("tests/fixtures").join(fixture);
        let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sentences = doc["sentences"].as_array().unwrap_or_else(|| panic!("{fixture}: no sentences"));
        for s in sentences {
            let ids = s["ids"].as_array().into_iter().flatten();
            let offsets = s["offsets"].as_array().into_iter().flatten();
            let tokens = s["tokens"].as_array().into_iter().flatten();
            all.push(Reference {
                fixture,
                lang: s["lang"].as_str().unwrap_or_default().to_string(),
                text: s["text"].as_str().unwrap_or_default().to_string(),
                ids: ids.map(|v| v.as_u64().unwrap_or(u64::MAX) as u32).collect(),
                offsets: offsets
                    .map(|p| (p[0].as_u64().unwrap_or(0) as usize, p[1].as_u64().unwrap_or(0) as usize))
                    .collect(),
                tokens: tokens.map(|t| t.as_str().unwrap_or_default().to_string()).collect(),
            });
        }
    }
    assert!(all.len() >= 18, "expected the 9 sentences of both fixtures, found {}", all.len());
    all
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<Token> {
    tok.encode(text).unwrap_or_else(|e| panic!("encode {text:?}: {e}"))
}

fn labels(tokens: &[Token]) -> Vec<&str> {
    tokens.iter().map(|t| t.label.as_str()).collect()
}

fn offsets(tokens: &[Token]) -> Vec<(usize, usize)> {
    tokens.iter().map(|t| (t.start, t.end)).collect()
}

fn ids(tokens: &[Token]) -> Vec<u32> {
    tokens.iter().map(|t| t.id).collect()
}

/// The first sentence of the narrow fixture, which mixes English, Korean and Japanese.
fn mixed(refs: &[Reference]) -> &Reference {
    refs.iter().find(|r| r.text.starts_with("The quick brown fox")).expect("the mixed sentence")
}

#[test]
fn ids_and_offsets_match_python() {
    let tok = tokenizer();
    for r in references() {
        let tokens = encode(&tok, &r.text);
        assert_eq!(ids(&tokens), r.ids, "{} {:?}", r.fixture, r.text);
        assert_eq!(offsets(&tokens), r.offsets, "{} {:?}", r.fixture, r.text);
    }
}

#[test]
fn python_token_strings_map_to_the_same_ids() {
    let tok = tokenizer();
    for r in references() {
        let found: Vec<Option<u32>> = r.tokens.iter().map(|t| tok.token_id(t)).collect();
        let expected: Vec<Option<u32>> = r.ids.iter().map(|&id| Some(id)).collect();
        assert_eq!(found, expected, "{:?}", r.text);
    }
}

#[test]
fn token_bytes_spell_the_text_and_decode_gives_it_back() {
    let tok = tokenizer();
    for r in references().iter().filter(|r| r.is_nfc()) {
        let mut bytes = Vec::new();
        for &id in &r.ids {
            bytes.extend(tok.token_bytes(id).unwrap_or_else(|e| panic!("{id}: {e}")));
        }
        assert_eq!(bytes, r.text.as_bytes(), "{:?}", r.text);
        assert_eq!(tok.decode(&r.ids).ok().as_deref(), Some(r.text.as_str()));
    }
}

#[test]
fn token_bytes_by_hand() {
    let tok = tokenizer();
    let cases: [(u32, &[u8]); 6] = [
        (209, b" "),                  // "Ġ"
        (187, b"\n"),                 // "Ċ"
        (30013, b" fox"),             // "Ġfox"
        (41514, &[0x20, 0xEC, 0x95]), // "Ġìķ": a space and the head of 안 (EC 95 88)
        (50276, b"  "),               // added token of two spaces
        (50279, b"<|endoftext|>"),    // special token: its content
    ];
    for (id, bytes) in cases {
        assert_eq!(tok.token_bytes(id).ok().as_deref(), Some(bytes), "id {id}");
    }
}

/// Characters of the byte-level alphabet that stand for non-ASCII bytes (and Latin-1 look-alikes),
/// which show up as mojibake when token strings are printed as they are.
fn is_mojibake(c: char) -> bool {
    ('\u{80}'..='\u{17F}').contains(&c)
}

#[test]
fn labels_never_show_mojibake_or_replacement_characters() {
    let tok = tokenizer();
    for r in references() {
        for t in encode(&tok, &r.text) {
            assert!(!t.label.contains('\u{FFFD}'), "{:?} in {:?}", t.label, r.text);
            for c in t.label.chars().filter(|&c| is_mojibake(c)) {
                assert!(r.text.contains(c), "{:?} shows {c:?}, which {:?} lacks", t.label, r.text);
            }
            assert!(!t.label.is_empty());
        }
    }
}

/// How a label shows one character of the text.
fn shown(c: char) -> String {
    match c {
        ' ' => "␣".into(),
        '\n' => "↵".into(),
        '\t' => "⇥".into(),
        c => c.to_string(),
    }
}

#[test]
fn every_label_contains_the_characters_python_offsets_point_at() {
    let tok = tokenizer();
    for r in references() {
        let tokens = encode(&tok, &r.text);
        for (t, &(start, end)) in tokens.iter().zip(&r.offsets) {
            for c in r.chars(start, end).chars() {
                assert!(t.label.contains(&shown(c)), "{:?} lacks {c:?} ({} {:?})", t.label, r.lang, r.text);
            }
        }
    }
}

#[test]
fn hand_checked_labels() {
    let tok = tokenizer();
    let refs = references();
    let mixed = encode(&tok, &mixed(&refs).text);
    let got = labels(&mixed);
    // "The quick brown fox jumps. 안녕하세요. こんにちは." — 안 (EC 95 88) is split after EC 95 and
    // 녕 (EB 85 95) byte by byte; 하 (ED 95 98) is one token; ' ' before こ is a token of its own.
    assert_eq!(
        got,
        [
            "The",
            "␣quick",
            "␣brown",
            "␣fox",
            "␣jumps",
            ".",
            "␣안…",
            "…안",
            "녕…",
            "…녕…",
            "…녕",
            "하",
            "세…",
            "…세",
            "요",
            ".",
            "␣",
            "こ",
            "ん",
            "に",
            "ち",
            "は",
            "."
        ]
    );

    let ws = refs.iter().find(|r| r.lang == "ws").expect("the whitespace sentence");
    let got = encode(&tok, &ws.text);
    assert_eq!(labels(&got), ["Line", "␣one", "↵", "Line", "␣two", "⇥", "␣tab", "␣␣", "and", "␣␣␣", "spaces"]);

    // コンピュ…: "ãĥ³ãĥ" holds ン (E3 83 B3) whole and the head E3 83 of ピ (E3 83 94); "Ķ" the 94.
    let got = encode(&tok, "コンピューターで日本語の文章を処理する。");
    assert_eq!(labels(&got)[..4], ["コ", "ンピ…", "…ピ", "ュ"]);
}

#[test]
fn labels_of_ids_on_their_own() {
    let tok = tokenizer();
    // The head of 안 alone is incomplete: hex, never U+FFFD.
    assert_eq!(tok.labels(&[41514]).ok(), Some(vec!["␣<EC 95>".to_string()]));
    assert_eq!(tok.labels(&[41514, 219]).ok(), Some(vec!["␣안…".to_string(), "…안".to_string()]));
    // The tail alone forms no character either.
    assert_eq!(tok.labels(&[219]).ok(), Some(vec!["<88>".to_string()]));
    assert_eq!(tok.labels(&[50279, 1]).ok(), Some(vec!["<|endoftext|>".to_string(), "<|padding|>".to_string()]));
    assert_eq!(tok.labels(&[]).ok(), Some(vec![]));
}

#[test]
fn special_tokens_in_text_keep_their_content() {
    let tok = tokenizer();
    let got = encode(&tok, "Hi<|endoftext|>");
    let last = got.last().expect("tokens");
    assert_eq!((last.id, last.label.as_str(), last.start, last.end), (50279, "<|endoftext|>", 2, 15));
    assert_eq!(last.script, Script::Common);
}

#[test]
fn script_examples() {
    let cases = [
        ('a', Script::Latin),
        ('é', Script::Latin),
        ('안', Script::Hangul),
        ('こ', Script::Hiragana),
        ('コ', Script::Katakana),
        ('東', Script::Han),
        ('ー', Script::Common),
        ('。', Script::Common),
        ('🦊', Script::Common),
    ];
    for (c, script) in cases {
        assert_eq!(script_of(c), script, "{c}");
    }
}

#[test]
fn token_scripts_on_the_fixture_sentences() {
    let tok = tokenizer();
    for r in references() {
        let tokens = encode(&tok, &r.text);
        let allowed: &[Script] = match r.lang.as_str() {
            "ko" => &[Script::Hangul, Script::Common],
            "ja" => &[Script::Han, Script::Hiragana, Script::Katakana, Script::Common],
            "ws" => &[Script::Latin, Script::Common],
            _ => continue,
        };
        for t in &tokens {
            assert!(allowed.contains(&t.script), "{:?} is {} in {:?}", t.label, t.script, r.text);
        }
        assert!(tokens.iter().any(|t| t.script != Script::Common), "{:?}", r.text);
    }

    let refs = references();
    let script_of_label =
        |text: &str, label: &str| encode(&tok, text).into_iter().find(|t| t.label == label).map(|t| t.script);
    let mixed = &mixed(&refs).text;
    assert_eq!(script_of_label(mixed, "␣안…"), Some(Script::Hangul));
    assert_eq!(script_of_label(mixed, "…녕…"), Some(Script::Hangul));
    assert_eq!(script_of_label(mixed, "こ"), Some(Script::Hiragana));
    assert_eq!(script_of_label(mixed, "␣"), Some(Script::Common));
    assert_eq!(script_of_label(mixed, "␣fox"), Some(Script::Latin));
    let ja = "コンピューターで日本語の文章を処理する。";
    assert_eq!(script_of_label(ja, "ター"), Some(Script::Katakana));
    assert_eq!(script_of_label(ja, "ー"), Some(Script::Common));
    assert_eq!(script_of_label(ja, "日本"), Some(Script::Han));
    assert_eq!(script_of_label(ja, "。"), Some(Script::Common));
    let emoji = "Emoji 🦊🚀 and café naïve — ok?";
    assert_eq!(script_of_label(emoji, "␣🦊…"), Some(Script::Common));
    assert_eq!(script_of_label(emoji, "␣café"), Some(Script::Latin));
    assert_eq!(script_of_label(emoji, "␣—"), Some(Script::Common));
}

/// Where the text of the first `n` tokens ends, from Python's offsets and token strings alone: the
/// start of token `n`, less the leading spaces that trimming took off it. (When tokens `n - 1` and
/// `n` share a character, that is where the shared character starts: the prompt leaves it out and
/// the continuation brings it.)
fn prompt_chars(r: &Reference, n: usize) -> usize {
    let leading = r.tokens[n].chars().take_while(|&c| c == 'Ġ' || c.is_whitespace()).count();
    r.offsets[n].0 - leading
}

#[test]
fn extend_reproduces_text_offsets_and_labels_at_every_split() {
    let tok = tokenizer();
    for r in references().iter().filter(|r| r.is_nfc()) {
        let full = encode(&tok, &r.text);
        for n in 1..r.ids.len() {
            let prompt: String = r.text.chars().take(prompt_chars(r, n)).collect();
            let (text, tokens) = tok
                .extend(&prompt, &full[..n], &r.ids[n..])
                .unwrap_or_else(|e| panic!("{:?} split at {n}: {e}", r.text));
            assert_eq!(text, r.text, "split at {n}");
            assert_eq!(ids(&tokens), r.ids, "{:?} split at {n}", r.text);
            assert_eq!(offsets(&tokens), r.offsets, "{:?} split at {n}", r.text);
            assert_eq!(tokens, full, "{:?} split at {n}", r.text);
        }
    }
}

#[test]
fn extend_one_id_at_a_time_keeps_the_text_a_prefix() {
    let tok = tokenizer();
    for r in references().iter().filter(|r| r.is_nfc()) {
        let full = encode(&tok, &r.text);
        let mut text: String = r.text.chars().take(prompt_chars(r, 1)).collect();
        let mut tokens = full[..1].to_vec();
        for &id in &r.ids[1..] {
            let (t, toks) = tok.extend(&text, &tokens, &[id]).unwrap_or_else(|e| panic!("{e}"));
            assert!(r.text.starts_with(&t), "{t:?} is no prefix of {:?}", r.text);
            assert!(toks.iter().all(|t| !t.label.contains('\u{FFFD}')));
            (text, tokens) = (t, toks);
        }
        assert_eq!(text, r.text);
        assert_eq!(tokens, full, "{:?}", r.text);
    }
}

#[test]
fn extend_holds_back_an_incomplete_character() {
    let tok = tokenizer();
    let refs = references();
    let r = mixed(&refs);
    let full = encode(&tok, &r.text);
    let prompt = "The quick brown fox jumps.";
    // Generate "Ġìķ" (a space and the head of 안): the space joins the text, the head waits.
    let (text, tokens) = tok.extend(prompt, &full[..6], &[41514]).expect("extend");
    assert_eq!(text, "The quick brown fox jumps. ");
    let last = tokens.last().expect("tokens");
    assert_eq!((last.label.as_str(), last.start, last.end), ("␣<EC 95>", 27, 27));
    // Then "Ī" completes 안, and both tokens show it, at Python's offsets [27, 28].
    let (text, tokens) = tok.extend(&text, &tokens, &[219]).expect("extend");
    assert_eq!(text, "The quick brown fox jumps. 안");
    let tail: Vec<(&str, usize, usize)> = tokens[6..].iter().map(|t| (t.label.as_str(), t.start, t.end)).collect();
    assert_eq!(tail, [("␣안…", 27, 28), ("…안", 27, 28)]);
    assert_eq!(tokens[6].script, Script::Hangul);
}

#[test]
fn extend_with_generated_ids() {
    let tok = tokenizer();
    for fixture in ["olmoe-narrow.ref.json", "olmoe-gqa.ref.json"] {
        let path = repo_root().join("tests/fixtures").join(fixture);
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
        let prompt = doc["generate"]["prompt"].as_str().expect("prompt");
        let new_ids: Vec<u32> =
            doc["generate"]["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().unwrap_or(0) as u32).collect();
        let tokens = encode(&tok, prompt);
        let (text, all) = tok.extend(prompt, &tokens, &new_ids).expect("extend");
        let continuation = tok.decode(&new_ids).expect("decode");
        if !continuation.contains('\u{FFFD}') {
            assert_eq!(text, format!("{prompt}{continuation}"));
        }
        assert!(text.starts_with(prompt));
        let all_ids: Vec<u32> = ids(&tokens).into_iter().chain(new_ids.iter().copied()).collect();
        assert_eq!(ids(&all), all_ids);
        let expected = tok.labels(&all_ids).expect("labels");
        assert_eq!(labels(&all), expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(all[..tokens.len()], tokens[..]);
        let n = text.chars().count();
        for t in &all[tokens.len()..] {
            assert!(t.start <= t.end && t.end <= n, "{t:?} outside {n} chars");
            assert!(!t.label.contains('\u{FFFD}'));
        }
    }
}

#[test]
fn vocabulary_facts() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 50_280);
    assert_eq!(tok.eos_id(), Some(50_279));
    assert_eq!(tok.token_id("<|endoftext|>"), Some(50_279));
    assert_eq!(tok.token_id("Ġfox"), Some(30_013));
    assert_eq!(tok.token_id("no such token ☃"), None);
    assert!(format!("{tok:?}").contains("Tokenizer"));
}

#[test]
fn empty_and_blank_text_is_refused() {
    let tok = tokenizer();
    for text in ["", "  \n\t", "\u{3000}"] {
        assert!(matches!(tok.encode(text), Err(Error::EmptyText(_))), "{text:?}");
    }
}

#[test]
fn unknown_ids_are_refused() {
    let tok = tokenizer();
    let bad = 999_999;
    assert!(matches!(tok.token_bytes(bad), Err(Error::InvalidArgument { .. })));
    assert!(matches!(tok.labels(&[15, bad]), Err(Error::InvalidArgument { .. })));
    assert!(matches!(tok.decode(&[bad]), Err(Error::InvalidArgument { .. })));
    let tokens = encode(&tok, "Hello");
    assert!(matches!(tok.extend("Hello", &tokens, &[bad]), Err(Error::InvalidArgument { .. })));
    assert!(tok.token_bytes(50_280).is_err());
}

#[test]
fn missing_file_is_reported_with_a_hint() {
    let path = std::env::temp_dir().join("moe-lens-no-such-dir/tokenizer.json");
    match Tokenizer::from_file(&path) {
        Err(e @ Error::MissingFile { .. }) => assert!(e.to_string().contains("tokenizer.json"), "{e}"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn garbage_file_is_a_tokenizer_error_naming_the_path() {
    let path = std::env::temp_dir().join(format!("moe-lens-garbage-{}.json", std::process::id()));
    std::fs::write(&path, b"{ this is not a tokenizer").expect("write temp file");
    let result = Tokenizer::from_file(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(e @ Error::Tokenizer(_)) => assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
}

/// The tokenizer rebuilt from a llama.cpp GGUF file's metadata (written by llama.cpp's own converter
/// from OLMoE's tokenizer.json; tests/fixtures/llamacpp) must tokenize exactly as tokenizer.json
/// does: the whole study corpus, the fuzz corpus, every added token and a few edge cases; and spell
/// every id with the same bytes.
#[test]
fn tokenizer_rebuilt_from_llamacpp_gguf_equals_tokenizer_json() {
    let gguf = repo_root().join("tests/fixtures/llamacpp/olmoe-narrow-bf16.gguf");
    let mut f = std::fs::File::open(&gguf).unwrap_or_else(|e| panic!("{}: {e}", gguf.display()));
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let rebuilt = moe_lens::gguf::tokenizer_from_metadata(&content.metadata, &gguf).unwrap();
    let json = tokenizer();
    assert_eq!(rebuilt.vocab_size(), json.vocab_size());
    assert_eq!(rebuilt.eos_id(), json.eos_id());

    let mut texts: Vec<String> = Vec::new();
    let corpus = std::fs::read_to_string(repo_root().join("crates/moe-lens/data/corpus/trilingual.tsv")).unwrap();
    texts.extend(corpus.lines().skip(1).filter_map(|l| l.splitn(3, '\t').nth(2)).map(str::to_string));
    assert!(texts.len() >= 1365, "{} corpus lines", texts.len());
    let fuzz = repo_root().join("fuzz/corpus/tokens");
    let mut fuzz_files = 0;
    for e in std::fs::read_dir(&fuzz).unwrap() {
        texts.push(String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned());
        fuzz_files += 1;
    }
    assert!(fuzz_files >= 50, "{fuzz_files} fuzz inputs");
    texts.extend(references().into_iter().map(|r| r.text));
    for id in 0..json.vocab_size() as u32 {
        let label = json.labels(&[id]).unwrap().remove(0);
        if label.starts_with("<|") || label.contains("IP_ADDRESS") || label.trim().is_empty() {
            texts.push(format!("x{}y", json.decode(&[id]).unwrap()));
        }
    }
    texts.extend(
        [
            "<|endoftext|>Hello<|padding|>",
            "a  b   c\t\td\n\n\ne",
            "  leading",
            "trailing   ",
            "|||IP_ADDRESS||| x",
            "e\u{301}te\u{301}",
            "",
            "   ",
            "\u{feff}",
        ]
        .map(str::to_string),
    );
    for text in &texts {
        let (a, b) = match (rebuilt.encode(text), json.encode(text)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "errors for {text:?}");
                continue;
            }
            (a, b) => panic!("{text:?}: rebuilt {a:?}, tokenizer.json {b:?}"),
        };
        assert_eq!(ids(&a), ids(&b), "ids of {text:?}");
        assert_eq!(offsets(&a), offsets(&b), "offsets of {text:?}");
        assert_eq!(labels(&a), labels(&b), "labels of {text:?}");
    }
    for id in 0..json.vocab_size() as u32 {
        assert_eq!(rebuilt.token_bytes(id).unwrap(), json.token_bytes(id).unwrap(), "bytes of id {id}");
    }
    eprintln!("{} texts tokenized alike, {} ids spelled alike", texts.len(), json.vocab_size());
}

/// A GGUF whose tokenizer is not OLMoE's byte-level BPE is refused with what to do.
#[test]
fn gguf_tokenizer_of_another_kind_is_refused() {
    use candle_core::quantized::gguf_file::Value as V;
    let gguf = repo_root().join("tests/fixtures/llamacpp/olmoe-narrow-bf16.gguf");
    let mut f = std::fs::File::open(&gguf).unwrap();
    let mut meta = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap().metadata;
    meta.insert("tokenizer.ggml.model".into(), V::String("llama".into()));
    let err = moe_lens::gguf::tokenizer_from_metadata(&meta, &gguf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("\"llama\"") && err.contains("tokenizer.json next to"), "{err}");
    meta.insert("tokenizer.ggml.model".into(), V::String("gpt2".into()));
    meta.insert("tokenizer.ggml.pre".into(), V::String("qwen2".into()));
    let err = moe_lens::gguf::tokenizer_from_metadata(&meta, &gguf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("qwen2"), "{err}");
    meta.remove("tokenizer.ggml.merges");
    meta.insert("tokenizer.ggml.pre".into(), V::String("olmo".into()));
    let err = moe_lens::gguf::tokenizer_from_metadata(&meta, &gguf).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("tokenizer.ggml.merges"), "{err}");
}
