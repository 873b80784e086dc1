//! Spend counters in both state backends: the embedded one keeps them across a restart in its ledger under
//! `state.path` (skipping a torn last line, dropping ended periods when it compacts), and the Redis one gives
//! the same values, shared between replicas, against a real `redis-server` on loopback.

use crate::common;

use std::path::Path;

use common::redis::RedisServer;
use tollgate::limits::memory::{Memory, LEDGER_FILE};
use tollgate::limits::redis::Redis;
use tollgate::limits::{Backend, SpendKey};

/// 2096 in ms: periods ending after it have not ended by the real clock `Memory::open` replays with.
const NOW: u64 = 4_000_000_000_000;
const DAY: u64 = 86_400_000;

fn key(name: &str, period_end_ms: u64) -> SpendKey {
    SpendKey { key: format!("spend:{name}"), period_end_ms }
}

/// Today's keys for one request by ann of team core.
fn today() -> Vec<SpendKey> {
    vec![key("user:ann:day", NOW + DAY), key("team:core:day", NOW + DAY), key("org:month", NOW + 30 * DAY)]
}

async fn add(backend: &dyn Backend, keys: &[SpendKey], delta: i64, now_ms: u64) -> Vec<i64> {
    backend.add_spend(keys, delta, now_ms).await.expect("state backend answers")
}

async fn spend(backend: &dyn Backend, keys: &[SpendKey], now_ms: u64) -> Vec<i64> {
    backend.spend(keys, now_ms).await.expect("state backend answers")
}

fn open(dir: &Path) -> Memory {
    Memory::open(dir).unwrap_or_else(|error| panic!("the embedded store opens: {error}"))
}

fn ledger(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(LEDGER_FILE)).expect("the ledger exists")
}

/// The sequence both backends must answer identically: reservations, settlements lower and higher, other
/// users, reads, a period that ends (reads 0, takes nothing) and keys never written.
async fn sequence(backend: &dyn Backend) -> Vec<Vec<i64>> {
    let keys = today();
    let bob = vec![key("user:bob:day", NOW + DAY), key("team:core:day", NOW + DAY), key("org:month", NOW + 30 * DAY)];
    let mut answers = vec![
        add(backend, &keys, 250_000, NOW).await,
        add(backend, &keys, -180_000, NOW + 1_000).await,
        add(backend, &bob, 1_000_000, NOW + 2_000).await,
        spend(backend, &keys, NOW + 3_000).await,
        add(backend, &keys[..1], -70_000, NOW + 4_000).await,
        add(backend, &keys[..1], -5, NOW + 4_000).await,
        spend(backend, &[keys[0].clone(), key("never", NOW + DAY)], NOW + 5_000).await,
    ];
    // The day ends: the day keys read 0 and take nothing; the month goes on.
    answers.push(spend(backend, &keys, NOW + DAY).await);
    answers.push(add(backend, &keys, 1, NOW + DAY).await);
    answers.push(spend(backend, &bob, NOW + DAY + 1).await);
    // Tomorrow's keys start at 0.
    let tomorrow = key("user:ann:day:2", NOW + 2 * DAY);
    answers.push(add(backend, &[tomorrow.clone(), keys[2].clone()], 10, NOW + DAY + 2).await);
    answers.push(spend(backend, &[tomorrow], NOW + DAY + 3).await);
    answers
}

const EXPECTED: [&[i64]; 12] = [
    &[250_000, 250_000, 250_000],
    &[70_000, 70_000, 70_000],
    &[1_000_000, 1_070_000, 1_070_000],
    &[70_000, 1_070_000, 1_070_000],
    &[0],
    &[-5],
    &[-5, 0],
    &[0, 0, 1_070_000],
    &[0, 0, 1_070_001],
    &[0, 0, 1_070_001],
    &[10, 1_070_011],
    &[10],
];

// ---- embedded --------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_adds_settles_and_ends_periods() {
    assert_eq!(sequence(&Memory::default()).await, EXPECTED);
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(sequence(&open(dir.path())).await, EXPECTED, "with a ledger, the same answers");
}

