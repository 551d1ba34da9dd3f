//! Every limit the tunnel applies on its own, with the reason for its value. Limits a user sets
//! (`[pool]`, timeouts, `tcp_keepalive`) are in [`crate::config`]; these are the fixed ones.

use std::time::Duration;

// ---- Reading and holding input -------------------------------------------------------------

/// Read buffer per socket: one whole TLS record (16 KiB), so one read drains one record.
pub const READ_BUF: usize = 16 * 1024;

/// A request frame is held (in the read buffer, not copied) until it is complete, so it can be
/// inspected before any of it is forwarded; a longer one is decided on its name and streamed, so
/// the buffer stays bounded whatever length the client declares.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// Longest inline request Redis accepts (`PROTO_INLINE_MAX_SIZE`); past it Redis answers
/// `Protocol error: too big inline request` and closes the connection.
pub const MAX_INLINE: usize = 64 * 1024;

/// What Redis accepts from a connection that has not authenticated: more arguments, or a longer
/// one, and it closes the connection. Shared sessions without injected credentials may be such
/// connections, so requests past these never go over them.
pub const UNAUTHENTICATED_ARGS: i64 = 10;
pub const UNAUTHENTICATED_BULK: u64 = 16 * 1024;

/// Longest reply to one of the tunnel's own commands (AUTH, HELLO, ROLE, PING, RESET).
pub const MAX_OWN_REPLY: usize = 64 * 1024;

/// Longest cluster topology reply (`CLUSTER SHARDS|SLOTS|NODES|REPLICAS`) held whole to rewrite
/// its addresses, the tunnel's own or a client's: a 1,000-node cluster's `CLUSTER NODES` with
/// fragmented slot ranges stays well below it. A longer one reaches the client as an error
/// rather than with addresses it cannot use.
pub const MAX_TOPOLOGY_REPLY: usize = 8 * 1024 * 1024;

/// Longest `-MOVED` / `-ASK` line: `-MOVED 16383 ` and a 253-byte hostname with its port fit
/// well within it. A shared session holds an error line back until it is whole or this long.
pub const MAX_REDIRECT: usize = 512;

/// Deepest aggregate nesting accepted in a reply (Redis nests a handful of levels).
pub const MAX_REPLY_DEPTH: usize = 512;

/// The start of a reply kept while it is scanned: enough to read an error's first line (the
/// refusal of an injected command, to log; `-READONLY` / `-UNBLOCKED … master -> replica`, to
/// see a demotion) or a push's kind, and never more, whatever the reply's length.
pub const REPLY_HEAD: usize = 256;

// ---- Cluster mode -----------------------------------------------------------------------------

/// How often the topology is read when nothing prompts it (a `-MOVED`, an unknown node does):
/// it only adds node listeners ahead of need and retires those of removed nodes, since
/// rewriting itself never depends on it.
pub const TOPOLOGY_REFRESH: Duration = Duration::from_secs(30);

/// The least time between two topology reads, so a storm of `-MOVED` during a resharding costs
/// one read a second at most.
pub const TOPOLOGY_MIN_GAP: Duration = Duration::from_secs(1);

/// The least time a topology read is given (`connect_timeout` when longer): a big cluster's
/// reply is read whole.
pub const TOPOLOGY_READ_MIN: Duration = Duration::from_secs(5);

/// Topology reads in a row that must leave a node out before its listener is closed (a node
/// just added may answer a `-MOVED` before every node lists it).
pub const NODE_ABSENT_READS: u32 = 3;

// ---- A client on a session of its own --------------------------------------------------------

/// Entries in the reply FIFO beyond which the client is not read until replies drain. Runs of
/// ordinary requests merge into one entry, so only commands the tunnel answers or tracks itself
/// (an absorbed AUTH, RESET, HELLO…) count: this bounds the tunnel's memory, not the pipeline.
pub const MAX_FIFO_ENTRIES: usize = 4096;

/// Commands a client sent on shared sessions that are kept to replay on a session of its own
/// (`HELLO 3`, `CLIENT SETNAME|SETINFO`); one that renames its connection without end goes to a
/// session of its own instead.
pub const MAX_REPLAY: usize = 64;

/// How long a connection the tunnel closes is kept half-open to drain its input, so that the
/// last reply is not destroyed by a reset when the client writes after it.
pub const LINGER: Duration = Duration::from_secs(5);

