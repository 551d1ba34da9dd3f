//! What a request is: its command name classified, and, for the few commands the tunnel must
//! understand in full (AUTH, HELLO), its arguments, decoded with `redis-protocol`.

use bytes::BytesMut;
use redis_protocol::resp2::types::OwnedFrame;

use super::scan::FrameInfo;

/// The commands whose handling differs from "forward and expect one reply".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Auth,
    Hello,
    Reset,
    Quit,
    /// After these, replies no longer pair one-to-one with requests.
    Monitor,
    Subscribe,
    Sync,
    Client,
    /// `MULTI`, and what ends one (`EXEC`, `DISCARD`): nothing may be injected in between.
    Multi,
    EndMulti,
    /// `CLUSTER`: its topology subcommands' replies carry node addresses.
    Cluster,
    /// `ASKING`: the next command must follow it with nothing in between.
    Asking,
    Other,
}

/// Classifies a command name, case-insensitively, without allocating.
pub fn classify(name: &[u8]) -> Cmd {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        4 if is("AUTH") => Cmd::Auth,
        4 if is("QUIT") => Cmd::Quit,
        4 if is("SYNC") => Cmd::Sync,
        4 if is("EXEC") => Cmd::EndMulti,
        5 if is("MULTI") => Cmd::Multi,
        7 if is("DISCARD") => Cmd::EndMulti,
        5 if is("HELLO") => Cmd::Hello,
        5 if is("RESET") => Cmd::Reset,
        5 if is("PSYNC") => Cmd::Sync,
        6 if is("CLIENT") => Cmd::Client,
        6 if is("ASKING") => Cmd::Asking,
        7 if is("CLUSTER") => Cmd::Cluster,
        7 if is("MONITOR") => Cmd::Monitor,
        9..=12
            if is("SUBSCRIBE")
                || is("PSUBSCRIBE")
                || is("SSUBSCRIBE")
                || is("UNSUBSCRIBE")
                || is("PUNSUBSCRIBE")
                || is("SUNSUBSCRIBE") =>
        {
            Cmd::Subscribe
        }
        _ => Cmd::Other,
    }
}

/// Commands whose effect and reply depend only on their arguments, the keyspace of db 0 and the
/// server's own state (never on connection state, never blocking, one reply each in RESP2), so
/// several clients' requests may share one upstream session: the data commands, and what client
/// libraries and test setups ask of the server (`INFO`, `COMMAND`, `TIME`, `FLUSHALL`…). Sorted, upper case. Anything not listed (AUTH,
/// SELECT, MULTI, WATCH, the blocking commands, SUBSCRIBE, CLIENT, HELLO, EVAL, WAIT, admin
/// commands…) gives the client a session of its own.
const SHAREABLE: &[&str] = &[
    "APPEND",
    "BITCOUNT",
    "BITFIELD",
    "BITFIELD_RO",
    "BITOP",
    "BITPOS",
    "COMMAND",
    "COPY",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DUMP",
    "ECHO",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FLUSHALL",
    "FLUSHDB",
    "GEOADD",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEORADIUSBYMEMBER_RO",
    "GEORADIUS_RO",
    "GEOSEARCH",
    "GEOSEARCHSTORE",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LMPOP",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MGET",
    "MSET",
    "MSETNX",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PFADD",
    "PFCOUNT",
    "PFMERGE",
    "PING",
    "PSETEX",
    "PTTL",
    "PUBLISH",
    "RANDOMKEY",
    "RENAME",
    "RENAMENX",
    "RESTORE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCAN",
    "SCARD",
    "SDIFF",
    "SDIFFSTORE",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SINTER",
    "SINTERCARD",
    "SINTERSTORE",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT_RO",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "STRLEN",
    "SUNION",
    "SUNIONSTORE",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "XACK",
    "XADD",
    "XAUTOCLAIM",
    "XCLAIM",
    "XDEL",
    "XLEN",
    "XPENDING",
    "XRANGE",
    "XREVRANGE",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZDIFF",
    "ZDIFFSTORE",
    "ZINCRBY",
    "ZINTER",
    "ZINTERCARD",
    "ZINTERSTORE",
    "ZLEXCOUNT",
    "ZMPOP",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANGESTORE",
    "ZRANK",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
    "ZUNION",
    "ZUNIONSTORE",
];

/// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE` (which, unlike the subscribes, cannot fail).
pub fn is_unsubscribe(name: &[u8]) -> bool {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    is("UNSUBSCRIBE") || is("PUNSUBSCRIBE") || is("SUNSUBSCRIBE")
}

/// `WAIT` and `WAITAOF`: they block their connection until the server's replicas (or its AOF)
/// have what that connection wrote.
pub fn is_wait(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"WAIT") || name.eq_ignore_ascii_case(b"WAITAOF")
}

/// Whether requests of command `name` may go over a shared upstream session.
pub fn shareable(name: &[u8]) -> bool {
    let mut upper = [0u8; 24];
    let Some(dst) = upper.get_mut(..name.len()) else {
        return false;
    };
    dst.copy_from_slice(name);
    dst.make_ascii_uppercase();
    SHAREABLE
        .binary_search_by(|c| c.as_bytes().cmp(dst))
        .is_ok()
}

/// The command name of a complete request frame, borrowed; `None` for the frames Redis
/// ignores without a reply (an empty inline line, `*0`, `*-1`).
pub fn name<'a>(frame: &'a [u8], info: &FrameInfo) -> Option<&'a [u8]> {
    if info.kind != b'*' {
        return inline_name(frame);
    }
    if info.argc <= 0 || info.args_known == 0 {
        return None;
    }
    let (off, len) = info.args[0];
    frame.get(off as usize..(off + len) as usize)
}

/// Every argument of a complete request frame, inline or multibulk; `None` when Redis would
/// refuse it (unbalanced quotes) or it is not a multibulk of bulk strings.
pub fn args(frame: &[u8], info: &FrameInfo) -> Option<Vec<Vec<u8>>> {
    if info.kind != b'*' {
        inline_args(frame)
    } else {
        multibulk_args(frame)
    }
}

/// `AUTH [user] pass` as `(user, pass)`, `default` when no user is named; `None` for the
/// wrong number of arguments.
pub fn auth_pair(args: &[Vec<u8>]) -> Option<(&[u8], &[u8])> {
    match args {
        [_, pass] => Some((b"default", pass)),
        [_, user, pass] => Some((user, pass)),
        _ => None,
    }
}

