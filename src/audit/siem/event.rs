//! Spooled lines as the SIEM gets them: each record's `id`, `kind` and time read back, the chosen fields replaced by
//! a keyed hash (`audit.pseudonymize`), and the three wire shapes: Splunk HEC events, NDJSON lines and RFC 5424
//! syslog messages with octet-counting framing (RFC 5425, RFC 6587).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::{Compress, FlushCompress, Status};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::siem::Pseudonymize;

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub id: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    /// `ts` as written (RFC 3339, UTC, milliseconds).
    pub ts: Option<Cow<'a, str>>,
    /// The record's JSON: the spooled line, or its pseudonymised copy.
    pub json: Cow<'a, [u8]>,
    /// The spooled line's length with its newline: how far the spool moves once the event is accepted.
    pub length: usize,
}

/// The fields read from every record.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
}

/// The head of a record as tollgate writes every kind: `{"ts":"…","id":"…","kind":"…",`, read without a JSON
/// parser; `None` for anything else (or an escape in a value), which the parser then reads.
fn fast_head(json: &[u8]) -> Option<Head<'_>> {
    let rest = json.strip_prefix(b"{\"ts\":\"")?;
    let (ts, rest) = until_quote(rest)?;
    let rest = rest.strip_prefix(b",\"id\":\"")?;
    let (id, rest) = until_quote(rest)?;
    let rest = rest.strip_prefix(b",\"kind\":\"")?;
    let (kind, rest) = until_quote(rest)?;
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None;
    }
    Some(Head { id: Some(Cow::Borrowed(id)), kind: Some(Cow::Borrowed(kind)), ts: Some(Cow::Borrowed(ts)) })
}

/// The string before the next `"` and what follows the quote; `None` when it holds a backslash or is not UTF-8.
/// (A plain loop: these values are a few dozen bytes, shorter than a vectorised search pays off for.)
fn until_quote(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|byte| matches!(byte, b'"' | b'\\'))?;
    if bytes[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 1..]))
}

/// Splits `lines` (whole, newline-terminated) into events, pseudonymising as configured.
pub fn parse<'a>(lines: &'a [u8], pseudonymize: Option<&Pseudonymize>) -> Vec<Event<'a>> {
    let mut events = Vec::new();
    parse_into([lines], pseudonymize, &mut events);
    events
}

/// `parse` of lines in pieces (each of whole lines) into `events` (cleared first), so that a delivery reuses one
/// vector for every batch.
pub fn parse_into<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    pseudonymize: Option<&Pseudonymize>,
    events: &mut Vec<Event<'a>>,
) {
    events.clear();
    for piece in pieces {
        parse_piece(piece, pseudonymize, events);
    }
}

/// Appends the events of `lines` to `events`.
fn parse_piece<'a>(lines: &'a [u8], pseudonymize: Option<&Pseudonymize>, events: &mut Vec<Event<'a>>) {
    let mut rest = lines;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        let json = line.trim_ascii_end();
        let head = fast_head(json).or_else(|| serde_json::from_slice::<Head>(json).ok());
        let parsed = head.is_some();
        let Head { id, kind, ts } = head.unwrap_or(Head { id: None, kind: None, ts: None });
        let mut event = Event {
            id: id.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            ts,
            json: Cow::Borrowed(json),
            length: line.len(),
        };
        if !parsed {
            // Not a record (the writer only spools records): sent as a JSON string rather than lost.
            let quoted = serde_json::to_vec(&String::from_utf8_lossy(json)).unwrap_or_default();
            event.json = Cow::Owned(quoted);
        } else if let Some(pseudonymize) = pseudonymize {
            if let Some(rewritten) = pseudonymized(json, pseudonymize) {
                event.json = Cow::Owned(rewritten);
            }
        }
        events.push(event);
    }
}

/// An emptied vector of events, its allocation kept, free of the lines it borrowed: a delivery keeps one between
/// batches (collecting a vector's own emptied iterator reuses its allocation).
pub fn recycle<'b>(mut events: Vec<Event<'_>>) -> Vec<Event<'b>> {
    events.clear();
    events.into_iter().map(|_| unreachable!("cleared just above")).collect()
}

