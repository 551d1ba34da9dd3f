//! `ectunnel convert-stunnel FILE`: an stunnel client configuration to ectunnel TOML.
//! (Being written.)
