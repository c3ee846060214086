//! User settings: one struct, filled in layers.
//!
//! Precedence, lowest to highest: built-in defaults, command-line flags (`serve --model …`),
//! `initializationOptions`, then each `workspace/didChangeConfiguration` (the editor's live
//! settings win, so changing a setting in the editor always takes effect). A layer only overrides
//! the keys it sets.

use serde::Deserialize;

use crate::model::{DeviceSpec, KvType};
use crate::prompt::FimOrder;
use crate::remote::{BackendChoice, BackendLayer};

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// A GGUF path or a hub spec (`owner/repo:file.gguf`); `None` is the default model.
    pub model: Option<String>,
    pub device: DeviceSpec,
    /// How the KV cache stores keys and values.
    pub kv_type: KvType,
    /// Most tokens a completion may generate.
    pub max_tokens: usize,
    /// The context the prompt is built for (prompt budget = this − `max_tokens`).
    pub context_tokens: usize,
    /// 0 = greedy, deterministic.
    pub temperature: f32,
    pub fim_order: FimOrder,
    /// Share of the prompt budget that goes to the text before the cursor.
    pub prefix_share: f32,
    /// How long a completion may take before what is ready is returned.
    pub deadline_ms: u64,
    /// While typing, show the first words of a suggestion this soon after the keystroke, however
    /// few; the rest keeps coming and the editor is told when it is whole (clients that can ask
    /// again: `experimental.codellamaSuggestionRefresh`). 0 waits for the whole suggestion.
    pub first_answer_ms: u64,
    /// Put chunks of other files similar to the code at the cursor in completion prompts.
    pub workspace_context: bool,
    /// Where the model runs: here, or on an inference server.
    pub backend: BackendChoice,
    /// With a remote backend: the GGUF file (path or hub spec) whose vocabulary the server's
    /// model uses, when `model` does not name it and the server cannot say.
    pub tokenizer: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            device: DeviceSpec::Auto,
            kv_type: KvType::F16,
            max_tokens: 128,
            context_tokens: 4096,
            temperature: 0.0,
            fim_order: FimOrder::Spm,
            prefix_share: 0.75,
            // Generous for CPUs; a GPU finishes well before it.
            deadline_ms: 3000,
            // Under the 80–200 ms between a fast typist's keystrokes, so a slow model's first
            // words show before the next keystroke cancels them.
            first_answer_ms: 100,
            workspace_context: true,
            backend: BackendChoice::Local,
            tokenizer: None,
        }
    }
}

/// One layer of settings as an editor sends it: every key optional, camelCase.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SettingsLayer {
    pub model: Option<String>,
    pub device: Option<String>,
    pub kv_type: Option<String>,
    pub max_tokens: Option<usize>,
    pub context_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub fim_order: Option<FimOrder>,
    pub prefix_share: Option<f32>,
    pub deadline_ms: Option<u64>,
    pub first_answer_ms: Option<u64>,
    pub workspace_context: Option<bool>,
    pub backend: Option<BackendLayer>,
    pub tokenizer: Option<String>,
}

impl SettingsLayer {
    /// Reads a layer from an editor's JSON. Settings may come bare or under a `codellama` key
    /// (as `workspace/didChangeConfiguration` usually nests them).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let value = value.get("codellama").unwrap_or(value);
        // Lua clients encode an empty table as `[]`: like `null`, it sets nothing.
        let empty_array = value.as_array().is_some_and(Vec::is_empty);
        if value.is_null() || empty_array {
            return Ok(Self::default());
        }
        serde_json::from_value(value.clone()).map_err(|error| format!("invalid settings: {error}"))
    }
}

impl Settings {
    /// Applies a layer on top; invalid values are refused with a message naming the key, and the
    /// previous value stays.
    pub fn apply(&mut self, layer: &SettingsLayer) -> Result<(), String> {
        let mut next = self.clone();
        if let Some(model) = &layer.model {
            next.model = (!model.trim().is_empty()).then(|| model.trim().to_owned());
        }
        if let Some(device) = &layer.device {
            next.device = device.parse()?;
        }
        if let Some(kv_type) = &layer.kv_type {
            next.kv_type = kv_type
                .parse()
                .map_err(|error: String| format!("kvType: {error}"))?;
        }
        if let Some(max_tokens) = layer.max_tokens {
            next.max_tokens = max_tokens;
        }
        if let Some(context) = layer.context_tokens {
            next.context_tokens = context;
        }
        if let Some(temperature) = layer.temperature {
            next.temperature = temperature;
        }
        if let Some(order) = layer.fim_order {
            next.fim_order = order;
        }
        if let Some(share) = layer.prefix_share {
            next.prefix_share = share;
        }
        if let Some(enabled) = layer.workspace_context {
            next.workspace_context = enabled;
        }
        if let Some(deadline) = layer.deadline_ms {
            next.deadline_ms = deadline;
        }
        if let Some(first) = layer.first_answer_ms {
            next.first_answer_ms = first;
        }
        if let Some(backend) = &layer.backend {
            next.backend = backend.resolve()?;
        }
        if let Some(tokenizer) = &layer.tokenizer {
            next.tokenizer = (!tokenizer.trim().is_empty()).then(|| tokenizer.trim().to_owned());
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.max_tokens) {
            return Err(format!(
                "maxTokens must be between 1 and 4096 (got {})",
                self.max_tokens
            ));
        }
        if self.context_tokens < self.max_tokens + 64 || self.context_tokens > 1 << 20 {
            return Err(format!(
                "contextTokens must leave room for maxTokens + 64 and be at most 1048576 (got {})",
                self.context_tokens
            ));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between 0 and 2 (got {})",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.prefix_share) {
            return Err(format!(
                "prefixShare must be between 0 and 1 (got {})",
                self.prefix_share
            ));
        }
        if self.deadline_ms == 0 || self.deadline_ms > 600_000 {
            return Err(format!(
                "deadlineMs must be between 1 and 600000 (got {})",
                self.deadline_ms
            ));
        }
        if self.first_answer_ms > 600_000 {
            return Err(format!(
                "firstAnswerMs must be between 0 and 600000 (got {})",
                self.first_answer_ms
            ));
        }
        Ok(())
    }

