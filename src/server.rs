//! Binds every listener (and the admin endpoint), accepts clients, applies reloads, and drains
//! on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Slot};
use crate::client;
use crate::cluster::{self, Cluster};
use crate::config::{ClientAuth, ClusterMode, Config, ListenerConfig};
use crate::limits::{ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, MAX_REFUSING};
use crate::listener::{Handle, Listener, Parts};
use crate::ops::admin::{self, AdminState};
use crate::ops::metrics::{Limit, Metrics};
use crate::upstream::Resolver;

/// A listener (or the admin endpoint) that could not be bound; the process exits 1.
///
/// The OS error is part of the message and deliberately not a `source()`: every caller prints
/// the message whole, and a chain printer (`{:#}`) would repeat the cause.
#[derive(Debug, thiserror::Error)]
#[error("listener `{name}` cannot bind {addr}: {error}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub error: io::Error,
}

/// Why a reload was not applied; the old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the server is not running")]
    Stopped,
}

/// All listeners bound and their pools warming up. Binding is separate from serving so that
/// the caller (and tests, which bind port 0) can learn the addresses first.
pub struct Server {
    listeners: Vec<Bound>,
    shutdown_grace: Duration,
    admin: Option<TcpListener>,
    metrics: Arc<Metrics>,
    resolver: Resolver,
    /// Each listener name's open clients and sessions, kept across reloads.
    admissions: HashMap<String, Arc<Admission>>,
    /// Each cluster listener's node listeners, kept across reloads.
    clusters: HashMap<String, Cluster>,
    sessions: TaskTracker,
    end_sessions: CancellationToken,
    /// The current listeners, for the admin endpoint (replaced on reload).
    current: Arc<Mutex<Vec<Arc<Listener>>>>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
}

/// A listener and the socket it accepts on.
pub(crate) struct Bound {
    pub listener: Arc<Listener>,
    pub socket: TcpListener,
}

struct ReloadRequest {
    config: Result<Config, String>,
    done: oneshot::Sender<Result<(), ReloadError>>,
}

/// Sends new configurations to a running [`Server`].
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::Sender<ReloadRequest>,
}

impl Reloader {
    /// Applies `config` (or records a failed reload when it is an error): new listeners bind,
    /// removed ones stop accepting, every listener gets a fresh pool with the new settings, and
    /// clients already connected use the new settings for whatever they dial next. All or
    /// nothing: if a new address cannot be bound, nothing changes.
    pub async fn reload(&self, config: Result<Config, String>) -> Result<(), ReloadError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(ReloadRequest { config, done })
            .await
            .map_err(|_| ReloadError::Stopped)?;
        result.await.map_err(|_| ReloadError::Stopped)?
    }
}

impl Server {
    /// Binds every listener or none (a tunnel missing one of its ports is a broken tunnel),
    /// then starts each listener's pool, which begins dialling at once. Names resolve with the
    /// system resolver.
    pub async fn bind(config: Config) -> Result<Server, BindError> {
        Server::bind_with(config, Resolver::system()).await
    }

