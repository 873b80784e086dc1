//! The validated, compiled configuration: everything a request needs, built once per load or reload.
//!
//! `file.rs` mirrors the YAML; `Config::load` parses it (`yaml.rs` keeps line and column), expands `${NAME}`,
//! then compiles each section into types that cannot be wrong. Every error reads
//! `FILE:LINE:COL: key.path: what is wrong`.

pub mod actions;
mod budgets;
pub mod enroll;
pub mod file;
pub mod llm;
pub mod scim;
pub mod settings;
pub mod siem;
pub mod teams;
mod units;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use llm::Llm;
pub use teams::{BudgetLimits, TeamSettings};
pub use units::ByteSize;

use crate::identity::Directory;
use crate::limits::{Limits, Rate, ScopeLimits, TeamLimits};
use crate::policy::{PatternError, Policy, RuleSet};
use crate::target::Target;
use crate::tls::{self, ClientAuth};
use yaml::Mark;

/// The default config path, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/tollgate.yaml";

/// A loaded configuration.
#[derive(Debug)]
pub struct Config {
    pub source: Source,
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub identity: Directory,
    pub policy: Policy,
    pub upstream: Upstream,
    pub audit: Audit,
    pub server: Server,
    pub limits: Limits,
    pub state: State,
    /// What each team may use besides destinations (those are in `policy`), for enforcement and `explain`.
    pub teams: BTreeMap<Arc<str>, TeamSettings>,
    /// Upstreams, routing, interception, DLP, pricing and budgets for model-API requests.
    pub llm: Llm,
    /// The rules agent actions (tool calls in model responses) are decided by, and the tool table.
    pub actions: actions::Actions,
    /// Claude Code's server-managed settings and policy limits; `None` = those calls go upstream unchanged.
    pub managed_settings: Option<settings::Managed>,
    /// Alert sinks and rules; `None` = no alerts (the request path then sends no events).
    pub alerts: Option<Arc<crate::alerts::Rules>>,
    /// Client certificate enrollment (`auth.enroll`); `None` = no `POST /enroll`.
    pub enroll: Option<Arc<enroll::Enrollment>>,
    /// The developer page's reserved host name (`developer_page`); `None` = disabled.
    pub developer_page: Option<Box<str>>,
}

/// The state backend.
#[derive(Debug, Clone)]
pub struct State {
    pub backend: file::StateBackend,
    pub path: PathBuf,
    pub redis_url: Option<String>,
    /// `state.on_error: allow`: serve without limits while the shared state is unreachable.
    pub allow_on_error: bool,
    /// Users the fleet inventory keeps.
    pub fleet_max_users: usize,
    /// How `rediss://` verifies the server and which client certificate it presents: the upstream trust settings.
    pub redis_trust: crate::tls::UpstreamFiles,
}

/// Where the config came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    /// The config file and every file it names (users, keys, certificates): a change to any of them reloads.
    pub files: Vec<PathBuf>,
    pub sha256: String,
    pub loaded_at: SystemTime,
}

/// A proxy listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub mode: file::ListenerMode,
    /// Present on TLS listeners: the server config, re-read with every snapshot.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    pub bind: SocketAddr,
    pub token: Option<String>,
    /// `admin.scim`: SCIM provisioning, when configured.
    pub scim: Option<Arc<scim::Settings>>,
    /// `admin.console.oidc`: the console's sign-in with the `auth.oidc` provider, when configured.
    pub console_oidc: Option<Arc<file::ConsoleOidc>>,
}

/// How tollgate connects to destinations.
#[derive(Debug)]
pub struct Upstream {
    pub connect_timeout: Duration,
    pub dns_timeout: Duration,
    pub idle_timeout: Duration,
    /// Shared by every upstream TLS connection (origins and an `https://` parent proxy).
    pub tls: Arc<rustls::ClientConfig>,
    /// The same trust, offering ALPN `h2` and `http/1.1` (model-API upstreams).
    pub tls_alpn: Arc<rustls::ClientConfig>,
    pub parent_proxy: Option<ParentProxy>,
    /// Destinations reached directly despite the parent proxy.
    pub parent_proxy_bypass: RuleSet,
}

