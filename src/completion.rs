//! Inline completion, from a document snapshot and a cursor to the text to insert.
//!
//! Cheapest answers first: a trigger that should not complete, the rest of the previous
//! suggestion when the user is typing it, a recent identical prompt; only then the model. The
//! LSP layer converts positions and results; nothing here knows LSP types.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ropey::Rope;

use crate::actions::Language;
use crate::context::ChunkRing;
use crate::document::Document;
use crate::engine::{JobKind, JobRequest, StopCause};
use crate::model::generate::GenerationRequest;
use crate::model::sampling::SamplingParams;
use crate::model::tokenizer::Tokenizer;
use crate::model_host::ModelHost;
use crate::postprocess;
use crate::prompt::{self, FimTemplate, WindowConfig};
use crate::settings::Settings;

/// Post-processes a raw middle generated at `cursor` of `document`, whose prompt held `suffix`.
pub fn finish_text(document: &Rope, cursor: usize, suffix: &str, raw: &str) -> Option<String> {
    let line = document.char_to_line(cursor);
    let line_before = document
        .slice(document.line_to_char(line)..cursor)
        .to_string();
    // The indentation style of the code around the cursor, not of the whole (maybe huge) file.
    let nearby: Vec<String> = (line.saturating_sub(200)..(line + 200).min(document.len_lines()))
        .map(|l| document.line(l).to_string())
        .collect();
    let (uses_tabs, tab_width) = postprocess::indentation_style(nearby.iter().map(String::as_str));
    let context = postprocess::Context {
        line_before: &line_before,
        suffix,
        uses_tabs,
        tab_width,
    };
    postprocess::completion(raw, &context)
}

pub struct CompletionRequest {
    pub uri: String,
    pub document: Document,
    /// Char index of the cursor.
    pub cursor: usize,
    /// Triggered by typing rather than asked for.
    pub automatic: bool,
    /// The other open documents, by URI: sources of workspace context.
    pub others: Vec<(String, Document)>,
}

/// A completion prompt, and the files its workspace context came from.
pub struct BuiltPrompt {
    pub prompt: prompt::InfillPrompt,
    pub context_sources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Insert this text at the cursor.
    Suggestion(String),
    /// Nothing to suggest (skipped trigger, no model yet, nothing useful generated).
    Nothing,
    /// A newer request for the same document took over.
    Superseded,
    /// The remote backend failed (down, slow, an HTTP error, a broken answer): nothing to
    /// suggest, and the reason for the user.
    BackendFailed(String),
}

/// How the answer was found, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    TypedAhead,
    Cache,
    Model,
}

/// The last suggestion shown for a document, to serve typed-ahead requests.
struct LastSuggestion {
    line: usize,
    line_before: String,
    text: String,
}

const CACHE_ENTRIES: usize = 64;

#[derive(Default)]
pub struct Completer {
    last: Mutex<HashMap<String, LastSuggestion>>,
    /// Recent prompts and their post-processed answers, most recent last.
    recent: Mutex<VecDeque<(Vec<u32>, Option<String>)>>,
    context: Mutex<ContextState>,
}

/// Workspace context: the chunk ring, which document versions it holds, and the last pick.
#[derive(Default)]
struct ContextState {
    ring: ChunkRing,
    versions: HashMap<String, i32>,
    /// Reused while the cursor stays on one line, so the prompt's start stays put as the user
    /// types (and the KV cache keeps it).
    last: Option<ContextPick>,
}

struct ContextPick {
    uri: String,
    line: usize,
    generation: u64,
    text: String,
    sources: Vec<String>,
}

/// Lines on each side of the cursor that say what the cursor's code is about.
const CONTEXT_QUERY_LINES: usize = 12;

