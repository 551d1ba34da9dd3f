//! Credentials the tunnel sends upstream that are made rather than read: IAM tokens.

pub mod iam;
