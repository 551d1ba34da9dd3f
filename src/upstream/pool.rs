//! Per-listener pool of dialled, authenticated upstream sessions.
//!
//! A background task keeps `min_idle` sessions ready (refilling with exponential backoff and
//! jitter while the upstream fails), PINGs idle ones every `health_interval`, closes each at its
//! `max_lifetime`, and drops every idle session the node authority says is no longer on the
//! upstream. A client's session goes back to the pool only after `RESET` + `AUTH` were answered
//! as expected, so nothing of one client is visible to the next; and a session out with a client
//! counts against `max_idle` while it is out, so the refill never dials what a returning session
//! would bring back.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Conn, Open};
use super::dial::{DialError, Stage, dial};
use super::node::Node;
use super::resolve::Resolver;
use crate::admission::{Admission, Slot};
use crate::auth::Auth;
use crate::config::ListenerConfig;
use crate::limits::{BACKOFF_MAX, BACKOFF_MIN};
use crate::lock;
use crate::ops::metrics::{Limit, ListenerMetrics};
use crate::proto;

/// A cheap handle; clones share one pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    l: Arc<ListenerConfig>,
    resolver: Resolver,
    auth: Auth,
    node: Node,
    idle: Mutex<Vec<Conn>>,
    /// Sessions out with clients that may come back.
    lent: AtomicUsize,
    /// Wakes the maintainer: a session was taken or came back.
    wake: Notify,
    /// The last background dial error while the upstream is failing; clients get it at once
    /// instead of waiting on a dial that is known to fail.
    failing: Mutex<Option<DialError>>,
    reset_unsupported: AtomicBool,
    stop: CancellationToken,
    metrics: ListenerMetrics,
    /// Sessions open against `max_sessions`: every session this pool dials takes a slot.
    admission: Arc<Admission>,
    /// A dial has succeeded at least once.
    reached: AtomicBool,
    /// The pool has held `min_idle` ready sessions at least once.
    filled: AtomicBool,
    /// A dial reached a server in cluster mode; and whom to tell (see [`Pool::on_cluster`]).
    saw_cluster: AtomicBool,
    on_cluster: std::sync::OnceLock<Arc<dyn proto::rewrite::Map + Send + Sync>>,
}

/// A session out with a client, counted until it comes back or is dropped (which wakes the
/// maintainer: a session that will not come back may need replacing).
pub struct Lent(Pool);

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.inner.lent.fetch_sub(1, Ordering::Relaxed);
        self.0.inner.wake.notify_one();
    }
}

impl Pool {
    /// Creates the pool and starts its maintainer, which dials `min_idle` sessions right away.
    pub fn start(
        l: Arc<ListenerConfig>,
        resolver: Resolver,
        auth: Auth,
        node: Node,
        metrics: ListenerMetrics,
        admission: Arc<Admission>,
        stop: CancellationToken,
    ) -> Pool {
        let pool = Pool {
            inner: Arc::new(Inner {
                l,
                resolver,
                auth,
                node,
                idle: Mutex::new(Vec::new()),
                lent: AtomicUsize::new(0),
                wake: Notify::new(),
                failing: Mutex::new(None),
                reset_unsupported: AtomicBool::new(false),
                stop,
                metrics,
                admission,
                reached: AtomicBool::new(false),
                filled: AtomicBool::new(false),
                saw_cluster: AtomicBool::new(false),
                on_cluster: std::sync::OnceLock::new(),
            }),
        };
        tokio::spawn(maintain(pool.clone()));
        pool
    }

    /// Tells `map` when a dial reaches a server in cluster mode (already, or from now on), so
    /// a cluster's topology is read before any client asks.
    pub fn on_cluster(&self, map: Arc<dyn proto::rewrite::Map + Send + Sync>) {
        let map = self.inner.on_cluster.get_or_init(|| map);
        if self.inner.saw_cluster.load(Ordering::SeqCst) {
            map.in_use();
        }
    }

