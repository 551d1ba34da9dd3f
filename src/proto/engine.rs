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
//!
//! Where replies stop pairing with requests (`MONITOR`, `CLIENT REPLY OFF|SKIP`, RESP2
//! subscribe mode, `SYNC`, a reply nobody asked for) the session is *unsynced*: everything is
//! forwarded faithfully and nothing is injected, until the client's `RESET`, whose `+RESET`
//! reply is where accounting resumes (and the tunnel's re-AUTH goes in right behind it). RESP3
//! keeps pairing in subscribe mode: its messages are push frames, never replies.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

use super::RespVersion;
use super::command::{self, Cmd};
use super::rewrite::{Rewrite, Topology};
use super::scan::{Dir, ScanError, Scanner};
use crate::config::{ClientAuth, Credentials};
pub use crate::limits::HOLD_LIMIT;
use crate::limits::MAX_TOPOLOGY_REPLY;
use crate::limits::REPLY_HEAD as CAPTURE;

pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
const AUTH_ARITY: &[u8] = b"-ERR wrong number of arguments for 'auth' command\r\n";
const RESET_REPLY: &[u8] = b"+RESET\r\n";

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
    /// One reply to `HELLO` (the client's, or swallowed): its type says the protocol in use.
    Hello { swallow: bool },
    /// The client's `RESET`: its reply, and the connection is back to RESP2.
    Reset,
    /// The client's `CLUSTER SLOTS|SHARDS|NODES|REPLICAS|SLAVES`: one reply of the client's,
    /// held whole and given node addresses the client can reach (in cluster mode).
    Topology(Topology),
    /// The client's `MULTI`: one reply of the client's, like `Client(1)` (it merges with its
    /// neighbours, so pipelined transactions take no more room), whose answer is reported
    /// ([`Replies::multi_answers`]): an error means it opened no transaction.
    Multi,
    /// One of the tunnel's own `AUTH`s (after a RESET, or before the IAM cut): swallowed; `last`
    /// ends a group (a RESET sends one per password), whose outcome is reported
    /// ([`Replies::reauth_answers`]).
    Reauth { last: bool },
    /// A `(P|S)SUBSCRIBE` sent in RESP3: no reply, only pushes; done at its first confirmation
    /// push, or at the error reply it gets instead (an ACL refusing the channel). Had the
    /// connection stayed in RESP2, replies stop pairing here.
    Subscribe3,
    /// A `(P|S)UNSUBSCRIBE` sent in RESP3: no reply, only pushes (it cannot fail).
    Unsubscribe3,
    /// The tunnel's own reply to a client command it did not forward.
    Synthetic(Bytes),
    /// From here on replies no longer pair with requests, until [`Entry::Resync`].
    Unsync,
    /// The client's `RESET` sent while unsynced: replies are forwarded as they come until its
    /// `+RESET`, after which they pair again.
    Resync,
    /// Send this, then end the session (the client sent something malformed).
    Close(Bytes),
    /// The request streaming upstream was cut off by malformed input: the server never answers
    /// it, so the reply counted for it is not waited for (taken off the FIFO's tail, never kept).
    Abandoned,
}

/// How many replies an entry stands for.
fn replies_of(e: &Entry) -> u64 {
    match e {
        Entry::Client(n) | Entry::Swallow(n) => *n,
        Entry::Hello { .. }
        | Entry::Reset
        | Entry::Multi
        | Entry::Reauth { .. }
        | Entry::Topology(_) => 1,
        _ => 0,
    }
}

/// The reply FIFO shared by both sides of a session.
#[derive(Debug, Default)]
pub struct Fifo {
    q: VecDeque<Entry>,
    /// Replies queued and replies taken off so far, counted from the start of the session: a
    /// `MULTI`'s reply is known by its number.
    queued: u64,
    taken: u64,
    /// The numbers of the replies to `MULTI`s not yet answered (at most [`MAX_MULTI_TRACKED`]:
    /// beyond, a MULTI's answer is not reported, and the request side stays careful).
    multi_at: VecDeque<u64>,
}

/// `MULTI`s whose answers are awaited at once, per session (8 bytes each).
const MAX_MULTI_TRACKED: usize = 65_536;

impl Fifo {
    pub fn push(&mut self, e: Entry) {
        if e == Entry::Multi {
            self.queued += 1;
            if self.multi_at.len() < MAX_MULTI_TRACKED {
                self.multi_at.push_back(self.queued);
            }
            return self.insert(Entry::Client(1));
        }
        self.queued += replies_of(&e);
        if e == Entry::Abandoned && matches!(self.q.back(), Some(Entry::Client(_))) {
            self.queued -= 1;
        }
        self.insert(e);
    }

    fn insert(&mut self, e: Entry) {
        match (self.q.back_mut(), &e) {
            (Some(Entry::Client(n)), Entry::Client(m)) => *n += m,
            (Some(Entry::Swallow(n)), Entry::Swallow(m)) => *n += m,
            (Some(Entry::Client(n)), Entry::Abandoned) if *n > 1 => *n -= 1,
            (Some(Entry::Client(_)), Entry::Abandoned) => {
                self.q.pop_back();
            }
            (_, Entry::Abandoned) => {}
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
        self.q.iter().map(replies_of).sum()
    }

    /// Entries queued; the request side stops reading from the client while there are too
    /// many, so a client that never reads cannot grow this without bound.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    fn head(&self) -> Option<&Entry> {
        self.q.front()
    }

    /// One reply of the head entry arrived.
    fn pop_reply(&mut self) {
        match self.q.front_mut() {
            Some(Entry::Client(n) | Entry::Swallow(n)) if *n > 1 => *n -= 1,
            Some(_) => {
                self.q.pop_front();
            }
            None => return,
        }
        self.taken += 1;
    }

