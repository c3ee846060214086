//! The attention key/value cache: preallocated, written in place, truncatable.
//!
//! Each layer owns one key and one value buffer of `[kv_heads, capacity, head_dim]` values, in
//! the cache's [`KvType`]. On the CPU they are plain memory that
//! [`attention`](super::attention) reads in place; on a GPU they are candle tensors (written with
//! `slice_set`, read through a `narrow` view). New positions are written without copying what is
//! already there, and truncating to a shorter prefix is just forgetting the tail: the next write
//! overwrites it. The cache remembers which tokens it holds so that a new prompt can reuse the
//! longest common prefix.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::config::LlamaConfig;

/// How the cache stores keys and values. F16 halves the memory of F32 (as llama.cpp's default
/// does) and, read by the CPU attention kernel, costs no speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    pub fn bytes_per_value(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }

    fn dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            _ => Err(format!(
                "unknown KV cache type '{text}' (expected f16 or f32)"
            )),
        }
    }
}

/// The bytes a cache of `positions` positions takes for `config`'s model.
pub fn cache_bytes(config: &LlamaConfig, positions: usize, kv_type: KvType) -> u64 {
    let per_position = 2 * config.block_count * config.head_count_kv * config.head_dim;
    (per_position * positions * kv_type.bytes_per_value()) as u64
}

/// One layer's keys and values as the attention reads them.
pub(super) enum LayerKv<'a> {
    F16 {
        keys: &'a [f16],
        values: &'a [f16],
    },
    F32 {
        keys: &'a [f32],
        values: &'a [f32],
    },
    /// Views of the first `len` positions, `[kv_heads, len, head_dim]` each.
    Tensors {
        keys: Tensor,
        values: Tensor,
    },
}

enum Storage {
    F16 {
        keys: Vec<Vec<f16>>,
        values: Vec<Vec<f16>>,
    },
    F32 {
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    },
    Tensors {
        keys: Vec<Tensor>,
        values: Vec<Tensor>,
    },
}

pub struct KvCache {
    storage: Storage,
    kv_type: KvType,
    kv_heads: usize,
    head_dim: usize,
    tokens: Vec<u32>,
    capacity: usize,
    /// How fast prompts were evaluated into this cache lately: the next generation sizes its
    /// first prefill chunk from it instead of probing again (a keystroke that finds the
    /// prefill of an earlier request unfinished continues it in full-size chunks).
    pub(crate) prefill_pace: super::generate::PrefillPace,
}

impl KvCache {
    /// Allocates room for `capacity` positions in every layer: plain memory on the CPU, tensors
    /// on other devices. Untouched memory stays unmapped until a position is written.
    pub fn new(
        config: &LlamaConfig,
        capacity: usize,
        kv_type: KvType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let layers = config.block_count;
        let len = config.head_count_kv * capacity * config.head_dim;
        let storage = if device.is_cpu() {
            match kv_type {
                // `vec![0u16; n]` asks the allocator for zeroed pages (f16 zero is all zero bits).
                KvType::F16 => Storage::F16 {
                    keys: (0..layers)
                        .map(|_| vec![0u16; len].reinterpret_into())
                        .collect(),
                    values: (0..layers)
                        .map(|_| vec![0u16; len].reinterpret_into())
                        .collect(),
                },
                KvType::F32 => Storage::F32 {
                    keys: (0..layers).map(|_| vec![0.0; len]).collect(),
                    values: (0..layers).map(|_| vec![0.0; len]).collect(),
                },
            }
        } else {
            let shape = (config.head_count_kv, capacity, config.head_dim);
            let mut keys = Vec::with_capacity(layers);
            let mut values = Vec::with_capacity(layers);
            for _ in 0..layers {
                keys.push(Tensor::zeros(shape, kv_type.dtype(), device)?);
                values.push(Tensor::zeros(shape, kv_type.dtype(), device)?);
            }
            Storage::Tensors { keys, values }
        };
        Ok(Self {
            storage,
            kv_type,
            kv_heads: config.head_count_kv,
            head_dim: config.head_dim,
            tokens: Vec::with_capacity(capacity),
            capacity,
            prefill_pace: Default::default(),
        })
    }

    /// The tokens whose keys and values the cache holds, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// How many leading tokens of `prompt` the cache already holds.
    pub fn common_prefix(&self, prompt: &[u32]) -> usize {
        self.tokens
            .iter()
            .zip(prompt)
            .take_while(|(cached, new)| cached == new)
            .count()
    }

