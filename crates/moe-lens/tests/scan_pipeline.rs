//! `checkpoint::scan_to_dir` writes on a thread of its own, overlapped with the next batches, and
//! commits `state.json` at most every `commit_every`. Checked on the demo model against the same
//! scan run in memory (`study::scan`, then `Study::save`: no writer thread, no state):
//!
//! - a scan directory holds the same `routes.bin` and `counts.json`, byte for byte, and a
//!   `state.json` that is complete, claims exactly `routes.bin` and holds the same counts, whether
//!   the state is committed after every batch or only at the end;
//! - a scan whose writer fails after some batches (its temporary state file blocked) returns the
//!   error naming that file, leaves a state that claims only routes on disk, and a rerun continues
//!   it to the same outputs;
//! - a scan interrupted mid-way (a panic in the progress callback, nothing committed or a commit
//!   after every batch) leaves a routes tail past what the state claims, which the rerun cuts off,
//!   again ending with the same outputs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use moe_lens::corpus;
use moe_lens::prelude::*;
use moe_lens::study::checkpoint::{self, read_state, DirScan, RunInfo, ScanEvent, STATE_FILE};
use moe_lens::study::{self, routes, CompareOptions, Counts, ScanOptions, Shard, COUNTS_FILE, ROUTES_FILE};

