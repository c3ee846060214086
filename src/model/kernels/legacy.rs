//! ggml's 32-value "legacy" formats against [`ActQ8_0`] activations, in one generic kernel:
//!
//! | type | file block                     | value             | here            |
//! |------|--------------------------------|-------------------|-----------------|
//! | Q4_0 | d, 16 nibble bytes (18 B)      | `(q − 8)·d`       | [`Q4_0`], 4.5 b |
//! | Q4_1 | d, m, nibbles (20 B)           | `q·d + m`         | [`Q4_1`], 5 b   |
//! | Q5_0 | d, qh (4 B), nibbles (22 B)    | `(q − 16)·d`      | [`Q5_0`], 5.5 b |
//! | Q5_1 | d, m, qh, nibbles (24 B)       | `q·d + m`         | [`Q5_1`], 6 b   |
//!
//! (`q` is the nibble, or for Q5 the nibble with bit `i` of `qh` as its fifth bit; in the file the
//! low nibbles of the 16 bytes are values 0..16, the high ones 16..32.)
//!
//! A tile block holds 32 inputs of 16 rows, as compact as the file (the bits a weight above):
//! the nibbles regrouped as in Q4_K, so that the low nibbles of 4 bytes are 4 consecutive inputs
//! of one row and the high nibbles the next 4 (`qs[g][row][j]` = inputs `8g + j` and
//! `8g + 4 + j`), so that one 64-byte load is two `vpdpbusd` operands of 16 rows × 4 inputs.
//!
//! The Q5 fifth bits are kept packed too, as a *bit plane* of 64 bytes that lines up with those
//! loads: bit `v` of `qh[p]` is the fifth bit of byte `p` of operand `v` (`v = 2g` for the low
//! nibbles of group `g`, `2g + 1` for the high ones). One shift and one mask move an operand's
//! bits to bit 4 of every byte, and an OR makes the 5-bit values (0..31) — two or three
//! instructions an operand, against 8 bits a weight of memory traffic if the values were stored
//! unpacked (55% more than the file's 5.5 for Q5_0), which is what decoding is bound by.
//!
//! The values stay unsigned (as `vpdpbusd` and `pmaddubsw` want them) and the kernels compute,
//! exactly in integers, `Σ q·a` per row and block; the offset is applied through the
//! activation block's `Σ a`: `Σ (q − 8)·a = Σ q·a − 8·Σ a` (Q4_0, 16 for Q5_0), and for the
//! formats with a minimum, `Σ (q·d + m)·a = d·Σ q·a + m·Σ a`, in f32.

use super::activations::ActQ8_0;
use super::{Isa, MAX_M, TILE, Tiles, f16_bits, f16_to_f32};

const BLOCK: usize = 32;
/// Bytes of the fifth-bit plane of a Q5 tile block.
const PLANE: usize = 64;

/// Q4_0 tiles.
pub type Q4_0 = Packed<0, 0>;
/// Q4_1 tiles.
pub type Q4_1 = Packed<0, TILE>;
/// Q5_0 tiles.
pub type Q5_0 = Packed<PLANE, 0>;
/// Q5_1 tiles.
pub type Q5_1 = Packed<PLANE, TILE>;

/// One block of 16 rows: `QH` is 0 (Q4) or [`PLANE`] (Q5), `MN` 0 (no minimum) or [`TILE`].
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct TileBlock<const QH: usize, const MN: usize> {
    qs: [u8; BLOCK / 2 * TILE],
    qh: [u8; QH],
    d: [u16; TILE],
    m: [u16; MN],
}

pub struct Packed<const QH: usize, const MN: usize> {
    tiles: Tiles<TileBlock<QH, MN>>,
}

/// Moves bit `v` (0..8, a constant once the loops unroll) of every byte of `hb` to bit 4, with
/// `shl`/`shr` the 16-bit shifts of a vector width (bit 4 of either byte of a 16-bit lane comes
/// from the same byte); the other bits are left as garbage.
macro_rules! flag_to_bit4 {
    ($hb:expr, $v:expr, $shl:ident, $shr:ident) => {
        match $v {
            0 => $shl::<4>($hb),
            1 => $shl::<3>($hb),
            2 => $shl::<2>($hb),
            3 => $shl::<1>($hb),
            4 => $hb,
            5 => $shr::<1>($hb),
            6 => $shr::<2>($hb),
            _ => $shr::<3>($hb),
        }
    };
}

impl<const QH: usize, const MN: usize> Packed<QH, MN> {
    /// Bytes of one file block.
    const BLOCK_BYTES: usize = 2 + MN / 8 + QH / 16 + BLOCK / 2;
    /// What the unsigned values are offset by, without a minimum.
    const OFFSET: i32 = if QH == 0 { 8 } else { 16 };

