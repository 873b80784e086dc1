//! Concurrency slots in Redis are leases: the slots of a replica that dies (kill -9, or its heartbeat gone) are
//! free again within seconds, and N requests racing through two replicas for a cap of k get exactly k.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{Stderr, Tollgate};
use common::redis::RedisServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate::limits::redis::{Redis, RedisOptions};
use tollgate::limits::{Backend, Bucket, Limits, Plan, Rate, Scope, Slot, Verdict};

const T0: u64 = 1_764_300_000_000_000;

fn slot(key: &str, max: u32) -> Slot {
    Slot { key: format!("conc:{key}"), scope: Scope::Org, max }
}

/// A plan of `slots` and `buckets`, as `Limits::plan` builds them.
fn plan(slots: Vec<Slot>, buckets: Vec<Bucket>) -> Arc<Plan> {
    Arc::new(Plan::of(buckets, slots))
}

/// Polls `attempt` (at most `within`, 50 ms apart) until it is true; how long that took.
async fn until(within: Duration, mut attempt: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if attempt().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_replica_that_stopped_its_heartbeat_are_free_after_its_lease() {
    let server = RedisServer::start().await;
    let options = RedisOptions { lease: Duration::from_secs(2), ..RedisOptions::default() };
    let survivor = Redis::connect_with(&server.url(), options).expect("valid URL");
    let doomed = Redis::connect_with(&server.url(), options).expect("valid URL");
    let org = plan(vec![slot("org", 3)], Vec::new());

    // The doomed replica holds two of the three slots, the survivor the third.
    for _ in 0..2 {
        assert_eq!(doomed.admit(&org, T0).await.expect("redis answers"), Verdict::Admit);
    }
    assert_eq!(survivor.admit(&org, T0).await.expect("redis answers"), Verdict::Admit);
    assert_eq!(survivor.admit(&org, T0).await.expect("redis answers"), Verdict::Full { slot: 0 });

    // Gone without giving anything back: its writer and heartbeat stop with it.
    drop(doomed);
    let free = until(Duration::from_secs(20), async || {
        survivor.admit(&org, T0).await.expect("redis answers") == Verdict::Admit
    })
    .await
    .expect("the dead replica's slots are free again within its lease");
    println!("a slot of the dead replica was free again after {free:?}");
    // Both of its slots: the survivor now holds all three, and no more.
    assert_eq!(survivor.admit(&org, T0).await.expect("redis answers"), Verdict::Admit);
    assert_eq!(survivor.admit(&org, T0).await.expect("redis answers"), Verdict::Full { slot: 0 });

    // A live replica keeps its slots however long it holds them: its heartbeat renews the lease.
    let holder = Redis::connect_with(&server.url(), options).expect("valid URL");
    let user = plan(vec![slot("user:ann", 1)], Vec::new());
    assert_eq!(holder.admit(&user, T0).await.expect("redis answers"), Verdict::Admit);
    let checker = Redis::connect_with(&server.url(), options).expect("valid URL");
    let still_held = until(Duration::from_secs(5), async || {
        checker.admit(&user, T0).await.expect("redis answers") == Verdict::Admit
    })
    .await;
    assert_eq!(still_held, None, "a live replica's slot stayed taken for twice its lease");
    holder.leave(&user.slots).await.expect("redis answers");
    assert_eq!(checker.admit(&user, T0).await.expect("redis answers"), Verdict::Admit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_admissions_through_two_replicas_get_exactly_the_cap_and_the_burst() {
    let server = RedisServer::start().await;
    let replicas = [
        Arc::new(Redis::connect(&server.url()).expect("valid URL")),
        Arc::new(Redis::connect(&server.url()).expect("valid URL")),
    ];
    // 60 requests at one instant, 30 per replica, all at once: a cap of 7 slots admits exactly 7 ...
    let capped = plan(
        vec![slot("user:ann", 7), slot("org", 100)],
        vec![Bucket { key: "rate:org".into(), scope: Scope::Org, rate: Limits::rate(1_000) }],
    );
    let verdicts = race(&replicas, &capped, 60).await;
    let admitted = verdicts.iter().filter(|verdict| **verdict == Verdict::Admit).count();
    assert_eq!(admitted, 7, "{verdicts:?}");
    assert!(verdicts.iter().all(|verdict| matches!(verdict, Verdict::Admit | Verdict::Full { slot: 0 })));

    // ... and a burst of 11 admits exactly 11, with the refused ones charged nothing.
    let burst = plan(
        vec![slot("org:burst", 100)],
        vec![Bucket { key: "rate:burst".into(), scope: Scope::Org, rate: Rate { per_minute: 11, burst: 11 } }],
    );
    let verdicts = race(&replicas, &burst, 60).await;
    let admitted = verdicts.iter().filter(|verdict| **verdict == Verdict::Admit).count();
    assert_eq!(admitted, 11, "{verdicts:?}");
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let held: Vec<String> =
        redis::cmd("HVALS").arg("tollgate:slots:org:burst").query_async(&mut connection).await.expect("HVALS");
    let held: u64 = held.iter().map(|count| count.parse::<u64>().expect("a count")).sum();
    assert_eq!(held, 11, "only the admitted requests hold a slot");
    for replica in &replicas {
        assert!(replica.replica().contains(&std::process::id().to_string()));
    }
}

/// `n` admissions of `plan` at one instant, half through each replica, all in flight together.
async fn race(replicas: &[Arc<Redis>; 2], plan: &Arc<Plan>, n: usize) -> Vec<Verdict> {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..n {
        let (replica, plan, start) = (replicas[index % 2].clone(), plan.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            replica.admit(&plan, T0).await.expect("redis answers")
        });
    }
    let mut verdicts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        verdicts.push(done.expect("task finished"));
    }
    verdicts
}

fn write_config(dir: &Path, name: &str, redis_url: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
         admin: {{bind: \"127.0.0.1:0\"}}\n\
         auth: {{anonymous: {name}}}\n\
         policy: {{default: deny, allow: [\"127.0.0.1\"], allow_private: [\"127.0.0.0/8\"]}}\n\
         limits: {{org: {{concurrent: 2}}}}\n\
         state: {{backend: redis, redis_url: \"{redis_url}\", on_error: deny}}\n\
         audit: {{file: {{path: \"{}\"}}}}\n",
        dir.join(format!("{name}-audit.jsonl")).display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Opens a CONNECT tunnel to `target` through `proxy`; the status and, when 200, the open tunnel.
async fn tunnel(proxy: std::net::SocketAddr, target: std::net::SocketAddr) -> (u16, Option<TcpStream>) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send CONNECT");
    let response = common::read_response(&mut stream).await;
    let open = (response.status == 200).then_some(stream);
    (response.status, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_of_a_replica_killed_with_sigkill_free_their_slots_within_seconds() {
    let server = RedisServer::start().await;
    let echo = common::Echo::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let doomed = Tollgate::start(&write_config(dir.path(), "replica-a", &server.url()), Stderr::Drained).await;
    let survivor = Tollgate::start(&write_config(dir.path(), "replica-b", &server.url()), Stderr::Drained).await;

    // The doomed replica holds both of the organisation's slots with two open tunnels.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, open) = tunnel(doomed.listener("proxy"), echo.address).await;
        assert_eq!(status, 200);
        held.push(open.expect("an open tunnel"));
    }
    let (status, _) = tunnel(survivor.listener("proxy"), echo.address).await;
    assert_eq!(status, 429, "the org's two slots are taken on the other replica");

    // kill -9: no shutdown, no release, no more heartbeats.
    doomed.kill().await;
    let reclaimed =
        until(Duration::from_secs(30), async || tunnel(survivor.listener("proxy"), echo.address).await.0 == 200)
            .await
            .expect("the killed replica's slots are reclaimed within seconds");
    println!("a tunnel of the survivor was admitted {reclaimed:?} after the kill");
    drop(held);
    drop(survivor);
}
