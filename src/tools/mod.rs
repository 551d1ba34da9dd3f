//! Helpers around the tunnel: converting an stunnel configuration ([`stunnel`]); shell
//! completions and manual pages from the command-line definition ([`docs`]); printing an IAM
//! token ([`iam_token`]).

pub mod docs;
pub mod iam_token;
pub mod stunnel;
