//! The pool against real TLS redis-servers: warm sessions, isolated reuse, recovery when the
//! upstream comes (back) up, restarts under load, failover behind `role = "primary"`,
//! `max_lifetime`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "pool-token-0123456789abcdef";

fn config(pki: &Pki, upstream: &str, pool: &str, listener_extra: &str) -> String {
    format!(
        "connect_timeout = \"2s\"\n[tls]\nca_file = \"{}\"\n[auth]\npassword = \"{TOKEN}\"\n[pool]\n{pool}\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = {upstream}\n{listener_extra}",
        pki.ca.display()
    )
}

/// A tunnel with `pool` settings in front of a fresh server whose token is [`TOKEN`].
async fn pooled_tunnel(pool: &str) -> (Pki, Redis, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let upstream = format!("\"localhost:{}\"", redis.port);
    let tunnel = Tunnel::start(&config(&pki, &upstream, pool, "")).await;
    (pki, redis, tunnel)
}

/// A number from the server's `INFO section`, read over a direct connection (which the server
/// counts too).
async fn info_number(redis: &Redis, pki: &Pki, section: &str, field: &str) -> u64 {
    let mut d = direct(redis, pki, TOKEN).await;
    let info = roundtrip(&mut d, &cmd(&["INFO", section])).await;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn connected_clients(redis: &Redis, pki: &Pki) -> u64 {
    info_number(redis, pki, "clients", "connected_clients").await
}

/// A `role = "primary"` tunnel that knows both nodes.
async fn primary_tunnel(pki: &Pki, a: &Redis, b: &Redis, pool: &str) -> Tunnel {
    let upstreams = format!("[\"localhost:{}\", \"localhost:{}\"]", a.port, b.port);
    Tunnel::start(&config(pki, &upstreams, pool, "role = \"primary\"\n")).await
}

#[tokio::test]
async fn warm_sessions_exist_before_the_first_client() {
    let (pki, redis, tunnel) = pooled_tunnel("min_idle = 3").await;
    // 3 pooled sessions plus the direct connection that asks.
    eventually("3 warm sessions", || async {
        connected_clients(&redis, &pki).await == 4
    })
    .await;
    assert_eq!(tunnel.pools[0].idle_count(), 3);
    // They are authenticated and ready: the first client gets one without a handshake.
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn a_reused_session_shows_nothing_of_the_previous_client() {
    // Dedicated sessions only: a shared one would take the warm session.
    let (_pki, _redis, tunnel) = pooled_tunnel("min_idle = 1\nmultiplex = 0").await;
    let pool = &tunnel.pools[0];
    eventually("a warm session", || async { pool.idle_count() == 1 }).await;

    let mut a = connect(tunnel.addr()).await;
    let id = roundtrip(&mut a, &cmd(&["CLIENT", "ID"])).await;
    for c in [
        cmd(&["SELECT", "5"]),
        cmd(&["CLIENT", "SETNAME", "first-client"]),
        cmd(&["CLIENT", "TRACKING", "ON"]),
        cmd(&["WATCH", "k"]),
        cmd(&["MULTI"]),
    ] {
        let r = roundtrip(&mut a, &c).await;
        assert!(r.starts_with('+'), "{r}");
    }
    assert_eq!(
        roundtrip(&mut a, &cmd(&["SET", "k", "v"])).await,
        "+QUEUED\r\n"
    );
    drop(a); // leaves with an open transaction, at a clean reply boundary
    // The refilled session plus the one given back after RESET + AUTH.
    eventually("the session back in the pool", || async {
        pool.idle_count() == 2
    })
    .await;

    let mut b = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut b, &cmd(&["CLIENT", "ID"])).await,
        id,
        "the same session"
    );
    assert_eq!(
        roundtrip(&mut b, &cmd(&["CLIENT", "GETNAME"])).await,
        "$-1\r\n"
    );
    assert_eq!(
        roundtrip(&mut b, &cmd(&["EXEC"])).await,
        "-ERR EXEC without MULTI\r\n"
    );
    assert_eq!(
        roundtrip(&mut b, &cmd(&["ACL", "WHOAMI"])).await,
        "$7\r\ndefault\r\n"
    );
    let info = roundtrip(&mut b, &cmd(&["CLIENT", "INFO"])).await;
    assert!(
        info.contains(" db=0 ") && info.contains(" name= "),
        "{info}"
    );
    assert!(
        info.contains(" flags=N "),
        "no tracking, no transaction: {info}"
    );
    assert_eq!(
        roundtrip(&mut b, &cmd(&["GET", "k"])).await,
        "$-1\r\n",
        "the queued SET never ran"
    );
}

