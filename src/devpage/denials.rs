//! Each user's latest refusals, kept in memory for the developer page: a bounded ring per user and a bounded
//! number of users. Only a refused request of an identified user is noted (from `request::finish`), so an allowed
//! request pays nothing for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

/// Refusals kept per user.
pub const PER_USER: usize = 20;
/// Users kept; when a new one arrives beyond this, the user whose latest refusal is the oldest is forgotten.
pub const USERS: usize = 4096;
/// The longest method, target, path or message kept, in bytes (cut at a character boundary, `…` appended): a
/// refusal costs at most a few hundred bytes whatever the client sent, so all users' rings stay within a few MB
/// per thousand users.
pub const MAX_TEXT: usize = 256;

/// One refused request, as the developer page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    /// RFC 3339, as in the audit record.
    pub ts: String,
    /// The request id (`x-tollgate-request-id`, the audit record's `id`).
    pub id: String,
    /// `connect`, `http`, `intercepted` or `gateway`.
    pub kind: &'static str,
    pub method: String,
    /// `host:port`, when the request named one.
    pub target: Option<String>,
    pub path: Option<String>,
    pub status: u16,
    /// The metric reason: `deny_rule`, `rate_limited`, `budget_spent`, `dlp_blocked`, ….
    pub reason: &'static str,
    pub rule: Option<Arc<str>>,
    /// The message the client was answered with.
    pub message: Option<String>,
}

/// The latest refusals of each user.
#[derive(Debug, Default)]
pub struct Denials {
    users: Mutex<HashMap<Arc<str>, Ring>>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Oldest first.
    entries: VecDeque<Denial>,
    /// When the latest entry was noted, to pick the user to forget.
    latest: Option<SystemTime>,
}

impl Denials {
    /// Notes a refusal of `user` at `at`.
    pub fn note(&self, user: &Arc<str>, at: SystemTime, mut denial: Denial) {
        clip(&mut denial.method);
        for text in [&mut denial.target, &mut denial.path, &mut denial.message].into_iter().flatten() {
            clip(text);
        }
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if !users.contains_key(user) && users.len() >= USERS {
            let oldest = users.iter().min_by_key(|(_, ring)| ring.latest).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                users.remove(&oldest);
            }
        }
        let ring = users.entry(user.clone()).or_default();
        if ring.entries.len() >= PER_USER {
            ring.entries.pop_front();
        }
        ring.entries.push_back(denial);
        ring.latest = Some(at);
    }

    /// `user`'s kept refusals, newest first.
    pub fn of(&self, user: &str) -> Vec<Denial> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.get(user).map(|ring| ring.entries.iter().rev().cloned().collect()).unwrap_or_default()
    }
}

/// Cuts `text` to `MAX_TEXT` bytes at a character boundary, marking the cut with `…`.
fn clip(text: &mut String) {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn denial(id: usize) -> Denial {
        Denial {
            ts: String::new(),
            id: id.to_string(),
            kind: "connect",
            method: "CONNECT".into(),
            target: None,
            path: None,
            status: 403,
            reason: "deny_rule",
            rule: None,
            message: None,
        }
    }

    #[test]
    fn a_user_keeps_the_latest_refusals_newest_first() {
        let denials = Denials::default();
        let alice: Arc<str> = "alice".into();
        for id in 0..PER_USER + 5 {
            denials.note(&alice, SystemTime::UNIX_EPOCH, denial(id));
        }
        let kept = denials.of("alice");
        assert_eq!(kept.len(), PER_USER);
        assert_eq!(kept[0].id, (PER_USER + 4).to_string());
        assert_eq!(kept[PER_USER - 1].id, "5");
        assert!(denials.of("bob").is_empty());
    }

    #[test]
    fn long_texts_are_kept_cut_at_a_character_boundary() {
        let denials = Denials::default();
        let alice: Arc<str> = "alice".into();
        let long = format!("/{}", "é".repeat(4096));
        denials.note(
            &alice,
            SystemTime::UNIX_EPOCH,
            Denial { target: Some(long.clone()), path: Some(long.clone()), message: Some(long), ..denial(1) },
        );
        let kept = &denials.of("alice")[0];
        for text in [&kept.target, &kept.path, &kept.message] {
            let text = text.as_deref().unwrap();
            assert!(text.len() <= MAX_TEXT + '…'.len_utf8() && text.ends_with('…'), "{text}");
            assert!(text.starts_with("/éé"), "{text}");
        }
        let short = Denial { path: Some("/v1/messages".into()), ..denial(2) };
        denials.note(&alice, SystemTime::UNIX_EPOCH, short);
        assert_eq!(denials.of("alice")[0].path.as_deref(), Some("/v1/messages"), "short texts are kept whole");
    }

    #[test]
    fn beyond_the_user_bound_the_user_refused_longest_ago_is_forgotten() {
        let denials = Denials::default();
        for user in 0..USERS {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(10 + user as u64);
            denials.note(&Arc::from(format!("u{user}")), at, denial(user));
        }
        // u0 is refused again, so u1 is now the one refused longest ago.
        denials.note(&Arc::from("u0"), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000), denial(0));
        denials.note(&Arc::from("new"), SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_001), denial(1));
        assert_eq!(denials.of("u0").len(), 2);
        assert!(denials.of("u1").is_empty(), "forgotten");
        assert_eq!(denials.of("new").len(), 1);
        assert_eq!(denials.users.lock().unwrap().len(), USERS);
    }
}
