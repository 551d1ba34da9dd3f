//! A client on the listener's shared upstream sessions, for as long as it sends only plain data
//! commands (which ones: [`crate::proto::share`]). At its first other command (SELECT, MULTI,
//! SUBSCRIBE, a blocking command, an AUTH the tunnel cannot judge, anything unknown) or a request
//! too long to hold whole, it gets every reply it is owed, then leaves to continue on a session
//! of its own, starting with that command, after what it did to its connection here (`HELLO 3`,
//! `CLIENT SETNAME|SETINFO`) is replayed there: connection state is then exactly what it would be
//! directly.
//!
//! Its two directions run independently, as on a connection of its own: the input side reads,
//! splits and sends; the output side writes what the shared sessions (and the tunnel itself)
//! answer, in order. A client that writes a whole pipeline before reading anything is read to
//! the end: past the in-flight limits its requests wait in the tunnel, not its replies.
//!
//! While idle it holds no buffer and no upstream session: a read buffer is taken when the
//! socket is readable, and a shared session only while it is being used.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf as ClientRead, WriteHalf as ClientWrite};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::own::Start;
use crate::limits::{
    READ_BUF, SHARED_HELD_REQUESTS, SHARED_IN_FLIGHT_BYTES, SHARED_IN_FLIGHT_REPLIES,
    SHARED_QUEUE_SOFT,
};
use crate::listener::{Handle, Listener};
use crate::lock;
use crate::ops::metrics::{Limit, ListenerMetrics};
use crate::proto::RespVersion;
use crate::proto::share::{Budget, Splitter, Stop};
use crate::upstream::DialError;
use crate::upstream::mux::{Batch, Cut, Delivery, Shared, Sink};

/// Where the client goes from here.
pub enum Next {
    /// It left, and everything it was owed went out.
    Done,
    /// The tunnel ended it (malformed input, QUIT, or it fell too far behind): close
    /// gracefully.
    Linger,
    /// No shared session could be had: tell it why and close.
    Refuse(DialError),
    /// Its next request needs a session of its own.
    Own(Start),
    /// A limit ends it (idle, or not authenticated in time).
    Expired(Limit),
}

/// Serves the client on shared sessions until it leaves or needs a session of its own.
pub async fn serve(
    client: &mut TcpStream,
    handle: &Handle,
    accepted: Instant,
    activity: &Activity,
) -> io::Result<Next> {
    let l = handle.borrow().clone();
    let slot = l.mux.assign();
    // A shared session now, so that an upstream failure is explained at once, as it is to a
    // client with a session of its own.
    if let Err(e) = l.mux.get(slot, RespVersion::V2, &l.pool, &l.node).await {
        return Ok(Next::Refuse(e));
    }
    let (sink, deliveries) = Sink::new();
    let link = Link::default();
    let (rd, wr) = client.split();
    let mut input = Input::new(handle, slot, sink.clone(), &link, activity);
    let out = output(wr, &sink, deliveries, &link, accepted, &l.metrics, activity);
    let owed = || link.asked.load(Ordering::Relaxed) > sink.received() || sink.queued() > 0;
    // Pinned here and borrowed by the join: an async block that took them by value would hold
    // each twice (10.4 against 9.8 KiB per idle client, scripts/bench-idle).
    let (input, out) = {
        let mut run = std::pin::pin!(input.run(rd));
        let mut out = std::pin::pin!(out);
        tokio::select! {
            both = async { tokio::join!(run.as_mut(), out.as_mut()) } => both,
            limit = activity.expired(handle, owed) => return Ok(Next::Expired(limit)),
        }
    };
    match out {
        Out::Cut(why) => {
            tracing::warn!(listener = %l.config.name, "client disconnected: {}", why.why());
            Ok(Next::Done)
        }
        Out::Gone => Ok(Next::Done),
        Out::Ended { replied } => Ok(match input {
            Ending::Eof => {
                client.shutdown().await?;
                Next::Done
            }
            Ending::Linger => Next::Linger,
            Ending::Gone => Next::Done,
            Ending::Own(s) => Next::Own(Start {
                input: s.input,
                first: Some(accepted).filter(|_| !replied),
                authed: s.authed,
                replay: s.replay,
            }),
        }),
    }
}

