//! Following the upstream: a failover under the shipped config (no `role`; the endpoint name
//! moves, as ElastiCache's primary endpoint does), a demotion seen in a reply split across
//! reads, and a node that vanishes without a reset.

mod common;

use std::time::{Duration, Instant};

use common::fault::{Mode, Relay};
use common::*;
use ectunnel::upstream::Resolver;

const TOKEN: &str = "failover-token-0123456789";

/// The name the tunnel is pointed at, as the primary endpoint of a replication group.
const ENDPOINT: &str = "master.test";

fn config(pki: &Pki, upstream: &str, extra: &str) -> String {
    format!(
        "connect_timeout = \"2s\"\n[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n[auth]\npassword = \"{TOKEN}\"\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = {upstream}\n{extra}",
        pki.ca.display()
    )
}

/// A tunnel with the shipped config's shape (no `role`) in front of [`ENDPOINT`], which the
/// test points at `a` to begin with.
async fn endpoint_tunnel(pki: &Pki, a: &Redis) -> (Names, Tunnel) {
    let names = Names::default();
    names.point(ENDPOINT, &[a.addr().parse().unwrap()]);
    let upstream = format!("\"{ENDPOINT}:6379\"");
    let resolver = Resolver::new(names.clone());
    (
        names,
        Tunnel::start_with(&config(pki, &upstream, ""), resolver).await,
    )
}

/// A coordinated failover from `a` to its replica, waited for.
async fn fail_over(pki: &Pki, a: &Redis) {
    let mut da = direct(a, pki, TOKEN).await;
    assert_eq!(roundtrip(&mut da, &cmd(&["FAILOVER"])).await, "+OK\r\n");
    eventually("A demoted", || async {
        role(a, pki).await.contains("slave")
    })
    .await;
}

async fn role(redis: &Redis, pki: &Pki) -> String {
    let mut d = direct(redis, pki, TOKEN).await;
    roundtrip(&mut d, &cmd(&["ROLE"])).await
}

/// Writes with `c` until one lands (`+OK`) and returns how many `-READONLY` it got first;
/// fails if that takes more than 3 s.
async fn writes_until_ok(c: &mut tokio::net::TcpStream, since: Instant) -> usize {
    let mut readonly = 0;
    loop {
        let got = roundtrip(c, &cmd(&["SET", "k", "after"])).await;
        if got == "+OK\r\n" {
            return readonly;
        }
        assert!(got.starts_with("-READONLY"), "{got}");
        readonly += 1;
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "still refused after 3 s ({readonly} READONLY)"
        );
    }
}

#[tokio::test]
async fn a_failover_is_followed_under_the_shipped_config() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    let (names, tunnel) = endpoint_tunnel(&pki, &a).await;
    // A client on shared sessions, and one on a session of its own (SELECT).
    let mut shared = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut shared, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );
    let mut own = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut own, &cmd(&["SELECT", "0"])).await, "+OK\r\n");
    assert_eq!(
        roundtrip(&mut own, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );

    // A coordinated failover to B; the endpoint name moves with it.
    names.point(ENDPOINT, &[b.addr().parse().unwrap()]);
    fail_over(&pki, &a).await;
    let moved = Instant::now();

    // New connections write to B within 3 s.
    loop {
        let mut c = connect(tunnel.addr()).await;
        let got = roundtrip(&mut c, &cmd(&["SET", "k", "after"])).await;
        if got == "+OK\r\n" {
            break;
        }
        assert!(got.starts_with("-READONLY"), "{got}");
        assert!(
            moved.elapsed() < Duration::from_secs(3),
            "new clients still refused after 3 s"
        );
    }
    // The persistent shared client, without reconnecting: at most one READONLY.
    let refused = writes_until_ok(&mut shared, moved).await;
    assert!(refused <= 1, "{refused} READONLY");
    let mut db = direct(&b, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut db, &cmd(&["GET", "k"])).await,
        "$5\r\nafter\r\n"
    );
    // The client on a session of its own is closed (after at most one READONLY), as the node
    // would close it; reconnecting reaches B.
    let rest = match tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncWriteExt;
        let _ = own.write_all(&cmd(&["SET", "k", "pinned"])).await;
        read_to_close(&mut own).await
    })
    .await
    {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => panic!("the pinned client was not closed"),
    };
    assert!(
        rest.is_empty() || rest == "-READONLY You can't write against a read only replica.\r\n",
        "{rest}"
    );
    let m = tunnel.pools[0].metrics();
    assert!(m.failovers.get() >= 1, "the move was not counted");
}

/// The name lags the failover: it still points at A, now a replica, for a while. Writes are
/// refused there (as they would be directly); once the name moves, they land on B.
#[tokio::test]
async fn a_failover_whose_name_moves_late_is_followed_when_it_moves() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    let (names, tunnel) = endpoint_tunnel(&pki, &a).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );
    fail_over(&pki, &a).await;
    // Two seconds of lag, written through at a steady pace.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let lag = Instant::now();
    while lag.elapsed() < Duration::from_secs(2) {
        pace.tick().await;
        let got = roundtrip(&mut c, &cmd(&["SET", "k", "lag"])).await;
        assert!(got.starts_with("-READONLY"), "{got}");
    }
    names.point(ENDPOINT, &[b.addr().parse().unwrap()]);
    writes_until_ok(&mut c, Instant::now()).await;
    let mut fresh = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut fresh, &cmd(&["SET", "k", "fresh"])).await,
        "+OK\r\n"
    );
}

