//! `bench --typing`: the cost of a keystroke as the editor sees it — a scripted typing session in
//! a realistic file, one infilling completion per keystroke, with and without KV-cache reuse, in
//! both FIM orders.

use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};

use crate::document::Document;
use crate::engine::{Engine, JobRequest};
use crate::model::LoadedModel;
use crate::model::generate::{GenerationRequest, generate};
use crate::model::tokenizer::Tokenizer;
use crate::prompt::{self, FimOrder, FimTemplate, WindowConfig};

/// A Python module of about 400 lines: the session types a new line in its middle.
fn sample_document() -> String {
    let mut text = String::from("import math\nfrom dataclasses import dataclass\n\n\n");
    for i in 0..36 {
        text.push_str(&format!(
            "@dataclass\nclass Shape{i}:\n    width: float\n    height: float\n\n    \
             def area(self) -> float:\n        return self.width * self.height * {i}\n\n    \
             def scaled(self, factor: float) -> \"Shape{i}\":\n        \
             return Shape{i}(self.width * factor, self.height * factor)\n\n\n"
        ));
    }
    text
}

const TYPED: &str = "    total = sum(shape.area() for shape in shapes)";

/// The document after each keystroke of the session, and the cursor (a char index) in it.
fn keystrokes() -> impl Iterator<Item = (String, usize)> {
    let base = sample_document();
    let insert_at = base
        .find("@dataclass\nclass Shape18")
        .unwrap_or(base.len() / 2);
    (1..=TYPED.len()).map(move |n| {
        let typed = &TYPED[..n];
        let text = format!("{}{typed}\n{}", &base[..insert_at], &base[insert_at..]);
        let cursor = text[..insert_at + typed.len()].chars().count();
        (text, cursor)
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Runs the session in one order, with or without reuse; returns the per-keystroke latencies and
/// the share of prompt tokens that came from the cache.
fn session(
    model: &LoadedModel,
    template: &FimTemplate,
    order: FimOrder,
    reuse: bool,
    max_tokens: usize,
    window: &WindowConfig,
) -> Result<Value> {
    let mut cache = model.llama.new_cache()?;
    let mut latencies = Vec::new();
    let (mut prompt_tokens, mut reused_tokens) = (0usize, 0usize);
    for (text, cursor) in keystrokes() {
        let document = Document::new(&text, 0, "python");
        let started = Instant::now();
        let built = prompt::infill(
            &model.tokenizer,
            template,
            document.rope(),
            cursor,
            order,
            window,
        );
        if !reuse {
            cache.clear();
        }
        let request = GenerationRequest {
            prompt: built.ids,
            max_new_tokens: max_tokens,
            ..GenerationRequest::default()
        };
        let generation = generate(model, &mut cache, &request, &mut || false, &mut |_| {})?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        prompt_tokens += generation.prompt_tokens;
        reused_tokens += generation.reused_tokens;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "order": format!("{order:?}").to_lowercase(),
        "kv_reuse": reuse,
        "keystrokes": latencies.len(),
        "p50_ms": percentile(&latencies, 0.5),
        "p95_ms": percentile(&latencies, 0.95),
        "mean_prompt_tokens": prompt_tokens as f64 / latencies.len().max(1) as f64,
        "reused_share": reused_tokens as f64 / prompt_tokens.max(1) as f64,
    }))
}

pub fn run(model: &LoadedModel, max_tokens: usize, context: usize) -> Result<Vec<Value>> {
    let template =
        FimTemplate::detect(&model.tokenizer, &model.name).map_err(anyhow::Error::msg)?;
    let window = WindowConfig {
        budget_tokens: context.saturating_sub(max_tokens + 8),
        ..WindowConfig::default()
    };
    let mut results = Vec::new();
    for order in [FimOrder::Spm, FimOrder::Psm] {
        for reuse in [true, false] {
            results.push(session(
                model, &template, order, reuse, max_tokens, &window,
            )?);
        }
    }
    Ok(results)
}

/// The SPM session with KV reuse through each engine in turn — the local one and a server's — to
/// measure what the network path adds. Each keystroke waits for the whole completion.
pub fn compare_backends(
    engines: &[(String, Engine)],
    tokenizer: &Tokenizer,
    template: &FimTemplate,
    max_tokens: usize,
    window: &WindowConfig,
) -> Result<Vec<Value>> {
    let mut results = Vec::new();
    for (name, engine) in engines {
        let mut latencies = Vec::new();
        let (mut prompt_tokens, mut reused_tokens) = (0usize, 0usize);
        let mut outputs = Vec::new();
        let mut overheads = Vec::new();
        for (text, cursor) in keystrokes() {
            let document = Document::new(&text, 0, "python");
            let started = Instant::now();
            let built = prompt::infill(
                tokenizer,
                template,
                document.rope(),
                cursor,
                FimOrder::Spm,
                window,
            );
            let job = engine.submit(JobRequest {
                generation: GenerationRequest {
                    prompt: built.ids,
                    max_new_tokens: max_tokens,
                    ..GenerationRequest::default()
                },
                ..JobRequest::default()
            });
            let generation = job
                .finish_blocking()
                .map_err(anyhow::Error::msg)?
                .generation;
            let wall = started.elapsed().as_secs_f64() * 1000.0;
            latencies.push(wall);
            // Everything but the model's own work: prompt building, queues and, for a server,
            // HTTP on the way there and back.
            overheads.push(wall - generation.prefill_ms - generation.decode_ms);
            prompt_tokens += generation.prompt_tokens;
            reused_tokens += generation.reused_tokens;
            outputs.push(generation.ids);
        }
        latencies.sort_by(f64::total_cmp);
        overheads.sort_by(f64::total_cmp);
        results.push(json!({
            "backend": name,
            "overhead_p50_ms": percentile(&overheads, 0.5),
            "order": "spm",
            "kv_reuse": true,
            "keystrokes": latencies.len(),
            "p50_ms": percentile(&latencies, 0.5),
            "p95_ms": percentile(&latencies, 0.95),
            "mean_prompt_tokens": prompt_tokens as f64 / latencies.len().max(1) as f64,
            "reused_share": reused_tokens as f64 / prompt_tokens.max(1) as f64,
            "outputs": outputs,
        }));
    }
    Ok(results)
}
