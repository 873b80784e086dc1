//! The `tollgate` command: parses arguments, sets up logging, and maps outcomes to exit codes
//! (0 ok, 1 runtime failure, 2 invalid config or usage).

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use tollgate::certs::{self, CaKind, CertError, Written};
use tollgate::config::{Config, DEFAULT_PATH};

/// The process's allocator: a request allocates and frees a few hundred small objects across worker threads,
/// where glibc's malloc spent about a tenth of the intercepted path's CPU (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An egress gateway for AI coding assistants")]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy.
    Run {
        /// Config file.
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary.
    Check {
        /// Config file.
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Also fetch what the config only names: the OpenID Connect discovery document and keys (`auth.oidc`).
        #[arg(long)]
        online: bool,
    },
    /// Explain what tollgate would do with a request: the decision, the rule, hours and limits that apply.
    /// Exit 0 allow, 1 deny.
    Explain {
        /// Config file.
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The principal.
        #[arg(long, required_unless_present = "token", conflicts_with = "token")]
        user: Option<String>,
        /// A bearer token (JWT) to verify as a request carrying it would be: prints the user, teams and region it
        /// names, or why it is refused (exit 1). With a target, action or --settings, explains those for its user.
        #[arg(long)]
        token: Option<String>,
        /// A team to assume (repeat for several); default: the configured user's teams.
        #[arg(long = "team")]
        teams: Vec<String>,
        /// The request method.
        #[arg(long, default_value = "CONNECT")]
        method: String,
        /// The model the request asks for.
        #[arg(long)]
        model: Option<String>,
        /// Resolve the name and check every address against the private-address guard.
        #[arg(long)]
        resolve: bool,
        /// Evaluate at this time (RFC 3339) instead of now, e.g. for team hours.
        #[arg(long)]
        at: Option<String>,
        /// An agent action to explain instead of a request: `file:write:/repos/x`, `bash:run:curl http://x`,
        /// `mcp:call:jira/create`, `tool:NAME`.
        #[arg(long, conflicts_with_all = ["method", "model", "resolve"])]
        action: Option<String>,
        /// Print what the user's Claude Code receives as managed settings and policy limits (the JSON and its
        /// checksum) instead of explaining a request.
        #[arg(long, conflicts_with_all = ["method", "model", "resolve", "action", "target"])]
        settings: bool,
        /// `host:port` or an `https://…` URL.
        #[arg(required_unless_present_any = ["action", "settings", "token"])]
        target: Option<String>,
    },
    /// Read a password on stdin and print its argon2id hash for `auth.users[].password_hash`.
    Passwd,
    /// Requests, tokens and spend per team and user, summed from the audit log (`audit.file.path` and its rotated
    /// files, compressed or not).
    Usage {
        /// Config file (for `audit.file.path`).
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Read these audit files or directories (`.gz` too) instead of the config's `audit.file.path` and its
        /// rotated files (the config is then not read).
        #[arg(long, value_name = "PATH", num_args = 1..)]
        audit: Vec<PathBuf>,
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Records from this long ago (`30d`, `12h`) or from an RFC 3339 time (`2026-05-01T00:00:00Z`).
        #[arg(long, default_value = tollgate::usage::DEFAULT_SINCE)]
        since: tollgate::report::Since,
        /// `table` (per team and user), or `csv` / `json` (per team, user and model).
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Coding-assistant sessions (by `X-Claude-Code-Session-Id`) read from the audit log: one row per session, the
    /// most recently active first; with SESSION_ID, that session's model requests and tool calls in order (exit 1
    /// when the log holds no record of it).
    Sessions {
        /// Config file (for `audit.file.path`).
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Read this audit file instead of the config's `audit.file.path` (the config is then not read).
        #[arg(long, value_name = "PATH")]
        audit: Option<PathBuf>,
        /// Only this team's sessions.
        #[arg(long, conflicts_with = "session")]
        team: Option<String>,
        /// Only this user's sessions.
        #[arg(long, conflicts_with = "session")]
        user: Option<String>,
        /// Records from this long ago (`1d`, `12h`) or from an RFC 3339 time (`2026-05-01T00:00:00Z`); a timeline
        /// reads the whole file.
        #[arg(long, default_value = tollgate::sessions::DEFAULT_SINCE, conflicts_with = "session")]
        since: tollgate::report::Since,
        /// `table`, `csv` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// A session id: print its timeline instead of the list.
        session: Option<String>,
    },
    /// The fleet inventory: per user, the clients (client and version from User-Agent) and sessions seen, first
    /// and last seen, and the managed settings and policy limits last delivered. Asks the running gateway's
    /// `GET /admin/fleet` (admin.bind, admin.token from the config): the inventory lives in its state backend.
    Fleet {
        /// Config file (for `admin.bind` and `admin.token`).
        #[arg(short, long, env = "TOLLGATE_CONFIG", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Only the users whose last delivered settings or policy limits are not the current ones.
        #[arg(long)]
        stale: bool,
        /// Ask the admin listener at this address (`HOST:PORT`) instead of the config's `admin.bind`.
        #[arg(long, value_name = "ADDRESS")]
        admin: Option<std::net::SocketAddr>,
        /// `table`, `csv` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Sign in with the organisation's identity provider (OAuth 2.0 device authorization grant): prints a page and a
    /// code to approve in a browser, then stores the refresh token in ~/.config/tollgate (0600). With --cert, also
    /// has the TLS proxy listener issue a short-lived client certificate (cert.pem, key.pem) and prints the settings
    /// that use it. Exit 1 when the sign-in was denied or expired, 2 on bad arguments, 3 when the identity provider
    /// or the proxy could not be reached.
    Login {
        /// The issuer URL (default: --config's auth.oidc.issuer, config.yaml's issuer, the last sign-in's).
        #[arg(long)]
        issuer: Option<String>,
        /// The public client ID (default: auth.oidc.device_client_id of --config, config.yaml's client_id, the last
        /// sign-in's).
        #[arg(long)]
        client_id: Option<String>,
        /// A gateway config to read auth.oidc from.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The scopes to ask for (default: "openid profile email offline_access").
        #[arg(long)]
        scope: Option<String>,
        /// A CA certificate file to trust besides the system roots (the IdP's, the proxy's); repeat for several.
        #[arg(long, value_name = "FILE")]
        ca: Vec<PathBuf>,
        /// Also enroll a client certificate for the forward proxy (needs --proxy, or proxy: in config.yaml).
        #[arg(long)]
        cert: bool,
        /// The TLS proxy listener that enrolls certificates, `https://HOST:PORT`.
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
    },
    /// Print a current access token from the last `tollgate login`, refreshed when it has less than 5 minutes left
    /// (for Claude Code's apiKeyHelper, or with --bearer its proxyAuthHelper); no newline unless stdout is a
    /// terminal. Exit 1 (and "run `tollgate login`" on
    /// stderr) when a new sign-in is needed, 3 when the identity provider could not be reached and the token has
    /// expired.
    Token {
        /// Print `Bearer TOKEN`, the whole Proxy-Authorization value (proxyAuthHelper).
        #[arg(long)]
        bearer: bool,
    },
    /// Certificate authorities (ECDSA P-256) for the TLS listener, interception and mTLS clients.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates for the TLS listener (`server`) and mTLS clients (`client`), signed by a CA in the same dir.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Check, on a developer's machine, each step from Claude Code to the model API through tollgate, and say
    /// what to fix (exit 1 when a step fails).
    Doctor {
        /// The model API to check, `HOST[:PORT]` (default: ANTHROPIC_BASE_URL's host, else api.anthropic.com:443).
        #[arg(long, value_name = "HOST[:PORT]")]
        model_host: Option<String>,
        /// Claude Code's managed settings file (default: this system's).
        #[arg(long, value_name = "FILE")]
        managed_settings: Option<PathBuf>,
        /// How long each network step may take.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        format: DoctorFormat,
    },
}

/// How `doctor` prints its report.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DoctorFormat {
    Text,
    Json,
}

/// How `usage` and `sessions` print their report.
#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
}

