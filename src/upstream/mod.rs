//! Reaching, keeping and following the upstream. [`dial`] makes one authenticated TLS session
//! ([`conn::Conn`]); [`Node`] is the one authority on where the upstream is now; [`Pool`] keeps
//! sessions ready and reuses them safely; [`mux`] lets several clients' plain data commands share
//! a session. Nothing here knows about clients.

pub mod conn;
mod dial;
pub mod mux;
mod node;
mod pool;
mod resolve;

pub use dial::{DialError, Stage, dial};
pub use node::{Node, Truth};
pub use pool::{Lent, Pool};
pub use resolve::{Resolve, Resolver};