    /// Sessions ready now.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    pub fn metrics(&self) -> &ListenerMetrics {
        &self.inner.metrics
    }

    /// Brings the idle gauge up to date (read at scrape time rather than on every change).
    pub fn refresh_gauges(&self) {
        let n = self.idle_count();
        self.inner
            .metrics
            .upstream_idle
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Ready when the upstream has been reached at least once and the pool has held
    /// `min_idle` sessions; otherwise why not, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        let inner = &self.inner;
        if !inner.reached.load(Ordering::Relaxed) {
            let why = lock(&inner.failing)
                .as_ref()
                .map_or_else(|| "no attempt finished yet".to_owned(), |e| e.to_string());
            return Err(format!("upstream not reached yet: {why}"));
        }
        if !inner.filled.load(Ordering::Relaxed) {
            return Err(format!(
                "{} of {} pooled sessions ready",
                self.idle_count(),
                inner.l.pool.min_idle
            ));
        }
        Ok(())
    }

    /// Dials in `slot`, tells the node authority where it landed, and counts: result,
    /// duration, the certificate's expiry, the open session.
    async fn dial(&self, slot: Slot) -> Result<Conn, DialError> {
        let m = &self.inner.metrics;
        let started = Instant::now();
        match dial(&self.inner.l, &self.inner.resolver, &self.inner.auth).await {
            Ok(mut s) => {
                m.dial(None);
                m.handshake.observe(started.elapsed().as_secs_f64());
                self.inner.reached.store(true, Ordering::Relaxed);
                self.inner.node.observe(&mut s.at);
                if s.at.cluster {
                    self.inner.saw_cluster.store(true, Ordering::SeqCst);
                    if let Some(map) = self.inner.on_cluster.get() {
                        map.in_use();
                    }
                }
                let tls = &s.stream.get_ref().1;
                if tls.handshake_kind() != Some(rustls::HandshakeKind::Resumed)
                    && let Some(t) = tls
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::not_after(c))
                {
                    m.cert_expiry(&self.inner.l.upstreams[s.at.candidate].addr.to_string(), t);
                }
                s.open = Some(Open::new(m.upstream_guard(), slot));
                Ok(s)
            }
            Err(e) => {
                m.dial(Some(e.stage));
                Err(e)
            }
        }
    }

    /// Whether `e` is the outage the pool has logged (once, at WARN): a client refused with it
    /// is logged at DEBUG, so that an outage under many clients is one WARN, not one per client.
    pub fn outage_logged(&self, e: &DialError) -> bool {
        lock(&self.inner.failing).as_ref() == Some(e)
    }

    /// A ready session: an idle one (no handshake on the client's path) or, when none is idle,
    /// a fresh dial. While the upstream is known to be failing, the last error at once. With
    /// `max_sessions` open, it waits up to `connect_timeout` for one to be freed or to come
    /// back to the pool.
    pub async fn checkout(&self) -> Result<Conn, DialError> {
        let l = &self.inner.l;
        let sessions = &self.inner.admission.sessions;
        let deadline = tokio::time::Instant::now() + l.connect_timeout;
        loop {
            let mut freed = std::pin::pin!(sessions.freed());
            freed.as_mut().enable();
            if let Some(s) = self.take_idle() {
                return Ok(s);
            }
            self.inner.wake.notify_one();
            if let Some(e) = lock(&self.inner.failing).clone() {
                return Err(e);
            }
            if let Some(slot) = sessions.try_take(l.max_sessions) {
                return self.dial(slot).await;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                self.inner.metrics.limit_hit(Limit::MaxSessions);
                return Err(DialError {
                    stage: Stage::Limit,
                    upstream: l.upstream_list(),
                    reason: format!(
                        "max_sessions ({}) upstream sessions are open and none was freed within {}",
                        l.max_sessions,
                        humantime::format_duration(l.connect_timeout)
                    ),
                });
            }
        }
    }

    /// The newest idle session still on the upstream, open and young enough.
    fn take_idle(&self) -> Option<Conn> {
        let truth = self.inner.node.truth();
        loop {
            let mut s = lock(&self.inner.idle).pop()?;
            if !truth.holds(&s.at) || self.expired(&s) || !still_open(&mut s) {
                continue; // on a node that moved, too old, or closed by the server meanwhile
            }
            self.inner.wake.notify_one(); // refill behind us
            return Some(s);
        }
    }

    /// A session for one client's own use, counted against `max_idle` until it comes back.
    pub async fn checkout_own(&self) -> Result<(Conn, Lent), DialError> {
        self.inner.lent.fetch_add(1, Ordering::Relaxed);
        let lent = Lent(self.clone());
        Ok((self.checkout().await?, lent))
    }

    fn expired(&self, s: &Conn) -> bool {
        s.created.elapsed() >= self.inner.l.pool.max_lifetime
    }

    /// Returns a session whose client left at a clean reply boundary: `RESET` + `AUTH`
    /// pipelined, both replies checked, then it is idle again, in preference to any other (the
    /// oldest idle one makes room). Anything unexpected closes it.
    pub async fn give_back(&self, mut s: Conn, lent: Lent) {
        let l = &self.inner.l;
        if !l.pool.reuse
            || self.inner.reset_unsupported.load(Ordering::Relaxed)
            || self.inner.stop.is_cancelled()
            || self.expired(&s)
            || !self.inner.node.truth().holds(&s.at)
            || !s.leftover.is_empty()
        {
            return;
        }
        match timeout(l.connect_timeout, reset(&mut s, &self.inner.auth)).await {
            Ok(Ok(())) => {
                tracing::debug!(listener = %l.name, peer = %s.at.peer, "session reset and back in the pool");
                let mut idle = lock(&self.inner.idle);
                idle.push(s);
                if idle.len() > l.pool.max_idle {
                    idle.remove(0);
                }
                drop(idle);
                self.inner.metrics.reused.inc();
                self.inner.admission.sessions.nudge(); // for a client waiting at max_sessions
            }
            Ok(Err(ResetError::Unsupported(e))) => {
                if !self.inner.reset_unsupported.swap(true, Ordering::Relaxed) {
                    tracing::info!(listener = %l.name, "the server has no RESET ({e}); sessions will not be reused");
                }
            }
            Ok(Err(ResetError::Other(e))) => {
                tracing::debug!(listener = %l.name, error = %e, "session not reusable; closed");
            }
            Err(_) => tracing::debug!(listener = %l.name, "RESET timed out; session closed"),
        }
        drop(lent);
    }
}

