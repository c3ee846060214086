use super::*;
use crate::model::gguf::{GgufFile, GgufWriter};

fn byte_char(b: u8) -> char {
    byte_level_char(b)
}

/// Byte-level text of `s`.
fn bl(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

/// A vocabulary with the 256 byte-level characters (ids 0..256), then `extra` normal tokens
/// (byte-level texts), then `specials` with their types.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    merges: Vec<String>,
}

impl Vocab {
    fn new(extra: &[&str], merges: &[&str], specials: &[(&str, TokenType)]) -> Self {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        let mut types = vec![TokenType::Normal; 256];
        for e in extra {
            tokens.push(bl(e));
            types.push(TokenType::Normal);
        }
        for (t, ty) in specials {
            tokens.push(t.to_string());
            types.push(*ty);
        }
        let merges = merges
            .iter()
            .map(|m| {
                let (a, b) = m.split_once('|').unwrap();
                format!("{} {}", bl(a), bl(b))
            })
            .collect();
        Vocab {
            tokens,
            types,
            merges,
        }
    }

    fn tokenizer(&self, pre: PreType) -> BpeTokenizer {
        BpeTokenizer::new(pre, self.tokens.clone(), self.types.clone(), &self.merges).unwrap()
    }

    fn id(&self, text: &str) -> u32 {
        let bl_text = bl(text);
        self.tokens
            .iter()
            .position(|t| *t == bl_text || t == text)
            .unwrap() as u32
    }

    fn gguf(&self, pre: Option<&str>, extra: impl FnOnce(&mut GgufWriter)) -> GgufFile {
        let mut w = GgufWriter::new();
        w.add("tokenizer.ggml.model", "gpt2");
        if let Some(pre) = pre {
            w.add("tokenizer.ggml.pre", pre);
        }
        w.add("tokenizer.ggml.tokens", self.tokens.clone());
        w.add(
            "tokenizer.ggml.token_type",
            self.types.iter().map(|&t| t as i32).collect::<Vec<i32>>(),
        );
        w.add("tokenizer.ggml.merges", self.merges.clone());
        extra(&mut w);
        GgufFile::parse(&w.to_bytes().unwrap(), "test.gguf").unwrap()
    }
}

#[test]
fn byte_table_matches_gpt2() {
    assert_eq!(byte_level_char(b'!'), '!');
    assert_eq!(byte_level_char(b'~'), '~');
    assert_eq!(byte_level_char(0x00), '\u{100}');
    assert_eq!(byte_level_char(b' '), '\u{120}'); // Ġ
    assert_eq!(byte_level_char(b'\n'), '\u{10A}'); // Ċ
    assert_eq!(byte_level_char(0x7F), '\u{121}');
    assert_eq!(byte_level_char(0xA0), '\u{142}');
    assert_eq!(byte_level_char(0xAD), '\u{143}');
    assert_eq!(byte_level_char(0xE9), '\u{E9}');
    for b in 0..=255u8 {
        assert_eq!(byte_level_byte(byte_level_char(b)), Some(b));
    }
    let alphabet = (0..0x200u32).filter_map(char::from_u32);
    assert_eq!(
        alphabet.filter(|&c| byte_level_byte(c).is_some()).count(),
        256
    );
    assert_eq!(byte_level_byte(' '), None);
}

fn split(pre: PreType, text: &str) -> Vec<String> {
    PreTokenizer::new(pre)
        .unwrap()
        .split(text)
        .into_iter()
        .map(|r| text[r].to_string())
        .collect()
}

#[test]
fn all_pre_tokenizers_compile() {
    for pre in [
        PreType::Default,
        PreType::Gpt2,
        PreType::Llama3,
        PreType::DeepseekLlm,
        PreType::DeepseekCoder,
        PreType::Qwen2,
        PreType::Starcoder,
        PreType::Smollm,
    ] {
        PreTokenizer::new(pre).unwrap();
    }
}

// The expected splits below were traced by hand through llama.cpp's matchers
// (`unicode_regex_split_custom_gpt2`/`_llama3`, and the std::regex fallback for the others).

#[test]
fn gpt2_split() {
    assert_eq!(
        split(PreType::Gpt2, "Hello world's  123 !!\n\n  x"),
        ["Hello", " world", "'s", " ", " 123", " !!", "\n\n ", " x"]
    );
    // A whitespace run at the very end is kept whole; before a word it leaves one space.
    assert_eq!(split(PreType::Gpt2, "a   "), ["a", "   "]);
    assert_eq!(split(PreType::Gpt2, "a\t\tb"), ["a", "\t", "\t", "b"]);
    assert_eq!(
        split(PreType::Gpt2, "don't I'll"),
        ["don", "'t", " I", "'ll"]
    );
    // Contractions are case-sensitive here.
    assert_eq!(split(PreType::Gpt2, "I'LL"), ["I", "'", "LL"]);
}

