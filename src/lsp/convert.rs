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

/// The local path of a `file://` URI (percent-decoded); `None` for other schemes.
pub fn file_path(uri: &str) -> Option<std::path::PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = rest.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(high), Some(low)) if hex(high).is_some() && hex(low).is_some() => {
                decoded.push((hex(high)? * 16 + hex(low)?) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    let path = String::from_utf8(decoded).ok()?;
    // `file:///C:/x` on Windows.
    let path = match path.strip_prefix('/') {
        Some(rest) if rest.get(1..2) == Some(":") => rest.to_owned(),
        _ => path,
    };
    Some(std::path::PathBuf::from(path))
}

#[cfg(test)]
mod file_path_tests {
    use super::file_path;

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(
            file_path("file:///home/me/my%20project"),
            Some("/home/me/my project".into())
        );
        assert_eq!(file_path("file://localhost/tmp/a"), Some("/tmp/a".into()));
        assert_eq!(file_path("file:///C:/src"), Some("C:/src".into()));
        assert_eq!(file_path("untitled:Untitled-1"), None);
    }
}
