//! Reaching the upstream: [`dial`] makes one authenticated TLS session; [`Pool`] keeps them
//! ready, reuses them safely and follows the node with the configured role; [`shared`] lets
//! several clients' plain data commands share a session.

pub mod conn;
mod dial;
pub mod mux;
mod pool;

pub use dial::{DialError, Dialed, Stage, dial};
pub use pool::{Epoch, Pool};
