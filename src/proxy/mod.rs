//! The forward proxy: one task per client connection, one pass of the pipeline per request.
//!
//! read head → identify → decide → (CONNECT) resolve, check, dial, splice
//!                                 (http://) pooled upstream, relay response
//! and always, last: metrics, a log line and an audit record (`finish`), whatever happened before.

pub mod body;
pub mod connect;
pub mod error;
pub mod forward;
pub mod head;
pub mod sni;
pub mod stream;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::Gateway;
use crate::config::Config;
use crate::exchange::{finish, Exchange};
use crate::identity::Principal;
use crate::limits::Admitted;
use crate::policy::Decision;
use crate::target::Target;
use error::ProxyError;
use head::{read_head, HeadError, HeadLimits, RequestHead};
use stream::Stream;

/// What the connection loop does after a request.
enum Next {
    KeepAlive,
    Close,
    /// The CONNECT was to an intercepted host: tollgate answers the TLS inside itself.
    Intercept(Box<Interception>),
}

/// An identified CONNECT to an intercepted host, with the leaf to present.
struct Interception {
    exchange: Exchange,
    tls: Arc<rustls::ServerConfig>,
}

/// Who is at the other end of a client connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    pub listener: Arc<str>,
    /// The principal of a verified client certificate (TLS listeners with `client_auth`).
    pub certificate: Option<Principal>,
}

/// Serves one client connection until it closes, idles out, fails, or becomes a tunnel.
pub async fn serve(gateway: Arc<Gateway>, mut client: Stream, peer: Peer) {
    let listener = peer.listener.clone();
    let _active = gateway.metrics.connection_opened(&listener);
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    loop {
        let config = gateway.config.load_full();
        if !first && buf.is_empty() {
            // Wait for the next request by reading (not by socket readiness: TLS may hold decrypted bytes).
            let wait = tokio::time::timeout(config.server.keepalive_timeout, client.read_buf(&mut buf));
            tokio::select! {
                read = wait => if !matches!(read, Ok(Ok(1..))) { return },
                () = gateway.shutdown.stop_accepting.cancelled() => return,
            }
        }
        first = false;
        let limits = HeadLimits {
            max_head: config.server.max_header_bytes,
            max_uri: config.server.max_uri_bytes,
            timeout: config.server.header_read_timeout,
        };
        let head = match read_head(&mut client, &mut buf, limits).await {
            Ok(length) => RequestHead::parse(buf.split_to(length).freeze(), limits.max_uri),
            Err(error) => Err(error),
        };
        let head = match head {
            Ok(head) => head,
            Err(HeadError::Closed) => return,
            Err(HeadError::Io(_)) => {
                gateway.metrics.client_error(&listener, "read_error");
                return;
            }
            Err(error) => {
                let error = match error {
                    HeadError::Timeout => ProxyError::HeadTimeout(limits.timeout),
                    HeadError::TooLarge => ProxyError::HeadTooLarge(limits.max_head),
                    HeadError::UriTooLong => ProxyError::UriTooLong(limits.max_uri),
                    other => ProxyError::BadRequest(other.to_string()),
                };
                gateway.metrics.client_error(&listener, error.kind());
                let mut exchange = Exchange::new(gateway.next_request_id(), "http");
                exchange.fail(&error);
                let _ = client.write_all(&error.response(&exchange.id, true)).await;
                let _ = client.flush().await;
                finish(&gateway, &peer, exchange);
                return;
            }
        };
        let next = if head.method() == "CONNECT" {
            tunnel(&gateway, &config, &mut client, &mut buf, head, &peer).await
        } else {
            forward(&gateway, &config, &mut client, &mut buf, head, &peer).await
        };
        match next {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Intercept(interception) => return intercepted(&gateway, client, buf, *interception, &peer).await,
        }
    }
}

