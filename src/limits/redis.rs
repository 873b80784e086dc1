//! The shared backend: limit state in Redis (or Valkey), so N replicas enforce one limit between them.
//!
//! Every operation is one Lua script (sent as `EVALSHA`, loaded again with `EVAL`'s script when the server
//! forgot it, e.g. after a restart) over all the keys it touches, so it is atomic across replicas: either
//! every bucket admits and each takes one request, or none does. The rate script is `gcra::step` line for
//! line, with the interval and tolerance computed here in integer microseconds, so the shared backend admits
//! exactly what the embedded one would. Keys are `tollgate:` followed by the bucket's or slot's key; a rate
//! key expires once its TAT has passed (it would admit a full burst then anyway), a slot key an hour after
//! the last `enter` on it, so the slots of a replica that died holding them are given back eventually.
//! A spend key (`tollgate:` + the spend key) is an integer counter of micro-dollars, expiring a day after its
//! period ends; counters are read with `MGET`, and a key whose period has ended reads 0 without asking.
//!
//! One multiplexed connection per backend, reconnected by `redis`'s `ConnectionManager` after it breaks;
//! every command is bounded by a timeout, so a dead or unreachable Redis is a quick `StateError`, never a
//! request that hangs.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::backend::{Admission, Backend, BoxFuture, Bucket, SharedServer, Slot, SpendKey, StateError};

/// What every key starts with.
pub const KEY_PREFIX: &str = "tollgate:";

/// Added to a rate key's lifetime beyond its TAT, so clocks a little apart between replicas lose nothing.
const RATE_TTL_MARGIN_MS: u64 = 1_000;

/// Added to a spend key's lifetime beyond its period's end: replicas' clocks a little apart, and a request
/// settled just after the period ended, still find it.
const SPEND_TTL_MARGIN_MS: u64 = 24 * 60 * 60 * 1000;

/// One GCRA step over every bucket, all or nothing.
///
/// `ARGV[1]` is now (µs); bucket `i` has its interval at `ARGV[2i]` and its tolerance at `ARGV[2i+1]` (µs).
/// Returns `{-1, 0}` when admitted, else `{index, retry_after_us}` of the first bucket that refuses.
/// Lua numbers are doubles: exact for integers below 2^53 µs (285 years since the epoch).
const ACQUIRE_LUA: &str = r#"
local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2 * #KEYS + 2])
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  local new_tat = math.max(tat, now) + interval
  local allowed_until = now + tolerance
  if new_tat > allowed_until then
    return {i - 1, new_tat - allowed_until}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  local ttl_ms = math.ceil((tats[i] - now) / 1000) + margin
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl_ms)
end
return {-1, 0}
"#;

/// Takes a slot in every key, or none: `ARGV[i]` is key `i`'s maximum, `ARGV[#KEYS + 1]` the TTL (ms) each
/// key gets on a successful enter. Returns the index of the first full key, or -1.
const ENTER_LUA: &str = r#"
local ttl_ms = tonumber(ARGV[#KEYS + 1])
for i = 1, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if count >= tonumber(ARGV[i]) then
    return i - 1
  end
end
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ttl_ms)
end
return -1
"#;

/// Gives a slot back in every key, never below zero; a key that reaches zero is deleted.
const LEAVE_LUA: &str = r#"
for i = 1, #KEYS do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if count <= 1 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('DECR', KEYS[i])
  end
end
return 0
"#;

/// Adds `ARGV[1]` (micro-dollars, may be negative) to every key and makes key `i` expire at `ARGV[i + 1]` (ms
/// since the epoch); returns the new values. `INCRBY` works in 64-bit integers; the values come back through
/// Lua numbers, exact below 2^53 micro-dollars (nine billion dollars).
const ADD_SPEND_LUA: &str = r#"
local values = {}
for i = 1, #KEYS do
  values[i] = redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[i + 1])
end
return values
"#;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
static ENTER: LazyLock<Script> = LazyLock::new(|| Script::new(ENTER_LUA));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(LEAVE_LUA));
static ADD_SPEND: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_SPEND_LUA));

/// How the Redis backend talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// The longest any one operation may take, connecting included; past it the operation is a `StateError`.
    pub timeout: Duration,
    /// How long a concurrency key lives after the last successful `enter` on it. Bounds how long the slots
    /// of a replica that died while holding them are counted (see docs/scaling.md); should be longer than
    /// the longest tunnel.
    pub slot_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(1), slot_ttl: Duration::from_secs(3600) }
    }
}

