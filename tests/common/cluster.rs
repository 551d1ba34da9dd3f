//! A real Redis Cluster on loopback, TLS only: six nodes (three primaries, three replicas)
//! made by `redis-cli --cluster create`, or a serverless-like pair (one primary holding every
//! slot and one replica, both announcing one hostname, as ElastiCache Serverless answers
//! `CLUSTER SLOTS` with `host:6379` and `host:6380`). Slot moves, failovers and kills done as
//! operators do them, each waited for until every live node agrees.
//!
//! Nodes listen with `--port 0 --tls-port P`, talk to each other over TLS on a bus port of
//! their own (`--cluster-port`: an ephemeral `P` plus 10000 may not exist), and are killed on
//! drop. The harness reaches them over TLS from this process (SNI `localhost`, no AUTH).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Pki, Redis, WAIT, cmd, free_port, pki, tls_listen};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// `cluster-node-timeout`: a node silent this long is suspected, so a killed primary's replica
/// takes over within a few seconds.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a replica pursues a manual failover before giving it up (`CLUSTER_MF_TIMEOUT`),
/// plus a margin.
const MANUAL_FAILOVER_TIMEOUT: Duration = Duration::from_secs(6);

/// Bound for one command to one node (connect, TLS handshake, reply).
const CALL: Duration = Duration::from_secs(5);

/// A running TLS cluster; every node is killed on drop.
pub struct Cluster {
    /// The CA and the certificate every node serves (and presents on the cluster bus).
    pub pki: Arc<Pki>,
    /// All nodes started, killed ones included (see [`Cluster::ports`] for the live ones).
    /// Kill them with [`Cluster::kill`], so that later checks leave them out.
    pub nodes: Vec<Redis>,
    /// The hostname the nodes announce, for [`Cluster::serverless_like`].
    pub hostname: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    down: HashSet<u16>,
}

/// One RESP2 reply, as the harness reads it from a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    Nil,
}

impl Value {
    /// A status, bulk string or error as text, an integer in decimal.
    pub fn text(&self) -> String {
        match self {
            Value::Status(s) | Value::Error(s) => s.clone(),
            Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Int(n) => n.to_string(),
            other => panic!("not a string: {other:?}"),
        }
    }

    /// The elements of an array reply.
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// A range of slots as one node's `CLUSTER SLOTS` shows it: ports of the primary and of its
/// replicas (sorted), and the endpoint (IP or announced hostname) shown for the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub endpoint: String,
    pub primary: u16,
    pub replicas: Vec<u16>,
}

/// A slot on its way from one primary to another: `from` has it MIGRATING, `to` IMPORTING.
#[derive(Clone, Debug)]
pub struct Migration {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    to_id: String,
}

/// The settings every node runs with, besides its ports and certificates.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf", // in the node's own --dir
    "--cluster-node-timeout",
    "1000",
    "--tls-cluster",
    "yes",
    "--tls-replication",
    "yes",
    // A full sync starts at once rather than after the 5 s default wait for more replicas.
    "--repl-diskless-sync-delay",
    "0",
    // CLUSTER SLOTS leaves out a replica whose replication offset is still 0, and an idle
    // primary moves it only with the PING it sends its replicas every period (10 s default).
    "--repl-ping-replica-period",
    "1",
    // A replica may always take over (a loaded machine must not make its data look stale).
    "--cluster-replica-validity-factor",
    "0",
];

impl Cluster {
    /// 3 primaries + 3 replicas made by `redis-cli --cluster create`, with a new PKI for
    /// `localhost` and `127.0.0.1`; returns once the cluster has [settled](Cluster::settled).
    pub async fn start() -> Cluster {
        Cluster::start_with(Arc::new(pki(&["localhost", "127.0.0.1"]))).await
    }

    /// [`Cluster::start`] with the given PKI (its certificate must cover `localhost`).
    pub async fn start_with(pki: Arc<Pki>) -> Cluster {
        let nodes = start_nodes(&pki, 6, &[]).await;
        let cluster = Cluster::new(pki, nodes, None);
        let mut create = tokio::process::Command::new("redis-cli");
        create
            .args(cluster.cli_tls())
            .args(["--cluster", "create"])
            .args(cluster.addrs())
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, create.output())
            .await
            .expect("redis-cli --cluster create timed out")
            .expect("redis-cli must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.settled().await;
        cluster
    }

