//! The doctor's steps, one function each, in the order a request of Claude Code meets them. Each returns a `Step`;
//! the network steps hand what they opened to the next (the proxy connection, the tunnel).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::environment::Environment;
use super::step::{Options, Step, Verdict, MODEL_HOST};

/// Where the page that offers the CA lives (the default `developer_page.host`).
const CA_URL: &str = "http://tollgate.internal/ca.pem";
/// The proxy variables Claude Code reads for an https:// request, in the order it prefers them.
const PROXY_VARIABLES: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
/// The advice when the proxy wants a client certificate.
const CERTIFICATE_FIX: &str = "the proxy wants a client certificate: set CLAUDE_CODE_CLIENT_CERT and \
    CLAUDE_CODE_CLIENT_KEY to your certificate and key (`tollgate login --cert` makes one where enrollment is set up)";
/// The largest response head read from the proxy or the model host.
const MAX_HEAD: usize = 64 * 1024;

/// A byte stream to the proxy: TCP, or TLS over TCP for an https:// proxy.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Connection = Box<dyn Io>;

/// The proxy, as the variables name it.
#[derive(Debug, Clone)]
struct Proxy {
    tls: bool,
    host: String,
    port: u16,
    /// The `Proxy-Authorization` value from the URL's user and password.
    authorization: Option<String>,
    user: Option<String>,
}

