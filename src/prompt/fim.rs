//! Fill-in-the-middle templates: which special tokens a model infills with, and how a prefix and a
//! suffix become the prompt's token ids.
//!
//! Code Llama follows Meta's reference (`infilling_prompt_tokens`):
//! - PSM: `[BOS, <PRE>] + encode(prefix) + [<SUF>] + encode_infilling(suffix) + [<MID>]`
//! - SPM: `[BOS, <PRE>, <SUF>] + encode_infilling(suffix) + [<MID>] + encode(prefix)`
//!
//! where `encode` adds SentencePiece's leading-space marker and `encode_infilling` does not.
//! The other llama-architecture families use prefix/suffix/middle tokens in PSM order.

use crate::model::tokenizer::Tokenizer;

/// The order of the parts in the prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FimOrder {
    /// Prefix, suffix, middle.
    Psm,
    /// Suffix, then prefix right before the middle: the cursor is at the very end of the prompt,
    /// so a keystroke only changes the last tokens and the KV cache keeps everything before them.
    #[default]
    Spm,
    /// No infilling: the text before the cursor alone, continued as plain text (for models
    /// without FIM tokens, and to measure what infilling adds).
    None,
}

impl std::str::FromStr for FimOrder {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "psm" => Ok(Self::Psm),
            "spm" => Ok(Self::Spm),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown FIM order '{text}': use spm, psm or none")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FimFamily {
    CodeLlama,
    DeepSeekCoder,
    StarCoder,
    /// Qwen2.5-Coder and CodeGemma share the `<|fim_prefix|>` spelling.
    QwenStyle,
    /// No infilling tokens: the prompt is the text before the cursor.
    PrefixOnly,
}

impl FimFamily {
    /// The family's name, as `models info` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::CodeLlama => "code-llama",
            Self::DeepSeekCoder => "deepseek-coder",
            Self::StarCoder => "starcoder",
            Self::QwenStyle => "qwen / codegemma",
            Self::PrefixOnly => "none (prefix only)",
        }
    }
}

/// The special pieces of each family, as their texts appear in the vocabulary.
const FAMILIES: [(FimFamily, [&str; 3], &[&str]); 4] = [
    (
        FimFamily::CodeLlama,
        ["▁<PRE>", "▁<SUF>", "▁<MID>"],
        &["▁<EOT>"],
    ),
    (
        FimFamily::DeepSeekCoder,
        ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
        &["<|EOT|>"],
    ),
    (
        FimFamily::StarCoder,
        ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"],
        &["<|endoftext|>"],
    ),
    (
        FimFamily::QwenStyle,
        ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"],
        &["<|endoftext|>", "<|fim_pad|>", "<|file_separator|>"],
    ),
];

/// A model's infilling tokens and the family that says how to arrange them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FimTemplate {
    pub family: FimFamily,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    /// Tokens that end the middle (besides the model's end-of-sequence).
    pub stop: Vec<u32>,
}

impl FimTemplate {
    /// The template of prefix-only completion: any base or chat model continues the text before
    /// the cursor (its ids are unused).
    pub fn prefix_only() -> Self {
        Self {
            family: FimFamily::PrefixOnly,
            prefix: 0,
            suffix: 0,
            middle: 0,
            stop: Vec::new(),
        }
    }

    /// The infilling template `detect` found, or prefix-only completion (and why) when it found
    /// none.
    pub fn or_prefix_only(detected: Result<Self, String>) -> (Self, Option<String>) {
        match detected {
            Ok(template) => (template, None),
            Err(problem) => (Self::prefix_only(), Some(problem)),
        }
    }

    /// Whether prompts hold the text before the cursor only.
    pub fn is_prefix_only(&self, order: FimOrder) -> bool {
        self.family == FimFamily::PrefixOnly || order == FimOrder::None
    }

    /// Finds the template: infilling ids named in the GGUF metadata first (the tokenizer reads
    /// them), then the families' piece texts in the vocabulary, then a hint in the model's name.
    pub fn detect(tokenizer: &Tokenizer, model_name: &str) -> Result<Self, String> {
        if let Some(ids) = tokenizer.fim_tokens() {
            let prefix_text = tokenizer.piece(ids.prefix).unwrap_or_default();
            let family = FAMILIES
                .iter()
                .find(|(_, pieces, _)| pieces[0] == prefix_text)
                .map_or(FimFamily::CodeLlama, |(family, _, _)| *family);
            return Ok(Self {
                family,
                prefix: ids.prefix,
                suffix: ids.suffix,
                middle: ids.middle,
                stop: vec![ids.eot],
            });
        }
        for (family, pieces, stops) in FAMILIES {
            let ids: Option<Vec<u32>> = pieces.iter().map(|p| tokenizer.piece_to_id(p)).collect();
            if let Some(ids) = ids {
                return Ok(Self {
                    family,
                    prefix: ids[0],
                    suffix: ids[1],
                    middle: ids[2],
                    stop: stops
                        .iter()
                        .filter_map(|s| tokenizer.piece_to_id(s))
                        .collect(),
                });
            }
        }
        let lower = model_name.to_ascii_lowercase();
        let hint = if lower.contains("instruct") && !lower.contains("code") {
            " It looks like a chat model; use a Code Llama 7B/13B (base or Instruct) GGUF."
        } else if lower.contains("34b") || lower.contains("70b") {
            " Code Llama 34B and 70B were not trained for infilling; use 7B or 13B."
        } else {
            ""
        };
        Err(format!(
            "the model '{model_name}' has no fill-in-the-middle tokens: completions continue the text before the cursor only (a FIM model such as Code Llama 7B/13B also sees the code after it, and suggests better).{hint}"
        ))
    }

    /// The prompt ids for `prefix` / `suffix` in `order` (PSM for families other than Code Llama).
    pub fn prompt(
        &self,
        tokenizer: &Tokenizer,
        prefix: &str,
        suffix: &str,
        order: FimOrder,
    ) -> Vec<u32> {
        let bos = tokenizer.bos_id().filter(|_| tokenizer.add_bos_token());
        let mut ids: Vec<u32> = bos.into_iter().collect();
        if self.is_prefix_only(order) {
            ids.extend(tokenizer.encode(prefix, false));
            return ids;
        }
        match (self.family, order) {
            (FimFamily::CodeLlama, FimOrder::Spm) => {
                ids.extend([self.prefix, self.suffix]);
                ids.extend(tokenizer.encode_infilling(suffix));
                ids.push(self.middle);
                ids.extend(tokenizer.encode(prefix, false));
            }
            (FimFamily::CodeLlama, FimOrder::Psm) => {
                ids.push(self.prefix);
                ids.extend(tokenizer.encode(prefix, false));
                ids.push(self.suffix);
                ids.extend(tokenizer.encode_infilling(suffix));
                ids.push(self.middle);
            }
            _ => {
                ids.push(self.prefix);
                ids.extend(tokenizer.encode_infilling(prefix));
                ids.push(self.suffix);
                ids.extend(tokenizer.encode_infilling(suffix));
                ids.push(self.middle);
            }
        }
        ids
    }
}
