//! Metering and request inspection on the hot path: SSE usage metering per event, the DLP scan with every
//! detector of two 100 KiB request bodies (turns of source code, and a Claude Code request whose tool results
//! are files full of JSON escapes), and reading `model`/`stream` from the first body.
//!
//! Also the reading of agent actions (tool calls) from the same stream: watched (a copy, recording only) and
//! held (the bytes go out event by event, each tool call held until decided), and a tool call's hold: the time
//! from the event that completes its input to its release.
//!
//! `cargo bench --bench metering`. SSE results are per stream of 205 events; criterion's throughput line gives
//! events per second (time per event = 1 / that).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use tollgate::actions::history;
use tollgate::actions::stream::{Calls, Next};
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

/// The tool-call reader on a stream without tool calls, per event: the cost every response pays.
fn action_reading(c: &mut Criterion) {
    let events = stream_events();
    let mut group = c.benchmark_group("actions_text_stream");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("watch", |b| {
        b.iter(|| {
            let mut calls = Calls::watch(4 << 20);
            for event in &events {
                black_box(calls.feed(black_box(event), &mut |_| Next::Release));
            }
            calls.finish(&mut |_| Next::Release)
        })
    });
    group.bench_function("hold", |b| {
        b.iter(|| {
            let mut calls = Calls::hold(4 << 20);
            for event in &events {
                black_box(calls.feed(black_box(event), &mut |_| Next::Release));
            }
            calls.finish(&mut |_| Next::Release)
        })
    });
    group.finish();

    // A Bash call whose input arrives in 24 pieces: held from its start; measured is the last event (the block's
    // stop), which completes the input, parses it and releases the held events.
    let command = "cd /repo && cargo test --workspace -- --nocapture 2>&1 | tail -n 50";
    let input = serde_json::json!({"command": command, "description": "Run the tests"}).to_string();
    let mut block = vec![
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"Bash\",\"input\":{}}}\n\n".to_owned(),
    ];
    let piece = input.len().div_ceil(24);
    for part in input.as_bytes().chunks(piece) {
        let partial = serde_json::to_string(std::str::from_utf8(part).expect("ASCII")).expect("a JSON string");
        block.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{partial}}}}}\n\n"
        ));
    }
    let stop = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    let mut group = c.benchmark_group("actions_tool_call");
    group.bench_function("hold_then_release_at_stop", |b| {
        b.iter_batched(
            || {
                let mut calls = Calls::hold(4 << 20);
                for event in &block {
                    calls.feed(event.as_bytes(), &mut |_| Next::Release);
                }
                calls
            },
            |mut calls| {
                let released = calls.feed(black_box(stop.as_bytes()), &mut |call| {
                    black_box(call);
                    Next::Release
                });
                assert!(!released.is_empty());
                released
            },
            criterion::BatchSize::SmallInput,
        )
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

/// A Go file as Claude Code's Read tool returns it, before the line numbers: tabs, quotes and backslashes that
/// its JSON string carries as `\t`, `\"` and `\\` escapes, and a `\n` after every line.
const GO_FILE: [&str; 21] = [
    "package proxy",
    "",
    "import (",
    "\t\"context\"",
    "\t\"fmt\"",
    "\t\"net/http\"",
    "\t\"strings\"",
    ")",
    "",
    "// Forward sends the request upstream and copies the answer back, 2024-01-15.",
    "func (p *Proxy) Forward(ctx context.Context, w http.ResponseWriter, r *http.Request) error {",
    "\tif r.Header.Get(\"Content-Type\") != \"application/json\" {",
    "\t\treturn fmt.Errorf(\"unsupported content type %q\\n\", r.Header.Get(\"Content-Type\"))",
    "\t}",
    "\tfor _, name := range []string{\"Connection\", \"Keep-Alive\", \"Proxy-Authorization\", \"TE\"} {",
    "\t\tr.Header.Del(name)",
    "\t}",
    "\tpath := strings.TrimPrefix(r.URL.Path, \"/v1/\")",
    "\tp.log.Printf(\"forwarding %s to %s (retries: %d, port %d)\\t\\\"ok\\\"\", path, p.upstream, 3, 8443)",
    "\treturn p.client.Do(ctx, w, r.WithContext(ctx))",
    "}",
];

/// A Claude Code request of about 100 KiB: the system prompt, tool definitions, and turns of tool calls whose
/// results are a Go file read with line numbers, each a JSON string full of escapes. No secrets.
fn claude_code_body_100k() -> Vec<u8> {
    let tools: Vec<serde_json::Value> = ["Read", "Edit", "Bash", "Grep", "Glob", "Write"]
        .iter()
        .map(|name| {
            serde_json::json!({
                "name": name,
                "description": format!("{name}: use this tool to work on the user's files.\n\nUsage:\n- The file_path parameter must be an absolute path, not a relative path\n- Use \"quotes\" around paths with spaces\n\tExample: {name}(\"/home/dev/src/main.rs\")"),
                "input_schema": {"type": "object", "properties": {"file_path": {"type": "string", "description": "The absolute path to the file"}}, "required": ["file_path"], "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"},
            })
        })
        .collect();
    let mut messages = vec![
        serde_json::json!({"role": "user", "content": [{"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n# claudeMd\nRun `cargo test` before committing.\n</system-reminder>\n"}, {"type": "text", "text": "Why does Forward drop the \"TE\" header? Fix it."}]}),
    ];
    let numbered: String =
        GO_FILE.iter().enumerate().map(|(index, line)| format!("{:>6}\u{2192}{line}\n", index + 1)).collect();
    let result = format!("{numbered}\n<system-reminder>\nWhenever you read a file, consider whether it looks malicious.\n</system-reminder>\n");
    let mut length = 0;
    let mut turn = 0;
    while length < 100 * 1024 {
        let id = format!("toolu_01{turn:022}");
        let path = format!("/home/dev/src/proxy/forward_{turn}.go");
        let call = serde_json::json!({"role": "assistant", "content": [
            {"type": "text", "text": format!("Let me read `{path}`.")},
            {"type": "tool_use", "id": id, "name": "Read", "input": {"file_path": path}},
        ]});
        let answer = serde_json::json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": result}]});
        for message in [call, answer] {
            length += serde_json::to_string(&message).expect("a message serializes").len();
            messages.push(message);
        }
        turn += 1;
    }
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": true,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks.\n\n# Tone and style\n- Be concise.\n- Use \"backticks\" for code.\n\tIMPORTANT: never guess URLs.\n", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": messages,
        "metadata": {"user_id": "user_abc_account_123_session_456"},
    });
    serde_json::to_vec(&body).expect("the bench body serializes")
}

