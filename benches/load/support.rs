//! What the harness shares with the integration tests (`tests/support/`): certificate making, the rustls configs,
//! the Messages API's wire shapes (request body, message, SSE events), and the SIEM receivers.

#[path = "../../tests/support/messages.rs"]
pub mod messages;
#[path = "../../tests/support/pki.rs"]
pub mod pki;
// The harness uses the receivers counting only; the record-keeping side is the tests'.
#[allow(dead_code)]
#[path = "../../tests/support/siem.rs"]
pub mod siem;
#[path = "../../tests/support/tls.rs"]
pub mod tls;
