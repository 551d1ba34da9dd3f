//! Cluster mode: every node of a cluster upstream gets a local listener of its own
//! ([`nodes`]), and every node address a client can see is rewritten to one
//! ([`crate::proto::rewrite`]). The listener the user configured stays the configuration
//! endpoint.
//!
//! [`Cluster`] is the one authority on which node has which local port. Rewriting asks it for
//! the local address of whatever node a reply names and never waits: a node it has not heard of
//! gets a listener there and then. The topology ([`topology`]), read at start, after a
//! `-MOVED`, when a reply names an unknown node and every [`TOPOLOGY_REFRESH`], adds listeners
//! ahead of need, retires those of nodes that left, and is what `/readyz` and
//! `ectunnel check --connect` report.

pub mod nodes;
pub mod topology;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, Weak};

use std::time::Duration;
use tokio::sync::Notify;

use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::nodes::NodeListener;
use self::topology::Shard;
use crate::config::{ClusterMode, UpstreamAddr};
use crate::limits::{NODE_ABSENT_READS, TOPOLOGY_MIN_GAP, TOPOLOGY_READ_MIN, TOPOLOGY_REFRESH};
use crate::listener::{Listener, Nodes};
use crate::lock;
use crate::ops::metrics::Metrics;
use crate::proto::rewrite;
use crate::upstream::conn::Conn;
use crate::upstream::{Resolver, dial};

/// What node listeners are made with: the server's resolver, metrics and session tracking.
#[derive(Clone)]
pub struct Ctx {
    pub resolver: Resolver,
    pub metrics: Arc<Metrics>,
    pub sessions: TaskTracker,
    pub end_sessions: CancellationToken,
}

/// The node listeners of one configured listener; the same across reloads.
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Ctx,
    /// The configured listener as it is now (replaced on reload).
    parent: Mutex<Option<Arc<Listener>>>,
    registry: Mutex<Registry>,
    state: Mutex<State>,
    refresh: Notify,
    stop: CancellationToken,
}

#[derive(Default)]
struct Registry {
    nodes: Vec<NodeListener>,
    /// Every name a reply may use for a node (endpoint, IP, hostname; lower-case) with its
    /// port → its index in `nodes`.
    names: HashMap<(String, u16), usize>,
    /// Why the last node that needed a port got none.
    full: Option<String>,
}

/// What is known of the topology, for `/readyz` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum State {
    /// `cluster = "auto"` and no session has met a server in cluster mode: nothing is read
    /// (a standalone server costs no extra session).
    #[default]
    Dormant,
    /// No topology read has finished yet.
    Unknown,
    /// The server is not in cluster mode (`cluster = "auto"`).
    Standalone,
    Known,
    /// The last read failed; the listeners made so far keep serving.
    Failed(String),
}

