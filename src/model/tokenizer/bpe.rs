//! GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`), producing the same ids as
//! llama.cpp's `llama_tokenize(add_special = false, parse_special = false)`.
//!
//! Encoding, in llama.cpp's order:
//! 1. User-defined tokens are split out of the raw text first, longest text first (even though
//!    special-token parsing is off). Control and unknown tokens are never split out, so text can
//!    never turn into them that way.
//! 2. Every remaining text fragment is pre-tokenized by the list of regexes that llama.cpp picks
//!    for `tokenizer.ggml.pre` (see [`PreType`]). Each regex splits every current piece into the
//!    matches *and* the unmatched stretches between them; the next regex works on each piece
//!    separately, so a match never crosses an earlier boundary and a lookahead at the end of a
//!    piece sees the end of the text.
//! 3. Each piece's UTF-8 bytes are mapped to the GPT-2 byte-level alphabet (a printable character
//!    per byte), and the pair of adjacent symbols with the lowest merge rank is merged until no
//!    listed merge applies (ties: leftmost pair).
//! 4. Each final symbol becomes the token with exactly that text; a symbol that is not a token
//!    falls back, as in llama.cpp, to the single-byte tokens of its (ASCII) bytes.
//!
//! Decoding reverses the byte-level map; control, unknown, unused and undefined tokens decode to
//! nothing and user-defined tokens to their text as stored.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use regex::Regex;

use super::{Fragment, TokenizerError, Utf8Stream};
use crate::model::gguf::{GgufFile, Metadata};

/// Token types as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// The type with this id; unknown ids count as undefined, as in llama.cpp.
    pub fn from_id(id: i64) -> Self {
        match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pre-tokenizers
// ---------------------------------------------------------------------------------------------

/// The GPT-2 pattern. llama.cpp lists it without the final `|\s+` but runs it through a
/// hand-written matcher (`unicode_regex_split_custom_gpt2`) that has that branch; the result is
/// the same either way, since a lone unmatched space becomes a piece of its own.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The Llama 3 pattern as llama.cpp writes it (the `(?i:...)` contractions spelled out).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen2 pattern: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek's CJK run: U+4E00–U+9FA5, U+0800–U+4E00, U+AC00–U+D7FF.
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// DeepSeek LLM's letter class (the cased letters Lu/Ll/Lt as of its tokenizer.json), written
/// with escapes because several of its code points are not NFC-stable.
const DEEPSEEK_LLM_LETTERS: &str = concat!(
    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}",
    r"\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}",
    r"\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}",
    r"\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}",
    r"\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}",
    r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}",
    r"\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}",
    r"\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}",
    r"\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}",
    r"\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}",
    r"\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}",
    r"\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}",
    r"\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}",
    r"\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}",
    r"\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}",
    r"\x{1E900}-\x{1E943}]+",
);

/// DeepSeek LLM's punctuation class: ASCII `!-/`, `:-~`, their full-width forms, U+2018–U+201F
/// and U+3000–U+3002.
const DEEPSEEK_LLM_PUNCT: &str =
    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+";

