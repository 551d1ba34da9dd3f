//! Helpers around the tunnel: converting an stunnel configuration ([`stunnel`]); shell
//! completions and manual pages from the command-line definition ([`docs`]).

pub mod docs;
pub mod stunnel;