    /// Serverless-like: ONE primary holding all 16384 slots and one replica, both announcing
    /// `hostname` as their endpoint, so `CLUSTER SLOTS` answers one range with
    /// `hostname:P1` as primary and `hostname:P2` as replica. New PKI for `hostname`,
    /// `localhost` and `127.0.0.1`. Note: one primary cannot be voted out, so only a
    /// [manual failover](Cluster::failover) moves it.
    pub async fn serverless_like(hostname: &str) -> Cluster {
        let pki = Arc::new(pki(&[hostname, "localhost", "127.0.0.1"]));
        Cluster::serverless_like_with(pki, hostname).await
    }

    /// [`Cluster::serverless_like`] with the given PKI (its certificate must cover
    /// `localhost`).
    pub async fn serverless_like_with(pki: Arc<Pki>, hostname: &str) -> Cluster {
        let announce = [
            "--cluster-announce-hostname",
            hostname,
            "--cluster-preferred-endpoint-type",
            "hostname",
        ];
        let nodes = start_nodes(&pki, 2, &announce).await;
        let cluster = Cluster::new(pki, nodes, Some(hostname.to_owned()));
        let (primary, replica) = (cluster.nodes[0].port, cluster.nodes[1].port);
        cluster
            .call_ok(primary, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
            .await;
        let bus = cluster
            .call_ok(primary, &["CONFIG", "GET", "cluster-port"])
            .await
            .items()[1]
            .text();
        cluster
            .call_ok(
                replica,
                &["CLUSTER", "MEET", "127.0.0.1", &primary.to_string(), &bus],
            )
            .await;
        let primary_id = cluster.node_id(primary).await;
        until("the replica meeting the primary", || async {
            let nodes = cluster.try_call(replica, &["CLUSTER", "NODES"]).await?;
            let known = parse_nodes(&nodes.text())
                .iter()
                .any(|n| n.id == primary_id && !n.flags.iter().any(|f| f == "handshake"));
            known.then_some(()).ok_or_else(|| nodes.text())
        })
        .await;
        cluster
            .call_ok(replica, &["CLUSTER", "REPLICATE", &primary_id])
            .await;
        cluster.settled().await;
        cluster
    }

    fn new(pki: Arc<Pki>, nodes: Vec<Redis>, hostname: Option<String>) -> Cluster {
        let tls = ectunnel::tls::client_config(&ectunnel::tls::TlsOptions {
            ca_file: Some(pki.ca.clone()),
            ..Default::default()
        })
        .unwrap();
        Cluster {
            pki,
            nodes,
            hostname,
            tls,
            down: HashSet::new(),
        }
    }

    /// Ports of the live nodes (all but those killed through the cluster), in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port)
            .filter(|p| !self.down.contains(p))
            .collect()
    }

    /// `127.0.0.1:port` of each live node.
    pub fn addrs(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `redis-cli` arguments for TLS to the nodes: `--tls --cacert <ca> --sni localhost`.
    pub fn cli_tls(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            super::path_str(&self.pki.ca),
            "--sni".into(),
            "localhost".into(),
        ]
    }

    /// A TLS connection to the node on `port` (SNI `localhost`; the nodes ask for no AUTH).
    pub async fn direct(&self, port: u16) -> TlsStream<TcpStream> {
        self.try_direct(port)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_direct(&self, port: u16) -> Result<TlsStream<TcpStream>, String> {
        let connect = async {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
        };
        match tokio::time::timeout(CALL, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("node {port}: {e}")),
            Err(_) => Err(format!("node {port}: no TLS connection within {CALL:?}")),
        }
    }

