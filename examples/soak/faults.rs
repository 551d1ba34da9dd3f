//! The faults, on a schedule: the primary restarted (SHUTDOWN, then the script's supervisor
//! starts it again on the same port from its AOF), a failover (`FAILOVER` on the primary, which
//! waits for the replica to catch up), and a configuration reload (SIGHUP after a harmless
//! change). Also what the run needs of the servers directly: who is primary, the read-back.

use crate::ledger::Ledger;
use crate::resp::{self, Reply, Tls};
use crate::stats::Stats;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep};

/// The two servers, reached directly over TLS.
pub struct Nodes {
    pub tls: Arc<rustls::ClientConfig>,
    pub ports: [u16; 2],
    pub token: String,
}

impl Nodes {
    pub async fn conn(&self, i: usize) -> Result<Tls, String> {
        resp::direct(&self.tls, self.ports[i], &self.token)
            .await
            .map_err(|e| format!("node {}: {e}", self.ports[i]))
    }

    async fn call(&self, i: usize, args: &[&str]) -> Result<Reply, String> {
        let mut c = self.conn(i).await?;
        c.call(args).await.map_err(|e| format!("{args:?}: {e}"))
    }

    /// "master" or "slave"; None while the node is down or loading.
    async fn role(&self, i: usize) -> Option<String> {
        match self.call(i, &["ROLE"]).await.ok()? {
            Reply::Array(Some(a)) => match a.first() {
                Some(Reply::Bulk(Some(r))) => Some(String::from_utf8_lossy(r).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The one node that says it is a primary.
    pub async fn primary(&self) -> Option<usize> {
        let roles = [self.role(0).await, self.role(1).await];
        let masters: Vec<usize> = (0..2)
            .filter(|&i| roles[i].as_deref() == Some("master"))
            .collect();
        (masters.len() == 1).then(|| masters[0])
    }

    /// Whether primary `p` has its replica connected and streaming.
    async fn in_sync(&self, p: usize) -> bool {
        match self.call(p, &["INFO", "replication"]).await {
            Ok(Reply::Bulk(Some(info))) => {
                let info = String::from_utf8_lossy(&info);
                info.contains("connected_slaves:1") && info.contains("state=online")
            }
            _ => false,
        }
    }

    async fn sync_from(&self, p: usize) -> Result<(), String> {
        wait("the replica in sync", 60, || self.in_sync(p)).await
    }

    async fn current_primary(&self) -> Result<usize, String> {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Some(p) = self.primary().await {
                return Ok(p);
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err("one primary: not within 60 s".into())
    }
}

/// Polls `check` every 100 ms for up to `secs` seconds.
async fn wait<F, Fut>(what: &str, secs: u64, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if check().await {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what}: not within {secs} s"))
}

/// The tunnel process, its config file and admin endpoint.
pub struct Tunnel {
    pub pid: u32,
    pub config: PathBuf,
    pub admin: SocketAddr,
}

impl Tunnel {
    /// The sum of the tunnel's metric lines that start with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: soak\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        let values = body.lines().filter(|l| l.starts_with(prefix));
        Some(
            values
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = self.pid.to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("kill {sig} {pid}: {other:?}")),
        }
    }
}

const RELOADS_OK: &str = "ectunnel_config_reloads_total{result=\"ok\"}";

/// Injects a fault every `every` seconds (a random time in the range), rotating through the
/// kinds, until too little time is left for one to finish.
pub async fn run(
    nodes: Arc<Nodes>,
    tunnel: Arc<Tunnel>,
    stats: Arc<Stats>,
    deadline: Instant,
    every: (u64, u64),
) {
    let kinds = ["restart", "failover", "reload"];
    for kind in kinds.iter().cycle() {
        let pause = Duration::from_secs(fastrand::u64(every.0..=every.1));
        if Instant::now() + pause + Duration::from_secs(15) > deadline {
            break;
        }
        sleep(pause).await;
        eprintln!("soak: {:>6.1} s: {kind}", stats_clock());
        stats.fault_started();
        let outcome = match *kind {
            "restart" => restart(&nodes).await,
            "failover" => failover(&nodes).await,
            _ => reload(&tunnel).await,
        };
        if let Err(e) = &outcome {
            stats.example(format!("fault {kind} did not complete: {e}"));
        }
        eprintln!("soak: {:>6.1} s: {kind} done", stats_clock());
        stats.fault_ended(kind, outcome.is_ok());
    }
}

pub fn stats_clock() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// SHUTDOWN on the primary (which fsyncs its AOF); the script's supervisor starts it again on
/// the same port, and it must come back as the primary with every acknowledged write.
async fn restart(nodes: &Nodes) -> Result<(), String> {
    let p = nodes.current_primary().await?;
    nodes.sync_from(p).await?;
    let mut c = nodes.conn(p).await?;
    match c.call(&["SHUTDOWN"]).await {
        Err(_) => {}
        Ok(reply) => return Err(format!("SHUTDOWN: {}", reply.brief())),
    }
    wait("the primary back", 60, || async {
        nodes.role(p).await.as_deref() == Some("master")
    })
    .await?;
    nodes.sync_from(p).await
}

/// `FAILOVER` on the primary: it pauses writes until the replica has them all, then swaps
/// roles. Both nodes' config files are rewritten so a later restart keeps the new roles.
async fn failover(nodes: &Nodes) -> Result<(), String> {
    let p = nodes.current_primary().await?;
    let q = 1 - p;
    nodes.sync_from(p).await?;
    match nodes.call(p, &["FAILOVER", "TIMEOUT", "10000"]).await? {
        Reply::Status(s) if s == "OK" => {}
        other => return Err(format!("FAILOVER: {}", other.brief())),
    }
    wait("roles swapped", 30, || async {
        nodes.role(q).await.as_deref() == Some("master")
            && nodes.role(p).await.as_deref() == Some("slave")
    })
    .await?;
    for i in [p, q] {
        match nodes.call(i, &["CONFIG", "REWRITE"]).await? {
            Reply::Status(_) => {}
            other => return Err(format!("CONFIG REWRITE: {}", other.brief())),
        }
    }
    nodes.sync_from(q).await
}

/// Changes `shutdown_grace` (harmless) in the config file and sends SIGHUP; the tunnel's
/// count of successful reloads must go up.
async fn reload(tunnel: &Tunnel) -> Result<(), String> {
    let before = tunnel.metric(RELOADS_OK).await.ok_or("no metrics")?;
    let text = std::fs::read_to_string(&tunnel.config).map_err(|e| e.to_string())?;
    let text = if text.contains("shutdown_grace = \"10s\"") {
        text.replace("shutdown_grace = \"10s\"", "shutdown_grace = \"11s\"")
    } else {
        text.replace("shutdown_grace = \"11s\"", "shutdown_grace = \"10s\"")
    };
    let tmp = tunnel.config.with_extension("toml.new");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &tunnel.config).map_err(|e| e.to_string())?;
    tunnel.signal("-HUP")?;
    wait("the reload applied", 10, || async {
        tunnel.metric(RELOADS_OK).await.is_some_and(|n| n > before)
    })
    .await
}

/// Reads every ledger's keys and counters back from the primary, once the replica is in sync.
pub async fn read_back(nodes: &Nodes, ledgers: &mut [Ledger], stats: &Stats) -> Result<(), String> {
    let p = nodes.current_primary().await?;
    nodes.sync_from(p).await?;
    let mut c = nodes.conn(p).await?;
    let mut db = 0;
    let mut get = async |want: u8, name: &str| -> Result<Option<Vec<u8>>, String> {
        if want != db {
            c.call(&["SELECT", &want.to_string()])
                .await
                .map_err(|e| e.to_string())?;
            db = want;
        }
        match c.call(&["GET", name]).await.map_err(|e| e.to_string())? {
            Reply::Bulk(v) => Ok(v),
            other => Err(format!("GET {name}: {}", other.brief())),
        }
    };
    for l in ledgers.iter_mut() {
        let mut values = Vec::new();
        for k in &l.keys {
            values.push(get(k.db, &k.name).await?);
        }
        let mut counts = Vec::new();
        for n in &l.counters {
            let v = get(n.db, &n.name).await?;
            counts.push(v.and_then(|v| String::from_utf8_lossy(&v).parse().ok()));
        }
        l.final_check(&values, &counts, stats);
    }
    Ok(())
}