    /// The reply just taken answered a `MULTI`.
    fn answered_multi(&mut self) -> bool {
        let is = self.multi_at.front() == Some(&self.taken);
        if is {
            self.multi_at.pop_front();
        }
        is
    }

    /// Takes the head entry off without its reply (accounting lost): a `MULTI` among the
    /// replies it stood for will not be answered; it counts as answered, and as opening.
    fn drop_head(&mut self) -> (Option<Entry>, u64) {
        let e = self.q.pop_front();
        self.taken += e.as_ref().map_or(0, replies_of);
        let mut multis = 0;
        while self.multi_at.front().is_some_and(|at| *at <= self.taken) {
            self.multi_at.pop_front();
            multis += 1;
        }
        (e, multis)
    }
}

/// What [`Requests::reauth`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reauth {
    Sent,
    /// Inside a `MULTI`, or a frame half-forwarded: at the next request.
    Later,
    /// Replies no longer pair with requests (subscribe mode, `MONITOR`): nothing can go in.
    Opaque,
    /// No credentials to send now (an IAM token that could not be signed).
    NoCredentials,
    /// The client authenticated the session itself: its credentials, not the tunnel's.
    NotOurs,
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
    /// The streaming frame has a reply counted for it in the FIFO.
    streaming_owed: bool,
    /// Replies pair with requests (see the module note).
    synced: bool,
    /// The protocol the connection will be in once the requests so far have run.
    version: RespVersion,
    /// `require` mode: the client has given the tunnel's password.
    authed: bool,
    /// A `MULTI` was sent and no `EXEC`, `DISCARD` or `RESET` since (nor did the server refuse
    /// it): a command injected now would be queued into the client's transaction.
    in_multi: bool,
    /// `MULTI`s sent ([`Entry::Multi`]), and how many of them before the last `EXEC`,
    /// `DISCARD` or `RESET`: a transaction is open only if one sent since was accepted.
    multis_sent: u64,
    multis_closed: u64,
    /// Groups of the tunnel's own AUTHs sent ([`Entry::Reauth`]).
    reauths_sent: u64,
    /// The client sent an `AUTH` of its own to the server: the session is not the tunnel's to
    /// authenticate again, until a RESET.
    own_auth: bool,
    /// The last command was `ASKING`, which holds for the next command only: a command
    /// injected now would use it up.
    asking: bool,
    policy: ClientAuth,
    /// Re-sent after a client's RESET, which de-authenticates the connection: during a
    /// rotation both passwords, the one the server took last first (a refused `AUTH` leaves the
    /// connection as it was, so whichever the server takes, it ends authenticated).
    inject: Vec<Credentials>,
}

impl Requests {
    pub fn new(policy: ClientAuth, inject: Option<Credentials>) -> Self {
        Requests {
            scan: Scanner::new(Dir::Request),
            held: 0,
            streaming: false,
            streaming_owed: false,
            synced: true,
            version: RespVersion::V2,
            authed: false,
            in_multi: false,
            multis_sent: 0,
            multis_closed: 0,
            reauths_sent: 0,
            own_auth: false,
            asking: false,
            policy,
            inject: inject.into_iter().collect(),
        }
    }

    /// Authenticates the session again with the current credentials (an IAM session before the
    /// server's cut), between the client's requests, its reply swallowed.
    pub fn reauth(&mut self, ops: &mut Vec<Op>, entries: &mut Vec<Entry>) -> Reauth {
        if self.own_auth {
            return Reauth::NotOurs;
        }
        if !self.synced {
            return Reauth::Opaque;
        }
        if self.streaming || self.in_multi || self.asking {
            return Reauth::Later;
        }
        let Some(creds) = self.inject.first() else {
            return Reauth::NoCredentials;
        };
        ops.push(Op::Bytes(super::auth_command(creds)));
        entries.push(Entry::Reauth { last: true });
        self.reauths_sent += 1;
        Reauth::Sent
    }

    /// Groups of the tunnel's own AUTHs sent so far (see [`Replies::reauth_answers`]).
    pub fn reauths_sent(&self) -> u64 {
        self.reauths_sent
    }

    /// Whether replies pair with requests (so the tunnel may inject and answer in order).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The reply side lost track (an unexpected reply, or subscribe mode in RESP2 after all):
    /// stop injecting and answering here too, from the next frame on, until a RESET.
    pub fn set_unsynced(&mut self) {
        self.synced = false;
    }

    /// The client authenticated the session itself (an `AUTH` or `HELLO … AUTH` it sent on).
    pub fn own_auth(&self) -> bool {
        self.own_auth
    }

    /// What the reply side knows of the `MULTI`s sent ([`Replies::multi_answers`]): when all
    /// are answered and none since the last `EXEC`, `DISCARD` or `RESET` was accepted, no
    /// transaction is open (the server refused the `MULTI`: an ACL, its arity, NOAUTH).
    pub fn multi_answers(&mut self, answered: u64, last_accepted: u64) {
        if self.in_multi && answered == self.multis_sent && last_accepted <= self.multis_closed {
            self.in_multi = false;
        }
    }

    /// `EXEC`, `DISCARD` or `RESET`: whatever transaction there was is over.
    fn close_multi(&mut self) {
        self.in_multi = false;
        self.multis_closed = self.multis_sent;
    }

    /// The credentials to re-send after a RESET, in order (they change on reload, with a new
    /// token, or when the server takes the other password of a rotation).
    pub fn set_inject(&mut self, inject: Vec<Credentials>) {
        self.inject = inject;
    }

