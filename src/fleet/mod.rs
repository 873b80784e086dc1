//! The fleet inventory: for each user, the clients seen (client and version from `User-Agent`), the sessions seen,
//! first and last seen, and the managed settings and policy limits last delivered — so an administrator can tell
//! whether every client runs the current policy (`tollgate fleet`, `GET /admin/fleet`, `tollgate_clients`,
//! `tollgate_managed_settings_current_ratio`).
//!
//! Recorded from every identified model request (`seen`) and every settings delivery (`delivered`) without a round
//! trip on the request path: a sighting goes into a small pending batch under a lock, and a user and client already
//! written in the last `WRITE_EVERY` with the same session is not even that. The batch is written to the store
//! (`store.rs`: this process's memory, or Redis shared by the replicas) every `FLUSH_EVERY`, before every read, and
//! at shutdown. The store is bounded: `state.fleet_max_users` users (the least recently seen go first), at most
//! `MAX_CLIENTS` clients per user (the least recently seen go), the last `RECENT_SESSIONS` session ids per user, and
//! nothing older than `RETENTION`.

pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::timestamp;
use crate::config::settings::Kind;
use crate::limits::{millis, Backend, Clock, StateError};
use crate::report::{self, Align, Format, Table};
pub use store::{
    client, Bounds, Client, ClientUpdate, Delivery, Store, Update, User, MAX_CLIENTS, RECENT_SESSIONS, RETENTION,
};

/// A user and client written this recently, with the same session, is not written again.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);
/// How often the pending batch is written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// The window of `tollgate_clients` and `tollgate_managed_settings_current_ratio`.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(86_400);
/// `tollgate_clients` series at most: the pairs with the most users; the rest are summed as `other`.
pub const CLIENT_SERIES: usize = 50;
/// Users in the pending batch at most; past it a new user's sightings wait for the next flush.
pub const PENDING_USERS: usize = 50_000;

/// The checksum a user should run now, per kind; `None` where tollgate serves that user nothing (the call goes to
/// Anthropic), so there is nothing to compare.
pub type Current = dyn Fn(&str, &[String], Kind) -> Option<String> + Send + Sync;

/// Whether a user runs the current policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Currency {
    /// No managed settings or policy limits apply to the user.
    Unmanaged,
    /// The last checksums delivered are the current ones.
    Current,
    /// A checksum delivered is not the current one, or none was delivered.
    Stale,
}

/// The fleet inventory of one running tollgate.
pub struct Fleet {
    store: Store,
    bounds: Bounds,
    clock: Arc<dyn Clock>,
    /// A keyed hash of (user, user agent) → when it was last put in a batch, and with which session. A hash, not
    /// the names, so that a sighting allocates nothing; two pairs sharing one (a chance of about 10⁻⁹ with the
    /// most marks kept) would only delay one pair's sighting by up to `WRITE_EVERY`.
    marks: Mutex<HashMap<u64, Mark, foldhash::fast::RandomState>>,
    /// The key of `marks`' hash, random per process.
    marks_key: foldhash::fast::RandomState,
    pending: Mutex<HashMap<String, Update>>,
    /// One flush at a time, so batches reach the store in order.
    flushing: tokio::sync::Mutex<()>,
    current: RwLock<Option<Arc<Current>>>,
    /// The last gauges read from Redis, and when (ms): a scrape reads the shared store at most every `GAUGES_EVERY`.
    gauges: Mutex<Option<(u64, Gauges)>>,
}

/// `tollgate_clients` series (client, version, users) and `tollgate_managed_settings_current_ratio`.
pub type Gauges = (Vec<(String, String, i64)>, Option<f64>);

/// How long gauges read from Redis are reused.
pub const GAUGES_EVERY: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.store).field("bounds", &self.bounds).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    at: u64,
    session: Option<u64>,
}

impl Fleet {
    /// The inventory in `backend` (Redis when it is the Redis backend, else this process's memory).
    pub fn new(backend: Arc<dyn Backend>, bounds: Bounds, clock: Arc<dyn Clock>) -> Self {
        Self {
            store: Store::for_backend(backend),
            bounds,
            clock,
            marks: Mutex::default(),
            marks_key: foldhash::fast::RandomState::default(),
            pending: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            current: RwLock::new(None),
            gauges: Mutex::new(None),
        }
    }