#[tokio::test]
async fn clients_succeed_soon_after_the_upstream_comes_up() {
    let pki = pki(&["localhost"]);
    let port = free_port();
    let tunnel = Tunnel::start(&config(
        &pki,
        &format!("\"localhost:{port}\""),
        "min_idle = 2",
        "",
    ))
    .await;
    let mut c = connect(tunnel.addr()).await;
    let err = read_to_close(&mut c).await.unwrap();
    assert!(
        err.starts_with(&format!("-ERR ectunnel: connect localhost:{port}: ")),
        "{err}"
    );

    let _redis = Redis::start_on(&pki, Some(port), &["--requirepass", TOKEN]);
    let up = Instant::now();
    loop {
        let mut c = connect(tunnel.addr()).await;
        c.write_all(&cmd(&["PING"])).await.unwrap();
        if read_reply(&mut c).await == "+PONG\r\n" {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(5),
            "still failing 5 s after the server came up"
        );
    }
}

#[tokio::test]
async fn a_restart_under_load_never_crosses_replies() {
    let pki = pki(&["localhost"]);
    let mut redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let port = redis.port;
    let tunnel = Tunnel::start(&config(
        &pki,
        &format!("\"localhost:{port}\""),
        "min_idle = 4",
        "",
    ))
    .await;
    let addr = tunnel.addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for w in 0..6 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut checked = 0u32;
            while !stop.is_cancelled() {
                let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                for i in 0..20 {
                    let (key, value) = (format!("w{w}"), format!("w{w}-{i}"));
                    if c.write_all(&[cmd(&["SET", &key, &value]), cmd(&["GET", &key])].concat())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    let Some(set) = try_reply(&mut c).await else {
                        break;
                    };
                    let Some(get) = try_reply(&mut c).await else {
                        break;
                    };
                    if set.starts_with('-') || get.starts_with('-') {
                        break; // the tunnel's or the server's error: reconnect
                    }
                    assert_eq!(set, "+OK\r\n");
                    assert_eq!(
                        get,
                        format!("${}\r\n{value}\r\n", value.len()),
                        "another client's reply"
                    );
                    checked += 1;
                }
            }
            checked
        }));
    }
    eventually("load running", || async {
        tunnel.pools[0].idle_count() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let the load run before the restart
    redis.kill();
    let _redis = Redis::start_on(&pki, Some(port), &["--requirepass", TOKEN]);
    let up = Instant::now();
    loop {
        let mut c = connect(addr).await;
        c.write_all(&cmd(&["PING"])).await.unwrap();
        if try_reply(&mut c).await.as_deref() == Some("+PONG\r\n") {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(5),
            "new clients still failing 5 s after the restart"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // and some load after it
    stop.cancel();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("a worker saw a crossed reply");
    }
    assert!(total > 0);
}

/// One reply, or `None` when the connection ends first.
async fn try_reply(c: &mut tokio::net::TcpStream) -> Option<String> {
    let mut probe = [0u8; 1];
    match tokio::time::timeout(WAIT, c.peek(&mut probe)).await {
        Ok(Ok(n)) if n > 0 => Some(read_reply(c).await),
        _ => None,
    }
}

#[tokio::test]
async fn failover_moves_new_clients_and_closes_pinned_ones() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    // Dedicated sessions, which are pinned to a node (shared ones: see below).
    let tunnel = primary_tunnel(&pki, &a, &b, "min_idle = 2\nmultiplex = 0").await;

    let mut old = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut old, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );

    swap_roles(&pki, &a, &b, TOKEN).await;
    let swapped = Instant::now();

    // Within 3 s new clients write to B.
    loop {
        let mut c = connect(tunnel.addr()).await;
        let set = roundtrip(&mut c, &cmd(&["SET", "k", "after"])).await;
        if set == "+OK\r\n" {
            let role = roundtrip(&mut c, &cmd(&["ROLE"])).await;
            assert!(role.contains("master"), "{role}");
            break;
        }
        assert!(
            set.starts_with("-READONLY") || set.starts_with("-ERR ectunnel"),
            "{set}"
        );
        assert!(
            swapped.elapsed() < Duration::from_secs(3),
            "new clients still on the old primary after 3 s"
        );
    }
    let mut check = direct(&b, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut check, &cmd(&["GET", "k"])).await,
        "$5\r\nafter\r\n",
        "the write went to B"
    );

    // The client pinned to A is closed, after at most one READONLY.
    old.write_all(&cmd(&["SET", "k", "pinned"])).await.unwrap();
    let rest = read_to_close(&mut old).await.unwrap_or_default();
    assert!(
        rest.is_empty() || rest == "-READONLY You can't write against a read only replica.\r\n",
        "{rest}"
    );
}

