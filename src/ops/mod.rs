//! Operating the tunnel: the admin endpoint ([`admin`]), Prometheus metrics ([`metrics`]) and
//! `ectunnel check` ([`check`]).

pub mod admin;
pub mod check;
pub mod metrics;
