//! DNS → TCP → TLS → AUTH + HELLO, each stage under `connect_timeout`, each failure named by its
//! stage; with several candidates (or addresses) and a `role`, the first that matches.

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

use super::conn::{self, At, Conn, NodeRole};
use super::resolve::Resolver;
use crate::auth::{Auth, Candidate};
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
    /// No dial: `max_sessions` were open and none was freed in time.
    Limit,
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
            Stage::Limit => "limit",
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage} {upstream}: {reason}")]
pub struct DialError {
    pub stage: Stage,
    pub upstream: String,
    pub reason: String,
}

impl DialError {
    /// The message without a final period, for a log line that goes on after it (a server's
    /// reason is often a sentence: `…disabled.; retrying` reads as a typo).
    pub fn clause(&self) -> String {
        let mut s = self.to_string();
        let kept = s.trim_end().trim_end_matches('.').len();
        s.truncate(kept);
        s
    }
}

/// Dials the listener's upstream. DNS is resolved here, every time, never cached: the primary
/// endpoint's name moves to the new primary on failover. The session's [`At::born`] is left for
/// the node authority to set.
pub async fn dial(l: &ListenerConfig, resolver: &Resolver, auth: &Auth) -> Result<Conn, DialError> {
    let creds = auth
        .candidates(l.connect_timeout)
        .await
        .map_err(|reason| DialError {
            stage: Stage::Auth,
            upstream: l.upstream_list(),
            reason,
        })?;
    let how = How {
        creds: &creds,
        auth,
    };
    let mut wrong_role: Vec<String> = Vec::new();
    let mut last = None;
    for (i, up) in l.upstreams.iter().enumerate() {
        match dial_candidate(l, resolver, up, i, &how, &mut wrong_role).await {
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

/// How a session authenticates: the credentials to try in order, and whom to tell which one
/// the server took.
struct How<'a> {
    creds: &'a [Candidate],
    auth: &'a Auth,
}

async fn dial_candidate(
    l: &ListenerConfig,
    resolver: &Resolver,
    up: &Upstream,
    candidate: usize,
    how: &How<'_>,
    wrong_role: &mut Vec<String>,
) -> Result<Conn, DialError> {
    let t = l.connect_timeout;
    let fail = |stage, reason: String| DialError {
        stage,
        upstream: up.addr.to_string(),
        reason: proto::printable(&reason),
    };
    let addrs = timeout(t, resolver.lookup(&up.addr.host, up.addr.port))
        .await
        .map_err(|_| fail(Stage::Dns, timed_out(t)))?
        .map_err(|e| fail(Stage::Dns, e.to_string()))?;
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
        // A failure past TCP on one address (say, a node hanging in TLS mid-failover) moves on
        // to the next address; the last failure is what the client is told.
        let (stream, leftover, (role, cluster)) = match reach(l, up, addr, how).await {
            Ok(r) => r,
            Err((stage, e)) if stage == Stage::Connect => {
                last = Some(fail(stage, label(e)));
                continue;
            }
            Err((stage, e)) => {
                last = Some(fail(stage, e));
                continue;
            }
        };
        if !conn::admits(l.role, role) {
            let is = role.map_or_else(|| "of unknown role".to_owned(), |r| r.to_string());
            wrong_role.push(format!("{addr} is {is}"));
            last = Some(fail(Stage::Role, format!("{addr} is {is}, not {}", l.role)));
            continue;
        }
        tracing::debug!(
            listener = %l.name,
            upstream = %up.addr,
            peer = %addr,
            tls = ?stream.get_ref().1.protocol_version(),
            handshake = ?stream.get_ref().1.handshake_kind(),
            role = role.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            "upstream session ready"
        );
        let at = At {
            peer: addr,
            candidate,
            role,
            born: 0,
            cluster,
        };
        return Ok(Conn {
            stream,
            at,
            leftover,
            created: Instant::now(),
            authed: Instant::now(),
            open: None,
        });
    }
    Err(last.unwrap_or_else(|| fail(Stage::Connect, "no address could be reached".into())))
}

/// What the handshake learnt of the node: its role, and whether it runs in cluster mode.
type Learnt = (Option<NodeRole>, bool);

type Reached = (TlsStream<TcpStream>, BytesMut, Learnt);

/// TCP, TLS and the handshake commands to one address.
async fn reach(
    l: &ListenerConfig,
    up: &Upstream,
    addr: SocketAddr,
    how: &How<'_>,
) -> Result<Reached, (Stage, String)> {
    let t = l.connect_timeout;
    let tcp = match timeout(t, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err((Stage::Connect, e.to_string())),
        Err(_) => return Err((Stage::Connect, timed_out(t))),
    };
    crate::net::tune(&tcp, l.keepalive).map_err(|e| (Stage::Connect, e.to_string()))?;
    let connector = TlsConnector::from(l.tls.clone());
    let mut stream = match timeout(t, connector.connect(up.server_name.clone(), tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((Stage::Tls, tls_failed(&e))),
        Err(_) => return Err((Stage::Tls, format!("{} {NO_TLS}", timed_out(t)))),
    };
    let mut leftover = BytesMut::new();
    match timeout(t, handshake(&mut stream, l, how, &mut leftover)).await {
        Ok(Ok(learnt)) => Ok((stream, leftover, learnt)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err((Stage::Auth, timed_out(t))),
    }
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(t))
}

/// What a handshake that gets no TLS back most often means: a wrong port, or a cluster with
/// in-transit encryption off (a plain Redis reads the ClientHello as a command, answers `-ERR`
/// or closes, or waits for the end of the line).
const NO_TLS: &str =
    "(the server did not answer in TLS: is the port right and in-transit encryption on?)";

/// The reason for a failed handshake, with [`NO_TLS`] when the server answered with something
/// that is not TLS or hung up without a word; a TLS answer (a certificate problem, an alert)
/// speaks for itself.
fn tls_failed(e: &io::Error) -> String {
    let not_tls = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        // What a plain-text reply (`-ERR …`, `+…`) parses as when read as a TLS record.
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
            | rustls::InvalidMessage::UnknownProtocolVersion,
        )) => true,
        Some(_) => false,
        None => matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
    };
    if not_tls {
        format!("{e} {NO_TLS}")
    } else {
        e.to_string()
    }
}

