//! Seeded hole selection. The holes depend only on the corpus, the seed, the requested count,
//! kinds and languages — never on the model or the completion settings — so two runs that differ
//! only in those evaluate exactly the same holes.

use std::collections::HashSet;
use std::str::FromStr;

use crate::actions::Language;

use super::LANGUAGES;
use super::corpus::SourceFile;

/// What the model has to fill.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HoleKind {
    /// From a point inside a non-blank line to its end.
    Line,
    /// 2–6 whole lines, starting at the first one's indentation, none indented less.
    Lines,
    /// A function's whole body (2–30 lines).
    Body,
}

impl HoleKind {
    pub const ALL: [HoleKind; 3] = [HoleKind::Line, HoleKind::Lines, HoleKind::Body];

    pub fn name(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Lines => "lines",
            Self::Body => "body",
        }
    }
}

impl FromStr for HoleKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "line" => Ok(Self::Line),
            "lines" => Ok(Self::Lines),
            "body" => Ok(Self::Body),
            _ => Err(format!(
                "unknown hole kind '{text}': use line, lines or body"
            )),
        }
    }
}

/// Lines of a `lines` hole.
const MULTI_LINES: std::ops::RangeInclusive<usize> = 2..=6;
/// Draws before a group is considered exhausted.
const TRIES: usize = 64;

/// One hole: the bytes `start..end` of a corpus file, removed and given to the model to fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hole {
    /// `path:byte:kind`, stable across models and settings.
    pub id: String,
    /// Index of the file in the slice given to [`select`].
    pub file: usize,
    pub kind: HoleKind,
    pub start: usize,
    pub end: usize,
}

impl Hole {
    pub fn new(file: usize, rel_path: &str, kind: HoleKind, start: usize, end: usize) -> Self {
        Self {
            id: format!("{rel_path}:{start}:{}", kind.name()),
            file,
            kind,
            start,
            end,
        }
    }
}

