//! Causal grouped-query attention on the CPU, reading the KV cache where it lies.
//!
//! The cache keeps one buffer per layer for keys and one for values, laid out
//! `[kv_head][position][head_dim]` (see [`KvCache`](super::KvCache)), as F16 or F32. For every
//! key head, each of its `group` query heads and each query row, [`attend`] scores the visible
//! keys (`q·k / sqrt(head_dim)`), takes the softmax in f32 (max-subtracted) and sums the values
//! with those weights. F16 keys and values are widened on the fly, eight at a time with F16C
//! where the CPU has it (AVX2, FMA and F16C are detected at run time), so decoding one token
//! neither copies nor converts the cache. Work is split over (key head × query row) across [`parallel`]'s threads.
//!
//! Everything here is plain slices; the model turns tensors into them and back.

use half::f16;

use super::parallel;

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub kv_heads: usize,
    /// Query heads per key head: query head `h` reads key head `h / group`.
    pub group: usize,
    pub head_dim: usize,
    /// The position of the first query row; row `i` sees keys `0..=start + i`.
    pub start: usize,
    /// Query rows.
    pub seq: usize,
    /// Positions each key head's buffer holds (the stride between key heads, in rows).
    pub capacity: usize,
}

impl AttentionShape {
    pub fn heads(&self) -> usize {
        self.kv_heads * self.group
    }

    /// Values in the query slice `[heads][seq][head_dim]`, and in the output.
    pub fn query_len(&self) -> usize {
        self.heads() * self.seq * self.head_dim
    }

    /// Values in one layer's key (or value) buffer.
    pub fn cache_len(&self) -> usize {
        self.kv_heads * self.capacity * self.head_dim
    }
}

/// The instruction set the kernels use, chosen once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, written so that the compiler can vectorise it.
    Portable,
    /// AVX2 with FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// A type the cache stores keys and values in.
pub trait KvElement: Copy + Send + Sync + 'static {
    /// `Σ q[t] · k[t]` over the shorter of the two.
    fn dot(isa: Isa, q: &[f32], k: &[Self]) -> f32;
    /// `out[t] += w · v[t]` over the shorter of the two.
    fn add_scaled(isa: Isa, out: &mut [f32], w: f32, v: &[Self]);
    /// `out[t] = v[t]` as f32, over the shorter of the two.
    fn widen(isa: Isa, out: &mut [f32], v: &[Self]);
}

impl KvElement for f32 {
    fn dot(isa: Isa, q: &[f32], k: &[f32]) -> f32 {
        match isa {
            Isa::Portable => portable::dot(q, k, |x| x),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
            Isa::Avx2 => unsafe { avx2::dot_f32(q, k) },
        }
    }

    fn add_scaled(isa: Isa, out: &mut [f32], w: f32, v: &[f32]) {
        match isa {
            Isa::Portable => portable::add_scaled(out, w, v, |x| x),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::add_scaled_f32(out, w, v) },
        }
    }

    fn widen(_: Isa, out: &mut [f32], v: &[f32]) {
        let n = out.len().min(v.len());
        out[..n].copy_from_slice(&v[..n]);
    }
}

impl KvElement for f16 {
    fn dot(isa: Isa, q: &[f32], k: &[f16]) -> f32 {
        match isa {
            Isa::Portable => portable::dot(q, k, f16::to_f32),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
            Isa::Avx2 => unsafe { avx2::dot_f16(q, k) },
        }
    }

    fn add_scaled(isa: Isa, out: &mut [f32], w: f32, v: &[f16]) {
        match isa {
            Isa::Portable => portable::add_scaled(out, w, v, f16::to_f32),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::add_scaled_f16(out, w, v) },
        }
    }

    fn widen(isa: Isa, out: &mut [f32], v: &[f16]) {
        match isa {
            Isa::Portable => {
                for (out, &v) in out.iter_mut().zip(v) {
                    *out = v.to_f32();
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::widen_f16(out, v) },
        }
    }
}

/// Below this many multiply-adds a call runs on the calling thread: handing out the work would
/// cost more than it saves.
const PARALLEL_WORK: usize = 1 << 15;

/// Attention for `shape.seq` query rows. `queries` is `[heads][seq][head_dim]`, `keys` and
/// `values` are one layer's cache buffers `[kv_heads][capacity][head_dim]` with positions
/// `0..start + seq` written, and `out` receives `[seq][heads][head_dim]` (the layout the output
/// projection takes).
///
/// # Panics
/// When a slice's length does not match `shape` or the visible positions exceed its capacity.
pub fn attend<T: KvElement>(
    queries: &[f32],
    keys: &[T],
    values: &[T],
    shape: AttentionShape,
    out: &mut [f32],
) {
    attend_with(Isa::detect(), queries, keys, values, shape, out);
}

