//! Rotating the AUTH token with two live tokens (ElastiCache's `ROTATE`, then `SET`) under load,
//! against a real TLS redis-server: the server's side is its `default` user gaining the new
//! password (`ROTATE`) and losing the old one (`SET`); the tunnel's side is its `password_file`
//! holding the new token, the old one on a second line while both may be needed. Either order
//! of the steps must fail no client command.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const OLD: &str = "old-token-0000000000";
const NEW: &str = "new-token-1111111111";

/// What the clients saw: requests answered as expected, and anything else.
#[derive(Default)]
struct Tally {
    ok: u64,
    wrong: Vec<String>,
}

/// A client pipelining plain data commands (shared sessions) until `stop`.
async fn shared_client(addr: std::net::SocketAddr, i: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut c = connect(addr).await;
    let key = format!("s{i}");
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        for n in 0..10 {
            batch.extend(cmd(&["SET", &key, &n.to_string()]));
            batch.extend(cmd(&["GET", &key]));
        }
        c.write_all(&batch).await.unwrap();
        for n in 0..10 {
            let v = n.to_string();
            for want in ["+OK\r\n".to_owned(), format!("${}\r\n{v}\r\n", v.len())] {
                let got = read_reply(&mut c).await;
                if got == want {
                    t.ok += 1;
                } else {
                    t.wrong.push(got);
                }
            }
        }
    }
    t
}

/// A client on a session of its own (WATCH), which RESETs now and then: each RESET is followed
/// by the tunnel's AUTH, with whatever password the server takes at that moment.
async fn own_client(addr: std::net::SocketAddr, i: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut c = connect(addr).await;
    let key = format!("o{i}");
    let mut check = |got: String, want: &str| {
        if got == want {
            t.ok += 1;
        } else {
            t.wrong.push(got);
        }
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(5) {
            check(roundtrip(&mut c, &cmd(&["RESET"])).await, "+RESET\r\n");
        }
        check(roundtrip(&mut c, &cmd(&["WATCH", &key])).await, "+OK\r\n");
        let got = roundtrip(&mut c, &cmd(&["INCR", &key])).await;
        check(got, &format!(":{n}\r\n"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

/// A client that connects for one command and leaves: each takes a pooled session or a new
/// dial (ACL commands are never shared), which must authenticate with whatever the server
/// takes then.
async fn short_clients(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let mut c = connect(addr).await;
        let got = roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await;
        if got == "$7\r\ndefault\r\n" {
            t.ok += 1;
        } else {
            t.wrong.push(got);
        }
    }
    t
}

struct Rig {
    pki: Pki,
    redis: Redis,
    dir: tempfile::TempDir,
    tunnel: Tunnel,
    toml: String,
}

impl Rig {
    async fn start() -> Rig {
        let pki = pki(&["localhost"]);
        let redis = Redis::start(&pki, &["--requirepass", OLD]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis-auth");
        std::fs::write(&file, format!("{OLD}\n")).unwrap();
        // Short-lived pooled and shared sessions: new dials all along the rotation.
        let toml = format!(
            "{}[listener.pool]\nmin_idle = 2\nmax_lifetime = \"150ms\"\n[listener.auth]\npassword_file = \"{}\"\n",
            listener_toml(&format!("localhost:{}", redis.port), &pki, ""),
            file.display()
        );
        let tunnel = Tunnel::start(&toml).await;
        Rig {
            pki,
            redis,
            dir,
            tunnel,
            toml,
        }
    }

    /// The tunnel's side: the password file's new content, then a reload (what the file
    /// watcher does within 2 s).
    async fn tunnel_holds(&self, tokens: &[&str]) {
        let file = self.dir.path().join("redis-auth");
        std::fs::write(&file, format!("{}\n", tokens.join("\n"))).unwrap();
        let new = ectunnel::Config::from_toml(&self.toml, "rotation.toml").unwrap();
        self.tunnel.reloader.reload(Ok(new)).await.unwrap();
    }

    /// The server's side: `ACL SETUSER default` with `>token` / `<token`.
    async fn server(&self, change: &str, now_valid: &str) {
        let mut a = direct(&self.redis, &self.pki, now_valid).await;
        let set = cmd(&["ACL", "SETUSER", "default", change]);
        assert_eq!(roundtrip(&mut a, &set).await, "+OK\r\n");
    }
}

/// Runs the load, applies `steps` with a pause between them, and lets the load run on.
async fn under_load<F, Fut>(rig: &Rig, steps: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let addr = rig.tunnel.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(shared_client(addr, i, stop.clone())));
    }
    for i in 0..2 {
        tasks.push(tokio::spawn(own_client(addr, i, stop.clone())));
    }
    tasks.push(tokio::spawn(short_clients(addr, stop.clone())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    steps().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        assert!(t.ok > 0, "a client did nothing");
        all.ok += t.ok;
        all.wrong.extend(t.wrong);
    }
    assert!(
        all.wrong.is_empty(),
        "{} failed commands, e.g. {:?}",
        all.wrong.len(),
        &all.wrong[..all.wrong.len().min(3)]
    );
    // After the rotation, a session of its own authenticates with the new token alone.
    let mut c = connect(addr).await;
    let whoami = roundtrip(&mut c, &cmd(&["ACL", "WHOAMI"])).await;
    assert_eq!(whoami, "$7\r\ndefault\r\n");
}

const PAUSE: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_rotation_with_the_tunnel_first_fails_no_command() {
    let rig = Rig::start().await;
    under_load(&rig, || async {
        rig.tunnel_holds(&[NEW, OLD]).await; // the new token first; the server knows only the old
        tokio::time::sleep(PAUSE).await;
        rig.server(&format!(">{NEW}"), OLD).await; // ROTATE: both valid
        tokio::time::sleep(PAUSE).await;
        rig.server(&format!("<{OLD}"), NEW).await; // SET: the old one is gone
        tokio::time::sleep(PAUSE).await;
        rig.tunnel_holds(&[NEW]).await;
    })
    .await;
}

#[tokio::test]
async fn a_rotation_with_the_server_first_fails_no_command() {
    let rig = Rig::start().await;
    under_load(&rig, || async {
        rig.server(&format!(">{NEW}"), OLD).await; // ROTATE: both valid
        tokio::time::sleep(PAUSE).await;
        rig.tunnel_holds(&[NEW]).await;
        tokio::time::sleep(PAUSE).await;
        rig.server(&format!("<{OLD}"), NEW).await; // SET: the old one is gone
    })
    .await;
}

/// `check --connect` says which password of a rotation the server takes.
#[tokio::test]
async fn check_names_the_password_the_server_takes() {
    let rig = Rig::start().await;
    let file = rig.dir.path().join("redis-auth");
    std::fs::write(&file, format!("{NEW}\n{OLD}\n")).unwrap();
    let config = rig.dir.path().join("rotation.toml");
    std::fs::write(&config, &rig.toml).unwrap();
    let (code, out, err) = run_bin(&["check", "-c", &path_str(&config), "--connect"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let want = format!("auth=ok (password from line 2 of {})", file.display());
    assert!(out.contains(&want), "{out}");
    assert!(
        !out.contains(OLD) && !out.contains(NEW) && !err.contains(OLD),
        "{out}{err}"
    );
}
