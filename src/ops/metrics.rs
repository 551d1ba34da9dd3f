//! Prometheus metrics (prometheus-client), one registry per [`crate::Server`], per-listener
//! handles resolved once so the data path only does atomic adds.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::upstream::Stage;

/// Which listener, and for a cluster's node listener which node (`node` is left out of the
/// labels of an ordinary listener rather than printed empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Who {
    listener: String,
    node: Option<String>,
}

impl EncodeLabelSet for Who {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("listener", self.listener.as_str()).encode(encoder.encode_label())?;
        match &self.node {
            Some(node) => ("node", node.as_str()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    #[prometheus(flatten)]
    who: Who,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialLabels {
    #[prometheus(flatten)]
    who: Who,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    #[prometheus(flatten)]
    who: Who,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    #[prometheus(flatten)]
    who: Who,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    #[prometheus(flatten)]
    who: Who,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

type Histograms = Family<ListenerLabel, Histogram, fn() -> Histogram>;

/// Every metric the tunnel exports; names are prefixed `ectunnel_` and documented in the README.
pub struct Metrics {
    registry: Registry,
    clients_open: Family<ListenerLabel, Gauge>,
    clients: Family<ListenerLabel, Counter>,
    upstream_open: Family<ListenerLabel, Gauge>,
    upstream_idle: Family<ListenerLabel, Gauge>,
    dials: Family<DialLabels, Counter>,
    handshake: Histograms,
    first_reply: Histograms,
    bytes: Family<BytesLabels, Counter>,
    reused: Family<ListenerLabel, Counter>,
    shared_requests: Family<ListenerLabel, Counter>,
    own_sessions: Family<ListenerLabel, Counter>,
    failovers: Family<ListenerLabel, Counter>,
    cert_expiry: Family<CertLabels, Gauge>,
    reloads: Family<ReloadLabel, Counter>,
    limits: Family<LimitLabels, Gauge>,
    limit_hits: Family<LimitLabels, Counter>,
    accept_errors: Family<ListenerLabel, Counter>,
    iam_tokens: Family<DialLabels, Counter>,
    iam_next_refresh: Family<ListenerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s: loopback round trips up to slow cross-region handshakes.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ectunnel");
        let m = Metrics {
            clients_open: Family::default(),
            clients: Family::default(),
            upstream_open: Family::default(),
            upstream_idle: Family::default(),
            dials: Family::default(),
            handshake: Family::new_with_constructor(latency_histogram),
            first_reply: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            reused: Family::default(),
            shared_requests: Family::default(),
            own_sessions: Family::default(),
            failovers: Family::default(),
            cert_expiry: Family::default(),
            reloads: Family::default(),
            limits: Family::default(),
            limit_hits: Family::default(),
            accept_errors: Family::default(),
            iam_tokens: Family::default(),
            iam_next_refresh: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "client_connections_open",
            "Client connections open now",
            m.clients_open.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections accepted",
            m.clients.clone(),
        );
        registry.register(
            "upstream_sessions_open",
            "Upstream TLS sessions open now, idle in the pool or serving a client",
            m.upstream_open.clone(),
        );
        registry.register(
            "upstream_sessions_idle",
            "Upstream sessions idle in the pool",
            m.upstream_idle.clone(),
        );
        registry.register(
            "dials",
            "Upstream dials by result: ok, or the stage that failed (dns, connect, tls, auth, role)",
            m.dials.clone(),
        );
        registry.register(
            "handshake_seconds",
            "Time to dial an upstream session: DNS, TCP, TLS, AUTH (and ROLE)",
            m.handshake.clone(),
        );
        registry.register(
            "first_reply_seconds",
            "Time from accepting a client to the first byte of its first reply",
            m.first_reply.clone(),
        );
        registry.register(
            "iam_tokens",
            "IAM tokens signed, by result: ok, no_credentials, expired, throttled, error",
            m.iam_tokens.clone(),
        );
        registry.register(
            "iam_token_next_refresh_timestamp_seconds",
            "When the next IAM token will be signed (Unix time)",
            m.iam_next_refresh.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded, by direction (to_upstream, to_client)",
            m.bytes.clone(),
        );
        registry.register(
            "sessions_reused",
            "Upstream sessions returned to the pool after RESET + AUTH",
            m.reused.clone(),
        );
        registry.register(
            "shared_requests",
            "Requests sent over upstream sessions shared by several clients",
            m.shared_requests.clone(),
        );
        registry.register(
            "own_sessions",
            "Clients that took an upstream session of their own (a command that cannot be shared, or multiplex = 0)",
            m.own_sessions.clone(),
        );
        registry.register(
            "failovers",
            "Moves of the node with the configured role",
            m.failovers.clone(),
        );
        registry.register(
            "upstream_cert_expiry_timestamp_seconds",
            "notAfter of the upstream's TLS certificate, Unix time",
            m.cert_expiry.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "limit",
            "A listener's configured limits: max_clients, max_sessions, client_idle_timeout (seconds, 0 = none)",
            m.limits.clone(),
        );
        registry.register(
            "limit_hits",
            "Times a limit acted: a client refused at max_clients, a client that waited in vain for a session at max_sessions, a client closed at client_idle_timeout or at the client_auth deadline (auth_timeout)",
            m.limit_hits.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (out of file descriptors, or another passing condition); the listener backs off",
            m.accept_errors.clone(),
        );
        // Both results exist at 0 from the start: an alert on `increase(..{result="error"}[15m])`
        // and a dashboard need a series before the first reload, not an absent one.
        for result in ["ok", "error"] {
            m.reloads.get_or_create_owned(&ReloadLabel { result });
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// The metrics in Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one listener, resolved once.
    pub fn listener(self: &Arc<Self>, name: &str) -> ListenerMetrics {
        self.labelled(Who {
            listener: name.to_owned(),
            node: None,
        })
    }

    /// Handles for the node listener of cluster node `node` (`host:port`) behind `listener`.
    pub fn node(self: &Arc<Self>, listener: &str, node: &str) -> ListenerMetrics {
        self.labelled(Who {
            listener: listener.to_owned(),
            node: Some(node.to_owned()),
        })
    }

    fn labelled(self: &Arc<Self>, who: Who) -> ListenerMetrics {
        let l = ListenerLabel { who: who.clone() };
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    who: who.clone(),
                    direction,
                })
                .clone()
        };
        // `result="ok"` exists at 0 as soon as the listener does, so "failed dials and no ok
        // dial" is computable (and alertable) for an upstream that was never reachable.
        self.dials.get_or_create_owned(&DialLabels {
            who: who.clone(),
            result: "ok",
        });
        ListenerMetrics {
            who: who.clone(),
            clients_open: self.clients_open.get_or_create(&l).clone(),
            clients: self.clients.get_or_create(&l).clone(),
            upstream_open: self.upstream_open.get_or_create(&l).clone(),
            upstream_idle: self.upstream_idle.get_or_create(&l).clone(),
            handshake: self.handshake.get_or_create(&l).clone(),
            first_reply: self.first_reply.get_or_create(&l).clone(),
            to_upstream: bytes("to_upstream"),
            to_client: bytes("to_client"),
            reused: self.reused.get_or_create(&l).clone(),
            shared_requests: self.shared_requests.get_or_create(&l).clone(),
            own_sessions: self.own_sessions.get_or_create(&l).clone(),
            failovers: self.failovers.get_or_create(&l).clone(),
            accept_errors: self.accept_errors.get_or_create(&l).clone(),
            all: self.clone(),
        }
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ReloadLabel { result }).inc();
    }
}

/// One listener's metrics.
#[derive(Clone)]
pub struct ListenerMetrics {
    who: Who,
    pub clients_open: Gauge,
    pub clients: Counter,
    pub upstream_open: Gauge,
    pub upstream_idle: Gauge,
    pub handshake: Histogram,
    pub first_reply: Histogram,
    pub to_upstream: Counter,
    pub to_client: Counter,
    pub reused: Counter,
    pub shared_requests: Counter,
    pub own_sessions: Counter,
    pub failovers: Counter,
    pub accept_errors: Counter,
    all: Arc<Metrics>,
}

/// The limits counted in `ectunnel_limit_hits_total`, as its `limit` label says them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxClients,
    MaxSessions,
    ClientIdleTimeout,
    AuthTimeout,
}

