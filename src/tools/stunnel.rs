//! `ectunnel convert-stunnel FILE`: an stunnel client configuration to ectunnel TOML.
//!
//! Every stunnel option read is echoed as a `# stunnel:` comment saying what became of it, so the
//! person migrating can see that nothing was dropped silently. The result is a complete config;
//! the files it names (ca_file, client_cert, client_key) are only read when ectunnel loads it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rustls_pki_types::ServerName;

use crate::config::UpstreamAddr;

/// Why a stunnel file could not be converted; each names the file and, where there is one, the
/// line, because the reader is about to open that file.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{file}:{line}: expected `[service]` or `key = value`, found `{near}`")]
    Syntax {
        file: String,
        line: usize,
        near: String,
    },
    #[error("{file}:{line}: {key} = {value}: {reason}")]
    Value {
        file: String,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{file}:{line}: service [{service}] has no `{key}`")]
    Missing {
        file: String,
        line: usize,
        service: String,
        key: &'static str,
    },
    #[error("{file}:{line}: a second service is named [{service}]")]
    Duplicate {
        file: String,
        line: usize,
        service: String,
    },
    #[error("{file}: no client service (`client = yes`) found; ectunnel only originates TLS")]
    NoClientService { file: String },
}

/// One `key = value` as written, kept for its `# stunnel:` comment.
struct Opt {
    key: String,
    value: String,
    line: usize,
}

struct Section {
    name: String,
    line: usize,
    opts: Vec<Opt>,
}

/// `[name]` as a whole line or a token; `[::1]:6379` is an address, not a section.
fn section_name(s: &str) -> Option<&str> {
    let name = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    (!name.is_empty() && !name.contains(['[', ']', '='])).then_some(name)
}

enum Item {
    Section(String),
    Opt(String, String),
}

/// A flattened line, token by token: `[section]` and `key = value` in any spacing. `Err` holds
/// the token where it went wrong.
fn tokens(line: &str) -> Result<Vec<Item>, String> {
    let spaced = line.replace('=', " = ");
    let (mut toks, mut items) = (spaced.split_whitespace(), Vec::new());
    while let Some(t) = toks.next() {
        if let Some(name) = section_name(t) {
            items.push(Item::Section(name.to_owned()));
            continue;
        }
        match (toks.next(), toks.next()) {
            (Some("="), Some(v)) if t != "=" && v != "=" && section_name(v).is_none() => {
                items.push(Item::Opt(t.to_owned(), v.to_owned()))
            }
            _ => return Err(t.to_owned()),
        }
    }
    Ok(items)
}

/// Splits the file into global options and services. A line holding several options (the
/// ElastiCache guide prints its file flattened onto one line) is read token by token; an
/// ordinary line takes everything after `=` as the value, so paths with spaces survive.
fn parse(text: &str, file: &str) -> Result<(Vec<Opt>, Vec<Section>), ConvertError> {
    let (mut globals, mut sections) = (Vec::new(), Vec::<Section>::new());
    let syntax = |line, near: &str| ConvertError::Syntax {
        file: file.to_owned(),
        line,
        near: near.to_owned(),
    };
    let key_value = |l: &str| {
        let (k, v) = l.split_once('=')?;
        let k = k.trim();
        (!k.is_empty() && !k.contains(char::is_whitespace))
            .then(|| Item::Opt(k.into(), v.trim().into()))
    };
    for (i, raw) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let (n, line) = (i + 1, raw.trim());
        if line.is_empty() || line.starts_with([';', '#']) {
            continue;
        }
        let has_section = line.split_whitespace().any(|t| section_name(t).is_some());
        let items = if let Some(name) = section_name(line).filter(|_| !line.contains('=')) {
            vec![Item::Section(name.to_owned())]
        } else if has_section || line.matches('=').count() > 1 {
            match tokens(line) {
                Ok(items) => items,
                // stunnel itself splits at the first `=`: one option whose value holds `=`.
                Err(_) if !has_section && key_value(line).is_some() => {
                    key_value(line).into_iter().collect()
                }
                Err(near) => return Err(syntax(n, &near)),
            }
        } else {
            vec![key_value(line).ok_or_else(|| syntax(n, line))?]
        };
        for item in items {
            match item {
                Item::Section(name) if sections.iter().any(|s| s.name == name) => {
                    return Err(ConvertError::Duplicate {
                        file: file.to_owned(),
                        line: n,
                        service: name,
                    });
                }
                Item::Section(name) => sections.push(Section {
                    name,
                    line: n,
                    opts: Vec::new(),
                }),
                Item::Opt(key, value) => {
                    let opt = Opt {
                        key,
                        value,
                        line: n,
                    };
                    match sections.last_mut() {
                        Some(s) => s.opts.push(opt),
                        None => globals.push(opt),
                    }
                }
            }
        }
    }
    Ok((globals, sections))
}

