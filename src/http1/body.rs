//! Message bodies relayed as they arrive: by length, chunk by chunk (verbatim, with the chunk structure checked
//! so the end is found exactly), or until the upstream closes. Nothing is buffered beyond one read. A response
//! body's last byte may be held back (`relay_holding_end`), for the caller to send once the request is recorded.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Response bodies only: until the upstream closes the connection.
    UntilClose,
}

/// Which side of a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error("writing: {0}")]
    Write(std::io::Error),
    #[error("connection closed before the body ended")]
    Truncated,
    #[error("malformed chunked body")]
    BadChunk,
}

/// When the whole body is already in `buf`, moves it to the end of `out` (so head and body leave in one
/// write) and returns `Framing::Empty`; otherwise returns `framing` unchanged.
pub fn append_if_complete(framing: Framing, buf: &mut BytesMut, out: &mut Vec<u8>) -> Framing {
    match framing {
        Framing::Length(n) if buf.len() as u64 >= n => {
            let n = n as usize;
            out.extend_from_slice(&buf[..n]);
            buf.advance(n);
            Framing::Empty
        }
        other => other,
    }
}

/// Size of one read while relaying.
const READ_SIZE: usize = 64 * 1024;

/// Relays one body from `buf` (bytes already read) and `from` to `to`; returns the body bytes relayed.
/// Bytes after the body stay in `buf`.
pub async fn relay<R, W>(framing: Framing, buf: &mut BytesMut, from: &mut R, to: &mut W) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    relay_holding_end(framing, buf, from, to, false).await.map(|(relayed, _)| relayed)
}

