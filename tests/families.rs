//! The other model families — Qwen2.5-Coder (`qwen2`), StarCoder2, CodeGemma (`gemma`) and
//! DeepSeek-Coder (llama architecture, its own BPE pre-tokenizer and FIM tokens) — against
//! llama.cpp, on the project's tiny fixtures of each (`fixtures/codellama-lsp-tiny-*.gguf`):
//! tokenization, the infilling prompt, and greedy decoding wherever the top-2 margin decides.
//!
//! llama.cpp's answers are committed in `tests/data/families_llama_cpp.json`, so the comparison
//! runs everywhere. With a llama-server (`$LLAMA_SERVER`, as `.ci/run` builds it) the same checks
//! also run live; `CODELLAMA_WRITE_REFERENCE=1` rewrites the JSON from the live server.

mod support;

use std::path::{Path, PathBuf};

use candle_core::Device;
use codellama_lsp::fixtures::{Family, SAMPLE_CODE};
use codellama_lsp::model::tokenizer::Tokenizer;
use codellama_lsp::model::{LoadedModel, Vocabulary};
use codellama_lsp::prompt::{FimFamily, FimOrder, FimTemplate};
use serde_json::{Value, json};
use support::llama_server::{self, LlamaServer};

const REFERENCE: &str = "tests/data/families_llama_cpp.json";
/// Greedy steps compared per prompt.
const STEPS: usize = 16;
/// Below this top-1/top-2 logit gap a step is a near tie that float rounding may decide either
/// way (llama.cpp's kernels differ from candle's); such steps are not compared.
const MIN_GAP: f32 = 5e-3;

fn fixture(family: Family) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(family.file_name())
}

/// Texts whose tokens tell pre-tokenizers apart: code, whitespace runs, digits, contractions,
/// accents, CJK, emoji.
fn texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "def add(a, b):\n    return a + b\n",
        "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}\n",
        "   leading spaces and  double  spaces\n\n\n  after blank lines",
        "numbers 12345 3.14159 1e-9 0xFF 1_000_000",
        "don't won't it's we'll I'd THEY'RE",
        "héllo wörld ñ façade Ελληνικά",
        "你好世界 こんにちは 안녕하세요",
        "emoji 🦀🐍 ✓ → ≠",
        "\t\tif (x) {\r\n\t\t\ty();\r\n\t\t}",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    texts.extend(SAMPLE_CODE.split("\n\n\n").map(str::to_owned));
    texts
}

/// Prefix and suffix pairs for infilling prompts.
fn holes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("def fibonacci(n):\n    ", "\n    return result\n"),
        ("fn area(&self) -> f64 {\n    ", "\n}\n"),
        ("const total = items.", ";\nconsole.log(total);\n"),
    ]
}

struct FamilyVocab {
    family: Family,
    tokenizer: Tokenizer,
    template: FimTemplate,
}

fn load(family: Family) -> FamilyVocab {
    let vocabulary = Vocabulary::read(&fixture(family)).unwrap();
    let template = FimTemplate::detect(&vocabulary.tokenizer, &vocabulary.name).unwrap();
    FamilyVocab {
        family,
        tokenizer: vocabulary.tokenizer,
        template,
    }
}

fn expected_fim_family(family: Family) -> FimFamily {
    match family {
        Family::Qwen2 | Family::Gemma => FimFamily::QwenStyle,
        Family::Starcoder2 => FimFamily::StarCoder,
        Family::DeepSeekCoder => FimFamily::DeepSeekCoder,
    }
}

/// The prompts whose greedy continuations are compared: each hole's infilling prompt, and one
/// plain text prompt.
fn greedy_prompts(f: &FamilyVocab) -> Vec<Vec<u32>> {
    let mut prompts: Vec<Vec<u32>> = holes()
        .iter()
        .map(|(prefix, suffix)| {
            f.template
                .prompt(&f.tokenizer, prefix, suffix, FimOrder::Psm)
        })
        .collect();
    prompts.push(f.tokenizer.encode(
        "import os\nfrom pathlib import Path\n",
        f.tokenizer.add_bos_token(),
    ));
    prompts
}

