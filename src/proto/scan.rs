//! Streaming RESP frame-boundary scanner.
//!
//! It is fed whatever bytes arrived and says where the current top-level frame ends, keeping
//! only a few counters between calls: no payload byte is copied or buffered, a bulk string is
//! skipped by arithmetic however long it is, and a declared length (`$4000000000`,
//! `*2000000000`) is a number to count down, never an allocation. Requests are multibulk or
//! inline (telnet); replies are any RESP2 or RESP3 type, including push (`>`), attributes (`|`),
//! verbatim (`=`) and streamed (`$?`, `*?`) frames.
//!
//! Full decoding of the few frames the tunnel must understand is left to `redis-protocol`
//! (see `resp::command`); its decoders need a whole frame in memory, which is exactly what the
//! forwarding path must not require.

use memchr::memchr;

/// Which side's grammar to scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → server: multibulk of bulk strings, or an inline line.
    Request,
    /// Server → client: any RESP2/RESP3 frame.
    Reply,
}

pub use crate::limits::MAX_INLINE;
use crate::limits::MAX_REPLY_DEPTH as MAX_DEPTH;
/// How many leading arguments of a request the scanner remembers the position of.
pub const ARG_SLOTS: usize = 3;

/// A malformed frame, described the way Redis describes its own protocol errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("invalid multibulk length")]
    MultibulkLength,
    #[error("invalid bulk length")]
    BulkLength,
    #[error("too big inline request")]
    InlineTooBig,
    #[error("unknown reply type byte 0x{0:02x}")]
    ReplyType(u8),
    #[error("invalid length line")]
    Length,
    #[error("reply nested too deep")]
    TooDeep,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Expecting a type byte.
    Start,
    /// Reading the number after type byte `ty`, up to `\n`.
    Num {
        ty: u8,
        neg: bool,
        val: u64,
        digits: u8,
        streamed: bool,
    },
    /// Skipping a one-line value up to `\n`.
    Line,
    /// Skipping `left` bytes of bulk payload including its CRLF.
    Payload { left: u64 },
    /// Reading an inline request line of `len` bytes so far.
    Inline { len: usize },
}

#[derive(Debug, Clone, Copy)]
enum Level {
    /// An aggregate with `left` elements to go.
    Agg(u64),
    /// An attribute map with `left` elements to go; it does not count as its parent's element.
    Attr(u64),
    /// `*?` and friends: ends with a `.` line.
    StreamAgg,
    /// `$?`: chunks `;len` until `;0`.
    StreamStr,
}

/// What the scanner learnt about the frame it just finished (or is inside).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameInfo {
    /// First byte of the top-level frame (`*` for a multibulk request, anything else for
    /// an inline one; the reply type byte for replies).
    pub kind: u8,
    /// Multibulk requests: the declared argument count (≤ 0: Redis ignores the frame).
    pub argc: i64,
    /// Multibulk requests: `(offset, len)` of the first arguments' payloads, relative to the
    /// frame's first byte, for those whose header has been read.
    pub args: [(u64, u64); ARG_SLOTS],
    /// How many of `args` are filled in.
    pub args_known: usize,
    /// Multibulk requests: the longest argument length declared so far, so a frame too long
    /// to hold can be recognised from its headers before its payload arrives.
    pub longest_arg: u64,
}

/// The incremental scanner; one per direction per session.
#[derive(Debug)]
pub struct Scanner {
    dir: Dir,
    state: State,
    stack: Vec<Level>,
    /// Bytes of the current frame consumed by earlier calls.
    pos: u64,
    /// Multibulk request arguments still to come (their headers).
    req_left: u64,
    /// Length of the argument whose header was just read; its offset is noted next.
    pending_arg: Option<u64>,
    info: FrameInfo,
}

impl Scanner {
    pub fn new(dir: Dir) -> Self {
        Scanner {
            dir,
            state: State::Start,
            stack: Vec::new(),
            pos: 0,
            req_left: 0,
            pending_arg: None,
            info: FrameInfo::default(),
        }
    }

    /// True between frames.
    pub fn at_boundary(&self) -> bool {
        self.pos == 0 && matches!(self.state, State::Start)
    }

    /// Bytes of the current, unfinished frame consumed so far.
    pub fn frame_pos(&self) -> u64 {
        self.pos
    }

    /// What is known of the current frame, or of the frame just completed.
    pub fn info(&self) -> &FrameInfo {
        &self.info
    }

