//! The web console at `/ui` on the admin listener: a sign-in with the admin token that opens a cookie session
//! (`session`), small server-rendered page shells whose script (`assets/console/console.js`) reads the documented
//! `/admin/*` JSON, the static assets embedded in the binary (Chart.js vendored under `assets/console/vendor/`),
//! and the data only the console needed (`data`, fed by the per-minute `history`). With `admin.console.oidc`, people
//! also sign in with the `auth.oidc` identity provider (`oidc`) into the same kind of session. `admin.rs` routes `/ui` here and
//! asks `authorise` whether an `/admin/*` request carries the bearer token or a session.

pub mod data;
pub mod history;
pub mod oidc;
pub mod session;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use self::history::History;
use self::session::{Sessions, COOKIE, SESSION_LIFETIME};
use crate::audit::{Record, Wait};
use crate::config::file::ConsoleOidc;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// The console's state, owned by the admin listener.
#[derive(Debug, Default)]
pub struct Console {
    pub sessions: Sessions,
    pub history: Arc<History>,
    /// Sign-ins at the identity provider under way (`admin.console.oidc`).
    pub pending: oidc::Pending,
}

/// The header a signed-in page sends its session's CSRF token in, on every request that is not a GET.
pub const CSRF_HEADER: &str = "x-tollgate-csrf";

/// The largest sign-in or sign-out form read.
const FORM_LIMIT: usize = 4096;

/// The Content-Security-Policy of every console response: scripts, styles and data from the listener itself only,
/// no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages: path, the name the script dispatches on (capitalised, the page's link), and the title.
pub const PAGES: [(&str, &str, &str); 7] = [
    ("/ui", "overview", "Overview"),
    ("/ui/spend", "spend", "Spend and tokens"),
    ("/ui/budgets", "budgets", "Budgets"),
    ("/ui/denials", "denials", "Denials and DLP"),
    ("/ui/sessions", "sessions", "Agent sessions"),
    ("/ui/fleet", "fleet", "Client fleet"),
    ("/ui/config", "config", "Config"),
];

/// A static file embedded in the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/console/console.css"),
    },
    Asset {
        name: "chart.umd.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/console/vendor/chart.js/chart.umd.min.js"),
    },
];

/// Each asset's URL, versioned by its content: served with a year's cache, a new build changes the URL.
static ASSET_URLS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| format!("/ui/assets/{}?v={}", asset.name, &hex::encode(Sha256::digest(asset.bytes))[..16]))
        .collect()
});

/// Why an `/admin/*` request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Neither the bearer token nor a console session: 401.
    Unauthenticated,
    /// A console session whose request changes something without its CSRF token: 403.
    MissingCsrf,
}

impl Refusal {
    /// The JSON response to send.
    pub fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::Unauthenticated => {
                json(StatusCode::UNAUTHORIZED, serde_json::json!({"error": "send Authorization: Bearer <admin.token>"}))
            }
            Refusal::MissingCsrf => json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": format!("a console session must send its {CSRF_HEADER} header")}),
            ),
        }
    }
}

/// Whether an `/admin/*` request may go on: the bearer `admin.token`, or a console session (which must also send
/// its CSRF token unless the method is GET or HEAD).
pub fn authorise(console: &Console, request: &Parts, token: &str) -> Result<(), Refusal> {
    let presented =
        request.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|presented| session::same_secret(presented, token)) {
        return Ok(());
    }
    if presented.is_none() {
        if let Some(signed_in) = cookie(&request.headers).and_then(|id| console.sessions.find(id, token)) {
            if matches!(request.method, Method::GET | Method::HEAD) {
                return Ok(());
            }
            let echoed = request.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if echoed.is_some_and(|echoed| session::same_secret(echoed, &signed_in.csrf)) {
                return Ok(());
            }
            return Err(Refusal::MissingCsrf);
        }
    }
    Err(Refusal::Unauthenticated)
}