fn work(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-lens-pipeline-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn options() -> ScanOptions {
    ScanOptions { batch_size: Some(2), progress: false, ..ScanOptions::default() }
}

fn job(sentences: &[Sentence], commit_every: Duration) -> DirScan {
    DirScan {
        run: RunInfo {
            model: "demo".into(),
            corpus: "builtin[..24]".into(),
            corpus_fingerprint: corpus::fingerprint(sentences),
            corpus_sentences: sentences.len(),
            lang: None,
            dtype: String::new(),
            by_script: false,
            skip_common: false,
            batch: 2,
            batch_tokens: 0,
        },
        shard: Shard::ALL,
        options: options(),
        reference: None,
        compare: CompareOptions { replicates: 20, ..CompareOptions::default() },
        commit_every,
    }
}

/// The in-memory scan's outputs (the expected ones).
fn expected(lens: &Lens, sentences: &[Sentence], dir: &Path) {
    let mut s = study::scan(lens, sentences, &options()).unwrap();
    s.sort();
    let report = s.report(None, &CompareOptions { replicates: 20, ..CompareOptions::default() }).unwrap();
    s.save(dir, &report).unwrap();
}

/// `dir` holds the expected routes and counts, and a complete state claiming exactly them.
fn assert_as_expected(expected: &Path, dir: &Path) {
    for f in [ROUTES_FILE, COUNTS_FILE] {
        assert!(read(&expected.join(f)) == read(&dir.join(f)), "{f} differs from the in-memory scan's");
    }
    let st = read_state(dir).unwrap().unwrap();
    assert!(st.complete && st.done == st.sentences, "{} of {}", st.done, st.sentences);
    assert_eq!(st.routes_bytes, read(&dir.join(ROUTES_FILE)).len() as u64);
    let counts = Counts::load_json(expected.join(COUNTS_FILE)).unwrap();
    assert_eq!(Counts::from_json(&st.counts).unwrap(), counts);
    // and what routes.bin holds adds up to those counts
    let ((layers, k, experts), records) = routes::read_file(&dir.join(ROUTES_FILE)).unwrap();
    assert_eq!(Counts::from_routes("demo", layers, experts, k, &records).unwrap(), counts);
}

/// The state on disk claims only routes that are in routes.bin, and those add up to its counts.
fn assert_consistent(dir: &Path) -> usize {
    let st = read_state(dir).unwrap().unwrap();
    let bytes = read(&dir.join(ROUTES_FILE));
    assert!(
        bytes.len() as u64 >= st.routes_bytes,
        "the state claims {} bytes, routes.bin has {}",
        st.routes_bytes,
        bytes.len()
    );
    let claimed = dir.join("claimed.bin");
    std::fs::write(&claimed, &bytes[..st.routes_bytes as usize]).unwrap();
    let ((layers, k, experts), records) = routes::read_file(&claimed).unwrap();
    std::fs::remove_file(&claimed).unwrap();
    assert_eq!(records.len(), st.done);
    let c = Counts::from_json(&st.counts).unwrap();
    assert_eq!(Counts::from_routes(&c.model, layers, experts, k, &records).unwrap(), c);
    st.done
}

fn scan(lens: &Lens, sentences: &[Sentence], dir: &Path, every: Duration) -> (moe_lens::Result<()>, bool) {
    let mut resumed = false;
    let res = checkpoint::scan_to_dir(lens, sentences, &job(sentences, every), dir, &mut |ev| {
        if let ScanEvent::Start { resumed: r, .. } = ev {
            resumed = r;
        }
    });
    (res.map(|_| ()), resumed)
}

#[test]
fn the_writer_thread_writes_what_the_scan_computes_and_resumes_after_failures() {
    let lens = load("demo").unwrap();
    let sentences: Vec<Sentence> = corpus::builtin().unwrap().into_iter().take(24).collect(); // 12 batches
    let w = work("all");
    let want = w.join("expected");
    expected(&lens, &sentences, &want);

    // committed at the end only (the default 2 s is longer than this scan), and after every batch
    for (name, every) in [("end", Duration::from_secs(3600)), ("every", Duration::ZERO)] {
        let dir = w.join(name);
        let (res, resumed) = scan(&lens, &sentences, &dir, every);
        res.unwrap();
        assert!(!resumed);
        assert_as_expected(&want, &dir);
    }

    // the writer fails after 5 batches: the state's temporary file is blocked by a directory
    let dir = w.join("writer-fails");
    let blocker = dir.join(format!(".{STATE_FILE}.tmp.{}", std::process::id()));
    let mut batches = 0;
    let res = checkpoint::scan_to_dir(&lens, &sentences, &job(&sentences, Duration::ZERO), &dir, &mut |ev| {
        if let ScanEvent::Batch(_) = ev {
            batches += 1;
            if batches == 5 {
                std::fs::create_dir_all(&blocker).unwrap();
            }
        }
    });
    let err = res.err().expect("the scan should fail when its state cannot be written").to_string();
    assert!(err.contains(&format!(".{STATE_FILE}.tmp.")), "the error names the file: {err}");
    let done = assert_consistent(&dir);
    assert!(done < sentences.len(), "the failed scan claims {done} sentences");
    std::fs::remove_dir(&blocker).unwrap();
    let (res, resumed) = scan(&lens, &sentences, &dir, Duration::ZERO);
    res.unwrap();
    assert!(resumed);
    assert_as_expected(&want, &dir);

    // interrupted after 7 batches (a panic in the callback stands in for a kill): with nothing
    // committed since the start, and with a commit after every batch
    for (name, every) in [("killed-end", Duration::from_secs(3600)), ("killed-every", Duration::ZERO)] {
        let dir = w.join(name);
        let mut batches = 0;
        let interrupted = catch_unwind(AssertUnwindSafe(|| {
            checkpoint::scan_to_dir(&lens, &sentences, &job(&sentences, every), &dir, &mut |ev| {
                if let ScanEvent::Batch(_) = ev {
                    batches += 1;
                    if batches == 7 {
                        panic!("interrupted on purpose");
                    }
                }
            })
            .map(|_| ())
        }));
        assert!(interrupted.is_err(), "the scan should have been interrupted");
        let done = assert_consistent(&dir);
        let st = read_state(&dir).unwrap().unwrap();
        let on_disk = read(&dir.join(ROUTES_FILE)).len() as u64;
        if every.is_zero() {
            assert!((2..=14).contains(&done), "{done} sentences committed after 7 batches of 2");
        } else {
            // nothing committed after the start, though the writer appended batches: a tail
            assert_eq!(done, 0);
            assert!(on_disk > st.routes_bytes, "routes.bin has no tail past the state ({on_disk} bytes)");
        }
        let (res, resumed) = scan(&lens, &sentences, &dir, every);
        res.unwrap();
        assert!(resumed);
        assert_as_expected(&want, &dir);
    }
    let _ = std::fs::remove_dir_all(&w);
}

#[test]
fn tokenizing_in_parallel_reports_the_first_bad_sentence_in_corpus_order() {
    let lens = load("demo").unwrap();
    let max = lens.config().max_position_embeddings;
    let sentence = |id: &str, text: String| Sentence { id: id.into(), lang: "en".into(), text, domain: None };
    let long = "word ".repeat(max + 10);
    let mut corpus: Vec<Sentence> = corpus::builtin().unwrap().into_iter().take(40).collect();
    corpus.insert(17, sentence("too-long-1", long.clone()));
    corpus.insert(29, sentence("too-long-2", long.clone()));
    let opts = options();
    let err = |positions: Vec<usize>| match study::Scanner::for_positions(&lens, &corpus, positions, &opts) {
        Ok(_) => panic!("the scan should be refused"),
        Err(e) => e.to_string(),
    };
    // corpus order; the same positions in another order: the first one given
    let e = err((0..corpus.len()).collect());
    assert!(e.contains("too-long-1") && !e.contains("too-long-2"), "{e}");
    let e = err((0..corpus.len()).rev().collect());
    assert!(e.contains("too-long-2") && !e.contains("too-long-1"), "{e}");
    // a position past the corpus before a bad sentence is what is reported
    let e = err(vec![0, 1, 1000, 17]);
    assert!(e.contains("1000 is past the corpus"), "{e}");
    // and the good sentences are tokenized as one by one
    let good: Vec<usize> = (0..corpus.len()).filter(|&p| p != 17 && p != 29).collect();
    let mut s = study::Scanner::for_positions(&lens, &corpus, good.clone(), &opts).unwrap();
    while s.step().unwrap().is_some() {}
    for r in &s.study().routes {
        let toks = lens.tokenize(&corpus[r.index as usize].text).unwrap();
        assert_eq!(r.token_ids, toks.iter().map(|t| t.id).collect::<Vec<_>>(), "{}", r.id);
    }
    assert_eq!(s.study().routes.len(), good.len());
}
