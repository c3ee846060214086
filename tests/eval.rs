//! `codellama-lsp eval` end to end on the fixture model: the report's shape, the same holes for
//! the same seed whatever the settings, and the comparison with a baseline report. The fixture's
//! weights are random, so the scores say nothing; a CI smoke test of a few seconds.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PYTHON: &str = r#"import json


class Store:
    def __init__(self, path):
        self.path = path
        self.items = {}

    def load(self):
        with open(self.path) as handle:
            self.items = json.load(handle)
        return len(self.items)

    def get(self, key, default=None):
        value = self.items.get(key, default)
        return value


def merge(a, b):
    result = dict(a)
    for key, value in b.items():
        result[key] = value
    return result
"#;

const PYTHON_2: &str = r#"def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def total(values):
    count = 0
    for value in values:
        count += value
    return count
"#;

const RUST: &str = r#"use std::collections::HashMap;

pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

pub fn longest(words: &[&str]) -> Option<usize> {
    let lengths = words.iter().map(|w| w.len());
    lengths.max()
}
"#;

const JAVASCRIPT: &str = r#"function range(start, end) {
  const out = [];
  for (let i = start; i < end; i++) {
    out.push(i);
  }
  return out;
}

class Queue {
  constructor() {
    this.items = [];
  }

  push(item) {
    this.items.push(item);
    return this.items.length;
  }
}

module.exports = { range, Queue };
"#;

const GO: &str = r#"package mathx

func Sum(values []int) int {
	total := 0
	for _, v := range values {
		total += v
	}
	return total
}

func Max(a, b int) int {
	if a > b {
		return a
	}
	return b
}
"#;

const C: &str = r#"#include <stddef.h>

size_t count_char(const char *text, char c)
{
    size_t n = 0;
    for (; *text; text++) {
        if (*text == c) {
            n++;
        }
    }
    return n;
}

int clamp(int v, int lo, int hi) {
    if (v < lo) return lo;
    if (v > hi) return hi;
    return v;
}
"#;

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/codellama-lsp-tiny-q8_0.gguf")
        .display()
        .to_string()
}

