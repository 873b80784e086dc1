//! Redis Cluster: three real `redis-server --cluster-enabled yes` on loopback joined with `redis-cli --cluster
//! create`; the backend finds the cluster from `redis+cluster://`, keeps every key under the `{tollgate}` hash tag
//! (one slot, so one admission's user, team and org keys go in one script), and admits exactly as one server.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use tollgate::limits::redis::Redis;
use tollgate::limits::{Admission, Backend, Bucket, Plan, Rate, Scope, Slot, SpendKey, Verdict};

const T0: u64 = 1_764_300_000_000_000;

async fn start_cluster() -> Vec<RedisServer> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let extra =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"];
        nodes.push(RedisServer::start_with(extra.iter().map(|arg| (*arg).to_owned()).collect(), false).await);
    }
    let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli (redis-tools)");
    assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
    // Joined once every node says so (gossip takes a moment): a bounded poll, not a sleep.
    let started = Instant::now();
    for address in &addresses {
        let port = address.rsplit(':').next().expect("a port");
        loop {
            let info = Command::new("redis-cli").args(["-p", port, "cluster", "info"]).output().expect("redis-cli");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_one_admissions_keys_in_one_slot_and_admits_exactly() {
    let nodes = start_cluster().await;
    let url = format!("redis+cluster://127.0.0.1:{},127.0.0.1:{}", nodes[0].port(), nodes[1].port());
    let (first, second) = (Redis::connect(&url).expect("a cluster URL"), Redis::connect(&url).expect("a cluster URL"));
    assert!(first.is_cluster());
    first.ping().await.expect("the cluster answers");

    // A user, a team and the org: keys that would hash to three slots without the tag.
    let rate = |key: &str, per_minute| Bucket {
        key: key.into(),
        scope: Scope::Org,
        rate: Rate { per_minute, burst: per_minute },
    };
    let slot = |key: &str, max| Slot { key: key.into(), scope: Scope::User, max };
    let plan = std::sync::Arc::new(Plan::of(
        vec![rate("rate:user:ann", 100), rate("rate:team:core", 100), rate("rate:org", 5)],
        vec![slot("conc:user:ann", 100), slot("conc:org", 100)],
    ));
    let mut admitted = 0;
    for round in 0..10 {
        let replica = if round % 2 == 0 { &first } else { &second };
        match replica.admit(&plan, T0).await.expect("the cluster answers") {
            Verdict::Admit => admitted += 1,
            Verdict::Limited { bucket: 2, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 5, "two replicas share the org's burst of 5 through the cluster");
    assert!(matches!(first.acquire(&plan.buckets[2..], T0).await.expect("answers"), Admission::Limited { .. }));
    first.leave(&plan.slots).await.expect("answers");

    // Spend is kept in the same slot, read back with one MGET (its keys expire by the real clock).
    let now_ms = tollgate::limits::millis(std::time::SystemTime::now());
    let keys = [
        SpendKey { key: "spend:user:ann:day:test".into(), period_end_ms: now_ms + 3_600_000 },
        SpendKey { key: "spend:org:day:test".into(), period_end_ms: now_ms + 3_600_000 },
    ];
    assert_eq!(first.add_spend(&keys, 42, now_ms).await.expect("answers"), vec![42, 42]);
    assert_eq!(second.spend(&keys, now_ms).await.expect("answers"), vec![42, 42]);

    // Every key carries the tag: one slot, on one node.
    let tagged =
        [first.key("rate:org"), first.key("rate:user:ann"), first.slot_key(&plan.slots[0]), first.key("leases")];
    let port = nodes[0].port().to_string();
    let slots: Vec<String> = tagged
        .iter()
        .map(|key| {
            let output =
                Command::new("redis-cli").args(["-p", &port, "cluster", "keyslot", key]).output().expect("cli");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        })
        .collect();
    assert!(tagged.iter().all(|key| key.starts_with("tollgate:{tollgate}:")), "{tagged:?}");
    assert!(slots.iter().all(|slot| *slot == slots[0]), "one slot for every key: {slots:?}");
}