/// Who sent the request: a verified client certificate, else `Proxy-Authorization`, else the anonymous principal.
async fn identify(
    gateway: &Gateway,
    config: &Config,
    head: &RequestHead,
    peer: &Peer,
) -> Result<Principal, ProxyError> {
    match &peer.certificate {
        // A verified client certificate is the stronger proof: it wins over any Proxy-Authorization.
        Some(principal) => Ok(principal.clone()),
        None => {
            config.identity.identify(head.header("proxy-authorization"), peer.address.ip()).await.map_err(|error| {
                gateway.metrics.auth_failure(error.method());
                ProxyError::Auth(error)
            })
        }
    }
}

/// Identity, destination and limit checks shared by CONNECT and forwarded requests. The returned slots are
/// held until the request or tunnel ends.
async fn admit(
    gateway: &Gateway,
    config: &Config,
    head: &RequestHead,
    target: &Target,
    peer: &Peer,
    exchange: &mut Exchange,
) -> Result<Admitted, ProxyError> {
    let principal = identify(gateway, config, head, peer).await?;
    if gateway.auditor.refuses_requests() {
        exchange.principal = Some(principal);
        return Err(ProxyError::AuditUnavailable);
    }
    let now = gateway.clock.now();
    let decision = config.policy.decide(target, &principal.teams, now);
    let plan = config.limits.plan(&principal);
    exchange.principal = Some(principal);
    match decision {
        Decision::Allow { rule } => exchange.rule = Some(rule),
        Decision::Deny { rule, reason } => return Err(ProxyError::Denied { target: target.to_string(), rule, reason }),
    }
    limit(gateway, config, plan, now).await
}

/// Takes one request of `plan` from the rate limits and its concurrency slots, or says which limit refuses;
/// with the state backend unreachable, `state.on_error` decides.
pub(crate) async fn limit(
    gateway: &Gateway,
    config: &Config,
    plan: Arc<crate::limits::Plan>,
    now: std::time::SystemTime,
) -> Result<Admitted, ProxyError> {
    match gateway.limiter.admit(plan, now).await {
        Ok(Ok(admitted)) => Ok(admitted),
        Ok(Err(refusal)) => {
            gateway.metrics.rate_limited(refusal.scope().label());
            Err(ProxyError::from(refusal))
        }
        Err(error) if config.state.allow_on_error => {
            tracing::warn!(%error, "limits not enforced: the state backend is unreachable (state.on_error: allow)");
            gateway.metrics.state_error(gateway.limiter.backend_name());
            Ok(Admitted::none())
        }
        Err(error) => {
            gateway.metrics.state_error(gateway.limiter.backend_name());
            Err(ProxyError::StateUnavailable(error))
        }
    }
}

