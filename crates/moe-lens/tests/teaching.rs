//! The lab for students (issue 20): the one-line corpus selection, the questions' checks, and the
//! mistakes a Python student makes that the library can see, each failing with a message that says
//! what to write instead.

use std::path::PathBuf;

use moe_lens::corpus::{Corpus, Sentence};
use moe_lens::study::compare::{CompareOptions, Comparison, LayerComparison, Verdict};
use moe_lens::teach::{check_quiet, Outcome};

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-lens-teaching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A corpus of a student's own: ids that are not `<number>-<lang>`.
fn mine() -> Corpus {
    let p = temp(
        "mine.tsv",
        "id\tlang\ttext\nmine:1\ten\tGood morning.\nmine:2\tko\t좋은 아침이에요.\nmine:3\ten\tSee you.\n\
         mine:4\tko\t또 봐요.\nmine:5\tja\tおはよう。\n",
    );
    Corpus::load(&p).unwrap()
}

fn takes_a_slice(s: &[Sentence]) -> usize {
    s.len()
}

#[test]
fn take_keeps_the_first_n_of_each_language_which_on_the_shipped_corpus_are_the_first_n_triples() {
    let all = Corpus::builtin().unwrap();
    let three = all.take(3).unwrap();
    let ids: Vec<&str> = three.iter().map(|s| s.id.as_str()).collect();
    // the file lists triples in order 0001-en, 0001-ko, 0001-ja, 0002-en, …
    assert_eq!(
        ids,
        ["0001-en", "0001-ko", "0001-ja", "0002-en", "0002-ko", "0002-ja", "0003-en", "0003-ko", "0003-ja"]
    );
    // the value is reusable (the next cell still has `all`) and a slice where one is wanted
    assert_eq!(takes_a_slice(&all), 455 * 3);
    assert_eq!(takes_a_slice(&three), 9);
    let en_ko = all.languages(["en", "ko"]).unwrap().take(300).unwrap();
    assert_eq!(en_ko.len(), 600);
    assert_eq!(en_ko.language_tags(), ["en", "ko"]);
    assert!(en_ko.to_string().starts_with("600 sentences (en 300, ko 300)"), "{en_ko}");
    // more than there are: all of them, as a Python slice would
    assert_eq!(all.take(10_000).unwrap().len(), all.len());
}

#[test]
fn a_corpus_of_your_own_selects_the_same_way_whatever_its_ids() {
    let c = mine();
    let first = c.take(1).unwrap();
    let ids: Vec<&str> = first.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["mine:1", "mine:2", "mine:5"]);
    let ko = c.languages(["KO"]).unwrap();
    assert_eq!(ko.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["mine:2", "mine:4"]);
    assert!(c.source().ends_with("mine.tsv"));
}

