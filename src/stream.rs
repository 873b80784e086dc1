//! One connection end, plain TCP or TLS over TCP, so the pipeline is written once for both: the client side
//! of a TLS listener, and the upstream side toward an `https://` origin or parent proxy. `Rewind` puts bytes
//! already read back in front of a stream, for the code that takes over a connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A byte stream to a client or an upstream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// A client of a TLS listener.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// An upstream reached over TLS.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::TlsServer(tls) => tls.get_ref().0,
            Stream::TlsClient(tls) => tls.get_ref().0,
        }
    }

    /// The verified client certificate of a TLS listener's client (leaf first), if it sent one.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Stream::TlsServer(tls) => tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()),
            Stream::Tcp(_) | Stream::TlsClient(_) => None,
        }
    }

    /// Whether an idle pooled connection is still usable: a plain socket must have nothing to read (EOF or
    /// stray bytes mean the upstream is done with it). A TLS connection may hold session tickets and is
    /// trusted until a request on it fails, which is then retried.
    pub fn is_idle_and_open(&self) -> bool {
        match self {
            Stream::Tcp(tcp) => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::TlsServer(_) | Stream::TlsClient(_) => true,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A stream with the bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<S> {
    pending: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(pending: BytesMut, inner: S) -> Self {
        Rewind { pending, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            let take = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..take]);
            this.pending.advance(take);
            if this.pending.is_empty() {
                // Nothing kept once it has been read again.
                this.pending = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
