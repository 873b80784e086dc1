//! Accepting client connections: the connection cap, TCP options, and one tracked task per connection.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::Gateway;
use crate::proxy;
use crate::proxy::error::ProxyError;

/// Accepts on `socket` until shutdown; each connection is served by its own tracked task.
pub async fn accept_loop(gateway: Arc<Gateway>, socket: TcpListener, name: Arc<str>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = gateway.shutdown.stop_accepting.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: say so and keep accepting once descriptors free up.
                tracing::warn!(listener = %name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = gateway.connection_slots.clone().try_acquire_owned() else {
            gateway.metrics.client_error(&name, "connection_limit");
            // Best effort and non-blocking: the accept loop must not wait on a client.
            let refusal = ProxyError::ConnectionLimit(gateway.config.load().server.max_connections);
            let _ = stream.try_write(&refusal.response(&gateway.next_request_id(), true));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let name = name.clone();
        tracker.spawn(async move {
            proxy::serve(gateway, stream, peer, name).await;
            drop(permit);
        });
    }
}
