//! Attention for several query rows at once (prefill chunks), flash-attention style.
//!
//! Per decode step each key is read once per query head, so the one-row kernel can afford to
//! widen F16 and reduce a dot product per key. A prefill chunk reads every key for
//! `seq × group` query vectors, so here each task takes one key head and a tile of query rows
//! (all `group` heads of each), walks the visible keys in blocks of [`KEYS`], widens each block
//! once (keys transposed, so that one vector holds several keys' scores and no dot product needs
//! a horizontal sum), and keeps a running maximum and sum per query vector (online softmax) so
//! that the score tile never grows past `tile × KEYS`. Both products are register-blocked
//! small matrix products, dispatched per [`Isa`].

use super::{AttentionShape, Isa, KvElement, PARALLEL_WORK, exp_shifted};
use crate::model::parallel;

/// Keys per block (a multiple of 16, the AVX2 tile's width).
const KEYS: usize = 32;
/// Query vectors (rows × group) per task: enough to pay for widening each key block.
const TILE: usize = 64;
/// Rows of the register tile in the AVX2 products.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 4;

/// Scratch buffers a task reuses across its key blocks (and across tasks on one thread).
#[derive(Default)]
struct Scratch {
    /// Scaled queries `[n][head_dim]`, vector `r` being row `r / group`, head `r % group`.
    q: Vec<f32>,
    /// Keys of the block, transposed: `[head_dim][KEYS]`, zero past the block's end.
    kt: Vec<f32>,
    /// Values of the block `[KEYS][padded]`, zero past the block's end and past `head_dim`.
    v: Vec<f32>,
    /// Scores, then weights: `[n][KEYS]`.
    p: Vec<f32>,
    /// Unnormalised outputs `[n][padded]`.
    o: Vec<f32>,
    /// Running maximum score and sum of weights per query vector.
    max: Vec<f32>,
    sum: Vec<f32>,
    /// One widened key.
    row: Vec<f32>,
}

/// [`attend_with`](super::attend_with) for `shape.seq > 1`.
pub(super) fn attend<T: KvElement>(
    isa: Isa,
    queries: &[f32],
    keys: &[T],
    values: &[T],
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        kv_heads,
        group,
        head_dim,
        seq,
        ..
    } = shape;
    // Rows per task; fewer when that leaves threads idle (short chunks).
    let mut rows = (TILE / group).clamp(1, seq);
    let threads = parallel::threads();
    while rows > 1 && kv_heads * seq.div_ceil(rows) < 2 * threads {
        rows = rows.div_ceil(2);
    }
    // Results staged as `[kv_head][seq][group][head_dim]`, so that each task owns one piece.
    let per_row = group * head_dim;
    let mut staged = vec![0.0f32; kv_heads * seq * per_row];
    let tasks: Vec<(usize, usize, &mut [f32])> = staged
        .chunks_mut(seq * per_row)
        .enumerate()
        .flat_map(|(kv_head, head)| {
            head.chunks_mut(rows * per_row)
                .enumerate()
                .map(move |(block, dst)| (kv_head, block * rows, dst))
        })
        .collect();
    let run = |scratch: &mut Scratch, (kv_head, first_row, dst): (usize, usize, &mut [f32])| {
        tile(
            isa, queries, keys, values, shape, kv_head, first_row, dst, scratch,
        );
    };
    let work = shape.query_len() * (shape.start + seq);
    if work < PARALLEL_WORK {
        let mut scratch = Scratch::default();
        tasks.into_iter().for_each(|task| run(&mut scratch, task));
    } else {
        let mut tasks = tasks;
        parallel::for_each_mut(&mut tasks, Scratch::default, |scratch, _, task| {
            let (kv_head, first_row, ref mut dst) = *task;
            run(scratch, (kv_head, first_row, dst))
        });
    }
    let heads = shape.heads();
    for kv_head in 0..kv_heads {
        for row in 0..seq {
            let from = (kv_head * seq + row) * per_row;
            let to = (row * heads + kv_head * group) * head_dim;
            out[to..to + per_row].copy_from_slice(&staged[from..from + per_row]);
        }
    }
}

