//! Reaching the upstream: one authenticated TLS session per [`dial`].

mod dial;

pub use dial::{DialError, Dialed, Stage, dial};
