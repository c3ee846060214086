//! Q6_K weights against [`ActQ8K`] activations.
//!
//! A Q6_K super-block is 256 values in 16 sub-blocks of 16: value = `d·scale[s]·(q − 32)` with
//! 6-bit `q` and signed 8-bit scales. A tile block keeps the file's 6.56 bits a weight: the low
//! nibbles regrouped as in Q4_K (`qs[g][row][j]` = inputs `8g + j` low, `8g + 4 + j` high), and
//! the top two bits of two such groups in one byte (`qh[g / 2][row][j]`, bits 0–1 and 2–3 for
//! group `g` even, 4–5 and 6–7 for the odd one), so decoding streams as few bytes as the file
//! holds. Per row and super-block the kernels compute, exactly in integers,
//! `Σ_s scale[s]·(Σ q·a − 32·Σ a)`, then apply `d` and the activation's scale in f32.

use super::activations::ActQ8K;
use super::{Isa, MAX_M, TILE, f16_bits, f16_to_f32};

const SUPER: usize = 256;
const SUBS: usize = 16;
const BLOCK_BYTES: usize = 210;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileBlock {
    qs: [u8; SUPER / 2 * TILE],
    qh: [u8; SUPER / 4 * TILE],
    scales: [i8; SUBS * TILE],
    d: [u16; TILE],
}

pub struct Packed {
    /// `[tile][super-block]`.
    blocks: Vec<TileBlock>,
    blocks_per_row: usize,
}