/// What the two sides share besides the sink.
#[derive(Default)]
struct Link {
    /// The tunnel's own replies, each placed after the shared reply it follows; the last one
    /// may end the client's time here.
    locals: Mutex<VecDeque<Local>>,
    local_ready: Notify,
    /// The output side stopped (the client went away or was cut off): stop reading it.
    gone: CancellationToken,
    /// Replies asked for so far (the input side's count), for the idle check.
    asked: AtomicU64,
}

struct Local {
    /// Goes out once this many shared replies are out.
    after: u64,
    bytes: Bytes,
    end: bool,
}

impl Link {
    fn push(&self, local: Local) {
        lock(&self.locals).push_back(local);
        self.local_ready.notify_one();
    }

    fn len(&self) -> usize {
        lock(&self.locals).len()
    }

    /// Too many of the tunnel's own replies wait for the client to read: read no further.
    fn backlog(&self) -> bool {
        self.len() as u64 >= SHARED_IN_FLIGHT_REPLIES
    }
}

/// How the input side finished.
enum Ending {
    Eof,
    Linger,
    Own(Handover),
    /// The output side stopped first.
    Gone,
}

struct Handover {
    input: BytesMut,
    authed: bool,
    replay: Vec<Bytes>,
}

/// What the input side needs before it can go on.
enum Need {
    Input,
    Room,
}

/// The input side: reads, splits, sends.
struct Input<'a> {
    handle: Handle,
    listener: Arc<Listener>,
    slot: usize,
    sink: Arc<Sink>,
    link: &'a Link,
    activity: &'a Activity,
    splitter: Splitter,
    buf: BytesMut,
    /// The session in use, and its protocol; replies may still be owed on it.
    on: Option<(Arc<Shared>, RespVersion)>,
    /// Replies asked for so far; the tunnel's own replies are placed among them by this count.
    sent: u64,
    /// Per batch still owed: the count of replies that completes it, and its size.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    /// A reply of the tunnel's own was placed after the last batch sent.
    local_since_send: bool,
    eof: bool,
}

