//! The RESP engine against a real TLS redis-server: RESET keeps the injected AUTH, client AUTH
//! policies, inline commands, CLIENT REPLY, MONITOR, SUBSCRIBE, RESP3 pushes, malformed input.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "resp-token-0123456789abcdef";

async fn setup(extra_listener: &str) -> (Pki, Redis, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let toml = format!(
        "[tls]\nca_file = \"{}\"\n[auth]\npassword = \"{TOKEN}\"\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{}\"\n{extra_listener}",
        pki.ca.display(),
        redis.port
    );
    let tunnel = Tunnel::start(&toml).await;
    (pki, redis, tunnel)
}

#[tokio::test]
async fn reset_keeps_the_client_authenticated() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SELECT", "3"])).await, "+OK\r\n");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", "v3"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    // Back in db 0, and still authenticated: no NOAUTH.
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$-1\r\n");
    // RESET pipelined with the next command: the re-AUTH goes in between.
    let both = [cmd(&["RESET"]), cmd(&["PING"])].concat();
    c.write_all(&both).await.unwrap();
    assert_eq!(read_reply(&mut c).await, "+RESET\r\n");
    assert_eq!(read_reply(&mut c).await, "+PONG\r\n");
    // Inside MULTI too: RESET ends the transaction, then the tunnel re-authenticates.
    assert_eq!(roundtrip(&mut c, &cmd(&["MULTI"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await,
        "$7\r\ndefault\r\n"
    );
}

#[tokio::test]
async fn absorb_mode_answers_the_clients_own_auth() {
    let (_pki, _redis, tunnel) = setup("[listener.client_auth]\nmode = \"absorb\"\n").await;
    let mut c = connect(tunnel.addr()).await;
    // An application still configured with an old token keeps working.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["AUTH", "an-old-token"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    let hello = roundtrip(
        &mut c,
        &cmd(&["HELLO", "3", "AUTH", "default", "an-old-token"]),
    )
    .await;
    assert!(hello.starts_with('%'), "a RESP3 map: {hello}");
    assert!(hello.contains("proto\r\n:3\r\n"), "{hello}");
}

#[tokio::test]
async fn require_mode_demands_the_tunnels_own_password() {
    let (_pki, _redis, tunnel) =
        setup("[listener.client_auth]\nmode = \"require\"\npassword = \"client-side-pass\"\n")
            .await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["GET", "k"])).await,
        "-NOAUTH Authentication required.\r\n"
    );
    // The upstream token is not the client's password.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["AUTH", TOKEN])).await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["AUTH", "client-side-pass"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
}

#[tokio::test]
async fn inline_commands_work_as_telnet_sends_them() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    // Empty lines get no reply from Redis, so none may be expected from the tunnel either.
    c.write_all(b"\r\n\r\nset greeting \"hello world\"\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut c).await, "+OK\r\n");
    assert_eq!(
        roundtrip(&mut c, b"get greeting\n").await,
        "$11\r\nhello world\r\n"
    );
    assert_eq!(roundtrip(&mut c, b"RESET\r\n").await, "+RESET\r\n");
    assert_eq!(roundtrip(&mut c, b"PING\r\n").await, "+PONG\r\n");
}

