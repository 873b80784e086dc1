//! Tool calls read from a model response as it passes. A stream is split into whole SSE events; a
//! `content_block_start` of a `tool_use` block opens a call, its `input_json_delta` pieces are joined, and its
//! `content_block_stop` completes it. Text and thinking blocks are never read past their event type.
//!
//! Two ways to read: `watch` looks at a copy of the bytes the client already got (recording only), `hold` owns
//! the bytes: events go out as soon as each is whole, except that a tool call's events are held from its
//! `content_block_start` until its input is complete and it was decided — then released byte-exact, or replaced
//! by an `event: error` that ends what the client sees. A held call is bounded by `actions.max_block_bytes`.

use bytes::{Bytes, BytesMut};
use memchr::memchr2;
use serde::Deserialize;
use serde_json::Value;

/// One tool call, read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The block's `id` (`toolu_…`), the `tool_use_id` of its result.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The complete input; `None` when it could not be read: over the bound, or not a JSON object.
    pub input: Option<Value>,
    /// Why `input` is `None`.
    pub unread: Option<Unread>,
}

/// Why a call's input could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// Its events grew past `actions.max_block_bytes` before the block ended.
    TooLarge,
    /// Its joined `partial_json` is not a JSON object, or the stream ended inside the block.
    Malformed,
}

/// What to do with a call once decided.
#[derive(Debug)]
pub enum Next {
    /// Send its events as they came.
    Release,
    /// End the response here with these bytes (an `event: error`); nothing after them reaches the client.
    End(Bytes),
}

/// Reads tool calls from an SSE response.
#[derive(Debug)]
pub struct Calls {
    mode: Mode,
    limit: usize,
    framer: Framer,
    /// The tool block being read, if any.
    open: Option<OpenBlock>,
    /// `hold`: events whole and free to go; `watch`: unused.
    out: BytesMut,
    /// The response was ended by a denied call: nothing more is read or sent.
    ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Watch,
    Hold,
}

#[derive(Debug)]
struct OpenBlock {
    index: u64,
    id: String,
    name: String,
    /// The input given in `content_block_start` (used when no delta follows).
    start_input: Option<Value>,
    /// The `partial_json` pieces so far.
    input: String,
    /// `hold`: the block's events so far, byte-exact.
    held: BytesMut,
    too_large: bool,
}

impl Calls {
    /// Reads a copy of what the client gets: never changes or delays a byte.
    pub fn watch(limit: usize) -> Self {
        Self::new(Mode::Watch, limit)
    }

    /// Owns the bytes: `feed` says what may go to the client.
    pub fn hold(limit: usize) -> Self {
        Self::new(Mode::Hold, limit)
    }

    fn new(mode: Mode, limit: usize) -> Self {
        Self { mode, limit, framer: Framer::default(), open: None, out: BytesMut::new(), ended: false }
    }

    /// True once a denied call ended the response.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Takes the next chunk of the body. Each call completed in it is handed to `decide`, whose verdict matters
    /// under `hold`. Returns the bytes the client may have now (under `watch`, always empty: it has them already).
    pub fn feed(&mut self, chunk: &[u8], decide: &mut dyn FnMut(Call) -> Next) -> Bytes {
        if self.ended {
            return Bytes::new();
        }
        self.framer.push(chunk);
        while let Some(event) = self.framer.next_event() {
            self.event(event, decide);
            if self.open_len() > self.limit {
                self.block_too_large(decide);
            }
            if self.ended {
                self.framer.clear();
                break;
            }
        }
        if !self.ended && self.framer.pending_len() > self.limit {
            // One event larger than the bound: it cannot be read whole.
            self.event_too_large(decide);
        }
        self.out.split().freeze()
    }

    /// The body ended (or was cut): a block still open is handed to `decide` as malformed, and under `hold`
    /// whatever is still held goes out (or the error that replaces it).
    pub fn finish(&mut self, decide: &mut dyn FnMut(Call) -> Next) -> Bytes {
        if !self.ended {
            if let Some(block) = self.open.take() {
                let held = block.held.clone();
                let call = block.into_call(Some(Unread::Malformed));
                self.settle(call, held, decide);
            }
            if !self.ended && self.mode == Mode::Hold {
                let rest = self.framer.take_pending();
                self.out.extend_from_slice(&rest);
            }
        }
        self.out.split().freeze()
    }

    fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |block| block.held.len().max(block.input.len()))
    }

    fn event(&mut self, raw: Bytes, decide: &mut dyn FnMut(Call) -> Next) {
        let parsed = Event::parse(&raw, self.open.is_some());
        if let Some(block) = &mut self.open {
            if self.mode == Mode::Hold {
                block.held.extend_from_slice(&raw);
            }
            match parsed {
                Some(Event::Delta { index, partial_json: Some(piece) }) if index == block.index && !block.too_large => {
                    block.input.push_str(&piece);
                }
                Some(Event::Stop { index }) if index == block.index => {
                    let block = self.open.take().expect("the open block");
                    let too_large = block.too_large.then_some(Unread::TooLarge);
                    let held = block.held.clone();
                    let call = block.into_call(too_large);
                    self.settle(call, held, decide);
                }
                _ => {}
            }
            return;
        }
        match parsed {
            Some(Event::ToolStart { index, id, name, input }) => {
                let mut held = BytesMut::new();
                if self.mode == Mode::Hold {
                    held.extend_from_slice(&raw);
                }
                let start_input = input.filter(|input| input.as_object().is_some_and(|object| !object.is_empty()));
                self.open =
                    Some(OpenBlock { index, id, name, start_input, input: String::new(), held, too_large: false });
            }
            _ => {
                if self.mode == Mode::Hold {
                    self.out.extend_from_slice(&raw);
                }
            }
        }
    }

    /// An event in progress passed the bound. Under `watch` it is skipped (an open block is then decided as too
    /// large); under `hold` the open block (or, with none open, the event itself: it could be a tool call nobody
    /// can read) is decided now, unread, and when released the rest of the event goes out as it comes.
    fn event_too_large(&mut self, decide: &mut dyn FnMut(Call) -> Next) {
        if self.mode == Mode::Watch {
            if let Some(block) = &mut self.open {
                block.too_large = true;
                block.input = String::new();
            }
            self.framer.skip_event();
            return;
        }
        let (call, mut held) = match self.open.take() {
            Some(block) => {
                let held = block.held.clone();
                (block.into_call(Some(Unread::TooLarge)), held)
            }
            None => {
                let call = Call { id: String::new(), name: String::new(), input: None, unread: Some(Unread::TooLarge) };
                (call, BytesMut::new())
            }
        };
        held.extend_from_slice(&self.framer.take_pending());
        self.settle(call, held, decide);
        if !self.ended {
            self.framer.pass_rest_of_event();
        }
    }

    /// An open block's events (or input) passed the bound, each event whole. Under `watch` it stops collecting
    /// and is decided as too large at its end; under `hold` it is decided now, so that its bytes need not be kept,
    /// and when released its later events go out as they come, as any other event.
    fn block_too_large(&mut self, decide: &mut dyn FnMut(Call) -> Next) {
        let Some(block) = self.open.take() else { return };
        if self.mode == Mode::Watch {
            self.open = Some(OpenBlock { too_large: true, input: String::new(), ..block });
            return;
        }
        let held = block.held.clone();
        let call = block.into_call(Some(Unread::TooLarge));
        self.settle(call, held, decide);
    }

    fn settle(&mut self, call: Call, held: impl AsRef<[u8]>, decide: &mut dyn FnMut(Call) -> Next) {
        match decide(call) {
            Next::Release => {
                if self.mode == Mode::Hold {
                    self.out.extend_from_slice(held.as_ref());
                }
            }
            Next::End(error) => {
                if self.mode == Mode::Hold {
                    self.out.extend_from_slice(&error);
                    self.ended = true;
                }
            }
        }
    }
}

impl OpenBlock {
    fn into_call(self, unread: Option<Unread>) -> Call {
        if let Some(unread) = unread {
            return Call { id: self.id, name: self.name, input: None, unread: Some(unread) };
        }
        let input = if self.input.trim().is_empty() {
            Some(self.start_input.unwrap_or_else(|| Value::Object(Default::default())))
        } else {
            serde_json::from_str::<Value>(&self.input).ok().filter(Value::is_object)
        };
        let unread = input.is_none().then_some(Unread::Malformed);
        Call { id: self.id, name: self.name, input, unread }
    }
}

/// A content block, as far as tool calls are read from it (a whole message's `content`, an SSE
/// `content_block_start`).
#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
}

