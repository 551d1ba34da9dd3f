//! A cluster's topology as the server states it: `CLUSTER SHARDS` (Redis 7+), else
//! `CLUSTER SLOTS`, read over a session of the tunnel's own and decoded into shards and nodes.

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;

use crate::limits::MAX_TOPOLOGY_REPLY;
use crate::upstream::conn::{self, Conn};

/// One node as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// What clients are told to connect to (`cluster-preferred-endpoint-type`): a hostname,
    /// an IP, `?` or empty.
    pub endpoint: String,
    pub ip: String,
    pub hostname: String,
    pub port: u16,
    pub primary: bool,
    /// `health` of `CLUSTER SHARDS` (`online`, `failed`, `loading`); `CLUSTER SLOTS` lists only
    /// nodes it considers up.
    pub health: String,
}

impl NodeInfo {
    /// The host to dial: the endpoint, else the IP, else `here` (the node that answered).
    pub fn host<'a>(&'a self, here: &'a str) -> &'a str {
        [self.endpoint.as_str(), self.ip.as_str()]
            .into_iter()
            .find(|h| !h.is_empty() && *h != "?")
            .unwrap_or(here)
    }

    /// Every name the cluster's replies may use for this node.
    pub fn names<'a>(&'a self, here: &'a str) -> impl Iterator<Item = &'a str> {
        [self.host(here), self.ip.as_str(), self.hostname.as_str()]
            .into_iter()
            .filter(|h| !h.is_empty() && *h != "?")
    }
}

/// One shard: its slot ranges and nodes, primary first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    pub slots: Vec<(u16, u16)>,
    pub nodes: Vec<NodeInfo>,
}

/// Reads the topology on `c`: `CLUSTER SHARDS`, or `CLUSTER SLOTS` where the server does not
/// know it (before Redis 7).
pub async fn read(c: &mut Conn) -> Result<Vec<Shard>, String> {
    let mut buf = std::mem::take(&mut c.leftover);
    let shards = ask(c, b"SHARDS", &mut buf).await?;
    let result = match shards {
        OwnedFrame::Error(e) if e.contains("unknown subcommand") || e.contains("Unknown") => {
            let slots = ask(c, b"SLOTS", &mut buf).await?;
            from_slots(&slots)
        }
        other => from_shards(&other),
    };
    if !buf.is_empty() {
        return Err("unexpected bytes after the topology reply".into());
    }
    result
}

async fn ask(c: &mut Conn, sub: &[u8], buf: &mut BytesMut) -> Result<OwnedFrame, String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = BytesMut::new();
    crate::proto::encode_command(&mut cmd, &[b"CLUSTER", sub]);
    let io = |e: std::io::Error| e.to_string();
    c.stream.write_all(&cmd).await.map_err(io)?;
    c.stream.flush().await.map_err(io)?;
    conn::read_frame_max(&mut c.stream, buf, MAX_TOPOLOGY_REPLY)
        .await
        .map_err(|e| e.to_string())
}

fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        OwnedFrame::SimpleString(s) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

