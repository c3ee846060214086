//! The pure half of the remote backend: what we send to each kind of server, and how we read what
//! comes back (server-sent events, final statistics, errors). No IO here, so every odd answer a
//! server can give is a unit test.

use serde_json::{Value, json};

use super::config::RemoteKind;
use crate::model::generate::GenerationRequest;

/// What one completion request asks for, beyond the generation itself.
pub struct Ask<'a> {
    pub kind: RemoteKind,
    /// The API's model name (vLLM and OpenAI-style servers want one).
    pub model: Option<&'a str>,
    pub request: &'a GenerationRequest,
    /// The prompt as text, for servers that do not take ids (`None`: send `request.prompt`).
    pub prompt_text: Option<&'a str>,
    /// Ids that end the generation: the vocabulary's end-of-text tokens and the request's.
    pub stop_tokens: &'a [u32],
}

/// The API path of completions on each kind of server.
pub fn completion_path(kind: RemoteKind) -> &'static str {
    match kind {
        RemoteKind::LlamaServer => "/completion",
        RemoteKind::Vllm | RemoteKind::Openai => "/v1/completions",
    }
}

/// The JSON body of a streaming completion request.
pub fn request_body(ask: &Ask<'_>) -> Value {
    let request = ask.request;
    let sampling = &request.sampling;
    let greedy = sampling.temperature <= 0.0;
    let prompt = match ask.prompt_text {
        Some(text) => json!(text),
        None => json!(request.prompt),
    };
    match ask.kind {
        RemoteKind::LlamaServer => {
            let mut body = json!({
                "prompt": prompt,
                "n_predict": request.max_new_tokens,
                "stream": true,
                // The server keeps the prompt's KV cache between requests: the next keystroke
                // reuses the common prefix, as the local engine does.
                "cache_prompt": true,
                // The generated ids, so the text is decoded here exactly as locally.
                "return_tokens": true,
                "temperature": sampling.temperature.max(0.0),
                // Greedy is top-1, whatever else the server's sampler chain holds.
                "top_k": if greedy { 1 } else { sampling.top_k },
                "top_p": sampling.top_p,
                "min_p": 0.0,
                "repeat_penalty": sampling.repetition_penalty,
                "repeat_last_n": sampling.repetition_window,
                "seed": sampling.seed,
                "stop": request.stop_strings,
            });
            if let Some(model) = ask.model {
                body["model"] = json!(model);
            }
            body
        }
        RemoteKind::Vllm => {
            let mut body = json!({
                "model": ask.model.unwrap_or_default(),
                "prompt": prompt,
                "max_tokens": request.max_new_tokens,
                "stream": true,
                "stream_options": {"include_usage": true},
                "temperature": sampling.temperature.max(0.0),
                "top_p": sampling.top_p,
                "seed": sampling.seed,
                "repetition_penalty": sampling.repetition_penalty,
                "stop": request.stop_strings,
                // vLLM stops only on the tokenizer's EOS by itself; infilling models end with
                // their own end-of-text token.
                "stop_token_ids": ask.stop_tokens,
            });
            if sampling.top_k > 0 && !greedy {
                body["top_k"] = json!(sampling.top_k);
            }
            body
        }
        RemoteKind::Openai => {
            let mut body = json!({
                "model": ask.model.unwrap_or_default(),
                "prompt": prompt,
                "max_tokens": request.max_new_tokens,
                "stream": true,
                "temperature": sampling.temperature.max(0.0),
                "top_p": sampling.top_p,
                "seed": sampling.seed,
            });
            // OpenAI's API takes at most four stop sequences; the rest are applied here.
            let stops: Vec<&String> = request.stop_strings.iter().take(4).collect();
            if !stops.is_empty() {
                body["stop"] = json!(stops);
            }
            body
        }
    }
}

/// Why the server says it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFinish {
    EndOfText,
    MaxTokens,
    StopString,
}

/// Prompt statistics a server reports at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<usize>,
    /// Prompt tokens the server did not evaluate again (its prompt cache).
    pub cached_tokens: Option<usize>,
    pub prompt_ms: Option<f64>,
    pub decode_ms: Option<f64>,
}