/// What the trust and client-certificate variables give a TLS client.
struct Trust {
    /// `NODE_EXTRA_CA_CERTS`'s certificates (none when unset or unusable).
    extra: Vec<CertificateDer<'static>>,
    client_certificate: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// Runs every step in order.
pub async fn check(environment: &Environment, options: &Options) -> Vec<Step> {
    let mut steps = vec![settings(environment)];
    let model = model_target(environment, options);
    let (proxy_step, proxy) = proxy(environment);
    steps.push(proxy_step);
    steps.push(no_proxy(environment, model.as_ref()));
    let (trust_problem, trust) = trust(environment);
    let Some(proxy) = proxy else {
        for (step, title) in
            [("reach", "reaching the proxy"), ("proxy_tls", "the proxy's TLS"), ("credentials", "proxy credentials")]
        {
            steps.push(skipped(step, title, "needs a proxy variable"));
        }
        steps.push(ca_file(environment, trust_problem.as_deref()));
        steps.push(skipped("model", "request to the model host", "needs a proxy variable"));
        return steps;
    };
    let Some((model_host, model_port)) = model else {
        steps.push(skipped("reach", "reaching the proxy", "no model host to check"));
        return steps;
    };
    let timeout = options.timeout;
    let (reach_step, tcp) = reach(&proxy, timeout).await;
    steps.push(reach_step);
    let (tls_step, connection) = match tcp {
        Some(tcp) => proxy_tls(&proxy, tcp, &trust, timeout).await,
        None => (skipped("proxy_tls", "the proxy's TLS", "the proxy cannot be reached"), None),
    };
    steps.push(tls_step);
    let (credentials_step, tunnel) = match connection {
        Some(connection) => credentials(&proxy, connection, &model_host, model_port, timeout).await,
        None => (skipped("credentials", "proxy credentials", "no connection to the proxy"), None),
    };
    steps.push(credentials_step);
    let file_step = ca_file(environment, trust_problem.as_deref());
    let file_failed = file_step.verdict == Verdict::Fail;
    let (ca_step, inner) = match tunnel {
        Some(tunnel) if !file_failed => ca(environment, tunnel, &trust, &model_host, timeout).await,
        _ => (file_step, None),
    };
    steps.push(ca_step);
    steps.push(match inner {
        Some(inner) => model_request(environment, inner, &model_host, model_port, timeout).await,
        None => skipped("model", "request to the model host", "no TLS connection to the model host"),
    });
    steps
}

/// The model host and port: `--model-host`, else `ANTHROPIC_BASE_URL`'s, else `api.anthropic.com:443`.
pub fn model_target(environment: &Environment, options: &Options) -> Option<(String, u16)> {
    if let Some(given) = &options.model_host {
        let url = url::Url::parse(&format!("https://{given}")).ok()?;
        return Some((url.host_str()?.trim_matches(['[', ']']).to_owned(), url.port().unwrap_or(443)));
    }
    match environment.get("ANTHROPIC_BASE_URL") {
        Some(base) => {
            let url = url::Url::parse(&base.value).ok()?;
            Some((url.host_str()?.trim_matches(['[', ']']).to_owned(), url.port_or_known_default()?))
        }
        None => Some((MODEL_HOST.to_owned(), 443)),
    }
}

/// Step 1: the settings files parse (Claude Code refuses a broken one too).
fn settings(environment: &Environment) -> Step {
    let title = "Claude Code settings files";
    if let Some(bad) = environment.unreadable.first() {
        let detail = format!("{}: {}", bad.path.display(), bad.problem);
        let fix = format!("repair or remove {}: its env block is ignored until it is valid JSON", bad.path.display());
        return fail("settings", title, detail, fix);
    }
    let read: Vec<String> = environment.read.iter().map(|p| p.display().to_string()).collect();
    let detail =
        if read.is_empty() { "none found (the environment alone applies)".to_owned() } else { read.join(", ") };
    pass("settings", title, detail)
}

/// Step 2: a proxy variable is set, and is an http:// or https:// URL with a host.
fn proxy(environment: &Environment) -> (Step, Option<Proxy>) {
    let title = "proxy variables";
    let Some((name, setting)) = environment.first(PROXY_VARIABLES) else {
        let also = match environment.first(&["ALL_PROXY", "all_proxy"]) {
            Some((name, _)) => format!(" ({name} is set, but Claude Code does not read it)"),
            None => String::new(),
        };
        let fix = "set HTTPS_PROXY to tollgate's address, e.g. `export HTTPS_PROXY=http://USER:PASSWORD@tollgate.corp:3128`, \
                   or put it under \"env\" in ~/.claude/settings.json";
        return (fail("proxy", title, format!("none of HTTPS_PROXY, HTTP_PROXY is set{also}"), fix.to_owned()), None);
    };
    let bad = |problem: String| {
        let fix = format!("write {name} as http://[USER:PASSWORD@]HOST:PORT (or https:// for tollgate's TLS listener)");
        (fail("proxy", title, format!("{name} from {}: {problem}", setting.source), fix), None)
    };
    let url = match url::Url::parse(&setting.value) {
        Ok(url) => url,
        Err(error) => return bad(format!("{:?} is not a URL ({error})", hidden(&setting.value))),
    };
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return bad(format!("scheme {other}:// is not a proxy Claude Code can use")),
    };
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else { return bad("no host".to_owned()) };
    let host = host.trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    let decode = |text: &str| {
        url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let user = (!url.username().is_empty()).then(|| decode(url.username()));
    let authorization = user.as_ref().map(|user| {
        let password = url.password().map(decode).unwrap_or_default();
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    });
    let mut shown_url = url.clone();
    if shown_url.password().is_some() {
        let _ = shown_url.set_password(Some("***"));
    }
    let shown = format!("{name}={} (from {})", shown_url.as_str().trim_end_matches('/'), setting.source);
    let proxy = Proxy { tls, host, port, authorization, user };
    (pass("proxy", title, shown), Some(proxy))
}

/// Step 3: `NO_PROXY` does not send the model host around the proxy.
fn no_proxy(environment: &Environment, model: Option<&(String, u16)>) -> Step {
    let title = "NO_PROXY";
    let Some((name, setting)) = environment.first(&["NO_PROXY", "no_proxy"]) else {
        return pass("no_proxy", title, "not set".to_owned());
    };
    let Some((host, port)) = model else {
        return skipped("no_proxy", title, "no model host to check");
    };
    match bypassing_entry(&setting.value, host, *port) {
        Some(entry) => fail(
            "no_proxy",
            title,
            format!("{name}={} (from {}): {entry:?} covers {host}", setting.value, setting.source),
            format!(
                "remove {entry:?} from {name}: Claude Code would go to {host} directly, around tollgate (and fail where \
                 only the proxy may reach the internet)"
            ),
        ),
        None => pass("no_proxy", title, format!("{name}={} does not cover {host}", setting.value)),
    }
}

/// The `NO_PROXY` entry that matches `host:port`, as Node's proxy agents match: `*`, the host or a parent
/// domain (`anthropic.com`, `.anthropic.com`, `*.anthropic.com`), with an optional port.
fn bypassing_entry(list: &str, host: &str, port: u16) -> Option<String> {
    let host = host.to_ascii_lowercase();
    list.split([',', ' ']).map(str::trim).filter(|e| !e.is_empty()).find_map(|entry| {
        if entry == "*" {
            return Some(entry.to_owned());
        }
        let (name, entry_port) = match entry.rsplit_once(':') {
            Some((name, port_text)) if !name.contains(':') => (name, port_text.parse::<u16>().ok()),
            _ => (entry, None),
        };
        if entry_port.is_some_and(|p| p != port) {
            return None;
        }
        let name = name.trim_start_matches('*').trim_start_matches('.').to_ascii_lowercase();
        (host == name || host.ends_with(&format!(".{name}"))).then(|| entry.to_owned())
    })
}

/// Step 4: a TCP connection to the proxy.
async fn reach(proxy: &Proxy, timeout: Duration) -> (Step, Option<TcpStream>) {
    let title = "reaching the proxy";
    let address = format!("{}:{}", proxy.host, proxy.port);
    match tokio::time::timeout(timeout, TcpStream::connect((proxy.host.as_str(), proxy.port))).await {
        Ok(Ok(tcp)) => (pass("reach", title, format!("connected to {address}")), Some(tcp)),
        Ok(Err(error)) => (unreachable(&address, &error.to_string()), None),
        Err(_) => (unreachable(&address, &format!("no answer within {timeout:?}")), None),
    }
}

fn unreachable(address: &str, problem: &str) -> Step {
    fail(
        "reach",
        "reaching the proxy",
        format!("cannot connect to {address}: {problem}"),
        format!(
            "check the host and port in the proxy variable, that tollgate is running there, and that no firewall or VPN \
             blocks {address}"
        ),
    )
}

/// Step 5: for an https:// proxy, its certificate verifies with the CAs Claude Code trusts (system roots and
/// `NODE_EXTRA_CA_CERTS`), and a client certificate is presented when one is configured.
async fn proxy_tls(proxy: &Proxy, tcp: TcpStream, trust: &Trust, timeout: Duration) -> (Step, Option<Connection>) {
    let title = "the proxy's TLS";
    if !proxy.tls {
        return (skipped("proxy_tls", title, "http:// proxy: no TLS to the proxy"), Some(Box::new(tcp)));
    }
    let config = match client_config(trust, true) {
        Ok(config) => config,
        Err(problem) => {
            return (fail("proxy_tls", title, problem, "fix CLAUDE_CODE_CLIENT_CERT / _KEY".to_owned()), None)
        }
    };
    match handshake(tcp, &proxy.host, config, timeout).await {
        Ok(tls) => {
            let client = if trust.client_certificate.is_some() { ", client certificate presented" } else { "" };
            (pass("proxy_tls", title, format!("{}:{} verified{client}", proxy.host, proxy.port)), Some(Box::new(tls)))
        }
        Err(problem) => {
            let fix = match problem {
                TlsProblem::Untrusted(_) => "add the CA that signed tollgate's listener certificate to the file \
                    NODE_EXTRA_CA_CERTS names (PEM; one file may hold several certificates, e.g. `cat \
                    tollgate-ca.pem listener-ca.pem > ca-bundle.pem`)"
                    .to_owned(),
                TlsProblem::CertificateWanted(_) => CERTIFICATE_FIX.to_owned(),
                TlsProblem::Other(_) => format!("check that {}:{} is tollgate's TLS listener", proxy.host, proxy.port),
            };
            (fail("proxy_tls", title, format!("TLS to {}:{}: {problem}", proxy.host, proxy.port), fix), None)
        }
    }
}

/// Step 6: `CONNECT model-host:443` with the URL's credentials is answered 200.
async fn credentials(
    proxy: &Proxy,
    mut connection: Connection,
    host: &str,
    port: u16,
    timeout: Duration,
) -> (Step, Option<Connection>) {
    let title = "proxy credentials";
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tollgate-doctor\r\n");
    if let Some(authorization) = &proxy.authorization {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    let answer = tokio::time::timeout(timeout, async {
        connection.write_all(request.as_bytes()).await?;
        read_response(&mut connection, false).await
    })
    .await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            // With TLS 1.3 a server refuses the client certificate after the client's handshake has ended: the
            // refusal (an alert) arrives on the first read.
            if let TlsProblem::CertificateWanted(reason) = classify(&error) {
                let detail = format!("CONNECT {authority}: the proxy refused the TLS connection: {reason}");
                return (fail("credentials", title, detail, CERTIFICATE_FIX.to_owned()), None);
            }
            let detail = format!("CONNECT {authority}: the proxy closed the connection ({error})");
            let fix = "check that the proxy variable names tollgate's proxy listener (not its admin or gateway port)";
            return (fail("credentials", title, detail, fix.to_owned()), None);
        }
        Err(_) => {
            let detail = format!("CONNECT {authority}: no answer within {timeout:?}");
            return (
                fail("credentials", title, detail, "check that the proxy variable names tollgate".to_owned()),
                None,
            );
        }
    };
    let who = proxy.user.as_deref().map(|u| format!(" as {u}")).unwrap_or_default();
    match response.status {
        200 => (pass("credentials", title, format!("CONNECT {authority}{who}: 200")), Some(connection)),
        407 => {
            let (detail, fix) = match &proxy.user {
                Some(user) => (
                    format!("CONNECT {authority}: 407, the proxy refused the credentials of {user}"),
                    "check the user name and password in the proxy URL; percent-encode special characters in them \
                     (@ is %40, : is %3A)"
                        .to_owned(),
                ),
                None => (
                    format!("CONNECT {authority}: 407, the proxy wants credentials and the URL has none"),
                    "put them in the URL, http://USER:PASSWORD@HOST:PORT (or set up proxyAuthHelper, or a client \
                     certificate on tollgate's TLS listener)"
                        .to_owned(),
                ),
            };
            (fail("credentials", title, detail, fix), None)
        }
        status => {
            let message = response.message();
            let rule = response.header("x-tollgate-rule").map(|r| format!(" (rule {r})")).unwrap_or_default();
            let detail = format!("CONNECT {authority}{who}: {status}{rule}: {message}");
            let fix = format!(
                "the proxy refuses {host} for you: ask its operator (`tollgate explain --user YOU {host}` shows why)"
            );
            (fail("credentials", title, detail, fix), None)
        }
    }
}

