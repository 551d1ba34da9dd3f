//! The packaging files, checked without a Docker engine or systemd: docker/Dockerfile (with the
//! root .dockerignore), docker/compose.yaml, the example configs in config/ and the systemd
//! unit. Each check returns the problems it finds; the tests after them feed it broken files to
//! show that it does find them. Then: the unit through `systemd-analyze verify` (when
//! installed), Cargo.toml's license and rust-version, the Debian package's metadata (scripts/
//! release), and the completion scripts and manual pages the binary prints.

use std::path::Path;
use std::time::Duration;

use ectunnel::config::DEFAULT_SHUTDOWN_GRACE;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One instruction, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<Instruction> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        // Comment lines are dropped, also inside a continuation.
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (body, continues) = match t.strip_suffix('\\') {
            Some(body) => (body.trim(), true),
            None => (t, false),
        };
        let ins = match pending.take() {
            Some(mut ins) => {
                ins.args = format!("{} {body}", ins.args).trim().to_owned();
                ins
            }
            None => {
                let (keyword, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                Instruction {
                    line: i + 1,
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_owned(),
                }
            }
        };
        if continues {
            pending = Some(ins);
        } else {
            out.push(ins);
        }
    }
    out.extend(pending);
    out
}

struct Stage {
    line: usize,
    image: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

fn stages(text: &str) -> Vec<Stage> {
    let mut out: Vec<Stage> = Vec::new();
    for ins in instructions(text) {
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, r#as, name, ..] if r#as.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            out.push(Stage {
                line: ins.line,
                image: words.first().unwrap_or(&"").to_string(),
                name,
                body: Vec::new(),
            });
        } else if let Some(stage) = out.last_mut() {
            stage.body.push(ins);
        }
    }
    out
}

/// Leading `--flag[=value]` options, and the rest.
fn split_flags(args: &str) -> (Vec<&str>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim();
    while rest.starts_with("--") {
        let (flag, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        flags.push(flag);
        rest = tail.trim_start();
    }
    (flags, rest)
}

/// The words of `["a", "b"]` (exec form, `true`) or `a b` (shell form, split on whitespace).
fn words(args: &str) -> (Vec<String>, bool) {
    let a = args.trim();
    match a.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => (
            inner
                .split(',')
                .map(|w| w.trim().trim_matches('"').to_owned())
                .filter(|w| !w.is_empty())
                .collect(),
            true,
        ),
        None => (a.split_whitespace().map(str::to_owned).collect(), false),
    }
}

struct CopyIns {
    line: usize,
    from: Option<String>,
    sources: Vec<String>,
    dest: String,
}

/// COPY or ADD (URL sources left out); `None` for any other instruction.
fn copy_of(ins: &Instruction) -> Option<CopyIns> {
    if ins.keyword != "COPY" && ins.keyword != "ADD" {
        return None;
    }
    let (flags, rest) = split_flags(&ins.args);
    let from = flags
        .iter()
        .find_map(|f| f.strip_prefix("--from="))
        .map(str::to_owned);
    let (mut paths, _) = words(rest);
    let dest = paths.pop().unwrap_or_default();
    paths.retain(|s| !s.contains("://"));
    Some(CopyIns {
        line: ins.line,
        from,
        sources: paths,
        dest,
    })
}

/// A COPY source as a path relative to the build context ("" is the context itself).
fn context_path(src: &str) -> String {
    src.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn join(base: &str, name: &str) -> String {
    match (base.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => base.to_owned(),
        _ => format!("{base}/{name}"),
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go `filepath.Match` within one path component, for `*` and `?` (as Docker matches).
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The context-relative paths a COPY source names (wildcards expanded); empty if none exist.
fn expand(root: &Path, source: &str) -> Vec<String> {
    let mut found = vec![String::new()];
    for comp in source.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            if has_glob(comp) {
                let Ok(entries) = std::fs::read_dir(root.join(base)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if glob(comp, &name) {
                        next.push(join(base, &name));
                    }
                }
            } else if root.join(join(base, comp)).exists() {
                next.push(join(base, comp));
            }
        }
        found = next;
    }
    found.sort();
    found
}

/// .dockerignore rules: (is an `!` exception, pattern components).
fn ignore_rules(text: &str) -> Vec<(bool, Vec<String>)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (exception, pattern) = match l.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, l),
            };
            (
                exception,
                context_path(pattern)
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect()
}

fn pattern_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|k| pattern_matches(rest, &path[k..])),
        Some((p, rest)) => path
            .split_first()
            .is_some_and(|(c, tail)| glob(p, c) && pattern_matches(rest, tail)),
    }
}

/// Whether Docker leaves `path` out of the build context: the last rule matching the path or
/// one of its parent directories decides.
fn ignored(rules: &[(bool, Vec<String>)], path: &str) -> bool {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut ignored = false;
    for (exception, pattern) in rules {
        if (1..=comps.len()).any(|n| pattern_matches(pattern, &comps[..n])) {
            ignored = !exception;
        }
    }
    ignored
}

/// `/a/./b/../c` → `/a/c`.
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

fn resolve(workdir: &str, path: &str) -> String {
    if path.starts_with('/') {
        normalize(path)
    } else {
        normalize(&format!("{workdir}/{path}"))
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What `cargo build` reads from the context: the manifest, the lock file, the sources, a build
/// script, and every explicitly declared target (cargo refuses a manifest whose targets are
/// missing, e.g. `[[bench]] forward` without benches/forward.rs).
fn cargo_inputs(root: &Path) -> Vec<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let mut inputs = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src".to_owned(),
    ];
    match manifest.get("package").and_then(|p| p.get("build")) {
        Some(toml::Value::String(script)) => inputs.push(context_path(script)),
        Some(_) => {}
        None if root.join("build.rs").exists() => inputs.push("build.rs".to_owned()),
        None => {}
    }
    for (kind, dir) in [
        ("bin", "src/bin"),
        ("example", "examples"),
        ("test", "tests"),
        ("bench", "benches"),
    ] {
        let Some(toml::Value::Array(targets)) = manifest.get(kind) else {
            continue;
        };
        for target in targets {
            if let Some(path) = target.get("path").and_then(toml::Value::as_str) {
                inputs.push(context_path(path));
                continue;
            }
            let name = target
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            let candidates = [format!("{dir}/{name}.rs"), format!("{dir}/{name}/main.rs")];
            let found = candidates.iter().find(|c| root.join(c).exists());
            inputs.push(found.unwrap_or(&candidates[0]).clone());
        }
    }
    inputs
}