/// A proxy that tollgate chains to.
#[derive(Debug, Clone)]
pub struct ParentProxy {
    pub target: Target,
    pub tls: bool,
    /// `Proxy-Authorization` value for the parent, from the URL's user information.
    pub authorization: Option<String>,
    /// The URL without its password, for logs and errors.
    pub display: String,
}

/// The audit sinks.
#[derive(Debug, Clone)]
pub struct Audit {
    pub file: Option<AuditFile>,
    pub on_failure: file::AuditFailure,
    /// Records that may wait to be written at most.
    pub queue: usize,
    /// SIEM sinks, each with its spool.
    pub siem: Vec<siem::SiemSink>,
    /// Fields pseudonymised in the SIEM copies.
    pub pseudonymize: Option<siem::Pseudonymize>,
    pub checkpoints: Option<AuditCheckpoints>,
}

/// Signed checkpoints of the audit chain.
#[derive(Debug, Clone)]
pub struct AuditCheckpoints {
    pub every: Duration,
    /// The Ed25519 key (PKCS#8) that signs them.
    pub signing_key: PathBuf,
}

/// The bounds of `audit.queue`: a queue this short would make the sink look full under ordinary load; one this
/// long could hold gigabytes of records.
const AUDIT_QUEUE_MIN: usize = 16;
const AUDIT_QUEUE_MAX: usize = 1 << 20;

/// The JSON-lines audit file.
#[derive(Debug, Clone)]
pub struct AuditFile {
    pub path: PathBuf,
    pub chain: bool,
    pub sync: file::AuditSync,
    /// The chain is HMAC-SHA256 with the key in this file.
    pub key: Option<PathBuf>,
    /// Rotate once the file holds this many bytes.
    pub rotate_size: Option<u64>,
    /// Rotate at each UTC midnight.
    pub rotate_daily: bool,
    /// Delete rotated files older than this.
    pub retention: Option<Duration>,
}

/// The smallest `audit.file.rotate.size`.
const ROTATE_SIZE_MIN: u64 = 1024;

/// Limits on client connections.
#[derive(Debug, Clone)]
pub struct Server {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub body_read_timeout: Duration,
    /// In bytes; a semaphore of this many permits bounds the request bodies held at once.
    pub max_buffered_body_bytes: u64,
    pub max_admin_connections: usize,
}

/// A config error with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub mark: Option<Mark>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mark {
            Some(mark) => write!(f, "{}:{}:{}: ", self.file, mark.line, mark.col)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An error found after deserialization: a key path, located afterwards from the tree.
struct Invalid {
    path: String,
    message: String,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { path: path.into(), message: message.into() }
}

/// Reads environment variables for `${NAME}`.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Loads and compiles the file at `path`, expanding `${NAME}` from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Loads with an explicit environment (tests).
    pub fn load_with_env(path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: label.clone(),
            mark: None,
            path: String::new(),
            message: format!("cannot read: {error}"),
        })?;
        Self::from_text(&text, path, env)
    }

    /// Compiles config text; `path` names it in errors and resolves nothing (paths are relative to the cwd).
    pub fn from_text(text: &str, path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let label = path.display().to_string();
        let root = yaml::parse(text).map_err(located(&label))?;
        let parsed: file::File = yaml::deserialize(&root, env).map_err(located(&label))?;
        let locations = yaml::locations(&root);
        let users_file = match &parsed.auth.users_file {
            Some(users_path) => {
                let users_text = std::fs::read_to_string(users_path).map_err(|error| ConfigError {
                    file: label.clone(),
                    mark: nearest_mark(&locations, "auth.users_file"),
                    path: "auth.users_file".into(),
                    message: format!("cannot read {users_path}: {error}"),
                })?;
                Some(load_users(&users_text, Path::new(users_path), env)?)
            }
            None => None,
        };
        let (users, users_located) = match users_file {
            Some((users, located)) => (Some(users), Some(located)),
            None => (None, None),
        };
        compile(parsed, users, text, path).map_err(|error| {
            // An entry of the users file is located in that file, by its path there (`[2].password_hash`).
            if let (Some(rest), Some((users_label, users_marks))) =
                (error.path.strip_prefix("auth.users_file"), &users_located)
            {
                let mark = nearest_mark(users_marks, rest);
                return ConfigError { file: users_label.clone(), mark, path: rest.into(), message: error.message };
            }
            let mark = nearest_mark(&locations, &error.path);
            ConfigError { file: label.clone(), mark, path: error.path, message: error.message }
        })
    }
}