/// Step 7, without a tunnel: `NODE_EXTRA_CA_CERTS` names a readable PEM file of certificates (or is unset).
fn ca_file(environment: &Environment, problem: Option<&str>) -> Step {
    let title = "interception CA";
    match (environment.get("NODE_EXTRA_CA_CERTS"), problem) {
        (Some(setting), Some(problem)) => fail(
            "ca",
            title,
            format!("NODE_EXTRA_CA_CERTS={} (from {}): {problem}", setting.value, setting.source),
            download_fix(Some(&setting.value)),
        ),
        (Some(setting), None) => {
            pass("ca", title, format!("NODE_EXTRA_CA_CERTS={} holds PEM certificates", setting.value))
        }
        (None, _) => skipped("ca", title, "NODE_EXTRA_CA_CERTS is not set; not checked against the proxy"),
    }
}

fn download_fix(path: Option<&str>) -> String {
    let path = path.unwrap_or("~/.config/tollgate/tollgate-ca.pem");
    format!(
        "download tollgate's CA: `curl -fsS -x \"$HTTPS_PROXY\" -o {path} {CA_URL}` and set \
         NODE_EXTRA_CA_CERTS to that file's absolute path (shell or ~/.claude/settings.json env)"
    )
}

/// Step 7: TLS to the model host inside the tunnel verifies with the CAs Claude Code trusts: tollgate's leaf
/// when it intercepts, the real certificate when it does not.
async fn ca(
    environment: &Environment,
    tunnel: Connection,
    trust: &Trust,
    host: &str,
    timeout: Duration,
) -> (Step, Option<Connection>) {
    let title = "interception CA";
    let config = match client_config(trust, false) {
        Ok(config) => config,
        Err(problem) => return (fail("ca", title, problem, download_fix(None)), None),
    };
    let configured = environment.get("NODE_EXTRA_CA_CERTS");
    match handshake(tunnel, host, config, timeout).await {
        Ok(tls) => {
            let detail = match configured {
                Some(setting) => format!("the certificate presented for {host} verifies with {}", setting.value),
                None => {
                    format!("the certificate presented for {host} verifies with the system roots (not intercepted)")
                }
            };
            (pass("ca", title, detail), Some(Box::new(tls)))
        }
        Err(TlsProblem::Untrusted(reason)) => {
            let detail = match configured {
                Some(setting) => format!(
                    "the certificate presented for {host} is not signed by a CA in {} ({reason})",
                    setting.value
                ),
                None => format!("tollgate intercepts {host}, and NODE_EXTRA_CA_CERTS is not set ({reason})"),
            };
            (fail("ca", title, detail, download_fix(configured.map(|s| s.value.as_str()))), None)
        }
        Err(problem) => {
            let detail = format!("TLS to {host} inside the tunnel: {problem}");
            (fail("ca", title, detail, "ask the tollgate operator: the interception failed".to_owned()), None)
        }
    }
}

