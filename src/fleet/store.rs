//! Where the fleet inventory lives: this process's memory (the embedded backend), or Redis when the limits are
//! there, so replicas share one inventory. Both merge a batch of `Update`s the same way (`Table::apply` and
//! `APPLY_LUA` are the same steps):
//!
//! - a user's `first` is the earliest sighting, `last` the latest; its teams are those of the latest sighting;
//! - a client (`client/version`) keeps its earliest and latest sighting; past `max_clients` the least recently
//!   seen client goes;
//! - a session id not among the user's last `recent_sessions` ids counts one more session (and joins them);
//! - a delivery replaces the user's last one of its kind unless that one is newer;
//! - users not seen within `retention` go, then the least recently seen past `max_users`.
//!
//! Redis keys: `tollgate:fleet:users` (a sorted set of user names by last seen, ms) and `tollgate:fleet:user:NAME`
//! (a hash: `first`, `last`, `teams`, `sessions`, `recent`, `c:CLIENT/VERSION` = "FIRST LAST", `settings`,
//! `settings_at`, `policy_limits`, `policy_limits_at`; it expires `retention` after its last write). A batch is one
//! `EVALSHA` per `SCRIPT_USERS` users; a read is one `ZRANGEBYSCORE` and one pipeline of `HGETALL`s. The script deletes the hashes of the users it
//! evicts by name, so it needs a single Redis server (or Valkey), not a cluster — as the limits do.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::limits::redis::key;
use crate::limits::{Backend, SharedServer, StateError};

/// Clients kept per user; past it the least recently seen client goes.
pub const MAX_CLIENTS: usize = 8;
/// Session ids kept per user to count distinct sessions: a session is new when it is not among them.
pub const RECENT_SESSIONS: usize = 16;
/// A user not seen for this long is dropped.
pub const RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_users: usize,
    pub max_clients: usize,
    pub recent_sessions: usize,
    pub retention: Duration,
}

impl Bounds {
    /// The bounds for `max_users` users.
    pub fn new(max_users: usize) -> Self {
        Self { max_users, max_clients: MAX_CLIENTS, recent_sessions: RECENT_SESSIONS, retention: RETENTION }
    }
}

/// One user's sightings and deliveries, merged into the store (times in ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub user: String,
    /// The user's teams as a JSON array, from the latest sighting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teams_json: Option<String>,
    pub first: u64,
    pub last: u64,
    pub clients: Vec<ClientUpdate>,
    /// Hashed session ids (`session_id`), oldest first.
    pub sessions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Delivery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_limits: Option<Delivery>,
}

/// One client of an update: `name` is `client/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientUpdate {
    pub name: String,
    pub first: u64,
    pub last: u64,
}

/// A checksum delivered, and when (ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub checksum: String,
    pub at: u64,
}

/// One user as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user: String,
    pub teams: Vec<String>,
    pub first: u64,
    pub last: u64,
    pub sessions: u64,
    /// Most recently seen first.
    pub clients: Vec<Client>,
    pub settings: Option<Delivery>,
    pub policy_limits: Option<Delivery>,
}

/// One client of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client: String,
    pub version: String,
    pub first: u64,
    pub last: u64,
}

/// The client and version of a User-Agent product token: `claude-cli/2.1.332` is (`claude-cli`, `2.1.332`); a token
/// without a version has version `""`.
pub fn client(user_agent: &str) -> (&str, &str) {
    user_agent.split_once('/').unwrap_or((user_agent, ""))
}

/// Users merged by one run of the script at most.
pub const SCRIPT_USERS: usize = 500;

/// The sorted set of user names by last seen.
pub const USERS_KEY: &str = "fleet:users";
/// What a user's hash is named after (`tollgate:` first).
pub const USER_KEY_PREFIX: &str = "fleet:user:";

