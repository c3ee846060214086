//! Q8_0 weights (blocks of 32 signed bytes and an f16 scale) against [`ActQ8_0`] activations.
//!
//! A tile block holds 32 inputs of 16 rows: the scales, then the bytes as `w + 128` (unsigned, as
//! `vpdpbusd` wants them) grouped four inputs at a time: `qs[g][row][j]` = input `4g + j`.
//! `Σ (w + 128)·a = Σ w·a + 128·Σ a`, and `Σ a` comes with the activation block.

use super::activations::ActQ8_0;
use super::{Isa, MAX_M, TILE, Tiles, f16_bits, f16_to_f32};

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 34;

#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct TileBlock {
    qs: [u8; BLOCK * TILE],
    d: [u16; TILE],
}

pub struct Packed {
    tiles: Tiles<TileBlock>,
}

impl Packed {
    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let empty = TileBlock {
            qs: [128; BLOCK * TILE],
            d: [0; TILE],
        };
        let tiles = Tiles::pack(
            bytes,
            rows,
            cols / BLOCK,
            BLOCK_BYTES,
            empty,
            |raw, r, packed| {
                packed.d[r] = f16_bits(raw, 0);
                for (k, &q) in raw.get(2..2 + BLOCK)?.iter().enumerate() {
                    packed.qs[(k / 4 * TILE + r) * 4 + k % 4] = (q as i8 as i16 + 128) as u8;
                }
                Some(())
            },
        )?;
        Some(Self { tiles })
    }

    /// Where the tiles lie in memory.
    #[cfg(test)]
    pub(super) fn address(&self) -> usize {
        self.tiles.blocks.as_ptr() as usize
    }
}

impl super::Packed for Packed {
    type Act = ActQ8_0;

    fn tile(&self, isa: Isa, tile: usize, acts: &[&[ActQ8_0]], out: &mut [[f32; TILE]; MAX_M]) {
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

fn tile_portable(blocks: &[TileBlock], acts: &[&[ActQ8_0]], out: &mut [[f32; TILE]; MAX_M]) {
    for (sums, act) in out.iter_mut().zip(acts) {
        *sums = [0.0; TILE];
        for (block, a) in blocks.iter().zip(act.iter()) {
            for (r, sum) in sums.iter_mut().enumerate() {
                let mut dot = 0i32;
                for k in 0..BLOCK {
                    let w = i32::from(block.qs[(k / 4 * TILE + r) * 4 + k % 4]) - 128;
                    dot += w * i32::from(a.qs[k]);
                }
                let scale = f16_to_f32(block.d[r]) * a.d;
                *sum = (dot as f32).mul_add(scale, *sum);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Indexing register arrays by a constant-bound loop is what unrolls into registers.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86_shared::broadcast4;

    use super::{ActQ8_0, BLOCK, MAX_M, TILE, TileBlock};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8_0]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            // Two chains of dot products, so that decoding (M = 1) is not latency-bound.
            let mut even = [_mm512_setzero_si512(); M];
            let mut odd = [_mm512_setzero_si512(); M];
            for g in (0..BLOCK / 4).step_by(2) {
                let w0 = unsafe { _mm512_loadu_si512(qs.add(g * 64).cast()) };
                let w1 = unsafe { _mm512_loadu_si512(qs.add(g * 64 + 64).cast()) };
                for i in 0..M {
                    let a = &acts[i][b].qs;
                    let a0 = _mm512_set1_epi32(unsafe { broadcast4(a, g * 4) });
                    let a1 = _mm512_set1_epi32(unsafe { broadcast4(a, g * 4 + 4) });
                    even[i] = _mm512_dpbusd_epi32(even[i], w0, a0);
                    odd[i] = _mm512_dpbusd_epi32(odd[i], w1, a1);
                }
            }
            let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.d.as_ptr().cast()) });
            for i in 0..M {
                let a = &acts[i][b];
                let dot = _mm512_sub_epi32(
                    _mm512_add_epi32(even[i], odd[i]),
                    _mm512_set1_epi32(128 * a.sum),
                );
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[i]);
            }
        }
        for i in 0..M {
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const M: usize>(
        blocks: &[TileBlock],
        acts: &[&[ActQ8_0]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let ones = _mm256_set1_epi16(1);
        let offset = _mm256_set1_epi8(-128);
        // Rows 0..8 and 8..16 of the tile, one register each.
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let mut dots = [[_mm256_setzero_si256(); 2]; M];
            for g in 0..BLOCK / 4 {
                for half in 0..2 {
                    let stored = unsafe { _mm256_loadu_si256(qs.add(g * 64 + half * 32).cast()) };
                    // Back to signed bytes; pmaddubsw wants an unsigned operand, so the sign
                    // moves onto the activation.
                    let w = _mm256_xor_si256(stored, offset);
                    let magnitude = _mm256_abs_epi8(w);
                    for i in 0..M {
                        let a = _mm256_set1_epi32(unsafe { broadcast4(&acts[i][b].qs, g * 4) });
                        let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(a, w));
                        dots[i][half] =
                            _mm256_add_epi32(dots[i][half], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for half in 0..2 {
                let dw = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(block.d.as_ptr().add(half * 8).cast())
                });
                for i in 0..M {
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(acts[i][b].d));
                    acc[i][half] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[i][half]), scale, acc[i][half]);
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
