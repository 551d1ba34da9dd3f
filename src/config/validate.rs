//! Checks on the raw config, turning it into a [`Config`]: defaults merged in, values parsed,
//! secrets resolved, each error naming file, line and key.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use humantime_serde::Serde as HumanDuration;
use rustls_pki_types::ServerName;
use toml::Spanned;

use super::auth::{client_credentials, upstream_auth};
use super::raw::*;
use super::{
    ClientAuth, ClusterMode, Config, ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_SESSIONS, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TCP_KEEPALIVE, ListenerConfig,
    PoolConfig, Protocol, Role, Upstream, UpstreamAddr, UpstreamAuth,
};
use crate::limits::{MAX_MULTIPLEX, MAX_THREADS};
use crate::tls::{self, MinVersion, TlsOptions};

/// Where the raw config came from, to turn byte spans into `file:line` and relative paths into
/// paths that do not depend on where the process was started.
pub(super) struct Source<'a> {
    pub(super) name: String,
    pub(super) text: Option<&'a str>,
    /// The config file's directory, which relative paths in it are relative to; `None` (flags,
    /// text without a file) leaves them relative to the working directory.
    pub(super) dir: Option<&'a Path>,
}

impl Source<'_> {
    /// A path as the config wrote it, resolved against the file's directory: `ca_file =
    /// "ca.pem"` next to the config keeps working whatever directory systemd or a shell starts
    /// the tunnel in.
    pub(super) fn path(&self, written: &Path) -> PathBuf {
        match self.dir {
            Some(dir) if written.is_relative() => dir.join(written),
            _ => written.to_owned(),
        }
    }

    fn at(&self, span: &Range<usize>) -> String {
        match self.text {
            Some(text) => format!("{}:{}", self.name, line_of(text, span.start)),
            None => self.name.clone(),
        }
    }

    pub(super) fn invalid(
        &self,
        span: &Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.at(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A TOML syntax or type error: toml gives the span; the key is read off that line. Where
    /// the value written there is the wrong kind for the key, the message says what to write
    /// instead of toml's terms (`invalid float`, `expected usize`).
    pub(super) fn parse_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let (key, value) = self
            .text
            .map(|text| (key_at(text, span.start), value_at(text, span.start)))
            .unwrap_or_default();
        let message = kind_hint(&key, &value).unwrap_or_else(|| without_literal(e.message()));
        let scrub = |s: String| match self.text {
            Some(text) => without_secrets(s, text),
            None => s,
        };
        ConfigError::Invalid {
            origin: self.at(&span),
            key: scrub(key),
            message: scrub(message),
        }
    }
}

/// `s` with every `password = "…"` value written in `text` (8 characters or more) cut out:
/// what a broken file holds around the error is read off its lines, and a file can repeat its
/// secret where the loader names things (pasted as a table header, say).
fn without_secrets(mut s: String, text: &str) -> String {
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        rest = &rest[at + "password".len()..];
        let value = rest.trim_start_matches([' ', '\t']);
        let Some(value) = value
            .strip_prefix('=')
            .map(|v| v.trim_start_matches([' ', '\t']))
        else {
            continue;
        };
        let Some(quoted) = value.strip_prefix(['"', '\'']) else {
            continue;
        };
        let quoted = quoted.trim_start_matches(['"', '\'', '\n']);
        let end = quoted.find(['"', '\'', '\n']).unwrap_or(quoted.len());
        if end >= 8 {
            s = s.replace(&quoted[..end], "…");
        }
    }
    s
}

/// Keys that take a whole number, with an example value.
pub(super) const NUMBER_KEYS: &[(&str, &str)] = &[
    ("threads", "2"),
    ("min_idle", "2"),
    ("max_idle", "64"),
    ("multiplex", "2"),
    ("max_clients", "10000"),
    ("max_sessions", "10000"),
];
pub(super) const BOOL_KEYS: &[&str] = &[
    "reuse",
    "insecure_skip_verify",
    "allow_unauthenticated",
    "serverless",
];
pub(super) const DURATION_KEYS: &[&str] = &[
    "connect_timeout",
    "shutdown_grace",
    "tcp_keepalive",
    "max_lifetime",
    "health_interval",
    "shared_reply_timeout",
    "client_idle_timeout",
    "refresh",
    "reauth_after",
];
/// Keys that take a string (or a list of strings); with [`DURATION_KEYS`], those an unquoted
/// value is wrong for. Other keys (a misspelt one, say) keep toml's message.
pub(super) const STRING_KEYS: &[&str] = &[
    "name",
    "listen",
    "upstream",
    "role",
    "cluster",
    "cluster_ports",
    "protocol",
    "mode",
    "ca_file",
    "server_name",
    "min_version",
    "client_cert",
    "client_key",
    "username",
    "password_env",
    "password_file",
    "password",
    "cache",
    "region",
    "service",
];

/// What to write instead, when `value` (as written) is the wrong kind for `key`: a bare
/// `listen = 127.0.0.1:6379` or `connect_timeout = 5s` (strings without quotes), a quoted or
/// fractional number, a `yes` for a boolean. `None` when the value looks right for the key, so
/// that toml's own message (a duplicate key, say) stands.
fn kind_hint(key: &str, value: &str) -> Option<String> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if value.is_empty() {
        return None;
    }
    if let Some((_, example)) = NUMBER_KEYS.iter().find(|(k, _)| *k == leaf) {
        let whole = value.replace('_', "").parse::<u64>().is_ok();
        return (!whole)
            .then(|| format!("expected a whole number, e.g. {leaf} = {example}; found {value}"));
    }
    if BOOL_KEYS.contains(&leaf) {
        return (!matches!(value, "true" | "false"))
            .then(|| format!("expected true or false, e.g. {leaf} = true; found {value}"));
    }
    let quoted = value.starts_with(['"', '\'', '[', '{']);
    if quoted {
        return None;
    }
    let suggested = if leaf.starts_with("password") {
        // Never echo a secret, even a misquoted one.
        "...".to_owned()
    } else if DURATION_KEYS.contains(&leaf) && value.bytes().all(|b| b.is_ascii_digit()) {
        format!("{value}s")
    } else if DURATION_KEYS.contains(&leaf) || STRING_KEYS.contains(&leaf) {
        value.to_owned()
    } else {
        return None;
    };
    Some(format!(
        "values like addresses and durations are strings: write {leaf} = \"{suggested}\""
    ))
}

/// The line holding `offset` and where it starts; `None` inside a multi-line string (an odd
/// number of `"""` or `\'\'\'` before it), whose lines are a value, perhaps a secret, never keys.
fn line_at(text: &str, offset: usize) -> Option<(&str, usize)> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[..start];
    if before.matches("\"\"\"").count() % 2 == 1 || before.matches("\'\'\'").count() % 2 == 1 {
        return None;
    }
    Some((text[start..].lines().next().unwrap_or(""), start))
}

/// The value on the `key = value` line holding `offset`, as written: a quoted string up to
/// its closing quote, anything else up to a comment.
fn value_at(text: &str, offset: usize) -> String {
    let Some((key, value)) = line_at(text, offset).and_then(|(l, _)| l.split_once('=')) else {
        return String::new();
    };
    // Only after a plain key: before `max_clients[apassword = "…"` the value is not the key's.
    if key_name(key.trim()) != key.trim() {
        return String::new();
    }
    let value = value.trim();
    let end = match value.chars().next() {
        Some(q @ ('"' | '\'')) => value[1..].find(q).map_or(value.len(), |i| i + 2),
        _ => value.find('#').unwrap_or(value.len()),
    };
    let value = value[..end].trim();
    // Unquoted words with more after them are not one value (`1.2 password = "…"`): no hint
    // then, and nothing of the rest of the line repeated.
    if !value.starts_with(['"', '\'']) && value.contains(char::is_whitespace) {
        return String::new();
    }
    value.to_owned()
}

