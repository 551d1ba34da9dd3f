//! The config file as serde reads it: every key optional where it has a default, unknown keys
//! rejected, spans kept so that errors can name the line.

use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::Serde as HumanDuration;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) connect_timeout: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) shutdown_grace: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) threads: Option<Spanned<usize>>,
    pub(super) tcp_keepalive: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) tls: Option<RawTls>,
    pub(super) auth: Option<Spanned<RawAuth>>,
    pub(super) client_auth: Option<Spanned<RawClientAuth>>,
    pub(super) pool: Option<RawPool>,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) listener: Vec<Spanned<RawListener>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) min_idle: Option<Spanned<usize>>,
    pub(super) max_idle: Option<Spanned<usize>>,
    pub(super) reuse: Option<bool>,
    pub(super) max_lifetime: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) health_interval: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) multiplex: Option<Spanned<usize>>,
    pub(super) shared_reply_timeout: Option<Spanned<HumanDuration<Duration>>>,
}

/// `upstream = "host:port"` or `upstream = ["host:port", …]`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawUpstreams {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    pub(super) mode: Spanned<String>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) password: Option<Spanned<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) server_name: Option<Spanned<String>>,
    pub(super) min_version: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<PathBuf>>,
    pub(super) client_key: Option<Spanned<PathBuf>>,
    pub(super) insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) username: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) password: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<Spanned<String>>,
    pub(super) listen: Spanned<String>,
    pub(super) upstream: Spanned<RawUpstreams>,
    pub(super) role: Option<Spanned<String>>,
    pub(super) pool: Option<RawPool>,
    pub(super) tls: Option<RawTls>,
    pub(super) auth: Option<Spanned<RawAuth>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) client_auth: Option<Spanned<RawClientAuth>>,
    pub(super) allow_unauthenticated: Option<bool>,
}
