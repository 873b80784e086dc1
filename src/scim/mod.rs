//! SCIM 2.0 provisioning (RFC 7643/7644, `admin.scim`): the identity provider creates, changes and removes users
//! and groups at `/scim/v2` on the admin listener (`http`), kept in the state backend (`store`) so replicas share
//! them, and joined to the identities of every request: a provisioned user's groups add teams, and a deactivated
//! or deleted user is refused at once (`identity::Directory::provision`), its open tunnels cut within `POLL` on
//! every replica.
//!
//! Each process holds a replica of the directory (`Provisioning`): written through on its own changes, re-read
//! when the shared version moves (polled every `POLL`), and consulted per request without I/O.

pub mod http;
pub mod resource;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{file, Config};
use crate::identity::{Provisioned, Standing};
use crate::limits::{Backend, StateError};
use crate::shared::Shared;
use resource::{Directory, ScimError};
use store::{Store, Versioned};

/// How often a replica checks whether another changed the shared directory: the bound on how long a
/// deprovisioned user's tunnels stay open elsewhere.
pub const POLL: Duration = Duration::from_millis(250);

/// Retries of a change that another replica raced.
const COMMIT_ATTEMPTS: usize = 8;

/// `admin.scim` compiled.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The bearer token the identity provider presents.
    pub token: String,
    /// Group display names (lower-cased) → team names.
    pub groups: BTreeMap<String, Arc<str>>,
    /// The configured team names (lower-cased → as written): a group of the same name joins it.
    pub teams: HashMap<String, Arc<str>>,
    pub require_provisioned: bool,
}

impl Settings {
    /// Compiles `admin.scim`; the error is the key path and the problem.
    pub fn compile(scim: &file::Scim, teams: &BTreeMap<String, file::Team>) -> Result<Settings, (String, String)> {
        if scim.token.len() < 32 {
            return Err(("admin.scim.token".into(), "must be at least 32 characters (a random secret)".into()));
        }
        let mut groups = BTreeMap::new();
        for (group, team) in &scim.groups {
            if !teams.contains_key(team) {
                return Err((
                    format!("admin.scim.groups.{group}"),
                    format!("team {team:?} is not defined under teams"),
                ));
            }
            groups.insert(group.to_lowercase(), Arc::from(team.as_str()));
        }
        Ok(Settings {
            token: scim.token.clone(),
            groups,
            teams: teams.keys().map(|team| (team.to_lowercase(), Arc::from(team.as_str()))).collect(),
            require_provisioned: scim.require_provisioned,
        })
    }

    /// The team a group of `display_name` joins: the mapped one, else the team of the same name (any case).
    pub fn team_of(&self, display_name: &str) -> Option<Arc<str>> {
        let lower = display_name.to_lowercase();
        self.groups.get(&lower).or_else(|| self.teams.get(&lower)).cloned()
    }
}

/// One version of the directory with the standings the identity checks read.
#[derive(Debug, Default)]
pub struct Replica {
    pub version: u64,
    pub directory: Directory,
    /// Lower-cased user name → (active, group display names); deleted names are inactive.
    standings: HashMap<String, (bool, Vec<String>)>,
}

impl Replica {
    fn new(versioned: Versioned) -> Replica {
        Replica {
            standings: versioned.directory.standings(),
            version: versioned.version,
            directory: versioned.directory,
        }
    }
}

/// This process's replica of the provisioned directory, and its store.
#[derive(Debug)]
pub struct Provisioning {
    store: Store,
    replica: Arc<ArcSwap<Replica>>,
    /// One change at a time from this process (the file store's only writer; fewer races on Redis).
    writing: tokio::sync::Mutex<()>,
}

