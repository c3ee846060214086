//! Q5_K weights against [`ActQ8K`] activations.
//!
//! A Q5_K super-block is Q4_K's with a fifth bit a value: 256 values in 8 sub-blocks of 32,
//! value = `d·scale[s]·q − dmin·min[s]` with 5-bit `q` (in the file: `d`, `dmin`, the 12 bytes of
//! 6-bit scales and minimums packed as in Q4_K, 32 bytes `qh` where bit `i` of `qh[l]` is the
//! fifth bit of value `32i + l`, and the nibbles laid out as in Q4_K).
//!
//! A tile block holds one super-block of 16 rows in the order the kernels read it, so that
//! decoding streams each block front to back (two interleaved streams, as a nibble array and a
//! fifth-bit array would be, left the hardware prefetchers at a third of the read bandwidth):
//! first the scales and minimums unpacked to byte pairs (`scale_min[s][row]`), `d` and `dmin` as
//! f16, then per sub-block five 64-byte *planes*. A sub-block's values are eight `vpdpbusd`
//! operands of 16 rows × 4 inputs (operand `v`: inputs `32s + 4v..+4`, byte `4·row + j`); plane
//! `k` holds operand `k`'s 5-bit values in bits 0–4, and its bits 5–7 hold three bits of one of
//! the other three operands:
//!
//! | plane   | 0         | 1                   | 2         | 3         | 4                   |
//! |---------|-----------|---------------------|-----------|-----------|---------------------|
//! | bits 5–7| op 5, 0–2 | op 5, 3–4; op 6, 3  | op 6, 0–2 | op 7, 0–2 | op 7, 3–4; op 6, 4  |
//!
//! so operands 0–4 are one AND each and the others a few masked shifts (19 instructions for 8
//! operands, against 36 for nibbles plus a fifth-bit plane), at 5.63 bits a weight, against 5.5
//! in the file.
//!
//! Per row and super-block the kernels compute, exactly in integers, `Σ_s scale[s]·Σ q·a` and
//! `Σ_s min[s]·Σ a`, then apply `d`, `dmin` and the activation's scale in f32 with Q4_K's formula.

use super::activations::ActQ8K;
use super::q4k::{accumulate, scale_min};
use super::{Isa, MAX_M, TILE, Tiles, f16_bits, f16_to_f32};

const SUPER: usize = 256;
const SUBS: usize = 8;
const BLOCK_BYTES: usize = 176;
/// Bytes of one operand: 16 rows × 4 inputs.
const OPERAND: usize = 4 * TILE;
/// Bytes of one sub-block: five planes.
const PLANES: usize = 5 * OPERAND;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileBlock {
    /// `[sub-block][row][2]`: scale, minimum.
    scale_min: [u8; SUBS * TILE * 2],
    d: [u16; TILE],
    dmin: [u16; TILE],
    /// `[sub-block][plane][row][j]`.
    planes: [u8; SUBS * PLANES],
}

pub struct Packed {
    tiles: Tiles<TileBlock>,
}

impl TileBlock {
    /// Where byte `j` of row `r` of plane `k` of sub-block `s` is.
    fn plane_at(s: usize, k: usize, r: usize, j: usize) -> usize {
        s * PLANES + k * OPERAND + 4 * r + j
    }

    /// The 5-bit value of input `32s + 4v + j` of row `r`.
    fn value(&self, s: usize, v: usize, r: usize, j: usize) -> u8 {
        let plane = |k| self.planes[Self::plane_at(s, k, r, j)];
        match v {
            0..=4 => plane(v) & 0x1F,
            5 => (plane(0) >> 5) | (((plane(1) >> 5) & 3) << 3),
            6 => (plane(2) >> 5) | ((plane(1) >> 7) << 3) | ((plane(4) >> 7) << 4),
            _ => (plane(3) >> 5) | (((plane(4) >> 5) & 3) << 3),
        }
    }

    /// The planes' bytes `j` of row `r` of sub-block `s`, from its 8 operands' values `q`.
    fn set_values(&mut self, s: usize, r: usize, j: usize, q: [u8; 8]) {
        let spare = [
            q[5] & 7,
            (q[5] >> 3) | (((q[6] >> 3) & 1) << 2),
            q[6] & 7,
            q[7] & 7,
            (q[7] >> 3) | ((q[6] >> 4) << 2),
        ];
        for (k, spare) in spare.into_iter().enumerate() {
            self.planes[Self::plane_at(s, k, r, j)] = q[k] | (spare << 5);
        }
    }
}