impl From<ReportFormat> for tollgate::report::Format {
    fn from(format: ReportFormat) -> Self {
        match format {
            ReportFormat::Table => Self::Table,
            ReportFormat::Csv => Self::Csv,
            ReportFormat::Json => Self::Json,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files; names the first broken record, and the torn lines it skipped; across
    /// the files of a rotated series, a missing file or files out of order.
    Verify {
        /// Audit files (`.gz` too), or directories: every series in them, in order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The chain key (`audit.file.key`): keyed records are checked with it, and every record must be keyed.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Signed checkpoints (`STEM.checkpoints.jsonl`, kept elsewhere) to check the files against: a tail cut
        /// from a file is found.
        #[arg(long, value_name = "FILE", requires = "public_key")]
        checkpoints: Option<PathBuf>,
        /// The checkpoints' public key (`audit-sign.pub`).
        #[arg(long, value_name = "FILE", requires = "checkpoints")]
        public_key: Option<PathBuf>,
    },
    /// Make the audit keys: the chain key (`audit.key`), the checkpoint signing key (`audit-sign.key`), both mode
    /// 0600, and its public key (`audit-sign.pub`). Never overwrites.
    Keygen {
        /// Directory for the files (created when missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the tollgate CA (`tollgate-ca.pem`/`.key`), or with --client the mTLS clients CA (`clients-ca.*`).
    Init {
        /// Directory for the files (created when missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Create the CA that signs mTLS client certificates instead.
        #[arg(long)]
        client: bool,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write `server.pem` (full chain) and `server.key`, signed by `tollgate-ca` (created when missing).
    Server {
        /// DNS name for the certificate (the first is the CN); repeat for more.
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// IP address for the certificate; repeat for more.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// Directory for the files (created when missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite `server.pem` and `server.key` (never the CA).
        #[arg(long)]
        force: bool,
    },
    /// Write `USER.pem` (full chain) and `USER.key` for mTLS, signed by `clients-ca` (created when missing).
    Client {
        /// User name: the CN, a SAN URI `spiffe://tollgate/user/USER`, and a SAN email when it holds an '@'.
        #[arg(long)]
        user: String,
        /// Team, written as the OU.
        #[arg(long)]
        team: Option<String>,
        /// Directory for the files (created when missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite the user's files (never the CA).
        #[arg(long)]
        force: bool,
    },
}

/// `println!` for a command's output that stops quietly once the reader has gone (`tollgate check | head`): a closed
/// pipe is not the command's failure, and `println!` would panic on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `text` as a command's output, like `out!` without the newline.
fn write_out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_writer = init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, online } => check(&config, online),
        Command::Explain { config, user, token, teams, method, model, resolve, at, action, settings, target } => {
            let at = match at.map(|text| parse_at(&text).map_err(|e| format!("--at {text:?}: {e}"))) {
                Some(Ok(at)) => at,
                Some(Err(message)) => {
                    eprintln!("tollgate: {message}");
                    return ExitCode::from(2);
                }
                None => std::time::SystemTime::now(),
            };
            let mut question = tollgate::explain::Question {
                user: user.unwrap_or_default(),
                teams,
                method,
                model,
                target: target.clone().unwrap_or_default(),
                resolve,
                at,
            };
            if let Some(token) = token {
                let principal = match explain_token(&config, &token, at) {
                    Ok(principal) => principal,
                    Err(code) => return code,
                };
                if target.is_none() && action.is_none() && !settings {
                    return ExitCode::SUCCESS;
                }
                question.user = principal.name.to_string();
                if question.teams.is_empty() {
                    question.teams = principal.teams.iter().map(|team| team.to_string()).collect();
                }
            }
            match action {
                Some(action) => explain_action(&config, &question, &action),
                None if settings => explain_settings(&config, &question),
                None => explain(&config, &question),
            }
        }
        Command::Passwd => passwd(),
        Command::Usage { config, audit, team, user, since, format } => {
            let filter = tollgate::report::Filter { team, user, since: since.start(std::time::SystemTime::now()) };
            usage(&config, audit, filter, format.into())
        }
        Command::Sessions { config, audit, team, user, since, format, session } => {
            let audit = match audit.map_or_else(|| audit_file(&config, "sessions are read from"), Ok) {
                Ok(audit) => audit,
                Err(code) => return code,
            };
            match session {
                Some(id) => timeline(&audit, &id, format.into()),
                None => {
                    let filter =
                        tollgate::report::Filter { team, user, since: since.start(std::time::SystemTime::now()) };
                    sessions(&audit, filter, format.into())
                }
            }
        }
        Command::Fleet { config, stale, admin, format } => fleet(&config, stale, admin, format.into()),
        Command::Audit { command: AuditCommand::Verify { paths, key, checkpoints, public_key } } => {
            verify(&paths, key.as_deref(), checkpoints.as_deref().zip(public_key.as_deref()))
        }
        Command::Audit { command: AuditCommand::Keygen { dir } } => keygen(&dir),
        Command::Login { issuer, client_id, config, scope, ca, cert, proxy } => {
            let options =
                tollgate::login::LoginOptions { issuer, client_id, scope, ca, config, certificate: cert, proxy };
            login_command(async move { tollgate::login::login(options, &mut std::io::stdout()).await })
        }
        Command::Doctor { model_host, managed_settings, timeout, format } => {
            doctor(model_host, managed_settings, timeout, format)
        }
        Command::Token { bearer } => login_command(async move {
            use std::io::{IsTerminal, Write};
            let token = tollgate::login::token().await?;
            // A helper's whole stdout becomes a header value: no newline unless a person is reading.
            let end = if std::io::stdout().is_terminal() { "\n" } else { "" };
            let mut stdout = std::io::stdout();
            write!(stdout, "{}{token}{end}", if bearer { "Bearer " } else { "" })
                .and_then(|()| stdout.flush())
                .map_err(|e| tollgate::login::LoginError::Usage(format!("writing the token: {e}")))
        }),
        Command::Ca { command: CaCommand::Init { dir, client, force } } => {
            let kind = if client { CaKind::Clients } else { CaKind::Tollgate };
            written(certs::init_ca(&dir, kind, force))
        }
        Command::Cert { command: CertCommand::Server { names, ips, dir, force } } => {
            written(certs::server_cert(&dir, &names, &ips, force))
        }
        Command::Cert { command: CertCommand::Client { user, team, dir, force } } => {
            written(certs::client_cert(&dir, &user, team.as_deref(), force))
        }
    }
}

/// Runs `login` or `token` on a small runtime; a failure is one line on stderr and its exit code.
/// `tollgate doctor`: the report on stdout; exit 1 when a step fails.
fn doctor(
    model_host: Option<String>,
    managed_settings: Option<PathBuf>,
    timeout: std::time::Duration,
    format: DoctorFormat,
) -> ExitCode {
    use tollgate::doctor::{environment::default_managed_settings, Environment, Options};
    let managed_settings = managed_settings.unwrap_or_else(default_managed_settings);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let environment = Environment::read(std::env::vars(), home.as_deref(), &managed_settings);
    let options = Options { model_host, managed_settings, timeout };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(tollgate::doctor::run(&environment, &options));
    match format {
        DoctorFormat::Text => write_out(&report.text()),
        DoctorFormat::Json => out!("{}", serde_json::to_string_pretty(&report).expect("JSON")),
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn login_command(work: impl std::future::Future<Output = Result<(), tollgate::login::LoginError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// An RFC 3339 time with any offset (`2026-12-01T09:00:00+01:00`), or in UTC without one.
fn parse_at(text: &str) -> Result<std::time::SystemTime, String> {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(at) => Ok(at.into()),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|e| e.to_string()),
    }
}

/// Logs go to stderr in batches, off the request path (`tollgate::logging`). Keep the guard alive: dropping it
/// writes what is buffered.
fn init_logging(format: LogFormat) -> tollgate::logging::FlushGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tollgate::logging::batched_stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("{error}");
        ExitCode::from(2)
    })
}

