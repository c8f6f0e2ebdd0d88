//! How many connections a listener open to the cluster serves at once: in
//! all, and from any one peer address.
//!
//! The metrics and health ports are reachable from other pods (Prometheus,
//! kubelet), and each connection holds memory and a file descriptor that the
//! sidecar's tool calls need too. A cap in all bounds that; a smaller cap per
//! peer keeps one misbehaving pod from taking every slot, so Prometheus or
//! kubelet, from their own addresses, still get in during a flood. Neither
//! hyper nor tonic limits connections (tower's limits count requests), hence
//! this small wrapper: a slot is taken at accept and given back when the
//! connection is dropped.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The connections a listener holds, in all and by peer address.
#[derive(Debug)]
pub struct ConnLimit {
    total: usize,
    per_peer: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

impl ConnLimit {
    /// At most `total` connections at once, `per_peer` of them from one
    /// address.
    pub fn new(total: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_peer,
            held: Mutex::default(),
        })
    }

    /// A slot for a connection from `peer`, or `None` when the listener or
    /// that peer is at its cap (the caller closes the connection).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let from_peer = held.by_peer.get(&peer).copied().unwrap_or(0);
        if held.total >= self.total || from_peer >= self.per_peer {
            return None;
        }
        held.total += 1;
        held.by_peer.insert(peer, from_peer + 1);
        Some(Slot {
            limit: self.clone(),
            peer,
        })
    }
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<ConnLimit>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limit.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        if let Some(n) = held.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

/// A connection holding its [`Slot`] for as long as it lives.
pub struct Limited<S> {
    io: S,
    _slot: Slot,
}

impl<S> Limited<S> {
    pub fn new(io: S, slot: Slot) -> Self {
        Self { io, _slot: slot }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));

    #[test]
    fn a_peer_at_its_cap_is_refused_while_others_get_in() {
        let limit = ConnLimit::new(5, 2);
        let a: Vec<_> = (0..2)
            .map(|_| limit.admit(A).expect("under the cap"))
            .collect();
        assert!(limit.admit(A).is_none(), "a third from one peer");
        let b = limit.admit(B).expect("another peer");
        drop(a);
        assert!(limit.admit(A).is_some(), "a slot given back is free again");
        drop(b);
        assert!(limit.held.lock().unwrap().by_peer.is_empty());
    }

    #[test]
    fn the_cap_in_all_holds_across_peers_and_frees_on_drop() {
        let limit = ConnLimit::new(3, 2);
        let held = [limit.admit(A), limit.admit(B), limit.admit(C)];
        assert!(held.iter().all(Option::is_some));
        assert!(limit.admit(C).is_none(), "the listener is full");
        drop(held);
        let held = limit.held.lock().unwrap();
        assert_eq!(held.total, 0);
        assert!(held.by_peer.is_empty());
    }
}
