//! The command line: parse, set up logging, load the config, run; map failures to exit codes
//! (2 usage/config, 1 runtime). Also the process-level duties: signals, reload triggers, and
//! systemd notifications.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sd_notify::NotifyState;

use crate::config::{Config, ConfigError, SingleListener};
use crate::limits::SECRET_POLL;
use crate::server::{Reloader, Server};

/// TLS tunnel for Redis clients that cannot speak TLS: plain RESP in, verified TLS (and AUTH) out.
#[derive(Parser, Debug)]
#[command(name = "ectunnel", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the tunnel (the default when no command is given).
    Run {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Validate the config; with --connect also dial every upstream and report.
    Check {
        #[command(flatten)]
        source: SourceArgs,
        /// Dial each upstream (DNS, TCP, TLS, AUTH, PING) and print one line per listener.
        #[arg(long)]
        connect: bool,
    },
    /// Exit 0 if the running tunnel's /readyz says ready, 1 otherwise (container health checks).
    Health {
        /// The admin endpoint of the running tunnel.
        #[arg(
            long,
            value_name = "ADDR",
            env = "ECTUNNEL_ADMIN",
            default_value = "127.0.0.1:9121"
        )]
        admin: String,
    },
    /// Print an IAM auth token for ElastiCache or MemoryDB, signed with the AWS SDK's default
    /// credentials (environment, profile, web identity, container or instance role).
    ///
    /// The token is what the tunnel sends as `AUTH <user> <token>`; it is valid for 15 minutes.
    /// Only the token and a newline go to stdout. Exit 1 when no credentials could be had, 2 for
    /// a usage error or no region.
    IamToken {
        #[command(flatten)]
        args: crate::tools::iam_token::Args,
    },
    /// Print an ectunnel config equivalent to an stunnel client configuration.
    ConvertStunnel {
        /// The stunnel configuration file, e.g. /etc/stunnel/redis-cli.conf, or - for standard input.
        file: PathBuf,
    },
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `ectunnel man | man -l -` shows it.
    Man {
        /// Write ectunnel.1 and one page per command (ectunnel-check.1, …) into DIR instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Where the config comes from: a file, or flags (or their environment variables, for
/// containers) for a one-listener tunnel.
#[derive(Args, Debug, Clone)]
struct SourceArgs {
    /// Config file (TOML). Falls back to $ECTUNNEL_CONFIG.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// One-listener mode: local address to listen on, e.g. 127.0.0.1:6379.
    #[arg(
        long,
        value_name = "ADDR",
        env = "ECTUNNEL_LISTEN",
        requires = "upstream",
        conflicts_with = "config"
    )]
    listen: Option<String>,
    /// One-listener mode: the TLS Redis endpoint, HOST:PORT.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "ECTUNNEL_UPSTREAM",
        requires = "listen"
    )]
    upstream: Option<String>,
    /// PEM file of CA certificates to trust instead of the built-in Mozilla roots.
    #[arg(
        long,
        value_name = "FILE",
        env = "ECTUNNEL_CA_FILE",
        requires = "listen"
    )]
    ca_file: Option<PathBuf>,
    /// Name to send as SNI and verify the certificate against (default: the upstream host).
    #[arg(
        long,
        value_name = "NAME",
        env = "ECTUNNEL_SERVER_NAME",
        requires = "listen"
    )]
    server_name: Option<String>,
    /// ACL user to AUTH as (needs --password-env).
    #[arg(
        long,
        value_name = "USER",
        env = "ECTUNNEL_USERNAME",
        requires = "password_env"
    )]
    username: Option<String>,
    /// Environment variable holding the AUTH token or password to inject.
    #[arg(
        long,
        value_name = "VAR",
        env = "ECTUNNEL_PASSWORD_ENV",
        requires = "listen"
    )]
    password_env: Option<String>,
    /// Serve /metrics, /healthz, /readyz on this address (overrides the file's [admin]).
    #[arg(long, value_name = "ADDR", env = "ECTUNNEL_ADMIN")]
    admin: Option<String>,
}

