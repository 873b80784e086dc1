//! Metering and request inspection on the hot path: SSE usage metering per event, the DLP scan of a 100 KiB
//! request body with every detector, and reading `model`/`stream` from the same body.
//!
//! `cargo bench --bench metering`. SSE results are per stream of 205 events; criterion's throughput line gives
//! events per second (time per event = 1 / that).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use tollgate::config::file::{CustomDetector, Dlp as DlpFile, DlpAction};
use tollgate::llm::dlp::Dlp;
use tollgate::llm::request::RequestFacts;
use tollgate::llm::usage::Meter;

/// How many `content_block_delta` events the stream holds.
const DELTAS: usize = 200;

/// A realistic response stream: message_start, ping, a text block of `DELTAS` deltas, message_delta,
/// message_stop; returned as one chunk per event, the way they arrive.
fn stream_events() -> Vec<Vec<u8>> {
    let mut events = vec![
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2679,"cache_creation_input_tokens":1200,"cache_read_input_tokens":48000,"output_tokens":1,"service_tier":"standard"}}}

"#
        .to_owned(),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
            .to_owned(),
    ];
    let words = [
        "Let me",
        " look at",
        " the failing",
        " test in",
        " `src/proxy/forward.rs`:",
        " the body",
        " is read",
        " twice,\\n",
    ];
    for index in 0..DELTAS {
        let text = words[index % words.len()];
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
        ));
    }
    events.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned());
    events.push(
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1042}}\n\n"
            .to_owned(),
    );
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events.into_iter().map(String::into_bytes).collect()
}

fn sse_metering(c: &mut Criterion) {
    let events = stream_events();
    let whole: Vec<u8> = events.concat();
    let mut group = c.benchmark_group("sse_meter");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("one_chunk_per_event", |b| {
        b.iter(|| {
            let mut meter = Meter::for_content_type(Some("text/event-stream"));
            for event in &events {
                meter.feed(black_box(event));
            }
            meter.finish()
        })
    });
    group.bench_function("16k_chunks", |b| {
        b.iter(|| {
            let mut meter = Meter::for_content_type(Some("text/event-stream"));
            for chunk in whole.chunks(16 * 1024) {
                meter.feed(black_box(chunk));
            }
            meter.finish()
        })
    });
    group.finish();
}

/// A 100 KiB Messages API request: a system prompt and turns of source code, no secrets.
fn request_body_100k() -> Vec<u8> {
    let code = "    pub fn forward(&self, request: Request<Incoming>, upstream: &Upstream) -> Result<Response, ProxyError> {\n        let started = Instant::now(); // 2024-01-15, ticket 48213\n        let id = 1234567; let port = 8443; let retries = [1, 2, 4, 8];\n        tracing::debug!(target = %upstream.name, \"forwarding\");\n    }\n";
    let mut messages = Vec::new();
    let mut length = 0;
    let mut turn = 0;
    while length < 100 * 1024 {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let text =
            format!("Turn {turn}: here is the file, lines {} to {}:\n{}", turn * 40, turn * 40 + 40, code.repeat(4));
        length += text.len();
        messages.push(serde_json::json!({"role": role, "content": [{"type": "text", "text": text}]}));
        turn += 1;
    }
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": true,
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
        "metadata": {"user_id": "user_abc_account_123_session_456"},
    });
    serde_json::to_vec(&body).expect("the bench body serializes")
}

fn dlp_scan(c: &mut Criterion) {
    let body = request_body_100k();
    let section = DlpFile {
        action: DlpAction::Block,
        detectors: ["private_key", "aws_access_key", "github_token", "credit_card", "ssn"].map(String::from).to_vec(),
        custom: vec![CustomDetector { name: "project-falcon".to_owned(), regex: "FALCON-[0-9]{4}".to_owned() }],
    };
    let dlp = Dlp::compile(&section).expect("the bench detectors compile");
    assert!(dlp.scan(&body).is_empty(), "the bench body holds no secrets");
    let mut group = c.benchmark_group("dlp_scan");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("100k_body_all_detectors", |b| b.iter(|| dlp.scan(black_box(&body))));
    group.finish();
}

fn request_facts(c: &mut Criterion) {
    let body = request_body_100k();
    assert!(RequestFacts::read(&body).model.is_some());
    let mut group = c.benchmark_group("request_facts");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("read_100k_body", |b| b.iter(|| RequestFacts::read(black_box(&body))));
    group.finish();
}

criterion_group!(benches, sse_metering, dlp_scan, request_facts);
criterion_main!(benches);
