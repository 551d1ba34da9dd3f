//! Operations: metrics, readiness, the health command, reload (in process and by SIGHUP or a
//! rotated password_file), systemd notifications.

mod common;

use std::os::unix::net::UnixDatagram;

use common::*;

const TOKEN: &str = "ops-token-0123456789abcdef";

fn config(pki: &Pki, upstream_port: u16, auth: &str, extra: &str) -> String {
    format!(
        "connect_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nca_file = \"{}\"\n{auth}\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{upstream_port}\"\n{extra}",
        pki.ca.display()
    )
}

fn inline_auth() -> String {
    format!("[auth]\npassword = \"{TOKEN}\"")
}

#[tokio::test]
async fn metrics_move_as_a_client_uses_the_tunnel() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let tunnel = Tunnel::start(&config(
        &pki,
        redis.port,
        &inline_auth(),
        "[listener.pool]\nmin_idle = 2\n",
    ))
    .await;
    let admin = tunnel.admin.expect("admin endpoint");
    let pool = &tunnel.pools[0];
    eventually("warm pool", || async { pool.idle_count() == 2 }).await;
    let before = scrape(admin).await;
    assert_eq!(
        get(&before, "ectunnel_dials_total{listener=primary,result=ok}"),
        2.0
    );
    assert_eq!(
        get(&before, "ectunnel_upstream_sessions_idle{listener=primary}"),
        2.0
    );
    assert_eq!(
        get(
            &before,
            "ectunnel_client_connections_total{listener=primary}"
        ),
        0.0
    );
    let expiry = get(
        &before,
        &format!(
            "ectunnel_upstream_cert_expiry_timestamp_seconds{{listener=primary,upstream=localhost:{}}}",
            redis.port
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now,
        "certificate expiry {expiry} is not in the future"
    );

    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    let during = scrape(admin).await;
    assert_eq!(
        get(
            &during,
            "ectunnel_client_connections_total{listener=primary}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &during,
            "ectunnel_client_connections_open{listener=primary}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &during,
            "ectunnel_bytes_total{direction=to_upstream,listener=primary}"
        ),
        cmd(&["SET", "k", "v"]).len() as f64
    );
    assert_eq!(
        get(
            &during,
            "ectunnel_bytes_total{direction=to_client,listener=primary}"
        ),
        5.0
    );
    assert_eq!(
        get(
            &during,
            "ectunnel_first_reply_seconds_count{listener=primary}"
        ),
        1.0
    );
    // Every idle session plus the one serving this client.
    assert!(
        get(&during, "ectunnel_upstream_sessions_open{listener=primary}")
            >= get(&during, "ectunnel_upstream_sessions_idle{listener=primary}") + 1.0
    );
    assert_eq!(
        get(&during, "ectunnel_shared_requests_total{listener=primary}"),
        1.0
    );
    assert_eq!(
        get(&during, "ectunnel_own_sessions_total{listener=primary}"),
        0.0
    );
    // SELECT needs a session of its own, which goes back to the pool when the client leaves.
    assert_eq!(roundtrip(&mut c, &cmd(&["SELECT", "0"])).await, "+OK\r\n");
    assert_eq!(
        get(
            &scrape(admin).await,
            "ectunnel_own_sessions_total{listener=primary}"
        ),
        1.0
    );
    drop(c);
    eventually("the session reused", || async {
        scrape(admin)
            .await
            .get("ectunnel_sessions_reused_total{listener=primary}")
            == Some(&1.0)
    })
    .await;
    let after = scrape(admin).await;
    assert_eq!(
        get(&after, "ectunnel_client_connections_open{listener=primary}"),
        0.0
    );
}

