//! Two real `tollgate run` processes sharing one real `redis-server`: together they admit no more than the
//! organisation's rate, and with Redis stopped both fail closed (503) as `state.on_error: deny` says.

use crate::common;

use std::path::Path;

use common::binary::{Stderr, Tollgate};
use common::redis::RedisServer;
use common::{exchange, Origin};

fn write_config(dir: &Path, name: &str, redis_url: &str, rpm: u32) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
         admin: {{bind: \"127.0.0.1:0\"}}\n\
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
    let first = Tollgate::start(&write_config(dir.path(), "replica-a", &redis.url(), 5), Stderr::Drained).await;
    let second = Tollgate::start(&write_config(dir.path(), "replica-b", &redis.url(), 5), Stderr::Drained).await;

    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.url("/shared"));
    let mut admitted = [0usize; 2];
    let mut limited = 0;
    for round in 0..20 {
        let (index, replica) = if round % 2 == 0 { (0, &first) } else { (1, &second) };
        let response = exchange(replica.listener("proxy"), request.as_bytes()).await;
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
        let response = exchange(replica.listener("proxy"), request.as_bytes()).await;
        assert_eq!(response.status, 503, "{response:?}");
        assert_eq!(response.json()["error"]["type"], "state_unavailable");
    }
    assert_eq!(origin.connection_count(), 5, "fail closed: nothing more reached the origin");
}