/// What one service asks for; global service options are applied first, as stunnel defaults.
#[derive(Clone, Default)]
struct Service {
    client: Option<bool>,
    accept: Option<(String, usize)>,
    connect: Vec<(String, usize)>,
    ca_file: Option<String>,
    check_host: Option<String>,
    sni: Option<String>,
    verify_chain: bool,
    pinned: bool,
    min_version: Option<&'static str>,
    cert: Option<String>,
    key: Option<String>,
    timeout: Option<u64>,
}

const NO_EQUIVALENT: &str = "no equivalent in ectunnel; dropped";

impl Service {
    /// Takes in one option and says, for its comment, what became of it.
    fn apply(&mut self, o: &Opt, file: &str) -> Result<&'static str, ConvertError> {
        let v = o.value.as_str();
        let bad = |reason: &str| ConvertError::Value {
            file: file.to_owned(),
            line: o.line,
            key: o.key.clone(),
            value: o.value.clone(),
            reason: reason.to_owned(),
        };
        let yes = || match v.to_ascii_lowercase().as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err(bad("expected yes or no")),
        };
        let key = o.key.to_ascii_lowercase();
        if let Some(note) = self.apply_tls(&key, v, &bad, &yes)? {
            return Ok(note);
        }
        let note = match key.as_str() {
            "client" => {
                self.client = Some(yes()?);
                if self.client == Some(true) {
                    "a TLS client service: converted to a listener"
                } else {
                    "stunnel terminates TLS here; ectunnel only originates TLS: skipped"
                }
            }
            "accept" => {
                self.accept = Some((v.to_owned(), o.line));
                "→ listen"
            }
            "connect" => {
                self.connect.push((v.to_owned(), o.line));
                "→ upstream (several are candidates, tried in order)"
            }
            "delay" => {
                yes()?;
                "ectunnel resolves DNS on every connect anyway"
            }
            "timeoutconnect" => match v.parse::<u64>() {
                Ok(0) => "0 is not a usable timeout; ectunnel's default (5s) applies",
                Ok(secs) => {
                    self.timeout = Some(secs);
                    "→ connect_timeout (one value for all listeners)"
                }
                Err(_) => return Err(bad("expected whole seconds")),
            },
            "setuid" | "setgid" | "pid" | "foreground" | "chroot" => {
                "process management: run ectunnel under systemd or docker instead"
            }
            "output" | "syslog" => "ectunnel logs to stderr; let systemd or docker collect it",
            "debug" => "use ectunnel --log-level (error|warn|info|debug|trace)",
            "failover" => "ectunnel tries the upstream candidates in order (like prio)",
            _ => NO_EQUIVALENT,
        };
        Ok(note)
    }

    /// The TLS options: certificates, verification, versions. `None` for any other option.
    fn apply_tls(
        &mut self,
        key: &str,
        v: &str,
        bad: &dyn Fn(&str) -> ConvertError,
        yes: &dyn Fn() -> Result<bool, ConvertError>,
    ) -> Result<Option<&'static str>, ConvertError> {
        let name = |n: &str| {
            ServerName::try_from(n.to_owned())
                .map(|_| n.to_owned())
                .map_err(|_| bad("not a valid DNS name or IP address"))
        };
        let old_version = "ectunnel's minimum is TLS 1.2; it never offers anything older";
        let note = match key {
            "cafile" => {
                self.ca_file = Some(v.to_owned());
                "→ tls.ca_file (replaces the built-in Mozilla roots)"
            }
            "checkhost" if self.check_host.is_some() => {
                "ectunnel verifies one name; the first checkHost is kept"
            }
            "checkhost" => {
                self.check_host = Some(name(v)?);
                "→ tls.server_name (sent as SNI and verified)"
            }
            "sni" if v.is_empty() => "no equivalent: ectunnel always sends SNI for a DNS name",
            "sni" => {
                self.sni = Some(name(v)?);
                "→ tls.server_name (sent as SNI and verified)"
            }
            "verifychain" => {
                self.verify_chain = yes()?;
                "ectunnel always verifies the chain (see the verification note)"
            }
            "verifypeer" => {
                self.pinned = yes()?;
                "ectunnel does not pin certificates; it verifies chain and hostname instead"
            }
            "verify" => self.verify_level(v, bad)?,
            "cert" => {
                self.cert = Some(v.to_owned());
                "→ tls.client_cert"
            }
            "key" => {
                self.key = Some(v.to_owned());
                "→ tls.client_key"
            }
            "sslversionmin" | "sslversion" => match v.to_ascii_lowercase().as_str() {
                "tlsv1.2" | "tlsv1.3" => {
                    self.min_version = Some(if v.ends_with('2') { "1.2" } else { "1.3" });
                    "→ tls.min_version (ectunnel sets no maximum: TLS 1.3 stays on offer)"
                }
                "all" | "sslv2" | "sslv3" | "tlsv1" | "tlsv1.1" => {
                    self.min_version = None;
                    old_version
                }
                _ => return Err(bad("expected TLSv1.2 or TLSv1.3")),
            },
            "sslversionmax" => "no equivalent: ectunnel always offers TLS 1.3",
            "options" => match v.to_ascii_uppercase().as_str() {
                "NO_SSLV2" | "NO_SSLV3" | "NO_TLSV1" | "NO_TLSV1_1" | "NO_TLSV1.1" => old_version,
                _ => NO_EQUIVALENT,
            },
            "fips" => "ectunnel uses rustls with aws-lc-rs; there is no fips switch",
            "capath" => {
                "no equivalent: ectunnel reads one PEM bundle; concatenate it into tls.ca_file"
            }
            _ => return Ok(None),
        };
        Ok(Some(note))
    }

    /// stunnel's `verify = 0..4`.
    fn verify_level(
        &mut self,
        v: &str,
        bad: &dyn Fn(&str) -> ConvertError,
    ) -> Result<&'static str, ConvertError> {
        Ok(match v.parse::<u8>() {
            Ok(0 | 1) => {
                self.verify_chain = false;
                "levels 0 and 1 verify nothing that matters (see the verification note)"
            }
            Ok(2) => {
                self.verify_chain = true;
                "level 2 verifies the chain, which ectunnel always does"
            }
            Ok(level @ (3 | 4)) => {
                self.verify_chain = level == 3;
                self.pinned = true;
                "ectunnel does not pin certificates; it verifies chain and hostname instead"
            }
            _ => return Err(bad("expected a level from 0 to 4")),
        })
    }
}

