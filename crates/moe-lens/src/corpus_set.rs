//! [`Corpus`]: a list of sentences that a notebook cell selects from in one line and the next cell
//! still has — `Corpus::builtin()?.languages(["en", "ko"])?.take(300)?`.
//!
//! Every selection returns a new corpus (the old one is untouched), and a selection that keeps no
//! sentence is an error **in the cell that made it**, saying why and what to write instead. Nothing
//! depends on the form of the ids: a corpus of your own with ids like `mine:2` selects the same way
//! as the shipped one with ids like `0001-en`.
//!
//! A `Corpus` is a `[Sentence]` wherever one is wanted (`lens.scan(&corpus, …)`, `corpus.len()`,
//! `corpus[0]`, `for s in corpus.iter()`), and cloning it is cheap (the sentences are shared).

use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use crate::corpus::{self, normalize_lang, Sentence};
use crate::error::{Error, Result};

/// Sentences to scan, with where they came from. Cheap to clone; derefs to `[Sentence]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Corpus {
    sentences: Arc<Vec<Sentence>>,
    source: Arc<str>,
}

impl Corpus {
    /// The shipped parallel corpus: everyday sentences in English, Korean and Japanese
    /// (see [`corpus::builtin`]).
    pub fn builtin() -> Result<Corpus> {
        Ok(Corpus { sentences: Arc::new(corpus::builtin()?), source: "the shipped corpus".into() })
    }

    /// A corpus file of your own: `.tsv`, `.csv` or `.jsonl` (each row names its language; ids are
    /// optional and may look like anything). For a `.txt` file, one sentence per line, use
    /// [`Corpus::load_txt`]. See [`crate::corpus`] for the formats.
    pub fn load(path: impl AsRef<Path>) -> Result<Corpus> {
        let path = path.as_ref();
        Corpus::new(corpus::load_corpus(path, None)?, &path.display().to_string())
    }

    /// A plain text file, one sentence per line, every line in language `lang` (`"ko"`).
    pub fn load_txt(path: impl AsRef<Path>, lang: &str) -> Result<Corpus> {
        let path = path.as_ref();
        Corpus::new(corpus::load_corpus(path, Some(lang))?, &path.display().to_string())
    }

    /// Sentences you built yourself (`source` says where they came from, for messages). An empty
    /// list is an error: a filter that kept nothing should fail here, not cells later.
    pub fn new(sentences: Vec<Sentence>, source: &str) -> Result<Corpus> {
        if sentences.is_empty() {
            return Err(Error::invalid(
                "corpus",
                format!(
                    "{source} has no sentences. If you filtered a list yourself, the filter kept nothing: ids \
                     differ between corpora (the shipped one uses 0001-en, a file of yours may use mine:2), so \
                     select with the corpus's methods instead, which work with any ids: \
                     .languages([\"en\", \"ko\"])?, .take(100)?"
                ),
            ));
        }
        Ok(Corpus { sentences: Arc::new(sentences), source: source.into() })
    }

    /// Where the sentences came from (`the shipped corpus`, a file path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The sentences as a slice (what `&corpus` also gives where a `&[Sentence]` is wanted).
    pub fn as_slice(&self) -> &[Sentence] {
        &self.sentences
    }

    /// The sentences as a `Vec` (a copy).
    pub fn to_vec(&self) -> Vec<Sentence> {
        self.sentences.to_vec()
    }

    /// The language tags present, sorted (`["en", "ja", "ko"]`).
    pub fn language_tags(&self) -> Vec<String> {
        corpus::languages(&self.sentences).into_keys().collect()
    }

    /// Keeps only the sentences in these languages (`["en", "ko"]`), in corpus order. An error if a
    /// tag is not a language tag (`"english"`), or the corpus has no sentence in it (`"zh"`): the
    /// message lists the languages it has.
    pub fn languages<S: AsRef<str>>(&self, langs: impl IntoIterator<Item = S>) -> Result<Corpus> {
        let have = self.language_tags();
        let mut want = Vec::new();
        for l in langs {
            let tag = normalize_lang(l.as_ref()).map_err(|msg| Error::invalid("language", msg))?;
            if !have.contains(&tag) {
                return Err(Error::invalid(
                    "language",
                    format!("{} has no sentence in {tag:?}: it has {}", self.source, have.join(", ")),
                ));
            }
            want.push(tag);
        }
        if want.is_empty() {
            return Err(Error::invalid(
                "language",
                format!(
                    "no language given: name at least one, e.g. .languages([\"en\", \"ko\"]) (this corpus has {})",
                    have.join(", ")
                ),
            ));
        }
        self.keep(|s| want.contains(&s.lang), &format!("{} in {}", self.source, want.join(", ")))
    }

