//! Prompts as token ids, built from plain text — no IO, no LSP.
//!
//! `fim` knows the infilling templates; `window` picks the text around the cursor. [`infill`]
//! puts them together: the exact ids a model sees for a completion at the cursor.

pub mod chat;
pub mod fim;
pub mod window;

use ropey::Rope;

pub use chat::{Chat, ChatTemplate};
pub use fim::{FimFamily, FimOrder, FimTemplate};
pub use window::{Window, WindowConfig};

use crate::model::tokenizer::Tokenizer;

/// An infilling prompt and the text it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfillPrompt {
    pub ids: Vec<u32>,
    pub window: Window,
}

/// Builds the infilling prompt for the cursor (a char index into `document`). The prompt never
/// exceeds `config.budget_tokens` plus the template's few special tokens.
pub fn infill(
    tokenizer: &Tokenizer,
    template: &FimTemplate,
    document: &Rope,
    cursor: usize,
    order: FimOrder,
    config: &WindowConfig,
) -> InfillPrompt {
    infill_with_context(tokenizer, template, document, cursor, order, config, "")
}

/// [`infill`] with `context` (e.g. chunks of other files) in front of the text before the
/// cursor; the window around the cursor gets what budget the context leaves.
pub fn infill_with_context(
    tokenizer: &Tokenizer,
    template: &FimTemplate,
    document: &Rope,
    cursor: usize,
    order: FimOrder,
    config: &WindowConfig,
    context: &str,
) -> InfillPrompt {
    const SPECIAL_TOKENS: usize = 4;
    let count = |text: &str| tokenizer.encode(text, false).len();
    let mut config = config.clone();
    let context_tokens = if context.is_empty() {
        0
    } else {
        count(context)
    };
    let context = if context_tokens * 2 > config.budget_tokens {
        "" // never let the context crowd out the code at the cursor
    } else {
        config.budget_tokens -= context_tokens;
        context
    };
    loop {
        let window = window::select(document, cursor, &config, &count);
        let prefix = format!("{context}{}", window.prefix);
        let ids = template.prompt(tokenizer, &prefix, &window.suffix, order);
        // Counting lines one by one may rarely underestimate the joined text: shrink and retry.
        if ids.len() <= config.budget_tokens + context_tokens + SPECIAL_TOKENS
            || config.budget_tokens == 0
        {
            return InfillPrompt { ids, window };
        }
        config.budget_tokens = config.budget_tokens * 9 / 10;
    }
}
