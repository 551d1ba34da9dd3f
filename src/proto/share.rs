//! Which of a client's requests may go over a shared upstream session, as a pure state machine
//! over its input (the session does the I/O; benches and tests drive it in memory).
//!
//! A client's input is split into a run of complete requests that may be shared, and the point
//! where that stops: a request the tunnel answers itself (`AUTH` it can judge, `QUIT`), one that
//! needs a session of the client's own, or malformed input.

use bytes::Bytes;

use super::command::{self, Cmd};
use super::engine::{HOLD_LIMIT, credentials_match};
use super::scan::{Dir, FrameInfo, ScanError, Scanner};
use crate::config::{ClientAuth, Credentials};

/// Where a split stopped before the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At a request that needs the client's own session (it starts there).
    Own,
    /// At malformed input: the error to send once the replies before it are out.
    Malformed(Bytes),
    /// At a request of `len` bytes the tunnel answers with `reply`; then closes if `quit`.
    Local {
        reply: &'static [u8],
        quit: bool,
        len: usize,
    },
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

/// What to do with one complete request frame.
enum Decision {
    /// Share it; it expects this many replies (0 or 1).
    Share(u32),
    Local {
        reply: &'static [u8],
        quit: bool,
    },
    Own,
}

/// One client's splitter: its scanner, and its standing for `AUTH`.
#[derive(Debug)]
pub struct Splitter {
    scan: Scanner,
    /// Bytes at the start of the input already scanned: part of a frame still arriving.
    held: usize,
    policy: ClientAuth,
    inject: Option<Credentials>,
    /// `require` mode: the client gave the tunnel's password.
    authed: bool,
}

impl Splitter {
    pub fn new(policy: ClientAuth, inject: Option<Credentials>) -> Self {
        Splitter {
            scan: Scanner::new(Dir::Request),
            held: 0,
            policy,
            inject,
            authed: false,
        }
    }

    /// Whether the client gave the tunnel's password (`require` mode).
    pub fn authed(&self) -> bool {
        self.authed
    }

