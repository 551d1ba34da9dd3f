//! What a client did last, for the limits that close it: `client_idle_timeout` (nothing sent or
//! received for that long while nothing is owed, as Redis's `timeout`) and, with
//! `client_auth = "require"`, [`AUTH_DEADLINE`]. Both sides of whichever path serves the client
//! (shared sessions, then a session of its own) touch the same record. The idle limit is read
//! from the listener handle, so a reload reaches connected clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ClientAuth, ListenerConfig};
use crate::limits::AUTH_DEADLINE;
use crate::listener::Handle;
use crate::ops::metrics::Limit;

pub(super) struct Activity {
    since: Instant,
    /// Milliseconds after `since` of the last byte either way.
    last: AtomicU64,
    authed: AtomicBool,
    auth: Option<Duration>,
}

impl Activity {
    pub(super) fn new(l: &ListenerConfig) -> Activity {
        let require = matches!(l.client_auth, ClientAuth::Require(_));
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
            authed: AtomicBool::new(!require),
            auth: require.then_some(AUTH_DEADLINE),
        }
    }

    /// Bytes went one way or the other.
    pub(super) fn touch(&self) {
        self.last.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// The client gave the `client_auth` password.
    pub(super) fn authed(&self, yes: bool) {
        if yes {
            self.authed.store(true, Ordering::Relaxed);
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves with the limit that ends the client; never while `busy()` says a reply is
    /// owed or the client is subscribed (as Redis spares blocked and pub/sub clients).
    /// `client_idle_timeout` is the listener's current one: a reload that changes it wakes this.
    pub(super) async fn expired(&self, handle: &Handle, busy: impl Fn() -> bool) -> Limit {
        let mut handle = handle.clone();
        loop {
            let idle = handle.borrow_and_update().config.client_idle_timeout;
            let auth_due = self
                .auth
                .filter(|_| !self.authed.load(Ordering::Relaxed))
                .map(|d| self.since + d);
            let idle_due = idle.map(|d| self.last() + d);
            let due = auth_due.into_iter().chain(idle_due).min();
            tokio::select! {
                changed = handle.changed() => {
                    if changed.is_err() {
                        // The listener is gone: its server ends the client.
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
                () = sleep_until_some(due) => {}
            }
            let now = Instant::now();
            if auth_due.is_some_and(|d| d <= now) && !self.authed.load(Ordering::Relaxed) {
                return Limit::AuthTimeout;
            }
            if let Some(idle) = idle
                && self.last() + idle <= now
            {
                if !busy() {
                    return Limit::ClientIdleTimeout;
                }
                // Owed a reply (a blocking command) or subscribed: look again a period later.
                self.touch();
            }
        }
    }
}

/// Sleeps until `due`, or for ever without one.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
