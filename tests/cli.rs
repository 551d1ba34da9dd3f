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
            "{file}:2: auth.password_env: the environment variable it names is not set (its name is not repeated: it may be the token)"
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
        err.contains(&format!("listener `primary` cannot bind {addr}: ")),
        "{err}"
    );
    // Each cause once: not `…in use (os error 98): Address already in use (os error 98)`.
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert_eq!(err.matches(&addr.to_string()).count(), 1, "{err}");
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
async fn an_outage_is_logged_once_at_warn_with_the_listener_name_in_json() {
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
    bin.wait_line(|l| l.contains("cannot fill the pool"));
    // Clients refused during the outage the pool reported are not one WARN each.
    for _ in 0..3 {
        let mut c = connect(addr).await;
        let reply = read_to_close(&mut c).await.unwrap();
        assert!(
            reply.starts_with("-ERR ectunnel: auth localhost:"),
            "{reply}"
        );
    }
    bin.signal("INT");
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("WRONGPASS"))
        .collect();
    assert_eq!(warns.len(), 1, "{log}");
    assert!(
        warns[0].contains("\"listener\":\"primary\"") && warns[0].contains("cannot fill"),
        "{log}"
    );
    let refused = log
        .lines()
        .filter(|l| l.contains("\"DEBUG\"") && l.contains("\"client\"") && l.contains("WRONGPASS"));
    assert_eq!(refused.count(), 3, "{log}");
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

#[test]
fn under_json_logging_a_fatal_error_is_a_json_error_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &format!("[[listener]]\nname = \"primary\"\nlisten = \"{addr}\"\nupstream = \"h:1\"\n"),
    );
    let (code, _, err) = run_bin(&["-c", &file, "--log-format", "json"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_json_error(&err, &format!("listener `primary` cannot bind {addr}: "));
    // Logging starts before the config is read, so a config error is a JSON line too.
    let file = write_config(dir.path(), "threads = \"two\"\n");
    let (code, _, err) = run_bin(&["check", "-c", &file, "--log-format", "json"], &[]);
    assert_eq!(code, 2, "{err}");
    assert_json_error(&err, &format!("{file}:1: threads: expected a whole number"));
}

/// Every line of `stderr` is a JSON object, and one is an ERROR containing `text`.
fn assert_json_error(stderr: &str, text: &str) {
    assert!(!stderr.trim().is_empty(), "nothing on stderr");
    for line in stderr.lines() {
        assert!(is_json(line), "not a JSON line: {line}");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains(text)),
        "no ERROR line with `{text}`:\n{stderr}"
    );
}

#[tokio::test]
async fn check_reports_the_warnings_run_logs() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        &format!(
            "[tls]\ninsecure_skip_verify = true\n[[listener]]\nname = \"open\"\nlisten = \"0.0.0.0:0\"\nupstream = \"localhost:{}\"\nallow_unauthenticated = true\n",
            redis.port
        ),
    );
    let warned = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("WARN  open  "))
            .map(str::to_owned)
            .collect()
    };
    let (code, out, err) = run_bin(&["check", "-c", &file], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("config ok: 1 listener(s), 2 warning(s)\n"),
        "{out}"
    );
    let warnings = warned(&out);
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(
        warnings[0]
            .starts_with("insecure_skip_verify = true: the upstream certificate is NOT verified")
    );
    assert!(warnings[1].starts_with("listening on a non-loopback address"));
    let (code, out, err) = run_bin(&["check", "-c", &file, "--connect"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("ok    open  ")), "{out}");
    assert_eq!(warned(&out), warnings, "{out}");
    // `run` logs the very same warnings.
    let mut bin = Bin::spawn(&["-c", &file], &[]);
    for w in &warnings {
        let line = bin.wait_line(|l| l.contains(w.as_str()));
        assert!(line.contains("WARN"), "{line}");
    }
    bin.signal("TERM");
    let (status, log) = bin.finish();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[tokio::test]
async fn relative_paths_in_a_config_are_relative_to_its_directory() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&pki.ca, dir.path().join("ca.pem")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let file = write_config(
        dir.path(),
        &format!(
            "[tls]\nca_file = \"ca.pem\"\n[auth]\npassword_file = \"token\"\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{}\"\n",
            redis.port
        ),
    );
    // Started from another directory, as systemd or a shell elsewhere would.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ectunnel"))
        .args(["check", "-c", &file, "--connect"])
        .current_dir(elsewhere.path())
        .env_remove("ECTUNNEL_CONFIG")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let ok = stdout.lines().find(|l| l.starts_with("ok    primary"));
    assert!(ok.is_some_and(|l| l.contains("auth=ok")), "{stdout}");
}

#[test]
fn convert_stunnel_names_its_input_once_and_reads_stdin_from_dash() {
    let missing = "/nonexistent/stunnel.conf";
    let (code, _, err) = run_bin(&["convert-stunnel", missing], &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.matches(missing).count(), 1, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let server_only = dir.path().join("server.conf");
    std::fs::write(
        &server_only,
        "[redis]\naccept = 6379\nconnect = 127.0.0.1:6380\n",
    )
    .unwrap();
    let server_only = path_str(&server_only);
    let (code, _, err) = run_bin(&["convert-stunnel", &server_only], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no client service"), "{err}");
    assert_eq!(err.matches(&server_only).count(), 1, "{err}");

    let guide = include_str!("data/redis-cli.conf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ectunnel"))
        .args(["convert-stunnel", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(guide.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(toml.contains("converted from stdin"), "{toml}");
    assert!(
        toml.contains("[[listener]]\nname = \"redis-cli\""),
        "{toml}"
    );
}

/// Whether `s` is exactly one JSON value. The tests have no JSON crate; this is enough to tell
/// a JSON log line from plain text or a truncated object.
fn is_json(s: &str) -> bool {
    let b = s.trim().as_bytes();
    json_value(b, 0) == Some(b.len())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Reads one value starting at `i`; returns where it ends.
fn json_value(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, i);
    match *b.get(i)? {
        b'{' => json_seq(b, i + 1, b'}', |b, i| {
            let i = skip_ws(b, json_string(b, skip_ws(b, i))?);
            (b.get(i) == Some(&b':')).then_some(())?;
            json_value(b, i + 1)
        }),
        b'[' => json_seq(b, i + 1, b']', json_value),
        b'"' => json_string(b, i),
        _ => {
            let end = b[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .map_or(b.len(), |n| i + n);
            let word = std::str::from_utf8(&b[i..end]).ok()?;
            let scalar = matches!(word, "true" | "false" | "null") || word.parse::<f64>().is_ok();
            scalar.then_some(end)
        }
    }
}

/// The items of an object or array up to `close`, each read by `item`.
fn json_seq(
    b: &[u8],
    i: usize,
    close: u8,
    item: impl Fn(&[u8], usize) -> Option<usize>,
) -> Option<usize> {
    let mut i = skip_ws(b, i);
    if b.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        i = skip_ws(b, item(b, i)?);
        match *b.get(i)? {
            b',' => i += 1,
            c if c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

fn json_string(b: &[u8], i: usize) -> Option<usize> {
    (b.get(i) == Some(&b'"')).then_some(())?;
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}
