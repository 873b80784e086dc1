//! One model-API request: the phases of `request` in order (admit, then path, body, model, DLP, budget), the
//! request pointed at its upstream, and the upstream's response handed back as a metered body that settles the
//! request when it ends. A refusal is answered in the door's shape and recorded at once.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};

use super::actions::{self, Context, ResponseCalls};
use super::body::{MeteredBody, Settlement};
use super::idle::Busy;
use super::session::{Origin, Session};
use super::settings;
use super::telemetry;
use crate::actions::history::Conversation;
use crate::config::Config;
use crate::limits::budget::Reservation;
use crate::limits::Admitted;
use crate::llm::usage::Meter;
use crate::request::admit::{admit, Credentials, Destination, Upstream};
use crate::request::error::Error;
use crate::request::finish::{finish, Exchange};
use crate::request::{headers, model};
use crate::shared::Shared;
use crate::target::Target;
use crate::upstream::models;

/// The largest sized, non-streamed response body read whole and settled before its head is answered: a
/// Messages API answer of a few thousand tokens. Larger ones are relayed as they come.
const SETTLED_BYTES: u64 = 64 * 1024;

/// One request: refused in the door's shape, or forwarded with its response metered as it streams. `busy` keeps
/// the connection from idling out until the response body has been sent.
pub async fn handle(
    session: Arc<Session>,
    busy: Busy,
    request: Request<Incoming>,
) -> Result<Response<MeteredBody>, Infallible> {
    let shared = &session.shared;
    let config = shared.config.load_full();
    let door = session.door();
    let mut exchange = Exchange::new(shared.next_request_id(), door);
    exchange.shape = door.shape(true);
    exchange.method = request.method().as_str().to_owned();
    exchange.set_path(request.uri().path());
    let mut held = Held::default();
    match forward(&session, &config, request, &mut exchange, &mut held).await {
        Ok(response) => Ok(response.map(|body| body.holding(busy))),
        Err(error) => {
            // The client gets this refusal, even after the upstream answered (a response that cannot be checked).
            exchange.status = error.status(exchange.shape);
            exchange.fail(&error);
            let response = error.http_response(exchange.shape, &exchange.id);
            // Slots and reservations go back before the record, as on the proxy path.
            held.release().await;
            let release = finish(shared, &session.peer, exchange).await;
            Ok(response.map(|body| MeteredBody::refusal(body, release).holding(busy)))
        }
    }
}

/// What a request holds until it ends: concurrency slots, a budget reservation, and its share of the body buffers.
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

