//! The shared-session splitter, driven as a shared client drives it: whatever the split of the
//! client's input and whatever the budget, the same requests are shared (as the same bytes, in
//! order, whole frames only), the same ones are answered locally, and sharing stops at the same
//! point; a shared run never owes more replies than its budget allows; what is held of an
//! unfinished request stays within `HOLD_LIMIT` plus the chunk that just arrived; the replay
//! list stays within `MAX_REPLAY`.

use ectunnel::limits::{HOLD_LIMIT, MAX_REPLAY};
use ectunnel::proto::scan::{Dir, Scanner};
use ectunnel::proto::share::{Budget, Splitter, Stop};

use super::{engine, split};

/// One thing the splitter decided, in order; consecutive shared runs are merged, so that how a
/// budget or a split cut them does not show.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Shared { bytes: Vec<u8>, replies: u64 },
    Stop(Stop),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    /// Input bytes not yet dealt with when the splitter stopped or the input ended.
    pub left: usize,
    pub replay: Vec<Vec<u8>>,
    pub authed: bool,
}

fn shared(events: &mut Vec<Event>, run: &[u8], n: u64) {
    if run.is_empty() && n == 0 {
        return;
    }
    if let Some(Event::Shared { bytes, replies }) = events.last_mut() {
        bytes.extend_from_slice(run);
        *replies += n;
        return;
    }
    events.push(Event::Shared {
        bytes: run.to_vec(),
        replies: n,
    });
}

/// Splits `input` arriving in chunks of `lens`, each split under `budget`.
pub fn run(seed: u8, input: &[u8], lens: &[usize], budget: Budget) -> Outcome {
    let (policy, inject) = engine::options(seed);
    let mut s = Splitter::new(policy, inject);
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut biggest = 0;
    // Every byte handed out (shared, answered here, switched or waited on), in order.
    let (mut handed, mut taken) = (Vec::new(), 0);
    'input: for chunk in split::chunks(input, lens) {
        biggest = biggest.max(chunk.len());
        buf.extend_from_slice(chunk);
        loop {
            let got = s.split(&buf, budget);
            assert!(got.len <= buf.len(), "a split longer than its input");
            assert!(
                u64::from(got.replies) <= budget.replies.max(1),
                "{} replies owed under a budget of {}",
                got.replies,
                budget.replies
            );
            let run: Vec<u8> = buf.drain(..got.len).collect();
            whole_frames(&run);
            handed.extend_from_slice(&run);
            taken += run.len();
            shared(&mut events, &run, u64::from(got.replies));
            assert!(
                s.replay().len() <= MAX_REPLAY,
                "replay list past MAX_REPLAY"
            );
            match got.stop {
                None if got.len > 0 => continue,
                None => break,
                Some(stop) => {
                    let (len, end) = match &stop {
                        Stop::Local { len, quit, .. } => (*len, *quit),
                        Stop::Switch { len, .. } => (*len, false),
                        Stop::Wait { len } => (*len, true),
                        Stop::Own | Stop::Malformed(_) => (0, true),
                    };
                    assert!(len <= buf.len(), "a stop longer than its input");
                    whole_frames(&buf[..len]);
                    handed.extend(buf.drain(..len));
                    taken += len;
                    events.push(Event::Stop(stop));
                    if end {
                        break 'input;
                    }
                }
            }
        }
        assert!(
            buf.len() <= HOLD_LIMIT + 1 + biggest,
            "held {} bytes of an unfinished request",
            buf.len()
        );
    }
    assert_eq!(
        handed,
        input[..taken],
        "handed out bytes other than the input's"
    );
    Outcome {
        events,
        left: input.len() - taken,
        replay: s.replay().iter().map(|b| b.to_vec()).collect(),
        authed: s.authed(),
    }
}

/// What was handed out is a sequence of complete request frames.
fn whole_frames(run: &[u8]) {
    let mut s = Scanner::new(Dir::Request);
    let mut at = 0;
    while at < run.len() {
        match s.feed(&run[at..]) {
            Ok((n, _)) => at += n,
            Err(e) => panic!("handed out a malformed frame: {e}"),
        }
    }
    assert!(s.at_boundary(), "handed out part of a frame");
}

/// Budgets from the seed: none, or a few replies and bytes, as a busy session allows.
fn budgets(seed: u8) -> [Budget; 2] {
    [
        Budget::UNLIMITED,
        Budget {
            replies: u64::from(seed % 4),
            bytes: usize::from(seed % 7) * 16,
        },
    ]
}

/// The property for one fuzz input: byte 0 seeds the options, cuts and budget.
pub fn check(data: &[u8]) {
    let (seed, input) = split::header(data);
    let mut want: Option<Outcome> = None;
    for lens in split::splittings(seed, input.len()) {
        for budget in budgets(seed) {
            let got = run(seed, input, &lens, budget);
            match &want {
                None => want = Some(got),
                Some(w) => assert_eq!(
                    &got, w,
                    "split {lens:?} under {budget:?} decides differently"
                ),
            }
        }
    }
}
