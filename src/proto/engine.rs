//! The RESP session engine: what to do with each request and each reply, as pure state
//! machines over byte buffers (the session does the I/O; benches and tests drive them in
//! memory).
//!
//! The request side scans client bytes into frames and decides, per command, to forward it,
//! answer it itself, rewrite it, or inject a command after it; it records in a FIFO who each
//! upcoming reply belongs to. The reply side scans server bytes and, per reply, forwards it,
//! swallows it (a reply to an injected command), or first emits the tunnel's own replies queued
//! at that position. Forwarded bytes are never copied: the output is a list of ranges of the
//! input buffer, written as they are.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

use super::command::{self, Cmd};
use super::scan::{Dir, ScanError, Scanner};
use crate::config::{ClientAuth, Credentials};

/// A request frame is held (in the read buffer, not copied) until it is complete, so it can be
/// inspected before any of it is forwarded; one longer than this is decided on its name and
/// streamed, so the buffer stays bounded whatever length the client declares.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// Longest swallowed reply kept to explain a failed injected command.
const CAPTURE: usize = 256;

pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
const AUTH_ARITY: &[u8] = b"-ERR wrong number of arguments for 'auth' command\r\n";

/// One thing to write, in order: a range of the input buffer, or bytes the tunnel made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Fwd(Range<usize>),
    Bytes(Bytes),
}

/// Appends a forward of `r`, merging it with the previous one when contiguous, so a pipeline
/// of small commands becomes one write.
fn forward(ops: &mut Vec<Op>, r: Range<usize>) {
    if r.is_empty() {
        return;
    }
    if let Some(Op::Fwd(last)) = ops.last_mut()
        && last.end == r.start
    {
        last.end = r.end;
        return;
    }
    ops.push(Op::Fwd(r));
}

/// Who the next reply (or reply position) belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The next `n` replies are the client's.
    Client(u64),
    /// The next `n` replies answer commands the tunnel injected: not for the client.
    Swallow(u64),
    /// The tunnel's own reply to a client command it did not forward.
    Synthetic(Bytes),
    /// From here on replies no longer pair with requests: forward raw, inject nothing.
    Opaque,
    /// Send this, then end the session (the client sent something malformed).
    Close(Bytes),
}

/// The reply FIFO shared by both sides of a session.
#[derive(Debug, Default)]
pub struct Fifo {
    q: VecDeque<Entry>,
}

impl Fifo {
    pub fn push(&mut self, e: Entry) {
        match (self.q.back_mut(), &e) {
            (Some(Entry::Client(n)), Entry::Client(m)) => *n += m,
            (Some(Entry::Swallow(n)), Entry::Swallow(m)) => *n += m,
            _ => self.q.push_back(e),
        }
    }

    pub fn extend(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            self.push(e);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Replies still expected from the server.
    pub fn pending_replies(&self) -> u64 {
        self.q
            .iter()
            .map(|e| match e {
                Entry::Client(n) | Entry::Swallow(n) => *n,
                _ => 0,
            })
            .sum()
    }

    /// Entries queued; the request side stops reading from the client while there are too
    /// many, so a client that never reads cannot grow this without bound.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    fn head(&self) -> Option<&Entry> {
        self.q.front()
    }

    /// One reply of the head run arrived.
    fn pop_reply(&mut self) {
        if let Some(Entry::Client(n) | Entry::Swallow(n)) = self.q.front_mut() {
            *n -= 1;
            if *n == 0 {
                self.q.pop_front();
            }
        }
    }
}

/// How far the request side got with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the buffer dealt with; the rest is a frame still being held.
    pub consumed: usize,
    /// Stop reading from the client: a protocol error was queued as the last reply.
    pub stop: bool,
}

