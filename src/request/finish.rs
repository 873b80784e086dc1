//! One request (or tunnel) as it goes through the pipeline, and the phase that always runs last: `finish`
//! turns it into metrics, one log line and one audit record, whatever happened before. This is the one place
//! that writes an audit record of a request.
//!
//! Under `audit.on_failure: block`, `finish` returns once the record is written, and a door completes the response
//! only then: a refusal is sent after `finish`, a relayed response's last bytes are held until it returns
//! (`Held`), a tunnel's record is written when the tunnel ends, before its connection closes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::door::{Door, Peer};
use super::error::{Error, Shape};
use crate::alerts::{Event, RequestEvent, Wants};
use crate::audit::{self, Record, Release, Wait};
use crate::identity::Principal;
use crate::llm::usage::Usage;
use crate::metrics::RequestOutcome;
use crate::policy::DenyReason;
use crate::shared::Shared;
use crate::target::Target;

/// One request (or tunnel) as it goes through the pipeline; becomes the audit record at the end.
#[derive(Debug)]
pub struct Exchange {
    pub id: String,
    pub started: Instant,
    pub started_at: SystemTime,
    pub door: Door,
    /// The shape tollgate's own answers take for this request.
    pub shape: Shape,
    pub method: String,
    pub target: Option<Target>,
    /// The path without its query: a query string never reaches the audit record or the logs.
    pub path: Option<String>,
    pub principal: Option<Principal>,
    pub rule: Option<Arc<str>>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The address dialled, or the name of a configured upstream.
    pub upstream: Option<String>,
    pub region: Option<Arc<str>>,
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    pub dlp: Vec<Arc<str>>,
    pub error: Option<String>,
    /// The client's session (`X-Claude-Code-Session-Id`), when it names one.
    pub session: Option<Arc<str>>,
    /// The client's first User-Agent product token (`claude-cli/2.1.332`).
    pub user_agent: Option<String>,
    /// The kind of upstream failure, for `tollgate_upstream_errors_total`.
    pub upstream_failure: Option<&'static str>,
    /// What the client is still owed, sent once the exchange is recorded.
    pub held: Held,
}

/// What a door keeps back from the client until the exchange is recorded, so that under
/// `audit.on_failure: block` no response completes before its record is written.
#[derive(Debug, Default)]
pub enum Held {
    #[default]
    Nothing,
    /// A whole answer: a refusal tollgate wrote, or a response that arrived whole with its head.
    Answer(Vec<u8>),
    /// The last byte of a relayed body, whose other bytes have been sent.
    LastByte(u8),
}

impl Held {
    /// Sends what was held.
    pub async fn send<W: AsyncWrite + Unpin>(self, client: &mut W) -> std::io::Result<()> {
        match self {
            Held::Nothing => return Ok(()),
            Held::Answer(bytes) => client.write_all(&bytes).await?,
            Held::LastByte(byte) => client.write_all(&[byte]).await?,
        }
        client.flush().await
    }
}

impl Exchange {
    pub fn new(id: String, door: Door) -> Self {
        Self {
            id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            door,
            shape: door.shape(false),
            method: String::new(),
            target: None,
            path: None,
            principal: None,
            rule: None,
            decision: "allow",
            reason: "ok",
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            upstream: None,
            region: None,
            model: None,
            usage: None,
            cost_usd: None,
            dlp: Vec::new(),
            error: None,
            session: None,
            user_agent: None,
            upstream_failure: None,
            held: Held::Nothing,
        }
    }

    /// Records the path of `path_and_query`, without the query.
    pub fn set_path(&mut self, path_and_query: &str) {
        let path = path_and_query.split(['?', '#']).next().unwrap_or("");
        self.path = Some(path.to_owned());
    }

    /// The principal's teams (none before identification).
    pub fn teams(&self) -> Arc<[Arc<str>]> {
        self.principal.as_ref().map(|p| p.teams.clone()).unwrap_or_else(|| Arc::new([]))
    }

    /// The principal's first team, the `team` of metrics and audit records.
    pub fn team(&self) -> Option<Arc<str>> {
        self.principal.as_ref().and_then(|p| p.teams.first().cloned())
    }

    /// Records what `error` did: its status (unless an answer was already sent, e.g. the `200` of a tunnel later
    /// cut), the decision, the reason, the rule and the message.
    pub fn fail(&mut self, error: &Error) {
        if self.status == 0 {
            self.status = error.status(self.shape);
        }
        self.upstream_failure = error.upstream_kind().or(self.upstream_failure);
        self.decision = error.decision();
        self.reason = error.kind();
        self.rule = error.rule().or(self.rule.take());
        self.error = Some(error.to_string());
    }
}

/// `Error::AuditUnavailable`'s reason: a refusal the audit sink's own failure caused.
const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

/// The last phase of every request: metrics, one log line, one audit record. Under `audit.on_failure: block`
/// the future returns once the record is written (`Release::Cut` when shutdown stopped waiting first); a refusal
/// because the sink cannot take records does not wait for its own record.
///
/// Metrics, log line and record are made when it is called; the future only hands the record over (and holds
/// just that, not the exchange too, in the futures that await it).
pub fn finish<'a>(shared: &'a Shared, peer: &Peer, exchange: Exchange) -> impl Future<Output = Release> + Send + 'a {
    let (record, wait) = account(shared, peer, exchange);
    shared.auditor.record(record, wait)
}

