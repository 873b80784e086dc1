//! Reload: a whole new snapshot or none. `SIGHUP`, `POST /admin/reload` and a change of the config file (or a
//! file it names) build a new config; an invalid one is refused and counted, and the running one stays. New
//! requests use the new snapshot at once; open tunnels whose principal or destination it denies are closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError};
use crate::intercept::ca::Minter;
use crate::policy::Decision;
use crate::shared::{stamp, Shared, Watched};

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub version: u64,
    pub sha256: String,
    /// Open tunnels the new policy denies, now closed.
    pub tunnels_revoked: usize,
    /// Changes that only take effect after a restart (listener addresses, the state backend).
    pub needs_restart: Vec<String>,
}

/// Builds a whole new snapshot from the config file; on any error the current one stays.
pub fn reload(shared: &Shared) -> Result<ReloadReport, ConfigError> {
    let _one_at_a_time = shared.reloading.lock().unwrap_or_else(|p| p.into_inner());
    let current = shared.config.load_full();
    // Stamped before reading: a write that lands after the read still differs, and is reloaded.
    let before = stamp(&current.source.files);
    let refuse = |error: ConfigError| {
        note_watched(shared, current.source.files.clone(), before.clone());
        shared.metrics.config_reload(false);
        tracing::error!(error = %error, "config reload refused; the running config stays");
        error
    };
    let loaded = Config::load(&current.source.path).map_err(refuse)?;
    let minter = match &loaded.llm.intercept {
        Some(intercept) => Some(Arc::new(Minter::open(intercept).map_err(|message| {
            refuse(ConfigError {
                file: current.source.path.display().to_string(),
                mark: None,
                path: "intercept.ca".to_owned(),
                message,
            })
        })?)),
        None => None,
    };
    let needs_restart = restart_only_changes(&current, &loaded);
    for change in &needs_restart {
        tracing::warn!(change = %change, "config change needs a restart to take effect");
    }
    let sha256 = loaded.source.sha256.clone();
    let stamps = if loaded.source.files == current.source.files { before } else { stamp(&loaded.source.files) };
    note_watched(shared, loaded.source.files.clone(), stamps);
    shared.scim.attach(&loaded);
    let loaded = Arc::new(loaded);
    shared.alerts.configure(loaded.alerts.as_deref(), &shared.metrics);
    shared.config.store(loaded.clone());
    shared.minter.store(minter);
    let version = shared.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    shared.metrics.config_reload(true);
    let tunnels_revoked = revoke_denied_tunnels(shared, &loaded);
    tracing::info!(version, sha256 = %sha256, tunnels_revoked, "config reloaded");
    Ok(ReloadReport { version, sha256, tunnels_revoked, needs_restart })
}

fn note_watched(shared: &Shared, files: Vec<PathBuf>, stamps: Vec<Option<(SystemTime, u64)>>) {
    *shared.watched.lock().unwrap_or_else(|p| p.into_inner()) = Watched { files, stamps };
}

/// The watched files' stamps now, when they differ from the last reload's (or refusal's).
fn watched_files_changed(shared: &Shared) -> Option<Vec<Option<(SystemTime, u64)>>> {
    let watched = shared.watched.lock().unwrap_or_else(|p| p.into_inner());
    let now = stamp(&watched.files);
    (now != watched.stamps).then_some(now)
}

/// Closes the tunnels whose principal the new config no longer knows (or knows differently), or whose
/// destination it denies.
fn revoke_denied_tunnels(shared: &Shared, config: &Config) -> usize {
    let now = shared.clock.now();
    shared.revoke_tunnels(|tunnel| {
        config.identity.refresh(&tunnel.principal, now).is_ok_and(|principal| {
            matches!(config.policy.decide(&tunnel.target, &principal.teams, now), Decision::Allow { .. })
        })
    })
}