#[derive(Args, Debug)]
struct LogArgs {
    /// Log verbosity. Secrets are never logged, at any level.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let log_format = cli.log.log_format;
    let (source, check) = match cli.command {
        None => (cli.source, None),
        Some(Command::Run { source }) => (source, None),
        Some(Command::Check { source, connect }) => (source, Some(connect)),
        Some(Command::Health { admin }) => return health(&admin),
        Some(Command::IamToken { args }) => return crate::tools::iam_token::run(&args),
        Some(Command::ConvertStunnel { file }) => return convert_stunnel(&file, log_format),
        Some(Command::Completions { shell }) => {
            return crate::tools::docs::completions(
                shell,
                <Cli as clap::CommandFactory>::command(),
            );
        }
        Some(Command::Man { dir }) => {
            return crate::tools::docs::man(
                <Cli as clap::CommandFactory>::command(),
                dir.as_deref(),
            );
        }
    };
    let file = config_path(&source);
    let config = match load(&source, file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            fatal(log_format, &format!("config error: {e}"));
            return ExitCode::from(2);
        }
    };
    match execute(config, file, check) {
        Ok(code) => code,
        Err(e) => {
            fatal(log_format, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

/// Reports the error that ends the process. Under `--log-format json` it is a log event (level
/// ERROR) like every other line, since whatever reads stderr then expects one JSON object per
/// line; as text it is a plain message, for a person at a terminal.
fn fatal(log_format: LogFormat, message: &str) {
    match log_format {
        LogFormat::Json => tracing::error!("{message}"),
        LogFormat::Text => eprintln!("ectunnel: {message}"),
    }
}

/// One thread: every task on one scheduler, with no cross-thread wake-ups (measured in
/// README, Performance); more only when `threads` asks for them.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn execute(config: Config, file: Option<PathBuf>, check: Option<bool>) -> anyhow::Result<ExitCode> {
    runtime(config.threads)?.block_on(async {
        if let Some(connect) = check {
            let ok = crate::ops::check::check(&config, connect).await;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        let secrets = config.secret_files();
        // Before READY=1: from then on `systemctl reload` may send SIGHUP at any moment, and
        // its default action would end the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let stop = crate::shutdown::Signals::install()
            .context("cannot install the SIGINT and SIGTERM handlers")?;
        let server = Server::bind(config).await?;
        tokio::spawn(reload_on_demand(file, secrets, server.reloader(), hup));
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        if let Some(period) = sd_notify::watchdog_enabled() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period / 2);
                loop {
                    tick.tick().await;
                    notify(&[NotifyState::Watchdog]);
                }
            });
        }
        server
            .run(async {
                stop.recv().await;
                notify(&[NotifyState::Stopping]);
            })
            .await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Tells systemd (when it started us with `Type=notify`) what is going on; a no-op elsewhere.
fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Reloads on SIGHUP, and when a `password_file` changes (a rotated secret), re-reading the
/// config file each time. An invalid file is reported and the running config stays.
async fn reload_on_demand(
    file: Option<PathBuf>,
    mut secrets: Vec<PathBuf>,
    reloader: Reloader,
    mut hup: tokio::signal::unix::Signal,
) {
    let Some(file) = file else {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP received; nothing to reload: the configuration comes from flags"
            );
        }
        return;
    };
    let mut seen = fingerprint(&secrets);
    let mut poll = tokio::time::interval(SECRET_POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => tracing::info!("SIGHUP received: reloading {}", file.display()),
            _ = poll.tick() => {
                let now = fingerprint(&secrets);
                if now == seen {
                    continue;
                }
                tracing::info!("a password_file changed: reloading {}", file.display());
            }
        }
        notify(&[NotifyState::Reloading, monotonic_now()]);
        let config = Config::from_file(&file).map_err(|e| e.to_string());
        if let Ok(c) = &config {
            secrets = c.secret_files();
        }
        // Whatever the outcome, this version of the files has been dealt with.
        seen = fingerprint(&secrets);
        let _ = reloader.reload(config).await;
        notify(&[NotifyState::Ready]);
    }
}

fn monotonic_now() -> NotifyState<'static> {
    NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading"))
}

/// The contents of the watched files (a change of any byte, or of existence, counts).
fn fingerprint(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

fn health(admin: &str) -> ExitCode {
    let result = runtime(1).map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                crate::ops::admin::check_ready(admin),
            )
            .await
            .map_err(|_| format!("{admin}: no answer within 5s"))?
        })
    });
    match result {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ectunnel: {e}");
            ExitCode::from(1)
        }
    }
}

