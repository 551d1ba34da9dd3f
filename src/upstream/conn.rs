//! An upstream session once dialled ([`Conn`]: the TLS stream and where it reached), and the
//! tunnel's own conversation on it: one command of its own (PING, HELLO, ROLE, RESET, AUTH)
//! and its reply, decoded with `redis-protocol`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::admission::Slot;
use crate::config::Role;
use crate::limits::MAX_OWN_REPLY as MAX_REPLY;
use crate::ops::metrics::GaugeGuard;
use crate::proto;
use crate::proto::scan::{Dir, Scanner};

/// A ready session: TLS up and, when configured, authenticated and of the right role.
pub struct Conn {
    pub stream: TlsStream<TcpStream>,
    pub at: At,
    /// Whatever the server sent after the handshake replies; forwarded to the client first.
    pub leftover: BytesMut,
    pub created: Instant,
    /// When it last authenticated (dialled, or re-AUTHed after a RESET): an IAM session must
    /// authenticate again before the server's 12-hour cut.
    pub authed: Instant,
    /// Counts this session while it lives; set by the pool once the dial succeeded.
    pub open: Option<Open>,
}

/// A session counted in `ectunnel_upstream_sessions_open` and against `max_sessions`.
pub struct Open {
    _gauge: GaugeGuard,
    _slot: Slot,
}

impl Open {
    pub fn new(gauge: GaugeGuard, slot: Slot) -> Open {
        Open {
            _gauge: gauge,
            _slot: slot,
        }
    }
}

/// Where a session is: the node it reached and what that node was then. Every part of the
/// tunnel that holds a session asks the node authority ([`super::Node`]) whether this is still
/// where the upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// The address DNS gave this time (it changes on failover).
    pub peer: SocketAddr,
    /// Which of the listener's candidates it reached.
    pub candidate: usize,
    /// What the node said it was when dialled (`HELLO`'s `role`, or `ROLE`), if it said.
    pub role: Option<NodeRole>,
    /// The node authority's generation when the session was made.
    pub born: u64,
    /// The server said it runs in cluster mode (`HELLO`'s `mode`).
    pub cluster: bool,
}

/// A node's replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Replica,
}

impl NodeRole {
    /// From `HELLO`'s `role` (`master` / `replica`) or `ROLE`'s first word (`master` / `slave`).
    pub fn from_word(word: &[u8]) -> Option<NodeRole> {
        match word {
            b"master" => Some(NodeRole::Primary),
            b"replica" | b"slave" => Some(NodeRole::Replica),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
        })
    }
}

/// Whether a node that said it is `reported` (or said nothing) may serve a listener with `role`.
pub fn admits(role: Role, reported: Option<NodeRole>) -> bool {
    match role {
        Role::Any => true,
        Role::Primary => reported == Some(NodeRole::Primary),
        Role::Replica => reported == Some(NodeRole::Replica),
    }
}

/// The `role` of a `HELLO` reply (RESP2: a flat array of keys and values).
pub fn hello_role(reply: &OwnedFrame) -> Option<NodeRole> {
    hello_field(reply, b"role").and_then(NodeRole::from_word)
}

/// Whether a `HELLO` reply says `mode` `cluster`.
pub fn hello_cluster(reply: &OwnedFrame) -> bool {
    hello_field(reply, b"mode") == Some(b"cluster")
}

fn hello_field<'a>(reply: &'a OwnedFrame, key: &[u8]) -> Option<&'a [u8]> {
    let OwnedFrame::Array(items) = reply else {
        return None;
    };
    items.chunks(2).find_map(|kv| match kv {
        [OwnedFrame::BulkString(k), OwnedFrame::BulkString(v)] if k == key => Some(&v[..]),
        _ => None,
    })
}

/// Reads one complete reply of any RESP2/RESP3 type and returns its bytes; the rest stays in
/// `buf`. For replies the tunnel only needs to see the end and the type of (`HELLO 3`).
pub async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<BytesMut, ReplyError> {
    let mut scan = Scanner::new(Dir::Reply);
    let mut at = 0;
    loop {
        if at < buf.len() {
            let (n, done) = scan
                .feed(&buf[at..])
                .map_err(|e| ReplyError::Unexpected(e.to_string()))?;
            at += n;
            if done {
                return Ok(buf.split_to(at));
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(ReplyError::Unexpected("reply too long".into()));
        }
        fill(r, buf).await?;
    }
}

/// Reads one complete RESP2 frame from `r`, keeping any bytes after it in `buf`. For the
/// tunnel's own handshake and health-check replies only.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<OwnedFrame, ReplyError> {
    read_frame_max(r, buf, MAX_REPLY).await
}