/// Serves `/ui` and everything under it, for `client`.
pub async fn respond(
    console: &Console,
    shared: &Shared,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (config, metrics) = (&*shared.config.load(), &shared.metrics);
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if let Some(name) = path.strip_prefix("/ui/assets/") {
        return asset(&parts.method, name);
    }
    let Some(token) = config.admin.as_ref().and_then(|admin| admin.token.as_deref()) else {
        return page(StatusCode::FORBIDDEN, &sign_in_page("admin.token is not configured: the console is off."));
    };
    let session_id = cookie(&parts.headers);
    let signed_in = session_id.and_then(|id| console.sessions.find(id, token));
    let sso = config.admin.as_ref().and_then(|admin| admin.console_oidc.as_deref());
    match (&parts.method, path) {
        (&Method::GET, "/ui/login") => match signed_in {
            Some(_) => redirect("/ui", None),
            None => page(StatusCode::OK, &sign_in_form("", sso.is_some())),
        },
        (&Method::POST, "/ui/login") => {
            let response = sign_in(console, &parts, body, token, sso.is_some()).await;
            let result = match response.status() {
                StatusCode::SEE_OTHER => "ok",
                StatusCode::UNAUTHORIZED => "wrong_token",
                StatusCode::TOO_MANY_REQUESTS => "throttled",
                StatusCode::FORBIDDEN => "cross_origin",
                _ => "malformed",
            };
            metrics.console_sign_in("token", result);
            if result == "wrong_token" {
                shared.alerts.auth_failure(client.ip(), shared.clock.now());
            }
            // A token tried, right or wrong, is a record: the throttle bounds how many wrong ones a minute writes.
            // Throttled, cross-site and malformed posts are only counted, so no flood fills the audit file.
            if matches!(result, "ok" | "wrong_token") {
                let error = (result != "ok").then(|| result.to_owned());
                audit(shared, client, &parts, "console:sign_in:token", response.status(), None, error).await;
            }
            response
        }
        (&Method::GET, "/ui/login/oidc") => match (sso, config.identity.oidc()) {
            (Some(sso), Some(provider)) => begin_sso(console, provider, sso, metrics).await,
            _ => page(StatusCode::NOT_FOUND, &sign_in_page("Sign-in with SSO is not configured.")),
        },
        (&Method::GET, "/ui/login/callback") => match (sso, config.identity.oidc()) {
            (Some(sso), Some(provider)) => finish_sso(console, provider, sso, shared, client, &parts, token).await,
            _ => page(StatusCode::NOT_FOUND, &sign_in_page("Sign-in with SSO is not configured.")),
        },
        (&Method::POST, "/ui/logout") => {
            if !same_origin(&parts.headers) {
                return cross_origin();
            }
            let form = read_form(body).await;
            let csrf = form.ok().and_then(|form| field(&form, "csrf"));
            match (signed_in, session_id) {
                (Some(signed_in), Some(id))
                    if csrf.is_some_and(|csrf| session::same_secret(&csrf, &signed_in.csrf)) =>
                {
                    console.sessions.close(id);
                    let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
                    let response = redirect("/ui/login", Some(cleared));
                    audit(shared, client, &parts, "console:sign_out", response.status(), None, None).await;
                    response
                }
                (Some(_), _) => page(StatusCode::FORBIDDEN, &sign_in_page("Sign-out needs the page's CSRF token.")),
                (None, _) => redirect("/ui/login", None),
            }
        }
        (&Method::GET | &Method::HEAD, path) => {
            let Some((_, name, title)) = PAGES.iter().find(|(page_path, _, _)| *page_path == path) else {
                return page(StatusCode::NOT_FOUND, &shell_or_sign_in(signed_in.as_ref(), "missing", "Not found"));
            };
            match signed_in {
                Some(signed_in) => page(StatusCode::OK, &shell(&signed_in.csrf, name, title)),
                None => redirect("/ui/login", None),
            }
        }
        _ => page(StatusCode::METHOD_NOT_ALLOWED, &sign_in_page("Method not allowed.")),
    }
}

/// Writes what a console sign-in or sign-out did as an audit record (`kind: "console"`, the rule naming which):
/// the identity provider's user (none for the admin token, which names nobody), the client, the status and why a
/// refusal was one. Never the token or the provider's answer.
async fn audit(
    shared: &Shared,
    client: SocketAddr,
    parts: &Parts,
    rule: &'static str,
    status: StatusCode,
    user: Option<&str>,
    error: Option<String>,
) {
    let record = Record {
        ts: crate::audit::timestamp(SystemTime::now()),
        id: shared.next_request_id(),
        kind: "console",
        listener: Arc::from("admin"),
        client: client.ip().to_string(),
        user: user.map(Arc::from),
        method: parts.method.to_string(),
        path: Some(parts.uri.path().to_owned()),
        decision: if status.is_success() || status.is_redirection() { "allow" } else { "deny" },
        rule: Some(Arc::from(rule)),
        status: status.as_u16(),
        error,
        ..Record::default()
    };
    let _ = shared.auditor.record(record, Wait::Never).await;
}

