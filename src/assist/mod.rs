//! Docstrings, chat edits and chat, run against a model: plan the prompt (`actions`), ask a
//! [`Generator`], make the answer safe, and return plain edits in bytes of the source.
//!
//! The model sits behind the [`Generator`] trait so the whole flow is tested with a scripted
//! stand-in (deterministic answers, streamed pieces, failures); [`ModelGenerator`] is the real
//! one, over the engine. Nothing here knows LSP types; nothing here applies an edit.

mod model_generator;
mod sessions;

use std::future::Future;
use std::ops::Range;

pub use model_generator::ModelGenerator;
pub use sessions::ChatSessions;

use crate::actions::Language;
use crate::actions::docstring::{self, Answer};
use crate::actions::edit::{self, LineEdit};
use crate::actions::target::{self, Lookup};
use crate::prompt::Chat;

/// Longest docstring answer, in tokens.
pub const DOCSTRING_TOKENS: usize = 192;
/// Longest chat answer, in tokens.
pub const CHAT_TOKENS: usize = 768;

/// What to ask the model, as text; the generator turns it into the model's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Fill the hole between `prefix` and `suffix` (models trained for infilling).
    Infill { prefix: String, suffix: String },
    /// Continue a conversation in the model's chat template.
    Chat(Chat),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub prompt: Prompt,
    pub max_tokens: usize,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
}

/// What the loaded model can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub can_infill: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssistError {
    #[error("{0}")]
    NoModel(String),
    #[error("{0}")]
    NothingToDo(String),
    #[error("{0}")]
    Unusable(String),
    #[error(
        "the prompt needs {needed} tokens but the model's context has room for {capacity}; select less code, or raise \"contextTokens\""
    )]
    TooLong { needed: usize, capacity: usize },
    #[error("the request was cancelled; nothing was changed")]
    Cancelled,
    #[error(
        "the document changed while the answer was being written; nothing was applied (run it again)"
    )]
    Stale,
    #[error("{0}")]
    BadRequest(String),
    #[error("the model failed: {0}")]
    Engine(String),
}

/// The model, as the assistant needs it. `on_text` receives the answer as it streams.
pub trait Generator: Send + Sync {
    /// Waits for the model (a load in progress) and says what it can do.
    fn info(&self) -> impl Future<Output = Result<ModelInfo, AssistError>> + Send;

    fn generate(
        &self,
        ask: Ask,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> impl Future<Output = Result<String, AssistError>> + Send;
}

/// A replacement in bytes of the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub range: Range<usize>,
    pub text: String,
}

/// A generated docstring and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Docstring {
    pub kind: &'static str,
    pub name: String,
    pub edit: Replacement,
    /// The documentation's words, one entry per line, without markers.
    pub lines: Vec<String>,
}

/// The definition at `offset` that needs a docstring, or why there is none.
pub fn docstring_target(
    language: Language,
    source: &str,
    offset: usize,
) -> Result<target::DocTarget, AssistError> {
    match target::find(language, source, offset) {
        Lookup::Found(target) => Ok(target),
        Lookup::Documented { kind, name } => Err(AssistError::NothingToDo(format!(
            "the {kind} `{name}` already has documentation"
        ))),
        Lookup::Nothing => Err(AssistError::NothingToDo(format!(
            "there is no function, method or type at the cursor to document ({} files)",
            language.name()
        ))),
    }
}

