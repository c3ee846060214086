//! The CPU attention kernel alone, on the 1B model's shape (8 key heads, 4 query heads each,
//! head_dim 64) with an F16 cache: one call per prefill chunk or decode step at a long context.
//!
//!   cargo run --release --example attention_bench -- [START] [SEQ …]
//!
//! START defaults to 2900, SEQ to `1 32 256`. Prints, per SEQ, the best wall time of a few calls
//! and the CPU time per call (all threads, from /proc/self/task/*/schedstat), which a busy
//! machine disturbs less than wall time. `KV_TYPE=f32` uses an F32 cache.

use std::time::Instant;

use codellama_lsp::model::attention::{AttentionShape, KvElement, attend};
use half::f16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let start = args.first().copied().unwrap_or(2900);
    let seqs = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1, 32, 256]
    };
    let f32_cache = std::env::var("KV_TYPE").is_ok_and(|t| t == "f32");
    for seq in seqs {
        let shape = AttentionShape {
            kv_heads: 8,
            group: 4,
            head_dim: 64,
            start,
            seq,
            capacity: start + seq,
        };
        let (wall, cpu) = if f32_cache {
            time(shape, |x| x)
        } else {
            time(shape, f16::from_f32)
        };
        let fma = (shape.heads() * shape.head_dim * 2) as f64 * (start as f64 + seq as f64 / 2.0);
        println!(
            "start {start} seq {seq:>4}: best {:8.3} ms wall, {:8.3} ms CPU/call, {:5.1} GFMA/s (wall)",
            wall * 1e3,
            cpu * 1e3,
            fma * seq as f64 / wall / 1e9
        );
    }
    Ok(())
}

/// Best wall time and mean CPU time per call, over enough calls to take about a second.
fn time<T: KvElement>(shape: AttentionShape, make: impl Fn(f32) -> T) -> (f64, f64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let queries: Vec<f32> = (0..shape.query_len()).map(|_| next()).collect();
    let keys: Vec<T> = (0..shape.cache_len()).map(|_| make(next())).collect();
    let values: Vec<T> = (0..shape.cache_len()).map(|_| make(next())).collect();
    let mut out = vec![0.0f32; shape.query_len()];
    attend(&queries, &keys, &values, shape, &mut out);
    let probe = Instant::now();
    attend(&queries, &keys, &values, shape, &mut out);
    let calls = (1.0 / probe.elapsed().as_secs_f64().max(1e-6)).clamp(3.0, 2000.0) as usize;
    let mut best = f64::INFINITY;
    let cpu_before = cpu_seconds();
    for _ in 0..calls {
        let started = Instant::now();
        attend(&queries, &keys, &values, shape, &mut out);
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out);
    (best, (cpu_seconds() - cpu_before) / calls as f64)
}

/// CPU seconds used by all of this process's threads so far.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}