/// [`attend`] with a chosen instruction set (tests compare them).
pub fn attend_with<T: KvElement>(
    isa: Isa,
    queries: &[f32],
    keys: &[T],
    values: &[T],
    shape: AttentionShape,
    out: &mut [f32],
) {
    assert_eq!(queries.len(), shape.query_len(), "query length");
    assert_eq!(out.len(), shape.query_len(), "output length");
    assert!(keys.len() >= shape.cache_len() && values.len() >= shape.cache_len());
    assert!(
        shape.start + shape.seq <= shape.capacity,
        "positions past capacity"
    );
    let chunk = shape.group * shape.head_dim;
    if chunk == 0 || shape.seq == 0 {
        return;
    }
    if shape.seq > 1 {
        blocked::attend(isa, queries, keys, values, shape, out);
        return;
    }
    // One task per (query row, key head): it writes that key head's `group` output heads of that
    // row, which are adjacent in `out`.
    let task = |scores: &mut Vec<f32>, (index, out): (usize, &mut [f32])| {
        let row = index / shape.kv_heads;
        let kv_head = index % shape.kv_heads;
        attend_one(isa, queries, keys, values, shape, row, kv_head, scores, out);
    };
    let work = shape.query_len() * (shape.start + shape.seq);
    if work < PARALLEL_WORK {
        let mut scores = Vec::new();
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|item| task(&mut scores, item));
    } else {
        let mut heads: Vec<&mut [f32]> = out.chunks_mut(chunk).collect();
        parallel::for_each_mut(&mut heads, Vec::new, |scores, index, out| {
            task(scores, (index, out))
        });
    }
}

/// The `group` query heads of `kv_head` for query row `row`, into `out` `[group][head_dim]`.
#[allow(clippy::too_many_arguments)]
fn attend_one<T: KvElement>(
    isa: Isa,
    queries: &[f32],
    keys: &[T],
    values: &[T],
    shape: AttentionShape,
    row: usize,
    kv_head: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttentionShape {
        group,
        head_dim,
        start,
        seq,
        capacity,
        ..
    } = shape;
    let visible = start + row + 1;
    let base = kv_head * capacity * head_dim;
    let keys = &keys[base..base + visible * head_dim];
    let values = &values[base..base + visible * head_dim];
    let query = |g: usize| {
        let head = kv_head * group + g;
        let at = (head * seq + row) * head_dim;
        &queries[at..at + head_dim]
    };
    let scale = 1.0 / (head_dim as f32).sqrt();
    scores.clear();
    scores.resize(group * visible, 0.0);
    // Keys outer, query heads inner: each key row is read from memory once for the group.
    for (position, key) in keys.chunks_exact(head_dim).enumerate() {
        for g in 0..group {
            scores[g * visible + position] = T::dot(isa, query(g), key) * scale;
        }
    }
    for weights in scores.chunks_exact_mut(visible) {
        softmax(isa, weights);
    }
    out.fill(0.0);
    for (position, value) in values.chunks_exact(head_dim).enumerate() {
        for (g, out) in out.chunks_exact_mut(head_dim).enumerate() {
            T::add_scaled(isa, out, scores[g * visible + position], value);
        }
    }
}

