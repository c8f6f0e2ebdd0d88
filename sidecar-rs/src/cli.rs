//! Command-line flags. Every flag can also come from a `SIDECAR_*` variable,
//! which is how the Kubernetes manifests set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::policy::fleet::RedisUrl;
use crate::server::auth::BearerAuth;
use crate::server::dispatch::Admission;
use crate::server::{ListenAddr, ServerConfig};
use crate::upstream::http::{UpstreamOptions, DEFAULT_MAX_IDLE_PER_HOST};

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

    /// Where to serve: gRPC on `host:port` and/or `unix:/path.sock`, and the
    /// Dispatch stream alone, framed without gRPC, on `frames:/path.sock`
    /// (what the brain uses when given `--sidecar-frames`); repeat to listen
    /// on several. `host:0` picks a free port (logged at start).
    #[arg(
        long,
        env = "SIDECAR_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    pub listen: Vec<ListenAddr>,

    /// Health checks only, for kubelet probes on the pod IP while tool calls
    /// use the unix socket; no authentication.
    #[arg(long, env = "SIDECAR_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// File holding the bearer token TCP clients must send
    /// (`authorization: Bearer <token>`); or set SIDECAR_AUTH_TOKEN.
    #[arg(long, env = "SIDECAR_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Serve tool calls on TCP without a token (local development only).
    #[arg(long)]
    pub allow_unauthenticated_tcp: bool,

    /// Connections each gRPC TCP listener serves at once; past it a new one
    /// is closed on arrival (the unix sockets are guarded by their file mode).
    #[arg(long, env = "SIDECAR_MAX_TCP_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tcp_connections: u32,

    /// Connections a gRPC TCP listener serves at once from one address, so one
    /// client cannot take every connection; raise it when many clients reach
    /// the sidecar through one address (a NAT or proxy).
    #[arg(long, env = "SIDECAR_MAX_TCP_CONNECTIONS_PER_PEER", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tcp_connections_per_peer: u32,

    /// How often the tools file (and the secret and schema files it references) are checked
    /// for changes; SIGHUP reloads at once.
    #[arg(long, env = "SIDECAR_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime_duration)]
    pub reload_interval: Duration,

    /// Where to serve Prometheus metrics (`/metrics`); off when unset.
    #[arg(long, env = "SIDECAR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Load and compile the tools file, report, and exit (non-zero on error).
    #[arg(long)]
    pub check_config: bool,

    /// Calls in flight in the whole process, counted until the client has
    /// their results (taken by the transport); more get OVERLOADED at once.
    #[arg(long, env = "SIDECAR_MAX_INFLIGHT", default_value_t = 20_000)]
    pub max_inflight: usize,

    /// Calls in flight on one Dispatch stream, counted the same way; more get
    /// OVERLOADED at once.
    #[arg(
        long,
        env = "SIDECAR_MAX_INFLIGHT_PER_STREAM",
        default_value_t = 20_000
    )]
    pub max_inflight_per_stream: usize,

    /// Bytes of results not yet read by their clients, in the whole process;
    /// past it new calls get OVERLOADED until clients read.
    #[arg(long, env = "SIDECAR_MAX_UNDELIVERED_BYTES", default_value = "256MiB", value_parser = byte_size)]
    pub max_undelivered_bytes: usize,

    /// The same for one Dispatch stream; past it its calls get OVERLOADED
    /// and its frames are not read until the client reads its results.
    #[arg(long, env = "SIDECAR_MAX_UNDELIVERED_BYTES_PER_STREAM", default_value = "64MiB", value_parser = byte_size)]
    pub max_undelivered_bytes_per_stream: usize,

    /// Shared memory for large results on each frames stream whose client
    /// asks for it (the brain does): a ring of this size that both map, so a
    /// result of 16 KiB or more is written once and copied out once instead
    /// of crossing the socket. It counts toward this container's memory; 0
    /// turns it off (results then travel on the socket, as they also do
    /// when the client leaves the ring full).
    #[arg(long, env = "SIDECAR_FRAMES_SHARED_REGION", default_value = "16MiB", value_parser = region_size)]
    pub frames_shared_region: usize,

    /// How long a large result waits for the client to release room in a
    /// full shared region before it travels on the socket instead, e.g.
    /// `200ms`. A client that only paused (a garbage collection) releases
    /// within it; one that does not release costs its stream this wait
    /// once, until it releases again. No wait while the stream is past its
    /// backlog bound and has read ahead all it may: the release would lie
    /// behind calls not read until results go out.
    #[arg(long, env = "SIDECAR_FRAMES_SHARED_ROOM_WAIT", default_value = "200ms", value_parser = humantime_duration)]
    pub frames_shared_room_wait: Duration,

    /// On SIGTERM, how long calls in flight may take to finish before they
    /// are cancelled, e.g. `20s`.
    #[arg(long, env = "SIDECAR_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime_duration)]
    pub drain_timeout: Duration,

    /// Bound on connecting to an upstream (name lookup, TCP and TLS
    /// together), separate from call deadlines.
    #[arg(long, env = "SIDECAR_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime_duration)]
    pub connect_timeout: Duration,

    /// Idle keep-alive connections kept per upstream host (and egress
    /// policy). Size it to the calls a host has in flight at steady load:
    /// past it, every call that finishes while this many connections are
    /// idle closes its connection, and the next call pays a new TCP (and TLS)
    /// handshake. Idle connections close after 90 s.
    #[arg(
        long,
        env = "SIDECAR_UPSTREAM_MAX_IDLE_PER_HOST",
        default_value_t = DEFAULT_MAX_IDLE_PER_HOST
    )]
    pub upstream_max_idle_per_host: usize,

    /// The longest an upstream's quota signal (`Retry-After`,
    /// `x-ratelimit-reset`, ...) may hold its origin; longer ones are clamped
    /// to this and logged.
    #[arg(long, env = "SIDECAR_MAX_UPSTREAM_HOLD", default_value = "10m", value_parser = humantime_duration)]
    pub max_upstream_hold: Duration,

    /// Redis for `scope: fleet` rate limits and fleet-wide upstream
    /// throttles, e.g. `redis://redis:6379/0`.
    // The URL can hold a password: `--help` does not show the variable's value.
    #[arg(long, env = "SIDECAR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,

    /// Export a span per tool call over OTLP/gRPC to this collector, e.g.
    /// `http://otel-collector:4317`; off when unset.
    #[arg(long, env = "SIDECAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

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

