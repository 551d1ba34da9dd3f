//! One client: take an upstream session from the pool, then forward both directions until both
//! are done: through the RESP engine (`protocol = "resp"`) or as a byte pipe (`"raw"`). A RESP
//! session whose client leaves cleanly goes back to the pool; one pinned to a demoted node is
//! closed at its next reply boundary. With `pool.multiplex` a RESP client first runs on the
//! listener's shared sessions ([`shared`]) and takes a session of its own only when it needs one.

mod shared;

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::{Protocol, Role};
use crate::lock;
use crate::proto::engine::{Entry, Fifo, Op, Replies, Requests};
use crate::upstream::{DialError, Dialed, Pool};

/// Read buffer per direction. 16 KiB holds a full TLS record, so one read drains one record.
const BUF_SIZE: usize = 16 * 1024;

/// Entries in the reply FIFO beyond which the client is not read until replies drain.
const MAX_PENDING: usize = 4096;

/// How long a closed client's connection is kept half-open to drain its input, so that our
/// last reply is not destroyed by a reset when the client writes after it.
const LINGER: Duration = Duration::from_secs(5);

/// Serves one accepted client to completion.
pub async fn serve(mut client: TcpStream, peer: SocketAddr, pool: Pool) {
    let accepted = Instant::now();
    let _counted = pool.metrics().client_guard();
    // Nagle would hold small replies back waiting for ACKs; RESP is request/response.
    let _ = client.set_nodelay(true);
    let mut own = Own {
        input: BytesMut::new(),
        first: Some(accepted),
        authed: false,
    };
    let l = pool.listener();
    if l.protocol == Protocol::Resp && pool.mux().enabled() {
        // A shared session now, so that an upstream failure is explained at once, as it is
        // to a client with a session of its own.
        let slot = pool.mux().assign();
        if let Err(e) = pool.mux().get(slot, &pool).await {
            tracing::warn!(listener = %l.name, client = %peer, "{e}");
            return Box::pin(refuse(client, &e)).await;
        }
        match shared::serve(&mut client, &pool, slot, accepted).await {
            Ok(shared::Next::Own {
                input,
                replied,
                authed,
            }) => {
                tracing::debug!(listener = %l.name, client = %peer, "client needs a session of its own");
                own = Own {
                    input,
                    first: own.first.filter(|_| !replied),
                    authed,
                };
            }
            Ok(shared::Next::Done) => return,
            Ok(shared::Next::Linger) => return Box::pin(linger(client)).await,
            Err(e) => {
                tracing::debug!(listener = %l.name, client = %peer, error = %e, "session ended by an error");
                return;
            }
        }
    }
    // Boxed: this part's state (a dial, both directions, the RESET on give-back: ~4 KB) would
    // otherwise be in every client's task, also while it idles on shared sessions.
    Box::pin(serve_own(client, peer, &pool, own)).await
}

/// Where a client starts on a session of its own.
struct Own {
    /// What it sent that no session has seen yet.
    input: BytesMut,
    /// When it connected, if nothing was answered yet (for the first-reply histogram).
    first: Option<Instant>,
    /// It gave the tunnel's password already (`client_auth = "require"`).
    authed: bool,
}

/// The client on a session of its own: from the pool or dialled, forwarded until both sides
/// are done, then given back to the pool when that is safe.
async fn serve_own(mut client: TcpStream, peer: SocketAddr, pool: &Pool, own: Own) {
    let listener = pool.listener();
    pool.metrics().own_sessions.inc();
    let up = match pool.checkout().await {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!(listener = %listener.name, client = %peer, "{e}");
            refuse(client, &e).await;
            return;
        }
    };
    let upstream = up.peer;
    let result = match listener.protocol {
        Protocol::Raw => forward_raw(&mut client, up, pool, own.first).await,
        Protocol::Resp => forward_resp(&mut client, up, pool, own).await,
    };
    match result {
        Ok(end) => {
            tracing::debug!(listener = %listener.name, client = %peer, %upstream,
                to_up = end.to_up, to_client = end.to_client, after = end.after.describe(),
                "session closed");
            match end.after {
                After::Done => {}
                After::Reuse(up) => {
                    let _ = client.shutdown().await;
                    drop(client);
                    pool.give_back(*up).await;
                }
                After::Linger => linger(client).await,
            }
        }
        Err(e) => tracing::debug!(listener = %listener.name, client = %peer, %upstream,
            error = %e, "session ended by an error"),
    }
}

