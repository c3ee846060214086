//! Our own CPU kernels for the quantized matrix products, which are most of the work of a
//! forward pass.
//!
//! At load time each weight matrix is *repacked* into tiles of [`TILE`] output rows whose values
//! are interleaved four at a time, so that one SIMD integer dot product (`vpdpbusd` with
//! AVX512-VNNI, `pmaddubsw` + `pmaddwd` with AVX2) multiplies four inputs into sixteen (or
//! eight) output rows at once. Activations are quantized once per product to 8-bit blocks
//! ([`ActQ8_0`] for the 32-value formats, [`ActQ8K`] for the k-quants), as llama.cpp does, so
//! the results match its numerics up to the order of float additions. A prompt chunk of `m` rows
//! reuses each weight tile for up to [`MAX_M`] rows at a time while it is in cache; decoding
//! (`m = 1`) streams every tile once. The output rows are split across [`parallel`]'s threads.
//!
//! Every tier (AVX512-VNNI, AVX2+FMA+F16C, portable) computes the same integer sums; the tests
//! check each one against a dequantize-and-multiply reference on random blocks.
//!
//! Types without a kernel here stay on candle's quantized matmul ([`QMatrix::new`] says `None`).

/// Runs a tile kernel on the tier `isa`, with the activation count (1 to [`MAX_M`]) as the
/// const `$m` the calls name: `dispatch_tile!(isa, acts.len(), M, avx512_call, avx2_call,
/// portable_call)`.
macro_rules! dispatch_tile {
    ($isa:expr, $count:expr, $m:ident, $avx512:expr, $avx2:expr, $portable:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => match $count {
                // SAFETY (every arm): `Isa::Avx512Vnni` is only chosen when the CPU has these
                // features.
                1 => unsafe {
                    const $m: usize = 1;
                    $avx512
                },
                2 => unsafe {
                    const $m: usize = 2;
                    $avx512
                },
                3 => unsafe {
                    const $m: usize = 3;
                    $avx512
                },
                _ => unsafe {
                    const $m: usize = 4;
                    $avx512
                },
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match $count {
                // SAFETY (every arm): `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and
                // F16C.
                1 => unsafe {
                    const $m: usize = 1;
                    $avx2
                },
                2 => unsafe {
                    const $m: usize = 2;
                    $avx2
                },
                3 => unsafe {
                    const $m: usize = 3;
                    $avx2
                },
                _ => unsafe {
                    const $m: usize = 4;
                    $avx2
                },
            },
            _ => $portable,
        }
    };
}

/// Loads that the x86 tiers of every format share.
#[cfg(target_arch = "x86_64")]
mod x86_shared {
    use std::arch::x86_64::*;

    use super::{ActQ8K, TILE};

    /// Four activation values from `at` as one 32-bit lane, to broadcast against weights whose
    /// inputs are interleaved four at a time.
    ///
    /// # Safety
    /// `at + 4 <= qs.len()`.
    #[inline(always)]
    pub(super) unsafe fn broadcast4(qs: &[i8], at: usize) -> i32 {
        unsafe { std::ptr::read_unaligned(qs.as_ptr().add(at).cast::<i32>()) }
    }

    /// The block sums (of 16 values each) `2i` and `2i + 1` as one 32-bit lane, low one first.
    ///
    /// # Safety
    /// `i < 8`.
    #[inline(always)]
    pub(super) unsafe fn bsum_pair(act: &ActQ8K, i: usize) -> i32 {
        unsafe { std::ptr::read_unaligned(act.bsums.as_ptr().add(2 * i).cast::<i32>()) }
    }

    /// The f16 scales of 8 rows, `half * 8..`, of a tile block as f32.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn eight_f16(values: &[u16; TILE], half: usize) -> __m256 {
        // SAFETY: `half` is 0 or 1, so the 8 values lie inside the TILE (16) of `values`.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(values.as_ptr().add(half * 8).cast()) })
    }

    /// `acc + a_d·(d·scaled − dmin·mins)` for 8 rows: the float formula of the k-quants with a
    /// minimum, in the order of `q4k::accumulate`, so that the tiers agree to the bit.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn add_with_minimum(
        acc: __m256,
        d: __m256,
        dmin: __m256,
        scaled: __m256i,
        mins: __m256i,
        a_d: f32,
    ) -> __m256 {
        let combined = _mm256_fmsub_ps(
            d,
            _mm256_cvtepi32_ps(scaled),
            _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(mins)),
        );
        _mm256_fmadd_ps(combined, _mm256_set1_ps(a_d), acc)
    }
}

mod activations;
mod legacy;
mod pages;
mod q4k;
mod q5k;
mod q6k;
mod q8_0;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use activations::ActBlock;
pub use activations::{ActQ8_0, ActQ8K};
pub use pages::HugePageBuffer;

