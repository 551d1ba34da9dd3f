//! Cluster mode through the tunnel against a real local TLS cluster.

mod common;

/// The cluster harness itself, straight to the nodes (no tunnel).
mod harness {
    use crate::common::cluster::{Cluster, SLOTS, Value, key_for_slot, keys_for_slot, slot_of};
    use crate::common::{cmd, roundtrip};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_cluster_is_ok() {
        let started = std::time::Instant::now();
        let c = Cluster::start().await;
        eprintln!("6-node cluster settled in {:?}", started.elapsed());

        let primaries = c.primaries().await;
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        for &p in &primaries {
            assert_eq!(c.replicas_of(p).await.len(), 1, "replicas of {p}");
        }
        let slots = c.slots(c.ports()[0]).await;
        assert_eq!(slots.len(), 3, "{slots:?}");
        let covered: u32 = slots.iter().map(|r| u32::from(r.end - r.start) + 1).sum();
        assert_eq!(covered, u32::from(SLOTS));

        // The harness hashes keys as the server does, hash tags included.
        for key in [
            "foo",
            "{user1000}.following",
            "a{}b",
            "{}{x}",
            "x{y",
            "{a}{b}",
            "",
        ] {
            let server = c.call_ok(primaries[0], &["CLUSTER", "KEYSLOT", key]).await;
            assert_eq!(server, Value::Int(slot_of(key).into()), "{key:?}");
        }
        assert_eq!(slot_of("123456789"), 0x31C3 & (SLOTS - 1));

        let slot = 12345;
        let key = key_for_slot(slot);
        assert_eq!(slot_of(&key), slot);
        let owner = c.owner_of(slot).await;
        let mut d = c.direct(owner).await;
        assert_eq!(
            roundtrip(&mut d, &cmd(&["SET", &key, "v"])).await,
            "+OK\r\n"
        );
        assert_eq!(roundtrip(&mut d, &cmd(&["GET", &key])).await, "$1\r\nv\r\n");
        let other = primaries.iter().find(|&&p| p != owner).unwrap();
        let mut d = c.direct(*other).await;
        assert_eq!(
            roundtrip(&mut d, &cmd(&["GET", &key])).await,
            format!("-MOVED {slot} 127.0.0.1:{owner}\r\n")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_serverless_like_topology() {
        let c = Cluster::serverless_like("cache.serverless.test").await;
        let (primary, replica) = (c.nodes[0].port, c.nodes[1].port);
        assert_eq!(c.primaries().await, [primary]);
        assert_eq!(c.replicas_of(primary).await, [replica]);
        for port in c.ports() {
            let slots = c.call_ok(port, &["CLUSTER", "SLOTS"]).await;
            let [range] = slots.items() else {
                panic!("one range expected: {slots:?}")
            };
            let r = range.items();
            assert_eq!((r[0].int(), r[1].int()), (0, 16383));
            let endpoints: Vec<(String, i64)> = r[2..]
                .iter()
                .map(|n| (n.items()[0].text(), n.items()[1].int()))
                .collect();
            let host = "cache.serverless.test".to_string();
            assert_eq!(
                endpoints,
                [(host.clone(), primary.into()), (host, replica.into())]
            );
        }
        let key = key_for_slot(7);
        let mut d = c.direct(replica).await;
        assert_eq!(
            roundtrip(&mut d, &cmd(&["GET", &key])).await,
            format!("-MOVED 7 cache.serverless.test:{primary}\r\n")
        );
    }

    /// Slot moves (with `-ASK` in between), a manual failover and a killed primary, as the
    /// tunnel's tests will use them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn harness_moves_slots_and_fails_over() {
        let mut c = Cluster::start().await;
        let slot = 42;
        let from = c.owner_of(slot).await;
        let to = *c.primaries().await.iter().find(|&&p| p != from).unwrap();
        let keys = keys_for_slot(slot, 3);
        let mut d = c.direct(from).await;
        for k in &keys[..2] {
            assert_eq!(roundtrip(&mut d, &cmd(&["SET", k, k])).await, "+OK\r\n");
        }

        let m = c.begin_migration(slot, to).await;
        // A key the old owner does not have is asked for at the new one.
        assert_eq!(
            roundtrip(&mut d, &cmd(&["GET", &keys[2]])).await,
            format!("-ASK {slot} 127.0.0.1:{to}\r\n")
        );
        assert_eq!(c.migrate_keys(&m).await, 2);
        assert_eq!(
            roundtrip(&mut d, &cmd(&["GET", &keys[0]])).await,
            format!("-ASK {slot} 127.0.0.1:{to}\r\n")
        );
        c.finish_migration(m).await;
        assert_eq!(c.owner_of(slot).await, to);
        assert_eq!(
            roundtrip(&mut d, &cmd(&["GET", &keys[0]])).await,
            format!("-MOVED {slot} 127.0.0.1:{to}\r\n")
        );

        let promoted = c.failover(to).await;
        assert_eq!(c.owner_of(slot).await, promoted);
        assert_eq!(c.replicas_of(promoted).await, [to]);
        let mut d = c.direct(promoted).await;
        let want = format!("${}\r\n{}\r\n", keys[1].len(), keys[1]);
        assert_eq!(roundtrip(&mut d, &cmd(&["GET", &keys[1]])).await, want);

        let started = std::time::Instant::now();
        let survivor = c.kill_primary(promoted).await;
        eprintln!("killed primary replaced in {:?}", started.elapsed());
        assert_eq!(survivor, to);
        assert_eq!(c.owner_of(slot).await, to);
        assert_eq!(c.primaries().await.len(), 3);
        let mut d = c.direct(to).await;
        assert_eq!(roundtrip(&mut d, &cmd(&["GET", &keys[1]])).await, want);
    }
}

/// The tunnel in front of the cluster: one configured port, every node on a local port of its
/// own, no upstream address ever in a reply.
mod tunnel {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use crate::common::cluster::{Cluster, Value, key_for_slot, keys_for_slot, slot_of, value_of};
    use crate::common::{Names, Tunnel, WAIT, cmd, connect, read_reply, roundtrip};

