//! Test harness: certificates made at test time, a real TLS `redis-server` on an ephemeral
//! loopback port (or a whole TLS Redis Cluster, in [`cluster`]), the tunnel in-process or as the
//! built binary, and byte-exact RESP reading.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod cluster;
pub mod fault;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Upper bound for any single wait in a test; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// A CA and a server certificate signed by it, written as PEM files.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `names` (DNS names or IPs).
pub fn pki(names: &[&str]) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ectunnel test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        dir,
    }
}

/// A real `redis-server` on 127.0.0.1, listening only for TLS (or, from
/// [`Redis::start_plain`], only for plain TCP), killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Redis {
    /// Starts redis-server with TLS from `pki` and `extra` arguments (e.g. `--requirepass x`).
    /// Waits for the server's own "Ready to accept connections" line, not for a timer.
    pub fn start(pki: &Pki, extra: &[&str]) -> Redis {
        Self::start_on(pki, None, extra)
    }

    /// Like [`Redis::start`], on `port` when given (for a restart on the same address).
    pub fn start_on(pki: &Pki, port: Option<u16>, extra: &[&str]) -> Redis {
        Self::launch(port, extra, "with TLS", |port| tls_listen(pki, port))
    }

    /// A redis-server that speaks plain TCP only: what an endpoint with in-transit encryption
    /// off (or a wrong port) looks like to the tunnel.
    pub fn start_plain(extra: &[&str]) -> Redis {
        Self::launch(None, extra, "without TLS", |port| {
            vec!["--port".into(), port.to_string().into()]
        })
    }

    /// Starts redis-server on 127.0.0.1 with `listen(port)` as its port arguments. Waits for
    /// the server's own "Ready to accept connections" line, not for a timer; a server that has
    /// not said it within [`WAIT`] is killed and the start tried again.
    fn launch(
        port: Option<u16>,
        extra: &[&str],
        what: &str,
        listen: impl Fn(u16) -> Vec<std::ffi::OsString>,
    ) -> Redis {
        let mut log = String::new();
        for _ in 0..5 {
            // The port is free now; redis cannot bind port 0 itself. A race with another
            // process taking it is caught below and retried with a new port.
            let port = port.unwrap_or_else(free_port);
            let dir = tempfile::tempdir().unwrap();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1"])
                .args(listen(port))
                .args(["--save", "", "--appendonly", "no"])
                .args(["--logfile", "", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test installs it)");
            // Bounds the wait for the line below: the kill ends the server's output.
            let (started, watch) = std::sync::mpsc::channel::<()>();
            let pid = child.id();
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(WAIT) {
                    // Not yet waited for, so the pid is still this server's.
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            });
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut ready = false;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    ready = true;
                    break;
                }
                log.push_str(&line);
                log.push('\n');
            }
            drop(started);
            if ready {
                // Keep draining the log so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Redis {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start {what} after 5 attempts:\n{log}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded by [`WAIT`]) for the process to exit by itself, e.g. after `SHUTDOWN`,
    /// so that its port is free for a restart.
    pub async fn exited(&mut self) {
        let child = &mut self.child;
        eventually("redis-server exits", || {
            let gone = !matches!(child.try_wait(), Ok(None));
            async move { gone }
        })
        .await;
    }

    /// Stops the process (SIGSTOP): it keeps its sockets open but answers nothing, like a
    /// node that vanished from the network without a reset.
    pub fn freeze(&self) {
        signal_pid(self.child.id(), "STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        signal_pid(self.child.id(), "CONT");
    }
}

/// The arguments of a server listening for TLS only, on `port`, with `pki`'s certificate.
fn tls_listen(pki: &Pki, port: u16) -> Vec<std::ffi::OsString> {
    let port = port.to_string();
    let mut args: Vec<std::ffi::OsString> = ["--port", "0", "--tls-port", &port]
        .into_iter()
        .map(Into::into)
        .collect();
    for (flag, file) in [
        ("--tls-cert-file", &pki.cert),
        ("--tls-key-file", &pki.key),
        ("--tls-ca-cert-file", &pki.ca),
    ] {
        args.extend([flag.into(), file.into()]);
    }
    args.extend(["--tls-auth-clients".into(), "no".into()]);
    args
}

fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS connection straight to `redis` (not through the tunnel), authenticated with `token`.
pub async fn direct(
    redis: &Redis,
    pki: &Pki,
    token: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    direct_to(redis.port, &pki.ca, token).await
}

/// [`direct`] to the server on loopback `port` whose certificate chains to `ca`.
pub async fn direct_to(
    port: u16,
    ca: &Path,
    token: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = ectunnel::tls::client_config(&ectunnel::tls::TlsOptions {
        ca_file: Some(ca.to_owned()),
        ..Default::default()
    })
    .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut s, &cmd(&["AUTH", token])).await, "+OK\r\n");
    s
}

