//! The config file: raw serde structs (`raw`, unknown keys rejected) → checks (`validate`)
//! → the typed [`Config`] defined here.
//!
//! Every error names where it came from (`file:line`, or `command line`) and the key at fault,
//! because the person reading it is editing that file right now.

mod auth;
mod raw;
pub mod secret;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use rustls_pki_types::ServerName;

pub use auth::{DEFAULT_IAM_REAUTH, DEFAULT_IAM_REFRESH};
pub use secret::Secret;
pub(crate) use validate::server_name_for;

use raw::*;
use validate::{Source, unspanned, validate};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalive probes: a vanished peer is given up after about a minute.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Redis's own default `maxclients`.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Well under the 65,000 connections an ElastiCache node accepts, so that several tunnels (and
/// the applications that connect directly) fit beside one another.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Threads forwarding traffic. One thread serves tens of thousands of requests a second
    /// and lets the clients of a shared session queue into one write; read at start only.
    pub threads: usize,
    pub listeners: Vec<ListenerConfig>,
    /// `[admin] listen`: the HTTP endpoint for /metrics, /healthz, /readyz.
    pub admin: Option<SocketAddr>,
}

/// One `[[listener]]`, with the top-level defaults already merged in.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Candidate endpoints, tried in order.
    pub upstreams: Vec<Upstream>,
    /// Which node may serve: checked on each new session (HELLO's role, or ROLE).
    pub role: Role,
    /// Whether the upstream is a cluster whose node addresses are rewritten to local ones.
    pub cluster: ClusterMode,
    /// The local ports node listeners take (on the IP of `listen`); `None`: ephemeral ports.
    pub cluster_ports: Option<std::ops::RangeInclusive<u16>>,
    pub pool: PoolConfig,
    pub tls: Arc<ClientConfig>,
    pub insecure_skip_verify: bool,
    /// `None`: inject nothing, the client authenticates itself.
    pub auth: Option<UpstreamAuth>,
    pub connect_timeout: Duration,
    /// `tcp_keepalive` on client and upstream sockets; `None` turns it off.
    pub keepalive: Option<Duration>,
    pub protocol: Protocol,
    /// What the tunnel does with the client's own AUTH.
    pub client_auth: ClientAuth,
    /// `client_key`, kept to warn when others can read it.
    pub client_key: Option<PathBuf>,
    /// Clients connected at once; one more is answered as Redis answers past `maxclients`.
    pub max_clients: usize,
    /// Upstream sessions open at once (pooled, shared, a client's own); past it a client waits
    /// up to `connect_timeout` for one to be freed.
    pub max_sessions: usize,
    /// A client with nothing sent or received for this long, and nothing owed, is closed (as
    /// Redis's `timeout`); `None`: never.
    pub client_idle_timeout: Option<Duration>,
}

impl ListenerConfig {
    /// The candidates as the config wrote them, for logs and error replies.
    pub fn upstream_list(&self) -> String {
        let names: Vec<String> = self.upstreams.iter().map(|u| u.addr.to_string()).collect();
        names.join(",")
    }
}

/// One candidate endpoint and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    /// Sent as SNI and verified against the certificate.
    pub server_name: ServerName<'static>,
}

/// `cluster`: whether node addresses in replies are rewritten to node listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterMode {
    /// As the server says when a session is made (`HELLO`'s `mode`).
    #[default]
    Auto,
    On,
    Off,
}

impl fmt::Display for ClusterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterMode::Auto => "auto",
            ClusterMode::On => "on",
            ClusterMode::Off => "off",
        })
    }
}

/// `role`: which kind of node a session may be made to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Any,
    Primary,
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Any => "any",
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// `[pool]` / `[listener.pool]`: authenticated upstream sessions kept ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Sessions kept dialled and authenticated while no client needs them.
    pub min_idle: usize,
    pub max_idle: usize,
    /// Return a session to the pool (after RESET + AUTH) when its client leaves cleanly.
    pub reuse: bool,
    /// An idle session older than this is replaced; an active one is never cut.
    pub max_lifetime: Duration,
    /// Idle sessions are PINGed this often; a dead one is replaced.
    pub health_interval: Duration,
    /// Upstream sessions shared by the listener's clients for plain data commands (GET, SET,
    /// …); a client that sends anything else gets a session of its own from then on. 0 gives
    /// every client its own session from the start.
    pub multiplex: usize,
    /// A shared session that owes a reply and receives nothing for this long is declared dead
    /// (a node that vanished without a reset would otherwise hold its clients forever).
    pub shared_reply_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: 2,
            max_idle: 64,
            reuse: true,
            max_lifetime: Duration::from_secs(3600),
            health_interval: Duration::from_secs(15),
            multiplex: 2,
            shared_reply_timeout: Duration::from_secs(30),
        }
    }
}

