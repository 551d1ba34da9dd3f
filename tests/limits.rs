//! Limits against a real TLS redis-server: `max_clients`, `max_sessions`, `client_idle_timeout`,
//! the `client_auth` deadline, and accepting clients while out of file descriptors.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// A tunnel with an admin endpoint in front of a fresh TLS redis-server; `top` holds top-level
/// keys, `own` keys of the listener (and its tables, last).
async fn tunnel(top: &str, own: &str) -> (Pki, Redis, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = format!("localhost:{}", redis.port);
    let top = format!("{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let toml = format!("{}{own}\n", listener_toml(&upstream, &pki, &top));
    (pki, redis, Tunnel::start(&toml).await)
}

/// As [`tunnel`], but an `ectunnel` process of its own, whose descriptors and limits the test
/// can read and set; with the address it listens on.
fn process(top: &str, own: &str) -> (Pki, Redis, Bin, std::net::SocketAddr) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let config = pki.dir.path().join("t.toml");
    let upstream = format!("localhost:{}", redis.port);
    std::fs::write(&config, listener_toml(&upstream, &pki, top) + own).unwrap();
    let mut bin = Bin::spawn(&["-c", &path_str(&config)], &[]);
    let addr = bin.listen_addr();
    (pki, redis, bin, addr)
}

/// The descriptors a process has open.
fn open_fds(pid: u32) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn hits(limit: &str) -> String {
    format!("ectunnel_limit_hits_total{{limit={limit},listener=primary}}")
}

async fn hit_count(t: &Tunnel, limit: &str) -> f64 {
    get(&scrape(t.admin.expect("admin")).await, &hits(limit))
}

