//! The one authority on where a listener's upstream is. The pool, the shared sessions and every
//! client's own session read its [`Truth`] and retire what it says is no longer there; nothing
//! else decides that the upstream moved.
//!
//! Every second it re-resolves the listener's names, whatever its `role`. With a `role` it also
//! asks the node it follows (over a probe session of its own) what it is now, and when the name
//! or the answer says otherwise it dials the candidates to find the node that has the role. Without
//! a `role` the listener follows what the name points to: once the name has pointed at a
//! primary, a session on an address the name no longer gives is on a node that moved, and is
//! retired; a session that sees its node demoted (`-READONLY`, `-UNBLOCKED … master ->
//! replica`) makes the check run at once. A reader endpoint, whose name rotates over replicas,
//! leaves its sessions alone.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::conn::{self, At, Conn, NodeRole};
use super::dial::{Stage, dial};
use super::resolve::Resolver;
use crate::auth::Auth;
use crate::config::{ListenerConfig, Role};
use crate::limits::{NODE_CHECK, REMEMBERED_MOVES};
use crate::lock;
use crate::ops::metrics::ListenerMetrics;

/// Where the upstream is now, as every session must see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    role: Role,
    /// Bumped at every move.
    generation: u64,
    /// With a `role`: the node that has it. Without: the primary the name points to. `None`
    /// while unknown (nothing is retired for not being on an unknown node).
    node: Option<SocketAddr>,
    /// Sessions on this address made before this generation are on a node that moved away
    /// (a primary demoted, or one the name no longer gives).
    left: Vec<(SocketAddr, u64)>,
    /// Without a `role`: the name has pointed at a primary (it is a primary endpoint, not a
    /// reader endpoint rotating over replicas), so sessions follow exactly what it resolves to.
    follows_primary: bool,
    /// What the names resolved to at the last check that could resolve them (sorted).
    resolved: Option<Vec<SocketAddr>>,
}

impl Truth {
    /// Whether a session at `at` is still on the upstream.
    pub fn holds(&self, at: &At) -> bool {
        let left = self
            .left
            .iter()
            .any(|(addr, g)| *addr == at.peer && at.born < *g);
        match self.role {
            // A primary endpoint's name moved off this node: even a session made to it as a
            // replica (while the name still lagged) is on the wrong node now.
            Role::Any => {
                let named = !self.follows_primary
                    || self.resolved.as_ref().is_none_or(|r| r.contains(&at.peer));
                !left && named
            }
            Role::Primary | Role::Replica => !left && self.node.is_none_or(|n| n == at.peer),
        }
    }

    /// The node followed, when known.
    pub fn node(&self) -> Option<SocketAddr> {
        self.node
    }

    /// `addr`'s sessions made until now are retired.
    fn leave(&mut self, addr: SocketAddr) {
        self.generation += 1;
        if self.left.len() == REMEMBERED_MOVES {
            self.left.remove(0);
        }
        self.left.push((addr, self.generation));
        if self.node == Some(addr) {
            self.node = None;
        }
    }
}

/// A cheap handle; clones share one authority.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    l: Arc<ListenerConfig>,
    resolver: Resolver,
    auth: Auth,
    truth: watch::Sender<Truth>,
    /// Wakes the check: a session saw its node demoted.
    check_now: Notify,
    /// What the names resolved to at the last check, for the move's log line.
    resolved: Mutex<Vec<SocketAddr>>,
    metrics: ListenerMetrics,
}

impl Node {
    /// Starts the authority and its once-a-second check, which runs until `stop`.
    pub fn start(
        l: Arc<ListenerConfig>,
        resolver: Resolver,
        auth: Auth,
        metrics: ListenerMetrics,
        stop: CancellationToken,
    ) -> Node {
        let truth = Truth {
            role: l.role,
            ..Truth::default()
        };
        let node = Node {
            inner: Arc::new(Inner {
                l,
                resolver,
                auth,
                truth: watch::Sender::new(truth),
                check_now: Notify::new(),
                resolved: Mutex::new(Vec::new()),
                metrics,
            }),
        };
        tokio::spawn(node.clone().run(stop));
        node
    }

    /// The truth now.
    pub fn truth(&self) -> Truth {
        self.inner.truth.borrow().clone()
    }

    /// The truth, and every change to it.
    pub fn watch(&self) -> watch::Receiver<Truth> {
        self.inner.truth.subscribe()
    }

