//! Upstream sessions shared by several clients for plain data commands (`pool.multiplex`).
//!
//! On a session of its own, every request costs the tunnel a TLS record, a socket write and a
//! socket read on the upstream side, and every connected client holds a TLS session. A shared
//! session carries the requests of all clients that arrived together in one record and one
//! write, and their replies in one read; an idle client holds no upstream state at all.
//!
//! Redis answers a connection's requests in order, so each shared session keeps a queue of
//! routes (which receiver, how many replies) that its writer appends to before it writes and its
//! reader pops as replies complete, handing each run of replies to its [`Sink`] as slices of the
//! read buffer. What a receiver is (a client) is not this module's business: it sends
//! [`Batch`]es and takes [`Delivery`]s.
//!
//! A session is retired (takes no new batch, finishes what it owes, then closes) when the node
//! authority says its node moved, when it has been idle for `health_interval` or lived for
//! `max_lifetime` (busy or not), when a batch asked to be its last (`WAIT`), or while it waits on a receiver
//! that does not take its replies. It is dead, and its receivers are told why, when the server
//! closes it, sends nothing for `shared_reply_timeout` while a reply is owed, or, after its node
//! moved, has not answered within [`NODE_GRACE`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::conn::{self, At, Conn};
use super::dial::{DialError, Stage};
use super::node::{Node, Truth};
use super::pool::Pool;
use crate::config::PoolConfig;
use crate::limits::{
    BATCH_BYTES, MAX_REDIRECT, NODE_GRACE, READ_BUF, REPLY_HEAD as ERROR_HEAD, SHARED_QUEUE_HARD,
    SHARED_STALL,
};
use crate::lock;
use crate::ops::metrics::ListenerMetrics;
use crate::proto;
use crate::proto::RespVersion;
use crate::proto::rewrite::{self, Rewrite};
use crate::proto::scan::{Dir, Scanner};

/// Complete requests of one receiver, and where their replies go.
pub struct Batch {
    pub bytes: Bytes,
    pub replies: u32,
    pub to: Arc<Sink>,
    /// Its replies must not be delivered together with the receiver's earlier ones (something
    /// of the receiver's own goes between them).
    pub apart: bool,
}

/// Reply bytes for a receiver, and how many replies end in them.
pub struct Delivery {
    pub bytes: Bytes,
    pub replies: u32,
    /// The receiver can no longer be served: write `bytes`, then close.
    pub close: Option<Cut>,
}

/// Why a receiver is cut off (an enum rather than text: deliveries sit in a channel block of
/// 32 per receiver, so their size is idle memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    Behind = 0,
    Broken = 1,
}

impl Cut {
    pub fn why(self) -> &'static str {
        match self {
            Cut::Behind => "it stopped reading replies the others' were queued behind",
            Cut::Broken => "its upstream session broke in the middle of a reply",
        }
    }
}

/// [`Sink::cut`] value of a receiver that went away by itself.
const LEFT: u8 = u8::MAX;

/// A receiver's end: what the sessions it used hand it, and what it has taken.
pub struct Sink {
    tx: mpsc::UnboundedSender<Delivery>,
    /// Bytes delivered and not yet taken (written out by the receiver).
    queued: AtomicUsize,
    /// Replies delivered (answered or failed) so far.
    received: AtomicU64,
    /// 0, the [`Cut`] (as 1 + its index) that ended this receiver, or [`LEFT`].
    cut: AtomicU8,
    /// Wakes whoever waits on this receiver: replies arrived, bytes were taken, it was cut.
    changed: Notify,
}

impl Sink {
    pub fn new() -> (Arc<Sink>, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Sink {
            tx,
            queued: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            cut: AtomicU8::new(0),
            changed: Notify::new(),
        };
        (Arc::new(sink), rx)
    }

    /// The receiver wrote `n` delivered bytes out.
    pub fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Bytes delivered and not yet taken.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Replies delivered or failed so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Why the receiver was cut off, if it was.
    pub fn cut_reason(&self) -> Option<Cut> {
        match self.cut.load(Ordering::Acquire) {
            1 => Some(Cut::Behind),
            2 => Some(Cut::Broken),
            _ => None,
        }
    }

