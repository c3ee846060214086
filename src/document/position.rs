//! Positions as editors send them, and their exact conversion to rope offsets.
//!
//! LSP positions are `(line, character)` where `character` counts code units of the negotiated
//! encoding (UTF-16 by default, UTF-8 when both sides agree). Lines end at `\n`, `\r\n` or a lone
//! `\r` — and at nothing else, which is why the rope is built without Unicode line breaks.
//!
//! Every conversion clamps instead of failing: a line past the end means the end of the document, a
//! column past the end of a line means the end of that line (before its terminator), and a column
//! inside a character (the second half of a surrogate pair, a byte inside a UTF-8 sequence) means
//! the start of that character.

use ropey::Rope;

/// The unit in which a position's `character` is counted, negotiated once at `initialize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PositionEncoding {
    /// Bytes of UTF-8.
    Utf8,
    /// Code units of UTF-16 (the LSP default: a character outside the BMP counts 2).
    #[default]
    Utf16,
}

/// A zero-based `(line, character)` pair in some [`PositionEncoding`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: u32,
    pub character: u32,
}

impl Position {
    pub const fn new(line: u32, character: u32) -> Self {
        Self { line, character }
    }
}

/// A half-open range between two positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Range {
    pub start: Position,
    pub end: Position,
}

impl Range {
    pub const fn new(start: Position, end: Position) -> Self {
        Self { start, end }
    }
}

/// The char index where the text of `line` ends, before its line terminator.
pub(crate) fn line_end_char(rope: &Rope, line: usize) -> usize {
    let start = rope.line_to_char(line);
    let slice = rope.line(line);
    let mut len = slice.len_chars();
    if len > 0 && slice.char(len - 1) == '\n' {
        len -= 1;
    }
    if len > 0 && slice.char(len - 1) == '\r' {
        len -= 1;
    }
    start + len
}

/// Converts a position to a char index of `rope`, clamping as described in the module docs.
/// Runs in O(log n): ropey keeps UTF-8 and UTF-16 counts in its tree.
pub fn char_index(rope: &Rope, position: Position, encoding: PositionEncoding) -> usize {
    let line = position.line as usize;
    if line >= rope.len_lines() {
        return rope.len_chars();
    }
    let start = rope.line_to_char(line);
    let end = line_end_char(rope, line);
    let column = position.character as usize;
    match encoding {
        PositionEncoding::Utf8 => {
            let start_byte = rope.char_to_byte(start);
            let end_byte = rope.char_to_byte(end);
            let target = start_byte.saturating_add(column).min(end_byte);
            // byte_to_char rounds a byte inside a character down to that character.
            rope.byte_to_char(target)
        }
        PositionEncoding::Utf16 => {
            let start_cu = rope.char_to_utf16_cu(start);
            let end_cu = rope.char_to_utf16_cu(end);
            let target = start_cu.saturating_add(column).min(end_cu);
            // utf16_cu_to_char rounds the low half of a surrogate pair down to its character.
            rope.utf16_cu_to_char(target)
        }
    }
}

/// Converts a char index of `rope` (clamped to its length) to a position.
pub fn position_of(rope: &Rope, char_index: usize, encoding: PositionEncoding) -> Position {
    let index = char_index.min(rope.len_chars());
    let line = rope.char_to_line(index);
    let start = rope.line_to_char(line);
    let column = match encoding {
        PositionEncoding::Utf8 => rope.char_to_byte(index) - rope.char_to_byte(start),
        PositionEncoding::Utf16 => rope.char_to_utf16_cu(index) - rope.char_to_utf16_cu(start),
    };
    Position::new(saturating_u32(line), saturating_u32(column))
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PositionEncoding::{Utf8, Utf16};

    fn at(text: &str, line: u32, character: u32, encoding: PositionEncoding) -> usize {
        char_index(
            &Rope::from_str(text),
            Position::new(line, character),
            encoding,
        )
    }

    #[test]
    fn emoji_counts_two_utf16_units_and_four_utf8_bytes() {
        let text = "a😀b";
        assert_eq!(at(text, 0, 1, Utf16), 1);
        assert_eq!(at(text, 0, 3, Utf16), 2, "after the surrogate pair");
        assert_eq!(at(text, 0, 5, Utf8), 2, "after the four bytes");
    }

    #[test]
    fn a_column_inside_a_character_rounds_down_to_its_start() {
        assert_eq!(at("a😀b", 0, 2, Utf16), 1, "between the two surrogates");
        assert_eq!(at("aé", 0, 2, Utf8), 1, "inside the two-byte é");
    }

    #[test]
    fn crlf_and_lone_cr_end_lines_and_columns_clamp_before_them() {
        let text = "ab\r\ncd\ref\ngh";
        assert_eq!(at(text, 1, 0, Utf16), 4);
        assert_eq!(at(text, 2, 0, Utf16), 7, "a lone CR ends a line");
        assert_eq!(at(text, 0, 99, Utf16), 2, "clamped before \\r\\n");
        assert_eq!(at(text, 1, 99, Utf8), 6, "clamped before \\r");
        assert_eq!(at(text, 3, 99, Utf8), text.chars().count());
    }

    #[test]
    fn unicode_line_separators_are_not_lsp_line_breaks() {
        // U+2028 and U+0085 are line breaks for ropey's default features, but not for LSP.
        let text = "a\u{2028}b\u{85}c\nd";
        assert_eq!(at(text, 1, 0, Utf16), 6);
    }

    #[test]
    fn lines_past_the_end_clamp_to_the_end_of_the_document() {
        assert_eq!(at("abc\n", 7, 3, Utf16), 4);
        assert_eq!(at("", 0, 3, Utf16), 0);
    }

    #[test]
    fn position_of_inverts_char_index() {
        let rope = Rope::from_str("x😀\r\n\tü😀z\rq");
        for index in 0..=rope.len_chars() {
            for encoding in [Utf8, Utf16] {
                let position = position_of(&rope, index, encoding);
                let back = char_index(&rope, position, encoding);
                // Between \r and \n there is no position of its own: it maps to the line end.
                if rope.get_char(index.wrapping_sub(1)) == Some('\r')
                    && rope.get_char(index) == Some('\n')
                {
                    assert_eq!(back, index - 1);
                } else {
                    assert_eq!(back, index, "{encoding:?} {position:?}");
                }
            }
        }
    }
}