    /// Scans `buf`, which starts where the last split's shareable run ended (a frame held from
    /// the previous call included). After a [`Stop::Local`] the caller drops its `len` bytes and
    /// splits the rest; after any other stop the splitter is done with this client.
    pub fn split(&mut self, buf: &[u8]) -> Split {
        let (mut i, mut start, mut replies) = (self.held, 0, 0u32);
        self.held = 0;
        let stop = |len, replies, stop| Split {
            len,
            replies,
            stop: Some(stop),
        };
        while i < buf.len() {
            let (n, done) = match self.scan.feed(&buf[i..]) {
                Ok(r) => r,
                Err(e) => return stop(start, replies, malformed(&e)),
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
                Decision::Own => return stop(start, replies, Stop::Own),
                Decision::Local { reply, quit } => {
                    let len = i - start;
                    return stop(start, replies, Stop::Local { reply, quit, len });
                }
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
        let info: FrameInfo = *self.scan.info();
        let inline = info.kind != b'*';
        // Redis closes the connection on what it cannot parse, which on a shared session would
        // close it for everyone: only frames exactly as Redis reads them are shared. (The
        // scanner is more lenient, which on a session of the client's own is harmless.)
        if inline && memchr::memchr(0, frame).is_some() {
            return Decision::Own; // sdssplitargs stops at a NUL, inside quotes an error
        }
        if !inline && !canonical_multibulk(frame) {
            return Decision::Own;
        }
        // An unauthenticated connection may not send more than 10 arguments or one over
        // 16 KiB (Redis closes it): without injected credentials the shared sessions may be.
        if !inline
            && self.inject.is_none()
            && (info.argc > 10 || info.longest_arg > UNAUTHENTICATED_BULK)
        {
            return Decision::Own;
        }
        // An empty line, `*0`, `*-1`: ignored by Redis, no reply.
        let Some(name) = command::name(frame, &info) else {
            return Decision::Share(0);
        };
        let args = || command::args(frame, &info);
        match command::classify(name) {
            Cmd::Auth => self.auth(args()),
            // QUIT would close a shared session for everyone; answered here as Redis would.
            Cmd::Quit => Decision::Local {
                reply: b"+OK\r\n",
                quit: true,
            },
            _ if matches!(self.policy, ClientAuth::Require(_)) && !self.authed => Decision::Own,
            // Unbalanced quotes make Redis close the connection: not on a shared one.
            _ if command::shareable(name) && (!inline || args().is_some()) => Decision::Share(1),
            _ => Decision::Own,
        }
    }

    /// `AUTH` is answered here when its answer is known: `absorb` says OK to any, `require`
    /// to the tunnel's password, `passthrough` to the very credentials the shared sessions
    /// were authenticated with (what the server would answer). Anything else is the server's
    /// to judge, on a session of the client's own.
    fn auth(&mut self, args: Option<Vec<Vec<u8>>>) -> Decision {
        let args = args.unwrap_or_default();
        let Some((user, pass)) = command::auth_pair(&args) else {
            return Decision::Own;
        };
        let ok = match &self.policy {
            ClientAuth::Absorb => true,
            ClientAuth::Require(c) => credentials_match(c, user, pass),
            ClientAuth::Passthrough => self
                .inject
                .as_ref()
                .is_some_and(|c| credentials_match(c, user, pass)),
        };
        if !ok {
            return Decision::Own;
        }
        self.authed = true;
        Decision::Local {
            reply: b"+OK\r\n",
            quit: false,
        }
    }
}

/// The longest bulk Redis accepts from a connection that has not authenticated.
const UNAUTHENTICATED_BULK: u64 = 16 * 1024;

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

fn malformed(e: &ScanError) -> Stop {
    Stop::Malformed(Bytes::from(format!(
        "-ERR ectunnel: protocol error: {e}\r\n"
    )))
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
        let got = s.split(&input);
        assert_eq!((got.len, got.replies), (head.len(), 2));
        assert_eq!(got.stop, Some(Stop::Own));
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_held_then_shared() {
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let full = cmd(&["GET", "key"]);
        let got = s.split(&full[..7]);
        assert_eq!((got.len, got.replies, got.stop), (0, 0, None));
        let got = s.split(&full);
        assert_eq!((got.len, got.replies, got.stop), (full.len(), 1, None));
    }

    #[test]
    fn auth_is_answered_only_when_its_answer_is_known() {
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        let auth = cmd(&["AUTH", "tok"]);
        let got = s.split(&[cmd(&["PING"]), auth.clone(), cmd(&["PING"])].concat());
        let local = Stop::Local {
            reply: b"+OK\r\n",
            quit: false,
            len: auth.len(),
        };
        assert_eq!((got.len, got.replies, got.stop), (14, 1, Some(local)));
        let mut other = Splitter::new(ClientAuth::Passthrough, Some(token()));
        assert_eq!(other.split(&cmd(&["AUTH", "nope"])).stop, Some(Stop::Own));
        let mut none = Splitter::new(ClientAuth::Passthrough, None);
        assert_eq!(none.split(&cmd(&["AUTH", "tok"])).stop, Some(Stop::Own));
    }

    #[test]
    fn require_shares_nothing_before_the_password() {
        let mut s = Splitter::new(ClientAuth::Require(token()), None);
        assert_eq!(s.split(&cmd(&["GET", "a"])).stop, Some(Stop::Own));
        let mut s = Splitter::new(ClientAuth::Require(token()), None);
        assert!(matches!(
            s.split(&cmd(&["AUTH", "tok"])).stop,
            Some(Stop::Local { quit: false, .. })
        ));
        assert!(s.authed());
        assert_eq!(s.split(&cmd(&["GET", "a"])).replies, 1);
    }

    #[test]
    fn only_frames_exactly_as_redis_reads_them_are_shared() {
        let shared = |input: &[u8]| {
            let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
            s.split(input)
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
        assert_eq!(s.split(&cmd(&mget)).stop, Some(Stop::Own));
        let mut s = Splitter::new(ClientAuth::Passthrough, Some(token()));
        assert_eq!(s.split(&cmd(&mget)).replies, 1);
    }

    #[test]
    fn long_declared_and_malformed_input_stop_sharing() {
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let got = s.split(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000000000\r\nxx");
        assert_eq!(got.stop, Some(Stop::Own));
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        let got = s.split(&[cmd(&["PING"]), b"*1\r\n:5\r\n".to_vec()].concat());
        assert_eq!(got.replies, 1);
        assert!(matches!(got.stop, Some(Stop::Malformed(_))));
        let mut s = Splitter::new(ClientAuth::Passthrough, None);
        assert_eq!(s.split(b"get \"unbalanced\r\n").stop, Some(Stop::Own));
        assert_eq!(
            Splitter::new(ClientAuth::Passthrough, None)
                .split(b"get k\r\n")
                .replies,
            1
        );
    }
}
