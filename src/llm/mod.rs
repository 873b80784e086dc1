//! The Messages API side of tollgate: requests inside intercepted tunnels and on gateway listeners.
//!
//! Per request: identity → host and path rules → limits → body (size cap) → model allowed for the team →
//! DLP scan → budget reservation → route to an upstream → stream the response through while metering usage
//! (`body.rs`) → settle the spend → audit. Refusals are answered in the Anthropic error shape, which Claude
//! Code shows its user verbatim.

pub mod body;
pub mod client;
pub mod dlp;
pub mod idle;
pub mod pricing;
pub mod request;
pub mod usage;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::app::Gateway;
use crate::config::llm::RouteRequest;
use crate::config::Config;
use crate::exchange::{finish, Exchange};
use crate::identity::Principal;
use crate::limits::budget::Reservation;
use crate::limits::Admitted;
use crate::policy::Decision;
use crate::proxy::error::ProxyError;
use crate::proxy::Peer;
use crate::target::{Host, Target};
use body::{MeteredBody, Settlement};
use request::RequestFacts;

/// Where a connection's requests come from.
#[derive(Debug)]
pub enum Origin {
    /// Inside an intercepted tunnel: the principal and destination the CONNECT established.
    Tunnel { principal: Principal, target: Target },
    /// A gateway listener (`mode: gateway`): each request identifies itself.
    Gateway,
}

/// One client connection served by this module.
#[derive(Debug)]
pub struct Session {
    pub gateway: Arc<Gateway>,
    pub peer: Arc<Peer>,
    pub origin: Origin,
}

impl Session {
    fn kind(&self) -> &'static str {
        match self.origin {
            Origin::Tunnel { .. } => "intercepted",
            Origin::Gateway => "gateway",
        }
    }
}