/// A primary A and its replica B over TLS, both requiring `token`, B in sync.
pub async fn primary_and_replica(token: &str) -> (Pki, Redis, Redis) {
    let pki = pki(&["localhost"]);
    let auth = [
        "--requirepass",
        token,
        "--masterauth",
        token,
        "--tls-replication",
        "yes",
    ];
    let a = Redis::start(&pki, &auth);
    let a_port = a.port.to_string();
    let b = Redis::start(
        &pki,
        &[&auth[..], &["--replicaof", "127.0.0.1", &a_port]].concat(),
    );
    eventually("the replica in sync", || async {
        let mut d = direct(&a, &pki, token).await;
        roundtrip(&mut d, &cmd(&["INFO", "replication"]))
            .await
            .contains("state=online")
    })
    .await;
    (pki, a, b)
}

/// A failover by hand: B becomes the primary, A its replica.
pub async fn swap_roles(pki: &Pki, a: &Redis, b: &Redis, token: &str) {
    let mut db = direct(b, pki, token).await;
    let promote = cmd(&["REPLICAOF", "NO", "ONE"]);
    assert_eq!(roundtrip(&mut db, &promote).await, "+OK\r\n");
    let mut da = direct(a, pki, token).await;
    let b_port = b.port.to_string();
    let demote = cmd(&["REPLICAOF", "127.0.0.1", &b_port]);
    assert_eq!(roundtrip(&mut da, &demote).await, "+OK\r\n");
}

/// Polls `check` until it holds (bounded by [`WAIT`]): for server-side state that has no
/// event to wait on.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Names a test moves, as DNS moves an endpoint on failover: each maps to the addresses it
/// resolves to now (ports included, so that two servers on 127.0.0.1 can stand for two nodes).
/// Other names go to the system resolver.
#[derive(Clone, Default)]
pub struct Names(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<SocketAddr>>>>,
);

impl Names {
    pub fn point(&self, name: &str, to: &[SocketAddr]) {
        self.0.lock().unwrap().insert(name.to_owned(), to.to_vec());
    }

    /// `name` resolves to `ip` with whatever port is asked (one name, several ports, as
    /// ElastiCache Serverless's 6379 and 6380).
    pub fn point_ip(&self, name: &str, ip: std::net::IpAddr) {
        self.point(name, &[SocketAddr::new(ip, 0)]);
    }
}

impl ectunnel::upstream::Resolve for Names {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        let known = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            match known {
                Some(addrs) => Ok(addrs
                    .into_iter()
                    .map(|a| match a.port() {
                        0 => SocketAddr::new(a.ip(), port),
                        _ => a,
                    })
                    .collect()),
                None => Ok(tokio::net::lookup_host((host, port)).await?.collect()),
            }
        })
    }
}

