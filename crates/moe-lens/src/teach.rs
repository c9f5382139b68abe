//! The lab's questions and their checks: `moe_lens::check("q1", "b")?` prints ✓ or a hint, never
//! the answer.
//!
//! | id | notebook | the question | answer is |
//! |---|---|---|---|
//! | `q1` | 01 | why 16 hooks (one per what?) | a letter |
//! | `q2` | 01 | what a token like `안…` is | a letter |
//! | `q3` | 02 | which layers' intervals exclude 0 | the layers: `ko_en.check("q3", [2, 5])?` (it depends on your scan) |
//! | `q4` | 02 | what the tokenizer has to do with "Korean uses fewer experts" | a letter |
//!
//! The fixed answers are stored only as salted FNV-1a hashes, so the source and the messages do not
//! show them. A placeholder answer (`"?"`, as the notebooks ship) or a wrong one prints a hint and
//! is **not** an error, so running every cell of a notebook never fails; an unknown question id is
//! an error.

use std::fmt;

use crate::corpus::Fnv64;
use crate::error::{Error, Result};
use crate::study::Comparison;

/// An answer: text (`"b"`), a number (`16`) or a list of layers (`[2, 5]`).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A word or a letter; compared case-insensitively, ignoring surrounding spaces and `()`/`)`.
    Text(String),
    /// A number.
    Number(f64),
    /// Layer (or expert) indices; the order does not matter.
    List(Vec<usize>),
}

impl From<&str> for Answer {
    fn from(s: &str) -> Self {
        Answer::Text(s.to_string())
    }
}
impl From<String> for Answer {
    fn from(s: String) -> Self {
        Answer::Text(s)
    }
}
impl From<char> for Answer {
    fn from(c: char) -> Self {
        Answer::Text(c.to_string())
    }
}
impl From<i32> for Answer {
    fn from(n: i32) -> Self {
        Answer::Number(f64::from(n))
    }
}
impl From<usize> for Answer {
    fn from(n: usize) -> Self {
        Answer::Number(n as f64)
    }
}
impl From<f64> for Answer {
    fn from(x: f64) -> Self {
        Answer::Number(x)
    }
}
impl From<Vec<usize>> for Answer {
    fn from(v: Vec<usize>) -> Self {
        Answer::List(v)
    }
}
impl From<&[usize]> for Answer {
    fn from(v: &[usize]) -> Self {
        Answer::List(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Answer {
    fn from(v: [usize; N]) -> Self {
        Answer::List(v.to_vec())
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Text(s) => write!(f, "{s:?}"),
            Answer::Number(x) => write!(f, "{x}"),
            Answer::List(v) => write!(f, "{v:?}"),
        }
    }
}

impl Answer {
    fn is_placeholder(&self) -> bool {
        matches!(self, Answer::Text(s) if matches!(s.trim(), "" | "?" | "..." | "…"))
    }

    /// The canonical text that is hashed: lower case, no surrounding spaces or brackets.
    fn canonical(&self) -> String {
        match self {
            Answer::Text(s) => {
                s.trim().trim_matches(|c: char| c == '(' || c == ')' || c == '.' || c.is_whitespace()).to_lowercase()
            }
            Answer::Number(x) if x.fract() == 0.0 => format!("{}", *x as i64),
            Answer::Number(x) => format!("{x}"),
            Answer::List(v) => {
                let mut v = v.clone();
                v.sort_unstable();
                v.dedup();
                v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
            }
        }
    }
}

struct Question {
    id: &'static str,
    /// What kind of answer the question wants (said when the answer is a placeholder).
    wants: &'static str,
    /// Salted hash of the canonical right answer; `None` for questions checked against a result.
    hash: Option<u64>,
    hint: &'static str,
}

const SALT: &str = "moe-lens lab/";

const QUESTIONS: &[Question] = &[
    Question {
        id: "q1",
        wants: "a letter, a, b or c: check(\"q1\", \"a\")?",
        hash: Some(0xbb3b_ddc4_996f_e11a),
        hint: "count what there are 16 of in OLMoE-1B-7B (the first line `lens.hooks()` printed names them), and \
               what there are 64 of; a hook copies out one module's output.",
    },
    Question {
        id: "q2",
        wants: "a letter, a, b or c: check(\"q2\", \"a\")?",
        hash: Some(0xc3d0_f0c4_9e46_8603),
        hint: "look at the UTF-8 bytes printed for 안… and …안: how many bytes does one Hangul syllable take, \
               and how many does each of these tokens hold?",
    },
    Question {
        id: "q3",
        wants: "the layers, as a list, checked against your comparison: ko_en.check(\"q3\", [3, 7])?",
        hash: None,
        hint: "a layer counts when its whole interval lies on one side of 0 (both ends below 0, or both above); \
               read the interval column of the comparison, layer by layer.",
    },
    Question {
        id: "q4",
        wants: "a letter, a, b or c: check(\"q4\", \"a\")?",
        hash: Some(0xd48e_22c4_a797_1259),
        hint: "compare the number of different token ids per language with what the random test model \
               (tests/fixtures/olmoe-narrow), whose routers learned nothing, shows for Korean.",
    },
];

fn question(id: &str) -> Result<&'static Question> {
    let id = id.trim().to_ascii_lowercase();
    QUESTIONS.iter().find(|q| q.id == id).ok_or_else(|| {
        let ids: Vec<&str> = QUESTIONS.iter().map(|q| q.id).collect();
        Error::invalid("question", format!("there is no question {id:?}: the lab's questions are {}", ids.join(", ")))
    })
}

fn salted(id: &str, canonical: &str) -> u64 {
    let mut h = Fnv64::new();
    h.write(SALT.as_bytes());
    h.write(id.as_bytes());
    h.write(b"/");
    h.write(canonical.as_bytes());
    h.0
}

/// What a check found; printed by [`check`], returned by [`check_quiet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer is right.
    Right,
    /// Not answered yet (the placeholder): what to write, and a hint.
    NotAnswered(String),
    /// A wrong answer: a hint (never the answer).
    Wrong(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Right => write!(f, "✓ right"),
            Outcome::NotAnswered(s) => write!(f, "… not answered yet: {s}"),
            Outcome::Wrong(s) => write!(f, "✗ not yet. Hint: {s}"),
        }
    }
}