    /// Sets where the current checksums come from (managed settings); until then every user is `Unmanaged`.
    pub fn set_current(&self, current: Arc<Current>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
    }

    /// Records an identified model request of `user` (in `teams`) from `user_agent` (its first product token,
    /// `claude-cli/2.1.332`) in `session`. No I/O: at most a map update under a lock.
    pub fn seen(&self, user: &str, teams: &[Arc<str>], user_agent: Option<&str>, session: Option<&str>) {
        let now = millis(self.clock.now());
        let session_hash = session.map(session_hash);
        let key = std::hash::BuildHasher::hash_one(&self.marks_key, (user, user_agent));
        {
            let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mark) = marks.get_mut(&key) {
                let fresh = now.saturating_sub(mark.at) < WRITE_EVERY.as_millis() as u64;
                if fresh && (session_hash.is_none() || mark.session == session_hash) {
                    return;
                }
                *mark = Mark { at: now, session: session_hash.or(mark.session) };
            } else {
                if marks.len() >= PENDING_USERS.saturating_mul(4) {
                    marks.clear();
                }
                marks.insert(key, Mark { at: now, session: session_hash });
            }
        }
        let teams: Vec<&str> = teams.iter().map(|team| &**team).collect();
        let teams_json = serde_json::to_string(&teams).expect("strings serialise");
        self.merge(user, |update| {
            update.teams_json = Some(teams_json);
            update.first = if update.first == 0 { now } else { update.first.min(now) };
            update.last = update.last.max(now);
            if let Some(agent) = user_agent {
                let (client, version) = client(agent);
                let name = format!("{client}/{version}");
                let room = update.clients.len() < MAX_CLIENTS * 2;
                match update.clients.iter_mut().find(|known| known.name == name) {
                    Some(known) => known.last = known.last.max(now),
                    None if room => update.clients.push(ClientUpdate { name, first: now, last: now }),
                    None => {}
                }
            }
            if let Some(hash) = session_hash {
                let id = format!("{hash:016x}");
                update.sessions.retain(|known| *known != id);
                update.sessions.push(id);
                if update.sessions.len() > RECENT_SESSIONS {
                    update.sessions.remove(0);
                }
            }
        });
    }

    /// Records that `checksum` of `kind` was delivered to `user` now (a managed-settings or policy-limits answer).
    pub fn delivered(&self, user: &str, kind: Kind, checksum: &str) {
        let now = millis(self.clock.now());
        let delivery = Some(Delivery { checksum: checksum.to_owned(), at: now });
        self.merge(user, |update| {
            update.first = if update.first == 0 { now } else { update.first.min(now) };
            update.last = update.last.max(now);
            match kind {
                Kind::Settings => update.settings = delivery,
                Kind::PolicyLimits => update.policy_limits = delivery,
            }
        });
    }

    /// Applies `change` to `user`'s pending update; a new user past the bound waits for the next flush.
    fn merge(&self, user: &str, change: impl FnOnce(&mut Update)) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(update) = pending.get_mut(user) {
            return change(update);
        }
        if pending.len() >= PENDING_USERS {
            tracing::debug!("fleet: the pending batch is full until the next flush");
            return;
        }
        let mut update = Update { user: user.to_owned(), ..Update::default() };
        change(&mut update);
        pending.insert(user.to_owned(), update);
    }

    /// Writes the pending batch to the store. A batch the store refuses (Redis unreachable) is dropped and logged:
    /// the next sightings write again, since their marks are forgotten.
    pub async fn flush(&self) -> Result<(), StateError> {
        let _one = self.flushing.lock().await;
        let batch: Vec<Update> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending).into_values().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let now = millis(self.clock.now());
        let result = self.store.apply(batch, self.bounds, now).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "fleet: a batch of sightings could not be written");
            self.marks.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        result
    }

    /// Every user in the store, the most recently seen first, after writing the pending batch.
    pub async fn users(&self) -> Result<Vec<User>, StateError> {
        self.flush().await?;
        let now = millis(self.clock.now());
        let mut users = self.store.users(self.bounds, now).await?;
        users.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.user.cmp(&b.user)));
        Ok(users)
    }

    /// Whether `user` runs the current policy: the one comparison behind `--stale`, `current` and the ratio.
    pub fn currency(&self, user: &User) -> Currency {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(current) = current else { return Currency::Unmanaged };
        let mut managed = false;
        for (kind, delivered) in [(Kind::Settings, &user.settings), (Kind::PolicyLimits, &user.policy_limits)] {
            let Some(wanted) = current(&user.user, &user.teams, kind) else { continue };
            managed = true;
            if delivered.as_ref().is_none_or(|delivery| delivery.checksum != wanted) {
                return Currency::Stale;
            }
        }
        if managed {
            Currency::Current
        } else {
            Currency::Unmanaged
        }
    }

    /// The inventory as a report; `stale` keeps only the users on a policy that is not the current one.
    pub async fn listing(&self, stale: bool) -> Result<Listing, StateError> {
        let users = self.users().await?;
        let rows: Vec<(User, Currency)> = users
            .into_iter()
            .map(|user| {
                let currency = self.currency(&user);
                (user, currency)
            })
            .collect();
        // Managed settings apply to someone listed (the config in force says what each user should run).
        let managed = rows.iter().any(|(_, currency)| *currency != Currency::Unmanaged);
        let rows = rows.into_iter().filter(|(_, currency)| !stale || *currency == Currency::Stale).collect();
        Ok(Listing { users: rows, stale, managed, max_users: self.bounds.max_users })
    }

    /// The numbers of `tollgate_clients` (users seen in the last day per client and version, the busiest
    /// `CLIENT_SERIES` pairs, the rest as `other`) and `tollgate_managed_settings_current_ratio` (`None` when no
    /// active user has managed settings).
    /// Read from Redis at most every `GAUGES_EVERY` (a scrape of every replica would otherwise read every user).
    pub async fn gauges(&self) -> Result<Gauges, StateError> {
        let now = millis(self.clock.now());
        if matches!(self.store, Store::Redis(_)) {
            let cached = self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let fresh = |(at, _): &(u64, Gauges)| now.saturating_sub(*at) < GAUGES_EVERY.as_millis() as u64;
            if let Some((_, gauges)) = cached.filter(fresh) {
                return Ok(gauges);
            }
        }
        let gauges = self.count().await?;
        *self.gauges.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, gauges.clone()));
        Ok(gauges)
    }

    async fn count(&self) -> Result<Gauges, StateError> {
        let users = self.users().await?;
        let since = millis(self.clock.now()).saturating_sub(ACTIVE_WINDOW.as_millis() as u64);
        let mut pairs: HashMap<(&str, &str), i64> = HashMap::new();
        let (mut managed, mut current) = (0u64, 0u64);
        for user in users.iter().filter(|user| user.last >= since) {
            for client in user.clients.iter().filter(|client| client.last >= since) {
                *pairs.entry((&client.client, &client.version)).or_default() += 1;
            }
            match self.currency(user) {
                Currency::Unmanaged => {}
                Currency::Current => (managed, current) = (managed + 1, current + 1),
                Currency::Stale => managed += 1,
            }
        }
        let mut pairs: Vec<((&str, &str), i64)> = pairs.into_iter().collect();
        pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut series: Vec<(String, String, i64)> = Vec::new();
        let mut other = 0;
        for (index, ((client, version), users)) in pairs.into_iter().enumerate() {
            if index < CLIENT_SERIES {
                series.push((client.to_owned(), version.to_owned(), users));
            } else {
                other += users;
            }
        }
        if other > 0 {
            series.push(("other".to_owned(), "other".to_owned(), other));
        }
        let ratio = (managed > 0).then(|| current as f64 / managed as f64);
        Ok((series, ratio))
    }
}

