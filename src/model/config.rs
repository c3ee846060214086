//! Model hyper-parameters, read from GGUF metadata and checked before anything is allocated.
//!
//! One decoder-only transformer covers every family we run; [`Architecture`] names the few ways
//! they differ, exactly as llama.cpp reads them from the file (`general.architecture`).

use super::gguf::{GgufError, GgufFile};

/// The model families the forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Code Llama, Llama 2/3, DeepSeek-Coder, SmolLM: RMSNorm, SwiGLU, RoPE on adjacent pairs.
    Llama,
    /// Qwen2 / Qwen2.5-Coder: as Llama, plus Q/K/V biases and NeoX RoPE.
    Qwen2,
    /// StarCoder2: LayerNorm with bias, a GELU MLP (no gate), biases everywhere, NeoX RoPE.
    Starcoder2,
    /// Gemma / CodeGemma: GeGLU, embeddings scaled by √width, NeoX RoPE, heads of
    /// `attention.key_length` (not width / heads).
    Gemma,
}

/// How positions rotate queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (llama.cpp's "normal"; GGUF llama weights are permuted for it).
    Interleaved,
    /// The first half against the second half (llama.cpp's NeoX).
    Neox,
}

/// The feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForward {
    /// `down(silu(gate(x)) * up(x))`
    SiluGated,
    /// `down(gelu(gate(x)) * up(x))`
    GeluGated,
    /// `down(gelu(up(x)))`
    Gelu,
}

impl Architecture {
    pub const NAMES: &str = "llama, qwen2, starcoder2, gemma";

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "starcoder2" => Self::Starcoder2,
            "gemma" => Self::Gemma,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Starcoder2 => "starcoder2",
            Self::Gemma => "gemma",
        }
    }

    pub fn rope_style(self) -> RopeStyle {
        match self {
            Self::Llama => RopeStyle::Interleaved,
            Self::Qwen2 | Self::Starcoder2 | Self::Gemma => RopeStyle::Neox,
        }
    }

    /// LayerNorm (with bias) instead of RMSNorm.
    pub fn layer_norm(self) -> bool {
        self == Self::Starcoder2
    }

    pub fn feed_forward(self) -> FeedForward {
        match self {
            Self::Llama | Self::Qwen2 => FeedForward::SiluGated,
            Self::Gemma => FeedForward::GeluGated,
            Self::Starcoder2 => FeedForward::Gelu,
        }
    }

    /// Embeddings are multiplied by √width before the first layer.
    pub fn scales_embeddings(self) -> bool {
        self == Self::Gemma
    }
}

/// The shape of a model, as its GGUF file describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub family: Architecture,
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
    /// The epsilon of every norm (RMSNorm, or LayerNorm for StarCoder2).
    pub rms_norm_eps: f64,
    /// The context the model was trained for.
    pub context_length: usize,
}

/// Upper bounds that no real llama model comes near; they keep a hostile header from asking for
/// absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 4096;
const MAX_HEAD_DIM: usize = 1024;

impl LlamaConfig {
    /// The width of all query heads together (the embedding width, except for Gemma 7B-like
    /// shapes).
    pub fn query_width(&self) -> usize {
        self.head_count * self.head_dim
    }

    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, GgufError> {
        let invalid = |problem: String| GgufError::Invalid {
            file: gguf.file_name().to_owned(),
            problem,
        };
        let architecture = gguf.get_str("general.architecture")?.to_owned();
        let Some(family) = Architecture::from_name(&architecture) else {
            return Err(invalid(format!(
                "architecture '{architecture}' is not supported (codellama-lsp runs {}: Code Llama, Llama 2/3, DeepSeek-Coder, Qwen2.5-Coder, StarCoder2, CodeGemma, …)",
                Architecture::NAMES
            )));
        };
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
        let eps_key = if family.layer_norm() {
            "attention.layer_norm_epsilon"
        } else {
            "attention.layer_norm_rms_epsilon"
        };
        let rms_norm_eps = match metadata.opt_f32(&key(eps_key))? {
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
        // Heads are width / count wide unless the file says otherwise (Gemma 7B: 16 × 256 over
        // a width of 3072).
        let key_length = metadata.opt_u32(&key("attention.key_length"))?;
        let value_length = metadata.opt_u32(&key("attention.value_length"))?;
        if key_length != value_length {
            let show =
                |length: Option<u32>| length.map_or_else(|| "absent".into(), |n| n.to_string());
            return Err(invalid(format!(
                "attention.key_length ({}) differs from attention.value_length ({}), which is not supported",
                show(key_length),
                show(value_length)
            )));
        }
        if key_length.is_none() && embedding_length % head_count != 0 {
            return Err(invalid(format!(
                "embedding_length {embedding_length} is not a multiple of head_count {head_count}"
            )));
        }
        if head_count % head_count_kv != 0 {
            return Err(invalid(format!(
                "head_count {head_count} is not a multiple of head_count_kv {head_count_kv}"
            )));
        }
        let head_dim = match key_length {
            Some(length) => length as usize,
            None => embedding_length / head_count,
        };
        // Real heads are at most 256 wide; the bound keeps the query width (and the KV cache) in
        // proportion to the model even when the head size does not come from the width.
        in_range("attention.key_length", head_dim, MAX_HEAD_DIM)?;
        if head_count * head_dim > 8 * embedding_length {
            return Err(invalid(format!(
                "{head_count} heads of {head_dim} are far wider than the embedding ({embedding_length})"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(invalid(format!("the head size {head_dim} must be even")));
        }
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
        if embeddings.dims.len() != 2
            || embeddings.dims[0] != embedding_length as u64
            || vocab_size == 0
        {
            return Err(invalid(format!(
                "token_embd.weight has shape {:?}, expected [{embedding_length}, vocab]",
                embeddings.dims
            )));
        }
        // Layers past block_count would be silently ignored: the count contradicts the file.
        if let Some(extra) = gguf.tensors.iter().find(|t| {
            t.name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|layer| layer.parse::<usize>().ok())
                .is_some_and(|layer| layer >= block_count)
        }) {
            return Err(invalid(format!(
                "tensor '{}' belongs to a layer past {} = {block_count}",
                extra.name,
                key("block_count")
            )));
        }
        Ok(Self {
            architecture,
            family,
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
