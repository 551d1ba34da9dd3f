//! A session of its own that outlives its listener (a reload removed it: "open sessions
//! continue") costs nothing while idle. Alone in its test binary: it reads the process's CPU
//! time, which other tests running beside it would add to.

mod common;

use std::time::Duration;

use common::*;

/// CPU time of this process so far, in clock ticks (utime + stime).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_whose_listener_was_removed_does_not_spin() {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &[]);
    let upstream = format!("localhost:{}", redis.port);
    let toml = format!(
        "{}[listener.pool]\nmultiplex = 0\nmin_idle = 0\n",
        listener_toml(&upstream, &pki, "")
    );
    let tunnel = Tunnel::start(&toml).await;
    let mut c = connect(tunnel.addr()).await;
    assert_eq!(roundtrip(&mut c, &cmd(&["WATCH", "x"])).await, "+OK\r\n");
    // The listener is renamed: the old one is removed, its handle's sender dropped.
    let renamed = toml.replace("name = \"primary\"", "name = \"other\"");
    let config = ectunnel::Config::from_toml(&renamed, "renamed.toml").unwrap();
    tunnel.reloader.reload(Ok(config)).await.unwrap();
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks() - before;
    // A spinning task takes most of a core: about 100 ticks a second.
    assert!(spent < 40, "{spent} ticks of CPU in 2 s of idling");
    assert_eq!(roundtrip(&mut c, &cmd(&["PING"])).await, "+PONG\r\n");
}