/// Serves HTTP/1.1 or h2 (by ALPN or preface) on `io` until the client closes or shutdown begins.
pub async fn serve<I>(session: Arc<Session>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = session.gateway.config.load_full();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .preserve_header_case(true)
        .timer(TokioTimer::new())
        // Also bounds an idle keep-alive connection's wait for its next request.
        .header_read_timeout(config.server.keepalive_timeout.max(config.server.header_read_timeout))
        .max_buf_size(config.server.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(config.server.max_header_bytes as u32);
    let shutdown = session.gateway.shutdown.stop_accepting.clone();
    let activity = idle::Activity::new();
    let service_session = session.clone();
    let service_activity = activity.clone();
    let service =
        hyper::service::service_fn(move |request| handle(service_session.clone(), service_activity.begin(), request));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = activity.expired(config.server.keepalive_timeout) => {
            tracing::debug!(listener = %session.peer.listener, client = %session.peer.address, "idle connection closed (server.keepalive_timeout)");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        // hyper answered a malformed request itself (400/431) or the connection broke: counted and logged.
        session.gateway.metrics.client_error(&session.peer.listener, "http_error");
        tracing::debug!(listener = %session.peer.listener, client = %session.peer.address, %error, "connection ended with an error");
    }
}

/// One request: refused with an Anthropic-shaped error, or forwarded with its response metered as it streams.
/// `busy` keeps the connection from idling out until the response body has been sent.
async fn handle(
    session: Arc<Session>,
    busy: idle::Busy,
    request: Request<Incoming>,
) -> Result<Response<MeteredBody>, Infallible> {
    let gateway = &session.gateway;
    let config = gateway.config.load_full();
    let mut exchange = Exchange::new(gateway.next_request_id(), session.kind());
    exchange.method = request.method().to_string();
    exchange.path = Some(request.uri().path().to_owned());
    let mut held = Held::default();
    match forward(&session, &config, request, &mut exchange, &mut held).await {
        Ok(response) => Ok(response.map(|body| body.holding(busy))),
        Err(error) => {
            exchange.fail(&error);
            // The status this path answers with (401 rather than the forward proxy's 407).
            exchange.status = error.api_status();
            if let Some(kind) = error.upstream_kind() {
                gateway.metrics.upstream_error(kind);
            }
            let response = error.api_response(&exchange.id);
            // Slots and reservations go back before the record, as on the proxy path.
            held.release().await;
            finish(gateway, &session.peer, exchange);
            Ok(response.map(|body| MeteredBody::refusal(body).holding(busy)))
        }
    }
}

/// What a request holds until it ends: concurrency slots and a budget reservation.
#[derive(Default)]
struct Held {
    admitted: Option<Admitted>,
    reservation: Option<Reservation>,
}

impl Held {
    async fn release(self) {
        if let Some(admitted) = self.admitted {
            admitted.release().await;
        }
        // An unsettled reservation gives its estimate back when dropped.
        drop(self.reservation);
    }
}

/// The per-request steps in order: identity → destination and hours → path rules → limits → body (size,
/// encoding, models, DLP) → budget reservation → route → the upstream's response, metered as it streams.
async fn forward(
    session: &Session,
    config: &Arc<Config>,
    request: Request<Incoming>,
    exchange: &mut Exchange,
    held: &mut Held,
) -> Result<Response<MeteredBody>, ProxyError> {
    let gateway = &session.gateway;
    let now = gateway.clock.now();
    let principal = identify(session, config, request.headers(), now).await?;
    exchange.principal = Some(principal.clone());
    if gateway.auditor.refuses_requests() {
        return Err(ProxyError::AuditUnavailable);
    }
    let host = decide(session, config, &request, &principal, now, exchange)?;
    let path = request.uri().path();
    config
        .llm
        .paths
        .check(path)
        .map_err(|denied| ProxyError::PathDenied { path: path.to_owned(), rule: denied.rule })?;
    held.admitted = Some(crate::proxy::limit(gateway, config, config.limits.plan(&principal), now).await?);

    let (mut parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, config.llm.max_body).await?;
    exchange.bytes_up = body.len() as u64;
    let metered = config.llm.is_metered(parts.uri.path()) && parts.method == http::Method::POST;
    let estimate = check_body(gateway, config, &principal, &parts.headers, &body, metered, exchange)?;
    if metered && !config.llm.budgets.is_empty() {
        held.reservation = Some(reserve(gateway, config, &principal, estimate, now).await?);
    }

    let api_key = route(session, config, &principal, host.as_deref(), &mut parts, exchange)?;
    rewrite_headers(&mut parts.headers, &session.origin, api_key, metered);
    parts.version = Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, Full::new(body));

    let wait = config.upstream.idle_timeout;
    let response = match tokio::time::timeout(wait, gateway.models.request(upstream_request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Err(upstream_failure(&error, exchange)),
        Err(_) => return Err(ProxyError::UpstreamTimeout { target: exchange.upstream.clone().unwrap_or_default() }),
    };
    exchange.status = response.status().as_u16();
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let meter = metered.then(|| usage::Meter::for_content_type(content_type));
    let settlement = Settlement {
        gateway: gateway.clone(),
        config: config.clone(),
        peer: session.peer.clone(),
        exchange: std::mem::replace(exchange, Exchange::new(String::new(), "")),
        admitted: held.admitted.take(),
        reservation: held.reservation.take(),
    };
    Ok(Response::from_parts(parts, MeteredBody::upstream(incoming, meter, settlement)))
}

/// The destination decision: inside a tunnel, the tunnel's host must be the request's, and policy and hours are
/// decided again (hours end, reloads deny); on a gateway listener only the team hours apply. Returns the host an
/// intercepted request was for (routing may match on it).
fn decide(
    session: &Session,
    config: &Config,
    request: &Request<Incoming>,
    principal: &Principal,
    now: std::time::SystemTime,
    exchange: &mut Exchange,
) -> Result<Option<String>, ProxyError> {
    match &session.origin {
        Origin::Tunnel { target, .. } => {
            check_authority(request, target)?;
            exchange.target = Some(target.clone());
            match config.policy.decide(target, &principal.teams, now) {
                Decision::Allow { rule } => exchange.rule = Some(rule),
                Decision::Deny { rule, reason } => {
                    return Err(ProxyError::Denied { target: target.to_string(), rule, reason })
                }
            }
            Ok(Some(match &target.host {
                Host::Name(name) => name.to_string(),
                Host::Ip(ip) => ip.to_string(),
            }))
        }
        Origin::Gateway => match config.policy.check_hours(&principal.teams, now) {
            Err(Decision::Deny { rule, reason }) => {
                Err(ProxyError::Denied { target: session.peer.listener.to_string(), rule, reason })
            }
            _ => Ok(None),
        },
    }
}

/// The checks that read the body: its encoding, the models a metered request names, and DLP (whatever the path:
/// data leaves through any body). Returns a metered request's budget estimate in micro-dollars.
fn check_body(
    gateway: &Gateway,
    config: &Config,
    principal: &Principal,
    headers: &HeaderMap,
    body: &Bytes,
    metered: bool,
    exchange: &mut Exchange,
) -> Result<i64, ProxyError> {
    if metered || (config.llm.dlp.is_some() && !body.is_empty()) {
        refuse_compressed(headers)?;
    }
    let mut estimate = 0;
    if metered {
        let facts = RequestFacts::read(body);
        check_model(config, principal, &facts)?;
        let model = facts.model.as_deref().unwrap_or("");
        estimate = config.llm.pricing.estimate_micro_usd(model, facts.estimated_input_tokens);
        exchange.model = facts.model;
    }
    scan(gateway, config, body, exchange)?;
    Ok(estimate)
}

/// Points the request at its upstream: the first matching route's, else (intercepted) the host the client asked
/// for. Sets the URI and `Host`, records the upstream and region, and returns the upstream's `api_key`.
fn route(
    session: &Session,
    config: &Config,
    principal: &Principal,
    host: Option<&str>,
    parts: &mut http::request::Parts,
    exchange: &mut Exchange,
) -> Result<Option<HeaderValue>, ProxyError> {
    let route = config.llm.route(RouteRequest {
        listener: &session.peer.listener,
        teams: &principal.teams,
        team_settings: &config.teams,
        host,
    });
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (uri, upstream_name, api_key) = match (route, &session.origin) {
        (Some(route), _) => {
            let upstream = &route.to;
            let path_and_query = format!("{}{path_and_query}", upstream.base_path);
            let uri = upstream_uri(upstream.scheme.clone(), upstream.authority.as_str(), &path_and_query)?;
            parts.headers.insert(HOST, HeaderValue::from_str(upstream.authority.as_str()).expect("a parsed authority"));
            if exchange.target.is_none() {
                // Gateway requests are recorded with the upstream they went to.
                exchange.target = Some(upstream.target.clone());
            }
            (uri, upstream.name.to_string(), upstream.api_key.clone())
        }
        (None, Origin::Tunnel { target, .. }) => {
            let authority = target.to_string();
            (upstream_uri(http::uri::Scheme::HTTPS, &authority, path_and_query)?, authority, None)
        }
        (None, Origin::Gateway) => return Err(ProxyError::NoRoute { listener: session.peer.listener.clone() }),
    };
    parts.uri = uri;
    exchange.upstream = Some(upstream_name);
    exchange.region =
        principal.teams.iter().find_map(|t| config.teams.get(t).and_then(|s| s.region.as_deref())).map(Arc::from);
    Ok(api_key)
}

fn upstream_uri(scheme: http::uri::Scheme, authority: &str, path_and_query: &str) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("cannot build the upstream URL: {e}")))
}