impl<'a> Input<'a> {
    fn new(
        handle: &Handle,
        slot: usize,
        sink: Arc<Sink>,
        link: &'a Link,
        activity: &'a Activity,
    ) -> Input<'a> {
        let listener = handle.borrow().clone();
        let c = &listener.config;
        let splitter = Splitter::new(c.client_auth.clone(), listener.auth.current());
        Input {
            handle: handle.clone(),
            listener,
            slot,
            sink,
            link,
            activity,
            splitter,
            buf: BytesMut::new(),
            on: None,
            sent: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            local_since_send: false,
            eof: false,
        }
    }

    /// By reference: a by-value `self` would sit in the future twice (as its argument and as
    /// its local), and this future is part of every idle client's memory.
    async fn run(&mut self, mut rd: ClientRead<'_>) -> Ending {
        loop {
            let need = match self.advance().await {
                Ok(need) => need,
                Err(ending) => return ending,
            };
            // Reading goes on while requests wait for room: a client that writes everything
            // before it reads is never stopped from writing.
            let sink = self.sink.clone();
            let (received, queued) = (sink.received(), sink.queued());
            let locals = self.link.len();
            let blocked = matches!(need, Need::Room);
            // Any reply in, the queue drained below its limit, or replies of the tunnel's own
            // written out, may make room.
            let link = self.link;
            let progress = |s: &Sink| {
                s.received() > received
                    || s.queued() < queued.min(SHARED_QUEUE_SOFT)
                    || link.len() < locals
            };
            let read = tokio::select! {
                biased;
                _ = self.link.gone.cancelled() => return Ending::Gone,
                _ = sink.wait_until(progress), if blocked => None,
                n = read_when_ready(&mut rd, &mut self.buf), if !self.eof => Some(n),
            };
            match read {
                None => {}
                Some(Ok(1..)) => self.activity.touch(),
                Some(Ok(0)) => self.eof = true,
                Some(Err(_)) => return self.finish(Ending::Gone),
            }
            if self.buf.len() >= SHARED_HELD_REQUESTS {
                // As Redis closes a client past client-query-buffer-limit.
                tracing::warn!(listener = %self.listener.config.name, "client closed: more than 1 GiB of requests waiting to be sent");
                return self.finish(Ending::Gone);
            }
        }
    }

    /// Sends what the limits allow; returns what it waits for, or how the client leaves.
    async fn advance(&mut self) -> Result<Need, Ending> {
        loop {
            self.settle();
            if !room(&self.sink, self.sent, self.in_flight_bytes) || self.link.backlog() {
                return Ok(Need::Room);
            }
            let owed = self.sent - self.sink.received();
            let budget = Budget {
                replies: SHARED_IN_FLIGHT_REPLIES.saturating_sub(owed),
                bytes: SHARED_IN_FLIGHT_BYTES.saturating_sub(self.in_flight_bytes),
            };
            let split = self.splitter.split(&self.buf, budget);
            self.activity.authed(self.splitter.authed());
            let run = self.buf.split_to(split.len).freeze();
            if split.replies > 0 {
                let version = self.splitter.version();
                self.send(run, split.replies, version, false).await;
            }
            match split.stop {
                None if split.len > 0 => continue,
                None if self.eof => return Err(self.finish(Ending::Eof)),
                None => {
                    if self.buf.is_empty() {
                        // Idle clients hold no buffer; its memory goes once the batch is sent.
                        self.buf = BytesMut::new();
                    }
                    return Ok(Need::Input);
                }
                Some(Stop::Local { reply, quit, len }) => {
                    self.buf.advance(len);
                    self.local(reply);
                    if quit {
                        return Err(self.finish(Ending::Linger));
                    }
                }
                Some(Stop::Switch { version, cmd, len }) => {
                    if !self.switch(cmd, version).await {
                        // No session of that protocol (a server without HELLO refuses it): the
                        // client's own session sends its HELLO, and the server answers it.
                        self.splitter.undo_switch();
                        return Err(self.own());
                    }
                    self.buf.advance(len);
                }
                // Nothing written here yet: its own session answers as a direct one would.
                Some(Stop::Wait { .. }) if self.sent == 0 => return Err(self.own()),
                Some(Stop::Wait { len }) => {
                    let wait = self.buf.split_to(len).freeze();
                    let version = self.splitter.version();
                    self.send(wait, 1, version, true).await;
                    return Err(self.own());
                }
                Some(Stop::Own) => return Err(self.own()),
                Some(Stop::Malformed(line)) => {
                    self.local(line);
                    return Err(self.finish(Ending::Linger));
                }
            }
        }
    }

    /// Forgets batches whose replies have all arrived.
    fn settle(&mut self) {
        let received = self.sink.received();
        while let Some(&(upto, len)) = self.in_flight.front()
            && upto <= received
        {
            self.in_flight.pop_front();
            self.in_flight_bytes -= len;
        }
    }

    /// Sends a batch on the client's session for `version`: the one in use while it is usable,
    /// else, once every reply owed on it is in (so replies keep their order), the slot's current
    /// one. With `last`, nothing may follow it on that session. An upstream failure answers each
    /// of its requests with `-ERR ectunnel: …`, in order.
    async fn send(&mut self, mut bytes: Bytes, replies: u32, version: RespVersion, last: bool) {
        self.owed_from_now(replies);
        loop {
            if let Err(e) = self.session_for(version).await {
                tracing::debug!(listener = %self.listener.config.name, "no shared session: {e}");
                self.sink.refuse(replies, &e.to_string());
                self.asked(replies);
                return;
            }
            match self.put(bytes, replies, last) {
                Ok(()) => return,
                Err(b) => bytes = b, // retired meanwhile: the next one
            }
        }
    }

    /// Sends `HELLO <version>` to a session of that protocol, from which the client's requests
    /// go on. False when no such session can be had (nothing was sent).
    async fn switch(&mut self, mut cmd: Bytes, version: RespVersion) -> bool {
        self.owed_from_now(1);
        loop {
            if self.session_for(version).await.is_err() {
                return false;
            }
            match self.put(cmd, 1, false) {
                Ok(()) => return true,
                Err(b) => cmd = b,
            }
        }
    }

    /// Makes `on` a usable session of `version` of the current listener.
    async fn session_for(&mut self, version: RespVersion) -> Result<(), DialError> {
        let current = self.handle.borrow().clone();
        if !Arc::ptr_eq(&current, &self.listener) {
            self.on = None; // a reload: sessions of the new configuration from now on
            self.listener = current;
        }
        let usable = |(s, v): &(Arc<Shared>, RespVersion)| *v == version && s.usable();
        if self.on.as_ref().is_some_and(usable) {
            return Ok(());
        }
        let sent = self.sent;
        self.sink.wait_until(|s| s.received() >= sent).await;
        let l = &self.listener;
        let s = l.mux.get(self.slot, version, &l.pool, &l.node).await?;
        self.on = Some((s, version));
        Ok(())
    }

    /// Queues a batch on `on`; gives it back when that session was retired meanwhile.
    fn put(&mut self, bytes: Bytes, replies: u32, last: bool) -> Result<(), Bytes> {
        let Some((session, _)) = &self.on else {
            return Err(bytes);
        };
        let len = bytes.len();
        let batch = Batch {
            bytes,
            replies,
            to: self.sink.clone(),
            apart: self.local_since_send,
        };
        if let Err(b) = session.send(batch, last) {
            self.on = None;
            return Err(b.bytes);
        }
        self.asked(replies);
        self.local_since_send = false;
        self.in_flight.push_back((self.sent, len));
        self.in_flight_bytes += len;
        self.listener
            .metrics
            .shared_requests
            .inc_by(u64::from(replies));
        Ok(())
    }

    /// Counts `replies` as owed before a session is had for them: a client waiting for a
    /// dial is not idle (the count is set again when they are sent or refused).
    fn owed_from_now(&self, replies: u32) {
        let owed = self.sent + u64::from(replies);
        self.link.asked.store(owed, Ordering::Relaxed);
    }

    fn asked(&mut self, replies: u32) {
        self.sent += u64::from(replies);
        self.link.asked.store(self.sent, Ordering::Relaxed);
    }

    fn local(&mut self, bytes: Bytes) {
        self.local_since_send = true;
        self.link.push(Local {
            after: self.sent,
            bytes,
            end: false,
        });
    }

    /// The client leaves this side after everything it was sent so far is answered.
    fn finish(&self, ending: Ending) -> Ending {
        self.link.push(Local {
            after: self.sent,
            bytes: Bytes::new(),
            end: true,
        });
        ending
    }

    fn own(&mut self) -> Ending {
        let handover = Handover {
            input: std::mem::take(&mut self.buf),
            authed: self.splitter.authed(),
            replay: self.splitter.replay().to_vec(),
        };
        self.finish(Ending::Own(handover))
    }
}