/// Query rows `first_row..` (as many as `out` holds) of `kv_head`'s group, into `out`
/// `[rows][group][head_dim]`.
#[allow(clippy::too_many_arguments)]
fn tile<T: KvElement>(
    isa: Isa,
    queries: &[f32],
    keys: &[T],
    values: &[T],
    shape: AttentionShape,
    kv_head: usize,
    first_row: usize,
    out: &mut [f32],
    s: &mut Scratch,
) {
    let AttentionShape {
        group,
        head_dim,
        start,
        seq,
        capacity,
        ..
    } = shape;
    let rows = out.len() / (group * head_dim);
    let n = rows * group;
    // Output rows padded to whole 16-wide tiles.
    let padded = head_dim.next_multiple_of(16);
    // Scaling the queries once instead of every score changes only the rounding.
    let scale = 1.0 / (head_dim as f32).sqrt();
    s.q.clear();
    for i in 0..rows {
        for g in 0..group {
            let at = ((kv_head * group + g) * seq + first_row + i) * head_dim;
            s.q.extend(queries[at..at + head_dim].iter().map(|&x| x * scale));
        }
    }
    reset(&mut s.o, n * padded, 0.0);
    reset(&mut s.max, n, f32::NEG_INFINITY);
    reset(&mut s.sum, n, 0.0);
    s.p.resize(n * KEYS, 0.0);
    s.row.resize(head_dim, 0.0);
    // The last row sees keys `0..end`.
    let end = start + first_row + rows;
    let base = kv_head * capacity * head_dim;
    for first_key in (0..end).step_by(KEYS) {
        let block = KEYS.min(end - first_key);
        reset(&mut s.kt, head_dim * KEYS, 0.0);
        reset(&mut s.v, KEYS * padded, 0.0);
        for j in 0..block {
            let at = base + (first_key + j) * head_dim;
            T::widen(isa, &mut s.row, &keys[at..at + head_dim]);
            for (d, &k) in s.row.iter().enumerate() {
                s.kt[d * KEYS + j] = k;
            }
            T::widen(
                isa,
                &mut s.v[j * padded..][..head_dim],
                &values[at..at + head_dim],
            );
        }
        scores(isa, &s.q, head_dim, &s.kt, &mut s.p);
        for r in 0..n {
            // Keys of this block that vector `r` (row `r / group`) sees: causality.
            let limit = (start + first_row + r / group + 1)
                .saturating_sub(first_key)
                .min(block);
            let p = &mut s.p[r * KEYS..(r + 1) * KEYS];
            if limit == 0 {
                // Only after blocks it saw, so its running maximum is already finite.
                p.fill(0.0);
                continue;
            }
            let block_max = max_of(isa, &p[..limit]);
            let max = s.max[r].max(block_max);
            // The first block has no earlier sum to rescale: e^-inf = 0.
            let rescale = (s.max[r] - max).exp();
            let sum = exp_shifted(isa, &mut p[..limit], max);
            p[limit..].fill(0.0);
            s.sum[r] = s.sum[r] * rescale + sum;
            s.max[r] = max;
            if rescale != 1.0 {
                for o in &mut s.o[r * padded..][..head_dim] {
                    *o *= rescale;
                }
            }
        }
        accumulate(isa, &s.p, &s.v, padded, &mut s.o);
    }
    for (r, out) in out.chunks_exact_mut(head_dim).enumerate() {
        let inverse = 1.0 / s.sum[r];
        for (out, &o) in out.iter_mut().zip(&s.o[r * padded..]) {
            *out = o * inverse;
        }
    }
}

fn reset(buffer: &mut Vec<f32>, len: usize, value: f32) {
    buffer.clear();
    buffer.resize(len, value);
}

/// The largest of `x` (a sequential fold would be a chain of dependent maxima).
fn max_of(isa: Isa, x: &[f32]) -> f32 {
    match isa {
        Isa::Portable => x.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `exp_shifted`.
        Isa::Avx2 => unsafe { avx2::max_of(x) },
    }
}