/// Text from the input that goes into a comment: TOML comments may not hold control characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn comment(out: &mut String, o: &Opt, note: &str) {
    let (k, v) = (clean(&o.key), clean(&o.value));
    let _ = writeln!(out, "# stunnel: {k} = {v} (line {}): {note}", o.line);
}

/// stunnel's `accept = [host:]port` as an IP:port; `true` when only a port was given.
fn listen_addr(v: &str) -> Option<(SocketAddr, bool)> {
    if let Ok(port) = v.parse::<u16>() {
        return Some((SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), true));
    }
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Some((addr, false));
    }
    // `:::6379` and `::1:6379`: stunnel takes the last colon as the port separator.
    let (host, port) = v.rsplit_once(':')?;
    let ip = match host {
        h if h.eq_ignore_ascii_case("localhost") => Ipv4Addr::LOCALHOST.into(),
        h => h.parse::<IpAddr>().ok()?,
    };
    Some((SocketAddr::new(ip, port.parse().ok()?), false))
}

/// stunnel's `connect = [host:]port` as ectunnel's `host:port`; a bare port is local.
fn upstream_addr(v: &str) -> Result<UpstreamAddr, String> {
    let written = match v.rsplit_once(':') {
        _ if v.parse::<u16>().is_ok() => format!("localhost:{v}"),
        Some((h, p)) if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{p}"),
        _ => v.to_owned(),
    };
    written.parse()
}

