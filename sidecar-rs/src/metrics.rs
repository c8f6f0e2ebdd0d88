//! Prometheus metrics, served as text on `--metrics-listen` at `/metrics`.
//!
//! Names are part of the interface (dashboards and alerts depend on them) and
//! are documented in `docs/metrics.md`. No label carries an agent id or any other
//! unbounded value; calls to unknown tools are counted under `tool="_unknown"`.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pb::Status;
use crate::server::conn_limit::ConnLimit;

/// Connections the metrics port serves at once: a Prometheus or two and
/// someone's curl need a handful; 256 idle ones hold about 3 MiB.
pub const MAX_SCRAPE_CONNECTIONS: usize = 256;

/// Of those, how many one peer address may hold.
pub const MAX_SCRAPE_CONNECTIONS_PER_PEER: usize = 32;

/// How long a metrics connection may take to send a request's head (after
/// connecting, or between requests on a kept-alive connection). Prometheus
/// sends its request at once and reconnects when an idle one was closed.
pub const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a metrics connection lives, whatever it does; Prometheus
/// opens a new one when its kept-alive one was closed.
pub const SCRAPE_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// Label used for calls naming a tool that does not exist.
pub const UNKNOWN_TOOL_LABEL: &str = "_unknown";

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `sidecar_tool_calls_total{tool,status}`: calls finished, by outcome.
    pub calls: IntCounterVec,
    /// `sidecar_tool_call_duration_seconds{tool}`: receipt to result.
    pub call_duration: HistogramVec,
    /// `sidecar_upstream_request_duration_seconds{upstream}`: one HTTP
    /// request, by upstream origin (`scheme://host:port`).
    pub upstream_duration: HistogramVec,
    /// `sidecar_inflight_calls`: calls admitted and not yet answered.
    pub inflight: IntGauge,
    /// `sidecar_streams_active`: open Dispatch streams.
    pub streams: IntGauge,
    /// `sidecar_streams_abandoned_total`: Dispatch streams whose client went
    /// away (cancelled the RPC, or its connection dropped) before the stream
    /// ended; their calls were cancelled at once.
    pub streams_abandoned: IntCounter,
    /// `sidecar_connections_refused_total{listener}`: connections to the
    /// `metrics` or `health` port, or to a gRPC TCP listener (`grpc`), closed
    /// on arrival because that port, or the connection's peer address, held
    /// as many as it serves at once.
    pub connections_refused: IntCounterVec,
    /// `sidecar_frames_shared_results_total{outcome}`: results of at least
    /// 16 KiB on frames streams with a shared region: `shared` (through the
    /// region) or `full` (the region had no room; on the socket).
    pub frames_shared_results: IntCounterVec,
    /// `sidecar_frames_shared_released_bytes_total`: bytes of shared regions
    /// their clients released (copied out), so the sidecar may write them
    /// again.
    pub frames_shared_released_bytes: IntCounter,
    /// `sidecar_undelivered_results`: results produced and not yet taken by
    /// the transport (their client has not read them).
    pub undelivered_results: IntGauge,
    /// `sidecar_undelivered_result_bytes`: their encoded size.
    pub undelivered_bytes: IntGauge,
    /// `sidecar_rate_limited_total{tool,scope}`: calls refused by a rate limit.
    pub rate_limited: IntCounterVec,
    /// `sidecar_circuit_state{upstream}`: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// `sidecar_cache_requests_total{tool,result}`: `hit`, `miss` or
    /// `coalesced` (joined an identical call in flight).
    pub cache_requests: IntCounterVec,
    /// `sidecar_retries_total{tool}`: upstream requests that were retries.
    pub retries: IntCounterVec,
    /// `sidecar_config_reloads_total{result}`: `success` or `rejected`.
    pub config_reloads: IntCounterVec,
    /// `sidecar_rate_limit_shadow_total{tool,scope}`: calls a shadow-mode
    /// limit would have refused.
    pub rate_limit_shadow: IntCounterVec,
    /// `sidecar_upstream_throttled_total{upstream}`: calls held or refused
    /// because the upstream announced its quota was spent.
    pub upstream_throttled: IntCounterVec,
    /// Fleet (Redis) metrics.
    pub fleet: crate::policy::fleet::FleetMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let calls = IntCounterVec::new(
            Opts::new(
                "sidecar_tool_calls_total",
                "Tool calls finished, by tool and result status.",
            ),
            &["tool", "status"],
        )
        .expect("static metric definition");
        let call_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidecar_tool_call_duration_seconds",
                "Time from receiving a tool call to its result.",
            )
            .buckets(buckets.clone()),
            &["tool"],
        )
        .expect("static metric definition");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidecar_upstream_request_duration_seconds",
                "Duration of one upstream HTTP request, body included.",
            )
            .buckets(buckets),
            &["upstream"],
        )
        .expect("static metric definition");
        let inflight = IntGauge::new(
            "sidecar_inflight_calls",
            "Tool calls admitted and not yet answered.",
        )
        .expect("static metric definition");
        let streams = IntGauge::new("sidecar_streams_active", "Open Dispatch streams.")
            .expect("static metric definition");
        let streams_abandoned = IntCounter::new(
            "sidecar_streams_abandoned_total",
            "Dispatch streams whose client went away before the stream ended; their calls were cancelled.",
        )
        .expect("static metric definition");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "sidecar_connections_refused_total",
                "Connections to the metrics, health or gRPC TCP port closed on arrival: the port, or the peer address, held the most it serves at once.",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let undelivered_results = IntGauge::new(
            "sidecar_undelivered_results",
            "Results produced and not yet taken by the transport (not read by their client).",
        )
        .expect("static metric definition");
        let undelivered_bytes = IntGauge::new(
            "sidecar_undelivered_result_bytes",
            "Encoded bytes of the results not yet taken by the transport.",
        )
        .expect("static metric definition");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let rate_limited = counter(
            "sidecar_rate_limited_total",
            "Calls refused by a rate limit, by tool and limit scope.",
            &["tool", "scope"],
        );
        let cache_requests = counter(
            "sidecar_cache_requests_total",
            "Cache and single-flight lookups: hit, miss or coalesced.",
            &["tool", "result"],
        );
        let retries = counter(
            "sidecar_retries_total",
            "Upstream requests that were retries.",
            &["tool"],
        );
        let config_reloads = counter(
            "sidecar_config_reloads_total",
            "Config reloads, by result (success or rejected).",
            &["result"],
        );
        let rate_limit_shadow = counter(
            "sidecar_rate_limit_shadow_total",
            "Calls a shadow-mode (enforce: false) limit would have refused.",
            &["tool", "scope"],
        );
        let upstream_throttled = counter(
            "sidecar_upstream_throttled_total",
            "Calls held or refused because the upstream announced its quota was spent.",
            &["upstream"],
        );
        let frames_shared_results = counter(
            "sidecar_frames_shared_results_total",
            "Results of 16 KiB or more on frames streams with a shared region: shared (through it) or full (no room; on the socket).",
            &["outcome"],
        );
        let frames_shared_released_bytes = IntCounter::new(
            "sidecar_frames_shared_released_bytes_total",
            "Bytes of shared result regions their clients released (copied out), free to be written again.",
        )
        .expect("static metric definition");
        let throttles_dropped = counter(
            "sidecar_fleet_throttles_dropped_total",
            "Throttle messages from Redis dropped: queue_full (arriving faster than applied; the stored holds are read instead) or malformed.",
            &["reason"],
        );
        let fleet = crate::policy::fleet::FleetMetrics {
            commands: counter(
                "sidecar_fleet_redis_commands_total",
                "Redis commands sent for fleet limits, by operation.",
                &["op"],
            ),
            errors: counter(
                "sidecar_fleet_redis_errors_total",
                "Redis commands that failed or timed out, by operation.",
                &["op"],
            ),
            connected: IntGauge::new(
                "sidecar_fleet_connected",
                "1 in fleet mode (Redis answers the heartbeat), 0 while limits use their fallback.",
            )
            .expect("static metric definition"),
            live: IntGauge::new(
                "sidecar_fleet_live_sidecars",
                "Sidecars with a fresh heartbeat in Redis.",
            )
            .expect("static metric definition"),
            throttles_dropped: crate::policy::fleet::throttles::DropCounters {
                queue_full: throttles_dropped.with_label_values(&["queue_full"]),
                malformed: throttles_dropped.with_label_values(&["malformed"]),
            },
        };
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "sidecar_circuit_state",
                "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.",
            ),
            &["upstream"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(call_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(inflight.clone()),
            Box::new(streams.clone()),
            Box::new(streams_abandoned.clone()),
            Box::new(connections_refused.clone()),
            Box::new(undelivered_results.clone()),
            Box::new(undelivered_bytes.clone()),
            Box::new(rate_limited.clone()),
            Box::new(circuit_state.clone()),
            Box::new(cache_requests.clone()),
            Box::new(retries.clone()),
            Box::new(config_reloads.clone()),
            Box::new(rate_limit_shadow.clone()),
            Box::new(upstream_throttled.clone()),
            Box::new(frames_shared_results.clone()),
            Box::new(frames_shared_released_bytes.clone()),
            Box::new(fleet.commands.clone()),
            Box::new(fleet.errors.clone()),
            Box::new(fleet.connected.clone()),
            Box::new(fleet.live.clone()),
            Box::new(throttles_dropped),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            calls,
            call_duration,
            upstream_duration,
            inflight,
            streams,
            streams_abandoned,
            connections_refused,
            undelivered_results,
            undelivered_bytes,
            rate_limited,
            circuit_state,
            cache_requests,
            retries,
            config_reloads,
            rate_limit_shadow,
            upstream_throttled,
            frames_shared_results,
            frames_shared_released_bytes,
            fleet,
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    /// Serves `/metrics` on `listener` until `shutdown` fires.
    ///
    /// The port is open to the cluster (Prometheus scrapes it), so what a
    /// connection may hold is bounded: at most [`MAX_SCRAPE_CONNECTIONS`] at
    /// once, [`MAX_SCRAPE_CONNECTIONS_PER_PEER`] of them from one address (a
    /// new one past either is closed on arrival and counted), each must
    /// send a request's head within [`SCRAPE_HEADER_TIMEOUT`] of connecting
    /// or of its previous answer, and none lives past
    /// [`SCRAPE_CONNECTION_LIFE`]. Before, connections that sent nothing
    /// stayed open for good, 12 KiB and a file descriptor each. A flood from
    /// one pod fills only its own share; one from many could still keep
    /// scrapes out (the counter says so), but not the sidecar's memory and
    /// descriptors, which its tool calls need.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let limit = ConnLimit::new(MAX_SCRAPE_CONNECTIONS, MAX_SCRAPE_CONNECTIONS_PER_PEER);
        let refused = self.connections_refused.with_label_values(&["metrics"]);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        continue;
                    }
                },
            };
            let Some(slot) = limit.admit(peer.ip()) else {
                refused.inc();
                tracing::debug!(%peer, "metrics connection refused: too many open");
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                        };
                        response
                    }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                // The head timeout does not cover a client that asks and then
                // never reads the answer; the lifetime does.
                let _ = tokio::time::timeout(SCRAPE_CONNECTION_LIFE, connection).await;
            });
        }
    }

    /// Binds `addr` for [`Metrics::serve`], logging the bound address.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        Ok(listener)
    }
}

