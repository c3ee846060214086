//! Property tests: random edit sequences applied to the rope-backed `Document` and to a plain
//! `String` model must leave identical text, in both position encodings.
//!
//! The model converts positions the slow, obvious way (scan the string), so it shares no code
//! with the rope implementation.

use codellama_lsp::document::{Document, Position, PositionEncoding, Range, TextChange};
use proptest::prelude::*;

/// Byte offsets where each line starts: after `\n`, after `\r\n`, after a lone `\r`.
fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
            starts.push(i + 1);
        }
    }
    starts
}

fn model_offset(text: &str, position: Position, encoding: PositionEncoding) -> usize {
    let starts = line_starts(text);
    let Some(&start) = starts.get(position.line as usize) else {
        return text.len();
    };
    let mut end = starts
        .get(position.line as usize + 1)
        .copied()
        .unwrap_or(text.len());
    let line = &text[start..end];
    if line.ends_with("\r\n") {
        end -= 2;
    } else if line.ends_with('\n') || line.ends_with('\r') {
        end -= 1;
    }
    let mut units = 0usize;
    for (offset, ch) in text[start..end].char_indices() {
        let width = match encoding {
            PositionEncoding::Utf8 => ch.len_utf8(),
            PositionEncoding::Utf16 => ch.len_utf16(),
        };
        // A column inside this character rounds down to its start.
        if units + width > position.character as usize {
            return start + offset;
        }
        units += width;
    }
    end
}

fn model_apply(text: &mut String, change: &TextChange, encoding: PositionEncoding) {
    match change.range {
        None => *text = change.text.clone(),
        Some(range) => {
            let a = model_offset(text, range.start, encoding);
            let b = model_offset(text, range.end, encoding);
            let (start, end) = (a.min(b), a.max(b));
            text.replace_range(start..end, &change.text);
        }
    }
}

/// Text rich in what breaks position code: astral characters, combining marks, CJK, all three
/// line endings, tabs, and Unicode line separators that LSP does not treat as line breaks.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "a", "Z", " ", "\t", "\n", "\r\n", "\r", "é", "e\u{301}", "😀", "👍🏽", "中", "𝕏",
        "\u{2028}", "\u{85}", "fn ", "{}", "\"",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|parts| parts.concat())
}

fn position() -> impl Strategy<Value = Position> {
    // Lines and columns past the end are deliberate: they must clamp.
    (0u32..14, 0u32..50).prop_map(|(line, character)| Position::new(line, character))
}

fn change() -> impl Strategy<Value = TextChange> {
    prop_oneof![
        9 => (position(), position(), tricky_text()).prop_map(|(start, end, text)| TextChange {
            range: Some(Range::new(start, end)),
            text,
        }),
        1 => tricky_text().prop_map(|text| TextChange { range: None, text }),
    ]
}

fn encoding() -> impl Strategy<Value = PositionEncoding> {
    prop_oneof![Just(PositionEncoding::Utf8), Just(PositionEncoding::Utf16)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn rope_edits_match_a_plain_string(
        initial in tricky_text(),
        changes in prop::collection::vec(change(), 1..25),
        encoding in encoding(),
    ) {
        let mut document = Document::new(&initial, 1, "text");
        let mut model = initial.clone();
        for (version, change) in changes.iter().enumerate() {
            document.apply_changes(std::slice::from_ref(change), version as i32 + 2, encoding);
            model_apply(&mut model, change, encoding);
            prop_assert_eq!(document.text(), model.clone());
        }
    }

    #[test]
    fn positions_round_trip_through_char_indices(text in tricky_text(), encoding in encoding()) {
        let document = Document::new(&text, 1, "text");
        for (char_index, (byte_offset, _)) in text.char_indices().enumerate() {
            let position = document.position_of(char_index, encoding);
            let back = model_offset(&text, position, encoding);
            // Between \r and \n there is no position of its own: it maps to the line's end.
            let inside_crlf = text[..byte_offset].ends_with('\r') && text[byte_offset..].starts_with('\n');
            if inside_crlf {
                prop_assert_eq!(back, byte_offset - 1);
            } else {
                prop_assert_eq!(back, byte_offset);
            }
        }
    }
}

#[test]
fn fifty_megabytes_open_and_take_thousands_of_edits() {
    let line = "fn f() { let s = \"héllo 😀\"; }\r\n";
    let text = line.repeat(50 * 1024 * 1024 / line.len());
    let lines = text.matches('\n').count() as u32;
    let mut document = Document::new(&text, 1, "rust");
    // Each edit is O(log n): 5000 of them on 50 MB would take minutes if any step were linear.
    let mut state = 12345u64;
    for version in 0..5000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let line = (state >> 33) as u32 % lines;
        let at = Position::new(line, 10);
        let change = TextChange {
            range: Some(Range::new(at, Position::new(line, 12))),
            text: "😀".into(),
        };
        document.apply_changes(&[change], version, PositionEncoding::Utf16);
    }
    assert_eq!(document.rope().len_lines() as u32, lines + 1);
    assert_eq!(document.version(), 4999);
}
