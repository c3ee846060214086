//! The model: GGUF files, the tokenizer, the llama forward pass with its KV cache, and sampling.
//!
//! Everything here is synchronous and owned by the engine's worker thread; nothing here knows
//! about LSP or documents.

pub mod attention;
mod config;
pub mod device;
pub mod generate;
pub mod gguf;
mod host_pass;
pub mod kernels;
mod kv_cache;
mod llama;
mod loaded;
pub mod parallel;
mod projection;
pub mod sampling;
pub mod summary;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use device::DeviceSpec;
pub use kv_cache::{KvCache, KvType, cache_bytes};
pub(crate) use llama::candle_dtype;
pub use llama::{DEFAULT_CONTEXT, Llama};
pub use loaded::{LoadedModel, Vocabulary, tokenizer_for};
pub use projection::with_candle_kernels;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    #[error("{file}: cannot read file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{problem}", if file.is_empty() { String::new() } else { format!("{file}: ") })]
    Invalid { file: String, problem: String },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{needed} tokens do not fit in the context of {capacity} tokens")]
    ContextFull { needed: usize, capacity: usize },
}

impl ModelError {
    pub(crate) fn candle(context: impl Into<String>, source: candle_core::Error) -> Self {
        Self::Candle {
            context: context.into(),
            source,
        }
    }
}
