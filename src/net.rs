//! Socket options every connection gets, client side and upstream side alike.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::limits::KEEPALIVE_PROBES;

/// TCP_NODELAY (RESP is request/response: Nagle would hold small replies back waiting for
/// ACKs) and, unless `keepalive` is `None`, TCP keepalive: a peer that vanished without a reset
/// (a node gone from the network, a client machine powered off) is then noticed by the kernel
/// instead of holding its session forever.
pub fn tune(socket: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    socket.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        let every = (idle / 3).max(Duration::from_secs(1));
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(every)
            .with_retries(KEEPALIVE_PROBES);
        SockRef::from(socket).set_tcp_keepalive(&ka)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_is_set_as_asked() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune(&s, Some(Duration::from_secs(30))).unwrap();
        let r = SockRef::from(&s);
        assert!(r.keepalive().unwrap() && r.tcp_nodelay().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(r.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        let plain = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune(&plain, None).unwrap();
        assert!(!SockRef::from(&plain).keepalive().unwrap());
    }
}
