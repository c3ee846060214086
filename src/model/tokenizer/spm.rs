//! The Llama SentencePiece tokenizer, producing the same ids as llama.cpp's
//! `llama_tokenize(add_special, parse_special = false)`.
//!
//! Encoding: spaces become `▁` (U+2581) and one `▁` is prepended to non-empty input; the text is
//! split into characters, and the adjacent pair whose concatenation is a vocabulary piece with the
//! highest score is merged repeatedly (ties: leftmost pair first). Each final symbol becomes its
//! piece id, or, if it is not a piece, one `<0xNN>` byte token per UTF-8 byte.
//!
//! Which pieces text can turn into (llama.cpp matches any piece by text; we narrow that):
//! - normal, user-defined, unused and undefined (type 0) pieces take part in merging, as in
//!   llama.cpp (SentencePiece would split unused pieces back up; llama.cpp does not, and parity
//!   with llama.cpp is the goal);
//! - control (`<s>`, `</s>`), unknown and byte pieces never do: SentencePiece keeps them out of
//!   its piece table, so text must not turn into them, and in Llama vocabularies no chain of
//!   merges reaches them anyway, so this changes nothing for llama.cpp parity;
//! - user-defined pieces are, as in llama.cpp (even with `parse_special = false`), first split
//!   out of the raw text, longest piece first; text following one gets the `▁` prefix again.

use std::collections::{BinaryHeap, HashMap};

use super::{Fragment, TokenizerError, Utf8Stream};
use crate::model::gguf::{GgufFile, Metadata};

/// SentencePiece piece types as stored in `tokenizer.ggml.token_type`.
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
    pub fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Whether plain text may be turned into a piece of this type (see the module docs).
    fn text_can_produce(self) -> bool {
        matches!(
            self,
            TokenType::Normal | TokenType::UserDefined | TokenType::Unused | TokenType::Undefined
        )
    }
}

/// Special ids and flags that are not part of the piece list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpmConfig {
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    /// The model expects a BOS token at the start of a prompt (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Prepend `▁` to non-empty input (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
}

impl Default for SpmConfig {
    /// llama.cpp's defaults for Llama SentencePiece vocabularies.
    fn default() -> Self {
        SpmConfig {
            bos: 1,
            eos: 2,
            unk: 0,
            add_bos: true,
            add_space_prefix: true,
        }
    }
}

/// Code Llama's infilling tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FimTokens {
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    pub eot: u32,
}

#[derive(Debug, Clone)]
struct Piece {
    text: String,
    /// Merge priority; NaN is mapped to -inf and -0.0 to 0.0 so that a total order on floats
    /// agrees with IEEE comparison.
    score: f32,
    kind: TokenType,
}

/// The Llama SentencePiece tokenizer.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    file: String,
    pieces: Vec<Piece>,
    /// Text → id for the pieces text may turn into (later duplicates win, as in llama.cpp).
    mergeable: HashMap<String, u32>,
    /// Longest mergeable piece in bytes: longer candidate pairs need no lookup.
    max_piece_len: usize,
    /// Byte-fallback ids for each byte value.
    byte_ids: [Option<u32>; 256],
    /// User-defined piece ids, longest text first.
    user_defined: Vec<u32>,
    /// Decoded bytes of every piece, concatenated; piece `i` is `decoded[ends[i-1]..ends[i]]`.
    decoded: Vec<u8>,
    decoded_ends: Vec<usize>,
    config: SpmConfig,
    fim: Option<FimTokens>,
    /// The ids of `▁` and `☺` when `encode("☺")` yields exactly those two.
    infill_prefix: Option<[u32; 2]>,
}

/// A queued pair of adjacent symbols whose concatenation is a piece. Kept to 16 bytes, since
/// on long inputs the heap's memory traffic dominates the run time.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Bigram {
    /// Orders the max-heap: the score's total-order bits, then the inverted left index, so the
    /// highest score pops first and, among equal scores, the leftmost pair.
    key: u64,
    right: u32,
    /// Byte length of the concatenation when queued; a mismatch later means it is stale.
    size: u32,
}

impl Bigram {
    fn new(score: f32, left: u32, right: u32, size: u32) -> Self {
        // Map the float's bits to an unsigned integer with the same order as `total_cmp`.
        let bits = score.to_bits();
        let ordered = if bits >> 31 == 1 {
            !bits
        } else {
            bits | 1 << 31
        };
        Bigram {
            key: (u64::from(ordered) << 32) | u64::from(u32::MAX - left),
            right,
            size,
        }
    }

    fn left(&self) -> u32 {
        u32::MAX - self.key as u32
    }
}

