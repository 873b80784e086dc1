//! The developer's HTTPS client toward the identity provider and the enrolling proxy: OpenID Connect discovery,
//! the OAuth 2.0 device authorization grant (RFC 8628), refresh tokens (RFC 6749 §6) and `POST /enroll`.
//!
//! One HTTP/1.1 request per connection, with rustls trusting the system roots plus the CA files given; every
//! request has a deadline and every body read is bounded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;

use super::error::LoginError;
use crate::tls;

/// One request (connect, TLS, request, response) gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_RESPONSE: usize = 1024 * 1024;
/// RFC 8628 §3.5: the wait between polls when the IdP names none, and what `slow_down` adds to it.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// The grant type of a device code.
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An HTTPS client trusting the system roots and extra CA files.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
}

/// What discovery names.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub device_authorization_endpoint: Option<String>,
    pub token_endpoint: String,
}

/// RFC 8628 §3.2: the answer to a device authorization request.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// RFC 6749 §5.1: tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
}

/// An HTTP answer: status and JSON body (`Null` when it was not JSON).
struct Answer {
    status: u16,
    body: Value,
}

impl Client {
    /// A client trusting the system roots and the certificates in `ca` files.
    pub fn new(ca: &[PathBuf]) -> Result<Client, LoginError> {
        let files = tls::UpstreamFiles { system_roots: true, extra_ca: ca.to_vec(), client_cert: None };
        let tls = tls::client_config(&files).map_err(|error| LoginError::Usage(format!("--ca: {error}")))?;
        Ok(Client { tls })
    }

    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must be `issuer`.
    pub async fn discover(&self, issuer: &str) -> Result<Endpoints, LoginError> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let answer = self.send(&url, None, None).await?;
        if answer.status != 200 {
            return Err(LoginError::Provider(format!("discovery {url}: HTTP status {}", answer.status)));
        }
        let endpoints: Endpoints = serde_json::from_value(answer.body)
            .map_err(|error| LoginError::Provider(format!("discovery {url}: {error}")))?;
        if endpoints.issuer != issuer {
            return Err(LoginError::Provider(format!(
                "discovery {url} names issuer {:?}, not {issuer:?}",
                endpoints.issuer
            )));
        }
        Ok(endpoints)
    }

    /// RFC 8628 §3.1: asks for a device code and a user code.
    pub async fn authorize_device(
        &self,
        endpoint: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<DeviceAuthorization, LoginError> {
        let form = form(&[("client_id", client_id), ("scope", scope)]);
        let answer = self.send(endpoint, Some(form), None).await?;
        if answer.status != 200 {
            return Err(LoginError::Provider(format!(
                "device authorization {endpoint}: {}",
                oauth_error(answer.status, &answer.body)
            )));
        }
        serde_json::from_value(answer.body)
            .map_err(|error| LoginError::Provider(format!("device authorization {endpoint}: {error}")))
    }

    /// RFC 8628 §3.4–3.5: polls the token endpoint until the user approves, denies, or the code expires; waits
    /// `interval` between polls, 5 s more after each `slow_down`.
    pub async fn poll_device(
        &self,
        endpoint: &str,
        client_id: &str,
        device: &DeviceAuthorization,
    ) -> Result<Tokens, LoginError> {
        let mut interval = device.interval.map_or(DEFAULT_INTERVAL, Duration::from_secs).max(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(device.expires_in);
        loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(LoginError::LoginNeeded("the code expired before the sign-in was approved".into()));
            }
            let form = form(&[
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", &device.device_code),
                ("client_id", client_id),
            ]);
            let answer = self.send(endpoint, Some(form), None).await?;
            if answer.status == 200 {
                return tokens(endpoint, answer.body);
            }
            match answer.body.get("error").and_then(Value::as_str) {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += SLOW_DOWN,
                Some("expired_token") => {
                    return Err(LoginError::LoginNeeded("the code expired before the sign-in was approved".into()))
                }
                Some("access_denied") => return Err(LoginError::LoginNeeded("the sign-in was denied".into())),
                _ => {
                    return Err(LoginError::Provider(format!(
                        "token endpoint {endpoint}: {}",
                        oauth_error(answer.status, &answer.body)
                    )))
                }
            }
        }
    }

    /// RFC 6749 §6: new tokens for a refresh token. A refused refresh token (`invalid_grant`: revoked, expired,
    /// already used) means signing in again.
    pub async fn refresh(
        &self,
        endpoint: &str,
        client_id: &str,
        refresh_token: &str,
        scope: &str,
    ) -> Result<Tokens, LoginError> {
        let form = form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
            ("scope", scope),
        ]);
        let answer = self.send(endpoint, Some(form), None).await?;
        match (answer.status, answer.body.get("error").and_then(Value::as_str)) {
            (200, _) => tokens(endpoint, answer.body),
            (_, Some("invalid_grant")) => Err(LoginError::LoginNeeded(format!(
                "the identity provider refused the refresh token ({}): it was revoked or has expired",
                oauth_error(answer.status, &answer.body)
            ))),
            _ => Err(LoginError::Provider(format!(
                "token endpoint {endpoint}: {}",
                oauth_error(answer.status, &answer.body)
            ))),
        }
    }

    /// `POST {proxy}/enroll` with the token and a PEM CSR; the answer's JSON (`certificate`, `not_after`, …).
    pub async fn enroll(&self, proxy: &str, access_token: &str, csr_pem: &str) -> Result<Value, LoginError> {
        let url = format!("{}{}", proxy.trim_end_matches('/'), crate::enroll::PATH);
        let body = serde_json::json!({ "csr": csr_pem }).to_string();
        let answer = self.send(&url, Some(("application/json", body)), Some(access_token)).await?;
        let message = || answer.body.get("message").and_then(Value::as_str).unwrap_or("no message").to_owned();
        match answer.status {
            200 => Ok(answer.body),
            401 => Err(LoginError::LoginNeeded(format!("{url} refused the token: {}", message()))),
            status => Err(LoginError::Provider(format!("{url}: HTTP status {status}: {}", message()))),
        }
    }

    /// One request: GET without a body, else POST with `(content type, body)`; a bearer token when given.
    async fn send(
        &self,
        url: &str,
        body: Option<(&'static str, String)>,
        bearer: Option<&str>,
    ) -> Result<Answer, LoginError> {
        let unreachable = |what: String| LoginError::Provider(format!("{url}: {what}"));
        let work = async {
            let uri: http::Uri = url.parse().map_err(|e| unreachable(format!("not a URL: {e}")))?;
            if uri.scheme_str() != Some("https") {
                return Err(LoginError::Usage(format!("{url}: must be an https:// URL")));
            }
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| unreachable(format!("connect: {e}")))?;
            let name = ServerName::try_from(host.clone()).map_err(|_| unreachable("not a server name".into()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(format!("HTTP: {e}")))?;
            tokio::spawn(connection);
            let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let mut request = http::Request::builder()
                .uri(path)
                .header(http::header::HOST, authority)
                .header(http::header::ACCEPT, "application/json")
                .header(http::header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")));
            if let Some(token) = bearer {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = match body {
                Some((content_type, body)) => request
                    .method(http::Method::POST)
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body))),
                None => request.method(http::Method::GET).body(Full::new(Bytes::new())),
            }
            .map_err(|e| unreachable(format!("request: {e}")))?;
            let response = sender.send_request(request).await.map_err(|e| unreachable(format!("HTTP: {e}")))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))))
    }
}

/// A form body (`application/x-www-form-urlencoded`).
fn form(pairs: &[(&str, &str)]) -> (&'static str, String) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    ("application/x-www-form-urlencoded", body)
}

/// The tokens of a 200 from the token endpoint.
fn tokens(endpoint: &str, body: Value) -> Result<Tokens, LoginError> {
    serde_json::from_value(body).map_err(|error| LoginError::Provider(format!("token endpoint {endpoint}: {error}")))
}

/// An OAuth error answer as text: `invalid_grant: description (HTTP 400)`.
fn oauth_error(status: u16, body: &Value) -> String {
    let field = |name: &str| body.get(name).and_then(Value::as_str);
    match (field("error"), field("error_description")) {
        (Some(error), Some(description)) => format!("{error}: {description} (HTTP {status})"),
        (Some(error), None) => format!("{error} (HTTP {status})"),
        _ => format!("HTTP status {status}"),
    }
}
