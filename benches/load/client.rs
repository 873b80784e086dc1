//! The client side: a connection (TCP or TLS) with a read buffer, and a small HTTP/1.1 response reader that can
//! also hand a body over piece by piece as it arrives.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::parameters::BULK_LENGTH;
use crate::route::TlsDial;
use crate::servers::header_has_token;

pub struct Head {
    pub status: u16,
    pub http10: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub length: Option<u64>,
    pub chunked: bool,
}

pub fn parse_head(r: &httparse::Response) -> Head {
    let mut h = Head {
        status: r.code.unwrap_or(0),
        http10: r.version == Some(0),
        close: false,
        keep_alive: false,
        length: None,
        chunked: false,
    };
    for hd in r.headers.iter() {
        let name = hd.name;
        if name.eq_ignore_ascii_case("content-length") {
            h.length = std::str::from_utf8(hd.value).ok().and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = header_has_token(hd.value, "chunked");
        } else if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("proxy-connection") {
            h.close |= header_has_token(hd.value, "close");
            h.keep_alive |= header_has_token(hd.value, "keep-alive");
        }
    }
    h
}

impl Head {
    /// The connection stays open after this response (unless its body runs to the end of the stream).
    pub fn persistent(&self) -> bool {
        if self.http10 {
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
    Eof,
    Done,
}

impl Framing {
    pub fn of(h: &Head) -> Framing {
        if h.chunked {
            Framing::Chunked { left: 0, crlf: false }
        } else if let Some(n) = h.length {
            Framing::Length(n)
        } else {
            Framing::Eof
        }
    }
}

pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
    pub body: u64,
}

/// A client connection: plain TCP, or TLS to a TLS listener of the proxy.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                // rustls buffers the records; push them out now.
                s.flush().await
            }
        }
    }

    /// Closes the write side (TLS: sends close_notify first).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

pub struct Connection {
    pub s: Stream,
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    /// Bytes received so far.
    pub read_bytes: u64,
}

/// One request and its response on an open connection.
pub async fn exchange(c: &mut Connection, req: &[u8]) -> io::Result<Response> {
    c.send(req).await?;
    c.response(false).await
}

/// The peer closed the connection (as opposed to a protocol error).
pub fn closed_by_peer(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

pub fn closed_early() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early")
}

