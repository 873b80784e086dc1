//! What tollgate reads from a Messages API request body: the model, whether it streams, and a rough size.
//! The body itself is forwarded unchanged.

use std::borrow::Cow;

use serde::Deserialize;

/// Fields of a request body that policy and metering need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// A floor estimate of the input tokens (bytes / 4), for budget reservations.
    pub estimated_input_tokens: u64,
}

/// The two top-level fields read; serde skips the others (the messages) without building them.
#[derive(Deserialize)]
struct Fields<'a> {
    /// Borrowed from the body unless the string has escapes.
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
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
            return Self { model: None, stream: false, estimated_input_tokens };
        };
        Self {
            model: fields.model.map(Cow::into_owned),
            stream: fields.stream.unwrap_or(false),
            estimated_input_tokens,
        }
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
        RequestFacts { model: model.map(str::to_owned), stream, estimated_input_tokens: body.len() as u64 / 4 }
    }

    #[test]
    fn model_and_stream_are_read_from_a_messages_request() {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"system":[{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":"Hi \"there\""}],"metadata":{"user_id":"u"},"thinking":{"type":"adaptive"}}"#;
        assert_eq!(RequestFacts::read(body.as_bytes()), facts(Some("claude-sonnet-4-5"), true, body));
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
    fn the_estimate_is_a_quarter_of_the_bytes() {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(4000));
        assert_eq!(RequestFacts::read(body.as_bytes()).estimated_input_tokens, body.len() as u64 / 4);
        assert_eq!(RequestFacts::read(b"abc").estimated_input_tokens, 0);
    }
}
