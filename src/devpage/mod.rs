//! The developer page: a reserved host name (`developer_page.host`, default `tollgate.internal`) that the forward
//! proxy answers itself instead of forwarding. An absolute-form `GET http://tollgate.internal/` is identified like
//! every request (`request::admit::identify`: an unidentified client gets the proxy's 407) and answered with who
//! tollgate thinks the client is, its limits and budgets left, its latest refusals (`denials`), and the
//! interception CA with the lines for the client's shell and Claude Code's settings (`page`).
//!
//! Paths: `/` (HTML, or JSON for `Accept: application/json`), `/whoami.json`, `/ca.pem`. A CONNECT to the host is
//! refused with a 400 saying to use `http://` (`over_connect`).

pub mod denials;
pub mod page;

use std::io::Write;
use std::sync::Arc;

use crate::config::Config;
use crate::http1::body::Framing;
use crate::http1::head::RequestHead;
use crate::identity::Principal;
use crate::limits::backend::millis;
use crate::request::admit::{identify, Credentials};
use crate::request::door::Peer;
use crate::request::error::Error;
use crate::request::finish::Exchange;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::target::{Host, Target};
use page::{BudgetLeft, View};

/// The rule recorded for requests the page answers.
pub const RULE: &str = "developer_page";

/// Whether `target` is the developer page's reserved host (any port).
pub fn addressed(config: &Config, target: &Target) -> bool {
    match (&config.developer_page, &target.host) {
        (Some(reserved), Host::Name(name)) => **reserved == **name,
        _ => false,
    }
}

/// The refusal of a CONNECT to the reserved host: the page is served over plain `http://` only.
pub fn over_connect(config: &Config) -> Error {
    let host = config.developer_page.as_deref().unwrap_or_default();
    Error::BadRequest(format!(
        "{host} is answered by tollgate itself, over http:// only: open http://{host}/ through this proxy"
    ))
}

/// The answer to one request for the page, to be sent once the exchange is recorded, like every tollgate-made
/// answer.
#[derive(Debug)]
pub struct Answered {
    pub status: u16,
    /// The whole response: head and body.
    pub answer: Vec<u8>,
    /// The connection may serve another request.
    pub keep_alive: bool,
}

/// Answers one absolute-form request to the reserved host: identifies the client, then renders the page, its JSON
/// or the CA.
pub async fn serve(
    shared: &Shared,
    config: &Config,
    head: &RequestHead,
    path: &str,
    peer: &Peer,
    client: &Stream,
    exchange: &mut Exchange,
) -> Result<Answered, Error> {
    let credentials = Credentials::Proxy {
        certificate: peer.certificate.as_ref(),
        proxy_authorization: head.header("proxy-authorization"),
    };
    let now = shared.clock.now();
    let principal = identify(shared, config, credentials, peer.address.ip(), now).await?;
    exchange.principal = Some(principal.clone());
    exchange.rule = Some(Arc::from(RULE));
    // A body is never read here: the connection closes after the answer rather than take it for a request.
    let keep_alive = head.keep_alive() && head.framing == Framing::Empty;
    let method = head.method();
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (405, "text/plain; charset=utf-8", format!("{method} is not served here: use GET\n").into_bytes())
    } else {
        match path {
            "/" | "/index.html" if !wants_json(head) => {
                let view = view(shared, config, &principal, peer, client).await;
                (200, "text/html; charset=utf-8", page::html(&view).into_bytes())
            }
            "/" | "/index.html" | "/whoami.json" => {
                let view = view(shared, config, &principal, peer, client).await;
                (200, "application/json", page::json(&view).into_bytes())
            }
            "/ca.pem" => match shared.minter.load_full() {
                Some(minter) => (200, "application/x-pem-file", minter.ca_cert_pem().as_bytes().to_vec()),
                None => (
                    404,
                    "text/plain; charset=utf-8",
                    b"tollgate intercepts nothing: there is no CA to trust\n".to_vec(),
                ),
            },
            _ => (404, "text/plain; charset=utf-8", b"not found: try / , /whoami.json or /ca.pem\n".to_vec()),
        }
    };
    let mut out = Vec::with_capacity(body.len() + 512);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let _ =
        write!(out, "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if path == "/ca.pem" && status == 200 {
        out.extend_from_slice(b"Content-Disposition: attachment; filename=\"tollgate-ca.pem\"\r\n");
    }
    // The page names the user and its refusals: no cache keeps it, no other origin frames it, and it runs nothing.
    out.extend_from_slice(
        b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
          Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'\r\n\
          Referrer-Policy: no-referrer\r\nVary: Accept\r\n",
    );
    let _ = write!(out, "x-tollgate-request-id: {}\r\n", exchange.id);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if method != "HEAD" {
        out.extend_from_slice(&body);
    }
    Ok(Answered { status, answer: out, keep_alive })
}

/// `Accept` names `application/json` (and not `text/html` before it).
fn wants_json(head: &RequestHead) -> bool {
    let Some(accept) = head.header("accept") else { return false };
    let accept = String::from_utf8_lossy(accept).to_ascii_lowercase();
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Everything the page shows, gathered for `principal`.
async fn view(shared: &Shared, config: &Config, principal: &Principal, peer: &Peer, client: &Stream) -> View {
    let now = shared.clock.now();
    let plan = config.limits.plan(principal);
    let budgets = config.llm.budgets.applying(principal);
    let spent = if budgets.is_empty() {
        Ok(Vec::new())
    } else {
        let keys = config.llm.budgets.keys(principal, &budgets, now);
        shared.limiter.backend().spend(&keys, millis(now)).await
    };
    let budgets = match spent {
        Ok(spent) => budgets
            .into_iter()
            .zip(spent.into_iter().chain(std::iter::repeat(0)))
            .map(|(budget, spent)| BudgetLeft { budget, spent_micro_usd: Some(spent) })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "developer page: spend not shown, the state backend is unreachable");
            budgets.into_iter().map(|budget| BudgetLeft { budget, spent_micro_usd: None }).collect()
        }
    };
    let listener = config.listeners.iter().find(|l| l.name == peer.listener);
    View {
        host: config.developer_page.as_deref().unwrap_or_default().to_owned(),
        principal: principal.clone(),
        plan,
        budgets,
        denials: shared.denials.of(&principal.name),
        intercepts_model_host: Target::parse_authority(page::MODEL_HOST).is_ok_and(|t| config.llm.intercepts(&t)),
        ca_available: shared.minter.load().is_some(),
        proxy_tls: listener.is_some_and(|l| l.tls.is_some()),
        // The address the client reached; its host is only shown when the listener binds one address (one that
        // binds every address may sit behind a load balancer whose name the client uses instead).
        proxy_address: client.tcp().local_addr().ok(),
        proxy_binds_every_address: listener.is_none_or(|l| l.bind.ip().is_unspecified()),
    }
}
