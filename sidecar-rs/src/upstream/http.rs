//! The HTTP client every tool's requests go through: hyper-util's pooled
//! client (keep-alive, HTTP/2 by ALPN or by prior knowledge) on a connector
//! that resolves names through the egress guard, speaks TLS with rustls and
//! the platform's trust store, and bounds the whole connect (name, TCP, TLS).
//!
//! Why hyper-util's client and not reqwest, which is built on it: reqwest's
//! own layers cost every call CPU and memory for things the sidecar does not
//! use. It converts the URL to a URI and back for its redirect layer (with
//! IDNA processing each time), merges default headers, boxes a pending
//! request holding the method, URL and headers again, and wraps the call in
//! retry and redirect services. The sidecar follows redirects itself, hop by
//! hop ([`crate::upstream::client`]), retries per tool, and applies deadlines
//! by dropping the call. What reqwest configured is configured here the same
//! way: the platform verifier, ALPN, pool and HTTP/2 settings, and its two
//! default headers (`user-agent`, `accept: */*`).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, USER_AGENT};
use http::{HeaderMap, Uri};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;

use crate::config::spec::HttpVersion;
use crate::upstream::egress::{EgressPolicy, GuardedResolver};
use crate::upstream::multiplex::Multiplexed;
use crate::upstream::stream::Stream;

/// A pooled client; cheap to clone (the pool is shared).
pub type HttpClient = Client<Connector, Full<Bytes>>;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Options for the shared clients and the per-origin state.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The longest an upstream's quota signal (`Retry-After`,
    /// `x-ratelimit-reset`, ...) may hold requests to its origin; longer
    /// announcements are clamped to it (and logged), so one response cannot
    /// stop an origin, fleet-wide, for longer.
    pub max_hold: Duration,
    /// Bound on establishing a connection (name, TCP and TLS), separate from
    /// the call deadline so a black-holed host fails fast.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
}

/// Idle keep-alive connections kept per host unless configured otherwise:
/// above an origin's default `max_concurrency` (1024), so a busy origin's
/// connections are reused rather than closed and opened again.
pub const DEFAULT_MAX_IDLE_PER_HOST: usize = 4096;

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            max_hold: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: DEFAULT_MAX_IDLE_PER_HOST,
        }
    }
}

/// How often an idle-looking HTTP/2 connection to an upstream is pinged
/// while requests are on it, and how long the answer may take before the
/// connection (and every request on it) fails.
pub(crate) const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response header block an HTTP/2 origin may send (hyper's
/// default, set here so the error that names it cannot drift from it). h2
/// answers a larger one by ending the whole connection (`COMPRESSION_ERROR`:
/// the block must be decoded to keep the HPACK state, and it will not buffer
/// it), so every call on that connection fails with it.
pub(crate) const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// How long an idle pooled connection is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

const USER_AGENT_VALUE: &str = concat!("tandem-sidecar/", env!("CARGO_PKG_VERSION"));

/// The TLS settings every client starts from: rustls on ring (quick to
/// build, no C toolchain beyond cc) with the platform's trust store, as
/// reqwest's rustls default does. Building it reads and parses the system's
/// CA bundle, so [`crate::upstream::origins::Upstreams`] builds it once and
/// hands each client a copy (each sets its own ALPN on it).
pub fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth(),
    )
}

/// An HTTP client whose connections go only where `policy` permits on
/// `port` (`None`: on every port), speaking `version`, with `tls` (see
/// [`tls_config`]). It follows no redirects (the caller does, hop by hop)
/// and reads no proxy settings from the environment: egress goes where the
/// operator configured it.
pub fn http_client(
    options: &UpstreamOptions,
    tls: rustls::ClientConfig,
    policy: &EgressPolicy,
    port: Option<u16>,
    version: HttpVersion,
) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .http2_adaptive_window(true)
        // Every call to an HTTP/2 origin rides one connection: a dead one
        // (a peer gone without a FIN) must be found by a ping, not by every
        // call waiting out its deadline until TCP keep-alive notices.
        .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
        .http2_keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE);
    if version == HttpVersion::Http2 {
        builder.http2_only(true);
    }
    builder.build(connector(options, tls, policy, port, version))
}

