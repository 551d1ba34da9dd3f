//! The config file as serde reads it: every key optional where it has a default, unknown keys
//! rejected, spans kept so that errors can name the line.

use std::path::PathBuf;
use std::time::Duration;

use humantime_serde::Serde as HumanDuration;
use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

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
    pub(super) max_clients: Option<Spanned<usize>>,
    pub(super) max_sessions: Option<Spanned<usize>>,
    pub(super) client_idle_timeout: Option<Spanned<HumanDuration<Duration>>>,
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
    pub(super) password: Option<Spanned<Zeroizing<String>>>,
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
    pub(super) password_env: Option<Spanned<RawNames>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) password: Option<Spanned<Zeroizing<String>>>,
    pub(super) iam: Option<Spanned<RawIam>>,
}

/// `password_env`: one variable, or a list during a token rotation (tried in order).
#[derive(Deserialize, Clone)]
#[serde(
    untagged,
    expecting = "a variable name, or a list of two variable names"
)]
pub(super) enum RawNames {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIam {
    pub(super) cache: Spanned<String>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) service: Option<Spanned<String>>,
    pub(super) serverless: Option<bool>,
    pub(super) refresh: Option<Spanned<HumanDuration<Duration>>>,
    pub(super) reauth_after: Option<Spanned<HumanDuration<Duration>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<Spanned<String>>,
    pub(super) listen: Spanned<String>,
    pub(super) upstream: Spanned<RawUpstreams>,
    pub(super) role: Option<Spanned<String>>,
    pub(super) cluster: Option<Spanned<String>>,
    pub(super) cluster_ports: Option<Spanned<String>>,
    pub(super) pool: Option<RawPool>,
    pub(super) tls: Option<RawTls>,
    pub(super) auth: Option<Spanned<RawAuth>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) client_auth: Option<Spanned<RawClientAuth>>,
    pub(super) allow_unauthenticated: Option<bool>,
    pub(super) max_clients: Option<Spanned<usize>>,
    pub(super) max_sessions: Option<Spanned<usize>>,
    pub(super) client_idle_timeout: Option<Spanned<HumanDuration<Duration>>>,
}

#[cfg(test)]
mod reference {
    //! docs/configuration.md is the user's reference: a key the code accepts and the reference
    //! does not name (or the reverse) is a drift this test catches.

    use std::collections::BTreeSet;

    use serde_aux::serde_introspection::serde_introspect;

    use super::*;

    /// Every key path the config accepts, from the serde structs themselves.
    fn code_keys() -> BTreeSet<String> {
        let tables: [(&str, &[&str]); 6] = [
            ("tls", serde_introspect::<RawTls>()),
            ("auth", serde_introspect::<RawAuth>()),
            ("auth.iam", serde_introspect::<RawIam>()),
            ("client_auth", serde_introspect::<RawClientAuth>()),
            ("pool", serde_introspect::<RawPool>()),
            ("admin", serde_introspect::<RawAdmin>()),
        ];
        let mut keys: BTreeSet<String> = serde_introspect::<RawConfig>()
            .iter()
            .map(|k| k.to_string())
            .collect();
        for key in serde_introspect::<RawListener>() {
            keys.insert(format!("listener.{key}"));
        }
        for (table, fields) in tables {
            keys.extend(fields.iter().map(|f| format!("{table}.{f}")));
        }
        keys
    }

    /// The key paths the reference's tables name in their first column.
    fn documented_keys() -> BTreeSet<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let text = std::fs::read_to_string(path).expect("docs/configuration.md");
        let mut keys = BTreeSet::new();
        let mut in_config = true;
        for line in text.lines() {
            if line.starts_with("## Command line") {
                in_config = false;
            }
            let Some(cell) = line.strip_prefix("| `") else {
                continue;
            };
            if let (true, Some((key, _))) = (in_config, cell.split_once('`')) {
                keys.insert(key.to_owned());
            }
        }
        keys
    }

    #[test]
    fn every_config_key_is_in_the_reference_and_nothing_else() {
        let (code, docs) = (code_keys(), documented_keys());
        let undocumented: Vec<_> = code.difference(&docs).collect();
        let unknown: Vec<_> = docs.difference(&code).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "docs/configuration.md is out of step with src/config/raw.rs: \
             missing {undocumented:?}, not config keys {unknown:?}"
        );
        assert!(code.contains("pool.shared_reply_timeout") && code.contains("listener.role"));
    }

    /// A value of the wrong kind gets a "write this instead" hint only for keys the hint
    /// tables know; a new key missing from them would silently fall back to toml's wording.
    #[test]
    fn every_value_key_has_a_kind_for_the_hints() {
        use super::super::validate::{BOOL_KEYS, DURATION_KEYS, NUMBER_KEYS, STRING_KEYS};
        let tables = [
            "tls",
            "auth",
            "iam",
            "client_auth",
            "pool",
            "admin",
            "listener",
        ];
        for key in code_keys() {
            let leaf = key.rsplit('.').next().unwrap_or(&key);
            let known = NUMBER_KEYS.iter().any(|(k, _)| *k == leaf)
                || BOOL_KEYS.contains(&leaf)
                || DURATION_KEYS.contains(&leaf)
                || STRING_KEYS.contains(&leaf)
                || tables.contains(&leaf);
            assert!(
                known,
                "{key}: add it to one of the hint tables in validate.rs"
            );
        }
    }
}
