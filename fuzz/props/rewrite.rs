//! Cluster-mode address rewriting (`proto::rewrite`), on one reply and through the session
//! engine. Byte 0 picks what the reply answers (`CLUSTER SLOTS|SHARDS|NODES|REPLICAS`, or an
//! error that may be a redirect) and seeds the cuts; the rest is the reply. Properties:
//! nothing panics; a rewritten reply is one whole RESP frame (after an attribute, if any) of
//! the input's type and top-level count; rewriting it again with its local addresses mapped to
//! themselves gives it back byte for byte; with every address of the input mapped to itself the
//! input comes back; no address a client reads from a rewritten reply is an upstream one; and a
//! session with rewriting on gives the client the same bytes however the server's are cut.
//!
//! Which fields a client reads as addresses is decided here on its own (a small RESP reader
//! and the documented reply layouts), not by asking the module.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ectunnel::config::ClientAuth;
use ectunnel::proto::memory::MemSession;
use ectunnel::proto::rewrite::{Here, Map, Outcome, Rewrite, Topology, redirect, topology};
use ectunnel::proto::scan::{Dir, Scanner};

use super::split;

/// What the reply answers: a topology command, or `None` for an error line (a redirect).
pub fn kind(selector: u8) -> Option<Topology> {
    match selector % 5 {
        0 => Some(Topology::Slots),
        1 => Some(Topology::Shards),
        2 => Some(Topology::Nodes),
        3 => Some(Topology::Replicas),
        _ => None,
    }
}

/// The session's own node, for empty endpoints.
const HERE: Here<'static> = Here {
    host: "10.0.0.1",
    port: 6379,
};

/// The local address of upstream port `port`: 127.0.0.1, port + 1000.
fn shifted(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], port.checked_add(1000)?)))
}

/// The cluster the tunnel knows: `10.0.0.1` and `n1.example`, any port; other nodes have no
/// local address.
struct Upstream;

impl Map for Upstream {
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
        matches!(host, "10.0.0.1" | "n1.example")
            .then(|| shifted(port))
            .flatten()
    }
}

/// Every node has a local address, so that whatever parses is rewritten.
struct Anything;

impl Map for Anything {
    fn local(&self, _: &str, port: u16) -> Option<SocketAddr> {
        shifted(port)
    }
}

/// The local addresses at themselves.
struct LocalIdentity;

