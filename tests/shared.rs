//! Shared upstream sessions judged against what a direct connection shows: big pipelines,
//! connection-naming clients, RESP3 clients, WAIT, inline requests Redis refuses.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "shared-token-0123456789abcdef";

fn config(pki: &Pki, upstream: &str, pool: &str) -> String {
    format!(
        "connect_timeout = \"2s\"\n[tls]\nca_file = \"{}\"\n[auth]\npassword = \"{TOKEN}\"\n[pool]\n{pool}\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
        pki.ca.display()
    )
}

async fn shared_tunnel(pool: &str) -> (Pki, Redis, Tunnel) {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let tunnel = Tunnel::start(&config(&pki, &format!("localhost:{}", redis.port), pool)).await;
    (pki, redis, tunnel)
}

#[tokio::test]
async fn a_client_that_writes_a_whole_pipeline_before_reading_completes() {
    let (_pki, _redis, tunnel) = shared_tunnel("min_idle = 1").await;
    let mut c = connect(tunnel.addr()).await;
    let value = "v".repeat(100);
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", &value])).await,
        "+OK\r\n"
    );
    // 300,000 GETs (6.6 MB of requests, 33 MB of replies) written in one go, then read: more
    // than the socket buffers hold either way, as hiredis-style blocking pipelines do.
    const N: usize = 300_000;
    let pipeline: Vec<u8> = cmd(&["GET", "k"]).repeat(N);
    let reply = format!("${}\r\n{value}\r\n", value.len()).into_bytes();
    let (mut rd, mut wr) = c.into_split();
    let written = tokio::time::timeout(WAIT * 3, async {
        wr.write_all(&pipeline).await.unwrap();
        wr
    })
    .await;
    let Ok(_wr) = written else {
        panic!("the tunnel stopped reading a client that writes before it reads");
    };
    let mut got = vec![0u8; reply.len() * N];
    tokio::time::timeout(WAIT * 3, rd.read_exact(&mut got))
        .await
        .expect("replies timed out")
        .unwrap();
    assert!(got.chunks(reply.len()).all(|r| r == reply));
}

#[tokio::test]
async fn a_pipeline_of_large_writes_written_before_reading_completes() {
    let (_pki, _redis, tunnel) = shared_tunnel("min_idle = 1").await;
    let c = connect(tunnel.addr()).await;
    // 5,000 SETs of 4 KiB (20 MB of requests): past the in-flight byte limit many times over.
    let value = "w".repeat(4096);
    let pipeline: Vec<u8> = (0..5000)
        .flat_map(|i| cmd(&["SET", &format!("k{i}"), &value]))
        .collect();
    let (mut rd, mut wr) = c.into_split();
    tokio::time::timeout(WAIT * 3, wr.write_all(&pipeline))
        .await
        .expect("the tunnel stopped reading a client that writes before it reads")
        .unwrap();
    let mut got = vec![0u8; 5 * 5000];
    tokio::time::timeout(WAIT * 3, rd.read_exact(&mut got))
        .await
        .expect("replies timed out")
        .unwrap();
    assert!(got.chunks(5).all(|r| r == b"+OK\r\n"));
}

/// A client library's connect sequence: name and library info, then data commands.
#[tokio::test]
async fn clients_that_name_their_connection_still_share() {
    let (_pki, _redis, tunnel) = shared_tunnel("min_idle = 1").await;
    let own = &tunnel.pools[0].metrics().own_sessions;
    let mut c = connect(tunnel.addr()).await;
    let setinfo = roundtrip(&mut c, &cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"])).await;
    // What the server says to SETINFO (7.0 does not know it) is what the client gets.
    assert!(
        setinfo == "+OK\r\n" || setinfo.starts_with("-ERR unknown subcommand"),
        "{setinfo}"
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "SETNAME", "app-1"])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "GETNAME"])).await,
        "$5\r\napp-1\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$1\r\nv\r\n");
    assert_eq!(
        own.get(),
        0,
        "naming the connection took a session of its own"
    );
    // A name Redis refuses is refused the same way.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "SETNAME", "a b"])).await,
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    // Once it needs a session of its own, the name goes with it.
    assert_eq!(roundtrip(&mut c, &cmd(&["SELECT", "0"])).await, "+OK\r\n");
    assert_eq!(own.get(), 1);
    assert_eq!(
        roundtrip(&mut c, &cmd(&["CLIENT", "GETNAME"])).await,
        "$5\r\napp-1\r\n"
    );
    let info = roundtrip(&mut c, &cmd(&["CLIENT", "INFO"])).await;
    assert!(info.contains(" name=app-1 "), "{info}");
}

