//! tollgate's integration suite, one test binary: each module drives the real gateway (or the real `tollgate`
//! binary) on 127.0.0.1:0 with real clients and real origins. One binary links once and shares one harness, so
//! the harness carries no code that no test uses.

mod common;

mod actions;
mod actions_clients;
mod actions_enforce;
mod actions_rules;
mod alerts;
mod audit_rotate;
mod audit_sink;
mod auth;
mod bounded;
mod budgets;
mod budgets_e2e;
mod certs;
mod cli;
mod config_errors;
mod console;
mod console_oidc;
mod deploy;
mod destinations;
mod explain;
mod fleet;
mod gateway;
mod http_framing;
mod intercept;
mod jwt;
mod layout;
mod limits;
mod managed_settings;
mod messages_stub;
mod monitoring;
mod observability;
mod oidc;
mod one_way_in;
mod parent_proxy;
mod redis_limits;
mod reload;
mod replicas;
mod scim;
mod sessions;
mod siem;
mod sni;
mod spend;
mod sso_login;
mod teams;
mod tls_listener;
mod upstream_trust;
mod usage;
