//! From the model's raw middle to what the editor should insert. Pure string work.
//!
//! Models ramble: they restate code that follows the cursor, close brackets the suffix already
//! closes, run past the end of the block, or leak infilling markers. Each rule below removes one
//! such failure; what is left is trimmed, re-indented in the document's style, and dropped
//! entirely if nothing useful remains.

/// What the rules need to know about the document around the cursor.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// The cursor line's text left of the cursor.
    pub line_before: &'a str,
    /// Everything after the cursor (the cursor line's rest first).
    pub suffix: &'a str,
    /// The document indents with tabs.
    pub uses_tabs: bool,
    /// Columns per indentation level, for converting between tabs and spaces.
    pub tab_width: usize,
}

/// Text a model must never see inserted: infilling and control markers that leaked as text.
const MARKERS: [&str; 8] = [
    "<EOT>",
    "<PRE>",
    "<SUF>",
    "<MID>",
    "</s>",
    "<s>",
    "<|endoftext|>",
    "<|EOT|>",
];

/// The completion to show, or `None` when nothing useful is left.
pub fn completion(raw: &str, context: &Context) -> Option<String> {
    let mut text = cut_at_markers(raw).to_owned();
    let rest_of_line = context
        .suffix
        .split(['\n', '\r'])
        .next()
        .unwrap_or_default();
    if !rest_of_line.trim().is_empty() {
        // Text right of the cursor: complete within the line only.
        text.truncate(text.find(['\n', '\r']).unwrap_or(text.len()));
        text = drop_overlap_with(&text, rest_of_line);
        text = drop_closers_the_suffix_has(&text, context.line_before, rest_of_line);
    } else {
        text = end_of_block(&text, context.line_before);
        text = drop_lines_repeating_the_suffix(&text, context.suffix);
    }
    let text = reindent(&trim_trailing_whitespace(&text), context);
    (!text.trim().is_empty()).then_some(text)
}

/// `text` with every marker taken out (for prose, where the words around one still stand).
pub fn without_markers(text: &str) -> String {
    MARKERS
        .iter()
        .fold(text.to_owned(), |text, marker| text.replace(marker, ""))
}

fn cut_at_markers(text: &str) -> &str {
    let cut = MARKERS
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    &text[..cut]
}

/// Removes the longest end of `text` that the suffix line starts with (the model wrote what is
/// already there), but only when that overlap holds something other than letters — `)` or `");`
/// — so a completion that legitimately ends like the next word is kept.
fn drop_overlap_with(text: &str, rest_of_line: &str) -> String {
    let rest = rest_of_line.trim_start();
    for (start, _) in text.char_indices() {
        let tail = &text[start..];
        if rest.starts_with(tail)
            && tail
                .chars()
                .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
        {
            return text[..start].trim_end().to_owned();
        }
    }
    text.to_owned()
}

/// Cuts the completion before a closing bracket that closes one opened before the cursor when the
/// suffix closes it too (`print(|)` + `x))` would leave `print(x)))`).
fn drop_closers_the_suffix_has(text: &str, line_before: &str, rest_of_line: &str) -> String {
    let mut open: Vec<char> = Vec::new();
    for ch in line_before.chars() {
        match ch {
            '(' | '[' | '{' => open.push(ch),
            ')' | ']' | '}' => {
                open.pop();
            }
            _ => {}
        }
    }
    let closers_in_suffix: Vec<char> = rest_of_line
        .chars()
        .filter(|c| matches!(c, ')' | ']' | '}'))
        .collect();
    let mut depth_in_text = 0usize;
    for (index, ch) in text.char_indices() {
        match ch {
            '(' | '[' | '{' => depth_in_text += 1,
            ')' | ']' | '}' if depth_in_text > 0 => depth_in_text -= 1,
            ')' | ']' | '}' => {
                // Closes something opened before the cursor, which the suffix closes already.
                let closes_earlier_opener = open.pop().is_some();
                if closes_earlier_opener && closers_in_suffix.contains(&ch) {
                    return text[..index].to_owned();
                }
            }
            _ => {}
        }
    }
    text.to_owned()
}

/// The leading spaces and tabs of a line (never its line break: a blank line has none).
fn indentation(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

fn width(indent: &str) -> usize {
    indent.chars().map(|c| if c == '\t' { 4 } else { 1 }).sum()
}

/// Keeps the lines that belong to the block being written: stops at the first non-empty line
/// indented less than the cursor line (the model started on the code after the block).
fn end_of_block(text: &str, line_before: &str) -> String {
    let base = if line_before.trim().is_empty() {
        width(line_before)
    } else {
        width(indentation(line_before))
    };
    let mut lines = text.split_inclusive('\n');
    let mut kept = lines.next().unwrap_or_default().to_owned();
    for line in lines {
        let content = line.trim();
        if !content.is_empty() && width(indentation(line)) < base {
            break;
        }
        kept.push_str(line);
    }
    kept
}

/// Stops where the completion starts restating the lines that already follow the cursor.
fn drop_lines_repeating_the_suffix(text: &str, suffix: &str) -> String {
    let Some(next) = suffix.lines().map(str::trim).find(|line| !line.is_empty()) else {
        return text.to_owned();
    };
    let mut kept = String::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if index > 0 && line.trim() == next {
            break;
        }
        kept.push_str(line);
    }
    kept
}

fn trim_trailing_whitespace(text: &str) -> String {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.trim_end_matches([' ', '\t', '\r']))
        .collect();
    lines.join("\n").trim_end().to_owned()
}

