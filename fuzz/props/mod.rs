//! Properties of the tunnel's input handling, shared by the fuzz targets (`fuzz/fuzz_targets`)
//! and the stable regression test (`tests/fuzz_corpus.rs`), so that a committed input is checked
//! the same way under `cargo test` as it was under `cargo fuzz`. Each `check` panics with the
//! property that failed; it uses only the `ectunnel` crate's public API and std.
#![allow(dead_code)]

pub mod config;
pub mod engine;
pub mod rewrite;
pub mod scan;
pub mod share;
pub mod split;
pub mod stunnel;
