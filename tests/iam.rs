//! `[auth.iam]` against a real TLS redis-server: the tunnel's token source is replaced by one
//! that, like IAM, makes each new token valid on the server (an ACL user's passwords: the
//! newest few, as a token outlives the next refresh) and every older one invalid. A session that ever presented a stale token shows in the server's `ACL LOG`.
//! Intervals are short (`refresh`, `reauth_after`) so that refreshes and re-AUTHs happen while
//! clients run.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use ectunnel::auth::iam::{IamError, Token, TokenRequest, TokenSource};
use ectunnel::config::{AuthMethod, Secret};
use tokio::io::AsyncWriteExt;

const ADMIN: &str = "admin-password-0000";
const USER: &str = "app";

/// Tokens `tok-1`, `tok-2`, …: each one is made valid on the server (with the `window - 1`
/// before it) before it is handed out.
#[derive(Debug)]
struct AclTokens {
    port: u16,
    ca: std::path::PathBuf,
    signed: AtomicU64,
    /// Fail the way a machine without AWS credentials does.
    fail: AtomicBool,
    /// Hand out a token the server does not know (a user that is not IAM-enabled).
    wrong: AtomicBool,
    /// Never answer (a credentials provider that hangs).
    hang: AtomicBool,
    /// How many of the newest tokens the server takes.
    window: u64,
}

impl AclTokens {
    async fn admin(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        direct_to(self.port, &self.ca, ADMIN).await
    }

    async fn issue(&self, req: &TokenRequest) -> Result<Token, IamError> {
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        if self.fail.load(Ordering::Relaxed) {
            return Err(IamError::NoCredentials(
                "the test's credentials are gone".into(),
            ));
        }
        if self.wrong.load(Ordering::Relaxed) {
            return Ok(token("not-a-token-the-server-knows"));
        }
        let k = self.signed.fetch_add(1, Ordering::SeqCst) + 1;
        let tok = |k: u64| format!("tok-{k}-{}", req.cache);
        let valid: Vec<String> = (k.saturating_sub(self.window - 1).max(1)..=k)
            .map(|k| format!(">{}", tok(k)))
            .collect();
        let mut set = vec![
            "ACL",
            "SETUSER",
            USER,
            "on",
            "resetpass",
            "~*",
            "&*",
            "+@all",
        ];
        set.extend(valid.iter().map(String::as_str));
        let mut a = self.admin().await;
        assert_eq!(roundtrip(&mut a, &cmd(&set)).await, "+OK\r\n");
        Ok(token(&tok(k)))
    }
}

fn token(secret: &str) -> Token {
    let now = SystemTime::now();
    Token {
        secret: Secret::new(secret),
        signed: now,
        expires: now + Duration::from_secs(900),
        identity: "test tokens".into(),
    }
}

impl TokenSource for AclTokens {
    fn sign<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, IamError>> + Send + 'a>> {
        Box::pin(self.issue(req))
    }
}

struct Setup {
    _pki: Pki,
    redis: Redis,
    tokens: Arc<AclTokens>,
    tunnel: Tunnel,
    toml: String,
}

/// A redis-server whose `default` user is the admin's, and a tunnel signing IAM tokens for
/// `app` with `iam` settings and `pool` settings. `role = "primary"` gives the listener a node
/// authority probe: a long-lived session of its own that must not outlive `reauth_after` either.
async fn setup(iam: &str, pool: &str) -> Setup {
    setup_with(iam, pool, Source::default()).await
}

/// How the test's token source behaves from the start.
struct Source {
    /// Fails as with no credentials.
    fail: bool,
    /// Signs tokens the server does not know.
    wrong: bool,
    /// How many of the newest tokens the server takes.
    window: u64,
}

impl Default for Source {
    fn default() -> Source {
        Source {
            fail: false,
            wrong: false,
            window: 4,
        }
    }
}

async fn setup_with(iam: &str, pool: &str, source: Source) -> Setup {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", ADMIN]);
    let tokens = Arc::new(AclTokens {
        port: redis.port,
        ca: pki.ca.clone(),
        signed: AtomicU64::new(0),
        fail: AtomicBool::new(source.fail),
        wrong: AtomicBool::new(source.wrong),
        hang: AtomicBool::new(false),
        window: source.window,
    });
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}role = \"primary\"\n[listener.pool]\n{pool}\n[listener.auth]\nusername = \"{USER}\"\n[listener.auth.iam]\ncache = \"test-cache\"\nregion = \"us-east-1\"\n{iam}\n",
        listener_toml(&format!("localhost:{}", redis.port), &pki, "")
    );
    let config = with_source(&toml, &tokens);
    let tunnel = Tunnel::start_config(config, ectunnel::upstream::Resolver::system()).await;
    Setup {
        _pki: pki,
        redis,
        tokens,
        tunnel,
        toml,
    }
}

