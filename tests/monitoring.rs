//! The monitoring files in config/monitoring, checked against what a running tunnel exposes on
//! /metrics: the Grafana dashboard and the Prometheus alert rules may only use series names,
//! label names and label values that exist, so renaming a metric breaks this test instead of a
//! dashboard or an alert in production. Each check returns the problems it finds; the last test
//! feeds it broken files to show that it does find them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

const TOKEN: &str = "monitoring-token-0123456789";
const DASHBOARD: &str = "config/monitoring/grafana-dashboard.json";
const RULES: &str = "config/monitoring/alerts.yaml";
const LISTENER_QUERY: &str = "label_values(ectunnel_client_connections_open, listener)";
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

/// The /metrics text of a tunnel with one listener (`primary`) whose pool has dialled its TLS
/// upstream once, so that every family has samples (the certificate expiry included).
async fn scrape_running_tunnel() -> String {
    let pki = pki(&["localhost"]);
    let redis = Redis::start(&pki, &["--requirepass", TOKEN]);
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nca_file = \"{}\"\n[auth]\npassword = \"{TOKEN}\"\n[[listener]]\nname = \"primary\"\nlisten = \"127.0.0.1:0\"\nupstream = \"localhost:{}\"\n[listener.pool]\nmin_idle = 1\n",
        pki.ca.display(),
        redis.port
    );
    let tunnel = Tunnel::start(&toml).await;
    let admin = tunnel.admin.expect("admin endpoint");
    let pool = &tunnel.pools[0];
    eventually("a pooled upstream session", || async {
        pool.idle_count() == 1
    })
    .await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

// ---------------------------------------------------------------------------------------------
// The exposition

/// What a query can select: the sample names derived from the `# TYPE` lines (so a family with
/// no samples still counts), and the label names and values the samples carry.
#[derive(Debug, Default)]
struct Exposition {
    /// Sample name → the type of its family.
    series: BTreeMap<String, String>,
    /// Sample name → label name → values seen.
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// The sample names prometheus-client writes for a family of `kind`.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"]
            .map(|s| format!("{family}{s}"))
            .to_vec(),
        _ => vec![family.to_owned()],
    }
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("`# TYPE name kind`");
            for name in sample_names(family, kind) {
                e.series.insert(name, kind.to_owned());
            }
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample line without a value: {line}"));
        let name = &line[..end];
        assert!(
            e.series.contains_key(name),
            "sample {name} is not named as its `# TYPE` line says: the naming rule here is wrong"
        );
        let labels = e.labels.entry(name.to_owned()).or_default();
        if let Some(inner) = line[end..].strip_prefix('{') {
            let (ms, _) = matchers(inner).unwrap_or_else(|why| panic!("{why}: {line}"));
            for m in ms {
                labels.entry(m.label).or_default().insert(m.value);
            }
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------
// PromQL, as far as the checks need it

/// `label op "value"` inside a selector's braces (or a sample's labels: `op` is then `=`).
#[derive(Debug)]
struct Matcher {
    label: String,
    op: &'static str,
    value: String,
}

/// The matchers of `{…}`, `s` starting after the `{`; returns them and the text after the `}`.
fn matchers(s: &str) -> Result<(Vec<Matcher>, &str), String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((out, after));
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated selector")?;
        let label = &rest[..end];
        if label.is_empty() {
            return Err(format!("expected a label name at `{rest}`"));
        }
        rest = rest[end..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| format!("expected a match operator after `{label}`"))?;
        rest = rest[op.len()..].trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected a quoted value for `{label}`"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        rest = rest[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        out.push(Matcher {
            label: label.to_owned(),
            op,
            value,
        });
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `ectunnel_…` name in `text`, with the text that follows it.
fn metric_refs(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("ectunnel_") {
        let start = from + i;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident(c))
        {
            out.push((&text[start..end], &text[end..]));
        }
        from = end;
    }
    out
}

/// The label lists of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)` and
/// `group_right (…)` in `expr`, quoted strings skipped.
fn grouping_lists(expr: &str) -> Vec<Vec<String>> {
    const KEYWORDS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut word_start = None;
    let chars: Vec<(usize, char)> = expr.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if in_quote {
            in_quote = c != '"' || (k > 0 && chars[k - 1].1 == '\\');
            continue;
        }
        if c == '"' {
            in_quote = true;
            word_start = None;
            continue;
        }
        if is_ident(c) {
            word_start.get_or_insert(i);
            continue;
        }
        let Some(start) = word_start.take() else {
            continue;
        };
        if !KEYWORDS.contains(&&expr[start..i]) {
            continue;
        }
        let after = expr[i..].trim_start();
        if let Some(list) = after.strip_prefix('(') {
            let list = list.split(')').next().unwrap_or_default();
            out.push(
                list.split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect(),
            );
        }
    }
    out
}

