//! The binary as users and tools run it: exit codes, messages, signals, logs, `check`.

mod common;

use common::*;

const TOKEN: &str = "cli-token-0123456789abcdef";

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("ectunnel.toml");
    std::fs::write(&path, text).unwrap();
    path_str(&path)
}

#[test]
fn a_config_error_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstrem = \"localhost:6379\"\n",
    );
    let (code, _, err) = run_bin(&["-c", &file], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{file}:3: listener.upstrem: unknown field `upstrem`"
        )),
        "{err}"
    );
}

#[test]
fn a_missing_config_exits_2() {
    let (code, _, err) = run_bin(&["-c", "/nonexistent/ectunnel.toml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/nonexistent/ectunnel.toml: cannot read config file"),
        "{err}"
    );
    let (code, _, err) = run_bin(&[], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no config"), "{err}");
    let (code, _, err) = run_bin(&["run"], &[("ECTUNNEL_CONFIG", "/nonexistent/env.toml")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/env.toml"), "{err}");
}

#[test]
fn a_missing_password_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "[auth]\npassword_env = \"ECTUNNEL_CLI_TEST_UNSET\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:6379\"\n",
    );
    let (code, _, err) = run_bin(&["check", "-c", &file], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{file}:2: auth.password_env: environment variable ECTUNNEL_CLI_TEST_UNSET is not set"
        )),
        "{err}"
    );
}

#[test]
fn a_listener_that_cannot_bind_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &format!(
            "[[listener]]\nname = \"primary\"\nlisten = \"{addr}\"\nupstream = \"localhost:6379\"\n"
        ),
    );
    let (code, _, err) = run_bin(&["-c", &file], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("listener `primary` cannot bind {addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn flags_mode_injects_auth_never_logs_the_secret_and_drains_on_sigterm() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let upstream = format!("localhost:{}", redis.port);
    let mut bin = Bin::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--ca-file",
            &path_str(&pki.ca),
            "--password-env",
            "REDIS_AUTH",
            "--log-level",
            "trace",
        ],
        &[("REDIS_AUTH", TOKEN)],
    );
    let addr = bin.listen_addr();
    let mut c = connect(addr).await;
    assert_eq!(
        roundtrip(&mut c, &cmd(&["SET", "k", TOKEN])).await,
        "+OK\r\n"
    );
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    bin.signal("TERM");
    // The open session is drained: it still works after SIGTERM, until it leaves.
    bin.wait_line(|l| l.contains("SIGTERM received"));
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
    drop(c);
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("upstream session ready"),
        "trace logging was on:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the secret reached the log:\n{log}");
}

#[tokio::test]
async fn with_more_threads_shared_and_own_sessions_work_alike() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &listener_toml(
            &format!("localhost:{}", redis.port),
            &pki,
            &format!("threads = 2\n[auth]\npassword = \"{TOKEN}\""),
        ),
    );
    let mut bin = Bin::spawn(&["-c", &file], &[]);
    let addr = bin.listen_addr();
    let threads = std::fs::read_dir(format!("/proc/{}/task", bin.pid))
        .unwrap()
        .count();
    assert!(
        threads >= 3,
        "{threads} threads: main and 2 workers expected"
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let k = format!("k{i}");
            for step in 0..20 {
                let v = format!("{i}:{step}");
                assert_eq!(roundtrip(&mut c, &cmd(&["SET", &k, &v])).await, "+OK\r\n");
                let got = roundtrip(&mut c, &cmd(&["GET", &k])).await;
                assert_eq!(got, format!("${}\r\n{v}\r\n", v.len()));
            }
            // From here on a session of its own.
            assert_eq!(roundtrip(&mut c, &cmd(&["SELECT", "0"])).await, "+OK\r\n");
            assert_eq!(
                roundtrip(&mut c, &cmd(&["INCR", "n"])).await.as_bytes()[0],
                b':'
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    bin.signal("TERM");
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[tokio::test]
async fn a_failed_dial_is_logged_once_at_warn_with_the_listener_name_in_json() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &listener_toml(
            &format!("localhost:{}", redis.port),
            &pki,
            "[auth]\npassword_env = \"REDIS_AUTH\"",
        ),
    );
    let wrong = "wrong-token-0123456789";
    let mut bin = Bin::spawn(
        &["run", "--log-format", "json", "--log-level", "debug"],
        &[("ECTUNNEL_CONFIG", &file), ("REDIS_AUTH", wrong)],
    );
    let addr = bin.listen_addr();
    let mut c = connect(addr).await;
    let reply = read_to_close(&mut c).await.unwrap();
    assert!(
        reply.starts_with("-ERR ectunnel: auth localhost:"),
        "{reply}"
    );
    bin.signal("INT");
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
    // Once for this client (the pool also reports, once, that it cannot fill).
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("\"client\""))
        .collect();
    assert_eq!(warns.len(), 1, "{log}");
    assert!(
        warns[0].contains("\"listener\":\"primary\"") && warns[0].contains("WRONGPASS"),
        "{log}"
    );
    assert!(!log.contains(wrong), "the secret reached the log:\n{log}");
}

#[tokio::test]
async fn check_connect_reports_every_listener_and_fails_if_one_does() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = listener_toml(
        &format!("localhost:{}", redis.port),
        &pki,
        &format!("[auth]\npassword = \"{TOKEN}\""),
    );
    let file = write_config(dir.path(), &good);
    let (code, out, err) = run_bin(&["check", "-c", &file, "--connect"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("ok"))
        .unwrap_or_else(|| panic!("{out}"));
    for part in [
        "primary",
        &format!("upstream=localhost:{}", redis.port),
        &format!("addr=127.0.0.1:{}", redis.port),
        "tls=TLSv1.3",
        "cipher=TLS13_",
        "subject=\"CN=localhost\"",
        "expires=",
        "auth=ok",
        "ping=",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN), "{out}{err}");

    let broken = format!(
        "{good}[[listener]]\nname = \"broken\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{closed}\"\n"
    );
    let file = write_config(dir.path(), &broken);
    let (code, out, _) = run_bin(&["check", "-c", &file, "--connect"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l.starts_with("ok    primary")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("FAIL  broken  connect {closed}:"))),
        "{out}"
    );

    let (code, out, _) = run_bin(&["check", "-c", &file], &[]);
    assert_eq!(
        code, 0,
        "without --connect only the config is checked: {out}"
    );
}

#[test]
fn convert_stunnel_turns_the_guides_recipe_into_a_valid_config() {
    // tests/data/redis-cli.conf is the guide's redis-cli.conf exactly as printed there: on one line.
    let guide = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/redis-cli.conf");
    let (code, toml, err) = run_bin(&["convert-stunnel", guide], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(toml.contains("stunnel verified nothing here"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &toml);
    let (code, out, err) = run_bin(&["check", "-c", &file], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("redis-cli  listen=127.0.0.1:6379 upstream=master.ssltest.wif01h.use1.cache.amazonaws.com:6379"), "{out}");
    assert!(
        out.contains("redis-cli-slave  listen=127.0.0.1:6380"),
        "{out}"
    );
    let (code, _, err) = run_bin(&["convert-stunnel", "/nonexistent/stunnel.conf"], &[]);
    assert_eq!(code, 2, "{err}");
}
