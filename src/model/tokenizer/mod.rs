//! Tokenizers, chosen by the GGUF file's `tokenizer.ggml.model`: Llama's SentencePiece
//! vocabulary (`llama`: Code Llama, Llama 2) in [`spm`], GPT-2 style byte-level BPE (`gpt2`:
//! DeepSeek-Coder, SmolLM, Llama 3, Qwen, StarCoder) in [`bpe`]. Both match llama.cpp token for
//! token; [`Tokenizer`] is what the rest of the program uses.

pub mod bpe;
pub mod spm;

pub use bpe::BpeTokenizer;
pub use spm::{FimTokens, SpmConfig, SpmTokenizer, TokenType};

use crate::model::gguf::{GgufError, GgufFile};
use std::sync::Arc;

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required metadata key is missing or has the wrong type.
    #[error(transparent)]
    Metadata(#[from] GgufError),
    /// The vocabulary is inconsistent or unsupported.
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
}

#[derive(Clone, Debug)]
enum Kind {
    // Shared: both are large (a vocabulary and its indexes), built once per model, and cloned
    // for every prompt built on a blocking thread.
    Spm(Arc<SpmTokenizer>),
    Bpe(Arc<BpeTokenizer>),
}

/// A model's tokenizer, whichever kind its file asks for.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    kind: Kind,
    fim: Option<FimTokens>,
}

/// Streams text from generated ids, holding back incomplete UTF-8.
pub enum TokenStream<'t> {
    Spm(spm::StreamDecoder<'t>),
    Bpe(bpe::StreamDecoder<'t>),
}

impl TokenStream<'_> {
    pub fn push(&mut self, id: u32) -> String {
        match self {
            Self::Spm(decoder) => decoder.push(id),
            Self::Bpe(decoder) => decoder.push(id),
        }
    }

    pub fn finish(self) -> String {
        match self {
            Self::Spm(decoder) => decoder.finish(),
            Self::Bpe(decoder) => decoder.finish(),
        }
    }
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let kind = file
            .metadata
            .opt_str("tokenizer.ggml.model")?
            .unwrap_or("llama");
        match kind {
            "llama" => {
                let spm = SpmTokenizer::from_gguf(file)?;
                Ok(Self {
                    fim: spm.fim_tokens(),
                    kind: Kind::Spm(Arc::new(spm)),
                })
            }
            "gpt2" => {
                let bpe = BpeTokenizer::from_gguf(file)?;
                for warning in bpe.warnings() {
                    tracing::warn!("{}: {warning}", file.file_name());
                }
                Ok(Self {
                    fim: fim_from_metadata(file, bpe.vocab_size())?,
                    kind: Kind::Bpe(Arc::new(bpe)),
                })
            }
            other => Err(TokenizerError::Invalid {
                file: file.file_name().to_owned(),
                problem: format!(
                    "tokenizer '{other}' is not supported (codellama-lsp reads 'llama' SentencePiece and 'gpt2' byte-level BPE vocabularies)"
                ),
            }),
        }
    }

    pub fn from_spm(spm: SpmTokenizer) -> Self {
        Self {
            fim: spm.fim_tokens(),
            kind: Kind::Spm(Arc::new(spm)),
        }
    }

    /// Token ids of `text`, as llama.cpp tokenizes with `parse_special = false`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        match &self.kind {
            Kind::Spm(t) => t.encode(text, add_bos),
            Kind::Bpe(t) => t.encode(text, add_bos),
        }
    }

    /// Token ids of `text` continuing other text: without SentencePiece's implicit leading
    /// space (Meta's `encode_infilling`); byte-level BPE adds no such space anyway. No BOS.
    pub fn encode_infilling(&self, text: &str) -> Vec<u32> {
        match &self.kind {
            Kind::Spm(t) => t.encode_infilling(text),
            Kind::Bpe(t) => t.encode(text, false),
        }
    }

    /// Text of generated ids (no prompt before them: SentencePiece's leading space is kept).
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.kind {
            Kind::Spm(t) => t.decode(ids, false),
            Kind::Bpe(t) => t.decode(ids),
        }
    }

    pub fn stream_decoder(&self) -> TokenStream<'_> {
        match &self.kind {
            Kind::Spm(t) => TokenStream::Spm(t.stream_decoder(false)),
            Kind::Bpe(t) => TokenStream::Bpe(t.stream_decoder()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Spm(t) => t.vocab_size(),
            Kind::Bpe(t) => t.vocab_size(),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Spm(t) => Some(t.bos_id()),
            Kind::Bpe(t) => t.bos_id(),
        }
    }

    pub fn eos_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Spm(t) => Some(t.eos_id()),
            Kind::Bpe(t) => t.eos_id(),
        }
    }

    /// Whether prompts start with BOS (from `tokenizer.ggml.add_bos_token`, else the family's
    /// default).
    pub fn add_bos_token(&self) -> bool {
        match &self.kind {
            Kind::Spm(t) => t.add_bos_token(),
            Kind::Bpe(t) => t.add_bos_token(),
        }
    }

    /// The piece text of `id` as stored in the vocabulary.
    pub fn piece(&self, id: u32) -> Option<&str> {
        match &self.kind {
            Kind::Spm(t) => t.piece(id),
            Kind::Bpe(t) => t.piece(id),
        }
    }

    /// The id of the piece spelled exactly `text` (a linear scan: for setup, not hot paths).
    pub fn piece_to_id(&self, text: &str) -> Option<u32> {
        match &self.kind {
            Kind::Spm(t) => t.piece_to_id(text),
            Kind::Bpe(t) => t.piece_to_id(text),
        }
    }

    /// Whether `id` is a control token (BOS, EOS, infilling and chat markers), which text never
    /// produces.
    pub fn is_control(&self, id: u32) -> bool {
        match &self.kind {
            Kind::Spm(t) => t.token_type(id) == Some(TokenType::Control),
            Kind::Bpe(t) => t.token_type(id) == Some(bpe::TokenType::Control),
        }
    }

    /// A prompt as text, for servers that tokenize it themselves: control tokens spelled as their
    /// pieces (`<PRE>`, `<|fim_prefix|>`), the rest decoded, a leading BOS left out (such servers
    /// add their own). Lossy by nature; servers that take ids get the ids.
    pub fn prompt_text(&self, ids: &[u32]) -> String {
        let ids = match (ids.first(), self.bos_id()) {
            (Some(first), Some(bos)) if *first == bos => &ids[1..],
            _ => ids,
        };
        let mut text = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            if self.is_control(id) {
                text.push_str(&self.decode(&run));
                run.clear();
                text.push_str(self.piece(id).unwrap_or_default());
            } else {
                run.push(id);
            }
        }
        text.push_str(&self.decode(&run));
        text
    }

    /// Infilling ids named by the file (or, for Code Llama's vocabulary, found by piece text).
    pub fn fim_tokens(&self) -> Option<FimTokens> {
        self.fim
    }

    /// "llama" or "gpt2", as GGUF names them.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Spm(_) => "llama",
            Kind::Bpe(_) => "gpt2",
        }
    }
}

