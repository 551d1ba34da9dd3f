//! Every client's record of what it wrote and what the server acknowledged, and the checks of
//! each reply against it. Values carry their client, sequence number and key, so a reply meant
//! for someone else, or for another request, is recognised; an acknowledged value the server no
//! longer has is a lost write.

use crate::resp::{self, Reply};
use crate::stats::{Stats, reply_kind};
use std::collections::VecDeque;

/// A key the client alone writes with SET.
pub struct Key {
    pub db: u8,
    pub name: String,
    len: usize,
    /// The sequence number of the last value the server acknowledged.
    acked: Option<u64>,
    /// Values sent after it whose outcome is unknown (no reply yet, an error, a lost connection).
    pending: VecDeque<u64>,
    last_sent: u64,
}

/// A counter the client alone increments.
pub struct Counter {
    pub db: u8,
    pub name: String,
    acked: i64,
    /// Increments that failed without saying whether they were applied.
    unknown: i64,
    /// Increments sent whose reply has not come yet.
    outstanding: i64,
}

/// What a request expects of its reply.
pub enum Op {
    Set { k: usize, seq: u64 },
    Get { k: usize, upto: u64 },
    Incr { c: usize },
    Status(&'static str),
    Exec(Vec<Op>),
}

pub struct Ledger {
    pub cid: String,
    seq: u64,
    pub keys: Vec<Key>,
    pub counters: Vec<Counter>,
}

pub type Request = (Vec<u8>, Op);

/// The value with sequence number `seq` of key `k` of client `cid`, `len` bytes long.
pub fn value(cid: &str, seq: u64, k: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{cid}:{seq}:{k}:").into_bytes();
    let fill = b'a' + (seq % 26) as u8;
    v.resize(len.max(v.len()), fill);
    v
}

/// Client, sequence number and key of a value written by [`value`].
fn tag(v: &[u8]) -> Option<(&str, u64, usize)> {
    let s = std::str::from_utf8(&v[..v.len().min(64)]).ok()?;
    let mut parts = s.splitn(4, ':');
    let cid = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    Some((cid, seq, k))
}

impl Ledger {
    pub fn new(cid: String) -> Self {
        Ledger {
            cid,
            seq: 0,
            keys: Vec::new(),
            counters: Vec::new(),
        }
    }

    /// Adds a key in `db` holding values of `len` bytes; returns its index.
    pub fn key(&mut self, db: u8, what: &str, len: usize) -> usize {
        let name = format!("soak:{}:{what}", self.cid);
        self.keys.push(Key {
            db,
            name,
            len,
            acked: None,
            pending: VecDeque::new(),
            last_sent: 0,
        });
        self.keys.len() - 1
    }

    pub fn counter(&mut self, db: u8, what: &str) -> usize {
        let name = format!("soak:{}:{what}", self.cid);
        self.counters.push(Counter {
            db,
            name,
            acked: 0,
            unknown: 0,
            outstanding: 0,
        });
        self.counters.len() - 1
    }

    pub fn set(&mut self, k: usize) -> Request {
        self.seq += 1;
        let seq = self.seq;
        let key = &mut self.keys[k];
        key.pending.push_back(seq);
        key.last_sent = seq;
        let v = value(&self.cid, seq, k, key.len);
        let mut out = Vec::with_capacity(v.len() + 64);
        resp::encode(&mut out, &[b"SET", key.name.as_bytes(), &v]);
        (out, Op::Set { k, seq })
    }

    pub fn get(&self, k: usize) -> Request {
        let key = &self.keys[k];
        let upto = key.last_sent;
        (resp::command(&["GET", &key.name]), Op::Get { k, upto })
    }

    pub fn incr(&mut self, c: usize) -> Request {
        let counter = &mut self.counters[c];
        counter.outstanding += 1;
        (resp::command(&["INCR", &counter.name]), Op::Incr { c })
    }

    /// The request got no reply (its connection failed): its outcome is unknown.
    pub fn abandon(&mut self, op: Op) {
        match op {
            Op::Incr { c } => {
                let counter = &mut self.counters[c];
                counter.outstanding -= 1;
                counter.unknown += 1;
            }
            Op::Exec(ops) => ops.into_iter().for_each(|op| self.abandon(op)),
            Op::Set { .. } | Op::Get { .. } | Op::Status(_) => {}
        }
    }