#[tokio::test]
async fn a_restart_keeps_spend() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("var/state");
    let keys = today();
    let memory = open(&state);
    assert!(state.is_dir(), "open creates the directory");
    add(&memory, &keys, 250_000, NOW).await;
    add(&memory, &keys[..2], -50_000, NOW).await;
    let before = spend(&memory, &keys, NOW).await;
    assert_eq!(before, vec![200_000, 200_000, 250_000]);
    drop(memory);

    let reopened = open(&state);
    assert_eq!(spend(&reopened, &keys, NOW).await, before);
    assert_eq!(add(&reopened, &keys, 1, NOW).await, vec![200_001, 200_001, 250_001]);
    drop(reopened);
    assert_eq!(spend(&open(&state), &keys, NOW).await, vec![200_001, 200_001, 250_001], "and again");
}

#[tokio::test]
async fn a_torn_last_line_is_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = today();
    let memory = open(dir.path());
    add(&memory, &keys, 400, NOW).await;
    add(&memory, &keys, 20, NOW).await;
    drop(memory);
    // A crash in the middle of the next append: half a line, no newline.
    let whole = ledger(dir.path());
    let torn = format!("{{\"delta\":9000,\"keys\":[{{\"key\":\"{}\",\"period_en", keys[0].key);
    std::fs::write(dir.path().join(LEDGER_FILE), format!("{whole}{torn}")).expect("tear the ledger");

    let reopened = open(dir.path());
    assert_eq!(spend(&reopened, &keys, NOW).await, vec![420, 420, 420]);
    assert!(!ledger(dir.path()).contains("period_en\""), "compaction dropped the torn line");
    assert!(!ledger(dir.path()).contains("9000"), "compaction dropped the torn line");
    assert_eq!(add(&reopened, &keys[..1], 1, NOW).await, vec![421]);
    drop(reopened);
    assert_eq!(spend(&open(dir.path()), &keys, NOW).await, vec![421, 420, 420]);
}

#[tokio::test]
async fn compaction_drops_ended_periods_and_shrinks_the_ledger() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A day of 2023 (ended by any real clock) and a day of 2096.
    let past = 1_700_000_000_000;
    let old = key("user:ann:day:2023", past + DAY);
    let live = key("user:ann:day:2096", NOW + DAY);
    let memory = open(dir.path());
    for _ in 0..50 {
        assert!(add(&memory, std::slice::from_ref(&old), 100, past).await[0] > 0);
        add(&memory, std::slice::from_ref(&live), 100, NOW).await;
    }
    drop(memory);
    let grown = ledger(dir.path());
    assert_eq!(grown.lines().count(), 100);

    let reopened = open(dir.path());
    let compacted = ledger(dir.path());
    assert!(compacted.len() < grown.len() / 50, "{} bytes, from {}", compacted.len(), grown.len());
    assert_eq!(compacted.lines().count(), 1, "{compacted}");
    assert!(compacted.contains(&live.key) && !compacted.contains(&old.key), "{compacted}");
    assert_eq!(spend(&reopened, &[old, live], past).await, vec![0, 5_000], "the ended period is gone");
}

#[test]
fn an_unusable_state_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write a file");
    let error = Memory::open(&file).expect_err("a file is not a directory");
    assert!(error.0.contains(&file.display().to_string()), "{error}");
}

#[tokio::test]
async fn the_gateway_keeps_its_store_under_state_path() {
    // The harness puts it in the gateway's temp dir, never in the repository's var/state.
    let gateway = common::TestGateway::start(&format!("auth: {{anonymous: dev}}\n{}", common::LOOPBACK_POLICY)).await;
    assert!(gateway.dir.path().join("state").join(LEDGER_FILE).is_file());
    assert_eq!(gateway.shared().config.load().state.path, gateway.dir.path().join("state"));

    // A state.path that cannot be a directory stops the start, naming it.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("taken");
    std::fs::write(&file, "").expect("write a file");
    let yaml =
        format!("auth: {{anonymous: dev}}\nstate: {{path: \"{}\"}}\n{}", file.display(), common::LOOPBACK_POLICY);
    let error = common::TestGateway::try_start(&yaml).await.err().expect("the gateway does not start");
    assert!(error.contains("state backend") && error.contains(&file.display().to_string()), "{error}");
}

