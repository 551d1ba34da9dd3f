//! The RESP session engine in memory: byte-exact forwarding under any split, reply accounting,
//! AUTH handling, opacity, malformed input and bounded memory.

use ectunnel::config::{ClientAuth, Credentials, Secret};
use ectunnel::proto::engine::HOLD_LIMIT;
use ectunnel::proto::memory::MemSession;
use proptest::prelude::*;

fn creds(user: Option<&str>, pass: &str) -> Credentials {
    Credentials {
        username: user.map(str::to_owned),
        password: Secret::new(pass),
        file: None,
    }
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Client sends `req`, server answers `rep`; returns (upstream bytes, client bytes).
fn exchange(s: &mut MemSession, req: &[u8], rep: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut up, mut client) = (Vec::new(), Vec::new());
    s.client_sends(req, &mut up, &mut client);
    s.server_sends(rep, &mut client);
    (up, client)
}

fn passthrough() -> MemSession {
    MemSession::new(ClientAuth::Passthrough, Some(creds(None, "tunnel-token")))
}

#[test]
fn reset_is_followed_by_the_tunnels_auth_whose_reply_is_swallowed() {
    let mut s = passthrough();
    let req = [cmd(&["RESET"]), cmd(&["GET", "k"])].concat();
    let (up, client) = exchange(&mut s, &req, b"+RESET\r\n+OK\r\n$1\r\nv\r\n");
    assert_eq!(
        up,
        [
            cmd(&["RESET"]),
            cmd(&["AUTH", "tunnel-token"]),
            cmd(&["GET", "k"])
        ]
        .concat()
    );
    assert_eq!(client, b"+RESET\r\n$1\r\nv\r\n");
    assert_eq!(s.pending_replies(), 0);
    // A refused re-AUTH is reported, never shown to the client as an extra reply.
    let (_, client) = exchange(
        &mut s,
        b"reset\r\n",
        b"+RESET\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    assert_eq!(client, b"+RESET\r\n");
    assert_eq!(s.injected_errors.len(), 1);
    assert!(s.injected_errors[0].starts_with("WRONGPASS"));
}

#[test]
fn a_reply_to_the_tunnels_auth_that_is_not_resp_ends_the_session_however_it_arrives() {
    let req = [cmd(&["RESET"]), cmd(&["GET", "k"])].concat();
    let rep: &[u8] = b"+RESET\r\n*2\r\n$2\r\nok\r\n\x00garbage\r\n$1\r\nv\r\n";
    let mut seen = Vec::new();
    for cut in 0..=rep.len() {
        let mut s = passthrough();
        let (mut up, mut client) = (Vec::new(), Vec::new());
        s.client_sends(&req, &mut up, &mut client);
        let closed =
            s.server_sends(&rep[..cut], &mut client) || s.server_sends(&rep[cut..], &mut client);
        assert!(
            closed,
            "cut {cut}: the session goes on after a reply it cannot delimit"
        );
        seen.push(client);
    }
    // The client gets its RESET's reply and nothing of the malformed one, wherever it was
    // cut, then the tunnel's error in place of its GET's reply.
    let want: &[u8] =
        b"+RESET\r\n-ERR ectunnel: the server's reply to a command the tunnel sent is not RESP\r\n";
    assert!(seen.iter().all(|c| c == want), "{seen:?}");
}

#[test]
fn a_request_cut_off_by_malformed_input_is_not_waited_for() {
    // SET streams upstream once its name is in; then a header turns out malformed.
    let head = [
        cmd(&["GET", "k"]),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec(),
    ]
    .concat();
    let mut s = passthrough();
    let (mut up, mut client) = (Vec::new(), Vec::new());
    assert!(!s.client_sends(&head, &mut up, &mut client));
    assert!(s.client_sends(b":1\r\n", &mut up, &mut client));
    assert_eq!(up, head, "the streamed part went upstream");
    // The server answers GET, never the SET it got half of: the error follows GET's reply.
    assert!(s.server_sends(b"$-1\r\n", &mut client));
    assert_eq!(
        client,
        b"$-1\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert_eq!(s.pending_replies(), 0);
}

#[test]
fn acl_user_reauth_after_reset() {
    let mut s = MemSession::new(ClientAuth::Passthrough, Some(creds(Some("app"), "pw")));
    let (up, _) = exchange(&mut s, &cmd(&["RESET"]), b"");
    assert_eq!(up, [cmd(&["RESET"]), cmd(&["AUTH", "app", "pw"])].concat());
}

#[test]
fn absorb_answers_auth_itself_in_order_and_strips_hello_auth() {
    let mut s = MemSession::new(ClientAuth::Absorb, Some(creds(None, "current")));
    let mut up = Vec::new();
    let mut client = Vec::new();
    // A GET is outstanding: the tunnel's +OK for AUTH must come after its reply.
    s.client_sends(
        &[cmd(&["GET", "a"]), cmd(&["AUTH", "old-token"])].concat(),
        &mut up,
        &mut client,
    );
    assert_eq!(up, cmd(&["GET", "a"]));
    assert!(client.is_empty());
    s.server_sends(b"$1\r\n1\r\n", &mut client);
    assert_eq!(client, b"$1\r\n1\r\n+OK\r\n");
    let (up, client) = exchange(
        &mut s,
        &cmd(&[
            "HELLO",
            "3",
            "AUTH",
            "default",
            "old-token",
            "SETNAME",
            "app",
        ]),
        b"%1\r\n$5\r\nproto\r\n:3\r\n",
    );
    assert_eq!(up, cmd(&["HELLO", "3", "SETNAME", "app"]));
    assert_eq!(client, b"%1\r\n$5\r\nproto\r\n:3\r\n");
    let (up, client) = exchange(&mut s, b"AUTH\r\n", b"");
    assert!(up.is_empty());
    assert_eq!(
        client,
        b"-ERR wrong number of arguments for 'auth' command\r\n"
    );
}

#[test]
fn require_demands_the_tunnels_password_before_forwarding_anything() {
    let mut s = MemSession::new(
        ClientAuth::Require(creds(None, "client-pass")),
        Some(creds(None, "up")),
    );
    let (up, client) = exchange(
        &mut s,
        &[cmd(&["GET", "k"]), cmd(&["HELLO", "3"])].concat(),
        b"",
    );
    assert!(up.is_empty());
    assert!(
        client.starts_with(b"-NOAUTH Authentication required.\r\n-NOAUTH HELLO must be called"),
        "{}",
        String::from_utf8_lossy(&client)
    );
    let (up, client) = exchange(&mut s, &cmd(&["AUTH", "nope"]), b"");
    assert!(up.is_empty());
    assert_eq!(
        client,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    let (up, client) = exchange(&mut s, b"AUTH client-pass\r\nGET k\r\n", b"$-1\r\n");
    assert_eq!(up, b"GET k\r\n");
    assert_eq!(client, b"+OK\r\n$-1\r\n");
    // RESET de-authenticates at the tunnel too.
    let (up, client) = exchange(
        &mut s,
        &[cmd(&["RESET"]), cmd(&["GET", "k"])].concat(),
        b"+RESET\r\n+OK\r\n",
    );
    assert_eq!(up, [cmd(&["RESET"]), cmd(&["AUTH", "up"])].concat());
    assert_eq!(client, b"+RESET\r\n-NOAUTH Authentication required.\r\n");
    // A HELLO the tunnel cannot parse is not forwarded before authentication either.
    let (up, client) = exchange(&mut s, &cmd(&["HELLO", "3", "BOGUS"]), b"");
    assert!(up.is_empty());
    assert!(client.starts_with(b"-NOAUTH HELLO must be called"));
    // HELLO AUTH with the right user and password authenticates and is forwarded without AUTH.
    let (up, _) = exchange(
        &mut s,
        &cmd(&["HELLO", "3", "AUTH", "default", "client-pass"]),
        b"",
    );
    assert_eq!(up, cmd(&["HELLO", "3"]));
}

#[test]
fn push_frames_are_not_replies() {
    let mut s = passthrough();
    let mut up = Vec::new();
    let mut client = Vec::new();
    s.client_sends(
        &[cmd(&["RESET"]), cmd(&["GET", "k"])].concat(),
        &mut up,
        &mut client,
    );
    // An invalidation push arrives between the replies; the swallowed AUTH reply is still the
    // second reply, not the push.
    let replies = b"+RESET\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+OK\r\n$1\r\nv\r\n";
    s.server_sends(replies, &mut client);
    assert_eq!(
        client,
        b"+RESET\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n"
    );
}

#[test]
fn where_replies_stop_pairing_nothing_is_injected_until_a_reset() {
    for (trigger, its_replies) in [
        (
            cmd(&["MONITOR"]),
            &b"+OK\r\n+1700000000.1 [0 127.0.0.1:1] \"get\" \"a\"\r\n"[..],
        ),
        (
            cmd(&["SUBSCRIBE", "ch"]),
            b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
        ),
        (cmd(&["CLIENT", "REPLY", "OFF"]), b""),
        (cmd(&["client", "reply", "skip"]), b""),
        (b"client reply off\r\n".to_vec(), b""),
    ] {
        let mut s = passthrough();
        let what = String::from_utf8_lossy(&trigger).into_owned();
        let (up, client) = exchange(
            &mut s,
            &[cmd(&["GET", "a"]), trigger.clone()].concat(),
            b"$1\r\n1\r\n",
        );
        assert_eq!(up, [cmd(&["GET", "a"]), trigger.clone()].concat(), "{what}");
        assert_eq!(client, b"$1\r\n1\r\n");
        assert!(!s.requests().is_synced(), "{what}");
        // Whatever comes now is forwarded as it comes, a request sent meanwhile included.
        let (up, client) = exchange(&mut s, &cmd(&["PING"]), its_replies);
        assert_eq!(
            (up, client),
            (cmd(&["PING"]), its_replies.to_vec()),
            "{what}"
        );
        // RESET: its +RESET is where pairing resumes; the tunnel's AUTH follows it, swallowed.
        let req = [cmd(&["RESET"]), cmd(&["GET", "b"])].concat();
        let (up, client) = exchange(&mut s, &req, b"+RESET\r\n+OK\r\n:1\r\n");
        let want = [
            cmd(&["RESET"]),
            cmd(&["AUTH", "tunnel-token"]),
            cmd(&["GET", "b"]),
        ]
        .concat();
        assert_eq!(up, want, "{what}");
        assert_eq!(client, b"+RESET\r\n:1\r\n", "{what}");
        assert!(
            s.requests().is_synced() && s.replies().is_synced(),
            "{what}"
        );
        assert_eq!(s.pending_replies(), 0);
    }
    let mut s = passthrough();
    exchange(&mut s, &cmd(&["CLIENT", "REPLY", "ON"]), b"+OK\r\n");
    assert!(s.requests().is_synced());
}

#[test]
fn resp3_subscribe_mode_keeps_replies_paired() {
    let mut s = passthrough();
    let hello = b"%1\r\n$5\r\nproto\r\n:3\r\n";
    let (_, client) = exchange(&mut s, &cmd(&["HELLO", "3"]), hello);
    assert_eq!(client, hello);
    let push = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    let req = [cmd(&["SUBSCRIBE", "ch"]), cmd(&["PING"])].concat();
    let (_, client) = exchange(&mut s, &req, &[&push[..], b"+PONG\r\n"].concat());
    assert_eq!(client, [&push[..], b"+PONG\r\n"].concat());
    assert!(s.requests().is_synced() && s.replies().is_synced());
    // RESET in subscribe mode is an ordinary, paired RESET here.
    let (up, client) = exchange(&mut s, &cmd(&["RESET"]), b"+RESET\r\n+OK\r\n");
    assert_eq!(
        up,
        [cmd(&["RESET"]), cmd(&["AUTH", "tunnel-token"])].concat()
    );
    assert_eq!(client, b"+RESET\r\n");
    // A subscribe refused (by a channel ACL) is answered with an error instead of a push.
    let mut s = passthrough();
    exchange(&mut s, &cmd(&["HELLO", "3"]), hello);
    let req = [cmd(&["SUBSCRIBE", "secret"]), cmd(&["RESET"])].concat();
    let refused =
        b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n";
    let (_, client) = exchange(&mut s, &req, &[&refused[..], b"+RESET\r\n+OK\r\n"].concat());
    assert_eq!(client, [&refused[..], b"+RESET\r\n"].concat());
    assert!(s.replies().is_synced() && s.pending_replies() == 0);
    // Had HELLO 3 failed, the connection is in RESP2 subscribe mode after all: unsynced.
    let mut s = passthrough();
    exchange(&mut s, &cmd(&["HELLO", "3"]), b"-NOPROTO sorry\r\n");
    let sub = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    let (_, client) = exchange(&mut s, &cmd(&["SUBSCRIBE", "ch"]), sub);
    assert_eq!(client, sub);
    assert!(!s.replies().is_synced());
}

#[test]
fn malformed_input_gets_an_error_after_the_pending_replies_then_closes() {
    let mut s = passthrough();
    let mut up = Vec::new();
    let mut client = Vec::new();
    let stop = s.client_sends(
        &[
            cmd(&["GET", "a"]),
            b"*1\r\n:5\r\n".to_vec(),
            cmd(&["GET", "b"]),
        ]
        .concat(),
        &mut up,
        &mut client,
    );
    assert!(stop);
    assert_eq!(
        up,
        cmd(&["GET", "a"]),
        "nothing from the malformed frame on is forwarded"
    );
    assert!(client.is_empty(), "the error waits for the earlier reply");
    let close = s.server_sends(b"$1\r\n1\r\n", &mut client);
    assert!(close);
    assert_eq!(
        client,
        b"$1\r\n1\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    );
}

#[test]
fn a_huge_declared_bulk_streams_through_in_bounded_memory() {
    let mut s = passthrough();
    let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000000000\r\n".to_vec();
    let mut up = Vec::new();
    let mut client = Vec::new();
    s.client_sends(&head, &mut up, &mut client);
    let chunk = vec![b'x'; 16 * 1024];
    let mut sent = head.len();
    let mut forwarded_check = 0usize;
    for _ in 0..2048 {
        // 32 MiB of the declared 4 GB
        s.client_sends(&chunk, &mut up, &mut client);
        sent += chunk.len();
        forwarded_check += up.len();
        up.clear();
    }
    assert!(
        s.max_buffered <= HOLD_LIMIT + chunk.len(),
        "buffered {} bytes",
        s.max_buffered
    );
    assert!(sent - forwarded_check <= HOLD_LIMIT + chunk.len());
    assert!(forwarded_check > 30 * 1024 * 1024);
    // And a count of two billion arguments is only a number too.
    let mut s = passthrough();
    s.client_sends(b"*2000000000\r\n$3\r\nSET\r\n", &mut up, &mut client);
    for _ in 0..256 {
        s.client_sends(b"$1\r\nx\r\n", &mut up, &mut client);
    }
    assert!(
        s.max_buffered <= HOLD_LIMIT + 64,
        "buffered {} bytes",
        s.max_buffered
    );
}

/// A pipelined request without special commands, multibulk or inline.
fn request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            prop_oneof![
                Just("GET"),
                Just("SET"),
                Just("incr"),
                Just("LRANGE"),
                Just("ping")
            ],
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4)
        )
            .prop_map(|(name, args)| {
                let mut out =
                    format!("*{}\r\n${}\r\n{name}\r\n", args.len() + 1, name.len()).into_bytes();
                for a in args {
                    out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    out.extend_from_slice(&a);
                    out.extend_from_slice(b"\r\n");
                }
                out
            }),
        "(get|set|echo) [a-z0-9]{1,10}".prop_map(|l| format!("{l}\r\n").into_bytes()),
    ]
}