impl Limit {
    pub const ALL: [Limit; 4] = [
        Limit::MaxClients,
        Limit::MaxSessions,
        Limit::ClientIdleTimeout,
        Limit::AuthTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxClients => "max_clients",
            Limit::MaxSessions => "max_sessions",
            Limit::ClientIdleTimeout => "client_idle_timeout",
            Limit::AuthTimeout => "auth_timeout",
        }
    }
}

impl ListenerMetrics {
    /// Counts an IAM signing by its result.
    pub fn iam_token(&self, result: &'static str) {
        let labels = DialLabels {
            who: self.who.clone(),
            result,
        };
        self.all.iam_tokens.get_or_create(&labels).inc();
    }

    /// When the next IAM token is due.
    pub fn iam_next_refresh(&self, unix: f64) {
        let labels = ListenerLabel {
            who: self.who.clone(),
        };
        self.all.iam_next_refresh.get_or_create(&labels).set(unix);
    }

    /// Counts a dial: `None` for success, else the stage that failed.
    pub fn dial(&self, failed: Option<Stage>) {
        let result = match failed {
            None => "ok",
            Some(s) => s.as_str(),
        };
        self.all
            .dials
            .get_or_create(&DialLabels {
                who: self.who.clone(),
                result,
            })
            .inc();
    }

