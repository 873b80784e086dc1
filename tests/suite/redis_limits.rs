//! The Redis state backend against a real `redis-server` on loopback: it admits exactly what the embedded
//! backend admits, two replicas share one limit, and a dead Redis is a quick `StateError`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use tollgate::limits::memory::Memory;
use tollgate::limits::redis::{Redis, RedisOptions};
use tollgate::limits::{Admission, Backend, Bucket, Plan, Rate, Scope, Slot, Verdict};

/// 2025-11-28 in microseconds: 16 digits, as real clocks give; a TAT written with Lua's default number format
/// (14 significant digits) would lose its last microseconds here.
const T0: u64 = 1_764_300_000_000_000;

fn bucket(key: &str, per_minute: u32, burst: u32) -> Bucket {
    Bucket { key: format!("rate:{key}"), scope: Scope::Org, rate: Rate { per_minute, burst } }
}

fn slot(key: &str, max: u32) -> Slot {
    Slot { key: format!("conc:{key}"), scope: Scope::User, max }
}

fn backend(server: &RedisServer) -> Redis {
    Redis::connect(&server.url()).expect("valid redis URL")
}

async fn acquire(backend: &dyn Backend, buckets: &[Bucket], now_us: u64) -> Admission {
    backend.acquire(buckets, now_us).await.expect("state backend answers")
}

async fn enter(backend: &dyn Backend, slots: &[Slot]) -> Option<usize> {
    backend.enter(slots).await.expect("state backend answers")
}

async fn leave(backend: &dyn Backend, slots: &[Slot]) {
    backend.leave(slots).await.expect("state backend answers")
}

/// Runs the same `acquire` on both backends and checks they agree.
async fn both(memory: &Memory, redis: &Redis, buckets: &[Bucket], now_us: u64) -> Admission {
    let expected = acquire(memory, buckets, now_us).await;
    let got = acquire(redis, buckets, now_us).await;
    assert_eq!(got, expected, "redis and memory disagree at now={now_us} over {buckets:?}");
    got
}

#[tokio::test]
async fn burst_boundary_and_refill_match_the_embedded_backend() {
    let server = RedisServer::start().await;
    let (memory, redis) = (Memory::default(), backend(&server));
    let org = [bucket("org", 60, 3)];

    for _ in 0..3 {
        assert_eq!(both(&memory, &redis, &org, T0).await, Admission::Admit);
    }
    let limited = |retry_after_us| Admission::Limited { bucket: 0, retry_after_us };
    assert_eq!(both(&memory, &redis, &org, T0).await, limited(1_000_000));
    // One microsecond before the next request is due, and exactly at it.
    assert_eq!(both(&memory, &redis, &org, T0 + 999_999).await, limited(1));
    assert_eq!(both(&memory, &redis, &org, T0 + 1_000_000).await, Admission::Admit);
    assert_eq!(both(&memory, &redis, &org, T0 + 1_000_000).await, limited(1_000_000));
    assert_eq!(both(&memory, &redis, &org, T0 + 1_000_001).await, limited(999_999));

    // An hour idle refills to the burst, not beyond.
    let later = T0 + 3_600_000_000;
    for _ in 0..3 {
        assert_eq!(both(&memory, &redis, &org, later).await, Admission::Admit);
    }
    assert_eq!(both(&memory, &redis, &org, later).await, limited(1_000_000));

    // A rate whose interval does not divide evenly (60 s / 7).
    let odd = [bucket("odd", 7, 2)];
    let mut admitted = 0;
    for step in 0..40u64 {
        if both(&memory, &redis, &odd, T0 + step * 1_234_567).await == Admission::Admit {
            admitted += 1;
        }
    }
    assert!(admitted > 2, "the odd rate refills: {admitted}");
}

/// A fixed pseudo-random walk (no seed from the clock, so a failure replays) of times and bucket subsets
/// over several rates: every answer, admissions and retry-after alike, is the embedded backend's.
#[tokio::test]
async fn a_long_random_sequence_matches_the_embedded_backend() {
    let server = RedisServer::start().await;
    let (memory, redis) = (Memory::default(), backend(&server));
    let all = [bucket("user:ann", 30, 2), bucket("team:core", 120, 5), bucket("org", 600, 20), bucket("odd", 7, 3)];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut now = T0;
    let (mut admits, mut limits) = (0, 0);
    for _ in 0..600 {
        now += next() % 400_000;
        let chosen: Vec<Bucket> = all.iter().filter(|_| next() % 2 == 0).cloned().collect();
        if chosen.is_empty() {
            continue;
        }
        match both(&memory, &redis, &chosen, now).await {
            Admission::Admit => admits += 1,
            Admission::Limited { .. } => limits += 1,
        }
    }
    println!("random walk: {admits} admitted, {limits} limited, identical on both backends");
    assert!(admits > 50 && limits > 50, "the walk exercises both answers: {admits} admitted, {limits} limited");
}