    /// Consumes bytes from `buf` up to the end of the current top-level frame or of `buf`,
    /// whichever comes first. Returns how many bytes were consumed and whether a frame ended
    /// there; after a frame ends, [`Scanner::info`] describes it until the next call.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), ScanError> {
        if self.at_boundary() {
            self.info = FrameInfo::default();
        }
        let mut i = 0;
        while i < buf.len() {
            let done = match self.state {
                State::Start => {
                    let ty = buf[i];
                    i += 1;
                    self.start(ty)?
                }
                State::Num {
                    ty,
                    mut neg,
                    mut val,
                    mut digits,
                    mut streamed,
                } => {
                    let mut finished = false;
                    while i < buf.len() {
                        let b = buf[i];
                        i += 1;
                        match b {
                            b'0'..=b'9' if !streamed => {
                                val = val
                                    .checked_mul(10)
                                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                                    .ok_or_else(|| self.length_error(ty))?;
                                digits = digits.saturating_add(1);
                            }
                            b'-' if digits == 0 && !neg && !streamed => neg = true,
                            b'?' if digits == 0 && !neg && !streamed => streamed = true,
                            b'\r' => {}
                            b'\n' => {
                                finished = true;
                                break;
                            }
                            _ => return Err(self.length_error(ty)),
                        }
                    }
                    if finished {
                        if digits == 0 && !streamed {
                            return Err(self.length_error(ty));
                        }
                        self.state = State::Start;
                        self.number(ty, neg, val, streamed)?
                    } else {
                        self.state = State::Num {
                            ty,
                            neg,
                            val,
                            digits,
                            streamed,
                        };
                        false
                    }
                }
                State::Line => match memchr(b'\n', &buf[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::Start;
                        self.element_done()
                    }
                    None => {
                        i = buf.len();
                        false
                    }
                },
                State::Payload { left } => {
                    let avail = (buf.len() - i) as u64;
                    if avail < left {
                        self.state = State::Payload { left: left - avail };
                        i = buf.len();
                        false
                    } else {
                        i += left as usize;
                        self.state = State::Start;
                        if matches!(self.stack.last(), Some(Level::StreamStr)) {
                            false // the next chunk header follows
                        } else {
                            self.element_done()
                        }
                    }
                }
                State::Inline { len } => match memchr(b'\n', &buf[i..]) {
                    // Judged on the whole line, not on how much of it arrived before its
                    // newline, so that the verdict does not depend on how the input was split.
                    Some(at) if len + at > MAX_INLINE => return Err(ScanError::InlineTooBig),
                    Some(at) => {
                        i += at + 1;
                        self.state = State::Start;
                        true
                    }
                    None => {
                        let len = len + (buf.len() - i);
                        if len > MAX_INLINE {
                            return Err(ScanError::InlineTooBig);
                        }
                        self.state = State::Inline { len };
                        i = buf.len();
                        false
                    }
                },
            };
            if done {
                self.pos = 0;
                self.state = State::Start;
                return Ok((i, true));
            }
            // Argument offsets are relative to the frame start; keep them right across calls.
            if self.dir == Dir::Request {
                self.note_arg_offset(i);
            }
        }
        self.pos += i as u64;
        Ok((i, false))
    }

    fn note_arg_offset(&mut self, i: usize) {
        if let Some(len) = self.pending_arg.take() {
            let k = self.info.args_known;
            if k < ARG_SLOTS {
                self.info.args[k] = (self.pos + i as u64, len);
                self.info.args_known = k + 1;
            }
        }
    }

    fn length_error(&self, ty: u8) -> ScanError {
        match (self.dir, ty) {
            (Dir::Request, b'*') => ScanError::MultibulkLength,
            (Dir::Request, _) => ScanError::BulkLength,
            (Dir::Reply, _) => ScanError::Length,
        }
    }

    /// A type byte was read. Returns whether the top-level frame is complete.
    fn start(&mut self, ty: u8) -> Result<bool, ScanError> {
        let top = self.pos == 0 && self.stack.is_empty() && self.req_left == 0;
        if top {
            self.info.kind = ty;
        }
        match self.dir {
            Dir::Request => {
                if top {
                    if ty == b'*' {
                        self.state = num(ty);
                    } else if ty == b'\n' {
                        return Ok(true); // a bare newline: an empty inline command
                    } else {
                        self.state = State::Inline { len: 1 };
                    }
                } else if ty == b'$' {
                    self.state = num(ty);
                } else {
                    return Err(ScanError::ExpectedBulk(ty));
                }
                Ok(false)
            }
            Dir::Reply => {
                match ty {
                    b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => self.state = State::Line,
                    b'$' | b'!' | b'=' | b'*' | b'%' | b'~' | b'>' | b'|' => self.state = num(ty),
                    b';' if matches!(self.stack.last(), Some(Level::StreamStr)) => {
                        self.state = num(ty)
                    }
                    b'.' if matches!(self.stack.last(), Some(Level::StreamAgg)) => {
                        self.stack.pop();
                        self.state = State::Line; // the rest of ".\r\n"
                        // The end marker closes the streamed aggregate, which is then one
                        // element of its parent: account for it when the line ends.
                        self.stack.push(Level::Agg(1));
                    }
                    _ => return Err(ScanError::ReplyType(ty)),
                }
                Ok(false)
            }
        }
    }

    /// A length line `ty<number>` was read. Returns whether the top-level frame is complete.
    fn number(&mut self, ty: u8, neg: bool, val: u64, streamed: bool) -> Result<bool, ScanError> {
        if self.dir == Dir::Request {
            if ty == b'*' {
                // More arguments than Redis counts (INT_MAX): it refuses at once; waiting for
                // them would hang the client.
                if !neg && val > i32::MAX as u64 {
                    return Err(ScanError::MultibulkLength);
                }
                // `*0`, `*-1`: Redis skips the frame without a reply.
                let argc = if neg {
                    -(val.min(i64::MAX as u64) as i64)
                } else {
                    val.min(i64::MAX as u64) as i64
                };
                self.info.argc = argc;
                if argc <= 0 {
                    return Ok(true);
                }
                self.req_left = val;
                return Ok(false);
            }
            // `$len` of an argument.
            if neg || streamed || val > i64::MAX as u64 {
                return Err(ScanError::BulkLength);
            }
            self.req_left -= 1;
            self.info.longest_arg = self.info.longest_arg.max(val);
            self.state = State::Payload { left: val + 2 };
            self.pending_arg = Some(val);
            return Ok(false);
        }
        let null = neg && val == 1;
        if neg && !null {
            return Err(ScanError::Length);
        }
        match ty {
            b'$' | b'!' | b'=' => {
                if streamed {
                    self.push(Level::StreamStr)?;
                    Ok(false)
                } else if null {
                    Ok(self.element_done())
                } else {
                    self.state = State::Payload {
                        left: val.checked_add(2).ok_or(ScanError::Length)?,
                    };
                    Ok(false)
                }
            }
            b';' => {
                if val == 0 {
                    self.stack.pop(); // the streamed string is complete
                    Ok(self.element_done())
                } else {
                    self.state = State::Payload {
                        left: val.checked_add(2).ok_or(ScanError::Length)?,
                    };
                    Ok(false)
                }
            }
            _ => {
                let pairs = matches!(ty, b'%' | b'|');
                if streamed {
                    self.push(Level::StreamAgg)?;
                    return Ok(false);
                }
                let n = if pairs {
                    val.checked_mul(2).ok_or(ScanError::Length)?
                } else {
                    val
                };
                if ty == b'|' && !null && n == 0 {
                    // An empty attribute still annotates the element after it.
                    return Ok(self.stack.is_empty());
                }
                if null || n == 0 {
                    return Ok(self.element_done());
                }
                self.push(if ty == b'|' {
                    Level::Attr(n)
                } else {
                    Level::Agg(n)
                })?;
                Ok(false)
            }
        }
    }

    fn push(&mut self, level: Level) -> Result<(), ScanError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ScanError::TooDeep);
        }
        self.stack.push(level);
        Ok(())
    }

    /// One element (or a whole request argument) ended. Returns whether the top-level frame
    /// is complete.
    fn element_done(&mut self) -> bool {
        if self.dir == Dir::Request {
            return self.req_left == 0;
        }
        loop {
            match self.stack.last_mut() {
                None => return true,
                Some(Level::Agg(left)) => {
                    *left -= 1;
                    if *left > 0 {
                        return false;
                    }
                    self.stack.pop();
                }
                Some(Level::Attr(left)) => {
                    *left -= 1;
                    if *left > 0 {
                        return false;
                    }
                    self.stack.pop();
                    // An attribute annotates the element after it; it is not one itself.
                    return self.stack.is_empty();
                }
                Some(Level::StreamAgg) | Some(Level::StreamStr) => return false,
            }
        }
    }
}

