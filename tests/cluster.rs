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
