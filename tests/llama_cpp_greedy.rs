//! Greedy generation equals llama.cpp's, token for token, on the shared tiny models.
//!
//! `tests/data/llama_cpp_greedy.json` holds llama.cpp's greedy ids (24 steps, EOS not treated as a
//! stop) for a few prompts; every step was decidable (top-1/top-2 logit gap ≥ 2.5e-4, recorded
//! as `min_gap`), so an exact match is the right bar.

mod support;

use candle_core::Device;
use codellama_lsp::model::Llama;
use codellama_lsp::model::sampling::argmax;
use serde_json::Value;

#[test]
fn greedy_ids_equal_llama_cpp() {
    let golden: Value = serde_json::from_str(include_str!("data/llama_cpp_greedy.json")).unwrap();
    let mut runs = 0;
    for model in golden["models"].as_array().unwrap() {
        let Some(path) = support::shared_fixture(model["file"].as_str().unwrap()) else {
            return;
        };
        let (llama, _) = Llama::load(&path, &Device::Cpu, Some(128)).unwrap();
        for run in model["runs"].as_array().unwrap() {
            let prompt: Vec<u32> = serde_json::from_value(run["prompt"].clone()).unwrap();
            let expected: Vec<u32> = serde_json::from_value(run["ids"].clone()).unwrap();
            let mut cache = llama.new_cache().unwrap();
            let mut logits = llama.forward(&prompt, &mut cache, false).unwrap();
            let mut ids = Vec::new();
            for _ in 0..expected.len() {
                let row: Vec<f32> = logits.get(0).unwrap().to_vec1().unwrap();
                let id = argmax(&row);
                ids.push(id);
                logits = llama.forward(&[id], &mut cache, false).unwrap();
            }
            assert_eq!(ids, expected, "{} {prompt:?}", model["file"]);
            runs += 1;
        }
    }
    assert!(runs >= 10, "only {runs} runs checked");
}