#[tokio::test]
async fn idle_sessions_past_max_lifetime_are_replaced() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let pool = "min_idle = 2\nmax_lifetime = \"300ms\"\nhealth_interval = \"100ms\"";
    let _tunnel = Tunnel::start(&config(
        &pki,
        &format!("\"localhost:{}\"", redis.port),
        pool,
        "",
    ))
    .await;
    let ids = || async {
        let mut d = direct(&redis, &pki, TOKEN).await;
        let me = roundtrip(&mut d, &cmd(&["CLIENT", "ID"])).await;
        let list = roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await;
        let me = me.trim_start_matches(':').trim().to_owned();
        list.lines()
            .filter_map(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .filter(|id| *id != me)
            .collect::<Vec<_>>()
    };
    eventually("2 warm sessions", || async { ids().await.len() == 2 }).await;
    let first = ids().await;
    eventually("both replaced", || async {
        let now = ids().await;
        now.len() >= 2 && now.iter().all(|id| !first.contains(id))
    })
    .await;
}

#[tokio::test]
async fn many_clients_share_two_upstream_sessions_without_crossed_replies() {
    let (pki, redis, tunnel) = pooled_tunnel("min_idle = 1\nmultiplex = 2").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = tunnel.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let mut pipeline = Vec::new();
            for j in 0..50 {
                let (k, v) = (format!("k{i}:{j}"), format!("v{i}:{j}"));
                pipeline.extend(cmd(&["SET", &k, &v]));
                pipeline.extend(cmd(&["GET", &k]));
            }
            c.write_all(&pipeline).await.unwrap();
            for j in 0..50 {
                let v = format!("v{i}:{j}");
                assert_eq!(read_reply(&mut c).await, "+OK\r\n");
                assert_eq!(read_reply(&mut c).await, format!("${}\r\n{v}\r\n", v.len()));
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // With all 20 still connected the server sees the two shared sessions, the pool's warm
    // one (and perhaps one more dialled while it refilled) and the connection that asks.
    let n = connected_clients(&redis, &pki).await;
    assert!(n <= 5, "{n} server connections for 20 clients");
}

#[tokio::test]
async fn a_pipeline_that_turns_stateful_keeps_its_order_and_its_state() {
    let (_pki, _redis, tunnel) = pooled_tunnel("min_idle = 1").await;
    let mut c = connect(tunnel.addr()).await;
    let steps: [(&[&str], &str); 11] = [
        (&["SET", "a", "1"], "+OK\r\n"),
        (&["GET", "a"], "$1\r\n1\r\n"),
        // From here on the client has a session of its own, in db 1.
        (&["SELECT", "1"], "+OK\r\n"),
        (&["SET", "a", "x"], "+OK\r\n"),
        (&["GET", "a"], "$1\r\nx\r\n"),
        (&["SELECT", "0"], "+OK\r\n"),
        (&["GET", "a"], "$1\r\n1\r\n"),
        (&["MULTI"], "+OK\r\n"),
        (&["INCR", "a"], "+QUEUED\r\n"),
        (&["EXEC"], "*1\r\n:2\r\n"),
        (&["CLIENT", "SETNAME", "mine"], "+OK\r\n"),
    ];
    let pipeline: Vec<u8> = steps.iter().flat_map(|(c, _)| cmd(c)).collect();
    c.write_all(&pipeline).await.unwrap();
    for (command, want) in steps {
        assert_eq!(read_reply(&mut c).await, want, "{command:?}");
    }
    // Another client, still on a shared session in db 0, sees none of that state.
    let mut other = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut other, &cmd(&["GET", "a"])).await,
        "$1\r\n2\r\n"
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "GETNAME"])).await,
        "$4\r\nmine\r\n"
    );
}

#[tokio::test]
async fn auth_with_the_token_is_answered_by_the_tunnel_and_any_other_by_the_server() {
    let (_pki, _redis, tunnel) = pooled_tunnel("min_idle = 1").await;
    // What `redis-benchmark -a` and many client libraries send: AUTH pipelined with the first
    // command.
    let mut c = connect(tunnel.addr()).await;
    let first = [
        cmd(&["AUTH", TOKEN]),
        cmd(&["SET", "k", "v"]),
        cmd(&["AUTH", "default", TOKEN]),
        cmd(&["GET", "k"]),
    ]
    .concat();
    c.write_all(&first).await.unwrap();
    for want in ["+OK\r\n", "+OK\r\n", "+OK\r\n", "$1\r\nv\r\n"] {
        assert_eq!(read_reply(&mut c).await, want);
    }
    let mut wrong = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut wrong, &cmd(&["AUTH", "not-the-token"])).await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    // QUIT is answered too (on a shared session it would close everyone's).
    c.write_all(&cmd(&["QUIT"])).await.unwrap();
    assert_eq!(read_to_close(&mut c).await.unwrap(), "+OK\r\n");
    let mut after = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut after, &cmd(&["GET", "k"])).await,
        "$1\r\nv\r\n"
    );
}

