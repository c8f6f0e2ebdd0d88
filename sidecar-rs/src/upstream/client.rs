//! The HTTP side: shared `reqwest` clients (connection pooling, keep-alive,
//! HTTP/2 via ALPN where the upstream offers it, or by prior knowledge where
//! the operator says the origin speaks it), one per egress policy, port and
//! HTTP version; redirects followed hop by hop, each checked, with the tool's
//! credentials kept to its own origin; and a body reader that stops at the
//! tool's size cap instead of buffering whatever arrives.
//!
//! Dropping the future returned by [`Upstream::send`] drops the request: the
//! upstream sees the disconnect (HTTP/1.1: the connection is closed; HTTP/2:
//! the stream is reset with CANCEL). Deadlines and
//! cancellation are applied by the caller that way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION, PROXY_AUTHORIZATION,
};
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::config::spec::HttpVersion;
use crate::config::template::{Credentials, RenderedRequest};
use crate::error::CallError;
use crate::upstream::egress::{self, EgressDenied, EgressPolicy, GuardedResolver, RedirectRules};

/// The upstream's answer, body fully read (and under the cap).
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends one tool's requests. Cheap to clone; the HTTP clients inside are
/// shared with every tool of the same egress policy (one connection pool per
/// policy and port).
#[derive(Debug, Clone)]
pub struct Upstream {
    route: Arc<Route>,
}

/// Where a tool's requests may go and what must not follow them elsewhere.
#[derive(Debug)]
struct Route {
    /// The tool's configured origin.
    origin: url::Origin,
    policy: EgressPolicy,
    redirects: RedirectRules,
    /// A client per port of the declared origins (the tool's, and those in
    /// `redirects.allow_origins`); each one's resolver judges addresses for
    /// that port.
    by_port: HashMap<u16, reqwest::Client>,
    /// For hops to any other port (`allow_origins: ["*"]`): admits only
    /// addresses that are public or allowed on every port.
    any_port: reqwest::Client,
    /// For the tool's own origin: the one of `by_port` unless the origin's
    /// `http` version is set, which applies to it alone (a redirect to
    /// another origin on the same port gets the default negotiation).
    own: reqwest::Client,
    /// The HTTP version `own` speaks.
    version: HttpVersion,
    /// Whether the origin has answered through `own` at least once (shared
    /// by every tool calling it): after that, a failure is not the origin
    /// failing to speak the version it was set to.
    answered: Arc<AtomicBool>,
    /// Configured for the tool's origin only: dropped on any hop elsewhere.
    credentials: Credentials,
}

/// Options for the shared client and the per-origin state.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The longest an upstream's quota signal (`Retry-After`,
    /// `x-ratelimit-reset`, ...) may hold requests to its origin; longer
    /// announcements are clamped to it (and logged), so one response cannot
    /// stop an origin, fleet-wide, for longer.
    pub max_hold: Duration,
    /// Bound on establishing a TCP (and TLS) connection, separate from the
    /// call deadline so a black-holed host fails fast.
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

/// An HTTP client whose connections go only where `policy` permits on
/// `port` (`None`: on every port), speaking `version`. It never follows redirects itself:
/// [`Upstream::send`] does, hop by hop, because reqwest's redirect policy can
/// stop a hop but cannot drop the headers it carries, and its `Referer`
/// would copy the query (with any secret in it) to the next origin.
pub fn http_client(
    options: &UpstreamOptions,
    policy: &EgressPolicy,
    port: Option<u16>,
    version: HttpVersion,
) -> Result<reqwest::Client, reqwest::Error> {
    // TLS uses ring (quick to build, no C toolchain needed beyond cc);
    // installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = match version {
        HttpVersion::Auto => reqwest::Client::builder(),
        HttpVersion::Http1 => reqwest::Client::builder().http1_only(),
        HttpVersion::Http2 => reqwest::Client::builder().http2_prior_knowledge(),
    };
    builder
        .user_agent(concat!("tandem-sidecar/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        .http2_adaptive_window(true)
        // Every call to an HTTP/2 origin rides one connection: a dead one
        // (a peer gone without a FIN) must be found by a ping, not by every
        // call waiting out its deadline until TCP keep-alive notices.
        .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
        .http2_keep_alive_timeout(HTTP2_PING_TIMEOUT)
        // Egress goes where the operator configured it, never through a
        // proxy picked up from the environment.
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(policy.clone(), port)))
        .redirect(reqwest::redirect::Policy::none())
        // Retries are the tool's (`retry:`), and resending what the origin
        // refused unprocessed is `respond`'s: reqwest's layer would clone
        // every request up front in case it retries it. `never()` alone
        // still clones (reqwest 0.13 checks the scope only from the second
        // try on); a budget of 0 retries per request is what stops it.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .referer(false)
        .build()
}

