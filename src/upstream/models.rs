//! The HTTP client toward model APIs: hyper's pooled client (HTTP/1.1, or h2 when the upstream's ALPN says
//! so) over tollgate's own dialer, so the private-address guard, the loop check, the parent proxy and the
//! upstream trust apply to every connection it opens.
//!
//! hyper picks a pooled connection for a request without saying which, so the addresses of each upstream host
//! are kept here: resolved at most once per `ADDRESS_TTL` and checked (the private-address guard for a host a
//! client named, the loop check for a configured upstream), dialled only from that list, and remembered once
//! dialled. A request is admitted only when every one of them passes its principal's deny CIDRs
//! (`request::admit`), whichever connection hyper then gives it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{dial, route, tls_connect_with, Dialer, Route};
use crate::config::Config;
use crate::request::error::Error;
use crate::stream::Stream;
use crate::target::Target;

/// Request bodies sent upstream: the whole body, read and checked before it leaves.
pub type RequestBody = http_body_util::Full<bytes::Bytes>;

/// How long a resolution of an upstream host is used before it is asked again.
const ADDRESS_TTL: Duration = Duration::from_secs(30);
/// Upstream hosts whose addresses are kept (intercepted hosts and configured upstreams: few in practice).
const MAX_HOSTS: usize = 4096;
/// Idle pooled connections kept per model host.
const MAX_IDLE_PER_HOST: usize = 64;
/// Addresses remembered per host as dialled (pooled connections may still use them).
const MAX_DIALLED: usize = 32;

/// The pooled client and the addresses it may dial.
#[derive(Clone)]
pub struct ModelClient {
    client: Client<Connector, RequestBody>,
    addresses: Arc<Addresses>,
    own_addresses: Arc<[SocketAddr]>,
    /// Connections open now (idle in hyper's pool or carrying requests).
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelClient")
    }
}

/// Builds the client; connections idle longer than `upstream.idle_timeout` are closed.
pub fn model_client(config: Arc<ArcSwap<Config>>, own_addresses: Arc<[SocketAddr]>) -> ModelClient {
    let idle = config.load().upstream.idle_timeout;
    let addresses = Arc::new(Addresses::default());
    let open = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        // Model hosts are few; their idle connections are bounded all the same.
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(Connector {
            config,
            own_addresses: own_addresses.clone(),
            addresses: addresses.clone(),
            open: open.clone(),
        });
    ModelClient { client, addresses, own_addresses, open }
}

impl ModelClient {
    /// Sends a request on a pooled connection (or a new one).
    pub fn request(&self, request: http::Request<RequestBody>) -> ResponseFuture {
        self.client.request(request)
    }

    /// Connections open now, idle in the pool or carrying requests (`tollgate_upstream_pooled_connections`).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Every address a request to `target` may be sent to: the current resolution and the addresses pooled
    /// connections were dialled at. Empty when the parent proxy reaches `target` (it resolves and dials).
    pub async fn addresses(&self, config: &Config, target: &Target, configured: bool) -> Result<Arc<[IpAddr]>, Error> {
        if route(&config.upstream, target) == Route::Parent {
            return Ok(Arc::new([]));
        }
        if let Some(known) = self.addresses.fresh(target) {
            return Ok(known);
        }
        self.addresses.resolve(config, &self.own_addresses, target, configured).await?;
        Ok(self.addresses.fresh(target).unwrap_or_else(|| Arc::new([])))
    }
}

/// The resolved and dialled addresses of each upstream host.
#[derive(Debug, Default)]
struct Addresses {
    hosts: Mutex<HashMap<Target, Host>>,
}

#[derive(Debug)]
struct Host {
    resolved: Arc<[SocketAddr]>,
    at: Instant,
    dialled: Vec<IpAddr>,
    /// `resolved` and `dialled` together, built when either changes: what a request checks, without allocating.
    all: Arc<[IpAddr]>,
}

impl Host {
    fn update_all(&mut self) {
        let mut all: Vec<IpAddr> = self.resolved.iter().map(SocketAddr::ip).collect();
        all.extend(self.dialled.iter().filter(|ip| !self.resolved.iter().any(|a| a.ip() == **ip)));
        self.all = all.into();
    }
}

