//! The engine: one worker thread owns the model and its KV caches; requests come in through a
//! channel and stream their text back.
//!
//! Jobs are of three kinds ([`JobKind`]), served in that order: completions (the user waits on
//! every keystroke), assist work (docstrings, edits, chat: paused between tokens whenever a
//! completion waits, and run in a KV slot of their own so the completion prefix survives), and
//! prefetches (warm-up prefills and speculative suggestions, which stop as soon as anything else
//! arrives). See `worker.rs`.
//!
//! The async side never blocks on inference: [`Engine::submit`] returns at once with a
//! [`JobHandle`] whose events arrive on a tokio channel. A job stops within one token when its
//! handle is cancelled or dropped (an LSP request cancelled by the client drops its future), or when
//! a newer job with the same supersede key (e.g. the same document) is submitted.
//!
//! The same handle fronts a remote backend ([`Engine::remote`]): jobs then go to an inference
//! server over HTTP (see `crate::remote`), with the same events, stop causes and supersession.

mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use tokio::sync::mpsc as async_mpsc;

use crate::model::generate::{FinishReason, Generation, GenerationRequest};
use crate::model::tokenizer::Tokenizer;
use crate::model::{LoadedModel, ModelError};
use crate::remote::RemoteSpec;

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const SUPERSEDED: u8 = 2;
/// The job has sent its result (nothing can stop it any more).
const FINISHED: u8 = 3;

/// What a job reports, in order: zero or more `Text` pieces, then exactly one `Finished`.
#[derive(Debug)]
pub enum JobEvent {
    Text(String),
    Finished(Result<JobResult, String>),
}

#[derive(Clone, Debug)]
pub struct JobResult {
    pub generation: Generation,
    /// Why the job stopped early, when it was stopped from outside.
    pub stopped_by: Option<StopCause>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    Superseded,
}

#[derive(Clone, Debug, Default)]
pub struct JobRequest {
    pub generation: GenerationRequest,
    /// A newer job with the same key stops this one (e.g. the document's URI for completions).
    pub supersede_key: Option<String>,
    pub kind: JobKind,
}

/// What a job is for, which decides when it runs and which KV slot it uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobKind {
    /// An inline completion: runs first; its prompt stays cached for the next keystroke.
    #[default]
    Completion,
    /// A docstring, edit or chat answer: runs when no completion waits, pauses between tokens
    /// while completions run, and keeps its own KV slot.
    Assist,
    /// Work for a request that may come (a warm-up prefill, the suggestion after an accepted
    /// one): runs only when nothing else waits, and stops the moment anything arrives.
    Prefetch,
}

/// The caller's end of a job. Dropping it cancels the job.
pub struct JobHandle {
    control: Arc<AtomicU8>,
    yields: Arc<AtomicBool>,
    pub events: async_mpsc::UnboundedReceiver<JobEvent>,
}

impl JobHandle {
    /// From now on the job gives way to any other completion that waits: it stops (finishing as
    /// [`FinishReason::Stopped`]) rather than make another request wait. For a completion whose
    /// caller already answered with the first tokens and lets the rest run in the background.
    pub fn yield_to_others(&self) {
        self.yields.store(true, Ordering::SeqCst);
    }