/// `protocol = "resp" | "raw"`: RESP-aware session, or a plain byte pipe for non-Redis TLS
/// services (e.g. Memcached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp,
    Raw,
}

/// `[client_auth] mode`: the client's AUTH is forwarded, answered by the tunnel, or demanded
/// by the tunnel before anything is forwarded.
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    #[default]
    Passthrough,
    Absorb,
    Require(Credentials),
}

/// What the tunnel sends as `AUTH [username] password`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Secret,
    /// The `password_file` it was read from, watched for rotation.
    pub file: Option<PathBuf>,
}

/// `[auth]`: what the tunnel presents upstream as `AUTH [username] <secret>`.
#[derive(Debug, Clone)]
pub struct UpstreamAuth {
    pub username: Option<String>,
    pub method: AuthMethod,
}

#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// One password, or two live ones while a token is rotated, in the order given.
    Passwords(Vec<Password>),
    /// Tokens signed with the AWS credentials the tunnel finds (`[auth.iam]`).
    Iam(IamAuth),
}

/// One password and where it came from, so the log can say which one the server took.
#[derive(Debug, Clone)]
pub struct Password {
    pub secret: Secret,
    /// The variable's name, the file (`line N of` it), or `password`.
    pub source: String,
    /// The `password_file` it was read from, watched for rotation.
    pub file: Option<PathBuf>,
}

/// `[auth.iam]`.
#[derive(Debug, Clone)]
pub struct IamAuth {
    /// Replication group id, serverless cache name or MemoryDB cluster name, lower-cased.
    pub cache: String,
    /// `None`: from the endpoint's name, else the AWS SDK's region chain.
    pub region: Option<String>,
    pub service: crate::auth::iam::Service,
    pub serverless: bool,
    /// How often a new token is signed.
    pub refresh: Duration,
    /// Age at which a session authenticates again with a fresh token.
    pub reauth_after: Duration,
    /// Where tokens come from: the AWS SDK's credentials chain, or a test's own.
    pub source: Arc<dyn crate::auth::iam::TokenSource>,
}

impl UpstreamAuth {
    /// The `password_file`s it reads.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        let passwords = match &self.method {
            AuthMethod::Passwords(p) => p.as_slice(),
            AuthMethod::Iam(_) => &[],
        };
        passwords.iter().filter_map(|p| p.file.as_ref())
    }

    pub fn iam(&self) -> Option<&IamAuth> {
        match &self.method {
            AuthMethod::Iam(iam) => Some(iam),
            AuthMethod::Passwords(_) => None,
        }
    }
}

/// `host:port` of an upstream, kept as a name so DNS is resolved at every connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for UpstreamAddr {
    type Err = String;

    /// `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("`{s}` is not [IPv6]:port"))?;
            (host, port)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| format!("`{s}` has no port; expected host:port"))?
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host; expected host:port"));
        }
        if host.contains(':') && !s.starts_with('[') {
            return Err(format!(
                "`{s}`: write an IPv6 address in brackets, [addr]:port"
            ));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: port must be 1-65535"))?;
        Ok(UpstreamAddr {
            host: host.to_owned(),
            port,
        })
    }
}

/// A config problem: where, which key, what is wrong. Each message is whole, causes included
/// (none is also a `source()`, which a chain printer would repeat).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("no config: pass -c FILE, set ECTUNNEL_CONFIG, or use --listen and --upstream")]
    Missing,
}

/// The values a one-listener tunnel takes from command-line flags instead of a file.
#[derive(Debug, Clone, Default)]
pub struct SingleListener {
    pub listen: String,
    pub upstream: String,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub admin: Option<String>,
}