/// The arguments of a complete multibulk request, decoded by `redis-protocol`.
pub fn multibulk_args(frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    match redis_protocol::resp2::decode::decode(frame).ok()?? {
        (OwnedFrame::Array(items), n) if n == frame.len() => items
            .into_iter()
            .map(|f| match f {
                OwnedFrame::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The first word of an inline request line: the command name, borrowed.
pub fn inline_name(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &line[start..];
    let end = rest
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Splits an inline request line into arguments the way Redis' `sdssplitargs` does (quotes
/// and escapes included). `None` for unbalanced quotes, which Redis rejects too.
pub fn inline_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            if i >= n {
                if quote.is_some() {
                    return None;
                }
                break;
            }
            let b = line[i];
            match quote {
                Some(b'"') if b == b'\\' && i + 1 < n => {
                    i += 1;
                    let e = line[i];
                    let hex = |c: u8| (c as char).to_digit(16);
                    if e == b'x'
                        && i + 2 < n
                        && let (Some(h), Some(l)) = (hex(line[i + 1]), hex(line[i + 2]))
                    {
                        cur.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    cur.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                }
                Some(b'\'') if b == b'\\' && i + 1 < n && line[i + 1] == b'\'' => {
                    i += 1;
                    cur.push(b'\'');
                }
                Some(q) if b == q => {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                }
                Some(_) => cur.push(b),
                None if b.is_ascii_whitespace() => break,
                None if (b == b'"' || b == b'\'') => quote = Some(b),
                None => cur.push(b),
            }
            i += 1;
        }
        args.push(cur);
    }
}

/// `HELLO` arguments split into the part to keep and the `AUTH user pass` it carried.
pub struct Hello {
    /// The command with `AUTH user pass` removed, ready to send.
    pub without_auth: BytesMut,
    pub auth: Option<(Vec<u8>, Vec<u8>)>,
    /// The name given with `SETNAME`, if any.
    pub setname: Option<Vec<u8>>,
}

/// Parses `HELLO [protover [AUTH user pass] [SETNAME name]]`; `None` when malformed (the server
/// will then answer it with its own error).
pub fn parse_hello(args: &[Vec<u8>]) -> Option<Hello> {
    let mut keep: Vec<&[u8]> = vec![&args[0]];
    let mut auth = None;
    let mut setname = None;
    let mut i = 1;
    if let Some(ver) = args.get(1) {
        keep.push(ver);
        i = 2;
    }
    while i < args.len() {
        let opt = &args[i];
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            auth = Some((args[i + 1].clone(), args[i + 2].clone()));
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            keep.push(opt);
            keep.push(&args[i + 1]);
            setname = Some(args[i + 1].clone());
            i += 2;
        } else {
            return None;
        }
    }
    let mut without_auth = BytesMut::new();
    super::encode_command(&mut without_auth, &keep);
    Some(Hello {
        without_auth,
        auth,
        setname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_any_case() {
        assert_eq!(classify(b"reset"), Cmd::Reset);
        assert_eq!(classify(b"Auth"), Cmd::Auth);
        assert_eq!(classify(b"SSUBSCRIBE"), Cmd::Subscribe);
        assert_eq!(classify(b"punsubscribe"), Cmd::Subscribe);
        assert_eq!(classify(b"GET"), Cmd::Other);
        assert_eq!(classify(b"multi"), Cmd::Multi);
        assert_eq!(classify(b"Exec"), Cmd::EndMulti);
        assert_eq!(classify(b"DISCARD"), Cmd::EndMulti);
        assert_eq!(classify(b""), Cmd::Other);
    }

    #[test]
    fn shareable_commands_are_data_commands_only() {
        assert!(
            SHAREABLE.windows(2).all(|w| w[0] < w[1]),
            "SHAREABLE must stay sorted"
        );
        assert!(shareable(b"get") && shareable(b"SET") && shareable(b"zRangeByScore"));
        for stateful in [
            "AUTH",
            "SELECT",
            "MULTI",
            "WATCH",
            "BLPOP",
            "SUBSCRIBE",
            "CLIENT",
            "HELLO",
            "EVAL",
            "WAIT",
            "XREAD",
            "RESET",
            "QUIT",
            "MONITOR",
            "READONLY",
            "SORT",
            "",
        ] {
            assert!(!shareable(stateful.as_bytes()), "{stateful}");
        }
        assert!(!shareable(&[b'G'; 40]));
    }

    #[test]
    fn inline_splitting_matches_sdssplitargs() {
        let a = inline_args(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r").unwrap();
        assert_eq!(
            a,
            vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert!(inline_args(b"get \"unbalanced").is_none());
        assert_eq!(inline_args(b"   \r").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(inline_name(b"  PING now\r"), Some(&b"PING"[..]));
    }

    #[test]
    fn hello_loses_only_its_auth() {
        let args: Vec<Vec<u8>> = ["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let h = parse_hello(&args).unwrap();
        assert_eq!(h.auth, Some((b"u".to_vec(), b"p".to_vec())));
        assert_eq!(h.setname, Some(b"n".to_vec()));
        assert_eq!(
            &h.without_auth[..],
            b"*4\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$7\r\nSETNAME\r\n$1\r\nn\r\n"
        );
        assert!(parse_hello(&[b"HELLO".to_vec(), b"3".to_vec(), b"BOGUS".to_vec()]).is_none());
        let frame = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
        assert_eq!(
            multibulk_args(frame).unwrap(),
            vec![b"HELLO".to_vec(), b"3".to_vec()]
        );
    }
}
