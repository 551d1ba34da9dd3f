//! A client on the listener's shared upstream sessions, for as long as it sends only plain data
//! commands ([`command::shareable`]). At its first other command (AUTH, SELECT, MULTI,
//! SUBSCRIBE, a blocking command, anything unknown), or a request too long to hold whole, it
//! gets every reply it is owed, then leaves this loop to continue on a session of its own,
//! starting with that command: connection state is then exactly what it would be directly.
//!
//! While idle it holds no buffer and no upstream session: a read buffer is taken when the
//! socket is readable, and a shared session only while replies are owed.

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

use crate::config::{ClientAuth, Credentials};
use crate::resp::command::{self, Cmd};
use crate::resp::engine::{HOLD_LIMIT, credentials_match};
use crate::resp::scan::{Dir, FrameInfo, Scanner};
use crate::upstream::Pool;
use crate::upstream::shared::{Batch, Delivery, Shared, Sink};

/// Read size while the client is active.
const READ_BUF: usize = 16 * 1024;

/// Replies owed beyond which the client is not read until some are delivered.
const MAX_OWED: u64 = 4096;

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

/// What to do with one complete request frame.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Send it on the shared session; it expects this many replies (0 or 1).
    Share(u32),
    /// Answer it here, once the replies before it are out; then close if `quit`.
    Local { reply: &'static [u8], quit: bool },
    /// It needs a session of its own.
    Own,
}

/// The client's standing, for deciding what may be shared.
struct Gate<'a> {
    policy: &'a ClientAuth,
    inject: Option<&'a Credentials>,
    /// `require` mode: the client gave the tunnel's password.
    authed: bool,
}

