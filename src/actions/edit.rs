//! Chat edits: the prompt that asks for a rewrite of a selection, the code taken out of the
//! answer, and the smallest set of line edits that turns the old selection into it.

use std::ops::Range;

use super::language::Language;

/// Lines of context shown to the model on each side of the selection.
const CONTEXT_LINES: usize = 40;

/// The chat messages for rewriting `selection` (bytes of `source`) as instructed, and the start of
/// the answer: the opening of a code fence, so the model answers with code right away.
pub struct EditPrompt {
    pub system: String,
    pub user: String,
    pub answer_prefix: String,
    /// Ends the answer: the closing fence.
    pub stop: Vec<String>,
}

pub fn prompt(
    language: Option<Language>,
    file_name: &str,
    source: &str,
    selection: Range<usize>,
    instruction: &str,
) -> EditPrompt {
    let (name, fence) = language.map_or(("", ""), |l| (l.name(), l.fence()));
    let before = last_lines(&source[..selection.start], CONTEXT_LINES);
    let after = first_lines(&source[selection.end..], CONTEXT_LINES);
    let selected = &source[selection];
    let system = format!(
        "You are a careful senior {name} engineer. You rewrite code exactly as instructed, keep \
         everything else as it was, and answer with the complete rewritten code only, in one \
         fenced code block."
    )
    .replace("  ", " ");
    let mut user = format!("File: {file_name}\n\n");
    if !before.trim().is_empty() {
        user.push_str(&format!(
            "Code before the selection, for context:\n```{fence}\n{before}\n```\n\n"
        ));
    }
    if !after.trim().is_empty() {
        user.push_str(&format!(
            "Code after the selection, for context:\n```{fence}\n{after}\n```\n\n"
        ));
    }
    user.push_str(&format!(
        "The selected code:\n```{fence}\n{selected}\n```\n\nInstruction: {instruction}\n\n\
         Reply with the rewritten selected code only (not the context), in one ```{fence} block."
    ));
    EditPrompt {
        system,
        user,
        answer_prefix: format!("```{fence}\n"),
        stop: vec!["```".to_owned()],
    }
}

fn last_lines(text: &str, count: usize) -> &str {
    let mut start = text.len();
    for _ in 0..=count {
        match text[..start].rfind('\n') {
            Some(newline) => start = newline,
            None => return text,
        }
    }
    &text[start + 1..]
}

fn first_lines(text: &str, count: usize) -> &str {
    let mut end = 0;
    for _ in 0..count {
        match text[end..].find('\n') {
            Some(newline) => end += newline + 1,
            None => return text,
        }
    }
    &text[..end]
}

/// The code in an answer: the first fenced block (to its end, if the answer was cut short),
/// else the whole answer. `None` when there is no code at all.
pub fn extract_code(answer: &str) -> Option<String> {
    let answer = answer.replace("\r\n", "\n");
    let code = match answer.find("```") {
        Some(open) => {
            let rest = &answer[open + 3..];
            let body = rest.find('\n').map_or("", |newline| &rest[newline + 1..]);
            body.find("```").map_or(body, |close| &body[..close])
        }
        None => &answer,
    };
    let code = code.trim_end_matches([' ', '\t', '\n']);
    let code = code.trim_start_matches('\n');
    (!code.trim().is_empty()).then(|| code.to_owned())
}