/// A users file: its label for errors and where each of its key paths stands.
type UsersLocated = (String, HashMap<String, Mark>);

/// The mark of `path` or of its closest located parent.
fn nearest_mark(locations: &HashMap<String, Mark>, path: &str) -> Option<Mark> {
    let mut candidate = path;
    loop {
        if let Some(mark) = locations.get(candidate) {
            return Some(*mark);
        }
        let cut = candidate.rfind(['.', '['])?;
        candidate = &candidate[..cut];
    }
}

/// Parses the text of `auth.users_file`, a YAML list of users; its errors name that file.
fn load_users(text: &str, path: &Path, env: Env<'_>) -> Result<(Vec<file::User>, UsersLocated), ConfigError> {
    let label = path.display().to_string();
    let root = yaml::parse(text).map_err(located(&label))?;
    let users = yaml::deserialize(&root, env).map_err(located(&label))?;
    Ok((users, (label, yaml::locations(&root))))
}

/// A YAML error in the file `label`, as a config error at its line and column.
fn located(label: &str) -> impl Fn(yaml::Error) -> ConfigError + '_ {
    move |error| ConfigError {
        file: label.to_owned(),
        mark: Some(error.mark),
        path: error.path,
        message: error.message,
    }
}

fn compile(
    parsed: file::File,
    users_file: Option<Vec<file::User>>,
    text: &str,
    path: &Path,
) -> Result<Config, Invalid> {
    use sha2::{Digest, Sha256};

    if parsed.listeners.is_empty() {
        return Err(invalid("listeners", "at least one listener is needed"));
    }
    let mut listeners = Vec::with_capacity(parsed.listeners.len());
    for (index, listener) in parsed.listeners.iter().enumerate() {
        let bind = parse_bind(&listener.bind).map_err(|m| invalid(format!("listeners[{index}].bind"), m))?;
        if listener.name.is_empty() {
            return Err(invalid(format!("listeners[{index}].name"), "a listener needs a name"));
        }
        if listeners.iter().any(|l: &Listener| &*l.name == listener.name.as_str()) {
            return Err(invalid(
                format!("listeners[{index}].name"),
                format!("listener {:?} is defined twice", listener.name),
            ));
        }
        if bind.port() != 0 && listeners.iter().any(|l: &Listener| l.bind == bind) {
            return Err(invalid(format!("listeners[{index}].bind"), format!("{bind} is bound by another listener")));
        }
        let tls = match &listener.tls {
            Some(tls) => {
                let config = compile_listener_tls(tls)
                    .map_err(|(key, m)| invalid(format!("listeners[{index}].tls.{key}"), m))?;
                Some(match listener.mode {
                    // Gateway clients may speak h2; the forward proxy speaks HTTP/1.1 only.
                    file::ListenerMode::Gateway => {
                        let mut config = (*config).clone();
                        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                        Arc::new(config)
                    }
                    file::ListenerMode::Proxy => config,
                })
            }
            None => None,
        };
        listeners.push(Listener { name: listener.name.as_str().into(), bind, mode: listener.mode, tls });
    }
    let admin = match &parsed.admin {
        Some(admin) => Some(Admin {
            bind: parse_bind(&admin.bind).map_err(|m| invalid("admin.bind", m))?,
            token: admin.token.clone().filter(|t| !t.is_empty()),
            scim: match &admin.scim {
                Some(scim) => {
                    Some(Arc::new(scim::Settings::compile(scim, &parsed.teams).map_err(|(key, m)| invalid(key, m))?))
                }
                None => None,
            },
            console_oidc: match admin.console.as_ref().and_then(|console| console.oidc.as_ref()) {
                Some(console) => Some(Arc::new(console_oidc(console, admin, &parsed.auth)?)),
                None => None,
            },
        }),
        None => None,
    };

    let mut users: Vec<file::User> = Vec::new();
    let inline = parsed.auth.users.len();
    users.extend(parsed.auth.users.iter().map(clone_user));
    users.extend(users_file.unwrap_or_default());
    let identity = Directory::compile(&parsed.auth, &users, &parsed.upstream.trust).map_err(|e| {
        let list = match e.index {
            None => "auth".to_owned(),
            Some(index) if index < inline => format!("auth.users[{index}]"),
            Some(index) => format!("auth.users_file[{}]", index - inline),
        };
        invalid(format!("{list}.{}", e.field), e.message)
    })?;
    if parsed.auth.anonymous.is_empty() {
        return Err(invalid("auth.anonymous", "write deny or a principal name"));
    }
    if parsed.auth.failed_auth_limit.as_ref().is_some_and(|l| l.per_minute == 0) {
        return Err(invalid("auth.failed_auth_limit.per_minute", "must be at least 1"));
    }

    let policy = Policy::compile(&parsed.policy, &parsed.teams).map_err(|e| invalid(e.path, e.message))?;
    // Inline users and the users file alike: a misspelt team would silently drop its member's team rules.
    for (index, user) in users.iter().enumerate() {
        if let Some(team) = user.teams.iter().find(|t| !parsed.teams.contains_key(t.as_str())) {
            let list = if index < inline {
                format!("auth.users[{index}]")
            } else {
                format!("auth.users_file[{}]", index - inline)
            };
            return Err(invalid(format!("{list}.teams"), format!("team {team:?} is not defined under teams")));
        }
    }
    for (group, team) in &parsed.auth.group_teams {
        if !parsed.teams.contains_key(team) {
            return Err(invalid(
                format!("auth.group_teams.{group}"),
                format!("team {team:?} is not defined under teams"),
            ));
        }
    }
    for (group, team) in parsed.auth.oidc.iter().flat_map(|oidc| &oidc.teams) {
        if !parsed.teams.contains_key(team) {
            return Err(invalid(
                format!("auth.oidc.teams.{group}"),
                format!("team {team:?} is not defined under teams"),
            ));
        }
    }
    let limits = compile_limits(&parsed)?;
    let teams = teams::compile(&parsed.teams).map_err(|(path, message)| invalid(path, message))?;
    let llm = Llm::compile(&parsed, &teams).map_err(|(path, message)| invalid(path, message))?;
    let actions = actions::compile(&parsed.actions, &parsed.teams).map_err(|(path, message)| invalid(path, message))?;
    let managed_settings = settings::compile(&parsed).map_err(|(path, message)| invalid(path, message))?;
    let alerts = match &parsed.alerts {
        Some(alerts) if !alerts.rules.is_empty() || !alerts.sinks.is_empty() => Some(Arc::new(
            crate::alerts::rules::compile(alerts, &parsed.teams, &parsed.upstream.trust)
                .map_err(|(path, message)| invalid(path, message))?,
        )),
        _ => None,
    };
    let enroll = match &parsed.auth.enroll {
        Some(enroll) => Some(Arc::new(
            enroll::Enrollment::compile(enroll, &parsed).map_err(|(path, message)| invalid(path, message))?,
        )),
        None => None,
    };
    let state = State {
        backend: parsed.state.backend,
        path: PathBuf::from(&parsed.state.path),
        redis_url: parsed.state.redis_url.clone(),
        allow_on_error: parsed.state.on_error == file::Verdict::Allow,
        fleet_max_users: parsed.state.fleet_max_users,
        redis_trust: crate::tls::UpstreamFiles {
            system_roots: parsed.upstream.trust.system_roots,
            extra_ca: parsed.upstream.trust.extra_ca.iter().map(PathBuf::from).collect(),
            client_cert: parsed
                .upstream
                .client_cert
                .as_ref()
                .map(|pair| (PathBuf::from(&pair.cert), PathBuf::from(&pair.key))),
        },
    };
    if state.fleet_max_users == 0 {
        return Err(invalid("state.fleet_max_users", "must be at least 1"));
    }
    if state.backend == file::StateBackend::Redis && state.redis_url.is_none() {
        return Err(invalid("state.redis_url", "backend: redis needs redis_url (redis://host:port)"));
    }

    let positive = |value: units::Duration, key: &str| {
        if value.0.is_zero() {
            Err(invalid(key, "must be greater than zero"))
        } else {
            Ok(value.0)
        }
    };
    let upstream_tls =
        compile_upstream_tls(&parsed.upstream).map_err(|(key, m)| invalid(format!("upstream.{key}"), m))?;
    let mut upstream_tls_alpn = (*upstream_tls).clone();
    upstream_tls_alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let upstream = Upstream {
        tls_alpn: Arc::new(upstream_tls_alpn),
        connect_timeout: positive(parsed.upstream.connect_timeout, "upstream.connect_timeout")?,
        dns_timeout: positive(parsed.upstream.dns_timeout, "upstream.dns_timeout")?,
        idle_timeout: positive(parsed.upstream.idle_timeout, "upstream.idle_timeout")?,
        tls: upstream_tls,
        parent_proxy: match &parsed.upstream.parent_proxy {
            Some(url) => Some(parse_parent_proxy(url).map_err(|m| invalid("upstream.parent_proxy", m))?),
            None => None,
        },
        parent_proxy_bypass: RuleSet::compile("upstream.parent_proxy_bypass", &parsed.upstream.parent_proxy_bypass)
            .map_err(|(i, PatternError(m))| invalid(format!("upstream.parent_proxy_bypass[{i}]"), m))?,
    };
    let server = Server {
        header_read_timeout: positive(parsed.server.header_read_timeout, "server.header_read_timeout")?,
        keepalive_timeout: positive(parsed.server.keepalive_timeout, "server.keepalive_timeout")?,
        tls_handshake_timeout: positive(parsed.server.tls_handshake_timeout, "server.tls_handshake_timeout")?,
        max_header_bytes: bounded_size(parsed.server.max_header_bytes, "server.max_header_bytes", 1024, 1 << 20)?,
        max_uri_bytes: bounded_size(parsed.server.max_uri_bytes, "server.max_uri_bytes", 256, 1 << 20)?,
        max_connections: match parsed.server.max_connections {
            0 => return Err(invalid("server.max_connections", "must be at least 1")),
            n => n,
        },
        shutdown_grace: parsed.server.shutdown_grace.0,
        body_read_timeout: positive(parsed.server.body_read_timeout, "server.body_read_timeout")?,
        max_buffered_body_bytes: match parsed.server.max_buffered_body_bytes.0 {
            0 => return Err(invalid("server.max_buffered_body_bytes", "must be greater than zero")),
            // A semaphore holds at most usize::MAX >> 3 permits; far above any memory.
            n => n.min(1 << 60),
        },
        max_admin_connections: match parsed.server.max_admin_connections {
            0 => return Err(invalid("server.max_admin_connections", "must be at least 1")),
            n => n,
        },
    };
    if server.max_uri_bytes > server.max_header_bytes {
        return Err(invalid("server.max_uri_bytes", "must not exceed server.max_header_bytes"));
    }
    let audit = Audit {
        file: parsed.audit.file.as_ref().map(|f| AuditFile {
            path: PathBuf::from(&f.path),
            chain: f.chain,
            sync: f.sync,
            key: f.key.as_ref().map(PathBuf::from),
            rotate_size: f.rotate.as_ref().and_then(|r| r.size).map(|size| size.0),
            rotate_daily: f.rotate.as_ref().is_some_and(|r| r.daily),
            retention: f.retention.map(|r| r.0),
        }),
        on_failure: parsed.audit.on_failure,
        checkpoints: parsed
            .audit
            .checkpoints
            .as_ref()
            .map(|c| AuditCheckpoints { every: c.every.0, signing_key: PathBuf::from(&c.signing_key) }),
        queue: match parsed.audit.queue {
            queue @ AUDIT_QUEUE_MIN..=AUDIT_QUEUE_MAX => queue,
            _ => {
                let message = format!("must be from {AUDIT_QUEUE_MIN} to {AUDIT_QUEUE_MAX} records");
                return Err(invalid("audit.queue", message));
            }
        },
        siem: siem::compile_sinks(&parsed.audit, &upstream.tls).map_err(|(key, m)| invalid(key, m))?,
        pseudonymize: siem::compile_pseudonymize(&parsed.audit).map_err(|(key, m)| invalid(key, m))?,
    };
    if audit.file.as_ref().is_some_and(|f| f.path.as_os_str().is_empty()) {
        return Err(invalid("audit.file.path", "must not be empty"));
    }
    if let Some(f) = &audit.file {
        if f.key.is_some() && !f.chain {
            return Err(invalid("audit.file.key", "keys the chain: it needs audit.file.chain: true"));
        }
        if f.rotate_size.is_some_and(|size| size < ROTATE_SIZE_MIN) {
            return Err(invalid("audit.file.rotate.size", format!("must be at least {ROTATE_SIZE_MIN} bytes (1KiB)")));
        }
        if parsed.audit.file.as_ref().and_then(|f| f.rotate.as_ref()).is_some_and(|r| r.size.is_none() && !r.daily) {
            return Err(invalid("audit.file.rotate", "says when to rotate: give size, daily: true, or both"));
        }
        if f.retention.is_some() && f.rotate_size.is_none() && !f.rotate_daily {
            return Err(invalid("audit.file.retention", "deletes rotated files: it needs audit.file.rotate"));
        }
    }
    match (&audit.checkpoints, &audit.file) {
        (Some(_), None) => {
            return Err(invalid("audit.checkpoints", "checkpoints the audit file: configure audit.file"))
        }
        (Some(_), Some(f)) if !f.chain => {
            return Err(invalid("audit.checkpoints", "checkpoints the chain: it needs audit.file.chain: true"));
        }
        (Some(c), _) if c.every.is_zero() => {
            return Err(invalid("audit.checkpoints.every", "must be greater than zero"))
        }
        _ => {}
    }

    Ok(Config {
        source: Source {
            path: path.to_owned(),
            files: referenced_files(path, &parsed),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            loaded_at: SystemTime::now(),
        },
        listeners,
        admin,
        identity,
        policy,
        upstream,
        audit,
        server,
        limits,
        state,
        teams,
        llm,
        actions,
        managed_settings,
        alerts,
        enroll,
        developer_page: compile_developer_page(&parsed.developer_page)?,
    })
}

