//! `ectunnel iam-token`: one IAM auth token on stdout, signed as the tunnel signs its own, for
//! `redis-cli --user U --pass "$(ectunnel iam-token …)"` or to check what the tunnel would send.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::ValueEnum;

use crate::auth::iam::{AwsSource, Service, TokenRequest, presign, sdk_region};

/// What `iam-token` signs for.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What the token is for: the replication group id (node-based ElastiCache), the cache name
    /// (serverless) or the MemoryDB cluster name; not the endpoint's DNS name.
    #[arg(long, value_name = "NAME")]
    cache: String,
    /// The user id to AUTH as (a user with IAM authentication).
    #[arg(long, value_name = "USER")]
    user: String,
    /// AWS region of the cache [default: the AWS SDK's: AWS_REGION, the profile, instance
    /// metadata].
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// The service the cache belongs to.
    #[arg(long, value_enum, default_value_t = ServiceArg::Elasticache)]
    service: ServiceArg,
    /// The cache is an ElastiCache Serverless cache.
    #[arg(long)]
    serverless: bool,
    /// Sign as of this time instead of now (RFC 3339, e.g. 2025-01-01T00:00:00Z), to compare
    /// with another signer. The server accepts a token for 15 minutes from then.
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339)]
    at: Option<SystemTime>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ServiceArg {
    Elasticache,
    Memorydb,
}

fn rfc3339(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}: give a time like 2025-01-01T00:00:00Z"))
}

/// Prints the token and a newline, nothing else on stdout. Exit 2 for a request that cannot be
/// right (no region, a malformed name), 1 when no credentials could be had.
pub fn run(args: &Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        let Some(region) = region(args).await else {
            return fail(
                2,
                "no AWS region: give --region, or set AWS_REGION (or a region in the AWS profile)",
            );
        };
        let req = TokenRequest {
            cache: args.cache.clone(),
            user: args.user.clone(),
            region,
            service: match args.service {
                ServiceArg::Elasticache => Service::ElastiCache,
                ServiceArg::Memorydb => Service::MemoryDb,
            },
            serverless: args.serverless,
        };
        if let Err(e) = req.validate() {
            return fail(2, &e);
        }
        let signed = match AwsSource::default().credentials().await {
            Ok(creds) => presign(&req, &creds, args.at.unwrap_or_else(SystemTime::now)),
            Err(e) => Err(e),
        };
        match signed {
            Ok(token) => {
                println!("{}", token.secret.expose());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e.to_string()),
        }
    })
}

async fn region(args: &Args) -> Option<String> {
    match &args.region {
        Some(r) => Some(r.clone()),
        None => sdk_region().await,
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("ectunnel: {message}");
    ExitCode::from(code)
}
