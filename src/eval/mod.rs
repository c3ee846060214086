//! The completion-quality evaluation behind `codellama-lsp eval`: holes punched into real code,
//! filled by the model through the completion path the server uses, and scored.
//!
//! Everything here is pure (text in, values out); the command in `cli/eval.rs` walks the corpus,
//! runs the model and prints.
//! - `corpus`: which files qualify (language by extension, no huge, minified, generated or
//!   unparsable files) and the places in each where holes can go.
//! - `holes`: seeded, model-independent hole selection, balanced over language × kind, each hole
//!   with a stable id (`path:byte:kind`) so reports from two models or two settings line up.
//! - `score`: exact match, edit similarity, and whether the filled file still parses.
//! - `report`: per-hole results, the table per language and kind, and deltas against a baseline.

pub mod corpus;
pub mod holes;
pub mod report;
pub mod score;

pub use corpus::{Skip, SourceFile};
pub use holes::{Hole, HoleKind, select};
pub use report::{HoleResult, Report};

use crate::actions::Language;

/// The languages the evaluation punches holes into, in the order tables list them.
pub const LANGUAGES: [Language; 5] = [
    Language::Python,
    Language::Rust,
    Language::JavaScript,
    Language::Go,
    Language::C,
];

/// A language's name in reports and on the command line (`python`, `rust`, `javascript`, `go`,
/// `c`).
pub fn language_name(language: Language) -> &'static str {
    language.fence()
}

/// The evaluated language named `name` (also `py`, `rs`, `js`).
pub fn parse_language(name: &str) -> Result<Language, String> {
    let language = match name.trim().to_ascii_lowercase().as_str() {
        "python" | "py" => Language::Python,
        "rust" | "rs" => Language::Rust,
        "javascript" | "js" => Language::JavaScript,
        "go" => Language::Go,
        "c" => Language::C,
        _ => {
            return Err(format!(
                "unknown language '{name}': use python, rust, javascript, go or c"
            ));
        }
    };
    Ok(language)
}

/// The model's raw text as the completion when post-processing is off: up to the first blank
/// line (a model's usual end of a thought), trailing whitespace trimmed.
pub fn unprocessed(raw: &str) -> String {
    let mut text = String::new();
    for line in raw.split_inclusive('\n') {
        if line.trim().is_empty() && !text.trim().is_empty() {
            break;
        }
        text.push_str(line);
    }
    text.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprocessed_text_ends_at_the_first_blank_line() {
        assert_eq!(unprocessed("a + b\n\ndef g():\n"), "a + b");
        assert_eq!(
            unprocessed("x = 1\n    y = 2  \n   \nz"),
            "x = 1\n    y = 2"
        );
        assert_eq!(unprocessed("\n    return x\n"), "\n    return x");
        assert_eq!(unprocessed("<EOT>"), "<EOT>");
        assert_eq!(unprocessed(""), "");
    }

    #[test]
    fn language_names_round_trip() {
        for language in LANGUAGES {
            assert_eq!(parse_language(language_name(language)), Ok(language));
        }
        assert_eq!(parse_language("JS"), Ok(Language::JavaScript));
        assert!(parse_language("lua").unwrap_err().contains("python"));
    }
}
