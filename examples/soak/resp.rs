//! A minimal RESP2 client: enough to drive the tunnel and to talk to the servers directly.

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One reply, as RESP2 carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A short rendering for diagnostics.
    pub fn brief(&self) -> String {
        let s = format!("{self:?}");
        s.chars().take(120).collect()
    }
}

/// Appends `args` as one multibulk request.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

pub fn command(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode(&mut out, &args);
    out
}

/// A connection: replies are read through a buffer, requests written straight through.
pub struct Conn<S> {
    io: BufReader<S>,
}

/// How long a reply may take before the driver gives up on the connection: longer than the
/// tunnel's `shared_reply_timeout` (30 s), so the tunnel's own verdict comes first.
pub const REPLY_WAIT: Duration = Duration::from_secs(45);

impl<S: AsyncRead + Unpin> Conn<S> {
    pub fn new(s: S) -> Self {
        Conn {
            io: BufReader::with_capacity(64 * 1024, s),
        }
    }

    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// The next reply, or a timeout error after [`REPLY_WAIT`].
    pub async fn read(&mut self) -> io::Result<Reply> {
        match tokio::time::timeout(REPLY_WAIT, self.read_frame()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply")),
        }
    }

    async fn read_frame(&mut self) -> io::Result<Reply> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at(1);
        let rest = String::from_utf8_lossy(rest).into_owned();
        Ok(match kind[0] {
            b'+' => Reply::Status(rest),
            b'-' => Reply::Error(rest),
            b':' => Reply::Int(number(&rest)?),
            b'$' => match number(&rest)? {
                n if n < 0 => Reply::Bulk(None),
                n => Reply::Bulk(Some(self.payload(n as usize).await?)),
            },
            b'*' => match number(&rest)? {
                n if n < 0 => Reply::Array(None),
                n => {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(Box::pin(self.read_frame()).await?);
                    }
                    Reply::Array(Some(items))
                }
            },
            _ => return Err(invalid(format!("not RESP2: {line:?}"))),
        })
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        if self.io.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        if !line.ends_with(b"\r\n") || line.len() < 3 {
            return Err(invalid(format!("truncated line {line:?}")));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    async fn payload(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n + 2];
        self.io.read_exact(&mut buf).await?;
        if !buf.ends_with(b"\r\n") {
            return Err(invalid("bulk string without CRLF".into()));
        }
        buf.truncate(n);
        Ok(buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.io.get_mut();
        s.write_all(bytes).await?;
        s.flush().await
    }

    pub async fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        self.send(&command(args)).await?;
        self.read().await
    }
}

fn number(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| invalid(format!("bad number {s:?}")))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

pub type Plain = Conn<TcpStream>;
pub type Tls = Conn<tokio_rustls::client::TlsStream<TcpStream>>;

/// A plain connection to a tunnel listener.
pub async fn plain(addr: std::net::SocketAddr) -> io::Result<Plain> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))??;
    s.set_nodelay(true)?;
    Ok(Conn::new(s))
}

/// A TLS connection straight to a server (not through the tunnel), authenticated.
pub async fn direct(tls: &Arc<rustls::ClientConfig>, port: u16, token: &str) -> io::Result<Tls> {
    let connect = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
    };
    let s = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))??;
    let mut c = Conn::new(s);
    match c.call(&["AUTH", token]).await? {
        Reply::Status(_) => Ok(c),
        other => Err(io::Error::other(format!("AUTH: {}", other.brief()))),
    }
}