#[tokio::test]
async fn a_refused_bucket_takes_nothing_from_the_others() {
    let server = RedisServer::start().await;
    let (memory, redis) = (Memory::default(), backend(&server));
    let team = bucket("team:core", 60, 5);
    let user = bucket("user:ann", 60, 1);
    let both_buckets = [team.clone(), user];

    assert_eq!(both(&memory, &redis, &both_buckets, T0).await, Admission::Admit);
    for _ in 0..3 {
        // The user's bucket (index 1) refuses; the team's must not be charged.
        assert!(matches!(both(&memory, &redis, &both_buckets, T0).await, Admission::Limited { bucket: 1, .. }));
    }
    // The team bucket still has 4 of its 5.
    for _ in 0..4 {
        assert_eq!(both(&memory, &redis, std::slice::from_ref(&team), T0).await, Admission::Admit);
    }
    assert!(matches!(
        both(&memory, &redis, std::slice::from_ref(&team), T0).await,
        Admission::Limited { bucket: 0, .. }
    ));
}

#[tokio::test]
async fn concurrency_caps_match_the_embedded_backend() {
    let server = RedisServer::start().await;
    let (memory, redis) = (Memory::default(), backend(&server));
    let backends: [&dyn Backend; 2] = [&memory, &redis];
    for backend in backends {
        let user = slot("user:ann", 2);
        let org = slot("org", 3);
        let both_slots = [user.clone(), org.clone()];
        assert_eq!(enter(backend, &both_slots).await, None);
        assert_eq!(enter(backend, &both_slots).await, None);
        // The user is full (index 0); the org must not be charged for the refusal.
        assert_eq!(enter(backend, &both_slots).await, Some(0), "{}", backend.name());
        assert_eq!(enter(backend, std::slice::from_ref(&org)).await, None);
        assert_eq!(enter(backend, &both_slots).await, Some(0));
        assert_eq!(enter(backend, std::slice::from_ref(&org)).await, Some(0));
        leave(backend, &both_slots).await;
        // The org is full again before the user: index 1.
        assert_eq!(enter(backend, std::slice::from_ref(&org)).await, None);
        assert_eq!(enter(backend, &both_slots).await, Some(1), "{}", backend.name());
        // Leaving more than was entered never goes below zero.
        for _ in 0..5 {
            leave(backend, &both_slots).await;
        }
        assert_eq!(enter(backend, &both_slots).await, None);
        assert_eq!(enter(backend, &both_slots).await, None);
        assert_eq!(enter(backend, &both_slots).await, Some(0));
    }
}