/// `developer_page.host`: a DNS name (not an IP literal, no port), lowercase.
fn compile_developer_page(page: &file::DeveloperPage) -> Result<Option<Box<str>>, Invalid> {
    if !page.enabled {
        return Ok(None);
    }
    let key = "developer_page.host";
    let not_a_name = || invalid(key, format!("{:?} must be a host name (no IP address, no port)", page.host));
    if page.host.contains(':') {
        return Err(not_a_name());
    }
    match crate::target::Target::parse_authority(&format!("{}:80", page.host)) {
        Ok(crate::target::Target { host: crate::target::Host::Name(name), .. }) => Ok(Some(name)),
        Ok(_) => Err(not_a_name()),
        Err(error) => Err(invalid(key, format!("{:?}: {error}", page.host))),
    }
}

/// The config file and the files it names.
fn referenced_files(path: &Path, parsed: &file::File) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    files.extend(parsed.auth.users_file.iter().map(PathBuf::from));
    files.extend(parsed.auth.jwt.iter().filter_map(|jwt| jwt.jwks_file.as_ref()).map(PathBuf::from));
    for tls in parsed.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        files.extend([&tls.cert, &tls.key].into_iter().chain(&tls.client_ca).chain(&tls.crl).map(PathBuf::from));
    }
    files.extend(parsed.upstream.trust.extra_ca.iter().map(PathBuf::from));
    files.extend(parsed.audit.pseudonymize.iter().map(|pseudonymize| PathBuf::from(&pseudonymize.key)));
    if let Some(pair) = &parsed.upstream.client_cert {
        files.extend([PathBuf::from(&pair.cert), PathBuf::from(&pair.key)]);
    }
    for sink in parsed.alerts.iter().flat_map(|alerts| alerts.sinks.values()) {
        files.extend(sink.password_file.iter().map(PathBuf::from));
    }
    if let Some(enroll) = &parsed.auth.enroll {
        files.extend([PathBuf::from(&enroll.client_ca.cert), PathBuf::from(&enroll.client_ca.key)]);
    }
    if let Some(intercept) = parsed.intercept.as_ref().filter(|i| !i.hosts.is_empty()) {
        files.extend([PathBuf::from(&intercept.ca.cert), PathBuf::from(&intercept.ca.key)]);
    }
    files
}