/// The phases in order, then the upstream's response.
async fn forward(
    session: &Session,
    config: &Arc<Config>,
    request: Request<Incoming>,
    exchange: &mut Exchange,
    held: &mut Held,
) -> Result<Response<MeteredBody>, Error> {
    let shared = &session.shared;
    let peer = &session.peer;
    if request.method() == http::Method::CONNECT {
        // A tunnel inside a tunnel (or an h2 extended CONNECT) would carry bytes past every check below.
        return Err(Error::BadRequest("CONNECT is not served here: open a tunnel to the proxy itself".to_owned()));
    }
    let named = named_host(&session.origin, &request)?;
    let headers = request.headers();
    let credentials = match &session.origin {
        Origin::Tunnel { principal, .. } => Credentials::Tunnel(principal),
        Origin::Forward => Credentials::Proxy {
            certificate: peer.certificate.as_ref(),
            proxy_authorization: headers.get(http::header::PROXY_AUTHORIZATION).map(HeaderValue::as_bytes),
        },
        Origin::Gateway => Credentials::Api {
            certificate: peer.certificate.as_ref(),
            authorization: headers.get(http::header::AUTHORIZATION).map(HeaderValue::as_bytes),
            api_key: headers.get("x-api-key").map(HeaderValue::as_bytes),
        },
    };
    exchange.session = actions::session(headers);
    exchange.user_agent = actions::user_agent(headers);
    let destination = Destination::Model { host: named.as_ref(), listener: &peer.listener };
    let admission = admit(shared, config, credentials, destination, peer.address.ip(), exchange).await?;
    held.admitted = Some(admission.slots);
    let upstream = admission.upstream.expect("a model destination is routed");
    let principal = exchange.principal.clone().expect("admitted requests have a principal");
    session.connection.identify(&principal.name);

    let path = model::check_path(config, request.uri().path(), exchange)?.into_owned();
    // Answered here, after the phases every request runs (identity, audit health, policy, limits, path).
    if let Some(endpoint) = telemetry::dropped(config, &session.origin, request.method(), &path) {
        // Nothing goes upstream: the slots go back before the answer is recorded, as for a refusal.
        if let Some(admitted) = held.admitted.take() {
            admitted.release().await;
        }
        return telemetry::answer(session, config, request, exchange, endpoint).await;
    }
    if matches!(session.origin, Origin::Tunnel { .. }) {
        let (method, headers) = (request.method(), request.headers());
        if let Some(answer) = settings::answer(config, &principal, method, &path, headers, &exchange.id) {
            // The fleet inventory keeps what each user's client was last given (a 304 confirms its copy).
            shared.fleet.delivered(&principal.name, answer.kind, &answer.checksum);
            return Ok(answered(session, config, answer, exchange, held));
        }
    }
    if config.llm.is_metered(&path) {
        let session = exchange.session.as_deref();
        shared.fleet.seen(&principal.name, &principal.teams, exchange.user_agent.as_deref(), session);
    }
    let (mut parts, body) = request.into_parts();
    let body = model::read_body(config, &shared.body_buffers, &parts.headers, body).await?;
    exchange.bytes_up = body.bytes.len() as u64;
    let metered = config.llm.is_metered(&path) && parts.method == http::Method::POST;
    let worst_case = model::check_body(shared, config, &principal, &parts.headers, &body.bytes, metered, exchange)?;
    // Agent actions: a Messages request's replayed calls are checked before it leaves; its response's calls are
    // read as it streams back. Whatever `intercept.meter_paths` says: metering is not what decides this.
    let posted = parts.method == http::Method::POST;
    let actions = match posted.then(|| Conversation::of(&path)).flatten() {
        Some(conversation) => {
            let context = Context::new(shared, config, &session.peer, exchange);
            context.check_replayed(&body.bytes, conversation)?;
            (conversation == Conversation::Message).then_some(context)
        }
        None => None,
    };
    if metered && !config.llm.budgets.is_empty() {
        let now = shared.clock.now();
        held.reservation = Some(model::reserve(shared, config, &principal, worst_case, now).await?);
    }

    let api_key = point(&session.origin, &upstream, &path, &mut parts, exchange)?;
    exchange.region = principal.region.clone().or_else(|| {
        principal.teams.iter().find_map(|t| config.teams.get(t).and_then(|s| s.region.as_deref())).map(Arc::from)
    });
    // The response is read as it passes (usage, tool calls): ask for it uncompressed.
    rewrite_headers(&mut parts.headers, &session.origin, api_key, metered || actions.is_some());
    parts.version = Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, Full::new(body.bytes.clone()));

    let wait = config.upstream.idle_timeout;
    let response = match tokio::time::timeout(wait, shared.models.request(upstream_request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Err(upstream_failure(&error, exchange)),
        Err(_) => return Err(Error::UpstreamTimeout { target: exchange.upstream.clone().unwrap_or_default() }),
    };
    // The body has been sent: its share of the buffers goes back.
    drop(body);
    exchange.status = response.status().as_u16();
    let (mut parts, incoming) = response.into_parts();
    headers::strip(&mut parts.headers);
    let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let mut meter = metered.then(|| Meter::for_content_type(content_type));
    let streamed = content_type.is_some_and(crate::llm::usage::is_event_stream);
    let actions = actions.filter(|_| (200..300).contains(&exchange.status));
    if actions.as_ref().is_some_and(Context::holds) {
        // A compressed body cannot be read for its tool calls (tollgate asked for `identity`): fail closed.
        if let Some(encoding) = compressed(&parts.headers) {
            return Err(Error::ResponseUnchecked(format!("it is compressed ({encoding})")));
        }
    }
    let body = match &actions {
        // A whole message under a policy that can deny: read before it is answered, to refuse it if a call is
        // denied (its tokens are metered and charged all the same).
        Some(context) if context.holds() && !streamed => {
            let body = read_message(shared, config, &parts.headers, incoming, exchange.upstream.as_deref()).await?;
            if let Some(meter) = &mut meter {
                meter.feed(&body.bytes);
            }
            Reply::Whole(context.decide_message(&body.bytes), body.bytes)
        }
        _ => Reply::Relayed(incoming),
    };
    let calls =
        actions.filter(|_| matches!(body, Reply::Relayed(_))).map(|context| ResponseCalls::new(context, content_type));
    if calls.as_ref().is_some_and(ResponseCalls::holds) {
        // A held call may be replaced by an error event: the length is no longer the upstream's.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let mut settlement = Settlement {
        shared: shared.clone(),
        config: config.clone(),
        peer: session.peer.clone(),
        exchange: std::mem::replace(exchange, Exchange::new(String::new(), session.door())),
        admitted: held.admitted.take(),
        reservation: held.reservation.take(),
    };
    // A whole message is settled before its head is answered (see `MeteredBody::settled`): one write to the
    // client instead of the head, then the body once its record is written. A stream is relayed as it comes.
    let response = match body {
        Reply::Relayed(incoming) => {
            let length = incoming.size_hint().exact().filter(|length| !streamed && *length <= SETTLED_BYTES);
            // Held in the body buffers until sent; when they are taken, relayed as it comes instead.
            let buffered =
                length.and_then(|length| shared.body_buffers.clone().try_acquire_many_owned(length as u32).ok());
            let body = MeteredBody::upstream(incoming, meter, calls, settlement);
            match buffered {
                Some(buffered) => Response::from_parts(parts, body.settled(wait, Some(buffered)).await),
                None => Response::from_parts(parts, body),
            }
        }
        Reply::Whole(Ok(()), body) => {
            Response::from_parts(parts, MeteredBody::whole(body, meter, settlement).settled(wait, None).await)
        }
        Reply::Whole(Err(denied), _) => {
            let exchange = &mut settlement.exchange;
            exchange.status = denied.status(exchange.shape);
            exchange.fail(&denied);
            let (parts, body) = denied.http_response(exchange.shape, &exchange.id).into_parts();
            Response::from_parts(parts, MeteredBody::whole(body, meter, settlement).settled(wait, None).await)
        }
    };
    Ok(response)
}

