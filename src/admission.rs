//! How many clients and upstream sessions a listener has open, against `max_clients` and
//! `max_sessions`. One [`Admission`] per listener name, kept across reloads: clients and
//! sessions opened under the previous configuration still count, so a reload never lets the
//! tunnel go past a limit, and a changed limit applies to the next one admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// A listener's open clients and upstream sessions, and the clients being refused.
#[derive(Default)]
pub struct Admission {
    pub clients: Counted,
    pub sessions: Counted,
    pub refusing: Counted,
}

/// Things open now; a [`Slot`] is one of them until it is dropped.
#[derive(Default)]
pub struct Counted {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    open: AtomicUsize,
    /// A slot was freed, or something a waiter can use instead came back (a pooled session).
    freed: Notify,
}

/// One open client or session, counted until dropped.
pub struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl Counted {
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// A slot if fewer than `max` are open, at once.
    pub fn try_take(&self, max: usize) -> Option<Slot> {
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.inner.clone()))
    }

    /// Wakes whoever waits in [`Counted::freed`]: something they may use instead of a new slot
    /// is available (a session came back to the pool).
    pub fn nudge(&self) {
        self.inner.freed.notify_waiters();
    }

    /// Resolves at the next freed slot or [`Counted::nudge`]. Enable it (`Notified::enable`)
    /// before looking for a slot, so that one freed in between is not missed.
    pub fn freed(&self) -> Notified<'_> {
        self.inner.freed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_until_dropped_and_stop_at_the_limit() {
        let c = Counted::default();
        let a = c.try_take(2).expect("first");
        let b = c.try_take(2).expect("second");
        assert!(c.try_take(2).is_none(), "a third past max = 2");
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        let _c = c.try_take(2).expect("room again");
        drop(b);
        assert_eq!(c.open(), 1);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_a_slot_freed_after_it_looked() {
        let c = Counted::default();
        let held = c.try_take(1).expect("first");
        let mut freed = std::pin::pin!(c.freed());
        freed.as_mut().enable();
        assert!(c.try_take(1).is_none());
        drop(held); // between the look and the wait
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), freed).await;
        assert!(woke.is_ok(), "the freed slot was missed");
        assert!(c.try_take(1).is_some());
    }
}