    /// Sends one command to the node on `port` on a new connection; `Err` when the node
    /// cannot be reached or does not answer within a few seconds (error replies are `Ok`).
    pub async fn try_call(&self, port: u16, args: &[&str]) -> Result<Value, String> {
        let mut s = self.try_direct(port).await?;
        let exchange = async {
            s.write_all(&cmd(args)).await?;
            s.flush().await?;
            read_value(&mut BufReader::new(&mut s)).await
        };
        match tokio::time::timeout(CALL, exchange).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("node {port}, {args:?}: {e}")),
            Err(_) => Err(format!("node {port}, {args:?}: no reply within {CALL:?}")),
        }
    }

    /// [`Cluster::try_call`] that panics when the node cannot be reached.
    pub async fn call(&self, port: u16, args: &[&str]) -> Value {
        self.try_call(port, args)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::call`] that panics on an error reply too.
    pub async fn call_ok(&self, port: u16, args: &[&str]) -> Value {
        let v = self.call(port, args).await;
        assert!(!v.is_error(), "node {port}, {args:?}: {v:?}");
        v
    }

    /// The node's id (`CLUSTER MYID`).
    pub async fn node_id(&self, port: u16) -> String {
        self.call_ok(port, &["CLUSTER", "MYID"]).await.text()
    }

    /// The slot map as the node on `port` sees it (`CLUSTER SLOTS`), ranges in slot order.
    pub async fn slots(&self, port: u16) -> Vec<SlotRange> {
        self.try_slots(port).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_slots(&self, port: u16) -> Result<Vec<SlotRange>, String> {
        let reply = self.try_call(port, &["CLUSTER", "SLOTS"]).await?;
        let Value::Array(ranges) = reply else {
            return Err(format!("node {port}: CLUSTER SLOTS answered {reply:?}"));
        };
        let mut out: Vec<SlotRange> = ranges
            .iter()
            .map(|r| {
                let r = r.items();
                let node_port = |n: &Value| n.items()[1].int() as u16;
                let mut replicas: Vec<u16> = r[3..].iter().map(node_port).collect();
                replicas.sort_unstable();
                SlotRange {
                    start: r[0].int() as u16,
                    end: r[1].int() as u16,
                    endpoint: r[2].items()[0].text(),
                    primary: node_port(&r[2]),
                    replicas,
                }
            })
            .collect();
        out.sort_by_key(|r| r.start);
        Ok(out)
    }

    /// Live nodes that say `master` in `ROLE` now.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for port in self.ports() {
            if self.role(port).await.0 == "master" {
                out.push(port);
            }
        }
        out
    }

    /// Live nodes that say in `ROLE` that they replicate `primary`.
    pub async fn replicas_of(&self, primary: u16) -> Vec<u16> {
        let mut out = Vec::new();
        for port in self.ports() {
            if self.role(port).await.1 == Some(primary) {
                out.push(port);
            }
        }
        out
    }

    /// `ROLE`: the role's name and, for a replica, its primary's port.
    async fn role(&self, port: u16) -> (String, Option<u16>) {
        self.try_role(port).await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_role(&self, port: u16) -> Result<(String, Option<u16>), String> {
        let role = self.try_call(port, &["ROLE"]).await?;
        let items = role.items();
        let name = items[0].text();
        let primary = (name == "slave").then(|| items[2].int() as u16);
        Ok((name, primary))
    }

    /// The live primary that holds `slot` by its own account (its `myself` line in
    /// `CLUSTER NODES`). Panics when none or several do (e.g. in the middle of a failover).
    pub async fn owner_of(&self, slot: u16) -> u16 {
        let mut owners = Vec::new();
        for port in self.ports() {
            let text = self.call_ok(port, &["CLUSTER", "NODES"]).await.text();
            let me = parse_nodes(&text).into_iter().find(|n| n.myself());
            if let Some(me) = me.filter(|n| n.flags.iter().any(|f| f == "master"))
                && me.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            {
                owners.push(port);
            }
        }
        assert_eq!(owners.len(), 1, "nodes claiming slot {slot}: {owners:?}");
        owners[0]
    }

    /// Waits until every live node reports `cluster_state:ok`, every live replica's link to
    /// its primary is up, and all live nodes show the same `CLUSTER SLOTS`, covering all
    /// 16384 slots and naming every live node.
    pub async fn settled(&self) {
        until("the cluster to settle", || self.check_settled()).await;
    }

    async fn check_settled(&self) -> Result<Vec<SlotRange>, String> {
        let live = self.ports();
        let mut agreed: Option<(u16, Vec<SlotRange>)> = None;
        for &port in &live {
            let info = self.try_call(port, &["CLUSTER", "INFO"]).await?.text();
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {port} is not ok:\n{info}"));
            }
            if self.try_role(port).await?.0 == "slave" {
                let repl = self.try_call(port, &["INFO", "replication"]).await?.text();
                if !repl.contains("master_link_status:up") {
                    return Err(format!("replica {port} is not in sync:\n{repl}"));
                }
            }
            let slots = self.try_slots(port).await?;
            match &agreed {
                Some((first, seen)) if *seen != slots => {
                    return Err(format!(
                        "node {port} sees {slots:?}\nnode {first} sees {seen:?}"
                    ));
                }
                Some(_) => {}
                None => agreed = Some((port, slots)),
            }
        }
        let (_, slots) = agreed.ok_or("no live node")?;
        let mut next = 0u32;
        for r in &slots {
            if u32::from(r.start) != next {
                return Err(format!("slots from {next} not covered: {slots:?}"));
            }
            next = u32::from(r.end) + 1;
        }
        if next != u32::from(SLOTS) {
            return Err(format!("slots from {next} not covered: {slots:?}"));
        }
        let named: HashSet<u16> = slots
            .iter()
            .flat_map(|r| std::iter::once(r.primary).chain(r.replicas.iter().copied()))
            .collect();
        if let Some(missing) = live.iter().find(|p| !named.contains(p)) {
            return Err(format!("node {missing} not in {slots:?}"));
        }
        Ok(slots)
    }

    /// Waits until the cluster has settled with `to` holding `slot` in every node's view.
    async fn settled_with(&self, what: &str, slot: u16, to: u16) {
        until(what, || async {
            let slots = self.check_settled().await?;
            let owner = slots.iter().find(|r| (r.start..=r.end).contains(&slot));
            match owner {
                Some(r) if r.primary == to => Ok(()),
                _ => Err(format!("slot {slot} not with {to}: {slots:?}")),
            }
        })
        .await;
    }

    /// Starts moving `slot` from its owner to the primary `to` as `redis-cli --cluster reshard`
    /// does: `SETSLOT IMPORTING` on `to`, then `SETSLOT MIGRATING` on the owner. The keys stay
    /// where they are, so the owner answers `-ASK` for keys it does not have.
    pub async fn begin_migration(&self, slot: u16, to: u16) -> Migration {
        let from = self.owner_of(slot).await;
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let s = slot.to_string();
        let importing = ["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id];
        self.call_ok(to, &importing).await;
        let migrating = ["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id];
        self.call_ok(from, &migrating).await;
        Migration {
            slot,
            from,
            to,
            to_id,
        }
    }

    /// MIGRATEs the keys of a slot in migration to its new node, a hundred at a time
    /// (`CLUSTER GETKEYSINSLOT`); returns how many moved.
    pub async fn migrate_keys(&self, m: &Migration) -> usize {
        let (slot, to) = (m.slot.to_string(), m.to.to_string());
        let mut moved = 0;
        loop {
            let batch = ["CLUSTER", "GETKEYSINSLOT", &slot, "100"];
            let keys: Vec<String> = self
                .call_ok(m.from, &batch)
                .await
                .items()
                .iter()
                .map(Value::text)
                .collect();
            if keys.is_empty() {
                return moved;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let reply = self.call_ok(m.from, &migrate).await;
            assert_eq!(reply, Value::Status("OK".into()), "{migrate:?}");
            moved += keys.len();
        }
    }

    /// Ends a migration: the remaining keys MIGRATEd, then `SETSLOT NODE` on the new node, the
    /// old one and every other primary; waits until every node sees the slot on the new node.
    pub async fn finish_migration(&self, m: Migration) {
        self.migrate_keys(&m).await;
        let s = m.slot.to_string();
        let node = ["CLUSTER", "SETSLOT", &s, "NODE", &m.to_id];
        self.call_ok(m.to, &node).await;
        self.call_ok(m.from, &node).await;
        for p in self.primaries().await {
            if p != m.to && p != m.from {
                self.call_ok(p, &node).await;
            }
        }
        let what = format!("slot {} moved from {} to {}", m.slot, m.from, m.to);
        self.settled_with(&what, m.slot, m.to).await;
    }

    /// Moves `slot` with its keys to the primary `to` ([`Cluster::begin_migration`] then
    /// [`Cluster::finish_migration`]).
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let m = self.begin_migration(slot, to).await;
        self.finish_migration(m).await;
    }

    /// A slot `primary` holds now (by the cluster's settled view).
    async fn a_slot_of(&self, primary: u16) -> u16 {
        let slots = until("the cluster to settle", || self.check_settled()).await;
        slots
            .iter()
            .find(|r| r.primary == primary)
            .unwrap_or_else(|| panic!("{primary} holds no slot: {slots:?}"))
            .start
    }

    /// `CLUSTER FAILOVER` on a replica of `primary`; waits until that replica says `master`
    /// in `ROLE` and the cluster has settled with it holding the slots. Returns its port.
    pub async fn failover(&self, primary: u16) -> u16 {
        let replica = *self
            .replicas_of(primary)
            .await
            .first()
            .unwrap_or_else(|| panic!("{primary} has no replica"));
        let slot = self.a_slot_of(primary).await;
        let what = format!("{replica} taking over from {primary}");
        let failover = ["CLUSTER", "FAILOVER"];
        self.call_ok(replica, &failover).await;
        // The replica gives a manual failover up after 5 s (no votes in time on a loaded
        // machine, say); it is asked again then.
        let mut asked = tokio::time::Instant::now();
        until(&what, || {
            let again = asked.elapsed() > MANUAL_FAILOVER_TIMEOUT;
            if again {
                asked = tokio::time::Instant::now();
            }
            async move {
                if again {
                    self.try_call(replica, &failover).await?;
                }
                match self.try_role(replica).await?.0.as_str() {
                    "master" => Ok(()),
                    role => Err(format!("{replica} is still {role}")),
                }
            }
        })
        .await;
        self.settled_with(&what, slot, replica).await;
        replica
    }

    /// Kills the node on `port` (SIGKILL, no goodbye) and leaves it out of every later check.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("no node {port}")).kill();
        self.down.insert(port);
    }

    /// Kills `primary` and waits until one of its replicas is promoted by the cluster's own
    /// failover (after [`NODE_TIMEOUT`]) and the cluster has settled. Returns its port.
    pub async fn kill_primary(&mut self, primary: u16) -> u16 {
        let replicas = self.replicas_of(primary).await;
        assert!(!replicas.is_empty(), "{primary} has no replica");
        let slot = self.a_slot_of(primary).await;
        self.kill(primary);
        let promoted = until(&format!("a replica of {primary} promoted"), || async {
            for &r in &replicas {
                if self.try_role(r).await?.0 == "master" {
                    return Ok(r);
                }
            }
            Err(format!("no replica of {primary} is master yet"))
        })
        .await;
        let what = format!("{promoted} taking over from {primary}");
        self.settled_with(&what, slot, promoted).await;
        promoted
    }
}

/// Starts `n` cluster nodes at once, each on its own TLS and bus ports.
async fn start_nodes(pki: &Arc<Pki>, n: usize, extra: &[&str]) -> Vec<Redis> {
    let extra: Vec<String> = NODE_ARGS
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let starts: Vec<_> = (0..n)
        .map(|_| {
            let (pki, extra) = (pki.clone(), extra.clone());
            tokio::task::spawn_blocking(move || {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                Redis::launch(None, &extra, "as a cluster node", |port| {
                    let mut args = tls_listen(&pki, port);
                    args.extend(["--cluster-port".into(), free_port().to_string().into()]);
                    args
                })
            })
        })
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for start in starts {
        match start.await {
            Ok(node) => nodes.push(node),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    nodes
}

/// Polls `check` until it gives a value (bounded by [`WAIT`]); a timeout reports the last
/// reason it gave.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One RESP2 reply, decoded from its bytes (a reply read through the tunnel, say).
pub async fn value_of(mut bytes: &[u8]) -> Value {
    read_value(&mut bytes).await.expect("one whole RESP2 reply")
}

/// Reads one RESP2 reply.
fn read_value<'a, R: AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
) -> Pin<Box<dyn Future<Output = io::Result<Value>> + Send + 'a>> {
    Box::pin(async move {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await?;
        if !line.ends_with(b"\r\n") {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.truncate(line.len() - 2);
        let text = String::from_utf8_lossy(&line[1..]).into_owned();
        let len = || {
            text.parse::<i64>()
                .map_err(|_| bad(format!("bad length {text:?}")))
        };
        Ok(match line[0] {
            b'+' => Value::Status(text),
            b'-' => Value::Error(text),
            b':' => Value::Int(len()?),
            b'$' => match usize::try_from(len()?) {
                Ok(n) => {
                    let mut payload = vec![0; n + 2];
                    r.read_exact(&mut payload).await?;
                    payload.truncate(n);
                    Value::Bulk(payload)
                }
                Err(_) => Value::Nil,
            },
            b'*' => match usize::try_from(len()?) {
                Ok(n) => {
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(read_value(r).await?);
                    }
                    Value::Array(items)
                }
                Err(_) => Value::Nil,
            },
            other => return Err(bad(format!("unexpected RESP type {:?}", other as char))),
        })
    })
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    flags: Vec<String>,
    /// Slot ranges held; `[slot->-id]` / `[slot-<-id]` migration marks left out.
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let slots = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .map(|f| match f.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (f.parse().unwrap(), f.parse().unwrap()),
                })
                .collect();
            NodeLine {
                id: fields[0].to_owned(),
                flags: fields[2].split(',').map(str::to_owned).collect(),
                slots,
            }
        })
        .collect()
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum of Redis's key slots.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key` as Redis's `keyHashSlot` computes it: only the part between the first
/// `{` and the first `}` after it is hashed when that part is not empty.
pub fn slot_of(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tag.unwrap_or(key)) & (SLOTS - 1)
}

/// The first `count` keys of the form `key:N` that hash to `slot`.
pub fn keys_for_slot(slot: u16, count: usize) -> Vec<String> {
    assert!(slot < SLOTS);
    (0u64..)
        .map(|n| format!("key:{n}"))
        .filter(|k| slot_of(k) == slot)
        .take(count)
        .collect()
}

/// A key that hashes to `slot`.
pub fn key_for_slot(slot: u16) -> String {
    keys_for_slot(slot, 1).remove(0)
}
