//! A real `redis-server` for tests: on a free 127.0.0.1 port, its working directory a temp dir, nothing
//! persisted (`--save "" --appendonly no`), killed when dropped. A test can kill it mid-test (a crash, as the
//! gateway sees one) and start it again on the same port.
//!
//! Readiness is the server's own "Ready to accept connections" line on its stdout, not a sleep. The binary is
//! `$REDIS_SERVER`, else `redis-server`, else `valkey-server`; `scripts/test` and `.ci/run` install it.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running (or stopped) redis-server owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut last = String::new();
        // A port found free may be taken before the server binds it; try a few.
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, &dir).await {
                Ok(child) => return Self { child: Some(child), port, dir },
                Err(output) => last = output,
            }
        }
        panic!("redis-server did not start:\n{last}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, as a crash) and waits for it to exit. Its data is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        let child =
            spawn(self.port, &self.dir).await.unwrap_or_else(|output| panic!("redis-server restart:\n{output}"));
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn binary() -> String {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return path;
    }
    let found = |name: &str| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
            .unwrap_or(false)
    };
    if !found("redis-server") && found("valkey-server") {
        return "valkey-server".to_owned();
    }
    "redis-server".to_owned()
}

/// Starts one server on `port`; `Ok` once it said it is ready, `Err(its output)` if it exited first.
async fn spawn(port: u16, dir: &tempfile::TempDir) -> Result<Child, String> {
    let binary = binary();
    let mut child = Command::new(&binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--loglevel", "notice", "--logfile", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary} ({e}); install redis-server (scripts/test does)"));
    let stdout = child.stdout.take().expect("piped stdout");
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
        let _ = child.kill().await;
        return Err(output);
    }
    // Keep draining its log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}
