//! Helpers around the tunnel: converting an stunnel configuration ([`stunnel`]).

pub mod stunnel;