impl Gate<'_> {
    fn decide(&mut self, frame: &[u8], info: &FrameInfo) -> Decision {
        let inline = info.kind != b'*';
        let name = if inline {
            match command::inline_name(frame) {
                Some(n) => n,
                None => return Decision::Share(0), // an empty line: ignored, no reply
            }
        } else if info.argc <= 0 {
            return Decision::Share(0); // `*0`, `*-1`: ignored, no reply
        } else {
            let (off, len) = info.args[0];
            match frame.get(off as usize..(off + len) as usize) {
                Some(n) => n,
                None => return Decision::Own,
            }
        };
        let args = || {
            if inline {
                command::inline_args(frame)
            } else {
                command::multibulk_args(frame)
            }
        };
        match command::classify(name) {
            Cmd::Auth => self.auth(args()),
            // QUIT would close a shared session for everyone; answered here as Redis would.
            Cmd::Quit => Decision::Local {
                reply: b"+OK\r\n",
                quit: true,
            },
            _ if matches!(self.policy, ClientAuth::Require(_)) && !self.authed => Decision::Own,
            // Unbalanced quotes make Redis close the connection: not on a shared one.
            _ if command::shareable(name) && (!inline || args().is_some()) => Decision::Share(1),
            _ => Decision::Own,
        }
    }

    /// `AUTH` is answered here when its answer is known: `absorb` says OK to any, `require`
    /// to the tunnel's password, `passthrough` to the very credentials the shared sessions
    /// were authenticated with (what the server would answer). Anything else is the server's
    /// to judge, on a session of the client's own.
    fn auth(&mut self, args: Option<Vec<Vec<u8>>>) -> Decision {
        let args = args.unwrap_or_default();
        let (user, pass) = match args.len() {
            2 => (&b"default"[..], &args[1][..]),
            3 => (&args[1][..], &args[2][..]),
            _ => return Decision::Own,
        };
        let ok = match self.policy {
            ClientAuth::Absorb => true,
            ClientAuth::Require(c) => credentials_match(c, user, pass),
            ClientAuth::Passthrough => self
                .inject
                .is_some_and(|c| credentials_match(c, user, pass)),
        };
        if !ok {
            return Decision::Own;
        }
        self.authed = true;
        Decision::Local {
            reply: b"+OK\r\n",
            quit: false,
        }
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
    let mut gate = Gate {
        policy: &l.client_auth,
        inject: l.auth.as_ref(),
        authed: false,
    };
    let (sink, mut rx) = Sink::new();
    // The shared session in use, kept only while replies are owed on it.
    let mut on: Option<Arc<Shared>> = None;
    let mut owed = 0u64;
    // Requests scanned but not sent yet, and a request the tunnel answers after them.
    let mut waiting: Option<(Bytes, u32)> = None;
    let mut local: Option<(&'static [u8], bool, usize)> = None;
    let mut stop: Option<Stop> = None;
    let mut buf = BytesMut::new();
    let mut scan = Scanner::new(Dir::Request);
    // Bytes at the start of `buf` already scanned: part of a frame still arriving.
    let mut held = 0usize;
    let mut rescan = false;
    let mut first = Some(accepted);
    loop {
        if owed == 0 {
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
                owed += u64::from(replies);
                shared.send(Batch {
                    bytes,
                    replies,
                    to: sink.clone(),
                });
                on = Some(shared);
            }
        }
        if owed == 0 && waiting.is_none() {
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
                            authed: gate.authed,
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
            let (len, replies, end) = split(&buf, &mut scan, &mut held, &mut gate);
            let bytes = buf.split_to(len).freeze();
            if replies > 0 {
                waiting = Some((bytes, replies));
            }
            match end {
                None => {}
                Some(Split::Own) => stop = Some(Stop::Own(std::mem::take(&mut buf))),
                Some(Split::Malformed(line)) => stop = Some(Stop::Malformed(line)),
                Some(Split::Local { reply, quit, len }) => local = Some((reply, quit, len)),
            }
            if buf.is_empty() {
                // Idle clients hold no buffer; its memory goes once the batch is written.
                buf = BytesMut::new();
            }
            continue;
        }
        let read = stop.is_none() && waiting.is_none() && local.is_none() && owed < MAX_OWED;
        tokio::select! {
            biased;
            d = rx.recv() => {
                let Some(d) = d else { return Ok(Next::Done) };
                let (replies, close) = write_deliveries(client, &sink, d, &mut rx).await?;
                owed = owed.saturating_sub(replies);
                if let Some(t) = first.take() {
                    pool.metrics().first_reply.observe(t.elapsed().as_secs_f64());
                }
                if let Some(why) = close {
                    tracing::warn!(listener = %l.name, "client disconnected: {why}");
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

/// Where scanning a buffer stopped early.
enum Split {
    /// At a request that needs the client's own session.
    Own,
    /// At malformed input: the error to send once the replies before it are out.
    Malformed(Bytes),
    /// At a request of `len` bytes the tunnel answers itself.
    Local {
        reply: &'static [u8],
        quit: bool,
        len: usize,
    },
}

/// Scans `buf` (from `held`): how many bytes of complete shareable requests it starts with,
/// how many replies they expect, and why it stopped before the end, if it did.
fn split(
    buf: &[u8],
    scan: &mut Scanner,
    held: &mut usize,
    gate: &mut Gate<'_>,
) -> (usize, u32, Option<Split>) {
    let (mut i, mut start, mut replies) = (*held, 0, 0u32);
    *held = 0;
    while i < buf.len() {
        let (n, done) = match scan.feed(&buf[i..]) {
            Ok(r) => r,
            Err(e) => {
                let line = format!("-ERR ectunnel: protocol error: {e}\r\n");
                return (start, replies, Some(Split::Malformed(Bytes::from(line))));
            }
        };
        i += n;
        if !done {
            if i - start > HOLD_LIMIT || scan.info().longest_arg > HOLD_LIMIT as u64 {
                return (start, replies, Some(Split::Own));
            }
            break;
        }
        match gate.decide(&buf[start..i], scan.info()) {
            Decision::Share(r) => replies += r,
            Decision::Own => return (start, replies, Some(Split::Own)),
            Decision::Local { reply, quit } => {
                let len = i - start;
                return (start, replies, Some(Split::Local { reply, quit, len }));
            }
        }
        start = i;
    }
    *held = i - start;
    (start, replies, None)
}

/// Writes a delivery and whatever else has arrived, in one write where there are several.
/// Returns the replies they completed and, when the client must now be closed, why.
async fn write_deliveries(
    client: &mut TcpStream,
    sink: &Sink,
    d: Delivery,
    rx: &mut UnboundedReceiver<Delivery>,
) -> io::Result<(u64, Option<&'static str>)> {
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
    client.write_all(&out).await?;
    sink.taken(out.len());
    Ok((replies, close))
}
