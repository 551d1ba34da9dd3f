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

/// `connected_clients` of the server, read over a direct connection (which counts itself).
async fn connected_clients(redis: &Redis, pki: &Pki) -> u64 {
    let mut d = direct(redis, pki, TOKEN).await;
    let info = roundtrip(&mut d, &cmd(&["INFO", "clients"])).await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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
    let (_pki, _redis, tunnel) = pooled_tunnel("min_idle = 1").await;
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
    let pki = pki(&["localhost"]);
    let auth = [
        "--requirepass",
        TOKEN,
        "--masterauth",
        TOKEN,
        "--tls-replication",
        "yes",
    ];
    let a = Redis::start(&pki, &auth);
    let a_port = a.port.to_string();
    let b = Redis::start(
        &pki,
        &[&auth[..], &["--replicaof", "127.0.0.1", &a_port]].concat(),
    );
    let upstreams = format!("[\"localhost:{}\", \"localhost:{}\"]", a.port, b.port);
    let tunnel = Tunnel::start(&config(
        &pki,
        &upstreams,
        "min_idle = 2",
        "role = \"primary\"\n",
    ))
    .await;

    let mut old = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut old, &cmd(&["SET", "k", "before"])).await,
        "+OK\r\n"
    );

    // Swap roles: B becomes the primary, A its replica.
    let mut db = direct(&b, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut db, &cmd(&["REPLICAOF", "NO", "ONE"])).await,
        "+OK\r\n"
    );
    let mut da = direct(&a, &pki, TOKEN).await;
    let b_port = b.port.to_string();
    assert_eq!(
        roundtrip(&mut da, &cmd(&["REPLICAOF", "127.0.0.1", &b_port])).await,
        "+OK\r\n"
    );
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
