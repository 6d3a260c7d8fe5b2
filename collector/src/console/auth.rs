//! Sign-in without passwords: `vigil console login` (an operator certificate over QUIC) gets a
//! one-time link; opening it trades the link for a session cookie. Sessions and links live in
//! memory only, keyed by the hash of their secret: a collector restart signs everyone out, and
//! nothing on disk or in a log can be replayed.
//!
//! The session cookie is `__Host-` prefixed, HttpOnly, Secure and SameSite=Strict; every
//! request that changes state must also carry the session's CSRF token in a header, which
//! another site's page cannot read (synchronizer token, on top of SameSite).
//!
//! Time is a parameter of every decision, so expiry is tested without waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use vigil_proto::trust::token_hash;

/// The session cookie. `__Host-` makes browsers refuse it unless it is Secure, has Path=/ and
/// no Domain, so a sibling host cannot plant one.
pub(super) const SESSION_COOKIE: &str = "__Host-vigil_session";
/// The header state-changing requests carry the session's CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

/// Outstanding links or live sessions kept at most; past it the oldest are dropped. Bounds what
/// an operator (or a script gone wrong) asking for links in a loop can make us hold.
const MAX_ENTRIES: usize = 10_000;

/// Random bytes in a link token, session id and CSRF token.
const SECRET_BYTES: usize = 32;

/// A signed-in operator, as the API handlers see them.
#[derive(Clone, Debug)]
pub(super) struct Session {
    /// The operator certificate's name that asked for the link.
    pub operator: String,
    /// Sent back in [`CSRF_HEADER`] with every state-changing request.
    pub csrf_token: String,
    pub expires: Instant,
    /// The same moment on the wall clock, for the page to show.
    pub expires_at: SystemTime,
}

struct Link {
    operator: String,
    expires: Instant,
}

#[derive(Default)]
struct Entries {
    links: HashMap<String, Link>,
    sessions: HashMap<String, Session>,
}

/// Why a sign-in link did not sign anyone in. One message for all: telling a guesser which
/// tokens once existed helps nobody else.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum LinkRefused {
    /// Unknown, already used, or expired.
    #[error("this sign-in link is unknown, already used or expired")]
    Invalid,
    /// The system's random source failed (cannot happen on Linux after boot).
    #[error("no randomness available")]
    NoRandomness,
}

/// Links and sessions. Shared by the QUIC side (issuing links) and the HTTPS side.
pub(crate) struct Sessions {
    link_ttl: Duration,
    session_ttl: Duration,
    entries: Mutex<Entries>,
}