#[tokio::test]
async fn resp3_clients_share_resp3_sessions() {
    let (_pki, _redis, tunnel) = shared_tunnel("min_idle = 1").await;
    let own = &tunnel.pools[0].metrics().own_sessions;
    let mut c = connect(tunnel.addr()).await;
    let hello = roundtrip(&mut c, &cmd(&["HELLO", "3"])).await;
    assert!(
        hello.starts_with("%7\r\n") && hello.contains("proto\r\n:3\r\n"),
        "{hello}"
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["HSET", "h", "f", "v"])).await,
        ":1\r\n"
    );
    assert_eq!(
        roundtrip(&mut c, &cmd(&["HGETALL", "h"])).await,
        "%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "missing"])).await, "_\r\n");
    // A RESP2 client at the same time still gets RESP2.
    let mut two = connect(tunnel.addr()).await;
    assert_eq!(
        roundtrip(&mut two, &cmd(&["HGETALL", "h"])).await,
        "*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    );
    assert_eq!(own.get(), 0, "HELLO 3 took a session of its own");
}

/// An inline request longer than Redis accepts: Redis answers it with a protocol error and
/// closes the connection, which must be the client's own, never a shared one.
#[tokio::test]
async fn an_inline_request_redis_refuses_never_reaches_a_shared_session() {
    let (pki, redis, tunnel) = shared_tunnel("min_idle = 1\nmultiplex = 1").await;
    let mut other = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut other, &cmd(&["PING"])).await, "+PONG\r\n");
    let mut d = direct(&redis, &pki, TOKEN).await;
    let shared_ids = |list: String| -> Vec<String> {
        list.lines()
            .filter(|l| l.contains(" cmd=ping "))
            .filter_map(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .collect()
    };
    let before = shared_ids(roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await);
    assert_eq!(before.len(), 1, "{before:?}");
    let mut big = connect(tunnel.addr()).await;
    let line = format!("SET k {}\r\n", "x".repeat(100 * 1024));
    big.write_all(line.as_bytes()).await.unwrap();
    let got = read_to_close(&mut big).await.unwrap_or_default();
    assert!(
        got.starts_with("-ERR Protocol error: too big inline request"),
        "{got}"
    );
    let after = roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await;
    assert!(
        after.contains(&format!("id={} ", before[0])),
        "the shared session was closed:\n{after}"
    );
    assert_eq!(roundtrip(&mut other, &cmd(&["PING"])).await, "+PONG\r\n");
}

/// `WAIT` counts the replicas that acknowledged this client's writes, even when they were made
/// on a shared session.
#[tokio::test]
async fn wait_counts_acknowledgements_of_the_clients_own_writes() {
    let (pki, a, b) = primary_and_replica(TOKEN).await;
    let tunnel = Tunnel::start(&config(
        &pki,
        &format!("localhost:{}", a.port),
        "min_idle = 1",
    ))
    .await;
    // A replica that answers nothing has acknowledged nothing.
    b.freeze();
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "1"])).await, "+OK\r\n");
    let waited = std::time::Instant::now();
    let got = roundtrip(&mut c, &cmd(&["WAIT", "1", "300"])).await;
    b.thaw();
    assert_eq!(
        got, ":0\r\n",
        "WAIT said a write made on a shared session was replicated"
    );
    assert!(waited.elapsed() >= std::time::Duration::from_millis(250));
    // Once it answers, the write is acknowledged.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["WAIT", "1", "5000"])).await,
        ":1\r\n"
    );
}

