//! Faults between the tunnel and a real redis-server: what networks do (a delay, a reset in the
//! middle of a reply, a stall without a reset, a truncated TLS record, a slow drip), through the
//! relay in `common::fault`, and what servers do (`CLIENT KILL`, `DEBUG SLEEP`, `SHUTDOWN NOSAVE`
//! and a restart, `CLIENT PAUSE`). Under each, several clients pipeline through the tunnel, on
//! shared sessions and on sessions of their own, every key and value tagged with the client's
//! name. The checks are what docs/behaviour.md promises: every reply is the right one or
//! `-ERR ectunnel: …` (or the connection closes), never another client's; each arrives within
//! the deadlines the config sets; and once the fault heals, every acknowledged write is on the
//! server.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fault::{Mode, Relay};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

const TOKEN: &str = "fault-token";

/// The tunnel's `connect_timeout` and `shared_reply_timeout` here: short, so faults resolve fast.
const CONNECT: Duration = Duration::from_secs(1);
const REPLY: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to any deadline.
const SLACK: Duration = Duration::from_secs(3);

/// A reply to a client on shared sessions (docs/behaviour.md: `2T + 4C`): the replies before it
/// (a session owing one answers, or is declared dead, within `REPLY` of the server's last byte),
/// a fresh session if that one broke (TCP, TLS, AUTH, each under `CONNECT`; no DNS for an IP
/// address), then its own reply (`REPLY`).
fn shared_bound() -> Duration {
    2 * REPLY + 3 * CONNECT + SLACK
}

/// A reply to a client on a session of its own: a shared session first (every client starts
/// there), its own (two dials), then whatever the server takes (`stall`): on a session of its own
/// the tunnel waits as long as the server does, as a direct connection would (a blocking command
/// may take any time).
fn own_bound(stall: Duration) -> Duration {
    6 * CONNECT + stall + SLACK
}

/// Once a fault heals, how long clients may still be refused: the pool dials again after its
/// backoff (at most `BACKOFF_MAX`, +50 % jitter), then a reply comes within its bound.
fn recovery() -> Duration {
    ectunnel::limits::BACKOFF_MAX.mul_f64(1.5) + own_bound(Duration::ZERO)
}

/// The server, the relay in front of it, and the tunnel in front of the relay with two
/// listeners: `shared` (the default `multiplex = 2`) and `own` (`multiplex = 0`).
struct Bench {
    pki: Pki,
    redis: Redis,
    relay: Relay,
    tunnel: Tunnel,
    args: Vec<String>,
    _aof: tempfile::TempDir,
}

impl Bench {
    /// With `persist`, every acknowledged write is in the append-only file before its reply,
    /// in a directory that outlives a restart.
    async fn start(persist: bool) -> Bench {
        let pki = pki(&["localhost"]);
        let aof = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = ["--requirepass", TOKEN, "--enable-debug-command", "yes"]
            .map(String::from)
            .to_vec();
        if persist {
            let dir = aof.path().display().to_string();
            args.extend(
                [
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &dir,
                ]
                .map(String::from),
            );
        }
        let redis = Redis::start(&pki, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let relay = Relay::start(redis.addr().parse().unwrap()).await;
        let listener = |name: &str, pool: &str| {
            format!(
                "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n{pool}",
                relay.addr
            )
        };
        let toml = format!(
            "connect_timeout = \"{}ms\"\n[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n[auth]\npassword = \"{TOKEN}\"\n[pool]\nshared_reply_timeout = \"{}ms\"\n{}{}",
            CONNECT.as_millis(),
            pki.ca.display(),
            REPLY.as_millis(),
            listener("shared", ""),
            listener("own", "[listener.pool]\nmultiplex = 0\n"),
        );
        let tunnel = Tunnel::start(&toml).await;
        Bench {
            pki,
            redis,
            relay,
            tunnel,
            args,
            _aof: aof,
        }
    }

    async fn direct(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        direct(&self.redis, &self.pki, TOKEN).await
    }

    /// `SHUTDOWN NOSAVE`, then the same server again on the same port once a client saw it gone.
    async fn restart(&mut self, seen: &Seen, before: usize) {
        let mut d = self.direct().await;
        d.write_all(&cmd(&["SHUTDOWN", "NOSAVE"])).await.unwrap();
        d.flush().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, d.read_to_end(&mut rest)).await;
        self.redis.exited().await;
        seen.shown_since(before).await;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.redis = Redis::start_on(&self.pki, Some(self.redis.port), &args);
    }
}

