//! The border between LSP types and the core's plain types. Positions cross it exactly once.

use tower_lsp_server::ls_types::{self as lsp, PositionEncodingKind};

use crate::document::{Position, PositionEncoding, Range, TextChange};

pub fn position(position: lsp::Position) -> Position {
    Position::new(position.line, position.character)
}

pub fn range(range: lsp::Range) -> Range {
    Range::new(self::position(range.start), self::position(range.end))
}

pub fn to_lsp_position(position: Position) -> lsp::Position {
    lsp::Position::new(position.line, position.character)
}

pub fn text_change(change: lsp::TextDocumentContentChangeEvent) -> TextChange {
    TextChange {
        range: change.range.map(range),
        text: change.text,
    }
}

pub fn encoding_kind(encoding: PositionEncoding) -> PositionEncodingKind {
    match encoding {
        PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
        PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
    }
}