impl Map for LocalIdentity {
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
        (host == "127.0.0.1").then(|| SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// Every IP address, written as Rust writes it, at itself.
struct Identity;

impl Map for Identity {
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let ip: IpAddr = host.parse().ok()?;
        (ip.to_string() == host).then(|| SocketAddr::new(ip, port))
    }
}

fn rewrite(kind: Option<Topology>, reply: &[u8], here: Here<'_>, map: &dyn Map) -> Outcome {
    match kind {
        Some(k) => topology(k, reply, here, map),
        None => redirect(reply, here, map),
    }
}

fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// The property for one fuzz input.
pub fn check(data: &[u8]) {
    let (selector, reply) = split::header(data);
    let kind = kind(selector);
    let input = Value::parse_all(reply);
    for map in [&Upstream as &dyn Map, &Anything] {
        let Outcome::Rewritten(out) = rewrite(kind, reply, HERE, map) else {
            continue;
        };
        one_frame(kind, reply, input.as_ref(), &out);
        only_local(kind, &out);
        match rewrite(kind, &out, Here { host: "", port: 0 }, &LocalIdentity) {
            Outcome::Rewritten(again) => assert_eq!(
                show(&again),
                show(&out),
                "rewriting a rewritten reply again changed it"
            ),
            Outcome::Unchanged => {}
            Outcome::Unmapped(node) => {
                panic!("rewritten reply {} still names {node}", show(&out))
            }
        }
    }
    if identity_holds(kind, reply) {
        match rewrite(kind, reply, Here { host: "", port: 0 }, &Identity) {
            Outcome::Rewritten(out) => assert_eq!(
                show(&out),
                show(reply),
                "every address mapped to itself, yet the reply changed"
            ),
            Outcome::Unchanged | Outcome::Unmapped(_) => {}
        }
    }
    engine(selector, kind, reply);
}

/// `out` scans as one whole reply (two frames when an attribute leads), of the input's type and
/// top-level count.
fn one_frame(kind: Option<Topology>, reply: &[u8], input: Option<&Value>, out: &[u8]) {
    let mut s = Scanner::new(Dir::Reply);
    let (mut at, mut frames) = (0, 0);
    while at < out.len() {
        let (n, done) = s
            .feed(&out[at..])
            .unwrap_or_else(|e| panic!("rewritten reply {} is not RESP: {e:?}", show(out)));
        at += n;
        frames += usize::from(done);
    }
    assert!(
        s.at_boundary(),
        "rewritten reply {} is cut short",
        show(out)
    );
    let want = if out.first() == Some(&b'|') { 2 } else { 1 };
    assert_eq!(
        frames,
        want,
        "rewritten reply {} is not one frame",
        show(out)
    );
    assert_eq!(
        out.first(),
        reply.first(),
        "rewritten reply {} changed type",
        show(out)
    );
    if kind.is_none() {
        let prefix = if reply.starts_with(b"-MOVED ") {
            &b"-MOVED "[..]
        } else {
            b"-ASK "
        };
        assert!(
            out.starts_with(prefix),
            "redirect {} changed kind",
            show(out)
        );
        return;
    }
    let input = input.unwrap_or_else(|| panic!("{} rewritten, but not one reply", show(reply)));
    let output = Value::parse_all(out).expect("scanned as one reply");
    assert_eq!(
        (input.ty, input.items.len()),
        (output.ty, output.items.len()),
        "rewritten reply {} changed type or count",
        show(out)
    );
}

/// No address a client reads from `out` is other than a local one.
fn only_local(kind: Option<Topology>, out: &[u8]) {
    if kind.is_none() {
        for upstream in [&b"10.0.0.1:"[..], b"n1.example"] {
            assert!(
                !out.windows(upstream.len()).any(|w| w == upstream),
                "redirect {} still names an upstream node",
                show(out)
            );
        }
    }
    let nodes = addresses(kind, out).unwrap_or_else(|| {
        panic!(
            "rewritten reply {} is not of its command's shape",
            show(out)
        )
    });
    for node in nodes.iter().filter(|n| n.reachable) {
        for host in node.hosts() {
            assert_eq!(
                show(host),
                "127.0.0.1",
                "rewritten reply {} names an upstream node",
                show(out)
            );
        }
    }
}

/// Whether every address of `reply` is an IP written as Rust writes it with a port written as
/// a number, one of each per node: then mapping each to itself must give the reply back.
fn identity_holds(kind: Option<Topology>, reply: &[u8]) -> bool {
    let Some(nodes) = addresses(kind, reply) else {
        return false;
    };
    nodes.iter().filter(|n| n.looked_up()).all(|n| {
        let hosts: Vec<&[u8]> = n.hosts().collect();
        let ports: Vec<&Vec<u8>> = n.ports.iter().filter(|p| port_of(p).is_some()).collect();
        let canonical_ip = |h: &[u8]| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.to_string().as_bytes() == h)
        };
        let canonical_port = |p: &[u8]| port_of(p).is_some_and(|n| n.to_string().as_bytes() == p);
        !hosts.is_empty()
            && hosts.iter().all(|h| *h == hosts[0] && canonical_ip(h))
            && !n.empty_host
            && ports.iter().all(|p| *p == ports[0] && canonical_port(p))
    })
}

