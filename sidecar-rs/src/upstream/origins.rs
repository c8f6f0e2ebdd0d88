//! State shared by every tool that calls one upstream origin (circuit
//! breaker, retry budget, concurrency slots) and the HTTP clients, one per
//! egress policy. Both outlive config reloads: an origin's breaker keeps its
//! memory of recent failures unless its policy changes, and connection pools
//! stay warm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus::Histogram;
use tokio::sync::Semaphore;
use tower::retry::budget::TpsBudget;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::spec::{HttpVersion, UpstreamSpec};
use crate::config::template::Credentials;
use crate::metrics::Metrics;
use crate::policy::breaker::CircuitBreaker;
use crate::policy::fleet::Fleet;
use crate::policy::retry;
use crate::upstream::client::Upstream;
use crate::upstream::egress::{EgressPolicy, RedirectRules};
use crate::upstream::http::{http_client, multiplexed, tls_config, HttpClient, UpstreamOptions};
use crate::upstream::multiplex::Multiplexed;

/// Policies and live state for one origin (`scheme://host:port`).
#[derive(Debug)]
pub struct UpstreamState {
    pub origin: String,
    spec: UpstreamSpec,
    pub breaker: CircuitBreaker,
    pub budget: TpsBudget,
    /// Requests in flight to this origin.
    pub slots: Arc<Semaphore>,
    /// Until when the upstream asked for no requests (its quota is spent).
    throttled_until: Mutex<Option<Instant>>,
    /// Bound on any one hold (`--max-upstream-hold`).
    pub max_hold: Duration,
    /// `sidecar_upstream_request_duration_seconds{upstream}` for this
    /// origin, found once (see [`crate::metrics::ToolSeries`]); made at the
    /// first request, so an origin not yet called shows no series.
    duration: OnceLock<Histogram>,
}

impl UpstreamState {
    /// This origin's request duration histogram.
    pub fn duration(&self, metrics: &Metrics) -> &Histogram {
        self.duration
            .get_or_init(|| metrics.upstream_duration.with_label_values(&[&self.origin]))
    }

