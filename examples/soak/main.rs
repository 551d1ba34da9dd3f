//! The soak driver run by `scripts/soak`: mixed clients through a running tunnel for a number
//! of minutes while faults are injected, then a table of what was served, what failed, and
//! whether any reply reached the wrong client or any acknowledged write was lost (either makes
//! the exit status 1). `scripts/soak` starts the servers and the tunnel and passes their
//! addresses here; this driver is not meant to be run alone.

mod clients;
mod faults;
mod ledger;
mod report;
mod resp;
mod stats;

use clap::Parser;
use clients::{Env, PubSub};
use faults::{Nodes, Tunnel};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// How long to run.
    #[arg(long)]
    minutes: f64,
    /// The tunnel listener with shared sessions.
    #[arg(long)]
    shared: SocketAddr,
    /// The tunnel listener with `multiplex = 0`.
    #[arg(long)]
    own: SocketAddr,
    /// The two servers' TLS ports (the first is the primary at start).
    #[arg(long, num_args = 2)]
    nodes: Vec<u16>,
    /// The CA that signed the servers' certificates.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, env = "REDIS_AUTH", hide_env_values = true)]
    token: String,
    #[arg(long)]
    tunnel_pid: u32,
    /// The tunnel's config file (changed and reloaded as one of the faults).
    #[arg(long)]
    config: PathBuf,
    /// The tunnel's admin endpoint.
    #[arg(long)]
    admin: SocketAddr,
    /// Seconds between faults: a random time between these two.
    #[arg(long, num_args = 2, default_values_t = [20, 40])]
    fault_every: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    faults::stats_clock();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.minutes * 60.0);
    let stats = Arc::new(stats::Stats::default());
    let tls = ectunnel::tls::client_config(&ectunnel::tls::TlsOptions {
        ca_file: Some(args.ca.clone()),
        ..Default::default()
    })?;
    let nodes = Arc::new(Nodes {
        tls,
        ports: [args.nodes[0], args.nodes[1]],
        token: args.token.clone(),
    });
    let tunnel = Arc::new(Tunnel {
        pid: args.tunnel_pid,
        config: args.config.clone(),
        admin: args.admin,
    });
    let sampler = tokio::spawn(report::sampler(args.tunnel_pid, start, deadline));
    let every = (args.fault_every[0], args.fault_every[1]);
    let faults = tokio::spawn(faults::run(
        nodes.clone(),
        tunnel.clone(),
        stats.clone(),
        deadline,
        every,
    ));
    let env = Env {
        shared: args.shared,
        own: args.own,
        stats: stats.clone(),
        deadline,
    };
    let mut ledgers = clients(env).await;
    faults.await?;
    let ran = start.elapsed().as_secs_f64();
    if let Err(e) = faults::read_back(&nodes, &mut ledgers, &stats).await {
        stats.example(format!("read-back failed: {e}"));
        stats.lost.fetch_add(1, Relaxed);
    }
    let samples = sampler.await?;
    report::Summary {
        secs: ran,
        stats: &stats,
        samples: &samples,
        failovers_seen: tunnel.metric("ectunnel_failovers_total").await,
        reloads_ok: tunnel
            .metric("ectunnel_config_reloads_total{result=\"ok\"}")
            .await,
    }
    .print();
    let clean = stats.wrong.load(Relaxed) == 0
        && stats.lost.load(Relaxed) == 0
        && stats.missed.load(Relaxed) == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts every client and waits for all of them; returns their ledgers.
async fn clients(env: Env) -> Vec<ledger::Ledger> {
    let mut set = JoinSet::new();
    for i in 0..8 {
        set.spawn(clients::shared(env.clone(), format!("shared{i}")));
    }
    for i in 0..2 {
        set.spawn(clients::pipeline(env.clone(), format!("pipe{i}")));
        set.spawn(clients::per_request(env.clone(), format!("conn{i}")));
        set.spawn(clients::own(env.clone(), format!("own{i}"), env.own));
        set.spawn(clients::own(env.clone(), format!("moved{i}"), env.shared));
    }
    set.spawn(clients::slow_reader(env.clone(), "slow".into()));
    let ps = Arc::new(PubSub::default());
    let publisher = tokio::spawn(clients::publisher(env.clone(), ps.clone()));
    let subscriber = tokio::spawn(clients::subscriber(env, ps));
    let mut ledgers = Vec::new();
    while let Some(l) = set.join_next().await {
        match l {
            Ok(l) => ledgers.push(l),
            Err(e) => eprintln!("soak: a client failed: {e}"),
        }
    }
    let _ = publisher.await;
    let _ = subscriber.await;
    ledgers
}
