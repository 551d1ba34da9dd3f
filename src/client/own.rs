//! A client on an upstream session of its own, from the pool or dialled: both directions
//! forwarded independently through the RESP engine (or, for `protocol = "raw"`, the byte pipe)
//! until both are done; then the session goes back to the pool when that is safe. A session on
//! a node that moved is closed at its next reply boundary, so its client reconnects to where the
//! upstream is now.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf as ClientRead, WriteHalf as ClientWrite};
use tokio::sync::{Notify, watch};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::{expired, linger, raw, read_or_eof, refuse};
use crate::config::Protocol;
use crate::limits::{MAX_FIFO_ENTRIES, READ_BUF, REAUTH_RETRY, REAUTH_RETRY_MAX};
use crate::listener::Handle;
use crate::lock;
use crate::ops::metrics::{Limit, ListenerMetrics};
use crate::proto::engine::{Entry, Fifo, Op, Reauth, Replies, ReplyProgress, Requests};
use crate::upstream::Truth;
use crate::upstream::conn::{At, Conn};

/// Where a client starts on a session of its own.
pub(super) struct Start {
    /// What it sent that no session has seen yet.
    pub input: BytesMut,
    /// When it connected, if nothing was answered yet (for the first-reply histogram).
    pub first: Option<Instant>,
    /// It gave the tunnel's password already (`client_auth = "require"`).
    pub authed: bool,
    /// What it did to its connection on shared sessions, to do again here first.
    pub replay: Vec<Bytes>,
}

impl Start {
    pub fn fresh(accepted: Instant) -> Start {
        Start {
            input: BytesMut::new(),
            first: Some(accepted),
            authed: false,
            replay: Vec::new(),
        }
    }
}

/// Takes a session and serves the client on it until both sides are done.
pub(super) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    handle: Handle,
    start: Start,
    activity: &Activity,
) {
    let l = handle.borrow().clone();
    l.metrics.own_sessions.inc();
    let (up, lent) = match l.pool.checkout_own().await {
        Ok(up) => up,
        Err(e) => {
            super::log_refused(&l, peer, &e);
            return refuse(client, &e).await;
        }
    };
    // The client waited for us, it was not idle: its request is sent below.
    activity.touch();
    let upstream = up.at.peer;
    let result = match l.config.protocol {
        // Raw bytes say nothing of replies owed: idle means no byte either way.
        Protocol::Raw => tokio::select! {
            r = raw::forward(&mut client, up, &l.metrics, start.first, activity) => {
                r.map(|(to_up, to_client)| End {
                    to_up,
                    to_client,
                    after: After::Done,
                })
            }
            limit = activity.expired(&handle, || false) => Ok(End::expired(limit)),
        },
        Protocol::Resp => forward(&mut client, up, &handle, start, activity).await,
    };
    let end = match result {
        Ok(end) => end,
        Err(e) => {
            return tracing::debug!(listener = %l.config.name, client = %peer, %upstream,
                error = %e, "session ended by an error");
        }
    };
    tracing::debug!(listener = %l.config.name, client = %peer, %upstream,
        to_up = end.to_up, to_client = end.to_client, after = end.after.describe(),
        "session closed");
    match end.after {
        After::Done => {}
        After::Reuse(up) => {
            let _ = client.shutdown().await;
            drop(client);
            // To the pool it came from: after a reload that one is stopped and closes it.
            l.pool.give_back(*up, lent).await;
        }
        After::Linger => linger(client).await,
        After::Expired(limit) => expired(client, &l, limit).await,
    }
}

/// How a session ended.
struct End {
    to_up: u64,
    to_client: u64,
    after: After,
}

impl End {
    /// Ended by a limit: both directions were dropped where they stood (their byte counts
    /// with them; the metrics have them).
    fn expired(limit: Limit) -> End {
        End {
            to_up: 0,
            to_client: 0,
            after: After::Expired(limit),
        }
    }
}

/// What is left to do once both directions have stopped.
enum After {
    /// Both sides closed; nothing.
    Done,
    /// The client left at a clean boundary: the upstream session may be reused.
    Reuse(Box<Conn>),
    /// The tunnel ended it (malformed input, a node that moved): close the client gracefully.
    Linger,
    /// A limit ended it; the upstream session is closed, not reused.
    Expired(Limit),
}