#[test]
fn smollm_and_starcoder_split_digits_first() {
    for pre in [PreType::Smollm, PreType::Starcoder] {
        assert_eq!(split(pre, "abc 123"), ["abc", " ", "1", "2", "3"]);
        assert_eq!(split(pre, "x2024y"), ["x", "2", "0", "2", "4", "y"]);
        // Non-ASCII digits are \p{N} too.
        assert_eq!(split(pre, "v\u{663}\u{664}"), ["v", "\u{663}", "\u{664}"]);
    }
}

#[test]
fn llama3_split() {
    assert_eq!(
        split(PreType::Llama3, "Hello 123456 world\n\n  foo's"),
        [
            "Hello", " ", "123", "456", " world", "\n\n", " ", " foo", "'s"
        ]
    );
    assert_eq!(split(PreType::Llama3, "I'LL"), ["I", "'LL"]);
    assert_eq!(
        split(PreType::Llama3, "x = (y);\n"),
        ["x", " =", " (", "y", ");\n"]
    );
    assert_eq!(split(PreType::Llama3, "\tfoo"), ["\tfoo"]);
}

#[test]
fn qwen2_split() {
    assert_eq!(split(PreType::Qwen2, "abc 12"), ["abc", " ", "1", "2"]);
    assert_eq!(
        split(PreType::Qwen2, "it's\r\n\r\nok"),
        ["it", "'s", "\r\n\r\n", "ok"]
    );
}

#[test]
fn deepseek_splits() {
    assert_eq!(
        split(PreType::DeepseekCoder, "foo(bar)\n12 中文"),
        ["foo", "(", "bar", ")", "\n", "1", "2", " ", "中文"]
    );
    assert_eq!(
        split(PreType::DeepseekLlm, "Hello, world!\n 123"),
        ["Hello", ",", " world", "!", "\n", " ", "123"]
    );
    // Its punctuation class `:-~` covers ASCII letters, and its CJK range U+0800–U+4E00
    // covers U+2126 (Ω, a cased letter): later regexes split earlier pieces again.
    assert_eq!(
        split(PreType::DeepseekLlm, "\u{3A9}\u{3A3} ab \u{2126}m"),
        ["\u{3A9}\u{3A3}", " ab", " ", "\u{2126}", "m"]
    );
}

#[test]
fn default_split() {
    assert_eq!(
        split(PreType::Default, "a+b=1234"),
        ["a", "+", "b", "=", "123", "4"]
    );
}

#[test]
fn non_ascii_whitespace_keeps_original_offsets() {
    assert_eq!(
        split(PreType::Gpt2, "a\u{3000}b\u{a0} c"),
        ["a", "\u{3000}", "b", "\u{a0}", " c"]
    );
    assert_eq!(split(PreType::Llama3, "a\u{3000}b"), ["a", "\u{3000}b"]);
    // llama.cpp replaces U+3000 before matching, so DeepSeek's U+0800–U+4E00 range misses it.
    assert_eq!(
        split(PreType::DeepseekCoder, "中\u{3000}文"),
        ["中", "\u{3000}", "文"]
    );
    assert_eq!(
        split(PreType::DeepseekLlm, "x\u{3000}\u{3001}"),
        ["x", "\u{3000}", "\u{3001}"]
    );
    assert!(split(PreType::Gpt2, "").is_empty());
}

#[test]
fn merges_follow_rank_then_position() {
    let v = Vocab::new(
        &["bc", "ab", "aa", "he", "ll", "hell", "hello"],
        &["b|c", "a|b", "a|a", "h|e", "l|l", "he|ll", "hell|o"],
        &[],
    );
    let t = v.tokenizer(PreType::Gpt2);
    // "b c" has the lower rank, so "abc" is a + bc, not ab + c.
    assert_eq!(t.encode("abc", false), [v.id("a"), v.id("bc")]);
    // Equal ranks: the leftmost pair merges first.
    assert_eq!(t.encode("aaa", false), [v.id("aa"), v.id("a")]);
    assert_eq!(t.encode("hello", false), [v.id("hello")]);
    assert_eq!(
        t.encode("hello hello", false),
        [v.id("hello"), v.id(" "), v.id("hello")]
    );
    assert_eq!(t.encode("", false), Vec::<u32>::new());
    assert_eq!(t.decode(&t.encode("hello abc", false)), "hello abc");
}