impl Config {
    /// The `password_file`s in use: a change to one (a rotated secret) triggers a reload.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .listeners
            .iter()
            .flat_map(|l| {
                let client = match &l.client_auth {
                    ClientAuth::Require(c) => c.file.clone(),
                    _ => None,
                };
                let upstream = l.auth.iter().flat_map(|a| a.files().cloned());
                upstream.chain(client)
            })
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Secret files (`password_file`s, `client_key`s) that other users can read, each as a
    /// line naming the file and its mode: `run` logs them at WARN (at start and on reload) and
    /// `check` prints them. Such a file still works; whoever else is on the machine can read it.
    pub fn exposed_secrets(&self) -> Vec<String> {
        let mut files = self.secret_files();
        files.extend(self.listeners.iter().filter_map(|l| l.client_key.clone()));
        files.sort();
        files.dedup();
        files
            .iter()
            .filter_map(|f| {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(f).ok()?.permissions().mode() & 0o7777;
                (mode & 0o004 != 0).then(|| {
                    format!(
                        "secret file {} is readable by other users (mode {mode:04o}); chmod 600 it (or 640 for a group)",
                        f.display()
                    )
                })
            })
            .collect()
    }

    /// Reads and validates a config file. Relative paths in it (`ca_file`, `password_file`,
    /// ...) are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        // The text may hold an inline `password`: wiped when dropped, as the secret is.
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
            ConfigError::Read {
                path: path.to_owned(),
                error,
            }
        })?);
        let source = Source {
            name: path.display().to_string(),
            text: Some(&text),
            dir: Some(path.parent().unwrap_or(Path::new(""))),
        };
        Config::parse(&source)
    }

    /// Parses and validates TOML text; `name` is what errors call the file. Relative paths stay
    /// relative to the working directory: there is no file to be relative to.
    pub fn from_toml(text: &str, name: &str) -> Result<Config, ConfigError> {
        Config::parse(&Source {
            name: name.to_owned(),
            text: Some(text),
            dir: None,
        })
    }

    fn parse(source: &Source<'_>) -> Result<Config, ConfigError> {
        let text = source.text.unwrap_or_default();
        let raw: RawConfig = toml::from_str(text).map_err(|e| source.parse_error(&e))?;
        validate(raw, source)
    }

    /// A one-listener tunnel from `--listen/--upstream/...`, validated like a file.
    pub fn single(args: &SingleListener) -> Result<Config, ConfigError> {
        let raw = RawConfig {
            tls: Some(RawTls {
                ca_file: args.ca_file.clone().map(unspanned),
                server_name: args.server_name.clone().map(unspanned),
                ..RawTls::default()
            }),
            auth: args.password_env.clone().map(|env| {
                unspanned(RawAuth {
                    username: args.username.clone().map(unspanned),
                    password_env: Some(unspanned(RawNames::One(env))),
                    password_file: None,
                    password: None,
                    iam: None,
                })
            }),
            admin: Some(RawAdmin {
                listen: args.admin.clone().map(unspanned),
            }),
            listener: vec![unspanned(RawListener {
                name: None,
                listen: unspanned(args.listen.clone()),
                upstream: unspanned(RawUpstreams::One(args.upstream.clone())),
                role: None,
                cluster: None,
                cluster_ports: None,
                pool: None,
                tls: None,
                auth: None,
                protocol: None,
                client_auth: None,
                allow_unauthenticated: None,
                max_clients: None,
                max_sessions: None,
                client_idle_timeout: None,
            })],
            ..RawConfig::default()
        };
        if args.username.is_some() && args.password_env.is_none() {
            return Err(ConfigError::Invalid {
                origin: "command line".into(),
                key: "--username".into(),
                message: "needs --password-env to name the variable holding the password".into(),
            });
        }
        validate(
            raw,
            &Source {
                name: "command line".into(),
                text: None,
                dir: None,
            },
        )
    }
}

#[cfg(test)]
mod shipped_examples {
    use super::*;

    /// The example configs in config/ must stay valid as the format evolves.
    #[test]
    fn config_redis_cli_toml_parses() {
        let text = include_str!("../../config/redis-cli.toml").replace(
            "password_env = \"REDIS_AUTH\"",
            "password = \"example-token-0000\"",
        );
        let c = Config::from_toml(&text, "config/redis-cli.toml").unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.listeners[0].upstreams[0].server_name.to_str(),
            "master.ssltest.wif01h.use1.cache.amazonaws.com"
        );
    }
}