#[tokio::test]
async fn a_client_past_max_clients_is_told_and_closed_and_room_is_made_by_one_leaving() {
    let (_pki, _redis, t) = tunnel("", "max_clients = 2").await;
    let mut a = connect(t.addr()).await;
    let mut b = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut a, &cmd(&["PING"])).await, "+PONG\r\n");
    assert_eq!(roundtrip(&mut b, &cmd(&["PING"])).await, "+PONG\r\n");
    let mut c = connect(t.addr()).await;
    c.write_all(&cmd(&["PING"])).await.unwrap();
    let said = read_to_close(&mut c).await.unwrap();
    assert_eq!(said, "-ERR ectunnel: max number of clients reached\r\n");
    assert_eq!(hit_count(&t, "max_clients").await, 1.0);
    let m = scrape(t.admin.unwrap()).await;
    assert_eq!(
        get(&m, "ectunnel_limit{limit=max_clients,listener=primary}"),
        2.0
    );
    drop(a);
    // The slot is freed when the tunnel sees the client go: retry until it has.
    eventually("a client admitted after one left", || async {
        let mut d = connect(t.addr()).await;
        d.write_all(&cmd(&["PING"])).await.unwrap();
        let mut got = [0u8; 7];
        tokio::io::AsyncReadExt::read_exact(&mut d, &mut got)
            .await
            .is_ok_and(|_| &got == b"+PONG\r\n")
    })
    .await;
    assert_eq!(roundtrip(&mut b, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn at_max_sessions_a_client_waits_for_a_freed_session_then_is_told() {
    // Every client on a session of its own, one session at most, a short wait.
    let (_pki, _redis, t) = tunnel(
        "connect_timeout = \"1s\"",
        "max_sessions = 1\n[listener.pool]\nmin_idle = 0\nmultiplex = 0",
    )
    .await;
    let mut a = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut a, &cmd(&["PING"])).await, "+PONG\r\n");
    // B waits for A's session; A leaves cleanly, its session goes back to the pool, B gets it.
    let mut b = connect(t.addr()).await;
    b.write_all(&cmd(&["PING"])).await.unwrap();
    tokio::task::yield_now().await;
    a.write_all(&cmd(&["QUIT"])).await.unwrap();
    assert_eq!(read_reply(&mut a).await, "+OK\r\n");
    drop(a);
    assert_eq!(read_reply(&mut b).await, "+PONG\r\n");
    // C waits past connect_timeout while B holds the only session: told, then closed.
    let started = Instant::now();
    let mut c = connect(t.addr()).await;
    c.write_all(&cmd(&["PING"])).await.unwrap();
    let said = read_to_close(&mut c).await.unwrap();
    assert!(
        said.starts_with("-ERR ectunnel: limit localhost:")
            && said.contains("max_sessions (1) upstream sessions are open"),
        "{said}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900), "waited");
    assert_eq!(hit_count(&t, "max_sessions").await, 1.0);
    let m = scrape(t.admin.unwrap()).await;
    assert_eq!(
        get(&m, "ectunnel_upstream_sessions_open{listener=primary}"),
        1.0
    );
    assert_eq!(roundtrip(&mut b, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn an_idle_client_is_closed_but_not_one_blocked_or_subscribed() {
    let (_pki, _redis, t) = tunnel("client_idle_timeout = \"300ms\"", "").await;
    // On shared sessions: answered, then idle, then closed without a word (as Redis does).
    let mut shared = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut shared, &cmd(&["PING"])).await, "+PONG\r\n");
    // Blocked past the timeout: a reply is owed, so it stays.
    let mut blocked = connect(t.addr()).await;
    blocked
        .write_all(&cmd(&["BLPOP", "nothing-here", "1"]))
        .await
        .unwrap();
    let mut subscriber = connect(t.addr()).await;
    let confirm = roundtrip(&mut subscriber, &cmd(&["SUBSCRIBE", "news"])).await;
    assert!(confirm.contains("subscribe"), "{confirm}");
    assert_eq!(read_to_close(&mut shared).await.unwrap(), "");
    assert_eq!(read_reply(&mut blocked).await, "*-1\r\n");
    // The subscriber outlived the idle ones: a message still reaches it.
    let mut publisher = connect(t.addr()).await;
    assert!(hit_count(&t, "client_idle_timeout").await >= 1.0);
    assert_eq!(
        roundtrip(&mut publisher, &cmd(&["PUBLISH", "news", "hi"])).await,
        ":1\r\n"
    );
    let message = read_reply(&mut subscriber).await;
    assert!(message.ends_with("$2\r\nhi\r\n"), "{message}");
    // On a session of its own (after MULTI … EXEC) and idle: closed too.
    let mut own = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut own, &cmd(&["MULTI"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut own, &cmd(&["EXEC"])).await, "*0\r\n");
    assert_eq!(read_to_close(&mut own).await.unwrap(), "");
}

#[tokio::test]
async fn a_client_that_does_not_authenticate_in_time_is_told_and_closed() {
    let client_auth = "[client_auth]\nmode = \"require\"\npassword = \"client-pass-0123456789\"";
    let (_pki, _redis, t) = tunnel(client_auth, "").await;
    let mut authed = connect(t.addr()).await;
    let ok = roundtrip(&mut authed, &cmd(&["AUTH", "client-pass-0123456789"])).await;
    assert_eq!(ok, "+OK\r\n");
    let started = Instant::now();
    let mut silent = connect(t.addr()).await;
    let said = read_to_close(&mut silent).await.unwrap();
    assert_eq!(
        said,
        "-ERR ectunnel: client_auth: no AUTH within 10s; closing\r\n"
    );
    assert!(started.elapsed() >= Duration::from_secs(9), "too early");
    assert_eq!(hit_count(&t, "auth_timeout").await, 1.0);
    // The one that authenticated is still served, past the deadline.
    assert_eq!(roundtrip(&mut authed, &cmd(&["PING"])).await, "+PONG\r\n");
}

/// Out of file descriptors: the accept error is logged once, retried with backoff rather than
/// in a busy loop, and the clients waiting in the backlog are served once descriptors are free.
#[tokio::test]
async fn out_of_file_descriptors_accepting_backs_off_and_recovers() {
    // One shared session for every client, nothing dialled in the background.
    let pool = "[listener.pool]\nmin_idle = 0\nmultiplex = 1\n";
    let (_pki, _redis, mut bin, addr) = process("", pool);
    let mut first = connect(addr).await;
    assert_eq!(roundtrip(&mut first, &cmd(&["PING"])).await, "+PONG\r\n");
    // Room for one more descriptor: the lowest free number is the last one allowed.
    let open = open_fds(bin.pid);
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let pid = bin.pid.to_string();
    let soft_limit = |n: String| {
        let nofile = format!("--nofile={n}:");
        let set = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &nofile])
            .status()
            .expect("prlimit (util-linux)");
        assert!(set.success());
    };
    soft_limit((lowest_free + 1).to_string());
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut c = connect(addr).await; // the kernel completes it, accepted or not
        c.write_all(&cmd(&["PING"])).await.unwrap();
        clients.push(c);
    }
    bin.wait_line(|l| l.contains("accept failed"));
    // A measured stretch with accepts failing: backoff (5 ms doubling to 1 s) allows about ten
    // attempts in two seconds; a busy loop would make thousands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    soft_limit("1024".into());
    for c in &mut clients {
        assert_eq!(read_reply(c).await, "+PONG\r\n");
    }
    let recovered = bin.wait_line(|l| l.contains("accepting clients again"));
    let failed: u64 = recovered
        .split("failed=")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no failed= in {recovered}"));
    assert!((2..=30).contains(&failed), "{failed} failed accepts");
    let warned = bin
        .seen
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(warned, 1, "logged once:\n{}", bin.seen.join("\n"));
    assert_eq!(roundtrip(&mut first, &cmd(&["PING"])).await, "+PONG\r\n");
}

