//! tollgate: an egress gateway for AI coding assistants.
//!
//! Life of a request, in module order:
//! `listener` accepts (connection cap, TLS) → `proxy` reads the head (`proxy::head`, strict) → `identity` names
//! the principal → `policy` decides on the `target` → `limits` admits it → then one of:
//! - a pass-through CONNECT: `proxy::upstream` resolves, checks every address and dials the checked one, and
//!   `proxy::connect` splices the tunnel; an absolute-form request is relayed by `proxy::forward`;
//! - a CONNECT to an intercepted host: `intercept` answers TLS with a minted leaf (`intercept::ca`) and hands
//!   each request inside to `llm`, which gateway listeners (`mode: gateway`) reach directly: path, model, DLP
//!   (`llm::dlp`), budget (`limits::budget`), route (`llm::settings`), the upstream (`llm::client`), and the
//!   response streamed back and metered (`llm::body`, `llm::usage`, `llm::pricing`).
//!
//! Whatever happened, `exchange::finish` writes metrics (`metrics`), a log line and the `audit` record last.
//! `config` builds the snapshot all of this reads; `app` wires it and owns reload and shutdown; `admin` serves
//! metrics, health, reload and usage. Outside the flow, `certs` makes the CAs and certificates
//! (`tollgate ca init`, `tollgate cert server|client`), `explain` answers what the policy would do, and `usage`
//! sums the audit log into spend and tokens per team, user and model (`tollgate usage`, `GET /admin/usage`).

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