/// SplitMix64: a tiny, well-mixed PRNG whose streams are the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where a `line` hole may start in the line `start..end`: after at least one character of the
/// line's code, at the start of a token (never inside a word, never on a space), with something
/// worth completing (two characters or more, a letter or digit among them) up to the line's end.
pub fn line_cursors(text: &str, (start, end): (usize, usize)) -> Vec<usize> {
    let Some(content) = text.get(start..end) else {
        return Vec::new();
    };
    let indent = content.len() - content.trim_start().len();
    let content_end = content.trim_end().len();
    let mut cursors = Vec::new();
    let mut previous = None;
    for (i, c) in content.char_indices() {
        let before = previous;
        previous = Some(c);
        if i <= indent || i >= content_end || c.is_whitespace() {
            continue;
        }
        if before.is_some_and(is_word) && is_word(c) {
            continue;
        }
        let rest = &content[i..content_end];
        if rest.chars().count() >= 2 && rest.chars().any(char::is_alphanumeric) {
            cursors.push(start + i);
        }
    }
    cursors
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lengths a `lines` hole starting at line `first` may have: 2–6 lines, the first and last
/// not blank, none indented less than the first.
pub fn multi_line_lengths(file: &SourceFile, first: usize) -> Vec<usize> {
    let line = |i: usize| {
        file.lines
            .get(i)
            .and_then(|&(s, e)| file.text.get(s..e))
            .unwrap_or("")
    };
    let head = line(first);
    if head.trim().is_empty() {
        return Vec::new();
    }
    let indent = indentation(head);
    let mut lengths = Vec::new();
    for n in 2..=*MULTI_LINES.end() {
        let last = first + n - 1;
        if last >= file.lines.len() {
            break;
        }
        let text = line(last);
        if text.trim().is_empty() {
            continue;
        }
        if indentation(text) < indent {
            break;
        }
        lengths.push(n);
    }
    lengths
}

/// The places of one kind in one file, from which a group draws.
enum Places {
    /// Lines (index, end) with their `line` cursors.
    Line(Vec<(usize, Vec<usize>)>),
    /// First lines with their `lines` lengths.
    Lines(Vec<(usize, Vec<usize>)>),
    Body,
}

fn places(file: &SourceFile, kind: HoleKind) -> Option<Places> {
    let places = match kind {
        HoleKind::Line => Places::Line(
            file.lines
                .iter()
                .map(|&(start, end)| (end, line_cursors(&file.text, (start, end))))
                .filter(|(_, cursors)| !cursors.is_empty())
                .collect(),
        ),
        HoleKind::Lines => Places::Lines(
            (0..file.lines.len())
                .map(|first| (first, multi_line_lengths(file, first)))
                .filter(|(_, lengths)| !lengths.is_empty())
                .collect(),
        ),
        HoleKind::Body => Places::Body,
    };
    let empty = match &places {
        Places::Line(lines) => lines.is_empty(),
        Places::Lines(starts) => starts.is_empty(),
        Places::Body => file.bodies.is_empty(),
    };
    (!empty).then_some(places)
}

/// One language × kind: its files and its own random stream.
struct Group {
    kind: HoleKind,
    files: Vec<(usize, Places)>,
    rng: Rng,
    exhausted: bool,
}

impl Group {
    /// A new hole of this group, or `None` when `TRIES` draws found none not taken yet.
    fn draw(&mut self, corpus: &[SourceFile], taken: &mut HashSet<String>) -> Option<Hole> {
        if self.exhausted || self.files.is_empty() {
            self.exhausted = true;
            return None;
        }
        for _ in 0..TRIES {
            let (index, places) = &self.files[self.rng.below(self.files.len())];
            let file = &corpus[*index];
            let (start, end) = match places {
                Places::Line(lines) => {
                    let (line_end, cursors) = &lines[self.rng.below(lines.len())];
                    let cursor = cursors[self.rng.below(cursors.len())];
                    let line_end = *line_end;
                    let end = cursor
                        + file
                            .text
                            .get(cursor..line_end)
                            .unwrap_or("")
                            .trim_end()
                            .len();
                    (cursor, end)
                }
                Places::Lines(starts) => {
                    let (first, lengths) = &starts[self.rng.below(starts.len())];
                    let n = lengths[self.rng.below(lengths.len())];
                    let (s, _) = file.lines[*first];
                    let (ls, le) = file.lines[first + n - 1];
                    let start = s + indentation(file.text.get(s..).unwrap_or(""));
                    let end = ls + file.text.get(ls..le).unwrap_or("").trim_end().len();
                    (start, end)
                }
                Places::Body => file.bodies[self.rng.below(file.bodies.len())],
            };
            if start >= end {
                continue;
            }
            let hole = Hole::new(*index, &file.rel_path, self.kind, start, end);
            if taken.insert(hole.id.clone()) {
                return Some(hole);
            }
        }
        self.exhausted = true;
        None
    }
}

/// Picks `count` holes from `corpus`, spread evenly over the language × kind groups that have
/// places for them (a group that runs out leaves its share to the others). Each group draws from
/// its own stream seeded by `seed`, the language and the kind, over its language's files only, so
/// adding files of one language never moves the holes of another. Sorted by file and offset.
pub fn select(
    corpus: &[SourceFile],
    languages: &[Language],
    kinds: &[HoleKind],
    count: usize,
    seed: u64,
) -> Vec<Hole> {
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    order.sort_by(|&a, &b| corpus[a].rel_path.cmp(&corpus[b].rel_path));
    let mut groups = Vec::new();
    for (l, language) in LANGUAGES.iter().enumerate() {
        if !languages.contains(language) {
            continue;
        }
        for (k, kind) in HoleKind::ALL.iter().enumerate() {
            if !kinds.contains(kind) {
                continue;
            }
            let files: Vec<(usize, Places)> = order
                .iter()
                .filter(|&&i| corpus[i].language == *language)
                .filter_map(|&i| places(&corpus[i], *kind).map(|p| (i, p)))
                .collect();
            if files.is_empty() {
                continue;
            }
            let stream = (l * HoleKind::ALL.len() + k + 1) as u64;
            groups.push(Group {
                kind: *kind,
                files,
                rng: Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)),
                exhausted: false,
            });
        }
    }
    if groups.is_empty() {
        return Vec::new();
    }
    // Even shares; the remainder goes to groups in a seeded order.
    let mut turn: Vec<usize> = (0..groups.len()).collect();
    let mut rng = Rng::new(seed);
    for i in (1..turn.len()).rev() {
        turn.swap(i, rng.below(i + 1));
    }
    let mut quota = vec![count / groups.len(); groups.len()];
    for &g in turn.iter().take(count % groups.len()) {
        quota[g] += 1;
    }
    let mut taken = HashSet::new();
    let mut holes = Vec::new();
    for (group, &share) in groups.iter_mut().zip(&quota) {
        for _ in 0..share {
            match group.draw(corpus, &mut taken) {
                Some(hole) => holes.push(hole),
                None => break,
            }
        }
    }
    // Shares a group could not fill go to the others, one at a time.
    while holes.len() < count && groups.iter().any(|g| !g.exhausted) {
        for &g in &turn {
            if holes.len() >= count {
                break;
            }
            if let Some(hole) = groups[g].draw(corpus, &mut taken) {
                holes.push(hole);
            }
        }
    }
    holes.sort_by(|a, b| {
        (&corpus[a.file].rel_path, a.start, a.kind).cmp(&(
            &corpus[b.file].rel_path,
            b.start,
            b.kind,
        ))
    });
    holes
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON: &str = r#"import os
from dataclasses import dataclass


