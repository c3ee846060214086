//! `bench`'s decode bound: the machine's memory read bandwidth, and the decode speed it allows.
//!
//! Decoding one token multiplies a vector by every weight matrix once, so on a CPU it cannot go
//! faster than read bandwidth / weight bytes: the weights are far larger than any cache and are
//! streamed from memory once per token. The bandwidth is measured as the engine would use it: a
//! streaming read of a buffer much larger than the last-level cache, on the huge pages the
//! weights are on, split over the engine's threads, best of a few runs.

use std::time::Instant;

use crate::model::gguf::TensorInfo;
use crate::model::kernels::HugePageBuffer;

/// The buffer `bench` reads: 1 GiB, far beyond any CPU cache.
pub const DEFAULT_BUFFER_MIB: usize = 1024;
/// Runs of the read; the best one counts (the others pay for page faults, noise, a cold TLB).
pub const RUNS: usize = 5;

/// Bytes of weights one decoded token reads: every tensor once, except the token embedding table,
/// of which one row is read — unless the model has no `output.weight`, when the table doubles as
/// the output projection and is read whole. The KV cache is not counted: what it adds depends on
/// the position and on the cache's storage type (`--kv-type`), while the weights are the same
/// bytes for both engines.
pub fn weight_bytes_per_token(tensors: &[TensorInfo]) -> u64 {
    let tied = !tensors.iter().any(|t| t.name == "output.weight");
    tensors
        .iter()
        .map(|t| match t.dims.as_slice() {
            [_, rows, ..] if t.name == "token_embd.weight" && !tied => t.size / (*rows).max(1),
            _ => t.size,
        })
        .sum()
}

/// The fastest decode (tokens/s) that `bytes_per_second` of read bandwidth allows when each token
/// reads `bytes_per_token`; 0 when either is unknown (zero).
pub fn decode_bound(bytes_per_second: f64, bytes_per_token: u64) -> f64 {
    if bytes_per_token == 0 || bytes_per_second.is_nan() || bytes_per_second <= 0.0 {
        return 0.0;
    }
    bytes_per_second / bytes_per_token as f64
}

/// The best read bandwidth (bytes/s) over `runs` reads of a buffer of `mib` MiB by `threads`
/// threads, each summing its own contiguous share; an error when the buffer cannot be allocated.
pub fn measure_read(mib: usize, threads: usize, runs: usize) -> Result<f64, String> {
    let threads = threads.max(1);
    let words = mib
        .checked_mul(1 << 17)
        .ok_or_else(|| format!("a {mib} MiB buffer is too large"))?
        .max(threads * LANES);
    // On 2 MiB pages from end to end, as the repacked weights are: with 4 KiB ones the TLB
    // misses make the read slower than a decode, and the bound would not be a ceiling.
    // Non-zero, so that every page is really allocated and written before the first run.
    let buffer = HugePageBuffer::new(words, 0x0101_0101_0101_0101u64)
        .ok_or_else(|| format!("cannot allocate a {mib} MiB buffer"))?;
    let share = buffer.len().div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let total = std::thread::scope(|scope| {
            let workers: Vec<_> = buffer
                .chunks(share)
                .map(|part| scope.spawn(move || sum(part)))
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or_default())
                .fold(0u64, u64::wrapping_add)
        });
        let seconds = started.elapsed().as_secs_f64();
        std::hint::black_box(total);
        if seconds > 0.0 {
            best = best.max((buffer.len() * 8) as f64 / seconds);
        }
    }
    Ok(best)
}

const LANES: usize = 16;

/// A wrapping sum with independent lanes, which the compiler turns into wide vector adds: the loop
/// is limited by memory, not by a chain of dependent additions.
fn sum(data: &[u64]) -> u64 {
    let mut lanes = [0u64; LANES];
    let mut blocks = data.chunks_exact(LANES);
    for block in &mut blocks {
        for (lane, value) in lanes.iter_mut().zip(block) {
            *lane = lane.wrapping_add(*value);
        }
    }
    let rest = blocks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    lanes.iter().fold(rest, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgmlType;

    fn tensor(name: &str, dims: &[u64], size: u64) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type: GgmlType::Q8_0,
            offset: 0,
            size,
        }
    }

    #[test]
    fn a_token_reads_every_weight_and_one_embedding_row() {
        let untied = [
            tensor("token_embd.weight", &[64, 100], 6800),
            tensor("blk.0.attn_norm.weight", &[64], 256),
            tensor("blk.0.attn_q.weight", &[64, 64], 4352),
            tensor("output.weight", &[64, 100], 6800),
        ];
        assert_eq!(weight_bytes_per_token(&untied), 68 + 256 + 4352 + 6800);
        // Tied: the embedding table is the output projection, read whole.
        assert_eq!(weight_bytes_per_token(&untied[..3]), 6800 + 256 + 4352);
    }

    #[test]
    fn the_bound_is_bandwidth_over_bytes_per_token() {
        // 20 GB/s over a 500 MB model: at most 40 tokens per second.
        assert!((decode_bound(20e9, 500_000_000) - 40.0).abs() < 1e-9);
        assert_eq!(decode_bound(20e9, 0), 0.0);
        assert_eq!(decode_bound(0.0, 100), 0.0);
        assert_eq!(decode_bound(f64::NAN, 100), 0.0);
    }

    #[test]
    fn the_sum_covers_every_element_and_a_read_is_measured() {
        let data: Vec<u64> = (1..=100).collect();
        assert_eq!(sum(&data), 5050);
        assert_eq!(sum(&data[..7]), 28);
        let bandwidth = measure_read(4, 2, 2).unwrap();
        assert!(bandwidth.is_finite() && bandwidth > 0.0, "{bandwidth}");
        assert!(measure_read(usize::MAX, 2, 1).is_err());
    }
}