#[tokio::test]
async fn a_second_gateway_on_the_same_state_path_is_refused() {
    // Two embedded ledgers on one directory would each count only their own spend: a budget spent twice.
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let yaml =
        format!("auth: {{anonymous: dev}}\nstate: {{path: \"{}\"}}\n{}", state.display(), common::LOOPBACK_POLICY);
    let mut first = common::TestGateway::start(&yaml).await;
    let error = common::TestGateway::try_start(&yaml).await.err().expect("the second gateway does not start");
    let ledger = state.join(LEDGER_FILE);
    let held = format!("the spend ledger {} is in use by process {}", ledger.display(), std::process::id());
    assert!(error.contains(&held) && error.contains("state.backend: redis"), "{error}");
    // The first one was not disturbed, and once it stops the directory is free again.
    first.shutdown().await;
    common::TestGateway::try_start(&yaml).await.expect("a restart on the same state path starts");
}

// ---- redis -----------------------------------------------------------------------------------------------

fn backend(server: &RedisServer) -> Redis {
    Redis::connect(&server.url()).expect("valid redis URL")
}

#[tokio::test]
async fn redis_gives_the_same_values_as_memory() {
    let server = RedisServer::start().await;
    assert_eq!(sequence(&backend(&server)).await, EXPECTED);
    assert_eq!(sequence(&Memory::default()).await, EXPECTED);
}

#[tokio::test]
async fn redis_keys_are_prefixed_and_expire_a_day_after_their_period() {
    let server = RedisServer::start().await;
    let keys = today();
    add(&backend(&server), &keys, 5, NOW).await;
    let client = redis::Client::open(server.url()).expect("valid URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    for key in &keys {
        let name = format!("tollgate:{}", key.key);
        let value: i64 = redis::cmd("GET").arg(&name).query_async(&mut connection).await.expect("GET");
        let expires: i64 = redis::cmd("PEXPIRETIME").arg(&name).query_async(&mut connection).await.expect("TTL");
        assert_eq!((value, expires), (5, (key.period_end_ms + DAY) as i64), "{name}");
    }
}

#[tokio::test]
async fn two_redis_backends_share_spend() {
    let server = RedisServer::start().await;
    let (first, second) = (backend(&server), backend(&server));
    let keys = today();
    assert_eq!(add(&first, &keys, 300, NOW).await, vec![300, 300, 300]);
    assert_eq!(add(&second, &keys[1..], 200, NOW).await, vec![500, 500]);
    assert_eq!(spend(&first, &keys, NOW).await, vec![300, 500, 500]);
    assert_eq!(spend(&second, &keys, NOW).await, vec![300, 500, 500]);

    // Adds from both at once lose nothing.
    let adds = |backend: &'static str| {
        let (backend, keys) = (if backend == "first" { &first } else { &second }, &keys);
        async move {
            for _ in 0..25 {
                backend.add_spend(keys, 10, NOW).await.expect("adds");
            }
        }
    };
    tokio::join!(adds("first"), adds("second"));
    assert_eq!(spend(&first, &keys, NOW).await, vec![800, 1_000, 1_000]);
}

#[tokio::test]
async fn a_stopped_redis_is_a_state_error() {
    let mut server = RedisServer::start().await;
    let redis = backend(&server);
    let keys = today();
    add(&redis, &keys, 1, NOW).await;
    server.stop().await;
    for error in [
        redis.add_spend(&keys, 1, NOW).await.expect_err("no Redis, no spend"),
        redis.spend(&keys, NOW).await.expect_err("no Redis, no spend"),
    ] {
        assert!(error.to_string().contains("state backend unavailable"), "{error}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{}", server.port())), "{error}");
    }
}