/// How often an idle-looking HTTP/2 connection to an upstream is pinged
/// while requests are on it, and how long the answer may take before the
/// connection (and every request on it) fails.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    /// The sender for a tool whose URL is at `origin`, spoken to in
    /// `version`; `answered` is the origin's (see [`Route`]). `clients` gives
    /// the HTTP client for a port (`None`: any port) and version, see
    /// [`http_client`].
    pub fn new(
        origin: &Url,
        version: HttpVersion,
        answered: Arc<AtomicBool>,
        policy: EgressPolicy,
        redirects: RedirectRules,
        credentials: Credentials,
        mut clients: impl FnMut(Option<u16>, HttpVersion) -> Result<reqwest::Client, reqwest::Error>,
    ) -> Result<Self, reqwest::Error> {
        let own_port = origin.port_or_known_default();
        let mut by_port = HashMap::new();
        for port in own_port.into_iter().chain(redirects.ports()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = by_port.entry(port) {
                slot.insert(clients(Some(port), HttpVersion::Auto)?);
            }
        }
        let any_port = clients(None, HttpVersion::Auto)?;
        let own = match own_port.and_then(|p| by_port.get(&p)) {
            Some(client) if version == HttpVersion::Auto => client.clone(),
            _ => clients(own_port, version)?,
        };
        Ok(Self {
            route: Arc::new(Route {
                origin: origin.origin(),
                policy,
                redirects,
                by_port,
                any_port,
                own,
                version,
                answered,
                credentials,
            }),
        })
    }

    /// Sends `request`, following the redirects the tool allows, and reads
    /// the response body, refusing more than `max_body` bytes.
    ///
    /// The status decides first: a 2xx body over the cap is
    /// RESPONSE_TOO_LARGE, but an error status whose body is over the cap
    /// (or breaks off) is still that status, with the body left out, so a
    /// 503 with a 50 MB page is retried and counted by the breaker like any
    /// other 503.
    pub async fn send(
        &self,
        request: &RenderedRequest,
        max_body: usize,
    ) -> Result<UpstreamResponse, CallError> {
        let response = self.respond(request).await?;
        read_body(response, max_body).await
    }

    /// Sends `request` and follows the redirects the tool allows, up to the
    /// final response's head. Its own copies of the request (for the next
    /// hop) end with it, before the body is waited for.
    async fn respond(&self, request: &RenderedRequest) -> Result<reqwest::Response, CallError> {
        let route = &self.route;
        // The first hop sends the rendered request as it is (its origin is
        // the tool's, fixed by the template); a redirect makes owned copies
        // to change.
        debug_assert!(
            request.url.origin() == route.origin,
            "a rendered URL left its origin"
        );
        let mut hop: Option<Hop> = None;
        let mut hops = 0u8;
        let mut nacks = 0u8;
        loop {
            let (method, url, headers, body, own) = match &hop {
                None => (
                    &request.method,
                    &request.url,
                    &request.headers,
                    request.body.as_ref(),
                    true,
                ),
                Some(h) => (&h.method, &h.url, &h.headers, h.body.as_ref(), h.own),
            };
            let client = if own {
                &route.own
            } else {
                url.port_or_known_default()
                    .and_then(|p| route.by_port.get(&p))
                    .unwrap_or(&route.any_port)
            };
            let mut builder = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = body {
                builder = builder.body(body.clone());
            }
            let response = match builder.send().await {
                Ok(response) => Ok(response),
                Err(e) if nacks < MAX_NACK_RESENDS && unprocessed(&e) => {
                    nacks += 1;
                    tracing::debug!(
                        nacks,
                        "upstream refused the request unprocessed; sending it again"
                    );
                    continue;
                }
                Err(e) => Err(e),
            }
            .map_err(|e| {
                if own
                    && route.version == HttpVersion::Http2
                    && !route.answered.load(Ordering::Relaxed)
                {
                    describe_http2(e)
                } else {
                    describe(e)
                }
            })?;
            // Read first: a store on every response would bounce the flag's
            // cache line between the cores answering this origin.
            if own && !route.answered.load(Ordering::Relaxed) {
                route.answered.store(true, Ordering::Relaxed);
            }
            let status = response.status();
            let location = match response.headers().get(LOCATION) {
                Some(location) if route.redirects.max > 0 && is_followed(status) => location,
                _ => return Ok(response),
            };
            if hops == route.redirects.max {
                return Err(CallError::UpstreamUnreachable(format!(
                    "redirect refused: more than {} redirects",
                    route.redirects.max
                )));
            }
            hops += 1;
            let next = route.next_hop(url, location.as_bytes())?;
            let mut h = hop.take().unwrap_or_else(|| Hop {
                method: request.method.clone(),
                url: request.url.clone(),
                headers: request.headers.clone(),
                body: request.body.clone(),
                own: true,
            });
            // What browsers and reqwest do: 303 turns into a GET, and so do
            // 301/302 after a POST; 307/308 repeat the request as it was.
            if (status == StatusCode::SEE_OTHER && h.method != Method::HEAD)
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && h.method == Method::POST)
            {
                h.method = Method::GET;
                h.body = None;
                h.headers.remove(CONTENT_TYPE);
                h.headers.remove(CONTENT_LENGTH);
            }
            h.own = next.origin() == route.origin;
            if !h.own {
                route.credentials.strip_headers(&mut h.headers);
            }
            h.url = next;
            hop = Some(h);
            nacks = 0;
        }
    }
}