#[tokio::test]
async fn readyz_turns_ready_when_the_upstream_comes_up_and_health_follows() {
    let pki = pki(&["localhost"]);
    let port = free_port();
    let tunnel = Tunnel::start(&config(&pki, port, &inline_auth(), "")).await;
    let admin = tunnel.admin.unwrap();
    eventually("a failed dial recorded", || async {
        let (status, body) = http_get(admin, "/readyz").await;
        status == 503 && body.contains("primary: upstream not reached yet: connect")
    })
    .await;
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "alive while not ready"
    );
    let health = |addr: String| {
        tokio::task::spawn_blocking(move || run_bin(&["health", "--admin", &addr], &[]))
    };
    let (code, _, err) = health(admin.to_string()).await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("primary: upstream not reached yet"), "{err}");

    let _redis = Redis::start_on(&pki, Some(port), &["--requirepass", TOKEN]);
    eventually("ready", || async {
        http_get(admin, "/readyz").await == (200, "ready\n".into())
    })
    .await;
    let (code, out, err) = health(admin.to_string()).await.unwrap();
    assert_eq!((code, out.as_str()), (0, "ready\n"), "{err}");
    let (code, _, _) = health(format!("127.0.0.1:{}", free_port())).await.unwrap();
    assert_eq!(code, 1, "nothing listening is not healthy");
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_and_rejects_bad_configs() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let base = config(&pki, redis.port, &inline_auth(), "");
    let tunnel = Tunnel::start(&base).await;
    let first = tunnel.addr();
    let mut open = connect(first).await;
    assert_eq!(roundtrip(&mut open, &cmd(&["PING"])).await, "+PONG\r\n");

    // Add a listener on a fixed, free port.
    let second: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen_first = format!("listen = \"{first}\"");
    let two = format!(
        "{}\n[[listener]]\nname = \"second\"\nlisten = \"{second}\"\nupstream = \"localhost:{}\"\n",
        base.replace(
            "listen = \"127.0.0.1:0\"\nupstream",
            &format!("{listen_first}\nupstream")
        ),
        redis.port
    );
    let config = ectunnel::Config::from_toml(&two, "reload.toml").unwrap();
    tunnel
        .reloader
        .reload(Ok(config))
        .await
        .expect("reload applies");
    let mut c = connect(second).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");

    // A config that cannot be applied (a port in use) changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = two.replace(
        &second.to_string(),
        &taken.local_addr().unwrap().to_string(),
    );
    let err = tunnel
        .reloader
        .reload(Ok(
            ectunnel::Config::from_toml(&clash, "clash.toml").unwrap()
        ))
        .await;
    assert!(err.unwrap_err().to_string().contains("cannot bind"));
    let mut c = connect(second).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["PING"])).await,
        "+PONG\r\n",
        "the old config still serves"
    );

    // Remove the first listener: it stops accepting; the open session keeps working.
    let only_second = format!(
        "{}\n[[listener]]\nname = \"second\"\nlisten = \"{second}\"\nupstream = \"localhost:{}\"\n",
        base.split("[[listener]]").next().unwrap(),
        redis.port
    );
    tunnel
        .reloader
        .reload(Ok(
            ectunnel::Config::from_toml(&only_second, "r.toml").unwrap()
        ))
        .await
        .unwrap();
    eventually("first listener closed", || async {
        tokio::net::TcpStream::connect(first).await.is_err()
    })
    .await;
    assert_eq!(roundtrip(&mut open, &cmd(&["PING"])).await, "+PONG\r\n");
    let m = scrape(tunnel.admin.unwrap()).await;
    assert_eq!(get(&m, "ectunnel_config_reloads_total{result=ok}"), 2.0);
    assert_eq!(get(&m, "ectunnel_config_reloads_total{result=error}"), 1.0);
}