/// The engine with rewriting on, `CLUSTER <kind>` and GETs pipelined (GETs only for a
/// redirect), the reply bytes from the server in every split: the same outcome each time.
fn engine(seed: u8, kind: Option<Topology>, replies: &[u8]) {
    let name = match kind {
        Some(Topology::Slots) => "SLOTS",
        Some(Topology::Shards) => "SHARDS",
        Some(Topology::Nodes) => "NODES",
        Some(Topology::Replicas) => "REPLICAS",
        None => "",
    };
    let mut requests = Vec::new();
    for args in [
        &["CLUSTER", name][..],
        &["GET", "a"],
        &["CLUSTER", "SLOTS"],
        &["GET", "b"],
    ] {
        let args = if args[1].is_empty() {
            &["GET", "k"][..]
        } else {
            args
        };
        requests.extend(format!("*{}\r\n", args.len()).bytes());
        for a in args {
            requests.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
    }
    let run = |lens: &[usize]| {
        let mut s = MemSession::new(ClientAuth::Passthrough, None);
        s.set_rewrite(Some(Rewrite {
            map: Arc::new(Upstream),
            here: HERE.host.into(),
        }));
        let (mut up, mut client) = (Vec::new(), Vec::new());
        assert!(!s.client_sends(&requests, &mut up, &mut client));
        assert_eq!(up, requests, "requests changed on their way upstream");
        let mut closed = false;
        for chunk in split::chunks(replies, lens) {
            if s.server_sends(chunk, &mut client) {
                closed = true;
                break;
            }
        }
        (show(&client), closed, s.pending_replies())
    };
    let splits = split::splittings(seed, replies.len());
    let want = run(&splits[0]);
    for lens in &splits[1..] {
        assert_eq!(
            run(lens),
            want,
            "replies split {lens:?} reach the client differently"
        );
    }
}

/// A TCP port as decimal text, as the documented formats give it.
fn port_of(text: &[u8]) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The address fields of one node as a client reads them.
#[derive(Debug, Default)]
struct Node {
    /// Endpoint, IP and hostname texts (a null endpoint left out).
    host_fields: Vec<Vec<u8>>,
    /// Port texts (an integer's digits, or a string's text).
    ports: Vec<Vec<u8>>,
    /// It has a port to reach it on (not `:0`, not a `CLUSTER SHARDS` node without ports).
    reachable: bool,
    /// An address field the tunnel fills in is empty ("the node this connection is on").
    empty_host: bool,
}

impl Node {
    /// The host texts naming an address: not empty, not `?`.
    fn hosts(&self) -> impl Iterator<Item = &[u8]> {
        self.host_fields
            .iter()
            .map(Vec::as_slice)
            .filter(|h| !h.is_empty() && *h != b"?")
    }

    /// Whether the tunnel needs a local address for it.
    fn looked_up(&self) -> bool {
        self.reachable && (self.empty_host || self.hosts().next().is_some())
    }
}

/// The nodes a reply names, read as a cluster client reads them; None when the reply is not of
/// the command's documented shape.
fn addresses(kind: Option<Topology>, reply: &[u8]) -> Option<Vec<Node>> {
    let Some(kind) = kind else {
        return redirect_node(reply).map(|n| vec![n]);
    };
    let v = Value::parse_all(reply)?;
    let mut nodes = Vec::new();
    match kind {
        Topology::Slots => {
            for range in v.array()? {
                let items = range.array()?;
                if items.len() < 2 {
                    return None;
                }
                for node in &items[2..] {
                    nodes.push(slots_node(node)?);
                }
            }
        }
        Topology::Shards => {
            for shard in v.array()? {
                for (k, val) in shard.pairs()? {
                    if k.text() == Some(b"nodes") {
                        for node in val.array()? {
                            nodes.push(shards_node(node)?);
                        }
                    }
                }
            }
        }
        Topology::Nodes => node_lines(&v, &mut nodes)?,
        Topology::Replicas => {
            for s in v.array()? {
                node_lines(s, &mut nodes)?;
            }
        }
    }
    Some(nodes)
}

fn redirect_node(line: &[u8]) -> Option<Node> {
    let rest = line
        .strip_prefix(b"-MOVED ")
        .or_else(|| line.strip_prefix(b"-ASK "))?
        .strip_suffix(b"\r\n")?;
    let mut words = rest.split(|&b| b == b' ');
    let (_slot, addr) = (words.next()?, words.next()?);
    if words.next().is_some() || addr.contains(&b'\r') || addr.contains(&b'\n') {
        return None;
    }
    let colon = addr.iter().rposition(|&b| b == b':')?;
    let (host, port) = (&addr[..colon], &addr[colon + 1..]);
    port_of(port)?;
    Some(Node {
        host_fields: vec![host.to_vec()],
        ports: vec![port.to_vec()],
        reachable: true,
        empty_host: host.is_empty(),
    })
}

/// `[endpoint, port, id, {ip, hostname}]`, the endpoint null or a string.
fn slots_node(v: &Value) -> Option<Node> {
    let items = v.array()?;
    let (endpoint, port) = (items.first()?, items.get(1)?);
    let mut n = Node {
        reachable: true,
        ..Node::default()
    };
    if !endpoint.is_null() {
        let text = endpoint.text()?;
        n.empty_host = text.is_empty();
        n.host_fields.push(text.to_vec());
    }
    let port = port.port_text()?;
    port_of(port)?;
    n.ports.push(port.to_vec());
    if let Some(meta) = items.get(3).and_then(Value::pairs) {
        for key in [&b"ip"[..], b"hostname"] {
            // A map's last value for a key is the one a client keeps.
            if let Some((_, v)) = meta.iter().rev().find(|(k, _)| k.text() == Some(key))
                && let Some(t) = v.text()
            {
                n.host_fields.push(t.to_vec());
            }
        }
    }
    Some(n)
}

/// `{id, port, tls-port, ip, endpoint, hostname, …}`.
fn shards_node(v: &Value) -> Option<Node> {
    let pairs = v.pairs()?;
    let last = |key: &[u8]| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k.text() == Some(key))
            .map(|(_, v)| *v)
    };
    let mut n = Node::default();
    for key in [&b"endpoint"[..], b"ip", b"hostname"] {
        if let Some(t) = last(key).and_then(Value::text) {
            n.host_fields.push(t.to_vec());
        }
    }
    // An empty endpoint or IP means the session's own node, and is rewritten as one.
    n.empty_host = [&b"endpoint"[..], b"ip"].into_iter().any(|key| {
        last(key)
            .and_then(Value::text)
            .is_some_and(<[u8]>::is_empty)
    });
    for key in [&b"port"[..], b"tls-port"] {
        if let Some(p) = last(key).and_then(Value::port_text)
            && port_of(p).is_some_and(|p| p != 0)
        {
            n.ports.push(p.to_vec());
            n.reachable = true;
        }
    }
    Some(n)
}