/// Merges a batch (see the module's rules). `KEYS[1]` the users set, `KEYS[i + 1]` update `i`'s hash; `ARGV[1]` the
/// updates (JSON), then max users, max clients, recent sessions, retention (ms), now (ms), the hash key prefix.
/// Times are whole milliseconds: exact in Lua's doubles.
const APPLY_LUA: &str = r#"
local updates = cjson.decode(ARGV[1])
local max_users = tonumber(ARGV[2])
local max_clients = tonumber(ARGV[3])
local max_recent = tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local prefix = ARGV[7]
local function num(value) return tonumber(value or '0') or 0 end
local function fmt(value) return string.format('%.0f', value) end
for i, u in ipairs(updates) do
  local key = KEYS[i + 1]
  local first = num(redis.call('HGET', key, 'first'))
  local last = num(redis.call('HGET', key, 'last'))
  if u.teams_json and u.last >= last then
    redis.call('HSET', key, 'teams', u.teams_json)
  end
  if u.first > 0 and (first == 0 or u.first < first) then first = u.first end
  if u.last > last then last = u.last end
  redis.call('HSET', key, 'first', fmt(first), 'last', fmt(last))
  for _, c in ipairs(u.clients) do
    local field = 'c:' .. c.name
    local cfirst, clast = c.first, c.last
    local old = redis.call('HGET', key, field)
    if old then
      local f, l = string.match(old, '^(%d+) (%d+)$')
      if f then
        cfirst = math.min(tonumber(f), cfirst)
        clast = math.max(tonumber(l), clast)
      end
    end
    redis.call('HSET', key, field, fmt(cfirst) .. ' ' .. fmt(clast))
  end
  local fields = redis.call('HGETALL', key)
  local clients = {}
  for j = 1, #fields, 2 do
    if string.sub(fields[j], 1, 2) == 'c:' then
      table.insert(clients, {fields[j], tonumber(string.match(fields[j + 1], ' (%d+)$')) or 0})
    end
  end
  if #clients > max_clients then
    table.sort(clients, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    for j = max_clients + 1, #clients do
      redis.call('HDEL', key, clients[j][1])
    end
  end
  if #u.sessions > 0 then
    local recent = {}
    for id in string.gmatch(redis.call('HGET', key, 'recent') or '', '%S+') do
      table.insert(recent, id)
    end
    local count = num(redis.call('HGET', key, 'sessions'))
    for _, id in ipairs(u.sessions) do
      local found = nil
      for j = 1, #recent do
        if recent[j] == id then found = j end
      end
      if found then table.remove(recent, found) else count = count + 1 end
      table.insert(recent, id)
    end
    while #recent > max_recent do table.remove(recent, 1) end
    redis.call('HSET', key, 'sessions', fmt(count), 'recent', table.concat(recent, ' '))
  end
  for _, kind in ipairs({'settings', 'policy_limits'}) do
    local d = u[kind]
    if type(d) == 'table' and d.at >= num(redis.call('HGET', key, kind .. '_at')) then
      redis.call('HSET', key, kind, d.checksum, kind .. '_at', fmt(d.at))
    end
  end
  redis.call('PEXPIRE', key, fmt(retention))
  local score = redis.call('ZSCORE', KEYS[1], u.user)
  if not score or tonumber(score) < last then
    redis.call('ZADD', KEYS[1], fmt(last), u.user)
  end
end
local horizon = '(' .. fmt(now - retention)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon)
for _, name in ipairs(old) do redis.call('DEL', prefix .. name) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon) end
local over = redis.call('ZCARD', KEYS[1]) - max_users
if over > 0 then
  local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  for _, name in ipairs(gone) do redis.call('DEL', prefix .. name) end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
end
return #updates
"#;

static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_LUA));

/// The inventory's store.
#[derive(Debug)]
pub enum Store {
    /// In this process.
    Memory(Mutex<Table>),
    /// In the server this backend shares with the replicas (its `shared_server()` is `Some`).
    Redis(Arc<dyn Backend>),
}