#[tokio::test]
async fn keys_are_prefixed_and_expire() {
    let server = RedisServer::start().await;
    let redis = backend(&server);
    let rate = bucket("org", 60, 10);
    let cap = slot("user:ann", 4);
    assert_eq!(acquire(&redis, std::slice::from_ref(&rate), T0).await, Admission::Admit);
    assert_eq!(enter(&redis, std::slice::from_ref(&cap)).await, None);

    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.expect("KEYS");
    keys.sort();
    assert_eq!(keys, ["tollgate:leases", "tollgate:rate:org", "tollgate:slots:user:ann"]);
    let checker = connection.clone();
    let pttl = |key: &'static str| {
        let mut connection = checker.clone();
        async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut connection).await.expect("PTTL") }
    };
    // The TAT is one interval (1 s) past now: the key lives that long plus the margin, never past the burst.
    let rate_ttl = pttl("tollgate:rate:org").await;
    assert!(rate_ttl > 0 && rate_ttl <= 2_000, "rate key TTL {rate_ttl} ms");
    let slot_ttl = pttl("tollgate:slots:user:ann").await;
    assert!(slot_ttl > 3_000_000 && slot_ttl <= 3_600_000, "slot key TTL {slot_ttl} ms");
    let tat: String = redis::cmd("GET").arg("tollgate:rate:org").query_async(&mut connection).await.expect("GET");
    assert_eq!(tat, (T0 + 1_000_000).to_string(), "the TAT is stored exactly, in microseconds");
    // The slot is this replica's field, counted while its lease (5 s by the server's clock) runs.
    let held: Vec<(String, u32)> =
        redis::cmd("HGETALL").arg("tollgate:slots:user:ann").query_async(&mut connection).await.expect("HGETALL");
    assert_eq!(held, [(redis.replica().to_owned(), 1)]);
    let leases: Vec<(String, u64)> =
        redis::cmd("HGETALL").arg("tollgate:leases").query_async(&mut connection).await.expect("HGETALL");
    let (time, _): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await.expect("TIME");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].0, redis.replica());
    assert!(leases[0].1 > time * 1000 && leases[0].1 <= (time + 6) * 1000, "lease {leases:?} at {time}");

    // The last slot given back deletes the key.
    leave(&redis, std::slice::from_ref(&cap)).await;
    assert_eq!(pttl("tollgate:slots:user:ann").await, -2, "no key left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_burst() {
    let server = RedisServer::start().await;
    let (first, second) = (backend(&server), backend(&server));
    let org = [bucket("org", 10, 10)];

    // Interleaved, one instant: exactly the burst between them.
    let mut admitted = [0, 0];
    for round in 0..15 {
        for (which, replica) in [&first, &second].into_iter().enumerate() {
            if acquire(replica, &org, T0 + round).await == Admission::Admit {
                admitted[which] += 1;
            }
        }
    }
    println!("interleaved: first admitted {}, second admitted {}", admitted[0], admitted[1]);
    assert_eq!(admitted[0] + admitted[1], 10, "together they admit the burst, not twice it");
    assert!(admitted[0] > 0 && admitted[1] > 0);

    // Racing: on two threads, four tasks (two per replica) each make 20 calls at one instant.
    let org: Arc<[Bucket]> = Arc::new([bucket("org:racing", 25, 25)]);
    let (first, second) = (Arc::new(first), Arc::new(second));
    let mut tasks = tokio::task::JoinSet::new();
    for (which, replica) in [&first, &second, &first, &second].into_iter().enumerate() {
        let (replica, org) = (replica.clone(), org.clone());
        tasks.spawn(async move {
            let mut admitted = 0;
            for _ in 0..20 {
                if acquire(&*replica, &org, T0).await == Admission::Admit {
                    admitted += 1;
                }
            }
            (which % 2, admitted)
        });
    }
    let mut admitted = [0, 0];
    while let Some(done) = tasks.join_next().await {
        let (which, count) = done.expect("task finished");
        admitted[which] += count;
    }
    println!("racing: first admitted {}, second admitted {}", admitted[0], admitted[1]);
    assert_eq!(admitted[0] + admitted[1], 25, "80 racing calls, a burst of 25: exactly 25 admitted");

    // Concurrency slots are shared too.
    let cap = [slot("org", 3)];
    assert_eq!(enter(&*first, &cap).await, None);
    assert_eq!(enter(&*first, &cap).await, None);
    assert_eq!(enter(&*second, &cap).await, None);
    assert_eq!(enter(&*second, &cap).await, Some(0));
    assert_eq!(enter(&*first, &cap).await, Some(0));
    leave(&*first, &cap).await;
    assert_eq!(enter(&*second, &cap).await, None);
}

#[tokio::test]
async fn a_dead_redis_is_an_error_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start().await;
    let redis = backend(&server);
    let org = [bucket("org", 60, 2)];
    let cap = [slot("org", 2)];
    assert_eq!(acquire(&redis, &org, T0).await, Admission::Admit);
    assert_eq!(enter(&redis, &cap).await, None);

    server.stop().await;
    for _ in 0..3 {
        let error = redis.acquire(&org, T0).await.expect_err("no Redis, no admission");
        assert!(error.to_string().contains("state backend unavailable"), "{error}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{}", server.port())), "{error}");
    }
    assert!(redis.enter(&cap).await.is_err());
    assert!(redis.leave(&cap).await.is_err());
    assert!(redis.ping().await.is_err());

    // Back, empty (nothing persisted) and without the scripts loaded: the connection and the scripts come
    // back by themselves. Attempts that still find the broken connection fail at once.
    server.restart().await;
    let mut answer = Err(None);
    for _ in 0..5 {
        match redis.acquire(&org, T0).await {
            Ok(admission) => {
                answer = Ok(admission);
                break;
            }
            Err(error) => answer = Err(Some(error)),
        }
    }
    assert_eq!(answer.expect("the backend reconnects"), Admission::Admit);
    assert_eq!(acquire(&redis, &org, T0).await, Admission::Admit, "the burst starts over on an empty server");
    assert!(matches!(acquire(&redis, &org, T0).await, Admission::Limited { .. }));
}