/// The request headers as they go upstream: hop-by-hop ones removed, the client's credential removed when it was
/// for tollgate (gateway) or is replaced by the upstream's `api_key`, and a metered request asking for an
/// uncompressed response (its usage is read as it passes).
fn rewrite_headers(headers: &mut HeaderMap, origin: &Origin, api_key: Option<HeaderValue>, metered: bool) {
    strip_hop_by_hop(headers);
    if matches!(origin, Origin::Gateway) || api_key.is_some() {
        headers.remove(http::header::AUTHORIZATION);
        headers.remove("x-api-key");
    }
    if let Some(key) = api_key {
        headers.insert(HeaderName::from_static("x-api-key"), key);
    }
    if metered && headers.contains_key(http::header::ACCEPT_ENCODING) {
        headers.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
}

/// The principal: the tunnel's (as the current config sees it), or from the gateway request's credentials.
async fn identify(
    session: &Session,
    config: &Config,
    headers: &HeaderMap,
    now: std::time::SystemTime,
) -> Result<Principal, ProxyError> {
    let gateway = &session.gateway;
    let result = match (&session.origin, &session.peer.certificate) {
        (Origin::Tunnel { principal, .. }, _) => {
            // A user removed by a reload loses the tunnel's identity.
            config.identity.refresh(principal).ok_or(crate::identity::AuthError::Rejected)
        }
        (Origin::Gateway, Some(principal)) => Ok(principal.clone()),
        (Origin::Gateway, None) => {
            let authorization = headers.get(http::header::AUTHORIZATION).map(HeaderValue::as_bytes);
            let api_key = headers.get("x-api-key").map(HeaderValue::as_bytes);
            config.identity.identify_api(authorization, api_key, session.peer.address.ip(), now).await
        }
    };
    result.map_err(|error| {
        gateway.metrics.auth_failure(error.method());
        ProxyError::Auth(error)
    })
}

/// Inside a tunnel, a request must be for the tunnel's host (`Host` or `:authority`).
fn check_authority(request: &Request<Incoming>, tunnel: &Target) -> Result<(), ProxyError> {
    let named = match request.uri().authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => match request.headers().get(HOST).map(|h| h.to_str()) {
            Some(Ok(host)) => host.to_owned(),
            Some(Err(_)) => return Err(ProxyError::BadRequest("the Host header is not valid text".to_owned())),
            None => return Err(ProxyError::BadRequest("the request names no host".to_owned())),
        },
    };
    let matches = Target::parse_with_default(&named, Some(tunnel.port)).is_ok_and(|target| target == *tunnel);
    if matches {
        Ok(())
    } else {
        Err(ProxyError::Misdirected { host: named, tunnel: tunnel.to_string() })
    }
}