/// One tool's per-call series, found in their vectors once rather than on
/// every call: a `with_label_values` hashes the labels and takes the
/// vector's lock, three times per call on the hot path (about 500
/// instructions of a tiny call, and a lock word every core writes). Each
/// series is made on first use, so what `/metrics` shows is unchanged: a
/// tool's series appear once it is called.
#[derive(Debug, Default)]
pub struct ToolSeries {
    /// `sidecar_tool_calls_total{tool,status}`, by the status's proto number.
    calls: [OnceLock<IntCounter>; STATUSES],
    /// `sidecar_tool_call_duration_seconds{tool}`.
    duration: OnceLock<Histogram>,
}

/// Statuses the proto defines (numbered from 0); a larger number, from a
/// newer proto, falls back to the vector's lookup.
const STATUSES: usize = Status::LimiterUnavailable as usize + 1;

impl ToolSeries {
    /// Counts a finished call of `tool` with `status`.
    pub fn count(&self, metrics: &Metrics, tool: &str, status: Status) {
        let labels = [tool, status_label(status)];
        match self.calls.get(status as usize) {
            Some(cell) => cell
                .get_or_init(|| metrics.calls.with_label_values(&labels))
                .inc(),
            None => metrics.calls.with_label_values(&labels).inc(),
        }
    }

