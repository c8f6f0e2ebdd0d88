//! One HTTP/2 connection to an origin set to `http: http2`, every call to it
//! a stream on that connection, made again when it closes.
//!
//! Why not hyper-util's pooled client, which the other origins use: for an
//! HTTP/2 origin its pool holds one shared connection too, but every call
//! still goes through the pool's machinery: a boxed request future sized by
//! the connect path it keeps inline (3.7 KiB held per call in flight, the
//! largest single share of an HTTP/2 call's memory), a checkout and a return
//! that hash the origin with SipHash under the pool's lock, and, on a cold
//! pool, a burst of calls may open a second connection while the first is
//! set up. A connection to one origin needs none of that: a lock held while
//! a request is queued on hyper's sender, and one connect shared by the calls
//! that wait for it. No crate offers that piece alone (hyper-util's
//! `Singleton` is unstable and still boxes each call), so it is here.
//!
//! What it keeps from the pooled client: the same connector (the egress
//! guard's resolver, rustls, one deadline over the whole connect), the same
//! HTTP/2 settings (adaptive window, keep-alive pings while calls are open),
//! and resending a request the connection closed before it was written
//! (hyper hands such a request back).

use std::error::Error as StdError;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::TokioTimer;

use crate::upstream::http::{
    Connector, HTTP2_MAX_HEADER_LIST_SIZE, HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT,
};

type Sender = SendRequest<Full<Bytes>>;

/// Spawns hyper's HTTP/2 tasks boxed.
///
/// hyper spawns a task for every request (the one that waits for its
/// response), typed as one enum with the connection's own task, so each is
/// the connection's size; tokio copies a task's future whole as it spawns it
/// and again at every stage change (running, finished, consumed). Boxed, the
/// task holds a pointer and those copies are a word each, for one allocation
/// per request. hyper-util's `TokioExecutor` spawns the future as it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BoxedSpawn;

impl<F> hyper::rt::Executor<F> for BoxedSpawn
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// A connect failure, shared by every call that waited for that connect.
type ConnectFailure = Arc<dyn StdError + Send + Sync>;

/// How many times one request is queued again on a connection that closed
/// before the request was written (hyper hands it back), and how many
/// connects past the first it waits for. Bounded so an origin that accepts
/// connections and drops them at once fails the call instead of keeping it
/// in a loop.
const MAX_REQUEUES: u8 = 3;

/// How long a connection may go without a request before it is replaced
/// instead of used: what hyper-util's pool allows an idle connection (the
/// other origins' clients). Pings run only while streams are open (an idle
/// connection pinged every 30 s is what some servers close as abuse), so a
/// peer that vanished while the connection was idle is not noticed until a
/// call waits on it; past this, no call is risked on it.
const IDLE_TIMEOUT: Duration = crate::upstream::http::POOL_IDLE_TIMEOUT;

/// Why a request to a multiplexed origin failed.
///
/// `Error` is implemented by hand rather than derived: the connect failure
/// is shared (an `Arc`), and the `Arc`'s own `source()` skips to its
/// content's cause, which would hide the connector's error
/// (`ConnectTimedOut`, an egress denial) from callers that look for it in
/// the chain.
#[derive(Debug)]
pub enum Error {
    /// No connection: the name, TCP or TLS failed or took too long, or the
    /// HTTP/2 preface could not be written (the cause says which).
    Connect(ConnectFailure),
    /// The request on the connection failed.
    Send(hyper::Error),
    /// Every connection made for the request closed before it could be
    /// queued on one.
    Closed,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first two as hyper-util's client says them: the cause that
        // follows in the chain is what error messages show.
        f.write_str(match self {
            Error::Connect(_) => "client error (Connect)",
            Error::Send(_) => "client error (SendRequest)",
            Error::Closed => "the connection to the origin closed before the request was sent, each time it was made again",
        })
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Connect(failure) => Some(&**failure),
            Error::Send(e) => Some(e),
            Error::Closed => None,
        }
    }
}

