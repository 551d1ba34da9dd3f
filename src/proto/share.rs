//! Which of a client's requests may go over a shared upstream session, as a pure state machine
//! over its input (the session does the I/O; benches and tests drive it in memory).
//!
//! A client's input is split into a run of complete requests that may be shared, and the point
//! where that stops: a request the tunnel answers itself (`AUTH` it can judge, `QUIT`,
//! `CLIENT SETNAME|GETNAME`), a `HELLO` that moves the client to sessions of another protocol, a
//! `WAIT`, one that needs a session of the client's own, or malformed input. What a client did
//! to its connection while sharing (`HELLO 3`, `CLIENT SETNAME|SETINFO`) is kept, to be replayed
//! on its own session if it later needs one.

use bytes::{Bytes, BytesMut};

use super::RespVersion;
use super::command::{self, Cmd};
use super::engine::{HOLD_LIMIT, credentials_match, protocol_error};
use super::scan::{Dir, FrameInfo, MAX_INLINE, Scanner};
use crate::config::{ClientAuth, Credentials};
use crate::limits::{MAX_REPLAY, UNAUTHENTICATED_ARGS, UNAUTHENTICATED_BULK};

const OK: &[u8] = b"+OK\r\n";
const BAD_NAME: &[u8] =
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";

/// Where a split stopped before the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At a request that needs the client's own session (it starts there).
    Own,
    /// At malformed input: the error to send once the replies before it are out.
    Malformed(Bytes),
    /// At a request of `len` bytes the tunnel answers with `reply`; then closes if `quit`.
    Local {
        reply: Bytes,
        quit: bool,
        len: usize,
    },
    /// At a `HELLO` of `len` bytes: `cmd` (it, without what the tunnel handles) goes to a
    /// session speaking `version`, which the client's later requests use too.
    Switch {
        version: RespVersion,
        cmd: Bytes,
        len: usize,
    },
    /// At a `WAIT`/`WAITAOF` of `len` bytes: it must run on the connection the client's writes
    /// went through, and nothing of another client may queue behind it there. The client
    /// continues on a session of its own after it.
    Wait { len: usize },
}

/// The result of [`Splitter::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Bytes of complete shareable requests at the start of the input.
    pub len: usize,
    /// Replies they expect.
    pub replies: u32,
    pub stop: Option<Stop>,
}

/// How much one split may hand out; it stops at the first frame boundary past either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub replies: u64,
    pub bytes: usize,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        replies: u64::MAX,
        bytes: usize::MAX,
    };
}

/// What to do with one complete request frame.
enum Decision {
    /// Share it; it expects this many replies (0 or 1).
    Share(u32),
    Stop(Stop),
}

/// One client's splitter: its scanner, its standing for `AUTH`, and its connection's state.
#[derive(Debug)]
pub struct Splitter {
    scan: Scanner,
    /// Bytes at the start of the input already scanned: part of a frame still arriving.
    held: usize,
    policy: ClientAuth,
    inject: Option<Credentials>,
    /// `require` mode: the client gave the tunnel's password.
    authed: bool,
    version: RespVersion,
    /// `CLIENT SETNAME` as the tunnel answered it.
    name: Option<Vec<u8>>,
    /// What to send first on the client's own session.
    replay: Vec<Bytes>,
    /// How to take back the last `HELLO` switch if no session of its protocol can be had:
    /// the version, the replay length and the name before it.
    undo: Option<(RespVersion, usize, Option<Vec<u8>>)>,
}

impl Splitter {
    pub fn new(policy: ClientAuth, inject: Option<Credentials>) -> Self {
        Splitter {
            scan: Scanner::new(Dir::Request),
            held: 0,
            policy,
            inject,
            authed: false,
            version: RespVersion::V2,
            name: None,
            replay: Vec::new(),
            undo: None,
        }
    }

