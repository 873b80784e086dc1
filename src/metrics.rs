//! Typed Prometheus handles: the metric names of DESIGN.md, registered once per process.
//!
//! Labels never carry user names. Each running gateway owns its registry, so tests can run several gateways in
//! one process and read each one's numbers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::RwLock;

use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::llm::usage::Usage;

/// Every metric tollgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// A request's two handles by its label values, and a metered response's five: looked up once per distinct
    /// values, not in the registry (a hash of every label, a lock, a map) for each handle of every request.
    request_handles: Resolved<RequestHandles>,
    metered_handles: Resolved<MeteredHandles>,
    connections_active: IntGaugeVec,
    pub tunnels_active: IntGauge,
    upstream_pooled: IntGaugeVec,
    bytes_up: IntCounter,
    bytes_down: IntCounter,
    auth_failures: IntCounterVec,
    upstream_errors: IntCounterVec,
    audit_records: IntCounterVec,
    audit_torn_lines: IntCounterVec,
    audit_queued: IntGaugeVec,
    audit_healthy: IntGaugeVec,
    /// Audit files rotated, deleted by `audit.file.retention`, and checkpoints written.
    pub audit_rotations: IntCounter,
    pub audit_files_deleted: IntCounter,
    pub audit_checkpoints: IntCounter,
    client_errors: IntCounterVec,
    console_sign_ins: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    state_errors: IntCounterVec,
    config_reloads: IntCounterVec,
    tokens: IntCounterVec,
    cost_usd: CounterVec,
    budget_used_ratio: GaugeVec,
    dlp_blocks: IntCounterVec,
    actions: IntCounterVec,
    dlp_matches: IntCounterVec,
    leaves: IntCounterVec,
    scim_requests: IntCounterVec,
    password_checks: IntCounterVec,
    oidc_refreshes: IntCounterVec,
    enrollments: IntCounterVec,
    log_lines_dropped: IntCounter,
    state_spend_pending: IntGauge,
    state_spend_dropped: IntCounter,
    telemetry_dropped: IntCounterVec,
    clients: IntGaugeVec,
    managed_settings_current: GaugeVec,
    alerts: IntCounterVec,
    alert_events_dropped: IntCounter,
    siem_spool_bytes: IntGaugeVec,
    siem_sent: IntCounterVec,
    siem_errors: IntCounterVec,
    siem_dropped: IntCounterVec,
}

/// One SIEM sink's handles, held by its spool and its delivery.
#[derive(Debug, Clone)]
pub struct SiemMetrics {
    /// Undelivered bytes in the spool.
    pub spool_bytes: IntGauge,
    /// Records the SIEM accepted.
    pub sent: IntCounter,
    /// Failed delivery attempts.
    pub errors: IntCounter,
    /// Records given up: dropped from a full spool (`on_full: drop_oldest`) or refused by the SIEM as invalid.
    pub dropped: IntCounter,
}

/// What one `POST /enroll` came to, for `tollgate_enrollments_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// A certificate was issued.
    Issued,
    /// No valid token.
    Unauthenticated,
    /// A bad request: the method, path, body or CSR.
    Invalid,
}

impl Enrollment {
    const ALL: [Enrollment; 3] = [Enrollment::Issued, Enrollment::Unauthenticated, Enrollment::Invalid];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Enrollment::Issued => "issued",
            Enrollment::Unauthenticated => "unauthenticated",
            Enrollment::Invalid => "invalid",
        }
    }
}

/// Counts kept outside the registry (by the log writer and the password verifiers), copied in when rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampled {
    pub log_lines_dropped: u64,
    /// Spend settlements the state backend waits to make again, and those it dropped.
    pub state_spend: crate::limits::SpendBacklog,
    /// argon2id checks run.
    pub password_checks_run: u64,
    /// Checks refused because every verifier was busy and the queue full.
    pub password_checks_refused: u64,
    /// Fetches of the OpenID Connect provider's keys that succeeded and that failed (`auth.oidc`).
    pub oidc_refresh_ok: u64,
    pub oidc_refresh_error: u64,
    /// The audit sink, when there is one.
    pub audit: Option<AuditSample>,
    /// Upstream connections the pools hold: the forward proxy's idle ones, the model client's open ones.
    pub upstream_pooled_forward: u64,
    pub upstream_pooled_model: u64,
}

