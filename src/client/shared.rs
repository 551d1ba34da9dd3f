//! A client on the listener's shared upstream sessions, for as long as it sends only plain data
//! commands (which ones: [`crate::resp::share`]). At its first other command (AUTH, SELECT, MULTI,
//! SUBSCRIBE, a blocking command, anything unknown), or a request too long to hold whole, it
//! gets every reply it is owed, then leaves this loop to continue on a session of its own,
//! starting with that command: connection state is then exactly what it would be directly.
//!
//! While idle it holds no buffer and no upstream session: a read buffer is taken when the
//! socket is readable, and a shared session only while replies are owed.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::ready;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::io::poll_read_buf;

use crate::proto::share::{self, Splitter};
use crate::upstream::Pool;
use crate::upstream::mux::{Batch, Cut, Delivery, Shared, Sink};

/// Read size while the client is active.
const READ_BUF: usize = 16 * 1024;

/// Replies owed beyond which the client is not read until some are delivered.
const MAX_OWED: u64 = 1024;

/// Request bytes sent and not yet answered beyond which the client is not read either: a
/// slow server must not make the tunnel queue what TCP would have held back.
const MAX_IN_FLIGHT: usize = 1024 * 1024;

/// Where the client goes from here.
pub enum Next {
    /// It left, and everything it was owed went out.
    Done,
    /// The tunnel ended it (malformed input, QUIT, or it fell too far behind): close
    /// gracefully.
    Linger,
    /// Its next request needs a session of its own; `input` is everything not yet sent.
    Own {
        input: BytesMut,
        replied: bool,
        /// It gave the tunnel's password (`client_auth = "require"`).
        authed: bool,
    },
}

/// Why the client is no longer read.
enum Stop {
    Eof,
    Own(BytesMut),
    Malformed(Bytes),
}

/// What a client has sent on shared sessions and is still owed replies for.
#[derive(Default)]
struct InFlight {
    /// Per batch: replies still owed, and its size.
    batches: VecDeque<(u32, usize)>,
    replies: u64,
    bytes: usize,
}

impl InFlight {
    fn sent(&mut self, replies: u32, bytes: usize) {
        self.batches.push_back((replies, bytes));
        self.replies += u64::from(replies);
        self.bytes += bytes;
    }

