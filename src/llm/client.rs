//! The HTTP client toward model APIs: hyper's pooled client (HTTP/1.1, or h2 when the upstream's ALPN says
//! so) over tollgate's own dialer, so the private-address guard, the loop check, the parent proxy and the
//! upstream trust apply to every connection it opens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::Config;
use crate::proxy::error::ProxyError;
use crate::proxy::stream::Stream;
use crate::proxy::upstream::{tls_connect_with, Dialer};
use crate::target::Target;

/// Request bodies sent upstream: the whole body, read and checked before it leaves.
pub type RequestBody = http_body_util::Full<bytes::Bytes>;

/// The pooled client.
pub type ModelClient = Client<Connector, RequestBody>;

/// Builds the client; connections idle longer than `upstream.idle_timeout` are closed.
pub fn model_client(config: Arc<ArcSwap<Config>>, own_addresses: Arc<[std::net::SocketAddr]>) -> ModelClient {
    let idle = config.load().upstream.idle_timeout;
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http1_preserve_header_case(true)
        .build(Connector { config, own_addresses })
}

/// Opens connections for the pooled client with the current snapshot's dialer.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ArcSwap<Config>>,
    own_addresses: Arc<[std::net::SocketAddr]>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.load_full();
        let own_addresses = self.own_addresses.clone();
        Box::pin(async move { connect(&config, &own_addresses, &uri).await })
    }
}

/// A configured upstream is dialled as the operator wrote it; any other host (an intercepted request going to
/// its original destination) is resolved and checked like a tunnel.
async fn connect(config: &Config, own_addresses: &[std::net::SocketAddr], uri: &Uri) -> Result<UpstreamIo, ProxyError> {
    let https = uri.scheme_str() == Some("https");
    let authority = uri.authority().ok_or_else(|| ProxyError::BadRequest(format!("{uri} names no host")))?;
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = Target::parse_authority(&format!("{}:{port}", authority.host()))
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let dialer = Dialer { config, own_addresses, teams: &[] };
    let configured = config.llm.upstreams.values().any(|u| u.target == target);
    let (stream, _, _) =
        if configured { dialer.open_configured(&target).await? } else { dialer.open_tunnel(&target).await? };
    let stream = if https {
        let tcp = match stream {
            Stream::Tcp(tcp) => tcp,
            // A TLS parent proxy: TLS inside TLS is not supported for model upstreams.
            _ => {
                return Err(ProxyError::UpstreamTls {
                    target: target.to_string(),
                    reason: "an https:// parent proxy cannot carry model-API requests; use http://".to_owned(),
                })
            }
        };
        tls_connect_with(config, &config.upstream.tls_alpn, &target, tcp).await?
    } else {
        stream
    };
    let h2 = matches!(&stream, Stream::TlsClient(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"));
    Ok(UpstreamIo { io: TokioIo::new(stream), h2 })
}

/// One upstream connection, telling hyper whether ALPN chose h2.
pub struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The tollgate error inside a client error (connect failures carry it), for a precise status.
pub fn cause(error: &hyper_util::client::legacy::Error) -> Option<&ProxyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = source {
        if let Some(proxy_error) = current.downcast_ref::<ProxyError>() {
            return Some(proxy_error);
        }
        source = current.source();
    }
    None
}
