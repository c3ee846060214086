//! Which backend runs the model: this process (`local`) or a server, as the `backend` setting
//! and the `--backend` flag name it.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The servers we speak to, by API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteKind {
    /// llama.cpp's `llama-server`: `/completion` takes token ids and returns them.
    LlamaServer,
    /// vLLM's OpenAI-compatible `/v1/completions`, which takes token ids as the prompt.
    Vllm,
    /// Any OpenAI-compatible `/v1/completions`; the prompt goes as text.
    Openai,
}

impl RemoteKind {
    pub const NAMES: &str = "llama-server, vllm or openai";

    pub fn name(self) -> &'static str {
        match self {
            Self::LlamaServer => "llama-server",
            Self::Vllm => "vllm",
            Self::Openai => "openai",
        }
    }

    /// Whether the server takes the prompt as token ids (else as text).
    pub fn takes_token_ids(self) -> bool {
        !matches!(self, Self::Openai)
    }
}

impl FromStr for RemoteKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "llama-server" | "llama.cpp" | "llamacpp" => Ok(Self::LlamaServer),
            "vllm" => Ok(Self::Vllm),
            "openai" => Ok(Self::Openai),
            other => Err(format!(
                "unknown backend kind '{other}' (expected {})",
                Self::NAMES
            )),
        }
    }
}

/// A server to send prompts to.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub kind: RemoteKind,
    /// The base URL (`http://host:8080`), without a trailing slash.
    pub url: String,
    /// The model name the API asks for (vLLM, OpenAI); found with `GET /v1/models` when unset.
    pub model: Option<String>,
    /// The environment variable that holds the API key, sent as `Authorization: Bearer`. The key
    /// itself is never stored in settings, never logged.
    pub api_key_env: Option<String>,
    /// The longest wait for the server's next bytes.
    pub timeout_ms: u64,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

impl RemoteSpec {
    pub fn new(kind: RemoteKind, url: &str) -> Result<Self, String> {
        let spec = Self {
            kind,
            url: url.trim().trim_end_matches('/').to_owned(),
            model: None,
            api_key_env: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
            return Err(format!(
                "backend url must start with http:// or https:// and name a host (got '{}')",
                self.display_url()
            ));
        }
        if let Some(name) = &self.api_key_env {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                // Not echoed: what was given may be the key itself.
                return Err("backend apiKeyEnv must be the name of an environment variable, like CODELLAMA_API_KEY; put the key itself in that variable, never in settings".into());
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return Err(format!(
                "backend timeoutMs must be between 1 and 600000 (got {})",
                self.timeout_ms
            ));
        }
        Ok(())
    }

    /// The URL of `path` on the server. OpenAI-style paths start with `/v1`; a base URL that
    /// already ends in `/v1` (as people often write it) does not get it twice.
    pub fn endpoint(&self, path: &str) -> String {
        match (self.url.strip_suffix("/v1"), path.strip_prefix("/v1/")) {
            (Some(base), Some(_)) => format!("{base}{path}"),
            _ => format!("{}{path}", self.url),
        }
    }

    /// The URL without credentials (`user:password@` is cut), for messages and logs.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The API key from its environment variable: `Ok(None)` when none is configured, an error
    /// saying what to do when the variable is missing.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let Some(name) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_owned())),
            _ => Err(format!(
                "the backend's API key is read from the environment variable {}, which is not set in the server's environment: set it where the editor starts codellama-lsp",
                shown_variable(name)
            )),
        }
    }
}

impl fmt::Debug for RemoteSpec {
    // By hand, so that a URL with credentials never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("kind", &self.kind)
            .field("url", &self.display_url())
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl fmt::Display for RemoteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.kind.name(), self.display_url())
    }
}

/// A variable's name for messages: conventional names (`TEAM_API_KEY`) as they are; anything
/// else (which may be a key pasted into the wrong setting) only by its first characters.
fn shown_variable(name: &str) -> String {
    let conventional = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if conventional {
        name.to_owned()
    } else {
        format!(
            "{}… (named by apiKeyEnv)",
            name.chars().take(3).collect::<String>()
        )
    }
}

/// `scheme://user:password@host/…` → `scheme://host/…`.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// Where the model runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// In this process, with the model file loaded here (the default).
    #[default]
    Local,
    Remote(RemoteSpec),
}

impl BackendChoice {
    pub fn remote(&self) -> Option<&RemoteSpec> {
        match self {
            Self::Local => None,
            Self::Remote(spec) => Some(spec),
        }
    }
}

/// The short form, for `--backend` and for a string `backend` setting: `local`, a URL
/// (llama-server), or `KIND:URL` (`vllm:http://gpu:8000`).
impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text == "local" {
            return Ok(Self::Local);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return RemoteSpec::new(RemoteKind::LlamaServer, text).map(Self::Remote);
        }
        let Some((kind, url)) = text.split_once(':') else {
            return Err(format!(
                "backend must be local, a server URL, or KIND:URL with KIND one of {} (got '{}')",
                RemoteKind::NAMES,
                redact_url(text)
            ));
        };
        RemoteSpec::new(kind.parse()?, url).map(Self::Remote)
    }
}

