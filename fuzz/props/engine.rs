//! The session engine ([`MemSession`]: both halves and their FIFO, driven as a session drives
//! them): whatever the split of the client's requests and of the server's replies, the same
//! bytes go upstream, the same bytes reach the client, and the session ends at the same point;
//! a passthrough session forwards exactly the client's bytes; what it holds of a request stays
//! within `HOLD_LIMIT` plus the chunk that just arrived.

use ectunnel::config::{ClientAuth, Credentials, Secret};
use ectunnel::limits::HOLD_LIMIT;
use ectunnel::proto::memory::MemSession;

use super::split;

/// What a session made of its input.
#[derive(PartialEq, Eq)]
pub struct Outcome {
    pub upstream: Vec<u8>,
    pub client: Vec<u8>,
    /// The request side cut the client off / the reply side ended the session.
    pub client_stopped: bool,
    pub server_closed: bool,
    pub pending: u64,
    pub injected_errors: Vec<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("upstream", &self.upstream.escape_ascii().to_string())
            .field("client", &self.client.escape_ascii().to_string())
            .field("client_stopped", &self.client_stopped)
            .field("server_closed", &self.server_closed)
            .field("pending", &self.pending)
            .field("injected_errors", &self.injected_errors)
            .finish()
    }
}

/// The password `require` mode and the injected AUTH use; the seeds spell it in AUTH commands.
pub const PASSWORD: &str = "fuzz-secret";

fn creds(user: Option<&str>) -> Credentials {
    Credentials {
        username: user.map(str::to_owned),
        password: Secret::new(PASSWORD),
        file: None,
    }
}

/// The session's options, from the low bits of the input's first byte.
pub fn options(seed: u8) -> (ClientAuth, Option<Credentials>) {
    let policy = match (seed >> 3) % 3 {
        0 => ClientAuth::Passthrough,
        1 => ClientAuth::Absorb,
        _ => ClientAuth::Require(creds(None)),
    };
    let inject = ((seed >> 5) & 1 == 1).then(|| creds((seed >> 6 == 1).then_some("app")));
    (policy, inject)
}

/// Runs the requests, then the replies, each in chunks of the given lengths.
pub fn run(
    seed: u8,
    requests: &[u8],
    req_lens: &[usize],
    replies: &[u8],
    rep_lens: &[usize],
) -> Outcome {
    let (policy, inject) = options(seed);
    let passthrough = matches!(policy, ClientAuth::Passthrough) && inject.is_none();
    let mut s = MemSession::new(policy, inject);
    let (mut upstream, mut client) = (Vec::new(), Vec::new());
    let mut client_stopped = false;
    let mut biggest = 0;
    for chunk in split::chunks(requests, req_lens) {
        biggest = biggest.max(chunk.len());
        if s.client_sends(chunk, &mut upstream, &mut client) {
            client_stopped = true;
            break;
        }
        assert!(
            s.max_buffered <= HOLD_LIMIT + 1 + biggest,
            "held {} bytes of requests, past HOLD_LIMIT and a chunk",
            s.max_buffered
        );
    }
    if passthrough {
        assert!(
            requests.starts_with(&upstream),
            "a passthrough session sent upstream what the client did not send"
        );
    }
    let mut server_closed = false;
    for chunk in split::chunks(replies, rep_lens) {
        if s.server_sends(chunk, &mut client) {
            server_closed = true;
            break;
        }
    }
    Outcome {
        upstream,
        client,
        client_stopped,
        server_closed,
        pending: s.pending_replies(),
        injected_errors: std::mem::take(&mut s.injected_errors),
    }
}

/// The property for one fuzz input: byte 0 seeds the options and the cuts, byte 1 says where
/// the requests end and the replies begin.
pub fn check(data: &[u8]) {
    let (seed, rest) = split::header(data);
    let (at, rest) = split::header(rest);
    let mid = rest.len() * usize::from(at) / 255;
    let (requests, replies) = rest.split_at(mid);
    let req = split::splittings(seed, requests.len());
    let rep = split::splittings(seed.rotate_left(3), replies.len());
    let want = run(seed, requests, &req[0], replies, &rep[0]);
    for (i, r) in req.iter().enumerate() {
        for (j, p) in rep.iter().enumerate() {
            if i + j == 0 {
                continue;
            }
            let mut got = run(seed, requests, r, replies, p);
            if got.client_stopped && want.client_stopped {
                // An ordinary request streams upstream as soon as its name is in: how much of
                // one that turns out malformed went before the error depends on the split.
                let n = got.upstream.len().min(want.upstream.len());
                assert_eq!(got.upstream[..n], want.upstream[..n], "{r:?} / {p:?}");
                got.upstream.clone_from(&want.upstream);
            }
            assert_eq!(
                got, want,
                "requests split {r:?}, replies split {p:?} end differently"
            );
        }
    }
}
