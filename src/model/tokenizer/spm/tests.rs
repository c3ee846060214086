use super::*;
use crate::model::gguf::{Array, GgufFile, Metadata};
use crate::test_support::{Rng, require_fixture};
use std::time::Instant;

fn tokenizer(name: &str) -> Option<SpmTokenizer> {
    let path = crate::test_support::fixture(name)?;
    let file = GgufFile::read(path).unwrap();
    Some(SpmTokenizer::from_gguf(&file).unwrap())
}

/// A small vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte pieces, then `extra`.
fn synthetic(extra: &[(&str, f32, TokenType)], add_space_prefix: bool) -> SpmTokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0; 3];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(TokenType::Byte);
    }
    for &(text, score, kind) in extra {
        tokens.push(text.to_string());
        scores.push(score);
        types.push(kind);
    }
    let config = SpmConfig {
        add_space_prefix,
        ..SpmConfig::default()
    };
    SpmTokenizer::new(tokens, scores, types, config).unwrap()
}

fn ids_of(tok: &SpmTokenizer, pieces: &[&str]) -> Vec<u32> {
    pieces.iter().map(|p| tok.piece_to_id(p).unwrap()).collect()
}

// ------------------------------------------------------------------------------------------
// llama.cpp's test vectors
// ------------------------------------------------------------------------------------------

#[test]
fn llama_cpp_vocab_test_vectors() {
    let path = require_fixture!("ggml-vocab-llama-spm.gguf");
    let tok = SpmTokenizer::from_gguf(&GgufFile::read(&path).unwrap()).unwrap();
    let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    assert_eq!(cases.pop(), Some(""), "the .inp file ends with a separator");
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(cases.len(), 46);
    assert_eq!(expected.len(), 46);
    let mut failures = Vec::new();
    for (text, want) in cases.iter().zip(&expected) {
        let got = tok.encode(text, false);
        if &got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        // Decoding gives the text back (these inputs contain no U+2581).
        assert_eq!(tok.decode(&got, true), *text);
    }
    assert!(
        failures.is_empty(),
        "{} of 46 vectors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------------------------------
// Code Llama facts
// ------------------------------------------------------------------------------------------

#[test]
fn codellama_pieces_merge_from_plain_text() {
    for name in [
        "codellama-tiny-random.gguf",
        "codellama-tiny-random-legacy.gguf",
    ] {
        let Some(tok) = tokenizer(name) else { return };
        assert_eq!(tok.vocab_size(), 32016);
        assert_eq!(tok.encode(" <PRE>", false), vec![29871, 32007]);
        assert_eq!(
            tok.encode("<SUF> <MID> <EOT>", false),
            vec![32008, 32009, 32010]
        );
        assert_eq!(tok.encode("<s>", false), vec![529, 29879, 29958]);
        let close = tok.encode("</s>", false);
        assert!(
            close
                .iter()
                .all(|&id| tok.token_type(id) == Some(TokenType::Normal))
        );
        assert_eq!(tok.decode(&close, false), " </s>");
        assert_eq!(tok.encode("\u{263a}", false), vec![29871, 31171]);
        assert_eq!(tok.encode("", true), vec![1]);
        assert_eq!(tok.encode("x", true)[0], 1);
        assert!(tok.add_bos_token());
        let fim = tok.fim_tokens().unwrap();
        assert_eq!(
            (fim.prefix, fim.suffix, fim.middle, fim.eot),
            (32007, 32008, 32009, 32010)
        );
        assert_eq!(tok.token_type(32007), Some(TokenType::Normal));
        assert_eq!(tok.decode(&[32007, 32008], false), " <PRE> <SUF>");
    }
}

#[test]
fn llama2_has_no_infilling_tokens() {
    let Some(tok) = tokenizer("llama-2-tiny-random.gguf") else {
        return;
    };
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(tok.fim_tokens(), None);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (1, 2, 0));
}

#[test]
fn control_pieces_never_come_from_text() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    let controls: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| {
            matches!(
                tok.token_type(id),
                Some(TokenType::Control | TokenType::Unknown)
            )
        })
        .collect();
    assert_eq!(controls, vec![0, 1, 2]);
    let ids = tok.encode("<unk><s></s> <s> </s>\n<s>\t</s><<s>>", false);
    assert!(ids.iter().all(|id| !controls.contains(id)), "{ids:?}");

    // Even where a chain of merges reaches a control piece, it is not used.
    let tok = synthetic(
        &[
            ("a", -1.0, TokenType::Normal),
            ("b", -1.0, TokenType::Normal),
            ("ab", 0.0, TokenType::Control),
            ("abc", 5.0, TokenType::Normal),
            ("c", -1.0, TokenType::Normal),
        ],
        false,
    );
    assert_eq!(tok.encode("ab", false), ids_of(&tok, &["a", "b"]));
    assert_eq!(tok.encode("abc", false), ids_of(&tok, &["a", "b", "c"]));
}