/// The tool calls of a whole (non-streamed) message, in order.
pub fn calls_of_message(body: &[u8]) -> Option<Vec<Call>> {
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        content: Vec<ContentBlock>,
    }
    let message: Message = serde_json::from_slice(body).ok()?;
    let calls = message
        .content
        .into_iter()
        .filter(|block| block.kind.as_deref() == Some("tool_use"))
        .map(|block| {
            let input = block.input.filter(Value::is_object);
            let unread = input.is_none().then_some(Unread::Malformed);
            Call { id: block.id.unwrap_or_default(), name: block.name.unwrap_or_default(), input, unread }
        })
        .collect();
    Some(calls)
}

// ---------------------------------------------------------------------------------------------------------------
// SSE events.

/// What a whole event says, for the events tool calls are read from.
#[derive(Debug)]
enum Event {
    ToolStart { index: u64, id: String, name: String, input: Option<Value> },
    Delta { index: u64, partial_json: Option<String> },
    Stop { index: u64 },
}

impl Event {
    /// Reads a whole event's fields; JSON is parsed only for `content_block_start`, and for deltas and stops
    /// while a tool block is open (`in_block`). Text deltas outside a tool block are never parsed.
    fn parse(raw: &[u8], in_block: bool) -> Option<Event> {
        let mut name: &[u8] = b"";
        let mut data: Vec<u8> = Vec::new();
        let mut data_lines = 0usize;
        for line in lines(raw) {
            let (field, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => name = value,
                b"data" => {
                    if data_lines > 0 {
                        data.push(b'\n');
                    }
                    data_lines += 1;
                    data.extend_from_slice(value);
                }
                _ => {}
            }
        }
        let wanted = match name {
            b"content_block_start" => true,
            b"content_block_delta" | b"content_block_stop" => in_block,
            b"" => true,
            _ => false,
        };
        if !wanted || data_lines == 0 {
            return None;
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "type")]
            kind: Option<String>,
            index: Option<u64>,
            content_block: Option<ContentBlock>,
            delta: Option<Delta>,
        }
        #[derive(Deserialize)]
        struct Delta {
            #[serde(rename = "type")]
            kind: Option<String>,
            partial_json: Option<String>,
        }
        let data: Data = serde_json::from_slice(&data).ok()?;
        let index = data.index?;
        match data.kind.as_deref()? {
            "content_block_start" => {
                let block = data.content_block?;
                (block.kind.as_deref() == Some("tool_use")).then(|| Event::ToolStart {
                    index,
                    id: block.id.unwrap_or_default(),
                    name: block.name.unwrap_or_default(),
                    input: block.input,
                })
            }
            "content_block_delta" if in_block => {
                let delta = data.delta?;
                let partial_json = delta.partial_json.filter(|_| delta.kind.as_deref() == Some("input_json_delta"));
                Some(Event::Delta { index, partial_json })
            }
            "content_block_stop" if in_block => Some(Event::Stop { index }),
            _ => None,
        }
    }
}

/// The lines of a whole event (LF, CRLF or CR ends), without their ends.
fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr2(b'\n', b'\r', rest) {
            Some(end) => {
                let line = &rest[..end];
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[end + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
        }
    })
}

/// Splits a byte stream into whole SSE events (each up to and including the blank line that ends it), keeping
/// the bytes of the event in progress. Any line end (LF, CRLF, CR) counts, and chunks may split anywhere.
#[derive(Debug, Default)]
struct Framer {
    pending: BytesMut,
    /// Bytes of `pending` already scanned (no event end among them).
    scanned: usize,
    /// The scanned bytes end at the start of a line.
    at_line_start: bool,
    /// The scanned bytes end with a CR: a LF right after belongs to it.
    after_cr: bool,
    /// `pass_rest_of_event`: bytes up to the end of the current event are handed out as they come.
    passing: bool,
    /// `skip_event`: bytes up to the end of the current event are dropped (a copy, under `watch`).
    skipping: bool,
}

impl Framer {
    fn push(&mut self, chunk: &[u8]) {
        if self.pending.is_empty() && self.scanned == 0 && !self.passing && !self.skipping {
            // A new event starts: the first line has not begun.
            self.at_line_start = true;
        }
        self.pending.extend_from_slice(chunk);
    }

    fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn clear(&mut self) {
        *self = Framer::default();
    }

    fn take_pending(&mut self) -> Bytes {
        self.scanned = 0;
        self.pending.split().freeze()
    }

    fn skip_event(&mut self) {
        self.skipping = true;
    }

    fn pass_rest_of_event(&mut self) {
        self.passing = true;
    }