#[test]
fn merges_need_not_produce_tokens() {
    // "x y" merges, but "xy" is no token: llama.cpp falls back to its single-byte tokens.
    let v = Vocab::new(&[], &["x|y"], &[]);
    let t = v.tokenizer(PreType::Gpt2);
    assert_eq!(t.encode("xy", false), [v.id("x"), v.id("y")]);
}

#[test]
fn llama3_ignores_merges_for_whole_tokens() {
    // "abc" is a token but no merge chain reaches it.
    let v = Vocab::new(&["abc", "ab"], &["a|b"], &[]);
    assert_eq!(
        v.tokenizer(PreType::Llama3).encode("abc", false),
        [v.id("abc")]
    );
    assert_eq!(
        v.tokenizer(PreType::Gpt2).encode("abc", false),
        [v.id("ab"), v.id("c")]
    );
}

#[test]
fn special_tokens() {
    let v = Vocab::new(
        &[],
        &[],
        &[
            ("<|endoftext|>", TokenType::Control),
            ("<tool>", TokenType::UserDefined),
            ("<tool> call", TokenType::UserDefined),
            ("<|im_end|>", TokenType::UserDefined),
            ("<0x41>", TokenType::Byte),
            ("<unused>", TokenType::Unused),
        ],
    );
    let t = v.tokenizer(PreType::Gpt2);
    let (eot, tool, tool_call, im_end, byte_a, unused) = (
        v.id("<|endoftext|>"),
        v.id("<tool>"),
        v.id("<tool> call"),
        v.id("<|im_end|>"),
        v.id("<0x41>"),
        v.id("<unused>"),
    );
    // Control tokens never come from text.
    let ids = t.encode("<|endoftext|>", false);
    assert!(!ids.contains(&eot));
    assert_eq!(t.decode(&ids), "<|endoftext|>");
    // User-defined tokens are split out first, longest first.
    assert_eq!(
        t.encode("x<tool>y<tool> call", false),
        [v.id("x"), tool, v.id("y"), tool_call]
    );
    // "<|im_end|>" is user-defined in the file but llama.cpp forces it to control.
    assert_eq!(t.token_type(im_end), Some(TokenType::Control));
    assert!(!t.encode("<|im_end|>", false).contains(&im_end));

    assert_eq!(t.token_to_piece(eot), b"");
    assert_eq!(t.token_to_piece(im_end), b"");
    assert_eq!(t.token_to_piece(tool_call), b"<tool> call");
    assert_eq!(t.token_to_piece(byte_a), b"A");
    assert_eq!(t.token_to_piece(unused), b"");
    assert_eq!(t.token_to_piece(v.id(" ")), b" ");
    assert_eq!(t.token_to_piece(u32::MAX), b"");
    assert_eq!(
        t.decode(&[tool, v.id(" "), eot, tool_call]),
        "<tool> <tool> call"
    );
}

#[test]
fn from_gguf_reads_metadata() {
    let v = Vocab::new(&["he"], &["h|e"], &[("<|endoftext|>", TokenType::Control)]);
    let eot = v.id("<|endoftext|>");
    let f = v.gguf(Some("smollm"), |w| {
        w.add("tokenizer.ggml.bos_token_id", eot);
        w.add("tokenizer.ggml.eos_token_id", eot);
        w.add("tokenizer.ggml.add_bos_token", true);
    });
    let t = BpeTokenizer::from_gguf(&f).unwrap();
    assert_eq!(t.pre_type(), PreType::Smollm);
    assert_eq!(t.pre_name(), "smollm");
    assert!(t.warnings().is_empty());
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.add_bos_token()),
        (Some(eot), Some(eot), true)
    );
    assert_eq!(t.encode("he", true), [eot, v.id("he")]);
    assert_eq!(t.vocab_size(), 258);

    // Unknown names fall back to GPT-2 with a warning; a missing name to llama.cpp's default.
    let t = BpeTokenizer::from_gguf(&v.gguf(Some("no-such-pre"), |_| {})).unwrap();
    assert_eq!(t.pre_type(), PreType::Gpt2);
    assert!(
        t.warnings()[0].contains("no-such-pre"),
        "{:?}",
        t.warnings()
    );
    let t = BpeTokenizer::from_gguf(&v.gguf(None, |_| {})).unwrap();
    assert_eq!(t.pre_type(), PreType::Default);
    assert_eq!(t.warnings().len(), 1);
    // llama.cpp's default special id 11 when the keys are absent; llama3 adds BOS by default.
    assert_eq!(t.bos_id(), Some(11));
    let t = BpeTokenizer::from_gguf(&v.gguf(Some("llama-bpe"), |_| {})).unwrap();
    assert!(t.add_bos_token());
}

