//! Corpus loading: the shipped corpus, every file format, and every malformed line reported with
//! its file and line number.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use moe_lens::corpus::{self, load_corpus, Sentence};
use moe_lens::Error;

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-lens-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn s(id: &str, lang: &str, text: &str) -> Sentence {
    Sentence { id: id.into(), lang: lang.into(), text: text.into(), domain: None }
}

/// Loads a file that must fail with a corpus error at `line`; returns the message.
fn corpus_error(name: &str, bytes: &[u8], lang: Option<&str>, line: usize) -> String {
    let p = temp(name, bytes);
    let e = load_corpus(&p, lang).unwrap_err();
    match &e {
        Error::Corpus { path, line: l, .. } => {
            assert_eq!(path, &p, "{e}");
            assert_eq!(*l, line, "{e}");
        }
        other => panic!("{name}: expected a corpus error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&format!("{}:{line}:", p.display())), "the message names file and line: {msg}");
    msg
}

#[test]
fn the_shipped_corpus_is_trilingual_and_clean() {
    let c = corpus::builtin().unwrap();
    assert!(c.len() >= 1200, "{} sentences", c.len());
    let langs = corpus::languages(&c);
    assert_eq!(langs.keys().map(String::as_str).collect::<Vec<_>>(), ["en", "ja", "ko"]);
    let ids: HashSet<&str> = c.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), c.len());
    assert!(c.iter().all(|s| !s.text.trim().is_empty()));
    assert!(corpus::summary(&c).contains("en "));
    assert_eq!(corpus::fingerprint(&c), corpus::fingerprint(&corpus::builtin().unwrap()));
}

#[test]
fn tsv_with_header_variants() {
    let p = temp(
        "variants.tsv",
        "\u{feff}Sentence\tsource\tLanguage\r\nHello there.\tweb\tEN\r\n\r\n안녕하세요.\tbook\tko\r\n".as_bytes(),
    );
    let c = load_corpus(&p, None).unwrap();
    assert_eq!(c, vec![s("variants:2", "en", "Hello there."), s("variants:4", "ko", "안녕하세요.")]);
    let p = temp("ids.tsv", b"id\tlang\ttext\na1\tja\t\xe3\x81\x82\nb2\tja-hira\t  spaced  \n");
    let c = load_corpus(&p, None).unwrap();
    assert_eq!(c, vec![s("a1", "ja", "あ"), s("b2", "ja-Hira", "spaced")]);
}

#[test]
fn csv_with_quotes() {
    let p = temp("q.csv", b"id,lang,text\n1,en,\"Hello, world\"\n2,en,\"She said \"\"hi\"\".\"\n3,ko,plain\n");
    let c = load_corpus(&p, None).unwrap();
    assert_eq!(c, vec![s("1", "en", "Hello, world"), s("2", "en", "She said \"hi\"."), s("3", "ko", "plain")]);
}

#[test]
fn jsonl_with_and_without_ids() {
    let p = temp("j.jsonl", "{\"id\":\"x\",\"lang\":\"ko\",\"text\":\"서울\"}\n\n{\"lang\":\"en\",\"text\":\"Hi\",\"extra\":1}\n{\"id\":7,\"lang\":\"ja\",\"text\":\"東京\"}\n".as_bytes());
    let c = load_corpus(&p, None).unwrap();
    assert_eq!(c, vec![s("x", "ko", "서울"), s("j:3", "en", "Hi"), s("7", "ja", "東京")]);
}

#[test]
fn plain_text_needs_a_language() {
    let p = temp("k.txt", "첫 문장.\n\n둘째 문장.\n".as_bytes());
    let c = load_corpus(&p, Some("ko")).unwrap();
    assert_eq!(c, vec![s("k:1", "ko", "첫 문장."), s("k:3", "ko", "둘째 문장.")]);
    let e = load_corpus(&p, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("--lang"), "{e}");
    let e = load_corpus(&p, Some("korean")).unwrap_err();
    assert!(e.to_string().contains("not a language tag"), "{e}");
    // and the other formats refuse one
    let t = temp("l.tsv", b"lang\ttext\nen\tHi\n");
    let e = load_corpus(&t, Some("en")).unwrap_err();
    assert!(e.to_string().contains("only .txt"), "{e}");
}

