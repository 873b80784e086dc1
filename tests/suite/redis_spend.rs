//! Spend settled while Redis is down is not lost: the gateway keeps the settlement and makes it once
//! `redis-server` is back, so the spend counter in Redis matches what the audit records billed.

use crate::common;

use std::time::{Duration, Instant};

use common::gateway::*;
use common::messages::{self, MessagesStub, MODEL};
use common::redis::RedisServer;
use common::TestGateway;

const ALICE: User = User { name: "alice", password: "alice-password", teams: &["backend"] };

/// Polls `attempt` (at most `within`, 50 ms apart) until it is true.
async fn until(within: Duration, mut attempt: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The team's daily spend counter in Redis, in micro-dollars.
async fn team_spend(redis: &RedisServer) -> i64 {
    let client = redis::Client::open(redis.url()).expect("redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect to redis-server");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("tollgate:spend:*team*backend*day*").query_async(&mut connection).await.expect("KEYS");
    assert_eq!(keys.len(), 1, "one daily counter of team backend: {keys:?}");
    redis::cmd("GET").arg(&keys[0]).query_async(&mut connection).await.expect("GET")
}

/// What the gateway's audit records billed, in micro-dollars.
async fn billed(gateway: &TestGateway) -> (i64, usize) {
    let records = gateway.audit().await;
    let costs: Vec<f64> = records.iter().filter_map(|record| record["cost_usd"].as_f64()).collect();
    ((costs.iter().sum::<f64>() * 1e6).round() as i64, costs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_that_fell_in_a_redis_outage_is_made_once_redis_is_back() {
    // Persisted like a production spend store: every write in the append-only file before it is answered.
    let persisted = ["--appendonly", "yes", "--appendfsync", "always"].map(String::from).to_vec();
    let mut redis = RedisServer::start_with(persisted, false).await;
    let stub = MessagesStub::start().await;
    let state = format!("state: {{backend: redis, redis_url: \"{}\", on_error: deny}}\n", redis.url());
    let yaml = format!(
        "auth:\n  anonymous: deny\n{}teams:\n  backend: {{budget: {{daily_usd: 100}}}}\npolicy: {{default: deny}}\n{}\
         routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n{PRICING}{state}",
        users_yaml(&[&ALICE]),
        upstreams_yaml(&[("stub", &stub, "sk-upstream")]),
    );
    // Today by the real clock: Redis expires a spend key a day after its period ends, by its own clock.
    let clock = common::TestClock::at("2026-11-28T22:00:00Z");
    clock.set(today_at(22));
    let gateway = start_gateway(&yaml, with_clock(clock)).await;
    let address = gateway.listener("gateway");

    let first = send(address, &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(first.status, 200, "{first:?}");

    // A stream reserves its estimate while Redis is up and is held by the stub; Redis dies; the stream then ends,
    // and its settlement (the estimate replaced by the usage) cannot reach Redis.
    let held_call = messages_call(&ALICE.api_key(), messages::HOLD, true);
    let held = tokio::spawn(async move { send(address, &held_call).await });
    assert!(until(Duration::from_secs(10), async || stub.requests().len() == 2).await, "the stream reached the stub");
    redis.stop().await;
    stub.release();
    let stream = held.await.expect("the held stream's task");
    assert_eq!(stream.status, 200, "{stream:?}");
    assert_eq!(gateway.metric("tollgate_state_spend_pending").await, 1.0, "the settlement waits for Redis");

    redis.restart().await;
    let settled =
        until(Duration::from_secs(10), async || gateway.metric("tollgate_state_spend_pending").await == 0.0).await;
    assert!(settled, "the settlement is made within seconds of Redis coming back");
    let (audited, records) = billed(&gateway).await;
    assert_eq!(records, 2, "both requests were billed");
    assert_eq!(team_spend(&redis).await, audited, "the spend in Redis is what the audit records billed");
    assert_eq!(gateway.metric("tollgate_state_spend_dropped_total").await, 0.0);

    // Sent again or not, a settlement counts once: one more request adds exactly its own cost.
    let third = send(address, &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(third.status, 200, "{third:?}");
    let (audited, records) = billed(&gateway).await;
    assert_eq!(records, 3);
    assert_eq!(team_spend(&redis).await, audited);
}