fn check(path: &std::path::Path, online: bool) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| match l.mode {
            tollgate::config::file::ListenerMode::Gateway => format!("{} {} (gateway)", l.name, l.bind),
            tollgate::config::file::ListenerMode::Proxy => format!("{} {}", l.name, l.bind),
        })
        .collect();
    out!("{}: ok", path.display());
    out!("  listeners: {}", listeners.join(", "));
    out!("  admin: {}", config.admin.as_ref().map_or("off".to_owned(), |a| a.bind.to_string()));
    out!("  policy: {} rules", config.policy.rule_count());
    out!("  users: {}", config.identity.user_count());
    out!("  audit: {}", config.audit.file.as_ref().map_or("off".to_owned(), |f| f.path.display().to_string()));
    if let Some(file) = &config.audit.file {
        let mut notes = Vec::new();
        if let Some(key) = &file.key {
            if let Err(error) = tollgate::audit::keys::load_chain_key(key) {
                eprintln!("tollgate: audit.file.key: {error}");
                return ExitCode::from(2);
            }
            notes.push("chain keyed (HMAC-SHA256)".to_owned());
        }
        match (file.rotate_size, file.rotate_daily) {
            (Some(size), true) => notes.push(format!("rotated at {size} bytes and at UTC midnight")),
            (Some(size), false) => notes.push(format!("rotated at {size} bytes")),
            (None, true) => notes.push("rotated at UTC midnight".to_owned()),
            (None, false) => {}
        }
        if let Some(retention) = file.retention {
            let days = retention.as_secs() / 86_400;
            let kept = if retention.as_secs() % 86_400 == 0 {
                format!("{days} days")
            } else {
                humantime::format_duration(retention).to_string()
            };
            notes.push(format!("rotated files kept {kept}"));
        }
        if let Some(checkpoints) = &config.audit.checkpoints {
            if let Err(error) = tollgate::audit::keys::load_signing_key(&checkpoints.signing_key) {
                eprintln!("tollgate: audit.checkpoints.signing_key: {error}");
                return ExitCode::from(2);
            }
            notes.push(format!("signed checkpoints every {}", humantime::format_duration(checkpoints.every)));
        }
        if !notes.is_empty() {
            out!("    {}", notes.join(", "));
        }
    }
    let llm = &config.llm;
    if let Some(intercept) = &llm.intercept {
        let ca = intercept.ca_cert.display();
        let state = if intercept.ca_cert.exists() { "" } else { " (created on first start)" };
        let telemetry = match llm.telemetry {
            tollgate::config::file::Telemetry::Drop => ", telemetry dropped",
            tollgate::config::file::Telemetry::Pass => "",
        };
        out!("  intercept: {} host rules, CA {ca}{state}{telemetry}", intercept.hosts.len());
    }
    if !llm.upstreams.is_empty() {
        let names: Vec<&str> = llm.upstreams.keys().map(|name| &**name).collect();
        out!("  upstreams: {}; {} routing rules", names.join(", "), llm.routes.len());
    }
    if let Some(dlp) = &llm.dlp {
        let names = dlp.detector_names().collect::<Vec<_>>().join(", ");
        out!("  dlp: {names} ({})", if dlp.blocks() { "block" } else { "log" });
    }
    if let Some(alerts) = &config.alerts {
        let sinks: Vec<&str> = alerts.sinks.iter().map(|sink| &*sink.name).collect();
        out!("  alerts: {} rules to {}", alerts.rules.len(), sinks.join(", "));
    }
    if let Some(provider) = config.identity.oidc() {
        out!(
            "  oidc: issuer {}, audience {}, keys refreshed every {}",
            provider.issuer(),
            provider.audience(),
            humantime::format_duration(provider.refresh_interval())
        );
    }
    if let Some(enroll) = &config.enroll {
        out!(
            "  enroll: POST /enroll on {}, client certificates valid {}",
            enroll.listener,
            humantime::format_duration(enroll.validity)
        );
    }
    out!("  sha256: {}", config.source.sha256);
    match config.identity.oidc().filter(|_| online) {
        Some(provider) => check_oidc_online(provider),
        None => ExitCode::SUCCESS,
    }
}

