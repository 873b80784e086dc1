//! The Messages API's wire shapes, built as the API sends them: a request body, a non-streamed message, and the SSE
//! events of a stream (`event: NAME`, `data: JSON`), in the API's order.
//!
//! Shared by the integration tests' stub (`tests/suite/common/messages.rs`, which picks its usage numbers to check
//! metering) and the load harness's stub (`benches/load/servers.rs`, which answers with them at tens of thousands of
//! requests per second, so it builds its answers once).

use serde_json::{json, Value};

/// Token counts as `(input, output, cache_creation, cache_read)`: `input_tokens`, `output_tokens`,
/// `cache_creation_input_tokens`, `cache_read_input_tokens`.
pub type Usage = (u64, u64, u64, u64);

/// A usage as the audit record and the API name its fields.
pub fn usage_json(usage: Usage) -> Value {
    json!({"input_tokens": usage.0, "output_tokens": usage.1,
           "cache_creation_input_tokens": usage.2, "cache_read_input_tokens": usage.3})
}

/// A Messages request body: `model`, `max_tokens`, one user message saying `prompt`, and `stream` when true.
pub fn request_body(model: &str, max_tokens: u64, prompt: &str, stream: bool) -> String {
    let mut body = json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]});
    if stream {
        body["stream"] = json!(true);
    }
    body.to_string()
}

/// A non-streamed message: one text block saying `text`, stopped at `end_turn`, with `usage`.
pub fn message(id: &str, model: &str, text: &str, usage: Value) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": usage,
    })
}

/// One SSE event: `event: NAME`, `data: DATA`, a blank line.
pub fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The data of `message_start`: the message without content, with the usage so far.
pub fn message_start(id: &str, model: &str, usage: Value) -> Value {
    json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": usage,
    }})
}

/// The data of `content_block_start` for the text block.
pub fn content_block_start() -> Value {
    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
}

/// The data of a `content_block_delta` adding `text` to the text block.
pub fn text_delta(text: &str) -> Value {
    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
}

/// The data of `message_delta`: the stop reason (`None` while the message goes on) and the usage update.
pub fn message_delta(stop_reason: Option<&str>, usage: Value) -> Value {
    json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage})
}

/// Every event of a complete stream, in order: `message_start` (with `start_usage`), `content_block_start`, `ping`,
/// a `content_block_delta` per delta, `content_block_stop`, `message_delta` (`end_turn`, with `end_usage`),
/// `message_stop`.
pub fn stream(id: &str, model: &str, start_usage: Value, deltas: &[&str], end_usage: Value) -> Vec<String> {
    let mut events = vec![
        event("message_start", &message_start(id, model, start_usage)),
        event("content_block_start", &content_block_start()),
        event("ping", &json!({"type": "ping"})),
    ];
    events.extend(deltas.iter().map(|text| event("content_block_delta", &text_delta(text))));
    events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(event("message_delta", &message_delta(Some("end_turn"), end_usage)));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}
