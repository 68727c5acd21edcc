//! The OpenAI-compatible API's wire format, defined once: what a request to
//! `/v1/chat/completions` or `/v1/completions` must hold (checked by the
//! HTTP front before a worker sees it), the summary a worker answers a
//! finished generation with ([`Summary`], made by `aqueduct.openai` through
//! the binding), and every object and Server-Sent Event the front writes
//! back: the completion, its chunks, `data: [DONE]`, the models, errors.
//!
//! The front writes a chunk per streamed part with no parsing: the JSON
//! around a part's text is made once per stream ([`Framer`]).

use serde_json::{Map, Value};

use crate::http_wire::push_json_string;

/// Which generation endpoint a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: `messages` in, a `message` out.
    Chat,
    /// `/v1/completions`: a `prompt` in, `text` out.
    Completions,
}

impl Endpoint {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
        }
    }
}

/// What the front needs of a request (the workers get its whole body).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
}

/// An error as the API gives it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// The error's JSON object.
    pub fn json(&self) -> Vec<u8> {
        error_json(&self.message, self.kind, self.param, self.code)
    }
}

/// The type an HTTP status stands for in the API's errors.
pub fn error_kind(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// `{"error": {"message", "type", "param", "code"}}`.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let mut out = String::with_capacity(message.len() + 64);
    out.push_str("{\"error\": {\"message\": ");
    push_json_string(&mut out, message);
    out.push_str(", \"type\": ");
    push_json_string(&mut out, kind);
    for (name, value) in [("param", param), ("code", code)] {
        out.push_str(", \"");
        out.push_str(name);
        out.push_str("\": ");
        match value {
            Some(value) => push_json_string(&mut out, value),
            None => out.push_str("null"),
        }
    }
    out.push_str("}}");
    out.into_bytes()
}

/// The API's error JSON for one of aqueduct's error reports
/// (`{"error": message, "type": exception}`, see `http_wire::error_json`)
/// that stands for HTTP `status`: the exception's name becomes the code.
pub fn from_report(report: &[u8], status: u16) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(report).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("error").unwrap_or_else(|| "the task failed in a worker".to_owned());
    let code = field("type");
    error_json(&message, error_kind(status), None, code.as_deref())
}

/// The request's parameters, when it is one the front can pass on for
/// `model`; the error to answer otherwise. Unknown fields are ignored (the
/// workers see them).
pub fn parse_request(endpoint: Endpoint, body: &[u8], model: &str) -> Result<Params, ApiError> {
    let fields = fields_for(body, model)?;
    match endpoint {
        Endpoint::Chat => check_messages(fields.get("messages"))?,
        Endpoint::Completions => check_prompt(fields.get("prompt"))?,
    }
    match fields.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(n) => {
            let message = format!("n must be 1 (one choice per request), not {n}");
            return Err(ApiError::invalid(message, Some("n")));
        }
    }
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = fields.get(name).filter(|v| !v.is_null()) {
            if !value.as_u64().is_some_and(|n| n > 0) {
                let message = format!("{name} must be a positive integer, not {value}");
                return Err(ApiError::invalid(message, Some(leak(name))));
            }
        }
    }
    for (name, high) in [("temperature", 2.0), ("top_p", 1.0)] {
        if let Some(value) = fields.get(name).filter(|v| !v.is_null()) {
            if !value.as_f64().is_some_and(|x| (0.0..=high).contains(&x)) {
                let message = format!("{name} must be a number in 0..{high}, not {value}");
                return Err(ApiError::invalid(message, Some(leak(name))));
            }
        }
    }
    let stream = flag(&fields, "stream")?;
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => flag(options, "include_usage")?,
        Some(_) => {
            let message = "stream_options must be an object";
            return Err(ApiError::invalid(message, Some("stream_options")));
        }
    };
    Ok(Params {
        model: model.to_owned(),
        stream,
        include_usage,
    })
}