/// Bytes of generated tokens, released as text only once they form whole UTF-8 characters (a
/// character may be split across byte-fallback tokens). Bytes that can never become valid are
/// replaced by U+FFFD as soon as that is certain.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut consumed = 0;
        while consumed < self.pending.len() {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    consumed = self.pending.len();
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    consumed += valid.len();
                    match error.error_len() {
                        // Proven invalid: replace it and go on after it.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            consumed += n.min(after.len());
                        }
                        // Possibly the start of a character whose bytes are still to come.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whatever is left; an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

/// A stretch of raw text, or a user-defined token already split out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Splits the user-defined tokens `user_defined` (ordered longest text first, as llama.cpp tries
/// them) out of `text`, even though special-token parsing is off: llama.cpp does this for both
/// tokenizer kinds, and token parity means doing it too.
fn split_user_defined<'t, 'v>(
    text: &'t str,
    user_defined: &[u32],
    piece: impl Fn(u32) -> &'v str,
) -> Vec<Fragment<'t>> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(text));
    for &id in user_defined {
        let piece = piece(id);
        let mut next = Vec::with_capacity(fragments.len());
        for fragment in fragments {
            let Fragment::Text(t) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut rest = 0;
            for (at, m) in t.match_indices(piece) {
                if at > rest {
                    next.push(Fragment::Text(&t[rest..at]));
                }
                next.push(Fragment::Token(id));
                rest = at + m.len();
            }
            if rest < t.len() {
                next.push(Fragment::Text(&t[rest..]));
            }
        }
        fragments = next;
    }
    fragments
}

/// The FIM ids a GGUF file names (current `fim_*` keys or the older `prefix`/`suffix`/`middle`),
/// each within the vocabulary of `vocab_size` tokens (as the SentencePiece reader requires).
fn fim_from_metadata(
    file: &GgufFile,
    vocab_size: usize,
) -> Result<Option<FimTokens>, TokenizerError> {
    let id = |new: &str, old: &str| -> Result<Option<u32>, TokenizerError> {
        let id = match file
            .metadata
            .opt_u32(&format!("tokenizer.ggml.{new}_token_id"))?
        {
            Some(id) => Some(id),
            None => file
                .metadata
                .opt_u32(&format!("tokenizer.ggml.{old}_token_id"))?,
        };
        match id {
            Some(id) if id as usize >= vocab_size => Err(TokenizerError::Invalid {
                file: file.file_name().to_owned(),
                problem: format!(
                    "tokenizer.ggml.{new}_token_id {id} is out of range ({vocab_size} tokens)"
                ),
            }),
            other => Ok(other),
        }
    };
    let (prefix, suffix, middle) = (
        id("fim_pre", "prefix")?,
        id("fim_suf", "suffix")?,
        id("fim_mid", "middle")?,
    );
    Ok(match (prefix, suffix, middle) {
        (Some(prefix), Some(suffix), Some(middle)) => {
            // The BPE reader only warns about an end-of-sequence id out of range.
            let eos = file
                .metadata
                .opt_u32("tokenizer.ggml.eos_token_id")?
                .filter(|&eos| (eos as usize) < vocab_size);
            Some(FimTokens {
                prefix,
                suffix,
                middle,
                eot: id("eot", "eot")?.or(eos).unwrap_or(middle),
            })
        }
        _ => None,
    })
}
