//! Ways of cutting one input into the chunks a socket might deliver. The first input byte seeds
//! the cuts, so the fuzzer steers them; every property compares these splittings with each
//! other, so none is privileged.

/// The input's first byte (the seed of the cuts and of any options) and the payload after it.
pub fn header(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, &[]),
    }
}

/// Chunk lengths for `len` bytes: whole, byte by byte (short inputs), and cut at up to seven
/// points drawn from `seed`.
pub fn splittings(seed: u8, len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![len]];
    if len <= 4096 {
        out.push(vec![1; len]);
    }
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut cuts: Vec<usize> = (0..(seed % 8))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize % (len + 1)
        })
        .collect();
    cuts.push(len);
    cuts.sort_unstable();
    let mut prev = 0;
    out.push(
        cuts.into_iter()
            .map(|c| {
                let n = c - prev;
                prev = c;
                n
            })
            .collect(),
    );
    out
}

/// `data` cut into chunks of the given lengths (empty chunks included: a read of nothing).
pub fn chunks<'a>(data: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let c = &data[at..at + n];
            at += n;
            c
        })
        .collect()
}
