//! tollgate as the runs start it: its config (a forward proxy on loopback, the admin listener with a token, the
//! Messages API stub and fault upstreams intercepted, pricing and an org budget so intercepted requests are
//! metered), and what the runs read from it: `/metrics`, `POST /admin/reload`, the audit file, signals.

use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

use crate::client::Connection;
use crate::host::free_port;
use crate::interception::messages_stub;
use crate::parameters::{API_HOST, IO_TIMEOUT, SMALL_READ_BUFFER};
use crate::processes::Proxy;
use crate::proxies::{listener_item, loopback, start_tollgate, tollgate_yaml, until_smoke, Harness, ALLOW_LOOPBACK};
use crate::route::{Route, TlsDial};
use crate::tollgate_only::ADMIN_TOKEN;
use crate::traffic::read_response;

/// The principal of every request (`auth.anonymous`).
pub const PRINCIPAL: &str = "soak";

/// The domain of the intercepted fault hosts.
pub const FAULT_DOMAIN: &str = "faults.soak.example";

/// What a run changes in tollgate's config.
#[derive(Default, Clone)]
pub struct Settings {
    /// Entries of the `server` flow map (`max_connections: 12000`).
    pub server: String,
    /// Entries of the `upstream` flow map (`idle_timeout: 3s`).
    pub upstream: String,
    /// Entries of the `state` flow map besides its path (`backend: redis, redis_url: …`).
    pub state: String,
    /// Intercept `API_HOST` and route it to the Messages API stub (started once per harness).
    pub stub: bool,
    /// Further intercepted hosts and the upstream URL each is routed to.
    pub intercepted: Vec<(String, String)>,
    /// Further top-level YAML.
    pub extra: String,
}

/// A running tollgate and how to reach it.
pub struct Gateway {
    pub proxy: Proxy,
    /// Its directory: config, audit file, state, log.
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Absolute-form GETs and CONNECT tunnels to the origin.
    pub forward: Route,
    /// `POST /v1/messages` inside an intercepted tunnel to `API_HOST` (with `Settings::stub`).
    pub messages: Option<Route>,
    /// How the client trusts tollgate's interception CA (for the fault hosts).
    pub intercept_trust: Option<tokio_rustls::TlsConnector>,
}

impl Gateway {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proxy.pid()
    }

    /// The audit file.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The route to the intercepted `host` on port 443 (one of `Settings::intercepted`).
    pub fn intercepted_route(&self, host: &str) -> Result<Route, String> {
        let connector = self.intercept_trust.clone().ok_or("tollgate intercepts nothing in this run")?;
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|error| error.to_string())?;
        let dial = TlsDial { connector, name };
        Ok(Route::messages_api(self.forward.address, true, self.forward.origin, &format!("{host}:443"), Some(dial)))
    }
}

/// Writes the config for `settings` into a fresh directory and starts tollgate on it; checked with one GET and
/// one CONNECT, and (with the stub) one intercepted request.
pub async fn start(harness: &mut Harness, tag: &str, settings: &Settings) -> Result<Gateway, String> {
    let dir = harness.instance_dir(tag)?;
    let stub = if settings.stub { Some(messages_stub(harness).await?.plain) } else { None };
    let (proxy_port, admin_port) = (free_port()?, free_port()?);
    let yaml = config_yaml(&dir, proxy_port, admin_port, stub, settings);
    let forward = Route::plain(loopback(proxy_port), true, harness.origin);
    let proxy = start_tollgate(harness, &dir, &yaml, &forward).await?;
    let interception = stub.is_some() || !settings.intercepted.is_empty();
    let intercept_trust = if interception {
        let client = crate::certificates::tls_client(&dir.join("ca.pem"))?;
        Some(tokio_rustls::TlsConnector::from(client))
    } else {
        None
    };
    let mut gateway = Gateway {
        proxy,
        config: dir.join("tollgate.yaml"),
        dir,
        admin: loopback(admin_port),
        forward,
        messages: None,
        intercept_trust,
    };
    if stub.is_some() {
        let route = gateway.intercepted_route(API_HOST)?;
        until_smoke(&mut gateway.proxy, &route).await?;
        gateway.messages = Some(route);
    }
    println!(
        "- tollgate started: pid {}, proxy {}, admin {}, {}",
        gateway.pid(),
        gateway.forward.address,
        gateway.admin,
        gateway.dir.display()
    );
    Ok(gateway)
}

/// Starts tollgate again on the same directory and config (after it was stopped or killed): same ports, audit file
/// and state.
pub async fn restart(harness: &Harness, gateway: &mut Gateway) -> Result<(), String> {
    let yaml =
        fs::read_to_string(&gateway.config).map_err(|error| format!("read {}: {error}", gateway.config.display()))?;
    gateway.proxy = start_tollgate(harness, &gateway.dir, &yaml, &gateway.forward).await?;
    if let Some(route) = &gateway.messages {
        until_smoke(&mut gateway.proxy, route).await?;
    }
    println!("- tollgate restarted: pid {}", gateway.pid());
    Ok(())
}