/// Where each context path a COPY brought in sits in the image: (context path, image path).
type Placement = Vec<(String, String)>;

fn image_path(placed: &Placement, ctx: &str) -> Option<String> {
    placed.iter().rev().find_map(|(src, dst)| {
        if src == ctx {
            Some(dst.clone())
        } else if src.is_empty() {
            Some(normalize(&format!("{dst}/{ctx}")))
        } else {
            ctx.strip_prefix(&format!("{src}/"))
                .map(|rest| normalize(&format!("{dst}/{rest}")))
        }
    })
}

/// The path of the config file the image reads by default: `ENV ECTUNNEL_CONFIG=PATH` (what
/// `ectunnel` falls back to when neither -c nor --listen is given), or `CMD ["-c", PATH]`.
fn default_config_path(dockerfile: &str) -> Option<String> {
    let stages = stages(dockerfile);
    let last = stages.last()?;
    if let Some(env) = last
        .body
        .iter()
        .rfind(|i| i.keyword == "ENV" && i.args.contains("ECTUNNEL_CONFIG"))
    {
        let value = env
            .args
            .split_once("ECTUNNEL_CONFIG")?
            .1
            .trim_start_matches(['=', ' ']);
        return value
            .split_whitespace()
            .next()
            .map(|v| v.trim_matches('"').to_owned());
    }
    let cmd = last.body.iter().rfind(|i| i.keyword == "CMD")?;
    let (w, _) = words(&cmd.args);
    let at = w.iter().position(|w| w == "-c" || w == "--config")?;
    w.get(at + 1).cloned()
}

fn dockerfile_problems(dockerfile: &str, dockerignore: &str, root: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let stages = stages(dockerfile);
    if stages.len() < 2 {
        p.push(format!(
            "{} stage(s): want a build stage and a separate runtime stage",
            stages.len()
        ));
        return p;
    }
    let rules = ignore_rules(dockerignore);

    // Every source copied from the build context exists and is let through by .dockerignore.
    for stage in &stages {
        for copy in stage.body.iter().filter_map(copy_of) {
            if copy.from.is_some() {
                continue;
            }
            if copy.sources.is_empty() {
                p.push(format!("line {}: COPY without a source", copy.line));
            }
            for src in &copy.sources {
                let ctx = context_path(src);
                if ctx.split('/').any(|c| c == "..") {
                    p.push(format!(
                        "line {}: COPY {src} is outside the build context",
                        copy.line
                    ));
                    continue;
                }
                let found = expand(root, &ctx);
                if found.is_empty() {
                    p.push(format!(
                        "line {}: COPY {src}: no such path in the repository (the context is the repo root)",
                        copy.line
                    ));
                }
                for path in found.iter().filter(|f| ignored(&rules, f)) {
                    p.push(format!(
                        "line {}: COPY {src}: .dockerignore leaves {path} out of the build context",
                        copy.line
                    ));
                }
            }
        }
    }

    // The runtime stage: the binary from a build stage, a non-root USER, HEALTHCHECK, ENTRYPOINT.
    let last = stages.last().expect("at least two stages");
    let binary_copy =
        last.body.iter().filter_map(copy_of).find(|c| {
            c.from.is_some() && c.sources.iter().any(|s| s.ends_with("/release/ectunnel"))
        });
    let Some(binary_copy) = binary_copy else {
        p.push(format!(
            "the final stage (line {}) does not COPY --from=<build stage> .../release/ectunnel",
            last.line
        ));
        return p;
    };
    let binary = if binary_copy.dest.ends_with('/') {
        format!("{}{}", binary_copy.dest, "ectunnel")
    } else {
        binary_copy.dest.clone()
    };

    match last.body.iter().rfind(|i| i.keyword == "USER") {
        None => p.push(format!(
            "the final stage (line {}) sets no USER: say explicitly that it does not run as root",
            last.line
        )),
        Some(user) => {
            let name = user.args.split(':').next().unwrap_or("").trim();
            if name.is_empty() || name == "root" || name == "0" {
                p.push(format!("line {}: USER {} is root", user.line, user.args));
            }
        }
    }

    match last.body.iter().rfind(|i| i.keyword == "HEALTHCHECK") {
        None => p.push("the final stage has no HEALTHCHECK".to_owned()),
        Some(hc) => {
            let (_, rest) = split_flags(&hc.args);
            let cmd = rest
                .get(..3)
                .filter(|k| k.eq_ignore_ascii_case("CMD"))
                .map(|_| rest[3..].trim());
            match cmd.map(words) {
                None => p.push(format!("line {}: HEALTHCHECK without CMD", hc.line)),
                Some((_, false)) => p.push(format!(
                    "line {}: HEALTHCHECK CMD in shell form: the runtime image has no shell; use [\"{binary}\", \"health\"]",
                    hc.line
                )),
                Some((w, true)) => {
                    if w.first() != Some(&binary) || w.get(1).map(String::as_str) != Some("health")
                    {
                        p.push(format!(
                            "line {}: HEALTHCHECK runs {w:?}, want [\"{binary}\", \"health\", ...]",
                            hc.line
                        ));
                    }
                }
            }
        }
    }

    match last.body.iter().rfind(|i| i.keyword == "ENTRYPOINT") {
        None => p.push("the final stage has no ENTRYPOINT".to_owned()),
        Some(ep) => match words(&ep.args) {
            (_, false) => p.push(format!(
                "line {}: ENTRYPOINT in shell form: no shell in the runtime image, and signals would not reach ectunnel",
                ep.line
            )),
            (w, true) if w.first() != Some(&binary) => p.push(format!(
                "line {}: ENTRYPOINT runs {w:?}, but the binary is copied to {binary}",
                ep.line
            )),
            _ => {}
        },
    }

    // The build stage the binary comes from.
    let from = binary_copy.from.as_deref().unwrap_or_default();
    let build = stages
        .iter()
        .enumerate()
        .find(|(i, s)| s.name.as_deref() == Some(from) || i.to_string() == from)
        .map(|(_, s)| s);
    let Some(build) = build else {
        p.push(format!(
            "line {}: COPY --from={from}: no such stage",
            binary_copy.line
        ));
        return p;
    };
    if let Some(version) = build.image.strip_prefix("rust:1.") {
        let minor: String = version.chars().take_while(char::is_ascii_digit).collect();
        if minor.parse::<u32>().is_ok_and(|m| m < 85) {
            p.push(format!(
                "line {}: FROM {}: edition 2024 needs Rust 1.85 or later",
                build.line, build.image
            ));
        }
    }
    let is_cargo_build = |i: &Instruction| i.keyword == "RUN" && i.args.contains("cargo build");
    for run in build.body.iter().filter(|i| is_cargo_build(i)) {
        for flag in ["--release", "--locked"] {
            if !run.args.split_whitespace().any(|w| w == flag) {
                p.push(format!("line {}: cargo build without {flag}", run.line));
            }
        }
    }
    let Some(run_at) = build.body.iter().rposition(is_cargo_build) else {
        p.push(format!(
            "the build stage (line {}) never runs cargo build --release --locked",
            build.line
        ));
        return p;
    };

    // What the last `cargo build` sees: replay WORKDIR and COPY up to it.
    let mut workdir = "/".to_owned();
    let mut placed = Placement::new();
    for ins in &build.body[..run_at] {
        if ins.keyword == "WORKDIR" {
            workdir = resolve(&workdir, ins.args.trim());
        }
        let Some(copy) = copy_of(ins).filter(|c| c.from.is_none()) else {
            continue;
        };
        let dest = resolve(&workdir, &copy.dest);
        let into_dir = copy.dest.ends_with('/')
            || copy.sources.len() > 1
            || copy.sources.iter().any(|s| has_glob(s));
        for src in copy
            .sources
            .iter()
            .flat_map(|s| expand(root, &context_path(s)))
        {
            let at = if root.join(&src).is_dir() || !into_dir {
                dest.clone()
            } else {
                format!("{dest}/{}", basename(&src))
            };
            placed.push((src, at));
        }
    }
    let run_line = build.body[run_at].line;
    for input in cargo_inputs(root) {
        let want = resolve(&workdir, &input);
        match image_path(&placed, &input) {
            Some(at) if at == want => {}
            Some(at) => p.push(format!(
                "cargo build (line {run_line}) runs in {workdir} and needs {input} at {want}, but it was copied to {at}"
            )),
            None => p.push(format!(
                "cargo build (line {run_line}) needs {input}, which no COPY before it brings in"
            )),
        }
        if ignored(&rules, &input) {
            p.push(format!(
                "cargo build needs {input}, which .dockerignore leaves out"
            ));
        }
    }
    let built = resolve(&workdir, "target/release/ectunnel");
    if !binary_copy.sources.iter().any(|s| normalize(s) == built) {
        p.push(format!(
            "line {}: copies {:?} from the build stage, but cargo build in {workdir} writes {built}",
            binary_copy.line, binary_copy.sources
        ));
    }
    p
}