/// One streamed piece of an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// The generated ids of this piece, when the server returns them.
    pub tokens: Option<Vec<u32>>,
    pub finish: Option<ServerFinish>,
    pub usage: Option<Usage>,
    /// `[DONE]`: the stream is over.
    pub done: bool,
}

/// Reads one event's JSON (or `[DONE]`). An `error` object in the stream is an `Err`.
pub fn parse_chunk(kind: RemoteKind, payload: &str) -> Result<Chunk, String> {
    let payload = payload.trim();
    if payload == "[DONE]" {
        return Ok(Chunk {
            done: true,
            ..Chunk::default()
        });
    }
    let value: Value = serde_json::from_str(payload).map_err(|error| {
        format!(
            "the server sent something that is not JSON ({error}): {}",
            excerpt(payload)
        )
    })?;
    if let Some(message) = error_in(&value) {
        return Err(message);
    }
    match kind {
        RemoteKind::LlamaServer => Ok(llama_server_chunk(&value)),
        RemoteKind::Vllm | RemoteKind::Openai => openai_chunk(&value),
    }
}

fn llama_server_chunk(value: &Value) -> Chunk {
    let text = value["content"].as_str().unwrap_or_default().to_owned();
    let tokens = value["tokens"].as_array().map(|ids| {
        ids.iter()
            .filter_map(Value::as_u64)
            .filter_map(|id| u32::try_from(id).ok())
            .collect()
    });
    let stopped = value["stop"].as_bool().unwrap_or(false);
    let finish = stopped.then(|| match value["stop_type"].as_str() {
        Some("limit") => ServerFinish::MaxTokens,
        Some("word") => ServerFinish::StopString,
        _ => ServerFinish::EndOfText,
    });
    let usage = stopped.then(|| {
        let timings = &value["timings"];
        Usage {
            prompt_tokens: value["tokens_evaluated"].as_u64().map(|n| n as usize),
            cached_tokens: timings["cache_n"]
                .as_u64()
                .or_else(|| value["tokens_cached"].as_u64())
                .map(|n| n as usize),
            prompt_ms: timings["prompt_ms"].as_f64(),
            decode_ms: timings["predicted_ms"].as_f64(),
        }
    });
    Chunk {
        text,
        tokens,
        finish,
        usage,
        done: stopped,
    }
}

fn openai_chunk(value: &Value) -> Result<Chunk, String> {
    let choice = value["choices"].get(0);
    let usage = value
        .get("usage")
        .filter(|u| u.is_object())
        .map(|usage| Usage {
            prompt_tokens: usage["prompt_tokens"].as_u64().map(|n| n as usize),
            cached_tokens: usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .map(|n| n as usize),
            prompt_ms: None,
            decode_ms: None,
        });
    let Some(choice) = choice else {
        // The usage-only chunk at the end of a vLLM stream has no choices.
        if usage.is_some() {
            return Ok(Chunk {
                usage,
                ..Chunk::default()
            });
        }
        return Err(format!(
            "the server's answer has no \"choices\": {}",
            excerpt(&value.to_string())
        ));
    };
    let finish = match choice["finish_reason"].as_str() {
        None => None,
        Some("length") => Some(ServerFinish::MaxTokens),
        Some("stop") if choice["stop_reason"].is_string() => Some(ServerFinish::StopString),
        Some(_) => Some(ServerFinish::EndOfText),
    };
    Ok(Chunk {
        text: choice["text"].as_str().unwrap_or_default().to_owned(),
        tokens: None,
        finish,
        usage,
        done: false,
    })
}

/// The message of an error object, in the shapes servers use: `{"error": {"message": …}}`
/// (OpenAI, llama-server), `{"error": "…"}`, or vLLM's older `{"object": "error", "message": …}`.
pub fn error_in(value: &Value) -> Option<String> {
    let error = &value["error"];
    if let Some(message) = error["message"].as_str() {
        return Some(message.to_owned());
    }
    if let Some(message) = error.as_str() {
        return Some(message.to_owned());
    }
    if value["object"] == "error" {
        return Some(
            value["message"]
                .as_str()
                .unwrap_or("unspecified error")
                .to_owned(),
        );
    }
    None
}