/// Fits new code into the place of the old selection: the selection's indentation (models often
/// answer flush left), its line endings, and its trailing newline or lack of one.
///
/// `first_line_indent` is the indentation of the line the selection starts on; when the selection
/// starts mid-line, the first new line is not indented again.
pub fn fit(code: &str, old: &str, first_line_indent: &str, starts_mid_line: bool) -> String {
    let min_indent = |text: &str, skip_first: bool| {
        text.lines()
            .skip(usize::from(skip_first))
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
    };
    let old_indent = if starts_mid_line {
        min_indent(old, true).unwrap_or(first_line_indent.len())
    } else {
        min_indent(old, false).unwrap_or(0)
    };
    let new_indent = min_indent(code, starts_mid_line).unwrap_or(0);
    let unit: String = if first_line_indent.starts_with('\t') || old.contains("\n\t") {
        "\t".into()
    } else {
        " ".into()
    };
    let mut out = String::new();
    for (index, line) in code.split('\n').enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let first = index == 0;
        if line.trim().is_empty() {
            continue;
        }
        if first && starts_mid_line {
            out.push_str(line.trim_start());
        } else if new_indent < old_indent {
            out.push_str(&unit.repeat(old_indent - new_indent));
            out.push_str(line);
        } else {
            out.push_str(line);
        }
    }
    let old_ends_with_newline = old.ends_with('\n');
    if old_ends_with_newline && !out.ends_with('\n') {
        out.push('\n');
    }
    if old.contains("\r\n") {
        out = out.replace('\n', "\r\n");
    }
    out
}

/// One replacement: bytes of the old text, and what goes there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineEdit {
    pub range: Range<usize>,
    pub text: String,
}

/// The smallest line edits that turn `old` into `new`: unchanged lines are not touched, so
/// marks, breakpoints and folds on them survive, and the undo step is exactly the change.
pub fn minimal_edits(old: &str, new: &str) -> Vec<LineEdit> {
    use similar::{Algorithm, DiffOp, TextDiff};
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(std::time::Duration::from_millis(200))
        .diff_lines(old, new);
    let old_lines: Vec<&str> = diff.old_slices().to_vec();
    let new_lines: Vec<&str> = diff.new_slices().to_vec();
    let old_offsets: Vec<usize> = std::iter::once(0)
        .chain(old_lines.iter().scan(0, |at, line| {
            *at += line.len();
            Some(*at)
        }))
        .collect();
    let mut edits: Vec<LineEdit> = Vec::new();
    // Positions are tracked by walking the operations in order: their own indices are not always
    // consistent for inserts next to equal runs.
    let (mut old_at, mut new_at) = (0, 0);
    for op in diff.ops() {
        let (old_len, new_len) = match *op {
            DiffOp::Equal { len, .. } => {
                old_at += len;
                new_at += len;
                continue;
            }
            DiffOp::Delete { old_len, .. } => (old_len, 0),
            DiffOp::Insert { new_len, .. } => (0, new_len),
            DiffOp::Replace {
                old_len, new_len, ..
            } => (old_len, new_len),
        };
        let (old_range, new_range) = (old_at..old_at + old_len, new_at..new_at + new_len);
        old_at += old_len;
        new_at += new_len;
        let range = old_offsets[old_range.start]..old_offsets[old_range.end];
        let text: String = new_lines[new_range].concat();
        // Adjacent operations (a delete next to an insert) become one replacement.
        match edits.last_mut() {
            Some(last) if last.range.end == range.start => {
                last.range.end = range.end;
                last.text.push_str(&text);
            }
            _ => edits.push(LineEdit { range, text }),
        }
    }
    edits
}