/// `<id> <ip>:<port>@<cport>[,<hostname>[,…]] <flags> …` lines in a bulk or verbatim string.
fn node_lines(v: &Value, nodes: &mut Vec<Node>) -> Option<()> {
    if !matches!(v.ty, b'$' | b'=') {
        return None;
    }
    for line in v.text()?.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let sp = line.iter().position(|&b| b == b' ')?;
        let addr = line[sp + 1..].split(|&b| b == b' ').next()?;
        let mut parts = addr.split(|&b| b == b',');
        let hostport = parts.next()?;
        let hostname = parts.next().unwrap_or_default();
        let hostport = hostport.split(|&b| b == b'@').next()?;
        let colon = hostport.iter().rposition(|&b| b == b':')?;
        let (ip, port) = (&hostport[..colon], &hostport[colon + 1..]);
        let p = port_of(port)?;
        nodes.push(Node {
            // Empty: the session's own node, or the node of the hostname; rewritten either way.
            empty_host: ip.is_empty(),
            host_fields: vec![ip.to_vec(), hostname.to_vec()],
            ports: vec![port.to_vec()],
            reachable: p != 0,
        });
    }
    Some(())
}

/// One RESP2/RESP3 value, attributes dropped.
#[derive(Debug)]
struct Value {
    ty: u8,
    /// The line after the type byte, or a blob's payload (a verbatim string's after `xxx:`).
    text: Vec<u8>,
    /// An aggregate's children (a map's keys and values in turn); -1-length nulls have none.
    items: Vec<Value>,
    null: bool,
}

