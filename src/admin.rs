//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up), `/readyz` (accepting, and
//! with `audit.on_failure: block` the audit sink taking records), and, with the bearer `admin.token`,
//! `GET /admin/config`, `POST /admin/reload`, `GET /admin/usage` (spend and tokens summed from the audit log by
//! `usage`), `GET /admin/sessions[/ID]` (the sessions in the audit log, or one's timeline, by `sessions`) and
//! `GET /admin/fleet` (the clients seen, by `fleet`), and for the web console `GET /admin/overview`,
//! `/admin/budgets` and `/admin/denials` (`console::data`); the console itself at `/ui` (`console`), whose
//! sign-in session also opens `/admin/*`; with `admin.scim`, SCIM provisioning at `/scim/v2` (`scim`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::console::{self, Console};
use crate::metrics::Sampled;
use crate::report::{Filter, Format, Since};
use crate::sessions;
use crate::shared::Shared;
use crate::usage;

/// Serves admin requests until shutdown, bounded like the proxy listeners: at most
/// `server.max_admin_connections` at once (further ones are closed at once), each head within
/// `server.header_read_timeout`, an idle keep-alive connection closed after it.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener) {
    let config = shared.config.load_full();
    let slots = Arc::new(Semaphore::new(config.server.max_admin_connections));
    let header_timeout = config.server.header_read_timeout;
    let console = Arc::new(Console::default());
    tokio::spawn(console::history::sample(console.history.clone(), shared.clone()));
    loop {
        let (stream, client) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: say so and keep accepting once descriptors free up.
                    tracing::warn!(listener = "admin", %error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shutdown.cut_tunnels.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.client_error("admin", "connection_limit");
            continue;
        };
        let shared = shared.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(shared.clone(), console.clone(), client, request));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