/// A byte count: a plain number or one with a unit (`64KiB`, `256MiB`,
/// `1GiB`).
fn byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(format!(
                "{s:?}: a unit must be B, KiB, MiB or GiB (e.g. 256MiB)"
            ))
        }
    };
    n.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: expected a positive byte count, e.g. 256MiB"))
}

/// A shared region's size: 0 (none), or at least 64 KiB (a region holds
/// only results of 16 KiB or more).
fn region_size(s: &str) -> Result<usize, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    match byte_size(s)? {
        n if n < 64 << 10 => Err(format!(
            "{s:?}: a shared region takes at least 64KiB (or 0 to turn it off)"
        )),
        n => Ok(n),
    }
}

impl Cli {
    /// The server's settings; fails on an unreadable or too short token.
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        if self.frames_shared_region > self.max_undelivered_bytes {
            return Err(format!(
                "--frames-shared-region ({} bytes) is larger than --max-undelivered-bytes \
                 ({} bytes), which bounds the regions in total",
                self.frames_shared_region, self.max_undelivered_bytes
            ));
        }
        let auth = match (&self.auth_token_file, std::env::var("SIDECAR_AUTH_TOKEN")) {
            (Some(path), _) => Some(BearerAuth::from_file(path)?),
            (None, Ok(token)) => Some(BearerAuth::new(&token)?),
            (None, Err(_)) => None,
        };
        Ok(ServerConfig {
            config_path: self.config.clone(),
            listen: self.listen.clone(),
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            auth,
            allow_unauthenticated_tcp: self.allow_unauthenticated_tcp,
            max_tcp_connections: self.max_tcp_connections as usize,
            max_tcp_connections_per_peer: self.max_tcp_connections_per_peer as usize,
            reload_interval: self.reload_interval,
            tracing: self.otlp_endpoint.is_some(),
            redis_url: self.redis_url.clone(),
            admission: Admission {
                max_inflight: self.max_inflight,
                max_inflight_per_stream: self.max_inflight_per_stream,
                max_undelivered_bytes: self.max_undelivered_bytes,
                max_undelivered_bytes_per_stream: self.max_undelivered_bytes_per_stream,
            },
            drain_timeout: self.drain_timeout,
            frames_shared_region_bytes: self.frames_shared_region as u64,
            frames_shared_room_wait: self.frames_shared_room_wait,
            upstream: UpstreamOptions {
                connect_timeout: self.connect_timeout,
                max_hold: self.max_upstream_hold,
                pool_max_idle_per_host: self.upstream_max_idle_per_host,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_sizes() {
        assert_eq!(byte_size("256MiB"), Ok(256 << 20));
        assert_eq!(byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("0").is_err());
        assert!(byte_size("12MB")
            .unwrap_err()
            .contains("B, KiB, MiB or GiB"));
        assert!(byte_size("MiB").is_err());
    }

    #[test]
    fn a_shared_region_fits_the_undelivered_bytes_budget() {
        let cli = |region: &str| {
            Cli::try_parse_from([
                "sidecar",
                "--config",
                "tools.yaml",
                "--max-undelivered-bytes",
                "64MiB",
                "--frames-shared-region",
                region,
            ])
            .unwrap()
        };
        let err = cli("128MiB").server_config().unwrap_err();
        assert!(err.contains("larger than --max-undelivered-bytes"), "{err}");
        let config = cli("16MiB").server_config().unwrap();
        assert_eq!(config.frames_shared_region_bytes, 16 << 20);
    }

    #[test]
    fn a_shared_region_is_off_or_at_least_64_kib() {
        assert_eq!(region_size("0"), Ok(0));
        assert_eq!(region_size("16MiB"), Ok(16 << 20));
        assert_eq!(region_size("64KiB"), Ok(64 << 10));
        assert!(region_size("32KiB").unwrap_err().contains("at least 64KiB"));
        assert!(region_size("12MB").is_err());
    }
}
