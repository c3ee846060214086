//! Tokenizers. Code Llama uses Llama's SentencePiece vocabulary, see [`spm`].

pub mod spm;

pub use spm::{FimTokens, SpmConfig, SpmTokenizer, StreamDecoder, TokenType};

use crate::model::gguf::GgufError;

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
