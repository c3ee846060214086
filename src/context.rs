//! Workspace context for completions: a bounded ring of chunks from other files (open in the
//! editor, or changed on disk), and the few most similar to the code around the cursor, to put
//! in front of the infilling prompt. Pure: text in, text out.
//!
//! Similarity is the Jaccard index of identifier sets (cheap, and it is what finds "the file
//! that defines the function I am calling"). Picked chunks are laid out oldest first, so the
//! start of the prompt stays the same from one keystroke to the next and the KV cache keeps it.

use std::collections::{HashSet, VecDeque};

/// Lines per chunk.
const CHUNK_LINES: usize = 32;
/// Longest chunk kept, in bytes (longer ones are cut at a line).
const CHUNK_BYTES: usize = 3000;
/// Files larger than this are not chunked (generated or data files, mostly).
pub const MAX_FILE_BYTES: usize = 512 * 1024;
/// Chunks below this similarity are noise.
const MIN_SIMILARITY: f32 = 0.05;

#[derive(Clone, Debug)]
pub struct Chunk {
    /// Where it comes from, as shown to the model (a file name or workspace-relative path).
    pub source: String,
    pub text: String,
    identifiers: HashSet<String>,
    /// When it was added (a counter): older chunks go first in prompts.
    added: u64,
}

/// The most recent chunks of the most recently seen files, at most `capacity` of them.
#[derive(Debug)]
pub struct ChunkRing {
    chunks: VecDeque<Chunk>,
    capacity: usize,
    clock: u64,
}

impl Default for ChunkRing {
    fn default() -> Self {
        Self::new(64)
    }
}

impl ChunkRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            capacity,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// A counter that changes whenever the ring does (to know when a pick is stale).
    pub fn generation(&self) -> u64 {
        self.clock
    }

    /// Replaces `source`'s chunks with those of `text` (its current content). The oldest chunks
    /// of other files make room.
    pub fn add_file(&mut self, source: &str, text: &str) {
        self.chunks.retain(|chunk| chunk.source != source);
        self.clock += 1;
        if text.len() > MAX_FILE_BYTES {
            return;
        }
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for group in lines.chunks(CHUNK_LINES) {
            let mut chunk = String::new();
            for line in group {
                if chunk.len() + line.len() > CHUNK_BYTES {
                    break;
                }
                chunk.push_str(line);
            }
            let identifiers = identifiers(&chunk);
            // Blank or trivial chunks (imports of two names, closing braces) add nothing.
            if identifiers.len() < 4 {
                continue;
            }
            self.chunks.push_back(Chunk {
                source: source.to_owned(),
                text: chunk,
                identifiers,
                added: self.clock,
            });
        }
        while self.chunks.len() > self.capacity {
            self.chunks.pop_front();
        }
    }

    pub fn remove_file(&mut self, source: &str) {
        self.chunks.retain(|chunk| chunk.source != source);
        self.clock += 1;
    }

    /// The chunks most similar to `query`, from files other than `exclude`, within `max_bytes`,
    /// in the order they were added (stable across keystrokes).
    pub fn pick(&self, query: &str, exclude: &str, max_bytes: usize) -> Vec<&Chunk> {
        let wanted = identifiers(query);
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut scored: Vec<(f32, &Chunk)> = self
            .chunks
            .iter()
            .filter(|chunk| chunk.source != exclude)
            .map(|chunk| (jaccard(&wanted, &chunk.identifiers), chunk))
            .filter(|(score, _)| *score >= MIN_SIMILARITY)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut picked = Vec::new();
        let mut used = 0;
        for (_, chunk) in scored {
            if used + chunk.text.len() > max_bytes {
                continue;
            }
            used += chunk.text.len();
            picked.push(chunk);
        }
        picked.sort_by_key(|chunk| chunk.added);
        picked
    }
}

/// The picked chunks as text for the start of a prompt, each under a comment naming its file.
pub fn render(chunks: &[&Chunk], line_comment: &str) -> String {
    let mut text = String::new();
    for chunk in chunks {
        text.push_str(&format!("{line_comment} From {}:\n", chunk.source));
        text.push_str(&chunk.text);
        if !chunk.text.ends_with('\n') {
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// Identifiers of three characters or more: what code shares with the code it uses.
fn identifiers(text: &str) -> HashSet<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|word| word.len() >= 3 && !word.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f32 {
    let shared = a.intersection(b).count();
    let union = a.len() + b.len() - shared;
    if union == 0 {
        0.0
    } else {
        shared as f32 / union as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BILLING: &str = "def compute_invoice_total(items, tax_rate):\n    subtotal = sum(item.price * item.quantity for item in items)\n    return subtotal * (1 + tax_rate)\n";
    const WEATHER: &str = "def fetch_weather(city):\n    response = requests.get(WEATHER_URL, params={'city': city})\n    return response.json()\n";

    #[test]
    fn the_file_that_defines_what_the_cursor_uses_is_picked() {
        let mut ring = ChunkRing::new(8);
        ring.add_file("billing.py", BILLING);
        ring.add_file("weather.py", WEATHER);
        let query =
            "order = load_order()\ntotal = compute_invoice_total(order.items, order.tax_rate)";
        let picked = ring.pick(query, "main.py", 10_000);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].source, "billing.py");
        let text = render(&picked, "#");
        assert!(text.starts_with("# From billing.py:\ndef compute_invoice_total"));
        // The cursor's own file is never context for itself.
        assert!(ring.pick(query, "billing.py", 10_000).is_empty());
    }

    #[test]
    fn the_ring_is_bounded_and_files_are_replaced_not_duplicated() {
        let mut ring = ChunkRing::new(4);
        let long: String = (0..400)
            .map(|i| format!("value_{i} = compute_thing_{i}(alpha_{i}, beta_{i})\n"))
            .collect();
        ring.add_file("long.py", &long);
        assert_eq!(ring.len(), 4, "the newest chunks stay");
        ring.add_file("billing.py", BILLING);
        ring.add_file("billing.py", BILLING);
        assert_eq!(
            ring.chunks
                .iter()
                .filter(|c| c.source == "billing.py")
                .count(),
            1
        );
        ring.remove_file("billing.py");
        assert!(ring.chunks.iter().all(|c| c.source != "billing.py"));
        ring.add_file("huge.py", &"x = 1\n".repeat(MAX_FILE_BYTES));
        assert!(ring.chunks.iter().all(|c| c.source != "huge.py"));
        assert!(ring.chunks.iter().all(|c| c.text.len() <= CHUNK_BYTES));
    }

    #[test]
    fn picks_fit_the_budget_and_keep_their_order_of_arrival() {
        let mut ring = ChunkRing::new(8);
        ring.add_file("billing.py", BILLING);
        ring.add_file("weather.py", WEATHER);
        let query = "compute_invoice_total(items, tax_rate) fetch_weather(city) response subtotal";
        let both = ring.pick(query, "main.py", 10_000);
        let sources: Vec<&str> = both.iter().map(|c| c.source.as_str()).collect();
        assert_eq!(sources, ["billing.py", "weather.py"]);
        assert_eq!(ring.pick(query, "main.py", BILLING.len()).len(), 1);
        assert!(ring.pick("", "main.py", 10_000).is_empty());
    }
}
