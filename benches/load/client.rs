//! The client side: a connection (TCP or TLS) with a read buffer, and a small HTTP/1.1 response reader that can
//! also hand a body over piece by piece as it arrives.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::parameters::BULK_LENGTH;
use crate::route::TlsDial;
use crate::servers::header_has_token;

/// A response head: what the reader needs of it.
pub struct Head {
    pub status: u16,
    pub http_1_0: bool,
    /// `Connection: close` (or `Proxy-Connection: close`).
    pub close: bool,
    pub keep_alive: bool,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// tollgate's `x-tollgate-request-id` is present (every response tollgate makes itself carries it).
    pub tollgate_request_id: bool,
}

impl Head {
    fn parse(response: &httparse::Response) -> Head {
        let mut head = Head {
            status: response.code.unwrap_or(0),
            http_1_0: response.version == Some(0),
            close: false,
            keep_alive: false,
            content_length: None,
            chunked: false,
            tollgate_request_id: false,
        };
        for header in response.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length =
                    std::str::from_utf8(header.value).ok().and_then(|length| length.trim().parse().ok());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = header_has_token(header.value, "chunked");
            } else if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("proxy-connection") {
                head.close |= header_has_token(header.value, "close");
                head.keep_alive |= header_has_token(header.value, "keep-alive");
            } else if name.eq_ignore_ascii_case("x-tollgate-request-id") {
                head.tollgate_request_id = true;
            }
        }
        head
    }

    /// The connection stays open after this response (unless its body runs to the end of the stream).
    pub fn persistent(&self) -> bool {
        if self.http_1_0 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// How a response body ends, for reading it piece by piece as it arrives (`Connection::piece`).
pub enum Framing {
    /// `left` bytes to go in the current chunk (0: a chunk-size line is next); `crlf`: the CRLF that ends the
    /// previous chunk is still to read.
    Chunked {
        left: u64,
        crlf: bool,
    },
    Length(u64),
    /// Until the server closes.
    UntilClose,
    Done,
}

impl Framing {
    /// The framing `head` announces.
    pub fn of(head: &Head) -> Framing {
        if head.chunked {
            Framing::Chunked { left: 0, crlf: false }
        } else if let Some(length) = head.content_length {
            Framing::Length(length)
        } else {
            Framing::UntilClose
        }
    }
}

/// A response read to its end: its status, whether the connection stays open, how long its body was.
pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
    pub body_length: u64,
}

/// A client connection: plain TCP, or TLS to a TLS listener of the proxy.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.read(buffer).await,
            Stream::Tls(tls) => tls.read(buffer).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => tcp.write_all(bytes).await,
            Stream::Tls(tls) => {
                tls.write_all(bytes).await?;
                // rustls buffers the records; push them out now.
                tls.flush().await
            }
        }
    }

    /// Closes the write side (TLS: sends close_notify first).
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => tcp.shutdown().await,
            Stream::Tls(tls) => tls.shutdown().await,
        }
    }
}

/// A client connection with its read buffer: `buffer[start..end]` is read but not yet consumed.
pub struct Connection {
    stream: Stream,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes received so far.
    pub read_bytes: u64,
}

/// One request and its response on an open connection.
pub async fn exchange(connection: &mut Connection, request: &[u8]) -> io::Result<Response> {
    connection.send(request).await?;
    connection.response(false).await
}

/// The peer closed the connection (as opposed to a protocol error).
pub fn closed_by_peer(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

fn closed_early() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early")
}

