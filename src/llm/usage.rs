//! Metering: the token usage of a Messages API response, read from a JSON body or an SSE stream as it passes,
//! without buffering the stream and without changing a byte of it.

use std::borrow::Cow;

use memchr::{memchr, memchr2, memmem};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Token counts of one response (the Messages API `usage` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cache writes of both lifetimes.
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// The part of `cache_creation_input_tokens` cached for an hour (`cache_creation.ephemeral_1h_input_tokens`),
    /// priced higher than the five-minute writes.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_creation_1h_input_tokens: u64,
    /// Server-side web searches (`server_tool_use.web_search_requests`), billed per search.
    #[serde(skip_serializing_if = "is_zero")]
    pub web_search_requests: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

#[cfg(test)]
impl Usage {
    /// The four token counts, nothing cached for an hour and no web search.
    pub(crate) fn tokens(input: u64, output: u64, cache_creation: u64, cache_read: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: cache_creation,
            cache_read_input_tokens: cache_read,
            ..Usage::default()
        }
    }
}

/// What a response told about itself once it ended (or was cut).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    /// The usage seen; `None` when the response carried none (e.g. an error body).
    pub usage: Option<Usage>,
    /// The model the response names.
    pub model: Option<String>,
    /// The `error.type` of an error body or of an `event: error` after a 200.
    pub error: Option<String>,
    /// The response ended normally (`message_stop` for SSE, a whole JSON body otherwise).
    pub complete: bool,
}

/// An SSE event whose data grows past this is skipped: the events metering reads are a few hundred bytes.
pub const MAX_EVENT_DATA: usize = 1 << 20;

/// A JSON body longer than this is not metered (usage `None`, not complete): it is forwarded all the same.
pub const MAX_JSON_BODY: usize = 4 << 20;

/// Reads usage from a response body chunk by chunk.
#[derive(Debug)]
pub struct Meter {
    body: Body,
}

/// The two shapes of a Messages API response body.
#[derive(Debug)]
enum Body {
    Stream(Box<StreamMeter>),
    Json(JsonMeter),
}

impl Meter {
    /// A meter for a response with this `content-type` (`text/event-stream` = SSE, else JSON).
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        let body = if content_type.is_some_and(is_event_stream) {
            Body::Stream(Box::default())
        } else {
            Body::Json(JsonMeter::default())
        };
        Self { body }
    }

    /// Looks at the next chunk of the body, in order.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Stream(stream) => stream.feed(chunk),
            Body::Json(json) => json.feed(chunk),
        }
    }

    /// What was seen; call after the last chunk, or when the stream was cut.
    pub fn finish(self) -> Metered {
        match self.body {
            Body::Stream(stream) => stream.finish(),
            Body::Json(json) => json.finish(),
        }
    }
}

/// `text/event-stream`, in any case, with or without parameters.
pub fn is_event_stream(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("");
    essence.trim().eq_ignore_ascii_case("text/event-stream")
}

// ---------------------------------------------------------------------------------------------------------------
// The parts of an event or body that metering reads.

/// The top-level fields metering reads from an SSE event's data or a JSON body, borrowed from the JSON text: each
/// is read only when needed, so that a field of an unexpected shape is ignored instead of failing the whole event,
/// and nothing is allocated for the fields (or the `content`) that metering skips.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Parses a JSON object; anything else (invalid JSON, an array, a duplicate key) is `None`.
    fn parse(bytes: &'a [u8]) -> Option<Envelope<'a>> {
        // serde accepts an array for a struct, field by position: only an object is an envelope.
        let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    /// The `type` field, when it is a string.
    fn kind(&self) -> Option<Cow<'a, str>> {
        text(self.kind)
    }

    /// `error.type`, or `"error"` when the error object does not say.
    fn error_type(&self) -> String {
        let [inner] = members(self.error, &["type"]);
        text(inner).map_or_else(|| "error".to_owned(), Cow::into_owned)
    }
}

/// A JSON string's text (borrowed unless it has escapes); `None` for absent, null or any other type.
fn text(value: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let json = value?.get();
    match serde_json::from_str::<&str>(json) {
        Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
        Err(_) => serde_json::from_str::<String>(json).ok().map(Cow::Owned),
    }
}

/// A JSON number's value when it is a whole count; `None` for absent, null, negative, fractional or any other type.
fn count(value: Option<&RawValue>) -> Option<u64> {
    serde_json::from_str(value?.get()).ok()
}