/// A request body's fields, when it is a JSON object asking for `model`.
pub(crate) fn fields_for(body: &[u8], model: &str) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}"), None))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    };
    let asked = match fields.get("model") {
        Some(Value::String(asked)) => asked,
        Some(_) => return Err(ApiError::invalid("model must be a string", Some("model"))),
        None => return Err(ApiError::invalid("model is required", Some("model"))),
    };
    if asked != model {
        return Err(ApiError {
            status: 404,
            message: format!("The model `{asked}` does not exist; this server has `{model}`"),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        });
    }
    Ok(fields)
}

/// The parameter names errors may name, as `'static` strings.
fn leak(name: &str) -> &'static str {
    match name {
        "max_tokens" => "max_tokens",
        "max_completion_tokens" => "max_completion_tokens",
        "temperature" => "temperature",
        "top_p" => "top_p",
        "stream" => "stream",
        "include_usage" => "stream_options.include_usage",
        _ => "body",
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(on)) => Ok(*on),
        Some(other) => Err(ApiError::invalid(
            format!("{name} must be true or false, not {other}"),
            Some(leak(name)),
        )),
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let param = Some("messages");
    let Some(Value::Array(messages)) = messages else {
        return Err(ApiError::invalid("messages must be a list", param));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must not be empty", param));
    }
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content");
        let content_ok = matches!(
            content,
            None | Some(Value::Null | Value::String(_) | Value::Array(_))
        );
        if role.is_none() || !content_ok {
            let message = format!("messages[{i}] must have a role and a text content");
            return Err(ApiError::invalid(message, param));
        }
    }
    Ok(())
}

fn check_prompt(prompt: Option<&Value>) -> Result<(), ApiError> {
    let fits = match prompt {
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) => items.len() == 1 && items[0].is_string(),
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        let message = "prompt must be a string (or a list of one)";
        Err(ApiError::invalid(message, Some("prompt")))
    }
}

/// What a worker answers a finished generation with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The whole text, for a request that did not stream (its parts were
    /// not sent).
    pub text: Option<String>,
    /// `"stop"`, `"length"`, or what the handler said.
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Summary {
    /// Its JSON, as workers send it.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = Map::new();
        if let Some(text) = &self.text {
            fields.insert("text".into(), Value::String(text.clone()));
        }
        fields.insert(
            "finish_reason".into(),
            Value::String(self.finish_reason.clone()),
        );
        fields.insert("prompt_tokens".into(), self.prompt_tokens.into());
        fields.insert("completion_tokens".into(), self.completion_tokens.into());
        serde_json::to_vec(&Value::Object(fields)).unwrap_or_default()
    }

    /// What [`Summary::encode`] made (None: something else).
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        let Value::Object(fields) = serde_json::from_slice(bytes).ok()? else {
            return None;
        };
        Some(Summary {
            text: match fields.get("text") {
                None | Some(Value::Null) => None,
                Some(text) => Some(text.as_str()?.to_owned()),
            },
            finish_reason: fields.get("finish_reason")?.as_str()?.to_owned(),
            prompt_tokens: fields.get("prompt_tokens")?.as_u64()?,
            completion_tokens: fields.get("completion_tokens")?.as_u64()?,
        })
    }

    fn usage(&self) -> String {
        format!(
            "{{\"prompt_tokens\": {}, \"completion_tokens\": {}, \"total_tokens\": {}}}",
            self.prompt_tokens,
            self.completion_tokens,
            self.prompt_tokens.saturating_add(self.completion_tokens)
        )
    }
}

/// The objects of one request's answer: its id, creation time and model
/// on each.
#[derive(Debug, Clone)]
pub struct Framer {
    endpoint: Endpoint,
    /// `{"id": ..., "object": ..., "created": ..., "model": ...` (open).
    head: String,
    chunk_head: String,
    /// No chunk was written yet (a chat stream starts with the role).
    first: bool,
}