    /// Between requests with reply accounting intact: if the server owes nothing either, the
    /// connection can be RESET and handed to another client.
    pub fn at_clean_boundary(&self) -> bool {
        self.synced && !self.streaming && self.held == 0
    }

    /// The client gave the `client_auth` password (`require`).
    pub fn is_authed(&self) -> bool {
        self.authed
    }

    /// The client already gave the tunnel's password (on a shared session, before it needed
    /// one of its own).
    pub fn set_authed(&mut self) {
        self.authed = true;
    }

    /// Commands the tunnel sends before the client's first (what it did on shared sessions:
    /// `HELLO 3`, `CLIENT SETNAME`…), with their replies swallowed.
    pub fn replay(&mut self, cmds: &[Bytes], ops: &mut Vec<Op>, entries: &mut Vec<Entry>) {
        for c in cmds {
            let mut scan = Scanner::new(Dir::Request);
            let hello = matches!(scan.feed(c), Ok((n, true)) if n == c.len())
                && command::name(c, scan.info()).map(command::classify) == Some(Cmd::Hello);
            if hello {
                self.note_hello(c, scan.info());
                entries.push(Entry::Hello { swallow: true });
            } else {
                entries.push(Entry::Swallow(1));
            }
            ops.push(Op::Bytes(c.clone()));
        }
    }