/// Limit state shared through one Redis (or Valkey) server.
pub struct Redis {
    client: redis::Client,
    /// Created on first use, inside the runtime; reconnects by itself after the connection breaks.
    manager: OnceLock<ConnectionManager>,
    options: RedisOptions,
    /// The URL with any password masked, for logs and errors.
    shown: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.shown).field("options", &self.options).finish()
    }
}

impl Redis {
    /// A backend for `url` (`redis://[user:password@]host[:port][/db]`) with the default options. Checks
    /// the URL only: the connection is made by the first operation, and an unreachable server is that
    /// operation's `StateError`.
    pub fn connect(url: &str) -> Result<Redis, StateError> {
        Self::connect_with(url, RedisOptions::default())
    }

    /// A backend for `url` with `options`.
    pub fn connect_with(url: &str, options: RedisOptions) -> Result<Redis, StateError> {
        let shown = mask_password(url);
        let client = redis::Client::open(url)
            .map_err(|error| StateError(format!("redis URL {shown} is not usable: {error}")))?;
        Ok(Redis { client, manager: OnceLock::new(), options, shown })
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// One round trip (`PING`), e.g. to report an unreachable server at start-up.
    pub async fn ping(&self) -> Result<(), StateError> {
        let mut connection = self.connection()?;
        let pong = async move { redis::cmd("PING").query_async::<String>(&mut connection).await };
        self.bounded(pong).await.map(drop)
    }

    fn connection(&self) -> Result<ConnectionManager, StateError> {
        if let Some(manager) = self.manager.get() {
            return Ok(manager.clone());
        }
        // No retries inside one attempt: while Redis is down each operation fails at once (the next one
        // tries to connect again) rather than waiting out a backoff that would hold requests up.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.options.timeout))
            .set_response_timeout(Some(self.options.timeout));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|error| StateError(format!("redis at {}: {error}", self.shown)))?;
        // Two first operations racing each make one; the loser's is dropped unused.
        Ok(self.manager.get_or_init(|| manager).clone())
    }

    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.options.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StateError(format!("redis at {}: {error}", self.shown))),
            Err(_) => {
                Err(StateError(format!("redis at {} did not answer within {:?}", self.shown, self.options.timeout)))
            }
        }
    }

    async fn run<T: FromRedisValue>(&self, invocation: ScriptInvocation<'_>) -> Result<T, StateError> {
        let mut connection = self.connection()?;
        self.bounded(async move { invocation.invoke_async(&mut connection).await }).await
    }
}

impl SharedServer for Redis {
    fn eval<'a>(
        &'a self,
        script: &'a Script,
        keys: &'a [String],
        args: &'a [String],
    ) -> BoxFuture<'a, Result<redis::Value, StateError>> {
        Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            for name in keys {
                invocation.key(name);
            }
            for arg in args {
                invocation.arg(arg);
            }
            self.run(invocation).await
        })
    }

    fn pipeline<'a>(&'a self, pipeline: &'a redis::Pipeline) -> BoxFuture<'a, Result<redis::Value, StateError>> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            self.bounded(async move { pipeline.query_async(&mut connection).await }).await
        })
    }
}

/// `tollgate:` + the key.
pub fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..].find('/').map_or(url.len(), |at| scheme_end + at);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{}{masked}{}", &url[..scheme_end], &url[scheme_end + at..])
        }
        None => url.to_owned(),
    }
}

/// The keys whose period has not ended at `now_ms`, with their index among `keys`.
fn live(keys: &[SpendKey], now_ms: u64) -> Vec<(usize, &SpendKey)> {
    keys.iter().enumerate().filter(|(_, key)| !key.has_ended(now_ms)).collect()
}

/// Puts `got` (one value per live key) in its place among `len` values; ended keys stay 0.
fn spread(len: usize, live: &[(usize, &SpendKey)], got: Vec<i64>) -> Result<Vec<i64>, StateError> {
    if got.len() != live.len() {
        return Err(StateError(format!("redis answered {} spend values for {} keys", got.len(), live.len())));
    }
    let mut values = vec![0; len];
    for ((index, _), value) in live.iter().zip(got) {
        values[*index] = value;
    }
    Ok(values)
}

fn index(value: i64, len: usize) -> Result<Option<usize>, StateError> {
    match usize::try_from(value) {
        Ok(index) if index < len => Ok(Some(index)),
        Ok(_) => Err(StateError(format!("redis script answered index {value} for {len} keys"))),
        Err(_) => Ok(None),
    }
}

