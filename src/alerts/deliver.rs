//! Delivery of one alert to one sink: a webhook `POST` (JSON, or Slack's `{"text": …}`) over hyper with the
//! upstream trust settings, or an email over SMTP with STARTTLS (`lettre`). Each is retried with a backoff and
//! bounded by a timeout; the error of the last attempt is what the audit record says.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use tokio::net::TcpStream;

use super::rules::{Email, Sink, Target};
use crate::config::file::AlertFormat;
use crate::config::Config;

/// Attempts per sink, and the pause before each retry.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];
/// One attempt's bound: connect, TLS, request and response (or the whole SMTP exchange).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a failing webhook's answer quoted in the error.
const QUOTED_BODY: usize = 200;

/// One alert as sinks receive it (`format: json` posts exactly this object).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: String,
    pub ts: String,
    pub rule: Arc<str>,
    /// The rule's kind: `budget`, `spend_anomaly`, `after_hours`, `action`, `dlp`, `auth_failures`.
    pub kind: &'static str,
    pub scope: &'static str,
    pub key: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl Alert {
    /// One line: `[tollgate] budget-finance: team backend has spent 52% of its daily budget ($10.40 of $20.00)`.
    fn line(&self) -> String {
        format!("[tollgate] {}: {}", self.rule, self.message)
    }
}

/// Delivers `alert` to `sink`, retrying; the last attempt's error when every one failed.
pub async fn send(config: &Config, sink: &Sink, alert: &Alert) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[attempt - 1]).await;
        }
        let result = match &sink.target {
            Target::Webhook { url, format } => {
                tokio::time::timeout(ATTEMPT_TIMEOUT, post(config, url, *format, alert)).await
            }
            Target::Email(email) => tokio::time::timeout(ATTEMPT_TIMEOUT, mail(email, alert)).await,
        };
        match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => last = error,
            Err(_) => last = format!("no answer within {}", humantime::format_duration(ATTEMPT_TIMEOUT)),
        }
    }
    Err(last)
}

/// One webhook `POST`; any 2xx answer is a delivery.
async fn post(config: &Config, url: &http::Uri, format: AlertFormat, alert: &Alert) -> Result<(), String> {
    let body = match format {
        AlertFormat::Json => serde_json::to_vec(alert),
        AlertFormat::Slack => serde_json::to_vec(&serde_json::json!({ "text": alert.line() })),
    }
    .map_err(|e| format!("cannot encode the alert: {e}"))?;
    let https = url.scheme_str() == Some("https");
    let host = url.host().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = url.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = if https {
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config.upstream.tls.clone());
        let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS with {host}:{port} failed: {e}"))?;
        exchange(TokioIo::new(tls), request).await?
    } else {
        exchange(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let quoted = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BODY)]).into_owned();
    Err(format!("the webhook answered {status}: {quoted}"))
}

async fn exchange<T>(
    io: TokioIo<T>,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(|e| format!("the webhook request failed: {e}"))
}

/// One email to the sink's recipients, over STARTTLS (required) or implicit TLS.
async fn mail(email: &Email, alert: &Alert) -> Result<(), String> {
    let mut builder = Message::builder().from(email.from.clone()).subject(alert.line());
    for recipient in &email.to {
        builder = builder.to(recipient.clone());
    }
    let body = format!(
        "{}\n\nrule: {}\nkind: {}\nscope: {} {}\n{}{}{}time: {}\nalert id: {}\n",
        alert.message,
        alert.rule,
        alert.kind,
        alert.scope,
        alert.key,
        alert.value.map(|v| format!("value: {v}\n")).unwrap_or_default(),
        alert.threshold.map(|t| format!("threshold: {t}\n")).unwrap_or_default(),
        alert.request.as_deref().map(|r| format!("request: {r}\n")).unwrap_or_default(),
        alert.ts,
        alert.id,
    );
    let message =
        builder.header(ContentType::TEXT_PLAIN).body(body).map_err(|e| format!("cannot build the email: {e}"))?;
    let mut parameters = TlsParameters::builder(email.host.clone());
    if !email.system_roots {
        parameters = parameters.certificate_store(CertificateStore::None);
    }
    for pem in &email.extra_ca {
        // Every certificate of each file, as the upstream trust reads them (lettre's `from_pem` takes the first).
        for der in rustls_pemfile::certs(&mut pem.as_slice()) {
            let der = der.map_err(|e| format!("upstream.trust.extra_ca: {e}"))?;
            let certificate =
                Certificate::from_der(der.to_vec()).map_err(|e| format!("upstream.trust.extra_ca: {e}"))?;
            parameters = parameters.add_root_certificate(certificate);
        }
    }
    let parameters = parameters.build_rustls().map_err(|e| format!("TLS settings: {e}"))?;
    let tls = if email.implicit_tls { Tls::Wrapper(parameters) } else { Tls::Required(parameters) };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.host.clone())
        .port(email.port)
        .tls(tls)
        .timeout(Some(ATTEMPT_TIMEOUT));
    if let Some((username, password)) = &email.credentials {
        transport = transport.credentials(Credentials::new(username.clone(), password.clone()));
    }
    transport.build().send(message).await.map(|_| ()).map_err(|e| format!("SMTP {}:{}: {e}", email.host, email.port))
}