/// `finish`'s work up to the record.
fn account(shared: &Shared, peer: &Peer, exchange: Exchange) -> (Record, Wait) {
    let listener = &peer.listener;
    let seconds = exchange.started.elapsed().as_secs_f64();
    shared.metrics.request(RequestOutcome {
        listener,
        kind: exchange.door.label(),
        decision: exchange.decision,
        reason: exchange.reason,
        seconds,
    });
    shared.metrics.bytes(exchange.bytes_up, exchange.bytes_down);
    if let Some(kind) = exchange.upstream_failure {
        shared.metrics.upstream_error(kind);
    }
    let user = exchange.principal.as_ref().map(|p| p.name.clone());
    let team = exchange.team();
    let (host, port) = match &exchange.target {
        Some(target) => (target.host.to_string(), target.port),
        None => (String::new(), 0),
    };
    tracing::info!(
        id = %exchange.id,
        listener = %listener,
        client = %peer.address,
        user = user.as_deref().unwrap_or("-"),
        kind = exchange.door.label(),
        method = %exchange.method,
        host = %host,
        port,
        path = exchange.path.as_deref().unwrap_or("-"),
        decision = exchange.decision,
        rule = exchange.rule.as_deref().unwrap_or("-"),
        status = exchange.status,
        bytes_up = exchange.bytes_up,
        bytes_down = exchange.bytes_down,
        model = exchange.model.as_deref().unwrap_or("-"),
        duration_ms = (seconds * 1000.0) as u64,
        error = exchange.error.as_deref().unwrap_or("-"),
        "request"
    );
    if shared.alerts.active() {
        observe(shared, &exchange);
    }
    if exchange.decision == "deny" {
        note_denial(shared, &exchange);
    }
    let wait = if exchange.reason == AUDIT_UNAVAILABLE { Wait::Never } else { Wait::UntilWritten };
    let record = Record {
        ts: audit::timestamp(exchange.started_at),
        id: exchange.id,
        kind: exchange.door.label(),
        listener: listener.clone(),
        client: peer.address.to_string(),
        user,
        team,
        method: exchange.method,
        host,
        port,
        path: exchange.path,
        decision: exchange.decision,
        rule: exchange.rule,
        status: exchange.status,
        bytes_up: exchange.bytes_up,
        bytes_down: exchange.bytes_down,
        duration_ms: (seconds * 1000.0) as u64,
        upstream: exchange.upstream,
        region: exchange.region,
        model: exchange.model,
        usage: exchange.usage,
        cost_usd: exchange.cost_usd,
        dlp: exchange.dlp,
        error: exchange.error,
        session: exchange.session,
        user_agent: exchange.user_agent,
    };
    (record, wait)
}

/// Keeps a refusal of an identified user for the developer page (`devpage::denials`, bounded).
fn note_denial(shared: &Shared, exchange: &Exchange) {
    let Some(principal) = &exchange.principal else { return };
    let denial = crate::devpage::denials::Denial {
        ts: audit::timestamp(exchange.started_at),
        id: exchange.id.clone(),
        kind: exchange.door.label(),
        method: exchange.method.clone(),
        target: exchange.target.as_ref().map(|t| t.to_string()),
        path: exchange.path.clone(),
        status: exchange.status,
        reason: exchange.reason,
        rule: exchange.rule.clone(),
        message: exchange.error.clone(),
    };
    shared.denials.note(&principal.name, exchange.started_at, denial);
}

/// Hands what the alert rules watch (spend, hours refusals, model use, DLP blocks) to the alert engine; only
/// called while some rule is configured.
fn observe(shared: &Shared, exchange: &Exchange) {
    let alerts = &shared.alerts;
    let cost_micro_usd = match exchange.cost_usd {
        Some(cost) if alerts.wants(Wants::METERED) && cost > 0.0 => (cost * 1e6).round() as i64,
        _ => 0,
    };
    let hours_rule = (exchange.reason == DenyReason::Hours.label() && alerts.wants(Wants::HOURS_DENIED))
        .then(|| exchange.rule.clone())
        .flatten();
    let model =
        (exchange.decision == "allow" && alerts.wants(Wants::MODEL_USE)).then(|| exchange.model.clone()).flatten();
    let dlp_blocked =
        if exchange.reason == "dlp_blocked" && alerts.wants(Wants::DLP) { exchange.dlp.clone() } else { Vec::new() };
    if cost_micro_usd == 0 && hours_rule.is_none() && model.is_none() && dlp_blocked.is_empty() {
        return;
    }
    alerts.send(Event::Request(Box::new(RequestEvent {
        id: exchange.id.clone(),
        at: shared.clock.now(),
        user: exchange.principal.as_ref().map(|p| p.name.clone()),
        teams: exchange.teams(),
        cost_micro_usd,
        hours_rule,
        model,
        dlp_blocked,
    })));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusals_that_do_not_wait_are_those_of_an_unavailable_sink() {
        assert_eq!(Error::AuditUnavailable { sink: "file" }.kind(), AUDIT_UNAVAILABLE);
    }
}