// ---------------------------------------------------------------------------------------------
// compose.yaml, read textually (no YAML crate among the dependencies)

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// A scalar after `key:`, without a trailing comment.
fn scalar(value: &str) -> String {
    let v = value.trim();
    let v = if v.starts_with(['"', '\'']) {
        v
    } else {
        v.split(" #").next().unwrap_or(v)
    };
    unquote(v).to_owned()
}

/// The entry at `path` in block-style YAML: the text after `key:` on its line, and the lines
/// nested under it.
fn yaml_get<'a>(text: &'a str, path: &[&str]) -> Option<(String, Vec<&'a str>)> {
    let mut block: Vec<&str> = text.lines().collect();
    let mut inline = String::new();
    for key in path {
        let level = block
            .iter()
            .filter(|l| is_content(l))
            .map(|l| indent(l))
            .min()?;
        let start = block.iter().position(|l| {
            is_content(l)
                && indent(l) == level
                && l.trim().split_once(':').is_some_and(|(k, v)| {
                    unquote(k) == *key && (v.is_empty() || v.starts_with(' '))
                })
        })?;
        inline = scalar(block[start].split_once(':').map_or("", |(_, v)| v));
        let end = block[start + 1..]
            .iter()
            .position(|l| is_content(l) && indent(l) <= level)
            .map_or(block.len(), |i| start + 1 + i);
        block = block[start + 1..end].to_vec();
    }
    Some((inline, block))
}

fn yaml_scalar(text: &str, path: &[&str]) -> Option<String> {
    yaml_get(text, path).map(|(v, _)| v)
}

/// A sequence, flow (`[a, b]`) or block (`- a`).
fn yaml_list(text: &str, path: &[&str]) -> Vec<String> {
    let Some((inline, block)) = yaml_get(text, path) else {
        return Vec::new();
    };
    if inline.starts_with('[') {
        return words(&inline).0;
    }
    block
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(scalar)
        .collect()
}

fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).ok(),
    }
}

/// `shutdown_grace` of a config file, or the default.
fn shutdown_grace(config: &str) -> Duration {
    let table: toml::Table = config.parse().unwrap_or_default();
    table
        .get("shutdown_grace")
        .and_then(toml::Value::as_str)
        .and_then(duration)
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE)
}