fn int(f: &OwnedFrame) -> Option<i64> {
    match f {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

/// A RESP2 flat key/value array as pairs.
fn pairs(f: &OwnedFrame) -> Option<impl Iterator<Item = (String, &OwnedFrame)>> {
    let OwnedFrame::Array(items) = f else {
        return None;
    };
    Some(items.chunks(2).filter_map(|kv| match kv {
        [k, v] => Some((text(k)?, v)),
        _ => None,
    }))
}

fn refused(reply: &OwnedFrame) -> Option<String> {
    match reply {
        OwnedFrame::Error(e) => Some(crate::proto::printable(e)),
        _ => None,
    }
}

/// `CLUSTER SHARDS`: `[{slots: [lo, hi, …], nodes: [{id, port|tls-port, ip, endpoint,
/// hostname?, role, replication-offset, health}…]}…]`.
pub fn from_shards(reply: &OwnedFrame) -> Result<Vec<Shard>, String> {
    if let Some(e) = refused(reply) {
        return Err(e);
    }
    let OwnedFrame::Array(shards) = reply else {
        return Err("CLUSTER SHARDS answered with something other than an array".into());
    };
    let mut out = Vec::with_capacity(shards.len());
    for s in shards {
        let mut shard = Shard::default();
        for (k, v) in pairs(s).ok_or("a shard that is not a map")? {
            match (k.as_str(), v) {
                ("slots", OwnedFrame::Array(bounds)) => {
                    let bounds: Vec<i64> = bounds.iter().filter_map(int).collect();
                    shard.slots = bounds
                        .chunks(2)
                        .filter_map(|b| match b {
                            [lo, hi] => Some((slot(*lo)?, slot(*hi)?)),
                            _ => None,
                        })
                        .collect();
                }
                ("nodes", OwnedFrame::Array(nodes)) => {
                    for n in nodes {
                        shard.nodes.push(shard_node(n)?);
                    }
                }
                _ => {}
            }
        }
        shard.nodes.sort_by_key(|n| !n.primary);
        out.push(shard);
    }
    Ok(out)
}

fn slot(i: i64) -> Option<u16> {
    u16::try_from(i).ok().filter(|s| *s < 16384)
}

fn shard_node(n: &OwnedFrame) -> Result<NodeInfo, String> {
    let mut node = NodeInfo {
        id: String::new(),
        endpoint: String::new(),
        ip: String::new(),
        hostname: String::new(),
        port: 0,
        primary: false,
        health: String::new(),
    };
    let mut tls_port = 0;
    for (k, v) in pairs(n).ok_or("a node that is not a map")? {
        let t = || text(v).unwrap_or_default();
        let port = || int(v).and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        match k.as_str() {
            "id" => node.id = t(),
            "endpoint" => node.endpoint = t(),
            "ip" => node.ip = t(),
            "hostname" => node.hostname = t(),
            "port" => node.port = port(),
            "tls-port" => tls_port = port(),
            "role" => node.primary = t() == "master",
            "health" => node.health = t(),
            _ => {}
        }
    }
    // Over TLS the server lists the TLS port as `port` (tls-cluster) or as `tls-port` beside
    // a plain `port`: the tunnel dials TLS.
    if tls_port != 0 {
        node.port = tls_port;
    }
    Ok(node)
}

/// `CLUSTER SLOTS`: `[[lo, hi, [endpoint, port, id, {ip, hostname}?], replica…]…]`, grouped
/// into shards by primary.
pub fn from_slots(reply: &OwnedFrame) -> Result<Vec<Shard>, String> {
    if let Some(e) = refused(reply) {
        return Err(e);
    }
    let OwnedFrame::Array(ranges) = reply else {
        return Err("CLUSTER SLOTS answered with something other than an array".into());
    };
    let mut out: Vec<Shard> = Vec::new();
    for r in ranges {
        let OwnedFrame::Array(items) = r else {
            return Err("a slot range that is not an array".into());
        };
        let (Some(lo), Some(hi)) = (
            items.first().and_then(int).and_then(slot),
            items.get(1).and_then(int).and_then(slot),
        ) else {
            return Err("a slot range without its bounds".into());
        };
        let nodes: Vec<NodeInfo> = items[2..]
            .iter()
            .enumerate()
            .filter_map(|(i, n)| slots_node(n, i == 0))
            .collect();
        let Some(primary) = nodes.first() else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.nodes.first().is_some_and(|p| p.id == primary.id))
        {
            Some(s) => s.slots.push((lo, hi)),
            None => out.push(Shard {
                slots: vec![(lo, hi)],
                nodes,
            }),
        }
    }
    Ok(out)
}

fn slots_node(n: &OwnedFrame, primary: bool) -> Option<NodeInfo> {
    let OwnedFrame::Array(f) = n else {
        return None;
    };
    let mut node = NodeInfo {
        endpoint: f.first().and_then(text).unwrap_or_default(),
        port: f.get(1).and_then(int).and_then(|p| u16::try_from(p).ok())?,
        id: f.get(2).and_then(text).unwrap_or_default(),
        ip: String::new(),
        hostname: String::new(),
        primary,
        health: "online".into(),
    };
    if let Some(meta) = f.get(3).and_then(pairs) {
        for (k, v) in meta {
            match k.as_str() {
                "ip" => node.ip = text(v).unwrap_or_default(),
                "hostname" => node.hostname = text(v).unwrap_or_default(),
                _ => {}
            }
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> OwnedFrame {
        redis_protocol::resp2::decode::decode(&bytes::Bytes::copy_from_slice(bytes))
            .unwrap()
            .unwrap()
            .0
    }

    fn bulk(s: &str) -> String {
        format!("${}\r\n{s}\r\n", s.len())
    }

    fn node_map(id: &str, port: u16, role: &str) -> String {
        let mut s = String::from("*14\r\n");
        for (k, v) in [("id", id), ("ip", "10.0.0.1"), ("endpoint", "n1.example")] {
            s += &bulk(k);
            s += &bulk(v);
        }
        s += &bulk("tls-port");
        s += &format!(":{port}\r\n");
        s += &bulk("hostname");
        s += &bulk("");
        for (k, v) in [("role", role), ("health", "online")] {
            s += &bulk(k);
            s += &bulk(v);
        }
        s
    }

    #[test]
    fn reads_shards_with_the_tls_port_and_the_primary_first() {
        let reply = format!(
            "*1\r\n*4\r\n{}*2\r\n:0\r\n:16383\r\n{}*2\r\n{}{}",
            bulk("slots"),
            bulk("nodes"),
            node_map("r", 7001, "replica"),
            node_map("p", 7000, "master"),
        );
        let shards = from_shards(&decode(reply.as_bytes())).unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].slots, vec![(0, 16383)]);
        let ids: Vec<_> = shards[0].nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["p", "r"]);
        let p = &shards[0].nodes[0];
        assert_eq!((p.port, p.primary, p.host("x")), (7000, true, "n1.example"));
        let names: Vec<_> = p.names("x").collect();
        assert_eq!(names, ["n1.example", "10.0.0.1"]);
    }

    #[test]
    fn reads_slots_grouped_by_primary_with_and_without_metadata() {
        let node = |ep: &str, port: u16, id: &str, meta: bool| {
            let mut s = if meta { "*4\r\n" } else { "*3\r\n" }.to_owned();
            s += &bulk(ep);
            s += &format!(":{port}\r\n");
            s += &bulk(id);
            if meta {
                s += &format!("*2\r\n{}{}", bulk("ip"), bulk("10.0.0.9"));
            }
            s
        };
        let reply = format!(
            "*2\r\n*4\r\n:0\r\n:99\r\n{}{}*3\r\n:100\r\n:199\r\n{}",
            node("?", 7000, "p", true),
            node("b", 7001, "r", false),
            node("?", 7000, "p", true),
        );
        let shards = from_slots(&decode(reply.as_bytes())).unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].slots, vec![(0, 99), (100, 199)]);
        assert_eq!(shards[0].nodes[0].host("here"), "10.0.0.9");
        assert_eq!(shards[0].nodes[1].host("here"), "b");
        assert!(
            from_slots(&decode(
                b"-ERR This instance has cluster support disabled\r\n"
            ))
            .is_err()
        );
    }
}
