//! Q4_K weights against [`ActQ8K`] activations.
//!
//! A Q4_K super-block is 256 values in 8 sub-blocks of 32: value = `d·scale[s]·q − dmin·min[s]`
//! with 4-bit `q` and 6-bit `scale`/`min`. A tile block holds one super-block of 16 rows, kept as
//! compact as the file (4.6 bits a weight, against 4.5): the nibbles regrouped so that the low
//! nibbles of 4 bytes are 4 consecutive inputs of one row and the high nibbles the next 4
//! (`qs[g][row][j]` = inputs `8g + j` and `8g + 4 + j`), the 6-bit scales and minimums unpacked
//! to bytes `[sub-block][row]`, and `d`, `dmin` as f16. Per row and super-block the kernels
//! compute, exactly in integers, `Σ_s scale[s]·Σ q·a` and `Σ_s min[s]·Σ a`, then apply `d`,
//! `dmin` and the activation's scale in f32.

use super::activations::ActQ8K;
use super::{Isa, MAX_M, TILE, Tiles, f16_bits, f16_to_f32};

const SUPER: usize = 256;
const SUBS: usize = 8;
const BLOCK_BYTES: usize = 144;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileBlock {
    qs: [u8; SUPER / 2 * TILE],
    scales: [u8; SUBS * TILE],
    mins: [u8; SUBS * TILE],
    d: [u16; TILE],
    dmin: [u16; TILE],
}

pub struct Packed {
    tiles: Tiles<TileBlock>,
}

/// The 6-bit scale and minimum of sub-block `s` from a super-block's 12 packed bytes.
pub(super) fn scale_min(s: usize, packed: &[u8]) -> (u8, u8) {
    if s < 4 {
        (packed[s] & 63, packed[s + 4] & 63)
    } else {
        (
            (packed[s + 4] & 0x0F) | ((packed[s - 4] >> 6) << 4),
            (packed[s + 4] >> 4) | ((packed[s] >> 6) << 4),
        )
    }
}

impl Packed {
    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let empty = TileBlock {
            qs: [0; SUPER / 2 * TILE],
            scales: [0; SUBS * TILE],
            mins: [0; SUBS * TILE],
            d: [0; TILE],
            dmin: [0; TILE],
        };
        let tiles = Tiles::pack(
            bytes,
            rows,
            cols / SUPER,
            BLOCK_BYTES,
            empty,
            |raw, r, packed| {
                packed.d[r] = f16_bits(raw, 0);
                packed.dmin[r] = f16_bits(raw, 2);
                for s in 0..SUBS {
                    let (scale, min) = scale_min(s, &raw[4..16]);
                    packed.scales[s * TILE + r] = scale;
                    packed.mins[s * TILE + r] = min;
                }
                // In the file, 32 bytes hold 64 values: 32 in the low nibbles, the next 32 in
                // the high ones.
                let value = |k: usize| {
                    let byte = raw[16 + k / 64 * 32 + k % 32];
                    if k % 64 < 32 { byte & 0x0F } else { byte >> 4 }
                };
                for g in 0..SUPER / 8 {
                    for j in 0..4 {
                        packed.qs[(g * TILE + r) * 4 + j] =
                            value(8 * g + j) | (value(8 * g + 4 + j) << 4);
                    }
                }
                Some(())
            },
        )?;
        Some(Self { tiles })
    }
}

impl super::Packed for Packed {
    type Act = ActQ8K;

    fn tile(&self, isa: Isa, tile: usize, acts: &[&[ActQ8K]], out: &mut [[f32; TILE]; MAX_M]) {
        let blocks = self.tiles.tile(tile);
        dispatch_tile!(
            isa,
            acts.len(),
            M,
            x86::tile_avx512::<M>(blocks, acts, out),
            x86::tile_avx2::<M>(blocks, acts, out),
            tile_portable(blocks, acts, out)
        )
    }
}

/// `d·Σ scale·dot − dmin·Σ min·bsum`, times the activation's scale, added to `sum`: the one
/// float formula every tier uses, so that they agree to the bit.
#[inline(always)]
pub(super) fn accumulate(
    sum: f32,
    d: f32,
    dmin: f32,
    scaled: i32,
    mins: i32,
    activation: f32,
) -> f32 {
    d.mul_add(scaled as f32, -(dmin * mins as f32))
        .mul_add(activation, sum)
}

