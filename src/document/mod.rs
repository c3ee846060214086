//! Open documents: the editor's text, held in a rope and edited exactly as the editor says.
//!
//! This module knows nothing of LSP types or IO. The protocol layer converts its messages into
//! [`TextChange`]s and hands them over in arrival order.

mod position;

pub use position::{Position, PositionEncoding, Range, char_index, position_of};

use ropey::Rope;

/// One content change: replace `range` by `text`, or the whole document when `range` is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextChange {
    pub range: Option<Range>,
    pub text: String,
}

/// The text of one open document, with the version and language the editor gave it.
#[derive(Clone, Debug)]
pub struct Document {
    rope: Rope,
    version: i32,
    language_id: String,
    /// Where the last change's text ended (a char index): where the cursor most likely is.
    edited_at: Option<usize>,
}

impl Document {
    pub fn new(text: &str, version: i32, language_id: impl Into<String>) -> Self {
        Self {
            rope: Rope::from_str(text),
            version,
            language_id: language_id.into(),
            edited_at: None,
        }
    }

    /// The char index just past the text of the last incremental change, if the last change was
    /// one (the cursor of someone typing).
    pub fn edited_at(&self) -> Option<usize> {
        self.edited_at.filter(|&at| at <= self.rope.len_chars())
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    pub fn text(&self) -> String {
        self.rope.to_string()
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    pub fn language_id(&self) -> &str {
        &self.language_id
    }

    /// Applies `changes` one after the other (each range refers to the text left by the previous
    /// one, as LSP specifies) and records `version`. Out-of-range positions clamp; a reversed range
    /// is read as if its ends were swapped. Never fails and never panics.
    pub fn apply_changes(
        &mut self,
        changes: &[TextChange],
        version: i32,
        encoding: PositionEncoding,
    ) {
        for change in changes {
            self.apply_change(change, encoding);
        }
        self.version = version;
    }

    fn apply_change(&mut self, change: &TextChange, encoding: PositionEncoding) {
        let Some(range) = change.range else {
            self.rope = Rope::from_str(&change.text);
            self.edited_at = None;
            return;
        };
        let a = self.char_index(range.start, encoding);
        let b = self.char_index(range.end, encoding);
        let (start, end) = if a <= b { (a, b) } else { (b, a) };
        self.rope.remove(start..end);
        self.rope.insert(start, &change.text);
        self.edited_at = Some(start + change.text.chars().count());
    }

    /// Inserts `text` at char index `at` (clamped to the end), as if the user typed it.
    pub fn insert(&mut self, at: usize, text: &str) {
        let at = at.min(self.rope.len_chars());
        self.rope.insert(at, text);
        self.edited_at = Some(at + text.chars().count());
    }

    /// The char index of `position`, clamped into the document.
    pub fn char_index(&self, position: Position, encoding: PositionEncoding) -> usize {
        char_index(&self.rope, position, encoding)
    }

    /// The position of `char_index` (clamped to the document's length).
    pub fn position_of(&self, char_index: usize, encoding: PositionEncoding) -> Position {
        position_of(&self.rope, char_index, encoding)
    }

    /// The position just past the last character.
    pub fn end_position(&self, encoding: PositionEncoding) -> Position {
        self.position_of(self.rope.len_chars(), encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PositionEncoding::{Utf8, Utf16};

    fn edit(line: u32, col: u32, end_line: u32, end_col: u32, text: &str) -> TextChange {
        TextChange {
            range: Some(Range::new(
                Position::new(line, col),
                Position::new(end_line, end_col),
            )),
            text: text.to_owned(),
        }
    }

    #[test]
    fn the_end_of_the_last_edit_is_where_the_cursor_likely_is() {
        let mut doc = Document::new("a😀\nb\n", 1, "python");
        assert_eq!(doc.edited_at(), None);
        doc.apply_changes(&[edit(0, 3, 0, 3, "xy")], 2, Utf16);
        assert_eq!(doc.edited_at(), Some(4), "after a, 😀, x, y");
        doc.apply_changes(&[edit(1, 0, 1, 1, "")], 3, Utf16);
        assert_eq!(
            doc.edited_at(),
            Some(5),
            "a deletion leaves it at its start"
        );
        doc.insert(0, "# ");
        assert_eq!(doc.edited_at(), Some(2));
        doc.apply_changes(
            &[TextChange {
                range: None,
                text: "new".into(),
            }],
            4,
            Utf16,
        );
        assert_eq!(doc.edited_at(), None, "a full replacement says nothing");
    }

    #[test]
    fn typing_after_an_emoji_in_utf16_and_utf8() {
        let mut doc = Document::new("let s = \"😀\";\r\n", 1, "rust");
        doc.apply_changes(&[edit(0, 11, 0, 11, "!")], 2, Utf16);
        assert_eq!(doc.text(), "let s = \"😀!\";\r\n");
        doc.apply_changes(&[edit(0, 13, 0, 14, "?")], 3, Utf8);
        assert_eq!(doc.text(), "let s = \"😀?\";\r\n");
        assert_eq!(doc.version(), 3);
    }

    #[test]
    fn changes_in_one_notification_apply_in_sequence() {
        let mut doc = Document::new("fn main() {}\n", 1, "rust");
        let changes = [
            edit(0, 11, 0, 11, "\n    todo!();\n"),
            edit(1, 4, 1, 8, "unimplemented"),
        ];
        doc.apply_changes(&changes, 2, Utf16);
        assert_eq!(doc.text(), "fn main() {\n    unimplemented!();\n}\n");
    }

    #[test]
    fn full_replacement_and_clamped_ranges() {
        let mut doc = Document::new("old", 1, "text");
        doc.apply_changes(
            &[TextChange {
                range: None,
                text: "new\r\ntext".into(),
            }],
            2,
            Utf16,
        );
        doc.apply_changes(&[edit(1, 2, 9, 9, "!")], 3, Utf16);
        assert_eq!(doc.text(), "new\r\nte!");
        doc.apply_changes(&[edit(0, 99, 0, 1, "")], 4, Utf16);
        assert_eq!(
            doc.text(),
            "n\r\nte!",
            "reversed range deletes the same span"
        );
        assert_eq!(doc.end_position(Utf16), Position::new(1, 3));
    }

    #[test]
    fn crlf_line_edits_keep_the_terminators() {
        let mut doc = Document::new("a\r\nb\r\nc", 1, "text");
        doc.apply_changes(&[edit(1, 0, 2, 0, "")], 2, Utf16);
        assert_eq!(doc.text(), "a\r\nc");
    }
}