    /// [`Server::bind`] with names resolved by `resolver`, for this and every later reload.
    pub async fn bind_with(config: Config, resolver: Resolver) -> Result<Server, BindError> {
        let metrics = Metrics::new();
        warn_exposed(&config);
        let mut sockets = Vec::with_capacity(config.listeners.len());
        for l in config.listeners {
            let socket = bind(&l.name, l.listen).await?;
            sockets.push((l, socket));
        }
        let admin = match config.admin {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        if let Some(a) = &admin {
            tracing::info!(listen = %a.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
                "admin endpoint: /metrics /healthz /readyz");
        }
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let mut server = Server {
            listeners: Vec::new(),
            shutdown_grace: config.shutdown_grace,
            admin,
            metrics,
            resolver,
            admissions: HashMap::new(),
            clusters: HashMap::new(),
            sessions: TaskTracker::new(),
            end_sessions: CancellationToken::new(),
            current: Arc::new(Mutex::new(Vec::new())),
            reload_tx,
            reload_rx,
        };
        for (l, socket) in sockets {
            announce(&l, &socket);
            let listener = server.start_listener(l);
            server.listeners.push(Bound { listener, socket });
        }
        *crate::lock(&server.current) = server
            .listeners
            .iter()
            .map(|b| b.listener.clone())
            .collect();
        Ok(server)
    }

    /// Starts a listener's state with its name's admission counts and, in front of a
    /// cluster, its node listeners (kept from the listener it replaces).
    fn start_listener(&mut self, l: ListenerConfig) -> Arc<Listener> {
        let name = l.name.clone();
        let cluster = if l.cluster == ClusterMode::Off {
            if let Some(c) = self.clusters.remove(&name) {
                c.stop();
            }
            None
        } else {
            let ctx = cluster::Ctx {
                resolver: self.resolver.clone(),
                metrics: self.metrics.clone(),
                sessions: self.sessions.clone(),
                end_sessions: self.end_sessions.clone(),
            };
            Some(
                self.clusters
                    .entry(name.clone())
                    .or_insert_with(|| Cluster::start(ctx)),
            )
        };
        let parts = Parts {
            resolver: self.resolver.clone(),
            metrics: self.metrics.listener(&name),
            admission: admission(&mut self.admissions, &name),
            auth: None,
            cluster: cluster.map(|c| c.link()),
        };
        let listener = Arc::new(Listener::start_with(l, parts));
        if let Some(c) = self.clusters.get(&name) {
            c.serve(listener.clone());
        }
        listener
    }

    /// Each listener as it is now, in config order (for readiness, metrics and tests).
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        crate::lock(&self.current).clone()
    }

    /// The bound address of each listener, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|b| b.socket.local_addr().unwrap_or(b.listener.config.listen))
            .collect()
    }

    /// The bound admin address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// A handle to reload the running server.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            tx: self.reload_tx.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open sessions run for up to
    /// `shutdown_grace`, and closes whatever is still open.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let sessions = self.sessions.clone();
        let end_sessions = self.end_sessions.clone();
        let mut active: HashMap<String, Active> = HashMap::new();
        for b in std::mem::take(&mut self.listeners) {
            let a = Active::start(b, &sessions, &end_sessions);
            active.insert(a.name().to_owned(), a);
        }
        let admin_stop = CancellationToken::new();
        if let Some(socket) = self.admin.take() {
            let state = AdminState {
                metrics: self.metrics.clone(),
                listeners: self.current.clone(),
            };
            tokio::spawn(admin::serve(socket, state, admin_stop.clone()));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(req) = self.reload_rx.recv() => {
                    let result = match req.config {
                        Ok(config) => self.apply(config, &mut active, &sessions, &end_sessions).await,
                        Err(e) => Err(ReloadError::Config(e)),
                    };
                    self.metrics.reload(result.is_ok());
                    match &result {
                        Ok(()) => tracing::info!(listeners = active.len(), "configuration reloaded"),
                        Err(e) => tracing::error!("reload rejected, the previous configuration keeps serving: {e}"),
                    }
                    let _ = req.done.send(result);
                }
            }
        }
        for a in active.values() {
            a.stop();
        }
        for c in self.clusters.values() {
            c.stop();
        }
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
        admin_stop.cancel();
        tracing::info!("stopped");
    }

    /// Applies a new configuration; see [`Reloader::reload`].
    async fn apply(
        &mut self,
        config: Config,
        active: &mut HashMap<String, Active>,
        sessions: &TaskTracker,
        end_sessions: &CancellationToken,
    ) -> Result<(), ReloadError> {
        warn_exposed(&config);
        // First every new socket, so a failure leaves everything as it was.
        let mut sockets = HashMap::new();
        for l in &config.listeners {
            // Port 0 in the old config means "whatever was bound": the bound address counts.
            let same_address = active
                .get(&l.name)
                .is_some_and(|a| a.config().listen == l.listen || a.local == l.listen);
            if !same_address {
                sockets.insert(l.name.clone(), bind(&l.name, l.listen).await?);
            }
        }
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        active.retain(|name, a| {
            let keep = names.contains(name);
            if !keep {
                tracing::info!(listener = %name, "listener removed; open sessions continue");
                a.stop();
            }
            keep
        });
        self.clusters.retain(|name, c| {
            let keep = names.contains(name);
            if !keep {
                c.stop();
            }
            keep
        });
        let mut current = Vec::with_capacity(config.listeners.len());
        for l in config.listeners {
            let name = l.name.clone();
            let listener = self.start_listener(l);
            if let Some(old) = active.get(&name) {
                // Clients switching to the new listener keep a token to authenticate with.
                listener.auth.carry_over(&old.current.borrow().auth);
            }
            current.push(listener.clone());
            match sockets.remove(&name) {
                // Same address: keep the socket (nothing in its backlog is lost); connected
                // clients see the new listener through their handle.
                None => {
                    if let Some(a) = active.get_mut(&name) {
                        warn_if_risky(&listener.config, a.local);
                        a.swap(listener);
                    }
                }
                Some(socket) => {
                    if let Some(old) = active.remove(&name) {
                        old.stop();
                    }
                    announce(&listener.config, &socket);
                    let a = Active::start(Bound { listener, socket }, sessions, end_sessions);
                    active.insert(name, a);
                }
            }
        }
        *crate::lock(&self.current) = current;
        self.shutdown_grace = config.shutdown_grace;
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BindError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}

