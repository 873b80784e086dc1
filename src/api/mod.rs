//! Model-API requests, whichever door they came through: inside an intercepted tunnel, on a gateway listener, or
//! sent to the proxy in absolute form for a host in `intercept.hosts`. One connection is served by hyper
//! (HTTP/1.1 or h2); each request runs the phases of `request` (`handle.rs`), and its response is streamed back
//! and metered as it passes (`body.rs`). Refusals are answered in the Anthropic error shape, which Claude Code
//! shows its user verbatim.

pub mod actions;
pub mod body;
pub mod checksum;
pub mod handle;
pub mod idle;
pub mod server;
pub mod session;
pub mod settings;
pub mod telemetry;
