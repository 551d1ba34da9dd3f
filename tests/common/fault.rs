//! A TCP relay between the tunnel and a real redis-server that does to the bytes what networks
//! do: pass them, drip them one at a time (every reply split across reads), or hold them (a
//! peer that vanished without a reset). It relays TLS records untouched; the tunnel still talks
//! TLS to the server behind it.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Server → tunnel bytes go one at a time, each in a write of its own.
    Drip,
    /// Nothing moves either way; connections stay open.
    Hold,
}

/// The relay, listening on an ephemeral loopback port; its tasks end with the test's runtime.
pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel(Mode::Pass);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(relay(cr, sw, watching.clone(), false));
                tokio::spawn(relay(sr, cw, watching.clone(), true));
            }
        });
        Relay { addr, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn relay<R, W>(mut from: R, mut to: W, mut mode: watch::Receiver<Mode>, replies: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(now) = mode.wait_for(|m| *m != Mode::Hold).await.map(|m| *m) else {
            break;
        };
        let drip = replies && now == Mode::Drip;
        let step = if drip { 1 } else { n };
        for chunk in buf[..n].chunks(step) {
            if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}