/// Sends `AUTH` and `HELLO 2`, pipelined in one round trip, and checks both replies before any
/// client byte may pass. During a rotation a `WRONGPASS` moves on to the next password (the
/// server the tunnel was told about last is tried first). The server's error text
/// (`WRONGPASS …`) is the reason shown to the client; it never contains the password. Returns
/// the node's role from HELLO (an ACL user may run HELLO where it may not run the admin command
/// ROLE); only a listener with a `role` falls back to `ROLE` when HELLO says nothing (servers
/// before Redis 6). And whether HELLO says cluster mode.
async fn handshake(
    stream: &mut TlsStream<TcpStream>,
    l: &ListenerConfig,
    how: &How<'_>,
    leftover: &mut BytesMut,
) -> Result<Learnt, (Stage, String)> {
    let hello = authenticate_any(stream, how, leftover).await?;
    let cluster = conn::hello_cluster(&hello);
    let role = match conn::hello_role(&hello) {
        Some(role) => Some(role),
        None if l.role == Role::Any => None,
        None => ask_role(stream, leftover).await?,
    };
    Ok((role, cluster))
}

/// Authenticates with the first candidate the server accepts; only a `WRONGPASS` moves on.
async fn authenticate_any(
    stream: &mut TlsStream<TcpStream>,
    how: &How<'_>,
    leftover: &mut BytesMut,
) -> Result<OwnedFrame, (Stage, String)> {
    let Some((last, rest)) = how.creds.split_last() else {
        return authenticate(stream, None, leftover)
            .await?
            .map_err(|e| how.refused(e));
    };
    for c in rest {
        match authenticate(stream, Some(c), leftover).await? {
            Ok(hello) => return Ok(how.accepted(c, hello)),
            Err(e) if crate::auth::refused(&e) => {}
            Err(e) => return Err(how.refused(e)),
        }
    }
    match authenticate(stream, Some(last), leftover).await? {
        Ok(hello) => Ok(how.accepted(last, hello)),
        Err(e) => Err(how.refused(e)),
    }
}