    pub fn new(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let empty = TileBlock {
            qs: [0; BLOCK / 2 * TILE],
            qh: [0; QH],
            d: [0; TILE],
            m: [0; MN],
        };
        let tiles = Tiles::pack(
            bytes,
            rows,
            cols / BLOCK,
            Self::BLOCK_BYTES,
            empty,
            |raw, r, packed| {
                packed.d[r] = f16_bits(raw, 0);
                if MN != 0 {
                    packed.m[r] = f16_bits(raw, 2);
                }
                let at = 2 + MN / 8;
                let high = if QH == 0 {
                    0
                } else {
                    u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
                };
                let qs = &raw[at + QH / 16..];
                let nibble = |k: usize| {
                    if k < 16 {
                        qs[k] & 0x0F
                    } else {
                        qs[k - 16] >> 4
                    }
                };
                let fifth = |k: usize| ((high >> k) & 1) as u8;
                for g in 0..BLOCK / 8 {
                    for j in 0..4 {
                        let p = r * 4 + j;
                        packed.qs[g * TILE * 4 + p] =
                            nibble(8 * g + j) | (nibble(8 * g + 4 + j) << 4);
                        if QH != 0 {
                            packed.qh[p] |= (fifth(8 * g + j) << (2 * g))
                                | (fifth(8 * g + 4 + j) << (2 * g + 1));
                        }
                    }
                }
                Some(())
            },
        )?;
        Some(Self { tiles })
    }
}

impl<const QH: usize, const MN: usize> super::Packed for Packed<QH, MN> {
    type Act = ActQ8_0;

    fn tile(&self, isa: Isa, tile: usize, acts: &[&[ActQ8_0]], out: &mut [[f32; TILE]; MAX_M]) {
        let blocks = self.tiles.tile(tile);
        let offset = Self::OFFSET;
        dispatch_tile!(
            isa,
            acts.len(),
            M,
            x86::tile_avx512::<QH, MN, M>(blocks, offset, acts, out),
            x86::tile_avx2::<QH, MN, M>(blocks, offset, acts, out),
            tile_portable(blocks, offset, acts, out)
        )
    }
}

/// Adds one block's `Σ q·a` (`dot`) of a row to `sum`, the one float formula every tier uses:
/// without a minimum `(dot − offset·Σ a)·(d·d_a)`, as for Q8_0; with one
/// `dot·(d·d_a) + m·s`, where `s` is `d_a·Σ a` rounded through f16 as ggml's `block_q8_1` has it.
#[inline(always)]
fn accumulate<const MN: usize>(
    sum: f32,
    dot: i32,
    offset: i32,
    d: f32,
    m: f32,
    a: &ActQ8_0,
) -> f32 {
    if MN == 0 {
        ((dot - offset * a.sum) as f32).mul_add(d * a.d, sum)
    } else {
        m.mul_add(a.s, (dot as f32).mul_add(d * a.d, sum))
    }
}

