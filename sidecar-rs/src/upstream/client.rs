//! The HTTP side: one shared `reqwest` client (connection pooling, keep-alive,
//! HTTP/2 via ALPN where the upstream offers it) and a body reader that stops
//! at the tool's size cap instead of buffering whatever arrives.
//!
//! Dropping the future returned by [`Upstream::send`] drops the request: the
//! connection is closed and the upstream sees the disconnect. Deadlines and
//! cancellation are applied by the caller that way.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

use crate::config::template::RenderedRequest;
use crate::error::CallError;
use crate::upstream::egress::{self, EgressPolicy, GuardedResolver};

/// The upstream's answer, body fully read (and under the cap).
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends tool requests. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
}

/// Options for the shared client.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Bound on establishing a TCP (and TLS) connection, separate from the
    /// call deadline so a black-holed host fails fast.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 256,
        }
    }
}

impl Upstream {
    /// A client whose connections go only where `policy` permits, following
    /// up to `redirects` redirects (each re-checked; only within the first
    /// request's origin when `same_origin_redirects`).
    pub fn new(
        options: &UpstreamOptions,
        policy: EgressPolicy,
        redirects: u8,
        same_origin_redirects: bool,
    ) -> Result<Self, reqwest::Error> {
        // TLS uses ring (quick to build, no C toolchain needed beyond cc);
        // installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("tandem-sidecar/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(options.connect_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .http2_adaptive_window(true)
            // Egress goes where the operator configured it, never through a
            // proxy picked up from the environment.
            .no_proxy()
            // No Referer on redirects: it would carry the previous URL, query
            // credentials included, to wherever the upstream redirects.
            .referer(false)
            .dns_resolver(std::sync::Arc::new(GuardedResolver::new(policy.clone())))
            .redirect(egress::redirect_policy(
                redirects,
                policy,
                same_origin_redirects,
            ))
            .build()?;
        Ok(Self { client })
    }

    /// Sends `request` and reads the response body, refusing more than
    /// `max_body` bytes.
    pub async fn send(
        &self,
        request: &RenderedRequest,
        max_body: usize,
    ) -> Result<UpstreamResponse, CallError> {
        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone())
            .headers(request.headers.clone());
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let too_large = CallError::ResponseTooLarge {
            limit: max_body,
            status,
        };
        if response.content_length().unwrap_or(0) > max_body as u64 {
            return Err(too_large);
        }
        // Keep the chunks as they arrive and join them once at the end: memory
        // follows what has been received, not what was announced (10,000 slow
        // bodies in flight must not reserve 10,000 full buffers), and a body
        // that arrives in one chunk is never copied.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0usize;
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            received += chunk.len();
            if received > max_body {
                return Err(too_large);
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
            headers: response.headers().clone(),
            body,
        })
    }
}

/// A transport error as the agent sees it: what failed, without the URL
/// (query strings may carry values the agent should not echo around).
fn describe(e: reqwest::Error) -> CallError {
    if let Some(denied) = egress::denial_in(&e) {
        return CallError::EgressDenied(denied.to_string());
    }
    if egress::credentials_would_follow_in(&e) {
        return CallError::EgressDenied(egress::CredentialsWouldFollow.to_string());
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
