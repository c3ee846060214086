//! Docstrings: the prompt that asks for one, the answer made safe, and the text inserted.
//!
//! The model's answer is only ever text: code fences, comment markers, a repeated signature and
//! stray code are taken out, then the words are written back in the language's convention, so a
//! bad answer can never break the file's syntax (no unclosed `"""`, no early `*/`).

use std::ops::Range;

use super::language::Language;
use super::target::{DocTarget, Placement};

/// Longest docstring we insert, in lines of text.
const MAX_LINES: usize = 40;
/// Prose is wrapped to this width (indentation and comment markers included).
const WRAP_WIDTH: usize = 88;

/// How a language writes documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `"""…"""` as the first statement of the body.
    PythonDocstring,
    /// `/** … */` with ` * ` lines (JSDoc, Javadoc, Doxygen).
    Block,
    /// A line comment marker on every line (`///` in Rust, `---` in Lua).
    Lines(&'static str),
    /// `//` lines that start with the name (Go).
    GoComment,
}

impl Style {
    pub fn of(language: Language) -> Self {
        match language {
            Language::Python => Self::PythonDocstring,
            Language::Rust => Self::Lines("///"),
            Language::Lua => Self::Lines("---"),
            Language::Go => Self::GoComment,
            Language::JavaScript
            | Language::TypeScript
            | Language::Tsx
            | Language::C
            | Language::Cpp
            | Language::Java => Self::Block,
        }
    }

    /// The convention, in words, for chat prompts.
    fn convention(self, language: Language) -> &'static str {
        match (self, language) {
            (Self::PythonDocstring, _) => {
                "a PEP 257 docstring: a one-line summary, then, if useful, a blank line and the arguments, return value and raised exceptions"
            }
            (Self::Lines(_), Language::Rust) => {
                "a rustdoc comment: a one-line summary, then, if useful, a blank line and `# Errors` or `# Panics` sections"
            }
            (Self::Lines(_), _) => {
                "a LuaLS annotation comment: a one-line summary, then `@param name type description` and `@return type description` lines"
            }
            (Self::GoComment, _) => {
                "a Go doc comment: full sentences, the first one starting with the name"
            }
            (Self::Block, Language::Java) => {
                "a Javadoc comment: a one-line summary, then `@param`, `@return` and `@throws` tags"
            }
            (Self::Block, Language::C | Language::Cpp) => {
                "a Doxygen comment: a one-line summary, then `@param` and `@return` lines"
            }
            (Self::Block, _) => {
                "a JSDoc comment: a one-line summary, then `@param {type} name description` and `@returns` tags"
            }
        }
    }
}

/// What to ask the model, in text; the engine side turns it into tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfillAsk {
    /// The document up to the hole, ending with the opening of the docstring.
    pub prefix: String,
    /// From the end of the hole: the closing of the docstring and the rest of the document.
    pub suffix: String,
    /// Where the hole's text ends (the closing marker), when the model writes it itself.
    pub stop: Vec<String>,
}

/// The infilling prompt: the docstring is the hole, opened and closed in the right style, so a
/// base model only has to write the words (what Code Llama's infilling training did most).
pub fn infill_prompt(language: Language, target: &DocTarget, source: &str) -> InfillAsk {
    let style = Style::of(language);
    let newline = newline_of(source);
    let (insert, indent) = insertion_point(target, source);
    let (before, after) = source.split_at(insert.start);
    let after = &after[insert.len()..];
    let (open, close, stop) = match style {
        Style::PythonDocstring => (
            format!("{indent}\"\"\""),
            format!("\"\"\"{newline}"),
            vec!["\"\"\"".to_owned()],
        ),
        Style::Block => (
            format!("{indent}/**{newline}{indent} * "),
            format!("{newline}{indent} */{newline}"),
            vec!["*/".to_owned()],
        ),
        Style::Lines(marker) => (format!("{indent}{marker} "), newline.to_owned(), Vec::new()),
        Style::GoComment => (
            format!("{indent}// {} ", target.name),
            newline.to_owned(),
            Vec::new(),
        ),
    };
    // A one-liner's body moves to its own line after the docstring.
    let close = match &target.placement {
        Placement::AfterColon { indent, .. } => format!("{close}{indent}"),
        _ => close,
    };
    let open = match &target.placement {
        Placement::AfterColon { .. } => format!("{newline}{open}"),
        _ => open,
    };
    InfillAsk {
        prefix: format!("{before}{open}"),
        suffix: format!("{close}{after}"),
        stop,
    }
}