#[test]
fn from_gguf_rejects_bad_vocabularies() {
    let v = Vocab::new(&[], &[], &[]);
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", "llama");
    w.add("tokenizer.ggml.tokens", v.tokens.clone());
    w.add("tokenizer.ggml.merges", Vec::<String>::new());
    let f = GgufFile::parse(&w.to_bytes().unwrap(), "x.gguf").unwrap();
    assert!(BpeTokenizer::from_gguf(&f).is_err());

    let f = v.gguf(Some("gpt2"), |w| {
        w.add("tokenizer.ggml.token_type", vec![1i32; 3]);
    });
    let e = BpeTokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("token_type"), "{e}");

    let mut dup = v.tokens.clone();
    dup.push(dup[5].clone());
    let f = v.gguf(Some("gpt2"), |w| {
        w.add("tokenizer.ggml.tokens", dup);
        w.add("tokenizer.ggml.token_type", vec![1i32; 257]);
    });
    let e = BpeTokenizer::from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("duplicate"), "{e}");

    let f = v.gguf(Some("gpt2"), |w| {
        w.add("tokenizer.ggml.merges", 5u32);
    });
    assert!(BpeTokenizer::from_gguf(&f).is_err());
}

#[test]
fn malformed_merges_are_tolerated() {
    let mut v = Vocab::new(&["ab"], &["a|b"], &[]);
    v.merges.insert(0, "nospace".into());
    v.merges.insert(0, String::new());
    v.merges.push(format!("{} {}", bl("a"), bl("b"))); // duplicate, later rank ignored
    let t = v.tokenizer(PreType::Gpt2);
    assert_eq!(t.encode("ab", false), [v.id("ab")]);
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let v = Vocab::new(&[], &[], &[]);
    let t = v.tokenizer(PreType::Gpt2);
    let ids = t.encode("é€😀", false);
    assert_eq!(ids.len(), 2 + 3 + 4);
    let mut d = t.stream_decoder();
    let mut out = Vec::new();
    for &id in &ids {
        out.push(d.push(id));
    }
    assert_eq!(out.concat(), "é€😀");
    assert_eq!(out[0], "");
    assert_eq!(out[1], "é");
    assert!(!d.has_pending());

    // Invalid bytes are replaced at once; an unfinished character at the end by finish().
    let mut d = t.stream_decoder();
    assert_eq!(d.push(0xFF), "\u{FFFD}");
    assert_eq!(d.push(b'a' as u32), "a");
    assert_eq!(d.push(0xE2), "");
    assert!(d.has_pending());
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(t.decode(&[0xE2, b'x' as u32]), "\u{FFFD}x");
}

/// A small xorshift generator for reproducible random text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A random scalar value, biased towards ASCII, whitespace and common scripts.
    fn char(&mut self) -> char {
        let r = self.next();
        let cp = match r % 8 {
            0 => (r >> 8) % 0x80,
            1 => [0x20, 0x09, 0x0A, 0x0D, 0xA0, 0x3000, 0x2028, 0x85][(r >> 8) as usize % 8],
            2 => 0x30 + (r >> 8) % 10,
            3 => 0x80 + (r >> 8) % 0x780,
            4 => 0x4E00 + (r >> 8) % 0x5000,
            5 => 0x1F300 + (r >> 8) % 0x300,
            _ => (r >> 8) % 0x110000,
        };
        char::from_u32(cp as u32).unwrap_or('\u{FFFD}')
    }

    fn string(&mut self, max_len: u64) -> String {
        let len = self.next() % (max_len + 1);
        (0..len).map(|_| self.char()).collect()
    }
}

