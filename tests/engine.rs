//! The engine worker on a real (tiny) model: streaming, cancellation within a token,
//! superseding, deadlines, cache reuse across jobs.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use codellama_lsp::engine::{Engine, JobEvent, JobKind, JobRequest, StopCause};
use codellama_lsp::fixtures::Variant;
use codellama_lsp::model::LoadedModel;
use codellama_lsp::model::generate::{FinishReason, GenerationRequest};

fn model() -> LoadedModel {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(Variant::F16.file_name());
    LoadedModel::load(&path, &Device::Cpu, Some(4096)).unwrap()
}

fn request(prompt: &[u32], max_new_tokens: usize) -> JobRequest {
    JobRequest {
        generation: GenerationRequest {
            prompt: prompt.to_vec(),
            max_new_tokens,
            ..GenerationRequest::default()
        },
        ..JobRequest::default()
    }
}

/// The generation of `prompt` run directly, with nothing else on the engine: the reference.
fn generate_alone(
    model: &LoadedModel,
    cache: &mut codellama_lsp::model::KvCache,
    prompt: &[u32],
    max_new_tokens: usize,
) -> codellama_lsp::model::generate::Generation {
    codellama_lsp::model::generate::generate(
        model,
        cache,
        &request(prompt, max_new_tokens).generation,
        &mut || false,
        &mut |_| {},
    )
    .unwrap()
}

const PROMPT: [u32; 10] = [1, 455, 403, 408, 394, 278, 418, 280, 314, 13];

#[tokio::test]
async fn a_job_streams_text_and_matches_a_direct_generation() {
    let model = model();
    let mut cache = model.llama.new_cache().unwrap();
    let direct = generate_alone(&model, &mut cache, &PROMPT, 20);
    let engine = Engine::start(model).unwrap();
    let mut job = engine.submit(request(&PROMPT, 20));
    let mut streamed = String::new();
    let result = loop {
        match job.events.recv().await.unwrap() {
            JobEvent::Text(text) => streamed.push_str(&text),
            JobEvent::Finished(result) => break result.unwrap(),
        }
    };
    assert_eq!(result.generation.ids, direct.ids);
    assert_eq!(result.generation.text, streamed);
    assert_eq!(result.generation.finish, FinishReason::MaxTokens);
    assert_eq!(result.stopped_by, None);
}

#[tokio::test]
async fn the_second_job_reuses_the_cached_prompt() {
    let engine = Engine::start(model()).unwrap();
    engine.submit(request(&PROMPT, 4)).finish().await.unwrap();
    let mut longer = PROMPT.to_vec();
    longer.push(262);
    let second = engine.submit(request(&longer, 4)).finish().await.unwrap();
    assert_eq!(second.generation.reused_tokens, PROMPT.len());
}

/// Waits for the first streamed text, so the job is known to be decoding.
async fn first_text(job: &mut codellama_lsp::engine::JobHandle) {
    match job.events.recv().await.unwrap() {
        JobEvent::Text(_) => {}
        JobEvent::Finished(result) => panic!("finished before streaming: {result:?}"),
    }
}

