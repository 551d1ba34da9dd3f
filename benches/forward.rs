//! The forwarding path in memory: the RESP scanner alone, the whole session engine (client
//! bytes in, upstream bytes out, replies back) against a plain copy of the same bytes, and the
//! split of a client's input into what may share an upstream session.
//!
//! `cargo bench --bench forward` (add `-- scan/`, `-- session/` or `-- share/` to pick a group).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ectunnel::config::{ClientAuth, Credentials, Secret};
use ectunnel::proto::memory::MemSession;
use ectunnel::proto::scan::{Dir, Scanner};
use ectunnel::proto::share::{Budget, Splitter};

/// What a socket read hands the engine at a time.
const CHUNK: usize = 16 * 1024;

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `n` pipelined `SET key:i <value>` commands.
fn sets(n: usize, value_len: usize) -> Vec<u8> {
    let value = vec![b'v'; value_len];
    (0..n)
        .flat_map(|i| command(&[b"SET", format!("key:{i:06}").as_bytes(), &value]))
        .collect()
}

fn gets(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| command(&[b"GET", format!("key:{i:06}").as_bytes()]))
        .collect()
}

fn inline(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("GET key:{i:06}\r\n").into_bytes())
        .collect()
}

/// RESP3 replies of the kinds a busy client sees, pushes included.
fn resp3_replies(n: usize) -> Vec<u8> {
    let kinds: [&[u8]; 6] = [
        b"+OK\r\n",
        b"$64\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n",
        b":12345\r\n",
        b"%2\r\n$4\r\nname\r\n$5\r\nalice\r\n$3\r\nage\r\n:42\r\n",
        b"*3\r\n$1\r\na\r\n_\r\n,3.25\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\nkey:01\r\n",
    ];
    (0..n)
        .flat_map(|i| kinds[i % kinds.len()].to_vec())
        .collect()
}

fn bulk_replies(n: usize, len: usize) -> Vec<u8> {
    let mut one = format!("${len}\r\n").into_bytes();
    one.extend(std::iter::repeat_n(b'v', len));
    one.extend_from_slice(b"\r\n");
    one.repeat(n)
}

/// Scans `data` in socket-sized chunks; returns the frame count so nothing is optimised away.
fn scan(dir: Dir, data: &[u8]) -> usize {
    let mut s = Scanner::new(dir);
    let mut frames = 0;
    for chunk in data.chunks(CHUNK) {
        let mut at = 0;
        while at < chunk.len() {
            let (n, done) = s.feed(&chunk[at..]).expect("valid stream");
            at += n;
            frames += usize::from(done);
        }
    }
    frames
}

fn scanner(c: &mut Criterion) {
    let inputs: Vec<(&str, Dir, Vec<u8>, usize)> = vec![
        ("requests/set_64B", Dir::Request, sets(4096, 64), 4096),
        ("requests/get", Dir::Request, gets(4096), 4096),
        ("requests/inline_get", Dir::Request, inline(4096), 4096),
        (
            "requests/set_16KiB",
            Dir::Request,
            sets(256, 16 * 1024),
            256,
        ),
        ("requests/set_1MiB", Dir::Request, sets(8, 1 << 20), 8),
        ("replies/resp3_mix", Dir::Reply, resp3_replies(4096), 4096),
        (
            "replies/bulk_16KiB",
            Dir::Reply,
            bulk_replies(256, 16 * 1024),
            256,
        ),
    ];
    let mut g = c.benchmark_group("scan");
    for (name, dir, data, frames) in &inputs {
        assert_eq!(scan(*dir, data), *frames, "{name}");
        g.throughput(Throughput::ElementsAndBytes {
            elements: *frames as u64,
            bytes: data.len() as u64,
        });
        g.bench_function(*name, |b| b.iter(|| scan(*dir, black_box(data))));
    }
    g.finish();
}

/// Client → tunnel → server and the replies back, through the whole engine.
fn engine_roundtrip(
    requests: &[u8],
    replies: &[u8],
    up: &mut Vec<u8>,
    down: &mut Vec<u8>,
) -> usize {
    let mut s = MemSession::new(
        ClientAuth::Passthrough,
        Some(Credentials {
            username: None,
            password: Secret::new("bench-token-0000"),
            file: None,
        }),
    );
    up.clear();
    down.clear();
    for chunk in requests.chunks(CHUNK) {
        s.client_sends(chunk, up, down);
    }
    for chunk in replies.chunks(CHUNK) {
        s.server_sends(chunk, down);
    }
    up.len() + down.len()
}

/// The raw pipe's work for the same bytes: copy each chunk through.
fn raw_roundtrip(requests: &[u8], replies: &[u8], up: &mut Vec<u8>, down: &mut Vec<u8>) -> usize {
    up.clear();
    down.clear();
    for chunk in requests.chunks(CHUNK) {
        up.extend_from_slice(chunk);
    }
    for chunk in replies.chunks(CHUNK) {
        down.extend_from_slice(chunk);
    }
    up.len() + down.len()
}

fn session(c: &mut Criterion) {
    let ok = b"+OK\r\n".repeat(4096);
    let value = bulk_replies(4096, 64);
    let big_ok = b"+OK\r\n".repeat(256);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, usize)> = vec![
        ("set_64B", sets(4096, 64), ok, 4096),
        ("get_64B", gets(4096), value, 4096),
        ("set_16KiB", sets(256, 16 * 1024), big_ok, 256),
    ];
    let mut g = c.benchmark_group("session");
    let (mut up, mut down) = (Vec::with_capacity(8 << 20), Vec::with_capacity(8 << 20));
    for (name, req, rep, n) in &cases {
        let total = engine_roundtrip(req, rep, &mut up, &mut down);
        assert_eq!(
            (up.as_slice(), down.as_slice()),
            (req.as_slice(), rep.as_slice()),
            "{name}"
        );
        g.throughput(Throughput::ElementsAndBytes {
            elements: *n as u64,
            bytes: total as u64,
        });
        g.bench_function(format!("resp/{name}"), |b| {
            b.iter(|| engine_roundtrip(black_box(req), black_box(rep), &mut up, &mut down))
        });
        g.bench_function(format!("raw_copy/{name}"), |b| {
            b.iter(|| raw_roundtrip(black_box(req), black_box(rep), &mut up, &mut down))
        });
    }
    g.finish();
}

/// A client's input split into what may share an upstream session, in socket-sized reads, as
/// a shared-session client does per read (the step the shared path adds to every request).
fn split_all(data: &[u8]) -> u32 {
    let mut s = Splitter::new(ClientAuth::Passthrough, None);
    let (mut replies, mut buf) = (0, BytesMut::with_capacity(2 * CHUNK));
    for chunk in data.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        let split = s.split(&buf, Budget::UNLIMITED);
        assert!(split.stop.is_none());
        replies += split.replies;
        // The run goes out; a frame cut by the read boundary stays for the next read.
        let _ = buf.split_to(split.len);
    }
    replies
}

fn share(c: &mut Criterion) {
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("get", gets(4096), 4096),
        ("set_64B", sets(4096, 64), 4096),
        ("inline_get", inline(4096), 4096),
    ];
    let mut g = c.benchmark_group("share");
    for (name, data, n) in &cases {
        assert_eq!(split_all(data), *n, "{name}");
        g.throughput(Throughput::ElementsAndBytes {
            elements: u64::from(*n),
            bytes: data.len() as u64,
        });
        g.bench_function(format!("split/{name}"), |b| {
            b.iter(|| split_all(black_box(data)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = scanner, session, share
}
criterion_main!(benches);