/// The config `toml` with `tokens` as its token source.
fn with_source(toml: &str, tokens: &Arc<AclTokens>) -> ectunnel::Config {
    let mut config = ectunnel::Config::from_toml(toml, "iam.toml").expect("valid config");
    let auth = config.listeners[0].auth.as_mut().expect("auth");
    let AuthMethod::Iam(iam) = &mut auth.method else {
        panic!("not IAM")
    };
    iam.source = tokens.clone();
    config
}

impl Setup {
    /// Reloads the same config (a new listener, with a signer of its own).
    async fn reload(&self) {
        self.reload_toml(&self.toml).await;
    }

    async fn reload_toml(&self, toml: &str) {
        let config = with_source(toml, &self.tokens);
        self.tunnel.reloader.reload(Ok(config)).await.unwrap();
    }

    /// How many AUTHs the server refused (`ACL LOG` merges alike entries into one `count`).
    async fn refusals(&self) -> u64 {
        let log = self.refused_auths().await;
        log.split("$5\r\ncount\r\n:")
            .skip(1)
            .map(|rest| rest.split("\r\n").next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// The one session whose last command was `cmd` (lower case, as `CLIENT LIST` says it).
    async fn session_after(&self, cmd: &str) -> String {
        let sessions = self.sessions().await;
        let mine: Vec<_> = sessions.iter().filter(|l| field(l, "cmd") == cmd).collect();
        assert_eq!(mine.len(), 1, "{sessions:?}");
        mine[0].clone()
    }

    /// Waits until session `id` re-AUTHs: its last command is the tunnel's AUTH.
    async fn reauthenticated(&self, id: &str) {
        eventually("the session re-AUTHs", || async {
            field(&self.upstream_client(id).await, "cmd") == "auth"
        })
        .await;
    }

    /// `ACL LOG`: every AUTH the server refused (a stale or unknown token), as raw RESP.
    async fn refused_auths(&self) -> String {
        let mut a = self.tokens.admin().await;
        roundtrip(&mut a, &cmd(&["ACL", "LOG"])).await
    }

    /// The `CLIENT LIST` line of upstream connection `id`.
    async fn upstream_client(&self, id: &str) -> String {
        let mut a = self.tokens.admin().await;
        let list = roundtrip(&mut a, &cmd(&["CLIENT", "LIST", "ID", id])).await;
        list.lines()
            .find(|l| l.contains("id="))
            .unwrap_or_default()
            .to_owned()
    }

    /// `CLIENT LIST` lines of the tunnel's sessions (user `app`).
    async fn sessions(&self) -> Vec<String> {
        let mut a = self.tokens.admin().await;
        let list = roundtrip(&mut a, &cmd(&["CLIENT", "LIST"])).await;
        list.lines()
            .filter(|l| l.contains(&format!(" user={USER} ")))
            .map(str::to_owned)
            .collect()
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or("")
}

/// The upstream connection id behind a client on a session of its own.
async fn upstream_id(c: &mut tokio::net::TcpStream) -> String {
    let reply = roundtrip(c, &cmd(&["CLIENT", "ID"])).await;
    reply.trim_start_matches(':').trim_end().to_owned()
}

#[tokio::test]
async fn clients_pipelining_see_nothing_while_tokens_refresh_and_sessions_reauthenticate() {
    let s = setup(
        "refresh = \"200ms\"\nreauth_after = \"1s\"",
        "min_idle = 2\nmultiplex = 2",
    )
    .await;
    let addr = s.tunnel.addr();
    let run = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(async move {
            // Plain data commands: these ride the shared sessions.
            let mut c = connect(addr).await;
            let (mut sent, start) = (0u64, tokio::time::Instant::now());
            while start.elapsed() < run {
                let key = format!("k{i}");
                let mut batch = Vec::new();
                for n in 0..20 {
                    batch.extend(cmd(&["SET", &key, &format!("{n}")]));
                    batch.extend(cmd(&["GET", &key]));
                }
                c.write_all(&batch).await.unwrap();
                for n in 0..20 {
                    assert_eq!(read_reply(&mut c).await, "+OK\r\n");
                    let v = format!("{n}");
                    assert_eq!(read_reply(&mut c).await, format!("${}\r\n{v}\r\n", v.len()));
                }
                sent += 40;
            }
            sent
        }));
    }
    // A client on a session of its own (WATCH makes one), busy all along.
    let own = tokio::spawn(async move {
        let mut c = connect(addr).await;
        assert_eq!(roundtrip(&mut c, &cmd(&["WATCH", "w"])).await, "+OK\r\n");
        let id = upstream_id(&mut c).await;
        let start = tokio::time::Instant::now();
        while start.elapsed() < run {
            assert_eq!(
                roundtrip(&mut c, &cmd(&["INCR", "own"]))
                    .await
                    .chars()
                    .next(),
                Some(':')
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (c, id)
    });
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let (mut own, id) = own.await.unwrap();
    assert!(total > 0);
    let signed = s.tokens.signed.load(Ordering::SeqCst);
    assert!(
        signed >= 8,
        "only {signed} tokens were signed in 5 s at a 200 ms refresh"
    );
    // Every AUTH the tunnel sent used a token the server still took.
    assert_eq!(s.refused_auths().await, "*0\r\n");
    // The session of its own is the one it started on, and it authenticated again: left idle
    // past `reauth_after`, its last command is the tunnel's AUTH.
    let line = s.upstream_client(&id).await;
    assert!(field(&line, "age").parse::<u64>().unwrap() >= 3, "{line}");
    eventually("the idle session re-AUTHs", || async {
        field(&s.upstream_client(&id).await, "cmd") == "auth"
    })
    .await;
    assert_eq!(
        roundtrip(&mut own, &cmd(&["GET", "own"]))
            .await
            .chars()
            .next(),
        Some('$')
    );
    // Pooled and shared sessions are replaced before `reauth_after` instead.
    for line in s.sessions().await {
        if field(&line, "id") != id {
            let age: u64 = field(&line, "age").parse().unwrap();
            // Whole seconds, and a probe is replaced at the check after it is due: an original
            // session would be 5 s old.
            assert!(age <= 3, "a session outlived reauth_after: {line}");
        }
    }
}

#[tokio::test]
async fn a_reauth_due_inside_multi_waits_for_exec() {
    let s = setup("reauth_after = \"500ms\"", "min_idle = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["MULTI"])).await, "+OK\r\n");
    let id = field(&s.session_after("multi").await, "id").to_owned();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Due, but an AUTH now would be queued into the transaction: nothing was sent.
    let line = s.upstream_client(&id).await;
    assert_eq!(field(&line, "cmd"), "multi", "{line}");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "t", "v"])).await,
        "+QUEUED\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["EXEC"])).await, "*1\r\n+OK\r\n");
    // Right after EXEC, the re-AUTH.
    eventually("the re-AUTH after EXEC", || async {
        field(&s.upstream_client(&id).await, "cmd") == "auth"
    })
    .await;
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "t"])).await, "$1\r\nv\r\n");
    assert_eq!(s.refused_auths().await, "*0\r\n");
}

