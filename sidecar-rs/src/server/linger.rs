//! Lingering close for the gRPC listeners' connections.
//!
//! When the server is done with a connection (the client went away, or the
//! drain ended its last stream) the socket is not closed at once: its write
//! side is shut (the client reads everything sent so far, then end of file)
//! and whatever the client still sends is read and discarded until it closes
//! its side, or [`LINGER_MAX`] passes. Closing a socket that has unread input
//! makes the kernel reset the connection, and a client that is still writing
//! (a WINDOW_UPDATE, a PING, a cancel) then fails its streams before it has
//! read their last results, e.g. the CANCELLED answers sent at the drain
//! timeout. This is the "lingering close" of nginx and Apache httpd; neither
//! hyper nor tonic offers it, hence this small wrapper.
//!
//! Every lingering close runs on a [`TaskTracker`], so `run` can wait for the
//! last results to reach their clients before the process exits.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

/// Longest a closed connection waits for its client to close its side.
pub const LINGER_MAX: Duration = Duration::from_secs(2);

/// An accepted connection that closes lingering when dropped.
pub struct Lingering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only once dropped.
    io: Option<S>,
    tracker: TaskTracker,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<S> {
    pub fn new(io: S, tracker: TaskTracker) -> Self {
        Self {
            io: Some(io),
            tracker,
        }
    }

    fn io(&mut self) -> io::Result<&mut S> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(mut io) = self.io.take() else {
            return;
        };
        // Outside a runtime (the process is exiting) there is no one left to
        // linger for.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.tracker.spawn(async move {
            let _ = tokio::time::timeout(LINGER_MAX, async move {
                let _ = io.shutdown().await;
                let mut sink = [0u8; 4096];
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S> Connected for Lingering<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Connected + 'static,
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.io {
            Some(io) => io.connect_info(),
            // Never asked after drop; a type with no value to give cannot
            // be built here, so this arm is unreachable by construction.
            None => unreachable!("connect_info on a dropped connection"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn dropping_shuts_the_write_side_and_reads_until_the_client_closes() {
        let tracker = TaskTracker::new();
        let (server, mut client) = duplex(64);
        let mut conn = Lingering::new(server, tracker.clone());
        conn.write_all(b"last results").await.unwrap();
        drop(conn);
        // The client can still write without error, and reads what was sent, then EOF.
        client.write_all(b"window update").await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last results");
        drop(client);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(1), tracker.wait())
            .await
            .expect("the linger ends when the client closes");
    }
}