    /// Takes back the last [`Stop::Switch`]: the `HELLO` goes to the client's own session.
    pub fn undo_switch(&mut self) {
        if let Some((version, kept, name)) = self.undo.take() {
            self.version = version;
            self.replay.truncate(kept);
            self.name = name;
        }
    }

    /// Whether the client gave the tunnel's password (`require` mode).
    pub fn authed(&self) -> bool {
        self.authed
    }

    /// The protocol the client speaks now.
    pub fn version(&self) -> RespVersion {
        self.version
    }

    /// The commands that put a session of the client's own in the state its shared sessions
    /// showed it, in the order it sent them.
    pub fn replay(&self) -> &[Bytes] {
        &self.replay
    }

    /// Scans `buf`, which starts where the last split's shareable run ended (a frame held from
    /// the previous call included), handing out at most about `budget`. After a [`Stop::Local`] or [`Stop::Switch`] the caller drops
    /// its `len` bytes and splits the rest; after any other stop the splitter is done with this
    /// client.
    pub fn split(&mut self, buf: &[u8], budget: Budget) -> Split {
        let (mut i, mut start, mut replies) = (self.held, 0, 0u32);
        self.held = 0;
        let stop = |len, replies, stop| Split {
            len,
            replies,
            stop: Some(stop),
        };
        while i < buf.len() {
            if start > 0 && (u64::from(replies) >= budget.replies || start >= budget.bytes) {
                break;
            }
            let (n, done) = match self.scan.feed(&buf[i..]) {
                Ok(r) => r,
                Err(e) => return stop(start, replies, Stop::Malformed(protocol_error(&e))),
            };
            i += n;
            if !done {
                // Too long to hold whole: the client's own session streams it.
                if i - start > HOLD_LIMIT || self.scan.info().longest_arg > HOLD_LIMIT as u64 {
                    return stop(start, replies, Stop::Own);
                }
                break;
            }
            match self.decide(&buf[start..i]) {
                Decision::Share(r) => replies += r,
                Decision::Stop(s) => return stop(start, replies, s),
            }
            start = i;
        }
        self.held = i - start;
        Split {
            len: start,
            replies,
            stop: None,
        }
    }

    fn decide(&mut self, frame: &[u8]) -> Decision {
        let own = Decision::Stop(Stop::Own);
        let info: FrameInfo = *self.scan.info();
        let inline = info.kind != b'*';
        if !redis_reads_it_whole(frame, &info, self.inject.is_some()) {
            return own;
        }
        // An empty line, `*0`, `*-1`: ignored by Redis, no reply.
        let Some(name) = command::name(frame, &info) else {
            return Decision::Share(0);
        };
        let args = || command::args(frame, &info);
        let local = |reply: Bytes| {
            Decision::Stop(Stop::Local {
                reply,
                quit: false,
                len: frame.len(),
            })
        };
        match command::classify(name) {
            Cmd::Auth => self.auth(args(), frame.len()),
            // QUIT would close a shared session for everyone; answered here as Redis would.
            Cmd::Quit => Decision::Stop(Stop::Local {
                reply: Bytes::from_static(OK),
                quit: true,
                len: frame.len(),
            }),
            _ if matches!(self.policy, ClientAuth::Require(_)) && !self.authed => own,
            // Unbalanced quotes make Redis close the connection: not on a shared one.
            _ if inline && args().is_none() => own,
            Cmd::Hello if !inline => self.hello(args(), frame.len()),
            Cmd::Client if !inline => match self.client(args(), frame) {
                Some(Ok(reply)) => local(reply),
                Some(Err(())) => Decision::Share(1),
                None => own,
            },
            _ if command::is_wait(name) => Decision::Stop(Stop::Wait { len: frame.len() }),
            _ if command::shareable(name) => Decision::Share(1),
            _ => own,
        }
    }