/// The comment that keeps an idle stream's connection open.
pub const PING: &[u8] = b": ping\n\n";
/// The last event of every stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

impl Framer {
    /// `request_id` makes the answer's id (`chatcmpl-<id>`); `created` is
    /// seconds since the epoch.
    pub fn new(endpoint: Endpoint, request_id: &str, created: u64, model: &str) -> Framer {
        let head = |object: &str| {
            let mut out = String::with_capacity(96 + model.len());
            out.push_str("{\"id\": ");
            push_json_string(&mut out, &format!("{}{request_id}", endpoint.id_prefix()));
            out.push_str(", \"object\": \"");
            out.push_str(object);
            out.push_str(&format!("\", \"created\": {created}, \"model\": "));
            push_json_string(&mut out, model);
            out
        };
        Framer {
            endpoint,
            head: head(endpoint.object(false)),
            chunk_head: head(endpoint.object(true)),
            first: true,
        }
    }

    /// The whole answer of a request that did not stream.
    pub fn completion(&self, summary: &Summary) -> Vec<u8> {
        let mut out = self.head.clone();
        let text = summary.text.as_deref().unwrap_or("");
        out.push_str(", \"choices\": [{\"index\": 0, ");
        match self.endpoint {
            Endpoint::Chat => {
                out.push_str("\"message\": {\"role\": \"assistant\", \"content\": ");
                push_json_string(&mut out, text);
                out.push('}');
            }
            Endpoint::Completions => {
                out.push_str("\"text\": ");
                push_json_string(&mut out, text);
                out.push_str(", \"logprobs\": null");
            }
        }
        out.push_str(", \"finish_reason\": ");
        push_json_string(&mut out, &summary.finish_reason);
        out.push_str("}], \"usage\": ");
        out.push_str(&summary.usage());
        out.push('}');
        out.into_bytes()
    }

    /// The event of a part's text (a chat stream's first one is preceded
    /// by the role's).
    pub fn part(&mut self, text: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(text);
        let mut out = Vec::with_capacity(self.chunk_head.len() * 2 + text.len() + 96);
        self.start(&mut out);
        self.choice(&mut out, Some(&text), None);
        out
    }

    /// The events that end a stream: the finish reason, the usage when
    /// asked for, `[DONE]`.
    pub fn end(&mut self, summary: &Summary, include_usage: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chunk_head.len() * 3 + 128);
        self.start(&mut out);
        self.choice(&mut out, None, Some(&summary.finish_reason));
        if include_usage {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(self.chunk_head.as_bytes());
            out.extend_from_slice(b", \"choices\": [], \"usage\": ");
            out.extend_from_slice(summary.usage().as_bytes());
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(DONE);
        out
    }

    /// The event of an error after the first chunk (the stream ends after it).
    pub fn error(message: &str, kind: &str) -> Vec<u8> {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&error_json(message, kind, None, None));
        out.extend_from_slice(b"\n\n");
        out
    }

    /// A chat stream's role event, before its first.
    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.first) && self.endpoint == Endpoint::Chat {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(self.chunk_head.as_bytes());
            out.extend_from_slice(b", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\", \"content\": \"\"}, \"finish_reason\": null}]}\n\n");
        }
    }

    fn choice(&self, out: &mut Vec<u8>, text: Option<&str>, finish: Option<&str>) {
        let mut event = String::with_capacity(self.chunk_head.len() + 96);
        event.push_str("data: ");
        event.push_str(&self.chunk_head);
        event.push_str(", \"choices\": [{\"index\": 0, ");
        match (self.endpoint, text) {
            (Endpoint::Chat, Some(text)) => {
                event.push_str("\"delta\": {\"content\": ");
                push_json_string(&mut event, text);
                event.push('}');
            }
            (Endpoint::Chat, None) => event.push_str("\"delta\": {}"),
            (Endpoint::Completions, text) => {
                event.push_str("\"text\": ");
                push_json_string(&mut event, text.unwrap_or(""));
                event.push_str(", \"logprobs\": null");
            }
        }
        event.push_str(", \"finish_reason\": ");
        match finish {
            Some(reason) => push_json_string(&mut event, reason),
            None => event.push_str("null"),
        }
        event.push_str("}]}\n\n");
        out.extend_from_slice(event.as_bytes());
    }
}

