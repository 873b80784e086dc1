//! The forward proxy's doors: one task per client connection, one pass of the pipeline per request.
//!
//! ```text
//! read head (http1::head, strict) ─┬─ CONNECT      → connect.rs: admit, resolve, check, dial, splice
//!                                  │                 (an intercepted host: identify, then intercept::serve_tunnel)
//!                                  ├─ absolute-form → forward.rs: admit, pooled upstream, relay the response
//!                                  │                 (a model host: api::server::serve, the model-API phases)
//!                                  └─ origin-form on the auth.enroll listener → enroll::serve (POST /enroll)
//! ```
//! Whatever happened, the request is recorded once, by `request::finish`, before the next is read; what the
//! client is still owed (a refusal, a response's last bytes) is sent after that (`finish::Held`).

pub mod answers;
pub mod connect;
pub mod forward;
pub mod sni;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::api::session::{Origin, Session};
use crate::audit::Release;
use crate::config::Config;
use crate::http1::head::{read_head, HeadError, HeadLimits, RequestHead};
use crate::intercept;
use crate::request::door::{Door, Peer};
use crate::request::error::Error;
use crate::request::finish::{finish, Exchange};
use crate::shared::{IdentifiedConnection, Shared};
use crate::stream::{Rewind, Stream};
use connect::Tunnelled;
use forward::Relayed;

/// Serves one client connection until it closes, idles out, fails, or becomes a tunnel.
pub async fn serve(shared: Arc<Shared>, mut client: Stream, peer: Peer) {
    let listener = peer.listener.clone();
    let _active = shared.metrics.connection_opened(&listener);
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    // A connection closes between requests once the user its certificate or its latest request names is
    // deprovisioned, or shutdown begins.
    let identified = IdentifiedConnection::new(&shared, peer.certificate.as_ref().map(|p| p.name.clone()));
    let closing = identified.closing.clone();
    loop {
        if !first && buf.is_empty() {
            // Wait for the next request by reading (not by socket readiness: TLS may hold decrypted bytes).
            let keepalive_timeout = shared.config.load().server.keepalive_timeout;
            let wait = tokio::time::timeout(keepalive_timeout, client.read_buf(&mut buf));
            tokio::select! {
                read = wait => if !matches!(read, Ok(Ok(1..))) { return },
                // Deprovisioned, or shutdown began.
                () = closing.cancelled() => return,
            }
        }
        first = false;
        // Loaded once the request has begun to arrive: a reload while the connection was idle applies to it.
        let config = shared.config.load_full();
        let head = match read_request_head(&shared, &config, &mut client, &mut buf, &peer).await {
            Some(head) => head,
            None => return,
        };
        let (exchange, keep_alive) = if head.method() == "CONNECT" {
            match connect::tunnel(&shared, &config, &mut client, &mut buf, head, &peer).await {
                Tunnelled::Done { exchange, keep_alive } => (exchange, keep_alive),
                Tunnelled::Intercept(interception) => {
                    // Boxed, as are the other rarely taken branches below: the task of every connection is sized for
                    // its largest state, and an idle tunnel should not carry a hyper server's.
                    let exchange = Box::pin(intercept::serve_tunnel(&shared, client, buf, *interception, &peer)).await;
                    // The tunnel has ended: its record is written before the connection closes.
                    let _ = finish(&shared, &peer, exchange).await;
                    return;
                }
            }
        } else if let Some(enrollment) =
            config.enroll.as_ref().filter(|e| e.listener == peer.listener && head.target().starts_with('/'))
        {
            // Origin-form to the enrollment listener itself: `POST /enroll` (`auth.enroll`).
            Box::pin(crate::enroll::serve(&shared, &config, enrollment, &mut client, &mut buf, head, peer.address.ip()))
                .await
        } else {
            match forward::forward(&shared, &config, &mut client, &mut buf, head, &peer).await {
                Relayed::Done { exchange, keep_alive } => (exchange, keep_alive),
                Relayed::ModelRequest(head) => {
                    // hyper reads the request again, from its first byte, and serves it with the model-API phases.
                    let mut replay = BytesMut::from(&head.raw()[..]);
                    replay.extend_from_slice(&buf);
                    let session = Session {
                        shared: shared.clone(),
                        peer: Arc::new(peer),
                        origin: Origin::Forward,
                        connection: identified,
                    };
                    return Box::pin(crate::api::server::serve(Arc::new(session), Rewind::new(replay, client))).await;
                }
            }
        };
        if let Some(principal) = &exchange.principal {
            identified.identify(&principal.name);
        }
        if !record_and_answer(&shared, &peer, &mut client, exchange).await || !keep_alive {
            return;
        }
    }
}

/// Records the exchange (`request::finish`), then sends the client what the door held back: a refusal, or the end
/// of a relayed response. False when the connection must close without it: shutdown stopped waiting for the
/// record (`audit.on_failure: block`), or the client is gone.
async fn record_and_answer(shared: &Shared, peer: &Peer, client: &mut Stream, mut exchange: Exchange) -> bool {
    let held = std::mem::take(&mut exchange.held);
    match finish(shared, peer, exchange).await {
        Release::Complete => held.send(client).await.is_ok(),
        Release::Cut => false,
    }
}

/// Reads and parses the next request head. A malformed or oversized head is answered, recorded and ends the
/// connection (`None`), as does a closed or failed read.
async fn read_request_head(
    shared: &Shared,
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    peer: &Peer,
) -> Option<RequestHead> {
    let limits = HeadLimits {
        max_head: config.server.max_header_bytes,
        max_uri: config.server.max_uri_bytes,
        timeout: config.server.header_read_timeout,
    };
    let head = match read_head(client, buf, limits).await {
        Ok(length) => RequestHead::parse(buf.split_to(length).freeze(), limits.max_uri),
        Err(error) => Err(error),
    };
    let error = match head {
        Ok(head) => return Some(head),
        Err(HeadError::Closed) => return None,
        Err(HeadError::Io(_)) => {
            shared.metrics.client_error(&peer.listener, "read_error");
            return None;
        }
        Err(HeadError::Timeout) => Error::HeadTimeout(limits.timeout),
        Err(HeadError::TooLarge) => Error::HeadTooLarge(limits.max_head),
        Err(HeadError::UriTooLong) => Error::UriTooLong(limits.max_uri),
        Err(other) => Error::BadRequest(other.to_string()),
    };
    shared.metrics.client_error(&peer.listener, error.kind());
    let mut exchange = Exchange::new(shared.next_request_id(), Door::Forward);
    answers::refuse(&mut exchange, &error, true);
    record_and_answer(shared, peer, client, exchange).await;
    None
}
