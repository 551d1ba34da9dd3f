//! Binds every listener, accepts clients, and drains them on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClientAuth, Config, ListenerConfig};
use crate::session;
use crate::upstream::Pool;

/// A listener that could not be bound; the process exits 1 with this message.
#[derive(Debug, thiserror::Error)]
#[error("listener `{name}` cannot bind {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// All listeners bound and ready to serve. Binding is separate from serving so that the caller
/// (and tests, which bind port 0) can learn the addresses first.
pub struct Server {
    listeners: Vec<(Pool, TcpListener)>,
    shutdown_grace: Duration,
    /// Stops the pools' maintainers (and closes their idle sessions) at shutdown.
    pools_stop: CancellationToken,
}

impl Server {
    /// Binds every listener or none: a tunnel missing one of its ports is a broken tunnel.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in config.listeners {
            let socket = TcpListener::bind(l.listen)
                .await
                .map_err(|source| BindError {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            let local = socket.local_addr().unwrap_or(l.listen);
            warn_if_risky(&l, local);
            tracing::info!(listener = %l.name, listen = %local, upstream = %l.upstream_list(),
                auth = l.auth.is_some(), "listening");
            bound.push((Arc::new(l), socket));
        }
        // Only once every listener is bound: the pools start dialling right away.
        let pools_stop = CancellationToken::new();
        for (l, socket) in bound {
            listeners.push((Pool::start(l, pools_stop.clone()), socket));
        }
        Ok(Server {
            listeners,
            shutdown_grace: config.shutdown_grace,
            pools_stop,
        })
    }

    /// Each listener's pool, in config order (for readiness, metrics and tests).
    pub fn pools(&self) -> Vec<Pool> {
        self.listeners.iter().map(|(p, _)| p.clone()).collect()
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|(p, s)| s.local_addr().unwrap_or(p.listener().listen))
            .collect()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open sessions run for up to
    /// `shutdown_grace`, and closes whatever is still open.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop_accepting = CancellationToken::new();
        let end_sessions = CancellationToken::new();
        let sessions = TaskTracker::new();
        let mut acceptors = tokio::task::JoinSet::new();
        for (pool, socket) in self.listeners {
            acceptors.spawn(accept_loop(
                pool,
                socket,
                sessions.clone(),
                stop_accepting.clone(),
                end_sessions.clone(),
            ));
        }
        shutdown.await;
        stop_accepting.cancel();
        self.pools_stop.cancel();
        while acceptors.join_next().await.is_some() {}
        sessions.close();
        let grace = self.shutdown_grace;
        if !sessions.is_empty() {
            tracing::info!(open = sessions.len(), grace = %humantime::format_duration(grace),
                "listeners closed; waiting for open sessions");
        }
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::warn!(
                open = sessions.len(),
                "shutdown grace over; closing open sessions"
            );
            end_sessions.cancel();
            sessions.wait().await;
        }
        tracing::info!("stopped");
    }
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BindError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}

fn warn_if_risky(l: &ListenerConfig, local: SocketAddr) {
    for risk in risks(l, local) {
        tracing::warn!(listener = %l.name, listen = %local, upstream = %l.upstream_list(), "{risk}");
    }
}

/// What an operator must be told at start about this listener's exposure.
fn risks(l: &ListenerConfig, local: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    if l.insecure_skip_verify {
        out.push("insecure_skip_verify = true: the upstream certificate is NOT verified; anyone on the path can impersonate the server and read the traffic and AUTH token".to_owned());
    }
    if !local.ip().is_loopback() {
        out.push(match (&l.client_auth, l.auth.is_some()) {
            (ClientAuth::Require(_), _) => {
                "listening on a non-loopback address: clients must AUTH with the client_auth password".to_owned()
            }
            (_, true) => "listening on a non-loopback address with allow_unauthenticated: whoever can reach it gets a session authenticated with the injected credentials".to_owned(),
            (_, false) => "listening on a non-loopback address with allow_unauthenticated: whoever can reach it gets a session to the upstream".to_owned(),
        });
    }
    out
}

async fn accept_loop(
    pool: Pool,
    socket: TcpListener,
    sessions: TaskTracker,
    stop: CancellationToken,
    end_sessions: CancellationToken,
) {
    let listener = pool.listener().clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = Duration::from_millis(5);
                tracing::debug!(listener = %listener.name, client = %peer, "client connected");
                let pool = pool.clone();
                let end = end_sessions.clone();
                sessions.spawn(async move {
                    let name = pool.listener().name.clone();
                    tokio::select! {
                        _ = session::serve(client, peer, pool) => {}
                        _ = end.cancelled() => tracing::debug!(listener = %name,
                            client = %peer, "session closed at end of shutdown grace"),
                    }
                });
            }
            // Out of file descriptors or a similar passing condition: back off rather than
            // spin, and keep the listener (mini-redis does the same).
            Err(e) => {
                tracing::warn!(listener = %listener.name, error = %e, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(toml_extra: &str, listen: &str) -> ListenerConfig {
        let opt_out = if listen.starts_with("0.0.0.0") && !toml_extra.contains("require") {
            "allow_unauthenticated = true\n"
        } else {
            ""
        };
        let text = format!(
            "{toml_extra}\n[[listener]]\nlisten = \"{listen}\"\nupstream = \"localhost:6379\"\n{opt_out}"
        );
        Config::from_toml(&text, "t.toml")
            .unwrap()
            .listeners
            .remove(0)
    }

    #[test]
    fn warns_about_skipped_verification_and_exposure() {
        let quiet = listener("", "127.0.0.1:6379");
        assert!(risks(&quiet, quiet.listen).is_empty());
        let v6 = listener("", "[::1]:6379");
        assert!(risks(&v6, v6.listen).is_empty());
        let loud = listener(
            "[tls]\ninsecure_skip_verify = true\n[auth]\npassword = \"t-0000000000000000\"\n[client_auth]\nmode = \"require\"\npassword = \"c-0000000000000000\"",
            "0.0.0.0:6379",
        );
        let r = risks(&loud, loud.listen);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("NOT verified"));
        assert!(r[1].contains("non-loopback") && r[1].contains("client_auth password"));
        let open = listener("[auth]\npassword = \"t-0000000000000000\"", "0.0.0.0:6379");
        let r = risks(&open, open.listen);
        assert!(r[0].contains("injected credentials"), "{r:?}");
    }
}
