//! Reaching a destination: resolve once, check every address, dial only checked addresses; directly or through
//! the parent proxy, with TLS toward `https://` upstreams. `pool.rs` keeps the forward proxy's idle connections,
//! `models.rs` is the pooled client toward model APIs.
//!
//! The address that was checked is the address that is dialled: there is no second lookup, so DNS rebinding
//! cannot swap a public answer for a private one between the check and the connect.

pub mod models;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{self, Config, ParentProxy};
use crate::http1::head::{read_head, HeadError, HeadLimits, ResponseHead};
use crate::policy::{Decision, DenyReason};
use crate::request::error::Error;
use crate::stream::Stream;
use crate::target::{Host, Target};

/// What dialling needs to know: the snapshot, tollgate's own addresses (never a destination), and the teams of
/// the principal asking (their deny CIDRs apply to resolved addresses too).
#[derive(Debug, Clone, Copy)]
pub struct Dialer<'a> {
    pub config: &'a Config,
    pub own_addresses: &'a [SocketAddr],
    pub teams: &'a [Arc<str>],
}

impl Dialer<'_> {
    /// Resolves `target` and checks every address; one denied address refuses the whole request (fail closed).
    pub async fn resolve_checked(&self, target: &Target) -> Result<Vec<SocketAddr>, Error> {
        let addresses: Vec<SocketAddr> = match &target.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            Host::Name(name) => {
                let lookup = tokio::net::lookup_host((&**name, target.port));
                let found = tokio::time::timeout(self.config.upstream.dns_timeout, lookup)
                    .await
                    .map_err(|_| Error::ResolveTimeout { host: name.to_string() })?
                    .map_err(|source| Error::Resolve { host: name.to_string(), source })?;
                found.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).collect()
            }
        };
        if addresses.is_empty() {
            let source = std::io::ErrorKind::NotFound.into();
            return Err(Error::Resolve { host: target.host.to_string(), source });
        }
        for address in &addresses {
            if is_own_address(*address, self.own_addresses) {
                return Err(Error::Denied {
                    target: target.to_string(),
                    rule: "listeners".into(),
                    reason: DenyReason::SelfConnection,
                });
            }
            if let Err(Decision::Deny { rule, reason }) =
                self.config.policy.check_address(address.ip(), address.port(), self.teams)
            {
                let target = format!("{target} ({})", address.ip());
                return Err(Error::Denied { target, rule, reason });
            }
        }
        Ok(addresses)
    }
}

/// A connection to tollgate's own listener would loop. Dialling an unspecified address (0.0.0.0, ::) reaches
/// the local host, so it counts as any listener on that port.
fn is_own_address(address: SocketAddr, own_addresses: &[SocketAddr]) -> bool {
    own_addresses.iter().any(|own| {
        own.port() == address.port()
            && (own.ip() == address.ip()
                || address.ip().is_unspecified()
                || own.ip().is_unspecified() && address.ip().is_loopback())
    })
}

/// Dials the checked addresses in order within one overall timeout.
pub async fn dial(target: &Target, addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Error> {
    let attempt = async {
        let mut last_error = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(Error::Connect { target: target.to_string(), source }),
        Err(_) => Err(Error::ConnectTimeout { target: target.to_string() }),
    }
}

/// How a connection reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Dialled directly, to an address the policy checked.
    Direct,
    /// Through `upstream.parent_proxy`, which resolves and dials.
    Parent,
}

/// The route for `target`: the parent proxy unless there is none or the bypass list names the target.
pub fn route(upstream: &config::Upstream, target: &Target) -> Route {
    match &upstream.parent_proxy {
        Some(_) if upstream.parent_proxy_bypass.first_match(target).is_none() => Route::Parent,
        _ => Route::Direct,
    }
}

