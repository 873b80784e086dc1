//! How a request arrived: the door (a CONNECT, an absolute-form request, a request inside an intercepted tunnel,
//! or one on a gateway listener) and who is at the other end of the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use super::error::Shape;
use crate::identity::Principal;

/// The ways into tollgate; the `kind` of audit records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `CONNECT host:port` on a proxy listener.
    Connect,
    /// An absolute-form request (`GET http://host/…`, `POST https://host/…`) on a proxy listener.
    Forward,
    /// A request inside an intercepted tunnel.
    Intercepted,
    /// A request on a gateway listener (`mode: gateway`).
    Gateway,
}

impl Door {
    /// `connect`, `http`, `intercepted` or `gateway`: the `kind` field and label.
    pub fn label(self) -> &'static str {
        match self {
            Door::Connect => "connect",
            Door::Forward => "http",
            Door::Intercepted => "intercepted",
            Door::Gateway => "gateway",
        }
    }

    /// The shape of tollgate's answers at this door; `model` when the request is a model-API request.
    pub fn shape(self, model: bool) -> Shape {
        match self {
            Door::Connect => Shape::Proxy,
            Door::Forward if model => Shape::ProxiedApi,
            Door::Forward => Shape::Proxy,
            Door::Intercepted | Door::Gateway => Shape::Api,
        }
    }
}

/// Who is at the other end of a client connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    pub listener: Arc<str>,
    /// The principal of a verified client certificate (TLS listeners with `client_auth`).
    pub certificate: Option<Principal>,
}