impl Backend for Redis {
    fn acquire<'a>(&'a self, buckets: &'a [Bucket], now_us: u64) -> BoxFuture<'a, Result<Admission, StateError>> {
        Box::pin(async move {
            if buckets.is_empty() {
                return Ok(Admission::Admit);
            }
            let mut invocation = ACQUIRE.prepare_invoke();
            invocation.arg(now_us);
            for bucket in buckets {
                invocation.key(key(&bucket.key)).arg(bucket.rate.interval_us()).arg(bucket.rate.tolerance_us());
            }
            invocation.arg(RATE_TTL_MARGIN_MS);
            let (refused, retry_after_us): (i64, i64) = self.run(invocation).await?;
            Ok(match index(refused, buckets.len())? {
                None => Admission::Admit,
                Some(bucket) => {
                    Admission::Limited { bucket, retry_after_us: u64::try_from(retry_after_us).unwrap_or(0) }
                }
            })
        })
    }

    fn enter<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>> {
        Box::pin(async move {
            if slots.is_empty() {
                return Ok(None);
            }
            let mut invocation = ENTER.prepare_invoke();
            for slot in slots {
                invocation.key(key(&slot.key)).arg(slot.max);
            }
            invocation.arg(u64::try_from(self.options.slot_ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            let full: i64 = self.run(invocation).await?;
            index(full, slots.len())
        })
    }

    fn leave<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            if slots.is_empty() {
                return Ok(());
            }
            let mut invocation = LEAVE.prepare_invoke();
            for slot in slots {
                invocation.key(key(&slot.key));
            }
            let _: i64 = self.run(invocation).await?;
            Ok(())
        })
    }

    fn add_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(async move {
            let live = live(keys, now_ms);
            if live.is_empty() {
                return Ok(vec![0; keys.len()]);
            }
            let mut invocation = ADD_SPEND.prepare_invoke();
            invocation.arg(delta_micro_usd);
            for (_, spend) in &live {
                invocation.key(key(&spend.key)).arg(spend.period_end_ms.saturating_add(SPEND_TTL_MARGIN_MS));
            }
            let got: Vec<i64> = self.run(invocation).await?;
            spread(keys.len(), &live, got)
        })
    }

    fn spend<'a>(&'a self, keys: &'a [SpendKey], now_ms: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(async move {
            let live = live(keys, now_ms);
            if live.is_empty() {
                return Ok(vec![0; keys.len()]);
            }
            let names: Vec<String> = live.iter().map(|(_, spend)| key(&spend.key)).collect();
            let mut connection = self.connection()?;
            let got: Vec<Option<i64>> =
                self.bounded(async move { redis::cmd("MGET").arg(&names).query_async(&mut connection).await }).await?;
            spread(keys.len(), &live, got.into_iter().map(|value| value.unwrap_or(0)).collect())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn shared_server(&self) -> Option<&dyn SharedServer> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(mask_password("redis://:s3cret@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(mask_password("redis://app:s3cret@redis:6379/2"), "redis://app:***@redis:6379/2");
        assert_eq!(mask_password("redis://token@redis"), "redis://***@redis");
        assert_eq!(mask_password("redis://a:b@c@redis/1"), "redis://a:***@redis/1");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let error = Redis::connect("http://user:s3cret@example").expect_err("not a redis URL");
        assert!(!error.0.contains("s3cret"), "{error}");
        assert!(error.0.contains("user:***"), "{error}");
    }

    #[test]
    fn script_indexes_are_checked() {
        assert_eq!(index(-1, 2).ok(), Some(None));
        assert_eq!(index(1, 2).ok(), Some(Some(1)));
        assert!(index(2, 2).is_err());
    }

    #[test]
    fn ended_spend_keys_read_zero_in_place() {
        let keys = [
            SpendKey { key: "spend:a".into(), period_end_ms: 100 },
            SpendKey { key: "spend:b".into(), period_end_ms: 200 },
        ];
        let live = live(&keys, 150);
        assert_eq!(live.len(), 1);
        assert_eq!(spread(2, &live, vec![7]).ok(), Some(vec![0, 7]));
        assert!(spread(2, &live, vec![7, 8]).is_err());
    }

    #[test]
    fn keys_are_prefixed() {
        assert_eq!(key("rate:org"), "tollgate:rate:org");
    }

    #[test]
    fn connecting_is_lazy() {
        // Nothing listens on port 1; the URL is valid, so construction succeeds without a runtime.
        let backend = Redis::connect("redis://127.0.0.1:1/").expect("valid URL");
        assert_eq!(backend.name(), "redis");
        assert!(format!("{backend:?}").contains("127.0.0.1:1"));
    }
}
