//! The attention key/value cache: preallocated, written in place, truncatable.
//!
//! Each layer owns one key and one value tensor of shape `[kv_heads, capacity, head_dim]`. New
//! positions are written with `slice_set` (no copy of what is already there), attention reads a
//! `narrow` view of the first `len` positions, and truncating to a shorter prefix is just forgetting
//! the tail: the next write overwrites it. The cache remembers which tokens it holds so that a new
//! prompt can reuse the longest common prefix.

use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    tokens: Vec<u32>,
    capacity: usize,
}

impl KvCache {
    /// Allocates room for `capacity` positions in every layer.
    pub fn new(
        config: &LlamaConfig,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (config.head_count_kv, capacity, config.head_dim);
        let mut keys = Vec::with_capacity(config.block_count);
        let mut values = Vec::with_capacity(config.block_count);
        for _ in 0..config.block_count {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            keys,
            values,
            tokens: Vec::with_capacity(capacity),
            capacity,
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

    pub fn dtype(&self) -> DType {
        self.keys.first().map_or(DType::F32, Tensor::dtype)
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
        &self,
        layer: usize,
        start: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> candle_core::Result<()> {
        let dtype = self.dtype();
        self.keys[layer].slice_set(&keys.to_dtype(dtype)?, 1, start)?;
        self.values[layer].slice_set(&values.to_dtype(dtype)?, 1, start)?;
        Ok(())
    }

    /// Views of the first `len` positions of one layer, `[kv_heads, len, head_dim]` each.
    pub(super) fn view(&self, layer: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.keys[layer].narrow(1, 0, len)?,
            self.values[layer].narrow(1, 0, len)?,
        ))
    }

    /// Records that `tokens` now follow the cached ones (after all layers were written).
    pub(super) fn extend(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }
}
