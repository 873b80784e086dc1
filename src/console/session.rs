//! Console sign-in sessions: a random id in an HttpOnly cookie maps to a server-side entry holding the CSRF token
//! of the session and a digest of the admin token it was opened with. Bounded (`SESSION_LIMIT`, the entry that ends
//! soonest makes room), each ends `SESSION_LIFETIME` after sign-in, and one opened with a token that a reload has
//! since replaced no longer counts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie that carries the session id.
pub const COOKIE: &str = "tollgate_console";

/// Sessions kept at once.
pub const SESSION_LIMIT: usize = 256;

/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Refused sign-ins accepted per minute (across clients) before sign-in answers 429 for the rest of the minute.
pub const SIGN_IN_FAILURES_PER_MINUTE: u32 = 10;

/// The signed-in sessions, keyed by the digest of their id (the id itself is kept only by the browser).
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    failures: Mutex<Option<(Instant, u32)>>,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    token_digest: [u8; 32],
    ends: Instant,
}

/// A session that was found: its CSRF token, which a state-changing request must echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub csrf: String,
}

/// A new session: the id for the cookie and the CSRF token for the pages.
#[derive(Debug)]
pub struct Opened {
    pub id: String,
    pub csrf: String,
}

impl Sessions {
    /// Opens a session for a browser that presented `token` (already checked against `admin.token`).
    pub fn open(&self, token: &str) -> Opened {
        let opened = Opened { id: random_token(), csrf: random_token() };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, entry| entry.ends > now);
        if entries.len() >= SESSION_LIMIT {
            if let Some(soonest) = entries.iter().min_by_key(|(_, entry)| entry.ends).map(|(key, _)| *key) {
                entries.remove(&soonest);
            }
        }
        let entry = Entry { csrf: opened.csrf.clone(), token_digest: digest(token), ends: now + SESSION_LIFETIME };
        entries.insert(digest(&opened.id), entry);
        opened
    }

    /// The session with cookie value `id`, while it lasts and `token` is still the admin token it was opened with.
    pub fn find(&self, id: &str, token: &str) -> Option<SignedIn> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = digest(id);
        let entry = entries.get(&key)?;
        if entry.ends <= Instant::now() || !bool::from(entry.token_digest.ct_eq(&digest(token))) {
            entries.remove(&key);
            return None;
        }
        Some(SignedIn { csrf: entry.csrf.clone() })
    }

    /// Ends the session with cookie value `id` (sign-out).
    pub fn close(&self, id: &str) {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&digest(id));
    }

    /// Counts a refused sign-in; false when this minute's refusals are used up (answer 429).
    pub fn refused(&self) -> bool {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (start, count) = failures.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= SIGN_IN_FAILURES_PER_MINUTE
    }

    /// Whether sign-in is refused for the rest of the minute.
    pub fn throttled(&self) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.is_some_and(|(start, count)| {
            start.elapsed() < Duration::from_secs(60) && count >= SIGN_IN_FAILURES_PER_MINUTE
        })
    }
}

/// Whether `presented` equals `expected`, in time that does not depend on where they differ.
pub fn same_secret(presented: &str, expected: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// 32 random bytes, base64url without padding (43 characters).
fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_while_the_token_is_the_same() {
        let sessions = Sessions::default();
        let opened = sessions.open("token-1");
        assert_eq!(opened.id.len(), 43);
        assert_ne!(opened.id, opened.csrf);
        assert_eq!(sessions.find(&opened.id, "token-1"), Some(SignedIn { csrf: opened.csrf.clone() }));
        assert_eq!(sessions.find("not-an-id", "token-1"), None);
        // A reload changed the admin token: the session is gone, also for the old token.
        assert_eq!(sessions.find(&opened.id, "token-2"), None);
        assert_eq!(sessions.find(&opened.id, "token-1"), None);

        let opened = sessions.open("token-1");
        sessions.close(&opened.id);
        assert_eq!(sessions.find(&opened.id, "token-1"), None);
    }

    #[test]
    fn the_store_is_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open("token");
        for _ in 0..SESSION_LIMIT {
            sessions.open("token");
        }
        assert_eq!(sessions.entries.lock().unwrap().len(), SESSION_LIMIT);
        assert_eq!(sessions.find(&first.id, "token"), None, "the session that ends soonest made room");
    }

    #[test]
    fn refused_sign_ins_are_throttled() {
        let sessions = Sessions::default();
        assert!(!sessions.throttled());
        for _ in 0..SIGN_IN_FAILURES_PER_MINUTE {
            assert!(sessions.refused());
        }
        assert!(sessions.throttled());
        assert!(!sessions.refused());
    }
}
