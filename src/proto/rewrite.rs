//! Cluster mode: node addresses in replies, rewritten to the tunnel's local listeners.
//!
//! A cluster client learns where nodes are from `-MOVED`/`-ASK` redirects and from `CLUSTER
//! SLOTS|SHARDS|NODES|REPLICAS`; every address it sees must be one it can reach, that is the
//! local listener the tunnel gives that node. Only the addresses change: a small borrowed
//! parser notes each element's byte span, untouched elements are copied verbatim, and replaced
//! scalars are re-encoded in the type they had (lengths of the strings holding them, and of the
//! bulk or verbatim string around `CLUSTER NODES` text, recomputed; aggregate counts never
//! change). Anything not shaped as expected is left alone rather than guessed at.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use memchr::{memchr, memrchr};

/// Where a cluster node is reachable through the tunnel.
pub trait Map {
    /// The local address for upstream node `host:port` (`host` as the reply spells it: a
    /// hostname, an IPv4 text, or an unbracketed IPv6 text); None when there is none.
    fn local(&self, host: &str, port: u16) -> Option<SocketAddr>;

    /// A client was redirected with `-MOVED`: slots moved, the topology is due for a read.
    fn redirected(&self) {}

    /// A session rewrites with this map from now on (its server is in cluster mode).
    fn in_use(&self) {}
}

/// Which topology command a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Slots,
    Shards,
    Nodes,
    /// `CLUSTER REPLICAS` and its older name `CLUSTER SLAVES`.
    Replicas,
}

impl Topology {
    /// From a command's arguments (case-insensitive): `CLUSTER SLOTS|SHARDS|NODES|REPLICAS|SLAVES`.
    pub fn of(args: &[&[u8]]) -> Option<Topology> {
        let [cmd, sub, ..] = args else {
            return None;
        };
        if !cmd.eq_ignore_ascii_case(b"CLUSTER") {
            return None;
        }
        let is = |name: &[u8]| sub.eq_ignore_ascii_case(name);
        if is(b"SLOTS") {
            Some(Topology::Slots)
        } else if is(b"SHARDS") {
            Some(Topology::Shards)
        } else if is(b"NODES") {
            Some(Topology::Nodes)
        } else if is(b"REPLICAS") || is(b"SLAVES") {
            Some(Topology::Replicas)
        } else {
            None
        }
    }
}

/// The upstream node the session is on: what an empty endpoint ("same host") means.
#[derive(Debug, Clone, Copy)]
pub struct Here<'a> {
    pub host: &'a str,
    pub port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to rewrite (not a redirect, not an address-carrying shape, `?`/null endpoints
    /// only).
    Unchanged,
    Rewritten(Bytes),
    /// A node the map has no local address for: its `host:port` as found (the caller replaces
    /// the reply with an `-ERR ectunnel:` error rather than leak an unreachable address).
    Unmapped(String),
}

/// Fast check used on the hot path: whether an error line may be a redirect (starts with
/// `-MOVED ` or `-ASK `).
pub fn is_redirect(head: &[u8]) -> bool {
    head.starts_with(b"-MOVED ") || head.starts_with(b"-ASK ")
}

/// `reply` is one whole simple-error line including CRLF, e.g. `-MOVED 3999 10.0.0.5:6379\r\n`
/// or `-ASK 3999 host.example:6380\r\n`. Anything else → Unchanged.
pub fn redirect(reply: &[u8], here: Here<'_>, map: &dyn Map) -> Outcome {
    let Some(rest) = reply
        .strip_prefix(b"-MOVED ")
        .or_else(|| reply.strip_prefix(b"-ASK "))
    else {
        return Outcome::Unchanged;
    };
    let Some(line) = rest.strip_suffix(b"\r\n") else {
        return Outcome::Unchanged;
    };
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Outcome::Unchanged;
    }
    let Some(sp) = memchr(b' ', line) else {
        return Outcome::Unchanged;
    };
    let (slot, addr) = (&line[..sp], &line[sp + 1..]);
    if slot.is_empty() || !slot.iter().all(u8::is_ascii_digit) || addr.contains(&b' ') {
        return Outcome::Unchanged;
    }
    let Some(colon) = memrchr(b':', addr) else {
        return Outcome::Unchanged;
    };
    let (host, port) = (&addr[..colon], &addr[colon + 1..]);
    let Some(port) = port_of(port) else {
        return Outcome::Unchanged;
    };
    if host == b"?" {
        return Outcome::Unchanged;
    }
    let mut unmapped = None;
    let Some(local) = resolve(host, &[port], here, map, &mut unmapped) else {
        return match unmapped {
            Some(u) => Outcome::Unmapped(u),
            None => Outcome::Unchanged,
        };
    };
    let keep = reply.len() - rest.len() + sp + 1;
    let mut out = Vec::with_capacity(keep + 64);
    out.extend_from_slice(&reply[..keep]);
    out.extend_from_slice(local.ip());
    out.push(b':');
    out.extend_from_slice(local.port());
    out.extend_from_slice(b"\r\n");
    Outcome::Rewritten(Bytes::from(out))
}

/// `reply` is one whole RESP2/RESP3 reply frame answering `kind`.
pub fn topology(kind: Topology, reply: &[u8], here: Here<'_>, map: &dyn Map) -> Outcome {
    let mut cx = Cx {
        src: reply,
        here,
        map,
        out: Out::new(reply),
        unmapped: None,
        scratch: Vec::new(),
    };
    let mut r = Reader { src: reply, pos: 0 };
    let walked = match kind {
        Topology::Slots => slots(&mut r, &mut cx),
        Topology::Shards => shards(&mut r, &mut cx),
        Topology::Nodes => nodes(&mut r, &mut cx),
        Topology::Replicas => replicas(&mut r, &mut cx),
    };
    if walked.is_err() || r.pos != reply.len() {
        return Outcome::Unchanged;
    }
    if let Some(u) = cx.unmapped {
        return Outcome::Unmapped(u);
    }
    match cx.out.finish() {
        Some(bytes) => Outcome::Rewritten(Bytes::from(bytes)),
        None => Outcome::Unchanged,
    }
}

/// The reply is not shaped as expected (or is truncated): it is left as it is.
#[derive(Debug)]
struct Shape;

type Walk<T = ()> = Result<T, Shape>;

/// One element's header and, for scalars, its whole span.
#[derive(Debug, Clone, Copy)]
struct Elem {
    ty: u8,
    start: usize,
    /// After the header line: the payload of a blob, the first child of an aggregate; the
    /// text after the type byte for a one-line value.
    body: usize,
    /// End of the whole element (for an aggregate: once skipped; until then its header's end).
    end: usize,
    /// A blob's length, an aggregate's count; -1 for RESP2 nulls.
    n: i64,
}