/// Compares our model's greedy choices with `expected` ids, feeding the expected ids back in
/// (teacher forcing, so one near tie cannot derail the rest). Returns how many steps decided.
fn check_greedy(model: &LoadedModel, prompt: &[u32], expected: &[u32], what: &str) -> usize {
    let llama = &model.llama;
    let mut cache = llama.new_cache().unwrap();
    let mut logits = llama.forward(prompt, &mut cache, false).unwrap();
    let mut decided = 0;
    for (step, &id) in expected.iter().enumerate() {
        let row: Vec<f32> = logits.get(0).unwrap().to_vec1().unwrap();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let gap = row[order[0]] - row[order[1]];
        if gap >= MIN_GAP {
            assert_eq!(
                order[0] as u32, id,
                "{what}: step {step} of {expected:?} after {prompt:?} (gap {gap})"
            );
            decided += 1;
        }
        logits = llama.forward(&[id], &mut cache, false).unwrap();
    }
    decided
}

#[test]
fn every_family_loads_detects_its_template_and_generates() {
    for family in Family::ALL {
        let f = load(family);
        assert_eq!(f.template.family, expected_fim_family(family), "{family:?}");
        let model = LoadedModel::load(&fixture(family), &Device::Cpu, Some(256)).unwrap();
        assert_eq!(model.llama.config().architecture, family.architecture());
        let prompt = f
            .template
            .prompt(&f.tokenizer, "def add(a, b):\n    ", "\n", FimOrder::Psm);
        let mut cache = model.llama.new_cache().unwrap();
        let logits = model.llama.forward(&prompt, &mut cache, false).unwrap();
        let row: Vec<f32> = logits.get(0).unwrap().to_vec1().unwrap();
        assert_eq!(row.len(), f.tokenizer.vocab_size());
        assert!(row.iter().all(|x| x.is_finite()), "{family:?}");
    }
}

#[test]
fn every_family_matches_llama_cpp_by_the_committed_reference() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(REFERENCE)).unwrap(),
    )
    .unwrap();
    for family in Family::ALL {
        let entry = &reference[family.label()];
        assert!(
            entry.is_object(),
            "{REFERENCE} has no entry for {}",
            family.label()
        );
        let f = load(family);
        // Tokenization.
        let texts = texts();
        let expected_counts = (texts.len(), holes().len());
        let counts = (
            entry["tokens"].as_array().unwrap().len(),
            entry["infill"].as_array().unwrap().len(),
        );
        assert_eq!(
            counts, expected_counts,
            "{REFERENCE} is out of date: rewrite it with CODELLAMA_WRITE_REFERENCE=1 and a llama-server"
        );
        for (text, ids) in texts.iter().zip(entry["tokens"].as_array().unwrap()) {
            let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
            assert_eq!(f.tokenizer.encode(text, false), ids, "{family:?}: {text:?}");
        }
        // Infilling prompts: ours equal llama.cpp's pieces assembled by the template.
        for ((prefix, suffix), expected) in holes().iter().zip(entry["infill"].as_array().unwrap())
        {
            let expected: Vec<u32> = serde_json::from_value(expected.clone()).unwrap();
            assert_eq!(
                f.template
                    .prompt(&f.tokenizer, prefix, suffix, FimOrder::Psm),
                expected,
                "{family:?}: {prefix:?}"
            );
        }
        // Greedy decoding.
        let model = LoadedModel::load(&fixture(family), &Device::Cpu, Some(512)).unwrap();
        let mut decided = 0;
        for run in entry["greedy"].as_array().unwrap() {
            let prompt: Vec<u32> = serde_json::from_value(run["prompt"].clone()).unwrap();
            let ids: Vec<u32> = serde_json::from_value(run["ids"].clone()).unwrap();
            decided += check_greedy(&model, &prompt, &ids, &format!("{family:?}"));
        }
        assert!(
            decided >= 3 * STEPS,
            "{family:?}: only {decided} steps decided"
        );
    }
}