/// toml's message without the literal it quotes (`invalid type: integer \`12345678\``): the
/// value may be a secret written in a form the hints do not recognise (an inline table, a
/// quoted key). Messages that quote a key (`unknown field \`upstrem\``) keep it.
fn without_literal(message: &str) -> String {
    let message = message.trim();
    if !message.starts_with("invalid type:") && !message.starts_with("invalid value:") {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((before, after)) = rest.split_once(" `") {
        out.push_str(before);
        rest = after.split_once('`').map_or("", |(_, tail)| tail);
    }
    out.push_str(rest);
    out
}

/// An environment variable's name as shells write them.
pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value that came from a flag, not a file: there is no line to point at.
pub(super) fn unspanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted key on the line holding `offset`, prefixed by the table it sits in
/// (`listener.tls.ca_file`), or the table header itself when the error is on a header line.
fn key_at(text: &str, offset: usize) -> String {
    let Some((line, line_start)) = line_at(text, offset) else {
        return String::new();
    };
    let line = line.trim();
    let header = |l: &str| key_name(l.trim_start_matches('[').split(']').next().unwrap_or(""));
    if line.starts_with('[') {
        return header(line);
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(header);
    let key = line
        .split_once('=')
        .map(|(k, _)| key_name(k.trim().trim_matches('"')));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t,
        (None, None) => String::new(),
    }
}

/// The dotted key at the start of `s`, up to the first character no key has: a header left
/// unclosed (`[auth password = "…"`) or a key run into its table (`[auth]password = "…"`) must
/// not carry the value written after it into the error.
fn key_name(s: &str) -> String {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')))
        .unwrap_or(s.len());
    s[..end].trim().to_owned()
}

/// A `[tls]` key merged from the listener's own section or the top-level default, remembering
/// which one it came from so an error names the right key.
struct Merged<'a, T> {
    value: &'a Spanned<T>,
    key: String,
}

fn merge<'a, T>(
    own: Option<&'a Spanned<T>>,
    default: Option<&'a Spanned<T>>,
    name: &str,
) -> Option<Merged<'a, T>> {
    own.map(|value| Merged {
        value,
        key: format!("listener.tls.{name}"),
    })
    .or_else(|| {
        default.map(|value| Merged {
            value,
            key: format!("tls.{name}"),
        })
    })
}

pub(super) fn validate(raw: RawConfig, src: &Source<'_>) -> Result<Config, ConfigError> {
    let connect_timeout = nonzero(raw.connect_timeout.as_ref(), "connect_timeout", src)?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let shutdown_grace = raw
        .shutdown_grace
        .as_ref()
        .map_or(DEFAULT_SHUTDOWN_GRACE, |d| **d.get_ref());
    let threads = match &raw.threads {
        Some(t) if !(1..=MAX_THREADS).contains(t.get_ref()) => {
            return Err(src.invalid(
                &t.span(),
                "threads",
                format!("must be between 1 and {MAX_THREADS}"),
            ));
        }
        Some(t) => *t.get_ref(),
        None => 1,
    };
    // "0s" turns keepalive off.
    let keepalive = match &raw.tcp_keepalive {
        Some(d) if d.get_ref().is_zero() => None,
        Some(d) => Some(**d.get_ref()),
        None => Some(DEFAULT_TCP_KEEPALIVE),
    };
    if raw.listener.is_empty() {
        return Err(ConfigError::Invalid {
            origin: src.name.clone(),
            key: "listener".into(),
            message: "no [[listener]] defined; add one with listen and upstream".into(),
        });
    }
    let defaults = Defaults {
        connect_timeout,
        keepalive,
        auth: match &raw.auth {
            Some(auth) => Some(upstream_auth(auth, "auth", src)?),
            None => None,
        },
        tls: raw.tls.clone().unwrap_or_default(),
        client_auth: match &raw.client_auth {
            Some(c) => client_auth(c, "client_auth", src)?,
            None => ClientAuth::Passthrough,
        },
        pool: raw.pool.as_ref(),
        max_clients: raw.max_clients.as_ref(),
        max_sessions: raw.max_sessions.as_ref(),
        client_idle_timeout: raw.client_idle_timeout.as_ref(),
    };
    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(raw.listener.len());
    for spanned in &raw.listener {
        let l = listener(spanned, &defaults, &listeners, src)?;
        listeners.push(l);
    }
    let admin = match raw.admin.as_ref().and_then(|a| a.listen.as_ref()) {
        None => None,
        Some(a) => Some(socket_addr(a, "admin.listen", "127.0.0.1:9121", src)?),
    };
    Ok(Config {
        connect_timeout,
        shutdown_grace,
        threads,
        listeners,
        admin,
    })
}

/// What the top level gives every listener that does not set its own.
struct Defaults<'a> {
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    auth: Option<UpstreamAuth>,
    tls: RawTls,
    client_auth: ClientAuth,
    pool: Option<&'a RawPool>,
    max_clients: Option<&'a Spanned<usize>>,
    max_sessions: Option<&'a Spanned<usize>>,
    client_idle_timeout: Option<&'a Spanned<HumanDuration<Duration>>>,
}

/// One `[[listener]]`, with the defaults merged in; `before` are the listeners above it.
fn listener(
    spanned: &Spanned<RawListener>,
    defaults: &Defaults<'_>,
    before: &[ListenerConfig],
    src: &Source<'_>,
) -> Result<ListenerConfig, ConfigError> {
    let l = spanned.get_ref();
    let listen = socket_addr(&l.listen, "listener.listen", "127.0.0.1:6379", src)?;
    let name = match &l.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            return Err(src.invalid(&n.span(), "listener.name", "must not be empty"));
        }
        Some(n) => n.get_ref().clone(),
        None => listen.to_string(),
    };
    if let Some(other) = before.iter().find(|o| o.name == name) {
        let message = format!(
            "two listeners are named `{}`; names must be unique",
            other.name
        );
        return Err(src.invalid(&spanned.span(), "listener.name", message));
    }
    if listen.port() != 0 && before.iter().any(|o| o.listen == listen) {
        let message = format!("{listen} is used by two listeners");
        return Err(src.invalid(&l.listen.span(), "listener.listen", message));
    }
    let own_tls = l.tls.clone().unwrap_or_default();
    let (options, server_name, insecure) = tls_settings(&own_tls, &defaults.tls, src)?;
    let upstreams = upstreams(&l.upstream, server_name.as_ref(), src)?;
    let role = one_of(
        l.role.as_ref(),
        "listener.role",
        "a role",
        &[
            ("any", Role::Any),
            ("primary", Role::Primary),
            ("replica", Role::Replica),
        ],
        src,
    )?;
    let protocol = one_of(
        l.protocol.as_ref(),
        "listener.protocol",
        "a protocol",
        &[("resp", Protocol::Resp), ("raw", Protocol::Raw)],
        src,
    )?;
    let mut pool = pool_settings(l.pool.as_ref(), defaults.pool, src)?;
    let tls = tls_config(&options, &own_tls, &defaults.tls, spanned, src)?;
    let client_key = options.client_key.clone();
    let auth = match &l.auth {
        Some(own) => Some(upstream_auth(own, "listener.auth", src)?),
        None => defaults.auth.clone(),
    };
    if let Some(iam) = auth.as_ref().and_then(UpstreamAuth::iam) {
        // Pooled and shared sessions are replaced before the server's cut rather than re-AUTHed.
        pool.max_lifetime = pool.max_lifetime.min(iam.reauth_after);
    }
    let client_auth = match &l.client_auth {
        Some(c) => client_auth(c, "listener.client_auth", src)?,
        None => defaults.client_auth.clone(),
    };
    if protocol == Protocol::Raw && !matches!(client_auth, ClientAuth::Passthrough) {
        return Err(src.invalid(
            &l.protocol.as_ref().map_or(spanned.span(), Spanned::span),
            "listener.protocol",
            "protocol = \"raw\" cannot see the client's AUTH; client_auth needs protocol = \"resp\"",
        ));
    }
    check_exposure(l, listen, &client_auth, auth.is_some(), src)?;
    let (cluster, cluster_ports) = cluster_settings(l, spanned, protocol, listen, before, src)?;
    let (max_clients, max_sessions, client_idle_timeout) = caps(l, defaults, &pool, src)?;
    Ok(ListenerConfig {
        name,
        listen,
        upstreams,
        role,
        cluster,
        cluster_ports,
        pool,
        tls,
        insecure_skip_verify: insecure,
        auth,
        connect_timeout: defaults.connect_timeout,
        keepalive: defaults.keepalive,
        protocol,
        client_auth,
        client_key,
        max_clients,
        max_sessions,
        client_idle_timeout,
    })
}