/// The 6-bit value of input `k` of a raw super-block: 128 bytes of low nibbles (`ql`), 64 of
/// top bit pairs (`qh`), each half of the block using 64 and 32 of them.
fn raw_value(raw: &[u8], k: usize) -> u8 {
    let (half, r) = (k / 128, k % 128);
    let (quarter, l) = (r / 32, r % 32);
    let low = raw[64 * half + l + (quarter % 2) * 32];
    let low = if quarter < 2 { low & 0x0F } else { low >> 4 };
    let high = (raw[128 + 32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

impl Packed {
    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let blocks_per_row = cols / SUPER;
        let tiles = rows.div_ceil(TILE);
        let empty = TileBlock {
            qs: [0; SUPER / 2 * TILE],
            qh: [0; SUPER / 4 * TILE],
            scales: [0; SUBS * TILE],
            d: [0; TILE],
        };
        let mut blocks = vec![empty; tiles * blocks_per_row];
        for row in 0..rows {
            let (tile, r) = (row / TILE, row % TILE);
            for b in 0..blocks_per_row {
                let raw = bytes.get((row * blocks_per_row + b) * BLOCK_BYTES..)?;
                let raw = raw.get(..BLOCK_BYTES)?;
                let packed = &mut blocks[tile * blocks_per_row + b];
                packed.d[r] = f16_bits(raw, 208);
                for s in 0..SUBS {
                    packed.scales[s * TILE + r] = raw[192 + s] as i8;
                }
                for g in 0..SUPER / 8 {
                    for j in 0..4 {
                        let (first, second) =
                            (raw_value(raw, 8 * g + j), raw_value(raw, 8 * g + 4 + j));
                        packed.qs[(g * TILE + r) * 4 + j] = (first & 0x0F) | ((second & 0x0F) << 4);
                        let top = (first >> 4) | ((second >> 4) << 2);
                        packed.qh[(g / 2 * TILE + r) * 4 + j] |= top << (4 * (g % 2));
                    }
                }
            }
        }
        Some(Self {
            blocks,
            blocks_per_row,
        })
    }

    fn tile_blocks(&self, tile: usize) -> &[TileBlock] {
        &self.blocks[tile * self.blocks_per_row..(tile + 1) * self.blocks_per_row]
    }
}

impl super::Packed for Packed {
    type Act = ActQ8K;

    fn tile(&self, isa: Isa, tile: usize, acts: &[&[ActQ8K]], out: &mut [[f32; TILE]; MAX_M]) {
        let blocks = self.tile_blocks(tile);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512Vnni` is only chosen when the CPU has these features.
            Isa::Avx512Vnni => unsafe {
                match acts.len() {
                    1 => x86::tile_avx512::<1>(blocks, acts, out),
                    2 => x86::tile_avx512::<2>(blocks, acts, out),
                    3 => x86::tile_avx512::<3>(blocks, acts, out),
                    _ => x86::tile_avx512::<4>(blocks, acts, out),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2, FMA and F16C.
            Isa::Avx2 => unsafe {
                match acts.len() {
                    1 => x86::tile_avx2::<1>(blocks, acts, out),
                    2 => x86::tile_avx2::<2>(blocks, acts, out),
                    3 => x86::tile_avx2::<3>(blocks, acts, out),
                    _ => x86::tile_avx2::<4>(blocks, acts, out),
                }
            },
            _ => tile_portable(blocks, acts, out),
        }
    }
}

fn tile_portable(blocks: &[TileBlock], acts: &[&[ActQ8K]], out: &mut [[f32; TILE]; MAX_M]) {
    for (sums, act) in out.iter_mut().zip(acts) {
        *sums = [0.0; TILE];
        for (block, a) in blocks.iter().zip(act.iter()) {
            for (r, sum) in sums.iter_mut().enumerate() {
                let mut scaled = 0i32;
                for s in 0..SUBS {
                    let mut dot = 0i32;
                    for g in 2 * s..2 * s + 2 {
                        for j in 0..4 {
                            let low = block.qs[(g * TILE + r) * 4 + j];
                            let top = block.qh[(g / 2 * TILE + r) * 4 + j] >> (4 * (g % 2));
                            let first = (low & 0x0F) | ((top & 3) << 4);
                            let second = (low >> 4) | (((top >> 2) & 3) << 4);
                            dot += i32::from(first) * i32::from(a.qs[8 * g + j]);
                            dot += i32::from(second) * i32::from(a.qs[8 * g + 4 + j]);
                        }
                    }
                    let centred = dot - 32 * i32::from(a.bsums[s]);
                    scaled += centred * i32::from(block.scales[s * TILE + r]);
                }
                *sum = (f16_to_f32(block.d[r]) * scaled as f32).mul_add(a.d, *sum);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Indexing register arrays by a constant-bound loop is what unrolls into registers.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ActQ8K, MAX_M, SUBS, TILE, TileBlock};

    #[inline(always)]
    unsafe fn broadcast4(qs: &[i8; 256], at: usize) -> i32 {
        unsafe { std::ptr::read_unaligned(qs.as_ptr().add(at).cast::<i32>()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let bits01 = _mm512_set1_epi8(0x03);
        let bits23 = _mm512_set1_epi8(0x0C);
        let bits45 = _mm512_set1_epi8(0x30);
        let bits67 = _mm512_set1_epi8(-64); // 0xC0
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let mut scaled = [_mm512_setzero_si512(); M];
            // Sub-block s is groups 2s and 2s + 1, whose top bits share one load.
            for s in 0..SUBS {
                let qh = unsafe { _mm512_loadu_si512(block.qh.as_ptr().add(s * 64).cast()) };
                let tops = [
                    (
                        _mm512_slli_epi16(_mm512_and_si512(qh, bits01), 4),
                        _mm512_slli_epi16(_mm512_and_si512(qh, bits23), 2),
                    ),
                    (
                        _mm512_and_si512(qh, bits45),
                        _mm512_srli_epi16(_mm512_and_si512(qh, bits67), 2),
                    ),
                ];
                let mut first = [_mm512_setzero_si512(); M];
                let mut second = [_mm512_setzero_si512(); M];
                for (half, (top_first, top_second)) in tops.into_iter().enumerate() {
                    let g = 2 * s + half;
                    let w = unsafe { _mm512_loadu_si512(qs.add(g * 64).cast()) };
                    let w_first = _mm512_or_si512(_mm512_and_si512(w, nibble), top_first);
                    let w_second = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble),
                        top_second,
                    );
                    for i in 0..M {
                        let a = &acts[i][b].qs;
                        let a_first = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g) });
                        let a_second = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g + 4) });
                        first[i] = _mm512_dpbusd_epi32(first[i], w_first, a_first);
                        second[i] = _mm512_dpbusd_epi32(second[i], w_second, a_second);
                    }
                }
                let scale = _mm512_cvtepi8_epi32(unsafe {
                    _mm_loadu_si128(block.scales.as_ptr().add(s * TILE).cast())
                });
                for i in 0..M {
                    let offset = _mm512_set1_epi32(32 * i32::from(acts[i][b].bsums[s]));
                    let centred = _mm512_sub_epi32(_mm512_add_epi32(first[i], second[i]), offset);
                    scaled[i] = _mm512_add_epi32(scaled[i], _mm512_mullo_epi32(centred, scale));
                }
            }
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.d.as_ptr().cast()) });
            for i in 0..M {
                let value = _mm512_mul_ps(d, _mm512_cvtepi32_ps(scaled[i]));
                acc[i] = _mm512_fmadd_ps(value, _mm512_set1_ps(acts[i][b].d), acc[i]);
            }
        }
        for i in 0..M {
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let bits01 = _mm256_set1_epi8(0x03);
        let bits23 = _mm256_set1_epi8(0x0C);
        let bits45 = _mm256_set1_epi8(0x30);
        let bits67 = _mm256_set1_epi8(-64); // 0xC0
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            for half_rows in 0..2 {
                let qs = unsafe { block.qs.as_ptr().add(half_rows * 32) };
                let mut scaled = [_mm256_setzero_si256(); M];
                for s in 0..SUBS {
                    let qh = unsafe {
                        _mm256_loadu_si256(block.qh.as_ptr().add(s * 64 + half_rows * 32).cast())
                    };
                    let tops = [
                        (
                            _mm256_slli_epi16(_mm256_and_si256(qh, bits01), 4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, bits23), 2),
                        ),
                        (
                            _mm256_and_si256(qh, bits45),
                            _mm256_srli_epi16(_mm256_and_si256(qh, bits67), 2),
                        ),
                    ];
                    let mut dots = [_mm256_setzero_si256(); M];
                    for (half, (top_first, top_second)) in tops.into_iter().enumerate() {
                        let g = 2 * s + half;
                        let w = unsafe { _mm256_loadu_si256(qs.add(g * 64).cast()) };
                        let w_first = _mm256_or_si256(_mm256_and_si256(w, nibble), top_first);
                        let w_second = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble),
                            top_second,
                        );
                        for i in 0..M {
                            let a = &acts[i][b].qs;
                            let a_first = _mm256_set1_epi32(unsafe { broadcast4(a, 8 * g) });
                            let a_second = _mm256_set1_epi32(unsafe { broadcast4(a, 8 * g + 4) });
                            // 2 · 63 · 127 per product pair, twice: still below 2^15.
                            let pairs = _mm256_add_epi16(
                                _mm256_maddubs_epi16(w_first, a_first),
                                _mm256_maddubs_epi16(w_second, a_second),
                            );
                            dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    let scale = _mm256_cvtepi8_epi32(unsafe {
                        _mm_loadl_epi64(block.scales.as_ptr().add(s * TILE + half_rows * 8).cast())
                    });
                    for i in 0..M {
                        let offset = _mm256_set1_epi32(32 * i32::from(acts[i][b].bsums[s]));
                        let centred = _mm256_sub_epi32(dots[i], offset);
                        scaled[i] = _mm256_add_epi32(scaled[i], _mm256_mullo_epi32(centred, scale));
                    }
                }
                let d = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(block.d.as_ptr().add(half_rows * 8).cast())
                });
                for i in 0..M {
                    let value = _mm256_mul_ps(d, _mm256_cvtepi32_ps(scaled[i]));
                    acc[i][half_rows] =
                        _mm256_fmadd_ps(value, _mm256_set1_ps(acts[i][b].d), acc[i][half_rows]);
                }
            }
        }
        for i in 0..M {
            for half in 0..2 {
                unsafe { _mm256_storeu_ps(out[i].as_mut_ptr().add(half * 8), acc[i][half]) };
            }
        }
    }
}