    /// `tool`'s call duration histogram.
    pub fn duration(&self, metrics: &Metrics, tool: &str) -> &Histogram {
        self.duration
            .get_or_init(|| metrics.call_duration.with_label_values(&[tool]))
    }
}

/// The `status` label value: the proto name without its prefix, lower-case.
pub fn status_label(status: Status) -> &'static str {
    match status {
        Status::Unspecified => "unspecified",
        Status::Ok => "ok",
        Status::InvalidArguments => "invalid_arguments",
        Status::UnknownTool => "unknown_tool",
        Status::RateLimited => "rate_limited",
        Status::Timeout => "timeout",
        Status::UpstreamError => "upstream_error",
        Status::InvalidResponse => "invalid_response",
        Status::Cancelled => "cancelled",
        Status::Overloaded => "overloaded",
        Status::Internal => "internal",
        Status::InvalidRequest => "invalid_request",
        Status::Draining => "draining",
        Status::EgressDenied => "egress_denied",
        Status::CircuitOpen => "circuit_open",
        Status::LimiterUnavailable => "limiter_unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stable_names() {
        let m = Metrics::new();
        m.calls.with_label_values(&["weather", "ok"]).inc();
        m.inflight.set(3);
        let text = m.render();
        assert!(text.contains("sidecar_tool_calls_total{status=\"ok\",tool=\"weather\"} 1"));
        assert!(text.contains("sidecar_inflight_calls 3"));
    }

    #[test]
    fn a_tools_series_are_made_on_first_use_and_count_where_the_vectors_do() {
        let m = Metrics::new();
        let series = ToolSeries::default();
        assert!(!m.render().contains("tool=\"weather\""));
        series.count(&m, "weather", Status::Ok);
        series.count(&m, "weather", Status::Ok);
        series.count(&m, "weather", Status::Timeout);
        series.duration(&m, "weather").observe(0.002);
        // A reload compiles the tool again, with series of its own: they
        // find the same children.
        let reloaded = ToolSeries::default();
        reloaded.count(&m, "weather", Status::Ok);
        reloaded.duration(&m, "weather").observe(0.002);
        assert_eq!(m.calls.with_label_values(&["weather", "ok"]).get(), 3);
        assert_eq!(m.calls.with_label_values(&["weather", "timeout"]).get(), 1);
        let text = m.render();
        assert!(text.contains("sidecar_tool_call_duration_seconds_count{tool=\"weather\"} 2"));
        assert!(
            !text.contains("status=\"cancelled\""),
            "no series for a status not seen"
        );
    }

    #[test]
    fn every_status_has_a_cached_series() {
        for n in 0..STATUSES {
            assert!(Status::try_from(n as i32).is_ok(), "status {n}");
        }
        assert!(
            Status::try_from(STATUSES as i32).is_err(),
            "a status past the cache: raise STATUSES"
        );
    }

    #[test]
    fn status_labels_match_proto_names() {
        for s in [Status::Ok, Status::RateLimited, Status::InvalidRequest] {
            let proto = s.as_str_name().trim_start_matches("STATUS_").to_lowercase();
            assert_eq!(status_label(s), proto);
        }
    }
}
