//! ectunnel: a TLS-originating tunnel for Redis clients that cannot speak TLS.
//!
//! The data path, top to bottom:
//! 1. [`server`] accepts a client on a `[[listener]]` and gives it a [`listener::Handle`]: the
//!    listener as it is now, reloads included.
//! 2. [`client`] serves it on the listener's shared upstream sessions while its commands allow
//!    ([`upstream::mux`]), then on a session of its own.
//! 3. [`proto`] says what each request and reply is, without I/O: where frames end, what may be
//!    shared, what the tunnel answers, injects or swallows.
//! 4. [`upstream`] reaches the server (DNS → TCP → TLS → AUTH), keeps sessions ready
//!    ([`upstream::Pool`]), and alone decides where the upstream is now ([`upstream::Node`]).
//! 5. A failure reaches the client as one `-ERR ectunnel: <stage> <upstream>: <reason>`.
//!
//! # Layout
//! - [`cli`]: the command line (thin `main.rs` calls [`cli::main`]); exit codes.
//! - [`config`]: TOML → validated [`config::Config`]; [`config::secret`] masks credentials.
//! - [`server`], [`listener`]: binding, accepting, reloading, draining; the handle a client holds.
//! - [`client`]: one client: shared sessions, a session of its own (RESP engine or raw pipe).
//! - [`proto`]: the streaming scanner, the session engine, what may be shared.
//! - [`upstream`]: dial, the node authority, the pool, the shared sessions.
//! - [`cluster`]: in front of a Redis Cluster, a local listener per node and the topology;
//!   [`proto::rewrite`] puts their addresses in the replies.
//! - [`auth`]: IAM tokens ([`auth::iam`]) for dial's AUTH, signed with the AWS SDK, credentials
//!   from its chain.
//! - [`limits`]: every fixed limit with its reason; [`admission`]: clients and sessions open
//!   against `max_clients` / `max_sessions`. [`net`]: socket options. [`tls`]: rustls.
//! - [`ops`]: metrics, the admin endpoint, `ectunnel check`. [`tools`]: `convert-stunnel`,
//!   `completions`, `man`, `iam-token`.
//! - [`shutdown`]: the SIGINT/SIGTERM future.
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod limits;
pub mod listener;
pub mod net;
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