impl Connection {
    /// Connects to `addr`; with `tls`, makes the TLS handshake too.
    pub async fn open(addr: SocketAddr, tls: Option<&TlsDial>, buf: usize) -> io::Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let c = Connection { s: Stream::Tcp(tcp), buf: vec![0; buf], start: 0, end: 0, read_bytes: 0 };
        match tls {
            None => Ok(c),
            Some(d) => c.start_tls(d).await,
        }
    }

    /// The TLS handshake as a client over this TCP connection: to a TLS listener, to a TLS origin, or inside a
    /// CONNECT tunnel (interception).
    pub async fn start_tls(self, d: &TlsDial) -> io::Result<Connection> {
        let Stream::Tcp(tcp) = self.s else {
            return Err(io::Error::other("TLS inside a TLS connection is not supported"));
        };
        if self.start != self.end {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes before the TLS handshake"));
        }
        let tls = d.connector.connect(d.name.clone(), tcp).await?;
        Ok(Connection { s: Stream::Tls(Box::new(tls)), buf: self.buf, start: 0, end: 0, read_bytes: self.read_bytes })
    }

    pub async fn read_some(&mut self, at: usize) -> io::Result<usize> {
        let n = self.s.read(&mut self.buf[at..]).await?;
        self.read_bytes += n as u64;
        Ok(n)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes).await
    }

    pub async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::other("response head larger than the buffer"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.read_some(self.end).await?;
        if n == 0 {
            return Err(closed_early());
        }
        self.end += n;
        Ok(())
    }

    pub async fn head(&mut self) -> io::Result<Head> {
        loop {
            if self.end > self.start {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let h = parse_head(&r);
                        self.start += n;
                        return Ok(h);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            self.fill().await?;
        }
    }

    pub async fn line(&mut self) -> io::Result<String> {
        loop {
            let window = &self.buf[self.start..self.end];
            if let Some(i) = window.windows(2).position(|w| w == b"\r\n") {
                let s = String::from_utf8_lossy(&window[..i]).into_owned();
                self.start += i + 2;
                return Ok(s);
            }
            self.fill().await?;
        }
    }

    /// Reads and discards `n` body bytes; reads straight into the whole buffer.
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let taken = ((self.end - self.start) as u64).min(n);
        self.start += taken as usize;
        n -= taken;
        while n > 0 {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Err(closed_early());
            }
            if got as u64 > n {
                self.start = n as usize;
                self.end = got;
                n = 0;
            } else {
                self.start = 0;
                self.end = 0;
                n -= got as u64;
            }
        }
        Ok(())
    }

    /// The next piece of a body as it arrives: what is buffered, else what one read brings (within the framing);
    /// `None` after the last byte (and, when chunked, the trailers).
    pub async fn piece(&mut self, f: &mut Framing) -> io::Result<Option<Vec<u8>>> {
        loop {
            let left = match f {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    *f = Framing::Done;
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
                                *f = Framing::Done;
                                return Ok(None);
                            }
                        }
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many trailers"));
                    }
                    *f = Framing::Chunked { left: size, crlf: false };
                    continue;
                }
                Framing::Chunked { left, .. } => left,
                Framing::Eof => {
                    if self.start == self.end {
                        match self.fill().await {
                            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                                *f = Framing::Done;
                                return Ok(None);
                            }
                            r => r?,
                        }
                    }
                    let piece = self.buf[self.start..self.end].to_vec();
                    self.start = self.end;
                    return Ok(Some(piece));
                }
            };
            if self.start == self.end {
                self.fill().await?;
            }
            let taken = ((self.end - self.start) as u64).min(*left) as usize;
            let piece = self.buf[self.start..self.start + taken].to_vec();
            self.start += taken;
            *left -= taken as u64;
            if let Framing::Chunked { left: 0, crlf } = f {
                // Read with the next piece, so that a piece is never held back waiting for its CRLF.
                *crlf = true;
            }
            return Ok(Some(piece));
        }
    }

    /// A chunked body, read and counted.
    pub async fn dechunk(&mut self) -> io::Result<u64> {
        let mut f = Framing::Chunked { left: 0, crlf: false };
        let mut total = 0;
        for _ in 0..10_000_000 {
            match self.piece(&mut f).await? {
                Some(p) => total += p.len() as u64,
                None => return Ok(total),
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "too many chunks"))
    }

    pub async fn drain_to_eof(&mut self) -> io::Result<u64> {
        let mut total = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        while total < 4 * BULK_LENGTH {
            let got = self.read_some(0).await?;
            if got == 0 {
                return Ok(total);
            }
            total += got as u64;
        }
        Err(io::Error::other("body without length too long"))
    }

    /// Reads one response; `connect`: the answer to a CONNECT (a 2xx has no body).
    pub async fn response(&mut self, connect: bool) -> io::Result<Response> {
        let mut h = self.head().await?;
        let mut interim = 0;
        while (100..200).contains(&h.status) && h.status != 101 {
            interim += 1;
            if interim > 5 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too many 1xx"));
            }
            h = self.head().await?;
        }
        let mut keep_alive = h.persistent();
        let body = if (connect && (200..300).contains(&h.status)) || h.status == 204 || h.status == 304 {
            0
        } else if h.chunked {
            self.dechunk().await?
        } else if let Some(n) = h.length {
            self.skip(n).await?;
            n
        } else {
            keep_alive = false;
            self.drain_to_eof().await?
        };
        Ok(Response { status: h.status, keep_alive, body })
    }
}