fn compose_problems(compose: &str, dockerfile: &str, root: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let compose_dir = root.join("docker");
    let tunnel = ["services", "ectunnel"];
    if yaml_get(compose, &tunnel).is_none() {
        p.push("no services.ectunnel".to_owned());
        return p;
    }

    match yaml_scalar(compose, &["services", "app", "network_mode"]) {
        Some(mode) if mode == "service:ectunnel" => {}
        other => p.push(format!(
            "services.app.network_mode is {other:?}, want \"service:ectunnel\" so that 127.0.0.1:6379 in the app is the sidecar"
        )),
    }
    match yaml_scalar(
        compose,
        &["services", "app", "depends_on", "ectunnel", "condition"],
    ) {
        Some(c) if c == "service_healthy" => {}
        other => p.push(format!(
            "services.app.depends_on.ectunnel.condition is {other:?}, want service_healthy"
        )),
    }
    let test = yaml_list(compose, &["services", "ectunnel", "healthcheck", "test"]);
    if !(test.iter().any(|w| w.ends_with("ectunnel")) && test.iter().any(|w| w == "health")) {
        p.push(format!(
            "services.ectunnel.healthcheck.test is {test:?}, want [\"CMD\", \"/usr/local/bin/ectunnel\", \"health\"]"
        ));
    }

    let context = yaml_scalar(compose, &["services", "ectunnel", "build", "context"]);
    let file = yaml_scalar(compose, &["services", "ectunnel", "build", "dockerfile"]);
    match (context, file) {
        (Some(context), Some(file)) => {
            let built = compose_dir.join(&context).join(&file).canonicalize().ok();
            if built != root.join("docker/Dockerfile").canonicalize().ok() {
                p.push(format!(
                    "services.ectunnel.build: {context} + {file} is not docker/Dockerfile"
                ));
            }
            if compose_dir.join(&context).canonicalize().ok() != root.canonicalize().ok() {
                p.push(format!(
                    "services.ectunnel.build.context {context} is not the repository root, which docker/Dockerfile's COPY paths assume"
                ));
            }
        }
        _ => p.push("services.ectunnel.build needs context and dockerfile".to_owned()),
    }

    let config_at = default_config_path(dockerfile).unwrap_or("/etc/ectunnel/ectunnel.toml".into());
    let volumes = yaml_list(compose, &["services", "ectunnel", "volumes"]);
    let mount = volumes.iter().find_map(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        (dst == config_at).then(|| (src.to_owned(), parts.next().unwrap_or("").to_owned()))
    });
    match mount {
        None => p.push(format!(
            "services.ectunnel.volumes mounts nothing at {config_at}, the path the image reads its config from"
        )),
        Some((src, mode)) => {
            let host = compose_dir.join(&src);
            if !host.is_file() {
                p.push(format!(
                    "services.ectunnel.volumes: {src} (relative to docker/) is not a file in the repository"
                ));
            }
            if !mode.split(',').any(|m| m == "ro") {
                p.push(format!("services.ectunnel.volumes: mount {src} read-only (:ro)"));
            }
            let grace = shutdown_grace(&std::fs::read_to_string(&host).unwrap_or_default());
            let stop = yaml_scalar(compose, &["services", "ectunnel", "stop_grace_period"]);
            // Docker's default stop timeout is 10s.
            let stop_after = stop.as_deref().map_or(Some(Duration::from_secs(10)), duration);
            if stop_after.is_none_or(|s| s <= grace) {
                p.push(format!(
                    "services.ectunnel.stop_grace_period {stop:?} must exceed the config's shutdown_grace ({grace:?}), or sessions are killed mid-drain"
                ));
            }
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Example configs

/// Every password source replaced by an inline password, so no variable or file is needed.
fn with_test_password(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let key = t.split('=').next().unwrap_or("").trim();
            if t.contains('=') && (key == "password_env" || key == "password_file") {
                format!(
                    "{}password = \"test-token-0000000000\"",
                    &l[..l.len() - t.len()]
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sidecar config against the image: loopback listeners, ports the image EXPOSEs, and the
/// admin endpoint where `ectunnel health` looks by default.
fn sidecar_problems(config: &str, dockerfile: &str) -> Vec<String> {
    let mut p = Vec::new();
    let table: toml::Table = match config.parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("not TOML: {e}")],
    };
    let exposed: Vec<String> = stages(dockerfile)
        .last()
        .map(|s| {
            s.body
                .iter()
                .filter(|i| i.keyword == "EXPOSE")
                .flat_map(|i| {
                    i.args
                        .split_whitespace()
                        .map(|w| w.split('/').next().unwrap_or("").to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut addrs = Vec::new();
    let mut listeners = 0;
    match table
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(toml::Value::as_str)
    {
        Some("127.0.0.1:9121") => addrs.push("admin.listen 127.0.0.1:9121".to_owned()),
        other => p.push(format!(
            "admin.listen is {other:?}, want \"127.0.0.1:9121\": the HEALTHCHECK runs `ectunnel health`, which asks there"
        )),
    }
    for l in table
        .get("listener")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        listeners += 1;
        let listen = l.get("listen").and_then(toml::Value::as_str).unwrap_or("");
        match listen.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => addrs.push(format!("listener {listen}")),
            _ => p.push(format!(
                "listener.listen {listen:?}: a sidecar listens on loopback, reachable only inside its network namespace"
            )),
        }
    }
    if listeners == 0 {
        p.push("no [[listener]]".to_owned());
    }
    for addr in addrs {
        let port = addr.rsplit(':').next().unwrap_or("");
        if !exposed.iter().any(|e| e == port) {
            p.push(format!(
                "{addr}: port {port} is not in the image's EXPOSE {exposed:?}"
            ));
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// systemd unit

/// Every value assigned to `key` in `[section]`, in order.
fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if let Some((k, v)) = line.split_once('=')
            && current == section
            && k.trim() == key
        {
            out.push(v.trim().to_owned());
        }
    }
    out
}

fn unit_problems(unit: &str) -> Vec<String> {
    let mut p = Vec::new();
    let service = |key: &str| unit_values(unit, "Service", key);
    let last = |key: &str| service(key).pop();
    let yes = |v: &Option<String>| {
        v.as_deref()
            .is_some_and(|v| ["yes", "true", "on", "1"].contains(&v))
    };

    if last("Type").as_deref() != Some("notify") {
        p.push(format!(
            "Type={:?}: want notify (ectunnel sends READY=1 once its listeners are bound)",
            last("Type")
        ));
    }
    let exec = last("ExecStart").unwrap_or_default();
    let exec: Vec<&str> = exec.split_whitespace().collect();
    if !(exec
        .first()
        .is_some_and(|b| b.starts_with('/') && b.ends_with("/ectunnel"))
        && exec.iter().any(|w| *w == "-c" || *w == "--config"))
    {
        p.push(format!(
            "ExecStart={}: want /abs/path/ectunnel -c FILE",
            exec.join(" ")
        ));
    }
    let reload = last("ExecReload").unwrap_or_default();
    let w: Vec<&str> = reload.split_whitespace().collect();
    let hup = w.iter().any(|w| ["-HUP", "-SIGHUP", "-1"].contains(w))
        || w.windows(2)
            .any(|p| p[0] == "-s" && ["HUP", "SIGHUP", "1"].contains(&p[1]));
    let mainpid = w.iter().any(|w| *w == "$MAINPID" || *w == "${MAINPID}");
    if !(w.first().is_some_and(|c| c.ends_with("kill")) && hup && mainpid) {
        p.push(format!(
            "ExecReload={reload:?}: want `/bin/kill -HUP $MAINPID` (SIGHUP reloads the config)"
        ));
    }
    for key in ["DynamicUser", "NoNewPrivileges"] {
        if !yes(&last(key)) {
            p.push(format!("{key}={:?}: want yes", last(key)));
        }
    }
    // An empty assignment resets the set; later ones add to it.
    match last("CapabilityBoundingSet") {
        Some(v) if v.is_empty() => {}
        other => p.push(format!(
            "CapabilityBoundingSet={other:?}: want an empty `CapabilityBoundingSet=` (no capabilities)"
        )),
    }
    match last("RestrictAddressFamilies") {
        Some(v) if !v.starts_with('~') && v.split_whitespace().any(|f| f == "AF_UNIX") => {}
        other => p.push(format!(
            "RestrictAddressFamilies={other:?}: must allow AF_UNIX, which sd_notify uses"
        )),
    }
    if last("WatchdogSec")
        .and_then(|v| duration(&v))
        .is_none_or(|d| d.is_zero())
    {
        p.push("WatchdogSec is not set: ectunnel sends WATCHDOG=1 when it is".to_owned());
    }
    if let Some(stop) = last("TimeoutStopSec")
        && duration(&stop).is_none_or(|d| d <= DEFAULT_SHUTDOWN_GRACE)
    {
        p.push(format!(
            "TimeoutStopSec={stop}: must exceed shutdown_grace ({DEFAULT_SHUTDOWN_GRACE:?} by default)"
        ));
    }
    for cred in service("LoadCredential") {
        let name = cred.split(':').next().unwrap_or("");
        let path = format!("/run/credentials/ectunnel.service/{name}");
        if !unit.contains(&path) {
            p.push(format!(
                "LoadCredential={cred}: say where it appears ({path}) for password_file"
            ));
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// The shipped files

#[test]
fn the_dockerfile_builds_from_repo_paths_and_runs_as_non_root_with_a_healthcheck() {
    assert_none(
        "docker/Dockerfile",
        dockerfile_problems(&read("docker/Dockerfile"), &read(".dockerignore"), root()),
    );
}

#[test]
fn compose_runs_the_app_in_the_sidecars_network_namespace() {
    assert_none(
        "docker/compose.yaml",
        compose_problems(
            &read("docker/compose.yaml"),
            &read("docker/Dockerfile"),
            root(),
        ),
    );
}

#[test]
fn every_example_config_is_valid() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("config"))
        .expect("config/ exists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("config/{n}"))
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f == "config/sidecar.toml"),
        "config/sidecar.toml is missing: {files:?}"
    );
    let errors = files
        .iter()
        .filter_map(|f| {
            ectunnel::Config::from_toml(&with_test_password(&read(f)), f)
                .err()
                .map(|e| e.to_string())
        })
        .collect();
    assert_none("example configs that ectunnel rejects", errors);
}

#[test]
fn the_sidecar_config_fits_the_image() {
    assert_none(
        "config/sidecar.toml",
        sidecar_problems(&read("config/sidecar.toml"), &read("docker/Dockerfile")),
    );
}

#[test]
fn the_systemd_unit_uses_notify_reload_and_sandboxing() {
    assert_none(
        "config/systemd/ectunnel.service",
        unit_problems(&read("config/systemd/ectunnel.service")),
    );
}

// ---------------------------------------------------------------------------------------------
// The checks find what they look for

fn assert_finds(problems: Vec<String>, want: &str) {
    assert!(
        problems.iter().any(|p| p.contains(want)),
        "expected a problem containing {want:?}, got {problems:#?}"
    );
}

/// `text` with `from` replaced, insisting that `from` is there.
fn with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replacen(from, to, 1)
}

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
FROM rust:1-bookworm AS build
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked
COPY ./src/ src
RUN touch src/main.rs src/lib.rs \
 # a comment inside a continuation
 && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /build/target/release/ectunnel /usr/local/bin/ectunnel
USER nonroot:nonroot
EXPOSE 6379 9121
HEALTHCHECK --interval=10s \
  CMD ["/usr/local/bin/ectunnel", "health"]
ENTRYPOINT ["/usr/local/bin/ectunnel"]
CMD ["-c", "/etc/ectunnel/ectunnel.toml"]
"#;

const DOCKERIGNORE: &str = "*\n!Cargo.toml\n!Cargo.lock\n!src\n!benches\n";

#[test]
fn the_dockerfile_check_finds_broken_dockerfiles() {
    let check = |df: &str| dockerfile_problems(df, DOCKERIGNORE, root());
    assert_none("the fixture", check(DOCKERFILE));

    assert_finds(
        check(&with(
            DOCKERFILE,
            "COPY benches benches",
            "COPY benchez benches",
        )),
        "COPY benchez: no such path",
    );
    assert_none(
        "a wildcard that matches",
        check(&with(
            DOCKERFILE,
            "COPY Cargo.toml Cargo.lock ./",
            "COPY Cargo.* ./",
        )),
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            "COPY Cargo.toml Cargo.lock ./",
            "COPY Cargo.toml Cargo.lokc ./",
        )),
        "COPY Cargo.lokc: no such path",
    );
    assert_finds(
        check(&with(DOCKERFILE, "COPY benches benches\n", "")),
        "needs benches/forward.rs, which no COPY",
    );
    assert_finds(
        check(&with(DOCKERFILE, "COPY ./src/ src", "COPY src .")),
        "needs src at /build/src, but it was copied to /build",
    );
    assert_finds(
        check(&with(DOCKERFILE, "WORKDIR /build", "WORKDIR /app")),
        "cargo build in /app writes /app/target/release/ectunnel",
    );
    assert_finds(
        dockerfile_problems(DOCKERFILE, &with(DOCKERIGNORE, "!benches\n", ""), root()),
        ".dockerignore leaves benches out",
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            " && cargo build --release --locked\n\nFROM",
            " && cargo build --release\n\nFROM",
        )),
        "cargo build without --locked",
    );
    assert_finds(
        check(&with(DOCKERFILE, "rust:1-bookworm", "rust:1.80-bookworm")),
        "needs Rust 1.85",
    );
    assert_finds(
        check(&with(DOCKERFILE, "USER nonroot:nonroot", "USER root")),
        "USER root is root",
    );
    assert_finds(
        check(&with(DOCKERFILE, "USER nonroot:nonroot", "USER 0:0")),
        "is root",
    );
    assert_finds(
        check(&with(DOCKERFILE, "USER nonroot:nonroot\n", "")),
        "sets no USER",
    );
    assert_finds(
        check(&with(DOCKERFILE, "HEALTHCHECK", "# HEALTHCHECK")),
        "no HEALTHCHECK",
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            r#"CMD ["/usr/local/bin/ectunnel", "health"]"#,
            "CMD /usr/local/bin/ectunnel health",
        )),
        "shell form",
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            r#""/usr/local/bin/ectunnel", "health""#,
            r#""/usr/local/bin/ectunnel", "check""#,
        )),
        "HEALTHCHECK runs",
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            r#"ENTRYPOINT ["/usr/local/bin/ectunnel"]"#,
            "",
        )),
        "no ENTRYPOINT",
    );
    assert_finds(
        check(&with(
            DOCKERFILE,
            r#"ENTRYPOINT ["/usr/local/bin/ectunnel"]"#,
            r#"ENTRYPOINT ["/ectunnel"]"#,
        )),
        "copied to /usr/local/bin/ectunnel",
    );
    let single = DOCKERFILE.split("\nFROM gcr.io").next().unwrap();
    assert_finds(check(single), "1 stage(s)");
}