@dataclass
class Point:
    x: float
    y: float

    def norm(self) -> float:
        """The distance from the origin."""
        return (self.x ** 2 + self.y ** 2) ** 0.5

    def scaled(self, factor: float) -> "Point":
        if factor == 0:
            raise ValueError("factor must not be zero")
        return Point(self.x * factor, self.y * factor)


def read_points(path):
    points = []
    with open(path) as handle:
        for line in handle:
            x, y = line.split(",")
            points.append(Point(float(x), float(y)))
    return points
"#;

    const RUST: &str = r#"use std::collections::HashMap;

pub struct Counter {
    counts: HashMap<String, usize>,
}

impl Counter {
    pub fn new() -> Self {
        Self {
            counts: HashMap::new(),
        }
    }

    pub fn add(&mut self, word: &str) -> usize {
        let entry = self.counts.entry(word.to_owned()).or_insert(0);
        *entry += 1;
        *entry
    }

    pub fn most_common(&self) -> Option<(&str, usize)> {
        self.counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(w, n)| (w.as_str(), *n))
    }
}
"#;

    const JAVASCRIPT: &str = r#"const fs = require("fs");

function parseConfig(text) {
  const lines = text.split("\n");
  const config = {};
  for (const line of lines) {
    const [key, value] = line.split("=");
    config[key.trim()] = value.trim();
  }
  return config;
}

class Cache {
  constructor(limit) {
    this.limit = limit;
    this.items = new Map();
  }

  get(key) {
    const value = this.items.get(key);
    this.items.delete(key);
    this.items.set(key, value);
    return value;
  }
}

module.exports = { parseConfig, Cache };
"#;

    const GO: &str = r#"package stack

import "errors"

type Stack struct {
	items []int
}

func (s *Stack) Push(v int) {
	s.items = append(s.items, v)
	return
}

func (s *Stack) Pop() (int, error) {
	if len(s.items) == 0 {
		return 0, errors.New("empty stack")
	}
	v := s.items[len(s.items)-1]
	s.items = s.items[:len(s.items)-1]
	return v, nil
}

func (s *Stack) Peek() (int, bool) {
	if len(s.items) == 0 {
		return 0, false
	}
	return s.items[len(s.items)-1], true
}
"#;

    const C: &str = r#"#include <stdlib.h>
#include <string.h>

struct buffer {
    char *data;
    size_t len;
};

int buffer_append(struct buffer *b, const char *text)
{
    size_t n = strlen(text);
    char *grown = realloc(b->data, b->len + n + 1);
    if (grown == NULL) {
        return -1;
    }
    memcpy(grown + b->len, text, n + 1);
    b->data = grown;
    b->len += n;
    return 0;
}