/// The client → server half.
#[derive(Debug)]
pub struct Requests {
    scan: Scanner,
    /// Bytes at the start of the buffer that belong to a held frame and were already scanned.
    held: usize,
    /// The current frame was decided on its name and streams through as it arrives.
    streaming: bool,
    opaque: bool,
    /// `require` mode: the client has given the tunnel's password.
    authed: bool,
    policy: ClientAuth,
    /// Re-sent after a client's RESET, which de-authenticates the connection.
    inject: Option<Credentials>,
}

impl Requests {
    pub fn new(policy: ClientAuth, inject: Option<Credentials>) -> Self {
        Requests {
            scan: Scanner::new(Dir::Request),
            held: 0,
            streaming: false,
            opaque: false,
            authed: false,
            policy,
            inject,
        }
    }

    /// No reply accounting any more: everything is forwarded as is.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// The reply side lost track (an unexpected or unparseable reply): stop injecting and
    /// inspecting here too, from the next frame on.
    pub fn set_opaque(&mut self) {
        self.opaque = true;
    }

    /// Between requests with reply accounting intact: if the server owes nothing either, the
    /// connection can be RESET and handed to another client.
    pub fn at_clean_boundary(&self) -> bool {
        !self.opaque && !self.streaming && self.held == 0
    }

    /// Processes client bytes `buf` (starting with any frame held from the previous call).
    /// Appends writes for the server to `ops` and reply-FIFO entries to `entries`.
    pub fn process(&mut self, buf: &[u8], ops: &mut Vec<Op>, entries: &mut Vec<Entry>) -> Progress {
        let mut i = self.held;
        let mut frame_start = 0;
        while i < buf.len() {
            if self.opaque {
                forward(ops, i..buf.len());
                i = buf.len();
                frame_start = i;
                break;
            }
            let (n, done) = match self.scan.feed(&buf[i..]) {
                Ok(r) => r,
                Err(e) => return self.protocol_error(&e, frame_start, entries),
            };
            if self.streaming {
                // Decided already: what arrives is forwarded and done with.
                forward(ops, i..i + n);
                i += n;
                frame_start = i;
                self.streaming = !done;
                continue;
            }
            i += n;
            if done {
                self.complete(buf, frame_start..i, ops, entries);
                frame_start = i;
                continue;
            }
            // An ordinary command streams as soon as its name is known: a large value is not
            // held back, and the server sees (and may refuse) it as early as it would directly.
            if self.ordinary_command(buf, frame_start, i) {
                entries.push(Entry::Client(1));
                forward(ops, frame_start..i);
                self.streaming = true;
                frame_start = i;
                continue;
            }
            if i - frame_start > HOLD_LIMIT {
                if let Err(e) = self.decide_long(buf, frame_start, entries) {
                    return self.protocol_error(&e, frame_start, entries);
                }
                forward(ops, frame_start..i);
                self.streaming = true;
                frame_start = i;
            }
        }
        self.held = i - frame_start;
        Progress {
            consumed: frame_start,
            stop: false,
        }
    }

    /// Queues `-ERR ectunnel: protocol error: …` as the client's last reply; nothing from the
    /// malformed frame on is forwarded.
    fn protocol_error(&mut self, e: &ScanError, at: usize, entries: &mut Vec<Entry>) -> Progress {
        let msg = format!("-ERR ectunnel: protocol error: {e}\r\n");
        entries.push(Entry::Close(Bytes::from(msg)));
        self.held = 0;
        Progress {
            consumed: at,
            stop: true,
        }
    }

    /// Whether the incomplete frame `buf[start..end]` is known to be a command that needs no
    /// inspection (so far only its name has to be in hand).
    fn ordinary_command(&self, buf: &[u8], start: usize, end: usize) -> bool {
        let info = self.scan.info();
        if info.kind != b'*' || info.args_known == 0 {
            return false;
        }
        if matches!(self.policy, ClientAuth::Require(_)) && !self.authed {
            return false;
        }
        let (off, len) = info.args[0];
        let name_end = start + (off + len) as usize;
        name_end <= end && command::classify(&buf[start + off as usize..name_end]) == Cmd::Other
    }

