//! Every kernel against a reference: the weights dequantized by candle (an independent reading
//! of the formats) times our quantized activations, summed in f64; and every tier against the
//! others, to the bit (they compute the same integers and the same float formula).

use candle_core::Device;
use candle_core::quantized::{GgmlDType, ggml_file::qtensor_from_ggml};
use proptest::prelude::*;

use super::activations::{ActBlock, ActQ8_0, ActQ8K};
use super::{Isa, QMatrix};
use crate::model::gguf::GgmlType;

/// A small deterministic generator, so a failing case is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// A float in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// An f16 scale in `[lo, hi)`, as little-endian bytes.
    fn scale(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        let t = (self.unit() + 1.0) / 2.0;
        half::f16::from_f32(lo + t * (hi - lo)).to_le_bytes()
    }
}

/// Random but valid blocks of `ggml_type` for a `rows` × `cols` matrix.
fn random_matrix(ggml_type: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let blocks = rows * cols / ggml_type.block_size() as usize;
    let mut bytes = Vec::new();
    for _ in 0..blocks {
        let start = bytes.len();
        bytes.extend((0..ggml_type.type_size()).map(|_| rng.byte()));
        let block = &mut bytes[start..];
        // Finite scales, of the magnitudes real files have; every other byte is any value.
        match ggml_type {
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => {
                block[0..2].copy_from_slice(&rng.scale(1e-4, 2e-2))
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                block[0..2].copy_from_slice(&rng.scale(1e-4, 2e-2));
                block[2..4].copy_from_slice(&rng.scale(-1e-2, 1e-2));
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                block[0..2].copy_from_slice(&rng.scale(1e-4, 2e-3));
                block[2..4].copy_from_slice(&rng.scale(1e-4, 2e-3));
            }
            GgmlType::Q6_K => block[208..210].copy_from_slice(&rng.scale(1e-5, 2e-4)),
            other => unreachable!("no generator for {other:?}"),
        }
    }
    bytes
}

fn candle_type(ggml_type: GgmlType) -> GgmlDType {
    match ggml_type {
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        other => unreachable!("no candle type for {other:?}"),
    }
}

fn dequantized_weights(ggml_type: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let tensor = qtensor_from_ggml(
        candle_type(ggml_type),
        bytes,
        vec![rows, cols],
        &Device::Cpu,
    )
    .and_then(|t| t.dequantize(&Device::Cpu))
    .and_then(|t| t.flatten_all())
    .and_then(|t| t.to_vec1::<f32>());
    match tensor {
        Ok(values) => values,
        Err(error) => panic!("candle cannot dequantize the test matrix: {error}"),
    }
}

/// The activations as the kernels see them: quantized, then dequantized.
fn dequantized_activations(ggml_type: GgmlType, x: &[f32]) -> Vec<f32> {
    fn roundtrip<A: ActBlock>(x: &[f32], value: impl Fn(&A, usize) -> f32) -> Vec<f32> {
        let mut blocks = vec![A::default(); x.len() / A::VALUES];
        A::quantize(x, &mut blocks);
        blocks
            .iter()
            .flat_map(|b| (0..A::VALUES).map(|i| value(b, i)).collect::<Vec<_>>())
            .collect()
    }
    match ggml_type {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            roundtrip(x, |b: &ActQ8K, i| b.d * f32::from(b.qs[i]))
        }
        _ => roundtrip(x, |b: &ActQ8_0, i| b.d * f32::from(b.qs[i])),
    }
}

fn check(ggml_type: GgmlType, rows: usize, cols: usize, m: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let bytes = random_matrix(ggml_type, rows, cols, &mut rng);
    let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 3.0).collect();
    check_matrix(ggml_type, &bytes, rows, cols, &x, seed);
}