fn dlp_scan(c: &mut Criterion) {
    let section = DlpFile {
        action: DlpAction::Block,
        detectors: ["private_key", "aws_access_key", "github_token", "credit_card", "ssn"].map(String::from).to_vec(),
        custom: vec![CustomDetector { name: "project-falcon".to_owned(), regex: "FALCON-[0-9]{4}".to_owned() }],
    };
    let dlp = Dlp::compile(&section).expect("the bench detectors compile");
    let mut group = c.benchmark_group("dlp_scan");
    for (name, body) in
        [("100k_body_all_detectors", request_body_100k()), ("claude_code_100k_all_detectors", claude_code_body_100k())]
    {
        assert!(dlp.scan(&body).is_empty(), "the bench body {name} holds no secrets");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| dlp.scan(black_box(&body))));
    }
    group.finish();
}

fn request_facts(c: &mut Criterion) {
    let body = request_body_100k();
    assert!(RequestFacts::read(&body).model.is_some());
    let mut group = c.benchmark_group("request_facts");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("read_100k_body", |b| b.iter(|| RequestFacts::read(black_box(&body))));
    group.finish();

    // The replayed tool calls and their results, read from a Claude Code request of 100 KiB whose turns are tool
    // calls and results (every request to /v1/messages is read so).
    let body = claude_code_body_100k();
    let replayed = history::replayed(&body, history::Results::All).expect("a Messages request");
    assert!(!replayed.is_empty());
    let mut group = c.benchmark_group("replayed_calls");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("claude_code_100k_body", |b| {
        b.iter(|| history::replayed(black_box(&body), history::Results::All))
    });
    // Without a policy that may deny, only the results of the last message are read (to record their outcomes).
    group.bench_function("claude_code_100k_body_latest_only", |b| {
        b.iter(|| history::replayed(black_box(&body), history::Results::Latest))
    });
    // The model and the other top-level fields, from the same body: the JSON parse every request pays already.
    group.bench_function("request_facts_same_body", |b| b.iter(|| RequestFacts::read(black_box(&body))));
    group.finish();
}

criterion_group!(benches, sse_metering, action_reading, dlp_scan, request_facts);
criterion_main!(benches);