    /// Checks `reply` against what `op` expects, counting it in `stats`; returns whether it
    /// was an error reply.
    pub fn check(&mut self, op: Op, reply: Reply, stats: &Stats) -> bool {
        let error = matches!(reply, Reply::Error(_));
        if self.judge(op, reply, stats) {
            stats.served();
        }
        error
    }

    /// Whether `reply` is a good answer to `op`: an error reply is counted by kind (and leaves
    /// the outcome of `op` unknown), a wrong one as a wrong reply.
    fn judge(&mut self, op: Op, reply: Reply, stats: &Stats) -> bool {
        if let Reply::Error(e) = &reply {
            stats.error(reply_kind(e));
            self.abandon(op);
            return false;
        }
        let ok = match op {
            Op::Set { k, seq } => self.check_set(k, seq, &reply),
            Op::Get { k, upto } => self.check_get(k, upto, &reply, stats),
            Op::Incr { c } => self.check_incr(c, &reply, stats),
            Op::Status(want) => matches!(&reply, Reply::Status(s) if s == want),
            Op::Exec(ops) => return self.check_exec(ops, reply, stats),
        };
        if !ok {
            stats.wrong(format!("{}: {}", self.cid, reply.brief()));
        }
        ok
    }

    fn check_set(&mut self, k: usize, seq: u64, reply: &Reply) -> bool {
        if !matches!(reply, Reply::Status(s) if s == "OK") {
            return false;
        }
        let key = &mut self.keys[k];
        key.acked = Some(seq);
        key.pending.retain(|&s| s > seq);
        true
    }

    fn check_get(&mut self, k: usize, upto: u64, reply: &Reply, stats: &Stats) -> bool {
        let Reply::Bulk(v) = reply else { return false };
        match self.judge_value(k, v.as_deref(), upto) {
            Verdict::Ok => true,
            Verdict::Lost(what) => {
                stats.lost(format!("{} GET: {what}", self.keys[k].name));
                true
            }
            Verdict::Wrong => false,
        }
    }

    /// Whether `v` is what key `k` may hold, given the values sent up to sequence `upto`.
    fn judge_value(&mut self, k: usize, v: Option<&[u8]>, upto: u64) -> Verdict {
        let key = &mut self.keys[k];
        let Some(v) = v else {
            return match key.acked {
                Some(a) => Verdict::Lost(format!("nil, though {a} was acknowledged")),
                None => Verdict::Ok,
            };
        };
        let Some((cid, seq, vk)) = tag(v) else {
            return Verdict::Wrong;
        };
        if cid != self.cid || vk != k || v != value(cid, seq, vk, key.len) {
            return Verdict::Wrong;
        }
        if key.acked == Some(seq) {
            return Verdict::Ok;
        }
        if seq <= upto && key.pending.contains(&seq) {
            key.acked = Some(seq);
            key.pending.retain(|&s| s > seq);
            return Verdict::Ok;
        }
        match key.acked {
            Some(a) if seq < a => {
                Verdict::Lost(format!("value {seq}, though {a} was acknowledged"))
            }
            _ => Verdict::Wrong,
        }
    }

    fn check_incr(&mut self, c: usize, reply: &Reply, stats: &Stats) -> bool {
        let counter = &mut self.counters[c];
        counter.outstanding -= 1;
        let Reply::Int(v) = *reply else {
            counter.unknown += 1;
            return false;
        };
        let (lo, hi) = (counter.acked + 1, counter.acked + counter.unknown + 1);
        if v > hi {
            counter.unknown += 1;
            return false;
        }
        if v < lo {
            let what = format!(
                "{} INCR gave {v} after {} was acknowledged",
                counter.name, counter.acked
            );
            stats.lost(what);
        }
        counter.acked = v;
        counter.unknown = 0;
        true
    }

    fn check_exec(&mut self, ops: Vec<Op>, reply: Reply, stats: &Stats) -> bool {
        match reply {
            Reply::Array(Some(items)) if items.len() == ops.len() => {
                let mut all = true;
                for (op, item) in ops.into_iter().zip(items) {
                    all &= self.judge(op, item, stats);
                }
                all
            }
            Reply::Array(None) => {
                stats.error("EXEC aborted (a WATCHed key changed)".into());
                self.abandon(Op::Exec(ops));
                false
            }
            other => {
                stats.wrong(format!("{} EXEC: {}", self.cid, other.brief()));
                self.abandon(Op::Exec(ops));
                false
            }
        }
    }

