//! The forward pass over quantized GGUF weights, with our own KV cache: Llama, and the families
//! that differ from it in a few places (biases, LayerNorm, the MLP, RoPE style, embedding scale;
//! see [`Architecture`](super::config::Architecture)).
//!
//! Weights stay in their GGUF quantization and go through candle's quantized matmuls. Unlike
//! candle-transformers' `quantized_llama` (kept as the parity reference in tests), this model
//! writes keys and values into a preallocated cache instead of concatenating, can be rewound to
//! any prefix, evaluates prompts in chunks, and can return logits for every position.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{D, DType, Device, Tensor};

use super::ModelError;
use super::attention::{self, AttentionShape};
use super::config::{FeedForward, LlamaConfig, RopeStyle};
use super::gguf::{GgmlType, GgufFile};
use super::host_pass::{self, Affine, LayerView, Mlp, NormView, Rope};
use super::kv_cache::{KvCache, KvType, LayerKv};
use super::projection::Projection;

/// Positions supported when the caller does not say: the completion prompt budget's default.
/// It bounds the RoPE tables and the KV cache (whose memory grows with it), so it stays modest
/// even for models trained on 100k-token contexts.
pub const DEFAULT_CONTEXT: usize = 4096;

/// A projection, with the bias some families add.
struct Linear {
    weight: Projection,
    bias: Option<Tensor>,
    /// `bias` as host values, on the CPU (for the host pass).
    host_bias: Option<Vec<f32>>,
}

impl Linear {
    /// The projection as the host pass takes it: on our kernels, its bias on the host.
    fn affine(&self) -> Option<Affine<'_>> {
        let Projection::Kernel(matrix) = &self.weight else {
            return None;
        };
        if self.bias.is_some() && self.host_bias.is_none() {
            return None;
        }
        Some(Affine {
            matrix,
            bias: self.host_bias.as_deref(),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [y] = Self::forward_many([self], x)?;
        Ok(y)
    }

    /// Several projections of the same input, computed together where the kernels allow.
    fn forward_many<const N: usize>(
        linears: [&Self; N],
        x: &Tensor,
    ) -> candle_core::Result<[Tensor; N]> {
        let mut ys = Projection::forward_many(linears.map(|l| &l.weight), x)?;
        for (y, linear) in ys.iter_mut().zip(linears) {
            if let Some(bias) = &linear.bias {
                *y = y.broadcast_add(bias)?;
            }
        }
        Ok(ys)
    }
}

/// RMSNorm, or LayerNorm when there is a bias.
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    /// `weight` and `bias` as host values, on the CPU (for the host pass).
    host_weight: Option<Vec<f32>>,
    host_bias: Option<Vec<f32>>,
}

impl Norm {
    /// The norm as the host pass takes it, its weights on the host.
    fn host_view(&self) -> Option<NormView<'_>> {
        let weight = self.host_weight.as_deref()?;
        Some(match self.bias {
            None => NormView::Rms(weight),
            Some(_) => NormView::Layer {
                weight,
                bias: self.host_bias.as_deref()?,
            },
        })
    }

    fn forward(&self, x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
        match &self.bias {
            None => candle_nn::ops::rms_norm(x, &self.weight, eps),
            Some(bias) => candle_nn::ops::layer_norm(x, &self.weight, bias, eps),
        }
    }
}

struct Layer {
    attention_norm: Norm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Norm,
    /// Absent for a plain (ungated) MLP.
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The layer as the host pass reads it, when it can; the MLP chosen as in
    /// [`Llama::feed_forward`].
    fn view(&self, feed_forward: FeedForward) -> Option<LayerView<'_>> {
        let up = self.up.affine()?;
        let mlp = match (feed_forward, &self.gate) {
            (FeedForward::SiluGated, Some(gate)) => Mlp::Gated {
                gate: gate.affine()?,
                up,
                activation: host_pass::silu,
            },
            (FeedForward::GeluGated, Some(gate)) => Mlp::Gated {
                gate: gate.affine()?,
                up,
                activation: host_pass::gelu,
            },
            _ => Mlp::Gelu { up },
        };
        Some(LayerView {
            attention_norm: self.attention_norm.host_view()?,
            q: self.wq.affine()?,
            k: self.wk.affine()?,
            v: self.wv.affine()?,
            output: self.wo.affine()?,
            ffn_norm: self.ffn_norm.host_view()?,
            mlp,
            down: self.down.affine()?,
        })
    }
}