/// A chat prompt for a docstring. The answer is primed with the opening of the comment, so even
/// a small model writes the words of a docstring rather than code; it then reads like an
/// infilled middle ([`Answer::Infill`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatAsk {
    pub system: String,
    pub user: String,
    pub answer_prefix: String,
    pub stop: Vec<String>,
}

pub fn chat_prompt(language: Language, target: &DocTarget, source: &str) -> ChatAsk {
    let style = Style::of(language);
    let code = source.get(target.code.clone()).unwrap_or_default();
    let system = format!(
        "You are an expert {} programmer who writes concise, accurate documentation.",
        language.name()
    );
    let user = format!(
        "Write the documentation for the {kind} `{name}` below as {convention}.\n\
         Reply with only the documentation, and do not repeat the code.\n\n```{fence}\n{code}\n```",
        kind = target.kind,
        name = target.name,
        convention = style.convention(language),
        fence = language.fence(),
    );
    let (answer_prefix, stop) = match style {
        Style::PythonDocstring => ("\"\"\"".to_owned(), vec!["\"\"\"".to_owned()]),
        Style::Block => ("/**\n * ".to_owned(), vec!["*/".to_owned()]),
        Style::Lines(marker) => (format!("{marker} "), Vec::new()),
        Style::GoComment => (format!("// {} ", target.name), Vec::new()),
    };
    ChatAsk {
        system,
        user,
        answer_prefix,
        stop,
    }
}

/// The bytes to replace (empty for an insertion) and the indentation of the docstring.
fn insertion_point(target: &DocTarget, source: &str) -> (Range<usize>, String) {
    match &target.placement {
        Placement::Above { line, indent } | Placement::BodyStart { line, indent } => {
            let at = byte_of_line(source, *line);
            (at..at, indent.clone())
        }
        Placement::AfterColon { replace, indent } => (replace.clone(), indent.clone()),
    }
}

fn byte_of_line(source: &str, line: usize) -> usize {
    if line == 0 {
        return 0;
    }
    source
        .match_indices('\n')
        .nth(line - 1)
        .map_or(source.len(), |(at, _)| at + 1)
}

fn newline_of(source: &str) -> &'static str {
    match source.find('\n') {
        Some(at) if source[..at].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// How documentation starts and ends, in any of the styles a model may answer in.
const OPENERS: [&str; 7] = ["\"\"\"", "'''", "r\"\"\"", "/*", "//", "--", "*"];
const CLOSERS: [&str; 3] = ["\"\"\"", "'''", "*/"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the model's answer had no usable documentation text (it said: {0:?})")]
pub struct Unusable(pub String);

/// Where an answer came from: a chat reply, or the middle of an infilling prompt (then it is
/// the inside of a comment already opened, and for Go the name is already written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Chat,
    Infill,
}

/// The words of the docstring in the model's answer, one entry per line, markers taken out.
/// A chat answer may hold several fenced blocks and prose around them: the first of those
/// that has documentation in it wins.
pub fn sanitize(
    answer: &str,
    origin: Answer,
    language: Language,
    target: &DocTarget,
) -> Result<Vec<String>, Unusable> {
    // A model's infilling or control token must never reach the documentation as text.
    let answer = crate::postprocess::without_markers(answer).replace("\r\n", "\n");
    let found = match origin {
        Answer::Infill => words(&answer, origin, language, target),
        Answer::Chat => chat_candidates(&answer)
            .into_iter()
            .map(|candidate| words(candidate, origin, language, target))
            .find(|lines| !lines.is_empty())
            .unwrap_or_default(),
    };
    if found.is_empty() {
        let shown: String = answer.chars().take(120).collect();
        return Err(Unusable(shown));
    }
    Ok(found)
}

/// The fenced blocks of a chat answer, in order; the whole answer when it has none. Prose around
/// fenced blocks is chatter ("Here is the docstring:"), never the documentation.
fn chat_candidates(answer: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = answer;
    while let Some(block) = fenced_block(rest) {
        blocks.push(block);
        let end = block.as_ptr() as usize - rest.as_ptr() as usize + block.len();
        rest = rest[end..].strip_prefix("```").unwrap_or(&rest[end..]);
    }
    if blocks.is_empty() {
        blocks.push(answer);
    }
    blocks
}

/// The documentation lines in one candidate text.
fn words(body: &str, origin: Answer, language: Language, target: &DocTarget) -> Vec<String> {
    let line_marker = match Style::of(language) {
        Style::Lines(marker) => Some(marker),
        Style::GoComment => Some("//"),
        _ => None,
    };
    let mut lines: Vec<String> = Vec::new();
    let mut in_code = false;
    for (index, raw) in body.lines().enumerate() {
        // Infilled line comments go on while each line has the marker; a line without it is code.
        let left_comment = origin == Answer::Infill
            && index > 0
            && line_marker.is_some_and(|marker| !raw.trim_start().starts_with(marker));
        if left_comment {
            break;
        }
        let has_text = lines.iter().any(|l| !l.trim().is_empty());
        if looks_like_code(raw, language, target) {
            if has_text {
                break; // the docstring ended and code began
            }
            in_code = true; // a repeated signature before the text
            continue;
        }
        let trimmed = raw.trim();
        if in_code && !OPENERS.iter().any(|m| trimmed.starts_with(m)) {
            continue; // the body of a repeated definition
        }
        in_code = false;
        lines.push(strip_markers(raw));
        let closed = CLOSERS
            .iter()
            .any(|m| trimmed.ends_with(m) && (trimmed.len() > m.len() || has_text));
        if closed && lines.iter().any(|l| !l.trim().is_empty()) {
            break; // the docstring is closed; what follows is code or chatter
        }
    }
    tidy(lines)
}

/// The contents of the first fenced code block, if the answer has one (an unclosed fence, from
/// an answer cut short, runs to the end).
fn fenced_block(answer: &str) -> Option<&str> {
    let open = answer.find("```")?;
    let rest = &answer[open + 3..];
    let body_start = rest.find('\n').map_or(rest.len(), |n| n + 1);
    let body = &rest[body_start..];
    Some(body.find("```").map_or(body, |close| &body[..close]))
}

/// Whether `line` is code rather than prose: the definition's own first line, or a line that
/// opens a definition.
fn looks_like_code(line: &str, language: Language, target: &DocTarget) -> bool {
    let trimmed = line.trim();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| trimmed.starts_with(p));
    let declares_name = trimmed.contains(&format!("{}(", target.name))
        && starts(&[
            "def ",
            "async def ",
            "fn ",
            "pub fn",
            "pub(crate) fn",
            "func ",
            "function ",
            "local function",
            "export ",
            "public ",
            "private ",
            "static ",
        ]);
    let opens_definition = match language {
        Language::Python => starts(&["def ", "async def ", "class "]) && trimmed.ends_with(':'),
        Language::Rust => starts(&["fn ", "pub fn ", "impl ", "pub struct ", "#["]),
        Language::Go => starts(&["func ", "package "]),
        Language::Lua => starts(&["local function ", "function "]),
        _ => trimmed.ends_with('{') && trimmed.contains('('),
    };
    declares_name || opens_definition
}

