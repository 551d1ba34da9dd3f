//! One cluster node's local listener: an ordinary listener (pool, shared sessions, AUTH, the
//! node authority) whose upstream is that node, on a port of `cluster_ports` or an ephemeral
//! one. It keeps its port across reloads; its listener state is swapped like any other's.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket};

use super::Ctx;
use crate::admission::Admission;
use crate::config::{ClusterMode, ListenerConfig, Role, Upstream, UpstreamAddr};
use crate::listener::{Listener, Nodes, Parts};
use crate::server::{Active, Bound};

/// A node's listener while the node is in the topology.
pub struct NodeListener {
    pub upstream: UpstreamAddr,
    pub local: SocketAddr,
    /// Topology reads in a row that left the node out.
    pub absent: u32,
    active: Active,
    admission: Arc<Admission>,
}

impl NodeListener {
    /// Starts serving `upstream` on `socket`, configured from the cluster's listener `parent`.
    pub fn start(
        ctx: &Ctx,
        parent: &Listener,
        link: Arc<dyn Nodes>,
        upstream: UpstreamAddr,
        socket: TcpListener,
    ) -> Result<NodeListener, String> {
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let admission = Arc::new(Admission::default());
        let listener = node_listener(ctx, parent, link, &upstream, local, admission.clone())?;
        tracing::info!(listener = %parent.config.name, node = %upstream, listen = %local, "cluster node listening");
        let active = Active::start(Bound { listener, socket }, &ctx.sessions, &ctx.end_sessions);
        Ok(NodeListener {
            upstream,
            local,
            absent: 0,
            active,
            admission,
        })
    }

    /// Takes the configuration of a reloaded `parent`; connected clients see it through their
    /// handle, as on any listener.
    pub fn reconfigure(
        &self,
        ctx: &Ctx,
        parent: &Listener,
        link: Arc<dyn Nodes>,
    ) -> Result<(), String> {
        let admission = self.admission.clone();
        let l = node_listener(ctx, parent, link, &self.upstream, self.local, admission)?;
        self.active.swap(l);
        Ok(())
    }

    /// Stops accepting; connected clients finish on what they have.
    pub fn stop(&self) {
        self.active.stop();
    }
}

/// However a node listener leaves (retired, the cluster stopped or dropped), its port closes.
impl Drop for NodeListener {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node_listener(
    ctx: &Ctx,
    parent: &Listener,
    link: Arc<dyn Nodes>,
    upstream: &UpstreamAddr,
    local: SocketAddr,
    admission: Arc<Admission>,
) -> Result<Arc<Listener>, String> {
    let config = node_config(&parent.config, upstream, local)?;
    let parts = Parts {
        resolver: ctx.resolver.clone(),
        metrics: ctx.metrics.node(&parent.config.name, &upstream.to_string()),
        admission,
        auth: Some(parent.auth.clone()),
        cluster: Some(link),
    };
    Ok(Arc::new(Listener::start_with(config, parts)))
}

/// The cluster listener's configuration pointed at one node. TLS verifies the node's own name
/// when the cluster announces hostnames; an IP endpoint is verified against the listener's
/// name (its `server_name`, or the configuration endpoint's name), since a certificate rarely
/// carries node IPs.
pub fn node_config(
    parent: &ListenerConfig,
    upstream: &UpstreamAddr,
    local: SocketAddr,
) -> Result<ListenerConfig, String> {
    let server_name = match upstream.host.parse::<IpAddr>() {
        Ok(ip) => match parent.upstreams.first().map(|u| &u.server_name) {
            Some(ServerName::IpAddress(_)) | None => ServerName::IpAddress(ip.into()),
            Some(name) => name.clone(),
        },
        Err(_) => crate::config::server_name_for(&upstream.host)
            .ok_or_else(|| format!("`{}` cannot be verified as a TLS name", upstream.host))?,
    };
    Ok(ListenerConfig {
        name: format!("{}/{upstream}", parent.name),
        listen: local,
        upstreams: vec![Upstream {
            addr: upstream.clone(),
            server_name,
        }],
        role: Role::Any,
        cluster: ClusterMode::On,
        cluster_ports: None,
        ..parent.clone()
    })
}

/// Binds a node listener on `ip`: the first free port of `ports` not in `taken`, or an
/// ephemeral one. `Err` names why no port could be had (the range is full).
pub fn bind(
    ip: IpAddr,
    ports: Option<&RangeInclusive<u16>>,
    taken: &HashSet<u16>,
) -> Result<TcpListener, String> {
    let Some(range) = ports else {
        return listen(SocketAddr::new(ip, 0)).map_err(|e| e.to_string());
    };
    let mut last = None;
    for port in range.clone().filter(|p| !taken.contains(p)) {
        match listen(SocketAddr::new(ip, port)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(format!("{port}: {e}")),
        }
    }
    let (lo, hi) = (range.start(), range.end());
    Err(match last {
        Some(e) => format!("cluster_ports {lo}-{hi} has no free port (last tried {e})"),
        None => format!("cluster_ports {lo}-{hi} is full"),
    })
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(upstream: &str, server_name: &str) -> ListenerConfig {
        let tls = if server_name.is_empty() {
            String::new()
        } else {
            format!("[tls]\nserver_name = \"{server_name}\"\n")
        };
        let text = format!(
            "{tls}[[listener]]\nname = \"c\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
        );
        crate::Config::from_toml(&text, "t.toml")
            .unwrap()
            .listeners
            .remove(0)
    }

    fn name_for(parent: &ListenerConfig, host: &str) -> String {
        let up = UpstreamAddr {
            host: host.into(),
            port: 7000,
        };
        let c = node_config(parent, &up, "127.0.0.1:7100".parse().unwrap()).unwrap();
        assert_eq!(
            (c.role, c.cluster, c.upstreams.len()),
            (Role::Any, ClusterMode::On, 1)
        );
        assert_eq!(c.name, format!("c/{up}"));
        c.upstreams[0].server_name.to_str().into_owned()
    }

    #[test]
    fn a_node_is_verified_by_its_hostname_or_by_the_listeners_name() {
        let by_name = parent("clustercfg.example:6379", "");
        assert_eq!(name_for(&by_name, "n-0001.example"), "n-0001.example");
        assert_eq!(name_for(&by_name, "10.0.0.7"), "clustercfg.example");
        let by_ip = parent("10.0.0.1:6379", "");
        assert_eq!(name_for(&by_ip, "10.0.0.7"), "10.0.0.7");
        let named = parent("10.0.0.1:6379", "cache.example");
        assert_eq!(name_for(&named, "10.0.0.7"), "cache.example");
        assert_eq!(name_for(&named, "n-0002.example"), "n-0002.example");
    }

    #[tokio::test]
    async fn takes_the_first_free_port_of_the_range_and_says_when_it_is_full() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = bind(ip, None, &HashSet::new()).unwrap();
        let port = first.local_addr().unwrap().port();
        // A range of one port another socket holds: full.
        let e = bind(ip, Some(&(port..=port)), &HashSet::new()).unwrap_err();
        assert!(
            e.contains(&format!("{port}-{port} has no free port")),
            "{e}"
        );
        let taken = HashSet::from([port]);
        let e = bind(ip, Some(&(port..=port)), &taken).unwrap_err();
        assert!(e.ends_with("is full"), "{e}");
        drop(first);
        let again = bind(ip, Some(&(port..=port)), &HashSet::new()).unwrap();
        assert_eq!(again.local_addr().unwrap().port(), port);
    }
}
