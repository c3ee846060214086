//! Which part of the document goes into the prompt: the text around the cursor that fits the
//! token budget, cut at line boundaries, with edges that stay put while the user types.
//!
//! Stability is what makes the KV cache pay off: if the window's first line moved on every
//! keystroke, every prompt would differ from the previous one at its very start. So the edges are
//! snapped to multiples of `snap_lines`, and move only when the cursor's surroundings no longer fit.
//! Given the previous window's first line (`keep_first`), the start stays there for as long as
//! the text from it still fits, and when it must move it moves half a snap further than needed:
//! each move costs a re-evaluation of the whole prefix, so moves should be rare.

use ropey::Rope;

#[derive(Clone, Debug, PartialEq)]
pub struct WindowConfig {
    /// Tokens available for prefix + suffix text.
    pub budget_tokens: usize,
    /// The prefix's share of the budget (the rest goes to the suffix).
    pub prefix_share: f32,
    /// Window edges snap to multiples of this many lines.
    pub snap_lines: usize,
    /// The first line of the previous window in this document, kept while it still fits.
    pub keep_first: Option<usize>,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            budget_tokens: 4096 - 256 - 8,
            prefix_share: 0.75,
            snap_lines: 32,
            keep_first: None,
        }
    }
}

/// The text before and after the cursor that the prompt will hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub prefix: String,
    pub suffix: String,
    /// First document line in the prefix.
    pub first_line: usize,
    /// One past the last document line in the suffix.
    pub end_line: usize,
}

/// The text after `cursor` to the end of the `lines`-th line below it (for post-processing when
/// the prompt itself has no suffix).
pub fn text_after(rope: &Rope, cursor: usize, lines: usize) -> String {
    let cursor = cursor.min(rope.len_chars());
    let last = (rope.char_to_line(cursor) + lines + 1).min(rope.len_lines());
    let end = rope.line_to_char(last);
    rope.slice(cursor..end.max(cursor)).to_string()
}

/// Selects the window around `cursor` (a char index). `count` gives the tokens of a piece of text
/// (an upper estimate is fine: a per-line count slightly overestimates a joined one).
pub fn select(
    rope: &Rope,
    cursor: usize,
    config: &WindowConfig,
    count: &dyn Fn(&str) -> usize,
) -> Window {
    let cursor = cursor.min(rope.len_chars());
    let cursor_line = rope.char_to_line(cursor);
    let snap = config.snap_lines.max(1);
    let prefix_budget =
        (config.budget_tokens as f32 * config.prefix_share.clamp(0.0, 1.0)) as usize;
    let suffix_budget = config.budget_tokens.saturating_sub(prefix_budget);

    // The cursor line's head (left of the cursor) always stays; if it alone is too long, keep its
    // end, nearest the cursor.
    let line_start = rope.line_to_char(cursor_line);
    let head = rope.slice(line_start..cursor).to_string();
    let (head, head_tokens) = keep_end(&head, prefix_budget, count);
    // `first`: the earliest line that fits; `roomy`: the earliest that leaves a quarter of the
    // budget free, where a start that has to move goes, so that it stays there a while.
    let roomy_budget = prefix_budget - prefix_budget / 4;
    let (mut first, mut roomy) = (cursor_line, cursor_line);
    let mut used = head_tokens;
    while first > 0 {
        let tokens = count(&rope.line(first - 1).to_string());
        if used + tokens > prefix_budget {
            break;
        }
        used += tokens;
        first -= 1;
        if used <= roomy_budget {
            roomy = first;
        }
    }
    // Keep the previous start if it still fits (and the whole document does not); else snap
    // forward to a chunk boundary, unless that would leave only the cursor line.
    let kept = config
        .keep_first
        .filter(|&kept| first > 0 && (first..=cursor_line).contains(&kept));
    if let Some(kept) = kept {
        first = kept;
    } else if first > 0 {
        let moving = config.keep_first.is_some();
        for start in [if moving { roomy } else { first }, first] {
            let snapped = start.div_ceil(snap) * snap;
            if snapped < cursor_line {
                first = snapped;
                break;
            }
        }
    }
    let prefix = if first < cursor_line {
        let mut text = rope.slice(rope.line_to_char(first)..line_start).to_string();
        text.push_str(&head);
        text
    } else {
        head
    };

    // The suffix: the rest of the cursor line, then whole lines while they fit.
    let line_end = rope.line_to_char(cursor_line + 1).min(rope.len_chars());
    let tail = rope.slice(cursor..line_end).to_string();
    let (tail, tail_tokens) = keep_start(&tail, suffix_budget, count);
    let lines = rope.len_lines();
    let mut end = cursor_line + 1;
    let mut used = tail_tokens;
    while end < lines {
        let tokens = count(&rope.line(end).to_string());
        if used + tokens > suffix_budget {
            break;
        }
        used += tokens;
        end += 1;
    }
    if end < lines {
        // Snap the end back to a chunk boundary counted from the document's end, keeping at
        // least the cursor line's tail: lines typed above the end then leave the suffix's text
        // as it was (counted from the start, each new line would shift it by a line, and with
        // the suffix first in the prompt, nothing after it could be reused).
        end = lines
            .saturating_sub((lines - end).div_ceil(snap) * snap)
            .max(cursor_line + 1);
    }
    let mut suffix = tail;
    if end > cursor_line + 1 {
        suffix.push_str(&rope.slice(line_end..rope.line_to_char(end)).to_string());
    }
    Window {
        prefix,
        suffix,
        first_line: first,
        end_line: end,
    }
}

