//! RESP: the streaming scanner ([`scan`]), command classification ([`command`]), the session
//! engine ([`engine`]); and here, the little RESP the tunnel itself speaks while dialling:
//! encoding its own commands and reading their one-line replies.

pub mod command;
pub mod engine;
pub mod memory;
pub mod scan;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest one-line reply accepted while dialling; anything longer is not a reply to AUTH/PING.
const MAX_LINE: usize = 64 * 1024;

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
) -> Result<redis_protocol::resp2::types::OwnedFrame, ReplyError> {
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
        if buf.len() > MAX_LINE {
            return Err(ReplyError::Unexpected("reply too long".into()));
        }
        if r.read_buf(buf).await? == 0 {
            return Err(ReplyError::Closed);
        }
    }
}

/// A one-line reply: `+OK` → `Ok("OK")`, `-WRONGPASS …` → `Err("WRONGPASS …")`.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Status(String),
    Error(String),
}

/// Why a one-line reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("connection closed by the server")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply `{0}`")]
    Unexpected(String),
}

/// Reads one `+…\r\n` or `-…\r\n` line from `r`, keeping any bytes after it in `buf` so nothing
/// the server sent is lost.
pub async fn read_line<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Line, ReplyError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 2);
            return match line.as_bytes().first() {
                Some(b'+') => Ok(Line::Status(line[1..].to_owned())),
                Some(b'-') => Ok(Line::Error(line[1..].to_owned())),
                _ => Err(ReplyError::Unexpected(printable(&line))),
            };
        }
        if buf.len() > MAX_LINE {
            return Err(ReplyError::Unexpected(printable(&String::from_utf8_lossy(
                &buf[..80],
            ))));
        }
        if r.read_buf(buf).await? == 0 {
            return Err(ReplyError::Closed);
        }
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
    async fn reads_lines_and_keeps_the_rest() {
        let mut input: &[u8] = b"+OK\r\n-WRONGPASS invalid\r\n+PONG";
        let mut buf = BytesMut::new();
        assert_eq!(
            read_line(&mut input, &mut buf).await.unwrap(),
            Line::Status("OK".into())
        );
        assert_eq!(
            read_line(&mut input, &mut buf).await.unwrap(),
            Line::Error("WRONGPASS invalid".into())
        );
        assert!(matches!(
            read_line(&mut input, &mut buf).await,
            Err(ReplyError::Closed)
        ));
        assert_eq!(&buf[..], b"+PONG");
        let mut input: &[u8] = b"$3\r\nfoo\r\n";
        assert!(matches!(
            read_line(&mut input, &mut BytesMut::new()).await,
            Err(ReplyError::Unexpected(_))
        ));
    }
}