#[tokio::test]
async fn a_broken_shared_session_is_explained_then_replaced() {
    let (pki, redis, tunnel) = pooled_tunnel("min_idle = 1").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    let mut d = direct(&redis, &pki, TOKEN).await;
    let killed = roundtrip(
        &mut d,
        &cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]),
    )
    .await;
    assert!(killed.starts_with(':') && killed != ":0\r\n", "{killed}");
    // The request that meets the broken session (if any does) gets the reason...
    let got = roundtrip(&mut c, &cmd(&["GET", "k"])).await;
    assert!(
        got == "$1\r\nv\r\n" || got.starts_with("-ERR ectunnel: "),
        "{got}"
    );
    // ...and the client, still connected, is then served by a fresh one.
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$1\r\nv\r\n");
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_stall_the_others_on_its_session() {
    let (_pki, _redis, tunnel) = pooled_tunnel("min_idle = 1\nmultiplex = 1").await;
    let value = "x".repeat(1 << 20);
    let mut setup = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut setup, &cmd(&["SET", "big", &value])).await,
        "+OK\r\n"
    );
    // 48 MiB of replies for a client that reads none of them: more than the tunnel queues.
    let mut slow = connect(tunnel.addr()).await;
    let gets: Vec<u8> = (0..48).flat_map(|_| cmd(&["GET", "big"])).collect();
    slow.write_all(&gets).await.unwrap();
    let mut fast = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut fast, &cmd(&["PING"])).await, "+PONG\r\n");
    // The slow client is cut off while it still reads nothing, rather than buffered without
    // bound: only the setup and the fast client remain.
    let open = &tunnel.pools[0].metrics().clients_open;
    eventually("the slow client cut off", || async { open.get() == 2 }).await;
    let got = read_to_close(&mut slow).await.unwrap_or_default();
    assert!(
        got.len() < 48 * value.len(),
        "all {} bytes were kept for it",
        got.len()
    );
}

#[tokio::test]
async fn failover_moves_shared_clients_without_a_reconnect() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    let tunnel = primary_tunnel(&pki, &a, &b, "min_idle = 1").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );
    swap_roles(&pki, &a, &b, TOKEN).await;
    let swapped = Instant::now();
    // The same connection: at most a few refusals while the tunnel notices, then B.
    loop {
        let set = roundtrip(&mut c, &cmd(&["SET", "k", "after"])).await;
        if set == "+OK\r\n" {
            break;
        }
        assert!(
            set.starts_with("-READONLY") || set.starts_with("-ERR ectunnel"),
            "{set}"
        );
        assert!(
            swapped.elapsed() < Duration::from_secs(3),
            "still on the old primary after 3 s"
        );
    }
    let mut check = direct(&b, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut check, &cmd(&["GET", "k"])).await,
        "$5\r\nafter\r\n"
    );
}

async fn connections_received(redis: &Redis, pki: &Pki) -> u64 {
    info_number(redis, pki, "stats", "total_connections_received").await
}

#[tokio::test]
async fn a_cleanly_returned_session_is_used_again_rather_than_a_fresh_dial() {
    let (pki, redis, tunnel) = pooled_tunnel("min_idle = 1\nmax_idle = 1").await;
    let pool = &tunnel.pools[0];
    // The listener's two shared sessions take a pooled one each, once; the refill replaces them.
    for _ in 0..2 {
        let mut c = connect(tunnel.addr()).await;
        assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    }
    eventually("a warm session", || async { pool.idle_count() == 1 }).await;
    let before = connections_received(&redis, &pki).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut c = connect(tunnel.addr()).await;
        // SELECT needs a session of the client's own.
        assert_eq!(roundtrip(&mut c, &cmd(&["SELECT", "1"])).await, "+OK\r\n");
        ids.push(roundtrip(&mut c, &cmd(&["CLIENT", "ID"])).await);
        drop(c);
        let reused = &pool.metrics().reused;
        let want = ids.len() as u64;
        eventually("the session back in the pool", || async {
            reused.get() == want && pool.idle_count() == 1
        })
        .await;
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The direct connections that asked (one per call) are the only new ones.
    let after = connections_received(&redis, &pki).await;
    assert_eq!(
        after - before,
        1,
        "the tunnel dialled {} times",
        after - before - 1
    );
}

#[tokio::test]
async fn an_idle_shared_session_is_closed_at_max_lifetime() {
    let (pki, redis, tunnel) = pooled_tunnel("min_idle = 0\nmax_lifetime = \"1s\"").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "idle"])).await, "$-1\r\n");
    let started = Instant::now();
    // The shared session is the server connection whose last command was that GET.
    eventually("the shared session closed", || async {
        let mut d = direct(&redis, &pki, TOKEN).await;
        let list = roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await;
        !list.contains(" cmd=get ")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    // The client, still connected, is served by a fresh one.
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "idle"])).await, "$-1\r\n");
}
