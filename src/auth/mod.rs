//! The one authority on what a listener presents upstream as `AUTH`: its password (during a
//! rotation, the one the server accepted last first, the other next), or its current IAM token,
//! signed and refreshed in the background ([`iam`]). Dials, the pool's RESET, and the session
//! engine's re-AUTH all ask it, so a refreshed token or a rotated password reaches every one.

pub mod iam;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::iam::{IamError, Token, TokenRequest};
use crate::config::{AuthMethod, Credentials, IamAuth, ListenerConfig, Password};
use crate::limits::CREDENTIALS_TIMEOUT;
use crate::ops::metrics::ListenerMetrics;

/// A token this close to its expiry is not handed out: a session dialled with it would
/// authenticate, but a re-AUTH right after could fail.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Retries after a failed signing: from 1 s, doubling, to this.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Cheap to clone: every clone is the same authority.
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

struct Inner {
    listener: String,
    username: Option<String>,
    kind: Kind,
    /// Bumped whenever [`Auth::current`] would give something else.
    version: AtomicU64,
}

enum Kind {
    None,
    Passwords {
        list: Vec<Password>,
        /// The one the server accepted last: tried first.
        preferred: AtomicUsize,
    },
    Iam {
        settings: IamAuth,
        state: watch::Sender<TokenState>,
    },
}

/// The IAM signer's latest outcome.
#[derive(Clone, Default)]
struct TokenState {
    token: Option<Token>,
    /// Why the last signing failed, while it keeps failing.
    error: Option<IamError>,
    /// At least one signing has finished, well or not.
    tried: bool,
}

impl TokenState {
    fn valid(&self) -> Option<&Token> {
        let now = SystemTime::now() + EXPIRY_MARGIN;
        self.token.as_ref().filter(|t| t.expires > now)
    }
}

/// One way to authenticate, and its place in the configured order.
pub struct Candidate {
    pub index: usize,
    pub credentials: Credentials,
}

impl Auth {
    /// The listener's authority; with `[auth.iam]` it starts signing at once, until `stop`.
    pub fn start(l: &ListenerConfig, metrics: ListenerMetrics, stop: CancellationToken) -> Auth {
        let (username, kind) = match &l.auth {
            None => (None, Kind::None),
            Some(a) => (
                a.username.clone(),
                match &a.method {
                    AuthMethod::Passwords(list) => Kind::Passwords {
                        list: list.clone(),
                        preferred: AtomicUsize::new(0),
                    },
                    AuthMethod::Iam(settings) => Kind::Iam {
                        settings: settings.clone(),
                        state: watch::Sender::new(TokenState::default()),
                    },
                },
            ),
        };
        let auth = Auth(Arc::new(Inner {
            listener: l.name.clone(),
            username,
            kind,
            version: AtomicU64::new(0),
        }));
        if let Kind::Iam { .. } = &auth.0.kind {
            let host = l.upstreams.first().map(|u| u.addr.host.clone());
            let signer = Signer {
                auth: auth.clone(),
                host: host.unwrap_or_default(),
                metrics,
            };
            tokio::spawn(stop.run_until_cancelled_owned(signer.run()));
        }
        auth
    }

    /// Whether anything is injected at all.
    pub fn is_some(&self) -> bool {
        !matches!(self.0.kind, Kind::None)
    }

    /// What to try, in order: the preferred password first, or the current token (waiting up to
    /// `wait` for the first one). `Err` is the reason a dial fails at its `auth` stage.
    pub async fn candidates(&self, wait: Duration) -> Result<Vec<Candidate>, String> {
        let cred = |index, secret: &crate::config::Secret| Candidate {
            index,
            credentials: self.credentials(secret),
        };
        match &self.0.kind {
            Kind::None => Ok(Vec::new()),
            Kind::Passwords { list, preferred } => Ok(ordered(list, preferred)
                .map(|(i, p)| cred(i, &p.secret))
                .collect()),
            Kind::Iam { state, .. } => {
                let mut rx = state.subscribe();
                // The first token may wait on the credentials chain (IMDS, STS) a while longer.
                let wait = wait.max(CREDENTIALS_TIMEOUT);
                let ready = tokio::time::timeout(wait, rx.wait_for(|s| s.tried))
                    .await
                    .is_ok();
                let s = rx.borrow();
                match (s.valid(), &s.error) {
                    (Some(t), _) => Ok(vec![cred(0, &t.secret)]),
                    (None, Some(e)) => Err(e.to_string()),
                    (None, None) if !ready => Err(format!(
                        "no IAM token yet: signing took longer than {}",
                        humantime::format_duration(wait)
                    )),
                    (None, None) => {
                        Err("the IAM token expired and no new one could be signed".into())
                    }
                }
            }
        }
    }