fn tile_portable<const QH: usize, const MN: usize>(
    blocks: &[TileBlock<QH, MN>],
    offset: i32,
    acts: &[&[ActQ8_0]],
    out: &mut [[f32; TILE]; MAX_M],
) {
    for (sums, act) in out.iter_mut().zip(acts) {
        *sums = [0.0; TILE];
        for (block, a) in blocks.iter().zip(act.iter()) {
            for (r, sum) in sums.iter_mut().enumerate() {
                let mut dot = 0i32;
                for g in 0..BLOCK / 8 {
                    for j in 0..4 {
                        let p = r * 4 + j;
                        let byte = block.qs[g * TILE * 4 + p];
                        let (mut low, mut high) = (byte & 0x0F, byte >> 4);
                        if QH != 0 {
                            low |= ((block.qh[p] >> (2 * g)) & 1) << 4;
                            high |= ((block.qh[p] >> (2 * g + 1)) & 1) << 4;
                        }
                        dot += i32::from(low) * i32::from(a.qs[8 * g + j]);
                        dot += i32::from(high) * i32::from(a.qs[8 * g + 4 + j]);
                    }
                }
                let m = if MN == 0 { 0.0 } else { f16_to_f32(block.m[r]) };
                *sum = accumulate::<MN>(*sum, dot, offset, f16_to_f32(block.d[r]), m, a);
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

    /// How many tile blocks ahead the AVX2 kernel prefetches (a block is 4.5 to 6 cache lines).
    const PREFETCH: usize = 4;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile_avx512<const QH: usize, const MN: usize, const M: usize>(
        blocks: &[TileBlock<QH, MN>],
        offset: i32,
        acts: &[&[ActQ8_0]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let bit4 = _mm512_set1_epi8(0x10);
        let mut acc = [_mm512_setzero_ps(); M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            let hb = if QH == 0 {
                _mm512_setzero_si512()
            } else {
                unsafe { _mm512_loadu_si512(block.qh.as_ptr().cast()) }
            };
            // Low and high nibbles feed two independent chains.
            let mut low = [_mm512_setzero_si512(); M];
            let mut high = [_mm512_setzero_si512(); M];
            for g in 0..BLOCK / 8 {
                let w = unsafe { _mm512_loadu_si512(qs.add(g * 64).cast()) };
                let mut w_low = _mm512_and_si512(w, nibble);
                let mut w_high = _mm512_and_si512(_mm512_srli_epi16::<4>(w), nibble);
                if QH != 0 {
                    let f_low = flag_to_bit4!(hb, 2 * g, _mm512_slli_epi16, _mm512_srli_epi16);
                    let f_high = flag_to_bit4!(hb, 2 * g + 1, _mm512_slli_epi16, _mm512_srli_epi16);
                    w_low = _mm512_or_si512(w_low, _mm512_and_si512(f_low, bit4));
                    w_high = _mm512_or_si512(w_high, _mm512_and_si512(f_high, bit4));
                }
                for i in 0..M {
                    let a = &acts[i][b].qs;
                    let a_low = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g) });
                    let a_high = _mm512_set1_epi32(unsafe { broadcast4(a, 8 * g + 4) });
                    low[i] = _mm512_dpbusd_epi32(low[i], w_low, a_low);
                    high[i] = _mm512_dpbusd_epi32(high[i], w_high, a_high);
                }
            }
            let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.d.as_ptr().cast()) });
            for i in 0..M {
                let a = &acts[i][b];
                let dot = _mm512_add_epi32(low[i], high[i]);
                if MN == 0 {
                    let dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(offset * a.sum));
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[i]);
                } else {
                    let m = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(block.m.as_ptr().cast()) });
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                    let scaled = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[i]);
                    acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.s), scaled);
                }
            }
        }
        for i in 0..M {
            unsafe { _mm512_storeu_ps(out[i].as_mut_ptr(), acc[i]) };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const QH: usize, const MN: usize, const M: usize>(
        blocks: &[TileBlock<QH, MN>],
        offset: i32,
        acts: &[&[ActQ8_0]],
        out: &mut [[f32; TILE]; MAX_M],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
        let ones = _mm256_set1_epi16(1);
        // 16-bit sums of up to `flush` groups: each pmaddubsw pair is at most 2·15·127 (Q4) or
        // 2·31·127 (Q5), two of them a group, so 4 groups of Q4 or 2 of Q5 stay below 2^15.
        let flush = if QH == 0 { 4 } else { 2 };
        // Rows 0..8 and 8..16 of the tile, one register each.
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (b, block) in blocks.iter().enumerate() {
            let qs = block.qs.as_ptr();
            // Without this the AVX2 Q5 kernels stalled on each block's first line (a cold 7B
            // FFN matrix: Q5_0 1.4-1.7 ms, 0.9 ms with it). A prefetch never faults, so the
            // ones past the last block are harmless (hence `wrapping_add`).
            let ahead = (block as *const TileBlock<QH, MN>)
                .wrapping_add(PREFETCH)
                .cast::<i8>();
            for line in (0..size_of::<TileBlock<QH, MN>>()).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            for half in 0..2 {
                let hb = if QH == 0 {
                    _mm256_setzero_si256()
                } else {
                    unsafe { _mm256_loadu_si256(block.qh.as_ptr().add(half * 32).cast()) }
                };
                let mut dots = [_mm256_setzero_si256(); M];
                let mut pairs = [_mm256_setzero_si256(); M];
                for g in 0..BLOCK / 8 {
                    let w = unsafe { _mm256_loadu_si256(qs.add(g * 64 + half * 32).cast()) };
                    let mut w_low = _mm256_and_si256(w, nibble);
                    let mut w_high = _mm256_and_si256(_mm256_srli_epi16::<4>(w), nibble);
                    if QH != 0 {
                        let f_low = flag_to_bit4!(hb, 2 * g, _mm256_slli_epi16, _mm256_srli_epi16);
                        let f_high =
                            flag_to_bit4!(hb, 2 * g + 1, _mm256_slli_epi16, _mm256_srli_epi16);
                        w_low = _mm256_or_si256(w_low, _mm256_and_si256(f_low, bit4));
                        w_high = _mm256_or_si256(w_high, _mm256_and_si256(f_high, bit4));
                    }
                    for i in 0..M {
                        let a = &acts[i][b].qs;
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
                    if (g + 1) % flush == 0 {
                        for i in 0..M {
                            dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(pairs[i], ones));
                            pairs[i] = _mm256_setzero_si256();
                        }
                    }
                }
                let d = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(block.d.as_ptr().add(half * 8).cast())
                });
                for i in 0..M {
                    let a = &acts[i][b];
                    if MN == 0 {
                        let dot = _mm256_sub_epi32(dots[i], _mm256_set1_epi32(offset * a.sum));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
                        acc[i][half] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i][half]);
                    } else {
                        let m = _mm256_cvtph_ps(unsafe {
                            _mm_loadu_si128(block.m.as_ptr().add(half * 8).cast())
                        });
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.d));
                        let scaled =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[i]), scale, acc[i][half]);
                        acc[i][half] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), scaled);
                    }
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
