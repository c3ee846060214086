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
    let prefix_only = template.is_prefix_only(order);
    if prefix_only {
        config.prefix_share = 1.0;
    }
    loop {
        let mut window = window::select(document, cursor, &config, &count);
        if prefix_only {
            // Not in the prompt, but post-processing still trims what the suffix already has.
            window.suffix = window::text_after(document, cursor, config.snap_lines);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixture_tokenizer;

    #[test]
    fn prefix_only_prompts_hold_the_text_before_the_cursor_and_keep_the_suffix_for_trimming() {
        let tokenizer = fixture_tokenizer();
        let text = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n";
        let document = Rope::from_str(text);
        let cursor = text.find("return").unwrap();
        let config = WindowConfig::default();
        let infilling = FimTemplate::detect(&tokenizer, "fixture").unwrap();
        for (template, order) in [
            (FimTemplate::prefix_only(), FimOrder::Spm),
            (infilling.clone(), FimOrder::None),
        ] {
            let built = infill(&tokenizer, &template, &document, cursor, order, &config);
            let mut expected = vec![1];
            expected.extend(tokenizer.encode("def add(a, b):\n    ", false));
            assert_eq!(built.ids, expected);
            assert!(!built.ids.contains(&infilling.middle));
            assert_eq!(built.window.suffix, "return a + b\n\nprint(add(1, 2))\n");
        }
        // Infilling orders are unchanged.
        let built = infill(
            &tokenizer,
            &infilling,
            &document,
            cursor,
            FimOrder::Spm,
            &config,
        );
        assert!(built.ids.contains(&infilling.middle));
    }

    #[test]
    fn the_order_none_is_spelled_none() {
        assert_eq!("none".parse::<FimOrder>(), Ok(FimOrder::None));
        assert!("prefix".parse::<FimOrder>().unwrap_err().contains("none"));
    }
}
