//! Q6_K weights against [`ActQ8K`] activations.
//!
//! A Q6_K super-block is 256 values in 16 sub-blocks of 16: value = `d·scale[s]·(q − 32)` with
//! 6-bit `q` and signed 8-bit scales.
//!
//! A tile block holds one super-block of 16 rows in the order the kernels read it, so that
//! decoding streams each block front to back (two interleaved streams, as a low-nibble and a
//! high-bit array would be, left the hardware prefetchers at a third of the read bandwidth):
//! first the scales and `d`, then per sub-block three 64-byte *planes*. A sub-block's values are
//! four `vpdpbusd` operands of 16 rows × 4 inputs (operand `v`: inputs `16s + 4v..+4`, byte
//! `4·row + j`); plane `k` holds operand `k`'s 6-bit values in bits 0–5 and bits `2k, 2k + 1` of
//! operand 3's in bits 6–7. So operands 0–2 are one AND each, and operand 3 is gathered by three
//! masked shifts (6 instructions for 4 operands, against 13 for nibbles plus a 2-bit array),
//! at the file's 6.56 bits a weight (6.63 with the block's padding).
//!
//! Per row and super-block the kernels compute, exactly in integers,
//! `Σ_s scale[s]·Σ q·a − 32·Σ_s scale[s]·bsum[s]` (the offset through the activations' sums of
//! 16), then apply `d` and the activation's scale in f32. The scales are stored in pairs of
//! sub-blocks (`scales[p][row]` = sub-blocks `2p`, `2p + 1`), so one `vpmaddwd`/`vpdpwssd`
//! applies the offset of two sub-blocks and, on AVX2, one `pmaddwd` applies a scale to a row's
//! 16-bit sums.

use super::activations::ActQ8K;
use super::{Isa, MAX_M, TILE, Tiles, f16_bits, f16_to_f32};

const SUPER: usize = 256;
const SUBS: usize = 16;
const BLOCK_BYTES: usize = 210;
/// Bytes of one operand: 16 rows × 4 inputs.
const OPERAND: usize = 4 * TILE;
/// Bytes of one sub-block: three planes.
const PLANES: usize = 3 * OPERAND;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileBlock {
    /// `[pair p][row][2]`: the scales of sub-blocks `2p` and `2p + 1`.
    scales: [i8; SUBS * TILE],
    d: [u16; TILE],
    /// Keeps the planes on cache-line boundaries.
    _pad: [u8; 32],
    /// `[sub-block][plane][row][j]`.
    planes: [u8; SUBS * PLANES],
}

pub struct Packed {
    tiles: Tiles<TileBlock>,
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

impl TileBlock {
    /// Where the scale of sub-block `s` of row `r` is.
    fn scale_at(s: usize, r: usize) -> usize {
        s / 2 * 2 * TILE + 2 * r + s % 2
    }

    /// Where byte `j` of row `r` of plane `k` of sub-block `s` is.
    fn plane_at(s: usize, k: usize, r: usize, j: usize) -> usize {
        s * PLANES + k * OPERAND + 4 * r + j
    }

    /// The planes' bytes `j` of row `r` of sub-block `s`, from its 4 operands' values `q`.
    fn set_values(&mut self, s: usize, r: usize, j: usize, q: [u8; 4]) {
        for k in 0..3 {
            self.planes[Self::plane_at(s, k, r, j)] = q[k] | (((q[3] >> (2 * k)) & 3) << 6);
        }
    }