impl Sessions {
    pub(super) fn new(link_ttl: Duration, session_ttl: Duration) -> Self {
        Self {
            link_ttl,
            session_ttl,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Nothing in here panics while holding the lock; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh one-time token for `operator`, valid for the link TTL from `now`.
    pub(super) fn issue_link(&self, operator: &str, now: Instant) -> Result<String, LinkRefused> {
        let token = secret()?;
        let mut entries = self.entries();
        if entries.links.len() >= MAX_ENTRIES {
            entries.links.retain(|_, link| link.expires > now);
        }
        if entries.links.len() >= MAX_ENTRIES {
            evict_first_expiring(&mut entries.links, |l| l.expires);
        }
        entries.links.insert(
            token_hash(&token),
            Link {
                operator: operator.to_owned(),
                expires: now + self.link_ttl,
            },
        );
        Ok(token)
    }

    /// Trades a link token for a new session (the token is spent either way); returns the
    /// session id to put in the cookie.
    pub(super) fn redeem(
        &self,
        token: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(String, Session), LinkRefused> {
        let id = secret()?;
        let csrf_token = secret()?;
        let mut entries = self.entries();
        let link = entries
            .links
            .remove(&token_hash(token))
            .filter(|link| link.expires > now)
            .ok_or(LinkRefused::Invalid)?;
        if entries.sessions.len() >= MAX_ENTRIES {
            entries.sessions.retain(|_, s| s.expires > now);
        }
        if entries.sessions.len() >= MAX_ENTRIES {
            evict_first_expiring(&mut entries.sessions, |s| s.expires);
        }
        let session = Session {
            operator: link.operator,
            csrf_token,
            expires: now + self.session_ttl,
            expires_at: wall + self.session_ttl,
        };
        entries.sessions.insert(token_hash(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id, if any.
    pub(super) fn session(&self, id: &str, now: Instant) -> Option<Session> {
        let key = token_hash(id);
        let mut entries = self.entries();
        match entries.sessions.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                entries.sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Signs the session out; later requests with its cookie are refused.
    pub(super) fn end(&self, id: &str) {
        self.entries().sessions.remove(&token_hash(id));
    }

    pub(super) fn session_ttl(&self) -> Duration {
        self.session_ttl
    }
}

fn evict_first_expiring<T>(map: &mut HashMap<String, T>, expires: impl Fn(&T) -> Instant) {
    if let Some(key) = map
        .iter()
        .min_by_key(|(_, v)| expires(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&key);
    }
}

/// 256 random bits as lowercase hex (URL- and cookie-safe).
fn secret() -> Result<String, LinkRefused> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|_| LinkRefused::NoRandomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares secrets without an early exit, so timing says nothing about how much matched.
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a `Cookie` request header.
pub(super) fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// What the QUIC server calls when an operator runs `vigil console login`.
#[derive(Clone)]
pub(crate) struct LoginIssuer {
    sessions: Arc<Sessions>,
    base_url: String,
}

impl LoginIssuer {
    pub(super) fn new(sessions: Arc<Sessions>, base_url: String) -> Self {
        Self { sessions, base_url }
    }

    /// A one-time sign-in URL for `operator` and how many seconds it stays valid; `None` when
    /// no randomness could be had.
    pub(crate) fn issue(&self, operator: &str) -> Option<(String, u64)> {
        let token = self.sessions.issue_link(operator, Instant::now()).ok()?;
        let url = format!("{}/login?token={token}", self.base_url);
        Some((url, self.sessions.link_ttl.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(60), Duration::from_secs(3600))
    }

    #[test]
    fn a_link_signs_in_once_as_its_operator() {
        let s = sessions();
        let t0 = Instant::now();
        let token = s.issue_link("alice", t0).expect("link");
        assert_eq!(token.len(), 64);
        let (id, session) = s
            .redeem(&token, t0 + Duration::from_secs(59), SystemTime::now())
            .expect("first use");
        assert_eq!(session.operator, "alice");
        assert_ne!(id, session.csrf_token);
        assert_eq!(
            s.redeem(&token, t0, SystemTime::now()).map(|_| ()),
            Err(LinkRefused::Invalid),
            "a link is spent by its first use"
        );
        let found = s.session(&id, t0 + Duration::from_secs(60)).expect("live");
        assert_eq!(found.csrf_token, session.csrf_token);
    }

    #[test]
    fn links_and_sessions_expire_and_sign_out_ends_a_session() {
        let s = sessions();
        let t0 = Instant::now();
        let late = s.issue_link("alice", t0).expect("link");
        assert_eq!(
            s.redeem(&late, t0 + Duration::from_secs(60), SystemTime::now())
                .map(|_| ()),
            Err(LinkRefused::Invalid),
            "a link is dead at its TTL"
        );
        let token = s.issue_link("alice", t0).expect("link");
        let (id, _) = s.redeem(&token, t0, SystemTime::now()).expect("sign in");
        assert!(s.session(&id, t0 + Duration::from_secs(3599)).is_some());
        assert!(s.session(&id, t0 + Duration::from_secs(3600)).is_none());
        let token = s.issue_link("bob", t0).expect("link");
        let (id, _) = s.redeem(&token, t0, SystemTime::now()).expect("sign in");
        s.end(&id);
        assert!(s.session(&id, t0).is_none());
        assert!(s.session("not-a-session", t0).is_none());
    }

    #[test]
    fn outstanding_links_are_bounded() {
        let s = sessions();
        let t0 = Instant::now();
        let first = s.issue_link("alice", t0).expect("link");
        for i in 0..MAX_ENTRIES {
            s.issue_link("alice", t0 + Duration::from_millis(i as u64 + 1))
                .expect("link");
        }
        assert_eq!(s.entries().links.len(), MAX_ENTRIES);
        assert_eq!(
            s.redeem(&first, t0, SystemTime::now()).map(|_| ()),
            Err(LinkRefused::Invalid),
            "the first-expiring link made room"
        );
    }

    #[test]
    fn cookies_and_secrets() {
        let header = "a=1; __Host-vigil_session=abc; b=2";
        assert_eq!(cookie(header, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(header, "c"), None);
        assert_eq!(cookie("", SESSION_COOKIE), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