/// `tollgate check --online`: fetches the discovery document and the keys, and says what it found.
fn check_oidc_online(provider: &tollgate::identity::Provider) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Err(error.into())),
    };
    match runtime.block_on(provider.probe()) {
        Ok(found) => {
            out!("  oidc discovery: ok, jwks_uri {}", found.jwks_uri);
            out!("  oidc keys: {}", found.keys.join(", "));
            if let Some(endpoint) = &found.device_authorization_endpoint {
                out!("  oidc device authorization: {endpoint}");
            }
            if let Some(endpoint) = &found.token_endpoint {
                out!("  oidc token endpoint: {endpoint}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            out!("  oidc discovery: failed: {error}");
            eprintln!("tollgate: the identity provider could not be reached or answered wrongly: {error}");
            ExitCode::from(1)
        }
    }
}

/// `tollgate explain --token`: prints who the token names, or why it is refused (exit 1).
fn explain_token(
    path: &std::path::Path,
    token: &str,
    at: std::time::SystemTime,
) -> Result<tollgate::identity::Principal, ExitCode> {
    let config = load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| {
        eprintln!("tollgate: {error}");
        ExitCode::from(1)
    })?;
    match runtime.block_on(tollgate::explain::explain_token(&config, token, at)) {
        Ok(answer) => {
            write_out(&answer.report);
            Ok(answer.principal)
        }
        Err(reason) => {
            out!("token:     refused");
            out!("reason:    {reason}");
            Err(ExitCode::from(1))
        }
    }
}