#[tokio::test]
async fn cancel_stops_within_a_token() {
    let engine = Engine::start(model()).unwrap();
    let mut job = engine.submit(request(&PROMPT, 10_000));
    first_text(&mut job).await;
    let streamed_before = 1;
    job.cancel();
    let cancelled_at = Instant::now();
    let mut events_after = 0;
    let result = loop {
        match job.events.recv().await.unwrap() {
            JobEvent::Text(_) => events_after += 1,
            JobEvent::Finished(result) => break result.unwrap(),
        }
    };
    assert_eq!(result.stopped_by, Some(StopCause::Cancelled));
    assert_eq!(result.generation.finish, FinishReason::Stopped);
    // The worker may be one token past the cancel (it checks between tokens): never more.
    assert!(events_after <= 2, "{events_after} pieces after the cancel");
    assert!(
        result.generation.ids.len() <= streamed_before + 40,
        "{}",
        result.generation.ids.len()
    );
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn dropping_the_handle_cancels_and_the_engine_serves_the_next_job() {
    let engine = Engine::start(model()).unwrap();
    let mut job = engine.submit(request(&PROMPT, 10_000));
    first_text(&mut job).await;
    drop(job);
    let started = Instant::now();
    let next = engine.submit(request(&PROMPT, 3)).finish().await.unwrap();
    assert_eq!(next.generation.ids.len(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the dropped job kept running"
    );
}

#[tokio::test]
async fn a_newer_job_for_the_same_key_supersedes_the_older() {
    let engine = Engine::start(model()).unwrap();
    let keyed = |max| JobRequest {
        supersede_key: Some("file:///a.py".into()),
        ..request(&PROMPT, max)
    };
    let mut old = engine.submit(keyed(10_000));
    first_text(&mut old).await;
    let new = engine.submit(keyed(2));
    let other_key = engine.submit(JobRequest {
        supersede_key: Some("file:///b.py".into()),
        ..request(&PROMPT, 2)
    });
    let old = old.finish().await.unwrap();
    assert_eq!(old.stopped_by, Some(StopCause::Superseded));
    let new = new.finish().await.unwrap();
    assert_eq!(new.stopped_by, None);
    assert_eq!(new.generation.ids.len(), 2);
    assert_eq!(other_key.finish().await.unwrap().stopped_by, None);
}

#[tokio::test]
async fn a_deadline_returns_what_is_ready() {
    let engine = Engine::start(model()).unwrap();
    let mut slow = request(&PROMPT, 10_000);
    slow.generation.deadline = Some(Instant::now() + Duration::from_millis(300));
    let result = engine.submit(slow).finish().await.unwrap();
    assert_eq!(result.generation.finish, FinishReason::Deadline);
    assert!(!result.generation.ids.is_empty());
    assert!(result.generation.ids.len() < 10_000);
}

#[tokio::test]
async fn errors_come_back_as_messages_and_the_engine_keeps_going() {
    let engine = Engine::start(model()).unwrap();
    let error = engine
        .submit(request(&[1, 99_999], 3))
        .finish()
        .await
        .unwrap_err();
    assert!(error.contains("outside the vocabulary"), "{error}");
    let too_long = vec![1; 5000];
    let error = engine
        .submit(request(&too_long, 3))
        .finish()
        .await
        .unwrap_err();
    assert!(error.contains("do not fit"), "{error}");
    let error = engine.submit(request(&[], 3)).finish().await.unwrap_err();
    assert!(error.contains("empty"), "{error}");
    assert_eq!(
        engine
            .submit(request(&PROMPT, 2))
            .finish()
            .await
            .unwrap()
            .generation
            .ids
            .len(),
        2
    );
}

#[tokio::test]
async fn stop_strings_end_the_generation_and_are_not_returned() {
    let model = model();
    let mut cache = model.llama.new_cache().unwrap();
    let plain = generate_alone(&model, &mut cache, &PROMPT, 12);
    // Use a piece of the model's own greedy output as the stop string.
    let stop: String = plain.text.chars().skip(2).take(2).collect();
    assert!(
        !stop.is_empty(),
        "the fixture model produced no text: {plain:?}"
    );
    let engine = Engine::start(model).unwrap();
    let mut with_stop = request(&PROMPT, 12);
    with_stop.generation.stop_strings = vec![stop.clone()];
    let result = engine.submit(with_stop).finish().await.unwrap();
    assert_eq!(result.generation.finish, FinishReason::StopString);
    let expected_end = plain.text.find(&stop).unwrap();
    assert_eq!(result.generation.text, plain.text[..expected_end]);
}

#[tokio::test]
async fn finished_jobs_leave_no_supersede_keys_behind() {
    let engine = Engine::start(model()).unwrap();
    for i in 0..200 {
        let mut job = request(&PROMPT, 1);
        job.supersede_key = Some(format!("file:///doc{i}.py"));
        engine.submit(job).finish().await.unwrap();
    }
    let mut last = request(&PROMPT, 1);
    last.supersede_key = Some("file:///last.py".into());
    let handle = engine.submit(last);
    assert!(engine.tracked_keys() <= 1, "{} keys", engine.tracked_keys());
    handle.finish().await.unwrap();
}

/// A prefill cut by its deadline goes on in the background, so the next request with the same
/// start finds it cached (the first keystrokes after opening a big file used to answer nothing,
/// each advancing the prefill by one chunk); a new job interrupts it at once.
#[tokio::test]
async fn a_prefill_cut_by_the_deadline_continues_in_the_background() {
    let engine = Engine::start(model()).unwrap();
    let prompt: Vec<u32> = std::iter::once(1)
        .chain((0..1500u32).map(|i| 300 + (i * 7919) % 30000))
        .collect();
    let mut cut = request(&prompt, 4);
    cut.generation.deadline = Some(std::time::Instant::now());
    let result = engine.submit(cut).finish().await.unwrap();
    assert_eq!(result.generation.finish, FinishReason::Deadline);
    assert!(result.generation.ids.is_empty());
    // Give the background prefill time to finish (the fixture evaluates 1500 tokens in well
    // under a second), then ask again without a deadline.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let again = engine.submit(request(&prompt, 4)).finish().await.unwrap();
    assert_eq!(
        again.generation.reused_tokens,
        prompt.len() - 1,
        "{:?}",
        again.generation
    );
    assert_eq!(again.generation.ids.len(), 4);
}

fn of_kind(kind: JobKind, prompt: &[u32], max_new_tokens: usize) -> JobRequest {
    JobRequest {
        kind,
        ..request(prompt, max_new_tokens)
    }
}

/// A long prompt of valid ids (the fixture's vocabulary), different for each `seed`.
fn long_prompt(seed: u32, len: u32) -> Vec<u32> {
    std::iter::once(1)
        .chain((0..len).map(|i| 300 + (i * 7919 + seed * 104_729) % 30000))
        .collect()
}

/// Completions never wait behind assist work: the assist job pauses between two tokens, the
/// completion runs (in its own KV slot), and the assist job resumes where it was, producing
/// exactly what it would have produced alone.
#[tokio::test]
async fn a_completion_runs_while_an_assist_job_pauses() {
    let model = model();
    let assist_prompt = long_prompt(1, 40);
    let mut cache = model.llama.new_cache().unwrap();
    let alone = generate_alone(&model, &mut cache, &assist_prompt, 1000);
    let completion_alone = generate_alone(&model, &mut cache, &PROMPT, 6);
    let engine = Engine::start(model).unwrap();
    let mut assist = engine.submit(of_kind(JobKind::Assist, &assist_prompt, 1000));
    first_text(&mut assist).await;
    let completion = engine
        .submit(of_kind(JobKind::Completion, &PROMPT, 6))
        .finish()
        .await
        .unwrap();
    assert_eq!(completion.generation.ids, completion_alone.ids);
    while let Ok(event) = assist.events.try_recv() {
        assert!(
            !matches!(event, JobEvent::Finished(_)),
            "the completion waited for the whole assist job"
        );
    }
    // The assist job was paused, not stopped: it resumes and streams the rest.
    let assist = assist.finish().await.unwrap();
    assert_eq!(
        assist.generation.ids, alone.ids,
        "the pause changed the answer"
    );
    assert_eq!(assist.stopped_by, None);
}

/// An assist job in between does not evict the completion prefix: the next keystroke reuses it.
#[tokio::test]
async fn the_completion_prefix_survives_an_assist_job() {
    let engine = Engine::start(model()).unwrap();
    let typed = long_prompt(2, 300);
    engine
        .submit(of_kind(JobKind::Completion, &typed, 2))
        .finish()
        .await
        .unwrap();
    engine
        .submit(of_kind(JobKind::Assist, &long_prompt(3, 200), 4))
        .finish()
        .await
        .unwrap();
    let mut next = typed.clone();
    next.push(262);
    let next = engine
        .submit(of_kind(JobKind::Completion, &next, 2))
        .finish()
        .await
        .unwrap();
    assert_eq!(next.generation.reused_tokens, typed.len());
}

/// A prefetch (warm-up, speculation) gives way the moment anything else arrives; what it
/// evaluated stays cached.
#[tokio::test]
async fn a_prefetch_stops_when_other_work_arrives() {
    let engine = Engine::start(model()).unwrap();
    let mut prefetch = engine.submit(of_kind(JobKind::Prefetch, &PROMPT, 100_000));
    first_text(&mut prefetch).await;
    let started = Instant::now();
    let completion = engine
        .submit(of_kind(JobKind::Completion, &PROMPT, 3))
        .finish()
        .await
        .unwrap();
    let prefetch = prefetch.finish().await.unwrap();
    assert_eq!(prefetch.generation.finish, FinishReason::Stopped);
    assert!(prefetch.generation.ids.len() < 100_000);
    assert_eq!(completion.generation.ids.len(), 3);
    assert_eq!(completion.generation.reused_tokens, PROMPT.len() - 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A flood of completions from many documents is bounded: while the engine is busy, only the
/// newest few wait; the older ones are answered at once, empty (superseded).
#[tokio::test]
async fn a_flood_of_completions_keeps_only_the_newest_waiting() {
    let engine = Engine::start(model()).unwrap();
    let mut busy = engine.submit(request(&PROMPT, 100_000));
    first_text(&mut busy).await;
    let flood: Vec<_> = (0..30)
        .map(|i| {
            engine.submit(JobRequest {
                supersede_key: Some(format!("file:///doc{i}.py")),
                ..request(&PROMPT, 1)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    busy.cancel();
    let mut dropped = 0;
    let mut served = 0;
    for (i, job) in flood.into_iter().enumerate() {
        let result = job.finish().await.unwrap();
        if result.stopped_by == Some(StopCause::Superseded) {
            dropped += 1;
            assert!(i < 30 - 8, "a recent request (#{i}) was dropped");
        } else {
            served += 1;
        }
    }
    assert_eq!(served, 8, "{dropped} dropped");
    assert_eq!(dropped, 22);
}