    /// A frame longer than [`HOLD_LIMIT`]: decide on its name alone and let it stream.
    fn decide_long(
        &mut self,
        buf: &[u8],
        start: usize,
        entries: &mut Vec<Entry>,
    ) -> Result<(), ScanError> {
        let info = *self.scan.info();
        let name = if info.kind == b'*' && info.args_known > 0 {
            let (off, len) = info.args[0];
            buf.get(start + off as usize..)
                .and_then(|b| b.get(..len as usize))
        } else {
            None
        };
        let cmd = name.map_or(Cmd::Other, command::classify);
        let needs_auth = matches!(self.policy, ClientAuth::Require(_)) && !self.authed;
        match cmd {
            // These are inspected whole; one this long is not a real AUTH or HELLO.
            Cmd::Auth | Cmd::Hello if !matches!(self.policy, ClientAuth::Passthrough) => {
                Err(ScanError::InlineTooBig)
            }
            _ if needs_auth && cmd != Cmd::Quit => Err(ScanError::InlineTooBig),
            Cmd::Other => {
                entries.push(Entry::Client(1));
                Ok(())
            }
            _ => {
                // Anything special this long: stop accounting rather than guess.
                entries.push(Entry::Opaque);
                self.opaque = true;
                Ok(())
            }
        }
    }

    /// A whole request frame `buf[r]` is in hand: decide what to do with it.
    fn complete(
        &mut self,
        buf: &[u8],
        r: Range<usize>,
        ops: &mut Vec<Op>,
        entries: &mut Vec<Entry>,
    ) {
        let frame = &buf[r.clone()];
        let info = *self.scan.info();
        let inline = info.kind != b'*';
        // An empty line, `*0`, `*-1`: Redis ignores them, no reply.
        let Some(name) = command::name(frame, &info) else {
            return forward(ops, r);
        };
        let cmd = command::classify(name);
        let args = |k: usize| -> Option<&[u8]> {
            if inline || k >= info.args_known {
                return None;
            }
            let (off, len) = info.args[k];
            Some(&frame[off as usize..(off + len) as usize])
        };
        let all_args = || command::args(frame, &info);
        let synth = |entries: &mut Vec<Entry>, b: &'static [u8]| {
            entries.push(Entry::Synthetic(Bytes::from_static(b)))
        };