    /// A fresh session reached `at`: records where the upstream is (a different node than
    /// before is a move) and stamps the session with the generation it belongs to.
    pub fn observe(&self, at: &mut At) {
        // Some(old): the node changed; old is None when it was not known before.
        let mut change = None;
        self.inner.truth.send_if_modified(|t| {
            let moves = match t.role {
                Role::Any => at.role == Some(NodeRole::Primary),
                Role::Primary | Role::Replica => true,
            };
            let newly_primary = t.role == Role::Any && moves && !t.follows_primary;
            t.follows_primary |= moves && t.role == Role::Any;
            let changed = moves && t.node != Some(at.peer);
            if changed {
                change = Some(t.node);
                match t.node {
                    Some(old) => t.leave(old),
                    None => t.generation += 1,
                }
                t.node = Some(at.peer);
            }
            at.born = t.generation;
            changed || newly_primary
        });
        let l = &self.inner.l;
        let unnamed = {
            let t = self.inner.truth.borrow();
            t.follows_primary && t.resolved.as_ref().is_some_and(|r| !r.contains(&at.peer))
        };
        if unnamed {
            // The name moved between the last check and this dial: look again now.
            self.inner.check_now.notify_one();
        }
        match change {
            Some(Some(old)) => self.moved(old, &at.peer.to_string()),
            Some(None) if l.role != Role::Any => {
                tracing::info!(listener = %l.name, node = %at.peer, "{} found", l.role);
            }
            _ => {}
        }
    }

    /// A session at `at` was told its node is a replica now (`-READONLY`, `-UNBLOCKED …`).
    ///
    /// Without a `role` the name decides: the check runs now, and if the name already points
    /// elsewhere every session on the old node is retired at once (so a client sees
    /// `-READONLY` at most once); if it still points there (its DNS lags, or the node was made a
    /// replica on purpose) the listener stays, as a direct client reconnecting would. With
    /// `role = "primary"` a session that reached a primary is on a node that lost the role: every
    /// session made to it before is retired at once, and the check finds where the primary went.
    pub fn demoted(&self, at: &At) {
        let role = self.inner.l.role;
        if role == Role::Any && self.inner.truth.borrow().follows_primary {
            self.inner.check_now.notify_one();
        }
        if role != Role::Primary || at.role != Some(NodeRole::Primary) {
            return;
        }
        let left = self.inner.truth.send_if_modified(|t| {
            let known = t.left.iter().any(|(a, g)| *a == at.peer && at.born < *g);
            if !known {
                t.leave(at.peer);
            }
            !known
        });
        if left {
            let now: Vec<String> = lock(&self.inner.resolved)
                .iter()
                .filter(|a| **a != at.peer)
                .map(ToString::to_string)
                .collect();
            let new = if now.is_empty() {
                format!("wherever {} points next", self.inner.l.upstream_list())
            } else {
                now.join(",")
            };
            self.moved(at.peer, &new);
        }
        self.inner.check_now.notify_one();
    }

    fn moved(&self, old: SocketAddr, new: &str) {
        let l = &self.inner.l;
        self.inner.metrics.failovers.inc();
        tracing::warn!(listener = %l.name, %old, %new,
            "the upstream moved; sessions on the old node are retired and their clients moved");
    }