/// When the upstream stops answering, the clients that need a shared session at that moment
/// wait on one dial, not on one each in turn.
#[tokio::test]
async fn clients_arriving_at_an_outage_share_one_dial() {
    use common::fault::{Mode, Relay};
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let relay = Relay::start(redis.addr().parse().unwrap()).await;
    let toml = format!(
        "connect_timeout = \"500ms\"\n[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n[auth]\npassword = \"{TOKEN}\"\n[pool]\nmin_idle = 0\nmultiplex = 1\nshared_reply_timeout = \"300ms\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
        pki.ca.display(),
        relay.addr
    );
    let tunnel = Tunnel::start(&toml).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    relay.set(Mode::Hold);
    let got = roundtrip(&mut c, &cmd(&["PING"])).await;
    assert!(got.contains("no reply from the server"), "{got}");
    // Six clients at once, each needing the slot's (now dead) session replaced.
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = tunnel.addr();
            tokio::spawn(async move {
                let mut c = connect(addr).await;
                read_to_close(&mut c).await.unwrap_or_default()
            })
        })
        .collect();
    for c in clients {
        let got = c.await.unwrap();
        assert!(got.starts_with("-ERR ectunnel: tls "), "{got}");
    }
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
}

/// A server that refuses `HELLO 3` (before Redis 6, or an ACL without HELLO): the client gets
/// the server's refusal and carries on in RESP2, as it would directly.
#[tokio::test]
async fn a_refused_hello_3_leaves_the_client_as_it_was() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(
        &pki,
        &["--requirepass", TOKEN, "--rename-command", "HELLO", "\"\""],
    );
    let mut d = direct(&redis, &pki, TOKEN).await;
    let direct_hello = roundtrip(&mut d, &cmd(&["HELLO", "3"])).await;
    assert!(
        direct_hello.starts_with("-ERR unknown command"),
        "{direct_hello}"
    );
    let upstream = format!("localhost:{}", redis.port);
    let tunnel = Tunnel::start(&config(&pki, &upstream, "min_idle = 1")).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["HELLO", "3"])).await, direct_hello);
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "k", "v"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$1\r\nv\r\n");
}

/// `WAIT` closes the shared session it runs on to new requests; requests already accepted there
/// are still sent and answered, never refused.
#[tokio::test]
async fn requests_accepted_by_a_session_that_a_wait_retires_are_answered() {
    let (_pki, _redis, tunnel) = shared_tunnel("min_idle = 4\nmultiplex = 1").await;
    let addr = tunnel.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut others = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        others.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(roundtrip(&mut c, &cmd(&["GET", "k"])).await, "$-1\r\n");
                n += 1;
            }
            n
        }));
    }
    for _ in 0..100 {
        let mut c = connect(addr).await;
        c.write_all(&[cmd(&["SET", "w", "1"]), cmd(&["WAIT", "0", "0"])].concat())
            .await
            .unwrap();
        assert_eq!(read_reply(&mut c).await, "+OK\r\n");
        assert_eq!(read_reply(&mut c).await, ":0\r\n");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for o in others {
        assert!(o.await.unwrap() > 0);
    }
}

/// A client that leaves while a big reply is on its way costs the others nothing.
#[tokio::test]
async fn a_client_gone_in_the_middle_of_a_big_reply_holds_nobody_back() {
    let (pki, redis, tunnel) = shared_tunnel("min_idle = 1\nmultiplex = 1").await;
    let mut d = direct(&redis, &pki, TOKEN).await;
    let big = "x".repeat(40 * 1024 * 1024);
    assert_eq!(
        roundtrip(&mut d, &cmd(&["SET", "big", &big])).await,
        "+OK\r\n"
    );
    drop(big);
    let mut other = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut other, &cmd(&["PING"])).await, "+PONG\r\n");
    let mut gone = connect(tunnel.addr()).await;
    socket2::SockRef::from(&gone)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    gone.write_all(&cmd(&["GET", "big"])).await.unwrap();
    let mut first = [0u8; 1];
    gone.read_exact(&mut first).await.unwrap(); // the reply has started
    drop(gone); // a reset, mid-reply
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..200 {
        let asked = std::time::Instant::now();
        assert_eq!(roundtrip(&mut other, &cmd(&["PING"])).await, "+PONG\r\n");
        worst = worst.max(asked.elapsed());
    }
    assert!(
        worst < std::time::Duration::from_millis(500),
        "stalled {worst:?}"
    );
}
