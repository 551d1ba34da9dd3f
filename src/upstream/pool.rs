//! Per-listener pool of dialled, authenticated upstream sessions, and the watch on which node
//! they should be on.
//!
//! A background task keeps `min_idle` sessions ready (refilling with exponential backoff and
//! jitter while the upstream fails), PINGs idle ones every `health_interval`, replaces those
//! older than `max_lifetime`, and, for `role = "primary" | "replica"`, re-resolves and re-checks
//! `ROLE` every second. When the node moves it drops idle sessions to the old one and publishes
//! a new [`Epoch`], on which sessions pinned to the old node close at their next reply boundary.
//! A client's session goes back to the pool only after `RESET` + `AUTH` were answered as
//! expected, so nothing of one client is visible to the next.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::conn;
use super::dial::{DialError, Dialed, Stage, dial};
use super::mux::Mux;
use crate::config::{ListenerConfig, Role};
use crate::lock;
use crate::ops::metrics::ListenerMetrics;
use crate::proto;

/// How often the node a `role` listener uses is re-checked.
const ROLE_CHECK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Which node sessions of this listener should be on. Sessions to another node drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epoch {
    /// `None` until known, and always for `role = "any"`.
    pub node: Option<SocketAddr>,
}

/// A cheap handle; clones share one pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// A handle that does not keep the pool alive (held by the pool's own shared sessions).
pub struct WeakPool(std::sync::Weak<Inner>);

impl WeakPool {
    pub fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(|inner| Pool { inner })
    }
}

struct Inner {
    l: Arc<ListenerConfig>,
    idle: Mutex<Vec<Dialed>>,
    /// Wakes the maintainer: a session was taken, or a demotion was seen.
    wake: Notify,
    check_role_now: AtomicBool,
    /// The last background dial error while the upstream is failing; clients get it at once
    /// instead of waiting on a dial that is known to fail.
    failing: Mutex<Option<DialError>>,
    epoch: watch::Sender<Epoch>,
    reset_unsupported: AtomicBool,
    stop: CancellationToken,
    metrics: ListenerMetrics,
    /// A dial has succeeded at least once.
    reached: AtomicBool,
    /// The pool has held `min_idle` ready sessions at least once.
    filled: AtomicBool,
    mux: Mux,
}

impl Pool {
    /// Creates the pool and starts its maintainer, which dials `min_idle` sessions right away.
    pub fn start(
        l: Arc<ListenerConfig>,
        stop: CancellationToken,
        metrics: ListenerMetrics,
    ) -> Pool {
        let pool = Pool {
            inner: Arc::new(Inner {
                idle: Mutex::new(Vec::new()),
                wake: Notify::new(),
                check_role_now: AtomicBool::new(false),
                failing: Mutex::new(None),
                epoch: watch::Sender::new(Epoch::default()),
                reset_unsupported: AtomicBool::new(false),
                stop,
                metrics,
                reached: AtomicBool::new(false),
                filled: AtomicBool::new(false),
                mux: Mux::new(l.pool.multiplex),
                l,
            }),
        };
        tokio::spawn(maintain(pool.clone()));
        pool
    }