        let require = matches!(self.policy, ClientAuth::Require(_));
        if require
            && !self.authed
            && !matches!(cmd, Cmd::Auth | Cmd::Hello | Cmd::Quit | Cmd::Reset)
        {
            return synth(entries, NOAUTH);
        }
        match cmd {
            Cmd::Auth if !matches!(self.policy, ClientAuth::Passthrough) => {
                let args = all_args().unwrap_or_default();
                let Some((user, pass)) = command::auth_pair(&args) else {
                    return synth(entries, AUTH_ARITY);
                };
                if self.check(user, pass) {
                    self.authed = true;
                    synth(entries, b"+OK\r\n");
                } else {
                    synth(entries, WRONGPASS);
                }
            }
            Cmd::Hello if !matches!(self.policy, ClientAuth::Passthrough) => {
                let Some(hello) = all_args().as_deref().and_then(command::parse_hello) else {
                    if require && !self.authed {
                        return synth(entries, HELLO_NOAUTH);
                    }
                    entries.push(Entry::Client(1)); // malformed: the server explains
                    return forward(ops, r);
                };
                match hello.auth {
                    Some((user, pass)) => {
                        if !self.check(&user, &pass) {
                            return synth(entries, WRONGPASS);
                        }
                        self.authed = true;
                        entries.push(Entry::Client(1));
                        ops.push(Op::Bytes(hello.without_auth.freeze()));
                    }
                    None if require && !self.authed => synth(entries, HELLO_NOAUTH),
                    None => {
                        entries.push(Entry::Client(1));
                        forward(ops, r);
                    }
                }
            }
            Cmd::Reset => {
                // RESET de-authenticates and ends MULTI: send our AUTH right behind it, before
                // anything the client pipelined after it, and swallow its reply.
                entries.push(Entry::Client(1));
                forward(ops, r);
                self.authed = false;
                if let Some(creds) = &self.inject {
                    ops.push(Op::Bytes(super::auth_command(creds)));
                    entries.push(Entry::Swallow(1));
                }
            }
            Cmd::Monitor | Cmd::Subscribe | Cmd::Sync => self.go_opaque(r, ops, entries),
            Cmd::Client
                if args(1).is_some_and(|a| a.eq_ignore_ascii_case(b"REPLY"))
                    && args(2).is_none_or(|a| !a.eq_ignore_ascii_case(b"ON")) =>
            {
                self.go_opaque(r, ops, entries)
            }
            Cmd::Client if inline => {
                // `client reply off` typed into telnet.
                let words = all_args().unwrap_or_default();
                let off = words.len() >= 3
                    && words[1].eq_ignore_ascii_case(b"REPLY")
                    && !words[2].eq_ignore_ascii_case(b"ON");
                if off {
                    self.go_opaque(r, ops, entries)
                } else {
                    entries.push(Entry::Client(1));
                    forward(ops, r);
                }
            }
            _ => {
                entries.push(Entry::Client(1));
                forward(ops, r);
            }
        }
    }

    fn go_opaque(&mut self, r: Range<usize>, ops: &mut Vec<Op>, entries: &mut Vec<Entry>) {
        entries.push(Entry::Opaque);
        self.opaque = true;
        forward(ops, r);
    }

    /// Checks a client's credentials against `require` mode's, in constant time.
    fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        match &self.policy {
            ClientAuth::Require(c) => credentials_match(c, user, pass),
            _ => true,
        }
    }

    /// The client already gave the tunnel's password (on a shared session, before it needed
    /// one of its own).
    pub fn set_authed(&mut self) {
        self.authed = true;
    }
}

/// Whether `AUTH user pass` names `c` (no username means `default`), in constant time.
pub fn credentials_match(c: &Credentials, user: &[u8], pass: &[u8]) -> bool {
    let want_user = c.username.as_deref().unwrap_or("default").as_bytes();
    // Evaluate both comparisons regardless of the first one's result.
    let u = constant_time_eq(user, want_user);
    let p = constant_time_eq(pass, c.password.expose().as_bytes());
    u & p
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The errors a node gives once it has been demoted to a replica.
fn demotion(reply: &[u8]) -> bool {
    reply.starts_with(b"-READONLY")
        || (reply.starts_with(b"-UNBLOCKED")
            && memchr::memmem::find(reply, b"master -> replica").is_some())
}

/// Who owns the reply frame being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client,
    Swallow,
    Push,
}

/// What the reply side reports besides its writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyProgress {
    /// End the session after these writes (a queued protocol error was sent).
    pub close: bool,
    /// Error replies to injected commands (e.g. the re-AUTH after RESET was refused).
    pub injected_errors: Vec<String>,
    /// The client got `-READONLY` or `-UNBLOCKED … (master -> replica?)`: this node was
    /// demoted under us.
    pub demoted: bool,
}

/// The server → client half.
#[derive(Debug)]
pub struct Replies {
    scan: Scanner,
    owner: Option<Owner>,
    opaque: bool,
    /// The start of the current frame, kept for swallowed replies and the client's errors.
    capture: Vec<u8>,
    capturing: bool,
}

impl Default for Replies {
    fn default() -> Self {
        Self::new()
    }
}

impl Replies {
    pub fn new() -> Self {
        Replies {
            scan: Scanner::new(Dir::Reply),
            owner: None,
            opaque: false,
            capture: Vec::new(),
            capturing: false,
        }
    }

    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// Between replies: the tunnel's own replies at the FIFO head can be sent now.
    pub fn at_boundary(&self) -> bool {
        self.owner.is_none()
    }