/// Checks an answer to one of the lab's questions without printing: [`Outcome`]. An unknown id is
/// an error, and so is `q3`, which is checked against a comparison ([`Comparison::check`]).
pub fn check_quiet(id: &str, answer: impl Into<Answer>) -> Result<Outcome> {
    let q = question(id)?;
    let answer = answer.into();
    let Some(hash) = q.hash else {
        return Err(Error::invalid(
            "question",
            format!("{} depends on your own results: check it with {}", q.id, q.wants),
        ));
    };
    if answer.is_placeholder() {
        return Ok(Outcome::NotAnswered(format!("replace \"?\" with {}. Hint: {}", q.wants, q.hint)));
    }
    Ok(if salted(q.id, &answer.canonical()) == hash { Outcome::Right } else { Outcome::Wrong(q.hint.to_string()) })
}

/// Checks an answer to one of the lab's questions and prints `✓` or a hint (never the answer):
/// `moe_lens::check("q1", "b")?;`. A wrong or placeholder answer is not an error (the cell still
/// runs); an unknown question id is.
pub fn check(id: &str, answer: impl Into<Answer>) -> Result<()> {
    let q = question(id)?;
    println!("{}: {}", q.id, check_quiet(id, answer)?);
    Ok(())
}

impl Comparison {
    /// Checks question `q3` against this comparison: the layers whose interval excludes 0
    /// (`ko_en.check("q3", [3, 7])?`). Prints ✓ or a hint with how many of your layers are right
    /// and how many are missing; never the layers themselves.
    pub fn check(&self, id: &str, layers: impl Into<Answer>) -> Result<()> {
        let q = question(id)?;
        if q.hash.is_some() {
            return Err(Error::invalid(
                "question",
                format!("{} is not about a comparison: check it with {}", q.id, q.wants),
            ));
        }
        println!("{}: {}", q.id, self.check_quiet(layers));
        Ok(())
    }

    /// [`Comparison::check`] for `q3` without printing: the [`Outcome`].
    pub fn check_quiet(&self, answer: impl Into<Answer>) -> Outcome {
        let answer = answer.into();
        let q3 = &QUESTIONS[2];
        if answer.is_placeholder() {
            return Outcome::NotAnswered(format!("replace \"?\" with {}. Hint: {}", q3.wants, q3.hint));
        }
        let mut given = match answer {
            Answer::List(v) => v,
            Answer::Text(t) if matches!(t.trim().to_lowercase().as_str(), "none" | "[]") => vec![],
            Answer::Number(x) if x >= 0.0 && x.fract() == 0.0 => vec![x as usize],
            other => {
                return Outcome::Wrong(format!(
                    "{other} is not a list of layers: write them in brackets, e.g. [3, 7], or \"none\". {}",
                    q3.hint
                ))
            }
        };
        given.sort_unstable();
        given.dedup();
        let want = self.layers_with_difference();
        if given == want {
            return Outcome::Right;
        }
        let right = given.iter().filter(|l| want.contains(l)).count();
        let extra = given.len() - right;
        let missing = want.len() - right;
        Outcome::Wrong(format!(
            "{right} of your {} layers are right, {extra} should not be there and {missing} are missing. {}",
            given.len(),
            q3.hint
        ))
    }
}
