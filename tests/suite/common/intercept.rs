//! Interception tests' harness: a gateway that intercepts `api.anthropic.com` and routes it to the Messages stub,
//! tunnels through it (CONNECT, then TLS trusting only tollgate's CA), HTTP/1.1 requests and responses on a
//! keep-alive TLS stream, the price table the configs use and the expected cost, and audit and metric checks
//! (Anthropic-shaped refusals are checked with `gateway::assert_api_error`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::messages::{chunks, usage_json, MessagesStub, Usage};
use super::tls::server_name;
use super::{connect_request, exchange_keep, find, metric_value, Response, TestGateway};

/// The intercepted host.
pub const API_HOST: &str = "api.anthropic.com";

/// The parts of the config a test changes; everything else is the same for every interception test.
pub struct Parts<'a> {
    /// The whole `auth` section.
    pub auth: &'a str,
    /// Extra entries of `policy.allow` (after `api.anthropic.com`), and `allow_private` when set.
    pub allow: &'a [&'a str],
    pub allow_private: &'a [&'a str],
    /// Extra lines inside `intercept:` (each `key: value`, no indentation), e.g. `max_body: 1KiB`.
    pub intercept: &'a [&'a str],
    /// The stub upstream's `api_key`, if any.
    pub api_key: Option<&'a str>,
    /// Any other top-level sections (`teams`, `dlp`, …).
    pub extra: &'a str,
}

impl Default for Parts<'_> {
    fn default() -> Self {
        Self {
            auth: "auth: {anonymous: dev}",
            allow: &[],
            allow_private: &[],
            intercept: &[],
            api_key: None,
            extra: "",
        }
    }
}