fn tile_portable(blocks: &[TileBlock], acts: &[&[ActQ8K]], out: &mut [[f32; TILE]; MAX_M]) {
    for (sums, act) in out.iter_mut().zip(acts) {
        *sums = [0.0; TILE];
        for (block, a) in blocks.iter().zip(act.iter()) {
            for (r, sum) in sums.iter_mut().enumerate() {
                let (mut scaled, mut mins) = (0i32, 0i32);
                for s in 0..SUBS {
                    let mut dot = 0i32;
                    for g in s * 4..s * 4 + 4 {
                        for j in 0..4 {
                            let byte = block.qs[(g * TILE + r) * 4 + j];
                            dot += i32::from(byte & 0x0F) * i32::from(a.qs[8 * g + j]);
                            dot += i32::from(byte >> 4) * i32::from(a.qs[8 * g + 4 + j]);
                        }
                    }
                    scaled += dot * i32::from(block.scales[s * TILE + r]);
                    let bsum = i32::from(a.bsums[2 * s]) + i32::from(a.bsums[2 * s + 1]);
                    mins += bsum * i32::from(block.mins[s * TILE + r]);
                }
                *sum = accumulate(
                    *sum,
                    f16_to_f32(block.d[r]),
                    f16_to_f32(block.dmin[r]),
                    scaled,
                    mins,
                    a.d,
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Indexing register arrays by a constant-bound loop is what unrolls into registers.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86_shared::{add_with_minimum, broadcast4, bsum_pair, eight_f16};

    use super::{ActQ8K, MAX_M, SUBS, TILE, TileBlock};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let mut scaled = [_mm512_setzero_si512(); M];
            let mut mins = [_mm512_setzero_si512(); M];
            for s in 0..SUBS {
                // Low and high nibbles feed two independent chains.
                let mut low = [_mm512_setzero_si512(); M];
                let mut high = [_mm512_setzero_si512(); M];
                for g in s * 4..s * 4 + 4 {
                    let w = unsafe { _mm512_loadu_si512(qs.add(g * 64).cast()) };
                    let w_low = _mm512_and_si512(w, nibble);
                    let w_high = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibble);
                    for i in 0..M {
                        let a = &acts[i][b].qs;
                        let a_low = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g) });
                        let a_high = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g + 4) });
                        low[i] = _mm512_dpbusd_epi32(low[i], w_low, a_low);
                        high[i] = _mm512_dpbusd_epi32(high[i], w_high, a_high);
                    }
                }
                let scale = unsafe { rows16_paired(&block.scales, s * TILE) };
                let min = unsafe { rows16_paired(&block.mins, s * TILE) };
                for i in 0..M {
                    // Each chain is 16 products of at most 15 · 128: it fits 16 bits, so the two
                    // share a lane as its halves and one dot product applies the scale to both.
                    let halves = _mm512_mask_blend_epi16(
                        0xAAAA_AAAA,
                        low[i],
                        _mm512_slli_epi32(high[i], 16),
                    );
                    scaled[i] = _mm512_dpwssd_epi32(scaled[i], halves, scale);
                    // The two 16-value block sums against the minimum in both halves.
                    let bsums = _mm512_set1_epi32(unsafe { bsum_pair(&acts[i][b], s) });
                    mins[i] = _mm512_dpwssd_epi32(mins[i], min, bsums);
                }
            }
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.d.as_ptr().cast()) });
            let dmin = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.dmin.as_ptr().cast()) });
            for i in 0..M {
                let combined = _mm512_fmsub_ps(
                    d,
                    _mm512_cvtepi32_ps(scaled[i]),
                    _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mins[i])),
                );
                acc[i] = _mm512_fmadd_ps(combined, _mm512_set1_ps(acts[i][b].d), acc[i]);
            }
        }
        for i in 0..M {
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
        }
    }

    /// The 16 bytes at `at` (16 rows' scales or minimums), each as both 16-bit halves of its
    /// row's lane.
    ///
    /// # Safety
    /// `at + 16 <= bytes.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows16_paired(bytes: &[u8], at: usize) -> __m512i {
        let values =
            _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().add(at).cast()) });
        _mm512_or_si512(values, _mm512_slli_epi32(values, 16))
    }

    /// For one or two activation rows (decoding): both 8-row halves of a tile in one pass, so
    /// that each activation broadcast serves 16 rows and each 64-byte line is read once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2_whole<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let pair = rows_into_pairs();
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let act: [&ActQ8K; M] = std::array::from_fn(|i| &acts[i][b]);
            let mut scaled = [[_mm256_setzero_si256(); 2]; M];
            for s in 0..SUBS {
                let mut pairs = [[_mm256_setzero_si256(); 2]; M];
                for g in s * 4..s * 4 + 4 {
                    let mut w_low = [_mm256_setzero_si256(); 2];
                    let mut w_high = [_mm256_setzero_si256(); 2];
                    for half in 0..2 {
                        let w = unsafe { _mm256_loadu_si256(qs.add(g * 64 + half * 32).cast()) };
                        w_low[half] = _mm256_and_si256(w, nibble);
                        w_high[half] = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);
                    }
                    for i in 0..M {
                        let a_low = _mm256_set1_epi32(unsafe { broadcast4(&act[i].qs, 8 * g) });
                        let a_high =
                            _mm256_set1_epi32(unsafe { broadcast4(&act[i].qs, 8 * g + 4) });
                        for half in 0..2 {
                            pairs[i][half] = _mm256_add_epi16(
                                pairs[i][half],
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(w_low[half], a_low),
                                    _mm256_maddubs_epi16(w_high[half], a_high),
                                ),
                            );
                        }
                    }
                }
                for half in 0..2 {
                    let scale = unsafe { rows8(pair, &block.scales, s * TILE + half * 8) };
                    for i in 0..M {
                        scaled[i][half] = _mm256_add_epi32(
                            scaled[i][half],
                            _mm256_madd_epi16(pairs[i][half], scale),
                        );
                    }
                }
            }
            for half in 0..2 {
                let mut mins = [_mm256_setzero_si256(); M];
                for s in 0..SUBS {
                    let min = unsafe { rows8(pair, &block.mins, s * TILE + half * 8) };
                    for i in 0..M {
                        let bsums = _mm256_set1_epi32(unsafe { bsum_pair(act[i], s) });
                        mins[i] = _mm256_add_epi32(mins[i], _mm256_madd_epi16(min, bsums));
                    }
                }
                let d = eight_f16(&block.d, half);
                let dmin = eight_f16(&block.dmin, half);
                for i in 0..M {
                    acc[i][half] =
                        add_with_minimum(acc[i][half], d, dmin, scaled[i][half], mins[i], act[i].d);
                }
            }
        }
        for i in 0..M {
            for half in 0..2 {
                unsafe { _mm256_storeu_ps(out[i].as_mut_ptr().add(half * 8), acc[i][half]) };
            }
        }
    }

    /// The shuffle for [`rows8`]: byte r of 8 broadcast bytes into both 16-bit halves of lane r.
    #[target_feature(enable = "avx2")]
    fn rows_into_pairs() -> __m256i {
        _mm256_setr_epi8(
            0, -128, 0, -128, 1, -128, 1, -128, 2, -128, 2, -128, 3, -128, 3, -128, 4, -128, 4,
            -128, 5, -128, 5, -128, 6, -128, 6, -128, 7, -128, 7, -128,
        )
    }

    /// The 8 bytes at `at` (8 rows' scales or minimums), each as both 16-bit halves of its row's
    /// lane, so that one `pmaddwd` both adds a row's pair of 16-bit sums and applies them.
    ///
    /// # Safety
    /// `at + 8 <= bytes.len()`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rows8(pair: __m256i, bytes: &[u8], at: usize) -> __m256i {
        let eight = unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(at).cast::<i64>()) };
        _mm256_shuffle_epi8(_mm256_set1_epi64x(eight), pair)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        if M <= 2 {
            return unsafe { tile_avx2_whole::<M>(blocks, acts, out) };
        }
        let nibble = _mm256_set1_epi8(0x0F);
        let pair = rows_into_pairs();
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let act: [&ActQ8K; M] = std::array::from_fn(|i| &acts[i][b]);
            for half in 0..2 {
                let mut scaled = [_mm256_setzero_si256(); M];
                let mut mins = [_mm256_setzero_si256(); M];
                for s in 0..SUBS {
                    // 16-bit sums of one sub-block: at most 4 · 2 · 2 · 15 · 127 < 2^15.
                    let mut pairs = [_mm256_setzero_si256(); M];
                    for g in s * 4..s * 4 + 4 {
                        let w = unsafe { _mm256_loadu_si256(qs.add(g * 64 + half * 32).cast()) };
                        let w_low = _mm256_and_si256(w, nibble);
                        let w_high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble);
                        for i in 0..M {
                            let a = &act[i].qs;
                            let a_low = _mm256_set1_epi32(unsafe { broadcast4(a, 8 * g) });
                            let a_high = _mm256_set1_epi32(unsafe { broadcast4(a, 8 * g + 4) });
                            pairs[i] = _mm256_add_epi16(
                                pairs[i],
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(w_low, a_low),
                                    _mm256_maddubs_epi16(w_high, a_high),
                                ),
                            );
                        }
                    }
                    let scale = unsafe { rows8(pair, &block.scales, s * TILE + half * 8) };
                    let min = unsafe { rows8(pair, &block.mins, s * TILE + half * 8) };
                    for i in 0..M {
                        scaled[i] = _mm256_add_epi32(scaled[i], _mm256_madd_epi16(pairs[i], scale));
                        // The two 16-value block sums against the minimum in both halves.
                        let bsums = _mm256_set1_epi32(unsafe { bsum_pair(act[i], s) });
                        mins[i] = _mm256_add_epi32(mins[i], _mm256_madd_epi16(min, bsums));
                    }
                }
                let d = eight_f16(&block.d, half);
                let dmin = eight_f16(&block.dmin, half);
                for i in 0..M {
                    acc[i][half] =
                        add_with_minimum(acc[i][half], d, dmin, scaled[i], mins[i], act[i].d);
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
