//! Upstream sessions shared by several clients for plain data commands (`pool.multiplex`).
//!
//! On a session of its own, every request costs the tunnel a TLS record, a socket write and a
//! socket read on the upstream side, and every connected client holds a TLS session. A shared
//! session carries the requests of all clients that arrived together in one record and one
//! write, and their replies in one read; an idle client holds no upstream state at all.
//!
//! Redis answers a connection's requests in order, so each shared session keeps a queue of
//! routes (which client, how many replies) that the writer appends to before it writes and the
//! reader pops as replies complete. A client uses one shared session at a time, so its own
//! replies stay in order; when that session is retired (failover, age, idle time, an error) the
//! client waits for the replies still owed to it before it moves to a fresh one. Which
//! commands may be shared, and what happens at the first one that may not, is the session's
//! business (`session::shared`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::dial::{DialError, Dialed};
use super::pool::{Epoch, Pool, WeakPool};
use crate::config::Role;
use crate::lock;
use crate::ops::metrics::{GaugeGuard, ListenerMetrics};
use crate::proto::scan::{Dir, Scanner};

/// Requests written to the server in one go, at most; more wait for the next write.
const BATCH_BYTES: usize = 64 * 1024;

/// Upstream read buffer: one whole TLS record.
const READ_BUF: usize = 16 * 1024;

/// How long a session on a node the pool has left may still answer what it owes; after that
/// (a node that vanished without a reset never answers) its clients get an error.
const NODE_GRACE: Duration = Duration::from_secs(5);

/// Reply bytes queued for one client that it has not taken yet. A client that stops reading
/// cannot hold the shared session back (its co-tenants' replies share the stream), so beyond
/// this it is disconnected, as Redis disconnects clients past `client-output-buffer-limit`.
pub const MAX_QUEUED: usize = 32 * 1024 * 1024;

/// Complete requests of one client, and where their replies go.
pub struct Batch {
    pub bytes: Bytes,
    pub replies: u32,
    pub to: Arc<Sink>,
}

/// Reply bytes for a client, and how many replies end in them.
pub struct Delivery {
    pub bytes: Bytes,
    pub replies: u32,
    /// The client can no longer be served: write `bytes`, then close.
    pub close: Option<Cut>,
}

/// Why a client is cut off (an enum rather than text: deliveries sit in a channel block of
/// 32 per client, so their size is idle memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    Behind = 0,
    Broken = 1,
}

impl Cut {
    pub fn why(self) -> &'static str {
        match self {
            Cut::Behind => "it fell too far behind reading its replies",
            Cut::Broken => "its upstream session broke in the middle of a reply",
        }
    }
}

/// A client's receiving end, shared with the readers of the sessions it used.
pub struct Sink {
    tx: mpsc::UnboundedSender<Delivery>,
    queued: AtomicUsize,
    /// 0, or the [`Cut`] (as 1 + its index) that ended this client.
    cut: AtomicU8,
    /// Wakes the client even while it is blocked writing to a socket its peer does not read.
    cut_signal: Notify,
}

impl Sink {
    pub fn new() -> (Arc<Sink>, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Sink {
            tx,
            queued: AtomicUsize::new(0),
            cut: AtomicU8::new(0),
            cut_signal: Notify::new(),
        };
        (Arc::new(sink), rx)
    }

    /// The client wrote `n` delivered bytes out.
    pub fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Resolves once the client has been cut off, with why.
    pub async fn cut_off(&self) -> Cut {
        loop {
            match self.cut.load(Ordering::Acquire) {
                1 => return Cut::Behind,
                2 => return Cut::Broken,
                _ => self.cut_signal.notified().await,
            }
        }
    }

    fn cut(&self, why: Cut, replies: u32) {
        self.cut.store(why as u8 + 1, Ordering::Release);
        self.cut_signal.notify_one();
        let _ = self.tx.send(Delivery {
            bytes: Bytes::new(),
            replies,
            close: Some(why),
        });
    }