#[tokio::test]
async fn client_reply_off_and_on_keep_replies_in_order() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    let batch = [
        cmd(&["CLIENT", "REPLY", "OFF"]),
        cmd(&["SET", "a", "1"]),
        cmd(&["CLIENT", "REPLY", "ON"]),
        cmd(&["GET", "a"]),
    ]
    .concat();
    c.write_all(&batch).await.unwrap();
    assert_eq!(read_reply(&mut c).await, "+OK\r\n");
    assert_eq!(read_reply(&mut c).await, "$1\r\n1\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn monitor_and_subscribe_keep_working() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut monitor = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut monitor, &cmd(&["MONITOR"])).await, "+OK\r\n");
    let mut sub = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut sub, &cmd(&["SUBSCRIBE", "news"])).await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    let mut publisher = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut publisher, &cmd(&["PUBLISH", "news", "hi"])).await,
        ":1\r\n"
    );
    assert_eq!(
        read_reply(&mut sub).await,
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    // MONITOR shows every command, the tunnel's own (redacted) AUTHs included, in order.
    let mut seen = Vec::new();
    loop {
        let line = read_reply(&mut monitor).await;
        assert!(!line.contains(TOKEN), "{line}");
        seen.push(line);
        if seen.last().unwrap().contains("\"PUBLISH\" \"news\" \"hi\"") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("\"SUBSCRIBE\" \"news\"")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn resp3_pushes_do_not_disturb_the_accounting() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    assert!(
        roundtrip(&mut c, &cmd(&["HELLO", "3"]))
            .await
            .starts_with('%')
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "TRACKING", "ON"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "tracked"])).await, "_\r\n");
    let mut writer = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut writer, &cmd(&["SET", "tracked", "1"])).await,
        "+OK\r\n"
    );
    assert_eq!(
        read_reply(&mut c).await,
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n"
    );
    // The push was not taken for the reply to the injected AUTH after RESET.
    c.write_all(&[cmd(&["RESET"]), cmd(&["GET", "tracked"])].concat())
        .await
        .unwrap();
    assert_eq!(read_reply(&mut c).await, "+RESET\r\n");
    assert_eq!(read_reply(&mut c).await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn malformed_input_closes_only_its_own_session() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut good = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut good, &cmd(&["SET", "k", "v"])).await,
        "+OK\r\n"
    );
    let mut bad = connect(tunnel.addr()).await;
    bad.write_all(&[cmd(&["GET", "k"]), b"*1\r\n:5\r\n".to_vec()].concat())
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut bad).await.unwrap(),
        "$1\r\nv\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert_eq!(
        roundtrip(&mut good, &cmd(&["GET", "k"])).await,
        "$1\r\nv\r\n"
    );
}

#[tokio::test]
async fn the_server_decides_on_a_huge_declared_bulk() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000000000\r\nxxxx")
        .await
        .unwrap();
    let got = read_to_close(&mut c).await.unwrap();
    assert_eq!(got, "-ERR Protocol error: invalid bulk length\r\n");
    let mut next = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut next, &cmd(&["PING"])).await, "+PONG\r\n");
}

#[tokio::test]
async fn raw_protocol_is_a_plain_byte_pipe() {
    let (_pki, _redis, tunnel) = setup("protocol = \"raw\"\n").await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    // No re-AUTH in raw mode: RESET really de-authenticated the connection.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["GET", "k"])).await,
        "-NOAUTH Authentication required.\r\n"
    );
}

#[tokio::test]
async fn malformed_input_in_the_middle_of_a_streamed_command_still_gets_its_error() {
    let (_pki, _redis, tunnel) = setup("").await;
    let mut c = connect(tunnel.addr()).await;
    // The SET starts streaming upstream as soon as its name is known...
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n")
        .await
        .unwrap();
    let mut good = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut good, &cmd(&["PING"])).await, "+PONG\r\n"); // a round trip's delay
    // ...then its last argument is not a bulk string.
    c.write_all(b":5\r\n").await.unwrap();
    assert_eq!(
        read_to_close(&mut c).await.unwrap(),
        "-ERR Protocol error: expected '$', got ':'\r\n"
    );
}

#[tokio::test]
async fn reset_ends_subscribe_mode_and_the_session_stays_authenticated() {
    let (_pki, _redis, tunnel) = setup("[listener.pool]\nmin_idle = 1\nmax_idle = 1").await;
    let reused = &tunnel.pools[0].metrics().reused;
    for hello in [None, Some("3")] {
        let mut c = connect(tunnel.addr()).await;
        if let Some(v) = hello {
            assert!(
                roundtrip(&mut c, &cmd(&["HELLO", v]))
                    .await
                    .starts_with('%')
            );
        }
        let sub = roundtrip(&mut c, &cmd(&["SUBSCRIBE", "news"])).await;
        assert!(
            sub.ends_with("$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"),
            "{sub}"
        );
        assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
        assert_eq!(
            roundtrip(&mut c, &cmd(&["PING"])).await,
            "+PONG\r\n",
            "RESP{hello:?}"
        );
        assert_eq!(
            roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await,
            "$7\r\ndefault\r\n"
        );
        // Such a session is clean again: it goes back to the pool when its client leaves.
        let before = reused.get();
        drop(c);
        eventually("the session reused", || async {
            reused.get() == before + 1
        })
        .await;
    }
    // MONITOR too ends at RESET.
    let mut m = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut m, &cmd(&["MONITOR"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut m, &cmd(&["RESET"])).await, "+RESET\r\n");
    assert_eq!(roundtrip(&mut m, &cmd(&["PING"])).await, "+PONG\r\n");
    let before = reused.get();
    drop(m);
    eventually("the session reused", || async {
        reused.get() == before + 1
    })
    .await;
}
