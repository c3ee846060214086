//! What a GGUF file holds, in a few facts: for `models info`, `models list` and `models verify`.
//! Reads the header only; works on any architecture and on vocabulary-only files. The vocabulary
//! of an architecture codellama-lsp runs must be readable (loading needs it); other
//! architectures are described without one if need be.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::{Architecture, LlamaConfig};
use super::gguf::{GgufError, GgufFile};
use super::kv_cache::{KvType, cache_bytes};
use super::llama::DEFAULT_CONTEXT;
use super::tokenizer::{Tokenizer, TokenizerError};
use crate::prompt::{ChatTemplate, FimTemplate};

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub name: Option<String>,
    pub architecture: String,
    /// Whether the engine runs this architecture.
    pub runs: bool,
    pub vocab_size: Option<usize>,
    pub context_length: Option<u64>,
    /// The type most of the weights are stored in (by bytes), e.g. "Q4_K"; "none" without tensors.
    pub quantization: String,
    /// Tensor count per storage type.
    pub quant_types: BTreeMap<String, usize>,
    pub tensors: usize,
    pub parameters: u64,
    pub size_bytes: u64,
    /// Whether the model can fill in the middle (and so serve inline completions).
    pub infill: bool,
    pub fim_tokens: Option<FimIds>,
    /// "llama2" or "chatml": how chat prompts are laid out for it.
    pub chat_template: Option<&'static str>,
    pub tokenizer: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FimIds {
    /// Whose template the tokens follow ("code-llama", "deepseek-coder", "starcoder", …).
    pub family: &'static str,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    /// The tokens' texts, in the same order.
    pub pieces: [String; 3],
}

/// The memory a model takes to run: its weights (as stored in the file) and its KV cache at the
/// default context.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// The positions the cache is sized for: the default context, or the model's if shorter.
    pub kv_positions: usize,
    pub kv_type: &'static str,
    pub total_bytes: u64,
}

/// `None` for files the engine cannot run (other architectures, vocabulary-only files).
pub fn memory_estimate(gguf: &GgufFile, kv_type: KvType) -> Option<MemoryEstimate> {
    if gguf.tensors.is_empty() {
        return None;
    }
    let config = LlamaConfig::from_gguf(gguf).ok()?;
    let weights_bytes = gguf.tensors.iter().map(|t| t.size).sum::<u64>();
    let kv_positions = DEFAULT_CONTEXT.min(config.context_length);
    let kv_cache_bytes = cache_bytes(&config, kv_positions, kv_type);
    Some(MemoryEstimate {
        weights_bytes,
        kv_cache_bytes,
        kv_positions,
        kv_type: kv_type.name(),
        total_bytes: weights_bytes + kv_cache_bytes,
    })
}

pub fn summarize(gguf: &GgufFile) -> Result<ModelSummary, GgufError> {
    let metadata = &gguf.metadata;
    let architecture = metadata.get_str("general.architecture")?.to_owned();
    let name = metadata
        .opt_str("general.name")
        .ok()
        .flatten()
        .map(str::to_owned);
    let context_length = metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(|value| value.as_i128())
        .and_then(|n| u64::try_from(n).ok());
    let mut quant_types = BTreeMap::new();
    let mut bytes_by_type: BTreeMap<String, u64> = BTreeMap::new();
    for tensor in &gguf.tensors {
        let type_name = tensor.ggml_type.name().to_owned();
        *quant_types.entry(type_name.clone()).or_insert(0) += 1;
        *bytes_by_type.entry(type_name).or_insert(0) += tensor.size;
    }
    let quantization = bytes_by_type
        .iter()
        .max_by_key(|(_, bytes)| **bytes)
        .map_or_else(|| "none".to_owned(), |(name, _)| name.clone());
    let runs = Architecture::from_name(&architecture).is_some();
    let tokenizer = match Tokenizer::from_gguf(gguf) {
        Ok(tokenizer) => Some(tokenizer),
        // Loading refuses a model we run whose vocabulary is broken (a special id out of range,
        // arrays of different lengths): the summary must not describe it as a usable file.
        Err(TokenizerError::Metadata(error)) if runs => return Err(error),
        Err(TokenizerError::Invalid { file, problem }) if runs => {
            return Err(GgufError::Invalid { file, problem });
        }
        // Other architectures are described as far as they can be, marked as not run.
        Err(_) => None,
    };
    let template = tokenizer
        .as_ref()
        .and_then(|t| FimTemplate::detect(t, name.as_deref().unwrap_or_default()).ok());
    Ok(ModelSummary {
        vocab_size: tokenizer.as_ref().map(Tokenizer::vocab_size),
        chat_template: tokenizer.as_ref().map(|t| ChatTemplate::detect(t).name()),
        tokenizer: tokenizer.as_ref().map(Tokenizer::kind_name),
        infill: template.is_some(),
        fim_tokens: template.as_ref().map(|t| {
            let piece = |id: u32| {
                tokenizer
                    .as_ref()
                    .and_then(|tokenizer| tokenizer.piece(id))
                    .unwrap_or_default()
                    .to_owned()
            };
            FimIds {
                family: t.family.name(),
                prefix: t.prefix,
                suffix: t.suffix,
                middle: t.middle,
                pieces: [piece(t.prefix), piece(t.suffix), piece(t.middle)],
            }
        }),
        runs,
        name,
        architecture,
        context_length,
        quantization,
        quant_types,
        tensors: gguf.tensors.len(),
        parameters: gguf.tensors.iter().map(|t| t.n_elements()).sum(),
        size_bytes: gguf.file_len,
    })
}
