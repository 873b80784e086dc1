//! The phases every request runs, whichever door it came through (a CONNECT, an absolute-form request, a request
//! inside an intercepted tunnel, a request on a gateway listener; HTTP/1.1 or h2), in this fixed order:
//!
//! ```text
//! admit (admit.rs)         1 identify → 2 audit health → 3 destination (policy, team hours and deny rules,
//!                          route, resolved addresses) → 4 limits
//! model (model.rs)         5 path (canonical) → 6 body → 7 model → 8 DLP → 9 budget      — model-API requests only
//! ... the door forwards the request (a tunnel, a relayed response, a metered stream) ...
//! finish (finish.rs)       metrics, one log line, one audit record — always, on allow, deny and error
//! ```
//!
//! A refusal at any phase is one `Error`, answered in the door's wire shape (`error.rs`); the hop-by-hop headers
//! that never travel on are listed once (`headers.rs`). The doors live in `proxy` (CONNECT, absolute-form),
//! `intercept` (intercepted tunnels) and `api` (the model-API requests of every door); nothing here imports them.
//! Items are imported from the file that defines them (`request::error::Error`): this file re-exports nothing,
//! so the file-level import graph stays free of cycles.

pub mod admit;
pub mod door;
pub mod error;
pub mod finish;
pub mod headers;
pub mod model;
pub mod path;