// ------------------------------------------------------------------------------------------
// merge order and special piece types (synthetic vocabularies)
// ------------------------------------------------------------------------------------------

#[test]
fn equal_scores_merge_leftmost_first() {
    let tok = synthetic(
        &[
            ("a", -10.0, TokenType::Normal),
            ("b", -10.0, TokenType::Normal),
            ("ab", -1.0, TokenType::Normal),
            ("ba", -1.0, TokenType::Normal),
        ],
        false,
    );
    assert_eq!(tok.encode("aba", false), ids_of(&tok, &["ab", "a"]));
    assert_eq!(tok.encode("bab", false), ids_of(&tok, &["ba", "b"]));
    assert_eq!(tok.encode("abab", false), ids_of(&tok, &["ab", "ab"]));

    let tok = synthetic(
        &[
            ("a", -10.0, TokenType::Normal),
            ("b", -10.0, TokenType::Normal),
            ("ab", -2.0, TokenType::Normal),
            ("ba", -1.0, TokenType::Normal),
        ],
        false,
    );
    // The higher score wins regardless of position.
    assert_eq!(tok.encode("aba", false), ids_of(&tok, &["a", "ba"]));
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let tok = synthetic(&[("\u{2581}", -1.0, TokenType::Normal)], true);
    let ids = tok.encode("é", false);
    assert_eq!(ids, ids_of(&tok, &["\u{2581}", "<0xC3>", "<0xA9>"]));
    assert_eq!(tok.decode(&ids, true), "é");

    // Without byte pieces, each byte of an unknown character (here also the three bytes of
    // the `▁` prefix, which is not a piece either) becomes <unk>.
    let tok = SpmTokenizer::new(
        vec!["<unk>".into(), "<s>".into(), "</s>".into(), "a".into()],
        vec![0.0; 4],
        vec![
            TokenType::Unknown,
            TokenType::Control,
            TokenType::Control,
            TokenType::Normal,
        ],
        SpmConfig::default(),
    )
    .unwrap();
    assert_eq!(tok.encode("aé", false), vec![0, 0, 0, 3, 0, 0]);
}

#[test]
fn user_defined_pieces_are_split_out_first() {
    let tok = synthetic(
        &[
            ("\u{2581}", -1.0, TokenType::Normal),
            ("x", -1.0, TokenType::Normal),
            ("y", -1.0, TokenType::Normal),
            ("<tool>", 0.0, TokenType::UserDefined),
            ("<tool>x", 0.0, TokenType::UserDefined),
        ],
        true,
    );
    let [sp, x, y, tool, toolx] = ids_of(&tok, &["\u{2581}", "x", "y", "<tool>", "<tool>x"])[..]
    else {
        unreachable!()
    };
    // Like llama.cpp: longest user-defined piece first; text after one gets the `▁` prefix.
    assert_eq!(tok.encode("y<tool>xy", false), vec![sp, y, toolx, sp, y]);
    assert_eq!(tok.encode("<tool>y", false), vec![tool, sp, y]);
    assert_eq!(tok.encode("<tool>", false), vec![tool]);
    assert_eq!(tok.encode("x<tool>", false), vec![sp, x, tool]);
    // User-defined pieces decode verbatim.
    assert_eq!(tok.decode(&[tool, sp, y], false), "<tool> y");
}