/// A pre-tokenizer: the regex list llama.cpp's `llm_tokenizer_bpe` uses for a
/// `LLAMA_VOCAB_PRE_TYPE_*`, selected by the GGUF `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreType {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT` ("default", and llama.cpp's choice when the key is
    /// missing): `[\p{P}\$\+<=>\^~\|]+`, then GPT-2, then `\p{N}+`, then `[0-9][0-9][0-9]`.
    Default,
    /// `LLAMA_VOCAB_PRE_TYPE_GPT2` ("gpt-2", also accepted as "gpt2"; also "phi-2", "mpt",
    /// "olmo" and "jais", which llama.cpp maps to the same list): the GPT-2 pattern alone.
    Gpt2,
    /// `LLAMA_VOCAB_PRE_TYPE_LLAMA3` ("llama3", "llama-v3", "llama-bpe"): the Llama 3 pattern;
    /// whole pieces that are tokens skip merging (`ignore_merges`), and BOS is added by default.
    Llama3,
    /// `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM` ("deepseek-llm"): `[\r\n]`, `\s?` + cased letters,
    /// `\s?` + ASCII/full-width punctuation, `\s+$`, a CJK run, `\p{N}+`.
    DeepseekLlm,
    /// `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER` ("deepseek-coder"): `[\r\n]`, `\s?\p{L}+`,
    /// `\s?\p{P}+`, a CJK run, `\p{N}`.
    DeepseekCoder,
    /// `LLAMA_VOCAB_PRE_TYPE_QWEN2` ("qwen2", "deepseek-r1-qwen", "megrez"): the Qwen2 pattern.
    Qwen2,
    /// `LLAMA_VOCAB_PRE_TYPE_STARCODER` ("starcoder", "refact", "command-r", "codeshell",
    /// "exaone", "minerva-7b"): `\p{N}` (every digit apart), then GPT-2.
    Starcoder,
    /// `LLAMA_VOCAB_PRE_TYPE_SMOLLM` ("smollm"): llama.cpp gives it the same list as
    /// [`PreType::Starcoder`]: `\p{N}`, then GPT-2.
    Smollm,
}

impl PreType {
    /// The pre-tokenizer llama.cpp selects for a `tokenizer.ggml.pre` name, if supported here.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" => PreType::Default,
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => PreType::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" => PreType::Llama3,
            "deepseek-llm" => PreType::DeepseekLlm,
            "deepseek-coder" => PreType::DeepseekCoder,
            "qwen2" | "deepseek-r1-qwen" | "megrez" => PreType::Qwen2,
            "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                PreType::Starcoder
            }
            "smollm" => PreType::Smollm,
            _ => return None,
        })
    }

    /// The regexes, applied in order (each splits the pieces the previous ones produced).
    pub fn regexes(self) -> &'static [&'static str] {
        match self {
            PreType::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            PreType::Gpt2 => &[GPT2],
            PreType::Llama3 => &[LLAMA3],
            PreType::DeepseekLlm => &[
                r"[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                DEEPSEEK_LLM_PUNCT,
                r"\s+$",
                DEEPSEEK_CJK,
                r"\p{N}+",
            ],
            PreType::DeepseekCoder => &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                DEEPSEEK_CJK,
                r"\p{N}",
            ],
            PreType::Qwen2 => &[QWEN2],
            PreType::Starcoder | PreType::Smollm => &[r"\p{N}", GPT2],
        }
    }

    /// llama.cpp's `ignore_merges`: a piece that is itself a token is emitted without merging.
    pub fn ignore_merges(self) -> bool {
        self == PreType::Llama3
    }

    /// Whether llama.cpp adds BOS for this pre-tokenizer when `add_bos_token` is absent.
    pub fn default_add_bos(self) -> bool {
        self == PreType::Llama3
    }
}

/// The lookahead branch that ends the GPT-2, Llama 3 and Qwen2 patterns.
const WS_LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// One compiled pre-tokenizer regex.
///
/// The `regex` crate has no lookahead, so a pattern ending in `|\s+(?!\S)|\s+` is compiled
/// as ending in `|\s+` and the lookahead is applied afterwards. A match made only of whitespace
/// comes from that tail, unless the pattern has a `\s*[\r\n]+` branch and the match contains
/// `\r` or `\n` (then that branch matched first). A tail match is the whole whitespace run
/// (`\s+` is greedy); `\s+(?!\S)` would have taken all of it at the end of the text, and all but
/// its last character when more than one character is followed by a non-space (that character
/// then starts the next match); with one whitespace character before a non-space both branches
/// give that character. For everything else the `regex` crate's leftmost-first semantics equal
/// those of a backtracking engine.
#[derive(Debug, Clone)]
struct SplitRegex {
    regex: Regex,
    ws_lookahead: bool,
    /// The pattern has a `\s*[\r\n]+` branch before the tail.
    newline_branch: bool,
}