    /// The 6-bit value of input `16s + 4v + j` of row `r`.
    fn value(&self, s: usize, v: usize, r: usize, j: usize) -> u8 {
        let plane = |k| self.planes[Self::plane_at(s, k, r, j)];
        if v < 3 {
            plane(v) & 0x3F
        } else {
            (0..3).fold(0, |q, k| q | ((plane(k) >> 6) << (2 * k)))
        }
    }
}

impl Packed {
    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let empty = TileBlock {
            scales: [0; SUBS * TILE],
            d: [0; TILE],
            _pad: [0; 32],
            planes: [0; SUBS * PLANES],
        };
        let tiles = Tiles::pack(
            bytes,
            rows,
            cols / SUPER,
            BLOCK_BYTES,
            empty,
            |raw, r, packed| {
                packed.d[r] = f16_bits(raw, 208);
                for s in 0..SUBS {
                    packed.scales[TileBlock::scale_at(s, r)] = raw[192 + s] as i8;
                    for j in 0..4 {
                        let q = std::array::from_fn(|v| raw_value(raw, 16 * s + 4 * v + j));
                        packed.set_values(s, r, j, q);
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

fn tile_portable(blocks: &[TileBlock], acts: &[&[ActQ8K]], out: &mut [[f32; TILE]; MAX_M]) {
    for (sums, act) in out.iter_mut().zip(acts) {
        *sums = [0.0; TILE];
        for (block, a) in blocks.iter().zip(act.iter()) {
            for (r, sum) in sums.iter_mut().enumerate() {
                let mut scaled = 0i32;
                for s in 0..SUBS {
                    let mut dot = 0i32;
                    for v in 0..4 {
                        for j in 0..4 {
                            let q = block.value(s, v, r, j);
                            dot += i32::from(q) * i32::from(a.qs[16 * s + 4 * v + j]);
                        }
                    }
                    let centred = dot - 32 * i32::from(a.bsums[s]);
                    scaled += centred * i32::from(block.scales[TileBlock::scale_at(s, r)]);
                }
                *sum = (f16_to_f32(block.d[r]) * scaled as f32).mul_add(a.d, *sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_keep_every_value() {
        let mut block = TileBlock {
            scales: [0; SUBS * TILE],
            d: [0; TILE],
            _pad: [0; 32],
            planes: [0; SUBS * PLANES],
        };
        // Every value of each operand, beside the others' values counted the other way.
        for v in 0..4 {
            for q in 0..64u8 {
                let mut values = [63 - q; 4];
                values[v] = q;
                block.set_values(5, 7, 2, values);
                for (w, &expected) in values.iter().enumerate() {
                    assert_eq!(
                        block.value(5, w, 7, 2),
                        expected,
                        "operand {w} of {values:?}"
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Indexing register arrays by a constant-bound loop is what unrolls into registers.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86_shared::{broadcast4, bsum_pair};

    use super::{ActQ8K, MAX_M, OPERAND, PLANES, SUBS, TILE, TileBlock};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let low6 = _mm512_set1_epi8(0x3F);
        let top2 = _mm512_set1_epi8(-64); // 0xC0
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let mut scaled = [zero; M];
            for p in 0..SUBS / 2 {
                // 16-bit (scale[2p], scale[2p + 1]) in the 32-bit lane of each row.
                let pair = _mm512_cvtepi8_epi16(unsafe {
                    _mm256_loadu_si256(block.scales.as_ptr().add(p * 2 * TILE).cast())
                });
                // −32·Σ scale·bsum of both sub-blocks: |32·scale| ≤ 4096 fits 16 bits.
                let offset = _mm512_sub_epi16(zero, _mm512_slli_epi16::<5>(pair));
                for i in 0..M {
                    let bsums = _mm512_set1_epi32(unsafe { bsum_pair(&acts[i][b], p) });
                    scaled[i] = _mm512_dpwssd_epi32(scaled[i], offset, bsums);
                }
                let scales = [
                    _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pair)),
                    _mm512_srai_epi32::<16>(pair),
                ];
                for (e, scale) in scales.into_iter().enumerate() {
                    let s = 2 * p + e;
                    let at = unsafe { block.planes.as_ptr().add(s * PLANES) };
                    let mut planes = [zero; 3];
                    for k in 0..3 {
                        planes[k] = unsafe { _mm512_loadu_si512(at.add(k * OPERAND).cast()) };
                    }
                    // Operand 3: plane k's top two bits are its bits 2k, 2k + 1, moved down two bits
                    // at a time (masked first, so the 16-bit shifts bring in only zeros); 0xF8 is
                    // A | B & C.
                    let mut top = _mm512_and_si512(planes[0], top2);
                    for k in [1, 2] {
                        top = _mm512_ternarylogic_epi32::<0xF8>(
                            _mm512_srli_epi16::<2>(top),
                            planes[k],
                            top2,
                        );
                    }
                    let operands = [
                        _mm512_and_si512(planes[0], low6),
                        _mm512_and_si512(planes[1], low6),
                        _mm512_and_si512(planes[2], low6),
                        _mm512_srli_epi16::<2>(top),
                    ];
                    for i in 0..M {
                        let a = &acts[i][b].qs;
                        let mut dot = zero;
                        for (v, operand) in operands.iter().enumerate() {
                            let a4 = _mm512_set1_epi32(unsafe { broadcast4(a, 16 * s + 4 * v) });
                            dot = _mm512_dpbusd_epi32(dot, *operand, a4);
                        }
                        scaled[i] = _mm512_add_epi32(scaled[i], _mm512_mullo_epi32(dot, scale));
                    }
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
        let low6 = _mm256_set1_epi8(0x3F);
        let top2 = _mm256_set1_epi8(-64); // 0xC0
        let zero = _mm256_setzero_si256();
        // Each row's 16-bit scale of the even (odd) sub-block in both halves of its lane.
        let even = _mm256_setr_epi8(
            0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9,
            12, 13, 12, 13,
        );
        let odd = _mm256_add_epi8(even, _mm256_set1_epi8(2));
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            for half in 0..2 {
                let mut scaled = [zero; M];
                for p in 0..SUBS / 2 {
                    let pair = _mm256_cvtepi8_epi16(unsafe {
                        _mm_loadu_si128(block.scales.as_ptr().add(p * 2 * TILE + half * 16).cast())
                    });
                    let offset = _mm256_sub_epi16(zero, _mm256_slli_epi16::<5>(pair));
                    for i in 0..M {
                        let bsums = _mm256_set1_epi32(unsafe { bsum_pair(&acts[i][b], p) });
                        scaled[i] = _mm256_add_epi32(scaled[i], _mm256_madd_epi16(offset, bsums));
                    }
                    let scales = [
                        _mm256_shuffle_epi8(pair, even),
                        _mm256_shuffle_epi8(pair, odd),
                    ];
                    for (e, scale) in scales.into_iter().enumerate() {
                        let s = 2 * p + e;
                        let at = unsafe { block.planes.as_ptr().add(s * PLANES + half * 32) };
                        let mut planes = [zero; 3];
                        for k in 0..3 {
                            planes[k] = unsafe { _mm256_loadu_si256(at.add(k * OPERAND).cast()) };
                        }
                        let mut top = _mm256_and_si256(planes[0], top2);
                        for k in [1, 2] {
                            top = _mm256_or_si256(
                                _mm256_srli_epi16::<2>(top),
                                _mm256_and_si256(planes[k], top2),
                            );
                        }
                        let operands = [
                            _mm256_and_si256(planes[0], low6),
                            _mm256_and_si256(planes[1], low6),
                            _mm256_and_si256(planes[2], low6),
                            _mm256_srli_epi16::<2>(top),
                        ];
                        for i in 0..M {
                            let a = &acts[i][b].qs;
                            let mut a4 = [zero; 4];
                            for v in 0..4 {
                                a4[v] = _mm256_set1_epi32(unsafe { broadcast4(a, 16 * s + 4 * v) });
                            }
                            // 16-bit sums of two operands: 2 · 2 · 63 · 127 < 2^15.
                            let sums = [
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(operands[0], a4[0]),
                                    _mm256_maddubs_epi16(operands[1], a4[1]),
                                ),
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(operands[2], a4[2]),
                                    _mm256_maddubs_epi16(operands[3], a4[3]),
                                ),
                            ];
                            scaled[i] = _mm256_add_epi32(
                                scaled[i],
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(sums[0], scale),
                                    _mm256_madd_epi16(sums[1], scale),
                                ),
                            );
                        }
                    }
                }
                let d = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(block.d.as_ptr().add(half * 8).cast())
                });
                for i in 0..M {
                    let value = _mm256_mul_ps(d, _mm256_cvtepi32_ps(scaled[i]));
                    acc[i][half] =
                        _mm256_fmadd_ps(value, _mm256_set1_ps(acts[i][b].d), acc[i][half]);
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
