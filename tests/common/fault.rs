//! A TCP relay between the tunnel and a real redis-server that does to the bytes what networks
//! do: pass them, delay them, drip them one at a time (every reply split across reads), hold
//! them (a peer that vanished without a reset), reset the connection in the middle of a reply,
//! or close it cleanly in the middle of a TLS record. It relays TLS records untouched (the
//! tunnel still talks TLS to the server behind it) and only reads their headers, to know where
//! one can be cut in two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk, either way, waits this long before it is passed on.
    Delay(Duration),
    /// Server → tunnel bytes go one at a time, each in a write of its own.
    Drip,
    /// Nothing moves either way; connections stay open.
    Hold,
    /// Each connection passes on this many more server → tunnel bytes, then both of its sockets
    /// are reset (RST): in the middle of a reply when one spans the cut.
    Reset(usize),
    /// Each connection passes on part of the next TLS record from the server, then both of its
    /// sockets close cleanly (FIN): a truncated record.
    Truncate,
}

/// The relay, listening on an ephemeral loopback port; its tasks end with the test's runtime.
pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cut: Arc<AtomicUsize>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel(Mode::Pass);
        let cut = Arc::new(AtomicUsize::new(0));
        let counted = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                // Every write goes out at once, as its own packet: without this, Nagle would
                // hold a drip's bytes back, and a reset would discard what it held.
                for s in [&client, &server] {
                    let _ = s.set_nodelay(true);
                }
                tokio::spawn(connection(
                    client,
                    server,
                    watching.clone(),
                    counted.clone(),
                ));
            }
        });
        Relay { addr, mode, cut }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections reset or truncated so far.
    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::Relaxed)
    }
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its source closed; the half-close was passed on and the other direction goes on.
    Eof,
    /// The whole connection closes now, cleanly.
    Close,
    /// The whole connection is reset.
    Reset,
}

async fn connection(
    mut client: TcpStream,
    mut server: TcpStream,
    mode: watch::Receiver<Mode>,
    cut: Arc<AtomicUsize>,
) {
    let end = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pipe(cr, sw, mode.clone(), false);
        let down = pipe(sr, cw, mode, true);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                e = &mut up, if !up_done => { up_done = true; e }
                e = &mut down, if !down_done => { down_done = true; e }
            };
            if end != End::Eof || (up_done && down_done) {
                break end;
            }
        }
    };
    if end == End::Reset {
        for s in [&client, &server] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    if end != End::Eof {
        cut.fetch_add(1, Ordering::Relaxed);
    }
    // Dropped here: closed with a FIN, or with a RST under a zero linger.
}

/// One direction; `replies` is server → tunnel, the one that drips, resets and truncates.
async fn pipe(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
    replies: bool,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    let mut records = Records::default();
    // While resetting: what may still pass before the reset.
    let mut reset_left = None;
    loop {
        if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
            return End::Close;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(now) = mode.wait_for(|m| *m != Mode::Hold).await.map(|m| *m) else {
            return End::Close;
        };
        let (pass, end) = match now {
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                (n, None)
            }
            Mode::Reset(after) if replies => {
                let left = reset_left.get_or_insert(after);
                let pass = n.min(*left);
                *left -= pass;
                (pass, (*left == 0).then_some(End::Reset))
            }
            Mode::Truncate if replies => (records.cut(&buf[..n]), Some(End::Close)),
            _ => (n, None),
        };
        if !matches!(now, Mode::Reset(_)) {
            reset_left = None;
        }
        records.feed(&buf[..pass]);
        let step = if replies && now == Mode::Drip { 1 } else { n };
        for chunk in buf[..pass].chunks(step) {
            if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
                return End::Close;
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
    let _ = to.shutdown().await;
    End::Eof
}

/// Where the TLS records in a byte stream begin (a 5-byte header: type, version, length).
#[derive(Default)]
struct Records {
    header: Vec<u8>,
    body_left: usize,
}

impl Records {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(data.len());
                self.body_left -= k;
                data = &data[k..];
                continue;
            }
            let k = (5 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..k]);
            data = &data[k..];
            if let [_, _, _, hi, lo] = self.header[..] {
                self.body_left = usize::from(u16::from_be_bytes([hi, lo]));
                self.header.clear();
            }
        }
    }

    /// How much of `data` (what comes next) to pass on so that a record is left cut in two.
    fn cut(&self, data: &[u8]) -> usize {
        match data {
            // In the middle of one already: pass nothing more.
            _ if !self.header.is_empty() || self.body_left > 0 => 0,
            // The header and half the body, never the whole record.
            [_, _, _, hi, lo, ..] => {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                (4 + len.div_ceil(2)).min(data.len())
            }
            // Not even a whole header.
            _ => data.len(),
        }
    }
}