    /// Processes client bytes `buf` (starting with any frame held from the previous call).
    /// Appends writes for the server to `ops` and reply-FIFO entries to `entries`.
    pub fn process(&mut self, buf: &[u8], ops: &mut Vec<Op>, entries: &mut Vec<Entry>) -> Progress {
        let mut i = self.held;
        let mut frame_start = 0;
        while i < buf.len() {
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
                if self.synced {
                    self.complete(buf, frame_start..i, ops, entries);
                } else {
                    self.unsynced(buf, frame_start..i, ops, entries);
                }
                frame_start = i;
                continue;
            }
            // An ordinary command streams as soon as its name is known: a large value is not
            // held back, and the server sees (and may refuse) it as early as it would directly.
            if self.ordinary_command(buf, frame_start, i) {
                if self.synced {
                    entries.push(Entry::Client(1));
                }
                forward(ops, frame_start..i);
                self.streaming = true;
                self.streaming_owed = self.synced;
                frame_start = i;
                continue;
            }
            if i - frame_start > HOLD_LIMIT {
                let before = entries.len();
                if let Err(e) = self.decide_long(buf, frame_start, entries) {
                    return self.protocol_error(&e, frame_start, entries);
                }
                forward(ops, frame_start..i);
                self.streaming = true;
                self.streaming_owed = entries[before..].contains(&Entry::Client(1));
                frame_start = i;
            }
        }
        self.held = i - frame_start;
        Progress {
            consumed: frame_start,
            stop: false,
        }
    }

    /// Queues Redis's own `-ERR Protocol error: …` as the client's last reply; nothing from the
    /// malformed frame on is forwarded.
    fn protocol_error(&mut self, e: &ScanError, at: usize, entries: &mut Vec<Entry>) -> Progress {
        // Part of the frame already went upstream, where it stays incomplete: the error goes
        // out after the replies to the requests before it, not after one that never comes.
        if self.streaming && self.streaming_owed {
            entries.push(Entry::Abandoned);
        }
        entries.push(Entry::Close(protocol_error(e)));
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
            _ if !self.synced => Ok(()),
            // A topology command this long is no real one (its reply is not held).
            Cmd::Other | Cmd::EndMulti | Cmd::Cluster | Cmd::Asking => {
                if cmd == Cmd::EndMulti {
                    self.close_multi();
                }
                entries.push(Entry::Client(1));
                Ok(())
            }
            _ => {
                // Anything special this long: stop accounting rather than guess.
                entries.push(Entry::Unsync);
                self.synced = false;
                Ok(())
            }
        }
    }

    /// A whole frame while unsynced: forwarded as is, but a RESET is where pairing resumes.
    fn unsynced(
        &mut self,
        buf: &[u8],
        r: Range<usize>,
        ops: &mut Vec<Op>,
        entries: &mut Vec<Entry>,
    ) {
        let info = *self.scan.info();
        let is_reset = command::name(&buf[r.clone()], &info)
            .is_some_and(|n| command::classify(n) == Cmd::Reset);
        forward(ops, r);
        if is_reset {
            self.synced = true;
            entries.push(Entry::Resync);
            self.after_reset(ops, entries);
        }
    }

    /// RESET de-authenticates and ends MULTI: our AUTH goes right behind it, before anything
    /// the client pipelined after it, and its reply is swallowed.
    fn after_reset(&mut self, ops: &mut Vec<Op>, entries: &mut Vec<Entry>) {
        self.authed = false;
        self.close_multi();
        self.own_auth = false;
        self.version = RespVersion::V2;
        for (i, creds) in self.inject.iter().enumerate() {
            ops.push(Op::Bytes(super::auth_command(creds)));
            let last = i + 1 == self.inject.len();
            entries.push(Entry::Reauth { last });
        }
        self.reauths_sent += u64::from(!self.inject.is_empty());
    }

    /// Notes the protocol a `HELLO <version>` will switch to if it succeeds.
    fn note_hello(&mut self, frame: &[u8], info: &super::scan::FrameInfo) {
        let args = command::args(frame, info).unwrap_or_default();
        match args.get(1).map(Vec::as_slice) {
            Some(b"2") => self.version = RespVersion::V2,
            Some(b"3") => self.version = RespVersion::V3,
            _ => {}
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
        self.asking = cmd == Cmd::Asking;
        match cmd {
            Cmd::Multi => {
                self.in_multi = true;
                self.multis_sent += 1;
                entries.push(Entry::Multi);
                return forward(ops, r);
            }
            Cmd::EndMulti => self.close_multi(),
            Cmd::Auth if matches!(self.policy, ClientAuth::Passthrough) => self.own_auth = true,
            _ => {}
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
            Cmd::Hello => self.hello(frame, &info, r, ops, entries),
            Cmd::Reset => {
                entries.push(Entry::Reset);
                forward(ops, r);
                self.after_reset(ops, entries);
            }
            // Too few arguments: an error reply, and nothing else changes.
            Cmd::Subscribe if !command::is_unsubscribe(name) && !inline && info.argc < 2 => {
                entries.push(Entry::Client(1));
                forward(ops, r);
            }
            Cmd::Subscribe if self.version == RespVersion::V3 => {
                entries.push(if command::is_unsubscribe(name) {
                    Entry::Unsubscribe3
                } else {
                    Entry::Subscribe3
                });
                forward(ops, r);
            }
            Cmd::Monitor | Cmd::Subscribe | Cmd::Sync => self.go_unsynced(r, ops, entries),
            Cmd::Cluster => {
                let words = if inline {
                    all_args().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let sub = if inline {
                    words.get(1).map(Vec::as_slice)
                } else {
                    args(1)
                };
                // Inside MULTI the reply is `+QUEUED`; the real one comes in EXEC's array.
                let kind = sub
                    .and_then(|sub| Topology::of(&[name, sub]))
                    .filter(|_| !self.in_multi);
                entries.push(kind.map_or(Entry::Client(1), Entry::Topology));
                forward(ops, r);
            }
            Cmd::Client
                if args(1).is_some_and(|a| a.eq_ignore_ascii_case(b"REPLY"))
                    && args(2).is_none_or(|a| !a.eq_ignore_ascii_case(b"ON")) =>
            {
                self.go_unsynced(r, ops, entries)
            }
            Cmd::Client if inline => {
                // `client reply off` typed into telnet.
                let words = all_args().unwrap_or_default();
                let off = words.len() >= 3
                    && words[1].eq_ignore_ascii_case(b"REPLY")
                    && !words[2].eq_ignore_ascii_case(b"ON");
                if off {
                    self.go_unsynced(r, ops, entries)
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

    /// `HELLO [version [AUTH u p] [SETNAME n]]`: its `AUTH` judged by the tunnel unless it
    /// passes through; its reply tells the reply side which protocol is in use.
    fn hello(
        &mut self,
        frame: &[u8],
        info: &super::scan::FrameInfo,
        r: Range<usize>,
        ops: &mut Vec<Op>,
        entries: &mut Vec<Entry>,
    ) {
        let synth = |entries: &mut Vec<Entry>, b: &'static [u8]| {
            entries.push(Entry::Synthetic(Bytes::from_static(b)))
        };
        let require = matches!(self.policy, ClientAuth::Require(_));
        let parsed = (!matches!(self.policy, ClientAuth::Passthrough)).then(|| {
            command::args(frame, info)
                .as_deref()
                .and_then(command::parse_hello)
        });
        if parsed.is_none() {
            let args = command::args(frame, info);
            let hello = args.as_deref().and_then(command::parse_hello);
            self.own_auth |= hello.is_some_and(|h| h.auth.is_some());
        }
        let rewritten = match parsed {
            // Passes through: the server judges its AUTH.
            None => None,
            // Malformed: the server explains (unless it may not be forwarded yet).
            Some(None) if require && !self.authed => return synth(entries, HELLO_NOAUTH),
            Some(None) => None,
            Some(Some(hello)) => match hello.auth {
                Some((user, pass)) if !self.check(&user, &pass) => {
                    return synth(entries, WRONGPASS);
                }
                Some(_) => {
                    self.authed = true;
                    Some(hello.without_auth.freeze())
                }
                None if require && !self.authed => return synth(entries, HELLO_NOAUTH),
                None => None,
            },
        };
        self.note_hello(frame, info);
        entries.push(Entry::Hello { swallow: false });
        match rewritten {
            Some(cmd) => ops.push(Op::Bytes(cmd)),
            None => forward(ops, r),
        }
    }

    fn go_unsynced(&mut self, r: Range<usize>, ops: &mut Vec<Op>, entries: &mut Vec<Entry>) {
        entries.push(Entry::Unsync);
        self.synced = false;
        forward(ops, r);
    }

    /// Checks a client's credentials against `require` mode's, in constant time.
    fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        match &self.policy {
            ClientAuth::Require(c) => credentials_match(c, user, pass),
            _ => true,
        }
    }
}

/// Redis's reply to a request it cannot parse (it then closes the connection), word for word:
/// clients and Redis's own test suite match on `Protocol error`.
pub fn protocol_error(e: &ScanError) -> Bytes {
    Bytes::from(format!("-ERR Protocol error: {e}\r\n"))
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
pub fn demotion(reply: &[u8]) -> bool {
    reply.starts_with(b"-READONLY")
        || (reply.starts_with(b"-UNBLOCKED")
            && memchr::memmem::find(reply, b"master -> replica").is_some())
}

/// Whether a push frame (its first bytes) confirms a `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE`.
fn confirms_subscribe(push: &[u8]) -> bool {
    let kind = push
        .split(|b| *b == b'\n')
        .nth(2)
        .map(|w| w.strip_suffix(b"\r").unwrap_or(w));
    matches!(kind, Some(b"subscribe" | b"psubscribe" | b"ssubscribe"))
}

/// Who owns the reply frame being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client,
    Swallow,
    Push,
    /// Unsynced: forwarded without accounting.
    Anyone,
}

/// Why a session ends when the server answers the tunnel's own command with bytes that are
/// not RESP; the client gets it as its next reply, and the log at WARN.
const NOT_RESP: &str = "the server's reply to a command the tunnel sent is not RESP";

/// What the reply side reports besides its writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyProgress {
    /// End the session after these writes (a queued protocol error was sent).
    pub close: bool,
    /// Error replies to injected commands (e.g. the re-AUTH after RESET was refused).
    pub injected_errors: Vec<String>,
    /// Groups of the tunnel's AUTHs of which the server accepted none (every password of a
    /// rotation refused after a RESET).
    pub reauths_refused: u32,
    /// The client got `-READONLY` or `-UNBLOCKED … (master -> replica?)`: this node was
    /// demoted under us.
    pub demoted: bool,
}

/// How far the reply side trusts its accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Synced,
    /// Replies do not pair; frames are still found, to spot the `+RESET` that resyncs.
    Unsynced,
    /// Not RESP the scanner understands: bytes are forwarded untouched for good.
    Raw,
}

/// The server → client half.
#[derive(Debug)]
pub struct Replies {
    scan: Scanner,
    owner: Option<Owner>,
    /// The head entry the current frame answers (HELLO, RESET: their reply is read).
    answering: Option<Entry>,
    mode: Mode,
    /// Times accounting was lost here without the request side having said so (a reply nobody
    /// asked for; subscribe mode in RESP2 after a failed HELLO 3): it must stop injecting too.
    lost: u64,
    version: RespVersion,
    /// The start of the current frame, kept for swallowed replies, errors and `+RESET`.
    capture: Vec<u8>,
    capturing: bool,
    /// `MULTI`s answered so far, and the number of the last one accepted.
    multis_answered: u64,
    last_multi_accepted: u64,
    /// Groups of the tunnel's own AUTHs answered so far, whether the last was refused whole,
    /// and whether the group being answered had one accepted.
    reauths_answered: u64,
    last_reauth_refused: bool,
    group_accepted: bool,
    /// In cluster mode: where node addresses in the client's replies are sent instead.
    rewrite: Option<Rewrite>,
    /// A reply of the client's held whole to rewrite (an error that may be a redirect, a
    /// topology command's reply); forwarded in one piece once complete.
    held: Option<Held>,
}

/// A reply being held to rewrite.
#[derive(Debug)]
struct Held {
    /// The topology command it answers; `None`: an error reply.
    kind: Option<Topology>,
    bytes: Vec<u8>,
    /// Longer than [`MAX_TOPOLOGY_REPLY`]: its bytes are dropped and the client told why.
    over: bool,
}

impl Held {
    fn push(&mut self, part: &[u8]) {
        if self.bytes.len() + part.len() > MAX_TOPOLOGY_REPLY {
            self.over = true;
            self.bytes = Vec::new();
        }
        if !self.over {
            self.bytes.extend_from_slice(part);
        }
    }
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
            answering: None,
            mode: Mode::Synced,
            lost: 0,
            version: RespVersion::V2,
            capture: Vec::new(),
            capturing: false,
            multis_answered: 0,
            last_multi_accepted: 0,
            reauths_answered: 0,
            last_reauth_refused: false,
            group_accepted: false,
            rewrite: None,
            held: None,
        }
    }

    /// Rewrites node addresses in the client's replies from now on (a session in cluster
    /// mode): redirects, and the replies to topology commands.
    pub fn set_rewrite(&mut self, rewrite: Option<Rewrite>) {
        self.rewrite = rewrite;
    }

    /// Whether the reply starting with `first` is held whole to be rewritten.
    fn hold(&self, owner: Owner, first: u8, fifo: &Fifo) -> Option<Held> {
        self.rewrite.as_ref()?;
        let kind = match (owner, fifo.head()) {
            (Owner::Client | Owner::Anyone, _) if first == b'-' => None,
            (Owner::Client, Some(Entry::Topology(k))) if first != b'|' => Some(*k),
            _ => return None,
        };
        Some(Held {
            kind,
            bytes: Vec::new(),
            over: false,
        })
    }

    /// The held reply as the client gets it.
    fn release(&mut self, ops: &mut Vec<Op>) {
        let (Some(h), Some(rw)) = (self.held.take(), self.rewrite.as_ref()) else {
            return;
        };
        let out = match (h.over, h.kind) {
            (true, _) => Bytes::from_static(super::rewrite::TOO_LONG),
            (false, None) => rw.error(&h.bytes),
            (false, Some(kind)) => rw.topology(kind, &h.bytes),
        };
        ops.push(Op::Bytes(out));
    }

    /// How many groups of the tunnel's own AUTHs were answered, and whether every AUTH of the
    /// last was refused: with [`Requests::reauths_sent`], whether one is on its way, how it went.
    pub fn reauth_answers(&self) -> (u64, bool) {
        (self.reauths_answered, self.last_reauth_refused)
    }

    /// How many `MULTI`s were answered, and the number of the last one accepted: the request
    /// side's [`Requests::multi_answers`].
    pub fn multi_answers(&self) -> (u64, u64) {
        (self.multis_answered, self.last_multi_accepted)
    }

    /// Whether replies pair with requests.
    pub fn is_synced(&self) -> bool {
        self.mode == Mode::Synced
    }

    /// How often accounting was lost without the request side's knowing; when this changes the
    /// request side must go unsynced too ([`Requests::set_unsynced`]).
    pub fn lost(&self) -> u64 {
        self.lost
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
            if self.owner.is_none() && self.mode != Mode::Raw && self.emit_ready(fifo, ops) {
                progress.close = true;
                return progress;
            }
            if i >= buf.len() {
                return progress;
            }
            if self.mode == Mode::Raw {
                forward(ops, i..buf.len());
                return progress;
            }
            let owner = match self.owner {
                Some(o) => o,
                None => {
                    let o = self.owner_of(buf[i], fifo);
                    self.capture.clear();
                    let confirmation = o == Owner::Push && fifo.head() == Some(&Entry::Subscribe3);
                    self.capturing = matches!(o, Owner::Swallow | Owner::Anyone)
                        || buf[i] == b'-'
                        || self.answering.is_some()
                        || confirmation;
                    self.held = self.hold(o, buf[i], fifo);
                    self.owner = Some(o);
                    o
                }
            };
            let (n, done) = match self.scan.feed(&buf[i..]) {
                Ok(r) => r,
                // The reply to a command the tunnel sent is not RESP: where it ends, so what
                // after it is the client's, cannot be told. Forwarding from here would pass on
                // a part of it that depends on how the bytes arrived; end the session instead.
                Err(_) if owner == Owner::Swallow => {
                    self.mode = Mode::Raw;
                    progress.close = true;
                    progress.injected_errors.push(NOT_RESP.to_owned());
                    let line = format!("-ERR ectunnel: {NOT_RESP}\r\n");
                    ops.push(Op::Bytes(Bytes::from(line)));
                    return progress;
                }
                Err(_) => {
                    // Not RESP we understand: forward everything from here untouched,
                    // starting with what was held of this reply to rewrite.
                    self.mode = Mode::Raw;
                    if let Some(h) = self.held.take() {
                        ops.push(Op::Bytes(if h.over {
                            Bytes::from_static(super::rewrite::TOO_LONG)
                        } else {
                            Bytes::from(h.bytes)
                        }));
                    }
                    forward(ops, i..buf.len());
                    return progress;
                }
            };
            if self.capturing {
                let room = CAPTURE.saturating_sub(self.capture.len()).min(n);
                self.capture.extend_from_slice(&buf[i..i + room]);
            }
            match &mut self.held {
                Some(h) => h.push(&buf[i..i + n]),
                None if owner != Owner::Swallow => forward(ops, i..i + n),
                None => {}
            }
            i += n;
            if done {
                self.release(ops);
                self.owner = None;
                // An attribute annotates the reply after it; it is not a reply itself.
                if self.scan.info().kind != b'|' {
                    self.reply_done(owner, fifo, &mut progress);
                }
            }
        }
    }

    /// Whose reply starts with `first`, given the FIFO head.
    fn owner_of(&mut self, first: u8, fifo: &mut Fifo) -> Owner {
        if first == b'>' {
            return Owner::Push;
        }
        if self.mode == Mode::Unsynced {
            return Owner::Anyone;
        }
        match fifo.head() {
            // A subscribe's only reply is an error (its confirmations are pushes).
            Some(Entry::Client(_) | Entry::Subscribe3 | Entry::Topology(_)) => Owner::Client,
            Some(Entry::Swallow(_)) => Owner::Swallow,
            Some(e @ (Entry::Hello { .. } | Entry::Reset | Entry::Reauth { .. })) => {
                let o = match e {
                    Entry::Hello { swallow: true } | Entry::Reauth { .. } => Owner::Swallow,
                    _ => Owner::Client,
                };
                self.answering = Some(e.clone());
                o
            }
            // A reply nobody asked for: accounting is lost until a RESET; stay faithful.
            _ => {
                self.mode = Mode::Unsynced;
                self.lost += 1;
                Owner::Anyone
            }
        }
    }

    /// A whole reply of `owner` went by.
    fn reply_done(&mut self, owner: Owner, fifo: &mut Fifo, progress: &mut ReplyProgress) {
        let error = self.capture.first() == Some(&b'-');
        match owner {
            Owner::Client | Owner::Swallow => {
                fifo.pop_reply();
                if owner == Owner::Client && fifo.answered_multi() {
                    self.multis_answered += 1;
                    if !error {
                        self.last_multi_accepted = self.multis_answered;
                    }
                }
                if let Some(answered) = self.answering.take() {
                    self.note_answer(&answered, progress);
                }
                if owner == Owner::Client && error && demotion(&self.capture) {
                    progress.demoted = true;
                }
                if owner == Owner::Swallow && error {
                    let line = self.capture.split(|b| *b == b'\r').next().unwrap_or(&[]);
                    let text = String::from_utf8_lossy(&line[1..]);
                    progress.injected_errors.push(super::printable(&text));
                }
            }
            Owner::Anyone => {
                if error && demotion(&self.capture) {
                    progress.demoted = true;
                }
                // A RESET recorded before the request side learnt it was unsynced resyncs too.
                let reset_pending = matches!(fifo.head(), Some(Entry::Resync | Entry::Reset));
                if reset_pending && self.capture == RESET_REPLY {
                    fifo.pop_reply();
                    self.mode = Mode::Synced;
                    self.version = RespVersion::V2;
                }
            }
            Owner::Push => {
                if fifo.head() == Some(&Entry::Subscribe3) && confirms_subscribe(&self.capture) {
                    fifo.pop_reply();
                }
            }
        }
    }

    /// The reply to a HELLO or RESET tells which protocol the connection speaks now; the one
    /// to the tunnel's AUTH, whether the session is authenticated.
    fn note_answer(&mut self, answered: &Entry, progress: &mut ReplyProgress) {
        match (answered, self.capture.first()) {
            (Entry::Hello { .. }, Some(b'%')) => self.version = RespVersion::V3,
            (Entry::Hello { .. }, Some(b'*')) => self.version = RespVersion::V2,
            (Entry::Reset, Some(b'+')) => self.version = RespVersion::V2,
            (Entry::Reauth { last }, first) => {
                self.group_accepted |= first != Some(&b'-');
                if *last {
                    self.reauths_answered += 1;
                    self.last_reauth_refused = !self.group_accepted;
                    progress.reauths_refused += u32::from(!self.group_accepted);
                    self.group_accepted = false;
                }
            }
            _ => {} // refused: nothing changed
        }
    }

    /// Unsynced: the head entry goes without its reply. Whatever it stood for counts as
    /// answered, carefully: a `MULTI` as accepted, the tunnel's AUTH as taken (an unsynced
    /// session gets no AUTH of the tunnel's anyway; after a RESET the next one is counted).
    fn dropped(&mut self, fifo: &mut Fifo) {
        let (e, multis) = fifo.drop_head();
        if multis > 0 {
            self.multis_answered += multis;
            self.last_multi_accepted = self.multis_answered;
        }
        if let Some(Entry::Reauth { last: true }) = e {
            self.reauths_answered += 1;
            self.last_reauth_refused = false;
            self.group_accepted = false;
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
                _ => {}
            }
        }
        false
    }

    /// Handles the entries at the FIFO head that take no reply: the tunnel's own replies are
    /// sent, a change of pairing is applied. Returns true on `Close`.
    pub fn emit_ready(&mut self, fifo: &mut Fifo, ops: &mut Vec<Op>) -> bool {
        loop {
            match fifo.head() {
                Some(Entry::Synthetic(b)) => {
                    ops.push(Op::Bytes(b.clone()));
                    fifo.q.pop_front();
                }
                Some(Entry::Close(b)) => {
                    ops.push(Op::Bytes(b.clone()));
                    fifo.q.pop_front();
                    return true;
                }
                // Waits for its confirmation push, or its error.
                Some(Entry::Subscribe3) if self.version == RespVersion::V3 => return false,
                Some(Entry::Unsubscribe3) if self.version == RespVersion::V3 => {
                    fifo.q.pop_front();
                }
                // Subscribe mode in RESP2 after all (the HELLO 3 before it failed).
                Some(Entry::Subscribe3 | Entry::Unsubscribe3) => {
                    fifo.q.pop_front();
                    self.mode = Mode::Unsynced;
                    self.lost += 1;
                }
                Some(Entry::Unsync) => {
                    fifo.q.pop_front();
                    self.mode = Mode::Unsynced;
                }
                // Unsynced, the replies these stood for cannot be told apart: only a RESET's
                // reply can.
                Some(
                    Entry::Client(_)
                    | Entry::Swallow(_)
                    | Entry::Hello { .. }
                    | Entry::Reauth { .. }
                    | Entry::Topology(_),
                ) if self.mode == Mode::Unsynced => {
                    self.dropped(fifo);
                }
                _ => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `10.0.0.1:7000` is local `127.0.0.1:17000`, and so on; other nodes have none.
    struct Local;

    impl super::super::rewrite::Map for Local {
        fn local(&self, host: &str, port: u16) -> Option<std::net::SocketAddr> {
            (host == "10.0.0.1" && port < 8000).then(|| ([127, 0, 0, 1], port + 10000).into())
        }
    }

    /// A session in cluster mode on node 10.0.0.1, nodes mapped by [`Local`].
    fn cluster_session() -> super::super::memory::MemSession {
        let mut s = super::super::memory::MemSession::new(ClientAuth::Passthrough, None);
        s.set_rewrite(Some(Rewrite {
            map: std::sync::Arc::new(Local),
            here: "10.0.0.1".into(),
        }));
        s
    }

    /// Redirects and a topology reply are rewritten however the server's bytes are split, in
    /// order with the replies around them; a value that looks like a redirect is data.
    #[test]
    fn cluster_replies_are_rewritten_across_any_split() {
        let mut requests = Vec::new();
        for c in [
            cmd(&["GET", "a"]),
            cmd(&["CLUSTER", "SLOTS"]),
            cmd(&["GET", "b"]),
            b"cluster nodes\r\n".to_vec(),
            cmd(&["GET", "c"]),
        ] {
            requests.extend(c);
        }
        let data = "-MOVED 1 10.0.0.1:7000";
        let nodes = "id 10.0.0.1:7001@17001 master - 0 0 1 connected 0-16383\n";
        let replies = format!(
            "-MOVED 3999 10.0.0.1:7001\r\n*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$8\r\n10.0.0.1\r\n:7000\r\n$2\r\nid\r\n${}\r\n{data}\r\n${}\r\n{nodes}\r\n-ASK 5 :7002\r\n",
            data.len(),
            nodes.len()
        );
        let local_nodes = nodes.replace("10.0.0.1:7001", "127.0.0.1:17001");
        let want = format!(
            "-MOVED 3999 127.0.0.1:17001\r\n*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:17000\r\n$2\r\nid\r\n${}\r\n{data}\r\n${}\r\n{local_nodes}\r\n-ASK 5 127.0.0.1:17002\r\n",
            data.len(),
            local_nodes.len()
        );
        for chunk in [1, 2, 5, 7, replies.len()] {
            let mut s = cluster_session();
            let (mut up, mut client) = (Vec::new(), Vec::new());
            s.client_sends(&requests, &mut up, &mut client);
            assert_eq!(up, requests);
            for part in replies.as_bytes().chunks(chunk) {
                assert!(!s.server_sends(part, &mut client));
            }
            assert_eq!(String::from_utf8_lossy(&client), want, "chunks of {chunk}");
        }
        // Without rewriting (not a cluster), the same bytes pass untouched.
        let mut s = super::super::memory::MemSession::new(ClientAuth::Passthrough, None);
        let (mut up, mut client) = (Vec::new(), Vec::new());
        s.client_sends(&requests, &mut up, &mut client);
        s.server_sends(replies.as_bytes(), &mut client);
        assert_eq!(client, replies.as_bytes());
    }

    /// A topology reply that turns out not to be RESP reaches the client whole, however it
    /// arrived: what was held of it to rewrite goes first.
    #[test]
    fn held_reply_that_is_not_resp_is_forwarded_whole() {
        let requests = cmd(&["CLUSTER", "SLOTS"]);
        let replies = b"*3\r\n$5\r\nslots\r\n$3\r\nabcd\r\n:1\r\n";
        for chunk in [1, 7, replies.len()] {
            let mut s = cluster_session();
            let (mut up, mut client) = (Vec::new(), Vec::new());
            s.client_sends(&requests, &mut up, &mut client);
            for part in replies.chunks(chunk) {
                s.server_sends(part, &mut client);
            }
            assert_eq!(client, replies, "chunks of {chunk}");
        }
    }

    #[test]
    fn no_reauth_between_asking_and_its_command() {
        let creds = Credentials {
            username: None,
            password: crate::config::Secret::new("t"),
            file: None,
        };
        let mut r = Requests::new(ClientAuth::Passthrough, Some(creds));
        let (mut ops, mut entries) = (Vec::new(), Vec::new());
        r.process(&cmd(&["ASKING"]), &mut ops, &mut entries);
        assert_eq!(r.reauth(&mut ops, &mut entries), Reauth::Later);
        let get = cmd(&["GET", "k"]);
        r.process(&get, &mut ops, &mut entries);
        assert_eq!(r.reauth(&mut ops, &mut entries), Reauth::Sent);
    }

    #[test]
    fn fifo_counts_the_replies_it_waits_for() {
        let mut f = Fifo::default();
        f.extend([
            Entry::Client(2),
            Entry::Client(1),
            Entry::Hello { swallow: true },
            Entry::Synthetic(Bytes::from_static(b"+OK\r\n")),
            Entry::Reset,
            Entry::Swallow(1),
        ]);
        assert_eq!((f.len(), f.pending_replies()), (5, 6));
    }

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    /// Runs `requests` through a fresh engine and `replies` back; returns what a re-AUTH due
    /// then would do.
    fn reauth_after(requests: &[Vec<u8>], replies: &[u8]) -> Reauth {
        let creds = Credentials {
            username: Some("app".into()),
            password: crate::config::Secret::new("token"),
            file: None,
        };
        let mut rq = Requests::new(ClientAuth::Passthrough, Some(creds));
        let (mut rp, mut fifo) = (Replies::new(), Fifo::default());
        let (mut ops, mut entries) = (Vec::new(), Vec::new());
        rq.process(&requests.concat(), &mut ops, &mut entries);
        fifo.extend(entries.drain(..));
        ops.clear();
        rp.process(replies, &mut fifo, &mut ops);
        let (answered, accepted) = rp.multi_answers();
        rq.multi_answers(answered, accepted);
        rq.reauth(&mut ops, &mut entries)
    }

    #[test]
    fn a_transaction_is_open_until_exec_unless_every_multi_was_refused() {
        let refused = "-ERR wrong number of arguments for 'multi' command\r\n";
        // Refused: no transaction; the AUTH may go.
        let r = reauth_after(&[cmd(&["MULTI", "x"])], refused.as_bytes());
        assert_eq!(r, Reauth::Sent);
        // Refused, then one the server took: a transaction is open.
        let reqs = [
            cmd(&["MULTI", "x"]),
            cmd(&["MULTI"]),
            cmd(&["SET", "a", "b"]),
        ];
        let replies = format!("{refused}+OK\r\n+QUEUED\r\n");
        assert_eq!(reauth_after(&reqs, replies.as_bytes()), Reauth::Later);
        // Not answered yet: careful.
        assert_eq!(reauth_after(&[cmd(&["MULTI", "x"])], b""), Reauth::Later);
        // Taken, then a nested one refused: still open; EXEC ends it.
        let nested = "-ERR MULTI calls can not be nested\r\n";
        let reqs = [cmd(&["MULTI"]), cmd(&["MULTI"])];
        let replies = format!("+OK\r\n{nested}");
        assert_eq!(reauth_after(&reqs, replies.as_bytes()), Reauth::Later);
        let reqs = [cmd(&["MULTI"]), cmd(&["GET", "a"]), cmd(&["EXEC"])];
        assert_eq!(
            reauth_after(&reqs, b"+OK\r\n+QUEUED\r\n*1\r\n$-1\r\n"),
            Reauth::Sent
        );
    }

    /// Pipelined transactions take no more FIFO room than other commands: a client that sends
    /// thousands before reading is not held back (a Multi entry merges like a Client one).
    #[test]
    fn pipelined_transactions_merge_in_the_fifo() {
        let mut rq = Requests::new(ClientAuth::Passthrough, None);
        let (mut fifo, mut ops, mut entries) = (Fifo::default(), Vec::new(), Vec::new());
        let one = [cmd(&["MULTI"]), cmd(&["INCR", "k"]), cmd(&["EXEC"])].concat();
        rq.process(&one.repeat(3000), &mut ops, &mut entries);
        fifo.extend(entries.drain(..));
        assert_eq!((fifo.len(), fifo.pending_replies()), (1, 9000));
    }
}
