//! The proxies under test: the harness's state, each proxy's config, and starting one (pinned to core 1) until it
//! passes a smoke test.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::client::{exchange, Response};
use crate::host::free_port;
use crate::interception::Stub;
use crate::options::{Options, Target};
use crate::parameters::{IO_TIMEOUT, READY_ATTEMPTS, SMALL_READ_BUFFER, WANTED_OPEN_FILES};
use crate::processes::{register_pid, Proxy};
use crate::route::Route;
use crate::servers::STUB_MESSAGE;

pub struct Harness {
    pub options: Options,
    pub origin: SocketAddr,
    pub temp_dir: PathBuf,
    pub pin_children: bool,
    pub binaries: BTreeMap<Target, PathBuf>,
    pub instances: u32,
    /// The argon2id hash of the Basic user's password, made once by `tollgate passwd`.
    pub basic_user_hash: Option<String>,
    /// The Messages API stub, started by the first interception scenario.
    pub stub: Option<Stub>,
}

impl Harness {
    /// A fresh directory for one instance (config, logs, state).
    pub fn instance_dir(&mut self, tag: &str) -> Result<PathBuf, String> {
        self.instances += 1;
        let dir = self.temp_dir.join(format!("{tag}-{}", self.instances));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// A command pinned to core 1 (when pinning is possible).
    pub fn pinned(&self, bin: &Path) -> Command {
        if self.pin_children {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("1").arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `policy.allow` entry every tollgate config has (the origin), as a YAML block-list item.
pub const ALLOW_LOOPBACK: &str = "    - \"127.0.0.1\"\n";

/// A tollgate config: `listeners` are YAML block-list items, `admin` and `auth` flow maps, `allow` block-list
/// items of `policy.allow`, `extra` further top-level sections. Private destinations: 127.0.0.0/8 only; audit
/// to a file in `dir`.
pub fn tollgate_yaml(dir: &Path, listeners: &str, admin: &str, auth: &str, allow: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        "listeners:\n{listeners}\
         admin: {admin}\n\
         auth: {auth}\n\
         policy:\n  default: deny\n  allow:\n{allow}  allow_private: [\"127.0.0.0/8\"]\n\
         audit: {{file: {{path: \"{d}/audit.jsonl\"}}}}\n\
         {extra}"
    )
}

pub fn write_config(kind: Target, dir: &Path, port: u16, origin: SocketAddr) -> io::Result<Vec<String>> {
    let d = dir.display();
    let listen = format!("127.0.0.1:{port}");
    match kind {
        // mitmproxy is started by `start_mitmproxy`, for the interception scenarios only.
        Target::Direct | Target::Mitmproxy => Ok(Vec::new()),
        Target::Tollgate => {
            let admin = free_port()?;
            let path = dir.join("tollgate.yaml");
            let listeners = format!("  - {{name: proxy, bind: \"{listen}\"}}\n");
            let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
            fs::write(&path, tollgate_yaml(dir, &listeners, &admin, "{anonymous: bench}", ALLOW_LOOPBACK, ""))?;
            Ok(vec!["run".into(), "-c".into(), path.display().to_string()])
        }
        Target::Squid => {
            // squid drops privileges to its cache_effective_user when started as root.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777))?;
            let path = dir.join("squid.conf");
            fs::write(
                &path,
                format!(
                    "http_port {listen}\n\
                     http_access allow all\n\
                     cache deny all\n\
                     cache_mem 8 MB\n\
                     access_log none\n\
                     cache_store_log none\n\
                     cache_log {d}/cache.log\n\
                     pid_filename {d}/squid.pid\n\
                     coredump_dir {d}\n\
                     visible_hostname tollgate-load\n\
                     via off\n\
                     forwarded_for delete\n\
                     max_filedescriptors {WANTED_OPEN_FILES}\n\
                     shutdown_lifetime 0 seconds\n\
                     workers 1\n\
                     pinger_enable off\n"
                ),
            )?;
            Ok(vec!["-N".into(), "-f".into(), path.display().to_string()])
        }
        Target::Tinyproxy => {
            let path = dir.join("tinyproxy.conf");
            fs::write(
                &path,
                format!(
                    "Port {port}\n\
                     Listen 127.0.0.1\n\
                     Timeout 600\n\
                     MaxClients 20000\n\
                     LogLevel Error\n\
                     LogFile \"{d}/tinyproxy.log\"\n\
                     PidFile \"{d}/tinyproxy.pid\"\n\
                     Allow 127.0.0.1\n\
                     ConnectPort {}\n\
                     DisableViaHeader Yes\n\
                     XTinyproxy No\n",
                    origin.port()
                ),
            )?;
            Ok(vec!["-d".into(), "-c".into(), path.display().to_string()])
        }
    }
}

/// Starts a fresh instance of a proxy pinned to core 1, waits until it accepts and answers
/// one request and one CONNECT.
pub async fn start_proxy(harness: &mut Harness, kind: Target) -> Result<Proxy, String> {
    if !harness.binaries.contains_key(&kind) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir(kind.name())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let args = write_config(kind, &dir, port, harness.origin).map_err(|e| e.to_string())?;
    launch(harness, kind, &dir, &args, &Route::plain(loopback(port), true, harness.origin)).await
}

/// Writes `yaml` to `dir/tollgate.yaml` and starts tollgate on it; `smoke` is the listener to check.
pub async fn start_tollgate(harness: &Harness, dir: &Path, yaml: &str, smoke: &Route) -> Result<Proxy, String> {
    let path = dir.join("tollgate.yaml");
    fs::write(&path, yaml).map_err(|e| format!("write {}: {e}", path.display()))?;
    let args = ["run".to_string(), "-c".to_string(), path.display().to_string()];
    launch(harness, Target::Tollgate, dir, &args, smoke).await
}

/// One absolute-form GET and one CONNECT + GET through `t`; for a Messages API target, one `POST /v1/messages`
/// through a tunnel.
pub async fn smoke_once(t: &Route) -> Result<(), String> {
    if t.authority.is_some() {
        let res = timeout(IO_TIMEOUT, async {
            let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
            exchange(&mut c, &t.messages_req(false)).await
        })
        .await;
        return match res {
            Ok(Ok(r)) if r.status == 200 && r.body == STUB_MESSAGE.len() as u64 => Ok(()),
            Ok(Ok(r)) => Err(format!("POST /v1/messages: status {}, {} body bytes", r.status, r.body)),
            Ok(Err(e)) => Err(format!("POST /v1/messages: {e}")),
            Err(_) => Err("POST /v1/messages: timeout".into()),
        };
    }
    let get = timeout(IO_TIMEOUT, async {
        let mut c = t.open(SMALL_READ_BUFFER).await?;
        c.send(&t.get_ka()).await?;
        c.response(false).await
    })
    .await;
    let tun = timeout(IO_TIMEOUT, async {
        let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
        c.send(&t.get_origin_form("/")).await?;
        c.response(false).await
    })
    .await;
    match (get, tun) {
        (Ok(Ok(a)), Ok(Ok(b))) if a.status == 200 && b.status == 200 => Ok(()),
        (g, c) => {
            let d = |r: Result<io::Result<Response>, _>| match r {
                Ok(Ok(r)) => format!("status {}", r.status),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timeout".into(),
            };
            Err(format!("GET: {}, CONNECT: {}", d(g), d(c)))
        }
    }
}

/// Spawns `kind` with `args` in `dir`, pinned to core 1; waits until `smoke.addr` accepts and
/// `smoke` answers one request and one CONNECT.
pub async fn launch(
    harness: &Harness,
    kind: Target,
    dir: &Path,
    args: &[String],
    smoke: &Route,
) -> Result<Proxy, String> {
    let mut proxy = spawn(harness, kind, dir, args, smoke.addr).await?;
    until_smoke(&mut proxy, smoke).await?;
    Ok(proxy)
}

/// Spawns `kind` with `args` in `dir`, pinned to core 1; waits until `addr` accepts.
pub async fn spawn(
    harness: &Harness,
    kind: Target,
    dir: &Path,
    args: &[String],
    addr: SocketAddr,
) -> Result<Proxy, String> {
    let bin = harness.binaries.get(&kind).cloned().ok_or("not installed")?;
    let log = dir.join("stdio.log");
    let out = fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = harness.pinned(&bin);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    if kind == Target::Tollgate && std::env::var_os("TOLLGATE_LOG").is_none() {
        // The peers run without an access log; tollgate's per-request log line is off too (its audit record,
        // the contract, stays on).
        cmd.env("TOLLGATE_LOG", "warn");
    }
    let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    register_pid(child.id());
    let mut proxy = Proxy { kind, child, addr, log };
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited at start-up ({status}): {}", kind.name(), proxy.tail()));
        }
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(proxy.addr)).await {
            return Ok(proxy);
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{} did not accept on {} within {} attempts: {}",
        kind.name(),
        proxy.addr,
        READY_ATTEMPTS,
        proxy.tail()
    ))
}

/// Smoke test: one absolute-form GET and one CONNECT (or, for the Messages API, one request), retried briefly
/// while the proxy finishes start-up.
pub async fn until_smoke(proxy: &mut Proxy, smoke: &Route) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match smoke_once(smoke).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited ({status}): {}", proxy.kind.name(), proxy.tail()));
        }
        sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{} does not proxy ({last}): {}", proxy.kind.name(), proxy.tail()))
}

/// A listener as a YAML block-list item.
pub fn listener_item(name: &str, port: u16) -> String {
    format!("  - {{name: {name}, bind: \"127.0.0.1:{port}\"}}\n")
}