/// The members named `names` of a JSON object, each the last of its name (as `serde_json::Value` keeps it); all
/// `None` when the value is absent or not an object. Other members are skipped unparsed.
fn members<'a, const N: usize>(object: Option<&'a RawValue>, names: &[&str; N]) -> [Option<&'a RawValue>; N] {
    let Some(object) = object else { return [None; N] };
    let mut reader = serde_json::Deserializer::from_str(object.get());
    serde::Deserializer::deserialize_map(&mut reader, Members(names)).unwrap_or([None; N])
}

/// Reads an object's members for [`members`].
struct Members<'n, const N: usize>(&'n [&'n str; N]);

impl<'de, const N: usize> Visitor<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(position) = map.next_key_seed(Name(self.0))? {
            match position {
                Some(position) => found[position] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// A member's name, as its position among the names wanted, without keeping it.
struct Name<'n, const N: usize>(&'n [&'n str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Name<'_, N> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Name<'_, N> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|wanted| *wanted == name))
    }
}

/// The usage fields one event or body gave; `None` = absent, null or not a count.
#[derive(Debug, Default, Clone, Copy)]
struct UsageUpdate {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_1h_input_tokens: Option<u64>,
    web_search_requests: Option<u64>,
}

impl UsageUpdate {
    /// Reads a `usage` object; a value that is not an object gives nothing.
    fn read(usage: Option<&RawValue>) -> Self {
        let [input, output, cache_creation_input, cache_read_input, cache_creation, server_tool_use] = members(
            usage,
            &[
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "cache_creation",
                "server_tool_use",
            ],
        );
        let [cache_creation_1h] = members(cache_creation, &["ephemeral_1h_input_tokens"]);
        let [web_search] = members(server_tool_use, &["web_search_requests"]);
        Self {
            input_tokens: count(input),
            output_tokens: count(output),
            cache_creation_input_tokens: count(cache_creation_input),
            cache_read_input_tokens: count(cache_read_input),
            cache_creation_1h_input_tokens: count(cache_creation_1h),
            web_search_requests: count(web_search),
        }
    }

    /// Merges field by field into `usage`, the last value given winning. Counts are cumulative: never added.
    fn apply(self, usage: &mut Option<Usage>) {
        let fields = [
            self.input_tokens,
            self.output_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_1h_input_tokens,
            self.web_search_requests,
        ];
        if fields.iter().all(Option::is_none) {
            return;
        }
        let usage = usage.get_or_insert_with(Usage::default);
        let targets = [
            &mut usage.input_tokens,
            &mut usage.output_tokens,
            &mut usage.cache_creation_input_tokens,
            &mut usage.cache_read_input_tokens,
            &mut usage.cache_creation_1h_input_tokens,
            &mut usage.web_search_requests,
        ];
        for (target, given) in targets.into_iter().zip(fields) {
            if let Some(count) = given {
                *target = count;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// JSON bodies.

/// Keeps a copy of a JSON body (up to `MAX_JSON_BODY`) and reads it at the end.
#[derive(Debug, Default)]
struct JsonMeter {
    body: Vec<u8>,
    too_large: bool,
}

impl JsonMeter {
    fn feed(&mut self, chunk: &[u8]) {
        if self.too_large {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > MAX_JSON_BODY {
            self.too_large = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    fn finish(self) -> Metered {
        if self.too_large {
            return Metered::default();
        }
        let Some(envelope) = Envelope::parse(&self.body) else {
            // Valid JSON of another shape (or with a duplicate key) is a whole body without usage.
            let complete = serde_json::from_slice::<serde::de::IgnoredAny>(&self.body).is_ok();
            return Metered { complete, ..Metered::default() };
        };
        let mut metered = Metered { complete: true, ..Metered::default() };
        match envelope.kind().as_deref() {
            Some("message") => {
                metered.model = text(envelope.model).map(Cow::into_owned);
                UsageUpdate::read(envelope.usage).apply(&mut metered.usage);
            }
            Some("error") => metered.error = Some(envelope.error_type()),
            // count_tokens answers `{"input_tokens": N}`: free, so no usage.
            _ => {}
        }
        metered
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SSE streams.

/// The event types metering acts on; every other type (`content_block_delta`, `ping`, unknown ones) is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        match name {
            b"message_start" => Kind::MessageStart,
            b"message_delta" => Kind::MessageDelta,
            b"message_stop" => Kind::MessageStop,
            b"error" => Kind::Error,
            _ => Kind::Other,
        }
    }

    /// Whether the event's data must be parsed (`message_stop` needs only to be seen).
    fn reads_data(self) -> bool {
        matches!(self, Kind::MessageStart | Kind::MessageDelta | Kind::Error)
    }
}

/// A few bytes kept inline: a field name or an event name. Longer input sets `overflow` and is not kept.
#[derive(Debug, Clone, Copy)]
struct ShortBytes<const N: usize> {
    bytes: [u8; N],
    len: usize,
    overflow: bool,
}

impl<const N: usize> ShortBytes<N> {
    const fn new() -> Self {
        Self { bytes: [0; N], len: 0, overflow: false }
    }

    fn push(&mut self, more: &[u8]) {
        if self.overflow {
            return;
        }
        let end = self.len.saturating_add(more.len());
        match self.bytes.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(more);
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    /// The bytes, or `None` after an overflow.
    fn as_bytes(&self) -> Option<&[u8]> {
        if self.overflow {
            None
        } else {
            self.bytes.get(..self.len)
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && !self.overflow
    }
}

/// Longest field name read: `event`.
type FieldName = ShortBytes<5>;
/// Longest event name that matters: `message_start`; longer names are some other type.
type EventName = ShortBytes<16>;

/// The SSE fields metering reads; `id`, `retry` and unknown fields are ignored.
#[derive(Debug, Clone, Copy)]
enum Field {
    Event,
    Data,
}

impl Field {
    fn of(name: &FieldName) -> Option<Field> {
        match name.as_bytes()? {
            b"event" => Some(Field::Event),
            b"data" => Some(Field::Data),
            _ => None,
        }
    }
}

/// Where the parser is within the current line.
#[derive(Debug, Clone, Copy)]
enum Line {
    /// Nothing read yet: a line end here is a blank line, which dispatches the event.
    Start,
    /// Reading the field name (the line so far, no colon yet).
    Name(FieldName),
    /// Just past the colon: one space may follow and is not part of the value.
    AfterColon(Field),
    /// Reading the value of a field.
    Value(Field),
    /// A comment, an ignored field, or a value not kept: skip to the line end.
    Ignore,
}

/// The event being assembled between blank lines.
#[derive(Debug)]
struct Event {
    /// The last `event:` value; empty = none given, so the data's `type` decides.
    name: EventName,
    /// The data lines so far, joined with `\n` (only for events whose data metering reads).
    data: Vec<u8>,
    /// How many `data` lines the event has: an event without any is not dispatched.
    data_lines: usize,
    /// The data is not kept: the event is of a type that needs none, or it grew past `MAX_EVENT_DATA`.
    data_dropped: bool,
}

impl Default for Event {
    fn default() -> Self {
        Self { name: EventName::new(), data: Vec::new(), data_lines: 0, data_dropped: false }
    }
}

impl Event {
    /// The type named by `event:`, if a non-empty one was given.
    fn named_kind(&self) -> Option<Kind> {
        if self.name.is_empty() {
            return None;
        }
        Some(self.name.as_bytes().map_or(Kind::Other, Kind::of))
    }

    fn begin_data_line(&mut self) {
        self.data_lines = self.data_lines.saturating_add(1);
        if self.data_dropped {
            return;
        }
        // The bulk of a stream (content_block_delta) is dropped here, before its data is copied or parsed.
        // Servers send `event:` before `data:`; an `event:` line after the data that renames the event to one
        // metering reads finds the data gone, and the event is ignored.
        if self.named_kind().is_some_and(|kind| !kind.reads_data()) {
            self.drop_data();
            return;
        }
        if self.data_lines > 1 {
            self.push_data(b"\n");
        }
    }

    fn push_data(&mut self, bytes: &[u8]) {
        if self.data_dropped {
            return;
        }
        if self.data.len().saturating_add(bytes.len()) > MAX_EVENT_DATA {
            self.drop_data();
            return;
        }
        self.data.extend_from_slice(bytes);
    }

    fn drop_data(&mut self) {
        self.data_dropped = true;
        self.data.clear();
    }

    /// Ready for the next event; a buffer grown by a large event is released.
    fn reset(&mut self) {
        self.name = EventName::new();
        self.data.clear();
        if self.data.capacity() > 64 * 1024 {
            self.data = Vec::new();
        }
        self.data_lines = 0;
        self.data_dropped = false;
    }
}

/// An incremental `text/event-stream` parser (the WHATWG rules: LF, CRLF or CR line ends, `field: value` lines,
/// `:` comments, a blank line dispatches) that parses JSON only for the few events carrying usage.
/// Chunks may split anywhere; the state between chunks is the position in the current line and event.
#[derive(Debug)]
struct StreamMeter {
    line: Line,
    /// The last chunk ended with CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    /// How many bytes of a leading byte order mark were seen so far; `None` past the start of the stream.
    byte_order_mark: Option<usize>,
    event: Event,
    seen: Metered,
}

impl Default for StreamMeter {
    fn default() -> Self {
        Self {
            line: Line::Start,
            after_cr: false,
            byte_order_mark: Some(0),
            event: Event::default(),
            seen: Metered::default(),
        }
    }
}

/// U+FEFF in UTF-8: one at the start of a stream is not part of its first line.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

impl StreamMeter {
    fn feed(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(seen) = self.byte_order_mark {
            // It may arrive split over chunks: its bytes are held until it is whole, or shown not to be one.
            let matched = bytes.iter().zip(&BYTE_ORDER_MARK[seen..]).take_while(|(byte, mark)| byte == mark).count();
            if seen + matched == BYTE_ORDER_MARK.len() {
                self.byte_order_mark = None;
                bytes = &bytes[matched..];
            } else if matched == bytes.len() {
                self.byte_order_mark = Some(seen + matched);
                return;
            } else {
                self.byte_order_mark = None;
                self.take(&BYTE_ORDER_MARK[..seen]);
            }
        }
        if std::mem::take(&mut self.after_cr) {
            if let Some((b'\n', rest)) = bytes.split_first() {
                bytes = rest;
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', bytes) {
            // memchr2 returns an index inside `bytes`.
            let (content, rest) = bytes.split_at(end);
            self.take(content);
            self.end_line();
            let Some((&line_end, after)) = rest.split_first() else { return };
            bytes = after;
            if line_end == b'\r' {
                match bytes.split_first() {
                    Some((b'\n', after_lf)) => bytes = after_lf,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.take(bytes);
    }

    /// Bytes of the current line (no line end among them).
    fn take(&mut self, mut content: &[u8]) {
        while !content.is_empty() {
            match self.line {
                Line::Start | Line::Name(_) => {
                    let mut name = match self.line {
                        Line::Name(name) => name,
                        _ => FieldName::new(),
                    };
                    let Some(colon) = memchr(b':', content) else {
                        name.push(content);
                        self.line = Line::Name(name);
                        return;
                    };
                    let (before, after) = content.split_at(colon);
                    name.push(before);
                    content = after.get(1..).unwrap_or_default();
                    // An empty name is a `:` comment; an unknown or overlong name is a field metering ignores.
                    self.line = match Field::of(&name) {
                        Some(field) => {
                            self.begin_value(field);
                            Line::AfterColon(field)
                        }
                        None => Line::Ignore,
                    };
                }
                Line::AfterColon(field) => {
                    if let Some((b' ', rest)) = content.split_first() {
                        content = rest;
                    }
                    self.line = Line::Value(field);
                }
                Line::Value(Field::Event) => {
                    self.event.name.push(content);
                    return;
                }
                Line::Value(Field::Data) => {
                    self.event.push_data(content);
                    if self.event.data_dropped {
                        self.line = Line::Ignore;
                    }
                    return;
                }
                Line::Ignore => return,
            }
        }
    }

    fn begin_value(&mut self, field: Field) {
        match field {
            Field::Event => self.event.name = EventName::new(),
            Field::Data => self.event.begin_data_line(),
        }
    }

    fn end_line(&mut self) {
        match std::mem::replace(&mut self.line, Line::Start) {
            Line::Start => self.dispatch(Ending::BlankLine),
            // A line without a colon is a field name with an empty value.
            Line::Name(name) => {
                if let Some(field) = Field::of(&name) {
                    self.begin_value(field);
                }
            }
            Line::AfterColon(_) | Line::Value(_) | Line::Ignore => {}
        }
    }

    fn dispatch(&mut self, ending: Ending) {
        if self.event.data_lines > 0 {
            self.read_event(ending);
        }
        self.event.reset();
    }

    fn read_event(&mut self, ending: Ending) {
        let named = self.event.named_kind();
        if named == Some(Kind::MessageStop) {
            self.seen.complete |= ending == Ending::BlankLine;
            return;
        }
        if named.is_some_and(|kind| !kind.reads_data()) || self.event.data_dropped {
            return;
        }
        let data = &self.event.data;
        // Without an `event:` name only the data's `type` tells; skip the JSON parse for data that cannot be one
        // of the types metering reads.
        if named.is_none() && !mentions_metered_type(data) {
            return;
        }
        let Some(envelope) = Envelope::parse(data) else { return };
        let kind = named.unwrap_or_else(|| envelope.kind().map_or(Kind::Other, |kind| Kind::of(kind.as_bytes())));
        match kind {
            Kind::MessageStart => {
                let [model, usage] = members(envelope.message, &["model", "usage"]);
                if let Some(model) = text(model) {
                    self.seen.model = Some(model.into_owned());
                }
                UsageUpdate::read(usage).apply(&mut self.seen.usage);
            }
            Kind::MessageDelta => UsageUpdate::read(envelope.usage).apply(&mut self.seen.usage),
            Kind::Error => self.seen.error = Some(envelope.error_type()),
            Kind::MessageStop => self.seen.complete |= ending == Ending::BlankLine,
            Kind::Other => {}
        }
    }

    fn finish(mut self) -> Metered {
        if let Some(seen) = self.byte_order_mark.take() {
            self.take(&BYTE_ORDER_MARK[..seen]);
        }
        // A stream cut after an event's last line but before its blank line still told its usage: bill it. It
        // did not end normally, so a pending `message_stop` does not make it complete.
        if matches!(self.line, Line::Start) {
            self.dispatch(Ending::Cut);
        }
        self.seen
    }
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A blank line, as the protocol says.
    BlankLine,
    /// The end of the stream, before the blank line.
    Cut,
}

/// Whether `data` may be an event metering reads (a cheap test before a JSON parse).
fn mentions_metered_type(data: &[u8]) -> bool {
    memmem::find(data, b"message_").is_some() || memmem::find(data, b"error").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The B3 example of llm-wire.md, with the content events filled in.
    const B3: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_X\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":4800,\"output_tokens\":1}}}\n\
\n\
event: ping\n\
data: {\"type\":\"ping\"}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" \u{e9}t\u{e9} \u{1f600}\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\
\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\
\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\
\n";

    fn b3_metered() -> Metered {
        Metered {
            usage: usage(12, 42, 0, 4800),
            model: Some("claude-sonnet-5".to_owned()),
            error: None,
            complete: true,
        }
    }

    fn sse() -> Meter {
        Meter::for_content_type(Some("text/event-stream"))
    }

    fn json() -> Meter {
        Meter::for_content_type(Some("application/json"))
    }

    fn meter_whole(mut meter: Meter, body: &[u8]) -> Metered {
        meter.feed(body);
        meter.finish()
    }

    fn sse_whole(body: &str) -> Metered {
        meter_whole(sse(), body.as_bytes())
    }

    fn json_whole(body: &str) -> Metered {
        meter_whole(json(), body.as_bytes())
    }

    fn usage(input: u64, output: u64, cache_creation: u64, cache_read: u64) -> Option<Usage> {
        Some(Usage::tokens(input, output, cache_creation, cache_read))
    }

    #[test]
    fn the_b3_example_meters_input_output_and_cache_reads() {
        assert_eq!(sse_whole(B3), b3_metered());
    }

    #[test]
    fn every_byte_by_byte_feed_gives_the_same_result() {
        let mut meter = sse();
        for byte in B3.as_bytes() {
            meter.feed(std::slice::from_ref(byte));
        }
        assert_eq!(meter.finish(), b3_metered());
    }

    #[test]
    fn every_two_way_split_gives_the_same_result() {
        for stream in [B3.to_owned(), B3.replace('\n', "\r\n"), B3.replace('\n', "\r")] {
            let bytes = stream.as_bytes();
            for split in 0..=bytes.len() {
                let mut meter = sse();
                let (first, second) = bytes.split_at(split);
                meter.feed(first);
                meter.feed(&[]);
                meter.feed(second);
                assert_eq!(meter.finish(), b3_metered(), "split at {split}");
            }
        }
    }

    #[test]
    fn crlf_and_cr_line_ends_are_read_like_lf() {
        assert_eq!(sse_whole(&B3.replace('\n', "\r\n")), b3_metered());
        assert_eq!(sse_whole(&B3.replace('\n', "\r")), b3_metered());
        let mut meter = sse();
        for byte in B3.replace('\n', "\r\n").as_bytes() {
            meter.feed(std::slice::from_ref(byte));
        }
        assert_eq!(meter.finish(), b3_metered());
    }

    #[test]
    fn a_delta_with_input_and_cache_fields_replaces_them() {
        let stream = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-5\",\"usage\":{\"input_tokens\":2679,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":3}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":10682,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":510,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";
        let metered = sse_whole(stream);
        assert_eq!(metered.usage, Some(Usage { web_search_requests: 1, ..usage(10682, 510, 0, 0).unwrap() }));
        assert!(metered.complete);
    }

    #[test]
    fn deltas_are_cumulative_and_null_keeps_the_earlier_value() {
        let stream = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":7,\"output_tokens\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20,\"input_tokens\":null}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30,\"cache_read_input_tokens\":9}}\n\n";
        let metered = sse_whole(stream);
        assert_eq!(metered.usage, usage(100, 30, 7, 9));
        assert!(!metered.complete);
    }

    #[test]
    fn an_error_event_after_a_200_is_reported() {
        let stream = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-5\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: error\n\
data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let metered = sse_whole(stream);
        assert_eq!(metered.error.as_deref(), Some("overloaded_error"));
        assert_eq!(metered.usage, usage(12, 1, 0, 0));
        assert_eq!(metered.model.as_deref(), Some("claude-sonnet-5"));
        assert!(!metered.complete);
    }

    #[test]
    fn a_stream_cut_before_message_stop_bills_what_was_seen() {
        let cut_at = B3.find("event: message_delta").expect("the example has a message_delta");
        let metered = sse_whole(&B3[..cut_at]);
        assert_eq!(metered.usage, usage(12, 1, 0, 4800));
        assert!(!metered.complete);

        // Cut inside the message_delta's data line: the half line is not read.
        let inside = B3.find("\"usage\":{\"output_tokens\":42").expect("the example has the delta usage");
        let metered = sse_whole(&B3[..inside + 20]);
        assert_eq!(metered.usage, usage(12, 1, 0, 4800));

        // Cut after the message_delta's data line but before its blank line: its usage counts.
        let stop = B3.find("event: message_stop").expect("the example has a message_stop");
        let metered = sse_whole(&B3[..stop - 1]);
        assert_eq!(metered.usage, usage(12, 42, 0, 4800));
        assert!(!metered.complete);

        // Cut before the blank line after message_stop: not a normal end.
        let metered = sse_whole(&B3[..B3.len() - 1]);
        assert!(!metered.complete);
        assert_eq!(metered.usage, usage(12, 42, 0, 4800));
    }

    #[test]
    fn unknown_event_types_and_fields_are_tolerated() {
        let stream = format!(
            ": a comment\nid: 7\nretry: 1000\nevent: something_new\ndata: {{\"type\":\"something_new\",\"usage\":{{\"output_tokens\":999}}}}\n\n\
event: a_very_long_event_name_that_is_not_one_of_ours\ndata: {{}}\n\n\
unknown: field\nevent\ndata\n\n{B3}"
        );
        assert_eq!(sse_whole(&stream), b3_metered());
    }

    #[test]
    fn events_without_a_name_are_typed_by_their_data() {
        let stream = B3.lines().filter(|line| !line.starts_with("event:")).collect::<Vec<_>>().join("\n") + "\n";
        assert_eq!(sse_whole(&stream), b3_metered());
    }

    #[test]
    fn field_syntax_variants_are_read() {
        // No space after the colon, a second space kept in the value, data split over several lines.
        let stream = "event:message_start\n\
data:{\"type\":\"message_start\",\"message\":{\"model\":\"m\",\n\
data:  \"usage\":{\"input_tokens\":5}}}\n\n\
event:  message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":6}}\n\n\
event: message_stop\ndata\n\n";
        let metered = sse_whole(stream);
        assert_eq!(metered.model.as_deref(), Some("m"));
        // `event:  message_delta` names the type " message_delta", which is not one metering reads.
        assert_eq!(metered.usage, usage(5, 0, 0, 0));
        assert!(metered.complete);
    }

    #[test]
    fn json_text_is_read_as_decoded_and_odd_shapes_are_ignored_field_by_field() {
        // Escaped names and strings read as their decoded text; of a repeated member the last counts (as
        // `serde_json::Value` keeps it); a count of another type, a fraction or a negative is no count.
        let body = r#"{"type":"mes\u0073age","model":"claude-\u0073onnet","usage":{"input\u005ftokens":5,
            "output_tokens":1,"output_tokens":7,"cache_read_input_tokens":"9","cache_creation_input_tokens":2.5,
            "cache_creation":{"ephemeral_1h_input_tokens":-1},"server_tool_use":{"web_search_requests":3}}}"#;
        let metered = json_whole(body);
        assert!(metered.complete);
        assert_eq!(metered.model.as_deref(), Some("claude-sonnet"));
        assert_eq!(metered.usage, Some(Usage { web_search_requests: 3, ..usage(5, 7, 0, 0).unwrap() }));
        // A usage that is not an object, and an error whose type is not a string.
        let metered = json_whole(r#"{"type":"message","model":7,"usage":[1,2]}"#);
        assert_eq!((metered.model, metered.usage, metered.complete), (None, None, true));
        let metered = json_whole(r#"{"type":"error","error":{"type":{"nested":1}}}"#);
        assert_eq!(metered.error.as_deref(), Some("error"));
        // A duplicate top-level key is not an envelope: a whole body without usage.
        let metered = json_whole(r#"{"type":"message","type":"message","usage":{"input_tokens":1}}"#);
        assert_eq!((metered.usage, metered.complete), (None, true));
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_the_first_event() {
        assert_eq!(sse_whole(&format!("\u{feff}{B3}")), b3_metered());
        // Also when the first event has no name, and when the mark arrives split.
        let unnamed = B3.replace("event: message_start\n", "");
        assert_eq!(sse_whole(&format!("\u{feff}{unnamed}")), b3_metered());
        let bytes = format!("\u{feff}{unnamed}").into_bytes();
        let mut meter = sse();
        meter.feed(&bytes[..1]);
        meter.feed(&bytes[1..2]);
        meter.feed(&bytes[2..]);
        assert_eq!(meter.finish(), b3_metered());
    }

    #[test]
    fn an_event_over_the_data_limit_is_skipped_and_parsing_continues() {
        let padding = " ".repeat(MAX_EVENT_DATA + 10);
        let big_start = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":1}}}}{padding}}}\n\n"
        );
        let big_unnamed =
            format!("data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":2}}}}{padding}\n\n");
        let stream = format!("{big_start}{big_unnamed}{B3}");
        assert_eq!(sse_whole(&stream), b3_metered());

        let mut meter = sse();
        for chunk in stream.as_bytes().chunks(4096) {
            meter.feed(chunk);
        }
        assert_eq!(meter.finish(), b3_metered());
    }

    #[test]
    fn a_message_stop_without_data_does_not_dispatch() {
        let stream = B3.replace("event: message_stop\ndata: {\"type\":\"message_stop\"}\n", "event: message_stop\n");
        assert!(!sse_whole(&stream).complete);
    }

    #[test]
    fn the_content_type_chooses_the_parser() {
        for content_type in ["text/event-stream", "Text/Event-Stream; charset=utf-8", " text/event-stream ;x=y"] {
            assert_eq!(meter_whole(Meter::for_content_type(Some(content_type)), B3.as_bytes()), b3_metered());
        }
        for content_type in [None, Some("application/json"), Some("text/event-streams"), Some("text/plain")] {
            let metered = meter_whole(Meter::for_content_type(content_type), B3.as_bytes());
            assert_eq!(metered, Metered::default(), "{content_type:?}");
        }
    }

    #[test]
    fn a_json_message_body_gives_usage_and_model() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":20,"cache_creation_input_tokens":30,"cache_read_input_tokens":null,"cache_creation":{"ephemeral_5m_input_tokens":30}}}"#;
        let mut meter = json();
        for chunk in body.as_bytes().chunks(7) {
            meter.feed(chunk);
        }
        let metered = meter.finish();
        assert_eq!(metered.usage, usage(10, 20, 30, 0));
        assert_eq!(metered.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(metered.error, None);
        assert!(metered.complete);
    }

    #[test]
    fn the_one_hour_share_of_cache_writes_is_read_and_merged_like_the_other_fields() {
        let body = r#"{"type":"message","model":"claude-opus-5","usage":{"input_tokens":5,"output_tokens":7,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":500,"ephemeral_1h_input_tokens":1000}}}"#;
        let split =
            |one_hour| Some(Usage { cache_creation_1h_input_tokens: one_hour, ..usage(5, 7, 1500, 0).unwrap() });
        assert_eq!(json_whole(body).usage, split(1000));
        let stream = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"cache_creation_input_tokens\":1500,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":500,\"ephemeral_1h_input_tokens\":1000}}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":7,\"cache_creation\":null}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";
        assert_eq!(sse_whole(stream).usage, split(1000), "a null split keeps the earlier value");
        assert_eq!(
            serde_json::to_value(usage(1, 2, 3, 4).unwrap()).expect("serialises"),
            serde_json::json!({"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 4}),
            "no one-hour field in the audit record when there is none"
        );
    }

    #[test]
    fn a_json_error_body_gives_the_error_type() {
        let body = r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_1"}"#;
        let metered = json_whole(body);
        assert_eq!(metered.error.as_deref(), Some("rate_limit_error"));
        assert_eq!(metered.usage, None);
        assert!(metered.complete);
        assert_eq!(json_whole(r#"{"type":"error"}"#).error.as_deref(), Some("error"));
    }

    #[test]
    fn other_json_bodies_carry_no_usage() {
        let count_tokens = json_whole(r#"{"input_tokens": 2095}"#);
        assert_eq!(count_tokens, Metered { complete: true, ..Metered::default() });
        let array = json_whole(r#"["message","claude",{"input_tokens":1}]"#);
        assert_eq!(array, Metered { complete: true, ..Metered::default() });
        let duplicate = json_whole(r#"{"type":"message","usage":{"input_tokens":1},"usage":{"input_tokens":2}}"#);
        assert_eq!(duplicate, Metered { complete: true, ..Metered::default() });
        assert_eq!(json_whole(r#"{"type":"message","usage":{"input"#), Metered::default());
        assert_eq!(json_whole(""), Metered::default());
        let odd_shapes = json_whole(r#"{"type":"message","model":7,"usage":{"input_tokens":-1,"output_tokens":2.5}}"#);
        assert_eq!(odd_shapes, Metered { complete: true, ..Metered::default() });
    }

    #[test]
    fn a_json_body_over_the_limit_is_not_metered() {
        let mut meter = json();
        let head = br#"{"type":"message","usage":{"input_tokens":1},"content":""#;
        meter.feed(head);
        meter.feed(&vec![b'a'; MAX_JSON_BODY]);
        meter.feed(br#""}"#);
        assert_eq!(meter.finish(), Metered::default());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = rand::rngs::StdRng::seed_from_u64(0x7011_6a7e);
        let alphabet = b"event:data: message_start{}\"\r\n\n:usage0123456789";
        for _ in 0..2000 {
            let length = random.gen_range(0..400);
            let bytes: Vec<u8> = (0..length)
                .map(
                    |_| if random.gen_bool(0.5) { random.gen() } else { alphabet[random.gen_range(0..alphabet.len())] },
                )
                .collect();
            for mut meter in [sse(), json()] {
                for chunk in bytes.chunks(random.gen_range(1..50)) {
                    meter.feed(chunk);
                }
                let _ = meter.finish();
            }
        }
    }

    #[test]
    fn mutated_streams_give_the_same_result_however_they_are_split() {
        let mut random = rand::rngs::StdRng::seed_from_u64(42);
        let base = B3.replace("\n\nevent: ping", "\r\n\r\nevent: ping");
        for _ in 0..500 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..random.gen_range(0..6) {
                let at = random.gen_range(0..bytes.len());
                match random.gen_range(0..3) {
                    0 => bytes[at] = random.gen(),
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, *b"\r\n:{\" ".get(random.gen_range(0..6)).unwrap_or(&b' ')),
                }
            }
            let whole = meter_whole(sse(), &bytes);
            let mut meter = sse();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(random.gen_range(0..=rest.len().min(40)));
                meter.feed(chunk);
                rest = after;
            }
            assert_eq!(meter.finish(), whole, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}