/// Writes a docstring for the definition at byte `offset` of `source`: by infilling when the
/// model can (the docstring is the hole, the code around it is the context), else by chat.
pub async fn docstring<G: Generator>(
    generator: &G,
    language: Language,
    source: &str,
    offset: usize,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Docstring, AssistError> {
    let target = docstring_target(language, source, offset)?;
    let info = generator.info().await?;
    let (ask, primed) = if info.can_infill {
        let infill = docstring::infill_prompt(language, &target, source);
        let ask = Ask {
            prompt: Prompt::Infill {
                prefix: infill.prefix,
                suffix: infill.suffix,
            },
            max_tokens: DOCSTRING_TOKENS,
            stop: infill.stop,
        };
        (ask, None)
    } else {
        let chat = docstring::chat_prompt(language, &target, source);
        let ask = Ask {
            prompt: Prompt::Chat(Chat {
                system: chat.system,
                user: chat.user,
                turns: Vec::new(),
                answer_prefix: chat.answer_prefix.clone(),
            }),
            max_tokens: DOCSTRING_TOKENS,
            stop: chat.stop,
        };
        (ask, Some(chat.answer_prefix))
    };
    let retry = ask.clone();
    let answer = generator.generate(ask, on_text).await?;
    tracing::debug!("docstring: the model answered {answer:?}");
    // Both prompts open the comment, so the answer continues it; a chat model that went its
    // own way (a fenced block, prose around it) is read as a whole chat answer instead.
    let as_middle = |answer: &str| docstring::sanitize(answer, Answer::Infill, language, &target);
    let as_chat = |answer: &str| docstring::sanitize(answer, Answer::Chat, language, &target);
    let lines = match &primed {
        Some(prefix) => {
            let whole = format!("{prefix}{answer}");
            let first = if answer.contains("```") {
                as_chat(&whole).or_else(|_| as_middle(&answer))
            } else {
                as_middle(&answer).or_else(|_| as_chat(&whole))
            };
            match first {
                Ok(lines) => Ok(lines),
                Err(_) => {
                    // Small chat models sometimes answer the primed comment with code; asked
                    // once more without priming, they often answer in prose or a fenced block.
                    let Prompt::Chat(mut chat) = retry.prompt else {
                        unreachable!("primed prompts are chat prompts")
                    };
                    chat.answer_prefix.clear();
                    let ask = Ask {
                        prompt: Prompt::Chat(chat),
                        stop: Vec::new(),
                        ..retry
                    };
                    let again = generator.generate(ask, on_text).await?;
                    tracing::debug!("docstring: asked again, the model answered {again:?}");
                    as_chat(&again)
                }
            }
        }
        None => as_middle(&answer),
    }
    .map_err(|unusable| AssistError::Unusable(unusable.to_string()))?;
    let (range, text) = docstring::render(language, &target, source, &lines);
    Ok(Docstring {
        kind: target.kind,
        name: target.name,
        edit: Replacement { range, text },
        lines,
    })
}

/// Rewrites bytes `selection` of `source` as `instruction` says; returns the smallest line edits
/// (in bytes of `source`) and the new text of the selection.
pub async fn edit_selection<G: Generator>(
    generator: &G,
    language: Option<Language>,
    file_name: &str,
    source: &str,
    selection: Range<usize>,
    instruction: &str,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<(Vec<Replacement>, String), AssistError> {
    if instruction.trim().is_empty() {
        return Err(AssistError::BadRequest(
            "the edit needs an instruction (say how the selection should change)".into(),
        ));
    }
    if selection.start > selection.end
        || selection.end > source.len()
        || !source.is_char_boundary(selection.start)
        || !source.is_char_boundary(selection.end)
    {
        return Err(AssistError::BadRequest(
            "the selection is outside the document".into(),
        ));
    }
    let old = &source[selection.clone()];
    if old.trim().is_empty() {
        return Err(AssistError::NothingToDo(
            "select the code to rewrite first".into(),
        ));
    }
    generator.info().await?;
    let planned = edit::prompt(language, file_name, source, selection.clone(), instruction);
    let answer_prefix = planned.answer_prefix.clone();
    let ask = Ask {
        prompt: Prompt::Chat(Chat {
            system: planned.system,
            user: planned.user,
            turns: Vec::new(),
            answer_prefix: planned.answer_prefix,
        }),
        // Room for a rewrite somewhat longer than the original.
        max_tokens: (old.len() / 2 + 256).min(4096),
        stop: planned.stop,
    };
    // The answer continues the opened fence; read it whole so the fence closes where it should.
    let answer = format!("{answer_prefix}{}", generator.generate(ask, on_text).await?);
    let code = edit::extract_code(&answer).ok_or_else(|| {
        AssistError::Unusable(format!(
            "the model's answer had no code (it said: {:?})",
            answer.chars().take(120).collect::<String>()
        ))
    })?;
    let line_start = source[..selection.start].rfind('\n').map_or(0, |n| n + 1);
    let first_line = &source[line_start..];
    let indent_len = first_line.len() - first_line.trim_start_matches([' ', '\t']).len();
    let indent = &first_line[..indent_len];
    let starts_mid_line = !source[line_start..selection.start].trim().is_empty();
    let new = edit::fit(&code, old, indent, starts_mid_line);
    let edits = edit::minimal_edits(old, &new)
        .into_iter()
        .map(|LineEdit { range, text }| Replacement {
            range: selection.start + range.start..selection.start + range.end,
            text,
        })
        .collect();
    Ok((edits, new))
}

/// Some code the chat message is about.
pub struct CodeContext<'a> {
    pub language: Option<Language>,
    pub file_name: &'a str,
    pub code: &'a str,
}

const CHAT_SYSTEM: &str = "You are a helpful, precise programming assistant running on the user's own machine. \
Answer concisely. Put code in fenced code blocks with the language named.";

/// Answers `message` in the conversation `session_id`, remembering the turn.
pub async fn chat<G: Generator>(
    generator: &G,
    sessions: &ChatSessions,
    session_id: &str,
    message: &str,
    context: Option<CodeContext<'_>>,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<String, AssistError> {
    if message.trim().is_empty() {
        return Err(AssistError::BadRequest("the chat message is empty".into()));
    }
    generator.info().await?;
    let user = match context {
        Some(context) => {
            let fence = context.language.map_or("", Language::fence);
            format!(
                "{message}\n\nThe code (from {}):\n```{fence}\n{}\n```",
                context.file_name, context.code
            )
        }
        None => message.to_owned(),
    };
    let ask = Ask {
        prompt: Prompt::Chat(Chat {
            system: CHAT_SYSTEM.into(),
            turns: sessions.history(session_id),
            user: user.clone(),
            answer_prefix: String::new(),
        }),
        max_tokens: CHAT_TOKENS,
        stop: Vec::new(),
    };
    let answer = generator.generate(ask, on_text).await?;
    let answer = answer.trim().to_owned();
    if answer.is_empty() {
        return Err(AssistError::Unusable(
            "the model gave an empty answer".into(),
        ));
    }
    sessions.record(session_id, user, answer.clone());
    Ok(answer)
}

#[cfg(test)]
mod tests;
