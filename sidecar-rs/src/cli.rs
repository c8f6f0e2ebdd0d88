//! Command-line flags. Every flag can also come from a `SIDECAR_*` variable,
//! which is how the Kubernetes manifests set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::dispatch::Admission;
use crate::server::{ListenAddr, ServerConfig};
use crate::upstream::UpstreamOptions;

#[derive(Debug, Parser)]
#[command(
    name = "sidecar",
    version,
    about = "Executes tool calls for the agents of a tandem pod"
)]
pub struct Cli {
    /// The tools file (YAML): tools, schemas, request templates, limits.
    #[arg(long, env = "SIDECAR_CONFIG", default_value = "tools.yaml")]
    pub config: PathBuf,

    /// Where to serve gRPC: `host:port` and/or `unix:/path.sock`; repeat to
    /// listen on several. `host:0` picks a free port (logged at start).
    #[arg(
        long,
        env = "SIDECAR_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    pub listen: Vec<ListenAddr>,

    /// Where to serve Prometheus metrics (`/metrics`); off when unset.
    #[arg(long, env = "SIDECAR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Load and compile the tools file, report, and exit (non-zero on error).
    #[arg(long)]
    pub check_config: bool,

    /// Calls in flight in the whole process; more get OVERLOADED at once.
    #[arg(long, env = "SIDECAR_MAX_INFLIGHT", default_value_t = 20_000)]
    pub max_inflight: usize,

    /// Calls in flight on one Dispatch stream; more get OVERLOADED at once.
    #[arg(
        long,
        env = "SIDECAR_MAX_INFLIGHT_PER_STREAM",
        default_value_t = 20_000
    )]
    pub max_inflight_per_stream: usize,

    /// On SIGTERM, how long calls in flight may take to finish before they
    /// are cancelled, e.g. `20s`.
    #[arg(long, env = "SIDECAR_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime_duration)]
    pub drain_timeout: Duration,

    /// Bound on connecting to an upstream, separate from call deadlines.
    #[arg(long, env = "SIDECAR_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime_duration)]
    pub connect_timeout: Duration,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 250ms, 20s)"))
}

impl Cli {
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            config_path: self.config.clone(),
            listen: self.listen.clone(),
            metrics_listen: self.metrics_listen,
            admission: Admission {
                max_inflight: self.max_inflight,
                max_inflight_per_stream: self.max_inflight_per_stream,
            },
            drain_timeout: self.drain_timeout,
            upstream: UpstreamOptions {
                connect_timeout: self.connect_timeout,
                ..UpstreamOptions::default()
            },
        }
    }
}