/// Writes the pending batch every `FLUSH_EVERY` until `stop`.
pub async fn flush_every(fleet: Arc<Fleet>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = fleet.flush().await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Why `tollgate fleet` could not show the inventory.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("cannot reach the admin listener at {address}: {source} (is tollgate running?)")]
    Connect { address: std::net::SocketAddr, source: std::io::Error },
    #[error("the admin listener at {address}: {message}")]
    Http { address: std::net::SocketAddr, message: String },
    #[error("GET /admin/fleet answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// `tollgate fleet`: asks the running gateway's `GET /admin/fleet` (the inventory lives in its memory, or in Redis
/// behind it) with the admin token, within `timeout`; the body as it came.
pub async fn ask(
    address: std::net::SocketAddr,
    token: &str,
    stale: bool,
    format: Format,
    timeout: Duration,
) -> Result<String, AskError> {
    use http_body_util::BodyExt;
    let http = |message: String| AskError::Http { address, message };
    let exchange = async {
        let stream =
            tokio::net::TcpStream::connect(address).await.map_err(|source| AskError::Connect { address, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        tokio::spawn(connection);
        let format = match format {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
        };
        let request = http::Request::get(format!("/admin/fleet?stale={stale}&format={format}"))
            .header(http::header::HOST, address.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| http(e.to_string()))?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(body)
        } else {
            Err(AskError::Refused { status: status.as_u16(), body: body.trim().to_owned() })
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(http(format!("no answer within {timeout:?}"))))
}

/// The address to ask for the admin listener bound at `bind`: loopback when it binds every address.
pub fn admin_address(bind: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match bind.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, bind.port())
}

/// A session id as the store keeps it: 64 bits of its SHA-256, the same on every replica.
fn session_hash(session: &str) -> u64 {
    let digest = Sha256::digest(session.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

// ---- the report ----------------------------------------------------------------------------------------------

/// The inventory as `tollgate fleet` and `/admin/fleet` show it.
#[derive(Debug)]
pub struct Listing {
    pub users: Vec<(User, Currency)>,
    /// Only stale users are listed.
    pub stale: bool,
    /// Managed settings are configured (a current checksum exists).
    pub managed: bool,
    pub max_users: usize,
}

#[derive(Serialize)]
struct JsonListing<'a> {
    stale_only: bool,
    managed_settings: bool,
    max_users: usize,
    users: Vec<JsonUser<'a>>,
}

#[derive(Serialize)]
struct JsonUser<'a> {
    user: &'a str,
    teams: &'a [String],
    first_seen: Option<String>,
    last_seen: Option<String>,
    sessions: u64,
    clients: Vec<JsonClient<'a>>,
    settings: Option<JsonDelivery<'a>>,
    policy_limits: Option<JsonDelivery<'a>>,
    /// `true` / `false`; `null` when no managed settings apply.
    current: Option<bool>,
}

#[derive(Serialize)]
struct JsonClient<'a> {
    client: &'a str,
    version: &'a str,
    first_seen: Option<String>,
    last_seen: Option<String>,
}

