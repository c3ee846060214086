//! Broken model files end in a clear error that names the file: never a panic, never a huge
//! allocation. (Header-level fuzzing of the GGUF reader lives in its unit tests; this exercises
//! the whole load path: header, hyper-parameters, tokenizer, tensors.)

use std::path::{Path, PathBuf};

use candle_core::Device;
use codellama_lsp::fixtures::{SplitMix64, Variant};
use codellama_lsp::model::LoadedModel;
use codellama_lsp::model::gguf::{GgufFile, Value};

fn fixture_bytes() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(Variant::Q8_0.file_name());
    std::fs::read(path).unwrap()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "codellama-lsp-corrupt-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Loads `bytes` as a model file; returns the error text, or `None` if it loaded.
    fn load(&self, bytes: &[u8]) -> Option<String> {
        let path = self.0.join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        let outcome =
            std::panic::catch_unwind(|| LoadedModel::load(&path, &Device::Cpu, Some(64)).map(drop));
        match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => panic!("loading panicked; file saved at {}", path.display()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn truncation_anywhere_is_a_clear_error() {
    let bytes = fixture_bytes();
    let scratch = Scratch::new("truncate");
    let mut offsets: Vec<usize> = (0..4096).step_by(61).collect();
    offsets.extend((4096..bytes.len()).step_by(bytes.len() / 60));
    offsets.extend(bytes.len() - 40..bytes.len());
    for offset in offsets {
        let error = scratch
            .load(&bytes[..offset])
            .unwrap_or_else(|| panic!("loaded a file cut at {offset}"));
        assert!(
            error.contains("model.gguf"),
            "the error at {offset} does not name the file: {error}"
        );
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = fixture_bytes();
    let header_end = GgufFile::parse(&bytes, "fixture").unwrap().data_offset as usize;
    let scratch = Scratch::new("flip");
    let mut rng = SplitMix64::new(42);
    let mut loaded = 0;
    for _ in 0..150 {
        let mut corrupt = bytes.clone();
        let at = rng.below(header_end as u64) as usize;
        corrupt[at] ^= 1 << rng.below(8);
        if scratch.load(&corrupt).is_none() {
            loaded += 1; // a flip inside a token string or a score can leave a valid file
        }
    }
    assert!(loaded < 150, "no flip was ever detected");
}

/// Rewrites the fixture with some metadata replaced.
fn with_metadata(changes: &[(&str, Value)]) -> Vec<u8> {
    let bytes = fixture_bytes();
    let file = GgufFile::parse(&bytes, "fixture").unwrap();
    let mut writer = codellama_lsp::model::gguf::GgufWriter::new();
    for (key, value) in file.metadata.iter() {
        writer.add(key, value.clone());
    }
    for (key, value) in changes {
        writer.add(*key, value.clone());
    }
    for tensor in &file.tensors {
        let data = file.tensor_data(&bytes, tensor).unwrap().to_vec();
        writer
            .add_tensor(tensor.name.clone(), &tensor.dims, tensor.ggml_type, data)
            .unwrap();
    }
    writer.to_bytes().unwrap()
}

#[test]
fn contradictory_or_absurd_hyper_parameters_are_rejected_before_allocating() {
    let scratch = Scratch::new("params");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "llama.block_count",
            Value::U32(1000),
            "blk.2.attn_norm.weight' is missing",
        ),
        (
            "llama.embedding_length",
            Value::U32(1 << 30),
            "out of range",
        ),
        (
            "llama.embedding_length",
            Value::U32(64),
            "token_embd.weight has shape",
        ),
        (
            "llama.attention.head_count",
            Value::U32(3),
            "not a multiple",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(4),
            "blk.0.attn_k.weight' has shape",
        ),
        (
            "llama.feed_forward_length",
            Value::U32(1 << 20),
            "ffn_gate.weight' has shape",
        ),
        (
            "llama.rope.freq_base",
            Value::F32(f32::NAN),
            "not a positive number",
        ),
        ("llama.context_length", Value::U32(u32::MAX), "out of range"),
        (
            "general.architecture",
            Value::String("mamba".into()),
            "architecture 'mamba' is not supported",
        ),
        (
            "tokenizer.ggml.model",
            Value::String("gpt2".into()),
            "tokenizer",
        ),
    ];
    for (key, value, expected) in cases {
        // `models verify` refuses what loading refuses, with the same reason.
        let verify_path = scratch.0.join("verify.gguf");
        std::fs::write(&verify_path, with_metadata(&[(key, value.clone())])).unwrap();
        let verify = std::process::Command::new(env!("CARGO_BIN_EXE_codellama-lsp"))
            .args(["models", "verify"])
            .arg(&verify_path)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert_eq!(
            verify.status.code(),
            Some(1),
            "verify accepted {key} = {value:?}: {stderr}"
        );
        assert!(stderr.contains(expected), "verify of {key}: {stderr}");
        let error = scratch
            .load(&with_metadata(&[(key, value.clone())]))
            .unwrap_or_else(|| panic!("{key} = {value:?} loaded"));
        assert!(error.contains(expected), "{key} = {value:?}: {error}");
    }
}
