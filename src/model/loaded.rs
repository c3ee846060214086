//! A model ready to run: weights, tokenizer and the facts about them that callers need.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::gguf::GgufFile;
use super::tokenizer::{FimTokens, Tokenizer};
use super::{Llama, ModelError};

pub struct LoadedModel {
    pub path: PathBuf,
    /// `general.name`, or the file name.
    pub name: String,
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    /// Infilling tokens, from metadata or found by their piece texts; `None` for models that
    /// cannot infill.
    pub fim: Option<FimTokens>,
    /// Tokens that end a generation: end-of-sequence and, for infilling models, end-of-text.
    pub stop_tokens: Vec<u32>,
}

impl LoadedModel {
    /// Loads weights and tokenizer from a GGUF file; `max_positions` bounds the context (and the
    /// memory of the KV cache), clamped to what the model was trained for.
    pub fn load(
        path: &Path,
        device: &Device,
        max_positions: Option<usize>,
    ) -> Result<Self, ModelError> {
        let (llama, gguf) = Llama::load(path, device, max_positions)?;
        let tokenizer = tokenizer_for(&gguf)?;
        if tokenizer.vocab_size() != llama.config().vocab_size {
            return Err(ModelError::Invalid {
                file: gguf.file_name().to_owned(),
                problem: format!(
                    "the tokenizer has {} tokens but the embeddings have {} rows",
                    tokenizer.vocab_size(),
                    llama.config().vocab_size
                ),
            });
        }
        let fim = tokenizer.fim_tokens();
        let mut stop_tokens: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        let eot = gguf
            .metadata
            .opt_u32("tokenizer.ggml.eot_token_id")
            .ok()
            .flatten();
        for token in eot.into_iter().chain(fim.map(|f| f.eot)) {
            if !stop_tokens.contains(&token) && (token as usize) < tokenizer.vocab_size() {
                stop_tokens.push(token);
            }
        }
        let name = gguf
            .metadata
            .opt_str("general.name")
            .ok()
            .flatten()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            });
        Ok(Self {
            path: path.to_owned(),
            name,
            llama,
            tokenizer,
            fim,
            stop_tokens,
        })
    }
}

/// The tokenizer a GGUF file asks for (Llama SentencePiece or byte-level BPE).
pub fn tokenizer_for(gguf: &GgufFile) -> Result<Tokenizer, ModelError> {
    Ok(Tokenizer::from_gguf(gguf)?)
}