/// `cluster` and `cluster_ports`. A raw pipe cannot rewrite addresses, so `"auto"` means off
/// there and `"on"` is refused; node ports must not take a listener's port or another
/// listener's node ports.
fn cluster_settings(
    l: &RawListener,
    spanned: &Spanned<RawListener>,
    protocol: Protocol,
    listen: SocketAddr,
    before: &[ListenerConfig],
    src: &Source<'_>,
) -> Result<(ClusterMode, Option<RangeInclusive<u16>>), ConfigError> {
    let mut mode = one_of(
        l.cluster.as_ref(),
        "listener.cluster",
        "a cluster mode",
        &[
            ("auto", ClusterMode::Auto),
            ("on", ClusterMode::On),
            ("off", ClusterMode::Off),
        ],
        src,
    )?;
    let span = |v: Option<&Spanned<String>>| v.map_or(spanned.span(), Spanned::span);
    listen_outside_node_ports(l, listen, before, src)?;
    if listen.ip().is_unspecified() {
        // Node addresses are announced with the listen IP: 0.0.0.0 tells a client nothing.
        let written = l.cluster.as_ref().filter(|_| mode == ClusterMode::On);
        if let Some(v) = written.or(l.cluster_ports.as_ref()) {
            let key = if written.is_some() {
                "listener.cluster"
            } else {
                "listener.cluster_ports"
            };
            let message = format!(
                "cluster mode announces node addresses with the listen IP, and {} is no address a client can connect to; listen on the address clients reach",
                listen.ip()
            );
            return Err(src.invalid(&v.span(), key, message));
        }
        mode = ClusterMode::Off;
    }
    if protocol == Protocol::Raw {
        if mode == ClusterMode::On {
            let message = "cluster mode rewrites node addresses in replies, which protocol = \"raw\" does not read; use protocol = \"resp\"";
            return Err(src.invalid(&span(l.cluster.as_ref()), "listener.cluster", message));
        }
        mode = ClusterMode::Off;
    }
    let Some(written) = &l.cluster_ports else {
        return Ok((mode, None));
    };
    if mode == ClusterMode::Off {
        let message =
            "node ports need cluster mode; remove cluster_ports or set cluster = \"auto\"";
        return Err(src.invalid(&written.span(), "listener.cluster_ports", message));
    }
    Ok((mode, Some(node_ports(written, listen, before, src)?)))
}

/// `cluster_ports`: a range that takes no listener's port and no other listener's node ports.
fn node_ports(
    written: &Spanned<String>,
    listen: SocketAddr,
    before: &[ListenerConfig],
    src: &Source<'_>,
) -> Result<RangeInclusive<u16>, ConfigError> {
    let key = "listener.cluster_ports";
    let range = port_range(written.get_ref()).ok_or_else(|| {
        src.invalid(
            &written.span(),
            key,
            format!(
                "`{}` is not a port range; write \"LOW-HIGH\", e.g. \"7000-7099\"",
                written.get_ref()
            ),
        )
    })?;
    let clash = |what: String| src.invalid(&written.span(), key, what);
    if range.contains(&listen.port()) {
        return Err(clash(format!(
            "the range includes this listener's own port {}",
            listen.port()
        )));
    }
    for o in before.iter().filter(|o| o.listen.ip() == listen.ip()) {
        if range.contains(&o.listen.port()) {
            return Err(clash(format!(
                "the range includes the port of listener `{}`",
                o.name
            )));
        }
        if let Some(r) = &o.cluster_ports
            && r.start() <= range.end()
            && range.start() <= r.end()
        {
            return Err(clash(format!(
                "the range overlaps the cluster_ports of listener `{}`",
                o.name
            )));
        }
    }
    Ok(range)
}

/// A listener's port must not be in the `cluster_ports` of a listener above it.
fn listen_outside_node_ports(
    l: &RawListener,
    listen: SocketAddr,
    before: &[ListenerConfig],
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    for o in before.iter().filter(|o| o.listen.ip() == listen.ip()) {
        if let Some(r) = o
            .cluster_ports
            .as_ref()
            .filter(|r| r.contains(&listen.port()))
        {
            let message = format!(
                "{listen} is in the cluster_ports {}-{} of listener `{}`",
                r.start(),
                r.end(),
                o.name
            );
            return Err(src.invalid(&l.listen.span(), "listener.listen", message));
        }
    }
    Ok(())
}

/// `"LOW-HIGH"`, inclusive, no port 0.
fn port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (low, high) = s.split_once('-')?;
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (low > 0 && low <= high).then_some(low..=high)
}

/// `max_clients`, `max_sessions` and `client_idle_timeout`: the listener's own, else the
/// top level's, else the defaults. A session limit below `min_idle` could never fill the pool.
fn caps(
    l: &RawListener,
    defaults: &Defaults<'_>,
    pool: &PoolConfig,
    src: &Source<'_>,
) -> Result<(usize, usize, Option<Duration>), ConfigError> {
    let at_least = |own: Option<&Spanned<usize>>,
                    top: Option<&Spanned<usize>>,
                    key: &str,
                    min: usize,
                    why: &str,
                    default| {
        let (v, key) = match (own, top) {
            (Some(v), _) => (v, format!("listener.{key}")),
            (None, Some(v)) => (v, key.to_owned()),
            (None, None) => return Ok(default),
        };
        if *v.get_ref() < min {
            return Err(src.invalid(&v.span(), &key, format!("must be at least {min}{why}")));
        }
        Ok(*v.get_ref())
    };
    let max_clients = at_least(
        l.max_clients.as_ref(),
        defaults.max_clients,
        "max_clients",
        1,
        "",
        DEFAULT_MAX_CLIENTS,
    )?;
    // Room for the warm sessions, and for one client's own session beside the shared ones.
    let shared = if pool.multiplex > 0 {
        pool.multiplex + 1
    } else {
        0
    };
    let min_sessions = pool.min_idle.max(shared).max(1);
    let why = if min_sessions == shared {
        " (the pool's multiplex shared sessions, and one more for a client's own)"
    } else if min_sessions > 1 {
        " (the pool's min_idle)"
    } else {
        ""
    };
    let max_sessions = at_least(
        l.max_sessions.as_ref(),
        defaults.max_sessions,
        "max_sessions",
        min_sessions,
        why,
        DEFAULT_MAX_SESSIONS,
    )?;
    // "0s" (as Redis's `timeout 0`) or absent: never.
    let idle = l
        .client_idle_timeout
        .as_ref()
        .or(defaults.client_idle_timeout)
        .map(|d| **d.get_ref())
        .filter(|d| !d.is_zero());
    Ok((max_clients, max_sessions, idle))
}

/// A duration that must not be zero, when given.
fn nonzero(
    d: Option<&Spanned<HumanDuration<Duration>>>,
    key: &str,
    src: &Source<'_>,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        Some(d) if d.get_ref().is_zero() => {
            Err(src.invalid(&d.span(), key, "must be more than 0s"))
        }
        Some(d) => Ok(Some(**d.get_ref())),
        None => Ok(None),
    }
}

