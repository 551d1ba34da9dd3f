//! A listener's running state: its configuration, the node authority, the pool and the shared
//! sessions; in cluster mode, where the cluster's nodes are reachable locally. Clients hold a
//! [`Handle`], a `watch` of the *current* listener, never a copy: after a reload, whatever a
//! connected client dials uses the new configuration.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::config::{ClusterMode, ListenerConfig};
use crate::ops::metrics::ListenerMetrics;
use crate::proto::rewrite;
use crate::upstream::conn::At;
use crate::upstream::mux::{self, Mux};
use crate::upstream::{Node, Pool, Resolver};

/// What a listener in front of a cluster asks the cluster layer ([`crate::cluster`]): the
/// local address of each node (and news of a `-MOVED`), and whether the topology is known.
pub trait Nodes: rewrite::Map + Send + Sync {
    /// Why the topology cannot be trusted now (unknown, or `cluster_ports` full), for `/readyz`.
    fn unready(&self) -> Option<String>;
}

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
    /// In front of a cluster (`cluster` not `"off"`): its nodes' local listeners.
    pub cluster: Option<Arc<dyn Nodes>>,
    stop: CancellationToken,
}

/// What a listener is started with besides its configuration.
pub struct Parts {
    pub resolver: Resolver,
    pub metrics: ListenerMetrics,
    pub admission: Arc<Admission>,
    /// Another listener's authority to share (a cluster's node listeners share their
    /// configuration endpoint's: one IAM signer, one rotation state); `None`: its own.
    pub auth: Option<Auth>,
    pub cluster: Option<Arc<dyn Nodes>>,
}

impl Listener {
    /// Starts the node authority and the pool, which begins dialling at once.
    pub fn start(
        config: ListenerConfig,
        resolver: Resolver,
        metrics: ListenerMetrics,
        admission: Arc<Admission>,
    ) -> Listener {
        let parts = Parts {
            resolver,
            metrics,
            admission,
            auth: None,
            cluster: None,
        };
        Listener::start_with(config, parts)
    }

    /// [`Listener::start`] with every part given.
    pub fn start_with(config: ListenerConfig, parts: Parts) -> Listener {
        let Parts {
            resolver,
            metrics,
            admission,
            auth,
            cluster,
        } = parts;
        let idle = config.client_idle_timeout.map(|d| d.as_secs_f64());
        metrics.limits(config.max_clients, config.max_sessions, idle);
        let config = Arc::new(config);
        let stop = CancellationToken::new();
        let auth = auth.unwrap_or_else(|| Auth::start(&config, metrics.clone(), stop.clone()));
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
        if let Some(nodes) = &cluster {
            pool.on_cluster(nodes.clone());
        }
        let rewriting = cluster.clone().map(|nodes| mux::Cluster {
            map: nodes,
            always: config.cluster == ClusterMode::On,
        });
        let mux = Mux::new(
            config.pool.clone(),
            metrics.clone(),
            config.name.clone(),
            rewriting,
        );
        Listener {
            config,
            auth,
            node,
            pool,
            mux,
            metrics,
            admission,
            cluster,
            stop,
        }
    }

    /// How a session at `at` rewrites node addresses, if it does: in front of a cluster, when
    /// the server said cluster mode at the dial (or `cluster = "on"`).
    pub fn rewrite(&self, at: &At) -> Option<rewrite::Rewrite> {
        self.mux.rewrite(at)
    }

    /// Ready: the pool reached its upstream and filled once, and a cluster's topology is known.
    pub fn readiness(&self) -> Result<(), String> {
        self.pool.readiness()?;
        match self.cluster.as_ref().and_then(|c| c.unready()) {
            Some(why) => Err(why),
            None => Ok(()),
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
