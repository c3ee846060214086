//! Inline completion, from a document snapshot and a cursor to the text to insert.
//!
//! Cheapest answers first: a trigger that should not complete, the rest of the previous
//! suggestion when the user is typing it, a recent identical prompt; only then the model. The
//! LSP layer converts positions and results; nothing here knows LSP types.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ropey::Rope;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::actions::Language;
use crate::context::ChunkRing;
use crate::document::Document;
use crate::engine::{JobEvent, JobHandle, JobKind, JobRequest, JobResult, StopCause};
use crate::model::generate::{FinishReason, GenerationRequest};
use crate::model::sampling::SamplingParams;
use crate::model::tokenizer::Tokenizer;
use crate::model_host::{ModelHost, ReadyModel};
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
    /// The document's version when the client sent the request, if known: a request whose
    /// document changed since is answered empty (its position is in text the editor no longer
    /// shows).
    pub sent_version: Option<i32>,
    /// The client asks again on [`Grown`]: while typing, the first words of a suggestion may be
    /// answered at once and the rest computed in the background.
    pub refreshes: bool,
}

/// A suggestion that was answered with its first words has been computed whole: a client that
/// asks again at `cursor` of `uri` (if the document is still at `version`) gets all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grown {
    pub uri: String,
    pub version: i32,
    /// Char index of the cursor.
    pub cursor: usize,
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

/// How long after its deadline a completion still waits for the engine before answering empty:
/// one decode step (the engine stops between tokens) and a little slack, at most this.
const GIVE_UP_AFTER_DEADLINE: Duration = Duration::from_millis(500);
const GIVE_UP_SLACK: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Completer {
    last: Mutex<HashMap<String, LastSuggestion>>,
    /// Recent prompts and their post-processed answers, most recent last.
    recent: Mutex<VecDeque<Remembered>>,
    context: Mutex<ContextState>,
    stats: Mutex<CompletionStats>,
    /// How long one decode step took in the last completion that made several: how late an
    /// answer may be after its deadline.
    decode_step: Mutex<Option<Duration>>,
    /// Who hears of suggestions that grew whole after their first words were shown.
    grown: Mutex<Option<UnboundedSender<Grown>>>,
    /// The first line of each document's last prompt window, kept while it fits (see
    /// `prompt::window`): a start that moves costs a re-evaluation of the whole prefix.
    window_starts: Mutex<HashMap<String, usize>>,
}

/// What work after an answer runs with (it outlives the request): the settings fitted to the
/// model, the model, its prompt template.
#[derive(Clone)]
struct Runner {
    settings: Settings,
    model: Arc<ReadyModel>,
    template: FimTemplate,
}

impl Runner {
    fn new(settings: &Settings, model: &Arc<ReadyModel>, template: &FimTemplate) -> Self {
        Self {
            settings: settings.clone(),
            model: model.clone(),
            template: template.clone(),
        }
    }
}

/// A completion answered with its first words, whose rest is still being generated.
struct Growing {
    request: CompletionRequest,
    cursor: usize,
    line: usize,
    line_before: String,
    suffix: String,
    prompt: Vec<u32>,
    /// What was answered, and how many streamed pieces of text it took.
    shown: String,
    shown_pieces: usize,
}

/// How a completion's wait for the engine ended.
enum Waited {
    Finished(Result<JobResult, String>),
    /// The first words, answered before the rest (`pieces` streamed pieces of text).
    Early {
        text: String,
        pieces: usize,
    },
    /// Not done in time: given up.
    GaveUp,
}

/// Waits for `job` until `give_up`. From `early` on (if set), answers with the text streamed so
/// far as soon as `shown` makes a suggestion of it.
async fn wait_for_answer(
    job: &mut JobHandle,
    early: Option<Instant>,
    give_up: Instant,
    shown: impl Fn(&str) -> Option<String>,
) -> Waited {
    let mut raw = String::new();
    let mut pieces = 0;
    loop {
        let early_due = early.is_some_and(|at| Instant::now() >= at);
        if early_due
            && !raw.is_empty()
            && let Some(text) = shown(&raw)
        {
            return Waited::Early { text, pieces };
        }
        let wake = match early {
            Some(at) if !early_due => at.min(give_up),
            _ => give_up,
        };
        tokio::select! {
            biased;
            event = job.events.recv() => match event {
                Some(JobEvent::Text(piece)) => {
                    raw.push_str(&piece);
                    pieces += 1;
                }
                Some(JobEvent::Finished(result)) => return Waited::Finished(result),
                None => return Waited::Finished(Err("the engine stopped".into())),
            },
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= give_up {
                    return Waited::GaveUp;
                }
            }
        }
    }
}

