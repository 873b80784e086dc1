//! What the harness shares with the integration tests (`tests/support/`): certificate making, the rustls configs,
//! and the Messages API's wire shapes (request body, message, SSE events).

#[path = "../../tests/support/messages.rs"]
pub mod messages;
#[path = "../../tests/support/pki.rs"]
pub mod pki;
#[path = "../../tests/support/tls.rs"]
pub mod tls;