/// Checks the metric names in `text` (a whole file: panels, rules, annotations) against the
/// exposition, with a hint for the usual slip (a counter without `_total`, a histogram bare).
fn check_names(file: &str, text: &str, e: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    let used: BTreeSet<&str> = metric_refs(text).into_iter().map(|(n, _)| n).collect();
    for name in used {
        if e.series.contains_key(name) {
            continue;
        }
        let hint = if e.series.contains_key(&format!("{name}_total")) {
            format!(": a counter, its samples are {name}_total")
        } else if e.series.contains_key(&format!("{name}_bucket")) {
            format!(": a histogram, its samples are {name}_bucket, _sum and _count")
        } else {
            String::new()
        };
        problems.push(format!("{file}: the tunnel exposes no {name}{hint}"));
    }
    problems
}

/// Checks one query: its selectors' label names (and `=` values) exist on the series they
/// select, and its `by (…)`/`on (…)` labels exist on some series it uses (or are the target
/// labels `job`, `instance`). Returns the label names of the `ectunnel_` series it uses.
fn check_expr(
    whence: &str,
    expr: &str,
    e: &Exposition,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let mut used_labels = BTreeSet::new();
    if let Some(args) = expr.trim().strip_prefix("label_values(") {
        let args = args.trim_end().trim_end_matches(')');
        if let Some((metric, label)) = args.split_once(',') {
            let has = e
                .labels
                .get(metric.trim())
                .is_some_and(|l| l.contains_key(label.trim()));
            if !has {
                problems.push(format!(
                    "{whence}: no {} series with a `{}` label",
                    metric.trim(),
                    label.trim()
                ));
            }
        }
        return used_labels;
    }
    for (name, after) in metric_refs(expr) {
        if !e.series.contains_key(name) {
            continue; // reported by check_names
        }
        let Some(seen) = e.labels.get(name) else {
            problems.push(format!(
                "{whence}: {name} has no sample to check its labels against"
            ));
            continue;
        };
        used_labels.extend(seen.keys().cloned());
        let Some(inner) = after.strip_prefix('{') else {
            continue;
        };
        match matchers(inner) {
            Err(why) => problems.push(format!("{whence}: {name}{{…}}: {why}")),
            Ok((ms, _)) => {
                for m in ms {
                    match seen.get(&m.label) {
                        None => problems.push(format!(
                            "{whence}: {name} has no label `{}` (it has: {})",
                            m.label,
                            seen.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                        Some(values)
                            if m.op == "="
                                && !m.value.contains('$')
                                && !values.contains(&m.value) =>
                        {
                            problems.push(format!(
                                "{whence}: {name}{{{}=\"{}\"}} selects nothing (values: {})",
                                m.label,
                                m.value,
                                values.iter().cloned().collect::<Vec<_>>().join(", ")
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    let known: BTreeSet<&str> = used_labels
        .iter()
        .map(String::as_str)
        .chain(["job", "instance"])
        .collect();
    for list in grouping_lists(expr) {
        for label in list.iter().filter(|l| !known.contains(l.as_str())) {
            problems.push(format!(
                "{whence}: groups by `{label}`, a label none of its series has"
            ));
        }
    }
    used_labels
}

// ---------------------------------------------------------------------------------------------
// The dashboard

fn datasource_uid(v: &serde_json::Value) -> Option<&str> {
    v["datasource"]["uid"].as_str()
}

/// Panels in layout order, the panels of collapsed rows included.
fn all_panels(panels: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        all_panels(&p["panels"], out);
    }
}

fn check_dashboard(text: &str, e: &Exposition) -> Vec<String> {
    let mut problems = check_names(DASHBOARD, text, e);
    let d: serde_json::Value = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(err) => {
            problems.push(format!("{DASHBOARD} is not JSON: {err}"));
            return problems;
        }
    };
    let input = d["__inputs"].as_array().into_iter().flatten().any(|i| {
        i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"
    });
    if !input {
        problems.push("no DS_PROMETHEUS datasource in __inputs: it would not import".into());
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} is older than Grafana 9",
            d["schemaVersion"]
        ));
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match vars.iter().find(|v| v["name"] == "listener") {
        None => problems.push("no `listener` template variable".into()),
        Some(v) => {
            let query = v["query"]["query"].as_str().or(v["query"].as_str());
            if query != Some(LISTENER_QUERY) {
                problems.push(format!(
                    "the `listener` variable's query is {query:?}, not {LISTENER_QUERY}"
                ));
            }
            check_expr("variable listener", LISTENER_QUERY, e, &mut problems);
        }
    }

    let mut panels = Vec::new();
    all_panels(&d["panels"], &mut panels);
    if panels.is_empty() {
        problems.push("no panels".into());
    }
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        let whence = format!("panel {title:?}");
        if title.is_empty() {
            problems.push(format!("a panel without a title: {}", p["id"]));
        }
        if !ids.insert(p["id"].as_u64()) || p["id"].as_u64().is_none() {
            problems.push(format!("{whence}: id {} is missing or not unique", p["id"]));
        }
        let g = &p["gridPos"];
        let gp: Option<Vec<u64>> = ["x", "y", "w", "h"]
            .iter()
            .map(|k| g[*k].as_u64())
            .collect();
        match gp.as_deref() {
            Some(&[x, y, w, h]) if x + w <= 24 && w > 0 && h > 0 => {
                boxes.push((title.to_owned(), x, y, w, h))
            }
            _ => problems.push(format!("{whence}: gridPos {g} is not a box in 24 columns")),
        }
        if p["type"] == "row" {
            continue;
        }
        if datasource_uid(p) != Some(DATASOURCE) {
            problems.push(format!("{whence}: datasource is not {DATASOURCE}"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{whence}: no targets"));
        }
        for t in &targets {
            if t.get("datasource").is_some() && datasource_uid(t) != Some(DATASOURCE) {
                problems.push(format!(
                    "{whence}: a target's datasource is not {DATASOURCE}"
                ));
            }
            match t["expr"].as_str() {
                Some(expr) if expr.contains("ectunnel_") => {
                    check_expr(&whence, expr, e, &mut problems);
                }
                _ => problems.push(format!(
                    "{whence}: target {} has no query on ectunnel_ metrics",
                    t["refId"]
                )),
            }
        }
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            if !apart {
                problems.push(format!("panels {:?} and {:?} overlap", a.0, b.0));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The alert rules (read as text: the file's layout is ours, and no YAML crate is wanted)

/// One `- alert:` entry: its line and each key's text (the inline value, then the lines
/// indented under it).
#[derive(Debug)]
struct Rule {
    alert: String,
    line: usize,
    keys: BTreeMap<String, String>,
}

impl Rule {
    fn key(&self, k: &str) -> &str {
        self.keys.get(k).map_or("", String::as_str)
    }

    /// The `expr:` value: a block scalar's lines, or the inline (possibly quoted) value.
    fn expr(&self) -> String {
        let text = self.key("expr");
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        if first.starts_with(['|', '>']) {
            return rest.to_owned();
        }
        let first = first.trim();
        let unquoted = first
            .strip_prefix('"')
            .and_then(|f| f.strip_suffix('"'))
            .or_else(|| first.strip_prefix('\'').and_then(|f| f.strip_suffix('\'')))
            .unwrap_or(first);
        format!("{unquoted}\n{rest}")
    }
}

fn parse_rules(text: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut indent = 0;
    let mut open = false;
    let mut key = String::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let col = line.len() - t.len();
        if let Some(name) = t.strip_prefix("- alert:") {
            let name = name.trim().to_owned();
            rules.push(Rule {
                alert: name.clone(),
                line: n + 1,
                keys: BTreeMap::from([("alert".to_owned(), name)]),
            });
            indent = col + 2;
            open = true;
            key = "alert".into();
            continue;
        }
        let Some(rule) = rules.last_mut().filter(|_| open) else {
            continue;
        };
        if col < indent {
            open = false;
        } else if col == indent {
            let (k, v) = t.split_once(':').unwrap_or((t, ""));
            key = k.trim().to_owned();
            rule.keys.insert(key.clone(), v.trim().to_owned());
        } else if let Some(v) = rule.keys.get_mut(&key) {
            v.push('\n');
            v.push_str(t);
        }
    }
    rules
}

/// A Prometheus duration: one or more `<digits><unit>`.
fn is_duration(s: &str) -> bool {
    let mut rest = s.trim();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn check_rules(text: &str, e: &Exposition) -> Vec<String> {
    let mut problems = check_names(RULES, text, e);
    if !text.lines().any(|l| l == "groups:") || !text.lines().any(|l| l.trim() == "rules:") {
        problems.push(format!("{RULES}: no `groups:` with `rules:`"));
    }
    let rules = parse_rules(text);
    if rules.is_empty() {
        problems.push(format!("{RULES}: no `- alert:` rules"));
    }
    let mut names = BTreeSet::new();
    for r in &rules {
        let whence = format!("{RULES}:{} {}", r.line, r.alert);
        if !names.insert(r.alert.as_str()) {
            problems.push(format!("{whence}: the alert name is used twice"));
        }
        if !r.alert.starts_with(|c: char| c.is_ascii_uppercase())
            || !r.alert.chars().all(|c| c.is_ascii_alphanumeric())
        {
            problems.push(format!("{whence}: alert names are CamelCase"));
        }
        for k in ["expr", "for", "labels", "annotations"] {
            if !r.keys.contains_key(k) {
                problems.push(format!("{whence}: no `{k}:`"));
            }
        }
        for k in r.keys.keys() {
            let known = [
                "alert",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            ];
            if !known.contains(&k.as_str()) {
                problems.push(format!("{whence}: unknown key `{k}:`"));
            }
        }
        if r.keys.contains_key("for") && !is_duration(r.key("for")) {
            problems.push(format!(
                "{whence}: `for: {}` is not a duration",
                r.key("for")
            ));
        }
        let severity = r
            .key("labels")
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim);
        if !matches!(severity, Some("critical" | "warning" | "info")) {
            problems.push(format!(
                "{whence}: labels.severity is {severity:?}, not critical, warning or info"
            ));
        }
        let annotations = r.key("annotations");
        for k in ["summary:", "description:"] {
            if !annotations.lines().any(|l| l.trim_start().starts_with(k)) {
                problems.push(format!("{whence}: no annotations.{k}"));
            }
        }
        let expr = r.expr();
        if expr.trim().is_empty() {
            problems.push(format!("{whence}: empty expr"));
            continue;
        }
        let labels = check_expr(&whence, &expr, e, &mut problems);
        // Per-listener series: the alert must say which listener, so no aggregation may drop it.
        if labels.contains("listener") {
            if !annotations.contains("$labels.listener") {
                problems.push(format!(
                    "{whence}: the annotations do not name the listener"
                ));
            }
            for list in grouping_lists(&expr) {
                if !list.iter().any(|l| l == "listener") {
                    problems.push(format!(
                        "{whence}: `({})` drops the listener label its annotations print",
                        list.join(", ")
                    ));
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dashboard_and_alerts_use_only_what_the_tunnel_exposes() {
    let text = scrape_running_tunnel().await;
    // No reload has happened: both results are there at 0 all the same, for the alert.
    for result in ["ok", "error"] {
        let line = format!("ectunnel_config_reloads_total{{result=\"{result}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    let e = parse_exposition(&text);
    assert_none(DASHBOARD, check_dashboard(&read(DASHBOARD), &e));
    assert_none(RULES, check_rules(&read(RULES), &e));
}

#[tokio::test]
async fn the_checks_find_broken_files() {
    let e = parse_exposition(&scrape_running_tunnel().await);
    let broken = |file: &str, from: &str, to: &str| {
        let text = read(file);
        assert!(text.contains(from), "{file} no longer contains {from}");
        text.replacen(from, to, 1)
    };
    let expect = |problems: Vec<String>, wanted: &str| {
        assert!(
            problems.iter().any(|p| p.contains(wanted)),
            "no problem mentions {wanted:?}: {problems:#?}"
        );
    };

    let dashboard = |from, to| check_dashboard(&broken(DASHBOARD, from, to), &e);
    expect(
        dashboard("ectunnel_dials_total", "ectunnel_dials"),
        "its samples are ectunnel_dials_total",
    );
    expect(
        dashboard(
            "ectunnel_handshake_seconds_bucket",
            "ectunnel_handshake_seconds",
        ),
        "a histogram",
    );
    expect(
        dashboard("listener=~", "listner=~"),
        "has no label `listner`",
    );
    expect(
        dashboard("by (listener, result)", "by (listener, outcome)"),
        "groups by `outcome`",
    );
    expect(dashboard("\"panels\": [", "\"panels\": [,"), "is not JSON");

    let rules = |from, to| check_rules(&broken(RULES, from, to), &e);
    expect(
        rules("{result=\"error\"}", "{result=\"failed\"}"),
        "selects nothing",
    );
    expect(rules("        for: 1h\n", ""), "no `for:`");
    expect(
        rules("severity: warning", "severity: page"),
        "labels.severity",
    );
    expect(
        rules(
            "sum by (job, instance, listener) (rate(ectunnel_dials_total{result!=\"ok\"}[10m]))",
            "sum by (job, instance) (rate(ectunnel_dials_total{result!=\"ok\"}[10m]))",
        ),
        "drops the listener label",
    );
    expect(
        rules(
            "ectunnel_failovers_total[10m]",
            "ectunnel_failover_total[10m]",
        ),
        "exposes no ectunnel_failover_total",
    );
}