    fn deliver(&self, bytes: Bytes, replies: u32) {
        if self.cut.load(Ordering::Relaxed) != 0 {
            return;
        }
        let queued = self.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if queued > MAX_QUEUED {
            // Cut wherever the stream is, maybe mid-reply, so nothing more can be written.
            return self.cut(Cut::Behind, replies);
        }
        let _ = self.tx.send(Delivery {
            bytes,
            replies,
            close: None,
        });
    }

    fn fail(&self, replies: u32, partial: bool, why: &str) {
        if partial {
            // A reply was cut off midway; nothing can follow it on this connection.
            return self.cut(Cut::Broken, replies);
        }
        let line = format!("-ERR ectunnel: {why}\r\n");
        let mut b = BytesMut::with_capacity(line.len() * replies as usize);
        for _ in 0..replies {
            b.extend_from_slice(line.as_bytes());
        }
        self.deliver(b.freeze(), replies);
    }
}

struct Route {
    to: Arc<Sink>,
    left: u32,
}

/// Replies owed, in the order the requests were written; `dead` once the session broke.
#[derive(Default)]
struct Routes {
    q: VecDeque<Route>,
    /// Part of the head's current reply has gone out: nothing can follow it but a close.
    partial: bool,
    dead: Option<String>,
}

impl Routes {
    /// Answers everything still owed with the error, and refuses what comes later.
    fn die(&mut self, why: String) {
        let mut partial = std::mem::take(&mut self.partial);
        for r in self.q.drain(..) {
            r.to.fail(r.left, partial, &why);
            partial = false;
        }
        self.dead.get_or_insert(why);
    }
}

/// One shared upstream session: a writer task and a reader task around one TLS stream.
pub struct Shared {
    tx: mpsc::UnboundedSender<Batch>,
    routes: Arc<Mutex<Routes>>,
    retired: Arc<AtomicBool>,
    peer: SocketAddr,
    created: Instant,
    /// Milliseconds after `created` of the last request.
    last_used: AtomicU64,
}

impl Shared {
    /// Queues a batch. Never waits: the writer takes whatever has queued up at its next write.
    pub fn send(&self, b: Batch) {
        self.last_used
            .store(millis(self.created.elapsed()), Ordering::Relaxed);
        if let Err(mpsc::error::SendError(b)) = self.tx.send(b) {
            b.to.fail(b.replies, false, "upstream session closed");
        }
    }