impl Elem {
    fn is_null(&self) -> bool {
        self.ty == b'_' || (matches!(self.ty, b'$' | b'*') && self.n < 0)
    }

    /// The text of a string (bulk, simple, verbatim without its format), None for anything else.
    fn text<'a>(&self, src: &'a [u8]) -> Option<&'a [u8]> {
        match self.ty {
            b'$' if self.n >= 0 => src.get(self.body..self.end - 2),
            b'+' => src.get(self.body..self.end - 2),
            b'=' => src.get(self.body + 4..self.end - 2),
            _ => None,
        }
    }

    /// A port: an integer, or a string holding one.
    fn port(&self, src: &[u8]) -> Option<u16> {
        match self.ty {
            b':' => port_of(src.get(self.body..self.end - 2)?),
            _ => port_of(self.text(src)?),
        }
    }

    /// How many elements follow as this aggregate's children (a map's keys and values both).
    fn children(&self) -> u64 {
        let n = self.n.max(0).unsigned_abs();
        match self.ty {
            b'%' | b'|' => n.saturating_mul(2),
            b'*' | b'~' | b'>' => n,
            _ => 0,
        }
    }

    /// Key/value pairs of a map: RESP3 `%`, or RESP2's flat array.
    fn pairs(&self) -> Walk<u64> {
        match self.ty {
            b'%' => Ok(self.n.unsigned_abs()),
            b'*' if self.n >= 0 && self.n % 2 == 0 => Ok(self.n.unsigned_abs() / 2),
            _ => Err(Shape),
        }
    }
}

/// Reads element headers in order; never copies.
struct Reader<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// The next element's header (a whole scalar), attributes before it skipped.
    #[inline]
    fn next(&mut self) -> Walk<Elem> {
        loop {
            let e = self.header()?;
            if e.ty != b'|' {
                return Ok(e);
            }
            self.skip_n(e.children())?;
        }
    }

    /// The next element, whole.
    fn skip(&mut self) -> Walk<Elem> {
        let mut e = self.next()?;
        self.skip_n(e.children())?;
        e.end = self.pos;
        Ok(e)
    }

    /// Skips `left` elements by counting, so nesting needs no stack.
    fn skip_n(&mut self, mut left: u64) -> Walk {
        while left > 0 {
            let e = self.header()?;
            if e.ty != b'|' {
                left -= 1;
            }
            left = left.saturating_add(e.children());
        }
        Ok(())
    }

    #[inline]
    fn header(&mut self) -> Walk<Elem> {
        let src = self.src;
        let start = self.pos;
        let ty = *src.get(start).ok_or(Shape)?;
        let nl = start + 1 + memchr(b'\n', src.get(start + 1..).ok_or(Shape)?).ok_or(Shape)?;
        if nl < start + 2 || src[nl - 1] != b'\r' {
            return Err(Shape);
        }
        let line = &src[start + 1..nl - 1];
        let after = nl + 1;
        let mut e = Elem {
            ty,
            start,
            body: start + 1,
            end: after,
            n: 0,
        };
        match ty {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                e.n = length(line)?;
                e.body = after;
                if e.n < 0 {
                    if ty != b'$' || e.n != -1 {
                        return Err(Shape);
                    }
                } else {
                    let n = usize::try_from(e.n).map_err(|_| Shape)?;
                    e.end = after
                        .checked_add(n)
                        .and_then(|x| x.checked_add(2))
                        .ok_or(Shape)?;
                    if src.get(e.end - 2..e.end) != Some(b"\r\n") {
                        return Err(Shape);
                    }
                    if ty == b'=' && (n < 4 || src[after + 3] != b':') {
                        return Err(Shape);
                    }
                }
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                e.n = length(line)?;
                e.body = after;
                if e.n < 0 && (ty != b'*' || e.n != -1) {
                    return Err(Shape);
                }
            }
            _ => return Err(Shape),
        }
        self.pos = e.end;
        Ok(e)
    }
}

/// A length or count: optional `-`, then 1 to 18 digits (no overflow to check).
fn length(line: &[u8]) -> Walk<i64> {
    let (neg, digits) = match line.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Shape);
    }
    let v = digits
        .iter()
        .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    Ok(if neg { -v } else { v })
}

/// A TCP port as decimal text.
fn port_of(text: &[u8]) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = text.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
    u16::try_from(v).ok()
}

/// The output, built only once something changes: the source up to each replaced span, then
/// the replacement.
struct Out<'a> {
    src: &'a [u8],
    buf: Vec<u8>,
    copied: usize,
    touched: bool,
}

impl<'a> Out<'a> {
    fn new(src: &'a [u8]) -> Self {
        Out {
            src,
            buf: Vec::new(),
            copied: 0,
            touched: false,
        }
    }

    /// Copies the source up to `from`, drops it up to `to`; the caller writes what replaces it.
    fn splice(&mut self, from: usize, to: usize) -> &mut Vec<u8> {
        if !self.touched {
            self.touched = true;
            self.buf.reserve(self.src.len() + 64);
        }
        self.buf.extend_from_slice(&self.src[self.copied..from]);
        self.copied = to;
        &mut self.buf
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if !self.touched {
            return None;
        }
        self.buf.extend_from_slice(&self.src[self.copied..]);
        Some(self.buf)
    }
}

/// A node's local address as the texts that replace its upstream one.
struct Local {
    ip: [u8; 48],
    ip_len: u8,
    port: [u8; 5],
    port_at: u8,
}