/// One row of the price table the test configs use (USD per million tokens). Whole dollars: every cost below is a
/// whole number of micro-dollars, so the expected cost assumes no rounding rule.
pub struct Price {
    /// A glob that is a prefix followed by `*` (or `*` alone).
    pub model: &'static str,
    pub input: u64,
    pub output: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

/// First match wins: the stub's scenario models have their own row, so a cost from the wrong row shows.
pub const PRICES: &[Price] = &[
    Price { model: "claude-sonnet-4*", input: 3, output: 15, cache_write: 4, cache_read: 1 },
    Price { model: "stub-*", input: 7, output: 13, cache_write: 9, cache_read: 2 },
    Price { model: "*", input: 5, output: 25, cache_write: 6, cache_read: 1 },
];

/// `PRICES` as the `pricing` section.
fn pricing_yaml() -> String {
    let mut yaml = String::from("pricing:\n");
    for p in PRICES {
        yaml.push_str(&format!(
            "  - {{model: \"{}\", input: {}, output: {}, cache_write: {}, cache_read: {}}}\n",
            p.model, p.input, p.output, p.cache_write, p.cache_read
        ));
    }
    yaml
}

/// The cost in USD of `usage` for `model`: the first matching row of `PRICES`, tokens times USD per million.
pub fn expected_cost(model: &str, usage: Usage) -> f64 {
    let price = PRICES
        .iter()
        .find(|p| p.model.strip_suffix('*').map_or(p.model == model, |prefix| model.starts_with(prefix)))
        .expect("the last row matches every model");
    let (input, output, cache_creation, cache_read) = usage;
    let micro_usd = input * price.input
        + output * price.output
        + cache_creation * price.cache_write
        + cache_read * price.cache_read;
    micro_usd as f64 / 1e6
}

/// Asserts two USD amounts are equal (up to the last bits of a float).
pub fn assert_usd(actual: f64, expected: f64, context: &str) {
    assert!((actual - expected).abs() < 1e-12, "{context}: {actual} USD, expected {expected} USD");
}

/// The config: `parts` around a policy allowing `api.anthropic.com`, the stub as upstream `stub` with a route for
/// the intercepted host, interception of that host with its CA in `ca_dir`, and `PRICES`.
pub fn config(stub: &MessagesStub, ca_dir: &Path, parts: &Parts<'_>) -> String {
    let quoted = |list: &[&str]| list.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let mut allow = vec![API_HOST];
    allow.extend_from_slice(parts.allow);
    let mut yaml = format!("{}\npolicy:\n  default: deny\n  allow: [{}]\n", parts.auth, quoted(&allow));
    if !parts.allow_private.is_empty() {
        yaml.push_str(&format!("  allow_private: [{}]\n", quoted(parts.allow_private)));
    }
    let api_key = parts.api_key.map(|key| format!(", api_key: \"{key}\"")).unwrap_or_default();
    yaml.push_str(&format!("upstreams:\n  stub: {{url: \"{}\"{api_key}}}\n", stub.url()));
    yaml.push_str(&format!("routing:\n  - {{when: {{host: {API_HOST}}}, to: stub}}\n"));
    yaml.push_str(&format!(
        "intercept:\n  ca: {{cert: \"{}\", key: \"{}\"}}\n  hosts: [\"{API_HOST}\"]\n",
        ca_dir.join("ca.pem").display(),
        ca_dir.join("ca.key").display()
    ));
    for line in parts.intercept {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml.push_str(&pricing_yaml());
    yaml.push_str(parts.extra);
    yaml.push('\n');
    yaml
}

/// A running stub, and a gateway intercepting `api.anthropic.com` toward it.
pub struct Intercepting {
    pub stub: MessagesStub,
    pub gateway: TestGateway,
    /// Holds the interception CA (`ca.pem`, `ca.key`), created by the gateway's first start.
    pub ca_dir: tempfile::TempDir,
}

impl Intercepting {
    pub async fn start(parts: Parts<'_>) -> Self {
        let stub = MessagesStub::start().await;
        let ca_dir = tempfile::tempdir().expect("CA temp dir");
        let gateway = TestGateway::start(&config(&stub, ca_dir.path(), &parts)).await;
        Self { stub, gateway, ca_dir }
    }

    /// The interception CA certificate, as clients are told to trust it.
    pub fn ca_pem(&self) -> PathBuf {
        self.ca_dir.path().join("ca.pem")
    }

    /// A tunnel to `api.anthropic.com:443` (anonymous), TLS inside trusting only the interception CA, HTTP/1.1 by ALPN.
    pub async fn tunnel(&self) -> TlsStream<TcpStream> {
        self.tunnel_as(None).await
    }

    /// Like `tunnel`, with `Proxy-Authorization: credentials` on the CONNECT.
    pub async fn tunnel_as(&self, credentials: Option<&str>) -> TlsStream<TcpStream> {
        let config = trusting(&self.ca_pem(), &[b"http/1.1"]);
        let tcp = connect(self.gateway.proxy, API_HOST, credentials).await;
        handshake(tcp, API_HOST, config).await.expect("TLS inside the tunnel with the interception CA")
    }

    /// One request on a new tunnel (it should say `Connection: close`), the response read to its end.
    pub async fn send(&self, request: &[u8]) -> Response {
        let mut tls = self.tunnel().await;
        let mut buf = Vec::new();
        send(&mut tls, request, &mut buf).await
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        self.gateway.metric(sample).await
    }
}

/// `CONNECT host:443` answered with 200; the raw stream, ready for the TLS handshake.
pub async fn connect(proxy: SocketAddr, host: &str, credentials: Option<&str>) -> TcpStream {
    let header = credentials.map(|c| format!("Proxy-Authorization: {c}"));
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    let authority = if host.contains(':') { host.to_owned() } else { format!("{host}:443") };
    let (stream, response) = exchange_keep(proxy, connect_request(&authority, &headers).as_bytes()).await;
    assert_eq!(response.status, 200, "CONNECT {authority}: {response:?}");
    stream
}

/// A rustls client config whose only root is the CA in `ca_pem`, offering `alpn`.
pub fn trusting(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("a PEM certificate")).expect("a usable root");
    }
    assert_eq!(roots.len(), 1, "{} holds one CA certificate", ca_pem.display());
    let mut config = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The TLS handshake for `name` over an open tunnel.
pub async fn handshake(
    tunnel: TcpStream,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(config).connect(server_name(name), tunnel).await
}

/// A request (origin-form, HTTP/1.1) with the given header lines (`Name: value`, `Host` included) and body; a
/// `content-length` line is added when the body is not empty.
pub fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `POST /v1/messages` for `api.anthropic.com` with `body`, an API key, `anthropic-version` and extra header lines.
pub fn messages_post(body: &str, extra: &[&str]) -> Vec<u8> {
    post("/v1/messages", body, extra)
}

/// `POST path` for `api.anthropic.com` with a JSON `body`, an API key, `anthropic-version` and extra header lines.
pub fn post(path: &str, body: &str, extra: &[&str]) -> Vec<u8> {
    let mut headers = vec![
        "Host: api.anthropic.com",
        "x-api-key: sk-ant-client",
        "anthropic-version: 2023-06-01",
        "content-type: application/json",
    ];
    headers.extend_from_slice(extra);
    request("POST", path, &headers, body.as_bytes())
}

/// A `GET path` for `api.anthropic.com` with an API key and extra header lines.
pub fn get(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut headers = vec!["Host: api.anthropic.com", "x-api-key: sk-ant-client"];
    headers.extend_from_slice(extra);
    request("GET", path, &headers, b"")
}

/// Writes `request` and reads one response (see `read_response`).
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8], buf: &mut Vec<u8>) -> Response {
    stream.write_all(request).await.expect("write the request");
    stream.flush().await.expect("flush the request");
    read_response(stream, buf).await
}

