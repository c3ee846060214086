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
        let vocabulary = Vocabulary::from_gguf(&gguf, path)?;
        if vocabulary.tokenizer.vocab_size() != llama.config().vocab_size {
            return Err(ModelError::Invalid {
                file: gguf.file_name().to_owned(),
                problem: format!(
                    "the tokenizer has {} tokens but the embeddings have {} rows",
                    vocabulary.tokenizer.vocab_size(),
                    llama.config().vocab_size
                ),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            name: vocabulary.name,
            llama,
            tokenizer: vocabulary.tokenizer,
            fim: vocabulary.fim,
            stop_tokens: vocabulary.stop_tokens,
        })
    }
}

/// What a GGUF file says about text, without its weights: enough to build prompts and to read
/// answers. The remote backend needs only this from the file its server runs.
pub struct Vocabulary {
    /// `general.name`, or the file name.
    pub name: String,
    pub tokenizer: Tokenizer,
    pub fim: Option<FimTokens>,
    /// End-of-sequence and end-of-text ids (for infilling models, the FIM end-of-text too).
    pub stop_tokens: Vec<u32>,
}

impl Vocabulary {
    /// Reads only the metadata of `path` (no tensor data).
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let gguf = GgufFile::read(path)?;
        Self::from_gguf(&gguf, path)
    }

    pub fn from_gguf(gguf: &GgufFile, path: &Path) -> Result<Self, ModelError> {
        let tokenizer = tokenizer_for(gguf)?;
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
            name,
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