/// The pseudonym of `value`: HMAC-SHA256 under the key, the first 16 bytes in hex.
pub fn pseudonym(key: &ring::hmac::Key, value: &str) -> String {
    let tag = ring::hmac::sign(key, value.as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

/// `json` with the configured string fields replaced by their pseudonyms, the order of the fields kept; `None`
/// when nothing changed.
fn pseudonymized(json: &[u8], pseudonymize: &Pseudonymize) -> Option<Vec<u8>> {
    let Fields(mut fields) = serde_json::from_slice(json).ok()?;
    let mut changed = false;
    for (name, value) in &mut fields {
        if !pseudonymize.fields.iter().any(|field| field.as_str() == name) {
            continue;
        }
        let Ok(text) = serde_json::from_str::<String>(value.get()) else { continue };
        if let Ok(replaced) = serde_json::value::to_raw_value(&pseudonym(&pseudonymize.key, &text)) {
            *value = replaced;
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    let mut out = Vec::with_capacity(json.len());
    out.push(b'{');
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).ok()?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

/// A JSON object's fields in their order, values untouched.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// The seconds of the last `ts` read, by its text up to the second: a batch's records mostly share a few seconds.
#[derive(Default)]
pub struct Seconds {
    text: [u8; 19],
    seconds: u64,
}

impl Seconds {
    /// Appends seconds since the epoch with milliseconds, from `ts` (now when it cannot be read). A `ts` as tollgate
    /// writes it (`2026-12-05T10:00:00.250Z`) within the second of the one before takes no parsing.
    fn append(&mut self, ts: Option<&str>, out: &mut Vec<u8>) {
        let mut buffer = itoa::Buffer::new();
        if let Some(ts) = ts.map(str::as_bytes).filter(|ts| {
            ts.len() == 24 && ts[19] == b'.' && ts[23] == b'Z' && ts[20..23].iter().all(u8::is_ascii_digit)
        }) {
            if ts[..19] != self.text {
                let Some(at) = std::str::from_utf8(&ts[..19])
                    .ok()
                    .and_then(|text| humantime::parse_rfc3339(&format!("{text}Z")).ok())
                else {
                    return epoch_seconds(None, out);
                };
                self.text.copy_from_slice(&ts[..19]);
                self.seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            }
            out.extend_from_slice(buffer.format(self.seconds).as_bytes());
            out.push(b'.');
            out.extend_from_slice(&ts[20..23]);
            return;
        }
        epoch_seconds(ts, out);
    }
}

/// Appends seconds since the epoch with milliseconds, from `ts` (now when it cannot be read).
fn epoch_seconds(ts: Option<&str>, out: &mut Vec<u8>) {
    let at = ts.and_then(|ts| humantime::parse_rfc3339(ts).ok()).unwrap_or_else(SystemTime::now);
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = write!(WriteBytes(out), "{}.{:03}", since.as_secs(), since.subsec_millis());
}

/// A sink's wire shape, appended event by event (a delivery formats a batch in pieces, each compressed or sent
/// while it is in the cache).
pub enum Shape {
    /// Splunk HEC events, one per line: `{"time":…,"sourcetype":"tollgate:audit",…,"event":RECORD}`; the fields
    /// after `time`, and the seconds of the last `ts` read.
    Hec { fixed: String, seconds: Seconds },
    /// NDJSON: one record per line.
    Ndjson,
    /// RFC 5424 messages, each framed by octet counting (`LENGTH SP MESSAGE`, RFC 5425 / 6587):
    /// `<110>1 TS HOST tollgate PID KIND [tollgate@32473 id="ID"] RECORD`; the parts of the header that do not
    /// change, and a buffer for the rest.
    Syslog { version: String, origin: String, element: String, head: String },
}

impl Shape {
    pub fn hec(index: Option<&str>, host: &str) -> Self {
        let mut fixed = String::from(",\"sourcetype\":\"tollgate:audit\",\"source\":\"tollgate\",\"host\":");
        fixed.push_str(&serde_json::to_string(host).unwrap_or_else(|_| "\"-\"".into()));
        if let Some(index) = index {
            fixed.push_str(",\"index\":");
            fixed.push_str(&serde_json::to_string(index).unwrap_or_default());
        }
        Shape::Hec { fixed, seconds: Seconds::default() }
    }

    pub fn syslog(host: &str, process: u32) -> Self {
        Shape::Syslog {
            version: format!("<{PRIORITY}>1 "),
            origin: format!(" {host} tollgate {process} "),
            element: format!(" [{SD_ID} id=\""),
            head: String::with_capacity(128),
        }
    }

    /// Formats the next events into `piece` (emptied first) until it holds `PIECE` bytes or they run out.
    pub fn piece<'e, 'a: 'e>(&mut self, events: &mut impl Iterator<Item = &'e Event<'a>>, piece: &mut Vec<u8>) {
        piece.clear();
        while piece.len() < PIECE {
            let Some(event) = events.next() else { break };
            self.append(event, piece);
        }
    }

    /// Appends `event` to `out`.
    pub fn append(&mut self, event: &Event, out: &mut Vec<u8>) {
        match self {
            Shape::Hec { fixed, seconds } => {
                out.extend_from_slice(b"{\"time\":");
                seconds.append(event.ts.as_deref(), out);
                out.extend_from_slice(fixed.as_bytes());
                out.extend_from_slice(b",\"event\":");
                out.extend_from_slice(&event.json);
                out.extend_from_slice(b"}\n");
            }
            Shape::Ndjson => {
                out.extend_from_slice(&event.json);
                out.push(b'\n');
            }
            Shape::Syslog { version, origin, element, head } => {
                head.clear();
                let ts = event.ts.as_deref().filter(|ts| is_header_token(ts)).unwrap_or("-");
                let kind =
                    Some(event.kind.as_ref()).filter(|kind| is_header_token(kind) && kind.len() <= 32).unwrap_or("-");
                for part in [version.as_str(), ts, origin.as_str(), kind, element.as_str()] {
                    head.push_str(part);
                }
                escape_param(&event.id, head);
                head.push_str("\"] ");
                out.extend_from_slice(itoa::Buffer::new().format(head.len() + event.json.len()).as_bytes());
                out.push(b' ');
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(&event.json);
            }
        }
    }
}

/// A batch is formatted (and compressed, or written) this much at a time: what a delivery touches stays in the
/// cache of a core it shares with the request path.
const PIECE: usize = 32 * 1024;

/// `events` in `shape`, compressed into `output` (replacing what it held) as one gzip member, `deflate` reset first
/// (one deflate state serves every batch): formatted into `plain` and compressed `PIECE` bytes at a time.
pub fn gzip(
    deflate: &mut Compress,
    shape: &mut Shape,
    events: &[Event],
    plain: &mut Vec<u8>,
    output: &mut Vec<u8>,
) -> Result<(), flate2::CompressError> {
    deflate.reset();
    output.clear();
    let mut events = events.iter().peekable();
    loop {
        shape.piece(&mut events, plain);
        let last = events.peek().is_none();
        compress(deflate, plain, output, last)?;
        if last {
            return Ok(());
        }
    }
}

/// Compresses all of `input` onto the end of `output`, ending the gzip member when `finish`.
fn compress(
    deflate: &mut Compress,
    input: &[u8],
    output: &mut Vec<u8>,
    finish: bool,
) -> Result<(), flate2::CompressError> {
    let flush = if finish { FlushCompress::Finish } else { FlushCompress::None };
    let first = deflate.total_in();
    loop {
        // Audit records compress about tenfold: a quarter of the input is room enough, most of the time.
        if output.capacity() - output.len() < input.len() / 4 + 64 {
            output.reserve((input.len() / 4 + 64).max(output.len()));
        }
        let consumed = (deflate.total_in() - first) as usize;
        match deflate.compress_vec(&input[consumed..], output, flush)? {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError if !finish && deflate.total_in() - first == input.len() as u64 => {
                return Ok(())
            }
            Status::Ok | Status::BufError => output.reserve(output.len().max(4096)),
        }
    }
}

/// Syslog facility 13 (log audit), severity 6 (informational).
const PRIORITY: u8 = 13 * 8 + 6;
/// The structured data element carrying the record id; 32473 is the enterprise number RFC 5612 reserves for
/// documentation and examples.
pub const SD_ID: &str = "tollgate@32473";

/// A header field: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII).
fn is_header_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| (33..=126).contains(&byte))
}

/// An SD-PARAM value with `"`, `\` and `]` escaped.
fn escape_param(value: &str, out: &mut String) {
    if !value.bytes().any(|byte| matches!(byte, b'"' | b'\\' | b']')) {
        out.push_str(value);
        return;
    }
    for character in value.chars() {
        if matches!(character, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(character);
    }
}

/// The host name for the syslog header and the HEC `host` field: the kernel's, cut to 255 printable characters.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

struct WriteBytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for WriteBytes<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::PseudonymField;

    const LINES: &[u8] = b"{\"ts\":\"2026-12-05T10:00:00.250Z\",\"id\":\"r1\",\"kind\":\"request\",\"client\":\"10.0.0.7\",\"user\":\"alice\",\"hash\":\"ab\"}\n{\"ts\":\"2026-12-05T10:00:01.000Z\",\"id\":\"r\\\"2]\",\"kind\":\"connect\",\"client\":\"10.0.0.8\",\"user\":null}\n";

    fn key() -> Pseudonymize {
        Pseudonymize {
            fields: vec![PseudonymField::User, PseudonymField::Client],
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef"),
            key_fingerprint: [0; 32],
        }
    }

    #[test]
    fn records_are_read_back_and_pseudonymised_in_place() {
        let events = parse(LINES, None);
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].id.as_ref(), events[0].kind.as_ref()), ("r1", "request"));
        assert_eq!(events.iter().map(|e| e.length).sum::<usize>(), LINES.len());

        let events = parse(LINES, Some(&key()));
        let first = std::str::from_utf8(&events[0].json).unwrap();
        let alice = pseudonym(&key().key, "alice");
        assert_eq!(alice.len(), 32);
        let expected = format!(
            "{{\"ts\":\"2026-12-05T10:00:00.250Z\",\"id\":\"r1\",\"kind\":\"request\",\"client\":\"{}\",\"user\":\"{alice}\",\"hash\":\"ab\"}}",
            pseudonym(&key().key, "10.0.0.7")
        );
        assert_eq!(first, expected, "the fields replaced, their order and the rest kept");
        let second: serde_json::Value = serde_json::from_slice(&events[1].json).unwrap();
        assert_eq!(second["user"], serde_json::Value::Null, "null stays null");
        assert_ne!(pseudonym(&key().key, "alice"), pseudonym(&key().key, "bob"));
    }

    #[test]
    fn the_fast_head_reads_what_the_parser_reads() {
        for line in LINES.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            let parsed = serde_json::from_slice::<Head>(line).unwrap();
            match fast_head(line) {
                Some(fast) => assert_eq!((fast.id, fast.kind, fast.ts), (parsed.id, parsed.kind, parsed.ts)),
                None => assert!(line.contains(&b'\\'), "only a line with an escape is left to the parser"),
            }
        }
        assert!(fast_head(br#"{"ts":"t","id":"a","kind":"k"}"#).is_some());
        assert!(fast_head(br#"{"id":"a","ts":"t","kind":"k"}"#).is_none());
    }

    #[test]
    fn a_recycled_vector_keeps_its_allocation() {
        let events = parse(LINES, None);
        let capacity = events.capacity();
        assert!(capacity > 0);
        let recycled: Vec<Event<'static>> = recycle(events);
        assert_eq!((recycled.len(), recycled.capacity()), (0, capacity));
    }

    #[test]
    fn epoch_seconds_within_a_second_take_no_parsing_and_read_as_the_parser_does() {
        let mut seconds = Seconds::default();
        let tss = [
            "2026-12-05T10:00:00.250Z",
            "2026-12-05T10:00:00.999Z",
            "2026-12-05T10:00:01.000Z",
            "1970-01-01T00:00:00.001Z",
            "2026-12-05T10:00:01.5Z",
            "2026-12-05T10:00:01.500+01:00",
            "2026-12-05T10:00:01.5x0Z",
        ];
        for ts in tss {
            let (mut fast, mut parsed) = (Vec::new(), Vec::new());
            seconds.append(Some(ts), &mut fast);
            epoch_seconds(Some(ts), &mut parsed);
            if ts.contains('x') {
                assert!(String::from_utf8(fast).unwrap().contains('.'), "now, for what cannot be read");
            } else {
                assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(parsed).unwrap(), "{ts}");
            }
        }
        let mut out = Vec::new();
        seconds.append(Some("2026-12-05T10:00:00.250Z"), &mut out);
        assert_eq!(out, b"1796464800.250");
    }

    #[test]
    fn gzip_with_a_kept_deflate_state_gives_whole_members_for_every_batch() {
        use std::io::Read as _;
        let mut deflate = Compress::new_gzip(flate2::Compression::fast(), 15);
        let (mut plain, mut output) = (Vec::new(), Vec::new());
        // A first batch of many pieces whose output outgrows the room reserved (hashes compress little), then
        // small ones.
        let noise: String =
            (0..20_000u32).map(|n| format!("{{\"id\":\"{:x}\"}}\n", n.wrapping_mul(2_654_435_761))).collect();
        let batches = [noise.into_bytes(), b"{\"id\":\"a\"}\n".repeat(1000), b"{\"id\":\"b\"}\n".to_vec(), Vec::new()];
        for batch in &batches {
            let events = parse(batch, None);
            gzip(&mut deflate, &mut Shape::Ndjson, &events, &mut plain, &mut output).unwrap();
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(output.as_slice()).read_to_end(&mut decoded).unwrap();
            assert!(decoded == *batch, "a batch of {} bytes comes back whole", batch.len());
        }
    }

    #[test]
    fn wire_shapes() {
        let events = parse(LINES, None);
        let mut out = Vec::new();
        Shape::hec(Some("audit"), "gw1").append(&events[0], &mut out);
        let event: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(event["time"].as_f64(), Some(1_796_464_800.25));
        assert_eq!(event["sourcetype"], "tollgate:audit");
        assert_eq!(event["index"], "audit");
        assert_eq!(event["event"]["id"], "r1");

        out.clear();
        let mut syslog = Shape::syslog("gw1", 42);
        for event in &events {
            syslog.append(event, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let (length, rest) = text.split_once(' ').unwrap();
        let first = &rest[..length.parse::<usize>().unwrap()];
        assert!(
            first.starts_with("<110>1 2026-12-05T10:00:00.250Z gw1 tollgate 42 request [tollgate@32473 id=\"r1\"] {")
        );
        let second = &rest[first.len()..];
        assert!(second.contains("[tollgate@32473 id=\"r\\\"2\\]\"]"), "{second}");
    }
}
