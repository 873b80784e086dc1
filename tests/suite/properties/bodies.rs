//! Message bodies (`http1::body`): a chunked body is relayed byte-exact and ends exactly where a naive reading of
//! RFC 9112 §7.1 says it ends, or is refused where that reading refuses it, however the bytes arrive; a body by
//! length relays exactly its length.

use std::sync::LazyLock;

use bytes::BytesMut;
use proptest::prelude::*;
use regex::bytes::Regex;
use tollgate::http1::body::{append_if_complete, relay, relay_holding_end, Framing, RelayError};

use super::{block_on, config, corpus, cuts, Pieces};

/// The scanner's longest chunk-size or trailer line, CRLF included.
const MAX_LINE: usize = 4096;

/// Where a chunked body ends, by the reference or by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The body is the first this many bytes.
    Ends(u64),
    /// More bytes are needed: the peer closed too early.
    Incomplete,
    /// Not a chunked body.
    Bad,
}

/// A whole line and where the next begins, or the start of a line cut short.
type Line<'a> = Result<(&'a [u8], usize), &'a [u8]>;

/// One line from `at`: `Some(Ok((content, next)))` when whole, `Some(Err(content))` when cut before its CR,
/// `None` when a line ending is malformed (bare LF, CR not before LF). A line cut between its CR and LF is whole
/// but for the LF: `Ok((content, data.len() + 1))`.
fn line(data: &[u8], at: usize) -> Option<Line<'_>> {
    match data[at..].iter().position(|&b| b == b'\r' || b == b'\n') {
        None => Some(Err(&data[at..])),
        Some(offset) => {
            let end = at + offset;
            match (data[end], data.get(end + 1)) {
                (b'\n', _) => None,
                (_, None) => Some(Ok((&data[at..end], end + 2))),
                (_, Some(b'\n')) => Some(Ok((&data[at..end], end + 2))),
                (_, Some(_)) => None,
            }
        }
    }
}

/// A naive reading of a chunked body, line by line.
fn reference(data: &[u8]) -> Verdict {
    static WHOLE_SIZE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?s-u)^([0-9a-fA-F]+)(?:[; \t][^\r\n]*)?$").expect("regex"));
    static PARTIAL_SIZE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?s-u)^(?:([0-9a-fA-F]+)(?:[; \t][^\r\n]*)?)?$").expect("regex"));
    let (whole_size, partial_size) = (&*WHOLE_SIZE, &*PARTIAL_SIZE);
    let too_big = |digits: &[u8]| {
        let mut value: u128 = 0;
        for &digit in digits {
            value = value * 16 + u128::from((digit as char).to_digit(16).expect("hex"));
            if value > 1 << 60 {
                return None;
            }
        }
        Some(value as u64)
    };
    let mut at = 0;
    loop {
        let size = match line(data, at) {
            None => return Verdict::Bad,
            Some(Err(content)) => {
                let digits_fit = partial_size
                    .captures(content)
                    .is_some_and(|c| c.get(1).is_none_or(|digits| too_big(digits.as_bytes()).is_some()));
                return if data.len() - at > MAX_LINE || !digits_fit { Verdict::Bad } else { Verdict::Incomplete };
            }
            Some(Ok((content, next))) => {
                let Some(captures) = whole_size.captures(content) else { return Verdict::Bad };
                let Some(size) = too_big(&captures[1]) else { return Verdict::Bad };
                if next.min(data.len()) - at > MAX_LINE {
                    return Verdict::Bad;
                }
                if next > data.len() {
                    return Verdict::Incomplete;
                }
                at = next;
                size
            }
        };
        if size == 0 {
            break;
        }
        let size = size as usize;
        let rest = &data[at.min(data.len())..];
        if rest.len() < size.saturating_add(2) {
            let bad_cr = rest.len() > size && rest[size] != b'\r';
            return if bad_cr { Verdict::Bad } else { Verdict::Incomplete };
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Verdict::Bad;
        }
        at += size + 2;
    }
    loop {
        match line(data, at) {
            None => return Verdict::Bad,
            Some(Err(_)) => return if data.len() - at > MAX_LINE { Verdict::Bad } else { Verdict::Incomplete },
            Some(Ok((content, next))) => {
                if next.min(data.len()) - at > MAX_LINE {
                    return Verdict::Bad;
                }
                if next > data.len() {
                    return Verdict::Incomplete;
                }
                if content.is_empty() {
                    return Verdict::Ends(next as u64);
                }
                at = next;
            }
        }
    }
}

/// Relays `data` as a chunked body arriving in pieces cut at `cuts`; the verdict, what went out, what was held.
fn relayed(data: &[u8], cuts: &[usize], hold: bool) -> (Verdict, Vec<u8>, Option<u8>) {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let result = block_on(relay_holding_end(Framing::Chunked, &mut buf, &mut Pieces::new(data, cuts), &mut out, hold));
    match result {
        Ok((length, held)) => (Verdict::Ends(length), out, held),
        Err(RelayError::Truncated) => (Verdict::Incomplete, out, None),
        Err(RelayError::BadChunk) => (Verdict::Bad, out, None),
        Err(other) => panic!("an in-memory relay failed: {other}"),
    }
}