/// `GET /v1/models`: the model served.
pub fn models(model: &str, created: u64) -> Vec<u8> {
    let mut out = String::from("{\"object\": \"list\", \"data\": [");
    out.push_str(&model_object(model, created));
    out.push_str("]}");
    out.into_bytes()
}

/// `GET /v1/models/{id}`.
pub fn model_object(model: &str, created: u64) -> String {
    let mut out = String::from("{\"id\": ");
    push_json_string(&mut out, model);
    out.push_str(&format!(
        ", \"object\": \"model\", \"created\": {created}, \"owned_by\": \"aqueduct\"}}"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: &str) -> Result<Params, ApiError> {
        parse_request(endpoint, body.as_bytes(), "m")
    }

    #[test]
    fn a_request_is_passed_on_with_what_the_front_needs_of_it() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "stream_options": {"include_usage": true}, "n": 1,
            "max_tokens": 5, "temperature": 0.5, "logit_bias": {}, "whatever": [1]}"#;
        let params = parse(Endpoint::Chat, body).expect("a valid request");
        assert_eq!(
            params,
            Params {
                model: "m".into(),
                stream: true,
                include_usage: true
            }
        );
        let plain = parse(Endpoint::Completions, r#"{"model": "m", "prompt": "x"}"#);
        assert!(plain.is_ok_and(|p| !p.stream && !p.include_usage));
    }

    #[test]
    fn what_cannot_be_served_is_an_api_error_naming_its_param() {
        let cases = [
            ("not json", 400, None),
            ("[1]", 400, None),
            (r#"{"messages": []}"#, 400, Some("model")),
            (r#"{"model": "other", "messages": []}"#, 404, Some("model")),
            (r#"{"model": "m"}"#, 400, Some("messages")),
            (r#"{"model": "m", "messages": []}"#, 400, Some("messages")),
            (
                r#"{"model": "m", "messages": [{"content": "x"}]}"#,
                400,
                Some("messages"),
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}], "n": 2}"#,
                400,
                Some("n"),
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}"#,
                400,
                Some("max_tokens"),
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}], "temperature": 3}"#,
                400,
                Some("temperature"),
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}"#,
                400,
                Some("stream"),
            ),
        ];
        for (body, status, param) in cases {
            let error = parse(Endpoint::Chat, body).expect_err(body);
            assert_eq!((error.status, error.param), (status, param), "{body}");
            let json: Value = serde_json::from_slice(&error.json()).expect("JSON");
            assert!(json["error"]["message"].is_string(), "{body}");
        }
        let error = parse(Endpoint::Completions, r#"{"model": "m", "prompt": 3}"#);
        assert_eq!(error.expect_err("no prompt").param, Some("prompt"));
    }

    #[test]
    fn a_summary_round_trips() {
        let summary = Summary {
            text: Some("a \"quoted\"\nline".into()),
            finish_reason: "length".into(),
            prompt_tokens: 3,
            completion_tokens: 7,
        };
        assert_eq!(Summary::decode(&summary.encode()), Some(summary.clone()));
        let streamed = Summary {
            text: None,
            ..summary
        };
        assert_eq!(Summary::decode(&streamed.encode()), Some(streamed));
        assert_eq!(Summary::decode(b"{}"), None);
        assert_eq!(Summary::decode(b"nope"), None);
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(bytes).expect("text");
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("an event");
                if data == "[DONE]" {
                    Value::Null
                } else {
                    serde_json::from_str(data).expect("JSON")
                }
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_is_role_contents_finish_usage_done_with_one_id() {
        let mut framer = Framer::new(Endpoint::Chat, "r1", 1700, "m");
        let mut bytes = framer.part(b"Hel");
        bytes.extend(framer.part("lo \"w\"".as_bytes()));
        let summary = Summary {
            text: None,
            finish_reason: "stop".into(),
            prompt_tokens: 2,
            completion_tokens: 2,
        };
        bytes.extend(framer.end(&summary, true));
        let got = events(&bytes);
        assert_eq!(got.len(), 6);
        assert_eq!(got[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(got[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(got[2]["choices"][0]["delta"]["content"], "lo \"w\"");
        assert_eq!(got[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(got[4]["choices"], Value::Array(Vec::new()));
        assert_eq!(got[4]["usage"]["total_tokens"], 4);
        assert_eq!(got[5], Value::Null);
        for chunk in &got[..5] {
            assert_eq!(chunk["id"], "chatcmpl-r1");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(
                (chunk["created"].as_u64(), &chunk["model"]),
                (Some(1700), &Value::from("m"))
            );
        }
    }

    #[test]
    fn a_completion_is_one_object_and_its_stream_has_no_role() {
        let mut framer = Framer::new(Endpoint::Completions, "r2", 1, "m");
        let summary = Summary {
            text: Some("done".into()),
            finish_reason: "length".into(),
            prompt_tokens: 1,
            completion_tokens: 4,
        };
        let whole: Value = serde_json::from_slice(&framer.completion(&summary)).expect("JSON");
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], "done");
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["completion_tokens"], 4);
        let mut bytes = framer.part(b"x");
        bytes.extend(framer.end(&summary, false));
        let got = events(&bytes);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["choices"][0]["text"], "x");
        assert_eq!(got[1]["choices"][0]["finish_reason"], "length");
        let chat = Framer::new(Endpoint::Chat, "r3", 1, "m");
        let answer: Value = serde_json::from_slice(&chat.completion(&summary)).expect("JSON");
        assert_eq!(answer["choices"][0]["message"]["content"], "done");
        assert_eq!(answer["object"], "chat.completion");
    }

    #[test]
    fn errors_and_models_are_the_apis_objects() {
        let error: Value =
            serde_json::from_slice(&error_json("no", "server_error", None, None)).expect("JSON");
        assert_eq!(error["error"]["type"], "server_error");
        assert!(error["error"]["param"].is_null());
        let event = Framer::error("boom", "server_error");
        assert_eq!(events(&event)[0]["error"]["message"], "boom");
        let list: Value = serde_json::from_slice(&models("m", 5)).expect("JSON");
        assert_eq!(list["data"][0]["id"], "m");
        assert_eq!(list["data"][0]["object"], "model");
        assert_eq!(
            (error_kind(404), error_kind(429), error_kind(503)),
            ("not_found_error", "rate_limit_error", "server_error")
        );
        let report = crate::http_wire::error_json("boom!", "ValueError");
        let error: Value = serde_json::from_slice(&from_report(&report, 500)).expect("JSON");
        assert_eq!(error["error"]["message"], "boom!");
        assert_eq!(error["error"]["code"], "ValueError");
        assert_eq!(error["error"]["type"], "server_error");
        let unreadable: Value = serde_json::from_slice(&from_report(b"?", 400)).expect("JSON");
        assert_eq!(unreadable["error"]["type"], "invalid_request_error");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    proptest! {
        /// Any body, for either endpoint: a verdict, never a panic; a
        /// summary decoded from any bytes encodes back to itself.
        #[test]
        fn fuzz_openai_requests_and_summaries(body in vec(any::<u8>(), 0..256)) {
            let _ = parse_request(Endpoint::Chat, &body, "m");
            let _ = parse_request(Endpoint::Completions, &body, "m");
            if let Some(summary) = Summary::decode(&body) {
                prop_assert_eq!(Summary::decode(&summary.encode()), Some(summary));
            }
        }
    }
}