/// A reply of any RESP3 type a client command can get (not push).
fn reply() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"+OK\r\n".to_vec()),
        Just(b"-ERR no\r\n".to_vec()),
        any::<i32>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(|b| [
            format!("${}\r\n", b.len()).into_bytes(),
            b,
            b"\r\n".to_vec()
        ]
        .concat()),
        Just(b"*2\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n".to_vec()),
        Just(b"_\r\n".to_vec()),
    ]
}

fn split(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(data.len());
    points.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        out.push(data[at..p].to_vec());
        at = p;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any split of any valid pipelined stream forwards byte-identical output both ways, with
    /// one reply accounted per request and none left over.
    #[test]
    fn any_split_forwards_identical_bytes(
        reqs in proptest::collection::vec(request(), 1..30),
        seed in proptest::collection::vec(reply(), 30),
        pushes in proptest::collection::vec(any::<bool>(), 30),
        req_cuts in proptest::collection::vec(any::<usize>(), 0..10),
        rep_cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let req_stream = reqs.concat();
        let mut rep_stream = Vec::new();
        for (i, _) in reqs.iter().enumerate() {
            if pushes[i] {
                rep_stream.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
            }
            rep_stream.extend_from_slice(&seed[i]);
        }
        let mut s = passthrough();
        let (mut up, mut client) = (Vec::new(), Vec::new());
        for c in split(&req_stream, &req_cuts) {
            prop_assert!(!s.client_sends(&c, &mut up, &mut client));
        }
        prop_assert_eq!(&up, &req_stream);
        prop_assert_eq!(s.pending_replies(), reqs.len() as u64);
        for c in split(&rep_stream, &rep_cuts) {
            prop_assert!(!s.server_sends(&c, &mut client));
        }
        prop_assert_eq!(&client, &rep_stream);
        prop_assert_eq!(s.pending_replies(), 0);
        prop_assert!(s.replies().is_synced());
    }
}