/// A prompt and its post-processed answer.
struct Remembered {
    prompt: Vec<u32>,
    text: Option<String>,
    /// Computed ahead, for the suggestion after an accepted one: the tokens it cost, until a
    /// request uses it.
    speculative_tokens: Option<usize>,
}

/// What the completer did since it started, for `codellama/stats` and the latency benchmark.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionStats {
    pub completions: Counts,
    /// Prompt tokens of the completions the model ran, and how many of them the KV cache held.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    /// Tokens the model generated for completions (speculative ones included).
    pub generated_tokens: usize,
    /// Generated tokens nobody saw: superseded completions, speculations not (yet) used.
    pub wasted_tokens: usize,
    /// Warm-up prefills started, and those that evaluated their whole prompt.
    pub warmups: usize,
    pub warmups_finished: usize,
    /// Speculative suggestions computed.
    pub speculations: usize,
}

/// Completion requests by how they ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub requests: usize,
    /// Answered by running the model.
    pub model: usize,
    pub typed_ahead: usize,
    /// Answered from the recent-prompt cache (speculative hits included).
    pub cache: usize,
    pub speculative_hits: usize,
    /// Answered with nothing to suggest.
    pub empty: usize,
    pub superseded: usize,
    /// Skipped because the document changed after the request was sent.
    pub stale: usize,
    /// Given up on: the engine had not started them by their deadline (other work ran).
    pub late: usize,
    /// Answered with a suggestion's first words while the rest was still being generated.
    pub first_words: usize,
    /// Of those, suggestions generated whole afterwards (and announced to the client).
    pub grown: usize,
    /// Dropped by the client before they were answered.
    pub cancelled: usize,
}

/// Counts a request that the client dropped (its future was dropped before it finished).
struct InFlight<'c> {
    stats: &'c Mutex<CompletionStats>,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            lock(self.stats).completions.cancelled += 1;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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

/// The settings a model can run: the model's context (for a remote backend, the server's)
/// bounds the prompt.
fn fitted(settings: &Settings, model: &ReadyModel) -> Settings {
    Settings {
        context_tokens: settings.context_tokens.min(model.context_tokens),
        ..settings.clone()
    }
}