fn admission(all: &mut HashMap<String, Arc<Admission>>, name: &str) -> Arc<Admission> {
    all.entry(name.to_owned()).or_default().clone()
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|error| BindError {
        name: name.to_owned(),
        addr,
        error,
    })
}

fn announce(l: &ListenerConfig, socket: &TcpListener) {
    let local = socket.local_addr().unwrap_or(l.listen);
    warn_if_risky(l, local);
    tracing::info!(listener = %l.name, listen = %local, upstream = %l.upstream_list(),
        auth = l.auth.is_some(), "listening");
}

/// A listener being served: its accept loop and the listener state its clients watch.
pub(crate) struct Active {
    local: SocketAddr,
    current: watch::Sender<Arc<Listener>>,
    stop_accepting: CancellationToken,
}

impl Active {
    pub(crate) fn start(
        b: Bound,
        sessions: &TaskTracker,
        end_sessions: &CancellationToken,
    ) -> Active {
        let local = b.socket.local_addr().unwrap_or(b.listener.config.listen);
        let name = b.listener.config.name.clone();
        let (current, handle) = watch::channel(b.listener);
        let stop_accepting = CancellationToken::new();
        tokio::spawn(accept_loop(
            name,
            b.socket,
            handle,
            sessions.clone(),
            stop_accepting.clone(),
            end_sessions.clone(),
        ));
        Active {
            local,
            current,
            stop_accepting,
        }
    }

    fn config(&self) -> Arc<ListenerConfig> {
        self.current.borrow().config.clone()
    }

    fn name(&self) -> String {
        self.current.borrow().config.name.clone()
    }

    /// The new listener state replaces the old for every client; the old one's pool and node
    /// stop (its idle sessions close).
    pub(crate) fn swap(&self, listener: Arc<Listener>) {
        self.current.send_replace(listener).stop();
    }

    pub(crate) fn stop(&self) {
        self.stop_accepting.cancel();
        self.current.borrow().stop();
    }
}

fn warn_exposed(config: &Config) {
    for w in config.exposed_secrets() {
        tracing::warn!("{w}");
    }
}

fn warn_if_risky(l: &ListenerConfig, local: SocketAddr) {
    for risk in warnings(l, local) {
        tracing::warn!(listener = %l.name, listen = %local, upstream = %l.upstream_list(), "{risk}");
    }
}