impl Store {
    /// Redis when `backend` is the Redis backend, else memory.
    pub fn for_backend(backend: Arc<dyn Backend>) -> Store {
        if backend.shared_server().is_some() {
            Store::Redis(backend)
        } else {
            Store::Memory(Mutex::default())
        }
    }

    /// Merges a batch.
    pub async fn apply(&self, batch: Vec<Update>, bounds: Bounds, now: u64) -> Result<(), StateError> {
        match self {
            Store::Memory(table) => {
                table.lock().unwrap_or_else(|p| p.into_inner()).apply(&batch, bounds, now);
                Ok(())
            }
            Store::Redis(backend) => {
                let server = server_of(backend);
                // A script holds the server while it runs: a large batch goes in several.
                for chunk in batch.chunks(SCRIPT_USERS) {
                    let mut keys = vec![key(USERS_KEY)];
                    keys.extend(chunk.iter().map(|update| key(&format!("{USER_KEY_PREFIX}{}", update.user))));
                    let args = [
                        serde_json::to_string(chunk).expect("updates serialise"),
                        bounds.max_users.to_string(),
                        bounds.max_clients.to_string(),
                        bounds.recent_sessions.to_string(),
                        (bounds.retention.as_millis() as u64).to_string(),
                        now.to_string(),
                        key(USER_KEY_PREFIX),
                    ];
                    server.eval(&APPLY, &keys, &args).await?;
                }
                Ok(())
            }
        }
    }

    /// Every user kept (in no particular order), those past `retention` left out.
    pub async fn users(&self, bounds: Bounds, now: u64) -> Result<Vec<User>, StateError> {
        let horizon = now.saturating_sub(bounds.retention.as_millis() as u64);
        match self {
            Store::Memory(table) => {
                let table = table.lock().unwrap_or_else(|p| p.into_inner());
                Ok(table.users.iter().filter(|(_, entry)| entry.last >= horizon).map(|(n, e)| e.user(n)).collect())
            }
            Store::Redis(backend) => {
                let server = server_of(backend);
                let mut names = redis::pipe();
                names.cmd("ZRANGEBYSCORE").arg(key(USERS_KEY)).arg(horizon).arg("+inf");
                let (names,): (Vec<String>,) = decode(server.pipeline(&names).await?)?;
                let mut hashes = redis::pipe();
                for name in &names {
                    hashes.cmd("HGETALL").arg(key(&format!("{USER_KEY_PREFIX}{name}")));
                }
                let fields: Vec<HashMap<String, String>> =
                    if names.is_empty() { Vec::new() } else { decode(server.pipeline(&hashes).await?)? };
                Ok(names.iter().zip(&fields).filter(|(_, f)| !f.is_empty()).map(|(n, f)| from_hash(n, f)).collect())
            }
        }
    }
}

fn server_of(backend: &Arc<dyn Backend>) -> &dyn SharedServer {
    backend.shared_server().expect("Store::Redis is made only for a backend with a shared server")
}

/// A Redis answer read as `T`; an answer of another shape is a `StateError`.
fn decode<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, StateError> {
    redis::from_redis_value(value).map_err(|error| StateError(format!("redis answered the fleet read oddly: {error}")))
}

/// A user as the Redis hash holds it.
fn from_hash(name: &str, fields: &HashMap<String, String>) -> User {
    let number = |field: &str| fields.get(field).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let delivery = |field: &str| {
        fields.get(field).map(|checksum| Delivery { checksum: checksum.clone(), at: number(&format!("{field}_at")) })
    };
    let mut clients: Vec<Client> = fields
        .iter()
        .filter_map(|(field, value)| {
            let name = field.strip_prefix("c:")?;
            let (first, last) = value.split_once(' ')?;
            let (client, version) = client(name);
            Some(Client {
                client: client.to_owned(),
                version: version.to_owned(),
                first: first.parse().ok()?,
                last: last.parse().ok()?,
            })
        })
        .collect();
    sort_clients(&mut clients);
    User {
        user: name.to_owned(),
        teams: fields.get("teams").and_then(|teams| serde_json::from_str(teams).ok()).unwrap_or_default(),
        first: number("first"),
        last: number("last"),
        sessions: number("sessions"),
        clients,
        settings: delivery("settings"),
        policy_limits: delivery("policy_limits"),
    }
}

