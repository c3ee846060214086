//! One generation: bring the KV cache to the prompt (reusing the longest common prefix,
//! evaluating the rest in chunks), then sample until a stop condition, streaming text.
//!
//! Cancellation is cooperative: `should_stop` is asked between prefill chunks and between
//! generated tokens, so a cancel takes effect within one token.

use std::time::{Duration, Instant};

use super::ModelError;
use super::kv_cache::KvCache;
use super::loaded::LoadedModel;
use super::sampling::{Sampler, SamplingParams};

/// Prompt tokens evaluated per forward call: large enough for efficient matmuls, small enough
/// that a cancel during a long prefill is noticed quickly.
pub const PREFILL_CHUNK: usize = 256;

#[derive(Clone, Debug, Default)]
pub struct GenerationRequest {
    /// The whole prompt, as token ids (BOS included where the model wants it).
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the generation; it is not included in the output.
    pub stop_strings: Vec<String>,
    /// Tokens that end the generation besides the model's own (e.g. a chat template's end of
    /// turn); they are not included in the output.
    pub stop_tokens: Vec<u32>,
    /// Return what is ready at this instant.
    pub deadline: Option<Instant>,
    /// Size prompt chunks to take about this long, so that `should_stop` is asked at least this
    /// often during the prefill (for work that must yield quickly to more urgent work).
    pub prefill_slice: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence or end-of-text token.
    EndOfText,
    StopString,
    MaxTokens,
    /// The context is full.
    ContextFull,
    Deadline,
    /// `should_stop` said so (a cancel or a newer request).
    Stopped,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// Generated ids, prompt excluded (a stop token is not included).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the KV cache and not evaluated again.
    pub reused_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Runs one generation. `on_text` receives text as it becomes final (never text that could still
/// turn out to be part of a stop string, never half a UTF-8 character). `should_stop` is asked
/// between prefill chunks and between tokens (it may do other work before answering: the engine
/// serves completions from there while an assist job is paused).
pub fn generate(
    model: &LoadedModel,
    cache: &mut KvCache,
    request: &GenerationRequest,
    should_stop: &mut dyn FnMut() -> bool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, ModelError> {
    let start = Instant::now();
    let prompt = &request.prompt;
    if prompt.is_empty() {
        return Err(ModelError::Invalid {
            file: String::new(),
            problem: "the prompt is empty".into(),
        });
    }
    let capacity = cache.capacity().min(model.llama.max_positions());
    if prompt.len() > capacity {
        return Err(ModelError::ContextFull {
            needed: prompt.len(),
            capacity,
        });
    }
    // Keep at least the last prompt token to evaluate: its logits are not cached.
    let reused = cache.common_prefix(prompt).min(prompt.len() - 1);
    cache.truncate(reused);
    let mut generation = Generation {
        ids: Vec::new(),
        text: String::new(),
        finish: FinishReason::MaxTokens,
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        prefill_ms: 0.0,
        decode_ms: 0.0,
    };
    let mut interrupted = |deadline: Option<Instant>| -> Option<FinishReason> {
        if should_stop() {
            Some(FinishReason::Stopped)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(FinishReason::Deadline)
        } else {
            None
        }
    };

    let mut logits = None;
    let mut pace = cache.prefill_pace;
    let mut at = reused;
    while at < prompt.len() {
        if let Some(reason) = interrupted(request.deadline) {
            generation.finish = reason;
            generation.prefill_ms = millis(start.elapsed());
            return Ok(generation);
        }
        // Near the deadline the chunks shrink to what still fits, so a cut prefill returns on
        // time rather than one whole chunk late.
        let left = request
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let remaining = prompt.len() - at;
        let Some(mut size) = pace.next_chunk(left, remaining) else {
            generation.finish = FinishReason::Deadline;
            generation.prefill_ms = millis(start.elapsed());
            return Ok(generation);
        };
        if let Some(slice) = request.prefill_slice {
            size = size.min(pace.chunk_taking(slice));
        }
        let end = (at + size).min(prompt.len());
        let began = Instant::now();
        logits = Some(model.llama.forward(&prompt[at..end], cache, false)?);
        pace.record(end - at, began.elapsed());
        cache.prefill_pace = pace;
        at = end;
    }
    let prefill_end = Instant::now();
    generation.prefill_ms = millis(prefill_end - start);

    let mut sampler = Sampler::new(request.sampling.clone());
    let mut decoder = model.tokenizer.stream_decoder();
    let mut history = prompt.clone();
    let mut output = OutputText::new(&request.stop_strings);
    let finish = loop {
        if generation.ids.len() >= request.max_new_tokens {
            break FinishReason::MaxTokens;
        }
        let Some(current) = logits.take() else {
            break FinishReason::MaxTokens;
        };
        let row = current
            .squeeze(0)
            .and_then(|row| row.to_vec1::<f32>())
            .map_err(|error| ModelError::candle("reading logits", error))?;
        let token = sampler.sample(&row, &history);
        if model.stop_tokens.contains(&token) || request.stop_tokens.contains(&token) {
            break FinishReason::EndOfText;
        }
        generation.ids.push(token);
        history.push(token);
        if output.push(&decoder.push(token), on_text) {
            break FinishReason::StopString;
        }
        if generation.ids.len() >= request.max_new_tokens {
            break FinishReason::MaxTokens;
        }
        if cache.len() >= capacity {
            break FinishReason::ContextFull;
        }
        if let Some(reason) = interrupted(request.deadline) {
            break reason;
        }
        logits = Some(model.llama.forward(&[token], cache, false)?);
    };
    let tail = if finish == FinishReason::StopString {
        String::new()
    } else {
        decoder.finish()
    };
    generation.text = output.finish(&tail, on_text);
    generation.finish = finish;
    generation.decode_ms = millis(prefill_end.elapsed());
    Ok(generation)
}

/// The share of the time left before a deadline that the next prefill chunk is sized to take.
const DEADLINE_MARGIN: f64 = 0.75;

/// The smallest prefill chunk worth a forward call.
const MIN_PREFILL_CHUNK: usize = 16;

/// How fast prefill goes, to size chunks so that a deadline cuts between them in time.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefillPace {
    /// Seconds per prompt token, from the chunks evaluated so far.
    seconds_per_token: Option<f64>,
}

impl PrefillPace {
    pub fn record(&mut self, tokens: usize, took: Duration) {
        // A keystroke's one or two tokens cost mostly the fixed part of a forward call (reading
        // every weight): they say nothing about the pace of a chunk.
        if tokens >= MIN_PREFILL_CHUNK {
            let pace = took.as_secs_f64() / tokens as f64;
            // Recent chunks count most (the cache grows, so later tokens cost a little more).
            self.seconds_per_token = Some(match self.seconds_per_token {
                Some(previous) => 0.5 * previous + 0.5 * pace,
                None => pace,
            });
        }
    }

    /// About how many tokens a chunk taking `time` holds (at least a minimal chunk; before
    /// anything was measured, a small probe).
    pub fn chunk_taking(&self, time: Duration) -> usize {
        let Some(pace) = self.seconds_per_token else {
            return MIN_PREFILL_CHUNK * 2;
        };
        let fits = (time.as_secs_f64() / pace.max(1e-9)) as usize;
        fits.clamp(MIN_PREFILL_CHUNK, PREFILL_CHUNK)
    }

    /// The next chunk's size with `left` time before the deadline (`None`: no deadline) and
    /// `remaining` prompt tokens, or `None` when not even a minimal chunk (or the rest, if
    /// smaller) fits any more. Before anything was measured the first chunk is a small probe.
    pub fn next_chunk(&self, left: Option<Duration>, remaining: usize) -> Option<usize> {
        let Some(left) = left else {
            return Some(PREFILL_CHUNK);
        };
        let Some(pace) = self.seconds_per_token else {
            return Some(MIN_PREFILL_CHUNK * 2);
        };
        // Plan for a quarter less than is left: chunk times vary (a busy machine, a longer
        // context), and a chunk that ends after the deadline makes the answer late.
        let fits = (left.as_secs_f64() * DEADLINE_MARGIN / pace.max(1e-9)) as usize;
        if fits < MIN_PREFILL_CHUNK.min(remaining) {
            return None;
        }
        Some(fits.min(PREFILL_CHUNK))
    }
}

/// Generated text as it grows: cut at the first stop string, and released to `on_text` only
/// once no stop string can still begin in it (and never inside a character). Local and remote
/// generations share it, so both stop and stream alike.
pub struct OutputText<'s> {
    text: String,
    emitted: usize,
    hold_back: usize,
    stops: &'s [String],
    stopped: bool,
}

impl<'s> OutputText<'s> {
    pub fn new(stops: &'s [String]) -> Self {
        let hold_back = stops.iter().map(String::len).max().unwrap_or(1);
        Self {
            text: String::new(),
            emitted: 0,
            hold_back: hold_back.saturating_sub(1),
            stops,
            stopped: false,
        }
    }