/// How many times one hop is sent again after the origin refused it
/// unprocessed ([`unprocessed`]): reqwest's own default, which the clients
/// turn off (its retry layer keeps a copy of every request in flight, 0.9 KiB
/// each, in case it is needed).
const MAX_NACK_RESENDS: u8 = 2;

/// Whether the origin said it did not process the request, so sending it
/// again is safe whatever its method (RFC 9113 §8.7): the stream was refused
/// (REFUSED_STREAM), or the connection was shut down gracefully before the
/// stream was taken (GOAWAY with NO_ERROR). The same test reqwest applies.
fn unprocessed(e: &reqwest::Error) -> bool {
    h2_error(e).is_some_and(|h2| {
        h2.is_remote()
            && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)))
    })
}

/// A redirect's next request: the rendered one, changed as the redirect
/// says.
struct Hop {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    /// Whether `url` is at the tool's own origin.
    own: bool,
}

/// Reads the body of `response`, as [`Upstream::send`] describes.
///
/// A plain fn returning an `async move` block: an async fn would keep
/// `response` twice in its state (argument and local) while the body
/// trickles in.
#[allow(clippy::manual_async_fn)] // the async fn form is what costs the copy
fn read_body(
    mut response: reqwest::Response,
    max_body: usize,
) -> impl Future<Output = Result<UpstreamResponse, CallError>> + Send {
    async move {
        let status = response.status().as_u16();
        // Taken, not cloned: a call waiting on a slow body would hold two
        // copies.
        let headers = std::mem::take(response.headers_mut());
        let success = response.status().is_success();
        // An error status without its body: what the status says is all
        // that is used of it.
        let bodiless = |why: &str| {
            tracing::debug!(status, why, "upstream error body left out");
            Ok(UpstreamResponse {
                status,
                headers: headers.clone(),
                body: Bytes::new(),
            })
        };
        let too_large = || CallError::ResponseTooLarge {
            limit: max_body,
            status,
        };
        if response.content_length().unwrap_or(0) > max_body as u64 {
            return if success {
                Err(too_large())
            } else {
                bodiless("announced length over max_response_bytes")
            };
        }
        // Keep the chunks as they arrive and join them once at the end: memory
        // follows what has been received, not what was announced (10,000 slow
        // bodies in flight must not reserve 10,000 full buffers), and a body
        // that arrives in one chunk is never copied. Each chunk pins the hyper
        // read buffer it was cut from (8 KiB or more); copying small chunks
        // out was tried and measured twice in scenario 3: into one buffer of
        // our own (10 KiB less live heap per slow call on glibc, 35 MiB more
        // peak RSS under mimalloc), and, with mimalloc's huge-page advice
        // off, each small chunk copied just before the call waits for more
        // (peak RSS 401 vs 389 MiB, no gain), so the chunks stay.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        loop {
            let next = response.chunk().await;
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) if success => return Err(describe(e)),
                Err(_) => return bodiless("body interrupted"),
            };
            received += chunk.len();
            if received > max_body {
                return if success {
                    Err(too_large())
                } else {
                    bodiless("body over max_response_bytes")
                };
            }
            chunks.push(chunk);
        }
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(received);
                for chunk in &chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }
}

