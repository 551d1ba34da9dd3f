//! One client: dial its upstream session, then forward bytes both ways until both sides are done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::ListenerConfig;
use crate::upstream::{self, DialError, Dialed};

/// Per-direction copy buffer. 16 KiB holds a full TLS record, so one read drains one record.
const BUF_SIZE: usize = 16 * 1024;

/// How long a refused client's connection is kept half-open to drain its input, so that the
/// `-ERR` reply is not destroyed by a reset when the client writes after the failure.
const LINGER: Duration = Duration::from_secs(5);

/// Serves one accepted client to completion.
pub async fn serve(client: TcpStream, peer: SocketAddr, listener: Arc<ListenerConfig>) {
    // Nagle would hold small replies back waiting for ACKs; RESP is request/response.
    let _ = client.set_nodelay(true);
    match upstream::dial(&listener).await {
        Ok(up) => {
            let upstream = up.peer;
            match forward(client, up).await {
                Ok((to_up, to_client)) => tracing::debug!(
                    listener = %listener.name, client = %peer, %upstream, to_up, to_client,
                    "session closed"
                ),
                Err(e) => tracing::debug!(
                    listener = %listener.name, client = %peer, %upstream, error = %e,
                    "session ended by an error"
                ),
            }
        }
        Err(e) => {
            tracing::warn!(listener = %listener.name, client = %peer, "{e}");
            refuse(client, &e).await;
        }
    }
}

/// Sends the one `-ERR ectunnel: …` line, then closes our sending side and drains what the
/// client still sends until it closes (bounded by [`LINGER`]). Closing with unread input would
/// make the kernel send a reset, which can discard the error before the client reads it.
async fn refuse(mut client: TcpStream, e: &DialError) {
    let line = format!("-ERR ectunnel: {e}\r\n");
    let _ = timeout(LINGER, async {
        client.write_all(line.as_bytes()).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 512];
        while client.read(&mut sink).await? != 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Forwards both directions independently. When one side finishes sending (EOF) the other side
/// is told with a half-close and the opposite direction keeps flowing; an error on either side
/// ends both, since the session is then broken. Returns bytes sent upstream and to the client.
async fn forward(mut client: TcpStream, up: Dialed) -> io::Result<(u64, u64)> {
    if !up.leftover.is_empty() {
        client.write_all(&up.leftover).await?;
    }
    let (client_rd, client_wr) = client.split();
    let (up_rd, up_wr) = tokio::io::split(up.stream);
    tokio::try_join!(pipe(client_rd, up_wr), pipe(up_rd, client_wr))
}

async fn pipe<R, W>(mut from: R, mut to: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // Redis closes TLS connections without close_notify; for a byte pipe that is EOF.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    to.shutdown().await?;
    Ok(total)
}
