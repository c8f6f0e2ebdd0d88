//! A tool's sender: the shared HTTP clients ([`crate::upstream::http`]) for
//! its origin's port and the ports its redirects may reach; redirects
//! followed hop by hop, each checked, with the tool's credentials kept to its
//! own origin; and a body reader that stops at the tool's size cap instead of
//! buffering whatever arrives.
//!
//! Dropping the future returned by [`Upstream::send`] drops the request: the
//! upstream sees the disconnect (HTTP/1.1: the connection is closed; HTTP/2:
//! the stream is reset with CANCEL). Deadlines and
//! cancellation are applied by the caller that way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, LOCATION, PROXY_AUTHORIZATION,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use url::Url;

use crate::config::spec::HttpVersion;
use crate::config::template::{Credentials, RenderedRequest};
use crate::error::CallError;
use crate::policy::quota;
use crate::upstream::egress::{self, EgressDenied, EgressPolicy, RedirectRules};
use crate::upstream::http::{default_headers, HttpClient, HTTP2_MAX_HEADER_LIST_SIZE};
use crate::upstream::multiplex::{self, Multiplexed};

/// How a tool reaches its own origin.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per route, inside the route's Arc
pub enum Own {
    /// Through a pooled client (HTTP/1.1, or the version negotiated).
    Pooled(HttpClient),
    /// As a stream on the origin's one HTTP/2 connection (`http: http2`).
    Multiplexed(Arc<Multiplexed>),
}

/// The upstream's answer, body fully read (and under the cap).
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    /// The headers the sidecar reads (quota and retry signals), copied out
    /// of the head ([`quota::kept_headers`]); the rest are not kept.
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
    by_port: HashMap<u16, HttpClient>,
    /// For hops to any other port (`allow_origins: ["*"]`): admits only
    /// addresses that are public or allowed on every port.
    any_port: HttpClient,
    /// For the tool's own origin: the one of `by_port` unless the origin's
    /// `http` version is set, which applies to it alone (a redirect to
    /// another origin on the same port gets the default negotiation).
    own: Own,
    /// The HTTP version `own` speaks.
    version: HttpVersion,
    /// Whether the origin has answered through `own` at least once (shared
    /// by every tool calling it): after that, a failure is not the origin
    /// failing to speak the version it was set to.
    answered: Arc<AtomicBool>,
    /// Configured for the tool's origin only: dropped on any hop elsewhere.
    credentials: Credentials,
    /// The `Host` header for the tool's own origin where `own` speaks
    /// HTTP/1.1 (plain `http`, not set to `http2`), made once: hyper-util
    /// would otherwise format it for every request (`host:port`, with the
    /// port parsed out of the URI again), about 1,400 instructions a call.
    /// `None` where the request may go out as HTTP/2, which names the origin
    /// in `:authority` and takes no `Host`.
    host: Option<HeaderValue>,
}