/// Converts the indentation of the completion's later lines to the document's style.
fn reindent(text: &str, context: &Context) -> String {
    let tab_width = context.tab_width.max(1);
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let indent = indentation(line);
        if index == 0 || indent.is_empty() {
            out.push_str(line);
            continue;
        }
        let columns: usize = indent
            .chars()
            .map(|c| if c == '\t' { tab_width } else { 1 })
            .sum();
        if context.uses_tabs {
            out.push_str(&"\t".repeat(columns / tab_width));
            out.push_str(&" ".repeat(columns % tab_width));
        } else {
            out.push_str(&" ".repeat(columns));
        }
        out.push_str(&line[indent.len()..]);
    }
    out
}

/// Guesses the document's indentation style from its lines: tabs if more lines start with a tab
/// than with spaces; the width is the smallest space indentation seen (default 4).
pub fn indentation_style<'a>(lines: impl Iterator<Item = &'a str>) -> (bool, usize) {
    let (mut tabs, mut spaces, mut smallest) = (0, 0, usize::MAX);
    for line in lines.take(2000) {
        if line.starts_with('\t') {
            tabs += 1;
        } else if line.starts_with(' ') && !line.trim().is_empty() {
            spaces += 1;
            smallest = smallest.min(line.len() - line.trim_start_matches(' ').len());
        }
    }
    let width = if smallest == usize::MAX || smallest < 2 {
        4
    } else {
        smallest.min(8)
    };
    (tabs > spaces, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `line_before|rest` with `|` marking the cursor, the raw model output, the expected result.
    fn check(document_around_cursor: &str, raw: &str, expected: Option<&str>) {
        let (before, after) = document_around_cursor.split_once('|').unwrap();
        let line_before = before.rsplit('\n').next().unwrap();
        let (uses_tabs, tab_width) = indentation_style(document_around_cursor.lines());
        let context = Context {
            line_before,
            suffix: after,
            uses_tabs,
            tab_width,
        };
        assert_eq!(
            completion(raw, &context).as_deref(),
            expected,
            "raw {raw:?} at {document_around_cursor:?}"
        );
    }

    #[test]
    fn python_block_ends_where_the_indentation_drops() {
        check(
            "def add(a, b):\n    |\n\nprint(add(1, 2))\n",
            "return a + b\n\ndef sub(a, b):\n    return a - b\n",
            Some("return a + b"),
        );
        check(
            "def fib(n):\n    if n < 2:\n        |",
            "return n\n    return fib(n - 1) + fib(n - 2)\n",
            Some("return n"),
        );
    }

    #[test]
    fn blank_lines_inside_a_suggestion_stay_blank() {
        // Found by `eval` on SmolLM2: the blank line was lost and a space added to the next one.
        check(
            "def setup():\n    |\n",
            "x = 1\n\n    y = 2\n",
            Some("x = 1\n\n    y = 2"),
        );
        check(
            "fn main() {\n\t|\n}\n",
            "let a = 1;\n\n\tlet b = 2;\n}",
            Some("let a = 1;\n\n\tlet b = 2;"),
        );
    }

    #[test]
    fn multi_line_bodies_are_kept_with_their_indentation() {
        check(
            "fn main() {\n    |\n}\n",
            "let x = 1;\n    println!(\"{x}\");\n}\n\nfn other() {}",
            Some("let x = 1;\n    println!(\"{x}\");"),
        );
    }

    #[test]
    fn single_line_context_returns_one_line_without_what_the_suffix_has() {
        check("print(|)\n", "\"hello\")\nprint(2)", Some("\"hello\""));
        check("const xs = [1, 2, |];\n", "3, 4];", Some("3, 4"));
        check("if (ready && |) {\n", "count > 0) {", Some("count > 0"));
        check("let s = format!(|);", "\"{}\", name)", Some("\"{}\", name"));
    }

    #[test]
    fn closers_the_suffix_already_has_are_dropped() {
        check("foo(bar(|))\n", "x))", Some("x"));
        check("items[|]", "0]", Some("0"));
    }

    #[test]
    fn markers_are_taken_out_of_prose() {
        assert_eq!(
            without_markers("<MID>Adds two numbers.<MID></s>"),
            "Adds two numbers."
        );
    }

    #[test]
    fn markers_and_everything_after_them_are_cut() {
        check("x = |\n", "42 <EOT> garbage", Some("42"));
        check("x = |\n", "42\n<MID>more", Some("42"));
        check("x = |\n", "<EOT>", None);
    }

    #[test]
    fn repeats_of_the_following_lines_are_dropped() {
        check(
            "function f() {\n  |\n  return y;\n}\n",
            "const y = 2;\n  return y;\n}\n",
            Some("const y = 2;"),
        );
    }

    #[test]
    fn whitespace_only_and_empty_completions_are_dropped() {
        check("x = |\n", "   \n\t\n", None);
        check("x = |\n", "", None);
    }

    #[test]
    fn trailing_whitespace_is_trimmed_and_tabs_are_kept() {
        check(
            "func main() {\n\tif ok {\n\t\t|\n\t}\n}\n",
            "fmt.Println(\"ok\")   \n        return\n",
            Some("fmt.Println(\"ok\")\n\t\treturn"),
        );
    }

    #[test]
    fn spaces_documents_get_spaces() {
        check(
            "class A:\n    def f(self):\n        |",
            "x = 1\n\t\treturn x",
            Some("x = 1\n        return x"),
        );
    }

    #[test]
    fn lua_and_c_blocks() {
        check(
            "local function greet(name)\n  |\nend\n",
            "print(\"hi \" .. name)\nend\n\ngreet(\"x\")",
            Some("print(\"hi \" .. name)"),
        );
        check(
            "int main(void) {\n    |\n    return 0;\n}\n",
            "printf(\"hi\\n\");\n    return 0;\n}",
            Some("printf(\"hi\\n\");"),
        );
    }
}