    /// No client should start using it (replies still owed keep coming).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn usable(&self, pool: &Pool) -> bool {
        let l = &pool.listener().pool;
        let age = self.created.elapsed();
        let idle = age.saturating_sub(Duration::from_millis(
            self.last_used.load(Ordering::Relaxed),
        ));
        let ok = !self.is_retired()
            && lock(&self.routes).dead.is_none()
            && age < l.max_lifetime
            && idle < l.health_interval
            && pool.current_node().is_none_or(|n| n == self.peer);
        if !ok {
            self.retired.store(true, Ordering::Relaxed);
        }
        ok
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A listener's shared sessions: `pool.multiplex` slots, each filled on first use and
/// refilled from the pool once its session is retired.
pub struct Mux {
    slots: Vec<tokio::sync::Mutex<Option<Arc<Shared>>>>,
    next: AtomicUsize,
}

impl Mux {
    pub fn new(n: usize) -> Mux {
        Mux {
            slots: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The slot a new client uses, round robin.
    pub fn assign(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len().max(1)
    }

    /// The slot's session, taking a fresh one from the pool when it has none usable. Clients
    /// of one slot wait on one checkout rather than each dialling.
    pub async fn get(&self, slot: usize, pool: &Pool) -> Result<Arc<Shared>, DialError> {
        let mut s = self.slots[slot % self.slots.len()].lock().await;
        if let Some(cur) = s.as_ref()
            && cur.usable(pool)
        {
            return Ok(cur.clone());
        }
        // Boxed: a dial's state is large, and this future is part of every client's task.
        let fresh = Arc::new(start(Box::pin(pool.checkout()).await?, pool));
        *s = Some(fresh.clone());
        Ok(fresh)
    }
}

fn start(up: Dialed, pool: &Pool) -> Shared {
    let (tx, rx) = mpsc::unbounded_channel();
    let routes = Arc::new(Mutex::new(Routes::default()));
    let retired = Arc::new(AtomicBool::new(false));
    let kill = CancellationToken::new();
    let (rd, wr) = tokio::io::split(up.stream);
    let l = pool.listener();
    tracing::debug!(listener = %l.name, peer = %up.peer, "shared session started");
    tokio::spawn(write(
        wr,
        rx,
        routes.clone(),
        kill.clone(),
        pool.metrics().clone(),
    ));
    tokio::spawn(read(Reader {
        rd,
        leftover: up.leftover,
        routes: routes.clone(),
        retired: retired.clone(),
        kill,
        pool: pool.downgrade(),
        epoch: pool.epoch(),
        watch_readonly: l.role == Role::Primary,
        metrics: pool.metrics().clone(),
        name: l.name.clone(),
        peer: up.peer,
        _open: up.open,
    }));
    // Idle from now on, not from the dial: it may have waited in the pool.
    let now = millis(up.created.elapsed());
    Shared {
        tx,
        routes,
        retired,
        peer: up.peer,
        created: up.created,
        last_used: AtomicU64::new(now),
    }
}

/// Writes what clients queued, as few TLS records and writes as it can. Routes are recorded
/// before the bytes go out, so the reader always finds the reply's owner.
async fn write(
    mut wr: WriteHalf<TlsStream<TcpStream>>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    routes: Arc<Mutex<Routes>>,
    kill: CancellationToken,
    m: ListenerMetrics,
) {
    let (mut out, mut batch) = (BytesMut::new(), Vec::new());
    while let Some(first) = tokio::select! {
        b = rx.recv() => b,
        _ = kill.cancelled() => None,
    } {
        // Let the other clients that became ready in this round queue their requests too, so
        // they share this write (and the server's read, and one reply read back).
        tokio::task::yield_now().await;
        let mut len = first.bytes.len();
        batch.push(first);
        while len < BATCH_BYTES
            && let Ok(b) = rx.try_recv()
        {
            len += b.bytes.len();
            batch.push(b);
        }
        {
            let mut r = lock(&routes);
            if let Some(why) = r.dead.clone() {
                for b in batch.drain(..) {
                    b.to.fail(b.replies, false, &why);
                }
                continue;
            }
            for b in &batch {
                match r.q.back_mut() {
                    Some(last) if Arc::ptr_eq(&last.to, &b.to) => last.left += b.replies,
                    _ => r.q.push_back(Route {
                        to: b.to.clone(),
                        left: b.replies,
                    }),
                }
            }
        }
        let data: &[u8] = if batch.len() == 1 {
            &batch[0].bytes
        } else {
            out.clear();
            for b in &batch {
                out.extend_from_slice(&b.bytes);
            }
            &out
        };
        let result = async {
            wr.write_all(data).await?;
            wr.flush().await
        };
        if let Err(e) = result.await {
            lock(&routes).die(format!("upstream write failed: {e}"));
            kill.cancel();
            break;
        }
        m.to_upstream.inc_by(len as u64);
        batch.clear();
        if out.capacity() > BATCH_BYTES * 2 {
            out = BytesMut::new();
        }
    }
    // Every handle is gone (or the session broke): close our side; the reader finishes what
    // is owed, then sees the server close. A batch that raced the break is answered.
    rx.close();
    while let Ok(b) = rx.try_recv() {
        b.to.fail(b.replies, false, "upstream session closed");
    }
    let _ = wr.shutdown().await;
}

struct Reader {
    rd: ReadHalf<TlsStream<TcpStream>>,
    leftover: BytesMut,
    routes: Arc<Mutex<Routes>>,
    retired: Arc<AtomicBool>,
    kill: CancellationToken,
    pool: WeakPool,
    epoch: watch::Receiver<Epoch>,
    watch_readonly: bool,
    metrics: ListenerMetrics,
    name: String,
    peer: SocketAddr,
    _open: Option<GaugeGuard>,
}

/// Reads replies and hands each run of them to its client, as slices of the read buffer.
async fn read(mut r: Reader) {
    let mut scan = Scanner::new(Dir::Reply);
    let mut buf = std::mem::take(&mut r.leftover);
    let mut watching = true;
    // Set once the pool has moved to another node: replies still owed get until then.
    let mut moved: Option<tokio::time::Instant> = None;
    let why = loop {
        if moved.is_some() && lock(&r.routes).q.is_empty() {
            break "the node changed (failover)".to_owned();
        }
        if buf.is_empty() {
            buf.reserve(READ_BUF);
            let n = tokio::select! {
                n = r.rd.read_buf(&mut buf) => n,
                _ = r.kill.cancelled() => break "upstream session failed".to_owned(),
                changed = r.epoch.changed(), if watching => {
                    let node = r.epoch.borrow_and_update().node;
                    if changed.is_err() {
                        watching = false;
                    } else if node.is_some_and(|n| n != r.peer) && moved.is_none() {
                        tracing::debug!(listener = %r.name, peer = %r.peer, "node demoted; retiring the shared session");
                        r.retired.store(true, Ordering::Relaxed);
                        moved = Some(tokio::time::Instant::now() + NODE_GRACE);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(moved.unwrap_or_else(tokio::time::Instant::now)), if moved.is_some() => {
                    break "the node changed (failover) before it answered".to_owned();
                }
            };
            match n {
                Ok(0) => break "the server closed the connection".to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break "the server closed the connection".to_owned();
                }
                Err(e) => break format!("upstream read failed: {e}"),
                Ok(_) => {}
            }
        }
        let data = buf.split().freeze();
        r.metrics.to_client.inc_by(data.len() as u64);
        let mut routes = lock(&r.routes);
        // `done` replies of the head route end in data[start..i].
        let (mut i, mut start, mut done, mut frame_start) = (0, 0, 0u32, 0);
        let mut readonly = false;
        let mut fault = None;
        while i < data.len() {
            let Some(head) = routes.q.front() else {
                fault = Some("the server sent a reply nobody asked for".to_owned());
                break;
            };
            let whole = scan.at_boundary();
            frame_start = i;
            let (n, complete) = match scan.feed(&data[i..]) {
                Ok(x) => x,
                Err(e) => {
                    fault = Some(format!("unreadable reply from the server: {e}"));
                    break;
                }
            };
            i += n;
            if !complete {
                break;
            }
            if r.watch_readonly && whole && data[frame_start..i].starts_with(b"-READONLY") {
                readonly = true;
            }
            done += 1;
            if done == head.left {
                let head = routes.q.pop_front().expect("head checked above");
                head.to.deliver(data.slice(start..i), done);
                routes.partial = false;
                (start, done) = (i, 0);
            }
        }
        // The head's replies completed so far and, unless the stream broke, the start of the
        // one still arriving.
        let upto = if fault.is_some() { frame_start } else { i };
        if start < upto
            && let Some(head) = routes.q.front_mut()
        {
            head.to.deliver(data.slice(start..upto), done);
            head.left -= done;
            routes.partial = fault.is_none() && !scan.at_boundary();
        }
        drop(routes);
        if let Some(f) = fault {
            break f;
        }
        if readonly && !r.retired.swap(true, Ordering::Relaxed) {
            tracing::info!(listener = %r.name, peer = %r.peer, "the node answered as a replica; retiring the shared session");
            if let Some(p) = r.pool.upgrade() {
                p.demoted();
            }
        }
    };
    let mut routes = lock(&r.routes);
    tracing::debug!(listener = %r.name, peer = %r.peer, owed = routes.q.len(), "shared session ended: {why}");
    routes.die(why);
    r.retired.store(true, Ordering::Relaxed);
    r.kill.cancel();
}
