//! Who may change things: the admin token (API, as a Bearer token), login sessions (the
//! pages, in an HttpOnly SameSite cookie) with a CSRF token per session, and slowing down
//! repeated failed logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum_extra::extract::cookie::{Cookie, SameSite};

use crate::problem::Problem;
use crate::WebState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "pangate_session";
/// Header carrying the CSRF token on API calls made with a session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins are forgotten after this long without another.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Longest delay before answering a login attempt.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// A random token of `bytes` bytes, hex encoded.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets in time that depends only on their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// The admin token and the login sessions.
#[derive(Debug)]
pub struct Auth {
    token: String,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Auth {
    /// Accepts `token` as the admin token.
    pub fn new(token: String) -> Auth {
        Auth { token, sessions: Mutex::default(), failures: Mutex::default() }
    }

    /// How long to wait before answering a login from `ip`, given its recent failures.
    pub fn login_delay(&self, ip: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some(&(n, last)) if n > 0 && last.elapsed() < FAILURE_MEMORY => {
                Duration::from_millis(250u64.saturating_mul(1 << (n - 1).min(10))).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Checks a login; on success returns a new session id, on failure counts it.
    pub fn login(&self, ip: IpAddr, token: &str) -> Option<String> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !same_secret(token, &self.token) {
            failures.retain(|_, (_, last)| last.elapsed() < FAILURE_MEMORY);
            let e = failures.entry(ip).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_MEMORY {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = Instant::now();
            return None;
        }
        failures.remove(&ip);
        let id = random_token(32);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(id.clone(), Session { csrf: random_token(16), expires: Instant::now() + SESSION_TTL });
        Some(id)
    }

    /// Ends a session.
    pub fn logout(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The CSRF token of a live session.
    pub fn csrf_of(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).filter(|s| s.expires > Instant::now()).map(|s| s.csrf.clone())
    }

    /// Whether `Authorization: Bearer …` carries the admin token.
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| same_secret(t.trim(), &self.token))
    }

    /// The session cookie to set after a login.
    pub fn cookie(id: String) -> Cookie<'static> {
        Cookie::build((SESSION_COOKIE, id)).http_only(true).same_site(SameSite::Strict).path("/").build()
    }
}

/// The session id in a request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    axum_extra::extract::CookieJar::from_headers(headers).get(SESSION_COOKIE).map(|c| c.value().to_string())
}

/// Who is asking: a reader, or a logged-in session (with its CSRF token), or a holder of
/// the admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Not authenticated: may only read.
    Anonymous,
    /// Logged in through the form.
    Session {
        /// The session id.
        id: String,
        /// The token every form of this session must carry.
        csrf: String,
    },
    /// Sent the admin token.
    Bearer,
}

impl Viewer {
    /// Whether it may change things (forms still check the CSRF token).
    pub fn authenticated(&self) -> bool {
        !matches!(self, Viewer::Anonymous)
    }

    /// The CSRF token forms must carry, for sessions.
    pub fn csrf(&self) -> Option<&str> {
        match self {
            Viewer::Session { csrf, .. } => Some(csrf),
            _ => None,
        }
    }
}

impl FromRequestParts<WebState> for Viewer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Viewer, Problem> {
        if state.auth.bearer_ok(&parts.headers) {
            return Ok(Viewer::Bearer);
        }
        Ok(match session_id(&parts.headers).and_then(|id| state.auth.csrf_of(&id).map(|csrf| (id, csrf))) {
            Some((id, csrf)) => Viewer::Session { id, csrf },
            None => Viewer::Anonymous,
        })
    }
}

/// An API caller allowed to change things: the admin token, or a session whose request
/// carries its CSRF token in `X-CSRF-Token`.
#[derive(Debug, Clone)]
pub struct Authorized;

impl FromRequestParts<WebState> for Authorized {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Authorized, Problem> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Bearer => Ok(Authorized),
            Viewer::Session { csrf, .. } => {
                let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
                if same_secret(sent, &csrf) {
                    Ok(Authorized)
                } else {
                    Err(Problem::forbidden("a session's API call must carry its CSRF token in X-CSRF-Token"))
                }
            }
            Viewer::Anonymous => Err(Problem::unauthorized(
                "changes need the admin token as 'Authorization: Bearer <token>' (see the data directory's admin-token file)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_are_slowed_down_and_forgotten_on_success() {
        let a = Auth::new("secret".into());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.login_delay(ip), Duration::ZERO);
        assert!(a.login(ip, "wrong").is_none());
        assert_eq!(a.login_delay(ip), Duration::from_millis(250));
        assert!(a.login(ip, "wrong").is_none());
        assert!(a.login(ip, "secre").is_none());
        assert_eq!(a.login_delay(ip), Duration::from_millis(1000));
        for _ in 0..20 {
            a.login(ip, "x");
        }
        assert_eq!(a.login_delay(ip), MAX_DELAY);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(a.login_delay(other), Duration::ZERO, "another client is not slowed");
        let id = a.login(ip, "secret").unwrap();
        assert_eq!(a.login_delay(ip), Duration::ZERO);
        assert!(a.csrf_of(&id).is_some());
        a.logout(&id);
        assert!(a.csrf_of(&id).is_none());
    }
}
