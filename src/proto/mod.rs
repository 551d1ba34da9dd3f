//! RESP, pure: no I/O here. The streaming scanner ([`scan`]), what a request is and which
//! commands may be shared ([`command`]), the session engine ([`engine`]), what of a client's
//! input may go over a shared session ([`share`]), an in-memory driver for tests and benches
//! ([`memory`]), cluster node addresses in replies rewritten to local listeners ([`rewrite`]);
//! and here, encoding the tunnel's own commands (AUTH, HELLO, ROLE, PING, RESET).

pub mod command;
pub mod engine;
pub mod memory;
pub mod rewrite;
pub mod scan;
pub mod share;

use bytes::BytesMut;

/// The RESP version a connection speaks: 2 until a `HELLO 3`, and again after `RESET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespVersion {
    #[default]
    V2,
    V3,
}

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
}