    /// `n` replies arrived, the oldest batches' first.
    fn answered(&mut self, mut n: u64) {
        self.replies = self.replies.saturating_sub(n);
        while n > 0
            && let Some((left, bytes)) = self.batches.front_mut()
        {
            let k = n.min(u64::from(*left));
            *left -= k as u32;
            n -= k;
            if *left == 0 {
                self.bytes -= *bytes;
                self.batches.pop_front();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.replies == 0
    }

    /// Enough is owed that the client is not read until some of it is answered.
    fn full(&self) -> bool {
        self.replies >= MAX_OWED || self.bytes >= MAX_IN_FLIGHT
    }
}

/// Serves the client on shared sessions until it leaves or needs a session of its own.
pub async fn serve(
    client: &mut TcpStream,
    pool: &Pool,
    slot: usize,
    accepted: Instant,
) -> io::Result<Next> {
    let mux = pool.mux();
    let l = pool.listener();
    let mut splitter = Splitter::new(l.client_auth.clone(), l.auth.clone());
    let (sink, mut rx) = Sink::new();
    // The shared session in use, kept only while replies are owed on it.
    let mut on: Option<Arc<Shared>> = None;
    let mut owed = InFlight::default();
    // Requests scanned but not sent yet, and a request the tunnel answers after them.
    let mut waiting: Option<(Bytes, u32)> = None;
    let mut local: Option<(&'static [u8], bool, usize)> = None;
    let mut stop: Option<Stop> = None;
    let mut buf = BytesMut::new();
    let mut rescan = false;
    let mut first = Some(accepted);
    loop {
        if owed.is_empty() {
            on = None;
        }
        // Requests that must wait for a retired session's replies go out once those are in.
        if let Some((bytes, replies)) = waiting.take() {
            if on.as_ref().is_some_and(|s| s.is_retired()) {
                waiting = Some((bytes, replies));
            } else {
                let shared = match on.take() {
                    Some(s) => s,
                    None => match mux.get(slot, pool).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(listener = %l.name, "no shared session: {e}");
                            let line = format!("-ERR ectunnel: {e}\r\n");
                            client
                                .write_all(line.repeat(replies as usize).as_bytes())
                                .await?;
                            first = None;
                            continue;
                        }
                    },
                };
                owed.sent(replies, bytes.len());
                pool.metrics().shared_requests.inc_by(u64::from(replies));
                shared.send(Batch {
                    bytes,
                    replies,
                    to: sink.clone(),
                });
                on = Some(shared);
            }
        }
        if owed.is_empty() && waiting.is_none() {
            if let Some((reply, quit, skip)) = local.take() {
                client.write_all(reply).await?;
                first = None;
                if quit {
                    return Ok(Next::Linger);
                }
                let _ = buf.split_to(skip);
                rescan = true;
            }
            if !rescan {
                match stop.take() {
                    None => {}
                    Some(Stop::Eof) => {
                        client.shutdown().await?;
                        return Ok(Next::Done);
                    }
                    Some(Stop::Own(input)) => {
                        return Ok(Next::Own {
                            input,
                            replied: first.is_none(),
                            authed: splitter.authed(),
                        });
                    }
                    Some(Stop::Malformed(line)) => {
                        client.write_all(&line).await?;
                        return Ok(Next::Linger);
                    }
                }
            }
        }
        if rescan && waiting.is_none() && local.is_none() && stop.is_none() {
            rescan = false;
            let split = splitter.split(&buf);
            let bytes = buf.split_to(split.len).freeze();
            if split.replies > 0 {
                waiting = Some((bytes, split.replies));
            }
            match split.stop {
                None => {}
                Some(share::Stop::Own) => stop = Some(Stop::Own(std::mem::take(&mut buf))),
                Some(share::Stop::Malformed(line)) => stop = Some(Stop::Malformed(line)),
                Some(share::Stop::Local { reply, quit, len }) => local = Some((reply, quit, len)),
            }
            if buf.is_empty() {
                // Idle clients hold no buffer; its memory goes once the batch is written.
                buf = BytesMut::new();
            }
            continue;
        }
        let read = stop.is_none() && waiting.is_none() && local.is_none() && !owed.full();
        tokio::select! {
            biased;
            d = rx.recv() => {
                let Some(d) = d else { return Ok(Next::Done) };
                let (replies, close) = write_deliveries(client, &sink, d, &mut rx).await?;
                owed.answered(replies);
                if let Some(t) = first.take() {
                    pool.metrics().first_reply.observe(t.elapsed().as_secs_f64());
                }
                if let Some(cut) = close {
                    tracing::warn!(listener = %l.name, "client disconnected: {}", cut.why());
                    return Ok(Next::Done);
                }
            }
            n = read_when_ready(client, &mut buf), if read => {
                if n? == 0 {
                    stop = Some(Stop::Eof);
                } else {
                    rescan = true;
                }
            }
        }
    }
}

/// Reads once the socket is readable, taking a buffer only then, so an idle client holds none.
/// (A short read also tells tokio the socket is drained, saving a read that would block.)
async fn read_when_ready(client: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        ready!(client.poll_read_ready(cx))?;
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        poll_read_buf(Pin::new(&mut *client), cx, buf)
    })
    .await
}

/// Writes a delivery and whatever else has arrived, in one write where there are several.
/// Returns the replies they completed and, when the client must now be closed, why.
async fn write_deliveries(
    client: &mut TcpStream,
    sink: &Sink,
    d: Delivery,
    rx: &mut UnboundedReceiver<Delivery>,
) -> io::Result<(u64, Option<Cut>)> {
    let (mut replies, mut close) = (u64::from(d.replies), d.close);
    let mut out = d.bytes;
    if close.is_none()
        && let Ok(next) = rx.try_recv()
    {
        let mut joined = BytesMut::from(&out[..]);
        let mut next = Some(next);
        while let Some(d) = next.take() {
            joined.extend_from_slice(&d.bytes);
            replies += u64::from(d.replies);
            close = d.close;
            if close.is_none() && joined.len() < READ_BUF * 4 {
                next = rx.try_recv().ok();
            }
        }
        out = joined.freeze();
    }
    // A client that does not read blocks this write; being cut off must still end it.
    tokio::select! {
        r = client.write_all(&out) => r?,
        cut = sink.cut_off() => return Ok((replies, Some(cut))),
    }
    sink.taken(out.len());
    Ok((replies, close))
}