async fn respond(
    shared: Arc<Shared>,
    console: Arc<Console>,
    client: std::net::SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path().starts_with("/scim/") {
        return Ok(crate::scim::http::respond(&shared, client, request).await);
    }
    if request.uri().path() == "/ui" || request.uri().path().starts_with("/ui/") {
        return Ok(console::respond(&console, &shared, client, request).await);
    }
    // The head only: no endpoint reads a body, and `Parts` may be held across the awaits of `/admin/usage`.
    let (request, _body) = request.into_parts();
    let path = request.uri.path();
    if path.starts_with("/admin/") {
        return Ok(admin(&shared, &console, &request).await);
    }
    let (status, content_type, body) = match (&request.method, path) {
        (&Method::GET, "/metrics") => {
            // The fleet gauges, read from the state backend (a failure keeps the last values).
            if let Ok((clients, ratio)) = shared.fleet.gauges().await {
                shared.metrics.fleet(&clients, ratio);
            }
            let oidc =
                shared.config.load().identity.oidc().map(|provider| provider.refresh_counts()).unwrap_or_default();
            let sampled = Sampled {
                log_lines_dropped: crate::logging::dropped_lines(),
                password_checks_run: shared.verifiers.checks_run(),
                password_checks_refused: shared.verifiers.checks_refused(),
                oidc_refresh_ok: oidc.ok,
                oidc_refresh_error: oidc.error,
                audit: shared.auditor.sample(),
                upstream_pooled_forward: shared.pool.len() as u64,
                upstream_pooled_model: shared.models.open_connections() as u64,
                state_spend: shared.limiter.backend().spend_backlog(),
            };
            (StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render_with(sampled))
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if shared.shutdown.stop_accepting.is_cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".to_owned())
        }
        // With audit.on_failure: block, a sink that cannot take records means requests are refused: not ready.
        (&Method::GET, "/readyz") => match shared.auditor.unhealthy() {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(unhealthy) if unhealthy.refusing => {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {unhealthy}\n"))
            }
            Some(unhealthy) => (StatusCode::OK, "text/plain", format!("ready, but {unhealthy}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Ok(reply(status, content_type, body))
}

/// `/admin/*`: bearer token (or a console session) first, then the endpoint.
async fn admin(shared: &Shared, console: &Console, request: &Parts) -> Response<Full<Bytes>> {
    let config = shared.config.load_full();
    let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return json_reply(
            StatusCode::FORBIDDEN,
            json!({"error": "admin.token is not configured: /admin endpoints are off"}),
        );
    };
    if let Err(refusal) = console::authorise(console, request, token) {
        return refusal.response();
    }
    match (&request.method, request.uri.path()) {
        (&Method::GET, "/admin/config") => json_reply(
            StatusCode::OK,
            json!({
                "version": shared.version.load(Ordering::Relaxed),
                "sha256": config.source.sha256,
                "loaded_at": crate::audit::timestamp(config.source.loaded_at),
                "path": config.source.path.display().to_string(),
                "state_backend": shared.limiter.backend_name(),
            }),
        ),
        (&Method::POST, "/admin/reload") => match crate::reload::reload(shared) {
            Ok(report) => json_reply(
                StatusCode::OK,
                json!({
                    "version": report.version,
                    "sha256": report.sha256,
                    "tunnels_revoked": report.tunnels_revoked,
                    "needs_restart": report.needs_restart,
                }),
            ),
            Err(error) => json_reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": error.to_string()})),
        },
        (&Method::GET, "/admin/usage") => usage(shared, &config, request.uri.query()).await,
        (&Method::GET, "/admin/fleet") => fleet(shared, request.uri.query()).await,
        (&Method::GET, "/admin/sessions") => list_sessions(shared, &config, request.uri.query()).await,
        (&Method::GET, "/admin/overview") => overview(shared, console, request.uri.query()),
        (&Method::GET, "/admin/budgets") => budgets(shared, &config).await,
        (&Method::GET, "/admin/denials") => denials(shared, &config, request.uri.query()).await,
        (&Method::GET, path) if path.starts_with("/admin/sessions/") => {
            timeline(shared, &config, &path["/admin/sessions/".len()..], request.uri.query()).await
        }
        _ => json_reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// `GET /admin/usage?team=&user=&since=&format=`: the `tollgate usage` report of the configured audit file, JSON
/// unless `format` says `table` or `csv`; `since` counts back from the shared's clock. The count of lines that are
/// not records is the `x-tollgate-invalid-lines` header (and `invalid_lines` in JSON).
async fn usage(shared: &Shared, config: &Config, query: Option<&str>) -> Response<Full<Bytes>> {
    let (filter, format) = match filter_query(query, shared.clock.now(), usage::DEFAULT_SINCE) {
        Ok(parsed) => parsed,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    };
    let report = match read_audit(shared, config, "usage is summed from", move |path| {
        usage::read_series(&[path.to_owned()], filter)
    })
    .await
    {
        Ok(report) => report,
        Err(response) => return response,
    };
    report_reply(format, report.invalid_lines(), 0, report.render(format))
}

/// `GET /admin/sessions?team=&user=&since=&format=`: the `tollgate sessions` listing of the configured audit file,
/// JSON unless `format` says otherwise; `since` (default 1d) counts back from the shared's clock. Headers:
/// `x-tollgate-invalid-lines`, and `x-tollgate-not-shown` (sessions left out past `sessions::SESSIONS_LIMIT`).
async fn list_sessions(shared: &Shared, config: &Config, query: Option<&str>) -> Response<Full<Bytes>> {
    let (filter, format) = match filter_query(query, shared.clock.now(), sessions::DEFAULT_SINCE) {
        Ok(parsed) => parsed,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    };
    let read = move |path: &std::path::Path| sessions::list_series(&[path.to_owned()], filter);
    let listing = match read_audit(shared, config, "sessions are read from", read).await {
        Ok(listing) => listing,
        Err(response) => return response,
    };
    report_reply(format, listing.invalid_lines(), listing.not_shown(), listing.render(format))
}

/// `GET /admin/sessions/ID?format=`: session ID's timeline (the id percent-decoded), JSON unless `format` says
/// otherwise; 404 when the audit file holds no record of it. Headers as for the listing (`x-tollgate-not-shown`:
/// entries left out past `sessions::TIMELINE_LIMIT`).
async fn timeline(shared: &Shared, config: &Config, id: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let parsed = percent_decode(id, Encoding::Path).and_then(|id| Ok((id, format_query(query)?)));
    let (id, format) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    };
    if id.is_empty() {
        return json_reply(StatusCode::NOT_FOUND, json!({"error": "no session id: GET /admin/sessions/ID"}));
    }
    let wanted = id.clone();
    let read = move |path: &std::path::Path| sessions::timeline_series(&[path.to_owned()], &wanted);
    let timeline = match read_audit(shared, config, "sessions are read from", read).await {
        Ok(timeline) => timeline,
        Err(response) => return response,
    };
    if !timeline.found() {
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no record of session {id:?} in the audit log")}),
        );
    }
    report_reply(format, timeline.invalid_lines(), timeline.not_shown(), timeline.render(format))
}

/// `GET /admin/fleet?stale=&format=`: the fleet inventory (`fleet`), JSON unless `format` says `table` or `csv`;
/// `stale=true` lists only the users whose last delivered settings or policy limits are not the current ones. 503
/// when the state backend cannot be read.
async fn fleet(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let parsed = query_pairs(query, &["stale", "format"]).and_then(|pairs| {
        let (mut stale, mut format) = (false, Format::Json);
        for (name, value) in pairs {
            match (name.as_str(), value.as_str()) {
                ("stale", "true" | "1") => stale = true,
                ("stale", "false" | "0") => stale = false,
                ("stale", other) => return Err(format!("stale: {other:?} is not true or false")),
                _ => format = value.parse().map_err(|e| format!("format: {e}"))?,
            }
        }
        Ok((stale, format))
    });
    let (stale, format) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    };
    match shared.fleet.listing(stale).await {
        Ok(listing) => reply(StatusCode::OK, format.content_type(), listing.render(format)),
        Err(error) => json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": error.to_string()})),
    }
}

/// `GET /admin/overview?minutes=`: requests, tunnels, denials and errors since start, in the last minute and hour,
/// and per minute for the last `minutes` (default 180, at most a day).
fn overview(shared: &Shared, console: &Console, query: Option<&str>) -> Response<Full<Bytes>> {
    match query_pairs(query, &["minutes"]).and_then(console::data::minutes_query) {
        Ok(minutes) => {
            let overview = console::data::overview(shared, &console.history, minutes, shared.clock.now());
            json_reply(StatusCode::OK, serde_json::to_value(overview).expect("numbers and strings serialise"))
        }
        Err(message) => json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    }
}

/// `GET /admin/budgets`: every configured budget with its spend, what is left, and when it runs out at today's
/// rate (today's spend from the audit log when `audit.file` is set). 503 when the state backend cannot be read.
async fn budgets(shared: &Shared, config: &Config) -> Response<Full<Bytes>> {
    let now = shared.clock.now();
    let today = match config.audit.file {
        Some(_) => {
            let filter = console::data::today_filter(now);
            let read = move |path: &std::path::Path| usage::read_series(&[path.to_owned()], filter);
            match read_audit(shared, config, "today's rate is read from", read).await {
                Ok(report) => console::data::Today::of(&report),
                Err(response) => return response,
            }
        }
        None => console::data::Today::default(),
    };
    match console::data::budgets(shared, config, &today, now).await {
        Ok(standings) => json_reply(
            StatusCode::OK,
            json!({
                "now": crate::audit::timestamp(now),
                "rate_from": if today.known { "audit_log" } else { "counters" },
                "budgets": standings,
            }),
        ),
        Err(error) => json_reply(StatusCode::SERVICE_UNAVAILABLE, console::data::state_error(&error)),
    }
}

/// `GET /admin/denials?limit=`: the newest denials and DLP matches (default 100, at most 1000) in the last
/// `DENIALS_TAIL_BYTES` of the audit file, with counts by rule and detector.
async fn denials(shared: &Shared, config: &Config, query: Option<&str>) -> Response<Full<Bytes>> {
    let limit = match query_pairs(query, &["limit"]).and_then(console::data::limit_query) {
        Ok(limit) => limit,
        Err(message) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": message})),
    };
    let read = move |path: &std::path::Path| console::data::denials(path, limit, console::data::DENIALS_TAIL_BYTES);
    match read_audit(shared, config, "denials are read from", read).await {
        Ok(found) => json_reply(StatusCode::OK, serde_json::to_value(found).expect("strings and numbers serialise")),
        Err(response) => response,
    }
}

/// Reads the configured audit file with `read`, off the async workers, once the records queued before the request
/// are written (waiting `REPORT_FLUSH_WAIT` at most). The error is the response to send: 404 without `audit.file`
/// (`reads` says what the report does with it), 500 when the file cannot be read.
async fn read_audit<T: Send + 'static>(
    shared: &Shared,
    config: &Config,
    reads: &str,
    read: impl FnOnce(&std::path::Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T, Response<Full<Bytes>>> {
    let Some(audit) = &config.audit.file else {
        let message = format!("audit.file is not configured: {reads} the audit log at audit.file.path");
        return Err(json_reply(StatusCode::NOT_FOUND, json!({"error": message})));
    };
    // Each read may go through a long-retained series: a few at once, the others told to come back.
    let Ok(reading) = shared.report_reads.clone().try_acquire_owned() else {
        let message = format!(
            "{} reports are reading the audit log already: try again in a few seconds",
            crate::shared::REPORTS_AT_ONCE
        );
        let mut response = json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": message}));
        response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
        return Err(response);
    };
    // Bounded: a stalled sink must not hold an admin connection; the report then reads what is on disk.
    let _ = tokio::time::timeout(REPORT_FLUSH_WAIT, shared.auditor.flush()).await;
    let path = audit.path.clone();
    let read = move || {
        let _reading = reading;
        read(&path)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(error)) => {
            let message = format!("{}: {error}", audit.path.display());
            Err(json_reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": message})))
        }
        Err(error) => {
            tracing::error!(%error, "a report task on the audit log failed");
            Err(json_reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "the report failed"})))
        }
    }
}