    /// `AUTH` is answered here when its answer is known: `absorb` says OK to any, `require`
    /// to the tunnel's password, `passthrough` to the very credentials the shared sessions
    /// were authenticated with (what the server would answer). Anything else is the server's
    /// to judge, on a session of the client's own.
    fn auth(&mut self, args: Option<Vec<Vec<u8>>>, len: usize) -> Decision {
        let args = args.unwrap_or_default();
        let Some((user, pass)) = command::auth_pair(&args) else {
            return Decision::Stop(Stop::Own);
        };
        if !self.judge(user, pass) {
            return Decision::Stop(Stop::Own);
        }
        Decision::Stop(Stop::Local {
            reply: Bytes::from_static(OK),
            quit: false,
            len,
        })
    }

    /// Whether the tunnel may answer `AUTH user pass` with OK (and does, noting it).
    fn judge(&mut self, user: &[u8], pass: &[u8]) -> bool {
        let ok = match &self.policy {
            ClientAuth::Absorb => true,
            ClientAuth::Require(c) => credentials_match(c, user, pass),
            ClientAuth::Passthrough => self
                .inject
                .as_ref()
                .is_some_and(|c| credentials_match(c, user, pass)),
        };
        self.authed |= ok;
        ok
    }

    /// `HELLO 2|3 [AUTH u p] [SETNAME n]`: its AUTH judged as `AUTH` is, its name kept, and the
    /// rest sent to a session of that protocol. Other versions are the server's to refuse.
    fn hello(&mut self, args: Option<Vec<Vec<u8>>>, len: usize) -> Decision {
        let own = Decision::Stop(Stop::Own);
        let Some(args) = args else { return own };
        let version = match args.get(1).map(Vec::as_slice) {
            None => return Decision::Share(1), // the server's details, in the current protocol
            Some(b"2") => RespVersion::V2,
            Some(b"3") => RespVersion::V3,
            Some(_) => return Decision::Share(1), // NOPROTO, before anything else happens
        };
        let Some(hello) = command::parse_hello(&args) else {
            return own;
        };
        self.undo = Some((self.version, self.replay.len(), self.name.clone()));
        if let Some((user, pass)) = &hello.auth
            && !self.judge(user, pass)
        {
            return own;
        }
        if let Some(name) = &hello.setname {
            if !valid_name(name) || !self.keep(setname_command(name)) {
                return own;
            }
            self.name = Some(name.clone()).filter(|n| !n.is_empty());
        }
        let mut cmd = BytesMut::new();
        super::encode_command(&mut cmd, &[b"HELLO", &args[1]]);
        let cmd = cmd.freeze();
        if !self.keep(cmd.clone()) {
            return own;
        }
        self.version = version;
        Decision::Stop(Stop::Switch { version, cmd, len })
    }

    /// `CLIENT SETNAME|GETNAME` answered here from the name kept (`Ok`), `CLIENT SETINFO` shared
    /// and kept (`Err`), anything else not here (`None`).
    fn client(&mut self, args: Option<Vec<Vec<u8>>>, frame: &[u8]) -> Option<Result<Bytes, ()>> {
        let args = args?;
        let sub = args.get(1)?;
        if sub.eq_ignore_ascii_case(b"SETNAME") && args.len() == 3 {
            let name = &args[2];
            if !valid_name(name) {
                return Some(Ok(Bytes::from_static(BAD_NAME)));
            }
            if !self.keep(setname_command(name)) {
                return None;
            }
            self.name = Some(name.clone()).filter(|n| !n.is_empty());
            return Some(Ok(Bytes::from_static(OK)));
        }
        if sub.eq_ignore_ascii_case(b"GETNAME") && args.len() == 2 {
            return Some(Ok(self.name_reply()));
        }
        // The server's answer (7.2 knows SETINFO, 7.0 refuses it) is the client's answer; the
        // shared session's library name is only a label.
        if sub.eq_ignore_ascii_case(b"SETINFO") && args.len() == 4 {
            return self.keep(Bytes::copy_from_slice(frame)).then_some(Err(()));
        }
        None
    }