fn num(ty: u8) -> State {
    State::Num {
        ty,
        neg: false,
        val: 0,
        digits: 0,
        streamed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `data` in chunks cut at `cuts` and returns the end offset of every frame.
    fn boundaries(dir: Dir, data: &[u8], cuts: &[usize]) -> Result<Vec<usize>, ScanError> {
        let mut s = Scanner::new(dir);
        let mut ends = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.push(data.len());
        points.sort_unstable();
        let mut at = 0;
        for end in points {
            while at < end {
                let (n, done) = s.feed(&data[at..end])?;
                assert!(n > 0 || at == end, "no progress at {at}");
                at += n;
                if done {
                    ends.push(at);
                }
            }
        }
        Ok(ends)
    }

    fn one(dir: Dir, frame: &[u8]) -> Vec<usize> {
        boundaries(dir, frame, &[]).unwrap()
    }

    #[test]
    fn requests_multibulk_and_inline() {
        let stream = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nget k\n\r\n*0\r\n*-1\r\n";
        assert_eq!(one(Dir::Request, stream), vec![20, 26, 32, 34, 38, 43]);
        let mut s = Scanner::new(Dir::Request);
        let (n, done) = s
            .feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n")
            .unwrap();
        assert!(done && n == 28);
        let info = s.info();
        assert_eq!((info.kind, info.argc, info.args_known), (b'*', 3, 3));
        assert_eq!(info.args, [(8, 3), (17, 1), (24, 2)]);
    }

    #[test]
    fn argument_offsets_survive_any_split() {
        let frame = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n";
        for cut in 0..frame.len() {
            let mut s = Scanner::new(Dir::Request);
            let (a, d1) = s.feed(&frame[..cut]).unwrap();
            assert!(!d1 && a == cut);
            let (b, d2) = s.feed(&frame[cut..]).unwrap();
            assert!(d2 && a + b == frame.len(), "cut {cut}");
            let args = s.info().args;
            let arg = |k: usize| &frame[args[k].0 as usize..][..args[k].1 as usize];
            assert_eq!(
                (arg(0), arg(1), arg(2)),
                (&b"CLIENT"[..], &b"REPLY"[..], &b"OFF"[..]),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn request_errors_read_like_redis() {
        let err = |b: &[u8]| boundaries(Dir::Request, b, &[]).unwrap_err().to_string();
        assert_eq!(err(b"*1\r\n:5\r\n"), "expected '$', got ':'");
        assert_eq!(err(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(err(b"*1\r\n$-3\r\n"), "invalid bulk length");
        assert_eq!(err(&vec![b'a'; MAX_INLINE + 1]), "too big inline request");
        // However the line arrives: whole with its newline, or cut before it.
        let mut long = vec![b'a'; MAX_INLINE + 1];
        long.push(b'\n');
        assert_eq!(err(&long), "too big inline request");
        let mut longest = vec![b'a'; MAX_INLINE];
        longest.push(b'\n');
        for cut in [0, MAX_INLINE, MAX_INLINE + 1] {
            assert_eq!(
                boundaries(Dir::Request, &longest, &[cut]).unwrap(),
                vec![MAX_INLINE + 1]
            );
        }
    }

    #[test]
    fn absurd_numbers_are_errors_not_panics() {
        let zeros = format!("*{}1\r\n", "0".repeat(300));
        assert_eq!(
            boundaries(Dir::Request, zeros.as_bytes(), &[]).unwrap(),
            Vec::<usize>::new()
        );
        let err = boundaries(Dir::Reply, b"$18446744073709551615\r\n", &[]).unwrap_err();
        assert_eq!(err, ScanError::Length);
        let err = boundaries(Dir::Reply, b"*99999999999999999999\r\n", &[]).unwrap_err();
        assert_eq!(err, ScanError::Length);
    }

    #[test]
    fn a_count_redis_cannot_hold_is_refused_as_redis_refuses_it() {
        let err = boundaries(Dir::Request, b"*3000000000\r\n", &[]).unwrap_err();
        assert_eq!(err.to_string(), "invalid multibulk length");
        assert!(boundaries(Dir::Request, b"*2147483647\r\n", &[]).is_ok());
    }

    #[test]
    fn huge_declared_lengths_are_only_numbers() {
        let mut s = Scanner::new(Dir::Request);
        let (n, done) = s.feed(b"*2000000000\r\n$4000000000\r\nxxxx").unwrap();
        assert_eq!((n, done), (30, false));
        // Megabytes more stream through without the scanner holding any of them.
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            assert_eq!(s.feed(&chunk).unwrap(), (chunk.len(), false));
        }
        assert!(std::mem::size_of::<Scanner>() < 256);
    }

    #[test]
    fn replies_of_every_resp3_type() {
        let frames: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-12\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n_\r\n",
            b"$?\r\n;4\r\nHell\r\n;1\r\no\r\n;0\r\n",
            b"*?\r\n:1\r\n*?\r\n:2\r\n.\r\n.\r\n",
            b"*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n",
            // An empty attribute is not an element either.
            b"*1\r\n|0\r\n+a\r\n",
            b"%1\r\n+k\r\n|0\r\n|0\r\n:1\r\n",
        ];
        let stream: Vec<u8> = frames.concat();
        let mut ends = Vec::new();
        let mut at = 0;
        for f in frames {
            at += f.len();
            ends.push(at);
        }
        for cut in 0..stream.len() {
            assert_eq!(
                boundaries(Dir::Reply, &stream, &[cut]).unwrap(),
                ends,
                "cut {cut}"
            );
        }
        // A top-level attribute is a frame of its own (kind '|'), followed by its reply.
        let mut s = Scanner::new(Dir::Reply);
        let attr = b"|1\r\n+key-popularity\r\n%0\r\n";
        assert_eq!(s.feed(attr).unwrap(), (attr.len(), true));
        assert_eq!(s.info().kind, b'|');
        let mut s = Scanner::new(Dir::Reply);
        assert_eq!(s.feed(b"|0\r\n+a\r\n").unwrap(), (4, true));
        assert_eq!(s.info().kind, b'|');
    }

    /// Valid RESP3 replies of every type, nested, as bytes.
    fn leaf() -> impl Strategy<Value = Vec<u8>> + Clone {
        prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
                let mut v = format!("${}\r\n", b.len()).into_bytes();
                v.extend_from_slice(&b);
                v.extend_from_slice(b"\r\n");
                v
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b"#f\r\n".to_vec()),
            Just(b",-1.5e3\r\n".to_vec()),
            "[a-z ]{0,30}".prop_map(|s| format!("={}\r\ntxt:{s}\r\n", s.len() + 4).into_bytes()),
        ]
    }

    fn reply_frame() -> impl Strategy<Value = Vec<u8>> {
        leaf().prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|items| aggregate(
                    b'*',
                    items.len(),
                    &items
                )),
                // Sets and map keys hold simple values, as Redis sends them.
                proptest::collection::vec(leaf(), 0..6).prop_map(|items| aggregate(
                    b'~',
                    items.len(),
                    &items
                )),
                proptest::collection::vec((leaf(), inner.clone()), 0..3).prop_map(|pairs| {
                    let flat: Vec<Vec<u8>> = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
                    aggregate(b'%', flat.len() / 2, &flat)
                }),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                    let mut v = b"*?\r\n".to_vec();
                    v.extend(items.concat());
                    v.extend_from_slice(b".\r\n");
                    v
                }),
                (inner.clone(), inner).prop_map(|(a, b)| {
                    // An attribute annotating an element inside an array.
                    let mut v = b"*1\r\n|1\r\n+meta\r\n".to_vec();
                    v.extend(a);
                    v.extend(b);
                    v
                }),
            ]
        })
    }

    fn aggregate(ty: u8, n: usize, items: &[Vec<u8>]) -> Vec<u8> {
        let mut v = format!("{}{n}\r\n", char::from(ty)).into_bytes();
        v.extend(items.concat());
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any split of any pipelined reply stream finds the same frame boundaries, and they
        /// agree with redis-protocol's decoder wherever it can decode (it has no streamed
        /// aggregates).
        #[test]
        fn reply_boundaries_ignore_splits(frames in proptest::collection::vec(reply_frame(), 1..12),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let stream = frames.concat();
            let mut ends = Vec::new();
            let mut at = 0;
            for f in &frames {
                if !f.windows(2).any(|w| w == b"*?" || w == b"|1" || w == b"$-") {
                    let decoded = redis_protocol::resp3::decode::complete::decode(f).unwrap();
                    prop_assert_eq!(decoded.map(|(_, n)| n), Some(f.len()));
                }
                at += f.len();
                ends.push(at);
            }
            prop_assert_eq!(boundaries(Dir::Reply, &stream, &cuts).unwrap(), ends);
        }

        #[test]
        fn request_boundaries_ignore_splits(cmds in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5), 1..20),
                cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for args in &cmds {
                let mut buf = bytes::BytesMut::new();
                let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                crate::proto::encode_command(&mut buf, &refs);
                let decoded = redis_protocol::resp2::decode::decode(&buf).unwrap();
                prop_assert_eq!(decoded.map(|(_, n)| n), Some(buf.len()));
                stream.extend_from_slice(&buf);
                ends.push(stream.len());
            }
            prop_assert_eq!(boundaries(Dir::Request, &stream, &cuts).unwrap(), ends);
        }
    }
}
