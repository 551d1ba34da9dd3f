//! `protocol = "raw"`: both directions copied independently, for TLS services that are not
//! Redis. When one side finishes sending (EOF) the other is told with a half-close and the
//! opposite direction keeps flowing; an error on either side ends both, since the session is
//! then broken.

use std::io;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::activity::Activity;
use super::read_or_eof;
use crate::limits::READ_BUF;
use crate::ops::metrics::ListenerMetrics;
use crate::upstream::conn::Conn;

/// Forwards until both directions are done; returns the bytes each way.
pub(super) async fn forward(
    client: &mut TcpStream,
    up: Conn,
    m: &ListenerMetrics,
    first: Option<Instant>,
    activity: &Activity,
) -> io::Result<(u64, u64)> {
    let mut first = first.map(|t| (&m.first_reply, t));
    if !up.leftover.is_empty() {
        client.write_all(&up.leftover).await?;
        first = None;
    }
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = tokio::io::split(up.stream);
    tokio::try_join!(
        pipe(client_rd, up_wr, &m.to_upstream, None, activity),
        pipe(up_rd, client_wr, &m.to_client, first, activity)
    )
}

/// Copies until EOF; `first` observes the time to the first byte forwarded.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    bytes: &Counter,
    mut first: Option<(&Histogram, Instant)>,
    activity: &Activity,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        let n = match read_or_eof(from.read(&mut buf).await)? {
            0 => break,
            n => n,
        };
        activity.touch();
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