/// Applies non-overlapping edits (in any order) to `text`.
pub fn apply(text: &str, edits: &[LineEdit]) -> String {
    let mut sorted: Vec<&LineEdit> = edits.iter().collect();
    sorted.sort_by_key(|edit| edit.range.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for edit in sorted {
        out.push_str(&text[at..edit.range.start]);
        out.push_str(&edit.text);
        at = edit.range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// A unified diff of `old` and `new`, for the command line's `--diff`.
pub fn unified_diff(old: &str, new: &str, path: &str) -> String {
    // git's a/ and b/ prefixes, for relative paths (where `git apply -p1` expects them).
    let (old_name, new_name) = if path.starts_with('/') {
        (path.to_owned(), path.to_owned())
    } else {
        (format!("a/{path}"), format!("b/{path}"))
    };
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn code_comes_from_the_first_fence_or_the_whole_answer() {
        assert_eq!(
            extract_code("Sure! Here it is:\n```python\nx = 1\n```\nDone.").as_deref(),
            Some("x = 1")
        );
        assert_eq!(
            extract_code("x = 1\ny = 2\n\n").as_deref(),
            Some("x = 1\ny = 2")
        );
        // Cut short by the token limit: the fence never closes.
        assert_eq!(
            extract_code("```rust\nfn a() {}\nfn b(").as_deref(),
            Some("fn a() {}\nfn b(")
        );
        assert_eq!(extract_code("```\n```"), None);
        assert_eq!(extract_code("  \n"), None);
    }

    #[test]
    fn fitting_restores_indentation_line_endings_and_the_final_newline() {
        let old = "        if x:\r\n            y()\r\n";
        let code = "if x is not None:\n    y()";
        assert_eq!(
            fit(code, old, "        ", false),
            "        if x is not None:\r\n            y()\r\n"
        );
        // Already indented answers are kept as they are.
        assert_eq!(
            fit("    a()\n    b()", "    a()", "    ", false),
            "    a()\n    b()"
        );
        // A selection that starts mid-line: the first line continues it.
        assert_eq!(
            fit("foo(\n  1,\n)", "bar(\n    2,\n  )", "  ", true),
            "foo(\n    1,\n  )"
        );
        // Blank lines carry no trailing blanks.
        assert_eq!(
            fit("a()\n\nb()", "\ta()\n\tb()\n", "\t", false),
            "\ta()\n\n\tb()\n"
        );
    }

    #[test]
    fn minimal_edits_touch_only_changed_lines() {
        let old = "def f(a, b):\n    x = a + b\n    return x\n";
        let new = "def f(a: int, b: int) -> int:\n    x = a + b\n    return x\n";
        let edits = minimal_edits(old, new);
        assert_eq!(
            edits,
            [LineEdit {
                range: 0..13,
                text: "def f(a: int, b: int) -> int:\n".into()
            }]
        );
        assert_eq!(minimal_edits(old, old), []);
        let inserted = minimal_edits("a\nc\n", "a\nb\nc\n");
        assert_eq!(
            inserted,
            [LineEdit {
                range: 2..2,
                text: "b\n".into()
            }]
        );
        let removed = minimal_edits("a\nb\nc", "a\nc");
        assert_eq!(apply("a\nb\nc", &removed), "a\nc");
        assert_eq!(removed.len(), 1);
    }

    #[test]
    fn the_edit_prompt_shows_context_selection_and_instruction() {
        let source = "import os\n\ndef f(x):\n    return x\n\nprint(f(1))\n";
        let start = source.find("def").unwrap();
        let end = source.find("\n\nprint").unwrap();
        let prompt = prompt(
            Some(Language::Python),
            "main.py",
            source,
            start..end,
            "add type hints",
        );
        assert!(prompt.user.contains("```python\nimport os\n\n\n```"));
        assert!(
            prompt
                .user
                .contains("The selected code:\n```python\ndef f(x):\n    return x\n```")
        );
        assert!(prompt.user.contains("Instruction: add type hints"));
        assert!(prompt.user.contains("print(f(1))"));
        assert_eq!(prompt.answer_prefix, "```python\n");
        assert!(!prompt.system.contains("  "));
    }

    #[test]
    fn a_unified_diff_names_the_file_and_the_changed_lines() {
        let diff = unified_diff("a\nb\n", "a\nB\n", "x.py");
        assert!(diff.starts_with("--- a/x.py\n+++ b/x.py\n@@"), "{diff}");
        assert!(diff.contains("-b\n+B\n"));
    }

    proptest! {
        #[test]
        fn minimal_edits_rebuild_the_new_text(
            old in proptest::collection::vec("[ab\\n]{0,3}", 0..12),
            new in proptest::collection::vec("[abc\\n]{0,3}", 0..12),
        ) {
            let (old, new) = (old.concat(), new.concat());
            let edits = minimal_edits(&old, &new);
            prop_assert_eq!(apply(&old, &edits), new);
            for pair in edits.windows(2) {
                prop_assert!(pair[0].range.end < pair[1].range.start || pair[0].range.end <= pair[1].range.start);
            }
        }
    }
}