fn explain(path: &std::path::Path, question: &tollgate::explain::Question) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Err(error.into())),
    };
    match runtime.block_on(tollgate::explain::explain(&config, question)) {
        Ok(answer) => {
            write_out(&answer.report);
            match answer.decision {
                tollgate::policy::Decision::Allow { .. } => ExitCode::SUCCESS,
                tollgate::policy::Decision::Deny { .. } => ExitCode::from(1),
            }
        }
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::from(2)
        }
    }
}

fn explain_settings(path: &std::path::Path, question: &tollgate::explain::Question) -> ExitCode {
    match load(path) {
        Ok(config) => {
            write_out(&tollgate::explain::explain_settings(&config, question));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn explain_action(path: &std::path::Path, question: &tollgate::explain::Question, action: &str) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match tollgate::explain::explain_action(&config, question, action) {
        Ok(answer) => {
            write_out(&answer.report);
            match answer.decision.verdict {
                tollgate::actions::rules::Verdict::Allow => ExitCode::SUCCESS,
                tollgate::actions::rules::Verdict::Deny => ExitCode::from(1),
            }
        }
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Audit writers are woken when a worker runs out of work, so one write takes a whole burst of records.
    tollgate::audit::install_park_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(tollgate::audit::worker_parks)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return report(Err(error.into())),
    };
    report(runtime.block_on(serve(config)))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let path = config.source.path.clone();
    let running = tollgate::app::start(config).await?;
    for (name, address) in &running.listeners {
        tracing::info!(listener = %name, %address, config = %path.display(), "listening");
    }
    tracing::info!(backend = running.shared.limiter.backend_name(), "state backend for limits");
    if let Some(address) = running.admin {
        tracing::info!(%address, "admin endpoints: /metrics /healthz /readyz");
    }
    wait_for_shutdown(&running).await?;
    tracing::info!("shutting down: no new connections; open tunnels may finish within the grace period");
    let report = running.shutdown().await;
    tracing::info!(
        tunnels_cut = report.tunnels_cut,
        "stopped ({} tunnels cut after the grace period)",
        report.tunnels_cut
    );
    if report.audit_unwritten > 0 {
        let unwritten = report.audit_unwritten;
        tracing::error!(
            audit_unwritten = unwritten,
            "{unwritten} audit records were not written: the sink did not take them"
        );
        anyhow::bail!(
            "{unwritten} audit records were not written: the audit sink did not take them within server.shutdown_grace"
        );
    }
    Ok(())
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the config.
async fn wait_for_shutdown(running: &tollgate::app::Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => {
                // The outcome is logged and counted by reload itself.
                let _ = tollgate::reload::reload(&running.shared);
            }
        }
    }
}

fn passwd() -> ExitCode {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        return report(Err(anyhow::Error::new(error).context("reading the password from stdin")));
    }
    let password = input.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&input);
    if password.is_empty() {
        eprintln!("tollgate: empty password: write it on stdin, e.g. `printf %s 's3cret' | tollgate passwd`");
        return ExitCode::from(2);
    }
    report(tollgate::identity::hash_password(password).map(|hash| out!("{hash}")).map_err(anyhow::Error::msg))
}

