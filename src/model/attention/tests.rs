use half::f16;
use proptest::prelude::*;

use super::*;

/// What the reference reads a stored value as.
trait Widen: KvElement {
    fn widen(self) -> f64;
}

impl Widen for f32 {
    fn widen(self) -> f64 {
        f64::from(self)
    }
}

impl Widen for f16 {
    fn widen(self) -> f64 {
        f64::from(self.to_f32())
    }
}

/// A small deterministic generator: the test inputs follow from one seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Uniform in [-2, 2).
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Attention written out as the definition, in f64, one query head at a time.
fn reference<T: Widen>(queries: &[f32], keys: &[T], values: &[T], s: AttentionShape) -> Vec<f32> {
    let d = s.head_dim;
    let mut out = vec![0.0f32; s.query_len()];
    for head in 0..s.heads() {
        let kv = head / s.group;
        for row in 0..s.seq {
            let q = &queries[(head * s.seq + row) * d..][..d];
            let visible = s.start + row + 1;
            let key = |j: usize| &keys[(kv * s.capacity + j) * d..][..d];
            let value = |j: usize| &values[(kv * s.capacity + j) * d..][..d];
            let scores: Vec<f64> = (0..visible)
                .map(|j| {
                    let dot: f64 = q
                        .iter()
                        .zip(key(j))
                        .map(|(&q, &k)| f64::from(q) * k.widen())
                        .sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for t in 0..d {
                let y: f64 = (0..visible)
                    .map(|j| exps[j] / sum * value(j)[t].widen())
                    .sum();
                out[(row * s.heads() + head) * d + t] = y as f32;
            }
        }
    }
    out
}

/// Key and value buffers with every position in capacity filled: the visible ones with `fill`,
/// the rest (future positions) with NaN, which must never reach the output.
fn buffers(random: &mut Random, s: AttentionShape) -> (Vec<f32>, Vec<f32>) {
    let mut keys = random.values(s.cache_len());
    let mut values = random.values(s.cache_len());
    let total = s.start + s.seq;
    for kv in 0..s.kv_heads {
        for position in total..s.capacity {
            let at = (kv * s.capacity + position) * s.head_dim;
            keys[at..at + s.head_dim].fill(f32::NAN);
            values[at..at + s.head_dim].fill(f32::NAN);
        }
    }
    (keys, values)
}

fn isas() -> Vec<Isa> {
    let mut isas = vec![Isa::Portable];
    if Isa::detect() != Isa::Portable {
        isas.push(Isa::detect());
    }
    isas
}

fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len());
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        prop_assert!(
            (a - e).abs() <= tolerance * (1.0 + e.abs()),
            "element {i}: {a} vs {e}"
        );
    }
    Ok(())
}

fn check(seed: u64, s: AttentionShape) -> Result<(), TestCaseError> {
    let mut random = Random(seed | 1);
    let queries = random.values(s.query_len());
    let (keys, values) = buffers(&mut random, s);
    let keys16: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
    let values16: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
    let expected32 = reference(&queries, &keys, &values, s);
    // The reference reads the same rounded F16 values, so only summation order differs.
    let expected16 = reference(&queries, &keys16, &values16, s);
    for isa in isas() {
        let mut out = vec![f32::NAN; s.query_len()];
        attend_with(isa, &queries, &keys, &values, s, &mut out);
        assert_close(&out, &expected32, 1e-4)?;
        let mut out = vec![f32::NAN; s.query_len()];
        attend_with(isa, &queries, &keys16, &values16, s, &mut out);
        assert_close(&out, &expected16, 1e-4)?;
    }
    Ok(())
}

fn shapes() -> impl Strategy<Value = (u64, AttentionShape)> {
    (
        any::<u64>(),
        prop::sample::select(vec![1usize, 3, 7, 8, 9, 16, 31, 64, 80, 128]),
        1usize..4,
        1usize..5,
        0usize..48,
        1usize..6,
        0usize..3,
    )
        .prop_map(|(seed, head_dim, kv_heads, group, start, seq, spare)| {
            let shape = AttentionShape {
                kv_heads,
                group,
                head_dim,
                start,
                seq,
                capacity: start + seq + spare,
            };
            (seed, shape)
        })
}

proptest! {
    #[test]
    fn matches_the_definition((seed, shape) in shapes()) {
        check(seed, shape)?;
    }
}

#[test]
fn long_contexts_and_many_rows_take_the_parallel_path() {
    for (start, seq) in [(3000, 1), (100, 40), (0, 64)] {
        let shape = AttentionShape {
            kv_heads: 2,
            group: 4,
            head_dim: 64,
            start,
            seq,
            capacity: start + seq + 5,
        };
        assert!(shape.query_len() * (start + seq) >= PARALLEL_WORK);
        check(start as u64 * 31 + seq as u64, shape).unwrap();
    }
}

#[test]
fn the_softmax_exponential_is_within_float_rounding_of_f32_exp() {
    let mut x = -90.0f32;
    let mut scores = Vec::new();
    while x <= 0.0 {
        scores.push(x);
        x += 0.013;
    }
    scores.push(0.0);
    let expected: Vec<f32> = scores.iter().map(|&s| s.exp()).collect();
    for isa in isas() {
        let mut actual = scores.clone();
        let max = 0.0;
        let sum = match isa {
            Isa::Portable => continue,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { super::avx2::exp_shifted(&mut actual, max) },
        };
        for (&a, &e) in actual.iter().zip(&expected) {
            // Relative 1e-6 (a few ulp); values below e^-87 are clamped to about 1.6e-38.
            assert!((a - e).abs() <= 1e-6 * e + 2e-38, "{a} vs {e}");
        }
        let expected_sum: f32 = expected.iter().sum();
        assert!((sum - expected_sum).abs() <= 1e-5 * expected_sum);
    }
}

#[test]
fn large_scores_do_not_overflow_the_softmax() {
    let shape = AttentionShape {
        kv_heads: 1,
        group: 1,
        head_dim: 8,
        start: 2,
        seq: 1,
        capacity: 3,
    };
    let queries = vec![100.0f32; 8];
    let keys = [vec![100.0f32; 8], vec![-100.0; 8], vec![99.0; 8]].concat();
    let values = [vec![1.0f32; 8], vec![2.0; 8], vec![3.0; 8]].concat();
    for isa in isas() {
        let mut out = vec![0.0f32; 8];
        attend_with(isa, &queries, &keys, &values, shape, &mut out);
        // Scores 28284, -28284 and 28001: the first key takes all the weight.
        assert!(out.iter().all(|&y| (y - 1.0).abs() < 1e-6), "{out:?}");
    }
}

/// Chunks of many rows: several row tiles per task and key blocks, partial at both ends, with
/// odd head sizes, group 1 and 4, from the start and after cached positions.
#[test]
fn prefill_chunks_tile_rows_and_keys() {
    for (head_dim, group, start, seq) in [
        (64, 4, 0, 70),
        (64, 1, 37, 65),
        (7, 4, 95, 33),
        (80, 1, 0, 2),
        (16, 3, 31, 17),
    ] {
        let shape = AttentionShape {
            kv_heads: 2,
            group,
            head_dim,
            start,
            seq,
            capacity: start + seq + 3,
        };
        check((head_dim * 1000 + start * 10 + seq) as u64, shape).unwrap();
    }
}