const COMPOSE: &str = r#"services:
  ectunnel:
    build:
      context: ..
      dockerfile: docker/Dockerfile
    volumes:
      - "../config/sidecar.toml:/etc/ectunnel/ectunnel.toml:ro"
    healthcheck:
      test: ["CMD", "/usr/local/bin/ectunnel", "health"]
    stop_grace_period: 20s   # more than shutdown_grace
  app:
    image: redis:7-bookworm
    network_mode: "service:ectunnel"
    depends_on:
      ectunnel:
        condition: service_healthy
"#;

#[test]
fn the_compose_check_finds_broken_compose_files() {
    let check = |c: &str| compose_problems(c, DOCKERFILE, root());
    assert_none("the fixture", check(COMPOSE));

    assert_finds(
        check(&with(
            COMPOSE,
            "network_mode: \"service:ectunnel\"",
            "network_mode: bridge",
        )),
        "services.app.network_mode is Some(\"bridge\")",
    );
    assert_finds(
        check(&with(
            COMPOSE,
            "    network_mode: \"service:ectunnel\"\n",
            "",
        )),
        "services.app.network_mode is None",
    );
    // The key must be the app's own, not one nested elsewhere.
    assert_finds(
        check(&with(
            &with(COMPOSE, "    network_mode: \"service:ectunnel\"\n", ""),
            "    stop_grace_period",
            "    network_mode: \"service:ectunnel\"\n    stop_grace_period",
        )),
        "services.app.network_mode is None",
    );
    assert_finds(
        check(&with(
            COMPOSE,
            "../config/sidecar.toml",
            "../config/sidecar.tmol",
        )),
        "sidecar.tmol (relative to docker/) is not a file",
    );
    assert_finds(
        check(&with(
            COMPOSE,
            "/etc/ectunnel/ectunnel.toml:ro",
            "/etc/ectunnel/other.toml:ro",
        )),
        "mounts nothing at /etc/ectunnel/ectunnel.toml",
    );
    assert_finds(
        check(&with(COMPOSE, "ectunnel.toml:ro", "ectunnel.toml")),
        "read-only",
    );
    assert_finds(
        check(&with(
            COMPOSE,
            "condition: service_healthy",
            "condition: service_started",
        )),
        "want service_healthy",
    );
    assert_finds(
        check(&with(COMPOSE, r#", "health"]"#, r#", "check"]"#)),
        "healthcheck.test",
    );
    assert_finds(
        check(&with(COMPOSE, "context: ..", "context: .")),
        "is not docker/Dockerfile",
    );
    assert_finds(
        check(&with(
            COMPOSE,
            "    stop_grace_period: 20s   # more than shutdown_grace\n",
            "",
        )),
        "must exceed the config's shutdown_grace",
    );
}

#[test]
fn the_config_checks_find_broken_configs() {
    let sidecar = read("config/sidecar.toml");
    assert_none("sidecar.toml", sidecar_problems(&sidecar, DOCKERFILE));
    assert_finds(
        sidecar_problems(
            &with(
                &sidecar,
                "listen = \"127.0.0.1:6379\"",
                "listen = \"0.0.0.0:6379\"",
            ),
            DOCKERFILE,
        ),
        "a sidecar listens on loopback",
    );
    assert_finds(
        sidecar_problems(
            &with(
                &sidecar,
                "listen = \"127.0.0.1:9121\"",
                "listen = \"127.0.0.1:9999\"",
            ),
            DOCKERFILE,
        ),
        "admin.listen is Some(\"127.0.0.1:9999\")",
    );
    assert_finds(
        sidecar_problems(
            &sidecar,
            &with(DOCKERFILE, "EXPOSE 6379 9121", "EXPOSE 9121"),
        ),
        "port 6379 is not in the image's EXPOSE",
    );

    let text = "[auth]\npassword_env = \"REDIS_AUTH\"\n  password_file = \"/x\" # c\n# password_env = \"K\"\n";
    assert_eq!(
        with_test_password(text),
        "[auth]\npassword = \"test-token-0000000000\"\n  password = \"test-token-0000000000\"\n# password_env = \"K\""
    );
    let invalid = with_test_password("[[listener]]\nlisten = \"127.0.0.1:1\"\nupstrem = \"h:1\"\n");
    assert!(ectunnel::Config::from_toml(&invalid, "t.toml").is_err());
}

const UNIT: &str = "[Unit]
Description=x

[Service]
Type=notify
ExecStart=/usr/local/bin/ectunnel -c /etc/ectunnel/ectunnel.toml
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=30s
TimeoutStopSec=30s
# password_file = \"/run/credentials/ectunnel.service/redis-auth\"
LoadCredential=redis-auth:/etc/ectunnel/redis-auth
DynamicUser=yes
CapabilityBoundingSet=
NoNewPrivileges=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX

[Install]
WantedBy=multi-user.target
";

#[test]
fn the_unit_check_finds_broken_units() {
    assert_none("the fixture", unit_problems(UNIT));
    let cases = [
        ("Type=notify", "Type=simple", "Type="),
        ("DynamicUser=yes", "DynamicUser=no", "DynamicUser="),
        (
            "NoNewPrivileges=yes",
            "#NoNewPrivileges=yes",
            "NoNewPrivileges=",
        ),
        (
            "CapabilityBoundingSet=",
            "CapabilityBoundingSet=CAP_NET_ADMIN",
            "CapabilityBoundingSet=",
        ),
        (
            "CapabilityBoundingSet=",
            "CapabilityBoundingSet=\nCapabilityBoundingSet=CAP_SYS_ADMIN",
            "CapabilityBoundingSet=",
        ),
        ("CapabilityBoundingSet=\n", "", "CapabilityBoundingSet="),
        ("AF_INET AF_INET6 AF_UNIX", "AF_INET AF_INET6", "sd_notify"),
        ("AF_INET AF_INET6 AF_UNIX", "~AF_UNIX", "sd_notify"),
        ("-HUP $MAINPID", "-TERM $MAINPID", "ExecReload="),
        ("-HUP $MAINPID", "-HUP ectunnel", "ExecReload="),
        (
            "ExecStart=/usr/local/bin/ectunnel -c",
            "ExecStart=ectunnel -c",
            "ExecStart=",
        ),
        ("WatchdogSec=30s", "WatchdogSec=0", "WatchdogSec"),
        (
            "TimeoutStopSec=30s",
            "TimeoutStopSec=5s",
            "TimeoutStopSec=5s",
        ),
        (
            "/run/credentials/ectunnel.service/redis-auth",
            "/etc/ectunnel/redis-auth",
            "LoadCredential=",
        ),
    ];
    for (from, to, want) in cases {
        assert_finds(unit_problems(&with(UNIT, from, to)), want);
    }
    // Only [Service] counts.
    let moved = with(UNIT, "Type=notify\n", "");
    assert_finds(
        unit_problems(&with(&moved, "Description=x", "Description=x\nType=notify")),
        "Type=",
    );
    assert!(unit_problems(&with(UNIT, "-HUP", "-s HUP")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze, Cargo.toml, the Debian package's metadata, completions and manual pages

/// The line scripts/release rewrites for the Debian package's copy of the unit.
const HAND_EXEC_START: &str = "ExecStart=/usr/local/bin/ectunnel ";

/// The unit with its ExecStart binary replaced by `binary` (systemd-analyze verify insists that
/// it exists), as a file named ectunnel.service (the name the credential path depends on).
fn unit_running(binary: &str, dir: &Path) -> std::path::PathBuf {
    let unit = read("config/systemd/ectunnel.service");
    let lines: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with(HAND_EXEC_START))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "scripts/release substitutes the one line starting with {HAND_EXEC_START:?}"
    );
    let path = dir.join("ectunnel.service");
    std::fs::write(
        &path,
        unit.replacen(HAND_EXEC_START, &format!("ExecStart={binary} "), 1),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let version = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !version.is_ok_and(|o| o.status.success()) {
        println!("systemd-analyze is not installed: skipping `systemd-analyze verify`");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_running(env!("CARGO_BIN_EXE_ectunnel"), dir.path());
    // --man=no: Documentation=man:ectunnel(1) is only installed by the package.
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 0 even for an unknown key or a bad value, which it only reports: any report is
    // a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{stderr}",
        unit.display(),
        out.status
    );

    // It does find a broken unit (so the silence above means something).
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, with(&text, "Type=notify", "Type=notfy")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notfy"),
        "{out:?}"
    );
}

fn manifest() -> toml::Table {
    read("Cargo.toml").parse().expect("Cargo.toml parses")
}

#[test]
fn cargo_toml_declares_a_license_and_the_minimum_rust() {
    let manifest = manifest();
    let package = manifest["package"].as_table().expect("[package]");
    let has = |key: &str| {
        package
            .get(key)
            .and_then(toml::Value::as_str)
            .is_some_and(|v| !v.trim().is_empty())
    };
    assert!(
        has("license") || has("license-file"),
        "[package] needs license (or license-file)"
    );
    assert!(has("rust-version"), "[package] needs rust-version");
}

/// `[package.metadata.deb]`: every asset the repository provides exists, the generated ones come
/// from scripts/release into target/assets (or are the binary cargo-deb builds), and each lands
/// where Debian looks for it.
#[test]
fn the_debian_package_metadata_points_at_real_files() {
    let manifest = manifest();
    let deb = manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]");
    let mut p = Vec::new();
    let release = read("scripts/release");
    let mut dests = Vec::new();
    for asset in deb["assets"].as_array().expect("assets is an array") {
        let a: Vec<&str> = asset
            .as_array()
            .expect("each asset is [source, dest, mode]")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        let &[source, dest, mode] = &a[..] else {
            p.push(format!("asset {asset}: want [source, dest, mode]"));
            continue;
        };
        dests.push((source.to_owned(), dest.to_owned(), mode.to_owned()));
        if let Some(generated) = source.strip_prefix("target/assets/") {
            // scripts/release writes it: `$assets/<dir>/...`.
            let dir = generated.split('/').next().unwrap_or("");
            if !release.contains(&format!("\"$assets/{dir}")) {
                p.push(format!(
                    "{source}: scripts/release does not generate {dir}/"
                ));
            }
        } else if source != "target/release/ectunnel" && !root().join(source).is_file() {
            p.push(format!("{source}: no such file in the repository"));
        }
    }
    let want = [
        ("target/release/ectunnel", "usr/bin/", "755"),
        ("*.1.gz", "usr/share/man/man1/", "644"),
        (
            "ectunnel.bash",
            "usr/share/bash-completion/completions/ectunnel",
            "644",
        ),
        (
            "_ectunnel",
            "usr/share/zsh/vendor-completions/_ectunnel",
            "644",
        ),
        (
            "ectunnel.fish",
            "usr/share/fish/vendor_completions.d/ectunnel.fish",
            "644",
        ),
        (
            "config/systemd/ectunnel.toml",
            "etc/ectunnel/ectunnel.toml",
            "644",
        ),
    ];
    for (source, dest, mode) in want {
        if !dests
            .iter()
            .any(|(s, d, m)| s.ends_with(source) && d == dest && m == mode)
        {
            p.push(format!("no asset {source} -> {dest} ({mode})"));
        }
    }

    // The unit comes from scripts/release's copy, enabled but not started (the config needs
    // the user's endpoints first); the maintainer scripts create the user.
    let units = deb["systemd-units"]
        .as_table()
        .expect("systemd-units table");
    if units.get("unit-scripts").and_then(toml::Value::as_str) != Some("target/assets/systemd") {
        p.push("systemd-units.unit-scripts: want target/assets/systemd".to_owned());
    }
    if !release.contains("\"$assets/systemd/ectunnel.service\"") {
        p.push("scripts/release does not write $assets/systemd/ectunnel.service".to_owned());
    }
    if units.get("start").and_then(toml::Value::as_bool) != Some(false) {
        p.push("systemd-units.start: want false".to_owned());
    }
    if units.get("enable").and_then(toml::Value::as_bool) == Some(false) {
        p.push("systemd-units.enable: want true".to_owned());
    }
    if !deb
        .get("depends")
        .and_then(toml::Value::as_str)
        .is_some_and(|d| d.contains("$auto") && d.contains("adduser"))
    {
        p.push("depends: want $auto (computed) and adduser (postinst uses it)".to_owned());
    }
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    for (name, needs) in [("postinst", "adduser --system"), ("postrm", "purge")] {
        let path = root().join(scripts).join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            p.push(format!("{}: missing", path.display()));
            continue;
        };
        // cargo-deb replaces every occurrence of the token, one in a comment included (which
        // turns the rest of that comment into shell code).
        let alone = text.lines().filter(|l| l.trim() == "#DEBHELPER#").count();
        if alone != 1 || text.matches("#DEBHELPER#").count() != 1 {
            p.push(format!(
                "{name}: wants #DEBHELPER# once, on a line of its own, and nowhere else"
            ));
        }
        if !text.contains(needs) {
            p.push(format!("{name}: wants {needs:?}"));
        }
        use std::os::unix::fs::PermissionsExt as _;
        if std::fs::metadata(&path).unwrap().permissions().mode() & 0o111 == 0 {
            p.push(format!("{name}: not executable"));
        }
    }
    assert_none("[package.metadata.deb]", p);
}

/// The config the unit (and the package) runs with: config/redis-cli.toml with the token from
/// the unit's credential, so that it holds no secret.
#[test]
fn the_service_config_is_redis_cli_toml_with_the_credential() {
    let service = read("config/systemd/ectunnel.toml");
    ectunnel::Config::from_toml(
        &with_test_password(&service),
        "config/systemd/ectunnel.toml",
    )
    .expect("config/systemd/ectunnel.toml is valid");
    let mut service: toml::Table = service.parse().unwrap();
    let mut bastion: toml::Table = read("config/redis-cli.toml").parse().unwrap();
    let auth = service.remove("auth").expect("[auth]");
    bastion.remove("auth");
    assert_eq!(
        service, bastion,
        "besides [auth], the same as config/redis-cli.toml"
    );
    assert_eq!(
        auth.as_table()
            .map(|a| a.keys().cloned().collect::<Vec<String>>()),
        Some(vec!["password_file".to_owned()]),
        "no secret, no environment: only password_file"
    );
    let file = auth["password_file"].as_str().unwrap();
    let name = file
        .strip_prefix("/run/credentials/ectunnel.service/")
        .expect("password_file in the unit's credentials directory");
    let unit = read("config/systemd/ectunnel.service");
    let creds = unit_values(&unit, "Service", "LoadCredential");
    assert!(
        creds.iter().any(|c| c.split(':').next() == Some(name)),
        "the unit loads no credential {name}: {creds:?}"
    );
    // One unit for both installs: a static user "ectunnel" when the package made one, a
    // dynamic one otherwise.
    assert_eq!(unit_values(&unit, "Service", "User"), ["ectunnel"]);
    assert_eq!(unit_values(&unit, "Service", "DynamicUser"), ["yes"]);
}

fn run_ectunnel(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ectunnel"))
        .args(args)
        .output()
        .expect("ectunnel runs");
    assert!(
        out.status.success(),
        "ectunnel {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The subcommands `ectunnel --help` lists (`help` aside).
fn subcommands() -> Vec<String> {
    let help = run_ectunnel(&["--help"]);
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "help")
        .collect();
    assert!(
        names.len() >= 6 && names.iter().any(|n| n == "convert-stunnel"),
        "{help}"
    );
    names
}

#[test]
fn completions_cover_every_subcommand_and_the_config_flag() {
    let commands = subcommands();
    let bash = run_ectunnel(&["completions", "bash"]);
    for name in &commands {
        assert!(bash.contains(name.as_str()), "bash completions lack {name}");
    }
    assert!(
        bash.contains("--config") && bash.contains("complete -F"),
        "{bash}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = run_ectunnel(&["completions", shell]);
        assert!(
            script.contains("check") && script.contains("config"),
            "{shell}: {script}"
        );
    }
}

#[test]
fn the_man_page_documents_every_subcommand() {
    let commands = subcommands();
    let page = run_ectunnel(&["man"]);
    assert!(
        page.lines().any(|l| l.starts_with(".TH ECTUNNEL 1")),
        "{page}"
    );
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH \"EXIT STATUS\"",
        ".SH FILES",
    ] {
        assert!(page.contains(section), "no {section} in\n{page}");
    }
    // roff writes a hyphen as \-.
    let roff = |s: &str| s.replace('-', "\\-");
    assert!(page.contains(&roff("--config")), "{page}");
    for name in &commands {
        let reference = roff(&format!("ectunnel-{name}(1)"));
        assert!(page.contains(&reference), "no {reference} in\n{page}");
    }

    // --dir writes the page each of those references names.
    let dir = tempfile::tempdir().unwrap();
    let listed = run_ectunnel(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ectunnel.1")).unwrap(),
        page
    );
    for name in &commands {
        let file = dir.path().join(format!("ectunnel-{name}.1"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}; listed:\n{listed}", file.display()));
        let title = format!(".TH ECTUNNEL-{} 1", name.to_uppercase());
        assert!(
            text.lines().any(|l| l.starts_with(&title)),
            "{}: {text}",
            file.display()
        );
    }
}