impl Dialer<'_> {
    /// A raw byte path to `target` (for CONNECT tunnels and `https://` requests): dialled directly after the
    /// address checks, or a CONNECT tunnel through the parent proxy.
    pub async fn open_tunnel(&self, target: &Target) -> Result<(Stream, SocketAddr, Route), Error> {
        let config = self.config;
        match route(&config.upstream, target) {
            Route::Direct => {
                let addresses = self.resolve_checked(target).await?;
                let stream = dial(target, &addresses, config.upstream.connect_timeout).await?;
                let peer = stream.peer_addr().unwrap_or(addresses[0]);
                Ok((Stream::Tcp(stream), peer, Route::Direct))
            }
            Route::Parent => {
                let (mut stream, peer, parent) = self.connect_parent().await?;
                parent_connect(&mut stream, parent, target, config).await?;
                Ok((stream, peer, Route::Parent))
            }
        }
    }

    /// A raw byte path to an endpoint the operator configured (an entry of `upstreams`): like the parent proxy,
    /// it is not held to the private-address guard, only to the loop check; the parent proxy still applies.
    pub async fn open_configured(&self, target: &Target) -> Result<(Stream, SocketAddr, Route), Error> {
        let config = self.config;
        if route(&config.upstream, target) == Route::Parent {
            return self.open_tunnel(target).await;
        }
        let addresses = self.resolve_configured(target).await?;
        let stream = dial(target, &addresses, config.upstream.connect_timeout).await?;
        let peer = stream.peer_addr().unwrap_or(addresses[0]);
        Ok((Stream::Tcp(stream), peer, Route::Direct))
    }

    /// The addresses of an operator-configured endpoint: held to the loop check, not to the private-address guard.
    pub async fn resolve_configured(&self, target: &Target) -> Result<Vec<SocketAddr>, Error> {
        let addresses = self.resolve_unchecked(target).await?;
        if addresses.iter().any(|a| is_own_address(*a, self.own_addresses)) {
            return Err(Error::Denied {
                target: target.to_string(),
                rule: "upstreams".into(),
                reason: DenyReason::SelfConnection,
            });
        }
        Ok(addresses)
    }

    /// The addresses of an operator-configured endpoint, without the private-address guard.
    async fn resolve_unchecked(&self, target: &Target) -> Result<Vec<SocketAddr>, Error> {
        match &target.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, target.port)]),
            Host::Name(name) => Ok(tokio::time::timeout(
                self.config.upstream.dns_timeout,
                tokio::net::lookup_host((&**name, target.port)),
            )
            .await
            .map_err(|_| Error::ResolveTimeout { host: name.to_string() })?
            .map_err(|source| Error::Resolve { host: name.to_string(), source })?
            .collect()),
        }
    }

    /// A connection for an `http://` request: to the origin, or to the parent proxy (which then gets the
    /// request in absolute form).
    pub async fn open_forward(&self, target: &Target) -> Result<(Stream, SocketAddr, Route), Error> {
        match route(&self.config.upstream, target) {
            Route::Direct => self.open_tunnel(target).await,
            Route::Parent => {
                let (stream, peer, _) = self.connect_parent().await?;
                Ok((stream, peer, Route::Parent))
            }
        }
    }

    /// TCP (and TLS for `https://`) to the parent proxy. The parent is configured by the operator: its address
    /// is not held to the private-address guard, only to the loop check.
    async fn connect_parent(&self) -> Result<(Stream, SocketAddr, &ParentProxy), Error> {
        let config = self.config;
        let parent = config.upstream.parent_proxy.as_ref().expect("Route::Parent only with a parent proxy");
        let addresses = self.resolve_unchecked(&parent.target).await?;
        if addresses.iter().any(|a| is_own_address(*a, self.own_addresses)) {
            return Err(Error::Denied {
                target: parent.display.clone(),
                rule: "upstream.parent_proxy".into(),
                reason: DenyReason::SelfConnection,
            });
        }
        let tcp = dial(&parent.target, &addresses, config.upstream.connect_timeout).await?;
        let peer = tcp.peer_addr().unwrap_or(addresses[0]);
        let stream = if parent.tls { tls_connect(config, &parent.target, tcp).await? } else { Stream::Tcp(tcp) };
        Ok((stream, peer, parent))
    }
}

/// Asks the parent proxy for a tunnel; its refusals become a 502 that names them.
async fn parent_connect(
    stream: &mut Stream,
    parent: &ParentProxy,
    target: &Target,
    config: &Config,
) -> Result<(), Error> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = &parent.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let io_error = |source| Error::UpstreamIo { target: parent.display.clone(), source };
    stream.write_all(request.as_bytes()).await.map_err(io_error)?;
    let mut buf = BytesMut::with_capacity(1024);
    let limits = HeadLimits {
        max_head: config.server.max_header_bytes,
        max_uri: config.server.max_header_bytes,
        timeout: config.upstream.connect_timeout,
    };
    let length = read_head(stream, &mut buf, limits).await.map_err(|error| match error {
        HeadError::Timeout => Error::UpstreamTimeout { target: parent.display.clone() },
        HeadError::Io(source) => io_error(source),
        other => Error::ParentRefused { parent: parent.display.clone(), answer: other.to_string() },
    })?;
    let head = ResponseHead::parse(buf.split_to(length).freeze())
        .map_err(|problem| Error::ParentRefused { parent: parent.display.clone(), answer: problem.to_owned() })?;
    if head.status != 200 || !buf.is_empty() {
        let reason = String::from_utf8_lossy(head.reason()).into_owned();
        return Err(Error::ParentRefused {
            parent: parent.display.clone(),
            answer: format!("{} {reason}", head.status),
        });
    }
    Ok(())
}

/// TLS toward an upstream with the shared client config; certificate problems are a 502 naming them.
pub async fn tls_connect(config: &Config, target: &Target, tcp: TcpStream) -> Result<Stream, Error> {
    tls_connect_with(config, &config.upstream.tls, target, tcp).await
}

/// TLS toward an upstream with the given client config (the shared one, or its ALPN variant for model APIs).
pub async fn tls_connect_with(
    config: &Config,
    client: &Arc<rustls::ClientConfig>,
    target: &Target,
    tcp: TcpStream,
) -> Result<Stream, Error> {
    let server_name = match &target.host {
        Host::Name(name) => ServerName::try_from(name.to_string()),
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
    }
    .map_err(|_| Error::BadRequest(format!("{} is not a valid TLS server name", target.host)))?;
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    match tokio::time::timeout(config.upstream.connect_timeout, connector.connect(server_name, tcp)).await {
        Ok(Ok(tls)) => Ok(Stream::TlsClient(Box::new(tls))),
        Ok(Err(error)) => Err(Error::UpstreamTls { target: target.to_string(), reason: error.to_string() }),
        Err(_) => Err(Error::ConnectTimeout { target: target.to_string() }),
    }
}