    /// Holds requests to this origin for `wait`, at most `max_hold`
    /// (extending, never shortening, a hold already in force).
    pub fn throttle(&self, wait: Duration) {
        let until = Instant::now() + wait.min(self.max_hold);
        let mut held = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h < until) {
            if held.is_none_or(|h| h <= Instant::now()) {
                tracing::info!(upstream = %self.origin, ?wait, "upstream quota exhausted; holding requests until its reset");
            }
            *held = Some(until);
        }
    }

    /// How long requests to this origin are still held, if they are.
    pub fn throttled(&self) -> Option<Duration> {
        let held = self
            .throttled_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        held.and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// Most holds kept for origins no tool calls yet. Holds arrive from anyone
/// who can publish to Redis; at startup they are the fleet's origins, a few
/// dozen, so past this the rest are some other program's and are dropped.
const MAX_PENDING_HOLDS: usize = 1024;

/// What an HTTP client is shared by: egress policy, port (`None`: any
/// port) and HTTP version.
type ClientKey = (EgressPolicy, Option<u16>, HttpVersion);

/// Every origin's state and every client, by key.
pub struct Upstreams {
    metrics: Metrics,
    options: UpstreamOptions,
    /// Present when the sidecar runs with `--redis-url`.
    fleet: Option<Arc<Fleet>>,
    states: Mutex<HashMap<String, Arc<UpstreamState>>>,
    /// Holds learned from the fleet for origins no tool uses yet (at startup
    /// they arrive before the config is compiled); applied when the origin's
    /// state is created.
    pending_holds: Mutex<HashMap<String, Instant>>,
    /// `pending_holds` is full and a hold was dropped (logged once per run
    /// of drops).
    pending_full: AtomicBool,
    /// HTTP clients by egress policy, port (`None`: any port) and HTTP
    /// version, shared by every tool with that policy so connection pools
    /// stay warm.
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    /// The HTTP/2 connection to each origin set to `http: http2`, by egress
    /// policy and origin, shared by the tools that call it. Weak: the
    /// connection closes once no tool calls the origin (after a reload).
    multiplexed: Mutex<HashMap<(EgressPolicy, String), Weak<Multiplexed>>>,
    /// The TLS settings every client copies, built with the first client
    /// (it reads the system's CA bundle once, not once per client).
    tls: Mutex<Option<rustls::ClientConfig>>,
    /// Per origin: whether it has answered (error messages use it). One flag
    /// per origin ever configured.
    answered: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Upstreams {
    pub fn new(options: UpstreamOptions, metrics: Metrics) -> Self {
        Self {
            metrics,
            options,
            fleet: None,
            states: Mutex::default(),
            pending_holds: Mutex::default(),
            pending_full: AtomicBool::new(false),
            clients: Mutex::default(),
            multiplexed: Mutex::default(),
            tls: Mutex::default(),
            answered: Mutex::default(),
        }
    }

    /// Shares fleet-scoped limits and upstream throttles through `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The longest hold any upstream signal may cause.
    pub fn max_hold(&self) -> Duration {
        self.options.max_hold
    }

    /// Applies a throttle another sidecar learned for `origin` (kept for
    /// later if no tool calls that origin yet).
    pub fn apply_throttle(&self, origin: &str, wait: Duration) {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(origin) {
            state.throttle(wait);
            return;
        }
        let until = Instant::now() + wait.min(self.options.max_hold);
        let mut pending = self.pending_holds.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forget holds that have run out before adding one.
        let now = Instant::now();
        pending.retain(|_, held| *held > now);
        if pending.len() >= MAX_PENDING_HOLDS && !pending.contains_key(origin) {
            if !self.pending_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    origin = %origin.chars().take(200).collect::<String>(),
                    held = MAX_PENDING_HOLDS,
                    "fleet throttles: holds for {MAX_PENDING_HOLDS} origins no tool calls are kept already; this one and later ones are dropped until some run out"
                );
            }
            return;
        }
        self.pending_full.store(false, Ordering::Relaxed);
        let held = pending.entry(origin.to_owned()).or_insert(until);
        *held = (*held).max(until);
    }

    /// The state for `origin` under `spec`, reusing the current one when its
    /// policy is unchanged.
    pub fn state(&self, origin: &str, spec: &UpstreamSpec) -> Arc<UpstreamState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        // A hold in force survives a policy change, and one learned before
        // any tool used the origin applies now.
        let mut held = None;
        if let Some(state) = states.get(origin) {
            if &state.spec == spec {
                return state.clone();
            }
            held = *state
                .throttled_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(pending) = self
            .pending_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(origin)
        {
            held = held.max(Some(pending));
        }
        let gauge = self.metrics.circuit_state.with_label_values(&[origin]);
        let state = Arc::new(UpstreamState {
            origin: origin.to_owned(),
            breaker: CircuitBreaker::new(origin.to_owned(), spec.circuit_breaker.clone(), gauge),
            budget: retry::budget(&spec.retry_budget),
            slots: Arc::new(Semaphore::new(spec.max_concurrency)),
            throttled_until: Mutex::new(held),
            max_hold: self.options.max_hold,
            spec: spec.clone(),
            duration: OnceLock::new(),
        });
        states.insert(origin.to_owned(), state.clone());
        state
    }

    /// The sender for a tool at `origin`, spoken to in `version`, with this
    /// egress policy, redirect rules and credentials.
    pub fn client(
        &self,
        origin: &url::Url,
        version: HttpVersion,
        policy: &EgressPolicy,
        redirects: &RedirectRules,
        credentials: Credentials,
    ) -> Result<Upstream, rustls::Error> {
        let serialized = origin.origin().ascii_serialization();
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(serialized.clone())
            .or_default()
            .clone();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        Upstream::new(
            origin,
            version,
            answered,
            policy.clone(),
            redirects.clone(),
            credentials,
            |port, version| {
                let key = (policy.clone(), port, version);
                if let Some(client) = clients.get(&key) {
                    return Ok(client.clone());
                }
                let client = http_client(&self.options, self.tls()?, policy, port, version);
                clients.insert(key, client.clone());
                Ok(client)
            },
            |port| {
                let mut connections = self.multiplexed.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded by the origins configured at once: forget the
                // ones no tool calls any more.
                connections.retain(|_, connection| connection.strong_count() > 0);
                let key = (policy.clone(), serialized.clone());
                if let Some(live) = connections.get(&key).and_then(Weak::upgrade) {
                    return Ok(live);
                }
                let uri = http::Uri::try_from(serialized.as_str()).map_err(|e| {
                    rustls::Error::General(format!("the origin {serialized} is not a URI: {e}"))
                })?;
                let connection =
                    Arc::new(multiplexed(&self.options, self.tls()?, policy, port, uri));
                connections.insert(key, Arc::downgrade(&connection));
                Ok(connection)
            },
        )
    }

    /// A copy of the TLS settings every client starts from, built the first
    /// time one is needed.
    fn tls(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut tls = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match &*tls {
            Some(base) => base.clone(),
            None => tls.insert(tls_config()?).clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_for_origins_no_tool_calls_are_bounded() {
        let upstreams = Upstreams::new(UpstreamOptions::default(), Metrics::new());
        for i in 0..MAX_PENDING_HOLDS * 10 {
            upstreams.apply_throttle(&format!("http://h{i}.example:80"), Duration::from_secs(60));
        }
        let pending = upstreams.pending_holds.lock().unwrap();
        assert_eq!(pending.len(), MAX_PENDING_HOLDS);
        // The first ones were kept, and one already kept is still extended.
        assert!(pending.contains_key("http://h0.example:80"));
        drop(pending);
        upstreams.apply_throttle("http://h0.example:80", Duration::from_secs(120));
        let held = upstreams.pending_holds.lock().unwrap()["http://h0.example:80"];
        assert!(held > Instant::now() + Duration::from_secs(100));
    }
}