/// A rendered report with its content type and counts: `x-tollgate-invalid-lines` always, `x-tollgate-not-shown`
/// when something was left out.
fn report_reply(format: Format, invalid_lines: u64, not_shown: u64, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", format.content_type())
        .header("x-tollgate-invalid-lines", invalid_lines);
    if not_shown > 0 {
        response = response.header("x-tollgate-not-shown", not_shown);
    }
    response.body(Full::new(Bytes::from(body))).expect("static response parts are valid")
}

/// How long a report endpoint waits for queued records to be written before reading the file.
const REPORT_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads `team`, `user`, `since` (default `default_since` before `now`) and `format` (default json) from a query
/// string.
fn filter_query(
    query: Option<&str>,
    now: std::time::SystemTime,
    default_since: &str,
) -> Result<(Filter, Format), String> {
    let mut team = None;
    let mut user = None;
    let mut since: Since = default_since.parse()?;
    let mut format = Format::Json;
    for (name, value) in query_pairs(query, &["team", "user", "since", "format"])? {
        match name.as_str() {
            "team" => team = Some(value),
            "user" => user = Some(value),
            "since" => since = value.parse().map_err(|e| format!("since: {e}"))?,
            _ => format = value.parse().map_err(|e| format!("format: {e}"))?,
        }
    }
    Ok((Filter { team, user, since: since.start(now) }, format))
}

