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

/// SplitMix64: tiny, deterministic, good enough for generating test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