impl After {
    fn describe(&self) -> &'static str {
        match self {
            After::Done => "closed",
            After::Reuse(_) => "upstream returned to the pool",
            After::Linger => "closed by the tunnel",
            After::Expired(_) => "closed by a limit",
        }
    }
}

/// How the reply direction ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplyEnd {
    /// The server closed; the client was told with a half-close.
    Eof,
    /// The client left cleanly and the server owes nothing: reusable.
    Clean,
    /// The tunnel ends the session (protocol error sent, or the node moved).
    Tunnel,
}

/// What the two directions share. A direction never waits for the other except through this,
/// so a client that pipelines without reading behaves as it would against Redis.
struct Link {
    state: Mutex<LinkState>,
    /// The reply side freed FIFO room.
    room: Notify,
    /// The request side queued something the reply side must act on without a server byte: a
    /// tunnel reply at the FIFO head, or the client leaving cleanly.
    wake: Notify,
    left_clean: AtomicBool,
    /// The reply side ended the session: stop reading the client.
    ended: CancellationToken,
    /// The client subscribed or ran MONITOR: never idle from then on.
    held: AtomicBool,
    /// The session must authenticate again and cannot (it is opaque): the reply side tells the
    /// client why and ends it at the next frame boundary.
    reauth_cut: AtomicBool,
    /// The server answered an AUTH the tunnel sent or a MULTI ([`LinkState::reauth_answers`],
    /// [`LinkState::multi_answers`]): what the request side may send next can change.
    answered: Notify,
}

struct LinkState {
    fifo: Fifo,
    /// The reply side is between frames.
    reply_boundary: bool,
    /// The reply side's accounting holds.
    reply_synced: bool,
    /// [`Replies::lost`]: when it changes, the request side stops injecting too.
    reply_lost: u64,
    /// When the session last authenticated (or sent its re-AUTH).
    authed: Instant,
    /// [`Replies::multi_answers`]: a refused MULTI opened no transaction.
    multi_answers: (u64, u64),
    /// [`Replies::reauth_answers`].
    reauth_answers: (u64, bool),
}

impl Link {
    fn new(authed: Instant) -> Link {
        Link {
            state: Mutex::new(LinkState {
                fifo: Fifo::default(),
                reply_boundary: true,
                reply_synced: true,
                reply_lost: 0,
                authed,
                multi_answers: (0, 0),
                reauth_answers: (0, false),
            }),
            room: Notify::new(),
            wake: Notify::new(),
            left_clean: AtomicBool::new(false),
            ended: CancellationToken::new(),
            held: AtomicBool::new(false),
            reauth_cut: AtomicBool::new(false),
            answered: Notify::new(),
        }
    }

