//! A connection of model-API requests served by hyper: HTTP/1.1 or h2, header limits, and the idle and head
//! timeouts hyper does not apply on its own (`idle`).

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::session::{Origin, Session};
use super::{handle, idle};

/// Bytes an h2 client may send on one stream, and on one connection, before tollgate reads them.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Requests one h2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 100;

/// Serves HTTP/1.1 or h2 (by ALPN or preface) on `io` until the client closes, the connection idles out
/// (`server.keepalive_timeout`, h2 included), an HTTP/1.1 request head is late (`server.header_read_timeout`) or
/// shutdown begins.
pub async fn serve<I>(session: Arc<Session>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = session.shared.config.load_full();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(!matches!(session.origin, Origin::Forward))
        .timer(TokioTimer::new())
        // Also bounds an idle keep-alive connection's wait for its next request.
        .header_read_timeout(config.server.keepalive_timeout.max(config.server.header_read_timeout))
        .max_buf_size(config.server.max_header_bytes.max(8192));
    // h2 bounds what a client may push before tollgate reads it: per stream, per connection, and streams at once.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.server.max_header_bytes as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS);
    // A connection closes at shutdown, and once the user its certificate or its latest request names is
    // deprovisioned (`handle` files it under each request's user): one token says both.
    let closing = session.connection.closing.clone();
    let activity = idle::Activity::new();
    let service_session = session.clone();
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        handle::handle(service_session.clone(), service_activity.begin(), request)
    });
    let connection = builder.serve_connection(TokioIo::new(activity.watch(io)), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = activity.expired(config.server.keepalive_timeout) => {
            tracing::debug!(listener = %session.peer.listener, client = %session.peer.address, "idle connection closed (server.keepalive_timeout)");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = activity.head_overdue(config.server.header_read_timeout) => {
            // A head that has not arrived cannot be answered: the connection is closed, as on the proxy listener.
            session.shared.metrics.client_error(&session.peer.listener, "header_timeout");
            tracing::debug!(listener = %session.peer.listener, client = %session.peer.address, "request head not received in time (server.header_read_timeout)");
            return;
        }
    };
    if let Err(error) = ended {
        // hyper answered a malformed request itself (400/431) or the connection broke: counted and logged.
        session.shared.metrics.client_error(&session.peer.listener, "http_error");
        tracing::debug!(listener = %session.peer.listener, client = %session.peer.address, %error, "connection ended with an error");
    }
}