impl How<'_> {
    fn accepted(&self, c: &Candidate, hello: OwnedFrame) -> OwnedFrame {
        self.auth.accepted(c.index);
        hello
    }

    /// The server's refusal, with what it most likely means here.
    fn refused(&self, e: String) -> (Stage, String) {
        let hint = if crate::auth::refused(&e) {
            self.auth.refusal_hint()
        } else {
            ""
        };
        (Stage::Auth, format!("{e}{hint}"))
    }
}

/// One `AUTH` (if any) and `HELLO 2` in one round trip: `Ok(Err(reason))` is the server's
/// refusal of the AUTH, after its HELLO reply has been read too.
async fn authenticate(
    stream: &mut TlsStream<TcpStream>,
    c: Option<&Candidate>,
    leftover: &mut BytesMut,
) -> Result<Result<OwnedFrame, String>, (Stage, String)> {
    let mut cmd = BytesMut::new();
    if let Some(c) = c {
        cmd.extend_from_slice(&proto::auth_command(&c.credentials));
    }
    proto::encode_command(&mut cmd, &[b"HELLO", b"2"]);
    let io = |e: io::Error| (Stage::Auth, e.to_string());
    stream.write_all(&cmd).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    drop(cmd);
    let read = |e: conn::ReplyError| (Stage::Auth, e.to_string());
    let refused = match c {
        None => None,
        Some(_) => match conn::read_frame(stream, leftover).await.map_err(read)? {
            OwnedFrame::SimpleString(_) => None,
            OwnedFrame::Error(e) => Some(e),
            other => return Err((Stage::Auth, format!("unexpected reply {other:?}"))),
        },
    };
    let hello = conn::read_frame(stream, leftover).await.map_err(read)?;
    Ok(refused.map_or(Ok(hello), Err))
}

async fn ask_role(
    stream: &mut TlsStream<TcpStream>,
    leftover: &mut BytesMut,
) -> Result<Option<NodeRole>, (Stage, String)> {
    match conn::request(stream, &[b"ROLE"], leftover).await {
        Ok(reply @ OwnedFrame::Array(_)) => conn::role_of(&reply)
            .map(Some)
            .ok_or((Stage::Role, "ROLE reply without a role".into())),
        Ok(OwnedFrame::Error(e)) => Err((Stage::Role, e)),
        Ok(other) => Err((Stage::Role, format!("unexpected ROLE reply {other:?}"))),
        Err(e) => Err((Stage::Role, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_answered_without_tls_gets_the_hint_and_a_tls_refusal_does_not() {
        let garbage = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = io::Error::new(io::ErrorKind::InvalidData, garbage);
        assert!(tls_failed(&e).ends_with(NO_TLS), "{}", tls_failed(&e));
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(tls_failed(&eof), format!("tls handshake eof {NO_TLS}"));
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = io::Error::new(io::ErrorKind::InvalidData, cert);
        assert_eq!(tls_failed(&e), "invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn a_reason_ending_in_a_period_loses_it_mid_sentence() {
        let e = |reason: &str| DialError {
            stage: Stage::Auth,
            upstream: "h:1".into(),
            reason: reason.into(),
        };
        assert_eq!(
            e("ERR this is disabled.").clause(),
            "auth h:1: ERR this is disabled"
        );
        assert_eq!(e("WRONGPASS x").clause(), "auth h:1: WRONGPASS x");
    }
}