impl Local {
    fn new(addr: SocketAddr) -> Self {
        let mut ip = [0u8; 48];
        let mut len = 0;
        match addr.ip() {
            // By hand: the formatter machinery costs more than the rest of a node's rewrite.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        ip[len] = b'.';
                        len += 1;
                    }
                    let mut d = [0u8; 20];
                    let text = decimal(u64::from(octet), &mut d);
                    ip[len..len + text.len()].copy_from_slice(text);
                    len += text.len();
                }
            }
            IpAddr::V6(v6) => {
                struct Buf<'a>(&'a mut [u8; 48], usize);
                impl std::fmt::Write for Buf<'_> {
                    fn write_str(&mut self, s: &str) -> std::fmt::Result {
                        let to = self
                            .0
                            .get_mut(self.1..self.1 + s.len())
                            .ok_or(std::fmt::Error)?;
                        to.copy_from_slice(s.as_bytes());
                        self.1 += s.len();
                        Ok(())
                    }
                }
                // At most 45 bytes (`ffff:…:255.255.255.255`): it always fits.
                let mut buf = Buf(&mut ip, 0);
                let _ = write!(buf, "{v6}");
                len = buf.1;
            }
        }
        let mut port = [0u8; 5];
        let mut d = [0u8; 20];
        let text = decimal(u64::from(addr.port()), &mut d);
        let at = port.len() - text.len();
        port[at..].copy_from_slice(text);
        Local {
            ip,
            ip_len: len as u8,
            port,
            port_at: at as u8,
        }
    }

    fn ip(&self) -> &[u8] {
        &self.ip[..usize::from(self.ip_len)]
    }

    fn port(&self) -> &[u8] {
        &self.port[usize::from(self.port_at)..]
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Looks `host` up with each of `ports` in turn (empty host: the session's own); notes the
/// first node without a local address, as `host:port` with the first port.
fn resolve(
    host: &[u8],
    ports: &[u16],
    here: Here<'_>,
    map: &dyn Map,
    unmapped: &mut Option<String>,
) -> Option<Local> {
    let text = if host.is_empty() {
        Ok(here.host)
    } else {
        std::str::from_utf8(host)
    };
    if let Ok(host) = text
        && let Some(addr) = ports.iter().find_map(|&p| map.local(host, p))
    {
        return Some(Local::new(addr));
    }
    if unmapped.is_none() {
        // Not UTF-8: no name the map could know; reported as lossy text.
        let host = text.map_or_else(|_| String::from_utf8_lossy(host), std::borrow::Cow::from);
        *unmapped = Some(format!("{host}:{}", ports.first().copied().unwrap_or(0)));
    }
    None
}

/// Appends a scalar of `e`'s type holding `text` (a verbatim string keeps its format).
fn put(buf: &mut Vec<u8>, src: &[u8], e: &Elem, text: &[u8]) {
    match e.ty {
        b'$' => {
            write_len(buf, b'$', text.len());
            buf.extend_from_slice(text);
        }
        b'=' => {
            write_len(buf, b'=', text.len() + 4);
            buf.extend_from_slice(&src[e.body..e.body + 4]);
            buf.extend_from_slice(text);
        }
        ty => {
            buf.push(ty);
            buf.extend_from_slice(text);
        }
    }
    buf.extend_from_slice(b"\r\n");
}

fn write_len(buf: &mut Vec<u8>, ty: u8, n: usize) {
    let mut d = [0u8; 20];
    buf.push(ty);
    buf.extend_from_slice(decimal(n as u64, &mut d));
    buf.extend_from_slice(b"\r\n");
}

/// What the walk over one reply shares.
struct Cx<'a> {
    src: &'a [u8],
    here: Here<'a>,
    map: &'a dyn Map,
    out: Out<'a>,
    unmapped: Option<String>,
    /// Rewritten `CLUSTER NODES` text, reused from one string to the next.
    scratch: Vec<u8>,
}

/// What replaces a scalar.
#[derive(Debug, Clone, Copy)]
enum To {
    Ip,
    Port,
}

impl Cx<'_> {
    fn resolve(&mut self, host: &[u8], ports: &[u16]) -> Option<Local> {
        resolve(host, ports, self.here, self.map, &mut self.unmapped)
    }

    /// Replaces the scalars of one node, in source order.
    fn apply(&mut self, local: &Local, edits: &mut [(Elem, To)]) {
        if self.unmapped.is_some() {
            return; // the output is not used
        }
        edits.sort_unstable_by_key(|(e, _)| e.start);
        for (e, to) in edits.iter() {
            let text = match to {
                To::Ip => local.ip(),
                To::Port => local.port(),
            };
            let buf = self.out.splice(e.start, e.end);
            put(buf, self.src, e, text);
        }
    }
}

/// A string value that holds an address (not `?`, not null).
fn addr_text<'a>(e: &Option<Elem>, src: &'a [u8]) -> Option<&'a [u8]> {
    e.as_ref()?.text(src).filter(|t| *t != b"?")
}

/// `CLUSTER SLOTS`: `[[start, end, node, replica…]…]`, node `[endpoint, port, id, metadata]`.
fn slots(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let top = r.next()?;
    if top.ty != b'*' || top.n < 0 {
        return Err(Shape);
    }
    for _ in 0..top.n {
        let range = r.next()?;
        if range.ty != b'*' || range.n < 2 {
            return Err(Shape);
        }
        r.skip()?;
        r.skip()?;
        for _ in 2..range.n {
            slots_node(r, cx)?;
        }
    }
    Ok(())
}

fn slots_node(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let src = r.src;
    let node = r.next()?;
    if node.ty != b'*' || node.n < 2 {
        return Err(Shape);
    }
    let endpoint = r.skip()?;
    if !endpoint.is_null() && endpoint.text(src).is_none() {
        return Err(Shape);
    }
    let port = r.skip()?;
    let port_n = port.port(src).ok_or(Shape)?;
    let (mut ip, mut hostname) = (None, None);
    for k in 2..node.n {
        if k != 3 {
            r.skip()?; // the id, and whatever a later engine adds
            continue;
        }
        let meta = r.next()?;
        if meta.pairs().is_err() {
            r.skip_n(meta.children())?;
            continue;
        }
        for _ in 0..meta.pairs()? {
            let key = r.skip()?;
            let value = r.skip()?;
            match key.text(src) {
                Some(b"ip") => ip = Some(value),
                Some(b"hostname") => hostname = Some(value),
                _ => {}
            }
        }
    }
    let host = match endpoint.text(src).filter(|t| *t != b"?") {
        Some(t) => t,
        None => match [&ip, &hostname]
            .into_iter()
            .find_map(|v| addr_text(v, src).filter(|t| !t.is_empty()))
        {
            Some(t) => t,
            None => return Ok(()),
        },
    };
    let Some(local) = cx.resolve(host, &[port_n]) else {
        return Ok(());
    };
    let mut edits = [(port, To::Port); 4];
    let mut k = 1;
    if endpoint.text(src).is_some_and(|t| t != b"?") {
        edits[k] = (endpoint, To::Ip);
        k += 1;
    }
    for v in [ip, hostname].into_iter().flatten() {
        if v.text(src).is_some_and(|t| !t.is_empty() && t != b"?") {
            edits[k] = (v, To::Ip);
            k += 1;
        }
    }
    cx.apply(&local, &mut edits[..k]);
    Ok(())
}

/// `CLUSTER SHARDS`: `[{slots: […], nodes: [{id, port, tls-port, ip, endpoint, hostname, …}]}…]`.
fn shards(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let src = r.src;
    let top = r.next()?;
    if top.ty != b'*' || top.n < 0 {
        return Err(Shape);
    }
    for _ in 0..top.n {
        let shard = r.next()?;
        for _ in 0..shard.pairs()? {
            let key = r.skip()?;
            if key.text(src) != Some(b"nodes") {
                r.skip()?;
                continue;
            }
            let nodes = r.next()?;
            if nodes.ty != b'*' || nodes.n < 0 {
                return Err(Shape);
            }
            for _ in 0..nodes.n {
                shards_node(r, cx)?;
            }
        }
    }
    Ok(())
}