/// The relay agrees with the reference, relays a prefix of the input (all of the body when it ends, with the
/// held byte last), and gives the same result however the input is split.
fn check_chunked(data: &[u8], splits: &[usize], hold: bool) -> Result<(), TestCaseError> {
    let expected = reference(data);
    let (verdict, out, held) = relayed(data, &[], hold);
    prop_assert_eq!(verdict, expected, "{:?}", String::from_utf8_lossy(data));
    let mut sent = out.clone();
    sent.extend(held);
    prop_assert!(data.starts_with(&sent));
    match verdict {
        Verdict::Ends(length) => {
            prop_assert_eq!(sent.len() as u64, length);
            prop_assert_eq!(held.is_some(), hold);
        }
        Verdict::Incomplete => prop_assert_eq!(sent.len(), data.len()),
        Verdict::Bad => {}
    }
    let (split_verdict, split_out, split_held) = relayed(data, &cuts(data.len(), splits), hold);
    prop_assert_eq!(split_verdict, verdict);
    prop_assert_eq!(split_held, held);
    if verdict != Verdict::Bad {
        // A refused body stops wherever the refusing byte arrived; a good one is relayed whole.
        prop_assert_eq!(split_out, out);
    }
    Ok(())
}

/// A valid chunked body: chunks with optional extensions and any-case hex sizes with leading zeros, the last
/// chunk, trailers.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..80),
        0usize..3,
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![";a=b", "; x", ";\"q\"", " ", "\t;y", ";ä"])),
    );
    (
        prop::collection::vec(chunk, 0..6),
        0usize..3,
        prop::option::of(Just(";last")),
        prop::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
    )
        .prop_map(|(chunks, last_zeros, last_extension, trailers)| {
            let mut body = Vec::new();
            for (data, zeros, upper, extension) in chunks {
                let size = if upper { format!("{:X}", data.len()) } else { format!("{:x}", data.len()) };
                body.extend_from_slice(
                    format!("{}{size}{}\r\n", "0".repeat(zeros), extension.unwrap_or("")).as_bytes(),
                );
                body.extend_from_slice(&data);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(
                format!("{}0{}\r\n", "0".repeat(last_zeros), last_extension.unwrap_or("")).as_bytes(),
            );
            for trailer in trailers {
                body.extend_from_slice(format!("{trailer}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// A valid chunked body with bytes after it is relayed to its last byte and no further, however split.
    #[test]
    fn valid_chunked_bodies_end_exactly(
        body in chunked_body(),
        after in prop::collection::vec(any::<u8>(), 0..30),
        splits in prop::collection::vec(any::<usize>(), 0..10),
        hold in any::<bool>(),
    ) {
        prop_assert_eq!(reference(&body), Verdict::Ends(body.len() as u64));
        let mut data = body.clone();
        data.extend_from_slice(&after);
        check_chunked(&data, &splits, hold)?;
        let (_, out, held) = relayed(&data, &cuts(data.len(), &splits), hold);
        let mut sent = out;
        sent.extend(held);
        prop_assert_eq!(sent, body);
    }

    /// Valid chunked bodies with bytes changed, removed or inserted, and arbitrary bytes: the relay and the
    /// reference agree on where the body ends, whether it is cut short, or that it is not chunked.
    #[test]
    fn damaged_chunked_bodies_agree_with_the_reference(
        body in chunked_body(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..5),
        noise in prop::collection::vec(any::<u8>(), 0..100),
        use_noise in any::<bool>(),
        splits in prop::collection::vec(any::<usize>(), 0..10),
        hold in any::<bool>(),
    ) {
        let data = if use_noise {
            noise
        } else {
            let mut data = body;
            for (at, byte, kind) in edits {
                let at = at.index(data.len());
                match kind {
                    0 => data[at] = *b"\r\n0aF; \t:".get(usize::from(byte) % 12).unwrap_or(&byte),
                    1 => { data.remove(at); }
                    _ => data.insert(at, *b"\r\n0aF; \t:".get(usize::from(byte) % 12).unwrap_or(&byte)),
                }
            }
            data
        };
        check_chunked(&data, &splits, hold)?;
    }

    /// A body by length is exactly that many bytes: the rest stays for the next message, a short one is cut.
    #[test]
    fn length_bodies_relay_exactly_their_length(
        data in prop::collection::vec(any::<u8>(), 0..300),
        length in 1u64..400,
        splits in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        let result = block_on(relay(Framing::Length(length), &mut buf, &mut Pieces::new(&data, &cuts(data.len(), &splits)), &mut out));
        if data.len() as u64 >= length {
            prop_assert_eq!(result.ok(), Some(length));
            prop_assert_eq!(&out[..], &data[..length as usize]);
            prop_assert!(data[length as usize..].starts_with(&buf));
        } else {
            prop_assert!(matches!(result, Err(RelayError::Truncated)));
            prop_assert_eq!(out, data.clone());
        }
        let mut buf = BytesMut::from(&data[..]);
        let mut head = b"head".to_vec();
        let framing = append_if_complete(Framing::Length(length), &mut buf, &mut head);
        if data.len() as u64 >= length {
            prop_assert_eq!(framing, Framing::Empty);
            prop_assert_eq!(&head[4..], &data[..length as usize]);
            prop_assert_eq!(&buf[..], &data[length as usize..]);
        } else {
            prop_assert_eq!(framing, Framing::Length(length));
            prop_assert_eq!(&buf[..], &data[..]);
        }
    }
}

/// The hand-picked chunked bodies, through the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("chunked") {
        for hold in [false, true] {
            check_chunked(&bytes, &[1, 3, 10, 40], hold).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
