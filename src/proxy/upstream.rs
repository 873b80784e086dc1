//! Reaching a destination: resolve once, check every address, dial only checked addresses, pool for reuse.
//!
//! The address that was checked is the address that is dialled: there is no second lookup, so DNS rebinding
//! cannot swap a public answer for a private one between the check and the connect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::error::ProxyError;
use crate::policy::{Decision, DenyReason, Policy};
use crate::target::{Host, Target};

/// Resolves `target` and checks every address; one denied address refuses the whole request (fail closed).
pub async fn resolve_checked(
    target: &Target,
    policy: &Policy,
    own_addresses: &[SocketAddr],
    dns_timeout: Duration,
) -> Result<Vec<SocketAddr>, ProxyError> {
    let addresses: Vec<SocketAddr> = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((&**name, target.port));
            let found = tokio::time::timeout(dns_timeout, lookup)
                .await
                .map_err(|_| ProxyError::ResolveTimeout { host: name.to_string() })?
                .map_err(|source| ProxyError::Resolve { host: name.to_string(), source })?;
            found.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port())).collect()
        }
    };
    if addresses.is_empty() {
        return Err(ProxyError::Resolve { host: target.host.to_string(), source: std::io::ErrorKind::NotFound.into() });
    }
    for address in &addresses {
        if is_own_address(*address, own_addresses) {
            return Err(ProxyError::Denied {
                target: target.to_string(),
                rule: "listeners".into(),
                reason: DenyReason::SelfConnection,
            });
        }
        if let Err(Decision::Deny { rule, reason }) = policy.check_address(address.ip(), address.port()) {
            let target = format!("{target} ({})", address.ip());
            return Err(ProxyError::Denied { target, rule, reason });
        }
    }
    Ok(addresses)
}

/// A connection to tollgate's own listener would loop.
fn is_own_address(address: SocketAddr, own_addresses: &[SocketAddr]) -> bool {
    own_addresses.iter().any(|own| {
        own.port() == address.port()
            && (own.ip() == address.ip()
                || own.ip().is_unspecified() && (address.ip().is_loopback() || address.ip().is_unspecified()))
    })
}

/// Dials the checked addresses in order within one overall timeout.
pub async fn dial(target: &Target, addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ProxyError> {
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
        Ok(Err(source)) => Err(ProxyError::Connect { target: target.to_string(), source }),
        Err(_) => Err(ProxyError::ConnectTimeout { target: target.to_string() }),
    }
}

/// An open connection to an upstream, with the bytes read from it and not yet used.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
    /// True when it came from the pool (a failure before any response byte may be a stale connection).
    pub reused: bool,
}

/// Idle keep-alive connections to upstreams, by target.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<Target, Vec<(Connection, Instant)>>>,
    max_per_target: usize,
}

impl Pool {
    pub fn new(max_per_target: usize) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::default(), max_per_target })
    }

    /// The newest live idle connection to `target` whose address the current policy still allows.
    pub fn checkout(&self, target: &Target, policy: &Policy, max_idle: Duration) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(target)?;
        while let Some((mut connection, since)) = list.pop() {
            if since.elapsed() >= max_idle
                || policy.check_address(connection.peer.ip(), connection.peer.port()).is_err()
            {
                continue;
            }
            // A pooled connection must be silent: EOF or stray bytes mean the upstream is done with it.
            match connection.stream.try_read(&mut [0u8; 1]) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    connection.reused = true;
                    return Some(connection);
                }
                _ => continue,
            }
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn checkin(&self, target: Target, mut connection: Connection) {
        if !connection.buf.is_empty() {
            return;
        }
        connection.buf = BytesMut::new();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(target).or_default();
        if list.len() < self.max_per_target {
            list.push((connection, Instant::now()));
        }
    }

    /// Drops connections idle for longer than `max_idle`.
    pub fn prune(&self, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() < max_idle);
            !list.is_empty()
        });
    }
}