/// Whether more of a client's requests may go out: few enough owed, and few enough of its
/// replies waiting to be written to it.
fn room(sink: &Sink, sent: u64, in_flight_bytes: usize) -> bool {
    sent - sink.received() < SHARED_IN_FLIGHT_REPLIES
        && in_flight_bytes < SHARED_IN_FLIGHT_BYTES
        && sink.queued() < SHARED_QUEUE_SOFT
}

/// Reads once the socket is readable, taking a buffer only then, so an idle client holds none.
/// (A short read also tells tokio the socket is drained, saving a read that would block.)
async fn read_when_ready(rd: &mut ClientRead<'_>, buf: &mut BytesMut) -> io::Result<usize> {
    rd.readable().await?;
    if buf.capacity() - buf.len() < READ_BUF / 4 {
        buf.reserve(READ_BUF);
    }
    rd.read_buf(buf).await
}

/// How the output side finished.
enum Out {
    /// It wrote everything up to the input side's end.
    Ended {
        replied: bool,
    },
    Cut(Cut),
    /// The client stopped taking what it was sent (its socket failed).
    Gone,
}

/// The output side: writes shared replies as they arrive and the tunnel's own replies in their
/// place, until the input side's end has gone out.
async fn output(
    mut wr: ClientWrite<'_>,
    sink: &Sink,
    mut deliveries: UnboundedReceiver<Delivery>,
    link: &Link,
    accepted: Instant,
    m: &ListenerMetrics,
    activity: &Activity,
) -> Out {
    let mut written = 0u64;
    let mut first = Some(accepted);
    let out = loop {
        let (due, end) = due_locals(link, written);
        if !due.is_empty() {
            if let Err(out) = write_or_cut(&mut wr, sink, &due).await {
                break out;
            }
            sink.nudge();
            observe_first(&mut first, m);
            activity.touch();
        }
        if end {
            break Out::Ended {
                replied: first.is_none(),
            };
        }
        tokio::select! {
            biased;
            d = deliveries.recv() => {
                let Some(d) = d else { break Out::Gone };
                // A reply of the tunnel's own queued meanwhile may go before this one.
                let (due, end) = due_locals(link, written);
                if !due.is_empty() {
                    if let Err(out) = write_or_cut(&mut wr, sink, &due).await {
                        break out;
                    }
                    sink.nudge();
                }
                if end {
                    break Out::Ended {
                        replied: true,
                    };
                }
                let upto = next_local(link).map(|after| after.saturating_sub(written));
                match write_deliveries(&mut wr, sink, d, &mut deliveries, upto).await {
                    Ok(replies) => written += replies,
                    Err(out) => break out,
                }
                observe_first(&mut first, m);
                activity.touch();
            }
            _ = link.local_ready.notified() => {}
        }
    };
    link.gone.cancel();
    if !matches!(out, Out::Ended { .. }) {
        sink.close(); // what is still owed to it is dropped as it arrives
    }
    out
}

