//! Llama hyper-parameters, read from GGUF metadata and checked before anything is allocated.

use super::gguf::{GgufError, GgufFile};

/// The shape of a llama-architecture model, as its GGUF file describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub embedding_length: usize,
    pub block_count: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    /// Key/value heads: fewer than `head_count` with grouped-query attention.
    pub head_count_kv: usize,
    pub head_dim: usize,
    /// How many dimensions of each head RoPE rotates (all of them for Llama).
    pub rope_dimension_count: usize,
    /// Code Llama uses 1e6; Llama 2 uses the default 1e4.
    pub rope_freq_base: f32,
    pub rms_norm_eps: f64,
    /// The context the model was trained for.
    pub context_length: usize,
}

/// Upper bounds that no real llama model comes near; they keep a hostile header from asking for
/// absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 4096;

impl LlamaConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufError> {
        let invalid = |problem: String| GgufError::Invalid {
            file: gguf.file_name().to_owned(),
            problem,
        };
        let architecture = gguf.get_str("general.architecture")?.to_owned();
        if architecture != "llama" {
            return Err(invalid(format!(
                "architecture '{architecture}' is not supported (codellama-lsp runs llama-architecture models: Code Llama, Llama 2/3, DeepSeek-Coder, …)"
            )));
        }
        let key = |name: &str| format!("{architecture}.{name}");
        let metadata = &gguf.metadata;
        let usize_of =
            |name: &str| -> Result<usize, GgufError> { Ok(metadata.get_u64(&key(name))? as usize) };
        let embedding_length = usize_of("embedding_length")?;
        let block_count = usize_of("block_count")?;
        let feed_forward_length = usize_of("feed_forward_length")?;
        let head_count = usize_of("attention.head_count")?;
        let head_count_kv = match metadata.opt_u32(&key("attention.head_count_kv"))? {
            Some(n) => n as usize,
            None => head_count,
        };
        let context_length = match metadata.opt_u32(&key("context_length"))? {
            Some(n) => n as usize,
            None => 4096,
        };
        let rms_norm_eps = match metadata.opt_f32(&key("attention.layer_norm_rms_epsilon"))? {
            Some(eps) => f64::from(eps),
            None => 1e-5,
        };
        let rope_freq_base = metadata
            .opt_f32(&key("rope.freq_base"))?
            .unwrap_or(10_000.0);

        let in_range = |name: &str, value: usize, max: usize| {
            if value == 0 || value > max {
                Err(invalid(format!(
                    "{} = {value} is out of range (1..={max})",
                    key(name)
                )))
            } else {
                Ok(())
            }
        };
        in_range("embedding_length", embedding_length, MAX_DIM)?;
        in_range("block_count", block_count, MAX_LAYERS)?;
        in_range("feed_forward_length", feed_forward_length, 16 * MAX_DIM)?;
        in_range("attention.head_count", head_count, MAX_HEADS)?;
        in_range("attention.head_count_kv", head_count_kv, head_count)?;
        in_range("context_length", context_length, 1 << 24)?;
        if embedding_length % head_count != 0 {
            return Err(invalid(format!(
                "embedding_length {embedding_length} is not a multiple of head_count {head_count}"
            )));
        }
        if head_count % head_count_kv != 0 {
            return Err(invalid(format!(
                "head_count {head_count} is not a multiple of head_count_kv {head_count_kv}"
            )));
        }
        let head_dim = embedding_length / head_count;
        let rope_dimension_count = match metadata.opt_u32(&key("rope.dimension_count"))? {
            Some(n) => n as usize,
            None => head_dim,
        };
        if rope_dimension_count == 0
            || rope_dimension_count > head_dim
            || rope_dimension_count % 2 != 0
        {
            return Err(invalid(format!(
                "rope.dimension_count {rope_dimension_count} must be even and at most the head size {head_dim}"
            )));
        }
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(invalid(format!(
                "rope.freq_base {rope_freq_base} is not a positive number"
            )));
        }
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(invalid(format!(
                "rms epsilon {rms_norm_eps} is not a positive number"
            )));
        }
        let embeddings = gguf
            .tensor("token_embd.weight")
            .ok_or_else(|| invalid("tensor 'token_embd.weight' is missing".to_owned()))?;
        let vocab_size = embeddings.dims.get(1).copied().unwrap_or(0) as usize;
        if embeddings.dims.first().copied() != Some(embedding_length as u64) || vocab_size == 0 {
            return Err(invalid(format!(
                "token_embd.weight has shape {:?}, expected [{embedding_length}, vocab]",
                embeddings.dims
            )));
        }
        Ok(Self {
            architecture,
            vocab_size,
            embedding_length,
            block_count,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            rope_dimension_count,
            rope_freq_base,
            rms_norm_eps,
            context_length,
        })
    }
}
