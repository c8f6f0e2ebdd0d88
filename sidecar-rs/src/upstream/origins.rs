//! State shared by every tool that calls one upstream origin (circuit
//! breaker, retry budget, concurrency slots) and the HTTP clients, one per
//! egress policy. Both outlive config reloads: an origin's breaker keeps its
//! memory of recent failures unless its policy changes, and connection pools
//! stay warm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tower::retry::budget::TpsBudget;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::spec::UpstreamSpec;
use crate::metrics::Metrics;
use crate::policy::breaker::CircuitBreaker;
use crate::policy::fleet::Fleet;
use crate::policy::retry;
use crate::upstream::client::{Upstream, UpstreamOptions};
use crate::upstream::egress::EgressPolicy;

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
}

impl UpstreamState {
    /// Holds requests to this origin for `wait` (extending, never
    /// shortening, a hold already in force).
    pub fn throttle(&self, wait: Duration) {
        let until = Instant::now() + wait;
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

/// Every origin's state and every client, by key.
pub struct Upstreams {
    metrics: Metrics,
    options: UpstreamOptions,
    /// Present when the sidecar runs with `--redis-url`.
    fleet: Option<Arc<Fleet>>,
    states: Mutex<HashMap<String, Arc<UpstreamState>>>,
    clients: Mutex<HashMap<(EgressPolicy, u8, bool), Upstream>>,
}

impl Upstreams {
    pub fn new(options: UpstreamOptions, metrics: Metrics) -> Self {
        Self {
            metrics,
            options,
            fleet: None,
            states: Mutex::default(),
            clients: Mutex::default(),
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

    /// Applies a throttle another sidecar learned for `origin`.
    pub fn apply_throttle(&self, origin: &str, wait: Duration) {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(origin) {
            state.throttle(wait);
        }
    }

    /// The state for `origin` under `spec`, reusing the current one when its
    /// policy is unchanged.
    pub fn state(&self, origin: &str, spec: &UpstreamSpec) -> Arc<UpstreamState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(origin) {
            if &state.spec == spec {
                return state.clone();
            }
        }
        let gauge = self.metrics.circuit_state.with_label_values(&[origin]);
        let state = Arc::new(UpstreamState {
            origin: origin.to_owned(),
            breaker: CircuitBreaker::new(origin.to_owned(), spec.circuit_breaker.clone(), gauge),
            budget: retry::budget(&spec.retry_budget),
            slots: Arc::new(Semaphore::new(spec.max_concurrency)),
            throttled_until: Mutex::new(None),
            spec: spec.clone(),
        });
        states.insert(origin.to_owned(), state.clone());
        state
    }

    /// The client for tools with this egress policy and redirect limit;
    /// `same_origin_redirects` for tools whose headers carry credentials.
    pub fn client(
        &self,
        policy: &EgressPolicy,
        redirects: u8,
        same_origin_redirects: bool,
    ) -> Result<Upstream, reqwest::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = (policy.clone(), redirects, same_origin_redirects);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Upstream::new(
            &self.options,
            policy.clone(),
            redirects,
            same_origin_redirects,
        )?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}