    /// Processes server bytes `buf` (all of it: replies are never held). Appends writes for the
    /// client to `ops`.
    pub fn process(&mut self, buf: &[u8], fifo: &mut Fifo, ops: &mut Vec<Op>) -> ReplyProgress {
        let mut progress = ReplyProgress::default();
        let mut i = 0;
        loop {
            if self.owner.is_none() && !self.opaque && self.emit_ready(fifo, ops) {
                progress.close = true;
                return progress;
            }
            if i >= buf.len() {
                return progress;
            }
            if self.opaque {
                forward(ops, i..buf.len());
                return progress;
            }
            let owner = match self.owner {
                Some(o) => o,
                None => {
                    let o = if buf[i] == b'>' {
                        Owner::Push
                    } else {
                        match fifo.head() {
                            Some(Entry::Client(_)) => Owner::Client,
                            Some(Entry::Swallow(_)) => Owner::Swallow,
                            // A reply nobody asked for: accounting is lost; stay faithful.
                            _ => {
                                self.opaque = true;
                                continue;
                            }
                        }
                    };
                    self.capture.clear();
                    self.capturing = o == Owner::Swallow || buf[i] == b'-';
                    self.owner = Some(o);
                    o
                }
            };
            let (n, done) = match self.scan.feed(&buf[i..]) {
                Ok(r) => r,
                Err(_) => {
                    // Not RESP we understand: forward everything from here untouched.
                    self.opaque = true;
                    if owner != Owner::Swallow {
                        forward(ops, i..buf.len());
                    }
                    return progress;
                }
            };
            if self.capturing {
                let room = CAPTURE.saturating_sub(self.capture.len()).min(n);
                self.capture.extend_from_slice(&buf[i..i + room]);
            }
            if owner != Owner::Swallow {
                forward(ops, i..i + n);
            }
            i += n;
            if done {
                self.owner = None;
                // An attribute annotates the reply after it; it is not a reply itself.
                if self.scan.info().kind != b'|' {
                    match owner {
                        Owner::Client => {
                            fifo.pop_reply();
                            if self.capturing && demotion(&self.capture) {
                                progress.demoted = true;
                            }
                        }
                        Owner::Swallow => {
                            fifo.pop_reply();
                            if self.capture.first() == Some(&b'-') {
                                let line =
                                    self.capture.split(|b| *b == b'\r').next().unwrap_or(&[]);
                                progress
                                    .injected_errors
                                    .push(super::printable(&String::from_utf8_lossy(&line[1..])));
                            }
                        }
                        Owner::Push => {}
                    }
                }
            }
        }
    }

    /// The server closed: replies still owed will never come, but the tunnel's own queued
    /// replies (a protocol error above all) are still sent, in order. Returns true on `Close`.
    pub fn at_eof(&mut self, fifo: &mut Fifo, ops: &mut Vec<Op>) -> bool {
        while let Some(e) = fifo.q.pop_front() {
            match e {
                Entry::Synthetic(b) => ops.push(Op::Bytes(b)),
                Entry::Close(b) => {
                    ops.push(Op::Bytes(b));
                    return true;
                }
                Entry::Client(_) | Entry::Swallow(_) | Entry::Opaque => {}
            }
        }
        false
    }

    /// Sends the tunnel's replies queued at the FIFO head. Returns true on `Close`.
    pub fn emit_ready(&mut self, fifo: &mut Fifo, ops: &mut Vec<Op>) -> bool {
        loop {
            match fifo.head() {
                Some(Entry::Synthetic(b)) => {
                    ops.push(Op::Bytes(b.clone()));
                    fifo.q.pop_front();
                }
                Some(Entry::Opaque) => {
                    fifo.q.pop_front();
                    self.opaque = true;
                    return false;
                }
                Some(Entry::Close(b)) => {
                    ops.push(Op::Bytes(b.clone()));
                    fifo.q.pop_front();
                    return true;
                }
                _ => return false,
            }
        }
    }
}