    /// Tokens of document text the prompt may hold.
    pub fn prompt_budget(&self) -> usize {
        self.context_tokens.saturating_sub(self.max_tokens + 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layers_override_only_what_they_set() {
        let mut settings = Settings::default();
        let cli = SettingsLayer {
            model: Some("/cli.gguf".into()),
            ..SettingsLayer::default()
        };
        settings.apply(&cli).unwrap();
        let init = SettingsLayer::from_json(&json!({"maxTokens": 64, "fimOrder": "psm"})).unwrap();
        settings.apply(&init).unwrap();
        assert_eq!(settings.model.as_deref(), Some("/cli.gguf"));
        assert_eq!(settings.max_tokens, 64);
        assert_eq!(settings.fim_order, FimOrder::Psm);
        let live =
            SettingsLayer::from_json(&json!({"codellama": {"model": "/live.gguf"}})).unwrap();
        settings.apply(&live).unwrap();
        assert_eq!(settings.model.as_deref(), Some("/live.gguf"));
        assert_eq!(settings.max_tokens, 64);
    }

    /// `firstAnswerMs` 0 turns first words off (a valid value, unlike `deadlineMs` 0); beyond
    /// ten minutes it is refused by name.
    #[test]
    fn first_answer_ms_may_be_zero_and_is_bounded() {
        let mut settings = Settings::default();
        assert_eq!(settings.first_answer_ms, 100);
        let off = SettingsLayer::from_json(&json!({"firstAnswerMs": 0})).unwrap();
        settings.apply(&off).unwrap();
        assert_eq!(settings.first_answer_ms, 0);
        let huge = SettingsLayer::from_json(&json!({"firstAnswerMs": 600_001})).unwrap();
        let error = settings.apply(&huge).unwrap_err();
        assert!(error.contains("firstAnswerMs"), "{error}");
        assert_eq!(settings.first_answer_ms, 0);
    }

    #[test]
    fn invalid_values_are_refused_and_nothing_changes() {
        let mut settings = Settings::default();
        let bad = SettingsLayer::from_json(&json!({"maxTokens": 0, "model": "/x.gguf"})).unwrap();
        assert!(settings.apply(&bad).unwrap_err().contains("maxTokens"));
        assert_eq!(settings, Settings::default());
        assert!(SettingsLayer::from_json(&json!({"temperature": "hot"})).is_err());
        let device = SettingsLayer::from_json(&json!({"device": "tpu"})).unwrap();
        assert!(
            settings
                .apply(&device)
                .unwrap_err()
                .contains("unknown device")
        );
    }

    #[test]
    fn the_kv_cache_type_is_f16_by_default_and_an_unknown_one_is_refused_whole() {
        let mut settings = Settings::default();
        assert_eq!(settings.kv_type, KvType::F16);
        let f32 = SettingsLayer::from_json(&json!({"kvType": "f32"})).unwrap();
        settings.apply(&f32).unwrap();
        assert_eq!(settings.kv_type, KvType::F32);
        let before = settings.clone();
        let bad = SettingsLayer::from_json(&json!({"kvType": "q4", "maxTokens": 64})).unwrap();
        let error = settings.apply(&bad).unwrap_err();
        assert!(
            error.contains("kvType") && error.contains("f16 or f32"),
            "{error}"
        );
        assert_eq!(settings, before);
        assert!(SettingsLayer::from_json(&json!({"kvType": 16})).is_err());
    }

    #[test]
    fn an_empty_table_from_a_lua_client_sets_nothing() {
        // Neovim sends `{}` from Lua as `[]`; it must not be refused.
        assert_eq!(
            SettingsLayer::from_json(&json!([])),
            Ok(SettingsLayer::default())
        );
        assert_eq!(
            SettingsLayer::from_json(&json!(null)),
            Ok(SettingsLayer::default())
        );
        assert!(SettingsLayer::from_json(&json!([1])).is_err());
    }

    #[test]
    fn a_backend_is_local_by_default_and_checked_when_set() {
        let mut settings = Settings::default();
        assert_eq!(settings.backend, BackendChoice::Local);
        let remote = SettingsLayer::from_json(&json!({
            "backend": {"url": "http://gpu:8080", "kind": "llama-server"},
            "tokenizer": "/models/codellama-7b.Q4_K_M.gguf"
        }))
        .unwrap();
        settings.apply(&remote).unwrap();
        assert_eq!(
            settings.backend.remote().map(|r| r.url.as_str()),
            Some("http://gpu:8080")
        );
        assert_eq!(
            settings.tokenizer.as_deref(),
            Some("/models/codellama-7b.Q4_K_M.gguf")
        );
        let bad = SettingsLayer::from_json(&json!({"backend": "tgi:http://x"})).unwrap();
        assert!(
            settings
                .apply(&bad)
                .unwrap_err()
                .contains("unknown backend kind")
        );
        let back = SettingsLayer::from_json(&json!({"backend": "local"})).unwrap();
        settings.apply(&back).unwrap();
        assert_eq!(settings.backend, BackendChoice::Local);
    }
}