/// What an operator must be told about this listener's exposure, bound at `local`: `run` logs
/// it at WARN (at start and on reload) and `check` prints it, from this one list so the two
/// never disagree.
pub fn warnings(l: &ListenerConfig, local: SocketAddr) -> Vec<String> {
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
    name: String,
    socket: TcpListener,
    handle: Handle,
    sessions: TaskTracker,
    stop: CancellationToken,
    end_sessions: CancellationToken,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failed = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => {
                if failed > 0 {
                    tracing::info!(listener = %name, failed, "accepting clients again");
                }
                (backoff, failed) = (ACCEPT_BACKOFF_MIN, 0);
                let l = handle.borrow().clone();
                let Some(slot) = l.admission.clients.try_take(l.config.max_clients) else {
                    l.metrics.limit_hit(Limit::MaxClients);
                    tracing::debug!(listener = %name, client = %peer, max_clients = l.config.max_clients, "client refused: max_clients reached");
                    match l.admission.refusing.try_take(MAX_REFUSING) {
                        Some(r) => {
                            sessions.spawn(refuse(client, r, end_sessions.clone()));
                        }
                        // A flood: told if its socket takes the line now, closed at once.
                        None => {
                            let _ = client.try_write(MAX_CLIENTS_REPLY.as_bytes());
                        }
                    }
                    continue;
                };
                tracing::debug!(listener = %name, client = %peer, "client connected");
                sessions.spawn(serve(
                    client,
                    peer,
                    handle.clone(),
                    slot,
                    end_sessions.clone(),
                ));
            }
            // Out of file descriptors or a similar passing condition: back off rather than
            // spin, and keep the listener (mini-redis does the same). Logged once per episode,
            // counted every time.
            Err(e) => {
                handle.borrow().metrics.accept_errors.inc();
                if failed == 0 {
                    tracing::warn!(listener = %name, error = %e, "accept failed; backing off until it works again (counted in ectunnel_accept_errors_total)");
                }
                failed += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// What Redis answers a client past `maxclients`, before closing it.
const MAX_CLIENTS_REPLY: &str = "-ERR ectunnel: max number of clients reached\r\n";

/// A client past `max_clients`, told so as Redis tells it; counted in [`MAX_REFUSING`], and cut
/// short at the end of the shutdown grace like any client.
async fn refuse(client: tokio::net::TcpStream, _refusing: Slot, end: CancellationToken) {
    tokio::select! {
        _ = client::refuse_line(client, MAX_CLIENTS_REPLY) => {}
        _ = end.cancelled() => {}
    }
}

/// One admitted client, counted in its listener's `max_clients` while it is served.
async fn serve(
    client: tokio::net::TcpStream,
    peer: SocketAddr,
    handle: Handle,
    slot: Slot,
    end: CancellationToken,
) {
    let name = handle.borrow().config.name.clone();
    tokio::select! {
        _ = client::serve(client, peer, handle) => {}
        _ = end.cancelled() => tracing::debug!(listener = %name,
            client = %peer, "session closed at end of shutdown grace"),
    }
    drop(slot);
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
        assert!(warnings(&quiet, quiet.listen).is_empty());
        let v6 = listener("", "[::1]:6379");
        assert!(warnings(&v6, v6.listen).is_empty());
        let loud = listener(
            "[tls]\ninsecure_skip_verify = true\n[auth]\npassword = \"t-0000000000000000\"\n[client_auth]\nmode = \"require\"\npassword = \"c-0000000000000000\"",
            "0.0.0.0:6379",
        );
        let r = warnings(&loud, loud.listen);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("NOT verified"));
        assert!(r[1].contains("non-loopback") && r[1].contains("client_auth password"));
        let open = listener("[auth]\npassword = \"t-0000000000000000\"", "0.0.0.0:6379");
        let r = warnings(&open, open.listen);
        assert!(r[0].contains("injected credentials"), "{r:?}");
    }
}
