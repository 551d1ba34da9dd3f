//! The clients: each runs until the deadline, reconnecting after a failure, and returns its
//! ledger for the final read-back.

use crate::ledger::{Ledger, Op, Request};
use crate::resp::{self, Conn, Plain, Reply};
use crate::stats::{Stats, io_kind, reply_kind};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep};

/// What every client needs: where the tunnel listens, what to count in, when to stop.
#[derive(Clone)]
pub struct Env {
    /// The listener with shared sessions.
    pub shared: SocketAddr,
    /// The listener where every client gets a session of its own (`multiplex = 0`).
    pub own: SocketAddr,
    pub stats: Arc<Stats>,
    pub deadline: Instant,
}

impl Env {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// A connection to `addr`, retried (and each failure counted) until the deadline.
    async fn connect(&self, addr: SocketAddr) -> Option<Plain> {
        while self.running() {
            match resp::plain(addr).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    self.stats
                        .error(format!("connect to the tunnel: {}", io_kind(&e)));
                    backoff().await;
                }
            }
        }
        None
    }

    /// Counts the failure that ended a connection and waits a little before the next.
    async fn failed(&self, e: io::Error) {
        self.stats.error(io_kind(&e));
        backoff().await;
    }
}

async fn backoff() {
    sleep(Duration::from_millis(100 + fastrand::u64(0..100))).await;
}

/// Sends `batch` as one write, then checks each reply in order. After an error reply it waits
/// a little, as a client retrying would: an upstream that is down answers at once.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    l: &mut Ledger,
    batch: Vec<Request>,
    stats: &Stats,
) -> io::Result<()> {
    let bytes: Vec<u8> = batch.iter().flat_map(|(b, _)| b.iter().copied()).collect();
    stats.sent.fetch_add(batch.len() as u64, Relaxed);
    let sent = conn.send(&bytes).await;
    let ops = batch.into_iter().map(|(_, op)| op);
    let (outcome, errors) = read_replies(conn, l, ops, sent, stats).await;
    if errors {
        backoff().await;
    }
    outcome
}

/// Checks a reply for each of `ops` (none once the connection failed); returns the connection's
/// outcome and whether any reply was an error.
async fn read_replies<S: AsyncRead + Unpin>(
    conn: &mut Conn<S>,
    l: &mut Ledger,
    ops: impl Iterator<Item = Op>,
    mut outcome: io::Result<()>,
    stats: &Stats,
) -> (io::Result<()>, bool) {
    let mut errors = false;
    for op in ops {
        if outcome.is_err() {
            l.abandon(op);
            continue;
        }
        match conn.read().await {
            Ok(reply) => errors |= l.check(op, reply, stats),
            Err(e) => {
                l.abandon(op);
                outcome = Err(e);
            }
        }
    }
    (outcome, errors)
}

/// SET, GET and INCR one at a time, on shared sessions.
pub async fn shared(env: Env, cid: String) -> Ledger {
    set_get_incr(env, cid, 100, 1).await
}

/// 99 requests per write (SET, GET, INCR over 64 keys), on shared sessions.
pub async fn pipeline(env: Env, cid: String) -> Ledger {
    set_get_incr(env, cid, 32, 99).await
}