    /// A tunnel with one cluster listener whose configuration endpoint is node `entry`.
    async fn tunnel(c: &Cluster, entry: u16, extra: &str) -> Tunnel {
        let toml = format!(
            "[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n\n[[listener]]\nname = \"cluster\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{entry}\"\n{extra}",
            c.pki.ca.display()
        );
        Tunnel::start(&toml).await
    }

    /// Every `host:port` in a reply's text (the parts that look like addresses).
    fn addresses(reply: &str) -> Vec<(String, u16)> {
        reply
            .split(|c: char| c.is_whitespace() || c == ',' || c == '@')
            .filter_map(|w| {
                let (host, port) = w.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                host.parse::<std::net::IpAddr>().ok()?;
                Some((host.to_owned(), port))
            })
            .collect()
    }

    /// Asserts that `reply` names no node of `c` by its real port, and returns the ports it
    /// names (all on 127.0.0.1).
    fn local_only(c: &Cluster, reply: &str) -> HashSet<u16> {
        let real: HashSet<u16> = c.nodes.iter().map(|n| n.port).collect();
        let mut ports = HashSet::new();
        for word in reply.split(|ch: char| !ch.is_ascii_digit()) {
            if let Ok(p) = word.parse::<u16>() {
                assert!(
                    !real.contains(&p),
                    "an upstream port {p} reached the client: {reply:?}"
                );
            }
        }
        for (host, port) in addresses(reply) {
            assert_eq!(host, "127.0.0.1", "{reply:?}");
            ports.insert(port);
        }
        ports
    }

    /// The node-local addresses of the cluster as a client learns them: CLUSTER SLOTS through
    /// the configured port. (start, end, primary, replicas)
    async fn slot_map(entry: SocketAddr) -> Vec<(u16, u16, SocketAddr, Vec<SocketAddr>)> {
        let mut s = connect(entry).await;
        let reply = roundtrip(&mut s, &cmd(&["CLUSTER", "SLOTS"])).await;
        let node = |n: &Value| {
            let f = n.items();
            SocketAddr::new(f[0].text().parse().unwrap(), f[1].int() as u16)
        };
        value_of(reply.as_bytes())
            .await
            .items()
            .iter()
            .map(|r| {
                let r = r.items();
                let replicas = r[3..].iter().map(node).collect();
                (r[0].int() as u16, r[1].int() as u16, node(&r[2]), replicas)
            })
            .collect()
    }

    /// A cluster client that knows only the tunnel's port: follows `-MOVED` and `-ASK` to the
    /// addresses the replies give, as redis-cli -c and the client libraries do. Records each.
    struct Client {
        entry: SocketAddr,
        conns: std::collections::HashMap<SocketAddr, TcpStream>,
        slots: std::collections::HashMap<u16, SocketAddr>,
        redirects: Vec<String>,
    }

