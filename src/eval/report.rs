//! Per-hole results, the summary per language and kind, the table, and the comparison with a
//! previous report on the holes both share.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::holes::HoleKind;
use super::{LANGUAGES, language_name};

/// The report format's version (bumped when fields change meaning).
pub const REPORT_VERSION: u32 = 1;

/// One hole, filled and scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoleResult {
    /// `path:byte:kind`, the same in every report made from the same corpus and seed.
    pub id: String,
    pub file: String,
    pub language: String,
    pub kind: HoleKind,
    /// 1-based line of the hole's start.
    pub line: usize,
    pub expected: String,
    /// What was inserted (post-processed unless switched off; empty when nothing was).
    pub completion: String,
    /// The model's raw text.
    #[serde(default)]
    pub raw: String,
    pub exact: bool,
    pub edit_similarity: f64,
    /// The file with the completion in place parses with no error or missing nodes.
    pub parses: bool,
    /// Prompt building, generation and post-processing.
    pub latency_ms: f64,
    #[serde(default)]
    pub prompt_tokens: usize,
}

/// Means over a set of holes (rates in 0–1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// A language name, or `all`.
    pub language: String,
    /// A hole kind's name, or `all`.
    pub kind: String,
    pub holes: usize,
    pub exact: f64,
    pub edit_similarity: f64,
    pub parses: f64,
    /// Holes where nothing was inserted (an empty completion leaves a file that often parses).
    #[serde(default)]
    pub empty: f64,
    pub latency_ms: f64,
}

impl Row {
    fn of(language: &str, kind: &str, results: &[&HoleResult]) -> Self {
        let n = results.len().max(1) as f64;
        let mean = |f: &dyn Fn(&HoleResult) -> f64| results.iter().map(|r| f(r)).sum::<f64>() / n;
        Self {
            language: language.to_owned(),
            kind: kind.to_owned(),
            holes: results.len(),
            exact: mean(&|r| f64::from(u8::from(r.exact))),
            edit_similarity: mean(&|r| r.edit_similarity),
            parses: mean(&|r| f64::from(u8::from(r.parses))),
            empty: mean(&|r| f64::from(u8::from(r.completion.trim().is_empty()))),
            latency_ms: mean(&|r| r.latency_ms),
        }
    }
}

/// The model a report was made with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelInfo {
    pub name: String,
    pub path: String,
    /// Whether the model has infilling tokens (else every prompt was prefix-only).
    pub infill: bool,
}

/// What a run was asked to do; two reports compare best when only the model or one completion
/// setting differs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub seed: u64,
    pub holes: usize,
    pub kinds: Vec<HoleKind>,
    pub languages: Vec<String>,
    pub max_tokens: usize,
    pub context_tokens: usize,
    /// The order asked for.
    pub fim_order: String,
    /// Whether prompts were prefix-only (`none`, or a model without infilling tokens).
    pub prefix_only: bool,
    /// Workspace context from the other corpus files of the same language.
    pub context: bool,
    pub postprocess: bool,
}

/// The corpus the holes came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub roots: Vec<String>,
    /// Files that qualified, per language.
    pub files: BTreeMap<String, usize>,
    /// Files left out, per reason.
    pub skipped: BTreeMap<String, usize>,
}

/// The whole evaluation, as `--json` prints and `--report` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub model: ModelInfo,
    pub settings: Settings,
    pub corpus: CorpusInfo,
    pub summary: Vec<Row>,
    pub holes: Vec<HoleResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Comparison>,
}

/// A previous report as read back for `--baseline`: only the holes are needed.
#[derive(Clone, Debug, Deserialize)]
pub struct Baseline {
    #[serde(default)]
    pub model: ModelInfo,
    #[serde(default)]
    pub settings: Option<Settings>,
    pub holes: Vec<HoleResult>,
}

