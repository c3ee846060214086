//! The remote backend: an inference server that runs the model (llama.cpp's `llama-server`, vLLM,
//! or any OpenAI-compatible `/v1/completions`), fed the prompts this program builds.
//!
//! Everything above the engine is shared with the local path: the same window, template and
//! token ids, the same post-processing. Only the last step differs: instead of a forward pass on
//! this machine, the ids (or, for servers that only take text, the prompt's text) go over HTTP and
//! the answer streams back. `config` says which server; `protocol` is the pure part (request
//! bodies, server-sent events, answers); `client` runs the requests.

mod client;
mod config;
pub mod protocol;

pub(crate) use client::start_worker;
pub use client::{ServerFacts, probe, vocabulary_mismatch};
pub use config::{BackendChoice, BackendLayer, RemoteKind, RemoteSpec};

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets something through at most once per `every` (the first time at once): for messages about
/// a failing server, which would otherwise pop up on every keystroke.
#[derive(Debug)]
pub struct OncePer {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl OncePer {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// True when the last `true` was at least `every` before `now` (or there was none).
    pub fn allow(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(then) if now.saturating_duration_since(then) < self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_minute_lets_the_first_through_then_waits() {
        let limit = OncePer::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(limit.allow(start));
        assert!(!limit.allow(start + Duration::from_secs(1)));
        assert!(!limit.allow(start + Duration::from_secs(59)));
        assert!(limit.allow(start + Duration::from_secs(60)));
        assert!(!limit.allow(start + Duration::from_secs(61)));
    }
}
