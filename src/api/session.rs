//! One client connection of model-API requests: the shared state, who is at the other end, and the door.

use std::sync::Arc;

use crate::identity::Principal;
use crate::request::door::{Door, Peer};
use crate::shared::{IdentifiedConnection, Shared};
use crate::target::Target;

/// Where a connection's requests come from.
#[derive(Debug)]
pub enum Origin {
    /// Inside an intercepted tunnel: the principal and destination the CONNECT established.
    Tunnel { principal: Principal, target: Target },
    /// A gateway listener (`mode: gateway`): each request identifies itself.
    Gateway,
    /// One absolute-form request to a model host on a proxy listener: it names its host and carries the proxy's
    /// credentials; the connection closes after it.
    Forward,
}

/// One client connection served here.
#[derive(Debug)]
pub struct Session {
    pub shared: Arc<Shared>,
    pub peer: Arc<Peer>,
    pub origin: Origin,
    /// The client connection, filed under its users so that deprovisioning closes it.
    pub connection: Arc<IdentifiedConnection>,
}

impl Session {
    /// The door its requests came through.
    pub fn door(&self) -> Door {
        match self.origin {
            Origin::Tunnel { .. } => Door::Intercepted,
            Origin::Gateway => Door::Gateway,
            Origin::Forward => Door::Forward,
        }
    }
}