// ------------------------------------------------------------------------------------------
// infilling
// ------------------------------------------------------------------------------------------

#[test]
fn encode_infilling_matches_meta_definition() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    for text in [
        "",
        "x",
        "  x",
        " x",
        "\nfoo",
        "\n",
        "def f():\n    return 1\n",
        "<s>",
        "☺",
        "\t",
        "héllo",
    ] {
        let full = tok.encode(&format!("\u{263a}{text}"), false);
        assert_eq!(&full[..2], &[29871, 31171]);
        let ids = tok.encode_infilling(text);
        assert_eq!(ids, full[2..], "{text:?}");
        assert_eq!(tok.decode(&ids, false), text, "{text:?}");
    }
    assert_eq!(tok.encode_infilling(""), Vec::<u32>::new());
    // No implicit leading space: "x" is the bare piece, not "▁x".
    assert_eq!(
        tok.encode_infilling("x"),
        vec![tok.piece_to_id("x").unwrap()]
    );
    assert_eq!(tok.encode_infilling("\nfoo")[0], 13);
    // "▁x" outranks "▁▁" (score -1e9), so two spaces are "▁" + "▁x".
    assert_eq!(
        tok.encode_infilling("  x"),
        ids_of(&tok, &["\u{2581}", "\u{2581}x"])
    );
}

#[test]
fn encode_infilling_without_smiley_piece() {
    let tok = synthetic(
        &[
            ("\u{2581}", -1.0, TokenType::Normal),
            ("x", -1.0, TokenType::Normal),
            ("\u{2581}x", -0.5, TokenType::Normal),
        ],
        true,
    );
    assert_eq!(tok.encode("x", false), ids_of(&tok, &["\u{2581}x"]));
    assert_eq!(tok.encode_infilling("x"), ids_of(&tok, &["x"]));
    assert_eq!(tok.encode_infilling(" x"), ids_of(&tok, &["\u{2581}x"]));
    assert_eq!(tok.encode_infilling(""), Vec::<u32>::new());
}

// ------------------------------------------------------------------------------------------
// decoding
// ------------------------------------------------------------------------------------------

#[test]
fn pieces_decode_to_bytes() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    assert_eq!(tok.token_to_piece(1), b"");
    assert_eq!(tok.token_to_piece(2), b"");
    assert_eq!(tok.token_to_piece(0), b"");
    assert_eq!(tok.token_to_piece(3 + 0x41), b"A");
    assert_eq!(tok.token_to_piece(3 + 0xff), [0xff]);
    assert_eq!(tok.token_to_piece(29871), b" ");
    assert_eq!(tok.token_to_piece(15043), b" Hello");
    assert_eq!(tok.token_to_piece(40000), b"");
    let hello = tok.encode("Hello world", true);
    assert_eq!(tok.decode(&hello, false), " Hello world");
    assert_eq!(tok.decode(&hello, true), "Hello world");
    let mut with_eos = hello.clone();
    with_eos.push(2);
    assert_eq!(tok.decode(&with_eos, true), "Hello world");
    // Only one leading space is removed, and only from the first piece.
    assert_eq!(tok.decode(&tok.encode("  x", false), true), "  x");
    // A lone lead byte is invalid once the text ends.
    assert_eq!(tok.decode(&[3 + 0xe2, 3 + 0x41], false), "\u{FFFD}A");
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    let text = "a\u{1d11e}b";
    let ids = tok.encode(text, true);
    let byte_tokens = ids
        .iter()
        .filter(|&&id| tok.token_type(id) == Some(TokenType::Byte))
        .count();
    assert_eq!(byte_tokens, 4, "{ids:?}");
    let mut dec = tok.stream_decoder(true);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(dec.push(id));
    }
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().any(|p| p == "\u{1d11e}"), "{pieces:?}");
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    assert!(!dec.has_pending());
    assert_eq!(dec.finish(), "");

    // Bytes one at a time: nothing until the character is complete.
    let mut dec = tok.stream_decoder(false);
    let bytes: Vec<u32> = "€".bytes().map(|b| 3 + u32::from(b)).collect();
    assert_eq!(dec.push(bytes[0]), "");
    assert!(dec.has_pending());
    assert_eq!(dec.push(bytes[1]), "");
    assert_eq!(dec.push(bytes[2]), "€");

    // Invalid bytes become U+FFFD as soon as they are proven invalid.
    let mut dec = tok.stream_decoder(false);
    assert_eq!(dec.push(3 + 0xff), "\u{FFFD}");
    assert_eq!(dec.push(3 + 0xe2), "");
    assert_eq!(dec.push(3 + 0x41), "\u{FFFD}A");
    assert_eq!(dec.push(3 + 0xf0), "");
    assert_eq!(dec.push(3 + 0x9f), "");
    assert_eq!(dec.push(1), "");
    assert_eq!(dec.finish(), "\u{FFFD}");

    // Control tokens produce nothing; the leading-space skip waits for real text.
    let mut dec = tok.stream_decoder(true);
    assert_eq!(dec.push(1), "");
    assert_eq!(dec.push(15043), "Hello");
    assert_eq!(dec.push(15043), " Hello");
}

