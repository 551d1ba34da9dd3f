//! `[auth]` / `[listener.auth]` and `[client_auth]`'s password: the secrets resolved now (a
//! missing variable or an unreadable file is a config error at start, not a failed AUTH later),
//! or `[auth.iam]`'s settings, whose tokens are signed at run time.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use zeroize::Zeroizing;

use super::raw::{RawAuth, RawIam, RawNames};
use super::validate::{Source, is_env_name};
use super::{AuthMethod, Credentials, IamAuth, Password, Secret, UpstreamAuth};
use crate::auth::iam::{AwsSource, Service};

/// A token lives 15 minutes; a refresh this often leaves most of it for a session dialled just
/// before the next one.
pub const DEFAULT_IAM_REFRESH: Duration = Duration::from_secs(5 * 60);
/// ElastiCache cuts an IAM-authenticated connection after 12 hours; an hour of margin.
pub const DEFAULT_IAM_REAUTH: Duration = Duration::from_secs(11 * 3600);
const IAM_CUT: Duration = Duration::from_secs(12 * 3600);
/// The longest `refresh`: a token then has 5 of its 15 minutes left when the next is signed,
/// room for a slow credentials provider.
const MAX_IAM_REFRESH: Duration = Duration::from_secs(10 * 60);
/// ElastiCache keeps at most two AUTH tokens valid at once (`ROTATE`, then `SET`).
const MAX_PASSWORDS: usize = 2;

/// `[auth]`: a password (two during a rotation) or `[auth.iam]`.
pub(super) fn upstream_auth(
    auth: &Spanned<RawAuth>,
    table: &str,
    src: &Source<'_>,
) -> Result<UpstreamAuth, super::ConfigError> {
    let a = auth.get_ref();
    let username = username(a, table, src)?;
    let Some(iam) = &a.iam else {
        let passwords = passwords(auth, table, src)?;
        return Ok(UpstreamAuth {
            username,
            method: AuthMethod::Passwords(passwords),
        });
    };
    let table = format!("{table}.iam");
    if a.password_env.is_some() || a.password_file.is_some() || a.password.is_some() {
        return Err(src.invalid(
            &auth.span(),
            &table,
            "IAM signs its own tokens: remove password_env, password_file and password",
        ));
    }
    if username.is_none() {
        return Err(src.invalid(
            &iam.span(),
            &table,
            "needs `username`: the IAM-enabled ElastiCache or MemoryDB user",
        ));
    }
    Ok(UpstreamAuth {
        username,
        method: AuthMethod::Iam(iam_settings(iam, &table, src)?),
    })
}

fn iam_settings(
    iam: &Spanned<RawIam>,
    table: &str,
    src: &Source<'_>,
) -> Result<IamAuth, super::ConfigError> {
    let r = iam.get_ref();
    let cache = r.cache.get_ref().trim();
    if cache.is_empty() || !cache.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(src.invalid(
            &r.cache.span(),
            &format!("{table}.cache"),
            "must be the replication group id, serverless cache name or MemoryDB cluster name (not an endpoint)",
        ));
    }
    let service = match &r.service {
        None => Service::ElastiCache,
        Some(s) => Service::parse(s.get_ref()).ok_or_else(|| {
            src.invalid(
                &s.span(),
                &format!("{table}.service"),
                format!(
                    "`{}` is not a service; use \"elasticache\" or \"memorydb\"",
                    s.get_ref()
                ),
            )
        })?,
    };
    let region_name = |r: &str| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let region = match &r.region {
        Some(reg) if !region_name(reg.get_ref().trim()) => {
            let key = format!("{table}.region");
            let message = format!("`{}` is not an AWS region (e.g. us-east-1)", reg.get_ref());
            return Err(src.invalid(&reg.span(), &key, message));
        }
        Some(reg) => Some(reg.get_ref().trim().to_owned()),
        None => None,
    };
    let refresh = duration_below(
        r.refresh.as_ref(),
        DEFAULT_IAM_REFRESH,
        MAX_IAM_REFRESH + Duration::from_nanos(1),
        &format!("{table}.refresh"),
        "at most 10 minutes (a token lasts 15)",
        src,
    )?;
    let reauth_after = duration_below(
        r.reauth_after.as_ref(),
        DEFAULT_IAM_REAUTH,
        IAM_CUT,
        &format!("{table}.reauth_after"),
        "below the server's 12-hour cut",
        src,
    )?;
    let serverless = r.serverless.unwrap_or(false);
    if serverless && service == Service::MemoryDb {
        let key = format!("{table}.serverless");
        return Err(src.invalid(&iam.span(), &key, "MemoryDB has no serverless caches"));
    }
    Ok(IamAuth {
        cache: cache.to_ascii_lowercase(),
        region,
        service,
        serverless,
        refresh,
        reauth_after,
        source: Arc::new(AwsSource::default()),
    })
}

/// A duration key that must be above zero and below `limit` (`what` says so in words).
fn duration_below(
    v: Option<&Spanned<humantime_serde::Serde<Duration>>>,
    default: Duration,
    limit: Duration,
    key: &str,
    what: &str,
    src: &Source<'_>,
) -> Result<Duration, super::ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let d = **v.get_ref();
    if d.is_zero() || d >= limit {
        let message = format!("must be above 0 and {what}");
        return Err(src.invalid(&v.span(), key, message));
    }
    Ok(d)
}