/// How many replies were errors or cut short, across all clients; the warm-up count; the
/// first client that failed a check (so that a wait on the others ends at once).
#[derive(Default)]
struct Seen {
    faults: AtomicUsize,
    warm: AtomicUsize,
    failure: std::sync::Mutex<Option<String>>,
}

impl Seen {
    fn failed(&self, why: &str) {
        self.failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| why.to_owned());
    }

    /// Holds, or panics with the first client's failure.
    fn check(&self, holds: bool) -> bool {
        if let Some(why) = &*self.failure.lock().unwrap() {
            panic!("{why}");
        }
        holds
    }

    fn faults(&self) -> usize {
        self.faults.load(Ordering::Relaxed)
    }

    /// Waits until some client has seen the fault made since `before` (it must show).
    async fn shown_since(&self, before: usize) {
        eventually("a client sees the fault", || async {
            self.check(self.faults() > before)
        })
        .await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain `SET`/`GET`/`INCR` on the `shared` listener: shared sessions.
    Shared,
    /// `MULTI`…`EXEC` on the `shared` listener: a session of its own from `MULTI` on.
    Multi,
    /// Plain commands on the `own` listener (`multiplex = 0`): a session of its own.
    Own,
}

/// What a reply must be (unless it is `-ERR ectunnel: …`).
enum Want {
    Set(String, String),
    /// The value the client's `SET` in the same pipeline wrote (or, if that `SET` was not
    /// acknowledged, nothing).
    Get(String),
    Incr,
    Multi,
    Queued,
    /// `[+OK, :n]` for the queued `SET` and `INCR`.
    Exec(String, String),
}

/// One client: its name tags every key and value; what the server acknowledged is kept to be
/// read back directly.
struct Client {
    name: String,
    kind: Kind,
    addr: SocketAddr,
    bound: Duration,
    seq: u64,
    incrs_sent: i64,
    /// The highest `INCR` reply.
    counted: i64,
    acked: Vec<(String, String)>,
    /// The last `SET` (or `EXEC`) in this pipeline was acknowledged.
    set_acked: bool,
    errors: BTreeSet<String>,
    /// Connections closed under it.
    closes: usize,
    seen: Arc<Seen>,
}

/// How a pipeline went.
struct Round {
    clean: bool,
    closed: bool,
}

impl Client {
    fn counter(&self) -> String {
        format!("{}:counter", self.name)
    }

    /// The next key and a value naming this client; every eighth spans two TLS records.
    fn next_pair(&mut self) -> (String, String) {
        self.seq += 1;
        let pad = if self.seq.is_multiple_of(8) {
            20_000
        } else {
            8
        };
        let key = format!("{}:{}", self.name, self.seq);
        (key.clone(), format!("{key}:{}", "x".repeat(pad)))
    }

    fn pipeline(&mut self) -> (Vec<u8>, Vec<Want>) {
        let (mut out, mut wants) = (Vec::new(), Vec::new());
        let counter = self.counter();
        if self.kind == Kind::Multi {
            let (k, v) = self.next_pair();
            for c in [
                &["MULTI"][..],
                &["SET", &k, &v],
                &["INCR", &counter],
                &["EXEC"],
                &["GET", &k],
            ] {
                out.extend(cmd(c));
            }
            self.incrs_sent += 1;
            wants.extend([
                Want::Multi,
                Want::Queued,
                Want::Queued,
                Want::Exec(k.clone(), v.clone()),
                Want::Get(v),
            ]);
            return (out, wants);
        }
        for _ in 0..3 {
            let (k, v) = self.next_pair();
            for c in [&["SET", &k, &v][..], &["GET", &k], &["INCR", &counter]] {
                out.extend(cmd(c));
            }
            self.incrs_sent += 1;
            wants.extend([Want::Set(k, v.clone()), Want::Get(v), Want::Incr]);
        }
        (out, wants)
    }

