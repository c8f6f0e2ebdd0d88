//! Wiring: load the registry, bind the listeners, serve Dispatcher + health +
//! reflection on each, and shut down in two stages (see [`crate::server::drain`]).
//!
//! `run` takes the shutdown trigger as a future so tests can stop a server
//! without signals; `main` passes SIGTERM/SIGINT.

pub mod auth;
pub mod conn_limit;
pub mod dispatch;
pub mod drain;
pub mod frames;
pub mod linger;
mod result_chunks;
mod shared_region;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use futures::TryStreamExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::call::Executor;
use crate::config::reload::{self, Reloader};
use crate::metrics::Metrics;
use crate::pb::{self, dispatcher_server::DispatcherServer};
use crate::policy::fleet::{Fleet, RedisUrl};
use crate::server::auth::BearerAuth;
use crate::server::conn_limit::ConnLimit;
use crate::server::dispatch::{Admission, DispatchService};
use crate::server::drain::Drain;
use crate::server::linger::{Lingering, LINGER_MAX};
use crate::upstream::http::UpstreamOptions;
use crate::upstream::origins::Upstreams;

/// Largest gRPC message accepted or sent: a frame may batch many calls, and a
/// result may carry a multi-megabyte document.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How often idle per-agent rate-limit buckets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How long a connection to `--health-listen` lives: the port answers
/// probes, and kubelet dials each gRPC probe anew, so no connection there
/// needs long. tonic, given an age and a grace, closes the connection at
/// their sum whatever its state, without a GOAWAY first (it sends one only
/// when no grace is set, and hyper cannot end a connection that never sent
/// its preface that way): so a connection that never speaks, or holds a
/// health `Watch` open, is gone after 15 s. Before, 5,000 silent connections
/// held 18 MiB and as many file descriptors indefinitely.
const PROBE_CONNECTION_AGE: Duration = Duration::from_secs(10);
const PROBE_CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// How long a connection to a gRPC TCP listener may take to send the HTTP/2
/// preface ([`HTTP2_PREFACE`]); past it the connection is closed. After the
/// preface, hyper's keep-alive pings find a peer that has gone quiet. Before,
/// a connection that sent nothing, or part of the preface, was held for good.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes every HTTP/2 connection opens with (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections `--health-listen` serves at once, and from one peer address:
/// kubelet probes from the node's address, one connection per probe, so a
/// flood from some other pod cannot take its slots (past either cap a new
/// connection is closed on arrival, counted in
/// `sidecar_connections_refused_total{listener="health"}`).
const MAX_PROBE_CONNECTIONS: usize = 256;
const MAX_PROBE_CONNECTIONS_PER_PEER: usize = 64;

/// How many frames streams may hold a shared result region at once: as many
/// as fit in the bytes of undelivered results the process allows (a region
/// is results a client has not read). The command line refuses a region
/// larger than that budget.
fn max_shared_regions(max_undelivered_bytes: usize, region_bytes: u64) -> usize {
    match region_bytes {
        0 => 0,
        n => usize::try_from(max_undelivered_bytes as u64 / n).unwrap_or(usize::MAX),
    }
}

/// Where to serve: gRPC on `host:port` or `unix:/path/to.sock`, or the
/// framed Dispatch stream alone on `frames:/path/to.sock` ([`frames`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Frames(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/tandem/sidecar.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(path) = s.strip_prefix("frames:") {
            if path.is_empty() {
                return Err(
                    "frames: needs a socket path, e.g. frames:/run/tandem/frames.sock".into(),
                );
            }
            return Ok(ListenAddr::Frames(PathBuf::from(path)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither host:port, unix:/path nor frames:/path"))
    }
}

/// Everything `run` needs besides the shutdown trigger.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub config_path: PathBuf,
    pub listen: Vec<ListenAddr>,
    /// Health checks only (no tool calls, no auth): where kubelet probes go
    /// when the data plane is a unix socket.
    pub health_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// Required on TCP listeners unless `allow_unauthenticated_tcp`.
    pub auth: Option<BearerAuth>,
    pub allow_unauthenticated_tcp: bool,
    /// Connections each gRPC TCP listener serves at once, in all and from one
    /// peer address ([`conn_limit`]).
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_peer: usize,
    /// How often the tools file is checked for changes.
    pub reload_interval: Duration,
    /// Spans are exported (set by whoever installed the OTLP exporter).
    pub tracing: bool,
    /// Redis for fleet-scoped limits and shared upstream throttles.
    pub redis_url: Option<RedisUrl>,
    pub admission: Admission,
    pub drain_timeout: Duration,
    pub upstream: UpstreamOptions,
    /// Size of the shared result region each version 2 frames stream gets;
    /// 0: none ([`frames`]).
    pub frames_shared_region_bytes: u64,
    /// How long a large result waits for room in a full region.
    pub frames_shared_room_wait: Duration,
}