/// `GET /ui/login/oidc`: a pending sign-in, its state in a cookie, and a redirect to the identity provider.
async fn begin_sso(
    console: &Console,
    provider: &crate::identity::Provider,
    sso: &ConsoleOidc,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if console.sessions.throttled() {
        metrics.console_sign_in("oidc", "throttled");
        return page(StatusCode::TOO_MANY_REQUESTS, &sign_in_form("Too many refused sign-ins: wait a minute.", true));
    }
    match oidc::begin(&console.pending, provider, sso).await {
        Ok((location, state)) => {
            // SameSite=Lax: the provider's redirect back is a cross-site navigation, which must carry it.
            let cookie = format!(
                "{}={state}; Path=/ui/login; HttpOnly; SameSite=Lax; Max-Age={}{}",
                oidc::STATE_COOKIE,
                oidc::PENDING_LIFETIME.as_secs(),
                secure_attribute(sso)
            );
            redirect(&location, Some(cookie))
        }
        Err(error) => {
            tracing::warn!(reason = "provider_unreachable", %error, "console sign-in with the identity provider failed");
            metrics.console_sign_in("oidc", "provider_unreachable");
            let message = format!("The identity provider cannot be reached: {error}");
            page(StatusCode::BAD_GATEWAY, &sign_in_form(&html_text(&message), true))
        }
    }
}

/// `GET /ui/login/callback`: the provider sent the browser back. A console session (as with the admin token) for a
/// member of one of `admin.console.oidc.groups`, else the form with why (counted like a refused token).
async fn finish_sso(
    console: &Console,
    provider: &crate::identity::Provider,
    sso: &ConsoleOidc,
    shared: &Shared,
    client: SocketAddr,
    parts: &Parts,
    token: &str,
) -> Response<Full<Bytes>> {
    let metrics = &shared.metrics;
    if console.sessions.throttled() {
        metrics.console_sign_in("oidc", "throttled");
        return page(StatusCode::TOO_MANY_REQUESTS, &sign_in_form("Too many refused sign-ins: wait a minute.", true));
    }
    let query = parts.uri.query().unwrap_or("");
    let state_cookie = named_cookie(&parts.headers, oidc::STATE_COOKIE);
    let clear_state = format!("{}=; Path=/ui/login; HttpOnly; SameSite=Lax; Max-Age=0", oidc::STATE_COOKIE);
    match oidc::finish(&console.pending, provider, sso, query, state_cookie, SystemTime::now()).await {
        Ok(member) => {
            tracing::info!(user = %member.user, group = %member.group, "console sign-in with the identity provider");
            metrics.console_sign_in("oidc", "ok");
            let opened = console.sessions.open(token);
            let session = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                opened.id,
                SESSION_LIFETIME.as_secs(),
                secure_attribute(sso)
            );
            // A page rather than a redirect: the browser came here from the provider's site, and a SameSite=Strict
            // cookie set now is only sent on a navigation that starts on this site.
            let html = format!(
                "{head}<meta http-equiv=\"refresh\" content=\"0;url=/ui\">\n</head>\n<body class=\"sign-in\">\n\
                 <main>\n<h1>tollgate console</h1>\n<p>Signed in as {user}.</p>\n\
                 <p><a href=\"/ui\">Continue to the console</a></p>\n</main>\n</body>\n</html>\n",
                head = head("Signed in"),
                user = html_text(&member.user),
            );
            let rule = "console:sign_in:oidc";
            audit(shared, client, parts, rule, StatusCode::OK, Some(&member.user), None).await;
            secured(Response::builder())
                .status(StatusCode::OK)
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store")
                .header("set-cookie", session)
                .header("set-cookie", clear_state)
                .body(Full::new(Bytes::from(html)))
                .expect("static response parts are valid")
        }
        Err(refused) => {
            tracing::warn!(reason = refused.reason, message = %refused.message,
                "console sign-in with the identity provider refused");
            metrics.console_sign_in("oidc", refused.reason);
            let status = if console.sessions.refused() { refused.status } else { StatusCode::TOO_MANY_REQUESTS };
            let error = Some(refused.reason.to_owned());
            audit(shared, client, parts, "console:sign_in:oidc", status, None, error).await;
            shared.alerts.auth_failure(client.ip(), shared.clock.now());
            let mut response = page(status, &sign_in_form(&html_text(&refused.message), true));
            if let Ok(value) = clear_state.parse() {
                response.headers_mut().append("set-cookie", value);
            }
            response
        }
    }
}