/// [`read_frame`] for a reply up to `max` bytes long (a cluster's topology).
pub async fn read_frame_max<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<OwnedFrame, ReplyError> {
    loop {
        match redis_protocol::resp2::decode::decode(buf) {
            Ok(Some((frame, n))) => {
                buf.advance(n);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(_) => {
                let head = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
                return Err(ReplyError::Unexpected(proto::printable(&head)));
            }
        }
        if buf.len() > max {
            return Err(ReplyError::Unexpected("reply too long".into()));
        }
        fill(r, buf).await?;
    }
}

/// Reads more of a reply into `buf`. Redis closes TLS connections without close_notify, which
/// rustls reports as an error: that is the server closing too, and is said so (rather than with
/// rustls's wording and a link to its manual, which would reach the client's `-ERR ectunnel:`).
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<(), ReplyError> {
    match r.read_buf(buf).await {
        Ok(0) => Err(ReplyError::Closed),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReplyError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Why a reply to the tunnel's own command could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("connection closed by the server")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("unexpected reply `{0}`")]
    Unexpected(String),
}

/// Sends one command of the tunnel's own (PING, ROLE) and reads its reply; bytes after the
/// reply stay in `buf`. Flushes: a TLS writer may hold encrypted bytes back otherwise.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    args: &[&[u8]],
    buf: &mut BytesMut,
) -> Result<OwnedFrame, ReplyError> {
    let mut cmd = BytesMut::new();
    proto::encode_command(&mut cmd, args);
    s.write_all(&cmd).await?;
    s.flush().await?;
    read_frame(s, buf).await
}

/// The role of a `ROLE` reply (`master` or `slave` first).
pub fn role_of(reply: &OwnedFrame) -> Option<NodeRole> {
    match reply {
        OwnedFrame::Array(items) => match items.first()? {
            OwnedFrame::BulkString(word) => NodeRole::from_word(word),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_replies_and_keeps_the_rest() {
        let mut input: &[u8] = b"+OK\r\n-WRONGPASS invalid\r\n+PONG";
        let mut buf = BytesMut::new();
        assert_eq!(
            read_frame(&mut input, &mut buf).await.unwrap(),
            OwnedFrame::SimpleString(b"OK".to_vec())
        );
        assert_eq!(
            read_frame(&mut input, &mut buf).await.unwrap(),
            OwnedFrame::Error("WRONGPASS invalid".into())
        );
        assert!(matches!(
            read_frame(&mut input, &mut buf).await,
            Err(ReplyError::Closed)
        ));
        assert_eq!(&buf[..], b"+PONG");
        let mut input: &[u8] = b"?what\r\n";
        assert!(matches!(
            read_frame(&mut input, &mut BytesMut::new()).await,
            Err(ReplyError::Unexpected(_))
        ));
        let role = OwnedFrame::Array(vec![OwnedFrame::BulkString(b"slave".to_vec())]);
        assert_eq!(role_of(&role), Some(NodeRole::Replica));
        assert_eq!(role_of(&OwnedFrame::Integer(1)), None);
    }

    /// What rustls reports when the server closes without close_notify, as Redis does.
    struct NoCloseNotify;

    impl AsyncRead for NoCloseNotify {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify",
            );
            std::task::Poll::Ready(Err(e))
        }
    }

    #[tokio::test]
    async fn a_server_closing_without_close_notify_is_a_server_closing() {
        let mut buf = BytesMut::from(&b"+O"[..]);
        let e = read_frame(&mut NoCloseNotify, &mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), "connection closed by the server");
        let e = read_raw(&mut NoCloseNotify, &mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), "connection closed by the server");
    }

    #[tokio::test]
    async fn reads_the_role_of_a_hello_reply_and_whole_resp3_replies() {
        let hello = b"*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$5\r\nproto\r\n:2\r\n";
        let mut input: &[u8] = hello;
        let frame = read_frame(&mut input, &mut BytesMut::new()).await.unwrap();
        assert_eq!(hello_role(&frame), Some(NodeRole::Primary));
        assert!(!hello_cluster(&frame));
        let cluster = b"*4\r\n$4\r\nmode\r\n$7\r\ncluster\r\n$4\r\nrole\r\n$5\r\nslave\r\n";
        let mut input: &[u8] = cluster;
        let frame = read_frame(&mut input, &mut BytesMut::new()).await.unwrap();
        assert!(hello_cluster(&frame));
        assert_eq!(hello_role(&frame), Some(NodeRole::Replica));
        let map = b"%1\r\n$4\r\nrole\r\n$7\r\nreplica\r\n+PONG\r\n";
        let mut input: &[u8] = &map[..7];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_raw(&mut input, &mut buf).await,
            Err(ReplyError::Closed)
        ));
        let mut input: &[u8] = &map[7..];
        let got = read_raw(&mut input, &mut buf).await.unwrap();
        assert_eq!(&got[..], &map[..map.len() - 7]);
        assert_eq!(&buf[..], b"+PONG\r\n");
    }
}
