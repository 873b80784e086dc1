//! The intercepted tunnel: an identified CONNECT to a host in `intercept.hosts` is answered by tollgate itself,
//! with a leaf minted from its own CA (`ca.rs`), and every request inside is served as a model-API request
//! (`api`), checked on its own, so a refusal reaches the developer as a readable Anthropic-shaped error instead of
//! a refused tunnel. The tunnel itself takes nothing from the limits: a cap counts the requests in flight, not
//! the idle tunnels a client keeps for them.

pub mod ca;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::api::session::{Origin, Session};
use crate::proxy::answers::ESTABLISHED;
use crate::request::door::Peer;
use crate::request::error::Error;
use crate::request::finish::Exchange;
use crate::shared::Shared;
use crate::stream::{Rewind, Stream};
use crate::target::Target;

/// An identified CONNECT to an intercepted host, with the TLS config of its leaf.
pub struct Interception {
    pub exchange: Exchange,
    pub tls: Arc<rustls::ServerConfig>,
}

/// The TLS server config for `target`: a leaf from the cache or freshly minted.
pub async fn server_config(shared: &Shared, target: &Target) -> Result<Arc<rustls::ServerConfig>, Error> {
    let Some(minter) = shared.minter.load_full() else {
        let reason = "no interception CA is loaded".to_owned();
        return Err(Error::Intercept { host: target.host.to_string(), reason });
    };
    let served = minter
        .leaf(&target.host)
        .await
        .map_err(|error| Error::Intercept { host: error.host.clone(), reason: error.reason.clone() })?;
    shared.metrics.leaf(served.minted);
    Ok(served.config)
}

/// Serves an intercepted tunnel to its end: the `200`, the TLS handshake with the minted leaf (bytes the client
/// already sent are read first), then the requests inside until the client closes, shutdown, or a reload denies
/// the tunnel. Returns the tunnel's exchange, to be recorded.
pub async fn serve_tunnel(
    shared: &Arc<Shared>,
    mut client: Stream,
    pending: BytesMut,
    interception: Interception,
    peer: &Peer,
) -> Exchange {
    let Interception { mut exchange, tls } = interception;
    let principal = exchange.principal.clone().expect("intercepted tunnels are identified");
    let target = exchange.target.clone().expect("intercepted tunnels have a target");
    exchange.upstream = Some("tollgate (intercepted)".to_owned());
    let registration = shared.register_tunnel(principal.clone(), target.clone());
    if client.write_all(ESTABLISHED).await.is_err() || client.flush().await.is_err() {
        exchange.error = Some("client closed before the tunnel opened".to_owned());
        return exchange;
    }
    exchange.status = 200;
    shared.metrics.tunnels_active.inc();
    let handshake_timeout = shared.config.load().server.tls_handshake_timeout;
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(Rewind::new(pending, client));
    let served = match tokio::time::timeout(handshake_timeout, accept).await {
        Ok(Ok(decrypted)) => {
            let origin = Origin::Tunnel { principal, target };
            // Filed under each request's user as well; the tunnel's own registration cuts it on deprovisioning.
            let connection = crate::shared::IdentifiedConnection::new(shared, None);
            let session = Session { shared: shared.clone(), peer: Arc::new(peer.clone()), origin, connection };
            tokio::select! {
                () = crate::api::server::serve(Arc::new(session), decrypted) => Ok(()),
                () = registration.cut.cancelled() => Err(Error::Revoked),
            }
        }
        Ok(Err(error)) => Err(Error::BadRequest(format!("TLS handshake inside the tunnel failed: {error}"))),
        Err(_) => Err(Error::BadRequest("TLS handshake inside the tunnel timed out".to_owned())),
    };
    shared.metrics.tunnels_active.dec();
    let revoked = registration.revoked();
    drop(registration);
    match served {
        Err(Error::Revoked) if !revoked => {
            shared.note_cut_tunnel();
            exchange.error = Some("cut at shutdown".to_owned());
        }
        Err(error) => exchange.fail(&error),
        Ok(()) => {}
    }
    exchange
}