// ------------------------------------------------------------------------------------------
// properties and scale
// ------------------------------------------------------------------------------------------

fn random_char(rng: &mut Rng) -> char {
    const POOL: &[&str] = &[
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "a",
        "e",
        "the",
        "def ",
        "()",
        "{}",
        ";",
        "é",
        "ß",
        "中",
        "文",
        "日本語",
        "한",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "\u{301}",
        "\u{200d}",
        "\u{0}",
        "\u{7f}",
        "\u{1b}",
        "Ω",
        "→",
        "\u{fffd}",
        "\u{10ffff}",
        "<s>",
        "</s>",
        "<0x41>",
        "▁▁",
    ];
    loop {
        let c = match rng.below(4) {
            0 => char::from_u32(rng.below(0x80) as u32),
            1 => char::from_u32(rng.below(0x3000) as u32),
            2 => char::from_u32(rng.below(0x11_0000) as u32),
            _ => {
                let s = POOL[rng.below(POOL.len() as u64) as usize];
                s.chars().nth(rng.below(s.chars().count() as u64) as usize)
            }
        };
        // U+2581 is the escaped space and decodes to ' ', so it cannot round-trip.
        if let Some(c) = c.filter(|&c| c != '\u{2581}') {
            return c;
        }
    }
}

fn random_text(rng: &mut Rng, max_len: u64) -> String {
    const WORDS: &[&str] = &[
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "fn ",
        "let x = 1;",
        "Hello",
        " world",
        "中文",
        "😀",
        "<s>",
        "</s>",
        " <PRE>",
        "<SUF>",
        " <EOT>",
        "☺",
    ];
    let len = rng.below(max_len + 1);
    let mut s = String::new();
    for _ in 0..len {
        if rng.below(3) == 0 {
            s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        } else {
            s.push(random_char(rng));
        }
    }
    s
}

#[test]
fn decode_inverts_encode_on_random_text() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    let mut rng = Rng::new(2024);
    for _ in 0..3000 {
        let s = random_text(&mut rng, 40);
        let ids = tok.encode(&s, false);
        assert_eq!(tok.decode(&ids, true), s, "{s:?} -> {ids:?}");
        let infill = tok.encode_infilling(&s);
        assert_eq!(tok.decode(&infill, false), s, "{s:?} -> {infill:?}");
        // Streaming gives the same text as decoding at once.
        let mut dec = tok.stream_decoder(true);
        let mut streamed: String = ids.iter().map(|&id| dec.push(id)).collect();
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, s);
        assert!(
            ids.iter().all(|&id| id > 2),
            "control id from {s:?}: {ids:?}"
        );
    }
}