/// The config: one forward-proxy listener, the admin listener with `ADMIN_TOKEN`, the anonymous principal
/// `PRINCIPAL`, the origin (loopback) allowed, the audit file with its hash chain, pricing for every model and an
/// org budget far above what a run spends (so metered requests reserve and settle spend), and `settings`.
fn config_yaml(dir: &Path, proxy_port: u16, admin_port: u16, stub: Option<SocketAddr>, settings: &Settings) -> String {
    let directory = dir.display();
    let mut allow = String::from(ALLOW_LOOPBACK);
    let mut hosts = Vec::new();
    let mut upstreams = Vec::new();
    let mut routing = Vec::new();
    if let Some(stub) = stub {
        hosts.push(API_HOST.to_string());
        upstreams.push(format!("stub: {{url: \"http://{stub}\"}}"));
        routing.push(format!("{{when: {{host: {API_HOST}}}, to: stub}}"));
    }
    for (index, (host, url)) in settings.intercepted.iter().enumerate() {
        hosts.push(host.clone());
        upstreams.push(format!("fault{index}: {{url: \"{url}\"}}"));
        routing.push(format!("{{when: {{host: {host}}}, to: fault{index}}}"));
    }
    for host in &hosts {
        allow.push_str(&format!("    - \"{host}\"\n"));
    }
    let mut extra = format!(
        "server: {{{}}}\n\
         upstream: {{{}}}\n\
         state: {{path: \"{directory}/state\"{}{}}}\n\
         pricing: [{{model: \"*\", input: 3, output: 15, cache_write: 3.75, cache_read: 0.3}}]\n\
         budgets: {{org_monthly_usd: 1000000}}\n",
        settings.server,
        settings.upstream,
        if settings.state.is_empty() { "" } else { ", " },
        settings.state
    );
    if !hosts.is_empty() {
        let quoted: Vec<String> = hosts.iter().map(|host| format!("\"{host}\"")).collect();
        extra.push_str(&format!(
            "upstreams: {{{}}}\n\
             routing: [{}]\n\
             intercept: {{ca: {{cert: \"{directory}/ca.pem\", key: \"{directory}/ca.key\"}}, hosts: [{}]}}\n",
            upstreams.join(", "),
            routing.join(", "),
            quoted.join(", ")
        ));
    }
    extra.push_str(&settings.extra);
    let admin = format!("{{bind: \"127.0.0.1:{admin_port}\", token: {ADMIN_TOKEN}}}");
    let auth = format!("{{anonymous: {PRINCIPAL}}}");
    tollgate_yaml(dir, &listener_item("proxy", proxy_port), &admin, &auth, &allow, &extra)
}

/// One request to the admin listener, with the token; its status and body.
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let outcome = timeout(IO_TIMEOUT, async {
        let mut connection = Connection::open(admin, None, SMALL_READ_BUFFER).await?;
        connection.send(request.as_bytes()).await?;
        read_response(&mut connection).await
    })
    .await;
    match outcome {
        Ok(Ok((head, body))) => Ok((head.status, body)),
        Ok(Err(error)) => Err(format!("{method} {path}: {error}")),
        Err(_) => Err(format!("{method} {path}: timeout")),
    }
}

/// `GET /metrics`, as text.
pub async fn metrics(admin: SocketAddr) -> Result<String, String> {
    match admin_request(admin, "GET", "/metrics").await? {
        (200, body) => Ok(String::from_utf8_lossy(&body).into_owned()),
        (status, _) => Err(format!("GET /metrics answered {status}")),
    }
}

/// The sum of every series of `name` in a /metrics text (`name` or `name{...}` lines).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The audit records in the file (and those rotated next to it are not read: the runs stay below the rotation
/// size); lines that are not JSON objects are counted, not returned.
pub fn audit_records(path: &Path) -> Result<(Vec<Value>, usize), String> {
    let text = fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()))?;
    let mut records = Vec::new();
    let mut unreadable = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(record) if record.is_object() => records.push(record),
            _ => unreadable += 1,
        }
    }
    Ok((records, unreadable))
}

/// The micro-dollars the audit records bill: each record's `cost_usd`, rounded to micro-dollars as the spend
/// counters count it, summed; and how many records had a cost.
pub fn billed_micro_usd(records: &[Value]) -> (i64, usize) {
    let costs: Vec<f64> = records.iter().filter_map(|record| record["cost_usd"].as_f64()).collect();
    (costs.iter().map(|cost| (cost * 1e6).round() as i64).sum(), costs.len())
}

/// `tollgate audit verify FILE`: its exit status and output.
pub fn audit_verify(harness: &Harness, path: &Path) -> Result<(bool, String), String> {
    let binary = harness.binaries.get(&crate::options::Target::Tollgate).ok_or("no tollgate binary")?;
    let output = Command::new(binary)
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .map_err(|error| format!("tollgate audit verify: {error}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        text.push_str(" | ");
        text.push_str(stderr.trim());
    }
    Ok((output.status.success(), text))
}

/// Sends `signal` (`TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|error| format!("kill -{signal} {pid}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid}: {status}"))
    }
}

/// Waits up to `limit` for `proxy` to exit; its exit status, if it did.
pub async fn wait_exit(proxy: &mut Proxy, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The sum of the series of `name` whose labels include `label` (`result="ok"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .filter(|line| line.split_once('}').is_some_and(|(labels, _)| labels.contains(label)))
        .filter_map(|line| line.rsplit_once('}')?.1.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

/// An upstream on loopback whose connections each run `serve` (a failed accept is retried); its address. `what`
/// names it in the bind error.
pub async fn serve_each<F, Served>(what: &str, serve: F) -> Result<SocketAddr, String>
where
    F: Fn(TcpStream) -> Served + Send + 'static,
    Served: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|error| format!("bind {what}: {error}"))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                sleep(Duration::from_millis(20)).await;
                continue;
            };
            tokio::spawn(serve(stream));
        }
    });
    Ok(address)
}