/// `; Secure` when the console is reached over https (its configured redirect URI says so).
fn secure_attribute(sso: &ConsoleOidc) -> &'static str {
    if sso.redirect_uri.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// `text` with the HTML metacharacters escaped.
fn html_text(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `POST /ui/login` with the form field `token`: a session cookie and a redirect to the overview, or the form
/// again with 401 (429 once `SIGN_IN_FAILURES_PER_MINUTE` refusals were counted this minute).
async fn sign_in(console: &Console, parts: &Parts, body: Incoming, token: &str, sso: bool) -> Response<Full<Bytes>> {
    if !same_origin(&parts.headers) {
        return cross_origin();
    }
    if console.sessions.throttled() {
        return page(StatusCode::TOO_MANY_REQUESTS, &sign_in_form("Too many refused sign-ins: wait a minute.", sso));
    }
    let presented = match read_form(body).await {
        Ok(form) => field(&form, "token"),
        Err(message) => return page(StatusCode::BAD_REQUEST, &sign_in_page(message)),
    };
    if !presented.as_deref().is_some_and(|presented| session::same_secret(presented, token)) {
        let status = if console.sessions.refused() { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
        return page(status, &sign_in_form("That is not the admin token.", sso));
    }
    let opened = console.sessions.open(token);
    // Secure when the browser says the page is served over https (a TLS proxy in front of the admin listener).
    let secure =
        parts.headers.get("origin").and_then(|v| v.to_str().ok()).is_some_and(|origin| origin.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        opened.id,
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    redirect("/ui", Some(cookie))
}

/// Whether a POST came from the console's own pages: `Origin` (when sent) must name the host the request came to,
/// and `Sec-Fetch-Site` (when sent) must say same-origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or("");
    let origin_ok = header("origin")
        .is_none_or(|origin| origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host));
    let site_ok = header("sec-fetch-site").is_none_or(|site| matches!(site, "same-origin" | "none"));
    origin_ok && site_ok
}

/// The answer to a form posted from another site.
fn cross_origin() -> Response<Full<Bytes>> {
    page(StatusCode::FORBIDDEN, &sign_in_page("Refused: the form was not posted from this console."))
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, COOKIE)
}

/// The value of the cookie `name`, if the request has one that is not empty.
fn named_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
}

/// Reads an `application/x-www-form-urlencoded` body of at most `FORM_LIMIT` bytes.
async fn read_form(body: Incoming) -> Result<String, &'static str> {
    let collected = Limited::new(body, FORM_LIMIT).collect().await.map_err(|_| "The form is too large or was cut.")?;
    String::from_utf8(collected.to_bytes().to_vec()).map_err(|_| "The form is not UTF-8.")
}