/// A reload that sets `client_idle_timeout` reaches the clients connected before it, on shared
/// sessions and on sessions of their own.
#[tokio::test]
async fn a_reload_that_sets_client_idle_timeout_reaches_connected_clients() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = format!("localhost:{}", redis.port);
    let t = Tunnel::start(&listener_toml(&upstream, &pki, "")).await;
    let mut shared = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut shared, &cmd(&["PING"])).await, "+PONG\r\n");
    let mut own = connect(t.addr()).await;
    assert_eq!(roundtrip(&mut own, &cmd(&["MULTI"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut own, &cmd(&["EXEC"])).await, "*0\r\n");
    let new = listener_toml(&upstream, &pki, "client_idle_timeout = \"300ms\"");
    let new = ectunnel::Config::from_toml(&new, "reload.toml").unwrap();
    t.reloader.reload(Ok(new)).await.unwrap();
    assert_eq!(read_to_close(&mut shared).await.unwrap(), "");
    assert_eq!(read_to_close(&mut own).await.unwrap(), "");
}

/// A client waiting for its session is not idle: with every dial slower than
/// `client_idle_timeout`, its first request is still answered.
#[tokio::test]
async fn a_client_waiting_for_a_slow_dial_is_not_idle() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let relay = common::fault::Relay::start(redis.addr().parse().unwrap()).await;
    // Each chunk either way 150 ms late: the handshake alone takes several times the timeout.
    relay.set(common::fault::Mode::Delay(Duration::from_millis(150)));
    let upstream = format!("localhost:{}", relay.addr.port());
    let top = "client_idle_timeout = \"200ms\"\n[pool]\nmin_idle = 0\nmultiplex = 0\n";
    let t = Tunnel::start(&listener_toml(&upstream, &pki, top)).await;
    for _ in 0..3 {
        let mut c = connect(t.addr()).await;
        assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    }
}

/// A flood past `max_clients` holds a bounded number of descriptors: every client is told, but
/// only the first 64 refusals at a time linger (limits::MAX_REFUSING); the rest are closed at
/// once.
#[tokio::test]
async fn a_flood_past_max_clients_holds_few_descriptors() {
    let (_pki, _redis, bin, addr) = process("max_clients = 1", "");
    let mut first = connect(addr).await;
    assert_eq!(roundtrip(&mut first, &cmd(&["PING"])).await, "+PONG\r\n");
    let fds = || open_fds(bin.pid).len();
    let before = fds();
    // Kept open, so a lingering refusal holds its descriptor for its whole LINGER (5 s).
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut c = connect(addr).await;
        let said = read_to_close(&mut c).await.unwrap();
        assert_eq!(said, "-ERR ectunnel: max number of clients reached\r\n");
        flood.push(c);
    }
    let held = fds().saturating_sub(before);
    assert!(
        held <= 64 + 4,
        "{held} descriptors held for 200 refused clients"
    );
    assert_eq!(roundtrip(&mut first, &cmd(&["PING"])).await, "+PONG\r\n");
}
