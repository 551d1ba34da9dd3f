//! What a client did last, for the limits that close it: `client_idle_timeout` (nothing sent or
//! received for that long while nothing is owed, as Redis's `timeout`) and, with
//! `client_auth = "require"`, [`AUTH_DEADLINE`]. Both sides of whichever path serves the client
//! (shared sessions, then a session of its own) touch the same record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ClientAuth, ListenerConfig};
use crate::limits::AUTH_DEADLINE;
use crate::ops::metrics::Limit;

pub(super) struct Activity {
    since: Instant,
    /// Milliseconds after `since` of the last byte either way.
    last: AtomicU64,
    authed: AtomicBool,
    idle: Option<Duration>,
    auth: Option<Duration>,
}

impl Activity {
    pub(super) fn new(l: &ListenerConfig) -> Activity {
        let require = matches!(l.client_auth, ClientAuth::Require(_));
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
            authed: AtomicBool::new(!require),
            idle: l.client_idle_timeout,
            auth: require.then_some(AUTH_DEADLINE),
        }
    }

    /// Bytes went one way or the other.
    pub(super) fn touch(&self) {
        if self.idle.is_some() {
            let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
    }

    /// The client gave the `client_auth` password.
    pub(super) fn authed(&self, yes: bool) {
        if yes {
            self.authed.store(true, Ordering::Relaxed);
        }
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves with the limit that ends the client; never while `busy()` says a reply is
    /// owed or the client is subscribed (as Redis spares blocked and pub/sub clients).
    pub(super) async fn expired(&self, busy: impl Fn() -> bool) -> Limit {
        loop {
            let auth_due = self
                .auth
                .filter(|_| !self.authed.load(Ordering::Relaxed))
                .map(|d| self.since + d);
            let idle_due = self.idle.map(|d| self.last() + d);
            let Some(due) = auth_due.into_iter().chain(idle_due).min() else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            if auth_due.is_some_and(|d| d <= now) && !self.authed.load(Ordering::Relaxed) {
                return Limit::AuthTimeout;
            }
            if let Some(idle) = self.idle
                && self.last() + idle <= now
            {
                if !busy() {
                    return Limit::ClientIdleTimeout;
                }
                // Owed a reply (a blocking command) or subscribed: look again a period later.
                self.last.store(
                    u64::try_from((now - self.since).as_millis()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        }
    }
}
