//! Accepting client connections: the connection cap, TCP options, the TLS handshake of TLS listeners (with the
//! client certificate's principal), and one tracked task per connection.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::api::session::{Origin, Session};
use crate::config::file::ListenerMode;
use crate::proxy;
use crate::request::door::Peer;
use crate::request::error::{Error, Shape};
use crate::shared::Shared;
use crate::stream::Stream;

/// Accepts on `socket` until shutdown; each connection is served by its own tracked task.
pub async fn accept_loop(shared: Arc<Shared>, socket: TcpListener, name: Arc<str>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = shared.shutdown.stop_accepting.cancelled() => return,
        };
        let (stream, address) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: say so and keep accepting once descriptors free up.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
            shared.metrics.client_error(&name, "connection_limit");
            // Best effort and non-blocking: the accept loop must not wait on a client.
            let refusal = Error::ConnectionLimit(shared.config.load().server.max_connections);
            let _ = stream.try_write(&refusal.response(Shape::Proxy, &shared.next_request_id(), true));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let name = name.clone();
        tracker.spawn(async move {
            if let Some((client, certificate)) = handshake(&shared, stream, &name, address).await {
                let gateway_mode =
                    shared.config.load().listeners.iter().any(|l| l.name == name && l.mode == ListenerMode::Gateway);
                let peer = Peer { address, listener: name, certificate };
                if gateway_mode {
                    let user = peer.certificate.as_ref().map(|principal| principal.name.clone());
                    let connection = crate::shared::IdentifiedConnection::new(&shared, user);
                    let session = Session { shared, peer: Arc::new(peer), origin: Origin::Gateway, connection };
                    // Boxed: the task is sized for its largest branch, which a proxy connection should not carry.
                    Box::pin(crate::api::server::serve(Arc::new(session), client)).await;
                } else {
                    proxy::serve(shared, client, peer).await;
                }
            }
            drop(permit);
        });
    }
}

/// Plain listeners pass the socket through; TLS listeners complete the handshake (with the current snapshot's
/// certificate) and name the client certificate's principal. A failed handshake is counted and logged.
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    listener: &Arc<str>,
    address: std::net::SocketAddr,
) -> Option<(Stream, Option<crate::identity::Principal>)> {
    let config = shared.config.load_full();
    let Some(tls) = config.listeners.iter().find(|l| l.name == *listener).and_then(|l| l.tls.clone()) else {
        return Some((Stream::Tcp(tcp), None));
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
    let failure = match tokio::time::timeout(config.server.tls_handshake_timeout, accept).await {
        Ok(Ok(tls)) => {
            let client = Stream::TlsServer(Box::new(tls));
            let certificate = client.peer_certificate().and_then(|cert| {
                let principal = config.identity.certificate_principal(cert);
                if principal.is_none() {
                    tracing::warn!(listener = %listener, client = %address, "client certificate lacks the auth.mtls identity field");
                }
                principal
            });
            return Some((client, certificate));
        }
        Ok(Err(error)) => error,
        Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
    };
    let reason = handshake_failure_reason(&failure);
    shared.metrics.tls_handshake_failure(listener, reason);
    tracing::info!(listener = %listener, client = %address, reason, error = %failure, "TLS handshake failed");
    None
}

/// The metric label for a failed handshake, from the rustls error inside the I/O error.
fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => "client_certificate",
        _ => "protocol",
    }
}
