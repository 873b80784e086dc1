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
use crate::servers::stub_message;

/// The state of one run, handed to every scenario.
pub struct Harness {
    pub options: Options,
    /// The in-process origin.
    pub origin: SocketAddr,
    /// Every instance's directory is made in it.
    pub temp_dir: PathBuf,
    /// Proxies run on core 1 (`taskset` and two cores are there).
    pub pin_children: bool,
    /// The installed targets' binaries.
    pub binaries: BTreeMap<Target, PathBuf>,
    /// Instances started so far (numbers their directories).
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
        fs::create_dir_all(&dir).map_err(|error| format!("mkdir {}: {error}", dir.display()))?;
        Ok(dir)
    }

    /// A command pinned to core 1 (when pinning is possible).
    pub fn pinned(&self, binary: &Path) -> Command {
        if self.pin_children {
            let mut command = Command::new("taskset");
            command.arg("-c").arg("1").arg(binary);
            command
        } else {
            Command::new(binary)
        }
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `policy.allow` entry every tollgate config has (the origin), as a YAML block-list item.
pub const ALLOW_LOOPBACK: &str = "    - \"127.0.0.1\"\n";

/// A tollgate config: `listeners` are YAML block-list items, `admin` and `auth` flow maps, `allow` block-list
/// items of `policy.allow`, `extra` further top-level sections. Private destinations: 127.0.0.0/8 only; audit
/// to a file in `dir`.
pub fn tollgate_yaml(dir: &Path, listeners: &str, admin: &str, auth: &str, allow: &str, extra: &str) -> String {
    let directory = dir.display();
    format!(
        "listeners:\n{listeners}\
         admin: {admin}\n\
         auth: {auth}\n\
         policy:\n  default: deny\n  allow:\n{allow}  allow_private: [\"127.0.0.0/8\"]\n\
         audit: {{file: {{path: \"{directory}/audit.jsonl\"}}}}\n\
         {extra}"
    )
}

/// A listener as a YAML block-list item.
pub fn listener_item(name: &str, port: u16) -> String {
    format!("  - {{name: {name}, bind: \"127.0.0.1:{port}\"}}\n")
}

/// Writes the config of `target` listening on `port` into `dir`; returns the arguments that start it on it.
fn write_config(target: Target, dir: &Path, port: u16, origin: SocketAddr) -> Result<Vec<String>, String> {
    let directory = dir.display();
    let listen = format!("127.0.0.1:{port}");
    let written =
        |path: &Path, written: io::Result<()>| written.map_err(|error| format!("{}: {error}", path.display()));
    match target {
        // mitmproxy is started by `start_mitmproxy`, for the interception scenarios only.
        Target::Direct | Target::Mitmproxy | Target::TollgateBefore | Target::Litellm => Ok(Vec::new()),
        Target::Tollgate => {
            let admin = free_port()?;
            let path = dir.join("tollgate.yaml");
            let listeners = listener_item("proxy", port);
            let admin = format!("{{bind: \"127.0.0.1:{admin}\"}}");
            let yaml = tollgate_yaml(dir, &listeners, &admin, "{anonymous: bench}", ALLOW_LOOPBACK, "");
            written(&path, fs::write(&path, yaml))?;
            Ok(vec!["run".into(), "-c".into(), path.display().to_string()])
        }
        Target::Squid => {
            // squid drops privileges to its cache_effective_user when started as root.
            written(dir, fs::set_permissions(dir, fs::Permissions::from_mode(0o777)))?;
            let path = dir.join("squid.conf");
            let config = format!(
                "http_port {listen}\n\
                 http_access allow all\n\
                 cache deny all\n\
                 cache_mem 8 MB\n\
                 access_log none\n\
                 cache_store_log none\n\
                 cache_log {directory}/cache.log\n\
                 pid_filename {directory}/squid.pid\n\
                 coredump_dir {directory}\n\
                 visible_hostname tollgate-load\n\
                 via off\n\
                 forwarded_for delete\n\
                 max_filedescriptors {WANTED_OPEN_FILES}\n\
                 shutdown_lifetime 0 seconds\n\
                 workers 1\n\
                 pinger_enable off\n"
            );
            written(&path, fs::write(&path, config))?;
            Ok(vec!["-N".into(), "-f".into(), path.display().to_string()])
        }
        Target::Tinyproxy => {
            let path = dir.join("tinyproxy.conf");
            let config = format!(
                "Port {port}\n\
                 Listen 127.0.0.1\n\
                 Timeout 600\n\
                 MaxClients 20000\n\
                 LogLevel Error\n\
                 LogFile \"{directory}/tinyproxy.log\"\n\
                 PidFile \"{directory}/tinyproxy.pid\"\n\
                 Allow 127.0.0.1\n\
                 ConnectPort {}\n\
                 DisableViaHeader Yes\n\
                 XTinyproxy No\n",
                origin.port()
            );
            written(&path, fs::write(&path, config))?;
            Ok(vec!["-d".into(), "-c".into(), path.display().to_string()])
        }
    }
}

/// Starts a fresh instance of a proxy pinned to core 1, waits until it accepts and answers
/// one request and one CONNECT.
pub async fn start_proxy(harness: &mut Harness, target: Target) -> Result<Proxy, String> {
    if !harness.binaries.contains_key(&target) {
        return Err("not installed".into());
    }
    let dir = harness.instance_dir(target.name())?;
    let port = free_port()?;
    let args = write_config(target, &dir, port, harness.origin)?;
    launch(harness, target, &dir, &args, &Route::plain(loopback(port), true, harness.origin)).await
}

/// Writes `yaml` to `dir/tollgate.yaml` and starts tollgate on it; `smoke` is the listener to check.
pub async fn start_tollgate(harness: &Harness, dir: &Path, yaml: &str, smoke: &Route) -> Result<Proxy, String> {
    let path = dir.join("tollgate.yaml");
    fs::write(&path, yaml).map_err(|error| format!("write {}: {error}", path.display()))?;
    let args = ["run".to_string(), "-c".to_string(), path.display().to_string()];
    launch(harness, Target::Tollgate, dir, &args, smoke).await
}

/// One absolute-form GET and one CONNECT + GET by `route`; for the Messages API, one `POST /v1/messages` through
/// a tunnel.
pub async fn smoke_once(route: &Route) -> Result<(), String> {
    if route.authority.is_some() {
        let outcome = timeout(IO_TIMEOUT, async {
            let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
            exchange(&mut connection, &route.messages_request(false)).await
        })
        .await;
        return match outcome {
            Ok(Ok(response)) if response.status == 200 && response.body_length == stub_message().len() as u64 => Ok(()),
            Ok(Ok(response)) => {
                Err(format!("POST /v1/messages: status {}, {} body bytes", response.status, response.body_length))
            }
            Ok(Err(error)) => Err(format!("POST /v1/messages: {error}")),
            Err(_) => Err("POST /v1/messages: timeout".into()),
        };
    }
    let get = timeout(IO_TIMEOUT, async {
        let mut connection = route.open(SMALL_READ_BUFFER).await?;
        connection.send(&route.keep_alive_get()).await?;
        connection.response(false).await
    })
    .await;
    let tunnel = timeout(IO_TIMEOUT, async {
        let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
        connection.send(&route.origin_form_get("/")).await?;
        connection.response(false).await
    })
    .await;
    match (get, tunnel) {
        (Ok(Ok(get)), Ok(Ok(tunnel))) if get.status == 200 && tunnel.status == 200 => Ok(()),
        (get, tunnel) => {
            let describe = |outcome: Result<io::Result<Response>, _>| match outcome {
                Ok(Ok(response)) => format!("status {}", response.status),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "timeout".into(),
            };
            Err(format!("GET: {}, CONNECT: {}", describe(get), describe(tunnel)))
        }
    }
}

/// Spawns `target` with `args` in `dir`, pinned to core 1; waits until `smoke.address` accepts and
/// `smoke` answers one request and one CONNECT.
async fn launch(
    harness: &Harness,
    target: Target,
    dir: &Path,
    args: &[String],
    smoke: &Route,
) -> Result<Proxy, String> {
    let mut proxy = spawn(harness, target, dir, args, smoke.address).await?;
    until_smoke(&mut proxy, smoke).await?;
    Ok(proxy)
}

/// Spawns `target` with `args` in `dir`, pinned to core 1; waits until `address` accepts.
pub async fn spawn(
    harness: &Harness,
    target: Target,
    dir: &Path,
    args: &[String],
    address: SocketAddr,
) -> Result<Proxy, String> {
    spawn_within(harness, target, dir, args, address, READY_ATTEMPTS).await
}

/// `spawn`, waiting for at most `attempts` connects (about 100 ms apart) for a target slow to start.
pub async fn spawn_within(
    harness: &Harness,
    target: Target,
    dir: &Path,
    args: &[String],
    address: SocketAddr,
    attempts: u32,
) -> Result<Proxy, String> {
    let binary = harness.binaries.get(&target).cloned().ok_or("not installed")?;
    let log = dir.join("stdio.log");
    let stdout = fs::File::create(&log).map_err(|error| error.to_string())?;
    let stderr = stdout.try_clone().map_err(|error| error.to_string())?;
    let mut command = harness.pinned(&binary);
    command.args(args).current_dir(dir).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    if matches!(target, Target::Tollgate | Target::TollgateBefore) && std::env::var_os("TOLLGATE_LOG").is_none() {
        // The peers run without an access log; tollgate's per-request log line is off too (its audit record,
        // the contract, stays on).
        command.env("TOLLGATE_LOG", "warn");
    }
    if target == Target::Litellm {
        // The model cost map bundled with the package (no download at start-up), errors only, no telemetry.
        command.env("LITELLM_LOCAL_MODEL_COST_MAP", "True").env("LITELLM_LOG", "ERROR");
    }
    let child = command.spawn().map_err(|error| format!("spawn {}: {error}", binary.display()))?;
    register_pid(child.id());
    let mut proxy = Proxy { target, child, address, log };
    for _ in 0..attempts {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited at start-up ({status}): {}", target.name(), proxy.tail()));
        }
        if let Ok(Ok(_)) = timeout(Duration::from_millis(500), TcpStream::connect(proxy.address)).await {
            return Ok(proxy);
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{} did not accept on {} within {} attempts: {}", target.name(), proxy.address, attempts, proxy.tail()))
}

/// Smoke test: one absolute-form GET and one CONNECT (or, for the Messages API, one request), retried briefly
/// while the proxy finishes start-up.
pub async fn until_smoke(proxy: &mut Proxy, smoke: &Route) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match smoke_once(smoke).await {
            Ok(()) => return Ok(()),
            Err(error) => last = error,
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            return Err(format!("{} exited ({status}): {}", proxy.target.name(), proxy.tail()));
        }
        sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{} does not proxy ({last}): {}", proxy.target.name(), proxy.tail()))
}
