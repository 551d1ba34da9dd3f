//! The tunnel's own conversation on an upstream session: one command of its own (PING, ROLE,
//! RESET, AUTH) and its reply, decoded with `redis-protocol`.

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto;

/// Longest reply to the tunnel's own commands (AUTH, ROLE, PING, RESET) it will buffer.
const MAX_REPLY: usize = 64 * 1024;

/// Reads one complete RESP2 frame from `r`, keeping any bytes after it in `buf`. For the
/// tunnel's own handshake and health-check replies only.
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
                return Err(ReplyError::Unexpected(proto::printable(&head)));
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
    proto::encode_command(&mut cmd, args);
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
        assert_eq!(role_of(&role).as_deref(), Some("slave"));
        assert_eq!(role_of(&OwnedFrame::Integer(1)), None);
    }
}