/// Every tier's product of the `rows` × `cols` matrix `bytes` with the rows of `x`, against the
/// reference and against each other (`seed` names the case in failures).
fn check_matrix(ggml_type: GgmlType, bytes: &[u8], rows: usize, cols: usize, x: &[f32], seed: u64) {
    let m = x.len() / cols;
    let Some(matrix) = QMatrix::new(ggml_type, bytes, rows, cols) else {
        panic!("{ggml_type:?} {rows}x{cols} was not packed");
    };
    let w = dequantized_weights(ggml_type, bytes, rows, cols);
    let a = dequantized_activations(ggml_type, x);
    let mut results = Vec::new();
    for isa in Isa::supported() {
        let mut out = vec![f32::NAN; m * rows];
        matrix.matmul_with(isa, x, &mut out);
        for i in 0..m {
            for j in 0..rows {
                let (mut exact, mut magnitude) = (0f64, 0f64);
                for k in 0..cols {
                    let product = f64::from(w[j * cols + k]) * f64::from(a[i * cols + k]);
                    exact += product;
                    magnitude += product.abs();
                }
                exact += min_term_rounding(ggml_type, bytes, x, i, j, cols);
                let got = f64::from(out[i * rows + j]);
                assert!(
                    (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                    "{ggml_type:?} {isa:?} {rows}x{cols} m={m} seed={seed}: row {i} output {j} is {got}, expected {exact}"
                );
            }
        }
        results.push((isa, out));
    }
    for (isa, out) in &results[1..] {
        let (first, expected) = &results[0];
        assert!(
            out.iter()
                .zip(expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ggml_type:?} {isa:?} differs from {first:?} (seed {seed})"
        );
    }
}

/// For the formats with a minimum, ggml applies it through `s = d_a·Σ a` rounded to f16
/// (`block_q8_1`); the kernels do too. This is that rounding's effect on output `j` of row `i`.
fn min_term_rounding(
    ggml_type: GgmlType,
    bytes: &[u8],
    x: &[f32],
    i: usize,
    j: usize,
    cols: usize,
) -> f64 {
    let block_bytes = match ggml_type {
        GgmlType::Q4_1 => 20,
        GgmlType::Q5_1 => 24,
        _ => return 0.0,
    };
    let mut acts = vec![ActQ8_0::default(); cols / 32];
    ActQ8_0::quantize(&x[i * cols..(i + 1) * cols], &mut acts);
    acts.iter()
        .enumerate()
        .map(|(b, a)| {
            let at = (j * cols / 32 + b) * block_bytes;
            let m = half::f16::from_le_bytes([bytes[at + 2], bytes[at + 3]]).to_f32();
            f64::from(m) * (f64::from(a.s) - f64::from(a.d) * f64::from(a.sum))
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn q8_0_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..9, m in 1usize..10) {
        check(GgmlType::Q8_0, rows, blocks * 32, m, seed);
    }

    #[test]
    fn q4_0_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..9, m in 1usize..10) {
        check(GgmlType::Q4_0, rows, blocks * 32, m, seed);
    }

    #[test]
    fn q4_1_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..9, m in 1usize..10) {
        check(GgmlType::Q4_1, rows, blocks * 32, m, seed);
    }

    #[test]
    fn q5_0_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..9, m in 1usize..10) {
        check(GgmlType::Q5_0, rows, blocks * 32, m, seed);
    }

    #[test]
    fn q5_1_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..9, m in 1usize..10) {
        check(GgmlType::Q5_1, rows, blocks * 32, m, seed);
    }

    #[test]
    fn q4_k_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..4, m in 1usize..10) {
        check(GgmlType::Q4_K, rows, blocks * 256, m, seed);
    }

    #[test]
    fn q6_k_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..4, m in 1usize..10) {
        check(GgmlType::Q6_K, rows, blocks * 256, m, seed);
    }

    #[test]
    fn q5_k_matches_the_reference(seed: u64, rows in 1usize..40, blocks in 1usize..4, m in 1usize..10) {
        check(GgmlType::Q5_K, rows, blocks * 256, m, seed);
    }
}

#[test]
fn real_shapes_match_the_reference() {
    // A decode step and a prompt chunk through a layer-sized matrix, many tiles and threads.
    for (ggml_type, m) in [
        (GgmlType::Q8_0, 1),
        (GgmlType::Q4_0, 1),
        (GgmlType::Q4_1, 7),
        (GgmlType::Q5_0, 1),
        (GgmlType::Q5_1, 7),
        (GgmlType::Q4_K, 1),
        (GgmlType::Q4_K, 7),
        (GgmlType::Q5_K, 1),
        (GgmlType::Q5_K, 7),
        (GgmlType::Q6_K, 1),
        (GgmlType::Q6_K, 70),
    ] {
        check(ggml_type, 272, 1024, m, 42);
    }
}

#[test]
fn extreme_k_quant_blocks_match_the_reference() {
    // The largest values and scales against full-scale activations of one sign and of
    // alternating signs: where the 16-bit partial sums of the AVX2 kernels and the 16-bit scale
    // products would overflow if their bounds were wrong.
    let (rows, cols) = (32, 512);
    let ones = vec![1.0f32; 3 * cols];
    let alternating: Vec<f32> = (0..3 * cols)
        .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    for (ggml_type, scale_bytes) in [
        (GgmlType::Q4_K, 4..16),
        (GgmlType::Q5_K, 4..16),
        (GgmlType::Q6_K, 192..208),
    ] {
        let block_bytes = ggml_type.type_size() as usize;
        for fill in [0x00, 0xFF] {
            for scale in [0x80u8, 0x7F, 0xFF] {
                let mut bytes = vec![fill; rows * cols / 256 * block_bytes];
                for block in bytes.chunks_exact_mut(block_bytes) {
                    block[scale_bytes.clone()].fill(scale);
                    let d = half::f16::from_f32(1e-3).to_le_bytes();
                    if ggml_type == GgmlType::Q6_K {
                        block[208..210].copy_from_slice(&d);
                    } else {
                        block[0..2].copy_from_slice(&d);
                        block[2..4].copy_from_slice(&d);
                    }
                }
                for x in [&ones, &alternating] {
                    check_matrix(ggml_type, &bytes, rows, cols, x, u64::from(fill ^ scale));
                }
            }
        }
    }
}