impl Connection {
    /// Connects to `address`; with `tls`, makes the TLS handshake too.
    pub async fn open(address: SocketAddr, tls: Option<&TlsDial>, read_buffer: usize) -> io::Result<Connection> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let connection =
            Connection { stream: Stream::Tcp(tcp), buffer: vec![0; read_buffer], start: 0, end: 0, read_bytes: 0 };
        match tls {
            None => Ok(connection),
            Some(dial) => connection.start_tls(dial).await,
        }
    }

    /// The TLS handshake as a client over this TCP connection: to a TLS listener, to a TLS origin, or inside a
    /// CONNECT tunnel (interception).
    pub async fn start_tls(self, dial: &TlsDial) -> io::Result<Connection> {
        let Stream::Tcp(tcp) = self.stream else {
            return Err(io::Error::other("TLS inside a TLS connection is not supported"));
        };
        if self.start != self.end {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes before the TLS handshake"));
        }
        let tls = dial.connector.connect(dial.name.clone(), tcp).await?;
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            buffer: self.buffer,
            start: 0,
            end: 0,
            read_bytes: self.read_bytes,
        })
    }

    /// One read into the buffer from `at`; 0 at the end of the stream.
    pub async fn read_some(&mut self, at: usize) -> io::Result<usize> {
        let read = self.stream.read(&mut self.buffer[at..]).await?;
        self.read_bytes += read as u64;
        Ok(read)
    }

    /// Writes `bytes` (TLS: and flushes them).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes the write side (TLS: sends close_notify first).
    pub async fn close_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads more after what is buffered (moving it to the front when the buffer is full).
    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buffer.len() {
            if self.start == 0 {
                return Err(io::Error::other("response head larger than the buffer"));
            }
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.read_some(self.end).await?;
        if read == 0 {
            return Err(closed_early());
        }
        self.end += read;
        Ok(())
    }

    /// Reads a response head.
    pub async fn head(&mut self) -> io::Result<Head> {
        loop {
            if self.end > self.start {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buffer[self.start..self.end]) {
                    Ok(httparse::Status::Complete(length)) => {
                        let head = Head::parse(&response);
                        self.start += length;
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
                }
            }
            self.fill().await?;
        }
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            let window = &self.buffer[self.start..self.end];
            if let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") {
                let line = String::from_utf8_lossy(&window[..end]).into_owned();
                self.start += end + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads and discards `length` body bytes; reads straight into the whole buffer.
    async fn skip(&mut self, mut length: u64) -> io::Result<()> {
        let taken = ((self.end - self.start) as u64).min(length);
        self.start += taken as usize;
        length -= taken;
        while length > 0 {
            let read = self.read_some(0).await?;
            if read == 0 {
                return Err(closed_early());
            }
            if read as u64 > length {
                self.start = length as usize;
                self.end = read;
                length = 0;
            } else {
                self.start = 0;
                self.end = 0;
                length -= read as u64;
            }
        }
        Ok(())
    }

    /// The next piece of a body as it arrives: what is buffered, else what one read brings (within the framing);
    /// `None` after the last byte (and, when chunked, the trailers).
    pub async fn piece(&mut self, framing: &mut Framing) -> io::Result<Option<Vec<u8>>> {
        loop {
            let left = match framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    *framing = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => left,
                Framing::Chunked { crlf, .. } if *crlf => {
                    if !self.line().await?.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk end"));
                    }
                    *crlf = false;
                    continue;
                }
                Framing::Chunked { left: 0, .. } => {
                    let line = self.line().await?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
                    if size == 0 {
                        // Trailers, up to the empty line.
                        for _ in 0..100 {
                            if self.line().await?.is_empty() {
                                *framing = Framing::Done;
                                return Ok(None);
                            }
                        }
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many trailers"));
                    }
                    *framing = Framing::Chunked { left: size, crlf: false };
                    continue;
                }
                Framing::Chunked { left, .. } => left,
                Framing::UntilClose => {
                    if self.start == self.end {
                        match self.fill().await {
                            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                                *framing = Framing::Done;
                                return Ok(None);
                            }
                            filled => filled?,
                        }
                    }
                    let piece = self.buffer[self.start..self.end].to_vec();
                    self.start = self.end;
                    return Ok(Some(piece));
                }
            };
            if self.start == self.end {
                self.fill().await?;
            }
            let taken = ((self.end - self.start) as u64).min(*left) as usize;
            let piece = self.buffer[self.start..self.start + taken].to_vec();
            self.start += taken;
            *left -= taken as u64;
            if let Framing::Chunked { left: 0, crlf } = framing {
                // Read with the next piece, so that a piece is never held back waiting for its CRLF.
                *crlf = true;
            }
            return Ok(Some(piece));
        }
    }

    /// A chunked body, read and counted.
    async fn dechunk(&mut self) -> io::Result<u64> {
        let mut framing = Framing::Chunked { left: 0, crlf: false };
        let mut total = 0;
        for _ in 0..10_000_000 {
            match self.piece(&mut framing).await? {
                Some(piece) => total += piece.len() as u64,
                None => return Ok(total),
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "too many chunks"))
    }

    /// A body without framing: read until the server closes, and counted.
    async fn drain_until_close(&mut self) -> io::Result<u64> {
        let mut total = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        while total < 4 * BULK_LENGTH {
            let read = self.read_some(0).await?;
            if read == 0 {
                return Ok(total);
            }
            total += read as u64;
        }
        Err(io::Error::other("body without length too long"))
    }

    /// Reads one response; `connect`: the answer to a CONNECT (a 2xx has no body).
    pub async fn response(&mut self, connect: bool) -> io::Result<Response> {
        let mut head = self.head().await?;
        let mut interim = 0;
        while (100..200).contains(&head.status) && head.status != 101 {
            interim += 1;
            if interim > 5 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too many 1xx"));
            }
            head = self.head().await?;
        }
        let mut keep_alive = head.persistent();
        let body_length = if (connect && (200..300).contains(&head.status)) || head.status == 204 || head.status == 304
        {
            0
        } else if head.chunked {
            self.dechunk().await?
        } else if let Some(length) = head.content_length {
            self.skip(length).await?;
            length
        } else {
            keep_alive = false;
            self.drain_until_close().await?
        };
        Ok(Response { status: head.status, keep_alive, body_length })
    }
}