/// Precomputed RoPE rotations for positions `0..cos.dim(0)`, `[positions, rope_dim / 2]` each.
struct Rotations {
    cos: Tensor,
    sin: Tensor,
}

pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embeddings: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Norm,
    output: Projection,
    rotations: Rotations,
    /// The host pass's rotations, when every layer can take that pass ([`host_pass`]).
    host_rope: Option<Rope>,
    /// The largest position count this instance supports (RoPE tables and cache capacity).
    max_positions: usize,
    /// How new caches store keys and values.
    kv_type: KvType,
}

/// Reads tensors from a memory-mapped GGUF file whose header has already been validated.
struct TensorSource<'a> {
    gguf: &'a GgufFile,
    bytes: &'a [u8],
    device: &'a Device,
    /// The map `bytes` lies in, when it is one: each tensor's pages are dropped from memory once
    /// copied, so that loading peaks at the model's size rather than twice it.
    map: Option<&'a memmap2::Mmap>,
}

impl TensorSource<'_> {
    /// Drops the pages of `data` (a tensor already copied) from this process's memory.
    fn release(&self, data: &[u8]) {
        let Some(map) = self.map else {
            return;
        };
        let offset = (data.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
        if offset
            .checked_add(data.len())
            .is_some_and(|end| end <= map.len())
        {
            // SAFETY: the map is read-only and never written, so pages dropped with DONTNEED
            // read back from the file unchanged if a neighbouring tensor touches them again. A
            // failure only leaves the pages resident.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
            };
        }
    }

    fn qtensor(&self, name: &str) -> Result<QTensor, ModelError> {
        let file = self.gguf.file_name();
        let info = self.gguf.tensor(name).ok_or_else(|| ModelError::Invalid {
            file: file.to_owned(),
            problem: format!("tensor '{name}' is missing"),
        })?;
        let dtype = candle_dtype(info.ggml_type).ok_or_else(|| ModelError::Invalid {
            file: file.to_owned(),
            problem: format!(
                "tensor '{name}' uses {}, which candle cannot compute with (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K)",
                info.ggml_type.name()
            ),
        })?;
        let data = self
            .gguf
            .tensor_data(self.bytes, info)
            .ok_or_else(|| ModelError::Invalid {
                file: file.to_owned(),
                problem: format!("tensor '{name}' lies outside the file"),
            })?;
        // candle reads the blocks in place, f16 and f32 fields included: bytes that are not
        // aligned for them would be undefined behaviour. GGUF's alignment (a multiple of 8)
        // within a page-aligned map guarantees it; `general.alignment = 1` does not.
        if data.as_ptr().align_offset(8) != 0 {
            return Err(ModelError::Invalid {
                file: file.to_owned(),
                problem: format!(
                    "tensor '{name}' starts at file byte {}, which is not 8-byte aligned (general.alignment must be a multiple of 8)",
                    self.gguf.tensor_file_offset(info)
                ),
            });
        }
        // GGUF lists the fastest-varying dimension first; candle wants it last.
        let dims = info.dims.iter().rev().map(|&d| d as usize).collect();
        let tensor = qtensor_from_ggml(dtype, data, dims, self.device).map_err(|source| {
            ModelError::candle(format!("{file}: loading tensor '{name}'"), source)
        });
        self.release(data);
        tensor
    }

    /// A weight matrix mapping `inputs` values to `outputs`; its shape is checked against the
    /// configuration so that a file that contradicts itself fails here, not mid-generation.
    fn matmul(&self, name: &str, inputs: usize, outputs: usize) -> Result<Projection, ModelError> {
        if let Some(info) = self.gguf.tensor(name)
            && info.dims != [inputs as u64, outputs as u64]
        {
            return Err(ModelError::Invalid {
                file: self.gguf.file_name().to_owned(),
                problem: format!(
                    "tensor '{name}' has shape {:?}, but the metadata implies [{inputs}, {outputs}]",
                    info.dims
                ),
            });
        }
        self.check_block_pairs(name)?;
        if let Some(projection) = self.kernel(name, inputs, outputs) {
            return Ok(projection);
        }
        QMatMul::from_qtensor(self.qtensor(name)?)
            .map(Projection::Candle)
            .map_err(|source| ModelError::candle(format!("preparing '{name}'"), source))
    }

    /// The matrix repacked for our CPU kernels, when they cover its type and shape.
    fn kernel(&self, name: &str, inputs: usize, outputs: usize) -> Option<Projection> {
        let info = self.gguf.tensor(name)?;
        if info.dims != [inputs as u64, outputs as u64] {
            return None;
        }
        let data = self.gguf.tensor_data(self.bytes, info)?;
        let projection = Projection::kernel(self.device, info.ggml_type, data, outputs, inputs);
        self.release(data);
        projection
    }

    /// candle's dot products for Q4_1, Q5_0 and Q5_1 take a row's blocks in pairs (as ggml's
    /// SIMD kernels do), so a matrix whose rows are an odd number of blocks is refused here
    /// rather than failing an assertion in the middle of a forward pass.
    fn check_block_pairs(&self, name: &str) -> Result<(), ModelError> {
        let Some(info) = self.gguf.tensor(name) else {
            return Ok(());
        };
        let paired = matches!(
            info.ggml_type,
            GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
        );
        let row = info.dims.first().copied().unwrap_or(0);
        if paired && (row / info.ggml_type.block_size()) % 2 != 0 {
            return Err(ModelError::Invalid {
                file: self.gguf.file_name().to_owned(),
                problem: format!(
                    "tensor '{name}' has rows of {row} values in {}, an odd number of blocks, which candle cannot multiply",
                    info.ggml_type.name()
                ),
            });
        }
        Ok(())
    }

    /// A weight matrix and its bias, if the file has one (`….weight` → `….bias`).
    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, ModelError> {
        let bias = self.optional_vector(&name.replace(".weight", ".bias"), outputs)?;
        Ok(Linear {
            weight: self.matmul(name, inputs, outputs)?,
            host_bias: bias.as_ref().and_then(|b| self.host_copy(b)),
            bias,
        })
    }

    /// A vector's values, when the model runs on the CPU.
    fn host_copy(&self, vector: &Tensor) -> Option<Vec<f32>> {
        self.device
            .is_cpu()
            .then(|| vector.to_vec1().ok())
            .flatten()
    }

    /// A norm's weight and, for LayerNorm families, its bias (zero when the file has none).
    fn norm(&self, name: &str, len: usize, layer_norm: bool) -> Result<Norm, ModelError> {
        let weight = self.vector(name, len)?;
        let host_weight = self.host_copy(&weight);
        if !layer_norm {
            // RMSNorm families have no norm bias; a stray one must not turn this into LayerNorm.
            return Ok(Norm {
                weight,
                bias: None,
                host_weight,
                host_bias: None,
            });
        }
        let bias = match self.optional_vector(&name.replace(".weight", ".bias"), len)? {
            Some(bias) => bias,
            None => weight
                .zeros_like()
                .map_err(|error| ModelError::candle("a zero norm bias", error))?,
        };
        Ok(Norm {
            weight,
            host_bias: self.host_copy(&bias),
            bias: Some(bias),
            host_weight,
        })
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Tensor>, ModelError> {
        match self.gguf.tensor(name) {
            Some(_) => self.vector(name, len).map(Some),
            None => Ok(None),
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor, ModelError> {
        let tensor = self
            .qtensor(name)?
            .dequantize(self.device)
            .map_err(|source| ModelError::candle(format!("dequantizing '{name}'"), source))?;
        if tensor.dims() != [len] {
            return Err(ModelError::Invalid {
                file: self.gguf.file_name().to_owned(),
                problem: format!(
                    "tensor '{name}' has shape {:?}, expected [{len}]",
                    tensor.dims()
                ),
            });
        }
        Ok(tensor)
    }
}

/// candle's type for a GGUF storage type this engine reads (`None`: not supported).
pub(crate) fn candle_dtype(ggml_type: GgmlType) -> Option<GgmlDType> {
    Some(match ggml_type {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        _ => return None,
    })
}

impl Llama {
    /// Loads the model in `path` onto `device`, supporting up to `max_positions` positions
    /// ([`DEFAULT_CONTEXT`] when `None`; clamped to the model's training context).
    pub fn load(
        path: &Path,
        device: &Device,
        max_positions: Option<usize>,
    ) -> Result<(Self, GgufFile), ModelError> {
        let gguf = GgufFile::read(path)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let file = File::open(path).map_err(|source| ModelError::Io {
            file: path.display().to_string(),
            source,
        })?;
        // SAFETY: the map is read-only and lives only while loading (every tensor is copied into
        // candle's storage). Replacing the model file — how updates and hot reload work — makes
        // a new inode and leaves this mapping intact; truncating the file in place while we read
        // it is the one thing that is not supported.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let model = Self::build(&gguf, &map, Some(&map), config, device, max_positions)?;
        Ok((model, gguf))
    }

    /// Builds the model from a validated header and the file's bytes.
    pub fn from_gguf(
        gguf: &GgufFile,
        bytes: &[u8],
        config: LlamaConfig,
        device: &Device,
        max_positions: Option<usize>,
    ) -> Result<Self, ModelError> {
        Self::build(gguf, bytes, None, config, device, max_positions)
    }

    fn build(
        gguf: &GgufFile,
        bytes: &[u8],
        map: Option<&memmap2::Mmap>,
        config: LlamaConfig,
        device: &Device,
        max_positions: Option<usize>,
    ) -> Result<Self, ModelError> {
        let source = TensorSource {
            gguf,
            bytes,
            device,
            map,
        };
        let n_embd = config.embedding_length;
        let embeddings = Arc::new(source.qtensor("token_embd.weight")?);
        let vocab = config.vocab_size;
        let output = if gguf.tensor("output.weight").is_some() {
            source.matmul("output.weight", n_embd, vocab)?
        } else {
            // Tied embeddings: the output projection reuses the embedding matrix.
            source.check_block_pairs("token_embd.weight")?;
            match source.kernel("token_embd.weight", n_embd, vocab) {
                Some(projection) => projection,
                None => QMatMul::from_arc(embeddings.clone())
                    .map(Projection::Candle)
                    .map_err(|error| ModelError::candle("tying output to embeddings", error))?,
            }
        };
        let kv_width = config.head_count_kv * config.head_dim;
        let q_width = config.query_width();
        let n_ff = config.feed_forward_length;
        let family = config.family;
        let layer_norm = family.layer_norm();
        let gated = family.feed_forward() != FeedForward::Gelu;
        let mut layers = Vec::with_capacity(config.block_count);
        for i in 0..config.block_count {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            layers.push(Layer {
                attention_norm: source.norm(&name("attn_norm.weight"), n_embd, layer_norm)?,
                wq: source.linear(&name("attn_q.weight"), n_embd, q_width)?,
                wk: source.linear(&name("attn_k.weight"), n_embd, kv_width)?,
                wv: source.linear(&name("attn_v.weight"), n_embd, kv_width)?,
                wo: source.linear(&name("attn_output.weight"), q_width, n_embd)?,
                ffn_norm: source.norm(&name("ffn_norm.weight"), n_embd, layer_norm)?,
                gate: gated
                    .then(|| source.linear(&name("ffn_gate.weight"), n_embd, n_ff))
                    .transpose()?,
                up: source.linear(&name("ffn_up.weight"), n_embd, n_ff)?,
                down: source.linear(&name("ffn_down.weight"), n_ff, n_embd)?,
            });
        }
        let norm = source.norm("output_norm.weight", n_embd, layer_norm)?;
        let max_positions = max_positions
            .unwrap_or(DEFAULT_CONTEXT)
            .clamp(1, config.context_length);
        let rope = Rope::new(&config, max_positions);
        let rotations = Rotations::new(&rope, max_positions, device)
            .map_err(|error| ModelError::candle("precomputing RoPE", error))?;
        // The host pass takes a model whole or not at all.
        let host_pass = device.is_cpu()
            && layers
                .iter()
                .all(|layer| layer.view(family.feed_forward()).is_some());
        Ok(Self {
            config,
            device: device.clone(),
            embeddings,
            layers,
            norm,
            output,
            rotations,
            host_rope: host_pass.then_some(rope),
            max_positions,
            kv_type: KvType::default(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// How caches made from now on store keys and values (F16 unless set).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    pub fn set_kv_type(&mut self, kv_type: KvType) {
        self.kv_type = kv_type;
    }

    /// A cache sized for this model's `max_positions`, of the model's [`KvType`].
    pub fn new_cache(&self) -> Result<KvCache, ModelError> {
        self.new_cache_for(self.max_positions)
    }

    /// A KV cache for at most `positions` positions (capped by the model's context), e.g. one
    /// sized to a single job.
    pub fn new_cache_for(&self, positions: usize) -> Result<KvCache, ModelError> {
        KvCache::new(
            &self.config,
            positions.min(self.max_positions),
            self.kv_type,
            &self.device,
        )
        .map_err(|error| ModelError::candle("allocating the KV cache", error))
    }

    /// Evaluates `tokens` at the positions following the cache's contents, appends them to the
    /// cache and returns logits `[n, vocab]` (F32): for every token when `all_logits`, else for
    /// the last one only.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Tensor, ModelError> {
        let start = cache.len();
        let needed = start + tokens.len();
        if needed > cache.capacity() || needed > self.max_positions {
            return Err(ModelError::ContextFull {
                needed,
                capacity: cache.capacity().min(self.max_positions),
            });
        }
        if tokens.is_empty() {
            return Err(ModelError::Invalid {
                file: String::new(),
                problem: "forward needs at least one token".into(),
            });
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Invalid {
                file: String::new(),
                problem: format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.config.vocab_size
                ),
            });
        }
        // The pass runs on a worker of rayon's pool, so that each candle op of the tensor path
        // starts on a thread that takes part in it: from any other thread, every op would be
        // handed to the pool and waited for, two thread wake-ups each. (Our own loops run on
        // `parallel`'s threads.)
        let logits = rayon::scope(|_| self.forward_inner(tokens, start, cache, all_logits))
            .map_err(|error| ModelError::candle("forward pass", error))?;
        cache.extend(tokens);
        Ok(logits)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut KvCache,
        all_logits: bool,
    ) -> candle_core::Result<Tensor> {
        let seq = tokens.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.embedding(&ids)?.to_dtype(DType::F32)?;
        if self.config.family.scales_embeddings() {
            x = (x * (self.config.embedding_length as f64).sqrt())?;
        }
        // The CPU kernel applies causality itself; candle's attention needs a mask.
        let mask = (seq > 1 && !cache.on_host())
            .then(|| causal_mask(seq, start, &self.device))
            .transpose()?;
        let eps = self.config.rms_norm_eps as f32;
        let host_layers = match &self.host_rope {
            Some(rope) if cache.on_host() => self
                .layers
                .iter()
                .map(|layer| layer.view(self.config.family.feed_forward()))
                .collect::<Option<Vec<_>>>()
                .map(|views| (rope, views)),
            _ => None,
        };
        if let Some((rope, views)) = host_layers {
            let mut values = x.flatten_all()?.to_vec1::<f32>()?;
            host_pass::run_layers(&self.config, &views, rope, &mut values, start, cache)?;
            x = Tensor::from_vec(values, (seq, self.config.embedding_length), &self.device)?;
        } else {
            for (index, layer) in self.layers.iter().enumerate() {
                let h = layer.attention_norm.forward(&x, eps)?;
                let attention = self.attention(index, layer, &h, start, mask.as_ref(), cache)?;
                x = (x + attention)?;
                let h = layer.ffn_norm.forward(&x, eps)?;
                x = (x + self.feed_forward(layer, &h)?)?;
            }
        }
        let x = if all_logits {
            x
        } else {
            x.narrow(0, seq - 1, 1)?
        };
        let x = self.norm.forward(&x, eps)?;
        self.output.forward(&x)?.to_dtype(DType::F32)
    }

    fn feed_forward(&self, layer: &Layer, h: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = match (self.config.family.feed_forward(), &layer.gate) {
            (FeedForward::SiluGated, Some(gate)) => {
                let [gate, up] = Linear::forward_many([gate, &layer.up], h)?;
                (candle_nn::ops::silu(&gate)? * up)?
            }
            (FeedForward::GeluGated, Some(gate)) => {
                let [gate, up] = Linear::forward_many([gate, &layer.up], h)?;
                (gate.gelu()? * up)?
            }
            _ => layer.up.forward(h)?.gelu()?,
        };
        layer.down.forward(&hidden)
    }

    fn attention(
        &self,
        index: usize,
        layer: &Layer,
        x: &Tensor,
        start: usize,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let seq = x.dim(0)?;
        let group = c.head_count / c.head_count_kv;
        // One pass for the three projections: the input is quantized once and the kernels
        // share one parallel region.
        let [q, k, v] = Linear::forward_many([&layer.wq, &layer.wk, &layer.wv], x)?;
        let heads = |projected: Tensor, count: usize| -> candle_core::Result<Tensor> {
            projected
                .reshape((1, seq, count, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = self.rotations.apply(&heads(q, c.head_count)?, start, c)?;
        let k = self
            .rotations
            .apply(&heads(k, c.head_count_kv)?, start, c)?;
        let v = heads(v, c.head_count_kv)?;
        cache.write(index, start, &k.squeeze(0)?, &v.squeeze(0)?)?;
        let shape = AttentionShape {
            kv_heads: c.head_count_kv,
            group,
            head_dim: c.head_dim,
            start,
            seq,
            capacity: cache.capacity(),
        };
        let (keys, values) = match cache.layer(index, start + seq)? {
            LayerKv::F16 { keys, values } => {
                return self.attend_on_host(layer, &q, keys, values, shape);
            }
            LayerKv::F32 { keys, values } => {
                return self.attend_on_host(layer, &q, keys, values, shape);
            }
            LayerKv::Tensors { keys, values } => {
                (keys.to_dtype(DType::F32)?, values.to_dtype(DType::F32)?)
            }
        };
        // Grouped-query attention without copying keys: query head h uses key head h / group,
        // so the `group` query heads of one key head are stacked as extra rows.
        let q = q.reshape((c.head_count_kv, group * seq, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = match mask {
            Some(mask) => scores
                .reshape((c.head_count_kv, group, seq, start + seq))?
                .broadcast_add(mask)?
                .reshape((c.head_count_kv, group * seq, start + seq))?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&values)?;
        let y = y
            .reshape((c.head_count, seq, c.head_dim))?
            .transpose(0, 1)?
            .reshape((seq, c.query_width()))?;
        layer.wo.forward(&y)
    }

    /// The CPU path of [`attention`](Self::attention): the kernel reads the cache in place.
    /// `q` is `[1, heads, seq, head_dim]`.
    fn attend_on_host<T: attention::KvElement>(
        &self,
        layer: &Layer,
        q: &Tensor,
        keys: &[T],
        values: &[T],
        shape: AttentionShape,
    ) -> candle_core::Result<Tensor> {
        let queries = q.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0.0f32; shape.query_len()];
        attention::attend(&queries, keys, values, shape, &mut out);
        let y = Tensor::from_vec(out, (shape.seq, self.config.query_width()), &self.device)?;
        layer.wo.forward(&y)
    }
}

/// Additive mask `[seq, start + seq]`: query `i` (at position `start + i`) sees keys `0..=start + i`.
fn causal_mask(seq: usize, start: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = start + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (seq, total), device)
}

impl Rotations {
    /// The tables of `rope` (for `positions` positions) as tensors on `device`.
    fn new(rope: &Rope, positions: usize, device: &Device) -> candle_core::Result<Self> {
        let table =
            |values: &[f32]| Tensor::from_vec(values.to_vec(), (positions, rope.half), device);
        Ok(Self {
            cos: table(&rope.cos)?,
            sin: table(&rope.sin)?,
        })
    }

    /// Rotates the first `rope_dimension_count` dims of `x` `[1, heads, seq, head_dim]`: adjacent
    /// pairs for Llama (GGUF llama weights are laid out for this "normal" RoPE), halves for the
    /// NeoX-style families.
    fn apply(&self, x: &Tensor, start: usize, config: &LlamaConfig) -> candle_core::Result<Tensor> {
        let seq = x.dim(2)?;
        let cos = self.cos.narrow(0, start, seq)?;
        let sin = self.sin.narrow(0, start, seq)?;
        let rope = match config.family.rope_style() {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i,
            RopeStyle::Neox => candle_nn::rotary_emb::rope,
        };
        let rope_dims = config.rope_dimension_count;
        if rope_dims == config.head_dim {
            return rope(x, &cos, &sin);
        }
        let rotated = rope(
            &x.narrow(D::Minus1, 0, rope_dims)?.contiguous()?,
            &cos,
            &sin,
        )?;
        let rest = x.narrow(D::Minus1, rope_dims, config.head_dim - rope_dims)?;
        Tensor::cat(&[&rotated, &rest], D::Minus1)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Family, Variant};
    use crate::test_support::max_difference;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    fn rows(logits: &Tensor) -> Vec<f32> {
        logits.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The host pass against the tensor path, on the same kernels and caches: a prompt with
    /// every position's logits, decoded tokens, then a rewind and a two-token continuation.
    #[test]
    fn the_host_pass_equals_the_tensor_path() {
        // The families' fixtures keep F16 matrices, which only the tensor path takes: here they
        // are written again with Q8_0 matrices, so that biases, NeoX RoPE, GeGLU, LayerNorm and
        // the ungated GELU MLP go through the host pass.
        let dir = std::env::temp_dir().join(format!("codellama-lsp-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<std::path::PathBuf> = Variant::ALL
            .iter()
            .map(|v| fixture(v.file_name()))
            .collect();
        for family in Family::ALL {
            let path = dir.join(family.file_name());
            let bytes = crate::fixtures::generate_family_with_matrices(family, GgmlType::Q8_0);
            std::fs::write(&path, bytes.unwrap()).unwrap();
            files.push(path);
        }
        let mut taken = Vec::new();
        for path in &files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let (host, _) = Llama::load(path, &Device::Cpu, Some(64)).unwrap();
            let Some(_) = host.host_rope else {
                continue;
            };
            taken.push(name.clone());
            let (mut tensors, _) = Llama::load(path, &Device::Cpu, Some(64)).unwrap();
            tensors.host_rope = None;
            let vocab = host.config().vocab_size as u32;
            let prompt: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % vocab).collect();
            for kv_type in [KvType::F16, KvType::F32] {
                let cache = || KvCache::new(host.config(), 64, kv_type, &Device::Cpu).unwrap();
                let mut caches = [cache(), cache()];
                let step = |caches: &mut [KvCache; 2], tokens: &[u32], all: bool, what: &str| {
                    let [a, b] = caches;
                    let ours = rows(&host.forward(tokens, a, all).unwrap());
                    let theirs = rows(&tensors.forward(tokens, b, all).unwrap());
                    let worst = max_difference(&ours, &theirs);
                    assert!(
                        worst < 1e-4,
                        "{name}, {kv_type:?}, {what}: max |Δ| = {worst}"
                    );
                };
                step(&mut caches, &prompt, true, "prompt");
                for token in [3, 90, 17] {
                    step(&mut caches, &[token % vocab], false, "decoding");
                }
                caches.iter_mut().for_each(|cache| cache.truncate(6));
                step(&mut caches, &prompt[6..8], true, "after a rewind");
            }
        }
        // The fixtures the pass must take: every family, once its matrices are quantized.
        for expected in [
            Variant::Q8_0.file_name(),
            Variant::Q4KMixed.file_name(),
            Family::Qwen2.file_name(),
            Family::Gemma.file_name(),
            Family::Starcoder2.file_name(),
        ] {
            assert!(
                taken.iter().any(|name| name == expected),
                "{expected} took the tensor path"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
