//! SCIM 2.0 provisioning (RFC 7643/7644, `admin.scim`): the identity provider creates, changes and removes users
//! and groups at `/scim/v2` on the admin listener (`http`), kept in the state backend (`store`) so replicas share
//! them, and joined to the identities of every request: a provisioned user's groups add teams, and a deactivated
//! or deleted user is refused at once (`identity::Directory::provision`), its open tunnels cut within `POLL` on
//! every replica.
//!
//! Each process holds a replica of the directory (`Provisioning`): written through on its own changes, re-read
//! when the shared version moves (polled every `sync::POLL`), and consulted per request without I/O.

pub mod http;
pub mod resource;
pub mod store;
pub mod sync;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::scim::Settings;
use crate::config::Config;
use crate::identity::{Provisioned, Standing};
use crate::limits::{Backend, StateError};
use resource::{Directory, ScimError};
use store::{Store, Versioned};

/// Retries of a change that another replica raced.
const COMMIT_ATTEMPTS: usize = 8;

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
    pub(crate) async fn sync(&self) -> Result<Vec<String>, StateError> {
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
    use crate::config::file;
    use resource::{Group, User};
    use std::collections::BTreeMap;

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
            let identity =
                crate::identity::Directory::compile(&auth, &[], &crate::config::file::Trust::default()).unwrap();
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
}
