//! RESP: the streaming scanner ([`scan`]), command classification ([`command`]), the session
//! engine ([`engine`]), what may go over a shared session ([`share`]); and here, the little RESP the tunnel itself speaks: encoding its own
//! commands (AUTH, ROLE, PING, RESET) and reading their replies.

pub mod command;
pub mod engine;
pub mod memory;
pub mod scan;
pub mod share;

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply to the tunnel's own commands (AUTH, ROLE, PING, RESET) it will buffer.
const MAX_REPLY: usize = 64 * 1024;

/// Appends `args` as a RESP multibulk command. Multibulk (not inline) so that a password with
/// spaces or quotes reaches the server byte for byte.
pub fn encode_command(buf: &mut BytesMut, args: &[&[u8]]) {
    use std::io::Write as _;
    let mut w = Vec::with_capacity(16);
    let _ = write!(w, "*{}\r\n", args.len());
    buf.extend_from_slice(&w);
    for arg in args {
        w.clear();
        let _ = write!(w, "${}\r\n", arg.len());
        buf.extend_from_slice(&w);
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
}

/// `AUTH [user] password` as the bytes to send. Built when needed, so the secret lives only in
/// the config's [`crate::config::Secret`] between uses.
pub fn auth_command(creds: &crate::config::Credentials) -> bytes::Bytes {
    let mut cmd = BytesMut::new();
    let password = creds.password.expose().as_bytes();
    match &creds.username {
        Some(user) => encode_command(&mut cmd, &[b"AUTH", user.as_bytes(), password]),
        None => encode_command(&mut cmd, &[b"AUTH", password]),
    }
    cmd.freeze()
}

/// Reads one complete RESP2 frame from `r` (decoded by `redis-protocol`), keeping any bytes
/// after it in `buf`. For the tunnel's own handshake and health-check replies only.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
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
                return Err(ReplyError::Unexpected(printable(&head)));
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(ReplyError::Unexpected("reply too long".into()));
        }
        if r.read_buf(buf).await? == 0 {
            return Err(ReplyError::Closed);
        }
    }
}

/// Why a reply to the tunnel's own command could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("connection closed by the server")]
    Closed,
    #[error("{0}")]
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
    encode_command(&mut cmd, args);
    s.write_all(&cmd).await?;
    s.flush().await?;
    read_frame(s, buf).await
}

/// The role word of a `ROLE` reply (`master`, `slave`, `sentinel`).
pub fn role_of(reply: &OwnedFrame) -> Option<String> {
    match reply {
        OwnedFrame::Array(items) => match items.first()? {
            OwnedFrame::BulkString(word) => Some(String::from_utf8_lossy(word).into_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// Makes text safe to put inside a one-line RESP error or a log line.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_multibulk() {
        let mut b = BytesMut::new();
        encode_command(&mut b, &[b"AUTH", b"user", b"p w\r\n"]);
        assert_eq!(
            &b[..],
            b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$5\r\np w\r\n\r\n"
        );
    }

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
        assert_eq!(role_of(&role).as_deref(), Some("slave"));
        assert_eq!(role_of(&OwnedFrame::Integer(1)), None);
    }
}