    /// The server accepted candidate `index`: sessions try it first from now on.
    pub fn accepted(&self, index: usize) {
        let Kind::Passwords { list, preferred } = &self.0.kind else {
            return;
        };
        if preferred.swap(index, Ordering::Relaxed) != index {
            self.0.version.fetch_add(1, Ordering::Release);
            tracing::info!(listener = %self.0.listener, source = %list[index].source,
                "the upstream accepts the password from {}; using it first", list[index].source);
        }
    }

    /// What a session sends when it authenticates again (after a client's RESET, before the
    /// IAM cut): the preferred password, or the current token.
    pub fn current(&self) -> Option<Credentials> {
        match &self.0.kind {
            Kind::None => None,
            Kind::Passwords { list, preferred } => {
                let p = &list[preferred.load(Ordering::Relaxed)];
                Some(self.credentials(&p.secret))
            }
            Kind::Iam { state, .. } => {
                let s = state.borrow();
                s.valid().map(|t| self.credentials(&t.secret))
            }
        }
    }

    /// Everything a session may authenticate with, the current first: what follows a client's
    /// RESET, so that it ends authenticated whichever password of a rotation the server takes.
    pub fn all(&self) -> Vec<Credentials> {
        match &self.0.kind {
            Kind::Passwords { list, preferred } => ordered(list, preferred)
                .map(|(_, p)| self.credentials(&p.secret))
                .collect(),
            _ => self.current().into_iter().collect(),
        }
    }

    /// Changes whenever [`Auth::current`] would give something else.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }

    /// With IAM: how long a session may go before it authenticates again.
    pub fn reauth_after(&self) -> Option<Duration> {
        match &self.0.kind {
            Kind::Iam { settings, .. } => Some(settings.reauth_after),
            _ => None,
        }
    }