/// Prints the usage report of the audit log (`audit`, or the config's `audit.file.path` with its rotated files);
/// lines that are not records are counted on stderr. Exit 2 without `audit.file`, 1 when a file cannot be read.
fn usage(
    path: &Path,
    audit: Vec<PathBuf>,
    filter: tollgate::report::Filter,
    format: tollgate::report::Format,
) -> ExitCode {
    let audit = if audit.is_empty() {
        match audit_file(path, "usage is summed from") {
            Ok(audit) => vec![audit],
            Err(code) => return code,
        }
    } else {
        audit
    };
    let shown = audit.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let report = match tollgate::usage::read_series(&audit, filter) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tollgate: {shown}: {error}");
            return ExitCode::from(1);
        }
    };
    write_out(&report.render(format));
    skipped(Path::new(&shown), report.invalid_lines(), report.first_invalid_line());
    ExitCode::SUCCESS
}

/// Prints the session listing of the audit file; lines that are not records are counted on stderr, as are the
/// sessions left out when the format (CSV) has no place for the note. Exit 1 when the file cannot be read.
fn sessions(audit: &Path, filter: tollgate::report::Filter, format: tollgate::report::Format) -> ExitCode {
    let listing = match tollgate::sessions::list_series(&[audit.to_owned()], filter) {
        Ok(listing) => listing,
        Err(error) => {
            eprintln!("tollgate: {}: {error}", audit.display());
            return ExitCode::from(1);
        }
    };
    write_out(&listing.render(format));
    if format == tollgate::report::Format::Csv {
        listing.notes().iter().for_each(|note| eprintln!("tollgate: {note}"));
    }
    skipped(audit, listing.invalid_lines(), listing.first_invalid_line());
    ExitCode::SUCCESS
}