    /// Adds `piece`; returns true when a stop string was found (the text ends before it, and
    /// later pieces are ignored).
    pub fn push(&mut self, piece: &str, on_text: &mut dyn FnMut(&str)) -> bool {
        if self.stopped {
            return true;
        }
        self.text.push_str(piece);
        if let Some(cut) = find_stop(&self.text, self.stops, self.emitted) {
            self.text.truncate(cut);
            self.stopped = true;
            return true;
        }
        let safe = floor_char_boundary(&self.text, self.text.len().saturating_sub(self.hold_back));
        if safe > self.emitted {
            on_text(&self.text[self.emitted..safe]);
            self.emitted = safe;
        }
        false
    }

    /// Adds the last `tail` (text a decoder held back), releases everything and returns the
    /// whole text.
    pub fn finish(mut self, tail: &str, on_text: &mut dyn FnMut(&str)) -> String {
        if !self.stopped {
            self.text.push_str(tail);
            if let Some(cut) = find_stop(&self.text, self.stops, self.emitted) {
                self.text.truncate(cut);
            }
        }
        if self.text.len() > self.emitted {
            on_text(&self.text[self.emitted..]);
        }
        self.text
    }
}

/// The byte offset of the earliest stop string that ends after `from` (text before `from` was
/// already checked and emitted; a stop string may start a little before it).
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|stop| !stop.is_empty())
        .filter_map(|stop| {
            let begin = floor_char_boundary(text, from.saturating_sub(stop.len()));
            text[begin..].find(stop.as_str()).map(|at| begin + at)
        })
        .min()
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_chunks_shrink_to_what_fits_before_the_deadline() {
        let mut pace = PrefillPace::default();
        assert_eq!(pace.next_chunk(None, 1000), Some(PREFILL_CHUNK));
        // Unmeasured: a small probe first.
        assert_eq!(
            pace.next_chunk(Some(Duration::from_secs(1)), 1000),
            Some(32)
        );
        pace.record(2, Duration::from_millis(40)); // a keystroke: not a prefill pace
        assert_eq!(
            pace.next_chunk(Some(Duration::from_secs(1)), 1000),
            Some(32)
        );
        pace.record(32, Duration::from_millis(32)); // 1 ms a token
        let ms = Duration::from_millis;
        assert_eq!(pace.next_chunk(Some(ms(10_000)), 1000), Some(PREFILL_CHUNK));
        // A quarter of the time left is kept as a margin.
        assert_eq!(pace.next_chunk(Some(ms(100)), 1000), Some(75));
        assert_eq!(pace.next_chunk(Some(ms(10)), 1000), None);
        // The last few tokens still go in if they fit.
        assert_eq!(pace.next_chunk(Some(ms(12)), 8), Some(9));
        assert_eq!(pace.next_chunk(Some(ms(10)), 8), None);
        assert_eq!(pace.next_chunk(None, 1000), Some(PREFILL_CHUNK));
        // Slices of yielding work have no margin, and never go below a minimal chunk.
        assert_eq!(pace.chunk_taking(ms(50)), 50);
        assert_eq!(pace.chunk_taking(ms(5)), MIN_PREFILL_CHUNK);
        assert_eq!(pace.chunk_taking(ms(10_000)), PREFILL_CHUNK);
    }

    /// The next generation in a cache sizes its first chunk from the pace measured before, so a
    /// keystroke that continues an unfinished prefill does not start with a small probe again.
    #[test]
    fn a_cache_keeps_its_prefill_pace_for_the_next_generation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(crate::fixtures::Variant::F16.file_name());
        let model = LoadedModel::load(&path, &candle_core::Device::Cpu, Some(512)).unwrap();
        let mut cache = model.llama.new_cache().unwrap();
        assert!(cache.prefill_pace.seconds_per_token.is_none());
        let mut prompt: Vec<u32> = (0..40).map(|i| 300 + i).collect();
        let request = |prompt: &[u32]| GenerationRequest {
            prompt: prompt.to_vec(),
            max_new_tokens: 1,
            deadline: Some(Instant::now() + Duration::from_secs(600)),
            ..GenerationRequest::default()
        };
        let run = |cache: &mut KvCache, prompt: &[u32]| {
            generate(&model, cache, &request(prompt), &mut || false, &mut |_| {}).unwrap();
        };
        run(&mut cache, &prompt);
        let measured = cache.prefill_pace.seconds_per_token;
        assert!(measured.is_some());
        // A keystroke's token or two are no chunk: the pace stays what it was.
        prompt.push(262);
        run(&mut cache, &prompt);
        assert_eq!(cache.prefill_pace.seconds_per_token, measured);
    }

    #[test]
    fn stop_strings_are_found_across_the_emitted_border() {
        let stops = vec!["\n\n".to_owned(), "```".to_owned()];
        assert_eq!(find_stop("abc\n\nd", &stops, 4), Some(3));
        assert_eq!(find_stop("x = 1``", &stops, 0), None);
        assert_eq!(find_stop("x = 1```", &stops, 7), Some(5));
        assert_eq!(find_stop("é😀\n\n", &stops, 6), Some(6));
    }
}