#[test]
fn large_inputs_are_not_quadratic() {
    let Some(tok) = tokenizer("codellama-tiny-random.gguf") else {
        return;
    };
    let mut rng = Rng::new(99);
    let mut mixed = String::new();
    while mixed.len() < 200_000 {
        mixed.push_str(&random_text(&mut rng, 30));
    }
    let inputs = [
        mixed,
        "a".repeat(200_000),
        " ".repeat(200_000),
        "\u{1d11e}".repeat(50_000),
        "fn main() { println!(\"hi\"); }\n".repeat(7000),
    ];
    for s in &inputs {
        let start = Instant::now();
        let ids = tok.encode(s, false);
        let elapsed = start.elapsed();
        eprintln!("{} bytes -> {} tokens in {elapsed:?}", s.len(), ids.len());
        assert_eq!(tok.decode(&ids, true), *s);
    }
}

// ------------------------------------------------------------------------------------------
// validation
// ------------------------------------------------------------------------------------------

fn metadata(n: usize) -> Metadata {
    let mut md = Metadata::new("v.gguf");
    md.insert("tokenizer.ggml.model", "llama");
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    tokens.extend((3..n).map(|i| format!("t{i}")));
    md.insert("tokenizer.ggml.tokens", tokens);
    md.insert("tokenizer.ggml.scores", vec![0.0f32; n]);
    let mut types = vec![2i32, 3, 3];
    types.resize(n, 1);
    md.insert("tokenizer.ggml.token_type", types);
    md
}

fn build_err(md: &Metadata) -> String {
    SpmTokenizer::from_metadata(md).unwrap_err().to_string()
}

#[test]
fn inconsistent_vocabularies_are_rejected() {
    SpmTokenizer::from_metadata(&metadata(10)).unwrap();

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.model", "gpt2");
    assert!(build_err(&md).contains("tokenizer.ggml.model is 'gpt2'"));

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.scores", vec![0.0f32; 9]);
    assert_eq!(
        build_err(&md),
        "v.gguf: tokenizer.ggml.scores has 9 entries but tokenizer.ggml.tokens has 10"
    );

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.token_type", vec![1i32; 11]);
    assert!(build_err(&md).contains("token_type has 11 entries"));

    let mut md = metadata(10);
    let mut types = vec![1u8; 10];
    types[4] = 9;
    md.insert("tokenizer.ggml.token_type", types);
    assert_eq!(build_err(&md), "v.gguf: token #4 has unknown token type 9");

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.bos_token_id", 10u32);
    assert_eq!(
        build_err(&md),
        "v.gguf: tokenizer.ggml.bos_token_id 10 is out of range (10 tokens)"
    );

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.unknown_token_id", -1i32);
    assert!(build_err(&md).contains("unknown_token_id"));

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.fim_pre_token_id", 99u32);
    assert!(build_err(&md).contains("fim_pre_token_id 99 is out of range"));

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.scores", vec!["x".to_string(); 10]);
    assert!(build_err(&md).contains("'tokenizer.ggml.scores' is array of string"));

    let mut md = metadata(10);
    md.insert("tokenizer.ggml.tokens", Array::U32(vec![1; 10]));
    assert!(build_err(&md).contains("expected array of string"));

    let mut md = metadata(300);
    let mut types = vec![1i32; 300];
    types[5] = 6;
    md.insert("tokenizer.ggml.token_type", types);
    assert!(build_err(&md).contains("byte token #5 has text \"t5\""));

    let mut md = Metadata::new("v.gguf");
    md.insert("tokenizer.ggml.model", "llama");
    assert_eq!(
        build_err(&md),
        "v.gguf: metadata key 'tokenizer.ggml.tokens' is missing"
    );

    // Optional parts default like llama.cpp.
    let mut md = metadata(10);
    md.insert("tokenizer.ggml.add_bos_token", false);
    let tok = SpmTokenizer::from_metadata(&md).unwrap();
    assert!(!tok.add_bos_token());
    assert!(tok.add_space_prefix());
}