fn compile_limits(parsed: &file::File) -> Result<Limits, Invalid> {
    let rate = |rpm: Option<u32>, key: String| match rpm {
        Some(0) => Err(invalid(key, "must be at least 1 (omit it for no limit)")),
        Some(n) if n > Rate::MAX_PER_MINUTE => {
            Err(invalid(key, format!("at most {} (one request per microsecond)", Rate::MAX_PER_MINUTE)))
        }
        Some(n) => Ok(Some(Limits::rate(n))),
        None => Ok(None),
    };
    let cap = |max: Option<u32>, key: String| match max {
        Some(0) => Err(invalid(key, "must be at least 1 (omit it for no limit)")),
        other => Ok(other),
    };
    let scope = |limits: Option<&file::ScopeLimits>, key: &str| -> Result<ScopeLimits, Invalid> {
        let Some(limits) = limits else { return Ok(ScopeLimits::default()) };
        Ok(ScopeLimits {
            rate: rate(limits.rpm, format!("{key}.rpm"))?,
            concurrent: cap(limits.concurrent, format!("{key}.concurrent"))?,
        })
    };
    let mut compiled = Limits::new(
        scope(parsed.limits.org.as_ref(), "limits.org")?,
        scope(parsed.limits.user.as_ref(), "limits.user")?,
        HashMap::new(),
    );
    for (name, team) in &parsed.teams {
        let Some(limits) = &team.limits else { continue };
        let key = |field: &str| format!("teams.{name}.limits.{field}");
        let team_limits = TeamLimits {
            team: ScopeLimits {
                rate: rate(limits.rpm, key("rpm"))?,
                concurrent: cap(limits.concurrent, key("concurrent"))?,
            },
            member: ScopeLimits {
                rate: rate(limits.user_rpm, key("user_rpm"))?,
                concurrent: cap(limits.user_concurrent, key("user_concurrent"))?,
            },
        };
        compiled.teams.insert(Arc::from(name.as_str()), team_limits);
    }
    Ok(compiled)
}