    /// Keeps the first `n` sentences **of each language**, in corpus order (any ids). On the shipped
    /// corpus, whose every triple is complete, that is the first `n` triples (`0001` … `n`). A
    /// language with fewer than `n` keeps all of its sentences. `n = 0` is an error.
    pub fn take(&self, n: usize) -> Result<Corpus> {
        if n == 0 {
            return Err(Error::invalid(
                "number of sentences",
                "take(0) keeps no sentence: give how many sentences of each language to keep, 1 or more",
            ));
        }
        let mut seen = std::collections::HashMap::<&str, usize>::new();
        let kept: Vec<Sentence> = self
            .sentences
            .iter()
            .filter(|s| {
                let c = seen.entry(s.lang.as_str()).or_insert(0);
                *c += 1;
                *c <= n
            })
            .cloned()
            .collect();
        Corpus::new(kept, &format!("{} (first {n} per language)", self.source))
    }

    /// [`Corpus::take`] with `n` from the environment variable `var` (how an instructor sets the
    /// size for the whole class, e.g. `MOE_LENS_SENTENCES=40`); every sentence when it is not set.
    /// An error naming the variable if it is not a positive number.
    pub fn take_env(&self, var: &str) -> Result<Corpus> {
        match std::env::var(var) {
            Err(_) => Ok(self.clone()),
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => self.take(n),
                _ => Err(Error::invalid(
                    "environment variable",
                    format!("{var}={v:?}: give the number of sentences of each language to keep (1 or more), or unset it for all"),
                )),
            },
        }
    }

    /// Keeps the sentences for which `keep` says true (`corpus.filter(|s| s.text.len() < 40)?`).
    /// Keeping none is an error that shows what the ids of this corpus look like.
    pub fn filter(&self, keep: impl FnMut(&Sentence) -> bool) -> Result<Corpus> {
        self.keep(keep, &format!("{} (filtered)", self.source))
    }

    fn keep(&self, mut keep: impl FnMut(&Sentence) -> bool, source: &str) -> Result<Corpus> {
        let kept: Vec<Sentence> = self.sentences.iter().filter(|s| keep(s)).cloned().collect();
        if kept.is_empty() {
            let ids: Vec<&str> = self.sentences.iter().take(3).map(|s| s.id.as_str()).collect();
            return Err(Error::invalid(
                "selection",
                format!(
                    "the selection kept none of the {} sentences of {} (its ids look like {}): a filter on the \
                     form of the ids (such as a number before '-', as in 0001-en) only fits corpora whose ids \
                     have that form; use .take(n)? for the first n sentences of each language and \
                     .languages([…])? for languages, which work with any ids",
                    self.sentences.len(),
                    self.source,
                    ids.join(", ")
                ),
            ));
        }
        Ok(Corpus { sentences: Arc::new(kept), source: source.into() })
    }

    /// Prints a one-line summary and the first `n` sentences of each language.
    pub fn print(&self, n: usize) {
        println!("{self}");
        for lang in self.language_tags() {
            for s in self.sentences.iter().filter(|s| s.lang == lang).take(n) {
                println!("  {s}");
            }
        }
    }
}

impl Deref for Corpus {
    type Target = [Sentence];
    fn deref(&self) -> &[Sentence] {
        &self.sentences
    }
}

impl AsRef<[Sentence]> for Corpus {
    fn as_ref(&self) -> &[Sentence] {
        &self.sentences
    }
}

impl<'a> IntoIterator for &'a Corpus {
    type Item = &'a Sentence;
    type IntoIter = std::slice::Iter<'a, Sentence>;
    fn into_iter(self) -> Self::IntoIter {
        self.sentences.iter()
    }
}

/// One line: `1365 sentences (en 455, ja 455, ko 455) from the shipped corpus`.
impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {}", corpus::summary(&self.sentences), self.source)
    }
}

/// The summary, not every sentence (a cell ending in a corpus prints one line).
impl fmt::Debug for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Corpus({self})")
    }
}