    async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(NODE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe: Option<Conn> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.inner.check_now.notified() => {}
            }
            self.check(&mut probe).await;
        }
    }

    /// One check: DNS for every listener, and the probe's answer for a `role`.
    async fn check(&self, probe: &mut Option<Conn>) {
        let resolved = self.resolve().await;
        let node = self.truth().node;
        match self.inner.l.role {
            Role::Any => {
                if let Some(now) = &resolved {
                    let mut sorted = now.clone();
                    sorted.sort();
                    sorted.dedup();
                    self.inner.truth.send_if_modified(|t| {
                        let differs = t.resolved.as_ref() != Some(&sorted);
                        if differs {
                            t.resolved = Some(sorted);
                        }
                        differs && t.follows_primary
                    });
                }
                if let (Some(p), Some(now)) = (node, &resolved)
                    && !now.contains(&p)
                {
                    self.inner.truth.send_modify(|t| t.leave(p));
                    let new: Vec<String> = now.iter().map(ToString::to_string).collect();
                    self.moved(p, &new.join(","));
                }
            }
            Role::Primary | Role::Replica => {
                let named = node.is_some_and(|n| resolved.as_ref().is_none_or(|r| r.contains(&n)));
                if named && self.still_has_role(probe, node).await {
                    return;
                }
                self.find(probe).await;
            }
        }
    }

    /// The addresses every candidate resolves to now; `None` when none could be resolved (a
    /// resolver outage says nothing about where the upstream is).
    async fn resolve(&self) -> Option<Vec<SocketAddr>> {
        let l = &self.inner.l;
        let mut all = Vec::new();
        let mut any = false;
        for up in &l.upstreams {
            let lookup = self.inner.resolver.lookup(&up.addr.host, up.addr.port);
            if let Ok(Ok(addrs)) = timeout(l.connect_timeout, lookup).await {
                any = true;
                all.extend(addrs);
            }
        }
        if any {
            lock(&self.inner.resolved).clone_from(&all);
        }
        any.then_some(all)
    }

    /// Asks the probe (when it is on the node followed) whether the node still has the role.
    async fn still_has_role(&self, probe: &mut Option<Conn>, node: Option<SocketAddr>) -> bool {
        // An IAM probe due to authenticate again is replaced by a fresh dial instead.
        let fresh = |p: &Conn| {
            let every = self.inner.auth.reauth_after();
            every.is_none_or(|every| p.authed.elapsed() < every)
        };
        let Some(p) = probe
            .as_mut()
            .filter(|p| Some(p.at.peer) == node && fresh(p))
        else {
            return false;
        };
        let l = &self.inner.l;
        match timeout(l.connect_timeout, ask_role(p)).await {
            Ok(Some(r)) if conn::admits(l.role, Some(r)) => true,
            _ => {
                *probe = None;
                false
            }
        }
    }

    /// Dials the candidates for the node with the role; it becomes the node followed (a move if
    /// it differs) and the new probe. When no candidate has the role, nothing is followed and
    /// clients get the reason rather than a node of the wrong kind.
    async fn find(&self, probe: &mut Option<Conn>) {
        let l = &self.inner.l;
        match dial(l, &self.inner.resolver, &self.inner.auth).await {
            Ok(mut c) => {
                self.observe(&mut c.at);
                *probe = Some(c);
            }
            Err(e) if e.stage == Stage::Role => {
                *probe = None;
                let lost = self.inner.truth.send_if_modified(|t| {
                    let had = t.node.take().is_some();
                    if had {
                        t.generation += 1;
                    }
                    had
                });
                if lost {
                    self.inner.metrics.failovers.inc();
                }
                tracing::warn!(listener = %l.name, "{e}");
            }
            Err(e) => tracing::debug!(listener = %l.name, "role check: {e}"),
        }
    }
}

/// What the node behind `c` is now: `HELLO`'s role, or `ROLE`'s when HELLO says nothing.
async fn ask_role(c: &mut Conn) -> Option<NodeRole> {
    let mut buf = bytes::BytesMut::new();
    let hello = conn::request(&mut c.stream, &[b"HELLO", b"2"], &mut buf)
        .await
        .ok()?;
    if let Some(r) = conn::hello_role(&hello) {
        return Some(r).filter(|_| buf.is_empty());
    }
    let reply = conn::request(&mut c.stream, &[b"ROLE"], &mut buf)
        .await
        .ok()?;
    conn::role_of(&reply).filter(|_| buf.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(peer: &str, role: Option<NodeRole>, born: u64) -> At {
        At {
            peer: peer.parse().unwrap(),
            candidate: 0,
            role,
            born,
            cluster: false,
        }
    }

    #[test]
    fn without_a_role_only_sessions_made_before_a_move_are_retired() {
        let a = "10.0.0.1:6379".parse().unwrap();
        let mut t = Truth {
            role: Role::Any,
            node: Some(a),
            ..Truth::default()
        };
        let before = at("10.0.0.1:6379", Some(NodeRole::Primary), 0);
        let replica = at("10.0.0.2:6379", Some(NodeRole::Replica), 0);
        assert!(t.holds(&before) && t.holds(&replica));
        t.leave(a);
        assert!(!t.holds(&before), "a session on the demoted primary");
        assert!(t.holds(&replica), "a reader's session elsewhere");
        assert_eq!(t.node(), None);
        // The same address dialled again after the move (the name still points there) holds.
        assert!(t.holds(&at("10.0.0.1:6379", Some(NodeRole::Replica), t.generation)));
    }

    #[test]
    fn with_a_role_sessions_hold_on_the_node_followed_only() {
        let mut t = Truth {
            role: Role::Primary,
            ..Truth::default()
        };
        let s = at("10.0.0.1:6379", Some(NodeRole::Primary), 0);
        assert!(t.holds(&s), "nothing is retired while the node is unknown");
        t.leave(s.peer);
        assert!(
            !t.holds(&s),
            "a demoted node's sessions, even before the new one is known"
        );
        t.node = Some("10.0.0.2:6379".parse().unwrap());
        assert!(!t.holds(&at("10.0.0.1:6379", Some(NodeRole::Primary), t.generation)));
    }
}
