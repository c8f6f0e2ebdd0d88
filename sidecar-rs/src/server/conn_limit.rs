//! How many connections a listener open to the cluster serves at once: in
//! all, and from any one peer address; and, where asked, how long a new
//! connection may take to send its first bytes.
//!
//! The metrics and health ports are reachable from other pods (Prometheus,
//! kubelet), and so is a TCP data plane; each connection holds memory and a
//! file descriptor that the sidecar's tool calls need too. A cap in all
//! bounds that; a smaller cap per peer keeps one misbehaving pod from taking
//! every slot, so Prometheus, kubelet or a brain, from their own addresses,
//! still get in during a flood. Neither hyper nor tonic limits connections
//! (tower's limits count requests), hence this small wrapper: a slot is taken
//! at accept and given back when the connection is dropped.
//!
//! The first-bytes deadline is for the TCP data plane: hyper's HTTP/2 server
//! waits for a client's preface without a deadline, and its keep-alive pings
//! start only after it, so a connection that sent nothing, or part of the
//! preface, was held for good. tonic's connection age would also end the
//! long-lived streams of real clients, and a read timeout (tokio-io-timeout)
//! applies to every read, so it would end a healthy connection that is idle;
//! this one applies until the first bytes have arrived and never again.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
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

    /// `io` with a slot of its own, or `None` when its listener or its peer
    /// is at its cap (counted in `refused`; dropping `io` closes it).
    pub fn admit_stream(
        self: &Arc<Self>,
        io: TcpStream,
        refused: &IntCounter,
    ) -> Option<Limited<TcpStream>> {
        let slot = io.peer_addr().ok().and_then(|peer| self.admit(peer.ip()));
        if slot.is_none() {
            refused.inc();
        }
        slot.map(|slot| Limited::new(io, slot))
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
    first_bytes: Option<FirstBytes>,
}

/// The deadline on a connection's first bytes (see the module's doc).
struct FirstBytes {
    /// Bytes still to arrive before the deadline no longer applies.
    awaiting: usize,
    deadline: Pin<Box<Sleep>>,
    expired: bool,
}

impl<S> Limited<S> {
    pub fn new(io: S, slot: Slot) -> Self {
        Self {
            io,
            _slot: slot,
            first_bytes: None,
        }
    }

    /// Fails the connection's reads unless its first `bytes` bytes arrive
    /// `within` this long of now.
    pub fn first_bytes_within(mut self, bytes: usize, within: Duration) -> Self {
        self.first_bytes = Some(FirstBytes {
            awaiting: bytes,
            deadline: Box::pin(tokio::time::sleep(within)),
            expired: false,
        });
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(first) = this.first_bytes.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if first.expired {
            return Poll::Ready(Err(late()));
        }
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                first.awaiting = first.awaiting.saturating_sub(read);
                // All arrived, or the end of the stream (the server sees it).
                if first.awaiting == 0 || (read == 0 && room) {
                    this.first_bytes = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if first.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                first.expired = true;
                Poll::Ready(Err(late()))
            }
            failed => failed,
        }
    }
}

fn late() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the connection's first bytes did not arrive in time",
    )
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

    fn slot() -> Slot {
        ConnLimit::new(1, 1).admit(A).unwrap()
    }

    async fn read_some(conn: &mut Limited<tokio::io::DuplexStream>) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        conn.read(&mut buf).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_fails_at_the_deadline() {
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Limited::new(server, slot()).first_bytes_within(24, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let err = read_some(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // And stays failed.
        assert_eq!(
            read_some(&mut conn).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn part_of_the_first_bytes_is_not_enough() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Limited::new(server, slot()).first_bytes_within(24, Duration::from_secs(10));
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(read_some(&mut conn).await.unwrap(), 16);
        let err = read_some(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_first_bytes_arrived_an_idle_connection_is_never_cut() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Limited::new(server, slot()).first_bytes_within(24, Duration::from_secs(10));
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(read_some(&mut conn).await.unwrap(), 16);
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        assert_eq!(read_some(&mut conn).await.unwrap(), 8);
        // Idle for an hour: the read waits, and data after it arrives.
        let idle = tokio::time::timeout(Duration::from_secs(3600), read_some(&mut conn)).await;
        assert!(idle.is_err(), "the read must still be waiting: {idle:?}");
        client.write_all(b"frame").await.unwrap();
        assert_eq!(read_some(&mut conn).await.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_a_connection_waits_for_good() {
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = Limited::new(server, slot());
        let idle = tokio::time::timeout(Duration::from_secs(3600), read_some(&mut conn)).await;
        assert!(idle.is_err());
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