    impl Client {
        fn new(entry: SocketAddr) -> Client {
            Client {
                entry,
                conns: Default::default(),
                slots: Default::default(),
                redirects: Vec::new(),
            }
        }

        async fn conn(&mut self, addr: SocketAddr) -> &mut TcpStream {
            if let std::collections::hash_map::Entry::Vacant(v) = self.conns.entry(addr) {
                v.insert(connect(addr).await);
            }
            self.conns.get_mut(&addr).unwrap()
        }

        async fn call(&mut self, args: &[&str]) -> String {
            let slot = slot_of(args[1]);
            let mut at = *self.slots.get(&slot).unwrap_or(&self.entry);
            let mut asking = false;
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                let s = self.conn(at).await;
                if asking {
                    assert_eq!(roundtrip(s, &cmd(&["ASKING"])).await, "+OK\r\n");
                }
                let reply = tokio::time::timeout(WAIT, async {
                    s.write_all(&cmd(args)).await?;
                    Ok::<_, std::io::Error>(read_reply(s).await)
                })
                .await
                .expect("reply timed out");
                let reply = match reply {
                    Ok(r) => r,
                    Err(_) => {
                        self.conns.remove(&at);
                        at = self.entry;
                        continue;
                    }
                };
                let redirect = reply.strip_prefix("-MOVED ").map(|r| (r, false));
                let redirect = redirect.or(reply.strip_prefix("-ASK ").map(|r| (r, true)));
                if let Some((rest, ask)) = redirect {
                    self.redirects.push(reply.clone());
                    let addr = rest.trim_end().split(' ').nth(1).unwrap();
                    at = addr.parse().unwrap();
                    if !ask {
                        self.slots.insert(slot, at);
                    }
                    asking = ask;
                    continue;
                }
                // A node that went away (a failover): ask again where the slot is.
                if reply.starts_with("-ERR ectunnel:") || reply.starts_with("-CLUSTERDOWN") {
                    self.conns.remove(&at);
                    self.slots.remove(&slot);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    at = self.entry;
                    asking = false;
                    continue;
                }
                return reply;
            }
            panic!("too many redirects for {args:?}: {:?}", self.redirects);
        }
    }