/// What an HTTP error answer means, in words for the user.
pub fn http_error(status: u16, body: &str) -> String {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| error_in(&value))
        .unwrap_or_else(|| excerpt(body));
    let hint = match status {
        401 | 403 => " (check the API key: the backend's apiKeyEnv names the variable)",
        404 => " (check the backend's url and kind: the server has no such endpoint)",
        _ => "",
    };
    if detail.is_empty() {
        format!("the server answered HTTP {status}{hint}")
    } else {
        format!("the server answered HTTP {status}: {detail}{hint}")
    }
}

/// At most 200 characters of a server's text, on one line.
fn excerpt(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// What a server-sent-events stream carries, line by line.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A `data:` payload.
    Data(String),
    /// An `error:` line (llama-server's older way of reporting a failure mid-stream).
    Error(String),
}

/// Splits a server-sent-events byte stream into events; bytes may arrive cut anywhere.
#[derive(Debug, Default)]
pub struct EventReader {
    pending: Vec<u8>,
}

/// A line longer than this is not a completion chunk: the stream is broken.
const MAX_LINE: usize = 8 << 20;

impl EventReader {
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(data) = line.strip_prefix("data:") {
                events.push(Event::Data(data.trim_start().to_owned()));
            } else if let Some(error) = line.strip_prefix("error:") {
                events.push(Event::Error(error.trim().to_owned()));
            }
            // Blank lines, comments (`:`), `event:` and `id:` carry nothing we use.
        }
        if self.pending.len() > MAX_LINE {
            return Err(
                "the server sent a line longer than 8 MB; this is not a completion stream".into(),
            );
        }
        Ok(events)
    }

    /// Whatever is left when the stream ends (a last line without its newline).
    pub fn finish(mut self) -> Result<Vec<Event>, String> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        self.push(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sampling::SamplingParams;

    fn request() -> GenerationRequest {
        GenerationRequest {
            prompt: vec![1, 32007, 822],
            max_new_tokens: 16,
            stop_strings: vec!["\n\n".into()],
            ..GenerationRequest::default()
        }
    }

    #[test]
    fn llama_server_gets_ids_greedy_and_the_prompt_cache() {
        let request = request();
        let body = request_body(&Ask {
            kind: RemoteKind::LlamaServer,
            model: None,
            request: &request,
            prompt_text: None,
            stop_tokens: &[2, 32010],
        });
        assert_eq!(body["prompt"], json!([1, 32007, 822]));
        assert_eq!(body["n_predict"], 16);
        assert_eq!(body["cache_prompt"], true);
        assert_eq!(body["return_tokens"], true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["top_k"], 1);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["stop"], json!(["\n\n"]));
        assert!(body.get("model").is_none());
    }

    #[test]
    fn vllm_gets_ids_its_model_and_the_stop_ids() {
        let mut request = request();
        request.sampling = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            ..SamplingParams::default()
        };
        let body = request_body(&Ask {
            kind: RemoteKind::Vllm,
            model: Some("codellama/CodeLlama-7b-hf"),
            request: &request,
            prompt_text: None,
            stop_tokens: &[2, 32010],
        });
        assert_eq!(body["prompt"], json!([1, 32007, 822]));
        assert_eq!(body["model"], "codellama/CodeLlama-7b-hf");
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(body["stop_token_ids"], json!([2, 32010]));
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn openai_gets_text_and_at_most_four_stops() {
        let mut request = request();
        request.stop_strings = (0..6).map(|i| format!("stop{i}")).collect();
        let body = request_body(&Ask {
            kind: RemoteKind::Openai,
            model: Some("m"),
            request: &request,
            prompt_text: Some("<PRE> def"),
            stop_tokens: &[],
        });
        assert_eq!(body["prompt"], "<PRE> def");
        assert_eq!(body["stop"].as_array().map(Vec::len), Some(4));
        assert!(body.get("top_k").is_none());
    }

    #[test]
    fn llama_server_chunks_carry_text_ids_and_final_timings() {
        let partial = parse_chunk(
            RemoteKind::LlamaServer,
            r#"{"index":0,"content":" x","tokens":[921],"stop":false,"id_slot":0}"#,
        )
        .unwrap();
        assert_eq!(partial.text, " x");
        assert_eq!(partial.tokens, Some(vec![921]));
        assert_eq!((partial.finish, partial.done), (None, false));
        let last = parse_chunk(
            RemoteKind::LlamaServer,
            r#"{"content":"","tokens":[],"stop":true,"stop_type":"limit","tokens_evaluated":40,
               "timings":{"cache_n":39,"prompt_n":1,"prompt_ms":2.5,"predicted_ms":30.0}}"#,
        )
        .unwrap();
        assert_eq!(last.finish, Some(ServerFinish::MaxTokens));
        assert!(last.done);
        let usage = last.usage.unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.cached_tokens),
            (Some(40), Some(39))
        );
        assert_eq!(usage.prompt_ms, Some(2.5));
    }

    #[test]
    fn openai_style_chunks_and_the_end_of_the_stream() {
        let piece = parse_chunk(
            RemoteKind::Vllm,
            r#"{"id":"c","object":"text_completion","choices":[{"index":0,"text":"ret","finish_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(piece.text, "ret");
        let stop = parse_chunk(
            RemoteKind::Vllm,
            r#"{"choices":[{"index":0,"text":"","finish_reason":"stop","stop_reason":"\n\n"}]}"#,
        )
        .unwrap();
        assert_eq!(stop.finish, Some(ServerFinish::StopString));
        let eos = parse_chunk(
            RemoteKind::Openai,
            r#"{"choices":[{"index":0,"text":"","finish_reason":"stop","stop_reason":null}]}"#,
        )
        .unwrap();
        assert_eq!(eos.finish, Some(ServerFinish::EndOfText));
        let usage = parse_chunk(
            RemoteKind::Vllm,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
        )
        .unwrap();
        // An empty choices array with usage is vLLM's usage chunk.
        assert_eq!(usage.usage.and_then(|u| u.prompt_tokens), Some(12));
        assert!(parse_chunk(RemoteKind::Vllm, " [DONE] ").unwrap().done);
    }

    #[test]
    fn errors_in_any_shape_become_messages() {
        let message = |payload: &str| parse_chunk(RemoteKind::Vllm, payload).unwrap_err();
        assert_eq!(
            message(r#"{"error":{"message":"out of memory","code":500}}"#),
            "out of memory"
        );
        assert_eq!(
            message(r#"{"object":"error","message":"bad model","code":404}"#),
            "bad model"
        );
        assert!(message("{\"choices\": [").contains("not JSON"));
        assert!(message(r#"{"id": 1}"#).contains("no \"choices\""));
        assert!(http_error(401, "").contains("API key"));
        assert_eq!(
            http_error(
                400,
                r#"{"error":{"message":"the request exceeds the available context size"}}"#
            ),
            "the server answered HTTP 400: the request exceeds the available context size"
        );
        let long = "x".repeat(5000);
        assert!(http_error(502, &long).chars().count() < 260);
    }

    #[test]
    fn events_survive_any_cut_of_the_bytes() {
        let stream =
            b"data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\nerror: {\"message\":\"x\"}\n";
        let whole = {
            let mut reader = EventReader::default();
            let mut events = reader.push(stream).unwrap();
            events.extend(reader.finish().unwrap());
            events
        };
        assert_eq!(
            whole,
            vec![
                Event::Data("{\"a\":1}".into()),
                Event::Data("[DONE]".into()),
                Event::Error("{\"message\":\"x\"}".into()),
            ]
        );
        for cut in 0..stream.len() {
            let mut reader = EventReader::default();
            let mut events = reader.push(&stream[..cut]).unwrap();
            events.extend(reader.push(&stream[cut..]).unwrap());
            events.extend(reader.finish().unwrap());
            assert_eq!(events, whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_stream_without_newlines_is_refused_before_it_eats_memory() {
        let mut reader = EventReader::default();
        let block = vec![b'x'; 1 << 20];
        let outcome = (0..9).try_for_each(|_| reader.push(&block).map(drop));
        assert!(outcome.unwrap_err().contains("8 MB"));
    }
}
