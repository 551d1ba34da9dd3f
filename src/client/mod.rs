//! One client: on the listener's shared sessions while its commands allow (`shared`), then on
//! a session of its own through the RESP engine (`own`) or as a byte pipe (`raw`); or
//! refused with one `-ERR ectunnel:` line when the upstream cannot be reached.

mod activity;
mod own;
mod raw;
mod shared;

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use self::activity::Activity;
use crate::config::Protocol;
use crate::limits::{AUTH_DEADLINE, LINGER};
use crate::listener::{Handle, Listener};
use crate::ops::metrics::Limit;
use crate::upstream::DialError;

/// Serves one accepted client to completion.
pub async fn serve(mut client: TcpStream, peer: SocketAddr, handle: Handle) {
    let accepted = Instant::now();
    let l = handle.borrow().clone();
    let _counted = l.metrics.client_guard();
    let _ = crate::net::tune(&client, l.config.keepalive);
    let activity = Activity::new(&l.config);
    let mut start = own::Start::fresh(accepted);
    if l.config.protocol == Protocol::Resp && l.mux.enabled() {
        match shared::serve(&mut client, &handle, accepted, &activity).await {
            Ok(shared::Next::Own(s)) => {
                tracing::debug!(listener = %l.config.name, client = %peer, "client needs a session of its own");
                start = s;
            }
            Ok(shared::Next::Done) => return,
            Ok(shared::Next::Linger) => return Box::pin(linger(client)).await,
            Ok(shared::Next::Expired(limit)) => return Box::pin(expired(client, &l, limit)).await,
            Ok(shared::Next::Refuse(e)) => {
                log_refused(&l, peer, &e);
                return Box::pin(refuse(client, &e)).await;
            }
            Err(e) => {
                tracing::debug!(listener = %l.config.name, client = %peer, error = %e, "session ended by an error");
                return;
            }
        }
    }
    drop(l);
    // Boxed: this part's state (a dial, both directions, the RESET on give-back) would
    // otherwise be in every client's task, also while it idles on shared sessions.
    Box::pin(own::serve(client, peer, handle, start, &activity)).await
}

/// A limit ends the client: idle past `client_idle_timeout`, closed without a word as Redis
/// closes a client past its `timeout`; or not authenticated within [`AUTH_DEADLINE`], told why.
async fn expired(client: TcpStream, l: &Listener, limit: Limit) {
    l.metrics.limit_hit(limit);
    tracing::debug!(listener = %l.config.name, limit = limit.as_str(), "client closed by a limit");
    if limit == Limit::AuthTimeout {
        let line = format!(
            "-ERR ectunnel: client_auth: no AUTH within {}s; closing\r\n",
            AUTH_DEADLINE.as_secs()
        );
        refuse_line(client, &line).await;
    }
}

/// Sends the one `-ERR ectunnel: …` line, then closes with [`linger`].
/// A client refused for want of a session: at WARN, or at DEBUG when it is the outage the pool
/// already logged.
fn log_refused(l: &Listener, peer: SocketAddr, e: &DialError) {
    if l.pool.outage_logged(e) {
        tracing::debug!(listener = %l.config.name, client = %peer, "{e}");
    } else {
        tracing::warn!(listener = %l.config.name, client = %peer, "{e}");
    }
}

async fn refuse(client: TcpStream, e: &DialError) {
    refuse_line(client, &format!("-ERR ectunnel: {e}\r\n")).await;
}

/// Sends one error line (a whole RESP error, CRLF included), then closes with [`linger`].
pub async fn refuse_line(mut client: TcpStream, line: &str) {
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

/// Redis closes TLS connections without close_notify; for forwarding purposes that is EOF.
fn read_or_eof(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}