/// SET, GET and INCR in turn over 64 keys of `value_len` bytes and one counter, on shared
/// sessions, `depth` requests per write.
async fn set_get_incr(env: Env, cid: String, value_len: usize, depth: usize) -> Ledger {
    let mut l = Ledger::new(cid);
    let keys: Vec<usize> = (0..64)
        .map(|i| l.key(0, &format!("k{i}"), value_len))
        .collect();
    let c = l.counter(0, "n");
    let mut n = 0usize;
    while let Some(mut conn) = env.connect(env.shared).await {
        let result = async {
            while env.running() {
                let mut batch = Vec::with_capacity(depth);
                while batch.len() < depth {
                    let k = keys[(n / 3) % keys.len()];
                    batch.push(match n % 3 {
                        0 => l.set(k),
                        1 => l.get(k),
                        _ => l.incr(c),
                    });
                    n += 1;
                }
                exchange(&mut conn, &mut l, batch, &env.stats).await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => break,
            Err(e) => env.failed(e).await,
        }
    }
    l
}

/// A new connection for every SET + GET (and every other time an INCR).
pub async fn per_request(env: Env, cid: String) -> Ledger {
    let mut l = Ledger::new(cid);
    let keys: Vec<usize> = (0..16).map(|i| l.key(0, &format!("k{i}"), 16)).collect();
    let c = l.counter(0, "n");
    let mut i = 0;
    while let Some(mut conn) = env.connect(env.shared).await {
        let k = keys[i % keys.len()];
        i += 1;
        let result = async {
            set_then_get(&mut conn, &mut l, k, &env.stats).await?;
            if i % 2 == 0 {
                let r = l.incr(c);
                exchange(&mut conn, &mut l, vec![r], &env.stats).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            env.failed(e).await;
        }
        if !env.running() {
            break;
        }
    }
    l
}

/// A client with connection state: a SET and GET on shared sessions, then `SELECT 2` (which
/// gives it a session of its own), then `WATCH` / `MULTI` / `EXEC` transactions; it leaves
/// after 100 of them (its session goes back to the pool) and comes again.
pub async fn own(env: Env, cid: String, addr: SocketAddr) -> Ledger {
    let mut l = Ledger::new(cid);
    let k0 = l.key(0, "k", 64);
    let w = l.key(2, "w", 64);
    let c = l.counter(2, "n");
    while let Some(mut conn) = env.connect(addr).await {
        let result = async {
            set_then_get(&mut conn, &mut l, k0, &env.stats).await?;
            let select = (resp::command(&["SELECT", "2"]), Op::Status("OK"));
            exchange(&mut conn, &mut l, vec![select], &env.stats).await?;
            for _ in 0..100 {
                if !env.running() {
                    break;
                }
                transaction(&mut conn, &mut l, w, c, &env.stats).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            env.failed(e).await;
        }
        if !env.running() {
            break;
        }
    }
    l
}

/// A SET of key `k`, then a GET of it, one at a time.
async fn set_then_get<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    l: &mut Ledger,
    k: usize,
    stats: &Stats,
) -> io::Result<()> {
    let r = l.set(k);
    exchange(conn, l, vec![r], stats).await?;
    let r = l.get(k);
    exchange(conn, l, vec![r], stats).await
}

async fn transaction(
    conn: &mut Plain,
    l: &mut Ledger,
    w: usize,
    c: usize,
    stats: &Stats,
) -> io::Result<()> {
    let watch = (resp::command(&["WATCH", &l.keys[w].name]), Op::Status("OK"));
    let get = l.get(w);
    exchange(conn, l, vec![watch, get], stats).await?;
    let (set, set_op) = l.set(w);
    let (incr, incr_op) = l.incr(c);
    let batch = vec![
        (resp::command(&["MULTI"]), Op::Status("OK")),
        (set, Op::Status("QUEUED")),
        (incr, Op::Status("QUEUED")),
        (resp::command(&["EXEC"]), Op::Exec(vec![set_op, incr_op])),
    ];
    exchange(conn, l, batch, stats).await
}

/// Writes 16 SETs of 48 KiB values and 16 GETs of them at once, and reads the replies slowly
/// (4 KiB every 5 ms), while the others are served.
pub async fn slow_reader(env: Env, cid: String) -> Ledger {
    let mut l = Ledger::new(cid);
    let keys: Vec<usize> = (0..16)
        .map(|i| l.key(0, &format!("big{i}"), 48 * 1024))
        .collect();
    while let Some(conn) = env.connect(env.shared).await {
        let (rd, mut wr) = conn.into_inner().into_split();
        let (mut near, far) = tokio::io::duplex(8 * 1024);
        let drip = tokio::spawn(async move {
            let mut rd = rd;
            let mut buf = vec![0; 4096];
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                if near.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sleep(Duration::from_millis(5)).await;
            }
        });
        let mut replies = Conn::new(far);
        let result = async {
            while env.running() {
                let mut batch: Vec<Request> = keys.iter().map(|&k| l.set(k)).collect();
                batch.extend(keys.iter().map(|&k| l.get(k)));
                let bytes: Vec<u8> = batch.iter().flat_map(|(b, _)| b.iter().copied()).collect();
                env.stats.sent.fetch_add(batch.len() as u64, Relaxed);
                let writer = async { wr.write_all(&bytes).await };
                let ops = batch.into_iter().map(|(_, op)| op);
                let reader = read_replies(&mut replies, &mut l, ops, Ok(()), &env.stats);
                let (w, (r, errors)) = tokio::join!(writer, reader);
                r?;
                w?;
                if errors {
                    backoff().await;
                }
            }
            Ok::<(), io::Error>(())
        }
        .await;
        drip.abort();
        if let Err(e) = result {
            env.failed(e).await;
        }
        if !env.running() {
            break;
        }
    }
    l
}

/// The subscriber's current subscription (a channel per connection, so a publisher's reply
/// says whether *this* subscription was there to receive), and every message published so far:
/// to which subscription, and to how many receivers the server says it went.
#[derive(Default)]
pub struct PubSub {
    current: AtomicU64,
    log: Mutex<Vec<(u64, i64)>>,
}

impl PubSub {
    fn log(&self) -> std::sync::MutexGuard<'_, Vec<(u64, i64)>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes numbered messages, one at a time, to the current subscription's channel.
pub async fn publisher(env: Env, ps: Arc<PubSub>) {
    while let Some(mut conn) = env.connect(env.shared).await {
        let result = async {
            while env.running() {
                let generation = ps.current.load(Relaxed);
                let seq = {
                    let mut log = ps.log();
                    log.push((generation, -1));
                    log.len()
                };
                let channel = format!("soak:ch:{generation}");
                env.stats.sent.fetch_add(1, Relaxed);
                match conn.call(&["PUBLISH", &channel, &seq.to_string()]).await? {
                    Reply::Int(n) => {
                        ps.log()[seq - 1].1 = n;
                        env.stats.served();
                        if n > 0 {
                            env.stats.published.fetch_add(1, Relaxed);
                        }
                    }
                    Reply::Error(e) => {
                        env.stats.error(reply_kind(&e));
                        backoff().await;
                    }
                    other => env.stats.wrong(format!("PUBLISH: {}", other.brief())),
                }
                sleep(Duration::from_millis(5)).await;
            }
            Ok::<(), io::Error>(())
        }
        .await;
        match result {
            Ok(()) => break,
            Err(e) => env.failed(e).await,
        }
    }
}

/// Subscribes (a session of its own) and checks that the messages arrive in order, and that
/// none the server said it delivered to this subscription is missing while it lasts.
pub async fn subscriber(env: Env, ps: Arc<PubSub>) {
    let mut generation = 0;
    while let Some(mut conn) = env.connect(env.shared).await {
        generation += 1;
        let result = tokio::select! {
            r = subscription(&env, &ps, &mut conn, generation) => r,
            _ = tokio::time::sleep_until(env.deadline) => Ok(()),
        };
        match result {
            Err(e) => env.failed(e).await,
            Ok(()) => backoff().await,
        }
        if !env.running() {
            break;
        }
    }
}

async fn subscription(env: &Env, ps: &PubSub, conn: &mut Plain, generation: u64) -> io::Result<()> {
    let channel = format!("soak:ch:{generation}");
    env.stats.sent.fetch_add(1, Relaxed);
    match conn.call(&["SUBSCRIBE", &channel]).await? {
        Reply::Array(Some(a)) if a.len() == 3 => env.stats.served(),
        Reply::Error(e) => {
            env.stats.error(reply_kind(&e));
            return Ok(());
        }
        other => env.stats.wrong(format!("SUBSCRIBE: {}", other.brief())),
    }
    // Every message for this subscription is numbered after `last`: the publisher reads the
    // subscription before it numbers a message.
    let mut last = ps.log().len();
    ps.current.store(generation, Relaxed);
    loop {
        let seq = match conn.read().await? {
            Reply::Array(Some(a))
                if a.len() == 3 && a[1] == Reply::Bulk(Some(channel.clone().into_bytes())) =>
            {
                match &a[2] {
                    Reply::Bulk(Some(v)) => {
                        String::from_utf8_lossy(v).parse::<usize>().unwrap_or(0)
                    }
                    _ => 0,
                }
            }
            Reply::Error(e) => {
                env.stats.error(reply_kind(&e));
                return Ok(());
            }
            other => {
                env.stats.wrong(format!("subscriber got {}", other.brief()));
                continue;
            }
        };
        env.stats.received.fetch_add(1, Relaxed);
        if seq <= last {
            env.stats.wrong(format!("message {seq} after {last}"));
            continue;
        }
        let log = ps.log();
        for (s, &(g, n)) in log.iter().enumerate().take(seq - 1).skip(last) {
            if g == generation && n > 0 {
                env.stats.missed(format!(
                    "message {} delivered to {n} but not received",
                    s + 1
                ));
            }
        }
        drop(log);
        last = seq;
    }
}
