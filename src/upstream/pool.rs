//! The forward proxy's idle keep-alive connections to upstreams, reused by later absolute-form requests when the
//! policy still allows their address to the principal asking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Route;
use crate::policy::Policy;
use crate::stream::Stream;
use crate::target::Target;

/// Pooled connections used more recently than this are not probed before reuse.
const RECENTLY_USED: Duration = Duration::from_secs(1);

/// Which pooled connections can serve a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub target: Target,
    pub tls: bool,
}

/// An open connection to an upstream, with the bytes read from it and not yet used.
#[derive(Debug)]
pub struct Connection {
    pub stream: Stream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
    pub route: Route,
    /// True when it came from the pool (a failure before any response byte may be a stale connection).
    pub reused: bool,
}

/// Idle keep-alive connections to upstreams, at most `max_per_target` per destination and `max_total` in all
/// (each holds a socket: clients reaching many destinations cannot make tollgate keep sockets without bound).
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Idle>,
    max_per_target: usize,
    max_total: usize,
}

#[derive(Debug, Default)]
struct Idle {
    by_key: HashMap<PoolKey, Vec<(Connection, Instant)>>,
    total: usize,
}

impl Pool {
    pub fn new(max_per_target: usize, max_total: usize) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::default(), max_per_target, max_total })
    }

    /// Idle connections kept now.
    pub fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest live idle connection for `key` whose address the current policy still allows to a principal
    /// in `teams` (a connection opened for one principal may serve another).
    pub fn checkout(
        &self,
        key: &PoolKey,
        policy: &Policy,
        teams: &[Arc<str>],
        max_idle: Duration,
    ) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Idle { by_key, total } = &mut *idle;
        let list = by_key.get_mut(key)?;
        while let Some((mut connection, since)) = list.pop() {
            *total -= 1;
            let still_allowed = connection.route == Route::Parent
                || policy.check_address(connection.peer.ip(), connection.peer.port(), teams).is_ok();
            // A connection idle for under a second is taken on trust (a probe costs a syscall per request);
            // if the upstream closed it meanwhile, a bodiless request is retried on a fresh one.
            let idle = since.elapsed();
            let open = idle < RECENTLY_USED || connection.stream.is_idle_and_open();
            if idle < max_idle && still_allowed && open {
                connection.reused = true;
                return Some(connection);
            }
        }
        None
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn checkin(&self, key: PoolKey, mut connection: Connection) {
        if !connection.buf.is_empty() {
            return;
        }
        connection.buf = BytesMut::new();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.total >= self.max_total {
            return;
        }
        let Idle { by_key, total } = &mut *idle;
        let list = by_key.entry(key).or_default();
        if list.len() < self.max_per_target {
            list.push((connection, Instant::now()));
            *total += 1;
        }
    }

    /// Drops connections idle for longer than `max_idle`.
    pub fn prune(&self, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_key.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() < max_idle);
            !list.is_empty()
        });
        idle.total = idle.by_key.values().map(Vec::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connection(listener: &tokio::net::TcpListener) -> Connection {
        let address = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        Connection {
            stream: Stream::Tcp(stream),
            buf: BytesMut::new(),
            peer: address,
            route: Route::Direct,
            reused: false,
        }
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_total_and_its_share_per_target() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2, 3);
        let key =
            |port: u16| PoolKey { target: Target::parse_authority(&format!("a.test:{port}")).unwrap(), tls: false };
        for _ in 0..3 {
            pool.checkin(key(1), connection(&listener).await);
        }
        assert_eq!(pool.len(), 2, "two per target");
        for port in 2..5 {
            pool.checkin(key(port), connection(&listener).await);
        }
        assert_eq!(pool.len(), 3, "three in all");
        pool.prune(Duration::ZERO);
        assert!(pool.is_empty());
    }
}
