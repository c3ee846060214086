//! Golden infilling prompts: document with a `<FILL_ME>` cursor in, prompt ids out, for PSM and
//! SPM. The expected ids in `tests/data/infill_golden.json` come from llama.cpp's tokenizer
//! assembled per Meta's reference (`tools/infill_golden.py`), not from our code.

mod support;

use std::path::{Path, PathBuf};

use codellama_lsp::document::Document;
use codellama_lsp::model::gguf::GgufFile;
use codellama_lsp::model::tokenizer_for;
use codellama_lsp::prompt::{self, FimOrder, FimTemplate, WindowConfig};
use serde_json::Value;

fn model_path(spec: &str) -> Option<PathBuf> {
    match spec.split_once(':') {
        Some(("shared", name)) => support::shared_fixture(name),
        Some(("own", name)) => Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures")
                .join(name),
        ),
        _ => panic!("bad model spec {spec}"),
    }
}

#[test]
fn prompts_equal_llama_cpp_tokenization_in_both_orders() {
    let golden: Value =
        serde_json::from_str(include_str!("data/infill_golden.json")).expect("valid golden file");
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let Some(path) = model_path(case["model"].as_str().unwrap()) else {
            continue;
        };
        let gguf = GgufFile::read(&path).unwrap();
        let tokenizer = tokenizer_for(&gguf).unwrap();
        let template = FimTemplate::detect(&tokenizer, "test").unwrap();
        let input = case["input"].as_str().unwrap();
        let (before, after) = input.split_once("<FILL_ME>").unwrap();
        let text = format!("{before}{after}");
        let document = Document::new(&text, 1, "text");
        let cursor = before.chars().count();
        // A budget far above these inputs: the whole document is the window.
        let window = WindowConfig::default();
        for (order, key) in [(FimOrder::Psm, "psm"), (FimOrder::Spm, "spm")] {
            let built = prompt::infill(
                &tokenizer,
                &template,
                document.rope(),
                cursor,
                order,
                &window,
            );
            let expected: Vec<u32> = serde_json::from_value(case[key].clone()).unwrap();
            assert_eq!(built.ids, expected, "{} {key} {input:?}", case["model"]);
            checked += 1;
        }
    }
    eprintln!("checked {checked} golden prompts");
}
