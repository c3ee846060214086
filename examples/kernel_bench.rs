//! Our quantized matmul kernels against candle's, on the matrix shapes of the 1B and 7B
//! benchmark models, alternating in one process so that a busy machine slows both alike.
//!
//! `cargo run --release --example kernel_bench [q4_k|q8_0|… ] [m …] [ROWSxCOLS …]`
//! prints, per shape and row count `m`, the best of a few runs for each and the ratio, and the
//! CPU time our kernel used per call (all threads, from /proc/self/task/*/schedstat): on a
//! machine busy with other work, that measures the kernel's efficiency when wall time cannot.
//! With `RAYON_NUM_THREADS=1` the CPU time has no idle threads' spinning in it. With `cold`,
//! each call multiplies the next of enough copies of the matrix that none is still in cache, as
//! decoding a model larger than the caches does (and candle is not run).

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use codellama_lsp::model::gguf::GgmlType;
use codellama_lsp::model::kernels::QMatrix;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = |a: &str| {
        let (rows, cols) = a.split_once('x')?;
        Some((rows.parse::<usize>().ok()?, cols.parse::<usize>().ok()?))
    };
    let types: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.parse::<usize>().is_err() && shape(a).is_none() && *a != "cold")
        .collect();
    let types = if types.is_empty() {
        vec!["q4_k", "q8_0"]
    } else {
        types
    };
    let ms: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let cold = args.iter().any(|a| a == "cold");
    let ms = if ms.is_empty() { vec![1, 64] } else { ms };
    // The 1B model's matrices (and its output matrix), then a 7B one.
    let shapes: Vec<(usize, usize)> = args.iter().filter_map(|a| shape(a)).collect();
    let shapes = if shapes.is_empty() {
        vec![
            (2048, 2048),
            (5632, 2048),
            (2048, 5632),
            (32016, 2048),
            (11008, 4096),
        ]
    } else {
        shapes
    };
    let device = Device::Cpu;
    for name in types {
        let (ggml, candle) = match name {
            "q4_k" => (GgmlType::Q4_K, GgmlDType::Q4K),
            "q6_k" => (GgmlType::Q6_K, GgmlDType::Q6K),
            "q5_k" => (GgmlType::Q5_K, GgmlDType::Q5K),
            "q8_0" => (GgmlType::Q8_0, GgmlDType::Q8_0),
            "q4_0" => (GgmlType::Q4_0, GgmlDType::Q4_0),
            "q4_1" => (GgmlType::Q4_1, GgmlDType::Q4_1),
            "q5_0" => (GgmlType::Q5_0, GgmlDType::Q5_0),
            "q5_1" => (GgmlType::Q5_1, GgmlDType::Q5_1),
            other => return Err(format!("unknown type {other}").into()),
        };
        for &(rows, cols) in &shapes {
            let weights = Tensor::randn(0f32, 0.02, (rows, cols), &device)?;
            let quantized = QTensor::quantize(&weights, candle)?;
            let bytes = quantized.data()?.into_owned();
            // 256 MB of copies when cold: several times any L3.
            let copies = if cold {
                (256_000_000 / bytes.len()).max(2)
            } else {
                1
            };
            let ours: Vec<QMatrix> = (0..copies)
                .filter_map(|_| QMatrix::new(ggml, &bytes, rows, cols))
                .collect();
            if ours.is_empty() {
                println!("{name} {rows}x{cols}: no kernel");
                continue;
            }
            let mut next = ours.iter().cycle();
            let theirs = QMatMul::from_qtensor(quantized)?;
            for &m in &ms {
                let x = Tensor::randn(0f32, 1.0, (m, cols), &device)?;
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; m * rows];
                let (mut best_ours, mut best_theirs) = (f64::MAX, f64::MAX);
                // About 0.2 s of work at 20 GMAC/s, so that the CPU time is not noise.
                let runs = (4_000_000_000 / (m * rows * cols)).clamp(5, 1000);
                let cpu_before = cpu_seconds();
                for matrix in next.by_ref().take(runs) {
                    matrix.matmul(&values, &mut out);
                }
                let cpu_ours = (cpu_seconds() - cpu_before) / runs as f64;
                for matrix in next.by_ref().take(7) {
                    let start = Instant::now();
                    matrix.matmul(&values, &mut out);
                    best_ours = best_ours.min(start.elapsed().as_secs_f64());
                    if cold {
                        continue;
                    }
                    let start = Instant::now();
                    let _ = theirs.forward(&x)?;
                    best_theirs = best_theirs.min(start.elapsed().as_secs_f64());
                }
                let gbs = bytes.len() as f64 / best_ours / 1e9;
                let gmacs = (m * rows * cols) as f64 / cpu_ours / 1e9;
                let theirs = if cold {
                    "(cold)".to_owned()
                } else {
                    format!(
                        "candle {:8.3} ms  ratio {:.2}x",
                        best_theirs * 1e3,
                        best_theirs / best_ours
                    )
                };
                println!(
                    "{name} {rows:>5}x{cols:<5} m={m:<4} ours {:8.3} ms ({gbs:5.1} GB/s; cpu {:8.3} ms, {gmacs:6.1} GMAC/cpu-s)  {theirs}",
                    best_ours * 1e3,
                    cpu_ours * 1e3,
                );
            }
        }
    }
    Ok(())
}

/// CPU time of all this process's threads so far.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}
