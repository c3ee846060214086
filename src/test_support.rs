//! Helpers shared by the unit tests: locating the shared fixtures and a deterministic PRNG.

use std::path::{Path, PathBuf};

/// The shared fixtures folder: `$CODELLAMA_SHARED_FIXTURES` if set, else `../shared/fixtures`
/// next to the crate. `None` when neither exists (e.g. on a fresh clone).
pub fn fixtures_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CODELLAMA_SHARED_FIXTURES") {
        let p = PathBuf::from(p);
        if p.is_dir() {
            return Some(p);
        }
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("shared")
        .join("fixtures");
    p.is_dir().then_some(p)
}

/// Path of a fixture file, or `None` (after printing why) when it is not available.
pub fn fixture(name: &str) -> Option<PathBuf> {
    match fixtures_dir() {
        Some(dir) if dir.join(name).is_file() => Some(dir.join(name)),
        Some(dir) => {
            eprintln!("skipping: fixture {name} not found in {}", dir.display());
            None
        }
        None => {
            eprintln!(
                "skipping: shared fixtures not found (no ../shared/fixtures next to the crate, \
                 and CODELLAMA_SHARED_FIXTURES is unset or not a folder)"
            );
            None
        }
    }
}

/// Returns the fixture's path, or returns from the calling test (a skip) when it is absent.
macro_rules! require_fixture {
    ($name:expr) => {
        match $crate::test_support::fixture($name) {
            Some(p) => p,
            None => return,
        }
    };
}
pub(crate) use require_fixture;

/// A deterministic generator for test inputs (the fixtures' generator).
pub use crate::fixtures::SplitMix64 as Rng;

/// The tokenizer of the project's own Code-Llama-shaped fixture (committed in `fixtures/`, so
/// always present): Llama 2's vocabulary plus the 16 Code Llama pieces.
pub fn fixture_tokenizer() -> crate::model::tokenizer::Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("codellama-lsp-tiny-q8_0.gguf");
    let file = crate::model::gguf::GgufFile::read(&path).expect("the committed fixture reads");
    crate::model::tokenizer::Tokenizer::from_gguf(&file).expect("its tokenizer loads")
}

/// The largest absolute difference between two equally long slices (logits, activations).
pub fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "slices of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