    pub fn cancel(&self) {
        let _ =
            self.control
                .compare_exchange(RUNNING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Waits for the job to finish, discarding streamed text.
    pub async fn finish(mut self) -> Result<JobResult, String> {
        while let Some(event) = self.events.recv().await {
            if let JobEvent::Finished(result) = event {
                return result;
            }
        }
        Err("the engine stopped".into())
    }

    /// Blocking version of [`finish`](Self::finish), for the command line.
    pub fn finish_blocking(mut self) -> Result<JobResult, String> {
        while let Some(event) = self.events.blocking_recv() {
            if let JobEvent::Finished(result) = event {
                return result;
            }
        }
        Err("the engine stopped".into())
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A submitted job, as the worker (local or remote) sees it.
pub(crate) struct Job {
    pub(crate) request: GenerationRequest,
    pub(crate) kind: JobKind,
    control: Arc<AtomicU8>,
    /// Set by [`JobHandle::yield_to_others`].
    yields: Arc<AtomicBool>,
    pub(crate) events: async_mpsc::UnboundedSender<JobEvent>,
}

impl Job {
    /// Whether the job should stop when another completion waits.
    pub(crate) fn yields(&self) -> bool {
        self.yields.load(Ordering::SeqCst)
    }

    /// Why the job should stop now, if it should (its handle was dropped or cancelled, or a newer
    /// job superseded it).
    pub(crate) fn stop_cause(&self) -> Option<StopCause> {
        stop_cause(&self.control)
    }

    /// For a job stopped before it started: its result, which costs nothing.
    pub(crate) fn stopped_before_start(&self) -> Option<JobResult> {
        let cause = self.stop_cause()?;
        let generation = Generation {
            ids: Vec::new(),
            text: String::new(),
            finish: FinishReason::Stopped,
            prompt_tokens: self.request.prompt.len(),
            reused_tokens: 0,
            prefill_ms: 0.0,
            decode_ms: 0.0,
        };
        Some(JobResult {
            generation,
            stopped_by: Some(cause),
        })
    }

    /// Ends a job that will not run (dropped from a full queue, or replaced by a newer
    /// prefetch) as superseded: its caller gets an empty answer.
    pub(crate) fn drop_unserved(self) {
        let _ =
            self.control
                .compare_exchange(RUNNING, SUPERSEDED, Ordering::SeqCst, Ordering::SeqCst);
        if let Some(result) = self.stopped_before_start() {
            self.finish(Ok(result));
        }
    }

    pub(crate) fn finish(&self, result: Result<JobResult, String>) {
        let _ =
            self.control
                .compare_exchange(RUNNING, FINISHED, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.events.send(JobEvent::Finished(result));
    }
}

/// Where jobs go: the local worker thread, or the remote backend's.
#[derive(Clone)]
enum Queue {
    Local(mpsc::Sender<Job>),
    Remote(async_mpsc::UnboundedSender<Job>),
}

/// A cheap, cloneable handle to the worker thread.
#[derive(Clone)]
pub struct Engine {
    jobs: Queue,
    latest_by_key: Arc<Mutex<HashMap<String, Arc<AtomicU8>>>>,
}

impl Engine {
    /// Starts the worker thread, which owns `model` and allocates its KV cache.
    pub fn start(model: LoadedModel) -> Result<Self, ModelError> {
        let worker = worker::Worker::new(model)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("codellama-engine".into())
            .spawn(move || worker.run(queue))
            .map_err(|source| ModelError::Io {
                file: "engine thread".into(),
                source,
            })?;
        Ok(Self {
            jobs: Queue::Local(jobs),
            latest_by_key: Arc::default(),
        })
    }

    /// An engine whose jobs run on an inference server. `tokenizer` and `stop_tokens` are those
    /// of the vocabulary the server's model uses (the answer's ids are decoded here).
    pub fn remote(
        spec: RemoteSpec,
        tokenizer: Tokenizer,
        stop_tokens: Vec<u32>,
    ) -> Result<Self, String> {
        let jobs = crate::remote::start_worker(spec, tokenizer, stop_tokens)?;
        Ok(Self {
            jobs: Queue::Remote(jobs),
            latest_by_key: Arc::default(),
        })
    }

    /// How many supersede keys the engine tracks (jobs still running or queued), for tests.
    pub fn tracked_keys(&self) -> usize {
        self.latest_by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether jobs run on an inference server (whose failures are the server's, not the job's).
    pub fn is_remote(&self) -> bool {
        matches!(self.jobs, Queue::Remote(_))
    }

    pub fn submit(&self, request: JobRequest) -> JobHandle {
        let control = Arc::new(AtomicU8::new(RUNNING));
        if let Some(key) = request.supersede_key {
            let mut latest = self.latest_by_key.lock().unwrap_or_else(|p| p.into_inner());
            // Keys of jobs that ended are forgotten, so the map holds only live work (one entry
            // per document with a completion in flight), however many documents come and go.
            latest.retain(|_, control| control.load(Ordering::SeqCst) == RUNNING);
            if let Some(previous) = latest.insert(key, control.clone()) {
                let _ = previous.compare_exchange(
                    RUNNING,
                    SUPERSEDED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
        let (events, receiver) = async_mpsc::unbounded_channel();
        let yields = Arc::new(AtomicBool::new(false));
        let job = Job {
            request: request.generation,
            kind: request.kind,
            control: control.clone(),
            yields: yields.clone(),
            events,
        };
        let refused = match &self.jobs {
            Queue::Local(jobs) => jobs.send(job).err().map(|error| error.0),
            Queue::Remote(jobs) => jobs.send(job).err().map(|error| error.0),
        };
        if let Some(job) = refused {
            job.finish(Err("the engine has stopped".into()));
        }
        JobHandle {
            control,
            yields,
            events: receiver,
        }
    }
}

pub(crate) fn stop_cause(control: &AtomicU8) -> Option<StopCause> {
    match control.load(Ordering::SeqCst) {
        CANCELLED => Some(StopCause::Cancelled),
        SUPERSEDED => Some(StopCause::Superseded),
        _ => None,
    }
}