/// The connection to an origin set to `http: http2` (`origin`:
/// `scheme://host:port`), on the same connector and HTTP/2 settings as
/// [`http_client`]'s; see [`crate::upstream::multiplex`].
pub fn multiplexed(
    options: &UpstreamOptions,
    tls: rustls::ClientConfig,
    policy: &EgressPolicy,
    port: Option<u16>,
    origin: Uri,
) -> Multiplexed {
    Multiplexed::new(
        origin,
        connector(options, tls, policy, port, HttpVersion::Http2),
    )
}

/// Connections only where `policy` permits on `port`, TLS offering the
/// ALPN protocols of `version`, the whole connect bounded.
fn connector(
    options: &UpstreamOptions,
    tls: rustls::ClientConfig,
    policy: &EgressPolicy,
    port: Option<u16>,
    version: HttpVersion,
) -> Connector {
    let mut tcp = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone(), port));
    // The connector also takes https URIs; TLS is the wrapper's.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(30)));
    tcp.set_connect_timeout(Some(options.connect_timeout));
    let tls = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = match version {
        HttpVersion::Auto => tls.enable_http1().enable_http2().wrap_connector(tcp),
        HttpVersion::Http1 => tls.enable_http1().wrap_connector(tcp),
        HttpVersion::Http2 => tls.enable_http2().wrap_connector(tcp),
    };
    Connector {
        inner: https,
        timeout: options.connect_timeout,
    }
}

/// Adds the headers every request carries unless the tool set its own.
pub fn default_headers(headers: &mut HeaderMap) {
    headers
        .entry(USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT_VALUE));
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
}

/// The TLS-capable connector with one deadline over the whole connect.
///
/// Written here because tower's `Timeout` cannot serve: its future is not
/// `Unpin` (it holds tokio's `Sleep`), which hyper-util requires of a
/// connector's future. The connect is rare (pooled connections are reused),
/// so boxing its future costs nothing that matters.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector<GuardedResolver>>,
    timeout: Duration,
}

/// A connect that did not finish within `--connect-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting took longer than {0:?}")]
pub struct ConnectTimedOut(Duration);

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map(Stream::from),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether an error of type `T` is in `e`'s chain of causes.
    pub(crate) fn caused_by<T: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
        let mut cause = StdError::source(e);
        while let Some(c) = cause {
            if c.is::<T>() {
                return true;
            }
            cause = c.source();
        }
        false
    }

    #[test]
    fn default_headers_keep_the_tools_own() {
        let mut headers = HeaderMap::new();
        default_headers(&mut headers);
        assert_eq!(headers[USER_AGENT], USER_AGENT_VALUE);
        assert_eq!(headers[ACCEPT], "*/*");
        let mut own = HeaderMap::new();
        own.insert(USER_AGENT, HeaderValue::from_static("mine"));
        own.insert(ACCEPT, HeaderValue::from_static("application/json"));
        default_headers(&mut own);
        assert_eq!(own[USER_AGENT], "mine");
        assert_eq!(own[ACCEPT], "application/json");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_hangs_fails_at_the_connect_timeout() {
        // The TCP connect succeeds at once; the peer then never answers the
        // TLS hello, so only the deadline over the whole connect ends it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let policy =
            EgressPolicy::parse(&[crate::config::spec::AllowEntry::Text("127.0.0.1".into())])
                .unwrap();
        let options = UpstreamOptions {
            connect_timeout: Duration::from_millis(300),
            ..UpstreamOptions::default()
        };
        let tls = tls_config().unwrap();
        let client = http_client(&options, tls, &policy, Some(port), HttpVersion::Auto);
        let mut request = http::Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = format!("https://127.0.0.1:{port}/").parse().unwrap();
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .expect("the connect deadline must end the call")
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(caused_by::<ConnectTimedOut>(&err), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        held.abort();
    }
}