/// Takes comment and string markers off a line of documentation.
fn strip_markers(line: &str) -> String {
    let mut text = line.trim_end().to_owned();
    let trimmed = text.trim_start();
    let markers = [
        "r\"\"\"", "\"\"\"", "'''", "/**", "/*!", "///", "//!", "//", "---", "--", "*/", "* ",
    ];
    for marker in markers {
        if let Some(rest) = trimmed.strip_prefix(marker) {
            text = rest.to_owned();
            break;
        }
    }
    if text.trim() == "*" {
        text.clear();
    }
    for closing in ["\"\"\"", "'''", "*/"] {
        if let Some(rest) = text.trim_end().strip_suffix(closing) {
            text = rest.to_owned();
        }
    }
    text.trim_end().to_owned()
}

/// Removes indentation the way PEP 257 does (the first line on its own, the rest by their common
/// indentation), blank edges and runs of blank lines; caps the length.
fn tidy(lines: Vec<String>) -> Vec<String> {
    let first_text = lines.iter().position(|l| !l.trim().is_empty());
    let Some(first_text) = first_text else {
        return Vec::new();
    };
    let rest = &lines[first_text + 1..];
    let indent = rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = vec![lines[first_text].trim().to_owned()];
    for line in rest {
        let line = if line.trim().is_empty() {
            String::new()
        } else {
            line.get(indent..).unwrap_or(line.trim_start()).to_owned()
        };
        if line.is_empty() && out.last().is_some_and(String::is_empty) {
            continue;
        }
        out.push(line);
    }
    out.truncate(without_repeats(&out));
    out.truncate(MAX_LINES);
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// How many lines to keep: small models loop, repeating whole paragraphs; the first paragraph
/// that repeats an earlier one (or a line repeated three times) starts the loop.
fn without_repeats(lines: &[String]) -> usize {
    let mut seen: Vec<&[String]> = Vec::new();
    let mut start = 0;
    for end in 0..=lines.len() {
        if end < lines.len() && !lines[end].is_empty() {
            continue;
        }
        let paragraph = &lines[start..end];
        if !paragraph.is_empty() {
            if seen.contains(&paragraph) {
                return start;
            }
            seen.push(paragraph);
        }
        start = end + 1;
    }
    for (index, line) in lines.iter().enumerate() {
        let earlier = lines[..index].iter().filter(|l| *l == line).count();
        if !line.is_empty() && earlier >= 2 {
            return index;
        }
    }
    lines.len()
}

/// The edit that inserts the docstring: bytes of `source` to replace, and the new text.
pub fn render(
    language: Language,
    target: &DocTarget,
    source: &str,
    lines: &[String],
) -> (Range<usize>, String) {
    let style = Style::of(language);
    let newline = newline_of(source);
    let (range, indent) = insertion_point(target, source);
    let marker_width = match style {
        Style::PythonDocstring => 0,
        Style::Block => 3,
        Style::Lines(marker) => marker.len() + 1,
        Style::GoComment => 3,
    };
    let width = WRAP_WIDTH
        .saturating_sub(indent.chars().count() + marker_width)
        .max(30);
    let mut lines = wrap(lines, width);
    if style == Style::GoComment {
        start_with_name(&mut lines, &target.name);
    }
    let mut text = String::new();
    match style {
        Style::PythonDocstring => {
            let escaped: Vec<String> = lines.iter().map(|l| escape_python(l)).collect();
            if let [only] = escaped.as_slice() {
                // A closing `"` next to the quotes would end the string early.
                let pad = if only.ends_with('"') { " " } else { "" };
                text.push_str(&format!("{indent}\"\"\"{only}{pad}\"\"\"{newline}"));
            } else {
                let (first, rest) = escaped
                    .split_first()
                    .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
                text.push_str(&format!("{indent}\"\"\"{first}{newline}"));
                for line in rest {
                    push_line(&mut text, &indent, "", line, newline);
                }
                text.push_str(&format!("{indent}\"\"\"{newline}"));
            }
        }
        Style::Block => {
            text.push_str(&format!("{indent}/**{newline}"));
            for line in &lines {
                push_line(
                    &mut text,
                    &indent,
                    " *",
                    &line.replace("*/", "*\\/"),
                    newline,
                );
            }
            text.push_str(&format!("{indent} */{newline}"));
        }
        Style::Lines(marker) => {
            for line in &lines {
                push_line(&mut text, &indent, marker, line, newline);
            }
        }
        Style::GoComment => {
            for line in &lines {
                push_line(&mut text, &indent, "//", line, newline);
            }
        }
    }
    if let Placement::AfterColon { indent, .. } = &target.placement {
        // `def f(): body` becomes `def f():\n    """doc"""\n    body`.
        text = format!("{newline}{text}{indent}");
    }
    (range, text)
}

fn push_line(text: &mut String, indent: &str, marker: &str, line: &str, newline: &str) {
    // A blank line inside a Python docstring carries no indentation.
    if !(line.is_empty() && marker.is_empty()) {
        text.push_str(indent);
    }
    text.push_str(marker);
    if !line.is_empty() {
        if !marker.is_empty() {
            text.push(' ');
        }
        text.push_str(line);
    }
    text.push_str(newline);
}

/// Text that reads the same inside `"""…"""`: backslashes doubled (so `C:\x` is no escape
/// sequence), triple quotes escaped.
fn escape_python(line: &str) -> String {
    line.replace('\\', "\\\\").replace("\"\"\"", "\\\"\\\"\\\"")
}

/// Go convention: the comment's first sentence starts with the name.
fn start_with_name(lines: &mut [String], name: &str) {
    let short = name.rsplit(['.', ':']).next().unwrap_or(name);
    if let Some(first) = lines.first_mut()
        && !first.starts_with(short)
    {
        let mut chars = first.chars();
        let lowered = match (chars.next(), chars.next()) {
            (Some(c), Some(d)) if c.is_uppercase() && d.is_lowercase() => {
                format!("{}{}", c.to_lowercase(), &first[c.len_utf8()..])
            }
            _ => first.clone(),
        };
        *first = format!("{short} {lowered}");
    }
}

/// Wraps prose lines longer than `width` at spaces; list items and tags continue indented.
fn wrap(lines: &[String], width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        if line.chars().count() <= width {
            out.push(line.clone());
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        let continuation = if line.trim_start().starts_with(['-', '*', '@']) {
            " ".repeat(lead + 2)
        } else {
            " ".repeat(lead)
        };
        let mut current = line[..lead].to_owned();
        let mut empty = true;
        for word in line.split_whitespace() {
            if !empty && current.chars().count() + 1 + word.chars().count() > width {
                out.push(std::mem::replace(&mut current, continuation.clone()));
                empty = true;
            }
            if !empty {
                current.push(' ');
            }
            current.push_str(word);
            empty = false;
        }
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests;