#[test]
fn unknown_extension_and_missing_file() {
    let p = temp("c.xlsx", b"x");
    let e = load_corpus(&p, None).unwrap_err();
    assert!(e.to_string().contains(".tsv") && e.to_string().contains("xlsx"), "{e}");
    let e = load_corpus(Path::new("/nonexistent/dir/c.tsv"), None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn wrong_column_count() {
    let m = corpus_error("cols.tsv", b"id\tlang\ttext\na\ten\tfine\nb\ten\tone\ttab too many\n", None, 3);
    assert!(m.contains("4 columns, but the header has 3") && m.contains("tab"), "{m}");
    let m = corpus_error("cols.csv", b"lang,text\nen\n", None, 2);
    assert!(m.contains("1 columns"), "{m}");
}

#[test]
fn bad_json() {
    let m = corpus_error("bad.jsonl", b"{\"lang\":\"en\",\"text\":\"ok\"}\n{\"lang\":\"en\",\"text\":\n", None, 2);
    assert!(m.contains("not a JSON object"), "{m}");
    let m = corpus_error("nolang.jsonl", b"\n{\"text\":\"ok\"}\n", None, 2);
    assert!(m.contains("no \"lang\""), "{m}");
    corpus_error("idobj.jsonl", b"{\"id\":[1],\"lang\":\"en\",\"text\":\"ok\"}\n", None, 1);
}

#[test]
fn empty_text() {
    let m = corpus_error("empty.tsv", b"lang\ttext\nen\tfine\nen\tfine too\nko\t   \n", None, 4);
    assert!(m.contains("text is empty"), "{m}");
    corpus_error("empty.jsonl", b"{\"lang\":\"en\",\"text\":\"\"}\n", None, 1);
}

#[test]
fn invalid_utf8() {
    let m = corpus_error("latin1.tsv", b"lang\ttext\nen\tok\nen\tcaf\xe9\n", None, 3);
    assert!(m.contains("UTF-8"), "{m}");
    corpus_error("latin1.txt", b"ok\n\xff\xfe\n", Some("en"), 2);
}

#[test]
fn duplicate_ids() {
    let m = corpus_error("dup.tsv", b"id\tlang\ttext\na\ten\tone\nb\ten\ttwo\nc\ten\tthree\na\tko\tfour\n", None, 5);
    assert!(m.contains("\"a\" was already used on line 2"), "{m}");
    corpus_error(
        "dup.jsonl",
        b"{\"id\":\"1\",\"lang\":\"en\",\"text\":\"a\"}\n{\"id\":1,\"lang\":\"en\",\"text\":\"b\"}\n",
        None,
        2,
    );
}

#[test]
fn bad_language_tags() {
    for (tag, line) in [("english", 2), ("", 2), ("en-US", 2), ("e", 2), ("k0", 2)] {
        let body = format!("lang\ttext\n{tag}\tHello\n");
        let m = corpus_error(&format!("tag{line}{}.tsv", tag.len()), body.as_bytes(), None, line);
        assert!(m.contains("language tag") || m.contains("not a language tag"), "{tag}: {m}");
    }
}

#[test]
fn bad_headers_and_quotes() {
    let m = corpus_error("nohead.tsv", b"en\tHello\nko\tWorld\n", None, 1);
    assert!(m.contains("needs a language column") && m.contains("header"), "{m}");
    let m = corpus_error("twice.tsv", b"lang\tlanguage\ttext\n", None, 1);
    assert!(m.contains("twice"), "{m}");
    let m = corpus_error("quote.csv", b"lang,text\nen,\"open\n", None, 2);
    assert!(m.contains("quoted field"), "{m}");
    corpus_error("empty.csv", b"", None, 0);
    corpus_error("headeronly.csv", b"lang,text\n", None, 0);
}

#[test]
fn domains_from_a_column_or_field() {
    // TSV and CSV: an optional `domain` column (any case); an empty cell is no domain
    let p = temp("dom.tsv", b"id\tDomain\tlang\ttext\na\tnews\ten\tHello there.\nb\t\tko\t\xec\x95\x88\xeb\x85\x95\n");
    let c = load_corpus(&p, None).unwrap();
    assert_eq!(c[0].domain.as_deref(), Some("news"));
    assert_eq!(c[1].domain, None);
    let p = temp("dom.csv", b"lang,text,domain\nen,\"Hi, you.\", chat \n");
    assert_eq!(load_corpus(&p, None).unwrap()[0].domain.as_deref(), Some("chat"));
    // JSONL: an optional "domain" string
    let p = temp(
        "dom.jsonl",
        b"{\"lang\":\"en\",\"text\":\"Hi.\",\"domain\":\"code\"}\n{\"lang\":\"en\",\"text\":\"Yo.\"}\n",
    );
    let c = load_corpus(&p, None).unwrap();
    assert_eq!((c[0].domain.as_deref(), c[1].domain.as_deref()), (Some("code"), None));
    // too long for a routes file: refused with file and line
    let long = format!("lang\ttext\tdomain\nen\tHi.\t{}\n", "x".repeat(256));
    let msg = corpus_error("long.tsv", long.as_bytes(), None, 2);
    assert!(msg.contains("256 bytes"), "{msg}");
    assert!(Sentence::new("a", "en", "Hi.").unwrap().with_domain(&"y".repeat(300)).is_err());
    assert_eq!(Sentence::new("a", "en", "Hi.").unwrap().with_domain(" web ").unwrap().domain.as_deref(), Some("web"));
}

#[test]
fn fingerprints_without_domains_are_unchanged_and_domains_count() {
    // FNV-1a 64 over id 0x1f lang 0x1f text 0x1e per sentence of the shipped corpus, computed with a
    // few lines of Python from data/corpus/trilingual.tsv (the value before domains existed)
    assert_eq!(corpus::fingerprint(&corpus::builtin().unwrap()), "9e33ac1954414065");
    let a = vec![s("a", "en", "Hi.")];
    let b = vec![s("a", "en", "Hi.").with_domain("news").unwrap()];
    let c = vec![s("a", "en", "Hi.").with_domain("chat").unwrap()];
    assert_ne!(corpus::fingerprint(&a), corpus::fingerprint(&b));
    assert_ne!(corpus::fingerprint(&b), corpus::fingerprint(&c));
}
