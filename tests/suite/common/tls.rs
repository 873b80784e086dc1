//! TLS on both sides of the gateway: an in-test TLS origin (optionally demanding a client certificate) that
//! reports every connection it gets, and an in-process rustls client for TLS listeners and tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

use super::pki::{Authority, Leaf};
use super::{find, next_head, Response};

/// The rustls configs, shared with the load harness.
#[path = "../../support/tls.rs"]
mod shared;

pub use shared::{client_config, server_config};

/// What the TLS origin saw on one TCP connection.
#[derive(Debug)]
pub struct OriginConnection {
    /// Bytes available on the first read (0: the peer closed without sending anything).
    pub first_read: usize,
    /// The handshake's outcome: the client certificate presented (if any), or the error.
    pub handshake: Result<Option<CertificateDer<'static>>, String>,
}

/// An HTTPS origin on 127.0.0.1:0: answers each request with `200` and `tls origin saw PATH` (keep-alive).
pub struct TlsOrigin {
    pub address: SocketAddr,
    connections: Mutex<mpsc::UnboundedReceiver<OriginConnection>>,
}

impl TlsOrigin {
    /// Serves `leaf`; with `client_ca`, a client certificate signed by it is required.
    pub async fn start(leaf: &Leaf, client_ca: Option<&Authority>) -> Self {
        let config =
            server_config(leaf.chain(), leaf.private_key(), client_ca.map(Authority::der)).expect("origin config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS origin");
        let address = listener.local_addr().expect("TLS origin address");
        let (report, connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, report) = (acceptor.clone(), report.clone());
                tokio::spawn(async move {
                    let mut peek = [0u8; 1];
                    let first_read = stream.peek(&mut peek).await.unwrap_or(0);
                    if first_read == 0 {
                        let _ = report.send(OriginConnection { first_read, handshake: Err("closed".to_owned()) });
                        return;
                    }
                    match acceptor.accept(stream).await {
                        Ok(mut tls) => {
                            let certificate = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                            let _ = report.send(OriginConnection { first_read, handshake: Ok(certificate) });
                            serve_http(&mut tls).await;
                        }
                        Err(error) => {
                            let _ = report.send(OriginConnection { first_read, handshake: Err(error.to_string()) });
                        }
                    }
                });
            }
        });
        Self { address, connections: Mutex::new(connections) }
    }

    /// The report of the next connection the origin accepted (waits up to 20 s).
    pub async fn next_connection(&self) -> OriginConnection {
        let mut connections = self.connections.lock().await;
        tokio::time::timeout(Duration::from_secs(20), connections.recv())
            .await
            .expect("the TLS origin was connected to within 20s")
            .expect("TLS origin running")
    }
}

/// Answers requests (heads only, no request bodies) until the client closes.
async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = next_head(stream, &mut buf).await else { return };
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let close = head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"));
        let body = format!("tls origin saw {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-origin: tls\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || stream.flush().await.is_err() || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// The rustls server name for `name` (an IP literal gives an IP name: no SNI is sent).
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("server name")
}

/// A TLS client connection to `address` (a TLS listener).
pub async fn connect(
    address: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tokio_rustls::TlsConnector::from(config).connect(server_name(name), tcp).await
}

/// Writes `request` on `stream` and reads until the peer closes; a peer that closes without close_notify is
/// taken as the end. Errors when the connection failed before any response byte.
pub async fn request_until_closed<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
) -> Result<Response, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .map_err(|_| "no answer within 20s".to_owned())?;
        match read {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) if !received.is_empty() && error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error.to_string()),
        }
    }
    if received.is_empty() {
        return Err("closed without an answer".to_owned());
    }
    Ok(parse_response(&received))
}

/// Parses one complete response (head and everything after it as the body).
pub fn parse_response(bytes: &[u8]) -> Response {
    let end = find(bytes, b"\r\n\r\n").map(|e| e + 4).unwrap_or(bytes.len());
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Response { status, head, body: String::from_utf8_lossy(&bytes[end..]).into_owned() }
}

/// Connects to the TLS listener at `address` with `config` and sends `request` (which should say
/// `Connection: close`); the response once the gateway closed, or why there was none. When this returns Ok, the
/// request's audit record and metrics are in place.
pub async fn tls_exchange(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Result<Response, String> {
    let mut stream = connect(address, "localhost", config).await.map_err(|e| e.to_string())?;
    request_until_closed(&mut stream, request).await
}

/// The answer to an allowed CONNECT.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// A proxy request for `url` with `Connection: close` and extra header lines.
pub fn get(url: &str, headers: &[&str]) -> Vec<u8> {
    let authority = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("");
    let mut request = format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}
