//! tollgate: an egress gateway for AI coding assistants.
//!
//! Life of a request, in module order:
//! `listener` accepts (connection cap) → `proxy` reads the head (`proxy::head`, strict) → `identity` names the
//! principal → `policy` decides on the `target` → `proxy::upstream` resolves, checks every address and dials
//! the checked one → `proxy::connect` splices a tunnel or `proxy::forward` relays a request → `proxy::mod`'s
//! `finish` writes metrics (`metrics`), a log line and the `audit` record. `config` builds the snapshot all of
//! this reads; `app` wires it and owns shutdown; `admin` serves metrics and health.
//! Outside the flow, `certs` makes the CAs and certificates that the TLS listener and mTLS clients use
//! (`tollgate ca init`, `tollgate cert server|client`), and `usage` sums the audit log into spend and tokens per
//! team, user and model (`tollgate usage`, `GET /admin/usage`).

pub mod admin;
pub mod app;
pub mod audit;
pub mod certs;
pub mod config;
pub mod exchange;
pub mod explain;
pub mod identity;
pub mod intercept;
pub mod limits;
pub mod listener;
pub mod llm;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod target;
pub mod tls;
pub mod usage;
