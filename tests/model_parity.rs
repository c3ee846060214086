//! The forward pass against candle-transformers' `quantized_llama` (the reference), and KV-cache
//! reuse against evaluation from scratch.
//!
//! Tolerance: 1e-4 absolute on logits. Both run the same candle kernels on the same weights, so
//! differences come only from operation order (our grouped attention, chunking); the random tiny
//! models give logits of order 1e-1..1e1.

mod support;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use codellama_lsp::model::{KvType, Llama};

const TOLERANCE: f32 = 1e-4;

fn reference_logits(path: &std::path::Path, tokens: &[u32]) -> Vec<f32> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn last_row(logits: &Tensor) -> Vec<f32> {
    let rows = logits.dim(0).unwrap();
    logits.get(rows - 1).unwrap().to_vec1().unwrap()
}

const PROMPT: [u32; 12] = [
    1, 822, 1667, 29898, 29877, 29892, 263, 1125, 13, 1678, 736, 32007,
];

#[test]
fn logits_match_quantized_llama_on_the_shared_tiny_models() {
    for name in ["llama-2-tiny-random.gguf", "codellama-tiny-random.gguf"] {
        let Some(path) = support::shared_fixture(name) else {
            return;
        };
        let (model, _) = Llama::load(&path, &Device::Cpu, Some(256)).unwrap();
        let prompt: Vec<u32> = PROMPT
            .iter()
            .copied()
            .filter(|&t| (t as usize) < model.config().vocab_size)
            .collect();
        for len in [1, 2, 5, prompt.len()] {
            let mut cache = model.new_cache().unwrap();
            let ours = last_row(&model.forward(&prompt[..len], &mut cache, false).unwrap());
            let reference = reference_logits(&path, &prompt[..len]);
            let diff = max_difference(&ours, &reference);
            assert!(diff < TOLERANCE, "{name}, {len} tokens: max |Δ| = {diff}");
        }
    }
}

#[test]
fn cache_reuse_chunking_and_truncation_equal_a_fresh_evaluation() {
    let Some(path) = support::shared_fixture("codellama-tiny-random.gguf") else {
        return;
    };
    let (model, _) = Llama::load(&path, &Device::Cpu, Some(256)).unwrap();
    let mut fresh = model.new_cache().unwrap();
    let all = model.forward(&PROMPT, &mut fresh, true).unwrap();
    let expected_last = last_row(&all);

    // Token by token.
    let mut cache = model.new_cache().unwrap();
    for (i, &token) in PROMPT.iter().enumerate() {
        let step = last_row(&model.forward(&[token], &mut cache, false).unwrap());
        let expected: Vec<f32> = all.get(i).unwrap().to_vec1().unwrap();
        assert!(max_difference(&step, &expected) < TOLERANCE, "position {i}");
    }
    // Uneven chunks.
    let mut cache = model.new_cache().unwrap();
    model.forward(&PROMPT[..5], &mut cache, false).unwrap();
    model.forward(&PROMPT[5..8], &mut cache, false).unwrap();
    let chunked = last_row(&model.forward(&PROMPT[8..], &mut cache, false).unwrap());
    assert!(max_difference(&chunked, &expected_last) < TOLERANCE);
    // Rewind to a shared prefix after a different continuation (a keystroke that edits the end).
    let mut cache = model.new_cache().unwrap();
    model
        .forward(&[1, 822, 1667, 29898, 500, 600, 700], &mut cache, false)
        .unwrap();
    let keep = cache.common_prefix(&PROMPT);
    assert_eq!(keep, 4);
    cache.truncate(keep);
    let reused = last_row(&model.forward(&PROMPT[keep..], &mut cache, false).unwrap());
    assert!(max_difference(&reused, &expected_last) < TOLERANCE);
    assert_eq!(cache.tokens(), PROMPT);
}

#[test]
fn the_context_limit_is_an_error_not_a_panic() {
    let Some(path) = support::shared_fixture("codellama-tiny-random.gguf") else {
        return;
    };
    let (model, _) = Llama::load(&path, &Device::Cpu, Some(8)).unwrap();
    let mut cache = model.new_cache().unwrap();
    let error = model.forward(&PROMPT, &mut cache, false).unwrap_err();
    assert!(
        error.to_string().contains("do not fit in the context of 8"),
        "{error}"
    );
    let error = model.forward(&[40_000], &mut cache, false).unwrap_err();
    assert!(
        error.to_string().contains("outside the vocabulary"),
        "{error}"
    );
}