/// What a reload cannot change in a running process.
fn restart_only_changes(current: &Config, loaded: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for listener in &loaded.listeners {
        match current.listeners.iter().find(|l| l.name == listener.name) {
            Some(old) if old.bind == listener.bind => {}
            Some(old) => {
                changes.push(format!("listener {} moves from {} to {}", listener.name, old.bind, listener.bind))
            }
            None => changes.push(format!("new listener {} on {}", listener.name, listener.bind)),
        }
    }
    for old in &current.listeners {
        if !loaded.listeners.iter().any(|l| l.name == old.name) {
            changes.push(format!("listener {} is removed", old.name));
        }
    }
    if current.admin.as_ref().map(|a| a.bind) != loaded.admin.as_ref().map(|a| a.bind) {
        changes.push("admin.bind changed".to_owned());
    }
    if current.state.backend != loaded.state.backend
        || current.state.redis_url != loaded.state.redis_url
        || current.state.path != loaded.state.path
    {
        changes.push("state backend changed".to_owned());
    }
    if current.audit.file.as_ref().map(|f| &f.path) != loaded.audit.file.as_ref().map(|f| &f.path) {
        changes.push("audit.file.path changed".to_owned());
    }
    if current.audit.file.as_ref().map(|f| f.chain) != loaded.audit.file.as_ref().map(|f| f.chain) {
        changes.push("audit.file.chain changed".to_owned());
    }
    // The writer thread and its queue are set up once, at start.
    if current.audit.file.as_ref().map(|f| f.sync) != loaded.audit.file.as_ref().map(|f| f.sync) {
        changes.push("audit.file.sync changed".to_owned());
    }
    let keyed = |config: &Config| config.audit.file.as_ref().map(|f| f.key.clone());
    let rotated = |config: &Config| config.audit.file.as_ref().map(|f| (f.rotate_size, f.rotate_daily, f.retention));
    let checkpoints = |config: &Config| config.audit.checkpoints.as_ref().map(|c| (c.every, c.signing_key.clone()));
    if keyed(current) != keyed(loaded) {
        changes.push("audit.file.key changed".to_owned());
    }
    if rotated(current) != rotated(loaded) {
        changes.push("audit.file.rotate or audit.file.retention changed".to_owned());
    }
    if checkpoints(current) != checkpoints(loaded) {
        changes.push("audit.checkpoints changed".to_owned());
    }
    if current.audit.on_failure != loaded.audit.on_failure {
        changes.push("audit.on_failure changed".to_owned());
    }
    if current.audit.queue != loaded.audit.queue {
        changes.push("audit.queue changed".to_owned());
    }
    // The SIEM spools and delivery threads too.
    if !current.audit.siem.iter().map(|sink| sink.settings()).eq(loaded.audit.siem.iter().map(|sink| sink.settings())) {
        changes.push("audit.siem changed".to_owned());
    }
    let pseudonymize = |config: &Config| {
        config
            .audit
            .pseudonymize
            .as_ref()
            .map(|pseudonymize| (pseudonymize.fields.clone(), pseudonymize.key_fingerprint))
    };
    if pseudonymize(current) != pseudonymize(loaded) {
        changes.push("audit.pseudonymize changed".to_owned());
    }
    // The connection and buffer semaphores are sized once, at start.
    if current.server.max_connections != loaded.server.max_connections {
        changes.push("server.max_connections changed".to_owned());
    }
    if current.server.max_buffered_body_bytes != loaded.server.max_buffered_body_bytes {
        changes.push("server.max_buffered_body_bytes changed".to_owned());
    }
    if current.server.max_admin_connections != loaded.server.max_admin_connections {
        changes.push("server.max_admin_connections changed".to_owned());
    }
    changes
}

/// Reloads when the config file or a file it names (users, keys, certificates) changes; polled (every second by
/// default), which works on every filesystem and in containers with mounted ConfigMaps. A change is reloaded once
/// the files stood still for one poll: a file still being written (truncated, half there) is never read.
pub async fn watch_files(shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    let mut settling = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.stop_accepting.cancelled() => return,
        }
        match watched_files_changed(&shared) {
            None => settling = None,
            Some(now) if settling.as_ref() == Some(&now) => {
                settling = None;
                // The outcome is logged and counted by reload itself, which also records the new stamps.
                let _ = reload(&shared);
            }
            Some(now) => settling = Some(now),
        }
    }
}