fn clone_user(user: &file::User) -> file::User {
    file::User { name: user.name.clone(), password_hash: user.password_hash.clone(), teams: user.teams.clone() }
}

/// Builds a listener's TLS server config; errors name the key (`cert`, `key`, `client_ca`, `crl`).
fn compile_listener_tls(tls: &file::ListenerTls) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    if tls.client_auth != ClientAuth::None && tls.client_ca.is_none() {
        return Err(("client_auth", "optional and required need client_ca".to_owned()));
    }
    if tls.client_auth == ClientAuth::None && (tls.client_ca.is_some() || tls.crl.is_some()) {
        return Err((
            "client_auth",
            "client_ca and crl are only used with client_auth: optional or required".to_owned(),
        ));
    }
    for (key, path) in [
        ("cert", Some(&tls.cert)),
        ("key", Some(&tls.key)),
        ("client_ca", tls.client_ca.as_ref()),
        ("crl", tls.crl.as_ref()),
    ] {
        if let Some(path) = path {
            if let Err(error) = std::fs::metadata(path) {
                return Err((key, format!("cannot read {path}: {error}")));
            }
        }
    }
    let files = tls::ListenerFiles {
        cert: Path::new(&tls.cert),
        key: Path::new(&tls.key),
        client_ca: tls.client_ca.as_deref().map(Path::new),
        client_auth: tls.client_auth,
        crl: tls.crl.as_deref().map(Path::new),
    };
    tls::server_config(&files).map_err(|error| (error.key, error.message))
}