async fn tunnel(
    gateway: &Gateway,
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: RequestHead,
    peer: &Peer,
) -> Next {
    let mut exchange = Exchange::new(gateway.next_request_id(), "connect");
    exchange.method = "CONNECT".to_owned();
    let result = async {
        let target = Target::parse_authority(head.target()).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        exchange.target = Some(target.clone());
        if config.llm.intercepts(&target) {
            // Only identity is checked here. Policy, hours, limits and the audit log are checked for each
            // request inside, where a refusal is an answer the client shows its user: a refused CONNECT shows
            // only "couldn't connect through your proxy" and is retried for minutes.
            exchange.principal = Some(identify(gateway, config, &head, peer).await?);
            // Minted before the 200: a failure is still a clean answer to the CONNECT.
            return Ok(Err(crate::intercept::server_config(gateway, &target).await?));
        }
        let admitted = admit(gateway, config, &head, &target, peer, &mut exchange).await?;
        let teams = exchange.teams();
        let dialer = upstream::Dialer { config, own_addresses: &gateway.own_addresses, teams: &teams };
        let (stream, address, _route) = dialer.open_tunnel(&target).await?;
        Ok::<_, ProxyError>(Ok((stream, address, admitted)))
    }
    .await;
    let (mut upstream_stream, upstream_address, admitted) = match result {
        Ok(Ok(opened)) => opened,
        Ok(Err(tls)) => return Next::Intercept(Box::new(Interception { exchange, tls })),
        Err(error) => {
            // Bytes pipelined after a refused CONNECT were meant for the tunnel: they are dropped with the
            // connection. With nothing pipelined, a 407 may be answered on this connection.
            let close = !buf.is_empty() || error.status() != 407 || !head.keep_alive();
            refuse(gateway, client, &mut exchange, &error, close).await;
            finish(gateway, peer, exchange);
            return if close { Next::Close } else { Next::KeepAlive };
        }
    };
    exchange.upstream = Some(upstream_address.to_string());
    exchange.status = 200;
    // Registered before the 200: a reload from then on (e.g. while waiting for the ClientHello) closes it.
    let principal = exchange.principal.clone().expect("admitted tunnels have a principal");
    let target = exchange.target.clone().expect("admitted tunnels have a target");
    let registration = gateway.register_tunnel(principal, target);
    if client.write_all(connect::ESTABLISHED).await.is_err() || client.flush().await.is_err() {
        exchange.error = Some("client closed before the tunnel opened".to_owned());
        admitted.release().await;
        finish(gateway, peer, exchange);
        return Next::Close;
    }
    if config.policy.requires_sni_match() {
        let target = exchange.target.as_ref().expect("set before admit");
        if let Err(problem) = check_sni(client, buf, target, config).await {
            exchange.decision = "deny";
            exchange.reason = "sni_mismatch";
            exchange.rule = Some("policy.require_sni_match".into());
            exchange.error = Some(problem);
            admitted.release().await;
            finish(gateway, peer, exchange);
            return Next::Close;
        }
    }
    gateway.metrics.tunnels_active.inc();
    let pending = std::mem::take(buf);
    let stats =
        connect::splice(client, &mut upstream_stream, pending, config.upstream.idle_timeout, &registration.cut).await;
    gateway.metrics.tunnels_active.dec();
    drop(registration);
    // Before the record and the close: a client that saw the tunnel end finds its concurrency slots free.
    admitted.release().await;
    exchange.bytes_up = stats.bytes_up;
    exchange.bytes_down = stats.bytes_down;
    exchange.error = stats.end.label().map(str::to_owned);
    if stats.end == connect::TunnelEnd::Cut {
        if gateway.shutdown.cut_tunnels.is_cancelled() {
            gateway.note_cut_tunnel();
        } else {
            exchange.decision = "deny";
            exchange.reason = "revoked";
            exchange.error = Some("closed: the reloaded config denies this tunnel".to_owned());
        }
    }
    finish(gateway, peer, exchange);
    Next::Close
}

/// Serves an intercepted tunnel to its end: the `200`, the TLS handshake with the minted leaf, the requests
/// inside (each decided, limited and audited on its own), then the tunnel's record. The tunnel itself takes
/// nothing from the limits: a cap counts the requests in flight, not the idle tunnels a client keeps for them.
async fn intercepted(
    gateway: &Arc<Gateway>,
    mut client: Stream,
    buf: BytesMut,
    interception: Interception,
    peer: &Peer,
) {
    let Interception { mut exchange, tls } = interception;
    let principal = exchange.principal.clone().expect("intercepted tunnels are identified");
    let target = exchange.target.clone().expect("intercepted tunnels have a target");
    exchange.upstream = Some("tollgate (intercepted)".to_owned());
    let registration = gateway.register_tunnel(principal.clone(), target.clone());
    if client.write_all(connect::ESTABLISHED).await.is_err() || client.flush().await.is_err() {
        exchange.error = Some("client closed before the tunnel opened".to_owned());
        finish(gateway, peer, exchange);
        return;
    }
    exchange.status = 200;
    gateway.metrics.tunnels_active.inc();
    let served = crate::intercept::serve(gateway, client, buf, tls, peer, (principal, target), &registration.cut).await;
    gateway.metrics.tunnels_active.dec();
    let revoked = registration.cut.is_cancelled() && !gateway.shutdown.cut_tunnels.is_cancelled();
    drop(registration);
    if let Err(problem) = served {
        exchange.error = Some(problem);
    }
    if revoked {
        exchange.decision = "deny";
        exchange.reason = "revoked";
    }
    finish(gateway, peer, exchange);
}

