//! The Messages API side of tollgate: requests inside intercepted tunnels and on gateway listeners.
//!
//! Per request: host and path rules → model allowed for the team → DLP scan of the body → budget reservation
//! → route to an upstream → stream the response through while metering usage → settle the spend → audit.

pub mod dlp;
pub mod pricing;
pub mod client;
pub mod request;
pub mod settings;
pub mod usage;