/// Rows per language × kind in table order, then per kind over all languages (when there are
/// several), then everything.
pub fn summarize(results: &[HoleResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    let languages: Vec<&str> = LANGUAGES.iter().map(|&l| language_name(l)).collect();
    let mut present = 0;
    for language in &languages {
        let mut any = false;
        for kind in HoleKind::ALL {
            let group: Vec<&HoleResult> = results
                .iter()
                .filter(|r| r.language == *language && r.kind == kind)
                .collect();
            if !group.is_empty() {
                any = true;
                rows.push(Row::of(language, kind.name(), &group));
            }
        }
        present += usize::from(any);
    }
    // Languages a newer version might add still count in the totals.
    if present > 1
        || results
            .iter()
            .any(|r| !languages.contains(&r.language.as_str()))
    {
        for kind in HoleKind::ALL {
            let group: Vec<&HoleResult> = results.iter().filter(|r| r.kind == kind).collect();
            if !group.is_empty() {
                rows.push(Row::of("all", kind.name(), &group));
            }
        }
    }
    let all: Vec<&HoleResult> = results.iter().collect();
    rows.push(Row::of("all", "all", &all));
    rows
}

/// The summary as a fixed-width table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12} {:<6} {:>6} {:>8} {:>9} {:>8} {:>8} {:>11}\n",
        "language", "kind", "holes", "exact", "edit sim", "parses", "empty", "latency ms"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<12} {:<6} {:>6} {:>7.1}% {:>9.3} {:>7.1}% {:>7.1}% {:>11.0}\n",
            row.language,
            row.kind,
            row.holes,
            row.exact * 100.0,
            row.edit_similarity,
            row.parses * 100.0,
            row.empty * 100.0,
            row.latency_ms
        ));
    }
    out
}

/// A group's scores now and in the baseline, over the holes both reports have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaRow {
    pub language: String,
    pub kind: String,
    pub holes: usize,
    pub now: Row,
    pub baseline: Row,
    /// Holes whose edit similarity rose / fell.
    pub better: usize,
    pub worse: usize,
}

/// How this run compares with a baseline report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The baseline's file, as given.
    pub file: String,
    pub baseline_model: String,
    /// Holes in both reports (only these are compared).
    pub shared: usize,
    pub only_now: usize,
    pub only_baseline: usize,
    pub rows: Vec<DeltaRow>,
}

/// Compares `now` with `baseline` hole by hole, grouped like [`summarize`].
pub fn compare(now: &[HoleResult], baseline: &Baseline, file: &str) -> Comparison {
    let before: HashMap<&str, &HoleResult> =
        baseline.holes.iter().map(|r| (r.id.as_str(), r)).collect();
    let pairs: Vec<(&HoleResult, &HoleResult)> = now
        .iter()
        .filter_map(|r| before.get(r.id.as_str()).map(|b| (r, *b)))
        .collect();
    let now_rows = summarize(&pairs.iter().map(|(n, _)| (*n).clone()).collect::<Vec<_>>());
    let baseline_rows = summarize(&pairs.iter().map(|(_, b)| (*b).clone()).collect::<Vec<_>>());
    let rows = now_rows
        .into_iter()
        .zip(baseline_rows)
        .map(|(now_row, baseline_row)| {
            let in_row = |r: &HoleResult| {
                (now_row.language == "all" || r.language == now_row.language)
                    && (now_row.kind == "all" || r.kind.name() == now_row.kind)
            };
            let (mut better, mut worse) = (0, 0);
            for (n, b) in pairs.iter().filter(|(n, _)| in_row(n)) {
                if n.edit_similarity > b.edit_similarity + 1e-9 {
                    better += 1;
                } else if n.edit_similarity + 1e-9 < b.edit_similarity {
                    worse += 1;
                }
            }
            DeltaRow {
                language: now_row.language.clone(),
                kind: now_row.kind.clone(),
                holes: now_row.holes,
                now: now_row,
                baseline: baseline_row,
                better,
                worse,
            }
        })
        .collect();
    Comparison {
        file: file.to_owned(),
        baseline_model: baseline.model.name.clone(),
        shared: pairs.len(),
        only_now: now.len() - pairs.len(),
        only_baseline: baseline.holes.len() - pairs.len(),
        rows,
    }
}