/// Reads one HTTP/1.1 response from a keep-alive stream: the head, then the body by `Content-Length`, chunked
/// (decoded), or to the end of the stream. `buf` holds bytes read before and keeps those read past the response.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Response {
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        assert!(read_more(stream, buf).await, "the stream ended before a response head: {buf:?}");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut response = Response { status, head, body: String::new() };
    let chunked = response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        loop {
            let split = chunks(&buf[head_end..]);
            if let Some(length) = split.complete {
                buf.drain(..head_end + length);
                break split.chunks.concat();
            }
            assert!(read_more(stream, buf).await, "the stream ended inside a chunked body: {response:?}");
        }
    } else if let Some(length) = response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < head_end + length {
            assert!(read_more(stream, buf).await, "the stream ended inside a body: {response:?}");
        }
        buf.drain(..head_end);
        buf.drain(..length).collect()
    } else {
        while read_more(stream, buf).await {}
        buf.drain(..).skip(head_end).collect()
    };
    response.body = String::from_utf8(body).expect("a UTF-8 body");
    response
}

/// Reads more bytes into `buf`: false at the end of the stream (or a failed read). Panics after 20 s without data.
pub async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("more bytes or the end within 20s; have {:?}", String::from_utf8_lossy(buf)));
    match read {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The audit records of requests inside tunnels.
pub fn intercepted(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["kind"] == "intercepted").collect()
}

/// The only intercepted record.
pub fn only_intercepted(records: &[Value]) -> &Value {
    let found = intercepted(records);
    assert_eq!(found.len(), 1, "one intercepted record: {records:#?}");
    found[0]
}

/// Flushes and reads the audit file until a record satisfies `wanted` (bounded: 20 s): for records written after
/// something the client cannot observe, e.g. a response the client abandoned.
pub async fn audit_until(gateway: &TestGateway, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let wait = async {
        loop {
            let records = gateway.audit().await;
            if records.iter().any(&wanted) {
                return records;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or_else(|_| {
        panic!("no matching audit record within 20s: {:?}", std::fs::read_to_string(gateway.audit_path()))
    })
}

/// `tollgate_tokens_total` for one model, team and type (`input`, `output`, `cache_creation`, `cache_read`).
pub fn tokens_sample(model: &str, team: &str, kind: &str) -> String {
    format!("tollgate_tokens_total{{model=\"{model}\",team=\"{team}\",type=\"{kind}\"}}")
}

/// `tollgate_cost_usd_total` for one model and team.
pub fn cost_sample(model: &str, team: &str) -> String {
    format!("tollgate_cost_usd_total{{model=\"{model}\",team=\"{team}\"}}")
}

/// Asserts a metered request was billed exactly for `usage`: the audit record's `usage` and `cost_usd` (the price
/// table applied), and the token and cost counters for `model` and `team` (no other request of theirs ran).
pub async fn assert_billed(gateway: &TestGateway, record: &Value, model: &str, team: &str, usage: Usage) {
    assert_eq!(record["usage"], usage_json(usage), "{record:#}");
    let cost = record["cost_usd"].as_f64().unwrap_or_else(|| panic!("cost_usd: {record:#}"));
    assert_usd(cost, expected_cost(model, usage), "cost_usd of the audit record");
    let metrics = gateway.metrics().await;
    let counted = |kind: &str| metric_value(&metrics, &tokens_sample(model, team, kind)) as u64;
    let (input, output, cache_creation, cache_read) = usage;
    assert_eq!(
        (counted("input"), counted("output"), counted("cache_creation"), counted("cache_read")),
        (input, output, cache_creation, cache_read),
        "tollgate_tokens_total for {model}/{team}:\n{metrics}"
    );
    assert_usd(
        metric_value(&metrics, &cost_sample(model, team)),
        expected_cost(model, usage),
        "tollgate_cost_usd_total",
    );
}

/// `tollgate_requests_total` of requests inside tunnels on the `proxy` listener.
pub fn requests_sample(decision: &str, reason: &str) -> String {
    format!("tollgate_requests_total{{decision=\"{decision}\",kind=\"intercepted\",listener=\"proxy\",reason=\"{reason}\"}}")
}
