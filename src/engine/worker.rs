//! The local worker: which job runs next, in which KV slot, and when a running job yields.
//!
//! - **Completions** run first, oldest first (newest-wins per document happens at submission).
//!   Their prompts live in the *completion slot*, the cache the next keystroke reuses.
//! - **Assist jobs** run when no completion waits, in an *assist slot* of their own (allocated on
//!   first use, sized to the job, released after a while without assist work). Between two of
//!   their tokens (or prefill chunks, sized to about [`ASSIST_SLICE`]) the worker serves every
//!   waiting completion, then resumes: a completion waits at most one assist step, and finds its
//!   prefix where it left it.
//! - **Prefetches** (warm-up prefills, speculative suggestions, and the rest of a prefill its
//!   deadline cut) run only when nothing else waits, in the completion slot, and stop the moment
//!   any job arrives. Only the newest is kept.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, atomic::AtomicU8, mpsc};
use std::time::Duration;

use tokio::sync::mpsc as async_mpsc;

use super::{Job, JobEvent, JobKind, JobResult, RUNNING, stop_cause};
use crate::model::generate::{FinishReason, GenerationRequest, generate};
use crate::model::{KvCache, LoadedModel, ModelError};

/// How long a prefill chunk of an assist job should take: the longest a completion waits for it.
const ASSIST_SLICE: Duration = Duration::from_millis(50);
/// The same for prefetches. Longer, because their long prefills (a warm-up after opening a file)
/// lose a quarter of their speed in 50 ms chunks (each forward call streams all the weights),
/// and a completion that arrives meanwhile usually continues the same prompt.
const PREFETCH_SLICE: Duration = Duration::from_millis(150);
/// Completions waiting at once, from different documents (each document has at most one: a newer
/// request supersedes the older). Beyond it the oldest is answered empty.
pub const MAX_WAITING_COMPLETIONS: usize = 8;
/// An assist slot unused for this long is freed (its memory can be gigabytes).
const ASSIST_SLOT_IDLE: Duration = Duration::from_secs(120);
/// Assist slots are sized in steps of this many positions, so similar jobs reuse one.
const ASSIST_SLOT_STEP: usize = 512;

pub(super) struct Worker {
    model: LoadedModel,
    /// Completions and prefetches: holds the prefix the next keystroke reuses.
    completion_slot: KvCache,
    /// Assist jobs' own cache, when one was needed recently.
    assist_slot: Option<KvCache>,
    waiting: Waiting,
}

/// Jobs received but not started, by kind.
#[derive(Default)]
struct Waiting {
    completions: VecDeque<Job>,
    assists: VecDeque<Job>,
    prefetch: Option<Job>,
}