/// The engine job of a completion (or of work ahead of one) for `prompt` in document `uri`.
fn completion_job(
    uri: &str,
    prompt: Vec<u32>,
    settings: &Settings,
    kind: JobKind,
    deadline: Option<Instant>,
) -> JobRequest {
    JobRequest {
        generation: GenerationRequest {
            prompt,
            max_new_tokens: settings.max_tokens,
            sampling: SamplingParams {
                temperature: settings.temperature,
                ..SamplingParams::default()
            },
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
            deadline,
            prefill_slice: None,
        },
        // A newer request for the document stops a completion. Work ahead never stops one: it
        // gives way to anything that arrives anyway.
        supersede_key: (kind != JobKind::Prefetch).then(|| uri.to_owned()),
        kind,
    }
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
        self: &Arc<Self>,
        request: CompletionRequest,
        settings: &Settings,
        host: &ModelHost,
    ) -> Result<(Outcome, Option<Source>), String> {
        lock(&self.stats).completions.requests += 1;
        let mut in_flight = InFlight {
            stats: &self.stats,
            answered: false,
        };
        let answer = self.answer(request, settings, host).await;
        in_flight.answered = true;
        let mut stats = lock(&self.stats);
        let counts = &mut stats.completions;
        match &answer {
            Ok((outcome, source)) => {
                match source {
                    Some(Source::Model) => counts.model += 1,
                    Some(Source::Cache) => counts.cache += 1,
                    Some(Source::TypedAhead) => counts.typed_ahead += 1,
                    None => {}
                }
                match outcome {
                    Outcome::Superseded => counts.superseded += 1,
                    Outcome::Nothing | Outcome::BackendFailed(_) => counts.empty += 1,
                    Outcome::Suggestion(_) => {}
                }
            }
            Err(_) => counts.empty += 1,
        }
        answer
    }

    async fn answer(
        self: &Arc<Self>,
        request: CompletionRequest,
        settings: &Settings,
        host: &ModelHost,
    ) -> Result<(Outcome, Option<Source>), String> {
        if request
            .sent_version
            .is_some_and(|version| version != request.document.version())
        {
            lock(&self.stats).completions.stale += 1;
            return Ok((Outcome::Nothing, None));
        }
        let asked = Instant::now();
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

        let deadline = asked + Duration::from_millis(settings.deadline_ms);
        let Some(model) = host.ready(deadline).await else {
            return Ok((Outcome::Nothing, None));
        };
        let settings = &fitted(settings, &model);
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
        let mut job = model.engine.submit(completion_job(
            &request.uri,
            built.ids.clone(),
            settings,
            JobKind::Completion,
            Some(deadline),
        ));
        // While typing, a slow model's first words are shown before the next keystroke would
        // cancel them (answered before the decode step that would end past the budget).
        let first_answer = (request.automatic && request.refreshes && settings.first_answer_ms > 0)
            .then(|| {
                let budget = Duration::from_millis(settings.first_answer_ms);
                asked + budget.saturating_sub(lock(&self.decode_step).unwrap_or_default())
            });
        let shown = |raw: &str| finish_text(rope, cursor, &built.window.suffix, raw);
        // The engine returns what is ready at the deadline (at most one decode step late); a job
        // still queued behind other work then is given up (dropping it cancels it).
        let give_up = deadline + self.give_up_after();
        let finished = match wait_for_answer(&mut job, first_answer, give_up, shown).await {
            Waited::Finished(finished) => finished,
            Waited::GaveUp => {
                lock(&self.stats).completions.late += 1;
                return Ok((Outcome::Nothing, Some(Source::Model)));
            }
            Waited::Early { text, pieces } => {
                lock(&self.stats).completions.first_words += 1;
                job.yield_to_others();
                let uri = request.uri.clone();
                let growing = Growing {
                    request,
                    cursor,
                    line,
                    line_before: line_before.clone(),
                    suffix: built.window.suffix.clone(),
                    prompt: built.ids,
                    shown: text.clone(),
                    shown_pieces: pieces,
                };
                self.grow_in_background(job, growing, Runner::new(settings, &model, &template));
                return Ok((
                    self.finish(&uri, line, line_before, Some(text)),
                    Some(Source::Model),
                ));
            }
        };
        let result = match finished {
            Ok(result) => result,
            // A server's trouble is not this request's error: the editor gets an empty answer
            // and the user one message about it (see `lsp::server`).
            Err(problem) if model.engine.is_remote() => {
                return Ok((Outcome::BackendFailed(problem), Some(Source::Model)));
            }
            Err(problem) => return Err(problem),
        };
        self.account(&result, 0);
        let generation = &result.generation;
        if result.stopped_by == Some(StopCause::Superseded) {
            return Ok((Outcome::Superseded, Some(Source::Model)));
        }
        tracing::debug!(
            "completion: {} prompt tokens ({} reused), prefill {:.0} ms, decode {:.0} ms, {:?}",
            generation.prompt_tokens,
            generation.reused_tokens,
            generation.prefill_ms,
            generation.decode_ms,
            generation.finish
        );
        let text = finish_text(rope, cursor, &built.window.suffix, &generation.text);
        self.remember(built.ids, text.clone(), None);
        if let Some(suggestion) = &text
            && !model.engine.is_remote()
        {
            let runner = Runner::new(settings, &model, &template);
            self.speculate(&request, cursor, suggestion, &runner);
        }
        Ok((
            self.finish(&request.uri, line, line_before, text),
            Some(Source::Model),
        ))
    }

    /// Computes, in idle time, the suggestion that follows `suggestion` if the user accepts it
    /// (as llama.vim does): the document with the suggestion inserted, the cursor after it. The
    /// answer waits in the recent-prompt cache; any other request stops the work at once.
    fn speculate(
        self: &Arc<Self>,
        request: &CompletionRequest,
        cursor: usize,
        suggestion: &str,
        runner: &Runner,
    ) {
        let mut accepted = request.document.clone();
        accepted.insert(cursor, suggestion);
        let next = CompletionRequest {
            uri: request.uri.clone(),
            document: accepted,
            cursor: cursor + suggestion.chars().count(),
            automatic: true,
            others: request.others.clone(),
            sent_version: None,
            refreshes: false,
        };
        let (completer, runner) = (self.clone(), runner.clone());
        tokio::spawn(async move {
            let Runner {
                settings,
                model,
                template,
            } = &runner;
            let Ok(built) = completer
                .build_prompt(&next, settings, &model.tokenizer, template)
                .await
            else {
                return;
            };
            let prompt = built.prompt;
            if completer.remembers(&prompt.ids) {
                return;
            }
            let job = model.engine.submit(completion_job(
                &next.uri,
                prompt.ids.clone(),
                settings,
                JobKind::Prefetch,
                None,
            ));
            let Ok(result) = job.finish().await else {
                return;
            };
            let generation = result.generation;
            let mut stats = lock(&completer.stats);
            stats.generated_tokens += generation.ids.len();
            stats.wasted_tokens += generation.ids.len();
            if generation.finish == FinishReason::Stopped {
                return; // something else arrived first: the answer is not whole
            }
            stats.speculations += 1;
            drop(stats);
            let rope = next.document.rope();
            let text = finish_text(rope, next.cursor, &prompt.window.suffix, &generation.text);
            completer.remember(prompt.ids, text, Some(generation.ids.len()));
        });
    }

    /// Evaluates the prompt for a cursor into the KV cache while the user is not typing (after
    /// opening a file, a focus change, a pause), so the next request finds its prefix cached.
    /// Any other job stops it; nothing happens if the model is not ready yet.
    pub async fn warm_up(
        self: &Arc<Self>,
        request: CompletionRequest,
        settings: &Settings,
        host: &ModelHost,
    ) {
        let Some(model) = host.ready(Instant::now()).await else {
            return;
        };
        if model.engine.is_remote() {
            return; // the server keeps its own prompt cache
        }
        self.forget_closed(&request);
        let settings = &fitted(settings, &model);
        let template = model.completion_template(settings.fim_order);
        let Ok(built) = self
            .build_prompt(&request, settings, &model.tokenizer, &template)
            .await
        else {
            return;
        };
        lock(&self.stats).warmups += 1;
        let mut job = completion_job(
            &request.uri,
            built.prompt.ids,
            settings,
            JobKind::Prefetch,
            None,
        );
        job.generation.max_new_tokens = 0;
        // The handle must live until the job ends (dropping it cancels the job).
        let handle = model.engine.submit(job);
        let completer = self.clone();
        tokio::spawn(async move {
            if let Ok(result) = handle.finish().await
                && result.generation.finish != FinishReason::Stopped
            {
                lock(&completer.stats).warmups_finished += 1;
            }
        });
    }

    /// Lets a completion answered with its first words run on in the background (giving way to
    /// any other completion). Once whole, its answer is remembered, so that typing along the
    /// shown words or asking again gets all of it, and [`Grown`] tells the client.
    fn grow_in_background(self: &Arc<Self>, job: JobHandle, growing: Growing, runner: Runner) {
        let completer = self.clone();
        tokio::spawn(async move {
            let Ok(result) = job.finish().await else {
                return;
            };
            completer.account(&result, growing.shown_pieces);
            if result.generation.finish == FinishReason::Stopped {
                return; // the user typed on, or other work came first
            }
            let Growing {
                request,
                cursor,
                line,
                line_before,
                suffix,
                prompt,
                shown,
                ..
            } = growing;
            let rope = request.document.rope();
            let text = finish_text(rope, cursor, &suffix, &result.generation.text);
            completer.remember(prompt, text.clone(), None);
            let Some(text) = text.filter(|text| *text != shown) else {
                return;
            };
            if let Some(last) = lock(&completer.last).get_mut(&request.uri)
                && (last.line, last.line_before.as_str(), last.text.as_str())
                    == (line, line_before.as_str(), shown.as_str())
            {
                last.text = text.clone();
            }
            if !runner.model.engine.is_remote() {
                completer.speculate(&request, cursor, &text, &runner);
            }
            lock(&completer.stats).completions.grown += 1;
            if let Some(listener) = lock(&completer.grown).as_ref() {
                let _ = listener.send(Grown {
                    uri: request.uri.clone(),
                    version: request.document.version(),
                    cursor,
                });
            }
        });
    }

    /// Where [`Grown`] notices go from now on (one listener: the LSP layer).
    pub fn listen_for_grown(&self) -> UnboundedReceiver<Grown> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.grown) = Some(sender);
        receiver
    }

    /// Counts a finished completion job's tokens (`shown_pieces` of its text were shown before
    /// it finished), and learns the decode step from it.
    fn account(&self, result: &JobResult, shown_pieces: usize) {
        let generation = &result.generation;
        if generation.ids.len() >= 2 {
            let steps = (generation.ids.len() - 1) as f64;
            let step = Duration::from_secs_f64(generation.decode_ms / 1000.0 / steps);
            *lock(&self.decode_step) = Some(step);
        }
        let mut stats = lock(&self.stats);
        stats.prompt_tokens += generation.prompt_tokens;
        stats.reused_tokens += generation.reused_tokens;
        stats.generated_tokens += generation.ids.len();
        if generation.finish == FinishReason::Stopped {
            stats.wasted_tokens += generation.ids.len().saturating_sub(shown_pieces);
        }
    }

    /// How long after its deadline a completion gives up waiting for the engine.
    fn give_up_after(&self) -> Duration {
        lock(&self.decode_step).map_or(GIVE_UP_AFTER_DEADLINE, |step| {
            (step + GIVE_UP_SLACK).min(GIVE_UP_AFTER_DEADLINE)
        })
    }

    /// What the completer has done so far.
    pub fn stats(&self) -> CompletionStats {
        lock(&self.stats).clone()
    }

    /// Drops the typed-ahead state of documents that are no longer open, so it never outgrows
    /// the open documents.
    fn forget_closed(&self, request: &CompletionRequest) {
        let open = |uri: &String| {
            uri == &request.uri || request.others.iter().any(|(open, _)| open == uri)
        };
        lock(&self.last).retain(|uri, _| open(uri));
        lock(&self.window_starts).retain(|uri, _| open(uri));
    }

    /// How many documents have per-document state here (typed-ahead, context versions), for
    /// tests that check nothing grows without bound.
    pub fn tracked_documents(&self) -> usize {
        let last = lock(&self.last).len().max(lock(&self.window_starts).len());
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
            keep_first: lock(&self.window_starts).get(&request.uri).copied(),
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
        lock(&self.window_starts).insert(request.uri.clone(), prompt.window.first_line);
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

    /// The answer for `prompt` if it is a recent one (a speculative answer counts as a hit and
    /// is no longer waste).
    fn cached(&self, prompt: &[u32]) -> Option<Option<String>> {
        let mut recent = lock(&self.recent);
        let entry = recent
            .iter_mut()
            .rev()
            .find(|entry| entry.prompt == prompt)?;
        if let Some(tokens) = entry.speculative_tokens.take() {
            let mut stats = lock(&self.stats);
            stats.completions.speculative_hits += 1;
            stats.wasted_tokens = stats.wasted_tokens.saturating_sub(tokens);
        }
        Some(entry.text.clone())
    }

    /// Whether `prompt`'s answer is in the recent-prompt cache (without using it).
    fn remembers(&self, prompt: &[u32]) -> bool {
        lock(&self.recent)
            .iter()
            .any(|entry| entry.prompt == prompt)
    }

    fn remember(&self, prompt: Vec<u32>, text: Option<String>, speculative_tokens: Option<usize>) {
        let mut recent = lock(&self.recent);
        recent.retain(|entry| entry.prompt != prompt);
        if recent.len() == CACHE_ENTRIES {
            recent.pop_front();
        }
        recent.push_back(Remembered {
            prompt,
            text,
            speculative_tokens,
        });
    }

    /// Forgets a closed document.
    pub fn forget(&self, uri: &str) {
        lock(&self.last).remove(uri);
        lock(&self.window_starts).remove(uri);
        let mut context = lock(&self.context);
        context.versions.remove(uri);
        if context.last.as_ref().is_some_and(|pick| pick.uri == uri) {
            context.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_documents_leave_no_state_behind() {
        let completer = Arc::new(Completer::new());
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
            sent_version: None,
            refreshes: false,
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
            completer.remember(vec![i], Some(format!("answer {i}")), None);
        }
        assert_eq!(completer.cached(&[0]), None, "evicted");
        assert_eq!(
            completer.cached(&[CACHE_ENTRIES as u32 + 4]),
            Some(Some(format!("answer {}", CACHE_ENTRIES + 4)))
        );
        completer.remember(vec![7], None, None);
        assert_eq!(
            completer.cached(&[7]),
            Some(None),
            "an empty answer is cached too"
        );
    }

    #[test]
    fn a_speculative_answer_counts_as_a_hit_once_and_is_no_longer_waste() {
        let completer = Completer::new();
        lock(&completer.stats).wasted_tokens = 12;
        completer.remember(vec![1, 2, 3], Some("next".into()), Some(12));
        assert!(completer.remembers(&[1, 2, 3]));
        assert_eq!(
            completer.stats().completions.speculative_hits,
            0,
            "looking is not using"
        );
        assert_eq!(completer.cached(&[1, 2, 3]), Some(Some("next".into())));
        assert_eq!(completer.cached(&[1, 2, 3]), Some(Some("next".into())));
        let stats = completer.stats();
        assert_eq!(stats.completions.speculative_hits, 1);
        assert_eq!(stats.wasted_tokens, 0);
    }
}
