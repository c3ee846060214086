//! The real [`Generator`]: text prompts become the loaded model's tokens (its infilling or chat
//! template), the engine runs them, and the answer streams back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ropey::Rope;

use super::{Ask, AssistError, Generator, ModelInfo, Prompt};
use crate::engine::{JobEvent, JobKind, JobRequest};
use crate::model::generate::GenerationRequest;
use crate::model::sampling::SamplingParams;
use crate::model_host::{ModelHost, ReadyModel};
use crate::prompt::{self, FimOrder, WindowConfig};

pub struct ModelGenerator {
    host: Arc<ModelHost>,
    temperature: f32,
    /// The context the prompt is built for (the setting; the model may allow less).
    context_tokens: usize,
    /// How long to wait for a model that is still loading.
    wait: Duration,
}

impl ModelGenerator {
    pub fn new(host: Arc<ModelHost>, temperature: f32, context_tokens: usize) -> Self {
        Self {
            host,
            temperature,
            context_tokens,
            wait: Duration::from_secs(120),
        }
    }

    async fn model(&self) -> Result<Arc<ReadyModel>, AssistError> {
        self.host
            .ready(Instant::now() + self.wait)
            .await
            .ok_or_else(|| AssistError::NoModel(self.host.unavailable_reason()))
    }

    /// The prompt's ids, fitted to the context (oldest chat turns dropped first).
    fn prompt_ids(
        &self,
        model: &ReadyModel,
        ask: &Ask,
        capacity: usize,
    ) -> Result<(Vec<u32>, Vec<u32>), AssistError> {
        let room = capacity.saturating_sub(ask.max_tokens);
        match &ask.prompt {
            Prompt::Infill { prefix, suffix } => {
                let template = model.template.clone().map_err(AssistError::NoModel)?;
                let document = Rope::from_str(&format!("{prefix}{suffix}"));
                let cursor = prefix.chars().count();
                let window = WindowConfig {
                    budget_tokens: room.saturating_sub(8),
                    // The definition being documented follows the hole.
                    prefix_share: 0.4,
                    ..WindowConfig::default()
                };
                let built = prompt::infill(
                    &model.tokenizer,
                    &template,
                    &document,
                    cursor,
                    FimOrder::Psm,
                    &window,
                );
                Ok((built.ids, Vec::new()))
            }
            Prompt::Chat(chat) => {
                let mut chat = chat.clone();
                loop {
                    let ids = model.chat.encode(&model.tokenizer, &chat);
                    if ids.len() <= room {
                        return Ok((ids, model.chat.stop_ids()));
                    }
                    if chat.turns.is_empty() {
                        return Err(AssistError::TooLong {
                            needed: ids.len() + ask.max_tokens,
                            capacity,
                        });
                    }
                    chat.turns.remove(0);
                }
            }
        }
    }
}

impl Generator for ModelGenerator {
    async fn info(&self) -> Result<ModelInfo, AssistError> {
        let model = self.model().await?;
        Ok(ModelInfo {
            name: model.name.clone(),
            can_infill: model.template.is_ok(),
        })
    }

    async fn generate(
        &self,
        ask: Ask,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<String, AssistError> {
        let model = self.model().await?;
        let capacity = self.context_tokens.min(model.context_tokens);
        let (prompt, stop_tokens) = self.prompt_ids(&model, &ask, capacity)?;
        let mut job = model.engine.submit(JobRequest {
            generation: GenerationRequest {
                prompt,
                max_new_tokens: ask.max_tokens,
                sampling: SamplingParams {
                    temperature: self.temperature,
                    ..SamplingParams::default()
                },
                stop_strings: ask.stop,
                stop_tokens,
                deadline: None,
                prefill_slice: None,
            },
            supersede_key: None,
            kind: JobKind::Assist,
        });
        // Dropping this future drops `job`, which stops the generation within a token.
        while let Some(event) = job.events.recv().await {
            match event {
                JobEvent::Text(text) => on_text(&text),
                JobEvent::Finished(Ok(result)) => {
                    return match result.stopped_by {
                        Some(_) => Err(AssistError::Cancelled),
                        None => Ok(result.generation.text),
                    };
                }
                JobEvent::Finished(Err(error)) => return Err(AssistError::Engine(error)),
            }
        }
        Err(AssistError::Engine("the engine stopped".into()))
    }
}