/// A corpus folder with two Python files, one of each other language, and files the eval must
/// leave out: one that does not parse, a minified one, one in another language.
fn corpus(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("codellama-lsp-eval-{}-{name}", std::process::id()))
        .join("corpus");
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    for (file, text) in [
        ("pkg/store.py", PYTHON),
        ("pkg/numbers.py", PYTHON_2),
        ("words.rs", RUST),
        ("range.js", JAVASCRIPT),
        ("mathx.go", GO),
        ("count.c", C),
        ("broken.py", "def broken(:\n    pass\n"),
        ("bundle.js", &format!("var a=[{}];\n", "1,".repeat(400))),
        ("notes.txt", "not code\n"),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(support::binary())
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn report(args: &[&str]) -> Value {
    let output = run(args);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn ids(report: &Value) -> Vec<String> {
    report["holes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn eval_reports_scores_on_the_same_holes_for_any_setting_and_compares_with_a_baseline() {
    let corpus = corpus("main");
    let root = corpus.display().to_string();
    let model = model();
    let saved = corpus.parent().unwrap().join("a.json");
    let common = [
        "eval",
        "--model",
        &model,
        &root,
        "--holes",
        "12",
        "--max-tokens",
        "8",
        "--seed",
        "3",
    ];
    let mut first_args = common.to_vec();
    first_args.extend(["--json", "--report", saved.to_str().unwrap()]);
    let first = report(&first_args);

    // The shape.
    assert_eq!(first["version"], 1);
    assert_eq!(first["model"]["infill"], true);
    assert_eq!(first["settings"]["seed"], 3);
    assert_eq!(first["settings"]["fim_order"], "spm");
    assert_eq!(first["settings"]["prefix_only"], false);
    assert_eq!(first["settings"]["context"], true);
    assert_eq!(first["settings"]["postprocess"], true);
    assert_eq!(
        first["corpus"]["files"],
        serde_json::json!({"c": 1, "go": 1, "javascript": 1, "python": 2, "rust": 1})
    );
    assert_eq!(
        first["corpus"]["skipped"],
        serde_json::json!({"does_not_parse": 1, "long_lines": 1})
    );
    let holes = first["holes"].as_array().unwrap();
    assert_eq!(holes.len(), 12);
    let mut kinds = BTreeSet::new();
    let mut languages = BTreeSet::new();
    for hole in holes {
        let id = hole["id"].as_str().unwrap();
        let file = hole["file"].as_str().unwrap();
        let kind = hole["kind"].as_str().unwrap();
        kinds.insert(kind.to_owned());
        languages.insert(hole["language"].as_str().unwrap().to_owned());
        // `corpus/<path>:<byte>:<kind>`, and the expected text is the file's at that byte.
        let offset: usize = id
            .strip_prefix(&format!("{file}:"))
            .and_then(|rest| rest.strip_suffix(&format!(":{kind}")))
            .and_then(|offset| offset.parse().ok())
            .unwrap_or_else(|| panic!("id {id}"));
        assert!(file.starts_with("corpus/"), "{file}");
        let text = std::fs::read_to_string(corpus.parent().unwrap().join(file)).unwrap();
        let expected = hole["expected"].as_str().unwrap();
        assert_eq!(&text[offset..offset + expected.len()], expected, "{id}");
        let similarity = hole["edit_similarity"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&similarity), "{id}: {similarity}");
        assert!(hole["exact"].is_boolean() && hole["parses"].is_boolean());
        assert!(hole["completion"].is_string() && hole["raw"].is_string());
        assert!(hole["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(hole["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(hole["line"].as_u64().unwrap() >= 1);
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["body", "line", "lines"].map(String::from))
    );
    assert!(languages.len() >= 4, "{languages:?}");
    let total = first["summary"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&total["language"], &total["kind"]),
        (&"all".into(), &"all".into())
    );
    assert_eq!(total["holes"], 12);
    for key in ["exact", "edit_similarity", "parses", "latency_ms"] {
        assert!(total[key].is_number(), "{key}");
    }
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(written, first);

    // The same seed, raw text, as a table: the same holes and, greedy, the same generations.
    let again_file = corpus.parent().unwrap().join("b.json");
    let mut again_args = common.to_vec();
    again_args.extend([
        "--no-postprocess",
        "--report",
        again_file.to_str().unwrap(),
        "--baseline",
        saved.to_str().unwrap(),
    ]);
    let output = run(&again_args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("language     kind    holes    exact"),
        "{stdout}"
    );
    assert!(stdout.contains("raw text"), "{stdout}");
    assert!(stdout.contains("all          all        12"), "{stdout}");
    assert!(
        stdout.contains("Compared with") && stdout.contains("12 shared holes"),
        "{stdout}"
    );
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(&again_file).unwrap()).unwrap();
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(again["settings"]["postprocess"], false);
    let raw = |r: &Value| -> Vec<Value> {
        r["holes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["raw"].clone())
            .collect()
    };
    assert_eq!(raw(&again), raw(&first));

    // Another order and no context: the same holes, compared with the first run.
    let mut none_args = common.to_vec();
    none_args.extend([
        "--fim-order",
        "none",
        "--no-context",
        "--json",
        "--baseline",
        saved.to_str().unwrap(),
    ]);
    let none = report(&none_args);
    assert_eq!(ids(&none), ids(&first));
    assert_eq!(none["settings"]["prefix_only"], true);
    assert_eq!(none["settings"]["context"], false);
    let baseline = &none["baseline"];
    assert_eq!(baseline["shared"], 12);
    assert_eq!(baseline["only_now"], 0);
    assert_eq!(baseline["only_baseline"], 0);
    let last = baseline["rows"].as_array().unwrap().last().unwrap();
    assert_eq!(last["holes"], 12);
    assert_eq!(last["baseline"]["exact"], total["exact"]);
}

#[test]
fn bad_arguments_fail_before_the_model_runs() {
    let corpus = corpus("bad");
    let root = corpus.display().to_string();
    let model = model();
    let not_a_report = corpus.join("count.c").display().to_string();
    for (args, expected) in [
        (
            vec![
                "eval",
                "--model",
                &model,
                &root,
                "--baseline",
                &not_a_report,
            ],
            "is not an eval report",
        ),
        (
            vec!["eval", "--model", &model, "/nonexistent/corpus"],
            "cannot find the corpus",
        ),
        (
            vec!["eval", "--model", &model, &root, "--languages", "lua"],
            "unknown language",
        ),
        (
            vec!["eval", "--model", &model, &root, "--kinds", "block"],
            "unknown hole kind",
        ),
    ] {
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(output.stdout.is_empty());
    }
}