fn own_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[test]
fn logits_match_quantized_llama_on_our_fixtures_with_gqa_and_k_quants() {
    // Our fixtures add what the shared ones lack: grouped-query attention (2 query heads per key
    // head), two layers, RoPE base 1e6, tied output weights, Q8_0 and Q4_K matrices.
    let prompt = [
        1, 455, 403, 408, 394, 278, 418, 280, 314, 13, 262, 460, 32007, 439,
    ];
    for variant in codellama_lsp::fixtures::Variant::ALL {
        let path = own_fixture(variant.file_name());
        let (mut model, _) = Llama::load(&path, &Device::Cpu, Some(256)).unwrap();
        // The reference keeps keys and values in F32. With an F16 cache the attention output
        // moves by F16 rounding, and the Q8_0/Q4_K matrices' 8-bit quantization of their input
        // can turn that into a step (up to 2e-3 here); F16 against F32 is checked below.
        model.set_kv_type(KvType::F32);
        assert_eq!(model.config().head_count / model.config().head_count_kv, 2);
        for len in [1, 3, prompt.len()] {
            let mut cache = model.new_cache().unwrap();
            let ours = last_row(&model.forward(&prompt[..len], &mut cache, false).unwrap());
            let reference = reference_logits(&path, &prompt[..len]);
            let diff = max_difference(&ours, &reference);
            assert!(
                diff < TOLERANCE,
                "{variant:?}, {len} tokens: max |Δ| = {diff}"
            );
        }
    }
}

#[test]
fn committed_fixtures_equal_a_fresh_generation() {
    for variant in codellama_lsp::fixtures::Variant::ALL {
        let committed = std::fs::read(own_fixture(variant.file_name())).unwrap();
        let fresh = codellama_lsp::fixtures::generate(variant).unwrap();
        assert!(
            committed == fresh,
            "{variant:?}: run `cargo run -- fixtures` and commit the result"
        );
    }
}

/// Greedy decoding from `prompt` with a cache of `kv_type`: the logits of the prompt's positions
/// and of every step, and the tokens chosen.
fn greedy_run(
    model: &mut Llama,
    kv_type: KvType,
    prompt: &[u32],
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    model.set_kv_type(kv_type);
    let mut cache = model.new_cache().unwrap();
    assert_eq!(cache.kv_type(), kv_type);
    let all = model.forward(prompt, &mut cache, true).unwrap();
    let mut rows: Vec<Vec<f32>> = (0..prompt.len())
        .map(|i| all.get(i).unwrap().to_vec1().unwrap())
        .collect();
    let mut tokens = Vec::new();
    for _ in 0..steps {
        let last = rows.last().unwrap();
        let next = codellama_lsp::model::sampling::argmax(last);
        tokens.push(next);
        rows.push(last_row(
            &model.forward(&[next], &mut cache, false).unwrap(),
        ));
    }
    (rows, tokens)
}

#[test]
fn f16_and_f32_kv_caches_agree_on_every_fixture() {
    // F16 keeps 11 significant bits, so keys and values move by at most 2^-11 of their size.
    // Where the matrices are floats that moves these logits (order 1e-1..1e1) by under 1e-2.
    // Quantized matrices (Q8_0, Q4_K) quantize their input to 8 bits per value first, so a
    // change that small can move an input by a whole step (1/127 of its block's largest value):
    // the same happens between any two ways of computing attention, and the logits then differ
    // by up to a few per cent of their range. The greedy choices stay the same on every fixture.
    const FLOAT_TOLERANCE: f32 = 1e-2;
    const QUANTIZED_SHARE: f32 = 0.05;
    let mut files: Vec<_> = std::fs::read_dir(own_fixture(""))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    for path in files {
        let (mut model, gguf) = Llama::load(&path, &Device::Cpu, Some(256)).unwrap();
        let float_matrices = gguf
            .tensors
            .iter()
            .filter(|t| t.dims.len() == 2)
            .all(|t| matches!(t.ggml_type.name(), "F32" | "F16" | "BF16"));
        let vocab = model.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..40u32).map(|i| (i * 7919 + 3) % vocab).collect();
        let (f32_rows, f32_tokens) = greedy_run(&mut model, KvType::F32, &prompt, 24);
        let (f16_rows, f16_tokens) = greedy_run(&mut model, KvType::F16, &prompt, 24);
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(f16_tokens, f32_tokens, "{name}: greedy tokens");
        let worst = f16_rows
            .iter()
            .zip(&f32_rows)
            .map(|(a, b)| max_difference(a, b))
            .fold(0.0, f32::max);
        let range = f32_rows
            .iter()
            .flatten()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        eprintln!("{name}: max |Δ| between F16 and F32 KV logits = {worst} (max |logit| {range})");
        let tolerance = if float_matrices {
            FLOAT_TOLERANCE
        } else {
            QUANTIZED_SHARE * range
        };
        assert!(
            worst < tolerance,
            "{name}: max |Δ| = {worst}, range {range}"
        );
    }
}