/// Prints one session's timeline. Exit 1 when the file cannot be read or holds no record of the session.
fn timeline(audit: &Path, id: &str, format: tollgate::report::Format) -> ExitCode {
    let timeline = match tollgate::sessions::timeline_series(&[audit.to_owned()], id) {
        Ok(timeline) => timeline,
        Err(error) => {
            eprintln!("tollgate: {}: {error}", audit.display());
            return ExitCode::from(1);
        }
    };
    if !timeline.found() {
        eprintln!("tollgate: {}: no record of session {id:?}", audit.display());
        skipped(audit, timeline.invalid_lines(), timeline.first_invalid_line());
        return ExitCode::from(1);
    }
    write_out(&timeline.render(format));
    if format == tollgate::report::Format::Csv {
        timeline.notes().iter().for_each(|note| eprintln!("tollgate: {note}"));
    }
    skipped(audit, timeline.invalid_lines(), timeline.first_invalid_line());
    ExitCode::SUCCESS
}

/// Prints the fleet inventory the running gateway keeps. Exit 2 when the config does not load or has no admin
/// listener or token, 1 when the gateway cannot be asked.
fn fleet(path: &Path, stale: bool, admin: Option<std::net::SocketAddr>, format: tollgate::report::Format) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some((bind, Some(token))) = config.admin.as_ref().map(|admin| (admin.bind, admin.token.clone())) else {
        eprintln!(
            "tollgate: {}: the fleet inventory is read from the running gateway's GET /admin/fleet: configure \
             admin.bind and admin.token",
            path.display()
        );
        return ExitCode::from(2);
    };
    let address = admin.unwrap_or_else(|| tollgate::fleet::admin_address(bind));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Err(error.into())),
    };
    let timeout = std::time::Duration::from_secs(30);
    match runtime.block_on(tollgate::fleet::ask(address, &token, stale, format, timeout)) {
        Ok(body) => {
            write_out(&body);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate: {error}");
            ExitCode::from(1)
        }
    }
}