/// The audit sink as it is when the metrics are rendered.
#[derive(Debug, Clone, Copy)]
pub struct AuditSample {
    pub sink: &'static str,
    /// Records queued or being written.
    pub queued: u64,
    pub healthy: bool,
}

/// Requests and tunnels counted since start, summed over listeners and reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestTotals {
    /// Requests (every kind but `connect`).
    pub requests: u64,
    /// Tunnels (`kind="connect"`).
    pub tunnels: u64,
    /// Requests and tunnels with `decision="deny"`.
    pub denials: u64,
    /// Requests and tunnels with `decision="error"`.
    pub errors: u64,
}

/// One finished request, as counted.
pub struct RequestOutcome<'a> {
    pub listener: &'a str,
    pub kind: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
    pub seconds: f64,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let requests = counter(
            "tollgate_requests_total",
            "Requests and tunnels by listener, kind, decision and reason.",
            &["listener", "kind", "decision", "reason"],
        );
        let bytes = counter("tollgate_bytes_total", "Bytes relayed, by direction (up = to upstream).", &["direction"]);
        let auth_failures =
            counter("tollgate_auth_failures_total", "Failed proxy authentications by method.", &["method"]);
        let upstream_errors = counter("tollgate_upstream_errors_total", "Upstream failures by kind.", &["kind"]);
        let audit_records = counter(
            "tollgate_audit_records_total",
            "Audit records by sink and result: ok (written), dropped (the queue was full; audit.on_failure: continue, \
             or a refusal because the sink could not take records).",
            &["sink", "result"],
        );
        let audit_torn_lines = counter(
            "tollgate_audit_torn_lines_total",
            "Torn ends of the audit file (a write cut short by a crash) set aside when it was opened.",
            &["sink"],
        );
        let client_errors = counter(
            "tollgate_client_errors_total",
            "Client connections refused or cut before a request: timeouts, malformed heads, limits.",
            &["listener", "reason"],
        );
        let console_sign_ins = counter(
            "tollgate_console_sign_ins_total",
            "Sign-ins to the web console by method (token, oidc) and result (ok, or why it was refused).",
            &["method", "result"],
        );
        let tls_handshake_failures = counter(
            "tollgate_tls_handshake_failures_total",
            "Failed TLS handshakes on TLS listeners, by reason (timeout, client_certificate, protocol).",
            &["listener", "reason"],
        );
        let rate_limited = counter(
            "tollgate_rate_limited_total",
            "Requests refused by a rate or concurrency limit, by scope.",
            &["scope"],
        );
        let state_errors = counter(
            "tollgate_state_errors_total",
            "Limit checks that could not reach the state backend.",
            &["backend"],
        );
        let config_reloads =
            counter("tollgate_config_reloads_total", "Config reloads by result (ok, error).", &["result"]);
        // Both results from the start: the first refused reload is then an increase that alerting rules see, not a
        // new series.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let tokens = counter(
            "tollgate_tokens_total",
            "Metered tokens by team, model and type (input, output, cache_creation, cache_read).",
            &["team", "model", "type"],
        );
        let dlp_blocks =
            counter("tollgate_dlp_blocks_total", "Requests blocked by a DLP detector, by detector.", &["detector"]);
        let actions = counter(
            "tollgate_actions_total",
            "Agent actions (tool calls) read from model responses, by team, action (tool:* for tools outside the \
             table) and decision (allow, alert, would_deny, deny).",
            &["team", "action", "decision"],
        );
        let dlp_matches = counter(
            "tollgate_dlp_matches_total",
            "DLP detector matches (blocked or logged), by detector.",
            &["detector"],
        );
        let leaves = counter(
            "tollgate_intercept_leaves_total",
            "Interception certificates served, by source (minted, cached).",
            &["source"],
        );
        let scim_requests = counter(
            "tollgate_scim_requests_total",
            "SCIM provisioning requests, by resource (users, groups, discovery), operation and result.",
            &["resource", "operation", "result"],
        );
        let password_checks = counter(
            "tollgate_password_checks_total",
            "argon2id password checks, by result: run, or refused because every verifier was busy (503).",
            &["result"],
        );
        let oidc_refreshes = counter(
            "tollgate_oidc_refresh_total",
            "Fetches of the OpenID Connect provider's discovery document and keys (auth.oidc), by result: ok, or \
             error (unreachable, refused or malformed; the keys fetched before stay in use).",
            &["result"],
        );
        for result in ["ok", "error"] {
            oidc_refreshes.with_label_values(&[result]);
        }
        let enrollments = counter(
            "tollgate_enrollments_total",
            "Client certificate enrollments (auth.enroll, POST /enroll), by result: issued, unauthenticated (no valid \
             token), or invalid (a bad request or CSR).",
            &["result"],
        );
        for result in Enrollment::ALL {
            enrollments.with_label_values(&[result.label()]);
        }
        let telemetry_dropped = counter(
            "tollgate_telemetry_dropped_total",
            "Telemetry calls answered inside intercepted tunnels and not forwarded (intercept.telemetry: drop), by \
             endpoint (event_logging, metrics, metrics_enabled, feature_flags).",
            &["endpoint"],
        );
        let log_lines_dropped = IntCounter::new(
            "tollgate_log_lines_dropped_total",
            "Log lines dropped because stderr did not keep up and the log buffer was full.",
        )
        .expect("valid metric");
        registry.register(Box::new(log_lines_dropped.clone())).expect("unique metric");
        let state_spend_pending = IntGauge::new(
            "tollgate_state_spend_pending",
            "Spend settlements the state backend could not make yet; sent again until it answers.",
        )
        .expect("valid metric");
        registry.register(Box::new(state_spend_pending.clone())).expect("unique metric");
        let state_spend_dropped = IntCounter::new(
            "tollgate_state_spend_dropped_total",
            "Spend settlements dropped because too many waited for the state backend.",
        )
        .expect("valid metric");
        registry.register(Box::new(state_spend_dropped.clone())).expect("unique metric");
        let cost_usd = CounterVec::new(
            Opts::new("tollgate_cost_usd_total", "Metered cost in USD by team and model."),
            &["team", "model"],
        )
        .expect("valid metric");
        registry.register(Box::new(cost_usd.clone())).expect("unique metric");
        let budget_used_ratio = GaugeVec::new(
            Opts::new("tollgate_budget_used_ratio", "Spend over budget of each team's tightest budget."),
            &["team"],
        )
        .expect("valid metric");
        registry.register(Box::new(budget_used_ratio.clone())).expect("unique metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("tollgate_request_duration_seconds", "Request and tunnel duration by kind.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0]),
            &["kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(request_duration.clone())).expect("unique metric");
        let connections_active = IntGaugeVec::new(
            Opts::new("tollgate_connections_active", "Open client connections by listener."),
            &["listener"],
        )
        .expect("valid metric");
        registry.register(Box::new(connections_active.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let metric = IntGaugeVec::new(Opts::new(name, help), &["sink"]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let audit_queued = gauge(
            "tollgate_audit_queued_records",
            "Audit records queued or being written, by sink (at most audit.queue).",
        );
        let audit_healthy = gauge(
            "tollgate_audit_sink_healthy",
            "1 while the audit sink takes records, 0 while it fails, stalls or its queue is full.",
        );
        let clients = IntGaugeVec::new(
            Opts::new(
                "tollgate_clients",
                "Users seen in the last 24 hours per client and version (from User-Agent); past the busiest \
                 fleet::CLIENT_SERIES pairs the rest are counted as client=\"other\".",
            ),
            &["client", "version"],
        )
        .expect("valid metric");
        registry.register(Box::new(clients.clone())).expect("unique metric");
        let managed_settings_current = GaugeVec::new(
            Opts::new(
                "tollgate_managed_settings_current_ratio",
                "Of the users seen in the last 24 hours who have managed settings, the share whose last delivered \
                 settings and policy limits are the current ones; absent without managed settings.",
            ),
            &[],
        )
        .expect("valid metric");
        registry.register(Box::new(managed_settings_current.clone())).expect("unique metric");
        let alerts = counter(
            "tollgate_alerts_total",
            "Alerts by rule, sink and result: sent, failed (delivery gave up), suppressed (within the rule's cooldown \
             for the same key, or already raised by another replica).",
            &["rule", "sink", "result"],
        );
        let alert_events_dropped = IntCounter::new(
            "tollgate_alert_events_dropped_total",
            "Events the alert rules did not see because the alert engine's queue was full.",
        )
        .expect("valid metric");
        registry.register(Box::new(alert_events_dropped.clone())).expect("unique metric");
        let plain_counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let audit_rotations =
            plain_counter("tollgate_audit_rotations_total", "Audit files rotated (audit.file.rotate: size or daily).");
        let audit_files_deleted = plain_counter(
            "tollgate_audit_files_deleted_total",
            "Rotated audit files deleted because they were older than audit.file.retention.",
        );
        let audit_checkpoints =
            plain_counter("tollgate_audit_checkpoints_total", "Signed audit checkpoints written (audit.checkpoints).");
        let siem_spool_bytes = IntGaugeVec::new(
            Opts::new("tollgate_siem_spool_bytes", "Undelivered bytes in each SIEM sink's spool."),
            &["sink"],
        )
        .expect("valid metric");
        registry.register(Box::new(siem_spool_bytes.clone())).expect("unique metric");
        let siem_sent = counter("tollgate_siem_sent_total", "Audit records a SIEM sink accepted, by sink.", &["sink"]);
        let siem_errors = counter(
            "tollgate_siem_errors_total",
            "Failed SIEM deliveries (connection, TLS, timeout, refusal), by sink; each is retried.",
            &["sink"],
        );
        let siem_dropped = counter(
            "tollgate_siem_dropped_total",
            "Audit records a SIEM sink will never get, by sink: dropped from a full spool (on_full: drop_oldest) or \
             refused by the SIEM as invalid.",
            &["sink"],
        );
        let tunnels_active = IntGauge::new("tollgate_tunnels_active", "Open CONNECT tunnels.").expect("valid metric");
        registry.register(Box::new(tunnels_active.clone())).expect("unique metric");
        let upstream_pooled = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_pooled_connections",
                "Upstream connections held by a pool: idle ones kept for reuse (pool=forward), open ones of the \
                 model client, idle or carrying requests (pool=model).",
            ),
            &["pool"],
        )
        .expect("valid metric");
        registry.register(Box::new(upstream_pooled.clone())).expect("unique metric");
        Self {
            registry,
            requests,
            request_duration,
            request_handles: Resolved::default(),
            metered_handles: Resolved::bounded(MODEL_SERIES_MAX, OTHER_MODEL),
            connections_active,
            tunnels_active,
            upstream_pooled,
            bytes_up: bytes.with_label_values(&["up"]),
            bytes_down: bytes.with_label_values(&["down"]),
            auth_failures,
            upstream_errors,
            audit_records,
            audit_torn_lines,
            audit_queued,
            audit_healthy,
            audit_rotations,
            audit_files_deleted,
            audit_checkpoints,
            client_errors,
            console_sign_ins,
            tls_handshake_failures,
            rate_limited,
            state_errors,
            config_reloads,
            tokens,
            cost_usd,
            budget_used_ratio,
            dlp_blocks,
            actions,
            dlp_matches,
            leaves,
            scim_requests,
            password_checks,
            oidc_refreshes,
            enrollments,
            log_lines_dropped,
            state_spend_pending,
            state_spend_dropped,
            telemetry_dropped,
            clients,
            managed_settings_current,
            alerts,
            alert_events_dropped,
            siem_spool_bytes,
            siem_sent,
            siem_errors,
            siem_dropped,
        }
    }

    /// The handles of SIEM sink `sink`, registered at 0 (so `/metrics` shows them from the first scrape).
    pub fn siem(&self, sink: &str) -> SiemMetrics {
        SiemMetrics {
            spool_bytes: self.siem_spool_bytes.with_label_values(&[sink]),
            sent: self.siem_sent.with_label_values(&[sink]),
            errors: self.siem_errors.with_label_values(&[sink]),
            dropped: self.siem_dropped.with_label_values(&[sink]),
        }
    }

    /// Counts one answer of the enrollment endpoint.
    pub fn enrollment(&self, result: Enrollment) {
        self.enrollments.with_label_values(&[result.label()]).inc();
    }

    /// Counts one telemetry call answered without forwarding; `endpoint` is one of a fixed set.
    pub fn telemetry_dropped(&self, endpoint: &str) {
        self.telemetry_dropped.with_label_values(&[endpoint]).inc();
    }

    /// Sets the fleet gauges: users per client and version (the previous pairs are cleared first), and the
    /// share of users on the current managed settings (`None`: the gauge is not exported).
    pub fn fleet(&self, clients: &[(String, String, i64)], current_ratio: Option<f64>) {
        self.clients.reset();
        for (client, version, users) in clients {
            self.clients.with_label_values(&[client, version]).set(*users);
        }
        match current_ratio {
            Some(ratio) => self.managed_settings_current.with_label_values::<&str>(&[]).set(ratio),
            None => self.managed_settings_current.reset(),
        }
    }

    pub fn request(&self, outcome: RequestOutcome<'_>) {
        let labels = [outcome.listener, outcome.kind, outcome.decision, outcome.reason];
        self.request_handles.with(
            &labels,
            |labels| RequestHandles {
                requests: self.requests.with_label_values(labels),
                duration: self.request_duration.with_label_values(&[outcome.kind]),
            },
            |handles| {
                handles.requests.inc();
                handles.duration.observe(outcome.seconds);
            },
        );
    }

    /// Counts an open client connection until the returned guard is dropped.
    pub fn connection_opened(&self, listener: &str) -> ActiveConnection {
        let gauge = self.connections_active.with_label_values(&[listener]);
        gauge.inc();
        ActiveConnection(gauge)
    }

    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.inc_by(up);
        self.bytes_down.inc_by(down);
    }

    pub fn auth_failure(&self, method: &str) {
        self.auth_failures.with_label_values(&[method]).inc();
    }

    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    /// The counter of `sink`'s records with `result` (ok, dropped), held by the sink so that counting costs no
    /// lookup.
    pub fn audit_counter(&self, sink: &str, result: &str) -> IntCounter {
        self.audit_records.with_label_values(&[sink, result])
    }

    /// The counter of `sink`'s torn ends set aside.
    pub fn audit_torn(&self, sink: &str) -> IntCounter {
        self.audit_torn_lines.with_label_values(&[sink])
    }

    pub fn client_error(&self, listener: &str, reason: &str) {
        self.client_errors.with_label_values(&[listener, reason]).inc();
    }

    /// Counts a console sign-in by `method` (`token`, `oidc`) with `result` (`ok` or the refusal's reason).
    pub fn console_sign_in(&self, method: &str, result: &str) {
        self.console_sign_ins.with_label_values(&[method, result]).inc();
    }

    pub fn tls_handshake_failure(&self, listener: &str, reason: &str) {
        self.tls_handshake_failures.with_label_values(&[listener, reason]).inc();
    }

    pub fn rate_limited(&self, scope: &str) {
        self.rate_limited.with_label_values(&[scope]).inc();
    }

    pub fn state_error(&self, backend: &str) {
        self.state_errors.with_label_values(&[backend]).inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Counts one metered response's tokens and cost.
    pub fn metered(&self, team: &str, model: &str, usage: &Usage, cost_usd: f64) {
        let counts =
            [usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens];
        let handles_of = |team: &str, model: &str| MeteredHandles {
            tokens: TOKEN_TYPES.map(|token_type| self.tokens.with_label_values(&[team, model, token_type])),
            cost_usd: self.cost_usd.with_label_values(&[team, model]),
        };
        self.metered_handles.with(
            &[team, model],
            |labels| {
                let handles = handles_of(labels[0], labels[1]);
                if names(&handles.cost_usd, &[("team", labels[0]), ("model", labels[1])]) {
                    return handles;
                }
                // The registry finds a series by a hash of the label values run together, so ("ab", "c") is
                // ("a", "bc"): rather than count under another team's series, count under this team's "other".
                tracing::warn!(
                    team = labels[0],
                    model = labels[1],
                    "metered series: these labels run together like another pair's; counted as model \"other\""
                );
                handles_of(labels[0], OTHER_MODEL)
            },
            |handles| {
                for (counter, count) in handles.tokens.iter().zip(counts) {
                    counter.inc_by(count);
                }
                handles.cost_usd.inc_by(cost_usd);
            },
        );
    }

    pub fn budget_used(&self, team: &str, ratio: f64) {
        self.budget_used_ratio.with_label_values(&[team]).set(ratio);
    }

    pub fn dlp_match(&self, detector: &str, blocked: bool) {
        self.dlp_matches.with_label_values(&[detector]).inc();
        if blocked {
            self.dlp_blocks.with_label_values(&[detector]).inc();
        }
    }

    /// One agent action decided: `action` is `file:read`, … or `tool:*`; `decision` allow, alert, would_deny or
    /// deny.
    pub fn action(&self, team: &str, action: &str, decision: &str) {
        self.actions.with_label_values(&[team, action, decision]).inc();
    }

    /// The counter of `rule`'s alerts to `sink` with `result` (sent, failed, suppressed).
    pub fn alert_counter(&self, rule: &str, sink: &str, result: &str) -> IntCounter {
        self.alerts.with_label_values(&[rule, sink, result])
    }

    /// The counter of events dropped because the alert engine's queue was full.
    pub fn alert_events_dropped(&self) -> IntCounter {
        self.alert_events_dropped.clone()
    }

    /// One SCIM request (`tollgate_scim_requests_total`).
    pub fn scim_request(&self, resource: &str, operation: &str, result: &str) {
        self.scim_requests.with_label_values(&[resource, operation, result]).inc();
    }

    /// `tollgate_requests_total` summed by what the console's overview shows (read once a minute and on each of
    /// its requests, never on the request path).
    pub fn request_totals(&self) -> RequestTotals {
        use prometheus::core::Collector;
        let mut totals = RequestTotals::default();
        for family in self.requests.collect() {
            for metric in family.get_metric() {
                let count = metric.get_counter().get_value() as u64;
                let label = |name: &str| {
                    metric.get_label().iter().find(|pair| pair.name() == name).map_or("", |pair| pair.value())
                };
                if label("kind") == "connect" {
                    totals.tunnels += count;
                } else {
                    totals.requests += count;
                }
                match label("decision") {
                    "deny" => totals.denials += count,
                    "error" => totals.errors += count,
                    _ => {}
                }
            }
        }
        totals
    }

    pub fn leaf(&self, minted: bool) {
        self.leaves.with_label_values(&[if minted { "minted" } else { "cached" }]).inc();
    }

    /// The Prometheus text exposition.
    /// The Prometheus text, with the counts kept outside the registry brought up to date first.
    pub fn render_with(&self, sampled: Sampled) -> String {
        let advance = |counter: &IntCounter, total: u64| counter.inc_by(total.saturating_sub(counter.get()));
        advance(&self.log_lines_dropped, sampled.log_lines_dropped);
        advance(&self.state_spend_dropped, sampled.state_spend.dropped);
        self.state_spend_pending.set(i64::try_from(sampled.state_spend.pending).unwrap_or(i64::MAX));
        advance(&self.password_checks.with_label_values(&["run"]), sampled.password_checks_run);
        advance(&self.password_checks.with_label_values(&["refused"]), sampled.password_checks_refused);
        advance(&self.oidc_refreshes.with_label_values(&["ok"]), sampled.oidc_refresh_ok);
        advance(&self.oidc_refreshes.with_label_values(&["error"]), sampled.oidc_refresh_error);
        if let Some(audit) = sampled.audit {
            self.audit_queued.with_label_values(&[audit.sink]).set(i64::try_from(audit.queued).unwrap_or(i64::MAX));
            self.audit_healthy.with_label_values(&[audit.sink]).set(i64::from(audit.healthy));
        }
        let pooled = [("forward", sampled.upstream_pooled_forward), ("model", sampled.upstream_pooled_model)];
        for (pool, count) in pooled {
            self.upstream_pooled.with_label_values(&[pool]).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.render()
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// One open client connection in `tollgate_connections_active`; dropping it closes the count.
#[must_use = "the connection stops being counted when this is dropped"]
#[derive(Debug)]
pub struct ActiveConnection(IntGauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `type` label of `tollgate_tokens_total`, in `Usage`'s order.
const TOKEN_TYPES: [&str; 4] = ["input", "output", "cache_creation", "cache_read"];

#[derive(Debug)]
struct RequestHandles {
    requests: IntCounter,
    duration: Histogram,
}

#[derive(Debug)]
struct MeteredHandles {
    tokens: [IntCounter; 4],
    cost_usd: Counter,
}

/// Handles by label values. Never larger than the registry's own series of those labels.
#[derive(Debug)]
struct Resolved<V> {
    map: RwLock<HashMap<Box<[u8]>, V, foldhash::fast::RandomState>>,
    /// At most this many label lists get handles of their own; later ones share those of their list with the last
    /// label replaced by `Bound::other`.
    bound: Option<Bound>,
}

/// How many distinct label lists a `Resolved` keeps, and what stands for the rest.
#[derive(Debug)]
struct Bound {
    max: usize,
    /// The last label of a list past `max` (the same team, `model="other"`).
    other: &'static str,
    /// Said once in the log, when the first list is past `max`.
    reached: std::sync::atomic::AtomicBool,
}

impl<V> Default for Resolved<V> {
    fn default() -> Self {
        Self { map: RwLock::new(HashMap::default()), bound: None }
    }
}

/// Whether `metric`'s series has these label values.
fn names(metric: &impl prometheus::core::Metric, labels: &[(&str, &str)]) -> bool {
    let series = metric.metric();
    labels
        .iter()
        .all(|(name, value)| series.get_label().iter().any(|pair| pair.name() == *name && pair.value() == *value))
}

/// Distinct (team, model) pairs counted under their own `model` label. A model name comes from the request or the
/// upstream's response: with no `allowed_models` list and an upstream that answers any name, a client could
/// otherwise grow the exported series (and this process's memory) without end. Past it, `model="other"`.
pub const MODEL_SERIES_MAX: usize = 1000;

/// The `model` label of a (team, model) pair past `MODEL_SERIES_MAX`.
pub const OTHER_MODEL: &str = "other";

/// The largest key buffer a thread keeps between lookups.
const KEY_KEPT: usize = 1024;

thread_local! {
    /// The key being looked up: every label's length, then its bytes (no two label lists spell the same key).
    static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `labels` as a map key: every label's length, then its bytes (no two label lists spell the same key).
fn spell<'a>(labels: impl IntoIterator<Item = &'a str>, key: &mut Vec<u8>) {
    key.clear();
    for label in labels {
        key.extend_from_slice(&(label.len() as u32).to_le_bytes());
        key.extend_from_slice(label.as_bytes());
    }
}

impl<V> Resolved<V> {
    /// Handles kept for at most `max` label lists; the others share those of their list ending in `other`.
    fn bounded(max: usize, other: &'static str) -> Self {
        let reached = std::sync::atomic::AtomicBool::new(false);
        Self { map: RwLock::new(HashMap::default()), bound: Some(Bound { max, other, reached }) }
    }

    /// Calls `use_handles` with the handles of `labels`, made by `make` (given the labels they count under) the
    /// first time.
    fn with(&self, labels: &[&str], make: impl FnOnce(&[&str]) -> V, use_handles: impl FnOnce(&V)) {
        KEY.with_borrow_mut(|key| {
            spell(labels.iter().copied(), key);
            let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut found = map.get(key.as_slice());
            // Past the bound: counted under the list ending in `other` (found without the write lock).
            let other = self.bound.as_ref().filter(|bound| found.is_none() && map.len() >= bound.max).map(|bound| {
                if !bound.reached.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        max = bound.max,
                        other = bound.other,
                        "too many distinct label values: the rest are counted with their last label replaced"
                    );
                }
                bound.other
            });
            let head = &labels[..labels.len().saturating_sub(1)];
            if let Some(other) = other {
                spell(head.iter().copied().chain([other]), key);
                found = map.get(key.as_slice());
            }
            match found {
                Some(handles) => use_handles(handles),
                None => {
                    drop(map);
                    let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let handles = map.entry(key.as_slice().into()).or_insert_with(|| match other {
                        Some(other) => make(&[head, &[other]].concat()),
                        None => make(labels),
                    });
                    use_handles(handles);
                }
            }
            // A model name a client sent may be long: its key's buffer is not kept by the thread.
            if key.capacity() > KEY_KEPT {
                *key = Vec::new();
            }
        });
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_past_the_bound_are_counted_as_other() {
        let metrics = Metrics::new();
        let usage = Usage { input_tokens: 1, ..Usage::default() };
        for n in 0..MODEL_SERIES_MAX + 10 {
            metrics.metered("t", &format!("invented-{n}"), &usage, 1.0);
        }
        // A pair seen before the bound keeps its own series.
        metrics.metered("t", "invented-0", &usage, 1.0);
        let text = metrics.render();
        let series = text.lines().filter(|line| line.starts_with("tollgate_cost_usd_total{")).count();
        assert_eq!(series, MODEL_SERIES_MAX + 1, "the bound's pairs and one for the rest");
        assert!(text.contains(r#"tollgate_cost_usd_total{model="other",team="t"} 10"#), "{text}");
        assert!(text.contains(r#"tollgate_cost_usd_total{model="invented-0",team="t"} 2"#));
        assert!(text.contains(r#"tollgate_tokens_total{model="other",team="t",type="input"} 10"#));
        assert!(metrics.metered_handles.map.read().unwrap().len() <= MODEL_SERIES_MAX + 1);
    }

    #[test]
    fn handles_resolved_once_count_like_the_registry() {
        let metrics = Metrics::new();
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 5,
            cache_creation_input_tokens: 7,
            cache_read_input_tokens: 11,
            ..Usage::default()
        };
        metrics.metered("ab", "c", &usage, 0.5);
        metrics.metered("ab", "c", &usage, 0.25);
        // Other label values are other handles; ("a", "bc"), which the registry's hash runs together with
        // ("ab", "c"), counts as team a's "other" rather than as team ab's.
        metrics.metered("ab", "d", &usage, 1.0);
        metrics.metered("a", "bc", &usage, 1.0);
        metrics.metered("b", "c", &usage, 1.0);
        let text = metrics.render();
        assert!(text.contains(r#"tollgate_tokens_total{model="c",team="ab",type="input"} 6"#), "{text}");
        assert!(text.contains(r#"tollgate_tokens_total{model="c",team="ab",type="cache_read"} 22"#), "{text}");
        assert!(text.contains(r#"tollgate_tokens_total{model="d",team="ab",type="output"} 5"#), "{text}");
        assert!(text.contains(r#"tollgate_tokens_total{model="c",team="b",type="output"} 5"#), "{text}");
        assert!(text.contains(r#"tollgate_cost_usd_total{model="c",team="ab"} 0.75"#), "{text}");
        assert!(text.contains(r#"tollgate_cost_usd_total{model="other",team="a"} 1"#), "{text}");
        for seconds in [0.001, 0.002] {
            metrics.request(RequestOutcome {
                listener: "proxy",
                kind: "model",
                decision: "allow",
                reason: "-",
                seconds,
            });
        }
        metrics.request(RequestOutcome {
            listener: "proxy",
            kind: "model",
            decision: "deny",
            reason: "dlp",
            seconds: 0.5,
        });
        // A long label value is counted, and its key's buffer is not kept by the thread.
        for _ in 0..2 {
            metrics.metered("ab", &"m".repeat(10_000), &usage, 1.0);
            assert!(KEY.with_borrow(|key| key.capacity()) <= KEY_KEPT, "made, then found");
        }
        metrics.bytes(10, 20);
        let text = metrics.render();
        assert!(
            text.contains(r#"tollgate_requests_total{decision="allow",kind="model",listener="proxy",reason="-"} 2"#)
        );
        assert!(
            text.contains(r#"tollgate_requests_total{decision="deny",kind="model",listener="proxy",reason="dlp"} 1"#)
        );
        assert!(text.contains(r#"tollgate_request_duration_seconds_count{kind="model"} 3"#), "{text}");
        assert!(text.contains(r#"tollgate_bytes_total{direction="down"} 20"#), "{text}");
    }
}
