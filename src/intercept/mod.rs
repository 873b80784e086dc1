//! TLS interception: an allowed CONNECT to an intercepted host is answered by tollgate itself, with a leaf
//! minted from its own CA, and every request inside is checked and served like a gateway request
//! (`llm::serve`), so a refusal reaches the developer as a readable Anthropic-shaped error instead of a
//! refused tunnel.

pub mod ca;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::app::Gateway;
use crate::identity::Principal;
use crate::llm::{self, Origin, Session};
use crate::proxy::error::ProxyError;
use crate::proxy::stream::Stream;
use crate::proxy::Peer;
use crate::target::Target;

/// The TLS server config for `target`: a leaf from the cache or freshly minted.
pub async fn server_config(gateway: &Gateway, target: &Target) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let Some(minter) = gateway.minter.load_full() else {
        let reason = "no interception CA is loaded".to_owned();
        return Err(ProxyError::Intercept(ca::MintError { host: target.host.to_string(), reason }));
    };
    let served = minter.leaf(&target.host).await.map_err(ProxyError::Intercept)?;
    gateway.metrics.leaf(served.minted);
    Ok(served.config)
}

/// After the `200` to the CONNECT: the TLS handshake as `target` (bytes the client already sent are read
/// first), then the requests inside, until the client closes, shutdown, or `cut` (a reload denied the tunnel).
pub async fn serve(
    gateway: &Arc<Gateway>,
    client: Stream,
    pending: BytesMut,
    tls: Arc<rustls::ServerConfig>,
    peer: &Peer,
    tunnel: (Principal, Target),
    cut: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let handshake_timeout = gateway.config.load().server.tls_handshake_timeout;
    let io = Rewind { pending, inner: client };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(io);
    let decrypted = match tokio::time::timeout(handshake_timeout, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(format!("TLS handshake inside the tunnel failed: {error}")),
        Err(_) => return Err("TLS handshake inside the tunnel timed out".to_owned()),
    };
    let (principal, target) = tunnel;
    let session = Arc::new(Session {
        gateway: gateway.clone(),
        peer: Arc::new(peer.clone()),
        origin: Origin::Tunnel { principal, target },
    });
    tokio::select! {
        () = llm::serve(session, decrypted) => Ok(()),
        () = cut.cancelled() => Err("closed: the reloaded config denies this tunnel".to_owned()),
    }
}

/// The client stream with the bytes already read from it put back in front.
struct Rewind {
    pending: BytesMut,
    inner: Stream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            let take = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..take]);
            this.pending.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