#[tokio::test]
async fn subscribers_are_reauthenticated_in_resp3_and_told_to_reconnect_in_resp2() {
    let s = setup("reauth_after = \"700ms\"", "min_idle = 0").await;
    let addr = s.tunnel.addr();
    let mut v3 = connect(addr).await;
    let hello = roundtrip(&mut v3, &cmd(&["HELLO", "3"])).await;
    assert!(hello.starts_with('%'), "{hello}");
    let id3 = roundtrip(&mut v3, &cmd(&["CLIENT", "ID"])).await;
    let id3 = id3.trim_start_matches(':').trim_end().to_owned();
    let sub = roundtrip(&mut v3, &cmd(&["SUBSCRIBE", "news"])).await;
    assert!(sub.starts_with(">3\r\n"), "{sub}");
    let mut v2 = connect(addr).await;
    let sub = roundtrip(&mut v2, &cmd(&["SUBSCRIBE", "news"])).await;
    assert!(sub.starts_with("*3\r\n$9\r\nsubscribe\r\n"), "{sub}");
    // The RESP2 subscriber cannot take an AUTH: it is told why, then closed.
    let rest = read_to_close(&mut v2).await.unwrap();
    assert!(
        rest.starts_with("-ERR ectunnel: auth 127.0.0.1:")
            && rest
                .ends_with("(subscribe mode, MONITOR, CLIENT REPLY OFF) cannot do; reconnect\r\n"),
        "{rest:?}"
    );
    // The RESP3 one was re-AUTHed and still gets messages.
    eventually("the RESP3 subscriber re-AUTHs", || async {
        field(&s.upstream_client(&id3).await, "cmd") == "auth"
    })
    .await;
    let mut a = s.tokens.admin().await;
    assert_eq!(
        roundtrip(&mut a, &cmd(&["PUBLISH", "news", "hi"])).await,
        ":1\r\n"
    );
    assert_eq!(
        read_reply(&mut v3).await,
        ">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    assert_eq!(s.refused_auths().await, "*0\r\n");
}

#[tokio::test]
async fn a_client_reset_is_followed_by_the_current_token() {
    let s = setup("refresh = \"100ms\"", "min_idle = 0\nmultiplex = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "r", "1"])).await, "+OK\r\n");
    // Later the session's own token is no longer valid anywhere.
    let at = s.tokens.signed.load(Ordering::SeqCst);
    eventually("newer tokens", || async {
        s.tokens.signed.load(Ordering::SeqCst) >= at + s.tokens.window
    })
    .await;
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "r"])).await, "$1\r\n1\r\n");
    assert_eq!(
        roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await,
        format!("${}\r\n{USER}\r\n", USER.len())
    );
    assert_eq!(s.refused_auths().await, "*0\r\n");
}