/// `convert-stunnel FILE`, or `-` for standard input (`cat stunnel.conf | ectunnel
/// convert-stunnel -`). The converter's errors already name the input and line.
fn convert_stunnel(file: &Path, log_format: LogFormat) -> ExitCode {
    let (name, read) = if file == Path::new("-") {
        (
            "stdin".to_owned(),
            std::io::read_to_string(std::io::stdin()),
        )
    } else {
        (file.display().to_string(), std::fs::read_to_string(file))
    };
    let text = match read {
        Ok(t) => t,
        Err(e) => {
            fatal(log_format, &format!("{name}: cannot read: {e}"));
            return ExitCode::from(2);
        }
    };
    match crate::tools::stunnel::convert(&text, &name) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            fatal(log_format, &e.to_string());
            ExitCode::from(2)
        }
    }
}

fn config_path(source: &SourceArgs) -> Option<PathBuf> {
    if source.listen.is_some() {
        return None;
    }
    source
        .config
        .clone()
        .or_else(|| std::env::var_os("ECTUNNEL_CONFIG").map(PathBuf::from))
}

fn load(source: &SourceArgs, file: Option<&Path>) -> Result<Config, ConfigError> {
    if let (Some(listen), Some(upstream)) = (&source.listen, &source.upstream) {
        return Config::single(&SingleListener {
            listen: listen.clone(),
            upstream: upstream.clone(),
            ca_file: source.ca_file.clone(),
            server_name: source.server_name.clone(),
            username: source.username.clone(),
            password_env: source.password_env.clone(),
            admin: source.admin.clone(),
        });
    }
    let mut config = Config::from_file(file.ok_or(ConfigError::Missing)?)?;
    if let Some(admin) = &source.admin {
        config.admin = Some(admin.trim().parse().map_err(|_| ConfigError::Invalid {
            origin: "command line".into(),
            key: "--admin".into(),
            message: format!("`{admin}` is not an IP:port address, e.g. 127.0.0.1:9121"),
        })?);
    }
    Ok(config)
}

fn init_logging(args: &LogArgs) {
    let level = match args.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod reference {
    //! The "Command line" part of docs/configuration.md against the clap definition: a command
    //! or flag in one and not the other is a drift this test catches.

    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::Cli;

    /// Commands and long flags as clap knows them (help and version included).
    fn code() -> (BTreeSet<String>, BTreeSet<String>) {
        let mut cli = Cli::command();
        cli.build();
        let mut commands = BTreeSet::new();
        let mut flags = BTreeSet::new();
        let mut add_flags = |cmd: &clap::Command| {
            flags.extend(
                cmd.get_arguments()
                    .filter_map(|a| a.get_long())
                    .map(|l| format!("--{l}")),
            );
        };
        add_flags(&cli);
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            commands.insert(sub.get_name().to_owned());
            add_flags(sub);
        }
        (commands, flags)
    }

    /// Commands (first cells that are one bare word) and flags (every `--x` of a first cell) of
    /// the reference's tables below "## Command line".
    fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let text = std::fs::read_to_string(path).expect("docs/configuration.md");
        let section = text
            .split("## Command line")
            .nth(1)
            .expect("a Command line section");
        let (mut commands, mut flags) = (BTreeSet::new(), BTreeSet::new());
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("").trim();
            for word in first.split(['`', ',', ' ']).filter(|w| !w.is_empty()) {
                if word.starts_with("--") {
                    flags.insert(word.to_owned());
                } else if !word.starts_with('-')
                    && word.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                {
                    commands.insert(word.to_owned());
                }
            }
        }
        (commands, flags)
    }

    #[test]
    fn every_command_and_flag_is_in_the_reference_and_nothing_else() {
        let ((commands, flags), (doc_commands, doc_flags)) = (code(), documented());
        assert_eq!(
            commands, doc_commands,
            "commands: code (left) vs docs/configuration.md"
        );
        assert_eq!(
            flags, doc_flags,
            "flags: code (left) vs docs/configuration.md"
        );
        assert!(flags.contains("--log-format") && commands.contains("check"));
    }
}
