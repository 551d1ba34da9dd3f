//! What the run counts: requests, errors by kind (inside or outside a fault), faults, wrong
//! replies and lost writes, with a few examples of each failure for the report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long after a fault completes its errors still count as the fault's: the tunnel checks
/// where the primary is every second, and clients back off before reconnecting.
pub const FAULT_TAIL: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub served: AtomicU64,
    pub wrong: AtomicU64,
    pub lost: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub missed: AtomicU64,
    /// Error kind → [during a fault, outside any fault].
    errors: Mutex<BTreeMap<String, [u64; 2]>>,
    /// Fault kind → [completed, failed to complete].
    faults: Mutex<BTreeMap<String, [u64; 2]>>,
    /// Until when errors count as caused by a fault (None: no fault under way).
    fault_until: Mutex<Option<Instant>>,
    examples: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stats {
    pub fn served(&self) {
        self.served.fetch_add(1, Relaxed);
    }

    pub fn error(&self, kind: String) {
        let during = lock(&self.fault_until).is_some_and(|t| Instant::now() < t);
        lock(&self.errors).entry(kind).or_default()[usize::from(!during)] += 1;
    }

    /// A reply that belongs to another client or another request.
    pub fn wrong(&self, what: String) {
        self.wrong.fetch_add(1, Relaxed);
        self.example(format!("wrong reply: {what}"));
    }

    /// An acknowledged write that is not there any more.
    pub fn lost(&self, what: String) {
        self.lost.fetch_add(1, Relaxed);
        self.example(format!("lost write: {what}"));
    }

    pub fn missed(&self, what: String) {
        self.missed.fetch_add(1, Relaxed);
        self.example(format!("pub/sub: {what}"));
    }

    pub fn example(&self, what: String) {
        eprintln!("soak: {what}");
        let mut e = lock(&self.examples);
        if e.len() < 20 {
            e.push(what);
        }
    }

    pub fn fault_started(&self) {
        *lock(&self.fault_until) = Some(Instant::now() + Duration::from_secs(3600));
    }

    pub fn fault_ended(&self, kind: &str, ok: bool) {
        *lock(&self.fault_until) = Some(Instant::now() + FAULT_TAIL);
        lock(&self.faults).entry(kind.to_string()).or_default()[usize::from(!ok)] += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, [u64; 2]> {
        lock(&self.errors).clone()
    }

    pub fn faults(&self) -> BTreeMap<String, [u64; 2]> {
        lock(&self.faults).clone()
    }

    pub fn examples(&self) -> Vec<String> {
        lock(&self.examples).clone()
    }
}

/// The kind of an error reply: the tunnel's by stage or phrase, the server's by its code.
pub fn reply_kind(e: &str) -> String {
    if let Some(why) = e.strip_prefix("ERR ectunnel: ") {
        let first = why.split_whitespace().next().unwrap_or("");
        let stage = match first {
            "dns" | "connect" | "tls" | "auth" | "role" | "hello" => first.to_string(),
            _ => why
                .split_whitespace()
                .take_while(|w| !w.chars().any(|c| c.is_ascii_digit() || c == ':'))
                .take(6)
                .collect::<Vec<_>>()
                .join(" "),
        };
        return format!("-ERR ectunnel: {stage}");
    }
    let mut words = e.split_whitespace();
    match words.next() {
        Some("ERR") => format!("-ERR {}", words.take(3).collect::<Vec<_>>().join(" ")),
        Some(code) => format!("-{code}"),
        None => "-(empty error)".into(),
    }
}

/// The kind of a failed connection.
pub fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof => "connection closed by the tunnel".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "no reply within 45 s (driver timeout)".into(),
        InvalidData => format!("unreadable reply: {e}"),
        k => format!("connection: {k:?}"),
    }
}
