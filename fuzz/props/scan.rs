//! The streaming scanner: the frames found (their end offsets and the error that stopped the
//! scan, if any) do not depend on how the input was split, the scanner always makes progress,
//! and every argument position it reports lies inside its frame.

use ectunnel::proto::scan::{Dir, ScanError, Scanner};

use super::split;

#[derive(Debug, PartialEq, Eq)]
pub struct Scanned {
    /// End offset of every complete frame.
    pub ends: Vec<usize>,
    /// The error that stopped scanning, and the end of the last frame before it.
    pub error: Option<ScanError>,
}

/// Scans `data` fed in chunks of `lens`.
pub fn scan(dir: Dir, data: &[u8], lens: &[usize]) -> Scanned {
    let mut s = Scanner::new(dir);
    let mut ends = Vec::new();
    let mut at = 0;
    for chunk in split::chunks(data, lens) {
        let mut off = 0;
        while off < chunk.len() {
            match s.feed(&chunk[off..]) {
                Ok((n, done)) => {
                    assert!(n > 0, "no progress at {}", at + off);
                    assert!(off + n <= chunk.len(), "consumed past the chunk");
                    off += n;
                    if done {
                        let end = at + off;
                        check_args(dir, &s, data, ends.last().copied().unwrap_or(0), end);
                        ends.push(end);
                        assert!(s.at_boundary(), "a frame ended off a boundary");
                    } else {
                        assert_eq!(off, chunk.len(), "stopped early without a frame end");
                    }
                }
                Err(e) => {
                    return Scanned {
                        ends,
                        error: Some(e),
                    };
                }
            }
        }
        at += chunk.len();
    }
    Scanned { ends, error: None }
}

/// The argument positions a request frame reports point inside it, at payloads of the declared
/// length, in order.
fn check_args(dir: Dir, s: &Scanner, data: &[u8], start: usize, end: usize) {
    if dir != Dir::Request {
        return;
    }
    let info = s.info();
    let frame = &data[start..end];
    let mut last = 0;
    for &(off, len) in &info.args[..info.args_known] {
        let (off, len) = (off as usize, len as usize);
        assert!(
            off > last && off + len + 2 <= frame.len(),
            "argument outside its frame"
        );
        // The payload follows its `$len` line (its trailing CRLF is skipped, not checked).
        assert_eq!(frame[off - 1], b'\n', "argument not after its header");
        last = off + len;
    }
    if info.kind == b'*' && info.argc > 0 {
        assert_eq!(
            info.args_known,
            (info.argc as usize).min(ectunnel::proto::scan::ARG_SLOTS),
            "argument slots not filled"
        );
    }
}

/// The property for one fuzz input: byte 0 seeds the cuts, the rest is the stream.
pub fn check(dir: Dir, data: &[u8]) {
    let (seed, stream) = split::header(data);
    let mut first: Option<Scanned> = None;
    for lens in split::splittings(seed, stream.len()) {
        let got = scan(dir, stream, &lens);
        match &first {
            None => first = Some(got),
            Some(want) => assert_eq!(&got, want, "the split {lens:?} scans differently"),
        }
    }
}
