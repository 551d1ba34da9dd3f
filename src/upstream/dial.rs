//! DNS → TCP → TLS → AUTH, each stage under `connect_timeout`, each failure named by its stage.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Credentials, ListenerConfig};
use crate::resp::{self, Line};

/// The step of a dial that failed; it is the `<stage>` of the client's `-ERR ectunnel:` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Dns,
    Connect,
    Tls,
    Auth,
    /// Only `check --connect` sends a PING after AUTH.
    Ping,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Ping => "ping",
        })
    }
}

/// Why an upstream session could not be made. Its `Display` is exactly what follows
/// `-ERR ectunnel: ` in the client's reply and what the WARN log line says.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage} {upstream}: {reason}")]
pub struct DialError {
    pub stage: Stage,
    pub upstream: String,
    pub reason: String,
}

/// A ready session: TLS up and, when configured, authenticated.
pub struct Dialed {
    pub stream: TlsStream<TcpStream>,
    /// The address DNS gave this time (it changes on failover).
    pub peer: SocketAddr,
    /// Whatever the server sent after the AUTH reply; forwarded to the client first.
    pub leftover: BytesMut,
}

/// Dials the listener's upstream. DNS is resolved here, every time, never cached: the primary
/// endpoint's name moves to the new primary on failover.
pub async fn dial(l: &ListenerConfig) -> Result<Dialed, DialError> {
    let t = l.connect_timeout;
    let fail = |stage, reason: String| DialError {
        stage,
        upstream: l.upstream.to_string(),
        reason: resp::printable(&reason),
    };
    let host = (l.upstream.host.as_str(), l.upstream.port);
    let addrs: Vec<SocketAddr> = timeout(t, tokio::net::lookup_host(host))
        .await
        .map_err(|_| fail(Stage::Dns, timed_out(t)))?
        .map_err(|e| fail(Stage::Dns, e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(fail(Stage::Dns, "the name has no addresses".into()));
    }
    // Name the address in connect errors unless the upstream already is that address.
    let name_addrs = l.upstream.host.parse::<std::net::IpAddr>().is_err();
    let (tcp, peer) = timeout(t, connect_any(&addrs, name_addrs))
        .await
        .map_err(|_| fail(Stage::Connect, timed_out(t)))?
        .map_err(|e| fail(Stage::Connect, e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| fail(Stage::Connect, e.to_string()))?;
    let connector = TlsConnector::from(l.tls.clone());
    let mut stream = timeout(t, connector.connect(l.server_name.clone(), tcp))
        .await
        .map_err(|_| fail(Stage::Tls, timed_out(t)))?
        .map_err(|e| fail(Stage::Tls, e.to_string()))?;
    let mut leftover = BytesMut::new();
    if let Some(creds) = &l.auth {
        timeout(t, authenticate(&mut stream, creds, &mut leftover))
            .await
            .map_err(|_| fail(Stage::Auth, timed_out(t)))?
            .map_err(|reason| fail(Stage::Auth, reason))?;
    }
    tracing::debug!(
        listener = %l.name,
        upstream = %l.upstream,
        %peer,
        tls = ?stream.get_ref().1.protocol_version(),
        handshake = ?stream.get_ref().1.handshake_kind(),
        "upstream session ready"
    );
    Ok(Dialed {
        stream,
        peer,
        leftover,
    })
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(t))
}

/// Tries each resolved address in turn, as a client library would, and reports the last error.
async fn connect_any(
    addrs: &[SocketAddr],
    name_addrs: bool,
) -> io::Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, *addr)),
            Err(e) if name_addrs => last = Some(io::Error::new(e.kind(), format!("{addr}: {e}"))),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
}

/// Sends `AUTH` and checks its reply before any client byte may pass. The reply's error text
/// (`WRONGPASS …`) is the reason shown to the client; it never contains the password.
async fn authenticate(
    stream: &mut TlsStream<TcpStream>,
    creds: &Credentials,
    leftover: &mut BytesMut,
) -> Result<(), String> {
    let mut cmd = BytesMut::new();
    let password = creds.password.expose().as_bytes();
    match &creds.username {
        Some(user) => resp::encode_command(&mut cmd, &[b"AUTH", user.as_bytes(), password]),
        None => resp::encode_command(&mut cmd, &[b"AUTH", password]),
    }
    stream.write_all(&cmd).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    match resp::read_line(stream, leftover).await {
        Ok(Line::Status(_)) => Ok(()),
        Ok(Line::Error(e)) => Err(e),
        Err(e) => Err(e.to_string()),
    }
}
