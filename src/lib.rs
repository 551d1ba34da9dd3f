//! ectunnel: a TLS-originating tunnel for Redis clients that cannot speak TLS.
//!
//! # Layout
//! - [`cli`]: the command line (thin `main.rs` calls [`cli::main`]); exit codes.
//! - [`config`]: TOML → validated [`config::Config`]; [`config::secret`] masks credentials.
//! - [`tls`]: rustls client configuration (roots, versions, client certificate).
//! - [`upstream`]: dialling an upstream (DNS → TCP → TLS → AUTH, failures named by stage), the
//!   pool of ready sessions, and the sessions clients share ([`upstream::shared`]).
//! - [`resp`]: the streaming scanner, the session engine, what may be shared, and the RESP the
//!   tunnel itself speaks.
//! - [`session`]: one client: on shared sessions while it can be, then on a session of its own
//!   (RESP engine or raw pipe), forwarding both directions with half-close.
//! - [`server`]: binding listeners, accepting, graceful drain on shutdown.
//! - [`shutdown`]: the SIGINT/SIGTERM future.
//! - [`check`]: `ectunnel check [--connect]`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod ops;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod tools;
pub mod upstream;

pub use config::Config;

/// Locks a mutex, carrying on if a holder panicked: the state behind the crate's locks is only
/// touched in short sections between awaits and stays as consistent as it was.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub use server::{BindError, Server, run};