impl Route {
    /// The URL a redirect leads to, if the tool may follow it there: an
    /// http(s) URL at an origin the tool allows, on an address and port its
    /// egress rules allow (IP literals here; names in the resolver). On a hop
    /// to another origin, the tool's secret query parameters are dropped.
    fn next_hop(&self, current: &Url, location: &[u8]) -> Result<Url, CallError> {
        let mut next = std::str::from_utf8(location)
            .ok()
            .and_then(|l| current.join(l).ok())
            .ok_or_else(|| {
                CallError::UpstreamUnreachable(
                    "redirect refused: its Location is not a valid URL".into(),
                )
            })?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(CallError::EgressDenied(format!(
                "redirect to a {} URL",
                next.scheme()
            )));
        }
        let origin = next.origin();
        if !self.redirects.admits(&self.origin, &origin) {
            return Err(CallError::EgressDenied(format!(
                "redirect to {} leaves this tool's origin {}; the operator can list it under redirects.allow_origins",
                origin.ascii_serialization(),
                self.origin.ascii_serialization()
            )));
        }
        if let Some(ip) = egress::literal_ip(&next) {
            let port = next.port_or_known_default().unwrap_or(80);
            if !self.policy.permits(ip, port) {
                return Err(CallError::EgressDenied(
                    EgressDenied {
                        host: ip.to_string(),
                        addrs: format!("{ip} on port {port}"),
                    }
                    .to_string(),
                ));
            }
        }
        // Credentials in a Location's userinfo would become an Authorization
        // header; a redirect has no business adding them.
        let _ = next.set_username("");
        let _ = next.set_password(None);
        if origin != self.origin {
            self.credentials.strip_query(&mut next).map_err(|()| {
                CallError::EgressDenied(format!(
                    "redirect to {} would carry this tool's credentials in its path",
                    origin.ascii_serialization()
                ))
            })?;
        }
        Ok(next)
    }
}

/// Redirect statuses that are followed (when the tool follows redirects).
fn is_followed(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

impl Credentials {
    /// Drops the secret-bearing headers, and the headers that carry
    /// credentials whatever their value (as reqwest and browsers do on a
    /// cross-origin redirect).
    fn strip_headers(&self, headers: &mut HeaderMap) {
        let marked: Vec<http::HeaderName> = headers
            .iter()
            .filter(|(_, v)| v.is_sensitive())
            .map(|(name, _)| name.clone())
            .collect();
        for name in
            self.headers
                .iter()
                .chain(&marked)
                .chain(&[AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE])
        {
            headers.remove(name);
        }
        headers.remove("cookie2");
    }

    /// Drops query parameters named like a secret one or holding a secret
    /// value; `Err` when a secret is in the path, where it cannot be dropped.
    fn strip_query(&self, url: &mut Url) -> Result<(), ()> {
        let holds_secret = |text: &str| {
            self.secrets
                .iter()
                .any(|s| !s.expose().is_empty() && text.contains(s.expose()))
        };
        let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
        if holds_secret(&path) {
            return Err(());
        }
        if url.query().is_none() {
            return Ok(());
        }
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let kept: Vec<&(String, String)> = pairs
            .iter()
            .filter(|(k, v)| !self.query_keys.contains(k) && !holds_secret(k) && !holds_secret(v))
            .collect();
        if kept.len() == pairs.len() {
            return Ok(());
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(())
    }
}

/// A request to an origin set to `http: http2` that has never answered it,
/// failed: as [`describe`], and where the failure is what an origin that
/// speaks only HTTP/1.1 causes, saying so. Such an origin answers the
/// connection preface with an error page, which HTTP/2 reads as a frame
/// header (a framing error), or closes the connection before that is read.
/// Neither a failure to connect nor one the origin reported in HTTP/2 (a
/// reset, a GOAWAY) gets the hint, nor does any failure once the origin has
/// answered (the caller checks that).
fn describe_http2(e: reqwest::Error) -> CallError {
    let h2 = h2_error(&e);
    if h2.is_some_and(|h2| {
        h2.is_library()
            && matches!(
                h2.reason(),
                Some(h2::Reason::FRAME_SIZE_ERROR | h2::Reason::PROTOCOL_ERROR)
            )
    }) {
        return CallError::UpstreamUnreachable(format!(
            "connection failed: the origin did not answer in HTTP/2; {NOT_HTTP2}"
        ));
    }
    // A connection refused or timed out says nothing about the protocol.
    let about_http2 = !e.is_connect() && !h2.is_some_and(h2::Error::is_remote);
    match describe(e) {
        CallError::UpstreamUnreachable(message) if about_http2 => CallError::UpstreamUnreachable(
            format!("{message}; the origin has not answered in HTTP/2 yet: {NOT_HTTP2}"),
        ),
        other => other,
    }
}

const NOT_HTTP2: &str = "its `http` under `upstreams` is http2, which it must speak \
                         (set auto or http1 for an origin that speaks only HTTP/1.1)";

/// The HTTP/2 error under `e`, if there is one.
fn h2_error(e: &reqwest::Error) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

/// A transport error as the agent sees it: what failed, without the URL
/// (query strings may carry values the agent should not echo around).
fn describe(e: reqwest::Error) -> CallError {
    if let Some(denied) = egress::denial_in(&e) {
        return CallError::EgressDenied(denied.to_string());
    }
    let e = e.without_url();
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body interrupted"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        CallError::UpstreamUnreachable(kind.to_owned())
    } else {
        CallError::UpstreamUnreachable(format!("{kind}: {detail}"))
    }
}