fn shards_node(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let src = r.src;
    let node = r.next()?;
    let (mut ip, mut endpoint, mut hostname, mut port, mut tls_port) =
        (None, None, None, None, None);
    for _ in 0..node.pairs()? {
        let key = r.skip()?;
        let value = r.skip()?;
        let slot = match key.text(src) {
            Some(b"ip") => &mut ip,
            Some(b"endpoint") => &mut endpoint,
            Some(b"hostname") => &mut hostname,
            Some(b"port") => &mut port,
            Some(b"tls-port") => &mut tls_port,
            _ => continue,
        };
        *slot = Some(value);
    }
    let host = match addr_text(&endpoint, src)
        .or_else(|| addr_text(&ip, src))
        .or_else(|| addr_text(&hostname, src).filter(|t| !t.is_empty()))
    {
        Some(h) => h,
        None => return Ok(()),
    };
    let number = |e: Option<Elem>| e.and_then(|e| e.port(src)).filter(|&p| p != 0);
    // `port` is the plaintext port when `tls-port` is also given; the map may know the node by
    // either, so the TLS one is tried too before calling the node unmapped.
    let local = match (number(port), number(tls_port)) {
        (Some(p), Some(t)) => cx.resolve(host, &[p, t]),
        (Some(p), None) | (None, Some(p)) => cx.resolve(host, &[p]),
        (None, None) => return Ok(()),
    };
    let Some(local) = local else {
        return Ok(());
    };
    let mut edits = [(node, To::Ip); 5];
    let mut k = 0;
    for v in [ip, endpoint].into_iter().flatten() {
        if v.text(src).is_some_and(|t| t != b"?") {
            edits[k] = (v, To::Ip);
            k += 1;
        }
    }
    if let Some(v) = hostname.filter(|v| v.text(src).is_some_and(|t| !t.is_empty() && t != b"?")) {
        edits[k] = (v, To::Ip);
        k += 1;
    }
    for v in [port, tls_port].into_iter().flatten() {
        if v.port(src).is_some_and(|p| p != 0) {
            edits[k] = (v, To::Port);
            k += 1;
        }
    }
    cx.apply(&local, &mut edits[..k]);
    Ok(())
}

/// `CLUSTER NODES`: one bulk (RESP3: verbatim) string of node lines.
fn nodes(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let text = r.next()?;
    node_text(&text, cx)
}

/// `CLUSTER REPLICAS`: an array of node lines, one per string.
fn replicas(r: &mut Reader<'_>, cx: &mut Cx<'_>) -> Walk {
    let top = r.next()?;
    if top.ty != b'*' || top.n < 0 {
        return Err(Shape);
    }
    for _ in 0..top.n {
        let line = r.next()?;
        node_text(&line, cx)?;
    }
    Ok(())
}

/// Rewrites the node lines in string `e`, re-encoding the string if any changed.
fn node_text(e: &Elem, cx: &mut Cx<'_>) -> Walk {
    if !matches!(e.ty, b'$' | b'=') {
        return Err(Shape);
    }
    let body = e.text(cx.src).ok_or(Shape)?;
    let mut scratch = std::mem::take(&mut cx.scratch);
    scratch.clear();
    let mut out = Out {
        src: body,
        buf: scratch,
        copied: 0,
        touched: false,
    };
    let mut at = 0;
    while at < body.len() {
        let end = memchr(b'\n', &body[at..]).map_or(body.len(), |i| at + i);
        node_line(body, at, end, cx, &mut out)?;
        at = end + 1;
    }
    if let Some(text) = out.finish() {
        if cx.unmapped.is_none() {
            put(cx.out.splice(e.start, e.end), cx.src, e, &text);
        }
        cx.scratch = text;
    }
    Ok(())
}

/// `<id> <ip>:<port>@<cport>[,<hostname>[,…]] <flags> …`: the address field, rewritten.
fn node_line(body: &[u8], from: usize, to: usize, cx: &mut Cx<'_>, out: &mut Out<'_>) -> Walk {
    let line = &body[from..to];
    if line.is_empty() {
        return Ok(());
    }
    let sp = memchr(b' ', line).ok_or(Shape)?;
    let a = sp + 1;
    let addr = &line[a..];
    let addr = &addr[..memchr(b' ', addr).unwrap_or(addr.len())];
    let (hostport, hostname) = match memchr(b',', addr) {
        Some(c) => {
            let rest = &addr[c + 1..];
            let h = &rest[..memchr(b',', rest).unwrap_or(rest.len())];
            (&addr[..c], Some((a + c + 1, h)))
        }
        None => (addr, None),
    };
    let hostport = &hostport[..memchr(b'@', hostport).unwrap_or(hostport.len())];
    let colon = memrchr(b':', hostport).ok_or(Shape)?;
    let (ip, port) = (&hostport[..colon], &hostport[colon + 1..]);
    let port_n = port_of(port).ok_or(Shape)?;
    if port_n == 0 {
        return Ok(()); // no address (`:0@0`, noaddr)
    }
    let hostname = hostname.filter(|(_, h)| !h.is_empty());
    let Some(local) = cx.resolve(hostname.map_or(ip, |(_, h)| h), &[port_n]) else {
        return Ok(());
    };
    let ip_at = from + a;
    out.splice(ip_at, ip_at + ip.len())
        .extend_from_slice(local.ip());
    let port_at = ip_at + colon + 1;
    out.splice(port_at, port_at + port.len())
        .extend_from_slice(local.port());
    if let Some((h_at, h)) = hostname {
        out.splice(from + h_at, from + h_at + h.len())
            .extend_from_slice(local.ip());
    }
    Ok(())
}

/// Whether `head`, the start of an error line not yet whole, may still turn out a redirect.
pub fn is_redirect_prefix(head: &[u8]) -> bool {
    let n = head.len();
    n <= 7 && b"-MOVED "[..n] == *head || n <= 5 && b"-ASK "[..n] == *head || is_redirect(head)
}

/// How one session's replies are rewritten: the cluster's nodes, and the node the session is on.
#[derive(Clone)]
pub struct Rewrite {
    pub map: std::sync::Arc<dyn Map + Send + Sync>,
    /// The IP of the node the session is on: what an empty endpoint (same host) means.
    pub here: String,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rewrite(here {})", self.here)
    }
}