/// The most recently seen first, then by name.
fn sort_clients(clients: &mut [Client]) {
    clients.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| (&a.client, &a.version).cmp(&(&b.client, &b.version))));
}

/// The inventory in memory.
#[derive(Debug, Default)]
pub struct Table {
    users: HashMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    teams: Vec<String>,
    first: u64,
    last: u64,
    /// `client/version` → (first, last).
    clients: BTreeMap<String, (u64, u64)>,
    sessions: u64,
    recent: VecDeque<String>,
    settings: Option<Delivery>,
    policy_limits: Option<Delivery>,
}

impl Entry {
    fn user(&self, name: &str) -> User {
        let mut clients: Vec<Client> = self
            .clients
            .iter()
            .map(|(name, (first, last))| {
                let (client, version) = client(name);
                Client { client: client.to_owned(), version: version.to_owned(), first: *first, last: *last }
            })
            .collect();
        sort_clients(&mut clients);
        User {
            user: name.to_owned(),
            teams: self.teams.clone(),
            first: self.first,
            last: self.last,
            sessions: self.sessions,
            clients,
            settings: self.settings.clone(),
            policy_limits: self.policy_limits.clone(),
        }
    }
}

impl Table {
    /// Merges a batch: the steps of `APPLY_LUA`, in the same order.
    pub fn apply(&mut self, batch: &[Update], bounds: Bounds, now: u64) {
        for update in batch {
            let entry = self.users.entry(update.user.clone()).or_default();
            if let Some(teams) = update.teams_json.as_deref().filter(|_| update.last >= entry.last) {
                entry.teams = serde_json::from_str(teams).unwrap_or_default();
            }
            if update.first > 0 && (entry.first == 0 || update.first < entry.first) {
                entry.first = update.first;
            }
            entry.last = entry.last.max(update.last);
            for client in &update.clients {
                let seen = entry.clients.entry(client.name.clone()).or_insert((client.first, client.last));
                *seen = (seen.0.min(client.first), seen.1.max(client.last));
            }
            if entry.clients.len() > bounds.max_clients {
                let mut by_recency: Vec<(String, u64)> =
                    entry.clients.iter().map(|(name, (_, last))| (name.clone(), *last)).collect();
                by_recency.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                for (name, _) in &by_recency[bounds.max_clients..] {
                    entry.clients.remove(name);
                }
            }
            for id in &update.sessions {
                match entry.recent.iter().position(|known| known == id) {
                    Some(at) => {
                        entry.recent.remove(at);
                    }
                    None => entry.sessions += 1,
                }
                entry.recent.push_back(id.clone());
            }
            while entry.recent.len() > bounds.recent_sessions {
                entry.recent.pop_front();
            }
            for (delivery, kept) in
                [(&update.settings, &mut entry.settings), (&update.policy_limits, &mut entry.policy_limits)]
            {
                if let Some(delivery) = delivery {
                    if kept.as_ref().is_none_or(|kept| delivery.at >= kept.at) {
                        *kept = Some(delivery.clone());
                    }
                }
            }
        }
        let horizon = now.saturating_sub(bounds.retention.as_millis() as u64);
        self.users.retain(|_, entry| entry.last >= horizon);
        if let Some(over) = self.users.len().checked_sub(bounds.max_users).filter(|over| *over > 0) {
            let mut by_age: Vec<(u64, String)> =
                self.users.iter().map(|(name, entry)| (entry.last, name.clone())).collect();
            by_age.sort();
            for (_, name) in by_age.into_iter().take(over) {
                self.users.remove(&name);
            }
        }
    }
}