use super::gguf::GgmlType;
use super::parallel;

/// Output rows per tile: one 512-bit register of f32 sums.
pub const TILE: usize = 16;
/// Activation rows one pass over a weight tile serves (prompt chunks); bounded by registers.
pub const MAX_M: usize = 4;
/// Activation rows a work unit covers: their quantized blocks (about 1 KiB a 1000 inputs)
/// stay in L2 while every tile passes over them.
const CHUNK_ROWS: usize = 64;

/// The instruction set the kernels use, detected once at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512Vnni,
    Avx2,
    Portable,
}

impl Isa {
    /// The best tier this CPU supports; `CODELLAMA_KERNELS=portable|avx2` forces a lower one
    /// (for comparisons and for testing the tiers on one machine).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::supported().first().copied().unwrap_or(Isa::Portable);
            match std::env::var("CODELLAMA_KERNELS").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if Self::supported().contains(&Isa::Avx2) => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// Every tier this CPU can run, best first; `Portable` is always last.
    pub fn supported() -> Vec<Isa> {
        let mut tiers = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
            {
                tiers.push(Isa::Avx512Vnni);
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                tiers.push(Isa::Avx2);
            }
        }
        tiers.push(Isa::Portable);
        tiers
    }
}

/// A weight matrix of `rows` outputs by `cols` inputs, repacked for [`Isa`]'s kernels.
pub struct QMatrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

enum Weights {
    Q8_0(q8_0::Packed),
    Q4_0(legacy::Q4_0),
    Q4_1(legacy::Q4_1),
    Q5_0(legacy::Q5_0),
    Q5_1(legacy::Q5_1),
    Q4K(q4k::Packed),
    Q6K(q6k::Packed),
    Q5K(q5k::Packed),
}

/// One weight format's tiles: how its activations are quantized and how a tile is multiplied.
/// Repacked weight blocks, `[tile][block]`: the blocks of a tile of [`TILE`] rows lie together,
/// in input order, so a tile streams front to back.
struct Tiles<B: Copy> {
    blocks: HugePageBuffer<B>,
    blocks_per_row: usize,
}