    /// Checks what the server holds at the end: `values[i]` for `self.keys[i]`, `counts[i]`
    /// for `self.counters[i]`.
    pub fn final_check(
        &mut self,
        values: &[Option<Vec<u8>>],
        counts: &[Option<i64>],
        stats: &Stats,
    ) {
        for (k, v) in values.iter().enumerate() {
            match self.judge_value(k, v.as_deref(), u64::MAX) {
                Verdict::Ok => {}
                Verdict::Lost(what) => {
                    stats.lost(format!("{} at the end: {what}", self.keys[k].name))
                }
                Verdict::Wrong => stats.wrong(format!(
                    "{} at the end holds {:?}",
                    self.keys[k].name,
                    v.as_ref()
                        .map(|v| String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned())
                )),
            }
        }
        for (c, got) in counts.iter().enumerate() {
            let counter = &self.counters[c];
            let got = got.unwrap_or(0);
            if got < counter.acked {
                stats.lost(format!(
                    "{} at the end is {got}, though {} was acknowledged",
                    counter.name, counter.acked
                ));
            } else if got > counter.acked + counter.unknown + counter.outstanding {
                stats.wrong(format!(
                    "{} at the end is {got}, more than was sent",
                    counter.name
                ));
            }
        }
    }
}

enum Verdict {
    Ok,
    Lost(String),
    Wrong,
}

/// The checks must be able to fail: each kind of bad reply is caught.
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn bulk(v: Vec<u8>) -> Reply {
        Reply::Bulk(Some(v))
    }

    fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    /// A ledger with one key, its first value acknowledged.
    fn one_key() -> (Ledger, usize, Stats) {
        let (mut l, stats) = (Ledger::new("a".into()), Stats::default());
        let k = l.key(0, "k", 16);
        let (_, op) = l.set(k);
        l.check(op, ok(), &stats);
        (l, k, stats)
    }

    #[test]
    fn the_own_latest_value_is_right() {
        let (mut l, k, stats) = one_key();
        let (_, op) = l.get(k);
        l.check(op, bulk(value("a", 1, k, 16)), &stats);
        assert_eq!(
            (stats.wrong.load(Relaxed), stats.lost.load(Relaxed)),
            (0, 0)
        );
        assert_eq!(stats.served.load(Relaxed), 2);
    }

    #[test]
    fn another_clients_value_is_a_wrong_reply() {
        let (mut l, k, stats) = one_key();
        let (_, op) = l.get(k);
        l.check(op, bulk(value("b", 1, k, 16)), &stats);
        assert_eq!(stats.wrong.load(Relaxed), 1);
        let (_, op) = l.set(k);
        l.check(op, Reply::Int(3), &stats);
        assert_eq!(stats.wrong.load(Relaxed), 2);
    }

    #[test]
    fn an_older_value_after_an_acknowledged_one_is_a_lost_write() {
        let (mut l, k, stats) = one_key();
        let (_, op) = l.set(k);
        l.check(op, ok(), &stats);
        let (_, op) = l.get(k);
        l.check(op, bulk(value("a", 1, k, 16)), &stats);
        assert_eq!(stats.lost.load(Relaxed), 1);
        l.final_check(&[None], &[], &stats);
        assert_eq!(stats.lost.load(Relaxed), 2);
    }

    #[test]
    fn a_write_that_failed_may_or_may_not_be_there() {
        let (mut l, k, stats) = one_key();
        let (_, op) = l.set(k);
        l.check(
            op,
            Reply::Error("ERR ectunnel: the server closed the connection".into()),
            &stats,
        );
        let (_, op) = l.get(k);
        l.check(op, bulk(value("a", 2, k, 16)), &stats);
        l.final_check(&[Some(value("a", 2, k, 16))], &[], &stats);
        assert_eq!(
            (stats.wrong.load(Relaxed), stats.lost.load(Relaxed)),
            (0, 0)
        );
        assert_eq!(stats.errors().len(), 1);
    }

    #[test]
    fn a_counter_must_only_grow_by_what_was_sent() {
        let (mut l, stats) = (Ledger::new("a".into()), Stats::default());
        let c = l.counter(0, "n");
        for (reply, wrong, lost) in [(1, 0, 0), (2, 0, 0), (2, 0, 1), (9, 1, 1)] {
            let (_, op) = l.incr(c);
            l.check(op, Reply::Int(reply), &stats);
            assert_eq!(
                (stats.wrong.load(Relaxed), stats.lost.load(Relaxed)),
                (wrong, lost)
            );
        }
        l.final_check(&[], &[Some(1)], &stats);
        assert_eq!(stats.lost.load(Relaxed), 2);
    }
}