#[tokio::test]
async fn signing_failures_and_refused_tokens_reach_the_client_explained() {
    let s = setup_with(
        "",
        "min_idle = 0",
        Source {
            fail: true,
            ..Source::default()
        },
    )
    .await;
    let upstream = format!("localhost:{}", s.redis.port);
    let mut c = connect(s.tunnel.addr()).await;
    let reply = roundtrip(&mut c, &cmd(&["PING"])).await;
    assert!(
        reply.starts_with(&format!(
            "-ERR ectunnel: auth {upstream}: no AWS credentials found (set AWS_ACCESS_KEY_ID"
        )) && reply.ends_with(": the test's credentials are gone\r\n"),
        "{reply}"
    );
    let m = scrape(s.tunnel.admin.unwrap()).await;
    let failed = get(
        &m,
        "ectunnel_iam_tokens_total{listener=primary,result=no_credentials}",
    );
    assert!(failed >= 1.0);
    // Credentials appear: the signer's retry finds them and clients are served.
    s.tokens.fail.store(false, Ordering::Relaxed);
    eventually("a token signed after the failure", || async {
        let mut c = connect(s.tunnel.addr()).await;
        roundtrip(&mut c, &cmd(&["PING"])).await == "+PONG\r\n"
    })
    .await;
    let m = scrape(s.tunnel.admin.unwrap()).await;
    assert!(get(&m, "ectunnel_iam_tokens_total{listener=primary,result=ok}") >= 1.0);
    let next = get(
        &m,
        "ectunnel_iam_token_next_refresh_timestamp_seconds{listener=primary}",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    assert!(next > now.as_secs_f64(), "{next}");

    // A token the server refuses: its words, and what they most likely mean.
    let s = setup_with(
        "",
        "min_idle = 0",
        Source {
            wrong: true,
            ..Source::default()
        },
    )
    .await;
    let mut c = connect(s.tunnel.addr()).await;
    let reply = roundtrip(&mut c, &cmd(&["PING"])).await;
    let upstream = format!("localhost:{}", s.redis.port);
    assert!(
        reply.starts_with(&format!("-ERR ectunnel: auth {upstream}: WRONGPASS invalid username-password pair or user is disabled. (is the user IAM-enabled"))
            && !reply.contains("not-a-token"),
        "{reply}"
    );
}

/// The real token source, end to end: `check --connect` and a running tunnel sign with the
/// credentials the AWS SDK finds (here in the environment) and authenticate with the token. The
/// server's user takes any password (`nopass`): what it checks here is the tunnel's side.
#[tokio::test]
async fn the_sdk_credentials_chain_signs_what_check_and_the_tunnel_send() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", ADMIN]);
    let mut a = direct(&redis, &pki, ADMIN).await;
    let user = cmd(&["ACL", "SETUSER", USER, "on", "nopass", "~*", "+@all"]);
    assert_eq!(roundtrip(&mut a, &user).await, "+OK\r\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("iam.toml");
    let toml = format!(
        "{}[listener.auth]\nusername = \"{USER}\"\n[listener.auth.iam]\ncache = \"test-cache\"\nregion = \"eu-west-1\"\n",
        listener_toml(&format!("localhost:{}", redis.port), &pki, "")
    );
    std::fs::write(&file, toml).unwrap();
    let file = path_str(&file);
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "example-secret-key-0000000000000000000000",
        ),
    ];
    let (code, out, err) = run_bin_without_aws(&["check", "-c", &file, "--connect"], &keys);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("auth=ok (iam: access key AKIA…3456 (EnvironmentVariable); token expires 20"),
        "{out}"
    );
    assert!(!out.contains("example-secret") && !err.contains("example-secret"));
    // Without credentials, the listener's line says what is missing.
    let (code, out, _) = run_bin_without_aws(&["check", "-c", &file, "--connect"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  primary  auth localhost:") && out.contains("AWS_ACCESS_KEY_ID"),
        "{out}"
    );
    // A tunnel without them: each client is told, and the log says it once.
    let mut bin = Bin::spawn_without_aws(&["-c", &file], &[]);
    let addr = bin.listen_addr();
    for _ in 0..3 {
        let mut c = connect(addr).await;
        let reply = roundtrip(&mut c, &cmd(&["PING"])).await;
        assert!(
            reply.starts_with("-ERR ectunnel: auth localhost:"),
            "{reply}"
        );
        assert!(reply.contains("no AWS credentials found"), "{reply}");
    }
    bin.signal("TERM");
    let (_, log) = bin.finish();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("no AWS credentials"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    // The tunnel itself, with the same credentials.
    let mut env: Vec<(&str, &str)> = vec![
        ("AWS_CONFIG_FILE", "/nonexistent/ectunnel-test/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/ectunnel-test/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    env.extend_from_slice(&keys);
    let mut bin = Bin::spawn(&["-c", &file], &env);
    let mut c = connect(bin.listen_addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    let whoami = roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await;
    assert_eq!(whoami, format!("${}\r\n{USER}\r\n", USER.len()));
    drop(c);
    bin.signal("TERM");
    let (status, log) = bin.finish();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("example-secret") && !log.contains("X-Amz-Signature"),
        "{log}"
    );
}

/// After a reload the new listener's signer may take a while (a slow credentials provider):
/// meanwhile the previous token serves, for a new client and for a RESET on a connected one.
#[tokio::test]
async fn a_reload_keeps_the_token_until_the_new_signer_has_one() {
    let s = setup("", "min_idle = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["WATCH", "x"])).await, "+OK\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["SET", "x", "1"])).await, "+OK\r\n");
    s.tokens.hang.store(true, Ordering::Relaxed);
    s.reload().await;
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    assert_eq!(roundtrip(&mut c, &cmd(&["GET", "x"])).await, "$1\r\n1\r\n");
    let mut d = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut d, &cmd(&["PING"])).await, "+PONG\r\n");
    assert_eq!(s.refused_auths().await, "*0\r\n");
}