impl SplitRegex {
    fn new(pattern: &str) -> Result<Self, regex::Error> {
        let (pattern, ws_lookahead) = match pattern.strip_suffix(WS_LOOKAHEAD_TAIL) {
            Some(head) => (format!(r"{head}|\s+"), true),
            None => (pattern.to_string(), false),
        };
        Ok(SplitRegex {
            newline_branch: ws_lookahead && pattern.contains(r"|\s*[\r\n]+|"),
            regex: Regex::new(&pattern)?,
            ws_lookahead,
        })
    }

    /// Appends to `out` the pieces of `hay[range]`: the matches and the stretches between them.
    fn split_into(
        &self,
        hay: &str,
        range: std::ops::Range<usize>,
        out: &mut Vec<std::ops::Range<usize>>,
    ) {
        let part = &hay[range.clone()];
        let base = range.start;
        let mut done = 0;
        let mut at = 0;
        while at < part.len() {
            let Some(m) = self.regex.find_at(part, at) else {
                break;
            };
            let mut end = m.end();
            if self.ws_lookahead && end < part.len() {
                let text = m.as_str();
                let mut chars = text.chars();
                let newline = |c: char| self.newline_branch && (c == '\r' || c == '\n');
                let all_space = chars.clone().all(|c| c.is_whitespace() && !newline(c));
                if all_space && let (Some(_), Some(last)) = (chars.next(), chars.next_back()) {
                    end -= last.len_utf8();
                }
            }
            if m.start() > done {
                out.push(base + done..base + m.start());
            }
            if end > m.start() {
                out.push(base + m.start()..base + end);
                done = end;
                at = end;
            } else {
                // An empty match: step over one character.
                done = done.max(m.start());
                at = m.start() + part[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if done < part.len() {
            out.push(base + done..range.end);
        }
    }
}

/// The compiled regex list of a pre-tokenizer.
#[derive(Debug, Clone)]
struct PreTokenizer {
    regexes: Vec<SplitRegex>,
}

/// Non-ASCII whitespace is replaced by this before matching, as llama.cpp does (its
/// `std::regex` fallback only knows ASCII `\s`). With Unicode-aware classes this changes
/// nothing except literal ranges that contain whitespace (DeepSeek's U+3000–U+3002 and
/// U+0800–U+4E00), which then do not match those spaces — as in llama.cpp.
const WHITESPACE_STANDIN: char = '\u{0B}';

impl PreTokenizer {
    fn new(pre: PreType) -> Result<Self, regex::Error> {
        let regexes = pre
            .regexes()
            .iter()
            .map(|r| SplitRegex::new(r))
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Splits `text` into pieces (byte ranges of `text`), none empty, covering all of it.
    fn split(&self, text: &str) -> Vec<std::ops::Range<usize>> {
        if text.is_empty() {
            return Vec::new();
        }
        // `orig[i]` is the offset in `text` of byte `i` of the matched string, recorded only
        // when a substitution made the two differ.
        let mut orig: Vec<usize> = Vec::new();
        let mut subst = String::new();
        let needs_subst = text.chars().any(|c| !c.is_ascii() && c.is_whitespace());
        let hay: &str = if needs_subst {
            subst.reserve(text.len());
            orig.reserve(text.len() + 1);
            for (at, c) in text.char_indices() {
                let c = if !c.is_ascii() && c.is_whitespace() {
                    WHITESPACE_STANDIN
                } else {
                    c
                };
                orig.extend(std::iter::repeat_n(at, c.len_utf8()));
                subst.push(c);
            }
            orig.push(text.len());
            &subst
        } else {
            text
        };

        let mut pieces = Vec::with_capacity(hay.len() / 4 + 1);
        pieces.push(0..hay.len());
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                re.split_into(hay, piece, &mut next);
            }
            pieces = next;
        }
        if needs_subst {
            for p in &mut pieces {
                *p = orig[p.start]..orig[p.end];
            }
        }
        pieces
    }
}

// ---------------------------------------------------------------------------------------------
// byte-level alphabet
// ---------------------------------------------------------------------------------------------

/// GPT-2's byte-to-character table: printable Latin-1 bytes (`!`–`~`, `¡`–`¬`, `®`–`ÿ`) stand
/// for themselves; the other 68 bytes, in increasing order, become U+0100, U+0101, ….
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    let mut b = 0u32;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        let cp = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        // All values are below 0x144, so valid scalar values.
        table[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
};

/// Code points of the byte-level alphabet are all below this.
const ALPHABET_END: usize = 0x144;

/// The inverse of [`BYTE_TO_CHAR`], indexed by code point.
const CHAR_TO_BYTE: [Option<u8>; ALPHABET_END] = {
    let mut inverse = [None; ALPHABET_END];
    let mut b = 0;
    while b < 256 {
        inverse[BYTE_TO_CHAR[b] as usize] = Some(b as u8);
        b += 1;
    }
    inverse
};

/// The character GPT-2's byte-level alphabet uses for byte `b` (e.g. `Ġ` for a space).
pub fn byte_level_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// The byte a character of the byte-level alphabet stands for.
pub fn byte_level_byte(c: char) -> Option<u8> {
    CHAR_TO_BYTE.get(c as usize).copied().flatten()
}

// ---------------------------------------------------------------------------------------------
// the tokenizer
// ---------------------------------------------------------------------------------------------

/// Token texts that llama.cpp marks as control (end-of-generation, end-of-turn) whatever type
/// the file gives them (llama-vocab.cpp, "auto-detect special tokens by text").
const AUTO_CONTROL_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Infilling token texts llama.cpp marks as control when the matching `tokenizer.ggml.*` id
/// keys (current and deprecated) are absent from the metadata.
const AUTO_FIM_TEXTS: &[(&[&str], &[&str])] = &[
    (
        &[
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        ],
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.suffix_token_id",
        ],
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.middle_token_id",
        ],
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_pad_token_id"],
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        &["tokenizer.ggml.fim_rep_token_id"],
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    (&["tokenizer.ggml.fim_sep_token_id"], &["<|file_sep|>"]),
];

/// Token texts llama.cpp always treats as user-defined (its gpt-oss rendering workaround).
const FORCED_USER_DEFINED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// llama.cpp's default BOS/EOS id for BPE vocabularies without those keys.
const DEFAULT_SPECIAL_ID: u32 = 11;

const NONE: usize = usize::MAX;
const NO_PART: u32 = u32::MAX;

/// A fast multiply-rotate hasher for the vocabulary tables (keys are short strings and ids;
/// the tables are fixed once built, so hash flooding is not a concern for lookups).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, Default::default())
}