fn socket_addr(
    v: &Spanned<String>,
    key: &str,
    example: &str,
    src: &Source<'_>,
) -> Result<SocketAddr, ConfigError> {
    v.get_ref().trim().parse().map_err(|_| {
        let message = format!(
            "`{}` is not an IP:port address, e.g. {example}",
            v.get_ref()
        );
        src.invalid(&v.span(), key, message)
    })
}

/// A setting that takes one of a few words; absent means the first.
fn one_of<T: Copy>(
    v: Option<&Spanned<String>>,
    key: &str,
    what: &str,
    choices: &[(&str, T)],
    src: &Source<'_>,
) -> Result<T, ConfigError> {
    let Some(v) = v else {
        return Ok(choices[0].1);
    };
    if let Some((_, t)) = choices.iter().find(|(word, _)| *word == v.get_ref()) {
        return Ok(*t);
    }
    let words: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
    let (last, rest) = words.split_last().expect("at least one choice");
    let list = if rest.is_empty() {
        last.clone()
    } else {
        format!("{} or {last}", rest.join(", "))
    };
    let message = format!("`{}` is not {what}; use {list}", v.get_ref());
    Err(src.invalid(&v.span(), key, message))
}

/// `upstream`: one `host:port` or a list, each with the name its certificate must carry.
fn upstreams(
    written: &Spanned<RawUpstreams>,
    server_name: Option<&ServerName<'static>>,
    src: &Source<'_>,
) -> Result<Vec<Upstream>, ConfigError> {
    let span = written.span();
    let list = match written.get_ref() {
        RawUpstreams::One(one) => vec![one.clone()],
        RawUpstreams::Many(many) => many.clone(),
    };
    if list.is_empty() {
        return Err(src.invalid(&span, "listener.upstream", "the list is empty"));
    }
    list.iter()
        .map(|u| {
            let addr = u
                .trim()
                .parse::<UpstreamAddr>()
                .map_err(|m| src.invalid(&span, "listener.upstream", m))?;
            let name = match server_name {
                Some(n) => n.clone(),
                None => server_name_for(&addr.host).ok_or_else(|| {
                    let message = format!(
                        "`{}` cannot be verified as a TLS name; set tls.server_name",
                        addr.host
                    );
                    src.invalid(&span, "listener.upstream", message)
                })?,
            };
            Ok(Upstream {
                addr,
                server_name: name,
            })
        })
        .collect()
}

/// Builds the listener's rustls configuration; an unreadable file names the key that gave it.
fn tls_config(
    options: &TlsOptions,
    own: &RawTls,
    default: &RawTls,
    listener: &Spanned<RawListener>,
    src: &Source<'_>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ConfigError> {
    tls::client_config(options).map_err(|e| {
        let field = e.field();
        let pick = |t: &RawTls| match field {
            "ca_file" => t.ca_file.as_ref().map(Spanned::span),
            "client_cert" => t.client_cert.as_ref().map(Spanned::span),
            _ => t.client_key.as_ref().map(Spanned::span),
        };
        let (span, table) = match (pick(own), pick(default)) {
            (Some(span), _) => (span, "listener.tls"),
            (None, Some(span)) => (span, "tls"),
            (None, None) => (listener.span(), "listener.tls"),
        };
        src.invalid(&span, &format!("{table}.{field}"), e.to_string())
    })
}

/// A listener reachable from other machines must demand a password, or say it means to be open.
fn check_exposure(
    l: &RawListener,
    listen: SocketAddr,
    client_auth: &ClientAuth,
    injects: bool,
    src: &Source<'_>,
) -> Result<(), ConfigError> {
    if listen.ip().is_loopback()
        || matches!(client_auth, ClientAuth::Require(_))
        || l.allow_unauthenticated == Some(true)
    {
        return Ok(());
    }
    let message = format!(
        "{listen} is not a loopback address: anyone who reaches it would get the upstream{}; \
         set [listener.client_auth] mode = \"require\", or allow_unauthenticated = true",
        if injects {
            " with the injected credentials"
        } else {
            ""
        }
    );
    Err(src.invalid(&l.listen.span(), "listener.listen", message))
}

/// Merges a listener's `[listener.tls]` over the top-level `[tls]`, key by key, so a listener
/// can override just `server_name` and keep the shared `ca_file`.
fn tls_settings(
    own: &RawTls,
    default: &RawTls,
    src: &Source<'_>,
) -> Result<(TlsOptions, Option<ServerName<'static>>, bool), ConfigError> {
    let min_version = match merge(
        own.min_version.as_ref(),
        default.min_version.as_ref(),
        "min_version",
    ) {
        None => None,
        Some(m) => Some(match m.value.get_ref().as_str() {
            "1.2" => MinVersion::Tls12,
            "1.3" => MinVersion::Tls13,
            other => {
                return Err(src.invalid(
                    &m.value.span(),
                    &m.key,
                    format!("`{other}` is not supported; use \"1.2\" or \"1.3\""),
                ));
            }
        }),
    };
    let server_name = match merge(
        own.server_name.as_ref(),
        default.server_name.as_ref(),
        "server_name",
    ) {
        Some(m) => Some(
            ServerName::try_from(m.value.get_ref().clone()).map_err(|_| {
                src.invalid(
                    &m.value.span(),
                    &m.key,
                    format!(
                        "`{}` is not a valid DNS name or IP address",
                        m.value.get_ref()
                    ),
                )
            })?,
        ),
        None => None,
    };
    let path = |v: Option<Merged<'_, PathBuf>>| v.map(|m| src.path(m.value.get_ref()));
    let insecure = merge(
        own.insecure_skip_verify.as_ref(),
        default.insecure_skip_verify.as_ref(),
        "insecure_skip_verify",
    )
    .is_some_and(|m| *m.value.get_ref());
    Ok((
        TlsOptions {
            ca_file: path(merge(
                own.ca_file.as_ref(),
                default.ca_file.as_ref(),
                "ca_file",
            )),
            client_cert: path(merge(
                own.client_cert.as_ref(),
                default.client_cert.as_ref(),
                "client_cert",
            )),
            client_key: path(merge(
                own.client_key.as_ref(),
                default.client_key.as_ref(),
                "client_key",
            )),
            min_version,
            insecure_skip_verify: insecure,
        },
        server_name,
        insecure,
    ))
}

/// Merges `[listener.pool]` over `[pool]`, key by key.
fn pool_settings(
    own: Option<&RawPool>,
    default: Option<&RawPool>,
    src: &Source<'_>,
) -> Result<PoolConfig, ConfigError> {
    let (own, default) = (
        own.cloned().unwrap_or_default(),
        default.cloned().unwrap_or_default(),
    );
    let mut p = PoolConfig::default();
    let pick =
        |a: &Option<Spanned<usize>>, b: &Option<Spanned<usize>>| a.clone().or_else(|| b.clone());
    if let Some(v) = pick(&own.min_idle, &default.min_idle) {
        p.min_idle = *v.get_ref();
    }
    let max = pick(&own.max_idle, &default.max_idle);
    if let Some(v) = &max {
        p.max_idle = *v.get_ref();
    }
    if p.min_idle > p.max_idle {
        let span = max.map_or(0..0, |m| m.span());
        return Err(src.invalid(
            &span,
            "pool.max_idle",
            format!("must be at least min_idle ({})", p.min_idle),
        ));
    }
    if let Some(r) = own.reuse.or(default.reuse) {
        p.reuse = r;
    }
    if let Some(v) = pick(&own.multiplex, &default.multiplex) {
        if *v.get_ref() > MAX_MULTIPLEX {
            return Err(src.invalid(
                &v.span(),
                "pool.multiplex",
                format!("must be at most {MAX_MULTIPLEX} (shared sessions per listener)"),
            ));
        }
        p.multiplex = *v.get_ref();
    }
    let dur = |a: &Option<Spanned<HumanDuration<Duration>>>,
               b: &Option<Spanned<HumanDuration<Duration>>>,
               key: &str| nonzero(a.as_ref().or(b.as_ref()), key, src);
    if let Some(d) = dur(
        &own.max_lifetime,
        &default.max_lifetime,
        "pool.max_lifetime",
    )? {
        p.max_lifetime = d;
    }
    if let Some(d) = dur(
        &own.health_interval,
        &default.health_interval,
        "pool.health_interval",
    )? {
        p.health_interval = d;
    }
    if let Some(d) = dur(
        &own.shared_reply_timeout,
        &default.shared_reply_timeout,
        "pool.shared_reply_timeout",
    )? {
        p.shared_reply_timeout = d;
    }
    Ok(p)
}