#[test]
fn random_text_round_trips_with_every_pre_tokenizer() {
    let v = Vocab::new(
        &["he", "ll", "hell", "hello", "  ", "12"],
        &["h|e", "l|l", "he|ll", "hell|o", " | ", "1|2"],
        &[("<sep>", TokenType::UserDefined)],
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for pre in [
        PreType::Default,
        PreType::Gpt2,
        PreType::Llama3,
        PreType::DeepseekLlm,
        PreType::DeepseekCoder,
        PreType::Qwen2,
        PreType::Starcoder,
        PreType::Smollm,
    ] {
        let t = v.tokenizer(pre);
        for _ in 0..300 {
            let mut s = rng.string(40);
            if rng.next().is_multiple_of(4) {
                s.push_str("<sep>hello 12");
            }
            let pieces = t.pre_tokenize(&s);
            assert_eq!(pieces.concat(), s, "{pre:?}");
            assert!(pieces.iter().all(|p| !p.is_empty()));
            let ids = t.encode(&s, false);
            assert_eq!(t.decode(&ids), s, "{pre:?} {s:?} -> {ids:?}");
        }
    }
}

/// Splits like llama.cpp's matcher with a real lookahead (fancy-regex), for comparison.
fn split_with_lookahead(regexes: &[fancy_regex::Regex], text: &str) -> Vec<String> {
    let hay: String = text
        .chars()
        .map(|c| {
            if !c.is_ascii() && c.is_whitespace() {
                WHITESPACE_STANDIN
            } else {
                c
            }
        })
        .collect();
    let mut pieces = vec![hay.as_str()];
    for re in regexes {
        let mut next = Vec::new();
        for p in pieces {
            let mut done = 0;
            for m in re.find_iter(p) {
                let m = m.unwrap();
                if m.start() > done {
                    next.push(&p[done..m.start()]);
                }
                if m.end() > m.start() {
                    next.push(m.as_str());
                }
                done = m.end();
            }
            if done < p.len() {
                next.push(&p[done..]);
            }
        }
        pieces = next;
    }
    // Map back through the substitution, piece by piece (both have the same characters).
    let mut chars = text.chars();
    pieces
        .iter()
        .map(|p| chars.by_ref().take(p.chars().count()).collect())
        .collect()
}

#[test]
fn lookahead_emulation_matches_a_backtracking_engine() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let alphabet = [
        " ", " ", "  ", "\t", "\n", "\r\n", "\u{3000}", "\u{a0}", "a", "Z", "é", "中", "1", "٣",
        "'", "'s", "'LL", "!", ".", "(", "$", "😀", "\u{301}", "\u{0}", "x",
    ];
    for pre in [
        PreType::Default,
        PreType::Gpt2,
        PreType::Llama3,
        PreType::DeepseekLlm,
        PreType::DeepseekCoder,
        PreType::Qwen2,
        PreType::Smollm,
    ] {
        let ours = PreTokenizer::new(pre).unwrap();
        let ours = |s: &str| -> Vec<String> {
            ours.split(s)
                .into_iter()
                .map(|r| s[r].to_string())
                .collect()
        };
        let fancy: Vec<_> = pre
            .regexes()
            .iter()
            .map(|r| fancy_regex::Regex::new(r).unwrap())
            .collect();
        for _ in 0..2000 {
            let n = rng.next() % 16;
            let s: String = (0..n)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(ours(&s), split_with_lookahead(&fancy, &s), "{pre:?} {s:?}");
        }
        for _ in 0..300 {
            let s = rng.string(30);
            assert_eq!(ours(&s), split_with_lookahead(&fancy, &s), "{pre:?} {s:?}");
        }
    }
}

#[test]
fn llama_cpp_type_overrides() {
    let v = Vocab::new(
        &[],
        &[],
        &[
            ("<|fim_prefix|>", TokenType::UserDefined),
            ("<|channel|>", TokenType::Control),
            ("<|end|>", TokenType::Normal),
            ("<|return|>", TokenType::Control),
            ("<|call|>", TokenType::Control),
        ],
    );
    let (fim, channel, end) = (v.id("<|fim_prefix|>"), v.id("<|channel|>"), v.id("<|end|>"));
    let t = BpeTokenizer::from_gguf(&v.gguf(Some("gpt2"), |_| {})).unwrap();
    assert_eq!(t.token_type(fim), Some(TokenType::Control));
    // gpt-oss: "<|channel|>" is always user-defined, and "<|end|>" is not end-of-generation.
    assert_eq!(t.token_type(channel), Some(TokenType::UserDefined));
    assert_eq!(t.token_type(end), Some(TokenType::UserDefined));
    assert_eq!(t.encode("a<|channel|>", false), [v.id("a"), channel]);
    assert_eq!(t.token_to_piece(channel), b"<|channel|>");

    // With the infilling id in the metadata, the text is not looked at.
    let t = BpeTokenizer::from_gguf(&v.gguf(Some("gpt2"), |w| {
        w.add("tokenizer.ggml.prefix_token_id", 0u32);
    }))
    .unwrap();
    assert_eq!(t.token_type(fim), Some(TokenType::UserDefined));
    assert_eq!(t.encode("<|fim_prefix|>", false), [fim]);
}