    /// Queues entries; wakes the reply side when one needs no server reply to go out.
    fn push(&self, entries: &mut Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let wake = entries.iter().any(|e| {
            !matches!(
                e,
                Entry::Client(_) | Entry::Swallow(_) | Entry::Multi | Entry::Reauth { .. }
            )
        });
        lock(&self.state).fifo.extend(entries.drain(..));
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits while a client that sends without reading has too much owed to it.
    async fn room(&self) -> bool {
        while lock(&self.state).fifo.len() > MAX_FIFO_ENTRIES {
            tokio::select! {
                _ = self.room.notified() => {}
                _ = self.ended.cancelled() => return false,
            }
        }
        true
    }

    /// Whether the session is between requests and replies with nothing owed either way.
    fn idle(&self) -> bool {
        let s = lock(&self.state);
        s.fifo.is_empty() && s.reply_boundary && s.reply_synced
    }
}

/// `protocol = "resp"`: the two directions, each through its half of the RESP engine, sharing
/// the reply FIFO through a [`Link`].
async fn forward(
    client: &mut TcpStream,
    up: Conn,
    handle: &Handle,
    start: Start,
    activity: &Activity,
) -> io::Result<End> {
    let Conn {
        stream,
        at,
        leftover,
        created,
        authed: up_authed,
        open,
    } = up;
    let Start {
        input,
        first,
        authed,
        replay,
    } = start;
    let link = Link::new(up_authed);
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = tokio::io::split(stream);
    let requests = RequestStart {
        input,
        authed,
        replay,
    };
    let replies = ReplyStart {
        at,
        leftover,
        first,
    };
    let both = async {
        tokio::try_join!(
            send_requests(&link, client_rd, up_wr, handle.clone(), requests, activity),
            send_replies(&link, client_wr, up_rd, handle.clone(), replies, activity)
        )
    };
    let busy = || !link.idle() || link.held.load(Ordering::Relaxed);
    let ((to_up, up_wr), (to_client, end, up_rd)) = tokio::select! {
        r = both => r?,
        limit = activity.expired(handle, busy) => return Ok(End::expired(limit)),
    };
    let after = match end {
        ReplyEnd::Eof => After::Done,
        ReplyEnd::Tunnel => After::Linger,
        ReplyEnd::Clean => After::Reuse(Box::new(Conn {
            stream: up_rd.unsplit(up_wr),
            at,
            leftover: BytesMut::new(),
            created,
            authed: lock(&link.state).authed,
            open,
        })),
    };
    Ok(End {
        to_up,
        to_client,
        after,
    })
}

/// What the request side starts from.
struct RequestStart {
    input: BytesMut,
    authed: bool,
    replay: Vec<Bytes>,
}

/// What the reply side starts from: where the session is, what the server sent after the
/// handshake, and when the client connected if nothing was answered yet.
struct ReplyStart {
    at: At,
    leftover: BytesMut,
    first: Option<Instant>,
}

type UpWrite = WriteHalf<TlsStream<TcpStream>>;
type UpRead = ReadHalf<TlsStream<TcpStream>>;

/// Client → server: reads the client, runs the request engine, writes upstream. Ends when the
/// client is done sending (passing the half-close on, unless the session can be reused), or when
/// the reply side ended the session.
async fn send_requests(
    link: &Link,
    mut client: ClientRead<'_>,
    mut up: UpWrite,
    mut handle: Handle,
    start: RequestStart,
    activity: &Activity,
) -> io::Result<(u64, UpWrite)> {
    let (l, m) = {
        let l = handle.borrow_and_update();
        (l.config.clone(), l.metrics.clone())
    };
    let mut requests = Requests::new(l.client_auth.clone(), None);
    let mut session = SessionAuth::new(&handle, link);
    if start.authed {
        requests.set_authed();
    }
    let (mut ops, mut entries) = (Vec::new(), Vec::new());
    // What the client did on shared sessions comes first, then what it sent meanwhile.
    requests.replay(&start.replay, &mut ops, &mut entries);
    link.push(&mut entries);
    let mut total = write_ops(&mut up, &[], &mut ops, &m.to_upstream).await?;
    let mut unread = !start.input.is_empty();
    let mut buf = start.input;
    loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        if !link.room().await {
            return Ok((total, up));
        }
        let n = if std::mem::take(&mut unread) {
            buf.len()
        } else {
            tokio::select! {
                r = client.read_buf(&mut buf) => r?,
                _ = link.ended.cancelled() => return Ok((total, up)),
                () = sleep_until_some(session.due) => {
                    session.sync(link, &mut handle, &mut requests);
                    // Unless an answer that just came set a later time.
                    if session.due.is_none_or(|due| due <= Instant::now()) {
                        total += session.reauth(link, &mut requests, &mut up, &m).await?;
                    }
                    continue;
                }
                // The server answered the tunnel's AUTH (when to authenticate next) or a MULTI
                // (a refused one opened no transaction): a re-AUTH held back may go now.
                () = link.answered.notified() => {
                    session.sync(link, &mut handle, &mut requests);
                    if session.waiting(link, &requests) {
                        total += session.reauth(link, &mut requests, &mut up, &m).await?;
                    }
                    continue;
                }
                // A reload: its credentials, and its `reauth_after`, apply to idle clients too.
                r = handle.changed(), if session.listener_alive => {
                    session.listener_alive = r.is_ok();
                    let authed = lock(&link.state).authed;
                    session.reloaded(&mut handle, authed);
                    session.sync(link, &mut handle, &mut requests);
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        activity.touch();
        // Checked after the read: what it brought is judged with what the reply side knows now.
        session.sync(link, &mut handle, &mut requests);
        let progress = requests.process(&buf, &mut ops, &mut entries);
        activity.authed(requests.is_authed());
        if !requests.is_synced() || entries.contains(&Entry::Subscribe3) {
            link.held.store(true, Ordering::Relaxed);
        }
        link.push(&mut entries);
        total += write_ops(&mut up, &buf, &mut ops, &m.to_upstream).await?;
        buf.advance(progress.consumed);
        if session.waiting(link, &requests) {
            // A re-AUTH that had to wait (a MULTI was open) goes in after this request.
            total += session.reauth(link, &mut requests, &mut up, &m).await?;
        }
        if progress.stop {
            // Nothing more is read from this client. The server answers what it got and,
            // seeing EOF (even mid-frame), closes; the error is sent after those replies.
            tracing::debug!(listener = %l.name, "malformed client input; closing after the pending replies");
            up.shutdown().await?;
            return Ok((total, up));
        }
    }
    // The client is done sending. If nothing is owed either way, keep the upstream session
    // open for the next client; otherwise pass the half-close on, as a direct connection
    // would, so the replies still owed are delivered.
    if l.pool.reuse && requests.at_clean_boundary() && link.idle() {
        link.left_clean.store(true, Ordering::Release);
        link.wake.notify_one();
    } else {
        up.shutdown().await?;
    }
    Ok((total, up))
}

/// The request side's view of how its session authenticates: the listener's authority as of
/// now (reloads included), what the reply side learnt, and when an IAM session is due to
/// authenticate again.
struct SessionAuth {
    auth: crate::auth::Auth,
    /// [`crate::auth::Auth::version`] the engine's credentials were last set from.
    seen: u64,
    /// When to authenticate again; `None` while waiting for the next request (a MULTI was
    /// open) or without IAM.
    due: Option<Instant>,
    /// [`Replies::lost`] as last seen.
    lost: u64,
    /// The tunnel's AUTHs answered, as last seen.
    answered: u64,
    /// How long after a refused re-AUTH to try again: doubles while refused.
    retry: std::time::Duration,
    listener_alive: bool,
}

impl SessionAuth {
    fn new(handle: &Handle, link: &Link) -> SessionAuth {
        let auth = handle.borrow().auth.clone();
        let authed = lock(&link.state).authed;
        SessionAuth {
            due: auth.reauth_after().map(|every| authed + every),
            auth,
            // The engine's credentials are set at the first sync, before any client byte.
            seen: u64::MAX,
            lost: 0,
            answered: 0,
            retry: REAUTH_RETRY,
            listener_alive: true,
        }
    }

    /// Brings the engine up to date: accounting the reply side lost, a refused MULTI, a reload
    /// (new credentials, a new `reauth_after`), a refreshed token or the other password of a
    /// rotation (what a RESET is followed by).
    fn sync(&mut self, link: &Link, handle: &mut Handle, requests: &mut Requests) {
        // One lock per client read: this runs on every one.
        let (lost, (answered, accepted), reauths, authed) = {
            let s = lock(&link.state);
            (s.reply_lost, s.multi_answers, s.reauth_answers, s.authed)
        };
        if lost != self.lost {
            self.lost = lost;
            requests.set_unsynced();
        }
        requests.multi_answers(answered, accepted);
        self.answers(link, requests, reauths);
        if handle.has_changed().unwrap_or(false) {
            self.reloaded(handle, authed);
        }
        if self.auth.version() != self.seen {
            self.seen = self.auth.version();
            requests.set_inject(self.auth.all());
        }
    }

    /// A reload: the new listener's credentials and `reauth_after`.
    fn reloaded(&mut self, handle: &mut Handle, authed: Instant) {
        self.auth = handle.borrow_and_update().auth.clone();
        self.seen = u64::MAX;
        self.due = self.auth.reauth_after().map(|every| authed + every);
    }

    /// The server answered the tunnel's AUTHs: once none is on its way, an accepted one sets
    /// the next re-AUTH a `reauth_after` on, a refused one (a token that expired behind a
    /// blocking command) is tried again soon with a fresh token.
    fn answers(&mut self, link: &Link, requests: &Requests, (answered, refused): (u64, bool)) {
        if answered == self.answered {
            return;
        }
        self.answered = answered;
        let Some(every) = self.auth.reauth_after() else {
            return;
        };
        if answered != requests.reauths_sent() {
            return;
        }
        let now = Instant::now();
        if refused {
            self.due = Some(now + self.retry);
            self.retry = (self.retry * 2).min(REAUTH_RETRY_MAX);
        } else {
            lock(&link.state).authed = now;
            self.due = Some(now + every);
            self.retry = REAUTH_RETRY;
        }
    }

    /// One of the tunnel's AUTHs is still on its way (behind a blocking command, say).
    fn in_flight(&self, requests: &Requests) -> bool {
        requests.reauths_sent() != self.answered
    }

    /// A re-AUTH is overdue and waits for a request to go in after.
    fn waiting(&self, link: &Link, requests: &Requests) -> bool {
        self.due.is_none()
            && !self.in_flight(requests)
            && self
                .auth
                .reauth_after()
                .is_some_and(|every| lock(&link.state).authed.elapsed() >= every)
    }

    /// Authenticates the session again (IAM, before the server's cut) if it can now. An opaque
    /// session cannot: the reply side ends it, telling the client.
    async fn reauth(
        &mut self,
        link: &Link,
        requests: &mut Requests,
        up: &mut UpWrite,
        m: &ListenerMetrics,
    ) -> io::Result<u64> {
        self.due = None;
        if self.auth.reauth_after().is_none() {
            return Ok(0);
        }
        if requests.own_auth() || self.in_flight(requests) {
            // The client's own credentials are not the tunnel's to renew (until a RESET); an
            // AUTH on its way sets the next one when answered.
            return Ok(0);
        }
        // The token now, not the one of the last read.
        requests.set_inject(self.auth.all());
        let (mut ops, mut entries) = (Vec::new(), Vec::new());
        match requests.reauth(&mut ops, &mut entries) {
            // Its answer sets the next one.
            Reauth::Sent => {
                link.push(&mut entries);
                return write_ops(up, &[], &mut ops, &m.to_upstream).await;
            }
            // Looked at again after the client's next request.
            Reauth::Later | Reauth::NotOurs => {}
            Reauth::NoCredentials => self.due = Some(Instant::now() + REAUTH_RETRY),
            Reauth::Opaque => {
                link.reauth_cut.store(true, Ordering::Release);
                link.wake.notify_one();
            }
        }
        Ok(0)
    }
}

/// Sleeps until `due`, or for ever without one.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Why an opaque IAM session is ended before the server's cut.
const REAUTH_CUT: &str = "an IAM-authenticated connection must authenticate again before the server's 12-hour cut, which a connection whose replies do not pair with requests (subscribe mode, MONITOR, CLIENT REPLY OFF) cannot do; reconnect";

/// What the reply side is waiting for.
enum Wait {
    Read(io::Result<usize>),
    Woken,
    /// The node authority (or a reload) may say this session is no longer on the upstream.
    Truth,
}

/// Server → client: reads the server, runs the reply engine, writes to the client. Ends when
/// the server closes, when the client left cleanly, or when the tunnel ends the session (a
/// protocol error sent, or a node that moved, at the next reply boundary).
async fn send_replies(
    link: &Link,
    client: ClientWrite<'_>,
    up: UpRead,
    handle: Handle,
    start: ReplyStart,
    activity: &Activity,
) -> io::Result<(u64, ReplyEnd, UpRead)> {
    let ReplyStart {
        at,
        leftover,
        first,
    } = start;
    let (name, m, truth, rewrite) = {
        let l = handle.borrow();
        let rewrite = l.rewrite(&at);
        (
            l.config.name.clone(),
            l.metrics.clone(),
            l.node.watch(),
            rewrite,
        )
    };
    let mut replies = Replies::new();
    replies.set_rewrite(rewrite);
    let mut side = ReplySide {
        link,
        client,
        up,
        handle,
        truth,
        at,
        name,
        m,
        replies,
        buf: BytesMut::with_capacity(READ_BUF),
        ops: Vec::new(),
        total: 0,
        draining: false,
        auth_refused: false,
        listener_alive: true,
        first,
        activity,
    };
    side.buf.extend_from_slice(&leftover);
    let end = loop {
        let step = if side.buf.is_empty() {
            side.wait().await?
        } else {
            side.forward().await?
        };
        if let Some(end) = step {
            break end;
        }
    };
    match end {
        ReplyEnd::Eof => side.client.shutdown().await?,
        ReplyEnd::Clean => {}
        ReplyEnd::Tunnel => link.ended.cancel(),
    }
    Ok((side.total, end, side.up))
}

/// The reply direction's state.
struct ReplySide<'a, 'c> {
    link: &'a Link,
    client: ClientWrite<'c>,
    up: UpRead,
    handle: Handle,
    truth: watch::Receiver<Truth>,
    at: At,
    name: String,
    m: ListenerMetrics,
    replies: Replies,
    buf: BytesMut,
    ops: Vec<Op>,
    total: u64,
    /// The node moved: end at the next reply boundary.
    draining: bool,
    /// The server refused the tunnel's last AUTH group (warned about once).
    auth_refused: bool,
    /// The listener's handle still has a sender (a reload may remove the listener).
    listener_alive: bool,
    first: Option<Instant>,
    activity: &'a Activity,
}

impl ReplySide<'_, '_> {
    /// Nothing read is waiting: acts on the next event.
    async fn wait(&mut self) -> io::Result<Option<ReplyEnd>> {
        let wait = tokio::select! {
            r = self.up.read_buf(&mut self.buf) => Wait::Read(r),
            _ = self.link.wake.notified() => Wait::Woken,
            _ = self.truth.changed(), if !self.draining => Wait::Truth,
            // A listener removed by a reload drops its sender: `changed` fails at once from
            // then on, and is not waited on again.
            r = self.handle.changed(), if !self.draining && self.listener_alive => {
                self.listener_alive = r.is_ok();
                Wait::Truth
            }
        };
        match wait {
            Wait::Read(r) => {
                if read_or_eof(r)? > 0 {
                    return Ok(None);
                }
                // Replies owed will not come; the tunnel's own still go out.
                let close = self
                    .replies
                    .at_eof(&mut lock(&self.link.state).fifo, &mut self.ops);
                self.write(&[]).await?;
                self.link.room.notify_one();
                Ok(Some(if close {
                    ReplyEnd::Tunnel
                } else {
                    ReplyEnd::Eof
                }))
            }
            Wait::Woken => {
                if self.link.left_clean.load(Ordering::Acquire) {
                    return Ok(Some(ReplyEnd::Clean));
                }
                if self.link.reauth_cut.load(Ordering::Acquire) && !self.draining {
                    tracing::debug!(listener = %self.name, peer = %self.at.peer, "an opaque IAM session is due to authenticate again; closing at the next reply boundary");
                    self.draining = true;
                    return self.end_if_draining().await;
                }
                if !self.replies.at_boundary() {
                    return Ok(None);
                }
                let close = self
                    .replies
                    .emit_ready(&mut lock(&self.link.state).fifo, &mut self.ops);
                self.link.room.notify_one();
                self.write(&[]).await?;
                Ok(close.then_some(ReplyEnd::Tunnel))
            }
            Wait::Truth => {
                self.truth = self.handle.borrow_and_update().node.watch();
                if self.truth.borrow_and_update().holds(&self.at) {
                    return Ok(None);
                }
                tracing::debug!(listener = %self.name, peer = %self.at.peer, "node moved; closing at the next reply boundary");
                self.draining = true;
                Ok(self.replies.at_boundary().then_some(ReplyEnd::Tunnel))
            }
        }
    }

    /// Runs what was read through the reply engine and writes the result to the client.
    async fn forward(&mut self) -> io::Result<Option<ReplyEnd>> {
        let progress = {
            let mut s = lock(&self.link.state);
            let p = self.replies.process(&self.buf, &mut s.fifo, &mut self.ops);
            s.reply_boundary = self.replies.at_boundary();
            s.reply_synced = self.replies.is_synced();
            s.reply_lost = self.replies.lost();
            let answers = (self.replies.multi_answers(), self.replies.reauth_answers());
            if answers != (s.multi_answers, s.reauth_answers) {
                (s.multi_answers, s.reauth_answers) = answers;
                self.link.answered.notify_one();
            }
            p
        };
        self.link.room.notify_one();
        if !progress.injected_errors.is_empty() || progress.reauths_refused > 0 {
            self.injected_errors(&progress);
        }
        let buf = std::mem::take(&mut self.buf);
        let written = self.write(&buf).await?;
        self.buf = buf;
        self.buf.clear();
        if written > 0
            && let Some(t) = self.first.take()
        {
            self.m.first_reply.observe(t.elapsed().as_secs_f64());
        }
        if progress.close {
            return Ok(Some(ReplyEnd::Tunnel));
        }
        if progress.demoted {
            // The node authority decides whether this session's node moved; if so, the truth
            // changes and the session closes at its next boundary (see `wait`).
            self.handle.borrow().node.demoted(&self.at);
        }
        self.end_if_draining().await
    }

    /// During a rotation one of the two `AUTH`s after a RESET is refused by design; anything
    /// else the server refused of the tunnel's is news.
    fn injected_errors(&mut self, progress: &ReplyProgress) {
        for e in &progress.injected_errors {
            if crate::auth::refused(e) {
                // Judged by its group below: one password of a rotation refused is expected.
                tracing::debug!(listener = %self.name, "the server refused an AUTH the tunnel sent: {e}");
            } else {
                tracing::warn!(listener = %self.name, "the server refused a command the tunnel sent for the client (a replayed one): {e}");
            }
        }
        if progress.reauths_refused > 0 && !self.auth_refused {
            // Once, until the server takes one again (the request side retries with backoff).
            tracing::warn!(listener = %self.name, peer = %self.at.peer,
                "the server refused the tunnel's AUTH on a client's session (every password, or the IAM token); the client's commands may get NOAUTH");
        }
        self.auth_refused = lock(&self.link.state).reauth_answers.1;
    }

    /// Ends a draining session once between replies, first telling a client whose session is
    /// cut for want of a re-AUTH why.
    async fn end_if_draining(&mut self) -> io::Result<Option<ReplyEnd>> {
        if !self.draining || !self.replies.at_boundary() {
            return Ok(None);
        }
        if self.link.reauth_cut.load(Ordering::Acquire) {
            let line = format!("-ERR ectunnel: auth {}: {REAUTH_CUT}\r\n", self.at.peer);
            self.ops.push(Op::Bytes(Bytes::from(line)));
            self.write(&[]).await?;
        }
        Ok(Some(ReplyEnd::Tunnel))
    }

    async fn write(&mut self, buf: &[u8]) -> io::Result<u64> {
        let n = write_ops(&mut self.client, buf, &mut self.ops, &self.m.to_client).await?;
        if n > 0 {
            self.activity.touch();
        }
        self.total += n;
        Ok(n)
    }
}

/// Writes the engine's output in order: ranges of `buf`, or bytes the tunnel made; then
/// flushes, since a TLS writer may keep encrypted bytes back when the socket is full and
/// nothing else would push them out while the session waits for more input.
async fn write_ops<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    ops: &mut Vec<Op>,
    bytes: &Counter,
) -> io::Result<u64> {
    let mut total = 0;
    for op in ops.drain(..) {
        let data: &[u8] = match &op {
            Op::Fwd(r) => &buf[r.clone()],
            Op::Bytes(b) => b,
        };
        w.write_all(data).await?;
        total += data.len() as u64;
    }
    if total > 0 {
        w.flush().await?;
    }
    bytes.inc_by(total);
    Ok(total)
}