/// Serves until `shutdown` resolves, then drains. Returns once every listener
/// has stopped; an error means the sidecar could not start or a listener
/// failed.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let tcp_data_plane = config
        .listen
        .iter()
        .any(|l| matches!(l, ListenAddr::Tcp(_)));
    if tcp_data_plane && config.auth.is_none() && !config.allow_unauthenticated_tcp {
        anyhow::bail!(
            "a TCP --listen address would serve tool calls (and the credentials they use) \
             without authentication: set --auth-token-file or SIDECAR_AUTH_TOKEN, listen on \
             a unix socket, or pass --allow-unauthenticated-tcp for local development"
        );
    }
    let metrics = Metrics::new();
    let background = CancellationToken::new();
    let mut upstreams = Upstreams::new(config.upstream.clone(), metrics.clone());
    let fleet = match &config.redis_url {
        Some(url) => {
            let fleet = Fleet::start(url.as_str(), metrics.fleet.clone(), background.clone())
                .map_err(anyhow::Error::msg)?;
            if !fleet.wait_connected(Duration::from_secs(2)).await {
                tracing::warn!(
                    id = fleet.id(),
                    reason = %fleet.down_reason(),
                    "fleet mode is off at start (Redis unreachable or refusing, see reason); fleet limits start on their fallback"
                );
            }
            tracing::info!(id = fleet.id(), "fleet limits enabled");
            upstreams = upstreams.with_fleet(fleet.clone());
            Some(fleet)
        }
        None => None,
    };
    let upstreams = Arc::new(upstreams);
    // Files and schema compilation: on the blocking pool, not a worker.
    let (registry, loaded) = {
        let path = config.config_path.clone();
        let upstreams = upstreams.clone();
        tokio::task::spawn_blocking(move || reload::load(&path, &upstreams))
            .await
            .context("loading the config")?
    };
    let registry = registry.with_context(|| format!("config {}", config.config_path.display()))?;
    tracing::info!(
        config = %config.config_path.display(),
        tools = registry.len(),
        "config loaded"
    );
    if let Some(fleet) = &fleet {
        // Holds learned by sidecars that ran before this one apply from the
        // first call on (the subscription below catches later ones). Read
        // once the config is loaded, so a hold for an origin a tool calls
        // lands on that origin and not among the (capped) holds kept for
        // unknown origins.
        for (origin, wait) in fleet.holds().await {
            upstreams.apply_throttle(&origin, wait);
        }
        let upstreams = upstreams.clone();
        tokio::spawn(fleet.clone().follow_throttles(
            move |origin, wait| upstreams.apply_throttle(origin, wait),
            background.clone(),
        ));
    }
    crate::config::redact::set_in_force(registry.redactor().clone());
    let registry = Arc::new(ArcSwap::from_pointee(registry));
    let exec = Arc::new(
        Executor::new(registry.clone(), metrics.clone())
            .with_tracing(config.tracing)
            .with_fleet(fleet),
    );
    let drain = Drain::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<DispatcherServer<DispatchService>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    // Both reflection versions: grpcurl speaks v1, many client libraries only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service")?;
    let dispatch = Arc::new(DispatchService::new(exec, config.admission, drain.clone()));
    let dispatcher = DispatcherServer::from_arc(dispatch.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server = || {
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(8 << 20))
    };
    // The unix socket is guarded by its file mode; TCP by the bearer token.
    let unix_router = server()
        .add_service(health_service.clone())
        .add_service(reflection_v1.clone())
        .add_service(reflection_v1alpha.clone())
        .add_service(dispatcher.clone());
    let tcp_router = match &config.auth {
        Some(auth) => server()
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(dispatcher, auth.clone())),
        None => unix_router.clone(),
    };

    if let Some(addr) = config.metrics_listen {
        let listener = Metrics::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        tokio::spawn(metrics.clone().serve(listener, background.clone()));
    }

    let mut servers = JoinSet::new();
    let mut sockets = Vec::new();
    // Closed connections linger here until their clients have read the end.
    let closing = TaskTracker::new();
    for addr in &config.listen {
        let stop = {
            let drain = drain.clone();
            async move { drain.draining().await }
        };
        match addr {
            ListenAddr::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --listen {addr}"))?;
                tracing::info!(addr = %listener.local_addr()?, "listening");
                let closing = closing.clone();
                let limit = ConnLimit::new(
                    config.max_tcp_connections,
                    config.max_tcp_connections_per_peer,
                );
                let refused = metrics.connections_refused.with_label_values(&["grpc"]);
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .try_filter_map(move |io| {
                        let admitted = limit
                            .admit_stream(io, &refused)
                            .map(|io| io.first_bytes_within(HTTP2_PREFACE.len(), PREFACE_TIMEOUT));
                        std::future::ready(Ok(admitted))
                    })
                    .map_ok(move |io| Lingering::new(io, closing.clone()));
                let serve = tcp_router
                    .clone()
                    .serve_with_incoming_shutdown(incoming, stop);
                servers.spawn(async move { serve.await.context("serving gRPC") });
            }
            ListenAddr::Unix(path) => {
                let listener = bind_unix("unix", path)?;
                tracing::info!(addr = %format!("unix:{}", path.display()), "listening");
                sockets.push(path.clone());
                let closing = closing.clone();
                let incoming = UnixListenerStream::new(listener)
                    .map_ok(move |io| Lingering::new(io, closing.clone()));
                let serve = unix_router
                    .clone()
                    .serve_with_incoming_shutdown(incoming, stop);
                servers.spawn(async move { serve.await.context("serving gRPC") });
            }
            ListenAddr::Frames(path) => {
                let listener = bind_unix("frames", path)?;
                tracing::info!(addr = %format!("frames:{}", path.display()), "listening");
                sockets.push(path.clone());
                servers.spawn(frames::serve(
                    listener,
                    dispatch.clone(),
                    drain.clone(),
                    frames::FramesOptions {
                        max_frame_bytes: MAX_MESSAGE_BYTES,
                        shared_region_bytes: config.frames_shared_region_bytes,
                        shared_room_wait: config.frames_shared_room_wait,
                        max_shared_regions: max_shared_regions(
                            config.admission.max_undelivered_bytes,
                            config.frames_shared_region_bytes,
                        ),
                    },
                ));
            }
        }
    }
    if let Some(addr) = config.health_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --health-listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "health listening");
        // Outlives the drain so probes see NOT_SERVING rather than a refused
        // connection while calls finish.
        let stop = background.clone();
        let limit = ConnLimit::new(MAX_PROBE_CONNECTIONS, MAX_PROBE_CONNECTIONS_PER_PEER);
        let refused = metrics.connections_refused.with_label_values(&["health"]);
        let incoming = TcpIncoming::from(listener)
            .try_filter_map(move |io| std::future::ready(Ok(limit.admit_stream(io, &refused))));
        let probes = server()
            .max_connection_age(PROBE_CONNECTION_AGE)
            .max_connection_age_grace(PROBE_CONNECTION_GRACE)
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
        tokio::spawn(async move {
            if let Err(e) = probes.await {
                tracing::error!(error = %e, "health listener failed");
            }
        });
    }
    tokio::spawn(
        Reloader {
            path: config.config_path.clone(),
            registry: registry.clone(),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
            interval: config.reload_interval,
            loaded,
        }
        .run(background.clone()),
    );
    {
        let registry = registry.clone();
        let stop = background.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => registry.load().prune_rate_limits(),
                }
            }
        });
    }
    tracing::info!("sidecar ready");

    let failed = tokio::select! {
        _ = shutdown => None,
        Some(done) = servers.join_next() => Some(done),
    };
    if let Some(done) = failed {
        background.cancel();
        remove_sockets(&sockets);
        return match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a listener stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e).context("listener task"),
        };
    }

    tracing::info!(timeout = ?config.drain_timeout, "draining: new calls are refused, calls in flight finish");
    health
        .set_not_serving::<DispatcherServer<DispatchService>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    drain.start();
    let finished = tokio::time::timeout(config.drain_timeout, join_all(&mut servers)).await;
    if finished.is_err() {
        tracing::warn!("drain timeout passed; cancelling the calls still in flight");
        drain.abort();
        if tokio::time::timeout(Duration::from_secs(5), join_all(&mut servers))
            .await
            .is_err()
        {
            tracing::warn!("connections still open after cancelling; closing them");
            servers.abort_all();
        }
    }
    // The last results and trailers are on the wire: exit once every client
    // has read them and closed its side (or its linger ran out).
    closing.close();
    if tokio::time::timeout(LINGER_MAX + Duration::from_secs(1), closing.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still lingering at exit");
    }
    background.cancel();
    remove_sockets(&sockets);
    tracing::info!("sidecar stopped");
    Ok(())
}

async fn join_all(servers: &mut JoinSet<anyhow::Result<()>>) {
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "listener ended with an error"),
            Err(e) if e.is_panic() => tracing::error!(error = %e, "listener panicked"),
            _ => {}
        }
    }
}

/// Binds a unix socket readable and writable by this user only (0600): the
/// socket is the brain's door to every credential the sidecar holds.
fn bind_unix(scheme: &str, path: &PathBuf) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "--listen {scheme}:{}: a file that is not a socket is in the way",
            path.display()
        );
        // A socket left behind by a previous run that did not exit cleanly.
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding --listen {scheme}:{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

fn remove_sockets(paths: &[PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "127.0.0.1:50051".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap()))
        );
        assert_eq!(
            "unix:/tmp/s.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/s.sock".into()))
        );
        assert_eq!(
            "frames:/tmp/f.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Frames("/tmp/f.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("frames:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }
}
