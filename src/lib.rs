//! tollgate: an egress gateway for AI coding assistants.
//!
//! Life of a request, in module order:
//! `listener` accepts (connection cap, TLS with the client certificate's principal) and hands the connection to a
//! door: `proxy` (CONNECT and absolute-form requests, heads read strictly by `http1`), `intercept` (a CONNECT to a
//! model host, answered with a minted leaf) or `api` (the model-API requests inside intercepted tunnels, on gateway
//! listeners, and sent in absolute form to a model host). Every door runs the same phases, in one order, from
//! `request`: identify (`identity`) → audit health → destination (`policy` on the `target`) → limits (`limits`) →
//! for model-API requests: path, body, model, DLP (`llm::dlp`), budget (`limits::budget`). Then `upstream` resolves,
//! checks every address and dials the checked one (directly, through the parent proxy, or from the pooled model
//! client), and the response streams back; model responses are metered as they pass (`llm::usage`,
//! `llm::pricing`) and the spend settled.
//!
//! Whatever happened, `request::finish` writes metrics (`metrics`), a log line and the `audit` record last.
//! `config` builds the snapshot all of this reads, `shared` is the state every connection holds, `reload` swaps
//! the snapshot, `app` wires it all and owns shutdown; `admin` serves metrics, health, reload, usage and sessions, and
//! `console` the web console at `/ui` on the same listener. `devpage` answers the reserved developer page host through
//! the proxy instead of forwarding it, and keeps each user's latest refusals for it.
//! Outside the flow, `lockfile` keeps one tollgate per audit file, SIEM spool and spend ledger, `certs` makes the CAs and certificates (`tollgate ca init`, `tollgate cert server|client`),
//! `explain` answers what the policy would do, `doctor` checks a developer machine's path to the model API, `fleet`
//! keeps the inventory of clients seen (beside the limits, in
//! the state backend), and the reports read the audit log back (`report` holds what they
//! share): `usage` sums it into spend and tokens per team, user and model, `sessions` into what each
//! coding-assistant session did.

pub mod actions;
pub mod admin;
pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod certs;
pub mod config;
pub mod console;
pub mod devpage;
pub mod doctor;
pub mod enroll;
pub mod explain;
pub mod fleet;
pub mod http1;
pub mod identity;
pub mod intercept;
pub mod limits;
pub mod listener;
pub mod llm;
pub mod lockfile;
pub mod logging;
pub mod login;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod request;
pub mod scim;
pub mod sessions;
pub mod shared;
pub mod stream;
pub mod target;
pub mod tls;
pub mod upstream;
pub mod usage;