fn observe_first(first: &mut Option<Instant>, m: &ListenerMetrics) {
    if let Some(t) = first.take() {
        m.first_reply.observe(t.elapsed().as_secs_f64());
    }
}

/// Where the next reply of the tunnel's own goes, if one is waiting.
fn next_local(link: &Link) -> Option<u64> {
    lock(&link.locals).front().map(|l| l.after)
}

/// The tunnel's own replies whose turn has come, joined, and whether the end is among them.
fn due_locals(link: &Link, written: u64) -> (BytesMut, bool) {
    let mut locals = lock(&link.locals);
    let mut out = BytesMut::new();
    while let Some(l) = locals.front()
        && l.after <= written
    {
        let l = locals.pop_front().expect("front checked above");
        out.extend_from_slice(&l.bytes);
        if l.end {
            return (out, true);
        }
    }
    (out, false)
}

/// Writes `out`, unless the client is cut off first (a client that does not read blocks this
/// write; being cut off must still end it). The write is tried first: what was delivered
/// before the cut (the part of a reply that arrived before its session broke) goes out when
/// the client can take it, rather than racing the cut and being dropped unseen.
async fn write_or_cut(wr: &mut ClientWrite<'_>, sink: &Sink, out: &[u8]) -> Result<(), Out> {
    tokio::select! {
        biased;
        r = wr.write_all(out) => r.map_err(|_| Out::Gone),
        cut = sink.cut_off() => Err(Out::Cut(cut)),
    }
}

/// Writes a delivery and whatever else has arrived, in one write where there are several, but
/// no further than `upto` replies (where a reply of the tunnel's own goes). Returns the replies
/// they completed, or how the client ends.
async fn write_deliveries(
    wr: &mut ClientWrite<'_>,
    sink: &Sink,
    d: Delivery,
    rx: &mut UnboundedReceiver<Delivery>,
    upto: Option<u64>,
) -> Result<u64, Out> {
    let (mut replies, mut close) = (u64::from(d.replies), d.close);
    let mut out = d.bytes;
    let more = |replies: u64| upto.is_none_or(|u| replies < u);
    if close.is_none()
        && more(replies)
        && let Ok(next) = rx.try_recv()
    {
        let mut joined = BytesMut::from(&out[..]);
        let mut next = Some(next);
        while let Some(d) = next.take() {
            joined.extend_from_slice(&d.bytes);
            replies += u64::from(d.replies);
            close = d.close;
            if close.is_none() && joined.len() < READ_BUF * 4 && more(replies) {
                next = rx.try_recv().ok();
            }
        }
        out = joined.freeze();
    }
    write_or_cut(wr, sink, &out).await?;
    sink.taken(out.len());
    match close {
        Some(cut) => Err(Out::Cut(cut)),
        None => Ok(replies),
    }
}