#[test]
fn the_old_number_before_the_dash_filter_on_your_own_corpus_says_what_to_write() {
    // notebook 02's old selection: keep the sentences whose id starts with a number <= n
    let number = |s: &Sentence| s.id.split('-').next().and_then(|p| p.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let c = mine();
    let e = c.filter(|s| number(s) <= 2).unwrap_err().to_string();
    assert!(e.contains("kept none of the 5 sentences"), "{e}");
    assert!(e.contains("mine:1, mine:2, mine:3"), "shows what the ids look like: {e}");
    assert!(e.contains(".take(n)?") && e.contains(".languages("), "says what to write: {e}");
    // the same filter written by hand over the sentences, then made a corpus: an error there too
    let kept: Vec<Sentence> = c.iter().filter(|s| number(s) <= 2).cloned().collect();
    let e = Corpus::new(kept, "my selection").unwrap_err().to_string();
    assert!(e.contains("my selection has no sentences") && e.contains(".take(100)?"), "{e}");
    // on the shipped corpus the old filter still works
    assert_eq!(Corpus::builtin().unwrap().filter(|s| number(s) <= 2).unwrap().len(), 6);
}

#[test]
fn an_empty_selection_or_a_wrong_language_fails_in_the_cell_that_made_it() {
    let c = Corpus::builtin().unwrap();
    let e = c.take(0).unwrap_err().to_string();
    assert!(e.contains("take(0) keeps no sentence"), "{e}");
    let e = c.languages(["english"]).unwrap_err().to_string();
    assert!(e.contains("\"english\" is not a language tag") && e.contains("such as en, ko or ja"), "{e}");
    let e = c.languages(["zh"]).unwrap_err().to_string();
    assert!(e.contains("no sentence in \"zh\"") && e.contains("it has en, ja, ko"), "{e}");
    let none: [&str; 0] = [];
    let e = c.languages(none).unwrap_err().to_string();
    assert!(e.contains("no language given"), "{e}");
    let e = mine().languages(["ja"]).unwrap().filter(|s| s.text.len() > 100).unwrap_err().to_string();
    assert!(e.contains("kept none of the 1 sentences"), "{e}");
}

#[test]
fn the_sentence_count_from_the_environment() {
    let c = Corpus::builtin().unwrap();
    std::env::set_var("MOE_LENS_TEST_TEACHING_N", "2");
    assert_eq!(c.take_env("MOE_LENS_TEST_TEACHING_N").unwrap().len(), 6);
    std::env::set_var("MOE_LENS_TEST_TEACHING_N", "forty");
    let e = c.take_env("MOE_LENS_TEST_TEACHING_N").unwrap_err().to_string();
    assert!(e.contains("MOE_LENS_TEST_TEACHING_N=\"forty\"") && e.contains("number of sentences"), "{e}");
    assert_eq!(c.take_env("MOE_LENS_TEST_TEACHING_UNSET").unwrap().len(), c.len());
}

/// The right answers, written out here independently of the library's stored hashes.
const RIGHT: [(&str, &str); 3] = [("q1", "b"), ("q2", "b"), ("q4", "b")];

#[test]
fn a_right_answer_is_right_in_any_spelling() {
    for (q, a) in RIGHT {
        for spelling in [a.to_string(), a.to_uppercase(), format!("({a})"), format!(" {a}) ")] {
            assert_eq!(check_quiet(q, spelling.as_str()).unwrap(), Outcome::Right, "{q} {spelling:?}");
        }
        assert!(moe_lens::check(q, a).is_ok());
    }
}

#[test]
fn a_wrong_answer_gets_a_hint_that_does_not_depend_on_the_answer_and_does_not_give_it() {
    for (q, right) in RIGHT {
        let hints: Vec<String> = ["a", "c", "d", "16", "router"]
            .iter()
            .filter(|w| **w != right)
            .map(|w| match check_quiet(q, *w).unwrap() {
                Outcome::Wrong(h) => h,
                other => panic!("{q} {w:?}: {other:?}"),
            })
            .collect();
        assert!(hints.windows(2).all(|w| w[0] == w[1]), "{q}: the hint is the same whatever the wrong answer");
        let shown = Outcome::Wrong(hints[0].clone()).to_string();
        assert!(shown.starts_with("✗") && !shown.contains("✓"), "{shown}");
        for giveaway in
            [format!("\"{right}\""), format!("({right})"), format!("answer is {right}"), format!("{right})")]
        {
            assert!(!shown.contains(&giveaway), "{q}: {shown}");
        }
        // numbers are answers too, and wrong here
        assert!(matches!(check_quiet(q, 16).unwrap(), Outcome::Wrong(_)));
    }
}

#[test]
fn the_placeholder_prints_a_hint_and_an_unknown_question_is_an_error() {
    for q in ["q1", "q2", "q4"] {
        match check_quiet(q, "?").unwrap() {
            Outcome::NotAnswered(s) => assert!(s.contains("replace \"?\"") && s.contains("Hint:"), "{s}"),
            other => panic!("{q}: {other:?}"),
        }
        assert!(moe_lens::check(q, "?").is_ok(), "a placeholder does not fail the cell");
    }
    let e = moe_lens::check("q9", "b").unwrap_err().to_string();
    assert!(e.contains("no question \"q9\"") && e.contains("q1, q2, q3, q4"), "{e}");
    let e = moe_lens::check("q3", vec![1usize]).unwrap_err().to_string();
    assert!(e.contains("ko_en.check(\"q3\""), "q3 is checked against the comparison: {e}");
}

fn comparison(verdicts: &[Verdict]) -> Comparison {
    let layers = verdicts
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (lo, hi) = match v {
                Verdict::Fewer => (-2.0, -0.5),
                Verdict::More => (0.5, 2.0),
                Verdict::NoClearDifference => (-1.0, 1.0),
            };
            LayerComparison {
                layer: i,
                a_effective: 10.0,
                b_effective: 10.0,
                diff: (lo + hi) / 2.0,
                ci_low: lo,
                ci_high: hi,
                verdict: *v,
                answer: String::new(),
            }
        })
        .collect();
    Comparison {
        a: "ko".into(),
        b: "en".into(),
        k: 8,
        a_sentences: 10,
        b_sentences: 10,
        a_tokens: 100,
        b_tokens: 100,
        matched_tokens: 100,
        options: CompareOptions::default(),
        layers,
    }
}

#[test]
fn q3_is_checked_against_the_students_own_comparison() {
    use Verdict::*;
    let c = comparison(&[NoClearDifference, Fewer, NoClearDifference, More, Fewer]);
    assert_eq!(c.layers_with_difference(), [1, 3, 4]);
    assert!(c.check("q3", [4, 1, 3]).is_ok());
    assert!(c.check("q3", "?").is_ok());
    assert!(c.check("q3", [1]).is_ok(), "a wrong answer does not fail the cell");
    assert_eq!(c.check_quiet([3, 1, 4, 4]), Outcome::Right);
    match c.check_quiet([1, 2]) {
        Outcome::Wrong(h) => {
            assert!(h.contains("1 of your 2 layers are right, 1 should not be there and 2 are missing"), "{h}");
            assert!(!h.contains('3') && !h.contains('4'), "the hint does not name the layers: {h}");
        }
        other => panic!("{other:?}"),
    }
    let none = comparison(&[NoClearDifference, NoClearDifference]);
    assert_eq!(none.check_quiet("none"), Outcome::Right);
    assert!(matches!(none.check_quiet("?"), Outcome::NotAnswered(_)));
    let e = c.check("q1", [1]).unwrap_err().to_string();
    assert!(e.contains("check(\"q1\""), "{e}");
}