/// Converts stunnel configuration text into a complete ectunnel TOML config. `source_name` is
/// what the header comment and errors call the input.
pub fn convert(stunnel: &str, source_name: &str) -> Result<String, ConvertError> {
    let file = source_name;
    let (globals, sections) = parse(stunnel, file)?;
    let mut head = format!(
        "# ectunnel configuration converted from {} by `ectunnel convert-stunnel`.\n\
         # Each stunnel option is listed as `# stunnel: ...` with what became of it.\n\
         # Check before use: ectunnel check -c THIS_FILE --connect\n",
        clean(file)
    );
    let mut defaults = Service::default();
    if !globals.is_empty() {
        head.push_str("#\n# Global options (service options here apply to every service):\n");
    }
    for o in &globals {
        comment(&mut head, o, defaults.apply(o, file)?);
    }
    let mut out = Converted::default();
    for sec in &sections {
        out.section(sec, &defaults, file)?;
    }
    if out.listens.is_empty() {
        return Err(ConvertError::NoClientService {
            file: file.to_owned(),
        });
    }
    if let Some(max) = out.timeouts.iter().max() {
        if out.timeouts.iter().any(|t| t != max) {
            head.push_str(
                "# Services set different TIMEOUTconnect; ectunnel has one: the largest.\n",
            );
        }
        let _ = writeln!(head, "connect_timeout = \"{max}s\"");
    }
    head.push_str(
        "\n# [auth]\n# password_env = \"REDIS_AUTH\"   # ectunnel can send the AUTH token for your clients\n",
    );
    head.push_str(&out.body);
    Ok(head)
}

/// The listeners converted so far.
#[derive(Default)]
struct Converted {
    body: String,
    timeouts: Vec<u64>,
    /// Each listen address, and the service that has it.
    listens: Vec<(SocketAddr, String)>,
}

