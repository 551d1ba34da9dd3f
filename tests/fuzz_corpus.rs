//! Every committed fuzz corpus input and every regression input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) run through the same properties the fuzz targets check
//! (`fuzz/props/`), so a crash once found stays fixed under plain `cargo test`.

#[path = "../fuzz/props/mod.rs"]
mod props;

use std::path::Path;

use ectunnel::proto::scan::Dir;

/// Runs `check` on every file of the target's corpus and regressions; returns how many ran.
fn each_input(target: &str, check: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(outcome.is_ok(), "{} fails its property", file.display());
            ran += 1;
        }
    }
    eprintln!("{target}: {ran} inputs");
    ran
}

#[test]
fn scan_requests() {
    assert!(each_input("scan_requests", |d| props::scan::check(Dir::Request, d)) > 0);
}

#[test]
fn scan_replies() {
    assert!(each_input("scan_replies", |d| props::scan::check(Dir::Reply, d)) > 0);
}

#[test]
fn engine() {
    assert!(each_input("engine", props::engine::check) > 0);
}

#[test]
fn share() {
    assert!(each_input("share", props::share::check) > 0);
}

#[test]
fn config() {
    assert!(each_input("config", props::config::check) > 0);
}

#[test]
fn stunnel() {
    assert!(each_input("stunnel", props::stunnel::check) > 0);
}

#[test]
fn rewrite() {
    assert!(each_input("rewrite", props::rewrite::check) > 0);
}