/// The config's `audit.file.path`, which the reports read. Exit 2 when the config does not load or has no
/// `audit.file`; `reads` says what the report does with the file (`usage is summed from`).
fn audit_file(path: &Path, reads: &str) -> Result<PathBuf, ExitCode> {
    let config = load(path)?;
    match config.audit.file {
        Some(file) => Ok(file.path),
        None => {
            eprintln!(
                "tollgate: {}: audit.file is not configured: {reads} the audit log at audit.file.path",
                path.display()
            );
            Err(ExitCode::from(2))
        }
    }
}

/// Says on stderr how many lines of the audit file were not records, and the first.
fn skipped(audit: &Path, count: u64, first: Option<u64>) {
    if let Some(first) = first {
        let lines = if count == 1 { "line is" } else { "lines are" };
        eprintln!(
            "tollgate: {}: {count} {lines} not a JSON audit record and skipped (the first: line {first})",
            audit.display()
        );
    }
}

/// Checks each series' chain: `FILE: ok, N records` per file (and the torn lines skipped, by number), or
/// `FILE: broken at line N: …`, a missing or misplaced file, a checkpoint that does not hold, and exit 1; exit 2
/// when a key or the checkpoints cannot be read, or the records are keyed and no key was given.
fn verify(paths: &[PathBuf], key: Option<&Path>, checkpoints: Option<(&Path, &Path)>) -> ExitCode {
    let key = match key.map(tollgate::audit::keys::load_chain_key).transpose() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::from(2);
        }
    };
    let loaded = checkpoints.map(|(source, public_key)| {
        let public_key = tollgate::audit::keys::load_public_key(public_key).map_err(|error| error.to_string())?;
        Ok::<_, String>((source, tollgate::audit::read_checkpoints(source)?, public_key))
    });
    let loaded = match loaded.transpose() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::from(2);
        }
    };
    let check = loaded.as_ref().map(|(source, checkpoints, public_key)| tollgate::audit::CheckpointCheck {
        source,
        checkpoints,
        public_key,
    });
    let series = match tollgate::audit::rotate::series_of(paths) {
        Ok(series) => series,
        Err(error) => {
            eprintln!("tollgate: {error}");
            return ExitCode::from(1);
        }
    };
    if series.iter().all(Vec::is_empty) {
        eprintln!(
            "tollgate: no audit files in {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(1);
    }
    let mut broken = false;
    let mut needs_key = false;
    if let Some(check) = &check {
        let report = tollgate::audit::verify_signatures(check);
        report.lines.iter().for_each(|line| out!("{line}"));
        broken |= report.broken;
    }
    for files in series.iter().filter(|files| !files.is_empty()) {
        let report = tollgate::audit::verify_series(files, key.as_ref(), check.as_ref());
        for line in &report.lines {
            out!("{line}");
        }
        for error in &report.errors {
            eprintln!("{error}");
        }
        broken |= report.broken;
        needs_key |= report.needs_key;
    }
    if needs_key {
        ExitCode::from(2)
    } else if broken {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes the audit keys and says what to configure.
fn keygen(dir: &Path) -> ExitCode {
    match tollgate::audit::keys::keygen(dir) {
        Ok(generated) => {
            out!("wrote {} (chain key, mode 0600)", generated.chain_key.display());
            out!("wrote {} (checkpoint signing key, mode 0600)", generated.signing_key.display());
            out!("wrote {} (public key: keep a copy away from this machine)", generated.public_key.display());
            out!(
                "configure: audit: {{file: {{key: {}}}, checkpoints: {{every: 1m, signing_key: {}}}}}",
                generated.chain_key.display(),
                generated.signing_key.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate: {error}");
            ExitCode::from(1)
        }
    }
}

/// Prints what a certificate command wrote and what to configure next; a bad name is a usage error (2).
fn written(result: Result<Written, CertError>) -> ExitCode {
    match result {
        Ok(written) => {
            print!("{written}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate: {error}");
            match error {
                CertError::InvalidName { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::from(1)
        }
    }
}