/// A form field's decoded value.
fn field(form: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(form.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

fn asset(method: &Method, name: &str) -> Response<Full<Bytes>> {
    let found = ASSETS.iter().find(|asset| asset.name == name);
    match (method, found) {
        (&Method::GET | &Method::HEAD, Some(asset)) => secured(Response::builder())
            .status(StatusCode::OK)
            .header("content-type", asset.content_type)
            .header("cache-control", "public, max-age=31536000, immutable")
            .body(Full::new(Bytes::from_static(asset.bytes)))
            .expect("static response parts are valid"),
        _ => page(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The headers every console response carries.
fn secured(builder: http::response::Builder) -> http::response::Builder {
    builder
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
}

fn page(status: StatusCode, html: &str) -> Response<Full<Bytes>> {
    secured(Response::builder())
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(html.to_owned())))
        .expect("static response parts are valid")
}

fn redirect(location: &str, set_cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut builder = secured(Response::builder())
        .status(StatusCode::SEE_OTHER)
        .header("location", location)
        .header("cache-control", "no-store");
    if let Some(cookie) = set_cookie {
        builder = builder.header("set-cookie", cookie);
    }
    builder.body(Full::new(Bytes::new())).expect("static response parts are valid")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// The `<head>` shared by every page.
fn head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · tollgate</title>\n<link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"{css}\">\n",
        css = ASSET_URLS[1],
    )
}

/// The sign-in form, with `message` (static text) above it when not empty.
fn sign_in_page(message: &str) -> String {
    sign_in_form(message, false)
}

/// The sign-in form, with `message` (HTML-safe text) above it when not empty, and with `sso` a link to sign in with
/// the identity provider.
fn sign_in_form(message: &str, sso: bool) -> String {
    let message = if message.is_empty() { String::new() } else { format!("<p class=\"message\">{message}</p>\n") };
    let sso = if sso {
        "<p class=\"sso\"><a class=\"button\" href=\"/ui/login/oidc\">Sign in with SSO</a></p>\n\
         <p class=\"hint\">Or with the admin token:</p>\n"
    } else {
        ""
    };
    format!(
        "{head}</head>\n<body class=\"sign-in\">\n<main>\n<h1>tollgate console</h1>\n{message}{sso}\
         <form method=\"post\" action=\"/ui/login\">\n<label for=\"token\">Admin token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n\
         <p class=\"hint\">The value of <code>admin.token</code>. Scripts send it as \
         <code>Authorization: Bearer</code> to the <code>/admin/</code> endpoints instead.</p>\n</main>\n</body>\n</html>\n",
        head = head("Sign in"),
    )
}

fn shell_or_sign_in(signed_in: Option<&session::SignedIn>, name: &str, title: &str) -> String {
    match signed_in {
        Some(signed_in) => shell(&signed_in.csrf, name, title),
        None => sign_in_page("Not found."),
    }
}

/// A page: the navigation, an empty content element the script fills, the CSRF token in a meta element.
fn shell(csrf: &str, name: &str, title: &str) -> String {
    let links: String = PAGES
        .iter()
        .map(|(path, page, label)| {
            let current = if *page == name { " aria-current=\"page\"" } else { "" };
            let mut link = page.to_string();
            link[..1].make_ascii_uppercase();
            format!("<a href=\"{path}\"{current} title=\"{label}\">{link}</a>")
        })
        .collect();
    format!(
        "{head}<meta name=\"tollgate-csrf\" content=\"{csrf}\">\n\
         <script src=\"{chart}\" defer></script>\n<script type=\"module\" src=\"{script}\"></script>\n</head>\n\
         <body data-page=\"{name}\">\n<header>\n<span class=\"brand\">tollgate</span>\n<nav>{links}</nav>\n\
         <form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Sign out</button></form>\n</header>\n\
         <main>\n<h1>{title}</h1>\n<div id=\"content\" aria-live=\"polite\"><p class=\"loading\">Loading…</p></div>\n\
         </main>\n</body>\n</html>\n",
        head = head(title),
        chart = ASSET_URLS[2],
        script = ASSET_URLS[0],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(field("csrf=a%2Bb&token=t+k%3D", "token").as_deref(), Some("t k="));
        assert_eq!(field("csrf=a%2Bb&token=t+k%3D", "csrf").as_deref(), Some("a+b"));
        assert_eq!(field("csrf=a", "token"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; tollgate_console=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&headers), Some("abc"));
        headers.insert("cookie", "tollgate_consoleX=abc; tollgate_console=".parse().unwrap());
        assert_eq!(cookie(&headers), None);
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, value.parse().unwrap());
            }
            headers
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9191")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9191"), ("origin", "http://127.0.0.1:9191")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9191"), ("origin", "https://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "a"), ("sec-fetch-site", "cross-site")])));
    }

    #[test]
    fn pages_name_versioned_assets_and_no_inline_script() {
        let html = shell("csrf-value", "overview", "Overview");
        assert!(html.contains("<meta name=\"tollgate-csrf\" content=\"csrf-value\">"));
        assert!(html.contains(&ASSET_URLS[0]) && ASSET_URLS[0].contains("?v="));
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("<script src=").count() + html.matches("<script type=\"module\" src=").count(), 2);
        assert!(!html.contains("style="));
    }
}