    /// Sends one pipeline and judges each reply in order.
    async fn round(&mut self, c: &mut BufReader<TcpStream>) -> Result<Round, String> {
        let (bytes, wants) = self.pipeline();
        let mut round = Round {
            clean: true,
            closed: false,
        };
        if c.get_mut().write_all(&bytes).await.is_err() {
            round.closed = true;
        }
        self.set_acked = false;
        for want in &wants {
            if round.closed {
                break;
            }
            let started = Instant::now();
            let Some(got) = tokio::time::timeout(self.bound, read_frame(c))
                .await
                .map_err(|_| format!("{}: no reply within {:?}", self.name, self.bound))?
            else {
                round.closed = true;
                break;
            };
            if got.starts_with("-ERR ectunnel: ") {
                self.errors.insert(got.trim_end().to_owned());
                round.clean = false;
                if matches!(want, Want::Set(..) | Want::Exec(..)) {
                    self.set_acked = false;
                }
                continue;
            }
            if !self.judge(want, &got) {
                return Err(format!(
                    "{}: wrong reply after {:?}: {:?}",
                    self.name,
                    started.elapsed(),
                    got.chars().take(120).collect::<String>()
                ));
            }
        }
        round.clean &= !round.closed;
        if !round.clean {
            self.seen.faults.fetch_add(1, Ordering::Relaxed);
        }
        Ok(round)
    }

    /// Whether `got` is the right reply to what was sent.
    fn judge(&mut self, want: &Want, got: &str) -> bool {
        match want {
            Want::Set(k, v) => {
                self.set_acked = got == "+OK\r\n";
                if self.set_acked {
                    self.acked.push((k.clone(), v.clone()));
                }
                self.set_acked
            }
            Want::Get(v) => got == bulk(v) || (got == "$-1\r\n" && !self.set_acked),
            Want::Incr => self.incr(got),
            Want::Multi => got == "+OK\r\n",
            Want::Queued => got == "+QUEUED\r\n",
            Want::Exec(k, v) => {
                let Some(n) = got.strip_prefix("*2\r\n+OK\r\n") else {
                    return false;
                };
                self.set_acked = self.incr(n);
                if self.set_acked {
                    self.acked.push((k.clone(), v.clone()));
                }
                self.set_acked
            }
        }
    }

    /// An `INCR` reply: above every one before it (each `INCR` adds one), and no more than
    /// this client sent (none ran twice).
    fn incr(&mut self, got: &str) -> bool {
        let n = got
            .strip_prefix(':')
            .and_then(|t| t.strip_suffix("\r\n"))
            .and_then(|t| t.parse::<i64>().ok());
        match n {
            Some(n) if n > self.counted && n <= self.incrs_sent => {
                self.counted = n;
                true
            }
            _ => false,
        }
    }