/// The longest end of `text` that fits `budget` tokens, and its token count.
fn keep_end(text: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> (String, usize) {
    fit(text, budget, count, |chars, keep| {
        chars[chars.len() - keep..].iter().collect()
    })
}

/// The longest start of `text` that fits `budget` tokens, and its token count.
fn keep_start(text: &str, budget: usize, count: &dyn Fn(&str) -> usize) -> (String, usize) {
    fit(text, budget, count, |chars, keep| {
        chars[..keep].iter().collect()
    })
}

/// Binary search on the number of characters kept (cuts never split a character).
fn fit(
    text: &str,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
    take: impl Fn(&[char], usize) -> String,
) -> (String, usize) {
    let tokens = count(text);
    if tokens <= budget {
        return (text.to_owned(), tokens);
    }
    let chars: Vec<char> = text.chars().collect();
    let (mut low, mut high) = (0, chars.len());
    while low < high {
        let middle = (low + high).div_ceil(2);
        if count(&take(&chars, middle)) <= budget {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    let kept = take(&chars, low);
    let tokens = count(&kept);
    (kept, tokens)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// One "token" per 4 bytes, rounded up: enough to exercise the budget arithmetic.
    fn count(text: &str) -> usize {
        text.len().div_ceil(4)
    }

    fn document(lines: usize) -> String {
        (0..lines).map(|i| format!("line {i:04}\n")).collect()
    }

    fn config(budget: usize) -> WindowConfig {
        WindowConfig {
            budget_tokens: budget,
            prefix_share: 0.75,
            snap_lines: 8,
            keep_first: None,
        }
    }

    #[test]
    fn a_small_document_fits_whole() {
        let text = "def f():\n    return 1\n\nprint(f())\n";
        let rope = Rope::from_str(text);
        let cursor = text.find("return").unwrap() + 7;
        let window = select(&rope, cursor, &config(1000), &count);
        assert_eq!(window.prefix, &text[..cursor]);
        assert_eq!(window.suffix, &text[cursor..]);
    }

    #[test]
    fn the_window_respects_the_budget_and_cuts_at_lines() {
        let text = document(1000);
        let rope = Rope::from_str(&text);
        let cursor = rope.line_to_char(500) + 4;
        let window = select(&rope, cursor, &config(200), &count);
        assert!(
            count(&window.prefix) <= 150 + 1,
            "{}",
            count(&window.prefix)
        );
        assert!(count(&window.suffix) <= 50 + 1);
        assert!(
            window.prefix.starts_with("line "),
            "starts at a line: {:?}",
            &window.prefix[..10]
        );
        assert!(window.prefix.ends_with("line"));
        assert!(window.suffix.starts_with(" 0500\n"));
        assert!(window.suffix.ends_with('\n'));
        assert_eq!(window.first_line % 8, 0);
        assert_eq!((rope.len_lines() - window.end_line) % 8, 0);
    }

    #[test]
    fn the_start_stays_put_while_typing() {
        let mut text = document(400);
        let mut cursor_byte = text.find("line 0300").unwrap();
        let mut starts = HashSet::new();
        for ch in "let value = compute(42);".chars() {
            text.insert(cursor_byte, ch);
            cursor_byte += ch.len_utf8();
            let rope = Rope::from_str(&text);
            let window = select(&rope, rope.byte_to_char(cursor_byte), &config(400), &count);
            starts.insert((window.first_line, window.end_line));
        }
        assert!(starts.len() <= 2, "the window moved {} times", starts.len());
    }

    /// New lines typed at the cursor leave the suffix's text (which comes first in SPM prompts)
    /// and the prefix's start as they were, so the KV cache keeps nearly the whole prompt.
    #[test]
    fn the_edges_keep_their_text_while_typing_new_lines() {
        let mut text = document(400);
        let mut cursor_byte = text.find("line 0300").unwrap();
        let (mut suffixes, mut starts) = (HashSet::new(), HashSet::new());
        for ch in "def f(x):\n    y = x + 1\n    return y\n\n".chars() {
            text.insert(cursor_byte, ch);
            cursor_byte += ch.len_utf8();
            let rope = Rope::from_str(&text);
            let window = select(&rope, rope.byte_to_char(cursor_byte), &config(400), &count);
            let prefix_start: String = window.prefix.chars().take(40).collect();
            suffixes.insert(window.suffix);
            starts.insert(prefix_start);
        }
        assert_eq!(suffixes.len(), 1, "{suffixes:?}");
        assert_eq!(starts.len(), 1, "{starts:?}");
    }

    /// With the previous start as a hint, typing many lines moves the start rarely: only when
    /// the text from it no longer fits, and then far enough to stay a while. Every window fits
    /// the budget, and without the hint the same text gives the plain window.
    #[test]
    fn a_kept_start_moves_only_when_it_no_longer_fits() {
        let mut text = document(400);
        let mut cursor_byte = text.find("line 0300").unwrap();
        let typed = "def f(x):\n    y = x + 1\n    return y\n\n".repeat(12);
        let (mut keep_first, mut moves, mut plain_moves) = (None, 0, 0);
        let mut plain_first = None;
        for ch in typed.chars() {
            text.insert(cursor_byte, ch);
            cursor_byte += ch.len_utf8();
            let rope = Rope::from_str(&text);
            let cursor = rope.byte_to_char(cursor_byte);
            let hinted = WindowConfig {
                keep_first,
                ..config(400)
            };
            let window = select(&rope, cursor, &hinted, &count);
            assert!(
                count(&window.prefix) <= 300 + 1,
                "{}",
                count(&window.prefix)
            );
            moves += usize::from(keep_first.is_some_and(|k| k != window.first_line));
            keep_first = Some(window.first_line);
            let plain = select(&rope, cursor, &config(400), &count).first_line;
            plain_moves += usize::from(plain_first.is_some_and(|p| p != plain));
            plain_first = Some(plain);
        }
        assert!(moves >= 1, "48 typed lines outgrow a 100-line prefix");
        assert!(
            moves * 2 <= plain_moves,
            "kept start moved {moves} times, the plain one {plain_moves}"
        );
    }

    /// Every budget, cursor and document length gives a window (the end, snapped from the
    /// document's end, once went below zero in short documents).
    #[test]
    fn any_budget_and_cursor_give_a_window() {
        for lines in 0..40 {
            let text = document(lines);
            let rope = Rope::from_str(&text);
            for budget in [0, 1, 2, 5, 13, 40, 400] {
                for cursor in (0..=rope.len_chars()).step_by(7) {
                    for keep_first in [None, Some(0), Some(3), Some(17), Some(1000)] {
                        let config = WindowConfig {
                            keep_first,
                            ..config(budget)
                        };
                        let window = select(&rope, cursor, &config, &count);
                        assert!(window.end_line <= rope.len_lines());
                        assert!(window.first_line <= rope.char_to_line(cursor));
                    }
                }
            }
        }
    }

    #[test]
    fn an_overlong_cursor_line_keeps_the_text_nearest_the_cursor() {
        let line = "x".repeat(10_000) + "é😀 near";
        let text = format!("{line}{}", "y".repeat(10_000));
        let rope = Rope::from_str(&text);
        let cursor = line.chars().count();
        let window = select(&rope, cursor, &config(100), &count);
        assert!(window.prefix.ends_with("é😀 near"));
        assert!(count(&window.prefix) <= 75);
        assert!(window.suffix.starts_with('y') && count(&window.suffix) <= 25);
    }

    #[test]
    fn a_cursor_past_the_end_clamps() {
        let rope = Rope::from_str("abc");
        let window = select(&rope, 99, &config(100), &count);
        assert_eq!(
            (window.prefix.as_str(), window.suffix.as_str()),
            ("abc", "")
        );
    }
}