#[tokio::test]
async fn a_demotion_in_a_reply_split_across_reads_is_seen() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    // A's replies reach the tunnel one byte at a time.
    let relay = Relay::start(a.addr().parse().unwrap()).await;
    let upstream = format!("[\"{}\", \"localhost:{}\"]", relay.addr, b.port);
    let tunnel = Tunnel::start(&config(&pki, &upstream, "role = \"primary\"")).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );
    relay.set(Mode::Drip);
    // B becomes the primary and A its replica, by hand.
    let mut db = direct(&b, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut db, &cmd(&["REPLICAOF", "NO", "ONE"])).await,
        "+OK\r\n"
    );
    let mut da = direct(&a, &pki, TOKEN).await;
    let b_port = b.port.to_string();
    let demote = cmd(&["REPLICAOF", "127.0.0.1", &b_port]);
    assert_eq!(roundtrip(&mut da, &demote).await, "+OK\r\n");
    let refused = writes_until_ok(&mut c, Instant::now()).await;
    assert!(refused <= 1, "{refused} READONLY");
    assert_eq!(
        roundtrip(&mut db, &cmd(&["GET", "k"])).await,
        "$5\r\nafter\r\n"
    );
}

#[tokio::test]
async fn a_node_that_stops_answering_fails_its_shared_clients_in_time() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let relay = Relay::start(redis.addr().parse().unwrap()).await;
    let upstream = format!("\"{}\"", relay.addr);
    let pool = "[listener.pool]\nmin_idle = 1\nshared_reply_timeout = \"500ms\"";
    let tunnel = Tunnel::start(&config(&pki, &upstream, pool)).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    // Nothing comes back, and nothing resets the connection either.
    relay.set(Mode::Hold);
    let asked = Instant::now();
    let got = roundtrip(&mut c, &cmd(&["GET", "k"])).await;
    assert!(
        got.starts_with("-ERR ectunnel: ") && got.contains("no reply from the server for 500ms"),
        "{got}"
    );
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The client is still connected; once the network is back it is served by a fresh session.
    relay.set(Mode::Pass);
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$1\r\nv\r\n");
}

/// A node that stops reading: requests queued behind a write it never takes are answered at the
/// reply deadline too, not when TCP gives up.
#[tokio::test]
async fn requests_behind_a_write_the_node_never_takes_are_answered_in_time() {
    use tokio::io::AsyncWriteExt;
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let relay = Relay::start(redis.addr().parse().unwrap()).await;
    let upstream = format!("\"{}\"", relay.addr);
    let pool = "[listener.pool]\nmin_idle = 1\nmultiplex = 1\nshared_reply_timeout = \"1s\"";
    let tunnel = Tunnel::start(&config(&pki, &upstream, pool)).await;
    let mut probe = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut probe, &cmd(&["PING"])).await, "+PONG\r\n");
    let mut flooders = Vec::new();
    for _ in 0..24 {
        let mut c = connect(tunnel.addr()).await;
        assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
        flooders.push(c);
    }
    relay.set(Mode::Hold);
    // 24 MB of writes the node never reads: more than the socket buffers hold.
    let value = "v".repeat(8 * 1024);
    let pipeline: Vec<u8> = cmd(&["SET", "k", &value]).repeat(120);
    let sent = &tunnel.pools[0].metrics().shared_requests;
    let before = sent.get();
    for c in &mut flooders {
        c.write_all(&pipeline).await.unwrap();
    }
    eventually("the flood queued", || async {
        sent.get() >= before + 24 * 100
    })
    .await;
    let asked = Instant::now();
    let got = roundtrip(&mut probe, &cmd(&["GET", "k"])).await;
    assert!(got.starts_with("-ERR ectunnel: "), "{got}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    relay.set(Mode::Pass);
}

/// A node made a replica on purpose while the name still points at it (what Redis's own suite
/// does): a client sees what it would directly, READONLY and all, and keeps its connection.
#[tokio::test]
async fn a_node_demoted_where_the_name_still_points_keeps_its_clients() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN, "--masterauth", TOKEN]);
    let upstream = format!("\"localhost:{}\"", redis.port);
    let tunnel = Tunnel::start(&config(&pki, &upstream, "")).await;
    let mut c = connect(tunnel.addr()).await;
    let nowhere = free_port().to_string();
    for (command, want) in [
        (vec!["SET", "k", "1"], "+OK\r\n"),
        (vec!["REPLICAOF", "127.0.0.1", &nowhere], "+OK\r\n"),
        (
            vec!["SET", "k", "2"],
            "-READONLY You can't write against a read only replica.\r\n",
        ),
        (vec!["REPLICAOF", "NO", "ONE"], "+OK\r\n"),
        (vec!["SET", "k", "3"], "+OK\r\n"),
    ] {
        assert_eq!(roundtrip(&mut c, &cmd(&command)).await, want, "{command:?}");
    }
}