/// Step 8: `GET /v1/models` through the tunnel is answered by the model API (any answer of its own below 500, 401
/// without a key included), not refused by tollgate.
async fn model_request(
    environment: &Environment,
    mut tls: Connection,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Step {
    let title = "request to the model host";
    let authority = if port == 443 { host.to_owned() } else { format!("{host}:{port}") };
    let mut request = format!(
        "GET /v1/models HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tollgate-doctor\r\nanthropic-version: 2023-06-01\r\n\
         Accept: application/json\r\nConnection: close\r\n"
    );
    if let Some(key) = environment.get("ANTHROPIC_API_KEY") {
        request.push_str(&format!("x-api-key: {}\r\n", key.value));
    }
    request.push_str("\r\n");
    let answer = tokio::time::timeout(timeout, async {
        tls.write_all(request.as_bytes()).await?;
        read_response(&mut tls, true).await
    })
    .await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let detail = format!("GET https://{authority}/v1/models: the connection failed ({error})");
            return fail("model", title, detail, "ask the tollgate operator: the tunnel closed".to_owned());
        }
        Err(_) => {
            let detail = format!("GET https://{authority}/v1/models: no answer within {timeout:?}");
            return fail("model", title, detail, "ask the tollgate operator: the model API does not answer".to_owned());
        }
    };
    let status = response.status;
    let by_tollgate = response.header("x-tollgate-request-id").is_some();
    match (status, by_tollgate) {
        (200..=299, _) => pass("model", title, format!("GET https://{authority}/v1/models: {status}")),
        (300..=499, false) => pass(
            "model",
            title,
            format!(
                "GET https://{authority}/v1/models: {status} from the model API (reached; it answers Claude Code's key \
                 or login)"
            ),
        ),
        (_, true) => {
            let rule = response.header("x-tollgate-rule").map(|r| format!(" (rule {r})")).unwrap_or_default();
            let detail =
                format!("GET https://{authority}/v1/models: {status} from tollgate{rule}: {}", response.message());
            let fix = if status >= 500 {
                "tollgate cannot reach the model API: tell its operator (the upstream refused or is down; the audit \
                 record with this request's id says why)"
                    .to_owned()
            } else {
                "tollgate refuses this request for you: the message names the rule; ask its operator".to_owned()
            };
            fail("model", title, detail, fix)
        }
        _ => fail(
            "model",
            title,
            format!("GET https://{authority}/v1/models: {status}: {}", response.message()),
            "the model host answered with an error: check ANTHROPIC_BASE_URL and that the host serves the Messages API"
                .to_owned(),
        ),
    }
}