/// The comparison as a table: each score now, and in parentheses its change from the baseline.
pub fn delta_table(comparison: &Comparison) -> String {
    let mut out = format!(
        "Compared with {} on {} shared holes ({} only here, {} only there); now (change):\n",
        comparison.file, comparison.shared, comparison.only_now, comparison.only_baseline
    );
    out.push_str(&format!(
        "{:<12} {:<6} {:>6} {:>15} {:>17} {:>15} {:>15} {:>15} {:>12}\n",
        "language",
        "kind",
        "holes",
        "exact %",
        "edit sim",
        "parses %",
        "empty %",
        "latency ms",
        "better/worse"
    ));
    let percent =
        |now: f64, before: f64| format!("{:.1} ({:+.1})", now * 100.0, (now - before) * 100.0);
    for row in &comparison.rows {
        let (b, n) = (&row.baseline, &row.now);
        out.push_str(&format!(
            "{:<12} {:<6} {:>6} {:>15} {:>17} {:>15} {:>15} {:>15} {:>12}\n",
            row.language,
            row.kind,
            row.holes,
            percent(n.exact, b.exact),
            format!(
                "{:.3} ({:+.3})",
                n.edit_similarity,
                n.edit_similarity - b.edit_similarity
            ),
            percent(n.parses, b.parses),
            percent(n.empty, b.empty),
            format!("{:.0} ({:+.0})", n.latency_ms, n.latency_ms - b.latency_ms),
            format!("{}/{}", row.better, row.worse),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        id: &str,
        language: &str,
        kind: HoleKind,
        exact: bool,
        similarity: f64,
    ) -> HoleResult {
        HoleResult {
            id: id.to_owned(),
            file: "f".into(),
            language: language.into(),
            kind,
            line: 1,
            expected: "x".into(),
            completion: if exact { "x".into() } else { "y".into() },
            raw: String::new(),
            exact,
            edit_similarity: similarity,
            parses: exact,
            latency_ms: 10.0,
            prompt_tokens: 5,
        }
    }

    #[test]
    fn summary_rows_per_language_and_kind_then_totals() {
        let results = vec![
            result("a", "rust", HoleKind::Line, true, 1.0),
            result("b", "python", HoleKind::Line, false, 0.5),
            result("c", "python", HoleKind::Line, true, 1.0),
            result("d", "python", HoleKind::Body, false, 0.0),
        ];
        let rows = summarize(&results);
        let keys: Vec<(&str, &str, usize)> = rows
            .iter()
            .map(|r| (r.language.as_str(), r.kind.as_str(), r.holes))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("python", "line", 2),
                ("python", "body", 1),
                ("rust", "line", 1),
                ("all", "line", 3),
                ("all", "body", 1),
                ("all", "all", 4),
            ]
        );
        assert_eq!(rows[0].exact, 0.5);
        assert_eq!(rows[0].edit_similarity, 0.75);
        assert_eq!(rows[5].exact, 0.5);
        let table = table(&rows);
        assert!(table.starts_with("language"), "{table}");
        assert!(
            table.contains("python       line        2    50.0%     0.750    50.0%     0.0%"),
            "{table}"
        );
        // One language: no per-kind totals.
        let one = summarize(&results[1..]);
        assert_eq!(one.len(), 3);
        assert_eq!(summarize(&[]).len(), 1);
    }

    #[test]
    fn comparisons_use_shared_holes_only() {
        let baseline = Baseline {
            model: ModelInfo {
                name: "old".into(),
                ..ModelInfo::default()
            },
            settings: None,
            holes: vec![
                result("a", "python", HoleKind::Line, false, 0.5),
                result("b", "python", HoleKind::Line, false, 0.5),
                result("gone", "python", HoleKind::Line, true, 1.0),
            ],
        };
        let now = vec![
            result("a", "python", HoleKind::Line, true, 1.0),
            result("b", "python", HoleKind::Line, false, 0.25),
            result("new", "python", HoleKind::Line, true, 1.0),
        ];
        let comparison = compare(&now, &baseline, "a.json");
        assert_eq!(
            (
                comparison.shared,
                comparison.only_now,
                comparison.only_baseline
            ),
            (2, 1, 1)
        );
        let total = comparison.rows.last().unwrap();
        assert_eq!(
            (total.language.as_str(), total.kind.as_str()),
            ("all", "all")
        );
        assert_eq!(total.baseline.exact, 0.0);
        assert_eq!(total.now.exact, 0.5);
        assert_eq!((total.better, total.worse), (1, 1));
        let text = delta_table(&comparison);
        assert!(text.contains("2 shared holes"), "{text}");
        assert!(text.contains("50.0 (+50.0)"), "{text}");
    }

    #[test]
    fn reports_round_trip_through_json_and_read_back_as_baselines() {
        let holes = vec![result("a", "go", HoleKind::Body, true, 1.0)];
        let report = Report {
            version: REPORT_VERSION,
            model: ModelInfo::default(),
            settings: Settings {
                kinds: vec![HoleKind::Body],
                ..Settings::default()
            },
            corpus: CorpusInfo::default(),
            summary: summarize(&holes),
            holes,
            baseline: None,
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"kind\":\"body\""), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
        let baseline: Baseline = serde_json::from_str(&json).unwrap();
        assert_eq!(baseline.holes, report.holes);
        // A minimal hand-written baseline is enough.
        let minimal = r#"{"holes":[{"id":"x:1:line","file":"x","language":"c","kind":"line","line":1,
            "expected":"a","completion":"a","exact":true,"edit_similarity":1.0,"parses":true,"latency_ms":1.0}]}"#;
        let baseline: Baseline = serde_json::from_str(minimal).unwrap();
        assert_eq!(baseline.holes[0].kind, HoleKind::Line);
    }
}
