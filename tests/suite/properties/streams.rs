//! The readers of model responses: the usage meter (`llm::usage`, SSE and JSON) and the tool-call reader
//! (`actions::stream`), which the response body (`api::body`) feeds frame by frame. Whatever the frames, the same
//! bytes give the same result as one piece; a generated stream meters the usage and yields the calls put in, and
//! under `hold` every byte is released unchanged; garbage never panics.

use proptest::prelude::*;
use serde_json::{json, Value};
use tollgate::actions::stream::{calls_of_message, Call, Calls, Next};
use tollgate::llm::usage::{Meter, Metered, Usage};

use super::{config, corpus, cuts, split_at};

/// The bound on a held tool call: large enough that no generated call reaches it.
const LIMIT: usize = 1 << 20;

/// A generated response stream and what must be read from it.
#[derive(Clone)]
struct Stream {
    bytes: Vec<u8>,
    /// Where the first tool call's `content_block_start` event begins.
    first_call_at: Option<usize>,
    metered: Metered,
    calls: Vec<(String, String, Value)>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{:?} metering {:?} with calls {:?}",
            String::from_utf8_lossy(&self.bytes),
            self.metered,
            self.calls
        )
    }
}

#[derive(Debug, Clone)]
enum Block {
    Text(Vec<String>),
    Tool { name: String, input: Value, cuts: Vec<usize> },
}

fn block() -> impl Strategy<Value = Block> {
    let text = prop_oneof!["[ -~]{0,12}", "\\PC{0,6}", Just("\n\ndata: {}\n\n".to_owned()), Just("\r\n\r".to_owned())];
    let input = prop_oneof![
        "[ -~]{0,20}".prop_map(|path| json!({"file_path": path})),
        ("[ -~]{0,30}", any::<bool>())
            .prop_map(|(command, background)| json!({"command": command, "run_in_background": background})),
        Just(json!({})),
        Just(json!({"nested": {"a": [1, 2, {"b": "\u{e9}\u{1f600}"}]}, "quote": "\"}\\"})),
    ];
    prop_oneof![
        prop::collection::vec(text, 0..4).prop_map(Block::Text),
        (
            prop::sample::select(vec!["Read", "Bash", "WebFetch", "mcp__jira__create_issue"]),
            input,
            prop::collection::vec(any::<usize>(), 0..4)
        )
            .prop_map(|(name, input, cuts)| Block::Tool { name: name.to_owned(), input, cuts }),
    ]
}

