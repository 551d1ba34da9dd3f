//! Reaching the upstream: [`dial`] makes one authenticated TLS session; [`Pool`] keeps them
//! ready, reuses them safely and follows the node with the configured role; [`shared`] lets
//! several clients' plain data commands share a session.

mod dial;
mod pool;
pub mod shared;

pub use dial::{DialError, Dialed, Stage, dial};
pub use pool::{Epoch, Pool};