/// The tunnel running in this process, stopped (gracefully) on drop.
pub struct Tunnel {
    pub addrs: Vec<SocketAddr>,
    pub pools: Vec<ectunnel::upstream::Pool>,
    pub listeners: Vec<std::sync::Arc<ectunnel::listener::Listener>>,
    pub admin: Option<SocketAddr>,
    pub reloader: ectunnel::server::Reloader,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Tunnel {
    pub async fn start(toml: &str) -> Tunnel {
        Tunnel::start_with(toml, ectunnel::upstream::Resolver::system()).await
    }

    /// A tunnel whose upstream names resolve with `resolver`. With `ECTUNNEL_TEST_LOG` set (a
    /// tracing filter such as `debug`), the tunnel's log goes to the test's output.
    pub async fn start_with(toml: &str, resolver: ectunnel::upstream::Resolver) -> Tunnel {
        let config = ectunnel::Config::from_toml(toml, "test.toml").expect("valid test config");
        Tunnel::start_config(config, resolver).await
    }

    /// A tunnel running `config` as given (a test may have put its own parts in it).
    pub async fn start_config(
        config: ectunnel::Config,
        resolver: ectunnel::upstream::Resolver,
    ) -> Tunnel {
        if let Ok(filter) = std::env::var("ECTUNNEL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let server = ectunnel::Server::bind_with(config, resolver)
            .await
            .expect("bind");
        let addrs = server.local_addrs();
        let listeners = server.listeners();
        let pools = listeners.iter().map(|l| l.pool.clone()).collect();
        let admin = server.admin_addr();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Tunnel {
            addrs,
            pools,
            listeners,
            admin,
            reloader,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Signals shutdown; the returned handle completes when the server has stopped.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.done.take().expect("shutdown once")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A config with one listener on an ephemeral port in front of `upstream`, trusting `pki`'s CA.
pub fn listener_toml(upstream: &str, pki: &Pki, extra_top: &str) -> String {
    format!(
        "{extra_top}\n[tls]\nca_file = \"{}\"\n\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n",
        pki.ca.display()
    )
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Sends `cmd` and returns the one complete reply, byte for byte. Flushes: a TLS stream may
/// keep the end of a large write back until then.
pub async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, cmd: &[u8]) -> String {
    s.write_all(cmd).await.unwrap();
    s.flush().await.unwrap();
    read_reply(s).await
}

/// Reads exactly one RESP2/RESP3 reply and returns its raw bytes as text. Reads no further than
/// the reply's last byte, so pipelined replies can be read one by one.
pub async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut pending = 1u64;
        while pending > 0 {
            let start = out.len();
            loop {
                let b = s
                    .read_u8()
                    .await
                    .expect("connection closed before a full reply");
                out.push(b);
                if b == b'\n' {
                    break;
                }
            }
            pending -= 1;
            let line = &out[start..out.len() - 2];
            let n: i64 = std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            match line[0] {
                b'$' | b'!' | b'=' if n >= 0 => {
                    let mut payload = vec![0u8; n as usize + 2];
                    s.read_exact(&mut payload).await.unwrap();
                    out.extend_from_slice(&payload);
                }
                b'*' | b'~' | b'>' if n > 0 => pending += n as u64,
                b'%' if n > 0 => pending += 2 * n as u64,
                // An attribute is followed by the value it annotates.
                b'|' => pending += 2 * n.max(0) as u64 + 1,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("reply timed out; got {:?}", String::from_utf8_lossy(&out)));
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the peer closes; returns everything read, or the read error.
pub async fn read_to_close(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("close timed out")?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `*N\r\n$len\r\narg\r\n…` for the given words.
pub fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The built `ectunnel` binary, running, with its stderr collected line by line.
pub struct Bin {
    child: Option<Child>,
    pub pid: u32,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Bin {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Bin {
        Bin::spawn_with(args, env, |_| {})
    }

    /// [`Bin::spawn`] with no AWS setting of the machine's ([`without_aws`]).
    pub fn spawn_without_aws(args: &[&str], env: &[(&str, &str)]) -> Bin {
        Bin::spawn_with(args, env, without_aws)
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)], prepare: impl Fn(&mut Command)) -> Bin {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ectunnel"));
        command
            .args(args)
            .env_remove("ECTUNNEL_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        prepare(&mut command);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Bin {
            pid: child.id(),
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line matching `pred` and returns it.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no matching log line; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The address the first listener bound, read from its "listening" log line.
    pub fn listen_addr(&mut self) -> SocketAddr {
        let line = self.wait_line(|l| l.contains("listening"));
        let at = ["listen=", "\"listen\":\""]
            .iter()
            .find_map(|k| line.find(k).map(|i| i + k.len()))
            .unwrap_or_else(|| panic!("no listen field in {line}"));
        line[at..]
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid, sig);
    }

    /// Waits for exit; returns the status and all of stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.pid;
        let mut child = self.child.take().expect("not finished yet");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let Ok(status) = rx.recv_timeout(WAIT) else {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("ectunnel did not exit; log:\n{}", self.seen.join("\n"));
        };
        for line in self.lines.iter() {
            self.seen.push(line);
        }
        (status.unwrap(), std::mem::take(&mut self.seen).join("\n"))
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
/// No AWS setting of the machine's: every `AWS_*` variable removed, no profile files, instance
/// metadata off.
fn without_aws(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_CONFIG_FILE", "/nonexistent/ectunnel-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/ectunnel-test/credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// [`run_bin`] with no AWS setting of the machine's ([`without_aws`]), then `env` on top.
pub fn run_bin_without_aws(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_bin_with(args, env, without_aws)
}

pub fn run_bin(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_bin_with(args, env, |_| {})
}

/// Runs the binary: `prepare` sets up its environment, then `env` goes on top.
fn run_bin_with(
    args: &[&str],
    env: &[(&str, &str)],
    prepare: impl Fn(&mut Command),
) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ectunnel"));
    command.args(args).env_remove("ECTUNNEL_CONFIG");
    prepare(&mut command);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET path` over HTTP/1.0 (the test's side only): (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = connect(addr).await;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_to_close(&mut s).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The scrape, parsed as Prometheus text: `name{sorted labels}` → value.
pub async fn scrape(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

pub fn get(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        panic!("no sample {key}; have {keys:#?}")
    })
}