impl Addresses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Host>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses to check for `target`, when its resolution is fresh.
    fn fresh(&self, target: &Target) -> Option<Arc<[IpAddr]>> {
        self.lock().get(target).filter(|host| host.at.elapsed() < ADDRESS_TTL).map(|host| host.all.clone())
    }

    /// The checked addresses of `target`, resolving them when none are fresh.
    async fn resolve(
        &self,
        config: &Config,
        own_addresses: &[SocketAddr],
        target: &Target,
        configured: bool,
    ) -> Result<Arc<[SocketAddr]>, Error> {
        if let Some(host) = self.lock().get(target).filter(|host| host.at.elapsed() < ADDRESS_TTL) {
            return Ok(host.resolved.clone());
        }
        let dialer = Dialer { config, own_addresses, teams: &[] };
        let resolved: Arc<[SocketAddr]> = if configured {
            dialer.resolve_configured(target).await?.into()
        } else {
            dialer.resolve_checked(target).await?.into()
        };
        let mut hosts = self.lock();
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(target) {
            hosts.retain(|_, host| host.at.elapsed() < ADDRESS_TTL);
            if hosts.len() >= MAX_HOSTS {
                hosts.clear();
            }
        }
        let host = hosts.entry(target.clone()).or_insert_with(|| Host {
            resolved: resolved.clone(),
            at: Instant::now(),
            dialled: Vec::new(),
            all: Arc::new([]),
        });
        host.resolved = resolved.clone();
        host.at = Instant::now();
        host.update_all();
        Ok(resolved)
    }

    fn note_dialled(&self, target: &Target, ip: IpAddr) {
        if let Some(host) = self.lock().get_mut(target) {
            if !host.dialled.contains(&ip) {
                if host.dialled.len() >= MAX_DIALLED {
                    host.dialled.remove(0);
                }
                host.dialled.push(ip);
                host.update_all();
            }
        }
    }
}

/// Opens connections for the pooled client with the current snapshot's dialer.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ArcSwap<Config>>,
    own_addresses: Arc<[SocketAddr]>,
    addresses: Arc<Addresses>,
    open: Arc<AtomicUsize>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(&uri).await })
    }
}

impl Connector {
    /// Dials the checked addresses of the URI's host (a configured upstream is held to the loop check only; any
    /// other host to the private-address guard), or a tunnel through the parent proxy.
    async fn connect(&self, uri: &Uri) -> Result<UpstreamIo, Error> {
        let config = self.config.load_full();
        let https = uri.scheme_str() == Some("https");
        let authority = uri.authority().ok_or_else(|| Error::BadRequest(format!("{uri} names no host")))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = Target::parse_authority(&format!("{}:{port}", authority.host()))
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let dialer = Dialer { config: &config, own_addresses: &self.own_addresses, teams: &[] };
        let stream = if route(&config.upstream, &target) == Route::Parent {
            dialer.open_tunnel(&target).await?.0
        } else {
            let configured = config.llm.upstreams.values().any(|u| u.target == target);
            let addresses = self.addresses.resolve(&config, &self.own_addresses, &target, configured).await?;
            let tcp = dial(&target, &addresses, config.upstream.connect_timeout).await?;
            if let Ok(peer) = tcp.peer_addr() {
                self.addresses.note_dialled(&target, peer.ip());
            }
            Stream::Tcp(tcp)
        };
        let stream = if https {
            let tcp = match stream {
                Stream::Tcp(tcp) => tcp,
                // A TLS parent proxy: TLS inside TLS is not supported for model upstreams.
                _ => {
                    return Err(Error::UpstreamTls {
                        target: target.to_string(),
                        reason: "an https:// parent proxy cannot carry model-API requests; use http://".to_owned(),
                    })
                }
            };
            tls_connect_with(&config, &config.upstream.tls_alpn, &target, tcp).await?
        } else {
            stream
        };
        let h2 = matches!(&stream, Stream::TlsClient(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"));
        Ok(UpstreamIo { io: TokioIo::new(stream), h2, _open: Opened::count(&self.open) })
    }
}

/// One upstream connection, telling hyper whether ALPN chose h2.
pub struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
    _open: Opened,
}

/// Counts one open connection until dropped.
struct Opened(Arc<AtomicUsize>);

impl Opened {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Opened(open.clone())
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
pub fn cause(error: &hyper_util::client::legacy::Error) -> Option<&Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = source {
        if let Some(error) = current.downcast_ref::<Error>() {
            return Some(error);
        }
        source = current.source();
    }
    None
}