/// Clients refused past `max_clients` that are told so gracefully (the reply written, then
/// [`LINGER`]) at once, per listener; past it a refusal is one write attempt and a close, so a
/// flood at the limit holds no more descriptors than this beyond `max_clients`.
pub const MAX_REFUSING: usize = 64;

// ---- A client on shared sessions ---------------------------------------------------------------

/// Requests one client may have sent on a shared session and not had answered. A count as well as
/// bytes: a reply's size is unknown until it arrives, and this bounds how many can land in the
/// client's queue at once. Past either, its further requests wait in the tunnel.
pub const SHARED_IN_FLIGHT_REPLIES: u64 = 1024;
pub const SHARED_IN_FLIGHT_BYTES: usize = 1024 * 1024;

/// Reply bytes queued for a client and not yet written to it beyond which its further requests
/// wait in the tunnel: a client that writes a whole pipeline before reading is then held in
/// requests (small) rather than replies (often large), and is never stopped from writing.
pub const SHARED_QUEUE_SOFT: usize = 1024 * 1024;

/// Request bytes a shared client may have sent the tunnel that wait to go upstream. Redis's own
/// `client-query-buffer-limit` (1 GiB): past it Redis closes the client, and so does the tunnel.
pub const SHARED_HELD_REQUESTS: usize = 1024 * 1024 * 1024;

/// Reply bytes queued for one client beyond which its shared session stops reading until the
/// client takes some: the replies of the other clients on that session are behind them in the
/// same stream, so memory is bounded by waiting rather than by buffering without end.
pub const SHARED_QUEUE_HARD: usize = 32 * 1024 * 1024;

/// A client its shared session waits on that takes nothing of its replies for this long is
/// disconnected (as Redis disconnects clients past `client-output-buffer-limit`), so one client
/// that stopped reading cannot hold the others back for longer.
pub const SHARED_STALL: Duration = Duration::from_secs(1);

/// Requests written to the server in one go, at most; more wait for the next write.
pub const BATCH_BYTES: usize = 64 * 1024;

/// How long a shared session on a node the listener has left may still answer what it owes;
/// after that (a node that vanished without a reset never answers) its clients get an error.
pub const NODE_GRACE: Duration = Duration::from_secs(5);

// ---- Following the upstream -----------------------------------------------------------------

/// How often every listener re-resolves its upstream names and, with a `role`, re-checks it.
pub const NODE_CHECK: Duration = Duration::from_secs(1);

/// Nodes remembered as moved away (to retire sessions made to them before): more than a few
/// only happen over months.
pub const REMEMBERED_MOVES: usize = 64;

/// Dial retry backoff while the upstream fails: doubling, with ±50 % jitter so that many tunnels
/// (or listeners) do not retry in step.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Accept errors (out of file descriptors) back off the same way, never a busy loop.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// TCP keepalive probes after the idle time (`tcp_keepalive`): every third of it, at least a
/// second, three times; a peer that vanished is then given up after twice the idle time.
pub const KEEPALIVE_PROBES: u32 = 3;

// ---- Configuration bounds -----------------------------------------------------------------------

/// Runtime threads; more buys nothing on any machine this runs on.
pub const MAX_THREADS: usize = 256;

/// More shared sessions than this buys nothing: Redis runs commands on one thread.
pub const MAX_MULTIPLEX: usize = 16;

/// How often `password_file`s are checked for a rotated secret.
pub const SECRET_POLL: Duration = Duration::from_secs(2);

// ---- Clients ------------------------------------------------------------------------------------

/// With `client_auth = "require"`, a client that has not given the password within this long is
/// told so and closed: an open port cannot be held by connections that never authenticate.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);

// ---- IAM tokens ---------------------------------------------------------------------------------

/// How long ElastiCache and MemoryDB accept an IAM token after signing (`X-Amz-Expires`): the
/// services refuse a token signed for longer, and 15 minutes is what they document.
pub const IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Longest wait for the AWS credentials chain: it may ask STS, a container endpoint or IMDS over
/// the network, and a dial waiting on a token must fail with a reason rather than hang.
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);

/// An IAM session due to authenticate again while no valid token is at hand, or whose re-AUTH
/// the server refused (a token that expired behind a blocking command), tries again after this;
/// after each further refusal twice as long, up to [`REAUTH_RETRY_MAX`] (a token the server
/// keeps refusing must not become an AUTH every 2 s per session). The server's cut is an hour
/// away by default.
pub const REAUTH_RETRY: Duration = Duration::from_secs(2);
pub const REAUTH_RETRY_MAX: Duration = Duration::from_secs(300);