impl Provisioning {
    /// The provisioning kept beside `backend` (a file under `state_path` for the embedded backend); empty until
    /// `load`.
    pub fn new(backend: &Arc<dyn Backend>, state_path: &std::path::Path) -> Provisioning {
        Provisioning {
            store: Store::beside(backend, state_path),
            replica: Arc::default(),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the store into the replica.
    pub async fn load(&self) -> Result<(), StateError> {
        let versioned = self.store.read().await?;
        self.replica.store(Arc::new(Replica::new(versioned)));
        Ok(())
    }

    /// The current replica.
    pub fn current(&self) -> Arc<Replica> {
        self.replica.load_full()
    }

    /// Joins the replica to `config`'s identity checks, when it configures `admin.scim`.
    pub fn attach(&self, config: &Config) {
        if let Some(settings) = config.admin.as_ref().and_then(|admin| admin.scim.clone()) {
            let attached = Attached { replica: self.replica.clone(), settings };
            config.identity.attach_provisioned(Arc::new(attached));
        }
    }

    /// Applies `change` to the newest directory and stores it, retrying when another replica wrote first; the
    /// replica holds the result before this returns. Answers what `change` answered and the users whose standing
    /// the change took away (to cut their tunnels).
    pub async fn change<T>(
        &self,
        mut change: impl FnMut(&mut Directory) -> Result<T, ScimError>,
    ) -> Result<(T, Vec<String>), ScimError> {
        let _one_at_a_time = self.writing.lock().await;
        let unavailable = |error: StateError| ScimError { status: 503, scim_type: None, detail: error.to_string() };
        for _ in 0..COMMIT_ATTEMPTS {
            let base = if self.store.is_shared() {
                Arc::new(Replica::new(self.store.read().await.map_err(unavailable)?))
            } else {
                self.current()
            };
            let mut directory = base.directory.clone();
            let answer = change(&mut directory)?;
            if let Some(version) = self.store.commit(base.version, &directory).await.map_err(unavailable)? {
                let before = self.current();
                let after = Replica::new(Versioned { version, directory });
                let lost = lost_standing(&before, &after);
                self.replica.store(Arc::new(after));
                return Ok((answer, lost));
            }
        }
        Err(ScimError { status: 503, scim_type: None, detail: "the directory kept changing; retry".into() })
    }

    /// Re-reads the shared directory when its version moved; answers the users whose standing it took away.
    async fn sync(&self) -> Result<Vec<String>, StateError> {
        let Some(version) = self.store.version().await? else { return Ok(Vec::new()) };
        if version == self.current().version {
            return Ok(Vec::new());
        }
        let _one_at_a_time = self.writing.lock().await;
        let after = Replica::new(self.store.read().await?);
        let before = self.current();
        let lost = lost_standing(&before, &after);
        self.replica.store(Arc::new(after));
        Ok(lost)
    }
}

/// The lower-cased names of users who are now deactivated or deleted and were not before (active, or not yet seen
/// here: a replica may learn of a user and of its deactivation at once), or who left a group.
fn lost_standing(before: &Replica, after: &Replica) -> Vec<String> {
    let mut lost: Vec<String> = after
        .standings
        .iter()
        .filter(|(name, (active, _))| !active && before.standings.get(*name).is_none_or(|(was_active, _)| *was_active))
        .map(|(name, _)| name.clone())
        .collect();
    for (name, (active, groups)) in before.standings.iter().filter(|(_, (active, _))| *active) {
        let left_group = match after.standings.get(name) {
            None => *active,
            Some((_, now_groups)) => groups.iter().any(|group| !now_groups.contains(group)),
        };
        if left_group && !lost.contains(name) {
            lost.push(name.clone());
        }
    }
    lost
}

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

/// The replica as one config's identity checks see it: groups mapped to that config's teams.
#[derive(Debug)]
struct Attached {
    replica: Arc<ArcSwap<Replica>>,
    settings: Arc<Settings>,
}

impl Provisioned for Attached {
    fn standing(&self, user: &str) -> Standing {
        let replica = self.replica.load();
        match replica.standings.get(&user.to_lowercase()) {
            None => Standing::Unknown,
            Some((false, _)) => Standing::Deprovisioned,
            Some((true, groups)) => {
                let mut teams: Vec<Arc<str>> = Vec::new();
                for team in groups.iter().filter_map(|group| self.settings.team_of(group)) {
                    if !teams.contains(&team) {
                        teams.push(team);
                    }
                }
                Standing::Active(teams)
            }
        }
    }

    fn required(&self) -> bool {
        self.settings.require_provisioned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resource::{Group, User};

    fn replica(directory: &Directory) -> Replica {
        Replica::new(Versioned { version: 1, directory: directory.clone() })
    }

    fn user(name: &str, active: bool) -> User {
        let body = serde_json::json!({"userName": name, "active": active});
        User::from_json(&body, name.to_owned(), String::new(), String::new()).unwrap()
    }

    #[test]
    fn standing_is_lost_by_deactivation_deletion_and_leaving_a_group() {
        let mut directory = Directory::default();
        for name in ["alice", "bob", "carol", "dave"] {
            directory.put_user(user(name, true)).unwrap();
        }
        let body = serde_json::json!({"displayName": "eng", "members": [{"value": "carol"}, {"value": "dave"}]});
        directory
            .put_group(Group::from_json(&body, &directory, "g".into(), String::new(), String::new()).unwrap())
            .unwrap();
        let before = replica(&directory);
        directory.put_user(user("alice", false)).unwrap();
        directory.delete_user("bob", 1).unwrap();
        directory.groups.get_mut("g").unwrap().members.retain(|m| m != "carol");
        directory.put_user(user("erin", false)).unwrap();
        let mut lost = lost_standing(&before, &replica(&directory));
        lost.sort();
        assert_eq!(lost, ["alice", "bob", "carol", "erin"], "dave keeps his standing");
        assert!(lost_standing(&replica(&directory), &replica(&directory)).is_empty());
    }

    #[test]
    fn the_identity_checks_refuse_deprovisioned_users_and_add_the_teams_of_groups() {
        use crate::identity::{AuthError, AuthMethod, Principal};
        let teams: BTreeMap<String, file::Team> = serde_json::from_value(serde_json::json!({"eu-devs": {}})).unwrap();
        let scim =
            |required| file::Scim { token: "t".repeat(32), groups: BTreeMap::new(), require_provisioned: required };
        let mut directory = Directory::default();
        directory.put_user(user("Alice@corp", true)).unwrap();
        directory.put_user(user("bob@corp", false)).unwrap();
        let body = serde_json::json!({"displayName": "EU-DEVS", "members": [{"value": "Alice@corp"}]});
        directory
            .put_group(Group::from_json(&body, &directory, "g".into(), String::new(), String::new()).unwrap())
            .unwrap();
        let auth: file::Auth = serde_json::from_value(serde_json::json!({})).unwrap();
        for required in [false, true] {
            let identity = crate::identity::Directory::compile(&auth, &[]).unwrap();
            let replica = Arc::new(ArcSwap::from_pointee(replica(&directory)));
            let settings = Arc::new(Settings::compile(&scim(required), &teams).unwrap());
            identity.attach_provisioned(Arc::new(Attached { replica, settings }));
            let alice = identity.provision(Principal::named("alice@CORP", &["own"], AuthMethod::Jwt)).unwrap();
            assert_eq!(&*alice.teams, [Arc::from("own"), Arc::from("eu-devs")]);
            let bob = Principal::named("bob@corp", &[], AuthMethod::Mtls);
            assert_eq!(identity.provision(bob.clone()), Err(AuthError::Deprovisioned));
            assert_eq!(identity.refresh(&bob, std::time::SystemTime::now()), Err(AuthError::Deprovisioned));
            let stranger = identity.provision(Principal::named("carol@corp", &[], AuthMethod::Jwt));
            assert_eq!(stranger.is_err(), required, "a user never provisioned passes unless required");
            let basic = Principal::named("dave", &[], AuthMethod::Basic);
            assert_eq!(identity.provision(basic.clone()), Ok(basic), "config users are not held to provisioning");
        }
    }

    #[test]
    fn groups_join_the_mapped_team_or_the_team_of_their_name() {
        let teams: BTreeMap<String, file::Team> =
            serde_json::from_value(serde_json::json!({"eu-devs": {}, "Platform": {}})).unwrap();
        let scim = file::Scim {
            token: "t".repeat(32),
            groups: [("Engineering-EU".to_owned(), "eu-devs".to_owned())].into(),
            require_provisioned: false,
        };
        let settings = Settings::compile(&scim, &teams).unwrap();
        assert_eq!(settings.team_of("engineering-eu").as_deref(), Some("eu-devs"));
        assert_eq!(settings.team_of("platform").as_deref(), Some("Platform"));
        assert_eq!(settings.team_of("Sales"), None);
        let short = file::Scim { token: "short".into(), groups: BTreeMap::new(), require_provisioned: false };
        assert_eq!(Settings::compile(&short, &teams).unwrap_err().0, "admin.scim.token");
        let unknown = file::Scim { groups: [("G".to_owned(), "nope".to_owned())].into(), ..scim };
        assert_eq!(Settings::compile(&unknown, &teams).unwrap_err().0, "admin.scim.groups.G");
    }
}