impl Packed {
    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let empty = TileBlock {
            scale_min: [0; SUBS * TILE * 2],
            d: [0; TILE],
            dmin: [0; TILE],
            planes: [0; SUBS * PLANES],
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
                let (qh, qs) = (&raw[16..48], &raw[48..]);
                // 32 bytes hold 64 values: 32 in the low nibbles, the next 32 in the high ones.
                let value = |k: usize| {
                    let byte = qs[k / 64 * 32 + k % 32];
                    let nibble = if k % 64 < 32 { byte & 0x0F } else { byte >> 4 };
                    nibble | (((qh[k % 32] >> (k / 32)) & 1) << 4)
                };
                for s in 0..SUBS {
                    let (scale, min) = scale_min(s, &raw[4..16]);
                    packed.scale_min[(s * TILE + r) * 2] = scale;
                    packed.scale_min[(s * TILE + r) * 2 + 1] = min;
                    for j in 0..4 {
                        let q = std::array::from_fn(|v| value(32 * s + 4 * v + j));
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
                let (mut scaled, mut mins) = (0i32, 0i32);
                for s in 0..SUBS {
                    let mut dot = 0i32;
                    for v in 0..8 {
                        for j in 0..4 {
                            let q = block.value(s, v, r, j);
                            dot += i32::from(q) * i32::from(a.qs[32 * s + 4 * v + j]);
                        }
                    }
                    let at = (s * TILE + r) * 2;
                    scaled += dot * i32::from(block.scale_min[at]);
                    let bsum = i32::from(a.bsums[2 * s]) + i32::from(a.bsums[2 * s + 1]);
                    mins += bsum * i32::from(block.scale_min[at + 1]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_keep_every_value() {
        let mut block = TileBlock {
            scale_min: [0; SUBS * TILE * 2],
            d: [0; TILE],
            dmin: [0; TILE],
            planes: [0; SUBS * PLANES],
        };
        // Every value of each operand, beside the others' values counted the other way.
        for v in 0..8 {
            for q in 0..32u8 {
                let mut values = [31 - q; 8];
                values[v] = q;
                block.set_values(3, 11, 1, values);
                for (w, &expected) in values.iter().enumerate() {
                    assert_eq!(
                        block.value(3, w, 11, 1),
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

    use super::super::x86_shared::{add_with_minimum, broadcast4, bsum_pair, eight_f16};

    use super::{ActQ8K, MAX_M, OPERAND, PLANES, SUBS, TILE, TileBlock};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let zero = _mm512_setzero_si512();
        let low5 = _mm512_set1_epi8(0x1F);
        let top3 = _mm512_set1_epi8(-32); // 0xE0
        let bits34 = _mm512_set1_epi8(0x18);
        let bit3 = _mm512_set1_epi8(0x08);
        let bit4 = _mm512_set1_epi8(0x10);
        let low16 = _mm512_set1_epi32(0xFFFF);
        // Each row's 16-bit minimum in both halves of its lane.
        let min_pair = _mm512_broadcast_i32x4(_mm_setr_epi8(
            2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15,
        ));
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let mut scaled = [zero; M];
            let mut mins = [zero; M];
            for s in 0..SUBS {
                // 16-bit (scale, min) in the 32-bit lane of each row.
                let scale_min = _mm512_cvtepu8_epi16(unsafe {
                    _mm256_loadu_si256(block.scale_min.as_ptr().add(s * 2 * TILE).cast())
                });
                let scale = _mm512_and_si512(scale_min, low16);
                let min = _mm512_shuffle_epi8(scale_min, min_pair);
                let at = unsafe { block.planes.as_ptr().add(s * PLANES) };
                let mut planes = [zero; 5];
                for k in 0..5 {
                    planes[k] = unsafe { _mm512_loadu_si512(at.add(k * OPERAND).cast()) };
                }
                // The spare top bits, masked before a 16-bit shift so that only zeros come in
                // from the next byte, or shifted before a mask that drops them; 0xF8 is A | B & C.
                let mut high = [zero; 5];
                for k in [0, 2, 3] {
                    high[k] = _mm512_srli_epi16::<5>(_mm512_and_si512(planes[k], top3));
                }
                let op5 = _mm512_ternarylogic_epi32::<0xF8>(
                    high[0],
                    _mm512_srli_epi16::<2>(planes[1]),
                    bits34,
                );
                let op6 = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_ternarylogic_epi32::<0xF8>(
                        high[2],
                        _mm512_srli_epi16::<4>(planes[1]),
                        bit3,
                    ),
                    _mm512_srli_epi16::<3>(planes[4]),
                    bit4,
                );
                let op7 = _mm512_ternarylogic_epi32::<0xF8>(
                    high[3],
                    _mm512_srli_epi16::<2>(planes[4]),
                    bits34,
                );
                let operands = [
                    _mm512_and_si512(planes[0], low5),
                    _mm512_and_si512(planes[1], low5),
                    _mm512_and_si512(planes[2], low5),
                    _mm512_and_si512(planes[3], low5),
                    _mm512_and_si512(planes[4], low5),
                    op5,
                    op6,
                    op7,
                ];
                for i in 0..M {
                    let a = &acts[i][b].qs;
                    // Two chains of four, so that M = 1 is not latency-bound.
                    let mut dots = [zero; 2];
                    for (v, operand) in operands.iter().enumerate() {
                        let a4 = _mm512_set1_epi32(unsafe { broadcast4(a, 32 * s + 4 * v) });
                        dots[v / 4] = _mm512_dpbusd_epi32(dots[v / 4], *operand, a4);
                    }
                    let dot = _mm512_add_epi32(dots[0], dots[1]);
                    scaled[i] = _mm512_add_epi32(scaled[i], _mm512_mullo_epi32(dot, scale));
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

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8K]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let zero = _mm256_setzero_si256();
        let low5 = _mm256_set1_epi8(0x1F);
        let top3 = _mm256_set1_epi8(-32); // 0xE0
        let bit3 = _mm256_set1_epi8(0x08);
        let bit4 = _mm256_set1_epi8(0x10);
        let bits56 = _mm256_set1_epi8(0x60);
        // Each row's 16-bit scale (minimum) in both halves of its lane.
        let scale_pair = _mm256_setr_epi8(
            0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9,
            12, 13, 12, 13,
        );
        let min_pair = _mm256_add_epi8(scale_pair, _mm256_set1_epi8(2));
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            for half in 0..2 {
                let mut scaled = [zero; M];
                let mut mins = [zero; M];
                for s in 0..SUBS {
                    let scale_min = _mm256_cvtepu8_epi16(unsafe {
                        _mm_loadu_si128(
                            block
                                .scale_min
                                .as_ptr()
                                .add(s * 2 * TILE + half * 16)
                                .cast(),
                        )
                    });
                    let scale = _mm256_shuffle_epi8(scale_min, scale_pair);
                    let min = _mm256_shuffle_epi8(scale_min, min_pair);
                    let at = unsafe { block.planes.as_ptr().add(s * PLANES + half * 32) };
                    let mut planes = [zero; 5];
                    for k in 0..5 {
                        planes[k] = unsafe { _mm256_loadu_si256(at.add(k * OPERAND).cast()) };
                    }
                    // As in the AVX-512 kernel, with an AND and an OR for each ternary logic.
                    let mut high = [zero; 5];
                    for k in [0, 2, 3] {
                        high[k] = _mm256_srli_epi16::<5>(_mm256_and_si256(planes[k], top3));
                    }
                    let op5 = _mm256_or_si256(
                        high[0],
                        _mm256_srli_epi16::<2>(_mm256_and_si256(planes[1], bits56)),
                    );
                    let op6 = _mm256_or_si256(
                        _mm256_or_si256(
                            high[2],
                            _mm256_and_si256(_mm256_srli_epi16::<4>(planes[1]), bit3),
                        ),
                        _mm256_and_si256(_mm256_srli_epi16::<3>(planes[4]), bit4),
                    );
                    let op7 = _mm256_or_si256(
                        high[3],
                        _mm256_srli_epi16::<2>(_mm256_and_si256(planes[4], bits56)),
                    );
                    let operands = [
                        _mm256_and_si256(planes[0], low5),
                        _mm256_and_si256(planes[1], low5),
                        _mm256_and_si256(planes[2], low5),
                        _mm256_and_si256(planes[3], low5),
                        _mm256_and_si256(planes[4], low5),
                        op5,
                        op6,
                        op7,
                    ];
                    for i in 0..M {
                        let a = &acts[i][b].qs;
                        // 16-bit sums of four operands: 4 · 2 · 31 · 127 < 2^15.
                        let mut sums = [zero; 2];
                        for (v, operand) in operands.iter().enumerate() {
                            let a4 = _mm256_set1_epi32(unsafe { broadcast4(a, 32 * s + 4 * v) });
                            sums[v / 4] =
                                _mm256_add_epi16(sums[v / 4], _mm256_maddubs_epi16(*operand, a4));
                        }
                        scaled[i] = _mm256_add_epi32(
                            scaled[i],
                            _mm256_add_epi32(
                                _mm256_madd_epi16(sums[0], scale),
                                _mm256_madd_epi16(sums[1], scale),
                            ),
                        );
                        let bsums = _mm256_set1_epi32(unsafe { bsum_pair(&acts[i][b], s) });
                        mins[i] = _mm256_add_epi32(mins[i], _mm256_madd_epi16(min, bsums));
                    }
                }
                let d = eight_f16(&block.d, half);
                let dmin = eight_f16(&block.dmin, half);
                for i in 0..M {
                    acc[i][half] =
                        add_with_minimum(acc[i][half], d, dmin, scaled[i], mins[i], acts[i][b].d);
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
