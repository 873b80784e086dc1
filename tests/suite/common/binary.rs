//! The real `tollgate` binary as a child process: `tollgate --log-format json run -c FILE`, its listeners' addresses
//! read from its startup log lines, its peak resident memory (`VmHWM`) read from `/proc`, its metrics from the admin
//! listener, and its whole stderr once it has stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

use super::{exchange, metric_value};

/// What the test does with the child's stderr once the listeners are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Read to its end and kept, for `stop`.
    Drained,
    /// Never read again: the pipe fills and stays full.
    Unread,
}

/// A running `tollgate run`; killed when dropped.
pub struct Tollgate {
    child: Child,
    listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    /// The startup lines, then (with `Stderr::Drained`) every later line.
    lines: Arc<Mutex<Vec<String>>>,
    drained: Option<tokio::task::JoinHandle<()>>,
    /// Held open and never read (with `Stderr::Unread`).
    _unread: Option<Lines<BufReader<ChildStderr>>>,
}

impl Tollgate {
    /// Starts the binary on `config` (which must name an `admin` listener) and waits (bounded) for the log line of
    /// its admin listener, which follows those of all the other listeners.
    pub async fn start(config: &Path, stderr: Stderr) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--log-format", "json", "run", "-c"])
            .arg(config)
            .env_remove("TOLLGATE_LOG")
            .env_remove("TOLLGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tollgate run");
        let mut reader = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        let mut listeners = HashMap::new();
        let admin = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), reader.next_line())
                .await
                .unwrap_or_else(|_| panic!("tollgate did not start within 30s; stderr:\n{}", seen.join("\n")))
                .expect("read stderr")
                .unwrap_or_else(|| panic!("tollgate exited; stderr:\n{}", seen.join("\n")));
            seen.push(line.clone());
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let address = || -> SocketAddr { value["address"].as_str().expect("address").parse().expect("IP:PORT") };
            match value["message"].as_str() {
                Some("listening") => {
                    listeners.insert(value["listener"].as_str().expect("listener").to_owned(), address());
                }
                Some(message) if message.starts_with("admin endpoints") => break address(),
                _ => {}
            }
        };
        let lines = Arc::new(Mutex::new(seen));
        let (drained, unread) = match stderr {
            Stderr::Drained => {
                let kept = lines.clone();
                let task = tokio::spawn(async move {
                    while let Ok(Some(line)) = reader.next_line().await {
                        kept.lock().unwrap().push(line);
                    }
                });
                (Some(task), None)
            }
            Stderr::Unread => (None, Some(reader)),
        };
        Self { child, listeners, admin, lines, drained, _unread: unread }
    }

    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
    }

    /// The process's peak resident memory so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("tollgate is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("a VmHWM line");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM in kB")
    }

    /// The Prometheus text from the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = exchange(self.admin, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
        assert_eq!(response.status, 200, "{response:?}");
        response.body
    }

    /// One sample of `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Kills the process with SIGKILL (`kill -9`: no shutdown at all) and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9 tollgate");
    }

    /// Stops the process with SIGTERM, waits for it to exit (bounded: 30 s) and returns its whole stderr.
    pub async fn stop(mut self) -> String {
        let pid = self.child.id().expect("tollgate is running").to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill");
        assert!(kill.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("tollgate exits within 30s of SIGTERM")
            .expect("wait for tollgate");
        if let Some(drained) = self.drained.take() {
            tokio::time::timeout(Duration::from_secs(30), drained).await.expect("stderr ends").expect("reader");
        }
        let text = self.lines.lock().unwrap().join("\n");
        assert!(status.success(), "tollgate exited with {status}; stderr:\n{text}");
        text
    }
}

/// What `tollgate explain` did.
#[derive(Debug)]
pub struct Explained {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tollgate explain -c CONFIG ARGS…` (the real binary, `TOLLGATE_CONFIG` unset).
pub async fn explain(config: &Path, args: &[&str]) -> Explained {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("explain")
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .await
        .expect("run tollgate explain");
    Explained {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