enum ResetError {
    Unsupported(String),
    Other(String),
}

async fn reset(s: &mut Conn, auth: &Auth) -> Result<(), ResetError> {
    let other = |e: &dyn std::fmt::Display| ResetError::Other(e.to_string());
    let mut cmd = BytesMut::new();
    proto::encode_command(&mut cmd, &[b"RESET"]);
    // During a rotation every password, the one the server took last first: a refused AUTH
    // leaves the connection as it was, so it ends authenticated if any is taken.
    let creds = auth.all();
    if auth.is_some() && creds.is_empty() {
        return Err(other(&"no valid IAM token to authenticate again with"));
    }
    for c in &creds {
        cmd.extend_from_slice(&proto::auth_command(c));
    }
    s.stream.write_all(&cmd).await.map_err(|e| other(&e))?;
    s.stream.flush().await.map_err(|e| other(&e))?;
    drop(cmd);
    let mut buf = BytesMut::new();
    match conn::read_frame(&mut s.stream, &mut buf).await {
        Ok(OwnedFrame::SimpleString(r)) if r == b"RESET" => {}
        Ok(OwnedFrame::Error(e)) if e.starts_with("ERR unknown command") => {
            return Err(ResetError::Unsupported(e));
        }
        Ok(f) => return Err(other(&format!("RESET answered {f:?}"))),
        Err(e) => return Err(other(&e)),
    }
    let mut taken = creds.is_empty();
    for _ in &creds {
        match conn::read_frame(&mut s.stream, &mut buf).await {
            Ok(OwnedFrame::SimpleString(_)) => taken = true,
            Ok(OwnedFrame::Error(e)) if crate::auth::refused(&e) => {}
            Ok(f) => return Err(other(&format!("AUTH after RESET answered {f:?}"))),
            Err(e) => return Err(other(&e)),
        }
    }
    if !taken {
        return Err(other(&"every password was refused after RESET"));
    }
    if !creds.is_empty() {
        s.authed = std::time::Instant::now();
    }
    if !buf.is_empty() {
        return Err(other(&"unexpected bytes after RESET"));
    }
    Ok(())
}

/// Whether an idle session is still usable: polls it once without waiting. TLS records that
/// carry no data (session tickets) are absorbed by rustls; EOF, an error or any data (an idle
/// session should receive none) mean it is not.
fn still_open(s: &mut Conn) -> bool {
    let mut byte = [0u8; 1];
    let mut rb = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(
        Pin::new(&mut s.stream).poll_read(&mut cx, &mut rb),
        Poll::Pending
    )
}

