//! Cluster mode's reply rewriting: a `-MOVED` redirect, `CLUSTER SLOTS` and `CLUSTER NODES`
//! for a small (3 masters + 3 replicas) and a large (90 nodes) cluster, each beside a plain copy
//! of the same bytes (what forwarding the reply unchanged costs) for the ratio.
//!
//! `cargo bench --bench rewrite` (add `-- slots/` or `-- nodes/` to pick a group).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ectunnel::proto::rewrite::{self, Here, Map, Outcome, Topology};

/// Nodes by the name or IP their replies use; one lookup per node, no allocation.
struct Nodes(HashMap<String, (u16, SocketAddr)>);

impl Map for Nodes {
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.0
            .get(host)
            .filter(|(p, _)| *p == port)
            .map(|(_, a)| *a)
    }
}

/// An ElastiCache node's name and IP.
fn node(i: usize) -> (String, String) {
    (
        format!(
            "bench-{:04}-{:03}.bench.abc123.use1.cache.amazonaws.com",
            i / 2 + 1,
            i % 2 + 1
        ),
        format!("10.0.{}.{}", i / 200, i % 200 + 10),
    )
}

fn map(n: usize) -> Nodes {
    let mut m = HashMap::new();
    for i in 0..n {
        let (name, ip) = node(i);
        let local = SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
        m.insert(name, (6379, local));
        m.insert(ip, (6379, local));
    }
    Nodes(m)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// RESP2 `CLUSTER SLOTS` for `n` nodes (a master and a replica per range) with TLS hostnames
/// and `ip` metadata, as ElastiCache sends it.
fn slots(n: usize) -> Vec<u8> {
    let ranges = n / 2;
    let mut out = format!("*{ranges}\r\n");
    for r in 0..ranges {
        let (start, end) = (r * 16384 / ranges, (r + 1) * 16384 / ranges - 1);
        out.push_str(&format!("*4\r\n:{start}\r\n:{end}\r\n"));
        for i in [2 * r, 2 * r + 1] {
            let (name, ip) = node(i);
            out.push_str(&format!(
                "*4\r\n{}:6379\r\n{}*4\r\n$2\r\nip\r\n{}$8\r\nhostname\r\n{}",
                bulk(&name),
                bulk(&format!("{:040x}", i)),
                bulk(&ip),
                bulk(&name)
            ));
        }
    }
    out.into_bytes()
}

/// `CLUSTER NODES` for `n` nodes, Redis 7 format with `,hostname`.
fn nodes(n: usize) -> Vec<u8> {
    let mut text = String::new();
    for i in 0..n {
        let (name, ip) = node(i);
        let (me, flags, master) = match (i, i % 2) {
            (0, _) => ("myself,", "master", "-".to_string()),
            (_, 0) => ("", "master", "-".to_string()),
            _ => ("", "slave", format!("{:040x}", i - 1)),
        };
        let slots = if i % 2 == 0 {
            let r = i / 2;
            let ranges = n / 2;
            format!(" {}-{}", r * 16384 / ranges, (r + 1) * 16384 / ranges - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "{:040x} {ip}:6379@16379,{name} {me}{flags} {master} 0 1426238317239 {} connected{slots}\n",
            i,
            i + 1
        ));
    }
    bulk(&text).into_bytes()
}

const HERE: Here<'static> = Here {
    host: "10.0.0.10",
    port: 6379,
};

fn bench(c: &mut Criterion) {
    let moved = b"-MOVED 3999 bench-0002-001.bench.abc123.use1.cache.amazonaws.com:6379\r\n";
    let small = map(6);
    let mut g = c.benchmark_group("redirect");
    assert!(matches!(
        rewrite::redirect(moved, HERE, &small),
        Outcome::Rewritten(_)
    ));
    g.throughput(Throughput::Bytes(moved.len() as u64));
    g.bench_function("moved/rewrite", |b| {
        b.iter(|| rewrite::redirect(black_box(moved), HERE, &small))
    });
    g.bench_function("moved/copy", |b| {
        b.iter(|| Bytes::copy_from_slice(black_box(moved)))
    });
    g.finish();

    let cases = [
        ("slots", "3+3", Topology::Slots, slots(6), 6),
        ("slots", "90", Topology::Slots, slots(90), 90),
        ("nodes", "6", Topology::Nodes, nodes(6), 6),
        ("nodes", "90", Topology::Nodes, nodes(90), 90),
    ];
    for (group, name, kind, reply, n) in &cases {
        let m = map(*n);
        assert!(
            matches!(
                rewrite::topology(*kind, reply, HERE, &m),
                Outcome::Rewritten(_)
            ),
            "{group}/{name}"
        );
        let mut g = c.benchmark_group(*group);
        g.throughput(Throughput::ElementsAndBytes {
            elements: *n as u64,
            bytes: reply.len() as u64,
        });
        g.bench_function(format!("{name}/rewrite"), |b| {
            b.iter(|| rewrite::topology(*kind, black_box(reply), HERE, &m))
        });
        g.bench_function(format!("{name}/copy"), |b| {
            b.iter(|| Bytes::copy_from_slice(black_box(reply)))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
