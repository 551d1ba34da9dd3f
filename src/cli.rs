//! The command line: parse, set up logging, load the config, run; map failures to exit codes
//! (2 usage/config, 1 runtime).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, SingleListener};

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
}

/// Where the config comes from: a file, or flags for a one-listener tunnel.
#[derive(Args, Debug, Clone)]
struct SourceArgs {
    /// Config file (TOML). Falls back to $ECTUNNEL_CONFIG.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// One-listener mode: local address to listen on, e.g. 127.0.0.1:6379.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "upstream",
        conflicts_with = "config"
    )]
    listen: Option<String>,
    /// One-listener mode: the TLS Redis endpoint, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", requires = "listen")]
    upstream: Option<String>,
    /// PEM file of CA certificates to trust instead of the built-in Mozilla roots.
    #[arg(long, value_name = "FILE", requires = "listen")]
    ca_file: Option<PathBuf>,
    /// Name to send as SNI and verify the certificate against (default: the upstream host).
    #[arg(long, value_name = "NAME", requires = "listen")]
    server_name: Option<String>,
    /// ACL user to AUTH as (needs --password-env).
    #[arg(long, value_name = "USER", requires = "password_env")]
    username: Option<String>,
    /// Environment variable holding the AUTH token or password to inject.
    #[arg(long, value_name = "VAR", requires = "listen")]
    password_env: Option<String>,
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
    let (source, check) = match cli.command {
        None => (cli.source, None),
        Some(Command::Run { source }) => (source, None),
        Some(Command::Check { source, connect }) => (source, Some(connect)),
    };
    let config = match load(&source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ectunnel: config error: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(config, check) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ectunnel: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn execute(config: Config, check: Option<bool>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match check {
            Some(connect) => Ok(if crate::check::check(&config, connect).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }),
            None => {
                crate::run(config, crate::shutdown::signal()).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn load(source: &SourceArgs) -> Result<Config, ConfigError> {
    if let (Some(listen), Some(upstream)) = (&source.listen, &source.upstream) {
        return Config::single(&SingleListener {
            listen: listen.clone(),
            upstream: upstream.clone(),
            ca_file: source.ca_file.clone(),
            server_name: source.server_name.clone(),
            username: source.username.clone(),
            password_env: source.password_env.clone(),
        });
    }
    let path = source
        .config
        .clone()
        .or_else(|| std::env::var_os("ECTUNNEL_CONFIG").map(PathBuf::from))
        .ok_or(ConfigError::Missing)?;
    Config::from_file(&path)
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
