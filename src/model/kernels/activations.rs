//! Activations quantized to 8 bits, once per matrix product, in the two block formats the
//! weight kernels consume. The rounding follows ggml's (ties to even), so the integer sums are
//! the ones llama.cpp computes.

/// `v` rounded to the nearest integer, ties to even (as `nearbyintf` does in ggml), for
/// `|v| < 2^22`: adding 1.5·2^23 leaves no fraction bits. Unlike `round_ties_even`, it
/// vectorizes instead of calling `rintf` per value.
#[inline(always)]
fn round(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// A block format for one row of activations.
pub trait ActBlock: Copy + Default + Send + Sync {
    /// Values per block.
    const VALUES: usize;
    /// Quantizes `x` (a multiple of `VALUES` long) into `out` (`x.len() / VALUES` blocks).
    fn quantize(x: &[f32], out: &mut [Self]);
}

/// 32 activations as `d · qs[i]`, with `sum = Σ qs[i]` for the formats whose weights carry an
/// offset and `s = d·Σ qs[i]` for those with a minimum (ggml's `block_q8_0`/`block_q8_1` in one,
/// with `d` and `s` rounded through f16 as there).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct ActQ8_0 {
    pub d: f32,
    pub sum: i32,
    pub s: f32,
    pub qs: [i8; 32],
}

impl Default for ActQ8_0 {
    fn default() -> Self {
        Self {
            d: 0.0,
            sum: 0,
            s: 0.0,
            qs: [0; 32],
        }
    }
}

impl ActBlock for ActQ8_0 {
    const VALUES: usize = 32;

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (block, x) in out.iter_mut().zip(x.chunks_exact(Self::VALUES)) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut sum = 0;
            for (q, &v) in block.qs.iter_mut().zip(x) {
                *q = round(v * inverse) as i8;
                sum += i32::from(*q);
            }
            block.d = half::f16::from_f32(d).to_f32();
            block.sum = sum;
            block.s = half::f16::from_f32(d * sum as f32).to_f32();
        }
    }
}

/// 256 activations as `d · qs[i]`, with the sums of each 16 (ggml's `block_q8_K`), for the
/// k-quants, whose sub-block minimums and offsets are applied through those sums.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct ActQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for ActQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

impl ActBlock for ActQ8K {
    const VALUES: usize = 256;

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (block, x) in out.iter_mut().zip(x.chunks_exact(Self::VALUES)) {
            // The value of largest magnitude, with its sign, maps to -127 (as in ggml).
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in x {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                *block = Self::default();
                continue;
            }
            let inverse = -127.0 / max;
            for (q, &v) in block.qs.iter_mut().zip(x) {
                *q = round(inverse * v).min(127.0) as i8;
            }
            for (sum, qs) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
                *sum = qs.iter().map(|&q| i16::from(q)).sum();
            }
            block.d = 1.0 / inverse;
        }
    }
}
