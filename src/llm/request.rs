//! What tollgate reads from a Messages API request body: the model (or, for a message batch, each request's
//! model), whether it streams, and a rough size. The body itself is forwarded unchanged.

use std::borrow::Cow;

use serde::Deserialize;

/// Fields of a request body that policy and metering need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    /// `POST /v1/messages/batches`: each request's `params.model`, in order.
    pub batch_models: Vec<String>,
    pub stream: bool,
    /// `max_tokens`: the most output the request may be billed for.
    pub max_tokens: Option<u64>,
    /// A floor estimate of the input tokens (bytes / 4), for budget reservations.
    pub estimated_input_tokens: u64,
}

/// The top-level fields read; serde skips the others (the messages) without building them.
#[derive(Deserialize)]
struct Fields<'a> {
    /// Borrowed from the body unless the string has escapes.
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    #[serde(borrow)]
    requests: Option<Vec<BatchRequest<'a>>>,
}

/// One request of a message batch: `{"custom_id": …, "params": {"model": …, …}}`.
#[derive(Deserialize)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    params: BatchParams<'a>,
}

#[derive(Deserialize)]
struct BatchParams<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
}

impl RequestFacts {
    /// Reads `body` (JSON); anything unreadable gives no model.
    ///
    /// The whole body is parsed, so invalid JSON, a `model` that is not a string or a `stream` that is not a
    /// boolean give no model and no stream. A key given twice is refused too: which of two `model` values the
    /// upstream would use is not tollgate's guess to make.
    pub fn read(body: &[u8]) -> Self {
        let estimated_input_tokens = body.len() as u64 / 4;
        let Some(fields) = Self::fields(body) else {
            return Self { estimated_input_tokens, ..Self::default() };
        };
        let batch = fields.requests.unwrap_or_default();
        Self {
            model: fields.model.map(Cow::into_owned),
            batch_models: batch.into_iter().map(|request| request.params.model.into_owned()).collect(),
            stream: fields.stream.unwrap_or(false),
            max_tokens: fields.max_tokens,
            estimated_input_tokens,
        }
    }

    /// Every model the body names: the request's own, then each batch request's.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.model.iter().chain(&self.batch_models).map(String::as_str)
    }

    fn fields(body: &[u8]) -> Option<Fields<'_>> {
        // serde would read an array as a struct, field by position: only an object is a request.
        let first = body.iter().find(|byte| !byte.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(model: Option<&str>, stream: bool, body: &str) -> RequestFacts {
        RequestFacts {
            model: model.map(str::to_owned),
            batch_models: Vec::new(),
            stream,
            max_tokens: None,
            estimated_input_tokens: body.len() as u64 / 4,
        }
    }

    #[test]
    fn model_stream_and_max_tokens_are_read_from_a_messages_request() {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"system":[{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":"Hi \"there\""}],"metadata":{"user_id":"u"},"thinking":{"type":"adaptive"}}"#;
        let expected = RequestFacts { max_tokens: Some(1024), ..facts(Some("claude-sonnet-4-5"), true, body) };
        assert_eq!(RequestFacts::read(body.as_bytes()), expected);
    }

    #[test]
    fn stream_defaults_to_false() {
        for body in
            [r#"{"model":"m","messages":[]}"#, r#"{"model":"m","stream":null}"#, r#" {"stream":false,"model":"m"} "#]
        {
            assert_eq!(RequestFacts::read(body.as_bytes()), facts(Some("m"), false, body));
        }
    }

    #[test]
    fn an_escaped_model_is_decoded() {
        let body = r#"{"mod\u0065l":"claude-\u006fpus-5","stream":true}"#;
        assert_eq!(RequestFacts::read(body.as_bytes()).model.as_deref(), Some("claude-opus-5"));
    }

    #[test]
    fn no_model_is_none() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        assert_eq!(RequestFacts::read(body.as_bytes()), facts(None, true, body));
    }

    #[test]
    fn unreadable_bodies_give_no_model_and_no_stream() {
        for body in [
            "",
            "not json",
            r#"{"model":"m","stream":true"#,
            r#"{"model":"m","stream":true} trailing"#,
            r#"["m",true]"#,
            r#"{"model":7,"stream":true}"#,
            r#"{"model":"m","stream":"yes"}"#,
            r#"{"model":"allowed","stream":true,"model":"other"}"#,
            "{\"model\":\"\u{0}\u{ff}\"}\u{ff}",
        ] {
            assert_eq!(RequestFacts::read(body.as_bytes()), facts(None, false, body), "{body:?}");
        }
        let invalid_utf8 = b"{\"model\":\"\xff\xfe\"}";
        assert_eq!(RequestFacts::read(invalid_utf8).model, None);
    }

    #[test]
    fn a_batch_names_each_requests_model() {
        let body = r#"{"requests":[{"custom_id":"a","params":{"model":"claude-haiku-4-5","max_tokens":8,"messages":[]}},{"custom_id":"b","params":{"max_tokens":8,"model":"claude-opus-5","messages":[]}}]}"#;
        let read = RequestFacts::read(body.as_bytes());
        assert_eq!(read.models().collect::<Vec<_>>(), ["claude-haiku-4-5", "claude-opus-5"]);
        assert_eq!(read.model, None);
    }

    #[test]
    fn a_batch_request_without_a_readable_model_names_no_model_at_all() {
        for body in [
            r#"{"requests":[{"custom_id":"a","params":{"model":"m"}},{"custom_id":"b","params":{"max_tokens":8}}]}"#,
            r#"{"requests":[{"custom_id":"a"}]}"#,
            r#"{"requests":[{"params":{"model":"m","model":"other"}}]}"#,
            r#"{"requests":{"params":{"model":"m"}}}"#,
        ] {
            assert_eq!(RequestFacts::read(body.as_bytes()).models().count(), 0, "{body}");
        }
    }

    #[test]
    fn the_estimate_is_a_quarter_of_the_bytes() {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(4000));
        assert_eq!(RequestFacts::read(body.as_bytes()).estimated_input_tokens, body.len() as u64 / 4);
        assert_eq!(RequestFacts::read(b"abc").estimated_input_tokens, 0);
    }
}