    fn bulk(s: &str) -> String {
        format!("${}\r\n{s}\r\n", s.len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topology_and_redirects_name_only_local_addresses() {
        let c = Cluster::start().await;
        let t = tunnel(&c, c.nodes[0].port, "").await;
        let mut s = connect(t.addr()).await;
        let mut nodes = HashSet::new();
        for sub in ["SLOTS", "SHARDS", "NODES"] {
            let reply = roundtrip(&mut s, &cmd(&["CLUSTER", sub])).await;
            nodes.extend(local_only(&c, &reply));
        }
        assert_eq!(nodes.len(), 6, "six node listeners: {nodes:?}");
        assert!(!nodes.contains(&t.addr().port()));
        // RESP3: maps, and CLUSTER NODES as a verbatim string.
        let hello = roundtrip(&mut s, &cmd(&["HELLO", "3"])).await;
        assert!(hello.starts_with('%'), "{hello}");
        for sub in ["SLOTS", "SHARDS", "NODES"] {
            let reply = roundtrip(&mut s, &cmd(&["CLUSTER", sub])).await;
            let again = local_only(&c, &reply);
            assert!(again.is_subset(&nodes), "{sub}: {again:?} vs {nodes:?}");
        }
        let nodes_reply = roundtrip(&mut s, &cmd(&["CLUSTER", "NODES"])).await;
        assert!(nodes_reply.starts_with('='), "{nodes_reply}");
        let myself = roundtrip(&mut s, &cmd(&["CLUSTER", "MYID"])).await;
        let id = myself.lines().last().unwrap().to_owned();
        let replicas = roundtrip(&mut s, &cmd(&["CLUSTER", "REPLICAS", &id])).await;
        assert!(local_only(&c, &replicas).len() <= 1, "{replicas}");

        // A key of another node: -MOVED to that node's local port, where it is served. The
        // first command of a connection goes over a shared session, the later ones too.
        let mut moved_seen = 0;
        for k in [0, 8000, 16000].map(key_for_slot) {
            let k = k.as_str();
            let mut plain = connect(t.addr()).await;
            let reply = roundtrip(&mut plain, &cmd(&["SET", k, "v"])).await;
            if let Some(rest) = reply.strip_prefix("-MOVED ") {
                moved_seen += 1;
                let addr: SocketAddr = rest.trim_end().split(' ').nth(1).unwrap().parse().unwrap();
                assert!(nodes.contains(&addr.port()), "{reply}");
                let mut there = connect(addr).await;
                assert_eq!(
                    roundtrip(&mut there, &cmd(&["SET", k, "v"])).await,
                    "+OK\r\n"
                );
                assert_eq!(roundtrip(&mut there, &cmd(&["GET", k])).await, bulk("v"));
            } else {
                assert_eq!(reply, "+OK\r\n");
            }
        }
        assert_eq!(moved_seen, 2, "two of three slots live on other nodes");

        // A value that looks like a redirect is data: byte for byte.
        let real = c.nodes[1].port;
        let fake = format!("-MOVED 1 127.0.0.1:{real}");
        let mut cl = Client::new(t.addr());
        assert_eq!(cl.call(&["SET", "{a}fake", &fake]).await, "+OK\r\n");
        assert_eq!(cl.call(&["GET", "{a}fake"]).await, bulk(&fake));
    }

    /// Runs a program to completion (bounded by [`WAIT`]); its stdout, or a panic with both
    /// outputs.
    async fn run(program: &str, args: &[String]) -> String {
        let mut p = tokio::process::Command::new(program);
        p.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, p.output())
            .await
            .unwrap_or_else(|_| panic!("{program} timed out"))
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cli_c_and_redis_py_cluster_work_through_one_port() {
        let c = Cluster::start().await;
        let t = tunnel(&c, c.nodes[2].port, "").await;
        let port = t.addr().port().to_string();
        // redis-cli -c follows -MOVED by itself: every key, whatever its node.
        for (i, slot) in [0u16, 6000, 12000, 16383].into_iter().enumerate() {
            let key = key_for_slot(slot);
            let value = format!("v{i}");
            let cli = |args: &[&str]| {
                let mut a: Vec<String> = ["-c", "-p", &port].map(String::from).to_vec();
                a.extend(args.iter().map(|s| s.to_string()));
                a
            };
            assert_eq!(
                run("redis-cli", &cli(&["SET", &key, &value])).await.trim(),
                "OK"
            );
            assert_eq!(run("redis-cli", &cli(&["GET", &key])).await.trim(), value);
        }
        // redis-py's RedisCluster: topology from CLUSTER SLOTS, then a connection per node.
        let script = format!(
            r#"
import redis.cluster as rc
c = rc.RedisCluster(host="127.0.0.1", port={port}, socket_timeout=10)
real = set({real:?})
for n in c.get_nodes():
    assert n.host == "127.0.0.1" and n.port not in real, (n.host, n.port)
for i in range(200):
    c.set("key:%d" % i, i)
assert all(int(c.get("key:%d" % i)) == i for i in range(200))
p = c.pipeline()
for i in range(50):
    p.incr("ctr:%d" % i)
assert p.execute() == [1] * 50
print(len(c.get_nodes()))
"#,
            real = c.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
        );
        let nodes = run("/usr/bin/python3", &["-c".into(), script]).await;
        assert_eq!(nodes.trim(), "6", "redis-py saw six nodes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resharding_with_ask_while_clients_run() {
        let c = Cluster::start().await;
        let t = tunnel(&c, c.nodes[0].port, "").await;
        let slot = 777;
        let from = c.owner_of(slot).await;
        let to = *c.primaries().await.iter().find(|&&p| p != from).unwrap();
        let keys = keys_for_slot(slot, 20);
        let mut cl = Client::new(t.addr());
        for k in &keys {
            assert_eq!(cl.call(&["SET", k, k]).await, "+OK\r\n");
        }
        // Clients keep writing and reading the slot's keys while it moves.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3 {
            let (entry, keys, stop) = (t.addr(), keys.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut cl = Client::new(entry);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = &keys[(n as usize + w) % keys.len()];
                    let got = cl.call(&["GET", k]).await;
                    assert_eq!(got, bulk(k), "{k}");
                    n += 1;
                }
                (n, cl.redirects)
            }));
        }
        let m = c.begin_migration(slot, to).await;
        // Half the keys moved: -ASK for those, through the tunnel, to the new owner's port.
        let mut plain = connect(t.addr()).await;
        let _ = roundtrip(&mut plain, &cmd(&["PING"])).await;
        assert!(c.migrate_keys(&m).await > 0);
        let reply = roundtrip(&mut plain, &cmd(&["GET", &keys[0]])).await;
        assert!(
            reply.starts_with(&format!("-ASK {slot} 127.0.0.1:")) || reply.starts_with("-MOVED"),
            "{reply}"
        );
        local_only(&c, &reply);
        c.finish_migration(m).await;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(500) {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for w in workers {
            let (n, redirects) = w.await.unwrap();
            total += n;
            for r in &redirects {
                local_only(&c, r);
            }
        }
        assert!(total > 0);
        let reply = roundtrip(&mut plain, &cmd(&["GET", &keys[0]])).await;
        assert!(
            reply.starts_with(&format!("-MOVED {slot} 127.0.0.1:")),
            "{reply}"
        );
        local_only(&c, &reply);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failover_is_followed_within_3s() {
        let mut c = Cluster::start().await;
        let t = tunnel(&c, c.nodes[0].port, "").await;
        let slot = 9000;
        let key = key_for_slot(slot);
        let mut cl = Client::new(t.addr());
        assert_eq!(cl.call(&["SET", &key, "1"]).await, "+OK\r\n");
        // A manual failover: the replica takes the slots, the old primary answers -MOVED.
        let owner = c.owner_of(slot).await;
        let promoted = c.failover(owner).await;
        let started = Instant::now();
        assert_eq!(cl.call(&["INCR", &key]).await, ":2\r\n");
        eprintln!(
            "writes resumed {:?} after the manual failover",
            started.elapsed()
        );
        // A primary that dies: the client's next writes land on the promoted replica.
        let dead = c.owner_of(slot).await;
        assert_eq!(dead, promoted);
        c.kill(dead);
        let started = Instant::now();
        let replacement = async {
            loop {
                let r = cl.call(&["INCR", &key]).await;
                if r.starts_with(':') {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let r = tokio::time::timeout(WAIT, replacement)
            .await
            .expect("writes resume");
        eprintln!(
            "writes resumed {:?} after the primary died",
            started.elapsed()
        );
        assert_eq!(r, ":3\r\n");
        for r in &cl.redirects {
            local_only(&c, r);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serverless_like_one_name_two_ports() {
        let host = "cache.serverless.test";
        let c = Cluster::serverless_like(host).await;
        let (primary, replica) = (c.nodes[0].port, c.nodes[1].port);
        let toml = format!(
            "[tls]\nca_file = \"{}\"\n\n[[listener]]\nname = \"serverless\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{host}:{primary}\"\n",
            c.pki.ca.display()
        );
        // The seam resolves the name for every port, as DNS does.
        let names = Names::default();
        names.point_ip(host, [127, 0, 0, 1].into());
        let resolver = ectunnel::upstream::Resolver::new(names);
        let t = Tunnel::start_with(&toml, resolver).await;
        let map = slot_map(t.addr()).await;
        assert_eq!(map.len(), 1, "{map:?}");
        let (lo_slot, hi_slot, p, r) = &map[0];
        assert_eq!((*lo_slot, *hi_slot, r.len()), (0, 16383, 1));
        assert_ne!(p.port(), r[0].port());
        for a in [p, &r[0]] {
            assert!(a.ip().is_loopback() && a.port() != primary && a.port() != replica);
        }
        let key = key_for_slot(5);
        let mut w = connect(*p).await;
        assert_eq!(
            roundtrip(&mut w, &cmd(&["SET", &key, "x"])).await,
            "+OK\r\n"
        );
        // On the read-from-replica port: -MOVED to the primary's local port, unless READONLY.
        let mut rd = connect(r[0]).await;
        let moved = roundtrip(&mut rd, &cmd(&["GET", &key])).await;
        assert_eq!(moved, format!("-MOVED 5 127.0.0.1:{}\r\n", p.port()));
        assert_eq!(roundtrip(&mut rd, &cmd(&["READONLY"])).await, "+OK\r\n");
        let read = async {
            loop {
                let got = roundtrip(&mut rd, &cmd(&["GET", &key])).await;
                if got == bulk("x") {
                    return;
                }
                assert_eq!(got, "$-1\r\n", "not yet replicated, or the value");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("read from the replica");
        let role = roundtrip(&mut rd, &cmd(&["ROLE"])).await;
        assert!(role.contains("slave"), "{role}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_pubsub_blocking_and_transactions_on_a_node() {
        let c = Cluster::start().await;
        let t = tunnel(&c, c.nodes[0].port, "").await;
        let slot = 12000;
        let channel = key_for_slot(slot);
        let mut cl = Client::new(t.addr());
        // Where the slot lives, locally.
        let moved = {
            let mut s = connect(t.addr()).await;
            roundtrip(&mut s, &cmd(&["SET", &channel, "x"])).await
        };
        let node: SocketAddr = match moved.strip_prefix("-MOVED ") {
            Some(rest) => rest.trim_end().split(' ').nth(1).unwrap().parse().unwrap(),
            None => t.addr(),
        };
        // SSUBSCRIBE on the node's port; SPUBLISH from another client.
        let mut sub = connect(node).await;
        let confirm = roundtrip(&mut sub, &cmd(&["SSUBSCRIBE", &channel])).await;
        assert!(confirm.contains("ssubscribe"), "{confirm}");
        assert_eq!(cl.call(&["SPUBLISH", &channel, "hello"]).await, ":1\r\n");
        let msg = read_reply(&mut sub).await;
        assert!(
            msg.contains("smessage") && msg.ends_with("$5\r\nhello\r\n"),
            "{msg}"
        );
        // A blocking pop woken by a push from another client.
        let list = format!("{{{channel}}}list");
        let mut blocked = connect(node).await;
        blocked
            .write_all(&cmd(&["BLPOP", &list, "10"]))
            .await
            .unwrap();
        assert_eq!(cl.call(&["RPUSH", &list, "item"]).await, ":1\r\n");
        let popped = read_reply(&mut blocked).await;
        assert_eq!(popped, format!("*2\r\n{}{}", bulk(&list), bulk("item")));
        // A transaction on the node.
        let mut tx = connect(node).await;
        assert_eq!(roundtrip(&mut tx, &cmd(&["MULTI"])).await, "+OK\r\n");
        assert_eq!(
            roundtrip(&mut tx, &cmd(&["INCR", &list.replace("list", "n")])).await,
            "+QUEUED\r\n"
        );
        assert_eq!(roundtrip(&mut tx, &cmd(&["EXEC"])).await, "*1\r\n:1\r\n");
        // A key of another slot inside MULTI: -MOVED (rewritten), then EXECABORT.
        let other = key_for_slot(100);
        assert_eq!(roundtrip(&mut tx, &cmd(&["MULTI"])).await, "+OK\r\n");
        let moved = roundtrip(&mut tx, &cmd(&["SET", &other, "y"])).await;
        assert!(moved.starts_with("-MOVED 100 127.0.0.1:"), "{moved}");
        local_only(&c, &moved);
        let abort = roundtrip(&mut tx, &cmd(&["EXEC"])).await;
        assert!(abort.starts_with("-EXECABORT"), "{abort}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_connect_reports_the_topology_and_metrics_name_nodes() {
        let c = Cluster::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let low = crate::common::free_port();
        let toml = format!(
            "[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"cluster\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{}\"\ncluster_ports = \"{low}-{}\"\n",
            c.pki.ca.display(),
            c.nodes[0].port,
            low + 9,
        );
        std::fs::write(&path, &toml).unwrap();
        let p = path.to_string_lossy().into_owned();
        let (code, out, err) = crate::common::run_bin(&["check", "-c", &p, "--connect"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("cluster: 3 shard(s), 6 node(s)"), "{out}");
        assert_eq!(out.matches(" primary 127.0.0.1:").count(), 3, "{out}");
        assert!(out.contains(&format!("-> 127.0.0.1:{low}")), "{out}");

        // Running: the node listeners take the range in topology order; metrics name them.
        let t = Tunnel::start(&toml).await;
        let map = slot_map(t.addr()).await;
        for (_, _, p, rs) in &map {
            for a in std::iter::once(p).chain(rs) {
                assert!(
                    (low..=low + 9).contains(&a.port()),
                    "{a} in {low}-{}",
                    low + 9
                );
            }
        }
        let admin = t.admin.unwrap();
        crate::common::eventually("every node listener dialled", || async {
            let m = crate::common::scrape(admin).await;
            let dialled = m.iter().filter(|(k, v)| {
                k.starts_with("ectunnel_dials_total{listener=cluster,node=127.0.0.1:")
                    && k.ends_with(",result=ok}")
                    && **v > 0.0
            });
            dialled.count() == 6
        })
        .await;
        let (status, body) = crate::common::http_get(admin, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
    }

    /// Thousands of pipelined replies, every other one a redirect, from two clients at once on
    /// the configured port's shared sessions: TLS records split replies anywhere, redirects
    /// included, and each client gets exactly its own replies, rewritten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_redirects_on_shared_sessions_split_anywhere() {
        let c = Cluster::start().await;
        let entry = c.nodes[0].port;
        let t = tunnel(&c, entry, "").await;
        let (here, away) = (key_for_slot(1), key_for_slot(16000));
        let mut d = c.direct(entry).await;
        assert_eq!(
            roundtrip(&mut d, &cmd(&["SET", &here, "local"])).await,
            "+OK\r\n"
        );
        let n = 3000;
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (addr, here, away) = (t.addr(), here.clone(), away.clone());
            clients.push(tokio::spawn(async move {
                let mut s = connect(addr).await;
                let mut batch = Vec::new();
                for i in 0..n {
                    batch.extend(cmd(&["GET", if i % 2 == 0 { &here } else { &away }]));
                }
                s.write_all(&batch).await.unwrap();
                let mut moved = None;
                for i in 0..n {
                    let r = read_reply(&mut s).await;
                    if i % 2 == 0 {
                        assert_eq!(r, bulk("local"), "reply {i}");
                    } else {
                        assert!(r.starts_with("-MOVED 16000 127.0.0.1:"), "reply {i}: {r}");
                        assert_eq!(*moved.get_or_insert_with(|| r.clone()), r);
                    }
                }
                moved.unwrap()
            }));
        }
        for cl in clients {
            local_only(&c, &cl.await.unwrap());
        }
    }

    /// A range too small for the cluster is said in /readyz, and a redirect to a node without
    /// a port is an ectunnel error, never the upstream address; a reload that widens it keeps
    /// every node's port and gives the others one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_port_range_is_reported_and_a_reload_widens_it() {
        let c = Cluster::start().await;
        let low = crate::common::free_port();
        let config = |high: u16| {
            format!(
                "[tls]\nca_file = \"{}\"\nserver_name = \"localhost\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"cluster\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{}\"\ncluster_ports = \"{low}-{high}\"\n",
                c.pki.ca.display(),
                c.nodes[0].port
            )
        };
        let t = Tunnel::start(&config(low + 1)).await;
        let admin = t.admin.unwrap();
        crate::common::eventually("readyz to say the range is full", || async {
            let (status, body) = crate::common::http_get(admin, "/readyz").await;
            status == 503 && body.contains("cluster_ports") && body.contains("full")
        })
        .await;
        // Two ports for six nodes: some primary has none, and a redirect to it is an error.
        let mut s = connect(t.addr()).await;
        let mut unmapped = None;
        for slot in [0, 8000, 16000] {
            let reply = roundtrip(&mut s, &cmd(&["GET", &key_for_slot(slot)])).await;
            if reply.starts_with("-ERR ectunnel: cluster 127.0.0.1:") {
                assert!(reply.contains("no local port"), "{reply}");
                unmapped = Some(slot);
            } else {
                local_only(&c, &reply);
            }
        }
        let slot = unmapped.expect("a primary without a local port");
        let wide = ectunnel::Config::from_toml(&config(low + 9), "test.toml").unwrap();
        t.reloader.reload(Ok(wide)).await.unwrap();
        crate::common::eventually("readyz after the reload", || async {
            crate::common::http_get(admin, "/readyz").await.0 == 200
        })
        .await;
        let map = slot_map(t.addr()).await;
        let ports: HashSet<u16> = map
            .iter()
            .flat_map(|(_, _, p, r)| std::iter::once(p).chain(r).map(|a| a.port()))
            .collect();
        assert_eq!(ports.len(), 6, "{map:?}");
        assert!(
            ports.contains(&low) && ports.contains(&(low + 1)),
            "kept: {ports:?}"
        );
        assert!(
            ports.iter().all(|p| (low..=low + 9).contains(p)),
            "{ports:?}"
        );
        let mut s = connect(t.addr()).await;
        let moved = roundtrip(&mut s, &cmd(&["GET", &key_for_slot(slot)])).await;
        assert!(
            moved.starts_with(&format!("-MOVED {slot} 127.0.0.1:")),
            "{moved}"
        );
        local_only(&c, &moved);
    }
}
