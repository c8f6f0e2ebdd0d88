//! tandem's sidecar: executes every tool call of every agent in a pod.
//!
//! # Layout
//!
//! A call travels top to bottom:
//!
//! | module | responsibility |
//! |---|---|
//! | [`server`] | binds listeners (TCP, unix socket), serves Dispatcher + health + reflection, shuts down in stages |
//! | [`dispatch`] | the gRPC service: admission (in-flight bounds, draining), one task per Dispatch stream, exactly one result per call |
//! | [`call`] | one call's pipeline: parse → validate → render → rate limit → upstream → check response |
//! | [`schema`] | JSON Schema compile (once) and validation with JSON Pointer violations |
//! | [`template`] | request templates: arguments fill path segments, query, headers and body, never the host |
//! | [`ratelimit`] | rate limits keyed by tool or agent, in the pod or fleet-wide, counting calls or LLM tokens; reject, wait or shadow |
//! | [`fleet`] | Redis: leased fleet buckets, live-sidecar presence, broadcast upstream throttles |
//! | [`quota`] | reading an upstream's announced quota (`x-ratelimit-*`, `Retry-After`) |
//! | [`upstream`] | the shared HTTP client and the size-capped body reader |
//! | [`registry`] | the compiled tools of one config file |
//! | [`config`] | `tools.yaml` as serde data |
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