/// The `backend` setting as an editor sends it: the short form, or an object with every field.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BackendLayer {
    Short(String),
    Full(RemoteLayer),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteLayer {
    pub url: String,
    pub kind: Option<RemoteKind>,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub timeout_ms: Option<u64>,
}

impl BackendLayer {
    pub fn resolve(&self) -> Result<BackendChoice, String> {
        match self {
            Self::Short(text) => text.parse(),
            Self::Full(layer) => {
                let mut spec =
                    RemoteSpec::new(layer.kind.unwrap_or(RemoteKind::LlamaServer), &layer.url)?;
                spec.model = layer
                    .model
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned);
                spec.api_key_env = layer.api_key_env.clone();
                spec.timeout_ms = layer.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
                spec.validate()?;
                Ok(BackendChoice::Remote(spec))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_forms_name_local_a_llama_server_or_a_kind() {
        assert_eq!("local".parse(), Ok(BackendChoice::Local));
        let BackendChoice::Remote(spec) = "http://gpu:8080/".parse().unwrap() else {
            panic!("remote expected")
        };
        assert_eq!(
            (spec.kind, spec.url.as_str()),
            (RemoteKind::LlamaServer, "http://gpu:8080")
        );
        let BackendChoice::Remote(spec) = "vllm:https://gpu.lan/v1".parse().unwrap() else {
            panic!("remote expected")
        };
        assert_eq!(spec.kind, RemoteKind::Vllm);
        assert_eq!(
            spec.endpoint("/v1/completions"),
            "https://gpu.lan/v1/completions"
        );
        assert!(
            "ollama:http://x"
                .parse::<BackendChoice>()
                .unwrap_err()
                .contains("unknown backend kind")
        );
        assert!("gpu:8080".parse::<BackendChoice>().is_err());
        assert!("http://".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn endpoints_join_without_doubling_v1() {
        let spec = RemoteSpec::new(RemoteKind::LlamaServer, "http://h:1").unwrap();
        assert_eq!(spec.endpoint("/completion"), "http://h:1/completion");
        assert_eq!(
            spec.endpoint("/v1/completions"),
            "http://h:1/v1/completions"
        );
    }

    #[test]
    fn credentials_in_a_url_never_reach_messages() {
        let spec =
            RemoteSpec::new(RemoteKind::Openai, "https://me:s3cret@api.example.com/v1").unwrap();
        assert_eq!(spec.display_url(), "https://api.example.com/v1");
        assert!(!format!("{spec:?} {spec}").contains("s3cret"));
        let error = "openai:ftp://me:s3cret@x"
            .parse::<BackendChoice>()
            .unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn the_full_form_checks_every_field() {
        let layer: BackendLayer = serde_json::from_value(json!({
            "url": "http://gpu:8000", "kind": "vllm", "model": "codellama",
            "apiKeyEnv": "TEAM_KEY", "timeoutMs": 5000
        }))
        .unwrap();
        let BackendChoice::Remote(spec) = layer.resolve().unwrap() else {
            panic!("remote expected")
        };
        assert_eq!(spec.model.as_deref(), Some("codellama"));
        assert_eq!(spec.api_key_env.as_deref(), Some("TEAM_KEY"));
        assert_eq!(spec.timeout_ms, 5000);
        let key_in_settings: BackendLayer =
            serde_json::from_value(json!({"url": "http://gpu:8000", "apiKeyEnv": "sk-abc123-xyz"}))
                .unwrap();
        assert!(
            key_in_settings
                .resolve()
                .unwrap_err()
                .contains("never in settings")
        );
        // A typo is refused rather than ignored.
        assert!(
            serde_json::from_value::<BackendLayer>(json!({"url": "http://x", "apikey": "k"}))
                .is_err()
        );
    }

    #[test]
    fn a_missing_key_variable_says_where_to_set_it() {
        let mut spec = RemoteSpec::new(RemoteKind::Openai, "http://h").unwrap();
        assert_eq!(spec.api_key(), Ok(None));
        spec.api_key_env = Some("CODELLAMA_TEST_SURELY_UNSET_VARIABLE".into());
        let error = spec.api_key().unwrap_err();
        assert!(
            error.contains("CODELLAMA_TEST_SURELY_UNSET_VARIABLE") && error.contains("not set")
        );
        // A key pasted where the variable's name goes (it passes as a name) is not shown.
        spec.api_key_env = Some("sk_live_4eC39HqLyjWDarjtT1zdp7dc".into());
        let error = spec.api_key().unwrap_err();
        assert!(!error.contains("4eC39HqLyjWDarjtT1zdp7dc"), "{error}");
    }
}