#[test]
fn activations_round_to_the_nearest_step() {
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..512).map(|_| rng.unit() * 10.0).collect();
    for ggml_type in [GgmlType::Q8_0, GgmlType::Q4_K] {
        let a = dequantized_activations(ggml_type, &x);
        let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (q, v) in a.iter().zip(&x) {
            // Half a step, plus Q8_0's scale rounded to f16 (2^-11 relative, over 127 steps).
            assert!(
                (q - v).abs() <= step * 0.57,
                "{ggml_type:?}: {v} became {q}"
            );
        }
    }
    let mut zero = [ActQ8K::default()];
    ActQ8K::quantize(&[0.0; 256], &mut zero);
    assert_eq!(zero[0].d, 0.0);
}

#[test]
fn shapes_the_formats_cannot_hold_are_left_to_candle() {
    let bytes = vec![0u8; 34 * 3];
    assert!(QMatrix::new(GgmlType::Q8_0, &bytes, 1, 96).is_some());
    assert!(QMatrix::new(GgmlType::Q8_0, &bytes, 1, 95).is_none());
    assert!(QMatrix::new(GgmlType::Q8_0, &bytes[1..], 1, 96).is_none());
    assert!(QMatrix::new(GgmlType::Q4_K, &bytes, 1, 96).is_none());
    assert!(QMatrix::new(GgmlType::F32, &bytes, 1, 96).is_none());
}

#[test]
fn products_run_together_equal_products_run_alone() {
    let mut rng = Rng(11);
    let (cols, m) = (512, 5);
    let matrices: Vec<QMatrix> = [
        (GgmlType::Q4_K, 48),
        (GgmlType::Q6_K, 17),
        (GgmlType::Q8_0, 33),
    ]
    .into_iter()
    .filter_map(|(ty, rows)| QMatrix::new(ty, &random_matrix(ty, rows, cols, &mut rng), rows, cols))
    .collect();
    assert_eq!(matrices.len(), 3);
    let x: Vec<f32> = (0..m * cols).map(|_| rng.unit()).collect();
    let mut together: Vec<Vec<f32>> = matrices.iter().map(|w| vec![0.0; m * w.rows()]).collect();
    let mut slices: Vec<&mut [f32]> = together.iter_mut().map(Vec::as_mut_slice).collect();
    let refs: Vec<&QMatrix> = matrices.iter().collect();
    QMatrix::matmul_many(Isa::detect(), &refs, &x, &mut slices);
    for (matrix, together) in matrices.iter().zip(&together) {
        let mut alone = vec![0.0; m * matrix.rows()];
        matrix.matmul(&x, &mut alone);
        assert_eq!(&alone, together);
    }
}

/// The repacked weights ask for huge pages: a large matrix's tiles start on a 2 MiB boundary,
/// on a mapping marked for them (`hg` in its smaps flags), whether or not the kernel could
/// supply them yet.
#[cfg(target_os = "linux")]
#[test]
fn repacked_weights_are_advised_onto_huge_pages() {
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    if !enabled.is_ok_and(|mode| mode.contains("[madvise]") || mode.contains("[always]")) {
        eprintln!("skipped: transparent huge pages are off or absent on this kernel");
        return;
    }
    // 1024 × 4096 Q8_0 weights: 4.5 MiB of tiles.
    let (rows, cols) = (1024, 4096);
    let bytes = random_matrix(GgmlType::Q8_0, rows, cols, &mut Rng(7));
    let matrix = QMatrix::new(GgmlType::Q8_0, &bytes, rows, cols).expect("a Q8_0 kernel");
    let super::Weights::Q8_0(packed) = &matrix.weights else {
        panic!("Q8_0 weights");
    };
    let at = packed.address();
    assert_eq!(at % (2 << 20), 0, "the tiles start at {at:#x}");
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((start, end)) = range
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            inside = (start..end).contains(&at);
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            assert!(
                flags.split_whitespace().any(|flag| flag == "hg"),
                "the tiles' mapping lacks the huge-page advice: {flags}"
            );
            return;
        }
    }
    panic!("no mapping in /proc/self/smaps holds the tiles at {at:#x}");
}