    /// Writes keys and values `[kv_heads, n, head_dim]` for positions `start..start + n`.
    pub(super) fn write(
        &mut self,
        layer: usize,
        start: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> candle_core::Result<()> {
        let (kv_heads, n, head_dim) = keys.dims3()?;
        if kv_heads != self.kv_heads
            || head_dim != self.head_dim
            || start + n > self.capacity
            || values.dims() != keys.dims()
        {
            return Err(candle_core::Error::Msg(format!(
                "KV cache write of {:?} at {start} does not fit [{}, {}, {}]",
                keys.dims(),
                self.kv_heads,
                self.capacity,
                self.head_dim
            )));
        }
        if let Storage::Tensors {
            keys: key_tensors,
            values: value_tensors,
        } = &mut self.storage
        {
            let dtype = self.kv_type.dtype();
            key_tensors[layer].slice_set(&keys.to_dtype(dtype)?, 1, start)?;
            value_tensors[layer].slice_set(&values.to_dtype(dtype)?, 1, start)?;
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        let capacity = self.capacity;
        // Head `h`'s `n` new rows go to rows `start..start + n` of its block of `capacity` rows.
        let place = |h: usize| (h * capacity + start) * head_dim;
        self.store_runs(layer, n * head_dim, &host(keys)?, &host(values)?, place)
    }

    /// Writes keys and values given as rows `[n][kv_heads][head_dim]` (the projections' layout)
    /// for positions `start..start + n`, into a cache on the host.
    pub(super) fn write_rows(
        &mut self,
        layer: usize,
        start: usize,
        keys: &[f32],
        values: &[f32],
    ) -> candle_core::Result<()> {
        let (kv_heads, head_dim, capacity) = (self.kv_heads, self.head_dim, self.capacity);
        let width = kv_heads * head_dim;
        let n = keys.len() / width.max(1);
        if width == 0 || keys.len() != n * width || values.len() != keys.len() {
            candle_core::bail!("KV cache rows of {} values for width {width}", keys.len());
        }
        if layer >= self.layer_count() || start + n > capacity {
            candle_core::bail!(
                "KV cache write of {n} rows at {start} (layer {layer}) does not fit"
            );
        }
        // Row `r`, head `h` goes to row `start + r` of head `h`'s block of `capacity` rows.
        let place = |index: usize| {
            let (r, h) = (index / kv_heads, index % kv_heads);
            (h * capacity + start + r) * head_dim
        };
        self.store_runs(layer, head_dim, keys, values, place)
    }

    /// Stores `keys` and `values` into one layer of a cache on the host, `run` values at a
    /// time: run `index` of each goes to `place(index)..` of its buffer, converted to the
    /// cache's type.
    fn store_runs(
        &mut self,
        layer: usize,
        run: usize,
        keys: &[f32],
        values: &[f32],
        place: impl Fn(usize) -> usize,
    ) -> candle_core::Result<()> {
        let sources = [keys, values];
        match &mut self.storage {
            Storage::F16 { keys, values } => scatter_runs(
                [&mut keys[layer], &mut values[layer]],
                sources,
                run,
                place,
                |to, from| to.convert_from_f32_slice(from),
            ),
            Storage::F32 { keys, values } => scatter_runs(
                [&mut keys[layer], &mut values[layer]],
                sources,
                run,
                place,
                <[f32]>::copy_from_slice,
            ),
            Storage::Tensors { .. } => candle_core::bail!("this KV cache is not on the host"),
        }
        Ok(())
    }

    fn layer_count(&self) -> usize {
        match &self.storage {
            Storage::F16 { keys, .. } => keys.len(),
            Storage::F32 { keys, .. } => keys.len(),
            Storage::Tensors { keys, .. } => keys.len(),
        }
    }

    /// One layer's keys and values, of which the first `len` positions are meaningful.
    pub(super) fn layer(&self, layer: usize, len: usize) -> candle_core::Result<LayerKv<'_>> {
        Ok(match &self.storage {
            Storage::F16 { keys, values } => LayerKv::F16 {
                keys: &keys[layer],
                values: &values[layer],
            },
            Storage::F32 { keys, values } => LayerKv::F32 {
                keys: &keys[layer],
                values: &values[layer],
            },
            Storage::Tensors { keys, values } => LayerKv::Tensors {
                keys: keys[layer].narrow(1, 0, len)?,
                values: values[layer].narrow(1, 0, len)?,
            },
        })
    }

    /// Whether the attention reads this cache on the host (the CPU kernel) rather than through
    /// candle tensors.
    pub(super) fn on_host(&self) -> bool {
        !matches!(self.storage, Storage::Tensors { .. })
    }

    /// Records that `tokens` now follow the cached ones (after all layers were written).
    pub(super) fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }
}

/// Stores each `run`-value piece of `sources` (keys, values) at `place(index)` of `buffers`,
/// the layer's key and value buffers, converting with `store`.
fn scatter_runs<T>(
    buffers: [&mut [T]; 2],
    sources: [&[f32]; 2],
    run: usize,
    place: impl Fn(usize) -> usize,
    store: impl Fn(&mut [T], &[f32]),
) {
    for (buffer, values) in buffers.into_iter().zip(sources) {
        for (index, piece) in values.chunks_exact(run).enumerate() {
            let at = place(index);
            store(&mut buffer[at..at + run], piece);
        }
    }
}