impl Rewrite {
    fn here(&self) -> Here<'_> {
        Here {
            host: &self.here,
            port: 0,
        }
    }

    /// A whole error reply as the client gets it: a `-MOVED` or `-ASK` to a local address (a
    /// `-MOVED` also tells the map that slots moved); any other error as it is.
    pub fn error(&self, line: &[u8]) -> Bytes {
        if !is_redirect(line) {
            return Bytes::copy_from_slice(line);
        }
        if line.starts_with(b"-MOVED ") {
            self.map.redirected();
        }
        self.outcome(redirect(line, self.here(), &*self.map), line)
    }

    /// A whole reply to a topology command, with every node address a local one.
    pub fn topology(&self, kind: Topology, frame: &[u8]) -> Bytes {
        self.outcome(topology(kind, frame, self.here(), &*self.map), frame)
    }

    fn outcome(&self, o: Outcome, original: &[u8]) -> Bytes {
        match o {
            Outcome::Unchanged => Bytes::copy_from_slice(original),
            Outcome::Rewritten(b) => b,
            Outcome::Unmapped(node) => Bytes::from(format!(
                "-ERR ectunnel: cluster {}: no local port for this node (cluster_ports full?)\r\n",
                super::printable(&node)
            )),
        }
    }
}

/// What a client gets instead of a topology reply too long to hold.
pub const TOO_LONG: &[u8] = b"-ERR ectunnel: cluster: topology reply too long to rewrite\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::scan::{Dir, Scanner};
    use std::collections::HashMap;
    use std::net::IpAddr;

    struct Table(HashMap<(String, u16), SocketAddr>);

    impl Map for Table {
        fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
            self.0.get(&(host.to_string(), port)).copied()
        }
    }

    /// Nodes 1–6 by IP (`10.0.0.i`) and by name (`node-i.example`), port 6379, at
    /// `127.0.0.1:700i`; `::1:7000` at `[::1]:17000`; the session's own node `10.0.0.9:6379`.
    fn table() -> Table {
        let mut m = HashMap::new();
        for i in 1..=6u16 {
            let local: SocketAddr = format!("127.0.0.1:{}", 7000 + i).parse().unwrap();
            m.insert((format!("10.0.0.{i}"), 6379), local);
            m.insert((format!("node-{i}.example"), 6379), local);
        }
        m.insert(("::1".into(), 7000), "[::1]:17000".parse().unwrap());
        m.insert(("10.0.0.9".into(), 6379), "127.0.0.1:7009".parse().unwrap());
        Table(m)
    }

    /// Every IP address at itself.
    struct Identity;

    impl Map for Identity {
        fn local(&self, host: &str, port: u16) -> Option<SocketAddr> {
            Some(SocketAddr::new(host.parse::<IpAddr>().ok()?, port))
        }
    }

    /// Every node somewhere, so that whatever parses gets rewritten.
    struct Anything;

    impl Map for Anything {
        fn local(&self, _: &str, port: u16) -> Option<SocketAddr> {
            Some(SocketAddr::from(([127, 0, 0, 1], port.wrapping_add(1))))
        }
    }

    const HERE: Here<'static> = Here {
        host: "10.0.0.9",
        port: 6379,
    };

    fn rewritten(o: Outcome) -> Vec<u8> {
        match o {
            Outcome::Rewritten(b) => b.to_vec(),
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    fn bulk(s: &str) -> Vec<u8> {
        format!("${}\r\n{s}\r\n", s.len()).into_bytes()
    }

    fn verbatim(s: &str) -> Vec<u8> {
        format!("={}\r\ntxt:{s}\r\n", s.len() + 4).into_bytes()
    }

    fn redir(line: &str) -> Outcome {
        redirect(line.as_bytes(), HERE, &table())
    }

    fn ok(line: &str) -> Outcome {
        Outcome::Rewritten(Bytes::copy_from_slice(line.as_bytes()))
    }

    #[test]
    fn redirects_of_every_endpoint_form() {
        let cases = [
            (
                "-MOVED 3999 10.0.0.1:6379\r\n",
                "-MOVED 3999 127.0.0.1:7001\r\n",
            ),
            (
                "-ASK 3999 node-2.example:6379\r\n",
                "-ASK 3999 127.0.0.1:7002\r\n",
            ),
            ("-MOVED 1 ::1:7000\r\n", "-MOVED 1 ::1:17000\r\n"),
            ("-MOVED 16383 :6379\r\n", "-MOVED 16383 127.0.0.1:7009\r\n"),
            ("-ASK 0 :6379\r\n", "-ASK 0 127.0.0.1:7009\r\n"),
        ];
        for (from, to) in cases {
            assert_eq!(redir(from), ok(to), "{from:?}");
            assert!(is_redirect(from.as_bytes()));
            assert_eq!(
                redirect(to.as_bytes(), HERE, &Identity),
                Outcome::Rewritten(Bytes::copy_from_slice(to.as_bytes())),
                "identity {to:?}"
            );
        }
        assert_eq!(
            redir("-MOVED 1 10.0.0.7:6379\r\n"),
            Outcome::Unmapped("10.0.0.7:6379".into())
        );
        assert_eq!(
            redir("-MOVED 1 :6380\r\n"),
            Outcome::Unmapped("10.0.0.9:6380".into())
        );
        for same in [
            "-MOVED 1 ?:6379\r\n",
            "-ERR unknown command\r\n",
            "-MOVEDX 1 10.0.0.1:6379\r\n",
            "-MOVED 1 10.0.0.1:6379",
            "-MOVED 1 10.0.0.1:6379\r\n\r\n",
            "-MOVED x 10.0.0.1:6379\r\n",
            "-MOVED 1 10.0.0.1:65536\r\n",
            "-MOVED 1 10.0.0.1\r\n",
            "-MOVED 1 10.0.0.1:6379 extra\r\n",
            "-MOVED 1\r\n",
            "+MOVED 1 10.0.0.1:6379\r\n",
            "",
        ] {
            assert_eq!(redir(same), Outcome::Unchanged, "{same:?}");
        }
        assert!(!is_redirect(b"-MOVEDX 1") && !is_redirect(b"-ERR") && !is_redirect(b"-ASKING"));
    }

    #[test]
    fn topology_commands() {
        let of = |a: &[&str]| Topology::of(&a.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        assert_eq!(of(&["cluster", "slots"]), Some(Topology::Slots));
        assert_eq!(of(&["CLUSTER", "Shards"]), Some(Topology::Shards));
        assert_eq!(of(&["Cluster", "NODES"]), Some(Topology::Nodes));
        assert_eq!(
            of(&["CLUSTER", "REPLICAS", "abc"]),
            Some(Topology::Replicas)
        );
        assert_eq!(of(&["cluster", "slaves", "abc"]), Some(Topology::Replicas));
        assert_eq!(of(&["CLUSTER", "INFO"]), None);
        assert_eq!(of(&["CLUSTER"]), None);
        assert_eq!(of(&["GET", "SLOTS"]), None);
        assert_eq!(of(&[]), None);
    }

    /// RESP2 `CLUSTER SLOTS` as ElastiCache sends it with TLS: hostnames, `ip` metadata; one
    /// node by IP with a hostname, one old-style 3-element node.
    const SLOTS2: &str = concat!(
        "*2\r\n",
        "*4\r\n:0\r\n:8191\r\n",
        "*4\r\n$14\r\nnode-1.example\r\n:6379\r\n$3\r\nid1\r\n*2\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n",
        "*4\r\n$14\r\nnode-4.example\r\n:6379\r\n$3\r\nid4\r\n*2\r\n$2\r\nip\r\n$8\r\n10.0.0.4\r\n",
        "*4\r\n:8192\r\n:16383\r\n",
        "*4\r\n$8\r\n10.0.0.2\r\n:6379\r\n$3\r\nid2\r\n*2\r\n$8\r\nhostname\r\n$14\r\nnode-2.example\r\n",
        "*3\r\n$8\r\n10.0.0.5\r\n:6379\r\n$3\r\nid5\r\n",
    );

    #[test]
    fn slots_resp2() {
        let want = concat!(
            "*2\r\n",
            "*4\r\n:0\r\n:8191\r\n",
            "*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$3\r\nid1\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n",
            "*4\r\n$9\r\n127.0.0.1\r\n:7004\r\n$3\r\nid4\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n",
            "*4\r\n:8192\r\n:16383\r\n",
            "*4\r\n$9\r\n127.0.0.1\r\n:7002\r\n$3\r\nid2\r\n*2\r\n$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n",
            "*3\r\n$9\r\n127.0.0.1\r\n:7005\r\n$3\r\nid5\r\n",
        );
        let got = rewritten(topology(Topology::Slots, SLOTS2.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
    }

    #[test]
    fn slots_resp3_null_unknown_and_empty_endpoints() {
        let reply = concat!(
            "*1\r\n*6\r\n:0\r\n:16383\r\n",
            // A null endpoint: looked up by its `ip`, stays null.
            "*4\r\n_\r\n:6379\r\n$3\r\nid1\r\n%1\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n",
            // `?`: looked up by its `ip`, stays `?`; the hostname goes too.
            "*4\r\n$1\r\n?\r\n:6379\r\n$3\r\nid2\r\n%2\r\n$8\r\nhostname\r\n$14\r\nnode-2.example\r\n$2\r\nip\r\n$8\r\n10.0.0.2\r\n",
            // Empty: the session's own host.
            "*4\r\n$0\r\n\r\n:6379\r\n$3\r\nid9\r\n%0\r\n",
            // Nothing to look it up by: left alone.
            "*4\r\n_\r\n:6379\r\n$3\r\nid7\r\n%0\r\n",
        );
        let want = concat!(
            "*1\r\n*6\r\n:0\r\n:16383\r\n",
            "*4\r\n_\r\n:7001\r\n$3\r\nid1\r\n%1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n",
            "*4\r\n$1\r\n?\r\n:7002\r\n$3\r\nid2\r\n%2\r\n$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n",
            "*4\r\n$9\r\n127.0.0.1\r\n:7009\r\n$3\r\nid9\r\n%0\r\n",
            "*4\r\n_\r\n:6379\r\n$3\r\nid7\r\n%0\r\n",
        );
        let got = rewritten(topology(Topology::Slots, reply.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
        // RESP2 nulls, both spellings.
        for null in ["$-1\r\n", "*-1\r\n"] {
            let reply = format!(
                "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n{null}:6379\r\n$3\r\nid1\r\n*2\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n"
            );
            let want = format!(
                "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n{null}:7001\r\n$3\r\nid1\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n"
            );
            let got = rewritten(topology(Topology::Slots, reply.as_bytes(), HERE, &table()));
            assert_eq!(text(&got), want);
        }
        // Only nodes without an address: nothing to do.
        let reply = "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$1\r\n?\r\n:6379\r\n$3\r\nid1\r\n%0\r\n";
        assert_eq!(
            topology(Topology::Slots, reply.as_bytes(), HERE, &table()),
            Outcome::Unchanged
        );
    }

    /// An unknown endpoint with only a hostname to go by: looked up by it, not left upstream.
    #[test]
    fn unknown_endpoint_with_only_a_hostname() {
        let reply = "*1\r\n*3\r\n:0\r\n:1\r\n*4\r\n$1\r\n?\r\n:6379\r\n$2\r\nid\r\n%1\r\n$8\r\nhostname\r\n$14\r\nnode-1.example\r\n";
        let want = "*1\r\n*3\r\n:0\r\n:1\r\n*4\r\n$1\r\n?\r\n:7001\r\n$2\r\nid\r\n%1\r\n$8\r\nhostname\r\n$9\r\n127.0.0.1\r\n";
        let got = rewritten(topology(Topology::Slots, reply.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
        let node: Pairs = vec![
            ("port", int(6379)),
            ("endpoint", b("?")),
            ("hostname", b("node-1.example")),
        ];
        let local: Pairs = vec![
            ("port", int(7001)),
            ("endpoint", b("?")),
            ("hostname", b("127.0.0.1")),
        ];
        let got = rewritten(topology(
            Topology::Shards,
            shards_reply("%", &node, &node).as_bytes(),
            HERE,
            &table(),
        ));
        assert_eq!(text(&got), shards_reply("%", &local, &local));
    }

    #[test]
    fn slots_simple_and_verbatim_strings_keep_their_type() {
        let reply = "*1\r\n*3\r\n:0\r\n:1\r\n*4\r\n+10.0.0.1\r\n:6379\r\n+id\r\n%1\r\n+hostname\r\n=18\r\ntxt:node-1.example\r\n";
        let want = "*1\r\n*3\r\n:0\r\n:1\r\n*4\r\n+127.0.0.1\r\n:7001\r\n+id\r\n%1\r\n+hostname\r\n=13\r\ntxt:127.0.0.1\r\n";
        let got = rewritten(topology(Topology::Slots, reply.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
    }

    #[test]
    fn attributes_are_copied() {
        let reply = concat!(
            "|1\r\n+key-popularity\r\n%0\r\n",
            "*1\r\n*3\r\n:0\r\n:1\r\n|1\r\n+a\r\n*1\r\n:1\r\n*3\r\n$8\r\n10.0.0.1\r\n:6379\r\n$2\r\nid\r\n",
        );
        let want = concat!(
            "|1\r\n+key-popularity\r\n%0\r\n",
            "*1\r\n*3\r\n:0\r\n:1\r\n|1\r\n+a\r\n*1\r\n:1\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n",
        );
        let got = rewritten(topology(Topology::Slots, reply.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
    }

    type Pairs = Vec<(&'static str, String)>;

    fn shard_node(map: &str, pairs: &Pairs) -> String {
        let mut s = if map == "%" {
            format!("%{}\r\n", pairs.len())
        } else {
            format!("*{}\r\n", pairs.len() * 2)
        };
        for (k, v) in pairs {
            s.push_str(&text(&bulk(k)));
            s.push_str(v);
        }
        s
    }

    /// `CLUSTER SHARDS` of two shards of one node each, as a map (`%`) or a flat array (`*`).
    fn shards_reply(map: &str, a: &Pairs, b: &Pairs) -> String {
        let shard = |node: &Pairs, slots: &str| {
            let head = if map == "%" { "%2\r\n" } else { "*4\r\n" };
            format!(
                "{head}$5\r\nslots\r\n{slots}$5\r\nnodes\r\n*1\r\n{}",
                shard_node(map, node)
            )
        };
        format!(
            "*2\r\n{}{}",
            shard(a, "*2\r\n:0\r\n:8191\r\n"),
            shard(b, "*2\r\n:8192\r\n:16383\r\n")
        )
    }

    fn b(s: &str) -> String {
        text(&bulk(s))
    }

    fn int(n: u16) -> String {
        format!(":{n}\r\n")
    }

    #[test]
    fn shards_resp2_and_resp3() {
        let node1 = |port: &'static str, ip: &str, name: &str, p: u16| -> Pairs {
            vec![
                ("id", b("id1")),
                (port, int(p)),
                ("ip", b(ip)),
                ("endpoint", b(name)),
                ("hostname", b(name)),
                ("role", b("master")),
                ("replication-offset", int(7215)),
                ("health", b("online")),
            ]
        };
        // Both ports: the plaintext one the map does not know, the TLS one it does.
        let node2 = |ip: &str, p: u16, tls: u16| -> Pairs {
            vec![
                ("id", b("id2")),
                ("port", int(p)),
                ("tls-port", int(tls)),
                ("ip", b(ip)),
                ("endpoint", b(ip)),
                ("hostname", b("")),
                ("role", b("replica")),
                ("health", b("online")),
            ]
        };
        for map in ["%", "*"] {
            for port in ["port", "tls-port"] {
                let reply = shards_reply(
                    map,
                    &node1(port, "10.0.0.1", "node-1.example", 6379),
                    &node2("10.0.0.2", 6380, 6379),
                );
                let want = shards_reply(
                    map,
                    &node1(port, "127.0.0.1", "127.0.0.1", 7001),
                    &node2("127.0.0.1", 7002, 7002),
                );
                let got = rewritten(topology(Topology::Shards, reply.as_bytes(), HERE, &table()));
                assert_eq!(text(&got), want, "{map} {port}");
            }
        }
    }

    #[test]
    fn shards_literal() {
        let reply = concat!(
            "*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n",
            "%6\r\n$2\r\nid\r\n$3\r\nid1\r\n$8\r\ntls-port\r\n:6379\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n",
            "$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
        );
        let want = concat!(
            "*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n",
            "%6\r\n$2\r\nid\r\n$3\r\nid1\r\n$8\r\ntls-port\r\n:7001\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n",
            "$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
        );
        let got = rewritten(topology(Topology::Shards, reply.as_bytes(), HERE, &table()));
        assert_eq!(text(&got), want);
    }

    /// `CLUSTER NODES` from Redis 7: myself, masters, replicas, a `,hostname`, an empty
    /// hostname, IPv6, a node without an address, slot ranges with migrating/importing marks.
    const NODES: &str = concat!(
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n",
        "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 10.0.0.2:6379@16379,node-2.example master - 0 1426238316232 2 connected 5461-10922 [5461-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n",
        "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 10.0.0.3:6379@16379, master - 0 1426238318243 3 connected 10923-16383\n",
        "07c37dfeb235213a872192d90877d0cd55635b91 10.0.0.4:6379@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n",
        "6ec23923021cf3ffec47632106199cb7f496ce01 ::1:7000@17000 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected\n",
        "824fe116063bc5fcf9f4ffd895bc17aee7731ac3 :0@0 slave,fail,noaddr 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 1426238316232 1426238316232 6 disconnected\n",
    );

    const NODES_WANT: &str = concat!(
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:7001@16379 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]\n",
        "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:7002@16379,127.0.0.1 master - 0 1426238316232 2 connected 5461-10922 [5461-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n",
        "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:7003@16379, master - 0 1426238318243 3 connected 10923-16383\n",
        "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:7004@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n",
        "6ec23923021cf3ffec47632106199cb7f496ce01 ::1:17000@17000 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected\n",
        "824fe116063bc5fcf9f4ffd895bc17aee7731ac3 :0@0 slave,fail,noaddr 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 1426238316232 1426238316232 6 disconnected\n",
    );

    #[test]
    fn nodes_bulk_and_verbatim() {
        let got = rewritten(topology(Topology::Nodes, &bulk(NODES), HERE, &table()));
        assert_eq!(text(&got), text(&bulk(NODES_WANT)));
        assert!(got.starts_with(format!("${}\r\n", NODES.len()).as_bytes()));
        let got = rewritten(topology(Topology::Nodes, &verbatim(NODES), HERE, &table()));
        assert_eq!(text(&got), text(&verbatim(NODES_WANT)));
        // The session's own node without its IP known yet.
        let line = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :6379@16379 myself,master - 0 0 1 connected\n";
        let got = rewritten(topology(Topology::Nodes, &bulk(line), HERE, &table()));
        assert_eq!(
            text(&got),
            "$94\r\ne7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:7009@16379 myself,master - 0 0 1 connected\n\r\n"
        );
        // Only nodes without an address.
        let noaddr =
            "824fe116063bc5fcf9f4ffd895bc17aee7731ac3 :0@0 master,noaddr - 0 0 6 disconnected\n";
        assert_eq!(
            topology(Topology::Nodes, &bulk(noaddr), HERE, &table()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn replicas_array() {
        let reply = concat!(
            "*2\r\n",
            "$123\r\n07c37dfeb235213a872192d90877d0cd55635b91 10.0.0.4:6379@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 4 connected\r\n",
            "$138\r\n6ec23923021cf3ffec47632106199cb7f496ce01 10.0.0.5:6379@16379,node-5.example slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 5 connected\r\n",
        );
        let want = concat!(
            "*2\r\n",
            "$124\r\n07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:7004@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 4 connected\r\n",
            "$134\r\n6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:7005@16379,127.0.0.1 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 5 connected\r\n",
        );
        let got = rewritten(topology(
            Topology::Replicas,
            reply.as_bytes(),
            HERE,
            &table(),
        ));
        assert_eq!(text(&got), want);
        let resp3 = concat!(
            "*1\r\n",
            "=127\r\ntxt:07c37dfeb235213a872192d90877d0cd55635b91 10.0.0.4:6379@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 4 connected\r\n",
        );
        let want = concat!(
            "*1\r\n",
            "=128\r\ntxt:07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:7004@16379 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1 4 connected\r\n",
        );
        let got = rewritten(topology(
            Topology::Replicas,
            resp3.as_bytes(),
            HERE,
            &table(),
        ));
        assert_eq!(text(&got), want);
        assert_eq!(
            topology(Topology::Replicas, b"*0\r\n", HERE, &table()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn unmapped_nodes_are_named() {
        let slots = SLOTS2.replace("node-4.example", "node-8.example");
        assert_eq!(
            topology(Topology::Slots, slots.as_bytes(), HERE, &table()),
            Outcome::Unmapped("node-8.example:6379".into())
        );
        let nodes = NODES.replace("::1:7000@", "::2:7000@");
        assert_eq!(
            topology(Topology::Nodes, &bulk(&nodes), HERE, &table()),
            Outcome::Unmapped("::2:7000".into())
        );
        // A truncated reply is left alone even with an unmapped node in what did arrive.
        let cut = &slots.as_bytes()[..slots.len() - 3];
        assert_eq!(
            topology(Topology::Slots, cut, HERE, &table()),
            Outcome::Unchanged
        );
    }

    #[test]
    fn errors_and_other_shapes_are_unchanged() {
        let kinds = [
            Topology::Slots,
            Topology::Shards,
            Topology::Nodes,
            Topology::Replicas,
        ];
        for kind in kinds {
            for reply in [
                &b"-ERR This instance has cluster support disabled\r\n"[..],
                b"!21\r\nSYNTAX invalid syntax\r\n",
                b"+OK\r\n",
                b":1\r\n",
                b"_\r\n",
                b"$-1\r\n",
                b"*-1\r\n",
                b"*?\r\n.\r\n",
                b"",
            ] {
                assert_eq!(
                    topology(kind, reply, HERE, &table()),
                    Outcome::Unchanged,
                    "{kind:?} {reply:?}"
                );
            }
        }
        // Trailing bytes after the frame: not one reply.
        let mut two = SLOTS2.as_bytes().to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(
            topology(Topology::Slots, &two, HERE, &table()),
            Outcome::Unchanged
        );
    }

    /// Replies with IP addresses only, each of every command.
    fn ip_samples() -> Vec<(Topology, Vec<u8>)> {
        let nodes_ip: String = NODES.replace(",node-2.example", "");
        let node: Pairs = vec![
            ("id", b("id1")),
            ("tls-port", int(6379)),
            ("ip", b("10.0.0.1")),
            ("endpoint", b("10.0.0.1")),
            ("hostname", b("")),
            ("role", b("master")),
        ];
        let slots3 = concat!(
            "*1\r\n*4\r\n:0\r\n:16383\r\n",
            "*4\r\n$8\r\n10.0.0.1\r\n:6379\r\n$3\r\nid1\r\n%1\r\n$2\r\nip\r\n$8\r\n10.0.0.1\r\n",
            "*4\r\n$5\r\n::1:2\r\n:7000\r\n$3\r\nid2\r\n%0\r\n",
        );
        vec![
            (
                Topology::Slots,
                SLOTS2
                    .replace("$14\r\nnode-1.example", "$8\r\n10.0.0.1")
                    .replace("$14\r\nnode-4.example", "$8\r\n10.0.0.4")
                    .replace(
                        "*2\r\n$8\r\nhostname\r\n$14\r\nnode-2.example\r\n",
                        "*0\r\n",
                    )
                    .into_bytes(),
            ),
            (Topology::Slots, slots3.as_bytes().to_vec()),
            (
                Topology::Shards,
                shards_reply("%", &node, &node).into_bytes(),
            ),
            (
                Topology::Shards,
                shards_reply("*", &node, &node).into_bytes(),
            ),
            (Topology::Nodes, bulk(&nodes_ip)),
            (Topology::Nodes, verbatim(&nodes_ip)),
            (
                Topology::Replicas,
                format!(
                    "*2\r\n{}{}",
                    b(nodes_ip.lines().next().unwrap()),
                    text(&verbatim(nodes_ip.lines().nth(3).unwrap()))
                )
                .into_bytes(),
            ),
        ]
    }

    #[test]
    fn identity_map_gives_the_same_bytes() {
        for (kind, reply) in ip_samples() {
            let got = rewritten(topology(kind, &reply, HERE, &Identity));
            assert_eq!(text(&got), text(&reply), "{kind:?}");
        }
    }

    /// Whole replies of every shape, for the fuzzing below.
    fn samples() -> Vec<(Topology, Vec<u8>)> {
        let mut all = ip_samples();
        all.push((Topology::Slots, SLOTS2.as_bytes().to_vec()));
        all.push((Topology::Nodes, bulk(NODES)));
        all
    }

    /// Scans `out` as replies: no error, and it ends on a frame boundary after one frame (two
    /// when an attribute leads).
    fn one_frame(out: &[u8]) {
        let mut s = Scanner::new(Dir::Reply);
        let (mut at, mut frames) = (0, 0);
        while at < out.len() {
            let (n, done) = s.feed(&out[at..]).expect("valid RESP");
            at += n;
            frames += usize::from(done);
        }
        assert!(s.at_boundary(), "incomplete frame: {:?}", text(out));
        assert_eq!(frames, if out.first() == Some(&b'|') { 2 } else { 1 });
    }

    #[test]
    fn truncations_are_unchanged() {
        for (kind, reply) in samples() {
            for cut in 0..reply.len() {
                assert_eq!(
                    topology(kind, &reply[..cut], HERE, &Anything),
                    Outcome::Unchanged,
                    "{kind:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn mangled_input_never_panics_and_rewrites_are_valid() {
        // xorshift64*: deterministic, no dependency.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let alphabet = b"*$%=_:+-|~>!?0123456789\r\n:@, .-1";
        let kinds = [
            Topology::Slots,
            Topology::Shards,
            Topology::Nodes,
            Topology::Replicas,
        ];
        let samples = samples();
        let (mut rewrites, mut total) = (0, 0);
        for round in 0..20_000 {
            let (_, base) = &samples[round % samples.len()];
            let mut input = base.clone();
            for _ in 0..1 + rand() % 4 {
                let at = (rand() as usize) % (input.len() + 1);
                let byte = if rand() % 4 == 0 {
                    rand() as u8
                } else {
                    alphabet[(rand() as usize) % alphabet.len()]
                };
                match rand() % 4 {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.insert(at, byte),
                    _ => input.truncate(at),
                }
            }
            if round % 7 == 0 {
                input = (0..rand() % 64).map(|_| rand() as u8).collect();
            }
            for kind in kinds {
                total += 1;
                for map in [&Anything as &dyn Map, &table(), &Identity] {
                    if let Outcome::Rewritten(out) = topology(kind, &input, HERE, map) {
                        rewrites += 1;
                        one_frame(&out);
                    }
                }
            }
            if let Outcome::Rewritten(out) = redirect(&input, HERE, &Anything) {
                assert!(is_redirect(&out) && out.ends_with(b"\r\n"));
                one_frame(&out);
            }
        }
        assert!(rewrites > total / 50, "{rewrites} of {total}");
    }
}
