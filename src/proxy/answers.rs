//! What the forward proxy writes to a client itself: the `200` that opens a tunnel, and refusals in the proxy's
//! error shape.

use crate::request::error::{Error, Shape};
use crate::request::finish::{Exchange, Held};

/// The answer to an allowed CONNECT.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

/// Records `error` on the exchange and holds its answer in the proxy's shape (none when the client is gone): the
/// connection sends it once the exchange is recorded.
pub fn refuse(exchange: &mut Exchange, error: &Error, close: bool) {
    exchange.fail(error);
    if !matches!(error, Error::ClientClosed(_)) {
        exchange.held = Held::Answer(error.response(Shape::Proxy, &exchange.id, close));
    }
}