/// `p[r][j] = Σ_d q[r][d] · kt[d][j]` for `q` `[n][head_dim]`, `kt` `[head_dim][KEYS]`.
fn scores(isa: Isa, q: &[f32], head_dim: usize, kt: &[f32], p: &mut [f32]) {
    assert_eq!(kt.len(), head_dim * KEYS);
    assert_eq!(p.len() * head_dim, q.len() * KEYS);
    match isa {
        Isa::Portable => {
            for (q, p) in q.chunks_exact(head_dim).zip(p.chunks_exact_mut(KEYS)) {
                p.fill(0.0);
                for (&x, k) in q.iter().zip(kt.chunks_exact(KEYS)) {
                    for (p, &k) in p.iter_mut().zip(k) {
                        *p += x * k;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `exp_shifted`; the lengths are checked above.
        Isa::Avx2 => unsafe { avx2::scores(q, head_dim, kt, p) },
    }
}

/// `o[r][t] += Σ_j p[r][j] · v[j][t]` for `p` `[n][KEYS]`, `v` `[KEYS][padded]`, `o`
/// `[n][padded]`.
fn accumulate(isa: Isa, p: &[f32], v: &[f32], padded: usize, o: &mut [f32]) {
    assert_eq!(v.len(), KEYS * padded);
    assert_eq!(p.len() * padded, o.len() * KEYS);
    assert_eq!(padded % 16, 0);
    match isa {
        Isa::Portable => {
            for (p, o) in p.chunks_exact(KEYS).zip(o.chunks_exact_mut(padded)) {
                for (&w, v) in p.iter().zip(v.chunks_exact(padded)) {
                    for (o, &v) in o.iter_mut().zip(v) {
                        *o += w * v;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `exp_shifted`; the lengths are checked above.
        Isa::Avx2 => unsafe { avx2::accumulate(p, v, padded, o) },
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{KEYS, ROWS};

    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max_of(x: &[f32]) -> f32 {
        let full = x.len() - x.len() % 8;
        let mut lanes = [f32::NEG_INFINITY; 8];
        // SAFETY: every load reads 8 elements at an offset below `full <= x.len()`.
        unsafe {
            let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut at = 0;
            while at < full {
                acc = _mm256_max_ps(acc, _mm256_loadu_ps(x.as_ptr().add(at)));
                at += 8;
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        }
        lanes
            .iter()
            .chain(&x[full..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// [`super::scores`]: tiles of `R` query vectors × 16 keys in 2R registers, so each key
    /// load serves `R` vectors and each query broadcast 16 keys.
    ///
    /// # Safety
    /// AVX2 and FMA; `kt.len() == head_dim * KEYS`, `p.len() * head_dim == q.len() * KEYS`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(q: &[f32], head_dim: usize, kt: &[f32], p: &mut [f32]) {
        let n = p.len() / KEYS;
        let full = n - n % ROWS;
        // SAFETY: rows `r..r + R` are below `n`, as the caller's lengths guarantee.
        unsafe {
            let mut r = 0;
            while r < full {
                scores_tile::<ROWS>(q, head_dim, kt, p, r);
                r += ROWS;
            }
            while r < n {
                scores_tile::<1>(q, head_dim, kt, p, r);
                r += 1;
            }
        }
    }

    /// # Safety
    /// As [`scores`], and `r + R <= p.len() / KEYS`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_tile<const R: usize>(
        q: &[f32],
        head_dim: usize,
        kt: &[f32],
        p: &mut [f32],
        r: usize,
    ) {
        // SAFETY: query reads stay below `(r + R) * head_dim <= q.len()`, key reads below
        // `head_dim * KEYS`, score writes below `(r + R) * KEYS <= p.len()`.
        unsafe {
            let q = q.as_ptr().add(r * head_dim);
            let p = p.as_mut_ptr().add(r * KEYS);
            let mut column = 0;
            while column < KEYS {
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                for d in 0..head_dim {
                    let k = kt.as_ptr().add(d * KEYS + column);
                    let k0 = _mm256_loadu_ps(k);
                    let k1 = _mm256_loadu_ps(k.add(8));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_broadcast_ss(&*q.add(i * head_dim + d));
                        acc[0] = _mm256_fmadd_ps(x, k0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(x, k1, acc[1]);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let at = p.add(i * KEYS + column);
                    _mm256_storeu_ps(at, acc[0]);
                    _mm256_storeu_ps(at.add(8), acc[1]);
                }
                column += 16;
            }
        }
    }

    /// [`super::accumulate`]: tiles of `R` vectors × 16 output values in 2R registers.
    ///
    /// # Safety
    /// AVX2 and FMA; `v.len() == KEYS * padded`, `p.len() * padded == o.len() * KEYS`,
    /// `padded % 16 == 0`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate(p: &[f32], v: &[f32], padded: usize, o: &mut [f32]) {
        let n = p.len() / KEYS;
        let full = n - n % ROWS;
        // SAFETY: rows `r..r + R` are below `n`, as the caller's lengths guarantee.
        unsafe {
            let mut r = 0;
            while r < full {
                accumulate_tile::<ROWS>(p, v, padded, o, r);
                r += ROWS;
            }
            while r < n {
                accumulate_tile::<1>(p, v, padded, o, r);
                r += 1;
            }
        }
    }

    /// # Safety
    /// As [`accumulate`], and `r + R <= p.len() / KEYS`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_tile<const R: usize>(
        p: &[f32],
        v: &[f32],
        padded: usize,
        o: &mut [f32],
        r: usize,
    ) {
        // SAFETY: weight reads stay below `(r + R) * KEYS <= p.len()`, value reads below
        // `KEYS * padded`, output accesses below `(r + R) * padded <= o.len()`.
        unsafe {
            let p = p.as_ptr().add(r * KEYS);
            let o = o.as_mut_ptr().add(r * padded);
            let mut column = 0;
            while column < padded {
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                for (i, acc) in acc.iter_mut().enumerate() {
                    let at = o.add(i * padded + column);
                    acc[0] = _mm256_loadu_ps(at);
                    acc[1] = _mm256_loadu_ps(at.add(8));
                }
                for j in 0..KEYS {
                    let value = v.as_ptr().add(j * padded + column);
                    let v0 = _mm256_loadu_ps(value);
                    let v1 = _mm256_loadu_ps(value.add(8));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let w = _mm256_broadcast_ss(&*p.add(i * KEYS + j));
                        acc[0] = _mm256_fmadd_ps(w, v0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(w, v1, acc[1]);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    let at = o.add(i * padded + column);
                    _mm256_storeu_ps(at, acc[0]);
                    _mm256_storeu_ps(at.add(8), acc[1]);
                }
                column += 16;
            }
        }
    }
}