/// One event with the chosen line ending and field spelling.
fn event(name: Option<&str>, data: &Value, ending: &str, spaced: bool) -> String {
    let space = if spaced { " " } else { "" };
    let mut text = String::new();
    if let Some(name) = name {
        text.push_str(&format!("event:{space}{name}{ending}"));
    }
    text.push_str(&format!("data:{space}{data}{ending}{ending}"));
    text
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), prop::option::of(any::<u32>())),
        "[a-z0-9.-]{1,20}",
        prop::collection::vec(block(), 0..4),
        prop::sample::select(vec!["\n", "\r\n", "\r"]),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|((input, output, cache_read, cache_creation, delta_input), model, blocks, ending, flags)| {
            let (named, spaced, bom, pings, stop) = flags;
            let name = |n: &'static str| named.then_some(n);
            let mut text = String::new();
            if bom {
                text.push('\u{feff}');
            }
            text.push_str(&event(
                name("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": model, "content": [], "usage": {"input_tokens": input, "cache_read_input_tokens": cache_read,
                    "cache_creation_input_tokens": cache_creation, "output_tokens": 1}}}),
                ending,
                spaced,
            ));
            let mut calls = Vec::new();
            let mut first_call_at = None;
            for (index, block) in blocks.into_iter().enumerate() {
                if pings {
                    text.push_str(&format!(": keep-alive{ending}"));
                    text.push_str(&event(name("ping"), &json!({"type": "ping"}), ending, spaced));
                }
                match block {
                    Block::Text(pieces) => {
                        text.push_str(&event(name("content_block_start"), &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "text", "text": ""}}), ending, spaced));
                        for piece in pieces {
                            text.push_str(&event(name("content_block_delta"), &json!({"type": "content_block_delta",
                                "index": index, "delta": {"type": "text_delta", "text": piece}}), ending, spaced));
                        }
                    }
                    Block::Tool { name: tool, input, cuts: points } => {
                        let id = format!("toolu_{index}");
                        first_call_at.get_or_insert(text.len());
                        text.push_str(&event(name("content_block_start"), &json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": id, "name": tool, "input": {}}}), ending, spaced));
                        let input_text = input.to_string();
                        let points: Vec<usize> =
                            cuts(input_text.len(), &points).into_iter().filter(|&p| input_text.is_char_boundary(p)).collect();
                        for piece in split_at(input_text.as_bytes(), &points) {
                            let piece = std::str::from_utf8(piece).expect("cut at character boundaries");
                            text.push_str(&event(name("content_block_delta"), &json!({"type": "content_block_delta",
                                "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}}), ending, spaced));
                        }
                        calls.push((id, tool, input));
                    }
                }
                text.push_str(&event(name("content_block_stop"), &json!({"type": "content_block_stop", "index": index}), ending, spaced));
            }
            let mut usage = json!({"output_tokens": output});
            if let Some(delta_input) = delta_input {
                usage["input_tokens"] = json!(delta_input);
            }
            text.push_str(&event(name("message_delta"), &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": usage}), ending, spaced));
            if stop {
                text.push_str(&event(name("message_stop"), &json!({"type": "message_stop"}), ending, spaced));
            }
            let metered = Metered {
                usage: Some(Usage {
                    input_tokens: u64::from(delta_input.unwrap_or(input)),
                    output_tokens: u64::from(output),
                    cache_creation_input_tokens: u64::from(cache_creation),
                    cache_read_input_tokens: u64::from(cache_read),
                    ..Usage::default()
                }),
                model: Some(model),
                error: None,
                complete: stop,
            };
            Stream { bytes: text.into_bytes(), first_call_at, metered, calls }
        })
}

fn metered(content_type: &str, pieces: &[&[u8]]) -> Metered {
    let mut meter = Meter::for_content_type(Some(content_type));
    for piece in pieces {
        meter.feed(piece);
    }
    meter.finish()
}

/// Reads `pieces` with the tool-call reader; what the client got and the calls decided, all released.
fn read_calls(mut calls: Calls, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Call>) {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut decide = |call: Call| {
        seen.push(call);
        Next::Release
    };
    for piece in pieces {
        out.extend_from_slice(&calls.feed(piece, &mut decide));
    }
    out.extend_from_slice(&calls.finish(&mut decide));
    (out, seen)
}

/// Split anywhere, the bytes read the same as whole: usage, calls, and (held, all released) the bytes themselves.
fn check_split(bytes: &[u8], splits: &[usize]) -> Result<(), TestCaseError> {
    let pieces = split_at(bytes, &cuts(bytes.len(), splits));
    for content_type in ["text/event-stream", "application/json"] {
        prop_assert_eq!(metered(content_type, &pieces), metered(content_type, &[bytes]), "{}", content_type);
    }
    let (whole_out, whole_calls) = read_calls(Calls::hold(LIMIT), &[bytes]);
    let (out, calls) = read_calls(Calls::hold(LIMIT), &pieces);
    prop_assert_eq!(&whole_out, bytes);
    prop_assert_eq!(&out, bytes);
    prop_assert_eq!(&calls, &whole_calls);
    let (watched, watched_calls) = read_calls(Calls::watch(LIMIT), &pieces);
    prop_assert!(watched.is_empty());
    prop_assert_eq!(&watched_calls, &whole_calls);
    // A small bound may cut calls short (as too large), but never panics or loses a released byte.
    let (bounded, _) = read_calls(Calls::hold(64), &pieces);
    prop_assert_eq!(&bounded, bytes);
    let _ = calls_of_message(bytes);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// A generated stream meters what was put in and yields its calls, whole and however split.
    #[test]
    fn generated_streams_read_what_was_put_in(stream in stream(), splits in prop::collection::vec(any::<usize>(), 0..12)) {
        let pieces = split_at(&stream.bytes, &cuts(stream.bytes.len(), &splits));
        prop_assert_eq!(metered("text/event-stream", &pieces), stream.metered.clone());
        let (out, calls) = read_calls(Calls::hold(LIMIT), &pieces);
        prop_assert_eq!(&out, &stream.bytes);
        let calls: Vec<(String, String, Value)> = calls
            .into_iter()
            .map(|call| (call.id, call.name, call.input.unwrap_or(Value::Null)))
            .collect();
        prop_assert_eq!(calls, stream.calls.clone());
        check_split(&stream.bytes, &splits)?;
    }

    /// A denied call ends what the client sees: everything before the call's first event, then the error, then
    /// nothing, however the stream is split.
    #[test]
    fn a_denied_call_ends_the_stream_where_it_began(stream in stream(), splits in prop::collection::vec(any::<usize>(), 0..12)) {
        let Some(at) = stream.first_call_at else { return Ok(()) };
        let pieces = split_at(&stream.bytes, &cuts(stream.bytes.len(), &splits));
        let error = b"event: error\ndata: {\"type\":\"error\"}\n\n";
        let mut calls = Calls::hold(LIMIT);
        let mut decided = 0;
        let mut decide = |_: Call| {
            decided += 1;
            Next::End(bytes::Bytes::from_static(error))
        };
        let mut out = Vec::new();
        for piece in &pieces {
            out.extend_from_slice(&calls.feed(piece, &mut decide));
        }
        out.extend_from_slice(&calls.finish(&mut decide));
        prop_assert!(calls.ended());
        prop_assert_eq!(decided, 1);
        // After a CR the reader cannot know whether an LF follows until the next byte: the LF of a CRLF blank
        // line travels with the event after it, and is not sent when that event is replaced.
        let at = if stream.bytes[..at].ends_with(b"\r\n") && out.len() == at - 1 + error.len() { at - 1 } else { at };
        let mut want = stream.bytes[..at].to_vec();
        want.extend_from_slice(error);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
    }

    /// Generated streams with bytes changed, removed or inserted, and arbitrary bytes: never a panic, and the
    /// same result however split.
    #[test]
    fn damaged_streams_read_the_same_however_split(
        stream in stream(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..300),
        use_noise in any::<bool>(),
        splits in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = if use_noise {
            noise
        } else {
            let mut bytes = stream.bytes;
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at.index(bytes.len());
                let byte = *b"\r\n:{}\" \\".get(usize::from(byte) % 16).unwrap_or(&byte);
                match kind {
                    0 => bytes[at] = byte,
                    1 => { bytes.remove(at); }
                    _ => bytes.insert(at, byte),
                }
            }
            bytes
        };
        check_split(&bytes, &splits)?;
    }

    /// A JSON message body meters its usage and model however split.
    #[test]
    fn json_bodies_read_the_same_however_split(
        input in any::<u32>(), output in any::<u32>(), model in "[a-z0-9.-]{1,20}", pretty in any::<bool>(),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": input, "output_tokens": output}});
        let bytes = if pretty { serde_json::to_vec_pretty(&body) } else { serde_json::to_vec(&body) }.expect("JSON");
        let pieces = split_at(&bytes, &cuts(bytes.len(), &splits));
        let want = Metered {
            usage: Some(Usage { input_tokens: u64::from(input), output_tokens: u64::from(output), ..Usage::default() }),
            model: Some(model),
            error: None,
            complete: true,
        };
        prop_assert_eq!(metered("application/json", &pieces), want);
        check_split(&bytes, &splits)?;
    }
}

/// The hand-picked streams and bodies, through the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("streams") {
        for splits in [&[][..], &[1, 2, 3, 5, 8, 13, 21, 34, 55, 89][..], &[usize::MAX / 2, 7, 100, 101][..]] {
            check_split(&bytes, splits).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