/// Refuses a compressed request body: the model, DLP and budget checks read the body as sent.
fn refuse_compressed(headers: &HeaderMap) -> Result<(), ProxyError> {
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let encodings = String::from_utf8_lossy(value.as_bytes());
        if encodings.split(',').any(|encoding| !encoding.trim().eq_ignore_ascii_case("identity")) {
            return Err(ProxyError::CompressedBody(encodings.trim().to_owned()));
        }
    }
    Ok(())
}

/// Reads the whole request body, refusing one larger than `max_body` (by its `Content-Length` before reading).
async fn read_body(headers: &HeaderMap, body: Incoming, max_body: u64) -> Result<Bytes, ProxyError> {
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(ProxyError::BodyTooLarge(max_body));
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ProxyError::BodyTooLarge(max_body)),
        Err(error) => Err(ProxyError::ClientClosed(std::io::Error::other(error.to_string()))),
    }
}

/// The model must match one of the `models` globs of one of the principal's teams, when any of them sets
/// `models` (several teams: the most permissive wins, as for destinations).
fn check_model(config: &Config, principal: &Principal, facts: &RequestFacts) -> Result<(), ProxyError> {
    // No allocation on the allowed path: the list and the message are only built for a refusal.
    let restricting = || {
        principal
            .teams
            .iter()
            .filter_map(|team| config.teams.get(team).map(|settings| (team, settings)))
            .filter(|(_, settings)| !settings.models.is_empty())
    };
    let Some((team, _)) = restricting().next() else { return Ok(()) };
    // Every model named must be allowed (a batch names one per request), and a body must name one.
    let allows = |model: &str| restricting().any(|(_, settings)| settings.model_globs.is_match(model));
    let denied = facts.models().find(|model| !allows(model));
    if denied.is_none() && facts.models().next().is_some() {
        return Ok(());
    }
    let allowed = restricting().flat_map(|(_, s)| s.models.iter().map(String::as_str)).collect::<Vec<_>>().join(", ");
    let rule: Arc<str> = format!("teams.{team}.models").into();
    match denied {
        None => Err(ProxyError::ModelMissing { rule, allowed }),
        Some(model) => {
            Err(ProxyError::ModelDenied { model: model.to_owned(), team: Some(team.clone()), rule, allowed })
        }
    }
}

/// Runs the DLP detectors; with `action: block` the first match refuses the request. Matches are recorded by
/// detector name only.
fn scan(gateway: &Gateway, config: &Config, body: &Bytes, exchange: &mut Exchange) -> Result<(), ProxyError> {
    let Some(dlp) = &config.llm.dlp else { return Ok(()) };
    let found = dlp.scan(body);
    for detector in &found {
        gateway.metrics.dlp_match(detector, dlp.blocks());
    }
    exchange.dlp = found;
    match exchange.dlp.first() {
        Some(detector) if dlp.blocks() => {
            Err(ProxyError::DlpBlocked { detector: detector.clone(), rule: format!("dlp.{detector}").into() })
        }
        _ => Ok(()),
    }
}

/// Reserves the estimate against every budget that applies; `state.on_error` decides when the state is away.
async fn reserve(
    gateway: &Gateway,
    config: &Config,
    principal: &Principal,
    estimate: i64,
    now: std::time::SystemTime,
) -> Result<Reservation, ProxyError> {
    match config.llm.budgets.reserve(gateway.limiter.backend(), principal, estimate, now).await {
        Ok(Ok(reservation)) => Ok(reservation),
        Ok(Err(refusal)) => Err(ProxyError::BudgetSpent(refusal)),
        Err(error) if config.state.allow_on_error => {
            tracing::warn!(%error, "budgets not enforced: the state backend is unreachable (state.on_error: allow)");
            gateway.metrics.state_error(gateway.limiter.backend_name());
            Ok(Reservation::none())
        }
        Err(error) => {
            gateway.metrics.state_error(gateway.limiter.backend_name());
            Err(ProxyError::StateUnavailable(error))
        }
    }
}

/// The precise error behind a failed upstream request.
fn upstream_failure(error: &hyper_util::client::legacy::Error, exchange: &Exchange) -> ProxyError {
    let target = exchange.upstream.clone().unwrap_or_default();
    match client::cause(error) {
        Some(cause) => cause.duplicate(),
        None => ProxyError::UpstreamIo { target, source: std::io::Error::other(error.to_string()) },
    }
}

/// Headers that describe one hop, not the message: never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes hop-by-hop headers, the headers `Connection` names, and tollgate's own `x-tollgate-*`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let internal: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("x-tollgate-")).cloned().collect();
    for name in internal {
        headers.remove(name);
    }
}