/// How a session ended.
struct End {
    to_up: u64,
    to_client: u64,
    after: After,
}

/// What is left to do once both directions have stopped.
enum After {
    /// Both sides closed; nothing.
    Done,
    /// The client left at a clean boundary: the upstream session may be reused.
    Reuse(Box<Dialed>),
    /// The tunnel ended it (malformed input, a demoted node): close the client gracefully.
    Linger,
}

impl After {
    fn describe(&self) -> &'static str {
        match self {
            After::Done => "closed",
            After::Reuse(_) => "upstream returned to the pool",
            After::Linger => "closed by the tunnel",
        }
    }
}

/// Sends the one `-ERR ectunnel: …` line, then closes with [`linger`].
async fn refuse(mut client: TcpStream, e: &DialError) {
    let line = format!("-ERR ectunnel: {e}\r\n");
    if timeout(LINGER, client.write_all(line.as_bytes()))
        .await
        .is_ok()
    {
        linger(client).await;
    }
}

/// Closes our sending side, then drains what the client still sends until it closes (bounded
/// by [`LINGER`]). Closing with unread input would make the kernel send a reset, which can
/// discard our last reply before the client reads it.
async fn linger(mut client: TcpStream) {
    let _ = timeout(LINGER, async {
        client.shutdown().await?;
        let mut sink = [0u8; 512];
        while client.read(&mut sink).await? != 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// `protocol = "raw"`: both directions copied independently. When one side finishes sending
/// (EOF) the other is told with a half-close and the opposite direction keeps flowing; an error
/// on either side ends both, since the session is then broken.
async fn forward_raw(
    client: &mut TcpStream,
    up: Dialed,
    pool: &Pool,
    first: Option<Instant>,
) -> io::Result<End> {
    let m = pool.metrics();
    let mut first = first.map(|t| (&m.first_reply, t));
    if !up.leftover.is_empty() {
        client.write_all(&up.leftover).await?;
        first = None;
    }
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = tokio::io::split(up.stream);
    let (to_up, to_client) = tokio::try_join!(
        pipe(client_rd, up_wr, &m.to_upstream, None),
        pipe(up_rd, client_wr, &m.to_client, first)
    )?;
    Ok(End {
        to_up,
        to_client,
        after: After::Done,
    })
}

/// Copies until EOF; `first` observes the time to the first byte forwarded.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    bytes: &Counter,
    mut first: Option<(&Histogram, Instant)>,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match read_or_eof(from.read(&mut buf).await)? {
            0 => break,
            n => n,
        };
        to.write_all(&buf[..n]).await?;
        // A TLS writer may keep encrypted bytes back when the socket is full; nothing else
        // would push them out while we wait for more input.
        to.flush().await?;
        if let Some((h, t)) = first.take() {
            h.observe(t.elapsed().as_secs_f64());
        }
        bytes.inc_by(n as u64);
        total += n as u64;
    }
    to.shutdown().await?;
    Ok(total)
}

/// Redis closes TLS connections without close_notify; for forwarding purposes that is EOF.
fn read_or_eof(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

/// What the two directions of a RESP session share.
struct Shared {
    fifo: Fifo,
    /// The reply side is between frames.
    reply_boundary: bool,
    /// The reply side lost track of replies; the request side must stop injecting.
    reply_opaque: bool,
}

/// How the reply direction ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplyEnd {
    /// The server closed; the client was told with a half-close.
    Eof,
    /// The client left cleanly and the server owes nothing: reusable.
    Clean,
    /// The tunnel ends the session (protocol error sent, or the node was demoted).
    Tunnel,
}

/// `protocol = "resp"`: the same two independent directions, each through its half of the
/// RESP engine, sharing the reply FIFO. A direction never waits for the other except through
/// the FIFO, so a client that pipelines without reading behaves as it would against Redis.
async fn forward_resp(
    client: &mut TcpStream,
    up: Dialed,
    pool: &Pool,
    own: Own,
) -> io::Result<End> {
    let Own {
        input,
        first,
        authed,
    } = own;
    let l = pool.listener();
    let m = pool.metrics();
    let shared = Mutex::new(Shared {
        fifo: Fifo::default(),
        reply_boundary: true,
        reply_opaque: false,
    });
    // Signalled by the reply side as it frees FIFO room.
    let room = Notify::new();
    let wake = Notify::new();
    let client_left_clean = AtomicBool::new(false);
    let stop_requests = CancellationToken::new();
    let mut epoch = pool.epoch();
    let mut requests = Requests::new(l.client_auth.clone(), l.auth.clone());
    if authed {
        requests.set_authed();
    }
    let mut replies = Replies::new();
    let Dialed {
        stream,
        peer,
        candidate,
        leftover,
        role,
        created,
        open,
    } = up;
    let (mut client_rd, mut client_wr) = client.split();
    let (mut up_rd, mut up_wr) = tokio::io::split(stream);
    let name = &l.name;
    let reuse = l.pool.reuse;

    let to_upstream = async {
        // What the client sent before it got this session is processed before anything new.
        let mut unread = !input.is_empty();
        let mut buf = input;
        let (mut ops, mut entries) = (Vec::new(), Vec::new());
        let mut total = 0u64;
        loop {
            if buf.capacity() - buf.len() < BUF_SIZE / 4 {
                buf.reserve(BUF_SIZE);
            }
            // Backpressure: a client that sends without reading stops being read once the
            // replies (and the tunnel's own answers) owed to it pile up.
            while lock(&shared).fifo.len() > MAX_PENDING {
                tokio::select! {
                    _ = room.notified() => {}
                    _ = stop_requests.cancelled() => return Ok(total),
                }
            }
            if lock(&shared).reply_opaque {
                requests.set_opaque();
            }
            let n = if std::mem::take(&mut unread) {
                buf.len()
            } else {
                tokio::select! {
                    r = client_rd.read_buf(&mut buf) => r?,
                    _ = stop_requests.cancelled() => return Ok(total),
                }
            };
            if n == 0 {
                break;
            }
            let progress = requests.process(&buf, &mut ops, &mut entries);
            if !entries.is_empty() {
                let wake_replies = entries
                    .iter()
                    .any(|e| !matches!(e, Entry::Client(_) | Entry::Swallow(_)));
                lock(&shared).fifo.extend(entries.drain(..));
                if wake_replies {
                    wake.notify_one();
                }
            }
            total += write_ops(&mut up_wr, &buf, &mut ops, &m.to_upstream).await?;
            buf.advance(progress.consumed);
            if progress.stop {
                // Nothing more is read from this client. The server answers what it got and,
                // seeing EOF (even mid-frame), closes; the error is sent after those replies.
                tracing::debug!(listener = %name, "malformed client input; closing after the pending replies");
                up_wr.shutdown().await?;
                return Ok(total);
            }
        }
        // The client is done sending. If nothing is owed either way, keep the upstream session
        // open for the next client; otherwise pass the half-close on, as a direct connection
        // would, so the replies still owed are delivered.
        let clean = reuse && requests.at_clean_boundary() && {
            let s = lock(&shared);
            s.fifo.is_empty() && s.reply_boundary && !s.reply_opaque
        };
        if clean {
            client_left_clean.store(true, Ordering::Release);
            wake.notify_one();
        } else {
            up_wr.shutdown().await?;
        }
        Ok::<_, io::Error>(total)
    };

    let to_client = async {
        let mut buf = BytesMut::with_capacity(BUF_SIZE);
        let mut ops = Vec::new();
        let mut total = 0u64;
        let mut draining = false;
        let mut first = first;
        if !leftover.is_empty() {
            buf.extend_from_slice(&leftover);
        }
        let end = loop {
            let progress = if buf.is_empty() {
                tokio::select! {
                    r = up_rd.read_buf(&mut buf) => {
                        if read_or_eof(r)? == 0 {
                            // Replies owed will not come; the tunnel's own still go out.
                            let close = replies.at_eof(&mut lock(&shared).fifo, &mut ops);
                            total += write_ops(&mut client_wr, &buf, &mut ops, &m.to_client).await?;
                            room.notify_one();
                            break if close { ReplyEnd::Tunnel } else { ReplyEnd::Eof };
                        }
                        continue;
                    }
                    _ = wake.notified() => {
                        if client_left_clean.load(Ordering::Acquire) {
                            break ReplyEnd::Clean;
                        }
                        if !replies.at_boundary() {
                            continue;
                        }
                        let close = replies.emit_ready(&mut lock(&shared).fifo, &mut ops);
                        room.notify_one();
                        total += write_ops(&mut client_wr, &buf, &mut ops, &m.to_client).await?;
                        if close {
                            break ReplyEnd::Tunnel;
                        }
                        continue;
                    }
                    changed = epoch.changed(), if !draining => {
                        if changed.is_err() || epoch.borrow_and_update().node.is_some_and(|n| n != peer) {
                            tracing::debug!(listener = %name, %peer, "node demoted; closing at the next reply boundary");
                            draining = true;
                            if replies.at_boundary() {
                                break ReplyEnd::Tunnel;
                            }
                        }
                        continue;
                    }
                }
            } else {
                let mut s = lock(&shared);
                let p = replies.process(&buf, &mut s.fifo, &mut ops);
                s.reply_boundary = replies.at_boundary();
                s.reply_opaque = replies.is_opaque();
                p
            };
            room.notify_one();
            for e in &progress.injected_errors {
                tracing::warn!(listener = %name, "the server refused the tunnel's re-AUTH after RESET: {e}");
            }
            let written = write_ops(&mut client_wr, &buf, &mut ops, &m.to_client).await?;
            if written > 0
                && let Some(t) = first.take()
            {
                m.first_reply.observe(t.elapsed().as_secs_f64());
            }
            total += written;
            buf.clear();
            if progress.close {
                break ReplyEnd::Tunnel;
            }
            // Only a primary can be demoted under us; a replica (or a reader endpoint) answers
            // writes with READONLY as a matter of course.
            if progress.demoted && l.role == Role::Primary {
                tracing::info!(listener = %name, %peer, "the node answered as a replica; closing this session");
                pool.demoted();
                draining = true;
            }
            if draining && replies.at_boundary() {
                break ReplyEnd::Tunnel;
            }
        };
        match end {
            ReplyEnd::Eof => client_wr.shutdown().await?,
            ReplyEnd::Clean => {}
            ReplyEnd::Tunnel => stop_requests.cancel(),
        }
        Ok::<_, io::Error>((total, end))
    };

    let (to_up, (to_client, end)) = tokio::try_join!(to_upstream, to_client)?;
    let after = match end {
        ReplyEnd::Eof => After::Done,
        ReplyEnd::Tunnel => After::Linger,
        ReplyEnd::Clean => After::Reuse(Box::new(Dialed {
            stream: up_rd.unsplit(up_wr),
            peer,
            candidate,
            leftover: BytesMut::new(),
            role,
            created,
            open,
        })),
    };
    Ok(End {
        to_up,
        to_client,
        after,
    })
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