/// `[client_auth]`'s password: the one clients must give.
pub(super) fn client_credentials(
    auth: &Spanned<RawAuth>,
    table: &str,
    src: &Source<'_>,
) -> Result<Credentials, super::ConfigError> {
    let username = username(auth.get_ref(), table, src)?;
    let mut passwords = passwords(auth, table, src)?;
    if passwords.len() != 1 {
        return Err(src.invalid(&auth.span(), table, "takes one password"));
    }
    let p = passwords.remove(0);
    Ok(Credentials {
        username,
        password: p.secret,
        file: p.file,
    })
}

fn username(
    a: &RawAuth,
    table: &str,
    src: &Source<'_>,
) -> Result<Option<String>, super::ConfigError> {
    match &a.username {
        Some(u) if u.get_ref().is_empty() => {
            Err(src.invalid(&u.span(), &format!("{table}.username"), "must not be empty"))
        }
        Some(u) => Ok(Some(u.get_ref().clone())),
        None => Ok(None),
    }
}

/// The passwords of exactly one of `password_env`, `password_file` or `password`, in the order
/// given (a list of variables, or a file's lines, while a token is rotated).
fn passwords(
    auth: &Spanned<RawAuth>,
    table: &str,
    src: &Source<'_>,
) -> Result<Vec<Password>, super::ConfigError> {
    let a = auth.get_ref();
    let given = [
        a.password_env.is_some(),
        a.password_file.is_some(),
        a.password.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(src.invalid(
            &auth.span(),
            table,
            "set exactly one of password_env, password_file or password (or an [auth.iam] table)",
        ));
    }
    if let Some(vars) = &a.password_env {
        from_env(vars, &format!("{table}.password_env"), src)
    } else if let Some(file) = &a.password_file {
        from_file(file, &format!("{table}.password_file"), src)
    } else if let Some(p) = &a.password {
        if p.get_ref().is_empty() {
            return Err(src.invalid(&p.span(), &format!("{table}.password"), "must not be empty"));
        }
        Ok(vec![Password {
            secret: Secret::new(p.get_ref().to_string()),
            source: "password".into(),
            file: None,
        }])
    } else {
        unreachable!("exactly one password source was checked above")
    }
}

fn from_env(
    vars: &Spanned<RawNames>,
    key: &str,
    src: &Source<'_>,
) -> Result<Vec<Password>, super::ConfigError> {
    let names = match vars.get_ref() {
        RawNames::One(n) => std::slice::from_ref(n),
        RawNames::Many(ns) => ns.as_slice(),
    };
    if names.is_empty() || names.len() > MAX_PASSWORDS {
        let message = "names one variable, or two during a token rotation (new first)";
        return Err(src.invalid(&vars.span(), key, message));
    }
    names
        .iter()
        .map(|name| from_var(name, vars, key, src))
        .collect()
}

fn from_var(
    name: &str,
    var: &Spanned<RawNames>,
    key: &str,
    src: &Source<'_>,
) -> Result<Password, super::ConfigError> {
    if !is_env_name(name) {
        // Likely the token itself, typed where its variable's name belongs: not echoed.
        return Err(src.invalid(
            &var.span(),
            key,
            "must name an environment variable (letters, digits, _), not hold the password (value not shown)",
        ));
    }
    // Its name is not repeated: it may be the token typed in its place.
    let unusable = |what: &str| {
        let message = format!(
            "the environment variable it names {what} (its name is not repeated: it may be the token)"
        );
        src.invalid(&var.span(), key, message)
    };
    let value = match std::env::var(name) {
        Ok(v) if v.is_empty() => return Err(unusable("is empty")),
        Ok(v) => Zeroizing::new(v),
        Err(std::env::VarError::NotPresent) => return Err(unusable("is not set")),
        Err(std::env::VarError::NotUnicode(_)) => return Err(unusable("is not valid UTF-8")),
    };
    Ok(Password {
        secret: Secret::new(value.to_string()),
        source: name.to_owned(),
        file: None,
    })
}

/// A file holding the token, or two tokens on two lines during a rotation (new first).
fn from_file(
    file: &Spanned<std::path::PathBuf>,
    key: &str,
    src: &Source<'_>,
) -> Result<Vec<Password>, super::ConfigError> {
    let path = &src.path(file.get_ref());
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        let message = if path.symlink_metadata().is_ok() {
            // It is there, so the value is a path, not a token.
            format!("cannot read password file {}: {e}", path.display())
        } else {
            // Nothing there: a password typed where its file belongs would be echoed. The
            // line and key say which value, the message says where it was looked for.
            let place = match src.dir {
                _ if file.get_ref().is_absolute() => "",
                Some(_) => " in the config file's directory",
                None => " in the working directory",
            };
            format!("no such file{place} (the value is not repeated here)")
        };
        src.invalid(&file.span(), key, message)
    })?);
    // Secret files written by editors, `echo` or Kubernetes often end in a newline that is not
    // part of the token; a token never holds one, so each line is a token.
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let problem = match lines.len() {
        0 => Some(format!("password file {} is empty", path.display())),
        n if n > MAX_PASSWORDS => Some(format!(
            "password file {} holds {n} lines: one token, or two during a rotation (new first)",
            path.display()
        )),
        _ => None,
    };
    if let Some(message) = problem {
        return Err(src.invalid(&file.span(), key, message));
    }
    let several = lines.len() > 1;
    Ok(lines
        .into_iter()
        .map(|(i, line)| Password {
            secret: Secret::new(line),
            source: if several {
                format!("line {} of {}", i + 1, path.display())
            } else {
                path.display().to_string()
            },
            file: Some(path.clone()),
        })
        .collect())
}