#[tokio::test]
async fn a_redis_that_never_answers_times_out() {
    // Accepts connections and reads, never writes: a hung server.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let options = RedisOptions { timeout: Duration::from_millis(300), ..RedisOptions::default() };
    let redis = Redis::connect_with(&format!("redis://{address}/"), options).expect("valid URL");
    let org = [bucket("org", 60, 2)];
    // The outer bound only keeps a broken build from hanging the suite; the backend's own timeout answers.
    let answer = tokio::time::timeout(Duration::from_secs(30), redis.acquire(&org, T0)).await;
    let error = answer.expect("the backend gives up by itself").expect_err("no answer, no admission");
    assert!(error.to_string().contains("state backend unavailable"), "{error}");
    accepting.abort();
}

#[test]
fn a_bad_url_is_a_state_error() {
    assert!(Redis::connect("not a url").is_err());
    assert!(Redis::connect("redis://127.0.0.1:6379/").is_ok());
}

// Gateway level: two in-process tollgates sharing one redis-server, as two replicas behind a load balancer.

fn replica_yaml(redis_url: &str, rpm: u32, on_error: &str) -> String {
    format!(
        "auth: {{anonymous: dev}}\n{}limits:\n  org: {{rpm: {rpm}}}\nstate:\n  backend: redis\n  redis_url: \"{redis_url}\"\n  on_error: {on_error}\n",
        common::LOOPBACK_POLICY
    )
}

fn absolute_get(origin: &common::Origin, path: &str) -> Vec<u8> {
    format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.url(path), origin.address).into_bytes()
}

#[tokio::test]
async fn two_gateways_share_one_org_limit() {
    let server = RedisServer::start().await;
    let origin = common::Origin::start().await;
    // 4 a minute: one request every 15 s after the burst of 4, far longer than this test runs.
    let rpm = 4;
    let mut first = common::TestGateway::start(&replica_yaml(&server.url(), rpm, "deny")).await;
    let mut second = common::TestGateway::start(&replica_yaml(&server.url(), rpm, "deny")).await;

    let mut passed = [0, 0];
    let mut limited = 0;
    for n in 0..12 {
        let (which, gateway) = if n % 2 == 0 { (0, &first) } else { (1, &second) };
        let response = common::exchange(gateway.proxy, &absolute_get(&origin, &format!("/{n}"))).await;
        match response.status {
            200 => passed[which] += 1,
            429 => {
                limited += 1;
                assert_eq!(response.json()["error"]["type"], "rate_limited", "{response:?}");
                let retry: u64 =
                    response.header("retry-after").expect("429 carries retry-after").parse().expect("secs");
                assert!((1..=15).contains(&retry), "retry-after {retry}");
            }
            other => panic!("unexpected {other}: {response:?}"),
        }
    }
    println!("gateways: first passed {}, second passed {}, {limited} limited", passed[0], passed[1]);
    assert_eq!(passed[0] + passed[1], rpm as usize, "two replicas admit the org's {rpm}, not twice it");
    assert!(passed[0] > 0 && passed[1] > 0, "both replicas served");
    assert_eq!(limited, 12 - rpm as usize);
    assert_eq!(origin.request_heads().len(), rpm as usize, "the origin saw only the admitted requests");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_dead_redis_refuses_with_deny_and_passes_with_allow() {
    let mut server = RedisServer::start().await;
    let origin = common::Origin::start().await;
    let mut deny = common::TestGateway::start(&replica_yaml(&server.url(), 600, "deny")).await;
    let mut allow = common::TestGateway::start(&replica_yaml(&server.url(), 600, "allow")).await;
    assert_eq!(common::exchange(deny.proxy, &absolute_get(&origin, "/up")).await.status, 200);
    assert_eq!(common::exchange(allow.proxy, &absolute_get(&origin, "/up")).await.status, 200);

    server.stop().await;
    // 600 a minute is lent in blocks of 9 (docs/scaling.md, "Credits"): what the deny replica was lent before
    // Redis went away (counted there) may still admit, at most a block; then it refuses.
    let mut lent = 0;
    let refused = loop {
        let response = common::exchange(deny.proxy, &absolute_get(&origin, &format!("/lent-{lent}"))).await;
        if response.status != 200 || lent > 9 {
            break response;
        }
        lent += 1;
    };
    println!("{lent} admitted from the credit after redis stopped");
    assert_eq!(refused.status, 503, "redis down, on_error: deny, after {lent} from the credit: {refused:?}");
    assert_eq!(refused.json()["error"]["type"], "state_unavailable", "{refused:?}");
    let message = refused.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("state backend") && message.contains("redis"), "{message}");
    println!("503 message: {message}");
    // The allow replica passes from its credit, then without limits, counting the state error.
    let sample = "tollgate_state_errors_total{backend=\"redis\"}";
    let mut sent = 0;
    while sent <= 10 {
        let passed = common::exchange(allow.proxy, &absolute_get(&origin, &format!("/down-{sent}"))).await;
        assert_eq!(passed.status, 200, "redis down, on_error: allow: {passed:?}");
        sent += 1;
        if allow.metric(sample).await >= 1.0 {
            break;
        }
    }
    assert!(deny.metric(sample).await >= 1.0);
    assert!(allow.metric(sample).await >= 1.0, "a state error counted within a block of requests ({sent} sent)");
    let paths = origin.request_heads();
    assert_eq!(
        paths.iter().filter(|head| head.starts_with("GET /down")).count(),
        sent,
        "the allow replica forwarded all, the deny replica none but its credit's"
    );
    deny.shutdown().await;
    allow.shutdown().await;
}