/// The pool's background task.
async fn maintain(pool: Pool) {
    let inner = &pool.inner;
    let l = inner.l.clone();
    let mut truth = inner.node.watch();
    let mut backoff = BACKOFF_MIN;
    let mut next_health = Instant::now() + l.pool.health_interval;
    // Nothing to keep ready with min_idle = 0, but readiness means the upstream was reached
    // once: try until it is.
    while l.pool.min_idle == 0
        && !inner.reached.load(Ordering::Relaxed)
        && !inner.stop.is_cancelled()
    {
        let mut freed = std::pin::pin!(inner.admission.sessions.freed());
        freed.as_mut().enable();
        match inner.admission.sessions.try_take(l.max_sessions) {
            Some(slot) => drop(dial_or_back_off(&pool, slot, &mut backoff).await),
            None => {
                tokio::select! {
                    _ = inner.stop.cancelled() => {}
                    _ = freed => {}
                }
            }
        }
    }
    loop {
        if inner.stop.is_cancelled() {
            lock(&inner.idle).clear();
            return;
        }
        let next_expiry = pool.prune();
        let ready = lock(&inner.idle).len();
        if ready >= l.pool.min_idle && inner.reached.load(Ordering::Relaxed) {
            inner.filled.store(true, Ordering::Relaxed);
        }
        let out = inner.lent.load(Ordering::Relaxed);
        let want = ready < l.pool.min_idle && ready + out < l.pool.max_idle.max(l.pool.min_idle);
        // At max_sessions the pool does not grow; it waits below for a session to be freed
        // (enabled first, so that one freed in between is not missed).
        let mut freed = std::pin::pin!(inner.admission.sessions.freed());
        freed.as_mut().enable();
        let slot = want
            .then(|| inner.admission.sessions.try_take(l.max_sessions))
            .flatten();
        if let Some(slot) = slot {
            if let Some(s) = dial_or_back_off(&pool, slot, &mut backoff).await {
                // A session that came back meanwhile is kept in preference to this one.
                let mut idle = lock(&inner.idle);
                if idle.len() < l.pool.min_idle {
                    idle.push(s);
                    drop(idle);
                    // A client waiting at max_sessions may have lost this slot to us.
                    inner.admission.sessions.nudge();
                }
            }
            continue;
        }
        let wake_at = next_expiry.map_or(next_health, |e| e.min(next_health));
        tokio::select! {
            _ = inner.stop.cancelled() => continue,
            _ = inner.wake.notified() => {}
            _ = truth.changed() => {}
            _ = freed, if want => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        if Instant::now() >= next_health {
            health_check(&pool).await;
            next_health = Instant::now() + l.pool.health_interval;
        }
    }
}

impl Pool {
    /// Drops idle sessions on a node that moved and those at their `max_lifetime`; returns when
    /// the next one will reach it.
    fn prune(&self) -> Option<Instant> {
        let truth = self.inner.node.truth();
        let life = self.inner.l.pool.max_lifetime;
        let mut idle = lock(&self.inner.idle);
        idle.retain(|s| truth.holds(&s.at) && s.created.elapsed() < life);
        idle.iter().map(|s| s.created + life).min()
    }
}

/// One background dial. A failure becomes the error clients get at once while it lasts (logged
/// once per outage) and the maintainer backs off; a success ends the outage.
async fn dial_or_back_off(pool: &Pool, slot: Slot, backoff: &mut Duration) -> Option<Conn> {
    let inner = &pool.inner;
    let l = &inner.l;
    match pool.dial(slot).await {
        Ok(s) => {
            if lock(&inner.failing).take().is_some() {
                tracing::info!(listener = %l.name, upstream = %l.upstream_list(), "upstream reachable again");
            }
            *backoff = BACKOFF_MIN;
            Some(s)
        }
        Err(e) => {
            if lock(&inner.failing).replace(e.clone()).is_none() {
                tracing::warn!(listener = %l.name, "cannot fill the pool ({}); retrying with backoff", e.clause());
            }
            let pause = jitter(*backoff);
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = inner.stop.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            None
        }
    }
}

/// ±50 % so that many tunnels (or listeners) do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

/// PINGs every idle session, one at a time so the others stay available to clients; drops
/// dead ones.
async fn health_check(pool: &Pool) {
    let inner = &pool.inner;
    let l = &inner.l;
    let rounds = lock(&inner.idle).len();
    for _ in 0..rounds {
        // The oldest first: LIFO checkout keeps the newest busy.
        let taken = {
            let mut idle = lock(&inner.idle);
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        let Some(mut s) = taken else { break };
        let ok = timeout(l.connect_timeout, async {
            let mut buf = BytesMut::new();
            match conn::request(&mut s.stream, &[b"PING"], &mut buf)
                .await
                .ok()?
            {
                OwnedFrame::SimpleString(p) if p == b"PONG" && buf.is_empty() => Some(()),
                _ => None,
            }
        })
        .await;
        if matches!(ok, Ok(Some(()))) {
            let mut idle = lock(&inner.idle);
            if idle.len() < l.pool.max_idle {
                idle.push(s);
                drop(idle);
                // A client waiting at max_sessions while this one was out.
                inner.admission.sessions.nudge();
            }
        } else {
            tracing::debug!(listener = %l.name, peer = %s.at.peer, "idle session failed its PING; replaced");
        }
    }
    inner.wake.notify_one();
}