/// A server whose `default` user accepts each of `passwords` (several at once, as during an
/// ElastiCache ROTATE).
fn acl_redis(pki: &Pki, passwords: &[&str]) -> Redis {
    let mut args = vec!["--user".to_owned(), "default".into(), "on".into()];
    args.extend(passwords.iter().map(|p| format!(">{p}")));
    args.extend(["~*".into(), "&*".into(), "+@all".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Redis::start(pki, &args)
}

/// A config file whose `[auth]` reads `secret` (holding `token`) from a password_file.
fn password_file_config(
    pki: &Pki,
    redis: &Redis,
    token: &str,
    pool: &str,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("redis-auth");
    std::fs::write(&secret, token).unwrap();
    let file = dir.path().join("ectunnel.toml");
    let auth = format!("[auth]\npassword_file = \"{}\"", secret.display());
    std::fs::write(&file, config(pki, redis.port, &auth, pool)).unwrap();
    (dir, secret, file)
}

#[tokio::test]
async fn sighup_rotates_the_token_without_dropping_open_sessions() {
    let pki = pki(&["localhost"]);
    // Two valid passwords, as ElastiCache's ROTATE strategy allows during a rotation.
    let redis = acl_redis(&pki, &["old-token-0000000000", "new-token-0000000000"]);
    let (dir, secret, file) = password_file_config(
        &pki,
        &redis,
        "old-token-0000000000\n",
        "[listener.pool]\nmin_idle = 1\n",
    );
    let notify_path = dir.path().join("notify.sock");
    let notify_sock = UnixDatagram::bind(&notify_path).unwrap();
    notify_sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut bin = Bin::spawn(
        &["-c", &path_str(&file), "--log-level", "debug"],
        &[("NOTIFY_SOCKET", &path_str(&notify_path))],
    );
    let addr = bin.listen_addr();
    let next_notification = || {
        let mut buf = [0u8; 512];
        let n = notify_sock.recv(&mut buf).expect("an sd_notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next_notification().contains("READY=1"));

    let mut open = connect(addr).await;
    assert_eq!(
        roundtrip(&mut open, &cmd(&["SET", "k", "v"])).await,
        "+OK\r\n"
    );
    // Rotate: the new token in the file, the old one no longer valid on the server.
    std::fs::write(&secret, "new-token-0000000000\n").unwrap();
    let mut direct = direct(&redis, &pki, "new-token-0000000000").await;
    assert_eq!(
        roundtrip(
            &mut direct,
            &cmd(&["ACL", "SETUSER", "default", "<old-token-0000000000"])
        )
        .await,
        "+OK\r\n"
    );
    bin.signal("HUP");
    let reloading = next_notification();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(next_notification().contains("READY=1"));
    bin.wait_line(|l| l.contains("configuration reloaded"));
    // New clients authenticate with the new token; the open session is untouched.
    let mut fresh = connect(addr).await;
    assert_eq!(
        roundtrip(&mut fresh, &cmd(&["GET", "k"])).await,
        "$1\r\nv\r\n"
    );
    assert_eq!(
        roundtrip(&mut open, &cmd(&["GET", "k"])).await,
        "$1\r\nv\r\n"
    );

    // An invalid config is rejected; the running one keeps serving.
    std::fs::write(&file, "[[listener]]\nlisten = \"nonsense\"\n").unwrap();
    bin.signal("HUP");
    bin.wait_line(|l| l.contains("reload rejected"));
    let mut again = connect(addr).await;
    assert_eq!(roundtrip(&mut again, &cmd(&["PING"])).await, "+PONG\r\n");

    bin.signal("TERM");
    drop((open, fresh, again));
    loop {
        if next_notification().contains("STOPPING=1") {
            break;
        }
    }
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        !log.contains("token-0000000000"),
        "a secret reached the log:\n{log}"
    );
}

#[tokio::test]
async fn a_rotated_password_file_reloads_by_itself() {
    let pki = pki(&["localhost"]);
    let redis = acl_redis(&pki, &["first-token-000000000"]);
    let (_dir, secret, file) = password_file_config(
        &pki,
        &redis,
        "first-token-000000000",
        "[listener.pool]\nmin_idle = 0\nreuse = false\n",
    );
    let mut bin = Bin::spawn(&["-c", &path_str(&file)], &[]);
    let addr = bin.listen_addr();
    let mut c = connect(addr).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    // The server moves to a new token and so does the mounted secret (as Kubernetes does).
    let mut d = direct(&redis, &pki, "first-token-000000000").await;
    assert_eq!(
        roundtrip(
            &mut d,
            &cmd(&[
                "ACL",
                "SETUSER",
                "default",
                "resetpass",
                ">second-token-00000000"
            ])
        )
        .await,
        "+OK\r\n"
    );
    std::fs::write(&secret, "second-token-00000000").unwrap();
    bin.wait_line(|l| l.contains("a password_file changed"));
    bin.wait_line(|l| l.contains("configuration reloaded"));
    let mut c = connect(addr).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    bin.signal("TERM");
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[tokio::test]
async fn a_reload_reaches_clients_connected_before_it() {
    let pki = pki(&["localhost"]);
    let redis = acl_redis(&pki, &["before-token-00000000"]);
    let auth = |t: &str| format!("[auth]\npassword = \"{t}\"");
    let tunnel = Tunnel::start(&config(
        &pki,
        redis.port,
        &auth("before-token-00000000"),
        "",
    ))
    .await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    // The token rotates on the server and in the tunnel's configuration...
    let mut d = direct(&redis, &pki, "before-token-00000000").await;
    let me = roundtrip(&mut d, &cmd(&["CLIENT", "ID"])).await;
    let me = me.trim_start_matches(':').trim().to_owned();
    let list = roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await;
    let before: Vec<String> = list
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter(|id| *id != me)
        .map(str::to_owned)
        .collect();
    let rotate = cmd(&[
        "ACL",
        "SETUSER",
        "default",
        "resetpass",
        ">after-token-000000000",
    ]);
    assert_eq!(roundtrip(&mut d, &rotate).await, "+OK\r\n");
    let new = config(&pki, redis.port, &auth("after-token-000000000"), "");
    let new = ectunnel::Config::from_toml(&new, "reload.toml").unwrap();
    tunnel.reloader.reload(Ok(new)).await.unwrap();
    // ...then the server closes every session the tunnel made with the old one.
    for id in &before {
        roundtrip(&mut d, &cmd(&["CLIENT", "KILL", "ID", id])).await;
    }
    // The client connected before the reload is served with the new token.
    let mut got = roundtrip(&mut c, &cmd(&["GET", "k"])).await;
    if got.starts_with("-ERR ectunnel: ") && !got.contains("WRONGPASS") {
        got = roundtrip(&mut c, &cmd(&["GET", "k"])).await; // it met the killed session
    }
    assert_eq!(got, "$1\r\nv\r\n");
}
