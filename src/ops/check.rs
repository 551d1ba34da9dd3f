//! `ectunnel check [--connect]`: validate the config and optionally prove each upstream works.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redis_protocol::resp2::types::OwnedFrame;

use crate::auth::Auth;
use crate::cluster::topology::{self, Shard};
use crate::config::{ClusterMode, Config, ListenerConfig, UpstreamAddr};
use crate::ops::metrics::Metrics;
use crate::upstream::conn;
use crate::upstream::conn::Conn;
use crate::upstream::{self, DialError, Resolver};

/// Prints what the config defines; with `connect`, dials every upstream (TCP, TLS, AUTH, PING)
/// and prints one line per listener. Returns whether every listener passed.
pub async fn check(config: &Config, connect: bool) -> bool {
    let exposed = config.exposed_secrets();
    let warned: usize = exposed.len()
        + config
            .listeners
            .iter()
            .map(|l| warnings(l).len())
            .sum::<usize>();
    let tail = match warned {
        0 => String::new(),
        n => format!(", {n} warning(s)"),
    };
    println!("config ok: {} listener(s){tail}", config.listeners.len());
    for w in &exposed {
        println!("WARN  {w}");
    }
    if !connect {
        for l in &config.listeners {
            println!(
                "  {}  listen={} upstream={} role={} auth={}",
                l.name,
                l.listen,
                l.upstream_list(),
                l.role,
                auth_summary(l)
            );
            print_warnings(l);
        }
        return true;
    }
    let probes = config.listeners.iter().map(probe);
    let mut all_ok = true;
    for (l, result) in config.listeners.iter().zip(futures_join(probes).await) {
        match result {
            Ok(line) => println!("ok    {}  {line}", l.name),
            Err(e) => {
                all_ok = false;
                println!("FAIL  {}  {e}", l.name);
            }
        }
        print_warnings(l);
    }
    all_ok
}

/// The warnings `run` logs when it starts this listener: a valid config can still be unsafe,
/// and `check` saying "ok" must not hide it.
fn warnings(l: &ListenerConfig) -> Vec<String> {
    crate::server::warnings(l, l.listen)
}

fn print_warnings(l: &ListenerConfig) {
    for w in warnings(l) {
        println!("WARN  {}  {w}", l.name);
    }
}

/// Runs the probes concurrently so that a timeout on one listener does not add to the others.
async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, f) in futs.enumerate() {
        set.spawn(async move { (i, f.await) });
    }
    let mut out: Vec<(usize, F::Output)> = Vec::new();
    while let Some(Ok(r)) = set.join_next().await {
        out.push(r);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

fn auth_summary(l: &ListenerConfig) -> String {
    match &l.auth {
        Some(c) => match (&c.username, c.iam()) {
            (Some(u), Some(iam)) => format!("iam user {u} cache {}", iam.cache),
            (Some(u), None) => format!("user {u}"),
            (None, _) => "token".into(),
        },
        None => "none".into(),
    }
}

fn probe(
    l: &ListenerConfig,
) -> impl std::future::Future<Output = Result<String, DialError>> + Send + 'static {
    let l = l.clone();
    async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let auth = Auth::start(&l, Metrics::new().listener(&l.name), stop);
        let mut c = upstream::dial(&l, &Resolver::system(), &auth).await?;
        let topology = match l.cluster {
            ClusterMode::On => Some(topology::read(&mut c).await),
            ClusterMode::Auto if c.at.cluster => Some(topology::read(&mut c).await),
            _ => None,
        };
        let Conn {
            mut stream,
            at,
            mut leftover,
            ..
        } = c;
        let (peer, candidate, role) = (at.peer, at.candidate, at.role);
        let conn = &stream.get_ref().1;
        let mut line = format!("upstream={} addr={peer}", l.upstreams[candidate].addr);
        if let Some(v) = conn.protocol_version() {
            let _ = write!(line, " tls={}", v.as_str().unwrap_or("?").replace('_', "."));
        }
        if let Some(s) = conn.negotiated_cipher_suite() {
            let _ = write!(line, " cipher={}", s.suite().as_str().unwrap_or("?"));
        }
        if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
            line.push_str(&describe_cert(cert));
        }
        let _ = write!(line, " auth={}", auth.describe());
        if let Some(r) = role {
            let _ = write!(line, " role={r}");
        }
        let fail = |reason: String| DialError {
            stage: upstream::Stage::Ping,
            upstream: l.upstreams[candidate].addr.to_string(),
            reason,
        };
        let start = Instant::now();
        let reply = conn::request(&mut stream, &[b"PING"], &mut leftover)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let rtt = start.elapsed();
        match reply {
            OwnedFrame::SimpleString(_) => {
                let _ = write!(line, " ping={:.2}ms", rtt.as_secs_f64() * 1e3);
            }
            // No credentials configured and the server wants some: the tunnel works, the
            // clients will have to AUTH themselves.
            OwnedFrame::Error(e) if l.auth.is_none() && e.starts_with("NOAUTH") => {
                let _ = write!(
                    line,
                    " ping={:.2}ms (NOAUTH: clients must AUTH themselves)",
                    rtt.as_secs_f64() * 1e3
                );
            }
            OwnedFrame::Error(e) => return Err(fail(e)),
            other => return Err(fail(format!("PING answered {other:?}"))),
        }
        match topology {
            None => {}
            Some(Ok(shards)) => line.push_str(&cluster_report(&l, &shards, &peer.ip().to_string())),
            Some(Err(e)) => return Err(fail(format!("cluster topology: {e}"))),
        }
        Ok(line)
    }
}

/// The cluster's shards and nodes, and the local address each node's listener takes at start:
/// with `cluster_ports`, ports in topology order (primary first), when free; else ephemeral.
fn cluster_report(l: &ListenerConfig, shards: &[Shard], here: &str) -> String {
    let nodes: usize = shards.iter().map(|s| s.nodes.len()).sum();
    let mut out = format!(
        "\n      cluster: {} shard(s), {nodes} node(s)",
        shards.len()
    );
    let mut ports = l
        .cluster_ports
        .clone()
        .into_iter()
        .flatten()
        .filter(|p| *p != l.listen.port());
    for s in shards {
        let slots: Vec<String> = s.slots.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let _ = write!(out, "\n      shard slots={}", slots.join(","));
        for n in &s.nodes {
            let upstream = UpstreamAddr {
                host: n.host(here).to_owned(),
                port: n.port,
            };
            let local = match (&l.cluster_ports, ports.next()) {
                (None, _) => format!("{}:(ephemeral)", l.listen.ip()),
                (Some(_), Some(p)) => std::net::SocketAddr::new(l.listen.ip(), p).to_string(),
                (Some(r), None) => format!("none: cluster_ports {}-{} is full", r.start(), r.end()),
            };
            let role = if n.primary { "primary" } else { "replica" };
            let _ = write!(out, "\n        {role} {upstream} ({}) -> {local}", n.health);
        }
    }
    out
}

fn describe_cert(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let days = (not_after.timestamp() - now) / 86_400;
            format!(
                " subject=\"{}\" expires=\"{}\" ({days} days)",
                cert.subject(),
                not_after
            )
        }
        Err(_) => " subject=? (unparseable certificate)".into(),
    }
}