    /// Pipelines until, after the fault healed, two rounds in a row went right; reconnects when
    /// the tunnel closed the connection.
    async fn run(mut self, mut healed: watch::Receiver<bool>) -> Result<Client, String> {
        let mut conn: Option<BufReader<TcpStream>> = None;
        let (mut clean_after, mut warm) = (0, false);
        let mut heal_seen: Option<Instant> = None;
        loop {
            let after_heal = *healed.borrow_and_update();
            if let Some(at) = heal_seen {
                if clean_after >= 2 {
                    return Ok(self);
                }
                if at.elapsed() > recovery() {
                    return Err(format!(
                        "{}: no clean round {:?} after the fault healed; saw {:?}",
                        self.name,
                        recovery(),
                        self.errors
                    ));
                }
            } else if after_heal {
                heal_seen = Some(Instant::now());
            }
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(BufReader::new(connect(self.addr).await)),
            };
            let round = match self.round(c).await {
                Ok(r) => r,
                Err(e) => {
                    self.seen.failed(&e);
                    return Err(e);
                }
            };
            if round.closed {
                self.closes += 1;
                conn = None;
            }
            if round.clean {
                clean_after += usize::from(after_heal);
                if !std::mem::replace(&mut warm, true) {
                    self.seen.warm.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                clean_after = 0;
                // A refusal comes at once while the upstream is down: pace the retries.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn bulk(v: &str) -> String {
    format!("${}\r\n{v}\r\n", v.len())
}

/// One reply of the kinds these commands get (`+ - : $ *`), raw; `None` if the connection
/// closed (or was reset) before it was whole.
async fn read_frame(c: &mut BufReader<TcpStream>) -> Option<String> {
    let mut out = String::new();
    let mut pending = 1;
    while pending > 0 {
        pending -= 1;
        let start = out.len();
        if c.read_line(&mut out).await.ok()? == 0 || !out.ends_with("\r\n") {
            return None;
        }
        let line = &out[start..out.len() - 2];
        let Some(kind) = line.bytes().next() else {
            return Some(out); // not RESP: judged wrong
        };
        let n: i64 = line[1..].parse().unwrap_or(-1);
        match kind {
            b'$' if n >= 0 => {
                let mut payload = vec![0u8; n as usize + 2];
                c.read_exact(&mut payload).await.ok()?;
                out.push_str(&String::from_utf8_lossy(&payload));
            }
            b'*' if n > 0 => pending += n,
            _ => {}
        }
    }
    Some(out)
}

/// A fault and how it heals.
enum Fault {
    /// The relay in this mode for this long.
    Net(Mode, Duration),
    /// The relay in this mode until it has cut this many connections.
    Cuts(Mode, usize),
    KillType,
    KillId,
    DebugSleep(u64),
    Restart,
    /// `CLIENT PAUSE <ms> ALL|WRITE`.
    Pause(u64, &'static str),
}

impl Fault {
    /// How long the server itself may take to answer on purpose.
    fn stall(&self) -> Duration {
        match self {
            Fault::Net(Mode::Hold, d) => *d,
            Fault::DebugSleep(s) => Duration::from_secs(*s),
            Fault::Pause(ms, _) => Duration::from_millis(*ms),
            _ => Duration::ZERO,
        }
    }

    /// Does the fault, and returns once it has healed.
    async fn run(&self, b: &mut Bench, seen: &Seen) {
        let before = seen.faults();
        match self {
            Fault::Net(mode, d) => {
                b.relay.set(*mode);
                tokio::time::sleep(*d).await;
            }
            Fault::Cuts(mode, n) => {
                b.relay.set(*mode);
                eventually("the relay cuts connections", || async {
                    b.relay.cut() >= *n
                })
                .await;
                seen.shown_since(before).await;
            }
            Fault::KillType => {
                let mut d = b.direct().await;
                let kill = cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
                // Three kills that each found sessions (the tunnel dials again after each).
                let kills = async {
                    for _ in 0..3 {
                        while roundtrip(&mut d, &kill).await == ":0\r\n" {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                tokio::time::timeout(WAIT, kills)
                    .await
                    .expect("sessions to kill");
                seen.shown_since(before).await;
            }
            Fault::KillId => {
                let mut d = b.direct().await;
                let me = roundtrip(&mut d, &cmd(&["CLIENT", "ID"])).await;
                let list = roundtrip(&mut d, &cmd(&["CLIENT", "LIST"])).await;
                let ids: Vec<&str> = list
                    .split("id=")
                    .skip(1)
                    .filter_map(|t| t.split(' ').next())
                    .filter(|id| me.trim_end() != format!(":{id}"))
                    .collect();
                assert!(ids.len() >= 4, "the tunnel's sessions: {list}");
                for id in ids {
                    let got = roundtrip(&mut d, &cmd(&["CLIENT", "KILL", "ID", id])).await;
                    // How many it killed: none when the session had closed meanwhile.
                    assert!(got == ":1\r\n" || got == ":0\r\n", "{got}");
                }
                seen.shown_since(before).await;
            }
            Fault::DebugSleep(s) => {
                let mut d = b.direct().await;
                let got = roundtrip(&mut d, &cmd(&["DEBUG", "SLEEP", &s.to_string()])).await;
                assert_eq!(got, "+OK\r\n");
            }
            Fault::Restart => b.restart(seen, before).await,
            Fault::Pause(ms, what) => {
                // Held by the pause itself: it answers once the pause is over.
                let mut probe = b.direct().await;
                let mut d = b.direct().await;
                let got =
                    roundtrip(&mut d, &cmd(&["CLIENT", "PAUSE", &ms.to_string(), what])).await;
                assert_eq!(got, "+OK\r\n");
                let got = roundtrip(&mut probe, &cmd(&["SET", "pause-probe", "1"])).await;
                assert_eq!(got, "+OK\r\n");
            }
        }
        b.relay.set(Mode::Pass);
    }
}

/// How each `-ERR ectunnel: …` a client gets under these faults begins: docs/behaviour.md's
/// table of faults.
const EXPLAINED: [&str; 8] = [
    "the server closed the connection",
    "upstream read failed: ",
    "upstream write failed: ",
    "no reply from the server for ",
    "upstream session closed",
    "connect 127.0.0.1:",
    "tls 127.0.0.1:",
    "auth 127.0.0.1:",
];

/// What the clients must have seen while the fault lasted.
#[derive(PartialEq)]
enum Expect {
    /// Every reply right: nothing for the tunnel to explain.
    Nothing,
    /// Some error or closed connection.
    Seen,
    /// No closed connection, and no error but one that says this.
    Only(&'static str),
    /// Some error or closed connection, and among the errors one that says this.
    Errors(&'static str),
}

/// Runs clients of each kind through the fault, then checks every acknowledged write directly.
async fn survive(fault: Fault, expect: Expect) {
    let mut b = Bench::start(matches!(fault, Fault::Restart)).await;
    let seen = Arc::new(Seen::default());
    let (heal, healed) = watch::channel(false);
    let kinds = [
        Kind::Shared,
        Kind::Shared,
        Kind::Shared,
        Kind::Shared,
        Kind::Multi,
        Kind::Multi,
        Kind::Own,
        Kind::Own,
    ];
    let clients: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let client = Client {
                name: format!("c{i}-{kind:?}"),
                kind,
                addr: b.tunnel.addrs[usize::from(kind == Kind::Own)],
                bound: if kind == Kind::Shared {
                    shared_bound()
                } else {
                    own_bound(fault.stall())
                },
                seq: 0,
                incrs_sent: 0,
                counted: 0,
                acked: Vec::new(),
                set_acked: false,
                errors: BTreeSet::new(),
                closes: 0,
                seen: seen.clone(),
            };
            tokio::spawn(client.run(healed.clone()))
        })
        .collect();
    eventually("every client served once", || async {
        seen.check(seen.warm.load(Ordering::Relaxed) == kinds.len())
    })
    .await;
    assert_eq!(
        seen.faults.load(Ordering::Relaxed),
        0,
        "errors before the fault"
    );
    let started = Instant::now();
    fault.run(&mut b, &seen).await;
    let lasted = started.elapsed();
    heal.send_replace(true);
    let mut done = Vec::new();
    for c in clients {
        done.push(c.await.unwrap().unwrap_or_else(|e| panic!("{e}")));
    }
    let errors: BTreeSet<&String> = done.iter().flat_map(|c| &c.errors).collect();
    let faults = seen.faults.load(Ordering::Relaxed);
    eprintln!(
        "fault lasted {lasted:?}; {faults} rounds with errors or a close; errors: {errors:#?}"
    );
    for e in &errors {
        let why = &e["-ERR ectunnel: ".len()..];
        assert!(
            EXPLAINED.iter().any(|w| why.starts_with(w)) && !why.contains("docs.rs"),
            "an error docs/behaviour.md does not explain: {e}"
        );
    }
    match expect {
        Expect::Nothing => assert_eq!(faults, 0, "{errors:?}"),
        Expect::Seen => assert!(faults > 0),
        Expect::Only(what) => {
            let closed = done.iter().map(|c| c.closes).sum::<usize>();
            assert_eq!(closed, 0, "connections closed");
            assert!(errors.iter().all(|e| e.contains(what)), "{errors:?}");
        }
        Expect::Errors(what) => {
            assert!(faults > 0);
            assert!(
                errors.iter().any(|e| e.contains(what)),
                "no error saying {what:?}: {errors:?}"
            );
        }
    }
    check_acknowledged(&b, &done).await;
}

/// Every write a client had acknowledged is on the server, read directly; each counter is at
/// least its last acknowledged value and no more than the `INCR`s sent.
async fn check_acknowledged(b: &Bench, clients: &[Client]) {
    let mut d = b.direct().await;
    for c in clients {
        for chunk in c.acked.chunks(64) {
            let gets: Vec<u8> = chunk.iter().flat_map(|(k, _)| cmd(&["GET", k])).collect();
            d.write_all(&gets).await.unwrap();
            d.flush().await.unwrap();
            for (k, v) in chunk {
                let got = read_reply(&mut d).await;
                assert!(
                    got == bulk(v),
                    "{k}: acknowledged, then lost: {:?}",
                    got.chars().take(80).collect::<String>()
                );
            }
        }
        let n = roundtrip(&mut d, &cmd(&["GET", &c.counter()])).await;
        let n: i64 = n.lines().nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
        assert!(
            (c.counted..=c.incrs_sent).contains(&n),
            "{}: counter {n}, acknowledged {}, sent {}",
            c.name,
            c.counted,
            c.incrs_sent
        );
        assert!(!c.acked.is_empty(), "{}: nothing acknowledged", c.name);
    }
}

#[tokio::test]
async fn a_delay_on_every_chunk_changes_no_reply() {
    survive(
        Fault::Net(
            Mode::Delay(Duration::from_millis(40)),
            Duration::from_millis(1500),
        ),
        Expect::Nothing,
    )
    .await;
}

#[tokio::test]
async fn replies_dripped_a_byte_at_a_time_arrive_whole() {
    // The reply deadline counts what is decrypted: a TLS record (up to 16 KiB) that drips in
    // for longer than shared_reply_timeout is silence, as it can be on a loaded machine.
    survive(
        Fault::Net(Mode::Drip, Duration::from_millis(1500)),
        Expect::Only("(shared_reply_timeout)"),
    )
    .await;
}

#[tokio::test]
async fn a_stall_without_a_reset_is_explained_after_shared_reply_timeout() {
    survive(
        Fault::Net(Mode::Hold, 2 * REPLY),
        Expect::Errors("(shared_reply_timeout)"),
    )
    .await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_replies_loses_no_acknowledged_write() {
    survive(Fault::Cuts(Mode::Reset(30_000), 6), Expect::Seen).await;
}

#[tokio::test]
async fn a_truncated_tls_record_is_a_closed_connection() {
    survive(Fault::Cuts(Mode::Truncate, 4), Expect::Seen).await;
}

#[tokio::test]
async fn client_kill_type_normal_is_explained() {
    survive(Fault::KillType, Expect::Seen).await;
}

#[tokio::test]
async fn client_kill_by_id_is_explained() {
    survive(Fault::KillId, Expect::Seen).await;
}

#[tokio::test]
async fn debug_sleep_past_shared_reply_timeout_is_explained() {
    survive(
        Fault::DebugSleep(2),
        Expect::Errors("(shared_reply_timeout)"),
    )
    .await;
}

#[tokio::test]
async fn shutdown_nosave_and_restart_keeps_acknowledged_writes() {
    survive(Fault::Restart, Expect::Seen).await;
}

#[tokio::test]
async fn client_pause_all_is_explained_after_shared_reply_timeout() {
    survive(
        Fault::Pause(2000, "ALL"),
        Expect::Errors("(shared_reply_timeout)"),
    )
    .await;
}

#[tokio::test]
async fn client_pause_write_is_explained_after_shared_reply_timeout() {
    survive(
        Fault::Pause(2000, "WRITE"),
        Expect::Errors("(shared_reply_timeout)"),
    )
    .await;
}

/// A reset inside one client's reply, on a shared session another client's request waits on:
/// the first gets the part that arrived and is disconnected (nothing can follow half a reply);
/// the second stays connected, its request answered with an error or, if it went out on a
/// fresh session after the reset, rightly.
#[tokio::test]
async fn a_reset_inside_a_reply_disconnects_only_the_client_it_was_for() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let relay = Relay::start(redis.addr().parse().unwrap()).await;
    let toml = format!(
        "[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n[auth]\npassword = \"{TOKEN}\"\n[pool]\nmin_idle = 1\nmultiplex = 1\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n",
        pki.ca.display(),
        relay.addr
    );
    let tunnel = Tunnel::start(&toml).await;
    let big = "v".repeat(200_000);
    let mut d = direct(&redis, &pki, TOKEN).await;
    assert_eq!(
        roundtrip(&mut d, &cmd(&["SET", "big", &big])).await,
        "+OK\r\n"
    );
    let (mut a, mut b) = (connect(tunnel.addr()).await, connect(tunnel.addr()).await);
    for c in [&mut a, &mut b] {
        assert_eq!(roundtrip(c, &cmd(&["PING"])).await, "+PONG\r\n");
    }
    // Three whole TLS records of the 200 kB reply arrive, then the reset.
    relay.set(Mode::Reset(50_000));
    a.write_all(&cmd(&["GET", "big"])).await.unwrap();
    b.write_all(&cmd(&["GET", "small"])).await.unwrap();
    let (got, end) = read_until_closed(&mut a).await;
    let whole = bulk(&big);
    assert!(
        got.len() > 16_384 && got.len() < whole.len() && whole.starts_with(&got),
        "{} bytes, starting {:?}, then {end:?}",
        got.len(),
        got.chars().take(20).collect::<String>()
    );
    let got = read_reply(&mut b).await;
    assert!(
        got.starts_with("-ERR ectunnel: upstream read failed") || got == "$-1\r\n",
        "{got}"
    );
    relay.set(Mode::Pass);
    assert_eq!(roundtrip(&mut b, &cmd(&["GET", "small"])).await, "$-1\r\n");
    assert_eq!(relay.cut(), 1);
}

/// What arrives until the connection closes, and how it closed (`None`: cleanly).
async fn read_until_closed(c: &mut TcpStream) -> (String, Option<std::io::ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.kind()),
            }
        }
    })
    .await
    .expect("the connection closes");
    (String::from_utf8_lossy(&got).into_owned(), end)
}
