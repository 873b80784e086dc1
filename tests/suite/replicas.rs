//! Two real `tollgate run` processes sharing one real `redis-server`: together they admit no more than the
//! organisation's rate, and with Redis stopped both fail closed (503) as `state.on_error: deny` says.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::redis::RedisServer;
use common::{exchange, Origin};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A replica: the child process and the address its proxy listener bound.
struct Replica {
    child: Child,
    proxy: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `tollgate run` on `config` and waits for its `listening` log line.
async fn replica(config: &Path) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tollgate run");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    let proxy = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no listening line in time; stderr so far:\n{}", seen.join("\n")))
            .expect("read stderr")
            .unwrap_or_else(|| panic!("tollgate exited; stderr:\n{}", seen.join("\n")));
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            if value["message"] == "listening" {
                break value["address"].as_str().expect("address").parse().expect("IP:PORT");
            }
        }
        seen.push(line);
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Replica { child, proxy }
}

fn write_config(dir: &Path, name: &str, redis_url: &str, rpm: u32) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
         auth: {{anonymous: {name}}}\n\
         policy: {{default: deny, allow: [\"127.0.0.1\"], allow_private: [\"127.0.0.0/8\"]}}\n\
         limits: {{org: {{rpm: {rpm}}}}}\n\
         state: {{backend: redis, redis_url: \"{redis_url}\", on_error: deny}}\n\
         audit: {{file: {{path: \"{}\"}}}}\n",
        dir.join(format!("{name}-audit.jsonl")).display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_org_limit_and_fail_closed_without_redis() {
    let mut redis = RedisServer::start().await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A rate of 5 a minute: the burst is 5, and the next request is 12 s away, far beyond this test.
    let first = replica(&write_config(dir.path(), "replica-a", &redis.url(), 5)).await;
    let second = replica(&write_config(dir.path(), "replica-b", &redis.url(), 5)).await;

    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.url("/shared"));
    let mut admitted = [0usize; 2];
    let mut limited = 0;
    for round in 0..20 {
        let (index, replica) = if round % 2 == 0 { (0, &first) } else { (1, &second) };
        let response = exchange(replica.proxy, request.as_bytes()).await;
        match response.status {
            200 => admitted[index] += 1,
            429 => {
                assert!(response.header("retry-after").is_some(), "{response:?}");
                assert_eq!(response.json()["error"]["type"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected status {other}: {response:?}"),
        }
    }
    assert_eq!(admitted[0] + admitted[1], 5, "together the replicas admit exactly the org burst: {admitted:?}");
    assert!(admitted[0] > 0 && admitted[1] > 0, "both replicas served part of it: {admitted:?}");
    assert_eq!(limited, 15);
    assert_eq!(origin.connection_count(), 5, "refused requests never reach the origin");

    redis.stop().await;
    for replica in [&first, &second] {
        let response = exchange(replica.proxy, request.as_bytes()).await;
        assert_eq!(response.status, 503, "{response:?}");
        assert_eq!(response.json()["error"]["type"], "state_unavailable");
    }
    assert_eq!(origin.connection_count(), 5, "fail closed: nothing more reached the origin");
}
