//! tandem's sidecar: executes every tool call of every agent in a pod.
//!
//! # Layout
//!
//! A call travels top to bottom:
//!
//! | module | responsibility |
//! |---|---|
//! | [`server`] | binds listeners (TCP with auth, unix socket, health-only), serves Dispatcher + health + reflection, shuts down in stages |
//! | [`dispatch`] | the gRPC service: admission (in-flight bounds, draining), one task per Dispatch stream, exactly one result per call |
//! | [`call`] | the policy stack of one call, in order: bounds → schema → cache → single-flight → rate limits → slots → breaker → attempts/retries → response checks → select |
//! | [`schema`] | JSON Schema compile (once) and validation with JSON Pointer violations |
//! | [`shape`] | depth scan, canonical JSON (cache keys), `select` |
//! | [`template`] | request templates: arguments fill path segments, query, headers and body, never the host |
//! | [`secrets`] | `${env:..}` / `${file:..}` resolution and redaction of their values |
//! | [`egress`] | which addresses a tool may reach; the guarded DNS resolver and redirect policy |
//! | [`ratelimit`] | rate limits keyed by tool or agent, in the pod or fleet-wide, counting calls or LLM tokens; reject, wait or shadow |
//! | [`bucket`] | a token bucket that can go into debt (token limits, local fallback share) |
//! | [`fleet`] | Redis: leased fleet buckets, live-sidecar presence, broadcast upstream throttles |
//! | [`quota`] | reading an upstream's announced quota (`x-ratelimit-*`, `Retry-After`) |
//! | [`breaker`] | circuit breaker per upstream origin |
//! | [`retry`] | retry policy, jittered backoff, `Retry-After`, the retry budget |
//! | [`window`] | rolling-window counters used by the breaker and the budget |
//! | [`cache`] | per-tool response cache (moka) and single-flight |
//! | [`upstream`] | the HTTP client and the size-capped body reader |
//! | [`upstreams`] | per-origin state (breaker, budget, slots, throttle) and the clients, kept across reloads |
//! | [`registry`] | the compiled tools of one config file |
//! | [`config`] | `tools.yaml` as serde data |
//! | [`reload`] | hot reload on SIGHUP and on file changes |
//! | [`auth`] | the bearer-token interceptor for TCP |
//! | [`error`] | `ConfigError`, `CallError`, and the one mapping from errors to results |
//! | [`drain`] | shutdown stages: draining, then abort |
//! | [`metrics`] | Prometheus metrics and their `/metrics` endpoint |
//! | [`telemetry`] | logs, and OTLP spans per call joined to the caller's trace |
//! | [`cli`] | flags |
//! | [`pb`] | code generated from `proto/` |
#![forbid(unsafe_code)]

pub mod auth;
pub mod breaker;
pub mod bucket;
pub mod cache;
pub mod call;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod drain;
pub mod egress;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod pb;
pub mod quota;
pub mod ratelimit;
pub mod registry;
pub mod reload;
pub mod retry;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod shape;
pub mod telemetry;
pub mod template;
pub mod upstream;
pub mod upstreams;
pub mod window;

pub use server::{run, ListenAddr, ServerConfig};