impl Value {
    /// `buf` is exactly one reply (attributes allowed before any value).
    fn parse_all(buf: &[u8]) -> Option<Value> {
        let mut at = 0;
        let v = Value::parse(buf, &mut at, 0)?;
        (at == buf.len()).then_some(v)
    }

    fn parse(buf: &[u8], at: &mut usize, depth: usize) -> Option<Value> {
        if depth > 2048 {
            return None;
        }
        loop {
            let ty = *buf.get(*at)?;
            let nl = *at + 1 + buf[*at + 1..].windows(2).position(|w| w == b"\r\n")?;
            let line = &buf[*at + 1..nl];
            *at = nl + 2;
            // A length or count: optional `-`, then digits.
            let len = || -> Option<i64> {
                let digits = line.strip_prefix(b"-").unwrap_or(line);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                std::str::from_utf8(line).ok()?.parse().ok()
            };
            let mut v = Value {
                ty,
                text: Vec::new(),
                items: Vec::new(),
                null: false,
            };
            match ty {
                b'+' | b'-' | b':' | b',' | b'#' | b'(' => v.text = line.to_vec(),
                b'_' => v.null = true,
                b'$' | b'!' | b'=' => {
                    let n = len()?;
                    if n == -1 && ty == b'$' {
                        v.null = true;
                    } else {
                        let n = usize::try_from(n).ok()?;
                        let end = at.checked_add(n)?;
                        if buf.get(end..end + 2)? != b"\r\n" {
                            return None;
                        }
                        let mut payload = &buf[*at..end];
                        if ty == b'=' {
                            if n < 4 || payload[3] != b':' {
                                return None;
                            }
                            payload = &payload[4..];
                        }
                        v.text = payload.to_vec();
                        *at = end + 2;
                    }
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    let n = len()?;
                    if n == -1 && ty == b'*' {
                        v.null = true;
                    } else {
                        let n = usize::try_from(n).ok()?;
                        let n = if matches!(ty, b'%' | b'|') {
                            n.saturating_mul(2)
                        } else {
                            n
                        };
                        if n > buf.len() {
                            return None;
                        }
                        for _ in 0..n {
                            v.items.push(Value::parse(buf, at, depth + 1)?);
                        }
                    }
                }
                _ => return None,
            }
            if ty != b'|' {
                return Some(v);
            }
        }
    }

    fn is_null(&self) -> bool {
        self.null
    }

    /// A string's text (bulk, simple, verbatim).
    fn text(&self) -> Option<&[u8]> {
        (matches!(self.ty, b'$' | b'+' | b'=') && !self.null).then_some(&self.text[..])
    }

    /// An integer's digits or a string's text.
    fn port_text(&self) -> Option<&[u8]> {
        if self.ty == b':' {
            Some(&self.text)
        } else {
            self.text()
        }
    }

    fn array(&self) -> Option<&[Value]> {
        (self.ty == b'*' && !self.null).then_some(&self.items[..])
    }

    /// A RESP3 map, or a RESP2 array of keys and values in turn.
    fn pairs(&self) -> Option<Vec<(&Value, &Value)>> {
        match self.ty {
            b'%' => {}
            b'*' if !self.null && self.items.len().is_multiple_of(2) => {}
            _ => return None,
        }
        Some(self.items.chunks(2).map(|p| (&p[0], &p[1])).collect())
    }
}