/// Reads the tunnel's first bytes into `buf` (they are still forwarded) until the ClientHello is complete,
/// and checks that its SNI names the CONNECT host.
async fn check_sni(client: &mut Stream, buf: &mut BytesMut, target: &Target, config: &Config) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + config.server.header_read_timeout;
    loop {
        match sni::parse(buf) {
            sni::ClientHello::Sni(name) => {
                let matches = match &target.host {
                    crate::target::Host::Name(host) => **host == *name,
                    crate::target::Host::Ip(_) => false,
                };
                return if matches {
                    Ok(())
                } else {
                    Err(format!("TLS SNI {name:?} does not match CONNECT host {}", target.host))
                };
            }
            sni::ClientHello::NoSni => return Err("TLS ClientHello without SNI".to_owned()),
            sni::ClientHello::NotTls => return Err("the tunnel did not start with a TLS ClientHello".to_owned()),
            sni::ClientHello::Incomplete if buf.len() >= sni::MAX_CLIENT_HELLO => {
                return Err("TLS ClientHello too large".to_owned())
            }
            sni::ClientHello::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err("the client closed the tunnel before a TLS ClientHello".to_owned()),
            Err(_) => return Err("no TLS ClientHello in time".to_owned()),
        }
    }
}

async fn forward(
    gateway: &Gateway,
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: RequestHead,
    peer: &Peer,
) -> Next {
    let mut exchange = Exchange::new(gateway.next_request_id(), "http");
    exchange.method = head.method().to_owned();
    let result = async {
        let uri = forward::parse_absolute(head.target())?;
        exchange.target = Some(uri.target.clone());
        exchange.path = Some(uri.path.to_owned());
        let admitted = admit(gateway, config, &head, &uri.target, peer, &mut exchange).await?;
        let teams = exchange.teams();
        let dialer = upstream::Dialer { config, own_addresses: &gateway.own_addresses, teams: &teams };
        let forwarded = forward::exchange(gateway, &dialer, client, buf, &head, &uri).await;
        // Before the next request on this connection is read (a pipelined one may already be buffered).
        admitted.release().await;
        forwarded
    }
    .await;
    let next = match result {
        Ok(forwarded) => {
            exchange.status = forwarded.status;
            exchange.bytes_up = forwarded.bytes_up;
            exchange.bytes_down = forwarded.bytes_down;
            exchange.upstream = forwarded.upstream.map(|a| a.to_string());
            exchange.error = forwarded.error;
            if forwarded.keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Err(error) => {
            // An unread request body would be taken for the next request: close instead.
            let close = !head.keep_alive()
                || head.framing != body::Framing::Empty
                || matches!(error, ProxyError::ClientClosed(_));
            refuse(gateway, client, &mut exchange, &error, close).await;
            if close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
    };
    finish(gateway, peer, exchange);
    next
}

/// Sends the error response for `error` and records it on the exchange.
async fn refuse(gateway: &Gateway, client: &mut Stream, exchange: &mut Exchange, error: &ProxyError, close: bool) {
    exchange.fail(error);
    if let Some(kind) = error.upstream_kind() {
        gateway.metrics.upstream_error(kind);
    }
    if !matches!(error, ProxyError::ClientClosed(_)) {
        let _ = client.write_all(&error.response(&exchange.id, close)).await;
        let _ = client.flush().await;
    }
}