pub(crate) fn server_name_for(host: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).ok()
}

/// `[client_auth]`: `require` carries its own password (what clients must send); the other
/// modes take none.
fn client_auth(
    c: &Spanned<RawClientAuth>,
    table: &str,
    src: &Source<'_>,
) -> Result<ClientAuth, ConfigError> {
    let r = c.get_ref();
    let has_secret = r.username.is_some()
        || r.password_env.is_some()
        || r.password_file.is_some()
        || r.password.is_some();
    match r.mode.get_ref().as_str() {
        "passthrough" | "absorb" if has_secret => Err(src.invalid(
            &c.span(),
            table,
            "only mode = \"require\" takes username/password settings",
        )),
        "passthrough" => Ok(ClientAuth::Passthrough),
        "absorb" => Ok(ClientAuth::Absorb),
        "require" => {
            let auth = Spanned::new(
                c.span(),
                RawAuth {
                    username: r.username.clone(),
                    password_env: r
                        .password_env
                        .clone()
                        .map(|v| Spanned::new(v.span(), RawNames::One(v.into_inner()))),
                    password_file: r.password_file.clone(),
                    password: r.password.clone(),
                    iam: None,
                },
            );
            Ok(ClientAuth::Require(client_credentials(&auth, table, src)?))
        }
        other => Err(src.invalid(
            &r.mode.span(),
            &format!("{table}.mode"),
            format!("`{other}` is not a mode; use \"passthrough\", \"absorb\" or \"require\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SingleListener;
    use std::time::Duration;

    fn err(text: &str) -> String {
        Config::from_toml(text, "t.toml").unwrap_err().to_string()
    }

    const MIN: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:6379\"\n";

    fn secrets(a: &UpstreamAuth) -> Vec<&str> {
        match &a.method {
            crate::config::AuthMethod::Passwords(p) => {
                p.iter().map(|p| p.secret.expose()).collect()
            }
            crate::config::AuthMethod::Iam(_) => vec![],
        }
    }

    #[test]
    fn two_passwords_during_a_rotation_keep_their_order_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "new-token-123456\r\nold-token-123456\n").unwrap();
        let text = format!("[auth]\npassword_file = \"{}\"\n{MIN}", tok.display());
        let c = Config::from_toml(&text, "t.toml").unwrap();
        let a = c.listeners[0].auth.as_ref().unwrap();
        assert_eq!(secrets(a), ["new-token-123456", "old-token-123456"]);
        let crate::config::AuthMethod::Passwords(p) = &a.method else {
            panic!()
        };
        assert_eq!(p[1].source, format!("line 2 of {}", tok.display()));
        assert_eq!(c.secret_files(), std::slice::from_ref(&tok));
        std::fs::write(&tok, "a-token\nb-token\nc-token\n").unwrap();
        let e = err(&text);
        assert!(
            e.contains("auth.password_file: password file") && e.contains("holds 3 lines"),
            "{e}"
        );
        // Two variables every test process has (the crate cannot set any: no unsafe).
        let c = Config::from_toml(
            &format!("[auth]\npassword_env = [\"HOME\", \"PATH\"]\n{MIN}"),
            "t.toml",
        )
        .unwrap();
        let (home, path) = (
            std::env::var("HOME").unwrap(),
            std::env::var("PATH").unwrap(),
        );
        assert_eq!(secrets(c.listeners[0].auth.as_ref().unwrap()), [home, path]);
        let e = err(&format!(
            "[auth]\npassword_env = [\"A\", \"B\", \"C\"]\n{MIN}"
        ));
        assert_eq!(
            e,
            "t.toml:2: auth.password_env: names one variable, or two during a token rotation (new first)"
        );
        let e = err(&format!("[auth]\npassword_env = []\n{MIN}"));
        assert!(
            e.starts_with("t.toml:2: auth.password_env: names one"),
            "{e}"
        );
    }

    #[test]
    fn iam_settings_are_checked_and_defaulted() {
        let c = Config::from_toml(
            &format!("[auth]\nusername = \"app\"\n[auth.iam]\ncache = \"My-RG\"\n{MIN}"),
            "t.toml",
        )
        .unwrap();
        let l = &c.listeners[0];
        let iam = l.auth.as_ref().unwrap().iam().unwrap();
        assert_eq!(iam.cache, "my-rg");
        assert_eq!((iam.region.as_deref(), iam.serverless), (None, false));
        assert_eq!(iam.service, crate::auth::iam::Service::ElastiCache);
        assert_eq!(iam.refresh, crate::config::DEFAULT_IAM_REFRESH);
        assert_eq!(iam.reauth_after, crate::config::DEFAULT_IAM_REAUTH);
        // Pooled and shared sessions are replaced before the re-AUTH is due.
        assert_eq!(
            l.pool.max_lifetime,
            crate::config::DEFAULT_IAM_REAUTH.min(Duration::from_secs(3600))
        );
        let c = Config::from_toml(
            &format!("[auth]\nusername = \"app\"\n[auth.iam]\ncache = \"c\"\nservice = \"elasticache\"\nserverless = true\nregion = \"eu-west-1\"\nrefresh = \"1s\"\nreauth_after = \"2s\"\n{MIN}"),
            "t.toml",
        )
        .unwrap();
        let l = &c.listeners[0];
        let iam = l.auth.as_ref().unwrap().iam().unwrap();
        assert_eq!(iam.service, crate::auth::iam::Service::ElastiCache);
        assert_eq!(
            (iam.region.as_deref(), iam.serverless),
            (Some("eu-west-1"), true)
        );
        assert_eq!(
            (iam.refresh, iam.reauth_after),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(l.pool.max_lifetime, Duration::from_secs(2));
        let iam = |body: &str| err(&format!("[auth]\nusername = \"app\"\n{body}\n{MIN}"));
        assert_eq!(
            err(&format!("[auth.iam]\ncache = \"c\"\n{MIN}")),
            "t.toml:1: auth.iam: needs `username`: the IAM-enabled ElastiCache or MemoryDB user"
        );
        assert_eq!(
            iam("password = \"p-000000\"\n[auth.iam]\ncache = \"c\""),
            "t.toml:1: auth.iam: IAM signs its own tokens: remove password_env, password_file and password"
        );
        assert!(
            iam("[auth.iam]\ncache = \"master.rg.x.use1.cache.amazonaws.com:6379\"")
                .contains("auth.iam.cache: must be the replication group id")
        );
        assert!(
            iam("[auth.iam]\ncache = \"c\"\nservice = \"redis\"").ends_with(
                "auth.iam.service: `redis` is not a service; use \"elasticache\" or \"memorydb\""
            )
        );
        assert!(
            iam("[auth.iam]\ncache = \"c\"\nrefresh = \"11m\"").ends_with(
                "auth.iam.refresh: must be above 0 and at most 10 minutes (a token lasts 15)"
            )
        );
        assert!(
            iam("[auth.iam]\ncache = \"c\"\nreauth_after = \"12h\"").ends_with(
                "auth.iam.reauth_after: must be above 0 and below the server's 12-hour cut"
            )
        );
        assert!(
            iam("[auth.iam]\ncache = \"c\"\nregion = \"EU West\"")
                .contains("auth.iam.region: `EU West` is not an AWS region")
        );
        assert!(
            iam("[auth.iam]\ncache = \"c\"\nservice = \"memorydb\"\nserverless = true")
                .ends_with("auth.iam.serverless: MemoryDB has no serverless caches")
        );
        assert!(
            err(&format!("[auth]\npassword_env = [\"A\", 5]\n{MIN}"))
                .contains("a variable name, or a list of two variable names")
        );
        assert!(iam("[auth.iam]\ncache = \"c\"\nkind = 1").contains("unknown field `kind`"));
    }

    #[test]
    fn minimal_listener_gets_defaults() {
        let c = Config::from_toml(MIN, "t.toml").unwrap();
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        let l = &c.listeners[0];
        assert_eq!(l.name, "127.0.0.1:0");
        assert_eq!(l.upstream_list(), "localhost:6379");
        assert!(l.auth.is_none());
        assert!(!l.insecure_skip_verify);
        assert_eq!(l.upstreams[0].server_name.to_str(), "localhost");
        assert_eq!((l.role, &l.pool), (Role::Any, &PoolConfig::default()));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&format!("{MIN}[listener.tls]\nca_flie = \"x\"\n"));
        assert!(e.starts_with("t.toml:5: listener.tls.ca_flie: "), "{e}");
        assert!(e.contains("unknown field `ca_flie`"), "{e}");
        let e = err(&format!("conect_timeout = \"1s\"\n{MIN}"));
        assert!(e.starts_with("t.toml:1: conect_timeout: "), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = err(&format!("connect_timeout = \"5 parsecs\"\n{MIN}"));
        assert!(e.starts_with("t.toml:1: connect_timeout: "), "{e}");
        let e = err(&format!("connect_timeout = \"0s\"\n{MIN}"));
        assert_eq!(e, "t.toml:1: connect_timeout: must be more than 0s");
        let e = err("[[listener]]\nlisten = \"localhost\"\nupstream = \"h:1\"\n");
        assert!(e.starts_with("t.toml:2: listener.listen: "), "{e}");
        let e = err("[[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"h\"\n");
        assert!(e.starts_with("t.toml:3: listener.upstream: "), "{e}");
        let e = err(&format!("[tls]\nmin_version = \"1.1\"\n{MIN}"));
        assert!(e.starts_with("t.toml:2: tls.min_version: "), "{e}");
        let e = err(&format!(
            "{MIN}[listener.tls]\nca_file = \"/nonexistent/ca.pem\"\n"
        ));
        assert!(
            e.starts_with(
                "t.toml:5: listener.tls.ca_file: cannot read certificates from /nonexistent/ca.pem"
            ),
            "{e}"
        );
        let e = err("");
        assert!(e.contains("no [[listener]]"), "{e}");
    }

    #[test]
    fn threads_and_multiplex_are_bounded() {
        assert_eq!(
            err(&format!("threads = 0\n{MIN}")),
            "t.toml:1: threads: must be between 1 and 256"
        );
        assert_eq!(
            err(&format!("[pool]\nmultiplex = 17\n{MIN}")),
            "t.toml:2: pool.multiplex: must be at most 16 (shared sessions per listener)"
        );
        let c = Config::from_toml(
            &format!("threads = 4\n[pool]\nmultiplex = 0\n{MIN}[listener.pool]\nmultiplex = 3\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!((c.threads, c.listeners[0].pool.multiplex), (4, 3));
        let c = Config::from_toml(MIN, "t.toml").unwrap();
        assert_eq!((c.threads, c.listeners[0].pool.multiplex), (1, 2));
    }

    #[test]
    fn auth_needs_exactly_one_source() {
        let e = err(&format!("[auth]\nusername = \"u\"\n{MIN}"));
        assert!(e.starts_with("t.toml:1: auth: set exactly one of"), "{e}");
        let e = err(&format!(
            "[auth]\npassword = \"a\"\npassword_env = \"B\"\n{MIN}"
        ));
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn missing_env_and_file_are_named() {
        let e = err(&format!(
            "[auth]\npassword_env = \"ECTUNNEL_TEST_SURELY_UNSET\"\n{MIN}"
        ));
        assert_eq!(
            e,
            "t.toml:2: auth.password_env: the environment variable it names is not set (its name is not repeated: it may be the token)"
        );
        let e = err(&format!(
            "{MIN}[listener.auth]\npassword_file = \"/nonexistent/tok\"\n"
        ));
        assert_eq!(
            e,
            "t.toml:5: listener.auth.password_file: no such file (the value is not repeated here)"
        );
        // A file that is there but cannot be read is named.
        let dir = tempfile::tempdir().unwrap();
        let e = err(&format!(
            "{MIN}[listener.auth]\npassword_file = \"{}\"\n",
            dir.path().display()
        ));
        assert!(
            e.starts_with(&format!(
                "t.toml:5: listener.auth.password_file: cannot read password file {}:",
                dir.path().display()
            )),
            "{e}"
        );
    }

    #[test]
    fn listener_auth_replaces_default_and_secret_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "file-token-123456\n").unwrap();
        let text = format!(
            "[auth]\npassword = \"inline-token-123456\"\n{MIN}[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nupstream = \"h:2\"\n[listener.auth]\nusername = \"app\"\npassword_file = \"{}\"\n",
            tok.display()
        );
        let c = Config::from_toml(&text, "t.toml").unwrap();
        let a = c.listeners[0].auth.as_ref().unwrap();
        assert_eq!(
            (a.username.as_deref(), secrets(a)),
            (None, vec!["inline-token-123456"])
        );
        let b = c.listeners[1].auth.as_ref().unwrap();
        assert_eq!(
            (b.username.as_deref(), secrets(b)),
            (Some("app"), vec!["file-token-123456"])
        );
        let dump = format!("{c:?}");
        assert!(
            !dump.contains("inline-token") && !dump.contains("file-token"),
            "{dump}"
        );
    }

    #[test]
    fn tls_keys_merge_per_key() {
        let text = format!(
            "[tls]\nserver_name = \"shared.example\"\nmin_version = \"1.3\"\n{MIN}[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nupstream = \"10.0.0.1:6379\"\n[listener.tls]\nserver_name = \"own.example\"\n"
        );
        let c = Config::from_toml(&text, "t.toml").unwrap();
        assert_eq!(
            c.listeners[0].upstreams[0].server_name.to_str(),
            "shared.example"
        );
        assert_eq!(
            c.listeners[1].upstreams[0].server_name.to_str(),
            "own.example"
        );
    }

    #[test]
    fn duplicate_names_rejected() {
        let e = err(&format!("{MIN}{MIN}"));
        assert!(e.contains("two listeners are named `127.0.0.1:0`"), "{e}");
    }

    #[test]
    fn client_auth_modes_and_protocols() {
        let c = Config::from_toml(
            &format!("[client_auth]\nmode = \"absorb\"\n{MIN}protocol = \"resp\"\n"),
            "t.toml",
        )
        .unwrap();
        assert!(matches!(c.listeners[0].client_auth, ClientAuth::Absorb));
        assert_eq!(c.listeners[0].protocol, Protocol::Resp);
        let c = Config::from_toml(
            &format!("{MIN}[listener.client_auth]\nmode = \"require\"\nusername = \"u\"\npassword = \"client-pass\"\n"),
            "t.toml",
        )
        .unwrap();
        match &c.listeners[0].client_auth {
            ClientAuth::Require(cr) => assert_eq!(
                (cr.username.as_deref(), cr.password.expose()),
                (Some("u"), "client-pass")
            ),
            other => panic!("{other:?}"),
        }
        let e = err(&format!(
            "{MIN}[listener.client_auth]\nmode = \"require\"\n"
        ));
        assert!(
            e.starts_with("t.toml:4: listener.client_auth: set exactly one of"),
            "{e}"
        );
        let e = err(&format!(
            "[client_auth]\nmode = \"absorb\"\npassword = \"x\"\n{MIN}"
        ));
        assert!(e.contains("only mode = \"require\" takes"), "{e}");
        let e = err(&format!("[client_auth]\nmode = \"trust\"\n{MIN}"));
        assert!(
            e.starts_with("t.toml:2: client_auth.mode: `trust` is not a mode"),
            "{e}"
        );
        let e = err(&format!("{MIN}protocol = \"memcache\"\n"));
        assert!(e.starts_with("t.toml:4: listener.protocol: "), "{e}");
        let e = err(&format!(
            "[client_auth]\nmode = \"absorb\"\n{MIN}protocol = \"raw\"\n"
        ));
        assert!(e.contains("client_auth needs protocol = \"resp\""), "{e}");
    }

    #[test]
    fn cluster_mode_and_node_ports() {
        let c = Config::from_toml(MIN, "t.toml").unwrap();
        assert_eq!(
            (c.listeners[0].cluster, &c.listeners[0].cluster_ports),
            (ClusterMode::Auto, &None)
        );
        let text = format!("{MIN}cluster = \"on\"\ncluster_ports = \"7000-7099\"\n");
        let c = Config::from_toml(&text, "t.toml").unwrap();
        assert_eq!(c.listeners[0].cluster, ClusterMode::On);
        assert_eq!(c.listeners[0].cluster_ports, Some(7000..=7099));
        let raw = Config::from_toml(&format!("{MIN}protocol = \"raw\"\n"), "t.toml").unwrap();
        assert_eq!(
            raw.listeners[0].cluster,
            ClusterMode::Off,
            "a byte pipe rewrites nothing"
        );
        let e = err(&format!("{MIN}protocol = \"raw\"\ncluster = \"on\"\n"));
        assert!(
            e.starts_with("t.toml:5: listener.cluster: cluster mode rewrites"),
            "{e}"
        );
        let e = err(&format!("{MIN}cluster = \"yes\"\n"));
        assert!(e.starts_with("t.toml:4: listener.cluster: `yes` is not a cluster mode; use \"auto\", \"on\" or \"off\""), "{e}");
        for (range, why) in [
            ("7000", "is not a port range"),
            ("7100-7000", "is not a port range"),
            ("0-10", "is not a port range"),
            ("1-70000", "is not a port range"),
        ] {
            let e = err(&format!("{MIN}cluster_ports = \"{range}\"\n"));
            assert!(
                e.starts_with("t.toml:4: listener.cluster_ports: ") && e.contains(why),
                "{e}"
            );
        }
        let e = err(&format!(
            "{MIN}cluster = \"off\"\ncluster_ports = \"7000-7001\"\n"
        ));
        assert!(e.contains("node ports need cluster mode"), "{e}");
        let own = "[[listener]]\nlisten = \"127.0.0.1:7005\"\nupstream = \"h:1\"\ncluster_ports = \"7000-7010\"\n";
        assert!(
            err(own).contains("includes this listener's own port 7005"),
            "{}",
            err(own)
        );
        let two = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:6379\"\nupstream = \"h:1\"\ncluster_ports = \"7000-7010\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:6380\"\nupstream = \"h:2\"\ncluster_ports = \"7010-7020\"\n";
        let e = err(two);
        assert!(e.starts_with("t.toml:10: listener.cluster_ports: the range overlaps the cluster_ports of listener `a`"), "{e}");
        let inside = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:6379\"\nupstream = \"h:1\"\ncluster_ports = \"7000-7010\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:7004\"\nupstream = \"h:2\"\n";
        let e = err(inside);
        assert!(e.starts_with("t.toml:8: listener.listen: 127.0.0.1:7004 is in the cluster_ports 7000-7010 of listener `a`"), "{e}");
        let any = "[[listener]]\nlisten = \"0.0.0.0:6379\"\nupstream = \"h:1\"\nallow_unauthenticated = true\n";
        let c = Config::from_toml(any, "t.toml").unwrap();
        assert_eq!(
            c.listeners[0].cluster,
            ClusterMode::Off,
            "no address to announce"
        );
        let e = err(&format!("{any}cluster = \"on\"\n"));
        assert!(e.starts_with("t.toml:5: listener.cluster: cluster mode announces node addresses with the listen IP"), "{e}");
        let taken = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:7003\"\nupstream = \"h:1\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:6380\"\nupstream = \"h:2\"\ncluster_ports = \"7000-7010\"\n";
        assert!(
            err(taken).contains("includes the port of listener `a`"),
            "{}",
            err(taken)
        );
    }

    #[test]
    fn a_non_loopback_listener_needs_require_or_an_explicit_opt_out() {
        let open = "[[listener]]\nlisten = \"0.0.0.0:6379\"\nupstream = \"h:1\"\n";
        let e = err(open);
        assert!(
            e.starts_with("t.toml:2: listener.listen: 0.0.0.0:6379 is not a loopback address"),
            "{e}"
        );
        assert!(
            Config::from_toml(&format!("{open}allow_unauthenticated = true\n"), "t.toml").is_ok()
        );
        let guarded =
            format!("{open}[listener.client_auth]\nmode = \"require\"\npassword = \"p-0000\"\n");
        assert!(Config::from_toml(&guarded, "t.toml").is_ok());
    }

    #[test]
    fn pools_roles_and_candidate_lists() {
        let text = format!(
            "[pool]\nmin_idle = 4\nmax_lifetime = \"10m\"\n{MIN}role = \"primary\"\n[listener.pool]\nmin_idle = 1\nreuse = false\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nupstream = [\"a.example:6379\", \"b.example:6380\"]\n"
        );
        let c = Config::from_toml(&text, "t.toml").unwrap();
        let (a, b) = (&c.listeners[0], &c.listeners[1]);
        assert_eq!(a.role, Role::Primary);
        assert_eq!(
            (a.pool.min_idle, a.pool.reuse, a.pool.max_lifetime),
            (1, false, Duration::from_secs(600))
        );
        assert_eq!((b.pool.min_idle, b.pool.reuse), (4, true));
        assert_eq!(b.upstream_list(), "a.example:6379,b.example:6380");
        assert_eq!(b.upstreams[1].server_name.to_str(), "b.example");
        let e = err(&format!("{MIN}role = \"leader\"\n"));
        assert!(
            e.starts_with("t.toml:4: listener.role: `leader` is not a role"),
            "{e}"
        );
        let e = err(&format!("[pool]\nmin_idle = 9\nmax_idle = 3\n{MIN}"));
        assert!(
            e.starts_with("t.toml:3: pool.max_idle: must be at least min_idle (9)"),
            "{e}"
        );
        let e = err("[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = []\n");
        assert!(
            e.starts_with("t.toml:3: listener.upstream: the list is empty"),
            "{e}"
        );
        let e = err("[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = [\"ok:1\", \"bad\"]\n");
        assert!(
            e.starts_with("t.toml:3: listener.upstream: `bad` has no port"),
            "{e}"
        );
    }

    #[test]
    fn limits_default_merge_and_are_bounded() {
        let l = &Config::from_toml(MIN, "t.toml").unwrap().listeners[0];
        assert_eq!((l.max_clients, l.max_sessions), (10_000, 10_000));
        assert_eq!(l.client_idle_timeout, None);
        let text = format!(
            "max_clients = 5\nclient_idle_timeout = \"1m\"\n{MIN}max_sessions = 3\nmax_clients = 7\n"
        );
        let l = &Config::from_toml(&text, "t.toml").unwrap().listeners[0];
        assert_eq!(
            (l.max_clients, l.max_sessions),
            (7, 3),
            "the listener's own wins"
        );
        assert_eq!(l.client_idle_timeout, Some(Duration::from_secs(60)));
        let off = format!("client_idle_timeout = \"0s\"\n{MIN}");
        let l = &Config::from_toml(&off, "t.toml").unwrap().listeners[0];
        assert_eq!(
            l.client_idle_timeout, None,
            "0s is none, as Redis's timeout 0"
        );
        let e = err(&format!("max_clients = 0\n{MIN}"));
        assert_eq!(e, "t.toml:1: max_clients: must be at least 1");
        let e = err(&format!(
            "{MIN}max_sessions = 1\n[listener.pool]\nmin_idle = 4\n"
        ));
        assert_eq!(
            e,
            "t.toml:4: listener.max_sessions: must be at least 4 (the pool's min_idle)"
        );
        let e = err(&format!("{MIN}max_sessions = 2\n"));
        assert_eq!(
            e,
            "t.toml:4: listener.max_sessions: must be at least 3 (the pool's multiplex shared sessions, and one more for a client's own)"
        );
    }

    #[test]
    fn keepalive_and_the_shared_reply_deadline() {
        let c = Config::from_toml(MIN, "t.toml").unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.keepalive, Some(DEFAULT_TCP_KEEPALIVE));
        assert_eq!(l.pool.shared_reply_timeout, Duration::from_secs(30));
        let text = format!("tcp_keepalive = \"0s\"\n[pool]\nshared_reply_timeout = \"2s\"\n{MIN}");
        let c = Config::from_toml(&text, "t.toml").unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.keepalive, None, "0s turns keepalive off");
        assert_eq!(l.pool.shared_reply_timeout, Duration::from_secs(2));
        let e = err(&format!("[pool]\nshared_reply_timeout = \"0s\"\n{MIN}"));
        assert_eq!(
            e,
            "t.toml:2: pool.shared_reply_timeout: must be more than 0s"
        );
    }

    #[test]
    fn a_value_of_the_wrong_kind_says_what_to_write() {
        let e = err("[[listener]]\nlisten = 127.0.0.1:6379\nupstream = \"h:1\"\n");
        assert_eq!(
            e,
            "t.toml:2: listener.listen: values like addresses and durations are strings: \
             write listen = \"127.0.0.1:6379\""
        );
        let e = err(&format!("connect_timeout = 5s # five\n{MIN}"));
        assert!(e.starts_with("t.toml:1: connect_timeout: "), "{e}");
        assert!(e.ends_with("write connect_timeout = \"5s\""), "{e}");
        let e = err(&format!("connect_timeout = 5\n{MIN}"));
        assert!(e.ends_with("write connect_timeout = \"5s\""), "{e}");
        assert_eq!(
            err(&format!("threads = \"two\"\n{MIN}")),
            "t.toml:1: threads: expected a whole number, e.g. threads = 2; found \"two\""
        );
        let e = err(&format!("[pool]\nreuse = yes\n{MIN}"));
        assert!(
            e.starts_with("t.toml:2: pool.reuse: expected true or false"),
            "{e}"
        );
        let e = err(&format!("[auth]\npassword = hunter2-secret\n{MIN}"));
        assert!(e.starts_with("t.toml:2: auth.password: "), "{e}");
        assert!(!e.contains("hunter2"), "a secret in an error: {e}");
        // A right-looking value, or a key that is not ours, keeps toml's own message.
        let e = err(&format!("threads = 2\nthreads = 3\n{MIN}"));
        assert!(!e.contains("expected a whole number"), "{e}");
        let e = err(&format!("treads = 2\n{MIN}"));
        assert!(e.contains("unknown field `treads`"), "{e}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "file-token-123456\n").unwrap();
        let file = dir.path().join("e.toml");
        std::fs::write(&file, format!("[auth]\npassword_file = \"tok\"\n{MIN}")).unwrap();
        let c = Config::from_file(&file).unwrap();
        let a = c.listeners[0].auth.as_ref().unwrap();
        assert_eq!(secrets(a), ["file-token-123456"]);
        assert_eq!(c.secret_files(), vec![dir.path().join("tok")]);
        // Text without a file (and flags) keep the working directory.
        let e = err(&format!("[auth]\npassword_file = \"tok\"\n{MIN}"));
        assert!(
            e.ends_with("no such file in the working directory (the value is not repeated here)"),
            "{e}"
        );
    }

    /// A secret written where the config wants something else is never repeated in the error.
    #[test]
    fn errors_never_repeat_a_secret() {
        const S: &str = "Xq7Zr2Kp9Lm4Nv8Tw3Yb";
        let cases = [
            // In an unclosed multi-line string, on a line that looks like `key = value`.
            format!("[auth]\npassword = \"\"\"\nthreads = {S}\n{MIN}"),
            // In an inline table, and under a quoted key: toml quotes the literal.
            format!("auth = {{ password = 1{S} }}\n{MIN}").replace(S, "234567890123"),
            format!("[auth]\n'password' = 234567890123\n{MIN}"),
            // The token typed where its variable's name, or its file, belongs.
            format!("[auth]\npassword_env = \"{S}-+!\"\n{MIN}"),
            format!("[auth]\npassword_file = \"{S}-+!\"\n{MIN}"),
            // A header left unclosed or run into its key, and words after an unquoted value:
            // the line is not repeated past its key.
            format!("[auth password = \"{S}\"\n{MIN}"),
            format!("[[listener password = \"{S}\"\n{MIN}"),
            format!("[auth]password = \"{S}\"\n{MIN}"),
            format!("[tls]\nmin_version = 1.2 password = \"{S}\"\n{MIN}"),
            format!("{MIN}listen = 127.0.0.1:6379 password = \"{S}\"\n"),
            format!("max_clients[apassword = \"{S}\"\n{MIN}"),
            // A token that looks like a variable's name, or is not quoted, or has a `/`.
            format!("[auth]\npassword_env = \"{S}\"\n{MIN}"),
            format!("[auth]\npassword_env = {S}\n{MIN}"),
            format!("[auth]\npassword_file = {S}\n{MIN}"),
            format!("[auth]\npassword_file = \"/{S}\"\n{MIN}"),
            // The secret pasted where the loader names things.
            format!("[auth]\npassword = \"{S}\"\n[[listen{S}\"\n{MIN}"),
        ];
        for text in cases {
            let e = err(&text);
            assert!(!e.contains(S) && !e.contains("234567890123"), "{e}");
            assert!(e.starts_with("t.toml:"), "{e}");
        }
    }

    #[test]
    fn secret_files_others_can_read_are_named_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "file-token-123456\n").unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!("[auth]\npassword_file = \"{}\"\n{MIN}", tok.display());
        let c = Config::from_toml(&text, "t.toml").unwrap();
        let w = c.exposed_secrets();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains(&tok.display().to_string()) && w[0].contains("mode 0644"));
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(c.exposed_secrets().is_empty());
    }

    #[test]
    fn upstream_forms() {
        let p = |s: &str| s.parse::<UpstreamAddr>();
        assert_eq!(p("[::1]:6379").unwrap().to_string(), "[::1]:6379");
        assert_eq!(p("master.x.cache.amazonaws.com:6379").unwrap().port, 6379);
        assert!(p("::1:6379").is_err());
        assert!(p("h:0").is_err());
        assert!(p(":6379").is_err());
    }

    #[test]
    fn single_listener_from_flags() {
        let c = Config::single(&SingleListener {
            listen: "127.0.0.1:0".into(),
            upstream: "localhost:1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        let e = Config::single(&SingleListener {
            listen: "nope".into(),
            upstream: "localhost:1".into(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("command line: listener.listen: "), "{e}");
    }
}