    /// The next whole event, if one has ended. Under `passing`/`skipping`, the bytes of the current event come
    /// out as one "event" (or are dropped) as soon as they are seen, and framing resumes after it.
    fn next_event(&mut self) -> Option<Bytes> {
        loop {
            let bytes = &self.pending[self.scanned..];
            if bytes.is_empty() {
                if self.passing && self.scanned > 0 {
                    self.scanned = 0;
                    return Some(self.pending.split().freeze());
                }
                if self.skipping {
                    self.pending.clear();
                    self.scanned = 0;
                }
                return None;
            }
            let mut position = 0;
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    position = 1;
                }
            }
            let Some(found) = memchr2(b'\n', b'\r', &bytes[position..]) else {
                if position < bytes.len() {
                    self.at_line_start = false;
                }
                self.scanned = self.pending.len();
                continue;
            };
            let end = position + found;
            let empty_line = found == 0 && self.at_line_start;
            self.at_line_start = true;
            self.after_cr = bytes[end] == b'\r';
            let consumed = self.scanned + end + 1;
            if empty_line {
                let passing = std::mem::take(&mut self.passing);
                let skipping = std::mem::take(&mut self.skipping);
                self.scanned = 0;
                let event = self.pending.split_to(consumed).freeze();
                self.at_line_start = true;
                if skipping {
                    continue;
                }
                let _ = passing;
                return Some(event);
            }
            self.scanned = consumed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, data: &Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    /// A stream with a text block, then a `Read` tool call whose input is split into `pieces`.
    fn stream_with_call(input: &str, pieces: &[usize]) -> String {
        let mut events = vec![
            event("message_start", &json!({"type": "message_start", "message": {"id": "m", "content": []}})),
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Let me read it."}}),
            ),
            event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
            event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}}),
            ),
        ];
        let mut from = 0;
        for &to in pieces.iter().chain(std::iter::once(&input.len())) {
            let piece = &input[from..to];
            events.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
            from = to;
        }
        events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 1})));
        events.push(event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 40}}),
        ));
        events.push(event("message_stop", &json!({"type": "message_stop"})));
        events.concat()
    }

    const INPUT: &str = r#"{"file_path": "/etc/passwd", "limit": 10}"#;

    fn run(calls: &mut Calls, chunks: &[&[u8]], verdict: &dyn Fn(&Call) -> Next) -> (Vec<u8>, Vec<Call>) {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        let mut decide = |call: Call| {
            let verdict = verdict(&call);
            seen.push(call);
            verdict
        };
        for chunk in chunks {
            out.extend_from_slice(&calls.feed(chunk, &mut decide));
        }
        out.extend_from_slice(&calls.finish(&mut decide));
        (out, seen)
    }

    fn read_call() -> Call {
        Call {
            id: "toolu_1".into(),
            name: "Read".into(),
            input: Some(json!({"file_path": "/etc/passwd", "limit": 10})),
            unread: None,
        }
    }

    #[test]
    fn a_call_split_at_every_byte_of_its_input_and_of_the_stream_is_read_whole_and_released_byte_exact() {
        for split in 0..=INPUT.len() {
            let stream = stream_with_call(INPUT, &[split]);
            for cut in (0..stream.len()).step_by(7).chain([1, stream.len() - 1]) {
                let (a, b) = stream.as_bytes().split_at(cut);
                let (out, calls) = run(&mut Calls::hold(1 << 20), &[a, b], &|_| Next::Release);
                assert_eq!(out, stream.as_bytes(), "split {split}, cut {cut}");
                assert_eq!(calls, vec![read_call()], "split {split}, cut {cut}");
                let (out, calls) = run(&mut Calls::watch(1 << 20), &[a, b], &|_| Next::Release);
                assert!(out.is_empty());
                assert_eq!(calls, vec![read_call()]);
            }
        }
    }

    #[test]
    fn text_goes_out_as_each_event_ends_and_a_call_is_held_until_decided() {
        let stream = stream_with_call(INPUT, &[5, 20]);
        let text_end = stream
            .find("event: content_block_start\ndata: {\"content_block\":{\"id\"")
            .unwrap_or_else(|| stream.match_indices("event: content_block_start").nth(1).expect("the tool block").0);
        let mut calls = Calls::hold(1 << 20);
        let mut decided = 0;
        let out = calls.feed(&stream.as_bytes()[..text_end + 10], &mut |_| {
            decided += 1;
            Next::Release
        });
        assert_eq!(&out[..], &stream.as_bytes()[..text_end], "the text block went out; the tool block is held");
        assert_eq!(decided, 0);
    }

    #[test]
    fn a_denied_call_ends_the_response_with_the_error_and_nothing_after() {
        let stream = stream_with_call(INPUT, &[3]);
        let error = Bytes::from_static(b"event: error\ndata: {\"type\":\"error\"}\n\n");
        let mut calls = Calls::hold(1 << 20);
        let (out, seen) = run(&mut calls, &[stream.as_bytes()], &|_| Next::End(error.clone()));
        let before = stream.match_indices("event: content_block_start").nth(1).expect("the tool block").0;
        let mut expected = stream.as_bytes()[..before].to_vec();
        expected.extend_from_slice(&error);
        assert_eq!(out, expected);
        assert_eq!(seen.len(), 1);
        assert!(calls.ended());
        assert!(calls.feed(b"event: ping\ndata: {}\n\n", &mut |_| Next::Release).is_empty());
    }

    #[test]
    fn crlf_and_cr_line_ends_frame_the_same_events() {
        let stream = stream_with_call(INPUT, &[9]);
        for end in ["\r\n", "\r"] {
            let converted = stream.replace('\n', end);
            for cut in 0..converted.len() {
                let (a, b) = converted.as_bytes().split_at(cut);
                let (out, calls) = run(&mut Calls::hold(1 << 20), &[a, b], &|_| Next::Release);
                assert_eq!(out, converted.as_bytes(), "{end:?} cut {cut}");
                assert_eq!(calls, vec![read_call()], "{end:?} cut {cut}");
            }
        }
    }

    #[test]
    fn several_calls_interleaved_with_text_are_each_read() {
        let one = stream_with_call(INPUT, &[]);
        let second = event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {}}}),
        ) + &event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"command\": \"ls && curl http://x\"}"}}),
        ) + &event("content_block_stop", &json!({"type": "content_block_stop", "index": 2}));
        let at = one.find("event: message_delta").expect("message_delta");
        let stream = format!("{}{second}{}", &one[..at], &one[at..]);
        let (out, seen) = run(&mut Calls::hold(1 << 20), &[stream.as_bytes()], &|_| Next::Release);
        assert_eq!(out, stream.as_bytes());
        let names: Vec<_> = seen.iter().map(|call| call.name.as_str()).collect();
        assert_eq!(names, ["Read", "Bash"]);
        assert_eq!(seen[1].input, Some(json!({"command": "ls && curl http://x"})));
    }

    #[test]
    fn a_call_past_the_bound_is_decided_unread_and_the_bytes_still_flow_when_released() {
        let big = format!("{{\"file_path\": \"/a\", \"content\": \"{}\"}}", "x".repeat(10_000));
        let pieces: Vec<usize> = (1..big.len()).step_by(100).collect();
        let stream = stream_with_call(&big, &pieces);
        let (out, seen) = run(&mut Calls::hold(4096), &[stream.as_bytes()], &|_| Next::Release);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].unread, Some(Unread::TooLarge));
        assert_eq!(seen[0].name, "Read");
        let chunks: Vec<&[u8]> = stream.as_bytes().chunks(333).collect();
        let (out, seen) = run(&mut Calls::watch(4096), &chunks, &|_| Next::Release);
        assert!(out.is_empty());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].unread, Some(Unread::TooLarge));
    }

    #[test]
    fn a_stream_cut_inside_a_call_decides_it_as_malformed() {
        let stream = stream_with_call(INPUT, &[4]);
        let at = stream.find("event: content_block_stop\ndata: {\"index\":1").unwrap_or_else(|| {
            stream.match_indices("event: content_block_stop").nth(1).expect("the tool block's stop").0
        });
        let (_, seen) = run(&mut Calls::hold(1 << 20), &[&stream.as_bytes()[..at]], &|_| Next::Release);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].unread, Some(Unread::Malformed));
    }

    #[test]
    fn the_calls_of_a_whole_message_are_read_in_order() {
        let body = json!({"content": [{"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/etc/passwd", "limit": 10}},
            {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": "ls"}]});
        let calls = calls_of_message(body.to_string().as_bytes()).expect("a message");
        assert_eq!(calls[0], read_call());
        assert_eq!(calls[1].unread, Some(Unread::Malformed));
        assert_eq!(calls_of_message(b"not json"), None);
    }
}