    fn name_reply(&self) -> Bytes {
        match (&self.name, self.version) {
            (Some(n), _) => {
                let mut b = BytesMut::with_capacity(n.len() + 16);
                b.extend_from_slice(format!("${}\r\n", n.len()).as_bytes());
                b.extend_from_slice(n);
                b.extend_from_slice(b"\r\n");
                b.freeze()
            }
            (None, RespVersion::V2) => Bytes::from_static(b"$-1\r\n"),
            (None, RespVersion::V3) => Bytes::from_static(b"_\r\n"),
        }
    }

    /// Keeps a command for replay; false when too many are kept already.
    fn keep(&mut self, cmd: Bytes) -> bool {
        if self.replay.len() >= MAX_REPLAY {
            return false;
        }
        self.replay.push(cmd);
        true
    }
}

fn setname_command(name: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    super::encode_command(&mut b, &[b"CLIENT", b"SETNAME", name]);
    b.freeze()
}

/// Redis's rule for connection names: printable ASCII without spaces (empty clears the name).
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Whether Redis reads `frame` as one request and answers it, rather than closing the connection
/// (which on a shared session would close it for everyone). The scanner is more lenient, which
/// on a session of the client's own is harmless.
fn redis_reads_it_whole(frame: &[u8], info: &FrameInfo, authenticated: bool) -> bool {
    if info.kind != b'*' {
        // sdssplitargs stops at a NUL (inside quotes an error); past its limit Redis refuses
        // an inline request outright.
        return frame.len() <= MAX_INLINE && memchr::memchr(0, frame).is_none();
    }
    // An unauthenticated connection may not send more than 10 arguments or one over 16 KiB
    // (Redis closes it): without injected credentials the shared sessions may be one.
    let unauthenticated_ok =
        info.argc <= UNAUTHENTICATED_ARGS && info.longest_arg <= UNAUTHENTICATED_BULK;
    canonical_multibulk(frame) && (authenticated || unauthenticated_ok)
}

/// Whether a complete multibulk frame is written exactly as Redis parses it: `*<n>\r\n`, then
/// per argument `$<len>\r\n<payload>\r\n`, lengths in plain decimal (no sign, no leading
/// zero), and nothing else. `*0` and `*-1` (no reply) are the two empty frames.
fn canonical_multibulk(f: &[u8]) -> bool {
    if f == b"*0\r\n" || f == b"*-1\r\n" {
        return true;
    }
    let Some((argc, mut i)) = decimal(f, 1).filter(|_| f.first() == Some(&b'*')) else {
        return false;
    };
    for _ in 0..argc {
        let Some((len, at)) = decimal(f, i + 1).filter(|_| f.get(i) == Some(&b'$')) else {
            return false;
        };
        i = at.saturating_add(len);
        if f.get(i..i + 2) != Some(b"\r\n") {
            return false;
        }
        i += 2;
    }
    i == f.len() && argc > 0
}