impl Converted {
    /// One `[service]`: a listener if it is a client service, else a comment saying why not.
    fn section(
        &mut self,
        sec: &Section,
        defaults: &Service,
        file: &str,
    ) -> Result<(), ConvertError> {
        let mut s = defaults.clone();
        // A service's own connect / checkHost replace the defaults rather than add to them.
        let own = |k: &str| sec.opts.iter().any(|o| o.key.eq_ignore_ascii_case(k));
        if own("connect") {
            s.connect.clear();
        }
        if own("checkHost") {
            s.check_host = None;
        }
        let mut notes = String::new();
        for o in &sec.opts {
            comment(&mut notes, o, s.apply(o, file)?);
        }
        let title = clean(&sec.name);
        if s.client != Some(true) {
            let _ = writeln!(
                self.body,
                "\n# [{title}] (line {}): not a client service (needs `client = yes`): skipped.",
                sec.line
            );
            self.body.push_str(&notes);
            return Ok(());
        }
        let missing = |key| ConvertError::Missing {
            file: file.to_owned(),
            line: sec.line,
            service: sec.name.clone(),
            key,
        };
        let bad = |line, key: &str, value: &str, reason: String| ConvertError::Value {
            file: file.to_owned(),
            line,
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let (accept, accept_line) = s.accept.clone().ok_or_else(|| missing("accept"))?;
        if s.connect.is_empty() {
            return Err(missing("connect"));
        }
        let (listen, port_only) = listen_addr(&accept).ok_or_else(|| {
            let why = "ectunnel listens on an IP address: write IP:port or a port".to_owned();
            bad(accept_line, "accept", &accept, why)
        })?;
        if let Some((_, other)) = self.listens.iter().find(|(a, _)| *a == listen) {
            let why = format!("{listen} is also used by [{other}]");
            return Err(bad(accept_line, "accept", &accept, why));
        }
        self.listens.push((listen, sec.name.clone()));
        let upstreams = s
            .connect
            .iter()
            .map(|(c, line)| upstream_addr(c).map_err(|why| bad(*line, "connect", c, why)))
            .collect::<Result<Vec<_>, _>>()?;
        self.timeouts.extend(s.timeout);
        let _ = writeln!(self.body, "\n# [{title}] (line {})", sec.line);
        self.body.push_str(&notes);
        self.listener(sec, &s, listen, port_only, &upstreams);
        Ok(())
    }

    /// Writes the `[[listener]]` of a client service, with what the reader must know about it.
    fn listener(
        &mut self,
        sec: &Section,
        s: &Service,
        listen: SocketAddr,
        port_only: bool,
        upstreams: &[UpstreamAddr],
    ) {
        let body = &mut self.body;
        let server_name = s.check_host.clone().or_else(|| s.sni.clone());
        if let (Some(host), Some(sni)) = (&s.check_host, &s.sni)
            && host != sni
        {
            let _ = writeln!(
                body,
                "# checkHost ({host}) and sni ({sni}) differ: ectunnel sends and verifies one name; checkHost wins."
            );
        }
        let local = |u: &&UpstreamAddr| u.host == "localhost" || u.host.parse::<IpAddr>().is_ok();
        if let (None, Some(u)) = (&server_name, upstreams.iter().find(local)) {
            let _ = writeln!(
                body,
                "# The certificate must name {}; if not, set server_name.",
                clean(&u.host)
            );
        }
        verification_note(body, s);
        exposure_note(body, listen, port_only);
        let _ = writeln!(body, "[[listener]]\nname = {}", quote(&sec.name));
        let _ = writeln!(body, "listen = {}", quote(&listen.to_string()));
        if !port_only && !listen.ip().is_loopback() {
            body.push_str("allow_unauthenticated = true\n");
        }
        let quoted: Vec<String> = upstreams.iter().map(|u| quote(&u.to_string())).collect();
        match quoted.as_slice() {
            [one] => _ = writeln!(body, "upstream = {one}"),
            many => _ = writeln!(body, "upstream = [{}]", many.join(", ")),
        }
        tls_table(body, s, server_name);
    }
}

/// What stunnel verified here, against what ectunnel verifies.
fn verification_note(body: &mut String, s: &Service) {
    let roots = if s.ca_file.is_some() {
        "ca_file"
    } else {
        "the built-in Mozilla roots, which include Amazon's"
    };
    body.push_str(match (s.verify_chain, s.check_host.is_some(), s.pinned) {
        (false, _, false) => {
            "# Verification: stunnel verified nothing here and would have accepted any certificate.\n"
        }
        (false, _, true) => "# Verification: stunnel only pinned the peer certificate.\n",
        (true, false, _) => "# Verification: stunnel verified the chain but not the hostname.\n",
        (true, true, _) => "# Verification: stunnel verified chain and hostname, as ectunnel does.\n",
    });
    let _ = writeln!(
        body,
        "# ectunnel verifies chain and hostname by default, against {roots}."
    );
}

/// Who can reach the listener, where stunnel listened beyond loopback.
fn exposure_note(body: &mut String, listen: SocketAddr, port_only: bool) {
    if port_only {
        body.push_str(
            "# stunnel's port-only accept listens on every interface. ectunnel can inject credentials,\n\
             # so it listens on loopback; to expose it, set an explicit address and\n\
             # allow_unauthenticated = true.\n",
        );
    } else if !listen.ip().is_loopback() {
        let _ = writeln!(
            body,
            "# WARNING: {listen} is NOT loopback: anyone who can reach it gets the upstream, and an\n\
             # authenticated session once [auth] is set. Kept as stunnel had it, with\n\
             # allow_unauthenticated = true; prefer 127.0.0.1, or [listener.client_auth] mode = \"require\"."
        );
    }
}

/// The listener's `[listener.tls]`, when stunnel set anything that goes there.
fn tls_table(body: &mut String, s: &Service, server_name: Option<String>) {
    let key = match (&s.cert, &s.key) {
        (Some(cert), None) => {
            body.push_str("# stunnel reads the key from the cert file when `key` is absent.\n");
            Some(cert.clone())
        }
        (None, Some(_)) => {
            body.push_str("# `key` without `cert` is ignored: a client certificate needs both.\n");
            None
        }
        (_, key) => key.clone(),
    };
    let tls = [
        ("ca_file", s.ca_file.clone()),
        ("server_name", server_name),
        ("min_version", s.min_version.map(str::to_owned)),
        ("client_cert", s.cert.clone()),
        ("client_key", key),
    ];
    if tls.iter().any(|(_, v)| v.is_some()) {
        body.push_str("[listener.tls]\n");
        for (k, v) in tls {
            if let Some(v) = v {
                let _ = writeln!(body, "{k} = {}", quote(&v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const GUIDE: &str = "fips = no setuid = root setgid = root pid = /var/run/stunnel.pid debug = 7 delay = yes options = NO_SSLv2 options = NO_SSLv3 [redis-cli] client = yes accept = 127.0.0.1:6379 connect = master.ssltest.wif01h.use1.cache.amazonaws.com:6379 [redis-cli-slave] client = yes accept = 127.0.0.1:6380 connect = ssltest-02.ssltest.wif01h.use1.cache.amazonaws.com:6379";

    const GUIDE_LINES: &str = "; stunnel.conf from the ElastiCache guide
fips = no
setuid = root
setgid = root
pid = /var/run/stunnel.pid
debug = 7
DELAY = yes
options = NO_SSLv2
options = NO_SSLv3

# the primary
[redis-cli]
   client = yes
   accept = 127.0.0.1:6379
   connect = master.ssltest.wif01h.use1.cache.amazonaws.com:6379
[redis-cli-slave]
   client = yes
   accept = 127.0.0.1:6380
   connect = ssltest-02.ssltest.wif01h.use1.cache.amazonaws.com:6379
";

    /// (name, listen, upstreams, server name, verifying) per listener.
    fn summary(c: &Config) -> Vec<(String, String, String, String, bool)> {
        c.listeners
            .iter()
            .map(|l| {
                let sni = l.upstreams[0].server_name.to_str().into_owned();
                let listen = l.listen.to_string();
                (
                    l.name.clone(),
                    listen,
                    l.upstream_list(),
                    sni,
                    !l.insecure_skip_verify,
                )
            })
            .collect()
    }

    #[test]
    fn the_guides_flattened_one_liner_converts() {
        let out = convert(GUIDE, "stunnel.conf").unwrap();
        assert!(
            out.starts_with(
                "# ectunnel configuration converted from stunnel.conf by `ectunnel convert-stunnel`"
            ),
            "{out}"
        );
        let c = Config::from_toml(&out, "converted.toml").unwrap();
        let master = "master.ssltest.wif01h.use1.cache.amazonaws.com";
        let replica = "ssltest-02.ssltest.wif01h.use1.cache.amazonaws.com";
        let s = |a: &str| a.to_owned();
        assert_eq!(
            summary(&c),
            [
                (
                    s("redis-cli"),
                    s("127.0.0.1:6379"),
                    format!("{master}:6379"),
                    s(master),
                    true
                ),
                (
                    s("redis-cli-slave"),
                    s("127.0.0.1:6380"),
                    format!("{replica}:6379"),
                    s(replica),
                    true
                ),
            ]
        );
        for said in [
            "# stunnel: fips = no (line 1): ectunnel uses rustls with aws-lc-rs; there is no fips switch",
            "# stunnel: setuid = root (line 1): process management: run ectunnel under systemd",
            "# stunnel: pid = /var/run/stunnel.pid (line 1): process management",
            "# stunnel: debug = 7 (line 1): use ectunnel --log-level",
            "# stunnel: delay = yes (line 1): ectunnel resolves DNS on every connect anyway",
            "# stunnel: options = NO_SSLv3 (line 1): ectunnel's minimum is TLS 1.2",
            "stunnel verified nothing here",
            "ectunnel verifies chain and hostname by default, against the built-in Mozilla roots, which include Amazon's",
            "\n# [auth]\n# password_env = \"REDIS_AUTH\"   # ectunnel can send the AUTH token for your clients\n",
        ] {
            assert!(out.contains(said), "missing {said:?} in\n{out}");
        }
        let echoed = out.lines().filter(|l| l.starts_with("# stunnel: ")).count();
        assert_eq!(echoed, 14, "{out}");
    }

    #[test]
    fn one_option_per_line_converts_the_same() {
        let flat = Config::from_toml(&convert(GUIDE, "a").unwrap(), "a").unwrap();
        let out = convert(GUIDE_LINES, "b").unwrap();
        let lines = Config::from_toml(&out, "b").unwrap();
        assert_eq!(summary(&flat), summary(&lines));
        assert!(
            out.contains("# stunnel: DELAY = yes (line 7): ectunnel resolves DNS"),
            "{out}"
        );
        // Mixed forms: `key=value`, `key= value`, `key =value`, a section after text.
        let mixed = "fips=no delay= yes debug =7 [redis-cli] client = yes accept=127.0.0.1:6379 connect = master.ssltest.wif01h.use1.cache.amazonaws.com:6379\n\
                     [redis-cli-slave]\nclient=yes\naccept = 127.0.0.1:6380\nconnect = ssltest-02.ssltest.wif01h.use1.cache.amazonaws.com:6379";
        let mixed = Config::from_toml(&convert(mixed, "c").unwrap(), "c").unwrap();
        assert_eq!(summary(&flat), summary(&mixed));
    }

    #[test]
    fn every_supported_option_maps() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("my certs");
        std::fs::create_dir(&certs)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&key)?;
        let (ca, crt, pem_key) = (
            certs.join("ca.pem"),
            certs.join("c.pem"),
            certs.join("k.pem"),
        );
        std::fs::write(&ca, cert.pem())?;
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&pem_key, key.serialize_pem())?;
        let text = format!(
            "; defaults for every service\n\
             CAfile = {ca}\nverifyChain = yes\nTIMEOUTconnect = 3\n\
             [app]\nclient = yes\naccept = 7000\nconnect = 6379\ncheckHost = redis.internal\n\
             sni = other.internal\ndelay = yes\ncert = {crt}\nkey = {key}\n\
             sslVersionMin = TLSv1.3\nciphers = HIGH:!aNULL\nretry = yes\n\
             [exposed]\nclient = yes\naccept = 0.0.0.0:7001\nconnect = [::1]:6380\nconnect = ::1:6381\n\
             [v6]\nclient = yes\naccept = :::7002\nconnect = localhost:6382\nsslVersion = TLSv1\n\
             [server]\nclient = no\naccept = 6390\nconnect = 127.0.0.1:6379\n",
            ca = ca.display(),
            crt = crt.display(),
            key = pem_key.display(),
        );
        let out = convert(&text, "full.conf")?;
        let c = Config::from_toml(&out, "full.toml").map_err(|e| format!("{e}\n{out}"))?;
        assert_eq!(c.connect_timeout, std::time::Duration::from_secs(3));
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["app", "exposed", "v6"]);
        let (app, exposed, v6) = (&c.listeners[0], &c.listeners[1], &c.listeners[2]);
        assert_eq!(app.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(app.upstream_list(), "localhost:6379");
        assert_eq!(app.upstreams[0].server_name.to_str(), "redis.internal");
        assert!(app.tls.client_auth_cert_resolver.has_certs());
        assert!(!exposed.tls.client_auth_cert_resolver.has_certs());
        assert_eq!(exposed.listen.to_string(), "0.0.0.0:7001");
        assert_eq!(exposed.upstream_list(), "[::1]:6380,[::1]:6381");
        assert_eq!(v6.listen.to_string(), "[::]:7002");
        assert!(c.listeners.iter().all(|l| !l.insecure_skip_verify));
        for said in [
            &format!("ca_file = {}", quote(&ca.display().to_string())) as &str,
            &format!("client_key = {}", quote(&pem_key.display().to_string())),
            "min_version = \"1.3\"",
            "checkHost (redis.internal) and sni (other.internal) differ",
            "stunnel verified the chain but not the hostname",
            "# stunnel: ciphers = HIGH:!aNULL (line 15): no equivalent in ectunnel; dropped",
            "# stunnel: retry = yes (line 16): no equivalent",
            "# stunnel: sslVersion = TLSv1 (line 26): ectunnel's minimum is TLS 1.2",
            "port-only accept listens on every interface",
            "WARNING: 0.0.0.0:7001 is NOT loopback",
            "WARNING: [::]:7002 is NOT loopback",
            "# [server] (line 27): not a client service",
            "# stunnel: client = no (line 28): stunnel terminates TLS here",
            "# stunnel: accept = 6390 (line 29)",
        ] {
            assert!(out.contains(said), "missing {said:?} in\n{out}");
        }
        assert_eq!(
            out.matches("allow_unauthenticated = true\n").count(),
            2,
            "{out}"
        );
        Ok(())
    }

    #[test]
    fn bad_input_names_the_line() {
        let e = |text: &str| convert(text, "s.conf").unwrap_err().to_string();
        assert_eq!(
            e("fips = no\nthis is not an option\n"),
            "s.conf:2: expected `[service]` or `key = value`, found `this is not an option`"
        );
        assert_eq!(
            e("fips = no setuid root [a] client = yes"),
            "s.conf:1: expected `[service]` or `key = value`, found `setuid`"
        );
        assert_eq!(
            e("[a]\nclient = yes\nverify = 9\n"),
            "s.conf:3: verify = 9: expected a level from 0 to 4"
        );
        assert_eq!(
            e("[a]\nclient = yes\naccept = db.local:1\nconnect = h:1\n"),
            "s.conf:3: accept = db.local:1: ectunnel listens on an IP address: write IP:port or a port"
        );
        assert_eq!(
            e("[a]\nclient = yes\naccept = 1\n"),
            "s.conf:1: service [a] has no `connect`"
        );
        assert_eq!(e("[a]\n[a]\n"), "s.conf:2: a second service is named [a]");
        assert!(e("fips = no\n[srv]\naccept = 1\nconnect = 2\n").contains("no client service"));
    }
}