impl Waiting {
    fn add(&mut self, job: Job) {
        match job.kind {
            JobKind::Completion => {
                self.completions.push_back(job);
                while self.completions.len() > MAX_WAITING_COMPLETIONS {
                    if let Some(oldest) = self.completions.pop_front() {
                        oldest.drop_unserved();
                    }
                }
            }
            JobKind::Assist => self.assists.push_back(job),
            JobKind::Prefetch => {
                if let Some(older) = self.prefetch.replace(job) {
                    older.drop_unserved();
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.completions.is_empty() && self.assists.is_empty() && self.prefetch.is_none()
    }

    fn next(&mut self) -> Option<Job> {
        self.completions
            .pop_front()
            .or_else(|| self.assists.pop_front())
            .or_else(|| self.prefetch.take())
    }

    /// Moves every job already sent into the queues; false when the engine was dropped.
    fn receive_ready(&mut self, queue: &mpsc::Receiver<Job>) -> bool {
        loop {
            match queue.try_recv() {
                Ok(job) => self.add(job),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

impl Worker {
    pub(super) fn new(model: LoadedModel) -> Result<Self, ModelError> {
        let completion_slot = model.llama.new_cache()?;
        Ok(Self {
            model,
            completion_slot,
            assist_slot: None,
            waiting: Waiting::default(),
        })
    }

    pub(super) fn run(mut self, queue: mpsc::Receiver<Job>) {
        loop {
            if !self.waiting.receive_ready(&queue) && self.waiting.is_empty() {
                return;
            }
            if self.waiting.is_empty() {
                let idle = if self.assist_slot.is_some() {
                    ASSIST_SLOT_IDLE
                } else {
                    Duration::MAX
                };
                match queue.recv_timeout(idle) {
                    Ok(job) => self.waiting.add(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        tracing::debug!("freeing the assist KV slot after {idle:?} unused");
                        self.assist_slot = None;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Some(job) = self.waiting.next() {
                self.serve(job, &queue);
            }
        }
    }

    fn serve(&mut self, mut job: Job, queue: &mpsc::Receiver<Job>) {
        if let Some(result) = job.stopped_before_start() {
            job.finish(Ok(result));
            return;
        }
        let Self {
            model,
            completion_slot,
            assist_slot,
            waiting,
        } = self;
        match job.kind {
            JobKind::Completion => serve_completion(model, completion_slot, waiting, queue, job),
            JobKind::Prefetch => {
                job.request.prefill_slice = Some(PREFETCH_SLICE);
                let result = run_job(model, completion_slot, &job, &mut || {
                    let open = waiting.receive_ready(queue);
                    job.stop_cause().is_some() || !waiting.is_empty() || !open
                });
                job.finish(result);
            }
            JobKind::Assist => {
                job.request.prefill_slice = Some(ASSIST_SLICE);
                let slot = match sized_assist_slot(model, assist_slot, &job.request) {
                    Ok(slot) => slot,
                    Err(error) => return job.finish(Err(error.to_string())),
                };
                let result = run_job(model, slot, &job, &mut || {
                    // Paused here, between two steps of the assist job, while completions run.
                    let open = waiting.receive_ready(queue);
                    while let Some(completion) = waiting.completions.pop_front() {
                        serve_completion(model, completion_slot, waiting, queue, completion);
                        waiting.receive_ready(queue);
                    }
                    job.stop_cause().is_some() || !open
                });
                job.finish(result);
            }
        }
    }
}

/// Runs a completion; if its deadline cut the prefill, the rest becomes the waiting prefetch, so
/// the next keystroke (whose prompt usually starts the same) finds it cached.
/// A completion whose caller already answered (it [yields](Job::yields)) stops for any other
/// completion.
fn serve_completion(
    model: &LoadedModel,
    slot: &mut KvCache,
    waiting: &mut Waiting,
    queue: &mpsc::Receiver<Job>,
    job: Job,
) {
    if let Some(result) = job.stopped_before_start() {
        return job.finish(Ok(result));
    }
    let result = run_job(model, slot, &job, &mut || {
        job.stop_cause().is_some()
            || (job.yields() && {
                waiting.receive_ready(queue);
                !waiting.completions.is_empty()
            })
    });
    let cut_prefill = matches!(&result, Ok(r) if r.generation.finish == FinishReason::Deadline
        && r.generation.ids.is_empty());
    job.finish(result);
    if cut_prefill && waiting.prefetch.is_none() {
        waiting.add(rest_of_prefill(&job.request.prompt));
    }
}

/// A prefetch that evaluates `prompt` into the cache and nothing more; nobody waits for it.
fn rest_of_prefill(prompt: &[u32]) -> Job {
    let (events, _) = async_mpsc::unbounded_channel();
    Job {
        request: GenerationRequest {
            prompt: prompt.to_vec(),
            max_new_tokens: 0,
            ..GenerationRequest::default()
        },
        kind: JobKind::Prefetch,
        control: Arc::new(AtomicU8::new(RUNNING)),
        yields: Arc::default(),
        events,
    }
}

/// The assist slot, (re)allocated when missing or too small for `request`.
fn sized_assist_slot<'s>(
    model: &LoadedModel,
    slot: &'s mut Option<KvCache>,
    request: &GenerationRequest,
) -> Result<&'s mut KvCache, ModelError> {
    let wanted = request.prompt.len() + request.max_new_tokens;
    let positions = wanted.div_ceil(ASSIST_SLOT_STEP).max(1) * ASSIST_SLOT_STEP;
    let positions = positions.min(model.llama.max_positions());
    if slot
        .as_ref()
        .is_none_or(|cache| cache.capacity() < positions)
    {
        *slot = None; // free the old one before allocating its replacement
        tracing::debug!("allocating an assist KV slot of {positions} positions");
        *slot = Some(model.llama.new_cache_for(positions)?);
    }
    slot.as_mut().ok_or_else(|| ModelError::Invalid {
        file: String::new(),
        problem: "no assist slot".into(),
    })
}

/// Runs one job's generation in `cache`, streaming its text; a panic clears the cache (it may
/// hold half-written positions) and becomes an error, and the worker goes on.
fn run_job(
    model: &LoadedModel,
    cache: &mut KvCache,
    job: &Job,
    should_stop: &mut dyn FnMut() -> bool,
) -> Result<JobResult, String> {
    let mut on_text = |text: &str| {
        let _ = job.events.send(JobEvent::Text(text.to_owned()));
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        generate(model, cache, &job.request, should_stop, &mut on_text)
    }));
    if let Ok(Ok(generation)) = &outcome {
        tracing::debug!(
            "engine: {:?} job, {} prompt tokens ({} reused), {} generated, prefill {:.0} ms, decode {:.0} ms, {:?}",
            job.kind,
            generation.prompt_tokens,
            generation.reused_tokens,
            generation.ids.len(),
            generation.prefill_ms,
            generation.decode_ms,
            generation.finish
        );
    }
    match outcome {
        Ok(Ok(generation)) => Ok(JobResult {
            stopped_by: (generation.finish == FinishReason::Stopped)
                .then(|| stop_cause(&job.control))
                .flatten(),
            generation,
        }),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => {
            cache.clear();
            tracing::error!("the engine panicked during a generation; it keeps running");
            Err("internal error in the engine (see the log)".into())
        }
    }
}