/// A positive decimal at `f[at..]` ended by `\r\n`: its value and where what follows starts.
fn decimal(f: &[u8], at: usize) -> Option<(usize, usize)> {
    let (mut value, mut i) = (0usize, at);
    while let Some(d) = f.get(i).filter(|b| b.is_ascii_digit()) {
        if i > at && value == 0 {
            return None; // a leading zero
        }
        value = value.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
        i += 1;
    }
    (i > at && f.get(i..i + 2) == Some(b"\r\n")).then_some((value, i + 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        out
    }

    fn token() -> Credentials {
        Credentials {
            username: None,
            password: Secret::new("tok"),
            file: None,
        }
    }

    #[test]
    fn shares_a_run_and_stops_where_state_begins() {
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        let head = [
            cmd(&["SET", "a", "1"]),
            cmd(&["GET", "a"]),
            b"\r\n".to_vec(),
        ]
        .concat();
        let input = [head.clone(), cmd(&["SELECT", "1"]), cmd(&["GET", "a"])].concat();
        let got = s.split(&input, Budget::UNLIMITED);
        assert_eq!((got.len, got.replies), (head.len(), 2));
        assert_eq!(got.stop, Some(Stop::Own));
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_held_then_shared() {
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let full = cmd(&["GET", "key"]);
        let got = s.split(&full[..7], Budget::UNLIMITED);
        assert_eq!((got.len, got.replies, got.stop), (0, 0, None));
        let got = s.split(&full, Budget::UNLIMITED);
        assert_eq!((got.len, got.replies, got.stop), (full.len(), 1, None));
    }

    #[test]
    fn auth_is_answered_only_when_its_answer_is_known() {
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        let auth = cmd(&["AUTH", "tok"]);
        let got = s.split(
            &[cmd(&["PING"]), auth.clone(), cmd(&["PING"])].concat(),
            Budget::UNLIMITED,
        );
        let local = Stop::Local {
            reply: Bytes::from_static(b"+OK\r\n"),
            quit: false,
            len: auth.len(),
        };
        assert_eq!((got.len, got.replies, got.stop), (14, 1, Some(local)));
        let mut other = Splitter::new(ClientAuth::Passthrough, Some(token()));
        assert_eq!(
            other.split(&cmd(&["AUTH", "nope"]), Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
        let mut none = Splitter::new(ClientAuth::Passthrough, None);
        assert_eq!(
            none.split(&cmd(&["AUTH", "tok"]), Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
    }

    #[test]
    fn require_shares_nothing_before_the_password() {
        let mut s = Splitter::new(ClientAuth::Require(token()), None);
        assert_eq!(
            s.split(&cmd(&["GET", "a"]), Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
        let mut s = Splitter::new(ClientAuth::Require(token()), None);
        assert!(matches!(
            s.split(&cmd(&["AUTH", "tok"]), Budget::UNLIMITED).stop,
            Some(Stop::Local { quit: false, .. })
        ));
        assert!(s.authed());
        assert_eq!(s.split(&cmd(&["GET", "a"]), Budget::UNLIMITED).replies, 1);
    }

    #[test]
    fn only_frames_exactly_as_redis_reads_them_are_shared() {
        let shared = |input: &[u8]| {
            let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
            s.split(input, Budget::UNLIMITED)
        };
        let ok = shared(&[cmd(&["GET", "k"]), b"*0\r\n".to_vec(), b"*-1\r\n".to_vec()].concat());
        assert_eq!((ok.replies, ok.stop), (1, None));
        for odd in [
            &b"*01\r\n$4\r\nPING\r\n"[..],
            b"*1\r\n$04\r\nPING\r\n",
            b"*1\r\r\n$4\r\nPING\r\n",
            b"*1\n$4\r\nPING\r\n",
            b"*-0\r\n",
            b"get \"a\0b\"\r\n",
        ] {
            let got = shared(odd);
            assert!(
                got.len == 0 && matches!(got.stop, Some(Stop::Own) | Some(Stop::Malformed(_))),
                "{:?} -> {got:?}",
                String::from_utf8_lossy(odd)
            );
        }
        // Without injected credentials the shared sessions may be unauthenticated.
        let many: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
        let mut mget = vec!["MGET"];
        mget.extend(many.iter().map(String::as_str));
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        assert_eq!(
            s.split(&cmd(&mget), Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        assert_eq!(s.split(&cmd(&mget), Budget::UNLIMITED).replies, 1);
    }

    #[test]
    fn a_budget_ends_a_run_at_a_frame_boundary() {
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        let input = cmd(&["GET", "k"]).repeat(5);
        let budget = Budget {
            replies: 2,
            bytes: usize::MAX,
        };
        let got = s.split(&input, budget);
        assert_eq!(
            (got.len, got.replies, got.stop),
            (input.len() / 5 * 2, 2, None)
        );
        let got = s.split(&input[input.len() / 5 * 2..], Budget::UNLIMITED);
        assert_eq!(got.replies, 3);
    }

    #[test]
    fn the_connection_name_is_kept_here_and_replayed_later() {
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        let local = |s: &mut Splitter, c: &[&str]| match s.split(&cmd(c), Budget::UNLIMITED).stop {
            Some(Stop::Local { reply, .. }) => reply,
            other => panic!("{c:?}: {other:?}"),
        };
        assert_eq!(&local(&mut s, &["CLIENT", "GETNAME"])[..], b"$-1\r\n");
        assert_eq!(
            &local(&mut s, &["client", "setname", "app"])[..],
            b"+OK\r\n"
        );
        assert_eq!(&local(&mut s, &["CLIENT", "GETNAME"])[..], b"$3\r\napp\r\n");
        let bad = local(&mut s, &["CLIENT", "SETNAME", "a b"]);
        assert!(bad.starts_with(b"-ERR Client names cannot contain spaces"));
        let info = cmd(&["CLIENT", "SETINFO", "LIB-NAME", "x"]);
        assert_eq!(s.split(&info, Budget::UNLIMITED).replies, 1);
        let hello = match s
            .split(
                &cmd(&["HELLO", "3", "AUTH", "default", "tok"]),
                Budget::UNLIMITED,
            )
            .stop
        {
            Some(Stop::Switch {
                version, cmd: c, ..
            }) => (version, c),
            other => panic!("{other:?}"),
        };
        assert_eq!(hello, (RespVersion::V3, Bytes::from(cmd(&["HELLO", "3"]))));
        assert_eq!(&local(&mut s, &["CLIENT", "GETNAME"])[..], b"$3\r\napp\r\n");
        let replay: Vec<Bytes> = vec![
            Bytes::from(cmd(&["CLIENT", "SETNAME", "app"])),
            Bytes::from(info),
            Bytes::from(cmd(&["HELLO", "3"])),
        ];
        assert_eq!(s.replay(), &replay[..]);
        // Anything else about the connection is the server's, on the client's own session.
        assert_eq!(
            s.split(&cmd(&["CLIENT", "ID"]), Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
        let wait = cmd(&["WAIT", "1", "0"]);
        assert_eq!(
            Splitter::new(ClientAuth::Passthrough, None)
                .split(&wait, Budget::UNLIMITED)
                .stop,
            Some(Stop::Wait { len: wait.len() })
        );
    }

    #[test]
    fn long_declared_and_malformed_input_stop_sharing() {
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let got = s.split(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000000000\r\nxx",
            Budget::UNLIMITED,
        );
        assert_eq!(got.stop, Some(Stop::Own));
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let got = s.split(
            &[cmd(&["PING"]), b"*1\r\n:5\r\n".to_vec()].concat(),
            Budget::UNLIMITED,
        );
        assert_eq!(got.replies, 1);
        assert!(matches!(got.stop, Some(Stop::Malformed(_))));
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        assert_eq!(
            s.split(b"get \"unbalanced\r\n", Budget::UNLIMITED).stop,
            Some(Stop::Own)
        );
        // Past Redis's inline limit Redis closes the connection: never on a shared one. The
        // tunnel answers as Redis would, whether or not the line's end came in the same read.
        let long = format!("SET k {}\r\n", "x".repeat(70 * 1024));
        for cut in [long.len(), 60 * 1024] {
            let mut s = Splitter::new(ClientAuth::Passthrough, None);
            let first = s.split(&long.as_bytes()[..cut], Budget::UNLIMITED);
            let stop = first
                .stop
                .or_else(|| s.split(long.as_bytes(), Budget::UNLIMITED).stop);
            assert_eq!(
                stop,
                Some(Stop::Malformed(Bytes::from_static(
                    b"-ERR Protocol error: too big inline request\r\n"
                ))),
                "cut {cut}"
            );
        }
        assert_eq!(
            Splitter::new(ClientAuth::Passthrough, None)
                .split(b"get k\r\n", Budget::UNLIMITED)
                .replies,
            1
        );
    }
}
