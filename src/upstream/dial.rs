//! DNS → TCP → TLS → AUTH (+ ROLE), each stage under `connect_timeout`, each failure named by
//! its stage; with several candidates (or addresses) and a `role`, the first that matches.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::conn;
use crate::config::{ListenerConfig, Role, Upstream};
use crate::proto;

/// The step of a dial that failed; it is the `<stage>` of the client's `-ERR ectunnel:` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Dns,
    Connect,
    Tls,
    Auth,
    /// No candidate had the configured `role`.
    Role,
    /// Only `check --connect` sends a PING after AUTH.
    Ping,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Role => "role",
            Stage::Ping => "ping",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// A ready session: TLS up and, when configured, authenticated and of the right role.
pub struct Dialed {
    pub stream: TlsStream<TcpStream>,
    /// The address DNS gave this time (it changes on failover).
    pub peer: SocketAddr,
    /// Which of the listener's candidates it reached.
    pub candidate: usize,
    /// Whatever the server sent after the handshake replies; forwarded to the client first.
    pub leftover: BytesMut,
    /// What `ROLE` said, when it was asked.
    pub role: Option<String>,
    pub created: Instant,
    /// Counts this session in `ectunnel_upstream_sessions_open` while it lives.
    pub open: Option<crate::ops::metrics::GaugeGuard>,
}

/// Dials the listener's upstream. DNS is resolved here, every time, never cached: the primary
/// endpoint's name moves to the new primary on failover.
pub async fn dial(l: &ListenerConfig) -> Result<Dialed, DialError> {
    let mut wrong_role: Vec<String> = Vec::new();
    let mut last = None;
    for (i, up) in l.upstreams.iter().enumerate() {
        match dial_candidate(l, up, i, &mut wrong_role).await {
            Ok(d) => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    if !wrong_role.is_empty() && last.as_ref().is_none_or(|e| e.stage == Stage::Role) {
        return Err(DialError {
            stage: Stage::Role,
            upstream: l.upstream_list(),
            reason: format!("no {} found: {}", l.role, wrong_role.join(", ")),
        });
    }
    Err(last.unwrap_or_else(|| DialError {
        stage: Stage::Dns,
        upstream: l.upstream_list(),
        reason: "no upstream configured".into(),
    }))
}

async fn dial_candidate(
    l: &ListenerConfig,
    up: &Upstream,
    candidate: usize,
    wrong_role: &mut Vec<String>,
) -> Result<Dialed, DialError> {
    let t = l.connect_timeout;
    let fail = |stage, reason: String| DialError {
        stage,
        upstream: up.addr.to_string(),
        reason: proto::printable(&reason),
    };
    let host = (up.addr.host.as_str(), up.addr.port);
    let addrs: Vec<SocketAddr> = timeout(t, tokio::net::lookup_host(host))
        .await
        .map_err(|_| fail(Stage::Dns, timed_out(t)))?
        .map_err(|e| fail(Stage::Dns, e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(fail(Stage::Dns, "the name has no addresses".into()));
    }
    // Name the address in errors unless the upstream already is that address.
    let name_addrs = up.addr.host.parse::<std::net::IpAddr>().is_err();
    let mut last = None;
    for addr in addrs {
        let label = |e: String| {
            if name_addrs {
                format!("{addr}: {e}")
            } else {
                e
            }
        };
        let tcp = match timeout(t, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                last = Some(fail(Stage::Connect, label(e.to_string())));
                continue;
            }
            Err(_) => {
                last = Some(fail(Stage::Connect, label(timed_out(t))));
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            last = Some(fail(Stage::Connect, label(e.to_string())));
            continue;
        }
        // A failure past TCP on one address (say, a node hanging in TLS mid-failover) moves on
        // to the next address; the last failure is what the client is told.
        let connector = TlsConnector::from(l.tls.clone());
        let mut stream = match timeout(t, connector.connect(up.server_name.clone(), tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last = Some(fail(Stage::Tls, e.to_string()));
                continue;
            }
            Err(_) => {
                last = Some(fail(Stage::Tls, timed_out(t)));
                continue;
            }
        };
        let mut leftover = BytesMut::new();
        let role = match timeout(t, handshake(&mut stream, l, &mut leftover)).await {
            Ok(Ok(role)) => role,
            Ok(Err((stage, reason))) => {
                last = Some(fail(stage, reason));
                continue;
            }
            Err(_) => {
                last = Some(fail(Stage::Auth, timed_out(t)));
                continue;
            }
        };
        if let Some(r) = &role
            && !l.role.matches(r)
        {
            wrong_role.push(format!("{addr} is {r}"));
            last = Some(fail(Stage::Role, format!("{addr} is {r}, not {}", l.role)));
            continue;
        }
        tracing::debug!(
            listener = %l.name,
            upstream = %up.addr,
            peer = %addr,
            tls = ?stream.get_ref().1.protocol_version(),
            handshake = ?stream.get_ref().1.handshake_kind(),
            role = role.as_deref().unwrap_or("-"),
            "upstream session ready"
        );
        return Ok(Dialed {
            stream,
            peer: addr,
            candidate,
            leftover,
            role,
            created: Instant::now(),
            open: None,
        });
    }
    Err(last.unwrap_or_else(|| fail(Stage::Connect, "no address could be reached".into())))
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(t))
}

/// Sends `AUTH` and, for a `role`, `ROLE`, pipelined in one round trip, and checks both replies
/// before any client byte may pass. The server's error text (`WRONGPASS …`) is the reason shown
/// to the client; it never contains the password. Returns what `ROLE` said.
async fn handshake(
    stream: &mut TlsStream<TcpStream>,
    l: &ListenerConfig,
    leftover: &mut BytesMut,
) -> Result<Option<String>, (Stage, String)> {
    let mut cmd = BytesMut::new();
    if let Some(creds) = &l.auth {
        cmd.extend_from_slice(&proto::auth_command(creds));
    }
    let ask_role = l.role != Role::Any;
    if ask_role {
        proto::encode_command(&mut cmd, &[b"ROLE"]);
    }
    if cmd.is_empty() {
        return Ok(None);
    }
    let io = |stage| move |e: io::Error| (stage, e.to_string());
    stream.write_all(&cmd).await.map_err(io(Stage::Auth))?;
    stream.flush().await.map_err(io(Stage::Auth))?;
    drop(cmd);
    if l.auth.is_some() {
        match conn::read_frame(stream, leftover).await {
            Ok(OwnedFrame::SimpleString(_)) => {}
            Ok(OwnedFrame::Error(e)) => return Err((Stage::Auth, e)),
            Ok(other) => return Err((Stage::Auth, format!("unexpected reply {other:?}"))),
            Err(e) => return Err((Stage::Auth, e.to_string())),
        }
    }
    if !ask_role {
        return Ok(None);
    }
    match conn::read_frame(stream, leftover).await {
        Ok(reply @ OwnedFrame::Array(_)) => conn::role_of(&reply)
            .map(Some)
            .ok_or((Stage::Role, "ROLE reply without a role".into())),
        Ok(OwnedFrame::Error(e)) => Err((Stage::Role, e)),
        Ok(other) => Err((Stage::Role, format!("unexpected ROLE reply {other:?}"))),
        Err(e) => Err((Stage::Role, e.to_string())),
    }
}