    /// The receiver went away: what is still owed to it is read and dropped, never queued.
    pub fn close(&self) {
        let _ = self
            .cut
            .compare_exchange(0, LEFT, Ordering::AcqRel, Ordering::Acquire);
        self.changed.notify_waiters();
    }

    /// Whether nothing more is delivered to it (cut off, or gone).
    fn ended(&self) -> bool {
        self.cut.load(Ordering::Acquire) != 0
    }

    /// Wakes whoever waits on this receiver (its own replies went out, say).
    pub fn nudge(&self) {
        self.changed.notify_waiters();
    }

    /// Resolves once `ready` holds, re-checked whenever this receiver's state changes.
    pub async fn wait_until(&self, mut ready: impl FnMut(&Sink) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if ready(self) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once the receiver has been cut off, with why.
    pub async fn cut_off(&self) -> Cut {
        let mut why = None;
        self.wait_until(|s| {
            why = s.cut_reason();
            why.is_some()
        })
        .await;
        why.unwrap_or(Cut::Broken)
    }

    /// Answers `replies` requests that could not be sent with `-ERR ectunnel: <why>`, in their
    /// place among the replies.
    pub fn refuse(&self, replies: u32, why: &str) {
        self.fail(replies, false, why);
    }

    fn cut(&self, why: Cut, replies: u32) {
        self.cut.store(why as u8 + 1, Ordering::Release);
        self.count(replies);
        let _ = self.tx.send(Delivery {
            bytes: Bytes::new(),
            replies,
            close: Some(why),
        });
    }

    fn count(&self, replies: u32) {
        self.received
            .fetch_add(u64::from(replies), Ordering::Release);
        self.changed.notify_waiters();
    }

    fn deliver(&self, bytes: Bytes, replies: u32) {
        if self.ended() {
            return self.count(replies);
        }
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = self.tx.send(Delivery {
            bytes,
            replies,
            close: None,
        });
        self.count(replies);
    }

    fn fail(&self, replies: u32, partial: bool, why: &str) {
        if partial {
            // A reply was cut off midway; nothing can follow it on this connection.
            return self.cut(Cut::Broken, replies);
        }
        let line = format!("-ERR ectunnel: {why}\r\n");
        self.deliver(Bytes::from(line.repeat(replies as usize)), replies);
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
    /// When the queue last went from empty to owing: the reply deadline counts from then or
    /// from the last byte read, whichever is later.
    owing_since: Option<tokio::time::Instant>,
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

/// Whether new batches may come in; closed when the session is retired.
struct Gate {
    open: bool,
    tx: mpsc::UnboundedSender<Batch>,
}

/// Batches let through the gate that the writer has not routed yet: a retired session closes
/// only once it owes nothing *and* has none of these, or it would refuse what it accepted.
type Accepted = Arc<AtomicUsize>;

/// One shared upstream session: a writer task and a reader task around one TLS stream.
pub struct Shared {
    gate: Arc<Mutex<Gate>>,
    accepted: Accepted,
    /// Wakes the reader (which closes a retired session once nothing is owed).
    wake: Arc<Notify>,
    at: At,
    created: Instant,
    /// Milliseconds after `created` of the last batch.
    last_used: Arc<AtomicU64>,
}

impl Shared {
    /// Queues a batch unless the session is retired (the batch comes back: take a fresh
    /// session). Never waits: the writer takes whatever has queued up at its next write. With
    /// `last`, nothing may follow it (a `WAIT` blocks the connection until it returns).
    pub fn send(&self, b: Batch, last: bool) -> Result<(), Batch> {
        let mut gate = lock(&self.gate);
        if !gate.open {
            return Err(b);
        }
        gate.open = !last;
        self.last_used
            .store(millis(self.created.elapsed()), Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::AcqRel);
        gate.tx.send(b).map_err(|mpsc::error::SendError(b)| {
            self.accepted.fetch_sub(1, Ordering::AcqRel);
            b
        })
    }

    /// Whether new batches may go to it.
    pub fn usable(&self) -> bool {
        lock(&self.gate).open
    }

    /// Takes no new batch from now on; closes once it has answered what it owes.
    pub fn retire(&self) {
        lock(&self.gate).open = false;
        self.wake.notify_one();
    }

    pub fn at(&self) -> &At {
        &self.at
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One slot: its session, or the dial every client of the slot waits on.
enum Slot {
    Empty,
    Dialing(watch::Receiver<Option<Result<Arc<Shared>, DialError>>>),
    Ready(Arc<Shared>),
}

type Slots = Vec<Arc<Mutex<Slot>>>;

/// A listener's shared sessions: `pool.multiplex` slots per protocol (clients that said
/// `HELLO 3` share RESP3 sessions), each filled on first use
/// and refilled from the pool once its session is retired.
pub struct Mux {
    resp2: Slots,
    resp3: Slots,
    next: AtomicUsize,
    settings: PoolConfig,
    metrics: ListenerMetrics,
    name: String,
    cluster: Option<Cluster>,
}

/// In front of a cluster: where redirects send clients, and whether every session rewrites
/// (`cluster = "on"`) or those whose server said cluster mode.
#[derive(Clone)]
pub struct Cluster {
    pub map: Arc<dyn rewrite::Map + Send + Sync>,
    pub always: bool,
}

impl Cluster {
    /// Whether a session at `at` rewrites: `cluster = "on"`, or its server said cluster mode.
    fn rewrite(&self, at: &At) -> Option<Rewrite> {
        if !(self.always || at.cluster) {
            return None;
        }
        self.map.in_use();
        Some(Rewrite {
            map: self.map.clone(),
            here: at.peer.ip().to_string(),
        })
    }
}

impl Mux {
    pub fn new(
        settings: PoolConfig,
        metrics: ListenerMetrics,
        name: String,
        cluster: Option<Cluster>,
    ) -> Mux {
        let slots = || {
            (0..settings.multiplex)
                .map(|_| Arc::new(Mutex::new(Slot::Empty)))
                .collect()
        };
        Mux {
            resp2: slots(),
            resp3: slots(),
            next: AtomicUsize::new(0),
            settings,
            metrics,
            name,
            cluster,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.resp2.is_empty()
    }

    /// How a session at `at` of this listener rewrites node addresses, if it does: shared
    /// sessions and a client's own alike.
    pub fn rewrite(&self, at: &At) -> Option<Rewrite> {
        self.cluster.as_ref()?.rewrite(at)
    }

    /// Retires every session (a reload replaced the listener): each takes no new batch and
    /// closes once it has answered what it owes.
    pub fn retire_all(&self) {
        for cell in self.resp2.iter().chain(&self.resp3) {
            if let Slot::Ready(s) = &*lock(cell) {
                s.retire();
            }
        }
    }

    /// The slot a new client uses, round robin.
    pub fn assign(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.resp2.len().max(1)
    }

    /// The slot's session for `proto`, taking a fresh one from the pool when it has none usable.
    /// One dial at a time per slot, outside its lock; every client waiting on the slot gets that
    /// dial's outcome.
    pub async fn get(
        &self,
        slot: usize,
        proto: RespVersion,
        pool: &Pool,
        node: &Node,
    ) -> Result<Arc<Shared>, DialError> {
        let slots = match proto {
            RespVersion::V2 => &self.resp2,
            RespVersion::V3 => &self.resp3,
        };
        let cell = slots[slot % slots.len()].clone();
        let mut outcome = {
            let mut s = lock(&cell);
            match &*s {
                Slot::Ready(sh) if sh.usable() && node.truth().holds(&sh.at) => {
                    return Ok(sh.clone());
                }
                Slot::Dialing(rx) => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    *s = Slot::Dialing(rx.clone());
                    let start = self.starter(proto, pool, node);
                    let cell = cell.clone();
                    tokio::spawn(async move {
                        let result = start.run().await;
                        *lock(&cell) = match &result {
                            Ok(sh) => Slot::Ready(sh.clone()),
                            Err(_) => Slot::Empty,
                        };
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| closed(&self.name))?
            .clone();
        result.unwrap_or_else(|| Err(closed(&self.name)))
    }

    fn starter(&self, proto: RespVersion, pool: &Pool, node: &Node) -> Starter {
        Starter {
            proto,
            pool: pool.clone(),
            node: node.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            name: self.name.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

fn closed(name: &str) -> DialError {
    DialError {
        stage: Stage::Connect,
        upstream: name.to_owned(),
        reason: "the listener is shutting down".into(),
    }
}

/// What starting a shared session needs, owned, so the dial runs in a task of its own and is
/// not cancelled with the client that happened to ask first.
struct Starter {
    proto: RespVersion,
    pool: Pool,
    node: Node,
    settings: PoolConfig,
    metrics: ListenerMetrics,
    name: String,
    cluster: Option<Cluster>,
}

impl Starter {
    async fn run(self) -> Result<Arc<Shared>, DialError> {
        // Boxed: a dial's state is large.
        let mut up = Box::pin(self.pool.checkout()).await?;
        if self.proto == RespVersion::V3 {
            hello3(&mut up).await?;
        }
        Ok(Arc::new(self.start(up)))
    }

    fn start(self, up: Conn) -> Shared {
        let (tx, rx) = mpsc::unbounded_channel();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let accepted: Accepted = Arc::new(AtomicUsize::new(0));
        let routed = Arc::new(Notify::new());
        let gate = Arc::new(Mutex::new(Gate { open: true, tx }));
        let kill = CancellationToken::new();
        // Idle from now on, not from the dial: it may have waited in the pool.
        let last_used = Arc::new(AtomicU64::new(millis(up.created.elapsed())));
        let (rd, wr) = tokio::io::split(up.stream);
        tracing::debug!(listener = %self.name, peer = %up.at.peer, proto = ?self.proto, "shared session started");
        let m = self.metrics.clone();
        let sleep = Box::pin(tokio::time::sleep(self.settings.max_lifetime));
        let writer = Writer {
            routes: routes.clone(),
            accepted: accepted.clone(),
            routed: routed.clone(),
            kill: kill.clone(),
            m,
        };
        tokio::spawn(writer.run(wr, rx));
        tokio::spawn(
            Reader {
                rd,
                buf: up.leftover,
                routes: routes.clone(),
                accepted: accepted.clone(),
                routed: routed.clone(),
                gate: gate.clone(),
                kill,
                truth: self.node.watch(),
                node: self.node,
                at: up.at,
                created: up.created,
                last_used: last_used.clone(),
                settings: self.settings,
                metrics: self.metrics,
                name: self.name,
                sleep,
                rewrite: self.cluster.and_then(|c| c.rewrite(&up.at)),
                carried: 0,
                _open: up.open,
            }
            .run(),
        );
        Shared {
            gate,
            accepted,
            wake: routed,
            at: up.at,
            created: up.created,
            last_used,
        }
    }
}

/// Turns a pooled (RESP2) session into a RESP3 one.
async fn hello3(up: &mut Conn) -> Result<(), DialError> {
    let fail = |reason: String| DialError {
        stage: Stage::Auth,
        upstream: up.at.peer.to_string(),
        reason,
    };
    let mut cmd = BytesMut::new();
    proto::encode_command(&mut cmd, &[b"HELLO", b"3"]);
    let exchange = async {
        up.stream.write_all(&cmd).await?;
        up.stream.flush().await?;
        conn::read_raw(&mut up.stream, &mut up.leftover)
            .await
            .map_err(std::io::Error::other)
    };
    let reply = timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| fail("HELLO 3 timed out".into()))?
        .map_err(|e| fail(format!("HELLO 3: {e}")))?;
    if reply.first() != Some(&b'%') {
        let text = String::from_utf8_lossy(&reply[..reply.len().min(120)]).into_owned();
        return Err(fail(format!(
            "HELLO 3 refused: {}",
            proto::printable(text.trim())
        )));
    }
    Ok(())
}

/// What the writer task shares with the rest of its session.
struct Writer {
    routes: Arc<Mutex<Routes>>,
    accepted: Accepted,
    routed: Arc<Notify>,
    kill: CancellationToken,
    m: ListenerMetrics,
}

impl Writer {
    /// Writes what clients queued, as few TLS records and writes as it can. Routes are recorded
    /// before the bytes go out, so the reader always finds the reply's owner.
    async fn run(
        self,
        mut wr: WriteHalf<TlsStream<TcpStream>>,
        mut rx: mpsc::UnboundedReceiver<Batch>,
    ) {
        let (mut out, mut batch) = (BytesMut::new(), Vec::new());
        while let Some(first) = tokio::select! {
            b = rx.recv() => b,
            _ = self.kill.cancelled() => None,
        } {
            // Let the other clients that became ready in this round queue their requests too,
            // so they share this write (and the server's read, and one reply read back).
            tokio::task::yield_now().await;
            let mut len = first.bytes.len();
            batch.push(first);
            while len < BATCH_BYTES
                && let Ok(b) = rx.try_recv()
            {
                len += b.bytes.len();
                batch.push(b);
            }
            match self.route(&mut batch) {
                None => continue,
                Some(true) => self.routed.notify_one(), // the reader's reply deadline starts now
                Some(false) => {}
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
            // A server that stops reading fills the socket; the reader's deadline then ends the
            // session, and this write with it.
            let result = tokio::select! {
                r = async {
                    wr.write_all(data).await?;
                    wr.flush().await
                } => r,
                _ = self.kill.cancelled() => break,
            };
            if let Err(e) = result {
                lock(&self.routes).die(format!("upstream write failed: {e}"));
                self.kill.cancel();
                break;
            }
            self.m.to_upstream.inc_by(len as u64);
            batch.clear();
            if out.capacity() > BATCH_BYTES * 2 {
                out = BytesMut::new();
            }
        }
        // The session is closing: a batch that raced it is answered.
        rx.close();
        while let Ok(b) = rx.try_recv() {
            b.to.fail(b.replies, false, "upstream session closed");
        }
        let _ = wr.shutdown().await;
    }

    /// Records where the batch's replies go: whether the session starts owing with it, or
    /// `None` (and every batch answered) once the session is dead.
    fn route(&self, batch: &mut Vec<Batch>) -> Option<bool> {
        let mut r = lock(&self.routes);
        // Under the routes lock, so the reader never sees a batch in neither place.
        self.accepted.fetch_sub(batch.len(), Ordering::AcqRel);
        if let Some(why) = r.dead.clone() {
            for b in batch.drain(..) {
                b.to.fail(b.replies, false, &why);
            }
            return None;
        }
        let starts = r.q.is_empty();
        if starts {
            r.owing_since = Some(tokio::time::Instant::now());
        }
        for b in batch.iter().filter(|b| b.replies > 0) {
            match r.q.back_mut() {
                Some(last) if Arc::ptr_eq(&last.to, &b.to) && !b.apart => last.left += b.replies,
                _ => r.q.push_back(Route {
                    to: b.to.clone(),
                    left: b.replies,
                }),
            }
        }
        Some(starts)
    }
}

/// What [`Reader::redirect_at`] found.
enum Held {
    No,
    /// A redirect whose whole line (this long) has been read.
    Line(usize),
    /// Maybe a redirect, whose line has not been read whole.
    Incomplete,
}

/// The start of the reply being read when it is an error, kept to recognise a demotion
/// (`-READONLY`, `-UNBLOCKED … master -> replica`) however the reply is split across reads.
#[derive(Default)]
struct ErrorHead {
    on: bool,
    bytes: Vec<u8>,
}

impl ErrorHead {
    fn start(&mut self, first: u8) {
        self.on = first == b'-';
        self.bytes.clear();
    }

    fn extend(&mut self, part: &[u8]) {
        if self.on {
            let room = ERROR_HEAD.saturating_sub(self.bytes.len()).min(part.len());
            self.bytes.extend_from_slice(&part[..room]);
        }
    }

    fn demotion(&self) -> bool {
        self.on && proto::engine::demotion(&self.bytes)
    }
}

struct Reader {
    rd: ReadHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
    routes: Arc<Mutex<Routes>>,
    accepted: Accepted,
    /// The writer routed a batch to an empty queue (the reply deadline starts), or the session
    /// was retired from outside.
    routed: Arc<Notify>,
    gate: Arc<Mutex<Gate>>,
    kill: CancellationToken,
    truth: watch::Receiver<Truth>,
    node: Node,
    at: At,
    created: Instant,
    last_used: Arc<AtomicU64>,
    settings: PoolConfig,
    metrics: ListenerMetrics,
    name: String,
    /// The reader's one timer, for every deadline in [`Reader::deadline`].
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// In cluster mode: where `-MOVED` / `-ASK` send clients instead.
    rewrite: Option<Rewrite>,
    /// Bytes at the start of `buf` already read: an error reply held back until its line is
    /// whole, to be rewritten in one piece (more must be read before it can be handed out).
    carried: usize,
    _open: Option<super::conn::Open>,
}

/// What the reader waits for next.
enum Event {
    Read(std::io::Result<usize>),
    Killed,
    Moved,
    Deadline,
}

impl Reader {
    fn retire(&self) {
        lock(&self.gate).open = false;
    }

    /// Nothing owed, and nothing accepted that is still on its way to the server.
    fn done(&self) -> bool {
        let r = lock(&self.routes);
        r.q.is_empty() && self.accepted.load(Ordering::Acquire) == 0
    }

    fn owing(&self) -> Option<tokio::time::Instant> {
        let r = lock(&self.routes);
        (!r.q.is_empty()).then(|| r.owing_since.unwrap_or_else(tokio::time::Instant::now))
    }

    /// When the session must act even if nothing is read: the reply deadline while something
    /// is owed (or the grace after a move), else the end of its idle time or life.
    fn deadline(
        &self,
        last_read: tokio::time::Instant,
        moved: Option<tokio::time::Instant>,
    ) -> tokio::time::Instant {
        if let Some(since) = self.owing() {
            let d = since.max(last_read) + self.settings.shared_reply_timeout;
            return moved.map_or(d, |m| m.min(d));
        }
        let used = Duration::from_millis(self.last_used.load(Ordering::Relaxed));
        let idle_end = self.created + used + self.settings.health_interval;
        let life_end = self.created + self.settings.max_lifetime;
        idle_end.min(life_end).into()
    }

    async fn next(&mut self, watching: bool, at: tokio::time::Instant) -> Event {
        if self.buf.capacity() - self.buf.len() < READ_BUF {
            self.buf.reserve(READ_BUF);
        }
        // The timer is moved only to an earlier deadline: a later one is found when it fires
        // (see `expired`), so a session that keeps reading does not re-arm it at every read.
        if at < self.sleep.deadline() || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(at);
        }
        tokio::select! {
            n = self.rd.read_buf(&mut self.buf) => Event::Read(n),
            _ = self.kill.cancelled() => Event::Killed,
            changed = self.truth.changed(), if watching => {
                if changed.is_err() || !self.truth.borrow_and_update().holds(&self.at) {
                    Event::Moved
                } else {
                    Event::Deadline // nothing for this session; re-evaluate
                }
            }
            _ = &mut self.sleep => Event::Deadline,
            _ = self.routed.notified() => Event::Deadline,
        }
    }

    /// Reads replies and hands each run of them to its receiver, as slices of the read buffer.
    async fn run(mut self) {
        let mut scan = Scanner::new(Dir::Reply);
        let mut head = ErrorHead::default();
        let mut watching = true;
        let mut last_read = tokio::time::Instant::now();
        // Set once the node moved: replies still owed get until then.
        let mut moved: Option<tokio::time::Instant> = None;
        // A session kept busy is retired at the end of its life too (with IAM, `max_lifetime`
        // is capped below the server's 12-hour cut), not only once it is idle.
        let life_end = tokio::time::Instant::from_std(self.created + self.settings.max_lifetime);
        let why = loop {
            let retired = !lock(&self.gate).open;
            if retired && self.done() {
                break "retired".to_owned();
            }
            if self.buf.len() == self.carried {
                let at = self.deadline(last_read, moved);
                match self.next(watching, at).await {
                    Event::Read(Ok(0)) => break "the server closed the connection".to_owned(),
                    Event::Read(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        break "the server closed the connection".to_owned();
                    }
                    Event::Read(Err(e)) => break format!("upstream read failed: {e}"),
                    Event::Read(Ok(_)) => {
                        last_read = tokio::time::Instant::now();
                        if last_read >= life_end {
                            self.retire();
                        }
                    }
                    Event::Killed => break "upstream session failed".to_owned(),
                    Event::Moved => {
                        watching = false;
                        tracing::debug!(listener = %self.name, peer = %self.at.peer, "node moved; retiring the shared session");
                        self.retire();
                        moved = Some(tokio::time::Instant::now() + NODE_GRACE);
                        continue;
                    }
                    Event::Deadline => match self.expired(last_read, moved) {
                        Some(why) => break why,
                        None => continue,
                    },
                }
            }
            if let Err(f) = self.hand_out(&mut scan, &mut head).await {
                break f;
            }
        };
        let mut routes = lock(&self.routes);
        tracing::debug!(listener = %self.name, peer = %self.at.peer, owed = routes.q.len(), "shared session ended: {why}");
        routes.die(why);
        drop(routes);
        self.retire();
        self.kill.cancel();
    }

    /// Woken without a read: what ends the session now, if anything does.
    fn expired(
        &self,
        last_read: tokio::time::Instant,
        moved: Option<tokio::time::Instant>,
    ) -> Option<String> {
        let now = tokio::time::Instant::now();
        if now < self.deadline(last_read, moved) {
            return None; // woken for something else, or the deadline moved on
        }
        if self.owing().is_some() {
            return Some(match moved {
                Some(m) if now >= m => "the node changed (failover) before it answered".to_owned(),
                _ => format!(
                    "no reply from the server for {} (shared_reply_timeout)",
                    humantime::format_duration(self.settings.shared_reply_timeout)
                ),
            });
        }
        self.retire(); // idle or old: close now, nothing is owed
        None
    }

    /// Splits what was read into replies and delivers each run to its receiver. Err ends the
    /// session.
    async fn hand_out(&mut self, scan: &mut Scanner, head: &mut ErrorHead) -> Result<(), String> {
        let (demoted, behind) = self.deliver(scan, head)?;
        if demoted {
            self.demoted();
        }
        if let Some(sink) = behind {
            self.wait_for(&sink).await;
        }
        Ok(())
    }

    /// [`Reader::hand_out`] without the waiting: whether a reply said the node was demoted, and
    /// a receiver with more queued than [`SHARED_QUEUE_HARD`].
    fn deliver(
        &mut self,
        scan: &mut Scanner,
        head: &mut ErrorHead,
    ) -> Result<(bool, Option<Arc<Sink>>), String> {
        let data = self.buf.split().freeze();
        self.metrics
            .to_client
            .inc_by((data.len() - self.carried) as u64);
        self.carried = 0;
        let mut routes = lock(&self.routes);
        // `done` replies of the front route end in data[start..i].
        let (mut i, mut start, mut done, mut frame_start) = (0, 0, 0u32, 0);
        let mut demoted = false;
        let mut fault = None;
        let mut behind: Option<Arc<Sink>> = None;
        while i < data.len() {
            let Some(front) = routes.q.front() else {
                fault = Some("the server sent a reply nobody asked for".to_owned());
                break;
            };
            frame_start = i;
            if scan.at_boundary() {
                // Nothing shared subscribes or tracks, so a push has no owner here; taking it
                // for a reply would hand every later reply to the wrong client.
                if data[i] == b'>' {
                    fault = Some("the server sent a push frame on a shared session".to_owned());
                    break;
                }
                head.start(data[i]);
            }
            let redirect = match self.redirect_at(scan, &data[i..]) {
                Held::No => None,
                Held::Line(n) => Some(n),
                Held::Incomplete => {
                    self.carried = data.len() - i;
                    self.buf.extend_from_slice(&data[i..]);
                    break;
                }
            };
            let (n, complete) = match scan.feed(&data[i..]) {
                Ok(x) => x,
                Err(e) => {
                    fault = Some(format!("unreadable reply from the server: {e}"));
                    break;
                }
            };
            head.extend(&data[i..i + n]);
            i += n;
            if !complete {
                break;
            }
            demoted |= head.demotion();
            if let (Some(len), Some(rw)) = (redirect, &self.rewrite) {
                // Handed out as its own delivery: the replies before it, then it rewritten.
                let to = front.to.clone();
                let out = rw.error(&data[frame_start..frame_start + len]);
                if done > 0 {
                    to.deliver(data.slice(start..frame_start), done);
                }
                to.deliver(out, 1);
                let front = routes.q.front_mut().expect("front checked above");
                front.left -= done + 1;
                if front.left == 0 {
                    routes.q.pop_front();
                }
                routes.partial = false;
                if to.queued() > SHARED_QUEUE_HARD && !to.ended() {
                    behind = Some(to);
                }
                (start, done) = (i, 0);
                continue;
            }
            done += 1;
            if done == front.left {
                let front = routes.q.pop_front().expect("front checked above");
                front.to.deliver(data.slice(start..i), done);
                routes.partial = false;
                if front.to.queued() > SHARED_QUEUE_HARD && !front.to.ended() {
                    behind = Some(front.to.clone());
                }
                (start, done) = (i, 0);
            }
        }
        // The front's replies completed so far and, unless the stream broke, the start of the
        // one still arriving.
        let upto = if fault.is_some() { frame_start } else { i };
        if start < upto
            && let Some(front) = routes.q.front_mut()
        {
            front.to.deliver(data.slice(start..upto), done);
            front.left -= done;
            if front.to.queued() > SHARED_QUEUE_HARD && !front.to.ended() {
                behind = Some(front.to.clone());
            }
            routes.partial = fault.is_none() && !scan.at_boundary();
        }
        match fault {
            Some(f) => Err(f),
            None => Ok((demoted, behind)),
        }
    }

    /// Whether the reply starting at `rest[0]` is a redirect to rewrite: the whole line is
    /// needed first. An error line longer than [`MAX_REDIRECT`] is no redirect.
    fn redirect_at(&self, scan: &Scanner, rest: &[u8]) -> Held {
        if self.rewrite.is_none() || !scan.at_boundary() || rest.first() != Some(&b'-') {
            return Held::No;
        }
        let window = &rest[..rest.len().min(MAX_REDIRECT)];
        match window.windows(2).position(|w| w == b"\r\n") {
            Some(end) if rewrite::is_redirect(window) => Held::Line(end + 2),
            Some(_) => Held::No,
            None if rest.len() < MAX_REDIRECT && rewrite::is_redirect_prefix(rest) => {
                Held::Incomplete
            }
            None => Held::No,
        }
    }

    /// A reply said the node is a replica now: the node authority decides what that means; a
    /// session that reached a primary is on a demoted node either way, and takes no more.
    fn demoted(&self) {
        if self.at.role == Some(super::conn::NodeRole::Primary) {
            tracing::info!(listener = %self.name, peer = %self.at.peer, "the node answered as a replica; retiring the shared session");
            self.retire();
        }
        self.node.demoted(&self.at);
    }

    /// A receiver has more than [`SHARED_QUEUE_HARD`] queued: stop reading (the replies behind
    /// are the others', in the same stream) until it takes some. New batches go to another
    /// session meanwhile. A receiver that takes nothing for [`SHARED_STALL`] is cut off.
    async fn wait_for(&self, sink: &Sink) {
        self.retire();
        loop {
            let before = sink.queued();
            let drained = sink.wait_until(|s| s.queued() < before || s.ended());
            match timeout(SHARED_STALL, drained).await {
                Ok(()) if sink.queued() <= SHARED_QUEUE_HARD / 2 || sink.ended() => {
                    return;
                }
                Ok(()) => continue,
                Err(_) => {
                    tracing::warn!(listener = %self.name, "client disconnected: {}", Cut::Behind.why());
                    sink.cut(Cut::Behind, 0);
                    return;
                }
            }
        }
    }
}