/// The CAs and the client certificate the variables name; the problem with `NODE_EXTRA_CA_CERTS`, if any.
fn trust(environment: &Environment) -> (Option<String>, Trust) {
    let mut trust = Trust { extra: Vec::new(), client_certificate: None };
    let mut problem = None;
    if let Some(setting) = environment.get("NODE_EXTRA_CA_CERTS") {
        match read_certificates(Path::new(&setting.value)) {
            Ok(certificates) => trust.extra = certificates,
            Err(error) => problem = Some(error),
        }
    }
    if let (Some(cert), Some(key)) =
        (environment.get("CLAUDE_CODE_CLIENT_CERT"), environment.get("CLAUDE_CODE_CLIENT_KEY"))
    {
        let chain = read_certificates(Path::new(&cert.value));
        let key = std::fs::read(&key.value)
            .ok()
            .and_then(|pem| rustls_pemfile::private_key(&mut pem.as_slice()).ok().flatten());
        if let (Ok(chain), Some(key)) = (chain, key) {
            trust.client_certificate = Some((chain, key));
        }
    }
    (problem, trust)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => "the file does not exist".to_owned(),
        _ => format!("cannot read the file: {error}"),
    })?;
    let certificates: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|error| format!("not PEM: {error}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certificates)
}

/// A TLS client trusting the system roots and `NODE_EXTRA_CA_CERTS`, as Node does; toward the proxy with the
/// client certificate when one is configured; HTTP/1.1 only.
fn client_config(trust: &Trust, to_proxy: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for certificate in &trust.extra {
        roots
            .add(certificate.clone())
            .map_err(|error| format!("NODE_EXTRA_CA_CERTS: unusable certificate: {error}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&trust.client_certificate, to_proxy) {
        (Some((chain, key)), true) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|error| format!("CLAUDE_CODE_CLIENT_CERT / _KEY: {error}"))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a TLS handshake failed, as the fix depends on it.
#[derive(Debug)]
enum TlsProblem {
    /// The certificate does not chain to a trusted CA.
    Untrusted(String),
    /// The server refused the handshake for want of a (valid) client certificate.
    CertificateWanted(String),
    Other(String),
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsProblem::Untrusted(reason) => write!(f, "certificate not trusted: {reason}"),
            TlsProblem::CertificateWanted(reason) => write!(f, "a client certificate is required: {reason}"),
            TlsProblem::Other(reason) => f.write_str(reason),
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsProblem> {
    let name = ServerName::try_from(host.to_owned()).map_err(|error| TlsProblem::Other(error.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(error)) => Err(classify(&error)),
        Err(_) => Err(TlsProblem::Other(format!("no TLS answer within {timeout:?}"))),
    }
}

fn classify(error: &std::io::Error) -> TlsProblem {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(reason)) => TlsProblem::Untrusted(format!("{reason:?}")),
        Some(rustls::Error::AlertReceived(alert)) => {
            use rustls::AlertDescription::*;
            match alert {
                CertificateRequired | HandshakeFailure | BadCertificate | UnknownCA | CertificateExpired
                | CertificateRevoked | CertificateUnknown | AccessDenied => {
                    TlsProblem::CertificateWanted(format!("the server sent {alert:?}"))
                }
                _ => TlsProblem::Other(format!("the server sent {alert:?}")),
            }
        }
        Some(other) => TlsProblem::Other(other.to_string()),
        None => TlsProblem::Other(error.to_string()),
    }
}

/// An HTTP/1.1 response head (and, with `body`, what follows until close or 64 KiB).
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The error message of a JSON error body (tollgate's or Anthropic's shape), else the body's first line.
    fn message(&self) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_str(&self.body).ok();
        parsed
            .as_ref()
            .and_then(|json| json["error"]["message"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.lines().next().unwrap_or("").chars().take(300).collect())
    }
}

/// Reads a response head byte by byte (a CONNECT's answer must not eat the tunnel's first bytes), then with
/// `body` the rest up to 64 KiB.
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, body: bool) -> std::io::Result<Response> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD || stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no complete response head"));
        }
        head.push(byte[0]);
    }
    let mut parsed_headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut parsed_headers);
    parsed.parse(&head).map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()))?;
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> =
        parsed.headers.iter().map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let mut response = Response { status, headers, body: String::new() };
    let length = response.header("content-length").and_then(|v| v.parse::<usize>().ok());
    if body || length.is_some() {
        let mut rest = Vec::new();
        let limit = length.unwrap_or(MAX_HEAD).min(MAX_HEAD);
        let mut chunk = [0u8; 4096];
        while rest.len() < limit {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest.truncate(limit);
        response.body = String::from_utf8_lossy(&rest).into_owned();
    }
    Ok(response)
}