const NONE: u32 = u32::MAX;
/// Symbols are indexed with u32 (half the memory of usize); longer fragments, which would need
/// more than 4 GiB of text, are merged in chunks of this many bytes.
const MAX_CHUNK: usize = (u32::MAX - 1) as usize;

/// A span of the escaped text in a doubly linked list of symbols.
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

impl Symbol {
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

fn byte_piece_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SpmTokenizer {
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
        if model != "llama" {
            return Err(invalid(format!(
                "tokenizer.ggml.model is '{model}'; only the Llama SentencePiece tokenizer \
                 ('llama') is supported"
            )));
        }
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        // Scores and types are optional in llama.cpp (0.0 and normal when absent).
        let scores = match md.get("tokenizer.ggml.scores") {
            Some(_) => md.get_f32_array("tokenizer.ggml.scores")?,
            None => vec![0.0; n],
        };
        if scores.len() != n {
            return Err(invalid(format!(
                "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                scores.len()
            )));
        }
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => md.get_i64_array("tokenizer.ggml.token_type")?,
            None => vec![TokenType::Normal as i64; n],
        };
        if types.len() != n {
            return Err(invalid(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                types.len()
            )));
        }
        let types = types
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                TokenType::from_id(t)
                    .ok_or_else(|| invalid(format!("token #{i} has unknown token type {t}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let defaults = SpmConfig::default();
        let config = SpmConfig {
            bos: md
                .opt_u32("tokenizer.ggml.bos_token_id")?
                .unwrap_or(defaults.bos),
            eos: md
                .opt_u32("tokenizer.ggml.eos_token_id")?
                .unwrap_or(defaults.eos),
            unk: md
                .opt_u32("tokenizer.ggml.unknown_token_id")?
                .unwrap_or(defaults.unk),
            add_bos: md
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(defaults.add_bos),
            add_space_prefix: md
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(defaults.add_space_prefix),
        };
        let mut tok = Self::build(&file, tokens.to_vec(), scores, types, config)?;

        // Infilling ids: current converters write them, 2023-era files need the piece texts.
        let fim_key = |new: &str, old: &str| -> Result<Option<u32>, TokenizerError> {
            let id = match md.opt_u32(&format!("tokenizer.ggml.{new}_token_id"))? {
                Some(id) => Some(id),
                None => md.opt_u32(&format!("tokenizer.ggml.{old}_token_id"))?,
            };
            match id {
                Some(id) if id as usize >= n => Err(invalid(format!(
                    "tokenizer.ggml.{new}_token_id {id} is out of range ({n} tokens)"
                ))),
                other => Ok(other),
            }
        };
        let by_key = (
            fim_key("fim_pre", "prefix")?,
            fim_key("fim_suf", "suffix")?,
            fim_key("fim_mid", "middle")?,
            fim_key("eot", "eot")?,
        );
        if let (Some(prefix), Some(suffix), Some(middle), Some(eot)) = by_key {
            tok.fim = Some(FimTokens {
                prefix,
                suffix,
                middle,
                eot,
            });
        }
        Ok(tok)
    }

    /// Builds the tokenizer from a piece list (for tests and synthetic vocabularies).
    pub fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<TokenType>,
        config: SpmConfig,
    ) -> Result<Self, TokenizerError> {
        Self::build("vocabulary", tokens, scores, types, config)
    }

    fn build(
        file: &str,
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<TokenType>,
        config: SpmConfig,
    ) -> Result<Self, TokenizerError> {
        let invalid = |problem: String| TokenizerError::Invalid {
            file: file.to_string(),
            problem,
        };
        let n = tokens.len();
        if n == 0 {
            return Err(invalid("the vocabulary is empty".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(invalid(format!("too many tokens ({n})")));
        }
        if scores.len() != n || types.len() != n {
            return Err(invalid(format!(
                "{n} tokens but {} scores and {} token types",
                scores.len(),
                types.len()
            )));
        }
        for (what, id) in [
            ("bos_token_id", config.bos),
            ("eos_token_id", config.eos),
            ("unknown_token_id", config.unk),
        ] {
            if id as usize >= n {
                return Err(invalid(format!(
                    "tokenizer.ggml.{what} {id} is out of range ({n} tokens)"
                )));
            }
        }

        let mut pieces = Vec::with_capacity(n);
        let mut mergeable = HashMap::with_capacity(n);
        let mut max_piece_len = 0;
        let mut byte_ids = [None; 256];
        let mut user_defined = Vec::new();
        let mut decoded = Vec::new();
        let mut decoded_ends = Vec::with_capacity(n);
        for (i, ((text, score), kind)) in tokens.into_iter().zip(scores).zip(types).enumerate() {
            let id = i as u32; // n fits in u32, checked above
            match kind {
                TokenType::Byte => {
                    let b = byte_piece_value(&text).ok_or_else(|| {
                        invalid(format!(
                            "byte token #{id} has text {text:?}, expected <0xNN>"
                        ))
                    })?;
                    // Keep the first byte piece for each value.
                    byte_ids[b as usize].get_or_insert(id);
                    decoded.push(b);
                }
                TokenType::Control | TokenType::Unknown => {}
                // User-defined pieces are matched against raw text, so they hold real spaces.
                TokenType::UserDefined => decoded.extend_from_slice(text.as_bytes()),
                TokenType::Normal | TokenType::Unused | TokenType::Undefined => {
                    decoded.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
                }
            }
            decoded_ends.push(decoded.len());
            if kind.text_can_produce() && !text.is_empty() {
                max_piece_len = max_piece_len.max(text.len());
                mergeable.insert(text.clone(), id);
            }
            if kind == TokenType::UserDefined && !text.is_empty() {
                user_defined.push(id);
            }
            let score = if score.is_nan() {
                f32::NEG_INFINITY
            } else if score == 0.0 {
                0.0
            } else {
                score
            };
            pieces.push(Piece { text, score, kind });
        }
        // A vocabulary whose byte pieces use another spelling still gets byte fallback if the
        // "<0xNN>" text exists with some other type (llama.cpp looks bytes up by text).
        for (i, p) in pieces.iter().enumerate() {
            if let Some(b) = byte_piece_value(&p.text) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
        }
        user_defined.sort_by(|&a, &b| {
            let (ta, tb) = (&pieces[a as usize].text, &pieces[b as usize].text);
            tb.len().cmp(&ta.len()).then(a.cmp(&b))
        });

        let mut tok = SpmTokenizer {
            file: file.to_string(),
            pieces,
            mergeable,
            max_piece_len,
            byte_ids,
            user_defined,
            decoded,
            decoded_ends,
            config,
            fim: None,
            infill_prefix: None,
        };
        let star = tok.encode("\u{263a}", false);
        if let [space, smiley] = star[..]
            && tok.piece(space) == Some("\u{2581}")
            && tok.piece(smiley) == Some("\u{263a}")
        {
            tok.infill_prefix = Some([space, smiley]);
        }
        let find = |text: &str| tok.piece_to_id(text);
        if let (Some(prefix), Some(suffix), Some(middle), Some(eot)) = (
            find("\u{2581}<PRE>"),
            find("\u{2581}<SUF>"),
            find("\u{2581}<MID>"),
            find("\u{2581}<EOT>"),
        ) {
            tok.fim = Some(FimTokens {
                prefix,
                suffix,
                middle,
                eot,
            });
        }
        Ok(tok)
    }

    /// Name of the file (or "vocabulary") the tokenizer came from, for messages.
    pub fn source_name(&self) -> &str {
        &self.file
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> u32 {
        self.config.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.config.eos
    }

    pub fn unk_id(&self) -> u32 {
        self.config.unk
    }

    /// Whether the model wants BOS at the start of a prompt (metadata; default true).
    pub fn add_bos_token(&self) -> bool {
        self.config.add_bos
    }

    pub fn add_space_prefix(&self) -> bool {
        self.config.add_space_prefix
    }

    /// Infilling tokens: from metadata when present, otherwise found by their piece texts
    /// (`▁<PRE>`, `▁<SUF>`, `▁<MID>`, `▁<EOT>`); `None` if the vocabulary has none.
    pub fn fim_tokens(&self) -> Option<FimTokens> {
        self.fim
    }

    /// The raw piece text of `id` (with `▁`, `<0xNN>` as stored).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    pub fn score(&self, id: u32) -> Option<f32> {
        self.pieces.get(id as usize).map(|p| p.score)
    }

    /// The id of the piece with exactly this text, of any type (a linear scan: for setup code).
    pub fn piece_to_id(&self, text: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.text == text)
            .map(|i| i as u32)
    }

    /// Tokenizes `text` as llama.cpp does with `parse_special = false`; `add_bos` prepends the
    /// BOS id.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_bos {
            out.push(self.config.bos);
        }
        self.encode_into(text, self.config.add_space_prefix, &mut out);
        out
    }

    /// Tokenizes a piece of code for an infilling prompt without the implicit leading space:
    /// Meta's Code Llama definition `encode("☺" + text)[2..]`. If `☺` is not a piece of its own,
    /// or merges with the start of `text`, the text is encoded without the space prefix instead.
    pub fn encode_infilling(&self, text: &str) -> Vec<u32> {
        if let Some(prefix) = self.infill_prefix {
            let ids = self.encode(&format!("\u{263a}{text}"), false);
            if ids.starts_with(&prefix) {
                return ids[2..].to_vec();
            }
        }
        let mut out = Vec::new();
        self.encode_into(text, false, &mut out);
        out
    }

    fn encode_into(&self, text: &str, space_prefix: bool, out: &mut Vec<u32>) {
        // llama.cpp prefixes the first raw fragment and every fragment after a special piece.
        let mut after_special = true;
        for fragment in self.split_user_defined(text) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(t) => {
                    self.encode_fragment(t, space_prefix && after_special, out);
                    after_special = false;
                }
            }
        }
    }

    /// Splits user-defined pieces out of raw text, longest piece first (llama.cpp's order).
    fn split_user_defined<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        super::split_user_defined(text, &self.user_defined, |id| {
            self.pieces[id as usize].text.as_str()
        })
    }

    /// The merge loop on one raw-text fragment.
    fn encode_fragment(&self, raw: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() + 3);
        if space_prefix {
            text.push('\u{2581}');
        }
        for c in raw.chars() {
            text.push(if c == ' ' { '\u{2581}' } else { c });
        }
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_CHUNK);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            self.merge(&rest[..cut], out);
            rest = &rest[cut..];
        }
    }

    /// Merges the characters of `text` (at most `MAX_CHUNK` bytes) into pieces.
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            // Both fit in u32: text.len() <= MAX_CHUNK < u32::MAX.
            let index = symbols.len() as u32;
            symbols.push(Symbol {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: if index == 0 { NONE } else { index - 1 },
                next: index + 1,
            });
        }
        let Some(last) = symbols.last_mut() else {
            return;
        };
        last.next = NONE;

        // Each merge queues at most two new pairs, so the heap holds O(n) entries.
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() as u32 {
            self.queue_pair(text, &symbols, right - 1, right, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left(), bigram.right);
            let (left, right) = (symbols[l as usize], symbols[r as usize]);
            // Skip pairs where either side has since been merged into something else.
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            symbols[l as usize].len += right.len;
            symbols[r as usize].len = 0;
            symbols[l as usize].next = right.next;
            if right.next != NONE {
                symbols[right.next as usize].prev = l;
            }
            self.queue_pair(text, &symbols, left.prev, l, &mut queue);
            self.queue_pair(text, &symbols, l, right.next, &mut queue);
        }

        let mut i = 0;
        while i != NONE {
            let s = symbols[i as usize];
            let piece = &text[s.range()];
            match self.mergeable.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .bytes()
                        .map(|b| self.byte_ids[b as usize].unwrap_or(self.config.unk)),
                ),
            }
            i = s.next;
        }
    }

    fn queue_pair(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: u32,
        right: u32,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let size = l.len + r.len;
        if size as usize > self.max_piece_len {
            return;
        }
        // Adjacent symbols are contiguous spans of `text`.
        let span = Symbol { len: size, ..l }.range();
        if let Some(&id) = text.get(span).and_then(|p| self.mergeable.get(p)) {
            let score = self.pieces[id as usize].score;
            queue.push(Bigram::new(score, left, right, size));
        }
    }

    /// The bytes `id` decodes to: `▁` becomes a space, `<0xNN>` that byte, control and unknown
    /// pieces (and ids out of range) nothing.
    pub fn piece_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.decoded_ends.get(i) else {
            return &[];
        };
        let start = if i == 0 { 0 } else { self.decoded_ends[i - 1] };
        &self.decoded[start..end]
    }

    /// Owned version of [`SpmTokenizer::piece_bytes`].
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.piece_bytes(id).to_vec()
    }

    /// Decodes ids to text. Invalid UTF-8 (e.g. an incomplete byte sequence) becomes U+FFFD.
    /// `skip_leading_space` drops the space that the space prefix put before the first word.
    pub fn decode(&self, ids: &[u32], skip_leading_space: bool) -> String {
        let mut bytes = Vec::new();
        let mut skip = skip_leading_space;
        for &id in ids {
            let mut piece = self.piece_bytes(id);
            if skip && !piece.is_empty() {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
                skip = false;
            }
            bytes.extend_from_slice(piece);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A decoder for ids that arrive one at a time (generation).
    pub fn stream_decoder(&self, skip_leading_space: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            utf8: Utf8Stream::default(),
            skip_space: skip_leading_space,
        }
    }
}

/// Turns a stream of ids into text, holding back bytes until they form complete UTF-8
/// characters (a character may be split across several byte-fallback tokens).
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t SpmTokenizer,
    utf8: Utf8Stream,
    skip_space: bool,
}

impl StreamDecoder<'_> {
    /// Adds one id and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut piece = self.tokenizer.piece_bytes(id);
        if self.skip_space && !piece.is_empty() {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
            self.skip_space = false;
        }
        self.utf8.push(piece)
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
