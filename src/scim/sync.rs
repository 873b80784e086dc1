//! Keeps every replica's provisioned directory current and acts on what changed: cuts the tunnels and closes the
//! certificate-identified connections of users who lost their standing, whichever replica took the change.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;

/// How often a replica checks whether another changed the shared directory: the bound on how long a
/// deprovisioned user's tunnels stay open elsewhere.
pub const POLL: Duration = Duration::from_millis(250);

/// Cuts the open tunnels (plain and intercepted) of `users` (lower-cased names) and closes the connections their
/// client certificates identify once no request is in flight; they may reconnect, and are then identified afresh
/// (refused, or with their new teams). Returns how many tunnels were cut.
pub fn cut_tunnels(shared: &Shared, users: &[String]) -> usize {
    if users.is_empty() {
        return 0;
    }
    let users: HashSet<&str> = users.iter().map(String::as_str).collect();
    let cut = shared.revoke_tunnels(|tunnel| !users.contains(tunnel.principal.name.to_lowercase().as_str()));
    let closed = shared.close_identified(|user| users.contains(user.to_lowercase().as_str()));
    if cut + closed > 0 {
        tracing::info!(tunnels = cut, connections = closed, "tunnels and connections of deprovisioned users closed");
    }
    cut
}

/// Keeps the replica current until shutdown: with a shared store and `admin.scim` configured, polls its version
/// every `POLL` and cuts the tunnels of users another replica deprovisioned. An unreachable store is logged (once
/// per outage) and the replica kept.
pub async fn watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.shutdown.stop_accepting.cancelled() => return,
        }
        if shared.config.load().admin.as_ref().is_none_or(|admin| admin.scim.is_none()) {
            continue;
        }
        match shared.scim.sync().await {
            Ok(lost) => {
                failing = false;
                cut_tunnels(&shared, &lost);
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read the SCIM directory; keeping the last one read");
            }
            Err(_) => {}
        }
    }
}
