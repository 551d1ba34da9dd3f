//! The session engine driven over in-memory buffers, exactly as `session` drives it over
//! sockets: for property tests and the criterion benches of the forwarding path.

use bytes::{Buf, BytesMut};

use super::engine::{Entry, Fifo, Op, Replies, Requests};
use crate::config::{ClientAuth, Credentials};

/// Both halves of one session and the buffers between them.
#[derive(Debug)]
pub struct MemSession {
    requests: Requests,
    replies: Replies,
    fifo: Fifo,
    req_buf: BytesMut,
    ops: Vec<Op>,
    entries: Vec<Entry>,
    /// The most client bytes ever held in the request buffer.
    pub max_buffered: usize,
    /// Errors the server returned for injected commands.
    pub injected_errors: Vec<String>,
    /// [`Replies::lost`] as the request side last saw it.
    lost: u64,
}

impl MemSession {
    pub fn new(policy: ClientAuth, inject: Option<Credentials>) -> Self {
        MemSession {
            requests: Requests::new(policy, inject),
            replies: Replies::new(),
            fifo: Fifo::default(),
            req_buf: BytesMut::with_capacity(16 * 1024),
            ops: Vec::new(),
            entries: Vec::new(),
            max_buffered: 0,
            injected_errors: Vec::new(),
            lost: 0,
        }
    }

    /// Rewrites node addresses in replies, as a session in cluster mode does.
    pub fn set_rewrite(&mut self, rewrite: Option<super::rewrite::Rewrite>) {
        self.replies.set_rewrite(rewrite);
    }

    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    /// Replies the server still owes.
    pub fn pending_replies(&self) -> u64 {
        self.fifo.pending_replies()
    }

    /// The client sent `chunk`; what the tunnel writes upstream is appended to `upstream`, and
    /// any reply the tunnel makes itself to `client`. Returns true once the client is cut off.
    pub fn client_sends(
        &mut self,
        chunk: &[u8],
        upstream: &mut Vec<u8>,
        client: &mut Vec<u8>,
    ) -> bool {
        self.req_buf.extend_from_slice(chunk);
        self.max_buffered = self.max_buffered.max(self.req_buf.len());
        if self.replies.lost() != self.lost {
            self.lost = self.replies.lost();
            self.requests.set_unsynced();
        }
        let progress = self
            .requests
            .process(&self.req_buf, &mut self.ops, &mut self.entries);
        self.fifo.extend(self.entries.drain(..));
        write(&mut self.ops, &self.req_buf, upstream);
        self.req_buf.advance(progress.consumed);
        if self.replies.at_boundary() && self.replies.emit_ready(&mut self.fifo, &mut self.ops) {
            write(&mut self.ops, &[], client);
            return true;
        }
        write(&mut self.ops, &[], client);
        progress.stop
    }

    /// The server sent `chunk`; what reaches the client is appended to `client`. Returns true
    /// when the tunnel ends the session.
    pub fn server_sends(&mut self, chunk: &[u8], client: &mut Vec<u8>) -> bool {
        let progress = self.replies.process(chunk, &mut self.fifo, &mut self.ops);
        self.injected_errors.extend(progress.injected_errors);
        write(&mut self.ops, chunk, client);
        progress.close
    }
}

fn write(ops: &mut Vec<Op>, buf: &[u8], out: &mut Vec<u8>) {
    for op in ops.drain(..) {
        match op {
            Op::Fwd(r) => out.extend_from_slice(&buf[r]),
            Op::Bytes(b) => out.extend_from_slice(&b),
        }
    }
}