    pub fn cert_expiry(&self, upstream: &str, not_after_unix: i64) {
        self.all
            .cert_expiry
            .get_or_create(&CertLabels {
                who: self.who.clone(),
                upstream: upstream.to_owned(),
            })
            .set(not_after_unix);
    }

    /// Publishes the configured limits (and every `limit_hits` series at 0, for alerts).
    pub fn limits(&self, max_clients: usize, max_sessions: usize, idle: Option<f64>) {
        let values = [
            ("max_clients", max_clients as i64),
            ("max_sessions", max_sessions as i64),
            ("client_idle_timeout", idle.map_or(0, |s| s.ceil() as i64)),
        ];
        for (limit, v) in values {
            self.all.limits.get_or_create(&self.limit(limit)).set(v);
        }
        for limit in Limit::ALL {
            self.all
                .limit_hits
                .get_or_create_owned(&self.limit(limit.as_str()));
        }
    }

    /// Counts a limit acting.
    pub fn limit_hit(&self, limit: Limit) {
        self.all
            .limit_hits
            .get_or_create(&self.limit(limit.as_str()))
            .inc();
    }

    fn limit(&self, limit: &'static str) -> LimitLabels {
        LimitLabels {
            who: self.who.clone(),
            limit,
        }
    }

    /// Counts one open upstream session until the guard is dropped.
    pub fn upstream_guard(&self) -> GaugeGuard {
        self.upstream_open.inc();
        GaugeGuard(self.upstream_open.clone())
    }

    /// Counts one open client connection until the guard is dropped.
    pub fn client_guard(&self) -> GaugeGuard {
        self.clients.inc();
        self.clients_open.inc();
        GaugeGuard(self.clients_open.clone())
    }
}

/// Decrements its gauge when dropped, so every exit path is counted.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_results_are_exposed_at_zero_before_any_reload() {
        let text = Metrics::new().encode();
        for result in ["ok", "error"] {
            let line = format!("ectunnel_config_reloads_total{{result=\"{result}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn a_listener_exposes_ok_dials_at_zero_before_any_dial() {
        let m = Metrics::new();
        let _l = m.listener("primary");
        let text = m.encode();
        let line = r#"ectunnel_dials_total{listener="primary",result="ok"} 0"#;
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}