/// Builds the shared upstream client config; errors name the key.
fn compile_upstream_tls(upstream: &file::Upstream) -> Result<Arc<rustls::ClientConfig>, (&'static str, String)> {
    for (index, path) in upstream.trust.extra_ca.iter().enumerate() {
        if let Err(error) = std::fs::metadata(path) {
            return Err((
                if index == 0 { "trust.extra_ca[0]" } else { "trust.extra_ca" },
                format!("cannot read {path}: {error}"),
            ));
        }
    }
    let files = tls::UpstreamFiles {
        system_roots: upstream.trust.system_roots,
        extra_ca: upstream.trust.extra_ca.iter().map(PathBuf::from).collect(),
        client_cert: upstream.client_cert.as_ref().map(|pair| (PathBuf::from(&pair.cert), PathBuf::from(&pair.key))),
    };
    let key = if upstream.client_cert.is_some() { "client_cert" } else { "trust" };
    tls::client_config(&files).map_err(|m| (key, m))
}

/// Parses `http://[user:pass@]host:port` or `https://…`.
fn parse_parent_proxy(url: &str) -> Result<ParentProxy, String> {
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL: write http://host:port"))?;
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (false, 80),
        "https" => (true, 443),
        other => return Err(format!("scheme {other:?} is not supported: use http:// or https://")),
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, authority) = match rest.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo), authority),
        None => (None, rest),
    };
    let target = Target::parse_with_default(authority, Some(default_port)).map_err(|e| e.to_string())?;
    let authorization = match userinfo {
        Some(userinfo) => {
            use base64::Engine;
            let decoded = percent_decode(userinfo).ok_or("invalid percent-encoding in the user information")?;
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(decoded)))
        }
        None => None,
    };
    let user = userinfo.map(|u| u.split(':').next().unwrap_or("")).map(|u| format!("{u}@")).unwrap_or_default();
    Ok(ParentProxy { target: target.clone(), tls, authorization, display: format!("{scheme}://{user}{target}") })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks `admin.console.oidc`: it signs in with the `auth.oidc` provider and opens the same session as the admin
