//! What the forward proxy writes to a client itself: the `200` that opens a tunnel, and refusals in the proxy's
//! error shape.

use tokio::io::AsyncWriteExt;

use crate::request::error::{Error, Shape};
use crate::request::finish::Exchange;
use crate::stream::Stream;

/// The answer to an allowed CONNECT.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Sends the answer to `error` in the proxy's shape (unless the client is gone) and records it on the exchange.
pub async fn refuse(client: &mut Stream, exchange: &mut Exchange, error: &Error, close: bool) {
    exchange.fail(error);
    if !matches!(error, Error::ClientClosed(_)) {
        let _ = client.write_all(&error.response(Shape::Proxy, &exchange.id, close)).await;
        let _ = client.flush().await;
    }
}
