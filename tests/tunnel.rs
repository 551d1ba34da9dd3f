//! The tunnel against a real TLS redis-server: AUTH injection, explained failures, half-close,
//! graceful shutdown.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "s3cret-token-0123456789";

/// A tunnel without AUTH injection in front of a fresh TLS redis-server, reached by name.
async fn plain_tunnel(extra_top: &str) -> (Pki, Redis, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = format!("localhost:{}", redis.port);
    let tunnel = Tunnel::start(&listener_toml(&upstream, &pki, extra_top)).await;
    (pki, redis, tunnel)
}

fn with_auth(upstream: &str, pki: &Pki, auth: &str) -> String {
    listener_toml(upstream, pki, &format!("[auth]\n{auth}\n"))
}

#[tokio::test]
async fn injects_the_token_so_the_client_needs_none() {
    let (_pki, _redis, _upstream, tunnel) = token_tunnel(TOKEN).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$1\r\nv\r\n");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await,
        "$7\r\ndefault\r\n"
    );
    // Inline commands, as telnet sends them, pass through the byte pipe untouched.
    assert_eq!(roundtrip(&mut c, b"get k\r\n").await, "$1\r\nv\r\n");
}

#[tokio::test]
async fn injects_an_acl_user_from_a_password_file() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(
        &pki,
        &[
            "--requirepass",
            TOKEN,
            "--user",
            "app",
            "on",
            ">app-pass-0123456789",
            "~*",
            "&*",
            "+@all",
        ],
    );
    let file = pki.dir.path().join("app-pass");
    std::fs::write(&file, "app-pass-0123456789\n").unwrap();
    let auth = format!("username = \"app\"\npassword_file = \"{}\"", file.display());
    let upstream = format!("localhost:{}", redis.port);
    let tunnel = Tunnel::start(&with_auth(&upstream, &pki, &auth)).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await,
        "$3\r\napp\r\n"
    );
}

