//! Chat prompts as token ids: the Llama 2 / Code Llama Instruct template, ChatML for models whose
//! vocabulary has `<|im_start|>` (SmolLM2, Qwen, many fine-tunes), and Gemma's turns for models
//! with `<start_of_turn>` (Gemma, CodeGemma).
//!
//! Control tokens are inserted as ids, never spelled in text: text is tokenized with
//! `parse_special = false`, so a user's message that contains "</s>" or "<|im_end|>" stays text.

use crate::model::tokenizer::Tokenizer;

/// One conversation to continue: earlier turns, the new user message, and text the answer is
/// made to start with (e.g. the opening of a code fence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chat {
    pub system: String,
    /// Earlier (user, assistant) turns, oldest first.
    pub turns: Vec<(String, String)>,
    pub user: String,
    pub answer_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] …`,
    /// as Meta's reference `chat_completion` builds it.
    Llama2 { bos: u32, eos: u32 },
    /// `<|im_start|>{role}\n{content}<|im_end|>\n`, the answer opened with `assistant\n`.
    ChatMl {
        bos: Option<u32>,
        start: u32,
        end: u32,
    },
    /// `<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n{answer}…`; Gemma
    /// has no system role, so the system text opens the first user turn.
    Gemma {
        bos: Option<u32>,
        start: u32,
        end: u32,
    },
}

impl ChatTemplate {
    pub fn detect(tokenizer: &Tokenizer) -> Self {
        let bos = tokenizer.bos_id().filter(|_| tokenizer.add_bos_token());
        if let (Some(start), Some(end)) = (
            tokenizer.piece_to_id("<|im_start|>"),
            tokenizer.piece_to_id("<|im_end|>"),
        ) {
            return Self::ChatMl { bos, start, end };
        }
        if let (Some(start), Some(end)) = (
            tokenizer.piece_to_id("<start_of_turn>"),
            tokenizer.piece_to_id("<end_of_turn>"),
        ) {
            return Self::Gemma { bos, start, end };
        }
        Self::Llama2 {
            bos: tokenizer.bos_id().unwrap_or(1),
            eos: tokenizer.eos_id().unwrap_or(2),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Llama2 { .. } => "llama2",
            Self::ChatMl { .. } => "chatml",
            Self::Gemma { .. } => "gemma",
        }
    }

    /// Tokens that end the assistant's answer, besides the model's own stop tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        match self {
            Self::Llama2 { eos, .. } => vec![*eos],
            Self::ChatMl { end, .. } | Self::Gemma { end, .. } => vec![*end],
        }
    }

    pub fn encode(&self, tokenizer: &Tokenizer, chat: &Chat) -> Vec<u32> {
        match *self {
            Self::Llama2 { bos, eos } => {
                let mut users: Vec<String> = chat
                    .turns
                    .iter()
                    .map(|(user, _)| user.trim().to_owned())
                    .chain(std::iter::once(chat.user.trim().to_owned()))
                    .collect();
                if !chat.system.trim().is_empty() {
                    users[0] = format!("<<SYS>>\n{}\n<</SYS>>\n\n{}", chat.system.trim(), users[0]);
                }
                let mut ids = Vec::new();
                for (user, (_, answer)) in users.iter().zip(&chat.turns) {
                    ids.push(bos);
                    let text = format!("[INST] {user} [/INST] {} ", answer.trim());
                    ids.extend(tokenizer.encode(&text, false));
                    ids.push(eos);
                }
                let last = users.last().map_or("", String::as_str);
                let text = if chat.answer_prefix.is_empty() {
                    format!("[INST] {last} [/INST]")
                } else {
                    format!("[INST] {last} [/INST] {}", chat.answer_prefix)
                };
                ids.push(bos);
                ids.extend(tokenizer.encode(&text, false));
                ids
            }
            Self::ChatMl { bos, start, end } => {
                let mut closed = Vec::new();
                if !chat.system.trim().is_empty() {
                    closed.push(("system", chat.system.trim().to_owned()));
                }
                for (user, answer) in &chat.turns {
                    closed.push(("user", user.trim().to_owned()));
                    closed.push(("assistant", answer.trim().to_owned()));
                }
                closed.push(("user", chat.user.trim().to_owned()));
                let marks = TurnMarks { bos, start, end };
                marks.encode(tokenizer, &closed, "assistant", &chat.answer_prefix)
            }
            Self::Gemma { bos, start, end } => {
                // No system role: the system text opens the first user turn.
                let mut users = chat
                    .turns
                    .iter()
                    .map(|(user, _)| user.trim())
                    .chain(std::iter::once(chat.user.trim()))
                    .map(str::to_owned);
                let first = users.next().unwrap_or_default();
                let system = chat.system.trim();
                let first = if system.is_empty() {
                    first
                } else {
                    format!("{system}\n\n{first}")
                };
                let mut users = std::iter::once(first).chain(users);
                let mut closed = Vec::new();
                for (_, answer) in &chat.turns {
                    closed.push(("user", users.next().unwrap_or_default()));
                    closed.push(("model", answer.trim().to_owned()));
                }
                closed.push(("user", users.next().unwrap_or_default()));
                let marks = TurnMarks { bos, start, end };
                marks.encode(tokenizer, &closed, "model", &chat.answer_prefix)
            }
        }
    }
}

/// The control tokens of templates that mark each turn `{start}{role}\n{content}{end}\n`
/// (ChatML, Gemma); they differ only in role names and where the system text goes.
struct TurnMarks {
    bos: Option<u32>,
    start: u32,
    end: u32,
}

impl TurnMarks {
    /// `closed` turns, then the answer's turn opened with `answer_prefix`.
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        closed: &[(&str, String)],
        answer_role: &str,
        answer_prefix: &str,
    ) -> Vec<u32> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        let newline = tokenizer.encode("\n", false);
        for (role, content) in closed {
            ids.push(self.start);
            ids.extend(tokenizer.encode(&format!("{role}\n{content}"), false));
            ids.push(self.end);
            ids.extend(&newline);
        }
        ids.push(self.start);
        ids.extend(tokenizer.encode(&format!("{answer_role}\n{answer_prefix}"), false));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixture_tokenizer;

    #[test]
    fn llama2_follows_meta_reference_layout() {
        let tokenizer = fixture_tokenizer();
        let template = ChatTemplate::detect(&tokenizer);
        assert_eq!(template, ChatTemplate::Llama2 { bos: 1, eos: 2 });
        let chat = Chat {
            system: "Be brief.".into(),
            turns: vec![("Hi".into(), "Hello!".into())],
            user: " Fix it ".into(),
            answer_prefix: "```rust\n".into(),
        };
        let ids = template.encode(&tokenizer, &chat);
        let mut expected = vec![1];
        expected.extend(tokenizer.encode(
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! ",
            false,
        ));
        expected.push(2);
        expected.push(1);
        expected.extend(tokenizer.encode("[INST] Fix it [/INST] ```rust\n", false));
        assert_eq!(ids, expected);
    }

    #[test]
    fn gemma_turns_carry_the_system_text_in_the_first_user_turn() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/codellama-lsp-tiny-gemma.gguf");
        let vocabulary = crate::model::Vocabulary::read(&path).unwrap();
        let tokenizer = &vocabulary.tokenizer;
        let template = ChatTemplate::detect(tokenizer);
        let ChatTemplate::Gemma { bos, start, end } = template else {
            panic!("{template:?}")
        };
        assert_eq!(template.name(), "gemma");
        let chat = Chat {
            system: "Be brief.".into(),
            turns: vec![("Hi".into(), "Hello!".into())],
            user: "Fix it".into(),
            answer_prefix: "```".into(),
        };
        let mut expected: Vec<u32> = bos.into_iter().collect();
        let newline = tokenizer.encode("\n", false);
        for (text, close) in [
            ("user\nBe brief.\n\nHi", true),
            ("model\nHello!", true),
            ("user\nFix it", true),
            ("model\n```", false),
        ] {
            expected.push(start);
            expected.extend(tokenizer.encode(text, false));
            if close {
                expected.push(end);
                expected.extend(&newline);
            }
        }
        assert_eq!(template.encode(tokenizer, &chat), expected);
        assert_eq!(template.stop_ids(), [end]);
    }

    #[test]
    fn control_tokens_in_messages_stay_text() {
        let tokenizer = fixture_tokenizer();
        let template = ChatTemplate::detect(&tokenizer);
        let chat = Chat {
            user: "print('</s><s>')".into(),
            ..Chat::default()
        };
        let ids = template.encode(&tokenizer, &chat);
        assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 1);
        assert!(!ids.contains(&2));
        assert_eq!(template.stop_ids(), [2]);
    }
}