/// token (so both must be configured), needs a client ID, at least one group, and a redirect URI to
/// `/ui/login/callback`.
fn console_oidc(
    console: &file::ConsoleOidc,
    admin: &file::Admin,
    auth: &file::Auth,
) -> Result<file::ConsoleOidc, Invalid> {
    let key = |name: &str| format!("admin.console.oidc.{name}");
    if auth.oidc.is_none() {
        return Err(invalid(
            "admin.console.oidc",
            "signs in with the auth.oidc identity provider: configure auth.oidc (issuer, audience)",
        ));
    }
    if admin.token.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            "admin.console.oidc",
            "the console is off without admin.token (its sessions end when the token changes): set admin.token",
        ));
    }
    if console.client_id.is_empty() {
        return Err(invalid(key("client_id"), "must not be empty"));
    }
    if console.groups.is_empty() || console.groups.iter().any(String::is_empty) {
        return Err(invalid(key("groups"), "name at least one group whose members may sign in (none empty)"));
    }
    let uri = url::Url::parse(&console.redirect_uri)
        .map_err(|e| invalid(key("redirect_uri"), format!("{:?} is not a URL: {e}", console.redirect_uri)))?;
    if !matches!(uri.scheme(), "https" | "http") || uri.host_str().is_none() {
        return Err(invalid(key("redirect_uri"), "must be an https:// (or http://) URL with a host"));
    }
    if uri.path() != "/ui/login/callback" || uri.query().is_some() || uri.fragment().is_some() {
        return Err(invalid(key("redirect_uri"), "must end in /ui/login/callback, without a query"));
    }
    Ok(console.clone())
}

fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("invalid address {text:?}: write IP:PORT, e.g. 127.0.0.1:3128 or [::1]:3128"))
}

fn bounded_size(size: ByteSize, key: &str, min: u64, max: u64) -> Result<usize, Invalid> {
    if size.0 < min || size.0 > max {
        return Err(invalid(key, format!("must be between {min} and {max} bytes")));
    }
    Ok(size.0 as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_text(text, Path::new("t.yaml"), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_config_compiles() {
        let config = load("listeners: [{name: p, bind: '127.0.0.1:0'}]\npolicy: {default: deny}\n").unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.server.max_header_bytes, 64 * 1024);
    }

    #[test]
    fn errors_point_at_the_entry() {
        let error = load("listeners: [{name: p, bind: '127.0.0.1:0'}]\npolicy:\n  default: deny\n  allow:\n    - ok.com\n    - '*'\n")
            .unwrap_err();
        assert!(error.starts_with("t.yaml:6:7: policy.allow[1]: invalid destination \"*\""), "{error}");
    }
}