    /// After a reload: the previous listener's token, while the new signer has not signed one,
    /// when both sign the same request (a client's RESET right after a reload is followed by a
    /// token, not by nothing).
    pub fn carry_over(&self, old: &Auth) {
        let (
            Kind::Iam { settings, state },
            Kind::Iam {
                settings: was,
                state: old_state,
            },
        ) = (&self.0.kind, &old.0.kind)
        else {
            return;
        };
        let same = (
            &settings.cache,
            &settings.region,
            settings.service,
            settings.serverless,
        ) == (&was.cache, &was.region, was.service, was.serverless)
            && self.0.username == old.0.username;
        let token = old_state.borrow().valid().cloned();
        if let (true, Some(token)) = (same, token) {
            let seeded = state.send_if_modified(|s| {
                // Unless the new signer has a token already. A first failure's error goes: the
                // signer warns at the next one, while this token lasts.
                let empty = s.valid().is_none();
                if empty {
                    s.token = Some(token);
                    s.tried = true;
                    s.error = None;
                }
                empty
            });
            if seeded {
                self.0.version.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// What the sessions present now, for `check --connect`: which password source, or the
    /// IAM identity and when the token expires.
    pub fn describe(&self) -> String {
        match &self.0.kind {
            Kind::None => "none".into(),
            Kind::Passwords { list, preferred } if list.len() > 1 => {
                let p = &list[preferred.load(Ordering::Relaxed)];
                format!("ok (password from {})", p.source)
            }
            Kind::Passwords { .. } => "ok".into(),
            Kind::Iam { state, .. } => match state.borrow().valid() {
                Some(t) => format!(
                    "ok (iam: {}; token expires {})",
                    t.identity,
                    humantime::format_rfc3339_seconds(t.expires)
                ),
                None => "iam (no token)".into(),
            },
        }
    }

    /// What a `WRONGPASS` most likely means here, said after the server's words.
    pub fn refusal_hint(&self) -> &'static str {
        match self.0.kind {
            Kind::Iam { .. } => {
                " (is the user IAM-enabled (authentication mode iam), and does the IAM policy allow elasticache:Connect / memorydb:Connect on the cache and the user?)"
            }
            _ => "",
        }
    }

    fn credentials(&self, secret: &crate::config::Secret) -> Credentials {
        Credentials {
            username: self.0.username.clone(),
            password: secret.clone(),
            file: None,
        }
    }
}

/// The next signing: after `refresh`, or sooner when the token expires sooner (credentials
/// that expire before the token's 15 minutes), so that a valid token is always at hand.
fn next_refresh(refresh: Duration, s: &TokenState) -> Duration {
    let left = s.token.as_ref().map_or(Duration::ZERO, |t| {
        t.expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    });
    let before_expiry = left.saturating_sub(2 * EXPIRY_MARGIN);
    refresh.min(before_expiry.max(Duration::from_secs(1)))
}

/// Whether a server's error refuses the credentials: `WRONGPASS` (Redis 6+, Valkey), or
/// `ERR invalid password` (Redis 5, where ElastiCache's token rotation began).
pub fn refused(error: &str) -> bool {
    error.starts_with("WRONGPASS") || error.starts_with("ERR invalid password")
}

/// The passwords with their places, the one the server took last first.
fn ordered<'a>(
    list: &'a [Password],
    preferred: &AtomicUsize,
) -> impl Iterator<Item = (usize, &'a Password)> {
    let first = preferred.load(Ordering::Relaxed);
    let rest = (0..list.len()).filter(move |i| *i != first);
    std::iter::once(first).chain(rest).map(|i| (i, &list[i]))
}

/// Signs a token now and every `refresh`, retrying failures with backoff; the previous token is
/// kept while it is valid, so a throttled or briefly unreachable credentials provider costs
/// nothing.
struct Signer {
    auth: Auth,
    /// The upstream's name, which may say the region.
    host: String,
    metrics: ListenerMetrics,
}

impl Signer {
    async fn run(self) {
        let Kind::Iam { settings, state } = &self.auth.0.kind else {
            return;
        };
        let name = &self.auth.0.listener;
        let mut retry = Duration::from_secs(1);
        loop {
            let next = match self.sign(settings).await {
                Ok(token) => {
                    self.metrics.iam_token("ok");
                    let failed = state.borrow().error.is_some();
                    if failed {
                        tracing::info!(listener = %name, "IAM token signed again");
                    }
                    tracing::debug!(listener = %name, identity = %token.identity, "IAM token signed");
                    state.send_replace(TokenState {
                        token: Some(token),
                        error: None,
                        tried: true,
                    });
                    self.auth.0.version.fetch_add(1, Ordering::Release);
                    retry = Duration::from_secs(1);
                    next_refresh(settings.refresh, &state.borrow())
                }
                Err(e) => {
                    self.metrics.iam_token(e.result_label());
                    let s = state.borrow().clone();
                    if s.error.is_none() && s.valid().is_some() {
                        tracing::warn!(listener = %name, "IAM token: {e}; the current token is used while it lasts");
                    } else {
                        // Without a token, every dial fails with this reason, and the pool
                        // (or the first client refused) logs it at WARN: once is enough.
                        tracing::debug!(listener = %name, "IAM token: {e}");
                    }
                    state.send_modify(|s| {
                        s.error = Some(e);
                        s.tried = true;
                    });
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY).min(settings.refresh);
                    wait
                }
            };
            let at = SystemTime::now() + next;
            if let Ok(unix) = at.duration_since(SystemTime::UNIX_EPOCH) {
                self.metrics.iam_next_refresh(unix.as_secs_f64());
            }
            tokio::time::sleep(next).await;
        }
    }

    async fn sign(&self, settings: &IamAuth) -> Result<Token, IamError> {
        let region = match settings
            .region
            .clone()
            .or_else(|| iam::region_from_endpoint(&self.host))
        {
            Some(r) => r,
            None => iam::sdk_region().await.ok_or_else(|| {
                IamError::Failed("no AWS region: set region in [auth.iam] (or AWS_REGION)".into())
            })?,
        };
        let req = TokenRequest {
            cache: settings.cache.clone(),
            user: self.auth.0.username.clone().unwrap_or_default(),
            region,
            service: settings.service,
            serverless: settings.serverless,
        };
        settings.source.sign(&req).await
    }
}