/// Reads `format` (default json) from a query string.
fn format_query(query: Option<&str>) -> Result<Format, String> {
    let mut format = Format::Json;
    for (_, value) in query_pairs(query, &["format"])? {
        format = value.parse().map_err(|e| format!("format: {e}"))?;
    }
    Ok(format)
}

/// The decoded `name=value` pairs of a query string whose value is not empty (an HTML form sends every field, and
/// an empty one means none); a name not in `known` is an error, not silently ignored.
fn query_pairs(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name, Encoding::Form)?;
        let value = percent_decode(value, Encoding::Form)?;
        if !known.contains(&name.as_str()) {
            let names = match known {
                [only] => (*only).to_owned(),
                [most @ .., last] => format!("{} and {last}", most.join(", ")),
                [] => "none".to_owned(),
            };
            return Err(format!("unknown parameter {name:?}: use {names}"));
        }
        if !value.is_empty() {
            pairs.push((name, value));
        }
    }
    Ok(pairs)
}

/// Where percent-encoded text comes from: a form's query string reads `+` as a space, a path keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Form,
    Path,
}

/// Decodes one `application/x-www-form-urlencoded` name or value (`+` is a space, `%XX` a byte) or a path segment
/// (`%XX` a byte); the result must be UTF-8. (An RFC 3339 offset in a query is written `%2B01:00`.)
fn percent_decode(text: &str, encoding: Encoding) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'+' if encoding == Encoding::Form => decoded.push(b' '),
            b'%' => {
                let hex = bytes.get(at + 1..at + 3).filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
                let byte = hex.and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
                decoded.push(byte.ok_or_else(|| format!("invalid percent-encoding in {text:?}"))?);
                at += 2;
            }
            byte => decoded.push(byte),
        }
        at += 1;
    }
    String::from_utf8(decoded).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", body.to_string())
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_queries_read_filters_and_defaults() {
        let now = humantime::parse_rfc3339("2026-05-31T12:00:00Z").unwrap();
        let ago = |days: u64| now - std::time::Duration::from_secs(days * 86_400);
        let (filter, format) = filter_query(None, now, usage::DEFAULT_SINCE).unwrap();
        assert_eq!(filter, Filter { team: None, user: None, since: ago(30) });
        assert_eq!(format, Format::Json);

        let (filter, format) = filter_query(Some("team=&user=&since=&format="), now, usage::DEFAULT_SINCE).unwrap();
        assert_eq!((filter.team, filter.user, filter.since, format), (None, None, ago(30), Format::Json));

        let query = "team=data+science&user=alice%40corp.com&since=2026-05-01T02:00:00%2B02:00&format=csv";
        let (filter, format) = filter_query(Some(query), now, usage::DEFAULT_SINCE).unwrap();
        assert_eq!(filter.team.as_deref(), Some("data science"));
        assert_eq!(filter.user.as_deref(), Some("alice@corp.com"));
        assert_eq!(filter.since, humantime::parse_rfc3339("2026-05-01T00:00:00Z").unwrap());
        assert_eq!(format, Format::Csv);
        assert_eq!(
            filter_query(Some("since=7d&format=table"), now, usage::DEFAULT_SINCE).unwrap(),
            (Filter { since: ago(7), ..filter_none() }, Format::Table)
        );
    }

    fn filter_none() -> Filter {
        Filter { team: None, user: None, since: std::time::SystemTime::UNIX_EPOCH }
    }

    #[test]
    fn usage_queries_refuse_what_they_cannot_read() {
        let now = std::time::SystemTime::now();
        let error = |query: &str| filter_query(Some(query), now, usage::DEFAULT_SINCE).unwrap_err();
        assert!(error("teams=red").starts_with("unknown parameter \"teams\""), "{}", error("teams=red"));
        assert!(error("since=yesterday").starts_with("since: \"yesterday\""), "{}", error("since=yesterday"));
        assert!(error("format=xml").starts_with("format: invalid format \"xml\""), "{}", error("format=xml"));
        assert!(error("user=%zz").contains("percent-encoding"));
        assert!(error("user=%+1").contains("percent-encoding"));
        assert!(error("user=%e9").contains("UTF-8"));
        assert!(error("user=%4").contains("percent-encoding"));
    }

    #[test]
    fn session_queries_read_their_own_window_and_the_format() {
        let now = humantime::parse_rfc3339("2026-05-31T12:00:00Z").unwrap();
        let (filter, format) = filter_query(None, now, sessions::DEFAULT_SINCE).unwrap();
        assert_eq!(filter.since, now - std::time::Duration::from_secs(86_400));
        assert_eq!(format, Format::Json);
        assert_eq!(format_query(None), Ok(Format::Json));
        assert_eq!(format_query(Some("format=csv")), Ok(Format::Csv));
        assert_eq!(format_query(Some("format=")), Ok(Format::Json));
        assert_eq!(format_query(Some("user=alice")), Err("unknown parameter \"user\": use format".to_owned()));
        assert!(format_query(Some("format=xml")).unwrap_err().starts_with("format: invalid format \"xml\""));
    }

    #[test]
    fn a_path_keeps_its_plus_signs_a_form_reads_them_as_spaces() {
        assert_eq!(percent_decode("a+b%2Fc%20d", Encoding::Path).as_deref(), Ok("a+b/c d"));
        assert_eq!(percent_decode("a+b%2Fc%20d", Encoding::Form).as_deref(), Ok("a b/c d"));
        assert!(percent_decode("%zz", Encoding::Path).unwrap_err().contains("percent-encoding"));
    }
}