/// Pieces already merged (raw text → ids), shared by `encode` calls. A clone starts empty.
#[derive(Default)]
struct WordCache(Mutex<FastMap<Box<str>, Box<[u32]>>>);

/// Entries kept before the cache is emptied and refilled.
const WORD_CACHE_CAPACITY: usize = 1 << 16;
/// Longer pieces are not cached.
const WORD_CACHE_MAX_LEN: usize = 64;

impl Clone for WordCache {
    fn clone(&self) -> Self {
        WordCache::default()
    }
}

impl std::fmt::Debug for WordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WordCache")
    }
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct Scratch {
    word: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
}

/// One symbol of a word being merged: a span of the byte-level word in a linked list.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
    /// Id of the symbol's text among the merge halves, or `NO_PART`.
    part: u32,
}

/// The byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    file: String,
    pre_name: String,
    pre: PreType,
    pre_tokenizer: PreTokenizer,
    warnings: Vec<String>,
    tokens: Vec<String>,
    /// Effective types after llama.cpp's text-based overrides.
    types: Vec<TokenType>,
    /// Text → id, for every token of any type (llama.cpp's `text_to_token`).
    token_ids: FastMap<String, u32>,
    /// Merge halves → dense ids, and (left, right) half ids → rank.
    parts: FastMap<String, u32>,
    ranks: FastMap<(u32, u32), u32>,
    /// The merge-half id of each byte's byte-level character.
    byte_parts: [u32; 256],
    cache: WordCache,
    /// User-defined token ids split out of raw text, longest text first.
    user_defined: Vec<u32>,
    /// Decoded bytes of every token, concatenated; token `i` is `decoded[ends[i-1]..ends[i]]`.
    decoded: Vec<u8>,
    decoded_ends: Vec<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl BpeTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_metadata(&file.metadata)
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_metadata(md: &Metadata) -> Result<Self, TokenizerError> {
        let file = md.file_name().to_string();
        let invalid = |problem: String| TokenizerError::Invalid {
            file: file.clone(),
            problem,
        };
        let model = md.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(invalid(format!(
                "tokenizer.ggml.model is '{model}'; only byte-level BPE ('gpt2') is supported"
            )));
        }
        let mut warnings = Vec::new();
        let pre_name = md.opt_str("tokenizer.ggml.pre")?.map(str::to_string);
        let pre = match pre_name.as_deref() {
            None => {
                warnings.push(
                    "tokenizer.ggml.pre is missing; using llama.cpp's 'default' pre-tokenizer \
                     (generation quality may be degraded)"
                        .to_string(),
                );
                PreType::Default
            }
            Some(name) => PreType::from_name(name).unwrap_or_else(|| {
                warnings.push(format!(
                    "unknown pre-tokenizer '{name}'; falling back to the GPT-2 pattern \
                     (tokens may differ from the model's own tokenizer)"
                ));
                PreType::Gpt2
            }),
        };

        let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            return Err(invalid("tokenizer.ggml.tokens is empty".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(invalid(format!("too many tokens ({n})")));
        }
        // llama.cpp accepts a type array at least as long as the token list.
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => md.get_i64_array("tokenizer.ggml.token_type")?,
            None => vec![TokenType::Normal as i64; n],
        };
        if types.len() < n {
            return Err(invalid(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                types.len()
            )));
        }
        let types = types[..n].iter().map(|&t| TokenType::from_id(t)).collect();
        let merges = md.get_str_array("tokenizer.ggml.merges")?;

        let special_id = |key: &str, warnings: &mut Vec<String>| -> Result<_, TokenizerError> {
            let default = (DEFAULT_SPECIAL_ID < n as u32).then_some(DEFAULT_SPECIAL_ID);
            Ok(match md.opt_u32(key)? {
                None => default,
                Some(id) if (id as usize) < n => Some(id),
                Some(id) => {
                    warnings.push(format!(
                        "{key} {id} is out of range ({n} tokens); using {default:?}"
                    ));
                    default
                }
            })
        };
        let bos = special_id("tokenizer.ggml.bos_token_id", &mut warnings)?;
        let eos = special_id("tokenizer.ggml.eos_token_id", &mut warnings)?;
        let add_bos = md
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(pre.default_add_bos());
        let fim_keys_present: Vec<bool> = AUTO_FIM_TEXTS
            .iter()
            .map(|(keys, _)| keys.iter().any(|k| md.contains_key(k)))
            .collect();

        let mut tok = Self::build(
            &file,
            pre,
            tokens.to_vec(),
            types,
            merges,
            &fim_keys_present,
        )?;
        tok.pre_name = pre_name.unwrap_or_default();
        tok.warnings.splice(0..0, warnings);
        tok.bos = bos;
        tok.eos = eos;
        tok.add_bos = add_bos;
        Ok(tok)
    }

    /// Builds a tokenizer from a token list and merges (for tests and synthetic vocabularies).
    /// BOS and EOS are unset and `add_bos_token` is false.
    pub fn new(
        pre: PreType,
        tokens: Vec<String>,
        types: Vec<TokenType>,
        merges: &[String],
    ) -> Result<Self, TokenizerError> {
        if types.len() != tokens.len() {
            return Err(TokenizerError::Invalid {
                file: "vocabulary".into(),
                problem: format!("{} tokens but {} types", tokens.len(), types.len()),
            });
        }
        Self::build(
            "vocabulary",
            pre,
            tokens,
            types,
            merges,
            &[false; AUTO_FIM_TEXTS.len()],
        )
    }

    fn build(
        file: &str,
        pre: PreType,
        mut tokens: Vec<String>,
        mut types: Vec<TokenType>,
        merges: &[String],
        fim_keys_present: &[bool],
    ) -> Result<Self, TokenizerError> {
        let invalid = |problem: String| TokenizerError::Invalid {
            file: file.to_string(),
            problem,
        };
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(invalid(format!(
                "the vocabulary must have 1 to 2^32-1 tokens, not {}",
                tokens.len()
            )));
        }
        let pre_tokenizer = PreTokenizer::new(pre)
            .map_err(|e| invalid(format!("cannot compile the {pre:?} pre-tokenizer: {e}")))?;

        let mut token_ids = fast_map(tokens.len());
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                // llama.cpp's placeholder for empty tokens.
                *text = format!("[EMPTY_{i}]");
            }
            if let Some(first) = token_ids.insert(text.clone(), i as u32) {
                return Err(invalid(format!(
                    "duplicate token {text:?} (ids {first} and {i})"
                )));
            }
        }

        // llama.cpp's type overrides by token text.
        let mut mark_control = |text: &str| {
            if let Some(&id) = token_ids.get(text) {
                types[id as usize] = TokenType::Control;
            }
        };
        for (&(_, texts), &present) in AUTO_FIM_TEXTS.iter().zip(fim_keys_present) {
            if !present {
                texts.iter().for_each(|t| mark_control(t));
            }
        }
        AUTO_CONTROL_TEXTS.iter().for_each(|t| mark_control(t));
        for text in FORCED_USER_DEFINED {
            if let Some(&id) = token_ids.get(*text) {
                types[id as usize] = TokenType::UserDefined;
            }
        }
        let has = |t: &str| token_ids.contains_key(t);
        let harmony =
            (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>"));
        if let (true, Some(&end)) = (harmony, token_ids.get("<|end|>")) {
            types[end as usize] = TokenType::UserDefined;
        }
        if let (true, Some(&s)) = (has("<|tool_response>"), token_ids.get("</s>")) {
            types[s as usize] = TokenType::Normal;
        }

        // Merges: "left right", split at the first space after the first byte; the first
        // occurrence of a pair keeps its rank.
        let mut parts: FastMap<String, u32> = fast_map(merges.len() + 256);
        let mut ranks = fast_map(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let (left, right) = match merge.as_bytes().iter().skip(1).position(|&b| b == b' ') {
                Some(p) => (&merge[..p + 1], &merge[p + 2..]),
                None => ("", ""),
            };
            let mut intern = |s: &str| {
                let next = parts.len() as u32;
                *parts.entry(s.to_string()).or_insert(next)
            };
            let key = (intern(left), intern(right));
            let rank = u32::try_from(rank).map_err(|_| invalid("too many merges".into()))?;
            ranks.entry(key).or_insert(rank);
        }

        let mut decoded = Vec::new();
        let mut decoded_ends = Vec::with_capacity(tokens.len());
        let mut user_defined = Vec::new();
        for (i, (text, &kind)) in tokens.iter().zip(&types).enumerate() {
            match kind {
                TokenType::UserDefined => {
                    decoded.extend_from_slice(text.as_bytes());
                    user_defined.push(i as u32);
                }
                TokenType::Normal => decode_byte_level(text, &mut decoded),
                TokenType::Byte => {
                    if let Some(b) = byte_token_value(text) {
                        decoded.push(b);
                    }
                }
                TokenType::Control
                | TokenType::Unknown
                | TokenType::Unused
                | TokenType::Undefined => {}
            }
            decoded_ends.push(decoded.len());
        }
        user_defined.sort_by(|&a, &b| {
            let (ta, tb) = (&tokens[a as usize], &tokens[b as usize]);
            tb.len().cmp(&ta.len()).then(a.cmp(&b))
        });

        let byte_parts = std::array::from_fn(|b| {
            let mut buf = [0; 4];
            let c: &str = BYTE_TO_CHAR[b].encode_utf8(&mut buf);
            parts.get(c).copied().unwrap_or(NO_PART)
        });
        Ok(BpeTokenizer {
            file: file.to_string(),
            pre_name: String::new(),
            pre,
            pre_tokenizer,
            warnings: Vec::new(),
            tokens,
            types,
            token_ids,
            byte_parts,
            parts,
            ranks,
            cache: WordCache::default(),
            user_defined,
            decoded,
            decoded_ends,
            bos: None,
            eos: None,
            add_bos: false,
        })
    }

    /// Name of the file (or "vocabulary") the tokenizer came from, for messages.
    pub fn source_name(&self) -> &str {
        &self.file
    }

    /// The pre-tokenizer in use.
    pub fn pre_type(&self) -> PreType {
        self.pre
    }

    /// `tokenizer.ggml.pre` as stored (empty when absent).
    pub fn pre_name(&self) -> &str {
        &self.pre_name
    }

    /// Problems that did not stop loading, e.g. an unknown pre-tokenizer name.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model wants BOS at the start of a prompt (metadata, or llama.cpp's default
    /// for the pre-tokenizer).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// The token's text as stored (byte-level alphabet for normal tokens).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The token's effective type (after llama.cpp's overrides by text).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of the token with exactly this stored text, of any type.
    pub fn piece_to_id(&self, text: &str) -> Option<u32> {
        self.token_ids.get(text).copied()
    }

    /// Splits `text` as the pre-tokenizer does (user-defined tokens are not split out here).
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        self.pre_tokenizer
            .split(text)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    /// Tokenizes `text` as llama.cpp does with `parse_special = false`; `add_bos` prepends the
    /// BOS id (if the vocabulary has one).
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_bos && let Some(bos) = self.bos {
            out.push(bos);
        }
        // Another thread using the cache just means this call goes without.
        let mut cache = self.cache.0.try_lock().ok();
        let mut scratch = Scratch::default();
        for fragment in self.split_user_defined(text) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(t) => {
                    for range in self.pre_tokenizer.split(t) {
                        let piece = &t[range];
                        let cache = cache
                            .as_deref_mut()
                            .filter(|_| piece.len() <= WORD_CACHE_MAX_LEN);
                        match cache {
                            Some(cache) => {
                                if let Some(ids) = cache.get(piece) {
                                    out.extend_from_slice(ids);
                                    continue;
                                }
                                let start = out.len();
                                self.encode_piece(piece, &mut scratch, &mut out);
                                if cache.len() >= WORD_CACHE_CAPACITY {
                                    cache.clear();
                                }
                                cache.insert(piece.into(), out[start..].into());
                            }
                            None => self.encode_piece(piece, &mut scratch, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// Splits user-defined tokens out of raw text, longest text first (llama.cpp's order).
    fn split_user_defined<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        super::split_user_defined(text, &self.user_defined, |id| {
            self.tokens[id as usize].as_str()
        })
    }

    fn part(&self, text: &str) -> u32 {
        self.parts.get(text).copied().unwrap_or(NO_PART)
    }

    /// Maps one pre-tokenized piece to the byte-level alphabet, merges it and appends its
    /// tokens.
    fn encode_piece(&self, piece: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        let Scratch {
            word,
            symbols,
            queue,
        } = scratch;
        word.clear();
        symbols.clear();
        queue.clear();
        for &b in piece.as_bytes() {
            let start = word.len();
            let c = BYTE_TO_CHAR[b as usize];
            word.push(c);
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: if index == 0 { NONE } else { index - 1 },
                next: index + 1,
                part: self.byte_parts[b as usize],
            });
        }
        if self.pre.ignore_merges()
            && let Some(&id) = self.token_ids.get(word.as_str())
        {
            out.push(id);
            return;
        }
        let Some(last) = symbols.last_mut() else {
            return;
        };
        last.next = NONE;

        // Min-heap on (rank, left index); `size` detects pairs that have since changed.
        for right in 1..symbols.len() {
            self.queue_pair(symbols, right - 1, right, queue);
        }
        while let Some(Reverse((_, l, r, size))) = queue.pop() {
            let (left, right) = (symbols[l], symbols[r]);
            // Symbols only grow, so a changed or emptied side shows in the lengths.
            if left.len == 0 || right.len == 0 || left.len + right.len != size {
                continue;
            }
            symbols[l].len = size;
            symbols[l].part = self.part(&word[left.start..left.start + size]);
            symbols[l].next = right.next;
            symbols[r].len = 0;
            if right.next != NONE {
                symbols[right.next].prev = l;
            }
            self.queue_pair(symbols, left.prev, l, queue);
            self.queue_pair(symbols, l, right.next, queue);
        }

        let mut i = 0;
        while i != NONE {
            let s = symbols[i];
            let text = &word[s.start..s.start + s.len];
            match self.token_ids.get(text) {
                Some(&id) => out.push(id),
                // llama.cpp's fallback: each byte of the byte-level text as a one-byte token,
                // which only ASCII bytes can be (others are dropped, as there).
                None => out.extend(text.bytes().filter_map(|b| {
                    let c = [b];
                    std::str::from_utf8(&c)
                        .ok()
                        .and_then(|s| self.token_ids.get(s).copied())
                })),
            }
            i = s.next;
        }
    }

    fn queue_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left], symbols[right]);
        if l.part == NO_PART || r.part == NO_PART {
            return;
        }
        if let Some(&rank) = self.ranks.get(&(l.part, r.part)) {
            queue.push(Reverse((rank, left, right, l.len + r.len)));
        }
    }

    /// The bytes `id` decodes to: normal tokens through the inverse byte-level map,
    /// user-defined tokens as stored, byte tokens (`<0xNN>`) that byte; control, unknown,
    /// unused and undefined tokens (and ids out of range) nothing.
    pub fn piece_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.decoded_ends.get(i) else {
            return &[];
        };
        let start = if i == 0 { 0 } else { self.decoded_ends[i - 1] };
        &self.decoded[start..end]
    }

    /// Owned version of [`BpeTokenizer::piece_bytes`] (llama.cpp's `token_to_piece` with
    /// `special = false`).
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.piece_bytes(id).to_vec()
    }

    /// Decodes ids to text: the pieces concatenated, invalid UTF-8 replaced by U+FFFD. No
    /// clean-up of spaces is applied.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece_bytes(id));
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A decoder for ids that arrive one at a time (generation).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            utf8: Utf8Stream::default(),
        }
    }
}

/// Appends the bytes a normal token's byte-level text stands for. A character outside the
/// alphabet is written as llama.cpp's `llama_decode_text` does: `[UNK_BYTE_0x<hex><text>]`.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// The byte of a `<0xNN>` token.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Turns a stream of ids into text, holding back bytes until they form complete UTF-8
/// characters (byte-level tokens often end inside a character).
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t BpeTokenizer,
    utf8: Utf8Stream,
}

impl StreamDecoder<'_> {
    /// Adds one id and returns the text that is now complete (possibly empty). Bytes that can
    /// never become valid UTF-8 are replaced by U+FFFD right away.
    pub fn push(&mut self, id: u32) -> String {
        self.utf8.push(self.tokenizer.piece_bytes(id))
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        self.utf8.has_pending()
    }

    /// Returns whatever is left; an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        self.utf8.finish()
    }
}

#[cfg(test)]
mod tests;