#[derive(Serialize)]
struct JsonDelivery<'a> {
    checksum: &'a str,
    delivered_at: Option<String>,
}

/// A time in ms as RFC 3339; `None` for 0 (never).
fn time(ms: u64) -> Option<String> {
    (ms > 0).then(|| timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
}

fn delivery(delivery: &Option<Delivery>) -> Option<JsonDelivery<'_>> {
    delivery.as_ref().map(|d| JsonDelivery { checksum: &d.checksum, delivered_at: time(d.at) })
}

impl Currency {
    fn as_bool(self) -> Option<bool> {
        match self {
            Currency::Unmanaged => None,
            Currency::Current => Some(true),
            Currency::Stale => Some(false),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Currency::Unmanaged => "-",
            Currency::Current => "yes",
            Currency::Stale => "no",
        }
    }
}

impl Listing {
    /// The listing as text in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let users = self
                    .users
                    .iter()
                    .map(|(user, currency)| JsonUser {
                        user: &user.user,
                        teams: &user.teams,
                        first_seen: time(user.first),
                        last_seen: time(user.last),
                        sessions: user.sessions,
                        clients: user
                            .clients
                            .iter()
                            .map(|c| JsonClient {
                                client: &c.client,
                                version: &c.version,
                                first_seen: time(c.first),
                                last_seen: time(c.last),
                            })
                            .collect(),
                        settings: delivery(&user.settings),
                        policy_limits: delivery(&user.policy_limits),
                        current: currency.as_bool(),
                    })
                    .collect();
                let document = JsonListing {
                    stale_only: self.stale,
                    managed_settings: self.managed,
                    max_users: self.max_users,
                    users,
                };
                let mut text = serde_json::to_string_pretty(&document).expect("a report of strings serialises");
                text.push('\n');
                text
            }
            Format::Csv => {
                let mut out = String::new();
                let header = [
                    "user",
                    "teams",
                    "client",
                    "version",
                    "client_first_seen",
                    "client_last_seen",
                    "user_last_seen",
                    "sessions",
                    "settings_checksum",
                    "settings_delivered_at",
                    "policy_limits_checksum",
                    "policy_limits_delivered_at",
                    "current",
                ];
                report::csv_row(&mut out, header);
                for row in self.rows() {
                    report::csv_row(&mut out, row.iter().map(String::as_str));
                }
                out
            }
            Format::Table => {
                let title = if self.stale { "fleet: users not on the current policy" } else { "fleet" };
                let mut out = format!("{title}\n");
                let mut table = Table::new(
                    &["USER", "CLIENT", "VERSION", "LAST_SEEN", "SESSIONS", "SETTINGS", "POLICY_LIMITS", "CURRENT"],
                    &[
                        Align::Left,
                        Align::Left,
                        Align::Left,
                        Align::Left,
                        Align::Right,
                        Align::Left,
                        Align::Left,
                        Align::Left,
                    ],
                );
                for row in self.rows() {
                    let short = |checksum: &str| report::clipped(checksum.trim_start_matches("sha256:"), 12);
                    table.row(vec![
                        report::printable(&row[0]),
                        report::printable(&row[2]),
                        report::printable(&row[3]),
                        if row[5].is_empty() { row[6].clone() } else { row[5].clone() },
                        row[7].clone(),
                        if row[8].is_empty() { "-".to_owned() } else { short(&row[8]) },
                        if row[10].is_empty() { "-".to_owned() } else { short(&row[10]) },
                        row[12].clone(),
                    ]);
                }
                table.render(&mut out);
                if self.users.is_empty() {
                    out.push_str("(no users)\n");
                }
                out
            }
        }
    }

    /// One row per user and client (a user with no client has one row with empty client fields).
    fn rows(&self) -> Vec<[String; 13]> {
        let mut rows = Vec::new();
        for (user, currency) in &self.users {
            let teams = user.teams.join(" ");
            let settings = user.settings.as_ref();
            let limits = user.policy_limits.as_ref();
            let row = |client: Option<&Client>| {
                [
                    user.user.clone(),
                    teams.clone(),
                    client.map(|c| c.client.clone()).unwrap_or_default(),
                    client.map(|c| c.version.clone()).unwrap_or_default(),
                    client.and_then(|c| time(c.first)).unwrap_or_default(),
                    client.and_then(|c| time(c.last)).unwrap_or_default(),
                    time(user.last).unwrap_or_default(),
                    user.sessions.to_string(),
                    settings.map(|d| d.checksum.clone()).unwrap_or_default(),
                    settings.and_then(|d| time(d.at)).unwrap_or_default(),
                    limits.map(|d| d.checksum.clone()).unwrap_or_default(),
                    limits.and_then(|d| time(d.at)).unwrap_or_default(),
                    currency.word().to_owned(),
                ]
            };
            if user.clients.is_empty() {
                rows.push(row(None));
            }
            for client in &user.clients {
                rows.push(row(Some(client)));
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::memory::Memory;

    #[derive(Debug)]
    struct At(std::sync::Mutex<SystemTime>);

    impl Clock for At {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    fn fleet(max_users: usize) -> (Fleet, Arc<At>) {
        let clock = Arc::new(At(std::sync::Mutex::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))));
        (Fleet::new(Arc::new(Memory::default()), Bounds::new(max_users), clock.clone()), clock)
    }

    fn advance(clock: &At, by: Duration) {
        *clock.0.lock().unwrap() += by;
    }

    #[test]
    fn clients_are_read_from_the_product_token() {
        assert_eq!(client("claude-cli/2.1.332"), ("claude-cli", "2.1.332"));
        assert_eq!(client("curl"), ("curl", ""));
        assert_eq!(client("a/b/c"), ("a", "b/c"));
    }

    #[tokio::test]
    async fn sightings_are_merged_per_user_and_client_and_sessions_counted_once() {
        let (fleet, clock) = fleet(10);
        let teams: Vec<Arc<str>> = vec![Arc::from("core")];
        fleet.seen("alice", &teams, Some("claude-cli/2.1.332"), Some("s1"));
        fleet.seen("alice", &teams, Some("claude-cli/2.1.332"), Some("s1"));
        advance(&clock, Duration::from_secs(5));
        fleet.seen("alice", &teams, Some("claude-cli/2.1.332"), Some("s2"));
        fleet.seen("alice", &teams, Some("claude-cli/2.1.400"), Some("s2"));
        fleet.seen("bob", &[], None, None);
        let users = fleet.users().await.unwrap();
        assert_eq!(users.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let alice = &users[0];
        assert_eq!(alice.teams, ["core"]);
        assert_eq!(alice.sessions, 2);
        assert_eq!(alice.clients.len(), 2);
        // Written again later: the sessions already seen are not counted again.
        advance(&clock, WRITE_EVERY);
        fleet.seen("alice", &teams, Some("claude-cli/2.1.332"), Some("s1"));
        let users = fleet.users().await.unwrap();
        assert_eq!(users[0].sessions, 2, "{users:?}");
        assert_eq!(users[0].clients[0].version, "2.1.332", "the most recently seen client first: {users:?}");
    }

    #[tokio::test]
    async fn the_store_keeps_the_most_recently_seen_users_and_clients() {
        let (fleet, clock) = fleet(3);
        for index in 0..5 {
            fleet.seen(&format!("user-{index}"), &[], Some("claude-cli/1.0.0"), None);
            advance(&clock, Duration::from_secs(1));
        }
        for version in 0..MAX_CLIENTS + 3 {
            fleet.seen("user-4", &[], Some(&format!("claude-cli/2.0.{version}")), None);
            advance(&clock, Duration::from_secs(1));
        }
        let users = fleet.users().await.unwrap();
        assert_eq!(users.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(), ["user-4", "user-3", "user-2"]);
        assert_eq!(users[0].clients.len(), MAX_CLIENTS);
        assert!(users[0].clients.iter().all(|c| c.version != "1.0.0" && c.version != "2.0.0"), "{users:?}");
    }

    #[tokio::test]
    async fn past_the_busiest_client_series_the_rest_are_other() {
        let (fleet, _clock) = fleet(1000);
        for index in 0..CLIENT_SERIES + 10 {
            let user = format!("user-{index}");
            fleet.seen(&user, &[], Some(&format!("claude-cli/1.0.{index}")), None);
            // The first pair has two users: it is the busiest.
            fleet.seen(&user, &[], Some("claude-cli/2.0.0"), None);
        }
        let (series, ratio) = fleet.gauges().await.unwrap();
        assert_eq!(ratio, None);
        assert_eq!(series.len(), CLIENT_SERIES + 1, "{series:?}");
        assert_eq!(series[0], ("claude-cli".to_owned(), "2.0.0".to_owned(), (CLIENT_SERIES + 10) as i64));
        assert_eq!(series.last(), Some(&("other".to_owned(), "other".to_owned(), 11)));
    }

    #[tokio::test]
    async fn currency_compares_the_last_delivery_with_the_current_checksum() {
        let (fleet, _clock) = fleet(10);
        fleet.seen("alice", &[], Some("claude-cli/2.1.332"), None);
        fleet.seen("bob", &[], Some("claude-cli/2.1.332"), None);
        fleet.seen("carol", &[Arc::from("free")], Some("claude-cli/2.1.332"), None);
        fleet.delivered("alice", Kind::Settings, "sha256:new");
        fleet.delivered("bob", Kind::Settings, "sha256:old");
        let users = fleet.users().await.unwrap();
        assert!(users.iter().all(|user| fleet.currency(user) == Currency::Unmanaged));
        assert_eq!(fleet.gauges().await.unwrap().1, None, "no ratio without managed settings");
        fleet.set_current(Arc::new(|_user: &str, teams: &[String], kind: Kind| {
            (kind == Kind::Settings && !teams.contains(&"free".to_owned())).then(|| "sha256:new".to_owned())
        }));
        let currency: Vec<(String, Currency)> =
            users.iter().map(|user| (user.user.clone(), fleet.currency(user))).collect();
        assert!(currency.contains(&("alice".to_owned(), Currency::Current)), "{currency:?}");
        assert!(currency.contains(&("bob".to_owned(), Currency::Stale)), "{currency:?}");
        assert!(currency.contains(&("carol".to_owned(), Currency::Unmanaged)), "{currency:?}");
        let (clients, ratio) = fleet.gauges().await.unwrap();
        assert_eq!(ratio, Some(0.5));
        assert_eq!(clients, [("claude-cli".to_owned(), "2.1.332".to_owned(), 3)]);
        let stale = fleet.listing(true).await.unwrap();
        assert_eq!(stale.users.iter().map(|(u, _)| u.user.as_str()).collect::<Vec<_>>(), ["bob"]);
    }
}
