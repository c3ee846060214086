//! Decode speed with a long context already in the KV cache, which `bench` (whose decode starts
//! at 512 positions) does not show: attention's share grows with the cached positions.
//!
//!   cargo run --release --example decode_at_context -- MODEL.gguf [CONTEXT] [STEPS]
//!
//! Fills the cache with CONTEXT tokens (default 3000) in prefill chunks, then times STEPS greedy
//! decode steps (default 32), and the same number of steps after a 16-token prompt.
//! `KV_TYPE=f32` picks the KV cache type (default f16).

use std::time::Instant;

use candle_core::Device;
use codellama_lsp::model::generate::PREFILL_CHUNK;
use codellama_lsp::model::sampling::argmax;
use codellama_lsp::model::{KvCache, Llama, LoadedModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        return Err("usage: decode_at_context MODEL.gguf [CONTEXT] [STEPS]".into());
    };
    let context: usize = args.get(2).map_or(Ok(3000), |a| a.parse())?;
    let steps: usize = args.get(3).map_or(Ok(32), |a| a.parse())?;
    let mut model = LoadedModel::load(path.as_ref(), &Device::Cpu, Some(context + steps + 8))?;
    if let Ok(kv_type) = std::env::var("KV_TYPE") {
        model.llama.set_kv_type(kv_type.parse()?);
    }
    let llama = &model.llama;
    let vocab = model.tokenizer.vocab_size() as u32;
    // Deterministic filler tokens: the values do not matter for timing.
    let prompt: Vec<u32> = (0..context as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut cache = llama.new_cache()?;
    llama.forward(&prompt[..16], &mut cache, false)?;
    let short = decode(llama, &mut cache, steps)?;

    cache.clear();
    let started = Instant::now();
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        llama.forward(chunk, &mut cache, false)?;
    }
    let prefill_s = started.elapsed().as_secs_f64();
    let long = decode(llama, &mut cache, steps)?;
    println!(
        "prefill {context} tokens: {:.1} tok/s",
        context as f64 / prefill_s
    );
    println!("decode after 16 tokens:      {short:.2} ms/token ({steps} steps)");
    println!("decode after {context} tokens: {long:.2} ms/token ({steps} steps)");
    Ok(())
}

/// Mean milliseconds per greedy decode step.
fn decode(
    llama: &Llama,
    cache: &mut KvCache,
    steps: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut token = 1u32;
    let started = Instant::now();
    for _ in 0..steps {
        let logits = llama.forward(&[token], cache, false)?;
        let row: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        token = argmax(&row);
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / steps as f64)
}
