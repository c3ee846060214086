//! The forward pass against candle-transformers' `quantized_llama` (the reference), and KV-cache
//! reuse against evaluation from scratch.
//!
//! Tolerance: 1e-4 absolute on logits. Both run the same candle kernels on the same weights, so
//! differences come only from operation order (our grouped attention, chunking); the random tiny
//! models give logits of order 1e-1..1e1.

mod support;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use codellama_lsp::model::Llama;

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
        let (model, _) = Llama::load(&path, &Device::Cpu, Some(256)).unwrap();
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
