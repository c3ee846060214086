//! Scores of one filled hole: exact match, edit similarity, and whether the file still parses.

use crate::actions::Language;

/// Edit similarity compares at most this many characters of each side (the DP is quadratic).
pub const MAX_COMPARED_CHARS: usize = 2000;

/// `text` with trailing whitespace removed from every line and trailing line breaks dropped:
/// what a reader sees, which is what "the same code" means here.
pub fn normalize(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_end().to_owned()
}

/// Whether the completion is the removed code (up to trailing whitespace per line).
pub fn exact_match(expected: &str, completion: &str) -> bool {
    normalize(expected) == normalize(completion)
}

/// 1 − Levenshtein distance / the longer length, over characters of the normalized texts (the
/// first [`MAX_COMPARED_CHARS`] of each); 1.0 for two empty texts.
pub fn edit_similarity(expected: &str, completion: &str) -> f64 {
    let a: Vec<char> = normalize(expected)
        .chars()
        .take(MAX_COMPARED_CHARS)
        .collect();
    let b: Vec<char> = normalize(completion)
        .chars()
        .take(MAX_COMPARED_CHARS)
        .collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    1.0 - levenshtein(&a, &b) as f64 / longest as f64
}

/// Insertions, deletions and substitutions that turn `a` into `b` (two-row DP).
pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The file with `start..end` replaced by `completion`.
pub fn fill(text: &str, start: usize, end: usize, completion: &str) -> String {
    let (before, after) = (
        text.get(..start).unwrap_or(text),
        text.get(end..).unwrap_or(""),
    );
    format!("{before}{completion}{after}")
}

/// Whether `text` parses with no error or missing nodes.
pub fn parses_cleanly(language: Language, text: &str) -> bool {
    language
        .parse(text)
        .is_some_and(|tree| !tree.root_node().has_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_ignores_trailing_whitespace_only() {
        assert!(exact_match("return a + b", "return a + b  \n\n"));
        assert!(exact_match("if x:\n    y()", "if x:   \n    y()\n"));
        assert!(exact_match("a\r\nb", "a\nb"));
        assert!(!exact_match("return a + b", " return a + b"));
        assert!(!exact_match("return a + b", "return a+b"));
        assert!(!exact_match("if x:\n    y()", "if x:\n  y()"));
        assert!(!exact_match("x", ""));
    }

    #[test]
    fn edit_similarity_is_one_minus_the_normalized_distance() {
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert_eq!(edit_similarity("", "abc"), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
        assert_eq!(edit_similarity("abcd", "abce"), 0.75);
        // Characters, not bytes.
        assert_eq!(edit_similarity("é", "e"), 0.0);
        assert_eq!(edit_similarity("éa", "ea"), 0.5);
        assert_eq!(levenshtein(&['a', 'b'], &['b', 'a']), 2);
    }

    #[test]
    fn edit_similarity_compares_a_bounded_prefix() {
        let long = "x".repeat(10 * MAX_COMPARED_CHARS);
        let other = format!("{}{}", "x".repeat(MAX_COMPARED_CHARS), "y".repeat(1000));
        // Beyond the bound nothing is compared: equal prefixes count as equal.
        assert_eq!(edit_similarity(&long, &other), 1.0);
        let one = edit_similarity(&long, "x");
        assert!(
            (one - 1.0 / MAX_COMPARED_CHARS as f64).abs() < 1e-12,
            "{one}"
        );
    }

    #[test]
    fn filled_files_parse_or_not() {
        let text = "def f(a):\n    return a + 1\n";
        let start = text.find("a + 1").unwrap();
        let end = start + "a + 1".len();
        assert!(parses_cleanly(
            Language::Python,
            &fill(text, start, end, "a * 2")
        ));
        assert!(!parses_cleanly(
            Language::Python,
            &fill(text, start, end, "a +")
        ));
        assert!(!parses_cleanly(
            Language::Python,
            &fill(text, start, end, "(a")
        ));
        let rust = "fn f() -> i32 {\n    1 + 2\n}\n";
        let start = rust.find("1 + 2").unwrap();
        assert!(parses_cleanly(
            Language::Rust,
            &fill(rust, start, start + 5, "3")
        ));
        // A missing closer is a MISSING node, which counts as broken too.
        assert!(!parses_cleanly(
            Language::Rust,
            &fill(rust, start, start + 5, "g(1")
        ));
        assert!(!parses_cleanly(Language::C, "int f( {"));
        assert!(parses_cleanly(Language::Go, "package a\n\nfunc f() {}\n"));
        assert!(parses_cleanly(Language::JavaScript, "const a = () => 1;\n"));
        assert_eq!(fill("abc", 1, 2, "XY"), "aXYc");
    }
}