/// A URL with any password replaced by `***`.
fn hidden(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &text[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &text[..scheme + 3], &text[at..]),
                None => text.to_owned(),
            }
        }
        _ => text.to_owned(),
    }
}

fn pass(step: &'static str, title: &'static str, detail: String) -> Step {
    Step { step, title, verdict: Verdict::Pass, detail, fix: None }
}

fn fail(step: &'static str, title: &'static str, detail: String, fix: String) -> Step {
    Step { step, title, verdict: Verdict::Fail, detail, fix: Some(fix) }
}

fn skipped(step: &'static str, title: &'static str, why: &str) -> Step {
    Step { step, title, verdict: Verdict::Skip, detail: why.to_owned(), fix: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_entries_match_as_node_matches_them() {
        for list in
            ["*", "api.anthropic.com", ".anthropic.com", "anthropic.com", "*.anthropic.com", "x, anthropic.com:443"]
        {
            assert!(bypassing_entry(list, "api.anthropic.com", 443).is_some(), "{list}");
        }
        for list in ["localhost,127.0.0.1", "thropic.com", "anthropic.com:8443", "api.anthropic.com.evil"] {
            assert_eq!(bypassing_entry(list, "api.anthropic.com", 443), None, "{list}");
        }
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(hidden("http://alice:secret@proxy:3128"), "http://alice:***@proxy:3128");
        assert_eq!(hidden("http://proxy:3128"), "http://proxy:3128");
    }
}