impl Upstream {
    /// The sender for a tool whose URL is at `origin`, spoken to in
    /// `version`; `answered` is the origin's (see [`Route`]). `clients` gives
    /// the HTTP client for a port (`None`: any port) and version, see
    /// [`crate::upstream::http::http_client`]; `multiplexed`, the origin's
    /// HTTP/2 connection where `version` is `http2`.
    #[allow(clippy::too_many_arguments)] // each is a different part of the route
    pub fn new(
        origin: &Url,
        version: HttpVersion,
        answered: Arc<AtomicBool>,
        policy: EgressPolicy,
        redirects: RedirectRules,
        credentials: Credentials,
        mut clients: impl FnMut(Option<u16>, HttpVersion) -> Result<HttpClient, rustls::Error>,
        multiplexed: impl FnOnce(Option<u16>) -> Result<Arc<Multiplexed>, rustls::Error>,
    ) -> Result<Self, rustls::Error> {
        let own_port = origin.port_or_known_default();
        let mut by_port = HashMap::new();
        for port in own_port.into_iter().chain(redirects.ports()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = by_port.entry(port) {
                slot.insert(clients(Some(port), HttpVersion::Auto)?);
            }
        }
        let any_port = clients(None, HttpVersion::Auto)?;
        let own = match (version, own_port.and_then(|p| by_port.get(&p))) {
            (HttpVersion::Http2, _) => Own::Multiplexed(multiplexed(own_port)?),
            (HttpVersion::Auto, Some(client)) => Own::Pooled(client.clone()),
            _ => Own::Pooled(clients(own_port, version)?),
        };
        let host = (origin.scheme() == "http" && version != HttpVersion::Http2)
            .then(|| host_header(origin))
            .flatten();
        Ok(Self {
            route: Arc::new(Route {
                host,
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
    async fn respond(
        &self,
        request: &RenderedRequest,
    ) -> Result<http::Response<Incoming>, CallError> {
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
            let uri = http::Uri::try_from(url.as_str()).map_err(|e| {
                CallError::UpstreamUnreachable(format!(
                    "request failed: the URL is not a valid URI: {e}"
                ))
            })?;
            let mut outgoing = http::Request::new(Full::new(body.cloned().unwrap_or_default()));
            *outgoing.method_mut() = method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.headers_mut() = headers.clone();
            default_headers(outgoing.headers_mut());
            if let (true, Some(host)) = (own, &route.host) {
                // What hyper-util writes (the port only when not the
                // scheme's default); a `Host` the operator fixed stays.
                outgoing
                    .headers_mut()
                    .entry(HOST)
                    .or_insert_with(|| host.clone());
            }
            let sent: Result<_, SendError> = match (own, &route.own) {
                // Boxed: its future (830 bytes: the request, kept while a
                // connect is waited for) would otherwise widen every call's
                // future, HTTP/1.1 ones too, whose pooled request is a box.
                (true, Own::Multiplexed(connection)) => Box::pin(connection.request(outgoing))
                    .await
                    .map_err(Into::into),
                (true, Own::Pooled(client)) => client.request(outgoing).await.map_err(Into::into),
                (false, _) => {
                    let client = url
                        .port_or_known_default()
                        .and_then(|p| route.by_port.get(&p))
                        .unwrap_or(&route.any_port);
                    client.request(outgoing).await.map_err(Into::into)
                }
            };
            let response = match sent {
                Ok(response) => Ok(response),
                Err(e) if nacks < MAX_NACK_RESENDS && unprocessed(&*e) => {
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
                    describe_http2(&*e)
                } else {
                    describe(Failed::Request, &*e)
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

/// `Host` for requests to `origin`, as hyper-util writes it: the host as
/// in the URL (an IPv6 address in brackets), then `:port` unless the
/// port is the scheme's default.
fn host_header(origin: &Url) -> Option<HeaderValue> {
    let host = origin.host_str()?;
    let value = match origin.port() {
        Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
        None => HeaderValue::try_from(host),
    };
    value.ok()
}

/// How many times one hop is sent again after the origin refused it
/// unprocessed ([`unprocessed`]): what reqwest's retry layer allowed before
/// the sidecar dropped it (that layer kept a copy of every request in
/// flight, 0.9 KiB each, in case it was needed).
const MAX_NACK_RESENDS: u8 = 2;

/// Whether the origin said it did not process the request, so sending it
/// again is safe whatever its method (RFC 9113 §8.7): the stream was refused
/// (REFUSED_STREAM), or the connection was shut down gracefully before the
/// stream was taken (GOAWAY with NO_ERROR). The same test reqwest applies.
fn unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
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
    response: http::Response<Incoming>,
    max_body: usize,
) -> impl Future<Output = Result<UpstreamResponse, CallError>> + Send {
    async move {
        // Only the headers the call reads are kept while the body arrives (see
        // `quota::kept_headers`); the head goes before the first wait.
        let (head, mut body) = response.into_parts();
        let status = head.status.as_u16();
        let headers = quota::kept_headers(&head.headers);
        let success = head.status.is_success();
        drop(head);
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
        if body.size_hint().exact().unwrap_or(0) > max_body as u64 {
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
        // read buffer it was cut from (8 KiB or more); the vendored hyper reads
        // a slow body's next chunks into that same buffer while it has room
        // (vendor/README.md). Copying small chunks out instead was measured in
        // scenario 3 three times, the last on 2026-12-06 (each small chunk
        // copied just before the call waits for more): no gain in peak RSS,
        // since hyper allocates its next buffer before the chunk reaches here.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let chunk = match frame {
                // Trailers carry nothing the call uses.
                Ok(frame) => match frame.into_data() {
                    Ok(chunk) => chunk,
                    Err(_) => continue,
                },
                Err(e) if success => return Err(describe(Failed::Body, &e)),
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
/// Neither a failure to connect, nor one the origin reported in HTTP/2 (a
/// reset, a GOAWAY), nor a stream the sidecar reset over what the origin
/// sent on it gets the hint, nor does any failure once the origin has
/// answered (the caller checks that).
fn describe_http2(e: &(dyn std::error::Error + 'static)) -> CallError {
    let h2 = h2_error(e);
    // Connection-level only: a stream the sidecar reset for what the origin
    // sent on it was read as HTTP/2.
    if h2.is_some_and(|h2| {
        h2.is_library()
            && h2.is_go_away()
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
    // Nor does a stream the sidecar reset: the origin spoke HTTP/2 on it.
    let about_http2 = !is_connect(e) && !h2.is_some_and(|h2| h2.is_remote() || h2.is_reset());
    match describe(Failed::Request, e) {
        CallError::UpstreamUnreachable(message) if about_http2 => CallError::UpstreamUnreachable(
            format!("{message}; the origin has not answered in HTTP/2 yet: {NOT_HTTP2}"),
        ),
        other => other,
    }
}

const NOT_HTTP2: &str = "its `http` under `upstreams` is http2, which it must speak \
                         (set auto or http1 for an origin that speaks only HTTP/1.1)";

/// The error sending a request (connecting included): hyper-util's pooled
/// client's or [`multiplex::Error`]. Boxed: made only when a request fails.
type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `e` is a failure to connect, from either kind of sender.
fn is_connect(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
        || e.downcast_ref::<multiplex::Error>()
            .is_some_and(multiplex::Error::is_connect)
}

/// The HTTP/2 error in `e`'s chain, if there is one.
fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}

/// What the origin did, where `e` is the sidecar's HTTP/2 layer refusing
/// what it sent (a local error, not one the origin reported).
fn http2_rule_broken(failed: Failed, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let h2 = h2_error(e).filter(|h2| h2.is_library())?;
    let limit = HTTP2_MAX_HEADER_LIST_SIZE / 1024;
    match (h2.reason()?, h2.is_go_away(), failed) {
        // h2 must decode a header block to keep the HPACK state; one too
        // large to buffer ends the connection.
        (h2::Reason::COMPRESSION_ERROR, _, _) => Some(format!(
            "the origin sent a response header block over the {limit} KiB the sidecar \
             accepts, or one that is not valid HPACK; its connection is closed"
        )),
        (h2::Reason::PROTOCOL_ERROR, false, Failed::Request) => Some(format!(
            "the origin's response head breaks HTTP/2's rules: headers over the {limit} KiB \
             the sidecar accepts, or a malformed or connection-specific header"
        )),
        (h2::Reason::PROTOCOL_ERROR, false, Failed::Body) => Some(
            "the origin's response body breaks HTTP/2's rules: more or fewer bytes than its \
             content-length, or a malformed trailer"
                .to_owned(),
        ),
        _ => None,
    }
}

/// What was under way when a transport error came.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// Sending the request, connecting included, up to the response's head.
    Request,
    /// Reading the response's body.
    Body,
}

/// A transport error as the agent sees it: what failed, then the innermost
/// cause, without the URL (query strings may carry values the agent should
/// not echo around; neither hyper nor the connector puts the URL in its
/// errors).
fn describe(failed: Failed, e: &(dyn std::error::Error + 'static)) -> CallError {
    if let Some(denied) = egress::denial_in(e) {
        return CallError::EgressDenied(denied.to_string());
    }
    let kind = match failed {
        Failed::Body => "response body interrupted",
        Failed::Request if is_connect(e) => "connection failed",
        Failed::Request => "request failed",
    };
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if let Some(broke) = http2_rule_broken(failed, e) {
        // h2's own words ("unspecific protocol error detected") do not say
        // what the origin did.
        detail = format!("{broke} ({detail})");
    }
    if detail.is_empty() {
        CallError::UpstreamUnreachable(kind.to_owned())
    } else {
        CallError::UpstreamUnreachable(format!("{kind}: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value hyper-util would have written for each: the port only when
    /// it is not the scheme's default, IPv6 in brackets, names as given.
    #[test]
    fn host_header_is_what_hyper_util_writes() {
        let host = |url: &str| host_header(&Url::parse(url).unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:8080/x?y=1"), "127.0.0.1:8080");
        assert_eq!(host("http://api.example.com/x"), "api.example.com");
        assert_eq!(host("http://api.example.com:80/x"), "api.example.com");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
        assert_eq!(host("http://Example.COM:81/"), "example.com:81");
    }
}