#[tokio::test]
async fn without_an_auth_section_the_client_authenticates_itself() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let tunnel = Tunnel::start(&listener_toml(
        &format!("localhost:{}", redis.port),
        &pki,
        "",
    ))
    .await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["PING"])).await,
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["AUTH", TOKEN])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn two_listeners_reach_their_own_upstreams() {
    let pki = pki(&["localhost"]);
    let (a, b) = (Redis::start(&pki, &[]), Redis::start(&pki, &[]));
    let toml = format!(
        "[tls]\nca_file = \"{}\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{}\"\n[[listener]]\nname = \"reader\"\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{}\"\n",
        pki.ca.display(),
        a.port,
        b.port
    );
    let tunnel = Tunnel::start(&toml).await;
    let mut ca = connect(tunnel.addrs[0]).await;
    let mut cb = connect(tunnel.addrs[1]).await;
    assert_eq!(
        roundtrip(&mut ca, &cmd(&["SET", "who", "a"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut cb, &cmd(&["GET", "who"])).await, "$-1\r\n");
}

/// A tunnel injecting `password` in front of a server whose token is [`TOKEN`]; also returns
/// the upstream as the tunnel names it.
async fn token_tunnel(password: &str) -> (Pki, Redis, String, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let upstream = format!("localhost:{}", redis.port);
    let auth = format!("password = \"{password}\"");
    let tunnel = Tunnel::start(&with_auth(&upstream, &pki, &auth)).await;
    (pki, redis, upstream, tunnel)
}

/// A tunnel in front of a server that will refuse the tunnel's token.
async fn wrong_token_tunnel() -> (Pki, Redis, String, Tunnel) {
    token_tunnel("not-the-token-000000").await
}

#[tokio::test]
async fn a_wrong_token_is_explained_to_the_client() {
    let (_pki, _redis, upstream, tunnel) = wrong_token_tunnel().await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        read_to_close(&mut c).await.unwrap(),
        format!(
            "-ERR ectunnel: auth {upstream}: WRONGPASS invalid username-password pair or user is disabled.\r\n"
        )
    );
}

#[tokio::test]
async fn the_error_survives_client_writes_before_and_after_the_failure() {
    let (_pki, _redis, upstream, tunnel) = wrong_token_tunnel().await;
    let expected = format!("-ERR ectunnel: auth {upstream}: WRONGPASS");

    // A client that writes at once (`redis-cli GET k`): its bytes are unread when the dial
    // fails. Closing over unread input would reset the connection instead of a clean close.
    let mut early = connect(tunnel.addr()).await;
    early.write_all(&cmd(&["GET", "k"])).await.unwrap();
    early.shutdown().await.unwrap();
    let got = read_to_close(&mut early)
        .await
        .expect("a clean close, not a reset");
    assert!(got.starts_with(&expected), "{got}");

    // A client that writes only after the error is there (interactive redis-cli, telnet).
    let mut late = connect(tunnel.addr()).await;
    let mut probe = [0u8; 1];
    tokio::time::timeout(WAIT, late.peek(&mut probe))
        .await
        .unwrap()
        .unwrap();
    late.write_all(&cmd(&["GET", "k"])).await.unwrap();
    late.shutdown().await.unwrap();
    let got = read_to_close(&mut late)
        .await
        .expect("a clean close, not a reset");
    assert!(got.starts_with(&expected), "{got}");
    // The tunnel read and discarded the late command instead of answering it with a reset
    // (which some client stacks take as licence to drop the unread error).
    assert!(
        late.take_error().unwrap().is_none(),
        "the tunnel reset the connection"
    );
}

#[tokio::test]
async fn an_unknown_ca_is_refused_with_the_reason() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = format!("localhost:{}", redis.port);
    // No ca_file: the built-in Mozilla roots do not know the test CA.
    let toml = format!("[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n");
    let tunnel = Tunnel::start(&toml).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        read_to_close(&mut c).await.unwrap(),
        format!("-ERR ectunnel: tls {upstream}: invalid peer certificate: UnknownIssuer\r\n")
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = redis.addr();
    let toml = listener_toml(&upstream, &pki, "").replace(
        "[[listener]]",
        "server_name = \"master.other.example\"\n[[listener]]",
    );
    let tunnel = Tunnel::start(&toml).await;
    let mut c = connect(tunnel.addr()).await;
    let got = read_to_close(&mut c).await.unwrap();
    assert!(
        got.starts_with(&format!(
            "-ERR ectunnel: tls {upstream}: invalid peer certificate: "
        )),
        "{got}"
    );
    assert!(got.contains("master.other.example"), "{got}");
    assert!(
        got.ends_with("\r\n") && got.matches("\r\n").count() == 1,
        "{got}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let toml = format!(
        "[tls]\ninsecure_skip_verify = true\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
        redis.addr()
    );
    let tunnel = Tunnel::start(&toml).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn a_refused_connection_is_explained() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap().to_string();
    drop(closed);
    let pki = pki(&["localhost"]);
    let tunnel = Tunnel::start(&listener_toml(&upstream, &pki, "")).await;
    let mut c = connect(tunnel.addr()).await;
    let got = read_to_close(&mut c).await.unwrap();
    assert!(
        got.starts_with(&format!("-ERR ectunnel: connect {upstream}: ")),
        "{got}"
    );
    assert!(got.to_lowercase().contains("refused"), "{got}");
}

#[tokio::test]
async fn a_silent_server_times_out_in_the_tls_stage() {
    // Accepts TCP but never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let pki = pki(&["localhost"]);
    let tunnel = Tunnel::start(&listener_toml(
        &upstream,
        &pki,
        "connect_timeout = \"300ms\"",
    ))
    .await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        read_to_close(&mut c).await.unwrap(),
        format!(
            "-ERR ectunnel: tls {upstream}: timed out after 300ms (the server did not answer in \
             TLS: is the port right and in-transit encryption on?)\r\n"
        )
    );
    hold.abort();
}

#[tokio::test]
async fn a_plain_redis_server_fails_in_the_tls_stage_with_a_hint() {
    // In-transit encryption off: redis takes the ClientHello for the start of an inline
    // command and waits for its end (its search for the newline stops at the first NUL byte),
    // so the handshake times out; were it to answer `-ERR` or close, the hint would be the same.
    let plain = Redis::start_plain(&[]);
    let upstream = plain.addr();
    let pki = pki(&["localhost"]);
    let config = listener_toml(&upstream, &pki, "connect_timeout = \"1s\"");
    let tunnel = Tunnel::start(&config).await;
    let mut c = connect(tunnel.addr()).await;
    let got = read_to_close(&mut c).await.unwrap();
    assert!(
        got.starts_with(&format!("-ERR ectunnel: tls {upstream}: ")),
        "{got}"
    );
    assert!(
        got.ends_with(
            "(the server did not answer in TLS: is the port right and in-transit encryption \
             on?)\r\n"
        ),
        "{got}"
    );
}

#[tokio::test]
async fn an_unresolvable_name_fails_in_the_dns_stage() {
    let pki = pki(&["localhost"]);
    let upstream = "no-such-host.invalid:6379";
    let tunnel = Tunnel::start(&listener_toml(upstream, &pki, "connect_timeout = \"2s\"")).await;
    let mut c = connect(tunnel.addr()).await;
    let got = read_to_close(&mut c).await.unwrap();
    assert!(
        got.starts_with(&format!("-ERR ectunnel: dns {upstream}: ")),
        "{got}"
    );
}