    pub fn listener(&self) -> &Arc<ListenerConfig> {
        &self.inner.l
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

    /// Dials and counts: result, duration, the certificate's expiry, the open session.
    async fn dial(&self) -> Result<Dialed, DialError> {
        let m = &self.inner.metrics;
        let started = Instant::now();
        match dial(&self.inner.l).await {
            Ok(mut s) => {
                m.dial(None);
                m.handshake.observe(started.elapsed().as_secs_f64());
                self.inner.reached.store(true, Ordering::Relaxed);
                let conn = &s.stream.get_ref().1;
                if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed)
                    && let Some(t) = conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::not_after(c))
                {
                    m.cert_expiry(&self.inner.l.upstreams[s.candidate].addr.to_string(), t);
                }
                s.open = Some(m.upstream_guard());
                Ok(s)
            }
            Err(e) => {
                m.dial(Some(e.stage));
                Err(e)
            }
        }
    }

    /// The listener's shared sessions.
    pub fn mux(&self) -> &Mux {
        &self.inner.mux
    }

    pub fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.inner))
    }

    /// The node sessions should be on now, when known.
    pub fn current_node(&self) -> Option<SocketAddr> {
        self.inner.epoch.borrow().node
    }

    /// The node sessions should be on; changes on failover.
    pub fn epoch(&self) -> watch::Receiver<Epoch> {
        self.inner.epoch.subscribe()
    }

    /// A ready session: an idle one (no handshake on the client's path) or, when none is idle,
    /// a fresh dial. While the upstream is known to be failing, the last error at once.
    pub async fn checkout(&self) -> Result<Dialed, DialError> {
        let node = self.inner.epoch.borrow().node;
        loop {
            let Some(mut s) = lock(&self.inner.idle).pop() else {
                break;
            };
            if node.is_some_and(|n| n != s.peer) || !still_open(&mut s) {
                continue; // to a demoted node, or closed by the server meanwhile
            }
            self.inner.wake.notify_one(); // refill behind us
            return Ok(s);
        }
        self.inner.wake.notify_one();
        if let Some(e) = lock(&self.inner.failing).clone() {
            return Err(e);
        }
        self.dial().await
    }

    /// A session saw `-READONLY` / `-UNBLOCKED … master -> replica`: re-check the role now.
    pub fn demoted(&self) {
        self.inner.check_role_now.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// Returns a session whose client left at a clean reply boundary: `RESET` + `AUTH`
    /// pipelined, both replies checked, then it is idle again. Anything unexpected closes it.
    pub async fn give_back(&self, mut s: Dialed) {
        let l = &self.inner.l;
        let node = self.inner.epoch.borrow().node;
        if !l.pool.reuse
            || self.inner.reset_unsupported.load(Ordering::Relaxed)
            || self.inner.stop.is_cancelled()
            || s.created.elapsed() >= l.pool.max_lifetime
            || node.is_some_and(|n| n != s.peer)
            || !s.leftover.is_empty()
        {
            return;
        }
        match timeout(l.connect_timeout, reset(&mut s, l)).await {
            Ok(Ok(())) => {
                let mut idle = lock(&self.inner.idle);
                if idle.len() < l.pool.max_idle {
                    tracing::debug!(listener = %l.name, peer = %s.peer, "session reset and back in the pool");
                    idle.push(s);
                    self.inner.metrics.reused.inc();
                }
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
    }
}

enum ResetError {
    Unsupported(String),
    Other(String),
}

async fn reset(s: &mut Dialed, l: &ListenerConfig) -> Result<(), ResetError> {
    let other = |e: &dyn std::fmt::Display| ResetError::Other(e.to_string());
    let mut cmd = BytesMut::new();
    proto::encode_command(&mut cmd, &[b"RESET"]);
    if let Some(c) = &l.auth {
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
    if l.auth.is_some() {
        match conn::read_frame(&mut s.stream, &mut buf).await {
            Ok(OwnedFrame::SimpleString(_)) => {}
            Ok(f) => return Err(other(&format!("AUTH after RESET answered {f:?}"))),
            Err(e) => return Err(other(&e)),
        }
    }
    if !buf.is_empty() {
        return Err(other(&"unexpected bytes after RESET"));
    }
    Ok(())
}

/// Whether an idle session is still usable: polls it once without waiting. TLS records that
/// carry no data (session tickets) are absorbed by rustls; EOF, an error or any data (an idle
/// session should receive none) mean it is not.
fn still_open(s: &mut Dialed) -> bool {
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
    let mut backoff = BACKOFF_MIN;
    let mut next_health = Instant::now() + l.pool.health_interval;
    let mut next_role = Instant::now();
    // Nothing to keep ready with min_idle = 0, but readiness means the upstream was reached
    // once: try until it is.
    while l.pool.min_idle == 0
        && !inner.reached.load(Ordering::Relaxed)
        && !inner.stop.is_cancelled()
    {
        dial_or_back_off(&pool, &mut backoff).await;
    }
    loop {
        if inner.stop.is_cancelled() {
            lock(&inner.idle).clear();
            return;
        }
        // Keep min_idle sessions ready.
        let ready = lock(&inner.idle).len();
        if ready >= l.pool.min_idle && inner.reached.load(Ordering::Relaxed) {
            inner.filled.store(true, Ordering::Relaxed);
        }
        if ready < l.pool.min_idle {
            if let Some(s) = dial_or_back_off(&pool, &mut backoff).await {
                note_node(&pool, s.peer);
                if inner.epoch.borrow().node.is_none_or(|n| n == s.peer) {
                    lock(&inner.idle).push(s);
                }
            }
            continue;
        }
        let role_due = l.role != Role::Any;
        let mut wake_at = next_health;
        if role_due {
            wake_at = wake_at.min(next_role);
        }
        tokio::select! {
            _ = inner.stop.cancelled() => continue,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        let now = Instant::now();
        if role_due && (now >= next_role || inner.check_role_now.swap(false, Ordering::Relaxed)) {
            check_role(&pool).await;
            next_role = Instant::now() + ROLE_CHECK;
        }
        if now >= next_health {
            health_check(&pool).await;
            next_health = Instant::now() + l.pool.health_interval;
        }
    }
}

/// One background dial. A failure becomes the error clients get at once while it lasts (logged
/// once per outage) and the maintainer backs off; a success ends the outage.
async fn dial_or_back_off(pool: &Pool, backoff: &mut Duration) -> Option<Dialed> {
    let inner = &pool.inner;
    let l = &inner.l;
    match pool.dial().await {
        Ok(s) => {
            if lock(&inner.failing).take().is_some() {
                tracing::info!(listener = %l.name, upstream = %l.upstream_list(), "upstream reachable again");
            }
            *backoff = BACKOFF_MIN;
            Some(s)
        }
        Err(e) => {
            if lock(&inner.failing).replace(e.clone()).is_none() {
                tracing::warn!(listener = %l.name, "cannot fill the pool: {e}; retrying with backoff");
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

/// Records the node a fresh `role` session reached; a different one than before is a failover.
fn note_node(pool: &Pool, peer: SocketAddr) {
    let inner = &pool.inner;
    if inner.l.role == Role::Any {
        return;
    }
    let old = inner.epoch.borrow().node;
    if old == Some(peer) {
        return;
    }
    match old {
        Some(old) => {
            inner.metrics.failovers.inc();
            tracing::warn!(listener = %inner.l.name, %old, new = %peer,
                "{} moved; draining sessions on the old node", inner.l.role)
        }
        None => tracing::info!(listener = %inner.l.name, node = %peer, "{} found", inner.l.role),
    }
    lock(&inner.idle).retain(|s| s.peer == peer);
    inner.epoch.send_replace(Epoch { node: Some(peer) });
}

/// Is the current node still the one with the right role? Re-resolves the candidates (a DNS
/// change is a move), asks an idle session `ROLE`, and when either says no, dials afresh to
/// find the node that now has the role.
async fn check_role(pool: &Pool) {
    let inner = &pool.inner;
    let l = &inner.l;
    let Some(node) = inner.epoch.borrow().node else {
        return;
    };
    let mut still_there = false;
    for up in &l.upstreams {
        let host = (up.addr.host.as_str(), up.addr.port);
        if let Ok(Ok(mut addrs)) = timeout(l.connect_timeout, tokio::net::lookup_host(host)).await
            && addrs.any(|a| a == node)
        {
            still_there = true;
            break;
        }
    }
    if still_there {
        let idle = lock(&inner.idle).pop();
        if let Some(mut s) = idle {
            match timeout(l.connect_timeout, ask_role(&mut s)).await {
                Ok(Some(r)) if l.role.matches(&r) => {
                    lock(&inner.idle).push(s);
                    return;
                }
                _ => {} // wrong role now, or the session died: look again
            }
        }
    }
    match pool.dial().await {
        Ok(s) => {
            note_node(pool, s.peer);
            let mut idle = lock(&inner.idle);
            if idle.len() < l.pool.max_idle.max(1) {
                idle.push(s);
            }
        }
        Err(e) if e.stage == Stage::Role => {
            tracing::warn!(listener = %l.name, "{e}");
        }
        Err(e) => tracing::debug!(listener = %l.name, "role check: {e}"),
    }
}

async fn ask_role(s: &mut Dialed) -> Option<String> {
    let mut buf = BytesMut::new();
    let reply = conn::request(&mut s.stream, &[b"ROLE"], &mut buf)
        .await
        .ok()?;
    conn::role_of(&reply).filter(|_| buf.is_empty())
}

/// PINGs every idle session, one at a time so the others stay available to clients; drops
/// dead ones and those past `max_lifetime`.
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
        if s.created.elapsed() >= l.pool.max_lifetime {
            tracing::debug!(listener = %l.name, peer = %s.peer, "idle session past max_lifetime; replaced");
            continue;
        }
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
            }
        } else {
            tracing::debug!(listener = %l.name, peer = %s.peer, "idle session failed its PING; replaced");
        }
    }
    inner.wake.notify_one();
}