/// Replaces every score `x` by `e^(x - max)` and returns their sum.
fn exp_shifted(isa: Isa, scores: &mut [f32], max: f32) -> f32 {
    match isa {
        Isa::Portable => {
            let mut sum = 0.0;
            for x in scores.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            sum
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { avx2::exp_shifted(scores, max) },
    }
}

/// In place, in f32, after subtracting the maximum.
fn softmax(isa: Isa, scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_shifted(isa, scores, max);
    let inverse = 1.0 / sum;
    for score in scores.iter_mut() {
        *score *= inverse;
    }
}

mod portable {
    const LANES: usize = 8;

    /// Eight independent partial sums, so that the loop vectorises without reassociating.
    pub fn dot<T: Copy>(q: &[f32], k: &[T], widen: impl Fn(T) -> f32) -> f32 {
        let n = q.len().min(k.len());
        let (q, k) = (&q[..n], &k[..n]);
        let mut lanes = [0.0f32; LANES];
        let mut q_chunks = q.chunks_exact(LANES);
        let mut k_chunks = k.chunks_exact(LANES);
        for (qc, kc) in (&mut q_chunks).zip(&mut k_chunks) {
            for ((lane, &q), &k) in lanes.iter_mut().zip(qc).zip(kc) {
                *lane += q * widen(k);
            }
        }
        let mut sum = lanes.iter().sum::<f32>();
        for (&q, &k) in q_chunks.remainder().iter().zip(k_chunks.remainder()) {
            sum += q * widen(k);
        }
        sum
    }

    pub fn add_scaled<T: Copy>(out: &mut [f32], w: f32, v: &[T], widen: impl Fn(T) -> f32) {
        for (out, &v) in out.iter_mut().zip(v) {
            *out += w * widen(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let one = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
        _mm_cvtss_f32(one)
    }

    /// `e^x` for eight values in `[-87, 0]` (max-subtracted scores; smaller ones are clamped
    /// there, where the result is below 1e-37): Cody–Waite reduction to `2^n · e^r` with
    /// `|r| <= ln 2 / 2` and the Cephes polynomial for `e^r`, within 2 ulp of `f32::exp`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e_r = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let two_n = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(e_r, _mm256_castsi256_ps(two_n))
    }

    /// Replaces every score `s` by `e^(s - max)` and returns their sum.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
        let n = scores.len();
        let full = n - n % 8;
        // SAFETY: every access covers 8 elements at an offset below `full <= n`.
        let mut sum = unsafe {
            let shift = _mm256_set1_ps(max);
            let mut acc = _mm256_setzero_ps();
            let mut at = 0;
            while at < full {
                let p = scores.as_mut_ptr().add(at);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), shift));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
                at += 8;
            }
            horizontal_sum(acc)
        };
        for score in &mut scores[full..] {
            *score = (*score - max).exp();
            sum += *score;
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let full = n - n % 8;
        // SAFETY: every load reads 8 elements at an offset below `full <= n`, within both slices.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut at = 0;
            while at < full {
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(at).cast()));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(at)), kv, acc);
                at += 8;
            }
            let mut sum = horizontal_sum(acc);
            for (&q, &k) in q[full..n].iter().zip(&k[full..n]) {
                sum += q * k.to_f32();
            }
            sum
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(q: &[f32], k: &[f32]) -> f32 {
        let n = q.len().min(k.len());
        let full = n - n % 8;
        // SAFETY: as in `dot_f16`.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut at = 0;
            while at < full {
                let kv = _mm256_loadu_ps(k.as_ptr().add(at));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(at)), kv, acc);
                at += 8;
            }
            let mut sum = horizontal_sum(acc);
            for (&q, &k) in q[full..n].iter().zip(&k[full..n]) {
                sum += q * k;
            }
            sum
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_scaled_f16(out: &mut [f32], w: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let full = n - n % 8;
        // SAFETY: every access covers 8 elements at an offset below `full <= n`.
        unsafe {
            let weight = _mm256_set1_ps(w);
            let mut at = 0;
            while at < full {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(at).cast()));
                let o = out.as_mut_ptr().add(at);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(weight, vv, _mm256_loadu_ps(o)));
                at += 8;
            }
        }
        for (out, &v) in out[full..n].iter_mut().zip(&v[full..n]) {
            *out += w * v.to_f32();
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_f16(out: &mut [f32], v: &[f16]) {
        let n = out.len().min(v.len());
        let full = n - n % 8;
        // SAFETY: every access covers 8 elements at an offset below `full <= n`.
        unsafe {
            let mut at = 0;
            while at < full {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(at).cast()));
                _mm256_storeu_ps(out.as_mut_ptr().add(at), vv);
                at += 8;
            }
        }
        for (out, &v) in out[full..n].iter_mut().zip(&v[full..n]) {
            *out = v.to_f32();
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_scaled_f32(out: &mut [f32], w: f32, v: &[f32]) {
        let n = out.len().min(v.len());
        let full = n - n % 8;
        // SAFETY: as in `add_scaled_f16`.
        unsafe {
            let weight = _mm256_set1_ps(w);
            let mut at = 0;
            while at < full {
                let o = out.as_mut_ptr().add(at);
                let vv = _mm256_loadu_ps(v.as_ptr().add(at));
                _mm256_storeu_ps(o, _mm256_fmadd_ps(weight, vv, _mm256_loadu_ps(o)));
                at += 8;
            }
        }
        for (out, &v) in out[full..n].iter_mut().zip(&v[full..n]) {
            *out += w * v;
        }
    }
}

mod blocked;

#[cfg(test)]
mod tests;