#[tokio::test]
async fn a_client_half_close_still_gets_every_reply() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let tunnel = Tunnel::start(
        &listener_toml(&redis.addr(), &pki, "")
            .replace("[[listener]]", "server_name = \"localhost\"\n[[listener]]"),
    )
    .await;
    let mut c = connect(tunnel.addr()).await;
    let mut batch = Vec::new();
    for _ in 0..200 {
        batch.extend_from_slice(&cmd(&["INCR", "n"]));
    }
    c.write_all(&batch).await.unwrap();
    // Done sending: a half-close, not a close. The replies must still come back.
    c.shutdown().await.unwrap();
    let got = read_to_close(&mut c).await.unwrap();
    let expected: String = (1..=200).map(|i| format!(":{i}\r\n")).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_server_close_reaches_the_client_after_its_reply() {
    let (_pki, _redis, tunnel) = plain_tunnel("").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["QUIT"])).await, "+OK\r\n");
    assert_eq!(read_to_close(&mut c).await.unwrap(), "");
}

#[tokio::test]
async fn large_values_pass_both_ways_intact() {
    let (_pki, _redis, tunnel) = plain_tunnel("").await;
    let mut c = connect(tunnel.addr()).await;
    let value: String = (0..3 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "big", &value])).await,
        "+OK\r\n"
    );
    let got = roundtrip(&mut c, &cmd(&["GET", "big"])).await;
    assert_eq!(got, format!("${}\r\n{value}\r\n", value.len()));
}

#[tokio::test]
async fn shutdown_drains_open_sessions_until_the_grace_ends() {
    let (_pki, _redis, mut tunnel) = plain_tunnel("shutdown_grace = \"3s\"").await;
    let addr = tunnel.addr();
    let mut open = connect(addr).await;
    assert_eq!(roundtrip(&mut open, &cmd(&["PING"])).await, "+PONG\r\n");
    let stopped = tunnel.shutdown();
    // The listener closes: new clients are refused...
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener still accepting after shutdown");
    // ...while the open session keeps working during the grace period...
    assert_eq!(roundtrip(&mut open, &cmd(&["PING"])).await, "+PONG\r\n");
    // ...and is closed when it ends, after which the server has stopped.
    assert_eq!(read_to_close(&mut open).await.unwrap(), "");
    tokio::time::timeout(WAIT, stopped).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_as_soon_as_the_last_session_leaves() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    // A grace far longer than the test's wait: finishing early proves the drain does not sleep.
    let toml = listener_toml(
        &format!("localhost:{}", redis.port),
        &pki,
        "shutdown_grace = \"10m\"",
    );
    let mut tunnel = Tunnel::start(&toml).await;
    let mut open = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut open, &cmd(&["PING"])).await, "+PONG\r\n");
    let stopped = tunnel.shutdown();
    drop(open);
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("waited for the grace")
        .unwrap();
}

/// A client that writes thousands of transactions before reading a reply is served as Redis
/// serves it: the tunnel keeps reading it (its reply bookkeeping does not grow per transaction).
#[tokio::test]
async fn pipelined_transactions_sent_before_any_read_complete() {
    let (_pki, _redis, tunnel) = plain_tunnel("").await;
    let mut c = connect(tunnel.addr()).await;
    // Long requests: more than the sockets hold, so the writes wait on the tunnel reading.
    let (key, value) = ("k".repeat(1000), "v".repeat(1000));
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", &key, &value])).await,
        "+OK\r\n"
    );
    let n = 20_000;
    let one = [cmd(&["MULTI"]), cmd(&["GET", &key]), cmd(&["EXEC"])].concat();
    let reply = format!("+OK\r\n+QUEUED\r\n*1\r\n$1000\r\n{value}\r\n");
    let (mut rd, mut wr) = c.split();
    let all = one.repeat(n);
    let done = async {
        // All of it written before anything is read, as a client that pipelines blindly does.
        wr.write_all(&all).await.unwrap();
        let mut got = vec![0u8; reply.len() * n];
        tokio::io::AsyncReadExt::read_exact(&mut rd, &mut got)
            .await
            .unwrap();
        got
    };
    let got = tokio::time::timeout(WAIT, done)
        .await
        .expect("the pipeline hung");
    assert!(got.chunks(reply.len()).all(|r| r == reply.as_bytes()));
}