/// llama.cpp's answers for one family, asked live.
fn ask_llama_cpp(server: &LlamaServer, f: &FamilyVocab) -> Value {
    let tokenize = |text: &str| -> Vec<u32> {
        let (status, answer) =
            server.post("/tokenize", &json!({"content": text, "add_special": false}));
        assert_eq!(status, 200, "{answer}");
        serde_json::from_value(answer["tokens"].clone()).unwrap()
    };
    let tokens: Vec<Vec<u32>> = texts().iter().map(|text| tokenize(text)).collect();
    let bos: Vec<u32> = f
        .tokenizer
        .bos_id()
        .filter(|_| f.tokenizer.add_bos_token())
        .into_iter()
        .collect();
    let t = &f.template;
    let infill: Vec<Vec<u32>> = holes()
        .iter()
        .map(|(prefix, suffix)| {
            let mut ids = bos.clone();
            ids.push(t.prefix);
            ids.extend(tokenize(prefix));
            ids.push(t.suffix);
            ids.extend(tokenize(suffix));
            ids.push(t.middle);
            // llama.cpp's own /infill lays out a prompt of the same length.
            let (status, answer) = server.post(
                "/infill",
                &json!({"input_prefix": prefix, "input_suffix": suffix, "n_predict": 1}),
            );
            assert_eq!(status, 200, "{answer}");
            assert_eq!(
                answer["tokens_evaluated"].as_u64(),
                Some(ids.len() as u64),
                "{:?} /infill: {answer}",
                f.family
            );
            ids
        })
        .collect();
    let greedy: Vec<Value> = greedy_prompts(f)
        .into_iter()
        .map(|prompt| {
            let (status, answer) = server.post(
                "/completion",
                &json!({"prompt": prompt, "n_predict": STEPS, "temperature": 0, "top_k": 1,
                        "return_tokens": true, "ignore_eos": false, "cache_prompt": false}),
            );
            assert_eq!(status, 200, "{answer}");
            json!({"prompt": prompt, "ids": answer["tokens"]})
        })
        .collect();
    json!({"tokens": tokens, "infill": infill, "greedy": greedy})
}

#[test]
fn every_family_matches_a_live_llama_server() {
    let Some(binary) = llama_server::binary() else {
        return;
    };
    let mut reference = serde_json::Map::new();
    for family in Family::ALL {
        let f = load(family);
        let server = LlamaServer::start(&binary, &fixture(family));
        let answers = ask_llama_cpp(&server, &f);
        drop(server);
        for (text, ids) in texts().iter().zip(answers["tokens"].as_array().unwrap()) {
            let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
            assert_eq!(f.tokenizer.encode(text, false), ids, "{family:?}: {text:?}");
        }
        for ((prefix, suffix), ids) in holes().iter().zip(answers["infill"].as_array().unwrap()) {
            let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
            assert_eq!(
                f.template
                    .prompt(&f.tokenizer, prefix, suffix, FimOrder::Psm),
                ids,
                "{family:?}"
            );
        }
        let model = LoadedModel::load(&fixture(family), &Device::Cpu, Some(512)).unwrap();
        for run in answers["greedy"].as_array().unwrap() {
            let prompt: Vec<u32> = serde_json::from_value(run["prompt"].clone()).unwrap();
            let ids: Vec<u32> = serde_json::from_value(run["ids"].clone()).unwrap();
            check_greedy(&model, &prompt, &ids, &format!("{family:?} live"));
        }
        reference.insert(family.label().to_owned(), answers);
    }
    if std::env::var_os("CODELLAMA_WRITE_REFERENCE").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(REFERENCE);
        let text = serde_json::to_string(&Value::Object(reference)).unwrap();
        std::fs::write(&path, text + "\n").unwrap();
        eprintln!("wrote {}", path.display());
    }
}