/// Like `relay`, but with `hold` a body delimited by length or chunks is relayed but for its last byte, which is
/// returned for the caller to send: the peer cannot take the body for complete before it has it. (A body that
/// ends when the upstream closes is whole only when the connection closes; nothing is held.) The byte is counted.
pub async fn relay_holding_end<R, W>(
    framing: Framing,
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    hold: bool,
) -> Result<(u64, Option<u8>), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunked = ChunkedScanner::default();
    let mut remaining = match framing {
        Framing::Empty => {
            to.flush().await.map_err(RelayError::Write)?;
            return Ok((0, None));
        }
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    let mut total = 0;
    loop {
        if !buf.is_empty() {
            let (take, done) = match framing {
                Framing::Chunked => chunked.advance(buf)?,
                Framing::Length(_) => {
                    let take = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    remaining -= take as u64;
                    (take, remaining == 0)
                }
                Framing::Empty | Framing::UntilClose => (buf.len(), false),
            };
            let held = (done && hold && take > 0).then(|| buf[take - 1]);
            to.write_all(&buf[..take - usize::from(held.is_some())]).await.map_err(RelayError::Write)?;
            buf.advance(take);
            total += take as u64;
            if done {
                to.flush().await.map_err(RelayError::Write)?;
                return Ok((total, held));
            }
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        if from.read_buf(buf).await.map_err(RelayError::Read)? == 0 {
            to.flush().await.map_err(RelayError::Write)?;
            return match framing {
                Framing::UntilClose => Ok((total, None)),
                _ => Err(RelayError::Truncated),
            };
        }
    }
}

/// Walks a chunked body without changing it, to know where it ends.
#[derive(Debug, Default)]
struct ChunkedScanner {
    state: ChunkState,
    line_len: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (hex size, optional extensions, CRLF).
    #[default]
    Size,
    SizeDigits(u64, bool),
    /// After the size digits: extensions up to CRLF.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section; `bool` is whether the current line is empty so far.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

impl ChunkedScanner {
    /// Consumes from `data`; returns how many bytes belong to the body and whether it ended.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), RelayError> {
        let mut i = 0;
        while i < data.len() {
            if let ChunkState::Data(left) = self.state {
                let take = (data.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                continue;
            }
            let byte = data[i];
            i += 1;
            self.line_len += 1;
            if self.line_len > MAX_LINE {
                return Err(RelayError::BadChunk);
            }
            self.state = match (self.state, byte) {
                (ChunkState::Size, b) => ChunkState::SizeDigits(hex_digit(b)?, true),
                (ChunkState::SizeDigits(n, _), b) if b.is_ascii_hexdigit() => {
                    let n = n.checked_mul(16).ok_or(RelayError::BadChunk)? + hex_digit(b)?;
                    if n > (1 << 60) {
                        return Err(RelayError::BadChunk);
                    }
                    ChunkState::SizeDigits(n, true)
                }
                (ChunkState::SizeDigits(n, _), b';' | b' ' | b'\t') => ChunkState::Extension(n),
                (ChunkState::SizeDigits(n, _), b'\r') | (ChunkState::Extension(n), b'\r') => ChunkState::SizeLf(n),
                (ChunkState::Extension(n), b) if b != b'\n' => ChunkState::Extension(n),
                (ChunkState::SizeLf(0), b'\n') => {
                    self.line_len = 0;
                    ChunkState::Trailer(true)
                }
                (ChunkState::SizeLf(n), b'\n') => {
                    self.line_len = 0;
                    ChunkState::Data(n)
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => {
                    self.line_len = 0;
                    ChunkState::Size
                }
                (ChunkState::Trailer(empty), b'\r') => ChunkState::TrailerLf(empty),
                (ChunkState::Trailer(_), b) if b != b'\n' => ChunkState::Trailer(false),
                (ChunkState::TrailerLf(true), b'\n') => ChunkState::Done,
                (ChunkState::TrailerLf(false), b'\n') => {
                    self.line_len = 0;
                    ChunkState::Trailer(true)
                }
                _ => return Err(RelayError::BadChunk),
            };
            if self.state == ChunkState::Done {
                return Ok((i, true));
            }
        }
        Ok((i, false))
    }
}

fn hex_digit(byte: u8) -> Result<u64, RelayError> {
    (byte as char).to_digit(16).map(u64::from).ok_or(RelayError::BadChunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn relay_text(framing: Framing, input: &str) -> (Result<u64, RelayError>, String, String) {
        let mut buf = BytesMut::from(input.as_bytes());
        let mut out = Vec::new();
        let result = relay(framing, &mut buf, &mut tokio::io::empty(), &mut out).await;
        (result, String::from_utf8(out).unwrap(), String::from_utf8(buf.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn chunked_bodies_pass_verbatim_and_stop_at_the_end() {
        let body = "5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (result, out, rest) = relay_text(Framing::Chunked, &format!("{body}GET next")).await;
        assert_eq!((result.unwrap() as usize, out.as_str(), rest.as_str()), (body.len(), body, "GET next"));
    }

    #[tokio::test]
    async fn bad_chunks_and_truncation_are_errors() {
        assert!(matches!(relay_text(Framing::Chunked, "zz\r\n").await.0, Err(RelayError::BadChunk)));
        assert!(matches!(relay_text(Framing::Chunked, "5\r\nhelloXX").await.0, Err(RelayError::BadChunk)));
        assert!(matches!(relay_text(Framing::Chunked, "5\r\nhel").await.0, Err(RelayError::Truncated)));
        assert!(matches!(relay_text(Framing::Length(10), "short").await.0, Err(RelayError::Truncated)));
        let (result, out, rest) = relay_text(Framing::Length(3), "abcdef").await;
        assert_eq!((result.unwrap(), out.as_str(), rest.as_str()), (3, "abc", "def"));
    }

    #[tokio::test]
    async fn the_last_byte_of_a_sized_or_chunked_body_can_be_held() {
        let chunked = "5\r\nhello\r\n0\r\n\r\n";
        for (framing, input, body) in
            [(Framing::Length(5), "hello", "hello"), (Framing::Chunked, &*format!("{chunked}NEXT"), chunked)]
        {
            let mut buf = BytesMut::from(input.as_bytes());
            let mut out = Vec::new();
            let relayed = relay_holding_end(framing, &mut buf, &mut tokio::io::empty(), &mut out, true).await.unwrap();
            assert_eq!(relayed, (body.len() as u64, Some(body.as_bytes()[body.len() - 1])), "{framing:?}");
            assert_eq!(out, body.as_bytes()[..body.len() - 1], "{framing:?}: all but the last byte");
        }
        // The end arriving in a later read: only the last byte is held, the bytes before went out.
        let mut upstream: &[u8] = b"lo";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let mut out = Vec::new();
        let relayed = relay_holding_end(Framing::Length(5), &mut buf, &mut upstream, &mut out, true).await.unwrap();
        assert_eq!((relayed, out.as_slice()), ((5, Some(b'o')), &b"hell"[..]));
        // A body that ends with the connection holds nothing.
        let mut buf = BytesMut::from(&b"all of it"[..]);
        let mut out = Vec::new();
        let relayed =
            relay_holding_end(Framing::UntilClose, &mut buf, &mut tokio::io::empty(), &mut out, true).await.unwrap();
        assert_eq!((relayed, out.as_slice()), ((9, None), &b"all of it"[..]));
    }
}
