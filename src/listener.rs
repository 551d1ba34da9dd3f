//! A listener's running state: its configuration, the node authority, the pool and the shared
//! sessions. Clients hold a [`Handle`], a `watch` of the *current* listener, never a copy: after a
//! reload, whatever a connected client dials uses the new configuration.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::config::ListenerConfig;
use crate::ops::metrics::ListenerMetrics;
use crate::upstream::mux::Mux;
use crate::upstream::{Node, Pool, Resolver};

/// What a client task holds: the listener as it is now.
pub type Handle = watch::Receiver<Arc<Listener>>;

pub struct Listener {
    pub config: Arc<ListenerConfig>,
    /// What sessions present as AUTH: the password the server takes, or the current token.
    pub auth: Auth,
    pub node: Node,
    pub pool: Pool,
    pub mux: Mux,
    pub metrics: ListenerMetrics,
    /// Its open clients and sessions; the same across reloads.
    pub admission: Arc<Admission>,
    stop: CancellationToken,
}

impl Listener {
    /// Starts the node authority and the pool, which begins dialling at once.
    pub fn start(
        config: ListenerConfig,
        resolver: Resolver,
        metrics: ListenerMetrics,
        admission: Arc<Admission>,
    ) -> Listener {
        let idle = config.client_idle_timeout.map(|d| d.as_secs_f64());
        metrics.limits(config.max_clients, config.max_sessions, idle);
        let config = Arc::new(config);
        let stop = CancellationToken::new();
        let auth = Auth::start(&config, metrics.clone(), stop.clone());
        let node = Node::start(
            config.clone(),
            resolver.clone(),
            auth.clone(),
            metrics.clone(),
            stop.clone(),
        );
        let pool = Pool::start(
            config.clone(),
            resolver,
            auth.clone(),
            node.clone(),
            metrics.clone(),
            admission.clone(),
            stop.clone(),
        );
        let mux = Mux::new(config.pool.clone(), metrics.clone(), config.name.clone());
        Listener {
            config,
            auth,
            node,
            pool,
            mux,
            metrics,
            admission,
            stop,
        }
    }

    /// Stops its background work (the node's checks, the pool's refills; idle sessions close)
    /// and retires its shared sessions, whose clients move to the listener that replaces it.
    /// Sessions of a client's own finish with their clients.
    pub fn stop(&self) {
        self.stop.cancel();
        self.mux.retire_all();
    }
}