/// How a document is named in the prompt: the last few components of its path.
pub fn source_name(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let path = path.strip_prefix("file://").unwrap_or(path);
    let parts: Vec<&str> = path.rsplit('/').filter(|p| !p.is_empty()).take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

impl Completer {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn complete(
        &self,
        request: CompletionRequest,
        settings: &Settings,
        host: &ModelHost,
    ) -> Result<(Outcome, Option<Source>), String> {
        let rope = request.document.rope();
        let cursor = request.cursor.min(rope.len_chars());
        if request.automatic
            && rope
                .get_char(cursor)
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            return Ok((Outcome::Nothing, None)); // typing inside a word: not the moment
        }
        let line = rope.char_to_line(cursor);
        let line_before = rope.slice(rope.line_to_char(line)..cursor).to_string();
        self.forget_closed(&request);
        if let Some(rest) = self.typed_ahead(&request.uri, line, &line_before) {
            return Ok((Outcome::Suggestion(rest), Some(Source::TypedAhead)));
        }

        let deadline = Instant::now() + Duration::from_millis(settings.deadline_ms);
        let Some(model) = host.ready(deadline).await else {
            return Ok((Outcome::Nothing, None));
        };
        // The model's context (for a remote backend, the server's) bounds the prompt.
        let settings = &Settings {
            context_tokens: settings.context_tokens.min(model.context_tokens),
            ..settings.clone()
        };
        // A model without infilling tokens continues the text before the cursor (said once,
        // when it loaded).
        let template = model.completion_template(settings.fim_order);
        let built = self
            .build_prompt(&request, settings, &model.tokenizer, &template)
            .await?
            .prompt;
        if let Some(cached) = self.cached(&built.ids) {
            return Ok((
                self.finish(&request.uri, line, line_before, cached),
                Some(Source::Cache),
            ));
        }
        let job = model.engine.submit(JobRequest {
            generation: GenerationRequest {
                prompt: built.ids.clone(),
                max_new_tokens: settings.max_tokens,
                sampling: SamplingParams {
                    temperature: settings.temperature,
                    ..SamplingParams::default()
                },
                stop_strings: Vec::new(),
                stop_tokens: Vec::new(),
                deadline: Some(deadline),
                prefill_slice: None,
            },
            supersede_key: Some(request.uri.clone()),
            kind: JobKind::Completion,
        });
        let result = match job.finish().await {
            Ok(result) => result,
            // A server's trouble is not this request's error: the editor gets an empty answer
            // and the user one message about it (see `lsp::server`).
            Err(problem) if model.engine.is_remote() => {
                return Ok((Outcome::BackendFailed(problem), Some(Source::Model)));
            }
            Err(problem) => return Err(problem),
        };
        if result.stopped_by == Some(StopCause::Superseded) {
            return Ok((Outcome::Superseded, Some(Source::Model)));
        }
        tracing::debug!(
            "completion: {} prompt tokens ({} reused), prefill {:.0} ms, decode {:.0} ms, {:?}",
            result.generation.prompt_tokens,
            result.generation.reused_tokens,
            result.generation.prefill_ms,
            result.generation.decode_ms,
            result.generation.finish
        );
        let text = finish_text(rope, cursor, &built.window.suffix, &result.generation.text);
        self.remember(built.ids, text.clone());
        Ok((
            self.finish(&request.uri, line, line_before, text),
            Some(Source::Model),
        ))
    }

    /// Drops the typed-ahead state of documents that are no longer open, so it never outgrows
    /// the open documents.
    fn forget_closed(&self, request: &CompletionRequest) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|uri, _| {
            uri == &request.uri || request.others.iter().any(|(open, _)| open == uri)
        });
    }

    /// How many documents have per-document state here (typed-ahead, context versions), for
    /// tests that check nothing grows without bound.
    pub fn tracked_documents(&self) -> usize {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).len();
        let versions = self
            .context
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .versions
            .len();
        last.max(versions)
    }

    fn finish(&self, uri: &str, line: usize, line_before: String, text: Option<String>) -> Outcome {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match text {
            Some(text) => {
                last.insert(
                    uri.to_owned(),
                    LastSuggestion {
                        line,
                        line_before,
                        text: text.clone(),
                    },
                );
                Outcome::Suggestion(text)
            }
            None => {
                last.remove(uri);
                Outcome::Nothing
            }
        }
    }

    /// The prompt for a completion at `cursor`: the window around it and, when enabled, chunks of
    /// other files similar to the code there.
    pub async fn build_prompt(
        &self,
        request: &CompletionRequest,
        settings: &Settings,
        tokenizer: &Tokenizer,
        template: &FimTemplate,
    ) -> Result<BuiltPrompt, String> {
        let cursor = request.cursor.min(request.document.rope().len_chars());
        let window = WindowConfig {
            budget_tokens: settings.prompt_budget(),
            prefix_share: settings.prefix_share,
            ..WindowConfig::default()
        };
        let (context, context_sources) = if settings.workspace_context {
            // About a quarter of the budget, at roughly three bytes a token.
            self.context_for(request, cursor, window.budget_tokens * 3 / 4)
        } else {
            (String::new(), Vec::new())
        };
        let (tokenizer, template, document, order) = (
            tokenizer.clone(),
            template.clone(),
            request.document.clone(),
            settings.fim_order,
        );
        let prompt = tokio::task::spawn_blocking(move || {
            prompt::infill_with_context(
                &tokenizer,
                &template,
                document.rope(),
                cursor,
                order,
                &window,
                &context,
            )
        })
        .await
        .map_err(|_| "building the prompt failed (see the log)".to_owned())?;
        Ok(BuiltPrompt {
            prompt,
            context_sources,
        })
    }

    /// Adds a file's text to the workspace context (e.g. one changed on disk).
    pub fn add_context_file(&self, source: &str, text: &str) {
        let mut state = self.context.lock().unwrap_or_else(|p| p.into_inner());
        state.ring.add_file(source, text);
    }

    /// The context text for a request and the files it comes from; `max_bytes` bounds it.
    fn context_for(
        &self,
        request: &CompletionRequest,
        cursor: usize,
        max_bytes: usize,
    ) -> (String, Vec<String>) {
        let mut state = self.context.lock().unwrap_or_else(|p| p.into_inner());
        // Closed documents' versions are forgotten (their chunks age out of the bounded ring).
        state.versions.retain(|uri, _| {
            uri == &request.uri || request.others.iter().any(|(open, _)| open == uri)
        });
        for (uri, document) in &request.others {
            if state.versions.get(uri) != Some(&document.version()) {
                state.versions.insert(uri.clone(), document.version());
                let rope = document.rope();
                if rope.len_bytes() <= crate::context::MAX_FILE_BYTES {
                    state.ring.add_file(&source_name(uri), &rope.to_string());
                }
            }
        }
        let rope = request.document.rope();
        let line = rope.char_to_line(cursor.min(rope.len_chars()));
        let generation = state.ring.generation();
        if let Some(last) = &state.last
            && last.uri == request.uri
            && last.line == line
            && last.generation == generation
        {
            return (last.text.clone(), last.sources.clone());
        }
        let first = line.saturating_sub(CONTEXT_QUERY_LINES);
        let end = (line + CONTEXT_QUERY_LINES + 1).min(rope.len_lines());
        let query = rope
            .slice(rope.line_to_char(first)..rope.line_to_char(end))
            .to_string();
        let comment = Language::detect(request.document.language_id(), &request.uri)
            .map_or("#", Language::line_comment);
        let picked = state
            .ring
            .pick(&query, &source_name(&request.uri), max_bytes);
        let text = crate::context::render(&picked, comment);
        let mut sources: Vec<String> = picked.iter().map(|c| c.source.clone()).collect();
        sources.dedup();
        state.last = Some(ContextPick {
            uri: request.uri.clone(),
            line,
            generation,
            text: text.clone(),
            sources: sources.clone(),
        });
        (text, sources)
    }

    /// The rest of the last suggestion if the user has typed its beginning since.
    fn typed_ahead(&self, uri: &str, line: usize, line_before: &str) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.get(uri)?;
        if previous.line != line {
            return None;
        }
        let typed = line_before.strip_prefix(previous.line_before.as_str())?;
        let rest = previous.text.strip_prefix(typed)?;
        (!typed.is_empty() && !rest.trim().is_empty()).then(|| rest.to_owned())
    }

    fn cached(&self, prompt: &[u32]) -> Option<Option<String>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .find(|(ids, _)| ids == prompt)
            .map(|(_, text)| text.clone())
    }

    fn remember(&self, prompt: Vec<u32>, text: Option<String>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|(ids, _)| *ids != prompt);
        if recent.len() == CACHE_ENTRIES {
            recent.pop_front();
        }
        recent.push_back((prompt, text));
    }

    /// Forgets a closed document.
    pub fn forget(&self, uri: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_documents_leave_no_state_behind() {
        let completer = Completer::new();
        for i in 0..1000 {
            let uri = format!("file:///doc{i}.py");
            completer.finish(&uri, 0, String::new(), Some("x".into()));
        }
        assert_eq!(completer.tracked_documents(), 1000);
        // The next completion sees which documents are open (this one and one other).
        let open = |uri: &str| (uri.to_owned(), Document::new("y = 1\n", 1, "python"));
        let (uri, document) = open("file:///doc7.py");
        let request = CompletionRequest {
            uri,
            document,
            cursor: 0,
            automatic: false,
            others: vec![open("file:///other.py")],
        };
        let host = ModelHost::new(); // no model: the request ends after its bookkeeping
        let settings = Settings {
            workspace_context: true,
            ..Settings::default()
        };
        let _ = completer.complete(request, &settings, &host).await;
        assert!(
            completer.tracked_documents() <= 2,
            "{}",
            completer.tracked_documents()
        );
    }

    #[test]
    fn typing_the_start_of_the_last_suggestion_serves_the_rest() {
        let completer = Completer::new();
        let uri = "file:///a.py";
        let shown = completer.finish(uri, 3, "    total = ".into(), Some("sum(values)".into()));
        assert_eq!(shown, Outcome::Suggestion("sum(values)".into()));
        assert_eq!(
            completer.typed_ahead(uri, 3, "    total = su").as_deref(),
            Some("m(values)")
        );
        // Typed something else, moved to another line, or another document: no shortcut.
        assert_eq!(completer.typed_ahead(uri, 3, "    total = x"), None);
        assert_eq!(completer.typed_ahead(uri, 4, "    total = su"), None);
        assert_eq!(
            completer.typed_ahead("file:///b.py", 3, "    total = su"),
            None
        );
        // Nothing typed yet is not a shortcut (the model is asked again), nor is typing it all.
        assert_eq!(completer.typed_ahead(uri, 3, "    total = "), None);
        assert_eq!(
            completer.typed_ahead(uri, 3, "    total = sum(values)"),
            None
        );
        completer.finish(uri, 3, "    total = ".into(), None);
        assert_eq!(
            completer.typed_ahead(uri, 3, "    total = su"),
            None,
            "forgotten after an empty answer"
        );
    }

    #[test]
    fn sources_are_named_by_the_end_of_their_path() {
        assert_eq!(
            source_name("file:///home/me/proj/src/billing.py"),
            "proj/src/billing.py"
        );
        assert_eq!(source_name("file:///billing.py"), "billing.py");
        assert_eq!(source_name("/tmp/ws/src/a.rs"), "ws/src/a.rs");
        assert_eq!(source_name("untitled:Untitled-1"), "untitled:Untitled-1");
    }

    #[test]
    fn the_prompt_cache_keeps_the_most_recent_entries() {
        let completer = Completer::new();
        for i in 0..(CACHE_ENTRIES as u32 + 5) {
            completer.remember(vec![i], Some(format!("answer {i}")));
        }
        assert_eq!(completer.cached(&[0]), None, "evicted");
        assert_eq!(
            completer.cached(&[CACHE_ENTRIES as u32 + 4]),
            Some(Some(format!("answer {}", CACHE_ENTRIES + 4)))
        );
        completer.remember(vec![7], None);
        assert_eq!(
            completer.cached(&[7]),
            Some(None),
            "an empty answer is cached too"
        );
    }
}