impl Cluster {
    /// Starts the topology reader; it waits for [`Cluster::serve`] to give it a listener.
    pub fn start(ctx: Ctx) -> Cluster {
        let inner = Arc::new(Inner {
            ctx,
            parent: Mutex::new(None),
            registry: Mutex::new(Registry::default()),
            state: Mutex::new(State::Dormant),
            refresh: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(reader(Arc::downgrade(&inner), inner.stop.clone()));
        Cluster { inner }
    }

    /// What the configured listener rewrites with; it holds no reference back to the cluster.
    pub fn link(&self) -> Arc<dyn Nodes> {
        Arc::new(Link(Arc::downgrade(&self.inner)))
    }

    /// Serves `listener` (at start, and after every reload): node listeners take its
    /// configuration, and the topology is read again.
    pub fn serve(&self, listener: Arc<Listener>) {
        if listener.config.cluster == ClusterMode::On {
            self.inner.activate();
        }
        *lock(&self.inner.parent) = Some(listener.clone());
        let mut reg = lock(&self.inner.registry);
        let ip = listener.config.listen.ip();
        let ports = listener.config.cluster_ports.as_ref();
        let misplaced = |n: &NodeListener| {
            n.local.ip() != ip || ports.is_some_and(|r| !r.contains(&n.local.port()))
        };
        if reg.nodes.iter().any(misplaced) {
            // A new `listen` IP or `cluster_ports`: every node listener moves (clients
            // connected to the old ones finish there).
            tracing::info!(listener = %listener.config.name, "node listeners move to the new listen address or cluster_ports");
            *reg = Registry::default();
        }
        for n in &reg.nodes {
            if let Err(e) = n.reconfigure(&self.inner.ctx, &listener, self.link()) {
                tracing::warn!(listener = %listener.config.name, node = %n.upstream, "{e}");
            }
        }
        drop(reg);
        self.inner.refresh.notify_one();
    }

    /// Stops the reader and every node listener (clients connected to them finish).
    pub fn stop(&self) {
        self.inner.stop.cancel();
        let mut reg = lock(&self.inner.registry);
        for n in &reg.nodes {
            n.stop();
        }
        *reg = Registry::default();
        *lock(&self.inner.parent) = None;
    }
}

impl Inner {
    fn parent(&self) -> Option<Arc<Listener>> {
        lock(&self.parent).clone()
    }

    /// A session met a server in cluster mode (or `cluster = "on"`): the topology is read
    /// from now on.
    fn activate(&self) {
        let mut state = lock(&self.state);
        if *state == State::Dormant {
            *state = State::Unknown;
            self.refresh.notify_one();
        }
    }

    /// A read failed: tried again after [`TOPOLOGY_MIN_GAP`]. Logged at WARN once per episode
    /// when the topology itself could not be read; a failed dial is the pool's to report.
    fn failed(&self, parent: &Listener, e: String, dial: bool) {
        let mut state = lock(&self.state);
        if dial || matches!(*state, State::Failed(_)) {
            tracing::debug!(listener = %parent.config.name, "cluster topology not read: {e}");
        } else {
            tracing::warn!(listener = %parent.config.name, "cluster topology could not be read: {e}");
        }
        *state = State::Failed(e);
        self.refresh.notify_one();
    }

    /// The local address of node `host:port`, making it a listener when it has none.
    fn local(self: &Arc<Self>, host: &str, port: u16) -> Option<SocketAddr> {
        let key = (host.to_ascii_lowercase(), port);
        let known = {
            let reg = lock(&self.registry);
            reg.names
                .get(&key)
                .and_then(|&i| reg.nodes.get(i))
                .map(|n| n.local)
        };
        if known.is_some() {
            return known;
        }
        let parent = self.parent()?;
        let upstream = UpstreamAddr {
            host: host.to_owned(),
            port,
        };
        let local = self.add(&parent, upstream, &[]);
        // A node nobody listed yet: the topology is behind.
        self.refresh.notify_one();
        local
    }

    /// Adds (or finds, by any of `names`) the listener of node `upstream`.
    fn add(
        self: &Arc<Self>,
        parent: &Listener,
        upstream: UpstreamAddr,
        names: &[&str],
    ) -> Option<SocketAddr> {
        let mut reg = lock(&self.registry);
        if self.stop.is_cancelled() {
            return None;
        }
        let port = upstream.port;
        let all: Vec<String> = std::iter::once(upstream.host.as_str())
            .chain(names.iter().copied())
            .map(str::to_ascii_lowercase)
            .collect();
        // Found by the address it is dialled at only: an IP or hostname that another node
        // had before is taken over below rather than leading to that node.
        let known = reg.names.get(&(all[0].clone(), port)).copied();
        let known = known.filter(|&i| reg.nodes[i].upstream.host.eq_ignore_ascii_case(&all[0]));
        let i = match known {
            Some(i) => i,
            None => match self.open(&mut reg, parent, upstream) {
                Ok(i) => i,
                Err(e) => {
                    if reg.full.as_deref() != Some(e.as_str()) {
                        tracing::warn!(listener = %parent.config.name, "cluster node without a local port: {e}");
                    }
                    reg.full = Some(e);
                    return None;
                }
            },
        };
        for h in all {
            reg.names.insert((h, port), i);
        }
        reg.nodes[i].absent = 0;
        Some(reg.nodes[i].local)
    }

    /// Binds and starts a node listener; its index.
    fn open(
        self: &Arc<Self>,
        reg: &mut Registry,
        parent: &Listener,
        upstream: UpstreamAddr,
    ) -> Result<usize, String> {
        let taken: HashSet<u16> = reg.nodes.iter().map(|n| n.local.port()).collect();
        let ip: IpAddr = parent.config.listen.ip();
        let ports: Option<&RangeInclusive<u16>> = parent.config.cluster_ports.as_ref();
        let socket = nodes::bind(ip, ports, &taken)?;
        let link: Arc<dyn Nodes> = Arc::new(Link(Arc::downgrade(self)));
        let node = NodeListener::start(&self.ctx, parent, link, upstream, socket)?;
        reg.nodes.push(node);
        Ok(reg.nodes.len() - 1)
    }

    /// Takes a topology: every node has a listener, nodes left out long enough lose theirs.
    fn apply(self: &Arc<Self>, parent: &Listener, shards: Vec<Shard>, here: &str) {
        let mut seen = HashSet::new();
        for node in shards.iter().flat_map(|s| &s.nodes) {
            let upstream = UpstreamAddr {
                host: node.host(here).to_owned(),
                port: node.port,
            };
            let names: Vec<&str> = node.names(here).collect();
            if let Some(local) = self.add(parent, upstream, &names) {
                seen.insert(local);
            }
        }
        self.retire_absent(&seen);
        let full = lock(&self.registry).full.take();
        let state = match full {
            Some(e) => State::Failed(e),
            None => State::Known,
        };
        *lock(&self.state) = state;
    }

    /// Closes the listeners of nodes left out of [`NODE_ABSENT_READS`] reads in a row.
    fn retire_absent(&self, seen: &HashSet<SocketAddr>) {
        let mut reg = lock(&self.registry);
        for n in reg.nodes.iter_mut().filter(|n| !seen.contains(&n.local)) {
            n.absent += 1;
        }
        if reg.nodes.iter().all(|n| n.absent < NODE_ABSENT_READS) {
            return;
        }
        let old = std::mem::take(&mut reg.nodes);
        let mut moved_to = vec![None; old.len()];
        for (i, n) in old.into_iter().enumerate() {
            if n.absent >= NODE_ABSENT_READS {
                tracing::info!(node = %n.upstream, listen = %n.local, "cluster node left the topology; its listener closes");
                n.stop();
            } else {
                moved_to[i] = Some(reg.nodes.len());
                reg.nodes.push(n);
            }
        }
        let names = std::mem::take(&mut reg.names);
        reg.names = names
            .into_iter()
            .filter_map(|(k, i)| Some((k, moved_to[i]?)))
            .collect();
    }
}

/// The reader: waits for a prompt (a reload, a `-MOVED`, an unknown node) or
/// [`TOPOLOGY_REFRESH`], at most once per [`TOPOLOGY_MIN_GAP`], and reads the topology on a
/// session it keeps.
async fn reader(inner: Weak<Inner>, stop: CancellationToken) {
    let mut session: Option<Conn> = None;
    loop {
        let Some(cluster) = inner.upgrade() else {
            return;
        };
        if stop.is_cancelled() {
            return;
        }
        let read = read_once(&cluster, &mut session).await;
        // Nothing to read from yet (no listener given): the first prompt reads at once.
        let next = Instant::now()
            + if read {
                TOPOLOGY_MIN_GAP
            } else {
                Duration::ZERO
            };
        let refresh = async {
            cluster.refresh.notified().await;
            tokio::time::sleep_until(next).await;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = refresh => {}
            _ = sleep(TOPOLOGY_REFRESH) => {}
        }
    }
}

/// One topology read; whether one was tried.
async fn read_once(cluster: &Arc<Inner>, session: &mut Option<Conn>) -> bool {
    let Some(parent) = cluster.parent() else {
        return false;
    };
    if parent.config.cluster == ClusterMode::Off || *lock(&cluster.state) == State::Dormant {
        return false;
    }
    // A kept session may have died since (its node failed over, the server cut it): then once
    // more on a fresh one before the topology counts as unknown.
    let kept = session.take();
    let mut result = match kept {
        Some(c) => read_on(cluster, &parent, c).await,
        None => Err((String::new(), true)),
    };
    if result.is_err() {
        result = match dial_any(cluster, &parent).await {
            Ok(c) => read_on(cluster, &parent, c).await,
            Err(e) => Err((e, true)),
        };
    }
    match result {
        Ok(c) => *session = Some(c),
        Err((e, dial)) => cluster.failed(&parent, e, dial),
    }
    true
}

/// Reads the topology on `c` and applies it: `c` back to keep, or why not and whether the
/// failure was a dial's.
async fn read_on(
    cluster: &Arc<Inner>,
    parent: &Listener,
    mut c: Conn,
) -> Result<Conn, (String, bool)> {
    if !c.at.cluster && parent.config.cluster == ClusterMode::Auto {
        *lock(&cluster.state) = State::Standalone;
        return Ok(c);
    }
    let here = c.at.peer.ip().to_string();
    let t = parent.config.connect_timeout.max(TOPOLOGY_READ_MIN);
    match tokio::time::timeout(t, topology::read(&mut c)).await {
        Ok(Ok(shards)) => {
            cluster.apply(parent, shards, &here);
            Ok(c)
        }
        Ok(Err(e)) => Err((e, false)),
        Err(_) => {
            let waited = humantime::format_duration(t);
            Err((format!("no topology reply within {waited}"), false))
        }
    }
}

/// A session to read the topology on: through the configuration endpoint, else through any
/// node known (the endpoint's node may be the one that failed).
async fn dial_any(cluster: &Inner, parent: &Listener) -> Result<Conn, String> {
    let resolver = &cluster.ctx.resolver;
    let first = match dial(&parent.config, resolver, &parent.auth).await {
        Ok(c) => return Ok(c),
        Err(e) => e.to_string(),
    };
    let known: Vec<(UpstreamAddr, SocketAddr)> = {
        let reg = lock(&cluster.registry);
        reg.nodes
            .iter()
            .map(|n| (n.upstream.clone(), n.local))
            .collect()
    };
    for (upstream, local) in known {
        let Ok(config) = nodes::node_config(&parent.config, &upstream, local) else {
            continue;
        };
        if let Ok(c) = dial(&config, resolver, &parent.auth).await {
            return Ok(c);
        }
    }
    Err(first)
}

/// The cluster as a listener sees it: weak, so a listener never keeps its cluster alive.
struct Link(Weak<Inner>);

impl rewrite::Map for Link {
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.0.upgrade()?.local(host, port)
    }

    fn redirected(&self) {
        if let Some(c) = self.0.upgrade() {
            c.refresh.notify_one();
        }
    }

    fn in_use(&self) {
        if let Some(c) = self.0.upgrade() {
            c.activate();
        }
    }
}

impl Nodes for Link {
    fn unready(&self) -> Option<String> {
        let c = self.0.upgrade()?;
        let state = lock(&c.state).clone();
        match state {
            State::Known | State::Standalone | State::Dormant => None,
            State::Unknown => Some("cluster topology not read yet".into()),
            State::Failed(e) => Some(format!("cluster topology unknown: {e}")),
        }
    }
}