impl Error {
    /// Whether the failure was in connecting (as hyper-util's `is_connect`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// The live connection, or the connect under way.
#[derive(Default)]
struct State {
    live: Option<Sender>,
    /// When a request was last queued on `live`.
    used: Option<Instant>,
    /// Shared so every call arriving while the origin is being connected to
    /// waits for the same connect and gets its outcome (a dead origin costs
    /// one connect timeout per wave of calls, not one per call in turn).
    connecting: Option<Shared<BoxFuture<'static, Result<Sender, ConnectFailure>>>>,
}

/// The connection to one origin. Dropped with the last tool that calls the
/// origin; hyper then closes the connection once its open streams end.
pub struct Multiplexed {
    origin: Uri,
    connector: Connector,
    builder: Builder<BoxedSpawn>,
    state: Arc<Mutex<State>>,
    /// [`IDLE_TIMEOUT`]; shorter in tests.
    idle_timeout: Duration,
}

impl std::fmt::Debug for Multiplexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexed")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Multiplexed {
    /// Connections to `origin` (`scheme://host:port`) through `connector`.
    pub fn new(origin: Uri, connector: Connector) -> Self {
        let mut builder = Builder::new(BoxedSpawn);
        builder
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(HTTP2_PING_INTERVAL)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE);
        Self {
            origin,
            connector,
            builder,
            state: Arc::default(),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Sends `request` (an absolute URI at this origin) as a stream on the
    /// connection, connecting first if there is none. Dropping the future
    /// resets the stream (CANCEL).
    pub async fn request(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Error> {
        let (mut requeued, mut connects) = (0u8, 0u8);
        loop {
            let queued = {
                let now = Instant::now();
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let fresh = state
                    .used
                    .is_some_and(|used| now.saturating_duration_since(used) < self.idle_timeout);
                match state
                    .live
                    .as_mut()
                    .filter(|live| fresh && !live.is_closed())
                {
                    Some(live) => {
                        let sending = live.try_send_request(request);
                        state.used = Some(now);
                        Ok(sending)
                    }
                    // Checked before a connect starts: it runs on its own
                    // once started, whether or not this call waits for it.
                    None if connects > MAX_REQUEUES => return Err(Error::Closed),
                    None => {
                        // Dropped, not closed: streams still open on it run
                        // to their end, then hyper closes it.
                        state.live = None;
                        Err((request, self.connecting(&mut state)))
                    }
                }
            };
            match queued {
                Ok(sending) => match sending.await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if requeued < MAX_REQUEUES => {
                            tracing::debug!("connection closed before the request was written; sending it again");
                            requeued += 1;
                            request = unsent;
                        }
                        _ => return Err(Error::Send(e.into_error())),
                    },
                },
                Err((unsent, connecting)) => {
                    connects += 1;
                    request = unsent;
                    connecting.await.map_err(Error::Connect)?;
                }
            }
        }
    }

    /// Whether there is an open connection (tests watch it close).
    #[cfg(test)]
    fn is_live(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.live.as_ref().is_some_and(|live| !live.is_closed())
    }

    /// The connect under way, or a new one. It runs in a task of its own,
    /// so it ends within the connect timeout whether or not a call still
    /// waits for it (a connect left half done by calls that gave up would
    /// otherwise be resumed, stale, by the next ones), and puts the
    /// connection in place for every later call.
    fn connecting(
        &self,
        state: &mut State,
    ) -> Shared<BoxFuture<'static, Result<Sender, ConnectFailure>>> {
        if let Some(connecting) = &state.connecting {
            return connecting.clone();
        }
        let connect = connect(
            self.connector.clone(),
            self.origin.clone(),
            self.builder.clone(),
        );
        // Weak: the state holds the connect while it runs.
        let slot: Weak<Mutex<State>> = Arc::downgrade(&self.state);
        let done = slot.clone();
        let task = tokio::spawn(async move {
            let outcome = connect.await;
            if let Some(state) = done.upgrade() {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.connecting = None;
                if let Ok(sender) = &outcome {
                    state.live = Some(sender.clone());
                    state.used = Some(Instant::now());
                }
            }
            outcome
        });
        let connecting = async move {
            task.await.unwrap_or_else(|e| {
                // Only a panic ends the task early (it is never aborted); the
                // next call must be able to try again.
                if let Some(state) = slot.upgrade() {
                    state.lock().unwrap_or_else(|e| e.into_inner()).connecting = None;
                }
                Err(Arc::new(e) as ConnectFailure)
            })
        }
        .boxed()
        .shared();
        state.connecting = Some(connecting.clone());
        connecting
    }
}