void buffer_free(struct buffer *b) {
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

size_t buffer_count(const struct buffer *b, char c)
{
    size_t count = 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] == c) {
            count++;
        }
    }
    return count;
}
"#;

    fn corpus() -> Vec<SourceFile> {
        [
            ("demo/points.py", Language::Python, PYTHON),
            ("demo/counter.rs", Language::Rust, RUST),
            ("demo/config.js", Language::JavaScript, JAVASCRIPT),
            ("demo/stack.go", Language::Go, GO),
            ("demo/buffer.c", Language::C, C),
        ]
        .into_iter()
        .map(|(path, language, text)| {
            SourceFile::new(path, language, text.to_owned())
                .unwrap_or_else(|skip| panic!("{path}: {skip:?}"))
        })
        .collect()
    }

    #[test]
    fn the_same_seed_picks_the_same_holes_and_another_seed_others() {
        let corpus = corpus();
        let a = select(&corpus, &LANGUAGES, &HoleKind::ALL, 30, 7);
        let b = select(&corpus, &LANGUAGES, &HoleKind::ALL, 30, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 30);
        let c = select(&corpus, &LANGUAGES, &HoleKind::ALL, 30, 8);
        assert_ne!(a, c);
        // The order of the corpus does not matter.
        let mut reversed = corpus.clone();
        reversed.reverse();
        let ids = |holes: &[Hole]| holes.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(&select(&reversed, &LANGUAGES, &HoleKind::ALL, 30, 7)),
            ids(&a)
        );
    }

    #[test]
    fn every_language_and_kind_gets_holes_within_bounds() {
        let corpus = corpus();
        let holes = select(&corpus, &LANGUAGES, &HoleKind::ALL, 45, 0);
        assert_eq!(holes.len(), 45);
        let mut ids = HashSet::new();
        for language in LANGUAGES {
            for kind in HoleKind::ALL {
                let group: Vec<&Hole> = holes
                    .iter()
                    .filter(|h| corpus[h.file].language == language && h.kind == kind)
                    .collect();
                assert_eq!(group.len(), 3, "{language:?} {kind:?}");
            }
        }
        for hole in &holes {
            let file = &corpus[hole.file];
            let text = &file.text;
            assert!(ids.insert(hole.id.clone()), "duplicate {}", hole.id);
            assert_eq!(
                hole.id,
                format!("{}:{}:{}", file.rel_path, hole.start, hole.kind.name())
            );
            let expected = text.get(hole.start..hole.end).expect("char boundaries");
            assert!(!expected.trim().is_empty(), "{}", hole.id);
            assert_eq!(expected, expected.trim(), "{}: {expected:?}", hole.id);
            let lines = expected.lines().count();
            let line_start = text[..hole.start].rfind('\n').map_or(0, |i| i + 1);
            let before = &text[line_start..hole.start];
            let after = text[hole.end..].split('\n').next().unwrap_or("");
            assert!(
                after.trim().is_empty(),
                "{}: holes end at a line end",
                hole.id
            );
            match hole.kind {
                HoleKind::Line => {
                    assert_eq!(lines, 1, "{}", hole.id);
                    assert!(!before.trim().is_empty(), "{}: inside a line", hole.id);
                }
                HoleKind::Lines => {
                    assert!(MULTI_LINES.contains(&lines), "{}: {lines}", hole.id);
                    assert!(before.trim().is_empty(), "{}: at the indentation", hole.id);
                    for line in expected.lines().skip(1).filter(|l| !l.trim().is_empty()) {
                        assert!(indentation(line) >= before.len(), "{}: {line:?}", hole.id);
                    }
                }
                HoleKind::Body => {
                    assert!(super::super::corpus::BODY_LINES.contains(&lines));
                    assert!(before.trim().is_empty(), "{}", hole.id);
                    assert!(file.bodies.contains(&(hole.start, hole.end)));
                }
            }
        }
    }

    #[test]
    fn filters_and_scarce_groups() {
        let corpus = corpus();
        let python_bodies = select(&corpus, &[Language::Python], &[HoleKind::Body], 10, 3);
        // Only three bodies exist (norm, scaled, read_points): the group runs out.
        assert_eq!(python_bodies.len(), 3);
        // A scarce group's share goes to the others.
        let mixed = select(
            &corpus,
            &[Language::Python],
            &[HoleKind::Body, HoleKind::Line],
            10,
            3,
        );
        assert_eq!(mixed.len(), 10);
        assert_eq!(mixed.iter().filter(|h| h.kind == HoleKind::Body).count(), 3);
        assert!(select(&corpus, &[Language::Python], &HoleKind::ALL, 0, 3).is_empty());
        assert!(select(&[], &LANGUAGES, &HoleKind::ALL, 10, 3).is_empty());
        // Fewer holes than groups: a seeded few groups get one each.
        assert_eq!(select(&corpus, &LANGUAGES, &HoleKind::ALL, 4, 3).len(), 4);
    }

    #[test]
    fn one_language_s_holes_do_not_move_when_another_language_is_added() {
        let corpus = corpus();
        let python_only: Vec<SourceFile> = corpus
            .iter()
            .filter(|f| f.language == Language::Python)
            .cloned()
            .collect();
        let ids = |corpus: &[SourceFile]| {
            select(corpus, &[Language::Python], &HoleKind::ALL, 9, 5)
                .into_iter()
                .map(|h| h.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&python_only), ids(&corpus));
    }

    #[test]
    fn line_cursors_start_tokens_and_leave_something_to_complete() {
        let text = "    total = sum(values)\n";
        let cursors: Vec<&str> = line_cursors(text, (0, 23))
            .into_iter()
            .map(|c| &text[c..23])
            .collect();
        assert_eq!(
            cursors,
            vec!["= sum(values)", "sum(values)", "(values)", "values)"]
        );
        assert!(line_cursors("}\n", (0, 1)).is_empty());
        assert!(line_cursors("   \n", (0, 3)).is_empty());
    }

    #[test]
    fn kinds_parse_by_name() {
        for kind in HoleKind::ALL {
            assert_eq!(kind.name().parse::<HoleKind>(), Ok(kind));
        }
        assert!("block".parse::<HoleKind>().unwrap_err().contains("lines"));
    }
}
