//! `intercept.telemetry: drop`: Claude Code's telemetry calls inside an intercepted tunnel are answered here, with
//! what the client accepts, and never forwarded. The calls are matched on the canonical path (any case), so a
//! respelled path is dropped too; everything else in the tunnel goes through the phases of `handle` as before.
//!
//! Each dropped call is counted in `tollgate_telemetry_dropped_total{endpoint}` and recorded like any other
//! request inside the tunnel: `decision: deny`, `rule: intercept.telemetry` (it did not leave), the `status` the
//! client got, and no `upstream`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::MeteredBody;
use super::session::{Origin, Session};
use crate::config::file::Telemetry;
use crate::config::Config;
use crate::request::error::Error;
use crate::request::finish::{finish, Exchange};
use crate::request::model;

/// The rule a dropped call names in its audit record.
pub const RULE: &str = "intercept.telemetry";

/// The reason of `tollgate_requests_total` for a dropped call.
pub const REASON: &str = "telemetry_dropped";

/// A telemetry endpoint of Claude Code on api.anthropic.com; its `label` is the metric's `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/event_logging/v2/batch` and `/api/event_logging/batch`.
    EventLogging,
    /// `POST /api/claude_code/metrics`.
    Metrics,
    /// `GET /api/claude_code/organizations/metrics_enabled`.
    MetricsEnabled,
    /// `POST /api/eval/<client key>`: feature-flag evaluation.
    FeatureFlags,
}

impl Endpoint {
    /// Every endpoint, for metrics that start at zero.
    pub const ALL: [Endpoint; 4] = [Self::EventLogging, Self::Metrics, Self::MetricsEnabled, Self::FeatureFlags];

    /// The endpoint a request calls, if it is a telemetry call; `path` is canonical (no query).
    pub fn of(method: &Method, path: &str) -> Option<Endpoint> {
        let is = |wanted: &str| path.eq_ignore_ascii_case(wanted);
        if method == Method::POST {
            if is("/api/event_logging/v2/batch") || is("/api/event_logging/batch") {
                return Some(Self::EventLogging);
            }
            if is("/api/claude_code/metrics") {
                return Some(Self::Metrics);
            }
            let prefix = "/api/eval/";
            let key = path
                .get(..prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .map(|_| &path[prefix.len()..]);
            if key.is_some_and(|key| !key.is_empty() && !key.contains('/')) {
                return Some(Self::FeatureFlags);
            }
        }
        if method == Method::GET && is("/api/claude_code/organizations/metrics_enabled") {
            return Some(Self::MetricsEnabled);
        }
        None
    }

    /// The `endpoint` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::EventLogging => "event_logging",
            Self::Metrics => "metrics",
            Self::MetricsEnabled => "metrics_enabled",
            Self::FeatureFlags => "feature_flags",
        }
    }

    /// The JSON answer, as the client reads it: an event batch is all accepted (`accepted_count` is the number of
    /// events when the body is plain JSON, else omitted, which the client reads as all), organisation metrics
    /// are off (so the client stops exporting them), and feature-flag evaluation has no features (the client's
    /// defaults apply).
    pub fn answer(self, body: &[u8]) -> String {
        match self {
            Self::EventLogging => match events(body) {
                Some(count) => serde_json::json!({"accepted_count": count, "rejected_count": 0}).to_string(),
                None => "{}".to_owned(),
            },
            Self::Metrics => "{}".to_owned(),
            Self::MetricsEnabled => r#"{"metrics_logging_enabled":false}"#.to_owned(),
            Self::FeatureFlags => r#"{"features":{},"experiments":[]}"#.to_owned(),
        }
    }
}

/// The number of events of an event batch, when it is plain JSON with an `events` array.
fn events(body: &[u8]) -> Option<usize> {
    #[derive(serde::Deserialize)]
    struct Batch {
        events: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Batch>(body).ok().map(|batch| batch.events.len())
}

/// The telemetry endpoint of a request to answer here: only inside an intercepted tunnel, with
/// `intercept.telemetry: drop`.
pub fn dropped(config: &Config, origin: &Origin, method: &Method, canonical_path: &str) -> Option<Endpoint> {
    if config.llm.telemetry != Telemetry::Drop || !matches!(origin, Origin::Tunnel { .. }) {
        return None;
    }
    Endpoint::of(method, canonical_path)
}

/// Answers a telemetry call without forwarding it: reads its body (bounded like any body), counts and records it,
/// then answers 200 with `endpoint`'s answer.
pub async fn answer(
    session: &Session,
    config: &Arc<Config>,
    request: Request<Incoming>,
    exchange: &mut Exchange,
    endpoint: Endpoint,
) -> Result<Response<MeteredBody>, Error> {
    let shared = &session.shared;
    let (parts, body) = request.into_parts();
    let body = model::read_body(config, &shared.body_buffers, &parts.headers, body).await?;
    exchange.bytes_up = body.bytes.len() as u64;
    let answer = Bytes::from(endpoint.answer(&body.bytes));
    drop(body);
    shared.metrics.telemetry_dropped(endpoint.label());
    exchange.status = StatusCode::OK.as_u16();
    exchange.decision = "deny";
    exchange.reason = REASON;
    exchange.rule = Some(Arc::from(RULE));
    exchange.bytes_down = answer.len() as u64;
    let recorded = std::mem::replace(exchange, Exchange::new(String::new(), session.door()));
    let release = finish(shared, &session.peer, recorded).await;
    let mut response = Response::new(MeteredBody::refusal(answer, release));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_telemetry_endpoints_are_matched_by_method_and_path() {
        let post = Method::POST;
        assert_eq!(Endpoint::of(&post, "/api/event_logging/v2/batch"), Some(Endpoint::EventLogging));
        assert_eq!(Endpoint::of(&post, "/API/Event_Logging/V2/Batch"), Some(Endpoint::EventLogging));
        assert_eq!(Endpoint::of(&post, "/api/event_logging/batch"), Some(Endpoint::EventLogging));
        assert_eq!(Endpoint::of(&post, "/api/claude_code/metrics"), Some(Endpoint::Metrics));
        assert_eq!(Endpoint::of(&post, "/api/eval/sdk-zAZezfDKGoZuXXKe"), Some(Endpoint::FeatureFlags));
        assert_eq!(
            Endpoint::of(&Method::GET, "/api/claude_code/organizations/metrics_enabled"),
            Some(Endpoint::MetricsEnabled)
        );
        assert_eq!(Endpoint::of(&Method::GET, "/api/event_logging/v2/batch"), None);
        assert_eq!(Endpoint::of(&post, "/api/eval/"), None);
        assert_eq!(Endpoint::of(&post, "/api/eval/a/b"), None);
        assert_eq!(Endpoint::of(&post, "/v1/messages"), None);
        assert_eq!(Endpoint::of(&Method::GET, "/api/claude_code/settings"), None);
    }

    #[test]
    fn answers_are_what_the_client_accepts() {
        let batch = br#"{"events":[{"event_type":"a","event_data":{}},{"event_type":"b","event_data":{}}]}"#;
        assert_eq!(Endpoint::EventLogging.answer(batch), r#"{"accepted_count":2,"rejected_count":0}"#);
        assert_eq!(Endpoint::EventLogging.answer(b"\x1f\x8b compressed"), "{}");
        assert_eq!(Endpoint::MetricsEnabled.answer(b""), r#"{"metrics_logging_enabled":false}"#);
        let flags: serde_json::Value = serde_json::from_str(&Endpoint::FeatureFlags.answer(b"{}")).unwrap();
        assert_eq!(flags["features"], serde_json::json!({}));
    }
}