/// A reload reaches an idle client's session: its new `reauth_after` and credentials apply
/// without the client sending anything.
#[tokio::test]
async fn a_reload_reaches_an_idle_session() {
    let s = setup("reauth_after = \"1h\"", "min_idle = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["WATCH", "x"])).await, "+OK\r\n");
    let id = field(&s.session_after("watch").await, "id").to_owned();
    let sooner = s
        .toml
        .replace("reauth_after = \"1h\"", "reauth_after = \"500ms\"");
    s.reload_toml(&sooner).await;
    s.reauthenticated(&id).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["UNWATCH"])).await, "+OK\r\n");
    assert_eq!(s.refusals().await, 0);
}

/// A client that authenticated its session itself keeps its own user: the tunnel does not
/// authenticate it again as the tunnel's.
#[tokio::test]
async fn a_session_the_client_authenticated_is_left_to_it() {
    let s = setup("reauth_after = \"300ms\"", "min_idle = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    let login = cmd(&["AUTH", "default", ADMIN]);
    assert_eq!(roundtrip(&mut c, &login).await, "+OK\r\n");
    let whoami = cmd(&["ACL", "WHOAMI"]);
    assert_eq!(roundtrip(&mut c, &whoami).await, "$7\r\ndefault\r\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(roundtrip(&mut c, &whoami).await, "$7\r\ndefault\r\n");
    // After a RESET the session is the tunnel's again, authenticated as its user.
    assert_eq!(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
    let id = upstream_id(&mut c).await;
    let user = format!("${}\r\n{USER}\r\n", USER.len());
    assert_eq!(roundtrip(&mut c, &whoami).await, user);
    s.reauthenticated(&id).await;
}

/// A MULTI the server refused opened no transaction: the re-AUTH does not wait for an EXEC
/// that never comes.
#[tokio::test]
async fn a_refused_multi_does_not_hold_the_reauth_back() {
    let s = setup("reauth_after = \"500ms\"", "min_idle = 0").await;
    let mut c = connect(s.tunnel.addr()).await;
    let refused = roundtrip(&mut c, &cmd(&["MULTI", "extra"])).await;
    assert!(
        refused.starts_with("-ERR wrong number of arguments"),
        "{refused}"
    );
    let id = upstream_id(&mut c).await;
    s.reauthenticated(&id).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}

/// Replies the reply side could no longer pair (a HELLO 3 the server refused, so RESP2 stays,
/// then SUBSCRIBE): an idle subscriber is told to reconnect, never sent an AUTH it cannot run.
#[tokio::test]
async fn a_subscriber_whose_hello_3_was_refused_is_told_to_reconnect() {
    // On a session of its own from the start: HELLO goes to the server.
    let pool = "min_idle = 0\nmultiplex = 0";
    let s = setup("reauth_after = \"500ms\"", pool).await;
    let mut c = connect(s.tunnel.addr()).await;
    let hello = roundtrip(&mut c, &cmd(&["HELLO", "3", "SETNAME", "a b"])).await;
    assert!(
        hello.starts_with("-ERR Client names cannot contain spaces"),
        "{hello}"
    );
    let sub = roundtrip(&mut c, &cmd(&["SUBSCRIBE", "news"])).await;
    assert!(sub.starts_with("*3\r\n$9\r\nsubscribe\r\n"), "{sub}");
    let rest = read_to_close(&mut c).await.unwrap();
    assert!(
        rest.starts_with("-ERR ectunnel: auth 127.0.0.1:") && rest.ends_with("; reconnect\r\n"),
        "{rest:?}"
    );
}

/// An AUTH queued behind a blocking command runs late, with a token that may have expired
/// meanwhile: refused, it is sent again soon with a fresh one, not 11 hours later.
#[tokio::test]
async fn a_refused_reauth_is_tried_again_with_a_fresh_token() {
    let source = Source {
        window: 2,
        ..Source::default()
    };
    let iam = "refresh = \"200ms\"\nreauth_after = \"500ms\"";
    let s = setup_with(iam, "min_idle = 0", source).await;
    // What the server runs, AUTHs included (their arguments redacted).
    let mut monitor = s.tokens.admin().await;
    assert_eq!(roundtrip(&mut monitor, &cmd(&["MONITOR"])).await, "+OK\r\n");
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while tx.send(read_reply(&mut monitor).await).is_ok() {} });
    let mut c = connect(s.tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["WATCH", "x"])).await, "+OK\r\n");
    let addr = field(&s.session_after("watch").await, "addr").to_owned();
    // Blocks 2 s; the AUTH due meanwhile runs after it, with a token many refreshes old.
    assert_eq!(
        roundtrip(&mut c, &cmd(&["BLPOP", "q", "2"])).await,
        "*-1\r\n"
    );
    // The dial's AUTH, the one behind BLPOP, and the one sent again.
    let three = async {
        let mut auths = 0;
        while auths < 3 {
            let line = seen.recv().await.unwrap();
            let auth = line.to_ascii_lowercase().contains("\"auth\"");
            if auth && line.contains(&format!(" {addr}] ")) {
                auths += 1;
            }
        }
    };
    tokio::time::timeout(WAIT, three)
        .await
        .expect("the refused AUTH was not sent again");
    // The first was refused; the second, with a fresh token, was not.
    assert_eq!(s.refusals().await, 1);
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}
