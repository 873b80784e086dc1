//! A real `redis-server` for tests: on a free 127.0.0.1 port, its working directory a temp dir, nothing
//! persisted (`--save "" --appendonly no`), killed when dropped. A test can kill it mid-test (a crash, as the
//! gateway sees one) and start it again on the same port.
//!
//! The server runs under a small `sh` watcher that SIGKILLs it as soon as its stdin (a pipe from the test)
//! closes: when the server is dropped or stopped, and also when the test process itself is killed, so no
//! server outlives its test.
//!
//! Readiness is the server's own "Ready to accept connections" line on its stdout, not a sleep. The binary is
//! `$REDIS_SERVER`, else `redis-server`, else `valkey-server`; `scripts/test` and `.ci/run` install it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Starts `"$@"` (the server) in the background and SIGKILLs it once stdin reaches EOF; exits when it exits.
const WATCHER: &str = r#"exec 3<&0
"$@" 3<&- &
server=$!
{ read -r _ <&3; kill -9 "$server"; } >/dev/null 2>&1 &
exec 3<&-
wait "$server"
"#;

/// One running server: the watcher and the pipe whose closing kills it.
struct Running {
    watcher: Child,
    lifeline: ChildStdin,
}

/// A running (or stopped) redis-server owned by one test.
pub struct RedisServer {
    running: Option<Running>,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments besides the port, bind address and persistence (TLS, cluster mode).
    extra: Vec<String>,
    tls: bool,
}

/// The TLS files of a server that listens with TLS only.
pub struct TlsFiles<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    /// The CA of the client certificates it requires.
    pub client_ca: &'a std::path::Path,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), false).await
    }

    /// Starts a server that speaks TLS only on its port and requires a client certificate.
    pub async fn start_tls(files: TlsFiles<'_>) -> Self {
        let path = |path: &std::path::Path| path.display().to_string();
        let extra = vec![
            "--tls-cert-file".to_owned(),
            path(files.cert),
            "--tls-key-file".to_owned(),
            path(files.key),
            "--tls-ca-cert-file".to_owned(),
            path(files.client_ca),
            "--tls-auth-clients".to_owned(),
            "yes".to_owned(),
        ];
        Self::start_with(extra, true).await
    }

    /// Starts a server with `extra` arguments; with `tls` its port is a TLS port and plain TCP is off.
    pub async fn start_with(extra: Vec<String>, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut last = String::new();
        // A port found free may be taken before the server binds it; try a few.
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, &dir, &extra, tls).await {
                Ok(running) => return Self { running: Some(running), port, dir, extra, tls },
                Err(output) => last = output,
            }
        }
        panic!("redis-server did not start:\n{last}");
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, as a crash) and waits until it has exited. Its data is gone.
    pub async fn stop(&mut self) {
        if let Some(Running { mut watcher, lifeline }) = self.running.take() {
            drop(lifeline);
            watcher.wait().await.expect("redis-server watcher exits");
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = spawn(self.port, &self.dir, &self.extra, self.tls)
            .await
            .unwrap_or_else(|output| panic!("redis-server restart:\n{output}"));
        self.running = Some(running);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Closing the lifeline makes the watcher kill the server.
        self.running.take();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// `$REDIS_SERVER`, else `redis-server` or `valkey-server` from `PATH`.
fn binary() -> String {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return path;
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
    };
    ["redis-server", "valkey-server"]
        .into_iter()
        .find(|name| on_path(name))
        .unwrap_or_else(|| panic!("no redis-server (or valkey-server) on PATH: install it (scripts/test does)"))
        .to_owned()
}

/// Starts one server on `port` under the watcher; `Ok` once it said it is ready, `Err(its output)` if it
/// exited first.
async fn spawn(port: u16, dir: &tempfile::TempDir, extra: &[String], tls: bool) -> Result<Running, String> {
    let binary = binary();
    let ports = if tls {
        vec!["--port".to_owned(), "0".to_owned(), "--tls-port".to_owned(), port.to_string()]
    } else {
        vec!["--port".to_owned(), port.to_string()]
    };
    let mut watcher = Command::new("sh")
        .args(["-c", WATCHER, "sh", &binary])
        .args(&ports)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .args(["--daemonize", "no", "--loglevel", "notice", "--logfile", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh to start {binary}: {e}"));
    let lifeline = watcher.stdin.take().expect("piped stdin");
    let stdout = watcher.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut output = String::new();
    let ready = tokio::time::timeout(READY_WITHIN, async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push_str(&line);
            output.push('\n');
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(ready, Ok(true)) {
        drop(lifeline);
        let _ = watcher.wait().await;
        return Err(output);
    }
    // Keep draining its log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Running { watcher, lifeline })
}