/// Connects to `origin`, performs the HTTP/2 handshake and spawns the
/// connection's task.
async fn connect(
    mut connector: Connector,
    origin: Uri,
    builder: Builder<BoxedSpawn>,
) -> Result<Sender, ConnectFailure> {
    use tower_service::Service;
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(ConnectFailure::from)?;
    let io = connector.call(origin).await.map_err(ConnectFailure::from)?;
    let (sender, connection) = builder
        .handshake(io)
        .await
        .map_err(|e| Arc::new(e) as ConnectFailure)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 upstream connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::spec::AllowEntry;
    use crate::upstream::egress::EgressPolicy;
    use crate::upstream::http::tests::caused_by;
    use crate::upstream::http::{multiplexed, tls_config, ConnectTimedOut, UpstreamOptions};

    /// A loopback h2c origin answering `ok` to everything; counts the
    /// connections it accepted and keeps their tasks (to break them).
    struct Origin {
        port: u16,
        accepted: Arc<AtomicUsize>,
        connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
        server: JoinHandle<()>,
    }

    impl Origin {
        async fn start() -> Self {
            Self::serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        }

        fn serve(listener: TcpListener) -> Self {
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let (count, tasks) = (accepted.clone(), connections.clone());
            let server = tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let serve = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        TokioIo::new(socket),
                        service_fn(|_request| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }),
                    );
                    // Held across the spawn: the connection cannot answer
                    // (and a test cannot try to break it) before its task
                    // is on the list.
                    let mut tasks = tasks.lock().unwrap();
                    tasks.push(tokio::spawn(async move {
                        let _ = serve.await;
                    }));
                }
            });
            Self {
                port,
                accepted,
                connections,
                server,
            }
        }

        /// Drops every open connection without a word (no GOAWAY).
        fn break_connections(&self) {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    impl Drop for Origin {
        fn drop(&mut self) {
            self.server.abort();
            self.break_connections();
        }
    }

    /// What [`silent_peer`] does with a connection it accepts.
    enum Keep {
        /// Holds it open, never saying a word.
        Open,
        /// Closes it at once.
        Closed,
    }

    /// A loopback peer that accepts connections and answers nothing; its
    /// port, how many it accepted, and its task.
    async fn silent_peer(keep: Keep) -> (u16, Arc<AtomicUsize>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if let Keep::Open = keep {
                    held.push(socket);
                }
            }
        });
        (port, accepted, task)
    }

    /// Waits (10 s at most, else fails with `what`) until the connection's
    /// liveness is `live`.
    async fn becomes_live(connection: &Multiplexed, live: bool, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while connection.is_live() != live {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect(what);
    }

    fn connection_to(scheme: &str, port: u16, connect_timeout: Duration) -> Multiplexed {
        let policy = EgressPolicy::parse(&[AllowEntry::Text("127.0.0.1".into())]).unwrap();
        let options = UpstreamOptions {
            connect_timeout,
            ..UpstreamOptions::default()
        };
        let origin = format!("{scheme}://127.0.0.1:{port}").parse().unwrap();
        multiplexed(&options, tls_config().unwrap(), &policy, Some(port), origin)
    }

    fn get(scheme: &str, port: u16) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = format!("{scheme}://127.0.0.1:{port}/x").parse().unwrap();
        request
    }

    async fn burst(connection: &Multiplexed, port: u16, calls: usize) -> Vec<Result<u16, Error>> {
        let sends = (0..calls).map(|_| async {
            let response = connection.request(get("http", port)).await?;
            Ok(response.status().as_u16())
        });
        let within = Duration::from_secs(20);
        tokio::time::timeout(within, futures::future::join_all(sends))
            .await
            .expect("every request ends")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_on_a_cold_origin_shares_one_connection() {
        let origin = Origin::start().await;
        let connection = connection_to("http", origin.port, Duration::from_secs(5));

        let answers = burst(&connection, origin.port, 50).await;

        assert!(answers.iter().all(|a| matches!(a, Ok(200))), "{answers:?}");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_the_origin_breaks_is_made_again() {
        let origin = Origin::start().await;
        let connection = connection_to("http", origin.port, Duration::from_secs(5));
        assert!(matches!(
            burst(&connection, origin.port, 1).await[..],
            [Ok(200)]
        ));

        origin.break_connections();
        // Calls racing the close may fail (written to a socket the peer
        // closed, as with any client); once hyper has read the close, calls
        // get a new connection.
        becomes_live(&connection, false, "the close is seen").await;
        let answers = burst(&connection, origin.port, 10).await;

        assert!(answers.iter().all(|a| matches!(a, Ok(200))), "{answers:?}");
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_for_a_connect_share_its_failure() {
        // TCP connects at once; the peer never answers the TLS hello, so the
        // connect ends at its deadline. Twenty calls wait for that one
        // connect: one socket accepted, twenty connect errors, and no call
        // starts a connect of its own after it (which would make a dead
        // origin cost one connect timeout per call, in turn).
        let (port, accepted, held) = silent_peer(Keep::Open).await;
        let connection = connection_to("https", port, Duration::from_millis(300));

        let sends = (0..20).map(|_| connection.request(get("https", port)));
        let failures =
            tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(sends))
                .await
                .expect("the connect deadline ends every call");

        for failure in failures {
            let e = failure.expect_err("nothing answered");
            assert!(e.is_connect(), "{e:?}");
            assert!(caused_by::<ConnectTimedOut>(&e), "{e:?}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        held.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connect_goes_on_when_the_calls_waiting_for_it_give_up() {
        // A call that gives up (its deadline, its client gone) while the
        // connect is under way must not leave the connect half done for the
        // next call to resume, its own deadline long past: the connect
        // finishes on its own and the connection is there for later calls.
        // On a loaded machine one poll can now and then see the whole call
        // through (the connect and the answer on loopback); such a round
        // proves nothing and is run again.
        for _ in 0..20 {
            let origin = Origin::start().await;
            let connection = connection_to("http", origin.port, Duration::from_secs(5));
            let mut call = Box::pin(connection.request(get("http", origin.port)));
            if futures::poll!(call.as_mut()).is_ready() {
                continue;
            }
            drop(call);

            becomes_live(
                &connection,
                true,
                "the connect finished with no call waiting",
            )
            .await;
            let answers = burst(&connection, origin.port, 5).await;
            assert!(answers.iter().all(|a| matches!(a, Ok(200))), "{answers:?}");
            assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
            return;
        }
        panic!("no round caught the connect under way");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_idle_past_the_timeout_is_replaced() {
        let origin = Origin::start().await;
        let mut connection = connection_to("http", origin.port, Duration::from_secs(5));
        connection.idle_timeout = Duration::from_secs(2);

        assert!(matches!(
            burst(&connection, origin.port, 1).await[..],
            [Ok(200)]
        ));
        assert!(matches!(
            burst(&connection, origin.port, 1).await[..],
            [Ok(200)]
        ));
        assert_eq!(
            origin.accepted.load(Ordering::SeqCst),
            1,
            "used again while fresh"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(matches!(
            burst(&connection, origin.port, 1).await[..],
            [Ok(200)]
        ));

        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_origin_that_drops_every_connection_fails_the_call_after_a_few_connects() {
        // Accepts, then closes at once: each connection dies before or as
        // the request is queued on it. The call must end with an error, not
        // reconnect forever.
        let (port, accepted, server) = silent_peer(Keep::Closed).await;
        let connection = connection_to("http", port, Duration::from_secs(5));

        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            connection.request(get("http", port)),
        )
        .await
        .expect("the call ends");

        // Which error depends on where the close lands (the handshake's
        // write, or the request's); that it is one is the point.
        outcome.expect_err("nothing answered");
        let connects = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=usize::from(MAX_REQUEUES) + 1).contains(&connects),
            "{connects} connects for one call"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error_and_the_next_call_tries_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let connection = connection_to("http", port, Duration::from_secs(5));

        let first = connection.request(get("http", port)).await.unwrap_err();
        assert!(first.is_connect(), "{first:?}");

        // Nothing of the failed connect is kept: once the origin listens,
        // the next call connects.
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await else {
            return; // the port was taken meanwhile; nothing more to learn
        };
        let origin = Origin::serve(listener);
        assert!(matches!(
            burst(&connection, origin.port, 1).await[..],
            [Ok(200)]
        ));
    }
}