/// Claude Code's managed settings or policy limits, answered by tollgate and recorded like any response.
fn answered(
    session: &Session,
    config: &Arc<Config>,
    answer: settings::Answer,
    exchange: &mut Exchange,
    held: &mut Held,
) -> Response<MeteredBody> {
    exchange.status = answer.response.status().as_u16();
    exchange.upstream = Some(format!("tollgate:managed_settings/{}", answer.kind.name()));
    let settlement = Settlement {
        shared: session.shared.clone(),
        config: config.clone(),
        peer: session.peer.clone(),
        exchange: std::mem::replace(exchange, Exchange::new(String::new(), session.door())),
        admitted: held.admitted.take(),
        reservation: held.reservation.take(),
    };
    let (parts, body) = answer.response.into_parts();
    Response::from_parts(parts, MeteredBody::whole(body, None, settlement))
}

/// The upstream's body as it goes back: relayed as it comes, or read whole first (and decided).
enum Reply {
    Relayed(Incoming),
    Whole(Result<(), Error>, bytes::Bytes),
}

/// A `Content-Encoding` other than `identity`, if the response has one.
fn compressed(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .find(|encoding| !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity"))
}

/// Reads a whole (non-streamed) response, within `MAX_JSON_BODY`, the upstream's idle timeout and the shared body
/// buffers; one larger cannot be checked for agent actions and is refused.
async fn read_message(
    shared: &Shared,
    config: &Config,
    headers: &HeaderMap,
    incoming: Incoming,
    upstream: Option<&str>,
) -> Result<model::Body, Error> {
    let target = || upstream.unwrap_or_default().to_owned();
    let max = crate::llm::usage::MAX_JSON_BODY;
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let capacity = config.server.max_buffered_body_bytes;
    let read = model::collect(&shared.body_buffers, capacity, declared, incoming, max as u64, || {
        Error::ResponseUnchecked(format!("it is larger than {max} bytes"))
    });
    match tokio::time::timeout(config.upstream.idle_timeout, read).await {
        Ok(Err(Error::ClientClosed(source))) => Err(Error::UpstreamIo { target: target(), source }),
        Ok(result) => result,
        Err(_) => Err(Error::UpstreamTimeout { target: target() }),
    }
}

/// The host a request names, where the client names one. Inside a tunnel it must be the tunnel's host, in the URI
/// (h2 `:authority`, an absolute-form target) and in `Host` alike (421 otherwise); an absolute-form request names
/// it in its URI. A gateway request names none: its route decides.
fn named_host(origin: &Origin, request: &Request<Incoming>) -> Result<Option<Target>, Error> {
    match origin {
        Origin::Tunnel { target, .. } => {
            let named_in_uri = request.uri().authority().map(|authority| authority.as_str());
            let named_in_host = match request.headers().get(HOST).map(|h| h.to_str()) {
                Some(Ok(host)) => Some(host),
                Some(Err(_)) => return Err(Error::BadRequest("the Host header is not valid text".to_owned())),
                None => None,
            };
            if named_in_uri.is_none() && named_in_host.is_none() {
                return Err(Error::BadRequest("the request names no host".to_owned()));
            }
            for named in named_in_uri.into_iter().chain(named_in_host) {
                let same = Target::parse_with_default(named, Some(target.port)).is_ok_and(|t| t == *target);
                if !same {
                    return Err(Error::Misdirected { host: named.to_owned(), tunnel: target.to_string() });
                }
            }
            Ok(Some(target.clone()))
        }
        Origin::Forward => {
            let uri = request.uri();
            let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
            let authority = uri.authority().ok_or_else(|| Error::BadRequest(format!("{uri} names no host")))?;
            let target = Target::parse_with_default(authority.as_str(), Some(default_port))
                .map_err(|e| Error::BadRequest(e.to_string()))?;
            Ok(Some(target))
        }
        Origin::Gateway => Ok(None),
    }
}

/// Points the request at its upstream with the canonical path: the configured upstream's URL (and `api_key`), or
/// the host the client named. Sets the URI and `Host`, and records the upstream.
fn point(
    origin: &Origin,
    upstream: &Upstream,
    path: &str,
    parts: &mut http::request::Parts,
    exchange: &mut Exchange,
) -> Result<Option<HeaderValue>, Error> {
    let query = parts.uri.query();
    let path_and_query = |base: &str| {
        let mut joined = String::with_capacity(base.len() + path.len() + query.map_or(0, |query| query.len() + 1));
        joined.push_str(base);
        joined.push_str(path);
        if let Some(query) = query {
            joined.push('?');
            joined.push_str(query);
        }
        joined
    };
    let (scheme, authority, path_and_query, name, api_key) = match upstream {
        Upstream::Configured(upstream) => (
            upstream.scheme.clone(),
            upstream.authority.to_string(),
            path_and_query(&upstream.base_path),
            upstream.name.to_string(),
            upstream.api_key.clone(),
        ),
        Upstream::Origin(target) => {
            let https = match origin {
                Origin::Forward => parts.uri.scheme() == Some(&http::uri::Scheme::HTTPS),
                Origin::Tunnel { .. } | Origin::Gateway => true,
            };
            let scheme = if https { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
            let default_port = if https { 443 } else { 80 };
            let authority = if target.port == default_port { target.host.to_string() } else { target.to_string() };
            (scheme, authority, path_and_query(""), target.to_string(), None)
        }
    };
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Error::BadRequest(format!("cannot build the upstream URL: {e}")))?;
    let host = HeaderValue::from_str(&authority).map_err(|_| Error::BadRequest("invalid upstream host".into()))?;
    parts.headers.insert(HOST, host);
    exchange.upstream = Some(name);
    Ok(api_key)
}

/// The request headers as they go upstream: hop-by-hop ones removed (`Proxy-Authorization` among them), the
/// client's credential removed when it was for tollgate (gateway) or is replaced by the upstream's `api_key`, and
/// a request whose response is read as it passes (usage, tool calls) asking for it uncompressed.
fn rewrite_headers(headers: &mut HeaderMap, origin: &Origin, api_key: Option<HeaderValue>, read: bool) {
    headers::strip(headers);
    if matches!(origin, Origin::Gateway) || api_key.is_some() {
        headers.remove(http::header::AUTHORIZATION);
        headers.remove("x-api-key");
    }
    if let Some(key) = api_key {
        headers.insert(HeaderName::from_static("x-api-key"), key);
    }
    if read && headers.contains_key(http::header::ACCEPT_ENCODING) {
        headers.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
}

/// The precise error behind a failed upstream request.
fn upstream_failure(error: &hyper_util::client::legacy::Error, exchange: &Exchange) -> Error {
    let target = exchange.upstream.clone().unwrap_or_default();
    match models::cause(error) {
        Some(cause) => cause.duplicate(),
        None => Error::UpstreamIo { target, source: std::io::Error::other(error.to_string()) },
    }
}