/// The script calls `server` has run (`EVALSHA` and `EVAL`).
async fn script_calls(server: &RedisServer) -> u64 {
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.expect("INFO");
    ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
        .iter()
        .filter_map(|field| stats.split(field).nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// How many of `attempts` admissions of `plan` at `now_us`, alternating between the replicas, were admitted.
async fn admit_alternately(replicas: [&Redis; 2], plan: &Arc<Plan>, now_us: u64, attempts: usize) -> usize {
    let mut admitted = 0;
    for attempt in 0..attempts {
        let verdict = replicas[attempt % 2].admit(plan, now_us).await.expect("state backend answers");
        admitted += usize::from(verdict == Verdict::Admit);
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lending_a_large_rate_admit_its_burst_and_no_more() {
    let server = RedisServer::start().await;
    let (first, second) = (backend(&server), backend(&server));
    // A burst of 4096 is lent in blocks of 64, while at least half of it is left.
    let plan = Arc::new(Plan::of(vec![bucket("org:lent", 4096, 4096)], Vec::new()));
    let calls = script_calls(&server).await;
    let early = admit_alternately([&first, &second], &plan, T0, 1600).await;
    let used = script_calls(&server).await - calls;
    println!("first 1600 admissions: {early} admitted in {used} script calls");
    assert_eq!(early, 1600, "the first half of the burst admits everything");
    assert!(used < 200, "lent blocks admit most requests without a call: {used} calls for 1600 admissions");
    // Past half the burst nothing more is lent: the rest is admitted one request at a time, exactly.
    let late = admit_alternately([&first, &second], &plan, T0, 6000).await;
    println!("then {late} more of 6000 attempts admitted");
    assert!(early + late <= 4096, "two replicas never admit more than the burst: {}", early + late);
    assert!(early + late >= 4096 - 2 * 64, "at most a block per replica is held back: {}", early + late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lending_slots_never_hold_more_than_the_cap_and_give_the_spare_back() {
    let server = RedisServer::start().await;
    let (first, second) = (backend(&server), backend(&server));
    // A cap of 512 is lent in blocks of 8, while the key is at most half full.
    let plan = Arc::new(Plan::of(Vec::new(), vec![slot("org:lent", 512)]));
    let admitted = admit_alternately([&first, &second], &plan, 0, 700).await;
    println!("{admitted} of 700 held at once");
    assert!(admitted <= 512, "two replicas never hold more than the cap: {admitted}");
    assert!(admitted >= 512 - 2 * 8, "at most a block per replica is held back: {admitted}");
    for release in 0..admitted {
        let replica = if release % 2 == 0 { &first } else { &second };
        if let Err(plan) = replica.release_later(plan.clone()) {
            replica.leave(&plan.slots).await.expect("state backend answers");
        }
    }
    // Releases queued, spare slots in credits: within a credit's life (100 ms) and a sweep, all are back.
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let mut held = Vec::new();
    for _ in 0..100 {
        held =
            redis::cmd("HGETALL").arg("tollgate:slots:org:lent").query_async(&mut connection).await.expect("HGETALL");
        if held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: Vec<(String, u32)> = held;
    assert!(held.is_empty(), "every slot and every spare slot given back: {held:?}");
}