impl<B: Copy + Send> Tiles<B> {
    /// Repacks `rows` rows of `blocks_per_row` file blocks of `block_bytes` each:
    /// `pack(raw, r, block)` writes a file block of row `r` (within its tile) into the tile's
    /// block, which starts as `empty`. `None` when `bytes` is short or `pack` says so. The tiles
    /// are packed in parallel: with the first write of fresh memory, repacking is most of a load.
    fn pack(
        bytes: &[u8],
        rows: usize,
        blocks_per_row: usize,
        block_bytes: usize,
        empty: B,
        pack: impl Fn(&[u8], usize, &mut B) -> Option<()> + Sync,
    ) -> Option<Self> {
        let count = rows.div_ceil(TILE) * blocks_per_row;
        let mut blocks = HugePageBuffer::new(count, empty)?;
        let failed = AtomicBool::new(false);
        let mut tiles: Vec<&mut [B]> = blocks.chunks_mut(blocks_per_row.max(1)).collect();
        parallel::for_each_mut(
            &mut tiles,
            || (),
            |(), tile, blocks| {
                for r in 0..TILE.min(rows - tile * TILE) {
                    let row = tile * TILE + r;
                    for (b, block) in blocks.iter_mut().enumerate() {
                        let at = (row * blocks_per_row + b) * block_bytes;
                        let raw = bytes.get(at..).and_then(|rest| rest.get(..block_bytes));
                        if raw.and_then(|raw| pack(raw, r, block)).is_none() {
                            failed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            },
        );
        (!failed.into_inner()).then_some(Self {
            blocks,
            blocks_per_row,
        })
    }

    fn tile(&self, tile: usize) -> &[B] {
        &self.blocks[tile * self.blocks_per_row..(tile + 1) * self.blocks_per_row]
    }
}

trait Packed: Sync {
    type Act: activations::ActBlock;
    /// `out[i][r]` = dot product of output row `tile * TILE + r` with activation row `acts[i]`.
    fn tile(&self, isa: Isa, tile: usize, acts: &[&[Self::Act]], out: &mut [[f32; TILE]; MAX_M]);
}

impl QMatrix {
    /// Repacks the GGUF blocks of a `rows` × `cols` matrix (row-major, `bytes` exactly the
    /// tensor's data); `None` when the type has no kernel here or the shape does not fit its
    /// blocks, and candle's path must be used.
    pub fn new(ggml_type: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let block = ggml_type.block_size() as usize;
        let row_bytes = cols / block * ggml_type.type_size() as usize;
        if rows == 0 || !cols.is_multiple_of(block) || bytes.len() != row_bytes * rows {
            return None;
        }
        let weights = match ggml_type {
            GgmlType::Q8_0 => Weights::Q8_0(q8_0::Packed::new(bytes, rows, cols)?),
            GgmlType::Q4_0 => Weights::Q4_0(legacy::Q4_0::new(bytes, rows, cols)?),
            GgmlType::Q4_1 => Weights::Q4_1(legacy::Q4_1::new(bytes, rows, cols)?),
            GgmlType::Q5_0 => Weights::Q5_0(legacy::Q5_0::new(bytes, rows, cols)?),
            GgmlType::Q5_1 => Weights::Q5_1(legacy::Q5_1::new(bytes, rows, cols)?),
            GgmlType::Q4_K => Weights::Q4K(q4k::Packed::new(bytes, rows, cols)?),
            GgmlType::Q6_K => Weights::Q6K(q6k::Packed::new(bytes, rows, cols)?),
            GgmlType::Q5_K => Weights::Q5K(q5k::Packed::new(bytes, rows, cols)?),
            _ => return None,
        };
        Some(Self {
            rows,
            cols,
            weights,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `out[i * rows + j]` = Σ_k `x[i * cols + k]` · W[j][k], for the `m = x.len() / cols` rows
    /// of `x`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        Self::matmul_many(Isa::detect(), &[self], x, &mut [out]);
    }

    /// [`matmul`](Self::matmul) with a chosen tier (which must be [`Isa::supported`]).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], out: &mut [f32]) {
        Self::matmul_many(isa, &[self], x, &mut [out]);
    }

    /// Several matrices with the same inputs (Q, K and V; gate and up) in one pass: the
    /// activations are quantized once per format and all tiles share one parallel region.
    pub fn matmul_many(isa: Isa, matrices: &[&QMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
        let Some(first) = matrices.first() else {
            return;
        };
        let cols = first.cols;
        let m = x.len() / cols;
        assert!(
            x.len().is_multiple_of(cols)
                && matrices.len() == outs.len()
                && matrices
                    .iter()
                    .zip(outs.iter())
                    .all(|(w, out)| w.cols == cols && out.len() == m * w.rows),
            "matmul shapes: x {} values for {cols} columns; outputs {:?} for rows {:?}",
            x.len(),
            outs.iter().map(|o| o.len()).collect::<Vec<_>>(),
            matrices.iter().map(|w| w.rows).collect::<Vec<_>>()
        );
        let acts = Activations::new(matrices, x, m, cols);
        // Work units are (matrix, chunk of activation rows, tile): a chunk's quantized
        // activations stay in L2 while the tiles stream past, and a tile stays in L1 across the
        // chunk's rows.
        let chunks = m.div_ceil(CHUNK_ROWS);
        let mut jobs = Vec::with_capacity(matrices.len());
        let mut units = 0;
        for (matrix, out) in matrices.iter().zip(outs.iter_mut()) {
            let tiles = matrix.rows.div_ceil(TILE);
            jobs.push(Job {
                matrix,
                first_unit: units,
                tiles,
                out: SharedOut {
                    ptr: out.as_mut_ptr(),
                    stride: matrix.rows,
                },
            });
            units += chunks * tiles;
        }
        parallel::for_each_range(units, 1, |range| {
            for unit in range {
                let Some(job) = jobs.iter().rev().find(|job| job.first_unit <= unit) else {
                    return;
                };
                let local = unit - job.first_unit;
                let rows =
                    (local / job.tiles * CHUNK_ROWS)..((local / job.tiles + 1) * CHUNK_ROWS).min(m);
                let tile = local % job.tiles;
                match &job.matrix.weights {
                    Weights::Q8_0(packed) => job.unit(packed, isa, &acts.q8_0, rows, tile),
                    Weights::Q4K(packed) => job.unit(packed, isa, &acts.q8k, rows, tile),
                    Weights::Q6K(packed) => job.unit(packed, isa, &acts.q8k, rows, tile),
                    Weights::Q4_0(packed) => job.unit(packed, isa, &acts.q8_0, rows, tile),
                    Weights::Q4_1(packed) => job.unit(packed, isa, &acts.q8_0, rows, tile),
                    Weights::Q5_0(packed) => job.unit(packed, isa, &acts.q8_0, rows, tile),
                    Weights::Q5_1(packed) => job.unit(packed, isa, &acts.q8_0, rows, tile),
                    Weights::Q5K(packed) => job.unit(packed, isa, &acts.q8k, rows, tile),
                }
            }
        });
    }

    /// The activation format this matrix's kernel takes.
    fn takes_q8k(&self) -> bool {
        matches!(
            self.weights,
            Weights::Q4K(_) | Weights::Q5K(_) | Weights::Q6K(_)
        )
    }
}

/// The inputs quantized in the formats the matrices of one product need.
struct Activations {
    q8_0: Vec<ActQ8_0>,
    q8k: Vec<ActQ8K>,
}

impl Activations {
    fn new(matrices: &[&QMatrix], x: &[f32], m: usize, cols: usize) -> Self {
        let q8k = matrices.iter().any(|w| w.takes_q8k());
        let q8_0 = matrices.iter().any(|w| !w.takes_q8k());
        Self {
            q8_0: if q8_0 {
                quantize(x, m, cols)
            } else {
                Vec::new()
            },
            q8k: if q8k {
                quantize(x, m, cols)
            } else {
                Vec::new()
            },
        }
    }
}

fn quantize<A: activations::ActBlock>(x: &[f32], m: usize, cols: usize) -> Vec<A> {
    let blocks = cols / A::VALUES;
    let mut acts = vec![A::default(); m * blocks];
    let mut rows: Vec<&mut [A]> = acts.chunks_mut(blocks).collect();
    if m >= 8 {
        parallel::for_each_mut(
            &mut rows,
            || (),
            |_, i, q| A::quantize(&x[i * cols..(i + 1) * cols], q),
        );
    } else {
        for (i, q) in rows.iter_mut().enumerate() {
            A::quantize(&x[i * cols..(i + 1) * cols], q);
        }
    }
    acts
}

/// One matrix of a product: where its units start and where its output goes.
struct Job<'a> {
    matrix: &'a QMatrix,
    first_unit: usize,
    tiles: usize,
    out: SharedOut,
}

impl Job<'_> {
    /// Output columns `tile * TILE..` of activation rows `rows`.
    fn unit<P: Packed>(
        &self,
        packed: &P,
        isa: Isa,
        acts: &[P::Act],
        rows: Range<usize>,
        tile: usize,
    ) {
        let blocks = self.matrix.cols / P::Act::VALUES;
        let valid = (self.matrix.rows - tile * TILE).min(TILE);
        let mut sums = [[0f32; TILE]; MAX_M];
        for m0 in rows.clone().step_by(MAX_M) {
            let mt = (rows.end - m0).min(MAX_M);
            let mut rows_of: [&[P::Act]; MAX_M] = [&[]; MAX_M];
            for (i, row) in rows_of.iter_mut().enumerate().take(mt) {
                *row = &acts[(m0 + i) * blocks..(m0 + i + 1) * blocks];
            }
            packed.tile(isa, tile, &rows_of[..mt], &mut sums);
            for (i, sum) in sums.iter().enumerate().take(mt) {
                // SAFETY: each unit writes only its own columns `tile * TILE..+valid` of rows
                // `m0..m0 + mt`, inside this matrix's output (checked by `matmul_many`).
                unsafe { self.out.write(m0 + i, tile * TILE, &sum[..valid]) };
            }
        }
    }
}

/// `out` shared by the tiles, which write disjoint column ranges.
struct SharedOut {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: the tiles write disjoint ranges (see `run`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `row * stride + col + values.len()` must lie in the buffer, and no other thread may
    /// write the same range.
    unsafe fn write(&self, row: usize, col: usize, values: &[f32]) {
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.ptr.add(row * self.stride + col),
                values.len(),
            )
        };
    }
}

/// Sizes the thread pool the kernels (and candle's CPU ops) run on: `threads`, or the physical
/// cores this process may use. Call once, early, while the process has a single thread (it
/// sets `CANDLE_NUM_THREADS` for candle's own pool unless the user did).
pub fn use_threads(threads: Option<usize>) {
    let threads = threads.unwrap_or_else(physical_cores).max(1);
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called from `cli::main` before the runtime, the pools or any logging thread
        // start, so no other thread can be reading the environment.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", threads.to_string()) };
    }
    parallel::set_threads(threads);
    // Candle's CPU ops run on rayon's pool. Fails only if the pool already exists (a second
    // call), which keeps the first size.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("codellama-rayon-{i}"))
        .build_global();
}

/// Physical cores among the CPUs this process may run on: hyper-threads share a core's SIMD
/// units, so a second thread per core only adds contention to these kernels.
pub fn physical_cores() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut cores = std::collections::HashSet::new();
    let Ok(cpus) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return allowed;
    };
    for cpu in cpus.flatten() {
        let siblings = cpu.path().join("topology/thread_siblings_list");
        if let Ok(list) = std::fs::read_to_string(siblings) {
            cores.insert(list.trim().to_owned());
        }
    }
    if cores.is_empty() {
        allowed
    } else {
        cores.len().min(allowed)
    }
}

/// An f16 stored as its bits, read as f32.
#[inline(always)]
fn f16_bits(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}
